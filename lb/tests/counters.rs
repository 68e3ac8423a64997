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
