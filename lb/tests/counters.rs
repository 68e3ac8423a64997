//! The layout of xlb_counters across an upgrade: a counters map pinned by an
//! agent of another layout (the 64 reason-only slots before counters had a
//! hook dimension) is replaced when the datapath loads, so the programs
//! never index past its end and lose their counts; maps that hold state are
//! reused as they are. Privileged tier: needs root, BPF and bpftool.
use std::process::Command;

use lb::{
    abi,
    loader::{Dataplane, LoadOptions, MapSizes},
};
use testkit::pins::PinDir;

fn max_entries(pin: &PinDir, map: &str) -> u32 {
    let out = Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(pin.path().join(map))
        .output()
        .expect("running bpftool");
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("\"max_entries\":").expect("max_entries in bpftool output") + 14;
    text[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

fn map_id(pin: &PinDir, map: &str) -> String {
    let out = Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(pin.path().join(map))
        .output()
        .expect("running bpftool");
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("\"id\":").expect("id in bpftool output") + 5;
    text[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().to_owned()
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

    let opts =
        LoadOptions { pin_dir: pin.path().into(), sizes: MapSizes::small(), ..Default::default() };
    drop(Dataplane::load(&opts).expect("loading over the old counters map"));
    assert_eq!(max_entries(&pin, "xlb_counters"), abi::COUNTER_MAX);

    // A second load keeps every map, the new counters included.
    let (ct, counters) = (map_id(&pin, "xlb_ct"), map_id(&pin, "xlb_counters"));
    drop(Dataplane::load(&opts).expect("reloading"));
    assert_eq!(map_id(&pin, "xlb_ct"), ct, "xlb_ct is reused");
    assert_eq!(map_id(&pin, "xlb_counters"), counters, "xlb_counters of this layout is reused");
}
