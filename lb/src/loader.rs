//! Loading and attaching the datapath: the embedded objects (XDP, tc and the
//! cgroup socket programs) are loaded with configured map sizes, their maps
//! pinned by name under one directory (so the objects share them and a
//! restarted agent finds them), and attached through pinned links that a new
//! agent replaces atomically: XDP and tc on interfaces, the socket programs
//! at a cgroup (v2) — a node's cgroup root ([`cgroup2_root`]), or in tests
//! and labs a cgroup they made.
use std::{
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, MapError, MapInfo, MapType, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        CgroupAttachMode, CgroupSock, CgroupSockAddr, LinkOrder, ProgramError, SchedClassifier,
        TcAttachType, Xdp, XdpMode as AyaXdpMode,
    },
    Ebpf, EbpfError, EbpfLoader,
};

use crate::{
    abi::{self, Count, Counter, Hook},
    events,
    features::{Features, ProbeError},
    objects,
};

/// BPF_F_IPV6 of bpf_l4_csum_replace (ctx.h's XLB_F_CSUM_IPV6).
const CSUM_IPV6_FLAG: u64 = 1 << 7;

/// The flood guard's load-time constant (maglev.h), in XDP and tc.
const CT_INSERT_RATE_GLOBAL: &str = "xlb_ct_insert_rate";
/// xlb_ct's number of sets (conntrack.h): the set index is computed from it.
pub const CT_SETS_GLOBAL: &str = "xlb_ct_sets";
/// xlb_backend_stats' backends per CPU row (counters.h).
pub const BACKEND_SLOTS_GLOBAL: &str = "xlb_backend_slots";

/// Default bpffs directory of a node's pinned maps and links.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xlb";
/// Default [`LoadOptions::reply_rate`]: the kernel's own ICMP limit
/// (net.ipv4.icmp_msgs_per_sec), per CPU.
pub const DEFAULT_REPLY_RATE: u32 = 1000;
/// Default [`LoadOptions::reply_burst`] (net.ipv4.icmp_msgs_burst).
pub const DEFAULT_REPLY_BURST: u32 = 50;
/// Default [`LoadOptions::ct_insert_rate`]: Katran's default max_conn_rate,
/// per CPU.
pub const DEFAULT_CT_INSERT_RATE: u32 = 125_000;

/// Map sizes (max_entries). Configuration, not constants in the C code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Services (service ports): Maglev tables (of each size class),
    /// service statistics, names.
    pub services: u32,
    /// Frontends (address, port, protocol).
    pub frontends: u32,
    /// Backends, cluster-wide (backend ids and service-local indices, names
    /// and weights).
    pub backends: u32,
    /// Connection-table entries (flows), rounded up to whole sets of
    /// `abi::CT_WAYS` (lb/bpf/conntrack.h).
    pub ct: u32,
    /// ClientIP affinity entries (LRU).
    pub affinity: u32,
    /// DSR reverse translations on backend nodes (LRU).
    pub dsr_nat: u32,
    /// loadBalancerSourceRanges prefixes.
    pub source_ranges: u32,
    /// The xlb_events ring buffer, in bytes: a power of two, at least the
    /// page size, at most 1 GiB.
    pub events: u32,
    /// Pod addresses on this node (xlb_endpoints).
    pub endpoints: u32,
    /// Pod ranges of the cluster and tunnel peers (xlb_pod_routes,
    /// xlb_tunnel_peers).
    pub pod_routes: u32,
    /// Masquerade mappings, each way (xlb_snat, xlb_snat_rev; LRU).
    pub snat: u32,
    /// IPv4 datagrams whose later fragments can be followed at once (LRU).
    pub frags: u32,
    /// NetworkPolicy entries (xlb_policy; port ranges take one per
    /// prefix) and addresses with an identity (xlb_ip_identity).
    pub policy: u32,
    /// Connections NetworkPolicy tracks (xlb_policy_ct; LRU).
    pub policy_ct: u32,
    /// Translated sockets whose record is kept without an allocation
    /// (xlb_sock_cookie, preallocated: ~120 bytes each); beyond it a
    /// socket's record goes to socket storage (slower connect, counted as
    /// ok_sock_state_spill).
    pub sock_states: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            services: 16384,
            frontends: 65536,
            backends: 262144,
            ct: 524288,
            affinity: 131072,
            dsr_nat: 524288,
            source_ranges: 65536,
            events: events::DEFAULT_RING_BYTES,
            endpoints: 4096,
            pod_routes: 16384,
            snat: 131072,
            frags: 16384,
            policy: 262144,
            policy_ct: 262144,
            sock_states: 65536,
        }
    }
}

impl MapSizes {
    /// Small maps for tests and labs: fast to create, little memory.
    pub fn small() -> Self {
        MapSizes {
            services: 1024,
            frontends: 4096,
            backends: 16384,
            ct: 65536,
            affinity: 16384,
            dsr_nat: 65536,
            source_ranges: 4096,
            events: events::DEFAULT_RING_BYTES,
            endpoints: 1024,
            pod_routes: 1024,
            snat: 16384,
            frags: 1024,
            policy: 16384,
            policy_ct: 16384,
            sock_states: 4096,
        }
    }

    /// xlb_sock_mark's counters (sock/mark.h): [`MapSizes::sock_states`]
    /// rounded up to a power of two (the programs index it by the cookie's
    /// low bits), so at most one in this many sockets is a false positive
    /// per live record.
    pub fn sock_marks(&self) -> u32 {
        self.sock_states.max(1).checked_next_power_of_two().unwrap_or(1 << 31)
    }

    /// xlb_ct's sets: [`MapSizes::ct`] rounded up to whole sets.
    pub fn ct_sets(&self) -> u32 {
        self.ct.div_ceil(abi::CT_WAYS).max(1)
    }

    /// xlb_backend_stats' entries: a row of [`MapSizes::backends`] per
    /// possible CPU (lb/bpf/xlb_abi.h); None when that passes u32.
    pub fn backend_stats_entries(&self, cpus: u32) -> Option<u32> {
        self.backends.checked_mul(cpus)
    }

    fn by_map(&self, backend_stats: u32) -> Vec<(&'static str, u32)> {
        let classes = abi::MAGLEV_CLASSES.iter().map(|&c| (abi::maglev_map(c), self.services));
        [
            ("xlb_frontends", self.frontends),
            ("xlb_maglev", self.services),
            ("xlb_svc_names", self.services),
            ("xlb_svc_stats", self.services),
            ("xlb_svc_backend_ids", self.services),
            ("xlb_svc_backends", self.backends),
            ("xlb_backends", self.backends),
            ("xlb_backend_stats", backend_stats),
            ("xlb_backend_meta", self.backends),
            ("xlb_ct", self.ct_sets()),
            ("xlb_ct_tags", self.ct_sets()),
            ("xlb_affinity", self.affinity),
            ("xlb_dsr_nat", self.dsr_nat),
            ("xlb_source_ranges", self.source_ranges),
            ("xlb_tx_ports", 64),
            (events::RING_MAP, self.events),
            ("xlb_endpoints", self.endpoints),
            ("xlb_pod_routes", self.pod_routes),
            ("xlb_tunnel_peers", self.pod_routes),
            ("xlb_snat", self.snat),
            ("xlb_snat_rev", self.snat),
            ("xlb_sock_frontends", self.frontends),
            ("xlb_sock_affinity", self.affinity),
            ("xlb_sock_stats", self.services),
            ("xlb_sock_cookie", self.sock_states),
            ("xlb_sock_mark", self.sock_marks()),
            ("xlb_frag4", self.frags),
            ("xlb_policy", self.policy),
            ("xlb_policy_exact", self.policy),
            ("xlb_ip_identity", self.policy),
            ("xlb_policy_ep", self.endpoints),
            ("xlb_policy_ct", self.policy_ct),
        ]
        .into_iter()
        .chain(classes)
        .collect()
    }
}

/// What to load and where to pin it.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub pin_dir: PathBuf,
    pub sizes: MapSizes,
    /// The load-time constant `xlb_events_enabled` of both objects
    /// (events.h): false removes the event points from the programs
    /// altogether (the verifier prunes them), so no listener can turn them on.
    pub events_enabled: bool,
    /// Which sockets the socket programs translate (a load-time constant).
    pub sock_scope: SockScope,
    /// Keep a translated socket's first record in xlb_sock_cookie (a
    /// preallocated map keyed by socket cookie) and attach sock_release to
    /// delete it, instead of creating socket storage at connect (false).
    /// Halves connect4's own cost (~1.0 → ~0.45 µs). Every socket below the
    /// cgroup then runs sock_release, but a socket never translated is told
    /// apart by its mark (sock/mark.h: one array read, no hash lookup),
    /// there and in getpeername / recvmsg. On by default; the agent's
    /// `--socket-lb-records=storage` turns it off.
    pub sock_cookie_records: bool,
    /// Replies XDP may send per second per CPU (rejects of services without
    /// endpoints, ICMP too big); 0: none (packets are dropped instead).
    pub reply_rate: u32,
    /// Replies sent at once before the rate applies.
    pub reply_burst: u32,
    /// New connection-table entries per second per CPU (bursts of a tenth
    /// of a second); beyond it new flows are served by Maglev alone and
    /// evict nothing (the flood guard, maglev.h). 0: no limit.
    pub ct_insert_rate: u32,
    /// The kernel's features; None: probed at load ([`Features::probe`]).
    pub features: Option<Features>,
}

/// Which sockets below the hooked cgroup the socket programs translate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SockScope {
    /// Every socket, in any network namespace.
    #[default]
    All,
    /// Only sockets of the network namespace with this cookie (the node's:
    /// [`netns_cookie`]); pods' sockets are left alone (their sidecar
    /// proxies see the ClusterIP) and their packets take the per-packet path.
    HostOnly { netns_cookie: u64 },
}

impl LoadOptions {
    /// Small maps pinned under `pin_dir` (labs and tests: little memory,
    /// quick to create), events enabled.
    pub fn small(pin_dir: impl Into<PathBuf>) -> Self {
        LoadOptions { pin_dir: pin_dir.into(), sizes: MapSizes::small(), ..Default::default() }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            sizes: MapSizes::default(),
            events_enabled: true,
            sock_scope: SockScope::All,
            sock_cookie_records: true,
            reply_rate: DEFAULT_REPLY_RATE,
            reply_burst: DEFAULT_REPLY_BURST,
            ct_insert_rate: DEFAULT_CT_INSERT_RATE,
            features: None,
        }
    }
}

/// XDP attach mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (veth, most NICs): the fast path.
    #[default]
    Native,
    /// In the kernel stack after skb allocation: works everywhere, slow.
    Generic,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("creating pin directory {path}: {source}")]
    PinDir { path: PathBuf, source: io::Error },
    #[error("{path} is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs { path: PathBuf },
    #[error("loading the {object} object: {source}")]
    Object { object: &'static str, source: Box<EbpfError> },
    #[error("probing kernel features: {source}")]
    Probe { source: ProbeError },
    #[error("program {program} is missing from the {object} object")]
    MissingProgram { object: &'static str, program: &'static str },
    #[error("program {program}: {source}")]
    Program { program: &'static str, source: Box<ProgramError> },
    #[error("attaching {program} to {iface}: {source}")]
    Attach { program: &'static str, iface: String, source: Box<ProgramError> },
    #[error("link pin {path}: {detail}")]
    LinkPin { path: PathBuf, detail: String },
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: Box<MapError> },
    #[error(
        "MapSizes.events = {bytes}: the {map} ring buffer wants a power of two from {min} \
         (the page size) to {max} bytes"
    )]
    RingSize { map: &'static str, bytes: u32, min: u32, max: u32 },
    #[error("possible CPUs (/sys/devices/system/cpu/possible): {source}")]
    Cpus { source: io::Error },
    #[error(
        "xlb_backend_stats: {backends} backends x {cpus} possible CPUs passes a map's 2^32 \
         entries; lower MapSizes.backends"
    )]
    BackendStatsSize { backends: u32, cpus: u32 },
    #[error("replacing {path} (pinned with another size): {source}")]
    StaleMapReplace { path: PathBuf, source: io::Error },
    #[error("{path}: the xlb agent has not pinned the pod programs ({detail}); is `xlb run --pod-network` running?")]
    NotReady { path: PathBuf, detail: String },
}

const XDP_PROG: &str = "xlb_xdp";
const TC_INGRESS: &str = "xlb_tc_ingress";
const TC_EGRESS: &str = "xlb_tc_egress";
const POD_FROM: &str = "xlb_pod_from";
const POD_TO: &str = "xlb_pod_to";

/// The programs of a pod's host-side veth: (program, direction, pin name).
/// The agent pins them under `<pin dir>/progs/`; xlb-cni attaches them
/// ([`attach_pod`]); the links are pinned as `links/pod_from_<veth>` and
/// `links/pod_to_<veth>`.
const POD_PROGRAMS: [(&str, TcAttachType, &str); 2] =
    [(POD_FROM, TcAttachType::Ingress, "pod_from"), (POD_TO, TcAttachType::Egress, "pod_to")];

/// Link pins of pods start with this: they belong to the pods (xlb-cni
/// makes and removes them), not to the agent.
const POD_LINK_PREFIX: &str = "pod_";
/// The socket programs (sock/xlb_sock.c), each named after its hook.
pub const SOCK_PROGRAMS: [&str; 8] = [
    "xlb_sock_connect4",
    "xlb_sock_connect6",
    "xlb_sock_sendmsg4",
    "xlb_sock_sendmsg6",
    "xlb_sock_recvmsg4",
    "xlb_sock_recvmsg6",
    "xlb_sock_getpeername4",
    "xlb_sock_getpeername6",
];
/// The cgroup/sock_release program (sock/xlb_sock.c): deletes a released
/// socket's xlb_sock_cookie entry. Attached beside [`SOCK_PROGRAMS`], at
/// the same cgroup, pinned and replaced and detached like them.
pub const SOCK_RELEASE_PROGRAM: &str = "xlb_sock_release";

/// The datapath objects, loaded, their maps pinned under `pin_dir`.
#[derive(Debug)]
pub struct Dataplane {
    xdp: Ebpf,
    tc: Ebpf,
    sock: Ebpf,
    pin_dir: PathBuf,
    features: Features,
    sock_cookie_records: bool,
}

fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; c is a valid C string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Name of the load-time constant that enables the event points (events.h).
const EVENTS_ENABLED_GLOBAL: &str = "xlb_events_enabled";

/// Name of the load-time constant of host-only socket translation (sock/xlate.h).
const SOCK_HOST_NETNS_GLOBAL: &str = "xlb_sock_host_netns";
/// Name of the load-time constant of [`LoadOptions::sock_cookie_records`].
const SOCK_COOKIE_ON_GLOBAL: &str = "xlb_sock_cookie_on";
/// Name of the load-time constant indexing xlb_sock_mark (sock/mark.h).
const SOCK_MARK_MASK_GLOBAL: &str = "xlb_sock_mark_mask";

/// A load-time constant of one object (`volatile const` in its .rodata).
#[derive(Clone, Copy)]
enum Global {
    U32(&'static str, u32),
    U64(&'static str, u64),
}

fn load_object(
    opts: &LoadOptions,
    backend_stats: u32,
    object: &'static str,
    bytes: &[u8],
    globals: &[Global],
) -> Result<Ebpf, LoadError> {
    let sizes = opts.sizes.by_map(backend_stats);
    let events_enabled = u32::from(opts.events_enabled);
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(&opts.pin_dir);
    for (name, size) in sizes.iter() {
        loader.map_max_entries(name, *size);
    }
    // must_exist: every object includes events.h; a missing constant is a build bug.
    loader.override_global(EVENTS_ENABLED_GLOBAL, &events_enabled, true);
    for g in globals {
        match g {
            Global::U32(name, v) => loader.override_global(name, v, true),
            Global::U64(name, v) => loader.override_global(name, v, true),
        };
    }
    loader.load(bytes).map_err(|e| LoadError::Object { object, source: Box::new(e) })
}

/// The kernel's possible CPUs (what per-CPU maps and
/// bpf_get_smp_processor_id() range over).
pub fn possible_cpus() -> Result<u32, LoadError> {
    let n = aya::util::nr_cpus().map_err(|(_, source)| LoadError::Cpus { source })?;
    u32::try_from(n).map_err(|_| LoadError::Cpus { source: io::Error::other(format!("{n} CPUs")) })
}

/// The row width ([`BACKEND_SLOTS_GLOBAL`]) of the xlb_backend_stats
/// pinned under `pin_dir`, when it is this build's ARRAY of a row per CPU
/// (for tools loading programs on maps pinned by an agent).
pub fn pinned_backend_slots(pin_dir: &Path) -> Option<u32> {
    let info = MapData::from_pin(pin_dir.join("xlb_backend_stats")).ok()?.info().ok()?;
    let cpus = possible_cpus().ok()?;
    (info.map_type().ok()? == MapType::Array).then(|| info.max_entries() / cpus)
}

/// xlb_backend_stats' entries for `opts` on this kernel (one row of
/// backends per possible CPU).
fn backend_stats_entries(opts: &LoadOptions) -> Result<u32, LoadError> {
    let cpus = possible_cpus()?;
    let backends = opts.sizes.backends;
    opts.sizes.backend_stats_entries(cpus).ok_or(LoadError::BackendStatsSize { backends, cpus })
}

/// Checks the ring buffer size, then unpins every map that holds no state
/// worth keeping and was pinned with another size or type than this build
/// wants (the ring buffer of another `sizes.events`; xlb_counters of an
/// older layout; xlb_backend_stats of another number of backends or CPUs,
/// or the PERCPU_ARRAY before #14), so that loading creates it anew: the
/// loader reuses whatever is pinned under a map's name, and a program would
/// otherwise index past the end of an old counters map and lose its counts. The ring holds only
/// events not yet read; the counters restart from zero, which Prometheus
/// reads as a counter reset. Programs attached by an earlier agent keep the
/// maps they were loaded with until replaced.
fn prepare_stateless_maps(opts: &LoadOptions, backend_stats: u32) -> Result<(), LoadError> {
    const MAX: u32 = 1 << 30;
    let bytes = opts.sizes.events;
    let min = page_size();
    if !bytes.is_power_of_two() || !(min..=MAX).contains(&bytes) {
        return Err(LoadError::RingSize { map: events::RING_MAP, bytes, min, max: MAX });
    }
    // xlb_ct too: its programs index it by its number of sets, and a table
    // of another size or layout (the LRU hash before sets) cannot be
    // reused; its flows re-pick with Maglev (the same backend while the
    // service's table is unchanged).
    let ct_set = std::mem::size_of::<abi::CtSet>() as u32;
    let array = Some(MapType::Array);
    for (map, want, value_size, map_type) in [
        (events::RING_MAP, bytes, None, None),
        ("xlb_counters", abi::COUNTER_MAX, None, None),
        ("xlb_ct", opts.sizes.ct_sets(), Some(ct_set), None),
        ("xlb_backend_stats", backend_stats, None, array),
    ] {
        let path = opts.pin_dir.join(map);
        let pinned = MapData::from_pin(&path).ok().and_then(|d| d.info().ok());
        let stale = |i: &MapInfo| {
            i.max_entries() != want
                || value_size.is_some_and(|v| v != i.value_size())
                || map_type.is_some_and(|t| i.map_type().ok() != Some(t))
        };
        match pinned {
            Some(i) if stale(&i) => std::fs::remove_file(&path)
                .map_err(|source| LoadError::StaleMapReplace { path, source })?,
            _ => {}
        }
    }
    Ok(())
}

/// xlb_ct_tags goes with xlb_ct (conntrack.h: a lookup reads only the
/// ways whose tag matches): a tags map pinned without xlb_ct, or with
/// another number of sets, is unpinned. Returns whether the tags must be
/// rebuilt from the ways once the maps are created: xlb_ct is kept but has
/// no tags (an agent before the tags wrote it), else its flows would all
/// miss and re-pick with Maglev.
fn prepare_ct_tags(opts: &LoadOptions) -> Result<bool, LoadError> {
    let ct = opts.pin_dir.join("xlb_ct");
    let path = opts.pin_dir.join("xlb_ct_tags");
    let ct_kept = MapData::from_pin(&ct).is_ok();
    let pinned = MapData::from_pin(&path).ok().and_then(|d| d.info().ok());
    match pinned.map(|i| i.max_entries()) {
        Some(n) if !ct_kept || n != opts.sizes.ct_sets() => {
            std::fs::remove_file(&path)
                .map_err(|source| LoadError::StaleMapReplace { path, source })?;
            Ok(ct_kept)
        }
        Some(_) => Ok(false),
        None => Ok(ct_kept),
    }
}

/// A program load, again while the kernel answers EAGAIN: the verifier
/// gives up with EAGAIN when a signal is pending on the loading thread
/// (kernel/bpf/verifier.c, do_check), which a long verification (XDP, tc:
/// seconds on a loaded machine) meets; libbpf retries the same way
/// (PROG_LOAD_ATTEMPTS, 5). Seen in the lab tests at load average 7.
fn retry_eagain(
    mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<(), aya::programs::ProgramError> {
    const ATTEMPTS: usize = 5;
    let mut attempt = 1;
    loop {
        match load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.kind() == io::ErrorKind::WouldBlock && attempt < ATTEMPTS =>
            {
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// xlb_sock_cookie and xlb_sock_mark are kept or created together: a
/// counter must never be below the records at its index (sock/mark.h), and
/// records that programs of an older build wrote without raising a counter
/// (or counters of another size, indexed by other bits) break that. So when
/// xlb_sock_mark is not pinned, or pinned with another size, both pins go
/// and loading creates both empty. The records lost are those of sockets
/// translated by such an older agent in cookie-record mode: they keep their
/// backend; getpeername/recvmsg then show it instead of the service
/// address, and their sweep removes nothing (no live socket is lost).
fn prepare_sock_records(opts: &LoadOptions) -> Result<(), LoadError> {
    let marks = opts.pin_dir.join("xlb_sock_mark");
    let pinned = MapData::from_pin(&marks).ok().and_then(|d| d.info().ok());
    if pinned.is_some_and(|i| i.max_entries() == opts.sizes.sock_marks()) {
        return Ok(());
    }
    for path in [marks, opts.pin_dir.join("xlb_sock_cookie")] {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(LoadError::StaleMapReplace { path, source: e })
            }
            _ => {}
        }
    }
    Ok(())
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(n).unwrap_or(4096)
}

/// The datapath objects with their maps created (or reused) and pinned, the
/// programs not yet through the verifier: the reconciler may fill the maps
/// while [`Staged::load_programs`] runs (on another thread: the verifier
/// takes the better part of a second, map creation a few hundred ms at
/// GKE's map sizes).
#[derive(Debug)]
pub struct Staged {
    xdp: Ebpf,
    tc: Ebpf,
    sock: Ebpf,
    pin_dir: PathBuf,
    features: Features,
    sock_cookie_records: bool,
}

impl Staged {
    /// Loads every program into the kernel (verified, not attached).
    pub fn load_programs(self) -> Result<Dataplane, LoadError> {
        let Staged { mut xdp, mut tc, mut sock, pin_dir, features, sock_cookie_records } = self;
        let prog = program_mut::<Xdp>(&mut xdp, "xdp", XDP_PROG)?;
        retry_eagain(|| prog.load())
            .map_err(|e| LoadError::Program { program: XDP_PROG, source: Box::new(e) })?;
        for p in [TC_INGRESS, TC_EGRESS, POD_FROM, POD_TO] {
            let prog = program_mut::<SchedClassifier>(&mut tc, "tc", p)?;
            retry_eagain(|| prog.load())
                .map_err(|e| LoadError::Program { program: p, source: Box::new(e) })?;
        }
        for p in SOCK_PROGRAMS {
            let prog = program_mut::<CgroupSockAddr>(&mut sock, "sock", p)?;
            retry_eagain(|| prog.load())
                .map_err(|e| LoadError::Program { program: p, source: Box::new(e) })?;
        }
        let prog = program_mut::<CgroupSock>(&mut sock, "sock", SOCK_RELEASE_PROGRAM)?;
        retry_eagain(|| prog.load()).map_err(|e| LoadError::Program {
            program: SOCK_RELEASE_PROGRAM,
            source: Box::new(e),
        })?;
        Ok(Dataplane { xdp, tc, sock, pin_dir, features, sock_cookie_records })
    }
}

impl Dataplane {
    /// Loads the XDP and tc objects (programs loaded into the kernel, not yet
    /// attached). Maps already pinned under `pin_dir` are reused as they are:
    /// that is how established flows survive an agent restart.
    pub fn load(opts: &LoadOptions) -> Result<Dataplane, LoadError> {
        Dataplane::create_maps(opts)?.load_programs()
    }

    /// The first half of [`Dataplane::load`]: the objects parsed, their
    /// maps created (or the pinned ones reused) and pinned; the programs
    /// wait for [`Staged::load_programs`].
    pub fn create_maps(opts: &LoadOptions) -> Result<Staged, LoadError> {
        std::fs::create_dir_all(&opts.pin_dir)
            .map_err(|source| LoadError::PinDir { path: opts.pin_dir.clone(), source })?;
        if !is_bpffs(&opts.pin_dir) {
            return Err(LoadError::NotBpffs { path: opts.pin_dir.clone() });
        }
        let backend_stats = backend_stats_entries(opts)?;
        prepare_stateless_maps(opts, backend_stats)?;
        prepare_sock_records(opts)?;
        let rebuild_ct_tags = prepare_ct_tags(opts)?;
        let features = match opts.features {
            Some(f) => f,
            None => Features::probe().map_err(|source| LoadError::Probe { source })?,
        };
        let xdp_globals = [
            Global::U32("xlb_reply_rate", opts.reply_rate),
            Global::U32("xlb_reply_burst", opts.reply_burst),
            Global::U32(CT_INSERT_RATE_GLOBAL, opts.ct_insert_rate),
            Global::U32(CT_SETS_GLOBAL, opts.sizes.ct_sets()),
            Global::U32(BACKEND_SLOTS_GLOBAL, opts.sizes.backends),
        ];
        // ctx.h: the flag, or 0 where the kernel refuses it.
        let csum_flag = if features.csum_ipv6_flag { CSUM_IPV6_FLAG } else { 0 };
        let tc_globals = [
            Global::U64("xlb_csum_ipv6_flag", csum_flag),
            Global::U32(CT_INSERT_RATE_GLOBAL, opts.ct_insert_rate),
            Global::U32(CT_SETS_GLOBAL, opts.sizes.ct_sets()),
        ];
        let host_netns = match opts.sock_scope {
            SockScope::All => 0u64,
            SockScope::HostOnly { netns_cookie } => netns_cookie,
        };
        let sock_globals = [
            Global::U64(SOCK_HOST_NETNS_GLOBAL, host_netns),
            Global::U32(SOCK_COOKIE_ON_GLOBAL, u32::from(opts.sock_cookie_records)),
            Global::U32(SOCK_MARK_MASK_GLOBAL, opts.sizes.sock_marks() - 1),
        ];
        let xdp = load_object(opts, backend_stats, "xdp", objects::xdp(), &xdp_globals)?;
        if rebuild_ct_tags {
            let map_err = |source| LoadError::Map { map: "xlb_ct_tags", source: Box::new(source) };
            let ct = crate::maps::CtTable::open(&opts.pin_dir).map_err(|e| match e {
                crate::maps::MapsError::Open { source, .. }
                | crate::maps::MapsError::Op { source, .. } => map_err(*source),
            })?;
            ct.rebuild_tags().map_err(map_err)?;
        }
        let tc = load_object(opts, backend_stats, "tc", objects::tc(), &tc_globals)?;
        let sock = load_object(opts, backend_stats, "sock", objects::sock(), &sock_globals)?;
        Ok(Staged {
            xdp,
            tc,
            sock,
            pin_dir: opts.pin_dir.clone(),
            features,
            sock_cookie_records: opts.sock_cookie_records,
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The kernel features the objects were loaded for.
    pub fn features(&self) -> Features {
        self.features
    }

    fn link_path(&self, kind: &str, iface: &str) -> PathBuf {
        self.pin_dir.join("links").join(format!("{kind}_{iface}"))
    }

    /// Attaches the XDP program to `iface`. If a previous agent left a pinned
    /// link there, the program is replaced atomically through it (no packet
    /// sees an interface without a program); otherwise a new link is pinned.
    pub fn attach_xdp(&mut self, iface: &str, mode: XdpMode) -> Result<(), LoadError> {
        let path = self.link_path("xdp", iface);
        let prog = program_mut::<Xdp>(&mut self.xdp, "xdp", XDP_PROG)?;
        let attach_err =
            |e| LoadError::Attach { program: XDP_PROG, iface: iface.into(), source: Box::new(e) };
        let id = match PinnedLink::from_pin(&path) {
            Ok(old) => {
                let link = FdLink::from(old).try_into().map_err(|e| LoadError::LinkPin {
                    path: path.clone(),
                    detail: format!("{e}"),
                })?;
                prog.attach_to_link(link).map_err(attach_err)?
            }
            Err(_) => {
                let mode = match mode {
                    XdpMode::Native => AyaXdpMode::Driver,
                    XdpMode::Generic => AyaXdpMode::Skb,
                };
                prog.attach(iface, mode).map_err(attach_err)?
            }
        };
        let link = prog.take_link(id).map_err(attach_err)?;
        pin_link(link, &path)?;
        // XDP may redirect to any port it is attached to.
        let ifindex = ifindex(iface).ok_or_else(|| LoadError::LinkPin {
            path: path.clone(),
            detail: format!("no interface {iface}"),
        })?;
        let map_err = |source| LoadError::Map { map: "xlb_tx_ports", source: Box::new(source) };
        let mut ports: aya::maps::DevMapHash<MapData> =
            crate::maps::open_pinned(&self.pin_dir.join("xlb_tx_ports")).map_err(map_err)?;
        ports.insert(ifindex, ifindex, None, 0).map_err(|e| LoadError::LinkPin {
            path: self.pin_dir.join("xlb_tx_ports"),
            detail: e.to_string(),
        })?;
        Ok(())
    }

    /// Removes the XDP program an earlier agent pinned on `iface`, if any
    /// (an agent told to run without XDP).
    pub fn detach_xdp(&mut self, iface: &str) -> Result<(), LoadError> {
        let path = self.link_path("xdp", iface);
        match PinnedLink::from_pin(&path) {
            Ok(link) => link
                .unpin()
                .map(drop)
                .map_err(|e| LoadError::LinkPin { path, detail: e.to_string() }),
            Err(_) => Ok(()),
        }
    }

    /// Attaches the tc programs to `iface` ingress and egress (TCX links,
    /// pinned and atomically replaced like the XDP link).
    pub fn attach_tc(&mut self, iface: &str) -> Result<(), LoadError> {
        for (program, dir, kind) in [
            (TC_INGRESS, TcAttachType::Ingress, "tc_ingress"),
            (TC_EGRESS, TcAttachType::Egress, "tc_egress"),
        ] {
            let path = self.link_path(kind, iface);
            let prog = program_mut::<SchedClassifier>(&mut self.tc, "tc", program)?;
            tcx_attach(prog, program, iface, dir, &path)?;
        }
        Ok(())
    }

    /// Pins the pods' programs under `<pin dir>/progs/` for xlb-cni (a pin
    /// of an older agent is replaced), then moves every pod link already
    /// pinned (`links/pod_*`) to them atomically: an upgraded agent updates
    /// the pods that run. Returns how many pod links it moved.
    pub fn pin_pod_programs(&mut self) -> Result<usize, LoadError> {
        let dir = self.pin_dir.join(POD_PROGRAM_DIR);
        std::fs::create_dir_all(&dir)
            .map_err(|source| LoadError::PinDir { path: dir.clone(), source })?;
        let mut moved = 0;
        for (program, _, kind) in POD_PROGRAMS {
            let prog = program_mut::<SchedClassifier>(&mut self.tc, "tc", program)?;
            let path = dir.join(program);
            let _ = std::fs::remove_file(&path);
            prog.pin(&path).map_err(|e| LoadError::LinkPin {
                path: path.clone(),
                detail: format!("pinning the program: {e}"),
            })?;
            for link in pod_links(&self.pin_dir, kind) {
                let Ok(old) = PinnedLink::from_pin(&link) else { continue };
                let iface = link.file_name().map(|n| n.to_string_lossy().into_owned());
                let attach_err = |e| LoadError::Attach {
                    program,
                    iface: iface.clone().unwrap_or_default(),
                    source: Box::new(e),
                };
                let old: SchedClassifierLink = FdLink::from(old).try_into().map_err(|e| {
                    LoadError::LinkPin { path: link.clone(), detail: format!("{e}") }
                })?;
                let id = prog.attach_to_link(old).map_err(attach_err)?;
                // The pin stays: it is the same kernel link.
                drop(prog.take_link(id).map_err(attach_err)?);
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// Attaches the socket programs at `cgroup` (a cgroup v2 directory:
    /// every process below it is served, in whatever network namespace). As
    /// with the other hooks, a link a previous agent pinned is kept and its
    /// program replaced atomically (BPF_LINK_UPDATE): no connect() meets an
    /// untranslated moment. Links are pinned as links/sock_<program>; one
    /// cgroup per pin directory (a pinned link keeps the cgroup it was made
    /// for).
    pub fn attach_sock(&mut self, cgroup: &Path) -> Result<(), LoadError> {
        let cg = std::fs::File::open(cgroup)
            .map_err(|source| LoadError::PinDir { path: cgroup.to_path_buf(), source })?;
        let iface = cgroup.display().to_string();
        // sock_release first: no socket is translated before the program
        // that removes its record is in place. Without cookie records, a
        // release link an earlier agent pinned goes.
        let program = SOCK_RELEASE_PROGRAM;
        let path = self.link_path("sock", program.trim_start_matches("xlb_sock_"));
        let prog = program_mut::<CgroupSock>(&mut self.sock, "sock", program)?;
        let attach_err =
            |e| LoadError::Attach { program, iface: iface.clone(), source: Box::new(e) };
        if !self.sock_cookie_records {
            if let Ok(link) = PinnedLink::from_pin(&path) {
                link.unpin().map_err(|e| LoadError::LinkPin {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            }
        } else if !replace_pinned(&path, prog.fd().map_err(attach_err)?.as_fd().as_raw_fd())? {
            let id = prog.attach(&cg, CgroupAttachMode::Single).map_err(attach_err)?;
            let link = prog.take_link(id).map_err(attach_err)?;
            pin_link(link, &path)?;
        }
        for program in SOCK_PROGRAMS {
            let path = self.link_path("sock", program.trim_start_matches("xlb_sock_"));
            let prog = program_mut::<CgroupSockAddr>(&mut self.sock, "sock", program)?;
            let attach_err =
                |e| LoadError::Attach { program, iface: iface.clone(), source: Box::new(e) };
            if replace_pinned(&path, prog.fd().map_err(attach_err)?.as_fd().as_raw_fd())? {
                continue;
            }
            // A bpf_link on a cgroup always lets others attach beside it (the
            // kernel refuses link_create flags: "Single" passes none).
            let id = prog.attach(&cg, CgroupAttachMode::Single).map_err(attach_err)?;
            let link = prog.take_link(id).map_err(attach_err)?;
            pin_link(link, &path)?;
        }
        Ok(())
    }

    /// The socket program `name` (one of [`SOCK_PROGRAMS`]), for tests.
    pub fn sock_program(&mut self, name: &'static str) -> Result<&mut CgroupSockAddr, LoadError> {
        program_mut::<CgroupSockAddr>(&mut self.sock, "sock", name)
    }

    /// Removes every pinned link of the agent under this pin directory: the
    /// programs are detached from the node's interfaces (maps stay pinned).
    /// Pods' links stay: they are the pods' network, made and removed with
    /// the pods by xlb-cni.
    pub fn detach_all(pin_dir: &Path) -> Result<(), LoadError> {
        let dir = pin_dir.join("links");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(POD_LINK_PREFIX) {
                continue;
            }
            let path = e.path();
            let link = PinnedLink::from_pin(&path).map_err(|err| LoadError::LinkPin {
                path: path.clone(),
                detail: err.to_string(),
            })?;
            link.unpin().map_err(|err| LoadError::LinkPin {
                path: path.clone(),
                detail: err.to_string(),
            })?;
        }
        Ok(())
    }

    /// The XDP program (for BPF_PROG_TEST_RUN).
    pub fn xdp_program(&mut self) -> &mut Xdp {
        program_mut::<Xdp>(&mut self.xdp, "xdp", XDP_PROG).expect("loaded in Dataplane::load")
    }

    pub fn tc_ingress_program(&mut self) -> &mut SchedClassifier {
        program_mut::<SchedClassifier>(&mut self.tc, "tc", TC_INGRESS)
            .expect("loaded in Dataplane::load")
    }

    pub fn tc_egress_program(&mut self) -> &mut SchedClassifier {
        program_mut::<SchedClassifier>(&mut self.tc, "tc", TC_EGRESS)
            .expect("loaded in Dataplane::load")
    }

    /// The program of a pod's host veth, tc ingress (what the pod sends).
    pub fn pod_from_program(&mut self) -> &mut SchedClassifier {
        program_mut::<SchedClassifier>(&mut self.tc, "tc", POD_FROM)
            .expect("loaded in Dataplane::load")
    }

    /// The program of a pod's host veth, tc egress (what the stack delivers).
    pub fn pod_to_program(&mut self) -> &mut SchedClassifier {
        program_mut::<SchedClassifier>(&mut self.tc, "tc", POD_TO)
            .expect("loaded in Dataplane::load")
    }

    /// Every named counter, summed over CPUs and hooks.
    pub fn counters(&self) -> Result<Vec<(Counter, Count)>, LoadError> {
        read_counters(&self.pin_dir)
    }
}

/// Every named counter of the datapath pinned under `pin_dir`, summed over
/// CPUs and over the hooks it was counted at.
pub fn read_counters(pin_dir: &Path) -> Result<Vec<(Counter, Count)>, LoadError> {
    let by_hook = read_hook_counters(pin_dir)?;
    Ok(Counter::ALL
        .iter()
        .map(|c| {
            let sum = by_hook.iter().filter(|(_, k, _)| k == c).fold(
                Count { packets: 0, bytes: 0 },
                |a, (_, _, v)| Count { packets: a.packets + v.packets, bytes: a.bytes + v.bytes },
            );
            (*c, sum)
        })
        .collect())
}

/// Every named counter at every hook, summed over CPUs (zeros included).
pub fn read_hook_counters(pin_dir: &Path) -> Result<Vec<(Hook, Counter, Count)>, LoadError> {
    let map_err = |source| LoadError::Map { map: "xlb_counters", source: Box::new(source) };
    let arr: PerCpuArray<MapData, Count> =
        crate::maps::open_pinned(&pin_dir.join("xlb_counters")).map_err(map_err)?;
    let mut out = Vec::with_capacity(Hook::ALL.len() * Counter::ALL.len());
    for h in Hook::ALL {
        for c in Counter::ALL {
            let per_cpu = arr.get(&h.slot(*c), 0).map_err(map_err)?;
            let sum = per_cpu.iter().fold(Count { packets: 0, bytes: 0 }, |a, v| Count {
                packets: a.packets + v.packets,
                bytes: a.bytes + v.bytes,
            });
            out.push((*h, *c, sum));
        }
    }
    Ok(out)
}

/// Where the agent pins the pods' programs (under its pin directory).
pub const POD_PROGRAM_DIR: &str = "progs";

/// The pinned links of kind `kind` ("pod_from", "pod_to") of every pod.
fn pod_links(pin_dir: &Path, kind: &str) -> Vec<PathBuf> {
    let prefix = format!("{kind}_");
    let Ok(entries) = std::fs::read_dir(pin_dir.join("links")) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// Attaches `prog` to `iface` in `dir` through TCX, the link pinned at
/// `path`; when a link is pinned there already its program is replaced
/// atomically (no packet sees the interface without a program).
fn tcx_attach(
    prog: &mut SchedClassifier,
    program: &'static str,
    iface: &str,
    dir: TcAttachType,
    path: &Path,
) -> Result<(), LoadError> {
    let attach_err = |e| LoadError::Attach { program, iface: iface.into(), source: Box::new(e) };
    let id = match PinnedLink::from_pin(path) {
        Ok(old) => {
            let link: SchedClassifierLink = FdLink::from(old).try_into().map_err(|e| {
                LoadError::LinkPin { path: path.to_path_buf(), detail: format!("{e}") }
            })?;
            prog.attach_to_link(link).map_err(attach_err)?
        }
        Err(_) => prog
            .attach_with_options(iface, dir, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(attach_err)?,
    };
    let link = prog.take_link(id).map_err(attach_err)?;
    pin_link(link, path)
}

/// Attaches the pods' programs pinned by the agent under `pin_dir` to the
/// host-side veth `iface` (xlb-cni, on ADD), links pinned beside the
/// agent's. Fails with [`LoadError::NotReady`] when the agent has not
/// pinned them (not running, or not with the pod network).
pub fn attach_pod(pin_dir: &Path, iface: &str) -> Result<(), LoadError> {
    for (program, dir, kind) in POD_PROGRAMS {
        let path = pin_dir.join(POD_PROGRAM_DIR).join(program);
        let mut prog = SchedClassifier::from_pin(&path)
            .map_err(|e| LoadError::NotReady { path: path.clone(), detail: e.to_string() })?;
        let link = pin_dir.join("links").join(format!("{kind}_{iface}"));
        tcx_attach(&mut prog, program, iface, dir, &link)?;
    }
    Ok(())
}

/// Removes the pinned links of pod veth `iface` (xlb-cni, on DEL); the
/// programs leave the veth with them (or went with the veth). Absent pins
/// are fine.
pub fn detach_pod(pin_dir: &Path, iface: &str) -> Result<(), LoadError> {
    for (_, _, kind) in POD_PROGRAMS {
        let path = pin_dir.join("links").join(format!("{kind}_{iface}"));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(LoadError::LinkPin { path, detail: format!("unpinning: {e}") }),
        }
    }
    Ok(())
}

/// Whether the agent has pinned the pods' programs under `pin_dir`.
pub fn pod_programs_pinned(pin_dir: &Path) -> bool {
    POD_PROGRAMS.iter().all(|(p, _, _)| pin_dir.join(POD_PROGRAM_DIR).join(p).exists())
}

/// BPF_OBJ_GET: the object pinned at `path`.
fn obj_get(path: &Path) -> io::Result<std::os::fd::OwnedFd> {
    const BPF_OBJ_GET: libc::c_long = 7;
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        pad: u32,
    }
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let attr =
        ObjGetAttr { pathname: c.as_ptr() as u64, bpf_fd: 0, file_flags: 0, path_fd: 0, pad: 0 };
    // SAFETY: attr is the kernel's obj_get layout and points at a valid C
    // string for the call; a returned fd is ours to own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGetAttr,
            std::mem::size_of::<ObjGetAttr>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd from the kernel.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// BPF_LINK_UPDATE: the link runs `prog_fd` from now on (atomically).
fn link_update(link_fd: i32, prog_fd: i32) -> io::Result<()> {
    const BPF_LINK_UPDATE: libc::c_long = 29;
    #[repr(C)]
    struct LinkUpdateAttr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let attr = LinkUpdateAttr {
        link_fd: link_fd as u32,
        new_prog_fd: prog_fd as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: the attr struct is the kernel's link_update layout, valid for
    // the call; the fds are open.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_UPDATE,
            &attr as *const LinkUpdateAttr,
            std::mem::size_of::<LinkUpdateAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The cgroup v2 mount point, from /proc/self/mountinfo (`/sys/fs/cgroup`
/// on a unified host, `/sys/fs/cgroup/unified` on a hybrid one): the root
/// the agent attaches the socket programs at. None: no cgroup2 mounted.
pub fn cgroup2_root() -> io::Result<Option<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(cgroup2_in_mountinfo(&info))
}

/// The first cgroup2 mount point of a mountinfo text.
pub fn cgroup2_in_mountinfo(info: &str) -> Option<PathBuf> {
    info.lines().find_map(|line| {
        // "id parent maj:min root mountpoint opts [optional...] - fstype source superopts"
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        let point = pre.split(' ').nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mountinfo(point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The cookie of the calling thread's network namespace (SO_NETNS_COOKIE,
/// Linux 5.14): what bpf_get_netns_cookie() returns for its sockets.
pub fn netns_cookie() -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: a datagram socket, closed by OwnedFd; getsockopt writes at
    // most `len` bytes into `cookie`.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut cookie = 0u64;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        );
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(cookie)
    }
}

fn ifindex(iface: &str) -> Option<u32> {
    let c = std::ffi::CString::new(iface).ok()?;
    // SAFETY: c is a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Replaces the program of the link a previous agent pinned at `path`
/// (BPF_LINK_UPDATE) with `prog_fd`; false: nothing pinned there.
fn replace_pinned(path: &Path, prog_fd: i32) -> Result<bool, LoadError> {
    let Ok(old) = obj_get(path) else {
        return Ok(false);
    };
    link_update(old.as_raw_fd(), prog_fd).map_err(|e| LoadError::LinkPin {
        path: path.to_path_buf(),
        detail: format!("replacing the program: {e}"),
    })?;
    Ok(true)
}

/// Pins `link` (any link aya can turn into an FdLink) at `path`, unless
/// a pin is already there (then the same kernel link is pinned).
fn pin_link<L>(link: L, path: &Path) -> Result<(), LoadError>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    let fd = FdLink::try_from(link)
        .map_err(|e| LoadError::LinkPin { path: path.to_path_buf(), detail: format!("{e}") })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|source| LoadError::PinDir { path: dir.to_path_buf(), source })?;
    }
    // Replacing through an old pinned link keeps the same link (and pin): only
    // pin when there is none yet.
    if path.exists() {
        // The link object is the same kernel link as the pinned one; dropping
        // our fd leaves the pin (and the attachment) in place.
        drop(fd);
        return Ok(());
    }
    fd.pin(path)
        .map(|_| ())
        .map_err(|e| LoadError::LinkPin { path: path.to_path_buf(), detail: e.to_string() })
}

fn program_mut<'a, T>(
    bpf: &'a mut Ebpf,
    object: &'static str,
    program: &'static str,
) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    bpf.program_mut(program)
        .and_then(|p| p.try_into().ok())
        .ok_or(LoadError::MissingProgram { object, program })
}
