//! `xlb-perf readme`: the README's performance table, generated from the
//! report files of a run (perf/out/*.json) and written between the
//! README's `perf-table` markers, so the figures there are never typed by
//! hand. A report that is missing leaves its rows out and says so below the
//! table.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

const BEGIN: &str = "<!-- perf-table:begin";
const END: &str = "<!-- perf-table:end -->";

pub fn default_readme() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")
}

fn load(dir: &Path, name: &str) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).ok()?;
    serde_json::from_str(&text).ok()
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// The markdown table (with its notes) for the reports in `dir`.
pub fn table(dir: &Path) -> Result<String> {
    let mut rows: Vec<[String; 3]> = Vec::new();
    let mut missing = Vec::new();
    let mut row = |what: &str, xlb: String, base: &str| rows.push([what.into(), xlb, base.into()]);

    match load(dir, "micro") {
        Some(m) => {
            let net = |frame: &str| {
                m["rows"]
                    .as_array()
                    .and_then(|r| r.iter().find(|x| x["frame"] == frame))
                    .and_then(|x| f(&x["net_ns"]))
                    .map_or("?".into(), |v| format!("{v:.0}"))
            };
            row(
                "established TCP, UDP, IPv6 SYN, new flow (net ns/packet over XDP_PASS)",
                format!(
                    "{}, {}, {}, {}",
                    net("tcp_ack_vip.bin"),
                    net("udp_vip.bin"),
                    net("tcp6_syn_vip.bin"),
                    net(crate::micro::NEW_FLOW)
                ),
                "—",
            );
        }
        None => missing.push("micro"),
    }
    match load(dir, "pps") {
        Some(p) => {
            let ratio = |mix: &str| {
                p["mixes"]
                    .as_array()
                    .and_then(|r| r.iter().find(|x| x["mix"] == mix && x["dataplane"] == "xlb"))
                    .and_then(|x| f(&x["vs_limit"]))
                    .map_or("?".into(), |v| format!("{v:.2}"))
            };
            let generator = p["generator"].as_str().unwrap_or("XDP live frames");
            row(
                &format!(
                    "packet rate vs a trivial XDP forwarder (established / UDP / IPv6 / SYN flood; generator: {generator})"
                ),
                format!(
                    "{} / {} / {} / {}×",
                    ratio("established (1 flow)"),
                    ratio("UDP"),
                    ratio("IPv6 SYN"),
                    ratio("SYN flood (new flow/pkt)")
                ),
                "1.00",
            );
        }
        None => missing.push("pps"),
    }
    match load(dir, "cluster") {
        Some(c) => {
            let services = c["services"].as_u64().unwrap_or(0);
            let endpoints = c["endpoints"].as_u64().unwrap_or(0);
            row(
                &format!(
                    "cold start to fully programmed, {services} services × {} endpoints",
                    endpoints / services.max(1)
                ),
                format!("{:.2} s", f(&c["cold_start_s"]).unwrap_or(f64::NAN)),
                "",
            );
            if let Some(last) = c["churn"].as_array().and_then(|a| a.last()) {
                row(
                    &format!(
                        "endpoint churn at {}/s (API write → map), p50 / p99",
                        last["rate"].as_u64().unwrap_or(0)
                    ),
                    format!(
                        "{:.1} / {:.1} ms",
                        f(&last["latency_p50_ms"]).unwrap_or(f64::NAN),
                        f(&last["latency_p99_ms"]).unwrap_or(f64::NAN)
                    ),
                    "",
                );
            }
            row(
                "agent peak RSS; BPF memory of the Maglev tables",
                format!(
                    "{:.0} MiB; {:.0} MiB",
                    f(&c["rss_peak_mb"]).unwrap_or(f64::NAN),
                    f(&c["maglev_mb"]).unwrap_or(f64::NAN)
                ),
                "",
            );
        }
        None => missing.push("cluster"),
    }
    match load(dir, "compare") {
        Some(c) => {
            let ack = c["rows"]
                .as_array()
                .and_then(|r| r.iter().find(|x| x["frame"] == "tcp_ack_vip.bin"))
                .map(|x| {
                    format!(
                        "{:.1} vs {:.1} ns",
                        f(&x["tree_ns"][0]).unwrap_or(f64::NAN),
                        f(&x["rev_ns"][0]).unwrap_or(f64::NAN)
                    )
                })
                .unwrap_or_else(|| "?".into());
            let rev = c["rev"].as_str().unwrap_or("?");
            row(&format!("established IPv4, this tree vs {rev} (xlb-perf compare)"), ack, "");
        }
        None => missing.push("compare"),
    }
    if rows.is_empty() {
        bail!("no report files in {} (run xlb-perf first)", dir.display());
    }
    let mut s = String::from("| | xlb | baseline |\n|---|---|---|\n");
    for [a, b, c] in &rows {
        s.push_str(&format!("| {a} | {b} | {c} |\n"));
    }
    if !missing.is_empty() {
        s.push_str(&format!(
            "\nNot in this report set: {} (run `xlb-perf all`).\n",
            missing.join(", ")
        ));
    }
    Ok(s)
}

/// Replaces what lies between the markers of `readme` with `table`.
pub fn rewrite(readme: &Path, table: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(readme).with_context(|| format!("reading {}", readme.display()))?;
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        bail!("{}: no `{BEGIN} ... -->` / `{END}` markers", readme.display());
    };
    let body_start = b + text[b..].find("-->").context("unterminated begin marker")? + 3;
    if e < body_start {
        bail!("{}: the end marker comes before the begin marker", readme.display());
    }
    let out = format!("{}\n{}{}", &text[..body_start], table, &text[e..]);
    std::fs::write(readme, out).with_context(|| format!("writing {}", readme.display()))?;
    Ok(())
}
