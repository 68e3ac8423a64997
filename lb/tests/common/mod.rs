//! Shared plumbing of the XDP packet tests (lb/tests/xdp_*.rs): the lab's
//! named addresses, a [`Lab`] per test (its own network namespace with a veth
//! pair and permanent neighbours, the real datapath objects loaded and pinned
//! under a private bpffs directory, services applied through
//! `lb::datapath::Datapath`), BPF_PROG_TEST_RUN of the XDP program, the flow
//! hash of lb/bpf/conntrack.h, expected tunnel frames, and a table-driven
//! [`Case`] check of verdict, whole output frame and counters. The generic
//! parts (packet builder, namespaces, pin directory) are testkit's.
#![allow(dead_code)] // each test binary uses a different part

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use lb::{
    abi::{self, Counter, GENEVE_PORT},
    datapath::{Datapath, ServiceListing},
    loader::{Dataplane, LoadOptions, MapSizes},
    model::{
        Backend, BackendState, Desired, Encap, Frontend, FrontendKind, NodeConfig, Proto, Service,
        ServiceKey,
    },
};
use testkit::{
    bench::test_run,
    netns::{in_private_netns, ip_batch},
    packet::{self, bench, Frame, GeneveOpt, Mac},
    pins::PinDir,
};

// ---- the lab's addresses (see /tmp/xlb-team.md "lab topology") ----

/// The load balancer's NIC (lb0 in the test namespace).
pub const LB_MAC: Mac = bench::LB_MAC;
/// The router side of the veth (rt0): source of every input frame.
pub const ROUTER_MAC: Mac = bench::ROUTER_MAC;
pub const LB_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const LB_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 2);
pub const CLIENT_V4: Ipv4Addr = bench::CLIENT_V4;
pub const CLIENT_V6: Ipv6Addr = bench::CLIENT_V6;
pub const VIP_V4: Ipv4Addr = bench::VIP_V4;
pub const VIP_V6: Ipv6Addr = bench::VIP_V6;
pub const CLIENT_PORT: u16 = bench::CLIENT_PORT;
/// The router's addresses on the client side (sources of ICMP errors).
pub const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const TARGET_PORT: u16 = 8080;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// Backend node `n` (1-based): 10.0.0.(10+n), 2001:db8:f::(10+n).
pub fn node_v4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 10 + n)
}

pub fn node_v6(n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x10 + u16::from(n))
}

/// The MAC the test namespace's permanent neighbour entry gives node `n`.
pub fn node_mac(n: u8) -> Mac {
    [0x02, 0, 0, 0, 0x0a, n]
}

/// Pod `m` on node `n`: 10.244.n.(10+m) / 2001:db8:244:n::(10+m).
pub fn pod(n: u8, m: u8, v6: bool) -> IpAddr {
    if v6 {
        Ipv6Addr::new(0x2001, 0xdb8, 0x244, u16::from(n), 0, 0, 0, 0x10 + u16::from(m)).into()
    } else {
        Ipv4Addr::new(10, 244, n, 10 + m).into()
    }
}

pub fn client(v6: bool) -> IpAddr {
    if v6 {
        CLIENT_V6.into()
    } else {
        CLIENT_V4.into()
    }
}

pub fn vip(v6: bool) -> IpAddr {
    if v6 {
        VIP_V6.into()
    } else {
        VIP_V4.into()
    }
}

pub fn node(n: u8, v6: bool) -> IpAddr {
    if v6 {
        node_v6(n).into()
    } else {
        node_v4(n).into()
    }
}

pub fn lb_addr(v6: bool) -> IpAddr {
    if v6 {
        LB_V6.into()
    } else {
        LB_V4.into()
    }
}

// ---- the service model ----

/// Endpoint `addr:TARGET_PORT` on `node`.
pub fn backend(addr: IpAddr, node: IpAddr) -> Backend {
    Backend {
        name: format!("{}", SocketAddr::new(addr, TARGET_PORT)).into(),
        addr,
        port: TARGET_PORT,
        node,
        weight: 1,
        state: BackendState::Active,
    }
}

/// A LoadBalancer service answering on `vip:port/proto`.
pub fn service(
    name: &str,
    vip: IpAddr,
    port: u16,
    proto: Proto,
    backends: Vec<Backend>,
) -> Service {
    let mut s = Service::new(ServiceKey::new("default", name, ""));
    s.frontends.push(Frontend { addr: vip, port, proto, kind: FrontendKind::LoadBalancer });
    s.backends = backends;
    s
}

/// The service on VIP:80/TCP of one family with one backend: pod 1 of node 1.
pub fn web(v6: bool) -> Service {
    let name = if v6 { "web6" } else { "web4" };
    service(name, vip(v6), 80, Proto::Tcp, vec![backend(pod(1, 1, v6), node(1, v6))])
}

/// The index `n` of node address 10.0.0.(10+n) / 2001:db8:f::(10+n).
pub fn node_index(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(a) => a.octets()[3] - 10,
        IpAddr::V6(a) => a.octets()[15] - 0x10,
    }
}

// ---- frames ----

/// A TCP SYN from the client to VIP:80 (the bench frame's fields).
pub fn syn(v6: bool, sport: u16) -> Frame {
    Frame::eth(ROUTER_MAC, LB_MAC).ip(client(v6), vip(v6)).tcp(sport, 80).seq(1000).syn()
}

/// The same flow's ACK.
pub fn ack(v6: bool, sport: u16) -> Frame {
    Frame::eth(ROUTER_MAC, LB_MAC)
        .ip(client(v6), vip(v6))
        .tcp(sport, 80)
        .seq(1001)
        .ack_seq(5001)
        .ack()
}

/// The flow hash of lb/bpf/conntrack.h (xlb_flow_hash), by lb's mirror
/// (abi::flow_hash) of the flow's key.
pub fn flow_hash(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8) -> u32 {
    abi::flow_hash(&abi::FlowKey::of(src, sport, dst, dport, proto))
}

/// The outer Ethernet + IP header to node `n` of `outer` family (lb/bpf/encap.h:
/// IPv4 DF, TTL 64, id 0; IPv6 hop limit 64, flow label = hash & 0xfffff).
pub fn outer_ip(n: u8, outer_v6: bool, hash: u32) -> Frame {
    let f = Frame::eth(LB_MAC, node_mac(n)).ip(lb_addr(outer_v6), node(n, outer_v6));
    if outer_v6 {
        f.flow_label(hash & 0xfffff)
    } else {
        f.df()
    }
}

/// `inner` (its IP packet) in Geneve to node `n`: UDP source port 49152 +
/// hash % 16384, checksum 0, VNI 0, one xlb option.
pub fn geneve_to(n: u8, outer_v6: bool, hash: u32, opt: GeneveOpt, inner: &Frame) -> Frame {
    let sport = 49152 + (hash & 0x3fff) as u16;
    inner.encap_in(
        outer_ip(n, outer_v6, hash)
            .udp(sport, GENEVE_PORT)
            .l4_checksum(0)
            .geneve(0)
            .geneve_opt(opt),
    )
}

/// What the load balancer sends for a client frame of the service on
/// `vip:vport` whose backend is `ep` on node `n`: Geneve, inner DNAT'd.
pub fn geneve_dsr(n: u8, outer_v6: bool, client: &Frame, vport: u16, ep: SocketAddr) -> Frame {
    let (src, dst, sport, proto) = flow_of(client);
    let hash = flow_hash(src, dst, sport, vport, proto);
    let inner = client.clone().dst(ep.ip()).dport(ep.port());
    geneve_to(n, outer_v6, hash, GeneveOpt::dsr(SocketAddr::new(dst, vport)), &inner)
}

/// The client frame's (src, dst, sport, proto) from its layers.
pub fn flow_of(f: &Frame) -> (IpAddr, IpAddr, u16, u8) {
    use testkit::packet::Layer;
    let mut addrs = None;
    let mut l4 = None;
    for l in &f.layers {
        match l {
            Layer::Ipv4(h) => addrs = Some((h.src.into(), h.dst.into())),
            Layer::Ipv6(h) => addrs = Some((h.src.into(), h.dst.into())),
            Layer::Tcp(t) => l4 = Some((t.sport, 6)),
            Layer::Udp(u) => l4 = Some((u.sport, 17)),
            Layer::Sctp(c) => l4 = Some((c.sport, 132)),
            _ => {}
        }
    }
    let ((s, d), (p, proto)) = (addrs.expect("IP layer"), l4.expect("TCP/UDP/SCTP layer"));
    (s, d, p, proto)
}

// ---- the lab ----

/// Runs `body` on a thread of its own in a new network namespace holding a
/// veth pair lb0 (10.0.0.2/24, 2001:db8:f::2/64, MAC LB_MAC) <-> rt0 (MAC
/// ROUTER_MAC), forwarding on, permanent neighbours for nodes 1..=3, with the datapath
/// loaded and pinned privately. The namespace disappears with the thread;
/// the pins are removed on drop, also when `body` panics.
pub fn with_lab(name: &str, body: impl FnOnce(&mut Lab) + Send) {
    with_lab_loaded(name, |_| {}, body)
}

/// [`with_lab`] with the datapath loaded with `opts` changed by `load`.
pub fn with_lab_loaded(
    name: &str,
    load: impl FnOnce(&mut LoadOptions) + Send,
    body: impl FnOnce(&mut Lab) + Send,
) {
    testkit::require_root("XDP packet tests");
    in_private_netns(|| {
        let mut lab = Lab::new(name, load);
        body(&mut lab);
    })
    .unwrap_or_else(|e| panic!("the test's network namespace: {e}"));
}

fn mac_str(m: Mac) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub struct Lab {
    pub dp: Dataplane,
    pub path: Datapath,
    /// lb0's ifindex: the ingress port of every test run.
    pub ifindex: u32,
    _pins: PinDir, // last: removed after the maps are closed
}

impl Lab {
    fn new(name: &str, load: impl FnOnce(&mut LoadOptions)) -> Lab {
        let mut cmds = vec![
            "link set lo up".to_string(),
            format!(
                "link add lb0 address {} mtu 1600 type veth peer name rt0 address {} mtu 1600",
                mac_str(LB_MAC),
                mac_str(ROUTER_MAC)
            ),
            "link set lb0 up".into(),
            "link set rt0 up".into(),
            format!("addr add {LB_V4}/24 dev lb0"),
            format!("addr add {LB_V6}/64 dev lb0 nodad"),
        ];
        for n in 1..=3 {
            for a in [node(n, false), node(n, true)] {
                cmds.push(format!(
                    "neigh replace {a} lladdr {} dev lb0 nud permanent",
                    mac_str(node_mac(n))
                ));
            }
        }
        ip_batch(&cmds).unwrap_or_else(|e| panic!("{e}"));
        // bpf_fib_lookup() answers BPF_FIB_LKUP_RET_FWD_DISABLED unless the
        // ingress device forwards: the load balancer is a router for VIP traffic.
        for f in
            ["/proc/sys/net/ipv4/conf/all/forwarding", "/proc/sys/net/ipv6/conf/all/forwarding"]
        {
            std::fs::write(f, "1").unwrap_or_else(|e| panic!("enabling {f}: {e}"));
        }
        // SAFETY: the name is a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(c"lb0".as_ptr()) };
        assert_ne!(ifindex, 0, "lb0 has no ifindex");

        let pins = PinDir::new(name);
        let mut opts = LoadOptions {
            pin_dir: pins.path().into(),
            sizes: MapSizes::small(),
            ..Default::default()
        };
        load(&mut opts);
        let dp = Dataplane::load(&opts).unwrap_or_else(|e| {
            panic!("loading the datapath into the kernel (is BPF available?): {e}\n{e:?}")
        });
        let path = Datapath::open(pins.path()).unwrap_or_else(|e| panic!("Datapath::open: {e}"));
        Lab { dp, path, ifindex, _pins: pins }
    }

    /// Applies exactly these services, with this node's tunnel addresses.
    pub fn apply(&mut self, services: &[Service]) {
        let desired = Desired {
            node: NodeConfig { tunnel_v4: Some(LB_V4), tunnel_v6: Some(LB_V6) },
            services: services.iter().map(|s| (s.key.clone(), s.clone())).collect(),
        };
        self.path.apply(&desired).unwrap_or_else(|e| panic!("Datapath::apply: {e}"));
    }

    /// Runs the XDP program once on `frame` arriving on lb0: (verdict, output frame).
    pub fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; 4096];
        let r = test_run(self.dp.xdp_program(), frame, self.ifindex, 1, Some(&mut out))
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of xlb_xdp: {e}"));
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    /// Every slot of xlb_counters at the XDP hook (named reason or not),
    /// summed over CPUs: reason -> (packets, bytes).
    pub fn counters(&self) -> BTreeMap<u32, (u64, u64)> {
        let map = &self.path.maps().counters;
        (0..abi::REASON_MAX)
            .map(|i| {
                let per_cpu = map.get(&i, 0).unwrap_or_else(|e| panic!("xlb_counters[{i}]: {e}"));
                let sum = per_cpu.iter().fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
                (i, sum)
            })
            .collect()
    }

    /// The listing of the service named `name` (statistics included).
    pub fn listing(&self, name: &str) -> ServiceListing {
        let key = ServiceKey::new("default", name, "").0;
        self.path
            .list()
            .unwrap_or_else(|e| panic!("Datapath::list: {e}"))
            .into_iter()
            .find(|s| s.name == key)
            .unwrap_or_else(|| panic!("service {key} not listed"))
    }

    /// The backend Maglev gives a new flow with this hash, read from the maps
    /// the program reads (frontend -> table slot -> service index ->
    /// backend): (endpoint, node address).
    pub fn maglev_pick(
        &self,
        vip: IpAddr,
        port: u16,
        proto: Proto,
        hash: u32,
    ) -> (SocketAddr, IpAddr) {
        let maps = self.path.maps();
        let (addr, family) = abi::addr_to_abi(vip);
        let fk = abi::FrontendKey { addr, port: port.to_be(), proto: proto.number(), family };
        let svc =
            maps.frontends.get(&fk, 0).unwrap_or_else(|e| panic!("frontend {vip}:{port}: {e}"));
        // The map of the table's size class, as maglev.h reads it.
        let table =
            lb::store::MapStore::maglev(self.path.store(), svc.id, svc.maglev_size as usize)
                .unwrap_or_else(|e| panic!("maglev[{}]: {e}", svc.id))
                .unwrap_or_else(|| panic!("service {} has no table", svc.id));
        let index = u32::from(table[(hash % svc.maglev_size) as usize]);
        let id = maps
            .svc_backend_id(svc.id, index)
            .unwrap_or_else(|e| panic!("svc_backend_id[{} {index}]: {e}", svc.id))
            .unwrap_or_else(|| panic!("service {} index {index} names no backend", svc.id));
        let be = maps.backends.get(&id, 0).unwrap_or_else(|e| panic!("backends[{id}]: {e}"));
        let ep = abi::addr_from_abi(&be.addr, be.family).expect("backend family");
        let node = abi::addr_from_abi(&be.node, be.node_family).expect("node family");
        (SocketAddr::new(ep, u16::from_be(be.port)), node)
    }

    /// The frame the load balancer should send for `client` (a TCP/UDP
    /// frame to a frontend on `vport`), Maglev's choice read from the maps.
    pub fn expect_dsr(&self, client: &Frame, vport: u16) -> (Frame, SocketAddr) {
        let (src, dst, sport, proto) = flow_of(client);
        let hash = flow_hash(src, dst, sport, vport, proto);
        let proto = Proto::from_number(proto).unwrap();
        let (ep, node) = self.maglev_pick(dst, vport, proto, hash);
        (geneve_dsr(node_index(node), node.is_ipv6(), client, vport, ep), ep)
    }

    /// Runs one case; `Err` describes every mismatch.
    pub fn try_case(&mut self, c: &Case) -> Result<Vec<u8>, String> {
        let before = self.counters();
        let (verdict, out) = self.run(&c.input);
        let after = self.counters();
        let mut errs = Vec::new();
        if verdict != c.verdict {
            errs.push(format!(
                "verdict {} , expected {}",
                verdict_name(verdict),
                verdict_name(c.verdict)
            ));
        }
        let want = match &c.output {
            Output::Unchanged => Some(c.input.clone()),
            Output::Frame(f) => Some(f.clone()),
            Output::Any => None,
        };
        if let Some(want) = want {
            if let Some(d) = packet::diff(&want, &out) {
                errs.push(format!("output frame:\n{d}"));
            }
        }
        for (i, (p1, b1)) in &after {
            let (p0, b0) = before[i];
            let want = if *i == c.counter { (1, c.input.len() as u64) } else { (0, 0) };
            if (p1 - p0, b1 - b0) != want {
                errs.push(format!(
                    "counter {}: +{} packets +{} bytes, expected +{} +{}",
                    counter_name(*i),
                    p1 - p0,
                    b1 - b0,
                    want.0,
                    want.1
                ));
            }
        }
        if errs.is_empty() {
            Ok(out)
        } else {
            Err(format!(
                "case {}:\n  {}\n  input: {}",
                c.name,
                errs.join("\n  "),
                packet::show(&c.input).trim_end().replace('\n', "\n         ")
            ))
        }
    }

    /// Runs every case (each against the state the previous ones left) and
    /// fails listing the mismatches.
    pub fn check(&mut self, cases: &[Case]) {
        let errs: Vec<String> = cases.iter().filter_map(|c| self.try_case(c).err()).collect();
        const SHOWN: usize = 8;
        assert!(
            errs.is_empty(),
            "{} of {} cases failed; the first {}:\n{}",
            errs.len(),
            cases.len(),
            errs.len().min(SHOWN),
            errs[..errs.len().min(SHOWN)].join("\n")
        );
    }
}

pub fn verdict_name(v: u32) -> String {
    match v {
        0 => "XDP_ABORTED".into(),
        1 => "XDP_DROP".into(),
        2 => "XDP_PASS".into(),
        3 => "XDP_TX".into(),
        4 => "XDP_REDIRECT".into(),
        v => format!("verdict {v}"),
    }
}

pub fn counter_name(i: u32) -> String {
    Counter::from_u32(i).map_or_else(|| format!("#{i}"), |c| c.name().to_string())
}

/// What the output frame must be.
pub enum Output {
    /// The input, byte for byte (XDP_PASS of packets that are not ours).
    Unchanged,
    Frame(Vec<u8>),
    /// Not checked (dropped packets).
    Any,
}

/// One packet in, one verdict, one output frame and exactly one counter
/// (`counter`: +1 packet, +input length bytes; every other slot unchanged).
pub struct Case {
    pub name: String,
    pub input: Vec<u8>,
    pub verdict: u32,
    pub output: Output,
    pub counter: u32,
}

impl Case {
    pub fn of(name: impl Into<String>, input: &Frame) -> CaseBuilder {
        CaseBuilder(name.into(), input.build())
    }

    pub fn raw(name: impl Into<String>, input: Vec<u8>) -> CaseBuilder {
        CaseBuilder(name.into(), input)
    }
}

pub struct CaseBuilder(String, Vec<u8>);

impl CaseBuilder {
    pub fn pass(self, counter: Counter) -> Case {
        self.pass_as(counter as u32)
    }

    pub fn pass_as(self, counter: u32) -> Case {
        Case { name: self.0, input: self.1, verdict: XDP_PASS, output: Output::Unchanged, counter }
    }

    pub fn drop(self, counter: Counter) -> Case {
        Case {
            name: self.0,
            input: self.1,
            verdict: XDP_DROP,
            output: Output::Any,
            counter: counter as u32,
        }
    }

    pub fn tx(self, expected: &Frame) -> Case {
        self.out(XDP_TX, expected, Counter::OkXdpTx as u32)
    }

    pub fn out(self, verdict: u32, expected: &Frame, counter: u32) -> Case {
        Case {
            name: self.0,
            input: self.1,
            verdict,
            output: Output::Frame(expected.build()),
            counter,
        }
    }
}

/// Used by the affinity test.
pub const AFFINITY: Duration = Duration::from_secs(10800);

pub fn with_encap(mut s: Service, encap: Encap) -> Service {
    s.encap = encap;
    s
}

/// Both address families, for tests that run every case over each.
pub const BOTH: [bool; 2] = [false, true];

/// "v4" or "v6", for case names.
pub fn fam(v6: bool) -> &'static str {
    if v6 {
        "v6"
    } else {
        "v4"
    }
}
