//! `xlb-perf scale`: how the per-packet cost of xlb_xdp moves with the
//! number of backends per service (1, 10, 100, 1000: established flow and
//! new flow) and with the fill of the connection table (10 %, 50 %, 100 %
//! of its capacity: established-flow lookup over many distinct flows, and
//! new-flow insert, which evicts once the set-associative table's sets are
//! full: lb/bpf/conntrack.h).
//!
//! Timing as in `micro` (perf/src/micro.rs): the xlb_bench wrapper restores
//! the frame each iteration and tail-calls xlb_xdp or xlb_pass; net =
//! median over interleaved rounds of (xlb − pass). The connection table is
//! filled by the wrapper itself (a new source per iteration from its
//! per-CPU sequence number, the thread pinned to one CPU); for the
//! established lookups the sequence is wound back so the timed iterations
//! replay flows that are in the table (ACK frames, the newest ones), and
//! the service's new-flow counter proves it (`ct misses` = new flows
//! created while timing lookups).
//!
//! New flows at each fill: a SYN, an ACK of no known flow (ACK miss), a UDP
//! datagram and an IPv6 SYN (the reference frames, a new source per
//! iteration, every sequence number beyond those used before), each timed
//! for xlb_xdp and for every `--variant NAME=OBJ` (another build of
//! xlb_xdp, e.g. a stage short-circuited, or another revision: loaded
//! `copies` times on the same pinned maps, in the same interleaved rounds,
//! which is how a new flow's cost is ablated stage by stage). Every timed
//! iteration inserts (or evicts), so the table grows while a fill below
//! 100 % is timed: the entries are counted before and after.
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use lb::{
    abi::SvcStats,
    datapath::Datapath,
    loader::{Dataplane, LoadOptions, MapSizes},
    model::{Backend, BackendState, Desired, Proto},
};
use serde::Serialize;
use testkit::{
    netns::{ifindex, in_private_netns},
    pins::PinDir,
};
use xlb_perf::stats::median;

/// The new-flow frames of the fill section: (row name, reference frame).
const NEW_FLOW_FRAMES: [(&str, &str); 4] = [
    ("SYN", "tcp_syn_vip.bin"),
    ("ACK miss", "tcp_ack_vip.bin"),
    ("UDP", "udp_vip.bin"),
    ("IPv6 SYN", "tcp6_syn_vip.bin"),
];

/// `copies` loads of the xlb_xdp in `file` on the maps pinned in `pins`.
fn load_variant(
    file: &std::path::Path,
    pins: &std::path::Path,
    copies: u32,
) -> Result<Vec<aya::Ebpf>> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    crate::compare::load_copies(&bytes, pins, copies, 0)
        .with_context(|| format!("the variant {}", file.display()))
}

use crate::{
    benchprog::{load_pass, test_run, xdp_of, Bench, Template},
    micro::read_frames,
    setup,
};

#[derive(Clone, Debug)]
pub struct ScaleOpts {
    pub packets: std::path::PathBuf,
    pub rounds: u32,
    pub repeat: u32,
    pub backends: Vec<u32>,
    /// Connection-table fills, percent of capacity.
    pub ct_fill: Vec<u32>,
    /// Connection-table capacity (production default).
    pub ct_capacity: u32,
    /// Other xlb_xdp objects timed beside the embedded one: (name, file).
    pub variants: Vec<(String, std::path::PathBuf)>,
    /// Loads of each variant (JIT placement moves a load's time).
    pub copies: u32,
}

impl Default for ScaleOpts {
    fn default() -> Self {
        ScaleOpts {
            packets: crate::micro::default_packets_dir(),
            rounds: 9,
            repeat: 20_000,
            backends: vec![1, 10, 100, 1000],
            ct_fill: vec![10, 50, 100],
            ct_capacity: MapSizes::default().ct,
            variants: Vec::new(),
            copies: 2,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendsRow {
    pub backends: u32,
    pub established_ns: f64,
    pub new_flow_ns: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CtRow {
    pub fill_percent: u32,
    pub flows_inserted: u64,
    pub entries: u64,
    /// ns/packet over distinct established flows (table lookups).
    pub established_ns: f64,
    /// New flows created while timing lookups (0: every lookup hit).
    pub ct_misses: u64,
    /// xlb_xdp's new-flow SYN (the `new_flow` rows' first cell).
    pub new_flow_ns: f64,
    /// Entries counted after the new flows were timed.
    pub entries_after: u64,
    /// Net ns per new flow: frame -> program ("xlb_xdp" or a variant) ->
    /// [median, first quartile, third quartile] over rounds and loads.
    pub new_flow: Vec<NewFlowRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NewFlowRow {
    pub frame: String,
    pub program: String,
    pub ns: [f64; 3],
}

#[derive(Clone, Debug, Serialize)]
pub struct ScaleReport {
    pub rounds: u32,
    pub repeat: u32,
    pub ct_capacity: u32,
    pub backends: Vec<BackendsRow>,
    pub ct: Vec<CtRow>,
    /// Programs of the new-flow rows, in order (xlb_xdp first).
    pub programs: Vec<String>,
}

/// `per` backends with distinct addresses over the four nodes.
fn many_backends(per: u32) -> Vec<Backend> {
    (0..per)
        .map(|i| {
            let addr = IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 245, 0, 10)) + i));
            Backend {
                name: format!("{addr}:80").into(),
                addr,
                port: 80,
                node: IpAddr::V4(setup::node_v4(1 + i % setup::NODES)),
                weight: 1,
                state: BackendState::Active,
            }
        })
        .collect()
}

fn one_service(per: u32) -> Desired {
    let mut d = Desired { node: setup::node_config(), ..Default::default() };
    let s =
        setup::service("svc0", "10.100.0.1".parse().unwrap(), 80, Proto::Tcp, many_backends(per));
    d.services.insert(s.key.clone(), s);
    d
}

struct Timer {
    dp: Dataplane,
    pin: PinDir,
    bench: Bench,
    pass: aya::Ebpf,
    ifindex: u32,
    rounds: u32,
    repeat: u32,
}

impl Timer {
    fn set_target(&mut self, xlb: bool) -> Result<()> {
        let fd = if xlb {
            self.dp.xdp_program().fd()?.try_clone()?
        } else {
            xdp_of(&self.pass, "xlb_pass")?.fd()?.try_clone()?
        };
        self.bench.set_target(&fd)
    }

    /// Net ns/packet of `tpl`; `before_each(xlb)` runs before every timed run.
    fn net(
        &mut self,
        tpl: &Template,
        before_each: &mut dyn FnMut(&mut Bench) -> Result<()>,
    ) -> Result<f64> {
        self.bench.set_templates(std::slice::from_ref(tpl))?;
        let mut diffs = Vec::new();
        for round in 0..self.rounds {
            let mut t = [0.0; 2];
            for xlb in if round % 2 == 0 { [false, true] } else { [true, false] } {
                self.set_target(xlb)?;
                before_each(&mut self.bench)?;
                let r =
                    test_run(self.bench.wrapper(), &tpl.bytes, self.ifindex, self.repeat, None)?;
                t[xlb as usize] = r.duration.as_nanos() as f64;
            }
            diffs.push(t[1] - t[0]);
        }
        Ok(median(&diffs))
    }

    fn new_flows(&self) -> Result<u64> {
        let data = MapData::from_pin(self.pin.path().join("xlb_svc_stats"))?;
        let arr: PerCpuArray<MapData, SvcStats> = Map::from_map_data(data)?.try_into()?;
        let mut sum = 0;
        for id in 0..16u32 {
            if let Ok(v) = arr.get(&id, 0) {
                sum += v.iter().map(|s| s.new_flows).sum::<u64>();
            }
        }
        Ok(sum)
    }

    /// Valid ways of xlb_ct (lb::maps::CtTable).
    fn ct_entries(&self) -> Result<u64> {
        let ct = lb::maps::CtTable::open(self.pin.path())?;
        let mut n = 0u64;
        ct.walk(&mut |_| {
            n += 1;
            std::ops::ControlFlow::Continue(())
        })?;
        Ok(n)
    }
}

fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}

pub fn run(opts: &ScaleOpts) -> Result<ScaleReport> {
    let frames = read_frames(&opts.packets)?;
    let opts = opts.clone();
    in_private_netns(move || run_inside(&opts, &frames))?
}

fn run_inside(opts: &ScaleOpts, frames: &[(String, Vec<u8>)]) -> Result<ScaleReport> {
    pin_to_cpu(0)?;
    let f = |n: &str| frames.iter().find(|(k, _)| k == n).expect("reference frame").1.clone();
    let (syn, ack) = (f("tcp_syn_vip.bin"), f("tcp_ack_vip.bin"));
    setup::lb_port("xb0", "xb1")?;
    let ifindex = ifindex("xb0").context("xb0 has no ifindex")?;
    let timer = |sizes: MapSizes| -> Result<Timer> {
        let pin = PinDir::new("scale");
        let dp = Dataplane::load(&LoadOptions {
            pin_dir: pin.path().to_path_buf(),
            sizes,
            // The table is filled and evicted from at full speed: no budget.
            ct_insert_rate: 0,
            ..LoadOptions::default()
        })
        .context("loading the datapath")?;
        Ok(Timer {
            dp,
            pin,
            bench: Bench::load()?,
            pass: load_pass()?,
            ifindex,
            rounds: opts.rounds,
            repeat: opts.repeat,
        })
    };
    let noop = &mut |_: &mut Bench| Ok(());

    // Backends per service.
    let mut t = timer(MapSizes::default())?;
    let mut applier = Datapath::open(t.pin.path())?;
    let mut backends = Vec::new();
    for &per in opts.backends.iter().filter(|&&p| p > 0) {
        applier.apply(&one_service(per)).with_context(|| format!("{per} backends"))?;
        // The established flow's entry first.
        test_run(t.dp.xdp_program(), &ack, ifindex, 1, None)?;
        let established_ns = t.net(&Template::fixed(&ack), noop)?;
        let new_flow_ns = t.net(&Template::new_flow(&syn), noop)?;
        backends.push(BackendsRow { backends: per, established_ns, new_flow_ns });
    }
    drop(applier);
    drop(t);

    // Connection-table fill: a fresh, empty table.
    let cap = opts.ct_capacity;
    let mut t = timer(MapSizes { ct: cap, ..MapSizes::default() })?;
    let mut desired = one_service(10);
    for s in [
        setup::service(
            "dns",
            "10.100.0.1".parse()?,
            53,
            Proto::Udp,
            setup::backends(10, 53, false),
        ),
        setup::service(
            "v6",
            "2001:db8:100::1".parse()?,
            80,
            Proto::Tcp,
            setup::backends(10, 80, true),
        ),
    ] {
        desired.services.insert(s.key.clone(), s);
    }
    Datapath::open(t.pin.path())?.apply(&desired)?;
    let mut variants = Vec::new();
    for (name, file) in &opts.variants {
        for e in load_variant(file, t.pin.path(), opts.copies)? {
            variants.push((name.clone(), e));
        }
    }
    let mut programs = vec!["xlb_xdp".to_string()];
    for (n, _) in &variants {
        if !programs.contains(n) {
            programs.push(n.clone());
        }
    }
    // Slot 0: xlb_pass, 1: xlb_xdp, then every variant load.
    let mut fds = vec![
        xdp_of(&t.pass, "xlb_pass")?.fd()?.try_clone()?,
        t.dp.xdp_program().fd()?.try_clone()?,
    ];
    let mut slot_prog = vec![String::new(), "xlb_xdp".to_string()];
    for (n, e) in &variants {
        fds.push(xdp_of(e, "xlb_xdp")?.fd()?.try_clone()?);
        slot_prog.push(n.clone());
    }
    let nf_frames: Vec<(&str, Vec<u8>)> =
        NEW_FLOW_FRAMES.iter().map(|(row, file)| (*row, f(file))).collect();
    let mut inserted: u64 = 0;
    let mut ct = Vec::new();
    for &pct in &opts.ct_fill {
        let want = u64::from(cap) * u64::from(pct) / 100;
        t.bench.set_templates(&[Template::new_flow(&syn)])?;
        t.set_target(true)?;
        while inserted < want {
            let n = (want - inserted).min(1 << 18) as u32;
            test_run(t.bench.wrapper(), &syn, ifindex, n, None)?;
            inserted += u64::from(n);
        }
        let seq_end = t.bench.seq()?;
        let entries = t.ct_entries()?;
        // Established: replay the newest `repeat` flows as ACKs.
        let nf0 = t.new_flows()?;
        let back = seq_end.saturating_sub(u64::from(opts.repeat));
        let established_ns = t.net(&Template::new_flow(&ack), &mut |b| b.set_seq(back))?;
        let ct_misses = t.new_flows()? - nf0;
        // New flows beyond every sequence number used so far, every
        // program in every round (rotating order), net of xlb_pass.
        let mut next = seq_end;
        let repeat = u64::from(opts.repeat);
        let k = fds.len();
        let mut times = vec![vec![Vec::new(); k]; nf_frames.len()];
        for round in 0..opts.rounds as usize {
            for (ci, (_, bytes)) in nf_frames.iter().enumerate() {
                t.bench.set_templates(&[Template::new_flow(bytes)])?;
                for j in 0..k {
                    let slot = (j + round + ci) % k;
                    t.bench.set_target(&fds[slot])?;
                    t.bench.set_seq(next)?;
                    next += repeat;
                    let r = test_run(t.bench.wrapper(), bytes, ifindex, opts.repeat, None)?;
                    times[ci][slot].push(r.duration.as_nanos() as f64);
                }
            }
        }
        // xlb_pass's iterations used sequence numbers too but inserted
        // nothing: the next fill starts from what the table holds.
        let entries_after = t.ct_entries()?;
        inserted = entries_after.max(inserted);
        let mut new_flow = Vec::new();
        for (ci, (row, _)) in nf_frames.iter().enumerate() {
            let tm = &times[ci];
            for p in &programs {
                let d: Vec<f64> = (1..k)
                    .filter(|&s| slot_prog[s] == *p)
                    .flat_map(|s| tm[s].iter().zip(&tm[0]).map(|(x, b)| x - b))
                    .collect();
                new_flow.push(NewFlowRow {
                    frame: row.to_string(),
                    program: p.clone(),
                    ns: crate::compare::quartiles(d),
                });
            }
        }
        ct.push(CtRow {
            fill_percent: pct,
            flows_inserted: want,
            entries,
            established_ns,
            ct_misses,
            new_flow_ns: new_flow[0].ns[0],
            entries_after,
            new_flow,
        });
    }
    drop(variants);
    Ok(ScaleReport {
        rounds: opts.rounds,
        repeat: opts.repeat,
        ct_capacity: cap,
        backends,
        ct,
        programs,
    })
}

impl ScaleReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "Per-packet cost of xlb_xdp (net ns over xlb_pass, wrapper-timed like the \
             microbenchmark, {} interleaved rounds × {} iterations, medians).\n\n\
             Backends per service (one service, Maglev M = 16381):\n\n\
             | backends | established flow ns | new flow ns |\n|---:|---:|---:|\n",
            self.rounds, self.repeat
        );
        for r in &self.backends {
            s.push_str(&format!(
                "| {} | {:.0} | {:.0} |\n",
                r.backends, r.established_ns, r.new_flow_ns
            ));
        }
        s.push_str(&format!(
            "\nConnection-table fill (capacity {} entries, 4-way sets; established = {} distinct flows \
             replayed per run, ct misses = new flows created while timing them):\n\n\
             | fill | flows inserted | entries counted | established ns | ct misses | new flow (insert) ns | entries after |\n|---:|---:|---:|---:|---:|---:|---:|\n",
            self.ct_capacity, self.repeat
        ));
        for r in &self.ct {
            s.push_str(&format!(
                "| {} % | {} | {} | {:.0} | {} | {:.0} | {} |\n",
                r.fill_percent,
                r.flows_inserted,
                r.entries,
                r.established_ns,
                r.ct_misses,
                r.new_flow_ns,
                r.entries_after
            ));
        }
        for r in &self.ct {
            s.push_str(&format!(
                "\nNew flows at {} % fill ({} → {} entries; net ns, median (quartiles) over \
                 rounds and loads; ratio against xlb_xdp):\n\n| frame |",
                r.fill_percent, r.entries, r.entries_after
            ));
            for p in &self.programs {
                s.push_str(&format!(" {p} |"));
            }
            s.push_str("\n|---|");
            s.push_str(&"---:|".repeat(self.programs.len()));
            s.push('\n');
            for frame in NEW_FLOW_FRAMES.iter().map(|f| f.0) {
                let cells: Vec<&NewFlowRow> =
                    r.new_flow.iter().filter(|c| c.frame == frame).collect();
                let base = cells.first().map(|c| c.ns[0]).unwrap_or(f64::NAN);
                s.push_str(&format!("| {frame} |"));
                for c in &cells {
                    s.push_str(&format!(
                        " {:.0} ({:.0}–{:.0}) ×{:.2} |",
                        c.ns[0],
                        c.ns[1],
                        c.ns[2],
                        c.ns[0] / base
                    ));
                }
                s.push('\n');
            }
        }
        s
    }
}
