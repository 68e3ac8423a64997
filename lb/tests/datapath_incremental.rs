//! The applier's incremental and repair entry points against real pinned maps:
//! `apply_services` touches only the services named (and ends where a full
//! `apply` of the same state would), a frontend moving between two services in
//! one batch survives, tunnel endpoints follow the backends, and `resync`
//! re-reads the maps and repairs what was changed behind the applier's back.
//! Privileged tier: needs root and BPF; fails (never skips) without them.
use lb::{
    datapath::Datapath,
    loader::{Dataplane, LoadOptions},
    maps::Maps,
    model::*,
};
use testkit::pins::PinDir;

#[path = "../src/reconcile/fixtures.rs"]
mod fixtures;
use fixtures::*;

fn setup(tag: &str) -> (PinDir, Dataplane, Datapath) {
    let pins = PinDir::new(tag);
    let dp = Dataplane::load(&LoadOptions::small(pins.path()))
        .expect("loading the datapath (root and BPF required)");
    let path = Datapath::open(pins.path()).unwrap();
    (pins, dp, path)
}

#[test]
fn apply_services_touches_only_the_services_named() {
    let (pins, _dp, mut path) = setup("named");
    let a = service("a", "10.100.0.1", vec![backend("10.244.1.11", "10.0.0.11")]);
    let b = service("b", "10.100.0.2", vec![backend("10.244.2.11", "10.0.0.12")]);
    let st = path.apply_services(&node(), [(&a.key, Some(&a)), (&b.key, Some(&b))]).unwrap();
    assert_eq!(st.services_added, 2, "{st:?}");
    assert_eq!(path.tunnel_endpoints(), [ip("10.0.0.11"), ip("10.0.0.12")].into());

    // a changes; b is not named: b's entries stay even though it is not listed.
    let mut a2 = a.clone();
    a2.backends.push(backend("10.244.3.11", "10.0.0.13"));
    let gen = path.tunnel_generation();
    let st = path.apply_services(&node(), [(&a2.key, Some(&a2))]).unwrap();
    assert_eq!((st.services_changed, st.services_removed), (1, 0), "{st:?}");
    // Its entry, hash entry and the service's array value.
    assert_eq!((st.backend_writes, st.table_writes), (3, 1), "{st:?}");
    assert_ne!(path.tunnel_generation(), gen, "a new tunnel endpoint");
    assert!(path.tunnel_endpoints().contains(&ip("10.0.0.13")));
    let dump = path.dump().unwrap();
    assert!(dump.contains("service default/b:http"), "{dump}");

    // The incremental result is what a full apply of the same state holds.
    let mut full = Desired { node: node(), ..Default::default() };
    full.services.insert(a2.key.clone(), a2.clone());
    full.services.insert(b.key.clone(), b.clone());
    assert_eq!(path.apply(&full).unwrap().writes(), 0);

    // b removed by key alone; removing an unknown key is a no-op.
    let gone = ServiceKey::new("default", "nope", "http");
    let st = path.apply_services(&node(), [(&b.key, None), (&gone, None)]).unwrap();
    assert_eq!(st.services_removed, 1, "{st:?}");
    assert!(!path.dump().unwrap().contains("default/b:http"));
    assert!(!path.tunnel_endpoints().contains(&ip("10.0.0.12")));

    // A service given under another key is refused before anything is written.
    let err = path.apply_services(&node(), [(&b.key, Some(&a2))]).unwrap_err();
    assert!(err.to_string().contains("default/b:http"), "{err}");

    // A restart restores the same state: nothing to write.
    drop(path);
    let mut again = Datapath::open(pins.path()).unwrap();
    full.services.remove(&b.key);
    assert_eq!(again.apply(&full).unwrap().writes(), 0, "the rebuilt table matches the map's");
}

#[test]
fn a_frontend_moving_between_services_in_one_batch_survives() {
    let (_pins, _dp, mut path) = setup("move");
    let a = service("a", "10.100.0.1", vec![backend("10.244.1.11", "10.0.0.11")]);
    let b = service("b", "10.100.0.2", vec![backend("10.244.2.11", "10.0.0.12")]);
    path.apply_services(&node(), [(&a.key, Some(&a)), (&b.key, Some(&b))]).unwrap();
    // 10.100.0.1 moves from a to b; a gets a new address. b sorts after a, so
    // without the give-up-first pass a's removal would delete b's new entry.
    let a2 = service("a", "10.100.0.3", a.backends.clone());
    let mut b2 = b.clone();
    b2.frontends.push(a.frontends[0]);
    path.apply_services(&node(), [(&a2.key, Some(&a2)), (&b2.key, Some(&b2))]).unwrap();
    let list = path.list().unwrap();
    let fe = |name: &str| -> Vec<String> {
        let s = list.iter().find(|s| s.name == name).unwrap();
        s.frontends.iter().map(|f| f.addr.to_string()).collect()
    };
    assert_eq!(fe("default/a:http"), ["10.100.0.3"]);
    assert_eq!(fe("default/b:http"), ["10.100.0.1", "10.100.0.2"]);
}

#[test]
fn resync_repairs_what_changed_behind_the_applier() {
    let (pins, _dp, mut path) = setup("resync");
    let a = service(
        "a",
        "10.100.0.1",
        vec![backend("10.244.1.11", "10.0.0.11"), backend("10.244.1.12", "10.0.0.11")],
    );
    let mut d = Desired { node: node(), ..Default::default() };
    d.services.insert(a.key.clone(), a.clone());
    path.apply(&d).unwrap();
    let good = path.dump().unwrap();

    // By hand: the frontend goes, a stray service appears (a missed delete).
    let mut maps = Maps::open(pins.path()).unwrap();
    let fe = maps.frontends.keys().next().unwrap().unwrap();
    let value = maps.frontends.get(&fe, 0).unwrap();
    maps.frontends.remove(&fe).unwrap();
    let mut stray = fe;
    stray.port = 81u16.to_be();
    maps.frontends.insert(stray, lb::abi::Service { id: 77, ..value }, 0).unwrap();

    assert_eq!(path.apply(&d).unwrap().writes(), 0, "a plain diff trusts its bookkeeping");
    let st = path.resync(&d).unwrap();
    // The table stays: it is recognised by its whole map value, although with
    // its last frontend gone the maps no longer say the service's table size.
    assert_eq!((st.services_removed, st.frontend_writes, st.table_writes), (1, 1, 0), "{st:?}");
    assert_eq!(path.dump().unwrap(), good);
    assert_eq!(path.resync(&d).unwrap().writes(), 0);
}
