//! The deploy/ artefacts against a real agent (privileged tier: root, BPF,
//! netns, Debian's `prometheus`/`promtool`; fails without them):
//! - deploy/grafana/xlb-dashboard.json is valid Grafana JSON (panels with
//!   unique ids, grid positions, Prometheus targets), and every metric name
//!   its queries reference is one a running `xlb run` actually exports (the
//!   name list is scraped from its /metrics, with every optional family on);
//! - every query, with the dashboard variables filled in, is accepted and
//!   evaluated by a real Prometheus scraping that agent;
//! - deploy/prometheus/prometheus.yml passes `promtool check config`, the
//!   Kubernetes variant scrapes the DaemonSets' pods on the metrics port,
//!   and the rendered install (deploy/kubernetes/xlb.yaml) probes /healthz
//!   and /readyz there.
use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use testkit::{netns::NamedNetns, pins::PinDir};

const XLB: &str = env!("CARGO_BIN_EXE_xlb");
const WAIT: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A network namespace with a veth pair, an agent and Prometheus in it;
/// everything removed on drop (also on panic).
struct Node {
    netns: NamedNetns,
    pin_dir: PinDir,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) && c.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Node {
    fn new() -> Node {
        testkit::require_root("this test (BPF, netns)");
        let n = Node {
            netns: NamedNetns::create("dash").unwrap_or_else(|e| panic!("{e}")),
            pin_dir: PinDir::new("dash"),
            dir: std::env::temp_dir().join(format!("xlbdash-{}", std::process::id())),
            children: Vec::new(),
        };
        std::fs::create_dir_all(n.dir.join("tsdb")).unwrap();
        n.netns.veth("xv0", "xv1").unwrap_or_else(|e| panic!("{e}"));
        n
    }

    fn spawn(&mut self, args: &[&str], log: &str) {
        let log = std::fs::File::create(self.dir.join(log)).unwrap();
        let child = self
            .netns
            .nsenter(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("nsenter");
        self.children.push(child);
    }

    /// GET in the namespace (through nsenter + this test binary's helper is
    /// overkill: a thread in the namespace does it).
    fn get(&self, addr: &'static str, path: String) -> Option<(u16, String)> {
        self.netns
            .run_in(|| {
                let mut s =
                    TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))
                        .ok()?;
                s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
                let mut raw = String::new();
                s.read_to_string(&mut raw).ok()?;
                let (head, body) = raw.split_once("\r\n\r\n")?;
                let code = head.split_whitespace().nth(1)?.parse().ok()?;
                let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
                    let mut out = String::new();
                    let mut rest = body;
                    while let Some((len, r)) = rest.split_once("\r\n") {
                        let n = usize::from_str_radix(len.trim(), 16).ok()?;
                        if n == 0 || r.len() < n {
                            break;
                        }
                        out.push_str(&r[..n]);
                        rest = r[n..].trim_start_matches("\r\n");
                    }
                    out
                } else {
                    body.to_string()
                };
                Some((code, body))
            })
            .ok()?
    }

    fn wait_for(&self, what: &str, f: impl Fn() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(
                t0.elapsed() < WAIT,
                "{what}: not within {WAIT:?}; logs:\n{}\n{}",
                std::fs::read_to_string(self.dir.join("xlb.log")).unwrap_or_default(),
                std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Metric sample names (before labels) of an OpenMetrics text.
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// Identifiers in a PromQL expression that name xlb metrics.
fn referenced_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut cur = String::new();
    let mut in_str = false;
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_str = !in_str;
        }
        if !in_str && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            cur.push(c);
        } else {
            if cur.starts_with("xlb_") {
                out.insert(cur.clone());
            }
            cur.clear();
        }
    }
    out
}

/// Every PromQL expression of the dashboard: panel targets and variable queries.
fn expressions(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push((
                p["title"].as_str().unwrap().to_string(),
                t["expr"].as_str().unwrap().into(),
            ));
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push((format!("variable {}", v["name"]), q.to_string()));
        }
    }
    out
}

#[test]
fn dashboard_queries_reference_exported_metrics_and_evaluate() {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/xlb-dashboard.json")).unwrap(),
    )
    .expect("deploy/grafana/xlb-dashboard.json is not valid JSON");
    assert!(dash["title"].is_string() && dash["uid"].is_string() && dash["schemaVersion"].is_u64());
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "duplicate panel id {}", p["id"]);
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].is_u64(), "panel {}: gridPos.{k}", p["title"]);
        }
        assert!(!p["targets"].as_array().unwrap().is_empty(), "panel {} has no query", p["title"]);
        assert_eq!(p["datasource"]["type"], "prometheus", "panel {}", p["title"]);
    }
    let titles: Vec<&str> = panels.iter().map(|p| p["title"].as_str().unwrap()).collect();
    for want in [
        "Traffic per service",
        "Drops by reason",
        "Connection table fill",
        "Apply latency",
        "East-west: socket translations",
        "Pod network (CNI)",
        "NetworkPolicy: drops",
    ] {
        assert!(titles.iter().any(|t| t.starts_with(want)), "no panel {want:?} in {titles:?}");
    }

    // A real agent with every optional family on.
    let mut node = Node::new();
    let config = repo().join("control/examples/nginx.yaml");
    let pin = node.pin_dir.path().to_path_buf();
    node.spawn(
        &[
            XLB,
            "run",
            "--iface",
            "xv0",
            "--node-name",
            "lb",
            "--small-maps",
            "--metrics-per-backend",
            "--metrics-census-interval",
            "1",
            "--config",
            config.to_str().unwrap(),
            "--pin-dir",
            pin.to_str().unwrap(),
        ],
        "xlb.log",
    );
    node.wait_for("agent ready", || {
        node.get("127.0.0.1:9465", "/readyz".into()).is_some_and(|(c, _)| c == 200)
    });
    // A hook's counter series appear once it has counted a packet: ARP
    // from the peer end reaches xv0's XDP program (the kernel's own IPv6
    // link-local chatter may have passed before the agent attached).
    node.netns.ip(&["addr", "add", "192.0.2.2/24", "dev", "xv1"]).unwrap_or_else(|e| panic!("{e}"));
    let _ = node.netns.exec("ping", &["-c", "2", "-i", "0.2", "-W", "1", "192.0.2.1"]);
    node.wait_for("map census in /metrics", || {
        node.get("127.0.0.1:9465", "/metrics".into()).is_some_and(|(_, b)| {
            b.contains("xlb_map_entries{")
                && b.contains("xlb_backend_packets_total{")
                && b.contains("xlb_passes_total{")
        })
    });
    let (_, text) = node.get("127.0.0.1:9465", "/metrics".into()).unwrap();
    let exported = exported_names(&text);
    let mut missing = Vec::new();
    for (panel, expr) in expressions(&dash) {
        for name in referenced_names(&expr) {
            if !exported.contains(&name) {
                missing.push(format!("{panel}: {name} (in {expr})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "dashboard names metrics xlb does not export:\n{}\nexported: {exported:?}",
        missing.join("\n")
    );

    // Every query evaluates on a real Prometheus scraping the agent.
    let cfg = node.dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: xlb\n    static_configs:\n      - targets: [\"127.0.0.1:9465\"]\n",
    )
    .unwrap();
    let tsdb = node.dir.join("tsdb");
    node.spawn(
        &[
            "prometheus",
            &format!("--config.file={}", cfg.display()),
            &format!("--storage.tsdb.path={}", tsdb.display()),
            "--web.listen-address=127.0.0.1:19091",
            "--log.level=warn",
        ],
        "prometheus.log",
    );
    let query = |q: &str| -> Value {
        let enc: String = q
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (code, body) = node
            .get("127.0.0.1:19091", format!("/api/v1/query?query={enc}"))
            .unwrap_or_else(|| panic!("no answer from prometheus for {q}"));
        assert_eq!(code, 200, "{q}: {body}");
        serde_json::from_str(&body).unwrap()
    };
    node.wait_for("prometheus scraped the agent", || {
        node.get("127.0.0.1:19091", "/-/ready".into()).is_some_and(|(c, _)| c == 200)
            && query("xlb_build_info")["data"]["result"].as_array().is_some_and(|r| !r.is_empty())
    });
    for (panel, expr) in expressions(&dash) {
        let q = expr
            .replace("$__rate_interval", "5s")
            .replace("$instance", ".*")
            .replace("$service", ".*");
        let q = if let Some(inner) = q.strip_prefix("label_values(") {
            // Grafana's label_values(metric, label): the metric must have data.
            inner.split(',').next().unwrap().to_string()
        } else {
            q
        };
        let v = query(&q);
        assert_eq!(v["status"], "success", "{panel}: {q}: {v}");
    }

    // The scrape config and the DaemonSet sketch.
    let promtool = Command::new("promtool")
        .args(["check", "config"])
        .arg(repo().join("deploy/prometheus/prometheus.yml"))
        .output()
        .expect("running promtool (apt-get install prometheus)");
    assert!(
        promtool.status.success(),
        "promtool check config: {}{}",
        String::from_utf8_lossy(&promtool.stdout),
        String::from_utf8_lossy(&promtool.stderr)
    );
    // The Kubernetes variant needs an SD-enabled Prometheus (not Debian's):
    // its structure is checked here instead.
    let k8s: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("deploy/prometheus/prometheus-kubernetes.yml"))
            .unwrap(),
    )
    .unwrap();
    let job = &k8s["scrape_configs"][0];
    assert_eq!(job["kubernetes_sd_configs"][0]["role"].as_str(), Some("pod"));
    assert!(job["relabel_configs"].as_sequence().unwrap().iter().any(|r| r["source_labels"][0]
        .as_str()
        == Some("__meta_kubernetes_pod_container_port_name")
        && r["regex"].as_str() == Some("metrics")
        && r["action"].as_str() == Some("keep")));
    // The agents of the rendered install (deploy/kubernetes/xlb.yaml) serve
    // that port, probed there (control/tests/deploy.rs checks the rest).
    let install = std::fs::read_to_string(repo().join("deploy/kubernetes/xlb.yaml")).unwrap();
    let mut agents = 0;
    for o in xlb_control::install::strict::parse(&install).unwrap_or_else(|e| panic!("{e}")) {
        let xlb_control::install::strict::Object::DaemonSet(ds) = o else { continue };
        let c = &ds.spec.unwrap().template.spec.unwrap().containers[0];
        let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|h| h.path.clone())
        };
        assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/healthz"));
        assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/readyz"));
        assert!(c.args.iter().flatten().any(|a| a == "--metrics-addr=[::]:9465"), "{:?}", c.args);
        agents += 1;
    }
    assert_eq!(agents, 2, "the node and frontend DaemonSets");
}
