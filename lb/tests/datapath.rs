//! The applier against real pinned maps in the running kernel: apply, diff
//! minimality ("one endpoint change rewrites one service"), idempotence,
//! restore after a restart with zero writes, terminating backends, removal.
//! Privileged tier: needs root and BPF; fails (never skips) without them.
use lb::{
    datapath::Datapath,
    loader::{Dataplane, LoadOptions},
    model::*,
};
use testkit::pins::PinDir;

#[path = "../src/reconcile/fixtures.rs"]
mod fixtures;
use fixtures::*;

fn desired() -> Desired {
    two()
}

#[test]
fn apply_is_minimal_idempotent_and_survives_restart() {
    let pins = PinDir::new("apply");
    let _dp = Dataplane::load(&LoadOptions::small(pins.path()))
        .expect("loading the datapath (root and BPF required)");
    let mut path = Datapath::open(pins.path()).unwrap();

    let want = desired();
    let first = path.apply(&want).unwrap();
    assert_eq!(first.services_added, 2);
    let dump = path.dump().unwrap();
    assert!(
        dump.contains("service default/a:http id=0 maglev=457 encap=geneve backends=3/3"),
        "{dump}"
    );
    assert!(dump.contains("  frontend 10.100.0.1:80/TCP"), "{dump}");
    assert!(dump.contains("affinity=ClientIP/600s source-ranges=192.0.2.0/24"), "{dump}");
    // M chosen from the 3 backends (lb::maglev::auto_size): 457. Every slot
    // of the table points at a listed backend; the shares are even.
    let listing = path.list().unwrap();
    let a = listing.iter().find(|s| s.name == "default/a:http").unwrap();
    let slots: Vec<usize> = a.backends.iter().map(|b| b.slots).collect();
    assert_eq!(slots.iter().sum::<usize>(), 457, "{dump}");
    assert!(slots.iter().all(|&n| n == 152 || n == 153), "{slots:?}");

    // Applying the same state again writes nothing.
    let again = path.apply(&want).unwrap();
    assert_eq!(again.writes(), 0, "{again:?}");

    // One endpoint change rewrites one service's entries and nothing else.
    let mut changed = want.clone();
    let key = ServiceKey::new("default", "a", "http");
    changed.services.get_mut(&key).unwrap().backends[2] = backend("10.244.2.13", "10.0.0.12");
    let st = path.apply(&changed).unwrap();
    assert_eq!((st.services_added, st.services_removed, st.services_changed), (0, 0, 1), "{st:?}");
    assert_eq!(st.table_writes, 1, "{st:?}");
    assert_eq!(
        st.backend_writes, 3,
        "new backend + its hash entry + its service's array value: {st:?}"
    );
    assert_eq!(st.deletes, 3, "old backend's array word + hash entry + its slot: {st:?}");
    assert_eq!(st.frontend_writes, 0, "backend count unchanged: {st:?}");

    // A restarted agent restores everything and finds nothing to write.
    let before = path.dump().unwrap();
    drop(path);
    let mut path = Datapath::open(pins.path()).unwrap();
    assert_eq!(path.dump().unwrap(), before);
    let restored = path.apply(&changed).unwrap();
    assert_eq!(restored.writes(), 0, "restore must be exact: {restored:?}");

    // A terminating backend stays listed but leaves the table.
    let mut term = changed.clone();
    term.services.get_mut(&key).unwrap().backends[0].state = BackendState::Terminating;
    path.apply(&term).unwrap();
    let a = path.list().unwrap().into_iter().find(|s| s.name == "default/a:http").unwrap();
    let t = a.backends.iter().find(|b| b.addr == ip("10.244.1.11")).unwrap();
    assert!(t.terminating && t.slots == 0, "{t:?}");
    assert_eq!(a.active_backends, 2);

    // Removing a service removes its frontends, table and backends.
    let mut gone = term.clone();
    gone.services.remove(&ServiceKey::new("default", "b", "http"));
    let st = path.apply(&gone).unwrap();
    assert_eq!(st.services_removed, 1);
    let dump = path.dump().unwrap();
    assert!(!dump.contains("default/b"), "{dump}");
    assert!(!dump.contains("10.100.0.2"), "{dump}");
}

#[test]
fn invalid_service_is_rejected_before_any_write() {
    let pins = PinDir::new("invalid");
    let _dp = Dataplane::load(&LoadOptions::small(pins.path()))
        .expect("loading the datapath (root and BPF required)");
    let mut path = Datapath::open(pins.path()).unwrap();
    let mut want = desired();
    want.services.values_mut().last().unwrap().maglev_size = 20000;
    let err = path.apply(&want).unwrap_err().to_string();
    assert!(err.contains("default/b:http") && err.contains("maglev size 20000"), "{err}");
    assert_eq!(path.dump().unwrap(), "", "nothing may be written");
}

/// A small datapath loaded on `pins` and its applier; `per_element`: the
/// store writes entry by entry (no batches, no table pipeline).
fn loaded(pins: &std::path::Path, per_element: bool) -> (Dataplane, Datapath) {
    loaded_with(pins, |store| {
        if per_element {
            store.per_element();
        }
    })
}

/// A small datapath loaded on `pins` and its applier, its store set up by
/// `setup` first.
fn loaded_with(
    pins: &std::path::Path,
    setup: impl FnOnce(&mut lb::store::BpfStore),
) -> (Dataplane, Datapath) {
    let dp = Dataplane::load(&LoadOptions::small(pins))
        .expect("loading the datapath (root and BPF required)");
    let mut store = lb::store::BpfStore::open(pins).unwrap();
    setup(&mut store);
    (dp, Datapath::restore(store).unwrap())
}

/// Everything the services reconciler writes, as sorted lines; backend
/// generations as offsets from the smallest in use (they start at the
/// clock's second, which two runs need not share).
fn raw_state(pins: &std::path::Path) -> Vec<String> {
    let maps = lb::maps::Maps::open(pins).unwrap();
    let mut out = Vec::new();
    let mut backends = Vec::new();
    for id in 0..maps.backends.len() {
        let b = maps.backends.get(&id, 0).unwrap();
        if b.gen != 0 || b.flags != 0 {
            backends.push((id, b));
        }
    }
    let base = backends.iter().map(|(_, b)| b.gen).min().unwrap_or(0);
    for (id, b) in backends {
        let b = lb::abi::Backend { gen: b.gen - base, ..b };
        out.push(format!("backend {id} {b:?}"));
    }
    for item in maps.svc_backends.iter() {
        let (k, v) = item.unwrap();
        out.push(format!("svc_backend {k:?} {v}"));
    }
    for (k, v) in maps.svc_backend_entries().unwrap() {
        out.push(format!("svc_backend_id {k:?} {v}"));
    }
    for item in maps.backend_meta.iter() {
        let (k, v) = item.unwrap();
        out.push(format!("meta {k} {:?} {}", v.name, v.weight));
    }
    for item in maps.frontends.iter() {
        let (k, v) = item.unwrap();
        out.push(format!("frontend {k:?} {v:?}"));
    }
    for item in maps.svc_names.iter() {
        let (k, v) = item.unwrap();
        out.push(format!("name {k} {:?}", v.name));
    }
    for class in &maps.maglev_classes {
        for k in class.keys().unwrap() {
            let mut v = vec![0u8; class.value_size()];
            assert!(class.lookup(&k, &mut v).unwrap());
            out.push(format!("table {} {k:?} {v:?}", class.name()));
        }
    }
    out.sort();
    out
}

/// The batched writes of new backends (entries, names and indices a batch
/// at a time, BPF_MAP_UPDATE_BATCH for xlb_backends and xlb_svc_backends,
/// generations read in one walk of xlb_backends) leave the maps exactly as
/// one syscall per write and read does: on a cold start of 9,000 backends
/// (two batches, the walk), then after a change that frees and reuses ids.
/// Services' first tables, built and written by the services reconciler's
/// pipeline threads beside the backend writes (an apply of many services),
/// leave the maps and the bookkeeping as tables written one at a time in
/// order do: a cold start of 700 services (12 backends each: a backend
/// batch written mid-way, tables pushed after each batch; weighted
/// backends, a second size class, services without a frontend so without
/// a table), then a round that adds 260 services, gives the frontend-less
/// ones a frontend (their first table, through the pipeline), replaces
/// endpoints and moves M back (tables rebuilt in place).
#[test]
fn pipelined_first_tables_leave_what_ordered_writes_leave() {
    let services = |round: usize| {
        let n = if round == 0 { 700 } else { 960 };
        let svcs = (0..n).map(|i| {
            let backends = (0..12)
                .map(|j| {
                    let net = if round == 1 && i % 4 == 0 && j % 5 == 0 { 40 } else { 20 };
                    let mut b =
                        backend(&format!("10.{}.{}.{j}", net + i / 200, i % 200), "10.0.0.11");
                    if i % 10 == 3 && j % 4 == 0 {
                        b.weight = 2;
                    }
                    b
                })
                .collect();
            let mut s =
                service(&format!("s{i}"), &format!("10.100.{}.{}", i / 200, i % 200 + 1), backends);
            if i % 10 == 5 && round == 0 {
                s.maglev_size = 4027;
            }
            if i % 10 == 7 && round == 0 {
                s.frontends.clear();
                s.sock_frontends.clear();
            }
            s
        });
        Desired::new(node(), svcs)
    };
    let mut states = Vec::new();
    for ordered in [false, true] {
        let pins = PinDir::new(if ordered { "tables-ordered" } else { "tables-pipelined" });
        let (_dp, mut path) = loaded(pins.path(), ordered);
        let mut rounds = Vec::new();
        for round in 0..2 {
            let d = services(round);
            let stats = path.apply(&d).unwrap();
            let state = raw_state(pins.path());
            let tables = state.iter().filter(|l| l.starts_with("table ")).count();
            let want = d
                .services
                .values()
                .filter(|s| !s.frontends.is_empty() || !s.sock_frontends.is_empty())
                .count();
            assert_eq!(tables, want, "tables, round {round}");
            rounds
                .push((lb::reconcile::ApplyStats { duration: Default::default(), ..stats }, state));
            // The maps re-read hold each table the bookkeeping has (its
            // hash): nothing rebuilt, nothing written.
            let again = path.resync(&d).unwrap();
            assert_eq!((again.tables_built, again.writes()), (0, 0), "resync after round {round}");
        }
        // A restart finds every table as the bookkeeping has it: nothing to write.
        let mut path = Datapath::restore(lb::store::BpfStore::open(pins.path()).unwrap()).unwrap();
        assert_eq!(path.apply(&services(1)).unwrap().writes(), 0, "writes after a restore");
        states.push(rounds);
    }
    for (round, (piped, ordered)) in states[0].iter().zip(&states[1]).enumerate() {
        assert_eq!(piped.0, ordered.0, "apply stats, round {round}");
        assert!(piped.1 == ordered.1, "maps differ after round {round}");
    }
}

/// Also with xlb_backends known to be created empty (the agent's cold
/// start: generations of ids above every one written are not read): the
/// same maps, through the cold start and the round that frees and reuses
/// ids (whose generations are then read).
#[test]
fn batched_backend_writes_leave_what_per_entry_writes_leave() {
    let services = |round: usize| {
        let svcs = (0..90).map(|i| {
            let backends = (0..100)
                .map(|j| {
                    // Round 1 replaces every third endpoint of every other service.
                    let net = if round == 1 && i % 2 == 0 && j % 3 == 0 { 30 } else { 20 };
                    let mut b =
                        backend(&format!("10.{}.{}.{j}", net + i / 50, i % 50), "10.0.0.11");
                    // Names and weights other than the default (an
                    // xlb_backend_meta entry); round 1 turns some back to
                    // the default (deleted) and others away from it.
                    if j % 7 == 0 && !(round == 1 && i % 3 == 0) {
                        b.weight = 2;
                    }
                    if j % 11 == 0 && round == 0 {
                        b.name = format!("pod-{i}-{j}").into();
                    }
                    if j % 13 == 0 && round == 1 && i % 3 == 1 {
                        b.weight = 3;
                    }
                    b
                })
                .collect();
            service(&format!("s{i}"), &format!("10.100.{}.{}", i / 200, i % 200 + 1), backends)
        });
        Desired::new(node(), svcs)
    };
    let mut states = Vec::new();
    // The per-entry store last: each of the others is compared with it.
    for mode in ["batch-on", "created-empty", "batch-off"] {
        let pins = PinDir::new(mode);
        let (_dp, mut path) = loaded_with(pins.path(), |store| match mode {
            "batch-off" => store.per_element(),
            "created-empty" => store.backends_created_empty(),
            _ => {}
        });
        let mut rounds = Vec::new();
        for round in 0..2 {
            let d = services(round);
            let stats = path.apply(&d).unwrap();
            let state = raw_state(pins.path());
            let custom = d
                .services
                .values()
                .flat_map(|s| s.backends.iter())
                .filter(|b| !lb::store::BackendMeta::is_default(&b.name, b.weight, b.addr, b.port))
                .count();
            assert!(custom > 0);
            let metas = state.iter().filter(|l| l.starts_with("meta ")).count();
            assert_eq!(metas, custom, "xlb_backend_meta entries, round {round}");
            rounds.push((stats.writes(), state));
        }
        // Every index resolves (xlb_svc_backend_ids, else xlb_svc_backends).
        assert_eq!(rounds[0].1.iter().filter(|l| l.starts_with("svc_backend_id ")).count(), 9000);
        states.push(rounds);
    }
    let per_entry = states.pop().unwrap();
    for (mode, rounds) in ["batch-on", "created-empty"].iter().zip(&states) {
        for (round, (batched, per_entry)) in rounds.iter().zip(&per_entry).enumerate() {
            assert_eq!(batched.0, per_entry.0, "{mode}: writes counted, round {round}");
            assert!(batched.1 == per_entry.1, "{mode}: maps differ after round {round}");
        }
    }
}
