//! `xlb-perf podnet`: the pod network against the kernel's own ways of
//! doing it, on the same lab topology (two nodes on the fabric bridge, two
//! pods each), all rigs up at once and measured in interleaved rounds:
//!
//!   cross-node pod to pod   xlb (BPF Geneve, xlb-cni pods, agents with
//!                           --pod-network; tc only on the uplink, and with
//!                           XDP kept there too) / the kernel's VXLAN device with
//!                           plain routes (flannel's layout: a vxlan0 per
//!                           node, static neighbour and FDB entries) / plain
//!                           routing without encapsulation (routes to the
//!                           other node's pod range)
//!   same-node pod to pod    xlb (bpf_redirect_peer) / a Linux bridge with
//!                           the node's pods as ports
//!
//! Per path: iperf3 throughput (one TCP stream, `--seconds` per round), and
//! request latency on one keep-alive connection (64-byte request, 64-byte
//! answer, from a server thread in the pod), requests of every path taken
//! in turn so shared-core noise hits all alike, client and server threads
//! at SCHED_FIFO on one CPU so a busy machine's scheduler slices do not
//! stand in for the path; p50/p99 over every round.
//! Then CNI ADD latency: `--pods` pods created at once on one node through
//! xlb-cni, each ADD's wall time (fork, exec, netlink, IPAM, TCX attach,
//! xlb_endpoints) as the runtime sees it.
//! Pod MTUs follow each design: xlb 1536 (1600 - 64), VXLAN 1550, plain
//! and bridge 1600.
use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use lab::{cni, manifests::EndpointState, netns, spec, Lab, LabSpec};
use serde::Serialize;

use xlb_perf::{
    labrig::XlbLab,
    loadgen::iperf3,
    stats::{median, quantile},
};

const IPERF_PORT: u16 = 5201;
const ECHO_PORT: u16 = 7100;
const MSG: usize = 64;
/// The fabric MTU of every rig.
const UNDERLAY_MTU: u32 = 1600;

#[derive(Clone, Debug)]
pub struct PodnetOpts {
    pub seconds: u64,
    pub rounds: u32,
    /// Requests per path and round for the latency.
    pub requests: usize,
    /// Pods created at once for the CNI ADD latency.
    pub pods: usize,
}

impl Default for PodnetOpts {
    fn default() -> Self {
        PodnetOpts { seconds: 3, rounds: 5, requests: 5_000, pods: 100 }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PathRow {
    pub path: String,
    /// iperf3 Gbit/s, median over rounds, and each round's.
    pub gbps: f64,
    pub gbps_rounds: Vec<f64>,
    pub retransmits: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Each round's p99 (µs): how much of the pooled p99 one noisy round
    /// makes.
    pub p99_rounds_us: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AddLatency {
    /// "one at a time" or "all at once".
    pub mode: String,
    pub pods: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// From the first ADD started to the last done.
    pub wall_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PodnetReport {
    pub rows: Vec<PathRow>,
    pub cni_add: Vec<AddLatency>,
    pub rounds: u32,
    pub seconds: u64,
}

/// The rigs' pod addressing for the kernel baselines: a bridge per node
/// (cbr0, gateway 10.244.n.1/24) with the node's pods as ports.
pub(crate) fn bridge_pods(lab: &Lab, pod_mtu: u32) -> Result<()> {
    for n in lab.nodes() {
        let ns = &n.host.ns;
        let gw = Ipv4Addr::new(10, 244, n.index as u8, 1);
        let mtu = pod_mtu.to_string();
        lab.run(ns, "ip", &["link", "add", "cbr0", "mtu", &mtu, "type", "bridge"])?;
        lab.run(ns, "ip", &["addr", "add", &format!("{gw}/24"), "dev", "cbr0"])?;
        lab.run(ns, "ip", &["link", "set", "cbr0", "up"])?;
        for (m, p) in n.pods.iter().enumerate() {
            let port = format!("v{m}");
            lab.run(
                ns,
                "ip",
                &[
                    "link", "add", &port, "mtu", &mtu, "type", "veth", "peer", "name", "eth0",
                    "mtu", &mtu, "netns", &p.host.ns,
                ],
            )?;
            lab.run(ns, "ip", &["link", "set", &port, "master", "cbr0", "up"])?;
            lab.run(&p.host.ns, "ip", &["link", "set", "eth0", "up"])?;
            lab.run(
                &p.host.ns,
                "ip",
                &["addr", "add", &format!("{}/24", p.host.v4), "dev", "eth0"],
            )?;
            lab.run(&p.host.ns, "ip", &["route", "add", "default", "via", &gw.to_string()])?;
        }
    }
    Ok(())
}

/// Plain routes: each node sends the other's pod range to it.
pub(crate) fn plain_routes(lab: &Lab) -> Result<()> {
    for n in lab.nodes() {
        for other in lab.nodes().iter().filter(|o| o.index != n.index) {
            let (c, l) = spec::pod_cidr_v4(other.index);
            lab.run(
                &n.host.ns,
                "ip",
                &["route", "add", &format!("{c}/{l}"), "via", &other.host.v4.to_string()],
            )?;
        }
    }
    Ok(())
}

/// Flannel's VXLAN layout: vxlan0 (VNI 42, port 4789, no learning) with
/// 10.244.n.0/32 on each node, the other node's range routed via its
/// vxlan0 address, static neighbour and forwarding entries.
fn vxlan(lab: &Lab) -> Result<()> {
    let mac = |n: u32| format!("02:00:00:00:42:{n:02x}");
    for n in lab.nodes() {
        let ns = &n.host.ns;
        let mtu = (UNDERLAY_MTU - 50).to_string();
        lab.run(
            ns,
            "ip",
            &[
                "link",
                "add",
                "vxlan0",
                "address",
                &mac(n.index),
                "mtu",
                &mtu,
                "type",
                "vxlan",
                "id",
                "42",
                "local",
                &n.host.v4.to_string(),
                "dstport",
                "4789",
                "nolearning",
                "dev",
                "eth0",
            ],
        )?;
        lab.run(ns, "ip", &["addr", "add", &format!("10.244.{}.0/32", n.index), "dev", "vxlan0"])?;
        lab.run(ns, "ip", &["link", "set", "vxlan0", "up"])?;
        for o in lab.nodes().iter().filter(|o| o.index != n.index) {
            let gw = format!("10.244.{}.0", o.index);
            let (c, l) = spec::pod_cidr_v4(o.index);
            lab.run(
                ns,
                "ip",
                &[
                    "neigh",
                    "replace",
                    &gw,
                    "lladdr",
                    &mac(o.index),
                    "dev",
                    "vxlan0",
                    "nud",
                    "permanent",
                ],
            )?;
            lab.run(
                ns,
                "bridge",
                &["fdb", "append", &mac(o.index), "dev", "vxlan0", "dst", &o.host.v4.to_string()],
            )?;
            lab.run(
                ns,
                "ip",
                &["route", "add", &format!("{c}/{l}"), "via", &gw, "dev", "vxlan0", "onlink"],
            )?;
        }
    }
    Ok(())
}

/// A lab whose nodes run only xlb's pod network (no services): pods from
/// xlb-cni. `xdp`: the agents keep their XDP program on the node's uplink
/// (a veth here: the router-side peer then cannot hand GSO packets over,
/// so every packet crosses the bridge and the node's programs alone —
/// what a NodePort-serving node pays in this lab, not on a real NIC);
/// else `--xdp-mode=none`, tc only, as a node without frontends runs.
fn xlb_rig(prefix: &str, xdp: bool) -> Result<(Lab, Vec<lab::agent::Agent>)> {
    let mut lab = Lab::build(LabSpec {
        nodes: 2,
        pods_per_node: 2,
        backends: false,
        name_prefix: prefix.into(),
        ..LabSpec::default()
    })?;
    let extra: &[&str] = if xdp { &[] } else { &["--xdp-mode=none"] };
    let agents = lab::agent::start_node_agents(&lab, extra)?;
    lab.start_pods()?;
    Ok((lab, agents))
}

/// A lab without xlb whose pods `wire` connects.
fn kernel_lab(prefix: &str, wire: &dyn Fn(&Lab) -> Result<()>) -> Result<Lab> {
    let lab = Lab::build(LabSpec {
        nodes: 2,
        pods_per_node: 2,
        backends: false,
        name_prefix: prefix.into(),
        ..LabSpec::default()
    })?;
    wire(&lab)?;
    Ok(lab)
}

/// A 64-byte echo server on ECHO_PORT in namespace `ns`, for the process's
/// life (one thread per connection).
fn echo_server(ns: String, addr: IpAddr) {
    std::thread::spawn(move || {
        let _ = netns::in_netns(&ns, || {
            let l = TcpListener::bind((addr, ECHO_PORT)).expect("binding the echo server");
            for c in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut c = c;
                    let _ = c.set_nodelay(true);
                    let _ = realtime(true);
                    let mut buf = [0u8; MSG];
                    while c.read_exact(&mut buf).is_ok() {
                        if c.write_all(&buf).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    });
}

/// The calling thread at SCHED_FIFO priority 10 on CPU 0 (`on`), or back
/// to normal on every CPU. The request-latency threads (client and echo
/// servers) only: on cores shared with other work, a woken thread otherwise
/// waits up to a scheduler slice (~3-4 ms) for a core, and which path's
/// thread waits follows the scheduler's bookkeeping, not the path: that
/// swamps a p99 of tens of µs. One CPU for all of them: real-time threads
/// on two would be woken across CPUs, an IPI each way (slow in a VM) —
/// on one, the server runs when the client blocks, as ordinary threads
/// mostly do. They block between requests and the latency phase is short;
/// iperf3 stays normal.
pub(crate) fn realtime(on: bool) -> std::io::Result<()> {
    let (policy, prio) = if on { (libc::SCHED_FIFO, 10) } else { (libc::SCHED_OTHER, 0) };
    let param = libc::sched_param { sched_priority: prio };
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it.
    let mut cpus: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let all = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    for cpu in if on { 0..1 } else { 0..all } {
        // SAFETY: cpu < CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut cpus) };
    }
    // SAFETY: pid 0 is the calling thread; the set and param outlive the calls.
    unsafe {
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &cpus) != 0
            || libc::sched_setscheduler(0, policy, &param) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One path: the lab, the client pod, the server pod's address.
struct Path_<'a> {
    name: &'static str,
    lab: &'a Lab,
    from: String,
    to: IpAddr,
}

fn connect(p: &Path_) -> Result<TcpStream> {
    let t0 = Instant::now();
    loop {
        let r = p.lab.in_ns(&p.from, || {
            TcpStream::connect_timeout(&SocketAddr::new(p.to, ECHO_PORT), Duration::from_secs(2))
        })?;
        match r {
            Ok(s) => {
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                return Ok(s);
            }
            Err(e) if t0.elapsed() < Duration::from_secs(10) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e).with_context(|| format!("{}: connecting to {}", p.name, p.to)),
        }
    }
}

/// Request latency of every path, requests taken in turn: µs per path.
fn latency(paths: &[Path_], requests: usize) -> Result<Vec<Vec<f64>>> {
    let mut conns = paths.iter().map(connect).collect::<Result<Vec<_>>>()?;
    realtime(true).context("SCHED_FIFO for the latency client")?;
    let r = latency_on(&mut conns, requests);
    realtime(false).context("back to SCHED_OTHER")?;
    r
}

fn latency_on(conns: &mut [TcpStream], requests: usize) -> Result<Vec<Vec<f64>>> {
    let mut buf = [0u8; MSG];
    let mut one = |c: &mut TcpStream| -> std::io::Result<()> {
        c.write_all(&[0x5a; MSG])?;
        c.read_exact(&mut buf)
    };
    for c in conns.iter_mut() {
        for _ in 0..200 {
            one(c)?;
        }
    }
    let k = conns.len();
    let mut out = vec![Vec::with_capacity(requests); k];
    for round in 0..requests {
        for j in 0..k {
            let i = (j + round) % k;
            let t0 = Instant::now();
            one(&mut conns[i])?;
            out[i].push(t0.elapsed().as_nanos() as f64 / 1e3);
        }
    }
    Ok(out)
}

/// ADDs of the pods named `names` (their namespaces exist) on `node`, all
/// at once (`concurrent`) or one after another, then their DELs: each ADD's
/// milliseconds and the wall time of the ADDs.
fn add_batch(lab: &Lab, node: &str, names: &[String], concurrent: bool) -> Result<(Vec<f64>, f64)> {
    let dir = cni::plugin_dir()?;
    let list = cni::conflist(&lab.node_cni("node1").conf_dir, cni::CNI_READY)?;
    let one = |name: &String| -> Result<(f64, cni::Attachment)> {
        let a = cni::Attachment {
            node_ns: node.to_string(),
            container_id: name.clone(),
            netns: Path::new("/run/netns").join(name),
            ifname: "eth0".into(),
            args: format!("K8S_POD_NAMESPACE=bench;K8S_POD_NAME={name}"),
            conflist: serde_json::Value::Null,
            result: serde_json::Value::Null,
        };
        let t = Instant::now();
        let a = cni::add(&dir, &list, a, Duration::from_secs(60))?;
        Ok((t.elapsed().as_secs_f64() * 1e3, a))
    };
    let t0 = Instant::now();
    let results: Vec<Result<(f64, cni::Attachment)>> = if concurrent {
        std::thread::scope(|s| {
            let hs: Vec<_> = names.iter().map(|name| s.spawn(|| one(name))).collect();
            hs.into_iter().map(|h| h.join().expect("an ADD thread")).collect()
        })
    } else {
        names.iter().map(one).collect()
    };
    let wall = t0.elapsed().as_secs_f64();
    let mut ms = Vec::new();
    let mut first_err = None;
    for r in results {
        match r {
            Ok((t, a)) => {
                ms.push(t);
                cni::del(&dir, &a)?;
            }
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    match first_err {
        Some(e) => Err(e.context("a CNI ADD failed")),
        None => Ok((ms, wall)),
    }
}

fn add_row(ms: &[f64], wall: f64, pods: usize, mode: &str) -> AddLatency {
    AddLatency {
        mode: mode.into(),
        pods,
        p50_ms: median(ms),
        p99_ms: quantile(ms, 0.99),
        max_ms: ms.iter().copied().fold(0.0, f64::max),
        wall_s: wall,
    }
}

/// CNI ADD latency on one node: `n` pods one after another (what one ADD
/// costs alone: the reference), then `n` pods at once (what the runtime
/// meets when a node fills up).
fn cni_adds(n: usize) -> Result<Vec<AddLatency>> {
    let rig = XlbLab::start(
        LabSpec { nodes: 1, pods_per_node: 1, backends: false, ..LabSpec::default() },
        &|_| EndpointState::Ready,
    )?;
    let lab = &rig.lab;
    let node = lab.nodes()[0].host.ns.clone();
    let names: Vec<String> =
        (0..n).map(|i| lab.add_namespace(&format!("bench{i}"))).collect::<Result<_, _>>()?;
    let (seq, seq_wall) = add_batch(lab, &node, &names, false).context("sequential ADDs")?;
    let (conc, conc_wall) = add_batch(lab, &node, &names, true).context("concurrent ADDs")?;
    Ok(vec![
        add_row(&seq, seq_wall, n, "one at a time"),
        add_row(&conc, conc_wall, n, "all at once"),
    ])
}

pub fn run(opts: &PodnetOpts) -> Result<PodnetReport> {
    // The rigs, up at once. xlb's pods get 1536, VXLAN's 1550.
    let (xlb, _xlb_agents) = xlb_rig("xlbpn", false).context("the xlb rig")?;
    let (xlbx, _xlbx_agents) = xlb_rig("xlbpx", true).context("the xlb rig with XDP")?;

    let vx = kernel_lab("xlbvx", &|lab| {
        bridge_pods(lab, UNDERLAY_MTU - 50)?;
        vxlan(lab)
    })
    .context("the VXLAN rig")?;
    let plain = kernel_lab("xlbpl", &|lab| {
        bridge_pods(lab, UNDERLAY_MTU)?;
        plain_routes(lab)
    })
    .context("the plain-routing rig")?;

    let pod = |lab: &Lab, name: &str| lab.pod(name).expect("pod").host.clone();
    let paths = [
        Path_ {
            name: "cross-node: xlb (BPF Geneve)",
            lab: &xlb,
            from: "pod1-1".into(),
            to: pod(&xlb, "pod2-1").v4.into(),
        },
        Path_ {
            name: "cross-node: xlb, XDP on the node veths",
            lab: &xlbx,
            from: "pod1-1".into(),
            to: pod(&xlbx, "pod2-1").v4.into(),
        },
        Path_ {
            name: "cross-node: kernel VXLAN",
            lab: &vx,
            from: "pod1-1".into(),
            to: pod(&vx, "pod2-1").v4.into(),
        },
        Path_ {
            name: "cross-node: plain routing",
            lab: &plain,
            from: "pod1-1".into(),
            to: pod(&plain, "pod2-1").v4.into(),
        },
        Path_ {
            name: "same node: xlb (redirect_peer)",
            lab: &xlb,
            from: "pod1-1".into(),
            to: pod(&xlb, "pod1-2").v4.into(),
        },
        Path_ {
            name: "same node: Linux bridge",
            lab: &plain,
            from: "pod1-1".into(),
            to: pod(&plain, "pod1-2").v4.into(),
        },
    ];
    let mut servers = Vec::new();
    for p in &paths {
        let target = p.lab.pods().find(|q| IpAddr::from(q.host.v4) == p.to).expect("target pod");
        echo_server(target.host.ns.clone(), p.to);
        let mut cmd = std::process::Command::new("iperf3");
        cmd.args(["-s", "-p", &IPERF_PORT.to_string()]).stdout(std::process::Stdio::null());
        servers.push(p.lab.spawn(&target.host.ns, cmd)?);
    }
    std::thread::sleep(Duration::from_millis(300));

    let mut gbps = vec![Vec::new(); paths.len()];
    let mut retr = vec![0u64; paths.len()];
    let mut lat = vec![Vec::new(); paths.len()];
    let mut p99_rounds = vec![Vec::new(); paths.len()];
    for round in 0..opts.rounds {
        // Rotate the order each round: no path always goes first.
        for j in 0..paths.len() {
            let i = (j + round as usize) % paths.len();
            let p = &paths[i];
            let r = iperf3(p.lab, &p.from, p.to, IPERF_PORT, Duration::from_secs(opts.seconds))
                .with_context(|| format!("iperf3 over {}", p.name))?;
            gbps[i].push(r.received_bps / 1e9);
            retr[i] += r.retransmits;
        }
        for (i, l) in latency(&paths, opts.requests)?.into_iter().enumerate() {
            p99_rounds[i].push(quantile(&l, 0.99));
            lat[i].extend(l);
        }
    }
    drop(servers);
    let rows = paths
        .iter()
        .enumerate()
        .map(|(i, p)| PathRow {
            path: p.name.into(),
            gbps: median(&gbps[i]),
            gbps_rounds: gbps[i].clone(),
            retransmits: retr[i],
            p50_us: quantile(&lat[i], 0.5),
            p99_us: quantile(&lat[i], 0.99),
            p99_rounds_us: p99_rounds[i].clone(),
        })
        .collect();
    drop((_xlb_agents, _xlbx_agents, xlb, xlbx, vx, plain));
    let cni_add = cni_adds(opts.pods).context("CNI ADD latency")?;
    Ok(PodnetReport { rows, cni_add, rounds: opts.rounds, seconds: opts.seconds })
}

impl PodnetReport {
    fn row(&self, prefix: &str) -> Option<&PathRow> {
        self.rows.iter().find(|r| r.path.starts_with(prefix))
    }

    pub fn markdown(&self) -> String {
        let mut s = format!(
            "## Pod network: xlb vs the kernel ({} interleaved rounds, iperf3 {} s each, one TCP stream; latency: 64-byte request/response on one connection)\n\n",
            self.rounds, self.seconds
        );
        s.push_str("| path | iperf3 Gbit/s (median) | rounds | retransmits | p50 µs | p99 µs | p99 per round µs |\n|---|---|---|---|---|---|---|\n");
        let each = |v: &[f64], digits: usize| -> String {
            v.iter().map(|g| format!("{g:.digits$}")).collect::<Vec<_>>().join(" / ")
        };
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {:.2} | {} | {} | {:.1} | {:.1} | {} |\n",
                r.path,
                r.gbps,
                each(&r.gbps_rounds, 2),
                r.retransmits,
                r.p50_us,
                r.p99_us,
                each(&r.p99_rounds_us, 0),
            ));
        }
        let ratio = |a: &str, b: &str, f: &dyn Fn(&PathRow) -> f64| -> String {
            match (self.row(a), self.row(b)) {
                (Some(x), Some(y)) if f(y) > 0.0 => format!("{:.2}", f(x) / f(y)),
                _ => "-".into(),
            }
        };
        // Rounds pair the paths in time: the median of per-round ratios
        // is less at the mercy of one noisy round than the ratio of medians.
        let paired = |a: &str, b: &str, f: &dyn Fn(&PathRow) -> &[f64]| -> String {
            match (self.row(a), self.row(b)) {
                (Some(x), Some(y)) => {
                    let r: Vec<f64> = f(x)
                        .iter()
                        .zip(f(y))
                        .filter(|(_, d)| **d > 0.0)
                        .map(|(n, d)| n / d)
                        .collect();
                    if r.is_empty() {
                        "-".into()
                    } else {
                        format!("{:.2}", median(&r))
                    }
                }
                _ => "-".into(),
            }
        };
        let (xlb, vx, plain) = ("cross-node: xlb", "cross-node: kernel VXLAN", "cross-node: plain");
        let (local, bridge) = ("same node: xlb", "same node: Linux bridge");
        let gbps = |r: &PathRow| r.gbps;
        fn gbps_rounds(r: &PathRow) -> &[f64] {
            &r.gbps_rounds
        }
        let p99 = |r: &PathRow| r.p99_us;
        fn p99_rounds(r: &PathRow) -> &[f64] {
            &r.p99_rounds_us
        }
        let p50 = |r: &PathRow| r.p50_us;
        s.push_str(
            "\n| ratio | of medians (pooled p99) | median of per-round ratios | target |\n|---|---|---|---|\n",
        );
        let lines: [(&str, String, String, &str); 6] = [
            (
                "throughput xlb / VXLAN",
                ratio(xlb, vx, &gbps),
                paired(xlb, vx, &gbps_rounds),
                "≥ 1.0×",
            ),
            (
                "throughput xlb / plain routing",
                ratio(xlb, plain, &gbps),
                paired(xlb, plain, &gbps_rounds),
                "(no encapsulation: the ceiling)",
            ),
            (
                "p99 latency xlb / VXLAN",
                ratio(xlb, vx, &p99),
                paired(xlb, vx, &p99_rounds),
                "≤ 1.0×",
            ),
            ("p50 latency xlb / VXLAN", ratio(xlb, vx, &p50), "-".into(), ""),
            (
                "same-node throughput xlb / bridge",
                ratio(local, bridge, &gbps),
                paired(local, bridge, &gbps_rounds),
                "≥ 1.0×",
            ),
            (
                "same-node p99 xlb / bridge",
                ratio(local, bridge, &p99),
                paired(local, bridge, &p99_rounds),
                "",
            ),
        ];
        for (what, a, b, target) in lines {
            s.push_str(&format!("| {what} | {a}× | {b}× | {target} |\n"));
        }
        s.push_str(
            "\n## CNI ADD latency on one node (xlb-cni run as the runtime runs it: fork, exec, IPAM, netlink, TCX attach, xlb_endpoints)\n\n| ADDs | pods | p50 ms | p99 ms | max ms | all done in s |\n|---|---|---|---|---|---|\n",
        );
        for a in &self.cni_add {
            s.push_str(&format!(
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.2} |\n",
                a.mode, a.pods, a.p50_ms, a.p99_ms, a.max_ms, a.wall_s
            ));
        }
        s
    }
}
