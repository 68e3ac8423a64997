//! `xlb-perf micro`: ns/packet of xlb_xdp on the five reference frames
//! (shared/bench/packets) and on a new flow every packet, as net cost over
//! the trivial XDP_PASS program timed the same way in the same run.
//!
//! Method (shared/bench/packets/README.md): BPF_PROG_TEST_RUN with repeat=N
//! of the xlb_bench wrapper, which restores the original frame each
//! iteration and tail-calls the program under test; the baseline is the same
//! wrapper tail-calling xlb_pass. Interleaved rounds (pass/xlb order
//! alternating), medians; net = median of the per-round differences. Cross
//! check: repeat=1 per syscall directly on each program, trimmed means.
//! The method is validated before timing: N wrapper iterations must show up
//! as exactly N counts of the reason a single run of the frame produces,
//! with the same verdict and the same output frame.
//!
//! Runs in a private network namespace with the LB's fabric port and
//! permanent neighbours for the backend nodes (bpf_fib_lookup needs them);
//! frames arrive on that port (ctx_in.ingress_ifindex).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::{Map, MapData, PerCpuArray},
    programs::Xdp,
};
use lb::{
    abi::{Counter, SvcStats},
    datapath::Datapath,
    loader::{Dataplane, LoadOptions, MapSizes},
};
use serde::Serialize;
use testkit::{
    netns::{ifindex, in_private_netns},
    packet,
    pins::PinDir,
};
use xlb_perf::stats::{loadavg, median, trimmed_mean};

use crate::{
    benchprog::{load_pass, test_run, xdp_of, Bench, Stat, Template},
    setup,
};

/// The reference frames and their targets (net ns).
pub const FRAMES: [(&str, f64); 5] = [
    ("tcp_syn_vip.bin", 80.0),
    ("tcp_ack_vip.bin", 84.0),
    ("udp_vip.bin", 108.0),
    ("tcp_nonvip.bin", 38.0),
    ("tcp6_syn_vip.bin", 106.0),
];
pub const NEW_FLOW: &str = "new flow (SYN, insert)";
/// A non-service SYN to a new destination (address and port) each iteration.
pub const NEW_DEST: &str = "random non-service destination";
pub const NEW_FLOW_TARGET: f64 = 400.0;

#[derive(Clone, Debug)]
pub struct MicroOpts {
    pub packets: PathBuf,
    pub rounds: u32,
    /// Iterations per wrapper run.
    pub repeat: u32,
    /// repeat=1 syscalls per program per frame per round.
    pub singles: u32,
    /// Iterations of the validation run.
    pub validate: u32,
}

impl Default for MicroOpts {
    fn default() -> Self {
        MicroOpts {
            packets: default_packets_dir(),
            rounds: 15,
            repeat: 50_000,
            singles: 200,
            validate: 10_000,
        }
    }
}

/// ../shared/bench/packets beside the repository (as CI clones it).
pub fn default_packets_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench/packets")
}

#[derive(Clone, Debug, Serialize)]
pub struct MicroRow {
    pub frame: String,
    pub verdict: String,
    pub reason: String,
    pub baseline_ns: f64,
    pub xlb_ns: f64,
    pub net_ns: f64,
    /// repeat=1 per syscall, trimmed means: xlb - pass.
    pub net_repeat1_ns: f64,
    pub target_ns: f64,
    pub met: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Validation {
    pub frame: String,
    pub iterations: u64,
    pub reason: String,
    pub reason_delta: u64,
    pub all_counters_delta: u64,
    pub restore_failures: u64,
    pub tail_call_failures: u64,
    pub new_flows_delta: Option<u64>,
    pub same_verdict: bool,
    pub same_output: Option<bool>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MicroReport {
    pub rounds: u32,
    pub repeat: u32,
    pub singles: u32,
    pub frames_match_lb_packet: bool,
    /// 1-minute load average before and after the timing rounds: the
    /// program's ns grow with other work on the shared cores (up to ~2× at
    /// load 6 here), so a figure is only read beside it.
    pub loadavg: Vec<f64>,
    pub rows: Vec<MicroRow>,
    pub validation: Vec<Validation>,
}

/// An XDP verdict's name.
pub(crate) fn verdict_name(v: u32) -> &'static str {
    match v {
        0 => "ABORTED",
        1 => "DROP",
        2 => "PASS",
        3 => "TX",
        4 => "REDIRECT",
        _ => "?",
    }
}

/// Reads the five reference frames.
pub fn read_frames(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    FRAMES
        .iter()
        .map(|(name, _)| {
            let p = dir.join(name);
            let bytes = std::fs::read(&p).with_context(|| {
                format!("reading benchmark frame {} (pass --packets DIR)", p.display())
            })?;
            Ok((name.to_string(), bytes))
        })
        .collect()
}

struct Rig {
    dp: Dataplane,
    pin: PathBuf,
    bench: Bench,
    pass: aya::Ebpf,
    ifindex: u32,
}

impl Rig {
    fn xlb(&mut self) -> &Xdp {
        self.dp.xdp_program()
    }

    fn counters(&self) -> Result<BTreeMap<Counter, u64>> {
        Ok(lb::loader::read_counters(&self.pin)?.into_iter().map(|(c, v)| (c, v.packets)).collect())
    }

    fn new_flows(&self) -> Result<u64> {
        let data = MapData::from_pin(self.pin.join("xlb_svc_stats"))?;
        let arr: PerCpuArray<MapData, SvcStats> = Map::from_map_data(data)?.try_into()?;
        let mut sum = 0;
        for id in 0..64u32 {
            if let Ok(v) = arr.get(&id, 0) {
                sum += v.iter().map(|s| s.new_flows).sum::<u64>();
            }
        }
        Ok(sum)
    }

    fn target(&mut self, xlb: bool) -> Result<()> {
        let fd = if xlb {
            self.dp.xdp_program().fd()?.try_clone()?
        } else {
            xdp_of(&self.pass, "xlb_pass")?.fd()?.try_clone()?
        };
        self.bench.set_target(&fd)
    }

    /// One wrapper run: ns per iteration as the kernel timed it.
    fn wrapped(&self, frame: &[u8], repeat: u32) -> Result<f64> {
        let r = test_run(self.bench.wrapper(), frame, self.ifindex, repeat, None)?;
        Ok(r.duration.as_nanos() as f64)
    }
}

fn delta(a: &BTreeMap<Counter, u64>, b: &BTreeMap<Counter, u64>) -> BTreeMap<Counter, u64> {
    b.iter()
        .map(|(c, v)| (*c, v - a.get(c).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// A frame with the source port and the low 16 bits of the source address
/// set from `seq` (checksums fixed), as the wrapper does per iteration.
fn with_source(frame: &[u8], seq: u32) -> Vec<u8> {
    let mut f = frame.to_vec();
    let ihl = (f[14] & 0xf) as usize * 4;
    let l4 = 14 + ihl;
    let port = (seq as u16).to_be_bytes();
    let addr = ((seq >> 16) as u16).to_be_bytes();
    f[l4..l4 + 2].copy_from_slice(&port);
    f[28..30].copy_from_slice(&addr);
    // Recompute both checksums from scratch.
    f[24..26].copy_from_slice(&[0, 0]);
    let ipsum = packet::checksum(&f[14..14 + ihl]);
    f[24..26].copy_from_slice(&ipsum.to_be_bytes());
    f[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
    let src = std::net::IpAddr::from([f[26], f[27], f[28], f[29]]);
    let dst = std::net::IpAddr::from([f[30], f[31], f[32], f[33]]);
    let sum = packet::l4_checksum(src, dst, 6, &f[l4..]);
    f[l4 + 16..l4 + 18].copy_from_slice(&sum.to_be_bytes());
    f
}

pub fn run(opts: &MicroOpts) -> Result<MicroReport> {
    let frames = read_frames(&opts.packets)?;
    let built: BTreeMap<_, _> =
        packet::bench::frames().into_iter().map(|(n, f)| (n.to_string(), f.build())).collect();
    let frames_match = frames.iter().all(|(n, b)| built.get(n) == Some(b));
    let opts = opts.clone();
    in_private_netns(move || run_inside(&opts, frames, frames_match))?
}

fn run_inside(
    opts: &MicroOpts,
    frames: Vec<(String, Vec<u8>)>,
    frames_match: bool,
) -> Result<MicroReport> {
    setup::lb_port("xb0", "xb1")?;
    let ifindex = ifindex("xb0").context("xb0 has no ifindex")?;
    let pin = PinDir::new("micro");
    let dp = Dataplane::load(&LoadOptions {
        pin_dir: pin.path().to_path_buf(),
        sizes: MapSizes::default(),
        // The new-flow rows time the insert into a full table: no budget.
        ct_insert_rate: 0,
        ..LoadOptions::default()
    })
    .context("loading the datapath")?;
    let mut applier = Datapath::open(pin.path()).context("opening the datapath maps")?;
    applier.apply(&setup::bench_desired()).context("programming the benchmark services")?;
    let mut rig = Rig {
        dp,
        pin: pin.path().to_path_buf(),
        bench: Bench::load()?,
        pass: load_pass()?,
        ifindex,
    };

    // Reference behaviour: each frame once directly (the second run: the
    // first of a flow inserts its connection-table entry).
    let mut reference = Vec::new();
    for (name, frame) in &frames {
        let mut out = vec![0u8; 512];
        test_run(rig.xlb(), frame, ifindex, 1, Some(&mut out))?;
        let before = rig.counters()?;
        let r = test_run(rig.xlb(), frame, ifindex, 1, Some(&mut out))?;
        let d = delta(&before, &rig.counters()?);
        ensure!(
            d.len() == 1 && d.values().sum::<u64>() == 1,
            "{name}: one run counted {d:?}, want exactly one reason once"
        );
        let reason = *d.keys().next().unwrap();
        if std::env::var_os("XLB_PERF_DEBUG").is_some() {
            eprintln!("{name}: verdict {} reason {}", verdict_name(r.return_value), reason.name());
        }
        out.truncate(r.data_size_out as usize);
        reference.push((name.clone(), frame.clone(), r.return_value, reason, out));
    }

    // Validate the wrapper: N iterations -> N counts of that reason.
    let n = opts.validate;
    let mut validation = Vec::new();
    rig.target(true)?;
    for (name, frame, verdict, reason, out) in &reference {
        rig.bench.set_templates(&[Template::fixed(frame)])?;
        let it0 = rig.bench.stat(Stat::Iterations)?;
        let rf0 = rig.bench.stat(Stat::RestoreFail)?;
        let tf0 = rig.bench.stat(Stat::TailCallFail)?;
        let before = rig.counters()?;
        let mut got = vec![0u8; 512];
        let r = test_run(rig.bench.wrapper(), frame, ifindex, n, Some(&mut got))?;
        got.truncate(r.data_size_out as usize);
        let d = delta(&before, &rig.counters()?);
        validation.push(Validation {
            frame: name.clone(),
            iterations: rig.bench.stat(Stat::Iterations)? - it0,
            reason: reason.name().into(),
            reason_delta: d.get(reason).copied().unwrap_or(0),
            all_counters_delta: d.values().sum(),
            restore_failures: rig.bench.stat(Stat::RestoreFail)? - rf0,
            tail_call_failures: rig.bench.stat(Stat::TailCallFail)? - tf0,
            new_flows_delta: None,
            same_verdict: r.return_value == *verdict,
            same_output: Some(got == *out),
        });
    }
    // The new-flow variant: N iterations -> N new flows inserted.
    let syn = &reference[0];
    {
        rig.bench.set_templates(&[Template::new_flow(&syn.1)])?;
        let it0 = rig.bench.stat(Stat::Iterations)?;
        let rf0 = rig.bench.stat(Stat::RestoreFail)?;
        let tf0 = rig.bench.stat(Stat::TailCallFail)?;
        let nf0 = rig.new_flows()?;
        let before = rig.counters()?;
        let r = test_run(rig.bench.wrapper(), &syn.1, ifindex, n, None)?;
        let d = delta(&before, &rig.counters()?);
        validation.push(Validation {
            frame: NEW_FLOW.into(),
            iterations: rig.bench.stat(Stat::Iterations)? - it0,
            reason: syn.3.name().into(),
            reason_delta: d.get(&syn.3).copied().unwrap_or(0),
            all_counters_delta: d.values().sum(),
            restore_failures: rig.bench.stat(Stat::RestoreFail)? - rf0,
            tail_call_failures: rig.bench.stat(Stat::TailCallFail)? - tf0,
            new_flows_delta: Some(rig.new_flows()? - nf0),
            same_verdict: r.return_value == syn.2,
            same_output: None,
        });
    }
    for v in &validation {
        let ok = v.iterations == n as u64
            && v.reason_delta == n as u64
            && v.all_counters_delta == n as u64
            && v.restore_failures == 0
            && v.tail_call_failures == 0
            && v.same_verdict
            && v.same_output != Some(false)
            && v.new_flows_delta.is_none_or(|x| x == n as u64);
        if !ok {
            bail!("wrapper validation failed, timings would be meaningless: {v:?}");
        }
    }

    // Timing: interleaved rounds.
    let mut cases: Vec<(String, Template, f64)> = reference
        .iter()
        .zip(FRAMES)
        .map(|((name, frame, ..), (_, target))| (name.clone(), Template::fixed(frame), target))
        .collect();
    cases.push((NEW_FLOW.into(), Template::new_flow(&syn.1), NEW_FLOW_TARGET));
    let k = cases.len();
    let mut load = vec![loadavg()];
    let mut base = vec![Vec::new(); k];
    let mut xlb = vec![Vec::new(); k];
    let mut single_base = vec![Vec::new(); k];
    let mut single_xlb = vec![Vec::new(); k];
    let mut seq: u32 = 0x10000;
    for round in 0..opts.rounds {
        for (i, (_, tpl, _)) in cases.iter().enumerate() {
            rig.bench.set_templates(std::slice::from_ref(tpl))?;
            let order =
                if (round + i as u32).is_multiple_of(2) { [false, true] } else { [true, false] };
            for is_xlb in order {
                rig.target(is_xlb)?;
                let ns = rig.wrapped(&tpl.bytes, opts.repeat)?;
                if is_xlb { &mut xlb[i] } else { &mut base[i] }.push(ns);
            }
            // repeat=1 cross-check, alternating programs call by call.
            for s in 0..opts.singles {
                let frame = if tpl.new_flow {
                    seq = seq.wrapping_add(1);
                    with_source(&tpl.bytes, seq)
                } else {
                    tpl.bytes.clone()
                };
                for is_xlb in if s.is_multiple_of(2) { [false, true] } else { [true, false] } {
                    let prog =
                        if is_xlb { rig.dp.xdp_program() } else { xdp_of(&rig.pass, "xlb_pass")? };
                    let r = test_run(prog, &frame, ifindex, 1, None)?;
                    let ns = r.duration.as_nanos() as f64;
                    if is_xlb { &mut single_xlb[i] } else { &mut single_base[i] }.push(ns);
                }
            }
        }
    }

    load.push(loadavg());
    let mut rows = Vec::new();
    for (i, (name, _, target)) in cases.iter().enumerate() {
        let diffs: Vec<f64> = xlb[i].iter().zip(&base[i]).map(|(x, b)| x - b).collect();
        let net = median(&diffs);
        let (verdict, reason) = match reference.get(i) {
            Some(r) => (verdict_name(r.2), r.3.name()),
            None => (verdict_name(syn.2), syn.3.name()),
        };
        rows.push(MicroRow {
            frame: name.clone(),
            verdict: verdict.into(),
            reason: reason.into(),
            baseline_ns: median(&base[i]),
            xlb_ns: median(&xlb[i]),
            net_ns: net,
            net_repeat1_ns: trimmed_mean(&single_xlb[i], 0.1) - trimmed_mean(&single_base[i], 0.1),
            target_ns: *target,
            met: net <= *target,
        });
    }
    drop(rig);
    drop(pin);
    Ok(MicroReport {
        rounds: opts.rounds,
        repeat: opts.repeat,
        singles: opts.singles,
        frames_match_lb_packet: frames_match,
        loadavg: load,
        rows,
        validation,
    })
}

impl MicroReport {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "Datapath microbenchmark: xlb_xdp net ns/packet over xlb_pass, same wrapper, \
             {} interleaved rounds x {} iterations, medians (repeat=1 column: {} syscalls/round, \
             10 % trimmed means); load average {}\n\n",
            self.rounds,
            self.repeat,
            self.singles,
            self.loadavg.iter().map(|l| format!("{l:.2}")).collect::<Vec<_>>().join(" → ")
        ));
        s.push_str("| frame | verdict (reason) | baseline ns | xlb ns | net ns | net ns, repeat=1 | target | met? |\n");
        s.push_str("|---|---|---:|---:|---:|---:|---:|---|\n");
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {} ({}) | {:.0} | {:.0} | {:.0} | {:.0} | ≤{:.0} | {} |\n",
                r.frame,
                r.verdict,
                r.reason,
                r.baseline_ns,
                r.xlb_ns,
                r.net_ns,
                r.net_repeat1_ns,
                r.target_ns,
                if r.met { "yes" } else { "NO" }
            ));
        }
        s.push_str("\nWrapper validation (each iteration sees the original frame):\n\n");
        s.push_str("| frame | iterations | reason | reason Δ | all counters Δ | new flows Δ | restore/tail-call failures | same verdict | same output |\n");
        s.push_str("|---|---:|---|---:|---:|---:|---|---|---|\n");
        for v in &self.validation {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {}/{} | {} | {} |\n",
                v.frame,
                v.iterations,
                v.reason,
                v.reason_delta,
                v.all_counters_delta,
                v.new_flows_delta.map_or("-".into(), |x| x.to_string()),
                v.restore_failures,
                v.tail_call_failures,
                v.same_verdict,
                v.same_output.map_or("-".into(), |x| x.to_string()),
            ));
        }
        if !self.frames_match_lb_packet {
            s.push_str("\nNote: the frame files differ from packet::bench::frames().\n");
        }
        s
    }
}
