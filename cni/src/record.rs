//! The plugin's record of each attachment, for the agent: one JSON file per
//! (container, interface) in the state directory, written (atomically) when
//! ADD has made the pod's network and removed by DEL. The agent reads them
//! to know this node's pods ([`read_all`] → [`lb::model::Endpoint`]s for the
//! endpoints reconciler) and `xlb endpoint list` names pods by them.
use std::{
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// One attachment as ADD made it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointRecord {
    #[serde(rename = "containerId")]
    pub container_id: String,
    pub ifname: String,
    /// CNI_NETNS.
    pub netns: String,
    /// "namespace/name" from CNI_ARGS, else the container id.
    pub pod: String,
    /// The host-side veth and its index.
    #[serde(rename = "hostIf")]
    pub host_if: String,
    pub ifindex: u32,
    pub mac: String,
    #[serde(rename = "hostMac")]
    pub host_mac: String,
    pub addrs: Vec<IpAddr>,
    pub identity: u32,
}

fn mac_of(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s.split(':').filter_map(|p| u8::from_str_radix(p, 16).ok()).collect();
    v.try_into().ok()
}

impl EndpointRecord {
    /// The endpoint the datapath holds for it (None: a MAC that does not parse).
    pub fn endpoint(&self) -> Option<lb::model::Endpoint> {
        Some(lb::model::Endpoint {
            name: self.pod.clone(),
            addrs: self.addrs.clone(),
            ifindex: self.ifindex,
            mac: mac_of(&self.mac)?,
            host_mac: mac_of(&self.host_mac)?,
            identity: self.identity,
        })
    }

    /// Writes it to `state_dir` (a temporary file renamed into place).
    pub fn write(&self, state_dir: &Path) -> io::Result<()> {
        fs::create_dir_all(state_dir)?;
        let path = path(state_dir, &self.container_id, &self.ifname);
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(self).expect("plain data serializes"))?;
        fs::rename(&tmp, &path)
    }
}

/// Where the record of one attachment lives.
pub fn path(state_dir: &Path, container_id: &str, ifname: &str) -> PathBuf {
    state_dir.join(format!("{container_id}_{ifname}.json"))
}

/// The record of one attachment, if there is one.
pub fn read(state_dir: &Path, container_id: &str, ifname: &str) -> Option<EndpointRecord> {
    let text = fs::read(path(state_dir, container_id, ifname)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Removes one attachment's record (absent: fine).
pub fn remove(state_dir: &Path, container_id: &str, ifname: &str) -> io::Result<()> {
    match fs::remove_file(path(state_dir, container_id, ifname)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Every record of `state_dir` (missing directory: none), sorted by file
/// name; files that do not parse are returned as errors beside them.
pub fn read_all(state_dir: &Path) -> (Vec<EndpointRecord>, Vec<String>) {
    let Ok(entries) = fs::read_dir(state_dir) else { return (Vec::new(), Vec::new()) };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match fs::read(&f)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<EndpointRecord>(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => out.push(r),
            Err(e) => errors.push(format!("{}: {e}", f.display())),
        }
    }
    (out, errors)
}

/// The host-side veth of an attachment: "xlb" and 11 hex digits of a hash
/// of container id and interface (15 characters, the kernel's limit; the
/// same name for the same attachment, so DEL finds it without a record).
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([b'/']).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("xlb{:011x}", h & 0xfff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_fit_the_kernel_and_differ_per_attachment() {
        let a = host_ifname("abc", "eth0");
        assert_eq!(a.len(), 14);
        assert_eq!(a, host_ifname("abc", "eth0"));
        assert_ne!(a, host_ifname("abc", "eth1"));
        assert_ne!(a, host_ifname("abd", "eth0"));
    }
}
