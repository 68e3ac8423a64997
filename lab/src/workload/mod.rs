//! Workloads from manifests as a user writes them: Namespaces, Deployments,
//! bare Pods, Services and NetworkPolicies (and EndpointSlices a user
//! writes for a Service without a selector, passed on). [`plan`] does what
//! the control plane of a cluster would: places the pods on the lab's nodes
//! (a Deployment's replicas round-robin, a Pod's spec.nodeName honoured),
//! gives them the address plan's addresses ([`crate::spec::pod_v4`]), gives
//! Services their ClusterIPs (from the lab's service range), NodePorts and
//! load-balancer addresses (from the VIP range) where the manifest has
//! none, and publishes EndpointSlices as the endpoint-slice controller
//! would ([`slices`]). The lab builds the pods of [`Workload::pod_plans`];
//! the agents read [`Workload::manifest`]. Bad input is an error naming the
//! object and the field.
pub mod slices;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::Deserialize as _;
use serde_json::{json, Map, Value};

use crate::spec::{self, LabSpec, PodPlan, MAX_INDEX};

/// Why manifests could not be turned into a workload.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("{origin}: document {doc}: {source}")]
    Yaml {
        origin: String,
        doc: usize,
        #[source]
        source: serde_yaml::Error,
    },
    /// `object` is "Deployment default/web" (or "document 3" before its
    /// kind and name are known); `field` its path: "spec.ports[1].targetPort".
    #[error("{origin}: {object}: {field}: {reason}")]
    Field { origin: String, object: String, field: String, reason: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// "IPv4": the name in ipFamilies and addressType.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
    fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// A declared container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod of the workload, placed.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedPod {
    pub namespace: String,
    pub name: String,
    /// 1-based node index and the pod's slot on it.
    pub node: u32,
    pub slot: u32,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<ContainerPort>,
    object: Value,
}

impl PlannedPod {
    pub fn v4(&self) -> Ipv4Addr {
        spec::pod_v4(self.node, self.slot)
    }
    pub fn v6(&self) -> Ipv6Addr {
        spec::pod_v6(self.node, self.slot)
    }
    pub fn ip(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.v4().into(),
            Family::V6 => self.v6().into(),
        }
    }
    /// Its name in the lab ([`spec::role`]).
    pub fn role(&self) -> String {
        spec::role(&self.namespace, &self.name)
    }
}

/// A Service's targetPort.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A container port's name, resolved per pod.
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// "" when unnamed (a single-port Service).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub target: TargetPort,
    pub node_port: Option<u16>,
}

/// A Service with its addresses given.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedService {
    pub namespace: String,
    pub name: String,
    /// spec.type: "ClusterIP", "NodePort", "LoadBalancer", "ExternalName".
    pub kind: String,
    /// None without a selector (no EndpointSlices published for it).
    pub selector: Option<BTreeMap<String, String>>,
    pub ports: Vec<ServicePort>,
    pub families: Vec<Family>,
    /// Empty when headless.
    pub cluster_ips: Vec<IpAddr>,
    /// status.loadBalancer.ingress (given or allocated).
    pub lb_ips: Vec<IpAddr>,
    object: Value,
}

impl PlannedService {
    /// Whether pod `pod` is one of its endpoints (same namespace, labels
    /// matching a non-empty selector).
    pub fn selects(&self, pod: &PlannedPod) -> bool {
        match &self.selector {
            Some(sel) if !sel.is_empty() => {
                pod.namespace == self.namespace
                    && sel.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
            }
            _ => false,
        }
    }
}

/// The planned workload.
#[derive(Clone, Debug, Default)]
pub struct Workload {
    pub namespaces: Vec<String>,
    pub pods: Vec<PlannedPod>,
    pub services: Vec<PlannedService>,
    /// Namespace objects (declared ones, and one for every namespace used
    /// but not declared), NetworkPolicies and user EndpointSlices, as given
    /// (Namespaces with their kubernetes.io/metadata.name label).
    others: Vec<Value>,
}

/// The lab's service range: ClusterIPs are allocated from
/// 10.96.0.10 and fd00:10:96::10 on (the first one allocated is
/// [`spec::CLUSTER_IP_V4`] / [`spec::CLUSTER_IP_V6`]).
pub const SERVICE_RANGE_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 16);
pub const SERVICE_RANGE_V6: (Ipv6Addr, u8) =
    (Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0), 112);
/// NodePorts are allocated from here on (30080 first).
const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;
const FIRST_NODE_PORT: u16 = 30080;

/// The lab's embedded default: issue #9's seed example (lab/examples/).
pub const SEED: &str = include_str!("../../examples/nginx-service.yaml");

/// The kinds [`plan`] takes (besides v1 List).
pub const KINDS: &str = "v1 Namespace, apps/v1 Deployment, v1 Pod, v1 Service, \
     networking.k8s.io/v1 NetworkPolicy, discovery.k8s.io/v1 EndpointSlice";

/// Plans the workload of manifest `text` (multi-document YAML or JSON;
/// `origin` names it in errors) on a lab of `nodes` nodes.
pub fn plan(text: &str, origin: &str, nodes: u32) -> Result<Workload, WorkloadError> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = i + 1;
        let v = Value::deserialize(de).map_err(|source| WorkloadError::Yaml {
            origin: origin.into(),
            doc,
            source,
        })?;
        if v.is_null() {
            continue; // an empty document ("---" at the end)
        }
        if v.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List")) {
            let items = v.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
            docs.extend(
                items.into_iter().enumerate().map(|(j, v)| (format!("document {doc} item {j}"), v)),
            );
        } else {
            docs.push((format!("document {doc}"), v));
        }
    }
    Planner::new(origin, nodes).run(docs)
}

/// Reads fields of one object, naming it and the field in errors.
struct Fields<'a> {
    origin: &'a str,
    object: String,
}

type Res<T> = Result<T, WorkloadError>;

impl Fields<'_> {
    fn err<T>(&self, field: impl Into<String>, reason: impl Into<String>) -> Res<T> {
        Err(WorkloadError::Field {
            origin: self.origin.into(),
            object: self.object.clone(),
            field: field.into(),
            reason: reason.into(),
        })
    }

    fn at<'v>(&self, v: &'v Value, path: &str) -> Option<&'v Value> {
        path.split('.').try_fold(v, |v, k| v.get(k)).filter(|v| !v.is_null())
    }

    fn string(&self, v: &Value, path: &str) -> Res<Option<String>> {
        match self.at(v, path) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => self.err(path, format!("want a string, got {other}")),
        }
    }

    fn list<'v>(&self, v: &'v Value, path: &str) -> Res<&'v [Value]> {
        match self.at(v, path) {
            None => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(other) => self.err(path, format!("want a list, got {other}")),
        }
    }

    fn labels(&self, v: &Value, path: &str) -> Res<Option<BTreeMap<String, String>>> {
        match self.at(v, path) {
            None => Ok(None),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    other => self.err(format!("{path}.{k}"), format!("want a string, got {other}")),
                })
                .collect::<Res<_>>()
                .map(Some),
            Some(other) => self.err(path, format!("want a map of strings, got {other}")),
        }
    }

    fn port(&self, v: Option<&Value>, field: &str) -> Res<u16> {
        match v.and_then(Value::as_u64) {
            Some(n @ 1..=65535) => Ok(n as u16),
            _ => self.err(
                field,
                format!(
                    "want a port number 1..=65535, got {}",
                    v.map_or("nothing".into(), |v| v.to_string())
                ),
            ),
        }
    }

    fn protocol(&self, v: &Value, field: &str) -> Res<Protocol> {
        match v.get("protocol") {
            None | Some(Value::Null) => Ok(Protocol::Tcp),
            Some(Value::String(s)) if s == "TCP" => Ok(Protocol::Tcp),
            Some(Value::String(s)) if s == "UDP" => Ok(Protocol::Udp),
            Some(Value::String(s)) if s == "SCTP" => Ok(Protocol::Sctp),
            Some(other) => {
                self.err(format!("{field}.protocol"), format!("want TCP, UDP or SCTP, got {other}"))
            }
        }
    }

    /// A DNS-1123 subdomain (at most `max` characters; no dots if `label`).
    fn name(&self, field: &str, name: &str, max: usize, label: bool) -> Res<()> {
        let ok_char = |c: char| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (!label && c == '.')
        };
        let edges =
            |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if name.is_empty()
            || name.len() > max
            || !name.chars().all(ok_char)
            || !edges(name.chars().next())
            || !edges(name.chars().last())
        {
            return self.err(
                field,
                format!(
                    "{name:?} is not a valid name (lower-case letters, digits, '-'{}; at most {max} characters; \
                     a letter or digit at both ends)",
                    if label { "" } else { ", '.'" }
                ),
            );
        }
        Ok(())
    }
}

/// A workload of pods before placement: a Deployment or a bare Pod.
struct PodSource {
    kind: &'static str,
    namespace: String,
    name: String,
    /// The pod template (metadata + spec), or the Pod.
    template: Value,
    replicas: u32,
}

struct Planner<'a> {
    origin: &'a str,
    nodes: u32,
}

impl<'a> Planner<'a> {
    fn new(origin: &'a str, nodes: u32) -> Self {
        Planner { origin, nodes }
    }

    fn fields(&self, object: String) -> Fields<'a> {
        Fields { origin: self.origin, object }
    }

    fn run(self, docs: Vec<(String, Value)>) -> Res<Workload> {
        let mut w = Workload::default();
        let mut namespaces: BTreeMap<String, Value> = BTreeMap::new();
        let mut used_namespaces = BTreeSet::from(["default".to_string()]);
        let mut sources = Vec::new();
        let mut services = Vec::new();
        let mut seen = BTreeSet::new();
        for (doc, v) in docs {
            let f = self.fields(doc.clone());
            let api = f.string(&v, "apiVersion")?.unwrap_or_default();
            let kind = f.string(&v, "kind")?.unwrap_or_default();
            let name = f.string(&v, "metadata.name")?.unwrap_or_default();
            let cluster_scoped = kind == "Namespace" || kind == "Node";
            let namespace = if cluster_scoped {
                String::new()
            } else {
                f.string(&v, "metadata.namespace")?.unwrap_or_else(|| "default".into())
            };
            let f = self.fields(if cluster_scoped {
                format!("{kind} {name}")
            } else {
                format!("{kind} {namespace}/{name}")
            });
            if kind.is_empty() || api.is_empty() {
                return self.fields(doc).err("kind", "no apiVersion/kind");
            }
            if !cluster_scoped {
                f.name("metadata.namespace", &namespace, 63, true)?;
                used_namespaces.insert(namespace.clone());
            }
            if name.is_empty() {
                return f.err("metadata.name", "missing");
            }
            f.name("metadata.name", &name, 253, kind == "Namespace")?;
            if !seen.insert((kind.clone(), namespace.clone(), name.clone())) {
                return f.err("metadata.name", "a second object of this kind and name");
            }
            match (api.as_str(), kind.as_str()) {
                ("v1", "Namespace") => {
                    namespaces.insert(name, v);
                }
                ("apps/v1", "Deployment") => sources.push(self.deployment(&f, namespace, name, &v)?),
                ("v1", "Pod") => {
                    f.name("metadata.name", &name, 63, false)?;
                    sources.push(PodSource {
                        kind: "Pod",
                        namespace,
                        name,
                        template: json!({"metadata": v.get("metadata"), "spec": v.get("spec")}),
                        replicas: 1,
                    })
                }
                ("v1", "Service") => services.push((f, namespace, name, v)),
                ("networking.k8s.io/v1", "NetworkPolicy") | ("discovery.k8s.io/v1", "EndpointSlice") => {
                    w.others.push(v)
                }
                ("v1", "Node") => {
                    return f.err("kind", "the lab makes the Node objects itself (--nodes)");
                }
                _ => return f.err("kind", format!("{api} {kind} is not taken by the lab (expected {KINDS}, or a List of them)")),
            }
        }
        w.pods = self.place(&sources)?;
        let mut alloc = Allocator::default();
        // Addresses written in the manifest first, so that none is handed out twice.
        for (f, _, _, v) in &services {
            alloc.reserve(f, v)?;
        }
        for (f, namespace, name, v) in services {
            w.services.push(alloc.service(&f, namespace, name, v)?);
        }
        for ns in used_namespaces.iter().chain(namespaces.keys()).collect::<BTreeSet<_>>() {
            let mut v = namespaces.get(ns).cloned().unwrap_or_else(
                || json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            );
            // The API server labels every namespace with its name
            // (namespaceSelectors rely on it).
            let labels = v["metadata"]
                .as_object_mut()
                .map(|m| m.entry("labels").or_insert_with(|| json!({})));
            if let Some(Value::Object(l)) = labels {
                l.insert("kubernetes.io/metadata.name".into(), json!(ns));
            }
            w.others.insert(w.namespaces.len(), v);
            w.namespaces.push(ns.clone());
        }
        Ok(w)
    }

    fn deployment(&self, f: &Fields, namespace: String, name: String, v: &Value) -> Res<PodSource> {
        let replicas = match f.at(v, "spec.replicas") {
            None => 1,
            Some(r) => match r.as_u64() {
                Some(n) if n <= MAX_INDEX as u64 => n as u32,
                _ => {
                    return f.err("spec.replicas", format!("want a count 0..={MAX_INDEX}, got {r}"))
                }
            },
        };
        let Some(template) = f.at(v, "spec.template") else {
            return f.err("spec.template", "missing");
        };
        let labels = f.labels(v, "spec.template.metadata.labels")?.unwrap_or_default();
        match f.labels(v, "spec.selector.matchLabels")? {
            None if f.at(v, "spec.selector.matchExpressions").is_none() => {
                return f.err("spec.selector", "missing (apps/v1 Deployments need one)");
            }
            Some(sel) => {
                if let Some((k, want)) = sel.iter().find(|(k, val)| labels.get(*k) != Some(val)) {
                    return f.err(
                        "spec.selector.matchLabels",
                        format!("{k}={want} does not match spec.template.metadata.labels"),
                    );
                }
            }
            None => {}
        }
        Ok(PodSource { kind: "Deployment", namespace, name, template: template.clone(), replicas })
    }

    /// Places every pod: pinned ones (spec.nodeName) where they say, the
    /// others round-robin over the nodes in manifest order; slots per node
    /// in order.
    fn place(&self, sources: &[PodSource]) -> Res<Vec<PlannedPod>> {
        let mut pods = Vec::new();
        let mut next = 0u32;
        let mut slots = vec![0u32; self.nodes as usize + 1];
        for s in sources {
            let f = self.fields(format!("{} {}/{}", s.kind, s.namespace, s.name));
            let at = if s.kind == "Pod" { "" } else { "spec.template." };
            let labels = f
                .labels(&s.template, "metadata.labels")
                .map_err(|e| prefix(e, at))?
                .unwrap_or_default();
            let ports = self.container_ports(&f, &s.template, at)?;
            let pinned = match f.string(&s.template, "spec.nodeName").map_err(|e| prefix(e, at))? {
                None => None,
                Some(node) => match node.strip_prefix("node").and_then(|n| n.parse::<u32>().ok()) {
                    Some(n) if (1..=self.nodes).contains(&n) => Some(n),
                    _ => {
                        return f.err(
                            format!("{at}spec.nodeName"),
                            format!(
                                "{node:?} is not a node of the lab (node1..node{})",
                                self.nodes
                            ),
                        )
                    }
                },
            };
            let hash = template_hash(&s.template);
            let mut names = BTreeSet::new();
            for i in 0..s.replicas {
                let node = pinned.unwrap_or_else(|| {
                    next += 1;
                    (next - 1) % self.nodes + 1
                });
                slots[node as usize] += 1;
                let slot = slots[node as usize];
                if slot > MAX_INDEX {
                    return f.err(
                        "spec.replicas",
                        format!("node{node} has no room for more than {MAX_INDEX} pods"),
                    );
                }
                let (name, mut labels, owner) = if s.kind == "Pod" {
                    (s.name.clone(), labels.clone(), None)
                } else {
                    let rs = format!("{}-{hash}", s.name);
                    let mut salt = i;
                    let name = loop {
                        let n = format!("{rs}-{}", suffix(&format!("{rs}/{salt}"), 5));
                        if names.insert(n.clone()) {
                            break n;
                        }
                        salt += s.replicas;
                    };
                    let mut labels = labels.clone();
                    labels.insert("pod-template-hash".into(), hash.clone());
                    (name, labels, Some(rs))
                };
                f.name("metadata.name", &name, 63, false)?;
                let object =
                    pod_object(&s.namespace, &name, &s.template, &mut labels, owner, node, slot);
                pods.push(PlannedPod {
                    namespace: s.namespace.clone(),
                    name,
                    node,
                    slot,
                    labels,
                    ports: ports.clone(),
                    object,
                });
            }
        }
        Ok(pods)
    }

    fn container_ports(&self, f: &Fields, template: &Value, at: &str) -> Res<Vec<ContainerPort>> {
        let mut out: Vec<ContainerPort> = Vec::new();
        let containers = f.list(template, "spec.containers").map_err(|e| prefix(e, at))?;
        if containers.is_empty() {
            return f.err(format!("{at}spec.containers"), "a pod needs at least one container");
        }
        for (c, container) in containers.iter().enumerate() {
            let ports = f
                .list(container, "ports")
                .map_err(|e| prefix(e, &format!("{at}spec.containers[{c}].")))?;
            for (p, port) in ports.iter().enumerate() {
                let field = format!("{at}spec.containers[{c}].ports[{p}]");
                let number =
                    f.port(port.get("containerPort"), &format!("{field}.containerPort"))?;
                let protocol = f.protocol(port, &field)?;
                if protocol == Protocol::Sctp {
                    return f.err(
                        format!("{field}.protocol"),
                        "SCTP: the lab's servers speak TCP and UDP",
                    );
                }
                let name = match port.get("name") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(n)) => {
                        let valid = !n.is_empty()
                            && n.len() <= 15
                            && n.chars()
                                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                            && n.chars().any(|c| c.is_ascii_lowercase());
                        if !valid {
                            return f.err(
                                format!("{field}.name"),
                                format!("{n:?} is not a port name (1 to 15 lower-case letters, digits, '-', a letter among them)"),
                            );
                        }
                        Some(n.clone())
                    }
                    Some(other) => {
                        return f
                            .err(format!("{field}.name"), format!("want a string, got {other}"))
                    }
                };
                if let Some(dup) = out.iter().find(|o| {
                    (o.port == number && o.protocol == protocol)
                        || (name.is_some() && o.name == name)
                }) {
                    return f.err(
                        field,
                        format!(
                            "declares {}/{} again (as {:?})",
                            dup.port,
                            dup.protocol.as_str(),
                            dup.name
                        ),
                    );
                }
                out.push(ContainerPort { name, port: number, protocol });
            }
        }
        Ok(out)
    }
}

/// Prefixes the field of a field error (a pod template's fields inside a
/// Deployment).
fn prefix(e: WorkloadError, at: &str) -> WorkloadError {
    match e {
        WorkloadError::Field { origin, object, field, reason } => {
            WorkloadError::Field { origin, object, field: format!("{at}{field}"), reason }
        }
        e => e,
    }
}

/// The Pod object the agents read: the template's metadata and spec, the
/// node, and the status a running, ready pod has.
fn pod_object(
    namespace: &str,
    name: &str,
    template: &Value,
    labels: &mut BTreeMap<String, String>,
    owner: Option<String>,
    node: u32,
    slot: u32,
) -> Value {
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!(name));
    metadata.insert("namespace".into(), json!(namespace));
    if let Some(Value::Object(a)) = template.pointer("/metadata/annotations") {
        metadata.insert("annotations".into(), Value::Object(a.clone()));
    }
    metadata.insert("labels".into(), json!(labels));
    if let Some(rs) = owner {
        metadata.insert(
            "ownerReferences".into(),
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": "", "controller": true}]),
        );
    }
    let mut pod_spec = template.get("spec").cloned().unwrap_or_else(|| json!({}));
    pod_spec["nodeName"] = json!(spec::node_name(node));
    let (v4, v6) = (spec::pod_v4(node, slot).to_string(), spec::pod_v6(node, slot).to_string());
    let (h4, h6) = (spec::node_v4(node).to_string(), spec::node_v6(node).to_string());
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": pod_spec,
        "status": {
            "phase": "Running",
            "hostIP": h4,
            "hostIPs": [{"ip": h4}, {"ip": h6}],
            "podIP": v4,
            "podIPs": [{"ip": v4}, {"ip": v6}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

/// Hands out ClusterIPs, NodePorts and load-balancer addresses.
#[derive(Default)]
struct Allocator {
    cluster_ips: BTreeSet<IpAddr>,
    lb_ips: BTreeSet<IpAddr>,
    node_ports: BTreeSet<u16>,
}

impl Allocator {
    fn reserve(&mut self, f: &Fields, v: &Value) -> Res<()> {
        for (i, ip) in f.list(v, "spec.clusterIPs")?.iter().enumerate() {
            if let Some(ip) = ip.as_str().and_then(|s| s.parse().ok()) {
                if !self.cluster_ips.insert(ip) {
                    return f.err(
                        format!("spec.clusterIPs[{i}]"),
                        format!("{ip} is another Service's"),
                    );
                }
            }
        }
        if f.at(v, "spec.clusterIPs").is_none() {
            if let Some(ip) = f.string(v, "spec.clusterIP")?.and_then(|s| s.parse().ok()) {
                if !self.cluster_ips.insert(ip) {
                    return f.err("spec.clusterIP", format!("{ip} is another Service's"));
                }
            }
        }
        for p in f.list(v, "spec.ports")? {
            if let Some(n) = p.get("nodePort").and_then(Value::as_u64) {
                self.node_ports.insert(n as u16);
            }
        }
        for i in f.list(v, "status.loadBalancer.ingress")? {
            if let Some(ip) = i.get("ip").and_then(Value::as_str).and_then(|s| s.parse().ok()) {
                self.lb_ips.insert(ip);
            }
        }
        Ok(())
    }

    fn next_cluster_ip(&mut self, f: &Fields, family: Family) -> Res<IpAddr> {
        for n in 10..=MAX_INDEX + 10 {
            let ip: IpAddr = match family {
                Family::V4 => Ipv4Addr::from(u32::from(SERVICE_RANGE_V4.0) + n).into(),
                Family::V6 => {
                    Ipv6Addr::from(u128::from(SERVICE_RANGE_V6.0) + u128::from(spec::group(n)))
                        .into()
                }
            };
            if self.cluster_ips.insert(ip) {
                return Ok(ip);
            }
        }
        f.err("spec.clusterIP", format!("the lab's {} service range is used up", family.as_str()))
    }

    fn next_lb_ip(&mut self, f: &Fields, family: Family) -> Res<IpAddr> {
        for n in 1..=MAX_INDEX {
            let ip: IpAddr = match family {
                Family::V4 => Ipv4Addr::from(u32::from(spec::VIP_RANGE_V4.0) + n).into(),
                Family::V6 => {
                    Ipv6Addr::from(u128::from(spec::VIP_RANGE_V6.0) + u128::from(spec::group(n)))
                        .into()
                }
            };
            if self.lb_ips.insert(ip) {
                return Ok(ip);
            }
        }
        f.err(
            "status.loadBalancer.ingress",
            format!("the lab's {} VIP range is used up", family.as_str()),
        )
    }

    fn service(
        &mut self,
        f: &Fields,
        namespace: String,
        name: String,
        mut v: Value,
    ) -> Res<PlannedService> {
        f.name("metadata.name", &name, 63, true)?;
        let kind = f.string(&v, "spec.type")?.unwrap_or_else(|| "ClusterIP".into());
        if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&kind.as_str()) {
            return f.err(
                "spec.type",
                format!("{kind:?}: want ClusterIP, NodePort, LoadBalancer or ExternalName"),
            );
        }
        let selector = f.labels(&v, "spec.selector")?;
        let mut ports = Vec::new();
        let list = f.list(&v, "spec.ports")?.to_vec();
        if list.is_empty() && kind != "ExternalName" {
            return f.err("spec.ports", "a Service needs at least one port");
        }
        for (i, p) in list.iter().enumerate() {
            let field = format!("spec.ports[{i}]");
            let port = f.port(p.get("port"), &format!("{field}.port"))?;
            let protocol = f.protocol(p, &field)?;
            let pname = match p.get("name") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => {
                    return f.err(format!("{field}.name"), format!("want a string, got {other}"))
                }
            };
            if pname.is_empty() && list.len() > 1 {
                return f.err(
                    format!("{field}.name"),
                    "required when a Service has more than one port",
                );
            }
            if ports.iter().any(|q: &ServicePort| !pname.is_empty() && q.name == pname) {
                return f
                    .err(format!("{field}.name"), format!("{pname:?} is used by another port"));
            }
            let target = match p.get("targetPort") {
                None | Some(Value::Null) => TargetPort::Number(port),
                Some(Value::String(s)) if s.parse::<u16>().is_ok() => TargetPort::Number(f.port(
                    Some(&json!(s.parse::<u64>().unwrap_or(0))),
                    &format!("{field}.targetPort"),
                )?),
                Some(Value::String(s)) if !s.is_empty() && s.len() <= 15 => {
                    TargetPort::Name(s.clone())
                }
                Some(t @ Value::Number(_)) => {
                    TargetPort::Number(f.port(Some(t), &format!("{field}.targetPort"))?)
                }
                Some(other) => {
                    return f.err(
                        format!("{field}.targetPort"),
                        format!("want a port number or a container port's name, got {other}"),
                    )
                }
            };
            let node_port = match p.get("nodePort") {
                None | Some(Value::Null) if kind == "NodePort" || kind == "LoadBalancer" => {
                    let n = (FIRST_NODE_PORT..=*NODE_PORTS.end())
                        .chain(*NODE_PORTS.start()..FIRST_NODE_PORT)
                        .find(|n| self.node_ports.insert(*n));
                    match n {
                        Some(n) => Some(n),
                        None => {
                            return f
                                .err(format!("{field}.nodePort"), "the NodePort range is used up")
                        }
                    }
                }
                None | Some(Value::Null) => None,
                Some(n) => match n.as_u64() {
                    Some(n)
                        if NODE_PORTS.contains(&(n as u16))
                            && n <= 65535
                            && kind != "ClusterIP" =>
                    {
                        Some(n as u16)
                    }
                    _ => {
                        return f.err(
                            format!("{field}.nodePort"),
                            format!(
                                "{n}: want {}..={} on a NodePort or LoadBalancer Service",
                                NODE_PORTS.start(),
                                NODE_PORTS.end()
                            ),
                        )
                    }
                },
            };
            ports.push(ServicePort { name: pname, protocol, port, target, node_port });
        }
        // Families: from the ClusterIPs given, else ipFamilies, else the
        // policy (SingleStack: IPv4; dual-stack: both).
        let policy = f.string(&v, "spec.ipFamilyPolicy")?.unwrap_or_else(|| "SingleStack".into());
        let dual = match policy.as_str() {
            "SingleStack" => false,
            "PreferDualStack" | "RequireDualStack" => true,
            other => {
                return f.err(
                    "spec.ipFamilyPolicy",
                    format!("{other:?}: want SingleStack, PreferDualStack or RequireDualStack"),
                )
            }
        };
        let mut families = Vec::new();
        for (i, fam) in f.list(&v, "spec.ipFamilies")?.iter().enumerate() {
            match fam.as_str() {
                Some("IPv4") if !families.contains(&Family::V4) => families.push(Family::V4),
                Some("IPv6") if !families.contains(&Family::V6) => families.push(Family::V6),
                _ => {
                    return f.err(
                        format!("spec.ipFamilies[{i}]"),
                        format!("{fam}: want IPv4 or IPv6, once each"),
                    )
                }
            }
        }
        let mut given: Vec<String> = f
            .list(&v, "spec.clusterIPs")?
            .iter()
            .enumerate()
            .map(|(i, ip)| ip.as_str().map(str::to_string).ok_or(i))
            .collect::<Result<_, usize>>()
            .or_else(|i| f.err(format!("spec.clusterIPs[{i}]"), "want an address string"))?;
        if given.is_empty() {
            given.extend(f.string(&v, "spec.clusterIP")?);
        }
        let headless = given.first().is_some_and(|s| s == "None");
        let mut cluster_ips = Vec::new();
        if !headless {
            for (i, s) in given.iter().enumerate() {
                let field = if f.at(&v, "spec.clusterIPs").is_some() {
                    format!("spec.clusterIPs[{i}]")
                } else {
                    "spec.clusterIP".into()
                };
                let ip: IpAddr = match s.parse() {
                    Ok(ip) => ip,
                    Err(e) => return f.err(field, format!("{s:?}: {e}")),
                };
                if !in_service_range(&ip) {
                    return f.err(
                        field,
                        format!(
                            "{ip} is outside the lab's service range {}/{} and {}/{}",
                            SERVICE_RANGE_V4.0,
                            SERVICE_RANGE_V4.1,
                            SERVICE_RANGE_V6.0,
                            SERVICE_RANGE_V6.1
                        ),
                    );
                }
                if cluster_ips.iter().any(|c| Family::of(c) == Family::of(&ip)) {
                    return f.err(field, format!("a second {} address", Family::of(&ip).as_str()));
                }
                cluster_ips.push(ip);
            }
        }
        if families.is_empty() {
            families = cluster_ips.iter().map(Family::of).collect();
        }
        if families.is_empty() {
            families.push(Family::V4);
        }
        if dual && families.len() == 1 && cluster_ips.len() < 2 {
            families.push(if families[0] == Family::V4 { Family::V6 } else { Family::V4 });
        }
        if !dual && families.len() > 1 {
            return f.err(
                "spec.ipFamilies",
                "two families on a SingleStack Service (set spec.ipFamilyPolicy)",
            );
        }
        if let Some((i, ip)) =
            cluster_ips.iter().enumerate().find(|(i, ip)| families.get(*i) != Some(&Family::of(ip)))
        {
            return f.err(
                format!("spec.clusterIPs[{i}]"),
                format!("{ip} does not match spec.ipFamilies"),
            );
        }
        if !headless && kind != "ExternalName" {
            let missing: Vec<Family> = families.iter().skip(cluster_ips.len()).copied().collect();
            for fam in missing {
                cluster_ips.push(self.next_cluster_ip(f, fam)?);
            }
        }
        let mut lb_ips = Vec::new();
        for (i, ing) in f.list(&v, "status.loadBalancer.ingress")?.iter().enumerate() {
            match ing.get("ip").and_then(Value::as_str).map(str::parse::<IpAddr>) {
                Some(Ok(ip)) => lb_ips.push(ip),
                Some(Err(e)) => {
                    return f.err(format!("status.loadBalancer.ingress[{i}].ip"), e.to_string())
                }
                None => {}
            }
        }
        if kind == "LoadBalancer" && lb_ips.is_empty() {
            for fam in &families {
                lb_ips.push(self.next_lb_ip(f, *fam)?);
            }
        }
        // What the API server and a load-balancer controller would have written.
        if kind != "ExternalName" {
            let s = &mut v["spec"];
            s["type"] = json!(kind);
            if headless {
                s["clusterIP"] = json!("None");
                s["clusterIPs"] = json!(["None"]);
            } else {
                s["clusterIP"] = json!(cluster_ips[0].to_string());
                s["clusterIPs"] =
                    json!(cluster_ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>());
            }
            s["ipFamilies"] = json!(families.iter().map(|f| f.as_str()).collect::<Vec<_>>());
            s["ipFamilyPolicy"] = json!(policy);
            for (i, p) in ports.iter().enumerate() {
                if let Some(n) = p.node_port {
                    s["ports"][i]["nodePort"] = json!(n);
                }
            }
            if kind == "LoadBalancer" {
                v["status"] = json!({"loadBalancer": {"ingress": lb_ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect::<Vec<_>>()}});
            }
        }
        Ok(PlannedService {
            namespace,
            name,
            kind,
            selector,
            ports,
            families,
            cluster_ips,
            lb_ips,
            object: v,
        })
    }
}

fn in_service_range(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            u32::from(*a) >> (32 - SERVICE_RANGE_V4.1)
                == u32::from(SERVICE_RANGE_V4.0) >> (32 - SERVICE_RANGE_V4.1)
        }
        IpAddr::V6(a) => {
            u128::from(*a) >> (128 - SERVICE_RANGE_V6.1)
                == u128::from(SERVICE_RANGE_V6.0) >> (128 - SERVICE_RANGE_V6.1)
        }
    }
}

/// FNV-1a: stable across runs (pod names, the pod-template-hash).
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// `len` characters of the alphabet Kubernetes uses for generated names.
fn suffix(text: &str, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h = fnv(text);
    (0..len)
        .map(|_| {
            let c = ALPHABET[(h % ALPHABET.len() as u64) as usize] as char;
            h /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// The pod-template-hash of a Deployment's template (stable for one template).
fn template_hash(template: &Value) -> String {
    suffix(&template.to_string(), 9)
}

impl Workload {
    /// The pods for [`LabSpec::workload`].
    pub fn pod_plans(&self) -> Vec<PodPlan> {
        self.pods
            .iter()
            .map(|p| {
                let ports = |proto| {
                    let mut v: Vec<u16> =
                        p.ports.iter().filter(|c| c.protocol == proto).map(|c| c.port).collect();
                    v.dedup();
                    v
                };
                PodPlan {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    node: p.node,
                    slot: p.slot,
                    tcp: ports(Protocol::Tcp),
                    udp: ports(Protocol::Udp),
                }
            })
            .collect()
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&PlannedService> {
        self.services.iter().find(|s| s.namespace == namespace && s.name == name)
    }

    /// "namespace/name" of every Service the agents program (those with
    /// ClusterIPs and ports).
    pub fn programmed_services(&self) -> Vec<String> {
        self.services
            .iter()
            .filter(|s| !s.cluster_ips.is_empty() && !s.ports.is_empty())
            .map(|s| format!("{}/{}", s.namespace, s.name))
            .collect()
    }

    /// Every EndpointSlice the controller would publish, Service by Service.
    pub fn endpoint_slices(&self) -> Vec<Value> {
        self.services.iter().flat_map(|s| slices::publish(s, &self.pods)).collect()
    }

    /// What the agents read: the Namespaces, the Services as the API server
    /// holds them (addresses given), the Pods (placed, addressed, running),
    /// the NetworkPolicies and the user's EndpointSlices unchanged, the
    /// published EndpointSlices, and the lab's Nodes.
    pub fn manifest(&self, spec: &LabSpec) -> String {
        let mut y = String::from("# Written by xlb-lab from the workload's manifests.\n");
        let objects = self
            .others
            .iter()
            .take(self.namespaces.len())
            .chain(self.services.iter().map(|s| &s.object))
            .chain(self.pods.iter().map(|p| &p.object))
            .chain(self.others.iter().skip(self.namespaces.len()))
            .cloned()
            .chain(self.endpoint_slices());
        for o in objects {
            let _ = write!(y, "---\n{}", serde_yaml::to_string(&o).unwrap_or_default());
        }
        y.push_str(&crate::manifests::nodes(spec));
        y
    }
}

#[cfg(test)]
mod tests;
