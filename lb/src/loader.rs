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
    events, objects,
};

/// Default bpffs directory of a node's pinned maps and links.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xlb";

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
    /// Pod addresses on this node (xlb_endpoints).
    pub endpoints: u32,
    /// Pod ranges of the cluster and tunnel peers (xlb_pod_routes,
    /// xlb_tunnel_peers).
    pub pod_routes: u32,
    /// Masquerade mappings, each way (xlb_snat, xlb_snat_rev; LRU).
    pub snat: u32,
    /// NetworkPolicy entries (xlb_policy; port ranges take one per
    /// prefix) and addresses with an identity (xlb_ip_identity).
    pub policy: u32,
    /// Connections NetworkPolicy tracks (xlb_policy_ct; LRU).
    pub policy_ct: u32,
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
            policy: 262144,
            policy_ct: 262144,
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
            policy: 16384,
            policy_ct: 16384,
        }
    }

    fn by_map(&self) -> [(&'static str, u32); 23] {
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
            ("xlb_endpoints", self.endpoints),
            ("xlb_pod_routes", self.pod_routes),
            ("xlb_tunnel_peers", self.pod_routes),
            ("xlb_snat", self.snat),
            ("xlb_snat_rev", self.snat),
            ("xlb_policy", self.policy),
            ("xlb_ip_identity", self.policy),
            ("xlb_policy_ep", self.endpoints),
            ("xlb_policy_ct", self.policy_ct),
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

/// Both datapath objects, loaded, their maps pinned under `pin_dir`.
#[derive(Debug)]
pub struct Dataplane {
    xdp: Ebpf,
    tc: Ebpf,
    pin_dir: PathBuf,
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

fn load_object(opts: &LoadOptions, object: &'static str, bytes: &[u8]) -> Result<Ebpf, LoadError> {
    let sizes = opts.sizes.by_map();
    let events_enabled = u32::from(opts.events_enabled);
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(&opts.pin_dir);
    for (name, size) in sizes.iter() {
        loader.map_max_entries(name, *size);
    }
    // must_exist: both objects include events.h; a missing constant is a build bug.
    loader.override_global(EVENTS_ENABLED_GLOBAL, &events_enabled, true);
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
        let mut xdp = load_object(opts, "xdp", objects::xdp())?;
        let mut tc = load_object(opts, "tc", objects::tc())?;
        program_mut::<Xdp>(&mut xdp, "xdp", XDP_PROG)?
            .load()
            .map_err(|e| LoadError::Program { program: XDP_PROG, source: Box::new(e) })?;
        for p in [TC_INGRESS, TC_EGRESS, POD_FROM, POD_TO] {
            program_mut::<SchedClassifier>(&mut tc, "tc", p)?
                .load()
                .map_err(|e| LoadError::Program { program: p, source: Box::new(e) })?;
        }
        Ok(Dataplane { xdp, tc, pin_dir: opts.pin_dir.clone() })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
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
    let fd: FdLink = link
        .try_into()
        .map_err(|e| LoadError::LinkPin { path: path.to_path_buf(), detail: format!("{e}") })?;
    pin_link(fd, path)
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
