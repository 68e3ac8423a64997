//! Translates Kubernetes Services, EndpointSlices and Nodes into the
//! datapath's desired state ([`lb::model::Desired`]), with kube-proxy
//! semantics: the one translation path for every source. By concern:
//! - `services`: kube-proxy's Service rules (type, families, ports,
//!   frontends, affinity, traffic policy, annotations, proxy name);
//! - `endpoints`: EndpointSlices to backends (ready/serving/terminating,
//!   externalTrafficPolicy: Local);
//! - `nodes`: node addresses and pod ranges, this node's settings, NodePort
//!   addresses, the pod network ([`PodNetwork`]);
//! - `tracker`: which Services a change touches (incremental updates);
//! - `claims`: a frontend belongs to one service port;
//! - `errors`: problems naming object and field.
//!
//! [`Translator`] (here) ties them together: it takes [`Changes`] from a
//! source, re-translates what they touch and keeps the desired state and the
//! datapath services changed since it was last asked. [`translate`] is the
//! same code fed a whole [`Cluster`].
//!
//! Bad configuration: every problem found is collected into [`ConfigErrors`]
//! (each naming the object and the field). By default a configuration with a
//! problem is rejected whole and nothing of it is applied (manifest files);
//! with [`TranslateOptions::leave_out_invalid`] (the Kubernetes API) the bad
//! objects or parts are left out and the rest is applied, so one bad object
//! never blocks the valid ones.
//!
//! What becomes a datapath service: each port and address family of each
//! Service this proxy owns (see [`service_key`]), with the frontends
//! reachable from outside the cluster — LoadBalancer ingress IPs,
//! externalIPs, and the NodePort on this node's addresses — and those
//! translated at the socket for clients inside: its ClusterIPs and the same
//! external addresses (see `services`).
mod claims;
mod endpoints;
mod errors;
mod hostports;
mod nodes;
mod services;
mod tracker;

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb::model::{Cidr, Desired, NoEndpoints, Proto, Service, ServiceKey};

use self::{
    claims::{Claims, Slot},
    errors::ErrorList,
    services::PortService,
    tracker::Tracker,
};
pub use self::{
    endpoints::SERVICE_NAME_LABEL,
    errors::{ConfigError, ConfigErrors, ObjectRef, Problem},
    hostports::key as host_port_key,
    nodes::PodNetwork,
    services::{
        service_key, valid_maglev_size, CLUSTER_KEY_SUFFIX, DEFAULT_AFFINITY_TIMEOUT_S,
        DEFAULT_PROXY_NAME, ENCAP_ANNOTATION, IPV6_KEY_SUFFIX, LOCAL_KEY_SUFFIX,
        MAGLEV_SIZE_ANNOTATION, MAX_AFFINITY_TIMEOUT_S, NO_ENDPOINTS_ANNOTATION, PROXY_NAME_LABEL,
    },
};
use crate::cluster::{Changes, Cluster, ObjectKey};

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
    /// How problems are treated. false (manifest files, `xlb validate`): a
    /// configuration with any problem is rejected whole. true (the
    /// Kubernetes API, where any namespace user can create a bad object):
    /// the invalid object, or the invalid part of it (one externalIP, one
    /// port, one endpoint, the later claim of a contested frontend), is left
    /// out and everything valid is applied; the problems are still reported
    /// ([`Translator::problems`]). A Service whose service-wide settings are
    /// invalid (type, families, annotations, affinity, traffic policy,
    /// source ranges) is left out whole: guessing them could open it wider
    /// than meant.
    pub leave_out_invalid: bool,
    /// What services without a usable endpoint do unless their
    /// `xlb.io/no-endpoints` annotation says otherwise.
    pub no_endpoints: NoEndpoints,
    /// The Maglev table size of services without an `xlb.io/maglev-size`
    /// annotation ([`lb::model::MAGLEV_SIZE_AUTO`]: sized by their
    /// endpoints). Cluster-wide: every node must build the same tables.
    pub maglev_size: u32,
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
            leave_out_invalid: false,
            no_endpoints: NoEndpoints::Reject,
            maglev_size: lb::model::MAGLEV_SIZE_AUTO,
        }
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

/// The healthCheckNodePort of a Service with externalTrafficPolicy: Local,
/// and how many ready endpoints it has on this node (kube-proxy's answer:
/// 200 when there is one, 503 otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub service: ObjectKey,
    pub port: u16,
    pub local_endpoints: usize,
}

/// What one Kubernetes Service translated to.
#[derive(Debug)]
struct Translated {
    /// The Service, as errors name it.
    object: ObjectRef,
    /// Datapath service keys it produced, in order.
    keys: Vec<ServiceKey>,
    /// Its own problems (fields of the Service, endpoints of its slices).
    errors: Vec<ConfigError>,
    /// Frontends claimed, in translation order.
    claims: Vec<Slot>,
}

/// Incremental translation: the tracker keeps the objects and says what
/// a change touches; each touched Service is translated again and its part
/// of the desired state replaced. The cost of an update grows with the
/// change, not with the cluster.
///
/// Validation stays whole-configuration: while any object has a problem,
/// [`Translator::result`]/[`Translator::check`] report every error (in the
/// order `translate` always used) and the changed keys keep accumulating, so
/// the first valid state afterwards carries all of them.
#[derive(Debug)]
pub struct Translator {
    opts: TranslateOptions,
    tracker: Tracker,
    /// Every Service held, by key.
    translated: BTreeMap<ObjectKey, Translated>,
    claims: Claims,
    /// Services with a problem of their own.
    with_errors: BTreeSet<ObjectKey>,
    health: BTreeMap<ObjectKey, HealthCheck>,
    health_changed: bool,
    desired: Desired,
    /// Datapath services changed since the last [`Translator::take_changed`].
    changed: BTreeSet<ServiceKey>,
}

impl Translator {
    pub fn new(opts: TranslateOptions) -> Self {
        Translator {
            tracker: Tracker::new(&opts.node_name),
            opts,
            translated: BTreeMap::new(),
            claims: Claims::default(),
            with_errors: BTreeSet::new(),
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
        self.tracker.counts()
    }

    /// Takes in a source's changes and re-translates what they touch.
    pub fn update(&mut self, changes: Changes) {
        let touched = self.tracker.update(changes);
        if touched.this_node {
            self.desired.node = self.tracker.nodes().config(&self.opts);
        }
        for key in touched.services {
            self.retranslate(key);
        }
        for key in touched.pods {
            self.retranslate_pod(key);
        }
    }

    /// Replaces what Pod `key`'s host ports contribute. Pods are filed in
    /// the same tables as Services under "pod/NAME" (a Service name holds
    /// no '/'), so their frontends are claimed against the Services'.
    fn retranslate_pod(&mut self, key: ObjectKey) {
        let filed = ObjectKey { name: format!("pod/{}", key.name), ..key.clone() };
        let old_keys = self.forget(&filed);
        let mut new_keys = Vec::new();
        if let Some(pod) = self.tracker.pod(&key).cloned() {
            let mut errors = ErrorList::default();
            let out = hostports::translate(&pod, &self.opts, self.tracker.nodes(), &mut errors);
            new_keys = self.record(filed, ObjectRef::of(&*pod), out, errors.into_vec());
        }
        self.drop_gone(old_keys, &new_keys);
    }

    /// Replaces what Service `key` contributes with the translation of the
    /// Service now held under it (none: it is gone).
    fn retranslate(&mut self, key: ObjectKey) {
        let old_keys = self.forget(&key);
        let svc = self.tracker.service(&key).cloned();
        let health = svc
            .as_ref()
            .and_then(|svc| services::health_check(svc, &self.tracker.slices_of(svc), &self.opts));
        if self.health.get(&key) != health.as_ref() {
            match health {
                Some(h) => self.health.insert(key.clone(), h),
                None => self.health.remove(&key),
            };
            self.health_changed = true;
        }
        let mut new_keys = Vec::new();
        if let Some(svc) = svc {
            let mut errors = ErrorList::default();
            let inputs = services::Inputs {
                opts: &self.opts,
                slices: &self.tracker.slices_of(&svc),
                nodes: self.tracker.nodes(),
            };
            let out = services::translate(&svc, &inputs, &mut errors);
            let object = ObjectRef::of(&*svc);
            new_keys = self.record(key, object, out, errors.into_vec());
        }
        self.drop_gone(old_keys, &new_keys);
    }

    /// Removes the datapath services an object produced before (`old`) and
    /// no longer does.
    fn drop_gone(&mut self, old: Vec<ServiceKey>, new: &[ServiceKey]) {
        for k in old {
            if !new.contains(&k) {
                self.desired.services.remove(&k);
                self.changed.insert(k);
            }
        }
    }

    /// Drops what Service `key` translated to (its claims and errors; its
    /// datapath services stay until replaced); the keys it had produced.
    fn forget(&mut self, key: &ObjectKey) -> Vec<ServiceKey> {
        let Some(old) = self.translated.remove(key) else {
            return Vec::new();
        };
        self.with_errors.remove(key);
        for slot in &old.claims {
            self.changed.extend(self.claims.contenders(slot).cloned());
        }
        self.claims.release(key, &old.claims);
        old.keys
    }

    /// Files Service `key`'s translation: claims its frontends and puts its
    /// datapath services in the desired state. Returns their keys.
    fn record(
        &mut self,
        key: ObjectKey,
        object: ObjectRef,
        out: Vec<PortService>,
        errors: Vec<ConfigError>,
    ) -> Vec<ServiceKey> {
        // Kept for every Service: sized exactly (a pushed-to Vec keeps room
        // for four).
        let keys = Vec::with_capacity(out.len());
        let mut entry = Translated { object, keys, errors, claims: Vec::new() };
        if !entry.errors.is_empty() {
            self.with_errors.insert(key.clone());
        }
        for PortService { service, fields, sock_fields } in out {
            let claimed = service.frontends.iter().zip(fields.into_iter().map(Some));
            let sock = service.sock_frontends.iter().zip(sock_fields);
            for (fe, field) in claimed.chain(sock) {
                // Copies of packet frontends are claimed as those.
                let Some(field) = field else { continue };
                let seq = entry.claims.len();
                let slot = self.claims.claim(&key, seq, &service.key, fe, field);
                // A contested frontend may move between its claimants.
                self.changed.extend(self.claims.contenders(&slot).cloned());
                entry.claims.push(slot);
            }
            entry.keys.push(service.key.clone());
            if self.desired.services.get(&service.key) != Some(&service) {
                self.changed.insert(service.key.clone());
                self.desired.services.insert(service.key.clone(), service);
            }
        }
        entry.claims.shrink_to_fit();
        let keys = entry.keys.clone();
        self.translated.insert(key, entry);
        keys
    }

    /// Whether the objects held translate without a problem.
    fn is_clean(&self) -> bool {
        self.with_errors.is_empty()
            && self.claims.are_clear()
            && self.tracker.nodes().are_valid()
            && self.tracker.nodes().contains(&self.opts.node_name)
    }

    /// Whether the desired state may be applied: no problem at all, or, when
    /// invalid parts are left out, this node's Node object is known (its
    /// addresses are the NodePort frontends and the tunnel source).
    pub fn is_valid(&self) -> bool {
        if self.opts.leave_out_invalid {
            self.tracker.nodes().contains(&self.opts.node_name)
        } else {
            self.is_clean()
        }
    }

    /// Ok when the desired state may be applied ([`Translator::is_valid`]),
    /// else every problem.
    pub fn check(&self) -> Result<(), ConfigErrors> {
        if self.is_valid() {
            return Ok(());
        }
        Err(ConfigErrors(self.problems()))
    }

    /// Every problem of the objects held (left out or blocking), ordered as
    /// `translate` orders them: Nodes by name, this node, then each Service
    /// by namespace and name with its endpoints' problems and its duplicate
    /// frontends. Only Services with problems are visited while no frontend
    /// is contested.
    pub fn problems(&self) -> Vec<ConfigError> {
        if self.is_clean() {
            return Vec::new();
        }
        let mut errors = self.tracker.nodes().errors();
        if !self.tracker.nodes().contains(&self.opts.node_name) {
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
        let mut visit = |key: &ObjectKey, entry: &Translated| {
            errors.extend(entry.errors.iter().cloned());
            errors.extend(self.claims.duplicates(key, &entry.object, &entry.claims));
        };
        if self.claims.are_clear() {
            for key in &self.with_errors {
                visit(key, &self.translated[key]);
            }
        } else {
            for (key, entry) in &self.translated {
                visit(key, entry);
            }
        }
        let mut seen = std::collections::HashSet::new();
        errors.retain(|e| seen.insert(e.clone()));
        errors
    }

    /// The whole desired state, or every problem.
    pub fn result(&self) -> Result<Desired, ConfigErrors> {
        self.check().map(|()| self.desired().into_owned())
    }

    /// The pod network the Nodes describe (every node's ranges, the tunnel
    /// peers, this node's ranges).
    pub fn pod_network(&self) -> PodNetwork {
        self.tracker.nodes().pod_network(&self.opts.node_name)
    }

    /// Moves whenever [`Translator::pod_network`] may have changed.
    pub fn pod_network_generation(&self) -> u64 {
        self.tracker.nodes().network_generation()
    }

    /// The desired state of the objects held (meaningful when valid). With
    /// frontends claimed twice (only possible when invalid parts are left
    /// out), each goes to its first claim only.
    pub fn desired(&self) -> Cow<'_, Desired> {
        if self.claims.are_clear() {
            return Cow::Borrowed(&self.desired);
        }
        let mut d = self.desired.clone();
        for svc in d.services.values_mut() {
            self.keep_won_frontends(svc);
        }
        Cow::Owned(d)
    }

    /// Datapath service `key` of the desired state, as [`Translator::desired`] has it.
    pub fn service(&self, key: &ServiceKey) -> Option<Cow<'_, Service>> {
        let svc = self.desired.services.get(key)?;
        if self.claims.are_clear() {
            return Some(Cow::Borrowed(svc));
        }
        let mut svc = svc.clone();
        self.keep_won_frontends(&mut svc);
        Some(Cow::Owned(svc))
    }

    /// Leaves out the frontends of `svc` another service port claimed first.
    fn keep_won_frontends(&self, svc: &mut Service) {
        let key = svc.key.clone();
        svc.frontends.retain(|fe| self.claims.winner(&(fe.addr, fe.port, fe.proto)) == Some(&key));
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

fn parse_ip(s: &str) -> Result<IpAddr, Problem> {
    s.trim().parse().map_err(|_| Problem::BadIp { value: s.to_string() })
}

fn port_number(value: i32) -> Result<u16, Problem> {
    u16::try_from(value).ok().filter(|p| *p != 0).ok_or(Problem::BadPort { value })
}

/// A port's protocol: TCP (the default), UDP or SCTP.
fn parse_proto(s: Option<&str>) -> Result<Proto, Problem> {
    match s.unwrap_or("TCP") {
        "TCP" => Ok(Proto::Tcp),
        "UDP" => Ok(Proto::Udp),
        "SCTP" => Ok(Proto::Sctp),
        other => Err(Problem::BadValue { value: other.to_string(), expected: "TCP, UDP, SCTP" }),
    }
}
