//! Typed access to the datapath event stream (lb/bpf/events.h): the
//! listener configuration xlb_events_cfg (mask, sampling, lease), the
//! per-CPU xlb_event_stats, a reader of the xlb_events ring buffer, and the
//! listener protocol on top of them ([`Listener`]: one reader per ring, a
//! lease renewed while it listens, expired by the agent when a listener
//! dies). Records are decoded into [`Record`]s. Opened by pin directory like
//! [`crate::maps::Maps`]; `control`'s `xlb monitor`, metrics and the agent's
//! housekeeping use it and never open these maps themselves. The ring's size
//! is [`crate::loader::MapSizes::events`].
//!
//! Listener protocol: the programs build events only while
//! xlb_events_cfg.mask asks for them. A listener sets the mask and a lease
//! (CLOCK_MONOTONIC expiry, [`LEASE`] ahead), renews it every
//! [`RENEW_EVERY`] and clears the mask when it stops. If it is killed, the
//! agent's housekeeping ([`expire_lease`]) clears the mask once the lease
//! has run out, so the fast path goes back to its no-listener cost within
//! [`LEASE`]. A BPF ring buffer has one consumer position: two readers
//! would steal each other's records, so one listener per ring runs at a
//! time (an exclusive lock, [`ReaderLock`]).
use std::{
    io,
    net::IpAddr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData, MapError, PerCpuArray, RingBuf};

use crate::abi::{self, Counter, Event, EventsCfg};

/// Default size of the xlb_events ring buffer: ~3,600 events of 72 bytes
/// (+8 bytes of record header) between two reads.
pub const DEFAULT_RING_BYTES: u32 = 256 * 1024;

pub(crate) const RING_MAP: &str = "xlb_events";
const CFG_MAP: &str = "xlb_events_cfg";
const STATS_MAP: &str = "xlb_event_stats";

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("opening pinned map {path}: {source}")]
    Open { path: PathBuf, source: Box<MapError> },
    #[error("map {map}: {op}: {source}")]
    Op { map: &'static str, op: &'static str, source: Box<MapError> },
    #[error("waiting for events on {map}: {source}")]
    Poll { map: &'static str, source: io::Error },
    #[error("opening the reader lock {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error(
        "another listener is reading the events of {pin_dir} (lock {lock}): the ring buffer \
         has a single consumer, run one at a time"
    )]
    Busy { pin_dir: PathBuf, lock: PathBuf },
}

fn op(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> EventsError {
    move |source| EventsError::Op { map, op, source: Box::new(source) }
}

fn open<T>(dir: &Path, name: &str) -> Result<T, EventsError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = dir.join(name);
    crate::maps::open_pinned(&path)
        .map_err(|source| EventsError::Open { path, source: Box::new(source) })
}

/// CLOCK_MONOTONIC in ns: the clock of bpf_ktime_get_ns(), hence of
/// [`Event::ts_ns`] and [`EventsCfg::lease_ns`].
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// How long a listener's lease lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often a [`Listener`] renews its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);

/// Event counters of xlb_event_stats, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Events written to the ring (XLB_EV_STAT_SENT).
    pub sent: u64,
    /// Events lost because the ring was full (XLB_EV_STAT_LOST).
    pub lost: u64,
}

/// The listener side of the event stream: xlb_events_cfg and xlb_event_stats.
pub struct EventControl {
    cfg: Array<MapData, EventsCfg>,
    stats: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for EventControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventControl")
    }
}

impl EventControl {
    /// Opens the listener maps pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<EventControl, EventsError> {
        Ok(EventControl { cfg: open(pin_dir, CFG_MAP)?, stats: open(pin_dir, STATS_MAP)? })
    }

    /// The listener configuration.
    pub fn config(&self) -> Result<EventsCfg, EventsError> {
        self.cfg.get(&0, 0).map_err(op(CFG_MAP, "get"))
    }

    /// Sets what a listener wants (mask, sampling) and its lease expiry.
    pub fn set_config(&mut self, cfg: EventsCfg) -> Result<(), EventsError> {
        self.cfg.set(0, cfg, 0).map_err(op(CFG_MAP, "set"))
    }

    /// No listener: mask and lease cleared, the sampling rate kept.
    pub fn clear(&mut self) -> Result<(), EventsError> {
        let c = self.config()?;
        self.set_config(EventsCfg { mask: 0, lease_ns: 0, ..c })
    }

    /// Whether a listener holds a live lease at `now_ns` (CLOCK_MONOTONIC).
    pub fn active(&self, now_ns: u64) -> Result<bool, EventsError> {
        let c = self.config()?;
        Ok(c.mask != 0 && c.lease_ns > now_ns)
    }

    /// Clears the mask if the lease ran out by `now_ns`; returns whether it did.
    pub fn expire(&mut self, now_ns: u64) -> Result<bool, EventsError> {
        let c = self.config()?;
        if c.mask != 0 && c.lease_ns <= now_ns {
            self.set_config(EventsCfg { mask: 0, ..c })?;
            return Ok(true);
        }
        Ok(false)
    }

    /// One xlb_event_stats counter (`abi::EV_STAT_*`), summed over CPUs.
    pub fn stat(&self, index: u32) -> Result<u64, EventsError> {
        Ok(self.stats.get(&index, 0).map_err(op(STATS_MAP, "get"))?.iter().sum())
    }

    /// Sent and lost events, summed over CPUs.
    pub fn stats(&self) -> Result<EventStats, EventsError> {
        Ok(EventStats { sent: self.stat(abi::EV_STAT_SENT)?, lost: self.stat(abi::EV_STAT_LOST)? })
    }

    /// Sent and lost events, and whether a listener holds a live lease at `now_ns`.
    pub fn status(&self, now_ns: u64) -> Result<EventStatus, EventsError> {
        let stats = self.stats()?;
        Ok(EventStatus { sent: stats.sent, lost: stats.lost, active: self.active(now_ns)? })
    }
}

/// Event counters and listener state (`xlb stats`, /metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventStatus {
    pub sent: u64,
    pub lost: u64,
    /// A listener holds a live lease.
    pub active: bool,
}

/// Clears the listener mask of the datapath pinned under `pin_dir` when its
/// lease has run out (the agent calls this every second). Returns whether it did.
pub fn expire_lease(pin_dir: &Path) -> Result<bool, EventsError> {
    EventControl::open(pin_dir)?.expire(monotonic_ns())
}

/// Which events a listener asks for (xlb_events_cfg.mask).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventMask(u32);

impl EventMask {
    pub const NEW_FLOW: EventMask = EventMask(abi::EV_F_NEW_FLOW);
    pub const DROP: EventMask = EventMask(abi::EV_F_DROP);
    pub const POLICY: EventMask = EventMask(abi::EV_F_POLICY);
    /// Socket translations (sock/), sampled like new flows.
    pub const SOCK: EventMask = EventMask(abi::EV_F_SOCK);

    pub fn bits(self) -> u32 {
        self.0
    }
}

impl std::ops::BitOr for EventMask {
    type Output = EventMask;
    fn bitor(self, rhs: EventMask) -> EventMask {
        EventMask(self.0 | rhs.0)
    }
}

/// A listener's lease on the event stream: taken with what it wants,
/// renewed by [`Lease::renew`], the mask cleared when dropped. Another
/// listener's kinds are kept while its lease is live.
#[derive(Debug)]
pub struct Lease {
    control: EventControl,
    mask: EventMask,
    flow_sample: u32,
}

impl Lease {
    /// Takes the lease of the datapath pinned under `pin_dir`.
    pub fn acquire(
        pin_dir: &Path,
        mask: EventMask,
        flow_sample: u32,
    ) -> Result<Lease, EventsError> {
        let mut l = Lease { control: EventControl::open(pin_dir)?, mask, flow_sample };
        l.renew()?;
        Ok(l)
    }

    /// Pushes the expiry [`LEASE`] ahead of now.
    pub fn renew(&mut self) -> Result<(), EventsError> {
        let now = monotonic_ns();
        let old = self.control.config()?;
        let shared = if old.lease_ns > now { old.mask } else { 0 };
        self.control.set_config(EventsCfg {
            mask: shared | self.mask.bits(),
            flow_sample: self.flow_sample,
            lease_ns: now + LEASE.as_nanos() as u64,
        })
    }

    /// Events lost so far because the ring was full.
    pub fn lost(&self) -> Result<u64, EventsError> {
        self.control.stat(abi::EV_STAT_LOST)
    }

    /// Asks for exactly `mask` from now on (kinds no longer wanted stop
    /// being built at once), the lease renewed.
    pub fn set_mask(&mut self, mask: EventMask) -> Result<(), EventsError> {
        self.mask = mask;
        self.control.set_config(EventsCfg {
            mask: mask.bits(),
            flow_sample: self.flow_sample,
            lease_ns: monotonic_ns() + LEASE.as_nanos() as u64,
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.control.clear();
    }
}

/// The one-reader-per-ring lock: an exclusive flock on a file named after
/// the pin directory, released when the process exits (also on SIGKILL).
#[derive(Debug)]
pub struct ReaderLock {
    _file: std::fs::File,
}

impl ReaderLock {
    /// Takes the lock of the ring pinned under `pin_dir`, or says who has it.
    pub fn take(pin_dir: &Path) -> Result<ReaderLock, EventsError> {
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
            .map_err(|source| EventsError::Lock { path: path.clone(), source })?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(EventsError::Busy { pin_dir: pin_dir.to_path_buf(), lock: path });
        }
        Ok(ReaderLock { _file: f })
    }
}

/// The listener of a node's event stream: the reader lock, the ring (emptied
/// of what an earlier listener left) and the lease, renewed as it reads.
#[derive(Debug)]
pub struct Listener {
    // Dropped in this order: the lease (mask cleared), then the ring, then the lock.
    lease: Lease,
    ring: EventReader,
    renewed: Instant,
    _lock: ReaderLock,
}

impl Listener {
    /// Starts listening to the datapath pinned under `pin_dir` for `mask`
    /// (new flows: one in `flow_sample`).
    pub fn start(
        pin_dir: &Path,
        mask: EventMask,
        flow_sample: u32,
    ) -> Result<Listener, EventsError> {
        let lock = ReaderLock::take(pin_dir)?;
        let mut ring = EventReader::open(pin_dir)?;
        ring.drain();
        let lease = Lease::acquire(pin_dir, mask, flow_sample)?;
        Ok(Listener { lease, ring, renewed: Instant::now(), _lock: lock })
    }

    /// Renews the lease if [`RENEW_EVERY`] has passed; returns whether it did.
    pub fn renew_if_due(&mut self) -> Result<bool, EventsError> {
        if self.renewed.elapsed() < RENEW_EVERY {
            return Ok(false);
        }
        self.lease.renew()?;
        self.renewed = Instant::now();
        Ok(true)
    }

    /// Events lost so far because the ring was full.
    pub fn lost(&self) -> Result<u64, EventsError> {
        self.lease.lost()
    }

    /// What this listener asks for.
    pub fn mask(&self) -> EventMask {
        self.lease.mask
    }

    /// Asks for `mask` from now on (see [`Lease::set_mask`]).
    pub fn set_mask(&mut self, mask: EventMask) -> Result<(), EventsError> {
        self.lease.set_mask(mask)
    }

    /// Waits up to `timeout` for records (see [`EventReader::wait`]).
    pub fn wait(&self, timeout: Duration) -> Result<bool, EventsError> {
        self.ring.wait(timeout)
    }

    /// The next record, decoded; None when the ring is empty.
    pub fn next_record(&mut self) -> Option<Record> {
        self.ring.next().map(|e| Record::from(&e))
    }
}

/// One event, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    pub kind: EventKind,
    pub hook: EventHook,
    /// Drop events: the reason (`Err`: a counter number this build does not know).
    pub drop_reason: Option<Result<Counter, u16>>,
    /// Socket events: the counter it was counted under (ok_sock_connect,
    /// ok_sock_sendmsg, or the drop that refused the call).
    pub sock_reason: Option<Result<Counter, u16>>,
    /// Policy verdicts (XLB_EV_POLICY, a new connection at a pod's veth).
    pub policy: Option<PolicyVerdict>,
    pub ifindex: u32,
    /// Frame length as received.
    pub len: u32,
    /// New flows: the service and the backend chosen.
    pub svc_id: u32,
    pub backend_id: u32,
    /// IP protocol (0: not read).
    pub proto: u8,
    /// New flows: client -> frontend; drops: the packet's addresses and
    /// ports as far as they could be read (None: not IP, or truncated);
    /// socket translations: backend (src) <- service address (dst).
    pub src: Option<IpAddr>,
    pub src_port: u16,
    pub dst: Option<IpAddr>,
    pub dst_port: u16,
}

impl From<&Event> for Record {
    fn from(ev: &Event) -> Record {
        let t = &ev.tuple;
        Record {
            ts_ns: ev.ts_ns,
            kind: EventKind::of(ev),
            hook: EventHook::of(ev),
            drop_reason: drop_reason(ev),
            sock_reason: (ev.r#type == abi::EV_SOCK)
                .then(|| Counter::from_u32(ev.reason as u32).ok_or(ev.reason)),
            policy: (ev.r#type == abi::EV_POLICY).then(|| PolicyVerdict {
                ingress: ev.svc_id == abi::POLICY_DIR_INGRESS,
                denied: (ev.reason != 0)
                    .then(|| Counter::from_u32(ev.reason as u32).ok_or(ev.reason)),
                peer_identity: ev.backend_id,
                policy: ev.policy_id,
            }),
            ifindex: ev.ifindex,
            len: ev.len,
            svc_id: ev.svc_id,
            backend_id: ev.backend_id,
            proto: t.proto,
            src: abi::addr_from_abi(&t.saddr, t.family),
            src_port: u16::from_be(t.sport),
            dst: abi::addr_from_abi(&t.daddr, t.family),
            dst_port: u16::from_be(t.dport),
        }
    }
}

/// A NetworkPolicy verdict (tc/policy.h's xlb_policy_event): checked on
/// the destination pod's ingress or the source pod's egress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyVerdict {
    pub ingress: bool,
    /// None: allowed; else the drop reason (drop_policy_ingress/egress).
    pub denied: Option<Result<Counter, u16>>,
    /// The peer's identity (the source's for ingress, the destination's for egress).
    pub peer_identity: u32,
    /// The policy number that allowed it (0 when none did, or the peer is the node).
    pub policy: u32,
}

/// What an event reports ([`Event::type`](abi::Event)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    NewFlow,
    Drop,
    Policy,
    /// A socket's destination translated at connect/sendmsg (or refused).
    Sock,
    Unknown(u8),
}

impl EventKind {
    pub fn of(ev: &Event) -> EventKind {
        match ev.r#type {
            abi::EV_NEW_FLOW => EventKind::NewFlow,
            abi::EV_DROP => EventKind::Drop,
            abi::EV_POLICY => EventKind::Policy,
            abi::EV_SOCK => EventKind::Sock,
            n => EventKind::Unknown(n),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EventKind::NewFlow => "new_flow",
            EventKind::Drop => "drop",
            EventKind::Policy => "policy",
            EventKind::Sock => "sock",
            EventKind::Unknown(_) => "unknown",
        }
    }
}

/// The program an event came from ([`Event::hook`](abi::Event)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventHook {
    Xdp,
    TcIngress,
    TcEgress,
    Sock,
    /// A pod's host veth: traffic from the pod, and to it.
    PodFrom,
    PodTo,
    Unknown(u8),
}

impl EventHook {
    pub fn of(ev: &Event) -> EventHook {
        match ev.hook {
            abi::EV_HOOK_XDP => EventHook::Xdp,
            abi::EV_HOOK_TC_INGRESS => EventHook::TcIngress,
            abi::EV_HOOK_TC_EGRESS => EventHook::TcEgress,
            abi::EV_HOOK_SOCK => EventHook::Sock,
            abi::HOOK_TC_POD_FROM => EventHook::PodFrom,
            abi::HOOK_TC_POD_TO => EventHook::PodTo,
            n => EventHook::Unknown(n),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EventHook::Xdp => "xdp",
            EventHook::TcIngress => "tc_ingress",
            EventHook::TcEgress => "tc_egress",
            EventHook::Sock => "sock",
            EventHook::PodFrom => "pod_from",
            EventHook::PodTo => "pod_to",
            EventHook::Unknown(_) => "unknown",
        }
    }
}

/// The drop reason of a drop event; None for other kinds. `Err(n)`: a
/// counter number this build does not know.
pub fn drop_reason(ev: &Event) -> Option<Result<Counter, u16>> {
    (ev.r#type == abi::EV_DROP).then(|| Counter::from_u32(ev.reason as u32).ok_or(ev.reason))
}

/// The consumer of the xlb_events ring buffer. A BPF ring buffer has one
/// consumer position: two readers steal each other's records, so callers
/// keep to one reader per ring.
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl std::fmt::Debug for EventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventReader")
    }
}

impl EventReader {
    /// Opens the ring pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<EventReader, EventsError> {
        Ok(EventReader { ring: open(pin_dir, RING_MAP)? })
    }

    /// The next record, copied out of the ring; None when the ring is empty.
    /// Records too short to hold an event are skipped.
    #[allow(clippy::should_implement_trait)] // not an Iterator: None is "empty for now"
    pub fn next(&mut self) -> Option<Event> {
        loop {
            let item = self.ring.next()?;
            if item.len() < size_of::<Event>() {
                continue;
            }
            // SAFETY: the record holds a struct xlb_event (size checked);
            // read_unaligned copes with the ring's 8-byte alignment.
            return Some(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) });
        }
    }

    /// Discards every record in the ring (e.g. left by an earlier listener);
    /// returns how many.
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        while self.ring.next().is_some() {
            n += 1;
        }
        n
    }

    /// Waits up to `timeout` for records; returns whether the ring became
    /// readable (an interrupting signal counts as a timeout).
    pub fn wait(&self, timeout: Duration) -> Result<bool, EventsError> {
        let mut pfd = libc::pollfd { fd: self.ring.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, its count passed.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(EventsError::Poll { map: RING_MAP, source: e });
        }
        Ok(rc > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode_every_field() {
        let (saddr, family) = abi::addr_to_abi("192.0.2.1".parse().unwrap());
        let (daddr, _) = abi::addr_to_abi("10.100.0.1".parse().unwrap());
        let tuple = abi::FlowKey {
            saddr,
            daddr,
            sport: 1000u16.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            family,
            pad: 0,
        };
        let ev = Event {
            ts_ns: 7,
            r#type: abi::EV_DROP,
            hook: abi::EV_HOOK_TC_INGRESS,
            reason: Counter::DropNoBackend as u16,
            ifindex: 3,
            svc_id: 0,
            backend_id: 0,
            policy_id: 0,
            len: 60,
            tuple,
        };
        let r = Record::from(&ev);
        assert_eq!(
            (r.kind, r.hook, r.drop_reason),
            (EventKind::Drop, EventHook::TcIngress, Some(Ok(Counter::DropNoBackend)))
        );
        assert_eq!(
            (r.src, r.src_port, r.dst, r.dst_port),
            (Some("192.0.2.1".parse().unwrap()), 1000, Some("10.100.0.1".parse().unwrap()), 80)
        );
        assert_eq!((r.ts_ns, r.ifindex, r.len, r.proto), (7, 3, 60, 6));
        let unknown = Record::from(&Event { reason: 63, ..ev });
        assert_eq!(unknown.drop_reason, Some(Err(63)));
        let flow =
            Record::from(&Event { r#type: abi::EV_NEW_FLOW, svc_id: 4, backend_id: 9, ..ev });
        assert_eq!(
            (flow.kind, flow.drop_reason, flow.svc_id, flow.backend_id),
            (EventKind::NewFlow, None, 4, 9)
        );
        let policy = Record::from(&Event {
            r#type: abi::EV_POLICY,
            hook: abi::HOOK_TC_POD_TO,
            reason: Counter::DropPolicyIngress as u16,
            svc_id: abi::POLICY_DIR_INGRESS,
            backend_id: 70000,
            policy_id: 0,
            ..ev
        });
        assert_eq!(
            (policy.kind, policy.hook, policy.drop_reason),
            (EventKind::Policy, EventHook::PodTo, None)
        );
        assert_eq!(
            policy.policy,
            Some(PolicyVerdict {
                ingress: true,
                denied: Some(Ok(Counter::DropPolicyIngress)),
                peer_identity: 70000,
                policy: 0
            })
        );
        let not_ip = Record::from(&Event { tuple: abi::FlowKey { family: 0, ..tuple }, ..ev });
        assert_eq!((not_ip.src, not_ip.dst), (None, None));
    }

    #[test]
    fn masks_combine() {
        assert_eq!(
            (EventMask::NEW_FLOW | EventMask::DROP).bits(),
            abi::EV_F_NEW_FLOW | abi::EV_F_DROP
        );
    }
}
