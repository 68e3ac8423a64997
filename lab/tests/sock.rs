//! The socket programs (sock/) with real processes: xlb-probe servers and
//! clients in a network namespace and a cgroup this test creates, xlb's
//! cgroup programs attached at that cgroup (never the root), services
//! written through the reconciler. Each test asserts what the client's
//! socket saw (body, getpeername, recvfrom's source, errno) and the
//! datapath's counters.
use std::{
    io::{BufRead, BufReader},
    net::IpAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lab::cgroup::{self, Cgroup};
use lb::{
    datapath::Datapath,
    loader::{Dataplane, LoadOptions, SockScope},
    model::*,
};
use serde_json::Value;
use testkit::{netns::NamedNetns, pins::PinDir};

const PROBE: &str = env!("CARGO_BIN_EXE_xlb-probe");

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Backend b1 listens on 8081, b2 on 8082, on every address of the
/// namespace (TCP and UDP, both families); these addresses are on its lo.
const B1_V4: &str = "10.244.1.11";
const B2_V4: &str = "10.244.1.12";
const B1_V6: &str = "fd00:244::11";
const B2_V6: &str = "fd00:244::12";
/// ClusterIPs: web (TCP 80) and dns (UDP 53) with both backends; none
/// (TCP 80, no endpoint).
const WEB_V4: &str = "10.96.0.10";
const WEB_V6: &str = "fd00:96::10";
const NONE_V4: &str = "10.96.0.11";

struct Fixture {
    ns: NamedNetns,
    /// The hooked cgroup (the "node") and a pod below it.
    node: Cgroup,
    pod: Cgroup,
    servers: Vec<Child>,
    pins: PinDir,
    dp: Option<Dataplane>,
    datapath: Datapath,
}

fn service(name: &str, proto: Proto, port: u16, vip: &str, v6: bool) -> Service {
    let mut s = Service::new(ServiceKey::new("default", name, "p"));
    s.sock_frontends = vec![Frontend { addr: ip(vip), port, proto, kind: FrontendKind::ClusterIp }];
    let (a, b) = if v6 { (B1_V6, B2_V6) } else { (B1_V4, B2_V4) };
    s.backends = vec![
        Backend::new(ip(a), 8081, ip("10.0.0.11")),
        Backend::new(ip(b), 8082, ip("10.0.0.11")),
    ];
    s.maglev_size = 251;
    s
}

/// The services every test starts with.
fn services() -> Vec<Service> {
    let mut sticky = service("sticky", Proto::Tcp, 80, "10.96.0.12", false);
    sticky.affinity = Some(Affinity { timeout: Duration::from_secs(600) });
    let mut none = service("none", Proto::Tcp, 80, NONE_V4, false);
    none.backends.clear();
    vec![
        service("web", Proto::Tcp, 80, WEB_V4, false),
        service("web6", Proto::Tcp, 80, WEB_V6, true),
        service("dns", Proto::Udp, 53, WEB_V4, false),
        service("dns6", Proto::Udp, 53, WEB_V6, true),
        sticky,
        none,
    ]
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        Fixture::with_scope(name, |_| SockScope::All)
    }

    /// With translated sockets' records in socket storage (no
    /// xlb_sock_cookie, no sock_release: `--socket-lb-records=storage`).
    fn storage(name: &str) -> Fixture {
        Fixture::with_load(name, |_, o| LoadOptions { sock_cookie_records: false, ..o })
    }

    fn with_scope(name: &str, scope: impl FnOnce(&NamedNetns) -> SockScope) -> Fixture {
        Fixture::with_load(name, |ns, opts| LoadOptions { sock_scope: scope(ns), ..opts })
    }

    /// With load options of its own (from the small ones).
    fn with_load(
        name: &str,
        load: impl FnOnce(&NamedNetns, LoadOptions) -> LoadOptions,
    ) -> Fixture {
        let ns = NamedNetns::create(name).expect("creating the test's namespace");
        ns.ip(&["link", "set", "lo", "up"]).unwrap();
        for a in [B1_V4, B2_V4] {
            ns.ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"]).unwrap();
        }
        for a in [B1_V6, B2_V6] {
            ns.ip(&["addr", "add", &format!("{a}/128"), "dev", "lo", "nodad"]).unwrap();
        }
        let root = cgroup::root().expect("the cgroup2 mount");
        let node = Cgroup::create(root.join(format!("xlbt{}-{name}", std::process::id())))
            .expect("creating the test's cgroup");
        let pod = node.child("pod").unwrap();
        let pins = PinDir::new(name);
        let opts = load(&ns, LoadOptions::small(pins.path()));
        let loaded = (|| -> Result<(Dataplane, Datapath), String> {
            let mut dp =
                Dataplane::load(&opts).map_err(|e| format!("loading the datapath: {e:?}"))?;
            dp.attach_sock(node.path()).map_err(|e| format!("attaching at the cgroup: {e:?}"))?;
            let mut datapath = Datapath::open(pins.path()).map_err(|e| format!("{e:?}"))?;
            datapath
                .apply(&Desired::new(NodeConfig::default(), services()))
                .map_err(|e| format!("applying: {e:?}"))?;
            Ok((dp, datapath))
        })();
        // No Fixture (and no Drop) yet: the cgroups go here on failure.
        let (dp, datapath) = loaded.unwrap_or_else(|e| {
            let _ = Dataplane::detach_all(pins.path());
            let _ = node.remove();
            panic!("{e}")
        });
        let mut f = Fixture { ns, node, pod, servers: Vec::new(), pins, dp: Some(dp), datapath };
        for (name, port) in [("b1", "8081"), ("b2", "8082")] {
            let mut c = f.ns.nsenter(PROBE);
            c.args(["serve", "--name", name, "--tcp", port, "--udp", port]).stdout(Stdio::piped());
            let mut child = c.spawn().expect("starting a server");
            // It prints "serving" once every socket is bound.
            let mut line = String::new();
            BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "serving", "server {name}");
            f.servers.push(child);
        }
        f
    }

    /// A probe client in the pod cgroup of the test's namespace.
    fn client(&self, args: &[&str]) -> Command {
        let mut c = self.ns.nsenter(PROBE);
        c.args(args);
        self.pod.join_before_exec(&mut c);
        c
    }

    /// Runs a client to completion: one JSON value per attempt.
    fn run(&self, args: &[&str]) -> Vec<Value> {
        lines(self.client(args).output().expect("running xlb-probe"))
    }

    /// Sockets with a record in xlb_sock_cookie.
    fn cookie_records(&self) -> u64 {
        let c = lb::census::run(self.pins.path());
        assert!(c.errors.is_empty(), "census: {:?}", c.errors);
        c.maps["xlb_sock_cookie"].entries
    }

    /// xlb_sock_mark's counters (sock/mark.h), index by index.
    fn marks(&self) -> Vec<u32> {
        let m = aya::maps::MapData::from_pin(self.pins.path().join("xlb_sock_mark")).unwrap();
        let a: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(aya::maps::Map::Array(m)).unwrap();
        a.iter().map(Result::unwrap).collect()
    }

    fn set_marks(&self, v: u32) {
        let m = aya::maps::MapData::from_pin(self.pins.path().join("xlb_sock_mark")).unwrap();
        let mut a: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(aya::maps::Map::Array(m)).unwrap();
        for i in 0..a.len() {
            a.set(i, v, 0).unwrap();
        }
    }

    /// The cookies of xlb_sock_cookie's records.
    fn record_cookies(&self) -> Vec<u64> {
        let m = aya::maps::MapData::from_pin(self.pins.path().join("xlb_sock_cookie")).unwrap();
        let h: aya::maps::HashMap<_, u64, lb::abi::SockRec> =
            aya::maps::HashMap::try_from(aya::maps::Map::HashMap(m)).unwrap();
        h.keys().map(Result::unwrap).collect()
    }

    /// mark.h's invariant: no counter below the records at its index;
    /// `exact`: equal (no sweep has left a counter up).
    fn assert_marks_cover_records(&self, exact: bool) {
        let marks = self.marks();
        let mut want = vec![0u32; marks.len()];
        assert!(marks.len().is_power_of_two(), "{}", marks.len());
        for c in self.record_cookies() {
            want[(c & (marks.len() as u64 - 1)) as usize] += 1;
        }
        for (i, (m, w)) in marks.iter().zip(&want).enumerate() {
            if exact {
                assert_eq!(m, w, "xlb_sock_mark[{i}]: counter vs records at the index");
            } else {
                assert!(m >= w, "xlb_sock_mark[{i}]: {m} below its {w} records");
            }
        }
    }

    /// A client that keeps one unconnected UDP socket to the dns service
    /// (a record held) until killed, once its first answer is in.
    fn hold_udp(&self) -> Child {
        let mut c = self
            .client(&["udp-hold", &format!("{WEB_V4}:53"), "--unconnected", "--count", "600"])
            .args(["--interval-ms", "100"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(c.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(field(&v, "from"), format!("{WEB_V4}:53"), "{v}");
        c
    }

    fn counter(&self, name: &str) -> u64 {
        lb::loader::read_counters(self.pins.path())
            .unwrap()
            .into_iter()
            .find(|(c, _)| c.name() == name)
            .map_or(0, |(_, n)| n.packets)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = Dataplane::detach_all(self.pins.path());
        self.dp.take();
        let _ = self.pod.remove();
        let _ = self.node.remove();
    }
}

fn lines(out: std::process::Output) -> Vec<Value> {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "xlb-probe: {}: {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect()
}

fn ok(v: &Value) -> bool {
    v["ok"] == Value::Bool(true)
}

fn field<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name].as_str().unwrap_or_else(|| panic!("no {name} in {v}"))
}

/// Every attempt succeeded; the bodies (which backend answered).
fn bodies(out: &[Value]) -> Vec<String> {
    out.iter()
        .map(|v| {
            assert!(ok(v), "failed attempt: {v}");
            field(v, "body").to_string()
        })
        .collect()
}

#[test]
fn tcp_to_a_clusterip_is_served_by_its_backends_and_getpeername_shows_the_clusterip() {
    tcp_to_a_clusterip(Fixture::new("socktcp"));
}

#[test]
fn tcp_to_a_clusterip_with_storage_records() {
    tcp_to_a_clusterip(Fixture::storage("socktcps"));
}

fn tcp_to_a_clusterip(f: Fixture) {
    let before = f.counter("ok_sock_connect");
    for (target, peer) in [
        (format!("{WEB_V4}:80"), format!("{WEB_V4}:80")),
        (format!("[{WEB_V6}]:80"), format!("[{WEB_V6}]:80")),
        // An IPv6 socket reaching an IPv4 ClusterIP (v4-mapped).
        (format!("[::ffff:{WEB_V4}]:80"), format!("[::ffff:{WEB_V4}]:80")),
    ] {
        let out = f.run(&["tcp", &target, "--count", "16"]);
        assert_eq!(out.len(), 16, "{target}: {out:?}");
        let seen = bodies(&out);
        // Spread over both backends (one connection, one choice).
        for b in ["b1", "b2"] {
            assert!(seen.iter().any(|s| s == b), "{target}: no answer from {b}: {seen:?}");
        }
        for v in &out {
            assert_eq!(field(v, "peer"), peer, "getpeername of a connection to {target}");
        }
    }
    assert_eq!(f.counter("ok_sock_connect") - before, 48, "one translation per connect()");
}

#[test]
fn udp_to_a_clusterip_answers_from_the_clusterip() {
    udp_to_a_clusterip(Fixture::new("sockudp"));
}

#[test]
fn udp_to_a_clusterip_with_storage_records() {
    udp_to_a_clusterip(Fixture::storage("sockudps"));
}

fn udp_to_a_clusterip(f: Fixture) {
    for (target, from) in [
        (format!("{WEB_V4}:53"), format!("{WEB_V4}:53")),
        (format!("[{WEB_V6}]:53"), format!("[{WEB_V6}]:53")),
        (format!("[::ffff:{WEB_V4}]:53"), format!("[::ffff:{WEB_V4}]:53")),
    ] {
        // DNS-like: sendto on an unconnected socket, recvfrom's source.
        let out = f.run(&["udp", &target, "--count", "4"]);
        bodies(&out);
        for v in &out {
            assert_eq!(field(v, "from"), from, "recvfrom source of {target}");
        }
        // Connected: getpeername and the source both show the ClusterIP.
        let out = f.run(&["udp", &target, "--count", "2", "--connected"]);
        bodies(&out);
        for v in &out {
            assert_eq!(field(v, "from"), from, "{target}");
            assert_eq!(field(v, "peer"), from, "getpeername of a connected UDP socket");
        }
    }
    assert!(f.counter("ok_sock_sendmsg") >= 12, "unconnected datagrams translated at sendmsg");
    assert!(f.counter("ok_sock_revnat") >= 12, "sources shown as the ClusterIP at recvmsg");
}

#[test]
fn an_unconnected_udp_socket_keeps_its_backend() {
    let f = Fixture::new("sockcookie");
    for _ in 0..3 {
        let out = lines(
            f.client(&["udp-hold", &format!("{WEB_V4}:53"), "--unconnected", "--count", "8"])
                .args(["--interval-ms", "1"])
                .output()
                .unwrap(),
        );
        let seen = bodies(&out);
        assert!(seen.iter().all(|b| *b == seen[0]), "one socket, one backend: {seen:?}");
        for v in &out {
            assert_eq!(field(v, "from"), format!("{WEB_V4}:53"));
        }
    }
}

#[test]
fn client_ip_affinity_keeps_a_pod_on_one_backend_across_connections() {
    let f = Fixture::new("sockaff");
    let out = f.run(&["tcp", "10.96.0.12:80", "--count", "16"]);
    let seen = bodies(&out);
    assert!(seen.iter().all(|b| *b == seen[0]), "sessionAffinity ClientIP: {seen:?}");
}

#[test]
fn connect_without_endpoints_is_refused_at_once() {
    let f = Fixture::new("sockrefuse");
    let t0 = Instant::now();
    let out = f.run(&["tcp", &format!("{NONE_V4}:80"), "--timeout-ms", "3000"]);
    assert_eq!(out.len(), 1);
    assert!(!ok(&out[0]), "{}", out[0]);
    assert_eq!(out[0]["errno"], Value::from(libc::ECONNREFUSED), "{}", out[0]);
    assert!(t0.elapsed() < Duration::from_secs(2), "refused at once, not a timeout");
    assert!(f.counter("drop_no_backend") >= 1);
}

#[test]
fn a_connected_udp_socket_to_a_removed_backend_is_destroyed() {
    a_removed_backend_ends_a_connected_udp_socket(Fixture::new("sockreap"));
}

#[test]
fn a_removed_backend_ends_a_connected_udp_socket_with_storage_records() {
    a_removed_backend_ends_a_connected_udp_socket(Fixture::storage("sockreaps"));
}

fn a_removed_backend_ends_a_connected_udp_socket(mut f: Fixture) {
    let mut reaper = lb::sockdestroy::Reaper::load(f.pins.path())
        .expect("the socket iterators load (Linux >= 6.5 with bpf_sock_destroy)");
    let mut hold = f
        .client(&["udp-hold", &format!("{WEB_V4}:53"), "--count", "40", "--interval-ms", "50"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(hold.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let first: Value = serde_json::from_str(&first).unwrap();
    let held = field(&first, "body").to_string();
    // Remove the backend the socket is connected to; the other stays.
    let mut dns = service("dns", Proto::Udp, 53, WEB_V4, false);
    dns.backends.retain(|b| (b.port == 8081) != (held == "b1"));
    assert_eq!(dns.backends.len(), 1);
    let stats = f.datapath.apply_services(&NodeConfig::default(), [(&dns.key.clone(), Some(&dns))]);
    let gone = stats.unwrap().gone_backends;
    assert_eq!(gone.len(), 1, "{gone:?}");
    let r = reaper.reap(f.node.path(), &gone).unwrap();
    assert_eq!((r.destroyed, r.failed), (1, 0), "{r:?}");
    // The held socket ends (ECONNABORTED, then not connected): it never
    // again reaches the removed backend.
    let rest: Vec<Value> =
        out.lines().map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect();
    hold.wait().unwrap();
    let failed_at = rest.iter().position(|v| !ok(v)).expect("the held socket was destroyed");
    assert!(rest[failed_at..].iter().all(|v| !ok(v)), "{rest:?}");
    let errno = rest[failed_at]["errno"].as_i64().unwrap() as i32;
    assert!([libc::ECONNABORTED, libc::ENOTCONN].contains(&errno), "{}", rest[failed_at]);
    // A new socket gets the backend that is left.
    let other = if held == "b1" { "b2" } else { "b1" };
    let again = bodies(&f.run(&["udp", &format!("{WEB_V4}:53"), "--connected", "--count", "3"]));
    assert!(again.iter().all(|b| b == other), "{again:?}");
}

#[test]
fn processes_outside_the_hooked_cgroup_are_not_translated() {
    let f = Fixture::new("sockscope");
    let before = f.counter("ok_sock_connect");
    // The namespace has no route to 10.96/16: untranslated, connect fails.
    let out = lines(f.ns.nsenter(PROBE).args(["tcp", &format!("{WEB_V4}:80")]).output().unwrap());
    assert_eq!(out[0]["errno"], Value::from(libc::ENETUNREACH), "{}", out[0]);
    assert_eq!(f.counter("ok_sock_connect"), before);
}

#[test]
fn host_only_mode_translates_the_nodes_namespace_and_leaves_pods_alone() {
    let f = Fixture::with_scope("sockhost", |ns| SockScope::HostOnly {
        netns_cookie: ns.run_in(lb::loader::netns_cookie).unwrap().unwrap(),
    });
    // The "node" (the namespace whose cookie was given) is translated ...
    bodies(&f.run(&["tcp", &format!("{WEB_V4}:80"), "--count", "2"]));
    // ... a pod (another namespace, same cgroup) keeps the ClusterIP.
    let pod = NamedNetns::create("sockhostpod").unwrap();
    let mut c = pod.nsenter(PROBE);
    c.args(["tcp", &format!("{WEB_V4}:80")]);
    f.pod.join_before_exec(&mut c);
    let out = lines(c.output().unwrap());
    assert_eq!(out[0]["errno"], Value::from(libc::ENETUNREACH), "{}", out[0]);
}

#[test]
fn a_tcp_connect_to_a_removed_backend_ends_instead_of_waiting_for_its_timeout() {
    let mut f = Fixture::new("sockreapsyn");
    let mut reaper = lb::sockdestroy::Reaper::load(f.pins.path())
        .expect("the socket iterators load (Linux >= 6.5 with bpf_sock_destroy)");
    // A backend behind a veth whose other end owns neither its address nor
    // the MAC it is given: SYNs vanish, the socket stays in SYN_SENT.
    f.ns.veth("d0", "d1").unwrap();
    f.ns.ip(&["link", "set", "d0", "up"]).unwrap();
    f.ns.ip(&["link", "set", "d1", "up"]).unwrap();
    f.ns.ip(&["route", "add", "10.244.9.0/24", "dev", "d0"]).unwrap();
    f.ns.ip(&[
        "neigh",
        "add",
        "10.244.9.9",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "d0",
        "nud",
        "permanent",
    ])
    .unwrap();
    let mut slow = service("slow", Proto::Tcp, 80, "10.96.0.20", false);
    slow.backends = vec![Backend::new(ip("10.244.9.9"), 80, ip("10.0.0.11"))];
    f.datapath.apply_services(&NodeConfig::default(), [(&slow.key.clone(), Some(&slow))]).unwrap();
    let t0 = Instant::now();
    let client = f
        .client(&["tcp", "10.96.0.20:80", "--timeout-ms", "10000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    slow.backends.clear();
    let gone = f
        .datapath
        .apply_services(&NodeConfig::default(), [(&slow.key.clone(), Some(&slow))])
        .unwrap()
        .gone_backends;
    let r = reaper.reap(f.node.path(), &gone).unwrap();
    assert_eq!((r.destroyed, r.failed), (1, 0), "{r:?}");
    let out = lines(client.wait_with_output().unwrap());
    assert!(!ok(&out[0]), "{}", out[0]);
    assert_eq!(out[0]["errno"], Value::from(libc::ECONNABORTED), "{}", out[0]);
    assert!(t0.elapsed() < Duration::from_secs(5), "ended by the reaper, not the timeout");
}

#[test]
fn socket_translations_are_events_for_the_monitor() {
    use lb::events::{EventHook, EventKind, EventMask, Listener};
    let f = Fixture::new("sockevents");
    let mut listener = Listener::start(f.pins.path(), EventMask::SOCK, 1).unwrap();
    bodies(&f.run(&["tcp", &format!("{WEB_V4}:80"), "--count", "3"]));
    let refused = f.run(&["tcp", &format!("{NONE_V4}:80")]);
    assert!(!ok(&refused[0]));
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while seen.len() < 4 && Instant::now() < deadline {
        listener.wait(Duration::from_millis(100)).unwrap();
        while let Some(r) = listener.next_record() {
            seen.push(r);
        }
    }
    assert_eq!(seen.len(), 4, "three translations and one refusal: {seen:?}");
    for r in &seen {
        assert_eq!((r.kind, r.hook), (EventKind::Sock, EventHook::Sock), "{r:?}");
    }
    let web = seen.iter().filter(|r| r.dst == Some(ip(WEB_V4)) && r.dst_port == 80);
    assert_eq!(web.clone().count(), 3, "{seen:?}");
    assert!(web.clone().all(|r| r.backend_id != 0), "a backend given: {seen:?}");
    let none = seen.iter().find(|r| r.dst == Some(ip(NONE_V4))).expect("the refusal");
    assert_eq!(none.backend_id, 0, "{none:?}");
    assert_eq!(none.sock_reason.map(|c| c.map(|c| c.name())), Some(Ok("drop_no_backend")));
}

#[test]
fn a_process_outside_the_hooked_cgroup_reaches_a_clusterip_through_the_tc_fallback() {
    let mut f = Fixture::new("sockfallback");
    // Another namespace (a node process or pod no socket program sees),
    // whose uplink v0 carries xlb's tc programs; the backends are behind it.
    let cli = NamedNetns::create("sockfbcli").unwrap();
    testkit::netns::run(
        "ip",
        &[
            "link",
            "add",
            "v0",
            "netns",
            cli.name(),
            "type",
            "veth",
            "peer",
            "name",
            "v1",
            "netns",
            f.ns.name(),
        ],
    )
    .unwrap();
    cli.ip(&["addr", "add", "10.1.0.1/24", "dev", "v0"]).unwrap();
    cli.ip(&["link", "set", "v0", "up"]).unwrap();
    cli.ip(&["route", "add", "default", "via", "10.1.0.2"]).unwrap();
    f.ns.ip(&["addr", "add", "10.1.0.2/24", "dev", "v1"]).unwrap();
    f.ns.ip(&["link", "set", "v1", "up"]).unwrap();
    let dp = f.dp.as_mut().unwrap();
    cli.run_in(|| dp.attach_tc("v0")).unwrap().expect("attaching tc on v0");
    let before = (f.counter("ok_fallback_nat"), f.counter("ok_fallback_revnat"));
    let mut c = cli.nsenter(PROBE);
    c.args(["tcp", &format!("{WEB_V4}:80"), "--count", "8"]);
    let out = lines(c.output().unwrap());
    let seen = bodies(&out);
    assert!(seen.iter().all(|b| b == "b1" || b == "b2"), "{seen:?}");
    for v in &out {
        // Not translated at the socket: the peer is the ClusterIP as dialled.
        assert_eq!(field(v, "peer"), format!("{WEB_V4}:80"));
    }
    // UDP: a backend on the address the server's answers leave from (its
    // socket is bound to the wildcard address).
    let mut dns = service("dnsfb", Proto::Udp, 53, "10.96.0.30", false);
    dns.backends = vec![Backend::new(ip("10.1.0.2"), 8081, ip("10.0.0.11"))];
    f.datapath.apply_services(&NodeConfig::default(), [(&dns.key.clone(), Some(&dns))]).unwrap();
    let mut c = cli.nsenter(PROBE);
    c.args(["udp", "10.96.0.30:53", "--count", "3"]);
    for v in lines(c.output().unwrap()) {
        assert!(ok(&v), "{v}");
        assert_eq!(field(&v, "body"), "b1");
        assert_eq!(field(&v, "from"), "10.96.0.30:53", "the reply as from the ClusterIP");
    }
    let nat = f.counter("ok_fallback_nat") - before.0;
    let revnat = f.counter("ok_fallback_revnat") - before.1;
    assert!(nat >= 8 * 3 + 3, "every packet to the ClusterIP DNAT'd in tc: {nat}");
    assert!(revnat >= 8 * 2 + 3, "every reply translated back: {revnat}");
    assert_eq!(f.counter("ok_sock_connect"), 0, "no socket program saw these");
}

/// Waits (bounded) until the xlb_sock_cookie census reads `want`.
fn records_settle(f: &Fixture, want: u64) -> u64 {
    let t0 = Instant::now();
    loop {
        let n = f.cookie_records();
        if n == want || t0.elapsed() > Duration::from_secs(5) {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn translation_records_leave_with_their_sockets() {
    let f = Fixture::new("sockleave");
    let base = f.cookie_records();
    let spill = f.counter("ok_sock_state_spill");
    // Many translated sockets of every kind, each closed: TCP (IPv4, IPv6,
    // IPv4-mapped), connected and unconnected UDP.
    let web_mapped = format!("[::ffff:{WEB_V4}]:80");
    for args in [
        vec!["tcp".to_string(), format!("{WEB_V4}:80"), "--count".into(), "200".into()],
        vec!["tcp".to_string(), format!("[{WEB_V6}]:80"), "--count".into(), "100".into()],
        vec!["tcp".to_string(), web_mapped.clone(), "--count".into(), "100".into()],
        vec!["udp".to_string(), format!("{WEB_V4}:53"), "--count".into(), "100".into()],
        vec!["udp".to_string(), format!("[{WEB_V6}]:53"), "--count".into(), "50".into()],
        vec![
            "udp".to_string(),
            format!("{WEB_V4}:53"),
            "--connected".into(),
            "--count".into(),
            "100".into(),
        ],
    ] {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = f.run(&a);
        assert_eq!(bodies(&out).len(), out.len(), "{args:?}");
    }
    let connects = f.counter("ok_sock_connect");
    assert!(connects >= 500, "translated at connect: {connects}");
    assert_eq!(records_settle(&f, base), base, "every closed socket's record is gone");
    f.assert_marks_cover_records(true);
    // A live socket holds its record; it goes when the socket does.
    let mut held: Vec<Child> = (0..3).map(|_| f.hold_udp()).collect();
    assert_eq!(f.cookie_records(), base + 3, "the held sockets' records");
    f.assert_marks_cover_records(true);
    for h in &mut held {
        h.kill().unwrap();
        h.wait().unwrap();
    }
    assert_eq!(records_settle(&f, base), base, "released with the killed processes' sockets");
    f.assert_marks_cover_records(true);
    assert_eq!(f.marks().iter().sum::<u32>(), 0, "every counter back to zero");
    assert_eq!(f.counter("ok_sock_state_spill"), spill, "nothing spilled at this size");
}

#[test]
fn a_full_record_map_spills_to_socket_storage_and_still_shows_the_service() {
    const SIZE: u32 = 4;
    let f = Fixture::with_load("sockfull", |_, o| LoadOptions {
        sizes: lb::loader::MapSizes { sock_states: SIZE, ..o.sizes },
        ..o
    });
    let mut held: Vec<Child> = (0..SIZE).map(|_| f.hold_udp()).collect();
    assert_eq!(f.cookie_records(), u64::from(SIZE), "the map is full");
    let spill = f.counter("ok_sock_state_spill");
    // Every new translation now keeps its record in socket storage: served,
    // and getpeername / recvfrom still show the service address.
    let out = f.run(&["tcp", &format!("{WEB_V4}:80"), "--count", "20"]);
    for v in &out {
        assert!(ok(v), "{v}");
        assert_eq!(field(v, "peer"), format!("{WEB_V4}:80"));
    }
    let out = f.run(&["tcp", &format!("[{WEB_V6}]:80"), "--count", "5"]);
    for v in &out {
        assert_eq!(field(v, "peer"), format!("[{WEB_V6}]:80"), "{v}");
    }
    let out = f.run(&["udp", &format!("{WEB_V4}:53"), "--count", "10"]);
    for v in &out {
        assert_eq!(field(v, "from"), format!("{WEB_V4}:53"), "{v}");
    }
    let out = f.run(&["udp", &format!("{WEB_V4}:53"), "--connected", "--count", "5"]);
    for v in &out {
        assert_eq!(field(v, "peer"), format!("{WEB_V4}:53"), "{v}");
    }
    let spilled = f.counter("ok_sock_state_spill") - spill;
    assert_eq!(spilled, 40, "each of the 40 sockets counted once");
    assert_eq!(f.cookie_records(), u64::from(SIZE), "the full map unchanged");
    // Each refused insert took its counter back.
    f.assert_marks_cover_records(true);
    // Room again once the holders are gone: no spill.
    for h in &mut held {
        h.kill().unwrap();
        h.wait().unwrap();
    }
    assert_eq!(records_settle(&f, 0), 0);
    f.run(&["tcp", &format!("{WEB_V4}:80"), "--count", "5"]);
    assert_eq!(f.counter("ok_sock_state_spill") - spill, 40);
    assert_eq!(records_settle(&f, 0), 0);
    f.assert_marks_cover_records(true);
}

#[test]
fn the_sweep_removes_records_no_socket_holds_and_keeps_live_ones() {
    let f = Fixture::new("socksweep");
    let mut reaper = lb::sockdestroy::Reaper::load(f.pins.path())
        .expect("the socket iterators load (Linux >= 6.5 with bpf_sock_destroy)");
    let mut held = f.hold_udp();
    // Records of sockets released while no sock_release was attached: a
    // cookie no socket has (cookies count up from 1; never this high).
    let mut records: aya::maps::HashMap<aya::maps::MapData, u64, lb::abi::SockRec> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(
            aya::maps::MapData::from_pin(f.pins.path().join("xlb_sock_cookie")).unwrap(),
        ))
        .unwrap();
    let rec = records.iter().next().expect("the held socket's record").unwrap().1;
    for cookie in [u64::MAX - 1, u64::MAX - 2] {
        records.insert(cookie, rec, 0).unwrap();
    }
    let before = f.cookie_records();
    let s = reaper.sweep(f.node.path()).unwrap();
    assert_eq!((s.removed, s.live), (2, 1), "{s:?}");
    assert_eq!(f.cookie_records(), before - 2);
    assert!(records.get(&(u64::MAX - 1), 0).is_err());
    f.assert_marks_cover_records(false);
    // The held socket still shows the service address (its record kept).
    let mut line = String::new();
    BufReader::new(held.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(field(&v, "from"), format!("{WEB_V4}:53"), "{v}");
    held.kill().unwrap();
    held.wait().unwrap();
}

#[test]
fn a_false_positive_mark_costs_a_lookup_and_changes_nothing() {
    let f = Fixture::new("sockmarkfp");
    // Every counter up, as if each index had another socket's record:
    // every socket below the cgroup is a false positive of the mark.
    f.set_marks(1);
    let before = f.counter("ok_sock_connect");
    // Untranslated sockets (a backend's own address): the real peer shown,
    // and their release deletes nothing, so no counter comes down.
    for (target, peer) in [
        (format!("{B1_V4}:8081"), format!("{B1_V4}:8081")),
        (format!("[{B2_V6}]:8082"), format!("[{B2_V6}]:8082")),
    ] {
        let out = f.run(&["tcp", &target, "--count", "20"]);
        for v in &out {
            assert!(ok(v), "{v}");
            assert_eq!(field(v, "peer"), peer, "getpeername of an untranslated socket");
        }
        let out = f.run(&["udp", &target, "--count", "5"]);
        for v in &out {
            assert_eq!(field(v, "from"), peer, "recvfrom of an untranslated socket");
        }
    }
    assert_eq!(f.counter("ok_sock_connect"), before, "nothing translated");
    assert!(f.marks().iter().all(|&m| m == 1), "no counter taken down by an untranslated socket");
    // Translated sockets at marked indexes: kept, shown, released.
    let out = f.run(&["tcp", &format!("{WEB_V4}:80"), "--count", "20"]);
    for v in &out {
        assert_eq!(field(v, "peer"), format!("{WEB_V4}:80"), "{v}");
    }
    let out = f.run(&["udp", &format!("{WEB_V4}:53"), "--count", "5"]);
    for v in &out {
        assert_eq!(field(v, "from"), format!("{WEB_V4}:53"), "{v}");
    }
    assert_eq!(records_settle(&f, 0), 0, "released");
    assert!(f.marks().iter().all(|&m| m == 1), "each record's counter raised and taken back");
    f.set_marks(0);
}

#[test]
fn a_restarted_agent_keeps_records_and_marks_and_a_resized_one_replaces_both() {
    let f = Fixture::new("sockmarkre");
    let mut held = f.hold_udp();
    assert_eq!(f.cookie_records(), 1);
    let reload = |sock_states: u32| {
        let mut o = LoadOptions::small(f.pins.path());
        o.sizes.sock_states = sock_states;
        Dataplane::load(&o).expect("loading again over the pinned maps")
    };
    // The same sizes: both maps reused (the held socket's record and mark).
    let again = reload(LoadOptions::small(f.pins.path()).sizes.sock_states);
    assert_eq!(f.cookie_records(), 1, "the record kept");
    f.assert_marks_cover_records(true);
    drop(again);
    // Another size: the counters' index changes, so both go together.
    let resized = reload(1000);
    assert_eq!(f.marks().len(), 1024, "sock_states rounded up to a power of two");
    assert_eq!(f.cookie_records(), 0, "records replaced with the counters");
    f.assert_marks_cover_records(true);
    drop(resized);
    held.kill().unwrap();
    held.wait().unwrap();
}
