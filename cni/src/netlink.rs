//! A small rtnetlink client (NETLINK_ROUTE over a raw socket, no library):
//! just what the plugin does to a pod's interfaces — a veth pair made with
//! its peer already in the pod's namespace, links up and down, addresses,
//! routes (with an MTU metric), lookups by name and dumps for CHECK. A
//! socket lives in the network namespace it was opened in
//! ([`crate::netns`] opens it inside a pod's). Each request waits for the
//! kernel's acknowledgement, whose errno becomes the error.
use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

const NETLINK_ROUTE: i32 = 0;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_METRICS: u16 = 8;
const RTA_TABLE: u16 = 15;
const RTAX_MTU: u16 = 2;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RTN_UNICAST: u8 = 1;
const IFF_UP: u32 = 0x1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Route scope (rtmsg.rtm_scope).
pub const SCOPE_UNIVERSE: u8 = 0;
pub const SCOPE_LINK: u8 = 253;

/// A link as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub up: bool,
}

/// A route of the main table: destination (address, prefix), gateway,
/// output interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: (IpAddr, u8),
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
}

fn family_of(a: &IpAddr) -> u8 {
    if a.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}

fn ip_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn ip_from(family: u8, b: &[u8]) -> Option<IpAddr> {
    match (family, b.len()) {
        (AF_INET, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        (AF_INET6, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

/// One request being built: header, fixed part, attributes (nested ones
/// through [`Msg::nest`] / [`Msg::end`]).
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    fn new(ty: u16, flags: u16) -> Msg {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        Msg { buf, nests: Vec::new() }
    }

    fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    fn align(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        self.align();
        self.buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.align();
        self
    }

    fn nest(&mut self, ty: u16) -> &mut Self {
        self.align();
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self
    }

    fn end(&mut self) -> &mut Self {
        let at = self.nests.pop().expect("nest before end");
        self.align();
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        self.align();
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// struct ifinfomsg.
fn ifinfo(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// The attributes of a message body from `off`: (type without flag bits, data).
fn attrs(b: &[u8], mut off: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while off + 4 <= b.len() {
        let len = u16::from_ne_bytes([b[off], b[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([b[off + 2], b[off + 3]]) & 0x3fff;
        if len < 4 || off + len > b.len() {
            break;
        }
        out.push((ty, &b[off + 4..off + len]));
        off += (len + 3) & !3;
    }
    out
}

/// A NETLINK_ROUTE socket of the namespace it was opened in.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: plain syscalls; the fd is owned from here on.
        let fd = unsafe {
            let fd =
                libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_ROUTE);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: sa is a valid sockaddr_nl of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink { fd, seq: 1 })
    }

    /// Sends one request and reads until its acknowledgement (or, for a
    /// dump, NLMSG_DONE); returns the messages that came before it.
    fn request(&mut self, msg: Msg) -> io::Result<Vec<Vec<u8>>> {
        self.seq += 1;
        let seq = self.seq;
        let buf = msg.finish(seq);
        // SAFETY: buf is valid for its length.
        let n = unsafe {
            libc::send(self.fd.as_raw_fd(), buf.as_ptr() as *const libc::c_void, buf.len(), 0)
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut rbuf = vec![0u8; 65536];
        loop {
            // SAFETY: rbuf is valid for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    rbuf.as_mut_ptr() as *mut libc::c_void,
                    rbuf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut off = 0usize;
            let n = n as usize;
            while off + 16 <= n {
                let len = u32::from_ne_bytes(rbuf[off..off + 4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes([rbuf[off + 4], rbuf[off + 5]]);
                let flags = u16::from_ne_bytes([rbuf[off + 6], rbuf[off + 7]]);
                let mseq = u32::from_ne_bytes(rbuf[off + 8..off + 12].try_into().unwrap());
                if len < 16 || off + len > n {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "short netlink message",
                    ));
                }
                let body = &rbuf[off + 16..off + len];
                off += (len + 3) & !3;
                if mseq != seq {
                    continue;
                }
                match ty {
                    NLMSG_ERROR => {
                        let errno = i32::from_ne_bytes(body[0..4].try_into().unwrap());
                        return if errno == 0 {
                            Ok(out)
                        } else {
                            Err(io::Error::from_raw_os_error(-errno))
                        };
                    }
                    NLMSG_DONE => return Ok(out),
                    _ => {
                        out.push(body.to_vec());
                        if flags & NLM_F_MULTI == 0 {
                            // A single answer (a GET by name) still ends with the ACK.
                        }
                    }
                }
            }
        }
    }

    /// A veth pair: `host` here with `host_mtu`, `peer` moved into the
    /// namespace of `peer_netns` with `peer_mtu`. Fails with EEXIST when
    /// either name is taken.
    pub fn add_veth(
        &mut self,
        host: &str,
        host_mtu: u32,
        peer: &str,
        peer_mtu: u32,
        peer_netns: RawFd,
    ) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
        m.raw(&ifinfo(0, 0, 0))
            .attr(IFLA_IFNAME, &cstr(host))
            .attr(IFLA_MTU, &host_mtu.to_ne_bytes())
            .nest(IFLA_LINKINFO)
            .attr(IFLA_INFO_KIND, b"veth")
            .nest(IFLA_INFO_DATA)
            .nest(VETH_INFO_PEER)
            .raw(&ifinfo(0, 0, 0))
            .attr(IFLA_IFNAME, &cstr(peer))
            .attr(IFLA_MTU, &peer_mtu.to_ne_bytes())
            .attr(IFLA_NET_NS_FD, &(peer_netns as u32).to_ne_bytes())
            .end()
            .end()
            .end();
        self.request(m).map(drop)
    }

    /// Sets a link up.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_ACK);
        m.raw(&ifinfo(index, IFF_UP, IFF_UP));
        self.request(m).map(drop)
    }

    /// Deletes a link (a veth takes its peer along).
    pub fn del_link(&mut self, index: u32) -> io::Result<()> {
        let mut m = Msg::new(RTM_DELLINK, NLM_F_ACK);
        m.raw(&ifinfo(index, 0, 0));
        self.request(m).map(drop)
    }

    /// The link called `name`, if there is one.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut m = Msg::new(RTM_GETLINK, NLM_F_ACK);
        m.raw(&ifinfo(0, 0, 0)).attr(IFLA_IFNAME, &cstr(name));
        match self.request(m) {
            Ok(msgs) => Ok(msgs.first().and_then(|b| parse_link(b))),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Adds `addr`/`prefix` to link `index` (without duplicate address
    /// detection: the address is usable at once).
    pub fn add_addr(&mut self, index: u32, addr: IpAddr, prefix: u8, scope: u8) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE);
        let mut ifa = [0u8; 8];
        ifa[0] = family_of(&addr);
        ifa[1] = prefix;
        ifa[2] = IFA_F_NODAD;
        ifa[3] = scope;
        ifa[4..8].copy_from_slice(&index.to_ne_bytes());
        let b = ip_bytes(&addr);
        m.raw(&ifa).attr(IFA_LOCAL, &b).attr(IFA_ADDRESS, &b);
        self.request(m).map(drop)
    }

    /// The addresses of link `index`: (address, prefix).
    pub fn addrs(&mut self, index: u32) -> io::Result<Vec<(IpAddr, u8)>> {
        let mut m = Msg::new(RTM_GETADDR, NLM_F_DUMP);
        m.raw(&[0u8; 8]);
        let mut out = Vec::new();
        for b in self.request(m)? {
            if b.len() < 8 || u32::from_ne_bytes(b[4..8].try_into().unwrap()) != index {
                continue;
            }
            let (family, prefix) = (b[0], b[1]);
            let mut local = None;
            let mut address = None;
            for (ty, d) in attrs(&b, 8) {
                match ty {
                    IFA_LOCAL => local = ip_from(family, d),
                    IFA_ADDRESS => address = ip_from(family, d),
                    _ => {}
                }
            }
            if let Some(a) = local.or(address) {
                out.push((a, prefix));
            }
        }
        Ok(out)
    }

    /// A route in the main table to `dst`/`len` out of `oif`, through
    /// `gateway` or on-link, with `mtu` as its path MTU; replaces one to
    /// the same destination.
    pub fn add_route(
        &mut self,
        dst: IpAddr,
        len: u8,
        gateway: Option<IpAddr>,
        oif: u32,
        scope: u8,
        mtu: Option<u32>,
    ) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE);
        let mut rt = [0u8; 12];
        rt[0] = family_of(&dst);
        rt[1] = len;
        rt[4] = RT_TABLE_MAIN;
        rt[5] = RTPROT_STATIC;
        rt[6] = scope;
        rt[7] = RTN_UNICAST;
        m.raw(&rt);
        if len > 0 {
            m.attr(RTA_DST, &ip_bytes(&dst));
        }
        if let Some(gw) = gateway {
            m.attr(RTA_GATEWAY, &ip_bytes(&gw));
        }
        m.attr(RTA_OIF, &oif.to_ne_bytes());
        if let Some(mtu) = mtu {
            m.nest(RTA_METRICS).attr(RTAX_MTU, &mtu.to_ne_bytes()).end();
        }
        self.request(m).map(drop)
    }

    /// The main table's routes of one family.
    pub fn routes(&mut self, v6: bool) -> io::Result<Vec<Route>> {
        let mut m = Msg::new(RTM_GETROUTE, NLM_F_DUMP);
        let mut rt = [0u8; 12];
        rt[0] = if v6 { AF_INET6 } else { AF_INET };
        m.raw(&rt);
        let mut out = Vec::new();
        for b in self.request(m)? {
            if b.len() < 12 {
                continue;
            }
            let (family, len, mut table) = (b[0], b[1], u32::from(b[4]));
            let mut dst = None;
            let mut gateway = None;
            let mut oif = None;
            for (ty, d) in attrs(&b, 12) {
                match ty {
                    RTA_DST => dst = ip_from(family, d),
                    RTA_GATEWAY => gateway = ip_from(family, d),
                    RTA_OIF if d.len() == 4 => {
                        oif = Some(u32::from_ne_bytes(d.try_into().unwrap()))
                    }
                    RTA_TABLE if d.len() == 4 => table = u32::from_ne_bytes(d.try_into().unwrap()),
                    _ => {}
                }
            }
            if table != u32::from(RT_TABLE_MAIN) {
                continue;
            }
            let unspecified = if v6 { IpAddr::from([0u8; 16]) } else { IpAddr::from([0u8; 4]) };
            out.push(Route { dst: (dst.unwrap_or(unspecified), len), gateway, oif });
        }
        Ok(out)
    }
}

fn parse_link(b: &[u8]) -> Option<Link> {
    if b.len() < 16 {
        return None;
    }
    let index = i32::from_ne_bytes(b[4..8].try_into().ok()?) as u32;
    let flags = u32::from_ne_bytes(b[8..12].try_into().ok()?);
    let mut link =
        Link { index, name: String::new(), mac: [0; 6], mtu: 0, up: flags & IFF_UP != 0 };
    for (ty, d) in attrs(b, 16) {
        match ty {
            IFLA_IFNAME => {
                link.name =
                    String::from_utf8_lossy(d.split(|c| *c == 0).next().unwrap_or(d)).into_owned()
            }
            IFLA_ADDRESS if d.len() == 6 => link.mac.copy_from_slice(d),
            IFLA_MTU if d.len() == 4 => link.mtu = u32::from_ne_bytes(d.try_into().ok()?),
            _ => {}
        }
    }
    Some(link)
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_padded_and_nested_lengths_cover_their_children() {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_ACK);
        m.raw(&ifinfo(0, 0, 0)).attr(IFLA_IFNAME, &cstr("abc")).nest(IFLA_LINKINFO);
        m.attr(IFLA_INFO_KIND, b"veth").end();
        let b = m.finish(7);
        assert!(b.len().is_multiple_of(4));
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize, b.len());
        let a = attrs(&b, 32);
        assert_eq!(a[0], (IFLA_IFNAME, &b"abc\0"[..]));
        assert_eq!(a[1].0, IFLA_LINKINFO);
        assert_eq!(attrs(a[1].1, 0), vec![(IFLA_INFO_KIND, &b"veth"[..])]);
    }
}
