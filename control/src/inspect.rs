//! `xlb service list` and `xlb backend list`: what a running node's pinned
//! maps hold, read through `lb::datapath` (never from the agent's memory).
use std::{path::Path, process::ExitCode};

use anyhow::Context;
use lb::datapath::{BackendListing, Datapath};
use serde::Serialize;

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
