//! NetworkPolicy (networking.k8s.io/v1) compiled for the datapath, with the
//! upstream semantics:
//! - a policy selects pods of its own namespace (`spec.podSelector`, empty:
//!   all); `policyTypes` defaults to Ingress, plus Egress when the policy has
//!   egress rules;
//! - a pod is isolated in a direction as soon as one policy of that type
//!   selects it; what it may then do is the union of every such policy's
//!   rules; a pod no policy selects is not isolated (no datapath entry);
//! - a rule's `from`/`to` absent or empty: every peer; `ports` absent or
//!   empty: every port; `ingress: []` allows nothing, `ingress: [{}]` all;
//! - a peer: podSelector (pods of the policy's namespace), namespaceSelector
//!   (every pod of the selected namespaces), both (the pods matching both),
//!   or ipBlock (cidr minus except, matched on addresses, pods' included);
//! - a port: protocol (TCP default, UDP, SCTP), number with optional endPort,
//!   or a named container port (resolved on the destination pod), or none
//!   (every port of the protocol).
//!
//! Identities ([`identity`]): labels + namespace -> a number every node
//! computes alike. ipBlock prefixes get identities too (`ID_CIDR_MIN` up):
//! an address maps to the most specific prefix holding it, so "cidr except
//! E" is the set of prefixes inside cidr and not inside any E.
//!
//! A policy with a bad field is named ([`PolicyError`]) and skipped; the
//! others apply. [`trace`] explains a verdict (`xlb policy trace`).
pub mod agent;
mod identity;
pub mod logging;
mod selector;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Pod},
        networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use lb::{
    model::Cidr,
    policy::{Allow, Direction, ID_ANY, ID_CIDR_MIN, ID_WORLD},
};
pub use selector::Selector;

use crate::cluster::ObjectKey;

/// The label every Namespace carries with its own name (the API server
/// sets it; manifests get it here).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Policies' numbers (0 is "no policy" in the datapath and the events).
const POLICY_NUMBERS: std::ops::Range<u32> = 1..1 << 31;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// A NetworkPolicy field that cannot be enforced: the policy is skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// "namespace/name".
    pub policy: String,
    pub field: String,
    pub problem: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NetworkPolicy {}: {}: {} (policy skipped)",
            self.policy, self.field, self.problem
        )
    }
}

/// A container port a policy may name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub proto: u8,
    pub port: u16,
}

/// A pod as policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    pub node: Option<String>,
    pub ports: Vec<NamedPort>,
    /// Its owner (ReplicaSet, StatefulSet, ...): kind and name, for logs.
    pub workload: Option<(String, String)>,
    pub identity: u32,
}

/// A peer of a parsed rule.
#[derive(Clone, Debug)]
enum PeerSpec {
    /// Pods: in the policy's namespace (`namespaces` None) or in the
    /// namespaces the selector picks, and matching `pods`.
    Pods {
        namespaces: Option<Selector>,
        pods: Selector,
    },
    Block {
        cidr: Cidr,
        except: Vec<Cidr>,
    },
}

#[derive(Clone, Debug)]
enum PortSpec {
    All,
    Range(u16, u16),
    Named(String),
}

#[derive(Clone, Debug)]
struct RuleSpec {
    /// None: every peer.
    peers: Option<Vec<PeerSpec>>,
    /// None: every protocol and port.
    ports: Option<Vec<(u8, PortSpec)>>,
}

/// A validated policy.
#[derive(Clone, Debug)]
struct PolicySpec {
    id: u32,
    namespace: String,
    pods: Selector,
    /// Some: the policy is of this type (isolates the pods it selects).
    ingress: Option<Vec<RuleSpec>>,
    egress: Option<Vec<RuleSpec>>,
}

/// Why an endpoint allows something: the policy and its rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason {
    pub policy: u32,
    pub rule: usize,
}

/// An endpoint's compiled policy: None in a direction: not isolated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointRules {
    /// Allowed -> the policy allowing it (the first in namespace/name order).
    pub ingress: Option<BTreeMap<Allow, u32>>,
    pub egress: Option<BTreeMap<Allow, u32>>,
    /// The policies selecting it per direction.
    pub ingress_policies: BTreeSet<u32>,
    pub egress_policies: BTreeSet<u32>,
}

/// Every NetworkPolicy of the cluster compiled: identities, the address
/// map and every selected pod's rules.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    pub pods: BTreeMap<ObjectKey, PodInfo>,
    /// Identity -> (namespace, labels).
    pub identities: BTreeMap<u32, (String, BTreeMap<String, String>)>,
    /// ipBlock prefixes -> their identities.
    pub cidrs: BTreeMap<Cidr, u32>,
    /// Policy number (stable, from its name; never 0) -> "namespace/name".
    pub policies: BTreeMap<u32, String>,
    /// Pods selected by some policy.
    pub endpoints: BTreeMap<ObjectKey, EndpointRules>,
    pub errors: Vec<PolicyError>,
    specs: Vec<PolicySpec>,
}

fn labels_of(
    m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> BTreeMap<String, String> {
    m.labels.clone().unwrap_or_default()
}

fn proto_number(p: Option<&str>) -> Result<u8, String> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(PROTO_TCP),
        "UDP" => Ok(PROTO_UDP),
        "SCTP" => Ok(PROTO_SCTP),
        other => Err(format!("{other:?} is not one of TCP, UDP, SCTP")),
    }
}

/// The pods policy can see: running (not Succeeded/Failed), not on the
/// host network, with their addresses.
fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return None;
    }
    let status = pod.status.as_ref();
    if matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .chain(status.and_then(|s| s.pod_ip.as_deref()))
    {
        if let Ok(a) = ip.parse::<IpAddr>() {
            if !ips.contains(&a) {
                ips.push(a);
            }
        }
    }
    let ports = spec
        .into_iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(NamedPort {
                name: p.name.clone()?,
                proto: proto_number(p.protocol.as_deref()).ok()?,
                port: u16::try_from(p.container_port).ok()?,
            })
        })
        .collect();
    let workload = m
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| workload_of(&o.kind, &o.name, m.labels.as_ref()));
    Some(PodInfo {
        namespace: m.namespace.clone().unwrap_or_else(|| "default".into()),
        name: m.name.clone().unwrap_or_default(),
        labels: labels_of(m),
        ips,
        node: spec.and_then(|s| s.node_name.clone()),
        ports,
        workload,
        identity: 0,
    })
}

/// The workload a user named, from a pod's controller: a ReplicaSet a
/// Deployment made (its name is `<deployment>-<pod-template-hash>` and the
/// pod carries that hash as a label) is reported as the Deployment, the
/// way GKE's policy log and `kubectl` name it. Decided from the pod alone,
/// so no ReplicaSet needs watching; any other owner is reported as it is.
fn workload_of(
    kind: &str,
    name: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> (String, String) {
    if kind == "ReplicaSet" {
        let hash = labels.and_then(|l| l.get("pod-template-hash"));
        if let Some(deployment) = hash
            .and_then(|h| name.strip_suffix(h.as_str()))
            .and_then(|n| n.strip_suffix('-'))
            .filter(|n| !n.is_empty())
        {
            return ("Deployment".into(), deployment.into());
        }
    }
    (kind.into(), name.into())
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let c: Cidr = s.parse()?;
    if c.network() != c {
        return Err(format!("{s:?} has host bits set (network {})", c.network()));
    }
    Ok(c)
}

/// `inner` lies within `outer`.
fn within(inner: &Cidr, outer: &Cidr) -> bool {
    inner.len >= outer.len && outer.contains(inner.addr)
}

struct Parser<'a> {
    policy: String,
    errors: &'a mut Vec<PolicyError>,
}

impl Parser<'_> {
    fn err(&mut self, field: String, problem: impl Into<String>) {
        self.errors.push(PolicyError {
            policy: self.policy.clone(),
            field,
            problem: problem.into(),
        });
    }

    fn selector(
        &mut self,
        sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
        field: String,
    ) -> Option<Selector> {
        match Selector::parse(sel, &field) {
            Ok(s) => Some(s),
            Err((f, p)) => {
                self.err(f, p);
                None
            }
        }
    }

    fn peer(&mut self, p: &NetworkPolicyPeer, at: String) -> Option<PeerSpec> {
        if let Some(b) = &p.ip_block {
            if p.pod_selector.is_some() || p.namespace_selector.is_some() {
                self.err(at, "ipBlock may not be combined with podSelector or namespaceSelector");
                return None;
            }
            let cidr = match parse_cidr(&b.cidr) {
                Ok(c) => c,
                Err(e) => {
                    self.err(format!("{at}.ipBlock.cidr"), e);
                    return None;
                }
            };
            let mut except = Vec::new();
            for (i, e) in b.except.iter().flatten().enumerate() {
                let field = format!("{at}.ipBlock.except[{i}]");
                match parse_cidr(e) {
                    Ok(x) if within(&x, &cidr) && x.len > cidr.len => except.push(x),
                    Ok(x) => self.err(field, format!("{x} is not strictly within {cidr}")),
                    Err(e) => self.err(field, e),
                }
            }
            return Some(PeerSpec::Block { cidr, except });
        }
        if p.pod_selector.is_none() && p.namespace_selector.is_none() {
            self.err(at, "must specify a peer (podSelector, namespaceSelector or ipBlock)");
            return None;
        }
        let namespaces = match &p.namespace_selector {
            Some(s) => Some(self.selector(s, format!("{at}.namespaceSelector"))?),
            None => None,
        };
        let pods = match &p.pod_selector {
            Some(s) => self.selector(s, format!("{at}.podSelector"))?,
            None => Selector::all(),
        };
        Some(PeerSpec::Pods { namespaces, pods })
    }

    fn port(&mut self, p: &NetworkPolicyPort, at: String) -> Option<(u8, PortSpec)> {
        let proto = match proto_number(p.protocol.as_deref()) {
            Ok(n) => n,
            Err(e) => {
                self.err(format!("{at}.protocol"), e);
                return None;
            }
        };
        let spec = match (&p.port, p.end_port) {
            (None, None) => PortSpec::All,
            (None, Some(_)) => {
                self.err(format!("{at}.endPort"), "endPort needs a numeric port");
                return None;
            }
            (Some(IntOrString::Int(n)), end) => {
                let Ok(lo) = u16::try_from(*n).map_err(|_| ()).and_then(|v| {
                    if v == 0 {
                        Err(())
                    } else {
                        Ok(v)
                    }
                }) else {
                    self.err(format!("{at}.port"), format!("{n} is not a port number (1-65535)"));
                    return None;
                };
                let hi = match end {
                    None => lo,
                    Some(e) => match u16::try_from(e) {
                        Ok(h) if h >= lo => h,
                        _ => {
                            self.err(
                                format!("{at}.endPort"),
                                format!("{e} is not a port number >= port {lo}"),
                            );
                            return None;
                        }
                    },
                };
                PortSpec::Range(lo, hi)
            }
            (Some(IntOrString::String(name)), end) => {
                if end.is_some() {
                    self.err(format!("{at}.endPort"), "endPort needs a numeric port");
                    return None;
                }
                if let Ok(n) = name.parse::<u16>() {
                    // An all-digit string the API would reject; read it as the number.
                    PortSpec::Range(n, n)
                } else if name.is_empty() || name.len() > 15 {
                    self.err(format!("{at}.port"), format!("{name:?} is not a valid port name"));
                    return None;
                } else {
                    PortSpec::Named(name.clone())
                }
            }
        };
        Some((proto, spec))
    }

    fn rule(
        &mut self,
        peers: Option<&Vec<NetworkPolicyPeer>>,
        ports: Option<&Vec<NetworkPolicyPort>>,
        at: &str,
        peer_field: &str,
    ) -> Option<RuleSpec> {
        let peers = match peers.filter(|p| !p.is_empty()) {
            None => None,
            Some(ps) => {
                let mut out = Vec::new();
                for (i, p) in ps.iter().enumerate() {
                    out.push(self.peer(p, format!("{at}.{peer_field}[{i}]"))?);
                }
                Some(out)
            }
        };
        let ports = match ports.filter(|p| !p.is_empty()) {
            None => None,
            Some(ps) => {
                let mut out = Vec::new();
                for (i, p) in ps.iter().enumerate() {
                    out.push(self.port(p, format!("{at}.ports[{i}]"))?);
                }
                Some(out)
            }
        };
        Some(RuleSpec { peers, ports })
    }
}

/// Validates one policy; None (with errors pushed) when it cannot apply.
fn parse_policy(np: &NetworkPolicy, id: u32, errors: &mut Vec<PolicyError>) -> Option<PolicySpec> {
    let namespace = np.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = np.metadata.name.as_deref().unwrap_or_default();
    let before = errors.len();
    let mut p = Parser { policy: format!("{namespace}/{name}"), errors };
    let Some(spec) = &np.spec else {
        p.err("spec".into(), "missing");
        return None;
    };
    let pods = match &spec.pod_selector {
        Some(s) => p.selector(s, "spec.podSelector".into()),
        None => Some(Selector::all()),
    };
    let (mut is_ingress, mut is_egress) = (false, false);
    match &spec.policy_types {
        Some(types) if !types.is_empty() => {
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => is_ingress = true,
                    "Egress" => is_egress = true,
                    other => p.err(
                        format!("spec.policyTypes[{i}]"),
                        format!("{other:?} is not one of Ingress, Egress"),
                    ),
                }
            }
        }
        // Upstream's default: Ingress always, Egress when there are egress rules.
        _ => {
            is_ingress = true;
            is_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
    }
    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        if let Some(r) =
            p.rule(r.from.as_ref(), r.ports.as_ref(), &format!("spec.ingress[{i}]"), "from")
        {
            ingress.push(r);
        }
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        if let Some(r) = p.rule(r.to.as_ref(), r.ports.as_ref(), &format!("spec.egress[{i}]"), "to")
        {
            egress.push(r);
        }
    }
    if p.errors.len() != before {
        return None;
    }
    Some(PolicySpec {
        id,
        namespace,
        pods: pods?,
        ingress: is_ingress.then_some(ingress),
        egress: is_egress.then_some(egress),
    })
}

/// Compiles every NetworkPolicy over the pods and namespaces it can see.
pub fn compile(pods: &[Pod], namespaces: &[Namespace], policies: &[NetworkPolicy]) -> Compiled {
    let mut c = Compiled::default();
    // Namespaces' labels, each with its name label.
    let mut ns_labels: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for ns in namespaces {
        let name = ns.metadata.name.clone().unwrap_or_default();
        let mut l = labels_of(&ns.metadata);
        l.entry(NAMESPACE_NAME_LABEL.into()).or_insert_with(|| name.clone());
        ns_labels.insert(name, l);
    }
    for p in pods.iter().filter_map(pod_info) {
        // A namespace not (yet) seen still has its name label.
        ns_labels.entry(p.namespace.clone()).or_insert_with(|| {
            BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), p.namespace.clone())])
        });
        c.pods.insert(ObjectKey::new(Some(&p.namespace), &p.name), p);
    }
    let ids = identity::assign(c.pods.values().map(|p| (p.namespace.as_str(), &p.labels)));
    for p in c.pods.values_mut() {
        p.identity = ids[&identity::key(&p.namespace, &p.labels)];
        c.identities.entry(p.identity).or_insert_with(|| (p.namespace.clone(), p.labels.clone()));
    }

    // Policies in namespace/name order, each numbered by its name (stable:
    // a policy keeps its number while others are added and removed, so an
    // event in flight across a recompile names the right one).
    let mut sorted: Vec<(String, &NetworkPolicy)> = policies
        .iter()
        .map(|np| {
            let ns = np.metadata.namespace.as_deref().unwrap_or("default");
            (format!("{ns}/{}", np.metadata.name.as_deref().unwrap_or("")), np)
        })
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let numbers = identity::number(sorted.iter().map(|(name, _)| name.clone()), POLICY_NUMBERS);
    for (name, np) in sorted {
        let id = numbers[&name];
        c.policies.insert(id, name);
        if let Some(spec) = parse_policy(np, id, &mut c.errors) {
            c.specs.push(spec);
        }
    }

    // ipBlock prefixes: identities in prefix order.
    let mut prefixes = BTreeSet::new();
    for spec in &c.specs {
        for r in spec.ingress.iter().chain(spec.egress.iter()).flatten() {
            for peer in r.peers.iter().flatten() {
                if let PeerSpec::Block { cidr, except } = peer {
                    prefixes.insert(*cidr);
                    prefixes.extend(except.iter().copied());
                }
            }
        }
    }
    // Their identities by prefix, stable like the pods' (an added ipBlock
    // does not renumber the others in every node's address map).
    let numbers = identity::number(prefixes.iter().map(|p| p.to_string()), ID_CIDR_MIN..u32::MAX);
    c.cidrs = prefixes.into_iter().map(|p| (p, numbers[&p.to_string()])).collect();

    let specs = std::mem::take(&mut c.specs);
    for spec in &specs {
        let selected: Vec<ObjectKey> = c
            .pods
            .iter()
            .filter(|(_, p)| p.namespace == spec.namespace && spec.pods.matches(&p.labels))
            .map(|(k, _)| k.clone())
            .collect();
        for key in selected {
            let ep = c.endpoints.entry(key.clone()).or_default();
            let pod = &c.pods[&key];
            for (dir, rules) in
                [(Direction::Ingress, &spec.ingress), (Direction::Egress, &spec.egress)]
            {
                let Some(rules) = rules else { continue };
                let (allowed, selecting) = match dir {
                    Direction::Ingress => (&mut ep.ingress, &mut ep.ingress_policies),
                    Direction::Egress => (&mut ep.egress, &mut ep.egress_policies),
                };
                selecting.insert(spec.id);
                let allowed = allowed.get_or_insert_with(BTreeMap::new);
                for r in rules {
                    for a in allows(r, spec, dir, pod, &c.pods, &ns_labels, &c.cidrs) {
                        allowed.entry(a).or_insert(spec.id);
                    }
                }
            }
        }
    }
    c.specs = specs;
    c
}

/// The pods a peer selects.
fn peer_pods<'p>(
    peer: &PeerSpec,
    spec: &PolicySpec,
    pods: &'p BTreeMap<ObjectKey, PodInfo>,
    ns_labels: &BTreeMap<String, BTreeMap<String, String>>,
) -> Vec<&'p PodInfo> {
    match peer {
        PeerSpec::Pods { namespaces, pods: sel } => pods
            .values()
            .filter(|p| match namespaces {
                None => p.namespace == spec.namespace,
                Some(ns) => ns_labels.get(&p.namespace).is_some_and(|l| ns.matches(l)),
            })
            .filter(|p| sel.matches(&p.labels))
            .collect(),
        PeerSpec::Block { .. } => Vec::new(),
    }
}

/// The ipBlock prefixes' identities inside `cidr` and outside every except.
fn block_ids(cidr: &Cidr, except: &[Cidr], cidrs: &BTreeMap<Cidr, u32>) -> Vec<u32> {
    cidrs
        .iter()
        .filter(|(p, _)| within(p, cidr) && !except.iter().any(|e| within(p, e)))
        .map(|(_, id)| *id)
        .collect()
}

/// What one rule allows `pod` (the endpoint) in `dir`.
fn allows(
    r: &RuleSpec,
    spec: &PolicySpec,
    dir: Direction,
    pod: &PodInfo,
    pods: &BTreeMap<ObjectKey, PodInfo>,
    ns_labels: &BTreeMap<String, BTreeMap<String, String>>,
    cidrs: &BTreeMap<Cidr, u32>,
) -> Vec<Allow> {
    // Peers: identities (ANY for every peer), and the peer pods for named
    // egress ports.
    let mut peer_ids: BTreeSet<u32> = BTreeSet::new();
    let mut peer_pods_all: Vec<&PodInfo> = Vec::new();
    match &r.peers {
        None => {
            peer_ids.insert(ID_ANY);
            peer_pods_all = pods.values().collect();
        }
        Some(peers) => {
            for peer in peers {
                match peer {
                    PeerSpec::Block { cidr, except } => {
                        peer_ids.extend(block_ids(cidr, except, cidrs))
                    }
                    PeerSpec::Pods { .. } => {
                        let ps = peer_pods(peer, spec, pods, ns_labels);
                        peer_ids.extend(ps.iter().map(|p| p.identity));
                        peer_pods_all.extend(ps);
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    let Some(ports) = &r.ports else {
        out.extend(peer_ids.iter().map(|&peer| Allow { peer, proto: None, ports: None }));
        return out;
    };
    for (proto, port) in ports {
        match port {
            PortSpec::All => out.extend(peer_ids.iter().map(|&peer| Allow {
                peer,
                proto: Some(*proto),
                ports: None,
            })),
            PortSpec::Range(lo, hi) => out.extend(peer_ids.iter().map(|&peer| Allow {
                peer,
                proto: Some(*proto),
                ports: Some((*lo, *hi)),
            })),
            PortSpec::Named(name) => match dir {
                // The endpoint's own container port.
                Direction::Ingress => {
                    for np in pod.ports.iter().filter(|np| &np.name == name && np.proto == *proto) {
                        out.extend(peer_ids.iter().map(|&peer| Allow {
                            peer,
                            proto: Some(*proto),
                            ports: Some((np.port, np.port)),
                        }));
                    }
                }
                // Each destination pod's port of that name, for its identity.
                Direction::Egress => {
                    for p in &peer_pods_all {
                        for np in p.ports.iter().filter(|np| &np.name == name && np.proto == *proto)
                        {
                            out.push(Allow {
                                peer: p.identity,
                                proto: Some(*proto),
                                ports: Some((np.port, np.port)),
                            });
                        }
                    }
                }
            },
        }
    }
    out
}

/// What an address is to the datapath: its pod identity or [`ID_WORLD`],
/// and its most specific ipBlock prefix.
impl Compiled {
    pub fn cidr_identity(&self, ip: IpAddr) -> u32 {
        self.cidrs
            .iter()
            .filter(|(c, _)| c.contains(ip))
            .max_by_key(|(c, _)| c.len)
            .map_or(0, |(_, id)| *id)
    }

    /// The pod holding `ip`.
    pub fn pod_at(&self, ip: IpAddr) -> Option<&PodInfo> {
        self.pods.values().find(|p| p.ips.contains(&ip))
    }

    /// Every address entry: pods' addresses (full length), ipBlock prefixes.
    pub fn addr_identities(&self) -> BTreeMap<Cidr, lb::policy::AddrIdentity> {
        let mut out = BTreeMap::new();
        for c in self.cidrs.keys() {
            out.insert(
                *c,
                lb::policy::AddrIdentity {
                    identity: ID_WORLD,
                    cidr_identity: self.cidr_identity(c.addr),
                },
            );
        }
        for p in self.pods.values() {
            for ip in &p.ips {
                let len = if ip.is_ipv4() { 32 } else { 128 };
                out.insert(
                    Cidr { addr: *ip, len },
                    lb::policy::AddrIdentity {
                        identity: p.identity,
                        cidr_identity: self.cidr_identity(*ip),
                    },
                );
            }
        }
        out
    }

    /// Whether the compiled rules let `from` reach `to` on (proto, port):
    /// the datapath's decision, taken from the same entries.
    pub fn verdict(&self, src_ip: IpAddr, dst_ip: IpAddr, proto: u8, port: u16) -> Verdict {
        let src = self.pod_at(src_ip);
        let dst = self.pod_at(dst_ip);
        let src_id = src.map_or(ID_WORLD, |p| p.identity);
        let dst_id = dst.map_or(ID_WORLD, |p| p.identity);
        let egress = src
            .and_then(|p| self.endpoints.get(&ObjectKey::new(Some(&p.namespace), &p.name)))
            .and_then(|e| e.egress.as_ref().map(|m| (m, &e.egress_policies)))
            .map(|(m, sel)| {
                check(m, dst_id, self.cidr_identity(dst_ip), proto, port).ok_or(sel.clone())
            });
        let ingress = dst
            .and_then(|p| self.endpoints.get(&ObjectKey::new(Some(&p.namespace), &p.name)))
            .and_then(|e| e.ingress.as_ref().map(|m| (m, &e.ingress_policies)))
            .map(|(m, sel)| {
                check(m, src_id, self.cidr_identity(src_ip), proto, port).ok_or(sel.clone())
            });
        Verdict { egress, ingress }
    }
}

/// The policy allowing (peer identity or its prefix, proto, port) in
/// `allowed`, as the datapath looks it up.
pub fn check(
    allowed: &BTreeMap<Allow, u32>,
    id: u32,
    cidr_id: u32,
    proto: u8,
    port: u16,
) -> Option<u32> {
    allowed
        .iter()
        .filter(|(a, _)| a.peer == ID_ANY || a.peer == id || (cidr_id != 0 && a.peer == cidr_id))
        .filter(|(a, _)| match a.proto {
            None => true,
            Some(p) => p == proto && a.ports.is_none_or(|(lo, hi)| port >= lo && port <= hi),
        })
        .map(|(_, p)| *p)
        .min()
}

/// A verdict per direction: None: not isolated there; Some(Ok(policy)):
/// allowed by it; Some(Err(selecting)): denied, isolated by these policies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub egress: Option<Result<u32, BTreeSet<u32>>>,
    pub ingress: Option<Result<u32, BTreeSet<u32>>>,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        !matches!(self.egress, Some(Err(_))) && !matches!(self.ingress, Some(Err(_)))
    }
}

/// `xlb policy trace`: why `src` reaches `dst` on (proto, port) or not.
pub fn trace(c: &Compiled, src: IpAddr, dst: IpAddr, proto: u8, port: u16) -> String {
    let name = |ip: IpAddr| {
        c.pod_at(ip).map_or(format!("{ip} (not a pod)"), |p| {
            format!("{}/{} {ip} identity {}", p.namespace, p.name, p.identity)
        })
    };
    let pol = |id: &u32| c.policies.get(id).cloned().unwrap_or_else(|| format!("#{id}"));
    let v = c.verdict(src, dst, proto, port);
    let mut out = format!("from {}\nto   {}\nproto {proto} port {port}\n", name(src), name(dst));
    for (dir, d) in
        [("egress of the source", &v.egress), ("ingress of the destination", &v.ingress)]
    {
        let line = match d {
            None => "not isolated: allowed".to_string(),
            Some(Ok(p)) => format!("allowed by NetworkPolicy {}", pol(p)),
            Some(Err(sel)) => format!(
                "DENIED: isolated by {} and no rule allows it",
                sel.iter()
                    .map(|p| format!("NetworkPolicy {}", pol(p)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        out.push_str(&format!("{dir}: {line}\n"));
    }
    out.push_str(if v.allowed() { "verdict: ALLOW\n" } else { "verdict: DENY\n" });
    out
}

/// `xlb policy list` from manifests: each policy, the pods it isolates per
/// direction, the rules' entries per pod, and the policies skipped.
pub fn render_list(c: &Compiled) -> String {
    let mut out = String::new();
    for (id, name) in &c.policies {
        let ing: Vec<String> = c
            .endpoints
            .iter()
            .filter(|(_, e)| e.ingress_policies.contains(id))
            .map(|(k, _)| k.to_string())
            .collect();
        let eg: Vec<String> = c
            .endpoints
            .iter()
            .filter(|(_, e)| e.egress_policies.contains(id))
            .map(|(k, _)| k.to_string())
            .collect();
        let skipped = c.errors.iter().any(|e| &e.policy == name);
        out.push_str(&format!(
            "#{id} NetworkPolicy {name}{}\n  ingress: {}\n  egress:  {}\n",
            if skipped { " (SKIPPED: invalid)" } else { "" },
            if ing.is_empty() { "-".into() } else { ing.join(", ") },
            if eg.is_empty() { "-".into() } else { eg.join(", ") },
        ));
    }
    for (pod, e) in &c.endpoints {
        let p = &c.pods[pod];
        out.push_str(&format!("pod {pod} identity {} {:?}\n", p.identity, p.ips));
        for (dir, m) in [("ingress", &e.ingress), ("egress", &e.egress)] {
            let Some(m) = m else { continue };
            if m.is_empty() {
                out.push_str(&format!("  {dir}: deny all\n"));
            }
            for (a, pol) in m {
                let peer = match a.peer {
                    ID_ANY => "any".to_string(),
                    id if id >= ID_CIDR_MIN => c
                        .cidrs
                        .iter()
                        .find(|(_, v)| **v == id)
                        .map_or(format!("cidr #{id}"), |(k, _)| format!("cidr {k}")),
                    id => c.identities.get(&id).map_or(format!("identity {id}"), |(ns, l)| {
                        let labels: Vec<String> =
                            l.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        format!("identity {id} ({ns}: {})", labels.join(","))
                    }),
                };
                let what = match (a.proto, a.ports) {
                    (None, _) => "all".to_string(),
                    (Some(p), None) => format!("proto {p}"),
                    (Some(p), Some((lo, hi))) if lo == hi => format!("proto {p} port {lo}"),
                    (Some(p), Some((lo, hi))) => format!("proto {p} ports {lo}-{hi}"),
                };
                out.push_str(&format!(
                    "  {dir}: {peer} {what} <- {}\n",
                    c.policies.get(pol).map_or("?", String::as_str)
                ));
            }
        }
    }
    for e in &c.errors {
        out.push_str(&format!("{e}\n"));
    }
    out
}
