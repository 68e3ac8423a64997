//! Typed handles on the pinned datapath maps, opened by path: the only place
//! that names a map. [`crate::store::BpfStore`] does every reconciler write
//! and read-model read through them.
use std::path::{Path, PathBuf};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, DevMapHash, HashMap, Map, MapData, MapError, PerCpuArray,
    },
    Pod,
};

use crate::abi;

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

/// Every datapath map of one node.
pub struct Maps {
    pub frontends: Hash<abi::FrontendKey, abi::Service>,
    pub maglev: Hash<u32, abi::MaglevTable>,
    pub svc_backends: Hash<abi::SvcBackendKey, u32>,
    pub backends: Array<MapData, abi::Backend>,
    pub ct: Hash<abi::FlowKey, abi::CtEntry>,
    pub affinity: Hash<abi::AffinityKey, abi::AffinityEntry>,
    pub node: Array<MapData, abi::NodeCfg>,
    pub tx_ports: DevMapHash<MapData>,
    pub dsr_nat: Hash<abi::FlowKey, abi::DsrNatEntry>,
    pub counters: PerCpuArray<MapData, abi::Count>,
    pub svc_stats: PerCpuArray<MapData, abi::SvcStats>,
    pub backend_stats: PerCpuArray<MapData, abi::Count>,
    pub source_ranges: LpmTrie<MapData, SrcRangeData, u32>,
    pub svc_names: Hash<u32, abi::SvcName>,
    pub backend_meta: Hash<u32, abi::BackendMeta>,
    pub config_gen: Array<MapData, abi::ConfigGen>,
    pub frag4: Hash<abi::FragKey, abi::FragPorts>,
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
            svc_backends: open(dir, "xlb_svc_backends")?,
            backends: open(dir, "xlb_backends")?,
            ct: open(dir, "xlb_ct")?,
            affinity: open(dir, "xlb_affinity")?,
            node: open(dir, "xlb_node")?,
            tx_ports: open(dir, "xlb_tx_ports")?,
            dsr_nat: open(dir, "xlb_dsr_nat")?,
            counters: open(dir, "xlb_counters")?,
            svc_stats: open(dir, "xlb_svc_stats")?,
            backend_stats: open(dir, "xlb_backend_stats")?,
            source_ranges: open(dir, "xlb_source_ranges")?,
            svc_names: open(dir, "xlb_svc_names")?,
            backend_meta: open(dir, "xlb_backend_meta")?,
            config_gen: open(dir, "xlb_config_gen")?,
            frag4: open(dir, "xlb_frag4")?,
        })
    }
}

/// The LPM key of one source range of a service.
pub fn src_range_key(svc_id: u32, cidr: &crate::model::Cidr) -> Key<SrcRangeData> {
    let (addr, family) = abi::addr_to_abi(cidr.addr);
    Key::new(
        64 + cidr.len as u32,
        SrcRangeData { svc_id: svc_id.to_be(), family, pad: [0; 3], addr },
    )
}
