//! `xlb-perf policy`: NetworkPolicy's cost (#11 benchmark) — per-packet
//! time of the pod tc programs (`xlb_pod_to`, `xlb_pod_from`) with 0, 1,
//! 100 and 10,000 policy rules installed, and policy programming latency
//! (`Datapath::apply_policy`, one rule changed per call, 10,000 pods).
//!
//! Setup: a private network namespace with two pod veths (A on hv0, B on
//! hv1), the datapath loaded into a private bpffs directory, endpoints and
//! policy written through `lb::datapath::Datapath` as the agent does. The
//! measured flow is A → B TCP 80, allowed by one rule of B's ingress; the
//! other rules (one xlb_policy entry each) are spread over 1,000 peer
//! identities, 50 ports and B plus 100 other endpoints, so the LPM trie
//! really holds them. Single-port rules sit in the hash xlb_policy_exact;
//! `--flow-range` makes every rule a two-port range so all sit in the LPM
//! trie xlb_policy (the layout before the hash: where new connections'
//! growth with the rule count came from). The address map holds 10,000 pod addresses in every
//! configuration; with 0 rules no endpoint is isolated (the pods-no-policy-
//! selects path). Each configuration has its own datapath instance
//! (programs and maps loaded once per configuration, no re-apply between
//! measurements), checked before timing: the flow's verdict, and
//! (isolated) a port no rule names (82) is dropped.
//!
//! Rows: `xlb_pod_to` (what the host stack delivers into B: B's ingress
//! check only, the frame not rewritten — checked, output == input — so
//! timed with BPF_PROG_TEST_RUN repeat=N) for an established flow (the same
//! frame: a policy conntrack hit after its first packet) and new connections
//! (a source port never seen before per call, repeat=1: conntrack miss,
//! identity lookup, the LPM lookup, conntrack insert); `xlb_pod_from`
//! (A's veth, local redirect to B: TTL and MACs rewritten, so always
//! repeat=1 per call) for both. Configurations are interleaved call by
//! call (order rotated; the repeat=N row once per round), medians over
//! rounds (repeat=1 rows: each round's 10 % trimmed mean of its calls
//! first); each configuration loaded `copies` times, taken in turn (JIT
//! placement moves a load's time). No trivial tc program exists in testkit/bpf: times
//! are gross, net of nothing (BPF_PROG_TEST_RUN's own per-run cost
//! included alike in every column).
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use anyhow::{bail, ensure, Context, Result};
use aya::programs::SchedClassifier;
use lb::{
    datapath::Datapath,
    loader::{Dataplane, LoadOptions},
    model::{Cidr, Desired, Endpoint, NodeConfig},
    policy::{AddrIdentity, Allow, EndpointPolicy, PolicyDesired, ID_POD_MIN},
};
use serde::Serialize;
use testkit::{
    netns::{in_private_netns, ip_batch},
    packet::{Frame, Mac},
    pins::PinDir,
};
use xlb_perf::stats::{median, quantile, trimmed_mean};

const NODE_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const HOST_A_MAC: Mac = [0x02, 0, 0, 0, 0xa0, 0x01];
const POD_A_MAC: Mac = [0x02, 0, 0, 0, 0xa0, 0x02];
const HOST_B_MAC: Mac = [0x02, 0, 0, 0, 0xb0, 0x01];
const POD_B_MAC: Mac = [0x02, 0, 0, 0, 0xb0, 0x02];
const POD_A_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const POD_B_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 12);
const ID_A: u32 = ID_POD_MIN + 1;
const ID_B: u32 = ID_POD_MIN + 2;
/// First identity of the spread rules and of the other pods.
const ID_SPREAD: u32 = ID_POD_MIN + 100;
const TCP: u8 = 6;
const PORT: u16 = 80;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
/// Policy numbers: the measured flow's rule, then the spread ones.
const POLICY_FLOW: u32 = 1;

#[derive(Clone, Debug)]
pub struct PolicyOpts {
    /// Rule counts measured (0 first: the ratio's baseline).
    pub rules: Vec<usize>,
    pub rounds: u32,
    /// BPF_PROG_TEST_RUN repeat of the established xlb_pod_to row.
    pub repeat: u32,
    /// repeat=1 calls per row, configuration and round.
    pub calls: u32,
    /// Pod addresses in the address map (and for the latency).
    pub pods: u32,
    /// Single-rule changes timed for the programming latency.
    pub changes: u32,
    /// Loads of each configuration's datapath, taken in turn.
    pub copies: u32,
    /// Every rule a two-port range (the flow's 80-81) instead of one port:
    /// all of them in the LPM trie (xlb_policy), none in the hash
    /// (xlb_policy_exact) — the layout before #11's benchmark fix, kept to
    /// show where the new-connection growth came from.
    pub flow_range: bool,
}

impl Default for PolicyOpts {
    fn default() -> Self {
        PolicyOpts {
            rules: vec![0, 1, 100, 10_000],
            rounds: 9,
            repeat: 20_000,
            calls: 500,
            pods: 10_000,
            changes: 500,
            copies: 2,
            flow_range: false,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// "xlb_pod_to" or "xlb_pod_from".
    pub program: String,
    /// "established" or "new connection".
    pub flow: String,
    /// "repeat=N" or "repeat=1".
    pub method: String,
    /// ns per packet, median, per rule count (same order as `rules`).
    pub ns: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub pods: u32,
    pub rules: usize,
    pub changes: u32,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Map writes + deletes of one change (median).
    pub writes_per_change: f64,
    /// The first apply of the whole state (0 → 10,000 pods and rules).
    pub initial_ms: f64,
    pub initial_writes: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct PolicyReport {
    pub rules: Vec<usize>,
    /// xlb_policy entries written per configuration.
    pub entries: Vec<usize>,
    pub rounds: u32,
    pub repeat: u32,
    pub calls: u32,
    pub copies: u32,
    pub rows: Vec<Row>,
    pub latency: Latency,
    pub flow_range: bool,
}

impl PolicyReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "## NetworkPolicy per-packet cost (ns/packet, medians of {} interleaved rounds, \
             {} loads per configuration; gross, net of nothing: no trivial tc program in \
             testkit/bpf)\n\n",
            self.rounds, self.copies
        );
        s.push_str(if self.flow_range {
            "Every rule a two-port range (the flow's 80-81): all in the LPM trie \
             (xlb_policy), the layout before the single-port hash.\n\n"
        } else {
            "Every rule a single port: in the hash xlb_policy_exact (one lookup \
             whatever the count).\n\n"
        });
        s.push_str("| program | flow | method |");
        for r in &self.rules {
            s.push_str(&format!(" {r} rule{} |", if *r == 1 { "" } else { "s" }));
        }
        for r in self.rules.iter().skip(1) {
            s.push_str(&format!(" {r} / 0 |"));
        }
        let last = self.rules.len().saturating_sub(1);
        if self.rules.len() > 2 {
            s.push_str(&format!(" {} / {} |", self.rules[last], self.rules[1]));
        }
        s.push_str("\n|---|---|---|");
        let cols = self.rules.len() * 2 - 1 + usize::from(self.rules.len() > 2);
        s.push_str(&"---:|".repeat(cols));
        s.push('\n');
        for row in &self.rows {
            s.push_str(&format!("| {} | {} | {} |", row.program, row.flow, row.method));
            for v in &row.ns {
                s.push_str(&format!(" {v:.1} |"));
            }
            for v in row.ns.iter().skip(1) {
                s.push_str(&format!(" {:.3} |", v / row.ns[0]));
            }
            if self.rules.len() > 2 {
                s.push_str(&format!(" {:.3} |", row.ns[last] / row.ns[1]));
            }
            s.push('\n');
        }
        s.push_str(&format!(
            "\nxlb_policy entries per configuration: {}. 0 rules: no endpoint isolated \
             (one hash lookup); the address map holds {} pods throughout. Target: flat \
             within 5 % as rules grow ({} / {} column).\n",
            self.entries.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", "),
            self.latency.pods,
            self.rules[last],
            self.rules.get(1).copied().unwrap_or(0),
        ));
        if self.rules.len() > 2 {
            for row in &self.rows {
                let worst = row.ns[2..].iter().map(|v| v / row.ns[1]).fold(0.0, f64::max);
                s.push_str(&format!(
                    "- {} {}: worst of the larger rule counts at {:.3}× the 1-rule time: {}\n",
                    row.program,
                    row.flow,
                    worst,
                    if worst <= 1.05 { "flat (met)" } else { "not flat (NOT met)" },
                ));
            }
        }
        let l = &self.latency;
        s.push_str(&format!(
            "\n## Policy programming latency (Datapath::apply_policy, call to return)\n\n\
             | pods | rules | changes | p50 ms | p99 ms | max ms | writes/change | first apply ms (writes) |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|\n\
             | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.0} | {:.1} ({}) |\n\n\
             One rule's port changed per call, the whole desired state passed (as the \
             agent does: diff, then write); target p99 ≤ 100 ms (object → datapath; the \
             control plane's compile step is not in this number).\n",
            l.pods,
            l.rules,
            l.changes,
            l.p50_ms,
            l.p99_ms,
            l.max_ms,
            l.writes_per_change,
            l.initial_ms,
            l.initial_writes,
        ));
        s
    }
}

fn mac_str(m: Mac) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn ip(a: impl Into<IpAddr>) -> IpAddr {
    a.into()
}

/// The i-th other pod's address (10.200.0.0/16 and up).
fn pod_addr(i: u32) -> IpAddr {
    ip(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i))
}

/// The policy state with `rules` rules (0: nothing isolated) over `pods`
/// pod addresses; `shift` moves one spread rule's port (latency changes).
fn desired(
    rules: usize,
    pods: u32,
    hv_b: u32,
    shift: Option<(usize, u16)>,
    flow_range: bool,
) -> PolicyDesired {
    let mut addrs: BTreeMap<Cidr, AddrIdentity> = BTreeMap::new();
    for (a, id) in [(POD_A_V4, ID_A), (POD_B_V4, ID_B)] {
        addrs
            .insert(Cidr { addr: ip(a), len: 32 }, AddrIdentity { identity: id, cidr_identity: 0 });
    }
    for i in 0..pods {
        addrs.insert(
            Cidr { addr: pod_addr(i), len: 32 },
            AddrIdentity { identity: ID_SPREAD + i % 1000, cidr_identity: 0 },
        );
    }
    let mut endpoints: BTreeMap<u32, EndpointPolicy> = BTreeMap::new();
    let mut policies = BTreeMap::new();
    if rules > 0 {
        policies.insert(POLICY_FLOW, "bench/flow".to_string());
        policies.insert(2, "bench/spread".to_string());
        let b = endpoints.entry(hv_b).or_default();
        b.ingress.get_or_insert_with(BTreeMap::new).insert(
            Allow {
                peer: ID_A,
                proto: Some(TCP),
                ports: Some((PORT, PORT + u16::from(flow_range))),
            },
            POLICY_FLOW,
        );
        for i in 1..rules {
            let mut port = 1000 + (i % 50) as u16 * 7;
            if let Some((j, by)) = shift {
                if j == i {
                    port += by;
                }
            }
            let peer = ID_SPREAD + ((i / 50) % 1000) as u32;
            // Every other rule on B, the rest over 100 other endpoints
            // (ifindexes no device has: only the maps hold them).
            let ep = if i % 2 == 0 { hv_b } else { 100_000 + ((i / 2) % 100) as u32 };
            // Ranges: a two-port prefix (one trie entry) each.
            let ports = if flow_range { (port & !1, (port & !1) + 1) } else { (port, port) };
            let allow = Allow { peer, proto: Some(TCP), ports: Some(ports) };
            // (peer, port, ep) repeats past 50 * 1000 * 2 rules: keep distinct.
            let allow =
                if i >= 100_000 { Allow { proto: None, ports: None, ..allow } } else { allow };
            endpoints
                .entry(ep)
                .or_default()
                .ingress
                .get_or_insert_with(BTreeMap::new)
                .insert(allow, 2);
        }
    }
    PolicyDesired { addrs, endpoints, policies }
}

/// One BPF_PROG_TEST_RUN of a tc program: verdict, ns per run, output frame.
fn tc_time(
    prog: &SchedClassifier,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
) -> Result<(u32, f64, Vec<u8>)> {
    let (ret, took, out) = testkit::bench::tc_test_run(prog, frame, ifindex, repeat)
        .with_context(|| format!("BPF_PROG_TEST_RUN (repeat {repeat})"))?;
    Ok((ret, took.as_nanos() as f64, out))
}

/// A → B TCP SYN from `sport`, as A sends it (into hv0) or as the host
/// stack delivers it to B (out of hv1).
fn frame(to_b_by_stack: bool, sport: u16) -> Vec<u8> {
    let f = if to_b_by_stack {
        Frame::eth(HOST_B_MAC, POD_B_MAC)
    } else {
        Frame::eth(POD_A_MAC, HOST_A_MAC)
    };
    f.ipv4(POD_A_V4, POD_B_V4).tcp(sport, PORT).seq(1).syn().build()
}

fn frame_port(to_b_by_stack: bool, sport: u16, dport: u16) -> Vec<u8> {
    let f = if to_b_by_stack {
        Frame::eth(HOST_B_MAC, POD_B_MAC)
    } else {
        Frame::eth(POD_A_MAC, HOST_A_MAC)
    };
    f.ipv4(POD_A_V4, POD_B_V4).tcp(sport, dport).seq(1).syn().build()
}

/// One datapath instance holding one configuration.
struct Rig {
    dp: Dataplane,
    path: Datapath,
    _pins: PinDir,
}

impl Rig {
    fn new(name: &str, hv0: u32, hv1: u32, d: &PolicyDesired) -> Result<Rig> {
        let pins = PinDir::new(name);
        let mut opts = LoadOptions::small(pins.path());
        opts.sizes.policy = 65_536;
        opts.sizes.policy_ct = 262_144;
        let dp = Dataplane::load(&opts).context("loading the datapath")?;
        let mut path = Datapath::open(pins.path()).context("opening the datapath")?;
        let node = NodeConfig { tunnel_v4: Some(NODE_V4), tunnel_v6: None };
        path.apply(&Desired { node, ..Desired::default() })?;
        path.apply_endpoints(&[
            Endpoint {
                name: "bench/a".into(),
                addrs: vec![ip(POD_A_V4)],
                ifindex: hv0,
                mac: POD_A_MAC,
                host_mac: HOST_A_MAC,
                identity: ID_A,
            },
            Endpoint {
                name: "bench/b".into(),
                addrs: vec![ip(POD_B_V4)],
                ifindex: hv1,
                mac: POD_B_MAC,
                host_mac: HOST_B_MAC,
                identity: ID_B,
            },
        ])?;
        path.apply_policy(d).context("applying the policy")?;
        Ok(Rig { dp, path, _pins: pins })
    }

    /// The flow's verdicts, the frame unchanged by xlb_pod_to, and (isolated)
    /// a port no rule names dropped.
    fn check(&mut self, n: usize, hv0: u32, hv1: u32) -> Result<()> {
        let f = frame(true, 1024);
        let (v, _, out) = tc_time(self.dp.pod_to_program(), &f, hv1, 1)?;
        ensure!(v == TC_ACT_OK, "{n} rules: xlb_pod_to verdict {v}, want TC_ACT_OK");
        ensure!(out == f, "{n} rules: xlb_pod_to rewrote the frame (repeat=N invalid)");
        let (v, _, _) = tc_time(self.dp.pod_from_program(), &frame(false, 1025), hv0, 1)?;
        ensure!(v == TC_ACT_REDIRECT, "{n} rules: xlb_pod_from verdict {v}, want redirect");
        if n > 0 {
            let (v, _, _) = tc_time(self.dp.pod_to_program(), &frame_port(true, 1026, 82), hv1, 1)?;
            ensure!(v == TC_ACT_SHOT, "{n} rules: port 82 not dropped by xlb_pod_to ({v})");
            let (v, _, _) =
                tc_time(self.dp.pod_from_program(), &frame_port(false, 1027, 82), hv0, 1)?;
            ensure!(v == TC_ACT_SHOT, "{n} rules: port 82 not dropped by xlb_pod_from ({v})");
        }
        Ok(())
    }
}

pub fn run(o: &PolicyOpts) -> Result<PolicyReport> {
    testkit::require_root("xlb-perf policy");
    ensure!(o.rules.first() == Some(&0), "--rules must start with 0 (the ratios' baseline)");
    // Source ports of new connections: never reused in one run.
    // (from port 2000; each call takes two).
    let needed = u64::from(o.calls) * u64::from(o.rounds) * 2;
    ensure!(needed <= 63_000, "--calls × --rounds × 2 = {needed} source ports; at most 63000");
    in_private_netns(|| run_inside(o)).context("the benchmark's network namespace")?
}

fn run_inside(o: &PolicyOpts) -> Result<PolicyReport> {
    ip_batch(&[
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
        "link set hv0 up".into(),
        "link set hv1 up".into(),
    ])
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let idx = |n: &str| testkit::netns::ifindex(n).with_context(|| format!("no interface {n}"));
    let (hv0, hv1) = (idx("hv0")?, idx("hv1")?);
    // One datapath per configuration (own programs and maps), so the
    // configurations can be interleaved call by call without re-applying.
    // `copies` loads of each (JIT placement moves a load's time).
    let mut rigs: Vec<Vec<Rig>> = Vec::new();
    let mut entries = Vec::new();
    for &n in &o.rules {
        let d = desired(n, o.pods, hv1, None, o.flow_range);
        // Every rule is one port (or no port): one xlb_policy entry each.
        entries
            .push(d.endpoints.values().filter_map(|e| e.ingress.as_ref()).map(|m| m.len()).sum());
        let mut copies = Vec::new();
        for copy in 0..o.copies.max(1) {
            let mut rig = Rig::new(&format!("polbench{n}-{copy}"), hv0, hv1, &d)
                .with_context(|| format!("the datapath with {n} rules"))?;
            rig.check(n, hv0, hv1)?;
            copies.push(rig);
        }
        rigs.push(copies);
    }
    let copies = rigs[0].len();
    eprintln!("policy: configurations checked; xlb_policy entries {entries:?}");

    // The established flows: one tuple each program, in every rig's conntrack.
    let est_to = frame(true, 999);
    let est_from = frame(false, 998);
    for r in rigs.iter_mut().flatten() {
        tc_time(r.dp.pod_to_program(), &est_to, hv1, 1)?;
        tc_time(r.dp.pod_from_program(), &est_from, hv0, 1)?;
    }
    const ROWS: usize = 4;
    let k = o.rules.len();
    let mut samples = vec![vec![Vec::<f64>::new(); k]; ROWS];
    let mut next_sport: u16 = 2000;
    for round in 0..o.rounds as usize {
        for j in 0..k {
            // Every load of the configuration, averaged.
            let mut sum = 0.0;
            for copy in 0..copies {
                let r = &mut rigs[(j + round) % k][(copy + round) % copies];
                let (v, ns, _) = tc_time(r.dp.pod_to_program(), &est_to, hv1, o.repeat)?;
                ensure!(v == TC_ACT_OK, "xlb_pod_to established: verdict {v}");
                sum += ns;
            }
            samples[0][(j + round) % k].push(sum / copies as f64);
        }
        let mut calls = vec![[Vec::new(), Vec::new(), Vec::new()]; k];
        for i in 0..o.calls as usize {
            let to_new = frame(true, next_sport);
            let from_new = frame(false, next_sport + 1);
            for j in 0..k {
                let c = (j + i + round) % k;
                let r = &mut rigs[c][i % copies];
                let (v, ns, _) = tc_time(r.dp.pod_to_program(), &to_new, hv1, 1)?;
                ensure!(v == TC_ACT_OK, "xlb_pod_to new: verdict {v}");
                calls[c][0].push(ns);
                let (v, ns, _) = tc_time(r.dp.pod_from_program(), &from_new, hv0, 1)?;
                ensure!(v == TC_ACT_REDIRECT, "xlb_pod_from new: verdict {v}");
                calls[c][1].push(ns);
                let (v, ns, _) = tc_time(r.dp.pod_from_program(), &est_from, hv0, 1)?;
                ensure!(v == TC_ACT_REDIRECT, "xlb_pod_from established: verdict {v}");
                calls[c][2].push(ns);
            }
            next_sport += 2;
        }
        for (c, cs) in calls.iter().enumerate() {
            samples[1][c].push(trimmed_mean(&cs[0], 0.1));
            samples[2][c].push(trimmed_mean(&cs[2], 0.1));
            samples[3][c].push(trimmed_mean(&cs[1], 0.1));
        }
    }
    let med = |r: usize| samples[r].iter().map(|v| median(v)).collect::<Vec<_>>();
    let rows = vec![
        Row {
            program: "xlb_pod_to".into(),
            flow: "established".into(),
            method: format!("repeat={}", o.repeat),
            ns: med(0),
        },
        Row {
            program: "xlb_pod_to".into(),
            flow: "new connection".into(),
            method: "repeat=1".into(),
            ns: med(1),
        },
        Row {
            program: "xlb_pod_from".into(),
            flow: "established".into(),
            method: "repeat=1".into(),
            ns: med(2),
        },
        Row {
            program: "xlb_pod_from".into(),
            flow: "new connection".into(),
            method: "repeat=1".into(),
            ns: med(3),
        },
    ];

    let last = rigs.last_mut().and_then(|c| c.last_mut()).context("no configuration")?;
    let latency = latency(&mut last.path, o, hv1)?;
    drop(rigs);
    Ok(PolicyReport {
        rules: o.rules.clone(),
        entries,
        rounds: o.rounds,
        repeat: o.repeat,
        calls: o.calls,
        copies: o.copies,
        rows,
        latency,
        flow_range: o.flow_range,
    })
}

/// Single-rule changes against the largest configuration at `pods` pods.
fn latency(path: &mut Datapath, o: &PolicyOpts, hv_b: u32) -> Result<Latency> {
    let rules = *o.rules.iter().max().unwrap_or(&0);
    if rules < 2 {
        bail!("the programming latency needs a rule count of at least 2");
    }
    path.apply_policy(&PolicyDesired::default())?;
    let base = desired(rules, o.pods, hv_b, None, o.flow_range);
    let t0 = Instant::now();
    let st = path.apply_policy(&base)?;
    let initial_ms = t0.elapsed().as_secs_f64() * 1e3;
    let initial_writes = st.policy_writes + st.deletes;
    let mut ms = Vec::new();
    let mut writes = Vec::new();
    for c in 0..o.changes as usize {
        // Rule j's port moves by one (2 writes: the new entry, the old one
        // deleted), alternately there and back.
        let j = 1 + (c * 7919) % (rules - 1);
        let d = desired(rules, o.pods, hv_b, (c % 2 == 0).then_some((j, 1)), o.flow_range);
        let t = Instant::now();
        let st = path.apply_policy(&d)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        writes.push((st.policy_writes + st.deletes) as f64);
    }
    Ok(Latency {
        pods: o.pods,
        rules,
        changes: o.changes,
        p50_ms: quantile(&ms, 0.5),
        p99_ms: quantile(&ms, 0.99),
        max_ms: ms.iter().copied().fold(0.0, f64::max),
        writes_per_change: median(&writes),
        initial_ms,
        initial_writes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_counts_are_exact_and_spread() {
        for n in [0usize, 1, 100, 10_000] {
            let d = desired(n, 10, 7, None, false);
            let allows: usize =
                d.endpoints.values().filter_map(|e| e.ingress.as_ref()).map(|m| m.len()).sum();
            assert_eq!(allows, n, "{n} rules");
            assert_eq!(d.addrs.len(), 12);
        }
        let d = desired(10_000, 0, 7, None, false);
        assert_eq!(d.endpoints.len(), 101, "B and 100 other endpoints");
        let peers: std::collections::BTreeSet<u32> =
            d.endpoints.values().flat_map(lb::policy::peers).collect();
        assert!(peers.len() > 200, "{} peers", peers.len());
        // A change moves one rule: the same count, one allow different.
        let moved = desired(10_000, 0, 7, Some((5, 1)), false);
        assert_ne!(moved, d);
        let count = |d: &PolicyDesired| -> usize {
            d.endpoints.values().filter_map(|e| e.ingress.as_ref()).map(|m| m.len()).sum()
        };
        assert_eq!(count(&moved), 10_000);
    }
}
