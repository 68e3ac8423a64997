//! A held lab (`xlb-lab --hold`) described on disk, so that commands run
//! beside it (`xlb-lab probe`) find its pods: `<temp dir>/<prefix>/lab.json`
//! holds the holder's pid, the `xlb-probe` binary and every pod's name,
//! network namespace, cgroup and addresses. It goes with the lab's temp
//! directory at teardown; a file whose holder is gone is ignored.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{reach::ProbePod, Lab, LabError};

const FILE: &str = "lab.json";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeldLab {
    pub prefix: String,
    pub pid: u32,
    pub probe: PathBuf,
    pub pods: Vec<HeldPod>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeldPod {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub netns: String,
    pub cgroup: PathBuf,
    pub v4: std::net::Ipv4Addr,
    pub v6: std::net::Ipv6Addr,
}

impl HeldLab {
    pub fn probe_pods(&self) -> Vec<ProbePod> {
        self.pods
            .iter()
            .map(|p| ProbePod {
                label: format!("{}/{}", p.namespace, p.name),
                netns: p.netns.clone(),
                cgroup: p.cgroup.clone(),
                v4: p.v4,
                v6: p.v6,
            })
            .collect()
    }
}

/// Writes `lab`'s description; its path.
pub fn write(lab: &Lab, probe: &Path) -> Result<PathBuf, LabError> {
    let pods = lab
        .pods()
        .map(|p| {
            Ok(HeldPod {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                node: p.node.clone(),
                netns: p.host.ns.clone(),
                cgroup: lab.cgroup(&p.host.name)?.path().to_path_buf(),
                v4: p.host.v4,
                v6: p.host.v6,
            })
        })
        .collect::<Result<_, LabError>>()?;
    let held =
        HeldLab { prefix: lab.prefix().into(), pid: std::process::id(), probe: probe.into(), pods };
    let path = lab.temp_dir().join(FILE);
    let text = serde_json::to_string_pretty(&held).expect("plain data serializes");
    std::fs::write(&path, text).map_err(|source| LabError::Io { path: path.clone(), source })?;
    Ok(path)
}

/// The held labs whose holder still runs, whose prefix starts with `prefix`.
pub fn find(prefix: &str) -> Vec<HeldLab> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return out };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path().join(FILE)) else { continue };
        let Ok(held) = serde_json::from_str::<HeldLab>(&text) else { continue };
        if !crate::registry::is_dead(held.pid as i32) {
            out.push(held);
        }
    }
    out.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    out
}
