//! `summary.md`: the targets, each as a ratio against its baseline
//! measured in the same run, with met / not met, followed by every
//! scenario's own tables. A scenario that failed shows its error in place.
use std::fmt::Write as _;

use crate::{
    churnbench::ChurnReport, conn::ConnReport, micro::MicroReport, pps::PpsReport,
    scale::ScaleReport,
};

/// Every scenario's outcome (Err: its error text).
pub struct Results {
    pub micro: Result<MicroReport, String>,
    pub pps: Result<PpsReport, String>,
    pub conn: Result<ConnReport, String>,
    pub churn: Result<ChurnReport, String>,
    pub scale: Result<ScaleReport, String>,
    pub maglev: Result<String, String>,
    pub quick: bool,
    pub seconds: f64,
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**NOT met**"
    }
}

struct Table(String);

impl Table {
    fn new() -> Table {
        Table(
            "| target | xlb | baseline | ratio / value | verdict |\n|---|---:|---:|---:|---|\n"
                .into(),
        )
    }
    fn row(&mut self, target: &str, xlb: String, base: String, ratio: String, verdict: &str) {
        let _ = writeln!(self.0, "| {target} | {xlb} | {base} | {ratio} | {verdict} |");
    }
    fn missing(&mut self, target: &str, why: &str) {
        self.row(target, "-".into(), "-".into(), "-".into(), &format!("not measured: {why}"));
    }
}

fn sweep(p: &PpsReport, dp: &str, n: u32) -> Option<f64> {
    p.sweep.iter().find(|r| r.dataplane == dp && r.services == n).map(|r| r.received_mpps)
}

fn prog(p: &PpsReport, dp: &str, n: u32) -> Option<f64> {
    p.programming.iter().find(|r| r.dataplane == dp && r.services == n).map(|r| r.seconds)
}

fn first_line(e: &str) -> String {
    e.lines().next().unwrap_or("").chars().take(160).collect()
}

pub fn targets(r: &Results) -> String {
    let mut t = Table::new();
    match &r.pps {
        Ok(p) => {
            for m in p.mixes.iter().filter(|m| m.dataplane == "xlb") {
                let l = p
                    .mixes
                    .iter()
                    .find(|x| x.mix == m.mix && x.dataplane != "xlb")
                    .map_or(f64::NAN, |x| x.received_mpps);
                let ratio = m.received_mpps / l;
                t.row(
                    &format!("throughput ≥ 0.8× trivial forwarder: {}", m.mix),
                    format!("{:.2} Mpps", m.received_mpps),
                    format!("{l:.2} Mpps"),
                    format!("{ratio:.2}×"),
                    met(ratio >= 0.8),
                );
            }
            match (sweep(p, "xlb", 10_000), sweep(p, "kube-proxy iptables", 10_000)) {
                (Some(x), Some(i)) => t.row(
                    "new-flow rate ≥ 5× kube-proxy iptables at 10k services",
                    format!("{x:.3} Mpps"),
                    format!("{i:.3} Mpps"),
                    format!("{:.0}×", x / i),
                    met(x >= 5.0 * i),
                ),
                _ => t.missing("new-flow rate ≥ 5× iptables at 10k services", "no 10k point"),
            }
            if let (Some(x), Some(n)) =
                (sweep(p, "xlb", 10_000), sweep(p, "kube-proxy nftables", 10_000))
            {
                t.row(
                    "(beside it) new-flow rate vs kube-proxy nftables at 10k",
                    format!("{x:.3} Mpps"),
                    format!("{n:.3} Mpps"),
                    format!("{:.1}×", x / n),
                    "no target",
                );
            }
            let xs: Vec<(u32, f64)> = p
                .sweep
                .iter()
                .filter(|r| r.dataplane == "xlb")
                .map(|r| (r.services, r.received_mpps))
                .collect();
            if xs.len() >= 2 {
                let lo = xs.iter().map(|x| x.1).fold(f64::INFINITY, f64::min);
                let hi = xs.iter().map(|x| x.1).fold(0.0, f64::max);
                let first = xs[0].1;
                let worst = xs.iter().map(|x| x.1 / first).fold(f64::INFINITY, f64::min);
                let span = format!("{}..{} services", xs.first().unwrap().0, xs.last().unwrap().0);
                t.row(
                    &format!("xlb new-flow rate flat within 5 % over {span}"),
                    format!("{lo:.3}..{hi:.3} Mpps"),
                    format!("{first:.3} Mpps at {}", xs[0].0),
                    format!("worst {worst:.2}×, spread {:.1} %", (hi / lo - 1.0) * 100.0),
                    met(hi / lo <= 1.05),
                );
                if xs.last().unwrap().0 < 100_000 {
                    t.missing("… up to 100k services", "not in this run's sweep (quick mode)");
                }
            }
            match (prog(p, "xlb", 10_000), prog(p, "iptables", 10_000)) {
                (Some(x), ipt) => t.row(
                    "programming 10k services from scratch < 1 s",
                    format!("{x:.2} s"),
                    ipt.map_or("-".into(), |i| format!("iptables-restore {i:.1} s")),
                    ipt.map_or("-".into(), |i| format!("{:.0}× faster", i / x)),
                    met(x < 1.0),
                ),
                _ => t.missing("programming 10k services < 1 s", "no 10k point"),
            }
        }
        Err(e) => t.missing("packet-rate targets", &first_line(e)),
    }
    match &r.conn {
        Ok(c) => {
            if let (Some(x), Some(d)) = (c.row("xlb"), c.row("direct")) {
                let added = x.p99_us - d.p99_us;
                t.row(
                    "added p99 latency over the direct path ≤ 10 µs (1 keep-alive conn)",
                    format!("{:.0} µs", x.p99_us),
                    format!("{:.0} µs direct", d.p99_us),
                    format!("{added:+.0} µs (p50 {:+.0} µs)", x.p50_us - d.p50_us),
                    met(added <= 10.0),
                );
                for r in c.rows.iter().filter(|r| r.path != "direct") {
                    t.row(
                        &format!("end-to-end conns/s, {} vs direct (end hosts cap it)", r.path),
                        format!("{:.0}/s", r.conns_per_sec),
                        format!("{:.0}/s", d.conns_per_sec),
                        format!("{:.2}×", r.conns_per_sec / d.conns_per_sec),
                        "no target",
                    );
                    t.row(
                        &format!("bulk TCP (iperf3), {} vs direct", r.path),
                        format!("{:.2} Gbit/s", r.gbit_per_sec),
                        format!("{:.2} Gbit/s", d.gbit_per_sec),
                        format!("{:.2}×", r.gbit_per_sec / d.gbit_per_sec),
                        "no target",
                    );
                }
                if let Some(k) = c.row("kube-proxy iptables") {
                    t.row(
                        "end-to-end conns/s, xlb vs kube-proxy iptables",
                        format!("{:.0}/s", x.conns_per_sec),
                        format!("{:.0}/s", k.conns_per_sec),
                        format!("{:.2}×", x.conns_per_sec / k.conns_per_sec),
                        "no target",
                    );
                }
            }
        }
        Err(e) => t.missing("connection-level targets", &first_line(e)),
    }
    match &r.churn {
        Ok(c) => {
            t.row(
                "churn: broken connections on unaffected backends = 0",
                c.broken_unaffected.to_string(),
                format!("{} held", c.held),
                "-".into(),
                met(c.broken_unaffected == 0),
            );
            t.row(
                "churn: failed new connections (graceful changes)",
                c.new_failed.to_string(),
                format!("{} ok", c.new_ok),
                "-".into(),
                met(c.new_failed == 0),
            );
            let retired: usize = c.steps.iter().map(|s| s.new_on_retired_after_apply).sum();
            t.row(
                "churn: new connections on a retired backend after apply",
                retired.to_string(),
                "-".into(),
                "-".into(),
                if retired == 0 { "met" } else { "**NOT met** (see churn)" },
            );
        }
        Err(e) => t.missing("churn", &first_line(e)),
    }
    match &r.micro {
        Ok(m) => {
            let ok = m.rows.iter().filter(|x| x.met).count();
            t.row(
                "datapath microbenchmark per-frame targets (#2)",
                format!("{ok} of {} met", m.rows.len()),
                "-".into(),
                "-".into(),
                met(ok == m.rows.len()),
            );
        }
        Err(e) => t.missing("microbenchmark", &first_line(e)),
    }
    t.0
}

pub fn render(r: &Results) -> String {
    let mut s = format!(
        "# xlb benchmark report\n\nWhole suite{}: {:.0} s on this machine (2 cores, shared \
         with everything else running on it; connection-level numbers are capped by the end \
         hosts on those cores, read them as ratios).\n\n## Targets (ratios measured in this run)\n\n",
        if r.quick { " (--quick: smaller, noisier)" } else { "" },
        r.seconds
    );
    s.push_str(&targets(r));
    let section = |s: &mut String, title: &str, body: Result<String, &String>| {
        let _ = write!(s, "\n## {title}\n\n");
        match body {
            Ok(b) => s.push_str(&b),
            Err(e) => {
                let _ = writeln!(s, "FAILED: {e}");
            }
        }
    };
    section(&mut s, "Datapath microbenchmark", r.micro.as_ref().map(|m| m.markdown()));
    section(&mut s, "Packet rate", r.pps.as_ref().map(|p| p.markdown()));
    section(
        &mut s,
        "Connections: direct vs xlb vs kube-proxy iptables",
        r.conn.as_ref().map(|c| c.markdown()),
    );
    section(&mut s, "Churn under load", r.churn.as_ref().map(|c| c.markdown()));
    section(
        &mut s,
        "Scale: backends per service, connection-table fill",
        r.scale.as_ref().map(|c| c.markdown()),
    );
    section(&mut s, "Maglev quality", r.maglev.as_ref().cloned());
    s
}
