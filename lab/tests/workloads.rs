//! Labs of workloads from manifests, on the real kernel (root), with the
//! `xlb` agents built beside the tests (target/<profile>/xlb): the seed
//! example end to end (pods placed and served, EndpointSlices taken by the
//! agents, a Service's ClusterIP reached from a client pod on another node
//! and from a node's own processes, translated at the socket, and the
//! reachability matrix); internalTrafficPolicy: Local with real processes in
//! the lab's cgroups (the node with the endpoint reaches it, a node without
//! one is refused at once); a NetworkPolicy from the manifest seen in the
//! reachability matrix.
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    time::{Duration, Instant},
};

use lab::{
    agent::{self, Agent, AgentSpec},
    eastwest,
    reach::{self, Matrix, Probe},
    workload::{self, Protocol, Workload},
    Lab, LabSpec,
};

const AGENT_READY: Duration = Duration::from_secs(40);

struct Running {
    lab: Lab,
    work: Workload,
    agents: Vec<Agent>,
}

impl Running {
    fn start(manifest: &str, nodes: u32) -> Running {
        let work =
            workload::plan(manifest, "test manifest", nodes).unwrap_or_else(|e| panic!("{e}"));
        let spec = LabSpec { nodes, workload: work.pod_plans(), ..LabSpec::default() };
        let mut lab = Lab::build(spec.clone())
            .unwrap_or_else(|e| panic!("building the lab (this test needs root): {e}"));
        let config = lab.temp_dir().join("manifest.yaml");
        std::fs::write(&config, work.manifest(&spec)).unwrap();
        let xlb = agent::xlb_binary().expect("the xlb binary (cargo build --release --workspace)");
        let ready = agent::lists_services(work.programmed_services());
        let agents =
            agent::start_all_until(&mut lab, &AgentSpec::new(&xlb, &config), AGENT_READY, &ready)
                .unwrap_or_else(|e| panic!("starting the agents and pods: {e}"));
        Running { lab, work, agents }
    }

    fn probe_bin(&self) -> std::path::PathBuf {
        eastwest::probe_binary(&agent::xlb_binary().unwrap()).unwrap()
    }

    fn counter(&self, name: &str) -> u64 {
        self.agents.iter().map(|a| a.counters().unwrap().get(name).copied().unwrap_or(0)).sum()
    }

    fn logs(&self) -> String {
        self.agents.iter().map(|a| format!("--- {} ---\n{}\n", a.node, a.log_tail(15))).collect()
    }

    /// The matrix, probed again until `want` holds or `within` passes.
    fn matrix_until(
        &self,
        probe: Probe,
        within: Duration,
        want: &dyn Fn(&Matrix) -> bool,
    ) -> Matrix {
        let pods = reach::pods_of(&self.lab).unwrap();
        let t0 = Instant::now();
        loop {
            let m = reach::matrix(&self.probe_bin(), &pods, probe).unwrap();
            if want(&m) || t0.elapsed() > within {
                return m;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn tcp80() -> Probe {
    Probe { port: 80, protocol: Protocol::Tcp, ipv6: false, timeout: Duration::from_millis(1000) }
}

#[test]
fn the_seed_example_runs_with_its_clusterip_translated_at_the_socket() {
    let r = Running::start(workload::SEED, 3);
    let nginx: Vec<String> =
        r.work.pods.iter().filter(|p| p.name.starts_with("nginx-")).map(|p| p.role()).collect();
    assert_eq!(nginx.len(), 2);
    let nodes: BTreeSet<&str> = nginx.iter().map(|p| r.lab.pod(p).unwrap().node.as_str()).collect();
    assert_eq!(nodes, BTreeSet::from(["node1", "node2"]), "replicas spread over the nodes");
    assert_eq!(r.lab.pod("client-pod").unwrap().node, "node3");

    // The agents took the Services from the published slices.
    let listed = r.agents[0].services().unwrap();
    assert!(
        listed.iter().any(|s| s.name.contains("nginx-service")),
        "nginx-service among {:?}",
        listed.iter().map(|s| s.name.clone()).collect::<Vec<_>>()
    );

    // From a client pod on a node without nginx, and from that node itself.
    let svc = r.work.service("default", "nginx-service").unwrap();
    let probe = r.probe_bin();
    let before = (r.counter("ok_sock_connect"), r.counter("ok_fallback_nat"));
    for client in ["client-pod", "node3"] {
        for ip in &svc.cluster_ips {
            let target = SocketAddr::new(*ip, 80);
            let rep = eastwest::drive(&r.lab, &probe, client, target, 10).unwrap();
            assert!(
                rep.failures.is_empty(),
                "{client} -> {target}: {:?}\n{}",
                rep.failures,
                r.logs()
            );
            assert_eq!(rep.wrong_peer, 0, "getpeername is the ClusterIP");
            let answered: BTreeSet<&String> = rep.per_backend.keys().collect();
            assert!(answered.iter().all(|a| nginx.contains(a)), "{client}: {answered:?}");
        }
    }
    let connects = r.counter("ok_sock_connect") - before.0;
    assert!(connects >= 2 * 2 * 10, "one socket translation per connection: {connects}");
    assert_eq!(r.counter("ok_fallback_nat"), before.1, "no per-packet NAT");

    // Every pod reaches nginx on port 80; nobody reaches the client (it
    // serves nothing).
    let m = r.matrix_until(tcp80(), Duration::from_secs(5), &|_| true);
    eprintln!("{m}");
    let mut want = BTreeSet::new();
    for from in &m.labels {
        for to in &nginx {
            want.insert((from.clone(), format!("default/{to}")));
        }
    }
    assert_eq!(m.reachable_pairs().into_iter().collect::<BTreeSet<_>>(), want, "{m}");
}

#[test]
fn internal_traffic_policy_local_reaches_only_node_local_endpoints_and_refuses_elsewhere() {
    let manifest = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: local}
spec:
  replicas: 1
  selector: {matchLabels: {app: local}}
  template:
    metadata: {labels: {app: local}}
    spec:
      nodeName: node1
      containers: [{name: c, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: local}
spec:
  internalTrafficPolicy: Local
  selector: {app: local}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: here}
spec: {nodeName: node1, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: there}
spec: {nodeName: node2, containers: [{name: c}]}
";
    let r = Running::start(manifest, 2);
    let svc = r.work.service("default", "local").unwrap();
    let target = SocketAddr::new(svc.cluster_ips[0], 80);
    let endpoint = r.work.pods.iter().find(|p| p.name.starts_with("local-")).unwrap().role();
    let probe = r.probe_bin();
    // node1 (the endpoint's node): its pod and its own processes reach it.
    for client in ["here", "node1"] {
        let rep = eastwest::drive(&r.lab, &probe, client, target, 5).unwrap();
        assert!(rep.failures.is_empty(), "{client}: {:?}\n{}", rep.failures, r.logs());
        assert_eq!(rep.per_backend.get(&endpoint), Some(&5), "{client}: {:?}", rep.per_backend);
    }
    // node2 has no endpoint: connect() is refused at once, no timeout.
    let refused0 = r.counter("drop_no_backend");
    for client in ["there", "node2"] {
        let t0 = Instant::now();
        let rep = eastwest::drive(&r.lab, &probe, client, target, 3).unwrap();
        let took = t0.elapsed();
        assert_eq!(rep.succeeded(), 0, "{client} reached {:?}", rep.per_backend);
        assert_eq!(rep.failures.len(), 3, "{client}: {:?}", rep.failures);
        for f in &rep.failures {
            assert!(f.contains("refused"), "{client}: ECONNREFUSED expected, got {f}");
        }
        assert!(took < Duration::from_secs(1), "{client}: refused at once, took {took:?}");
    }
    assert!(r.counter("drop_no_backend") - refused0 >= 6, "the refusals are counted");
}

#[test]
fn a_network_policy_from_the_manifest_shows_in_the_reachability_matrix() {
    let manifest = "
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {containers: [{name: c, ports: [{containerPort: 80}, {containerPort: 80, protocol: UDP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {pod: c}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
---
# Only x/b may reach x/a.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
";
    let r = Running::start(manifest, 2);
    let want: BTreeSet<(String, String)> = [
        ("x/a", "x/a"),
        ("x/b", "x/a"),
        ("x/a", "x/b"),
        ("x/b", "x/b"),
        ("x/c", "x/b"),
        ("x/a", "x/c"),
        ("x/b", "x/c"),
        ("x/c", "x/c"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let got = |m: &Matrix| m.reachable_pairs().into_iter().collect::<BTreeSet<_>>();
    let m = r.matrix_until(tcp80(), Duration::from_secs(20), &|m| got(m) == want);
    eprintln!("{m}");
    assert_eq!(got(&m), want, "{m}\n{}", r.logs());
    // UDP: only x/a serves it; x/c is denied by the same policy.
    let udp = Probe { protocol: Protocol::Udp, ..tcp80() };
    let m = r.matrix_until(udp, Duration::from_secs(5), &|_| true);
    eprintln!("{m}");
    let pairs = got(&m);
    assert!(pairs.contains(&("x/b".into(), "x/a".into())), "{m}");
    assert!(!pairs.contains(&("x/c".into(), "x/a".into())), "{m}");
}
