//! NetworkPolicy in the pod stages (tc/policy.h via tc/pod.h and
//! tc/decap.h) run in the real kernel with BPF_PROG_TEST_RUN. PKTGEN: frames
//! from named constants (node 1 is this node; pods A and B on it behind host
//! veths hv0 / hv1; pod C on node 2, reached through the overlay). SETUP: a
//! private network namespace with those veths and the uplink, the datapath
//! loaded into a private bpffs directory, node, network, endpoints and the
//! policy applied through `Datapath` (the daemon's API). CHECK: verdict and
//! the counter at its hook. Privileged tier: needs root and BPF; fails
//! (never skips) without them.
mod podnode;

use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::programs::SchedClassifier;
use lb::{
    abi::{self, GENEVE_PORT},
    model::{Cidr, Network, PeerRole, PodRoute},
    policy::{AddrIdentity, Allow, EndpointPolicy, PolicyDesired, ID_CIDR_MIN, ID_WORLD},
};
use podnode::*;
use testkit::packet::{tcp_flags, Frame, GeneveOpt};

const ID_C: u32 = abi::ID_POD_MIN + 3;
/// An identity no rule names.
const ID_OTHER: u32 = abi::ID_POD_MIN + 4;
/// The ipBlock prefix 192.0.2.0/24.
const ID_DOC_NET: u32 = ID_CIDR_MIN;
const TCP: u8 = 6;
const UDP: u8 = 17;

type Lab = PodNode;

struct Run {
    verdict: u32,
}

fn network() -> Network {
    let cidr = |s: &str| s.parse::<Cidr>().unwrap();
    Network {
        routes: vec![
            PodRoute { cidr: cidr("10.244.1.0/24"), node: ip(NODE1_V4), local: true },
            PodRoute { cidr: cidr("10.244.2.0/24"), node: ip(NODE2_V4), local: false },
        ],
        peers: [
            (ip(NODE2_V4), PeerRole { node: true, load_balancer: false }),
            (ip(LB_V4), PeerRole { node: false, load_balancer: true }),
        ]
        .into(),
        ..Network::default()
    }
}

fn with_lab(name: &str, body: impl FnOnce(&mut Lab) + Send) {
    with_pod_node("tc NetworkPolicy packet tests", name, "x", network(), body)
}

fn run(prog: &SchedClassifier, frame: &[u8], ifindex: u32) -> Run {
    Run { verdict: testkit::bench::tc_run(prog, frame, ifindex).0 }
}

impl Lab {
    fn counters(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        lb::loader::read_hook_counters(self.path.pin_dir())
            .unwrap()
            .into_iter()
            .filter(|(_, _, c)| c.packets != 0)
            .map(|(h, c, n)| ((h.name(), c.name()), n.packets))
            .collect()
    }

    /// Sends `frame` through `which` ("from" a pod's veth `ifindex`, "to" a
    /// pod's veth, "uplink" in) and checks verdict and the one counter moved.
    #[track_caller]
    fn expect(
        &mut self,
        what: &str,
        which: &str,
        ifindex: u32,
        frame: &Frame,
        (verdict, hook, reason): (u32, &'static str, &'static str),
    ) {
        let before = self.counters();
        let bytes = frame.build();
        let r = match which {
            "from" => run(self.dp.pod_from_program(), &bytes, ifindex),
            "to" => run(self.dp.pod_to_program(), &bytes, ifindex),
            _ => run(self.dp.tc_ingress_program(), &bytes, ifindex),
        };
        let mut want = before;
        *want.entry((hook, reason)).or_default() += 1;
        assert_eq!(self.counters(), want, "{what}: counted as {hook}/{reason}");
        assert_eq!(r.verdict, verdict, "{what}: verdict");
    }

    fn policy(&mut self, desired: &PolicyDesired) {
        self.path.apply_policy(desired).unwrap_or_else(|e| panic!("applying the policy: {e}"));
    }
}

fn a_to_b(proto: u8, sport: u16, dport: u16) -> Frame {
    let f = Frame::eth(POD_A_MAC, HOST_A_MAC).ipv4(POD_A_V4, POD_B_V4);
    if proto == TCP {
        f.tcp(sport, dport).seq(1).syn()
    } else {
        f.udp(sport, dport).payload(b"ping")
    }
}

fn b_to_a_reply(sport: u16, dport: u16) -> Frame {
    Frame::eth(POD_B_MAC, HOST_B_MAC)
        .ipv4(POD_B_V4, POD_A_V4)
        .tcp(sport, dport)
        .seq(9)
        .ack_seq(2)
        .flags(tcp_flags::SYN | tcp_flags::ACK)
}

fn allow(peer: u32, proto: Option<u8>, ports: Option<(u16, u16)>) -> Allow {
    Allow { peer, proto, ports }
}

/// B isolated for ingress (allowing `ingress`) and, if `egress` is Some,
/// for egress.
fn b_policy(ingress: &[Allow], egress: Option<&[Allow]>, b: u32) -> PolicyDesired {
    let m = |a: &[Allow]| a.iter().map(|x| (*x, 1)).collect::<BTreeMap<_, _>>();
    PolicyDesired {
        addrs: [
            (
                Cidr { addr: ip(POD_A_V4), len: 32 },
                AddrIdentity { identity: ID_A, cidr_identity: 0 },
            ),
            (
                Cidr { addr: ip(POD_B_V4), len: 32 },
                AddrIdentity { identity: ID_B, cidr_identity: 0 },
            ),
            (
                Cidr { addr: ip(POD_C_V4), len: 32 },
                AddrIdentity { identity: ID_C, cidr_identity: 0 },
            ),
        ]
        .into(),
        endpoints: [(b, EndpointPolicy { ingress: Some(m(ingress)), egress: egress.map(m) })]
            .into(),
        policies: [(1, "x/b".to_string())].into(),
    }
}

#[test]
fn pods_no_policy_selects_are_unaffected() {
    with_lab("polnone", |lab| {
        let (hv0, hv1) = (lab.hv0, lab.hv1);
        // B isolated, A not: A's traffic to C and from B's allowed flows unaffected.
        lab.policy(&b_policy(&[allow(ID_A, Some(TCP), Some((80, 80)))], None, hv1));
        let to_c =
            Frame::eth(POD_A_MAC, HOST_A_MAC).ipv4(POD_A_V4, POD_C_V4).udp(5, 7).payload(b"x");
        lab.expect("A to C", "from", hv0, &to_c, (TC_ACT_REDIRECT, "tc_pod_from", "ok_pod_encap"));
        lab.policy(&PolicyDesired::default());
        lab.expect(
            "A to B, no policy",
            "from",
            hv0,
            &a_to_b(UDP, 5, 9),
            (TC_ACT_REDIRECT, "tc_pod_from", "ok_pod_redirect"),
        );
    });
}

#[test]
fn ingress_isolation_allows_only_what_a_rule_names() {
    with_lab("poling", |lab| {
        let (hv0, hv1) = (lab.hv0, lab.hv1);
        lab.policy(&b_policy(
            &[allow(ID_A, Some(TCP), Some((80, 80))), allow(ID_A, Some(UDP), Some((1000, 1010)))],
            None,
            hv1,
        ));
        lab.expect(
            "TCP 80",
            "from",
            hv0,
            &a_to_b(TCP, 40000, 80),
            (TC_ACT_REDIRECT, "tc_pod_from", "ok_pod_redirect"),
        );
        lab.expect(
            "TCP 81",
            "from",
            hv0,
            &a_to_b(TCP, 40000, 81),
            (TC_ACT_SHOT, "tc_pod_from", "drop_policy_ingress"),
        );
        lab.expect(
            "UDP 80",
            "from",
            hv0,
            &a_to_b(UDP, 40000, 80),
            (TC_ACT_SHOT, "tc_pod_from", "drop_policy_ingress"),
        );
        for port in [1000, 1005, 1010] {
            lab.expect(
                "UDP in range",
                "from",
                hv0,
                &a_to_b(UDP, 40001, port),
                (TC_ACT_REDIRECT, "tc_pod_from", "ok_pod_redirect"),
            );
        }
        lab.expect(
            "UDP 1011",
            "from",
            hv0,
            &a_to_b(UDP, 40001, 1011),
            (TC_ACT_SHOT, "tc_pod_from", "drop_policy_ingress"),
        );
        // Deny all (isolated, no entry): ping dropped.
        let ping =
            Frame::eth(POD_A_MAC, HOST_A_MAC).ipv4(POD_A_V4, POD_B_V4).icmp4(8, 0, (7 << 16) | 1);
        lab.policy(&b_policy(&[], None, hv1));
        lab.expect(
            "ping, deny all",
            "from",
            hv0,
            &ping,
            (TC_ACT_SHOT, "tc_pod_from", "drop_policy_ingress"),
        );
        // Any protocol from any peer: ICMP too.
        lab.policy(&b_policy(&[allow(0, None, None)], None, hv1));
        lab.expect(
            "ping, any allowed",
            "from",
            hv0,
            &ping,
            (TC_ACT_REDIRECT, "tc_pod_from", "ok_pod_redirect"),
        );
    });
}

#[test]
fn replies_pass_and_established_connections_outlive_a_revoking_change() {
    with_lab("polstate", |lab| {
        let (hv0, hv1) = (lab.hv0, lab.hv1);
        // B: ingress from A on 80; egress isolated with nothing allowed.
        lab.policy(&b_policy(&[allow(ID_A, Some(TCP), Some((80, 80)))], Some(&[]), hv1));
        lab.expect(
            "A's SYN",
            "from",
            hv0,
            &a_to_b(TCP, 40000, 80),
            (TC_ACT_REDIRECT, "tc_pod_from", "ok_pod_redirect"),
        );
        lab.expect(
            "B's SYN-ACK (a reply)",
            "from",
            hv1,
            &b_to_a_reply(80, 40000),
            (TC_ACT_REDIRECT, "tc_pod_from", "ok_pod_redirect"),
        );
        let b_new =
            Frame::eth(POD_B_MAC, HOST_B_MAC).ipv4(POD_B_V4, POD_A_V4).tcp(41000, 80).seq(1).syn();
        lab.expect(
            "B's own connection",
            "from",
            hv1,
            &b_new,
            (TC_ACT_SHOT, "tc_pod_from", "drop_policy_egress"),
        );
        // The policy is revoked: the established connection keeps going
        // (documented choice), a new one is refused.
        lab.policy(&b_policy(&[], Some(&[]), hv1));
        let ack = Frame::eth(POD_A_MAC, HOST_A_MAC)
            .ipv4(POD_A_V4, POD_B_V4)
            .tcp(40000, 80)
            .seq(2)
            .ack_seq(10)
            .flags(tcp_flags::ACK);
        lab.expect(
            "established after revocation",
            "from",
            hv0,
            &ack,
            (TC_ACT_REDIRECT, "tc_pod_from", "ok_pod_redirect"),
        );
        lab.expect(
            "new after revocation",
            "from",
            hv0,
            &a_to_b(TCP, 40002, 80),
            (TC_ACT_SHOT, "tc_pod_from", "drop_policy_ingress"),
        );
    });
}

#[test]
fn the_overlay_carries_the_source_identity_to_the_ingress_check() {
    with_lab("poloverlay", |lab| {
        let (eth0, hv1) = (lab.eth0, lab.hv1);
        // B allows C's identity only; the check reads it from the option, not
        // from C's address (no entry for C's address: WORLD by address).
        let mut d = b_policy(&[allow(ID_C, Some(TCP), Some((80, 80)))], None, hv1);
        d.addrs.clear();
        lab.policy(&d);
        let from_c = |id: u32, sport: u16| {
            Frame::new().ipv4(POD_C_V4, POD_B_V4).tcp(sport, 80).seq(1).syn().encap_in(
                Frame::eth(NODE2_MAC, ETH0_MAC)
                    .ipv4(NODE2_V4, NODE1_V4)
                    .udp(50000, GENEVE_PORT)
                    .l4_checksum(0)
                    .geneve(0)
                    .geneve_opt(GeneveOpt::identity(id)),
            )
        };
        lab.expect(
            "C's identity",
            "uplink",
            eth0,
            &from_c(ID_C, 33000),
            (TC_ACT_REDIRECT, "tc_ingress", "ok_pod_decap"),
        );
        lab.expect(
            "another identity",
            "uplink",
            eth0,
            &from_c(ID_OTHER, 33001),
            (TC_ACT_SHOT, "tc_ingress", "drop_policy_ingress"),
        );
    });
}

#[test]
fn ip_blocks_and_host_stack_delivery() {
    with_lab("polcidr", |lab| {
        let (hv0, hv1) = (lab.hv0, lab.hv1);
        // A egress: 192.0.2.0/24 on TCP 1000-1010 only. B ingress: from that prefix.
        let doc: Cidr = "192.0.2.0/24".parse().unwrap();
        let mut d = b_policy(&[allow(ID_DOC_NET, None, None)], None, hv1);
        d.addrs.insert(doc, AddrIdentity { identity: ID_WORLD, cidr_identity: ID_DOC_NET });
        d.endpoints.insert(
            hv0,
            EndpointPolicy {
                ingress: None,
                egress: Some([(allow(ID_DOC_NET, Some(TCP), Some((1000, 1010))), 1)].into()),
            },
        );
        lab.policy(&d);
        let out = |port: u16| {
            Frame::eth(POD_A_MAC, HOST_A_MAC)
                .ipv4(POD_A_V4, OUTSIDE_V4)
                .tcp(40000, port)
                .seq(1)
                .syn()
        };
        lab.expect(
            "in the block and range",
            "from",
            hv0,
            &out(1005),
            (TC_ACT_OK, "tc_pod_from", "pass_pod_to_stack"),
        );
        lab.expect(
            "outside the range",
            "from",
            hv0,
            &out(1011),
            (TC_ACT_SHOT, "tc_pod_from", "drop_policy_egress"),
        );
        let other = Frame::eth(POD_A_MAC, HOST_A_MAC)
            .ipv4(POD_A_V4, Ipv4Addr::new(198, 51, 100, 1))
            .tcp(40000, 1005)
            .seq(1)
            .syn();
        lab.expect(
            "outside the block",
            "from",
            hv0,
            &other,
            (TC_ACT_SHOT, "tc_pod_from", "drop_policy_egress"),
        );
        // Delivered by the host stack into B: the source by its address.
        let to_b = |src: Ipv4Addr| {
            Frame::eth(HOST_B_MAC, POD_B_MAC).ipv4(src, POD_B_V4).tcp(5555, 80).seq(1).syn()
        };
        lab.expect(
            "from the block",
            "to",
            hv1,
            &to_b(OUTSIDE_V4),
            (TC_ACT_OK, "tc_pod_to", "ok_to_pod"),
        );
        lab.expect(
            "from elsewhere",
            "to",
            hv1,
            &to_b(Ipv4Addr::new(198, 51, 100, 1)),
            (TC_ACT_SHOT, "tc_pod_to", "drop_policy_ingress"),
        );
    });
}

#[test]
fn dsr_dispatch_into_an_isolated_pod_checks_its_ingress() {
    with_lab("poldsr", |lab| {
        let (eth0, hv1) = (lab.eth0, lab.hv1);
        lab.policy(&b_policy(&[allow(0, Some(TCP), Some((8080, 8080)))], None, hv1));
        let dsr = |port: u16| {
            let inner = Frame::new().ipv4(OUTSIDE_V4, POD_B_V4).tcp(33333, port).seq(1).syn();
            Frame::eth(ROUTER_MAC, ETH0_MAC)
                .ipv4(LB_V4, NODE1_V4)
                .udp(49999, GENEVE_PORT)
                .geneve(0)
                .dsr_opt("10.100.0.1:80".parse().unwrap())
                .inner(inner)
        };
        lab.expect(
            "allowed port",
            "uplink",
            eth0,
            &dsr(8080),
            (TC_ACT_REDIRECT, "tc_ingress", "ok_tc_decap"),
        );
        lab.expect(
            "other port",
            "uplink",
            eth0,
            &dsr(9090),
            (TC_ACT_SHOT, "tc_ingress", "drop_policy_ingress"),
        );
    });
}

#[test]
fn icmp_errors_about_a_tracked_connection_pass_unrelated_ones_do_not() {
    with_lab("policmp", |lab| {
        let (hv0, hv1) = (lab.hv0, lab.hv1);
        // B: ingress from A on UDP 53 and TCP 80; egress isolated, nothing
        // allowed.
        let ingress =
            [allow(ID_A, Some(UDP), Some((53, 53))), allow(ID_A, Some(TCP), Some((80, 80)))];
        let mut desired = b_policy(&ingress, Some(&[]), hv1);
        for (pod, id) in [(POD_A_V6, ID_A), (POD_B_V6, ID_B)] {
            let addr = Cidr { addr: ip(pod), len: 128 };
            desired.addrs.insert(addr, AddrIdentity { identity: id, cidr_identity: 0 });
        }
        lab.policy(&desired);
        let redirected = |hook| (TC_ACT_REDIRECT, hook, "ok_pod_redirect");
        lab.expect("A's datagram", "from", hv0, &a_to_b(UDP, 40000, 53), redirected("tc_pod_from"));
        lab.expect("A's SYN", "from", hv0, &a_to_b(TCP, 40002, 80), redirected("tc_pod_from"));

        // Out of B (egress-isolated): port unreachable about A's datagram.
        let b_unreachable = |sport: u16| {
            Frame::eth(POD_B_MAC, HOST_B_MAC)
                .ipv4(POD_B_V4, POD_A_V4)
                .icmp4(3, 3, 0)
                .ipv4(POD_A_V4, POD_B_V4)
                .udp(sport, 53)
                .payload(b"ping")
        };
        lab.expect(
            "B's port unreachable",
            "from",
            hv1,
            &b_unreachable(40000),
            redirected("tc_pod_from"),
        );
        lab.expect(
            "B's port unreachable about a flow never seen",
            "from",
            hv1,
            &b_unreachable(40001),
            (TC_ACT_SHOT, "tc_pod_from", "drop_policy_egress"),
        );

        // Into B (ingress-isolated): fragmentation needed about B's SYN-ACK
        // (B answered the connection; an IPv4 router quotes 8 bytes of TCP).
        let too_big_for_b = |dport: u16| {
            Frame::eth(POD_A_MAC, HOST_A_MAC)
                .ipv4(POD_A_V4, POD_B_V4)
                .icmp4_frag_needed(1400)
                .ipv4(POD_B_V4, POD_A_V4)
                .tcp(80, dport)
                .seq(9)
                .ack_seq(2)
                .flags(tcp_flags::SYN | tcp_flags::ACK)
                .quote_len(28)
        };
        lab.expect(
            "frag needed to B",
            "from",
            hv0,
            &too_big_for_b(40002),
            redirected("tc_pod_from"),
        );
        lab.expect(
            "frag needed to B about a flow never seen",
            "from",
            hv0,
            &too_big_for_b(40003),
            (TC_ACT_SHOT, "tc_pod_from", "drop_policy_ingress"),
        );

        // IPv6: B's port unreachable about A's datagram, and about another.
        let a_to_b6 = Frame::eth(POD_A_MAC, HOST_A_MAC)
            .ipv6(POD_A_V6, POD_B_V6)
            .udp(40010, 53)
            .payload(b"ping");
        lab.expect("A's datagram (v6)", "from", hv0, &a_to_b6, redirected("tc_pod_from"));
        let b_unreachable6 = |sport: u16| {
            Frame::eth(POD_B_MAC, HOST_B_MAC)
                .ipv6(POD_B_V6, POD_A_V6)
                .icmp6(1, 4, 0)
                .ipv6(POD_A_V6, POD_B_V6)
                .udp(sport, 53)
                .payload(b"ping")
        };
        lab.expect(
            "B's unreachable (v6)",
            "from",
            hv1,
            &b_unreachable6(40010),
            redirected("tc_pod_from"),
        );
        lab.expect(
            "B's unreachable about a flow never seen (v6)",
            "from",
            hv1,
            &b_unreachable6(40011),
            (TC_ACT_SHOT, "tc_pod_from", "drop_policy_egress"),
        );
    });
}
