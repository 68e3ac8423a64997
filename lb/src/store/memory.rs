//! [`MapStore`] on in-memory tables that behave like the BPF maps (arrays
//! read as zeroes, deletes of absent keys succeed, ids bounded by the
//! capacity), with a log of every write in order: what an apply would do to
//! a node, without a kernel. The reconcilers' unit tests run on it.
use std::{
    collections::{BTreeMap, BTreeSet},
    ops::ControlFlow,
};

use std::net::IpAddr;

use super::{
    BackendMeta, Capacity, CtGuardTotals, MapStore, SnatTotals, SockTraffic, StoreError,
    SvcTraffic, Target, Traffic, Write,
};
use crate::{abi, model::Cidr};

/// One logged write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteRecord {
    pub target: Target,
    pub delete: bool,
}

/// A sortable form of a frontend key (the ABI struct is not `Ord`).
type FeOrd = (u8, [u8; 16], u16, u8);

fn fe_ord(k: &abi::FrontendKey) -> FeOrd {
    (k.family, k.addr, k.port, k.proto)
}

/// The datapath maps in memory.
#[derive(Clone, Debug)]
pub struct MemStore {
    capacity: Capacity,
    svc_names: BTreeMap<u32, String>,
    svc_stats: BTreeMap<u32, SvcTraffic>,
    frontends: BTreeMap<FeOrd, (abi::FrontendKey, abi::Service)>,
    sock_frontends: BTreeMap<FeOrd, (abi::FrontendKey, abi::Service)>,
    sock_stats: BTreeMap<u32, SockTraffic>,
    source_ranges: BTreeSet<(u32, Cidr)>,
    /// By (service id, size class): a table lives in its class's map.
    maglev: BTreeMap<(u32, usize), Vec<u16>>,
    backends: BTreeMap<u32, abi::Backend>,
    backend_stats: BTreeMap<u32, Traffic>,
    backend_meta: BTreeMap<u32, BackendMeta>,
    svc_backend_ids: BTreeMap<u32, abi::SvcBackendIds>,
    svc_backends: BTreeMap<(u32, u32), u32>,
    node: abi::NodeCfg,
    config_gen: u64,
    connections: Vec<(abi::FlowKey, abi::CtEntry)>,
    endpoints: BTreeMap<IpAddr, abi::Endpoint>,
    tunnel_peers: BTreeMap<IpAddr, u32>,
    pod_routes: BTreeMap<Cidr, abi::Route>,
    nonmasq: BTreeSet<Cidr>,
    podnet: abi::PodnetCfg,
    policy_eps: BTreeMap<u32, u32>,
    policies: BTreeMap<crate::policy::EntryKey, u32>,
    addr_identities: BTreeMap<Cidr, abi::AddrIdentity>,
    /// xlb_fe_filter's nonzero entries.
    fe_filter: BTreeMap<u32, u64>,
    log: Vec<WriteRecord>,
}

const ZERO_BACKEND: abi::Backend = abi::Backend {
    addr: [0; 16],
    node: [0; 16],
    port: 0,
    family: 0,
    node_family: 0,
    flags: 0,
    svc_id: 0,
    gen: 0,
};

impl Default for MemStore {
    /// The capacities of [`crate::loader::MapSizes::small`].
    fn default() -> Self {
        MemStore::new(Capacity { services: 1024, backends: 16384 })
    }
}

impl MemStore {
    /// Empty maps of these capacities.
    pub fn new(capacity: Capacity) -> MemStore {
        MemStore {
            capacity,
            svc_names: BTreeMap::new(),
            svc_stats: BTreeMap::new(),
            frontends: BTreeMap::new(),
            sock_frontends: BTreeMap::new(),
            sock_stats: BTreeMap::new(),
            source_ranges: BTreeSet::new(),
            maglev: BTreeMap::new(),
            backends: BTreeMap::new(),
            backend_stats: BTreeMap::new(),
            backend_meta: BTreeMap::new(),
            svc_backend_ids: BTreeMap::new(),
            svc_backends: BTreeMap::new(),
            node: abi::NodeCfg { addr4: [0; 4], addr6: [0; 16], geneve_port: 0, pad: 0, vni: 0 },
            config_gen: 0,
            connections: Vec::new(),
            endpoints: BTreeMap::new(),
            tunnel_peers: BTreeMap::new(),
            pod_routes: BTreeMap::new(),
            nonmasq: BTreeSet::new(),
            policy_eps: BTreeMap::new(),
            policies: BTreeMap::new(),
            addr_identities: BTreeMap::new(),
            fe_filter: BTreeMap::new(),
            podnet: abi::PodnetCfg {
                flags: 0,
                masq_port_min: 0,
                masq_port_max: 0,
                icmp_rate: 0,
                pad: 0,
            },
            log: Vec::new(),
        }
    }

    /// Every write so far, in order.
    pub fn log(&self) -> &[WriteRecord] {
        &self.log
    }

    /// The log so far, emptied.
    pub fn take_log(&mut self) -> Vec<WriteRecord> {
        std::mem::take(&mut self.log)
    }

    /// xlb_config_gen\[0\].gen.
    pub fn config_gen(&self) -> u64 {
        self.config_gen
    }

    /// What the XDP program's frontend filter answers for `key`: false
    /// only when the filter is armed and the key's bit is clear.
    pub fn fe_filter_maybe(&self, key: &abi::FrontendKey) -> bool {
        let bit = abi::fe_filter_bit(key);
        let word = self.fe_filter.get(&(bit >> 6)).copied().unwrap_or(0);
        word >> (bit & 63) & 1 == 1 || !self.fe_filter.contains_key(&abi::FE_FILTER_ARMED)
    }

    /// The datapath's side: a connection-table entry as a program writes it.
    pub fn insert_connection(&mut self, key: abi::FlowKey, entry: abi::CtEntry) {
        self.connections.retain(|(k, _)| *k != key);
        self.connections.push((key, entry));
    }

    /// The datapath's side: socket translations counted for a service.
    pub fn count_sock(&mut self, svc_id: u32, connect: u64) {
        self.sock_stats.entry(svc_id).or_default().connect += connect;
    }

    /// The datapath's side: traffic counted for a service and a backend.
    pub fn count_traffic(&mut self, svc_id: u32, backend_id: u32, packets: u64, bytes: u64) {
        let s = self.svc_stats.entry(svc_id).or_default();
        s.packets += packets;
        s.bytes += bytes;
        let b = self.backend_stats.entry(backend_id).or_default();
        b.packets += packets;
        b.bytes += bytes;
    }

    fn check_id(&self, w: &Write<'_>, id: u32, capacity: u32) -> Result<(), StoreError> {
        if id >= capacity {
            return Err(StoreError::OutOfRange {
                map: w.target().map(),
                op: w.op(),
                key: id,
                capacity,
            });
        }
        Ok(())
    }
}

impl MapStore for MemStore {
    fn capacity(&self) -> Capacity {
        self.capacity
    }

    fn svc_names(&self) -> Result<Vec<(u32, String)>, StoreError> {
        Ok(self.svc_names.iter().map(|(id, n)| (*id, n.clone())).collect())
    }

    fn frontends(&self) -> Result<Vec<(abi::FrontendKey, abi::Service)>, StoreError> {
        Ok(self.frontends.values().copied().collect())
    }

    fn sock_frontends(&self) -> Result<Vec<(abi::FrontendKey, abi::Service)>, StoreError> {
        Ok(self.sock_frontends.values().copied().collect())
    }

    fn svc_backends_hash(&self) -> Result<Vec<(abi::SvcBackendKey, u32)>, StoreError> {
        Ok(self
            .svc_backends
            .iter()
            .map(|(&(svc_id, index), &id)| (abi::SvcBackendKey { svc_id, index }, id))
            .collect())
    }

    fn svc_ids_all(&self) -> Result<Vec<(u32, abi::SvcBackendIds)>, StoreError> {
        Ok(self.svc_backend_ids.iter().map(|(&svc_id, &ids)| (svc_id, ids)).collect())
    }

    fn backend(&self, id: u32) -> Result<abi::Backend, StoreError> {
        if id >= self.capacity.backends {
            return Err(StoreError::OutOfRange {
                map: "xlb_backends",
                op: "lookup",
                key: id,
                capacity: self.capacity.backends,
            });
        }
        Ok(self.backends.get(&id).copied().unwrap_or(ZERO_BACKEND))
    }

    fn backend_meta(&self, id: u32) -> Result<Option<BackendMeta>, StoreError> {
        Ok(self.backend_meta.get(&id).cloned())
    }

    fn maglev(&self, svc_id: u32, size: usize) -> Result<Option<Vec<u16>>, StoreError> {
        if size == 0 {
            let class = self.maglev.range((svc_id, 0)..=(svc_id, usize::MAX)).next();
            return match class {
                Some((&(_, class), _)) => self.maglev(svc_id, class),
                None => Ok(None),
            };
        }
        let class = abi::maglev_class(size);
        let found = match self.maglev.get(&(svc_id, class)) {
            Some(t) => Some((t, class)),
            None => self.maglev.get(&(svc_id, abi::MAGLEV_MAX)).map(|t| (t, abi::MAGLEV_MAX)),
        };
        Ok(found.map(|(t, class)| {
            let mut out = t.clone();
            out.resize(class, 0);
            out
        }))
    }

    fn source_ranges(&self) -> Result<Vec<(u32, Cidr)>, StoreError> {
        Ok(self.source_ranges.iter().copied().collect())
    }

    fn node(&self) -> Result<abi::NodeCfg, StoreError> {
        Ok(self.node)
    }

    fn svc_stats(&self, svc_id: u32) -> Result<SvcTraffic, StoreError> {
        Ok(self.svc_stats.get(&svc_id).copied().unwrap_or_default())
    }

    fn sock_stats(&self, svc_id: u32) -> Result<SockTraffic, StoreError> {
        Ok(self.sock_stats.get(&svc_id).copied().unwrap_or_default())
    }

    fn backend_stats(&self, id: u32) -> Result<Traffic, StoreError> {
        Ok(self.backend_stats.get(&id).copied().unwrap_or_default())
    }

    fn connections(
        &self,
        visit: &mut dyn FnMut(&abi::FlowKey, &abi::CtEntry) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        for (k, v) in &self.connections {
            if visit(k, v).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn endpoints(&self) -> Result<Vec<(IpAddr, abi::Endpoint)>, StoreError> {
        Ok(self.endpoints.iter().map(|(a, v)| (*a, *v)).collect())
    }

    fn tunnel_peers(&self) -> Result<Vec<(IpAddr, u32)>, StoreError> {
        Ok(self.tunnel_peers.iter().map(|(a, v)| (*a, *v)).collect())
    }

    fn pod_routes(&self) -> Result<Vec<(Cidr, abi::Route)>, StoreError> {
        Ok(self.pod_routes.iter().map(|(c, v)| (*c, *v)).collect())
    }

    fn nonmasq(&self) -> Result<Vec<Cidr>, StoreError> {
        Ok(self.nonmasq.iter().copied().collect())
    }

    fn podnet(&self) -> Result<abi::PodnetCfg, StoreError> {
        Ok(self.podnet)
    }

    fn snat_stats(&self) -> Result<SnatTotals, StoreError> {
        Ok(SnatTotals::default())
    }

    fn fe_filter(&self) -> Result<Vec<u64>, StoreError> {
        Ok((0..=abi::FE_FILTER_ARMED)
            .map(|i| self.fe_filter.get(&i).copied().unwrap_or(0))
            .collect())
    }

    fn ct_guard(&self) -> Result<CtGuardTotals, StoreError> {
        Ok(CtGuardTotals::default())
    }

    fn policy_eps(&self) -> Result<Vec<(u32, u32)>, StoreError> {
        Ok(self.policy_eps.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn policies(&self) -> Result<Vec<(crate::policy::EntryKey, u32)>, StoreError> {
        Ok(self.policies.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn addr_identities(&self) -> Result<Vec<(Cidr, abi::AddrIdentity)>, StoreError> {
        Ok(self.addr_identities.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn write(&mut self, w: Write<'_>) -> Result<(), StoreError> {
        let Capacity { services, backends } = self.capacity;
        match w {
            Write::SvcName { svc_id, name } => {
                self.check_id(&w, svc_id, services)?;
                self.svc_names.insert(svc_id, name.to_owned());
            }
            Write::SvcNameDelete { svc_id } => {
                self.svc_names.remove(&svc_id);
            }
            Write::SvcStatsZero { svc_id } => {
                self.check_id(&w, svc_id, services)?;
                self.svc_stats.remove(&svc_id);
                self.sock_stats.remove(&svc_id);
            }
            Write::Frontend { key, value } => {
                self.frontends.insert(fe_ord(&key), (key, value));
            }
            Write::FrontendDelete { key } => {
                self.frontends.remove(&fe_ord(&key));
            }
            Write::SockFrontend { key, value } => {
                self.sock_frontends.insert(fe_ord(&key), (key, value));
            }
            Write::SockFrontendDelete { key } => {
                self.sock_frontends.remove(&fe_ord(&key));
            }
            Write::SourceRange { svc_id, cidr } => {
                self.source_ranges.insert((svc_id, cidr));
            }
            Write::SourceRangeDelete { svc_id, cidr } => {
                self.source_ranges.remove(&(svc_id, cidr));
            }
            Write::Maglev { svc_id, slots } => {
                self.check_id(&w, svc_id, services)?;
                let slots = &slots[..slots.len().min(abi::MAGLEV_MAX)];
                self.maglev.insert((svc_id, abi::maglev_class(slots.len())), slots.to_vec());
            }
            Write::MaglevDelete { svc_id, size } => {
                self.maglev.remove(&(svc_id, abi::maglev_class(size)));
                self.maglev.remove(&(svc_id, abi::MAGLEV_MAX));
            }
            Write::Backend { id, value } => {
                self.check_id(&w, id, backends)?;
                self.backends.insert(id, value);
            }
            Write::BackendStatsZero { id } => {
                self.check_id(&w, id, backends)?;
                self.backend_stats.remove(&id);
            }
            Write::BackendMeta { id, name, weight } => {
                self.check_id(&w, id, backends)?;
                if name.len() > abi::BACKEND_NAME_MAX {
                    return Err(StoreError::NameTooLong {
                        map: "xlb_backend_meta",
                        op: "update",
                        len: name.len(),
                        max: abi::BACKEND_NAME_MAX,
                    });
                }
                self.backend_meta.insert(id, BackendMeta { name: name.into(), weight });
            }
            Write::BackendMetaDelete { id } => {
                self.backend_meta.remove(&id);
            }
            Write::SvcBackendIds { svc_id, ids } => {
                self.check_id(&w, svc_id, services)?;
                // An ARRAY: all zeros is the same as no entry.
                if ids.id.iter().all(|&id| id == 0) {
                    self.svc_backend_ids.remove(&svc_id);
                } else {
                    self.svc_backend_ids.insert(svc_id, ids);
                }
            }
            Write::SvcBackend { key, backend_id } => {
                self.svc_backends.insert((key.svc_id, key.index), backend_id);
            }
            Write::SvcBackendDelete { key } => {
                self.svc_backends.remove(&(key.svc_id, key.index));
            }
            Write::Node { cfg } => self.node = cfg,
            Write::ConfigGenBump => self.config_gen = self.config_gen.wrapping_add(1),
            Write::FeFilter { index, bits } => {
                self.check_id(&w, index, abi::FE_FILTER_ARMED + 1)?;
                if bits == 0 {
                    self.fe_filter.remove(&index);
                } else {
                    self.fe_filter.insert(index, bits);
                }
            }
            Write::Endpoint { addr, value } => {
                self.endpoints.insert(addr, value);
            }
            Write::EndpointDelete { addr } => {
                self.endpoints.remove(&addr);
            }
            Write::TunnelPeer { addr, flags } => {
                self.tunnel_peers.insert(addr, flags);
            }
            Write::TunnelPeerDelete { addr } => {
                self.tunnel_peers.remove(&addr);
            }
            Write::PodRoute { cidr, value } => {
                self.pod_routes.insert(cidr.network(), value);
            }
            Write::PodRouteDelete { cidr } => {
                self.pod_routes.remove(&cidr.network());
            }
            Write::NonMasq { cidr } => {
                self.nonmasq.insert(cidr.network());
            }
            Write::NonMasqDelete { cidr } => {
                self.nonmasq.remove(&cidr.network());
            }
            Write::Podnet { cfg } => self.podnet = cfg,
            Write::PolicyEp { ifindex, flags } => {
                self.policy_eps.insert(ifindex, flags);
            }
            Write::PolicyEpDelete { ifindex } => {
                self.policy_eps.remove(&ifindex);
            }
            Write::Policy { key, policy } => {
                self.policies.insert(key, policy);
            }
            Write::PolicyDelete { key } => {
                self.policies.remove(&key);
            }
            Write::AddrIdentity { cidr, value } => {
                self.addr_identities.insert(cidr.network(), value);
            }
            Write::AddrIdentityDelete { cidr } => {
                self.addr_identities.remove(&cidr.network());
            }
        }
        self.log.push(WriteRecord { target: w.target(), delete: w.is_delete() });
        Ok(())
    }
}
