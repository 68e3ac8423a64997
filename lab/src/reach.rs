//! The reachability matrix of the NetworkPolicy e2e suite
//! (test/e2e/network/netpol): from every pod to every pod on one port and
//! protocol, rows from, columns to, `.` reachable and `X` not. Each probe
//! is a real `xlb-probe tcp|udp` client started in the source pod's network
//! namespace and cgroup (so its node's socket and policy programs see it),
//! to the destination pod's address or a ClusterIP in front of it
//! ([`matrix_to`]); all of them at once, bounded by a timeout. Used by `xlb-lab probe` on a held lab ([`crate::held`]) and by
//! tests on a [`crate::Lab`].
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{cgroup::Cgroup, netns, workload::Protocol, Lab, LabError};

/// Probes in flight at once.
const PARALLEL: usize = 64;

/// A pod as the prober needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePod {
    /// "namespace/name", as the e2e suite prints it.
    pub label: String,
    pub netns: String,
    pub cgroup: PathBuf,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// What to probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub port: u16,
    pub protocol: Protocol,
    pub ipv6: bool,
    /// How long a connection attempt (or a datagram's answer) may take.
    pub timeout: Duration,
}

/// The observed matrix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    pub probe: Probe,
    pub labels: Vec<String>,
    /// reachable[from][to].
    pub reachable: Vec<Vec<bool>>,
}

impl Matrix {
    /// The pairs that could be reached, as "from -> to".
    pub fn reachable_pairs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, row) in self.reachable.iter().enumerate() {
            for (j, ok) in row.iter().enumerate() {
                if *ok {
                    out.push((self.labels[i].clone(), self.labels[j].clone()));
                }
            }
        }
        out
    }
}

impl fmt::Display for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.probe;
        writeln!(
            f,
            "reachability {} port {} over {}: rows from, columns to (. reachable, X not)",
            p.protocol.as_str(),
            p.port,
            if p.ipv6 { "IPv6" } else { "IPv4" }
        )?;
        let first = self.labels.iter().map(String::len).max().unwrap_or(1);
        write!(f, "{:<first$}", "-")?;
        for l in &self.labels {
            write!(f, "  {l}")?;
        }
        writeln!(f)?;
        for (label, row) in self.labels.iter().zip(&self.reachable) {
            write!(f, "{label:<first$}")?;
            for (l, ok) in self.labels.iter().zip(row) {
                write!(f, "  {:<w$}", if *ok { "." } else { "X" }, w = l.len())?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// The lab's pods for [`matrix`].
pub fn pods_of(lab: &Lab) -> Result<Vec<ProbePod>, LabError> {
    lab.pods()
        .map(|p| {
            Ok(ProbePod {
                label: format!("{}/{}", p.namespace, p.name),
                netns: p.host.ns.clone(),
                cgroup: lab.cgroup(&p.host.name)?.path().to_path_buf(),
                v4: p.host.v4,
                v6: p.host.v6,
            })
        })
        .collect()
}

/// Probes every pair of `pods` with the `xlb-probe` at `probe_bin`, to the
/// pods' own addresses.
pub fn matrix(probe_bin: &Path, pods: &[ProbePod], probe: Probe) -> Result<Matrix, LabError> {
    let to: Vec<IpAddr> =
        pods.iter().map(|p| if probe.ipv6 { p.v6.into() } else { p.v4.into() }).collect();
    matrix_to(probe_bin, pods, &to, probe)
}

/// Probes from every pod of `pods` to every address of `to` (one per pod,
/// in the same order: the pod's own address, or the ClusterIP of a
/// Service in front of it alone, as the e2e suite probes).
pub fn matrix_to(
    probe_bin: &Path,
    pods: &[ProbePod],
    to: &[IpAddr],
    probe: Probe,
) -> Result<Matrix, LabError> {
    assert_eq!(pods.len(), to.len(), "one target per pod");
    let pairs: Vec<(usize, usize)> =
        (0..pods.len()).flat_map(|i| (0..pods.len()).map(move |j| (i, j))).collect();
    let mut reachable = vec![vec![false; pods.len()]; pods.len()];
    for batch in pairs.chunks(PARALLEL) {
        let mut running: Vec<((usize, usize), Child)> = Vec::new();
        for &(i, j) in batch {
            let from = &pods[i];
            let target = SocketAddr::new(to[j], probe.port).to_string();
            let mut cmd = Command::new(probe_bin);
            let mode = if probe.protocol == Protocol::Udp { "udp" } else { "tcp" };
            cmd.args([mode, &target, "--timeout-ms", &probe.timeout.as_millis().to_string()]);
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
            netns::enter_before_exec(&from.netns, &mut cmd)?;
            Cgroup { path: from.cgroup.clone() }.join_before_exec(&mut cmd);
            let child = cmd.spawn().map_err(|source| LabError::Spawn {
                ns: from.netns.clone(),
                cmd: netns::describe(&cmd),
                source,
            })?;
            running.push(((i, j), child));
        }
        for ((i, j), child) in running {
            let out = child.wait_with_output().map_err(|source| LabError::Spawn {
                ns: pods[i].netns.clone(),
                cmd: "xlb-probe".into(),
                source,
            })?;
            if !out.status.success() {
                return Err(LabError::Command {
                    ns: pods[i].netns.clone(),
                    cmd: format!("xlb-probe to {}", pods[j].label),
                    status: out.status.to_string(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
            reachable[i][j] = String::from_utf8_lossy(&out.stdout).contains("\"ok\":true");
        }
    }
    Ok(Matrix { probe, labels: pods.iter().map(|p| p.label.clone()).collect(), reachable })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_the_e2e_picture() {
        let m = Matrix {
            probe: Probe {
                port: 80,
                protocol: Protocol::Tcp,
                ipv6: false,
                timeout: Duration::from_secs(1),
            },
            labels: vec!["x/a".into(), "y/bb".into()],
            reachable: vec![vec![true, false], vec![true, true]],
        };
        assert_eq!(
            m.to_string(),
            "reachability TCP port 80 over IPv4: rows from, columns to (. reachable, X not)\n\
             -     x/a  y/bb\n\
             x/a   .    X   \n\
             y/bb  .    .   \n"
        );
        assert_eq!(m.reachable_pairs().len(), 3);
    }
}
