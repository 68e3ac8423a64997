//! Loading and attaching the datapath: both embedded objects (XDP and tc) are
//! loaded with configured map sizes, their maps pinned by name under one
//! directory (so the two objects share them and a restarted agent finds them),
//! and attached through pinned links that a new agent replaces atomically.
use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, MapError, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode as AyaXdpMode,
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

/// Default bpffs directory of a node's pinned maps and links.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xlb";
/// Default [`LoadOptions::reply_rate`]: the kernel's own ICMP limit
/// (net.ipv4.icmp_msgs_per_sec), per CPU.
pub const DEFAULT_REPLY_RATE: u32 = 1000;
/// Default [`LoadOptions::reply_burst`] (net.ipv4.icmp_msgs_burst).
pub const DEFAULT_REPLY_BURST: u32 = 50;

/// Map sizes (max_entries). Configuration, not constants in the C code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Services (service ports): Maglev tables, service statistics, names.
    pub services: u32,
    /// Frontends (address, port, protocol).
    pub frontends: u32,
    /// Backends, cluster-wide (backend ids and service-local indices, names
    /// and weights).
    pub backends: u32,
    /// Connection-table entries (LRU).
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
    /// IPv4 datagrams whose later fragments can be followed at once (LRU).
    pub frags: u32,
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
            frags: 16384,
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
            frags: 1024,
        }
    }

    fn by_map(&self) -> [(&'static str, u32); 15] {
        [
            ("xlb_frontends", self.frontends),
            ("xlb_maglev", self.services),
            ("xlb_svc_names", self.services),
            ("xlb_svc_stats", self.services),
            ("xlb_svc_backends", self.backends),
            ("xlb_backends", self.backends),
            ("xlb_backend_stats", self.backends),
            ("xlb_backend_meta", self.backends),
            ("xlb_ct", self.ct),
            ("xlb_affinity", self.affinity),
            ("xlb_dsr_nat", self.dsr_nat),
            ("xlb_source_ranges", self.source_ranges),
            ("xlb_tx_ports", 64),
            (events::RING_MAP, self.events),
            ("xlb_frag4", self.frags),
        ]
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
    /// Replies XDP may send per second per CPU (rejects of services without
    /// endpoints, ICMP too big); 0: none (packets are dropped instead).
    pub reply_rate: u32,
    /// Replies sent at once before the rate applies.
    pub reply_burst: u32,
    /// The kernel's features; None: probed at load ([`Features::probe`]).
    pub features: Option<Features>,
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
            reply_rate: DEFAULT_REPLY_RATE,
            reply_burst: DEFAULT_REPLY_BURST,
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
    #[error("replacing {path} (pinned with another size): {source}")]
    StaleMapReplace { path: PathBuf, source: io::Error },
}

const XDP_PROG: &str = "xlb_xdp";
const TC_INGRESS: &str = "xlb_tc_ingress";
const TC_EGRESS: &str = "xlb_tc_egress";

/// Both datapath objects, loaded, their maps pinned under `pin_dir`.
#[derive(Debug)]
pub struct Dataplane {
    xdp: Ebpf,
    tc: Ebpf,
    pin_dir: PathBuf,
    features: Features,
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

/// A load-time constant of one object (`volatile const` in its .rodata).
#[derive(Clone, Copy)]
enum Global {
    U32(&'static str, u32),
    U64(&'static str, u64),
}

fn load_object(
    opts: &LoadOptions,
    object: &'static str,
    bytes: &[u8],
    globals: &[Global],
) -> Result<Ebpf, LoadError> {
    let sizes = opts.sizes.by_map();
    let events_enabled = u32::from(opts.events_enabled);
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(&opts.pin_dir);
    for (name, size) in sizes.iter() {
        loader.map_max_entries(name, *size);
    }
    // must_exist: both objects include events.h; a missing constant is a build bug.
    loader.override_global(EVENTS_ENABLED_GLOBAL, &events_enabled, true);
    for g in globals {
        match g {
            Global::U32(name, v) => loader.override_global(name, v, true),
            Global::U64(name, v) => loader.override_global(name, v, true),
        };
    }
    loader.load(bytes).map_err(|e| LoadError::Object { object, source: Box::new(e) })
}

/// Checks the ring buffer size, then unpins every map that holds no state
/// worth keeping and was pinned with another size than this build wants
/// (the ring buffer of another `sizes.events`; xlb_counters of an older
/// layout), so that loading creates it anew: the loader reuses whatever is
/// pinned under a map's name, and a program would otherwise index past the
/// end of an old counters map and lose its counts. The ring holds only
/// events not yet read; the counters restart from zero, which Prometheus
/// reads as a counter reset. Programs attached by an earlier agent keep the
/// maps they were loaded with until replaced.
fn prepare_stateless_maps(opts: &LoadOptions) -> Result<(), LoadError> {
    const MAX: u32 = 1 << 30;
    let bytes = opts.sizes.events;
    let min = page_size();
    if !bytes.is_power_of_two() || !(min..=MAX).contains(&bytes) {
        return Err(LoadError::RingSize { map: events::RING_MAP, bytes, min, max: MAX });
    }
    for (map, want) in [(events::RING_MAP, bytes), ("xlb_counters", abi::COUNTER_MAX)] {
        let path = opts.pin_dir.join(map);
        let pinned = MapData::from_pin(&path).ok().and_then(|d| d.info().ok());
        match pinned.map(|i| i.max_entries()) {
            Some(n) if n != want => std::fs::remove_file(&path)
                .map_err(|source| LoadError::StaleMapReplace { path, source })?,
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

impl Dataplane {
    /// Loads the XDP and tc objects (programs loaded into the kernel, not yet
    /// attached). Maps already pinned under `pin_dir` are reused as they are:
    /// that is how established flows survive an agent restart.
    pub fn load(opts: &LoadOptions) -> Result<Dataplane, LoadError> {
        std::fs::create_dir_all(&opts.pin_dir)
            .map_err(|source| LoadError::PinDir { path: opts.pin_dir.clone(), source })?;
        if !is_bpffs(&opts.pin_dir) {
            return Err(LoadError::NotBpffs { path: opts.pin_dir.clone() });
        }
        prepare_stateless_maps(opts)?;
        let features = match opts.features {
            Some(f) => f,
            None => Features::probe().map_err(|source| LoadError::Probe { source })?,
        };
        let xdp_globals = [
            Global::U32("xlb_reply_rate", opts.reply_rate),
            Global::U32("xlb_reply_burst", opts.reply_burst),
        ];
        // ctx.h: the flag, or 0 where the kernel refuses it.
        let csum_flag = if features.csum_ipv6_flag { CSUM_IPV6_FLAG } else { 0 };
        let tc_globals = [Global::U64("xlb_csum_ipv6_flag", csum_flag)];
        let mut xdp = load_object(opts, "xdp", objects::xdp(), &xdp_globals)?;
        let mut tc = load_object(opts, "tc", objects::tc(), &tc_globals)?;
        program_mut::<Xdp>(&mut xdp, "xdp", XDP_PROG)?
            .load()
            .map_err(|e| LoadError::Program { program: XDP_PROG, source: Box::new(e) })?;
        for p in [TC_INGRESS, TC_EGRESS] {
            program_mut::<SchedClassifier>(&mut tc, "tc", p)?
                .load()
                .map_err(|e| LoadError::Program { program: p, source: Box::new(e) })?;
        }
        Ok(Dataplane { xdp, tc, pin_dir: opts.pin_dir.clone(), features })
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
        let fd: FdLink = link
            .try_into()
            .map_err(|e| LoadError::LinkPin { path: path.clone(), detail: format!("{e}") })?;
        pin_link(fd, &path)?;
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

    /// Attaches the tc programs to `iface` ingress and egress (TCX links,
    /// pinned and atomically replaced like the XDP link).
    pub fn attach_tc(&mut self, iface: &str) -> Result<(), LoadError> {
        for (program, dir, kind) in [
            (TC_INGRESS, TcAttachType::Ingress, "tc_ingress"),
            (TC_EGRESS, TcAttachType::Egress, "tc_egress"),
        ] {
            let path = self.link_path(kind, iface);
            let prog = program_mut::<SchedClassifier>(&mut self.tc, "tc", program)?;
            let attach_err =
                |e| LoadError::Attach { program, iface: iface.into(), source: Box::new(e) };
            let id = match PinnedLink::from_pin(&path) {
                Ok(old) => {
                    let link: SchedClassifierLink = FdLink::from(old).try_into().map_err(|e| {
                        LoadError::LinkPin { path: path.clone(), detail: format!("{e}") }
                    })?;
                    prog.attach_to_link(link).map_err(attach_err)?
                }
                Err(_) => prog
                    .attach_with_options(
                        iface,
                        dir,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(attach_err)?,
            };
            let link = prog.take_link(id).map_err(attach_err)?;
            let fd: FdLink = link
                .try_into()
                .map_err(|e| LoadError::LinkPin { path: path.clone(), detail: format!("{e}") })?;
            pin_link(fd, &path)?;
        }
        Ok(())
    }

    /// Removes every pinned link of this pin directory: the programs are
    /// detached from their interfaces (maps stay pinned).
    pub fn detach_all(pin_dir: &Path) -> Result<(), LoadError> {
        let dir = pin_dir.join("links");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for e in entries.flatten() {
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

fn ifindex(iface: &str) -> Option<u32> {
    let c = std::ffi::CString::new(iface).ok()?;
    // SAFETY: c is a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

fn pin_link(fd: FdLink, path: &Path) -> Result<(), LoadError> {
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
