//! `xlb run`: the node agent. Loads and attaches the datapath (lb::loader),
//! opens its applied state (lb::datapath, restored from the pinned maps),
//! then reconciles: every [`Cluster`] a source sends (manifest files, or the
//! Kubernetes API) is translated whole and, if valid, applied; an invalid
//! one is logged with all its errors and the running state stays.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use clap::{Args, ValueEnum};
use lb::{
    datapath::Datapath,
    loader::{Dataplane, LoadOptions, MapSizes, XdpMode, DEFAULT_PIN_DIR},
    model::Desired,
};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::{error, info, info_span, warn};
use xlb_control::{
    cluster::Cluster,
    render,
    source::{self, file::Stamp},
    translate::{translate, TranslateOptions},
};

use crate::TranslateArgs;

/// How often the manifests are checked for changes.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How soon a failed apply is retried.
const RETRY_INTERVAL: Duration = Duration::from_secs(5);

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
    /// Leave the programs attached on exit, for an upgrade: the next agent
    /// replaces them atomically through their pinned links.
    #[arg(long)]
    keep_attached: bool,
    #[command(flatten)]
    metrics: crate::metrics::MetricsArgs,
    /// Size of the event ring buffer (xlb monitor), bytes: a power of two,
    /// at least a page.
    #[arg(long, value_name = "BYTES", default_value_t = crate::monitor::DEFAULT_RINGBUF_BYTES)]
    events_ringbuf_bytes: u32,
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
        match translate(&cluster, &opts) {
            Ok(d) => first = Some((stamp, d)),
            Err(e) => {
                eprint!("{}", render::errors(&e));
                return Ok(ExitCode::FAILURE);
            }
        }
    }

    ensure_bpffs()?;
    let sizes = if args.small_maps { MapSizes::small() } else { MapSizes::default() };
    let load = LoadOptions { pin_dir: args.pin_dir.clone(), sizes };
    crate::monitor::prepare_ringbuf(&args.pin_dir, args.events_ringbuf_bytes)?;
    let mut dataplane = Dataplane::load(&load).context("loading the datapath")?;
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
    if args.keep_attached {
        info!("programs left attached (--keep-attached); maps stay pinned");
    } else {
        Dataplane::detach_all(&args.pin_dir).context("detaching the programs")?;
        info!("programs detached; maps stay pinned, so established flows survive a restart");
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
    first: Option<(Stamp, Desired)>,
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
    first: Option<(Stamp, Desired)>,
    datapath: &mut Datapath,
) -> anyhow::Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let (tx, mut rx) = mpsc::channel::<Arc<Cluster>>(4);

    let mut reconciler = Reconciler {
        generation: 0,
        applied: None,
        pending: None,
        neighbours: lb::neigh::Neighbours::new(),
    };
    let source = match (&args.config, first) {
        (Some(path), Some((stamp, desired))) => {
            reconciler.apply(datapath, desired, "file");
            tokio::spawn(watch_files(path.clone(), stamp, tx))
        }
        _ => {
            let kube = source::kube::KubeOptions { kubeconfig: args.kubeconfig.clone() };
            let watch = source::kube::WatchOptions {
                stats: crate::metrics::control().kube_stats(),
                ..Default::default()
            };
            tokio::spawn(source::kube::run_with(kube, watch, tx))
        }
    };
    let kind = if args.config.is_some() { "file" } else { "kube" };
    let mut retry = tokio::time::interval(RETRY_INTERVAL);

    let outcome = loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(cluster) => {
                    let t0 = std::time::Instant::now();
                    crate::metrics::control().source_event();
                    reconciler.reconcile(datapath, &cluster, opts, kind);
                    crate::metrics::control().sync_done(t0.elapsed());
                }
                None => break Ok(()), // the source ended; its result is below
            },
            _ = retry.tick(), if reconciler.pending.is_some() => {
                if let Some(d) = reconciler.pending.take() {
                    reconciler.apply(datapath, d, "retry");
                }
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

/// Translates and applies; remembers what was applied.
struct Reconciler {
    generation: u64,
    applied: Option<Desired>,
    /// A valid state whose apply failed: retried on a timer.
    pending: Option<Desired>,
    /// Tunnel next hops kept resolved for XDP.
    neighbours: lb::neigh::Neighbours,
}

impl Reconciler {
    fn reconcile(
        &mut self,
        datapath: &mut Datapath,
        cluster: &Cluster,
        opts: &TranslateOptions,
        source: &str,
    ) {
        crate::metrics::control().cluster_seen(cluster);
        match translate(cluster, opts) {
            Ok(desired) => self.apply(datapath, desired, source),
            Err(errors) => {
                crate::metrics::control().rejected();
                self.generation += 1;
                let _span = info_span!("reconcile", generation = self.generation, source).entered();
                error!(
                    count = errors.0.len(),
                    "new configuration rejected, the running state stays:\n{}",
                    render::errors(&errors).trim_end()
                );
            }
        }
    }

    fn apply(&mut self, datapath: &mut Datapath, desired: Desired, source: &str) {
        self.generation += 1;
        let _span = info_span!("reconcile", generation = self.generation, source).entered();
        if self.applied.as_ref() == Some(&desired) {
            info!("no change");
            crate::metrics::control().synced();
            self.pending = None;
            return;
        }
        let t0 = std::time::Instant::now();
        let result = datapath.apply(&desired);
        crate::metrics::control().apply_done(t0.elapsed(), result.is_ok(), desired.services.len());
        match result {
            Ok(stats) => {
                info!(
                    services = desired.services.len(),
                    added = stats.services_added,
                    removed = stats.services_removed,
                    changed = stats.services_changed,
                    writes = stats.writes(),
                    duration_us = stats.duration.as_micros() as u64,
                    "applied"
                );
                self.applied = Some(desired);
                self.pending = None;
                match self.neighbours.sync(&datapath.tunnel_endpoints()) {
                    Ok(0) => {}
                    Ok(n) => info!(entries = n, "managed neighbour entries for tunnel next hops"),
                    Err(e) => {
                        warn!(error = %e, "tunnel next hops not pre-resolved; XDP hands packets to the kernel until they are")
                    }
                }
            }
            Err(e) => {
                error!(error = %e, "apply failed; retrying in {RETRY_INTERVAL:?}");
                self.applied = None;
                self.pending = Some(desired);
            }
        }
    }
}

/// The file source: sends the manifests whenever they change (polled every
/// [`POLL_INTERVAL`]) and on SIGHUP. Manifests that do not parse are logged
/// and not sent; the running state stays.
async fn watch_files(
    path: PathBuf,
    mut stamp: Stamp,
    tx: mpsc::Sender<Arc<Cluster>>,
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
                    warn!(error = %e, "cannot read the manifests; the running state stays");
                }
                crate::metrics::control().health.source_failed(format!("manifests: {e}"));
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
                if tx.send(Arc::new(cluster)).await.is_err() {
                    return Ok(()); // the reconciler is gone: shutting down
                }
            }
            Err(e) => error!(error = %e, "manifests rejected, the running state stays"),
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
