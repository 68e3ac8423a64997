//! `xlb run --kubeconfig` end to end, as a process in a network namespace of its own
//! (attached to a veth there), against the API server double (which runs in the same
//! namespace, so the agent reaches it on its loopback):
//! - the API unreachable at start: the agent keeps serving what the pinned maps hold,
//!   /readyz answers 503 saying so, and once the API is back it syncs and turns ready
//!   without disturbing anything;
//! - healthCheckNodePort of an externalTrafficPolicy: Local service answered with
//!   kube-proxy's semantics (200 + localEndpoints with a ready local endpoint, 503 without,
//!   closed when the service goes).
//!
//! - a fresh node with the pod network: the first listing is applied while the programs
//!   load, the CNI configuration only once the pod programs xlb-cni needs are pinned.
//!
//! Privileged tier: needs root, BPF and netns; fails (never skips) without them.
use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use apiserver::ApiServer;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use lb::view::{render, DatapathView};
use testkit::{netns::NamedNetns, pins::PinDir};
use xlb_control::examples;

const XLB: &str = env!("CARGO_BIN_EXE_xlb");
const WAIT: Duration = Duration::from_secs(40);

/// GET `path` from `addr` inside `ns`: (status code, body); None if refused.
fn get(ns: &NamedNetns, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    ns.run_in(|| {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let code = out.split_whitespace().nth(1)?.parse().ok()?;
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
        Some((code, body))
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Namespace, pin directory, scratch directory, the API server (on a runtime whose
/// threads live in the namespace) and the agent; all cleaned up on drop, even on panic.
struct Fixture {
    netns: NamedNetns,
    pin_dir: PinDir,
    dir: PathBuf,
    agent: Option<Child>,
    server: Option<Arc<ApiServer>>,
    rt: Option<tokio::runtime::Runtime>,
    /// More `xlb run` flags.
    extra_args: Vec<String>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop_agent();
        self.server.take();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const METRICS: &str = "127.0.0.1:9465";

impl Fixture {
    fn new(tag: &str) -> Fixture {
        testkit::require_root("this test (BPF, netns)");
        let mut f = Fixture {
            netns: NamedNetns::create(tag).unwrap_or_else(|e| panic!("{e}")),
            pin_dir: PinDir::new(tag),
            dir: std::env::temp_dir().join(format!("xlb-kd-{tag}-{}", std::process::id())),
            agent: None,
            server: None,
            rt: None,
            extra_args: Vec::new(),
        };
        std::fs::create_dir_all(&f.dir).unwrap();
        f.netns.veth("xv0", "xv1").unwrap_or_else(|e| panic!("{e}"));
        let rt = f
            .netns
            .run_in(|| {
                tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()
            })
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap();
        let server = rt.block_on(rt.spawn(ApiServer::start())).unwrap().unwrap();
        server.write_kubeconfig(&f.kubeconfig()).unwrap();
        f.server = Some(Arc::new(server));
        f.rt = Some(rt);
        f
    }

    fn server(&self) -> &ApiServer {
        self.server.as_ref().unwrap()
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig.yaml")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("xlb.log")).unwrap_or_default()
    }

    fn start_agent(&mut self) {
        let log = File::options().create(true).append(true).open(self.dir.join("xlb.log")).unwrap();
        let child = self
            .netns
            .nsenter(XLB)
            .args(["run", "--iface", "xv0", "--node-name", "lb"])
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--pin-dir")
            .arg(self.pin_dir.path())
            .args(["--metrics-addr", METRICS, "--small-maps", "--xdp-mode", "generic"])
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting xlb run");
        self.agent = Some(child);
    }

    fn stop_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn dump(&self) -> String {
        // Read-only: a Datapath would take the maps over (its restore
        // writes) while the agent runs.
        DatapathView::open(self.pin_dir.path())
            .and_then(|v| v.services())
            .map(|s| render(&s))
            .unwrap_or_default()
    }

    fn wait_for(&mut self, what: &str, mut cond: impl FnMut(&Fixture) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(self) {
            if let Some(Ok(Some(st))) = self.agent.as_mut().map(|c| c.try_wait()) {
                panic!("xlb run exited ({st}) waiting for {what}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn readyz(&self) -> Option<(u16, String)> {
        get(&self.netns, METRICS.parse().unwrap(), "/readyz")
    }

    fn pause(&self) {
        let s = self.server.clone().unwrap();
        let rt = self.rt.as_ref().unwrap();
        rt.block_on(rt.spawn(async move { s.pause().await })).unwrap();
    }

    fn resume(&self) {
        let s = self.server.clone().unwrap();
        let rt = self.rt.as_ref().unwrap();
        // Spawned: the listening socket is created on a thread inside the namespace.
        rt.block_on(rt.spawn(async move { s.resume().await })).unwrap().unwrap();
    }
}

#[test]
fn api_down_at_start_keeps_the_pinned_state_and_readyz_says_so() {
    let mut f = Fixture::new("down");
    f.server().apply_yaml(examples::NGINX).unwrap();
    f.start_agent();
    f.wait_for("nginx programmed", |f| f.dump().contains("service default/nginx:http "));
    f.wait_for("ready", |f| f.readyz().is_some_and(|(c, _)| c == 200));
    let programmed = f.dump();
    f.stop_agent();

    // The API goes away; a new agent starts on the pinned maps.
    f.pause();
    f.start_agent();
    f.wait_for("readyz saying the source is unavailable", |f| {
        f.readyz().is_some_and(|(c, why)| c == 503 && why.contains("source unavailable"))
    });
    let (_, why) = f.readyz().unwrap();
    assert!(
        why.contains("source unavailable") && why.contains("not usable"),
        "readyz should say the API is unusable: {why}"
    );
    assert!(why.contains("serving the state the maps held at start (2 services)"), "{why}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(f.dump(), programmed, "the pinned state keeps serving, untouched");
    assert!(f.readyz().is_some_and(|(c, _)| c == 503));

    // The API is back: the agent syncs (nothing to change) and turns ready.
    f.resume();
    f.wait_for("ready again", |f| f.readyz().is_some_and(|(c, _)| c == 200));
    assert_eq!(f.dump(), programmed, "a sync after the outage changes nothing");
    let log = f.log();
    assert!(log.contains("Kubernetes source failed"), "{log}");
    assert!(log.contains("Kubernetes caches synced"), "{log}");
}

const LOCAL: &str = "apiVersion: v1
kind: Service
metadata: {name: local, namespace: default}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 32100
  ipFamilies: [IPv4]
  ports: [{name: http, port: 80, nodePort: 30090}]
status:
  loadBalancer:
    ingress: [{ip: 10.100.0.20}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: local-1
  namespace: default
  labels: {kubernetes.io/service-name: local}
addressType: IPv4
ports: [{name: http, port: 80}]
endpoints:
- {addresses: [10.244.0.61], nodeName: lb, conditions: {ready: true}}
- {addresses: [10.244.0.62], nodeName: lb, conditions: {ready: true}}
- {addresses: [10.244.1.61], nodeName: node1, conditions: {ready: true}}
";

#[test]
fn health_check_node_port_answers_like_kube_proxy() {
    let mut f = Fixture::new("hc");
    f.server().apply_yaml(examples::NGINX).unwrap();
    f.server().apply_yaml(LOCAL).unwrap();
    f.start_agent();
    let hc: SocketAddr = "127.0.0.1:32100".parse().unwrap();
    f.wait_for("the health check port", |f| get(&f.netns, hc, "/").is_some());
    let (code, body) = get(&f.netns, hc, "/healthz").unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["service"]["namespace"], "default");
    assert_eq!(v["service"]["name"], "local");
    assert_eq!(v["localEndpoints"], 2, "two ready endpoints on node lb: {body}");
    assert_eq!(v["serviceProxyHealthy"], true);
    // The packet frontends' service holds only the local endpoints
    // (externalTrafficPolicy: Local); reached from inside the cluster
    // (internalTrafficPolicy: Cluster) it is a service of its own with all.
    let dump = f.dump();
    let external = dump
        .split("service ")
        .find(|s| s.contains("frontend 10.0.0.2:30090/TCP nodeport\n"))
        .unwrap_or_else(|| panic!("no NodePort service: {dump}"));
    assert!(external.contains("10.244.0.61:80") && !external.contains("10.244.1.61"), "{dump}");

    // No ready endpoint on this node any more: 503, count 0.
    let mut slice: EndpointSlice = f.server().get(Some("default"), "local-1").unwrap().unwrap();
    for ep in slice.endpoints.iter_mut().take(2) {
        ep.conditions.as_mut().unwrap().ready = Some(false);
    }
    f.server().update(&slice).unwrap();
    f.wait_for("503", |f| get(&f.netns, hc, "/").is_some_and(|(c, _)| c == 503));
    let (_, body) = get(&f.netns, hc, "/").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["localEndpoints"], 0, "{body}");

    // The service goes: its port closes.
    f.server().delete::<k8s_openapi::api::core::v1::Service>(Some("default"), "local").unwrap();
    f.wait_for("port closed", |f| get(&f.netns, hc, "/").is_none());
}

/// Three tenants' objects: `partial` has one bad externalIP (no
/// --external-ip-cidr allows it) and, in its slice, one endpoint without
/// nodeName and one naming a node that does not exist; `broken` has an
/// invalid service-wide setting (sessionAffinity) and is left out whole.
const TENANTS: &str = "apiVersion: v1
kind: Service
metadata: {name: partial, namespace: tenant-a}
spec:
  type: LoadBalancer
  ipFamilies: [IPv4]
  externalIPs: [203.0.113.9]
  ports: [{name: http, port: 80, nodePort: 30081}]
status:
  loadBalancer:
    ingress: [{ip: 10.100.0.31}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: partial-1
  namespace: tenant-a
  labels: {kubernetes.io/service-name: partial}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.244.1.31], nodeName: node1, conditions: {ready: true}}
- {addresses: [10.244.1.32], conditions: {ready: true}}
- {addresses: [10.244.1.33], nodeName: gone, conditions: {ready: true}}
---
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: tenant-b}
spec:
  type: LoadBalancer
  ipFamilies: [IPv4]
  sessionAffinity: Sticky
  ports: [{name: http, port: 80}]
status:
  loadBalancer:
    ingress: [{ip: 10.100.0.32}]
";

fn metric(f: &Fixture, line_start: &str) -> Option<String> {
    let (_, body) = get(&f.netns, METRICS.parse().unwrap(), "/metrics")?;
    body.lines().find(|l| l.starts_with(line_start)).map(str::to_string)
}

/// #12 item 1: from the API one bad object (or bad part of one) never blocks
/// the valid ones: it is left out, logged once, counted by kind and reason
/// and listed by `xlb status`; everything valid is applied, and later
/// changes keep being applied. (Before: the whole configuration was
/// rejected and nothing was programmed.)
#[test]
fn one_bad_object_never_blocks_the_valid_ones() {
    let mut f = Fixture::new("bad1");
    f.server().apply_yaml(examples::NGINX).unwrap();
    f.server().apply_yaml(TENANTS).unwrap();
    f.start_agent();
    // Ready means the first sync is applied whole; a dump taken before that
    // can catch the maps between the service rows and their frontends.
    f.wait_for("ready", |f| f.readyz().is_some_and(|(c, _)| c == 200));
    // The valid parts: the ingress frontend, the NodePort, the endpoint on node1.
    f.wait_for("nginx and the valid part of tenant-a programmed", |f| {
        let d = f.dump();
        d.contains("service default/nginx:http ")
            && d.contains("service tenant-a/partial:http ")
            && d.contains("10.100.0.31:80/TCP")
            && d.contains("10.0.0.2:30081/TCP")
            && d.contains("10.244.1.31:8080")
    });
    let dump = f.dump();
    // The invalid parts and the invalid object: left out.
    assert!(!dump.contains("203.0.113.9"), "{dump}");
    assert!(!dump.contains("10.244.1.32") && !dump.contains("10.244.1.33"), "{dump}");
    assert!(!dump.contains("tenant-b/broken"), "{dump}");

    // Status: every problem, named by object and field.
    let out = f
        .netns
        .nsenter(XLB)
        .args(["status", "--metrics-addr", METRICS])
        .output()
        .expect("running xlb status");
    let status = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{status}{}", String::from_utf8_lossy(&out.stderr));
    assert!(status.contains("4 problems left out, everything valid applied"), "{status}");
    for want in [
        "Service tenant-a/partial: spec.externalIPs[0]: 203.0.113.9 is outside",
        "EndpointSlice tenant-a/partial-1: endpoints[1].nodeName: missing",
        "EndpointSlice tenant-a/partial-1: endpoints[2].nodeName: node \"gone\" not found",
        "Service tenant-b/broken: spec.sessionAffinity: \"Sticky\" is not one of",
    ] {
        assert!(status.contains(want), "status lacks {want:?}:\n{status}");
    }
    // The metric, by kind and reason.
    let m = metric(&f, "xlb_config_problems{kind=\"EndpointSlice\",reason=\"missing\"}");
    assert!(m.as_deref().is_some_and(|l| l.ends_with(" 1")), "{m:?}");
    let m = metric(&f, "xlb_config_problems{kind=\"Service\",reason=\"external_ip_not_allowed\"}");
    assert!(m.as_deref().is_some_and(|l| l.ends_with(" 1")), "{m:?}");

    // Later changes are applied while the problems stay, and each problem
    // is logged once.
    let mut slice: EndpointSlice = f.server().get(Some("default"), "nginx-v4").unwrap().unwrap();
    slice.endpoints[0].conditions.as_mut().unwrap().ready = Some(false);
    f.server().update(&slice).unwrap();
    f.wait_for("the nginx change applied", |f| f.dump() != dump);
    let log = f.log();
    assert_eq!(log.matches("left out; everything valid is applied").count(), 4, "{log}");
    assert!(!log.contains("configuration rejected"), "{log}");

    // Fixed: the left-out service appears, the problems go.
    f.server().delete::<k8s_openapi::api::core::v1::Service>(Some("tenant-b"), "broken").unwrap();
    let mut svc: k8s_openapi::api::core::v1::Service =
        f.server().get(Some("tenant-a"), "partial").unwrap().unwrap();
    svc.spec.as_mut().unwrap().external_ips = None;
    f.server().update(&svc).unwrap();
    f.wait_for("two problems left", |f| {
        get(&f.netns, METRICS.parse().unwrap(), "/status")
            .is_some_and(|(_, s)| s.contains("2 problems left out"))
    });
    let m = metric(&f, "xlb_config_problems{kind=\"Service\",reason=\"external_ip_not_allowed\"}");
    assert!(m.as_deref().is_some_and(|l| l.ends_with(" 0")), "{m:?}");
}

/// #12 item 6: the node answers kube-proxy's health check on :10256
/// (`/healthz` with lastUpdated/currentTime/nodeEligible, `/livez`), so a
/// cloud load balancer probing it keeps working without kube-proxy.
#[test]
fn node_health_answers_on_10256_like_kube_proxy() {
    let mut f = Fixture::new("hz");
    f.server().apply_yaml(examples::NGINX).unwrap();
    f.start_agent();
    f.wait_for("nginx programmed", |f| f.dump().contains("service default/nginx:http "));
    let addr: SocketAddr = "127.0.0.1:10256".parse().unwrap();
    f.wait_for("/healthz 200", |f| get(&f.netns, addr, "/healthz").is_some_and(|(c, _)| c == 200));
    let (_, body) = get(&f.netns, addr, "/healthz").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["nodeEligible"], true, "{body}");
    let updated = v["lastUpdated"].as_str().unwrap();
    assert!(!updated.starts_with("1970"), "updated after the first sync: {body}");
    assert!(v["currentTime"].as_str().unwrap() >= updated, "{body}");
    let (code, body) = get(&f.netns, addr, "/livez").unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(get(&f.netns, addr, "/other").unwrap().0, 404);
}

/// Node `lb` with a pod range: this node's pod network.
const LB_POD_RANGE: &str = "apiVersion: v1
kind: Node
metadata: {name: lb}
spec: {podCIDRs: [10.244.9.0/24]}
status:
  addresses: [{type: InternalIP, address: 10.0.0.2}]
";

/// Cold start (#14 item 5): on a fresh node the agent applies the first
/// listing while the verifier runs; the pod network waits for the
/// programs, so no CNI configuration exists (no pod is set up) before the
/// pod programs xlb-cni attaches are pinned.
#[test]
fn pod_network_of_a_fresh_node_waits_for_its_programs() {
    let mut f = Fixture::new("pn");
    f.server().apply_yaml(examples::NGINX).unwrap();
    f.server().apply_yaml(LB_POD_RANGE).unwrap();
    let conf = f.dir.join("net.d");
    let d = |p: &str| f.dir.join(p).display().to_string();
    f.extra_args = vec![
        "--pod-network".into(),
        "--cni-conf-dir".into(),
        conf.display().to_string(),
        "--cni-state-dir".into(),
        d("state"),
        "--ipam-dir".into(),
        d("ipam"),
    ];
    f.start_agent();
    f.wait_for("the CNI configuration", |_| {
        std::fs::read_dir(&conf).is_ok_and(|mut d| d.next().is_some())
    });
    let log = f.log();
    let at =
        |what: &str| log.find(what).unwrap_or_else(|| panic!("no {what:?} in the log:\n{log}"));
    assert!(at("programs pinned for xlb-cni") < at("CNI configuration installed"), "{log}");
    assert!(at("applied how=\"full\"") < at("CNI configuration installed"), "{log}");
    let dump = DatapathView::open(f.pin_dir.path())
        .and_then(|v| v.services())
        .map(|s| render(&s))
        .unwrap_or_else(|e| panic!("reading the maps: {e}"));
    assert!(
        dump.contains("service default/nginx:http id=0 maglev=457 encap=geneve backends=2/2"),
        "{dump}"
    );
}
