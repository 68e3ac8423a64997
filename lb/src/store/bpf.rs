//! [`MapStore`] on the pinned BPF maps of one node ([`Maps`]): each write is
//! one map syscall (two for the configuration generation's read-modify-write).
use std::{
    ops::ControlFlow,
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::maps::{MapError, PerCpuValues};

use super::{
    decode_name, encode_name, BackendMeta, Capacity, CtGuardTotals, MapStore, SnatTotals,
    SockTraffic, StoreError, SvcTraffic, TableSink, Traffic, Write,
};
use crate::{
    abi,
    maps::{
        cidr_key, cidr_of, ne_u32, pod_bytes, policy_exact_key, policy_exact_key_of, policy_key,
        policy_key_of, src_range_key, Maps, MapsError, RawMap,
    },
    model::Cidr,
};

/// The pinned maps under one directory.
#[derive(Debug)]
pub struct BpfStore {
    maps: Maps,
    pin_dir: PathBuf,
    ncpus: usize,
    /// xlb_backends, xlb_svc_backends and xlb_svc_backend_ids as raw maps,
    /// for batched writes and reads ([`MapStore::write_all`],
    /// [`MapStore::backend_gens`]); None: one syscall per entry.
    batch: Option<[RawMap; 3]>,
    /// The Maglev maps again, for tables written from the reconciler's
    /// builder threads ([`MapStore::table_sink`]); None: through `write`.
    tables: Option<Arc<Tables>>,
    /// xlb_backends was created empty by this agent and no id at or above
    /// this one was written through this store since: their generations
    /// are 0 without a read ([`BpfStore::backends_created_empty`]). None:
    /// generations are read.
    unwritten_from: Option<u32>,
}

/// The size-class maps and xlb_maglev, shared with builder threads (a
/// table write is a kernel allocation of the whole value, ~20 µs at 4 KiB:
/// a cold start's 30k tables are written beside the backend writes).
#[derive(Debug)]
struct Tables {
    classes: Vec<RawMap>,
    max: RawMap,
}

impl Tables {
    fn open(pin_dir: &Path) -> Result<Tables, MapsError> {
        let classes = abi::MAGLEV_CLASSES
            .iter()
            .map(|&c| RawMap::open(pin_dir, abi::maglev_map(c)))
            .collect::<Result<_, _>>()?;
        Ok(Tables { classes, max: RawMap::open(pin_dir, "xlb_maglev")? })
    }
}

impl TableSink for Tables {
    fn write_table(&self, svc_id: u32, slots: &[u16]) -> Result<(), StoreError> {
        let map = class_index(slots.len()).map_or(&self.max, |i| &self.classes[i]);
        put_table(map, svc_id, slots)
    }
}

/// Writes `slots` as the table of `svc_id` in `map` (the value's tail
/// beyond them zero).
fn put_table(map: &RawMap, svc_id: u32, slots: &[u16]) -> Result<(), StoreError> {
    let mut value = vec![0u8; map.value_size()];
    for (b, s) in value.chunks_exact_mut(2).zip(slots) {
        b.copy_from_slice(&s.to_ne_bytes());
    }
    map.update(&svc_id.to_ne_bytes(), &value).map_err(op(map.name(), "update"))
}

/// Entries per BPF_MAP_UPDATE_BATCH (~400 KiB of xlb_backends values).
const BATCH: usize = 8192;

/// Ids below which [`MapStore::backend_gens`] reads entry by entry (a
/// batched read walks the span from the lowest to the highest id; also
/// entry by entry when that span holds more than 8 entries per id wanted).
const GENS_WALK_MIN: usize = 4096;

impl BpfStore {
    /// Opens every map pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<BpfStore, StoreError> {
        let mut maps = Maps::open(pin_dir)?;
        // The agent's loader creates xlb_svc_backend_ids: required here
        // (Maps alone also opens the pins of an agent from before it).
        if maps.svc_backend_ids.is_none() {
            maps.svc_backend_ids = Some(RawMap::open(pin_dir, "xlb_svc_backend_ids")?);
        }
        let ncpus = aya::util::nr_cpus().map_or(1, |n| n);
        let batch = Some([
            RawMap::open(pin_dir, "xlb_backends")?,
            RawMap::open(pin_dir, "xlb_svc_backends")?,
            RawMap::open(pin_dir, "xlb_svc_backend_ids")?,
        ]);
        let tables = Some(Arc::new(Tables::open(pin_dir)?));
        Ok(BpfStore {
            maps,
            pin_dir: pin_dir.to_path_buf(),
            ncpus,
            batch,
            tables,
            unwritten_from: None,
        })
    }

    /// One syscall per write and read from now on, and every table written
    /// in order by `write`, as before batching and the builders' writes (the
    /// test that those leave the same maps compares the two).
    pub fn per_element(&mut self) {
        self.batch = None;
        self.tables = None;
    }

    /// The loader created xlb_backends empty for this agent (no map was
    /// pinned before it; nothing else writes it): a backend id not written
    /// through this store since has generation 0, so
    /// [`MapStore::backend_gens`] answers for ids above every one written
    /// without reading them (a cold start's 300k new backends: a walk of
    /// the whole array, ~2.5 % of the agent's CPU, read nothing but zeros).
    /// Must be called before the first write through this store.
    pub fn backends_created_empty(&mut self) {
        self.unwritten_from = Some(0);
    }

    /// Backend `id` is about to be written: ids up to it may hold a
    /// generation from now on.
    fn note_backend(&mut self, id: u32) {
        if let Some(from) = &mut self.unwritten_from {
            *from = (*from).max(id.saturating_add(1));
        }
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The typed map handles (for tests that inspect or damage entries).
    pub fn maps(&self) -> &Maps {
        &self.maps
    }
}

/// The class map of tables of `size` slots; None: xlb_maglev.
fn maglev_class(maps: &Maps, size: usize) -> Option<&RawMap> {
    maps.maglev_classes.get(class_index(size)?)
}

/// The index in [`abi::MAGLEV_CLASSES`] of the size-class map of a table of
/// `size` slots; None: xlb_maglev (above every class).
fn class_index(size: usize) -> Option<usize> {
    let class = abi::maglev_class(size);
    abi::MAGLEV_CLASSES.iter().position(|&c| c == class)
}

/// The first `size` slots of a table value (native-endian u16s).
fn slots_of(value: &[u8], size: usize) -> Vec<u16> {
    let mut out: Vec<u16> =
        value.chunks_exact(2).take(size).map(|c| u16::from_ne_bytes([c[0], c[1]])).collect();
    out.resize(size, 0);
    out
}

fn op(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> StoreError {
    move |e| StoreError::Maps(MapsError::op(map, op)(e))
}

/// A batched read of `map` that failed ([`RawMap::walk_array`]).
fn batch_read(map: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    move |io_error| {
        op(map, "lookup")(MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_lookup_batch",
            io_error,
        }))
    }
}

/// A removal that finds nothing to remove is fine (aya reports ENOENT of the
/// delete syscall as a SyscallError, not as KeyNotFound).
fn removed(r: Result<(), MapError>, map: &'static str) -> Result<(), StoreError> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(op(map, "delete")(e)),
    }
}

/// A lookup that finds nothing is None.
fn found<T>(r: Result<T, MapError>, map: &'static str) -> Result<Option<T>, StoreError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(None)
        }
        Err(e) => Err(op(map, "lookup")(e)),
    }
}

fn per_cpu<T: aya::Pod>(v: T, ncpus: usize) -> PerCpuValues<T> {
    PerCpuValues::try_from(vec![v; ncpus]).expect("ncpus is aya's possible-CPU count")
}

/// A run of `writes` from `start` that one batch can do: its map (the
/// index in [`BpfStore::batch`]), and how many writes (those of the same
/// kind as the first, up to [`BATCH`]).
fn batch_run(writes: &[Write<'_>], start: usize) -> (Option<usize>, usize) {
    let kind = |w: &Write<'_>| match w {
        Write::Backend { .. } => Some(0),
        Write::SvcBackend { .. } => Some(1),
        Write::SvcBackendIds { .. } => Some(2),
        _ => None,
    };
    let first = kind(&writes[start]);
    let n = writes[start..].iter().take(BATCH).take_while(|w| kind(w) == first).count();
    (first, n)
}

impl MapStore for BpfStore {
    fn capacity(&self) -> Capacity {
        Capacity { services: self.maps.svc_stats.len(), backends: self.maps.backends.len() }
    }

    fn svc_names(&self) -> Result<Vec<(u32, String)>, StoreError> {
        self.maps
            .svc_names
            .iter()
            .map(|item| {
                let (id, n) = item.map_err(op("xlb_svc_names", "iterate"))?;
                Ok((id, decode_name(&n.name)))
            })
            .collect()
    }

    fn frontends(&self) -> Result<Vec<(abi::FrontendKey, abi::Service)>, StoreError> {
        self.maps.frontends.iter().map(|i| i.map_err(op("xlb_frontends", "iterate"))).collect()
    }

    fn sock_frontends(&self) -> Result<Vec<(abi::FrontendKey, abi::Service)>, StoreError> {
        self.maps
            .sock_frontends
            .iter()
            .map(|i| i.map_err(op("xlb_sock_frontends", "iterate")))
            .collect()
    }

    fn svc_backends_hash(&self) -> Result<Vec<(abi::SvcBackendKey, u32)>, StoreError> {
        // Batched: a restore at 300k backends reads the whole hash (one
        // lookup and one next-key syscall per entry took ~1 s of it).
        let Some(batch) = &self.batch else { return Ok(self.maps.svc_backends_all()?) };
        let mut out = Vec::new();
        batch[1]
            .walk(&mut |k, v| {
                let key = abi::SvcBackendKey { svc_id: ne_u32(k), index: ne_u32(&k[4..]) };
                out.push((key, ne_u32(v)));
                ControlFlow::Continue(())
            })
            .map_err(batch_read("xlb_svc_backends"))?;
        Ok(out)
    }

    fn svc_ids_all(&self) -> Result<Vec<(u32, abi::SvcBackendIds)>, StoreError> {
        Ok(self.maps.svc_ids_all()?)
    }

    fn backend(&self, id: u32) -> Result<abi::Backend, StoreError> {
        self.maps.backends.get(&id, 0).map_err(op("xlb_backends", "lookup"))
    }

    fn backend_meta(&self, id: u32) -> Result<Option<BackendMeta>, StoreError> {
        let m = found(self.maps.backend_meta.get(&id, 0), "xlb_backend_meta")?;
        Ok(m.map(|m| BackendMeta { name: decode_name(&m.name).into(), weight: m.weight }))
    }

    fn maglev(&self, svc_id: u32, size: usize) -> Result<Option<Vec<u16>>, StoreError> {
        if size == 0 {
            for &class in &abi::MAGLEV_CLASSES {
                if let Some(t) = self.maglev(svc_id, class)? {
                    return Ok(Some(t));
                }
            }
            return self.maglev(svc_id, abi::MAGLEV_MAX);
        }
        let size = size.min(abi::MAGLEV_MAX);
        if let Some(m) = maglev_class(&self.maps, size) {
            let mut value = vec![0u8; m.value_size()];
            if m.lookup(&svc_id.to_ne_bytes(), &mut value).map_err(op(m.name(), "lookup"))? {
                return Ok(Some(slots_of(&value, abi::maglev_class(size))));
            }
        }
        let t = found(self.maps.maglev.get(&svc_id, 0), "xlb_maglev")?;
        Ok(t.map(|t| t.slot.to_vec()))
    }

    fn source_ranges(&self) -> Result<Vec<(u32, Cidr)>, StoreError> {
        let mut out = Vec::new();
        for item in self.maps.source_ranges.keys() {
            let k = item.map_err(op("xlb_source_ranges", "iterate"))?;
            let d = k.data();
            if let Some(addr) = abi::addr_from_abi(&d.addr, d.family) {
                // The prefix covers the service id (32 bits), the family and
                // padding (32 bits), then the address.
                let len = k.prefix_len().saturating_sub(64) as u8;
                out.push((u32::from_be(d.svc_id), Cidr { addr, len }));
            }
        }
        Ok(out)
    }

    fn node(&self) -> Result<abi::NodeCfg, StoreError> {
        self.maps.node.get(&0, 0).map_err(op("xlb_node", "lookup"))
    }

    fn svc_stats(&self, svc_id: u32) -> Result<SvcTraffic, StoreError> {
        let v = self.maps.svc_stats.get(&svc_id, 0).map_err(op("xlb_svc_stats", "lookup"))?;
        Ok(v.iter().fold(SvcTraffic::default(), |a, s| SvcTraffic {
            packets: a.packets + s.packets,
            bytes: a.bytes + s.bytes,
            new_flows: a.new_flows + s.new_flows,
            affinity_hits: a.affinity_hits + s.affinity_hits,
        }))
    }

    fn sock_stats(&self, svc_id: u32) -> Result<SockTraffic, StoreError> {
        let v = self.maps.sock_stats.get(&svc_id, 0).map_err(op("xlb_sock_stats", "lookup"))?;
        Ok(v.iter().fold(SockTraffic::default(), |a, s| SockTraffic {
            connect: a.connect + s.connect,
            sendmsg: a.sendmsg + s.sendmsg,
            revnat: a.revnat + s.revnat,
            refused: a.refused + s.refused,
            affinity_hits: a.affinity_hits + s.affinity_hits,
        }))
    }

    fn backend_stats(&self, id: u32) -> Result<Traffic, StoreError> {
        let v = self.maps.backend_stats.get(id).map_err(op("xlb_backend_stats", "lookup"))?;
        Ok(v.iter().fold(Traffic::default(), |a, s| Traffic {
            packets: a.packets + s.packets,
            bytes: a.bytes + s.bytes,
        }))
    }

    fn connections(
        &self,
        visit: &mut dyn FnMut(&abi::FlowKey, &abi::CtEntry) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.maps.ct.walk(&mut |w| visit(&w.key, &w.e)).map_err(op("xlb_ct", "walk"))
    }

    fn endpoints(&self) -> Result<Vec<(std::net::IpAddr, abi::Endpoint)>, StoreError> {
        let mut out = Vec::new();
        for item in self.maps.endpoints.iter() {
            let (k, v) = item.map_err(op("xlb_endpoints", "iterate"))?;
            if let Some(a) = abi::addr_from_abi(&k.addr, k.family) {
                out.push((a, v));
            }
        }
        Ok(out)
    }

    fn tunnel_peers(&self) -> Result<Vec<(std::net::IpAddr, u32)>, StoreError> {
        let mut out = Vec::new();
        for item in self.maps.tunnel_peers.iter() {
            let (k, v) = item.map_err(op("xlb_tunnel_peers", "iterate"))?;
            if let Some(a) = abi::addr_from_abi(&k.addr, k.family) {
                out.push((a, v));
            }
        }
        Ok(out)
    }

    fn pod_routes(&self) -> Result<Vec<(Cidr, abi::Route)>, StoreError> {
        let mut out = Vec::new();
        for item in self.maps.pod_routes.iter() {
            let (k, v) = item.map_err(op("xlb_pod_routes", "iterate"))?;
            if let Some(c) = cidr_of(&k) {
                out.push((c, v));
            }
        }
        Ok(out)
    }

    fn nonmasq(&self) -> Result<Vec<Cidr>, StoreError> {
        let mut out = Vec::new();
        for item in self.maps.nonmasq.keys() {
            let k = item.map_err(op("xlb_nonmasq", "iterate"))?;
            out.extend(cidr_of(&k));
        }
        Ok(out)
    }

    fn podnet(&self) -> Result<abi::PodnetCfg, StoreError> {
        self.maps.podnet.get(&0, 0).map_err(op("xlb_podnet", "lookup"))
    }

    fn snat_stats(&self) -> Result<SnatTotals, StoreError> {
        let v = self.maps.snat_stats.get(&0, 0).map_err(op("xlb_snat_stats", "lookup"))?;
        Ok(v.iter().fold(SnatTotals::default(), |a, s| SnatTotals {
            allocated: a.allocated + s.allocated,
            collisions: a.collisions + s.collisions,
            exhausted: a.exhausted + s.exhausted,
            reclaimed: a.reclaimed + s.reclaimed,
        }))
    }

    fn fe_filter(&self) -> Result<Vec<u64>, StoreError> {
        // 16k words read at every start: in a few batched syscalls, not one each.
        let mut words = vec![0u64; abi::FE_FILTER_ARMED as usize + 1];
        RawMap::open(&self.pin_dir, "xlb_fe_filter")?
            .walk_array(0, &mut |k, v| {
                let i = ne_u32(k) as usize;
                if let (Some(w), Ok(v)) = (words.get_mut(i), v.try_into()) {
                    *w = u64::from_ne_bytes(v);
                }
                ControlFlow::Continue(())
            })
            .map_err(batch_read("xlb_fe_filter"))?;
        Ok(words)
    }

    fn ct_guard(&self) -> Result<CtGuardTotals, StoreError> {
        let v = self.maps.ct_guard.get(&0, 0).map_err(op("xlb_ct_guard", "lookup"))?;
        Ok(v.iter().fold(CtGuardTotals::default(), |a, g| CtGuardTotals {
            inserted: a.inserted + g.inserted,
            skipped: a.skipped + g.skipped,
        }))
    }

    fn policy_eps(&self) -> Result<Vec<(u32, u32)>, StoreError> {
        let mut out = Vec::new();
        for item in self.maps.policy_ep.iter() {
            let (k, v) = item.map_err(op("xlb_policy_ep", "iterate"))?;
            out.push((k, v.flags));
        }
        Ok(out)
    }

    fn policies(&self) -> Result<Vec<(crate::policy::EntryKey, u32)>, StoreError> {
        let mut out = Vec::new();
        for item in self.maps.policy.iter() {
            let (k, v) = item.map_err(op("xlb_policy", "iterate"))?;
            out.push((policy_key_of(&k), v.policy));
        }
        for item in self.maps.policy_exact.iter() {
            let (k, v) = item.map_err(op("xlb_policy_exact", "iterate"))?;
            out.push((policy_exact_key_of(&k), v.policy));
        }
        Ok(out)
    }

    fn addr_identities(&self) -> Result<Vec<(Cidr, abi::AddrIdentity)>, StoreError> {
        let mut out = Vec::new();
        for item in self.maps.ip_identity.iter() {
            let (k, v) = item.map_err(op("xlb_ip_identity", "iterate"))?;
            if let Some(c) = cidr_of(&k) {
                out.push((c, v));
            }
        }
        Ok(out)
    }

    fn write_all(&mut self, writes: &[Write<'_>]) -> Result<(), (usize, StoreError)> {
        let mut i = 0;
        while i < writes.len() {
            let (kind, n) = batch_run(writes, i);
            if kind == Some(0) {
                for w in &writes[i..i + n] {
                    if let Write::Backend { id, .. } = w {
                        self.note_backend(*id);
                    }
                }
            }
            let (Some(kind), Some(maps)) = (kind, &self.batch) else {
                self.write(writes[i]).map_err(|e| (i, e))?;
                i += 1;
                continue;
            };
            if n < 2 {
                self.write(writes[i]).map_err(|e| (i, e))?;
                i += 1;
                continue;
            }
            let (mut keys, mut values) = (Vec::new(), Vec::new());
            for w in &writes[i..i + n] {
                match w {
                    Write::Backend { id, value } => {
                        keys.extend_from_slice(&id.to_ne_bytes());
                        values.extend_from_slice(pod_bytes(value));
                    }
                    Write::SvcBackend { key, backend_id } => {
                        keys.extend_from_slice(pod_bytes(key));
                        values.extend_from_slice(&backend_id.to_ne_bytes());
                    }
                    Write::SvcBackendIds { svc_id, ids } => {
                        keys.extend_from_slice(&svc_id.to_ne_bytes());
                        values.extend_from_slice(pod_bytes(ids));
                    }
                    _ => unreachable!("batch_run takes one kind"),
                }
            }
            let map = &maps[kind];
            map.update_batch(&keys, &values)
                .map_err(|(done, e)| (i + done, op(map.name(), "update")(e)))?;
            i += n;
        }
        Ok(())
    }

    fn table_sink(&self) -> Option<Arc<dyn TableSink>> {
        self.tables.clone().map(|t| t as Arc<dyn TableSink>)
    }

    fn backend_gens(&self, ids: &[u32]) -> Result<Vec<u32>, StoreError> {
        let len = self.maps.backends.len();
        if let Some(from) = self.unwritten_from {
            if ids.iter().all(|&id| id >= from && id < len) {
                return Ok(vec![0; ids.len()]);
            }
        }
        let span = match (ids.iter().min(), ids.iter().max()) {
            (Some(&lo), Some(&hi)) => (hi - lo) as usize + 1,
            _ => 0,
        };
        let walk = ids.len() >= GENS_WALK_MIN && span <= 8 * ids.len();
        let Some([backends, ..]) = self.batch.as_ref().filter(|_| walk) else {
            return ids.iter().map(|&id| self.backend(id).map(|b| b.gen)).collect();
        };
        let mut wanted: Vec<(u32, usize)> = ids.iter().copied().zip(0..).collect();
        wanted.sort_unstable();
        let mut gens: Vec<Option<u32>> = vec![None; ids.len()];
        let at = std::mem::offset_of!(abi::Backend, gen);
        // The ids taken together are mostly consecutive (a cold start's):
        // only the span from the lowest to the highest is read.
        let (lo, hi) = (wanted[0].0, wanted[wanted.len() - 1].0);
        backends
            .walk_array(lo, &mut |k, v| {
                let id = ne_u32(k);
                if id > hi {
                    return ControlFlow::Break(());
                }
                let gen = ne_u32(&v[at..]);
                let from = wanted.partition_point(|&(w, _)| w < id);
                for &(_, pos) in wanted[from..].iter().take_while(|&&(w, _)| w == id) {
                    gens[pos] = Some(gen);
                }
                ControlFlow::Continue(())
            })
            .map_err(batch_read("xlb_backends"))?;
        // An id the walk did not meet (outside the array): read alone, for
        // its error.
        ids.iter()
            .zip(gens)
            .map(|(&id, g)| g.map_or_else(|| Ok(self.backend(id)?.gen), Ok))
            .collect()
    }

    fn write(&mut self, w: Write<'_>) -> Result<(), StoreError> {
        if let Write::Backend { id, .. } = w {
            self.note_backend(id);
        }
        let m = &mut self.maps;
        let map = w.target().map();
        let up = |e| op(map, "update")(e);
        match w {
            Write::SvcName { svc_id, name } => {
                let name = encode_name(name).ok_or(StoreError::NameTooLong {
                    map,
                    op: "update",
                    len: name.len(),
                    max: 128,
                })?;
                m.svc_names.insert(svc_id, abi::SvcName { name }, 0).map_err(up)
            }
            Write::SvcNameDelete { svc_id } => removed(m.svc_names.remove(&svc_id), map),
            Write::SvcStatsZero { svc_id } => {
                let zero = abi::SvcStats { packets: 0, bytes: 0, new_flows: 0, affinity_hits: 0 };
                m.svc_stats.set(svc_id, per_cpu(zero, self.ncpus), 0).map_err(up)?;
                let zero = abi::SockStats {
                    connect: 0,
                    sendmsg: 0,
                    revnat: 0,
                    refused: 0,
                    affinity_hits: 0,
                };
                m.sock_stats
                    .set(svc_id, per_cpu(zero, self.ncpus), 0)
                    .map_err(op("xlb_sock_stats", "update"))
            }
            Write::Frontend { key, value } => m.frontends.insert(key, value, 0).map_err(up),
            Write::FrontendDelete { key } => removed(m.frontends.remove(&key), map),
            Write::SockFrontend { key, value } => {
                m.sock_frontends.insert(key, value, 0).map_err(up)
            }
            Write::SockFrontendDelete { key } => removed(m.sock_frontends.remove(&key), map),
            Write::SourceRange { svc_id, cidr } => {
                m.source_ranges.insert(&src_range_key(svc_id, &cidr), 1, 0).map_err(up)
            }
            Write::SourceRangeDelete { svc_id, cidr } => {
                removed(m.source_ranges.remove(&src_range_key(svc_id, &cidr)), map)
            }
            Write::Maglev { svc_id, slots } => {
                if let Some(c) = maglev_class(m, slots.len()) {
                    return put_table(c, svc_id, slots);
                }
                let mut value = Box::new(abi::MaglevTable { slot: [0; abi::MAGLEV_MAX], pad: 0 });
                let n = slots.len().min(abi::MAGLEV_MAX);
                value.slot[..n].copy_from_slice(&slots[..n]);
                m.maglev.insert(svc_id, value.as_ref(), 0).map_err(up)
            }
            Write::MaglevDelete { svc_id, size } => {
                if let Some(c) = maglev_class(m, size) {
                    c.delete(&svc_id.to_ne_bytes()).map_err(op(map, "delete"))?;
                }
                // A table from before the classes may still be there.
                removed(m.maglev.remove(&svc_id), "xlb_maglev")
            }
            Write::Backend { id, value } => m.backends.set(id, value, 0).map_err(up),
            Write::BackendStatsZero { id } => m.backend_stats.zero(id).map_err(up),
            Write::BackendMeta { id, name, weight } => {
                let name = encode_name(name).ok_or(StoreError::NameTooLong {
                    map,
                    op: "update",
                    len: name.len(),
                    max: abi::BACKEND_NAME_MAX,
                })?;
                m.backend_meta.insert(id, abi::BackendMeta { weight, name }, 0).map_err(up)
            }
            Write::BackendMetaDelete { id } => removed(m.backend_meta.remove(&id), map),
            Write::SvcBackendIds { svc_id, ids } => {
                let map_ids = m.svc_backend_ids.as_ref().expect("BpfStore::open opens it");
                map_ids.update(&svc_id.to_ne_bytes(), pod_bytes(&ids)).map_err(up)
            }
            Write::SvcBackend { key, backend_id } => {
                m.svc_backends.insert(key, backend_id, 0).map_err(up)
            }
            Write::SvcBackendDelete { key } => removed(m.svc_backends.remove(&key), map),
            Write::Node { cfg } => m.node.set(0, cfg, 0).map_err(up),
            Write::FeFilter { index, bits } => m.fe_filter.set(index, bits, 0).map_err(up),
            Write::ConfigGenBump => {
                let cur = m.config_gen.get(&0, 0).map_err(op(map, "lookup"))?;
                m.config_gen.set(0, abi::ConfigGen { gen: cur.gen.wrapping_add(1) }, 0).map_err(up)
            }
            Write::Endpoint { addr, value } => {
                m.endpoints.insert(abi::addr_key(addr), value, 0).map_err(up)
            }
            Write::EndpointDelete { addr } => {
                removed(m.endpoints.remove(&abi::addr_key(addr)), map)
            }
            Write::TunnelPeer { addr, flags } => {
                m.tunnel_peers.insert(abi::addr_key(addr), flags, 0).map_err(up)
            }
            Write::TunnelPeerDelete { addr } => {
                removed(m.tunnel_peers.remove(&abi::addr_key(addr)), map)
            }
            Write::PodRoute { cidr, value } => {
                m.pod_routes.insert(&cidr_key(&cidr), value, 0).map_err(up)
            }
            Write::PodRouteDelete { cidr } => removed(m.pod_routes.remove(&cidr_key(&cidr)), map),
            Write::NonMasq { cidr } => m.nonmasq.insert(&cidr_key(&cidr), 1, 0).map_err(up),
            Write::NonMasqDelete { cidr } => removed(m.nonmasq.remove(&cidr_key(&cidr)), map),
            Write::Podnet { cfg } => m.podnet.set(0, cfg, 0).map_err(up),
            Write::PolicyEp { ifindex, flags } => {
                m.policy_ep.insert(ifindex, abi::PolicyEp { flags, pad: 0 }, 0).map_err(up)
            }
            Write::PolicyEpDelete { ifindex } => removed(m.policy_ep.remove(&ifindex), map),
            // Single ports in the hash, the rest in the trie.
            Write::Policy { key, policy } if key.bits == abi::POLICY_KEY_BITS => m
                .policy_exact
                .insert(policy_exact_key(&key), abi::PolicyEntry { policy, pad: 0 }, 0)
                .map_err(up),
            Write::Policy { key, policy } => m
                .policy
                .insert(&policy_key(&key), abi::PolicyEntry { policy, pad: 0 }, 0)
                .map_err(up),
            Write::PolicyDelete { key } if key.bits == abi::POLICY_KEY_BITS => {
                removed(m.policy_exact.remove(&policy_exact_key(&key)), map)
            }
            Write::PolicyDelete { key } => removed(m.policy.remove(&policy_key(&key)), map),
            Write::AddrIdentity { cidr, value } => {
                m.ip_identity.insert(&cidr_key(&cidr), value, 0).map_err(up)
            }
            Write::AddrIdentityDelete { cidr } => {
                removed(m.ip_identity.remove(&cidr_key(&cidr)), map)
            }
        }
    }
}
