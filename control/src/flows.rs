//! The agent's one reader of the datapath event stream (#11): a thread
//! that holds the ring ([`lb::events::Listener`]) while someone needs it,
//! and fans each event in to the policy action log and out to the
//! observers.
//! - Policy action log: XLB_EV_POLICY verdicts of new connections are named
//!   with the [`PolicyNames`] the reconciler publishes ([`publish`]) and fed
//!   to [`PolicyLogger`] (NetworkLogging rules, deny aggregation, rate
//!   limit, rotated file at `--policy-log-path`). Events are asked for only
//!   while NetworkLogging `default` logs something: otherwise the fast path
//!   pays its one array lookup and builds nothing.
//! - Observers (`xlb observe`): `GET /flows` on the metrics endpoint hands
//!   its connection here ([`subscribe`]); each gets every event as a
//!   [`Flow`] JSON line (a bounded queue per observer: a slow one loses
//!   lines, counted, and never slows the others or the log). While any
//!   observer is connected every kind is asked for.
//!
//! The ring has one consumer: `xlb monitor` (its own reader) cannot run
//! while this thread holds it, and vice versa (the reader lock says so).
use std::{
    io::Write,
    net::{IpAddr, TcpStream},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{sync_channel, Receiver, SyncSender, TrySendError},
        Arc, Mutex, OnceLock, PoisonError,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use clap::Args;
use lb::events::{self as ev, EventKind, EventMask, Listener, Record};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use xlb_control::policy::{
    agent::PolicyNames,
    logging::{
        self, LogStats, LoggingConfig, PolicyEvent, PolicyLogger, RotatingFile, DEFAULT_LOG_PATH,
        ROTATE_BYTES, ROTATE_KEEP,
    },
};

use crate::monitor::Decoder;

/// `xlb run` flags of the policy action log.
#[derive(Args, Debug, Clone)]
pub struct FlowArgs {
    /// Where policy action logs are written (JSON lines; rotated at 10 MB,
    /// 5 files kept). What is logged is NetworkLogging `default`'s.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_LOG_PATH)]
    pub policy_log_path: PathBuf,
}

/// How many lines an observer may fall behind before it loses some.
const OBSERVER_QUEUE: usize = 4096;
/// An observer with nothing to read gets an empty line this often (a
/// closed connection is noticed).
const HEARTBEAT: Duration = Duration::from_secs(2);

/// One event as an observer sees it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Flow {
    /// Unix time, seconds.
    pub time: f64,
    pub node: String,
    /// "forwarded" (a service translated it), "allowed" / "denied"
    /// (NetworkPolicy, new connections), "dropped" (with `reason`).
    pub verdict: String,
    /// The event kind: new_flow, sock, policy, drop.
    pub event: String,
    pub hook: String,
    pub iface: String,
    /// NetworkPolicy: "ingress" (checked at the destination pod) or "egress".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub proto: String,
    pub src: Peer,
    pub dst: Peer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The allowing policy, "namespace/name".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    pub len: u32,
}

/// One end of a flow, named.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Peer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    #[serde(default)]
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<u32>,
}

fn peer(names: &PolicyNames, ip: Option<IpAddr>, port: u16) -> Peer {
    let pod = ip.and_then(|ip| names.pod(ip));
    Peer {
        ip,
        port,
        pod: pod.map(|p| p.name.clone()),
        namespace: pod.map(|p| p.namespace.clone()),
        workload: pod.and_then(|p| p.workload.as_ref()).map(|(k, n)| format!("{k}/{n}")),
        identity: pod.map(|p| p.identity),
    }
}

/// `r` as an observer sees it; None for what another event already told
/// (a policy drop: its policy event said "denied").
fn flow(r: &Record, names: &PolicyNames, decoder: &mut Decoder, node: &str) -> Option<Flow> {
    if let Some(Ok(c)) = r.drop_reason {
        if c.reason().starts_with("policy_") {
            return None;
        }
    }
    let (p, _) = decoder.decode(r);
    let mut f = Flow {
        time: p.time,
        node: node.to_string(),
        verdict: "forwarded".into(),
        event: p.kind.to_string(),
        hook: p.hook.to_string(),
        iface: p.iface,
        reason: p.reason.map(str::to_string),
        proto: logging::proto_name(r.proto),
        src: peer(names, r.src, r.src_port),
        dst: peer(names, r.dst, r.dst_port),
        service: p.service,
        backend: p.backend,
        len: r.len,
        ..Flow::default()
    };
    match r.kind {
        EventKind::Drop => f.verdict = "dropped".into(),
        EventKind::Sock => {
            // A socket has no packet: its source is not on the record.
            f.src = Peer::default();
            if p.reason.is_some_and(|r| r != "sock_connect" && r != "sock_sendmsg") {
                f.verdict = "dropped".into();
            }
        }
        EventKind::Policy => {
            let v = r.policy?;
            f.direction = Some(if v.ingress { "ingress" } else { "egress" }.into());
            f.verdict = if v.denied.is_some() { "denied" } else { "allowed" }.into();
            f.reason = v.denied.map(|d| d.map_or("unknown", |c| c.reason()).to_string());
            f.policy = names.compiled.policies.get(&v.policy).cloned();
            let other = if v.ingress { &mut f.src } else { &mut f.dst };
            other.identity = other.identity.or(Some(v.peer_identity));
        }
        _ => {}
    }
    Some(f)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The hub's state shared with the reconciler, the HTTP thread and metrics.
#[derive(Default)]
struct Hub {
    names: Mutex<Arc<PolicyNames>>,
    observers: Mutex<Vec<SyncSender<Arc<String>>>>,
    records: Family<ResultLabel, Counter>,
    connections_rate_limited: Counter,
    ready: Gauge,
    observer_lines_lost: Counter,
    observers_gauge: Gauge,
}

fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(Hub::default)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The reconciler's names and logging rules, after each policy recompile;
/// an invalid NetworkLogging is logged (once per change) and ignored.
pub fn publish(names: PolicyNames) {
    let mut held = lock(&hub().names);
    for e in names.logging_errors.iter().filter(|e| !held.logging_errors.contains(e)) {
        warn!(error = %e, "NetworkLogging ignored: policy action logging stays as it was configured without it");
    }
    if names.logging != held.logging {
        info!(
            allow = ?names.logging.allow,
            deny = ?names.logging.deny,
            "policy action logging configured (NetworkLogging default)"
        );
    }
    *held = Arc::new(names);
}

/// Registers the policy log's and the observers' metrics.
pub fn register(r: &mut Registry) {
    let h = hub();
    r.register(
        "xlb_policy_log_records",
        "Policy action log records by result: logged (written), aggregated (a deny counted \
         into a held record), rate_limited (over 500/s), cache_overflow (the deny cache was \
         full), failed (not written)",
        h.records.clone(),
    );
    r.register(
        "xlb_policy_log_rate_limited_connections",
        "Connections in the records the rate limit dropped",
        h.connections_rate_limited.clone(),
    );
    r.register(
        "xlb_policy_log_ready",
        "1 while policy action logging is configured and the event stream is read",
        h.ready.clone(),
    );
    r.register("xlb_observers", "Connected `xlb observe` clients", h.observers_gauge.clone());
    r.register(
        "xlb_observer_lines_lost",
        "Flow lines an observer fell too far behind to receive",
        h.observer_lines_lost.clone(),
    );
}

/// Serves `GET /flows` on `stream`: flow JSON lines until the client goes.
/// Runs on its own thread; returns at once.
pub fn subscribe(mut stream: TcpStream) {
    let (tx, rx) = sync_channel::<Arc<String>>(OBSERVER_QUEUE);
    let spawned = std::thread::Builder::new().name("xlb-observer".into()).spawn(move || {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\
                    Cache-Control: no-cache\r\nConnection: close\r\n\r\n";
        if stream.write_all(head.as_bytes()).and_then(|()| stream.flush()).is_err() {
            return;
        }
        let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
        stream_lines(&mut stream, &rx);
    });
    match spawned {
        Ok(_) => {
            let mut obs = lock(&hub().observers);
            obs.push(tx);
            hub().observers_gauge.set(obs.len() as i64);
        }
        Err(e) => warn!(error = %e, "cannot start an observer thread"),
    }
}

fn stream_lines(stream: &mut TcpStream, rx: &Receiver<Arc<String>>) {
    loop {
        let line = match rx.recv_timeout(HEARTBEAT) {
            Ok(l) => l,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Arc::new(String::new()),
            Err(_) => return,
        };
        if stream
            .write_all(line.as_bytes())
            .and_then(|()| stream.write_all(b"\n"))
            .and_then(|()| stream.flush())
            .is_err()
        {
            return; // the client went: dropping rx removes it at the next send
        }
    }
}

/// The reader thread; stops (and gives the ring back) when dropped.
#[derive(Debug)]
pub struct FlowReader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for FlowReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the reader of the datapath pinned under `pin_dir` for node `node`.
pub fn start(pin_dir: &Path, node: &str, args: &FlowArgs) -> anyhow::Result<FlowReader> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut r = Reader {
        pin_dir: pin_dir.to_path_buf(),
        node: node.to_string(),
        logger: PolicyLogger::new(
            LoggingConfig::default(),
            RotatingFile::new(&args.policy_log_path, ROTATE_BYTES, ROTATE_KEEP),
        ),
        listener: None,
        decoder: None,
        wall_offset_ns: 0,
        counted: LogStats::default(),
        retry_at: Instant::now(),
        stop: stop.clone(),
    };
    let thread = std::thread::Builder::new().name("xlb-flows".into()).spawn(move || r.run())?;
    info!(path = %args.policy_log_path.display(), "policy action log ready (off until NetworkLogging default says what to log)");
    Ok(FlowReader { stop, thread: Some(thread) })
}

struct Reader {
    pin_dir: PathBuf,
    node: String,
    logger: PolicyLogger,
    listener: Option<Listener>,
    decoder: Option<Decoder>,
    /// Unix ns minus monotonic ns.
    wall_offset_ns: i128,
    /// The logger's counters already added to the metrics.
    counted: LogStats,
    /// When a listener that could not start is tried again.
    retry_at: Instant,
    stop: Arc<AtomicBool>,
}

fn all_kinds() -> EventMask {
    EventMask::NEW_FLOW | EventMask::DROP | EventMask::SOCK | EventMask::POLICY
}

impl Reader {
    fn run(&mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            let names = lock(&hub().names).clone();
            self.logger.config = names.logging;
            let logging = names.logging.allow.log || names.logging.deny.log;
            let observing = !lock(&hub().observers).is_empty();
            let want = match (logging, observing) {
                (_, true) => Some(all_kinds()),
                (true, false) => Some(EventMask::POLICY),
                (false, false) => None,
            };
            self.listen(want);
            hub().ready.set(i64::from(logging && self.listener.is_some()));
            match &mut self.listener {
                Some(l) => {
                    if let Err(e) = l.renew_if_due() {
                        warn!(error = %lb::report::Chain(&e), "renewing the event lease");
                    }
                    let _ = l.wait(Duration::from_millis(200));
                    self.drain(&names, logging, observing);
                }
                None => std::thread::sleep(Duration::from_millis(200)),
            }
            self.logger.flush(now_ms());
            self.count();
        }
    }

    /// Holds a listener asking for `want` (none: gives the ring back).
    fn listen(&mut self, want: Option<EventMask>) {
        let Some(mask) = want else {
            if self.listener.take().is_some() {
                info!("event stream released: no policy logging, no observer");
            }
            return;
        };
        if let Some(l) = &mut self.listener {
            if l.mask() != mask {
                if let Err(e) = l.set_mask(mask) {
                    warn!(error = %lb::report::Chain(&e), "changing the event mask");
                }
            }
            return;
        }
        if Instant::now() < self.retry_at {
            return;
        }
        match Listener::start(&self.pin_dir, mask, 1) {
            Ok(l) => {
                info!(mask = mask.bits(), "reading the event stream (policy logs, observers)");
                self.wall_offset_ns = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as i128)
                    - ev::monotonic_ns() as i128;
                self.listener = Some(l);
            }
            Err(e) => {
                warn!(error = %lb::report::Chain(&e), "cannot read the event stream; retrying in 5 s (an `xlb monitor` holds it?)");
                self.retry_at = Instant::now() + Duration::from_secs(5);
            }
        }
    }

    fn drain(&mut self, names: &PolicyNames, logging: bool, observing: bool) {
        let Some(l) = &mut self.listener else { return };
        let mut lines: Vec<Arc<String>> = Vec::new();
        while let Some(r) = l.next_record() {
            if logging {
                if let Some(pe) = policy_event(&r, self.wall_offset_ns) {
                    let v = logging::resolve(&pe, names, &self.node);
                    self.logger.verdict(v, now_ms());
                }
            }
            if observing {
                if self.decoder.is_none() {
                    self.decoder = Decoder::new(&self.pin_dir).ok();
                }
                if let Some(d) = &mut self.decoder {
                    if let Some(f) = flow(&r, names, d, &self.node) {
                        if let Ok(s) = serde_json::to_string(&f) {
                            lines.push(Arc::new(s));
                        }
                    }
                }
            }
        }
        if !lines.is_empty() {
            let mut obs = lock(&hub().observers);
            obs.retain(|tx| {
                for line in &lines {
                    match tx.try_send(line.clone()) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => {
                            hub().observer_lines_lost.inc();
                        }
                        Err(TrySendError::Disconnected(_)) => return false,
                    }
                }
                true
            });
            hub().observers_gauge.set(obs.len() as i64);
        }
    }

    /// Adds what the logger counted since the last call to the metrics.
    fn count(&mut self) {
        let s = self.logger.stats;
        let c = self.counted;
        let h = hub();
        for (result, now, was) in [
            ("logged", s.logged, c.logged),
            ("aggregated", s.aggregated, c.aggregated),
            ("rate_limited", s.rate_limited, c.rate_limited),
            ("cache_overflow", s.cache_overflow, c.cache_overflow),
            ("failed", s.failed, c.failed),
        ] {
            if now > was {
                h.records.get_or_create(&ResultLabel { result }).inc_by(now - was);
            }
        }
        if s.rate_limited_connections > c.rate_limited_connections {
            h.connections_rate_limited
                .inc_by(s.rate_limited_connections - c.rate_limited_connections);
        }
        if s.failed > c.failed {
            warn!(failed = s.failed, "policy action log records could not be written");
        }
        self.counted = s;
    }
}

fn now_ms() -> u64 {
    ev::monotonic_ns() / 1_000_000
}

/// A policy event's verdict, with wall time.
fn policy_event(r: &Record, wall_offset_ns: i128) -> Option<PolicyEvent> {
    let v = r.policy?;
    Some(PolicyEvent {
        wall_ns: (r.ts_ns as i128 + wall_offset_ns).max(0) as u64,
        ingress: v.ingress,
        allowed: v.denied.is_none(),
        policy: v.policy,
        peer_identity: v.peer_identity,
        proto: r.proto,
        src: r.src?,
        src_port: r.src_port,
        dst: r.dst?,
        dst_port: r.dst_port,
    })
}
