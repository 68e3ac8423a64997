//! Benchmark: the fast-path cost of the event stream (events.h). Net ns per
//! packet of xlb_xdp in three variants, same maps, same frames:
//!   disabled     loaded with the load-time constant xlb_events_enabled = 0
//!                (the verifier removes every event point);
//!   no listener  the shipped program, xlb_events_cfg.mask = 0;
//!   listener     the shipped program with a listener's mask set (every new
//!                flow and drop writes a 72-byte record to the ring).
//! Method (shared/bench/packets/README.md): the testkit/bpf/xlb_bench.c
//! wrapper (testkit::objects::bench()) restores the frame each iteration and tail-calls
//! the program under test; BPF_PROG_TEST_RUN repeat=R; the same wrapper
//! around xlb_pass is the baseline subtracted; variants interleaved per
//! round in rotating order, pinned to one CPU; net = median over rounds of
//! (variant - pass). The machine is shared: read the table with its spread.
//! R is kept below the ring's capacity and the ring drained after each run,
//! so the listener variant measures successful writes, not a full ring.
//!
//! Run: `cargo test -p xlb-control --release --test monitor_overhead --
//! --ignored --nocapture` (root). Prints a table; asserts only that the
//! method is valid (iterations ran, events appeared exactly when expected).
use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::Command,
};

use aya::{
    maps::{Array, Map, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::Xdp,
    Ebpf, EbpfLoader,
};
use lb::{
    abi::{self, EventsCfg},
    datapath::Datapath,
    loader::{Dataplane, LoadOptions, MapSizes},
    model::{
        Backend, BackendState, Desired, Frontend, FrontendKind, NodeConfig, Proto, Service,
        ServiceKey,
    },
};
use testkit::{
    bench::{test_run, BenchFrame},
    netns::in_private_netns,
    packet::bench,
    pins::PinDir,
};

const ROUNDS: usize = 101;
/// Iterations per wrapper run: below the default ring's ~3,270 records.
const REPEAT: u32 = 2500;
const LB_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// The wrapper's template for `frame` (testkit::bench's encoder).
fn template(frame: &[u8], new_flow: bool) -> BenchFrame {
    BenchFrame::encode(frame, new_flow, 1).expect("a benchmark frame")
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().expect(args[0]);
    assert!(st.success(), "{args:?}: {st}");
}

fn open<T: TryFrom<Map>>(pin: &Path, name: &str) -> T
where
    T::Error: std::fmt::Debug,
{
    let data = MapData::from_pin(pin.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    Map::from_map_data(data).unwrap().try_into().unwrap()
}

/// xlb_xdp loaded on the pinned maps, with xlb_events_enabled = `enabled`.
fn load_xdp(pin: &Path, enabled: u32) -> Ebpf {
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin)
        .override_global("xlb_events_enabled", &enabled, true)
        .load(lb::objects::xdp())
        .expect("loading xlb_xdp");
    let p: &mut Xdp = ebpf.program_mut("xlb_xdp").unwrap().try_into().unwrap();
    p.load().expect("verifying xlb_xdp");
    ebpf
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn desired() -> Desired {
    let mut s = Service::new(ServiceKey::new("default", "bench", "http"));
    s.frontends.push(Frontend {
        addr: bench::VIP_V4.into(),
        port: 80,
        proto: Proto::Tcp,
        kind: FrontendKind::LoadBalancer,
    });
    s.backends = (0..100u32)
        .map(|i| {
            let addr = IpAddr::V4(Ipv4Addr::new(10, 244, (i % 3 + 1) as u8, (10 + i / 3) as u8));
            Backend {
                name: format!("{addr}:80").into(),
                addr,
                port: 80,
                node: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 11 + (i % 3) as u8)),
                weight: 1,
                state: BackendState::Active,
            }
        })
        .collect();
    Desired {
        node: NodeConfig { tunnel_v4: Some(LB_V4), tunnel_v6: None },
        services: [(s.key.clone(), s)].into_iter().collect(),
    }
}

#[test]
#[ignore = "benchmark: cargo test -p xlb-control --release --test monitor_overhead -- --ignored --nocapture"]
fn event_stream_overhead() {
    testkit::require_root("this benchmark (BPF, netns)");
    in_private_netns(|| {
        // One CPU for every run: no migration between variants.
        // SAFETY: a zeroed cpu_set_t with one CPU set, for this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        }
        sh(&[
            "ip", "link", "add", "xb0", "mtu", "1600", "type", "veth", "peer", "name", "xb1",
            "mtu", "1600",
        ]);
        sh(&["ip", "link", "set", "xb0", "address", "02:00:00:00:00:01", "up"]);
        sh(&["ip", "link", "set", "xb1", "address", "02:00:00:00:00:02", "up"]);
        sh(&["ip", "addr", "add", "10.0.0.2/24", "dev", "xb0"]);
        sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        for n in 1..=3 {
            let a = format!("10.0.0.{}", 10 + n);
            let mac = format!("02:00:00:00:01:{n:02x}");
            sh(&["ip", "neigh", "replace", &a, "lladdr", &mac, "dev", "xb0", "nud", "permanent"]);
        }
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(c"xb0".as_ptr()) };
        let pin = PinDir::new("evbench");
        let _dp = Dataplane::load(&LoadOptions {
            pin_dir: pin.path().into(),
            sizes: MapSizes::default(),
            ..Default::default()
        })
        .expect("loading the datapath");
        Datapath::open(pin.path()).unwrap().apply(&desired()).unwrap();

        let disabled = load_xdp(pin.path(), 0);
        let enabled = load_xdp(pin.path(), 1);
        let mut pass = EbpfLoader::new().load(testkit::objects::pass()).unwrap();
        let p: &mut Xdp = pass.program_mut("xlb_pass").unwrap().try_into().unwrap();
        p.load().unwrap();
        let mut wrapper = EbpfLoader::new().load(testkit::objects::bench()).unwrap();
        let w: &mut Xdp = wrapper.program_mut("xlb_bench").unwrap().try_into().unwrap();
        w.load().unwrap();
        let mut frames: Array<MapData, BenchFrame> =
            wrapper.take_map("xlb_bench_frame").unwrap().try_into().unwrap();
        let mut progs: ProgramArray<MapData> =
            wrapper.take_map("xlb_bench_progs").unwrap().try_into().unwrap();
        let wstats: PerCpuArray<MapData, u64> =
            wrapper.take_map("xlb_bench_stats").unwrap().try_into().unwrap();
        let mut cfg: Array<MapData, EventsCfg> = open(pin.path(), "xlb_events_cfg");
        let evstats: PerCpuArray<MapData, u64> = open(pin.path(), "xlb_event_stats");
        let mut ring: RingBuf<MapData> = open(pin.path(), "xlb_events");
        let sent = || -> u64 { evstats.get(&abi::EV_STAT_SENT, 0).unwrap().iter().sum() };
        let lost = || -> u64 { evstats.get(&abi::EV_STAT_LOST, 0).unwrap().iter().sum() };
        let iterations = || -> u64 { wstats.get(&0, 0).unwrap().iter().sum() };

        let fd_of = |e: &Ebpf, name: &str| {
            let p: &Xdp = e.program(name).unwrap().try_into().unwrap();
            p.fd().unwrap().try_clone().unwrap()
        };
        let targets = [
            ("pass", fd_of(&pass, "xlb_pass")),
            ("disabled", fd_of(&disabled, "xlb_xdp")),
            ("no listener", fd_of(&enabled, "xlb_xdp")),
            ("listener", fd_of(&enabled, "xlb_xdp")),
        ];
        let syn = bench::frames()[0].1.build();
        let ack = bench::frames()[1].1.build();
        let truncated = syn[..14 + 10].to_vec();
        let cases: [(&str, BenchFrame); 4] = [
            ("tcp_syn_vip (established)", template(&syn, false)),
            ("tcp_ack_vip (established)", template(&ack, false)),
            ("new flow (SYN, insert)", template(&syn, true)),
            ("truncated (drop)", template(&truncated, false)),
        ];
        let wrapper_prog: &Xdp = wrapper.program("xlb_bench").unwrap().try_into().unwrap();
        let run = |frame: &[u8]| -> f64 {
            let r = test_run(wrapper_prog, frame, ifindex, REPEAT, None).expect("BPF_PROG_TEST_RUN");
            r.duration.as_nanos() as f64
        };
        // Warm-up, no listener: the established cases get their connection
        // entry, caches fill.
        progs.set(0, &targets[2].1, 0).unwrap();
        for (_, tpl) in &cases {
            frames.set(0, *tpl, 0).unwrap();
            run(&tpl.bytes[..tpl.len as usize]);
        }
        let mut ns = vec![vec![Vec::new(); targets.len()]; cases.len()];
        let mut validation = Vec::new();
        for round in 0..ROUNDS {
            for (ci, (_, tpl)) in cases.iter().enumerate() {
                frames.set(0, *tpl, 0).unwrap();
                let frame = &tpl.bytes[..tpl.len as usize];
                for k in 0..targets.len() {
                    let ti = (k + round + ci) % targets.len();
                    let (name, fd) = &targets[ti];
                    progs.set(0, fd, 0).unwrap();
                    let listen = *name == "listener";
                    cfg.set(
                        0,
                        EventsCfg {
                            mask: if listen { abi::EV_F_NEW_FLOW | abi::EV_F_DROP } else { 0 },
                            flow_sample: 1,
                            lease_ns: u64::MAX,
                        },
                        0,
                    )
                    .unwrap();
                    let (s0, l0, i0) = (sent(), lost(), iterations());
                    let t = run(frame);
                    let (ds, dl, di) = (sent() - s0, lost() - l0, iterations() - i0);
                    while ring.next().is_some() {}
                    assert_eq!(
                        di, REPEAT as u64,
                        "{name}: wrapper ran {di} of {REPEAT} iterations"
                    );
                    if round == 0 {
                        validation
                            .push(format!("{:<28} {name:<12} events {ds} lost {dl}", cases[ci].0));
                    }
                    let expect_events = listen && (ci == 2 || ci == 3);
                    assert_eq!(dl, 0, "{name} {}: ring full during the run", cases[ci].0);
                    assert_eq!(
                        ds,
                        if expect_events { REPEAT as u64 } else { 0 },
                        "{name} {}: events",
                        cases[ci].0
                    );
                    if round > 0 {
                        ns[ci][ti].push(t);
                    }
                }
            }
        }
        cfg.set(0, EventsCfg { mask: 0, flow_sample: 0, lease_ns: 0 }, 0).unwrap();
        eprintln!("validation (round 0):\n  {}", validation.join("\n  "));
        eprintln!(
            "\n{ROUNDS} rounds x {REPEAT} iterations, net ns/packet over the wrapper + xlb_pass baseline (medians)\n"
        );
        eprintln!(
            "| frame | disabled | enabled, no listener | (+%) | listener | (+%) |\n|---|---|---|---|---|---|"
        );
        for (ci, (name, _)) in cases.iter().enumerate() {
            let net = |ti: usize| -> f64 {
                let mut d: Vec<f64> =
                    ns[ci][ti].iter().zip(&ns[ci][0]).map(|(x, b)| x - b).collect();
                median(&mut d)
            };
            let (d, n, l) = (net(1), net(2), net(3));
            eprintln!(
                "| {name} | {d:.1} | {n:.1} | {:+.1}% | {l:.1} | {:+.1}% |",
                (n - d) / d * 100.0,
                (l - d) / d * 100.0
            );
        }
    })
    .expect("a private network namespace");
}
