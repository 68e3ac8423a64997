//! Text rendering of a [`Desired`] state and of [`ConfigErrors`]: the output
//! of `xlb validate` and of the golden translation tests. Deterministic:
//! services by key, frontends by (kind, address, port, protocol), backends by
//! name, so equal states render byte-for-byte equal.
use std::{fmt::Write, net::SocketAddr};

use lb::model::{BackendState, Desired, Encap, FrontendKind, NoEndpoints, Service};

use crate::translate::ConfigErrors;

/// Renders the whole desired state, one line per node setting, service,
/// frontend and backend.
pub fn desired(d: &Desired) -> String {
    let mut out = String::new();
    let v4 = d.node.tunnel_v4.map_or("none".to_string(), |a| a.to_string());
    let v6 = d.node.tunnel_v6.map_or("none".to_string(), |a| a.to_string());
    writeln!(out, "node tunnel_v4={v4} tunnel_v6={v6}").ok();
    for svc in d.services.values() {
        service(&mut out, svc);
    }
    out
}

fn service(out: &mut String, svc: &Service) {
    // The size the datapath uses; "auto:" when chosen from the backends.
    let maglev = if svc.maglev_size == lb::model::MAGLEV_SIZE_AUTO {
        format!("auto:{}", svc.table_size())
    } else {
        svc.table_size().to_string()
    };
    let encap = match svc.encap {
        Encap::Geneve => "geneve",
        Encap::Ipip => "ipip",
    };
    let affinity =
        svc.affinity.map_or("none".to_string(), |a| format!("clientip/{}s", a.timeout.as_secs()));
    let ranges = if svc.source_ranges.is_empty() {
        "any".to_string()
    } else {
        let list: Vec<String> = svc.source_ranges.iter().map(|c| c.to_string()).collect();
        list.join(",")
    };
    // Shown only when not the default, so most lines stay as they were.
    let no_endpoints = match svc.no_endpoints {
        NoEndpoints::Reject => "",
        NoEndpoints::Drop => " no_endpoints=drop",
    };
    writeln!(
        out,
        "service {} maglev={maglev} encap={encap} affinity={affinity} source_ranges={ranges}{no_endpoints}",
        svc.key
    )
    .ok();
    for (what, list) in [("frontend", &svc.frontends), ("socket", &svc.sock_frontends)] {
        let mut frontends = list.clone();
        frontends.sort_by_key(|f| (f.kind, f.addr, f.port, f.proto));
        for f in frontends {
            let kind = match f.kind {
                FrontendKind::LoadBalancer => "loadbalancer",
                FrontendKind::ExternalIp => "externalip",
                FrontendKind::NodePort => "nodeport",
                FrontendKind::ClusterIp => "clusterip",
                FrontendKind::HostPort => "hostport",
            };
            let addr = SocketAddr::new(f.addr, f.port);
            writeln!(out, "  {what} {kind} {addr}/{}", f.proto).ok();
        }
    }
    let mut backends = svc.backends.clone();
    backends.sort_by(|a, b| a.name.cmp(&b.name));
    for b in backends {
        let state = match b.state {
            BackendState::Active => "active",
            BackendState::Terminating => "terminating",
        };
        writeln!(out, "  backend {} node={} weight={} {state}", b.name, b.node, b.weight).ok();
    }
}

/// Renders a rejected configuration: a header line, then one error a line.
pub fn errors(e: &ConfigErrors) -> String {
    let n = e.0.len();
    let mut out = format!("rejected: {n} error{}\n", if n == 1 { "" } else { "s" });
    for err in &e.0 {
        writeln!(out, "  {err}").ok();
    }
    out
}
