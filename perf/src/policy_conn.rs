//! `xlb-perf policy-conn`: NetworkPolicy's cost to real connections (#11
//! benchmark) — xlb against iptables in kube-router's shape, same run.
//!
//! Two labs (lab::Lab, two nodes with two pods each), up at once:
//! - xlb: `xlb run` agents on every node (pods from xlb-cni, xlb's pod
//!   programs on their veths), the manifest they watch holding the pods as
//!   Pod objects and the NetworkPolicies, compiled by the agents'
//!   control-plane compiler (control/src/policy) as in a cluster;
//! - iptables: the kernel's pod network (a bridge per node, routes between
//!   nodes: kube-router's layout, br_netfilter on so bridged packets meet
//!   FORWARD) with the same policies as kube-router's iptables + ipset
//!   rules ([`xlb_perf::netpol_iptables`]) on both nodes.
//!
//! Policy states: none (the baseline) and each `--policies` count; every
//! policy selects the server pod2-1 (the worst case for a rule list: each
//! one is on the server's path), policy 0 allows pod1-1 and pod2-2 on TCP
//! 8080/8081, the others allow pod1-2 or an ipBlock on other ports. Each
//! round takes every state in turn (order rotated) on both labs at once,
//! waits until each lab enforces it (pod1-2 → pod2-1:8080 refused or not,
//! pod1-1 let through), then measures, rig and path order rotated:
//! - connection rate: connect, 64-byte request, 64-byte answer, the server
//!   closes, the client reads EOF and closes; one client thread, `--seconds`;
//! - request rate on one established connection (64 bytes each way).
//!
//! Client and server threads run at SCHED_FIFO on CPU 0 while measuring
//! (`podnet::realtime`, as the pod-network latency does): on cores shared
//! with other work, a woken thread otherwise waits for a scheduler slice,
//! and which configuration waits follows the scheduler, not the path.
//!
//! Paths: cross-node (pod1-1 → pod2-1) and same node (pod2-2 → pod2-1).
//! Medians over rounds; ratios against the no-policy state of the same lab
//! and run (median of per-round ratios beside the ratio of medians). The
//! load average is printed (shared machine).
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::podnet::realtime;
use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
        NetworkPolicySpec,
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use lab::{
    agent::{self, Agent, AgentSpec},
    manifests::{self, EndpointState},
    Lab, LabSpec,
};
use serde::Serialize;
use xlb_perf::{
    netpol_iptables::{kube_router, NsRef, PodRef, Ruleset},
    stats::{loadavg, median},
};

const ONCE_PORT: u16 = 8080;
const KEEP_PORT: u16 = 8081;
const MSG: usize = 64;
const SERVER: &str = "pod2-1";
const DENIED: &str = "pod1-2";
const CONVERGE: Duration = Duration::from_secs(90);

#[derive(Clone, Debug)]
pub struct ConnOpts {
    /// Policy counts measured against none.
    pub policies: Vec<usize>,
    pub rounds: u32,
    /// Seconds per measurement.
    pub seconds: f64,
}

impl Default for ConnOpts {
    fn default() -> Self {
        ConnOpts { policies: vec![1_000], rounds: 9, seconds: 1.0 }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ConnRow {
    /// "xlb" or "iptables (kube-router shape)".
    pub rig: String,
    /// "cross-node" or "same node".
    pub path: String,
    /// "connections/s" or "requests/s".
    pub metric: String,
    /// Median per state (0 policies first), and each round's values.
    pub medians: Vec<f64>,
    pub rounds: Vec<Vec<f64>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConnReport {
    /// Policy counts of the states (0 first).
    pub states: Vec<usize>,
    pub rounds: u32,
    pub seconds: f64,
    pub rows: Vec<ConnRow>,
    /// iptables rules and ipsets on the server's node per state.
    pub ipt_rules: Vec<usize>,
    pub ipt_sets: Vec<usize>,
    /// Seconds to program each state (median over rounds): xlb (manifest
    /// written → enforced, incl. the 1 s file poll), iptables (ipset restore
    /// + iptables-restore on both nodes).
    pub xlb_apply_s: Vec<f64>,
    pub ipt_apply_s: Vec<f64>,
    /// 1-minute load average at the start and after each round.
    pub loadavg: Vec<f64>,
}

fn sel_labels(k: &str, v: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some([(k.to_string(), v.to_string())].into()),
        ..Default::default()
    }
}

fn tcp_port(p: u16) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(p.into())),
        protocol: Some("TCP".into()),
        end_port: None,
    }
}

/// The benchmark's `n` policies (see the module doc), all in namespace
/// default, selecting the server.
pub fn bench_policies(n: usize) -> Vec<NetworkPolicy> {
    (0..n)
        .map(|i| {
            let (peer, ports) = if i == 0 {
                let allowed = LabelSelector {
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: "pod".into(),
                        operator: "In".into(),
                        values: Some(vec!["pod1-1".into(), "pod2-2".into()]),
                    }]),
                    ..Default::default()
                };
                (
                    NetworkPolicyPeer { pod_selector: Some(allowed), ..Default::default() },
                    vec![tcp_port(ONCE_PORT), tcp_port(KEEP_PORT)],
                )
            } else if i % 2 == 1 {
                let (a, b) = (64 + (i / 256) % 64, i % 256);
                (
                    NetworkPolicyPeer {
                        ip_block: Some(IPBlock {
                            cidr: format!("10.{a}.{b}.0/24"),
                            except: Some(vec![format!("10.{a}.{b}.128/28")]),
                        }),
                        ..Default::default()
                    },
                    vec![tcp_port(9000 + (i % 500) as u16)],
                )
            } else {
                (
                    NetworkPolicyPeer {
                        pod_selector: Some(sel_labels("pod", DENIED)),
                        ..Default::default()
                    },
                    vec![tcp_port(9000 + (i % 500) as u16)],
                )
            };
            NetworkPolicy {
                metadata: ObjectMeta {
                    name: Some(format!("bench-{i:05}")),
                    namespace: Some("default".into()),
                    ..Default::default()
                },
                spec: Some(NetworkPolicySpec {
                    pod_selector: Some(sel_labels("pod", SERVER)),
                    ingress: Some(vec![NetworkPolicyIngressRule {
                        from: Some(vec![peer]),
                        ports: Some(ports),
                    }]),
                    policy_types: Some(vec!["Ingress".into()]),
                    ..Default::default()
                }),
            }
        })
        .collect()
}

/// The 64-byte servers in the server pod, for the process's life: ONCE_PORT
/// answers one request and closes; KEEP_PORT answers until EOF.
fn servers(lab: &Lab, addr: Ipv4Addr) -> Result<()> {
    let ns = lab.pod(SERVER).context("no server pod")?.host.ns.clone();
    for (port, once) in [(ONCE_PORT, true), (KEEP_PORT, false)] {
        let l = lab
            .in_ns(&ns, || TcpListener::bind((addr, port)))?
            .with_context(|| format!("binding {addr}:{port} in {ns}"))?;
        std::thread::spawn(move || {
            let _ = crate::podnet::realtime(true);
            for c in l.incoming().flatten() {
                let serve = move |mut c: TcpStream| {
                    let _ = crate::podnet::realtime(true);
                    let _ = c.set_nodelay(true);
                    let mut buf = [0u8; MSG];
                    while c.read_exact(&mut buf).is_ok() {
                        if c.write_all(&buf).is_err() || once {
                            break;
                        }
                    }
                };
                if once {
                    serve(c);
                } else {
                    std::thread::spawn(move || serve(c));
                }
            }
        });
    }
    Ok(())
}

/// Whether a connection from pod `from` to the server's ONCE_PORT gets its
/// answer (300 ms timeouts).
fn reaches(lab: &Lab, from: &str, to: Ipv4Addr) -> bool {
    lab.in_ns(from, || -> std::io::Result<()> {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::new(IpAddr::V4(to), ONCE_PORT),
            Duration::from_millis(300),
        )?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        s.write_all(&[0x5a; MSG])?;
        let mut buf = [0u8; MSG];
        s.read_exact(&mut buf)
    })
    .map(|r| r.is_ok())
    .unwrap_or(false)
}

/// Waits until `lab` enforces `isolated` (pod1-2 refused) or not, pod1-1
/// always let through.
fn converge(lab: &Lab, to: Ipv4Addr, isolated: bool, what: &str) -> Result<()> {
    let t0 = Instant::now();
    loop {
        if reaches(lab, "pod1-1", to) && reaches(lab, DENIED, to) != isolated {
            return Ok(());
        }
        if t0.elapsed() > CONVERGE {
            bail!(
                "{what}: not {} after {CONVERGE:?}",
                if isolated { "isolating pod2-1" } else { "open" }
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Connections per second from pod `from` to `to` over `secs`.
fn conn_rate(lab: &Lab, from: &str, to: Ipv4Addr, secs: f64) -> Result<f64> {
    let dst = SocketAddr::new(IpAddr::V4(to), ONCE_PORT);
    let r = lab.in_ns(from, || -> std::io::Result<f64> {
        realtime(true)?;
        let t0 = Instant::now();
        let mut n = 0u64;
        let mut buf = [0u8; MSG];
        while t0.elapsed().as_secs_f64() < secs {
            let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(2))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(&[0x5a; MSG])?;
            s.read_exact(&mut buf)?;
            // The server closes: EOF, then ours.
            let mut rest = [0u8; 1];
            let _ = s.read(&mut rest)?;
            n += 1;
        }
        Ok(n as f64 / t0.elapsed().as_secs_f64())
    })?;
    r.with_context(|| format!("connections {from} -> {dst}"))
}

/// Requests per second on one connection from pod `from` (after 100 to warm).
fn req_rate(lab: &Lab, from: &str, to: Ipv4Addr, secs: f64) -> Result<f64> {
    let dst = SocketAddr::new(IpAddr::V4(to), KEEP_PORT);
    let r = lab.in_ns(from, || -> std::io::Result<f64> {
        realtime(true)?;
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut buf = [0u8; MSG];
        for _ in 0..100 {
            s.write_all(&[0x5a; MSG])?;
            s.read_exact(&mut buf)?;
        }
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed().as_secs_f64() < secs {
            s.write_all(&[0x5a; MSG])?;
            s.read_exact(&mut buf)?;
            n += 1;
        }
        Ok(n as f64 / t0.elapsed().as_secs_f64())
    })?;
    r.with_context(|| format!("requests {from} -> {dst}"))
}

/// The xlb lab and the manifest its agents watch (agents stop first).
struct XlbRig {
    agents: Vec<Agent>,
    lab: Lab,
    config: PathBuf,
}

impl XlbRig {
    fn start() -> Result<XlbRig> {
        let spec =
            LabSpec { nodes: 2, pods_per_node: 2, name_prefix: "pcx".into(), ..LabSpec::default() };
        let lab = Lab::build(spec).context("building the xlb lab")?;
        let config = lab.temp_dir().join("cluster.yaml");
        let mut rig = XlbRig { agents: Vec::new(), lab, config };
        rig.write(&[])?;
        let agent_spec = AgentSpec::new(agent::xlb_binary()?, &rig.config);
        rig.agents = agent::start_all(&mut rig.lab, &agent_spec, Duration::from_secs(30))
            .context("starting the xlb agents and pods")?;
        Ok(rig)
    }

    /// The manifest: the lab's service, its pods as Pod objects (label
    /// pod=<name>), `policies`. Written then renamed (never read half).
    fn write(&self, policies: &[NetworkPolicy]) -> Result<()> {
        let mut y = manifests::nginx(self.lab.spec(), &|_| EndpointState::Ready);
        for p in self.lab.pods() {
            y.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{pod: {name}}}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: web, ports: [{{name: http, containerPort: 80}}]}}]\nstatus:\n  phase: Running\n  podIP: {v4}\n  podIPs: [{{ip: {v4}}}, {{ip: {v6}}}]\n",
                name = p.host.name,
                node = p.node,
                v4 = p.host.v4,
                v6 = p.host.v6
            ));
        }
        for pol in policies {
            let mut v = serde_json::to_value(pol)?;
            v["apiVersion"] = "networking.k8s.io/v1".into();
            v["kind"] = "NetworkPolicy".into();
            y.push_str("---\n");
            y.push_str(&serde_json::to_string(&v)?);
            y.push('\n');
        }
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, y).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.config)
            .with_context(|| format!("renaming to {}", self.config.display()))?;
        Ok(())
    }
}

/// The kernel lab (bridge + routes, br_netfilter) and its installed rules.
struct IptRig {
    lab: Lab,
    /// Per node namespace: the installed ruleset.
    installed: Vec<(String, Ruleset)>,
}

impl IptRig {
    fn start() -> Result<IptRig> {
        let lab = Lab::build(LabSpec {
            nodes: 2,
            pods_per_node: 2,
            backends: false,
            name_prefix: "pck".into(),
            ..LabSpec::default()
        })
        .context("building the iptables lab")?;
        crate::podnet::bridge_pods(&lab, lab.spec().fabric_mtu)?;
        crate::podnet::plain_routes(&lab)?;
        for n in lab.nodes() {
            // Bridged pod-to-pod packets through FORWARD, as kube-router
            // requires (per network namespace).
            lab.run(&n.host.ns, "sysctl", &["-qw", "net.bridge.bridge-nf-call-iptables=1"])
                .context("br_netfilter's bridge-nf-call-iptables in the node namespace")?;
        }
        Ok(IptRig { lab, installed: Vec::new() })
    }

    fn pods(&self, node: &str) -> Vec<PodRef> {
        self.lab
            .pods()
            .map(|p| PodRef {
                namespace: "default".into(),
                name: p.host.name.clone(),
                labels: [("pod".to_string(), p.host.name.clone())].into(),
                ip: p.host.v4,
                local: p.node == node,
            })
            .collect()
    }

    /// Removes the installed rules and sets.
    fn clear(&mut self) -> Result<()> {
        for (ns, r) in std::mem::take(&mut self.installed) {
            let path = self.lab.temp_dir().join(format!("{ns}.cleanup"));
            std::fs::write(&path, r.cleanup())?;
            self.lab
                .run(&ns, "iptables-restore", &["--noflush", &path.display().to_string()])
                .with_context(|| format!("removing the rules in {ns}"))?;
            // Every set in the namespace is ours: the lab made it.
            self.lab.run(&ns, "ipset", &["destroy"]).with_context(|| format!("ipsets in {ns}"))?;
        }
        Ok(())
    }

    /// Installs `policies` on every node (after clearing the last ones).
    fn install(&mut self, policies: &[NetworkPolicy]) -> Result<()> {
        self.clear()?;
        if policies.is_empty() {
            return Ok(());
        }
        let nss = [NsRef {
            name: "default".into(),
            labels: [("kubernetes.io/metadata.name".to_string(), "default".to_string())].into(),
        }];
        let nodes: Vec<(String, String)> =
            self.lab.nodes().iter().map(|n| (n.host.name.clone(), n.host.ns.clone())).collect();
        for (node, ns) in nodes {
            let r = kube_router(&self.pods(&node), &nss, policies)?;
            let sets = self.lab.temp_dir().join(format!("{node}.ipset"));
            let rules = self.lab.temp_dir().join(format!("{node}.iptables"));
            std::fs::write(&sets, &r.ipsets)?;
            std::fs::write(&rules, &r.iptables)?;
            self.installed.push((ns.clone(), r));
            self.lab
                .run(&ns, "ipset", &["restore", "-f", &sets.display().to_string()])
                .with_context(|| format!("ipset restore in {ns}"))?;
            self.lab
                .run(&ns, "iptables-restore", &["--noflush", &rules.display().to_string()])
                .with_context(|| format!("iptables-restore in {ns}"))?;
        }
        Ok(())
    }
}

impl Drop for IptRig {
    fn drop(&mut self) {
        if let Err(e) = self.clear() {
            eprintln!("policy-conn: cleaning the iptables rules: {e:#}");
        }
    }
}

pub fn run(o: &ConnOpts) -> Result<ConnReport> {
    testkit::require_root("xlb-perf policy-conn");
    ensure!(!o.policies.contains(&0), "--policies: 0 is the baseline, always measured");
    for tool in ["iptables-restore", "ipset"] {
        ensure!(
            std::process::Command::new(tool).arg("--version").output().is_ok(),
            "{tool} is not installed (scripts/setup.sh installs it)"
        );
    }
    let mut states = vec![0];
    states.extend(&o.policies);
    let sets: Vec<Vec<NetworkPolicy>> = states.iter().map(|&n| bench_policies(n)).collect();
    let mut load = vec![loadavg()];

    let mut ipt = IptRig::start()?;
    let xlb = XlbRig::start()?;
    let to_xlb = xlb.lab.pod(SERVER).context("no server pod")?.host.v4;
    let to_ipt = ipt.lab.pod(SERVER).context("no server pod")?.host.v4;
    servers(&xlb.lab, to_xlb)?;
    servers(&ipt.lab, to_ipt)?;
    for lab in [&xlb.lab, &ipt.lab] {
        for c in ["pod1-1", "pod2-2"] {
            lab.run(
                &lab.pod(c).context("client pod")?.host.ns,
                "sysctl",
                &["-qw", "net.ipv4.ip_local_port_range=1024 65535"],
            )?;
        }
    }
    // (rig, path, metric) → per state → per round.
    let rigs = ["xlb", "iptables (kube-router shape)"];
    let paths = [("cross-node", "pod1-1"), ("same node", "pod2-2")];
    let metrics = ["connections/s", "requests/s"];
    let mut cells: BTreeMap<(usize, usize, usize), Vec<Vec<f64>>> = BTreeMap::new();
    let mut xlb_apply = vec![Vec::new(); states.len()];
    let mut ipt_apply = vec![Vec::new(); states.len()];
    let mut ipt_rules = vec![0; states.len()];
    let mut ipt_sets = vec![0; states.len()];
    for round in 0..o.rounds as usize {
        for k in 0..states.len() {
            let s = (k + round) % states.len();
            let isolated = states[s] > 0;
            // One lab after the other: each programming time alone.
            let t0 = Instant::now();
            xlb.write(&sets[s])?;
            converge(&xlb.lab, to_xlb, isolated, "xlb")
                .with_context(|| format!("{} policies", states[s]))?;
            xlb_apply[s].push(t0.elapsed().as_secs_f64());
            let t1 = Instant::now();
            ipt.install(&sets[s])?;
            converge(&ipt.lab, to_ipt, isolated, "iptables")?;
            ipt_apply[s].push(t1.elapsed().as_secs_f64());
            if let Some((_, r)) = ipt.installed.iter().find(|(ns, _)| ns.ends_with("node2")) {
                ipt_rules[s] = r.rules;
                ipt_sets[s] = r.set_names.len();
            }
            // Every (rig, path, metric), order rotated.
            let mut jobs = Vec::new();
            for m in 0..metrics.len() {
                for r in 0..rigs.len() {
                    for p in 0..paths.len() {
                        jobs.push((r, p, m));
                    }
                }
            }
            let nj = jobs.len();
            for j in 0..nj {
                let (r, p, m) = jobs[(j + round + k) % nj];
                let (lab, to) = if r == 0 { (&xlb.lab, to_xlb) } else { (&ipt.lab, to_ipt) };
                let from = paths[p].1;
                let v = if m == 0 {
                    conn_rate(lab, from, to, o.seconds)?
                } else {
                    req_rate(lab, from, to, o.seconds)?
                };
                cells.entry((r, p, m)).or_insert_with(|| vec![Vec::new(); states.len()])[s].push(v);
            }
        }
        load.push(loadavg());
        eprintln!("policy-conn: round {} of {} done (load {:.2})", round + 1, o.rounds, loadavg());
    }
    let mut rows = Vec::new();
    for (m, metric) in metrics.iter().enumerate() {
        for (p, path) in paths.iter().enumerate() {
            for (r, rig) in rigs.iter().enumerate() {
                let rounds = cells.remove(&(r, p, m)).unwrap_or_default();
                rows.push(ConnRow {
                    rig: rig.to_string(),
                    path: path.0.into(),
                    metric: metric.to_string(),
                    medians: rounds.iter().map(|v| median(v)).collect(),
                    rounds,
                });
            }
        }
    }
    drop(xlb);
    ipt.clear()?;
    Ok(ConnReport {
        states,
        rounds: o.rounds,
        seconds: o.seconds,
        rows,
        ipt_rules,
        ipt_sets,
        xlb_apply_s: xlb_apply.iter().map(|v| median(v)).collect(),
        ipt_apply_s: ipt_apply.iter().map(|v| median(v)).collect(),
        loadavg: load,
    })
}

/// Median of the per-round ratios a[i] / b[i].
fn paired(a: &[f64], b: &[f64]) -> f64 {
    let r: Vec<f64> = a.iter().zip(b).filter(|(_, d)| **d > 0.0).map(|(n, d)| n / d).collect();
    median(&r)
}

impl ConnReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "## NetworkPolicy and real connections: xlb vs iptables (kube-router shape), same run \
             ({} interleaved rounds, {} s per measurement, one client thread; medians)\n\n",
            self.rounds, self.seconds
        );
        s.push_str("| rig | path | metric |");
        for n in &self.states {
            s.push_str(&format!(" {n} policies |"));
        }
        for n in self.states.iter().skip(1) {
            s.push_str(&format!(" {n} / 0 (paired) |"));
        }
        s.push_str("\n|---|---|---|");
        s.push_str(&"---:|".repeat(self.states.len() * 2 - 1));
        s.push('\n');
        for r in &self.rows {
            s.push_str(&format!("| {} | {} | {} |", r.rig, r.path, r.metric));
            for v in &r.medians {
                s.push_str(&format!(" {v:.0} |"));
            }
            for i in 1..self.states.len() {
                s.push_str(&format!(
                    " {:.3} ({:.3}) |",
                    r.medians[i] / r.medians[0],
                    paired(&r.rounds[i], &r.rounds[0])
                ));
            }
            s.push('\n');
        }
        s.push_str(
            "\n| metric | path | policies | xlb / iptables (same state) |\n|---|---|---:|---:|\n",
        );
        for pair in self.rows.chunks(2) {
            if let [x, i] = pair {
                for (k, n) in self.states.iter().enumerate() {
                    s.push_str(&format!(
                        "| {} | {} | {n} | {:.3} |\n",
                        x.metric,
                        x.path,
                        paired(&x.rounds[k], &i.rounds[k])
                    ));
                }
            }
        }
        s.push_str(&format!(
            "\nTarget: connection rate with 1,000 policies ≥ 0.95 × without (xlb). iptables rules \
             on the server's node per state: {:?} (ipsets {:?}). Programming, median s: xlb \
             (manifest written → enforced, incl. the agents' 1 s file poll; the first state \
             also waits for the previous one's removal) {:?}; iptables (rules removed, ipset \
             restore + iptables-restore on both nodes, enforced) {:?}. Load average (1 min) at the \
             start and after each round: {}.\n",
            self.ipt_rules,
            self.ipt_sets,
            self.xlb_apply_s.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>(),
            self.ipt_apply_s.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>(),
            self.loadavg.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(", "),
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_and_their_iptables_shape() {
        let ps = bench_policies(1_000);
        assert_eq!(ps.len(), 1_000);
        let pods: Vec<PodRef> = ["pod1-1", "pod1-2", "pod2-1", "pod2-2"]
            .iter()
            .enumerate()
            .map(|(i, n)| PodRef {
                namespace: "default".into(),
                name: n.to_string(),
                labels: [("pod".to_string(), n.to_string())].into(),
                ip: Ipv4Addr::new(10, 244, 1 + i as u8 / 2, 11 + i as u8 % 2),
                local: n.starts_with("pod2"),
            })
            .collect();
        let r = kube_router(&pods, &[], &ps).unwrap();
        assert_eq!(r.isolated_pods, 1, "pod2-1 only");
        // One policy chain jump per policy in the server's firewall chain.
        assert_eq!(
            r.iptables.lines().filter(|l| l.contains("-d 10.244.2.11 -j KUBE-NWPLCY-")).count(),
            1_000
        );
        // Policy 0: pod1-1 and pod2-2 in its peer set, both ports.
        assert!(
            r.iptables.contains("--dport 8080 -j MARK")
                && r.iptables.contains("--dport 8081 -j MARK")
        );
    }
}
