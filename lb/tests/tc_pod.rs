//! The pod network's tc stages (tc/pod.h, tc/podnet.h, tc/masq.h,
//! tc/uplink.h, the overlay part of tc/decap.h) run in the real kernel with
//! BPF_PROG_TEST_RUN. PKTGEN: frames from named constants (node 1 is this
//! node, pods A and B run on it behind host veths hv0 / hv1, pod C on node
//! 2). SETUP: a private network namespace with those veths and the uplink
//! (so bpf_fib_lookup answers), the datapath loaded into a private bpffs
//! directory, node, network and endpoints applied through `Datapath` — the
//! daemon's API. CHECK: verdict, the whole output frame (fields the kernel
//! hashes, the overlay's UDP source port and IPv6 flow label, are read back
//! and range-checked), the counter at its hook, and map state. Privileged
//! tier: needs root and BPF; fails (never skips) without them.
mod podnode;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::programs::SchedClassifier;
use lb::{
    abi::{self, FlowKey, GENEVE_PORT},
    model::{Cidr, Masquerade, Network, PeerRole, PodRoute},
};
use podnode::*;
use testkit::packet::{diff, show, tcp_flags, Frame, GeneveOpt};

// ---- named constants --------------------------------------------------------

/// An address of this node's range no pod has.
const NOBODY_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 99);
const OUTSIDE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const NONMASQ_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 7, 7);
const POD_PORT: u16 = 40000;
/// Outer headers of the overlay: IPv4 20 / IPv6 40, UDP 8, Geneve 8,
/// identity option 8.
const OVERHEAD4: usize = 44;
const OVERHEAD6: usize = 64;

// ---- SETUP -------------------------------------------------------------------

type PodLab = PodNode;

struct Run {
    verdict: u32,
    out: Vec<u8>,
}

/// The network of node 1: its range local, node 2's remote, both nodes and
/// the LB as peers, masquerade with `ports`, 192.168.0.0/16 not masqueraded.
fn network(ports: (u16, u16)) -> Network {
    let cidr = |s: &str| s.parse::<Cidr>().unwrap();
    let node = PeerRole { node: true, load_balancer: false };
    Network {
        routes: vec![
            PodRoute { cidr: cidr("10.244.1.0/24"), node: ip(NODE1_V4), local: true },
            PodRoute { cidr: cidr("2001:db8:244:1::/64"), node: ip(NODE1_V6), local: true },
            PodRoute { cidr: cidr("10.244.2.0/24"), node: ip(NODE2_V4), local: false },
            PodRoute { cidr: cidr("2001:db8:244:2::/64"), node: ip(NODE2_V6), local: false },
        ],
        peers: [
            (ip(NODE1_V4), node),
            (ip(NODE2_V4), node),
            (ip(NODE2_V6), node),
            (ip(LB_V4), PeerRole { node: false, load_balancer: true }),
        ]
        .into(),
        masquerade: Some(Masquerade { ports, non_masquerade: vec![cidr("192.168.0.0/16")] }),
        ..Network::default()
    }
}

/// Runs `body` in a private namespace holding node 1: uplink eth0 (MTU
/// 1500, node 2 a permanent neighbour) and pods A (hv0) and B (hv1).
fn with_lab(name: &str, ports: (u16, u16), body: impl FnOnce(&mut PodLab) + Send) {
    with_pod_node("tc pod-network packet tests", name, "default", network(ports), body)
}

/// One run of `prog` on `frame` arriving on interface `ifindex`.
fn run(prog: &SchedClassifier, frame: &[u8], ifindex: u32) -> Run {
    let (verdict, out) = testkit::bench::tc_run(prog, frame, ifindex);
    Run { verdict, out }
}

impl PodLab {
    /// The pod behind host veth `ifindex` sends `frame`.
    fn pod_sends(&mut self, ifindex: u32, frame: &[u8]) -> Run {
        run(self.dp.pod_from_program(), frame, ifindex)
    }

    fn uplink_in(&mut self, frame: &[u8]) -> Run {
        let eth0 = self.eth0;
        run(self.dp.tc_ingress_program(), frame, eth0)
    }

    fn uplink_out(&mut self, frame: &[u8]) -> Run {
        let eth0 = self.eth0;
        run(self.dp.tc_egress_program(), frame, eth0)
    }

    /// Non-zero counters: (hook, reason) -> packets.
    fn counters(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        lb::loader::read_hook_counters(self.path.pin_dir())
            .unwrap()
            .into_iter()
            .filter(|(_, _, c)| c.packets != 0)
            .map(|(h, c, n)| ((h.name(), c.name()), n.packets))
            .collect()
    }

    /// Runs `f` and checks it moved exactly one counter: `reason` at `hook`.
    #[track_caller]
    fn counts(
        &mut self,
        hook: &'static str,
        reason: &'static str,
        f: impl FnOnce(&mut Self) -> Run,
    ) -> Run {
        let before = self.counters();
        let r = f(self);
        let mut want = before;
        *want.entry((hook, reason)).or_default() += 1;
        assert_eq!(self.counters(), want, "counted as {hook}/{reason}");
        r
    }
}

// ---- PKTGEN / CHECK helpers ---------------------------------------------------

#[track_caller]
fn assert_frame(what: &str, expected: &[u8], actual: &[u8]) {
    if let Some(d) = diff(expected, actual) {
        panic!(
            "{what}: output frame differs\n{d}\nexpected:\n{}\nactual:\n{}",
            show(expected),
            show(actual)
        );
    }
}

/// A TCP SYN from pod A (its veth to the host: gateway MAC) to `dst`.
fn syn_from_a(dst: IpAddr) -> Frame {
    let src = if dst.is_ipv4() { ip(POD_A_V4) } else { ip(POD_A_V6) };
    Frame::eth(POD_A_MAC, HOST_A_MAC).ip(src, dst).tcp(POD_PORT, 80).seq(1).syn()
}

/// The overlay frame from node 1 to node 2 carrying `inner` (an IP packet)
/// with identity `id`; the UDP source port and flow label as the kernel's
/// hash made them (read from `actual`).
fn overlay_frame(outer_v6: bool, inner: &Frame, id: u32, actual: &[u8]) -> Frame {
    let (src, dst) =
        if outer_v6 { (ip(NODE1_V6), ip(NODE2_V6)) } else { (ip(NODE1_V4), ip(NODE2_V4)) };
    let udp = 14 + if outer_v6 { 40 } else { 20 };
    let sport = u16::from_be_bytes([actual[udp], actual[udp + 1]]);
    assert!(sport >= 49152, "UDP source port {sport}");
    let outer = Frame::eth(ETH0_MAC, NODE2_MAC).ip(src, dst);
    let outer = if outer_v6 {
        let label = u32::from_be_bytes([0, actual[15] & 0x0f, actual[16], actual[17]]);
        outer.flow_label(label)
    } else {
        outer.df()
    };
    inner.encap_in(
        outer.udp(sport, GENEVE_PORT).l4_checksum(0).geneve(0).geneve_opt(GeneveOpt::identity(id)),
    )
}

// ---- from the pod ----------------------------------------------------------------

#[test]
fn pod_to_a_pod_of_the_same_node_is_redirected_into_it() {
    with_lab("podlocal", (61000, 65535), |lab| {
        for (dst, v6) in [(ip(POD_B_V4), false), (ip(POD_B_V6), true)] {
            let frame = syn_from_a(dst).build();
            let hv0 = lab.hv0;
            let r = lab.counts("tc_pod_from", "ok_pod_redirect", |l| l.pod_sends(hv0, &frame));
            assert_eq!(r.verdict, TC_ACT_REDIRECT, "v6 {v6}");
            // One router hop: TTL 63, B's MAC addresses.
            let want = Frame::eth(HOST_B_MAC, POD_B_MAC).inner(syn_from_a(dst).l3().ttl(63));
            assert_frame("to pod B", &want.build(), &r.out);
        }
    });
}

#[test]
fn a_spoofed_pod_source_is_dropped_and_counted() {
    with_lab("spoof", (61000, 65535), |lab| {
        let (hv0, hv1) = (lab.hv0, lab.hv1);
        let cases = [
            ("B's address from A's veth", hv0, ip(POD_B_V4)),
            ("an unassigned address", hv0, ip(NOBODY_V4)),
            ("the node's address", hv0, ip(NODE1_V4)),
            ("A's address from B's veth", hv1, ip(POD_A_V4)),
            ("A's IPv6 address from B's veth", hv1, ip(POD_A_V6)),
        ];
        for (what, ifindex, src) in cases {
            let dst = if src.is_ipv4() { ip(POD_C_V4) } else { ip(POD_C_V6) };
            let frame =
                Frame::eth(POD_A_MAC, HOST_A_MAC).ip(src, dst).udp(5353, 53).payload(b"q").build();
            let r = lab.counts("tc_pod_from", "drop_pod_spoof", |l| l.pod_sends(ifindex, &frame));
            assert_eq!(r.verdict, TC_ACT_SHOT, "{what}");
        }
    });
}

#[test]
fn pod_to_a_pod_of_another_node_goes_out_in_geneve_with_its_identity() {
    with_lab("encap", (61000, 65535), |lab| {
        for (dst, v6) in [(ip(POD_C_V4), false), (ip(POD_C_V6), true)] {
            let inner = syn_from_a(dst).payload(&[0x5a; 100]);
            let frame = inner.build();
            let hv0 = lab.hv0;
            let r = lab.counts("tc_pod_from", "ok_pod_encap", |l| l.pod_sends(hv0, &frame));
            assert_eq!(r.verdict, TC_ACT_REDIRECT, "sent to the uplink");
            let want = overlay_frame(v6, &inner.l3().ttl(63), ID_A, &r.out);
            assert_frame(if v6 { "v6 in v6" } else { "v4 in v4" }, &want.build(), &r.out);
            assert_eq!(r.out.len(), frame.len() + if v6 { OVERHEAD6 } else { OVERHEAD4 });
        }
    });
}

#[test]
fn the_overlay_is_decapsulated_straight_into_the_pod() {
    with_lab("decap", (61000, 65535), |lab| {
        for v6 in [false, true] {
            let (src, dst) =
                if v6 { (ip(POD_C_V6), ip(POD_A_V6)) } else { (ip(POD_C_V4), ip(POD_A_V4)) };
            let inner = Frame::new()
                .ip(src, dst)
                .tcp(80, POD_PORT)
                .seq(9)
                .ack_seq(2)
                .flags(tcp_flags::SYN | tcp_flags::ACK);
            let (osrc, odst) =
                if v6 { (ip(NODE2_V6), ip(NODE1_V6)) } else { (ip(NODE2_V4), ip(NODE1_V4)) };
            let frame = inner
                .encap_in(
                    Frame::eth(NODE2_MAC, ETH0_MAC)
                        .ip(osrc, odst)
                        .udp(50000, GENEVE_PORT)
                        .l4_checksum(0)
                        .geneve(0)
                        .geneve_opt(GeneveOpt::identity(ID_B + 100)),
                )
                .build();
            let r = lab.counts("tc_ingress", "ok_pod_decap", |l| l.uplink_in(&frame));
            assert_eq!(r.verdict, TC_ACT_REDIRECT);
            assert_frame(
                "into pod A",
                &Frame::eth(HOST_A_MAC, POD_A_MAC).inner(inner).build(),
                &r.out,
            );
        }
        // For this node's range, no such pod: dropped, frame untouched.
        let frame = Frame::new()
            .ipv4(POD_C_V4, NOBODY_V4)
            .udp(1, 2)
            .encap_in(
                Frame::eth(NODE2_MAC, ETH0_MAC)
                    .ipv4(NODE2_V4, NODE1_V4)
                    .udp(50000, GENEVE_PORT)
                    .geneve(0)
                    .geneve_opt(GeneveOpt::identity(ID_B)),
            )
            .build();
        let r = lab.counts("tc_ingress", "drop_no_endpoint", |l| l.uplink_in(&frame));
        assert_eq!(r.verdict, TC_ACT_SHOT);
        assert_frame("no pod", &frame, &r.out);
    });
}

#[test]
fn dsr_dispatch_to_a_pod_of_this_node_lands_in_the_pod() {
    with_lab("dsrpod", (61000, 65535), |lab| {
        let inner = Frame::new().ipv4(OUTSIDE_V4, POD_A_V4).tcp(33333, 8080).seq(1).syn();
        let vip = "10.100.0.1:80".parse().unwrap();
        let frame = Frame::eth(ROUTER_MAC, ETH0_MAC)
            .ipv4(LB_V4, NODE1_V4)
            .udp(49999, GENEVE_PORT)
            .geneve(0)
            .dsr_opt(vip)
            .inner(inner.clone())
            .build();
        let r = lab.counts("tc_ingress", "ok_tc_decap", |l| l.uplink_in(&frame));
        assert_eq!(r.verdict, TC_ACT_REDIRECT, "straight into the pod, not through the stack");
        assert_frame(
            "DSR into pod A",
            &Frame::eth(HOST_A_MAC, POD_A_MAC).inner(inner).build(),
            &r.out,
        );
    });
}

#[test]
fn pod_traffic_for_the_host_stack_and_its_neighbour_discovery_pass() {
    with_lab("stack", (61000, 65535), |lab| {
        let hv0 = lab.hv0;
        for dst in [ip(OUTSIDE_V4), ip(NODE1_V4), ip(OUTSIDE_V6)] {
            let frame = syn_from_a(dst).build();
            let r = lab.counts("tc_pod_from", "pass_pod_to_stack", |l| l.pod_sends(hv0, &frame));
            assert_eq!(r.verdict, TC_ACT_OK);
            assert_frame("to the stack", &frame, &r.out);
        }
        let arp = Frame::eth(POD_A_MAC, [0xff; 6])
            .arp_request(POD_A_MAC, POD_A_V4, Ipv4Addr::new(169, 254, 1, 1))
            .build();
        let r = lab.counts("tc_pod_from", "pass_pod_link_local", |l| l.pod_sends(hv0, &arp));
        assert_eq!(r.verdict, TC_ACT_OK);
        let ll: Ipv6Addr = "fe80::a0:2".parse().unwrap();
        let ns = Frame::eth(POD_A_MAC, [0x33, 0x33, 0, 0, 0, 1])
            .ipv6(ll, "ff02::1".parse().unwrap())
            .icmp6(135, 0, 0)
            .build();
        let r = lab.counts("tc_pod_from", "pass_pod_link_local", |l| l.pod_sends(hv0, &ns));
        assert_eq!(r.verdict, TC_ACT_OK);
        // This node's range, no such pod.
        let frame = syn_from_a(ip(NOBODY_V4)).build();
        let r = lab.counts("tc_pod_from", "drop_no_endpoint", |l| l.pod_sends(hv0, &frame));
        assert_eq!(r.verdict, TC_ACT_SHOT);
    });
}

#[test]
fn oversize_packets_get_icmp_too_big_back_instead_of_a_silent_drop() {
    with_lab("ptb", (61000, 65535), |lab| {
        let hv0 = lab.hv0;
        for v6 in [false, true] {
            // 1480 bytes of IP: fits the 1500 uplink alone, not with the overlay.
            let (dst, hdrs, overhead) = if v6 {
                (ip(POD_C_V6), 40 + 20, OVERHEAD6)
            } else {
                (ip(POD_C_V4), 20 + 20, OVERHEAD4)
            };
            let pkt = syn_from_a(dst).ack().payload(&vec![0x77; 1480 - hdrs]);
            let pkt = if v6 { pkt } else { pkt.df() };
            let frame = pkt.build();
            let r = lab.counts("tc_pod_from", "ok_icmp_too_big", |l| l.pod_sends(hv0, &frame));
            assert_eq!(r.verdict, TC_ACT_REDIRECT, "back to the pod");
            let mtu = (1500 - overhead) as u32;
            let quote = &frame[14..14 + 128];
            let want = if v6 {
                Frame::eth(HOST_A_MAC, POD_A_MAC)
                    .ipv6(NODE1_V6, POD_A_V6)
                    .ttl(255)
                    .icmp6_packet_too_big(mtu)
            } else {
                Frame::eth(HOST_A_MAC, POD_A_MAC)
                    .ipv4(NODE1_V4, POD_A_V4)
                    .ttl(255)
                    .icmp4_frag_needed(mtu as u16)
            };
            assert_frame("too big", &want.payload(quote).build(), &r.out);
        }
        // IPv4 without DF wanted fragmenting: counted, no ICMP.
        let frame = syn_from_a(ip(POD_C_V4)).ack().payload(&[0x77; 1440]).build();
        let r = lab.counts("tc_pod_from", "drop_pod_too_big", |l| l.pod_sends(hv0, &frame));
        assert_eq!(r.verdict, TC_ACT_SHOT);
    });
}

// ---- the node's own packets ------------------------------------------------------

#[test]
fn the_nodes_own_packets_to_remote_pods_join_the_overlay() {
    with_lab("nodeenc", (61000, 65535), |lab| {
        for (src, dst, v6) in
            [(ip(NODE1_V4), ip(POD_C_V4), false), (ip(NODE1_V6), ip(POD_C_V6), true)]
        {
            let inner = Frame::new().ip(src, dst).tcp(44444, 80).seq(1).syn();
            let frame = Frame::eth(ETH0_MAC, ROUTER_MAC).inner(inner.clone()).build();
            let r = lab.counts("tc_egress", "ok_pod_encap", |l| l.uplink_out(&frame));
            assert_eq!(r.verdict, TC_ACT_OK, "already on the right port");
            let want = overlay_frame(v6, &inner, abi::ID_HOST, &r.out);
            assert_frame("node to pod C", &want.build(), &r.out);
        }
    });
}

// ---- masquerade ----------------------------------------------------------------

/// The masquerade mapping of a flow from pod A (as it sent it).
fn mapping(
    lab: &PodLab,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    proto: u8,
) -> (IpAddr, u16) {
    let (saddr, family) = abi::addr_to_abi(src);
    let (daddr, _) = abi::addr_to_abi(dst);
    let key =
        FlowKey { saddr, daddr, sport: sport.to_be(), dport: dport.to_be(), proto, family, pad: 0 };
    let e = lab.path.maps().snat.get(&key, 0).unwrap_or_else(|e| panic!("no xlb_snat entry: {e}"));
    (abi::addr_from_abi(&e.addr, e.family).unwrap(), u16::from_be(e.port))
}

#[test]
fn pods_leaving_the_cluster_are_masqueraded_and_replies_come_back_into_the_pod() {
    with_lab("masq", (61000, 65535), |lab| {
        for (v6, proto) in [(false, 6u8), (true, 6), (false, 17), (true, 17)] {
            let (pod, out, node) = if v6 {
                (ip(POD_A_V6), ip(OUTSIDE_V6), ip(NODE1_V6))
            } else {
                (ip(POD_A_V4), ip(OUTSIDE_V4), ip(NODE1_V4))
            };
            let l4 = |f: Frame, sport, dport| {
                if proto == 6 {
                    f.tcp(sport, dport).seq(1).syn()
                } else {
                    f.udp(sport, dport).payload(b"query")
                }
            };
            // As the host stack forwards it out of the uplink.
            let sent = l4(Frame::eth(ETH0_MAC, ROUTER_MAC).ip(pod, out), POD_PORT, 80);
            let r = lab.counts("tc_egress", "ok_masq", |l| l.uplink_out(&sent.build()));
            assert_eq!(r.verdict, TC_ACT_OK);
            let (nat, port) = mapping(lab, pod, out, POD_PORT, 80, proto);
            assert_eq!(nat, node);
            assert!((61000..=65535).contains(&port), "port {port}");
            let want = l4(Frame::eth(ETH0_MAC, ROUTER_MAC).ip(node, out), port, 80);
            assert_frame("masqueraded", &want.build(), &r.out);

            let reply = |f: Frame, dst, dport| {
                if proto == 6 {
                    f.ip(out, dst)
                        .tcp(80, dport)
                        .seq(7)
                        .ack_seq(2)
                        .flags(tcp_flags::SYN | tcp_flags::ACK)
                } else {
                    f.ip(out, dst).udp(80, dport).payload(b"answer")
                }
            };
            let back = reply(Frame::eth(ROUTER_MAC, ETH0_MAC), node, port).build();
            let r = lab.counts("tc_ingress", "ok_masq_reply", |l| l.uplink_in(&back));
            assert_eq!(r.verdict, TC_ACT_REDIRECT, "straight into the pod");
            assert_frame(
                "reply into pod A",
                &reply(Frame::eth(HOST_A_MAC, POD_A_MAC), pod, POD_PORT).build(),
                &r.out,
            );
        }
        // The same flow again keeps its port.
        let again = Frame::eth(ETH0_MAC, ROUTER_MAC)
            .ipv4(POD_A_V4, OUTSIDE_V4)
            .tcp(POD_PORT, 80)
            .seq(2)
            .ack()
            .build();
        let port = mapping(lab, ip(POD_A_V4), ip(OUTSIDE_V4), POD_PORT, 80, 6).1;
        let r = lab.counts("tc_egress", "ok_masq", |l| l.uplink_out(&again));
        assert_eq!(u16::from_be_bytes([r.out[34], r.out[35]]), port);
    });
}

#[test]
fn icmp_echo_from_a_pod_is_masqueraded_by_its_identifier() {
    with_lab("masqping", (61000, 65535), |lab| {
        let echo = |f: Frame, src: Ipv4Addr, dst: Ipv4Addr, typ: u8, id: u16| {
            f.ipv4(src, dst).icmp4(typ, 0, (u32::from(id) << 16) | 1).payload(b"ping")
        };
        let sent = echo(Frame::eth(ETH0_MAC, ROUTER_MAC), POD_A_V4, OUTSIDE_V4, 8, 0x4242);
        let r = lab.counts("tc_egress", "ok_masq", |l| l.uplink_out(&sent.build()));
        let (nat, id) = mapping(lab, ip(POD_A_V4), ip(OUTSIDE_V4), 0x4242, 0, 1);
        assert_eq!(nat, ip(NODE1_V4));
        assert_frame(
            "echo",
            &echo(Frame::eth(ETH0_MAC, ROUTER_MAC), NODE1_V4, OUTSIDE_V4, 8, id).build(),
            &r.out,
        );
        let reply = echo(Frame::eth(ROUTER_MAC, ETH0_MAC), OUTSIDE_V4, NODE1_V4, 0, id).build();
        let r = lab.counts("tc_ingress", "ok_masq_reply", |l| l.uplink_in(&reply));
        assert_eq!(r.verdict, TC_ACT_REDIRECT);
        assert_frame(
            "echo reply",
            &echo(Frame::eth(HOST_A_MAC, POD_A_MAC), OUTSIDE_V4, POD_A_V4, 0, 0x4242).build(),
            &r.out,
        );
    });
}

#[test]
fn what_must_keep_its_source_keeps_it() {
    with_lab("nomasq", (61000, 65535), |lab| {
        // A non-masquerade destination.
        let f = Frame::eth(ETH0_MAC, ROUTER_MAC)
            .ipv4(POD_A_V4, NONMASQ_V4)
            .tcp(POD_PORT, 80)
            .syn()
            .build();
        let r = lab.counts("tc_egress", "pass_no_masq", |l| l.uplink_out(&f));
        assert_frame("non-masquerade", &f, &r.out);
        // A segment of a connection made to the pod (no SYN, no mapping).
        let f = Frame::eth(ETH0_MAC, ROUTER_MAC)
            .ipv4(POD_A_V4, OUTSIDE_V4)
            .tcp(80, 50000)
            .seq(5)
            .ack_seq(9)
            .flags(tcp_flags::SYN | tcp_flags::ACK)
            .build();
        let r = lab.counts("tc_egress", "pass_masq_no_state", |l| l.uplink_out(&f));
        assert_frame("reply of an inbound connection", &f, &r.out);
        // A reply to nothing masqueraded: the node's own.
        let f = Frame::eth(ROUTER_MAC, ETH0_MAC)
            .ipv4(OUTSIDE_V4, NODE1_V4)
            .tcp(80, 61234)
            .ack()
            .build();
        let r = lab.counts("tc_ingress", "pass_not_tunnel", |l| l.uplink_in(&f));
        assert_eq!(r.verdict, TC_ACT_OK);
        assert_frame("not a reply", &f, &r.out);
    });
}

#[test]
fn port_exhaustion_drops_and_counts_and_collisions_are_counted() {
    // Two ports: two flows to one remote endpoint fit, the third does not.
    with_lab("exhaust", (61000, 61001), |lab| {
        for sport in [1000u16, 1001] {
            let f = Frame::eth(ETH0_MAC, ROUTER_MAC)
                .ipv4(POD_A_V4, OUTSIDE_V4)
                .tcp(sport, 443)
                .syn()
                .build();
            lab.counts("tc_egress", "ok_masq", |l| l.uplink_out(&f));
        }
        let f = Frame::eth(ETH0_MAC, ROUTER_MAC)
            .ipv4(POD_A_V4, OUTSIDE_V4)
            .tcp(1002, 443)
            .syn()
            .build();
        let r = lab.counts("tc_egress", "drop_snat_exhausted", |l| l.uplink_out(&f));
        assert_eq!(r.verdict, TC_ACT_SHOT);
        // Another remote port has its own ports.
        let f = Frame::eth(ETH0_MAC, ROUTER_MAC)
            .ipv4(POD_A_V4, OUTSIDE_V4)
            .tcp(1002, 8443)
            .syn()
            .build();
        lab.counts("tc_egress", "ok_masq", |l| l.uplink_out(&f));
        let t = lb::view::DatapathView::open(lab.path.pin_dir()).unwrap().tunnels().unwrap();
        assert_eq!((t.snat.allocated, t.snat.exhausted), (3, 1), "{:?}", t.snat);
        assert!(t.snat.collisions >= u64::from(abi::SNAT_TRIES), "{:?}", t.snat);
    });
}
