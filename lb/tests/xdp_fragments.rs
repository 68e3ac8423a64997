//! IPv4 fragments to a frontend are load-balanced (xdp/frag.h): the first
//! fragment's ports are recorded by (source, destination, IP id, protocol),
//! later fragments follow it to the same backend with their address
//! translated only; a later fragment without a recorded first is passed and
//! counted. IPv6 fragments, fragments of other protocols and of IPIP
//! services are passed as before. Privileged tier: needs root and BPF.
mod common;

use std::net::{IpAddr, SocketAddr};

use common::*;
use lb::{
    abi::{self, Counter},
    model::{Encap, Proto},
};
use testkit::packet::{proto, Frame, GeneveOpt};

const ID: u16 = 0x4242;

/// A UDP service on VIP:53 with an endpoint on each of nodes 1..=3.
fn dns() -> lb::model::Service {
    let backends = (1..=3).map(|n| backend(pod(n, 1, false), node(n, false))).collect();
    service("dns4", vip(false), 53, Proto::Udp, backends)
}

/// The first fragment of a 2008-byte UDP datagram to `dport` (MF, offset 0).
fn first(dport: u16, id: u16) -> Frame {
    Frame::eth(ROUTER_MAC, LB_MAC)
        .ip(client(false), vip(false))
        .ip_id(id)
        .mf()
        .udp(CLIENT_PORT, dport)
        .udp_len(2008)
        .payload(&[0x11; 1000])
}

/// A later fragment of it (no L4 header): `offset` in 8-byte units.
fn later(id: u16, offset: u16, more: bool) -> Frame {
    let f = Frame::eth(ROUTER_MAC, LB_MAC)
        .ip(client(false), vip(false))
        .ip_id(id)
        .frag_offset(offset)
        .ip_proto(proto::UDP)
        .payload(&[0x22; 504]);
    if more {
        f.mf()
    } else {
        f
    }
}

/// `f` as the load balancer sends it to endpoint `ep` on node `n`: Geneve,
/// DSR option VIP:53, the flow hash of the datagram's 5-tuple; a later
/// fragment gets its address translated only.
fn to_backend(f: &Frame, n: u8, ep: SocketAddr, is_first: bool) -> Frame {
    let hash = flow_hash(client(false), vip(false), CLIENT_PORT, 53, 17);
    let inner =
        if is_first { f.clone().dst(ep.ip()).dport(ep.port()) } else { f.clone().dst(ep.ip()) };
    geneve_to(n, false, hash, GeneveOpt::dsr(SocketAddr::new(vip(false), 53)), &inner)
}

#[test]
fn later_fragments_follow_their_first_to_the_same_backend() {
    with_lab("frag-follow", |lab| {
        lab.apply(&[dns()]);
        let hash = flow_hash(client(false), vip(false), CLIENT_PORT, 53, 17);
        let (ep, node) = lab.maglev_pick(vip(false), 53, Proto::Udp, hash);
        let n = node_index(node);
        let f1 = first(53, ID);
        let (f2, f3) = (later(ID, 126, true), later(ID, 189, false));
        lab.check(&[
            Case::of("first fragment: DNAT'd, ports recorded", &f1)
                .tx(&to_backend(&f1, n, ep, true)),
            Case::of("middle fragment: same backend", &f2).tx(&to_backend(&f2, n, ep, false)),
            Case::of("last fragment: same backend", &f3).tx(&to_backend(&f3, n, ep, false)),
            Case::of("a fragment of another datagram", &later(ID + 1, 126, true))
                .pass(Counter::PassFragUntracked),
        ]);
        let v4 = |a: IpAddr| match a {
            IpAddr::V4(a) => a.octets(),
            IpAddr::V6(_) => unreachable!("IPv4 fragments"),
        };
        let key = abi::FragKey {
            saddr: v4(client(false)),
            daddr: v4(vip(false)),
            id: ID.to_be(),
            proto: 17,
            pad: 0,
        };
        let ports = lab.path.maps().frag4.get(&key, 0).expect("the first fragment's entry");
        assert_eq!((u16::from_be(ports.sport), u16::from_be(ports.dport)), (CLIENT_PORT, 53));
    });
}

#[test]
fn fragments_not_followed_are_passed_and_counted() {
    with_lab("frag-pass", |lab| {
        let mut ipip = service("ipip4", vip(false), 54, Proto::Udp, dns().backends);
        ipip.encap = Encap::Ipip;
        lab.apply(&[dns(), ipip, web(true)]);
        let icmp_first = Frame::eth(ROUTER_MAC, LB_MAC)
            .ip(client(false), vip(false))
            .mf()
            .icmp4(8, 0, 1)
            .payload(&[0; 64]);
        lab.check(&[
            Case::of("later fragment, first never seen", &later(7, 126, true))
                .pass(Counter::PassFragUntracked),
            Case::of("first fragment, not a frontend", &first(99, 8))
                .pass(Counter::PassNotFrontendFiltered),
            Case::of("its later fragment", &later(8, 126, false)).pass(Counter::PassFragUntracked),
            Case::of("first fragment of an IPIP service", &first(54, 9))
                .pass(Counter::PassFragment),
            Case::of("its later fragment", &later(9, 126, false)).pass(Counter::PassFragUntracked),
            Case::of("ICMP first fragment", &icmp_first).pass(Counter::PassFragment),
            Case::of("v6 first fragment", &syn(true, CLIENT_PORT).fragment6(0, true, 7))
                .pass(Counter::PassFragment),
            Case::of("v6 later fragment", &syn(true, CLIENT_PORT).fragment6(100, false, 7))
                .pass(Counter::PassFragment),
            // RFC 1858: a first fragment must hold the whole TCP header.
            Case::of(
                "v4 first fragment cutting the TCP header",
                &syn(false, CLIENT_PORT).mf().total_len(20 + 8),
            )
            .drop(Counter::DropTruncated),
        ]);
    });
}
