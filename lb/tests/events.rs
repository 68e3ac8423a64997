//! `lb::events`, `lb::census` and the event options of `lb::loader` against
//! the real objects loaded into the kernel (privileged tier: root and BPF;
//! fails without them). The ring is sized by `MapSizes::events` (a pinned
//! ring of another size is replaced, a bad size refused naming the field);
//! `events_enabled = false` removes the event points even with a listener;
//! the listener configuration round-trips and expires; the census counts
//! every tracked map with its configured capacity.
use aya::programs::{TestRun, TestRunOptions};
use lb::{
    abi::{self, Counter, EventsCfg},
    census,
    events::{EventControl, EventHook, EventKind, EventReader, DEFAULT_RING_BYTES},
    loader::{Dataplane, LoadError, LoadOptions, MapSizes},
    maps::Maps,
};
use testkit::pins::{pinned_map_field, PinDir};

/// The client and service address of the connection-table entries written here.
const CLIENT: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 0, 1);
const VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 100, 0, 1);

fn load(pin: &PinDir, events: u32, events_enabled: bool) -> Result<Dataplane, LoadError> {
    Dataplane::load(&LoadOptions {
        pin_dir: pin.path().into(),
        sizes: MapSizes { events, ..MapSizes::small() },
        events_enabled,
        ..Default::default()
    })
}

fn ring_bytes(pin: &PinDir) -> u32 {
    pinned_map_field(&pin.path().join("xlb_events"), "max_entries") as u32
}

fn root() {
    testkit::require_root("this test (BPF)");
}

#[test]
fn ring_size_is_configured_and_replaced() {
    root();
    let pin = PinDir::new("size");
    drop(load(&pin, DEFAULT_RING_BYTES, true).expect("loading the datapath"));
    assert_eq!(ring_bytes(&pin), DEFAULT_RING_BYTES);
    // Reloaded with another size: the pinned ring is replaced.
    drop(load(&pin, 8192, true).expect("reloading with an 8 KiB ring"));
    assert_eq!(ring_bytes(&pin), 8192);
    let e = load(&pin, 5000, true).expect_err("5000 bytes is not a power of two");
    assert!(matches!(e, LoadError::RingSize { bytes: 5000, .. }), "{e:?}");
    assert!(e.to_string().contains("MapSizes.events = 5000"), "{e}");
    assert_eq!(ring_bytes(&pin), 8192, "a refused size leaves the ring alone");
}

/// A frame cut after its Ethernet header: drop_truncated in xlb_xdp.
fn run_truncated(dp: &mut Dataplane) {
    let mut frame = vec![0u8; 14];
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    frame[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    let mut out = vec![0u8; 256];
    let r = dp
        .xdp_program()
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    assert_eq!(r.return_value, 1, "XDP_DROP");
}

fn listen_for_drops(ctl: &mut EventControl) {
    let now = lb::events::monotonic_ns();
    ctl.set_config(EventsCfg {
        mask: abi::EV_F_DROP,
        flow_sample: 1,
        lease_ns: now + 5_000_000_000,
    })
    .expect("setting the listener");
}

#[test]
fn events_enabled_switches_the_event_points() {
    root();
    for enabled in [false, true] {
        let pin = PinDir::new(if enabled { "on" } else { "off" });
        let mut dp = load(&pin, DEFAULT_RING_BYTES, enabled).expect("loading the datapath");
        let mut ctl = EventControl::open(pin.path()).expect("EventControl::open");
        let mut reader = EventReader::open(pin.path()).expect("EventReader::open");
        listen_for_drops(&mut ctl);
        run_truncated(&mut dp);
        let stats = ctl.stats().expect("event stats");
        let ev = reader.next();
        if !enabled {
            assert_eq!(stats.sent, 0, "no event points with events_enabled = false");
            assert!(ev.is_none(), "{ev:?}");
            continue;
        }
        assert_eq!((stats.sent, stats.lost), (1, 0));
        let ev = ev.expect("one drop event in the ring");
        assert_eq!(EventKind::of(&ev), EventKind::Drop);
        assert_eq!(EventHook::of(&ev), EventHook::Xdp);
        assert_eq!(lb::events::drop_reason(&ev), Some(Ok(Counter::DropTruncated)));
        assert_eq!(ev.len, 14);
        assert!(reader.next().is_none());
        // No listener: no event.
        ctl.clear().expect("clearing the listener");
        run_truncated(&mut dp);
        assert_eq!(ctl.stats().unwrap().sent, 1);
        assert_eq!(reader.drain(), 0);
    }
}

#[test]
fn listener_config_round_trips_and_expires() {
    root();
    let pin = PinDir::new("cfg");
    let _dp = load(&pin, DEFAULT_RING_BYTES, true).expect("loading the datapath");
    let mut ctl = EventControl::open(pin.path()).expect("EventControl::open");
    let now = lb::events::monotonic_ns();
    let cfg = EventsCfg { mask: abi::EV_F_NEW_FLOW, flow_sample: 7, lease_ns: now + 1_000_000_000 };
    ctl.set_config(cfg).unwrap();
    assert_eq!(ctl.config().unwrap(), cfg);
    assert!(ctl.active(now).unwrap());
    assert!(!ctl.expire(now).unwrap(), "lease still running");
    assert!(ctl.expire(now + 2_000_000_000).unwrap(), "lease ran out");
    assert_eq!(ctl.config().unwrap(), EventsCfg { mask: 0, ..cfg });
    ctl.set_config(cfg).unwrap();
    ctl.clear().unwrap();
    assert_eq!(ctl.config().unwrap(), EventsCfg { mask: 0, flow_sample: 7, lease_ns: 0 });
    assert!(!ctl.active(now).unwrap());
}

#[test]
fn census_counts_every_tracked_map() {
    root();
    let pin = PinDir::new("census");
    let _dp = load(&pin, DEFAULT_RING_BYTES, true).expect("loading the datapath");
    let mut maps = Maps::open(pin.path()).expect("Maps::open");
    for i in 0..300u16 {
        let key = abi::FlowKey::of(CLIENT.into(), i, VIP.into(), 80, 6);
        let (set, way) = maps.ct.insert(&key, abi::CtEntry::to(1, 1, 1)).expect("xlb_ct insert");
        assert!(maps.ct.read_set(set).unwrap().way[way].valid(), "a valid way");
    }
    // Two allocated backend slots (flags != 0) among free ones.
    for id in [3u32, 9] {
        let mut b = maps.backends.get(&id, 0).expect("xlb_backends get");
        b.flags = abi::BE_F_ACTIVE;
        maps.backends.set(id, b, 0).expect("xlb_backends set");
    }
    let c = census::run(pin.path());
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    let s = MapSizes::small();
    for (map, cap) in [
        ("xlb_frontends", s.frontends),
        ("xlb_maglev", s.services),
        ("xlb_svc_backend_ids", s.services),
        ("xlb_svc_backends", s.backends),
        ("xlb_backends", s.backends),
        ("xlb_ct", s.ct.div_ceil(abi::CT_WAYS) * abi::CT_WAYS),
        ("xlb_affinity", s.affinity),
        ("xlb_dsr_nat", s.dsr_nat),
        ("xlb_source_ranges", s.source_ranges),
        ("xlb_svc_names", s.services),
        ("xlb_tx_ports", 64),
        ("xlb_frag4", s.frags),
        ("xlb_sock_cookie", s.sock_states),
    ] {
        let entries = match map {
            "xlb_ct" => 300,
            "xlb_backends" => 2,
            _ => 0,
        };
        let fill = c.maps.get(map).unwrap_or_else(|| panic!("{map} not counted"));
        assert_eq!(fill, &census::MapFill { entries, capacity: cap as u64 }, "{map}");
    }
    let missing = census::run(&pin.path().join("nowhere"));
    assert_eq!(missing.errors.len(), census::tracked().count(), "every map reported missing");
    assert!(census::tracked().all(|m| c.maps.contains_key(m)), "every tracked map counted");
    let e = missing.errors.get("xlb_ct").unwrap().to_string();
    assert!(e.contains("xlb_ct"), "{e}");
}
