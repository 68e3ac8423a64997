//! The read model: what a node's datapath maps hold, decoded once into typed
//! values. Service names, the service → frontends/backends join, Maglev slot
//! counts, connection-table entries, traffic, counters and event status are
//! read here and nowhere else: the reconcilers restore from it
//! ([`crate::reconcile`]), and `control`'s inspection CLI, metrics and
//! monitor show it. Reads go through a [`MapStore`], so the same decoding
//! runs on the pinned maps ([`BpfStore`]) and on a [`crate::store::MemStore`].
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::{self, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    ops::ControlFlow,
    path::Path,
};

use serde::Serialize;

use crate::{
    abi,
    events::{EventControl, EventsError},
    loader::LoadError,
    model::{Cidr, Proto},
    store::{BackendMeta, BpfStore, MapStore, StoreError},
};
pub use crate::{
    abi::{Counter, Hook},
    events::EventStatus,
    store::{SockTraffic, SvcTraffic, Traffic},
};

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading the counters: {0}")]
    Counters(#[from] LoadError),
    #[error("reading the event status: {0}")]
    Events(#[from] EventsError),
}

/// Does service key `name` ("namespace/name:port[/ipv6]") match `filter`:
/// the key itself, or "namespace/name" for every port and family?
pub fn service_matches(filter: &str, name: &str) -> bool {
    name == filter
        || name
            .strip_prefix(filter)
            .is_some_and(|rest| rest.starts_with(':') || rest.starts_with('/'))
}

/// What to read beside the entries themselves.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Detail {
    /// Each Maglev table (32 KiB read), summed up as a [`TableSummary`].
    pub tables: bool,
    /// With `tables`: slots per backend index too.
    pub slot_counts: bool,
    /// Per-service and per-backend traffic (one per-CPU read each).
    pub traffic: bool,
}

/// A Maglev table as the map holds it, without its 32 KiB.
#[derive(Clone, Debug, Default)]
pub(crate) struct TableSummary {
    /// [`table_hash`] of the whole value.
    pub hash: u64,
    /// Slots in use: the service's table size (0 without a frontend to say it).
    pub size: usize,
    /// Slots read: `size`, or without it the capacity of the size class
    /// whose map held the table (its class is what the maps can say).
    pub len: usize,
    /// Slots per service-local index, over the first `size`.
    pub slots: HashMap<u16, usize>,
}

/// Identifies a table's content without keeping it: equal for a built
/// table and the map value it was written to (zero-padded to
/// [`abi::MAGLEV_MAX`] slots), so what was written compares with what the
/// maps hold, whatever size a reader assumes.
pub(crate) fn table_hash(slots: &[u16]) -> u64 {
    use std::hash::{Hash, Hasher};
    let n = slots.iter().rposition(|&s| s != 0).map_or(0, |i| i + 1);
    // Fixed keys: the same hash for the same table from every hasher made.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    slots[..n].hash(&mut h);
    h.finish()
}

/// One backend entry of a service, as the maps hold it.
#[derive(Clone, Debug)]
pub(crate) struct RawBackend {
    pub id: u32,
    pub index: u32,
    pub value: abi::Backend,
    /// From xlb_backend_meta; its endpoint's default
    /// ([`BackendMeta::default_for`]) where the map has no entry.
    pub meta: BackendMeta,
    pub traffic: Traffic,
}

impl RawBackend {
    pub fn endpoint(&self) -> (IpAddr, u16) {
        endpoint_of(&self.value)
    }
}

/// The endpoint (address, port) a backend entry holds (unspecified: a
/// family the entry does not name).
pub(crate) fn endpoint_of(v: &abi::Backend) -> (IpAddr, u16) {
    (
        abi::addr_from_abi(&v.addr, v.family).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        u16::from_be(v.port),
    )
}

/// One service id and everything keyed by it.
#[derive(Clone, Debug)]
pub(crate) struct RawService {
    pub id: u32,
    /// From xlb_svc_names (None: an id with entries but no name).
    pub name: Option<String>,
    /// Sorted by key.
    pub frontends: Vec<(abi::FrontendKey, abi::Service)>,
    /// xlb_sock_frontends entries, sorted by key.
    pub sock_frontends: Vec<(abi::FrontendKey, abi::Service)>,
    /// Sorted by index.
    pub backends: Vec<RawBackend>,
    pub ranges: Vec<Cidr>,
    /// Its Maglev table, if it has one (read with [`Detail::tables`]).
    pub table: Option<TableSummary>,
    pub traffic: SvcTraffic,
    /// Socket translations (read with [`Detail::traffic`]).
    pub sock: SockTraffic,
}

impl RawService {
    /// The service value its frontends carry (without the flags that are
    /// per frontend); None without a frontend.
    pub fn settings(&self) -> Option<abi::Service> {
        self.frontends
            .first()
            .or(self.sock_frontends.first())
            .map(|(_, v)| abi::Service { flags: v.flags & !abi::SVC_F_PER_FRONTEND, ..*v })
    }

    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| format!("(unnamed)/{}", self.id))
    }
}

/// The order frontends are listed in (the first one's settings are the
/// service's).
pub(crate) fn fe_sort_key(k: &abi::FrontendKey) -> (u8, [u8; 16], u16, u8) {
    (k.family, k.addr, u16::from_be(k.port), k.proto)
}

/// Every service id the maps name, joined with its entries, by id; its
/// backends as the datapath resolves them ([`MapStore::svc_backends`]).
pub(crate) fn read_services<S: MapStore + ?Sized>(
    store: &S,
    detail: Detail,
) -> Result<Vec<RawService>, StoreError> {
    read_services_from(store, detail, store.svc_backends()?, &HashSet::new())
}

/// [`read_services`] with the backends of `entries` ((service, index) ->
/// backend id); those whose (service, index) is in `unsure` only if their
/// xlb_backends entry is in use by that service.
pub(crate) fn read_services_from<S: MapStore + ?Sized>(
    store: &S,
    detail: Detail,
    entries: Vec<(abi::SvcBackendKey, u32)>,
    unsure: &HashSet<(u32, u32)>,
) -> Result<Vec<RawService>, StoreError> {
    let mut by_id: BTreeMap<u32, RawService> = BTreeMap::new();
    let blank = |id| RawService {
        id,
        name: None,
        frontends: Vec::new(),
        sock_frontends: Vec::new(),
        backends: Vec::new(),
        ranges: Vec::new(),
        table: None,
        traffic: SvcTraffic::default(),
        sock: SockTraffic::default(),
    };
    for (id, name) in store.svc_names()? {
        by_id.entry(id).or_insert_with(|| blank(id)).name = Some(name);
    }
    for (k, v) in store.frontends()? {
        by_id.entry(v.id).or_insert_with(|| blank(v.id)).frontends.push((k, v));
    }
    for (k, v) in store.sock_frontends()? {
        by_id.entry(v.id).or_insert_with(|| blank(v.id)).sock_frontends.push((k, v));
    }
    for (k, be_id) in entries {
        let value = store.backend(be_id)?;
        let in_use = value.flags & abi::BE_F_ACTIVE != 0 && value.svc_id == k.svc_id;
        if !in_use && unsure.contains(&(k.svc_id, k.index)) {
            continue;
        }
        let meta = match store.backend_meta(be_id)? {
            Some(m) => m,
            None => {
                let (addr, port) = endpoint_of(&value);
                BackendMeta::default_for(addr, port)
            }
        };
        let traffic = if detail.traffic { store.backend_stats(be_id)? } else { Traffic::default() };
        by_id.entry(k.svc_id).or_insert_with(|| blank(k.svc_id)).backends.push(RawBackend {
            id: be_id,
            index: k.index,
            value,
            meta,
            traffic,
        });
    }
    for (id, cidr) in store.source_ranges()? {
        by_id.entry(id).or_insert_with(|| blank(id)).ranges.push(cidr);
    }
    for s in by_id.values_mut() {
        s.frontends.sort_by_key(|(k, _)| fe_sort_key(k));
        s.sock_frontends.sort_by_key(|(k, _)| fe_sort_key(k));
        s.backends.sort_by_key(|b| b.index);
        s.ranges.sort();
        if detail.tables {
            let size = s.settings().map_or(0, |v| (v.maglev_size as usize).min(abi::MAGLEV_MAX));
            s.table = store.maglev(s.id, size)?.map(|t| {
                let mut slots = HashMap::new();
                if detail.slot_counts {
                    for &i in &t[..size] {
                        *slots.entry(i).or_default() += 1;
                    }
                }
                TableSummary { hash: table_hash(&t), size, len: t.len(), slots }
            });
        }
        if detail.traffic {
            s.traffic = store.svc_stats(s.id)?;
            s.sock = store.sock_stats(s.id)?;
        }
    }
    Ok(by_id.into_values().collect())
}

/// One backend as the maps hold it.
#[derive(Clone, Debug, Serialize)]
pub struct BackendListing {
    pub id: u32,
    pub index: u32,
    pub addr: IpAddr,
    pub port: u16,
    pub node: Option<IpAddr>,
    pub terminating: bool,
    /// Generation of the id (connection entries of an earlier owner name another).
    pub gen: u32,
    /// Stable name and Maglev weight (the endpoint's default,
    /// `addr:port` and 1, where xlb_backend_meta has no entry).
    pub name: String,
    pub weight: u32,
    /// Maglev slots pointing at this backend.
    pub slots: usize,
    pub packets: u64,
    pub bytes: u64,
}

/// One frontend as the maps hold it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct FrontendListing {
    /// Translated at the socket (xlb_sock_frontends) rather than answered
    /// where packets arrive (xlb_frontends).
    pub socket: bool,
    pub addr: IpAddr,
    pub port: u16,
    pub proto: String,
    pub nodeport: bool,
    pub clusterip: bool,
    pub hostport: bool,
    /// loadBalancerSourceRanges are enforced on it (LoadBalancer frontends).
    pub source_ranges: bool,
}

impl FrontendListing {
    fn of(socket: bool, k: &abi::FrontendKey, v: &abi::Service) -> Option<FrontendListing> {
        Some(FrontendListing {
            socket,
            addr: abi::addr_from_abi(&k.addr, k.family)?,
            port: u16::from_be(k.port),
            proto: proto_name(k.proto),
            nodeport: v.flags & abi::SVC_F_NODEPORT != 0,
            clusterip: v.flags & abi::SVC_F_CLUSTER_IP != 0,
            hostport: v.flags & abi::SVC_F_HOST_PORT != 0,
            source_ranges: v.flags & abi::SVC_F_SOURCE_RANGES != 0,
        })
    }
}

/// One service as the maps hold it.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceListing {
    pub id: u32,
    pub name: String,
    pub maglev_size: u32,
    /// Slots of its Maglev table read (0: no table).
    pub table_size: usize,
    pub encap: &'static str,
    pub affinity_timeout_s: Option<u32>,
    pub source_ranges: Vec<String>,
    /// A new flow without an endpoint is dropped, not rejected.
    pub drop_no_endpoints: bool,
    pub active_backends: u16,
    pub frontends: Vec<FrontendListing>,
    pub backends: Vec<BackendListing>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub affinity_hits: u64,
    /// Socket translations.
    pub sock: SockTraffic,
}

fn proto_name(n: u8) -> String {
    Proto::from_number(n).map_or(format!("proto-{n}"), |p| p.to_string())
}

fn listing(s: RawService) -> ServiceListing {
    let settings = s.settings().unwrap_or(abi::Service {
        id: s.id,
        maglev_size: 0,
        flags: 0,
        affinity_timeout_s: 0,
        backend_count: 0,
        encap: 0,
        pad: 0,
        pad2: 0,
    });
    let table = s.table.clone().unwrap_or_default();
    let slots = &table.slots;
    let mut frontends: Vec<FrontendListing> = s
        .frontends
        .iter()
        .filter_map(|(k, v)| FrontendListing::of(false, k, v))
        .chain(s.sock_frontends.iter().filter_map(|(k, v)| FrontendListing::of(true, k, v)))
        .collect();
    frontends.sort();
    let mut backends: Vec<BackendListing> = s
        .backends
        .iter()
        .map(|b| {
            let (addr, port) = b.endpoint();
            BackendListing {
                id: b.id,
                index: b.index,
                addr,
                port,
                node: abi::addr_from_abi(&b.value.node, b.value.node_family),
                terminating: b.value.flags & abi::BE_F_TERMINATING != 0,
                gen: b.value.gen,
                name: b.meta.name.to_string(),
                weight: b.meta.weight,
                slots: u16::try_from(b.index).map_or(0, |i| slots.get(&i).copied().unwrap_or(0)),
                packets: b.traffic.packets,
                bytes: b.traffic.bytes,
            }
        })
        .collect();
    backends.sort_by_key(|b| (b.addr, b.port));
    let mut ranges: Vec<String> = s.ranges.iter().map(|c| c.to_string()).collect();
    ranges.sort();
    ServiceListing {
        id: s.id,
        name: s.display_name(),
        maglev_size: settings.maglev_size,
        table_size: table.size,
        encap: if settings.encap == abi::ENCAP_IPIP { "ipip" } else { "geneve" },
        affinity_timeout_s: (settings.flags & abi::SVC_F_AFFINITY != 0)
            .then_some(settings.affinity_timeout_s),
        source_ranges: ranges,
        drop_no_endpoints: settings.flags & abi::SVC_F_DROP_NO_BACKEND != 0,
        active_backends: settings.backend_count,
        frontends,
        backends,
        packets: s.traffic.packets,
        bytes: s.traffic.bytes,
        new_flows: s.traffic.new_flows,
        affinity_hits: s.traffic.affinity_hits,
        sock: s.sock,
    }
}

/// Every service with its frontends, backends, Maglev slot counts and
/// traffic, sorted by name.
pub(crate) fn list<S: MapStore + ?Sized>(store: &S) -> Result<Vec<ServiceListing>, StoreError> {
    let raw = read_services(store, Detail { tables: true, slot_counts: true, traffic: true })?;
    let mut out: Vec<ServiceListing> = raw.into_iter().map(listing).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

struct SocketFmt(IpAddr, u16);

impl fmt::Display for SocketFmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&SocketAddr::new(self.0, self.1), f)
    }
}

/// Renders listings as the `xlb service list` text (no counters: stable for
/// golden files; `xlb stats` shows traffic).
pub fn render(services: &[ServiceListing]) -> String {
    let mut out = String::new();
    for s in services {
        let _ = write!(
            out,
            "service {} id={} maglev={} encap={} backends={}/{}",
            s.name,
            s.id,
            s.maglev_size,
            s.encap,
            s.active_backends,
            s.backends.len()
        );
        if let Some(t) = s.affinity_timeout_s {
            let _ = write!(out, " affinity=ClientIP/{t}s");
        }
        if !s.source_ranges.is_empty() {
            let _ = write!(out, " source-ranges={}", s.source_ranges.join(","));
        }
        if s.drop_no_endpoints {
            out.push_str(" no-endpoints=drop");
        }
        out.push('\n');
        for f in &s.frontends {
            let kind = if f.nodeport {
                " nodeport"
            } else if f.clusterip {
                " clusterip"
            } else if f.hostport {
                " hostport"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  frontend {}/{}{kind}{}{}",
                SocketFmt(f.addr, f.port),
                f.proto,
                if f.source_ranges { " source-ranges" } else { "" },
                if f.socket { " socket" } else { "" }
            );
        }
        for b in &s.backends {
            let _ = write!(
                out,
                "  backend {} id={} index={}",
                SocketFmt(b.addr, b.port),
                b.id,
                b.index
            );
            if let Some(n) = b.node {
                let _ = write!(out, " node={n}");
            }
            let _ = writeln!(
                out,
                " {} slots={}",
                if b.terminating { "terminating" } else { "active" },
                b.slots
            );
        }
    }
    out
}

/// One service's traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceTraffic {
    pub id: u32,
    pub name: String,
    #[serde(flatten)]
    pub traffic: SvcTraffic,
    /// Socket translations.
    pub sock: SockTraffic,
}

/// One backend's traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendTraffic {
    pub svc_id: u32,
    pub backend_id: u32,
    pub backend: SocketAddr,
    pub traffic: Traffic,
}

/// One connection-table entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Connection {
    /// None: an address family this build does not know.
    pub client: Option<SocketAddr>,
    pub frontend: Option<SocketAddr>,
    pub proto: String,
    pub svc_id: u32,
    pub service: Option<String>,
    pub backend_id: u32,
    /// The backend the entry's id names now (None: no such id).
    pub backend: Option<SocketAddr>,
    /// The entry names a backend id that has since been freed or reused.
    pub stale: bool,
    /// CLOCK_MONOTONIC ns (whole seconds: the table keeps seconds).
    pub created_ns: u64,
}

/// Which connection-table entries to list.
#[derive(Clone, Debug, Default)]
pub struct ConnectionFilter {
    /// Only this service ([`service_matches`]).
    pub service: Option<String>,
    pub client: Option<IpAddr>,
    /// At most this many (None: all).
    pub limit: Option<usize>,
}

/// Connection-table entries listed.
#[derive(Clone, Debug, Default)]
pub struct Connections {
    pub entries: Vec<Connection>,
    /// Entries walked.
    pub scanned: u64,
    /// The walk stopped at the limit.
    pub truncated: bool,
}

/// Names for ids: what an event's ids stand for.
#[derive(Clone, Debug, Default)]
pub struct Names {
    pub services: HashMap<u32, String>,
    /// (address, port, IP protocol) -> service id.
    pub frontends: HashMap<(IpAddr, u16, u8), u32>,
    /// Backend id -> (endpoint, service id).
    pub backends: HashMap<u32, (SocketAddr, u32)>,
}

/// A pod of this node as xlb_endpoints holds it: its addresses, by host veth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointListing {
    /// The host-side veth.
    pub ifindex: u32,
    pub addrs: Vec<IpAddr>,
    pub identity: u32,
    /// The pod's interface.
    pub mac: String,
    pub host_mac: String,
}

/// One pod range of xlb_pod_routes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteListing {
    pub cidr: String,
    /// The owning node's underlay address.
    pub node: Option<IpAddr>,
    /// This node's own range.
    pub local: bool,
}

/// An address xlb's tunnel traffic is accepted from (xlb_tunnel_peers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerListing {
    pub addr: IpAddr,
    pub node: bool,
    pub load_balancer: bool,
}

/// The pod network's tables: ranges, peers, masquerade.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TunnelListing {
    pub routes: Vec<RouteListing>,
    pub peers: Vec<PeerListing>,
    /// Source ports handed out (None: masquerade off).
    pub masquerade_ports: Option<(u16, u16)>,
    pub non_masquerade: Vec<String>,
    pub snat: crate::store::SnatTotals,
}

fn mac_text(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The read model over one store: the pinned maps of a node unless said.
#[derive(Debug)]
pub struct DatapathView<S = BpfStore> {
    store: S,
}

impl DatapathView<BpfStore> {
    /// Reads the maps pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self, ViewError> {
        Ok(DatapathView { store: BpfStore::open(pin_dir)? })
    }

    /// Every named counter at every hook, summed over CPUs (zeros
    /// included).
    pub fn counters(&self) -> Result<Vec<(Hook, Counter, Traffic)>, ViewError> {
        let c = crate::loader::read_hook_counters(self.store.pin_dir())?;
        Ok(c.into_iter()
            .map(|(h, c, n)| (h, c, Traffic { packets: n.packets, bytes: n.bytes }))
            .collect())
    }

    /// Events sent and lost, and whether a listener holds the lease.
    pub fn events(&self) -> Result<EventStatus, ViewError> {
        Ok(EventControl::open(self.store.pin_dir())?.status(crate::events::monotonic_ns())?)
    }
}

impl<S: MapStore> DatapathView<S> {
    pub fn new(store: S) -> Self {
        DatapathView { store }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Every service with its frontends, backends, Maglev slot counts and
    /// traffic, sorted by name.
    pub fn services(&self) -> Result<Vec<ServiceListing>, ViewError> {
        Ok(list(&self.store)?)
    }

    /// This node's pods, one listing per host veth, by ifindex; addresses
    /// sorted.
    pub fn endpoints(&self) -> Result<Vec<EndpointListing>, ViewError> {
        let mut by_if: BTreeMap<u32, EndpointListing> = BTreeMap::new();
        for (addr, v) in self.store.endpoints()? {
            by_if
                .entry(v.ifindex)
                .or_insert_with(|| EndpointListing {
                    ifindex: v.ifindex,
                    addrs: Vec::new(),
                    identity: v.identity,
                    mac: mac_text(&v.mac),
                    host_mac: mac_text(&v.host_mac),
                })
                .addrs
                .push(addr);
        }
        let mut out: Vec<EndpointListing> = by_if.into_values().collect();
        for e in &mut out {
            e.addrs.sort();
        }
        Ok(out)
    }

    /// The connection table's insert budget: entries written and new flows
    /// served without one (summed over CPUs).
    pub fn ct_guard(&self) -> Result<crate::store::CtGuardTotals, ViewError> {
        Ok(self.store.ct_guard()?)
    }

    /// The pod ranges (sorted), tunnel peers (sorted) and masquerade
    /// settings and statistics.
    pub fn tunnels(&self) -> Result<TunnelListing, ViewError> {
        let mut routes: Vec<(Cidr, RouteListing)> = self
            .store
            .pod_routes()?
            .into_iter()
            .map(|(c, r)| {
                let listing = RouteListing {
                    cidr: c.to_string(),
                    node: abi::addr_from_abi(&r.node, r.node_family),
                    local: r.flags & abi::ROUTE_F_LOCAL != 0,
                };
                (c, listing)
            })
            .collect();
        routes.sort_by_key(|a| a.0);
        let mut peers: Vec<PeerListing> = self
            .store
            .tunnel_peers()?
            .into_iter()
            .map(|(addr, f)| PeerListing {
                addr,
                node: f & abi::PEER_F_NODE != 0,
                load_balancer: f & abi::PEER_F_LB != 0,
            })
            .collect();
        peers.sort_by_key(|p| p.addr);
        let cfg = self.store.podnet()?;
        let mut non_masquerade = self.store.nonmasq()?;
        non_masquerade.sort();
        Ok(TunnelListing {
            routes: routes.into_iter().map(|(_, r)| r).collect(),
            peers,
            masquerade_ports: (cfg.flags & abi::PODNET_F_MASQ != 0)
                .then_some((cfg.masq_port_min, cfg.masq_port_max)),
            non_masquerade: non_masquerade.iter().map(|c| c.to_string()).collect(),
            snat: self.store.snat_stats()?,
        })
    }

    /// Service names by id.
    pub fn service_names(&self) -> Result<BTreeMap<u32, String>, ViewError> {
        Ok(self.store.svc_names()?.into_iter().collect())
    }

    /// Every named service's traffic, by id.
    pub fn service_traffic(&self) -> Result<Vec<ServiceTraffic>, ViewError> {
        let mut out = Vec::new();
        for (id, name) in self.service_names()? {
            let traffic = self.store.svc_stats(id)?;
            let sock = self.store.sock_stats(id)?;
            out.push(ServiceTraffic { id, name, traffic, sock });
        }
        Ok(out)
    }

    /// The traffic of the backends of the services `wanted` picks, at most
    /// `limit` of them.
    pub fn backend_traffic(
        &self,
        wanted: &dyn Fn(u32) -> bool,
        limit: usize,
    ) -> Result<Vec<BackendTraffic>, ViewError> {
        let mut out = Vec::new();
        for (k, backend_id) in self.store.svc_backends()? {
            if out.len() >= limit {
                break;
            }
            if !wanted(k.svc_id) {
                continue;
            }
            let be = self.store.backend(backend_id)?;
            let Some(ip) = abi::addr_from_abi(&be.addr, be.family) else { continue };
            out.push(BackendTraffic {
                svc_id: k.svc_id,
                backend_id,
                backend: SocketAddr::new(ip, u16::from_be(be.port)),
                traffic: self.store.backend_stats(backend_id)?,
            });
        }
        Ok(out)
    }

    /// Connection-table entries `filter` keeps.
    pub fn connections(&self, filter: &ConnectionFilter) -> Result<Connections, ViewError> {
        let names = self.service_names()?;
        let mut out = Connections::default();
        self.store.connections(&mut |k, v| {
            out.scanned += 1;
            let client = abi::addr_from_abi(&k.saddr, k.family);
            if filter.client.is_some() && client != filter.client {
                return ControlFlow::Continue(());
            }
            let service = names.get(&v.svc_id).cloned();
            if let Some(want) = &filter.service {
                if !service.as_deref().is_some_and(|n| service_matches(want, n)) {
                    return ControlFlow::Continue(());
                }
            }
            if filter.limit.is_some_and(|l| out.entries.len() >= l) {
                out.truncated = true;
                return ControlFlow::Break(());
            }
            // An id outside the map names no backend: the entry is stale.
            let be = self.store.backend(v.backend_id).ok();
            out.entries.push(Connection {
                client: client.map(|a| SocketAddr::new(a, u16::from_be(k.sport))),
                frontend: abi::addr_from_abi(&k.daddr, k.family)
                    .map(|a| SocketAddr::new(a, u16::from_be(k.dport))),
                proto: proto_name(k.proto),
                svc_id: v.svc_id,
                service,
                backend_id: v.backend_id,
                backend: be.and_then(|b| {
                    abi::addr_from_abi(&b.addr, b.family)
                        .map(|a| SocketAddr::new(a, u16::from_be(b.port)))
                }),
                stale: be.is_none_or(|b| b.gen != v.backend_gen || b.flags & abi::BE_F_ACTIVE == 0),
                created_ns: u64::from(v.created_s) * 1_000_000_000,
            });
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// Names of services, frontends and backends, by id.
    pub fn names(&self) -> Result<Names, ViewError> {
        let mut names = Names::default();
        for s in read_services(&self.store, Detail::default())? {
            // A socket frontend names its service unless a packet frontend
            // of the same address does (the events of each hook say which).
            for (k, _) in s.sock_frontends.iter().chain(&s.frontends) {
                if let Some(ip) = abi::addr_from_abi(&k.addr, k.family) {
                    names.frontends.insert((ip, u16::from_be(k.port), k.proto), s.id);
                }
            }
            for b in &s.backends {
                if let Some(ip) = abi::addr_from_abi(&b.value.addr, b.value.family) {
                    names
                        .backends
                        .insert(b.id, (SocketAddr::new(ip, u16::from_be(b.value.port)), s.id));
                }
            }
            if let Some(n) = s.name {
                names.services.insert(s.id, n);
            }
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        model::{Backend, BackendState, Desired, Frontend, FrontendKind, Service, ServiceKey},
        reconcile::Datapath,
        store::MemStore,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn backend(addr: &str, weight: u32) -> Backend {
        Backend {
            name: format!("{addr}:80").into(),
            addr: ip(addr),
            port: 80,
            node: ip("10.0.0.11"),
            weight,
            state: BackendState::Active,
        }
    }

    /// web (a NodePort and a LoadBalancer frontend, weights 1 and 3, one
    /// terminating backend) and db, applied to a MemStore.
    fn store() -> MemStore {
        let mut web = Service::new(ServiceKey::new("default", "web", "http"));
        web.frontends = vec![
            Frontend {
                addr: ip("10.100.0.1"),
                port: 80,
                proto: Proto::Tcp,
                kind: FrontendKind::LoadBalancer,
            },
            Frontend {
                addr: ip("10.0.0.2"),
                port: 30080,
                proto: Proto::Tcp,
                kind: FrontendKind::NodePort,
            },
        ];
        web.backends =
            vec![backend("10.244.0.1", 1), backend("10.244.0.2", 3), backend("10.244.0.3", 1)];
        web.backends[2].state = BackendState::Terminating;
        web.maglev_size = 101;
        let mut db = Service::new(ServiceKey::new("default", "db", "sql"));
        db.frontends = vec![Frontend {
            addr: ip("10.100.0.2"),
            port: 5432,
            proto: Proto::Tcp,
            kind: FrontendKind::ClusterIp,
        }];
        db.backends = vec![backend("10.244.1.1", 1)];
        db.maglev_size = 13;
        let mut d = Desired::default();
        d.node.tunnel_v4 = Some(Ipv4Addr::new(10, 0, 0, 2));
        for s in [web, db] {
            d.services.insert(s.key.clone(), s);
        }
        let mut dp = Datapath::restore(MemStore::default()).unwrap();
        dp.apply(&d).unwrap();
        dp.into_store()
    }

    fn flow(client: &str, sport: u16, vip: &str, dport: u16) -> abi::FlowKey {
        abi::FlowKey::of(ip(client), sport, ip(vip), dport, 6)
    }

    #[test]
    fn services_join_every_table_once() {
        let mut store = store();
        let view = DatapathView::new(store.clone());
        let list = view.services().unwrap();
        let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["default/db:sql", "default/web:http"]);
        let web = &list[1];
        assert_eq!((web.maglev_size, web.table_size, web.active_backends), (101, 101, 2));
        assert_eq!(web.frontends.iter().map(|f| f.nodeport).collect::<Vec<_>>(), [true, false]);
        let slots: Vec<(u32, bool, usize)> =
            web.backends.iter().map(|b| (b.weight, b.terminating, b.slots)).collect();
        // Weights 1 and 3 over 101 slots: 25 and 76 (Maglev's exact shares).
        assert_eq!(slots, [(1, false, 25), (3, false, 76), (1, true, 0)]);
        assert!(web.backends.iter().all(|b| b.gen > 0 && b.name == format!("{}:80", b.addr)));

        store.count_traffic(web.id, web.backends[1].id, 3, 300);
        let view = DatapathView::new(store);
        let web = view.services().unwrap().remove(1);
        assert_eq!((web.packets, web.bytes, web.backends[1].packets), (3, 300, 3));
        let traffic = view.service_traffic().unwrap();
        assert_eq!(traffic.iter().map(|t| t.traffic.packets).sum::<u64>(), 3);
        let rows = view.backend_traffic(&|id| id == web.id, 10).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows.iter().find(|r| r.traffic.packets == 3).unwrap().backend.to_string(),
            "10.244.0.2:80"
        );
        assert_eq!(view.backend_traffic(&|_| true, 1).unwrap().len(), 1, "limited");
    }

    #[test]
    fn connections_are_named_filtered_limited_and_marked_stale() {
        let mut store = store();
        let list = DatapathView::new(store.clone()).services().unwrap();
        let (db, web) = (&list[0], &list[1]);
        let be = &web.backends[0];
        let entry = |svc_id, backend_id, backend_gen| abi::CtEntry {
            created_s: 5,
            ..abi::CtEntry::to(svc_id, backend_id, backend_gen)
        };
        store.insert_connection(
            flow("192.0.2.1", 1000, "10.100.0.1", 80),
            entry(web.id, be.id, be.gen),
        );
        store.insert_connection(
            flow("192.0.2.2", 1000, "10.100.0.1", 80),
            entry(web.id, be.id, be.gen - 1),
        );
        store.insert_connection(
            flow("192.0.2.1", 1001, "10.100.0.2", 5432),
            entry(db.id, db.backends[0].id, db.backends[0].gen),
        );
        let view = DatapathView::new(store);

        let all = view.connections(&ConnectionFilter::default()).unwrap();
        assert_eq!((all.entries.len(), all.scanned, all.truncated), (3, 3, false));
        let c = &all.entries[0];
        assert_eq!(c.client.unwrap().to_string(), "192.0.2.1:1000");
        assert_eq!(c.frontend.unwrap().to_string(), "10.100.0.1:80");
        assert_eq!((c.proto.as_str(), c.service.as_deref()), ("TCP", Some("default/web:http")));
        assert_eq!(c.backend.unwrap().to_string(), "10.244.0.1:80");
        assert!(!c.stale);
        assert!(all.entries[1].stale, "an earlier generation of the id");

        let web_only =
            ConnectionFilter { service: Some("default/web".into()), ..Default::default() };
        assert_eq!(view.connections(&web_only).unwrap().entries.len(), 2);
        let client = ConnectionFilter { client: Some(ip("192.0.2.1")), ..Default::default() };
        assert_eq!(view.connections(&client).unwrap().entries.len(), 2);
        let one =
            view.connections(&ConnectionFilter { limit: Some(1), ..Default::default() }).unwrap();
        assert_eq!((one.entries.len(), one.truncated), (1, true));
    }

    #[test]
    fn names_resolve_ids_frontends_and_backends() {
        let view = DatapathView::new(store());
        let list = view.services().unwrap();
        let names = view.names().unwrap();
        let web = &list[1];
        assert_eq!(names.services[&web.id], "default/web:http");
        assert_eq!(names.frontends[&(ip("10.0.0.2"), 30080, 6)], web.id);
        assert_eq!(names.backends[&web.backends[1].id], ("10.244.0.2:80".parse().unwrap(), web.id));
        assert_eq!(view.service_names().unwrap().len(), 2);
    }

    #[test]
    fn service_filters() {
        assert!(service_matches("default/nginx", "default/nginx:80"));
        assert!(service_matches("default/nginx", "default/nginx:http/ipv6"));
        assert!(service_matches("default/nginx:80", "default/nginx:80"));
        assert!(!service_matches("default/nginx", "default/nginx2:80"));
    }

    #[test]
    fn a_table_hash_ignores_the_zero_padding_of_the_map_value() {
        let built = [3u16, 0, 1, 0];
        let mut value = vec![0u16; abi::MAGLEV_MAX];
        value[..4].copy_from_slice(&built);
        assert_eq!(table_hash(&built), table_hash(&value));
        assert_ne!(table_hash(&built), table_hash(&[3, 0, 2, 0]));
    }
}
