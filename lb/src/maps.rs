//! Typed handles on the pinned datapath maps, opened by path: the only place
//! that names a map. [`crate::store::BpfStore`] does every reconciler write
//! and read-model read through them.
use std::{
    io,
    ops::ControlFlow,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, DevMapHash, HashMap, Map, MapData, MapError, PerCpuArray,
    },
    Pod,
};

use crate::{
    abi,
    census::{bpf, BatchAttr},
};

/// The data part of an xlb_source_ranges key (the C struct without its
/// leading prefixlen, which aya's `lpm_trie::Key` carries).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SrcRangeData {
    pub svc_id: u32, // network order
    pub family: u8,
    pub pad: [u8; 3],
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<SrcRangeData>() + 4 == abi::SrcRangeKey::LAYOUT.size);
// SAFETY: repr(C), integers only, no padding (size asserted).
unsafe impl Pod for SrcRangeData {}

/// The data part of an xlb_cidr_key (xlb_pod_routes, xlb_nonmasq) without
/// its leading prefixlen.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CidrData {
    pub family: u8,
    pub pad: [u8; 3],
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<CidrData>() + 4 == abi::CidrKey::LAYOUT.size);
// SAFETY: repr(C), integers only, no padding (size asserted).
unsafe impl Pod for CidrData {}

/// The data part of an xlb_policy_key without its leading prefixlen.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyData {
    pub ep: u32,
    pub identity: u32,
    pub dir: u8,
    pub proto: u8,
    pub port: u16, // network order
}
const _: () = assert!(core::mem::size_of::<PolicyData>() + 4 == abi::PolicyKey::LAYOUT.size);
// SAFETY: repr(C), integers only, no padding (size asserted).
unsafe impl Pod for PolicyData {}

/// The LPM key of an xlb_policy entry.
pub fn policy_key(k: &crate::policy::EntryKey) -> Key<PolicyData> {
    Key::new(
        k.bits,
        PolicyData {
            ep: k.ep,
            identity: k.identity,
            dir: k.dir,
            proto: k.proto,
            port: k.port.to_be(),
        },
    )
}

/// The xlb_policy_exact key of a single-port entry (`k.bits` is
/// [`abi::POLICY_KEY_BITS`]).
pub fn policy_exact_key(k: &crate::policy::EntryKey) -> abi::PolicyKey {
    abi::PolicyKey {
        prefixlen: k.bits,
        ep: k.ep,
        identity: k.identity,
        dir: k.dir,
        proto: k.proto,
        port: k.port.to_be(),
    }
}

/// The entry an xlb_policy_exact key stands for.
pub fn policy_exact_key_of(k: &abi::PolicyKey) -> crate::policy::EntryKey {
    crate::policy::EntryKey {
        bits: k.prefixlen,
        ep: k.ep,
        identity: k.identity,
        dir: k.dir,
        proto: k.proto,
        port: u16::from_be(k.port),
    }
}

/// The entry an xlb_policy key stands for.
pub fn policy_key_of(k: &Key<PolicyData>) -> crate::policy::EntryKey {
    let d = k.data();
    crate::policy::EntryKey {
        bits: k.prefix_len(),
        ep: d.ep,
        identity: d.identity,
        dir: d.dir,
        proto: d.proto,
        port: u16::from_be(d.port),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("opening pinned map {path}: {source}")]
    Open { path: PathBuf, source: Box<MapError> },
    #[error("map {map}: {op}: {source}")]
    Op { map: &'static str, op: &'static str, source: Box<MapError> },
}

impl MapsError {
    pub(crate) fn op(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> MapsError {
        move |source| MapsError::Op { map, op, source: Box::new(source) }
    }
}

/// Opens the map pinned at `path` as the typed handle `T`: the one place
/// lb turns a pin into a map (callers wrap the error with their own context).
pub(crate) fn open_pinned<T>(path: &Path) -> Result<T, MapError>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(Map::from_map_data(MapData::from_pin(path)?)?)
}

fn open<T>(dir: &Path, name: &str) -> Result<T, MapsError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = dir.join(name);
    open_pinned(&path).map_err(|source| MapsError::Open { path, source: Box::new(source) })
}

pub type Hash<K, V> = HashMap<MapData, K, V>;

/// xlb_backend_stats: an ARRAY of one row of backend ids per possible CPU
/// (lb/bpf/counters.h), each CPU counting in its own row; or, pinned by an
/// agent before #14 and read until a new agent replaces it, a PERCPU_ARRAY.
pub enum BackendStats {
    Rows {
        map: Array<MapData, abi::Count>,
        cpus: u32,
        /// Backend ids per row.
        slots: u32,
    },
    PerCpu {
        map: PerCpuArray<MapData, abi::Count>,
        cpus: u32,
    },
}

impl BackendStats {
    fn open(dir: &Path) -> Result<BackendStats, MapsError> {
        let path = dir.join("xlb_backend_stats");
        let err = |e| MapsError::Open { path: path.clone(), source: Box::new(e) };
        let map = MapData::from_pin(&path).and_then(Map::from_map_data).map_err(err)?;
        // Possible CPUs, read once (a file under /sys).
        let cpus = aya::util::nr_cpus().map_err(|(call, e)| err(syscall_error(call, e)))?;
        let cpus = u32::try_from(cpus).unwrap_or(u32::MAX);
        Ok(match map {
            m @ Map::PerCpuArray(_) => {
                BackendStats::PerCpu { map: m.try_into().map_err(err)?, cpus }
            }
            m => {
                let map = Array::<MapData, abi::Count>::try_from(m).map_err(err)?;
                BackendStats::Rows { slots: map.len() / cpus, map, cpus }
            }
        })
    }

    /// A backend's traffic on each CPU.
    pub fn get(&self, id: u32) -> Result<Vec<abi::Count>, MapError> {
        match self {
            BackendStats::Rows { map, cpus, slots } => {
                if id >= *slots {
                    return Err(MapError::OutOfBounds { index: id, max_entries: *slots });
                }
                (0..*cpus).map(|cpu| map.get(&(cpu * slots + id), 0)).collect()
            }
            BackendStats::PerCpu { map, .. } => Ok(map.get(&id, 0)?.iter().copied().collect()),
        }
    }

    /// Zeroes a backend's counters on every CPU (an id given anew).
    pub fn zero(&mut self, id: u32) -> Result<(), MapError> {
        let zero = abi::Count { packets: 0, bytes: 0 };
        match self {
            BackendStats::Rows { map, cpus, slots } => {
                if id >= *slots {
                    return Err(MapError::OutOfBounds { index: id, max_entries: *slots });
                }
                (0..*cpus).try_for_each(|cpu| map.set(cpu * *slots + id, zero, 0))
            }
            BackendStats::PerCpu { map, cpus } => {
                let values = aya::maps::PerCpuValues::try_from(vec![zero; *cpus as usize])
                    .map_err(|e| syscall_error("nr_cpus", e))?;
                map.set(id, values, 0)
            }
        }
    }
}

/// Every datapath map of one node.
pub struct Maps {
    pub frontends: Hash<abi::FrontendKey, abi::Service>,
    pub maglev: Hash<u32, abi::MaglevTable>,
    /// The ids of each service's first [`abi::SVC_IDS`] indexes (read
    /// with [`Maps::svc_ids`], [`Maps::svc_backend_id`]), a cache in front
    /// of xlb_svc_backends. None: pinned by an agent from before it.
    pub svc_backend_ids: Option<RawMap>,
    /// The ids of every index (xlb_svc_backend_ids caches the first ones).
    pub svc_backends: Hash<abi::SvcBackendKey, u32>,
    pub backends: Array<MapData, abi::Backend>,
    pub ct: CtTable,
    pub affinity: Hash<abi::AffinityKey, abi::AffinityEntry>,
    pub node: Array<MapData, abi::NodeCfg>,
    pub tx_ports: DevMapHash<MapData>,
    pub dsr_nat: Hash<abi::FlowKey, abi::DsrNatEntry>,
    pub counters: PerCpuArray<MapData, abi::Count>,
    pub svc_stats: PerCpuArray<MapData, abi::SvcStats>,
    /// [cpu][backend id] (lb/bpf/xlb_abi.h): read through [`BackendStats`].
    pub backend_stats: BackendStats,
    pub source_ranges: LpmTrie<MapData, SrcRangeData, u32>,
    pub svc_names: Hash<u32, abi::SvcName>,
    pub backend_meta: Hash<u32, abi::BackendMeta>,
    pub config_gen: Array<MapData, abi::ConfigGen>,
    /// The Maglev class maps, smallest class first (abi::MAGLEV_CLASSES).
    pub maglev_classes: Vec<RawMap>,
    pub endpoints: Hash<abi::AddrKey, abi::Endpoint>,
    pub tunnel_peers: Hash<abi::AddrKey, u32>,
    pub pod_routes: LpmTrie<MapData, CidrData, abi::Route>,
    pub nonmasq: LpmTrie<MapData, CidrData, u32>,
    pub podnet: Array<MapData, abi::PodnetCfg>,
    pub snat: Hash<abi::FlowKey, abi::SnatEntry>,
    pub snat_rev: Hash<abi::FlowKey, abi::SnatEntry>,
    pub snat_stats: PerCpuArray<MapData, abi::SnatStats>,
    pub sock_frontends: Hash<abi::FrontendKey, abi::Service>,
    pub sock_stats: PerCpuArray<MapData, abi::SockStats>,
    pub frag4: Hash<abi::FragKey, abi::FragPorts>,
    pub policy: LpmTrie<MapData, PolicyData, abi::PolicyEntry>,
    pub policy_exact: Hash<abi::PolicyKey, abi::PolicyEntry>,
    pub policy_ep: Hash<u32, abi::PolicyEp>,
    pub ip_identity: LpmTrie<MapData, CidrData, abi::AddrIdentity>,
    pub policy_ct: Hash<abi::FlowKey, abi::PolicyCt>,
    pub ct_guard: PerCpuArray<MapData, abi::CtGuard>,
    /// #14: the frontend filter's words, then its armed flag.
    pub fe_filter: Array<MapData, u64>,
}

impl std::fmt::Debug for Maps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Maps")
    }
}

impl Maps {
    /// Opens every map pinned under `dir` (a loaded [`crate::loader::Dataplane`]'s pin dir).
    pub fn open(dir: &Path) -> Result<Maps, MapsError> {
        Ok(Maps {
            frontends: open(dir, "xlb_frontends")?,
            maglev: open(dir, "xlb_maglev")?,
            svc_backend_ids: match RawMap::open(dir, "xlb_svc_backend_ids") {
                Ok(m) => Some(m),
                Err(_) if !dir.join("xlb_svc_backend_ids").exists() => None,
                Err(e) => return Err(e),
            },
            svc_backends: open(dir, "xlb_svc_backends")?,
            backends: open(dir, "xlb_backends")?,
            ct: CtTable::open(dir)?,
            affinity: open(dir, "xlb_affinity")?,
            node: open(dir, "xlb_node")?,
            tx_ports: open(dir, "xlb_tx_ports")?,
            dsr_nat: open(dir, "xlb_dsr_nat")?,
            counters: open(dir, "xlb_counters")?,
            svc_stats: open(dir, "xlb_svc_stats")?,
            backend_stats: BackendStats::open(dir)?,
            source_ranges: open(dir, "xlb_source_ranges")?,
            svc_names: open(dir, "xlb_svc_names")?,
            backend_meta: open(dir, "xlb_backend_meta")?,
            config_gen: open(dir, "xlb_config_gen")?,
            maglev_classes: abi::MAGLEV_CLASSES
                .iter()
                .map(|&c| RawMap::open(dir, abi::maglev_map(c)))
                .collect::<Result<_, _>>()?,
            endpoints: open(dir, "xlb_endpoints")?,
            tunnel_peers: open(dir, "xlb_tunnel_peers")?,
            pod_routes: open(dir, "xlb_pod_routes")?,
            nonmasq: open(dir, "xlb_nonmasq")?,
            podnet: open(dir, "xlb_podnet")?,
            snat: open(dir, "xlb_snat")?,
            snat_rev: open(dir, "xlb_snat_rev")?,
            snat_stats: open(dir, "xlb_snat_stats")?,
            sock_frontends: open(dir, "xlb_sock_frontends")?,
            sock_stats: open(dir, "xlb_sock_stats")?,
            frag4: open(dir, "xlb_frag4")?,
            policy: open(dir, "xlb_policy")?,
            policy_exact: open(dir, "xlb_policy_exact")?,
            policy_ep: open(dir, "xlb_policy_ep")?,
            ip_identity: open(dir, "xlb_ip_identity")?,
            policy_ct: open(dir, "xlb_policy_ct")?,
            ct_guard: open(dir, "xlb_ct_guard")?,
            fe_filter: open(dir, "xlb_fe_filter")?,
        })
    }
}

impl Maps {
    /// The xlb_svc_backend_ids value of service `svc_id` (all 0 if none).
    pub fn svc_ids(&self, svc_id: u32) -> Result<abi::SvcBackendIds, MapsError> {
        let mut bytes = [0u8; size_of::<abi::SvcBackendIds>()];
        if let Some(m) = &self.svc_backend_ids {
            m.lookup(&svc_id.to_ne_bytes(), &mut bytes)
                .map_err(MapsError::op("xlb_svc_backend_ids", "lookup"))?;
        }
        Ok(svc_ids_from(&bytes))
    }

    /// The backend id of index `index` of service `svc_id` as the datapath
    /// resolves it (lb/bpf/maglev.h, xlb_svc_backend_id): its word in
    /// xlb_svc_backend_ids, else (or if 0 there) xlb_svc_backends.
    pub fn svc_backend_id(&self, svc_id: u32, index: u32) -> Result<Option<u32>, MapsError> {
        let low = if index < abi::SVC_IDS {
            self.svc_ids(svc_id)?
        } else {
            abi::SvcBackendIds { id: [0; abi::SVC_IDS as usize] }
        };
        self.svc_backend_id_in(&low, svc_id, index)
    }

    /// [`Maps::svc_backend_id`] with the service's xlb_svc_backend_ids value
    /// `low` already read ([`Maps::svc_ids`]): for a caller resolving
    /// several indexes of one service with one array read.
    pub fn svc_backend_id_in(
        &self,
        low: &abi::SvcBackendIds,
        svc_id: u32,
        index: u32,
    ) -> Result<Option<u32>, MapsError> {
        if let Some(&id) = low.id.get(index as usize).filter(|&&id| id != 0) {
            return Ok(Some(id));
        }
        let key = abi::SvcBackendKey { svc_id, index };
        match self.svc_backends.get(&key, 0) {
            Ok(id) => Ok(Some(id)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(None)
            }
            Err(e) => Err(MapsError::op("xlb_svc_backends", "lookup")(e)),
        }
    }

    /// Every non-zero xlb_svc_backend_ids value, by service id (one
    /// batched walk; none on the pins of an agent from before the map).
    pub fn svc_ids_all(&self) -> Result<Vec<(u32, abi::SvcBackendIds)>, MapsError> {
        let mut out = Vec::new();
        let Some(m) = &self.svc_backend_ids else { return Ok(out) };
        m.walk_array(0, &mut |k, v| {
            let (svc_id, ids) = (ne_u32(k), svc_ids_from(v));
            if ids.id.iter().any(|&id| id != 0) {
                out.push((svc_id, ids));
            }
            ControlFlow::Continue(())
        })
        .map_err(|io_error| {
            MapsError::op("xlb_svc_backend_ids", "lookup")(MapError::SyscallError(
                aya::sys::SyscallError { call: "bpf_map_lookup_batch", io_error },
            ))
        })?;
        Ok(out)
    }

    /// Every xlb_svc_backends entry (the agent keeps one for every index).
    pub fn svc_backends_all(&self) -> Result<Vec<(abi::SvcBackendKey, u32)>, MapsError> {
        self.svc_backends
            .iter()
            .map(|item| item.map_err(MapsError::op("xlb_svc_backends", "iterate")))
            .collect()
    }

    /// Every (service, index) -> backend id the datapath resolves, sorted
    /// ([`resolve_ids`] of the two maps).
    pub fn svc_backend_entries(&self) -> Result<Vec<(abi::SvcBackendKey, u32)>, MapsError> {
        Ok(resolve_ids(self.svc_ids_all()?, self.svc_backends_all()?))
    }
}

/// (service, index) -> backend id as the datapath resolves it
/// (lb/bpf/maglev.h, xlb_svc_backend_id), sorted: the non-zero words of the
/// xlb_svc_backend_ids values `arrays`, then the xlb_svc_backends entries
/// `hash` of indexes without one. (The agent's restore reads the two the
/// other way round: the hash wins, reconcile::svcids.)
pub fn resolve_ids(
    arrays: Vec<(u32, abi::SvcBackendIds)>,
    hash: Vec<(abi::SvcBackendKey, u32)>,
) -> Vec<(abi::SvcBackendKey, u32)> {
    let mut out: Vec<(abi::SvcBackendKey, u32)> = Vec::with_capacity(hash.len());
    for (svc_id, ids) in arrays {
        for (index, &id) in (0..).zip(&ids.id) {
            if id != 0 {
                out.push((abi::SvcBackendKey { svc_id, index }, id));
            }
        }
    }
    let mut low: std::collections::HashSet<(u32, u32)> =
        out.iter().map(|(k, _)| (k.svc_id, k.index)).collect();
    for (k, id) in hash {
        if low.insert((k.svc_id, k.index)) {
            out.push((k, id));
        }
    }
    out.sort_unstable_by_key(|(k, _)| (k.svc_id, k.index));
    out
}

/// The LPM key of one source range of a service.
pub fn src_range_key(svc_id: u32, cidr: &crate::model::Cidr) -> Key<SrcRangeData> {
    let (addr, family) = abi::addr_to_abi(cidr.addr);
    Key::new(
        64 + cidr.len as u32,
        SrcRangeData { svc_id: svc_id.to_be(), family, pad: [0; 3], addr },
    )
}

// ---- #14 performance: maps by raw bpf(2) calls --------------------------------

/// A pinned map driven by bpf(2) on byte buffers: for maps whose value type
/// is chosen at run time (the Maglev size classes) and for batched updates
/// (one syscall for many entries), which aya does not offer.
pub struct RawMap {
    data: MapData,
    name: &'static str,
    key_size: usize,
    value_size: usize,
    max_entries: u32,
}

impl std::fmt::Debug for RawMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawMap({})", self.name)
    }
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The leading fields of union bpf_attr for the *_ELEM commands.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn syscall_error(call: &'static str, io_error: io::Error) -> MapError {
    MapError::SyscallError(aya::sys::SyscallError { call, io_error })
}

impl RawMap {
    /// Opens `dir/name`.
    pub fn open(dir: &Path, name: &'static str) -> Result<RawMap, MapsError> {
        let path = dir.join(name);
        let err = |source| MapsError::Open { path: path.clone(), source: Box::new(source) };
        let data = MapData::from_pin(&path).map_err(err)?;
        let info = data.info().map_err(err)?;
        Ok(RawMap {
            data,
            name,
            key_size: info.key_size() as usize,
            value_size: info.value_size() as usize,
            max_entries: info.max_entries(),
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn value_size(&self) -> usize {
        self.value_size
    }

    fn fd(&self) -> u32 {
        self.data.fd().as_fd().as_raw_fd() as u32
    }

    fn check(&self, key: &[u8], value: &[u8]) -> Result<(), MapError> {
        if key.len() != self.key_size || value.len() != self.value_size {
            return Err(syscall_error(
                "bpf_map_update_elem",
                io::Error::new(io::ErrorKind::InvalidInput, "key or value of the wrong size"),
            ));
        }
        Ok(())
    }

    /// Writes one entry (`value` of exactly the map's value size).
    pub fn update(&self, key: &[u8], value: &[u8]) -> Result<(), MapError> {
        self.check(key, value)?;
        let mut a = ElemAttr {
            map_fd: self.fd(),
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut a).map_err(|e| syscall_error("bpf_map_update_elem", e))
    }

    /// Reads one entry into `value`; false if there is none.
    pub fn lookup(&self, key: &[u8], value: &mut [u8]) -> Result<bool, MapError> {
        self.check(key, value)?;
        let mut a = ElemAttr {
            map_fd: self.fd(),
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            ..Default::default()
        };
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut a) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(syscall_error("bpf_map_lookup_elem", e)),
        }
    }

    /// Deletes one entry; an absent one is fine.
    pub fn delete(&self, key: &[u8]) -> Result<(), MapError> {
        let mut a = ElemAttr { map_fd: self.fd(), key: key.as_ptr() as u64, ..Default::default() };
        match bpf(BPF_MAP_DELETE_ELEM, &mut a) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(syscall_error("bpf_map_delete_elem", e)),
        }
    }

    /// Every key, as bytes (the map may change meanwhile: a walk, not a
    /// snapshot).
    pub fn keys(&self) -> Result<Vec<Vec<u8>>, MapError> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut next = vec![0u8; self.key_size];
            let mut a = ElemAttr {
                map_fd: self.fd(),
                key: out.last().map_or(0, |k| k.as_ptr() as u64),
                value: next.as_mut_ptr() as u64,
                ..Default::default()
            };
            match bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
                Ok(()) => out.push(next),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
                Err(e) => return Err(syscall_error("bpf_map_get_next_key", e)),
            }
        }
    }

    /// Writes `keys.len() / key_size` entries in one syscall (the kernel
    /// applies them in order and stops at the first failure). On an error,
    /// how many entries were written before it.
    pub fn update_batch(&self, keys: &[u8], values: &[u8]) -> Result<(), (usize, MapError)> {
        let n = keys.len() / self.key_size.max(1);
        if keys.len() != n * self.key_size || values.len() != n * self.value_size {
            return Err((
                0,
                syscall_error(
                    "bpf_map_update_batch",
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "keys and values of the wrong size",
                    ),
                ),
            ));
        }
        if n == 0 {
            return Ok(());
        }
        let mut a = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: n as u32,
            map_fd: self.fd(),
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_BATCH, &mut a)
            .map_err(|e| ((a.count as usize).min(n), syscall_error("bpf_map_update_batch", e)))
    }

    /// Visits the (key, value)s of an ARRAY from index `from`, as bytes,
    /// with BPF_MAP_LOOKUP_BATCH (thousands of entries per syscall, 512 KiB
    /// of buffers) until `visit` breaks.
    pub(crate) fn walk_array(
        &self,
        from: u32,
        visit: &mut crate::census::EntryVisit<'_>,
    ) -> io::Result<()> {
        let fd = self.fd() as i32;
        crate::census::batch_walk_in(
            fd,
            self.key_size,
            self.value_size,
            u64::from(self.max_entries),
            512 << 10,
            from.checked_sub(1),
            visit,
        )
    }

    /// Visits every (key, value) of a map of any type with batch lookups
    /// (a HASH: its buckets in order) until `visit` breaks.
    pub(crate) fn walk(&self, visit: &mut crate::census::EntryVisit<'_>) -> io::Result<()> {
        let fd = self.fd() as i32;
        let cap = u64::from(self.max_entries);
        crate::census::batch_walk_in(
            fd,
            self.key_size,
            self.value_size,
            cap,
            512 << 10,
            None,
            visit,
        )
    }
}

/// xlb_ct, the set-associative connection table (lb/bpf/conntrack.h): an
/// ARRAY of [`abi::CtSet`], the set of a flow chosen by its flow hash, and
/// xlb_ct_tags, the [`abi::CtTags`] of each set's ways (a lookup reads only
/// the ways whose tag matches: every writer writes a way's tag with it).
#[derive(Debug)]
pub struct CtTable {
    pub sets: RawMap,
    pub tags: RawMap,
}

/// The ways of one xlb_ct value (a set, as bytes).
pub(crate) fn ct_ways_of(set: &[u8]) -> impl Iterator<Item = abi::CtWay> + '_ {
    set.chunks_exact(size_of::<abi::CtWay>()).map(|w| {
        // SAFETY: CtWay is Pod (integers only, no padding) and `w` holds
        // exactly its size; read_unaligned copes with any alignment.
        unsafe { std::ptr::read_unaligned(w.as_ptr().cast::<abi::CtWay>()) }
    })
}

/// One xlb_ct value (a set, as bytes) as an [`abi::CtSet`].
fn set_from_bytes(bytes: &[u8]) -> abi::CtSet {
    let mut ways = ct_ways_of(bytes);
    abi::CtSet { way: std::array::from_fn(|_| ways.next().unwrap_or_else(zero_way)) }
}

/// The native-endian u32 at the start of `b` (a map key or value as a
/// batched walk hands it; 0 if shorter).
pub(crate) fn ne_u32(b: &[u8]) -> u32 {
    b.first_chunk::<4>().map_or(0, |w| u32::from_ne_bytes(*w))
}

/// An xlb_svc_backend_ids value from its bytes.
fn svc_ids_from(b: &[u8]) -> abi::SvcBackendIds {
    let mut words = b.chunks_exact(4).map(ne_u32);
    abi::SvcBackendIds { id: std::array::from_fn(|_| words.next().unwrap_or(0)) }
}

/// The bytes of an ABI value (Pod: integers only, no padding, so every
/// byte is initialised), as a map write takes them.
pub(crate) fn pod_bytes<T: aya::Pod>(v: &T) -> &[u8] {
    // SAFETY: T is Pod (see above); the slice covers exactly `*v`.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

fn set_bytes(set: &abi::CtSet) -> &[u8] {
    // SAFETY: CtSet is Pod: every byte is initialised.
    unsafe {
        std::slice::from_raw_parts((set as *const abi::CtSet).cast::<u8>(), size_of::<abi::CtSet>())
    }
}

impl CtTable {
    /// Opens xlb_ct and xlb_ct_tags pinned under `dir`.
    pub fn open(dir: &Path) -> Result<CtTable, MapsError> {
        Ok(CtTable { sets: RawMap::open(dir, "xlb_ct")?, tags: RawMap::open(dir, "xlb_ct_tags")? })
    }

    /// Number of sets (the map's max_entries).
    pub fn sets(&self) -> u32 {
        self.sets.max_entries
    }

    /// Capacity in flows: sets x ways.
    pub fn capacity(&self) -> u64 {
        u64::from(self.sets()) * u64::from(abi::CT_WAYS)
    }

    /// The set of a flow whose flow hash is `hash` (conntrack.h xlb_ct_set_of).
    pub fn set_of(&self, hash: u32) -> u32 {
        ((u64::from(hash) * u64::from(self.sets())) >> 32) as u32
    }

    pub fn read_set(&self, set: u32) -> Result<abi::CtSet, MapError> {
        let mut v = vec![0u8; size_of::<abi::CtSet>()];
        self.sets.lookup(&set.to_ne_bytes(), &mut v)?;
        Ok(set_from_bytes(&v))
    }

    /// Writes a set's ways (not their tags: [`CtTable::write_tags`]).
    pub fn write_set(&self, set: u32, value: &abi::CtSet) -> Result<(), MapError> {
        self.sets.update(&set.to_ne_bytes(), set_bytes(value))
    }

    pub fn read_tags(&self, set: u32) -> Result<abi::CtTags, MapError> {
        let mut v = [0u8; size_of::<abi::CtTags>()];
        self.tags.lookup(&set.to_ne_bytes(), &mut v)?;
        // SAFETY: CtTags is Pod and `v` holds exactly its size.
        Ok(unsafe { std::ptr::read_unaligned(v.as_ptr().cast::<abi::CtTags>()) })
    }

    pub fn write_tags(&self, set: u32, tags: &abi::CtTags) -> Result<(), MapError> {
        self.tags.update(&set.to_ne_bytes(), pod_bytes(tags))
    }

    /// The tags of a set's ways as the datapath writes them: the tag of each
    /// valid way's flow hash, 0 for an empty or torn way.
    pub fn tags_of(set: &abi::CtSet) -> abi::CtTags {
        abi::CtTags {
            tag: std::array::from_fn(|i| {
                let w = &set.way[i];
                if w.valid() {
                    abi::ct_tag(abi::flow_hash(&w.key))
                } else {
                    0
                }
            }),
        }
    }

    /// Writes every set's tags from its ways (xlb_ct_tags created beside an
    /// xlb_ct kept from an agent that wrote no tags): a batched walk of the
    /// sets and batched writes of the tags. Ways the running programs write
    /// meanwhile have their tags written by them.
    pub fn rebuild_tags(&self) -> Result<(), MapError> {
        let fd = self.sets.fd() as i32;
        let (ks, vs) = (self.sets.key_size, self.sets.value_size);
        let mut keys = Vec::new();
        let mut values = Vec::new();
        let mut failed = None;
        let flush = |keys: &mut Vec<u8>, values: &mut Vec<u8>| {
            let r = self.tags.update_batch(keys, values).map_err(|(_, e)| e);
            keys.clear();
            values.clear();
            r
        };
        crate::census::batch_walk(fd, ks, vs, u64::from(self.sets()), &mut |set, v| {
            let tags = CtTable::tags_of(&set_from_bytes(v));
            if tags.tag.iter().any(|&t| t != 0) {
                keys.extend_from_slice(set);
                values.extend_from_slice(pod_bytes(&tags));
            }
            if keys.len() >= 4096 * size_of::<u32>() {
                if let Err(e) = flush(&mut keys, &mut values) {
                    failed = Some(e);
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        })
        .map_err(|e| syscall_error("bpf_map_lookup_batch", e))?;
        if let Some(e) = failed {
            return Err(e);
        }
        flush(&mut keys, &mut values)
    }

    /// Writes `key`'s entry as the datapath would (its own way, else an
    /// empty one, else way 0), with a valid check word and its tag;
    /// returns (set, way).
    pub fn insert(
        &self,
        key: &abi::FlowKey,
        mut e: abi::CtEntry,
    ) -> Result<(u32, usize), MapError> {
        let hash = abi::flow_hash(key);
        let set = self.set_of(hash);
        let mut s = self.read_set(set)?;
        let way = s
            .way
            .iter()
            .position(|w| w.key == *key)
            .or_else(|| s.way.iter().position(|w| w.e.check == 0))
            .unwrap_or(0);
        e.check = abi::ct_check(hash, &e);
        s.way[way] = abi::CtWay { key: *key, e };
        self.write_set(set, &s)?;
        let mut tags = self.read_tags(set)?;
        tags.tag[way] = abi::ct_tag(hash);
        self.write_tags(set, &tags)?;
        Ok((set, way))
    }

    /// Visits every valid way (a torn or empty one is skipped) until
    /// `visit` breaks. The datapath writes meanwhile: a walk, not a snapshot.
    pub fn walk(
        &self,
        visit: &mut dyn FnMut(&abi::CtWay) -> ControlFlow<()>,
    ) -> Result<(), MapError> {
        let fd = self.sets.fd() as i32;
        let (ks, vs) = (self.sets.key_size, self.sets.value_size);
        crate::census::batch_walk(fd, ks, vs, u64::from(self.sets()), &mut |_, v| {
            for w in ct_ways_of(v).filter(abi::CtWay::valid) {
                visit(&w)?;
            }
            ControlFlow::Continue(())
        })
        .map_err(|e| syscall_error("bpf_map_lookup_batch", e))
    }
}

fn zero_way() -> abi::CtWay {
    // SAFETY: CtWay is Pod: all-zero is a valid value (an empty way).
    unsafe { std::mem::zeroed() }
}

/// The LPM key of a prefix of xlb_pod_routes / xlb_nonmasq: family and
/// padding (32 bits), then the address with its host bits cleared.
pub fn cidr_key(cidr: &crate::model::Cidr) -> Key<CidrData> {
    let (addr, family) = abi::addr_to_abi(cidr.network().addr);
    Key::new(32 + u32::from(cidr.len), CidrData { family, pad: [0; 3], addr })
}

/// The prefix an xlb_pod_routes / xlb_nonmasq key stands for.
pub fn cidr_of(key: &Key<CidrData>) -> Option<crate::model::Cidr> {
    let d = key.data();
    let addr = abi::addr_from_abi(&d.addr, d.family)?;
    Some(crate::model::Cidr { addr, len: key.prefix_len().saturating_sub(32) as u8 })
}

/// xlb_endpoints alone, for xlb-cni: a pod's entries are written when its
/// network is made, before ADD returns (the agent's endpoints reconciler
/// owns the map and repairs it; it writes the same values).
pub struct EndpointMap {
    map: Hash<abi::AddrKey, abi::Endpoint>,
}

impl EndpointMap {
    /// The map pinned under `pin_dir` (the agent's pin directory).
    pub fn open(pin_dir: &Path) -> Result<EndpointMap, MapsError> {
        Ok(EndpointMap { map: open(pin_dir, "xlb_endpoints")? })
    }

    /// Every address of `ep`.
    pub fn insert(&mut self, ep: &crate::model::Endpoint) -> Result<(), MapsError> {
        let value = endpoint_value(ep);
        for a in &ep.addrs {
            self.map
                .insert(abi::addr_key(*a), value, 0)
                .map_err(MapsError::op("xlb_endpoints", "update"))?;
        }
        Ok(())
    }

    /// The entries of `addrs` that name host veth `ifindex` (another pod's
    /// entry for a reused address is left alone).
    pub fn remove(
        &mut self,
        addrs: &[std::net::IpAddr],
        ifindex: Option<u32>,
    ) -> Result<(), MapsError> {
        for a in addrs {
            let key = abi::addr_key(*a);
            match self.map.get(&key, 0) {
                Ok(v) if ifindex.is_none_or(|i| i == v.ifindex) => match self.map.remove(&key) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(MapError::SyscallError(e))
                        if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(MapsError::op("xlb_endpoints", "delete")(e)),
                },
                _ => {}
            }
        }
        Ok(())
    }
}

/// The xlb_endpoints value of a pod.
pub fn endpoint_value(ep: &crate::model::Endpoint) -> abi::Endpoint {
    abi::Endpoint {
        ifindex: ep.ifindex,
        identity: ep.identity,
        mac: ep.mac,
        host_mac: ep.host_mac,
        flags: abi::EP_F_ACTIVE,
    }
}
