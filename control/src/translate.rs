//! Translates Kubernetes Services, EndpointSlices and Nodes (a
//! [`Cluster`]) into the datapath's desired state ([`lb::model::Desired`]),
//! with kube-proxy semantics. The one translation path for every source.
//!
//! Bad configuration is rejected whole: every problem found is collected into
//! [`ConfigErrors`] (each naming the object and the field) and no partial
//! state is returned, so nothing of a bad configuration is ever applied.
//!
//! What becomes a datapath service: each port and address family of each
//! Service this proxy owns (see [`service_key`]), with the frontends
//! reachable from outside the cluster —
//! LoadBalancer ingress IPs, externalIPs, and the NodePort on this node's
//! addresses. ClusterIP frontends are deliberately left out of
//! `Service::frontends`: the XDP fast path serves north-south traffic only
//! and ClusterIP belongs to the socket-level load balancer. A service port
//! with no such frontend is not part of the desired state.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{
    api::{
        core::v1::{Node, Service as KubeService, ServicePort},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use lb::model::{
    Affinity, Backend, BackendState, Cidr, Desired, Encap, Frontend, FrontendKind, NodeConfig,
    Proto, Service, ServiceKey, DEFAULT_MAGLEV_SIZE,
};
use thiserror::Error;

use crate::cluster::{Changes, Cluster, ObjectKey};

/// Service label naming the proxy that implements it (KEP-2447); services
/// labelled with another name are left to that proxy.
pub const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// EndpointSlice label naming the Service it belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Service annotation: the Maglev table size, a prime <= 16381.
pub const MAGLEV_SIZE_ANNOTATION: &str = "xlb.io/maglev-size";
/// Service annotation: how packets reach the backend node, `geneve` or `ipip`.
pub const ENCAP_ANNOTATION: &str = "xlb.io/encap";
/// Suffix of the key of a service port's IPv6 half (see [`service_key`]).
pub const IPV6_KEY_SUFFIX: &str = "/ipv6";
/// Proxy name xlb answers to by default.
pub const DEFAULT_PROXY_NAME: &str = "xlb";
/// sessionAffinityConfig.clientIP.timeoutSeconds when unset (Kubernetes' default).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10800;
/// Largest sessionAffinity timeout the API server admits.
pub const MAX_AFFINITY_TIMEOUT_S: i32 = 86400;

/// What the translation needs to know about the node it runs on and its policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranslateOptions {
    /// This node's name: its Node object gives the NodePort addresses
    /// (status.addresses InternalIP and ExternalIP) and, unless overridden,
    /// the tunnel source addresses (the first InternalIP of each family).
    pub node_name: String,
    /// Where Service externalIPs may point. An externalIP outside every one of
    /// them is an error (CVE-2020-8554: any user able to create a Service
    /// could otherwise capture traffic for any address). Empty: none allowed.
    pub external_ip_cidrs: Vec<Cidr>,
    /// The `service.kubernetes.io/service-proxy-name` value xlb owns;
    /// unlabelled services are always ours.
    pub proxy_name: String,
    /// Overrides the IPv4 tunnel source taken from the Node object.
    pub tunnel_v4: Option<Ipv4Addr>,
    /// Overrides the IPv6 tunnel source taken from the Node object.
    pub tunnel_v6: Option<Ipv6Addr>,
}

impl TranslateOptions {
    /// Options for node `node_name`: no externalIP allowed, proxy name "xlb",
    /// tunnel addresses from the Node object.
    pub fn new(node_name: impl Into<String>) -> Self {
        TranslateOptions {
            node_name: node_name.into(),
            external_ip_cidrs: Vec::new(),
            proxy_name: DEFAULT_PROXY_NAME.to_string(),
            tunnel_v4: None,
            tunnel_v6: None,
        }
    }
}

/// A Kubernetes object named in an error: "Service default/web", "Node node1".
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// What is wrong with one field.
#[derive(Clone, Debug, Error, PartialEq, Eq, Hash)]
pub enum Problem {
    #[error("missing")]
    Missing,
    #[error("{value:?} is not an IP address")]
    BadIp { value: String },
    #[error("{value:?} is not a CIDR: {reason}")]
    BadCidr { value: String, reason: String },
    #[error(
        "{addr} is outside the allowed external IP CIDRs ({allowed}); allow it with \
         --external-ip-cidr (CVE-2020-8554)"
    )]
    ExternalIpNotAllowed { addr: IpAddr, allowed: String },
    #[error("{value} is not a port number (1-65535)")]
    BadPort { value: i32 },
    #[error("{value:?} is not a valid port name (IANA_SVC_NAME)")]
    BadPortName { value: String },
    #[error("{value:?} is not one of {expected}")]
    BadValue { value: String, expected: &'static str },
    #[error("{value:?} is not a prime number <= {max}")]
    BadMaglevSize { value: String, max: u32 },
    #[error("{value} is not between 1 and {max} seconds", max = MAX_AFFINITY_TIMEOUT_S)]
    BadAffinityTimeout { value: i32 },
    #[error("node {node:?} not found")]
    UnknownNode { node: String },
    #[error("node {node:?} has no InternalIP address")]
    NodeWithoutAddress { node: String },
    #[error("{addr} does not match addressType {address_type}")]
    FamilyMismatch { addr: IpAddr, address_type: String },
    #[error("named targetPort {target:?} has no port number in the slice")]
    UnresolvedTargetPort { target: String },
    #[error("{frontend} is already a frontend of {other}")]
    DuplicateFrontend { frontend: String, other: ServiceKey },
}

/// One problem: `Service default/web: spec.ports[1].targetPort: ...`.
#[derive(Clone, Debug, Error, PartialEq, Eq, Hash)]
#[error("{object}: {field}: {problem}")]
pub struct ConfigError {
    pub object: ObjectRef,
    /// Path of the field inside the object, as in the API: `spec.ports[1].targetPort`.
    pub field: String,
    pub problem: Problem,
}

/// Every problem of a rejected configuration, in a deterministic order
/// (objects sorted by namespace and name).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "configuration rejected ({n} error{})", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Translates `cluster` as seen from node `opts.node_name`. Either the whole
/// desired state or every error. The same code as the incremental
/// [`Translator`], fed the whole cluster at once.
pub fn translate(cluster: &Cluster, opts: &TranslateOptions) -> Result<Desired, ConfigErrors> {
    let mut t = Translator::new(opts.clone());
    t.update(Changes::full(cluster.clone()));
    t.result()
}

/// The frontend a service port claims: two service ports may not share one.
type Slot = (IpAddr, u16, Proto);

/// (namespace, name) of a Service, as an EndpointSlice's label names it.
type ServiceName = (String, String);

/// One frontend claim, for the duplicate check: the claiming service port,
/// the field it came from and the frontend as text.
#[derive(Clone, Debug)]
struct Claim {
    key: ServiceKey,
    field: String,
    frontend: String,
}

/// What one Kubernetes Service translated to, and what it depends on.
#[derive(Debug)]
struct SvcEntry {
    object: Arc<KubeService>,
    /// Datapath service keys it produced, in order.
    keys: Vec<ServiceKey>,
    /// Its own problems (fields of the Service, endpoints of its slices).
    errors: Vec<ConfigError>,
    /// Frontends claimed, in translation order (the claim's sequence number
    /// orders claims within the Service).
    claims: Vec<Slot>,
    /// Names of the nodes its endpoints named (known or not).
    nodes: Vec<String>,
    /// NodePort or LoadBalancer: its frontends use this node's addresses.
    node_ports: bool,
}

/// A Node: its addresses and its problems.
#[derive(Debug)]
struct NodeEntry {
    object: Arc<Node>,
    /// InternalIP and ExternalIP addresses, in API order.
    addrs: Vec<NodeAddr>,
    errors: Vec<ConfigError>,
}

/// The healthCheckNodePort of a Service with externalTrafficPolicy: Local,
/// and how many ready endpoints it has on this node (kube-proxy's answer:
/// 200 when there is one, 503 otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub service: ObjectKey,
    pub port: u16,
    pub local_endpoints: usize,
}

/// Incremental translation: keeps the objects of every kind (shared `Arc`s),
/// the translation of each Service and the indices that say what a change
/// touches — a Service change re-translates that Service; an EndpointSlice
/// change, the Service of its `kubernetes.io/service-name` label (before and
/// after); a Node change, only if its addresses changed, the Services with
/// endpoints on it (every Service with NodePorts when it is this node). The
/// cost of an update grows with the change, not with the cluster.
///
/// Validation stays whole-configuration: while any object has a problem,
/// [`Translator::result`]/[`Translator::check`] report every error (in the
/// order `translate` always used) and the changed keys keep accumulating, so
/// the first valid state afterwards carries all of them.
#[derive(Debug)]
pub struct Translator {
    opts: TranslateOptions,
    services: BTreeMap<ObjectKey, SvcEntry>,
    /// Every EndpointSlice, with the (namespace, Service name) it is filed under.
    slices: HashMap<ObjectKey, (Arc<EndpointSlice>, Option<ServiceName>)>,
    /// (namespace, Service name) -> its slices by slice name.
    slices_of: HashMap<ServiceName, BTreeMap<String, Arc<EndpointSlice>>>,
    nodes: HashMap<String, NodeEntry>,
    /// Node name -> Services with endpoints naming it.
    node_users: HashMap<String, HashSet<ObjectKey>>,
    /// Frontend -> its claims by (Service, sequence): more than one is an error.
    claims: HashMap<Slot, BTreeMap<(ObjectKey, usize), Claim>>,
    contested: usize,
    with_errors: BTreeSet<ObjectKey>,
    nodes_with_errors: usize,
    health: BTreeMap<ObjectKey, HealthCheck>,
    health_changed: bool,
    desired: Desired,
    /// Datapath services changed since the last [`Translator::take_changed`].
    changed: BTreeSet<ServiceKey>,
}

impl Translator {
    pub fn new(opts: TranslateOptions) -> Self {
        Translator {
            opts,
            services: BTreeMap::new(),
            slices: HashMap::new(),
            slices_of: HashMap::new(),
            nodes: HashMap::new(),
            node_users: HashMap::new(),
            claims: HashMap::new(),
            contested: 0,
            with_errors: BTreeSet::new(),
            nodes_with_errors: 0,
            health: BTreeMap::new(),
            health_changed: false,
            desired: Desired::default(),
            changed: BTreeSet::new(),
        }
    }

    pub fn options(&self) -> &TranslateOptions {
        &self.opts
    }

    /// Objects held: (Services, EndpointSlices, Nodes).
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.services.len(), self.slices.len(), self.nodes.len())
    }

    /// Takes in a source's changes and re-translates what they touch.
    pub fn update(&mut self, changes: Changes) {
        let mut dirty: BTreeSet<ObjectKey> = BTreeSet::new();
        let this_before = self.nodes.get(&self.opts.node_name).map(|n| n.addrs.clone());

        // Nodes.
        let Changes { services, slices, nodes } = changes;
        let mut node_changes: Vec<(String, Option<Arc<Node>>)> =
            nodes.objects.into_iter().map(|(k, o)| (k.name, o)).collect();
        if nodes.full {
            let listed: HashSet<&str> = node_changes.iter().map(|(n, _)| n.as_str()).collect();
            let gone: Vec<String> =
                self.nodes.keys().filter(|n| !listed.contains(n.as_str())).cloned().collect();
            node_changes.extend(gone.into_iter().map(|n| (n, None)));
        }
        for (name, obj) in node_changes {
            if let (Some(old), Some(new)) = (self.nodes.get(&name), &obj) {
                if Arc::ptr_eq(&old.object, new) || *old.object == **new {
                    continue;
                }
            }
            let old = self.nodes.remove(&name);
            if old.as_ref().is_some_and(|o| !o.errors.is_empty()) {
                self.nodes_with_errors -= 1;
            }
            let new = obj.map(|o| index_node(&name, o));
            if new.as_ref().is_some_and(|n| !n.errors.is_empty()) {
                self.nodes_with_errors += 1;
            }
            let addrs_changed = old.as_ref().map(|o| &o.addrs) != new.as_ref().map(|n| &n.addrs);
            if addrs_changed {
                dirty.extend(self.node_users.get(&name).into_iter().flatten().cloned());
            }
            if let Some(n) = new {
                self.nodes.insert(name, n);
            }
        }
        let this_after = self.nodes.get(&self.opts.node_name).map(|n| n.addrs.clone());
        if this_before != this_after {
            self.desired.node = this_after
                .as_deref()
                .map_or_else(NodeConfig::default, |a| node_config(a, &self.opts));
            dirty
                .extend(self.services.iter().filter(|(_, e)| e.node_ports).map(|(k, _)| k.clone()));
        }

        // EndpointSlices.
        let mut slice_changes = slices.objects;
        if slices.full {
            let listed: HashSet<&ObjectKey> = slice_changes.iter().map(|(k, _)| k).collect();
            let gone: Vec<ObjectKey> =
                self.slices.keys().filter(|k| !listed.contains(k)).cloned().collect();
            slice_changes.extend(gone.into_iter().map(|k| (k, None)));
        }
        for (key, obj) in slice_changes {
            if let (Some((old, _)), Some(new)) = (self.slices.get(&key), &obj) {
                if Arc::ptr_eq(old, new) || **old == **new {
                    continue;
                }
            }
            if let Some((_, Some(owner))) = self.slices.remove(&key) {
                if let Some(m) = self.slices_of.get_mut(&owner) {
                    m.remove(&key.name);
                    if m.is_empty() {
                        self.slices_of.remove(&owner);
                    }
                }
                self.dirty_owner(&owner, &mut dirty);
            }
            let Some(obj) = obj else { continue };
            let owner =
                obj.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).map(|svc| {
                    let ns = obj.metadata.namespace.as_deref().unwrap_or("default");
                    (ns.to_string(), svc.clone())
                });
            if let Some(owner) = &owner {
                self.slices_of
                    .entry(owner.clone())
                    .or_default()
                    .insert(key.name.clone(), obj.clone());
                self.dirty_owner(owner, &mut dirty);
            }
            self.slices.insert(key, (obj, owner));
        }

        // Services.
        let mut svc_changes = services.objects;
        if services.full {
            let listed: HashSet<&ObjectKey> = svc_changes.iter().map(|(k, _)| k).collect();
            let gone: Vec<ObjectKey> =
                self.services.keys().filter(|k| !listed.contains(k)).cloned().collect();
            svc_changes.extend(gone.into_iter().map(|k| (k, None)));
        }
        let mut objects: HashMap<ObjectKey, Option<Arc<KubeService>>> = HashMap::new();
        for (key, obj) in svc_changes {
            if let (Some(old), Some(new)) = (self.services.get(&key), &obj) {
                if Arc::ptr_eq(&old.object, new) || *old.object == **new {
                    continue;
                }
            }
            dirty.insert(key.clone());
            objects.insert(key, obj);
        }

        for key in dirty {
            let object = match objects.remove(&key) {
                Some(o) => o,
                None => self.services.get(&key).map(|e| e.object.clone()),
            };
            self.retranslate(key, object);
        }
    }

    /// Marks the Services a slice filed under (namespace, name) belongs to.
    fn dirty_owner(&self, (ns, name): &ServiceName, dirty: &mut BTreeSet<ObjectKey>) {
        let key = ObjectKey::new(Some(ns), name);
        if self.services.contains_key(&key) {
            dirty.insert(key);
        }
        if ns == "default" {
            let bare = ObjectKey::new(None, name);
            if self.services.contains_key(&bare) {
                dirty.insert(bare);
            }
        }
    }

    /// Replaces what Service `key` contributes with the translation of
    /// `object` (None: it is gone).
    fn retranslate(&mut self, key: ObjectKey, object: Option<Arc<KubeService>>) {
        let mut old_keys = Vec::new();
        if let Some(old) = self.services.remove(&key) {
            self.with_errors.remove(&key);
            for (seq, slot) in old.claims.iter().enumerate() {
                if let Some(c) = self.claims.get_mut(slot) {
                    let before = c.len();
                    c.remove(&(key.clone(), seq));
                    if before > 1 && c.len() <= 1 {
                        self.contested -= 1;
                    }
                    if c.is_empty() {
                        self.claims.remove(slot);
                    }
                }
            }
            for n in &old.nodes {
                if let Some(users) = self.node_users.get_mut(n) {
                    users.remove(&key);
                    if users.is_empty() {
                        self.node_users.remove(n);
                    }
                }
            }
            old_keys = old.keys;
        }

        let mut new_keys = Vec::new();
        let health = object.as_ref().and_then(|o| self.health_check(o));
        if self.health.get(&key) != health.as_ref() {
            match health {
                Some(h) => self.health.insert(key.clone(), h),
                None => self.health.remove(&key),
            };
            self.health_changed = true;
        }
        if let Some(object) = object {
            let this_addrs =
                self.nodes.get(&self.opts.node_name).map(|n| n.addrs.clone()).unwrap_or_default();
            let ns = object.metadata.namespace.as_deref().unwrap_or("default");
            let name = object.metadata.name.as_deref().unwrap_or("");
            let slices: Vec<&EndpointSlice> = self
                .slices_of
                .get(&(ns.to_string(), name.to_string()))
                .map(|m| m.values().map(|s| &**s).collect())
                .unwrap_or_default();
            let mut cx = Context {
                opts: &self.opts,
                errors: Vec::new(),
                seen: HashSet::new(),
                nodes: &self.nodes,
                referenced: HashSet::new(),
            };
            let out = cx.service(&object, &slices, &this_addrs);
            let Context { errors, referenced, .. } = cx;
            let node_ports = matches!(
                object.spec.as_ref().and_then(|s| s.type_.as_deref()),
                Some("NodePort" | "LoadBalancer")
            );
            let mut entry = SvcEntry {
                object: object.clone(),
                keys: Vec::new(),
                errors,
                claims: Vec::new(),
                nodes: referenced.into_iter().collect(),
                node_ports,
            };
            for n in &entry.nodes {
                self.node_users.entry(n.clone()).or_default().insert(key.clone());
            }
            if !entry.errors.is_empty() {
                self.with_errors.insert(key.clone());
            }
            for (service, fields) in out {
                for (fe, field) in service.frontends.iter().zip(fields) {
                    let slot = (fe.addr, fe.port, fe.proto);
                    let claim = Claim {
                        key: service.key.clone(),
                        field,
                        frontend: format!("{}/{}", SocketAddr::new(fe.addr, fe.port), fe.proto),
                    };
                    let c = self.claims.entry(slot).or_default();
                    c.insert((key.clone(), entry.claims.len()), claim);
                    if c.len() == 2 {
                        self.contested += 1;
                    }
                    entry.claims.push(slot);
                }
                entry.keys.push(service.key.clone());
                new_keys.push(service.key.clone());
                if self.desired.services.get(&service.key) != Some(&service) {
                    self.changed.insert(service.key.clone());
                    self.desired.services.insert(service.key.clone(), service);
                }
            }
            self.services.insert(key, entry);
        }
        for k in old_keys {
            if !new_keys.contains(&k) {
                self.desired.services.remove(&k);
                self.changed.insert(k);
            }
        }
    }

    /// The health check of Service `key`, if it has one on this node.
    fn health_check(&self, svc: &KubeService) -> Option<HealthCheck> {
        let spec = svc.spec.as_ref()?;
        if spec.type_.as_deref() != Some("LoadBalancer")
            || spec.external_traffic_policy.as_deref() != Some("Local")
            || !self.owns(svc)
        {
            return None;
        }
        let port = u16::try_from(spec.health_check_node_port?).ok().filter(|p| *p != 0)?;
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let name = svc.metadata.name.as_deref().unwrap_or("");
        let mut local: HashSet<&str> = HashSet::new();
        for slice in self.slices_of.get(&(ns.to_string(), name.to_string())).into_iter().flatten() {
            for ep in &slice.1.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if ready && ep.node_name.as_deref() == Some(self.opts.node_name.as_str()) {
                    if let Some(a) = ep.addresses.first() {
                        local.insert(a);
                    }
                }
            }
        }
        Some(HealthCheck {
            service: ObjectKey::new(Some(ns), name),
            port,
            local_endpoints: local.len(),
        })
    }

    /// Whether the Service is this proxy's (service-proxy-name label).
    fn owns(&self, svc: &KubeService) -> bool {
        let labels = svc.metadata.labels.as_ref();
        labels.and_then(|l| l.get(PROXY_NAME_LABEL)).is_none_or(|p| *p == self.opts.proxy_name)
    }

    /// Whether the objects held translate without a problem.
    pub fn is_valid(&self) -> bool {
        self.with_errors.is_empty()
            && self.contested == 0
            && self.nodes_with_errors == 0
            && self.nodes.contains_key(&self.opts.node_name)
    }

    /// Ok, or every problem of the objects held, ordered as `translate`
    /// orders them: Nodes by name, this node, then each Service by namespace
    /// and name with its endpoints' problems and its duplicate frontends.
    pub fn check(&self) -> Result<(), ConfigErrors> {
        if self.is_valid() {
            return Ok(());
        }
        let mut errors = Vec::new();
        let mut names: Vec<&String> = self.nodes.keys().collect();
        names.sort();
        for n in names {
            errors.extend(self.nodes[n].errors.iter().cloned());
        }
        if !self.nodes.contains_key(&self.opts.node_name) {
            errors.push(ConfigError {
                object: ObjectRef {
                    kind: "Node",
                    namespace: None,
                    name: self.opts.node_name.clone(),
                },
                field: "metadata.name".into(),
                problem: Problem::UnknownNode { node: self.opts.node_name.clone() },
            });
        }
        for (key, entry) in &self.services {
            errors.extend(entry.errors.iter().cloned());
            for (seq, slot) in entry.claims.iter().enumerate() {
                let claims = &self.claims[slot];
                let (first_at, first) = claims.iter().next().expect("claimed");
                if *first_at == (key.clone(), seq) {
                    continue;
                }
                let me = &claims[&(key.clone(), seq)];
                errors.push(ConfigError {
                    object: service_ref(&entry.object),
                    field: me.field.clone(),
                    problem: Problem::DuplicateFrontend {
                        frontend: me.frontend.clone(),
                        other: first.key.clone(),
                    },
                });
            }
        }
        let mut seen = HashSet::new();
        errors.retain(|e| seen.insert(e.clone()));
        Err(ConfigErrors(errors))
    }

    /// The whole desired state, or every problem.
    pub fn result(&self) -> Result<Desired, ConfigErrors> {
        self.check().map(|()| self.desired.clone())
    }

    /// The desired state of the objects held (meaningful when valid).
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// Datapath services added, changed or removed since the last call.
    pub fn take_changed(&mut self) -> Vec<ServiceKey> {
        std::mem::take(&mut self.changed).into_iter().collect()
    }

    /// Datapath services changed and not yet taken.
    pub fn pending(&self) -> usize {
        self.changed.len()
    }

    /// The health checks (externalTrafficPolicy: Local LoadBalancers), if
    /// any changed since the last call.
    pub fn take_health_checks(&mut self) -> Option<Vec<HealthCheck>> {
        std::mem::take(&mut self.health_changed).then(|| self.health.values().cloned().collect())
    }
}

/// A Node's addresses and their problems.
fn index_node(name: &str, node: Arc<Node>) -> NodeEntry {
    let object = ObjectRef { kind: "Node", namespace: None, name: name.to_string() };
    let mut addrs = Vec::new();
    let mut errors = Vec::new();
    let list = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for (i, a) in list.into_iter().flatten().enumerate() {
        let internal = match a.type_.as_str() {
            "InternalIP" => true,
            "ExternalIP" => false,
            _ => continue,
        };
        match parse_ip(&a.address) {
            Ok(addr) => addrs.push(NodeAddr { addr, internal }),
            Err(problem) => errors.push(ConfigError {
                object: object.clone(),
                field: format!("status.addresses[{i}].address"),
                problem,
            }),
        }
    }
    NodeEntry { object: node, addrs, errors }
}

/// An address from a Node's status.addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NodeAddr {
    addr: IpAddr,
    internal: bool,
}

struct Context<'a> {
    opts: &'a TranslateOptions,
    errors: Vec<ConfigError>,
    /// `errors` as a set: a slice is read once per service port, its
    /// endpoints' problems are reported once.
    seen: HashSet<ConfigError>,
    /// Every node by name.
    nodes: &'a HashMap<String, NodeEntry>,
    /// Names of the nodes the endpoints read named (known or not).
    referenced: HashSet<String>,
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

/// The datapath service key of one port and family of a Service:
/// "namespace/name:port" for IPv4, "namespace/name:port/ipv6" for IPv6 (so
/// a single-stack IPv4 service turning dual-stack keeps its key and flows).
pub fn service_key(namespace: &str, name: &str, port_name: &str, v6: bool) -> ServiceKey {
    let key = ServiceKey::new(namespace, name, port_name);
    if v6 {
        ServiceKey(format!("{}{IPV6_KEY_SUFFIX}", key.0))
    } else {
        key
    }
}

fn service_ref(svc: &KubeService) -> ObjectRef {
    ObjectRef {
        kind: "Service",
        namespace: Some(svc.metadata.namespace.clone().unwrap_or_else(|| "default".into())),
        name: svc.metadata.name.clone().unwrap_or_default(),
    }
}

fn slice_ref(slice: &EndpointSlice) -> ObjectRef {
    ObjectRef {
        kind: "EndpointSlice",
        namespace: Some(slice.metadata.namespace.clone().unwrap_or_else(|| "default".into())),
        name: slice.metadata.name.clone().unwrap_or_default(),
    }
}

fn node_config(addrs: &[NodeAddr], opts: &TranslateOptions) -> NodeConfig {
    let internal = || addrs.iter().filter(|a| a.internal).map(|a| a.addr);
    NodeConfig {
        tunnel_v4: opts.tunnel_v4.or_else(|| {
            internal().find_map(|a| match a {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            })
        }),
        tunnel_v6: opts.tunnel_v6.or_else(|| {
            internal().find_map(|a| match a {
                IpAddr::V6(v6) => Some(v6),
                IpAddr::V4(_) => None,
            })
        }),
    }
}

fn parse_ip(s: &str) -> Result<IpAddr, Problem> {
    s.trim().parse().map_err(|_| Problem::BadIp { value: s.to_string() })
}

fn port_number(value: i32) -> Result<u16, Problem> {
    u16::try_from(value).ok().filter(|p| *p != 0).ok_or(Problem::BadPort { value })
}

/// IANA_SVC_NAME as the API server checks it: 1-15 lowercase letters,
/// digits and '-', at least one letter, no leading, trailing or double '-'.
fn valid_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn is_prime(n: u32) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

fn parse_proto(s: Option<&str>) -> Result<Option<Proto>, Problem> {
    match s.unwrap_or("TCP") {
        "TCP" => Ok(Some(Proto::Tcp)),
        "UDP" => Ok(Some(Proto::Udp)),
        // Valid Kubernetes, not carried by the datapath: skipped, not an error.
        "SCTP" => Ok(None),
        other => Err(Problem::BadValue { value: other.to_string(), expected: "TCP, UDP, SCTP" }),
    }
}

impl Context<'_> {
    fn error(&mut self, object: ObjectRef, field: impl Into<String>, problem: Problem) {
        let e = ConfigError { object, field: field.into(), problem };
        if self.seen.insert(e.clone()) {
            self.errors.push(e);
        }
    }

    /// The datapath services of one Kubernetes Service (one per port), each
    /// with the API field every frontend came from. Errors go to `self`.
    fn service(
        &mut self,
        svc: &KubeService,
        slices: &[&EndpointSlice],
        this_node: &[NodeAddr],
    ) -> Vec<(Service, Vec<String>)> {
        let object = service_ref(svc);
        let errors_before = self.errors.len();
        let labels = svc.metadata.labels.as_ref();
        if let Some(proxy) = labels.and_then(|l| l.get(PROXY_NAME_LABEL)) {
            if *proxy != self.opts.proxy_name {
                return Vec::new();
            }
        }
        let Some(spec) = svc.spec.as_ref() else {
            self.error(object, "spec", Problem::Missing);
            return Vec::new();
        };
        let svc_type = spec.type_.as_deref().unwrap_or("ClusterIP");
        let (node_port, load_balancer) = match svc_type {
            "ClusterIP" => (false, false),
            "NodePort" => (true, false),
            "LoadBalancer" => (true, true),
            "ExternalName" => return Vec::new(),
            other => {
                self.error(
                    object,
                    "spec.type",
                    Problem::BadValue {
                        value: other.to_string(),
                        expected: "ClusterIP, NodePort, LoadBalancer, ExternalName",
                    },
                );
                return Vec::new();
            }
        };
        if spec.cluster_ip.as_deref() == Some("None") {
            return Vec::new(); // headless: no virtual address to serve
        }

        // Address families the service exists in: NodePorts are opened on
        // this node's addresses of those families only.
        let mut v4 = false;
        let mut v6 = false;
        if let Some(families) = &spec.ip_families {
            for (i, f) in families.iter().enumerate() {
                match f.as_str() {
                    "IPv4" => v4 = true,
                    "IPv6" => v6 = true,
                    other => self.error(
                        object.clone(),
                        format!("spec.ipFamilies[{i}]"),
                        Problem::BadValue { value: other.to_string(), expected: "IPv4, IPv6" },
                    ),
                }
            }
        } else {
            let ips = spec.cluster_ips.iter().flatten().chain(spec.cluster_ip.iter());
            for ip in ips.filter_map(|s| s.parse::<IpAddr>().ok()) {
                v4 |= ip.is_ipv4();
                v6 |= ip.is_ipv6();
            }
        }
        if !v4 && !v6 {
            // Neither ipFamilies nor a clusterIP (a hand-written manifest):
            // whatever addresses the node has.
            (v4, v6) = (true, true);
        }

        let annotations = svc.metadata.annotations.as_ref();
        let mut maglev_size = DEFAULT_MAGLEV_SIZE;
        if let Some(v) = annotations.and_then(|a| a.get(MAGLEV_SIZE_ANNOTATION)) {
            match v.trim().parse::<u32>() {
                Ok(n) if is_prime(n) && n <= DEFAULT_MAGLEV_SIZE => maglev_size = n,
                _ => self.error(
                    object.clone(),
                    format!("metadata.annotations[{MAGLEV_SIZE_ANNOTATION}]"),
                    Problem::BadMaglevSize { value: v.clone(), max: DEFAULT_MAGLEV_SIZE },
                ),
            }
        }
        let mut encap = Encap::default();
        if let Some(v) = annotations.and_then(|a| a.get(ENCAP_ANNOTATION)) {
            match v.trim() {
                "geneve" => encap = Encap::Geneve,
                "ipip" => encap = Encap::Ipip,
                _ => self.error(
                    object.clone(),
                    format!("metadata.annotations[{ENCAP_ANNOTATION}]"),
                    Problem::BadValue { value: v.clone(), expected: "geneve, ipip" },
                ),
            }
        }

        let affinity = match spec.session_affinity.as_deref().unwrap_or("None") {
            "None" => None,
            "ClientIP" => {
                let timeout = spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds);
                match timeout {
                    None => Some(DEFAULT_AFFINITY_TIMEOUT_S),
                    Some(t) if (1..=MAX_AFFINITY_TIMEOUT_S).contains(&t) => Some(t as u32),
                    Some(t) => {
                        self.error(
                            object.clone(),
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                            Problem::BadAffinityTimeout { value: t },
                        );
                        None
                    }
                }
            }
            other => {
                self.error(
                    object.clone(),
                    "spec.sessionAffinity",
                    Problem::BadValue { value: other.to_string(), expected: "None, ClientIP" },
                );
                None
            }
        }
        .map(|s| Affinity { timeout: Duration::from_secs(u64::from(s)) });

        // externalTrafficPolicy: Local keeps only this node's endpoints for
        // NodePort and LoadBalancer traffic (externalIPs included, as in
        // kube-proxy). The healthCheckNodePort that lets an external load
        // balancer avoid nodes without endpoints: see [`HealthCheck`].
        let local = match spec.external_traffic_policy.as_deref() {
            None | Some("Cluster") => false,
            Some("Local") => node_port,
            Some(other) => {
                self.error(
                    object.clone(),
                    "spec.externalTrafficPolicy",
                    Problem::BadValue { value: other.to_string(), expected: "Cluster, Local" },
                );
                false
            }
        };

        // loadBalancerSourceRanges restrict LoadBalancer traffic; the model
        // holds one list per service, applied to all its frontends.
        let mut source_ranges = Vec::new();
        if load_balancer {
            for (i, r) in spec.load_balancer_source_ranges.iter().flatten().enumerate() {
                match r.trim().parse::<Cidr>() {
                    Ok(c) => source_ranges.push(c),
                    Err(reason) => self.error(
                        object.clone(),
                        format!("spec.loadBalancerSourceRanges[{i}]"),
                        Problem::BadCidr { value: r.clone(), reason },
                    ),
                }
            }
            source_ranges.sort();
            source_ranges.dedup();
        }

        // Service-wide frontend addresses (the port comes per service port).
        let mut addrs: Vec<(IpAddr, FrontendKind, String)> = Vec::new();
        if load_balancer {
            let ingress = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref());
            for (i, ing) in ingress.into_iter().flatten().enumerate() {
                // ipMode Proxy: the load balancer delivers to the node with its
                // own address as destination, so the VIP is not ours to serve.
                if ing.ip_mode.as_deref() == Some("Proxy") {
                    continue;
                }
                let Some(ip) = &ing.ip else { continue }; // hostname-only
                let field = format!("status.loadBalancer.ingress[{i}].ip");
                match parse_ip(ip) {
                    Ok(a) => addrs.push((a, FrontendKind::LoadBalancer, field)),
                    Err(p) => self.error(object.clone(), field, p),
                }
            }
        }
        for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
            let field = format!("spec.externalIPs[{i}]");
            match parse_ip(ip) {
                Ok(a) if self.opts.external_ip_cidrs.iter().any(|c| c.contains(a)) => {
                    addrs.push((a, FrontendKind::ExternalIp, field))
                }
                Ok(addr) => {
                    let allowed = if self.opts.external_ip_cidrs.is_empty() {
                        "none".to_string()
                    } else {
                        let list: Vec<String> =
                            self.opts.external_ip_cidrs.iter().map(|c| c.to_string()).collect();
                        list.join(", ")
                    };
                    self.error(
                        object.clone(),
                        field,
                        Problem::ExternalIpNotAllowed { addr, allowed },
                    )
                }
                Err(p) => self.error(object.clone(), field, p),
            }
        }

        let ns = object.namespace.clone().unwrap_or_default();
        let mut out = Vec::new();
        for (i, port) in spec.ports.iter().flatten().enumerate() {
            let port_name = port.name.as_deref().unwrap_or("");
            let proto = match parse_proto(port.protocol.as_deref()) {
                Ok(Some(p)) => p,
                Ok(None) => {
                    tracing::warn!(service = %object, port = i, "SCTP port skipped: not carried by the datapath");
                    continue;
                }
                Err(p) => {
                    self.error(object.clone(), format!("spec.ports[{i}].protocol"), p);
                    continue;
                }
            };
            let svc_port = match port_number(port.port) {
                Ok(p) => p,
                Err(p) => {
                    self.error(object.clone(), format!("spec.ports[{i}].port"), p);
                    continue;
                }
            };
            let Some(target) = self.target_port(&object, i, port) else {
                continue;
            };

            let mut frontends = Vec::new();
            let mut fields = Vec::new();
            let mut push = |fe: Frontend, field: String| {
                if !frontends
                    .iter()
                    .any(|f: &Frontend| (f.addr, f.port, f.proto) == (fe.addr, fe.port, fe.proto))
                {
                    frontends.push(fe);
                    fields.push(field);
                }
            };
            for (addr, kind, field) in &addrs {
                let fe = Frontend { addr: *addr, port: svc_port, proto, kind: *kind };
                push(fe, field.clone());
            }
            if node_port {
                if let Some(np) = port.node_port {
                    match port_number(np) {
                        Ok(np) => {
                            for a in this_node {
                                if (a.addr.is_ipv4() && v4) || (a.addr.is_ipv6() && v6) {
                                    let fe = Frontend {
                                        addr: a.addr,
                                        port: np,
                                        proto,
                                        kind: FrontendKind::NodePort,
                                    };
                                    push(fe, format!("spec.ports[{i}].nodePort"));
                                }
                            }
                        }
                        Err(p) => {
                            self.error(object.clone(), format!("spec.ports[{i}].nodePort"), p)
                        }
                    }
                }
            }
            if frontends.is_empty() {
                continue; // ClusterIP only: not the XDP path's business
            }

            let backends = self.backends(slices, port_name, proto, &target, local);
            // One datapath service per address family: a packet keeps its
            // family end to end (no NAT46/64), so an IPv4 frontend may only
            // pick IPv4 endpoints. A Maglev table over both families would
            // send half of the flows to endpoints the datapath must drop.
            for v6 in [false, true] {
                let (fes, fields): (Vec<Frontend>, Vec<String>) = frontends
                    .iter()
                    .zip(&fields)
                    .filter(|(f, _)| f.addr.is_ipv6() == v6)
                    .map(|(f, field)| (*f, field.clone()))
                    .unzip();
                if fes.is_empty() {
                    continue;
                }
                let mut service = Service::new(service_key(&ns, &object.name, port_name, v6));
                service.frontends = fes;
                service.backends =
                    backends.iter().filter(|b| b.addr.is_ipv6() == v6).cloned().collect();
                service.affinity = affinity;
                service.maglev_size = maglev_size;
                service.encap = encap;
                service.source_ranges = source_ranges.clone();
                out.push((service, fields));
            }
        }
        if self.errors.len() > errors_before {
            return Vec::new();
        }
        out
    }

    fn target_port(&mut self, object: &ObjectRef, i: usize, port: &ServicePort) -> Option<Target> {
        let field = format!("spec.ports[{i}].targetPort");
        match &port.target_port {
            // Unset: the same as the service port (checked by the caller).
            None => Some(Target::Number(u16::try_from(port.port).unwrap_or(0))),
            Some(IntOrString::Int(n)) => match port_number(*n) {
                Ok(p) => Some(Target::Number(p)),
                Err(p) => {
                    self.error(object.clone(), field, p);
                    None
                }
            },
            Some(IntOrString::String(s)) => {
                if let Ok(n) = s.parse::<i32>() {
                    // "8080" written as a string: the API server takes it as a number.
                    return match port_number(n) {
                        Ok(p) => Some(Target::Number(p)),
                        Err(p) => {
                            self.error(object.clone(), field, p);
                            None
                        }
                    };
                }
                if valid_port_name(s) {
                    Some(Target::Named(s.clone()))
                } else {
                    self.error(object.clone(), field, Problem::BadPortName { value: s.clone() });
                    None
                }
            }
        }
    }

    /// The backends of one service port, from its EndpointSlices, selected
    /// with kube-proxy's rules, per address family:
    /// - ready endpoints take new flows;
    /// - if none is ready, serving-and-terminating endpoints do instead
    ///   (so a rolling restart of every pod does not black-hole traffic);
    /// - other terminating endpoints stay as `Terminating`: they keep their
    ///   established flows and get no new ones;
    /// - endpoints neither ready nor terminating are left out.
    ///
    /// With `local` (externalTrafficPolicy: Local) only this node's
    /// endpoints are considered at all.
    fn backends(
        &mut self,
        slices: &[&EndpointSlice],
        port_name: &str,
        proto: Proto,
        target: &Target,
        local: bool,
    ) -> Vec<Backend> {
        let mut candidates = Vec::new();
        for slice in slices {
            self.slice_candidates(slice, port_name, proto, target, &mut candidates);
        }
        if local {
            candidates.retain(|c| c.local);
        }

        let mut chosen: BTreeMap<String, Backend> = BTreeMap::new();
        for v6 in [false, true] {
            let family: Vec<&Candidate> =
                candidates.iter().filter(|c| c.addr.is_ipv6() == v6).collect();
            let any_ready = family.iter().any(|c| c.ready);
            for c in family {
                let state = if c.ready || (!any_ready && c.serving && c.terminating) {
                    BackendState::Active
                } else if c.terminating {
                    BackendState::Terminating
                } else {
                    continue;
                };
                let name = SocketAddr::new(c.addr, c.port).to_string();
                let backend = Backend {
                    name: name.clone(),
                    addr: c.addr,
                    port: c.port,
                    node: c.node,
                    weight: 1,
                    state,
                };
                // The same endpoint in two slices (during a slice split):
                // the more usable entry wins.
                let better = match chosen.get(&name) {
                    None => true,
                    Some(old) => {
                        old.state == BackendState::Terminating && state == BackendState::Active
                    }
                };
                if better {
                    chosen.insert(name, backend);
                }
            }
        }
        chosen.into_values().collect()
    }

    fn slice_candidates(
        &mut self,
        slice: &EndpointSlice,
        port_name: &str,
        proto: Proto,
        target: &Target,
        out: &mut Vec<Candidate>,
    ) {
        let object = slice_ref(slice);
        let v6 = match slice.address_type.as_str() {
            "IPv4" => false,
            "IPv6" => true,
            "FQDN" => return, // not an address the datapath can reach
            other => {
                self.error(
                    object,
                    "addressType",
                    Problem::BadValue { value: other.to_string(), expected: "IPv4, IPv6, FQDN" },
                );
                return;
            }
        };
        // The slice port carrying this service port: same name and protocol.
        // Its number is the resolved targetPort (named ports resolved per pod).
        let ports = slice.ports.iter().flatten().enumerate();
        let Some((j, sp)) = ports.into_iter().find(|(_, p)| {
            p.name.as_deref().unwrap_or("") == port_name
                && parse_proto(p.protocol.as_deref()).ok().flatten() == Some(proto)
        }) else {
            return;
        };
        let port = match (sp.port, target) {
            (Some(n), _) => match port_number(n) {
                Ok(p) => p,
                Err(p) => {
                    self.error(object, format!("ports[{j}].port"), p);
                    return;
                }
            },
            (None, Target::Number(n)) => *n,
            (None, Target::Named(name)) => {
                self.error(
                    object,
                    format!("ports[{j}].port"),
                    Problem::UnresolvedTargetPort { target: name.clone() },
                );
                return;
            }
        };

        for (k, ep) in slice.endpoints.iter().enumerate() {
            // Consumers use the first address (the API documents the rest as unused).
            let Some(first) = ep.addresses.first() else {
                self.error(object.clone(), format!("endpoints[{k}].addresses"), Problem::Missing);
                continue;
            };
            let addr = match parse_ip(first) {
                Ok(a) if a.is_ipv6() == v6 => a,
                Ok(addr) => {
                    self.error(
                        object.clone(),
                        format!("endpoints[{k}].addresses[0]"),
                        Problem::FamilyMismatch { addr, address_type: slice.address_type.clone() },
                    );
                    continue;
                }
                Err(p) => {
                    self.error(object.clone(), format!("endpoints[{k}].addresses[0]"), p);
                    continue;
                }
            };
            let field = format!("endpoints[{k}].nodeName");
            let Some(node_name) = ep.node_name.as_deref() else {
                self.error(object.clone(), field, Problem::Missing);
                continue;
            };
            if !self.referenced.contains(node_name) {
                self.referenced.insert(node_name.to_string());
            }
            let Some(node_addrs) = self.nodes.get(node_name).map(|n| &n.addrs) else {
                let problem = Problem::UnknownNode { node: node_name.to_string() };
                self.error(object.clone(), field, problem);
                continue;
            };
            let internal = || node_addrs.iter().filter(|a| a.internal).map(|a| a.addr);
            let node = internal().find(|a| a.is_ipv6() == v6).or_else(|| internal().next());
            let Some(node) = node else {
                let problem = Problem::NodeWithoutAddress { node: node_name.to_string() };
                self.error(object.clone(), field, problem);
                continue;
            };
            // Unknown (nil) conditions: ready; serving follows ready.
            let cond = ep.conditions.as_ref();
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            out.push(Candidate {
                addr,
                port,
                node,
                local: node_name == self.opts.node_name,
                ready,
                serving,
                terminating,
            });
        }
    }
}

/// A service port's targetPort: a number, or a container port name resolved
/// per endpoint through the EndpointSlice's ports.
enum Target {
    Number(u16),
    Named(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..30).filter(|n| is_prime(*n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(DEFAULT_MAGLEV_SIZE));
        assert!(!is_prime(16383));
    }

    #[test]
    fn port_names() {
        for ok in ["http", "h2c", "web-8080", "a"] {
            assert!(valid_port_name(ok), "{ok}");
        }
        for bad in ["", "8080", "HTTP", "-web", "web-", "a--b", "sixteen-chars-xx", "dns_tcp"] {
            assert!(!valid_port_name(bad), "{bad}");
        }
    }

    #[test]
    fn error_display_names_object_and_field() {
        let e = ConfigError {
            object: ObjectRef {
                kind: "Service",
                namespace: Some("default".into()),
                name: "web".into(),
            },
            field: "spec.ports[1].targetPort".into(),
            problem: Problem::BadPort { value: 0 },
        };
        assert_eq!(
            e.to_string(),
            "Service default/web: spec.ports[1].targetPort: 0 is not a port number (1-65535)"
        );
    }
}
