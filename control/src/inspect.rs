//! The inspection CLI: `xlb service list`, `xlb backend list`, `xlb ct
//! list`, `xlb maglev show` and `xlb stats` — what a running node's pinned
//! maps hold, read through `lb::datapath` / `lb::maps` (never from the
//! agent's memory), as text or `--json`.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    process::ExitCode,
};

use anyhow::Context;
use lb::{
    abi,
    datapath::{BackendListing, Datapath},
    maps::Maps,
};
use serde::Serialize;

use crate::monitor;

fn open(pin_dir: &Path) -> anyhow::Result<Datapath> {
    Datapath::open(pin_dir).with_context(|| {
        format!(
            "opening the datapath pinned at {} (is `xlb run` running on this node?)",
            pin_dir.display()
        )
    })
}

/// Every service with its frontends and backends.
pub fn services(pin_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let dp = open(pin_dir)?;
    if json {
        let list = dp.list()?;
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", dp.dump()?);
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
    let list = open(pin_dir)?.list()?;
    let rows: Vec<BackendRow> = list
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| BackendRow { service: &s.name, backend: b }))
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<32} {:>6} {:<28} {:<24} {:<11} {:>6} {:>12} {:>14}",
        "SERVICE", "ID", "BACKEND", "NODE", "STATE", "SLOTS", "PACKETS", "BYTES"
    );
    for r in rows {
        let b = r.backend;
        let addr = std::net::SocketAddr::new(b.addr, b.port).to_string();
        let node = b.node.map_or("-".to_string(), |n| n.to_string());
        let state = if b.terminating { "terminating" } else { "active" };
        println!(
            "{:<32} {:>6} {:<28} {:<24} {:<11} {:>6} {:>12} {:>14}",
            r.service, b.id, addr, node, state, b.slots, b.packets, b.bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn open_maps(pin_dir: &Path) -> anyhow::Result<Maps> {
    Maps::open(pin_dir).with_context(|| {
        format!(
            "opening the maps pinned at {} (is `xlb run` running on this node?)",
            pin_dir.display()
        )
    })
}

/// Service names by id, from xlb_svc_names.
fn service_names(maps: &Maps) -> anyhow::Result<BTreeMap<u32, String>> {
    let mut out = BTreeMap::new();
    for item in maps.svc_names.iter() {
        let (id, n) = item.context("reading xlb_svc_names")?;
        let end = n.name.iter().position(|&c| c == 0).unwrap_or(n.name.len());
        out.insert(id, String::from_utf8_lossy(&n.name[..end]).into_owned());
    }
    Ok(out)
}

fn sock(ip: Option<IpAddr>, port_be: u16) -> String {
    ip.map_or("?".into(), |ip| SocketAddr::new(ip, u16::from_be(port_be)).to_string())
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

/// `xlb ct list`: connection-table entries (client -> frontend, backend).
pub fn ct_list(pin_dir: &Path, f: &CtFilter, json: bool) -> anyhow::Result<ExitCode> {
    let maps = open_maps(pin_dir)?;
    let names = service_names(&maps)?;
    let now = monitor::monotonic_ns();
    if let Some(s) = &f.service {
        if !names.values().any(|n| monitor::service_matches(s, n)) {
            anyhow::bail!("--service {s:?}: no such service in the datapath");
        }
    }
    let mut rows = Vec::new();
    let mut scanned = 0u64;
    let mut truncated = false;
    for item in maps.ct.iter() {
        // An LRU entry can vanish between key and lookup: skip it.
        let Ok((k, v)) = item else { continue };
        scanned += 1;
        let client = abi::addr_from_abi(&k.saddr, k.family);
        if f.client.is_some() && client != f.client {
            continue;
        }
        let service = names.get(&v.svc_id).cloned().unwrap_or(format!("id:{}", v.svc_id));
        if let Some(s) = &f.service {
            if !monitor::service_matches(s, &service) {
                continue;
            }
        }
        if rows.len() >= f.limit {
            truncated = true;
            break;
        }
        let be = maps.backends.get(&v.backend_id, 0).ok();
        let stale = be.is_none_or(|b| b.gen != v.backend_gen || b.flags & abi::BE_F_ACTIVE == 0);
        rows.push(CtRow {
            client: sock(client, k.sport),
            frontend: sock(abi::addr_from_abi(&k.daddr, k.family), k.dport),
            proto: lb::model::Proto::from_number(k.proto)
                .map_or(format!("proto-{}", k.proto), |p| p.to_string()),
            service,
            backend: be.map_or("?".into(), |b| sock(abi::addr_from_abi(&b.addr, b.family), b.port)),
            backend_id: v.backend_id,
            stale,
            age_s: now.saturating_sub(v.created_ns) as f64 / 1e9,
        });
    }
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
    if truncated {
        eprintln!("(stopped at --limit {} after scanning {scanned} entries)", f.limit);
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
    let maps = open_maps(pin_dir)?;
    let names = service_names(&maps)?;
    let ids: Vec<(u32, String)> = names
        .iter()
        .filter(|(_, n)| monitor::service_matches(service, n))
        .map(|(id, n)| (*id, n.clone()))
        .collect();
    if ids.is_empty() {
        anyhow::bail!("service {service:?}: not in the datapath (see `xlb service list`)");
    }
    let mut members: BTreeMap<u32, Vec<(u32, u32)>> = BTreeMap::new();
    for item in maps.svc_backends.iter() {
        let (k, be) = item.context("reading xlb_svc_backends")?;
        members.entry(k.svc_id).or_default().push((k.index, be));
    }
    let mut sizes: BTreeMap<u32, u32> = BTreeMap::new();
    for item in maps.frontends.iter() {
        let (_, v) = item.context("reading xlb_frontends")?;
        sizes.insert(v.id, v.maglev_size);
    }
    let mut reports = Vec::new();
    for (id, name) in ids {
        let m = sizes.get(&id).copied().unwrap_or(0).min(abi::MAGLEV_MAX as u32);
        let table = match maps.maglev.get(&id, 0) {
            Ok(t) => t.slot[..m as usize].to_vec(),
            Err(_) => Vec::new(),
        };
        let mut count: BTreeMap<u16, usize> = BTreeMap::new();
        for s in &table {
            *count.entry(*s).or_default() += 1;
        }
        let list = members.get(&id).cloned().unwrap_or_default();
        let with_slots =
            list.iter().filter(|(i, _)| count.get(&(*i as u16)).is_some_and(|c| *c > 0)).count();
        let ideal = if with_slots == 0 { 0.0 } else { table.len() as f64 / with_slots as f64 };
        let mut rows = Vec::new();
        let mut known = 0;
        for (index, be_id) in list {
            let slots = count.get(&(index as u16)).copied().unwrap_or(0);
            known += slots;
            let b = maps.backends.get(&be_id, 0).ok();
            rows.push(SlotRow {
                backend: b
                    .map_or("?".into(), |b| sock(abi::addr_from_abi(&b.addr, b.family), b.port)),
                id: be_id,
                index,
                terminating: b.is_some_and(|b| b.flags & abi::BE_F_TERMINATING != 0),
                slots,
                share: if table.is_empty() { 0.0 } else { slots as f64 / table.len() as f64 },
                ideal_slots: if slots > 0 { ideal } else { 0.0 },
                deviation: if slots > 0 && ideal > 0.0 { slots as f64 / ideal - 1.0 } else { 0.0 },
            });
        }
        rows.sort_by(|a, b| a.backend.cmp(&b.backend));
        let max_abs_deviation = rows.iter().map(|r| r.deviation.abs()).fold(0.0, f64::max);
        reports.push(MaglevReport {
            service: name,
            id,
            table_size: table.len() as u32,
            backends: rows,
            orphan_slots: table.len() - known,
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
            "  {:<46} {:>6} {:>5} {:>7} {:>8} {:>9} {:>9}",
            "BACKEND", "ID", "INDEX", "SLOTS", "SHARE", "IDEAL", "DEVIATION"
        );
        for b in &r.backends {
            println!(
                "  {:<46} {:>6} {:>5} {:>7} {:>7.2}% {:>9.1} {:>8.2}%{}",
                b.backend,
                b.id,
                b.index,
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
}

#[derive(Serialize)]
struct Stats {
    counters: Vec<CounterRow>,
    services: Vec<ServiceTotals>,
    events_sent: Option<u64>,
    events_lost: Option<u64>,
    event_listener: Option<bool>,
}

/// `xlb stats`: datapath counters by reason and per-service totals.
pub fn stats(pin_dir: &Path, all: bool, json: bool) -> anyhow::Result<ExitCode> {
    let maps = open_maps(pin_dir)?;
    let counters = lb::loader::read_counters(pin_dir).context("reading xlb_counters")?;
    let mut services = Vec::new();
    for (id, name) in service_names(&maps)? {
        let s = maps.svc_stats_sum(id).with_context(|| format!("xlb_svc_stats[{id}]"))?;
        services.push(ServiceTotals {
            service: name,
            id,
            packets: s.packets,
            bytes: s.bytes,
            new_flows: s.new_flows,
            affinity_hits: s.affinity_hits,
        });
    }
    services.sort_by(|a, b| b.packets.cmp(&a.packets).then(a.service.cmp(&b.service)));
    let ev = monitor::event_status(pin_dir).ok();
    let stats = Stats {
        counters: counters
            .iter()
            .filter(|(_, n)| all || n.packets > 0)
            .map(|(c, n)| CounterRow {
                class: c.class(),
                reason: c.reason(),
                packets: n.packets,
                bytes: n.bytes,
            })
            .collect(),
        services,
        events_sent: ev.as_ref().map(|e| e.sent),
        events_lost: ev.as_ref().map(|e| e.lost),
        event_listener: ev.as_ref().map(|e| e.active),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<6} {:<20} {:>14} {:>16}", "CLASS", "REASON", "PACKETS", "BYTES");
    for c in &stats.counters {
        println!("{:<6} {:<20} {:>14} {:>16}", c.class, c.reason, c.packets, c.bytes);
    }
    println!();
    println!(
        "{:<40} {:>6} {:>14} {:>16} {:>12} {:>12}",
        "SERVICE", "ID", "PACKETS", "BYTES", "NEW_FLOWS", "AFFINITY"
    );
    for s in &stats.services {
        println!(
            "{:<40} {:>6} {:>14} {:>16} {:>12} {:>12}",
            s.service, s.id, s.packets, s.bytes, s.new_flows, s.affinity_hits
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
