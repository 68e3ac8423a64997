//! East-west traffic in the lab: requests to a service's ClusterIP from a
//! pod or a node's own processes, made by `xlb-probe` running in the
//! client's network namespace *and* its cgroup (so its node's agent, whose
//! socket programs are attached at the node's cgroup, translates them), one
//! TCP connection per request. The report says who answered and what the
//! client's socket saw as its peer.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{Lab, LabError};

/// What one client's requests to one target gave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Answers by the pod that served them (the body names it).
    pub per_backend: BTreeMap<String, usize>,
    /// Connections whose getpeername was not the target (would mean the
    /// reverse translation is missing).
    pub wrong_peer: usize,
    /// Errors, as the client printed them.
    pub failures: Vec<String>,
}

impl Report {
    pub fn succeeded(&self) -> usize {
        self.per_backend.values().sum()
    }
}

/// The `xlb-probe` beside `xlb` (both built into the same target directory).
pub fn probe_binary(xlb: &Path) -> Result<PathBuf, LabError> {
    let probe = xlb.with_file_name("xlb-probe");
    if probe.is_file() {
        Ok(probe)
    } else {
        Err(LabError::Io {
            path: probe,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "xlb-probe is built with the workspace (cargo build --release --workspace)",
            ),
        })
    }
}

/// `requests` connections from `client` (a pod or a node of the lab) to
/// `target`, each with one HTTP request.
pub fn drive(
    lab: &Lab,
    probe: &Path,
    client: &str,
    target: SocketAddr,
    requests: usize,
) -> Result<Report, LabError> {
    let mut cmd = Command::new(probe);
    cmd.args(["tcp", &target.to_string(), "--count", &requests.to_string()]);
    lab.cgroup(client)?.join_before_exec(&mut cmd);
    let out = lab.output(client, cmd)?;
    let mut report = Report::default();
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                report.failures.push(format!("unreadable line {line:?}: {e}"));
                continue;
            }
        };
        if v["ok"] != serde_json::Value::Bool(true) {
            report.failures.push(v["error"].as_str().unwrap_or("?").to_string());
            continue;
        }
        if v["peer"].as_str() != Some(target.to_string().as_str()) {
            report.wrong_peer += 1;
        }
        *report.per_backend.entry(v["body"].as_str().unwrap_or("?").to_string()).or_default() += 1;
    }
    if !out.status.success() {
        report.failures.push(format!(
            "xlb-probe exited ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(report)
}
