//! The node reconciler: this node's identity in the datapath (xlb_node:
//! its tunnel source addresses) and the tunnel endpoints the services'
//! backends need — every backend's node address, counted, so the agent
//! keeps next hops resolved for exactly the nodes in use.
use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use super::DatapathError;
use crate::{
    abi,
    model::NodeConfig,
    store::{MapStore, Write},
};

/// Tunnel endpoints (backend node addresses) and how many backends each
/// carries; `gen` moves whenever one appears or goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tunnels {
    pub refs: HashMap<IpAddr, u32>,
    pub gen: u64,
}

fn tunnel_of(v: &abi::Backend) -> Option<IpAddr> {
    abi::addr_from_abi(&v.node, v.node_family).filter(|a| !a.is_unspecified())
}

impl Tunnels {
    /// A backend entry `v` was written: its node is tunnelled to.
    pub fn hold(&mut self, v: &abi::Backend) {
        if let Some(a) = tunnel_of(v) {
            let n = self.refs.entry(a).or_default();
            *n += 1;
            if *n == 1 {
                self.gen += 1;
            }
        }
    }

    /// A backend entry `v` was replaced or freed.
    pub fn release(&mut self, v: &abi::Backend) {
        if let Some(a) = tunnel_of(v) {
            if let Some(n) = self.refs.get_mut(&a) {
                *n -= 1;
                if *n == 0 {
                    self.refs.remove(&a);
                    self.gen += 1;
                }
            }
        }
    }
}

/// The node reconciler.
#[derive(Debug, Default)]
pub(crate) struct Node {
    /// xlb_node as written; None: never written.
    pub cfg: Option<abi::NodeCfg>,
    pub tunnels: Tunnels,
}

fn node_cfg(node: &NodeConfig) -> abi::NodeCfg {
    abi::NodeCfg {
        addr4: node.tunnel_v4.map_or([0; 4], |a| a.octets()),
        addr6: node.tunnel_v6.map_or([0; 16], |a| a.octets()),
        geneve_port: abi::GENEVE_PORT.to_be(),
        pad: 0,
        vni: 0,
    }
}

impl Node {
    /// What xlb_node holds (a zero Geneve port: never written); the tunnels
    /// are counted as the services are restored.
    pub fn restore(cfg: abi::NodeCfg) -> Node {
        Node { cfg: (cfg.geneve_port != 0).then_some(cfg), tunnels: Tunnels::default() }
    }

    /// Writes this node's settings if they changed; returns whether it did.
    pub fn apply<S: MapStore>(
        &mut self,
        store: &mut S,
        node: &NodeConfig,
    ) -> Result<bool, DatapathError> {
        let cfg = node_cfg(node);
        if self.cfg == Some(cfg) {
            return Ok(false);
        }
        store.write(Write::Node { cfg })?;
        self.cfg = Some(cfg);
        self.tunnels.gen += 1; // this node's own addresses are not tunnelled to
        Ok(true)
    }

    /// Every node address the datapath may tunnel to (this node's own
    /// addresses excluded: those backends are delivered locally).
    pub fn tunnel_endpoints(&self) -> BTreeSet<IpAddr> {
        let own: Vec<IpAddr> = self
            .cfg
            .iter()
            .flat_map(|n| [IpAddr::from(n.addr4), IpAddr::from(n.addr6)])
            .filter(|a| !a.is_unspecified())
            .collect();
        self.tunnels.refs.keys().filter(|a| !own.contains(a)).copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::store::MemStore;

    fn backend_on(node: &str) -> abi::Backend {
        let (n, nf) = abi::addr_to_abi(node.parse().unwrap());
        abi::Backend {
            addr: [0; 16],
            node: n,
            port: 0,
            family: 4,
            node_family: nf,
            flags: abi::BE_F_ACTIVE,
            svc_id: 0,
            gen: 1,
        }
    }

    #[test]
    fn tunnels_count_backends_per_node_and_move_their_generation_on_first_and_last() {
        let mut t = Tunnels::default();
        let (a, b) = (backend_on("10.0.0.1"), backend_on("10.0.0.2"));
        t.hold(&a);
        assert_eq!(t.gen, 1);
        t.hold(&a);
        t.hold(&b);
        assert_eq!((t.refs[&"10.0.0.1".parse().unwrap()], t.gen), (2, 2));
        t.release(&a);
        assert_eq!(t.gen, 2, "10.0.0.1 still carries a backend");
        t.release(&a);
        assert_eq!(t.gen, 3);
        assert!(!t.refs.contains_key(&"10.0.0.1".parse().unwrap()));
        t.hold(&backend_on("0.0.0.0"));
        assert_eq!((t.refs.len(), t.gen), (1, 3), "no node: not tunnelled");
    }

    #[test]
    fn node_settings_are_written_once_and_its_own_address_is_not_a_tunnel() {
        let mut store = MemStore::default();
        let mut node = Node::restore(store.node().unwrap());
        assert_eq!(node.cfg, None);
        let cfg = NodeConfig { tunnel_v4: Some(Ipv4Addr::new(10, 0, 0, 1)), tunnel_v6: None };
        assert!(node.apply(&mut store, &cfg).unwrap());
        assert!(!node.apply(&mut store, &cfg).unwrap());
        assert_eq!(store.log().len(), 1);
        node.tunnels.hold(&backend_on("10.0.0.1"));
        node.tunnels.hold(&backend_on("10.0.0.2"));
        assert_eq!(node.tunnel_endpoints(), ["10.0.0.2".parse().unwrap()].into());
        assert_eq!(Node::restore(store.node().unwrap()).cfg, node.cfg, "restored as written");
    }
}
