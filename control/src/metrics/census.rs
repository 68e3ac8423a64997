//! Map fill levels: how many entries each datapath map holds against its
//! capacity, counted by a background thread every `--metrics-census-interval`.
//!
//! Why not at scrape time: the kernel keeps no entry count a program-less
//! reader can ask for, so counting means walking the map — O(entries). For a
//! 1M-entry LRU connection table that is ~64 MB of keys and values copied.
//! The walk uses BPF_MAP_LOOKUP_BATCH (thousands of entries per syscall;
//! tens of milliseconds for 1M entries) and falls back to
//! BPF_MAP_GET_NEXT_KEY (one syscall per entry) for map types without batch
//! support (LPM trie, devmap); every walk is capped at max_entries + 1 steps.
//! Scrapes read the last result and its age (`xlb_map_census_timestamp_seconds`)
//! and cost (`xlb_map_census_duration_seconds`). An LRU map's count is a
//! snapshot: entries are evicted and added while it is walked.
use std::{
    collections::BTreeMap,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::MapData;

/// Which entries of a map count as used.
#[derive(Clone, Copy, Debug)]
enum Used {
    /// Every key present (hash-type maps).
    Present,
    /// ARRAY entries whose u32 at this value offset is non-zero (flags).
    NonZeroU32At(usize),
}

/// The maps whose fill is tracked, and what "used" means for each.
const MAPS: &[(&str, Used)] = &[
    ("xlb_frontends", Used::Present),
    ("xlb_maglev", Used::Present),
    ("xlb_svc_backends", Used::Present),
    // struct xlb_backend: flags at offset 36; 0 = free (xlb_abi.h).
    ("xlb_backends", Used::NonZeroU32At(36)),
    ("xlb_ct", Used::Present),
    ("xlb_affinity", Used::Present),
    ("xlb_dsr_nat", Used::Present),
    ("xlb_source_ranges", Used::Present),
    ("xlb_svc_names", Used::Present),
    ("xlb_tx_ports", Used::Present),
];

const _: () = assert!(core::mem::offset_of!(lb::abi::Backend, flags) == 36);

/// One map's count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapFill {
    pub entries: u64,
    pub capacity: u64,
}

/// The last census.
#[derive(Clone, Debug, Default)]
pub struct Census {
    pub maps: BTreeMap<&'static str, MapFill>,
    /// Unix time it finished; 0: none yet.
    pub finished_unix: f64,
    pub duration: Duration,
    /// Maps that could not be counted, with the reason.
    pub errors: BTreeMap<&'static str, String>,
}

/// Counts every tracked map pinned under `pin_dir` once.
pub fn run_once(pin_dir: &Path) -> Census {
    let t0 = Instant::now();
    let mut c = Census::default();
    for &(name, used) in MAPS {
        match count_map(&pin_dir.join(name), used) {
            Ok(fill) => {
                c.maps.insert(name, fill);
            }
            Err(e) => {
                c.errors.insert(name, e);
            }
        }
    }
    c.duration = t0.elapsed();
    c.finished_unix = super::unix_now();
    c
}

fn count_map(path: &Path, used: Used) -> Result<MapFill, String> {
    let data = MapData::from_pin(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let info = data.info().map_err(|e| format!("map info: {e}"))?;
    let (ks, vs, cap) =
        (info.key_size() as usize, info.value_size() as usize, info.max_entries() as u64);
    let fd = data.fd().as_fd().as_raw_fd();
    let entries = match batch_count(fd, ks, vs, cap, used) {
        Ok(n) => n,
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP | 524)) => {
            // 524: ENOTSUPP, the kernel-internal "no batch ops for this type".
            match used {
                Used::Present => next_key_count(fd, ks, cap).map_err(|e| format!("walk: {e}"))?,
                Used::NonZeroU32At(_) => return Err(format!("batch lookup: {e}")),
            }
        }
        Err(e) => return Err(format!("batch lookup: {e}")),
    };
    Ok(MapFill { entries, capacity: cap })
}

/// bpf_attr for BPF_MAP_LOOKUP_BATCH.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
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

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<()> {
    // SAFETY: attr is a live, correctly laid out bpf_attr prefix for `cmd`,
    // and its size is passed; the kernel reads/writes only within it and
    // the user buffers it points at, which the callers keep alive.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, attr as *mut T as *mut libc::c_void, size_of::<T>())
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn batch_count(fd: i32, ks: usize, vs: usize, cap: u64, used: Used) -> std::io::Result<u64> {
    // ~4 MB of buffers per call, at least 64 entries (a hash bucket larger
    // than the batch is ENOSPC: then the batch doubles).
    let mut per = (4 << 20) / (ks + vs).max(1);
    per = per.clamp(64, 65536);
    let mut keys = vec![0u8; per * ks];
    let mut values = vec![0u8; per * vs];
    let mut token_in = [0u8; 8];
    let mut token_out = [0u8; 8];
    let mut first = true;
    let mut total = 0u64;
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
        match &r {
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 => {
                per *= 2;
                keys.resize(per * ks, 0);
                values.resize(per * vs, 0);
                continue;
            }
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(r.unwrap_err()),
            _ => {}
        }
        total += match used {
            Used::Present => got as u64,
            Used::NonZeroU32At(off) => (0..got)
                .filter(|i| {
                    let v = &values[i * vs + off..i * vs + off + 4];
                    u32::from_ne_bytes([v[0], v[1], v[2], v[3]]) != 0
                })
                .count() as u64,
        };
        if r.is_err() {
            return Ok(total); // ENOENT: walked to the end
        }
        token_in = token_out;
        first = false;
        steps += got as u64;
        if steps > cap + 1 {
            return Ok(total.min(cap));
        }
    }
}

fn next_key_count(fd: i32, ks: usize, cap: u64) -> std::io::Result<u64> {
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

/// The background census; stops when dropped.
#[derive(Debug)]
pub struct CensusThread {
    results: Arc<Mutex<Census>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CensusThread {
    pub fn start(pin_dir: PathBuf, every: Duration) -> CensusThread {
        let results = Arc::new(Mutex::new(Census::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (results.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("xlb-census".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let c = run_once(&pin_dir);
                    *r.lock().expect("not poisoned") = c;
                    let t0 = Instant::now();
                    while t0.elapsed() < every && !s.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
            .ok();
        CensusThread { results, stop, thread }
    }

    pub fn results(&self) -> Arc<Mutex<Census>> {
        self.results.clone()
    }
}

impl Drop for CensusThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// bpf_attr for BPF_MAP_CREATE (up to map_name).
#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// bpf_attr for BPF_OBJ_PIN.
#[repr(C)]
#[derive(Default)]
struct PinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_MAP_TYPE_RINGBUF: u32 = 27;

/// Creates a BPF ring buffer of `bytes` and pins it at `path` (aya 0.14 has
/// no public map-create call; used to size xlb_events before the loader
/// finds it pinned by name).
pub fn create_pinned_ringbuf(path: &Path, name: &str, bytes: u32) -> std::io::Result<()> {
    let mut attr =
        CreateAttr { map_type: BPF_MAP_TYPE_RINGBUF, max_entries: bytes, ..Default::default() };
    let n = name.len().min(15);
    attr.map_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: attr is a valid BPF_MAP_CREATE prefix of its size; the call
    // returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &mut attr as *mut CreateAttr as *mut libc::c_void,
            size_of::<CreateAttr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by the kernel and is owned by nobody else.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut pin =
        PinAttr { pathname: c.as_ptr() as u64, bpf_fd: owned.as_raw_fd() as u32, file_flags: 0 };
    bpf(BPF_OBJ_PIN, &mut pin)
}
