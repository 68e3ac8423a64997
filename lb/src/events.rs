//! Typed access to the datapath event stream (lb/bpf/events.h): the
//! listener configuration xlb_events_cfg (mask, sampling, lease), the
//! per-CPU xlb_event_stats, and a reader of the xlb_events ring buffer that
//! yields [`abi::Event`] records. Opened by pin directory like
//! [`crate::maps::Maps`]; `control`'s `xlb monitor` and metrics use it and
//! never open these maps themselves. The ring's size is
//! [`crate::loader::MapSizes::events`].
use std::{
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::Duration,
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
}

/// What an event reports ([`Event::type`](abi::Event)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    NewFlow,
    Drop,
    Policy,
    Unknown(u8),
}

impl EventKind {
    pub fn of(ev: &Event) -> EventKind {
        match ev.r#type {
            abi::EV_NEW_FLOW => EventKind::NewFlow,
            abi::EV_DROP => EventKind::Drop,
            abi::EV_POLICY => EventKind::Policy,
            n => EventKind::Unknown(n),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EventKind::NewFlow => "new_flow",
            EventKind::Drop => "drop",
            EventKind::Policy => "policy",
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
    Unknown(u8),
}

impl EventHook {
    pub fn of(ev: &Event) -> EventHook {
        match ev.hook {
            abi::EV_HOOK_XDP => EventHook::Xdp,
            abi::EV_HOOK_TC_INGRESS => EventHook::TcIngress,
            abi::EV_HOOK_TC_EGRESS => EventHook::TcEgress,
            n => EventHook::Unknown(n),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EventHook::Xdp => "xdp",
            EventHook::TcIngress => "tc_ingress",
            EventHook::TcEgress => "tc_egress",
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
