//! `xlb run --kubeconfig` with thousands of Nodes, against the API server
//! double (issue #14 item 5, at a scale that runs in seconds): after the
//! first full apply, an endpoint change must still reach the maps. At 7,500
//! nodes the agent once hung for ever after its first apply (the next hops
//! of every tunnel endpoint were asked of `ip -batch` with both pipes full),
//! so `xlb-perf cluster --services 30000 --nodes 7500` saw 0 of 4000 changes.
//!
//! Privileged tier: needs root, BPF and netns; fails (never skips) without them.
use std::{
    fs::File,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use apiserver::ApiServer;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use lb::view::{render, DatapathView};
use testkit::{netns::NamedNetns, pins::PinDir};

const XLB: &str = env!("CARGO_BIN_EXE_xlb");
/// Nodes hosting backends: each a tunnel endpoint whose next hop the agent
/// keeps resolved (a few thousand fill the pipes of one `ip -batch`).
const NODES: usize = 5000;
const SERVICES: usize = 500;
const ENDPOINTS: usize = 10;

fn node_addr(n: usize) -> String {
    format!("10.1.{}.{}", n / 250, n % 250 + 1)
}

/// Every object as YAML: this node "lb", NODES others, SERVICES LoadBalancer
/// services with ENDPOINTS endpoints each, every endpoint on a node of its own.
fn cluster_yaml() -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: Node\nmetadata: {name: lb}\n\
         status: {addresses: [{type: InternalIP, address: 10.0.0.2}]}\n",
    );
    for n in 0..NODES {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: node-{n}}}\n\
             status: {{addresses: [{{type: InternalIP, address: {}}}]}}\n",
            node_addr(n)
        ));
    }
    for i in 0..SERVICES {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: default}}\n\
             spec: {{type: LoadBalancer, allocateLoadBalancerNodePorts: false, ipFamilies: [IPv4], \
             ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n\
             status: {{loadBalancer: {{ingress: [{{ip: 10.100.{}.{}}}]}}}}\n",
            i / 250,
            i % 250 + 1
        ));
        y.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: svc-{i}-1, namespace: default, \
             labels: {{kubernetes.io/service-name: svc-{i}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n"
        ));
        for j in 0..ENDPOINTS {
            let k = i * ENDPOINTS + j;
            y.push_str(&format!(
                "- {{addresses: [10.128.{}.{}], nodeName: node-{}, conditions: {{ready: true}}}}\n",
                k / 250,
                k % 250 + 1,
                k % NODES
            ));
        }
    }
    y
}

/// The agent, killed on drop (also on a failed assertion).
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn endpoint_changes_reach_the_maps_with_thousands_of_nodes() {
    testkit::require_root("this test (BPF, netns)");
    let netns = NamedNetns::create("scale").unwrap_or_else(|e| panic!("{e}"));
    netns.veth("xv0", "xv1").unwrap_or_else(|e| panic!("{e}"));
    netns.ip(&["addr", "add", "10.0.0.2/24", "dev", "xv0"]).unwrap_or_else(|e| panic!("{e}"));
    // Every node is reached through one gateway (as in xlb-perf cluster).
    netns.ip(&["route", "add", "default", "via", "10.0.0.1"]).unwrap_or_else(|e| panic!("{e}"));
    let pins = PinDir::new("scale");
    let dir = std::env::temp_dir().join(format!("xlb-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rt = netns
        .run_in(|| {
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()
        })
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap();
    let server = rt.block_on(rt.spawn(ApiServer::start())).unwrap().unwrap();
    server.apply_yaml(&cluster_yaml()).unwrap();
    let kubeconfig = dir.join("kubeconfig.yaml");
    server.write_kubeconfig(&kubeconfig).unwrap();

    let log_path = dir.join("xlb.log");
    let log = File::create(&log_path).unwrap();
    let agent = Agent(
        netns
            .nsenter(XLB)
            .args(["run", "--iface", "xv0", "--node-name", "lb", "--xdp-mode", "generic"])
            .args(["--no-metrics", "--no-healthz", "--socket-lb", "off"])
            .args(["--max-services", "1024", "--max-backends", "16384"])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--pin-dir")
            .arg(pins.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting xlb run"),
    );
    let mut agent = agent;
    let mut wait_for = |what: &str, timeout: Duration, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + timeout;
        while !cond() {
            let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Ok(Some(st)) = agent.0.try_wait() {
                panic!("xlb run exited ({st}) waiting for {what}; log:\n{}", log());
            }
            assert!(Instant::now() < deadline, "no {what} within {timeout:?}; log:\n{}", log());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("first full apply", Duration::from_secs(60), &|| {
        std::fs::read_to_string(&log_path).unwrap_or_default().contains("applied how=\"full\"")
    });
    // Read-only: a Datapath would take the maps over while the agent runs.
    let dump = || {
        DatapathView::open(pins.path())
            .and_then(|v| v.services())
            .map(|s| render(&s))
            .unwrap_or_default()
    };
    assert!(dump().contains("10.128.0.1:8080"), "the first apply lacks svc-0's backend");

    // One endpoint replaced, through the API: the new backend reaches the maps.
    let mut slice: EndpointSlice = server.get(Some("default"), "svc-7-1").unwrap().unwrap();
    slice.endpoints[3].addresses = vec!["10.192.0.1".into()];
    let t0 = Instant::now();
    server.update(&slice).unwrap();
    wait_for("the changed endpoint in the maps", Duration::from_secs(20), &|| {
        dump().contains("10.192.0.1:8080")
    });
    eprintln!("endpoint change in the maps after {:?}", t0.elapsed());
    drop(server);
    rt.shutdown_background();
    let _ = std::fs::remove_dir_all(&dir);
}
