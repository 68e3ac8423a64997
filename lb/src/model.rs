//! The service model: what the datapath should hold, in plain Rust values,
//! independent of Kubernetes. `control` translates manifests or API objects
//! into a [`Desired`]; `datapath::Datapath::apply` turns it into map writes.
use std::{collections::BTreeMap, fmt, net::IpAddr, time::Duration};

/// Default Maglev table size (prime), the largest the datapath holds.
pub const DEFAULT_MAGLEV_SIZE: u32 = 16381;

/// L4 protocol of a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            132 => Some(Proto::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        })
    }
}

/// How the load balancer carries a packet to the backend's node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Encap {
    /// Geneve with the DSR option (service address and port); the inner
    /// packet is DNAT'd to the endpoint by the load balancer.
    #[default]
    Geneve,
    /// IPIP / IP6IP6: the inner packet is left as the client sent it.
    Ipip,
}

/// Where a frontend came from (for listing; the datapath treats all alike
/// except NodePort, which is flagged).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendKind {
    LoadBalancer,
    ExternalIp,
    NodePort,
    ClusterIp,
}

/// One address:port/protocol the node answers for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
    pub kind: FrontendKind,
}

/// Whether a backend may take new flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackendState {
    /// Gets new flows (in the Maglev table).
    #[default]
    Active,
    /// Keeps its established flows, gets no new ones.
    Terminating,
}

/// One endpoint of a service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Stable cluster-wide name: orders the Maglev permutation, so every node
    /// builds the same table. `control` uses "addr:port" of the endpoint.
    pub name: String,
    pub addr: IpAddr,
    pub port: u16,
    /// Tunnel endpoint: the address of the node the endpoint runs on.
    pub node: IpAddr,
    /// Maglev weight, >= 1.
    pub weight: u32,
    pub state: BackendState,
}

impl Backend {
    /// An active endpoint `addr:port` on `node` with weight 1, named by its
    /// socket address (the name control gives every endpoint).
    pub fn new(addr: IpAddr, port: u16, node: IpAddr) -> Self {
        Backend {
            name: std::net::SocketAddr::new(addr, port).to_string(),
            addr,
            port,
            node,
            weight: 1,
            state: BackendState::Active,
        }
    }
}

/// What a service's frontends do with a new flow while it has no endpoint
/// that may take one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NoEndpoints {
    /// Answer it, as kube-proxy does: a TCP RST, an ICMP port unreachable
    /// for anything else (rate-limited in the datapath).
    #[default]
    Reject,
    /// Drop it silently (the client times out).
    Drop,
}

/// ClientIP session affinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Affinity {
    pub timeout: Duration,
}

/// An address prefix (loadBalancerSourceRanges, externalIP CIDRs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bytes: &[u8], len: u8) -> Vec<u8> {
            bytes
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let bits = (len as usize).saturating_sub(i * 8).min(8);
                    if bits == 0 {
                        0
                    } else {
                        b & (0xffu8 << (8 - bits))
                    }
                })
                .collect()
        }
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                masked(&a.octets(), self.len) == masked(&b.octets(), self.len)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                masked(&a.octets(), self.len) == masked(&b.octets(), self.len)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').ok_or_else(|| format!("{s:?}: expected ADDRESS/PREFIX"))?;
        let addr: IpAddr = a.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let len: u8 = l.parse().map_err(|e| format!("{s:?}: prefix: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("{s:?}: prefix longer than {max}"));
        }
        Ok(Cidr { addr, len })
    }
}

/// Key of a datapath service: one port of one Kubernetes Service
/// ("namespace/name:port-name"; the port name may be empty).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey(pub String);

impl ServiceKey {
    pub fn new(namespace: &str, name: &str, port_name: &str) -> Self {
        ServiceKey(format!("{namespace}/{name}:{port_name}"))
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One service port as the datapath sees it: its frontends share one backend
/// set and one Maglev table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub key: ServiceKey,
    pub frontends: Vec<Frontend>,
    /// All backends, active and terminating, in any order.
    pub backends: Vec<Backend>,
    pub affinity: Option<Affinity>,
    /// Prime Maglev table size, <= [`DEFAULT_MAGLEV_SIZE`].
    pub maglev_size: u32,
    pub encap: Encap,
    /// loadBalancerSourceRanges; empty: every client. Enforced on the
    /// LoadBalancer frontends only (kube-proxy's rule): NodePort and
    /// externalIP frontends of the same service admit every client.
    pub source_ranges: Vec<Cidr>,
    pub no_endpoints: NoEndpoints,
}

impl Service {
    pub fn new(key: ServiceKey) -> Self {
        Service {
            key,
            frontends: Vec::new(),
            backends: Vec::new(),
            affinity: None,
            maglev_size: DEFAULT_MAGLEV_SIZE,
            encap: Encap::default(),
            source_ranges: Vec::new(),
            no_endpoints: NoEndpoints::default(),
        }
    }

    /// A service answering on one frontend, with `backends`.
    pub fn with_frontend(key: ServiceKey, frontend: Frontend, backends: Vec<Backend>) -> Self {
        Service { frontends: vec![frontend], backends, ..Service::new(key) }
    }
}

/// This node's identity in the datapath.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// Outer source address for an IPv4 underlay.
    pub tunnel_v4: Option<std::net::Ipv4Addr>,
    /// Outer source address for an IPv6 underlay.
    pub tunnel_v6: Option<std::net::Ipv6Addr>,
}

/// Everything the datapath should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub node: NodeConfig,
    pub services: BTreeMap<ServiceKey, Service>,
}

impl Desired {
    /// This node's settings and `services`, keyed by their keys.
    pub fn new(node: NodeConfig, services: impl IntoIterator<Item = Service>) -> Self {
        Desired { node, services: services.into_iter().map(|s| (s.key.clone(), s)).collect() }
    }
}
