//! EndpointSlices to the backends of one service port, with kube-proxy's
//! rules: which slice port carries the service port, the endpoint's address
//! family and node, the ready/serving/terminating selection, and the
//! node-local set of the Local traffic policies (external and internal). Also which Service a slice belongs to (its
//! `kubernetes.io/service-name` label, for the [`super::tracker::Tracker`])
//! and the count of ready endpoints on this node (for health checks). Its
//! caller is [`super::services`]; node addresses come from [`super::nodes`].
use std::{
    collections::HashSet,
    fmt::Write,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use k8s_openapi::api::discovery::v1::EndpointPort;
use lb::model::{Backend, BackendState, Proto};

use crate::cluster::slice::{Endpoint, EndpointSlice};

use super::{
    errors::{ErrorList, ObjectRef, Problem},
    nodes::Nodes,
    parse_ip, parse_proto, port_number,
};

/// EndpointSlice label naming the Service it belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// (namespace, name) of a Service, as an EndpointSlice's label names it.
pub(super) type ServiceName = (String, String);

/// The Service `slice` belongs to, if it is labelled with one.
pub(super) fn owner(slice: &EndpointSlice) -> Option<ServiceName> {
    let svc = slice.service_name.as_ref()?;
    let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
    Some((ns.to_string(), svc.clone()))
}

/// The nodes `slice`'s endpoints name, each once.
pub(super) fn nodes_named(slice: &EndpointSlice) -> Vec<&str> {
    let mut names: Vec<&str> =
        slice.endpoints.iter().filter_map(|ep| ep.node_name.as_deref()).collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// A service port's targetPort: a number, or a container port name resolved
/// per endpoint through the EndpointSlice's ports.
pub(super) enum Target {
    Number(u16),
    Named(String),
}

/// What one service port asks of its Service's slices.
pub(super) struct PortQuery<'a> {
    /// The port's name ("" when unnamed): the slice port of the same name
    /// carries it.
    pub(super) name: &'a str,
    pub(super) proto: Proto,
    pub(super) target: &'a Target,
}

/// The backends of one service port under each traffic policy, kube-proxy's
/// selection applied to each set on its own (so a node whose local
/// endpoints are all terminating serves from them, as kube-proxy does).
#[derive(Debug, Default)]
pub(super) struct BackendSets {
    /// Every endpoint: traffic policy Cluster.
    pub(super) cluster: Vec<Backend>,
    /// This node's endpoints: externalTrafficPolicy / internalTrafficPolicy Local.
    pub(super) local: Vec<Backend>,
}

/// A Service's EndpointSlices and what resolving their endpoints reads.
pub(super) struct Endpoints<'a> {
    pub(super) slices: &'a [&'a EndpointSlice],
    pub(super) nodes: &'a Nodes,
    pub(super) this_node: &'a str,
}

/// An endpoint of one service port, before the kube-proxy selection.
struct Candidate {
    addr: IpAddr,
    port: u16,
    node: IpAddr,
    local: bool,
    ready: bool,
    serving: bool,
    terminating: bool,
}

impl Endpoints<'_> {
    /// The backends of one service port, every endpoint and this node's.
    /// Problems of the slices go to `errors` (once).
    pub(super) fn backends(&self, port: &PortQuery, errors: &mut ErrorList) -> BackendSets {
        let mut candidates = Vec::new();
        for slice in self.slices {
            self.slice_candidates(slice, port, errors, &mut candidates);
        }
        let cluster = select(&candidates);
        candidates.retain(|c| c.local);
        BackendSets { cluster, local: select(&candidates) }
    }

    fn slice_candidates(
        &self,
        slice: &EndpointSlice,
        port: &PortQuery,
        errors: &mut ErrorList,
        out: &mut Vec<Candidate>,
    ) {
        let object = ObjectRef::of(slice);
        let v6 = match slice.address_type.as_str() {
            "IPv4" => false,
            "IPv6" => true,
            "FQDN" => return, // not an address the datapath can reach
            other => {
                let expected = "IPv4, IPv6, FQDN";
                errors.push(
                    &object,
                    "addressType",
                    Problem::BadValue { value: other.into(), expected },
                );
                return;
            }
        };
        let Some(number) = slice_port(slice, port, &object, errors) else {
            return;
        };
        for (k, ep) in slice.endpoints.iter().enumerate() {
            match self.candidate(ep, v6, number, &slice.address_type) {
                Ok(c) => out.push(c),
                Err((field, problem)) => {
                    errors.push(&object, format!("endpoints[{k}].{field}"), problem)
                }
            }
        }
    }

    /// Endpoint `ep`, serving on `port`, of a slice of family `v6`; or the
    /// field of it that is wrong and why.
    fn candidate(
        &self,
        ep: &Endpoint,
        v6: bool,
        port: u16,
        address_type: &str,
    ) -> Result<Candidate, (&'static str, Problem)> {
        // Consumers use the first address (the API documents the rest as unused).
        let first = ep.addresses.first().ok_or(("addresses", Problem::Missing))?;
        let addr = match parse_ip(first) {
            Ok(a) if a.is_ipv6() == v6 => a,
            Ok(addr) => {
                let address_type = address_type.to_string();
                return Err(("addresses[0]", Problem::FamilyMismatch { addr, address_type }));
            }
            Err(p) => return Err(("addresses[0]", p)),
        };
        let node_name = ep.node_name.as_deref().ok_or(("nodeName", Problem::Missing))?;
        let node = self.nodes.tunnel_endpoint(node_name, v6).map_err(|p| ("nodeName", p))?;
        // Unknown (nil) conditions: ready; serving follows ready.
        let cond = ep.conditions.as_ref();
        let ready = cond.and_then(|c| c.ready).unwrap_or(true);
        Ok(Candidate {
            addr,
            port,
            node,
            local: node_name == self.this_node,
            ready,
            serving: cond.and_then(|c| c.serving).unwrap_or(ready),
            terminating: cond.and_then(|c| c.terminating).unwrap_or(false),
        })
    }
}

/// The port number a slice gives the service port: the slice port of the
/// same name and protocol (its number is the resolved targetPort, named
/// ports resolved per pod), or the numeric targetPort when it has none.
/// None when the slice does not carry the port, or it is wrong (in `errors`).
fn slice_port(
    slice: &EndpointSlice,
    port: &PortQuery,
    object: &ObjectRef,
    errors: &mut ErrorList,
) -> Option<u16> {
    let carries = |p: &EndpointPort| {
        p.name.as_deref().unwrap_or("") == port.name
            && parse_proto(p.protocol.as_deref()).ok() == Some(port.proto)
    };
    let (j, sp) = slice.ports.iter().flatten().enumerate().find(|(_, p)| carries(p))?;
    let field = || format!("ports[{j}].port");
    match (sp.port, port.target) {
        (Some(n), _) => port_number(n).map_err(|p| errors.push(object, field(), p)).ok(),
        (None, Target::Number(n)) => Some(*n),
        (None, Target::Named(name)) => {
            let problem = Problem::UnresolvedTargetPort { target: name.clone() };
            errors.push(object, field(), problem);
            None
        }
    }
}

/// kube-proxy's selection, per address family:
/// - ready endpoints take new flows;
/// - if none is ready, serving-and-terminating endpoints do instead (so a
///   rolling restart of every pod does not black-hole traffic);
/// - every other endpoint the slices still list (terminating, or not ready:
///   a readiness flap) stays as `Terminating`: it keeps its established
///   flows and gets no new ones (kube-proxy's conntrack keeps them too;
///   removing the backend would re-balance them and the new backend would
///   reset them). An endpoint the slices no longer list is removed: its
///   flows end (they move to a live backend, which resets them).
///
/// Backends are named and ordered by "address:port"; an endpoint in two
/// slices (during a slice split) is kept once, the more usable entry winning.
fn select(candidates: &[Candidate]) -> Vec<Backend> {
    // Every candidate named, then sorted by name: a stable sort keeps an
    // endpoint listed twice in its slices' order, and the run of one name
    // keeps its first Active entry, else its first (a BTreeMap by name did
    // the same with a node per backend and the name built twice).
    let mut named: Vec<Backend> = Vec::with_capacity(candidates.len());
    let mut name = String::new();
    for v6 in [false, true] {
        let family = || candidates.iter().filter(move |c| c.addr.is_ipv6() == v6);
        let any_ready = family().any(|c| c.ready);
        for c in family() {
            let state = if c.ready || (!any_ready && c.serving && c.terminating) {
                BackendState::Active
            } else {
                BackendState::Terminating
            };
            name.clear();
            write!(name, "{}", SocketAddr::new(c.addr, c.port)).expect("a String takes any write");
            named.push(Backend {
                name: Arc::from(name.as_str()),
                addr: c.addr,
                port: c.port,
                node: c.node,
                weight: 1,
                state,
            });
        }
    }
    named.sort_by(|a, b| a.name.cmp(&b.name));
    named.dedup_by(|later, kept| {
        if later.name != kept.name {
            return false;
        }
        if kept.state == BackendState::Terminating && later.state == BackendState::Active {
            std::mem::swap(kept, later);
        }
        true
    });
    named
}

/// Ready endpoints (by first address) on node `node` in `slices`: what a
/// healthCheckNodePort answers from.
pub(super) fn local_ready(slices: &[&EndpointSlice], node: &str) -> usize {
    let mut local: HashSet<&str> = HashSet::new();
    for ep in slices.iter().flat_map(|s| &s.endpoints) {
        let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        if ready && ep.node_name.as_deref() == Some(node) {
            if let Some(a) = ep.addresses.first() {
                local.insert(a);
            }
        }
    }
    local.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(addr: &str, ready: bool, serving: bool, terminating: bool) -> Candidate {
        Candidate {
            addr: addr.parse().unwrap(),
            port: 80,
            node: "192.0.2.1".parse().unwrap(),
            local: false,
            ready,
            serving,
            terminating,
        }
    }

    fn names_and_states(backends: &[Backend]) -> Vec<(&str, BackendState)> {
        backends.iter().map(|b| (&*b.name, b.state)).collect()
    }

    #[test]
    fn select_orders_by_name_and_keeps_an_endpoint_listed_twice_once_the_more_usable_entry_winning()
    {
        use BackendState::{Active, Terminating};
        let listed = [
            candidate("10.0.0.9", true, true, false),
            // In two slices (a split): terminating in the first, ready in the second.
            candidate("10.0.0.10", false, false, true),
            candidate("10.0.0.10", true, true, false),
            // Ready in the first, terminating in the second: the first stays.
            candidate("10.0.0.12", true, true, false),
            candidate("10.0.0.12", false, false, true),
            // Not ready in both: kept once, terminating.
            candidate("10.0.0.11", false, false, false),
            candidate("10.0.0.11", false, false, false),
            candidate("2001:db8::1", true, true, false),
        ];
        assert_eq!(
            names_and_states(&select(&listed)),
            [
                ("10.0.0.10:80", Active),
                ("10.0.0.11:80", Terminating),
                ("10.0.0.12:80", Active),
                ("10.0.0.9:80", Active),
                ("[2001:db8::1]:80", Active),
            ]
        );
    }

    #[test]
    fn select_serves_from_serving_terminating_endpoints_of_a_family_with_none_ready() {
        use BackendState::{Active, Terminating};
        let listed = [
            candidate("10.0.0.1", false, true, true),
            candidate("10.0.0.2", false, false, true),
            candidate("2001:db8::1", true, true, false),
            candidate("2001:db8::2", false, true, true),
        ];
        assert_eq!(
            names_and_states(&select(&listed)),
            [
                ("10.0.0.1:80", Active),
                ("10.0.0.2:80", Terminating),
                ("[2001:db8::1]:80", Active),
                ("[2001:db8::2]:80", Terminating),
            ]
        );
    }
}
