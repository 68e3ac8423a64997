//! `xlb-perf readme`: the README's performance table, generated from the
//! report files of a run (perf/out/*.json) and written between the
//! README's `perf-table` markers, so the figures there are never typed by
//! hand. A report that is missing leaves its rows out and says so below the
//! table; the machine each report was measured on heads the table.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::report::Host;

const BEGIN: &str = "<!-- perf-table:begin";
const END: &str = "<!-- perf-table:end -->";

pub fn default_readme() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")
}

fn load(dir: &Path, name: &str) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).ok()?;
    serde_json::from_str(&text).ok()
}

/// "Measured on HOST." — or, when the reports come from more than one
/// machine, each host with the reports measured on it. A report written
/// before reports carried their host says so.
fn hosts_line(reports: &[(&str, &Value)]) -> String {
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    for (name, v) in reports {
        let host = serde_json::from_value::<Host>(v["host"].clone())
            .map_or("a host the report does not record".into(), |h| h.describe());
        match groups.iter_mut().find(|(h, _)| *h == host) {
            Some((_, names)) => names.push(name),
            None => groups.push((host, vec![name])),
        }
    }
    let parts: Vec<String> = match groups.as_slice() {
        [(h, _)] => vec![h.clone()],
        _ => groups.iter().map(|(h, names)| format!("{h} ({})", names.join(", "))).collect(),
    };
    format!("Measured on {}.\n\n", parts.join("; "))
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// The markdown table (with its notes) for the reports in `dir`.
pub fn table(dir: &Path) -> Result<String> {
    let mut rows: Vec<[String; 3]> = Vec::new();
    let mut missing = Vec::new();
    let mut row = |what: &str, xlb: String, base: &str| rows.push([what.into(), xlb, base.into()]);
    let names = ["micro", "pps", "cluster", "compare", "podnet"];
    let reports: Vec<Option<Value>> = names.iter().map(|n| load(dir, n)).collect();
    let [micro, pps, cluster, compare, podnet] = &reports[..] else { unreachable!() };

    match micro {
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
    match pps {
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
                    "packet rate per CPU second vs a trivial XDP forwarder on the same veth (established / UDP / IPv6 / SYN flood; generator: {generator})"
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
    match cluster {
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
    match compare {
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
    match podnet {
        Some(p) => podnet_rows(p, &mut row),
        None => missing.push("podnet"),
    }
    if rows.is_empty() {
        bail!("no report files in {} (run xlb-perf first)", dir.display());
    }
    let found: Vec<(&str, &Value)> =
        names.iter().zip(&reports).filter_map(|(n, r)| r.as_ref().map(|v| (*n, v))).collect();
    let mut s = hosts_line(&found);
    s.push_str("| | xlb | baseline |\n|---|---|---|\n");
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

/// The pod-network rows from `xlb-perf podnet`'s report: ratios of the
/// medians over its rounds (the figures beside them are those medians), as
/// the report's own ratio table gives them.
fn podnet_rows(p: &Value, row: &mut dyn FnMut(&str, String, &str)) {
    let path = |prefix: &str| {
        p["rows"].as_array().and_then(|r| {
            r.iter().find(|x| x["path"].as_str().is_some_and(|n| n.starts_with(prefix)))
        })
    };
    let num = |prefix: &str, field: &str| path(prefix).and_then(|x| f(&x[field]));
    let ratio = |a: &str, b: &str, field: &str| match (num(a, field), num(b, field)) {
        (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
        _ => "?".into(),
    };
    let us =
        |prefix: &str, field: &str| num(prefix, field).map_or("?".into(), |v| format!("{v:.1}"));
    let (xlb, vx, plain) = ("cross-node: xlb (", "cross-node: kernel VXLAN", "cross-node: plain");
    let (local, bridge) = ("same node: xlb", "same node: Linux bridge");
    row(
        "pod to pod across nodes, iperf3 one stream (`xlb-perf podnet`)",
        format!(
            "{}× kernel VXLAN ({}× plain routing)",
            ratio(xlb, vx, "gbps"),
            ratio(xlb, plain, "gbps")
        ),
        "1.00",
    );
    row(
        "pod to pod across nodes, 64-byte request latency p50 / p99",
        format!(
            "{} / {} µs ({} / {}× VXLAN)",
            us(xlb, "p50_us"),
            us(xlb, "p99_us"),
            ratio(xlb, vx, "p50_us"),
            ratio(xlb, vx, "p99_us")
        ),
        &format!("VXLAN {} / {} µs", us(vx, "p50_us"), us(vx, "p99_us")),
    );
    row(
        "pod to pod on one node, iperf3 / p99",
        format!(
            "{}× / {}× a Linux bridge",
            ratio(local, bridge, "gbps"),
            ratio(local, bridge, "p99_us")
        ),
        "1.00",
    );
    let add =
        |mode: &str| p["cni_add"].as_array().and_then(|a| a.iter().find(|x| x["mode"] == mode));
    if let Some(all) = add("all at once") {
        let ms = |x: &Value, field: &str| f(&x[field]).unwrap_or(f64::NAN);
        let one = add("one at a time")
            .map_or(String::new(), |x| format!(" (one at a time: {:.0} ms)", ms(x, "p50_ms")));
        row(
            &format!(
                "CNI ADD, {} pods at once on one node, p50 / p99",
                all["pods"].as_u64().unwrap_or(0)
            ),
            format!("{:.2} / {:.1} s{one}", ms(all, "p50_ms") / 1e3, ms(all, "p99_ms") / 1e3),
            "",
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::podnet::{AddLatency, PathRow, PodnetReport};

    fn path(name: &str, gbps: f64, p50_us: f64, p99_us: f64) -> PathRow {
        PathRow {
            path: name.into(),
            gbps,
            gbps_rounds: vec![gbps],
            retransmits: 0,
            p50_us,
            p99_us,
            p99_rounds_us: vec![p99_us],
        }
    }

    fn add(mode: &str, p50_ms: f64, p99_ms: f64) -> AddLatency {
        AddLatency { mode: mode.into(), pods: 100, p50_ms, p99_ms, max_ms: p99_ms, wall_s: 1.0 }
    }

    /// A podnet report written as `xlb-perf podnet` writes it becomes the
    /// table's pod-network rows (and its absence is named below the table).
    #[test]
    fn the_pod_network_rows_come_from_the_podnet_report() {
        let dir = std::env::temp_dir().join(format!("xlb-readme-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Only a micro report: podnet is named missing.
        std::fs::write(dir.join("micro.json"), r#"{"rows": []}"#).unwrap();
        assert!(table(&dir)
            .unwrap()
            .contains("Not in this report set: pps, cluster, compare, podnet"));

        let report = PodnetReport {
            rows: vec![
                path("cross-node: xlb (BPF Geneve)", 12.4, 10.3, 17.86),
                path("cross-node: xlb, XDP on the node veths", 99.0, 1.0, 1.0),
                path("cross-node: kernel VXLAN", 10.0, 13.6, 25.5),
                path("cross-node: plain routing", 8.0, 9.0, 15.0),
                path("same node: xlb (redirect_peer)", 24.2, 5.0, 9.3),
                path("same node: Linux bridge", 20.0, 6.0, 10.0),
            ],
            cni_add: vec![add("one at a time", 40.2, 55.0), add("all at once", 2960.0, 4010.0)],
            rounds: 5,
            seconds: 3,
        };
        crate::report::write(&dir, "podnet", &report, &report.markdown()).unwrap();
        let t = table(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        for want in [
            "| pod to pod across nodes, iperf3 one stream (`xlb-perf podnet`) | 1.24× kernel VXLAN (1.55× plain routing) | 1.00 |",
            "| pod to pod across nodes, 64-byte request latency p50 / p99 | 10.3 / 17.9 µs (0.76 / 0.70× VXLAN) | VXLAN 13.6 / 25.5 µs |",
            "| pod to pod on one node, iperf3 / p99 | 1.21× / 0.93× a Linux bridge | 1.00 |",
            "| CNI ADD, 100 pods at once on one node, p50 / p99 | 2.96 / 4.0 s (one at a time: 40 ms) |  |",
        ] {
            assert!(t.contains(want), "missing row {want}\nin\n{t}");
        }
        assert!(
            !t.contains("compare, podnet")
                && t.contains("Not in this report set: pps, cluster, compare")
        );
        // The hand-written micro report names no host; podnet's, written by
        // report::write, names this machine.
        let want = format!(
            "Measured on a host the report does not record (micro); {} (podnet).\n\n| |",
            Host::this().describe()
        );
        assert!(t.starts_with(&want), "want {want}\nin\n{t}");
    }
}
