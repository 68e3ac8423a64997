//! The datapath half of /metrics: a prometheus-client [`Collector`] that
//! reads the pinned maps through lb's read model ([`DatapathView`]) on every
//! scrape. Cost per scrape: one lookup per counter reason, one xlb_svc_names
//! walk and one per-CPU lookup per service (about 10-20 ms at 10k services),
//! plus, with per-backend series, one walk of xlb_svc_backend_ids and
//! xlb_svc_backends. Map fill levels come from the background census
//! ([`super::census`]), never from a walk here.
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use lb::view::{Counter, DatapathView, EventStatus, Hook, SockTraffic, SvcTraffic, Traffic};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};

use super::{census::Census, ControlMetrics};

/// The label value of every service without a series of its own.
pub const OTHER: &str = "other";

#[derive(Clone, Debug)]
pub struct Options {
    pub pin_dir: PathBuf,
    pub max_services: usize,
    pub per_backend: bool,
    pub max_backend_series: usize,
}

/// A socket-counter series: its `op` label ("" for none) and its reader.
type SockOp<'a> = (&'a str, &'a dyn Fn(&SockTraffic) -> u64);

/// One service's counters: packets through the packet programs, and
/// translations at the socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub traffic: SvcTraffic,
    pub sock: SockTraffic,
}

impl Totals {
    /// What ranks a service for a series of its own: its packets and the
    /// connections and datagrams translated for it at the socket.
    fn activity(&self) -> u64 {
        self.traffic.packets + self.sock.connect + self.sock.sendmsg
    }

    /// Whether no counter went back (the same service, not a reused id).
    fn grew_from(&self, prev: &Totals) -> bool {
        prev.traffic.packets <= self.traffic.packets && prev.sock.connect <= self.sock.connect
    }
}

/// Which services get their own series: the `max` most active ones
/// ([`Totals::activity`]), sticky (a chosen service keeps its series while
/// it exists), and a monotonic "other" sum of the rest, accumulated from
/// per-id deltas so that services entering the chosen set or disappearing
/// never make it go down.
#[derive(Debug, Default)]
pub struct ServiceSeries {
    chosen: HashSet<(u32, String)>,
    /// Last seen stats of every service not chosen, by id (with its name, to
    /// notice a reused id).
    last: HashMap<u32, (String, Totals)>,
    other: Totals,
}

fn zero() -> Totals {
    Totals::default()
}

fn sub(a: &Totals, b: &Totals) -> Totals {
    let (t, u) = (&a.traffic, &b.traffic);
    let (s, r) = (&a.sock, &b.sock);
    Totals {
        traffic: SvcTraffic {
            packets: t.packets.saturating_sub(u.packets),
            bytes: t.bytes.saturating_sub(u.bytes),
            new_flows: t.new_flows.saturating_sub(u.new_flows),
            affinity_hits: t.affinity_hits.saturating_sub(u.affinity_hits),
        },
        sock: SockTraffic {
            connect: s.connect.saturating_sub(r.connect),
            sendmsg: s.sendmsg.saturating_sub(r.sendmsg),
            revnat: s.revnat.saturating_sub(r.revnat),
            refused: s.refused.saturating_sub(r.refused),
            affinity_hits: s.affinity_hits.saturating_sub(r.affinity_hits),
        },
    }
}

fn add(a: &mut Totals, b: &Totals) {
    a.traffic.packets += b.traffic.packets;
    a.traffic.bytes += b.traffic.bytes;
    a.traffic.new_flows += b.traffic.new_flows;
    a.traffic.affinity_hits += b.traffic.affinity_hits;
    a.sock.connect += b.sock.connect;
    a.sock.sendmsg += b.sock.sendmsg;
    a.sock.revnat += b.sock.revnat;
    a.sock.refused += b.sock.refused;
    a.sock.affinity_hits += b.sock.affinity_hits;
}

impl ServiceSeries {
    /// Splits the current per-service totals into chosen series and "other".
    pub fn update(
        &mut self,
        current: &[(u32, String, Totals)],
        max: usize,
    ) -> (Vec<(String, Totals)>, Totals) {
        let present: HashSet<(u32, String)> =
            current.iter().map(|(id, n, _)| (*id, n.clone())).collect();
        self.chosen.retain(|k| present.contains(k));
        if self.chosen.len() < max {
            let mut candidates: Vec<&(u32, String, Totals)> = current
                .iter()
                .filter(|(id, n, _)| !self.chosen.contains(&(*id, n.clone())))
                .collect();
            candidates.sort_by(|a, b| b.2.activity().cmp(&a.2.activity()).then(a.1.cmp(&b.1)));
            for (id, n, _) in candidates.into_iter().take(max - self.chosen.len()) {
                self.chosen.insert((*id, n.clone()));
            }
        }
        let mut chosen = Vec::new();
        let mut seen = HashSet::new();
        for (id, name, s) in current {
            if self.chosen.contains(&(*id, name.clone())) {
                chosen.push((name.clone(), *s));
                self.last.remove(id);
                continue;
            }
            seen.insert(*id);
            let base = match self.last.get(id) {
                // Same service, counters did not go back: count the growth.
                Some((n, prev)) if n == name && s.grew_from(prev) => *prev,
                // New to "other" (new service, or just left the chosen set
                // — it cannot: chosen is sticky — or a reused id): count
                // its traffic from now on only if it is new; a service
                // appearing for the first time brings its whole count.
                Some(_) => zero(),
                None => zero(),
            };
            add(&mut self.other, &sub(s, &base));
            self.last.insert(*id, (name.clone(), *s));
        }
        self.last.retain(|id, _| seen.contains(id));
        chosen.sort_by(|a, b| a.0.cmp(&b.0));
        (chosen, self.other)
    }
}

/// Reads the datapath maps at scrape time.
#[derive(Debug)]
pub struct DatapathCollector {
    opts: Options,
    census: Arc<Mutex<Census>>,
    control: &'static ControlMetrics,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    view: Option<DatapathView>,
    series: ServiceSeries,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("State")
    }
}

/// What one scrape read.
struct Snapshot {
    counters: Vec<(Hook, Counter, Traffic)>,
    services: Vec<(String, Totals)>,
    other: Totals,
    tracked: usize,
    backends: Vec<(String, String, Traffic)>,
    events: Option<EventStatus>,
    /// Masquerade port allocation (None: maps of an older agent).
    snat: Option<lb::store::SnatTotals>,
    /// The connection table's insert budget (None: maps of an older agent).
    ct_guard: Option<lb::store::CtGuardTotals>,
}

impl DatapathCollector {
    pub fn new(
        opts: Options,
        census: Arc<Mutex<Census>>,
        control: &'static ControlMetrics,
    ) -> Self {
        DatapathCollector { opts, census, control, state: Mutex::new(State::default()) }
    }

    fn read(&self) -> Result<Snapshot, String> {
        let mut st = self.state.lock().map_err(|_| "collector state poisoned".to_string())?;
        if st.view.is_none() {
            st.view = Some(DatapathView::open(&self.opts.pin_dir).map_err(|e| e.to_string())?);
        }
        let State { view, series } = &mut *st;
        let view = view.as_ref().expect("opened above");
        let counters = view.counters().map_err(|e| e.to_string())?;
        let current: Vec<(u32, String, Totals)> = view
            .service_traffic()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|s| (s.id, s.name, Totals { traffic: s.traffic, sock: s.sock }))
            .collect();
        let tracked = current.len();
        let (services, other) = series.update(&current, self.opts.max_services);
        let mut backends = Vec::new();
        if self.opts.per_backend {
            let chosen: HashMap<u32, &str> = current
                .iter()
                .filter(|(id, n, _)| series.chosen.contains(&(*id, n.clone())))
                .map(|(id, n, _)| (*id, n.as_str()))
                .collect();
            let rows = view
                .backend_traffic(&|id| chosen.contains_key(&id), self.opts.max_backend_series)
                .map_err(|e| e.to_string())?;
            for b in rows {
                backends.push((chosen[&b.svc_id].to_string(), b.backend.to_string(), b.traffic));
            }
            backends.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        }
        let events = view.events().ok();
        let snat = view.tunnels().ok().map(|t| t.snat);
        let ct_guard = view.ct_guard().ok();
        Ok(Snapshot { counters, services, other, tracked, backends, events, snat, ct_guard })
    }
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(&'static str, String)>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue + Copy>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(&'static str, String)>, V)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    if let [(labels, v)] = rows {
        if labels.is_empty() {
            // A bare sample: no `{}` after the name.
            return ConstGauge::new(*v).encode(m);
        }
    }
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

type Rows<V> = Vec<(Vec<(&'static str, String)>, V)>;

fn snat_rows(s: Option<lb::store::SnatTotals>) -> Option<Rows<u64>> {
    let s = s?;
    Some(
        [
            ("allocated", s.allocated),
            ("collision", s.collisions),
            ("reclaimed", s.reclaimed),
            ("exhausted", s.exhausted),
        ]
        .into_iter()
        .map(|(r, v)| (vec![("result", r.to_string())], v))
        .collect(),
    )
}

impl Collector for DatapathCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.read();
        gauge(
            &mut enc,
            "xlb_datapath_up",
            "1 when the pinned datapath maps could be read at this scrape",
            &[(vec![], i64::from(snap.is_ok()))],
        )?;
        let snap = match snap {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: reading the datapath maps");
                // Reopen next time (the agent may have re-created them).
                if let Ok(mut st) = self.state.lock() {
                    st.view = None;
                }
                return self.encode_static(&mut enc);
            }
        };

        // A hook's series appear once it has counted anything, then all of
        // its reasons (zeros included) so rates and ratios have both sides.
        let active: BTreeSet<Hook> =
            snap.counters.iter().filter(|(_, _, n)| n.packets > 0).map(|(h, _, _)| *h).collect();
        let by_class = |class: &str, bytes: bool| -> Rows<u64> {
            snap.counters
                .iter()
                .filter(|(h, c, _)| c.class() == class && active.contains(h))
                .map(|(h, c, n)| {
                    (
                        vec![("hook", h.name().to_string()), ("reason", c.reason().to_string())],
                        if bytes { n.bytes } else { n.packets },
                    )
                })
                .collect()
        };
        counter(
            &mut enc,
            "xlb_drops",
            "Packets dropped by the datapath, by hook and reason",
            &by_class("drop", false),
        )?;
        counter(
            &mut enc,
            "xlb_drop_bytes",
            "Bytes of dropped packets, by hook and reason",
            &by_class("drop", true),
        )?;
        counter(
            &mut enc,
            "xlb_passes",
            "Packets given to the kernel unchanged, by hook and reason",
            &by_class("pass", false),
        )?;
        counter(
            &mut enc,
            "xlb_pass_bytes",
            "Bytes of passed packets, by hook and reason",
            &by_class("pass", true),
        )?;
        counter(
            &mut enc,
            "xlb_handled",
            "Packets the datapath handled (forwarded, decapsulated, translated), by hook and reason",
            &by_class("ok", false),
        )?;
        counter(
            &mut enc,
            "xlb_handled_bytes",
            "Bytes of handled packets, by hook and reason",
            &by_class("ok", true),
        )?;

        if let Some(t) = snat_rows(snap.snat) {
            counter(
                &mut enc,
                "xlb_masquerade_ports",
                "Masquerade port allocation: result=allocated (mappings made), collision (a \
                 candidate port was taken), reclaimed (an idle mapping taken over), exhausted \
                 (a flow dropped: every candidate taken)",
                &t,
            )?;
        }

        if let Some(g) = snap.ct_guard {
            counter(
                &mut enc,
                "xlb_ct_budget_flows",
                "New flows under the connection table's insert budget: result=inserted (an \
                 entry written), skipped (budget spent, e.g. a new-flow flood: served by Maglev \
                 alone, no established entry evicted)",
                &[
                    (vec![("result", "inserted".to_string())], g.inserted),
                    (vec![("result", "skipped".to_string())], g.skipped),
                ],
            )?;
        }

        let svc_rows = |f: &dyn Fn(&SvcTraffic) -> u64| -> Rows<u64> {
            let mut rows: Rows<u64> = snap
                .services
                .iter()
                .map(|(n, s)| (vec![("service", n.clone())], f(&s.traffic)))
                .collect();
            rows.push((vec![("service", OTHER.to_string())], f(&snap.other.traffic)));
            rows
        };
        let sock_rows = |ops: &[SockOp]| -> Rows<u64> {
            let all = snap.services.iter().map(|(n, s)| (n.clone(), s.sock));
            let all = all.chain(std::iter::once((OTHER.to_string(), snap.other.sock)));
            let mut rows = Rows::new();
            for (name, s) in all {
                for (op, f) in ops {
                    let mut labels = vec![("service", name.clone())];
                    if !op.is_empty() {
                        labels.push(("op", op.to_string()));
                    }
                    rows.push((labels, f(&s)));
                }
            }
            rows
        };
        counter(
            &mut enc,
            "xlb_service_packets",
            "Packets forwarded to a service's backends (service=\"other\": services without a series of their own)",
            &svc_rows(&|s| s.packets),
        )?;
        counter(
            &mut enc,
            "xlb_service_bytes",
            "Bytes forwarded to a service's backends",
            &svc_rows(&|s| s.bytes),
        )?;
        counter(
            &mut enc,
            "xlb_service_new_flows",
            "Flows a backend was chosen for (connection-table entries created)",
            &svc_rows(&|s| s.new_flows),
        )?;
        counter(
            &mut enc,
            "xlb_service_affinity_hits",
            "New flows sent to the backend remembered by ClientIP session affinity",
            &svc_rows(&|s| s.affinity_hits),
        )?;
        counter(
            &mut enc,
            "xlb_service_sock_translations",
            "Service addresses translated at the socket (op: connect, sendmsg of unconnected UDP, revnat: recvmsg/getpeername shown the service)",
            &sock_rows(&[
                ("connect", &|s| s.connect),
                ("sendmsg", &|s| s.sendmsg),
                ("revnat", &|s| s.revnat),
            ]),
        )?;
        counter(
            &mut enc,
            "xlb_service_sock_refused",
            "connect()/sendmsg() to a service refused at the socket: no usable backend (ECONNREFUSED)",
            &sock_rows(&[("", &|s| s.refused)]),
        )?;
        counter(
            &mut enc,
            "xlb_service_sock_affinity_hits",
            "Socket translations sent to the backend remembered by ClientIP affinity",
            &sock_rows(&[("", &|s| s.affinity_hits)]),
        )?;
        gauge(
            &mut enc,
            "xlb_metrics_services",
            "Services in the datapath, and how many have their own series (the rest are in service=\"other\")",
            &[
                (vec![("series", "all".to_string())], snap.tracked as i64),
                (vec![("series", "own".to_string())], snap.services.len() as i64),
            ],
        )?;
        if self.opts.per_backend {
            let rows = |bytes: bool| -> Rows<u64> {
                snap.backends
                    .iter()
                    .map(|(s, b, c)| {
                        (
                            vec![("service", s.clone()), ("backend", b.clone())],
                            if bytes { c.bytes } else { c.packets },
                        )
                    })
                    .collect()
            };
            counter(
                &mut enc,
                "xlb_backend_packets",
                "Packets forwarded to a backend",
                &rows(false),
            )?;
            counter(&mut enc, "xlb_backend_bytes", "Bytes forwarded to a backend", &rows(true))?;
        }
        if let Some(ev) = &snap.events {
            counter(
                &mut enc,
                "xlb_events",
                "Datapath events (xlb monitor): written to the ring buffer, or lost because it was full",
                &[
                    (vec![("result", "sent".to_string())], ev.sent),
                    (vec![("result", "lost".to_string())], ev.lost),
                ],
            )?;
            gauge(
                &mut enc,
                "xlb_event_listener_active",
                "1 while an xlb monitor holds a live lease on the event stream",
                &[(vec![], i64::from(ev.active))],
            )?;
        }
        self.encode_static(&mut enc)
    }
}

impl DatapathCollector {
    /// Metrics that do not need the per-CPU maps: map fill from the census,
    /// attach state from the pinned links.
    fn encode_static(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let census = self.census.lock().map(|c| c.clone()).unwrap_or_default();
        if census.finished_unix > 0.0 {
            let rows = |f: &dyn Fn(&super::census::MapFill) -> f64| -> Rows<f64> {
                census
                    .maps
                    .iter()
                    .map(|(m, fill)| (vec![("map", m.to_string())], f(fill)))
                    .collect()
            };
            gauge(
                enc,
                "xlb_map_entries",
                "Entries in a datapath map at the last census",
                &rows(&|f| f.entries as f64),
            )?;
            gauge(
                enc,
                "xlb_map_capacity",
                "max_entries of a datapath map",
                &rows(&|f| f.capacity as f64),
            )?;
            gauge(
                enc,
                "xlb_map_fill_ratio",
                "Entries / capacity of a datapath map at the last census (LRU maps evict near 1)",
                &rows(&|f| {
                    if f.capacity == 0 {
                        0.0
                    } else {
                        f.entries as f64 / f.capacity as f64
                    }
                }),
            )?;
            gauge(
                enc,
                "xlb_map_census_timestamp_seconds",
                "Unix time of the last map census",
                &[(vec![], census.finished_unix)],
            )?;
            gauge(
                enc,
                "xlb_map_census_duration_seconds",
                "Wall time of the last map census (walks every map)",
                &[(vec![], census.duration.as_secs_f64())],
            )?;
            let errs: Rows<i64> =
                census.errors.keys().map(|m| (vec![("map", m.to_string())], 1)).collect();
            gauge(enc, "xlb_map_census_errors", "Maps the last census could not count", &errs)?;
        }
        let links = self.opts.pin_dir.join("links");
        let rows: Rows<i64> = self
            .control
            .attachments()
            .into_iter()
            .map(|a| {
                let up = links.join(format!("{}_{}", a.hook, a.iface)).exists();
                (
                    vec![
                        ("iface", a.iface),
                        ("hook", a.hook.to_string()),
                        ("mode", a.mode.to_string()),
                    ],
                    i64::from(up),
                )
            })
            .collect();
        gauge(
            enc,
            "xlb_attached",
            "1 while a datapath program is attached (its pinned link exists), by interface, hook and mode",
            &rows,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(p: u64) -> Totals {
        Totals {
            traffic: SvcTraffic { packets: p, bytes: p * 100, new_flows: p / 2, affinity_hits: 0 },
            sock: SockTraffic::default(),
        }
    }

    #[test]
    fn top_n_is_sticky_and_other_is_monotonic() {
        let mut ser = ServiceSeries::default();
        let cur = vec![
            (1, "a".to_string(), s(10)),
            (2, "b".to_string(), s(50)),
            (3, "c".to_string(), s(5)),
        ];
        let (own, other) = ser.update(&cur, 1);
        assert_eq!(own, vec![("b".to_string(), s(50))]);
        assert_eq!(other.traffic.packets, 15);
        // a overtakes b: b keeps its series (sticky), a's growth goes to other.
        let cur = vec![
            (1, "a".to_string(), s(100)),
            (2, "b".to_string(), s(60)),
            (3, "c".to_string(), s(5)),
        ];
        let (own, other) = ser.update(&cur, 1);
        assert_eq!(own, vec![("b".to_string(), s(60))]);
        assert_eq!(other.traffic.packets, 105);
        // b goes away: a (most traffic) takes the free series; other never decreases.
        let cur = vec![(1, "a".to_string(), s(120)), (3, "c".to_string(), s(6))];
        let (own, other) = ser.update(&cur, 1);
        assert_eq!(own, vec![("a".to_string(), s(120))]);
        assert_eq!(other.traffic.packets, 106);
        // c removed, its id reused by d starting from zero.
        let cur = vec![(1, "a".to_string(), s(120)), (3, "d".to_string(), s(2))];
        let (_, other) = ser.update(&cur, 1);
        assert_eq!(other.traffic.packets, 108);
    }

    #[test]
    fn cap_zero_puts_everything_in_other() {
        let mut ser = ServiceSeries::default();
        let cur: Vec<_> = (0..10_000u32).map(|i| (i, format!("ns/svc{i}:80"), s(1))).collect();
        let (own, other) = ser.update(&cur, 0);
        assert!(own.is_empty());
        assert_eq!(other.traffic.packets, 10_000);
        let (own, _) = ser.update(&cur, 500);
        assert_eq!(own.len(), 500);
    }
}
