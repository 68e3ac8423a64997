//! The agent's Prometheus endpoint: `/metrics` (OpenMetrics text,
//! prometheus-client), `/healthz` and `/readyz` on `--metrics-addr`.
//!
//! Two kinds of metrics:
//! - **control loop** ([`ControlMetrics`], [`control()`]): histograms and
//!   counters the daemon updates through a few hooks (apply, sync, event to
//!   datapath, rejected configurations, objects per kind, attach state,
//!   source health). Process-wide, so a hook is one line at its call site.
//! - **datapath** ([`collector::DatapathCollector`]): read from the pinned
//!   per-CPU maps *at scrape time* and summed over CPUs — the fast path does
//!   no extra work for metrics and userspace does nothing per packet. Map
//!   fill levels come from [`census`], a background count on its own
//!   interval (counting an LRU table is O(entries); a scrape never waits for it).
//!
//! Cardinality (bounded at 10k+ services; see README "Metrics"):
//! - per-service series (`xlb_service_*`): at most `--metrics-max-services`
//!   (default 500) services get their own `service` label. The set is chosen
//!   by traffic (most packets first) and is *sticky*: a service keeps its
//!   series while it exists, so counters never jump between series. Every
//!   other service is summed into `service="other"`, which is kept monotonic
//!   in userspace (deltas per service id since the last scrape).
//! - per-backend series (`xlb_backend_*`): off unless `--metrics-per-backend`;
//!   then only backends of services with their own series, at most
//!   `--metrics-max-backend-series` (default 2000), the rest left out
//!   (their traffic is in the service totals).
//! - reasons, maps, kinds, interfaces: fixed small sets.
pub mod census;
pub mod collector;
pub mod health;
pub mod server;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::Args;
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info},
    registry::Registry,
};
use xlb_control::{cluster::Cluster, source::kube::KubeStats, translate::ConfigError};

pub use health::Health;

/// `xlb run` flags of the metrics endpoint.
#[derive(Args, Debug, Clone)]
pub struct MetricsArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9465")]
    pub metrics_addr: SocketAddr,
    /// Serve no metrics endpoint.
    #[arg(long, conflicts_with = "metrics_addr")]
    pub no_metrics: bool,
    /// Services with their own `service` label; the rest are summed into
    /// service="other". Chosen by traffic, sticky while the service exists.
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub metrics_max_services: usize,
    /// Per-backend series (xlb_backend_*), for backends of services that
    /// have their own series.
    #[arg(long)]
    pub metrics_per_backend: bool,
    /// Most per-backend series with --metrics-per-backend.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub metrics_max_backend_series: usize,
    /// How often map fill levels are counted (an O(entries) walk of each map).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub metrics_census_interval: u64,
}

impl Default for MetricsArgs {
    fn default() -> Self {
        MetricsArgs {
            metrics_addr: "127.0.0.1:9465".parse().expect("valid address"),
            no_metrics: false,
            metrics_max_services: 500,
            metrics_per_backend: false,
            metrics_max_backend_series: 2000,
            metrics_census_interval: 30,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ProblemLabel {
    kind: &'static str,
    reason: &'static str,
}

/// One attached program, as the daemon attached it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub iface: String,
    /// "xdp", "tc_ingress", "tc_egress": also the prefix of its pinned link.
    pub hook: &'static str,
    pub mode: &'static str,
}

/// Control-loop metrics and health, updated by the daemon's hooks.
#[derive(Debug)]
pub struct ControlMetrics {
    apply_seconds: Family<ResultLabel, Histogram>,
    sync_seconds: Histogram,
    event_to_datapath_seconds: Histogram,
    rejected: Counter,
    problems: Family<ProblemLabel, Gauge>,
    /// Labels of `problems` ever set (set back to 0 when they go).
    problem_labels: Mutex<std::collections::BTreeSet<(&'static str, &'static str)>>,
    objects: Family<KindLabel, Gauge>,
    applied_services: Gauge,
    ct_insert_budget: Gauge,
    last_sync: Gauge<f64, AtomicU64>,
    /// The oldest source change not yet in the datapath.
    pending_since: Mutex<Option<Instant>>,
    attachments: Mutex<Vec<Attachment>>,
    kube: Arc<KubeStats>,
    pub health: Health,
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    // 100 µs .. ~52 s: a small apply is sub-millisecond, a 10k-service
    // initial sync takes seconds.
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 20)
}

impl ControlMetrics {
    fn new() -> Self {
        ControlMetrics {
            apply_seconds: Family::new_with_constructor(|| Histogram::new(seconds_buckets())),
            sync_seconds: Histogram::new(seconds_buckets()),
            event_to_datapath_seconds: Histogram::new(seconds_buckets()),
            rejected: Counter::default(),
            problems: Family::default(),
            problem_labels: Mutex::default(),
            objects: Family::default(),
            applied_services: Gauge::default(),
            ct_insert_budget: Gauge::default(),
            last_sync: Gauge::default(),
            pending_since: Mutex::new(None),
            attachments: Mutex::new(Vec::new()),
            kube: Arc::default(),
            health: Health::default(),
        }
    }

    /// The source produced a new snapshot (a change to program). The
    /// earliest unapplied one starts the event-to-datapath clock.
    pub fn source_event(&self) {
        let mut p = self.pending_since.lock().expect("not poisoned");
        p.get_or_insert_with(Instant::now);
    }

    /// The source snapshot's objects, per registered kind.
    pub fn cluster_seen(&self, c: &Cluster) {
        for (kind, n) in c.counts() {
            self.objects.get_or_create(&KindLabel { kind }).set(n as i64);
        }
    }

    /// A snapshot failed translation (the running state stays).
    pub fn rejected(&self) {
        self.rejected.inc();
    }

    /// The configuration's problems now (`rejected`: the configuration was
    /// refused whole; else they were left out): the per-kind-and-reason
    /// gauge and the status page.
    pub fn problems(&self, problems: &[ConfigError], rejected: bool) {
        let mut counts: BTreeMap<(&'static str, &'static str), i64> = BTreeMap::new();
        for p in problems {
            *counts.entry((p.object.kind, p.problem.reason())).or_default() += 1;
        }
        let mut labels = self.problem_labels.lock().expect("not poisoned");
        labels.extend(counts.keys().copied());
        for &(kind, reason) in labels.iter() {
            let n = counts.get(&(kind, reason)).copied().unwrap_or(0);
            self.problems.get_or_create(&ProblemLabel { kind, reason }).set(n);
        }
        self.health.set_problems(problems, rejected);
    }

    /// One `Datapath::apply`: its wall time and outcome. A success makes
    /// the agent ready, stamps the last successful sync and closes the
    /// event-to-datapath interval.
    pub fn apply_done(&self, took: Duration, ok: bool, services: usize) {
        let result = if ok { "ok" } else { "error" };
        self.apply_seconds.get_or_create(&ResultLabel { result }).observe(took.as_secs_f64());
        if ok {
            self.applied_services.set(services as i64);
            self.synced();
        }
    }

    /// The connection table's insert budget the datapath was loaded with
    /// (entries per second per CPU; 0: no limit).
    pub fn set_ct_insert_budget(&self, per_cpu_per_sec: u32) {
        self.ct_insert_budget.set(i64::from(per_cpu_per_sec));
    }

    /// The datapath holds the source's state (applied, or nothing to change).
    pub fn synced(&self) {
        self.last_sync.set(unix_now());
        self.health.applied();
        if let Some(t0) = self.pending_since.lock().expect("not poisoned").take() {
            self.event_to_datapath_seconds.observe(t0.elapsed().as_secs_f64());
        }
    }

    /// One reconcile pass (translate, diff, apply) took `took`.
    pub fn sync_done(&self, took: Duration) {
        self.sync_seconds.observe(took.as_secs_f64());
    }

    /// A program was attached (the scrape checks its pinned link is still there).
    pub fn attached(&self, iface: &str, hook: &'static str, mode: &'static str) {
        let a = Attachment { iface: iface.into(), hook, mode };
        let mut v = self.attachments.lock().expect("not poisoned");
        if !v.contains(&a) {
            v.push(a);
        }
    }

    pub fn attachments(&self) -> Vec<Attachment> {
        self.attachments.lock().expect("not poisoned").clone()
    }

    /// The Kubernetes source's counters (given to the watcher).
    pub fn kube_stats(&self) -> Arc<KubeStats> {
        self.kube.clone()
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "xlb_apply_duration_seconds",
            "Wall time of one datapath apply (diff written to the maps), by result",
            self.apply_seconds.clone(),
        );
        r.register(
            "xlb_sync_duration_seconds",
            "Wall time of one reconcile pass: translate the source snapshot, diff, apply",
            self.sync_seconds.clone(),
        );
        r.register(
            "xlb_event_to_datapath_seconds",
            "From the source handing over a change to the datapath holding it",
            self.event_to_datapath_seconds.clone(),
        );
        r.register(
            "xlb_config_rejected",
            "Source snapshots rejected by translation (the running state stayed)",
            self.rejected.clone(),
        );
        r.register(
            "xlb_config_problems",
            "Problems of the configuration by object kind and reason: left out \
             (Kubernetes API) or the reason it was rejected (manifest files); \
             `xlb status` lists them",
            self.problems.clone(),
        );
        r.register(
            "xlb_objects",
            "Kubernetes objects in the last source snapshot, by kind",
            self.objects.clone(),
        );
        r.register(
            "xlb_ct_insert_budget",
            "New connection-table entries allowed per second per CPU (--ct-insert-rate; \
             0: no limit); new flows beyond it are served by Maglev alone",
            self.ct_insert_budget.clone(),
        );
        r.register(
            "xlb_applied_services",
            "Datapath services in the last applied state",
            self.applied_services.clone(),
        );
        r.register(
            "xlb_last_successful_sync_timestamp_seconds",
            "Unix time the datapath last matched the source",
            self.last_sync.clone(),
        );
        r.register(
            "xlb_build",
            "Build of the running agent",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
    }
}

/// Records the XDP and tc attachments of `iface` (xlb_attached).
pub fn record_attach(iface: &str, mode: Option<lb::loader::XdpMode>) {
    let c = control();
    match mode {
        Some(lb::loader::XdpMode::Native) => c.attached(iface, "xdp", "native"),
        Some(lb::loader::XdpMode::Generic) => c.attached(iface, "xdp", "generic"),
        None => {}
    }
    c.attached(iface, "tc_ingress", "tcx");
    c.attached(iface, "tc_egress", "tcx");
}

static CONTROL: OnceLock<ControlMetrics> = OnceLock::new();

/// The process's control-loop metrics (created on first use; hooks work
/// whether or not the endpoint is served).
pub fn control() -> &'static ControlMetrics {
    CONTROL.get_or_init(ControlMetrics::new)
}

pub(crate) fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The running endpoint: its HTTP and census threads stop when this drops.
#[derive(Debug)]
pub struct MetricsHandle {
    server: Option<server::Server>,
    census: Option<census::CensusThread>,
}

impl Drop for MetricsHandle {
    fn drop(&mut self) {
        self.server.take();
        self.census.take();
    }
}

/// Builds the registry (control metrics + the datapath collector reading the
/// maps pinned under `pin_dir`) and serves it. None with `--no-metrics`.
pub fn start(args: &MetricsArgs, pin_dir: &Path) -> anyhow::Result<Option<MetricsHandle>> {
    if args.no_metrics {
        return Ok(None);
    }
    let census = census::CensusThread::start(
        pin_dir.to_path_buf(),
        Duration::from_secs(args.metrics_census_interval.max(1)),
    );
    let mut registry = Registry::default();
    control().register(&mut registry);
    crate::flows::register(&mut registry);
    registry.register_collector(Box::new(collector::DatapathCollector::new(
        collector::Options {
            pin_dir: PathBuf::from(pin_dir),
            max_services: args.metrics_max_services,
            per_backend: args.metrics_per_backend,
            max_backend_series: args.metrics_max_backend_series,
        },
        census.results(),
        control(),
    )));
    let server = server::Server::start(args.metrics_addr, registry, control())?;
    Ok(Some(MetricsHandle { server: Some(server), census: Some(census) }))
}

/// The daemon's housekeeping task: heartbeat for /healthz, Kubernetes source
/// health for /readyz, and expiry of `xlb monitor` leases (so a killed
/// monitor does not leave event emission on). Runs every second until the
/// runtime stops.
pub async fn housekeeping(pin_dir: PathBuf) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut kube_errors = KubeErrorWindow::default();
    loop {
        tick.tick().await;
        let c = control();
        c.health.beat();
        kube_errors.update(&c.kube, &c.health);
        match lb::events::expire_lease(&pin_dir) {
            Ok(true) => tracing::info!("event listener lease expired: event emission off"),
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "checking the event listener lease"),
        }
    }
}

/// Kubernetes source health from its error counter: not ready while watch
/// errors keep coming (the API is unreachable or refusing), ready again
/// after [`KubeErrorWindow::QUIET`] without new errors.
#[derive(Default)]
struct KubeErrorWindow {
    last_total: u64,
    last_error_at: Option<Instant>,
}

impl KubeErrorWindow {
    const QUIET: Duration = Duration::from_secs(10);

    fn update(&mut self, kube: &KubeStats, health: &Health) {
        let total: u64 = kube.kinds().iter().map(|(_, k)| k.errors.load(Ordering::Relaxed)).sum();
        if total > self.last_total {
            self.last_total = total;
            self.last_error_at = Some(Instant::now());
            health.source_failed(format!(
                "Kubernetes API watch errors ({total} so far); retrying with backoff"
            ));
        } else if self.last_error_at.is_some_and(|t| t.elapsed() > Self::QUIET) {
            self.last_error_at = None;
            health.source_ok();
        }
    }
}
