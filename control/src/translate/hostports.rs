//! hostPort: a container port a Pod publishes on its node
//! (`spec.containers[].ports[].hostPort`, on `hostIP` or on every node
//! address), what the CNI portmap plugin does with DNAT rules. Only this
//! node's pods count. Each mapping becomes a datapath service with the one
//! pod as its backend: packet frontends on the host address(es), so traffic
//! from outside is delivered by XDP, and the same plus loopback as socket
//! frontends, so the node's own processes and its pods reach it at the
//! socket. Keyed "namespace/pod:hostport-PORT-PROTO[/ipv6]" ([`key`]).
//! [`super::Translator`] translates a Pod when it changes (its relevance
//! is decided by [`relevant`], so the tracker keeps only these pods).
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use lb::model::{Backend, Frontend, FrontendKind, Service, ServiceKey};

use super::{
    errors::{ErrorList, ObjectRef},
    nodes::{NodeAddr, Nodes},
    parse_ip, parse_proto, port_number,
    services::{PortService, IPV6_KEY_SUFFIX},
    TranslateOptions,
};

/// Whether `pod` maps a host port on node `node` (scheduled there, not
/// finished, with a hostPort on some container).
pub(super) fn relevant(pod: &Pod, node: &str) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    spec.node_name.as_deref() == Some(node)
        && !matches!(phase, Some("Succeeded" | "Failed"))
        && spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .any(|p| p.host_port.is_some())
}

/// The datapath service key of a pod's host port.
pub fn key(namespace: &str, pod: &str, host_port: u16, proto: &str, v6: bool) -> ServiceKey {
    let v6 = if v6 { IPV6_KEY_SUFFIX } else { "" };
    ServiceKey(format!("{namespace}/{pod}:hostport-{host_port}-{}{v6}", proto.to_lowercase()))
}

/// The host port mappings of `pod` (this node's: see [`relevant`]).
pub(super) fn translate(
    pod: &Pod,
    opts: &TranslateOptions,
    nodes: &Nodes,
    errors: &mut ErrorList,
) -> Vec<PortService> {
    if !relevant(pod, &opts.node_name) {
        return Vec::new();
    }
    let object = ObjectRef::of(pod);
    let ns = object.namespace.clone().unwrap_or_else(|| "default".into());
    let this_node: &[NodeAddr] = nodes.addrs(&opts.node_name).unwrap_or_default();
    let pod_ips = pod_ips(pod, &object, errors);
    let mut out = Vec::new();
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter().enumerate());
    for (i, c) in containers {
        for (j, port) in c.ports.iter().flatten().enumerate() {
            let Some(hp) = port.host_port else { continue };
            let field = |f: &str| format!("spec.containers[{i}].ports[{j}].{f}");
            let proto = match parse_proto(port.protocol.as_deref()) {
                Ok(p) => p,
                Err(p) => {
                    errors.push(&object, field("protocol"), p);
                    continue;
                }
            };
            let (host_port, container_port) =
                match (port_number(hp), port_number(port.container_port)) {
                    (Ok(h), Ok(c)) => (h, c),
                    (Err(p), _) => {
                        errors.push(&object, field("hostPort"), p);
                        continue;
                    }
                    (_, Err(p)) => {
                        errors.push(&object, field("containerPort"), p);
                        continue;
                    }
                };
            let host_ip = match port.host_ip.as_deref().filter(|s| !s.is_empty()) {
                None => None,
                Some(s) => match parse_ip(s) {
                    Ok(a) if a.is_unspecified() => None,
                    Ok(a) => Some(a),
                    Err(p) => {
                        errors.push(&object, field("hostIP"), p);
                        continue;
                    }
                },
            };
            for &pod_ip in &pod_ips {
                let v6 = pod_ip.is_ipv6();
                let hosts: Vec<IpAddr> = match host_ip {
                    Some(a) if a.is_ipv6() == v6 => vec![a],
                    Some(_) => continue,
                    None => {
                        this_node.iter().map(|a| a.addr).filter(|a| a.is_ipv6() == v6).collect()
                    }
                };
                let Ok(node) = nodes.tunnel_endpoint(&opts.node_name, v6) else { continue };
                let fe =
                    |addr| Frontend { addr, port: host_port, proto, kind: FrontendKind::HostPort };
                let name = object.name.as_str();
                let mut service = Service::new(key(&ns, name, host_port, &proto.to_string(), v6));
                service.frontends = hosts.iter().map(|a| fe(*a)).collect();
                service.sock_frontends = service.frontends.clone();
                if host_ip.is_none() {
                    let lo: IpAddr =
                        if v6 { "::1".parse().expect("an address") } else { [127, 0, 0, 1].into() };
                    service.sock_frontends.push(fe(lo));
                }
                service.backends = vec![Backend::new(pod_ip, container_port, node)];
                let fields = vec![field("hostPort"); service.frontends.len()];
                let sock_fields = vec![None; service.sock_frontends.len()];
                out.push(PortService { service, fields, sock_fields });
            }
        }
    }
    out
}

/// The pod's addresses, one per family: status.podIPs, else status.podIP.
fn pod_ips(pod: &Pod, object: &ObjectRef, errors: &mut ErrorList) -> Vec<IpAddr> {
    let status = pod.status.as_ref();
    let listed: Vec<(String, String)> = match status.and_then(|s| s.pod_ips.as_ref()) {
        Some(l) if !l.is_empty() => l
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("status.podIPs[{i}].ip"), p.ip.clone()))
            .collect(),
        _ => status
            .and_then(|s| s.pod_ip.clone())
            .map(|ip| vec![("status.podIP".to_string(), ip)])
            .unwrap_or_default(),
    };
    let mut out: Vec<IpAddr> = Vec::new();
    for (field, ip) in listed {
        match parse_ip(&ip) {
            Ok(a) if !out.iter().any(|o| o.is_ipv6() == a.is_ipv6()) => out.push(a),
            Ok(_) => {}
            Err(p) => errors.push(object, field, p),
        }
    }
    out
}
