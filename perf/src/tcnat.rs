//! `xlb-perf tcnat --rev REV`: what a node's tc NAT (lb/bpf/nat.h over the
//! tc half of ctx.h) costs per packet, the working tree's tc object beside
//! REV's (compiled from that revision, loaded on the same maps), in one
//! interleaved run. The paths timed, each on TCP ACK and UDP, IPv4 and
//! IPv6, of an established flow to a pod on the node (service port 80,
//! target port 8080: both the address and the port change):
//!
//! - IPIP decap (xlb_tc_ingress): the node re-selects the backend and DNATs
//!   the inner packet, then strips the outer header;
//! - revnat (xlb_tc_egress): the pod's reply leaves with the service as its
//!   source;
//! - Geneve decap in the DSR format (no NAT at the node): the control row,
//!   a path the change does not touch.
//!
//! A tc program that rewrites its packet cannot be timed with `repeat` (the
//! second run sees the first's output), so each sample is one
//! BPF_PROG_TEST_RUN with repeat 1: the kernel's time of that single run,
//! its clock reads included (the same in every cell: compare differences,
//! not absolute figures). Each round runs both objects on the frame in a
//! rotating order; a cell is the median and the minimum over rounds; Δ is
//! the median of same-round differences (tree − REV). Both objects' output
//! frames are checked equal first. BPF_PROG_TEST_RUN's skb is
//! CHECKSUM_NONE: the full-checksum case.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{ensure, Context, Result};
use aya::{maps::MapData, programs::SchedClassifier, Ebpf, EbpfLoader};
use lb::{
    datapath::Datapath,
    features::Features,
    loader::{Dataplane, LoadOptions, CT_SETS_GLOBAL},
    model::{
        Backend, BackendState, Desired, Encap, Frontend, FrontendKind, Network, NodeConfig,
        PeerRole, Proto, Service, ServiceKey,
    },
};
use serde::Serialize;
use testkit::{netns::in_private_netns, packet::Frame, pins::PinDir};
use xlb_perf::stats::{loadavg, median};

use crate::compare::{build_rev_object, shared_pins};

const LB_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const LB_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 2);
const NODE_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const NODE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x11);
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x2, 0, 0, 0, 0, 0x10);
const VIP_V4: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
const POD_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const POD_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x244, 1, 0, 0, 0, 0x11);
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0x11];
const SVC_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
const CLIENT_PORT: u16 = 40000;
const GENEVE_PORT: u16 = 6081;

#[derive(Clone, Debug)]
pub struct TcNatOpts {
    pub rounds: u32,
    pub rev: String,
}

/// One (path, frame)'s figures, ns per run (see the module's note).
#[derive(Clone, Debug, Serialize)]
pub struct TcNatRow {
    pub path: String,
    pub frame: String,
    /// The working tree: median, minimum.
    pub tree_ns: [f64; 2],
    /// `--rev`'s object: median, minimum.
    pub rev_ns: [f64; 2],
    /// Median of same-round (tree − rev).
    pub delta_ns: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TcNatReport {
    pub rounds: u32,
    pub rev: (String, String),
    pub load: [f64; 2],
    pub rows: Vec<TcNatRow>,
}

pub fn run(o: &TcNatOpts) -> Result<TcNatReport> {
    let rev = build_rev_object(&o.rev, "tc/xlb_tc.c")?;
    let o = o.clone();
    in_private_netns(move || run_inside(&o, rev))?
}

fn pick(v6: bool, a: Ipv4Addr, b: Ipv6Addr) -> IpAddr {
    if v6 {
        b.into()
    } else {
        a.into()
    }
}

/// The service of one family in IPIP mode: TCP and UDP on port 80, one
/// pod on this node (one service per family: a backend of the other family
/// would be picked for some flows, and is refused: no NAT64).
fn service(v6: bool) -> Service {
    let mut s = Service::new(ServiceKey::new("default", "bench", if v6 { "v6" } else { "v4" }));
    s.encap = Encap::Ipip;
    for proto in [Proto::Tcp, Proto::Udp] {
        s.frontends.push(Frontend {
            addr: pick(v6, VIP_V4, VIP_V6),
            port: SVC_PORT,
            proto,
            kind: FrontendKind::LoadBalancer,
        });
    }
    s.backends.push(Backend {
        name: format!("pod-v{}", if v6 { 6 } else { 4 }).into(),
        addr: pick(v6, POD_V4, POD_V6),
        port: TARGET_PORT,
        node: pick(v6, NODE_V4, NODE_V6),
        weight: 1,
        state: BackendState::Active,
    });
    s
}

/// (hook, path, frame name, frame), in the order a flow meets them: the
/// IPIP packet that DNATs (and remembers) the flow, the reply, the
/// Geneve DSR packet of the same flow.
fn frames() -> Vec<(bool, &'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        let (lb, node) = (pick(v6, LB_V4, LB_V6), pick(v6, NODE_V4, NODE_V6));
        let (client, vip, pod) =
            (pick(v6, CLIENT_V4, CLIENT_V6), pick(v6, VIP_V4, VIP_V6), pick(v6, POD_V4, POD_V6));
        for udp in [false, true] {
            let l4 = |f: Frame, sport: u16, dport: u16| {
                if udp {
                    f.udp(sport, dport).payload(&[0x5a; 64])
                } else {
                    f.tcp(sport, dport).seq(1000).ack_seq(2000).flags(0x10)
                }
            };
            let name = format!(
                "{} {}",
                if v6 { "IPv6" } else { "IPv4" },
                if udp { "UDP" } else { "TCP ACK" }
            );
            let ipip = Frame::eth(MAC_A, MAC_B).ip(lb, node).inner(l4(
                Frame::new().ip(client, vip),
                CLIENT_PORT,
                SVC_PORT,
            ));
            let reply = l4(Frame::eth(MAC_B, MAC_A).ip(pod, client), TARGET_PORT, CLIENT_PORT);
            let geneve = Frame::eth(MAC_A, MAC_B)
                .ip(lb, node)
                .udp(49229, GENEVE_PORT)
                .l4_checksum(0)
                .geneve(0)
                .dsr_opt(SocketAddr::new(vip, SVC_PORT))
                .inner(l4(Frame::new().ip(client, pod), CLIENT_PORT, TARGET_PORT));
            out.push((true, "IPIP decap + DNAT", name.clone(), ipip.build()));
            out.push((false, "revnat (reply)", name.clone(), reply.build()));
            if !udp {
                out.push((true, "Geneve decap, no NAT", name, geneve.build()));
            }
        }
    }
    out
}

/// `bytes`' tc programs loaded on the maps pinned in `tree`.
fn load_rev(bytes: &[u8], tree: &std::path::Path, pins: &PinDir) -> Result<Ebpf> {
    std::fs::create_dir_all(pins.path())?;
    shared_pins(bytes, tree, pins.path())?;
    let features = Features::probe().context("probing kernel features")?;
    let flag: u64 = if features.csum_ipv6_flag { 1 << 7 } else { 0 };
    let sets = MapData::from_pin(tree.join("xlb_ct"))?.info()?.max_entries();
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(pins.path());
    loader.override_global("xlb_csum_ipv6_flag", &flag, false);
    loader.override_global(CT_SETS_GLOBAL, &sets, false);
    let mut e = loader.load(bytes).context("loading the revision's tc object")?;
    for name in ["xlb_tc_ingress", "xlb_tc_egress"] {
        let p: &mut SchedClassifier =
            e.program_mut(name).with_context(|| format!("no {name}"))?.try_into()?;
        p.load().with_context(|| format!("the verifier rejected the revision's {name}"))?;
    }
    Ok(e)
}

fn run_inside(o: &TcNatOpts, rev: (String, Vec<u8>)) -> Result<TcNatReport> {
    let load_before = loadavg();
    let pin = PinDir::new("tcnat");
    let mut dp =
        Dataplane::load(&LoadOptions::small(pin.path())).context("loading the datapath")?;
    let desired = Desired {
        node: NodeConfig { tunnel_v4: Some(NODE_V4), tunnel_v6: Some(NODE_V6) },
        services: [service(false), service(true)].map(|s| (s.key.clone(), s)).into(),
    };
    let lb = PeerRole { node: false, load_balancer: true };
    let network = Network {
        peers: [(IpAddr::from(LB_V4), lb), (IpAddr::from(LB_V6), lb)].into(),
        ..Network::default()
    };
    Datapath::open(pin.path())?.apply(&desired)?;
    Datapath::open(pin.path())?.apply_network(&network)?;
    let rev_pins = PinDir::new("tcnat-rev");
    let rev_obj = load_rev(&rev.1, pin.path(), &rev_pins)?;
    let mut rows = Vec::new();
    for (ingress, path, name, frame) in frames() {
        let rname = if ingress { "xlb_tc_ingress" } else { "xlb_tc_egress" };
        let rp: &SchedClassifier = rev_obj.program(rname).context("no program")?.try_into()?;
        let tp: &SchedClassifier =
            if ingress { dp.tc_ingress_program() } else { dp.tc_egress_program() };
        let slots = [tp, rp];
        // The flow's first packet through each: entries written, outputs equal.
        let mut outs = Vec::new();
        for p in slots {
            let (ret, _, out) =
                testkit::bench::tc_test_run(p, &frame, 0, 1).context("BPF_PROG_TEST_RUN")?;
            ensure!(
                ret == 0,
                "{path} {name}: verdict {ret}, expected TC_ACT_OK; counters {:?}",
                lb::loader::read_hook_counters(pin.path())?
                    .into_iter()
                    .filter(|(_, _, c)| c.packets != 0)
                    .map(|(h, k, c)| (h.name(), k.name(), c.packets))
                    .collect::<Vec<_>>()
            );
            outs.push(out);
        }
        ensure!(outs[0] == outs[1], "{path} {name}: the objects' output frames differ");
        ensure!(outs[0] != frame || path.starts_with("Geneve"), "{path} {name}: not translated");
        let mut t = [Vec::new(), Vec::new()];
        for round in 0..o.rounds as usize * 200 {
            for j in 0..2 {
                let s = (j + round) % 2;
                let (_, d, _) = testkit::bench::tc_test_run(slots[s], &frame, 0, 1)
                    .context("BPF_PROG_TEST_RUN")?;
                t[s].push(d.as_nanos() as f64);
            }
        }
        let cell = |s: usize| [median(&t[s]), t[s].iter().copied().fold(f64::INFINITY, f64::min)];
        rows.push(TcNatRow {
            path: path.into(),
            frame: name,
            tree_ns: cell(0),
            rev_ns: cell(1),
            delta_ns: median(&t[0].iter().zip(&t[1]).map(|(a, b)| a - b).collect::<Vec<_>>()),
        });
    }
    Ok(TcNatReport {
        rounds: o.rounds,
        rev: (o.rev.clone(), rev.0),
        load: [load_before, loadavg()],
        rows,
    })
}

impl TcNatReport {
    pub fn markdown(&self) -> String {
        let rev = format!("{} ({})", self.rev.0, &self.rev.1[..self.rev.1.len().min(7)]);
        let mut s = format!(
            "xlb tc programs per packet of an established flow, ns per single \
             BPF_PROG_TEST_RUN (clock reads included), {} samples per cell, interleaved; \
             median / min; load average {:.2} -> {:.2}\n\n\
             | path | frame | tree | {rev} | tree − {rev} (median of Δ) | ratio |\n\
             |---|---|---:|---:|---:|---:|\n",
            self.rounds * 200,
            self.load[0],
            self.load[1]
        );
        for r in &self.rows {
            s += &format!(
                "| {} | {} | {:.0} / {:.0} | {:.0} / {:.0} | {:+.1} | {:.2} |\n",
                r.path,
                r.frame,
                r.tree_ns[0],
                r.tree_ns[1],
                r.rev_ns[0],
                r.rev_ns[1],
                r.delta_ns,
                r.tree_ns[0] / r.rev_ns[0]
            );
        }
        s
    }
}
