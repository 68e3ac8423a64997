//! `xlb-perf eastwest`: from a pod to a service, real TCP connections (and
//! UDP requests), over three paths in interleaved rounds, at 1, 1k and 10k
//! services:
//!   - direct: the pod connects to the server pod's IP (no service);
//!   - xlb: the pod (in a cgroup where xlb's socket programs are attached)
//!     connects to the service's ClusterIP, translated once at connect();
//!     xlb holds N services;
//!   - kube-proxy iptables: the pod (no socket programs) connects to the
//!     ClusterIP; its node DNATs with kube-proxy's iptables ruleset for N
//!     services (the measured one last in KUBE-SERVICES).
//!
//!   pod ──c0── node ──── srv        direct and xlb: routed by node
//!      └─c1── nodekp ──┘            kube-proxy: DNAT'd by nodekp
//!
//! The kube-proxy path has its own node so that the other paths' new
//! connections do not walk its rules. Each request is one connection: connect, an
//! HTTP request, the answer, close (xlb-probe: the time of each, µs);
//! connection rate = requests / their summed time. UDP: request/answer on
//! one unconnected socket (sendto + recvfrom, whose source xlb shows as the
//! ClusterIP: the recvmsg reverse translation on every datagram).
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    process::{Child, Stdio},
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
    stats::{quantile, trimmed_mean},
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
}

impl Default for EwOpts {
    fn default() -> Self {
        EwOpts { services: vec![1, 1000, 10_000], rounds: 20, requests: 500 }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct EwRow {
    /// "by count", "flatness" or "udp".
    pub table: String,
    pub services: u32,
    pub path: String,
    pub proto: String,
    pub requests: usize,
    pub failures: usize,
    pub per_sec: f64,
    /// The rate from the 1 %-trimmed mean (scheduler stalls of the shared
    /// cores cut off).
    pub per_sec_trimmed: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EwReport {
    pub rounds: u32,
    pub requests: usize,
    /// iptables-restore time per service count, s.
    pub kp_restore_s: Vec<(u32, f64)>,
    /// xlb apply time per service count, s.
    pub xlb_apply_s: Vec<(u32, f64)>,
    pub rows: Vec<EwRow>,
}

struct Xlb {
    services: u32,
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
    fn build(counts: &[u32]) -> Result<Rig> {
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
        let sizes =
            MapSizes { services: 16384, frontends: 65536, backends: 65536, ..MapSizes::small() };
        let mut xlb = Vec::new();
        for &n in counts {
            let cgroup = lab::cgroup::Cgroup::create(
                root.join(format!("xlbperf{}-eastwest-{n}", std::process::id())),
            )?;
            let pins = PinDir::new(&format!("eastwest{n}"));
            let mut dp = Dataplane::load(&LoadOptions { sizes, ..LoadOptions::small(pins.path()) })
                .context("loading the datapath")?;
            dp.attach_sock(cgroup.path()).context("attaching the socket programs")?;
            xlb.push(Xlb { services: n, cgroup, pins, dp: Some(dp) });
        }
        let tmp = std::env::temp_dir().join(format!("xlbperf{}-eastwest", std::process::id()));
        std::fs::create_dir_all(&tmp)?;
        let mut server = srv.nsenter(&probe);
        server
            .args(["serve", "--name", "srv", "--tcp", "80", "--udp", &UDP_TARGET_PORT.to_string()])
            .stdout(Stdio::piped());
        let mut server = server.spawn().context("starting the server")?;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(server.stdout.as_mut().expect("piped")),
            &mut line,
        )?;
        Ok(Rig { pod, nodekp, _others: [node, srv], xlb, server: Some(server), probe, tmp })
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
    /// and the failures.
    fn probe(&self, args: &[&str], hooked: Option<u32>) -> Result<(Vec<f64>, usize)> {
        let mut cmd = self.pod.nsenter(&self.probe);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(n) = hooked {
            let x = self.xlb.iter().find(|x| x.services == n).context("no such xlb")?;
            x.cgroup.join_before_exec(&mut cmd);
        }
        let out = cmd.output().context("running xlb-probe")?;
        let mut us = Vec::new();
        let mut failures = 0;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            match v["us"].as_f64() {
                Some(t) if v["ok"] == serde_json::Value::Bool(true) => us.push(t),
                _ => failures += 1,
            }
        }
        if us.is_empty() {
            bail!(
                "xlb-probe {}: no answer ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("")
            );
        }
        Ok((us, failures))
    }
}

fn as_str(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

fn row(table: &str, services: u32, path: &str, proto: &str, us: &[f64], failures: usize) -> EwRow {
    let total: f64 = us.iter().sum();
    EwRow {
        table: table.into(),
        services,
        path: path.into(),
        proto: proto.into(),
        requests: us.len(),
        failures,
        per_sec: us.len() as f64 / (total / 1e6),
        per_sec_trimmed: 1e6 / trimmed_mean(us, 0.01),
        p50_us: quantile(us, 0.5),
        p99_us: quantile(us, 0.99),
    }
}

/// One path of a measurement: its name, xlb-probe's arguments, the xlb
/// instance (by service count) whose cgroup the client joins, if any.
type Path<'a> = (String, &'a [String], Option<u32>);

/// Warms every path up (neighbours, conntrack; fails early), then
/// `rounds` rounds over the paths in rotating order: per path, the time of
/// each request (µs) and the failures.
fn measure(rig: &Rig, paths: &[Path], rounds: u32) -> Result<Vec<(Vec<f64>, usize)>> {
    for (name, args, hooked) in paths {
        let mut a = as_str(args);
        if let Some(count) = a.iter().position(|x| *x == "--count") {
            a[count + 1] = "50";
        }
        rig.probe(&a, *hooked).with_context(|| format!("warming up {name}"))?;
    }
    let mut out = vec![(Vec::new(), 0); paths.len()];
    for round in 0..rounds as usize {
        for k in 0..paths.len() {
            let i = (k + round) % paths.len();
            let (t, f) = rig.probe(&as_str(paths[i].1), paths[i].2)?;
            out[i].0.extend(t);
            out[i].1 += f;
        }
    }
    Ok(out)
}

pub fn run(opts: &EwOpts) -> Result<EwReport> {
    let rig = Rig::build(&opts.services).context("building the east-west rig")?;
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
        kp_restore_s: Vec::new(),
        xlb_apply_s: Vec::new(),
        rows: Vec::new(),
    };
    for x in &rig.xlb {
        let t = rig.apply_xlb(x).with_context(|| format!("xlb at {} services", x.services))?;
        report.xlb_apply_s.push((x.services, t.as_secs_f64()));
    }
    let direct = || ("direct".to_string(), &tcp_direct[..], None);
    // Per service count: direct, xlb, kube-proxy.
    for &svcs in &opts.services {
        let kp = rig.apply_kube_proxy(svcs).with_context(|| format!("kube-proxy at {svcs}"))?;
        report.kp_restore_s.push((svcs, kp.as_secs_f64()));
        let paths = [
            direct(),
            // The pod IP from inside xlb's cgroup: the socket programs run
            // and find no service (what a pod meets reaching a pod IP on a
            // node with xlb), telling the hooks' cost from translation's.
            ("direct, in xlb's cgroup".to_string(), &tcp_direct[..], Some(svcs)),
            ("xlb socket LB".to_string(), &tcp_svc[..], Some(svcs)),
            ("kube-proxy iptables".to_string(), &tcp_svc[..], None),
        ];
        let m =
            measure(&rig, &paths, opts.rounds).with_context(|| format!("at {svcs} services"))?;
        for (p, (us, f)) in paths.iter().zip(m) {
            report.rows.push(row("by count", svcs, &p.0, "tcp", &us, f));
        }
    }
    // Flatness: every xlb instance in the same rounds, beside direct.
    let mut paths = vec![direct()];
    paths.extend(
        opts.services
            .iter()
            .map(|&n| (format!("xlb socket LB, {n} services"), &tcp_svc[..], Some(n))),
    );
    let m = measure(&rig, &paths, opts.rounds).context("xlb at every count")?;
    for (p, (us, f)) in paths.iter().zip(m) {
        report.rows.push(row("flatness", p.2.unwrap_or(0), &p.0, "tcp", &us, f));
    }
    // UDP at the largest count: request/answer on one unconnected socket.
    let svcs = *opts.services.last().unwrap_or(&1);
    let paths = [
        ("direct".to_string(), &udp_direct[..], None),
        ("xlb socket LB".to_string(), &udp_svc[..], Some(svcs)),
    ];
    let m = measure(&rig, &paths, opts.rounds).context("UDP")?;
    for (p, (us, f)) in paths.iter().zip(m) {
        report.rows.push(row("udp", svcs, &p.0, "udp", &us, f));
    }
    drop(rig);
    Ok(report)
}

impl EwReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "From a pod to a service on another pod across a node (veth), {} interleaved rounds \
             × {} requests per path, one connection per request (connect, HTTP request, answer, \
             close); rate = requests / their summed time. direct: the pod IP; xlb: the ClusterIP \
             translated at connect() (cgroup socket programs); kube-proxy iptables: the \
             ClusterIP DNAT'd by the node's kube-proxy ruleset (measured service last). Both \
             cores shared by client, nodes and server: compare ratios.\n\n",
            self.rounds, self.requests
        );
        for (table, title) in [
            ("by count", "TCP, per service count (direct, xlb and kube-proxy in the same rounds)"),
            (
                "flatness",
                "TCP, xlb holding 1 / 1k / 10k services (one datapath per count, each at its \
                 own cgroup), all in the same rounds beside direct",
            ),
            ("udp", "UDP request/answer on one unconnected socket (recvmsg reverse translation)"),
        ] {
            s.push_str(&format!("{title}:\n\n"));
            s.push_str("| services | path | req/s | vs direct | req/s (1 % trimmed) | vs direct | p50 µs | p99 µs | added p50 / p99 µs | failures |\n");
            s.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            let rows: Vec<&EwRow> = self.rows.iter().filter(|r| r.table == table).collect();
            for r in &rows {
                let d = rows.iter().find(|d| {
                    d.path == "direct" && (table == "flatness" || d.services == r.services)
                });
                let (vs, vs_t, added) = d.map_or(("-".into(), "-".into(), "-".into()), |d| {
                    (
                        format!("{:.3}", r.per_sec / d.per_sec),
                        format!("{:.3}", r.per_sec_trimmed / d.per_sec_trimmed),
                        format!("{:+.1} / {:+.1}", r.p50_us - d.p50_us, r.p99_us - d.p99_us),
                    )
                });
                let services = if r.path == "direct" && table == "flatness" {
                    "-".into()
                } else {
                    r.services.to_string()
                };
                s.push_str(&format!(
                    "| {} | {} | {:.0} | {} | {:.0} | {} | {:.1} | {:.1} | {} | {} |\n",
                    services,
                    r.path,
                    r.per_sec,
                    vs,
                    r.per_sec_trimmed,
                    vs_t,
                    r.p50_us,
                    r.p99_us,
                    added,
                    r.failures
                ));
            }
            s.push('\n');
        }
        let xlb: Vec<f64> = self
            .rows
            .iter()
            .filter(|r| r.table == "flatness" && r.path != "direct")
            .map(|r| r.per_sec_trimmed)
            .collect();
        if let (Some(lo), Some(hi)) =
            (xlb.iter().cloned().reduce(f64::min), xlb.iter().cloned().reduce(f64::max))
        {
            s.push_str(&format!(
                "xlb from the fewest to the most services (same rounds): trimmed req/s within \
                 {:.1} % (max/min − 1).\n",
                (hi / lo - 1.0) * 100.0
            ));
        }
        s.push_str("\nSetup time: ");
        for ((n, kp), (_, x)) in self.kp_restore_s.iter().zip(&self.xlb_apply_s) {
            s.push_str(&format!("{n} services: iptables-restore {kp:.2} s, xlb apply {x:.2} s; "));
        }
        s.push('\n');
        s
    }
}
