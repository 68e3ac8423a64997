//! Report files under perf/out/: one JSON and one markdown file per
//! scenario, CSV tables, SVG plots, and the summary `all` assembles.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

pub fn default_out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("out")
}

/// The machine a report was measured on. Per-packet and control-plane
/// figures track the host (CPU, its Spectre mitigations, the kernel) more
/// than the tree: every report carries it, and the README's table names it.
#[derive(Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// /proc/cpuinfo's model name.
    pub cpu: String,
    pub cpus: usize,
    /// `uname -r`.
    pub kernel: String,
    /// /sys/devices/system/cpu/vulnerabilities/spectre_v2, up to its first
    /// `;` (e.g. "Mitigation: Retpolines": indirect calls cost more).
    pub spectre_v2: String,
}

impl Host {
    pub fn this() -> Host {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
            .map_or("unknown CPU".into(), |(_, v)| v.trim().to_string());
        // The machine's CPUs, not this thread's affinity: benchmarks that
        // pin themselves to one core (podnet) must not report a 1-CPU host.
        let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
        let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
        let spectre_v2 = read("/sys/devices/system/cpu/vulnerabilities/spectre_v2")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        Host { cpu, cpus, kernel, spectre_v2 }
    }

    /// "AMD EPYC, 2 CPUs, Linux 6.18.44, Spectre v2: Mitigation: Retpolines".
    pub fn describe(&self) -> String {
        let mut s = format!("{}, {} CPUs, Linux {}", self.cpu, self.cpus, self.kernel);
        if !self.spectre_v2.is_empty() {
            s.push_str(&format!(", Spectre v2: {}", self.spectre_v2));
        }
        s
    }
}

/// Writes `<name>.json` (with a `host` field: `Host::this()`, when the
/// report is a JSON object) and `<name>.md`.
pub fn write<T: Serialize>(dir: &Path, name: &str, value: &T, markdown: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join(format!("{name}.json"));
    let mut v = serde_json::to_value(value)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("host".into(), serde_json::to_value(Host::this())?);
    }
    std::fs::write(&json, serde_json::to_string_pretty(&v)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let md = dir.join(format!("{name}.md"));
    std::fs::write(&md, markdown).with_context(|| format!("writing {}", md.display()))?;
    Ok(())
}

/// Writes `<name>.csv` from a header and rows.
pub fn write_csv(dir: &Path, name: &str, header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut s = header.join(",");
    s.push('\n');
    for r in rows {
        s.push_str(&r.join(","));
        s.push('\n');
    }
    let p = dir.join(format!("{name}.csv"));
    std::fs::write(&p, s).with_context(|| format!("writing {}", p.display()))
}

/// micro.csv: one row per frame.
pub fn micro_csv(dir: &Path, r: &crate::micro::MicroReport) -> Result<()> {
    let rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|x| {
            vec![
                x.frame.clone(),
                x.reason.clone(),
                format!("{:.1}", x.baseline_ns),
                format!("{:.1}", x.xlb_ns),
                format!("{:.1}", x.net_ns),
                format!("{:.1}", x.net_repeat1_ns),
                format!("{}", x.target_ns),
                x.met.to_string(),
            ]
        })
        .collect();
    write_csv(
        dir,
        "micro",
        &[
            "frame",
            "reason",
            "baseline_ns",
            "xlb_ns",
            "net_ns",
            "net_repeat1_ns",
            "target_ns",
            "met",
        ],
        &rows,
    )
}

/// pps.csv: every mix and sweep row.
pub fn pps_csv(dir: &Path, r: &crate::pps::PpsReport) -> Result<()> {
    let rows: Vec<Vec<String>> = r
        .mixes
        .iter()
        .chain(&r.sweep)
        .map(|x| {
            vec![
                x.mix.clone(),
                x.dataplane.clone(),
                x.services.to_string(),
                format!("{:.4}", x.sent_mpps),
                format!("{:.4}", x.received_mpps),
            ]
        })
        .collect();
    write_csv(dir, "pps", &["mix", "dataplane", "services", "sent_mpps", "received_mpps"], &rows)
}

/// sweep.svg: new-connection rate against the number of services.
pub fn sweep_plot(dir: &Path, r: &crate::pps::PpsReport) -> Result<()> {
    use plotters::prelude::*;
    let path = dir.join("sweep.svg");
    let root = SVGBackend::new(&path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = r.sweep.iter().map(|x| x.received_mpps).fold(0.0, f64::max) * 1.15;
    let xmax = r.sweep.iter().map(|x| x.services).max().unwrap_or(1) as f64 * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption("New connections/s through the LB vs services", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0.5f64..xmax).log_scale(), 0f64..max.max(0.01))?;
    chart.configure_mesh().x_desc("services").y_desc("Mpps received").draw()?;
    for (i, dp) in ["xlb", "kube-proxy iptables", "kube-proxy nftables"].iter().enumerate() {
        let pts: Vec<(f64, f64)> = r
            .sweep
            .iter()
            .filter(|x| x.dataplane == *dp)
            .map(|x| (x.services as f64, x.received_mpps))
            .collect();
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(*dp)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw()?;
    root.present()?;
    Ok(())
}
