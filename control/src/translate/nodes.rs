//! Nodes: the addresses translation reads from a Node's status.addresses
//! (InternalIP and ExternalIP, in API order) and its pod ranges
//! (spec.podCIDRs), this node's [`NodeConfig`] (tunnel source addresses),
//! the NodePort addresses of this node, the tunnel endpoint of the node an
//! endpoint runs on (for [`super::endpoints`]), and the pod network seen
//! from this node ([`PodNetwork`]: every node's ranges and where the node
//! is, the underlay addresses tunnels are accepted from). [`Nodes`] is the
//! store the [`super::tracker::Tracker`] keeps them in; a Node change
//! matters only if its addresses or ranges changed (status heartbeats do
//! not).
use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

// hashbrown's tables (foldhash, seeded per table): these are keyed by
// object and node names any namespace user chooses, so not an unseeded hash
// (FxHash) that a user could collide on purpose; faster than std's SipHash
// at a cold start's 300k endpoint node lookups.
use hashbrown::HashMap;

use k8s_openapi::api::core::v1::Node;
use lb::model::{Cidr, NodeConfig, PeerRole, PodRoute};

use super::{
    errors::{ConfigError, ObjectRef, Problem},
    parse_ip, TranslateOptions,
};
use crate::cluster;

/// An address from a Node's status.addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct NodeAddr {
    pub(super) addr: IpAddr,
    /// InternalIP (else ExternalIP).
    pub(super) internal: bool,
}

/// A Node: its addresses, pod ranges and problems.
#[derive(Debug)]
struct NodeEntry {
    object: Arc<Node>,
    addrs: Vec<NodeAddr>,
    pod_cidrs: Vec<Cidr>,
    errors: Vec<ConfigError>,
}

impl NodeEntry {
    fn new(node: Arc<Node>) -> Self {
        let object = ObjectRef::of(&*node);
        let mut addrs = Vec::new();
        let mut errors = Vec::new();
        let list = node.status.as_ref().and_then(|s| s.addresses.as_ref());
        for (i, a) in list.into_iter().flatten().enumerate() {
            let internal = match a.type_.as_str() {
                "InternalIP" => true,
                "ExternalIP" => false,
                _ => continue,
            };
            match parse_ip(&a.address) {
                Ok(addr) => addrs.push(NodeAddr { addr, internal }),
                Err(problem) => errors.push(ConfigError {
                    object: object.clone(),
                    field: format!("status.addresses[{i}].address"),
                    problem,
                }),
            }
        }
        let spec = node.spec.as_ref();
        let (field, cidrs) = match spec.and_then(|s| s.pod_cidrs.clone()).filter(|c| !c.is_empty())
        {
            Some(list) => ("spec.podCIDRs", list),
            None => ("spec.podCIDR", spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect()),
        };
        let mut pod_cidrs = Vec::new();
        for (i, c) in cidrs.iter().enumerate() {
            let field =
                if field == "spec.podCIDRs" { format!("{field}[{i}]") } else { field.to_string() };
            match c.trim().parse::<Cidr>() {
                Ok(cidr) if cidr.network() == cidr => pod_cidrs.push(cidr),
                Ok(cidr) => errors.push(ConfigError {
                    object: object.clone(),
                    field,
                    problem: Problem::BadCidr {
                        value: c.clone(),
                        reason: format!("host bits set (the range is {})", cidr.network()),
                    },
                }),
                Err(reason) => errors.push(ConfigError {
                    object: object.clone(),
                    field,
                    problem: Problem::BadCidr { value: c.clone(), reason },
                }),
            }
        }
        NodeEntry { object: node, addrs, pod_cidrs, errors }
    }
}

/// The pod network as the Nodes describe it, seen from this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodNetwork {
    /// Every node's pod ranges and its underlay address (nodes without a
    /// usable address are left out).
    pub routes: Vec<PodRoute>,
    /// Every node's InternalIPs: xlb's tunnel traffic is accepted from them.
    pub peers: BTreeMap<IpAddr, PeerRole>,
    /// This node's own ranges (the CNI plugin allocates from them).
    pub local: Vec<Cidr>,
}

/// Every Node by name, with their addresses and problems.
#[derive(Debug, Default)]
pub(super) struct Nodes {
    by_name: HashMap<String, NodeEntry>,
    /// Nodes with a problem.
    with_errors: usize,
    /// Moves whenever a node's addresses or pod ranges change, or a node
    /// comes or goes: the pod network may differ.
    network_gen: u64,
}

impl Nodes {
    /// Replaces node `name` with `node` (None: it is gone); whether its
    /// addresses changed. An unchanged object is skipped.
    pub(super) fn update(&mut self, name: String, node: Option<Arc<Node>>) -> bool {
        if let (Some(old), Some(new)) = (self.by_name.get(&name), &node) {
            if cluster::unchanged(&old.object, new) {
                return false;
            }
        }
        let old = self.by_name.remove(&name);
        if old.as_ref().is_some_and(|o| !o.errors.is_empty()) {
            self.with_errors -= 1;
        }
        let new = node.map(NodeEntry::new);
        if new.as_ref().is_some_and(|n| !n.errors.is_empty()) {
            self.with_errors += 1;
        }
        let changed = old.as_ref().map(|o| &o.addrs) != new.as_ref().map(|n| &n.addrs);
        if changed || old.as_ref().map(|o| &o.pod_cidrs) != new.as_ref().map(|n| &n.pod_cidrs) {
            self.network_gen += 1;
        }
        if let Some(n) = new {
            self.by_name.insert(name, n);
        }
        changed
    }

    pub(super) fn len(&self) -> usize {
        self.by_name.len()
    }

    pub(super) fn names(&self) -> impl Iterator<Item = &String> {
        self.by_name.keys()
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The addresses of node `name`, if it is known.
    pub(super) fn addrs(&self, name: &str) -> Option<&[NodeAddr]> {
        self.by_name.get(name).map(|n| n.addrs.as_slice())
    }

    /// No node has a problem.
    pub(super) fn are_valid(&self) -> bool {
        self.with_errors == 0
    }

    /// Every node's problems, nodes by name.
    pub(super) fn errors(&self) -> Vec<ConfigError> {
        let mut names: Vec<&String> = self.by_name.keys().collect();
        names.sort();
        names.into_iter().flat_map(|n| self.by_name[n].errors.iter().cloned()).collect()
    }

    /// Where a tunnel to node `name` goes for an endpoint of family `v6`: its
    /// first InternalIP of that family, else its first InternalIP.
    pub(super) fn tunnel_endpoint(&self, name: &str, v6: bool) -> Result<IpAddr, Problem> {
        let Some(addrs) = self.addrs(name) else {
            return Err(Problem::UnknownNode { node: name.to_string() });
        };
        let internal = || addrs.iter().filter(|a| a.internal).map(|a| a.addr);
        internal()
            .find(|a| a.is_ipv6() == v6)
            .or_else(|| internal().next())
            .ok_or_else(|| Problem::NodeWithoutAddress { node: name.to_string() })
    }

    /// Moves whenever [`Nodes::pod_network`] may have changed.
    pub(super) fn network_generation(&self) -> u64 {
        self.network_gen
    }

    /// The pod network: every node's ranges routed to its tunnel endpoint
    /// for the range's family (as [`Nodes::tunnel_endpoint`] picks it),
    /// every InternalIP a tunnel peer, `this_node`'s ranges local.
    pub(super) fn pod_network(&self, this_node: &str) -> PodNetwork {
        let mut net = PodNetwork::default();
        let mut names: Vec<&String> = self.by_name.keys().collect();
        names.sort();
        for name in names {
            let n = &self.by_name[name];
            for a in n.addrs.iter().filter(|a| a.internal) {
                net.peers.entry(a.addr).or_default().node = true;
            }
            for c in &n.pod_cidrs {
                let Ok(node) = self.tunnel_endpoint(name, c.addr.is_ipv6()) else { continue };
                let local = name == this_node;
                net.routes.push(PodRoute { cidr: *c, node, local });
                if local {
                    net.local.push(*c);
                }
            }
        }
        net
    }

    /// This node's datapath settings: the tunnel source addresses (the
    /// options' overrides, else its first InternalIP of each family).
    pub(super) fn config(&self, opts: &TranslateOptions) -> NodeConfig {
        let Some(addrs) = self.addrs(&opts.node_name) else {
            return NodeConfig::default();
        };
        let internal = || addrs.iter().filter(|a| a.internal).map(|a| a.addr);
        NodeConfig {
            tunnel_v4: opts.tunnel_v4.or_else(|| {
                internal().find_map(|a| match a {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                })
            }),
            tunnel_v6: opts.tunnel_v6.or_else(|| {
                internal().find_map(|a| match a {
                    IpAddr::V6(v6) => Some(v6),
                    IpAddr::V4(_) => None,
                })
            }),
        }
    }
}

/// Address families a Service exists in.
#[derive(Clone, Copy, Debug)]
pub(super) struct Families {
    pub(super) v4: bool,
    pub(super) v6: bool,
}

/// The addresses a NodePort opens on: this node's InternalIP and ExternalIP
/// addresses of the Service's families, in API order.
pub(super) fn node_port_addrs(this_node: &[NodeAddr], families: Families) -> Vec<IpAddr> {
    let of_family = |a: &IpAddr| if a.is_ipv6() { families.v6 } else { families.v4 };
    this_node.iter().map(|a| a.addr).filter(of_family).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node1}
spec: {podCIDRs: ["10.244.1.0/24", "2001:db8:244:1::/64"]}
status:
  addresses:
  - {type: InternalIP, address: 10.0.0.11}
  - {type: InternalIP, address: "2001:db8:f::11"}
  - {type: ExternalIP, address: 203.0.113.11}
---
apiVersion: v1
kind: Node
metadata: {name: node2}
spec: {podCIDR: 10.244.2.0/24}
status:
  addresses:
  - {type: InternalIP, address: 10.0.0.12}
---
apiVersion: v1
kind: Node
metadata: {name: lb}
status:
  addresses:
  - {type: InternalIP, address: 10.0.0.2}
"#;

    fn nodes(yaml: &str) -> Nodes {
        let cluster = crate::source::file::load_str(yaml, "test").unwrap();
        let mut nodes = Nodes::default();
        for n in cluster.nodes {
            nodes.update(n.metadata.name.clone().unwrap(), Some(Arc::new(n)));
        }
        nodes
    }

    #[test]
    fn pod_ranges_are_routed_to_their_node_and_internal_ips_are_peers() {
        let n = nodes(NODES);
        let net = n.pod_network("node1");
        let r: Vec<String> = net
            .routes
            .iter()
            .map(|r| format!("{} -> {}{}", r.cidr, r.node, if r.local { " (local)" } else { "" }))
            .collect();
        assert_eq!(
            r,
            [
                "10.244.1.0/24 -> 10.0.0.11 (local)",
                "2001:db8:244:1::/64 -> 2001:db8:f::11 (local)",
                "10.244.2.0/24 -> 10.0.0.12",
            ]
        );
        let peers: Vec<String> = net.peers.keys().map(ToString::to_string).collect();
        assert_eq!(peers, ["10.0.0.2", "10.0.0.11", "10.0.0.12", "2001:db8:f::11"]);
        assert_eq!(net.local.len(), 2);
        assert!(n.are_valid());
    }

    #[test]
    fn a_bad_pod_range_names_its_field_and_only_range_changes_move_the_generation() {
        let n = nodes(&NODES.replace("10.244.1.0/24\", \"2001", "10.244.1.7/24\", \"2001"));
        let e = n.errors();
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0].to_string().split(": ").take(2).collect::<Vec<_>>(),
            ["Node node1", "spec.podCIDRs[0]"]
        );

        let mut n = nodes(NODES);
        let gen = n.network_generation();
        let cluster = crate::source::file::load_str(NODES, "test").unwrap();
        let mut node2 = cluster.nodes[1].clone();
        node2.metadata.labels = Some([("heartbeat".to_string(), "1".to_string())].into());
        n.update("node2".into(), Some(Arc::new(node2.clone())));
        assert_eq!(n.network_generation(), gen, "a label is not the network");
        node2.spec.as_mut().unwrap().pod_cidr = Some("10.244.9.0/24".into());
        n.update("node2".into(), Some(Arc::new(node2)));
        assert!(n.network_generation() > gen);
        n.update("node2".into(), None);
        assert!(n
            .pod_network("node1")
            .routes
            .iter()
            .all(|r| r.node != "10.0.0.12".parse::<IpAddr>().unwrap()));
    }
}
