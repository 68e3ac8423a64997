//! The map-store seam: every map operation the reconcilers and the read
//! model do, and nothing else. [`MapStore`] reads each datapath table and
//! takes one [`Write`] at a time; [`BpfStore`] does them on the pinned BPF
//! maps ([`crate::maps`]), [`MemStore`] on plain in-memory tables (with a log
//! of the writes), so that the reconcilers' invariants are tested without
//! root and a desired state can be dry-run.
//!
//! Keys and values are the ABI's ([`crate::abi`]), except where the map's
//! encoding is a detail of the BPF side: names are strings, source ranges
//! are [`Cidr`]s, per-CPU statistics are sums, Maglev tables are slot slices.
//! Neighbours: [`crate::view`] decodes what these reads return;
//! [`crate::reconcile`] issues the writes.
use std::{fmt, net::IpAddr, ops::ControlFlow, sync::Arc};

use crate::{abi, maps::MapsError, model::Cidr, policy::EntryKey};

mod bpf;
mod memory;

pub use bpf::BpfStore;
pub use memory::{MemStore, WriteRecord};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("map {map}: {op}: key {key} outside the map's {capacity} entries")]
    OutOfRange { map: &'static str, op: &'static str, key: u32, capacity: u32 },
    #[error("map {map}: {op}: a name of {len} bytes does not fit {max}")]
    NameTooLong { map: &'static str, op: &'static str, len: usize, max: usize },
}

/// Entries the id-indexed maps hold: the bounds of the id pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Service ids (xlb_svc_stats, xlb_maglev, xlb_svc_names).
    pub services: u32,
    /// Backend ids (xlb_backends, xlb_backend_stats, xlb_backend_meta).
    pub backends: u32,
}

/// Per-service traffic, summed over CPUs (xlb_svc_stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SvcTraffic {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub affinity_hits: u64,
}

/// Socket translations of one service, summed over CPUs (xlb_sock_stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SockTraffic {
    /// connect() calls translated.
    pub connect: u64,
    /// Unconnected UDP datagrams translated.
    pub sendmsg: u64,
    /// recvmsg()/getpeername() shown the service address.
    pub revnat: u64,
    /// connect()/sendmsg() refused (no usable backend).
    pub refused: u64,
    pub affinity_hits: u64,
}

/// Packets and bytes, summed over CPUs (xlb_backend_stats, xlb_counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

/// What xlb_backend_meta keeps of a backend: its Maglev name and weight.
/// Only a backend whose name or weight differs from [`BackendMeta::default_for`]
/// its endpoint has an entry: an absent entry means the default (every
/// Kubernetes backend is `addr:port` with weight 1, and a NO_PREALLOC hash
/// insert costs ~1.5 µs: 0.45 s of cold start at 300k backends).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendMeta {
    /// Shared with the services reconciler's Maglev inputs (one copy of
    /// each name: at 300k backends a String each held ~10 MB more).
    pub name: Arc<str>,
    pub weight: u32,
}

impl BackendMeta {
    /// What an absent xlb_backend_meta entry stands for: the endpoint
    /// `addr:port` as its name (`[v6]:port` for IPv6), weight 1.
    pub fn default_for(addr: IpAddr, port: u16) -> BackendMeta {
        BackendMeta { name: std::net::SocketAddr::new(addr, port).to_string().into(), weight: 1 }
    }

    /// Whether `name` and `weight` are the default of the endpoint (then
    /// xlb_backend_meta holds no entry for it).
    pub fn is_default(name: &str, weight: u32, addr: IpAddr, port: u16) -> bool {
        use std::io::Write as _;
        // "[v6 with scope]:port" fits in 64 bytes; no allocation per backend.
        let mut buf = [0u8; 64];
        let mut cur = std::io::Cursor::new(&mut buf[..]);
        if weight != 1 || write!(cur, "{}", std::net::SocketAddr::new(addr, port)).is_err() {
            return false;
        }
        let n = cur.position() as usize;
        &buf[..n] == name.as_bytes()
    }
}

/// One map write. Deleting an absent entry succeeds (the desired result
/// holds); `Backend` with flags 0 frees an array slot (arrays have no delete).
#[derive(Clone, Copy, Debug)]
pub enum Write<'a> {
    SvcName {
        svc_id: u32,
        name: &'a str,
    },
    SvcNameDelete {
        svc_id: u32,
    },
    /// Zeroes a service id's statistics, packet and socket (its next owner
    /// starts at zero).
    SvcStatsZero {
        svc_id: u32,
    },
    Frontend {
        key: abi::FrontendKey,
        value: abi::Service,
    },
    FrontendDelete {
        key: abi::FrontendKey,
    },
    /// An address translated at the socket (xlb_sock_frontends).
    SockFrontend {
        key: abi::FrontendKey,
        value: abi::Service,
    },
    SockFrontendDelete {
        key: abi::FrontendKey,
    },
    SourceRange {
        svc_id: u32,
        cidr: Cidr,
    },
    SourceRangeDelete {
        svc_id: u32,
        cidr: Cidr,
    },
    /// A whole table, replaced in one update, in the map of its size class
    /// (abi::maglev_class(slots.len()); slots past the end are 0).
    Maglev {
        svc_id: u32,
        slots: &'a [u16],
    },
    /// The table of `size` slots (in its class's map; and any left in
    /// xlb_maglev from before the classes).
    MaglevDelete {
        svc_id: u32,
        size: usize,
    },
    Backend {
        id: u32,
        value: abi::Backend,
    },
    BackendStatsZero {
        id: u32,
    },
    BackendMeta {
        id: u32,
        name: &'a str,
        weight: u32,
    },
    BackendMetaDelete {
        id: u32,
    },
    /// The whole xlb_svc_backend_ids value of a service (its first
    /// [`abi::SVC_IDS`] indexes; 0: look in xlb_svc_backends).
    SvcBackendIds {
        svc_id: u32,
        ids: abi::SvcBackendIds,
    },
    /// Any index (xlb_svc_backends holds every one).
    SvcBackend {
        key: abi::SvcBackendKey,
        backend_id: u32,
    },
    SvcBackendDelete {
        key: abi::SvcBackendKey,
    },
    Node {
        cfg: abi::NodeCfg,
    },
    /// Tells per-CPU caches of service settings that they changed.
    ConfigGenBump,
    // ---- pod networking (#10)
    Endpoint {
        addr: IpAddr,
        value: abi::Endpoint,
    },
    EndpointDelete {
        addr: IpAddr,
    },
    TunnelPeer {
        addr: IpAddr,
        flags: u32,
    },
    TunnelPeerDelete {
        addr: IpAddr,
    },
    PodRoute {
        cidr: Cidr,
        value: abi::Route,
    },
    PodRouteDelete {
        cidr: Cidr,
    },
    NonMasq {
        cidr: Cidr,
    },
    NonMasqDelete {
        cidr: Cidr,
    },
    Podnet {
        cfg: abi::PodnetCfg,
    },
    // ---- NetworkPolicy (#11)
    PolicyEp {
        ifindex: u32,
        flags: u32,
    },
    PolicyEpDelete {
        ifindex: u32,
    },
    /// `key.prefixlen` counts the bits after it (abi::POLICY_*_BITS);
    /// bits past it are zero.
    Policy {
        key: EntryKey,
        policy: u32,
    },
    PolicyDelete {
        key: EntryKey,
    },
    AddrIdentity {
        cidr: Cidr,
        value: abi::AddrIdentity,
    },
    AddrIdentityDelete {
        cidr: Cidr,
    },
    // ---- #14 performance
    /// One 64-bit word of the frontend filter, or (index
    /// abi::FE_FILTER_ARMED) its armed flag.
    FeFilter {
        index: u32,
        bits: u64,
    },
}

/// What a write touches: one entry of one map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    SvcName(u32),
    SvcStats(u32),
    Frontend(abi::FrontendKey),
    SockFrontend(abi::FrontendKey),
    SourceRange(u32, Cidr),
    /// (service id, size class).
    Maglev(u32, usize),
    Backend(u32),
    BackendStats(u32),
    BackendMeta(u32),
    SvcBackendIds(u32),
    SvcBackend(abi::SvcBackendKey),
    Node,
    ConfigGen,
    Endpoint(IpAddr),
    TunnelPeer(IpAddr),
    PodRoute(Cidr),
    NonMasq(Cidr),
    Podnet,
    PolicyEp(u32),
    Policy(EntryKey),
    AddrIdentity(Cidr),
    FeFilter(u32),
}

impl Target {
    /// The map's name.
    pub fn map(&self) -> &'static str {
        match self {
            Target::SvcName(_) => "xlb_svc_names",
            Target::SvcStats(_) => "xlb_svc_stats",
            Target::Frontend(_) => "xlb_frontends",
            Target::SockFrontend(_) => "xlb_sock_frontends",
            Target::SourceRange(..) => "xlb_source_ranges",
            Target::Maglev(_, class) => abi::maglev_map(*class),
            Target::Backend(_) => "xlb_backends",
            Target::BackendStats(_) => "xlb_backend_stats",
            Target::BackendMeta(_) => "xlb_backend_meta",
            Target::SvcBackendIds(_) => "xlb_svc_backend_ids",
            Target::SvcBackend(_) => "xlb_svc_backends",
            Target::Node => "xlb_node",
            Target::ConfigGen => "xlb_config_gen",
            Target::Endpoint(_) => "xlb_endpoints",
            Target::TunnelPeer(_) => "xlb_tunnel_peers",
            Target::PodRoute(_) => "xlb_pod_routes",
            Target::NonMasq(_) => "xlb_nonmasq",
            Target::Podnet => "xlb_podnet",
            Target::PolicyEp(_) => "xlb_policy_ep",
            Target::Policy(k) if k.bits == abi::POLICY_KEY_BITS => "xlb_policy_exact",
            Target::Policy(_) => "xlb_policy",
            Target::AddrIdentity(_) => "xlb_ip_identity",
            Target::FeFilter(_) => "xlb_fe_filter",
        }
    }

    /// The service id the entry belongs to, when its key says so.
    pub fn svc_id(&self) -> Option<u32> {
        match *self {
            Target::SvcName(id)
            | Target::SvcStats(id)
            | Target::SourceRange(id, _)
            | Target::Maglev(id, _)
            | Target::SvcBackendIds(id) => Some(id),
            Target::SvcBackend(k) => Some(k.svc_id),
            _ => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::SvcName(id)
            | Target::SvcStats(id)
            | Target::Maglev(id, _)
            | Target::Backend(id)
            | Target::BackendStats(id)
            | Target::BackendMeta(id)
            | Target::SvcBackendIds(id) => write!(f, "{}[{id}]", self.map()),
            Target::Frontend(k) | Target::SockFrontend(k) => {
                match abi::addr_from_abi(&k.addr, k.family) {
                    Some(a) => {
                        write!(f, "{}[{a} {} {}]", self.map(), u16::from_be(k.port), k.proto)
                    }
                    None => write!(f, "{}[family {}]", self.map(), k.family),
                }
            }
            Target::SourceRange(id, c) => write!(f, "{}[{id} {c}]", self.map()),
            Target::SvcBackend(k) => write!(f, "{}[{} {}]", self.map(), k.svc_id, k.index),
            Target::Node | Target::ConfigGen | Target::Podnet => write!(f, "{}[0]", self.map()),
            Target::Endpoint(a) | Target::TunnelPeer(a) => write!(f, "{}[{a}]", self.map()),
            Target::PodRoute(c) | Target::NonMasq(c) | Target::AddrIdentity(c) => {
                write!(f, "{}[{c}]", self.map())
            }
            Target::PolicyEp(i) | Target::FeFilter(i) => write!(f, "{}[{i}]", self.map()),
            Target::Policy(k) => write!(
                f,
                "{}[ep {} id {} dir {} proto {} port {}/{}]",
                self.map(),
                k.ep,
                k.identity,
                k.dir,
                k.proto,
                k.port,
                k.bits
            ),
        }
    }
}

impl Write<'_> {
    /// The entry written.
    pub fn target(&self) -> Target {
        match *self {
            Write::SvcName { svc_id, .. } | Write::SvcNameDelete { svc_id } => {
                Target::SvcName(svc_id)
            }
            Write::SvcStatsZero { svc_id } => Target::SvcStats(svc_id),
            Write::Frontend { key, .. } | Write::FrontendDelete { key } => Target::Frontend(key),
            Write::SockFrontend { key, .. } | Write::SockFrontendDelete { key } => {
                Target::SockFrontend(key)
            }
            Write::SourceRange { svc_id, cidr } | Write::SourceRangeDelete { svc_id, cidr } => {
                Target::SourceRange(svc_id, cidr)
            }
            Write::Maglev { svc_id, slots } => {
                Target::Maglev(svc_id, abi::maglev_class(slots.len()))
            }
            Write::MaglevDelete { svc_id, size } => Target::Maglev(svc_id, abi::maglev_class(size)),
            Write::Backend { id, .. } => Target::Backend(id),
            Write::BackendStatsZero { id } => Target::BackendStats(id),
            Write::BackendMeta { id, .. } | Write::BackendMetaDelete { id } => {
                Target::BackendMeta(id)
            }
            Write::SvcBackendIds { svc_id, .. } => Target::SvcBackendIds(svc_id),
            Write::SvcBackend { key, .. } | Write::SvcBackendDelete { key } => {
                Target::SvcBackend(key)
            }
            Write::Node { .. } => Target::Node,
            Write::ConfigGenBump => Target::ConfigGen,
            Write::Endpoint { addr, .. } | Write::EndpointDelete { addr } => Target::Endpoint(addr),
            Write::TunnelPeer { addr, .. } | Write::TunnelPeerDelete { addr } => {
                Target::TunnelPeer(addr)
            }
            Write::PodRoute { cidr, .. } | Write::PodRouteDelete { cidr } => Target::PodRoute(cidr),
            Write::NonMasq { cidr } | Write::NonMasqDelete { cidr } => Target::NonMasq(cidr),
            Write::Podnet { .. } => Target::Podnet,
            Write::PolicyEp { ifindex, .. } | Write::PolicyEpDelete { ifindex } => {
                Target::PolicyEp(ifindex)
            }
            Write::Policy { key, .. } | Write::PolicyDelete { key } => Target::Policy(key),
            Write::AddrIdentity { cidr, .. } | Write::AddrIdentityDelete { cidr } => {
                Target::AddrIdentity(cidr)
            }
            Write::FeFilter { index, .. } => Target::FeFilter(index),
        }
    }

    /// Removes an entry (rather than writing one).
    pub fn is_delete(&self) -> bool {
        matches!(
            self,
            Write::SvcNameDelete { .. }
                | Write::FrontendDelete { .. }
                | Write::SockFrontendDelete { .. }
                | Write::SourceRangeDelete { .. }
                | Write::MaglevDelete { .. }
                | Write::BackendMetaDelete { .. }
                | Write::SvcBackendDelete { .. }
                | Write::EndpointDelete { .. }
                | Write::TunnelPeerDelete { .. }
                | Write::PodRouteDelete { .. }
                | Write::NonMasqDelete { .. }
                | Write::PolicyEpDelete { .. }
                | Write::PolicyDelete { .. }
                | Write::AddrIdentityDelete { .. }
        )
    }

    /// The operation's name, for errors: "update" or "delete".
    pub fn op(&self) -> &'static str {
        if self.is_delete() {
            "delete"
        } else {
            "update"
        }
    }
}

/// The datapath maps as the reconcilers and the read model use them.
/// Listings come back in no particular order.
pub trait MapStore {
    fn capacity(&self) -> Capacity;

    /// xlb_svc_names: service id -> service key.
    fn svc_names(&self) -> Result<Vec<(u32, String)>, StoreError>;
    /// xlb_frontends.
    fn frontends(&self) -> Result<Vec<(abi::FrontendKey, abi::Service)>, StoreError>;
    /// xlb_sock_frontends.
    fn sock_frontends(&self) -> Result<Vec<(abi::FrontendKey, abi::Service)>, StoreError>;
    /// (service id, service-local index) -> backend id, as the datapath
    /// resolves it ([`crate::maps::resolve_ids`]): the non-zero ids of
    /// xlb_svc_backend_ids, then the xlb_svc_backends entries of indexes
    /// without one. Sorted.
    fn svc_backends(&self) -> Result<Vec<(abi::SvcBackendKey, u32)>, StoreError> {
        Ok(crate::maps::resolve_ids(self.svc_ids_all()?, self.svc_backends_hash()?))
    }
    /// Every xlb_svc_backends entry: every index the agent holds (and the
    /// only map an agent from before xlb_svc_backend_ids reads).
    fn svc_backends_hash(&self) -> Result<Vec<(abi::SvcBackendKey, u32)>, StoreError>;
    /// Every xlb_svc_backend_ids value with a non-zero word, by service id:
    /// the cache of the first [`abi::SVC_IDS`] indexes XDP reads first.
    fn svc_ids_all(&self) -> Result<Vec<(u32, abi::SvcBackendIds)>, StoreError>;
    /// xlb_backends\[id\] (an array: every id below capacity has a value).
    fn backend(&self, id: u32) -> Result<abi::Backend, StoreError>;
    /// xlb_backend_meta\[id\], if present.
    fn backend_meta(&self, id: u32) -> Result<Option<BackendMeta>, StoreError>;
    /// The first `size` slots of the table of `svc_id` in the map of the
    /// class of `size` (else in xlb_maglev, where tables from before the
    /// classes are), if it has one. `size` 0 (no frontend says M): the
    /// table in whichever map holds one, smallest class first, all the
    /// slots of its class.
    fn maglev(&self, svc_id: u32, size: usize) -> Result<Option<Vec<u16>>, StoreError>;
    /// xlb_source_ranges: (service id, prefix).
    fn source_ranges(&self) -> Result<Vec<(u32, Cidr)>, StoreError>;
    /// xlb_node\[0\].
    fn node(&self) -> Result<abi::NodeCfg, StoreError>;
    /// xlb_svc_stats\[svc_id\], summed over CPUs.
    fn svc_stats(&self, svc_id: u32) -> Result<SvcTraffic, StoreError>;
    /// xlb_sock_stats\[svc_id\], summed over CPUs.
    fn sock_stats(&self, svc_id: u32) -> Result<SockTraffic, StoreError>;
    /// xlb_backend_stats\[id\], summed over CPUs.
    fn backend_stats(&self, id: u32) -> Result<Traffic, StoreError>;
    /// Walks xlb_ct's valid ways until `visit` breaks (the datapath writes
    /// meanwhile: entries come and go).
    fn connections(
        &self,
        visit: &mut dyn FnMut(&abi::FlowKey, &abi::CtEntry) -> ControlFlow<()>,
    ) -> Result<(), StoreError>;

    // ---- pod networking (#10)
    /// xlb_endpoints: pod address -> endpoint.
    fn endpoints(&self) -> Result<Vec<(IpAddr, abi::Endpoint)>, StoreError>;
    /// xlb_tunnel_peers: underlay address -> XLB_PEER_F_*.
    fn tunnel_peers(&self) -> Result<Vec<(IpAddr, u32)>, StoreError>;
    /// xlb_pod_routes: pod range -> node.
    fn pod_routes(&self) -> Result<Vec<(Cidr, abi::Route)>, StoreError>;
    /// xlb_nonmasq.
    fn nonmasq(&self) -> Result<Vec<Cidr>, StoreError>;
    /// xlb_podnet\[0\].
    fn podnet(&self) -> Result<abi::PodnetCfg, StoreError>;
    /// xlb_snat_stats\[0\], summed over CPUs.
    fn snat_stats(&self) -> Result<SnatTotals, StoreError>;
    /// xlb_ct_guard\[0\], summed over CPUs.
    fn ct_guard(&self) -> Result<CtGuardTotals, StoreError>;

    // ---- NetworkPolicy (#11)
    fn policy_eps(&self) -> Result<Vec<(u32, u32)>, StoreError>;
    fn policies(&self) -> Result<Vec<(EntryKey, u32)>, StoreError>;
    fn addr_identities(&self) -> Result<Vec<(Cidr, abi::AddrIdentity)>, StoreError>;

    // ---- #14 performance
    /// xlb_fe_filter: every word, then the armed flag
    /// (abi::FE_FILTER_WORDS + 1 values).
    fn fe_filter(&self) -> Result<Vec<u64>, StoreError>;

    /// Does one write.
    fn write(&mut self, w: Write<'_>) -> Result<(), StoreError>;

    /// Does `writes` in order, with the result of [`MapStore::write`] on
    /// each; a store may do a run of writes to one map in one syscall (a
    /// cold start's 300k backends). On an error, the index of the write that
    /// failed: the writes before it are done, it and those after are not.
    fn write_all(&mut self, writes: &[Write<'_>]) -> Result<(), (usize, StoreError)> {
        for (i, w) in writes.iter().enumerate() {
            self.write(*w).map_err(|e| (i, e))?;
        }
        Ok(())
    }

    /// The generation of each of `ids`' entries in xlb_backends (what
    /// [`MapStore::backend`] reads), in order; a store may read them all in
    /// a few syscalls.
    fn backend_gens(&self, ids: &[u32]) -> Result<Vec<u32>, StoreError> {
        ids.iter().map(|&id| self.backend(id).map(|b| b.gen)).collect()
    }

    /// A writer of Maglev tables that other threads can use while this
    /// store does the other writes (the services reconciler's builders
    /// write a new service's first table as soon as it is built); None:
    /// every table goes through [`MapStore::write`].
    fn table_sink(&self) -> Option<Arc<dyn TableSink>> {
        None
    }
}

/// Writes Maglev tables from any thread: what [`Write::Maglev`] does,
/// without the rest of the store.
pub trait TableSink: Send + Sync {
    /// The table of `svc_id`: `slots` padded to its size class
    /// (`reconcile::tables::padded`), written to that class's map.
    fn write_table(&self, svc_id: u32, slots: &[u16]) -> Result<(), StoreError>;
}

/// What masquerade port allocation did (xlb_snat_stats, summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SnatTotals {
    pub allocated: u64,
    pub collisions: u64,
    pub exhausted: u64,
    pub reclaimed: u64,
}

/// New flows and the connection table's insert budget (xlb_ct_guard,
/// summed over CPUs): entries written, and flows served by Maglev alone
/// because the budget was spent (a new-flow flood).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CtGuardTotals {
    pub inserted: u64,
    pub skipped: u64,
}

/// The NUL-padded bytes of a name, or None when it does not fit `N`.
pub(crate) fn encode_name<const N: usize>(name: &str) -> Option<[u8; N]> {
    let b = name.as_bytes();
    if b.len() > N || b.contains(&0) {
        return None;
    }
    let mut out = [0u8; N];
    out[..b.len()].copy_from_slice(b);
    Some(out)
}

/// The name NUL-padded `bytes` hold (up to the first NUL).
pub(crate) fn decode_name(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&c| c == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_refuse_what_does_not_fit() {
        let n: [u8; 8] = encode_name("a:80").unwrap();
        assert_eq!(decode_name(&n), "a:80");
        let full: [u8; 4] = encode_name("abcd").unwrap();
        assert_eq!(decode_name(&full), "abcd", "a name filling the field has no NUL");
        assert_eq!(encode_name::<4>("abcde"), None);
        assert_eq!(encode_name::<8>("a\0b"), None);
    }
}

#[cfg(test)]
mod meta_tests {
    use super::BackendMeta;

    #[test]
    fn the_default_name_is_the_endpoint() {
        let v4: std::net::IpAddr = "10.244.1.2".parse().unwrap();
        let v6: std::net::IpAddr = "2001:db8::7".parse().unwrap();
        assert!(BackendMeta::is_default("10.244.1.2:8080", 1, v4, 8080));
        assert!(BackendMeta::is_default("[2001:db8::7]:53", 1, v6, 53));
        assert!(!BackendMeta::is_default("10.244.1.2:8080", 2, v4, 8080));
        assert!(!BackendMeta::is_default("10.244.1.2:80", 1, v4, 8080));
        assert!(!BackendMeta::is_default("pod-a", 1, v4, 8080));
        assert!(!BackendMeta::is_default("2001:db8::7:53", 1, v6, 53));
        let d = BackendMeta::default_for(v6, 53);
        assert!(BackendMeta::is_default(&d.name, d.weight, v6, 53));
    }
}
