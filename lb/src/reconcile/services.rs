//! The services reconciler: desired [`Service`]s in; the entries of
//! xlb_svc_names, xlb_frontends, xlb_sock_frontends, xlb_source_ranges, xlb_maglev,
//! xlb_svc_backends (every service-local index: an agent from before the
//! array reads them all there), xlb_svc_backend_ids (a cache of a service's
//! first [`abi::SVC_IDS`] indexes in front of it, its whole value written
//! at once: a word is 0 or the hash's id), xlb_backends and
//! xlb_backend_meta out (and the
//! statistics slots of the ids it frees). Its bookkeeping mirrors those
//! entries exactly — each service's id, frontend values, source ranges,
//! backends by service-local index (id, generation, value, name, weight) and
//! the hash of its Maglev table with what it was built from — so a diff is a
//! comparison with the mirror, and a restore is a read of the maps
//! ([`crate::view`]).
//!
//! Writes go in dependency order, so that no packet ever meets an entry
//! pointing at a missing one: a backend's entry before the service index
//! that names it, indices before the table whose slots name them, tables
//! (and source ranges) before the frontends that use them; frontends before
//! the table they used, tables before the backends they named. The mirror
//! changes only after the write it stands for succeeded.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

// hashbrown's tables (foldhash): a full diff of 10k services of 10 backends
// takes 42 ms against 63 ms with std's SipHash tables; the incremental path
// does not change (tests::bench_bookkeeping_at_10k_services).
use hashbrown::{HashMap, HashSet};

use super::{
    fefilter::FeFilter,
    ids::{Generations, IdPool},
    node::Tunnels,
    tables::{self, TableInput, TableJob},
    ApplyStats, DatapathError,
};
use crate::{
    abi,
    maglev::{Maglev, MaglevError, MAX_BACKENDS},
    model::{
        BackendState, Cidr, Encap, Frontend, FrontendKind, NoEndpoints, Proto, Service, ServiceKey,
    },
    sockdestroy::GoneBackend,
    store::{BackendMeta, Capacity, MapStore, StoreError, Write},
    view::{endpoint_of, table_hash, RawService},
};

/// A backend's identity within its service: its endpoint.
type Endpoint = (IpAddr, u16);

/// Why a desired service is refused (before anything is written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("service key of {len} bytes: at most 127")]
    KeyTooLong { len: usize },
    #[error("maglev size {size} outside 2..={max}")]
    MaglevSize { size: u32, max: usize },
    #[error("frontend {addr}:{port}/{proto} listed twice")]
    DuplicateFrontend { addr: IpAddr, port: u16, proto: crate::model::Proto },
    #[error("backend {endpoint} listed twice")]
    DuplicateBackend { endpoint: SocketAddr },
    #[error("backend {name:?}: weight 0")]
    ZeroWeight { name: String },
    #[error("backend name {name:?}: {len} bytes, at most {max} and no NUL")]
    BackendName { name: String, len: usize, max: usize },
    #[error("backend name {name:?} given to two backends")]
    DuplicateName { name: String },
    #[error("{count} backends: at most {max} in one service (and at most the maglev size active)")]
    TooManyBackends { count: usize, max: usize },
    #[error("given under the key of service {given}")]
    WrongKey { given: ServiceKey },
    #[error(transparent)]
    Maglev(MaglevError),
}

/// Checks what the maps cannot hold or Maglev cannot build, so that a bad
/// service is refused before any write.
pub(crate) fn validate(svc: &Service) -> Result<(), DatapathError> {
    let bad = |problem| Err(DatapathError::Invalid { service: svc.key.clone(), problem });
    if svc.key.0.len() > 127 {
        return bad(Problem::KeyTooLong { len: svc.key.0.len() });
    }
    let size = svc.table_size();
    if size as usize > abi::MAGLEV_MAX || size < 2 {
        return bad(Problem::MaglevSize { size, max: abi::MAGLEV_MAX });
    }
    if let Err(e) = Maglev::new(size) {
        return bad(Problem::Maglev(e));
    }
    for list in [&svc.frontends, &svc.sock_frontends] {
        let mut seen = HashSet::new();
        for f in list {
            if !seen.insert((f.addr, f.port, f.proto)) {
                return bad(Problem::DuplicateFrontend {
                    addr: f.addr,
                    port: f.port,
                    proto: f.proto,
                });
            }
        }
    }
    let active = svc.backends.iter().filter(|b| b.state == BackendState::Active).count();
    if svc.backends.len() >= MAX_BACKENDS || active > size as usize {
        return bad(Problem::TooManyBackends { count: svc.backends.len(), max: MAX_BACKENDS - 1 });
    }
    let mut endpoints = HashSet::new();
    let mut names = HashSet::new();
    for b in &svc.backends {
        if !endpoints.insert((b.addr, b.port)) {
            return bad(Problem::DuplicateBackend { endpoint: SocketAddr::new(b.addr, b.port) });
        }
        if b.weight == 0 {
            return bad(Problem::ZeroWeight { name: b.name.to_string() });
        }
        if b.name.len() > abi::BACKEND_NAME_MAX || b.name.contains('\0') {
            return bad(Problem::BackendName {
                name: b.name.to_string(),
                len: b.name.len(),
                max: abi::BACKEND_NAME_MAX,
            });
        }
        if !names.insert(&*b.name) {
            return bad(Problem::DuplicateName { name: b.name.to_string() });
        }
    }
    Ok(())
}

pub(crate) fn frontend_key(f: &Frontend) -> abi::FrontendKey {
    let (addr, family) = abi::addr_to_abi(f.addr);
    abi::FrontendKey { addr, port: f.port.to_be(), proto: f.proto.number(), family }
}

fn backend_value(svc_id: u32, gen: u32, b: &crate::model::Backend) -> abi::Backend {
    let (addr, family) = abi::addr_to_abi(b.addr);
    let (node, node_family) = abi::addr_to_abi(b.node);
    let flags = abi::BE_F_ACTIVE
        | match b.state {
            BackendState::Active => 0,
            BackendState::Terminating => abi::BE_F_TERMINATING,
        };
    abi::Backend { addr, node, port: b.port.to_be(), family, node_family, flags, svc_id, gen }
}

/// The value every frontend of `svc` carries; [`frontend_value`] adds each
/// frontend's own flags.
fn service_value(svc_id: u32, svc: &Service) -> abi::Service {
    let active = svc.backends.iter().filter(|b| b.state == BackendState::Active).count();
    let mut flags = 0;
    if svc.affinity.is_some() {
        flags |= abi::SVC_F_AFFINITY;
    }
    if svc.no_endpoints == NoEndpoints::Drop {
        flags |= abi::SVC_F_DROP_NO_BACKEND;
    }
    abi::Service {
        id: svc_id,
        maglev_size: svc.table_size(),
        flags,
        affinity_timeout_s: svc
            .affinity
            .map_or(0, |a| a.timeout.as_secs().min(u32::MAX as u64) as u32),
        backend_count: active as u16,
        encap: match svc.encap {
            Encap::Geneve => abi::ENCAP_GENEVE,
            Encap::Ipip => abi::ENCAP_IPIP,
        },
        pad: 0,
        pad2: 0,
    }
}

/// `value` with the flags of frontend `f`: NodePort, and source ranges on
/// LoadBalancer frontends only (kube-proxy filters the load balancer's
/// ingress IPs, not the NodePort or externalIPs of the same service).
fn frontend_value(mut value: abi::Service, svc: &Service, f: &Frontend) -> abi::Service {
    match f.kind {
        FrontendKind::NodePort => value.flags |= abi::SVC_F_NODEPORT,
        FrontendKind::ClusterIp => value.flags |= abi::SVC_F_CLUSTER_IP,
        FrontendKind::HostPort => value.flags |= abi::SVC_F_HOST_PORT,
        FrontendKind::LoadBalancer if !svc.source_ranges.is_empty() => {
            value.flags |= abi::SVC_F_SOURCE_RANGES
        }
        FrontendKind::LoadBalancer | FrontendKind::ExternalIp => {}
    }
    value
}

/// One backend as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Backend {
    pub id: u32,
    /// Its xlb_backends entry (generation included).
    pub value: abi::Backend,
    pub meta: BackendMeta,
}

/// A service's Maglev table as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Table {
    /// Hash of the slots in the map; None: no table.
    pub written: Option<u64>,
    /// Its size M, as the frontends carry it: the table is in the map of
    /// M's size class.
    pub size: usize,
    /// (hash, size) of a table written in another class's map that the
    /// frontends do not name yet (M moved to another class): it becomes the
    /// table once they all carry its M.
    pub next: Option<(u64, usize)>,
    /// The size of a table in another class's map that no frontend names
    /// any more: removed.
    pub gone: Option<usize>,
    /// What the table (or its absence) was built from; None: not known
    /// (restored, not verified by a rebuild yet).
    pub input: Option<TableInput>,
}

impl Table {
    /// A service's first table, as the pipeline wrote it (`finish` takes
    /// it, or an apply that failed keeps it). `named`: M as the frontends
    /// carry it now ([`named_size`]). Written into another class's map
    /// than theirs (M moved with the first backend), it is [`Table::next`]
    /// until they carry its M: neither XDP nor a restore looks there yet.
    fn first_written(
        &mut self,
        input: TableInput,
        (hash, size): (u64, usize),
        named: Option<usize>,
        stats: &mut ApplyStats,
    ) {
        if named.is_some_and(|m| abi::maglev_class(m) != abi::maglev_class(size)) {
            self.next = Some((hash, size));
        } else {
            (self.written, self.size) = (Some(hash), size);
        }
        self.input = Some(input);
        stats.table_writes += 1;
    }
}

/// One service as written.
#[derive(Clone, Debug)]
pub(crate) struct Svc {
    pub id: u32,
    /// Each frontend's value, its per-frontend flags included.
    pub frontends: HashMap<abi::FrontendKey, abi::Service>,
    /// The same for the addresses translated at the socket.
    pub sock_frontends: HashMap<abi::FrontendKey, abi::Service>,
    pub ranges: BTreeSet<Cidr>,
    /// By service-local index.
    pub backends: BTreeMap<u32, Backend>,
    /// Endpoint -> index in `backends` (one per endpoint: should the maps
    /// hold an endpoint twice, the other index is freed as not desired).
    by_endpoint: HashMap<Endpoint, u32>,
    indices: IdPool,
    pub table: Table,
}

impl Svc {
    fn new(id: u32) -> Svc {
        Svc {
            id,
            frontends: HashMap::new(),
            sock_frontends: HashMap::new(),
            ranges: BTreeSet::new(),
            backends: BTreeMap::new(),
            by_endpoint: HashMap::new(),
            indices: IdPool::lowest_first(0, MAX_BACKENDS as u32, &BTreeSet::new()),
            table: Table::default(),
        }
    }

    /// The xlb_svc_backend_ids value of the backends held, with `extra`
    /// (index, id) pairs below [`abi::SVC_IDS`] added.
    fn ids_value(&self, extra: impl IntoIterator<Item = (u32, u32)>) -> abi::SvcBackendIds {
        let mut v = NO_IDS;
        let held = self.backends.range(..abi::SVC_IDS).map(|(&i, b)| (i, b.id));
        for (index, id) in held.chain(extra) {
            if let Some(w) = v.id.get_mut(index as usize) {
                *w = id;
            }
        }
        v
    }

    /// The Maglev input of `svc` if it differs from the one its table was
    /// built from: no table without a frontend (nothing could look it up)
    /// or without an active backend. Compared before anything is copied
    /// (a full diff asks this of every service). Called once `svc`'s
    /// backends are written: the names it keeps are those of the backends'
    /// meta (equal to the desired ones, shared rather than copied).
    fn changed_table_input(&self, svc: &Service) -> Option<TableInput> {
        let mut active: Vec<(&str, u32, u16)> = Vec::new();
        if !svc.frontends.is_empty() || !svc.sock_frontends.is_empty() {
            active = svc
                .backends
                .iter()
                .filter(|b| b.state == BackendState::Active)
                .map(|b| (&*b.name, b.weight, self.by_endpoint[&(b.addr, b.port)] as u16))
                .collect();
            active.sort_unstable();
        }
        let size = if active.is_empty() { 0 } else { svc.table_size() };
        let same = self.table.input.as_ref().is_some_and(|t| {
            t.size == size
                && t.active.len() == active.len()
                && t.active
                    .iter()
                    .zip(&active)
                    .all(|((n, w, i), (n2, w2, i2))| **n == **n2 && w == w2 && i == i2)
        });
        let shared = |n: &str, i: u16| {
            let name = &self.backends[&u32::from(i)].meta.name;
            debug_assert_eq!(&**name, n, "meta written before the table input");
            name.clone()
        };
        (!same).then(|| TableInput {
            size,
            active: active.into_iter().map(|(n, w, i)| (shared(n, i), w, i)).collect(),
        })
    }
}

/// Ids and generations.
#[derive(Clone, Debug)]
struct Pools {
    svc_ids: IdPool,
    backend_ids: IdPool,
    gens: Generations,
    /// Last generation of each backend id this process freed (others are
    /// read back from xlb_backends when reused).
    freed_gens: HashMap<u32, u32>,
    /// Backends no service index names any more whose slot is not cleared
    /// yet (a write failed half way): cleared before the next apply writes.
    unlinked: Vec<(u32, abi::Backend)>,
    /// Service ids whose xlb_svc_backend_ids value may differ from the
    /// bookkeeping (read so at a restore, or its write failed): rewritten
    /// before the next apply writes (zeros for an id no service holds).
    ids_owed: BTreeSet<u32>,
    /// Hash entries of ids a restore adopted from the array alone (an
    /// agent of 8c29de7..aa2347d): written with `ids_owed`.
    hash_owed: Vec<(abi::SvcBackendKey, u32)>,
}

/// An xlb_svc_backend_ids value naming no backend.
pub(crate) const NO_IDS: abi::SvcBackendIds = abi::SvcBackendIds { id: [0; abi::SVC_IDS as usize] };

/// New backends queued per apply before their writes (a cold start's
/// 300k in batches of this many: a few MiB of writes at a time).
const NEW_BATCH: usize = 8192;

/// A table for `finish`: built here (slots to write), or the first table
/// of a service as the pipeline wrote it.
pub(crate) enum NewTable {
    Slots(TableInput, Vec<u16>),
    Written { input: TableInput, hash: u64, size: usize },
}

/// A new backend of a service, its id and index taken, not written yet.
pub(crate) struct NewBackend<'s> {
    key: &'s ServiceKey,
    svc_id: u32,
    id: u32,
    index: u32,
    b: &'s crate::model::Backend,
}

/// Gives back the ids and indices of backends that will not be written
/// (last taken first: the pools are as before they were taken).
fn abandon(map: &mut BTreeMap<ServiceKey, Svc>, pools: &mut Pools, pending: &mut Vec<NewBackend>) {
    for n in pending.drain(..).rev() {
        pools.backend_ids.unalloc(n.id);
        if let Some(st) = map.get_mut(n.key) {
            st.indices.unalloc(n.index);
        }
    }
}

/// The services reconciler.
#[derive(Debug)]
pub(crate) struct Services {
    map: BTreeMap<ServiceKey, Svc>,
    pools: Pools,
    /// xlb_fe_filter, in step with the frontends (#14).
    filter: FeFilter,
}

fn write<S: MapStore>(store: &mut S, w: Write<'_>) -> Result<(), DatapathError> {
    store.write(w).map_err(DatapathError::from)
}

/// `writes` in one batch ([`MapStore::write_all`]): how many were written
/// (also added to `count`), and the error that stopped the rest.
fn write_counted<S: MapStore>(
    store: &mut S,
    writes: &[Write<'_>],
    count: &mut usize,
) -> (usize, Result<(), StoreError>) {
    let (n, result) = match store.write_all(writes) {
        Ok(()) => (writes.len(), Ok(())),
        Err((n, e)) => (n, Err(e)),
    };
    *count += n;
    (n, result)
}

impl Services {
    /// The services the maps hold (`raw`, tables read), ids free below
    /// `cap`; their backends' tunnel endpoints are counted into `tunnels`.
    /// `fe_filter`: xlb_fe_filter as read.
    pub fn restore(
        raw: Vec<RawService>,
        cap: Capacity,
        tunnels: &mut Tunnels,
        fe_filter: Vec<u64>,
    ) -> Services {
        let mut map = BTreeMap::new();
        let mut svc_used = BTreeSet::new();
        let mut be_used = BTreeSet::new();
        let mut max_gen = 0;
        for s in raw {
            svc_used.insert(s.id);
            let mut st = Svc::new(s.id);
            st.frontends = s.frontends.iter().copied().collect();
            st.sock_frontends = s.sock_frontends.iter().copied().collect();
            st.ranges = s.ranges.iter().copied().collect();
            let mut used = BTreeSet::new();
            for b in &s.backends {
                be_used.insert(b.id);
                used.insert(b.index);
                max_gen = max_gen.max(b.value.gen);
                tunnels.hold(&b.value);
                let ep = endpoint_of(&b.value);
                st.by_endpoint.entry(ep).or_insert(b.index);
                // No xlb_backend_meta entry: the default of its endpoint
                // (read_services fills it in).
                let meta = b.meta.clone();
                st.backends.insert(b.index, Backend { id: b.id, value: b.value, meta });
            }
            st.indices = IdPool::lowest_first(0, MAX_BACKENDS as u32, &used);
            st.table = Table {
                written: s.table.as_ref().map(|t| t.hash),
                size: s.table.as_ref().map_or(0, |t| if t.size > 0 { t.size } else { t.len }),
                next: None,
                gone: None,
                input: None,
            };
            // A table in xlb_maglev that belongs in a class map (an agent
            // from before the classes wrote it): written anew there, then
            // removed from xlb_maglev.
            if s.table.as_ref().is_some_and(|t| {
                t.len == abi::MAGLEV_MAX && abi::maglev_class(st.table.size) != abi::MAGLEV_MAX
            }) {
                (st.table.written, st.table.gone) = (None, Some(abi::MAGLEV_MAX));
            }
            let mut key = ServiceKey(s.display_name());
            if map.contains_key(&key) {
                // Two ids under one name: this one is not desired, so removed.
                key = ServiceKey(format!("{key} (duplicate id {})", s.id));
            }
            map.insert(key, st);
        }
        let filter = FeFilter::restore(fe_filter, map.values().flat_map(|s| s.frontends.keys()));
        Services {
            map,
            filter,
            pools: Pools {
                svc_ids: IdPool::new(0, cap.services, &svc_used),
                backend_ids: IdPool::new(1, cap.backends, &be_used),
                gens: Generations::after(max_gen),
                freed_gens: HashMap::new(),
                unlinked: Vec::new(),
                ids_owed: BTreeSet::new(),
                hash_owed: Vec::new(),
            },
        }
    }

    /// After a re-read of the maps: what this process knows that the maps
    /// do not say. Tables whose content is what `old` wrote keep the input
    /// they were built from (not rebuilt); generations stay ahead.
    pub fn carry_over(&mut self, old: Services) {
        for (key, st) in self.map.iter_mut() {
            let Some(o) = old.map.get(key).filter(|o| o.id == st.id) else { continue };
            // A table written in another class's map than the one the re-read
            // looked in (the written table's, else the one the frontends
            // name; none named: every class, and it found none): an apply
            // stopped half way. The re-read cannot see it, so it is carried
            // over to be used or removed.
            let looked = match st.table.written {
                Some(_) => Some(abi::maglev_class(st.table.size)),
                None => named_size(st).map(abi::maglev_class),
            };
            let other = |size: usize| looked.is_some_and(|c| c != abi::maglev_class(size));
            st.table.next = o.table.next.filter(|&(_, size)| other(size));
            if let Some(size) = o.table.gone.filter(|&size| other(size)) {
                st.table.gone = Some(size);
            }
            // The input is the tables' (a first one may wait in `next`).
            if o.table.written == st.table.written && o.table.next == st.table.next {
                st.table.input.clone_from(&o.table.input);
            }
        }
        self.pools.gens.merge(&old.pools.gens);
        let used: HashSet<u32> =
            self.map.values().flat_map(|s| s.backends.values().map(|b| b.id)).collect();
        self.pools.freed_gens =
            old.pools.freed_gens.into_iter().filter(|(id, _)| !used.contains(id)).collect();
        self.pools.unlinked =
            old.pools.unlinked.into_iter().filter(|(id, _)| !used.contains(id)).collect();
        for (id, _) in &self.pools.unlinked {
            self.pools.backend_ids.take(*id);
        }
    }

    /// What the restored bookkeeping owes the maps' backend ids
    /// (reconcile::svcids): the hash entry of each index in `adopt` (array
    /// words with none, taken), and a rewrite of each xlb_svc_backend_ids
    /// value in `arrays` (as read) that differs from the bookkeeping (a
    /// service's, or zeros).
    pub fn owe_ids(
        &mut self,
        adopt: &std::collections::HashSet<(u32, u32)>,
        mut arrays: BTreeMap<u32, abi::SvcBackendIds>,
    ) {
        let pools = &mut self.pools;
        for st in self.map.values() {
            let have = arrays.remove(&st.id).unwrap_or(NO_IDS);
            if st.ids_value([]) != have {
                pools.ids_owed.insert(st.id);
            }
            for (&index, b) in st.backends.range(..abi::SVC_IDS) {
                if adopt.contains(&(st.id, index)) {
                    let key = abi::SvcBackendKey { svc_id: st.id, index };
                    pools.hash_owed.push((key, b.id));
                }
            }
        }
        pools.ids_owed.extend(arrays.into_keys());
    }

    /// Writes what [`Services::owe_ids`] found (and array values whose
    /// write failed): the hash entries first (a rollback from here sees
    /// every index), then the array values. A stale word goes straight to
    /// the hash's id: this runs at the restore, before the agent's programs
    /// attach, while the attached ones (a hash-only agent's, in the one
    /// case that leaves stale words) do not read the array; an
    /// array-reading program attached meanwhile read the stale word and
    /// reads the right one from then on.
    pub fn pay_ids<S: MapStore>(
        &mut self,
        store: &mut S,
        stats: &mut ApplyStats,
    ) -> Result<(), DatapathError> {
        let pools = &mut self.pools;
        if !pools.hash_owed.is_empty() {
            let writes: Vec<Write> = pools
                .hash_owed
                .iter()
                .map(|&(key, backend_id)| Write::SvcBackend { key, backend_id })
                .collect();
            let (n, done) = write_counted(store, &writes, &mut stats.backend_writes);
            pools.hash_owed.drain(..n);
            done?;
        }
        if pools.ids_owed.is_empty() {
            return Ok(());
        }
        let by_id: HashMap<u32, &Svc> = self.map.values().map(|st| (st.id, st)).collect();
        let owed: Vec<u32> = pools.ids_owed.iter().copied().collect();
        let writes: Vec<Write> = owed
            .iter()
            .map(|svc_id| Write::SvcBackendIds {
                svc_id: *svc_id,
                ids: by_id.get(svc_id).map_or(NO_IDS, |st| st.ids_value([])),
            })
            .collect();
        let (n, done) = write_counted(store, &writes, &mut stats.backend_writes);
        for svc_id in &owed[..n] {
            pools.ids_owed.remove(svc_id);
        }
        Ok(done?)
    }

    pub fn keys(&self) -> impl Iterator<Item = &ServiceKey> {
        self.map.keys()
    }

    pub fn contains(&self, key: &ServiceKey) -> bool {
        self.map.contains_key(key)
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (&ServiceKey, &Svc)> {
        self.map.iter()
    }

    /// Removes `gone`, then makes the maps hold each of `upsert` (validated,
    /// one per key).
    pub fn apply<'s, S: MapStore>(
        &mut self,
        store: &mut S,
        tunnels: &mut Tunnels,
        gone: &[ServiceKey],
        upsert: &[&'s Service],
        stats: &mut ApplyStats,
    ) -> Result<(), DatapathError> {
        // The filter as the frontends held need it (after a restore, or an
        // apply that stopped before its last flush).
        self.filter.flush(store, &mut stats.filter_writes)?;
        clear_unlinked(store, &mut self.pools, stats)?;
        self.pay_ids(store, stats)?;
        // Removed services first: their frontends go before their backends,
        // and their ids are free for the services added below.
        for key in gone {
            self.remove(store, tunnels, key, stats)?;
            stats.services_removed += 1;
        }
        // Phase 1: new services, new and changed backends, before any table
        // slot points at them. New backends are written in batches of
        // NEW_BATCH (entries, then names, then indices: a cold start's
        // 300k backends in a few hundred syscalls instead of 900k). Once a
        // batch is written, the first tables of its services (new ones, on
        // a cold start every one) are built and written by the pipeline's
        // threads beside the next batches.
        // (Not for a few services: endpoint churn's tables are built in
        // place, no thread started.)
        let sink = store.table_sink().filter(|_| upsert.len() >= tables::PIPELINE_MIN);
        let mut touched: HashSet<&ServiceKey> = HashSet::new();
        std::thread::scope(|scope| {
            let mut first = sink.map(|sink| tables::Pipeline::start(scope, sink));
            let mut pending: Vec<NewBackend<'s>> = Vec::new();
            // Services whose backends are in, their tables not looked at yet.
            let mut done = 0;
            let mut jobs: Vec<TableJob> = Vec::new();
            let phase1: Result<(), DatapathError> = (|| {
                for (at, &svc) in upsert.iter().enumerate() {
                    let (before, queued) = (stats.writes(), pending.len());
                    if !self.map.contains_key(&svc.key) {
                        self.add(store, svc, stats)?;
                        stats.services_added += 1;
                    }
                    self.update_backends(store, tunnels, svc, &mut pending, stats)?;
                    if stats.writes() > before || pending.len() > queued {
                        touched.insert(&svc.key);
                    }
                    if pending.len() >= NEW_BATCH {
                        self.write_new(store, tunnels, &mut pending, stats)?;
                        self.table_jobs(&upsert[done..=at], &mut first, &mut jobs);
                        done = at + 1;
                    }
                }
                self.write_new(store, tunnels, &mut pending, stats)?;
                self.table_jobs(&upsert[done..], &mut first, &mut jobs);
                Ok(())
            })();
            let outcomes = first.map(|p| p.outcomes());
            if let Err(e) = phase1 {
                abandon(&mut self.map, &mut self.pools, &mut pending);
                self.note_first_tables(outcomes.into_iter().flatten(), stats);
                return Err(e);
            }
            // Phase 2: the tables whose input changed (above: the first
            // ones in the pipeline, the others built in phase 3).
            stats.tables_built += jobs.iter().filter(|j| !j.input.is_none()).count();
            // Phase 3: frontends a service gives up, all of them before any
            // is written (one may move to another service of this batch);
            // then per service its table, source ranges, frontends and
            // removals.
            let by_key: HashMap<&ServiceKey, &Service> =
                upsert.iter().map(|s| (&s.key, *s)).collect();
            let mut built: HashSet<&ServiceKey> = HashSet::new();
            let mut outcomes = outcomes.into_iter().flatten();
            let phase3: Result<(), DatapathError> = (|| {
                for svc in upsert {
                    let before = stats.writes();
                    self.drop_frontends(store, svc, stats)?;
                    if stats.writes() > before {
                        touched.insert(&svc.key);
                    }
                }
                for (t, written) in outcomes.by_ref() {
                    let svc = by_key[&t.job.key];
                    let (hash, size) = written?;
                    stats.tables_built += 1;
                    let before = stats.writes();
                    let table = NewTable::Written { input: t.job.input, hash, size };
                    self.finish(store, tunnels, svc, Some(table), stats)?;
                    built.insert(&svc.key);
                    if stats.writes() > before {
                        touched.insert(&svc.key);
                    }
                }
                tables::build_all(std::mem::take(&mut jobs), |job, slots| {
                    let svc = by_key[&job.key];
                    let before = stats.writes();
                    self.finish(
                        store,
                        tunnels,
                        svc,
                        Some(NewTable::Slots(job.input, slots)),
                        stats,
                    )?;
                    built.insert(&svc.key);
                    if stats.writes() > before {
                        touched.insert(&svc.key);
                    }
                    Ok(())
                })?;
                for svc in upsert {
                    if built.contains(&svc.key) {
                        continue;
                    }
                    let before = stats.writes();
                    self.finish(store, tunnels, svc, None, stats)?;
                    if stats.writes() > before {
                        touched.insert(&svc.key);
                    }
                }
                Ok(())
            })();
            // Tables the pipeline wrote after a failure are kept as written.
            self.note_first_tables(outcomes, stats);
            phase3
        })?;
        stats.services_changed += touched.len().saturating_sub(stats.services_added);
        // Bits of frontends removed above, now that they are gone.
        self.filter.flush(store, &mut stats.filter_writes)?;
        Ok(())
    }

    /// The tables of `svcs` (their backends written) whose input changed:
    /// a service's first table goes to the pipeline `first` if there is one,
    /// the others (and every one without a pipeline) onto `jobs`.
    fn table_jobs(
        &self,
        svcs: &[&Service],
        first: &mut Option<tables::Pipeline>,
        jobs: &mut Vec<TableJob>,
    ) {
        for svc in svcs {
            let st = &self.map[&svc.key];
            let Some(input) = st.changed_table_input(svc) else { continue };
            let job = TableJob { key: svc.key.clone(), input };
            let t = &st.table;
            let new = t.written.is_none() && t.next.is_none() && t.gone.is_none();
            match first {
                Some(p) if new && !job.input.is_none() => {
                    p.push(tables::FirstTable { job, svc_id: st.id })
                }
                _ => jobs.push(job),
            }
        }
    }

    /// The tables the pipeline wrote that no `finish` took (an apply that
    /// failed): kept as the services' tables, their frontends to follow.
    fn note_first_tables(
        &mut self,
        outcomes: impl Iterator<Item = (tables::FirstTable, tables::Written)>,
        stats: &mut ApplyStats,
    ) {
        for (t, written) in outcomes {
            let (Ok((hash, size)), Some(st)) = (written, self.map.get_mut(&t.job.key)) else {
                continue;
            };
            let named = named_size(st);
            st.table.first_written(t.job.input, (hash, size), named, stats);
        }
    }

    fn add<S: MapStore>(
        &mut self,
        store: &mut S,
        svc: &Service,
        stats: &mut ApplyStats,
    ) -> Result<(), DatapathError> {
        // Statistics of a free id are zero: they are zeroed when it is freed.
        let id = self.pools.svc_ids.alloc("services")?;
        if let Err(e) = write(store, Write::SvcName { svc_id: id, name: &svc.key.0 }) {
            self.pools.svc_ids.unalloc(id);
            return Err(e);
        }
        stats.frontend_writes += 1;
        self.map.insert(svc.key.clone(), Svc::new(id));
        Ok(())
    }

    /// Changed backends of `svc`: entry, name and weight. New ones get an
    /// id and an index and are queued on `pending` for [`Services::write_new`].
    fn update_backends<'s, S: MapStore>(
        &mut self,
        store: &mut S,
        tunnels: &mut Tunnels,
        svc: &'s Service,
        pending: &mut Vec<NewBackend<'s>>,
        stats: &mut ApplyStats,
    ) -> Result<(), DatapathError> {
        let Services { map, pools, .. } = self;
        let st = map.get_mut(&svc.key).expect("added before");
        for b in &svc.backends {
            let ep = (b.addr, b.port);
            if let Some(&index) = st.by_endpoint.get(&ep) {
                let cur = st.backends.get_mut(&index).expect("indexed");
                let want = backend_value(st.id, cur.value.gen, b);
                if want != cur.value {
                    write(store, Write::Backend { id: cur.id, value: want })?;
                    tunnels.release(&cur.value);
                    tunnels.hold(&want);
                    cur.value = want;
                    stats.backend_writes += 1;
                }
                if cur.meta.weight != b.weight || *cur.meta.name != *b.name {
                    // Back to the default: no entry (absent means default).
                    let w = if BackendMeta::is_default(&b.name, b.weight, b.addr, b.port) {
                        Write::BackendMetaDelete { id: cur.id }
                    } else {
                        Write::BackendMeta { id: cur.id, name: &b.name, weight: b.weight }
                    };
                    write(store, w)?;
                    cur.meta = BackendMeta { name: b.name.clone(), weight: b.weight };
                    stats.meta_writes += 1;
                }
                continue;
            }
            let id = pools.backend_ids.alloc("backends")?;
            let index = match st.indices.alloc("backends of one service") {
                Ok(i) => i,
                Err(e) => {
                    pools.backend_ids.unalloc(id);
                    return Err(e);
                }
            };
            pending.push(NewBackend { key: &svc.key, svc_id: st.id, id, index, b });
        }
        Ok(())
    }

    /// Writes the backends queued by [`Services::update_backends`]: each
    /// one's entry (a generation above any its id had), name and weight,
    /// then the service index naming it, a batch of each in that order; the
    /// bookkeeping takes those whose three writes succeeded. `pending` is
    /// empty after (ids and indices of the others given back).
    fn write_new<S: MapStore>(
        &mut self,
        store: &mut S,
        tunnels: &mut Tunnels,
        pending: &mut Vec<NewBackend<'_>>,
        stats: &mut ApplyStats,
    ) -> Result<(), DatapathError> {
        if pending.is_empty() {
            return Ok(());
        }
        // Each service's new backends by index: those below SVC_IDS first.
        for group in pending.chunk_by_mut(|a, b| std::ptr::eq(a.key, b.key)) {
            group.sort_by_key(|n| n.index);
        }
        let Services { map, pools, .. } = self;
        let unknown: Vec<u32> =
            pending.iter().map(|n| n.id).filter(|id| !pools.freed_gens.contains_key(id)).collect();
        let read = match store.backend_gens(&unknown) {
            Ok(g) => g,
            Err(e) => {
                abandon(map, pools, pending);
                return Err(e.into());
            }
        };
        let mut read = read.into_iter();
        let values: Vec<abi::Backend> = pending
            .iter()
            .map(|n| {
                let last = match pools.freed_gens.get(&n.id) {
                    Some(g) => *g,
                    None => read.next().expect("a generation per id not freed here"),
                };
                backend_value(n.svc_id, pools.gens.next_after(last), n.b)
            })
            .collect();
        let entries: Vec<Write> = pending
            .iter()
            .zip(&values)
            .map(|(n, &value)| Write::Backend { id: n.id, value })
            .collect();
        // Only names and weights other than the endpoint's default have an
        // entry (a NO_PREALLOC hash insert is ~1.5 µs: most of a cold
        // start's map writes otherwise). The id's entry was deleted when it
        // was freed.
        let custom: Vec<bool> = pending
            .iter()
            .map(|n| !BackendMeta::is_default(&n.b.name, n.b.weight, n.b.addr, n.b.port))
            .collect();
        let metas: Vec<Write> = pending
            .iter()
            .zip(&custom)
            .filter(|(_, &c)| c)
            .map(|(n, _)| Write::BackendMeta { id: n.id, name: &n.b.name, weight: n.b.weight })
            .collect();
        // Per backend its xlb_svc_backends entry (every index: what an
        // agent from before the array reads after a rollback). A backend is
        // fully written once its entry, name and hash entry are: XDP falls
        // back to the hash where the array's word is 0.
        let hashes: Vec<Write> = pending
            .iter()
            .map(|n| Write::SvcBackend {
                key: abi::SvcBackendKey { svc_id: n.svc_id, index: n.index },
                backend_id: n.id,
            })
            .collect();
        // Then per service one xlb_svc_backend_ids value for its new
        // indexes below SVC_IDS (its held ones rewritten as they are): the
        // cache XDP reads first, 0 -> id words only.
        let mut arrays: Vec<Write> = Vec::new();
        for group in pending.chunk_by(|a, b| std::ptr::eq(a.key, b.key)) {
            let low = group.iter().take_while(|n| n.index < abi::SVC_IDS).count();
            if low > 0 {
                let st = &map[group[0].key];
                let ids = st.ids_value(group[..low].iter().map(|n| (n.index, n.id)));
                arrays.push(Write::SvcBackendIds { svc_id: group[0].svc_id, ids });
            }
        }
        let mut written = pending.len();
        let mut failed = None;
        for batch in [&entries, &metas, &hashes] {
            if let Err((done, e)) = store.write_all(batch) {
                // Only the hash entries' batch leaves backends fully written.
                written = if std::ptr::eq(batch, &hashes) { done } else { 0 };
                failed = Some(e);
                break;
            }
        }
        // Array values not written (the hashes' batch or their own failed):
        // owed, for the services of the backends written.
        let arrays_done = if failed.is_some() {
            0
        } else {
            let (n, done) = write_counted(store, &arrays, &mut stats.backend_writes);
            failed = done.err();
            n
        };
        for w in &arrays[..arrays_done] {
            if let Write::SvcBackendIds { svc_id, .. } = *w {
                pools.ids_owed.remove(&svc_id);
            }
        }
        for w in &arrays[arrays_done..] {
            if let Write::SvcBackendIds { svc_id, .. } = *w {
                if pending[..written].iter().any(|n| n.svc_id == svc_id) {
                    pools.ids_owed.insert(svc_id);
                }
            }
        }
        let mut rest = pending.split_off(written);
        let mut values = values.into_iter();
        let mut custom = custom.into_iter();
        for group in pending.chunk_by(|a, b| std::ptr::eq(a.key, b.key)) {
            let st = map.get_mut(group[0].key).expect("added before");
            for n in group {
                let value = values.next().expect("a value per backend");
                pools.freed_gens.remove(&n.id);
                tunnels.hold(&value);
                if custom.next().expect("a flag per backend") {
                    stats.meta_writes += 1;
                }
                let meta = BackendMeta { name: n.b.name.clone(), weight: n.b.weight };
                st.backends.insert(n.index, Backend { id: n.id, value, meta });
                st.by_endpoint.insert((n.b.addr, n.b.port), n.index);
                stats.backend_writes += 2;
            }
        }
        pending.clear();
        abandon(map, pools, &mut rest);
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Removes the frontends `svc` no longer lists.
    fn drop_frontends<S: MapStore>(
        &mut self,
        store: &mut S,
        svc: &Service,
        stats: &mut ApplyStats,
    ) -> Result<(), DatapathError> {
        let st = self.map.get_mut(&svc.key).expect("added in phase 1");
        let want: HashSet<abi::FrontendKey> = svc.frontends.iter().map(frontend_key).collect();
        let gone: Vec<abi::FrontendKey> =
            st.frontends.keys().filter(|k| !want.contains(*k)).copied().collect();
        for key in gone {
            write(store, Write::FrontendDelete { key })?;
            st.frontends.remove(&key);
            self.filter.removed(&key);
            stats.deletes += 1;
            stats.settings_changed = true;
        }
        // Nothing caches socket frontends: no settings change to tell.
        let want: HashSet<abi::FrontendKey> = svc.sock_frontends.iter().map(frontend_key).collect();
        let gone: Vec<abi::FrontendKey> =
            st.sock_frontends.keys().filter(|k| !want.contains(*k)).copied().collect();
        for key in gone {
            write(store, Write::SockFrontendDelete { key })?;
            st.sock_frontends.remove(&key);
            stats.deletes += 1;
        }
        Ok(())
    }

    /// The rest of `svc` once its backends are in: its table (if rebuilt),
    /// source ranges, frontends, then what it no longer uses.
    fn finish<S: MapStore>(
        &mut self,
        store: &mut S,
        tunnels: &mut Tunnels,
        svc: &Service,
        built: Option<NewTable>,
        stats: &mut ApplyStats,
    ) -> Result<(), DatapathError> {
        let Services { map, pools, filter, .. } = self;
        let st = map.get_mut(&svc.key).expect("added in phase 1");
        let id = st.id;
        let built = match built {
            Some(NewTable::Written { input, hash, size }) => {
                let named = named_size(st);
                st.table.first_written(input, (hash, size), named, stats);
                None
            }
            Some(NewTable::Slots(input, slots)) => Some((input, slots)),
            None => None,
        };

        // 1. A new table before the frontends that will use it; an emptied
        // one goes after them (a frontend still counting backends would
        // find no table).
        let mut drop_table = None;
        if let Some((input, slots)) = built {
            if slots.is_empty() && st.table.written.is_some() {
                drop_table = Some(input);
            } else {
                if !slots.is_empty() {
                    // A table of another size class goes into another map:
                    // the frontends move to it below, then the old one goes.
                    let size = slots.len();
                    let slots = tables::padded(slots);
                    let want = (table_hash(&slots), size);
                    // The class XDP and a restore look in: the written
                    // table's, else the one the frontends name (a first
                    // table of another class waits in `next` for them).
                    let class = match st.table.written {
                        Some(_) => Some(abi::maglev_class(st.table.size)),
                        None => named_size(st).map(abi::maglev_class),
                    };
                    let mut moved = class.is_some_and(|c| c != abi::maglev_class(want.1));
                    if moved && st.frontends.is_empty() && st.sock_frontends.is_empty() {
                        // No frontend can read the old table: it goes first,
                        // so the maps never hold two tables no frontend
                        // tells apart (a restore could not say which is
                        // the service's).
                        write(store, Write::MaglevDelete { svc_id: id, size: st.table.size })?;
                        stats.deletes += 1;
                        (st.table.written, st.table.next) = (None, None);
                        moved = false;
                    }
                    let have = if moved {
                        st.table.next
                    } else {
                        st.table.written.map(|h| (h, st.table.size))
                    };
                    if have.map(|h| h.0) != Some(want.0) {
                        write(store, Write::Maglev { svc_id: id, slots: &slots })?;
                        stats.table_writes += 1;
                    }
                    if moved {
                        st.table.next = Some(want);
                    } else {
                        (st.table.written, st.table.size) = (Some(want.0), want.1);
                    }
                }
                st.table.input = Some(input);
            }
        }

        // 2. New source ranges, before the flag that enforces them.
        let want_ranges: BTreeSet<Cidr> = svc.source_ranges.iter().copied().collect();
        let new_ranges: Vec<Cidr> = want_ranges.difference(&st.ranges).copied().collect();
        for cidr in new_ranges {
            write(store, Write::SourceRange { svc_id: id, cidr })?;
            st.ranges.insert(cidr);
            stats.frontend_writes += 1;
            stats.settings_changed = true;
        }

        // 3. The service value on every frontend that lacks it.
        let value = service_value(id, svc);
        for f in &svc.sock_frontends {
            let key = frontend_key(f);
            let want = frontend_value(value, svc, f);
            if st.sock_frontends.get(&key) == Some(&want) {
                continue;
            }
            write(store, Write::SockFrontend { key, value: want })?;
            st.sock_frontends.insert(key, want);
            stats.frontend_writes += 1;
            promote_moved_table(st);
            if drop_table.is_some() {
                hide_dropped_table(st);
            }
        }
        for f in &svc.frontends {
            let key = frontend_key(f);
            let want = frontend_value(value, svc, f);
            let old = st.frontends.get(&key).copied();
            if old == Some(want) {
                continue;
            }
            if old.is_none() {
                filter.before_add(store, &key, &mut stats.filter_writes)?;
            }
            write(store, Write::Frontend { key, value: want })?;
            if old.is_none() {
                filter.added(&key);
            }
            // The backend count only steers new flows: a change of it alone
            // (endpoint churn) leaves cached service settings valid, except
            // to or from 0 (no backend: the reject), which XDP's frontend
            // cache reads from its copy (xdp/flowcache.h).
            stats.settings_changed |= old.is_none_or(|o| {
                abi::Service { backend_count: want.backend_count, ..o } != want
                    || (o.backend_count == 0) != (want.backend_count == 0)
            });
            st.frontends.insert(key, want);
            stats.frontend_writes += 1;
            promote_moved_table(st);
            if drop_table.is_some() {
                hide_dropped_table(st);
            }
        }

        // A moved table no frontend names (M moved back) is removed in 5.
        if let Some((_, size)) = st.table.next.take() {
            st.table.gone = Some(size);
        }

        // 4. Source ranges no longer listed, once no frontend enforces them.
        let gone_ranges: Vec<Cidr> = st.ranges.difference(&want_ranges).copied().collect();
        for cidr in gone_ranges {
            write(store, Write::SourceRangeDelete { svc_id: id, cidr })?;
            st.ranges.remove(&cidr);
            stats.deletes += 1;
            stats.settings_changed = true;
        }

        // 5. A table no frontend names, then the emptied table.
        if let Some(size) = st.table.gone {
            let current = st.table.written.map(|_| abi::maglev_class(st.table.size));
            if current != Some(abi::maglev_class(size)) {
                write(store, Write::MaglevDelete { svc_id: id, size })?;
                stats.deletes += 1;
            }
            st.table.gone = None;
        }
        if let Some(input) = drop_table {
            if st.table.written.is_some() {
                write(store, Write::MaglevDelete { svc_id: id, size: st.table.size })?;
                stats.deletes += 1;
            }
            st.table = Table { input: Some(input), ..Table::default() };
        }

        // 6. Backends no longer listed: no slot points at them any more.
        let want_be: HashSet<Endpoint> = svc.backends.iter().map(|b| (b.addr, b.port)).collect();
        let gone: Vec<u32> = st
            .backends
            .iter()
            .filter(|(index, b)| {
                let ep = endpoint_of(&b.value);
                !want_be.contains(&ep) || st.by_endpoint.get(&ep) != Some(*index)
            })
            .map(|(index, _)| *index)
            .collect();
        let proto = svc_proto(st);
        for index in gone {
            // An endpoint held twice keeps its other index: not gone.
            let kept = want_be.contains(&endpoint_of(&st.backends[&index].value));
            free_backend(store, tunnels, pools, st, index, proto.filter(|_| !kept), stats)?;
        }
        Ok(())
    }

    fn remove<S: MapStore>(
        &mut self,
        store: &mut S,
        tunnels: &mut Tunnels,
        key: &ServiceKey,
        stats: &mut ApplyStats,
    ) -> Result<(), DatapathError> {
        let Services { map, pools, filter, .. } = self;
        let st = map.get_mut(key).expect("listed");
        let id = st.id;
        let proto = svc_proto(st);
        let frontends: Vec<abi::FrontendKey> = st.frontends.keys().copied().collect();
        for key in frontends {
            write(store, Write::FrontendDelete { key })?;
            st.frontends.remove(&key);
            filter.removed(&key);
            stats.deletes += 1;
            stats.settings_changed = true;
        }
        let frontends: Vec<abi::FrontendKey> = st.sock_frontends.keys().copied().collect();
        for key in frontends {
            write(store, Write::SockFrontendDelete { key })?;
            st.sock_frontends.remove(&key);
            stats.deletes += 1;
        }
        for cidr in st.ranges.clone() {
            write(store, Write::SourceRangeDelete { svc_id: id, cidr })?;
            st.ranges.remove(&cidr);
            stats.deletes += 1;
            stats.settings_changed = true;
        }
        for size in [st.table.next.map(|n| n.1), st.table.gone].into_iter().flatten() {
            write(store, Write::MaglevDelete { svc_id: id, size })?;
            stats.deletes += 1;
        }
        (st.table.next, st.table.gone) = (None, None);
        if st.table.written.is_some() {
            write(store, Write::MaglevDelete { svc_id: id, size: st.table.size })?;
            st.table = Table::default();
            stats.deletes += 1;
        }
        let indices: Vec<u32> = st.backends.keys().copied().collect();
        for index in indices {
            free_backend(store, tunnels, pools, st, index, proto, stats)?;
        }
        // The name last: while it is there, a restart finds the rest.
        write(store, Write::SvcStatsZero { svc_id: id })?;
        write(store, Write::SvcNameDelete { svc_id: id })?;
        map.remove(key);
        pools.svc_ids.release(id);
        Ok(())
    }
}

/// A table moved to another class ([`Table::next`]) becomes the service's
/// table as soon as the frontend whose settings are the service's (the
/// first listed: [`view::fe_sort_key`]) carries its M; the old one is
/// removed once every frontend does (step 5 of `finish`).
fn promote_moved_table(st: &mut Svc) {
    let Some((hash, size)) = st.table.next else { return };
    if named_size(st) == Some(size) {
        // (A first table has no old one to remove.)
        st.table.gone = st.table.written.map(|_| st.table.size);
        (st.table.written, st.table.size, st.table.next) = (Some(hash), size, None);
    }
}

/// A table on its way out (no active backend left) once the frontend a
/// restore reads names another size class: a restore could no longer find
/// it, so it is held as [`Table::gone`] (removed in step 5 of `finish`, or by
/// the retry after a failed write) instead of as the service's table.
/// (A table already waiting in `gone` — a failed apply not yet retried —
/// keeps the slot: the dropped one stays the service's and is deleted by
/// `finish` as before.)
fn hide_dropped_table(st: &mut Svc) {
    if st.table.written.is_none() || st.table.gone.is_some() {
        return;
    }
    let class = abi::maglev_class(st.table.size);
    if named_size(st).is_some_and(|size| abi::maglev_class(size) != class) {
        (st.table.gone, st.table.written) = (Some(st.table.size), None);
    }
}

/// M as the frontend a restore reads the service's settings from says it
/// (lb::view: the first packet frontend, else the first socket frontend).
fn named_size(st: &Svc) -> Option<usize> {
    let first = st
        .frontends
        .iter()
        .min_by_key(|(k, _)| crate::view::fe_sort_key(k))
        .or_else(|| st.sock_frontends.iter().min_by_key(|(k, _)| crate::view::fe_sort_key(k)));
    first.map(|(_, v)| (v.maglev_size as usize).min(abi::MAGLEV_MAX))
}

/// The IP protocol of a service's frontends (one service port has one).
fn svc_proto(st: &Svc) -> Option<Proto> {
    st.frontends.keys().chain(st.sock_frontends.keys()).find_map(|k| Proto::from_number(k.proto))
}

/// Frees a backend: first its service index (from then on nothing can
/// reach it), then its slot ([`clear_unlinked`]). `proto`: its service's
/// (read before the service's frontends went), for the sockets to end.
#[allow(clippy::too_many_arguments)]
fn free_backend<S: MapStore>(
    store: &mut S,
    tunnels: &mut Tunnels,
    pools: &mut Pools,
    st: &mut Svc,
    index: u32,
    proto: Option<Proto>,
    stats: &mut ApplyStats,
) -> Result<(), DatapathError> {
    let b = &st.backends[&index];
    let (id, value) = (b.id, b.value);
    let key = abi::SvcBackendKey { svc_id: st.id, index };
    // The cache's word first (XDP falls back to the hash entry), then the
    // hash entry.
    if index < abi::SVC_IDS {
        let mut ids = st.ids_value([]);
        ids.id[index as usize] = 0;
        write(store, Write::SvcBackendIds { svc_id: st.id, ids })?;
        stats.deletes += 1;
        pools.ids_owed.remove(&st.id);
    }
    if let Err(e) = write(store, Write::SvcBackendDelete { key }) {
        if index < abi::SVC_IDS {
            // Held, its word 0: rewritten at the next apply's start.
            pools.ids_owed.insert(st.id);
        }
        return Err(e);
    }
    stats.deletes += 1;
    if let Some(proto) = proto {
        let (addr, port) = endpoint_of(&value);
        stats.gone_backends.push(GoneBackend { addr, port, proto });
    }
    tunnels.release(&value);
    st.backends.remove(&index);
    let ep = endpoint_of(&value);
    if st.by_endpoint.get(&ep) == Some(&index) {
        st.by_endpoint.remove(&ep);
    }
    st.indices.release(index);
    pools.unlinked.push((id, value));
    clear_unlinked(store, pools, stats)
}

/// Clears the slots of unlinked backends: the entry (flags 0: the
/// generation stays, so the id's next owner gets another and stale
/// connection entries are ignored), its statistics (zeroed for the next
/// owner), name and weight; then the id is free.
fn clear_unlinked<S: MapStore>(
    store: &mut S,
    pools: &mut Pools,
    stats: &mut ApplyStats,
) -> Result<(), DatapathError> {
    while let Some(&(id, value)) = pools.unlinked.first() {
        write(store, Write::Backend { id, value: abi::Backend { flags: 0, ..value } })?;
        write(store, Write::BackendStatsZero { id })?;
        write(store, Write::BackendMetaDelete { id })?;
        stats.deletes += 1;
        stats.meta_writes += 1;
        pools.unlinked.remove(0);
        pools.backend_ids.release(id);
        pools.freed_gens.insert(id, value.gen);
    }
    Ok(())
}
