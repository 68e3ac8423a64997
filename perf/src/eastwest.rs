//! `xlb-perf eastwest`: from a pod to a service, real TCP connections (and
//! UDP requests), over these paths in interleaved rounds, at 1, 1k and 10k
//! services:
//!   - direct: the pod connects to the server pod's IP (no service, no
//!     socket programs);
//!   - direct, in xlb's cgroup: the same, from inside the cgroup where xlb's
//!     socket programs are attached (they run and find no service);
//!   - xlb: the pod (in xlb's cgroup) connects to the service's ClusterIP,
//!     translated once at connect(); xlb holds N services;
//!   - kube-proxy iptables: the pod (no socket programs) connects to the
//!     ClusterIP; its node DNATs with kube-proxy's iptables ruleset for N
//!     services (the measured one last in KUBE-SERVICES).
//!
//!   pod ──c0── node ──── srv        direct and xlb: routed by node
//!      └─c1── nodekp ──┘            kube-proxy: DNAT'd by nodekp
//!
//! The kube-proxy path has its own node so that the other paths' new
//! connections do not walk its rules. Each request is one connection:
//! connect, getpeername, an HTTP request, the answer, close (xlb-probe: the
//! time of each, ns); the server answers on its accepting thread. UDP:
//! request/answer on one unconnected socket (sendto + recvfrom, whose
//! source xlb shows as the ClusterIP: the recvmsg reverse translation on
//! every datagram).
//!
//! Statistics for a shared, noisy machine: many short rounds, each running
//! every path once in a rotated order; per round and path the rate is from
//! the 10 %-trimmed mean time (scheduler stalls cut off) and is divided by
//! the direct path's rate of the same round. Tables give the median of
//! those per-round ratios with a 95 % bootstrap interval and the
//! interquartile range; added p50/p99 likewise from per-round differences.
//! Client and server may be pinned to CPUs (--pin). A last phase reads the
//! kernel's run time of each socket program (BPF_ENABLE_STATS): the
//! per-call cost of the hooks themselves, which no end-to-end ratio on two
//! shared cores resolves below a few percent.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb::{
    datapath::Datapath,
    loader::{Dataplane, LoadOptions, MapSizes},
    model::*,
};
use serde::Serialize;
use testkit::{netns::NamedNetns, pins::PinDir};
use xlb_perf::{
    kubeproxy::{iptables_restore, synthetic, KpConfig},
    stats::{median_ci, quantile, trimmed_mean, MedianCi},
};

const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const POD_KP: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 2);
const SRV: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 11);
/// The measured service's ClusterIP (TCP 80 → SRV:80; UDP 53 → SRV:5353).
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 1);
const UDP_TARGET_PORT: u16 = 5353;

#[derive(Clone, Debug)]
pub struct EwOpts {
    pub services: Vec<u32>,
    pub rounds: u32,
    /// Connections per path and round.
    pub requests: usize,
    /// CPUs of the client and of the server (None: the scheduler's choice).
    pub pin: Option<(usize, usize)>,
}

impl Default for EwOpts {
    fn default() -> Self {
        EwOpts { services: vec![1, 1000, 10_000], rounds: 100, requests: 200, pin: Some((0, 0)) }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct EwRow {
    /// "by count", "flatness" or "udp".
    pub table: String,
    pub services: u32,
    pub path: String,
    pub proto: String,
    pub rounds: usize,
    pub requests: usize,
    pub failures: usize,
    /// Over all rounds: the rate from the 10 %-trimmed mean time, p50, p99.
    pub per_sec_trimmed: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    /// The share of requests slower than 10 × p50 (stalls: the shared
    /// cores given to another process in the middle of a request).
    pub stalled: f64,
    /// Requests during which the client and the server waited runnable
    /// more than PREEMPT_MARGIN_US beyond the path's median wait (another
    /// process had the core): the share of all requests; the p99 over the
    /// others (µs).
    pub preempted: f64,
    pub p99_quiet_us: f64,
    /// The median of the requests' scheduler waits (µs): what an
    /// undisturbed request waits (client and server share a CPU).
    pub wait_p50_us: f64,
    /// Per round: this path's rate / direct's rate in the same round.
    pub vs_direct: MedianCi,
    /// Per round: p50, p90 and p99 minus direct's, µs.
    pub added_p50_us: MedianCi,
    pub added_p90_us: MedianCi,
    pub added_p99_us: MedianCi,
    /// Per round: p99 over requests not preempted minus direct's, µs.
    pub added_p99_quiet_us: MedianCi,
    /// Flatness: per round, this count's rate / the fewest services' rate.
    pub vs_fewest: Option<MedianCi>,
    /// Each round's p50, µs, in round order (placement effects show here).
    pub round_p50_us: Vec<f64>,
}

/// The kernel's run time of one socket program over a phase.
#[derive(Clone, Debug, Serialize)]
pub struct ProgCost {
    pub services: u32,
    /// The phase's path ("xlb socket LB", "direct, in xlb's cgroup").
    pub path: String,
    pub proto: String,
    /// The program (its name) and attach type.
    pub prog: String,
    pub calls: u64,
    pub ns_per_call: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EwReport {
    pub rounds: u32,
    pub requests: usize,
    pub pin: Option<(usize, usize)>,
    /// iptables-restore time per service count, s.
    pub kp_restore_s: Vec<(u32, f64)>,
    /// xlb apply time per service count, s.
    pub xlb_apply_s: Vec<(u32, f64)>,
    pub rows: Vec<EwRow>,
    pub prog_cost: Vec<ProgCost>,
    /// Why the program costs are missing, if they are.
    pub prog_cost_error: Option<String>,
}

struct Xlb {
    services: u32,
    /// LoadOptions::sock_cookie_records.
    cookie: bool,
    cgroup: lab::cgroup::Cgroup,
    pins: PinDir,
    dp: Option<Dataplane>,
}

struct Rig {
    pod: NamedNetns,
    nodekp: NamedNetns,
    /// node and srv: kept for the rig's lifetime (deleted on drop).
    _others: [NamedNetns; 2],
    /// One xlb datapath per service count, each attached at its own cgroup
    /// (so that every count is measured in the same rounds).
    xlb: Vec<Xlb>,
    server: Option<Child>,
    probe: PathBuf,
    /// The client's CPU.
    client_cpu: Option<usize>,
    tmp: PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        for x in &mut self.xlb {
            let _ = Dataplane::detach_all(x.pins.path());
            x.dp.take();
            let _ = x.cgroup.remove();
        }
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

fn ip(ns: &NamedNetns, args: &[&str]) -> Result<()> {
    ns.ip(args).map(drop).with_context(|| format!("ip {} in {}", args.join(" "), ns.name()))
}

/// A veth pair between two namespaces.
fn veth(a: &NamedNetns, an: &str, b: &NamedNetns, bn: &str) -> Result<()> {
    testkit::netns::run(
        "ip",
        &[
            "link",
            "add",
            an,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            bn,
            "netns",
            b.name(),
        ],
    )?;
    ip(a, &["link", "set", an, "up"])?;
    ip(b, &["link", "set", bn, "up"])
}

fn sysctl(ns: &NamedNetns, kv: &str) -> Result<()> {
    ns.exec("sysctl", &["-qw", kv]).map(drop).with_context(|| format!("sysctl {kv}"))
}

impl Rig {
    fn build(counts: &[u32], pin: Option<(usize, usize)>) -> Result<Rig> {
        let probe = std::env::current_exe()?.with_file_name("xlb-probe");
        if !probe.is_file() {
            bail!("{}: not built (cargo build --release -p xlb-lab)", probe.display());
        }
        let pod = NamedNetns::create("ewpod")?;
        let node = NamedNetns::create("ewnode")?;
        let nodekp = NamedNetns::create("ewnodekp")?;
        let srv = NamedNetns::create("ewsrv")?;
        veth(&pod, "c0", &node, "n0")?;
        veth(&node, "n1", &srv, "s0")?;
        veth(&pod, "c1", &nodekp, "k0")?;
        veth(&nodekp, "k1", &srv, "s1")?;
        ip(&pod, &["addr", "add", &format!("{POD}/24"), "dev", "c0"])?;
        ip(&pod, &["addr", "add", &format!("{POD_KP}/24"), "dev", "c1"])?;
        ip(&pod, &["route", "add", "default", "via", "10.244.1.1"])?;
        ip(
            &pod,
            &["route", "add", "10.96.0.0/12", "via", "10.244.3.1", "src", &POD_KP.to_string()],
        )?;
        ip(&node, &["addr", "add", "10.244.1.1/24", "dev", "n0"])?;
        ip(&node, &["addr", "add", "10.244.2.1/24", "dev", "n1"])?;
        ip(&nodekp, &["addr", "add", "10.244.3.1/24", "dev", "k0"])?;
        ip(&nodekp, &["addr", "add", "10.244.2.2/24", "dev", "k1"])?;
        ip(&srv, &["addr", "add", &format!("{SRV}/24"), "dev", "s0"])?;
        ip(&srv, &["route", "add", "10.244.1.0/24", "via", "10.244.2.1", "dev", "s0"])?;
        // Replies to the kube-proxy path's pod address go back through nodekp.
        ip(&srv, &["route", "add", "10.244.3.0/24", "via", "10.244.2.2", "dev", "s1", "onlink"])?;
        for ns in [&node, &nodekp, &srv] {
            sysctl(ns, "net.ipv4.ip_forward=1")?;
            sysctl(ns, "net.ipv4.conf.all.rp_filter=0")?;
            sysctl(ns, "net.ipv4.conf.default.rp_filter=0")?;
        }
        sysctl(&srv, "net.ipv4.conf.s1.rp_filter=0")?;
        let root = lab::cgroup::root()?;
        // The agent's xlb_sock_cookie (and so xlb_sock_mark) size: the cost
        // of a record's lookup depends on how much of its buckets' array
        // stays in cache.
        let sizes = MapSizes {
            services: 16384,
            frontends: 65536,
            backends: 65536,
            sock_states: MapSizes::default().sock_states,
            ..MapSizes::small()
        };
        let mut xlb = Vec::new();
        for &n in counts {
            for cookie in [false, true] {
                let tag = if cookie { "c" } else { "" };
                let cgroup = lab::cgroup::Cgroup::create(
                    root.join(format!("xlbperf{}-eastwest-{n}{tag}", std::process::id())),
                )?;
                let pins = PinDir::new(&format!("eastwest{n}{tag}"));
                let opts = LoadOptions {
                    sizes,
                    sock_cookie_records: cookie,
                    ..LoadOptions::small(pins.path())
                };
                let mut dp = Dataplane::load(&opts).context("loading the datapath")?;
                dp.attach_sock(cgroup.path()).context("attaching the socket programs")?;
                xlb.push(Xlb { services: n, cookie, cgroup, pins, dp: Some(dp) });
            }
        }
        let tmp = std::env::temp_dir().join(format!("xlbperf{}-eastwest", std::process::id()));
        std::fs::create_dir_all(&tmp)?;
        let mut server = srv.nsenter(&probe);
        server
            .args([
                "serve",
                "--name",
                "srv",
                "--serial",
                "--tcp",
                "80",
                "--udp",
                &UDP_TARGET_PORT.to_string(),
            ])
            .stdout(Stdio::piped());
        pin_cpu(&mut server, pin.map(|p| p.1));
        let mut server = server.spawn().context("starting the server")?;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(server.stdout.as_mut().expect("piped")),
            &mut line,
        )?;
        Ok(Rig {
            pod,
            nodekp,
            _others: [node, srv],
            xlb,
            server: Some(server),
            probe,
            client_cpu: pin.map(|p| p.0),
            tmp,
        })
    }

    /// xlb holds `n` services, the measured ones among them.
    fn apply_xlb(&self, x: &Xlb) -> Result<Duration> {
        let n = x.services;
        let fillers = synthetic(n.saturating_sub(1), 2, Ipv4Addr::new(10, 101, 0, 1), 80, 8080);
        let mut services: Vec<Service> = fillers
            .iter()
            .map(|s| {
                let mut svc = Service::new(ServiceKey::new("bench", &s.name, "http"));
                svc.sock_frontends = vec![Frontend {
                    addr: s.cluster_ip.into(),
                    port: s.port,
                    proto: Proto::Tcp,
                    kind: FrontendKind::ClusterIp,
                }];
                svc.backends = s
                    .endpoints
                    .iter()
                    .map(|e| {
                        Backend::new((*e.ip()).into(), e.port(), Ipv4Addr::new(10, 0, 0, 11).into())
                    })
                    .collect();
                svc.maglev_size = 251;
                svc
            })
            .collect();
        for (name, port, proto, target) in
            [("measured", 80, Proto::Tcp, 80), ("measured-udp", 53, Proto::Udp, UDP_TARGET_PORT)]
        {
            let mut svc = Service::new(ServiceKey::new("bench", name, "p"));
            svc.sock_frontends = vec![Frontend {
                addr: CLUSTER_IP.into(),
                port,
                proto,
                kind: FrontendKind::ClusterIp,
            }];
            svc.backends =
                vec![Backend::new(SRV.into(), target, Ipv4Addr::new(10, 0, 0, 12).into())];
            svc.maglev_size = 251;
            services.push(svc);
        }
        let mut d = Datapath::open(x.pins.path())?;
        let t0 = Instant::now();
        d.apply(&Desired::new(NodeConfig::default(), services)).context("applying the services")?;
        Ok(t0.elapsed())
    }

    /// nodekp holds kube-proxy's iptables ruleset for `n` services.
    fn apply_kube_proxy(&self, n: u32) -> Result<Duration> {
        let mut svcs = synthetic(n.saturating_sub(1), 2, Ipv4Addr::new(10, 101, 0, 1), 80, 8080);
        let mut measured = synthetic(1, 1, Ipv4Addr::new(10, 102, 0, 1), 80, 80).remove(0);
        measured.name = "measured".into();
        measured.cluster_ip = CLUSTER_IP;
        measured.lb_ip = None;
        measured.endpoints = vec![SocketAddrV4::new(SRV, 80)];
        svcs.push(measured);
        let rules = iptables_restore(&svcs, &KpConfig::default())?;
        let path = self.tmp.join("kube-proxy.rules");
        std::fs::write(&path, rules)?;
        let t0 = Instant::now();
        // Not --noflush: the tables in the file replace what was there.
        let mut cmd = self.nodekp.command("iptables-restore");
        cmd.arg(&path);
        let out = cmd.output().context("iptables-restore")?;
        if !out.status.success() {
            bail!(
                "iptables-restore in {}: {}",
                self.nodekp.name(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(t0.elapsed())
    }

    /// Runs xlb-probe in the pod; `hooked`: in the cgroup of the xlb
    /// datapath holding that many services. The time of each request, µs,
    /// and the failures. Every answer must be the server's and must come,
    /// as the socket reports it (getpeername for TCP, recvfrom's source for
    /// UDP), from the address the client asked for (args[1]): the service
    /// address on the xlb and kube-proxy paths, so each timed request did
    /// its whole translation, reverse included; anything else is an error.
    fn probe(&self, args: &[&str], hooked: Option<Hooked>) -> Result<Sample> {
        let mut cmd = self.pod.nsenter(&self.probe);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(server) = &self.server {
            cmd.args(["--watch", &server.id().to_string()]);
        }
        pin_cpu(&mut cmd, self.client_cpu);
        if let Some((n, cookie)) = hooked {
            let x = self
                .xlb
                .iter()
                .find(|x| x.services == n && x.cookie == cookie)
                .context("no such xlb")?;
            x.cgroup.join_before_exec(&mut cmd);
        }
        let out = cmd.output().context("running xlb-probe")?;
        let mut us = Vec::new();
        let mut wait = Vec::new();
        let mut failures = 0;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            let t = v["ns"].as_f64().map(|ns| ns / 1e3).or_else(|| v["us"].as_f64());
            if v["ok"] != serde_json::Value::Bool(true) {
                failures += 1;
                continue;
            }
            let seen = v.get("peer").or_else(|| v.get("from")).and_then(|s| s.as_str());
            if seen != args.get(1).copied() || v["body"].as_str() != Some("srv") {
                bail!("xlb-probe {}: an answer not from the target: {line}", args.join(" "));
            }
            us.push(t.context("an answer without its time")?);
            wait.push(v["wait_ns"].as_f64().context("an answer without its scheduler wait")? / 1e3);
        }
        if us.is_empty() {
            bail!(
                "xlb-probe {}: no answer ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("")
            );
        }
        Ok((us, failures, wait))
    }
}

/// Runs the command (and what it execs) on `cpu` only.
fn pin_cpu(cmd: &mut Command, cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    // SAFETY: between fork and exec only sched_setaffinity on a set built
    // on the stack.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn as_str(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

/// The xlb instance a client joins the cgroup of: its service count and
/// whether it keeps records in xlb_sock_cookie.
type Hooked = (u32, bool);

/// One path of a measurement: its name, xlb-probe's arguments, the xlb
/// instance whose cgroup the client joins, if any.
type Path<'a> = (String, &'a [String], Option<Hooked>);

/// One path's round: the time of each request (µs), the failures, each
/// request's scheduler wait (µs; xlb-probe --watch).
type Sample = (Vec<f64>, usize, Vec<f64>);

/// Per path, per round.
type Rounds = Vec<Vec<Sample>>;

/// A request whose client and server together waited runnable more than
/// this (µs) beyond the path's median wait had the core taken by another
/// process. Undisturbed requests of a path wait alike (client and server
/// take turns on one CPU: ~17-22 µs per TCP request, tight to ±2 µs); the
/// stalls that set the raw p99 last milliseconds.
const PREEMPT_MARGIN_US: f64 = 5.0;

/// The wait above which a request of these rounds counts as preempted.
fn wait_limit(rounds: &[Sample]) -> f64 {
    let waits: Vec<f64> = rounds.iter().flat_map(|r| r.2.iter().copied()).collect();
    quantile(&waits, 0.5) + PREEMPT_MARGIN_US
}

/// The times of the requests not preempted.
fn quiet(r: &Sample, limit: f64) -> Vec<f64> {
    r.0.iter().zip(&r.2).filter(|(_, &w)| w <= limit).map(|(&t, _)| t).collect()
}

/// Warms every path up (neighbours, conntrack; fails early), then
/// `rounds` rounds over the paths, each round in a rotated order.
fn measure(rig: &Rig, paths: &[Path], rounds: u32) -> Result<Rounds> {
    for (name, args, hooked) in paths {
        let mut a = as_str(args);
        if let Some(count) = a.iter().position(|x| *x == "--count") {
            a[count + 1] = "50";
        }
        rig.probe(&a, *hooked).with_context(|| format!("warming up {name}"))?;
    }
    let mut out = vec![Vec::new(); paths.len()];
    for round in 0..rounds as usize {
        for k in 0..paths.len() {
            let i = (k + round) % paths.len();
            out[i].push(rig.probe(&as_str(paths[i].1), paths[i].2)?);
        }
    }
    Ok(out)
}

/// A round's rate: from the 10 %-trimmed mean time.
fn round_rate(us: &[f64]) -> f64 {
    1e6 / trimmed_mean(us, 0.1)
}

const CONF: f64 = 0.95;
const RESAMPLES: usize = 2000;

/// Rows for `paths` (path 0: direct) from their rounds; `fewest`: the index
/// of the path every other is also divided by, round by round (flatness).
fn rows(
    table: &str,
    proto: &str,
    services: u32,
    paths: &[Path],
    m: &Rounds,
    fewest: Option<usize>,
) -> Vec<EwRow> {
    let per_round = |i: usize, f: &dyn Fn(&[f64], &[f64]) -> f64| -> Vec<f64> {
        m[i].iter().zip(&m[0]).map(|((us, _, _), (d, _, _))| f(us, d)).collect()
    };
    let limits: Vec<f64> = m.iter().map(|r| wait_limit(r)).collect();
    paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let all: Vec<f64> = m[i].iter().flat_map(|(us, _, _)| us.iter().copied()).collect();
            let waits: Vec<f64> = m[i].iter().flat_map(|r| r.2.iter().copied()).collect();
            let calm: Vec<f64> = m[i].iter().flat_map(|r| quiet(r, limits[i])).collect();
            let vs = |j: usize| {
                let r: Vec<f64> = m[i]
                    .iter()
                    .zip(&m[j])
                    .map(|((us, _, _), (b, _, _))| round_rate(us) / round_rate(b))
                    .collect();
                median_ci(&r, CONF, RESAMPLES)
            };
            EwRow {
                table: table.into(),
                services: p.2.map_or(services, |h| h.0),
                path: p.0.clone(),
                proto: proto.into(),
                rounds: m[i].len(),
                requests: all.len(),
                failures: m[i].iter().map(|r| r.1).sum(),
                per_sec_trimmed: 1e6 / trimmed_mean(&all, 0.1),
                p50_us: quantile(&all, 0.5),
                p90_us: quantile(&all, 0.9),
                p99_us: quantile(&all, 0.99),
                stalled: {
                    let slow = 10.0 * quantile(&all, 0.5);
                    all.iter().filter(|&&t| t > slow).count() as f64 / all.len().max(1) as f64
                },
                preempted: 1.0 - calm.len() as f64 / all.len().max(1) as f64,
                p99_quiet_us: quantile(&calm, 0.99),
                wait_p50_us: quantile(&waits, 0.5),
                vs_direct: vs(0),
                added_p50_us: median_ci(
                    &per_round(i, &|us, d| quantile(us, 0.5) - quantile(d, 0.5)),
                    CONF,
                    RESAMPLES,
                ),
                added_p90_us: median_ci(
                    &per_round(i, &|us, d| quantile(us, 0.9) - quantile(d, 0.9)),
                    CONF,
                    RESAMPLES,
                ),
                added_p99_us: median_ci(
                    &per_round(i, &|us, d| quantile(us, 0.99) - quantile(d, 0.99)),
                    CONF,
                    RESAMPLES,
                ),
                added_p99_quiet_us: median_ci(
                    &m[i]
                        .iter()
                        .zip(&m[0])
                        .map(|(r, d)| {
                            quantile(&quiet(r, limits[i]), 0.99)
                                - quantile(&quiet(d, limits[0]), 0.99)
                        })
                        .collect::<Vec<_>>(),
                    CONF,
                    RESAMPLES,
                ),
                vs_fewest: fewest.filter(|_| i > 0).map(vs),
                round_p50_us: m[i].iter().map(|(us, _, _)| quantile(us, 0.5)).collect(),
            }
        })
        .collect()
}

/// The kernel's per-program run-time statistics while the returned fd is
/// open (BPF_ENABLE_STATS: reference counted, so other users' setting is
/// left alone).
fn enable_bpf_stats() -> Result<OwnedFd> {
    const BPF_ENABLE_STATS: libc::c_long = 32;
    // union bpf_attr: enable_stats.type = BPF_STATS_RUN_TIME (0), rest zero.
    let attr = [0u8; 64];
    // SAFETY: the attribute buffer outlives the call; the kernel copies it.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, attr.as_ptr(), attr.len()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("bpf(BPF_ENABLE_STATS)");
    }
    // SAFETY: a new fd the kernel gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn bpftool_json(args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new("bpftool").arg("-j").args(args).output().context("running bpftool")?;
    if !out.status.success() {
        bail!("bpftool {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("bpftool {}", args.join(" ")))
}

/// (program, run_time_ns, run_cnt) of every program attached at `cgroup`.
fn prog_stats(cgroup: &std::path::Path) -> Result<Vec<(String, u64, u64)>> {
    let attached = bpftool_json(&["cgroup", "show", &cgroup.to_string_lossy()])?;
    let mut out = Vec::new();
    for p in attached.as_array().context("bpftool cgroup show: not a list")? {
        let id = p["id"].as_u64().context("bpftool cgroup show: no id")?;
        let info = bpftool_json(&["prog", "show", "id", &id.to_string()])?;
        let name = format!(
            "{} ({})",
            p["name"].as_str().unwrap_or("?"),
            p["attach_type"].as_str().unwrap_or("?")
        );
        out.push((
            name,
            info["run_time_ns"].as_u64().unwrap_or(0),
            info["run_cnt"].as_u64().unwrap_or(0),
        ));
    }
    Ok(out)
}

/// Runs `path` for `rounds` rounds with run-time statistics on and returns
/// each program's calls and cost over them (programs not called left out).
fn prog_cost(rig: &Rig, path: &Path, proto: &str, rounds: u32) -> Result<Vec<ProgCost>> {
    let (n, cookie) = path.2.context("a path outside xlb's cgroup runs no program")?;
    let x =
        rig.xlb.iter().find(|x| x.services == n && x.cookie == cookie).context("no such xlb")?;
    let before = prog_stats(x.cgroup.path())?;
    for _ in 0..rounds {
        rig.probe(&as_str(path.1), path.2)?;
    }
    let after = prog_stats(x.cgroup.path())?;
    Ok(after
        .into_iter()
        .filter_map(|(prog, t, c)| {
            let (_, t0, c0) = before.iter().find(|b| b.0 == prog)?;
            let calls = c.checked_sub(*c0).filter(|&c| c > 0)?;
            Some(ProgCost {
                services: n,
                path: path.0.clone(),
                proto: proto.into(),
                prog,
                calls,
                ns_per_call: t.saturating_sub(*t0) as f64 / calls as f64,
            })
        })
        .collect())
}

pub fn run(opts: &EwOpts) -> Result<EwReport> {
    let rig = Rig::build(&opts.services, opts.pin).context("building the east-west rig")?;
    let n = opts.requests.to_string();
    let tcp_direct = ["tcp".to_string(), format!("{SRV}:80"), "--count".into(), n.clone()];
    let tcp_svc = ["tcp".to_string(), format!("{CLUSTER_IP}:80"), "--count".into(), n.clone()];
    let udp = |target: String| {
        ["udp-hold", &target, "--unconnected", "--interval-ms", "0", "--count", &n]
            .map(String::from)
    };
    let udp_direct = udp(format!("{SRV}:{UDP_TARGET_PORT}"));
    let udp_svc = udp(format!("{CLUSTER_IP}:53"));
    let mut report = EwReport {
        rounds: opts.rounds,
        requests: opts.requests,
        pin: opts.pin,
        kp_restore_s: Vec::new(),
        xlb_apply_s: Vec::new(),
        rows: Vec::new(),
        prog_cost: Vec::new(),
        prog_cost_error: None,
    };
    for x in &rig.xlb {
        let t = rig.apply_xlb(x).with_context(|| format!("xlb at {} services", x.services))?;
        if x.cookie {
            report.xlb_apply_s.push((x.services, t.as_secs_f64()));
        }
    }
    let direct = || ("direct".to_string(), &tcp_direct[..], None);
    // The pod IP from inside xlb's cgroup: the socket programs run and find
    // no service (what a pod meets reaching a pod IP on a node with xlb),
    // telling the hooks' cost from translation's. The default: records in
    // xlb_sock_cookie (sock_release on every socket, skipped by the mark).
    let in_cgroup =
        |svcs| ("direct, in xlb's cgroup".to_string(), &tcp_direct[..], Some((svcs, true)));
    let xlb = |svcs| ("xlb socket LB".to_string(), &tcp_svc[..], Some((svcs, true)));
    // The same with every record in socket storage
    // (`--socket-lb-records=storage`: no sock_release).
    let in_cgroup_s = |svcs| {
        (
            "direct, in xlb's cgroup (storage records)".to_string(),
            &tcp_direct[..],
            Some((svcs, false)),
        )
    };
    let xlb_s =
        |svcs| ("xlb socket LB (storage records)".to_string(), &tcp_svc[..], Some((svcs, false)));
    // Per service count: direct, in xlb's cgroup, xlb, kube-proxy.
    for &svcs in &opts.services {
        let kp = rig.apply_kube_proxy(svcs).with_context(|| format!("kube-proxy at {svcs}"))?;
        report.kp_restore_s.push((svcs, kp.as_secs_f64()));
        let paths = [
            direct(),
            in_cgroup(svcs),
            xlb(svcs),
            in_cgroup_s(svcs),
            xlb_s(svcs),
            ("kube-proxy iptables".to_string(), &tcp_svc[..], None),
        ];
        let m =
            measure(&rig, &paths, opts.rounds).with_context(|| format!("at {svcs} services"))?;
        report.rows.extend(rows("by count", "tcp", svcs, &paths, &m, None));
    }
    // Flatness: every xlb instance in the same rounds, beside direct; each
    // also divided by the fewest services' rate of its round.
    let mut paths = vec![direct()];
    paths.extend(
        opts.services
            .iter()
            .map(|&n| (format!("xlb socket LB, {n} services"), &tcp_svc[..], Some((n, true)))),
    );
    let m = measure(&rig, &paths, opts.rounds).context("xlb at every count")?;
    report.rows.extend(rows("flatness", "tcp", 0, &paths, &m, Some(1)));
    // UDP at the largest count: request/answer on one unconnected socket.
    let svcs = *opts.services.last().unwrap_or(&1);
    let udp_paths = [
        ("direct".to_string(), &udp_direct[..], None),
        ("direct, in xlb's cgroup".to_string(), &udp_direct[..], Some((svcs, true))),
        ("xlb socket LB".to_string(), &udp_svc[..], Some((svcs, true))),
        (
            "direct, in xlb's cgroup (storage records)".to_string(),
            &udp_direct[..],
            Some((svcs, false)),
        ),
        ("xlb socket LB (storage records)".to_string(), &udp_svc[..], Some((svcs, false))),
    ];
    let m = measure(&rig, &udp_paths, opts.rounds).context("UDP")?;
    report.rows.extend(rows("udp", "udp", svcs, &udp_paths, &m, None));
    // The programs' own cost, phase by phase (statistics on only here: they
    // add two clock reads to every program run).
    let cost = (|| -> Result<Vec<ProgCost>> {
        let _stats = enable_bpf_stats()?;
        let k = (opts.rounds / 4).max(5);
        let mut out = Vec::new();
        for &svcs in &opts.services {
            out.extend(prog_cost(&rig, &xlb(svcs), "tcp", k)?);
            out.extend(prog_cost(&rig, &xlb_s(svcs), "tcp", k)?);
        }
        out.extend(prog_cost(&rig, &in_cgroup(svcs), "tcp", k)?);
        out.extend(prog_cost(&rig, &in_cgroup_s(svcs), "tcp", k)?);
        for p in &udp_paths[1..] {
            out.extend(prog_cost(&rig, p, "udp", k)?);
        }
        Ok(out)
    })();
    match cost {
        Ok(c) => report.prog_cost = c,
        Err(e) => report.prog_cost_error = Some(format!("{e:#}")),
    }
    drop(rig);
    Ok(report)
}

fn ci(m: &MedianCi, digits: usize) -> String {
    format!("{:.*} [{:.*}, {:.*}]", digits, m.median, digits, m.lo, digits, m.hi)
}

fn iqr(m: &MedianCi, digits: usize) -> String {
    format!("{:.*} – {:.*}", digits, m.q1, digits, m.q3)
}

impl EwReport {
    pub fn markdown(&self) -> String {
        let pin = self.pin.map_or("not pinned".to_string(), |(c, s)| {
            format!("client pinned to CPU {c}, server to CPU {s}")
        });
        let mut s = format!(
            "From a pod to a service on another pod across a node (veth), {} rounds × {} \
             requests per path, the paths of a table in every round in a rotated order; one \
             connection per request (connect, getpeername, HTTP request, answer, close; the \
             server answers on its accepting thread); {pin}. Per round, a path's rate is from \
             its 10 %-trimmed mean time and is divided by direct's rate of the same round; \
             `vs direct` is the median of those per-round ratios [95 % bootstrap interval], \
             IQR their interquartile range; added p50/p99: median per-round difference from \
             direct [95 % interval]; stalled: requests slower than 10 × p50 (another process \
             given the core mid-request), which set p99 whenever they pass 1 %. preempted: \
             requests during which the client and the server waited runnable (run_delay of \
             /proc/<tid>/schedstat, read by xlb-probe outside the timed span) more than \
             {PREEMPT_MARGIN_US} µs beyond the path's median wait (wait p50: an undisturbed \
             request's wait), left out of the un-preempted p99 \
             and its per-round added p99 (raw p99 and added p99 keep every request). direct: the pod IP; in xlb's cgroup: the pod IP with \
             xlb's socket programs running (no service found); xlb: the ClusterIP translated \
             at connect(); kube-proxy iptables: the ClusterIP DNAT'd by the node's kube-proxy \
             ruleset (measured service last). xlb keeps translated sockets' records in a \
             preallocated map keyed by socket cookie (the default; sock_release on every \
             socket, untranslated ones skipped by their mark); (storage records): a second \
             xlb datapath, at its own cgroup, with every record in socket storage \
             (`--socket-lb-records=storage`).\n\n",
            self.rounds, self.requests
        );
        for (table, title) in [
            ("by count", "TCP, per service count (the four paths in the same rounds)"),
            (
                "flatness",
                "TCP, xlb holding 1 / 1k / 10k services (one datapath per count, each at its \
                 own cgroup), all in the same rounds beside direct; vs fewest: per-round rate \
                 over the fewest services' rate",
            ),
            (
                "udp",
                "UDP request/answer on one unconnected socket (sendmsg translation and recvmsg \
                 reverse translation on every datagram)",
            ),
        ] {
            s.push_str(&format!("{title}:\n\n"));
            s.push_str(
                "| services | path | req/s (all rounds) | vs direct [95 %] | IQR | p50 µs | p90 µs \
                 | p99 µs | stalled | added p50 µs [95 %] | added p90 µs [95 %] | added p99 µs \
                 [95 %] | preempted (left out) | wait p50 µs | p99 µs un-preempted | added p99 µs \
                 un-preempted [95 %] | vs fewest [95 %] | failures |\n",
            );
            s.push_str(
                "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            );
            for r in self.rows.iter().filter(|r| r.table == table) {
                let direct = r.path == "direct";
                let services =
                    if direct && table == "flatness" { "-".into() } else { r.services.to_string() };
                let (vs, q, a50, a90, a99, a99q) = if direct {
                    ("1".into(), "-".into(), "-".into(), "-".into(), "-".into(), "-".into())
                } else {
                    (
                        ci(&r.vs_direct, 3),
                        iqr(&r.vs_direct, 3),
                        ci(&r.added_p50_us, 2),
                        ci(&r.added_p90_us, 2),
                        ci(&r.added_p99_us, 1),
                        ci(&r.added_p99_quiet_us, 2),
                    )
                };
                s.push_str(&format!(
                    "| {} | {} | {:.0} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} % | {} | {} | {} | {:.2} % | {:.1} | {:.1} | {} | {} | {} |\n",
                    services,
                    r.path,
                    r.per_sec_trimmed,
                    vs,
                    q,
                    r.p50_us,
                    r.p90_us,
                    r.p99_us,
                    r.stalled * 100.0,
                    a50,
                    a90,
                    a99,
                    r.preempted * 100.0,
                    r.wait_p50_us,
                    r.p99_quiet_us,
                    a99q,
                    r.vs_fewest.as_ref().map_or("-".into(), |m| ci(m, 3)),
                    r.failures
                ));
            }
            s.push('\n');
        }
        s.push_str(
            "Socket programs' own cost (kernel run time per call, BPF_ENABLE_STATS; separate \
             rounds after the measurement):\n\n",
        );
        if let Some(e) = &self.prog_cost_error {
            s.push_str(&format!("not measured: {e}\n\n"));
        } else {
            s.push_str("| services | path | proto | program | calls | ns per call |\n");
            s.push_str("|---:|---|---|---|---:|---:|\n");
            for c in &self.prog_cost {
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {:.0} |\n",
                    c.services, c.path, c.proto, c.prog, c.calls, c.ns_per_call
                ));
            }
            s.push('\n');
        }
        s.push_str("Setup time: ");
        for ((n, kp), (_, x)) in self.kp_restore_s.iter().zip(&self.xlb_apply_s) {
            s.push_str(&format!("{n} services: iptables-restore {kp:.2} s, xlb apply {x:.2} s; "));
        }
        s.push('\n');
        s
    }
}
