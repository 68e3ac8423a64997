//! A/B timing of xlb_xdp object variants on the reference benchmark frames
//! (shared/bench/packets), for datapath optimisation and ablation work. Not a
//! correctness test: `cargo test -p xlb-lb --release --test perf_ablation --
//! --ignored --nocapture`.
//!
//! Method (shared/bench/packets/README.md): BPF_PROG_TEST_RUN with repeat=N
//! of the testkit/bpf/xlb_bench.c wrapper, which restores the original frame every
//! iteration and tail-calls the program under test; the baseline is the same
//! wrapper tail-calling xlb_pass. Every round times the baseline and every
//! variant on one frame in a rotating order; a variant's net cost is the
//! median over rounds of (variant - baseline of the same round).
//!
//! Variants: the embedded xlb_xdp ("embedded") plus any object files named
//! in XLB_ABLATION=name=path.o,name=path.o (compiled from a scratch copy of
//! xdp/ and lb/bpf/, e.g. with a component short-circuited). They share the
//! pinned maps of one loaded datapath, programmed like the benchmark: IPv4
//! VIP 10.100.0.1 TCP 80 / UDP 53, IPv6 VIP 2001:db8:100::1 TCP 80, 100
//! backends each over four nodes, M = 16381, Geneve.
//! Each named object is loaded XLB_ABLATION_COPIES times (default 3): where
//! the JIT image and the object's private maps land moves one load's time by
//! up to ~10 ns, so a variant's figure is the median over rounds and loads.
//! Other knobs: XLB_ABLATION_SMALL_MAPS (1: MapSizes::small()),
//! XLB_ABLATION_ROUNDS (default 21), XLB_ABLATION_REPEAT
//! (20000), XLB_ABLATION_NEW_FLOW (1: also time a new flow per packet),
//! XLB_ABLATION_PACKETS (../../shared/bench/packets).
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, MapData, ProgramArray},
    programs::Xdp,
    Ebpf, EbpfLoader,
};
use lb::{
    datapath::Datapath,
    loader::{read_counters, Dataplane, LoadOptions, MapSizes},
    model::{
        Backend, BackendState, Desired, Encap, Frontend, FrontendKind, NodeConfig, Proto, Service,
        ServiceKey, MAX_MAGLEV_SIZE,
    },
};
use testkit::{
    bench::{self, BenchFrame},
    netns::{in_private_netns, ip_batch},
    pins::PinDir,
};

const FRAMES: [&str; 5] =
    ["tcp_syn_vip.bin", "tcp_ack_vip.bin", "udp_vip.bin", "tcp_nonvip.bin", "tcp6_syn_vip.bin"];
const NODES: u8 = 4;

/// The wrapper's template for `frame` (testkit::bench's encoder).
fn template(frame: &[u8], new_flow: bool) -> BenchFrame {
    BenchFrame::encode(frame, new_flow, 1).expect("a benchmark frame")
}

fn node(n: u8, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x10 + u16::from(n)))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10 + n))
    }
}

fn service(name: &str, vip: &str, port: u16, proto: Proto) -> Service {
    let vip: IpAddr = vip.parse().unwrap();
    let v6 = vip.is_ipv6();
    let mut s = Service::new(ServiceKey::new("bench", name, ""));
    s.frontends.push(Frontend { addr: vip, port, proto, kind: FrontendKind::LoadBalancer });
    s.backends = (0..100u8)
        .map(|i| {
            let (n, m) = (1 + i % NODES, i / NODES);
            let addr = if v6 {
                IpAddr::V6(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0x244,
                    n.into(),
                    0,
                    0,
                    0,
                    0x10 + u16::from(m),
                ))
            } else {
                IpAddr::V4(Ipv4Addr::new(10, 244, n, 10 + m))
            };
            Backend {
                name: format!("{addr}:{port}").into(),
                addr,
                port,
                node: node(n, v6),
                weight: 1,
                state: BackendState::Active,
            }
        })
        .collect();
    s.maglev_size = MAX_MAGLEV_SIZE;
    s.encap = Encap::Geneve;
    s
}

fn test_run(prog: &Xdp, frame: &[u8], ifindex: u32, repeat: u32) -> (u32, Vec<u8>, f64) {
    let mut out = vec![0u8; 512];
    let r =
        bench::test_run(prog, frame, ifindex, repeat, Some(&mut out)).expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out, r.duration.as_nanos() as f64)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn load_xdp(bytes: &[u8], pin: Option<&Path>, name: &str) -> Ebpf {
    let mut loader = EbpfLoader::new();
    // The set index is computed from the pinned table's number of sets.
    let sets = pin
        .and_then(|p| aya::maps::MapData::from_pin(p.join("xlb_ct")).ok())
        .and_then(|d| d.info().ok())
        .map_or(MapSizes::default().ct_sets(), |i| i.max_entries());
    // xlb_backend_stats' rows are as wide as the backends it is sized for.
    let slots = MapSizes::default().backends;
    if let Some(pin) = pin {
        let s = MapSizes::default();
        let cpus = lb::loader::possible_cpus().expect("possible CPUs");
        loader.default_map_pin_directory(pin);
        for (m, n) in [
            ("xlb_frontends", s.frontends),
            ("xlb_maglev", s.services),
            ("xlb_svc_names", s.services),
            ("xlb_svc_stats", s.services),
            ("xlb_svc_backend_ids", s.services),
            ("xlb_svc_backends", s.backends),
            ("xlb_backends", s.backends),
            ("xlb_backend_stats", s.backend_stats_entries(cpus).expect("backends x CPUs")),
            ("xlb_ct", s.ct_sets()),
            ("xlb_ct_tags", s.ct_sets()),
            ("xlb_affinity", s.affinity),
            ("xlb_dsr_nat", s.dsr_nat),
            ("xlb_source_ranges", s.source_ranges),
            ("xlb_tx_ports", 64),
        ] {
            loader.map_max_entries(m, n);
        }
        loader.override_global(lb::loader::CT_SETS_GLOBAL, &sets, false);
        loader.override_global(lb::loader::BACKEND_SLOTS_GLOBAL, &slots, false);
    }
    let mut e = loader.load(bytes).unwrap_or_else(|err| panic!("loading {name}: {err:?}"));
    let p: &mut Xdp =
        e.program_mut(name).unwrap_or_else(|| panic!("no {name}")).try_into().unwrap();
    p.load().unwrap_or_else(|err| panic!("verifier rejected {name}: {err:?}"));
    e
}

fn prog<'a>(e: &'a Ebpf, name: &str) -> &'a Xdp {
    e.program(name).unwrap().try_into().unwrap()
}

#[test]
#[ignore = "benchmark: cargo test -p xlb-lb --release --test perf_ablation -- --ignored --nocapture"]
fn ablation() {
    testkit::require_root("the ablation benchmark");
    in_private_netns(run).expect("a private network namespace");
}

fn run() {
    let mut cmds = vec![
        "link set lo up".to_string(),
        "link add xb0 address 02:00:00:00:00:01 mtu 1600 type veth peer name xb1 address 02:00:00:00:00:02 mtu 1600".into(),
        "link set xb0 up".into(),
        "link set xb1 up".into(),
        "addr add 10.0.0.2/24 dev xb0".into(),
        "addr add 2001:db8:f::2/64 dev xb0 nodad".into(),
    ];
    for n in 1..=NODES {
        for v6 in [false, true] {
            cmds.push(format!(
                "neigh replace {} lladdr 02:00:00:00:0a:{:02x} dev xb0 nud permanent",
                node(n, v6),
                10 + n
            ));
        }
    }
    ip_batch(&cmds).unwrap_or_else(|e| panic!("{e}"));
    for f in ["/proc/sys/net/ipv4/conf/all/forwarding", "/proc/sys/net/ipv6/conf/all/forwarding"] {
        std::fs::write(f, "1").unwrap();
    }
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(c"xb0".as_ptr()) };
    assert_ne!(ifindex, 0);

    let pin = PinDir::new("ablation");
    // XLB_ABLATION_SMALL_MAPS=1: MapSizes::small(), e.g. a 65536-entry xlb_ct
    // instead of 524288 (how much of a new flow is cache and TLB misses).
    let sizes = if env_u32("XLB_ABLATION_SMALL_MAPS", 0) != 0 {
        MapSizes::small()
    } else {
        MapSizes::default()
    };
    let mut dp =
        Dataplane::load(&LoadOptions { pin_dir: pin.path().into(), sizes, ..Default::default() })
            .expect("loading the datapath");
    let mut path = Datapath::open(pin.path()).expect("Datapath::open");
    let desired = Desired {
        node: NodeConfig {
            tunnel_v4: Some(Ipv4Addr::new(10, 0, 0, 2)),
            tunnel_v6: Some("2001:db8:f::2".parse().unwrap()),
        },
        services: [
            service("v4-http", "10.100.0.1", 80, Proto::Tcp),
            service("v4-dns", "10.100.0.1", 53, Proto::Udp),
            service("v6-http", "2001:db8:100::1", 80, Proto::Tcp),
        ]
        .into_iter()
        .map(|s| (s.key.clone(), s))
        .collect(),
    };
    path.apply(&desired).expect("apply");

    let mut bench = load_xdp(testkit::objects::bench(), None, "xlb_bench");
    let mut frames_map: Array<MapData, BenchFrame> =
        bench.take_map("xlb_bench_frame").unwrap().try_into().unwrap();
    let mut progs: ProgramArray<MapData> =
        bench.take_map("xlb_bench_progs").unwrap().try_into().unwrap();
    let pass = load_xdp(testkit::objects::pass(), None, "xlb_pass");

    // Variants: (name, object). The embedded one is dp's own program.
    let mut variants: Vec<(String, Ebpf)> = Vec::new();
    let copies = env_u32("XLB_ABLATION_COPIES", 3);
    if let Ok(spec) = std::env::var("XLB_ABLATION") {
        for item in spec.split(',').filter(|s| !s.is_empty()) {
            let (name, file) = item.split_once('=').expect("XLB_ABLATION: name=path.o,...");
            let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{file}: {e}"));
            // Several loads of one object: where the JIT image and the
            // object's private maps land moves its time by up to ~10 ns.
            for _ in 0..copies {
                variants.push((name.into(), load_xdp(&bytes, Some(pin.path()), "xlb_xdp")));
            }
        }
    }
    let packets = std::env::var("XLB_ABLATION_PACKETS").map(PathBuf::from).unwrap_or_else(|_| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench/packets")
    });
    let frames: Vec<(String, Vec<u8>)> = FRAMES
        .iter()
        .map(|n| (n.to_string(), std::fs::read(packets.join(n)).expect("reading frame")))
        .collect();

    let names: Vec<String> = std::iter::once("embedded".to_string())
        .chain(variants.iter().map(|v| v.0.clone()))
        .collect();
    let mut unique: Vec<String> = Vec::new();
    for n in &names {
        if !unique.contains(n) {
            unique.push(n.clone());
        }
    }
    let progs_of = |dp: &mut Dataplane| -> Vec<aya::programs::ProgramFd> {
        let mut v = vec![dp.xdp_program().fd().unwrap().try_clone().unwrap()];
        for (_, e) in &variants {
            v.push(prog(e, "xlb_xdp").fd().unwrap().try_clone().unwrap());
        }
        v
    };
    let fds = progs_of(&mut dp);
    let pass_fd = prog(&pass, "xlb_pass").fd().unwrap().try_clone().unwrap();

    // Behaviour check: each variant once per frame (after a warm-up run
    // that inserts the flow), verdict, reason and output vs the embedded.
    for (fname, frame) in &frames {
        let mut reference: Option<(u32, Vec<u8>)> = None;
        for (i, vname) in names.iter().enumerate() {
            if i > 0 && names[i - 1] == *vname {
                continue;
            }
            let p =
                if i == 0 { dp.xdp_program() as &Xdp } else { prog(&variants[i - 1].1, "xlb_xdp") };
            test_run(p, frame, ifindex, 1);
            let before = read_counters(pin.path()).unwrap();
            let (v, out, _) = test_run(p, frame, ifindex, 1);
            let after = read_counters(pin.path()).unwrap();
            let reasons: Vec<_> = before
                .iter()
                .zip(&after)
                .filter(|(a, b)| a.1.packets != b.1.packets)
                .map(|(a, _)| a.0.name())
                .collect();
            let same = match &reference {
                None => {
                    reference = Some((v, out.clone()));
                    "ref".to_string()
                }
                Some((rv, rout)) => (v == *rv && out == *rout).to_string(),
            };
            eprintln!("check {fname:18} {vname:14} verdict {v} reasons {reasons:?} same_as_embedded {same}");
        }
    }

    let rounds = env_u32("XLB_ABLATION_ROUNDS", 21);
    let repeat = env_u32("XLB_ABLATION_REPEAT", 20000);
    let mut cases: Vec<(String, BenchFrame)> =
        frames.iter().map(|(n, b)| (n.clone(), template(b, false))).collect();
    if env_u32("XLB_ABLATION_NEW_FLOW", 1) != 0 {
        cases.push(("new flow (SYN)".into(), template(&frames[0].1, true)));
    }
    let k = names.len() + 1; // slot 0: baseline
    let mut table: BTreeMap<usize, Vec<Vec<f64>>> = BTreeMap::new();
    for round in 0..rounds {
        for (ci, (_, tpl)) in cases.iter().enumerate() {
            frames_map.set(0, *tpl, 0).unwrap();
            let mut ns = vec![0.0; k];
            for j in 0..k {
                let slot = (j + round as usize + ci) % k;
                let fd = if slot == 0 { &pass_fd } else { &fds[slot - 1] };
                progs.set(0, fd, 0).unwrap();
                let bytes = &tpl.bytes[..tpl.len as usize];
                ns[slot] = test_run(prog(&bench, "xlb_bench"), bytes, ifindex, repeat).2;
            }
            table.entry(ci).or_insert_with(|| vec![Vec::new(); k]);
            for (slot, v) in ns.iter().enumerate() {
                table.get_mut(&ci).unwrap()[slot].push(*v);
            }
        }
    }
    println!("\n{rounds} rounds x {repeat} iterations; net ns = median over rounds of (variant - xlb_pass)");
    print!("| frame | pass ns |");
    for n in &unique {
        print!(" {n} |");
    }
    println!();
    for (ci, (cname, _)) in cases.iter().enumerate() {
        let t = &table[&ci];
        print!("| {cname} | {:.0} |", median(&t[0]));
        for u in &unique {
            let mut d: Vec<f64> = Vec::new();
            for slot in 1..k {
                if names[slot - 1] == *u {
                    d.extend(t[slot].iter().zip(&t[0]).map(|(x, b)| x - b));
                }
            }
            let mut s = d.clone();
            s.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let (q1, q3) = (s[s.len() / 4], s[3 * s.len() / 4]);
            print!(" {:.0} ({:.0}-{:.0}) |", median(&d), q1, q3);
        }
        println!();
    }
    drop(variants);
    drop(dp);
}
