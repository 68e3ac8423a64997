//! The lab's shape and its address plan: one source for every address the
//! lab, the examples and the end-to-end tests use (see the team brief's
//! topology).
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use crate::LabError;

/// Client side of the router.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
pub const ROUTER_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const ROUTER_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The router's address on the fabric bridge.
pub const ROUTER_FABRIC_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const ROUTER_FABRIC_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 1);
/// The load balancer's eth0 (XDP runs here).
pub const LB_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const LB_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 2);
/// The service default/nginx (type LoadBalancer).
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
pub const VIP_PORT: u16 = 80;
/// The ClusterIPs of default/nginx: pods and nodes reach it by them,
/// translated at their sockets by their node's agent (#9).
pub const CLUSTER_IP_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const CLUSTER_IP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x10);
/// Routed to the load balancer by the router.
pub const VIP_RANGE_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 100, 0, 0), 16);
pub const VIP_RANGE_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0), 48);

/// Highest node or pod index the address plan holds (10 + index < 255).
pub const MAX_INDEX: u32 = 244;

/// Address of node `n` (1-based) on the fabric.
pub fn node_v4(n: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, (10 + n) as u8)
}
/// IPv6 groups are written with the same digits as the IPv4 octets
/// ("10.0.0.11" <-> "2001:db8:f::11"), so 11 becomes the group 0x11.
pub fn group(decimal: u32) -> u16 {
    u16::from_str_radix(&decimal.to_string(), 16).expect("at most 3 decimal digits")
}

pub fn node_v6(n: u32) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, group(10 + n))
}
/// Pod CIDRs of node `n`: 10.244.n.0/24, 2001:db8:244:n::/64.
pub fn pod_cidr_v4(n: u32) -> (Ipv4Addr, u8) {
    (Ipv4Addr::new(10, 244, n as u8, 0), 24)
}
pub fn pod_cidr_v6(n: u32) -> (Ipv6Addr, u8) {
    (Ipv6Addr::new(0x2001, 0xdb8, 0x244, group(n), 0, 0, 0, 0), 64)
}
/// Address of pod `m` (1-based) on node `n`.
pub fn pod_v4(n: u32, m: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n as u8, (10 + m) as u8)
}
pub fn pod_v6(n: u32, m: u32) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x244, group(n), 0, 0, 0, group(10 + m))
}
pub fn node_name(n: u32) -> String {
    format!("node{n}")
}
pub fn pod_name(n: u32, m: u32) -> String {
    format!("pod{n}-{m}")
}

/// What to build. Nodes and pods are numbered from 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabSpec {
    pub nodes: u32,
    pub pods_per_node: u32,
    /// MTU of the fabric (router bridge, LB and node eth0): room for Geneve.
    pub fabric_mtu: u32,
    /// MTU of the client link and the pod veths.
    pub client_mtu: u32,
    /// Start of every namespace name; the lab appends "<pid>-<seq>", so
    /// "xlb" gives namespaces like "xlb4242-0-client".
    pub name_prefix: String,
    /// Start nginx in every pod (and wait until it answers).
    pub backends: bool,
    /// The router routes each node's pod ranges to it (a routed underlay
    /// that knows pod addresses, e.g. a cloud VPC). Off by default: pods
    /// are reached through the overlay and services only, as on an underlay
    /// that knows nothing of them. Needed for traffic straight from the
    /// client to a pod address (baselines that bypass the load balancer).
    pub native_routes: bool,
    /// Permanent neighbour entries for the nodes on the LB. Off by default:
    /// while a next hop is unresolved xlb's XDP program hands the
    /// encapsulated packet to the kernel (ok_neigh_pass), which forwards it
    /// and resolves the neighbour; on only to take ARP/ND out of a test.
    pub static_neighbours: bool,
    /// The pods of a workload taken from manifests ([`crate::workload`]),
    /// in place of `pods_per_node` nginx pods named "podN-M". Each serves
    /// its declared container ports with `xlb-probe serve`.
    pub workload: Vec<PodPlan>,
}

/// One pod of a workload: who it is, where it runs, what it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPlan {
    /// Kubernetes namespace and name.
    pub namespace: String,
    pub name: String,
    /// Node index (1-based) and the pod's slot on it (1-based): its
    /// addresses are [`pod_v4`]`(node, slot)` and [`pod_v6`]`(node, slot)`.
    pub node: u32,
    pub slot: u32,
    /// Container ports it serves.
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
}

impl PodPlan {
    /// Its name in the lab (namespaces, cgroups, answers): the pod's name in
    /// namespace "default", else "<namespace>.<name>".
    pub fn role(&self) -> String {
        role(&self.namespace, &self.name)
    }
}

/// The lab name of pod `namespace/name` (see [`PodPlan::role`]).
pub fn role(namespace: &str, name: &str) -> String {
    if namespace == "default" {
        name.to_string()
    } else {
        format!("{namespace}.{name}")
    }
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            nodes: 2,
            pods_per_node: 1,
            fabric_mtu: 1600,
            client_mtu: 1500,
            name_prefix: "xlb".into(),
            backends: true,
            native_routes: false,
            static_neighbours: false,
            workload: Vec::new(),
        }
    }
}

impl LabSpec {
    pub fn validate(&self) -> Result<(), LabError> {
        let bad = |field: &'static str, reason: String| Err(LabError::Spec { field, reason });
        if self.nodes == 0 || self.nodes > MAX_INDEX {
            return bad("nodes", format!("{} is outside 1..={MAX_INDEX}", self.nodes));
        }
        if self.pods_per_node == 0 || self.pods_per_node > MAX_INDEX {
            return bad(
                "pods_per_node",
                format!("{} is outside 1..={MAX_INDEX}", self.pods_per_node),
            );
        }
        for (field, mtu) in [("fabric_mtu", self.fabric_mtu), ("client_mtu", self.client_mtu)] {
            if !(1280..=9000).contains(&mtu) {
                return bad(field, format!("{mtu} is outside 1280..=9000"));
            }
        }
        if self.client_mtu > self.fabric_mtu {
            return bad(
                "client_mtu",
                format!("{} is larger than fabric_mtu {}", self.client_mtu, self.fabric_mtu),
            );
        }
        let (mut roles, mut slots) = (BTreeSet::new(), BTreeSet::new());
        for pod in &self.workload {
            let role = pod.role();
            let bad_pod = |reason: String| bad("workload", format!("pod {role}: {reason}"));
            if pod.node == 0 || pod.node > self.nodes {
                return bad_pod(format!("node {} is outside 1..={}", pod.node, self.nodes));
            }
            if pod.slot == 0 || pod.slot > MAX_INDEX {
                return bad_pod(format!("slot {} is outside 1..={MAX_INDEX}", pod.slot));
            }
            let host = ["client", "router", "lb"].contains(&role.as_str())
                || role.strip_prefix("node").is_some_and(|n| n.parse::<u32>().is_ok());
            if host || !roles.insert(role.clone()) {
                return bad_pod("the name is taken (by another pod or a lab host)".into());
            }
            if !slots.insert((pod.node, pod.slot)) {
                return bad_pod(format!("slot {} of node {} is taken", pod.slot, pod.node));
            }
        }
        let p = &self.name_prefix;
        if p.is_empty() || p.len() > 32 || !p.chars().all(|c| c.is_ascii_alphabetic()) {
            return bad(
                "name_prefix",
                format!(
                    "{p:?}: want 1 to 32 ASCII letters (the lab appends pid and sequence digits)"
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_brief() {
        assert_eq!(node_v4(1).to_string(), "10.0.0.11");
        assert_eq!(node_v6(2).to_string(), "2001:db8:f::12");
        assert_eq!(pod_v6(12, 100).to_string(), "2001:db8:244:12::110");
        assert_eq!(pod_v4(2, 1).to_string(), "10.244.2.11");
        assert_eq!(pod_v6(1, 3).to_string(), "2001:db8:244:1::13");
        assert_eq!(pod_cidr_v6(3).0.to_string(), "2001:db8:244:3::");
        assert_eq!(VIP_V6.to_string(), "2001:db8:100::1");
    }

    #[test]
    fn spec_rejects_bad_fields_by_name() {
        let err = LabSpec { nodes: 0, ..LabSpec::default() }.validate().unwrap_err();
        assert!(err.to_string().contains("nodes"), "{err}");
        let err =
            LabSpec { name_prefix: "x-1".into(), ..LabSpec::default() }.validate().unwrap_err();
        assert!(err.to_string().contains("name_prefix"), "{err}");
        LabSpec::default().validate().unwrap();
    }
}
