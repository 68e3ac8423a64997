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
//!
//! With `--pod-network` the agent is the node's pod network too: it pins
//! the pods' programs for xlb-cni (moving running pods to them), keeps the
//! pod ranges of every Node, the tunnel peers and masquerade in the
//! datapath, reads this node's pods from the plugin's records every second,
//! and installs the CNI configuration list once the node has pod ranges.
//! Tunnel peers (every Node's InternalIPs, and `--tunnel-peer`) are kept
//! with or without it: a node accepts DSR dispatch only from them.
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
    loader::{Dataplane, LoadOptions, MapSizes, SockScope, XdpMode, DEFAULT_PIN_DIR},
    model::{Cidr, Endpoint, DEFAULT_ICMP_RATE},
    report::Chain,
    sockdestroy::Reaper,
    store::BpfStore,
};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::{debug, error, info, info_span, warn};
use xlb_control::{
    cluster::Changes,
    healthcheck::{HealthServer, ProxyFreshness},
    podnet::{self, PodNetOptions},
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
/// How often the CNI plugin's records are read for this node's pods.
const ENDPOINT_POLL: Duration = Duration::from_secs(1);

/// "61000-65535": a port range flag.
fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or_else(|| format!("{s:?}: expected MIN-MAX"))?;
    let p = |x: &str| x.trim().parse::<u16>().map_err(|e| format!("{s:?}: {e}"));
    let (a, b) = (p(a)?, p(b)?);
    if a == 0 || a > b {
        return Err(format!("{s:?}: want 1 <= MIN <= MAX"));
    }
    Ok((a, b))
}

/// The MTU of `iface` in this network namespace (SIOCGIFMTU: /sys may be
/// another namespace's when the agent was started with setns).
fn iface_mtu(iface: &str) -> std::io::Result<u32> {
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "name too long"));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: a datagram socket for the ioctl, closed below; req is a valid ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFMTU, &mut req);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
        Ok(req.ifr_ifru.ifru_mtu as u32)
    }
}

/// The pod network of this node (`--pod-network` and its settings).
#[derive(Args, Debug)]
pub struct PodNetArgs {
    /// Be this node's pod network: pod programs pinned for xlb-cni, every
    /// Node's pod ranges routed through the Geneve overlay, masquerade,
    /// this node's pods from the plugin's records, the CNI configuration
    /// list installed.
    #[arg(long)]
    pod_network: bool,
    /// Where the CNI configuration list is installed.
    #[arg(long, value_name = "DIR", default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    #[arg(long, value_name = "FILE", default_value = "05-xlb.conflist")]
    cni_conf_name: String,
    /// Where xlb-cni records the pods (the agent reads them).
    #[arg(long, value_name = "DIR", default_value = xlb_cni::config::DEFAULT_STATE_DIR)]
    cni_state_dir: PathBuf,
    /// Where xlb-cni keeps its address allocations (a tmpfs: they go with
    /// the node, as its pods do).
    #[arg(long, value_name = "DIR", default_value = xlb_cni::config::DEFAULT_IPAM_DIR)]
    ipam_dir: PathBuf,
    /// MTU of the underlay [default: the first --iface's].
    #[arg(long, value_name = "BYTES")]
    underlay_mtu: Option<u32>,
    /// Bytes the overlay adds (Geneve over IPv6: 64); the pod MTU is the
    /// underlay's minus this.
    #[arg(long, value_name = "BYTES", default_value_t = podnet::DEFAULT_OVERHEAD)]
    overlay_overhead: u32,
    /// Pods' traffic leaves the cluster with the pods' own addresses.
    #[arg(long)]
    no_masquerade: bool,
    /// A destination pods reach with their own address; repeatable (every
    /// pod range is one already).
    #[arg(long = "non-masquerade-cidr", value_name = "CIDR")]
    non_masquerade_cidrs: Vec<Cidr>,
    /// Source ports masquerade hands out.
    #[arg(long, value_name = "MIN-MAX", default_value = "61000-65535", value_parser = parse_port_range)]
    masquerade_ports: (u16, u16),
    /// ICMP too-big messages sent to pods, per second and CPU.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_ICMP_RATE)]
    icmp_rate: u32,
}

impl PodNetArgs {
    fn options(&self, first_iface: &str) -> anyhow::Result<Option<PodNetOptions>> {
        if !self.pod_network {
            return Ok(None);
        }
        let underlay_mtu = match self.underlay_mtu {
            Some(m) => m,
            None => iface_mtu(first_iface)
                .with_context(|| format!("the MTU of {first_iface} (or give --underlay-mtu)"))?,
        };
        let pod_mtu = podnet::pod_mtu(underlay_mtu, self.overlay_overhead);
        anyhow::ensure!(
            pod_mtu >= 1280,
            "pod MTU {pod_mtu} (underlay {underlay_mtu} - overhead {}) is below IPv6's 1280",
            self.overlay_overhead
        );
        Ok(Some(PodNetOptions {
            masquerade: !self.no_masquerade,
            masquerade_ports: self.masquerade_ports,
            non_masquerade: self.non_masquerade_cidrs.clone(),
            icmp_rate: self.icmp_rate,
            underlay_mtu,
            pod_mtu,
            conf_dir: self.cni_conf_dir.clone(),
            conf_name: self.cni_conf_name.clone(),
            network_name: "xlb".into(),
            state_dir: self.cni_state_dir.clone(),
            ipam_dir: self.ipam_dir.clone(),
        }))
    }
}

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
    /// Interface to attach the XDP and tc programs to; repeatable. "auto":
    /// the interface of the default route (a DaemonSet's value).
    #[arg(long = "iface", value_name = "IF|auto", required = true)]
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
    /// Service ports the maps hold (Maglev tables, statistics, names;
    /// default 16384, or 1024 with --small-maps).
    #[arg(long, value_name = "N")]
    max_services: Option<u32>,
    /// Backends the maps hold, cluster-wide (default 262144, or 16384 with
    /// --small-maps).
    #[arg(long, value_name = "N")]
    max_backends: Option<u32>,
    /// Detach the programs on exit (uninstalling xlb, or handing the node
    /// to another datapath). Without it (the default) they stay attached
    /// with their maps pinned and keep serving while no agent runs: a
    /// restart or upgrade (or a crash) is hitless, the next agent replaces
    /// them atomically through their pinned links.
    #[arg(long)]
    detach_on_exit: bool,
    #[command(flatten)]
    metrics: crate::metrics::MetricsArgs,
    #[command(flatten)]
    flows: crate::flows::FlowArgs,
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
    /// Underlay address of a load balancer outside the cluster's Nodes
    /// whose DSR dispatch this node accepts; repeatable. (Every Node's
    /// InternalIPs are accepted; xlb's tunnel traffic from anyone else is
    /// dropped and counted, drop_tunnel_peer.)
    #[arg(long = "tunnel-peer", value_name = "ADDR")]
    tunnel_peers: Vec<IpAddr>,
    #[command(flatten)]
    pod: PodNetArgs,
    /// Where the socket programs (ClusterIP and every service address,
    /// translated at connect/sendmsg for the node's processes and pods) are
    /// attached: "auto" (the node's cgroup2 root, from /proc/self/mountinfo;
    /// off, with a warning, when the agent runs outside the host's network
    /// namespace: that is a test or a lab, which passes its own cgroup),
    /// "off", or a cgroup2 directory.
    #[arg(long, value_name = "auto|off|CGROUP", default_value = "auto")]
    socket_lb: String,
    /// Translate at the socket only in the node's own network namespace:
    /// pods' sockets keep the ClusterIP they connect to (sidecar proxies see
    /// it) and their packets are translated by tc instead.
    #[arg(long)]
    socket_lb_host_only: bool,
    /// Where a translated socket's record is kept: "cookie" (a
    /// preallocated map keyed by socket cookie, deleted by a sock_release
    /// program; sockets never translated skip it by their mark) or
    /// "storage" (socket storage, allocated at connect: about 0.55 µs more
    /// per translated connect, no sock_release program). See
    /// LoadOptions::sock_cookie_records.
    #[arg(long, value_name = "cookie|storage", default_value = "cookie")]
    socket_lb_records: SockRecordsArg,
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
    /// New connection-table entries per second per CPU (the flood guard):
    /// beyond it new flows are served by Maglev alone and evict no
    /// established flow ("0": no limit).
    #[arg(long, value_name = "N", default_value_t = lb::loader::DEFAULT_CT_INSERT_RATE)]
    ct_insert_rate: u32,
}

/// Where `--socket-lb` says to attach the socket programs, if anywhere.
fn socket_lb_cgroup(arg: &str) -> anyhow::Result<Option<PathBuf>> {
    match arg {
        "off" => Ok(None),
        "auto" => {
            let ns =
                |p: &str| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
            let host = ns("/proc/1/ns/net").ok();
            if host.is_none() || host != ns("/proc/self/ns/net").ok() {
                warn!(
                    "socket load balancing off: this agent runs outside the host's network \
                     namespace (a test or lab?), where the cgroup2 root is not its node's; \
                     pass --socket-lb CGROUP"
                );
                return Ok(None);
            }
            let root = lb::loader::cgroup2_root().context("reading /proc/self/mountinfo")?;
            if root.is_none() {
                warn!("socket load balancing off: no cgroup2 file system is mounted");
            }
            Ok(root)
        }
        path => Ok(Some(PathBuf::from(path))),
    }
}

/// `--socket-lb-records`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum SockRecordsArg {
    /// xlb_sock_cookie + sock_release (the default).
    Cookie,
    /// Socket storage (xlb_sock_state).
    Storage,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum XdpModeArg {
    /// In the driver: the fast path.
    Native,
    /// In the kernel stack (skb mode): works on any interface, slow.
    Generic,
    /// No XDP: tc only. The node is no NodePort / LoadBalancer frontend of
    /// its own (DSR termination, the pod network and masquerade are tc's);
    /// an XDP program a previous agent left on the interface is removed.
    None,
}

pub fn run(mut args: RunArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let opts = args.translate.options();
    if args.ifaces.iter().any(|i| i == xlb_control::uplink::AUTO) {
        args.ifaces = xlb_control::uplink::resolve(&args.ifaces)?;
        info!(ifaces = ?args.ifaces, "--iface auto: the default route's interface");
    }

    // With files, the whole configuration is read and checked before the
    // datapath is touched: a typo never gets as far as the kernel.
    let mut first = None;
    if let Some(path) = &args.config {
        let stamp = source::file::stamp(path)?;
        let cluster = source::file::load_path(path)?;
        crate::metrics::control().cluster_seen(&cluster);
        let mut translator = Translator::new(opts.clone());
        let mut changes = Changes::full(cluster);
        let mut policy = xlb_control::policy::agent::PolicyObjects::default();
        policy.take(&mut changes);
        translator.update(changes);
        if let Err(e) = translator.check() {
            eprint!("{}", render::errors(&e));
            return Ok(ExitCode::FAILURE);
        }
        first = Some((stamp, translator, policy));
    }

    // The Kubernetes source lists every kind while the datapath loads (map
    // creation and the verifier take a good part of a second; so does a
    // large cluster's first list): nothing is written before both are done.
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let early = if args.config.is_none() {
        let (tx, rx) = mpsc::channel::<Changes>(1);
        let (restored, restored_rx) = tokio::sync::watch::channel(None);
        let kube = source::kube::KubeOptions { kubeconfig: args.kubeconfig.clone() };
        let watch = source::kube::WatchOptions {
            stats: crate::metrics::control().kube_stats(),
            min_interval: args.min_interval,
            ..Default::default()
        };
        let task = runtime.spawn(kube_source(kube, watch, tx, restored_rx));
        Some(KubeStarted { rx, task, restored })
    } else {
        None
    };

    ensure_bpffs()?;
    let t_load = std::time::Instant::now();
    let sizes = if args.small_maps { MapSizes::small() } else { MapSizes::default() };
    let sizes = MapSizes {
        events: args.events_ringbuf_bytes,
        services: args.max_services.unwrap_or(sizes.services),
        // Every service has at least one frontend.
        frontends: sizes.frontends.max(args.max_services.unwrap_or(0)),
        backends: args.max_backends.unwrap_or(sizes.backends),
        ..sizes
    };
    let sock_scope = if args.socket_lb_host_only {
        let netns_cookie = lb::loader::netns_cookie().context("this network namespace's cookie")?;
        SockScope::HostOnly { netns_cookie }
    } else {
        SockScope::All
    };
    let load = LoadOptions {
        pin_dir: args.pin_dir.clone(),
        sizes,
        sock_scope,
        sock_cookie_records: matches!(args.socket_lb_records, SockRecordsArg::Cookie),
        events_enabled: true,
        reply_rate: args.reply_rate,
        reply_burst: args.reply_burst,
        ct_insert_rate: args.ct_insert_rate,
        features: None,
    };
    // No xlb_backends pinned yet: the loader creates it empty, and the
    // first apply need not read its generations (BpfStore::backends_created_empty).
    let backends_created = !load.pin_dir.join("xlb_backends").exists();
    let mode = match args.xdp_mode {
        XdpModeArg::Native => Some(XdpMode::Native),
        XdpModeArg::Generic => {
            warn!(
                "XDP in generic (skb) mode: runs after the kernel allocated the packet, \
                 far slower than native; for testing or NICs without XDP support only"
            );
            Some(XdpMode::Generic)
        }
        XdpModeArg::None => None,
    };
    // Maps first; the verifier runs on a thread of its own while the
    // first listing is applied to the maps (serve), and the same thread
    // attaches the programs as soon as they are loaded.
    let staged = Dataplane::create_maps(&load).context("loading the datapath")?;
    info!(maps_ms = t_load.elapsed().as_millis() as u64, "datapath maps created");
    let ifaces = args.ifaces.clone();
    let (restored, restored_rx) = std::sync::mpsc::sync_channel(1);
    let programs = std::thread::Builder::new()
        .name("xlb-verify".into())
        .spawn(move || load_and_attach(staged, t_load, restored_rx, &ifaces, mode))
        .context("starting the program loader thread")?;
    crate::metrics::control().set_ct_insert_budget(args.ct_insert_rate);
    let loading = Loading { programs, restored, backends_created };
    let result = serve(&args, &opts, first, early, runtime, loading);
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

/// What the pod network needs of the node's kernel: forwarding (the pods'
/// packets the host stack routes; bpf_fib_lookup from a pod's veth), and
/// an SNAT port range kept apart from the node's own sockets.
fn pod_network_sysctls(opts: &PodNetOptions) -> anyhow::Result<()> {
    for (path, want) in
        [("/proc/sys/net/ipv4/ip_forward", "1"), ("/proc/sys/net/ipv6/conf/all/forwarding", "1")]
    {
        let now = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        if now.trim() != want {
            std::fs::write(path, want).with_context(|| format!("setting {path}"))?;
            info!(sysctl = path, value = want, "set for the pod network");
        }
    }
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = range.split_whitespace().filter_map(|p| p.parse::<u16>().ok());
    if let (Some(lo), Some(hi), true) = (it.next(), it.next(), opts.masquerade) {
        let (a, b) = opts.masquerade_ports;
        if a <= hi && lo <= b {
            warn!(
                local = %range.trim(), masquerade = %format!("{a}-{b}"),
                "the masquerade ports overlap the node's ephemeral ports: a node socket and a \
                 pod flow may meet on one port; move --masquerade-ports or ip_local_port_range"
            );
        }
    }
    Ok(())
}

/// The programs being loaded (verifier) and attached on their thread, the
/// signal that lets them attach (the restore is done), and whether the
/// loader created xlb_backends (none was pinned).
struct Loading {
    programs: std::thread::JoinHandle<anyhow::Result<Dataplane>>,
    restored: std::sync::mpsc::SyncSender<()>,
    backends_created: bool,
}

/// The program loader thread's work: the programs verified and loaded,
/// then attached to `ifaces` at once. On a fresh node that is while the
/// first listing is still being written (a cold start at 30k services
/// verifies in ~1.2 s and writes for ~2 s): the programs meet maps being
/// filled in the order every incremental apply keeps (a frontend only
/// after its backends and table), as after a restart, and a frontend not
/// written yet is passed to the kernel as before the attach. An agent
/// taking over from another attaches before its first apply, as always.
///
/// Never before the restore is done (`restored`): the restore may rewrite
/// words the new programs read and the attached ones do not (an array
/// cache word left stale by an older agent, lb::reconcile::svcids); at
/// 30k services it takes longer than the verifier. If the restore fails
/// the sender is dropped and nothing is attached.
fn load_and_attach(
    staged: lb::loader::Staged,
    t_load: std::time::Instant,
    restored: std::sync::mpsc::Receiver<()>,
    ifaces: &[String],
    mode: Option<XdpMode>,
) -> anyhow::Result<Dataplane> {
    let mut dataplane = staged.load_programs().context("loading the datapath")?;
    info!(load_ms = t_load.elapsed().as_millis() as u64, "datapath loaded");
    restored.recv().map_err(|_| {
        anyhow::anyhow!("the applied state was not restored: programs not attached")
    })?;
    // Probed at load: each missing feature named with its fallback.
    for missing in dataplane.features().missing() {
        warn!(feature = missing.feature, since = missing.since, "{missing}");
    }
    for iface in ifaces {
        datapath_sysctls(iface)?;
        match mode {
            Some(mode) => dataplane.attach_xdp(iface, mode)?,
            None => dataplane.detach_xdp(iface)?,
        }
        dataplane.attach_tc(iface)?;
        info!(iface, ?mode, "attached (XDP: mode; tc: always)");
        crate::metrics::record_attach(iface, mode);
    }
    Ok(dataplane)
}

/// Restores the applied state, applies the first listing while the
/// programs load and attach on their thread (on a fresh node), then
/// reconciles until a signal.
fn serve(
    args: &RunArgs,
    opts: &TranslateOptions,
    first: Option<(Stamp, Translator, xlb_control::policy::agent::PolicyObjects)>,
    mut kube: Option<KubeStarted>,
    runtime: tokio::runtime::Runtime,
    Loading { programs, restored, backends_created }: Loading,
) -> anyhow::Result<()> {
    let mut store = BpfStore::open(&args.pin_dir).context("opening the datapath maps")?;
    if backends_created {
        store.backends_created_empty();
    }
    let mut datapath = Datapath::restore(store).context("restoring the applied state")?;
    info!(
        services = datapath.service_keys().count(),
        pin_dir = %args.pin_dir.display(),
        "restored the applied state"
    );
    // The loader thread may attach now (a full channel or a finished
    // thread: nothing waits any more).
    let _ = restored.try_send(());
    let pod = args.pod.options(&args.ifaces[0])?;
    // From the API (any namespace user can create a bad object) the invalid
    // objects and parts are left out; manifest files stay all-or-nothing.
    let api_opts = TranslateOptions { leave_out_invalid: true, ..opts.clone() };
    let mut reconciler = Reconciler::new(Translator::new(api_opts), args.health_check_addr);
    reconciler.pods = PodState {
        opts: pod.clone(),
        pin_dir: args.pin_dir.clone(),
        lbs: args.tunnel_peers.clone(),
        ..PodState::default()
    };
    // Cold start: on a fresh node (the maps hold no service, so no program
    // of an earlier agent serves them) the Kubernetes source's first
    // listing, usually complete before the verifier is done, is applied
    // while the programs load; the pod network waits for them (xlb-cni
    // needs the pinned pod programs before a CNI configuration exists).
    if let Some(k) = kube.as_mut().filter(|_| datapath.service_keys().next().is_none()) {
        let _rt = runtime.enter();
        while !programs.is_finished() {
            match k.rx.try_recv() {
                Ok(changes) => {
                    reconciler.programs_loaded = false;
                    reconciler.receive(&mut datapath, changes, "kube");
                    break;
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        }
    }
    let mut dataplane =
        programs.join().map_err(|_| anyhow::anyhow!("the program loader thread panicked"))??;
    let dataplane = &mut dataplane;
    if let Some(p) = &pod {
        pod_network_sysctls(p)?;
        let moved = dataplane.pin_pod_programs().context("pinning the pod programs")?;
        info!(
            pods_moved = moved / 2,
            pod_mtu = p.pod_mtu,
            underlay_mtu = p.underlay_mtu,
            "pod network: programs pinned for xlb-cni"
        );
    }
    let mut sockets = None;
    if let Some(cgroup) = socket_lb_cgroup(&args.socket_lb)? {
        dataplane
            .attach_sock(&cgroup)
            .with_context(|| format!("attaching the socket programs at {}", cgroup.display()))?;
        info!(
            cgroup = %cgroup.display(),
            host_only = args.socket_lb_host_only,
            records = ?args.socket_lb_records,
            "attached the socket programs: service addresses translated at connect/sendmsg"
        );
        crate::metrics::control().attached(&cgroup.display().to_string(), "sock", "cgroup");
        // The probe: the kernel loads the socket iterators or says why not.
        let reaper = match Reaper::load(&args.pin_dir) {
            Ok(mut r) => {
                info!(
                    "socket termination available (socket iterators + bpf_sock_destroy): \
                     connected UDP and connecting TCP sockets to a removed backend are \
                     terminated"
                );
                // Records of sockets released while no agent was attached.
                match r.sweep(&cgroup) {
                    Ok(s) => info!(
                        live = s.live,
                        removed = s.removed,
                        namespaces = s.namespaces,
                        "socket translation records swept"
                    ),
                    Err(e) => warn!(error = %e, "sweeping socket translation records"),
                }
                Some(r)
            }
            Err(e) => {
                warn!(
                    error = %e,
                    "socket termination unavailable: connected UDP sockets keep sending to a \
                     removed backend's address until their application reconnects, and \
                     connecting TCP sockets wait for their SYN timeout"
                );
                None
            }
        };
        sockets = Some(Sockets { cgroup, reaper });
    }
    if !reconciler.programs_loaded {
        // The pod network and policy the early apply left for now.
        reconciler.programs_loaded = true;
        let _rt = runtime.enter();
        reconciler.pods.sync_network(&mut datapath, &reconciler.translator, true);
        reconciler.pods.sync_policy(&mut datapath, true);
    }
    reconciler.sockets = sockets;
    let _metrics = crate::metrics::start(&args.metrics, &args.pin_dir)?;
    let _flows = crate::flows::start(&args.pin_dir, &opts.node_name, &args.flows)?;
    runtime.spawn(crate::metrics::housekeeping(args.pin_dir.clone()));
    runtime.block_on(reconcile_loop(args, reconciler, first, kube, &mut datapath))
}

/// The Kubernetes source, started before the datapath loaded.
struct KubeStarted {
    rx: mpsc::Receiver<Changes>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Services the maps held at start (for the source's error messages),
    /// sent once the datapath has loaded.
    restored: tokio::sync::watch::Sender<Option<usize>>,
}

/// The hooked cgroup and, if the kernel allows it, what terminates the
/// sockets translated to a backend that is gone.
struct Sockets {
    cgroup: PathBuf,
    reaper: Option<Reaper>,
}

async fn reconcile_loop(
    args: &RunArgs,
    mut reconciler: Reconciler,
    first: Option<(Stamp, Translator, xlb_control::policy::agent::PolicyObjects)>,
    kube: Option<KubeStarted>,
    datapath: &mut Datapath,
) -> anyhow::Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
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
    let (mut rx, source) = match (&args.config, first, kube) {
        (Some(path), Some((stamp, translator, policy)), _) => {
            // One batch may wait while an apply runs; later changes coalesce in the source.
            let (tx, rx) = mpsc::channel::<Changes>(1);
            reconciler.translator = translator;
            reconciler.pods.policy_objects = policy;
            reconciler.full_due = true;
            reconciler.synced = true;
            reconciler.sync(datapath, "file");
            (rx, tokio::spawn(watch_files(path.clone(), stamp, tx)))
        }
        (_, _, Some(k)) => {
            k.restored.send_replace(Some(datapath.service_keys().count()));
            (k.rx, k.task)
        }
        _ => anyhow::bail!("no source: neither --config nor the Kubernetes API"),
    };
    let kind = if args.config.is_some() { "file" } else { "kube" };
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    let resync_every =
        if args.full_resync_interval.is_zero() { Duration::MAX } else { args.full_resync_interval };
    let mut resync = tokio::time::interval_at(
        tokio::time::Instant::now() + resync_every.min(Duration::from_secs(86400 * 365)),
        resync_every.min(Duration::from_secs(86400 * 365)),
    );
    let mut endpoint_poll = tokio::time::interval(ENDPOINT_POLL);

    let outcome = loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(changes) => reconciler.receive(datapath, changes, kind),
                None => break Ok(()), // the source ended; its result is below
            },
            _ = retry.tick(), if reconciler.full_due && reconciler.synced
                && reconciler.translator.is_valid() => {
                reconciler.sync(datapath, "retry");
            }
            _ = resync.tick(), if reconciler.synced && !args.full_resync_interval.is_zero() => {
                reconciler.resync(datapath);
            }
            _ = endpoint_poll.tick(), if reconciler.pods.opts.is_some() => {
                reconciler.pods.sync_endpoints(datapath, false);
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
    mut restored: tokio::sync::watch::Receiver<Option<usize>>,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_secs(1);
    loop {
        match source::kube::run_with(kube.clone(), watch.clone(), tx.clone()).await {
            Ok(()) => return Ok(()), // the reconciler is gone: shutting down
            Err(e) if tx.is_closed() => return Err(e),
            Err(e) => {
                // The source starts while the datapath loads: say what the
                // maps held once that is known (unknown if the load failed).
                let restored = restored.wait_for(Option::is_some).await.ok().and_then(|n| *n);
                let restored = restored.map_or_else(|| "?".to_string(), |n| n.to_string());
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

/// The pod network's side of the reconcile: what was last applied.
#[derive(Default)]
struct PodState {
    /// None: no pod network on this node (tunnel peers only).
    opts: Option<PodNetOptions>,
    pin_dir: PathBuf,
    /// Load balancers outside the Nodes (--tunnel-peer).
    lbs: Vec<IpAddr>,
    /// The Nodes' network generation last applied.
    network_gen: Option<u64>,
    /// The pods last applied, and the records last skipped (logged once).
    endpoints: Option<Vec<Endpoint>>,
    skipped: Vec<String>,
    /// NetworkPolicy (#11): the objects, their compilation, what was applied.
    policy_objects: xlb_control::policy::agent::PolicyObjects,
    compiled: xlb_control::policy::Compiled,
    policy_applied: Option<lb::policy::PolicyDesired>,
    policy_errors: Vec<String>,
}

impl PodState {
    /// Applies the pod network when the Nodes changed it (`force`: re-read
    /// the maps first and diff anyway); installs the CNI configuration.
    fn sync_network(&mut self, datapath: &mut Datapath, translator: &Translator, force: bool) {
        let gen = translator.pod_network_generation();
        if !force && self.network_gen == Some(gen) {
            return;
        }
        let pod = translator.pod_network();
        let net = podnet::network(&pod, self.opts.as_ref(), &self.lbs);
        let result =
            if force { datapath.resync_network(&net) } else { datapath.apply_network(&net) };
        match result {
            Ok(stats) => {
                self.network_gen = Some(gen);
                if stats.writes() > 0 {
                    info!(
                        routes = net.routes.len(),
                        peers = net.peers.len(),
                        writes = stats.writes(),
                        "pod network applied"
                    );
                }
            }
            Err(e) => {
                error!(error = %e, "pod network not applied; retried with the next change or resync");
                return;
            }
        }
        let Some(opts) = &self.opts else { return };
        if pod.local.is_empty() {
            warn!("this node's Node has no spec.podCIDRs: no CNI configuration installed yet");
            return;
        }
        match podnet::install_conflist(opts, &self.pin_dir, &pod.local) {
            Ok(true) => info!(
                path = %opts.conf_dir.join(&opts.conf_name).display(),
                ranges = ?pod.local.iter().map(ToString::to_string).collect::<Vec<_>>(),
                pod_mtu = opts.pod_mtu,
                "CNI configuration installed"
            ),
            Ok(false) => {}
            Err(e) => error!(error = %e, "installing the CNI configuration"),
        }
    }

    /// Applies this node's pods from the plugin's records when they
    /// changed (`force`: re-read xlb_endpoints and diff anyway).
    fn sync_endpoints(&mut self, datapath: &mut Datapath, force: bool) {
        let Some(opts) = &self.opts else { return };
        let (mut eps, skipped) = podnet::local_endpoints(&opts.state_dir);
        xlb_control::policy::agent::set_identities(&self.compiled, &mut eps);
        if skipped != self.skipped {
            for s in &skipped {
                warn!(record = %s, "CNI record left out");
            }
            self.skipped = skipped;
        }
        if !force && self.endpoints.as_ref() == Some(&eps) {
            return;
        }
        let result =
            if force { datapath.resync_endpoints(&eps) } else { datapath.apply_endpoints(&eps) };
        match result {
            Ok(stats) => {
                if stats.writes() > 0 {
                    info!(pods = eps.len(), writes = stats.writes(), "pods on this node applied");
                }
                self.endpoints = Some(eps);
                self.sync_policy(datapath, force);
            }
            Err(e) => error!(error = %e, "pods not applied; retried in a second"),
        }
    }

    /// NetworkPolicy: recompiles when a Pod, Namespace or NetworkPolicy
    /// changed, gives the endpoints their identities and applies this
    /// node's policy maps when they differ (`force`: anyway).
    fn sync_policy(&mut self, datapath: &mut Datapath, force: bool) {
        if self.opts.is_none() {
            return;
        }
        if self.policy_objects.dirty() {
            self.compiled = self.policy_objects.compile();
            crate::flows::publish(self.policy_objects.names(&self.compiled));
            let errors: Vec<String> = self.compiled.errors.iter().map(|e| e.to_string()).collect();
            if errors != self.policy_errors {
                for e in &errors {
                    error!(error = %e, "NetworkPolicy not enforced");
                }
                self.policy_errors = errors;
            }
            // Identities may have moved: the endpoints carry them.
            if let Some(eps) = &self.endpoints {
                let mut with = eps.clone();
                xlb_control::policy::agent::set_identities(&self.compiled, &mut with);
                if &with != eps {
                    match datapath.apply_endpoints(&with) {
                        Ok(_) => self.endpoints = Some(with),
                        Err(e) => error!(error = %e, "pod identities not applied"),
                    }
                }
            }
        }
        let eps = self.endpoints.as_deref().unwrap_or_default();
        let desired = xlb_control::policy::agent::desired(&self.compiled, eps);
        if !force && self.policy_applied.as_ref() == Some(&desired) {
            return;
        }
        let t0 = std::time::Instant::now();
        match datapath.apply_policy(&desired) {
            Ok(stats) => {
                if stats.writes() > 0 {
                    info!(
                        policies = desired.policies.len(),
                        isolated = desired.endpoints.len(),
                        writes = stats.writes(),
                        duration_us = t0.elapsed().as_micros() as u64,
                        "NetworkPolicy applied"
                    );
                }
                self.policy_applied = Some(desired);
            }
            Err(e) => error!(error = %e, "NetworkPolicy not applied; retried with the next change"),
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
    pods: PodState,
    /// Socket load balancing: where, and the socket terminator.
    sockets: Option<Sockets>,
    /// What the node health endpoint reports.
    fresh: Arc<ProxyFreshness>,
    /// The programs are loaded (false while the first listing is applied
    /// during the verifier's run: the pod network waits for them).
    programs_loaded: bool,
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
            pods: PodState::default(),
            sockets: None,
            fresh: Arc::default(),
            programs_loaded: true,
        }
    }

    /// A batch from the source: reconciled, with the metrics of its arrival.
    fn receive(&mut self, datapath: &mut Datapath, changes: Changes, source: &str) {
        let t0 = std::time::Instant::now();
        crate::metrics::control().source_event();
        self.fresh.queued();
        if !self.synced {
            // The source listed every kind: the API is back (or was never gone).
            crate::metrics::control().health.source_ok();
        }
        self.reconcile(datapath, changes, source);
        crate::metrics::control().sync_done(t0.elapsed());
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
        let mut changes = changes;
        self.pods.policy_objects.take(&mut changes);
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
                if self.programs_loaded {
                    self.pods.sync_network(datapath, &self.translator, full);
                    self.pods.sync_policy(datapath, full);
                }
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
                self.pods.sync_network(datapath, &self.translator, true);
                self.pods.sync_endpoints(datapath, true);
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
        self.reap(&stats.gone_backends);
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

impl Reconciler {
    /// Terminates the sockets translated to backends that are gone.
    fn reap(&mut self, gone: &[lb::sockdestroy::GoneBackend]) {
        let Some(Sockets { cgroup, reaper: Some(reaper) }) = &mut self.sockets else { return };
        if gone.is_empty() {
            return;
        }
        match reaper.reap(cgroup, gone) {
            Ok(r) if r.destroyed + r.failed > 0 => info!(
                backends = gone.len(),
                namespaces = r.namespaces,
                destroyed = r.destroyed,
                refused = r.failed,
                "terminated sockets connected to removed backends"
            ),
            Ok(r) => {
                debug!(backends = gone.len(), namespaces = r.namespaces, "no socket to terminate")
            }
            Err(e) => warn!(error = %e, "terminating sockets of removed backends"),
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
