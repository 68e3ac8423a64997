//! Connection-level load generators run inside a lab namespace: wrk (HTTP
//! requests/s, latency percentiles from its own histogram through a Lua
//! `done` hook, socket errors) and iperf3 (bulk TCP throughput, JSON
//! output), and the parsers of their output. The lab (crate `lab`) runs
//! them; the `conn` and `churn` scenarios and perf/tests/loadgen.rs use them.
use std::{path::Path, process::Command, time::Duration};

use lab::{Lab, LabError};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("{tool}: {detail}")]
    Failed { tool: &'static str, detail: String },
    #[error("{tool} output: {field}: {reason}\n--- output ---\n{output}")]
    Parse { tool: &'static str, field: &'static str, reason: String, output: String },
    #[error("writing {}: {source}", path.display())]
    Io { path: std::path::PathBuf, source: std::io::Error },
}

/// The Lua hook that makes wrk print exact percentiles (µs) of its latency
/// histogram on one line, p99.9 included (`--latency` stops at p99).
const WRK_LUA: &str = r#"-- written by xlb-perf
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("XLBPERF requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d p50=%d p99=%d p999=%d mean=%.1f max=%d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.mean, latency.max))
end
"#;

/// One wrk run.
#[derive(Clone, Debug)]
pub struct WrkSpec {
    pub url: String,
    pub threads: u32,
    pub connections: u32,
    pub duration: Duration,
    /// Send `Connection: close`: every request on a new connection.
    pub close: bool,
}

/// What one wrk run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_sec: f64,
    /// Socket errors: connect, read, write, timeout; plus non-2xx/3xx.
    pub errors_connect: u64,
    pub errors_read: u64,
    pub errors_write: u64,
    pub errors_timeout: u64,
    pub non_2xx: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub mean_us: f64,
    pub max_us: f64,
}

impl WrkResult {
    pub fn errors(&self) -> u64 {
        self.errors_connect
            + self.errors_read
            + self.errors_write
            + self.errors_timeout
            + self.non_2xx
    }
}

/// Runs wrk in namespace `ns` of `lab`; `scratch` holds the Lua hook.
pub fn wrk(lab: &Lab, ns: &str, spec: &WrkSpec, scratch: &Path) -> Result<WrkResult, LoadgenError> {
    parse_wrk(&wrk_raw(lab, ns, spec, scratch)?)
}

/// Runs wrk like [`wrk`]; its whole standard output.
pub fn wrk_raw(
    lab: &Lab,
    ns: &str,
    spec: &WrkSpec,
    scratch: &Path,
) -> Result<String, LoadgenError> {
    let lua = scratch.join("xlbperf-wrk.lua");
    if !lua.exists() {
        std::fs::write(&lua, WRK_LUA)
            .map_err(|source| LoadgenError::Io { path: lua.clone(), source })?;
    }
    let mut cmd = Command::new("wrk");
    cmd.arg(format!("-t{}", spec.threads))
        .arg(format!("-c{}", spec.connections.max(spec.threads)))
        .arg(format!("-d{}s", spec.duration.as_secs().max(1)))
        .arg("--latency")
        .arg("--timeout")
        .arg("2s")
        .arg("-s")
        .arg(&lua);
    if spec.close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(&spec.url);
    let out = lab.output(ns, cmd)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(LoadgenError::Failed {
            tool: "wrk",
            detail: format!(
                "{} ({}): {}{}",
                spec.url,
                out.status,
                text,
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(text)
}

fn parse_err(field: &'static str, reason: impl Into<String>, output: &str) -> LoadgenError {
    LoadgenError::Parse { tool: "wrk", field, reason: reason.into(), output: output.into() }
}

/// Parses wrk's output: the standard report (requests, duration,
/// Requests/sec, socket errors, non-2xx) and the XLBPERF line of the Lua
/// hook (exact percentiles). Both must be there and agree on the count.
pub fn parse_wrk(text: &str) -> Result<WrkResult, LoadgenError> {
    let mut r = WrkResult::default();
    let mut total: Option<(u64, f64)> = None;
    let mut hook: Option<u64> = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("XLBPERF ") {
            let mut fields = std::collections::BTreeMap::new();
            for kv in rest.split_whitespace() {
                let (k, v) = kv.split_once('=').ok_or_else(|| parse_err("XLBPERF", kv, text))?;
                let v: f64 = v.parse().map_err(|_| parse_err("XLBPERF", kv, text))?;
                fields.insert(k, v);
            }
            let get = |k: &'static str| {
                fields.get(k).copied().ok_or_else(|| parse_err("XLBPERF", format!("no {k}"), text))
            };
            hook = Some(get("requests")? as u64);
            r.p50_us = get("p50")?;
            r.p99_us = get("p99")?;
            r.p999_us = get("p999")?;
            r.mean_us = get("mean")?;
            r.max_us = get("max")?;
            r.non_2xx = get("status")? as u64;
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.requests_per_sec =
                v.trim().parse().map_err(|_| parse_err("Requests/sec", v, text))?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            for part in v.split(',') {
                let mut it = part.split_whitespace();
                let (Some(name), Some(n)) = (it.next(), it.next()) else {
                    return Err(parse_err("Socket errors", part, text));
                };
                let n: u64 = n.parse().map_err(|_| parse_err("Socket errors", part, text))?;
                match name {
                    "connect" => r.errors_connect = n,
                    "read" => r.errors_read = n,
                    "write" => r.errors_write = n,
                    "timeout" => r.errors_timeout = n,
                    _ => return Err(parse_err("Socket errors", part, text)),
                }
            }
        } else if line.contains(" requests in ") {
            // "123456 requests in 5.00s, 17.90MB read"
            let mut it = line.split_whitespace();
            let n: u64 = it
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| parse_err("requests in", line, text))?;
            let secs = it
                .nth(2)
                .map(|d| d.trim_end_matches(','))
                .and_then(parse_duration_s)
                .ok_or_else(|| parse_err("requests in", line, text))?;
            total = Some((n, secs));
        }
    }
    let (n, secs) = total.ok_or_else(|| parse_err("requests in", "missing", text))?;
    let hooked =
        hook.ok_or_else(|| parse_err("XLBPERF", "missing (Lua hook did not run)", text))?;
    if hooked != n {
        return Err(parse_err("XLBPERF", format!("requests {hooked} != report's {n}"), text));
    }
    if r.requests_per_sec == 0.0 && n > 0 {
        return Err(parse_err("Requests/sec", "missing", text));
    }
    r.requests = n;
    r.seconds = secs;
    Ok(r)
}

/// "5.00s", "1.00m", "300.00ms", "12.5us" -> seconds.
fn parse_duration_s(d: &str) -> Option<f64> {
    for (unit, scale) in [("us", 1e-6), ("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)] {
        if let Some(v) = d.strip_suffix(unit) {
            if let Ok(x) = v.parse::<f64>() {
                return Some(x * scale);
            }
        }
    }
    None
}

/// What one iperf3 client run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct IperfResult {
    /// Received by the server, bits/s.
    pub received_bps: f64,
    pub sent_bps: f64,
    pub retransmits: u64,
    pub seconds: f64,
}

/// Runs `iperf3 -c target -p port -t secs -J` in `ns`.
pub fn iperf3(
    lab: &Lab,
    ns: &str,
    target: std::net::IpAddr,
    port: u16,
    duration: Duration,
) -> Result<IperfResult, LoadgenError> {
    let mut cmd = Command::new("iperf3");
    cmd.arg("-c")
        .arg(target.to_string())
        .arg("-p")
        .arg(port.to_string())
        .arg("-t")
        .arg(duration.as_secs().max(1).to_string())
        .arg("--connect-timeout")
        .arg("3000")
        .arg("-J");
    let out = lab.output(ns, cmd)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(LoadgenError::Failed {
            tool: "iperf3",
            detail: format!("{target}:{port} ({}): {text}", out.status),
        });
    }
    parse_iperf3(&text)
}

/// Parses `iperf3 -J` output (end.sum_sent / end.sum_received).
pub fn parse_iperf3(text: &str) -> Result<IperfResult, LoadgenError> {
    let bad = |field: &'static str, reason: String| LoadgenError::Parse {
        tool: "iperf3",
        field,
        reason,
        output: text.chars().take(2000).collect(),
    };
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad("json", e.to_string()))?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Err(bad("error", e.to_string()));
    }
    let end = v.get("end").ok_or_else(|| bad("end", "missing".into()))?;
    let num = |obj: &str, key: &str| end.get(obj).and_then(|o| o.get(key)).and_then(|x| x.as_f64());
    Ok(IperfResult {
        received_bps: num("sum_received", "bits_per_second")
            .ok_or_else(|| bad("end.sum_received.bits_per_second", "missing".into()))?,
        sent_bps: num("sum_sent", "bits_per_second")
            .ok_or_else(|| bad("end.sum_sent.bits_per_second", "missing".into()))?,
        retransmits: num("sum_sent", "retransmits").unwrap_or(0.0) as u64,
        seconds: num("sum_received", "seconds").unwrap_or(0.0),
    })
}

/// Request latency of several paths measured request by request in turn:
/// one keep-alive connection per target, `requests` rounds, each round one
/// `GET /` on every connection (order rotating), so background noise on
/// shared cores hits every path alike. Per target, the latencies in µs.
/// Sockets open in the calling thread's namespace (run inside the lab's
/// client namespace).
pub fn interleaved_latency(
    targets: &[std::net::SocketAddr],
    requests: usize,
) -> Result<Vec<Vec<f64>>, lab::http::HttpError> {
    use lab::http::{Conn, DEFAULT_TIMEOUT};
    let mut conns = targets
        .iter()
        .map(|t| Conn::connect(*t, DEFAULT_TIMEOUT))
        .collect::<Result<Vec<_>, _>>()?;
    // Warm-up: caches, neighbours, the connection's first-request costs.
    for c in conns.iter_mut() {
        for _ in 0..100 {
            c.get(false)?;
        }
    }
    let k = conns.len();
    let mut out = vec![Vec::with_capacity(requests); k];
    for round in 0..requests {
        for j in 0..k {
            let i = (j + round) % k;
            let t0 = std::time::Instant::now();
            conns[i].get(false)?;
            out[i].push(t0.elapsed().as_nanos() as f64 / 1e3);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_s("5.00s"), Some(5.0));
        assert_eq!(parse_duration_s("300.00ms"), Some(0.3));
        assert_eq!(parse_duration_s("1.00m"), Some(60.0));
        assert_eq!(parse_duration_s("x"), None);
    }

    #[test]
    fn missing_hook_is_an_error() {
        let e = parse_wrk("  10 requests in 1.00s, 1KB read\nRequests/sec: 10.0\n").unwrap_err();
        assert!(e.to_string().contains("XLBPERF"), "{e}");
    }
}
