//! The upstream NetworkPolicy e2e suite's truth tables
//! (netpol_conformance.yaml: transcribed as data, with its source commit),
//! run two ways:
//! - `compiled_rules_match_the_upstream_truth_tables` (fast tier): every
//!   step's 9x9 matrix from the compiled rules (what the datapath is
//!   given), every case;
//! - `lab_traffic_matches_the_upstream_truth_tables` (privileged lab
//!   tier, root): namespaces x, y, z with pods a, b, c as the pods of a
//!   three-node lab (a pod's namespace and name set by its Pod object, so
//!   x/a, x/b, x/c run on three different nodes), the agents running, every
//!   TCP port-80 step probed with real connections, pod to pod (IPv4), the
//!   observed matrix compared with the expected one. (The lab's pods serve
//!   TCP 80 only: the steps probing 81 run in the fast tier.)
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use serde::Deserialize;
use xlb_control::policy::{self, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

#[derive(Deserialize)]
struct Table {
    source: BTreeMap<String, String>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Step {
    #[serde(default)]
    policies: Vec<PolicyDoc>,
    #[serde(default)]
    replace: Option<Vec<PolicyDoc>>,
    probe: Probe,
    expect: Vec<Expect>,
}

#[derive(Deserialize, Clone)]
struct PolicyDoc {
    namespace: String,
    name: String,
    spec: serde_json::Value,
}

#[derive(Deserialize, Clone, Copy)]
struct Probe {
    port: u16,
    protocol: Proto,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "UPPERCASE")]
enum Proto {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Deserialize)]
struct Expect {
    from: String,
    to: String,
    allow: bool,
}

const NS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const PORTS: [u16; 2] = [80, 81];

fn table() -> Table {
    let text = include_str!("netpol_conformance.yaml");
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("netpol_conformance.yaml: {e}"))
}

fn all_pods() -> Vec<String> {
    NS.iter().flat_map(|n| PODS.iter().map(move |p| format!("{n}/{p}"))).collect()
}

fn matches(pattern: &str, pod: &str) -> bool {
    let (pn, pp) = pattern.split_once('/').unwrap();
    let (n, p) = pod.split_once('/').unwrap();
    (pn == "*" || pn == n) && (pp == "*" || pp == p)
}

/// The expected matrix: (from, to) -> allowed, loopback left out.
fn expected(expect: &[Expect]) -> BTreeMap<(String, String), bool> {
    let mut m = BTreeMap::new();
    for f in all_pods() {
        for t in all_pods() {
            if f != t {
                let allow = expect
                    .iter()
                    .rev()
                    .find(|e| matches(&e.from, &f) && matches(&e.to, &t))
                    .is_none_or(|e| e.allow);
                m.insert((f.clone(), t), allow);
            }
        }
    }
    m
}

fn render(m: &BTreeMap<(String, String), bool>) -> String {
    let pods = all_pods();
    let mut out = format!("-\t{}\n", pods.join("\t"));
    for f in &pods {
        out.push_str(f);
        for t in &pods {
            out.push('\t');
            out.push(match m.get(&(f.clone(), t.clone())) {
                None => '-',
                Some(true) => '.',
                Some(false) => 'X',
            });
        }
        out.push('\n');
    }
    out
}

fn namespaces() -> Vec<Namespace> {
    NS.iter()
        .map(|n| {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": n, "labels": {"kubernetes.io/metadata.name": n}}
            }))
            .unwrap()
        })
        .collect()
}

/// The suite's pod `ns/name` at `addr`, serving serve-<port>-<proto>.
fn pod(ns: &str, name: &str, addr: IpAddr) -> Pod {
    let mut ports = Vec::new();
    for port in PORTS {
        for proto in ["TCP", "UDP", "SCTP"] {
            ports.push(serde_json::json!({
                "name": format!("serve-{port}-{}", proto.to_lowercase()),
                "containerPort": port,
                "protocol": proto,
            }));
        }
    }
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"pod": name}},
        "spec": {"containers": [{"name": "cont", "ports": ports}]},
        "status": {"phase": "Running", "podIP": addr.to_string()}
    }))
    .unwrap()
}

fn network_policy(d: &PolicyDoc) -> NetworkPolicy {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": d.name, "namespace": d.namespace},
        "spec": d.spec,
    }))
    .unwrap_or_else(|e| panic!("policy {}/{}: {e}", d.namespace, d.name))
}

/// The policies in force at each step of a case.
fn steps(case: &Case) -> Vec<(Vec<PolicyDoc>, &Step)> {
    let mut cur: Vec<PolicyDoc> = Vec::new();
    case.steps
        .iter()
        .map(|s| {
            if let Some(r) = &s.replace {
                cur = r.clone();
            }
            cur.extend(s.policies.iter().cloned());
            (cur.clone(), s)
        })
        .collect()
}

fn proto_number(p: Proto) -> u8 {
    match p {
        Proto::Tcp => PROTO_TCP,
        Proto::Udp => PROTO_UDP,
        Proto::Sctp => PROTO_SCTP,
    }
}

fn suite_addr(i: usize) -> IpAddr {
    IpAddr::from([10, 0, 0, 10 + i as u8])
}

#[test]
fn compiled_rules_match_the_upstream_truth_tables() {
    let t = table();
    assert_eq!(t.source["commit"], "9db638c0807a720aa050ebcef69c32e4d4cce280");
    let names = all_pods();
    let pods: Vec<Pod> = names
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (n, name) = p.split_once('/').unwrap();
            pod(n, name, suite_addr(i))
        })
        .collect();
    let addr = |p: &str| suite_addr(names.iter().position(|n| n == p).unwrap());
    let mut failures = Vec::new();
    let mut steps_run = 0;
    for case in &t.cases {
        for (i, (docs, step)) in steps(case).into_iter().enumerate() {
            let nps: Vec<NetworkPolicy> = docs.iter().map(network_policy).collect();
            let c = policy::compile(&pods, &namespaces(), &nps);
            assert!(c.errors.is_empty(), "{}: {:?}", case.name, c.errors);
            let want = expected(&step.expect);
            let got: BTreeMap<(String, String), bool> = want
                .keys()
                .map(|(f, to)| {
                    let v = c.verdict(
                        addr(f),
                        addr(to),
                        proto_number(step.probe.protocol),
                        step.probe.port,
                    );
                    ((f.clone(), to.clone()), v.allowed())
                })
                .collect();
            steps_run += 1;
            if got != want {
                failures.push(format!(
                    "{} (step {}, {:?} {}):\nexpected:\n{}observed:\n{}",
                    case.name,
                    i + 1,
                    step.probe.protocol,
                    step.probe.port,
                    render(&want),
                    render(&got)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {steps_run} steps differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(t.cases.len() >= 20 && steps_run >= 26, "{} cases, {steps_run} steps", t.cases.len());
}

// ---- the lab tier --------------------------------------------------------------

mod lab_tier {
    use std::sync::Mutex;

    use lab::{
        agent::{self, AgentSpec},
        http,
        manifests::{self, EndpointState},
        Lab, LabSpec,
    };

    use super::*;

    const AGENT_READY: Duration = Duration::from_secs(40);
    const CONVERGE: Duration = Duration::from_secs(20);

    /// The manifest: the lab's service, the suite's namespaces and pods (on
    /// the lab's pod addresses), and `docs`.
    fn manifest(
        spec: &LabSpec,
        map: &[(String, String, IpAddr, String)],
        docs: &[PolicyDoc],
    ) -> String {
        let mut y = manifests::nginx(spec, &|_| EndpointState::Ready);
        for ns in namespaces() {
            y.push_str("---\n"); // k8s-openapi writes apiVersion and kind
            y.push_str(&serde_yaml::to_string(&ns).unwrap());
        }
        for (suite, _, addr, node) in map {
            let (n, name) = suite.split_once('/').unwrap();
            let mut p = pod(n, name, *addr);
            p.spec.as_mut().unwrap().node_name = Some(node.clone());
            y.push_str("---\n"); // k8s-openapi writes apiVersion and kind
            y.push_str(&serde_yaml::to_string(&p).unwrap());
        }
        for d in docs {
            y.push_str("---\n"); // k8s-openapi writes apiVersion and kind
            y.push_str(&serde_yaml::to_string(&network_policy(d)).unwrap());
        }
        y
    }

    /// Probes every pair in parallel (one thread per source).
    fn observe(
        lab: &Lab,
        map: &[(String, String, IpAddr, String)],
    ) -> BTreeMap<(String, String), bool> {
        let out = Mutex::new(BTreeMap::new());
        std::thread::scope(|s| {
            for (from, from_ns, _, _) in map {
                let out = &out;
                s.spawn(move || {
                    for (to, _, addr, _) in map {
                        if from == to {
                            continue;
                        }
                        let ok = lab
                            .in_ns(from_ns, || {
                                http::Conn::connect(
                                    SocketAddr::new(*addr, 80),
                                    Duration::from_millis(700),
                                )
                                .and_then(|mut c| c.get(true))
                                .is_ok()
                            })
                            .unwrap();
                        out.lock().unwrap().insert((from.clone(), to.clone()), ok);
                    }
                });
            }
        });
        out.into_inner().unwrap()
    }

    #[test]
    fn lab_traffic_matches_the_upstream_truth_tables() {
        let t = table();
        let spec = LabSpec { nodes: 3, pods_per_node: 3, ..LabSpec::default() };
        let mut lab = Lab::build(spec.clone())
            .unwrap_or_else(|e| panic!("building the lab (this test needs root): {e}"));
        let config = lab.temp_dir().join("netpol.yaml");
        std::fs::write(&config, manifests::nginx(&spec, &|_| EndpointState::Ready)).unwrap();
        let agents = agent::start_all(
            &mut lab,
            &AgentSpec::new(env!("CARGO_BIN_EXE_xlb"), &config),
            AGENT_READY,
        )
        .unwrap_or_else(|e| panic!("starting the agents and pods: {e}"));
        // x/a x/b x/c on nodes 1, 2, 3; the same for y and z.
        let map: Vec<(String, String, IpAddr, String)> = all_pods()
            .into_iter()
            .enumerate()
            .map(|(i, suite)| {
                let lp = lab.pod(&format!("pod{}-{}", i % 3 + 1, i / 3 + 1)).unwrap().clone();
                (suite, lp.host.ns.clone(), IpAddr::from(lp.host.v4), lp.node.clone())
            })
            .collect();
        let write = |docs: &[PolicyDoc]| {
            let tmp = config.with_extension("tmp");
            std::fs::write(&tmp, manifest(&spec, &map, docs)).unwrap();
            std::fs::rename(&tmp, &config).unwrap();
        };
        let logs = || {
            agents
                .iter()
                .map(|a| format!("--- {} ---\n{}\n", a.node, a.log_tail(10)))
                .collect::<String>()
        };
        let mut failures = Vec::new();
        let mut run = 0;
        for case in &t.cases {
            for (i, (docs, step)) in steps(case).into_iter().enumerate() {
                if step.probe.port != 80 || step.probe.protocol != Proto::Tcp {
                    continue;
                }
                write(&docs);
                let want = expected(&step.expect);
                let t0 = Instant::now();
                let got = loop {
                    std::thread::sleep(Duration::from_millis(1500));
                    let got = observe(&lab, &map);
                    if got == want || t0.elapsed() > CONVERGE {
                        break got;
                    }
                };
                run += 1;
                if got != want {
                    failures.push(format!(
                        "{} (step {}):\nexpected:\n{}observed:\n{}",
                        case.name,
                        i + 1,
                        render(&want),
                        render(&got)
                    ));
                }
            }
            write(&[]);
        }
        assert!(
            failures.is_empty(),
            "{} of {run} steps differ:\n{}\n{}",
            failures.len(),
            failures.join("\n"),
            logs()
        );
        assert!(run >= 15, "{run} port-80 steps probed");
    }
}
