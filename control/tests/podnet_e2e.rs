//! The pod network end to end on the real kernel (root): a lab of two nodes
//! with two pods each, agents started by `xlb run` (the nodes' with
//! `--pod-network`), the pods' network made by xlb-cni as a runtime runs it,
//! no route of the underlay knowing a pod address. Real sockets check:
//! - TCP (HTTP), UDP and ICMP echo between pods across nodes (the BPF
//!   Geneve overlay) and on one node (redirect), IPv4 and IPv6;
//! - a node to its own pods and to another node's (into the overlay);
//! - a pod to a host outside the cluster, masqueraded to its node's
//!   address and a port of the masquerade range, replies back in;
//! - an oversize packet from a pod gets an ICMP too big, which the pod's
//!   kernel takes as its new path MTU;
//! - a spoofed pod source is dropped and counted;
//! - xlb's Geneve from a host that is no node or load balancer is dropped
//!   and counted; Geneve of another VNI reaches the node's own socket
//!   untouched;
//! - `xlb endpoint list` and `xlb tunnel list` show the pods and the ranges.
//!
//! Counters are the agents' (summed over hooks), read before and after.
use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use lab::{
    agent::{self, Agent, AgentSpec},
    http,
    manifests::{self, EndpointState},
    spec, Lab, LabSpec,
};
use testkit::packet::{Frame, GeneveOpt};

const AGENT_READY: Duration = Duration::from_secs(30);
const UDP_PORT: u16 = 9000;

struct Running {
    agents: Vec<Agent>,
    lab: Lab,
}

impl Running {
    fn start() -> Running {
        let spec = LabSpec { nodes: 2, pods_per_node: 2, ..LabSpec::default() };
        let mut lab = Lab::build(spec.clone())
            .unwrap_or_else(|e| panic!("building the lab (this test needs root): {e}"));
        let config = lab.temp_dir().join("nginx.yaml");
        std::fs::write(&config, manifests::nginx(&spec, &|_| EndpointState::Ready)).unwrap();
        let agent_spec = AgentSpec::new(env!("CARGO_BIN_EXE_xlb"), &config);
        let agents = agent::start_all(&mut lab, &agent_spec, AGENT_READY)
            .unwrap_or_else(|e| panic!("starting the agents and pods: {e}"));
        Running { agents, lab }
    }

    /// Counter `name` of node `node`'s agent (packets, every hook).
    fn counter(&self, node: &str, name: &str) -> u64 {
        let a = self.agents.iter().find(|a| a.node == node).unwrap();
        a.counters().unwrap().get(name).copied().unwrap_or(0)
    }

    fn pod(&self, name: &str) -> lab::Pod {
        self.lab.pod(name).unwrap().clone()
    }

    fn logs(&self) -> String {
        self.agents.iter().map(|a| format!("--- {} ---\n{}\n", a.node, a.log_tail(8))).collect()
    }

    /// An HTTP GET from namespace `from` to `to`:80: the body (the pod's name).
    fn get(&self, from: &str, to: IpAddr) -> String {
        self.lab
            .in_ns(from, || http::get(SocketAddr::new(to, 80)))
            .unwrap()
            .unwrap_or_else(|e| panic!("GET http://{to}/ from {from}: {e}\n{}", self.logs()))
    }
}

fn both(p: &lab::Pod) -> [IpAddr; 2] {
    [p.host.v4.into(), p.host.v6.into()]
}

/// A raw ICMP socket of `to`'s family (the kernel checksums ICMPv6).
fn icmp_socket(v6: bool) -> OwnedFd {
    let (af, proto) = if v6 {
        (libc::AF_INET6, libc::IPPROTO_ICMPV6)
    } else {
        (libc::AF_INET, libc::IPPROTO_ICMP)
    };
    // SAFETY: plain socket call; the fd is owned from here on.
    let fd = unsafe { libc::socket(af, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn sockaddr(to: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed sockaddr_storage is valid; filled per family below.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match to {
        IpAddr::V4(a) => {
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(a) => {
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_addr.s6_addr = a.octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// An ICMP echo request of `size` bytes (ICMP header included) to `to`,
/// don't-fragment set; whether its echo reply came back within a second.
fn ping(to: IpAddr, size: usize, id: u16) -> bool {
    let v6 = to.is_ipv6();
    let fd = icmp_socket(v6);
    let dont = if v6 { libc::IPV6_PMTUDISC_DO } else { libc::IP_PMTUDISC_DO };
    let (level, opt) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER)
    };
    // SAFETY: setsockopt with an int option value.
    unsafe {
        libc::setsockopt(fd.as_raw_fd(), level, opt, &dont as *const _ as *const libc::c_void, 4);
    }
    let mut msg = vec![0u8; size];
    msg[0] = if v6 { 128 } else { 8 };
    msg[4..6].copy_from_slice(&id.to_be_bytes());
    msg[6..8].copy_from_slice(&1u16.to_be_bytes());
    if !v6 {
        let sum = testkit::packet::checksum(&msg);
        msg[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    let (ss, len) = sockaddr(to);
    // SAFETY: msg and ss are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr() as *const libc::c_void,
            msg.len(),
            0,
            &ss as *const _ as *const libc::sockaddr,
            len,
        )
    };
    if sent < 0 {
        return false;
    }
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < Duration::from_secs(1) {
        let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
        // SAFETY: timeval option of the right size; recv into buf.
        let n = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
            libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0)
        };
        if n <= 0 {
            continue;
        }
        // IPv4 raw sockets see the IP header; IPv6 ones do not.
        let icmp =
            if v6 { &buf[..n as usize] } else { &buf[(buf[0] & 0x0f) as usize * 4..n as usize] };
        let reply = if v6 { 129 } else { 0 };
        if icmp.len() >= 8 && icmp[0] == reply && icmp[4..6] == id.to_be_bytes() {
            return true;
        }
    }
    false
}

#[test]
fn pods_talk_across_nodes_and_on_one_node_over_tcp_udp_and_icmp() {
    let r = Running::start();
    let (p11, p12, p21) = (r.pod("pod1-1"), r.pod("pod1-2"), r.pod("pod2-1"));
    let enc = r.counter("node1", "ok_pod_encap");
    let dec = r.counter("node2", "ok_pod_decap");
    let red = r.counter("node1", "ok_pod_redirect");
    // TCP: HTTP from pod1-1 to a pod on node 2 and to one on node 1.
    for to in both(&p21).into_iter().chain(both(&p12)) {
        let want = if both(&p21).contains(&to) { "pod2-1" } else { "pod1-2" };
        assert_eq!(r.get("pod1-1", to), want, "GET {to}");
    }
    assert!(
        r.counter("node1", "ok_pod_encap") > enc,
        "the cross-node requests went through the overlay"
    );
    assert!(r.counter("node2", "ok_pod_decap") > dec);
    assert!(r.counter("node1", "ok_pod_redirect") > red, "the local ones were redirected");

    // UDP, both families, across nodes and on one node.
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        lab::udp::echo(s, &r.lab, &p21.host.ns, UDP_PORT, &stop);
        lab::udp::echo(s, &r.lab, &p12.host.ns, UDP_PORT, &stop);
        for to in both(&p21).into_iter().chain(both(&p12)) {
            let msg = format!("hello {to}");
            let to_port = SocketAddr::new(to, UDP_PORT);
            let echo = lab::udp::round(
                &r.lab,
                "pod1-1",
                lab::udp::any_of(to),
                to_port,
                msg.as_bytes(),
                Duration::from_secs(2),
            );
            assert_eq!(echo.as_deref(), Some(format!("hello {to}").as_bytes()), "UDP to {to}");
        }
        stop.store(true, Ordering::Relaxed);
    });

    // ICMP echo, both families, across nodes and on one node.
    for (i, to) in both(&p21).into_iter().chain(both(&p12)).enumerate() {
        let ok = r.lab.in_ns("pod1-1", || ping(to, 64, 0x100 + i as u16)).unwrap();
        assert!(ok, "ping {to} from pod1-1\n{}", r.logs());
    }
    let _ = p11;
}

#[test]
fn nodes_reach_pods_and_pods_leave_the_cluster_masqueraded() {
    let r = Running::start();
    let (p11, p21) = (r.pod("pod1-1"), r.pod("pod2-1"));
    // A node to its own pods (the CNI's host route) and to the other
    // node's (its uplink takes them into the overlay).
    for to in both(&p11).into_iter().chain(both(&p21)) {
        assert!(r.get("node1", to).starts_with("pod"), "node1 -> {to}");
    }
    assert!(r.counter("node1", "ok_pod_encap") > 0);

    // A pod to the client outside the cluster: the client sees node 1.
    let node1 = &r.lab.nodes()[0].host;
    for (client, node) in [
        (IpAddr::from(spec::CLIENT_V4), IpAddr::from(node1.v4)),
        (spec::CLIENT_V6.into(), node1.v6.into()),
    ] {
        let masq = r.counter("node1", "ok_masq");
        let listener =
            r.lab.in_ns("client", || TcpListener::bind((client, 7000))).unwrap().unwrap();
        let conn = r
            .lab
            .in_ns("pod1-1", || {
                TcpStream::connect_timeout(&SocketAddr::new(client, 7000), Duration::from_secs(3))
            })
            .unwrap();
        let mut conn = conn.unwrap_or_else(|e| panic!("pod1-1 -> {client}: {e}\n{}", r.logs()));
        let (mut peer, from) = listener.accept().unwrap();
        assert_eq!(from.ip(), node, "the client sees the node's address");
        assert!((61000..=65535).contains(&from.port()), "a masquerade port: {from}");
        use std::io::{Read, Write};
        peer.write_all(b"reply").unwrap();
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"reply", "the reply came back into the pod");
        assert!(r.counter("node1", "ok_masq") > masq);
        assert!(r.counter("node1", "ok_masq_reply") > 0);
    }
}

#[test]
fn oversize_packets_are_answered_and_spoofed_sources_dropped() {
    let r = Running::start();
    let (p12, p21) = (r.pod("pod1-2"), r.pod("pod2-1"));
    // pod1-1 believes its link takes 1600 bytes (the host side does):
    // 1600 + the overlay does not fit the 1600 underlay.
    r.lab.run("pod1-1", "ip", &["link", "set", "eth0", "mtu", "1600"]).unwrap();
    for (to, mtu) in [(IpAddr::from(p21.host.v4), 1556), (p21.host.v6.into(), 1536)] {
        let before = r.counter("node1", "ok_icmp_too_big");
        assert!(
            !r.lab
                .in_ns("pod1-1", || ping(to, 1600 - if to.is_ipv4() { 20 } else { 40 }, 7))
                .unwrap(),
            "too big for the path"
        );
        assert!(r.counter("node1", "ok_icmp_too_big") > before, "{}", r.logs());
        let fam = if to.is_ipv4() { "-4" } else { "-6" };
        let route = r.lab.run("pod1-1", "ip", &[fam, "route", "get", &to.to_string()]).unwrap();
        assert!(route.contains(&format!("mtu {mtu}")), "the pod learnt the path MTU: {route}");
        // And what fits goes.
        assert!(r.lab.in_ns("pod1-1", || ping(to, 1000, 8)).unwrap());
    }

    // pod1-1 sends from pod1-2's address: dropped at its veth, counted.
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        lab::udp::echo(s, &r.lab, &p21.host.ns, UDP_PORT, &stop);
        let stolen = IpAddr::from(p12.host.v4);
        r.lab
            .run("pod1-1", "ip", &["addr", "add", &format!("{stolen}/32"), "dev", "eth0"])
            .unwrap();
        let spoofed = r.counter("node1", "drop_pod_spoof");
        let to = SocketAddr::new(p21.host.v4.into(), UDP_PORT);
        let echo =
            lab::udp::round(&r.lab, "pod1-1", stolen, to, b"hello", Duration::from_millis(500));
        assert_eq!(echo, None, "the spoofed datagram got nowhere");
        assert!(r.counter("node1", "drop_pod_spoof") > spoofed);
        stop.store(true, Ordering::Relaxed);
    });
}

#[test]
fn geneve_from_strangers_is_dropped_and_foreign_geneve_passes() {
    let r = Running::start();
    let p11 = r.pod("pod1-1");
    let node1 = r.lab.nodes()[0].host.clone();
    // The router's fabric address is no Node and no load balancer.
    let payload = |vni: u32, opt: GeneveOpt| {
        Frame::new()
            .geneve(vni)
            .geneve_opt(opt)
            .inner(
                Frame::new()
                    .ipv4(spec::CLIENT_V4, p11.host.v4)
                    .udp(5555, UDP_PORT)
                    .payload(b"injected"),
            )
            .build()
    };
    let send = |bytes: Vec<u8>| {
        r.lab
            .in_ns("router", move || {
                let s = UdpSocket::bind((spec::ROUTER_FABRIC_V4, 0)).unwrap();
                s.send_to(&bytes, (node1.v4, lb::abi::GENEVE_PORT)).unwrap();
            })
            .unwrap()
    };
    let dropped = r.counter("node1", "drop_tunnel_peer");
    send(payload(0, GeneveOpt::identity(lb::abi::ID_POD_MIN)));
    send(payload(0, GeneveOpt::dsr("10.100.0.1:80".parse().unwrap())));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(r.counter("node1", "drop_tunnel_peer"), dropped + 2, "{}", r.logs());

    // Another VNI: not xlb's; the node's own Geneve socket gets it as sent.
    let foreign = payload(7, GeneveOpt { class: 0x0102, typ: 1, data: vec![0; 4] });
    let sock = r
        .lab
        .in_ns(&node1.name, || UdpSocket::bind((node1.v4, lb::abi::GENEVE_PORT)))
        .unwrap()
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let passed = r.counter("node1", "pass_foreign_tunnel");
    send(foreign.clone());
    let mut buf = [0u8; 2048];
    let (n, _) =
        sock.recv_from(&mut buf).expect("the foreign Geneve datagram reached the node's socket");
    assert_eq!(&buf[..n], &foreign[..], "untouched");
    assert_eq!(r.counter("node1", "pass_foreign_tunnel"), passed + 1);

    // The inspection CLI: the node's pods and every node's ranges.
    let a = r.agents.iter().find(|a| a.node == "node1").unwrap();
    let state = r.lab.node_cni("node1").state_dir;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xlb"))
        .args(["endpoint", "list", "--pin-dir"])
        .arg(&a.pin_dir)
        .arg("--cni-state-dir")
        .arg(&state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("default/pod1-1") && text.contains("10.244.1.11 2001:db8:244:1::11"),
        "{text}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xlb"))
        .args(["tunnel", "list", "--pin-dir"])
        .arg(&a.pin_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("10.244.2.0/24") && text.contains("10.0.0.12") && text.contains("this node"),
        "{text}"
    );
    assert!(text.contains("masquerade: ports 61000-65535"), "{text}");
}
