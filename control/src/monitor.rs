//! `xlb monitor`: prints the datapath's event stream live (new flow →
//! backend chosen, drop with its reason), filtered by service, address and
//! reason, as text or JSON lines. Reads the pinned xlb_events ring buffer
//! through [`lb::events`] (this module decides what to ask for and prints;
//! lb reads and writes the maps).
//!
//! Listener protocol (events.h): the programs build events only while
//! xlb_events_cfg.mask asks for them. A monitor sets the mask and a lease
//! (CLOCK_MONOTONIC expiry, [`LEASE`] ahead) and renews it every second;
//! it clears the mask when it exits. If it is killed, the agent's
//! housekeeping ([`expire_lease`]) clears the mask once the lease has run
//! out, so the fast path goes back to its no-listener cost within
//! [`LEASE`]. A BPF ring buffer has one consumer position: two readers
//! would steal each other's events, so one monitor per node runs at a time
//! (an exclusive lock, [`ReaderLock`]); fanning events out to several
//! clients would be the agent's job.
//!
//! Also the event status the metrics collector and `xlb stats` report.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::Args;
pub use lb::events::monotonic_ns;
use lb::{
    abi::{self, Counter, Event, EventsCfg},
    events::{self as ev, EventControl, EventHook, EventKind, EventReader},
    loader::DEFAULT_PIN_DIR,
    maps::Maps,
};
use serde::Serialize;

/// Default size of the xlb_events ring buffer (`--events-ringbuf-bytes`).
pub const DEFAULT_RINGBUF_BYTES: u32 = ev::DEFAULT_RING_BYTES;

/// How long a monitor's lease lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(5);
const RENEW_EVERY: Duration = Duration::from_secs(1);

#[derive(Args, Debug)]
pub struct MonitorArgs {
    /// bpffs directory of the node's pinned maps.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Only this service: "namespace/name" (every port) or a full key
    /// "namespace/name:port"; drops count when sent to one of its frontends.
    #[arg(long)]
    service: Option<String>,
    /// Only events with this address as source, destination or backend.
    #[arg(long)]
    addr: Option<IpAddr>,
    /// Only drops with this reason ("truncated" or "drop_truncated"); implies
    /// drop events only.
    #[arg(long)]
    reason: Option<String>,
    /// Only new-flow events.
    #[arg(long, conflicts_with = "reason")]
    flows_only: bool,
    /// Only drop events.
    #[arg(long, conflicts_with = "flows_only")]
    drops_only: bool,
    /// New-flow events: one in N (sampled in the datapath).
    #[arg(long, value_name = "N", default_value_t = 1)]
    sample: u32,
    /// Exit after printing this many events.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// JSON, one event per line.
    #[arg(long)]
    json: bool,
}

/// The listener maps, with the hint a CLI user needs when they are missing.
fn open_control(pin_dir: &Path) -> anyhow::Result<EventControl> {
    EventControl::open(pin_dir).with_context(|| {
        format!("opening the event maps under {} (is `xlb run` running?)", pin_dir.display())
    })
}

/// Event counters and listener state, for /metrics.
#[derive(Clone, Debug)]
pub struct EventStatus {
    pub sent: u64,
    pub lost: u64,
    pub active: bool,
}

pub fn event_status(pin_dir: &Path) -> anyhow::Result<EventStatus> {
    let m = open_control(pin_dir)?;
    let stats = m.stats()?;
    Ok(EventStatus { sent: stats.sent, lost: stats.lost, active: m.active(monotonic_ns())? })
}

/// Clears the listener mask when its lease has run out (the agent calls
/// this every second). Returns whether it did.
pub fn expire_lease(pin_dir: &Path) -> anyhow::Result<bool> {
    let expired = open_control(pin_dir)?.expire(monotonic_ns())?;
    if expired {
        tracing::info!("event listener lease expired: event emission off");
    }
    Ok(expired)
}

/// The one-reader-per-ring lock: an exclusive flock on a file named after
/// the pin directory, released when the process exits (also on SIGKILL).
struct ReaderLock {
    _file: std::fs::File,
}

impl ReaderLock {
    fn take(pin_dir: &Path) -> anyhow::Result<ReaderLock> {
        let tag: String = pin_dir
            .to_string_lossy()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let dir =
            if Path::new("/run").is_dir() { PathBuf::from("/run") } else { std::env::temp_dir() };
        let path = dir.join(format!("xlb-monitor{tag}.lock"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening the monitor lock {}", path.display()))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "another xlb monitor is reading the events of {} (lock {}): the ring buffer has \
                 a single consumer, run one monitor at a time",
                pin_dir.display(),
                path.display()
            );
        }
        Ok(ReaderLock { _file: f })
    }
}

/// Holds the lease while alive; clears the mask on drop.
struct Lease {
    maps: EventControl,
    mask: u32,
    sample: u32,
}

impl Lease {
    fn take(maps: EventControl, mask: u32, sample: u32) -> anyhow::Result<Lease> {
        let mut l = Lease { maps, mask, sample };
        l.renew()?;
        Ok(l)
    }

    fn renew(&mut self) -> anyhow::Result<()> {
        let now = monotonic_ns();
        let old = self.maps.config()?;
        let shared = if old.lease_ns > now { old.mask } else { 0 };
        self.maps.set_config(EventsCfg {
            mask: shared | self.mask,
            flow_sample: self.sample,
            lease_ns: now + LEASE.as_nanos() as u64,
        })?;
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.maps.clear();
    }
}

/// One decoded event, as printed.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Printed {
    /// Unix time, seconds.
    pub time: f64,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub hook: &'static str,
    /// Resolved in the monitor's own network namespace.
    pub iface: String,
    pub ifindex: u32,
    pub len: u32,
    pub proto: String,
    pub src: Option<String>,
    pub dst: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_id: Option<u32>,
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        0 => "-".into(),
        n => format!("proto-{n}"),
    }
}

fn endpoint(addr: &[u8; 16], family: u8, port: u16, proto: u8) -> Option<String> {
    let ip = abi::addr_from_abi(addr, family)?;
    Some(if proto == 6 || proto == 17 {
        SocketAddr::new(ip, u16::from_be(port)).to_string()
    } else {
        ip.to_string()
    })
}

fn iface_name(ifindex: u32, cache: &mut HashMap<u32, String>) -> String {
    cache
        .entry(ifindex)
        .or_insert_with(|| {
            let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
            // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
            let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
            if p.is_null() {
                format!("if{ifindex}")
            } else {
                // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
                unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
            }
        })
        .clone()
}

/// Names for ids: services, backends, and each service's frontends.
struct Names {
    services: HashMap<u32, String>,
    frontends: HashMap<(IpAddr, u16, u8), u32>,
    backends: HashMap<u32, (SocketAddr, u32)>,
}

impl Names {
    fn read(pin_dir: &Path) -> anyhow::Result<Names> {
        let maps = Maps::open(pin_dir).context("opening the datapath maps")?;
        let mut services = HashMap::new();
        for item in maps.svc_names.iter() {
            let (id, n) = item.context("xlb_svc_names")?;
            let end = n.name.iter().position(|&c| c == 0).unwrap_or(n.name.len());
            services.insert(id, String::from_utf8_lossy(&n.name[..end]).into_owned());
        }
        let mut frontends = HashMap::new();
        for item in maps.frontends.iter() {
            let (k, v) = item.context("xlb_frontends")?;
            if let Some(ip) = abi::addr_from_abi(&k.addr, k.family) {
                frontends.insert((ip, u16::from_be(k.port), k.proto), v.id);
            }
        }
        let mut backends = HashMap::new();
        for item in maps.svc_backends.iter() {
            let (k, id) = item.context("xlb_svc_backends")?;
            if let Ok(b) = maps.backends.get(&id, 0) {
                if let Some(ip) = abi::addr_from_abi(&b.addr, b.family) {
                    backends.insert(id, (SocketAddr::new(ip, u16::from_be(b.port)), k.svc_id));
                }
            }
        }
        Ok(Names { services, frontends, backends })
    }
}

/// Does service key `name` ("ns/name:port[/ipv6]") match the --service filter?
pub fn service_matches(filter: &str, name: &str) -> bool {
    name == filter
        || name
            .strip_prefix(filter)
            .is_some_and(|rest| rest.starts_with(':') || rest.starts_with('/'))
}

/// The drop counter a --reason names.
pub fn parse_reason(r: &str) -> anyhow::Result<Counter> {
    let want = r.strip_prefix("drop_").unwrap_or(r);
    Counter::ALL.iter().copied().find(|c| c.class() == "drop" && c.reason() == want).ok_or_else(
        || {
            let all: Vec<&str> =
                Counter::ALL.iter().filter(|c| c.class() == "drop").map(|c| c.reason()).collect();
            anyhow::anyhow!("--reason {r:?}: not a drop reason; one of {}", all.join(", "))
        },
    )
}

struct Decoder {
    names: Names,
    names_read: Instant,
    pin_dir: PathBuf,
    ifaces: HashMap<u32, String>,
    /// Unix ns minus monotonic ns.
    wall_offset: i128,
}

impl Decoder {
    fn new(pin_dir: &Path) -> anyhow::Result<Decoder> {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        Ok(Decoder {
            names: Names::read(pin_dir)?,
            names_read: Instant::now(),
            pin_dir: pin_dir.to_path_buf(),
            ifaces: HashMap::new(),
            wall_offset: wall - monotonic_ns() as i128,
        })
    }

    /// Re-reads names when an id is unknown (at most once a second).
    fn refresh(&mut self) {
        if self.names_read.elapsed() > Duration::from_secs(1) {
            if let Ok(n) = Names::read(&self.pin_dir) {
                self.names = n;
            }
            self.names_read = Instant::now();
        }
    }

    fn decode(&mut self, ev: &Event) -> (Printed, Option<u32>) {
        let t = &ev.tuple;
        let kind = EventKind::of(ev);
        let mut svc_id = None;
        let (mut service, mut backend, mut backend_id) = (None, None, None);
        if kind == EventKind::NewFlow {
            if !self.names.services.contains_key(&ev.svc_id)
                || !self.names.backends.contains_key(&ev.backend_id)
            {
                self.refresh();
            }
            svc_id = Some(ev.svc_id);
            service = Some(
                self.names.services.get(&ev.svc_id).cloned().unwrap_or(format!("id:{}", ev.svc_id)),
            );
            backend = self.names.backends.get(&ev.backend_id).map(|(a, _)| a.to_string());
            backend_id = Some(ev.backend_id);
        } else if let Some(ip) = abi::addr_from_abi(&t.daddr, t.family) {
            // A drop sent to a frontend belongs to that service.
            svc_id = self.names.frontends.get(&(ip, u16::from_be(t.dport), t.proto)).copied();
            service = svc_id.and_then(|id| self.names.services.get(&id).cloned());
        }
        let reason = ev::drop_reason(ev).map(|r| r.map_or("unknown", |c| c.reason()));
        let p = Printed {
            time: (ev.ts_ns as i128 + self.wall_offset) as f64 / 1e9,
            kind: kind.name(),
            hook: EventHook::of(ev).name(),
            iface: iface_name(ev.ifindex, &mut self.ifaces),
            ifindex: ev.ifindex,
            len: ev.len,
            proto: proto_name(t.proto),
            src: endpoint(&t.saddr, t.family, t.sport, t.proto),
            dst: endpoint(&t.daddr, t.family, t.dport, t.proto),
            reason,
            service,
            backend,
            backend_id,
        };
        (p, svc_id)
    }
}

fn text_line(p: &Printed) -> String {
    let secs = p.time.rem_euclid(86_400.0);
    let (h, m, s) = ((secs / 3600.0) as u32, ((secs % 3600.0) / 60.0) as u32, secs % 60.0);
    let mut line = format!(
        "{h:02}:{m:02}:{s:09.6} {:<10} {:<8} {:<8} {} {} -> {}",
        p.hook,
        p.iface,
        p.kind,
        p.proto,
        p.src.as_deref().unwrap_or("?"),
        p.dst.as_deref().unwrap_or("?")
    );
    if let Some(r) = p.reason {
        line += &format!(" reason={r}");
    }
    if let Some(s) = &p.service {
        line += &format!(" service={s}");
    }
    if let Some(b) = &p.backend {
        line += &format!(" backend={b}");
    }
    line + &format!(" len={}", p.len)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

pub fn run(args: MonitorArgs) -> anyhow::Result<ExitCode> {
    let reason = args.reason.as_deref().map(parse_reason).transpose()?;
    let mask = if reason.is_some() || args.drops_only {
        abi::EV_F_DROP
    } else if args.flows_only {
        abi::EV_F_NEW_FLOW
    } else {
        abi::EV_F_NEW_FLOW | abi::EV_F_DROP
    };
    if args.sample == 0 {
        bail!("--sample 0: want 1 (every new flow) or more");
    }
    let _reader = ReaderLock::take(&args.pin_dir)?;
    let mut ring = EventReader::open(&args.pin_dir).with_context(|| {
        format!("opening the event ring under {} (is `xlb run` running?)", args.pin_dir.display())
    })?;
    let mut decoder = Decoder::new(&args.pin_dir)?;
    if let Some(s) = &args.service {
        if !decoder.names.services.values().any(|n| service_matches(s, n)) {
            eprintln!("xlb monitor: no service {s:?} in the datapath yet; waiting for it");
        }
    }
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    // Events already in the ring are from an earlier listener: skip them.
    ring.drain();
    let mut lease = Lease::take(open_control(&args.pin_dir)?, mask, args.sample)?;
    let mut renewed = Instant::now();
    let mut lost = lease.maps.stat(abi::EV_STAT_LOST)?;
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    eprintln!("xlb monitor: listening on {} (Ctrl-C to stop)", args.pin_dir.display());
    while !STOP.load(Ordering::Relaxed) {
        if renewed.elapsed() >= RENEW_EVERY {
            lease.renew()?;
            renewed = Instant::now();
            let now_lost = lease.maps.stat(abi::EV_STAT_LOST)?;
            if now_lost > lost {
                eprintln!("xlb monitor: {} events lost (ring buffer full)", now_lost - lost);
                lost = now_lost;
            }
        }
        ring.wait(Duration::from_millis(200))?;
        while let Some(ev) = ring.next() {
            if let Some(r) = reason {
                if ev.r#type != abi::EV_DROP || ev.reason as u32 != r as u32 {
                    continue;
                }
            }
            let (p, _) = decoder.decode(&ev);
            if let Some(s) = &args.service {
                if !p.service.as_deref().is_some_and(|n| service_matches(s, n)) {
                    continue;
                }
            }
            if let Some(a) = args.addr {
                let hit = |e: &Option<String>| {
                    e.as_deref().is_some_and(|e| {
                        e.parse::<SocketAddr>().map(|s| s.ip()).or_else(|_| e.parse::<IpAddr>())
                            == Ok(a)
                    })
                };
                if !hit(&p.src) && !hit(&p.dst) && !hit(&p.backend) {
                    continue;
                }
            }
            use std::io::Write;
            let mut out = stdout.lock();
            let line = if args.json { serde_json::to_string(&p)? } else { text_line(&p) };
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return Ok(ExitCode::SUCCESS); // stdout closed (piped into head)
            }
            printed += 1;
            if args.count.is_some_and(|n| printed >= n) {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        assert!(service_matches("default/nginx", "default/nginx:80"));
        assert!(service_matches("default/nginx", "default/nginx:http/ipv6"));
        assert!(service_matches("default/nginx:80", "default/nginx:80"));
        assert!(!service_matches("default/nginx", "default/nginx2:80"));
        assert_eq!(parse_reason("truncated").unwrap(), Counter::DropTruncated);
        assert_eq!(parse_reason("drop_no_backend").unwrap(), Counter::DropNoBackend);
        let e = parse_reason("not_frontend").unwrap_err().to_string();
        assert!(e.contains("not a drop reason") && e.contains("truncated"), "{e}");
    }
}
