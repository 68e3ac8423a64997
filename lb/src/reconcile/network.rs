//! The network reconciler: the pod network as this node's datapath holds
//! it — every node's pod ranges (xlb_pod_routes), the underlay addresses
//! xlb's tunnel traffic is accepted from (xlb_tunnel_peers), the
//! non-masquerade prefixes (xlb_nonmasq) and this node's settings
//! (xlb_podnet). Desired [`Network`] in; the difference to what was written
//! out; the mirror changes only after its write succeeded. Restored from
//! the maps, so a restarted agent writes nothing that is already there.
//!
//! Order: what admits traffic or tells where it goes is written before the
//! settings that use it (peers, routes and non-masquerade prefixes before
//! xlb_podnet turns masquerade on), and removed after (a prefix leaves the
//! non-masquerade list only once the settings no longer need it).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::{ApplyStats, DatapathError};
use crate::{
    abi,
    model::{Cidr, Masquerade, Network},
    store::{MapStore, StoreError, Write},
};

/// Why a desired network is refused (before anything is written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkProblem {
    #[error("pod range {cidr} given to nodes {first} and {second}")]
    DuplicateRoute { cidr: Cidr, first: IpAddr, second: IpAddr },
    #[error("prefix {cidr}: length past the address")]
    BadPrefix { cidr: Cidr },
    #[error("masquerade ports {min}-{max}: want 1 <= min <= max")]
    MasqPorts { min: u16, max: u16 },
    #[error("pod address {addr} given to two endpoints ({first}, {second})")]
    DuplicateAddress { addr: IpAddr, first: String, second: String },
    #[error("endpoint {name}: no host interface (ifindex 0)")]
    NoInterface { name: String },
}

fn check_prefix(cidr: &Cidr) -> Result<(), DatapathError> {
    let max = if cidr.addr.is_ipv4() { 32 } else { 128 };
    if cidr.len > max {
        return Err(DatapathError::Network(NetworkProblem::BadPrefix { cidr: *cidr }));
    }
    Ok(())
}

/// Checks what the maps cannot hold, so that a bad network is refused
/// before any write.
pub(crate) fn validate(net: &Network) -> Result<(), DatapathError> {
    let mut seen: BTreeMap<Cidr, IpAddr> = BTreeMap::new();
    for r in &net.routes {
        check_prefix(&r.cidr)?;
        if let Some(first) = seen.insert(r.cidr.network(), r.node) {
            if first != r.node {
                return Err(DatapathError::Network(NetworkProblem::DuplicateRoute {
                    cidr: r.cidr.network(),
                    first,
                    second: r.node,
                }));
            }
        }
    }
    if let Some(m) = &net.masquerade {
        if m.ports.0 == 0 || m.ports.0 > m.ports.1 {
            return Err(DatapathError::Network(NetworkProblem::MasqPorts {
                min: m.ports.0,
                max: m.ports.1,
            }));
        }
        m.non_masquerade.iter().try_for_each(check_prefix)?;
    }
    Ok(())
}

fn route_value(node: IpAddr, local: bool) -> abi::Route {
    let (node, node_family) = abi::addr_to_abi(node);
    abi::Route { node, node_family, flags: if local { abi::ROUTE_F_LOCAL } else { 0 }, pad: 0 }
}

fn peer_flags(role: &crate::model::PeerRole) -> u32 {
    (if role.node { abi::PEER_F_NODE } else { 0 })
        | (if role.load_balancer { abi::PEER_F_LB } else { 0 })
}

fn podnet_cfg(net: &Network) -> abi::PodnetCfg {
    let (flags, (min, max)) = match &net.masquerade {
        Some(Masquerade { ports, .. }) => (abi::PODNET_F_MASQ, *ports),
        None => (0, (abi::SNAT_PORT_MIN, abi::SNAT_PORT_MAX)),
    };
    abi::PodnetCfg {
        flags,
        masq_port_min: min,
        masq_port_max: max,
        icmp_rate: net.icmp_rate,
        pad: 0,
    }
}

const ZERO_CFG: abi::PodnetCfg =
    abi::PodnetCfg { flags: 0, masq_port_min: 0, masq_port_max: 0, icmp_rate: 0, pad: 0 };

/// The network reconciler: a mirror of the four tables.
#[derive(Debug, Default)]
pub(crate) struct NetworkState {
    routes: BTreeMap<Cidr, abi::Route>,
    peers: BTreeMap<IpAddr, u32>,
    nonmasq: BTreeSet<Cidr>,
    /// xlb_podnet as written; None: never written (all zero).
    cfg: Option<abi::PodnetCfg>,
}

impl NetworkState {
    /// What the maps hold.
    pub fn restore<S: MapStore>(store: &S) -> Result<NetworkState, StoreError> {
        let cfg = store.podnet()?;
        Ok(NetworkState {
            routes: store.pod_routes()?.into_iter().map(|(c, v)| (c.network(), v)).collect(),
            peers: store.tunnel_peers()?.into_iter().collect(),
            nonmasq: store.nonmasq()?.into_iter().map(|c| c.network()).collect(),
            cfg: (cfg != ZERO_CFG).then_some(cfg),
        })
    }

    /// Makes the tables hold `net`; counts the writes in `stats`.
    pub fn apply<S: MapStore>(
        &mut self,
        store: &mut S,
        net: &Network,
        stats: &mut ApplyStats,
    ) -> Result<(), DatapathError> {
        let routes: BTreeMap<Cidr, abi::Route> =
            net.routes.iter().map(|r| (r.cidr.network(), route_value(r.node, r.local))).collect();
        let peers: BTreeMap<IpAddr, u32> =
            net.peers.iter().map(|(a, role)| (*a, peer_flags(role))).collect();
        let nonmasq: BTreeSet<Cidr> = net
            .masquerade
            .iter()
            .flat_map(|m| m.non_masquerade.iter().map(Cidr::network))
            .collect();
        let cfg = podnet_cfg(net);

        for (addr, flags) in &peers {
            if self.peers.get(addr) != Some(flags) {
                store.write(Write::TunnelPeer { addr: *addr, flags: *flags })?;
                self.peers.insert(*addr, *flags);
                stats.network_writes += 1;
            }
        }
        for (cidr, value) in &routes {
            if self.routes.get(cidr) != Some(value) {
                store.write(Write::PodRoute { cidr: *cidr, value: *value })?;
                self.routes.insert(*cidr, *value);
                stats.network_writes += 1;
            }
        }
        for cidr in nonmasq.difference(&self.nonmasq.clone()) {
            store.write(Write::NonMasq { cidr: *cidr })?;
            self.nonmasq.insert(*cidr);
            stats.network_writes += 1;
        }
        if self.cfg != Some(cfg) {
            store.write(Write::Podnet { cfg })?;
            self.cfg = Some(cfg);
            stats.network_writes += 1;
        }
        for cidr in self.nonmasq.clone().difference(&nonmasq) {
            store.write(Write::NonMasqDelete { cidr: *cidr })?;
            self.nonmasq.remove(cidr);
            stats.deletes += 1;
        }
        let gone: Vec<Cidr> =
            self.routes.keys().filter(|c| !routes.contains_key(c)).copied().collect();
        for cidr in gone {
            store.write(Write::PodRouteDelete { cidr })?;
            self.routes.remove(&cidr);
            stats.deletes += 1;
        }
        let gone: Vec<IpAddr> =
            self.peers.keys().filter(|a| !peers.contains_key(a)).copied().collect();
        for addr in gone {
            store.write(Write::TunnelPeerDelete { addr })?;
            self.peers.remove(&addr);
            stats.deletes += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        model::{PeerRole, PodRoute},
        store::{MemStore, Target},
    };

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn two_nodes() -> Network {
        let node = PeerRole { node: true, load_balancer: false };
        Network {
            routes: vec![
                PodRoute { cidr: cidr("10.244.1.0/24"), node: ip("10.0.0.11"), local: true },
                PodRoute { cidr: cidr("10.244.2.0/24"), node: ip("10.0.0.12"), local: false },
                PodRoute { cidr: cidr("2001:db8:244:2::/64"), node: ip("10.0.0.12"), local: false },
            ],
            peers: [(ip("10.0.0.11"), node), (ip("10.0.0.12"), node)].into(),
            masquerade: Some(Masquerade {
                ports: (61000, 65535),
                non_masquerade: vec![cidr("192.168.0.0/16")],
            }),
            ..Network::default()
        }
    }

    fn applied(store: &mut MemStore, state: &mut NetworkState, net: &Network) -> ApplyStats {
        let mut stats = ApplyStats::default();
        validate(net).unwrap();
        state.apply(store, net, &mut stats).unwrap();
        stats
    }

    #[test]
    fn a_network_is_written_once_and_restored_as_written() {
        let mut store = MemStore::default();
        let mut state = NetworkState::restore(&store).unwrap();
        let net = two_nodes();
        let first = applied(&mut store, &mut state, &net);
        assert_eq!(first.network_writes, 2 + 3 + 1 + 1, "peers, routes, non-masquerade, settings");
        // Settings last: masquerade is turned on after what it reads.
        assert_eq!(store.log().last().unwrap().target, Target::Podnet);
        assert_eq!(applied(&mut store, &mut state, &net).writes(), 0, "nothing changed");
        let mut restored = NetworkState::restore(&store).unwrap();
        assert_eq!(applied(&mut store, &mut restored, &net).writes(), 0, "restored exactly");
        assert_eq!(
            store
                .pod_routes()
                .unwrap()
                .iter()
                .find(|(c, _)| *c == cidr("10.244.1.0/24"))
                .unwrap()
                .1
                .flags,
            abi::ROUTE_F_LOCAL
        );
    }

    #[test]
    fn a_node_gone_removes_its_range_and_peer_and_nothing_else() {
        let mut store = MemStore::default();
        let mut state = NetworkState::default();
        let mut net = two_nodes();
        applied(&mut store, &mut state, &net);
        store.take_log();
        net.routes.retain(|r| r.node != ip("10.0.0.12"));
        net.peers.remove(&ip("10.0.0.12"));
        let stats = applied(&mut store, &mut state, &net);
        assert_eq!((stats.network_writes, stats.deletes), (0, 3));
        let targets: Vec<Target> = store.log().iter().map(|w| w.target).collect();
        assert_eq!(
            targets,
            [
                Target::PodRoute(cidr("10.244.2.0/24")),
                Target::PodRoute(cidr("2001:db8:244:2::/64")),
                Target::TunnelPeer(ip("10.0.0.12")),
            ]
        );
    }

    #[test]
    fn masquerade_off_clears_its_prefixes_after_the_settings() {
        let mut store = MemStore::default();
        let mut state = NetworkState::default();
        let mut net = two_nodes();
        applied(&mut store, &mut state, &net);
        store.take_log();
        net.masquerade = None;
        applied(&mut store, &mut state, &net);
        let targets: Vec<Target> = store.log().iter().map(|w| w.target).collect();
        assert_eq!(targets, [Target::Podnet, Target::NonMasq(cidr("192.168.0.0/16"))]);
        assert_eq!(store.podnet().unwrap().flags, 0);
    }

    #[test]
    fn bad_networks_are_refused_before_any_write() {
        let mut net = two_nodes();
        net.routes.push(PodRoute {
            cidr: cidr("10.244.2.7/24"),
            node: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99)),
            local: false,
        });
        let err = validate(&net).unwrap_err().to_string();
        assert!(err.contains("10.244.2.0/24 given to nodes 10.0.0.12 and 10.0.0.99"), "{err}");
        let mut net = two_nodes();
        net.masquerade.as_mut().unwrap().ports = (65000, 64000);
        assert!(validate(&net).is_err());
    }
}
