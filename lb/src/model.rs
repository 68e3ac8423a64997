//! The service model: what the datapath should hold, in plain Rust values,
//! independent of Kubernetes. `control` translates manifests or API objects
//! into a [`Desired`]; `datapath::Datapath::apply` turns it into map writes.
use std::{collections::BTreeMap, fmt, net::IpAddr, sync::Arc, time::Duration};

/// The largest Maglev table size (prime) the datapath holds.
pub const MAX_MAGLEV_SIZE: u32 = 16381;

/// [`Service::maglev_size`] that lets the datapath choose M from the number
/// of active backends ([`crate::maglev::auto_size`]).
pub const MAGLEV_SIZE_AUTO: u32 = 0;

/// The Maglev table size of a service that sets none: chosen from its
/// active backends.
pub const DEFAULT_MAGLEV_SIZE: u32 = MAGLEV_SIZE_AUTO;

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
    /// A pod's containerPort published on its node (hostPort).
    HostPort,
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
    /// Shared (not copied) by the reconciler's bookkeeping.
    pub name: Arc<str>,
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
            name: std::net::SocketAddr::new(addr, port).to_string().into(),
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
    /// The prefix with its host bits cleared.
    pub fn network(&self) -> Cidr {
        let keep = |bytes: &mut [u8]| {
            for (i, b) in bytes.iter_mut().enumerate() {
                let bits = (self.len as usize).saturating_sub(i * 8).min(8);
                *b &= if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
            }
        };
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mut o = a.octets();
                keep(&mut o);
                IpAddr::from(o)
            }
            IpAddr::V6(a) => {
                let mut o = a.octets();
                keep(&mut o);
                IpAddr::from(o)
            }
        };
        Cidr { addr, len: self.len }
    }

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
    /// Addresses answered where packets arrive (xlb_frontends: XDP on the
    /// NIC, tc): LoadBalancer IPs, externalIPs, NodePorts, hostPorts.
    pub frontends: Vec<Frontend>,
    /// Addresses translated at the socket for clients inside the node
    /// (xlb_sock_frontends: the cgroup socket programs, and tc's per-packet
    /// fallback): ClusterIPs, and the other frontends as seen from inside,
    /// NodePorts on loopback too. An address may be in both lists (one
    /// service whose backends serve both), or in one service's `frontends`
    /// and another's `sock_frontends` (when the traffic policies give
    /// in-cluster clients other backends).
    pub sock_frontends: Vec<Frontend>,
    /// All backends, active and terminating, in any order.
    pub backends: Vec<Backend>,
    pub affinity: Option<Affinity>,
    /// Prime Maglev table size, <= [`MAX_MAGLEV_SIZE`]; or
    /// [`MAGLEV_SIZE_AUTO`] (the default): see [`Service::table_size`].
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
            sock_frontends: Vec::new(),
            backends: Vec::new(),
            affinity: None,
            maglev_size: DEFAULT_MAGLEV_SIZE,
            encap: Encap::default(),
            source_ranges: Vec::new(),
            no_endpoints: NoEndpoints::default(),
        }
    }

    /// The Maglev table size M the datapath uses: `maglev_size`, or with
    /// [`MAGLEV_SIZE_AUTO`] the size [`crate::maglev::auto_size`] picks for
    /// the active backends (a function of their number alone, so every node
    /// picks the same).
    pub fn table_size(&self) -> u32 {
        if self.maglev_size != MAGLEV_SIZE_AUTO {
            return self.maglev_size;
        }
        let active = self.backends.iter().filter(|b| b.state == BackendState::Active).count();
        crate::maglev::auto_size(active)
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

// ---- pod networking (#10) ---------------------------------------------------

/// One pod range of one node (an entry of its Node's spec.podCIDRs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRoute {
    pub cidr: Cidr,
    /// The node's underlay address: where the overlay sends packets for
    /// the range.
    pub node: IpAddr,
    /// This node's own range (its pods are reached by redirect, never
    /// through the overlay).
    pub local: bool,
}

/// What an underlay address xlb accepts tunnel traffic from is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerRole {
    /// A node of the cluster (overlay traffic, and DSR from a node's XDP).
    pub node: bool,
    /// A load balancer outside the cluster's nodes (DSR dispatch).
    pub load_balancer: bool,
}

/// Masquerade of pods' traffic leaving the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Masquerade {
    /// Source ports the node hands out, inclusive.
    pub ports: (u16, u16),
    /// Destinations pods reach with their own address (besides every pod
    /// range, which is never masqueraded).
    pub non_masquerade: Vec<Cidr>,
}

impl Default for Masquerade {
    fn default() -> Self {
        Masquerade {
            ports: (crate::abi::SNAT_PORT_MIN, crate::abi::SNAT_PORT_MAX),
            non_masquerade: Vec::new(),
        }
    }
}

/// Default of [`Network::icmp_rate`]: ICMP too-big messages per second and CPU.
pub const DEFAULT_ICMP_RATE: u32 = 1000;

/// The pod network as this node's datapath sees it: every node's pod
/// ranges, the addresses tunnels are accepted from, and masquerade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub routes: Vec<PodRoute>,
    pub peers: BTreeMap<IpAddr, PeerRole>,
    /// None: pods' traffic leaves with their own addresses.
    pub masquerade: Option<Masquerade>,
    /// ICMP too-big messages sent to pods, per second and CPU.
    pub icmp_rate: u32,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            routes: Vec::new(),
            peers: BTreeMap::new(),
            masquerade: None,
            icmp_rate: DEFAULT_ICMP_RATE,
        }
    }
}

/// A pod of this node, as the datapath reaches it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Who it is (the CNI attachment: "namespace/pod" or the container
    /// id); for logs only, the maps do not keep it.
    pub name: String,
    pub addrs: Vec<IpAddr>,
    /// The host-side veth.
    pub ifindex: u32,
    /// The pod's interface.
    pub mac: [u8; 6],
    /// The host-side veth's.
    pub host_mac: [u8; 6],
    /// Security identity ([`crate::abi::ID_POD_MIN`] and up for pods).
    pub identity: u32,
}

/// The interim security identity of a pod: by namespace (FNV-1a of its
/// name, from [`crate::abi::ID_POD_MIN`] up, below 2^24). NetworkPolicy
/// (#11) replaces it with identities of label sets; the datapath only
/// carries the number.
pub fn namespace_identity(namespace: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in namespace.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    crate::abi::ID_POD_MIN + h % ((1 << 24) - crate::abi::ID_POD_MIN)
}
