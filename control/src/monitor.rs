//! `xlb monitor`: prints the datapath's event stream live (new flow →
//! backend chosen, socket translation → backend given, drop with its
//! reason), filtered by service, address and
//! reason, as text or JSON lines. The listener protocol (reader lock, lease,
//! ring) is [`lb::events::Listener`]; ids are named through lb's read model
//! ([`lb::view::DatapathView::names`]). This module decides what to ask for,
//! filters and prints. One monitor per node runs at a time (the ring buffer
//! has a single consumer); several clients at once, with pods and policy
//! verdicts, is `xlb observe`, fanned out by the agent ([`crate::flows`]).
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::Args;
use lb::view::service_matches;
use lb::{
    events::{self as ev, EventKind, EventMask, Listener, Record},
    loader::DEFAULT_PIN_DIR,
    view::{Counter, DatapathView, Names},
};
use serde::Serialize;

/// Default size of the xlb_events ring buffer (`--events-ringbuf-bytes`).
pub const DEFAULT_RINGBUF_BYTES: u32 = ev::DEFAULT_RING_BYTES;

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
    /// Only new-flow events (XDP and tc) and socket translations.
    #[arg(long, conflicts_with = "reason")]
    flows_only: bool,
    /// Only drop events.
    #[arg(long, conflicts_with = "flows_only")]
    drops_only: bool,
    /// New-flow events and socket translations: one in N (sampled in the
    /// datapath).
    #[arg(long, value_name = "N", default_value_t = 1)]
    sample: u32,
    /// Exit after printing this many events.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// JSON, one event per line.
    #[arg(long)]
    json: bool,
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

fn endpoint(ip: Option<IpAddr>, port: u16, proto: u8) -> Option<String> {
    let ip = ip?;
    Some(if proto == 6 || proto == 17 {
        SocketAddr::new(ip, port).to_string()
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

/// Names the ids of event records (services, backends, interfaces); the
/// agent's flow reader ([`crate::flows`]) uses it too.
pub(crate) struct Decoder {
    view: DatapathView,
    names: Names,
    names_read: Instant,
    ifaces: HashMap<u32, String>,
    /// Unix ns minus monotonic ns.
    wall_offset: i128,
}

impl Decoder {
    pub(crate) fn new(pin_dir: &Path) -> anyhow::Result<Decoder> {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let view = DatapathView::open(pin_dir).context("opening the datapath maps")?;
        Ok(Decoder {
            names: view.names()?,
            view,
            names_read: Instant::now(),
            ifaces: HashMap::new(),
            wall_offset: wall - ev::monotonic_ns() as i128,
        })
    }

    /// Re-reads names when an id is unknown (at most once a second).
    fn refresh(&mut self) {
        if self.names_read.elapsed() > Duration::from_secs(1) {
            if let Ok(n) = self.view.names() {
                self.names = n;
            }
            self.names_read = Instant::now();
        }
    }

    pub(crate) fn decode(&mut self, r: &Record) -> (Printed, Option<u32>) {
        let mut svc_id = None;
        let (mut service, mut backend, mut backend_id) = (None, None, None);
        if r.kind == EventKind::NewFlow || r.kind == EventKind::Sock {
            if !self.names.services.contains_key(&r.svc_id)
                || !self.names.backends.contains_key(&r.backend_id)
            {
                self.refresh();
            }
            svc_id = Some(r.svc_id);
            service = Some(
                self.names.services.get(&r.svc_id).cloned().unwrap_or(format!("id:{}", r.svc_id)),
            );
            backend = self.names.backends.get(&r.backend_id).map(|(a, _)| a.to_string());
            backend_id = Some(r.backend_id).filter(|id| *id != 0);
        } else if let Some(ip) = r.dst {
            // A drop sent to a frontend belongs to that service.
            svc_id = self.names.frontends.get(&(ip, r.dst_port, r.proto)).copied();
            service = svc_id.and_then(|id| self.names.services.get(&id).cloned());
        }
        let sock = r.kind == EventKind::Sock;
        let p = Printed {
            time: (r.ts_ns as i128 + self.wall_offset) as f64 / 1e9,
            kind: r.kind.name(),
            hook: r.hook.name(),
            // A socket event has no interface; its "source" is the backend given.
            iface: if sock { "-".into() } else { iface_name(r.ifindex, &mut self.ifaces) },
            ifindex: r.ifindex,
            len: r.len,
            proto: proto_name(r.proto),
            src: if sock { None } else { endpoint(r.src, r.src_port, r.proto) },
            dst: endpoint(r.dst, r.dst_port, r.proto),
            reason: r.drop_reason.or(r.sock_reason).map(|d| d.map_or("unknown", |c| c.reason())),
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
    // A socket translation reads "service address -> backend it was given".
    let (from, to) = if p.kind == EventKind::Sock.name() {
        (p.dst.as_deref(), p.backend.as_deref().or(Some("refused")))
    } else {
        (p.src.as_deref(), p.dst.as_deref())
    };
    let mut line = format!(
        "{h:02}:{m:02}:{s:09.6} {:<10} {:<8} {:<8} {} {} -> {}",
        p.hook,
        p.iface,
        p.kind,
        p.proto,
        from.unwrap_or("?"),
        to.unwrap_or("?")
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
        EventMask::DROP
    } else if args.flows_only {
        EventMask::NEW_FLOW | EventMask::SOCK
    } else {
        EventMask::NEW_FLOW | EventMask::DROP | EventMask::SOCK
    };
    if args.sample == 0 {
        bail!("--sample 0: want 1 (every new flow) or more");
    }
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
    // Events an earlier listener left in the ring are skipped.
    let mut listener = match Listener::start(&args.pin_dir, mask, args.sample) {
        Ok(l) => l,
        Err(e @ ev::EventsError::Busy { .. }) => {
            return Err(anyhow::Error::new(e).context(
                "the agent may hold the ring for policy logs or observers: `xlb observe` \
                 reads the same events through the agent, several clients at once",
            ))
        }
        Err(e) => {
            return Err(e).with_context(|| {
                let dir = args.pin_dir.display();
                format!("listening to the events under {dir} (is `xlb run` running?)")
            })
        }
    };
    let mut lost = listener.lost()?;
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    eprintln!("xlb monitor: listening on {} (Ctrl-C to stop)", args.pin_dir.display());
    while !STOP.load(Ordering::Relaxed) {
        if listener.renew_if_due()? {
            let now_lost = listener.lost()?;
            if now_lost > lost {
                eprintln!("xlb monitor: {} events lost (ring buffer full)", now_lost - lost);
                lost = now_lost;
            }
        }
        listener.wait(Duration::from_millis(200))?;
        while let Some(r) = listener.next_record() {
            if let Some(want) = reason {
                if r.kind != EventKind::Drop || r.drop_reason != Some(Ok(want)) {
                    continue;
                }
            }
            let (p, _) = decoder.decode(&r);
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
