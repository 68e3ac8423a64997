//! Map fill census: how many entries each datapath map pinned under a
//! directory holds against its capacity. `control` schedules it and turns it
//! into metrics; this module only counts.
//!
//! The kernel keeps no entry count a program-less reader can ask for, so
//! counting means walking the map — O(entries). The walk uses
//! BPF_MAP_LOOKUP_BATCH (thousands of entries per syscall; tens of
//! milliseconds for 1M entries) and falls back to BPF_MAP_GET_NEXT_KEY (one
//! syscall per entry) for map types without batch support (LPM trie,
//! devmap); every walk is capped at max_entries + 1 steps. aya 0.14 has
//! neither call for an untyped map, hence the raw syscalls. An LRU map's
//! count is a snapshot: entries are evicted and added while it is walked.
use std::{
    collections::BTreeMap,
    io,
    ops::ControlFlow,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::maps::{MapData, MapError};

/// Which entries of a map count as used.
#[derive(Clone, Copy, Debug)]
enum Used {
    /// Every key present (hash-type maps).
    Present,
    /// ARRAY entries whose u32 at this value offset is non-zero (flags).
    NonZeroU32At(usize),
    /// ARRAY entries with a non-zero byte anywhere in the value.
    NonZero,
    /// xlb_ct's sets: the valid ways ([`crate::abi::CtWay::valid`]) count,
    /// the capacity is sets x ways.
    CtWays,
}

/// The maps whose fill is counted, and what "used" means for each.
const MAPS: &[(&str, Used)] = &[
    ("xlb_frontends", Used::Present),
    ("xlb_maglev", Used::Present),
    // Services with a backend among their first SVC_IDS indexes.
    ("xlb_svc_backend_ids", Used::NonZero),
    ("xlb_svc_backends", Used::Present),
    // struct xlb_backend: flags != 0 is an allocated slot (xlb_abi.h).
    ("xlb_backends", Used::NonZeroU32At(core::mem::offset_of!(crate::abi::Backend, flags))),
    ("xlb_ct", Used::CtWays),
    ("xlb_affinity", Used::Present),
    ("xlb_dsr_nat", Used::Present),
    ("xlb_source_ranges", Used::Present),
    ("xlb_svc_names", Used::Present),
    ("xlb_tx_ports", Used::Present),
    ("xlb_maglev_199", Used::Present),
    ("xlb_maglev_457", Used::Present),
    ("xlb_maglev_971", Used::Present),
    ("xlb_maglev_1993", Used::Present),
    ("xlb_maglev_4027", Used::Present),
    ("xlb_maglev_8123", Used::Present),
    ("xlb_maglev_16319", Used::Present),
    ("xlb_frag4", Used::Present),
    // East-west (#9): translated sockets alive (their first record).
    ("xlb_sock_cookie", Used::Present),
];

#[derive(Debug, thiserror::Error)]
pub enum CensusError {
    #[error("opening pinned map {path}: {source}")]
    Open { path: PathBuf, source: Box<MapError> },
    #[error("map {map}: reading its info: {source}")]
    Info { map: &'static str, source: Box<MapError> },
    #[error("map {map}: batch lookup: {source}")]
    Batch { map: &'static str, source: io::Error },
    #[error("map {map}: walking its keys: {source}")]
    Walk { map: &'static str, source: io::Error },
}

/// One map's count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapFill {
    pub entries: u64,
    pub capacity: u64,
}

/// One census of every counted map.
#[derive(Debug, Default)]
pub struct Census {
    pub maps: BTreeMap<&'static str, MapFill>,
    /// Maps that could not be counted.
    pub errors: BTreeMap<&'static str, CensusError>,
    pub duration: Duration,
}

/// The maps the census counts, by pinned name.
pub fn tracked() -> impl Iterator<Item = &'static str> {
    MAPS.iter().map(|&(name, _)| name)
}

/// Counts every map of the census pinned under `pin_dir` once.
pub fn run(pin_dir: &Path) -> Census {
    let t0 = Instant::now();
    let mut c = Census::default();
    for &(name, used) in MAPS {
        match count_map(pin_dir, name, used) {
            Ok(fill) => {
                c.maps.insert(name, fill);
            }
            Err(e) => {
                c.errors.insert(name, e);
            }
        }
    }
    c.duration = t0.elapsed();
    c
}

fn count_map(pin_dir: &Path, map: &'static str, used: Used) -> Result<MapFill, CensusError> {
    let path = pin_dir.join(map);
    let data = MapData::from_pin(&path)
        .map_err(|e| CensusError::Open { path: path.clone(), source: Box::new(e) })?;
    let info = data.info().map_err(|e| CensusError::Info { map, source: Box::new(e) })?;
    let (ks, vs, cap) =
        (info.key_size() as usize, info.value_size() as usize, info.max_entries() as u64);
    let fd = data.fd().as_fd().as_raw_fd();
    let entries = match batch_count(fd, ks, vs, cap, used) {
        Ok(n) => n,
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP | 524)) => {
            // 524: ENOTSUPP, the kernel-internal "no batch ops for this type".
            match used {
                Used::Present => next_key_count(fd, ks, cap)
                    .map_err(|source| CensusError::Walk { map, source })?,
                Used::NonZeroU32At(_) | Used::NonZero | Used::CtWays => {
                    return Err(CensusError::Batch { map, source: e })
                }
            }
        }
        Err(source) => return Err(CensusError::Batch { map, source }),
    };
    // Entries come and go during a walk: never more than the capacity.
    let capacity = match used {
        Used::CtWays => cap * u64::from(crate::abi::CT_WAYS),
        _ => cap,
    };
    Ok(MapFill { entries: entries.min(capacity), capacity })
}

/// bpf_attr for the batch commands (BPF_MAP_LOOKUP_BATCH here; lb::maps
/// updates in batches with it too).
#[repr(C)]
#[derive(Default)]
pub(crate) struct BatchAttr {
    pub in_batch: u64,
    pub out_batch: u64,
    pub keys: u64,
    pub values: u64,
    pub count: u32,
    pub map_fd: u32,
    pub elem_flags: u64,
    pub flags: u64,
}

/// bpf_attr for BPF_MAP_GET_NEXT_KEY.
#[repr(C)]
#[derive(Default)]
struct NextKeyAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    next_key: u64,
}

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// bpf(2) with `attr` (the census's and lb::maps's raw map commands).
pub(crate) fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<()> {
    // SAFETY: attr is a live, correctly laid out bpf_attr prefix for `cmd`,
    // and its size is passed; the kernel reads/writes only within it and
    // the user buffers it points at, which the callers keep alive.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, attr as *mut T as *mut libc::c_void, size_of::<T>())
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn batch_count(fd: i32, ks: usize, vs: usize, cap: u64, used: Used) -> io::Result<u64> {
    let mut total = 0u64;
    batch_walk(fd, ks, vs, cap, &mut |_, v| {
        total += match used {
            Used::Present => 1,
            Used::NonZeroU32At(off) => {
                u64::from(u32::from_ne_bytes([v[off], v[off + 1], v[off + 2], v[off + 3]]) != 0)
            }
            Used::NonZero => u64::from(v.iter().any(|&b| b != 0)),
            Used::CtWays => crate::maps::ct_ways_of(v).filter(|w| w.valid()).count() as u64,
        };
        ControlFlow::Continue(())
    })?;
    Ok(total)
}

/// A [`batch_walk`] visitor: (key bytes, value bytes).
pub(crate) type EntryVisit<'a> = dyn FnMut(&[u8], &[u8]) -> ControlFlow<()> + 'a;

/// Visits every (key, value) of the map `fd` (key size `ks`, value size
/// `vs`, at most `cap` entries) with BPF_MAP_LOOKUP_BATCH until `visit`
/// breaks; ENOTSUPP/EINVAL for map types without batch lookup.
pub(crate) fn batch_walk(
    fd: i32,
    ks: usize,
    vs: usize,
    cap: u64,
    visit: &mut EntryVisit<'_>,
) -> io::Result<()> {
    batch_walk_in(fd, ks, vs, cap, 4 << 20, None, visit)
}

/// [`batch_walk`] with buffers of about `buf_bytes` per call, from the key
/// after `after` (arrays only: their batch token is the last key; None:
/// from the first).
pub(crate) fn batch_walk_in(
    fd: i32,
    ks: usize,
    vs: usize,
    cap: u64,
    buf_bytes: usize,
    after: Option<u32>,
    visit: &mut EntryVisit<'_>,
) -> io::Result<()> {
    // ~buf_bytes of buffers per call, at least 64 entries (a hash bucket
    // larger than the batch is ENOSPC: then the batch doubles).
    let mut per = buf_bytes / (ks + vs).max(1);
    per = per.clamp(64, 65536);
    let mut keys = vec![0u8; per * ks];
    let mut values = vec![0u8; per * vs];
    let mut token_in = [0u8; 8];
    let mut token_out = [0u8; 8];
    if let Some(key) = after {
        token_in[..4].copy_from_slice(&key.to_ne_bytes());
    }
    let mut first = after.is_none();
    let mut steps = 0u64;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_mut_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: per as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = attr.count as usize;
        match r {
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 => {
                per *= 2;
                keys.resize(per * ks, 0);
                values.resize(per * vs, 0);
                continue;
            }
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
            _ => {}
        }
        for i in 0..got {
            if visit(&keys[i * ks..(i + 1) * ks], &values[i * vs..(i + 1) * vs]).is_break() {
                return Ok(());
            }
        }
        if r.is_err() {
            return Ok(()); // ENOENT: walked to the end
        }
        token_in = token_out;
        first = false;
        steps += got as u64;
        if steps > cap + 1 {
            return Ok(());
        }
    }
}

fn next_key_count(fd: i32, ks: usize, cap: u64) -> io::Result<u64> {
    let mut key = vec![0u8; ks];
    let mut next = vec![0u8; ks];
    let mut n = 0u64;
    let mut first = true;
    while n <= cap {
        let mut attr = NextKeyAttr {
            map_fd: fd as u32,
            key: if first { 0 } else { key.as_mut_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
            ..Default::default()
        };
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
        n += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
    Ok(n.min(cap))
}
