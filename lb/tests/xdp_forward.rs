//! XDP forwarding, PKTGEN / SETUP / CHECK against the compiled xlb_xdp in the
//! kernel: which packets are load-balanced, how they leave (Geneve with the
//! DSR option, IPIP, local DNAT) and what is counted. Privileged tier: needs
//! root and BPF; each test runs in its own network namespace (common::with_lab).
mod common;

use std::net::{IpAddr, SocketAddr};

use common::*;
use lb::{
    abi::Counter,
    model::{Affinity, Cidr, Encap, Frontend, FrontendKind, Proto},
};
use testkit::packet::{bench, Frame, GeneveOpt};

#[test]
fn not_a_frontend_passes_unchanged() {
    with_lab("notfe", |lab| {
        lab.apply(&[web(false), web(true)]);
        let mut cases = Vec::new();
        for v6 in BOTH {
            let other: IpAddr = if v6 {
                "2001:db8:100::99".parse().unwrap()
            } else {
                "10.100.0.99".parse().unwrap()
            };
            cases.push(
                Case::of(format!("{} other address", fam(v6)), &syn(v6, CLIENT_PORT).dst(other))
                    .pass(Counter::PassNotFrontendFiltered),
            );
            cases.push(
                Case::of(format!("{} VIP, other port", fam(v6)), &syn(v6, CLIENT_PORT).dport(81))
                    .pass(Counter::PassNotFrontendFiltered),
            );
            cases.push(
                Case::of(
                    format!("{} VIP, UDP on a TCP port", fam(v6)),
                    &Frame::eth(ROUTER_MAC, LB_MAC).ip(client(v6), vip(v6)).udp(CLIENT_PORT, 80),
                )
                .pass(Counter::PassNotFrontendFiltered),
            );
        }
        let nonvip = bench::frames().into_iter().find(|(n, _)| *n == "tcp_nonvip.bin").unwrap().1;
        cases
            .push(Case::of("bench tcp_nonvip.bin", &nonvip).pass(Counter::PassNotFrontendFiltered));
        lab.check(&cases);
    });
}

#[test]
fn vip_syn_is_encapsulated_to_the_backend_and_its_ack_follows() {
    with_lab("syn", |lab| {
        lab.apply(&[web(false), web(true)]);
        for v6 in BOTH {
            let ep = SocketAddr::new(pod(1, 1, v6), TARGET_PORT);
            let syn = syn(v6, CLIENT_PORT);
            let ack = ack(v6, CLIENT_PORT);
            lab.check(&[
                Case::of(format!("{} SYN", fam(v6)), &syn).tx(&geneve_dsr(1, v6, &syn, 80, ep)),
                Case::of(format!("{} ACK", fam(v6)), &ack).tx(&geneve_dsr(1, v6, &ack, 80, ep)),
            ]);
            let l = lab.listing(if v6 { "web6" } else { "web4" });
            assert_eq!(
                (l.packets, l.new_flows, l.affinity_hits),
                (2, 1, 0),
                "{} service stats",
                fam(v6)
            );
            assert_eq!(l.bytes, syn.build().len() as u64 + ack.build().len() as u64);
            assert_eq!(l.backends.len(), 1);
            assert_eq!(l.backends[0].packets, 2, "{} backend stats", fam(v6));
        }
    });
}

#[test]
fn bench_frames_are_load_balanced() {
    with_lab("bench", |lab| {
        let dns = service(
            "dns",
            vip(false),
            53,
            Proto::Udp,
            vec![backend(pod(2, 1, false), node(2, false))],
        );
        lab.apply(&[web(false), web(true), dns]);
        let frames: std::collections::BTreeMap<_, _> = bench::frames().into_iter().collect();
        let ep = |n, v6| SocketAddr::new(pod(n, 1, v6), TARGET_PORT);
        let mut cases = Vec::new();
        for (name, n, v6, vport) in [
            ("tcp_syn_vip.bin", 1, false, 80),
            ("tcp_ack_vip.bin", 1, false, 80),
            ("udp_vip.bin", 2, false, 53),
            ("tcp6_syn_vip.bin", 1, true, 80),
        ] {
            let f = &frames[name];
            cases.push(Case::of(name, f).tx(&geneve_dsr(n, v6, f, vport, ep(n, v6))));
        }
        lab.check(&cases);
    });
}

#[test]
fn udp_vip_including_zero_checksum() {
    with_lab("udp", |lab| {
        let dns = |v6: bool| {
            let name = if v6 { "dns6" } else { "dns4" };
            service(name, vip(v6), 53, Proto::Udp, vec![backend(pod(2, 1, v6), node(2, v6))])
        };
        lab.apply(&[dns(false), dns(true)]);
        let mut cases = Vec::new();
        for v6 in BOTH {
            let ep = SocketAddr::new(pod(2, 1, v6), TARGET_PORT);
            let q = Frame::eth(ROUTER_MAC, LB_MAC)
                .ip(client(v6), vip(v6))
                .udp(CLIENT_PORT, 53)
                .payload(b"\xbe\xef\x01\x00query");
            cases.push(Case::of(format!("{} UDP", fam(v6)), &q).tx(&geneve_dsr(2, v6, &q, 53, ep)));
            if !v6 {
                // RFC 768: checksum 0 means none; a DNAT must leave it 0.
                let q0 = q.clone().sport(40001).l4_checksum(0);
                cases.push(
                    Case::of("v4 UDP without checksum", &q0).tx(&geneve_dsr(2, v6, &q0, 53, ep)),
                );
            }
        }
        lab.check(&cases);
    });
}

#[test]
fn ipip_encapsulation_leaves_the_inner_packet_untouched() {
    with_lab("ipip", |lab| {
        // IPv4 in IPv4, IPv6 in IPv6, and IPv6 in IPv4 (v6 service, v4 node).
        let mixed = service(
            "mixed",
            "2001:db8:100::2".parse().unwrap(),
            80,
            Proto::Tcp,
            vec![backend(pod(3, 1, true), node(3, false))],
        );
        lab.apply(&[
            with_encap(web(false), Encap::Ipip),
            with_encap(web(true), Encap::Ipip),
            with_encap(mixed, Encap::Ipip),
        ]);
        let mut cases = Vec::new();
        for (name, v6_in, v6_out, n, dst) in [
            ("IPv4 in IPv4", false, false, 1, vip(false)),
            ("IPv6 in IPv6", true, true, 1, vip(true)),
            ("IPv6 in IPv4", true, false, 3, "2001:db8:100::2".parse().unwrap()),
        ] {
            let s = syn(v6_in, CLIENT_PORT).dst(dst);
            let hash = flow_hash(client(v6_in), dst, CLIENT_PORT, 80, 6);
            cases.push(Case::of(name, &s).tx(&s.encap_in(outer_ip(n, v6_out, hash))));
        }
        lab.check(&cases);
    });
}

#[test]
fn backend_on_this_node_is_dnated_and_passed() {
    with_lab("local", |lab| {
        let local = |v6: bool| {
            let name = if v6 { "local6" } else { "local4" };
            service(name, vip(v6), 80, Proto::Tcp, vec![backend(pod(9, 1, v6), lb_addr(v6))])
        };
        lab.apply(&[local(false), local(true)]);
        let mut cases = Vec::new();
        for v6 in BOTH {
            let s = syn(v6, CLIENT_PORT);
            let dnat = s.clone().dst(pod(9, 1, v6)).dport(TARGET_PORT);
            cases.push(Case::of(format!("{} local SYN", fam(v6)), &s).out(
                XDP_PASS,
                &dnat,
                Counter::OkLocalDeliver as u32,
            ));
        }
        lab.check(&cases);
    });
}

/// ICMP errors about a DSR reply (VIP:80 -> client) reach the load balancer
/// addressed to the VIP; they go, untranslated, to the flow's backend node
/// with the endpoint option (xlb_abi.h XLB_GENEVE_OPT_EP4/EP6).
#[test]
fn icmp_errors_follow_their_flow() {
    with_lab("icmp", |lab| {
        lab.apply(&[web(false), web(true)]);
        for v6 in BOTH {
            let ep = SocketAddr::new(pod(1, 1, v6), TARGET_PORT);
            let s = syn(v6, CLIENT_PORT);
            lab.check(&[Case::of(format!("{} SYN opens the flow", fam(v6)), &s)
                .tx(&geneve_dsr(1, v6, &s, 80, ep))]);
            let reply = Frame::new()
                .ip(vip(v6), client(v6))
                .tcp(80, CLIENT_PORT)
                .seq(5000)
                .ack_seq(1001)
                .flags(0x12);
            let router: IpAddr = if v6 { ROUTER_V6.into() } else { ROUTER_V4.into() };
            let icmp = |reply: Frame| {
                let f = Frame::eth(ROUTER_MAC, LB_MAC).ip(router, vip(v6));
                let f = if v6 { f.icmp6_packet_too_big(1280) } else { f.icmp4_frag_needed(1400) };
                f.inner(reply)
            };
            let err = icmp(reply.clone());
            let hash = flow_hash(client(v6), vip(v6), CLIENT_PORT, 80, 6);
            let fwd = geneve_to(1, v6, hash, GeneveOpt::endpoint(ep), &err);
            let stray = icmp(reply.clone().dport(CLIENT_PORT + 1));
            lab.check(&[
                Case::of(format!("{} ICMP error quoting the flow", fam(v6)), &err).out(
                    XDP_TX,
                    &fwd,
                    Counter::OkIcmpForward as u32,
                ),
                Case::of(format!("{} ICMP error quoting no flow", fam(v6)), &stray)
                    .pass(Counter::PassIcmpNoFlow),
            ]);
        }
    });
}

#[test]
fn load_balancer_source_ranges() {
    with_lab("srcrange", |lab| {
        let ranged = |v6: bool, allowed: bool, port: u16| {
            let cidr: Cidr = match (v6, allowed) {
                (false, true) => "192.0.2.0/24",
                (false, false) => "198.51.100.0/24",
                (true, true) => "2001:db8::/64",
                (true, false) => "2001:db8:1::/64",
            }
            .parse()
            .unwrap();
            let name = format!("ranged-{}-{allowed}", fam(v6));
            let mut s = service(
                &name,
                vip(v6),
                port,
                Proto::Tcp,
                vec![backend(pod(1, 1, v6), node(1, v6))],
            );
            s.source_ranges = vec![cidr];
            // The same service's NodePort and externalIP: not filtered
            // (kube-proxy filters the load balancer's ingress IPs only).
            s.frontends.push(Frontend {
                addr: lb_addr(v6),
                port: 30000 + port,
                proto: Proto::Tcp,
                kind: FrontendKind::NodePort,
            });
            s.frontends.push(Frontend {
                addr: vip(v6),
                port: port + 1000,
                proto: Proto::Tcp,
                kind: FrontendKind::ExternalIp,
            });
            s
        };
        lab.apply(&[
            ranged(false, true, 80),
            ranged(false, false, 81),
            ranged(true, true, 80),
            ranged(true, false, 81),
        ]);
        let mut cases = Vec::new();
        for v6 in BOTH {
            let ep = SocketAddr::new(pod(1, 1, v6), TARGET_PORT);
            let ok = syn(v6, CLIENT_PORT);
            cases.push(
                Case::of(format!("{} client inside the range", fam(v6)), &ok)
                    .tx(&geneve_dsr(1, v6, &ok, 80, ep)),
            );
            cases.push(
                Case::of(
                    format!("{} client outside the range", fam(v6)),
                    &syn(v6, CLIENT_PORT).dport(81),
                )
                .drop(Counter::DropSourceRange),
            );
            for (what, f) in [
                ("NodePort", syn(v6, CLIENT_PORT).dst(lb_addr(v6)).dport(30081)),
                ("externalIP", syn(v6, CLIENT_PORT).dport(1081)),
            ] {
                let (dsr, _) = lab.expect_dsr(&f, if what == "NodePort" { 30081 } else { 1081 });
                cases.push(
                    Case::of(format!("{} client outside the range, {what}", fam(v6)), &f).tx(&dsr),
                );
            }
        }
        lab.check(&cases);
    });
}

#[test]
fn odd_but_valid_vip_packets_are_load_balanced() {
    with_lab("odd", |lab| {
        lab.apply(&[web(false), web(true)]);
        let ep = |v6| SocketAddr::new(pod(1, 1, v6), TARGET_PORT);
        let mut cases = Vec::new();
        for v6 in BOTH {
            // The tag belongs to the old L2 header, which the outer header replaces.
            let tagged = syn(v6, 40100).vlan(100);
            cases.push(
                Case::of(format!("{} 802.1Q-tagged SYN", fam(v6)), &tagged).tx(&geneve_dsr(
                    1,
                    v6,
                    &syn(v6, 40100),
                    80,
                    ep(v6),
                )),
            );
            // Ethernet padding to the 60-byte minimum does not travel in the tunnel.
            let padded = syn(v6, 40101);
            let mut bytes = padded.build();
            bytes.resize(bytes.len().max(60), 0);
            cases.push(
                Case::raw(format!("{} SYN with Ethernet padding", fam(v6)), bytes).tx(&geneve_dsr(
                    1,
                    v6,
                    &padded,
                    80,
                    ep(v6),
                )),
            );
        }
        // 8 bytes of IPv4 options (NOPs, then EOL) stay in the inner packet.
        let opts = syn(false, 40102).ip_options(&[1, 1, 1, 1, 1, 1, 1, 0]);
        cases.push(Case::of("v4 SYN with IP options", &opts).tx(&geneve_dsr(
            1,
            false,
            &opts,
            80,
            ep(false),
        )));
        // A hop-by-hop header (PadN only) before TCP.
        let hbh = syn(true, 40103).hop_by_hop(&[]);
        cases.push(Case::of("v6 SYN after a hop-by-hop header", &hbh).tx(&geneve_dsr(
            1,
            true,
            &hbh,
            80,
            ep(true),
        )));
        let dst = syn(true, 40104).dest_opts(&[]).routing(4, 0, &[]);
        cases.push(Case::of("v6 SYN after destination options + routing", &dst).tx(&geneve_dsr(
            1,
            true,
            &dst,
            80,
            ep(true),
        )));
        // A SYN with payload (TFO-like) and TCP options.
        let data = syn(false, 40105)
            .tcp_options(&[2, 4, 0x05, 0xb4, 1, 1, 4, 2])
            .payload(b"GET / HTTP/1.1\r\n\r\n");
        cases.push(Case::of("v4 SYN with options and payload", &data).tx(&geneve_dsr(
            1,
            false,
            &data,
            80,
            ep(false),
        )));
        lab.check(&cases);
    });
}

#[test]
fn affinity_service_still_forwards_first_packet() {
    with_lab("affsvc", |lab| {
        let mut s = web(false);
        s.affinity = Some(Affinity { timeout: AFFINITY });
        lab.apply(&[s]);
        let f = syn(false, CLIENT_PORT);
        let ep = SocketAddr::new(pod(1, 1, false), TARGET_PORT);
        lab.check(
            &[Case::of("v4 SYN, affinity service", &f).tx(&geneve_dsr(1, false, &f, 80, ep))],
        );
    });
}

#[test]
fn unresolved_next_hop_is_encapsulated_and_given_to_the_kernel() {
    // Node 4 is on the fabric's subnet (a route) but has no neighbour entry:
    // XDP cannot resolve it, so the encapsulated packet goes to the kernel,
    // still addressed to this port, to be forwarded once ARP/ND answers.
    with_lab("noneigh", |lab| {
        for v6 in BOTH {
            let ep = SocketAddr::new(pod(4, 1, v6), TARGET_PORT);
            let svc = service(
                if v6 { "far6" } else { "far4" },
                vip(v6),
                80,
                Proto::Tcp,
                vec![backend(ep.ip(), node(4, v6))],
            );
            lab.apply(&[svc]);
            let syn = syn(v6, CLIENT_PORT);
            let mut want = geneve_dsr(4, v6, &syn, 80, ep).build();
            want[..6].copy_from_slice(&LB_MAC);
            want[6..12].copy_from_slice(&ROUTER_MAC);
            lab.check(&[Case {
                name: format!("{} SYN to an unresolved node", fam(v6)),
                input: syn.build(),
                verdict: XDP_PASS,
                output: Output::Frame(want),
                counter: Counter::OkNeighPass as u32,
            }]);
        }
    });
}
