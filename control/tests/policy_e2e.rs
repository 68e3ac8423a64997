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
//!
//! Policy action logging and observation (#11), same lab: with
//! NetworkLogging `default` logging allows and denies, a denied (pod1-1)
//! and an allowed (pod1-2) connection into pod2-1 become the expected JSON
//! lines in the agents' policy log (`--policy-log-path`), the ready gauge
//! and the logged counter show on /metrics, and two `xlb observe` clients
//! on node2 (fanned out by its agent) both see the denied and the allowed
//! flow with pods named.
use std::{
    net::{IpAddr, SocketAddr},
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
        Running::start_with(false)
    }

    /// With `policy_log`: the agents write their policy action logs to
    /// [`Running::policy_log`].
    fn start_with(policy_log: bool) -> Running {
        let spec = LabSpec { nodes: 2, pods_per_node: 2, ..LabSpec::default() };
        let mut lab = Lab::build(spec.clone())
            .unwrap_or_else(|e| panic!("building the lab (this test needs root): {e}"));
        let config = lab.temp_dir().join("cluster.yaml");
        std::fs::write(&config, manifests::nginx(&spec, &|_| EndpointState::Ready)).unwrap();
        let mut agent_spec = AgentSpec::new(env!("CARGO_BIN_EXE_xlb"), &config);
        if policy_log {
            let path = lab.temp_dir().join("policy_action.log");
            agent_spec.extra_args.extend(["--policy-log-path".into(), path.display().to_string()]);
        }
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

    fn policy_log(&self) -> std::path::PathBuf {
        self.lab.temp_dir().join("policy_action.log")
    }

    /// GET `path` from the agent of `node` (its metrics endpoint).
    fn agent_get(&self, node: &str, path: &str) -> String {
        self.lab
            .in_ns(node, || {
                let mut s = std::net::TcpStream::connect("127.0.0.1:9465")?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                std::io::Write::write_all(
                    &mut s,
                    format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes(),
                )?;
                let mut body = String::new();
                std::io::Read::read_to_string(&mut s, &mut body)?;
                Ok::<_, std::io::Error>(body)
            })
            .unwrap()
            .unwrap_or_default()
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
        let to = SocketAddr::new(to, UDP_PORT);
        let wait = Duration::from_millis(500);
        lab::udp::round(&self.lab, from, lab::udp::any_of(to.ip()), to, b"hello", wait).is_some()
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
        lab::udp::echo(s, &r.lab, &r.lab.pod("pod2-1").unwrap().host.ns, UDP_PORT, &stop);
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

const NETWORK_LOGGING: &str = "---
apiVersion: networking.gke.io/v1alpha1
kind: NetworkLogging
metadata: {name: default}
spec: {cluster: {allow: {log: true, delegate: false}, deny: {log: true, delegate: false}}}
";

/// The policy log's lines, parsed.
fn log_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line {l:?}: {e}")))
        .collect()
}

/// Whether a record is `disposition` from pod `src` to pod `dst` port 80.
fn is_record(v: &serde_json::Value, disposition: &str, src: &str, dst: &str) -> bool {
    v["disposition"] == disposition
        && v["src"]["pod_name"] == src
        && v["dest"]["pod_name"] == dst
        && v["connection"]["dest_port"] == 80
        && v["connection"]["direction"] == "ingress"
        && v["node_name"] == "node2"
}

#[test]
fn policy_action_log_and_observers_see_denied_and_allowed_connections() {
    let r = Running::start_with(true);
    r.write(&format!("{INGRESS_POD2_1}{NETWORK_LOGGING}"));
    r.converge(
        "ingress policy on pod2-1",
        &[("pod1-2", "pod2-1", true), ("pod1-1", "pod2-1", false)],
    );
    // The agent reads the event stream once NetworkLogging says to log.
    let t0 = Instant::now();
    while !r.agent_get("node2", "/metrics").contains("xlb_policy_log_ready 1") {
        assert!(t0.elapsed() < CONVERGE, "policy logging never ready on node2\n{}", r.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Two observers at once on node2, through its agent.
    let out = |i: usize| r.lab.temp_dir().join(format!("observe-{i}.json"));
    let observers: Vec<_> = (0..2)
        .map(|i| {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_xlb"));
            cmd.args(["observe", "--json", "--pod", "default/pod2-1", "--port", "80"])
                .stdout(std::fs::File::create(out(i)).unwrap())
                .stderr(std::process::Stdio::null());
            r.lab.spawn("node2", cmd).unwrap()
        })
        .collect();
    let t0 = Instant::now();
    while !r.agent_get("node2", "/metrics").contains("xlb_observers 2") {
        assert!(t0.elapsed() < CONVERGE, "observers never connected\n{}", r.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500)); // the reader widens its mask

    let p21 = r.addrs("pod2-1")[0];
    assert!(r.http_ok("pod1-2", p21), "allowed\n{}", r.logs());
    assert!(!r.http_ok("pod1-1", p21), "denied\n{}", r.logs());

    // Denies are held 5 s for aggregation, then written.
    let t0 = Instant::now();
    let (allow, deny) = loop {
        let lines = log_lines(&r.policy_log());
        let allow = lines.iter().find(|v| is_record(v, "allow", "pod1-2", "pod2-1")).cloned();
        let deny = lines.iter().find(|v| is_record(v, "deny", "pod1-1", "pod2-1")).cloned();
        if let (Some(a), Some(d)) = (&allow, &deny) {
            break (a.clone(), d.clone());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "policy log after 20 s: allow {allow:?} deny {deny:?}\n{lines:#?}\n{}",
            r.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(
        allow["policies"],
        serde_json::json!([{"name": "pod2-1-from-pod1-2", "namespace": "default", "kind": "NetworkPolicy"}])
    );
    assert_eq!(allow["connection"]["protocol"], "tcp");
    assert_eq!(allow["src"]["namespace"], "default");
    // The converge step probed both families: either address of pod1-2.
    let src_ip: IpAddr = allow["connection"]["src_ip"].as_str().unwrap().parse().unwrap();
    assert!(r.addrs("pod1-2").contains(&src_ip), "{allow}");
    assert_eq!(deny["connection"]["src_port"].as_u64().map(|p| p > 0), Some(true));
    assert!(deny["count"].as_u64().unwrap() >= 1 && deny.get("policies").is_none());
    assert!(deny["timestamp"].as_str().unwrap().ends_with('Z'));
    let metrics = r.agent_get("node2", "/metrics");
    assert!(
        metrics.lines().any(|l| l.starts_with("xlb_policy_log_records_total{result=\"logged\"}")),
        "{metrics}"
    );

    // Both observers saw both flows, named.
    for i in 0..2 {
        let t0 = Instant::now();
        loop {
            let flows: Vec<serde_json::Value> = std::fs::read_to_string(out(i))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let seen = |verdict: &str, src: &str| {
                flows.iter().any(|f| {
                    f["verdict"] == verdict
                        && f["src"]["pod"] == src
                        && f["dst"]["pod"] == "pod2-1"
                        && f["dst"]["namespace"] == "default"
                        && f["direction"] == "ingress"
                        && f["dst"]["identity"].as_u64().is_some()
                })
            };
            if seen("denied", "pod1-1") && seen("allowed", "pod1-2") {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "observer {i} saw:\n{flows:#?}\n{}",
                r.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    drop(observers);
}
