//! Malformed and foreign packets against the compiled xlb_xdp: every one is
//! passed unchanged or dropped, always under exactly one counted reason, and
//! never crashes or corrupts. Privileged tier: needs root and BPF.
mod common;

use common::*;
use lb::abi::Counter;
use testkit::packet::Frame;

/// The VIP SYN cut at every length BPF_PROG_TEST_RUN accepts (it refuses
/// frames shorter than an Ethernet header): first as is (the IP length then
/// claims more than the frame), then with the IP length fixed up to the cut
/// (so the TCP header is what runs short).
#[test]
fn truncated_at_every_length() {
    with_lab("truncated", |lab| {
        lab.apply(&[web(false), web(true)]);
        let mut cases = Vec::new();
        for v6 in BOTH {
            let full = syn(v6, CLIENT_PORT).build();
            let ip_hdr = if v6 { 40 } else { 20 };
            for n in 14..full.len() {
                let ip_complete = n >= 14 + ip_hdr;
                let reason = if ip_complete { Counter::DropBadLen } else { Counter::DropTruncated };
                cases.push(
                    Case::raw(format!("{} cut to {n} bytes", fam(v6)), full[..n].to_vec())
                        .drop(reason),
                );
                if ip_complete {
                    let l3 = (n - 14) as u16;
                    let f = if v6 {
                        syn(v6, CLIENT_PORT).payload_len(l3 - 40)
                    } else {
                        syn(v6, CLIENT_PORT).total_len(l3)
                    };
                    let bytes = f.build()[..n].to_vec();
                    cases.push(
                        Case::raw(format!("{} cut to {n} bytes, IP length {l3}", fam(v6)), bytes)
                            .drop(Counter::DropTruncated),
                    );
                }
            }
            // A VLAN tag cut in half.
            let tagged = syn(v6, CLIENT_PORT).vlan(7).build();
            cases.push(
                Case::raw(format!("{} 802.1Q tag cut", fam(v6)), tagged[..16].to_vec())
                    .drop(Counter::DropTruncated),
            );
        }
        lab.check(&cases);
    });
}

#[test]
fn bad_ipv4_header_lengths() {
    with_lab("badihl", |lab| {
        lab.apply(&[web(false)]);
        let s = || syn(false, CLIENT_PORT);
        lab.check(&[
            Case::of("IHL 4", &s().ihl(4)).drop(Counter::DropBadIhl),
            Case::of("IHL 0", &s().ihl(0)).drop(Counter::DropBadIhl),
            Case::of("IHL 15 past the frame", &s().ihl(15)).drop(Counter::DropBadIhl),
            Case::of("total length below the header", &s().total_len(19)).drop(Counter::DropBadLen),
            Case::of("total length past the frame", &s().total_len(41)).drop(Counter::DropBadLen),
            Case::of("v6 payload length past the frame", &syn(true, CLIENT_PORT).payload_len(21))
                .drop(Counter::DropBadLen),
        ]);
    });
}

/// The IP version field must agree with the EtherType (the kernel checks it
/// on input; a frame that lies is not forwarded to a backend).
#[test]
fn ip_version_disagreeing_with_the_ethertype_is_dropped() {
    with_lab("version", |lab| {
        lab.apply(&[web(false), web(true)]);
        let mut cases = Vec::new();
        for (v6, wrong) in [(false, 6u8), (false, 5), (true, 4), (true, 0)] {
            let mut bytes = syn(v6, CLIENT_PORT).build();
            bytes[14] = (wrong << 4) | (bytes[14] & 0x0f);
            cases.push(
                Case::raw(format!("{} with IP version {wrong}", fam(v6)), bytes)
                    .drop(Counter::DropBadVersion),
            );
        }
        // Behind a VLAN tag too.
        let mut tagged = syn(false, CLIENT_PORT).vlan(7).build();
        tagged[18] = (6 << 4) | (tagged[18] & 0x0f);
        cases.push(Case::raw("v4 802.1Q with IP version 6", tagged).drop(Counter::DropBadVersion));
        lab.check(&cases);
    });
}

/// The L4 length fields the kernel checks on input (tcp_v4_rcv /
/// tcp_v6_rcv: a data offset of at least 5 words within the packet;
/// __udp4_lib_rcv / udpv6_rcv: a UDP length of at least 8 within it): a VIP
/// packet that fails them is dropped, not forwarded to a backend.
#[test]
fn l4_length_fields_are_checked() {
    with_lab("l4len", |lab| {
        let mut dns4 = service("dns4", vip(false), 53, lb::model::Proto::Udp, web(false).backends);
        let mut dns6 = service("dns6", vip(true), 53, lb::model::Proto::Udp, web(true).backends);
        dns4.backends[0].port = 53;
        dns6.backends[0].port = 53;
        lab.apply(&[web(false), web(true), dns4, dns6]);
        let mut cases = Vec::new();
        for v6 in BOTH {
            let f = fam(v6);
            let udp = || {
                Frame::eth(ROUTER_MAC, LB_MAC)
                    .ip(client(v6), vip(v6))
                    .udp(CLIENT_PORT, 53)
                    .payload(&[1; 12])
            };
            for (what, bad) in [
                ("TCP data offset 4", syn(v6, CLIENT_PORT).data_offset(4)),
                ("TCP data offset 0", syn(v6, CLIENT_PORT).data_offset(0)),
                ("TCP data offset past the packet", syn(v6, CLIENT_PORT).data_offset(6)),
                ("UDP length 7", udp().udp_len(7)),
                ("UDP length 0", udp().udp_len(0)),
                ("UDP length past the packet", udp().udp_len(8 + 13)),
            ] {
                cases.push(Case::of(format!("{f} {what}"), &bad).drop(Counter::DropBadL4Len));
            }
        }
        lab.check(&cases);
        // Within bounds they are forwarded: options in the header, a UDP
        // length shorter than the IP payload (the kernel trims the rest).
        for v6 in BOTH {
            let opts = syn(v6, CLIENT_PORT).tcp_options(&[1, 1, 1, 0]);
            let (verdict, _) = lab.run(&opts.build());
            assert_eq!(verdict, XDP_TX, "{} SYN with 4 bytes of options", fam(v6));
        }
    });
}

#[test]
fn foreign_protocols_are_passed() {
    with_lab("foreign", |lab| {
        lab.apply(&[web(false), web(true)]);
        let mut cases = Vec::new();
        for v6 in BOTH {
            let gre = Frame::eth(ROUTER_MAC, LB_MAC)
                .ip(client(v6), vip(v6))
                .ip_proto(47)
                .payload(&[0; 8]);
            cases.push(
                Case::of(format!("{} GRE to the VIP", fam(v6)), &gre).pass(Counter::PassL4Proto),
            );
            let dccp = Frame::eth(ROUTER_MAC, LB_MAC)
                .ip(client(v6), vip(v6))
                .ip_proto(33)
                .payload(&[0; 16]);
            cases.push(
                Case::of(format!("{} DCCP to the VIP", fam(v6)), &dccp).pass(Counter::PassL4Proto),
            );
        }
        let echo =
            Frame::eth(ROUTER_MAC, LB_MAC).ip(client(false), vip(false)).icmp4(8, 0, 0x0001_0001);
        cases.push(Case::of("v4 ping to the VIP", &echo).pass(Counter::PassL4Proto));
        let echo6 =
            Frame::eth(ROUTER_MAC, LB_MAC).ip(client(true), vip(true)).icmp6(128, 0, 0x0001_0001);
        cases.push(Case::of("v6 ping to the VIP", &echo6).pass(Counter::PassL4Proto));
        let esp = Frame::eth(ROUTER_MAC, LB_MAC)
            .ip(client(true), vip(true))
            .ip_proto(50)
            .payload(&[0; 16]);
        cases.push(Case::of("v6 ESP", &esp).pass(Counter::PassIpv6Ext));
        let mut long = syn(true, CLIENT_PORT);
        for _ in 0..5 {
            long = long.dest_opts(&[]);
        }
        cases.push(Case::of("v6 chain of 5 extension headers", &long).pass(Counter::PassIpv6Ext));
        let arp = Frame::eth(ROUTER_MAC, [0xff; 6]).arp_request(
            ROUTER_MAC,
            "10.0.0.1".parse().unwrap(),
            LB_V4,
        );
        cases.push(Case::of("ARP request", &arp).pass(Counter::PassNotIp));
        let lldp = Frame::eth(ROUTER_MAC, [0x01, 0x80, 0xc2, 0, 0, 0x0e])
            .ethertype(0x88cc)
            .payload(&[0; 32]);
        cases.push(Case::of("LLDP", &lldp).pass(Counter::PassNotIp));
        lab.check(&cases);
    });
}
