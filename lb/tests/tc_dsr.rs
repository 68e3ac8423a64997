//! DSR termination (tc/xlb_tc.c, tc/decap.h, tc/revnat.h) run in the real
//! kernel with BPF_PROG_TEST_RUN: Geneve decapsulation on ingress (every
//! family mix, option and header validation, truncation at every length),
//! the reply's reverse translation on egress, and forwarded ICMP errors.
//! Since the pod network (#10, #12 item 10) xlb's tunnel traffic is taken
//! only from known peers (the load balancer here: an unknown sender is
//! dropped and counted), and Geneve that is not xlb's (another VNI,
//! version, OAM, no option of xlb's class) passes untouched. Each test is
//! PKTGEN (frames from named constants) / SETUP (a freshly loaded datapath
//! in its own bpffs dir, node identity applied through `Datapath`) / CHECK
//! (verdict, the whole output frame, the counters, the xlb_dsr_nat entry).
//! Privileged tier: needs root and BPF; fails (never skips) without them.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use aya::programs::SchedClassifier;
use lb::{
    abi::{self, DsrNatEntry, FlowKey, GENEVE_OPT_CLASS, GENEVE_PORT},
    datapath::Datapath,
    features::Features,
    loader::{Dataplane, LoadOptions},
    maps::Maps,
    model::{
        Backend, BackendState, Desired, Encap, Frontend, FrontendKind, Network, NodeConfig,
        PeerRole, Proto, Service, ServiceKey,
    },
};
use testkit::{
    packet::{
        bench::{CLIENT_PORT, CLIENT_V4, CLIENT_V6, VIP_V4, VIP_V6},
        diff, show, Frame, GeneveOpt, Mac,
    },
    pins::PinDir,
};

// ---- named constants (the lab topology) -----------------------------------

const ROUTER_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
const NODE1_MAC: Mac = [0x02, 0, 0, 0, 0, 0x11];
const LB_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const LB_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x2);
const NODE1_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const NODE1_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x11);
const NODE2_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 12);
/// A host on the underlay that is neither a node nor a load balancer.
const STRANGER_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);
const STRANGER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x99);
const POD_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const POD_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x244, 1, 0, 0, 0, 0x11);
/// A router on the client's path that reports a too-small MTU.
const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x1);
const SVC_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
/// Outer UDP source port (entropy chosen by the load balancer).
const GENEVE_SPORT: u16 = 49152 + 77;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

// ---- SETUP -----------------------------------------------------------------

/// Node 1 of the lab: both programs loaded, its tunnel addresses applied.
struct Node {
    dp: Dataplane,
    maps: Maps,
    pin: PinDir, // last: dropped after the programs and maps are closed
}

struct Run {
    verdict: u32,
    out: Vec<u8>,
}

impl Node {
    fn new(tag: &str) -> Node {
        Node::with_services(tag, Vec::new())
    }

    /// Node 1 holding `services` (the cluster-wide tables every node has),
    /// taking tunnel traffic from the load balancer's addresses.
    fn with_services(tag: &str, services: Vec<Service>) -> Node {
        Node::loaded(tag, services, None)
    }

    /// Node 1 with the objects loaded for `features` (None: probed).
    fn loaded(tag: &str, services: Vec<Service>, features: Option<Features>) -> Node {
        let pin = PinDir::new(tag);
        let opts = LoadOptions { features, ..LoadOptions::small(pin.path()) };
        let dp = Dataplane::load(&opts).unwrap_or_else(|e| {
            panic!("loading the datapath into {}: {e:?}", pin.path().display())
        });
        let desired = Desired {
            node: NodeConfig { tunnel_v4: Some(NODE1_V4), tunnel_v6: Some(NODE1_V6) },
            services: services.into_iter().map(|s| (s.key.clone(), s)).collect(),
        };
        let lb = PeerRole { node: false, load_balancer: true };
        let network =
            Network { peers: [(ip(LB_V4), lb), (ip(LB_V6), lb)].into(), ..Network::default() };
        Datapath::open(pin.path())
            .and_then(|mut d| d.apply(&desired).and_then(|_| d.apply_network(&network)))
            .unwrap_or_else(|e| panic!("applying the node config: {e:?}"));
        let maps = Maps::open(pin.path()).unwrap_or_else(|e| panic!("opening maps: {e:?}"));
        Node { dp, maps, pin }
    }

    fn ingress(&mut self, frame: &[u8]) -> Run {
        run(self.dp.tc_ingress_program(), frame)
    }

    fn egress(&mut self, frame: &[u8]) -> Run {
        run(self.dp.tc_egress_program(), frame)
    }

    /// Non-zero counters by name: (packets, bytes).
    fn counters(&self) -> BTreeMap<&'static str, (u64, u64)> {
        self.dp
            .counters()
            .unwrap_or_else(|e| {
                panic!("reading counters under {}: {e:?}", self.pin.path().display())
            })
            .into_iter()
            .filter(|(_, c)| c.packets != 0)
            .map(|(k, c)| (k.name(), (c.packets, c.bytes)))
            .collect()
    }

    fn nat(&self, key: &FlowKey) -> Option<DsrNatEntry> {
        self.maps.dsr_nat.get(key, 0).ok()
    }

    fn nat_count(&self) -> usize {
        self.maps.dsr_nat.keys().count()
    }
}

fn run(prog: &SchedClassifier, frame: &[u8]) -> Run {
    let (verdict, out) = testkit::bench::tc_run(prog, frame, 0);
    Run { verdict, out }
}

// ---- PKTGEN ----------------------------------------------------------------

fn ip(a: impl Into<IpAddr>) -> IpAddr {
    a.into()
}

/// The client's packet as the load balancer delivers it: DNAT'd to the pod.
fn client_to_pod(client: IpAddr, pod: IpAddr) -> Frame {
    Frame::new().ip(client, pod).tcp(CLIENT_PORT, TARGET_PORT).seq(1000).syn()
}

/// The pod's reply as it leaves the node, before translation.
fn pod_reply(pod: IpAddr, client: IpAddr) -> Frame {
    Frame::eth(NODE1_MAC, ROUTER_MAC)
        .ip(pod, client)
        .tcp(TARGET_PORT, CLIENT_PORT)
        .seq(5000)
        .ack_seq(1001)
        .flags(testkit::packet::tcp_flags::SYN | testkit::packet::tcp_flags::ACK)
}

/// Outer headers from the load balancer to `node`, up to the Geneve header.
fn geneve_to(node: IpAddr) -> Frame {
    let lb = if node.is_ipv4() { ip(LB_V4) } else { ip(LB_V6) };
    Frame::eth(ROUTER_MAC, NODE1_MAC).ip(lb, node).udp(GENEVE_SPORT, GENEVE_PORT).geneve(0)
}

fn vip_of(inner_v4: bool) -> SocketAddr {
    if inner_v4 {
        SocketAddr::new(ip(VIP_V4), SVC_PORT)
    } else {
        SocketAddr::new(ip(VIP_V6), SVC_PORT)
    }
}

/// A Geneve DSR packet: `inner` wrapped for `node` with the service option.
fn dsr_packet(node: IpAddr, inner: &Frame, vip: SocketAddr) -> Frame {
    geneve_to(node).dsr_opt(vip).inner(inner.clone())
}

/// What the kernel gets after decapsulation: the same Ethernet addresses
/// and the inner packet.
fn delivered(inner: &Frame) -> Frame {
    Frame::eth(ROUTER_MAC, NODE1_MAC).inner(inner.clone())
}

fn flow_key(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8) -> FlowKey {
    let (saddr, family) = abi::addr_to_abi(src);
    let (daddr, _) = abi::addr_to_abi(dst);
    FlowKey { saddr, daddr, sport: sport.to_be(), dport: dport.to_be(), proto, family, pad: 0 }
}

// ---- CHECK -----------------------------------------------------------------

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

#[track_caller]
fn assert_counters(node: &Node, expected: &[(&str, u64, u64)]) {
    let want: BTreeMap<&str, (u64, u64)> = expected.iter().map(|&(n, p, b)| (n, (p, b))).collect();
    assert_eq!(node.counters(), want, "counters (name: (packets, bytes))");
}

#[track_caller]
fn assert_nat(node: &Node, key: &FlowKey, vip: SocketAddr) {
    let e = node.nat(key).unwrap_or_else(|| panic!("no xlb_dsr_nat entry for {key:?}"));
    let (vaddr, family) = abi::addr_to_abi(vip.ip());
    assert_eq!((e.vaddr, u16::from_be(e.vport), e.family), (vaddr, vip.port(), family), "{e:?}");
    assert_eq!((e.pad, e.pad2), (0, 0));
    assert!(e.created_ns > 0, "created_ns is set: {e:?}");
}

/// One Geneve DSR packet for node 1: decapsulated, flow remembered, counted.
fn check_decap(tag: &str, outer: IpAddr, client: IpAddr, pod: IpAddr) {
    let mut node = Node::new(tag);
    let inner = client_to_pod(client, pod);
    let vip = vip_of(client.is_ipv4());
    let frame = dsr_packet(outer, &inner, vip).build();

    let r = node.ingress(&frame);

    assert_eq!(r.verdict, TC_ACT_OK);
    assert_frame(tag, &delivered(&inner).build(), &r.out);
    assert_counters(&node, &[("ok_tc_decap", 1, frame.len() as u64)]);
    assert_nat(&node, &flow_key(client, pod, CLIENT_PORT, TARGET_PORT, 6), vip);
    assert_eq!(node.nat_count(), 1);
}

#[test]
fn geneve_v4_in_v4_is_decapsulated_and_remembered() {
    check_decap("g44", ip(NODE1_V4), ip(CLIENT_V4), ip(POD_V4));
}

#[test]
fn geneve_v6_in_v6_is_decapsulated_and_remembered() {
    check_decap("g66", ip(NODE1_V6), ip(CLIENT_V6), ip(POD_V6));
}

#[test]
fn geneve_v6_in_v4_is_decapsulated_and_ethertype_fixed() {
    check_decap("g64", ip(NODE1_V4), ip(CLIENT_V6), ip(POD_V6));
}

#[test]
fn geneve_v4_in_v6_is_decapsulated_and_ethertype_fixed() {
    check_decap("g46", ip(NODE1_V6), ip(CLIENT_V4), ip(POD_V4));
}

#[test]
fn geneve_udp_inner_is_remembered_with_its_protocol() {
    let mut node = Node::new("gudp");
    let inner =
        Frame::new().ipv4(CLIENT_V4, POD_V4).udp(CLIENT_PORT, TARGET_PORT).payload(b"query");
    let vip = SocketAddr::new(ip(VIP_V4), 53);
    let frame = dsr_packet(ip(NODE1_V4), &inner, vip).build();

    let r = node.ingress(&frame);

    assert_eq!(r.verdict, TC_ACT_OK);
    assert_frame("udp", &delivered(&inner).build(), &r.out);
    assert_nat(&node, &flow_key(ip(CLIENT_V4), ip(POD_V4), CLIENT_PORT, TARGET_PORT, 17), vip);
}

#[test]
fn established_flow_is_not_rewritten_in_the_map() {
    let mut node = Node::new("again");
    let inner = client_to_pod(ip(CLIENT_V4), ip(POD_V4));
    let frame = dsr_packet(ip(NODE1_V4), &inner, vip_of(true)).build();
    let key = flow_key(ip(CLIENT_V4), ip(POD_V4), CLIENT_PORT, TARGET_PORT, 6);

    node.ingress(&frame);
    let first = node.nat(&key).expect("entry after the first packet");
    let r = node.ingress(&frame);

    assert_eq!(r.verdict, TC_ACT_OK);
    assert_eq!(node.nat(&key), Some(first), "created_ns kept: the entry was not rewritten");
    assert_counters(&node, &[("ok_tc_decap", 2, 2 * frame.len() as u64)]);
}

#[test]
fn option_among_others_is_found() {
    let mut node = Node::new("opts");
    let inner = client_to_pod(ip(CLIENT_V4), ip(POD_V4));
    let other = GeneveOpt { class: 0x0102, typ: 0x80, data: vec![1, 2, 3, 4, 5, 6, 7, 8] };
    let frame = geneve_to(ip(NODE1_V4))
        .geneve_opt(other)
        .geneve_opt(GeneveOpt::dsr(vip_of(true)))
        .inner(inner.clone())
        .build();

    let r = node.ingress(&frame);

    assert_eq!(r.verdict, TC_ACT_OK);
    assert_frame("two options", &delivered(&inner).build(), &r.out);
    assert_nat(
        &node,
        &flow_key(ip(CLIENT_V4), ip(POD_V4), CLIENT_PORT, TARGET_PORT, 6),
        vip_of(true),
    );
}

/// A Geneve packet the node must drop: verdict, unchanged frame, one counted
/// reason, nothing remembered.
#[track_caller]
fn check_drop(node: &mut Node, what: &str, frame: &[u8], reason: &str) {
    let before = node.counters();
    let r = node.ingress(frame);
    assert_eq!(r.verdict, TC_ACT_SHOT, "{what}: dropped");
    assert_frame(what, frame, &r.out);
    let mut want = before;
    let e = want.entry(reason).or_insert((0, 0));
    e.0 += 1;
    e.1 += frame.len() as u64;
    assert_eq!(node.counters(), want, "{what}: counted as {reason}");
    assert_eq!(node.nat_count(), 0, "{what}: nothing remembered");
}

/// Geneve that is not xlb's: passed unchanged, counted as foreign, nothing
/// remembered (another overlay may share the UDP port).
#[track_caller]
fn check_foreign(node: &mut Node, what: &str, frame: &[u8]) {
    let before = node.counters();
    let r = node.ingress(frame);
    assert_eq!(r.verdict, TC_ACT_OK, "{what}: passed");
    assert_frame(what, frame, &r.out);
    let mut want = before;
    let e = want.entry("pass_foreign_tunnel").or_insert((0, 0));
    e.0 += 1;
    e.1 += frame.len() as u64;
    assert_eq!(node.counters(), want, "{what}: counted as pass_foreign_tunnel");
    assert_eq!(node.nat_count(), 0, "{what}: nothing remembered");
}

// Changed on purpose (#10, #12 item 10): these were drop_no_dsr_opt /
// drop_bad_tunnel; Geneve that is not xlb's now passes untouched.
#[test]
fn geneve_without_an_xlb_option_passes_untouched() {
    let mut node = Node::new("noopt");
    let inner = client_to_pod(ip(CLIENT_V4), ip(POD_V4));
    let bare = geneve_to(ip(NODE1_V4)).inner(inner.clone()).build();
    check_foreign(&mut node, "no options", &bare);
    let foreign = geneve_to(ip(NODE1_V4))
        .geneve_opt(GeneveOpt { class: 0x0102, typ: 0x01, data: vec![0; 8] })
        .inner(inner.clone())
        .build();
    check_foreign(&mut node, "another class's option", &foreign);
    let good = dsr_packet(ip(NODE1_V4), &inner, vip_of(true)).build();
    let gnv = 14 + 20 + 8;
    let mut wrong_vni = good.clone();
    wrong_vni[gnv + 4..gnv + 7].copy_from_slice(&[0, 0, 7]);
    check_foreign(&mut node, "VNI 7", &wrong_vni);
    let mut version = good.clone();
    version[gnv] |= 0x40;
    check_foreign(&mut node, "version 1", &version);
    let mut oam = good;
    oam[gnv + 1] |= 0x80;
    check_foreign(&mut node, "OAM packet", &oam);
    // From a stranger too: not xlb's, so not xlb's to police.
    let stranger = Frame::eth(ROUTER_MAC, NODE1_MAC)
        .ip(ip(STRANGER_V4), ip(NODE1_V4))
        .udp(GENEVE_SPORT, GENEVE_PORT)
        .geneve(0)
        .inner(inner)
        .build();
    check_foreign(&mut node, "option-less Geneve from an unknown host", &stranger);
}

#[test]
fn xlb_tunnel_traffic_from_an_unknown_sender_is_dropped() {
    let mut node = Node::with_services(
        "stranger",
        vec![ipip_service(ip(VIP_V4), &[(ip(POD_V4), ip(NODE1_V4))])],
    );
    for (src, dst, client, pod) in [
        (ip(STRANGER_V4), ip(NODE1_V4), ip(CLIENT_V4), ip(POD_V4)),
        (ip(STRANGER_V6), ip(NODE1_V6), ip(CLIENT_V6), ip(POD_V6)),
    ] {
        let inner = client_to_pod(client, pod);
        let dsr = Frame::eth(ROUTER_MAC, NODE1_MAC)
            .ip(src, dst)
            .udp(GENEVE_SPORT, GENEVE_PORT)
            .geneve(0)
            .dsr_opt(vip_of(client.is_ipv4()))
            .inner(inner.clone())
            .build();
        check_drop(&mut node, "DSR from an unknown host", &dsr, "drop_tunnel_peer");
        let overlay = Frame::eth(ROUTER_MAC, NODE1_MAC)
            .ip(src, dst)
            .udp(GENEVE_SPORT, GENEVE_PORT)
            .geneve(0)
            .geneve_opt(GeneveOpt::identity(lb::abi::ID_POD_MIN))
            .inner(inner)
            .build();
        check_drop(&mut node, "overlay from an unknown host", &overlay, "drop_tunnel_peer");
    }
    let ipip = Frame::eth(ROUTER_MAC, NODE1_MAC)
        .ip(ip(STRANGER_V4), ip(NODE1_V4))
        .inner(client_to_vip(ip(CLIENT_V4), ip(VIP_V4)))
        .build();
    check_drop(&mut node, "IPIP from an unknown host", &ipip, "drop_tunnel_peer");
}

#[test]
fn malformed_geneve_is_dropped() {
    let mut node = Node::new("bad");
    let inner = client_to_pod(ip(CLIENT_V4), ip(POD_V4));
    let good = dsr_packet(ip(NODE1_V4), &inner, vip_of(true)).build();
    let gnv = 14 + 20 + 8; // Geneve header offset in a v4 frame

    // (Version 1, OAM and another VNI are not xlb's: they pass, see
    // geneve_without_an_xlb_option_passes_untouched.)

    let long_opt = geneve_to(ip(NODE1_V4))
        .geneve_opt(GeneveOpt {
            class: GENEVE_OPT_CLASS,
            typ: 0x01,
            data: vec![10, 100, 0, 1, 0, 80, 0, 0, 0, 0, 0, 0],
        })
        .inner(inner.clone())
        .build();
    check_drop(&mut node, "DSR4 option of 3 words", &long_opt, "drop_bad_tunnel");

    let v6_opt_v4_inner = dsr_packet(ip(NODE1_V4), &inner, vip_of(false)).build();
    check_drop(&mut node, "DSR6 option on an IPv4 packet", &v6_opt_v4_inner, "drop_bad_tunnel");

    let mut not_ip = good.clone();
    not_ip[gnv + 2..gnv + 4].copy_from_slice(&0x6558u16.to_be_bytes()); // Ethernet inside
    check_drop(&mut node, "protocol type 0x6558", &not_ip, "drop_bad_tunnel");

    let mut opt_past_end = good.clone();
    opt_past_end[gnv + 8 + 3] = 0x1f; // option claims 31 words
    check_drop(&mut node, "option longer than the options", &opt_past_end, "drop_bad_tunnel");
}

/// Rewrites the outer IP and UDP lengths (and the IPv4 header checksum) of a
/// cut frame, so that only the inner headers are short.
fn fix_outer_lengths(frame: &mut [u8], v6: bool) {
    let len = frame.len();
    let udp = if v6 { 14 + 40 } else { 14 + 20 };
    if v6 {
        frame[18..20].copy_from_slice(&((len - 54) as u16).to_be_bytes());
    } else {
        frame[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
        frame[24..26].copy_from_slice(&[0, 0]);
        let sum = testkit::packet::checksum(&frame[14..34]);
        frame[24..26].copy_from_slice(&sum.to_be_bytes());
    }
    if len >= udp + 6 {
        frame[udp + 4..udp + 6].copy_from_slice(&((len - udp) as u16).to_be_bytes());
    }
}

/// Cuts a Geneve frame at every length past the outer IP header. `plain`: the frame is only cut, so the
/// outer lengths claim more than is there. Otherwise the outer lengths are
/// fixed to the cut and the inner headers run short. `expect(len)` is the
/// drop reason for each cut.
fn check_truncation(
    tag: &str,
    outer: IpAddr,
    client: IpAddr,
    pod: IpAddr,
    expect: impl Fn(usize, bool) -> &'static str,
) {
    let mut node = Node::new(tag);
    let inner = client_to_pod(client, pod);
    let full = dsr_packet(outer, &inner, vip_of(client.is_ipv4())).build();
    for plain in [true, false] {
        // BPF_PROG_TEST_RUN refuses (EINVAL) an IP frame shorter than its
        // IP header: the cuts start after the outer IP header.
        let first = 14 + if outer.is_ipv4() { 20 } else { 40 };
        for len in first..full.len() {
            let mut frame = full[..len].to_vec();
            if !plain {
                fix_outer_lengths(&mut frame, outer.is_ipv6());
            }
            let what =
                format!("{tag} cut at {len} ({})", if plain { "plain" } else { "lengths fixed" });
            check_drop(&mut node, &what, &frame, expect(len, plain));
        }
    }
}

#[test]
fn geneve_v4_truncated_at_every_length_is_dropped() {
    // eth 0..14 | ipv4 ..34 | udp ..42 | geneve ..50 | DSR4 option ..62 | ipv4 ..82 | tcp ..102
    check_truncation("cut4", ip(NODE1_V4), ip(CLIENT_V4), ip(POD_V4), |len, plain| match len {
        _ if len < 42 => "drop_truncated",
        _ if plain || len < 50 => "drop_bad_len",
        _ if len < 62 => "drop_bad_tunnel",
        _ if len < 82 => "drop_truncated",
        _ => "drop_bad_len",
    });
}

#[test]
fn geneve_v6_truncated_at_every_length_is_dropped() {
    // eth 0..14 | ipv6 ..54 | udp ..62 | geneve ..70 | DSR6 option ..94 | ipv6 ..134 | tcp ..154
    check_truncation("cut6", ip(NODE1_V6), ip(CLIENT_V6), ip(POD_V6), |len, plain| match len {
        _ if len < 62 => "drop_truncated",
        _ if plain || len < 70 => "drop_bad_len",
        _ if len < 94 => "drop_bad_tunnel",
        _ if len < 134 => "drop_truncated",
        _ => "drop_bad_len",
    });
}

/// Not a tunnel packet for this node: passed unchanged, counted.
#[track_caller]
fn check_pass(node: &mut Node, what: &str, frame: &[u8], reason: &str) {
    let r = node.ingress(frame);
    assert_eq!(r.verdict, TC_ACT_OK, "{what}: passed");
    assert_frame(what, frame, &r.out);
    assert_counters(node, &[(reason, 1, frame.len() as u64)]);
}

#[test]
fn geneve_for_another_node_passes_unchanged() {
    let mut node = Node::new("other");
    let inner = client_to_pod(ip(CLIENT_V4), ip(POD_V4));
    let frame = dsr_packet(ip(NODE2_V4), &inner, vip_of(true)).build();
    check_pass(&mut node, "Geneve to node 2", &frame, "pass_not_tunnel");
    assert_eq!(node.nat_count(), 0);
}

#[test]
fn other_traffic_passes_unchanged() {
    let mut node = Node::new("plain");
    let to_pod = Frame::eth(ROUTER_MAC, NODE1_MAC)
        .ipv4(CLIENT_V4, POD_V4)
        .tcp(CLIENT_PORT, 80)
        .syn()
        .build();
    check_pass(&mut node, "TCP to a pod", &to_pod, "pass_not_tunnel");

    let mut node = Node::new("port");
    let other_port = Frame::eth(ROUTER_MAC, NODE1_MAC)
        .ipv4(LB_V4, NODE1_V4)
        .udp(GENEVE_SPORT, GENEVE_PORT + 1)
        .payload(&[0; 32])
        .build();
    check_pass(&mut node, "UDP to another port of the node", &other_port, "pass_not_tunnel");

    let mut node = Node::new("arp");
    let arp = Frame::eth(ROUTER_MAC, [0xff; 6]).arp_request(ROUTER_MAC, LB_V4, NODE1_V4).build();
    check_pass(&mut node, "ARP", &arp, "pass_not_ip");

    let mut node = Node::new("frag");
    let frag = Frame::eth(ROUTER_MAC, NODE1_MAC)
        .ipv4(LB_V4, NODE1_V4)
        .mf()
        .udp(GENEVE_SPORT, GENEVE_PORT)
        .payload(&[0; 64])
        .build();
    check_pass(&mut node, "first fragment of a Geneve packet", &frag, "pass_fragment");
}

// ---- egress: the reply leaves as the service --------------------------------

/// The pod's reply after a Geneve SYN created the flow: its source becomes
/// the service address and port, checksums fixed (the frame builder computes
/// the expected ones from scratch).
fn check_revnat(tag: &str, client: IpAddr, pod: IpAddr, reply: Frame, expected: Frame) {
    check_revnat_on(Node::new(tag), tag, client, pod, reply, expected)
}

fn check_revnat_on(
    mut node: Node,
    tag: &str,
    client: IpAddr,
    pod: IpAddr,
    reply: Frame,
    expected: Frame,
) {
    let vip = vip_of(client.is_ipv4());
    let syn = client_to_pod(client, pod);
    let outer = if client.is_ipv4() { ip(NODE1_V4) } else { ip(NODE1_V6) };
    let syn_frame = dsr_packet(outer, &syn, vip).build();
    assert_eq!(node.ingress(&syn_frame).verdict, TC_ACT_OK);
    let reply = reply.build();

    let r = node.egress(&reply);

    assert_eq!(r.verdict, TC_ACT_OK);
    assert_frame(tag, &expected.build(), &r.out);
    assert_counters(
        &node,
        &[("ok_tc_decap", 1, syn_frame.len() as u64), ("ok_tc_revnat", 1, reply.len() as u64)],
    );
    // Each is counted at the hook it ran at, and nowhere else.
    let by_hook: Vec<(&str, &str, u64)> = lb::loader::read_hook_counters(node.pin.path())
        .unwrap_or_else(|e| panic!("reading counters by hook: {e}"))
        .into_iter()
        .filter(|(_, _, c)| c.packets != 0)
        .map(|(h, k, c)| (h.name(), k.name(), c.packets))
        .collect();
    assert_eq!(by_hook, [("tc_ingress", "ok_tc_decap", 1), ("tc_egress", "ok_tc_revnat", 1)]);
}

#[test]
fn reply_v4_tcp_leaves_as_the_service() {
    let (c, p, v) = (ip(CLIENT_V4), ip(POD_V4), ip(VIP_V4));
    check_revnat("rev4", c, p, pod_reply(p, c), pod_reply(v, c).sport(SVC_PORT));
}

#[test]
fn reply_v6_tcp_leaves_as_the_service() {
    let (c, p, v) = (ip(CLIENT_V6), ip(POD_V6), ip(VIP_V6));
    check_revnat("rev6", c, p, pod_reply(p, c), pod_reply(v, c).sport(SVC_PORT));
}

/// #12 item 12: on a kernel without bpf_l4_csum_replace's BPF_F_IPV6 (before
/// 6.16) the probe loads the tc object with the flag off, and IPv6 replies
/// are still translated with correct checksums (before: the helper refused
/// the flag and every IPv6 reply counted drop_nat). Simulated here by loading
/// for a kernel without the feature.
#[test]
fn reply_v6_tcp_without_the_csum_flag_leaves_as_the_service() {
    let (c, p, v) = (ip(CLIENT_V6), ip(POD_V6), ip(VIP_V6));
    let node = Node::loaded("rev6nf", Vec::new(), Some(Features { csum_ipv6_flag: false }));
    assert_eq!(node.dp.features(), Features { csum_ipv6_flag: false });
    check_revnat_on(node, "rev6nf", c, p, pod_reply(p, c), pod_reply(v, c).sport(SVC_PORT));
}

/// #12 item 12: the running kernel is asked, not assumed: the probe agrees
/// with its version, and a missing feature is named with its fallback.
#[test]
fn kernel_features_are_probed_at_load() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let probed = Features::probe().unwrap_or_else(|e| panic!("{}", lb::report::Chain(&e)));
    assert_eq!(probed.csum_ipv6_flag, version >= (6, 16), "kernel {}", release.trim());
    let node = Node::new("probe");
    assert_eq!(node.dp.features(), probed, "loaded for what the kernel has");
    let missing = Features { csum_ipv6_flag: false }.missing();
    assert_eq!(missing.len(), 1);
    let msg = missing[0].to_string();
    assert!(msg.contains("BPF_F_IPV6") && msg.contains("6.16"), "{msg}");
    assert!(Features::all().missing().is_empty());
}

fn udp_flow(tag: &str, client: IpAddr, pod: IpAddr, vip: IpAddr, zero_csum: bool) {
    reply_flow(tag, true, client, pod, SocketAddr::new(vip, 53), zero_csum);
}

/// A flow (TCP or UDP) through the service `svc` to the pod's TARGET_PORT,
/// remembered from its Geneve packet; the pod's reply must leave as `svc`
/// with the checksum the frame builder computes from scratch. The tc NAT
/// takes an address change and a port change in one helper call when both
/// change (nat.h, ctx.h): each combination is run.
fn reply_flow(tag: &str, udp: bool, client: IpAddr, pod: IpAddr, svc: SocketAddr, zero_csum: bool) {
    let mut node = Node::new(tag);
    let l4 = |f: Frame, sport: u16, dport: u16| {
        if udp {
            f.udp(sport, dport).payload(b"query or answer")
        } else {
            f.tcp(sport, dport).seq(1000).ack_seq(2000).flags(testkit::packet::tcp_flags::ACK)
        }
    };
    let query = l4(Frame::new().ip(client, pod), CLIENT_PORT, TARGET_PORT);
    let outer = if client.is_ipv4() { ip(NODE1_V4) } else { ip(NODE1_V6) };
    assert_eq!(node.ingress(&dsr_packet(outer, &query, svc).build()).verdict, TC_ACT_OK);
    let answer = |src: IpAddr, sport: u16| {
        let f = l4(Frame::eth(NODE1_MAC, ROUTER_MAC).ip(src, client), sport, CLIENT_PORT);
        if zero_csum {
            f.l4_checksum(0)
        } else {
            f
        }
    };

    let r = node.egress(&answer(pod, TARGET_PORT).build());

    assert_eq!(r.verdict, TC_ACT_OK, "{tag}: counters {:?}", node.counters());
    assert_frame(tag, &answer(svc.ip(), svc.port()).build(), &r.out);
    assert_eq!(node.counters().get("ok_tc_revnat").map(|c| c.0), Some(1));
}

#[test]
fn reply_v4_udp_leaves_as_the_service() {
    udp_flow("udp4", ip(CLIENT_V4), ip(POD_V4), ip(VIP_V4), false);
}

#[test]
fn reply_v4_udp_without_checksum_keeps_zero() {
    udp_flow("udp40", ip(CLIENT_V4), ip(POD_V4), ip(VIP_V4), true);
}

#[test]
fn reply_v6_udp_leaves_as_the_service() {
    udp_flow("udp6", ip(CLIENT_V6), ip(POD_V6), ip(VIP_V6), false);
}

/// Address and port, address only, port only; TCP and UDP; both families.
#[test]
fn reply_nat_of_every_kind_leaves_as_the_service() {
    for v6 in [false, true] {
        let (c, p, v) = if v6 {
            (ip(CLIENT_V6), ip(POD_V6), ip(VIP_V6))
        } else {
            (ip(CLIENT_V4), ip(POD_V4), ip(VIP_V4))
        };
        for udp in [false, true] {
            for (kind, svc) in [
                ("both", SocketAddr::new(v, SVC_PORT)),
                ("addr", SocketAddr::new(v, TARGET_PORT)),
                ("port", SocketAddr::new(p, SVC_PORT)),
            ] {
                let tag =
                    format!("rk{}{}{kind}", if v6 { 6 } else { 4 }, if udp { "u" } else { "t" });
                reply_flow(&tag, udp, c, p, svc, false);
            }
        }
    }
}

/// A UDP datagram without checksum (IPv4) keeps none whatever changes.
#[test]
fn reply_v4_udp_without_checksum_keeps_zero_for_every_kind() {
    let (c, p, v) = (ip(CLIENT_V4), ip(POD_V4), ip(VIP_V4));
    reply_flow("rkz4a", true, c, p, SocketAddr::new(v, TARGET_PORT), true);
    reply_flow("rkz4p", true, c, p, SocketAddr::new(p, SVC_PORT), true);
}

/// An SCTP association through the service `vip:svc_port` to the pod's
/// TARGET_PORT: the client's packet decapsulated and remembered (protocol
/// 132), the pod's reply leaving as the service. SCTP's CRC32c covers the
/// ports, not the addresses: unchanged when only the address is rewritten,
/// updated when the port is (checked against the builder's bitwise CRC32c);
/// a CRC of 0 (the stack computes it later: SCTP CRC offload) stays 0.
fn sctp_flow(tag: &str, client: IpAddr, pod: IpAddr, vip: IpAddr, svc_port: u16, crc0: bool) {
    let mut node = Node::new(tag);
    let init = Frame::new().ip(client, pod).sctp(CLIENT_PORT, TARGET_PORT).payload(&[1; 20]);
    let outer = if client.is_ipv4() { ip(NODE1_V4) } else { ip(NODE1_V6) };
    let svc = SocketAddr::new(vip, svc_port);
    let r = node.ingress(&dsr_packet(outer, &init, svc).build());
    assert_eq!(r.verdict, TC_ACT_OK, "{tag}: the client's packet is delivered");
    assert_nat(&node, &flow_key(client, pod, CLIENT_PORT, TARGET_PORT, 132), svc);
    let reply = |src: IpAddr, sport: u16| {
        Frame::eth(NODE1_MAC, ROUTER_MAC)
            .ip(src, client)
            .sctp(sport, CLIENT_PORT)
            .payload(&(0..77).collect::<Vec<u8>>())
    };
    let zero_crc = |f: Frame| {
        let mut b = f.build();
        let at = 14 + if client.is_ipv4() { 20 } else { 40 } + 8;
        if crc0 {
            b[at..at + 4].fill(0);
        }
        b
    };

    let r = node.egress(&zero_crc(reply(pod, TARGET_PORT)));

    assert_eq!(r.verdict, TC_ACT_OK);
    assert_frame(tag, &zero_crc(reply(vip, svc_port)), &r.out);
    assert_eq!(node.counters().get("ok_tc_revnat").map(|c| c.0), Some(1));
}

#[test]
fn reply_sctp_address_only_keeps_its_crc() {
    sctp_flow("sctp4a", ip(CLIENT_V4), ip(POD_V4), ip(VIP_V4), TARGET_PORT, false);
    sctp_flow("sctp6a", ip(CLIENT_V6), ip(POD_V6), ip(VIP_V6), TARGET_PORT, false);
}

#[test]
fn reply_sctp_port_translation_recomputes_its_crc() {
    sctp_flow("sctp4p", ip(CLIENT_V4), ip(POD_V4), ip(VIP_V4), SVC_PORT, false);
    sctp_flow("sctp6p", ip(CLIENT_V6), ip(POD_V6), ip(VIP_V6), SVC_PORT, false);
}

#[test]
fn reply_sctp_crc_left_to_the_stack_stays_zero() {
    sctp_flow("sctp4z", ip(CLIENT_V4), ip(POD_V4), ip(VIP_V4), SVC_PORT, true);
}

#[test]
fn reply_without_entry_passes_unchanged() {
    let mut node = Node::new("nonat");
    for (c, p) in [(ip(CLIENT_V4), ip(POD_V4)), (ip(CLIENT_V6), ip(POD_V6))] {
        let reply = pod_reply(p, c).build();
        let r = node.egress(&reply);
        assert_eq!(r.verdict, TC_ACT_OK);
        assert_frame("reply without entry", &reply, &r.out);
    }
    let v4 = pod_reply(ip(POD_V4), ip(CLIENT_V4)).build().len() as u64;
    let v6 = pod_reply(ip(POD_V6), ip(CLIENT_V6)).build().len() as u64;
    assert_counters(&node, &[("pass_no_nat", 2, v4 + v6)]);
}

#[test]
fn truncated_reply_is_counted() {
    let mut node = Node::new("rcut");
    let reply = pod_reply(ip(POD_V4), ip(CLIENT_V4)).build();
    let r = node.egress(&reply[..14 + 20 + 10]);
    assert_eq!(r.verdict, TC_ACT_SHOT);
    assert_counters(&node, &[("drop_truncated", 1, 44)]);
}

// ---- ICMP errors forwarded by the load balancer -----------------------------

/// A router's "too big" about the service's reply (service -> client),
/// forwarded by the LB with the endpoint in the option, reaches the pod
/// translated: sent to the pod, quoting pod:targetPort -> client.
fn check_icmp(tag: &str, v4: bool) {
    let mut node = Node::new(tag);
    let (client, pod, vip, router) = if v4 {
        (ip(CLIENT_V4), ip(POD_V4), ip(VIP_V4), ip(ROUTER_V4))
    } else {
        (ip(CLIENT_V6), ip(POD_V6), ip(VIP_V6), ip(ROUTER_V6))
    };
    // IPv4 routers quote the IP header + 8 bytes (RFC 792), which stops
    // before the TCP checksum; IPv6 routers quote the whole segment, whose
    // TCP checksum is translated too (the builder computes it afresh).
    let error = |dst: IpAddr, quoted_src: IpAddr, quoted_sport: u16| {
        let e = Frame::new().ip(router, dst);
        let e = if v4 { e.icmp4_frag_needed(1400) } else { e.icmp6_packet_too_big(1400) };
        let e = e.ip(quoted_src, client).tcp(quoted_sport, CLIENT_PORT).seq(5000).ack();
        if v4 {
            e.quote_len(28)
        } else {
            e.payload(&[0x55; 64])
        }
    };
    let outer = if v4 { ip(NODE1_V4) } else { ip(NODE1_V6) };
    let frame = geneve_to(outer)
        .geneve_opt(GeneveOpt::endpoint(SocketAddr::new(pod, TARGET_PORT)))
        .inner(error(vip, vip, SVC_PORT))
        .build();

    let r = node.ingress(&frame);

    assert_eq!(r.verdict, TC_ACT_OK);
    assert_frame(tag, &delivered(&error(pod, pod, TARGET_PORT)).build(), &r.out);
    assert_counters(&node, &[("ok_icmp_forward", 1, frame.len() as u64)]);
    assert_eq!(node.nat_count(), 0, "errors create no flow");
}

#[test]
fn icmp4_frag_needed_reaches_the_endpoint_translated() {
    check_icmp("icmp4", true);
}

#[test]
fn icmp6_packet_too_big_reaches_the_endpoint_translated() {
    check_icmp("icmp6", false);
}

// ---- IPIP: the node picks the backend itself --------------------------------

/// default/nginx:http in IPIP mode, VIP:80 -> `pods` on `node` port 8080.
fn ipip_service(vip: IpAddr, pods: &[(IpAddr, IpAddr)]) -> Service {
    let mut s = Service::new(ServiceKey::new("default", "nginx", "http"));
    s.encap = Encap::Ipip;
    s.frontends.push(Frontend {
        addr: vip,
        port: SVC_PORT,
        proto: Proto::Tcp,
        kind: FrontendKind::LoadBalancer,
    });
    s.backends = pods
        .iter()
        .map(|&(addr, node)| Backend {
            name: format!("{addr}:{TARGET_PORT}").into(),
            addr,
            port: TARGET_PORT,
            node,
            weight: 1,
            state: BackendState::Active,
        })
        .collect();
    s
}

/// The client's packet as sent, to the service address.
fn client_to_vip(client: IpAddr, vip: IpAddr) -> Frame {
    Frame::new().ip(client, vip).tcp(CLIENT_PORT, SVC_PORT).seq(1000).syn()
}

fn ipip_to(node: IpAddr, inner: &Frame) -> Frame {
    let lb = if node.is_ipv4() { ip(LB_V4) } else { ip(LB_V6) };
    Frame::eth(ROUTER_MAC, NODE1_MAC).ip(lb, node).inner(inner.clone())
}

fn check_ipip(tag: &str, outer: IpAddr, client: IpAddr, vip: IpAddr, pod: IpAddr) {
    let node1 = if pod.is_ipv4() { ip(NODE1_V4) } else { ip(NODE1_V6) };
    let mut node = Node::with_services(tag, vec![ipip_service(vip, &[(pod, node1)])]);
    let frame = ipip_to(outer, &client_to_vip(client, vip)).build();

    let r = node.ingress(&frame);

    assert_eq!(r.verdict, TC_ACT_OK, "{tag}: counters {:?}", node.counters());
    assert_frame(tag, &delivered(&client_to_pod(client, pod)).build(), &r.out);
    assert_counters(&node, &[("ok_tc_decap", 1, frame.len() as u64)]);
    assert_nat(
        &node,
        &flow_key(client, pod, CLIENT_PORT, TARGET_PORT, 6),
        SocketAddr::new(vip, SVC_PORT),
    );

    // The reply leaves as the service.
    let reply = pod_reply(pod, client).build();
    let r = node.egress(&reply);
    assert_eq!(r.verdict, TC_ACT_OK);
    assert_frame(tag, &pod_reply(vip, client).sport(SVC_PORT).build(), &r.out);
}

#[test]
fn ipip_v4_is_dnatted_to_the_local_backend() {
    check_ipip("ipip4", ip(NODE1_V4), ip(CLIENT_V4), ip(VIP_V4), ip(POD_V4));
}

#[test]
fn ip6ip6_is_dnatted_to_the_local_backend() {
    check_ipip("ip6ip6", ip(NODE1_V6), ip(CLIENT_V6), ip(VIP_V6), ip(POD_V6));
}

#[test]
fn ipv6_in_ipv4_is_dnatted_to_the_local_backend() {
    check_ipip("ip6ip4", ip(NODE1_V4), ip(CLIENT_V6), ip(VIP_V6), ip(POD_V6));
}

#[test]
fn ipip_flow_of_another_nodes_backend_is_dropped() {
    let pod2 = ip(Ipv4Addr::new(10, 244, 2, 11));
    let mut node =
        Node::with_services("ipipfar", vec![ipip_service(ip(VIP_V4), &[(pod2, ip(NODE2_V4))])]);
    let frame = ipip_to(ip(NODE1_V4), &client_to_vip(ip(CLIENT_V4), ip(VIP_V4))).build();

    let r = node.ingress(&frame);

    assert_eq!(r.verdict, TC_ACT_SHOT);
    assert_frame("backend on node 2", &frame, &r.out);
    assert_counters(&node, &[("drop_not_local", 1, frame.len() as u64)]);
    assert_eq!(node.nat_count(), 0);
}

#[test]
fn ipip_to_a_non_frontend_passes_unchanged() {
    let mut node = Node::with_services("ipipnf", vec![ipip_service(ip(VIP_V4), &[])]);
    let other = ip(Ipv4Addr::new(10, 100, 0, 99));
    let frame = ipip_to(ip(NODE1_V4), &client_to_vip(ip(CLIENT_V4), other)).build();
    check_pass(&mut node, "IPIP to 10.100.0.99", &frame, "pass_not_frontend");
}

// ---- ICMP errors leaving the node about a client's packet -------------------

/// A DNS flow established through Geneve; the endpoint (or the node) then
/// sends an error about the query. It must leave quoting the query as the
/// client sent it (to the service), from the service when the endpoint sent
/// it. The quoted UDP checksum is whole here, so it is translated too.
fn check_egress_icmp(tag: &str, v4: bool, from_node: bool) {
    let mut node = Node::new(tag);
    let (client, pod, vip, node1) = if v4 {
        (ip(CLIENT_V4), ip(POD_V4), ip(VIP_V4), ip(NODE1_V4))
    } else {
        (ip(CLIENT_V6), ip(POD_V6), ip(VIP_V6), ip(NODE1_V6))
    };
    let svc = SocketAddr::new(vip, 53);
    let query = |dst: IpAddr, dport: u16| {
        Frame::new().ip(client, dst).udp(CLIENT_PORT, dport).payload(b"query")
    };
    let syn = dsr_packet(node1, &query(pod, TARGET_PORT), svc).build();
    assert_eq!(node.ingress(&syn).verdict, TC_ACT_OK);
    let error = |src: IpAddr, quoted_dst: IpAddr, quoted_dport: u16| {
        let e = Frame::eth(NODE1_MAC, ROUTER_MAC).ip(src, client);
        let e = match (v4, from_node) {
            (true, false) => e.icmp4(3, 3, 0), // port unreachable
            (false, false) => e.icmp6(1, 4, 0),
            (true, true) => e.icmp4_frag_needed(1400),
            (false, true) => e.icmp6_packet_too_big(1400),
        };
        e.inner(query(quoted_dst, quoted_dport))
    };
    let sender = if from_node { node1 } else { pod };
    let frame = error(sender, pod, TARGET_PORT).build();

    let r = node.egress(&frame);

    assert_eq!(r.verdict, TC_ACT_OK, "{tag}: counters {:?}", node.counters());
    let translated_src = if from_node { node1 } else { vip };
    assert_frame(tag, &error(translated_src, vip, 53).build(), &r.out);
    assert_eq!(node.counters().get("ok_tc_revnat"), Some(&(1, frame.len() as u64)));
}

#[test]
fn endpoint_port_unreachable_v4_leaves_as_the_service() {
    check_egress_icmp("eicmp4", true, false);
}

#[test]
fn endpoint_port_unreachable_v6_leaves_as_the_service() {
    check_egress_icmp("eicmp6", false, false);
}

#[test]
fn node_frag_needed_v4_keeps_its_source_and_quotes_the_service() {
    check_egress_icmp("nicmp4", true, true);
}

#[test]
fn node_packet_too_big_v6_keeps_its_source_and_quotes_the_service() {
    check_egress_icmp("nicmp6", false, true);
}

#[test]
fn other_icmp_leaving_passes_unchanged() {
    let mut node = Node::new("eicmpx");
    let echo_reply =
        Frame::eth(NODE1_MAC, ROUTER_MAC).ipv4(POD_V4, CLIENT_V4).icmp4(0, 0, 0x0001_0001).build();
    let r = node.egress(&echo_reply);
    assert_eq!(r.verdict, TC_ACT_OK);
    assert_frame("echo reply", &echo_reply, &r.out);
    let unknown = Frame::eth(NODE1_MAC, ROUTER_MAC)
        .ipv4(POD_V4, CLIENT_V4)
        .icmp4(3, 3, 0)
        .ipv4(CLIENT_V4, POD_V4)
        .udp(CLIENT_PORT, 9999)
        .payload(b"query")
        .build();
    let r = node.egress(&unknown);
    assert_eq!(r.verdict, TC_ACT_OK);
    assert_frame("error about an unknown flow", &unknown, &r.out);
    assert_counters(
        &node,
        &[("pass_l4_proto", 1, echo_reply.len() as u64), ("pass_no_nat", 1, unknown.len() as u64)],
    );
}

#[test]
fn a_direct_syn_takes_over_a_4_tuple_from_an_old_dsr_flow() {
    // A load-balanced connection left its reverse translation behind; a new
    // connection with the same 4-tuple made straight to the pod (no tunnel)
    // must get its replies untranslated.
    let mut node = Node::new("direct");
    for (c, p) in [(ip(CLIENT_V4), ip(POD_V4)), (ip(CLIENT_V6), ip(POD_V6))] {
        let inner = client_to_pod(c, p);
        let vip = vip_of(c.is_ipv4());
        let r = node.ingress(&dsr_packet(ip(NODE1_V4), &inner, vip).build());
        assert_eq!(r.verdict, TC_ACT_OK);
        assert_nat(&node, &flow_key(c, p, CLIENT_PORT, TARGET_PORT, 6), vip);

        let direct = Frame::eth(ROUTER_MAC, NODE1_MAC).inner(inner.clone()).build();
        let r = node.ingress(&direct);
        assert_eq!(r.verdict, TC_ACT_OK);
        assert_frame("direct SYN", &direct, &r.out);

        let reply = pod_reply(p, c).build();
        let r = node.egress(&reply);
        assert_frame("reply of the direct connection", &reply, &r.out);
    }
}
