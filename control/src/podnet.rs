//! The pod network as the agent runs it (`xlb run --pod-network`): what it
//! adds to the translation's [`PodNetwork`] (masquerade, extra tunnel
//! peers, the ICMP rate) to make the datapath's [`Network`]; this node's
//! pods, read from the CNI plugin's records ([`local_endpoints`]: a record
//! whose host veth is gone is stale and left out); the CNI configuration
//! list it installs once the node has pod ranges and the pod programs are
//! pinned ([`install_conflist`]); the pod MTU. The daemon (main.rs) runs
//! these beside the services' reconcile; the datapath side is lb's
//! (`Datapath::apply_network`, `Datapath::apply_endpoints`).
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use lb::model::{Cidr, Endpoint, Masquerade, Network};
use xlb_cni::{
    config::{conflist, ConflistOptions},
    record,
};

use crate::translate::PodNetwork;

/// Default overlay overhead: Geneve over IPv6 (40 + 8 + 8 + 8 bytes), the
/// larger of the two outer families.
pub const DEFAULT_OVERHEAD: u32 = 64;

/// The agent's pod-network settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetOptions {
    /// Masquerade pods' traffic leaving the cluster.
    pub masquerade: bool,
    pub masquerade_ports: (u16, u16),
    pub non_masquerade: Vec<Cidr>,
    pub icmp_rate: u32,
    /// The underlay MTU and the pod MTU derived from it.
    pub underlay_mtu: u32,
    pub pod_mtu: u32,
    pub conf_dir: PathBuf,
    pub conf_name: String,
    pub network_name: String,
    pub state_dir: PathBuf,
    pub ipam_dir: PathBuf,
}

/// The pod MTU: the underlay's minus the overlay's overhead.
pub fn pod_mtu(underlay: u32, overhead: u32) -> u32 {
    underlay.saturating_sub(overhead)
}

/// The datapath's network: the Nodes' ranges (when the pod network runs
/// here) and peers, the load balancers outside the Nodes (`lbs`: their DSR
/// dispatch is accepted), masquerade settings.
pub fn network(pod: &PodNetwork, opts: Option<&PodNetOptions>, lbs: &[IpAddr]) -> Network {
    let mut peers = pod.peers.clone();
    for a in lbs {
        peers.entry(*a).or_default().load_balancer = true;
    }
    let Some(o) = opts else {
        return Network { peers, ..Network::default() };
    };
    Network {
        routes: pod.routes.clone(),
        peers,
        masquerade: o.masquerade.then(|| Masquerade {
            ports: o.masquerade_ports,
            non_masquerade: o.non_masquerade.clone(),
        }),
        icmp_rate: o.icmp_rate,
    }
}

/// Whether interface `index` exists and is called `name` (a record's veth
/// still there: not a pod gone without DEL).
fn live(index: u32, name: &str) -> bool {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: buf is IF_NAMESIZE bytes, as if_indextoname wants.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr() as *mut libc::c_char) };
    if p.is_null() {
        return false;
    }
    let end = buf.iter().position(|c| *c == 0).unwrap_or(buf.len());
    &buf[..end] == name.as_bytes()
}

/// This node's pods from the plugin's records in `state_dir`, and a
/// message for each record left out (unreadable, or its veth is gone).
pub fn local_endpoints(state_dir: &Path) -> (Vec<Endpoint>, Vec<String>) {
    let (records, mut skipped) = record::read_all(state_dir);
    let mut out = Vec::new();
    for r in records {
        if !live(r.ifindex, &r.host_if) {
            skipped
                .push(format!("{}: host veth {} (index {}) is gone", r.pod, r.host_if, r.ifindex));
            continue;
        }
        match r.endpoint() {
            Some(ep) => out.push(ep),
            None => skipped.push(format!("{}: unreadable MAC address", r.pod)),
        }
    }
    (out, skipped)
}

/// Writes the CNI configuration list for this node's `ranges` into the
/// configuration directory (atomically) when it differs from what is
/// there; returns whether it wrote.
pub fn install_conflist(
    opts: &PodNetOptions,
    pin_dir: &Path,
    ranges: &[Cidr],
) -> std::io::Result<bool> {
    let text = conflist(&ConflistOptions {
        name: opts.network_name.clone(),
        mtu: opts.pod_mtu,
        host_mtu: opts.underlay_mtu.max(opts.pod_mtu),
        pin_dir: pin_dir.to_path_buf(),
        state_dir: opts.state_dir.clone(),
        ipam_dir: opts.ipam_dir.clone(),
        ranges: ranges.to_vec(),
    });
    let path = opts.conf_dir.join(&opts.conf_name);
    if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
        return Ok(false);
    }
    std::fs::create_dir_all(&opts.conf_dir)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb::model::{PeerRole, PodRoute};

    fn opts(dir: &Path) -> PodNetOptions {
        PodNetOptions {
            masquerade: true,
            masquerade_ports: (61000, 65535),
            non_masquerade: vec!["192.168.0.0/16".parse().unwrap()],
            icmp_rate: 100,
            underlay_mtu: 1600,
            pod_mtu: pod_mtu(1600, DEFAULT_OVERHEAD),
            conf_dir: dir.join("net.d"),
            conf_name: "05-xlb.conflist".into(),
            network_name: "xlb".into(),
            state_dir: dir.join("state"),
            ipam_dir: dir.join("ipam"),
        }
    }

    #[test]
    fn the_network_adds_load_balancers_and_masquerade_to_the_nodes() {
        let dir = std::env::temp_dir().join(format!("xlb-podnet-{}", std::process::id()));
        let mut pod = PodNetwork::default();
        pod.routes.push(PodRoute {
            cidr: "10.244.2.0/24".parse().unwrap(),
            node: "10.0.0.12".parse().unwrap(),
            local: false,
        });
        pod.peers
            .insert("10.0.0.12".parse().unwrap(), PeerRole { node: true, load_balancer: false });
        let lbs: Vec<IpAddr> = vec!["10.0.0.12".parse().unwrap(), "198.51.100.2".parse().unwrap()];
        let net = network(&pod, Some(&opts(&dir)), &lbs);
        assert_eq!(net.routes.len(), 1);
        assert_eq!(net.peers.len(), 2, "a node that is a load balancer too is one peer");
        assert_eq!(
            net.peers[&"10.0.0.12".parse().unwrap()],
            PeerRole { node: true, load_balancer: true }
        );
        assert_eq!(net.masquerade.unwrap().ports, (61000, 65535));
        let lb_only = network(&pod, None, &[]);
        assert!(lb_only.routes.is_empty() && lb_only.masquerade.is_none(), "no pod network here");
        assert_eq!(lb_only.peers.len(), 1, "but the Nodes' peers all the same");
        assert_eq!(pod_mtu(1600, DEFAULT_OVERHEAD), 1536);
    }

    #[test]
    fn the_conflist_is_written_once_and_parses_as_the_plugin_reads_it() {
        let dir = std::env::temp_dir().join(format!("xlb-podnet-conf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let o = opts(&dir);
        let ranges: Vec<Cidr> = vec!["10.244.1.0/24".parse().unwrap()];
        assert!(install_conflist(&o, Path::new("/sys/fs/bpf/xlb"), &ranges).unwrap());
        assert!(!install_conflist(&o, Path::new("/sys/fs/bpf/xlb"), &ranges).unwrap(), "unchanged");
        let text = std::fs::read_to_string(dir.join("net.d/05-xlb.conflist")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["plugins"][0]["mtu"], 1536);
        assert_eq!(v["plugins"][0]["hostMtu"], 1600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
