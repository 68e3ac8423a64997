//! The XDP program answering the client itself (xdp/reply.h): a service
//! without endpoints rejects (TCP RST, ICMP / ICMPv6 port unreachable) unless
//! it says drop, and a packet too big for the tunnel gets an ICMP
//! fragmentation needed / packet too big with the MTU left for it; both under
//! a per-CPU rate limit. Whole reply frames are compared. Privileged tier:
//! needs root and BPF.
mod common;

use common::*;
use lb::{
    abi::Counter,
    model::{NoEndpoints, Proto},
};
use testkit::packet::{tcp_flags, Frame};

/// The client's frame as the reply's skeleton: addresses and MACs swapped.
fn back(v6: bool) -> Frame {
    let f = Frame::eth(LB_MAC, ROUTER_MAC).ip(vip(v6), client(v6));
    if v6 {
        f
    } else {
        f.df()
    }
}

fn rst(v6: bool, seq: u32, ack: Option<u32>) -> Frame {
    let f = back(v6).tcp(80, CLIENT_PORT).seq(seq).window(0).flags(tcp_flags::RST);
    match ack {
        Some(a) => f.ack_seq(a).ack(),
        None => f,
    }
}

/// A UDP datagram to VIP:53 with `len` bytes of payload.
fn dns(v6: bool, len: usize) -> Frame {
    Frame::eth(ROUTER_MAC, LB_MAC)
        .ip(client(v6), vip(v6))
        .udp(CLIENT_PORT, 53)
        .payload(&vec![7; len])
}

/// An ICMP(v6) error about `about` (its IP packet, the first 128 bytes at
/// most, rounded down to 4).
fn icmp_error(
    v6: bool,
    v4_type_code: (u8, u8),
    v6_type_code: (u8, u8),
    rest: u32,
    about: &Frame,
) -> Frame {
    let l3 = about.l3().build().len();
    let quote = l3.min(128) & !3;
    let f = if v6 {
        back(v6).icmp6(v6_type_code.0, v6_type_code.1, rest)
    } else {
        back(v6).icmp4(v4_type_code.0, v4_type_code.1, rest)
    };
    f.inner(about.l3()).quote_len(quote)
}

fn port_unreachable(v6: bool, about: &Frame) -> Frame {
    icmp_error(v6, (3, 3), (1, 4), 0, about)
}

fn empty_services() -> Vec<lb::model::Service> {
    let mut out = Vec::new();
    for v6 in BOTH {
        let mut web = web(v6);
        web.backends.clear();
        out.push(web);
        let name = if v6 { "dns6" } else { "dns4" };
        out.push(service(name, vip(v6), 53, Proto::Udp, Vec::new()));
    }
    out
}

#[test]
fn service_without_endpoints_rejects() {
    with_lab("reject", |lab| {
        lab.apply(&empty_services());
        let mut cases = Vec::new();
        for v6 in BOTH {
            let f = fam(v6);
            let reject = |name: String, input: &Frame, reply: &Frame| {
                Case::of(name, input).out(XDP_TX, reply, Counter::OkReject as u32)
            };
            cases.push(reject(
                format!("{f} SYN: RST+ACK acking the SYN"),
                &syn(v6, CLIENT_PORT),
                &rst(v6, 0, Some(1001)),
            ));
            cases.push(reject(
                format!("{f} ACK: RST at its ack number"),
                &ack(v6, CLIENT_PORT),
                &rst(v6, 5001, None),
            ));
            let data = Frame::eth(ROUTER_MAC, LB_MAC)
                .ip(client(v6), vip(v6))
                .tcp(CLIENT_PORT, 80)
                .seq(7000)
                .flags(tcp_flags::PSH | tcp_flags::FIN)
                .payload(&[1; 10]);
            cases.push(reject(
                format!("{f} data + FIN without ACK: acks data and FIN"),
                &data,
                &rst(v6, 0, Some(7011)),
            ));
            let opts = syn(v6, CLIENT_PORT).tcp_options(&[2, 4, 5, 0xb4]);
            cases.push(reject(
                format!("{f} SYN with TCP options: a bare RST"),
                &opts,
                &rst(v6, 0, Some(1001)),
            ));
            cases.push(
                Case::of(format!("{f} RST: never answered"), &syn(v6, CLIENT_PORT).rst())
                    .drop(Counter::DropNoBackend),
            );
            let small = dns(v6, 20);
            cases.push(reject(
                format!("{f} UDP: port unreachable quoting all of it"),
                &small,
                &port_unreachable(v6, &small),
            ));
            let big = dns(v6, 400);
            cases.push(reject(
                format!("{f} UDP: port unreachable quoting 128 bytes"),
                &big,
                &port_unreachable(v6, &big),
            ));
            let tagged = syn(v6, CLIENT_PORT).vlan(7);
            let mut want = rst(v6, 0, Some(1001));
            want = want.vlan(7);
            cases.push(reject(format!("{f} 802.1Q SYN: tag kept"), &tagged, &want));
        }
        let opts = syn(false, CLIENT_PORT).ip_options(&[1, 1, 1, 0]);
        cases.push(Case::of("v4 SYN with IP options: RST without them", &opts).out(
            XDP_TX,
            &rst(false, 0, Some(1001)),
            Counter::OkReject as u32,
        ));
        lab.check(&cases);
    });
}

#[test]
fn service_without_endpoints_may_drop_instead() {
    with_lab("nobe-drop", |lab| {
        let services: Vec<_> = empty_services()
            .into_iter()
            .map(|mut s| {
                s.no_endpoints = NoEndpoints::Drop;
                s
            })
            .collect();
        lab.apply(&services);
        let mut cases = Vec::new();
        for v6 in BOTH {
            cases.push(
                Case::of(format!("{} SYN", fam(v6)), &syn(v6, CLIENT_PORT))
                    .drop(Counter::DropNoBackend),
            );
            cases.push(
                Case::of(format!("{} UDP", fam(v6)), &dns(v6, 20)).drop(Counter::DropNoBackend),
            );
        }
        lab.check(&cases);
    });
}

#[test]
fn replies_are_rate_limited() {
    with_lab_loaded(
        "reply-rate",
        |o| {
            o.reply_rate = 1;
            o.reply_burst = 2;
        },
        |lab| {
            lab.apply(&empty_services());
            let reply = rst(false, 0, Some(1001));
            let tx = |n| {
                Case::of(format!("SYN {n}: answered"), &syn(false, CLIENT_PORT)).out(
                    XDP_TX,
                    &reply,
                    Counter::OkReject as u32,
                )
            };
            let limited = |n| {
                Case::of(format!("SYN {n}: over the limit"), &syn(false, CLIENT_PORT))
                    .drop(Counter::DropReplyLimit)
            };
            // A burst of 2, then one a second: the third within the second is dropped.
            lab.check(&[tx(1), tx(2), limited(3), limited(4)]);
        },
    );
    with_lab_loaded(
        "reply-off",
        |o| o.reply_rate = 0,
        |lab| {
            lab.apply(&empty_services());
            lab.check(&[
                Case::of("no replies at all", &dns(true, 20)).drop(Counter::DropReplyLimit)
            ]);
        },
    );
}

/// A TCP segment to VIP:80 whose IP packet is `l3` bytes long.
fn segment(v6: bool, l3: usize) -> Frame {
    let hdr = if v6 { 40 + 20 } else { 20 + 20 };
    ack(v6, CLIENT_PORT).payload(&vec![0x5a; l3 - hdr])
}

#[test]
fn too_big_for_the_tunnel_answers_with_the_mtu_left() {
    with_lab("toobig", |lab| {
        lab.apply(&[web(false), web(true)]);
        let mut cases = Vec::new();
        // lb0's MTU is 1600; Geneve over IPv4 with the DSR4 option adds
        // 20 + 8 + 8 + 12 = 48 bytes, over IPv6 with DSR6 40 + 8 + 8 + 24 = 80.
        for (v6, mtu) in [(false, 1552u32), (true, 1520)] {
            let f = fam(v6);
            let big = segment(v6, mtu as usize + 1);
            let want = icmp_error(v6, (3, 4), (2, 0), mtu, &big);
            let too_big = |name: String| {
                Case::of(name, &big).out(XDP_TX, &want, Counter::OkIcmpTooBig as u32)
            };
            // First from bpf_fib_lookup's answer, then from the next-hop
            // cache a fitting packet filled.
            cases.push(too_big(format!("{f} {} bytes, route looked up", mtu + 1)));
            let fits = segment(v6, mtu as usize);
            let (dsr, _) = lab.expect_dsr(&fits, 80);
            cases.push(Case::of(format!("{f} {mtu} bytes fit"), &fits).tx(&dsr));
            cases.push(too_big(format!("{f} {} bytes, cached route", mtu + 1)));
        }
        lab.check(&cases);
    });
}
