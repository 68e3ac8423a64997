//! The frame builder: a [`Frame`] is a stack of [`Layer`]s, outermost first,
//! each a struct of named header fields. Lengths, protocol numbers, EtherTypes
//! and checksums are computed when the frame is built unless a field's
//! override (`Some(..)`) asks for a deliberately wrong value.
//!
//! Builder methods push a layer or change the most recent layer of the kind
//! they name (`.ttl()` the last IP header, `.dport()` the last TCP/UDP
//! header), so an encapsulated frame reads outer to inner:
//! `Frame::eth(A, B).ipv4(..).udp(..).geneve(vni).dsr_opt(vip).inner(client.l3())`.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use lb::abi::{
    GENEVE_OPT_CLASS, GENEVE_OPT_DSR4, GENEVE_OPT_DSR6, GENEVE_OPT_EP4, GENEVE_OPT_EP6,
    GENEVE_OPT_IDENTITY,
};

use super::csum;

/// An Ethernet address.
pub type Mac = [u8; 6];

/// IP protocol / IPv6 next-header numbers.
pub mod proto {
    pub const HOPOPTS: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const IPIP: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const IPV6: u8 = 41;
    pub const SCTP: u8 = 132;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const ICMPV6: u8 = 58;
    pub const NONE: u8 = 59;
    pub const DSTOPTS: u8 = 60;
}

/// EtherTypes.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const VLAN: u16 = 0x8100;
    pub const QINQ: u16 = 0x88a8;
    pub const IPV6: u16 = 0x86dd;
    /// Transparent Ethernet bridging (Geneve carrying an Ethernet frame).
    pub const TEB: u16 = 0x6558;
}

/// TCP flag bits.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eth {
    pub src: Mac,
    pub dst: Mac,
    /// 802.1Q tag control information (PCP | DEI | VID); `None`: untagged.
    pub vlan: Option<u16>,
    /// Override; default from the next layer.
    pub ethertype: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arp {
    /// 1 request, 2 reply.
    pub op: u16,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_mac: Mac,
    pub target_ip: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub tos: u8,
    pub id: u16,
    pub df: bool,
    pub mf: bool,
    /// In 8-byte units.
    pub frag_offset: u16,
    pub ttl: u8,
    /// Option bytes, padded with zeros (EOL) to a multiple of 4.
    pub options: Vec<u8>,
    /// Overrides; default computed.
    pub proto: Option<u8>,
    pub ihl: Option<u8>,
    pub total_len: Option<u16>,
    pub checksum: Option<u16>,
}

/// An IPv6 extension header. Option bytes (hop-by-hop, destination options)
/// are padded with PadN to the 8-byte multiple; routing data with zeros.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ipv6Ext {
    HopByHop(Vec<u8>),
    Routing {
        routing_type: u8,
        segments_left: u8,
        data: Vec<u8>,
    },
    DestOpts(Vec<u8>),
    /// `offset` in 8-byte units.
    Fragment {
        offset: u16,
        more: bool,
        id: u32,
    },
}

impl Ipv6Ext {
    fn number(&self) -> u8 {
        match self {
            Ipv6Ext::HopByHop(_) => proto::HOPOPTS,
            Ipv6Ext::Routing { .. } => proto::ROUTING,
            Ipv6Ext::DestOpts(_) => proto::DSTOPTS,
            Ipv6Ext::Fragment { .. } => proto::FRAGMENT,
        }
    }

    fn encode(&self, next: u8) -> Vec<u8> {
        match self {
            Ipv6Ext::HopByHop(opts) | Ipv6Ext::DestOpts(opts) => {
                let mut h = vec![next, 0];
                h.extend_from_slice(opts);
                match (8 - h.len() % 8) % 8 {
                    0 => {}
                    1 => h.push(0), // Pad1
                    n => {
                        h.extend_from_slice(&[1, (n - 2) as u8]); // PadN
                        h.resize(h.len() + n - 2, 0);
                    }
                }
                h[1] = (h.len() / 8 - 1) as u8;
                h
            }
            Ipv6Ext::Routing { routing_type, segments_left, data } => {
                let mut h = vec![next, 0, *routing_type, *segments_left];
                h.extend_from_slice(data);
                h.resize(h.len().div_ceil(8).max(1) * 8, 0);
                h[1] = (h.len() / 8 - 1) as u8;
                h
            }
            Ipv6Ext::Fragment { offset, more, id } => {
                let mut h = vec![next, 0];
                h.extend_from_slice(&((offset << 3) | u16::from(*more)).to_be_bytes());
                h.extend_from_slice(&id.to_be_bytes());
                h
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub traffic_class: u8,
    pub flow_label: u32,
    pub hop_limit: u8,
    /// Extension headers in order, between this header and the next layer.
    pub ext: Vec<Ipv6Ext>,
    /// Override of the upper-layer protocol (after the extension chain).
    pub next_header: Option<u8>,
    pub payload_len: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tcp {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub urgent: u16,
    /// Option bytes, padded with zeros (EOL) to a multiple of 4.
    pub options: Vec<u8>,
    /// Overrides; default computed.
    pub data_offset: Option<u8>,
    pub checksum: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Udp {
    pub sport: u16,
    pub dport: u16,
    /// Overrides; default computed. `checksum: Some(0)` is "no checksum".
    pub len: Option<u16>,
    pub checksum: Option<u16>,
}

/// SCTP's common header (RFC 9260 3.1); `checksum`: override of the CRC32c.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sctp {
    pub sport: u16,
    pub dport: u16,
    pub vtag: u32,
    pub checksum: Option<u32>,
}

/// An ICMPv4 or ICMPv6 message: type, code, the 4 bytes after the checksum
/// (`rest`: next-hop MTU, pointer, ...) and the following layers as body
/// (for errors, the quoted packet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Icmp {
    pub typ: u8,
    pub code: u8,
    pub rest: u32,
    /// Quote at most this many bytes of the body (as routers do).
    pub quote_len: Option<usize>,
    pub checksum: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneveOpt {
    pub class: u16,
    pub typ: u8,
    /// Padded with zeros to a multiple of 4.
    pub data: Vec<u8>,
}

impl GeneveOpt {
    /// xlb's DSR option: the service address and port the client used.
    pub fn dsr(vip: SocketAddr) -> Self {
        Self::addr_port(GENEVE_OPT_DSR4, GENEVE_OPT_DSR6, vip)
    }

    /// xlb's endpoint option (forwarded ICMP errors): the endpoint of the
    /// quoted flow.
    pub fn endpoint(ep: SocketAddr) -> Self {
        Self::addr_port(GENEVE_OPT_EP4, GENEVE_OPT_EP6, ep)
    }

    /// xlb's overlay option: the source's security identity.
    pub fn identity(identity: u32) -> Self {
        GeneveOpt {
            class: GENEVE_OPT_CLASS,
            typ: GENEVE_OPT_IDENTITY,
            data: identity.to_be_bytes().to_vec(),
        }
    }

    fn addr_port(typ4: u8, typ6: u8, sa: SocketAddr) -> Self {
        let (typ, mut data) = match sa.ip() {
            IpAddr::V4(a) => (typ4, a.octets().to_vec()),
            IpAddr::V6(a) => (typ6, a.octets().to_vec()),
        };
        data.extend_from_slice(&sa.port().to_be_bytes());
        data.extend_from_slice(&[0, 0]);
        GeneveOpt { class: GENEVE_OPT_CLASS, typ, data }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geneve {
    pub vni: u32,
    pub options: Vec<GeneveOpt>,
    pub oam: bool,
    pub critical: bool,
    /// Override; default from the next layer.
    pub proto: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layer {
    Eth(Eth),
    Arp(Arp),
    Ipv4(Ipv4),
    Ipv6(Ipv6),
    Tcp(Tcp),
    Udp(Udp),
    Sctp(Sctp),
    Icmp4(Icmp),
    Icmp6(Icmp),
    Geneve(Geneve),
    Raw(Vec<u8>),
}

impl Layer {
    fn ip_proto(&self) -> Option<u8> {
        Some(match self {
            Layer::Ipv4(_) => proto::IPIP,
            Layer::Ipv6(_) => proto::IPV6,
            Layer::Tcp(_) => proto::TCP,
            Layer::Udp(_) => proto::UDP,
            Layer::Sctp(_) => proto::SCTP,
            Layer::Icmp4(_) => proto::ICMP,
            Layer::Icmp6(_) => proto::ICMPV6,
            _ => return None,
        })
    }

    fn ethertype(&self) -> Option<u16> {
        Some(match self {
            Layer::Eth(_) => ethertype::TEB,
            Layer::Arp(_) => ethertype::ARP,
            Layer::Ipv4(_) => ethertype::IPV4,
            Layer::Ipv6(_) => ethertype::IPV6,
            _ => return None,
        })
    }

    fn ip_addrs(&self) -> Option<(IpAddr, IpAddr)> {
        match self {
            Layer::Ipv4(h) => Some((h.src.into(), h.dst.into())),
            Layer::Ipv6(h) => Some((h.src.into(), h.dst.into())),
            _ => None,
        }
    }

    /// This layer's bytes followed by `body` (the encoded inner layers).
    /// `next`: the following layer; `ip`: the nearest enclosing IP header.
    fn encode(&self, next: Option<&Layer>, ip: Option<&Layer>, body: &[u8]) -> Vec<u8> {
        let pseudo = |what: &str| {
            ip.and_then(Layer::ip_addrs)
                .unwrap_or_else(|| panic!("Frame: {what} needs an IP layer before it"))
        };
        let mut h = Vec::with_capacity(64 + body.len());
        match self {
            Layer::Eth(e) => {
                h.extend_from_slice(&e.dst);
                h.extend_from_slice(&e.src);
                if let Some(tci) = e.vlan {
                    h.extend_from_slice(&ethertype::VLAN.to_be_bytes());
                    h.extend_from_slice(&tci.to_be_bytes());
                }
                let et =
                    e.ethertype.or_else(|| next.and_then(Layer::ethertype)).unwrap_or_else(|| {
                        panic!("Frame: Ethernet type unknown for {next:?}; set .ethertype()")
                    });
                h.extend_from_slice(&et.to_be_bytes());
            }
            Layer::Arp(a) => {
                h.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
                h.extend_from_slice(&a.op.to_be_bytes());
                h.extend_from_slice(&a.sender_mac);
                h.extend_from_slice(&a.sender_ip.octets());
                h.extend_from_slice(&a.target_mac);
                h.extend_from_slice(&a.target_ip.octets());
            }
            Layer::Ipv4(ip4) => {
                let mut opts = ip4.options.clone();
                opts.resize(opts.len().div_ceil(4) * 4, 0);
                let hlen = 20 + opts.len();
                let ihl = ip4.ihl.unwrap_or((hlen / 4) as u8);
                let total = ip4.total_len.unwrap_or((hlen + body.len()) as u16);
                let proto = ip4.proto.or_else(|| next.and_then(Layer::ip_proto)).unwrap_or(255);
                let frag = (u16::from(ip4.df) << 14) | (u16::from(ip4.mf) << 13) | ip4.frag_offset;
                h.extend_from_slice(&[0x40 | (ihl & 0xf), ip4.tos]);
                h.extend_from_slice(&total.to_be_bytes());
                h.extend_from_slice(&ip4.id.to_be_bytes());
                h.extend_from_slice(&frag.to_be_bytes());
                h.extend_from_slice(&[ip4.ttl, proto, 0, 0]);
                h.extend_from_slice(&ip4.src.octets());
                h.extend_from_slice(&ip4.dst.octets());
                h.extend_from_slice(&opts);
                let sum = ip4.checksum.unwrap_or_else(|| csum::checksum(&h));
                h[10..12].copy_from_slice(&sum.to_be_bytes());
            }
            Layer::Ipv6(ip6) => {
                let upper = ip6
                    .next_header
                    .or_else(|| next.and_then(Layer::ip_proto))
                    .unwrap_or(proto::NONE);
                let mut exts = Vec::new();
                for (i, ext) in ip6.ext.iter().enumerate() {
                    let nh = ip6.ext.get(i + 1).map_or(upper, Ipv6Ext::number);
                    exts.extend(ext.encode(nh));
                }
                let first = ip6.ext.first().map_or(upper, Ipv6Ext::number);
                let plen = ip6.payload_len.unwrap_or((exts.len() + body.len()) as u16);
                let vtf = (6u32 << 28)
                    | (u32::from(ip6.traffic_class) << 20)
                    | (ip6.flow_label & 0xfffff);
                h.extend_from_slice(&vtf.to_be_bytes());
                h.extend_from_slice(&plen.to_be_bytes());
                h.extend_from_slice(&[first, ip6.hop_limit]);
                h.extend_from_slice(&ip6.src.octets());
                h.extend_from_slice(&ip6.dst.octets());
                h.extend(exts);
            }
            Layer::Tcp(t) => {
                let mut opts = t.options.clone();
                opts.resize(opts.len().div_ceil(4) * 4, 0);
                let doff = t.data_offset.unwrap_or(((20 + opts.len()) / 4) as u8);
                h.extend_from_slice(&t.sport.to_be_bytes());
                h.extend_from_slice(&t.dport.to_be_bytes());
                h.extend_from_slice(&t.seq.to_be_bytes());
                h.extend_from_slice(&t.ack.to_be_bytes());
                h.extend_from_slice(&[doff << 4, t.flags]);
                h.extend_from_slice(&t.window.to_be_bytes());
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(&t.urgent.to_be_bytes());
                h.extend_from_slice(&opts);
                h.extend_from_slice(body);
                let sum = t.checksum.unwrap_or_else(|| {
                    let (s, d) = pseudo("TCP");
                    csum::l4(s, d, proto::TCP, &h)
                });
                h[16..18].copy_from_slice(&sum.to_be_bytes());
                return h;
            }
            Layer::Udp(u) => {
                let len = u.len.unwrap_or((8 + body.len()) as u16);
                h.extend_from_slice(&u.sport.to_be_bytes());
                h.extend_from_slice(&u.dport.to_be_bytes());
                h.extend_from_slice(&len.to_be_bytes());
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(body);
                let sum = u.checksum.unwrap_or_else(|| {
                    let (s, d) = pseudo("UDP");
                    match csum::l4(s, d, proto::UDP, &h) {
                        0 => 0xffff, // 0 means "no checksum"
                        c => c,
                    }
                });
                h[6..8].copy_from_slice(&sum.to_be_bytes());
                return h;
            }
            Layer::Sctp(c) => {
                h.extend_from_slice(&c.sport.to_be_bytes());
                h.extend_from_slice(&c.dport.to_be_bytes());
                h.extend_from_slice(&c.vtag.to_be_bytes());
                h.extend_from_slice(&[0; 4]);
                h.extend_from_slice(body);
                let crc = c.checksum.unwrap_or_else(|| csum::crc32c(&h));
                h[8..12].copy_from_slice(&crc.to_le_bytes());
                return h;
            }
            Layer::Icmp4(m) | Layer::Icmp6(m) => {
                let body = &body[..m.quote_len.map_or(body.len(), |q| q.min(body.len()))];
                h.extend_from_slice(&[m.typ, m.code, 0, 0]);
                h.extend_from_slice(&m.rest.to_be_bytes());
                h.extend_from_slice(body);
                let sum = m.checksum.unwrap_or_else(|| match self {
                    Layer::Icmp6(_) => {
                        let (s, d) = pseudo("ICMPv6");
                        csum::l4(s, d, proto::ICMPV6, &h)
                    }
                    _ => csum::checksum(&h),
                });
                h[2..4].copy_from_slice(&sum.to_be_bytes());
                return h;
            }
            Layer::Geneve(g) => {
                let mut opts = Vec::new();
                for o in &g.options {
                    let mut data = o.data.clone();
                    data.resize(data.len().div_ceil(4) * 4, 0);
                    opts.extend_from_slice(&o.class.to_be_bytes());
                    opts.extend_from_slice(&[o.typ, (data.len() / 4) as u8 & 0x1f]);
                    opts.extend(data);
                }
                let et = g.proto.or_else(|| next.and_then(Layer::ethertype)).unwrap_or_else(|| {
                    panic!("Frame: Geneve protocol type unknown for {next:?}; set Geneve.proto")
                });
                let flags = (u8::from(g.oam) << 7) | (u8::from(g.critical) << 6);
                h.extend_from_slice(&[(opts.len() / 4) as u8 & 0x3f, flags]);
                h.extend_from_slice(&et.to_be_bytes());
                h.extend_from_slice(&g.vni.to_be_bytes()[1..]);
                h.push(0);
                h.extend(opts);
            }
            Layer::Raw(bytes) => h.extend_from_slice(bytes),
        }
        h.extend_from_slice(body);
        h
    }
}

/// A frame (or a bare IP packet) under construction: see the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    pub layers: Vec<Layer>,
}

impl Frame {
    /// An empty frame: start a bare IP packet with `.ipv4()`/`.ipv6()`.
    pub fn new() -> Self {
        Frame::default()
    }

    /// An untagged Ethernet frame.
    pub fn eth(src: Mac, dst: Mac) -> Self {
        Frame::new().push(Layer::Eth(Eth { src, dst, vlan: None, ethertype: None }))
    }

    /// Appends a layer as is.
    pub fn push(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    /// Appends every layer of `inner` (e.g. `client.l3()` inside a tunnel).
    pub fn inner(mut self, inner: Frame) -> Self {
        self.layers.extend(inner.layers);
        self
    }

    /// The packet from its first IP header on (no Ethernet).
    pub fn l3(&self) -> Frame {
        let at = self
            .layers
            .iter()
            .position(|l| matches!(l, Layer::Ipv4(_) | Layer::Ipv6(_)))
            .expect("Frame::l3: no IP layer");
        Frame { layers: self.layers[at..].to_vec() }
    }

    /// The encoded bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for i in (0..self.layers.len()).rev() {
            let ip = self.layers[..i].iter().rev().find(|l| l.ip_addrs().is_some());
            body = self.layers[i].encode(self.layers.get(i + 1), ip, &body);
        }
        body
    }

    fn last<T>(&mut self, what: &str, pick: impl FnMut(&mut Layer) -> Option<&mut T>) -> &mut T {
        self.layers
            .iter_mut()
            .rev()
            .find_map(pick)
            .unwrap_or_else(|| panic!("Frame: .{what}() needs an earlier layer it applies to"))
    }

    fn eth_mut(&mut self, what: &str) -> &mut Eth {
        self.last(what, |l| if let Layer::Eth(e) = l { Some(e) } else { None })
    }

    fn ip4_mut(&mut self, what: &str) -> &mut Ipv4 {
        self.last(what, |l| if let Layer::Ipv4(h) = l { Some(h) } else { None })
    }

    fn ip6_mut(&mut self, what: &str) -> &mut Ipv6 {
        self.last(what, |l| if let Layer::Ipv6(h) = l { Some(h) } else { None })
    }

    /// The last IP layer, either family.
    fn ip_mut(&mut self, what: &str) -> &mut Layer {
        self.last(what, |l| matches!(l, Layer::Ipv4(_) | Layer::Ipv6(_)).then_some(l))
    }

    fn tcp_mut(&mut self, what: &str) -> &mut Tcp {
        self.last(what, |l| if let Layer::Tcp(t) = l { Some(t) } else { None })
    }

    fn udp_mut(&mut self, what: &str) -> &mut Udp {
        self.last(what, |l| if let Layer::Udp(u) = l { Some(u) } else { None })
    }

    fn icmp_mut(&mut self, what: &str) -> &mut Icmp {
        self.last(what, |l| match l {
            Layer::Icmp4(m) | Layer::Icmp6(m) => Some(m),
            _ => None,
        })
    }

    fn geneve_mut(&mut self, what: &str) -> &mut Geneve {
        self.last(what, |l| if let Layer::Geneve(g) = l { Some(g) } else { None })
    }

    // ---- Ethernet ----

    /// Adds an 802.1Q tag with VLAN id `vid` (priority 0) to the last Ethernet header.
    pub fn vlan(mut self, vid: u16) -> Self {
        self.eth_mut("vlan").vlan = Some(vid & 0x0fff);
        self
    }

    pub fn ethertype(mut self, et: u16) -> Self {
        self.eth_mut("ethertype").ethertype = Some(et);
        self
    }

    /// An ARP request: who has `target_ip`, tell `sender_ip`.
    pub fn arp_request(self, sender_mac: Mac, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Self {
        self.push(Layer::Arp(Arp { op: 1, sender_mac, sender_ip, target_mac: [0; 6], target_ip }))
    }

    // ---- IP ----

    pub fn ipv4(self, src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        self.push(Layer::Ipv4(Ipv4 {
            src,
            dst,
            tos: 0,
            id: 0,
            df: false,
            mf: false,
            frag_offset: 0,
            ttl: 64,
            options: Vec::new(),
            proto: None,
            ihl: None,
            total_len: None,
            checksum: None,
        }))
    }

    pub fn ipv6(self, src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        self.push(Layer::Ipv6(Ipv6 {
            src,
            dst,
            traffic_class: 0,
            flow_label: 0,
            hop_limit: 64,
            ext: Vec::new(),
            next_header: None,
            payload_len: None,
        }))
    }

    /// IPv4 or IPv6 by the addresses' family (which must agree).
    pub fn ip(self, src: IpAddr, dst: IpAddr) -> Self {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => self.ipv4(s, d),
            (IpAddr::V6(s), IpAddr::V6(d)) => self.ipv6(s, d),
            _ => panic!("Frame::ip: mixed families {src} -> {dst}"),
        }
    }

    /// Source address of the last IP header (same family).
    pub fn src(mut self, addr: IpAddr) -> Self {
        match (self.ip_mut("src"), addr) {
            (Layer::Ipv4(h), IpAddr::V4(a)) => h.src = a,
            (Layer::Ipv6(h), IpAddr::V6(a)) => h.src = a,
            (l, a) => panic!("Frame::src: {a} does not fit {l:?}"),
        }
        self
    }

    /// Destination address of the last IP header (same family).
    pub fn dst(mut self, addr: IpAddr) -> Self {
        match (self.ip_mut("dst"), addr) {
            (Layer::Ipv4(h), IpAddr::V4(a)) => h.dst = a,
            (Layer::Ipv6(h), IpAddr::V6(a)) => h.dst = a,
            (l, a) => panic!("Frame::dst: {a} does not fit {l:?}"),
        }
        self
    }

    /// TTL / hop limit of the last IP header.
    pub fn ttl(mut self, ttl: u8) -> Self {
        match self.ip_mut("ttl") {
            Layer::Ipv4(h) => h.ttl = ttl,
            Layer::Ipv6(h) => h.hop_limit = ttl,
            _ => unreachable!(),
        }
        self
    }

    /// TOS / traffic class of the last IP header.
    pub fn tos(mut self, tos: u8) -> Self {
        match self.ip_mut("tos") {
            Layer::Ipv4(h) => h.tos = tos,
            Layer::Ipv6(h) => h.traffic_class = tos,
            _ => unreachable!(),
        }
        self
    }

    /// Protocol / upper-layer next header of the last IP header (override).
    pub fn ip_proto(mut self, p: u8) -> Self {
        match self.ip_mut("ip_proto") {
            Layer::Ipv4(h) => h.proto = Some(p),
            Layer::Ipv6(h) => h.next_header = Some(p),
            _ => unreachable!(),
        }
        self
    }

    pub fn ip_id(mut self, id: u16) -> Self {
        self.ip4_mut("ip_id").id = id;
        self
    }

    pub fn df(mut self) -> Self {
        self.ip4_mut("df").df = true;
        self
    }

    pub fn mf(mut self) -> Self {
        self.ip4_mut("mf").mf = true;
        self
    }

    /// IPv4 fragment offset in 8-byte units.
    pub fn frag_offset(mut self, units: u16) -> Self {
        self.ip4_mut("frag_offset").frag_offset = units;
        self
    }

    pub fn ip_options(mut self, bytes: &[u8]) -> Self {
        self.ip4_mut("ip_options").options = bytes.to_vec();
        self
    }

    /// Override: IHL in 4-byte words (malformed packets).
    pub fn ihl(mut self, words: u8) -> Self {
        self.ip4_mut("ihl").ihl = Some(words);
        self
    }

    /// Override: IPv4 total length.
    pub fn total_len(mut self, len: u16) -> Self {
        self.ip4_mut("total_len").total_len = Some(len);
        self
    }

    /// Override: IPv4 header checksum.
    pub fn ip_checksum(mut self, sum: u16) -> Self {
        self.ip4_mut("ip_checksum").checksum = Some(sum);
        self
    }

    pub fn flow_label(mut self, label: u32) -> Self {
        self.ip6_mut("flow_label").flow_label = label;
        self
    }

    /// Override: IPv6 payload length.
    pub fn payload_len(mut self, len: u16) -> Self {
        self.ip6_mut("payload_len").payload_len = Some(len);
        self
    }

    /// Appends an extension header to the last IPv6 header.
    pub fn ipv6_ext(mut self, ext: Ipv6Ext) -> Self {
        self.ip6_mut("ipv6_ext").ext.push(ext);
        self
    }

    pub fn hop_by_hop(self, options: &[u8]) -> Self {
        self.ipv6_ext(Ipv6Ext::HopByHop(options.to_vec()))
    }

    pub fn dest_opts(self, options: &[u8]) -> Self {
        self.ipv6_ext(Ipv6Ext::DestOpts(options.to_vec()))
    }

    pub fn routing(self, routing_type: u8, segments_left: u8, data: &[u8]) -> Self {
        self.ipv6_ext(Ipv6Ext::Routing { routing_type, segments_left, data: data.to_vec() })
    }

    /// IPv6 fragment header; `offset` in 8-byte units.
    pub fn fragment6(self, offset: u16, more: bool, id: u32) -> Self {
        self.ipv6_ext(Ipv6Ext::Fragment { offset, more, id })
    }

    // ---- TCP / UDP ----

    pub fn tcp(self, sport: u16, dport: u16) -> Self {
        self.push(Layer::Tcp(Tcp {
            sport,
            dport,
            seq: 0,
            ack: 0,
            flags: 0,
            window: 64240,
            urgent: 0,
            options: Vec::new(),
            data_offset: None,
            checksum: None,
        }))
    }

    pub fn udp(self, sport: u16, dport: u16) -> Self {
        self.push(Layer::Udp(Udp { sport, dport, len: None, checksum: None }))
    }

    /// An SCTP common header (verification tag 0x01020304); its CRC32c is
    /// computed over whatever follows (chunks as `.payload()`).
    pub fn sctp(self, sport: u16, dport: u16) -> Self {
        self.push(Layer::Sctp(Sctp { sport, dport, vtag: 0x0102_0304, checksum: None }))
    }

    /// TCP, UDP or SCTP by protocol number.
    pub fn l4(self, proto: u8, sport: u16, dport: u16) -> Self {
        match proto {
            proto::TCP => self.tcp(sport, dport),
            proto::UDP => self.udp(sport, dport),
            proto::SCTP => self.sctp(sport, dport),
            p => panic!("Frame::l4: protocol {p} has no ports"),
        }
    }

    fn ports_mut(&mut self, what: &str) -> (&mut u16, &mut u16) {
        self.layers
            .iter_mut()
            .rev()
            .find_map(|l| match l {
                Layer::Tcp(t) => Some((&mut t.sport, &mut t.dport)),
                Layer::Udp(u) => Some((&mut u.sport, &mut u.dport)),
                Layer::Sctp(c) => Some((&mut c.sport, &mut c.dport)),
                _ => None,
            })
            .unwrap_or_else(|| panic!("Frame: .{what}() needs an earlier TCP, UDP or SCTP layer"))
    }

    /// Source port of the last TCP/UDP header.
    pub fn sport(mut self, port: u16) -> Self {
        *self.ports_mut("sport").0 = port;
        self
    }

    /// Destination port of the last TCP/UDP header.
    pub fn dport(mut self, port: u16) -> Self {
        *self.ports_mut("dport").1 = port;
        self
    }

    /// Sets TCP flag bits ([`tcp_flags`]).
    pub fn flags(mut self, flags: u8) -> Self {
        self.tcp_mut("flags").flags |= flags;
        self
    }

    pub fn syn(self) -> Self {
        self.flags(tcp_flags::SYN)
    }

    /// Sets the ACK flag (the number is [`Frame::ack_seq`]).
    pub fn ack(self) -> Self {
        self.flags(tcp_flags::ACK)
    }

    pub fn fin(self) -> Self {
        self.flags(tcp_flags::FIN)
    }

    pub fn rst(self) -> Self {
        self.flags(tcp_flags::RST)
    }

    pub fn psh(self) -> Self {
        self.flags(tcp_flags::PSH)
    }

    pub fn seq(mut self, seq: u32) -> Self {
        self.tcp_mut("seq").seq = seq;
        self
    }

    pub fn ack_seq(mut self, ack: u32) -> Self {
        self.tcp_mut("ack_seq").ack = ack;
        self
    }

    pub fn window(mut self, window: u16) -> Self {
        self.tcp_mut("window").window = window;
        self
    }

    /// Override: TCP data offset in 4-byte words (malformed packets).
    pub fn data_offset(mut self, words: u8) -> Self {
        self.tcp_mut("data_offset").data_offset = Some(words);
        self
    }

    pub fn tcp_options(mut self, bytes: &[u8]) -> Self {
        self.tcp_mut("tcp_options").options = bytes.to_vec();
        self
    }

    /// Override: UDP length.
    pub fn udp_len(mut self, len: u16) -> Self {
        self.udp_mut("udp_len").len = Some(len);
        self
    }

    /// Override of the last TCP/UDP/ICMP checksum (`0` on UDP: none).
    pub fn l4_checksum(mut self, sum: u16) -> Self {
        *self.last("l4_checksum", |l| match l {
            Layer::Tcp(t) => Some(&mut t.checksum),
            Layer::Udp(u) => Some(&mut u.checksum),
            Layer::Icmp4(m) | Layer::Icmp6(m) => Some(&mut m.checksum),
            _ => None,
        }) = Some(sum);
        self
    }

    /// Application bytes after the last header.
    pub fn payload(self, bytes: &[u8]) -> Self {
        self.push(Layer::Raw(bytes.to_vec()))
    }

    // ---- ICMP ----

    pub fn icmp4(self, typ: u8, code: u8, rest: u32) -> Self {
        self.push(Layer::Icmp4(Icmp { typ, code, rest, quote_len: None, checksum: None }))
    }

    pub fn icmp6(self, typ: u8, code: u8, rest: u32) -> Self {
        self.push(Layer::Icmp6(Icmp { typ, code, rest, quote_len: None, checksum: None }))
    }

    /// ICMPv4 destination unreachable, fragmentation needed, with the next-hop
    /// MTU; follow with the quoted packet's layers.
    pub fn icmp4_frag_needed(self, mtu: u16) -> Self {
        self.icmp4(3, 4, u32::from(mtu))
    }

    /// ICMPv6 packet too big; follow with the quoted packet's layers.
    pub fn icmp6_packet_too_big(self, mtu: u32) -> Self {
        self.icmp6(2, 0, mtu)
    }

    /// Quote at most `len` bytes of the packet after the last ICMP header.
    pub fn quote_len(mut self, len: usize) -> Self {
        self.icmp_mut("quote_len").quote_len = Some(len);
        self
    }

    // ---- Geneve ----

    /// A Geneve header (put it after `.udp(sport, GENEVE_PORT)`).
    pub fn geneve(self, vni: u32) -> Self {
        self.push(Layer::Geneve(Geneve {
            vni,
            options: Vec::new(),
            oam: false,
            critical: false,
            proto: None,
        }))
    }

    pub fn geneve_opt(mut self, opt: GeneveOpt) -> Self {
        self.geneve_mut("geneve_opt").options.push(opt);
        self
    }

    /// xlb's DSR option on the last Geneve header.
    pub fn dsr_opt(self, vip: SocketAddr) -> Self {
        self.geneve_opt(GeneveOpt::dsr(vip))
    }

    /// Wraps this packet (from its first IP header on) in `outer`, which ends
    /// in a tunnel header: Geneve, or an IP header for IPIP / IP6IP6 /
    /// IPv6-in-IPv4.
    pub fn encap_in(&self, outer: Frame) -> Frame {
        outer.inner(self.l3())
    }
}
