//! The Kubernetes pipeline of `xlb run --kubeconfig`, in process, into real pinned maps:
//! API server double (real list/watch wire protocol) → kube-rs watchers
//! (`source::kube::run_with`) → incremental `Translator` → `Datapath::apply` for full
//! listings and `Datapath::apply_services` for changes, as the daemon's reconciler does.
//! What the maps hold is compared as the `xlb service list` text (`Datapath::dump`):
//! - golden scenarios: each valid tests/golden/NAME.yaml served by the double must give
//!   tests/golden/NAME.maps (`XLB_BLESS=1` rewrites them; review the diff);
//! - one endpoint change rewrites one service's entries and nothing else (ApplyStats and
//!   the dump of every other service);
//! - a relist after 410 Gone keeps every live service in the maps, removes what was
//!   deleted meanwhile (no delete event was ever seen) and writes nothing else;
//! - the periodic full diff (`Datapath::resync`) repairs entries deleted behind the
//!   agent's back, which an incremental or plain apply cannot see.
//!
//! Privileged tier: needs root and BPF; fails (never skips) without them.
use std::{
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use apiserver::ApiServer;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use lb::{
    datapath::{ApplyStats, Datapath},
    loader::{Dataplane, LoadOptions, MapSizes},
    maps::Maps,
};
use testkit::pins::PinDir;
use tokio::sync::mpsc;
use xlb_control::{
    cluster::Changes,
    examples,
    source::kube::{run_with, KubeOptions, WatchOptions},
    translate::{TranslateOptions, Translator},
};

const WAIT: Duration = Duration::from_secs(30);

/// A pin directory with the datapath loaded (not attached), and a kubeconfig file;
/// both removed on drop.
struct Fixture {
    pins: PinDir,
    kubeconfig: PathBuf,
    _dataplane: Dataplane,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

impl Fixture {
    fn new(tag: &str, server: &ApiServer) -> Fixture {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let id = format!("{tag}-{}-{n}", std::process::id());
        let pins = PinDir::new(&format!("kp-{tag}"));
        let kubeconfig = std::env::temp_dir().join(format!("xlb-kp-{id}.yaml"));
        server.write_kubeconfig(&kubeconfig).unwrap();
        let load = LoadOptions {
            pin_dir: pins.path().into(),
            sizes: MapSizes::small(),
            ..Default::default()
        };
        let dataplane =
            Dataplane::load(&load).expect("loading the datapath (root and BPF required)");
        Fixture { pins, kubeconfig, _dataplane: dataplane }
    }
}

/// The daemon's reconcile step, on a source's batches: full listings are diffed whole,
/// changes applied service by service.
struct Pipeline {
    rx: mpsc::Receiver<Changes>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    translator: Translator,
    datapath: Datapath,
    /// Every apply: (was it a full diff, what it wrote).
    applies: Vec<(bool, ApplyStats)>,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Pipeline {
    fn start(f: &Fixture, opts: TranslateOptions, watch: WatchOptions) -> Pipeline {
        let (tx, rx) = mpsc::channel(1);
        let kube = KubeOptions { kubeconfig: Some(f.kubeconfig.clone()) };
        let task = tokio::spawn(run_with(kube, watch, tx));
        Pipeline {
            rx,
            task,
            translator: Translator::new(opts),
            datapath: Datapath::open(f.pins.path()).expect("opening the pinned maps"),
            applies: Vec::new(),
        }
    }

    /// Takes one batch from the source and applies it.
    async fn step(&mut self) -> (bool, ApplyStats) {
        let changes = match tokio::time::timeout(WAIT, self.rx.recv()).await {
            Ok(Some(c)) => c,
            Ok(None) => panic!("the source stopped: {:?}", (&mut self.task).await),
            Err(_) => panic!("no batch within {WAIT:?}"),
        };
        let full = changes.any_full();
        self.translator.update(changes);
        if let Err(e) = self.translator.check() {
            panic!("configuration rejected: {e}");
        }
        let keys = self.translator.take_changed();
        let desired = self.translator.desired();
        let stats = if full {
            self.datapath.apply(&desired)
        } else {
            self.datapath
                .apply_services(&desired.node, keys.iter().map(|k| (k, desired.services.get(k))))
        }
        .expect("apply");
        self.applies.push((full, stats.clone()));
        (full, stats)
    }

    /// Steps until the maps' dump satisfies `want`; returns it.
    async fn until(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let dump = self.datapath.dump().unwrap();
            if want(&dump) {
                return dump;
            }
            assert!(Instant::now() < deadline, "never got {what}; maps:\n{dump}");
            self.step().await;
        }
    }
}

/// The lines of `dump` belonging to service `name` (its header and what follows).
fn service_block(dump: &str, name: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in dump.lines() {
        if let Some(rest) = line.strip_prefix("service ") {
            inside = rest.split_whitespace().next() == Some(name);
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `dump` without service `name`.
fn without_service(dump: &str, name: &str) -> String {
    let block = service_block(dump, name);
    dump.replace(&block, "")
}

fn golden_options(yaml: &str) -> TranslateOptions {
    let header = yaml.lines().find_map(|l| l.strip_prefix("# xlb-test:")).expect("header");
    let mut opts = TranslateOptions::new("");
    for word in header.split_whitespace() {
        let (k, v) = word.split_once('=').expect("KEY=VALUE");
        match k {
            "node" => opts.node_name = v.to_string(),
            "external-ip-cidr" => opts.external_ip_cidrs.push(v.parse().unwrap()),
            "proxy-name" => opts.proxy_name = v.to_string(),
            _ => panic!("unknown header key {k:?}"),
        }
    }
    opts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_scenarios_through_the_api_into_the_maps() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let bless = std::env::var_os("XLB_BLESS").is_some_and(|v| v == "1");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    let mut failures = Vec::new();
    let mut ran = Vec::new();
    for path in &cases {
        let case = path.file_stem().unwrap().to_string_lossy().into_owned();
        let yaml = std::fs::read_to_string(path).unwrap();
        let opts = golden_options(&yaml);
        // Scenarios the translation rejects are covered by the golden translation test.
        let Ok(cluster) = xlb_control::source::file::load_str(&yaml, &case) else { continue };
        if xlb_control::translate::translate(&cluster, &opts).is_err() {
            continue;
        }
        let server = ApiServer::start().await.unwrap();
        server.apply_yaml(&yaml).unwrap();
        let f = Fixture::new(&case, &server);
        let mut p = Pipeline::start(&f, opts, WatchOptions::default());
        let (full, _) = p.step().await;
        assert!(full, "{case}: the first batch is a full listing");
        let got = p.datapath.dump().unwrap();
        let out = path.with_extension("maps");
        ran.push(case.clone());
        if bless {
            std::fs::write(&out, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&out)
            .unwrap_or_else(|e| panic!("{}: {e} (XLB_BLESS=1 creates it)", out.display()));
        if got != want {
            failures.push(format!("--- {case}: want\n{want}+++ {case}: got\n{got}"));
        }
    }
    for must in [
        "affinity-annotations",
        "dual-stack",
        "etp-local",
        "proxy-name",
        "source-ranges",
        "terminating",
    ] {
        assert!(ran.iter().any(|c| c == must), "scenario {must} did not run: {ran:?}");
    }
    assert!(failures.is_empty(), "{} scenarios differ:\n{}", failures.len(), failures.join("\n"));
}

/// The nginx example plus default/web (LoadBalancer 10.100.0.9, two endpoints).
const WEB: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: LoadBalancer
  ipFamilies: [IPv4]
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30081}]
status:
  loadBalancer:
    ingress: [{ip: 10.100.0.9}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.244.1.12], nodeName: node1, conditions: {ready: true}}
- {addresses: [10.244.2.12], nodeName: node2, conditions: {ready: true}}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_endpoint_change_rewrites_one_service_and_nothing_else() {
    let server = ApiServer::start().await.unwrap();
    server.apply_yaml(examples::NGINX).unwrap();
    server.apply_yaml(WEB).unwrap();
    let f = Fixture::new("one", &server);
    let mut p = Pipeline::start(&f, TranslateOptions::new("lb"), WatchOptions::default());
    let (_, first) = p.step().await;
    assert_eq!(first.services_added, 3, "{first:?}");
    let before = p.datapath.dump().unwrap();

    // One endpoint of default/web starts terminating.
    let mut slice: EndpointSlice = server.get(Some("default"), "web-1").unwrap().unwrap();
    let c = slice.endpoints[1].conditions.as_mut().unwrap();
    (c.ready, c.serving, c.terminating) = (Some(false), Some(false), Some(true));
    server.update(&slice).unwrap();
    let (full, st) = p.step().await;
    assert!(!full, "a change is applied incrementally");
    let after = p.datapath.dump().unwrap();

    // Exactly: one backend entry (its terminating flag), one Maglev table, the service
    // value on each of its 2 packet frontends and 3 socket frontends (active count
    // 2 -> 1); nothing added or removed but the old table: M follows the active
    // count (lb::maglev::auto_size, 457 -> 199), so the table moved to another
    // size class's map.
    assert_eq!((st.services_added, st.services_removed, st.services_changed), (0, 0, 1), "{st:?}");
    assert_eq!(
        (st.backend_writes, st.table_writes, st.frontend_writes, st.deletes),
        (1, 1, 5, 1),
        "{st:?}"
    );
    assert_eq!(
        without_service(&before, "default/web:http"),
        without_service(&after, "default/web:http"),
        "every other service's entries are untouched"
    );
    let web = service_block(&after, "default/web:http");
    assert!(web.contains("backends=1/2"), "{web}");
    assert!(web.contains("10.244.2.12:8080 id=") && web.contains("terminating slots=0"), "{web}");

    // The endpoint goes away: its entries are freed, still nothing else moves.
    slice.endpoints.truncate(1);
    slice.metadata.resource_version = None;
    server.update(&slice).unwrap();
    let (_, st) = p.step().await;
    // Its array word, its hash entry, its slot.
    assert_eq!((st.services_changed, st.backend_writes, st.deletes), (1, 0, 3), "{st:?}");
    let gone = p.datapath.dump().unwrap();
    assert_eq!(
        without_service(&before, "default/web:http"),
        without_service(&gone, "default/web:http")
    );
    assert!(!gone.contains("10.244.2.12"), "{gone}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relist_after_410_keeps_live_state_and_removes_only_what_went() {
    let server = ApiServer::start().await.unwrap();
    server.apply_yaml(examples::NGINX).unwrap();
    server.apply_yaml(WEB).unwrap();
    let f = Fixture::new("relist", &server);
    let watch = WatchOptions { page_size: Some(1), ..Default::default() };
    let mut p = Pipeline::start(&f, TranslateOptions::new("lb"), watch);
    p.step().await;
    let before = p.datapath.dump().unwrap();
    assert!(before.contains("service default/web:http"), "{before}");

    // While the API is down: default/web deleted, the history compacted. The watchers
    // see no DELETED event; they get 410 Gone and relist.
    server.pause().await;
    server.delete::<k8s_openapi::api::core::v1::Service>(Some("default"), "web").unwrap();
    server.delete::<EndpointSlice>(Some("default"), "web-1").unwrap();
    server.compact();
    server.resume().await.unwrap();

    let after = p.until("default/web removed", |d| !d.contains("default/web")).await;
    assert_eq!(
        after,
        without_service(&before, "default/web:http"),
        "live services kept as they were"
    );
    let mut removed = 0;
    for (full, st) in &p.applies[1..] {
        assert!(*full, "a relist is applied as a full diff: {st:?}");
        // Only default/web may change (its slice can be relisted before the Service).
        assert!(st.services_added == 0 && st.services_changed <= 1, "{st:?}");
        removed += st.services_removed;
    }
    assert_eq!(removed, 1, "only the deleted service removed: {:?}", p.applies);
    assert!(server.counts().gone >= 1, "a 410 was served: {:?}", server.counts());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_resync_repairs_entries_deleted_behind_the_agents_back() {
    let server = ApiServer::start().await.unwrap();
    server.apply_yaml(examples::NGINX).unwrap();
    server.apply_yaml(WEB).unwrap();
    let f = Fixture::new("resync", &server);
    let mut p = Pipeline::start(&f, TranslateOptions::new("lb"), WatchOptions::default());
    p.step().await;
    let good = p.datapath.dump().unwrap();

    // Someone deletes web's Maglev table and one of its frontends by hand.
    let mut maps = Maps::open(f.pins.path()).unwrap();
    let web_id =
        p.datapath.list().unwrap().iter().find(|s| s.name == "default/web:http").unwrap().id;
    for class in &maps.maglev_classes {
        class.delete(&web_id.to_ne_bytes()).unwrap();
    }
    let fe = maps
        .frontends
        .keys()
        .map(|k| k.unwrap())
        .find(|k| maps.frontends.get(k, 0).unwrap().id == web_id)
        .unwrap();
    maps.frontends.remove(&fe).unwrap();
    let broken = p.datapath.dump().unwrap();
    assert_ne!(broken, good);

    // A plain diff compares with what the agent believes it wrote: nothing to do.
    let desired = p.translator.desired().into_owned();
    let st = p.datapath.apply(&desired).unwrap();
    assert_eq!(st.writes(), 0, "{st:?}");
    // The periodic full diff re-reads the maps and puts back exactly what is missing.
    let st = p.datapath.resync(&desired).unwrap();
    assert_eq!((st.table_writes, st.frontend_writes, st.deletes), (1, 1, 0), "{st:?}");
    assert_eq!(p.datapath.dump().unwrap(), good);
    let st = p.datapath.resync(&desired).unwrap();
    assert_eq!(st.writes(), 0, "a second resync finds nothing: {st:?}");
}
