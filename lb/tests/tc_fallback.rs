//! The per-packet fallback for socket frontends (tc/fallback.h, #9) run in
//! the real kernel with BPF_PROG_TEST_RUN on the uplink's egress program:
//! it makes XDP's decision (xlb_select), so a flow keeps its backend across
//! a Maglev table change (the xlb_ct entry pins it), a TCP SYN re-picks when
//! its old backend is terminating, and ClientIP affinity holds across
//! source ports. Privileged tier: needs root and BPF; fails (never skips)
//! without them.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use lb::{
    datapath::Datapath,
    loader::{Dataplane, LoadOptions},
    model::{
        Affinity, Backend, BackendState, Frontend, FrontendKind, NodeConfig, Proto, Service,
        ServiceKey,
    },
};
use testkit::{
    bench::tc_run,
    packet::{Frame, Mac},
    pins::PinDir,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
const TC_ACT_OK: u32 = 0;
const NODE_MAC: Mac = [0x02, 0, 0, 0, 0, 0x11];
const ROUTER_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
/// Flows per check: with 2 → 8 backends Maglev moves ~3/4 of them, so a
/// fallback without the connection table fails this with certainty.
const FLOWS: u16 = 64;

/// A node with the fallback's programs and one ClusterIP service.
struct Node {
    dp: Dataplane,
    datapath: Datapath,
    _pin: PinDir, // last: dropped after the programs and maps are closed
}

impl Node {
    fn new(tag: &str) -> Node {
        let pin = PinDir::new(tag);
        let dp = Dataplane::load(&LoadOptions::small(pin.path())).unwrap_or_else(|e| {
            panic!("loading the datapath into {}: {e:?}", pin.path().display())
        });
        let datapath = Datapath::open(pin.path())
            .unwrap_or_else(|e| panic!("opening {}: {e:?}", pin.path().display()));
        Node { dp, datapath, _pin: pin }
    }

    fn apply(&mut self, svc: &Service) {
        self.datapath
            .apply_services(&NodeConfig::default(), [(&svc.key.clone(), Some(svc))])
            .unwrap_or_else(|e| panic!("applying {:?}: {e:?}", svc.key));
    }

    /// The backend (address, port) the client's packet was DNAT'd to.
    fn send(&mut self, frame: &Frame) -> (IpAddr, u16) {
        let out = tc_run(self.dp.tc_egress_program(), &frame.build(), 0);
        assert_eq!(out.0, TC_ACT_OK, "verdict");
        let f = out.1;
        // Ethernet 14 + IPv4 without options 20; ports start the L4 header.
        let dst = Ipv4Addr::new(f[30], f[31], f[32], f[33]);
        (dst.into(), u16::from_be_bytes([f[36], f[37]]))
    }
}

fn web(backends: u8, proto: Proto) -> Service {
    let mut s = Service::new(ServiceKey::new("default", "web", "http"));
    s.sock_frontends = vec![Frontend {
        addr: CLUSTER_IP.into(),
        port: PORT,
        proto,
        kind: FrontendKind::ClusterIp,
    }];
    s.backends = (1..=backends)
        .map(|i| Backend::new(Ipv4Addr::new(10, 244, 1, i).into(), TARGET_PORT, CLIENT.into()))
        .collect();
    s.maglev_size = 251;
    s
}

fn syn(sport: u16) -> Frame {
    Frame::eth(NODE_MAC, ROUTER_MAC).ipv4(CLIENT, CLUSTER_IP).tcp(sport, PORT).seq(1).syn()
}

fn ack(sport: u16) -> Frame {
    Frame::eth(NODE_MAC, ROUTER_MAC)
        .ipv4(CLIENT, CLUSTER_IP)
        .tcp(sport, PORT)
        .seq(2)
        .ack_seq(1)
        .ack()
}

fn datagram(sport: u16) -> Frame {
    Frame::eth(NODE_MAC, ROUTER_MAC).ipv4(CLIENT, CLUSTER_IP).udp(sport, PORT).payload(b"query")
}

fn backend_ip(i: u8) -> IpAddr {
    Ipv4Addr::new(10, 244, 1, i).into()
}

/// Established TCP flows and UDP flows keep their backends when the service
/// grows from 2 to 8 backends; new flows use the new table.
#[test]
fn fallback_flows_keep_their_backend_across_a_table_change() {
    for (tag, proto, first, next) in [
        ("fbct_tcp", Proto::Tcp, syn as fn(u16) -> Frame, ack as fn(u16) -> Frame),
        ("fbct_udp", Proto::Udp, datagram as fn(u16) -> Frame, datagram as fn(u16) -> Frame),
    ] {
        let mut node = Node::new(tag);
        node.apply(&web(2, proto));
        let before: BTreeMap<u16, (IpAddr, u16)> =
            (0..FLOWS).map(|i| (20000 + i, node.send(&first(20000 + i)))).collect();
        let used: BTreeSet<IpAddr> = before.values().map(|b| b.0).collect();
        assert_eq!(used, [backend_ip(1), backend_ip(2)].into(), "{tag}: both backends used");

        node.apply(&web(8, proto));
        for (&sport, &was) in &before {
            assert_eq!(node.send(&next(sport)), was, "{tag}: flow from port {sport} moved");
        }
        let fresh: BTreeSet<IpAddr> = (0..FLOWS).map(|i| node.send(&first(30000 + i)).0).collect();
        assert!(
            fresh.iter().any(|a| ![backend_ip(1), backend_ip(2)].contains(a)),
            "{tag}: new flows use the new table: {fresh:?}"
        );
    }
}

/// A SYN reusing a 4-tuple whose backend is terminating opens the new
/// connection elsewhere; the old connection's packets keep going there.
#[test]
fn a_syn_leaves_a_terminating_backend_and_the_old_flow_stays() {
    let mut node = Node::new("fbterm");
    node.apply(&web(2, Proto::Tcp));
    let (sport, was) = (0..FLOWS)
        .map(|i| (20000 + i, node.send(&syn(20000 + i))))
        .find(|(_, b)| b.0 == backend_ip(1))
        .expect("a flow on backend 1");
    let mut svc = web(2, Proto::Tcp);
    svc.backends[0].state = BackendState::Terminating;
    node.apply(&svc);
    assert_eq!(node.send(&ack(sport)), was, "the established flow stays on its backend");
    assert_eq!(node.send(&syn(sport)).0, backend_ip(2), "a new connection avoids it");
}

/// ClientIP affinity: every source port of one client reaches one backend.
#[test]
fn client_ip_affinity_holds_across_source_ports() {
    let mut node = Node::new("fbaff");
    let mut svc = web(8, Proto::Tcp);
    svc.affinity = Some(Affinity { timeout: Duration::from_secs(600) });
    node.apply(&svc);
    let seen: BTreeSet<(IpAddr, u16)> = (0..FLOWS).map(|i| node.send(&syn(20000 + i))).collect();
    assert_eq!(seen.len(), 1, "one backend for the client: {seen:?}");
}
