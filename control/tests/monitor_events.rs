//! `xlb monitor --json` against the real datapath (privileged tier: root,
//! BPF, netns; fails without them). The XDP program is loaded and pinned in
//! a private network namespace, programmed through `lb::datapath`, and a
//! scripted sequence of frames runs through it with BPF_PROG_TEST_RUN; the
//! real `xlb monitor` process reads the real ring buffer and must print
//! exactly the expected events, in order, with its filters applied. Also
//! checked: no event is built while nobody listens, a second monitor is
//! refused (one consumer per ring), a monitor that exits clears the
//! listener mask, and new-flow sampling.
use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData, PerCpuArray};
use lb::{
    abi::{self, EventsCfg},
    datapath::Datapath,
    loader::{Dataplane, LoadOptions},
    model::{
        Backend, BackendState, Desired, Frontend, FrontendKind, NodeConfig, Proto, Service,
        ServiceKey,
    },
};
use serde_json::Value;
use testkit::{
    bench::test_run,
    netns::in_private_netns,
    packet::{bench, Frame},
    pins::PinDir,
};

const XLB: &str = env!("CARGO_BIN_EXE_xlb");
const LB_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const VIP: Ipv4Addr = bench::VIP_V4;
/// A VIP whose service has no backend: its packets drop (no_backend).
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 2);
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const WAIT: Duration = Duration::from_secs(10);

/// A running `xlb monitor`, killed on drop; its stdout lines on a channel.
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Monitor {
    /// Starts `xlb monitor --json` and waits until it listens (it says so
    /// on stderr once it holds the ring and its lease).
    fn start(pin: &Path, extra: &[&str]) -> Monitor {
        let mut child = Command::new(XLB)
            .args(["monitor", "--json", "--pin-dir"])
            .arg(pin)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning xlb monitor");
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let (etx, erx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[monitor] {l}");
                let _ = etx.send(l);
            }
        });
        let t0 = Instant::now();
        loop {
            let left = WAIT.saturating_sub(t0.elapsed());
            match erx.recv_timeout(left) {
                Ok(l) if l.contains("listening") => break,
                Ok(_) => {}
                Err(e) => {
                    panic!("xlb monitor never said it listens ({e}); exit: {:?}", child.try_wait())
                }
            }
        }
        Monitor { child, lines }
    }

    /// The next `n` events (panics after WAIT).
    fn events(&self, n: usize) -> Vec<Value> {
        let t0 = Instant::now();
        (0..n)
            .map(|i| {
                let left = WAIT.saturating_sub(t0.elapsed());
                let l = self.lines.recv_timeout(left).unwrap_or_else(|e| {
                    panic!("xlb monitor printed {i} of {n} expected events ({e})")
                });
                serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Nothing more is printed within `d`.
    fn quiet_for(&self, d: Duration) {
        if let Ok(l) = self.lines.recv_timeout(d) {
            panic!("unexpected extra event: {l}");
        }
    }

    fn wait_exit(&mut self) {
        let t0 = Instant::now();
        while t0.elapsed() < WAIT {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "xlb monitor exited with {st}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("xlb monitor did not exit after --count events");
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn open<T: TryFrom<Map>>(pin: &Path, name: &str) -> T
where
    T::Error: std::fmt::Debug,
{
    let data = MapData::from_pin(pin.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    Map::from_map_data(data).unwrap().try_into().unwrap()
}

fn cfg(pin: &Path) -> EventsCfg {
    open::<Array<MapData, EventsCfg>>(pin, "xlb_events_cfg").get(&0, 0).unwrap()
}

fn events_sent(pin: &Path) -> u64 {
    let m: PerCpuArray<MapData, u64> = open(pin, "xlb_event_stats");
    m.get(&abi::EV_STAT_SENT, 0).unwrap().iter().sum()
}

fn service(name: &str, vip: Ipv4Addr, backends: Vec<Backend>) -> Service {
    let mut s = Service::new(ServiceKey::new("default", name, "http"));
    s.frontends.push(Frontend {
        addr: vip.into(),
        port: 80,
        proto: Proto::Tcp,
        kind: FrontendKind::LoadBalancer,
    });
    s.backends = backends;
    s
}

fn syn(dst: Ipv4Addr, sport: u16) -> Vec<u8> {
    Frame::eth(bench::ROUTER_MAC, bench::LB_MAC)
        .ipv4(bench::CLIENT_V4, dst)
        .tcp(sport, 80)
        .seq(1000)
        .syn()
        .build()
}

fn run(dp: &mut Dataplane, ifindex: u32, frame: &[u8]) -> u32 {
    let mut out = vec![0u8; 4096];
    test_run(dp.xdp_program(), frame, ifindex, 1, Some(&mut out))
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"))
        .return_value
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().expect(args[0]);
    assert!(st.success(), "{args:?}: {st}");
}

#[test]
fn monitor_prints_the_scripted_events() {
    testkit::require_root("this test (BPF, netns)");
    in_private_netns(|| {
        sh(&["ip", "link", "add", "lb0", "type", "veth", "peer", "name", "rt0"]);
        sh(&["ip", "link", "set", "lb0", "up"]);
        sh(&["ip", "link", "set", "rt0", "up"]);
        sh(&["ip", "addr", "add", "10.0.0.2/24", "dev", "lb0"]);
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(c"lb0".as_ptr()) };
        let pin = PinDir::new("monitor");
        let mut dp = Dataplane::load(&LoadOptions::small(pin.path()))
            .unwrap_or_else(|e| panic!("loading the datapath (BPF available?): {e}"));
        let mut path = Datapath::open(pin.path()).unwrap();
        // The backend lives on this node (its node address is our tunnel
        // source): local delivery, no next hop needed.
        let be = Backend {
            name: format!("{POD}:8080").into(),
            addr: POD.into(),
            port: 8080,
            node: IpAddr::V4(LB_V4),
            weight: 1,
            state: BackendState::Active,
        };
        // "empty" drops (NoEndpoints::Drop): the default rejects (#12 item 3),
        // which sends a reply instead of a drop event.
        let empty = Service {
            no_endpoints: lb::model::NoEndpoints::Drop,
            ..service("empty", EMPTY_VIP, vec![])
        };
        let services = [service("web", VIP, vec![be]), empty];
        path.apply(&Desired {
            node: NodeConfig { tunnel_v4: Some(LB_V4), tunnel_v6: None },
            services: services.iter().map(|s| (s.key.clone(), s.clone())).collect(),
        })
        .unwrap();

        // Nobody listens: packets build no event.
        assert_eq!(cfg(pin.path()).mask, 0);
        let sent0 = events_sent(pin.path());
        assert_eq!(run(&mut dp, ifindex, &syn(VIP, 39999)), 2 /* XDP_PASS */);
        assert_eq!(run(&mut dp, ifindex, &syn(VIP, 39999)[..24]), 1 /* XDP_DROP */);
        assert_eq!(events_sent(pin.path()), sent0, "events built with no listener");

        let mut all = Monitor::start(pin.path(), &["--count", "4"]);
        assert_eq!(cfg(pin.path()).mask, abi::EV_F_NEW_FLOW | abi::EV_F_DROP | abi::EV_F_SOCK);
        // One consumer per ring: a second monitor is refused, clearly.
        let second =
            Command::new(XLB).args(["monitor", "--pin-dir"]).arg(pin.path()).output().unwrap();
        let err = String::from_utf8_lossy(&second.stderr);
        assert!(!second.status.success() && err.contains("single consumer"), "{err}");

        // The script: new flow, the same flow again (established: no
        // event), a truncated frame, a SYN to a service without backends,
        // a second new flow.
        assert_eq!(run(&mut dp, ifindex, &syn(VIP, 40001)), 2);
        assert_eq!(run(&mut dp, ifindex, &syn(VIP, 40001)), 2);
        assert_eq!(run(&mut dp, ifindex, &syn(VIP, 40001)[..24]), 1);
        assert_eq!(run(&mut dp, ifindex, &syn(EMPTY_VIP, 40003)), 1);
        assert_eq!(run(&mut dp, ifindex, &syn(VIP, 40002)), 2);

        let ev = all.events(4);
        eprintln!("{}", ev.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"));
        let want_flow = |e: &Value, sport: u16| {
            assert_eq!(e["type"], "new_flow", "{e}");
            assert_eq!(e["hook"], "xdp", "{e}");
            assert_eq!(e["ifindex"], ifindex, "{e}");
            assert_eq!(e["iface"], "lb0", "{e}");
            assert_eq!(e["proto"], "tcp", "{e}");
            assert_eq!(e["src"], format!("{}:{sport}", bench::CLIENT_V4), "{e}");
            assert_eq!(e["dst"], format!("{VIP}:80"), "{e}");
            assert_eq!(e["service"], "default/web:http", "{e}");
            assert_eq!(e["backend"], format!("{POD}:8080"), "{e}");
            assert_eq!(e["len"], 54, "{e}");
        };
        want_flow(&ev[0], 40001);
        assert_eq!(ev[1]["type"], "drop", "{}", ev[1]);
        assert_eq!(ev[1]["reason"], "truncated", "{}", ev[1]);
        assert_eq!(ev[1]["len"], 24, "{}", ev[1]);
        // 24 bytes end inside the IPv4 header: no addresses to show.
        assert_eq!(ev[1]["src"], Value::Null, "{}", ev[1]);
        assert_eq!(ev[2]["type"], "drop", "{}", ev[2]);
        assert_eq!(ev[2]["reason"], "no_backend", "{}", ev[2]);
        assert_eq!(ev[2]["dst"], format!("{EMPTY_VIP}:80"), "{}", ev[2]);
        assert_eq!(ev[2]["service"], "default/empty:http", "{}", ev[2]);
        want_flow(&ev[3], 40002);
        all.wait_exit();
        // The monitor cleared the mask when it left.
        assert_eq!(cfg(pin.path()).mask, 0, "listener mask left on");

        // Filters: by reason (drops only), then by service.
        let mut drops = Monitor::start(pin.path(), &["--reason", "truncated", "--count", "1"]);
        assert_eq!(cfg(pin.path()).mask, abi::EV_F_DROP, "--reason asks for drop events only");
        run(&mut dp, ifindex, &syn(VIP, 40011));
        run(&mut dp, ifindex, &syn(EMPTY_VIP, 40012));
        run(&mut dp, ifindex, &syn(VIP, 40013)[..24]);
        let d = drops.events(1);
        assert_eq!(
            (d[0]["type"].as_str(), d[0]["reason"].as_str()),
            (Some("drop"), Some("truncated"))
        );
        drops.wait_exit();

        let mut web = Monitor::start(pin.path(), &["--service", "default/web", "--count", "1"]);
        run(&mut dp, ifindex, &syn(EMPTY_VIP, 40021));
        run(&mut dp, ifindex, &syn(VIP, 40022)[..24]);
        run(&mut dp, ifindex, &syn(VIP, 40023));
        want_flow(&web.events(1)[0], 40023);
        web.wait_exit();

        // The inspection CLI on the same maps.
        let cli = |args: &[&str]| -> Value {
            let out = Command::new(XLB)
                .args(args)
                .arg("--json")
                .arg("--pin-dir")
                .arg(pin.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "xlb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            serde_json::from_slice(&out.stdout).unwrap()
        };
        let ct = cli(&[
            "ct",
            "list",
            "--client",
            &bench::CLIENT_V4.to_string(),
            "--service",
            "default/web",
        ]);
        let ports: Vec<&str> =
            ct.as_array().unwrap().iter().map(|e| e["client"].as_str().unwrap()).collect();
        for p in [39999, 40001, 40002, 40011, 40023] {
            assert!(
                ports.contains(&format!("{}:{p}", bench::CLIENT_V4).as_str()),
                "{p} not in {ports:?}"
            );
        }
        let e = &ct[0];
        assert_eq!(
            (e["frontend"].as_str(), e["backend"].as_str()),
            (Some("10.100.0.1:80"), Some("10.244.1.11:8080"))
        );
        assert_eq!(e["stale"], false);
        assert_eq!(cli(&["ct", "list", "--limit", "2"]).as_array().unwrap().len(), 2);
        let mg = cli(&["maglev", "show", "default/web"]);
        let t = &mg[0];
        assert_eq!(t["service"], "default/web:http");
        assert_eq!(t["orphan_slots"], 0);
        assert_eq!(t["backends"][0]["slots"], t["table_size"], "one backend owns every slot");
        let st = cli(&["stats"]);
        let count = |r: &str| {
            st["counters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["reason"] == r)
                .map_or(0, |c| c["packets"].as_u64().unwrap())
        };
        assert_eq!(count("truncated"), 4, "{st}");
        assert_eq!(count("no_backend"), 3, "{st}");
        let web = st["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == "default/web:http")
            .unwrap();
        assert_eq!(
            (web["new_flows"].as_u64(), web["packets"].as_u64()),
            (Some(5), Some(6)),
            "{st}"
        );
        // 4 with every kind wanted, 2 drops for --reason, 3 for --service
        // (filtered in userspace): 9 built, none while nobody listened.
        assert_eq!(st["events_sent"], 9, "{st}");

        for (args, want) in [
            (&["maglev", "show", "default/web"][..], "SLOTS"),
            (&["ct", "list"][..], "10.244.1.11:8080"),
            (&["stats"][..], "truncated"),
        ] {
            let out =
                Command::new(XLB).args(args).arg("--pin-dir").arg(pin.path()).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            eprintln!("$ xlb {}\n{text}", args.join(" "));
            assert!(out.status.success() && text.contains(want), "xlb {args:?}: {text}");
        }

        // A sampled listener: --sample 1000000 lets (almost) no new flow through,
        // while drops are never sampled.
        let sampled = Monitor::start(pin.path(), &["--sample", "1000000"]);
        assert_eq!(cfg(pin.path()).flow_sample, 1_000_000);
        for sport in 41000..41100 {
            run(&mut dp, ifindex, &syn(VIP, sport));
        }
        run(&mut dp, ifindex, &syn(VIP, 40001)[..24]);
        let e = sampled.events(1);
        if e[0]["type"] == "new_flow" {
            // One in a million got through: possible, then the drop follows.
            assert_eq!(sampled.events(1)[0]["reason"], "truncated");
        } else {
            assert_eq!(e[0]["reason"], "truncated", "{}", e[0]);
        }
        sampled.quiet_for(Duration::from_millis(300));
    })
    .expect("a private network namespace");
}
