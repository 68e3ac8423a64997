//! The layout of xlb_counters across an upgrade: a counters map pinned by an
//! agent of another layout (the 64 reason-only slots before counters had a
//! hook dimension) is replaced when the datapath loads, so the programs
//! never index past its end and lose their counts; maps that hold state are
//! reused as they are. Privileged tier: needs root, BPF and bpftool.
use std::process::Command;

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
