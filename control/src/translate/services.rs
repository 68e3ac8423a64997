//! kube-proxy's Service rules: which Services are this proxy's (the
//! service-proxy-name label), their type, address families, ports and
//! targetPorts, the frontends each type opens, session affinity, the traffic
//! policies, loadBalancerSourceRanges and xlb's annotations. One Service
//! becomes one datapath service per port and address family
//! ([`service_key`]), and a second one when its traffic policies give
//! in-cluster clients other endpoints than outside ones. Backends come from
//! [`super::endpoints`], node addresses from [`super::nodes`];
//! [`super::Translator`] calls [`translate`] for each Service a change
//! touches.
//!
//! Two kinds of frontends, as the datapath has two places that answer:
//! - packet frontends (XDP on the NIC, tc), reached from outside:
//!   LoadBalancer ingress IPs, externalIPs inside `--external-ip-cidr`, the
//!   NodePort on this node's addresses; their endpoints follow
//!   externalTrafficPolicy;
//! - socket frontends (the cgroup socket programs, tc's fallback), reached
//!   from inside the node: the ClusterIPs, whose endpoints follow
//!   internalTrafficPolicy, and every packet frontend again, NodePorts on
//!   loopback too, whose endpoints are all of them (kube-proxy sends
//!   in-cluster traffic to an externalTrafficPolicy: Local service's
//!   external addresses to every endpoint: its "short circuit").
//!
//! ClusterIPs are never packet frontends: XDP does not answer them from
//! outside the cluster.
use std::{net::IpAddr, time::Duration};

use k8s_openapi::{
    api::core::v1::{Service as KubeService, ServicePort, ServiceSpec},
    apimachinery::pkg::util::intstr::IntOrString,
};
use lb::model::{
    Affinity, Backend, Cidr, Encap, Frontend, FrontendKind, NoEndpoints, Proto, Service,
    ServiceKey, MAX_MAGLEV_SIZE,
};

use super::{
    endpoints::{self, BackendSets, Endpoints, PortQuery, Target},
    errors::{ErrorList, ObjectRef, Problem},
    nodes::{self, Families, Nodes},
    parse_ip, parse_proto, port_number, HealthCheck, TranslateOptions,
};
use crate::cluster::{EndpointSlice, ObjectKey};

/// Service label naming the proxy that implements it (KEP-2447); services
/// labelled with another name are left to that proxy.
pub const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Service annotation: the Maglev table size, a prime <= 16381.
pub const MAGLEV_SIZE_ANNOTATION: &str = "xlb.io/maglev-size";
/// Service annotation: how packets reach the backend node, `geneve` or `ipip`.
pub const ENCAP_ANNOTATION: &str = "xlb.io/encap";
/// Service annotation: what a service without a usable endpoint does with a
/// packet, `reject` (TCP RST / ICMP unreachable, kube-proxy's behaviour) or
/// `drop`; unset: `--no-endpoints` (default reject).
pub const NO_ENDPOINTS_ANNOTATION: &str = "xlb.io/no-endpoints";
/// Suffix of the key of a service port's IPv6 half (see [`service_key`]).
pub const IPV6_KEY_SUFFIX: &str = "/ipv6";
/// Suffix of the key of a service port's second datapath service when its
/// traffic policies split it: the one serving every endpoint ("/cluster")
/// or this node's ("/local"), beside the key that holds the packet
/// frontends.
pub const CLUSTER_KEY_SUFFIX: &str = "/cluster";
pub const LOCAL_KEY_SUFFIX: &str = "/local";
/// Proxy name xlb answers to by default.
pub const DEFAULT_PROXY_NAME: &str = "xlb";
/// sessionAffinityConfig.clientIP.timeoutSeconds when unset (Kubernetes' default).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10800;
/// Largest sessionAffinity timeout the API server admits.
pub const MAX_AFFINITY_TIMEOUT_S: i32 = 86400;

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

/// Whether the Service is this proxy's (service-proxy-name label): unlabelled
/// Services always are.
pub(super) fn owns(svc: &KubeService, proxy_name: &str) -> bool {
    let labels = svc.metadata.labels.as_ref();
    labels.and_then(|l| l.get(PROXY_NAME_LABEL)).is_none_or(|p| p == proxy_name)
}

/// NodePort or LoadBalancer: its frontends include this node's addresses.
pub(super) fn opens_node_ports(svc: &KubeService) -> bool {
    let ty = svc.spec.as_ref().and_then(|s| s.type_.as_deref());
    matches!(ty, Some("NodePort" | "LoadBalancer"))
}

/// What translating one Service reads besides the Service.
pub(super) struct Inputs<'a> {
    pub(super) opts: &'a TranslateOptions,
    /// Its EndpointSlices, by name.
    pub(super) slices: &'a [&'a EndpointSlice],
    pub(super) nodes: &'a Nodes,
}

/// One datapath service, with the API field each of its frontends came from
/// (for duplicate-frontend errors): `fields` pairs with `service.frontends`,
/// `sock_fields` with `service.sock_frontends` (None: an in-cluster copy of
/// a packet frontend, claimed as that one).
pub(super) struct PortService {
    pub(super) service: Service,
    pub(super) fields: Vec<String>,
    pub(super) sock_fields: Vec<Option<String>>,
}

/// The datapath services of one Kubernetes Service (one per port and address
/// family). Its problems, and those of its slices, go to `errors`. A Service
/// with a problem in its service-wide settings translates to nothing; one
/// with problems only in parts (a frontend address, a port, an endpoint)
/// translates to nothing too, unless `leave_out_invalid`: then to its valid
/// parts.
pub(super) fn translate(
    svc: &KubeService,
    inputs: &Inputs,
    errors: &mut ErrorList,
) -> Vec<PortService> {
    if !owns(svc, &inputs.opts.proxy_name) {
        return Vec::new();
    }
    let errors_before = errors.len();
    let mut cx = Cx { object: ObjectRef::of(svc), opts: inputs.opts, errors };
    let Some(spec) = svc.spec.as_ref() else {
        cx.error("spec", Problem::Missing);
        return Vec::new();
    };
    let Some(ty) = cx.service_type(spec) else {
        return Vec::new();
    };
    if spec.cluster_ip.as_deref() == Some("None") {
        return Vec::new(); // headless: no virtual address to serve
    }
    let families = cx.families(spec);
    let settings = cx.settings(svc, spec, ty);
    // Every problem is still collected, for the report.
    let settings_bad = cx.errors.len() > errors_before;
    let addrs = cx.frontend_addrs(svc, spec, ty);
    let cluster_ips = cx.cluster_ips(spec);
    let this_node = inputs.nodes.addrs(&inputs.opts.node_name).unwrap_or_default();
    let node_ports = ty.node_port.then(|| nodes::node_port_addrs(this_node, families));
    let endpoints =
        Endpoints { slices: inputs.slices, nodes: inputs.nodes, this_node: &inputs.opts.node_name };
    let ns = cx.object.namespace.clone().unwrap_or_default();
    let mut out = Vec::new();
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        let Some(p) = cx.port(i, port) else { continue };
        let (frontends, fields) = cx.port_frontends(i, &p, &addrs, node_ports.as_deref());
        let sock = sock_frontends(&p, &cluster_ips, &frontends, families, &settings);
        if frontends.is_empty() && sock.is_empty() {
            continue;
        }
        let query = PortQuery { name: p.name, proto: p.proto, target: &p.target };
        let backends = endpoints.backends(&query, cx.errors);
        let key = |v6| service_key(&ns, &cx.object.name, p.name, v6);
        let port = PortFrontends { packet: &frontends, fields: &fields, sock: &sock };
        out.extend(by_family(key, &port, &backends, &settings));
    }
    if settings_bad || (cx.errors.len() > errors_before && !inputs.opts.leave_out_invalid) {
        return Vec::new();
    }
    out
}

/// The healthCheckNodePort of a LoadBalancer with externalTrafficPolicy:
/// Local that is this proxy's, with its ready endpoints on this node.
pub(super) fn health_check(
    svc: &KubeService,
    slices: &[&EndpointSlice],
    opts: &TranslateOptions,
) -> Option<HealthCheck> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() != Some("LoadBalancer")
        || spec.external_traffic_policy.as_deref() != Some("Local")
        || !owns(svc, &opts.proxy_name)
    {
        return None;
    }
    let port = u16::try_from(spec.health_check_node_port?).ok().filter(|p| *p != 0)?;
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let name = svc.metadata.name.as_deref().unwrap_or("");
    Some(HealthCheck {
        service: ObjectKey::new(Some(ns), name),
        port,
        local_endpoints: endpoints::local_ready(slices, &opts.node_name),
    })
}

/// The Service's type, as the frontends it opens.
#[derive(Clone, Copy)]
struct Type {
    /// NodePort or LoadBalancer.
    node_port: bool,
    load_balancer: bool,
}

/// What every datapath service of a Service carries.
struct Settings {
    maglev_size: u32,
    encap: Encap,
    affinity: Option<Affinity>,
    /// externalTrafficPolicy: Local (NodePort and LoadBalancer only).
    local: bool,
    /// internalTrafficPolicy: Local (its ClusterIPs).
    internal_local: bool,
    /// loadBalancerSourceRanges, sorted, each once.
    source_ranges: Vec<Cidr>,
    no_endpoints: NoEndpoints,
}

/// Which endpoints a frontend's traffic goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    /// Every endpoint.
    Cluster,
    /// This node's endpoints only.
    Local,
}

impl Policy {
    fn of(local: bool) -> Policy {
        if local {
            Policy::Local
        } else {
            Policy::Cluster
        }
    }
}

/// A socket frontend of a service port: the field of a ClusterIP (copies of
/// packet frontends have none: they are claimed as those), and the policy
/// its traffic follows.
struct SockFrontend {
    frontend: Frontend,
    field: Option<String>,
    policy: Policy,
}

/// The frontends of one service port, both kinds.
struct PortFrontends<'a> {
    packet: &'a [Frontend],
    /// Pairs with `packet`.
    fields: &'a [String],
    sock: &'a [SockFrontend],
}

/// A Service-wide frontend address (the port comes per service port).
struct Addr {
    addr: IpAddr,
    kind: FrontendKind,
    field: String,
}

/// A valid service port.
struct Port<'a> {
    name: &'a str,
    proto: Proto,
    number: u16,
    target: Target,
    /// spec.ports[i].nodePort, as set.
    node_port: Option<i32>,
}

/// Translating one Service: the object errors name, where they go, and the options.
struct Cx<'a> {
    object: ObjectRef,
    opts: &'a TranslateOptions,
    errors: &'a mut ErrorList,
}

impl Cx<'_> {
    fn error(&mut self, field: impl Into<String>, problem: Problem) {
        self.errors.push(&self.object, field, problem);
    }

    /// None for types with nothing to serve (ExternalName) or unknown ones.
    fn service_type(&mut self, spec: &ServiceSpec) -> Option<Type> {
        let (node_port, load_balancer) = match spec.type_.as_deref().unwrap_or("ClusterIP") {
            "ClusterIP" => (false, false),
            "NodePort" => (true, false),
            "LoadBalancer" => (true, true),
            "ExternalName" => return None,
            other => {
                let expected = "ClusterIP, NodePort, LoadBalancer, ExternalName";
                self.error("spec.type", Problem::BadValue { value: other.into(), expected });
                return None;
            }
        };
        Some(Type { node_port, load_balancer })
    }

    /// The address families the Service exists in. NodePorts are opened on
    /// this node's addresses of those families only.
    fn families(&mut self, spec: &ServiceSpec) -> Families {
        let (mut v4, mut v6) = (false, false);
        if let Some(families) = &spec.ip_families {
            for (i, f) in families.iter().enumerate() {
                match f.as_str() {
                    "IPv4" => v4 = true,
                    "IPv6" => v6 = true,
                    other => self.error(
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
            return Families { v4: true, v6: true };
        }
        Families { v4, v6 }
    }

    fn settings(&mut self, svc: &KubeService, spec: &ServiceSpec, ty: Type) -> Settings {
        let maglev_size = self.maglev_size(svc);
        let encap = self.encap(svc);
        let affinity = self.affinity(spec);
        let local = self.local(spec, ty);
        let internal_local = self.internal_local(spec);
        let source_ranges = self.source_ranges(spec, ty);
        let no_endpoints = self.no_endpoints(svc);
        Settings {
            maglev_size,
            encap,
            affinity,
            local,
            internal_local,
            source_ranges,
            no_endpoints,
        }
    }

    /// internalTrafficPolicy: Local keeps only this node's endpoints for
    /// ClusterIP traffic (none here: refused, not sent elsewhere).
    fn internal_local(&mut self, spec: &ServiceSpec) -> bool {
        match spec.internal_traffic_policy.as_deref() {
            None | Some("Cluster") => false,
            Some("Local") => true,
            Some(other) => {
                let expected = "Cluster, Local";
                let problem = Problem::BadValue { value: other.into(), expected };
                self.error("spec.internalTrafficPolicy", problem);
                false
            }
        }
    }

    /// The ClusterIPs: spec.clusterIPs (dual-stack), else spec.clusterIP;
    /// "None" (headless) and unset give none.
    fn cluster_ips(&mut self, spec: &ServiceSpec) -> Vec<Addr> {
        let (list, field) = match &spec.cluster_ips {
            Some(l) if !l.is_empty() => (l.clone(), "spec.clusterIPs"),
            _ => (spec.cluster_ip.iter().cloned().collect(), "spec.clusterIP"),
        };
        let mut out = Vec::new();
        for (i, ip) in list.iter().enumerate() {
            if ip.is_empty() || ip == "None" {
                continue;
            }
            let field =
                if field == "spec.clusterIP" { field.to_string() } else { format!("{field}[{i}]") };
            match parse_ip(ip) {
                Ok(addr) => out.push(Addr { addr, kind: FrontendKind::ClusterIp, field }),
                Err(p) => self.error(field, p),
            }
        }
        out
    }

    fn annotation<'s>(svc: &'s KubeService, name: &str) -> Option<&'s String> {
        svc.metadata.annotations.as_ref().and_then(|a| a.get(name))
    }

    /// The `xlb.io/maglev-size` annotation: a prime up to the largest
    /// table; without it the datapath chooses M from the active backends.
    fn maglev_size(&mut self, svc: &KubeService) -> u32 {
        let Some(v) = Self::annotation(svc, MAGLEV_SIZE_ANNOTATION) else {
            return self.opts.maglev_size;
        };
        match v.trim().parse::<u32>() {
            Ok(n) if valid_maglev_size(n) => n,
            _ => {
                self.error(
                    format!("metadata.annotations[{MAGLEV_SIZE_ANNOTATION}]"),
                    Problem::BadMaglevSize { value: v.clone(), max: MAX_MAGLEV_SIZE },
                );
                self.opts.maglev_size
            }
        }
    }

    /// The `xlb.io/encap` annotation.
    fn encap(&mut self, svc: &KubeService) -> Encap {
        let Some(v) = Self::annotation(svc, ENCAP_ANNOTATION) else {
            return Encap::default();
        };
        match v.trim() {
            "geneve" => Encap::Geneve,
            "ipip" => Encap::Ipip,
            _ => {
                self.error(
                    format!("metadata.annotations[{ENCAP_ANNOTATION}]"),
                    Problem::BadValue { value: v.clone(), expected: "geneve, ipip" },
                );
                Encap::default()
            }
        }
    }

    /// The `xlb.io/no-endpoints` annotation, else the node's default.
    fn no_endpoints(&mut self, svc: &KubeService) -> NoEndpoints {
        let Some(v) = Self::annotation(svc, NO_ENDPOINTS_ANNOTATION) else {
            return self.opts.no_endpoints;
        };
        match v.trim() {
            "reject" => NoEndpoints::Reject,
            "drop" => NoEndpoints::Drop,
            _ => {
                self.error(
                    format!("metadata.annotations[{NO_ENDPOINTS_ANNOTATION}]"),
                    Problem::BadValue { value: v.clone(), expected: "reject, drop" },
                );
                self.opts.no_endpoints
            }
        }
    }

    /// sessionAffinity: ClientIP, with its timeout.
    fn affinity(&mut self, spec: &ServiceSpec) -> Option<Affinity> {
        let seconds = match spec.session_affinity.as_deref().unwrap_or("None") {
            "None" => return None,
            "ClientIP" => {
                let config = spec.session_affinity_config.as_ref();
                match config.and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds) {
                    None => DEFAULT_AFFINITY_TIMEOUT_S,
                    Some(t) if (1..=MAX_AFFINITY_TIMEOUT_S).contains(&t) => t as u32,
                    Some(t) => {
                        self.error(
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                            Problem::BadAffinityTimeout { value: t },
                        );
                        return None;
                    }
                }
            }
            other => {
                let expected = "None, ClientIP";
                self.error(
                    "spec.sessionAffinity",
                    Problem::BadValue { value: other.into(), expected },
                );
                return None;
            }
        };
        Some(Affinity { timeout: Duration::from_secs(u64::from(seconds)) })
    }

    /// externalTrafficPolicy: Local keeps only this node's endpoints for
    /// NodePort and LoadBalancer traffic (externalIPs included, as in
    /// kube-proxy). The healthCheckNodePort that lets an external load
    /// balancer avoid nodes without endpoints: see [`health_check`].
    fn local(&mut self, spec: &ServiceSpec, ty: Type) -> bool {
        match spec.external_traffic_policy.as_deref() {
            None | Some("Cluster") => false,
            Some("Local") => ty.node_port,
            Some(other) => {
                let expected = "Cluster, Local";
                let problem = Problem::BadValue { value: other.into(), expected };
                self.error("spec.externalTrafficPolicy", problem);
                false
            }
        }
    }

    /// loadBalancerSourceRanges restrict LoadBalancer traffic; the model
    /// holds one list per service, applied to all its frontends.
    fn source_ranges(&mut self, spec: &ServiceSpec, ty: Type) -> Vec<Cidr> {
        if !ty.load_balancer {
            return Vec::new();
        }
        let mut ranges = Vec::new();
        for (i, r) in spec.load_balancer_source_ranges.iter().flatten().enumerate() {
            match r.trim().parse::<Cidr>() {
                Ok(c) => ranges.push(c),
                Err(reason) => self.error(
                    format!("spec.loadBalancerSourceRanges[{i}]"),
                    Problem::BadCidr { value: r.clone(), reason },
                ),
            }
        }
        ranges.sort();
        ranges.dedup();
        ranges
    }

    /// The Service-wide frontend addresses: LoadBalancer ingress IPs, then
    /// externalIPs.
    fn frontend_addrs(&mut self, svc: &KubeService, spec: &ServiceSpec, ty: Type) -> Vec<Addr> {
        let mut addrs = Vec::new();
        if ty.load_balancer {
            self.ingress_addrs(svc, &mut addrs);
        }
        for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
            let field = format!("spec.externalIPs[{i}]");
            match parse_ip(ip) {
                Ok(a) if self.opts.external_ip_cidrs.iter().any(|c| c.contains(a)) => {
                    addrs.push(Addr { addr: a, kind: FrontendKind::ExternalIp, field })
                }
                Ok(addr) => {
                    let allowed = self.allowed_external_ips();
                    self.error(field, Problem::ExternalIpNotAllowed { addr, allowed })
                }
                Err(p) => self.error(field, p),
            }
        }
        addrs
    }

    fn ingress_addrs(&mut self, svc: &KubeService, addrs: &mut Vec<Addr>) {
        let status = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref());
        let ingress = status.and_then(|l| l.ingress.as_ref());
        for (i, ing) in ingress.into_iter().flatten().enumerate() {
            // ipMode Proxy: the load balancer delivers to the node with its
            // own address as destination, so the VIP is not ours to serve.
            if ing.ip_mode.as_deref() == Some("Proxy") {
                continue;
            }
            let Some(ip) = &ing.ip else { continue }; // hostname-only
            let field = format!("status.loadBalancer.ingress[{i}].ip");
            match parse_ip(ip) {
                Ok(addr) => addrs.push(Addr { addr, kind: FrontendKind::LoadBalancer, field }),
                Err(p) => self.error(field, p),
            }
        }
    }

    /// `--external-ip-cidr`s as text, for the error: "none" without any.
    fn allowed_external_ips(&self) -> String {
        if self.opts.external_ip_cidrs.is_empty() {
            return "none".to_string();
        }
        let list: Vec<String> = self.opts.external_ip_cidrs.iter().map(|c| c.to_string()).collect();
        list.join(", ")
    }

    /// Service port `i`, if it is valid and carried by the datapath.
    fn port<'p>(&mut self, i: usize, port: &'p ServicePort) -> Option<Port<'p>> {
        let proto = match parse_proto(port.protocol.as_deref()) {
            Ok(p) => p,
            Err(p) => {
                self.error(format!("spec.ports[{i}].protocol"), p);
                return None;
            }
        };
        let number = port_number(port.port)
            .map_err(|p| self.error(format!("spec.ports[{i}].port"), p))
            .ok()?;
        let target = self.target_port(i, port)?;
        let name = port.name.as_deref().unwrap_or("");
        Some(Port { name, proto, number, target, node_port: port.node_port })
    }

    fn target_port(&mut self, i: usize, port: &ServicePort) -> Option<Target> {
        let field = format!("spec.ports[{i}].targetPort");
        let number = match &port.target_port {
            // Unset: the same as the service port (checked by the caller).
            None => return Some(Target::Number(u16::try_from(port.port).unwrap_or(0))),
            Some(IntOrString::Int(n)) => *n,
            // "8080" written as a string: the API server takes it as a number.
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => n,
                Err(_) if valid_port_name(s) => return Some(Target::Named(s.clone())),
                Err(_) => {
                    self.error(field, Problem::BadPortName { value: s.clone() });
                    return None;
                }
            },
        };
        port_number(number).map(Target::Number).map_err(|p| self.error(field, p)).ok()
    }

    /// The frontends of service port `i` — the Service-wide addresses, then
    /// the NodePort on each of `node_ports` (None: the type opens none) —
    /// each once, with the field it came from.
    fn port_frontends(
        &mut self,
        i: usize,
        p: &Port,
        addrs: &[Addr],
        node_ports: Option<&[IpAddr]>,
    ) -> (Vec<Frontend>, Vec<String>) {
        let mut frontends: Vec<Frontend> = Vec::new();
        let mut fields = Vec::new();
        let mut push = |fe: Frontend, field: String| {
            if !frontends.iter().any(|f| (f.addr, f.port, f.proto) == (fe.addr, fe.port, fe.proto))
            {
                frontends.push(fe);
                fields.push(field);
            }
        };
        for a in addrs {
            push(
                Frontend { addr: a.addr, port: p.number, proto: p.proto, kind: a.kind },
                a.field.clone(),
            );
        }
        let (Some(node_ports), Some(np)) = (node_ports, p.node_port) else {
            return (frontends, fields);
        };
        let field = format!("spec.ports[{i}].nodePort");
        match port_number(np) {
            Ok(np) => {
                for addr in node_ports {
                    let fe = Frontend {
                        addr: *addr,
                        port: np,
                        proto: p.proto,
                        kind: FrontendKind::NodePort,
                    };
                    push(fe, field.clone());
                }
            }
            Err(problem) => self.error(field, problem),
        }
        (frontends, fields)
    }
}

/// The socket frontends of service port `p`: its ClusterIPs (policy:
/// internalTrafficPolicy), then each packet frontend again and the NodePort
/// on loopback (policy: Cluster, kube-proxy's short circuit for in-cluster
/// clients of external addresses).
fn sock_frontends(
    p: &Port,
    cluster_ips: &[Addr],
    packet: &[Frontend],
    families: Families,
    settings: &Settings,
) -> Vec<SockFrontend> {
    let mut out: Vec<SockFrontend> = cluster_ips
        .iter()
        .map(|a| SockFrontend {
            frontend: Frontend { addr: a.addr, port: p.number, proto: p.proto, kind: a.kind },
            field: Some(a.field.clone()),
            policy: Policy::of(settings.internal_local),
        })
        .collect();
    let copy = |f: Frontend| SockFrontend { frontend: f, field: None, policy: Policy::Cluster };
    out.extend(packet.iter().map(|f| copy(*f)));
    if let Some(np) = packet.iter().find(|f| f.kind == FrontendKind::NodePort) {
        let loopback = [
            (families.v4, IpAddr::from([127, 0, 0, 1])),
            (families.v6, "::1".parse().expect("an address")),
        ];
        for (_, addr) in loopback.into_iter().filter(|(on, _)| *on) {
            out.push(copy(Frontend { addr, ..*np }));
        }
    }
    out
}

/// The datapath services of one service port: per address family (a packet
/// keeps its family end to end, no NAT46/64, so an IPv4 frontend may only
/// pick IPv4 endpoints), and per backend set. The packet frontends' policy
/// (externalTrafficPolicy) decides the set of the service under the plain
/// key; socket frontends of the other policy get a second service
/// ([`CLUSTER_KEY_SUFFIX`], [`LOCAL_KEY_SUFFIX`]). With both policies
/// Cluster (the usual case) a port is one service and one Maglev table.
fn by_family(
    key: impl Fn(bool) -> ServiceKey,
    port: &PortFrontends,
    backends: &BackendSets,
    settings: &Settings,
) -> Vec<PortService> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        let (packet, fields): (Vec<Frontend>, Vec<String>) = port
            .packet
            .iter()
            .zip(port.fields)
            .filter(|(f, _)| f.addr.is_ipv6() == v6)
            .map(|(f, field)| (*f, field.clone()))
            .unzip();
        let sock: Vec<&SockFrontend> =
            port.sock.iter().filter(|s| s.frontend.addr.is_ipv6() == v6).collect();
        let primary = match (packet.is_empty(), sock.first()) {
            (false, _) => Policy::of(settings.local),
            (true, Some(s)) => s.policy,
            (true, None) => continue,
        };
        for policy in
            [primary, if primary == Policy::Local { Policy::Cluster } else { Policy::Local }]
        {
            let mine: Vec<&&SockFrontend> = sock.iter().filter(|s| s.policy == policy).collect();
            let packet_here = policy == primary && !packet.is_empty();
            if mine.is_empty() && !packet_here {
                continue;
            }
            let mut key = key(v6);
            if policy != primary {
                let suffix = match policy {
                    Policy::Cluster => CLUSTER_KEY_SUFFIX,
                    Policy::Local => LOCAL_KEY_SUFFIX,
                };
                key = ServiceKey(format!("{key}{suffix}"));
            }
            let set = match policy {
                Policy::Cluster => &backends.cluster,
                Policy::Local => &backends.local,
            };
            let mut service = Service::new(key);
            if packet_here {
                service.frontends.clone_from(&packet);
                service.source_ranges.clone_from(&settings.source_ranges);
            }
            service.sock_frontends = mine.iter().map(|s| s.frontend).collect();
            // Sized exactly: a filtered collect grows to a power of two (16
            // backends' room for 10, ~11 MB at 30k services), and the desired
            // state keeps every one.
            let of_family = |b: &&Backend| b.addr.is_ipv6() == v6;
            service.backends = Vec::with_capacity(set.iter().filter(of_family).count());
            service.backends.extend(set.iter().filter(of_family).cloned());
            service.affinity = settings.affinity;
            service.maglev_size = settings.maglev_size;
            service.encap = settings.encap;
            service.no_endpoints = settings.no_endpoints;
            out.push(PortService {
                service,
                fields: if packet_here { fields.clone() } else { Vec::new() },
                sock_fields: mine.iter().map(|s| s.field.clone()).collect(),
            });
        }
    }
    out
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

/// A Maglev table size a service (or `--maglev-size`) may ask for: a prime
/// up to [`MAX_MAGLEV_SIZE`].
pub fn valid_maglev_size(n: u32) -> bool {
    is_prime(n) && n <= MAX_MAGLEV_SIZE
}

fn is_prime(n: u32) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--maglev-size` sets the size of services without an annotation;
    /// an annotation still wins.
    #[test]
    fn the_node_default_maglev_size_applies_unless_annotated() {
        let cluster = crate::source::file::load_str(crate::examples::NGINX, "nginx").unwrap();
        let sizes = |opts: &super::super::TranslateOptions, c: &crate::cluster::Cluster| {
            let d = super::super::translate(c, opts).unwrap();
            d.services.values().map(|s| s.maglev_size).collect::<Vec<_>>()
        };
        let mut opts = super::super::TranslateOptions::new("lb");
        assert!(sizes(&opts, &cluster).iter().all(|&m| m == lb::model::MAGLEV_SIZE_AUTO));
        opts.maglev_size = 16381;
        assert!(sizes(&opts, &cluster).iter().all(|&m| m == 16381));
        let annotated = crate::examples::NGINX.replacen(
            "  namespace: default\n",
            "  namespace: default\n  annotations: {xlb.io/maglev-size: \"251\"}\n",
            1,
        );
        let c = crate::source::file::load_str(&annotated, "nginx").unwrap();
        assert!(sizes(&opts, &c).contains(&251), "{:?}", sizes(&opts, &c));
        assert!(valid_maglev_size(16381) && !valid_maglev_size(16383) && !valid_maglev_size(65537));
    }

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..30).filter(|n| is_prime(*n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(MAX_MAGLEV_SIZE));
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
}
