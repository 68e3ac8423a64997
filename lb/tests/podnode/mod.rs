//! Shared setup of the pod-network packet tests (tc_pod.rs, tc_policy.rs):
//! node 1's named addresses and a [`PodNode`] per test — a private network
//! namespace holding the uplink eth0 (MTU 1500, node 2 a permanent
//! neighbour) and pods A (hv0) and B (hv1), the datapath loaded into a
//! private bpffs directory, node, network and both endpoints applied
//! through `Datapath` (the daemon's API).
#![allow(dead_code)] // each test file uses its part

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb::{
    abi,
    datapath::Datapath,
    loader::{Dataplane, LoadOptions},
    model::{Desired, Endpoint, Network, NodeConfig},
};
use testkit::{
    netns::{in_private_netns, ip_batch},
    packet::Mac,
    pins::PinDir,
};

pub const NODE1_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
pub const NODE1_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x11);
pub const NODE2_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 12);
pub const NODE2_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x12);
pub const LB_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const ETH0_MAC: Mac = [0x02, 0, 0, 0, 0, 0x11];
pub const ROUTER_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
pub const NODE2_MAC: Mac = [0x02, 0, 0, 0, 0, 0x12];
pub const HOST_A_MAC: Mac = [0x02, 0, 0, 0, 0xa0, 0x01];
pub const POD_A_MAC: Mac = [0x02, 0, 0, 0, 0xa0, 0x02];
pub const HOST_B_MAC: Mac = [0x02, 0, 0, 0, 0xb0, 0x01];
pub const POD_B_MAC: Mac = [0x02, 0, 0, 0, 0xb0, 0x02];
pub const POD_A_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
pub const POD_A_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x244, 1, 0, 0, 0, 0x11);
pub const POD_B_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 12);
pub const POD_B_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x244, 1, 0, 0, 0, 0x12);
pub const POD_C_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 11);
pub const POD_C_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x244, 2, 0, 0, 0, 0x11);
pub const OUTSIDE_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const ID_A: u32 = abi::ID_POD_MIN + 1;
pub const ID_B: u32 = abi::ID_POD_MIN + 2;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

pub fn ip(a: impl Into<IpAddr>) -> IpAddr {
    a.into()
}

pub fn mac_str(m: Mac) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Node 1 with pods A and B, as [`with_pod_node`] built it.
pub struct PodNode {
    pub dp: Dataplane,
    pub path: Datapath,
    pub hv0: u32,
    pub hv1: u32,
    pub eth0: u32,
    _pins: PinDir, // last: removed after the maps are closed
}

/// Runs `body` in a private namespace holding node 1 (dual stack) with
/// `network` applied and pods A and B in namespace `pod_ns`. `tests` names
/// the tier in the error when not root.
pub fn with_pod_node(
    tests: &str,
    name: &str,
    pod_ns: &str,
    network: Network,
    body: impl FnOnce(&mut PodNode) + Send,
) {
    testkit::require_root(tests);
    in_private_netns(|| {
        for f in [
            "/proc/sys/net/ipv4/conf/all/forwarding",
            "/proc/sys/net/ipv4/conf/default/forwarding",
            "/proc/sys/net/ipv6/conf/all/forwarding",
            "/proc/sys/net/ipv6/conf/default/forwarding",
        ] {
            std::fs::write(f, "1").unwrap_or_else(|e| panic!("{f}: {e}"));
        }
        ip_batch(&[
            format!(
                "link add eth0 address {} mtu 1500 type veth peer name rt0 address {}",
                mac_str(ETH0_MAC),
                mac_str(ROUTER_MAC)
            ),
            format!(
                "link add hv0 address {} type veth peer name pv0 address {}",
                mac_str(HOST_A_MAC),
                mac_str(POD_A_MAC)
            ),
            format!(
                "link add hv1 address {} type veth peer name pv1 address {}",
                mac_str(HOST_B_MAC),
                mac_str(POD_B_MAC)
            ),
            "link set eth0 up".into(),
            "link set rt0 up".into(),
            "link set hv0 up".into(),
            "link set hv1 up".into(),
            format!("addr add {NODE1_V4}/24 dev eth0"),
            format!("addr add {NODE1_V6}/64 dev eth0 nodad"),
            format!(
                "neigh replace {NODE2_V4} lladdr {} dev eth0 nud permanent",
                mac_str(NODE2_MAC)
            ),
            format!(
                "neigh replace {NODE2_V6} lladdr {} dev eth0 nud permanent",
                mac_str(NODE2_MAC)
            ),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let idx = |n: &str| testkit::netns::ifindex(n).unwrap_or_else(|| panic!("no {n}"));
        let (hv0, hv1, eth0) = (idx("hv0"), idx("hv1"), idx("eth0"));
        let pins = PinDir::new(name);
        let dp = Dataplane::load(&LoadOptions::small(pins.path()))
            .unwrap_or_else(|e| panic!("loading the datapath: {e}\n{e:?}"));
        let mut path = Datapath::open(pins.path()).unwrap_or_else(|e| panic!("{e}"));
        let node = NodeConfig { tunnel_v4: Some(NODE1_V4), tunnel_v6: Some(NODE1_V6) };
        path.apply(&Desired { node, ..Desired::default() }).unwrap();
        path.apply_network(&network).unwrap();
        let pod = |n: &str, addrs: Vec<IpAddr>, ifindex, mac, host_mac, identity| Endpoint {
            name: format!("{pod_ns}/{n}"),
            addrs,
            ifindex,
            mac,
            host_mac,
            identity,
        };
        path.apply_endpoints(&[
            pod("a", vec![ip(POD_A_V4), ip(POD_A_V6)], hv0, POD_A_MAC, HOST_A_MAC, ID_A),
            pod("b", vec![ip(POD_B_V4), ip(POD_B_V6)], hv1, POD_B_MAC, HOST_B_MAC, ID_B),
        ])
        .unwrap();
        let mut node = PodNode { dp, path, hv0, hv1, eth0, _pins: pins };
        body(&mut node);
    })
    .unwrap_or_else(|e| panic!("the test's network namespace: {e}"));
}
