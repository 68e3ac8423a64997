//! The tc NAT (lb/bpf/nat.h, ctx.h's tc half) on packets of real sockets:
//! a local socket's TCP and UDP packets leave a veth as CHECKSUM_PARTIAL
//! (the checksum field holds the pseudo-header's sum; the device or the
//! stack completes it later), the case BPF_PROG_TEST_RUN cannot make (its
//! skb is CHECKSUM_NONE). xlb_tc_egress on the veth rewrites their source
//! as a reply's reverse NAT does (an xlb_dsr_nat entry per flow): address
//! and port, address only, port only, IPv4 and IPv6. An AF_PACKET socket on
//! the veth sees each packet as it leaves (after tc egress, before any
//! checksum completion): its field must be the pseudo-header sum of the
//! rewritten addresses, or the packet would leave with a wrong checksum.
//! Privileged tier: needs root and BPF; fails (never skips) without them.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use lb::{
    abi::{self, DsrNatEntry, FlowKey},
    loader::{Dataplane, LoadOptions},
    maps::Maps,
};
use testkit::{netns::NamedNetns, pins::PinDir};

const POD_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const POD_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x244, 1, 0, 0, 0, 0x11);
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x2, 0, 0, 0, 0, 0x10);
const VIP_V4: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
const CLIENT_MAC: &str = "02:00:00:00:00:01";

/// An AF_PACKET socket on one interface (every packet, both directions).
struct Tap(i32);

impl Tap {
    fn open(iface: &str) -> Tap {
        let ifindex = testkit::netns::ifindex(iface).expect("the veth's ifindex");
        // SAFETY: plain socket calls on a fresh descriptor and a zeroed
        // sockaddr_ll of the right size.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                (libc::ETH_P_ALL as u16).to_be() as i32,
            );
            assert!(fd >= 0, "socket(AF_PACKET): {}", std::io::Error::last_os_error());
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            sll.sll_ifindex = ifindex as i32;
            let r = libc::bind(
                fd,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(r, 0, "bind(AF_PACKET): {}", std::io::Error::last_os_error());
            Tap(fd)
        }
    }

    /// The first frame within a second for which `pick` is true.
    fn wait(&self, pick: &dyn Fn(&[u8]) -> bool) -> Vec<u8> {
        let t0 = Instant::now();
        let mut buf = vec![0u8; 4096];
        while t0.elapsed() < Duration::from_secs(1) {
            // SAFETY: buf outlives the call and its length is passed.
            let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 && pick(&buf[..n as usize]) {
                return buf[..n as usize].to_vec();
            }
            if n <= 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        panic!("no matching frame left the veth within a second");
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.0) };
    }
}

/// A TCP socket bound to `from` that has sent its SYN to `to` (a
/// non-blocking connect; closed on drop).
struct Syn(i32);

impl Syn {
    fn send(from: SocketAddr, to: SocketAddr) -> Syn {
        // SAFETY: sockaddr_in / sockaddr_in6 zeroed and filled, passed with
        // their own sizes; the descriptor is ours.
        unsafe {
            let fam = if from.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
            let fd = libc::socket(fam, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let one: i32 = 1;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                &one as *const _ as *const libc::c_void,
                4,
            );
            let call =
                |a: SocketAddr, f: unsafe extern "C" fn(i32, *const libc::sockaddr, u32) -> i32| {
                    match a {
                        SocketAddr::V4(a) => {
                            let mut sa: libc::sockaddr_in = std::mem::zeroed();
                            sa.sin_family = libc::AF_INET as u16;
                            sa.sin_port = a.port().to_be();
                            sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                            f(
                                fd,
                                &sa as *const _ as *const libc::sockaddr,
                                std::mem::size_of_val(&sa) as u32,
                            )
                        }
                        SocketAddr::V6(a) => {
                            let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
                            sa.sin6_family = libc::AF_INET6 as u16;
                            sa.sin6_port = a.port().to_be();
                            sa.sin6_addr.s6_addr = a.ip().octets();
                            f(
                                fd,
                                &sa as *const _ as *const libc::sockaddr,
                                std::mem::size_of_val(&sa) as u32,
                            )
                        }
                    }
                };
            assert_eq!(
                call(from, libc::bind),
                0,
                "bind {from}: {}",
                std::io::Error::last_os_error()
            );
            // EINPROGRESS: the SYN is on its way
            call(to, libc::connect);
            Syn(fd)
        }
    }
}

impl Drop for Syn {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.0) };
    }
}

fn abi_key(src: SocketAddr, dst: SocketAddr, proto: u8) -> FlowKey {
    let (saddr, family) = abi::addr_to_abi(src.ip());
    let (daddr, _) = abi::addr_to_abi(dst.ip());
    FlowKey {
        saddr,
        daddr,
        sport: src.port().to_be(),
        dport: dst.port().to_be(),
        proto,
        family,
        pad: 0,
    }
}

/// One's-complement sum of `b` as 16-bit big-endian words, added to `sum`.
fn sum16(mut sum: u32, b: &[u8]) -> u32 {
    for c in b.chunks(2) {
        sum += u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0));
    }
    sum
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// (source, destination, protocol, L4 bytes) of an Ethernet frame.
fn dissect(f: &[u8]) -> Option<(SocketAddr, SocketAddr, u8, &[u8])> {
    if f.len() < 14 + 40 + 8 {
        return None;
    }
    let (src, dst, proto, l4): (IpAddr, IpAddr, u8, &[u8]) =
        match u16::from_be_bytes([f[12], f[13]]) {
            0x0800 => {
                let ip = &f[14..];
                let hl = usize::from(ip[0] & 0xf) * 4;
                let tot = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
                let a = |o: usize| IpAddr::from(<[u8; 4]>::try_from(&ip[o..o + 4]).unwrap());
                (a(12), a(16), ip[9], &ip[hl..tot])
            }
            0x86dd => {
                let ip = &f[14..];
                let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
                let a = |o: usize| IpAddr::from(<[u8; 16]>::try_from(&ip[o..o + 16]).unwrap());
                (a(8), a(24), ip[6], &ip[40..40 + plen])
            }
            _ => return None,
        };
    if proto != 6 && proto != 17 {
        return None;
    }
    let port = |o: usize| u16::from_be_bytes([l4[o], l4[o + 1]]);
    Some((SocketAddr::new(src, port(0)), SocketAddr::new(dst, port(2)), proto, l4))
}

/// The pseudo-header's sum, folded, as a CHECKSUM_PARTIAL field holds it.
fn pseudo_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u16 {
    let octets = |a: IpAddr| match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let s = sum16(sum16(0, &octets(src)), &octets(dst));
    fold(s + u32::from(proto) + (len as u32 & 0xffff) + (len as u32 >> 16))
}

/// Sends one packet from `from` to `to` by a real socket and checks it
/// leaves as from `as_from`, with the pseudo-header sum of the rewritten
/// header in its checksum field.
fn check(
    tap: &Tap,
    maps: &mut Maps,
    udp: bool,
    from: SocketAddr,
    to: SocketAddr,
    as_from: SocketAddr,
) {
    let proto = if udp { 17 } else { 6 };
    let (vaddr, family) = abi::addr_to_abi(as_from.ip());
    let entry = DsrNatEntry {
        vaddr,
        vport: as_from.port().to_be(),
        family,
        pad: 0,
        pad2: 0,
        created_ns: 1,
    };
    maps.dsr_nat.insert(abi_key(to, from, proto), entry, 0).expect("writing the xlb_dsr_nat entry");
    let what = format!("{} {from} -> {to} as from {as_from}", if udp { "UDP" } else { "TCP" });
    // Kept until the frame is seen: a TCP SYN is retried, not lost.
    let _sock: Box<dyn std::any::Any> = if udp {
        let s = UdpSocket::bind(from).expect("binding the UDP socket");
        s.send_to(b"reply from the endpoint", to).expect("sendto");
        Box::new(s)
    } else {
        Box::new(Syn::send(from, to))
    };
    let frame = tap.wait(&|f| {
        dissect(f).is_some_and(|(s, d, p, _)| p == proto && d == to && s.port() == as_from.port())
    });
    let (src, dst, _, l4) = dissect(&frame).unwrap();
    assert_eq!((src, dst), (as_from, to), "{what}: the rewritten header");
    let field = u16::from_be_bytes(if udp { [l4[6], l4[7]] } else { [l4[16], l4[17]] });
    let want = pseudo_sum(src.ip(), dst.ip(), proto, l4.len());
    assert_eq!(
        field, want,
        "{what}: the CHECKSUM_PARTIAL field is {field:#06x}, the rewritten pseudo-header sums to \
         {want:#06x} (frame {frame:02x?})"
    );
}

#[test]
fn local_sockets_partial_checksums_stay_right_through_the_nat() {
    testkit::require_root("tc NAT on real sockets");
    let ns = NamedNetns::create("tcnat").expect("creating the namespace");
    ns.veth("eth0", "peer").expect("the veth pair");
    for args in [
        vec!["addr", "add", "10.244.1.11/24", "dev", "eth0"],
        vec!["-6", "addr", "add", "2001:db8:244:1::11/64", "dev", "eth0", "nodad"],
        vec!["route", "add", "192.0.2.0/24", "dev", "eth0"],
        vec!["-6", "route", "add", "2001:db8:2::/64", "dev", "eth0"],
        vec!["neigh", "add", "192.0.2.10", "lladdr", CLIENT_MAC, "dev", "eth0", "nud", "permanent"],
        vec!["-6", "neigh", "add", "2001:db8:2::10", "lladdr", CLIENT_MAC, "dev", "eth0"],
    ] {
        ns.ip(&args).unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    }
    let pin = PinDir::new("tcnatsock");
    ns.run_in(|| {
        let mut dp = Dataplane::load(&LoadOptions::small(pin.path()))
            .unwrap_or_else(|e| panic!("loading the datapath: {e:?}"));
        dp.attach_tc("eth0").unwrap_or_else(|e| panic!("attaching to the veth: {e:?}"));
        let mut maps = Maps::open(pin.path()).unwrap_or_else(|e| panic!("opening maps: {e:?}"));
        let tap = Tap::open("eth0");
        let mut port = 8000;
        for (pod, client, vip) in [
            (IpAddr::from(POD_V4), IpAddr::from(CLIENT_V4), IpAddr::from(VIP_V4)),
            (IpAddr::from(POD_V6), IpAddr::from(CLIENT_V6), IpAddr::from(VIP_V6)),
        ] {
            for udp in [false, true] {
                // address and port, address only, port only
                for (as_ip, svc_port) in [(vip, Some(80)), (vip, None), (pod, Some(81))] {
                    port += 1;
                    let from = SocketAddr::new(pod, port);
                    let as_from = SocketAddr::new(as_ip, svc_port.unwrap_or(port));
                    check(&tap, &mut maps, udp, from, SocketAddr::new(client, 40000), as_from);
                }
            }
        }
    })
    .expect("running in the namespace");
}
