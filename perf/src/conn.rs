//! `xlb-perf conn`: real TCP connections from the lab's client namespace to
//! one nginx pod over three paths side by side, in interleaved rounds:
//!   - direct: client → router → node → pod IP (no load balancer);
//!   - xlb: the VIP, through the LB's XDP program (Geneve to the node, tc
//!     decapsulates, direct server return), agents started by `xlb run`;
//!   - kube-proxy iptables: a second VIP through the same LB namespace,
//!     where iptables (N services, the measured one last) DNATs and
//!     masquerades (replies come back through the LB).
//!
//! Per path and round: short-lived connections/s (wrk, `Connection:
//! close`), request latency p50/p99/p999 on one keep-alive connection
//! (wrk's histogram; unloaded, so the difference to direct is the added
//! latency of the path), bulk throughput (iperf3 server in the pod on port
//! 80 after nginx stops: its control and data connections both go through
//! the path). One pod for all three paths: the same end host caps them all.
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{Context, Result};
use lab::{manifests::EndpointState, spec, LabSpec};
use serde::Serialize;
use xlb_perf::{
    labrig::{install_kube_proxy, XlbLab, KP_VIP},
    loadgen::{interleaved_latency, iperf3, wrk, IperfResult, WrkResult, WrkSpec},
    stats::{median, quantile},
};

#[derive(Clone, Debug)]
pub struct ConnOpts {
    pub seconds: u64,
    pub rounds: u32,
    /// Services in the kube-proxy ruleset (the measured one last).
    pub kp_services: u32,
    /// Concurrent connections of the connections/s run.
    pub cps_conns: u32,
    /// Requests per path of the interleaved latency measurement.
    pub latency_requests: usize,
}

impl Default for ConnOpts {
    fn default() -> Self {
        ConnOpts {
            seconds: 2,
            rounds: 3,
            kp_services: 1000,
            cps_conns: 8,
            latency_requests: 30_000,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ConnRow {
    pub path: String,
    pub target: String,
    pub conns_per_sec: f64,
    pub conn_errors: u64,
    /// Interleaved request-by-request latency (own driver), µs.
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// wrk, one keep-alive connection per run, medians over runs, µs.
    pub wrk_p50_us: f64,
    pub wrk_p99_us: f64,
    pub wrk_p999_us: f64,
    pub keepalive_req_per_sec: f64,
    pub gbit_per_sec: f64,
    pub retransmits: u64,
    /// Per round, as measured.
    pub cps_runs: Vec<WrkResult>,
    pub latency_runs: Vec<WrkResult>,
    pub iperf_runs: Vec<IperfResult>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConnReport {
    pub seconds: u64,
    pub rounds: u32,
    pub kp_services: u32,
    pub kp_restore_seconds: f64,
    pub latency_requests: usize,
    pub rows: Vec<ConnRow>,
}

impl ConnReport {
    pub fn row(&self, path: &str) -> Option<&ConnRow> {
        self.rows.iter().find(|r| r.path == path)
    }
}

/// One retry after a pause: on shared cores a run can time out connecting
/// (seen once in a full suite on the direct path, which crosses no LB).
fn retry<T>(
    mut f: impl FnMut() -> Result<T, xlb_perf::loadgen::LoadgenError>,
) -> Result<T, xlb_perf::loadgen::LoadgenError> {
    f().or_else(|e| {
        eprintln!("retrying after: {e}");
        std::thread::sleep(Duration::from_secs(1));
        f()
    })
}

pub const PATHS: [&str; 3] = ["direct", "xlb", "kube-proxy iptables"];

pub fn run(opts: &ConnOpts) -> Result<ConnReport> {
    let lab_spec = LabSpec { nodes: 1, pods_per_node: 1, ..LabSpec::default() };
    let rig = XlbLab::start(lab_spec, &|_| EndpointState::Ready)
        .context("starting the lab with xlb agents")?;
    let pod = spec::pod_v4(1, 1);
    // The direct path gets its own client address: the node's DSR reverse
    // translations (xlb_dsr_nat, LRU) outlive VIP connections, and a
    // direct connection reusing such a 4-tuple has its replies rewritten
    // to come from the VIP (seen as connect timeouts).
    rig.lab.run("client", "ip", &["addr", "add", "192.0.2.11/24", "dev", "eth0"])?;
    rig.lab.run(
        "client",
        "ip",
        &["route", "add", &format!("{pod}/32"), "via", "192.0.2.1", "src", "192.0.2.11"],
    )?;
    let restore = install_kube_proxy(&rig.lab, opts.kp_services, &[pod])
        .context("installing kube-proxy's iptables rules in the LB namespace")?;
    let targets: [IpAddr; 3] = [IpAddr::V4(pod), IpAddr::V4(spec::VIP_V4), IpAddr::V4(KP_VIP)];
    let scratch = rig.lab.temp_dir().to_path_buf();
    let d = Duration::from_secs(opts.seconds);
    // Warm up every path (neighbours, conntrack, caches) and fail early.
    for t in targets {
        let addr = SocketAddr::new(t, 80);
        rig.lab
            .in_ns("client", || lab::http::get(addr))?
            .with_context(|| format!("a first request to {addr}\n{}", rig.logs()))?;
    }
    let mut cps = vec![Vec::new(); 3];
    let mut lat = vec![Vec::new(); 3];
    for round in 0..opts.rounds {
        for k in 0..3 {
            let i = (k + round as usize) % 3;
            let url = format!("http://{}/", targets[i]);
            let short = WrkSpec {
                url: url.clone(),
                threads: 1,
                connections: opts.cps_conns,
                duration: d,
                close: true,
            };
            cps[i].push(retry(|| wrk(&rig.lab, "client", &short, &scratch))?);
            let one = WrkSpec { url, threads: 1, connections: 1, duration: d, close: false };
            lat[i].push(retry(|| wrk(&rig.lab, "client", &one, &scratch))?);
        }
    }
    // Latency, request by request in turn over the three paths.
    let addrs: Vec<SocketAddr> = targets.iter().map(|t| SocketAddr::new(*t, 80)).collect();
    let inter = rig
        .lab
        .in_ns("client", || interleaved_latency(&addrs, opts.latency_requests))?
        .context("interleaved latency")?;
    // Bulk: iperf3 replaces nginx in the pod, on port 80.
    rig.lab.stop_backend(&spec::pod_name(1, 1));
    let mut server = std::process::Command::new("iperf3");
    server
        .args(["-s", "-p", "80"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _server = rig.lab.spawn(&spec::pod_name(1, 1), server)?;
    std::thread::sleep(Duration::from_millis(300));
    let mut bulk = vec![Vec::new(); 3];
    for round in 0..opts.rounds {
        for k in 0..3 {
            let i = (k + round as usize) % 3;
            // The iperf3 server re-opens its listener after each test.
            std::thread::sleep(Duration::from_millis(300));
            bulk[i].push(
                retry(|| iperf3(&rig.lab, "client", targets[i], 80, d))
                    .with_context(|| format!("iperf3 via {}", PATHS[i]))?,
            );
        }
    }
    let rows = (0..3)
        .map(|i| {
            let m = |v: &[WrkResult], f: fn(&WrkResult) -> f64| {
                median(&v.iter().map(f).collect::<Vec<_>>())
            };
            ConnRow {
                path: PATHS[i].into(),
                target: targets[i].to_string(),
                conns_per_sec: m(&cps[i], |r| r.requests_per_sec),
                conn_errors: cps[i].iter().map(WrkResult::errors).sum(),
                p50_us: quantile(&inter[i], 0.5),
                p99_us: quantile(&inter[i], 0.99),
                p999_us: quantile(&inter[i], 0.999),
                wrk_p50_us: m(&lat[i], |r| r.p50_us),
                wrk_p99_us: m(&lat[i], |r| r.p99_us),
                wrk_p999_us: m(&lat[i], |r| r.p999_us),
                keepalive_req_per_sec: m(&lat[i], |r| r.requests_per_sec),
                gbit_per_sec: median(
                    &bulk[i].iter().map(|r| r.received_bps / 1e9).collect::<Vec<_>>(),
                ),
                retransmits: bulk[i].iter().map(|r| r.retransmits).sum(),
                cps_runs: cps[i].clone(),
                latency_runs: lat[i].clone(),
                iperf_runs: bulk[i].clone(),
            }
        })
        .collect();
    drop(rig);
    Ok(ConnReport {
        seconds: opts.seconds,
        rounds: opts.rounds,
        kp_services: opts.kp_services,
        kp_restore_seconds: restore.as_secs_f64(),
        latency_requests: opts.latency_requests,
        rows,
    })
}

impl ConnReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "Real TCP from the lab's client namespace to one nginx pod (same pod for every path), \
             {} interleaved rounds × {} s per measurement, medians. kube-proxy iptables: {} \
             services, the measured one last (iptables-restore {:.2} s). Both cores are shared by \
             client, router, LB, node and pod: the end hosts cap every path, compare ratios. \
             Latency p50/p99/p99.9: {} requests per path on one keep-alive connection each, \
             interleaved request by request (noise hits every path alike); wrk columns: \
             one keep-alive connection per wrk run.\n\n",
            self.rounds,
            self.seconds,
            self.kp_services,
            self.kp_restore_seconds,
            self.latency_requests
        );
        s.push_str("| path | conns/s (short-lived) | vs direct | errors | p50 µs | p99 µs | p99.9 µs | added p50 / p99 µs | wrk p50 / p99 / p99.9 µs | req/s (wrk, 1 conn) | iperf3 Gbit/s | vs direct |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let direct = self.row("direct");
        for r in &self.rows {
            let vs = |f: fn(&ConnRow) -> f64| {
                direct.map_or("-".into(), |d| format!("{:.2}", f(r) / f(d)))
            };
            let added = direct.map_or("-".into(), |d| {
                format!("{:+.1} / {:+.1}", r.p50_us - d.p50_us, r.p99_us - d.p99_us)
            });
            s.push_str(&format!(
                "| {} | {:.0} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {:.0} / {:.0} / {:.0} | {:.0} | {:.2} | {} |\n",
                r.path,
                r.conns_per_sec,
                vs(|r| r.conns_per_sec),
                r.conn_errors,
                r.p50_us,
                r.p99_us,
                r.p999_us,
                added,
                r.wrk_p50_us,
                r.wrk_p99_us,
                r.wrk_p999_us,
                r.keepalive_req_per_sec,
                r.gbit_per_sec,
                vs(|r| r.gbit_per_sec),
            ));
        }
        s
    }
}
