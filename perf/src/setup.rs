//! The benchmark's service setup (shared/bench/packets/README.md): IPv4 VIP
//! 10.100.0.1 TCP 80 and UDP 53, IPv6 VIP 2001:db8:100::1 TCP 80, 100
//! backends each, spread over four backend nodes on the fabric; plus the
//! load-balancer side of the fabric (a veth with the LB's addresses and
//! permanent neighbours for the nodes) so bpf_fib_lookup resolves.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use lb::model::{
    Backend, BackendState, Desired, Encap, Frontend, FrontendKind, NodeConfig, Proto, Service,
    ServiceKey, MAX_MAGLEV_SIZE,
};
use testkit::netns::run;

pub const NODES: u32 = 4;
pub const LB_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const LB_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 2);

pub fn node_v4(n: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 10 + n as u8)
}

pub fn node_v6(n: u32) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x10 + n as u16)
}

/// The MAC the permanent neighbour entry of node `n` carries.
pub fn node_mac(n: u32) -> String {
    format!("02:00:00:00:0a:{:02x}", 10 + n)
}

fn pod_v4(n: u32, m: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 244, n as u8, 10 + m as u8))
}

fn pod_v6(n: u32, m: u32) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x244, n as u16, 0, 0, 0, 0x10 + m as u16))
}

/// `count` backends on port `port`, round-robin over the nodes.
pub fn backends(count: u32, port: u16, v6: bool) -> Vec<Backend> {
    (0..count)
        .map(|i| {
            let n = 1 + i % NODES;
            let m = i / NODES;
            let (addr, node) = if v6 {
                (pod_v6(n, m), IpAddr::V6(node_v6(n)))
            } else {
                (pod_v4(n, m), IpAddr::V4(node_v4(n)))
            };
            Backend {
                name: format!("{addr}:{port}").into(),
                addr,
                port,
                node,
                weight: 1,
                state: BackendState::Active,
            }
        })
        .collect()
}

/// One service port with one LoadBalancer frontend.
pub fn service(name: &str, vip: IpAddr, port: u16, proto: Proto, bes: Vec<Backend>) -> Service {
    let mut s = Service::new(ServiceKey::new("bench", name, ""));
    s.frontends.push(Frontend { addr: vip, port, proto, kind: FrontendKind::LoadBalancer });
    s.backends = bes;
    s.maglev_size = MAX_MAGLEV_SIZE;
    s.encap = Encap::Geneve;
    s
}

pub fn node_config() -> NodeConfig {
    NodeConfig { tunnel_v4: Some(LB_V4), tunnel_v6: Some(LB_V6) }
}

/// The microbenchmark's services, 100 backends each.
pub fn bench_desired() -> Desired {
    bench_desired_backends(100)
}

/// [`bench_desired`] with `n` backends behind v4-http (the first 100 the
/// same: `pps`'s held flows keep their backends while the table grows).
pub fn bench_desired_backends(n: u32) -> Desired {
    let mut d = Desired { node: node_config(), ..Default::default() };
    for s in [
        service("v4-http", "10.100.0.1".parse().unwrap(), 80, Proto::Tcp, backends(n, 80, false)),
        service("v4-dns", "10.100.0.1".parse().unwrap(), 53, Proto::Udp, backends(100, 53, false)),
        service(
            "v6-http",
            "2001:db8:100::1".parse().unwrap(),
            80,
            Proto::Tcp,
            backends(100, 80, true),
        ),
    ] {
        d.services.insert(s.key.clone(), s);
    }
    d
}

/// `n` TCP services on consecutive VIPs from 10.100.0.1 (port 80), `per`
/// backends each (the scale sweep).
pub fn scale_desired(n: u32, per: u32, maglev_size: u32) -> Desired {
    let mut d = Desired { node: node_config(), ..Default::default() };
    for i in 0..n {
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 1)) + i);
        let mut s =
            service(&format!("svc{i}"), IpAddr::V4(vip), 80, Proto::Tcp, backends(per, 80, false));
        s.maglev_size = maglev_size;
        d.services.insert(s.key.clone(), s);
    }
    d
}

/// Gives the calling thread's namespace the LB's fabric port `iface` (one
/// end of a new veth pair `iface`/`peer`), its addresses, and permanent
/// neighbours for every backend node, and forwarding on, so bpf_fib_lookup
/// succeeds for them.
pub fn lb_port(iface: &str, peer: &str) -> Result<()> {
    run(
        "ip",
        &["link", "add", iface, "mtu", "1600", "type", "veth", "peer", "name", peer, "mtu", "1600"],
    )
    .context("creating the LB veth")?;
    run("ip", &["link", "set", iface, "address", "02:00:00:00:00:01"])?;
    run("ip", &["link", "set", peer, "address", "02:00:00:00:00:02"])?;
    run("ip", &["addr", "add", &format!("{LB_V4}/24"), "dev", iface])?;
    run("ip", &["addr", "add", &format!("{LB_V6}/64"), "dev", iface, "nodad"])?;
    run("ip", &["link", "set", iface, "up"])?;
    run("ip", &["link", "set", peer, "up"])?;
    // bpf_fib_lookup is a forwarding lookup: it answers FWD_DISABLED unless
    // the receiving device forwards (IPv4: per device; IPv6: all).
    run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    run("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])?;
    for n in 1..=NODES {
        let mac = node_mac(n);
        for addr in [node_v4(n).to_string(), node_v6(n).to_string()] {
            run(
                "ip",
                &["neigh", "replace", &addr, "lladdr", &mac, "dev", iface, "nud", "permanent"],
            )?;
        }
    }
    Ok(())
}
