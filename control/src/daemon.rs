//! `xlb run`: the node agent. Loads and attaches the datapath (lb::loader),
//! opens its applied state (lb::datapath, restored from the pinned maps),
//! then reconciles: the [`Changes`] a source sends (manifest files: all at
//! once; the Kubernetes API: what changed, coalesced) go to the incremental
//! [`Translator`]; if the configuration is valid, only the datapath services
//! they touched are applied (a full diff after a full listing, a failed
//! apply, and every `--full-resync-interval`, maps re-read); an invalid one
//! is logged with all its errors and the running state stays. Nothing is
//! written before the source has listed every kind once. With the API
//! unreachable the pinned state keeps serving and /readyz says so. Also
//! serves the healthCheckNodePort of externalTrafficPolicy: Local services.
use std::{
    collections::{BTreeSet, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use clap::{Args, ValueEnum};
use lb::{
    datapath::{ApplyStats, Datapath},
    loader::{Dataplane, LoadOptions, MapSizes, XdpMode, DEFAULT_PIN_DIR},
    report::Chain,
};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::{debug, error, info, info_span, warn};
use xlb_control::{
    cluster::Changes,
    healthcheck::{HealthServer, ProxyFreshness},
    render,
    source::{self, file::Stamp},
    translate::{ConfigError, ConfigErrors, TranslateOptions, Translator},
};

use crate::TranslateArgs;

/// How often the manifests are checked for changes.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How soon a failed apply is retried.
const RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// Longest wait between two attempts to reach an unusable Kubernetes API.
const MAX_SOURCE_BACKOFF: Duration = Duration::from_secs(30);
/// Incremental applies touching more services than this are logged at info.
const LOG_APPLY_SERVICES: usize = 50;

/// "0", "250ms", "5s", "5m", "1h": a duration flag.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected NUMBER[ms|s|m|h]"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    })
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Interface to attach the XDP and tc programs to; repeatable.
    #[arg(long = "iface", value_name = "IF", required = true)]
    ifaces: Vec<String>,
    /// Manifest file or directory (re-read when it changes and on SIGHUP).
    #[arg(long, value_name = "FILE|DIR", required_unless_present_any = ["kubeconfig", "kube"])]
    config: Option<PathBuf>,
    /// Watch the Kubernetes API with this kubeconfig instead of reading files.
    #[arg(long, conflicts_with = "config")]
    kubeconfig: Option<PathBuf>,
    /// Watch the Kubernetes API with the in-cluster configuration.
    #[arg(long, conflicts_with = "config")]
    kube: bool,
    #[command(flatten)]
    translate: TranslateArgs,
    /// bpffs directory for the pinned maps and links.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    #[arg(long, value_enum, default_value_t = XdpModeArg::Native)]
    xdp_mode: XdpModeArg,
    /// Small maps (labs and tests): little memory, quick to create.
    #[arg(long)]
    small_maps: bool,
    /// Detach the programs on exit (uninstalling xlb, or handing the node
    /// to another datapath). Without it (the default) they stay attached
    /// with their maps pinned and keep serving while no agent runs: a
    /// restart or upgrade (or a crash) is hitless, the next agent replaces
    /// them atomically through their pinned links.
    #[arg(long)]
    detach_on_exit: bool,
    #[command(flatten)]
    metrics: crate::metrics::MetricsArgs,
    /// Size of the event ring buffer (xlb monitor), bytes: a power of two,
    /// at least a page.
    #[arg(long, value_name = "BYTES", default_value_t = crate::monitor::DEFAULT_RINGBUF_BYTES)]
    events_ringbuf_bytes: u32,
    /// Kubernetes source: least time between two applies; changes arriving
    /// meanwhile are coalesced into the next ("0": apply each at once; bursts
    /// still coalesce while an apply runs).
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_duration)]
    min_interval: Duration,
    /// How often the maps are re-read and diffed whole against the source,
    /// repairing whatever a missed event or a hand edit left behind ("0": never).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    full_resync_interval: Duration,
    /// Address the healthCheckNodePort responders listen on (default: every
    /// address of the node).
    #[arg(long, value_name = "ADDR", default_value = "::")]
    health_check_addr: IpAddr,
    /// Where the node's kube-proxy-compatible health endpoint listens
    /// (`/healthz`, `/livez`: what cloud load balancers probe). A port
    /// already taken (kube-proxy still running) is logged and skipped.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:10256")]
    healthz_addr: std::net::SocketAddr,
    /// Serve no node health endpoint.
    #[arg(long)]
    no_healthz: bool,
    /// Replies XDP may send per second per CPU: rejects of services without
    /// endpoints and ICMP too big answers ("0": none, such packets are dropped).
    #[arg(long, value_name = "N", default_value_t = lb::loader::DEFAULT_REPLY_RATE)]
    reply_rate: u32,
    /// Replies XDP may send at once before --reply-rate applies.
    #[arg(long, value_name = "N", default_value_t = lb::loader::DEFAULT_REPLY_BURST)]
    reply_burst: u32,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum XdpModeArg {
    /// In the driver: the fast path.
    Native,
    /// In the kernel stack (skb mode): works on any interface, slow.
    Generic,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let opts = args.translate.options();

    // With files, the whole configuration is read and checked before the
    // datapath is touched: a typo never gets as far as the kernel.
    let mut first = None;
    if let Some(path) = &args.config {
        let stamp = source::file::stamp(path)?;
        let cluster = source::file::load_path(path)?;
        crate::metrics::control().cluster_seen(&cluster);
        let mut translator = Translator::new(opts.clone());
        translator.update(Changes::full(cluster));
        if let Err(e) = translator.check() {
            eprint!("{}", render::errors(&e));
            return Ok(ExitCode::FAILURE);
        }
        first = Some((stamp, translator));
    }

    ensure_bpffs()?;
    let sizes = if args.small_maps { MapSizes::small() } else { MapSizes::default() };
    let sizes = MapSizes { events: args.events_ringbuf_bytes, ..sizes };
    let load = LoadOptions {
        pin_dir: args.pin_dir.clone(),
        sizes,
        events_enabled: true,
        reply_rate: args.reply_rate,
        reply_burst: args.reply_burst,
        features: None,
    };
    let mut dataplane = Dataplane::load(&load).context("loading the datapath")?;
    // Probed at load: each missing feature named with its fallback.
    for missing in dataplane.features().missing() {
        warn!(feature = missing.feature, since = missing.since, "{missing}");
    }
    let mode = match args.xdp_mode {
        XdpModeArg::Native => XdpMode::Native,
        XdpModeArg::Generic => {
            warn!(
                "XDP in generic (skb) mode: runs after the kernel allocated the packet, \
                 far slower than native; for testing or NICs without XDP support only"
            );
            XdpMode::Generic
        }
    };
    let result = serve(&args, &opts, first, &mut dataplane, mode);
    drop(dataplane);
    // On every exit after loading, errors included: a half-attached agent
    // must not stay behind.
    if args.detach_on_exit {
        Dataplane::detach_all(&args.pin_dir).context("detaching the programs")?;
        info!("programs detached (--detach-on-exit); maps stay pinned");
    } else {
        info!(
            "programs left attached and serving, maps pinned: the next agent takes over \
             without a gap (--detach-on-exit to remove them)"
        );
    }
    result.map(|()| ExitCode::SUCCESS)
}

/// The kernel settings the datapath needs on a port it is attached to:
/// forwarding (bpf_fib_lookup answers "forwarding disabled" without it, and
/// the kernel forwards what XDP hands it while a next hop resolves) and, for
/// IPv4, accept_local (those packets carry this node's address as their outer
/// source, which the kernel would otherwise drop as a martian).
fn datapath_sysctls(iface: &str) -> anyhow::Result<()> {
    for (path, want) in [
        (format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"), "1"),
        (format!("/proc/sys/net/ipv4/conf/{iface}/accept_local"), "1"),
        (format!("/proc/sys/net/ipv6/conf/{iface}/forwarding"), "1"),
    ] {
        let now = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        if now.trim() != want {
            std::fs::write(&path, want).with_context(|| format!("setting {path}"))?;
            info!(sysctl = %path, value = want, "set for the datapath");
        }
    }
    Ok(())
}

/// Attaches, restores the applied state and reconciles until a signal.
fn serve(
    args: &RunArgs,
    opts: &TranslateOptions,
    first: Option<(Stamp, Translator)>,
    dataplane: &mut Dataplane,
    mode: XdpMode,
) -> anyhow::Result<()> {
    for iface in &args.ifaces {
        datapath_sysctls(iface)?;
        dataplane.attach_xdp(iface, mode)?;
        dataplane.attach_tc(iface)?;
        info!(iface, ?mode, "attached XDP and tc");
        crate::metrics::record_attach(iface, mode);
    }
    let mut datapath = Datapath::open(&args.pin_dir).context("opening the datapath maps")?;
    info!(
        services = datapath.service_keys().count(),
        pin_dir = %args.pin_dir.display(),
        "restored the applied state"
    );
    let _metrics = crate::metrics::start(&args.metrics, &args.pin_dir)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.spawn(crate::metrics::housekeeping(args.pin_dir.clone()));
    runtime.block_on(reconcile_loop(args, opts, first, &mut datapath))
}

async fn reconcile_loop(
    args: &RunArgs,
    opts: &TranslateOptions,
    first: Option<(Stamp, Translator)>,
    datapath: &mut Datapath,
) -> anyhow::Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    // One batch may wait while an apply runs; later changes coalesce in the source.
    let (tx, mut rx) = mpsc::channel::<Changes>(1);

    let restored = datapath.service_keys().count();
    // From the API (any namespace user can create a bad object) the invalid
    // objects and parts are left out; manifest files stay all-or-nothing.
    let api_opts = TranslateOptions { leave_out_invalid: true, ..opts.clone() };
    let mut reconciler = Reconciler::new(Translator::new(api_opts), args.health_check_addr);
    let _node_health = (!args.no_healthz)
        .then(|| {
            match xlb_control::healthcheck::serve_node_health(
                args.healthz_addr,
                reconciler.fresh.clone(),
            ) {
                Ok(task) => {
                    info!(addr = %args.healthz_addr, "serving the node health check (/healthz, /livez)");
                    Some(AbortOnDrop(task))
                }
                Err(e) => {
                    warn!(addr = %args.healthz_addr, error = %Chain(&e),
                        "cannot serve the node health check (kube-proxy still running?)");
                    None
                }
            }
        })
        .flatten();
    let source = match (&args.config, first) {
        (Some(path), Some((stamp, translator))) => {
            reconciler.translator = translator;
            reconciler.full_due = true;
            reconciler.synced = true;
            reconciler.sync(datapath, "file");
            tokio::spawn(watch_files(path.clone(), stamp, tx))
        }
        _ => {
            let kube = source::kube::KubeOptions { kubeconfig: args.kubeconfig.clone() };
            let watch = source::kube::WatchOptions {
                stats: crate::metrics::control().kube_stats(),
                min_interval: args.min_interval,
                ..Default::default()
            };
            tokio::spawn(kube_source(kube, watch, tx, restored))
        }
    };
    let kind = if args.config.is_some() { "file" } else { "kube" };
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    let resync_every =
        if args.full_resync_interval.is_zero() { Duration::MAX } else { args.full_resync_interval };
    let mut resync = tokio::time::interval_at(
        tokio::time::Instant::now() + resync_every.min(Duration::from_secs(86400 * 365)),
        resync_every.min(Duration::from_secs(86400 * 365)),
    );

    let outcome = loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(changes) => {
                    let t0 = std::time::Instant::now();
                    crate::metrics::control().source_event();
                    reconciler.fresh.queued();
                    if !reconciler.synced {
                        // The source listed every kind: the API is back (or was never gone).
                        crate::metrics::control().health.source_ok();
                    }
                    reconciler.reconcile(datapath, changes, kind);
                    crate::metrics::control().sync_done(t0.elapsed());
                }
                None => break Ok(()), // the source ended; its result is below
            },
            _ = retry.tick(), if reconciler.full_due && reconciler.synced
                && reconciler.translator.is_valid() => {
                reconciler.sync(datapath, "retry");
            }
            _ = resync.tick(), if reconciler.synced && !args.full_resync_interval.is_zero() => {
                reconciler.resync(datapath);
            }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break Ok(()) }
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break Ok(()) }
        }
    };
    if source.is_finished() {
        match source.await {
            Ok(Ok(())) => Err(anyhow::anyhow!("the {kind} source stopped")),
            Ok(Err(e)) => Err(e.context(format!("the {kind} source failed"))),
            Err(e) => Err(anyhow::anyhow!("the {kind} source panicked: {e}")),
        }
    } else {
        source.abort();
        outcome
    }
}

/// The Kubernetes source, restarted with backoff whenever it fails (the API
/// unreachable at start, a watcher gone): meanwhile the datapath keeps what
/// it holds and /readyz says why the agent is not ready. Every restart lists
/// everything again, so the reconciler diffs the whole state.
async fn kube_source(
    kube: source::kube::KubeOptions,
    watch: source::kube::WatchOptions,
    tx: mpsc::Sender<Changes>,
    restored: usize,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_secs(1);
    loop {
        match source::kube::run_with(kube.clone(), watch.clone(), tx.clone()).await {
            Ok(()) => return Ok(()), // the reconciler is gone: shutting down
            Err(e) if tx.is_closed() => return Err(e),
            Err(e) => {
                let reason = format!(
                    "{e:#}; serving the state the maps held at start ({restored} services) \
                     and what was applied since"
                );
                warn!(error = %reason, retry_in = ?backoff, "Kubernetes source failed");
                crate::metrics::control().health.source_failed(reason);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_SOURCE_BACKOFF);
            }
        }
    }
}

/// Translates incrementally and applies what changed; remembers what is due.
struct Reconciler {
    generation: u64,
    translator: Translator,
    /// The source has listed every kind once: writes may start.
    synced: bool,
    /// The next apply diffs everything (after a full listing or a failed apply).
    full_due: bool,
    /// The errors last logged, so a configuration that stays invalid is
    /// logged once, not on every change.
    logged_errors: Option<ConfigErrors>,
    /// Problems left out (Kubernetes source) already logged: each is logged
    /// once, when it appears.
    left_out: HashSet<ConfigError>,
    /// Tunnel next hops kept resolved for XDP.
    neighbours: lb::neigh::Neighbours,
    /// The tunnel endpoints last handed to `neighbours`, and the datapath's
    /// tunnel generation then.
    tunnels: BTreeSet<IpAddr>,
    tunnel_gen: Option<u64>,
    health: HealthServer,
    /// What the node health endpoint reports.
    fresh: Arc<ProxyFreshness>,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Reconciler {
    fn new(translator: Translator, health_addr: IpAddr) -> Self {
        Reconciler {
            generation: 0,
            translator,
            synced: false,
            full_due: true,
            logged_errors: None,
            left_out: HashSet::new(),
            neighbours: lb::neigh::Neighbours::new(),
            tunnels: BTreeSet::new(),
            tunnel_gen: None,
            health: HealthServer::new(health_addr),
            fresh: Arc::default(),
        }
    }

    fn reconcile(&mut self, datapath: &mut Datapath, changes: Changes, source: &str) {
        // A full listing may hide deletions: diff everything once. It is
        // also a reload (a file edit, SIGHUP, a relist): a configuration
        // that is still invalid is reported again.
        if changes.any_full() {
            self.full_due = true;
            self.logged_errors = None;
        }
        self.synced |= changes.all_full();
        self.translator.update(changes);
        if self.synced {
            self.sync(datapath, source);
        }
    }

    /// Applies what changed since the last apply, if the configuration is valid.
    fn sync(&mut self, datapath: &mut Datapath, source: &str) {
        self.generation += 1;
        let _span = info_span!("reconcile", generation = self.generation, source).entered();
        if let Err(errors) = self.translator.check() {
            // The datapath keeps serving the last valid state; health checks
            // keep answering for it (a bad object must not drain every node).
            crate::metrics::control().rejected();
            crate::metrics::control().problems(&errors.0, true);
            if self.logged_errors.as_ref() != Some(&errors) {
                error!(
                    count = errors.0.len(),
                    "new configuration rejected, the running state stays:\n{}",
                    render::errors(&errors).trim_end()
                );
                self.logged_errors = Some(errors);
            }
            // Nothing more will be applied until the source changes: a bad
            // configuration must not make the node look stale.
            self.fresh.updated();
            return;
        }
        self.logged_errors = None;
        self.report_left_out();
        let full = self.full_due;
        let t0 = std::time::Instant::now();
        let keys = self.translator.take_changed();
        let desired = self.translator.desired();
        let result = if full {
            datapath.apply(&desired)
        } else {
            let services: Vec<_> = keys.iter().map(|k| (k, self.translator.service(k))).collect();
            datapath.apply_services(&desired.node, services.iter().map(|(k, s)| (*k, s.as_deref())))
        };
        crate::metrics::control().apply_done(t0.elapsed(), result.is_ok(), desired.services.len());
        match result {
            Ok(stats) => {
                self.full_due = false;
                self.applied(datapath, &stats, if full { "full" } else { "incremental" });
            }
            Err(e) => {
                error!(error = %Chain(&e), "apply failed; a full diff follows in {RETRY_INTERVAL:?}");
                self.full_due = true;
                self.health.set_proxy_healthy(false);
            }
        }
    }

    /// Logs each problem left out once, when it appears, and when problems
    /// are fixed; updates the metric and the status page.
    fn report_left_out(&mut self) {
        let problems = self.translator.problems();
        if problems.is_empty() && self.left_out.is_empty() {
            crate::metrics::control().problems(&[], false);
            return;
        }
        let now: HashSet<ConfigError> = problems.iter().cloned().collect();
        for p in problems.iter().filter(|p| !self.left_out.contains(p)) {
            warn!(problem = %p, "left out; everything valid is applied");
        }
        let fixed = self.left_out.iter().filter(|p| !now.contains(p)).count();
        if fixed > 0 {
            info!(fixed, left_out = now.len(), "configuration problems resolved");
        }
        crate::metrics::control().problems(&problems, false);
        self.left_out = now;
    }

    /// The periodic full diff: maps re-read, everything compared.
    fn resync(&mut self, datapath: &mut Datapath) {
        if self.translator.check().is_err() {
            return; // the rejection is logged; the running state stays
        }
        self.generation += 1;
        let _span =
            info_span!("reconcile", generation = self.generation, source = "resync").entered();
        let _ = self.translator.take_changed();
        let t0 = std::time::Instant::now();
        let desired = self.translator.desired();
        let result = datapath.resync(&desired);
        crate::metrics::control().apply_done(t0.elapsed(), result.is_ok(), desired.services.len());
        match result {
            Ok(stats) => {
                self.full_due = false;
                if stats.writes() > 0 {
                    warn!(
                        writes = stats.writes(),
                        "full resync found the maps differing from the source and repaired them"
                    );
                }
                // Neighbour entries are re-checked too (endpoints unroutable
                // before are retried).
                self.tunnel_gen = None;
                self.tunnels.clear();
                self.applied(datapath, &stats, "resync");
            }
            Err(e) => {
                error!(error = %Chain(&e), "full resync failed; retrying in {RETRY_INTERVAL:?}");
                self.full_due = true;
            }
        }
    }

    /// Bookkeeping after a successful apply: log, neighbours, health checks.
    fn applied(&mut self, datapath: &Datapath, stats: &ApplyStats, how: &'static str) {
        let services = self.translator.desired().services.len();
        let touched = stats.services_added + stats.services_removed + stats.services_changed;
        if how != "incremental" || touched > LOG_APPLY_SERVICES {
            info!(
                how,
                services,
                added = stats.services_added,
                removed = stats.services_removed,
                changed = stats.services_changed,
                writes = stats.writes(),
                duration_us = stats.duration.as_micros() as u64,
                "applied"
            );
        } else {
            debug!(
                how,
                added = stats.services_added,
                removed = stats.services_removed,
                changed = stats.services_changed,
                writes = stats.writes(),
                duration_us = stats.duration.as_micros() as u64,
                "applied"
            );
        }
        if stats.writes() == 0 {
            crate::metrics::control().synced();
        }
        self.fresh.updated();
        self.health.set_proxy_healthy(true);
        if let Some(checks) = self.translator.take_health_checks() {
            self.health.update(checks);
        }
        if self.tunnel_gen == Some(datapath.tunnel_generation()) {
            return;
        }
        self.tunnel_gen = Some(datapath.tunnel_generation());
        let tunnels = datapath.tunnel_endpoints();
        if tunnels != self.tunnels {
            match self.neighbours.sync(&tunnels) {
                Ok(0) => {}
                Ok(n) => info!(entries = n, "managed neighbour entries for tunnel next hops"),
                Err(e) => {
                    warn!(error = %Chain(&e), "tunnel next hops not pre-resolved; XDP hands packets to the kernel until they are")
                }
            }
            self.tunnels = tunnels;
        }
    }
}

/// The file source: sends the manifests whenever they change (polled every
/// [`POLL_INTERVAL`]) and on SIGHUP. Manifests that do not parse are logged
/// and not sent; the running state stays.
async fn watch_files(
    path: PathBuf,
    mut stamp: Stamp,
    tx: mpsc::Sender<Changes>,
) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            _ = hup.recv() => true,
        };
        let now = match source::file::stamp(&path) {
            Ok(s) => s,
            Err(e) => {
                if forced || !stamp.is_empty() {
                    warn!(error = %Chain(&e), "cannot read the manifests; the running state stays");
                }
                crate::metrics::control().health.source_failed(format!("manifests: {}", Chain(&e)));
                stamp = Vec::new();
                continue;
            }
        };
        if !forced && now == stamp {
            continue;
        }
        if forced {
            info!(path = %path.display(), "SIGHUP: reloading");
        } else {
            info!(path = %path.display(), "manifests changed: reloading");
        }
        stamp = now;
        match source::file::load_path(&path) {
            Ok(cluster) => {
                crate::metrics::control().health.source_ok();
                crate::metrics::control().cluster_seen(&cluster);
                if tx.send(Changes::full(cluster)).await.is_err() {
                    return Ok(()); // the reconciler is gone: shutting down
                }
            }
            Err(e) => error!(error = %Chain(&e), "manifests rejected, the running state stays"),
        }
    }
}

/// Mounts bpffs at /sys/fs/bpf unless it is there already.
fn ensure_bpffs() -> anyhow::Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let dir = Path::new("/sys/fs/bpf");
    let c = std::ffi::CString::new("/sys/fs/bpf").expect("no NUL");
    // SAFETY: statfs writes into the zeroed struct; c is a valid C string.
    let mounted = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    };
    if mounted {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let fstype = std::ffi::CString::new("bpf").expect("no NUL");
    // SAFETY: all pointers are valid C strings; data may be NULL for bpffs.
    let rc =
        unsafe { libc::mount(fstype.as_ptr(), c.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("mounting bpffs at /sys/fs/bpf");
    }
    info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}
