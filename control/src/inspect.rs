//! The inspection CLI: `xlb service list`, `xlb backend list`, `xlb ct
//! list`, `xlb maglev show`, `xlb endpoint list`, `xlb tunnel list` and
//! `xlb stats` — what a running node's pinned
//! maps hold, read through lb's read model ([`lb::view::DatapathView`],
//! never from the agent's memory), as text or `--json`. This module only
//! picks and prints.
use std::{net::IpAddr, path::Path, process::ExitCode};

use anyhow::Context;
use lb::view::{
    render, service_matches, BackendListing, ConnectionFilter, DatapathView, ServiceTraffic,
};
use serde::Serialize;

fn open(pin_dir: &Path) -> anyhow::Result<DatapathView> {
    DatapathView::open(pin_dir).with_context(|| {
        format!(
            "opening the maps pinned at {} (is `xlb run` running on this node?)",
            pin_dir.display()
        )
    })
}

/// Every service with its frontends and backends.
pub fn services(pin_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let list = open(pin_dir)?.services()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", render(&list));
    }
    Ok(ExitCode::SUCCESS)
}

/// A backend row: the backend and the service it belongs to.
#[derive(Serialize)]
struct BackendRow<'a> {
    service: &'a str,
    #[serde(flatten)]
    backend: &'a BackendListing,
}

/// Every backend of every service, one a line.
pub fn backends(pin_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let list = open(pin_dir)?.services()?;
    let rows: Vec<BackendRow> = list
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| BackendRow { service: &s.name, backend: b }))
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<32} {:>6} {:<28} {:<24} {:<11} {:>6} {:>6} {:>12} {:>14}",
        "SERVICE", "ID", "BACKEND", "NODE", "STATE", "WEIGHT", "SLOTS", "PACKETS", "BYTES"
    );
    for r in rows {
        let b = r.backend;
        let addr = std::net::SocketAddr::new(b.addr, b.port).to_string();
        let node = b.node.map_or("-".to_string(), |n| n.to_string());
        let state = if b.terminating { "terminating" } else { "active" };
        println!(
            "{:<32} {:>6} {:<28} {:<24} {:<11} {:>6} {:>6} {:>12} {:>14}",
            r.service, b.id, addr, node, state, b.weight, b.slots, b.packets, b.bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One connection-table entry.
#[derive(Serialize)]
struct CtRow {
    client: String,
    frontend: String,
    proto: String,
    service: String,
    backend: String,
    backend_id: u32,
    /// The entry names a backend id that has since been freed or reused.
    stale: bool,
    age_s: f64,
}

pub struct CtFilter {
    pub service: Option<String>,
    pub client: Option<IpAddr>,
    pub limit: usize,
}

fn or_unknown<T: ToString>(v: Option<T>) -> String {
    v.map_or("?".into(), |v| v.to_string())
}

/// `xlb ct list`: connection-table entries (client -> frontend, backend).
pub fn ct_list(pin_dir: &Path, f: &CtFilter, json: bool) -> anyhow::Result<ExitCode> {
    let view = open(pin_dir)?;
    if let Some(s) = &f.service {
        if !view.service_names()?.values().any(|n| service_matches(s, n)) {
            anyhow::bail!("--service {s:?}: no such service in the datapath");
        }
    }
    let now = lb::events::monotonic_ns();
    let found = view.connections(&ConnectionFilter {
        service: f.service.clone(),
        client: f.client,
        limit: Some(f.limit),
    })?;
    let rows: Vec<CtRow> = found
        .entries
        .into_iter()
        .map(|c| CtRow {
            client: or_unknown(c.client),
            frontend: or_unknown(c.frontend),
            proto: c.proto,
            service: c.service.unwrap_or(format!("id:{}", c.svc_id)),
            backend: or_unknown(c.backend),
            backend_id: c.backend_id,
            stale: c.stale,
            age_s: now.saturating_sub(c.created_ns) as f64 / 1e9,
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<46} {:<46} {:<5} {:<32} {:<46} {:>9}",
            "CLIENT", "FRONTEND", "PROTO", "SERVICE", "BACKEND", "AGE(s)"
        );
        for r in &rows {
            println!(
                "{:<46} {:<46} {:<5} {:<32} {:<46} {:>9.1}",
                r.client,
                r.frontend,
                r.proto,
                r.service,
                if r.stale { format!("{} (stale)", r.backend) } else { r.backend.clone() },
                r.age_s
            );
        }
    }
    if found.truncated {
        eprintln!("(stopped at --limit {} after scanning {} entries)", f.limit, found.scanned);
    }
    Ok(ExitCode::SUCCESS)
}

/// One backend's part of a Maglev table.
#[derive(Serialize)]
struct SlotRow {
    backend: String,
    id: u32,
    index: u32,
    terminating: bool,
    weight: u32,
    slots: usize,
    /// slots / table size.
    share: f64,
    /// table size / backends with slots (equal weights).
    ideal_slots: f64,
    /// slots / ideal - 1.
    deviation: f64,
}

#[derive(Serialize)]
struct MaglevReport {
    service: String,
    id: u32,
    table_size: u32,
    backends: Vec<SlotRow>,
    /// Slots naming an index with no backend (must be 0).
    orphan_slots: usize,
    max_abs_deviation: f64,
}

/// `xlb maglev show SERVICE`: how the table's slots are spread over backends.
pub fn maglev_show(pin_dir: &Path, service: &str, json: bool) -> anyhow::Result<ExitCode> {
    let list = open(pin_dir)?.services()?;
    let chosen: Vec<_> = list.iter().filter(|s| service_matches(service, &s.name)).collect();
    if chosen.is_empty() {
        anyhow::bail!("service {service:?}: not in the datapath (see `xlb service list`)");
    }
    let mut reports = Vec::new();
    for s in chosen {
        let size = s.table_size;
        let with_slots = s.backends.iter().filter(|b| b.slots > 0).count();
        let ideal = if with_slots == 0 { 0.0 } else { size as f64 / with_slots as f64 };
        let mut rows: Vec<SlotRow> = s
            .backends
            .iter()
            .map(|b| SlotRow {
                backend: std::net::SocketAddr::new(b.addr, b.port).to_string(),
                id: b.id,
                index: b.index,
                terminating: b.terminating,
                weight: b.weight,
                slots: b.slots,
                share: if size == 0 { 0.0 } else { b.slots as f64 / size as f64 },
                ideal_slots: if b.slots > 0 { ideal } else { 0.0 },
                deviation: if b.slots > 0 && ideal > 0.0 {
                    b.slots as f64 / ideal - 1.0
                } else {
                    0.0
                },
            })
            .collect();
        rows.sort_by(|a, b| a.backend.cmp(&b.backend));
        let known: usize = rows.iter().map(|r| r.slots).sum();
        let max_abs_deviation = rows.iter().map(|r| r.deviation.abs()).fold(0.0, f64::max);
        reports.push(MaglevReport {
            service: s.name.clone(),
            id: s.id,
            table_size: size as u32,
            backends: rows,
            orphan_slots: size.saturating_sub(known),
            max_abs_deviation,
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(ExitCode::SUCCESS);
    }
    for r in &reports {
        println!(
            "service {} id={} table={} backends={} max deviation from ideal={:.2}%{}",
            r.service,
            r.id,
            r.table_size,
            r.backends.len(),
            r.max_abs_deviation * 100.0,
            if r.orphan_slots > 0 {
                format!(" ORPHAN SLOTS={}", r.orphan_slots)
            } else {
                String::new()
            }
        );
        println!(
            "  {:<46} {:>6} {:>5} {:>6} {:>7} {:>8} {:>9} {:>9}",
            "BACKEND", "ID", "INDEX", "WEIGHT", "SLOTS", "SHARE", "IDEAL", "DEVIATION"
        );
        for b in &r.backends {
            println!(
                "  {:<46} {:>6} {:>5} {:>6} {:>7} {:>7.2}% {:>9.1} {:>8.2}%{}",
                b.backend,
                b.id,
                b.index,
                b.weight,
                b.slots,
                b.share * 100.0,
                b.ideal_slots,
                b.deviation * 100.0,
                if b.terminating { " terminating" } else { "" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct CounterRow {
    hook: &'static str,
    class: &'static str,
    reason: &'static str,
    packets: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct ServiceTotals {
    service: String,
    id: u32,
    packets: u64,
    bytes: u64,
    new_flows: u64,
    affinity_hits: u64,
    /// Translations at the socket: connect() and unconnected UDP datagrams.
    sock_translated: u64,
    /// recvmsg()/getpeername() shown the service address.
    sock_revnat: u64,
    /// connect()/sendmsg() refused (no usable backend).
    sock_refused: u64,
}

impl From<ServiceTraffic> for ServiceTotals {
    fn from(s: ServiceTraffic) -> Self {
        let t = s.traffic;
        ServiceTotals {
            service: s.name,
            id: s.id,
            packets: t.packets,
            bytes: t.bytes,
            new_flows: t.new_flows,
            affinity_hits: t.affinity_hits + s.sock.affinity_hits,
            sock_translated: s.sock.connect + s.sock.sendmsg,
            sock_revnat: s.sock.revnat,
            sock_refused: s.sock.refused,
        }
    }
}

#[derive(Serialize)]
struct Stats {
    counters: Vec<CounterRow>,
    services: Vec<ServiceTotals>,
    events_sent: Option<u64>,
    events_lost: Option<u64>,
    event_listener: Option<bool>,
}

/// `xlb stats`: datapath counters by hook and reason, and per-service totals.
pub fn stats(pin_dir: &Path, all: bool, json: bool) -> anyhow::Result<ExitCode> {
    let view = open(pin_dir)?;
    let counters = view.counters()?;
    let mut services: Vec<ServiceTotals> =
        view.service_traffic()?.into_iter().map(ServiceTotals::from).collect();
    services.sort_by(|a, b| {
        (b.packets + b.sock_translated)
            .cmp(&(a.packets + a.sock_translated))
            .then(a.service.cmp(&b.service))
    });
    let ev = view.events().ok();
    let stats = Stats {
        counters: counters
            .iter()
            .filter(|(_, _, n)| all || n.packets > 0)
            .map(|(h, c, n)| CounterRow {
                hook: h.name(),
                class: c.class(),
                reason: c.reason(),
                packets: n.packets,
                bytes: n.bytes,
            })
            .collect(),
        services,
        events_sent: ev.map(|e| e.sent),
        events_lost: ev.map(|e| e.lost),
        event_listener: ev.map(|e| e.active),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<12} {:<6} {:<20} {:>14} {:>16}", "HOOK", "CLASS", "REASON", "PACKETS", "BYTES");
    for c in &stats.counters {
        println!(
            "{:<12} {:<6} {:<20} {:>14} {:>16}",
            c.hook, c.class, c.reason, c.packets, c.bytes
        );
    }
    println!();
    println!(
        "{:<40} {:>6} {:>14} {:>16} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "SERVICE",
        "ID",
        "PACKETS",
        "BYTES",
        "NEW_FLOWS",
        "AFFINITY",
        "SOCK_XLATE",
        "SOCK_REV",
        "REFUSED"
    );
    for s in &stats.services {
        println!(
            "{:<40} {:>6} {:>14} {:>16} {:>12} {:>12} {:>12} {:>10} {:>10}",
            s.service,
            s.id,
            s.packets,
            s.bytes,
            s.new_flows,
            s.affinity_hits,
            s.sock_translated,
            s.sock_revnat,
            s.sock_refused
        );
    }
    if let Some(e) = ev {
        println!();
        println!(
            "events: sent={} lost={} listener={}",
            e.sent,
            e.lost,
            if e.active { "yes" } else { "no" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A pod of this node: the datapath's entry, named by the plugin's record.
#[derive(Serialize)]
struct EndpointRow {
    /// "namespace/name" (or the container id); "?" without a record.
    pod: String,
    /// The host-side veth.
    interface: String,
    #[serde(flatten)]
    endpoint: lb::view::EndpointListing,
}

/// `xlb endpoint list`: the pods xlb_endpoints holds.
pub fn endpoints(pin_dir: &Path, state_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let eps = open(pin_dir)?.endpoints()?;
    let (records, _) = xlb_cni::record::read_all(state_dir);
    let rows: Vec<EndpointRow> = eps
        .into_iter()
        .map(|e| {
            let rec = records.iter().find(|r| r.ifindex == e.ifindex);
            EndpointRow {
                pod: rec.map_or("?".into(), |r| r.pod.clone()),
                interface: rec
                    .map_or_else(|| format!("ifindex {}", e.ifindex), |r| r.host_if.clone()),
                endpoint: e,
            }
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<32} {:<16} {:>8} {:>10} {:<18} ADDRESSES",
        "POD", "INTERFACE", "IFINDEX", "IDENTITY", "MAC"
    );
    for r in rows {
        let addrs: Vec<String> = r.endpoint.addrs.iter().map(ToString::to_string).collect();
        println!(
            "{:<32} {:<16} {:>8} {:>10} {:<18} {}",
            r.pod,
            r.interface,
            r.endpoint.ifindex,
            r.endpoint.identity,
            r.endpoint.mac,
            addrs.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `xlb tunnel list`: every node's pod ranges, the tunnel peers, masquerade.
pub fn tunnels(pin_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let t = open(pin_dir)?.tunnels()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&t)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<28} {:<28} OWNER", "POD RANGE", "NODE (UNDERLAY)");
    for r in &t.routes {
        let node = r.node.map_or("?".into(), |n| n.to_string());
        println!("{:<28} {:<28} {}", r.cidr, node, if r.local { "this node" } else { "remote" });
    }
    println!("\n{:<28} ROLE", "TUNNEL PEER");
    for p in &t.peers {
        let role = match (p.node, p.load_balancer) {
            (true, true) => "node, load balancer",
            (true, false) => "node",
            (false, true) => "load balancer",
            (false, false) => "-",
        };
        println!("{:<28} {role}", p.addr.to_string());
    }
    match t.masquerade_ports {
        Some((a, b)) => println!(
            "\nmasquerade: ports {a}-{b}, not for {}; {} mapped, {} collisions, {} reclaimed, {} flows dropped (no free port)",
            if t.non_masquerade.is_empty() { "-".to_string() } else { t.non_masquerade.join(", ") },
            t.snat.allocated,
            t.snat.collisions,
            t.snat.reclaimed,
            t.snat.exhausted
        ),
        None => println!("\nmasquerade: off"),
    }
    Ok(ExitCode::SUCCESS)
}
