//! The EndpointSlices of a Service, as Kubernetes' endpoint-slice controller
//! publishes them: only for a Service with a selector; one set per address
//! family of the Service; the selected pods of its namespace as endpoints
//! (address, conditions.ready, nodeName, targetRef; no zone: the lab's
//! nodes have none), grouped by the ports they resolve to (a numeric
//! targetPort as is, a named one against each pod's containerPorts of the
//! same protocol; a pod without the name gets no such port), at most 100
//! endpoints a slice; labels kubernetes.io/service-name and
//! endpointslice.kubernetes.io/managed-by. A Service selecting no pod gets
//! one slice with no endpoints.
use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{Family, PlannedPod, PlannedService, Protocol, TargetPort};

/// The controller's limit (--max-endpoints-per-slice default).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// endpointslice.kubernetes.io/managed-by of the controller's slices.
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// One port of a slice: the Service port's name, protocol, and the number
/// the pod serves it on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// The ports `pod` gives `svc`, in the Service's port order.
pub fn resolve(svc: &PlannedService, pod: &PlannedPod) -> Vec<SlicePort> {
    svc.ports
        .iter()
        .filter_map(|p| {
            let port = match &p.target {
                TargetPort::Number(n) => *n,
                TargetPort::Name(name) => {
                    pod.ports
                        .iter()
                        .find(|c| c.name.as_deref() == Some(name) && c.protocol == p.protocol)?
                        .port
                }
            };
            Some(SlicePort { name: p.name.clone(), protocol: p.protocol, port })
        })
        .collect()
}

/// The slices of `svc` over `pods`.
pub fn publish(svc: &PlannedService, pods: &[PlannedPod]) -> Vec<Value> {
    if svc.selector.as_ref().is_none_or(|s| s.is_empty()) || svc.kind == "ExternalName" {
        return Vec::new();
    }
    let mut out = Vec::new();
    for &family in &svc.families {
        // Grouped by resolved ports, pods in manifest order within a group.
        let mut groups: BTreeMap<Vec<SlicePort>, Vec<&PlannedPod>> = BTreeMap::new();
        for pod in pods.iter().filter(|p| svc.selects(p)) {
            groups.entry(resolve(svc, pod)).or_default().push(pod);
        }
        let mut chunks: Vec<(Vec<SlicePort>, &[&PlannedPod])> = Vec::new();
        for (ports, members) in &groups {
            chunks.extend(members.chunks(MAX_ENDPOINTS_PER_SLICE).map(|c| (ports.clone(), c)));
        }
        if chunks.is_empty() {
            chunks.push((Vec::new(), &[]));
        }
        for (i, (ports, members)) in chunks.into_iter().enumerate() {
            let name = match i {
                0 => format!("{}-{}", svc.name, family.as_str().to_ascii_lowercase()),
                i => format!("{}-{}-{}", svc.name, family.as_str().to_ascii_lowercase(), i + 1),
            };
            out.push(slice(svc, family, name, &ports, members));
        }
    }
    out
}

fn slice(
    svc: &PlannedService,
    family: Family,
    name: String,
    ports: &[SlicePort],
    members: &[&PlannedPod],
) -> Value {
    let endpoints: Vec<Value> = members
        .iter()
        .map(|p| {
            json!({
                "addresses": [p.ip(family).to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": crate::spec::node_name(p.node),
                "targetRef": {"kind": "Pod", "namespace": p.namespace, "name": p.name},
            })
        })
        .collect();
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| json!({"name": p.name, "protocol": p.protocol.as_str(), "port": p.port}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": svc.namespace,
            "labels": {
                "kubernetes.io/service-name": svc.name,
                "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
            },
        },
        "addressType": family.as_str(),
        "ports": ports,
        "endpoints": endpoints,
    })
}
