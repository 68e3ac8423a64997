//! The applier: turns a [`Desired`] state into datapath map writes. It keeps
//! the applied state (ids, generations, a hash of each Maglev table) beside
//! the maps, restores it from the pinned maps when it opens (so a restarted
//! agent disturbs no established flow), and writes only what differs, in
//! dependency order: backends before the tables and frontends that use them,
//! frontends removed before their backends. Bookkeeping changes only after the
//! map write it stands for succeeded, so a failed apply is simply retried.
//!
//! Three entry points: [`Datapath::apply`] diffs a whole desired state;
//! [`Datapath::apply_services`] touches only the services named (a watch
//! event's worth: its cost grows with the change, not with the cluster);
//! [`Datapath::resync`] first re-reads the maps, so entries changed or deleted
//! behind the agent's back are repaired by the diff that follows.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::maps::PerCpuValues;
use serde::Serialize;

use crate::{
    abi,
    maglev::Maglev,
    maps::{src_range_key, Maps, MapsError},
    model::{
        Backend, BackendState, Cidr, Desired, Encap, Frontend, NodeConfig, Proto, Service,
        ServiceKey,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("service {service}: {detail}")]
    Invalid { service: ServiceKey, detail: String },
    #[error("{what} capacity exhausted ({capacity}); raise the map size")]
    Capacity { what: &'static str, capacity: u32 },
}

/// Maglev tables built per chunk of an apply (a table is 32 KiB while it
/// waits to be written: a cold start of 10k services stays at a few MiB).
const TABLE_CHUNK: usize = 256;

/// What one `apply` wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ApplyStats {
    pub services_added: usize,
    pub services_removed: usize,
    pub services_changed: usize,
    pub frontend_writes: usize,
    pub backend_writes: usize,
    pub table_writes: usize,
    pub deletes: usize,
    /// Frontends or source ranges were written or removed: caches of
    /// service settings in the datapath were told (xlb_config_gen).
    pub settings_changed: bool,
    #[serde(skip)]
    pub duration: Duration,
}

impl ApplyStats {
    /// Map operations in all.
    pub fn writes(&self) -> usize {
        self.frontend_writes + self.backend_writes + self.table_writes + self.deletes
    }
}

/// Dense id allocator; freed ids are reused oldest-first (FIFO) so that an id
/// comes back as late as possible.
#[derive(Debug)]
struct IdPool {
    next: u32,
    limit: u32,
    free: VecDeque<u32>,
}

impl IdPool {
    fn new(first: u32, limit: u32, used: &BTreeSet<u32>) -> IdPool {
        let next = used.iter().next_back().map_or(first, |m| m + 1).max(first);
        let free = (first..next).filter(|i| !used.contains(i)).collect();
        IdPool { next, limit, free }
    }

    fn alloc(&mut self, what: &'static str) -> Result<u32, DatapathError> {
        if let Some(id) = self.free.pop_front() {
            return Ok(id);
        }
        if self.next >= self.limit {
            return Err(DatapathError::Capacity { what, capacity: self.limit });
        }
        self.next += 1;
        Ok(self.next - 1)
    }

    fn release(&mut self, id: u32) {
        self.free.push_back(id);
    }
}

#[derive(Clone, Debug)]
struct BackendState_ {
    id: u32,
    gen: u32,
    index: u32,
    name: String,
    weight: u32,
    value: abi::Backend,
}

#[derive(Debug)]
struct SvcState {
    id: u32,
    value: abi::Service,
    frontends: HashSet<abi::FrontendKey>,
    /// Keyed by endpoint (address, port).
    backends: HashMap<(IpAddr, u16), BackendState_>,
    /// Hash of the table as written (slot -> service-local backend index);
    /// None: no table. (The tables themselves, 32 KiB each, stay in the map.)
    table: Option<u64>,
    ranges: BTreeSet<Cidr>,
    indices: IdPool,
    /// What `table` was built from (None: not known, e.g. after a restore).
    table_input: Option<TableInput>,
}

/// What a Maglev table is built from: equal inputs give equal tables.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TableInput {
    size: u32,
    /// (stable name, weight, service-local index), sorted.
    active: Vec<(String, u32, u16)>,
}

struct TableJob {
    key: ServiceKey,
    input: TableInput,
}

/// Built tables: each job with its table (slot -> service-local index).
type Built = Result<Vec<(TableJob, Vec<u16>)>, DatapathError>;

/// A chunk of tables being built on a thread, or to be built in place.
enum Building<'scope> {
    Thread(std::thread::ScopedJoinHandle<'scope, Built>),
    Inline(Vec<TableJob>),
}

/// Builds the tables (slot -> service-local index) of `jobs` on every core:
/// the one CPU-heavy step of an apply (about 0.3 ms a table at M = 16381).
fn build_tables(jobs: Vec<TableJob>) -> Built {
    fn one(job: &TableJob) -> Result<Vec<u16>, DatapathError> {
        let TableInput { size, active } = &job.input;
        if active.is_empty() {
            return Ok(Vec::new());
        }
        let invalid = |e: crate::maglev::MaglevError| DatapathError::Invalid {
            service: job.key.clone(),
            detail: e.to_string(),
        };
        let maglev = Maglev::new(*size).map_err(invalid)?;
        let input: Vec<(&str, u32)> = active.iter().map(|(n, w, _)| (n.as_str(), *w)).collect();
        let positions = maglev.build(&input).map_err(invalid)?;
        Ok(positions.iter().map(|&p| active[p as usize].2).collect())
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len());
    if threads <= 1 {
        return jobs.into_iter().map(|j| one(&j).map(|t| (j, t))).collect();
    }
    let chunk = jobs.len().div_ceil(threads);
    let built: Vec<Result<Vec<u16>, DatapathError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(one).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("Maglev build panicked")).collect()
    });
    jobs.into_iter().zip(built).map(|(j, t)| t.map(|t| (j, t))).collect()
}

/// The datapath of one node: its pinned maps and what has been applied to them.
#[derive(Debug)]
pub struct Datapath {
    maps: Maps,
    pin_dir: PathBuf,
    services: BTreeMap<ServiceKey, SvcState>,
    svc_ids: IdPool,
    backend_ids: IdPool,
    next_gen: u32,
    node: Option<abi::NodeCfg>,
    tunnels: Tunnels,
    ncpus: usize,
}

/// The applied state read back from the maps.
struct Restored {
    services: BTreeMap<ServiceKey, SvcState>,
    svc_ids: IdPool,
    backend_ids: IdPool,
    next_gen: u32,
    node: Option<abi::NodeCfg>,
    tunnels: Tunnels,
}

fn table_hash(table: &[u16]) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    if table.is_empty() {
        return None;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    table.hash(&mut h);
    Some(h.finish())
}

fn tunnel_of(v: &abi::Backend) -> Option<IpAddr> {
    abi::addr_from_abi(&v.node, v.node_family).filter(|a| !a.is_unspecified())
}

/// Tunnel endpoints (backend node addresses) and how many backends each
/// carries; `gen` moves whenever one appears or goes.
#[derive(Debug, Default)]
struct Tunnels {
    refs: HashMap<IpAddr, u32>,
    gen: u64,
}

fn tunnel_ref(tunnels: &mut Tunnels, v: &abi::Backend) {
    if let Some(a) = tunnel_of(v) {
        let n = tunnels.refs.entry(a).or_default();
        *n += 1;
        if *n == 1 {
            tunnels.gen += 1;
        }
    }
}

fn tunnel_unref(tunnels: &mut Tunnels, v: &abi::Backend) {
    if let Some(a) = tunnel_of(v) {
        if let Some(n) = tunnels.refs.get_mut(&a) {
            *n -= 1;
            if *n == 0 {
                tunnels.refs.remove(&a);
                tunnels.gen += 1;
            }
        }
    }
}

fn frontend_key(f: &Frontend) -> abi::FrontendKey {
    let (addr, family) = abi::addr_to_abi(f.addr);
    abi::FrontendKey { addr, port: f.port.to_be(), proto: f.proto.number(), family }
}

fn backend_value(svc_id: u32, gen: u32, b: &Backend) -> abi::Backend {
    let (addr, family) = abi::addr_to_abi(b.addr);
    let (node, node_family) = abi::addr_to_abi(b.node);
    let flags = abi::BE_F_ACTIVE
        | match b.state {
            BackendState::Active => 0,
            BackendState::Terminating => abi::BE_F_TERMINATING,
        };
    abi::Backend { addr, node, port: b.port.to_be(), family, node_family, flags, svc_id, gen }
}

fn svc_name(key: &ServiceKey) -> abi::SvcName {
    let mut name = [0u8; 128];
    let b = key.0.as_bytes();
    let n = b.len().min(127);
    name[..n].copy_from_slice(&b[..n]);
    abi::SvcName { name }
}

fn validate(svc: &Service) -> Result<(), DatapathError> {
    let bad = |detail: String| DatapathError::Invalid { service: svc.key.clone(), detail };
    if svc.key.0.len() > 127 {
        return Err(bad("service key longer than 127 bytes".into()));
    }
    if svc.maglev_size as usize > abi::MAGLEV_MAX || svc.maglev_size < 2 {
        return Err(bad(format!(
            "maglev size {} outside 2..={}",
            svc.maglev_size,
            abi::MAGLEV_MAX
        )));
    }
    let mut seen = HashSet::new();
    for b in &svc.backends {
        if !seen.insert((b.addr, b.port)) {
            return Err(bad(format!("backend {}:{} listed twice", b.addr, b.port)));
        }
        if b.weight == 0 {
            return Err(bad(format!("backend {}: weight 0", b.name)));
        }
    }
    Ok(())
}

impl Datapath {
    /// Opens the maps pinned under `pin_dir` and restores the applied state
    /// from them.
    pub fn open(pin_dir: &Path) -> Result<Datapath, DatapathError> {
        let maps = Maps::open(pin_dir)?;
        let ncpus = aya::util::nr_cpus().map_or(1, |n| n);
        let r = restore(&maps)?;
        Ok(Datapath {
            maps,
            pin_dir: pin_dir.to_path_buf(),
            services: r.services,
            svc_ids: r.svc_ids,
            backend_ids: r.backend_ids,
            next_gen: r.next_gen,
            node: r.node,
            tunnels: r.tunnels,
            ncpus,
        })
    }

    /// Re-reads the applied state from the maps, then makes them hold exactly
    /// `desired`: the periodic full diff. Whatever changed behind the agent's
    /// back (an entry deleted or rewritten by hand, a service a missed delete
    /// left behind) is put right. Maglev tables whose map content still
    /// matches what was built are not rebuilt.
    pub fn resync(&mut self, desired: &Desired) -> Result<ApplyStats, DatapathError> {
        let mut r = restore(&self.maps)?;
        for (key, st) in r.services.iter_mut() {
            if let Some(old) = self.services.get(key) {
                if old.table == st.table && old.value.maglev_size == st.value.maglev_size {
                    st.table_input.clone_from(&old.table_input);
                }
            }
        }
        self.services = r.services;
        self.svc_ids = r.svc_ids;
        self.backend_ids = r.backend_ids;
        self.next_gen = self.next_gen.max(r.next_gen);
        self.node = r.node;
        self.tunnels = Tunnels { refs: r.tunnels.refs, gen: self.tunnels.gen + 1 };
        self.apply(desired)
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The maps, for readers (statistics, listings).
    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    /// Service keys currently applied.
    pub fn service_keys(&self) -> impl Iterator<Item = &ServiceKey> {
        self.services.keys()
    }

    /// Makes the datapath hold exactly `desired`: writes only the difference.
    pub fn apply(&mut self, desired: &Desired) -> Result<ApplyStats, DatapathError> {
        // Removed services first: their frontends go before their backends,
        // and their ids are free for the services added below.
        let gone: Vec<ServiceKey> =
            self.services.keys().filter(|k| !desired.services.contains_key(*k)).cloned().collect();
        let upsert: Vec<&Service> = desired.services.values().collect();
        self.apply_set(&desired.node, &gone, &upsert)
    }

    /// Makes the datapath hold `changed` — each service as given, or removed
    /// when `None` — and this node's settings; services not named are left
    /// alone. The incremental form of [`Datapath::apply`] for a stream of
    /// changes: its cost grows with the change, not with the services held.
    pub fn apply_services<'a>(
        &mut self,
        node: &NodeConfig,
        changed: impl IntoIterator<Item = (&'a ServiceKey, Option<&'a Service>)>,
    ) -> Result<ApplyStats, DatapathError> {
        let mut gone = Vec::new();
        let mut upsert = Vec::new();
        for (key, svc) in changed {
            match svc {
                Some(s) => {
                    if s.key != *key {
                        return Err(DatapathError::Invalid {
                            service: key.clone(),
                            detail: format!("given under the key of service {}", s.key),
                        });
                    }
                    upsert.push(s);
                }
                None if self.services.contains_key(key) => gone.push(key.clone()),
                None => {}
            }
        }
        self.apply_set(node, &gone, &upsert)
    }

    fn apply_set(
        &mut self,
        node: &NodeConfig,
        gone: &[ServiceKey],
        upsert: &[&Service],
    ) -> Result<ApplyStats, DatapathError> {
        let start = Instant::now();
        for svc in upsert {
            validate(svc)?;
        }
        let mut stats = ApplyStats::default();
        self.apply_node(node)?;
        for key in gone {
            self.remove_service(key, &mut stats)?;
            stats.services_removed += 1;
        }
        // Phase 1 (serial): new services, new and changed backends, before
        // any table slot points at them.
        let mut touched: HashSet<&ServiceKey> = HashSet::new();
        for svc in upsert {
            let before = stats.writes();
            if !self.services.contains_key(&svc.key) {
                self.add_service(svc, &mut stats)?;
                stats.services_added += 1;
            }
            self.update_backends(svc, &mut stats)?;
            if stats.writes() > before {
                touched.insert(&svc.key);
            }
        }
        // Phase 2 (parallel, overlapped with the writes of phase 3): Maglev
        // tables of the services whose active backend set changed.
        let jobs: Vec<TableJob> = upsert
            .iter()
            .filter_map(|svc| {
                let input = self.table_input(svc);
                (self.services[&svc.key].table_input.as_ref() != Some(&input))
                    .then(|| TableJob { key: svc.key.clone(), input })
            })
            .collect();
        // Phase 3 (serial): frontends a service gives up, all of them before
        // any is written (one may move to another service of this batch);
        // then tables, source ranges, frontends and removals per service.
        for svc in upsert {
            let before = stats.writes();
            self.drop_frontends(svc, &mut stats)?;
            if stats.writes() > before {
                touched.insert(&svc.key);
            }
        }
        // Tables are built a chunk at a time, the next chunk while this one
        // is written: at most two chunks of 32 KiB tables exist at once.
        let by_key: HashMap<&ServiceKey, &Service> = upsert.iter().map(|s| (&s.key, *s)).collect();
        let mut with_table: HashSet<&ServiceKey> = HashSet::new();
        let mut chunks: VecDeque<Vec<TableJob>> = VecDeque::new();
        let mut jobs = jobs.into_iter().peekable();
        while jobs.peek().is_some() {
            chunks.push_back(jobs.by_ref().take(TABLE_CHUNK).collect());
        }
        std::thread::scope(|scope| -> Result<(), DatapathError> {
            // One chunk (a watch event's worth): built right here, no thread.
            let overlap = chunks.len() > 1;
            let spawn = |c: Vec<TableJob>| {
                if overlap {
                    Building::Thread(scope.spawn(move || build_tables(c)))
                } else {
                    Building::Inline(c)
                }
            };
            let mut next = chunks.pop_front().map(spawn);
            while let Some(building) = next.take() {
                let built = match building {
                    Building::Thread(h) => h.join().expect("Maglev build panicked")?,
                    Building::Inline(c) => build_tables(c)?,
                };
                next = chunks.pop_front().map(spawn);
                for (job, table) in built {
                    let svc = by_key[&job.key];
                    let before = stats.writes();
                    self.finish_service(svc, Some((job.input, table)), &mut stats)?;
                    with_table.insert(&svc.key);
                    if stats.writes() > before {
                        touched.insert(&svc.key);
                    }
                }
            }
            Ok(())
        })?;
        for svc in upsert {
            if with_table.contains(&svc.key) {
                continue;
            }
            let before = stats.writes();
            self.finish_service(svc, None, &mut stats)?;
            if stats.writes() > before {
                touched.insert(&svc.key);
            }
        }
        stats.services_changed = touched.len().saturating_sub(stats.services_added);
        if stats.settings_changed {
            self.maps.bump_config_gen()?;
        }
        stats.duration = start.elapsed();
        Ok(stats)
    }

    /// Removes the frontends `svc` no longer lists.
    fn drop_frontends(
        &mut self,
        svc: &Service,
        stats: &mut ApplyStats,
    ) -> Result<(), DatapathError> {
        let Datapath { maps, services, .. } = self;
        let st = services.get_mut(&svc.key).expect("added in phase 1");
        let want_fe: HashSet<abi::FrontendKey> = svc.frontends.iter().map(frontend_key).collect();
        let gone_fe: Vec<abi::FrontendKey> = st.frontends.difference(&want_fe).copied().collect();
        for fe in gone_fe {
            remove_ok(maps.frontends.remove(&fe), "xlb_frontends")?;
            stats.settings_changed = true;
            st.frontends.remove(&fe);
            stats.deletes += 1;
        }
        Ok(())
    }

    fn apply_node(&mut self, node: &NodeConfig) -> Result<(), DatapathError> {
        let mut addr6 = [0u8; 16];
        if let Some(a) = node.tunnel_v6 {
            addr6 = a.octets();
        }
        let cfg = abi::NodeCfg {
            addr4: node.tunnel_v4.map_or([0; 4], |a| a.octets()),
            addr6,
            geneve_port: abi::GENEVE_PORT.to_be(),
            pad: 0,
            vni: 0,
        };
        if self.node != Some(cfg) {
            self.maps.node.set(0, cfg, 0).map_err(MapsError::op("xlb_node", "set"))?;
            self.node = Some(cfg);
            self.tunnels.gen += 1; // this node's own addresses are not tunnelled to
        }
        Ok(())
    }

    fn add_service(&mut self, svc: &Service, stats: &mut ApplyStats) -> Result<(), DatapathError> {
        let id = self.svc_ids.alloc("services")?;
        // Statistics of a new id are zero: ids are zeroed when freed.
        if let Err(e) = self.maps.svc_names.insert(id, svc_name(&svc.key), 0) {
            self.svc_ids.release(id);
            return Err(MapsError::op("xlb_svc_names", "insert")(e).into());
        }
        stats.frontend_writes += 1;
        let value = empty_service(id, svc.maglev_size);
        self.services.insert(
            svc.key.clone(),
            SvcState {
                id,
                value,
                frontends: HashSet::new(),
                backends: HashMap::new(),
                table: None,
                ranges: BTreeSet::new(),
                indices: IdPool::new(0, u16::MAX as u32, &BTreeSet::new()),
                table_input: None,
            },
        );
        Ok(())
    }

    fn update_backends(
        &mut self,
        svc: &Service,
        stats: &mut ApplyStats,
    ) -> Result<(), DatapathError> {
        let Datapath { maps, services, backend_ids, next_gen, tunnels, .. } = self;
        let st = services.get_mut(&svc.key).expect("added above");
        let svc_id = st.id;

        // 1. New and changed backends (before any table slot points at them).
        for b in &svc.backends {
            let key = (b.addr, b.port);
            match st.backends.get_mut(&key) {
                Some(cur) => {
                    let want = backend_value(svc_id, cur.gen, b);
                    if want != cur.value {
                        maps.backends
                            .set(cur.id, want, 0)
                            .map_err(MapsError::op("xlb_backends", "set"))?;
                        tunnel_unref(tunnels, &cur.value);
                        tunnel_ref(tunnels, &want);
                        cur.value = want;
                        stats.backend_writes += 1;
                    }
                    cur.name.clone_from(&b.name);
                    cur.weight = b.weight;
                }
                None => {
                    let id = backend_ids.alloc("backends")?;
                    let index = match st.indices.alloc("backends of one service") {
                        Ok(i) => i,
                        Err(e) => {
                            backend_ids.release(id);
                            return Err(e);
                        }
                    };
                    let gen = *next_gen;
                    let value = backend_value(svc_id, gen, b);
                    let written = (|| {
                        maps.backends
                            .set(id, value, 0)
                            .map_err(MapsError::op("xlb_backends", "set"))?;
                        maps.svc_backends
                            .insert(abi::SvcBackendKey { svc_id, index }, id, 0)
                            .map_err(MapsError::op("xlb_svc_backends", "insert"))
                    })();
                    if let Err(e) = written {
                        backend_ids.release(id);
                        st.indices.release(index);
                        return Err(e.into());
                    }
                    *next_gen = next_gen.wrapping_add(1).max(1);
                    tunnel_ref(tunnels, &value);
                    stats.backend_writes += 2;
                    st.backends.insert(
                        key,
                        BackendState_ {
                            id,
                            gen,
                            index,
                            name: b.name.clone(),
                            weight: b.weight,
                            value,
                        },
                    );
                }
            }
        }

        Ok(())
    }

    /// The Maglev input of a service: its prime and its active backends by
    /// stable name, with their service-local indices.
    fn table_input(&self, svc: &Service) -> TableInput {
        let st = &self.services[&svc.key];
        let mut active: Vec<(String, u32, u16)> = svc
            .backends
            .iter()
            .filter(|b| b.state == BackendState::Active)
            .map(|b| {
                let cur = &st.backends[&(b.addr, b.port)];
                (b.name.clone(), b.weight, cur.index as u16)
            })
            .collect();
        active.sort();
        TableInput { size: svc.maglev_size, active }
    }

    fn finish_service(
        &mut self,
        svc: &Service,
        table: Option<(TableInput, Vec<u16>)>,
        stats: &mut ApplyStats,
    ) -> Result<(), DatapathError> {
        let Datapath { maps, services, backend_ids, ncpus, tunnels, .. } = self;
        let st = services.get_mut(&svc.key).expect("added in phase 1");
        let svc_id = st.id;
        let active_count = svc.backends.iter().filter(|b| b.state == BackendState::Active).count();
        if let Some((input, table)) = table {
            let hash = table_hash(&table);
            if hash != st.table {
                if table.is_empty() {
                    remove_ok(maps.maglev.remove(&svc_id), "xlb_maglev")?;
                    stats.deletes += 1;
                } else {
                    let mut value = abi::MaglevTable { slot: [0; abi::MAGLEV_MAX], pad: 0 };
                    value.slot[..table.len()].copy_from_slice(&table);
                    maps.maglev
                        .insert(svc_id, value, 0)
                        .map_err(MapsError::op("xlb_maglev", "insert"))?;
                    stats.table_writes += 1;
                }
                st.table = hash;
            }
            st.table_input = Some(input);
        }

        // 3. Source ranges that are new (before the flag that enforces them).
        let want_ranges: BTreeSet<Cidr> = svc.source_ranges.iter().copied().collect();
        for r in want_ranges.difference(&st.ranges.clone()) {
            maps.source_ranges
                .insert(&src_range_key(svc_id, r), 1, 0)
                .map_err(MapsError::op("xlb_source_ranges", "insert"))?;
            stats.settings_changed = true;
            st.ranges.insert(*r);
            stats.frontend_writes += 1;
        }

        // 4. The service value on every frontend; new frontends; gone frontends.
        let mut flags = 0;
        if svc.affinity.is_some() {
            flags |= abi::SVC_F_AFFINITY;
        }
        if !svc.source_ranges.is_empty() {
            flags |= abi::SVC_F_SOURCE_RANGES;
        }
        let value = abi::Service {
            id: svc_id,
            maglev_size: svc.maglev_size,
            flags,
            affinity_timeout_s: svc
                .affinity
                .map_or(0, |a| a.timeout.as_secs().min(u32::MAX as u64) as u32),
            backend_count: active_count as u16,
            encap: match svc.encap {
                Encap::Geneve => abi::ENCAP_GENEVE,
                Encap::Ipip => abi::ENCAP_IPIP,
            },
            pad: 0,
            pad2: 0,
        };
        let want_fe: HashSet<abi::FrontendKey> = svc.frontends.iter().map(frontend_key).collect();
        let value_changed = value != st.value;
        // The backend count only steers new flows: a change of it alone
        // (endpoint churn) leaves cached service settings valid.
        let settings_changed =
            abi::Service { backend_count: st.value.backend_count, ..value } != st.value;
        for (fe, kind) in svc.frontends.iter().map(|f| (frontend_key(f), f.kind)) {
            let new_fe = !st.frontends.contains(&fe);
            if value_changed || new_fe {
                let mut v = value;
                if kind == crate::model::FrontendKind::NodePort {
                    v.flags |= abi::SVC_F_NODEPORT;
                }
                maps.frontends
                    .insert(fe, v, 0)
                    .map_err(MapsError::op("xlb_frontends", "insert"))?;
                stats.settings_changed |= settings_changed || new_fe;
                st.frontends.insert(fe);
                stats.frontend_writes += 1;
            }
        }
        st.value = value;
        let gone_fe: Vec<abi::FrontendKey> = st.frontends.difference(&want_fe).copied().collect();
        for fe in gone_fe {
            remove_ok(maps.frontends.remove(&fe), "xlb_frontends")?;
            stats.settings_changed = true;
            st.frontends.remove(&fe);
            stats.deletes += 1;
        }
        let gone_ranges: Vec<Cidr> = st.ranges.difference(&want_ranges).copied().collect();
        for r in gone_ranges {
            remove_ok(maps.source_ranges.remove(&src_range_key(svc_id, &r)), "xlb_source_ranges")?;
            stats.settings_changed = true;
            st.ranges.remove(&r);
            stats.deletes += 1;
        }

        // 5. Backends no longer listed: no slot points at them any more.
        let want_be: HashSet<(IpAddr, u16)> =
            svc.backends.iter().map(|b| (b.addr, b.port)).collect();
        let gone_be: Vec<(IpAddr, u16)> =
            st.backends.keys().filter(|k| !want_be.contains(k)).copied().collect();
        for k in gone_be {
            let b = st.backends[&k].clone();
            free_backend(maps, svc_id, &b, *ncpus)?;
            tunnel_unref(tunnels, &b.value);
            st.backends.remove(&k);
            st.indices.release(b.index);
            backend_ids.release(b.id);
            stats.deletes += 2;
        }
        Ok(())
    }

    fn remove_service(
        &mut self,
        key: &ServiceKey,
        stats: &mut ApplyStats,
    ) -> Result<(), DatapathError> {
        let Datapath { maps, services, backend_ids, svc_ids, ncpus, tunnels, .. } = self;
        let st = services.get_mut(key).expect("listed");
        let svc_id = st.id;
        for fe in st.frontends.clone() {
            remove_ok(maps.frontends.remove(&fe), "xlb_frontends")?;
            stats.settings_changed = true;
            st.frontends.remove(&fe);
            stats.deletes += 1;
        }
        for r in st.ranges.clone() {
            remove_ok(maps.source_ranges.remove(&src_range_key(svc_id, &r)), "xlb_source_ranges")?;
            stats.settings_changed = true;
            st.ranges.remove(&r);
            stats.deletes += 1;
        }
        if st.table.is_some() {
            remove_ok(maps.maglev.remove(&svc_id), "xlb_maglev")?;
            st.table = None;
            stats.deletes += 1;
        }
        for (k, b) in st.backends.clone() {
            free_backend(maps, svc_id, &b, *ncpus)?;
            tunnel_unref(tunnels, &b.value);
            st.backends.remove(&k);
            backend_ids.release(b.id);
            stats.deletes += 2;
        }
        remove_ok(maps.svc_names.remove(&svc_id), "xlb_svc_names")?;
        let zero = abi::SvcStats { packets: 0, bytes: 0, new_flows: 0, affinity_hits: 0 };
        maps.svc_stats
            .set(svc_id, per_cpu(zero, *ncpus), 0)
            .map_err(MapsError::op("xlb_svc_stats", "set"))?;
        services.remove(key);
        svc_ids.release(svc_id);
        Ok(())
    }

    /// Moves whenever [`Datapath::tunnel_endpoints`] may have changed.
    pub fn tunnel_generation(&self) -> u64 {
        self.tunnels.gen
    }

    /// Every node address the datapath may tunnel to (this node's own
    /// addresses excluded: those backends are delivered locally).
    pub fn tunnel_endpoints(&self) -> BTreeSet<IpAddr> {
        let own: Vec<IpAddr> = self
            .node
            .iter()
            .flat_map(|n| {
                [
                    abi::addr_from_abi(
                        &{
                            let mut a = [0u8; 16];
                            a[..4].copy_from_slice(&n.addr4);
                            a
                        },
                        abi::FAMILY_V4,
                    ),
                    abi::addr_from_abi(&n.addr6, abi::FAMILY_V6),
                ]
            })
            .flatten()
            .collect();
        self.tunnels.refs.keys().filter(|a| !own.contains(a)).copied().collect()
    }

    /// What the datapath holds, read from the maps (not from memory).
    pub fn list(&self) -> Result<Vec<ServiceListing>, DatapathError> {
        Ok(read_listing(&self.maps)?)
    }

    /// The `xlb service list` text: every service, frontend and backend, read
    /// from the maps, in a stable order.
    pub fn dump(&self) -> Result<String, DatapathError> {
        Ok(render(&self.list()?))
    }
}

/// A service value with no backends and no options.
fn empty_service(id: u32, maglev_size: u32) -> abi::Service {
    abi::Service {
        id,
        maglev_size,
        flags: 0,
        affinity_timeout_s: 0,
        backend_count: 0,
        encap: 0,
        pad: 0,
        pad2: 0,
    }
}

/// One value per possible CPU (the length the kernel wants).
fn per_cpu<T: aya::Pod>(v: T, ncpus: usize) -> PerCpuValues<T> {
    PerCpuValues::try_from(vec![v; ncpus]).expect("ncpus is aya's possible-CPU count")
}

/// A removal that finds nothing to remove is fine (aya reports ENOENT of
/// the delete syscall as a SyscallError, not as KeyNotFound).
fn remove_ok(r: Result<(), aya::maps::MapError>, map: &'static str) -> Result<(), DatapathError> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(e) => Err(MapsError::op(map, "remove")(e).into()),
    }
}

/// Frees a backend's slot: its service index, its entry (flags 0) and its
/// statistics (zeroed here, so a new owner of the id starts at zero).
fn free_backend(
    maps: &mut Maps,
    svc_id: u32,
    b: &BackendState_,
    ncpus: usize,
) -> Result<(), DatapathError> {
    remove_ok(
        maps.svc_backends.remove(&abi::SvcBackendKey { svc_id, index: b.index }),
        "xlb_svc_backends",
    )?;
    // flags 0 frees the slot; the generation stays so the next owner of the
    // id gets a different one and stale connection entries are ignored.
    let freed = abi::Backend { flags: 0, ..b.value };
    maps.backends.set(b.id, freed, 0).map_err(MapsError::op("xlb_backends", "set"))?;
    maps.backend_stats
        .set(b.id, per_cpu(abi::Count { packets: 0, bytes: 0 }, ncpus), 0)
        .map_err(MapsError::op("xlb_backend_stats", "set"))?;
    Ok(())
}

struct SocketFmt(IpAddr, u16);

impl std::fmt::Display for SocketFmt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.1),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.1),
        }
    }
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
    /// Maglev slots pointing at this backend.
    pub slots: usize,
    pub packets: u64,
    pub bytes: u64,
}

/// One frontend as the maps hold it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct FrontendListing {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: String,
    pub nodeport: bool,
}

/// One service as the maps hold it.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceListing {
    pub id: u32,
    pub name: String,
    pub maglev_size: u32,
    pub encap: &'static str,
    pub affinity_timeout_s: Option<u32>,
    pub source_ranges: Vec<String>,
    pub active_backends: u16,
    pub frontends: Vec<FrontendListing>,
    pub backends: Vec<BackendListing>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub affinity_hits: u64,
}

struct RawBackend {
    id: u32,
    index: u32,
    value: abi::Backend,
}

struct RawService {
    id: u32,
    name: Option<ServiceKey>,
    value: abi::Service,
    frontends: Vec<abi::FrontendKey>,
    backends: Vec<RawBackend>,
    /// Hash of the Maglev table (None: no table).
    table: Option<u64>,
    /// Maglev slots per service-local backend index (only for listings).
    slots: HashMap<u16, usize>,
    ranges: Vec<Cidr>,
}

/// Reads every service from the maps; with `count_slots`, how many Maglev
/// slots each backend holds too.
fn read_raw(maps: &Maps, count_slots: bool) -> Result<Vec<RawService>, MapsError> {
    let mut by_id: BTreeMap<u32, RawService> = BTreeMap::new();
    let blank = |id| RawService {
        id,
        name: None,
        value: empty_service(id, 0),
        frontends: Vec::new(),
        backends: Vec::new(),
        table: None,
        slots: HashMap::new(),
        ranges: Vec::new(),
    };
    for item in maps.svc_names.iter() {
        let (id, n) = item.map_err(MapsError::op("xlb_svc_names", "iter"))?;
        let end = n.name.iter().position(|&c| c == 0).unwrap_or(n.name.len());
        let name = String::from_utf8_lossy(&n.name[..end]).into_owned();
        by_id.entry(id).or_insert_with(|| blank(id)).name = Some(ServiceKey(name));
    }
    for item in maps.frontends.iter() {
        let (k, v) = item.map_err(MapsError::op("xlb_frontends", "iter"))?;
        let s = by_id.entry(v.id).or_insert_with(|| blank(v.id));
        s.value = abi::Service { flags: v.flags & !abi::SVC_F_NODEPORT, ..v };
        s.frontends.push(k);
    }
    for item in maps.svc_backends.iter() {
        let (k, be_id) = item.map_err(MapsError::op("xlb_svc_backends", "iter"))?;
        let value = maps.backends.get(&be_id, 0).map_err(MapsError::op("xlb_backends", "get"))?;
        by_id.entry(k.svc_id).or_insert_with(|| blank(k.svc_id)).backends.push(RawBackend {
            id: be_id,
            index: k.index,
            value,
        });
    }
    for item in maps.source_ranges.keys() {
        let k = item.map_err(MapsError::op("xlb_source_ranges", "keys"))?;
        let d = k.data();
        if let Some(addr) = abi::addr_from_abi(&d.addr, d.family) {
            let len = (k.prefix_len().saturating_sub(64)) as u8;
            by_id
                .entry(u32::from_be(d.svc_id))
                .or_insert_with(|| blank(u32::from_be(d.svc_id)))
                .ranges
                .push(Cidr { addr, len });
        }
    }
    let ids: Vec<u32> = by_id.keys().copied().collect();
    for id in ids {
        let s = by_id.get_mut(&id).expect("listed");
        if let Ok(t) = maps.maglev.get(&id, 0) {
            let m = (s.value.maglev_size as usize).min(abi::MAGLEV_MAX);
            s.table = table_hash(&t.slot[..m]);
            if count_slots {
                for &i in &t.slot[..m] {
                    *s.slots.entry(i).or_default() += 1;
                }
            }
        }
    }
    Ok(by_id.into_values().collect())
}

/// The applied state, read from the maps.
fn restore(maps: &Maps) -> Result<Restored, MapsError> {
    let backend_cap = maps.backends.len();
    let svc_cap = maps.svc_stats.len();
    let now_gen = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs() as u32);
    let mut next_gen = now_gen;
    let mut svc_used = BTreeSet::new();
    let mut be_used = BTreeSet::new();
    let mut services = BTreeMap::new();
    let mut tunnels = Tunnels::default();
    for s in read_raw(maps, false)? {
        svc_used.insert(s.id);
        let mut used_idx = BTreeSet::new();
        let mut backends = HashMap::new();
        for b in s.backends {
            be_used.insert(b.id);
            used_idx.insert(b.index);
            next_gen = next_gen.max(b.value.gen.wrapping_add(1));
            tunnel_ref(&mut tunnels, &b.value);
            let addr = abi::addr_from_abi(&b.value.addr, b.value.family)
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
            let port = u16::from_be(b.value.port);
            backends.insert(
                (addr, port),
                BackendState_ {
                    id: b.id,
                    gen: b.value.gen,
                    index: b.index,
                    name: format!("{}", SocketFmt(addr, port)),
                    weight: 1,
                    value: b.value,
                },
            );
        }
        let key = s.name.clone().unwrap_or_else(|| ServiceKey(format!("(unnamed)/{}", s.id)));
        services.insert(
            key,
            SvcState {
                id: s.id,
                value: s.value,
                frontends: s.frontends.into_iter().collect(),
                backends,
                table: s.table,
                ranges: s.ranges.into_iter().collect(),
                indices: IdPool::new(0, u16::MAX as u32, &used_idx),
                table_input: None,
            },
        );
    }
    let node = maps.node.get(&0, 0).ok().filter(|n| n.geneve_port != 0);
    Ok(Restored {
        services,
        svc_ids: IdPool::new(0, svc_cap, &svc_used),
        backend_ids: IdPool::new(1, backend_cap, &be_used),
        next_gen,
        node,
        tunnels,
    })
}

/// Every service as the maps hold it, with its counters.
fn read_listing(maps: &Maps) -> Result<Vec<ServiceListing>, MapsError> {
    let by_id = read_raw(maps, true)?;

    let mut services = Vec::new();
    for s in &by_id {
        let stats = maps.svc_stats_sum(s.id)?;
        let slot_counts = &s.slots;
        let mut frontends: Vec<FrontendListing> = s
            .frontends
            .iter()
            .filter_map(|k| {
                Some(FrontendListing {
                    addr: abi::addr_from_abi(&k.addr, k.family)?,
                    port: u16::from_be(k.port),
                    proto: Proto::from_number(k.proto)
                        .map_or(format!("proto-{}", k.proto), |p| p.to_string()),
                    nodeport: maps
                        .frontends
                        .get(k, 0)
                        .is_ok_and(|v| v.flags & abi::SVC_F_NODEPORT != 0),
                })
            })
            .collect();
        frontends.sort();
        let mut backends = Vec::new();
        for b in &s.backends {
            let st = maps.backend_stats_sum(b.id)?;
            backends.push(BackendListing {
                id: b.id,
                index: b.index,
                addr: abi::addr_from_abi(&b.value.addr, b.value.family)
                    .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
                port: u16::from_be(b.value.port),
                node: abi::addr_from_abi(&b.value.node, b.value.node_family),
                terminating: b.value.flags & abi::BE_F_TERMINATING != 0,
                slots: slot_counts.get(&(b.index as u16)).copied().unwrap_or(0),
                packets: st.packets,
                bytes: st.bytes,
            });
        }
        backends.sort_by_key(|b| (b.addr, b.port));
        let mut ranges: Vec<String> = s.ranges.iter().map(|c| c.to_string()).collect();
        ranges.sort();
        services.push(ServiceListing {
            id: s.id,
            name: s.name.as_ref().map_or_else(|| format!("(unnamed)/{}", s.id), |n| n.0.clone()),
            maglev_size: s.value.maglev_size,
            encap: if s.value.encap == abi::ENCAP_IPIP { "ipip" } else { "geneve" },
            affinity_timeout_s: (s.value.flags & abi::SVC_F_AFFINITY != 0)
                .then_some(s.value.affinity_timeout_s),
            source_ranges: ranges,
            active_backends: s.value.backend_count,
            frontends,
            backends,
            packets: stats.packets,
            bytes: stats.bytes,
            new_flows: stats.new_flows,
            affinity_hits: stats.affinity_hits,
        });
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(services)
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
        out.push('\n');
        for f in &s.frontends {
            let _ = writeln!(
                out,
                "  frontend {}/{}{}",
                SocketFmt(f.addr, f.port),
                f.proto,
                if f.nodeport { " nodeport" } else { "" }
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
