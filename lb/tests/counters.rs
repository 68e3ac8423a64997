//! The layout of the counters across an upgrade: a counters map pinned by an
//! agent of another layout (the 64 reason-only slots before counters had a
//! hook dimension; xlb_backend_stats as a PERCPU_ARRAY before #14) is
//! replaced when the datapath loads, so the programs never index past its
//! end and lose their counts; maps that hold state are reused as they are.
//! And xlb_backend_stats' rows of CPUs: a backend's traffic counted on two
//! CPUs sums, and an id given anew starts from zero on every CPU.
//! Privileged tier: needs root, BPF and bpftool.
mod common;

use std::process::Command;

use common::*;
use lb::{
    abi,
    loader::{Dataplane, LoadOptions},
};
use testkit::pins::{pinned_map_field, PinDir};

/// The service address of the connection-table entries written here.
const VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 100, 0, 1);

fn max_entries(pin: &PinDir, map: &str) -> u64 {
    pinned_map_field(&pin.path().join(map), "max_entries")
}

fn map_id(pin: &PinDir, map: &str) -> u64 {
    pinned_map_field(&pin.path().join(map), "id")
}

#[test]
fn counters_of_another_layout_are_replaced_and_state_kept() {
    testkit::require_root("this test (BPF)");
    let pin = PinDir::new("ctrs");
    std::fs::create_dir_all(pin.path()).unwrap();
    let old = pin.path().join("xlb_counters");
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&old)
        .args(["type", "percpu_array", "key", "4", "value", "16", "entries", "64"])
        .args(["name", "xlb_counters"])
        .output()
        .expect("running bpftool");
    assert!(out.status.success(), "bpftool map create: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(max_entries(&pin, "xlb_counters"), 64);

    let opts = LoadOptions::small(pin.path());
    drop(Dataplane::load(&opts).expect("loading over the old counters map"));
    assert_eq!(max_entries(&pin, "xlb_counters"), u64::from(abi::COUNTER_MAX));

    // A second load keeps every map, the new counters included.
    let (ct, counters) = (map_id(&pin, "xlb_ct"), map_id(&pin, "xlb_counters"));
    drop(Dataplane::load(&opts).expect("reloading"));
    assert_eq!(map_id(&pin, "xlb_ct"), ct, "xlb_ct is reused");
    assert_eq!(map_id(&pin, "xlb_counters"), counters, "xlb_counters of this layout is reused");
}

/// #14 item 4: xlb_ct kept from an agent that wrote no tags (xlb_ct_tags
/// absent) gets its tags rebuilt from its ways when the datapath loads, so
/// its flows are still found; a tags map of another size is replaced.
#[test]
fn connection_table_tags_are_rebuilt_for_a_table_kept_without_them() {
    testkit::require_root("this test (BPF)");
    let pin = PinDir::new("cttags");
    let opts = LoadOptions::small(pin.path());
    drop(Dataplane::load(&opts).expect("loading"));
    let ct = lb::maps::CtTable::open(pin.path()).expect("xlb_ct");
    let mut written = Vec::new();
    for port in 1000..1300u16 {
        let client = std::net::Ipv4Addr::new(10, 0, (port >> 8) as u8, port as u8);
        let key = abi::FlowKey::of(client.into(), port, VIP.into(), 80, 6);
        written.push(ct.insert(&key, abi::CtEntry::to(1, 1, 1)).expect("insert"));
    }
    drop(ct);
    std::fs::remove_file(pin.path().join("xlb_ct_tags")).unwrap();
    let ct_id = map_id(&pin, "xlb_ct");
    drop(Dataplane::load(&opts).expect("reloading without tags"));
    assert_eq!(map_id(&pin, "xlb_ct"), ct_id, "xlb_ct is reused");
    let ct = lb::maps::CtTable::open(pin.path()).expect("xlb_ct");
    for &(set, way) in &written {
        let s = ct.read_set(set).unwrap();
        let tags = ct.read_tags(set).unwrap();
        assert_eq!(tags, lb::maps::CtTable::tags_of(&s), "set {set}");
        assert_eq!(tags.tag[way], abi::ct_tag(abi::flow_hash(&s.way[way].key)), "set {set}");
    }

    // Tags of another number of sets are replaced, and rebuilt.
    drop(ct);
    std::fs::remove_file(pin.path().join("xlb_ct_tags")).unwrap();
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(pin.path().join("xlb_ct_tags"))
        .args(["type", "array", "key", "4", "value", "8", "entries", "16"])
        .args(["name", "xlb_ct_tags"])
        .output()
        .expect("running bpftool");
    assert!(out.status.success(), "bpftool map create: {}", String::from_utf8_lossy(&out.stderr));
    drop(Dataplane::load(&opts).expect("reloading over small tags"));
    assert_eq!(max_entries(&pin, "xlb_ct_tags"), max_entries(&pin, "xlb_ct"));
    let ct = lb::maps::CtTable::open(pin.path()).expect("xlb_ct");
    for &(set, way) in &written {
        let s = ct.read_set(set).unwrap();
        assert_eq!(
            ct.read_tags(set).unwrap().tag[way],
            abi::ct_tag(abi::flow_hash(&s.way[way].key))
        );
    }
}

/// Creates a map named xlb_backend_stats pinned at `path`.
fn bpftool_create(path: &std::path::Path, args: &[&str]) {
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(path)
        .args(args)
        .args(["name", "xlb_backend_stats"])
        .output()
        .expect("running bpftool");
    assert!(out.status.success(), "bpftool map create: {}", String::from_utf8_lossy(&out.stderr));
}

/// The kernel's possible CPUs, as the loader sizes xlb_backend_stats.
fn cpus() -> u64 {
    u64::from(lb::loader::possible_cpus().expect("possible CPUs"))
}

/// #14 item 5: xlb_backend_stats pinned by an agent before it was a plain
/// ARRAY (a PERCPU_ARRAY of one value per backend) is replaced, not
/// misread: the programs would index its rows past the end.
#[test]
fn backend_stats_of_the_per_cpu_layout_are_replaced() {
    testkit::require_root("this test (BPF)");
    let pin = PinDir::new("bestats");
    std::fs::create_dir_all(pin.path()).unwrap();
    let opts = LoadOptions::small(pin.path());
    let want = u64::from(opts.sizes.backends) * cpus();
    let path = pin.path().join("xlb_backend_stats");
    // The old agent's map, then one of this build's size but the old type.
    for entries in [u64::from(opts.sizes.backends), want] {
        let _ = std::fs::remove_file(&path);
        let entries = entries.to_string();
        bpftool_create(
            &path,
            &["type", "percpu_array", "key", "4", "value", "16", "entries", &entries],
        );
        drop(Dataplane::load(&opts).expect("loading over the per-CPU backend stats"));
        assert_eq!(max_entries(&pin, "xlb_backend_stats"), want);
        lb::maps::Maps::open(pin.path()).expect("the maps open as this build's types");
    }

    // This layout is kept across a reload.
    let id = map_id(&pin, "xlb_backend_stats");
    drop(Dataplane::load(&opts).expect("reloading"));
    assert_eq!(map_id(&pin, "xlb_backend_stats"), id, "xlb_backend_stats is reused");

    // Until a new agent replaces it, an old agent's map is read as it is
    // (`xlb` commands of this build on an older agent's maps).
    std::fs::remove_file(&path).unwrap();
    let entries = opts.sizes.backends.to_string();
    bpftool_create(
        &path,
        &["type", "percpu_array", "key", "4", "value", "16", "entries", &entries],
    );
    let mut maps = lb::maps::Maps::open(pin.path()).expect("the maps with the old backend stats");
    maps.backend_stats.zero(7).expect("zeroing the old layout");
    let rows = maps.backend_stats.get(7).expect("reading the old layout");
    assert_eq!(rows.len() as u64, cpus());
}

/// Pins the calling thread (the lab's) to `cpu`: BPF_PROG_TEST_RUN runs
/// the program there.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: plain syscalls on a zeroed cpu_set_t owned here.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
        assert_eq!(rc, 0, "sched_setaffinity to CPU {cpu}: {}", std::io::Error::last_os_error());
        assert_eq!(libc::sched_getcpu(), cpu as i32, "running on CPU {cpu}");
    }
}

#[test]
fn backend_traffic_of_two_cpus_sums_and_a_reused_id_starts_from_zero() {
    assert!(cpus() >= 2, "this test counts on CPUs 0 and 1; the kernel has {} CPU", cpus());
    with_lab("bestats2", |lab| {
        let v6 = false;
        lab.apply(&[web(v6)]);
        let (syn, ack) = (syn(v6, CLIENT_PORT).build(), ack(v6, CLIENT_PORT).build());
        pin_to_cpu(0);
        assert_eq!(lab.run(&syn).0, XDP_TX, "SYN on CPU 0");
        pin_to_cpu(1);
        assert_eq!(lab.run(&ack).0, XDP_TX, "ACK on CPU 1");
        assert_eq!(lab.run(&ack).0, XDP_TX, "ACK on CPU 1, again");

        let be = &lab.listing("web4").backends[0];
        let bytes = (syn.len() + 2 * ack.len()) as u64;
        assert_eq!((be.packets, be.bytes), (3, bytes), "the listing sums both CPUs");
        let rows = lab.path.maps().backend_stats.get(be.id).expect("xlb_backend_stats");
        let packets: Vec<u64> = rows.iter().map(|c| c.packets).collect();
        assert_eq!(packets[..2], [1, 2], "each CPU counted in its own row");
        assert!(packets[2..].iter().all(|&p| p == 0), "no other CPU counted: {packets:?}");

        // The backend goes; the next one takes its id with every row zeroed.
        let id = be.id;
        lab.apply(&[]);
        let mut other = web(v6);
        other.backends = vec![backend(pod(2, 1, v6), node(2, v6))];
        lab.apply(&[other]);
        let be = &lab.listing("web4").backends[0];
        assert_eq!(be.id, id, "the id is given anew");
        assert_eq!((be.packets, be.bytes), (0, 0), "a reused id starts from zero");
        let rows = lab.path.maps().backend_stats.get(id).expect("xlb_backend_stats");
        assert!(rows.iter().all(|c| c.packets == 0 && c.bytes == 0), "rows: {rows:?}");
    });
}
