//! NetworkPolicy end to end on the real kernel (root): the pod network lab
//! (two nodes, two pods each, agents started by `xlb run --pod-network`,
//! pods' network made by xlb-cni), its manifest extended with the pods'
//! Pod objects (labels pod=<name>, their addresses) and NetworkPolicies,
//! rewritten while the agents run (the file source reloads it). Real TCP
//! (HTTP) and UDP between pods, IPv4 and IPv6, across nodes (the source
//! identity in the overlay) and on one node, checks:
//! - no policy: everything reaches everything;
//! - an ingress policy on pod2-1 allowing pod1-2 on TCP 80: pod1-2 gets
//!   through (cross node), pod1-1 and pod2-2 do not (counted as
//!   drop_policy_ingress), UDP to pod2-1 does not, other pods unaffected;
//! - an egress deny-all on pod1-1: its requests to its own node's pod
//!   fail (drop_policy_egress) while pod1-2 still reaches pod1-1 (replies
//!   of allowed connections pass);
//! - removing the policies restores everything (within the control-loop
//!   latency: the test waits for it, bounded).
use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use lab::{
    agent::{self, Agent, AgentSpec},
    http,
    manifests::{self, EndpointState},
    Lab, LabSpec,
};

const AGENT_READY: Duration = Duration::from_secs(30);
/// How long a policy change may take to reach the datapath (file poll 1 s,
/// endpoint poll 1 s, compile and apply).
const CONVERGE: Duration = Duration::from_secs(15);
const UDP_PORT: u16 = 9000;

struct Running {
    agents: Vec<Agent>,
    lab: Lab,
    spec: LabSpec,
    config: std::path::PathBuf,
}

impl Running {
    fn start() -> Running {
        let spec = LabSpec { nodes: 2, pods_per_node: 2, ..LabSpec::default() };
        let mut lab = Lab::build(spec.clone())
            .unwrap_or_else(|e| panic!("building the lab (this test needs root): {e}"));
        let config = lab.temp_dir().join("cluster.yaml");
        std::fs::write(&config, manifests::nginx(&spec, &|_| EndpointState::Ready)).unwrap();
        let agent_spec = AgentSpec::new(env!("CARGO_BIN_EXE_xlb"), &config);
        let agents = agent::start_all(&mut lab, &agent_spec, AGENT_READY)
            .unwrap_or_else(|e| panic!("starting the agents and pods: {e}"));
        Running { agents, lab, spec, config }
    }

    /// Rewrites the manifest: the lab's service, its pods as Pod objects,
    /// and `policies` (YAML documents).
    fn write(&self, policies: &str) {
        let mut y = manifests::nginx(&self.spec, &|_| EndpointState::Ready);
        for p in self.lab.pods() {
            y.push_str(&format!(
                "---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{pod: {name}}}}}
spec:
  nodeName: {node}
  containers: [{{name: web, ports: [{{name: http, containerPort: 80}}]}}]
status:
  phase: Running
  podIP: {v4}
  podIPs: [{{ip: {v4}}}, {{ip: {v6}}}]
",
                name = p.host.name,
                node = p.node,
                v4 = p.host.v4,
                v6 = p.host.v6
            ));
        }
        y.push_str(policies);
        // Write then rename: the file source never reads half a file.
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, y).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    fn counter(&self, node: &str, name: &str) -> u64 {
        let a = self.agents.iter().find(|a| a.node == node).unwrap();
        a.counters().unwrap().get(name).copied().unwrap_or(0)
    }

    fn addrs(&self, pod: &str) -> [IpAddr; 2] {
        let p = self.lab.pod(pod).unwrap();
        [p.host.v4.into(), p.host.v6.into()]
    }

    fn logs(&self) -> String {
        self.agents.iter().map(|a| format!("--- {} ---\n{}\n", a.node, a.log_tail(12))).collect()
    }

    /// Whether an HTTP GET from `from` to `to`:80 answers (1 s timeouts).
    fn http_ok(&self, from: &str, to: IpAddr) -> bool {
        self.lab
            .in_ns(from, || {
                http::Conn::connect(SocketAddr::new(to, 80), Duration::from_secs(1))
                    .and_then(|mut c| c.get(true))
                    .is_ok()
            })
            .unwrap()
    }

    /// Whether a UDP datagram from `from` to `to` gets its echo back.
    fn udp_ok(&self, from: &str, to: IpAddr) -> bool {
        self.lab
            .in_ns(from, || {
                let bind: IpAddr =
                    if to.is_ipv4() { "0.0.0.0".parse().unwrap() } else { "::".parse().unwrap() };
                let sock = UdpSocket::bind(SocketAddr::new(bind, 0)).unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
                sock.send_to(b"hello", (to, UDP_PORT)).unwrap();
                let mut buf = [0u8; 64];
                match sock.recv_from(&mut buf) {
                    Ok(_) => true,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        false
                    }
                    Err(e) => panic!("{from} -> {to}: {e}"),
                }
            })
            .unwrap()
    }

    /// Waits until every (from, to, expected) holds over TCP, both
    /// families; panics with the agents' logs after CONVERGE.
    #[track_caller]
    fn converge(&self, what: &str, want: &[(&str, &str, bool)]) {
        let t0 = Instant::now();
        loop {
            let wrong: Vec<String> = want
                .iter()
                .flat_map(|(f, t, ok)| self.addrs(t).map(move |a| (*f, *t, a, *ok)))
                .filter(|(f, _, a, ok)| self.http_ok(f, *a) != *ok)
                .map(|(f, t, a, ok)| {
                    format!("{f} -> {t} ({a}) should be {}", if ok { "allowed" } else { "denied" })
                })
                .collect();
            if wrong.is_empty() {
                return;
            }
            if t0.elapsed() > CONVERGE {
                panic!("{what}: after {CONVERGE:?}:\n{}\n{}", wrong.join("\n"), self.logs());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// A UDP echo server on [::]:UDP_PORT in pod `ns` until `stop`.
fn udp_echo<'s>(
    s: &'s std::thread::Scope<'s, '_>,
    lab: &'s Lab,
    ns: &'s str,
    stop: &'s AtomicBool,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    s.spawn(move || {
        lab.in_ns(ns, || {
            let sock = UdpSocket::bind(("::", UDP_PORT)).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], peer);
                }
            }
        })
        .unwrap();
    });
    rx.recv().unwrap();
}

const INGRESS_POD2_1: &str = "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: pod2-1-from-pod1-2, namespace: default}
spec:
  podSelector: {matchLabels: {pod: pod2-1}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: pod1-2}}}]
    ports: [{port: http}]
";

const EGRESS_DENY_POD1_1: &str = "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: pod1-1-no-egress, namespace: default}
spec:
  podSelector: {matchLabels: {pod: pod1-1}}
  policyTypes: [Egress]
";

#[test]
fn policies_allow_and_deny_real_connections_across_nodes_and_on_one_node() {
    let r = Running::start();
    r.write("");
    let all = [
        ("pod1-1", "pod2-1", true),
        ("pod1-2", "pod2-1", true),
        ("pod2-2", "pod2-1", true),
        ("pod1-1", "pod1-2", true),
        ("pod1-2", "pod1-1", true),
    ];
    r.converge("no policy", &all);

    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        udp_echo(s, &r.lab, &r.lab.pod("pod2-1").unwrap().host.ns, &stop);
        let p21 = r.addrs("pod2-1");
        assert!(r.udp_ok("pod1-2", p21[0]), "UDP before any policy\n{}", r.logs());

        let drops = r.counter("node2", "drop_policy_ingress");
        r.write(INGRESS_POD2_1);
        r.converge(
            "ingress policy on pod2-1",
            &[
                ("pod1-2", "pod2-1", true),
                ("pod1-1", "pod2-1", false),
                ("pod2-2", "pod2-1", false),
                ("pod1-1", "pod1-2", true),
                ("pod2-1", "pod2-2", true),
            ],
        );
        assert!(r.counter("node2", "drop_policy_ingress") > drops, "denials counted on node2");
        for a in p21 {
            assert!(!r.udp_ok("pod1-2", a), "UDP to pod2-1 {a}: only TCP 80 is allowed");
        }

        let egress_drops = r.counter("node1", "drop_policy_egress");
        r.write(&format!("{INGRESS_POD2_1}{EGRESS_DENY_POD1_1}"));
        r.converge(
            "egress deny-all on pod1-1",
            &[
                ("pod1-1", "pod1-2", false),
                ("pod1-1", "pod2-2", false),
                // Replies of connections into pod1-1 pass its egress.
                ("pod1-2", "pod1-1", true),
                ("pod2-2", "pod1-1", true),
                ("pod1-2", "pod2-1", true),
            ],
        );
        assert!(r.counter("node1", "drop_policy_egress") > egress_drops);

        r.write("");
        r.converge("policies removed", &all);
        assert!(r.udp_ok("pod1-1", p21[1]), "UDP again after the policies went\n{}", r.logs());
        stop.store(true, Ordering::Relaxed);
    });
}
