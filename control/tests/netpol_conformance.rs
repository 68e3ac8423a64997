//! The upstream NetworkPolicy e2e suite's truth tables
//! (netpol_conformance.yaml: transcribed as data, with its source commit),
//! run two ways:
//! - `compiled_rules_match_the_upstream_truth_tables` (fast tier): every
//!   step's 9x9 matrix from the compiled rules (what the datapath is
//!   given), every case;
//! - `lab_traffic_through_cluster_ips_matches_the_upstream_truth_tables`
//!   (privileged lab tier, root): the suite's cluster written as a
//!   manifest (namespaces x, y, z; pods a, b, c on three nodes, serving
//!   TCP and UDP 80 and 81; a ClusterIP Service in front of each pod, as
//!   the suite makes them) run by the lab, the agents running, every TCP
//!   and UDP step probed with real connections and datagrams from each
//!   pod to every other pod's ClusterIP (translated at the socket, the
//!   policy judging the pod addresses behind it), the observed matrix
//!   compared with the expected one. SCTP steps run in the fast tier only
//!   (the lab's servers speak TCP and UDP).
use std::{
    collections::BTreeMap,
    net::IpAddr,
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
    use std::fmt::Write as _;

    use lab::{
        agent::{self, AgentSpec},
        eastwest,
        reach::{self, Probe as LabProbe},
        workload::{self, Protocol},
        Lab, LabSpec,
    };

    use super::*;

    const AGENT_READY: Duration = Duration::from_secs(60);
    const CONVERGE: Duration = Duration::from_secs(20);
    /// A denied probe waits this long for its answer.
    const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

    /// The suite's cluster as a user writes it: the namespaces; pods a, b,
    /// c in each, pod `a` of every namespace on node1, `b` on node2, `c` on
    /// node3, serving serve-<port>-<tcp|udp> (the lab's servers speak TCP
    /// and UDP; SCTP stays in the fast tier); and, as the suite creates
    /// them, a Service `s-<ns>-<pod>` in front of each pod alone.
    fn cluster_manifest() -> String {
        let mut y = String::new();
        for ns in NS {
            writeln!(y, "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---").unwrap();
            for (k, pod) in PODS.iter().enumerate() {
                let mut ports = String::new();
                let mut svc_ports = String::new();
                for port in PORTS {
                    for proto in ["TCP", "UDP"] {
                        let name = format!("serve-{port}-{}", proto.to_lowercase());
                        write!(
                            ports,
                            "{{name: {name}, containerPort: {port}, protocol: {proto}}}, "
                        )
                        .unwrap();
                        write!(
                            svc_ports,
                            "{{name: {name}, port: {port}, targetPort: {port}, protocol: {proto}}}, "
                        )
                        .unwrap();
                    }
                }
                writeln!(
                    y,
                    "apiVersion: v1\nkind: Pod\n\
                     metadata: {{name: {pod}, namespace: {ns}, labels: {{pod: {pod}}}}}\n\
                     spec: {{nodeName: node{}, containers: [{{name: cont, ports: [{ports}]}}]}}\n---\n\
                     apiVersion: v1\nkind: Service\n\
                     metadata: {{name: s-{ns}-{pod}, namespace: {ns}}}\n\
                     spec: {{selector: {{pod: {pod}}}, ports: [{svc_ports}]}}\n---",
                    k + 1
                )
                .unwrap();
            }
        }
        y
    }

    #[test]
    fn lab_traffic_through_cluster_ips_matches_the_upstream_truth_tables() {
        let t = table();
        let work = workload::plan(&cluster_manifest(), "the e2e suite's cluster", 3)
            .unwrap_or_else(|e| panic!("{e}"));
        let spec = LabSpec { nodes: 3, workload: work.pod_plans(), ..LabSpec::default() };
        let mut lab = Lab::build(spec.clone())
            .unwrap_or_else(|e| panic!("building the lab (this test needs root): {e}"));
        let base = work.manifest(&spec);
        let config = lab.temp_dir().join("netpol.yaml");
        std::fs::write(&config, &base).unwrap();
        let xlb = agent::xlb_binary().expect("the xlb binary (cargo build --release --workspace)");
        let probe_bin = eastwest::probe_binary(&xlb).unwrap();
        let ready = agent::lists_services(work.programmed_services());
        let agents =
            agent::start_all_until(&mut lab, &AgentSpec::new(&xlb, &config), AGENT_READY, &ready)
                .unwrap_or_else(|e| panic!("starting the agents and pods: {e}"));

        // Rows and columns in the suite's order; each column probed at the
        // ClusterIP of the pod's own Service.
        let mut pods = reach::pods_of(&lab).unwrap();
        let names = all_pods();
        pods.retain(|p| names.contains(&p.label));
        pods.sort_by_key(|p| names.iter().position(|n| *n == p.label));
        assert_eq!(pods.iter().map(|p| p.label.clone()).collect::<Vec<_>>(), names);
        let to: Vec<IpAddr> = names
            .iter()
            .map(|n| {
                let (ns, pod) = n.split_once('/').unwrap();
                let svc = work.service(ns, &format!("s-{ns}-{pod}")).expect("the pod's Service");
                *svc.cluster_ips.iter().find(|ip| ip.is_ipv4()).expect("an IPv4 ClusterIP")
            })
            .collect();
        let write = |docs: &[PolicyDoc]| {
            let mut y = base.clone();
            for d in docs {
                y.push_str("\n---\n"); // k8s-openapi writes apiVersion and kind
                y.push_str(&serde_yaml::to_string(&network_policy(d)).unwrap());
            }
            let tmp = config.with_extension("tmp");
            std::fs::write(&tmp, y).unwrap();
            std::fs::rename(&tmp, &config).unwrap();
        };
        let observe = |probe: LabProbe| -> BTreeMap<(String, String), bool> {
            let m = reach::matrix_to(&probe_bin, &pods, &to, probe)
                .unwrap_or_else(|e| panic!("probing: {e}"));
            let mut out = BTreeMap::new();
            for (i, from) in m.labels.iter().enumerate() {
                for (j, dst) in m.labels.iter().enumerate() {
                    if i != j {
                        out.insert((from.clone(), dst.clone()), m.reachable[i][j]);
                    }
                }
            }
            out
        };
        let logs = || {
            agents
                .iter()
                .map(|a| format!("--- {} ---\n{}\n", a.node, a.log_tail(10)))
                .collect::<String>()
        };
        let mut failures = Vec::new();
        let mut run = BTreeMap::new();
        for case in &t.cases {
            for (i, (docs, step)) in steps(case).into_iter().enumerate() {
                let protocol = match step.probe.protocol {
                    Proto::Tcp => Protocol::Tcp,
                    Proto::Udp => Protocol::Udp,
                    Proto::Sctp => continue,
                };
                let probe = LabProbe {
                    port: step.probe.port,
                    protocol,
                    ipv6: false,
                    timeout: PROBE_TIMEOUT,
                };
                write(&docs);
                let want = expected(&step.expect);
                let t0 = Instant::now();
                let got = loop {
                    std::thread::sleep(Duration::from_millis(1500));
                    let got = observe(probe);
                    if got == want || t0.elapsed() > CONVERGE {
                        break got;
                    }
                };
                *run.entry(format!("{:?} {}", step.probe.protocol, step.probe.port))
                    .or_insert(0) += 1;
                if got != want {
                    failures.push(format!(
                        "{} (step {}, {:?} {} through the ClusterIPs):\nexpected:\n{}observed:\n{}",
                        case.name,
                        i + 1,
                        step.probe.protocol,
                        step.probe.port,
                        render(&want),
                        render(&got)
                    ));
                }
            }
            write(&[]);
        }
        let total: usize = run.values().sum();
        assert!(
            failures.is_empty(),
            "{} of {total} steps differ:\n{}\n{}",
            failures.len(),
            failures.join("\n"),
            logs()
        );
        eprintln!("steps probed through the ClusterIPs: {run:?}");
        assert!(total >= 25, "{total} TCP/UDP steps probed: {run:?}");
        assert!(run.keys().any(|k| k.starts_with("Udp")), "UDP steps probed: {run:?}");
    }
}
