//! Nodes: the addresses translation reads from a Node's status.addresses
//! (InternalIP and ExternalIP, in API order), this node's [`NodeConfig`]
//! (tunnel source addresses), the NodePort addresses of this node, and the
//! tunnel endpoint of the node an endpoint runs on (for
//! [`super::endpoints`]). [`Nodes`] is the store the
//! [`super::tracker::Tracker`] keeps them in; a Node change matters only if
//! its addresses changed (status heartbeats do not).
use std::{collections::HashMap, net::IpAddr, sync::Arc};

use k8s_openapi::api::core::v1::Node;
use lb::model::NodeConfig;

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

/// A Node: its addresses and its problems.
#[derive(Debug)]
struct NodeEntry {
    object: Arc<Node>,
    addrs: Vec<NodeAddr>,
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
        NodeEntry { object: node, addrs, errors }
    }
}

/// Every Node by name, with their addresses and problems.
#[derive(Debug, Default)]
pub(super) struct Nodes {
    by_name: HashMap<String, NodeEntry>,
    /// Nodes with a problem.
    with_errors: usize,
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
