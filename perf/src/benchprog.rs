//! The timing wrapper and packet-generator rig of testkit/bpf/xlb_bench.c,
//! loaded from testkit::objects::bench(): frame templates, the tail-call
//! slot that holds the program under test, the wrapper's step counters, and
//! BPF_PROG_TEST_RUN helpers (plain, and with live frames).
use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray, ProgramArray},
    programs::{ProgramFd, TestRun, TestRunAttrs, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use lb::report::Chain;

pub use testkit::bench::{test_run, xdp_ctx, BenchFrame, TEMPLATES};

/// Indices of xlb_bench_stats.
#[derive(Clone, Copy, Debug)]
pub enum Stat {
    Iterations = 0,
    RestoreFail = 1,
    TailCallFail = 2,
    Seq = 3,
    SinkPackets = 4,
}

/// A frame template; `new_flow` rewrites the source per iteration.
#[derive(Clone, Debug)]
pub struct Template {
    pub bytes: Vec<u8>,
    pub new_flow: bool,
    /// Vary the destination (port and address) instead of the source.
    pub new_dest: bool,
}

impl Template {
    pub fn fixed(bytes: &[u8]) -> Self {
        Template { bytes: bytes.to_vec(), new_flow: false, new_dest: false }
    }

    pub fn new_flow(bytes: &[u8]) -> Self {
        Template { bytes: bytes.to_vec(), new_flow: true, new_dest: false }
    }

    /// A new destination address and port every iteration.
    pub fn new_dest(bytes: &[u8]) -> Self {
        Template { bytes: bytes.to_vec(), new_flow: false, new_dest: true }
    }

    fn encode(&self, count: u16) -> Result<BenchFrame> {
        if self.new_dest {
            return Ok(BenchFrame::encode_new_dest(&self.bytes, count)?);
        }
        Ok(BenchFrame::encode(&self.bytes, self.new_flow, count)?)
    }
}

/// The loaded xlb_bench object.
pub struct Bench {
    ebpf: Ebpf,
    frames: Array<MapData, BenchFrame>,
    stats: PerCpuArray<MapData, u64>,
    progs: ProgramArray<MapData>,
}

impl Bench {
    pub fn load() -> Result<Bench> {
        let mut ebpf = EbpfLoader::new()
            .load(testkit::objects::bench())
            .context("loading the xlb_bench object")?;
        for name in [
            "xlb_bench",
            "xlb_bench_tx",
            "xlb_bench_reflect",
            "xlb_bench_reflect_grow",
            "xlb_bench_sink",
        ] {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("xlb_bench object has no program {name}"))?
                .try_into()?;
            p.load().with_context(|| format!("loading {name}"))?;
        }
        let frames = ebpf.take_map("xlb_bench_frame").context("map xlb_bench_frame")?.try_into()?;
        let stats = ebpf.take_map("xlb_bench_stats").context("map xlb_bench_stats")?.try_into()?;
        let progs = ebpf.take_map("xlb_bench_progs").context("map xlb_bench_progs")?.try_into()?;
        Ok(Bench { ebpf, frames, stats, progs })
    }

    pub fn program(&self, name: &str) -> Result<&Xdp> {
        self.ebpf
            .program(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()
            .map_err(|e| anyhow!("{name}: {}", Chain(&e)))
    }

    pub fn program_mut(&mut self, name: &str) -> Result<&mut Xdp> {
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()
            .map_err(|e| anyhow!("{name}: {}", Chain(&e)))
    }

    /// The wrapper (the program to test-run).
    pub fn wrapper(&self) -> &Xdp {
        self.program("xlb_bench").expect("loaded in Bench::load")
    }

    /// Puts `prog` into the tail-call slot: the program under test.
    pub fn set_target(&mut self, prog: &ProgramFd) -> Result<()> {
        self.progs.set(0, prog, 0).context("xlb_bench_progs[0] update")
    }

    /// Loads the frame templates the wrapper restores (cycled if several).
    pub fn set_templates(&mut self, t: &[Template]) -> Result<()> {
        if t.is_empty() || t.len() > TEMPLATES {
            bail!("{} templates: want 1..={TEMPLATES}", t.len());
        }
        for (i, tpl) in t.iter().enumerate() {
            self.frames
                .set(i as u32, tpl.encode(t.len() as u16)?, 0)
                .context("xlb_bench_frame update")?;
        }
        Ok(())
    }

    /// Times every program of `progs` on every case through the wrapper,
    /// `rounds` times, each call `repeat` iterations, in rotating order (each
    /// program goes first in turn, shifted per case, so drift and cache
    /// state fall on all alike): `[case][prog]`, one ns/packet per round.
    pub fn time_rotating(
        &mut self,
        cases: &[Template],
        progs: &[ProgramFd],
        rounds: u32,
        repeat: u32,
        ifindex: u32,
    ) -> Result<Vec<Vec<Vec<f64>>>> {
        let k = progs.len();
        let mut times = vec![vec![Vec::new(); k]; cases.len()];
        for round in 0..rounds as usize {
            for (ci, tpl) in cases.iter().enumerate() {
                self.set_templates(std::slice::from_ref(tpl))?;
                for j in 0..k {
                    let slot = (j + round + ci) % k;
                    self.set_target(&progs[slot])?;
                    let r = test_run(self.wrapper(), &tpl.bytes, ifindex, repeat, None)?;
                    times[ci][slot].push(r.duration.as_nanos() as f64);
                }
            }
        }
        Ok(times)
    }

    /// A wrapper counter, summed over CPUs.
    pub fn stat(&self, s: Stat) -> Result<u64> {
        let v = self.stats.get(&(s as u32), 0).context("xlb_bench_stats read")?;
        Ok(v.iter().sum())
    }

    /// The new-flow sequence number: the highest over CPUs.
    pub fn seq(&self) -> Result<u64> {
        let v = self.stats.get(&(Stat::Seq as u32), 0).context("xlb_bench_stats read")?;
        Ok(v.iter().copied().max().unwrap_or(0))
    }

    /// Sets the new-flow sequence number on every CPU: the next new-flow
    /// iteration uses `seq + 1` (replaying flows that used it before).
    pub fn set_seq(&mut self, seq: u64) -> Result<()> {
        let n = aya::util::nr_cpus().map_err(|(_, e)| anyhow!("nr_cpus: {e}"))?;
        let values = aya::maps::PerCpuValues::try_from(vec![seq; n])?;
        self.stats.set(Stat::Seq as u32, values, 0).context("xlb_bench_stats update")
    }

    /// BPF_PROG_TEST_RUN of the wrapper with live frames (transmitted for
    /// real on XDP_TX/REDIRECT), `repeat` frames in batches of `batch`.
    pub fn live_run(&self, ifindex: u32, len: usize, repeat: u32, batch: u32) -> Result<()> {
        // The kernel copies data_in into each live frame once; the wrapper
        // restores templates itself, so any frame of the right size will do.
        let frame = vec![0u8; len];
        let ctx = xdp_ctx(len, ifindex);
        self.wrapper()
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: None,
                ctx_in: Some(&ctx),
                ctx_out: None,
                repeat,
                attrs: TestRunAttrs::new().xdp_live_frames(batch),
            })
            .map_err(|e| anyhow!("BPF_PROG_TEST_RUN (live frames): {}", Chain(&e)))?;
        Ok(())
    }
}

/// The trivial XDP_PASS program (the microbenchmark's baseline target).
pub fn load_pass() -> Result<Ebpf> {
    let mut ebpf = EbpfLoader::new().load(testkit::objects::pass()).context("loading xlb_pass")?;
    let p: &mut Xdp =
        ebpf.program_mut("xlb_pass").ok_or_else(|| anyhow!("no program xlb_pass"))?.try_into()?;
    p.load().context("loading xlb_pass")?;
    Ok(ebpf)
}

pub fn xdp_of<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Xdp> {
    ebpf.program(name)
        .ok_or_else(|| anyhow!("no program {name}"))?
        .try_into()
        .map_err(|e| anyhow!("{name}: {}", Chain(&e)))
}
