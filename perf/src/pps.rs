//! `xlb-perf pps`: packet rate through the load balancer's veth, measured on
//! the receiving side, with xlb beside the physical limit and kube-proxy.
//!
//! Rig (two namespaces of our own): gen (`g0`) ⇄ lb (`eth0`, 10.0.0.2,
//! MAC 02:00:00:00:00:01, permanent neighbours for the backend nodes). The
//! generator is xlb_bench run with BPF_F_TEST_XDP_LIVE_FRAMES on g0: each
//! frame is restored from a template (optionally a new source per frame)
//! and sent with XDP_TX, i.e. received by the LB's eth0. What the LB sends
//! back out of eth0 (Geneve to a node for xlb, DNAT'd and routed for
//! kube-proxy, reflected for the limit) arrives on g0, where xlb_bench_sink
//! counts and drops it: the rate is packets counted there per second.
//!
//! Dataplanes on the LB's eth0:
//!   - limit: xlb_bench_reflect (swap MACs, XDP_TX; no lookups);
//!   - xlb: xlb_xdp attached natively through lb::loader::Dataplane, the
//!     services programmed by lb::datapath::Datapath::apply;
//!   - with `--katran`: xlb with every service in IPIP mode, and Katran's
//!     balancer (katran_bench.rs), each checked to forward the reference
//!     frames as IPIP to a node before it is timed;
//!   - iptables / nftables: xlb_pass (so veth takes the frames) and the
//!     kube-proxy ruleset for N services (the measured one last), routed
//!     back out of eth0 towards the endpoint's node, conntrack on.
//!
//! Everything runs on one core per packet (veth XDP runs in the sender's
//! softirq), so rates are "one core, generator and sink included", and they
//! are taken per second of that core's time spent on the rig (the
//! generator thread's CPU time), not wall time: each live-frames syscall
//! sleeps through two RCU grace periods (`Rate`), which no packet path has,
//! and other tasks share the cores. `--prog-stats` splits a packet's CPU
//! time by program (kernel BPF statistics, `in_situ`).
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::programs::{xdp::XdpLinkId, Xdp, XdpMode as AyaXdpMode};
use lb::store::MapStore;
use lb::{
    datapath::Datapath,
    loader::{Dataplane, LoadOptions, MapSizes, XdpMode},
};
use serde::Serialize;
use testkit::{
    bench::test_run,
    netns::{ifindex, run, run_with_input, NamedNetns},
    pins::PinDir,
};
use xlb_perf::{
    kubeproxy::{iptables_restore, nftables, synthetic, KpConfig},
    stats::{loadavg, median},
};

use crate::{
    afpacket::AfPacket,
    benchprog::{Bench, Stat, Template},
    micro::read_frames,
    setup,
};

/// The row of `PpsOpts::grow_reflector`.
const GROW_ROW: &str = "limit + 48-byte head growth (reflect)";

/// Backends per service and Maglev size of the services of the scale
/// sweep (a small prime keeps 100k services' tables building quickly; each
/// table value still takes 32 KiB of kernel memory: 100k ≈ 3.3 GB).
pub const SWEEP_BACKENDS: u32 = 10;
pub const SWEEP_MAGLEV: u32 = 251;

/// `xlb-perf pps`'s options (the command line's, and `all`'s).
#[derive(Clone, Debug, clap::Args)]
pub struct PpsOpts {
    #[arg(long, default_value_os_t = crate::micro::default_packets_dir())]
    pub packets: std::path::PathBuf,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Service counts of the scale sweep (kube-proxy only up to 10000).
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 1000, 10000])]
    pub services: Vec<u32>,
    #[arg(long, default_value_t = 64)]
    pub batch: u32,
    /// The generator (default: live frames where the kernel takes them,
    /// else AF_PACKET with qdisc bypass).
    #[arg(long, value_enum)]
    pub generator: Option<GeneratorChoice>,
    /// Only the traffic mixes (no held flows, sweep or kube-proxy).
    #[arg(long)]
    pub mixes_only: bool,
    /// Only the traffic mixes whose name contains this.
    #[arg(long)]
    pub mix: Option<String>,
    /// Also time the reflector with xlb's Geneve frame growth
    /// (xlb_bench_reflect_grow: 48 bytes at the head): the larger frame's
    /// cost outside the program.
    #[arg(long)]
    pub grow_reflector: bool,
    /// Frames per live-frames syscall (default: ~50 ms of work each;
    /// 65536 with the wall-clock columns = the harness before session 8).
    #[arg(long)]
    pub frames_per_call: Option<u32>,
    /// Also split each mix's time per packet by program: one more
    /// interleaved pass with the kernel's BPF run-time statistics on (ns
    /// inside the generator, the LB and the sink; the rest is the kernel's
    /// veth/XDP work).
    #[arg(long)]
    pub prog_stats: bool,
    /// Also time the rival Katran (its balancer built from --katran-src)
    /// and xlb in IPIP mode (Katran's encapsulation) on the mixes.
    #[arg(long)]
    pub katran: bool,
    /// Katran's source: a checkout, or a git directory (its HEAD is built).
    #[arg(long, default_value_os_t = crate::katran_bench::default_src())]
    pub katran_src: std::path::PathBuf,
}

#[derive(Clone, Debug, Serialize)]
pub struct PpsRow {
    pub mix: String,
    pub dataplane: String,
    pub services: u32,
    pub sent_mpps: f64,
    /// Per second of the rig's CPU time (live frames; `Rate`).
    pub received_mpps: f64,
    /// received / limit's received for the same mix.
    pub vs_limit: Option<f64>,
    /// Received per wall-clock second, the generator's sleeps included
    /// (the harness's figure before session 8; mixes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_mpps_wall: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_limit_wall: Option<f64>,
    /// CPU time per packet received (the generator's thread, softirq
    /// included): the chain's cost with other tasks' share of the CPU left
    /// out (mixes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ns_per_packet: Option<f64>,
    /// Received per second the generator was running or runnable (its
    /// sleeps left out, other tasks' share of the CPU counted; mixes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_mpps_busy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_limit_busy: Option<f64>,
    /// Why the row has no figures (the rival could not be built, or did
    /// not forward the frames).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PpsRow {
    /// A row with a sent and a received rate only (the sweeps; a rival's
    /// error row): no CPU-time, busy-time or wall-clock figures.
    fn plain(mix: &str, dataplane: String, services: u32, sent: f64, received: f64) -> PpsRow {
        PpsRow {
            mix: mix.to_string(),
            dataplane,
            services,
            sent_mpps: sent,
            received_mpps: received,
            vs_limit: None,
            received_mpps_wall: None,
            vs_limit_wall: None,
            cpu_ns_per_packet: None,
            received_mpps_busy: None,
            vs_limit_busy: None,
            error: None,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ProgramTime {
    pub dataplane: String,
    pub services: u32,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PpsReport {
    /// The generator used (live frames, or AF_PACKET where refused).
    pub generator: String,
    pub seconds: f64,
    pub rounds: u32,
    pub mixes: Vec<PpsRow>,
    pub sweep: Vec<PpsRow>,
    pub programming: Vec<ProgramTime>,
    /// Held flows under a SYN flood, with and without the flood guard.
    pub held: Vec<HeldRow>,
    /// 1-minute load average at the start and at the end of the mixes.
    pub loadavg: Vec<f64>,
    /// Where a packet's time goes, in situ (`--prog-stats`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub in_situ: Vec<InSituRow>,
}

/// One packet's time through the rig, split by program, from the kernel's
/// BPF run-time statistics (kernel.bpf_stats_enabled) taken during a
/// measurement: each program's run_time_ns / run_cnt. The statistics add
/// two clock reads per program run, to every program alike (the
/// reflector's own time is mostly that).
#[derive(Clone, Debug, Serialize)]
pub struct InSituRow {
    pub mix: String,
    pub dataplane: String,
    /// With the statistics on.
    pub received_mpps: f64,
    /// CPU time per packet delivered (the sending thread's, softirq work
    /// on its CPU included: the whole chain; not wall time, so other tasks
    /// sharing the CPU do not count).
    pub cycle_ns: f64,
    /// The generator (xlb_bench wrapper + xlb_bench_tx) per run.
    pub generator_ns: f64,
    /// The LB's XDP program per run.
    pub lb_ns: f64,
    /// xlb_bench_sink per run.
    pub sink_ns: f64,
    /// cycle_ns − the three programs: the kernel's work outside them
    /// (test-run loop, veth rings and NAPI, XDP_TX bulking, frame recycling).
    pub rest_ns: f64,
}

/// (run time ns, run count) of a loaded program.
fn run_stats(p: &Xdp) -> Result<(u64, u64)> {
    let i = p.info().context("program info")?;
    Ok((i.run_time().as_nanos() as u64, i.run_count()))
}

/// ns per run between two run_stats readings.
fn per_run(a: (u64, u64), b: (u64, u64)) -> f64 {
    (b.0 - a.0) as f64 / ((b.1 - a.1).max(1)) as f64
}

/// What transmits the frames into the LB's veth.
enum Generator {
    /// xlb_bench run with BPF_F_TEST_XDP_LIVE_FRAMES (XDP_TX on g0).
    LiveFrames,
    /// AF_PACKET with PACKET_QDISC_BYPASS (kernels that refuse live frames).
    AfPacket(AfPacket),
}

impl Generator {
    fn name(&self) -> &'static str {
        match self {
            Generator::LiveFrames => "XDP live frames (BPF_PROG_TEST_RUN, XDP_TX)",
            Generator::AfPacket(_) => "AF_PACKET + PACKET_QDISC_BYPASS (sendmmsg)",
        }
    }
}

struct Rig {
    gen: NamedNetns,
    lb: NamedNetns,
    bench: Bench,
    g0: u32,
    frame_len: usize,
    generator: Generator,
    /// New-flow sequence of the AF_PACKET generator.
    seq: u64,
    /// PpsOpts::frames_per_call.
    frames_per_call: Option<u32>,
}

/// `--generator`: None chooses (live frames if the kernel takes them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GeneratorChoice {
    Live,
    AfPacket,
}

fn build_rig(force: Option<GeneratorChoice>) -> Result<Rig> {
    let gen = NamedNetns::create("gen")?;
    let lb = NamedNetns::create("lb")?;
    run(
        "ip",
        &[
            "link",
            "add",
            "g0",
            "netns",
            gen.name(),
            "mtu",
            "1600",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            lb.name(),
            "mtu",
            "1600",
        ],
    )?;
    gen.exec("ip", &["link", "set", "g0", "address", "02:00:00:00:00:02", "up"])?;
    lb.exec("ip", &["link", "set", "eth0", "address", "02:00:00:00:00:01", "up"])?;
    lb.exec("ip", &["addr", "add", "10.0.0.2/24", "dev", "eth0"])?;
    lb.exec("ip", &["addr", "add", "2001:db8:f::2/64", "dev", "eth0", "nodad"])?;
    lb.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    lb.exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])?;
    lb.exec("sysctl", &["-qw", "net.ipv4.conf.all.rp_filter=0"])?;
    lb.exec("sysctl", &["-qw", "net.ipv4.conf.eth0.rp_filter=0"])?;
    for n in 1..=setup::NODES {
        for a in [setup::node_v4(n).to_string(), setup::node_v6(n).to_string()] {
            lb.exec(
                "ip",
                &[
                    "neigh",
                    "replace",
                    &a,
                    "lladdr",
                    &setup::node_mac(n),
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ],
            )?;
        }
    }
    lb.exec(
        "ip",
        &[
            "neigh",
            "replace",
            "10.0.0.1",
            "lladdr",
            "02:00:00:00:00:02",
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )?;
    lb.exec("ip", &["route", "add", "10.244.0.0/16", "via", "10.0.0.11", "dev", "eth0"])?;
    lb.exec("ip", &["route", "add", "192.0.2.0/24", "via", "10.0.0.1", "dev", "eth0"])?;
    let mut bench = Bench::load()?;
    let tx = bench.program("xlb_bench_tx")?.fd()?.try_clone()?;
    bench.set_target(&tx)?;
    let g0 = gen.run_in(|| -> Result<u32> {
        let sink = bench.program_mut("xlb_bench_sink")?;
        sink.attach("g0", AyaXdpMode::Driver).context("attaching the sink to g0")?;
        ifindex("g0").context("no g0")
    })??;
    // Live frames if the kernel takes them (EPERM where it does not, e.g.
    // on some virtualised kernels), else AF_PACKET: chosen here, named in
    // the report.
    let live = match force {
        Some(GeneratorChoice::AfPacket) => Err(anyhow::anyhow!("AF_PACKET asked for")),
        _ => gen.run_in(|| bench.live_run(g0, 74, 1, 1))?,
    };
    let generator = match live {
        Ok(()) => Generator::LiveFrames,
        Err(e) if force == Some(GeneratorChoice::Live) => return Err(e.context("live frames")),
        Err(e) => {
            eprintln!("pps: not generating with live frames ({e:#}); AF_PACKET instead");
            Generator::AfPacket(gen.run_in(|| AfPacket::open(g0))??)
        }
    };
    Ok(Rig { gen, lb, bench, g0, frame_len: 74, generator, seq: 1 << 20, frames_per_call: None })
}

/// The calling thread's scheduler times, ns (/proc/thread-self/schedstat):
/// (on a CPU, runnable but waiting for one). Softirq work done while the
/// thread runs is charged to it (no CONFIG_IRQ_TIME_ACCOUNTING here): the
/// generator's syscall and the LB's and the sink's veth NAPI all run there.
fn sched_ns() -> Result<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").context("schedstat")?;
    let mut f = s.split_whitespace().map(|v| v.parse::<u64>().ok());
    match (f.next().flatten(), f.next().flatten()) {
        (Some(run), Some(wait)) => Ok((run, wait)),
        _ => anyhow::bail!("schedstat: {s:?}"),
    }
}

/// With XLB_PERF_PHASES set: the CLOCK_MONOTONIC time at which a mix's
/// measurement starts, on stderr (to cut a `perf record -k CLOCK_MONOTONIC`
/// profile of the whole run into its phases).
fn phase(mix: &str, who: &str) {
    if std::env::var_os("XLB_PERF_PHASES").is_none() {
        return;
    }
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    eprintln!("phase {}.{:09} {who} {mix}", ts.tv_sec, ts.tv_nsec);
}

/// One measurement. With live frames the whole chain (generator, the LB's
/// and the sink's veth NAPI) runs on the generator's thread, so `sent` and
/// `received` are per second of that thread's CPU time: the rate on a core
/// of the rig's own. Not wall time: each live-frames BPF_PROG_TEST_RUN
/// waits for two RCU grace periods (the kernel puts the program into the
/// XDP dispatcher and takes it out again, bpf_dispatcher_change_prog ->
/// synchronize_rcu), tens of ms per syscall in which no packet moves and no
/// CPU is used. Counted in wall time (the harness before session 8) that
/// sleep adds the same ns to every packet of both dataplanes and pulls
/// their ratio towards 1 (~60 % of the wall time here, more the longer
/// grace periods take); a NIC feeding the LB does not sleep. Not busy time
/// either (running or runnable): on shared cores the time other tasks hold
/// the CPU swings by tens of % between rounds. AF_PACKET hands part of the
/// chain to other contexts, so its rates are per busy second.
#[derive(Clone, Copy, Debug)]
struct Rate {
    sent: f64,
    received: f64,
    /// Received per second running or runnable.
    received_busy: f64,
    /// Received per wall-clock second (sleeps included: the old figure).
    received_wall: f64,
    /// The thread's CPU time per packet received.
    cpu_ns_per_packet: f64,
}

/// Frames per live-frames syscall: about 50 ms of work at the last rate
/// (fewer syscalls: fewer grace-period sleeps and dispatcher rewrites).
fn next_repeat(frames: u64, busy: Duration) -> u32 {
    let per_s = frames as f64 / busy.as_secs_f64().max(1e-6);
    (per_s * 0.05).clamp(f64::from(1u32 << 14), f64::from(1u32 << 22)) as u32
}

impl Rig {
    /// Sends `templates` for `seconds` of the generator's busy time.
    fn measure(&mut self, templates: &[Template], seconds: f64, batch: u32) -> Result<Rate> {
        let s0 = self.bench.stat(Stat::SinkPackets)?;
        let i0 = self.bench.stat(Stat::Iterations)?;
        let (g0, len, fixed) = (self.g0, self.frame_len, self.frames_per_call);
        let mut by_socket = 0u64;
        // (wall, busy = running + runnable, running, the sending thread)
        let (wall, busy, cpu, tid) = match &self.generator {
            Generator::LiveFrames => {
                self.bench.set_templates(templates)?;
                let bench = &self.bench;
                self.gen.run_in(|| -> Result<(Duration, Duration, u64, i32)> {
                    let (r0, w0) = sched_ns()?;
                    let t0 = Instant::now();
                    let busy = || -> Result<Duration> {
                        let (r, w) = sched_ns()?;
                        Ok(Duration::from_nanos(r - r0 + w - w0))
                    };
                    let mut repeat = fixed.unwrap_or(1 << 16);
                    let mut frames = 0u64;
                    loop {
                        let b = busy()?;
                        if b.as_secs_f64() >= seconds {
                            let (r1, _) = sched_ns()?;
                            // SAFETY: gettid has no memory effects.
                            return Ok((t0.elapsed(), b, r1 - r0, unsafe { libc::gettid() }));
                        }
                        bench.live_run(g0, len, repeat, batch)?;
                        frames += u64::from(repeat);
                        repeat = fixed.unwrap_or(next_repeat(frames, busy()?));
                    }
                })??
            }
            Generator::AfPacket(sock) => {
                // The socket is bound to g0 already: no namespace switch.
                let (r0, w0) = sched_ns()?;
                let t0 = Instant::now();
                while t0.elapsed().as_secs_f64() < seconds {
                    by_socket += sock.send(templates, 4096, batch as usize, &mut self.seq)?;
                }
                let (r1, w1) = sched_ns()?;
                // SAFETY: gettid has no memory effects.
                let tid = unsafe { libc::gettid() };
                (t0.elapsed(), Duration::from_nanos(r1 - r0 + w1 - w0), r1 - r0, tid)
            }
        };
        std::thread::sleep(Duration::from_millis(30));
        let sent = match self.generator {
            Generator::LiveFrames => (self.bench.stat(Stat::Iterations)? - i0) as f64,
            Generator::AfPacket(_) => by_socket as f64,
        };
        let got = (self.bench.stat(Stat::SinkPackets)? - s0) as f64;
        let b = busy.as_secs_f64();
        // Live frames: per CPU second; AF_PACKET: per busy second.
        let per = match self.generator {
            Generator::LiveFrames => cpu as f64 / 1e9,
            Generator::AfPacket(_) => b,
        };
        if std::env::var_os("XLB_PERF_PHASES").is_some() {
            eprintln!(
                "measure: tid {tid} wall {wall:?} busy {busy:?} cpu {cpu} ns, {got} received"
            );
        }
        Ok(Rate {
            sent: sent / per,
            received: got / per,
            received_busy: got / b,
            received_wall: got / wall.as_secs_f64(),
            cpu_ns_per_packet: cpu as f64 / got.max(1.0),
        })
    }
}

/// A dataplane on the LB's eth0 during the mixes.
#[derive(Clone, Copy, Debug)]
enum Side {
    /// A program of the xlb_bench object (the reflector).
    Reflect(&'static str),
    /// xlb as configured by default (Geneve).
    Xlb,
    /// xlb with every service in IPIP mode (`--katran`).
    XlbIpip,
    /// Katran's balancer (`--katran`).
    Katran,
}

const IPIP_ROW: &str = "xlb IPIP";
const KATRAN_ROW: &str = "katran (IPIP)";

/// `--katran`'s dataplanes: xlb in IPIP mode (its own maps), and Katran
/// built, loaded and checked (or why not: its rows then say so).
struct Rival {
    pin: PinDir,
    ipip: Dataplane,
    katran: std::result::Result<crate::katran_bench::Katran, String>,
}

impl Rival {
    fn load(
        rig: &Rig,
        frames: &[(String, Vec<u8>)],
        sizes: MapSizes,
        src: &std::path::Path,
    ) -> Result<Rival> {
        use crate::katran_bench::{build, check_forwarding, Katran};
        let pin = PinDir::new("pps-ipip");
        let mut ipip = Dataplane::load(&LoadOptions {
            pin_dir: pin.path().to_path_buf(),
            sizes,
            ..LoadOptions::default()
        })?;
        let mut d = setup::bench_desired();
        for s in d.services.values_mut() {
            s.encap = lb::model::Encap::Ipip;
        }
        Datapath::open(pin.path())?.apply(&d).context("programming xlb's IPIP services")?;
        let lb_if = rig.lb.run_in(|| ifindex("eth0"))?.context("the LB's eth0")?;
        rig.lb
            .run_in(|| check_forwarding(ipip.xdp_program(), frames, lb_if))?
            .context("xlb IPIP does not forward the reference frames")?;
        let katran = (|| -> Result<Katran> {
            let built = build(src, lb::loader::DEFAULT_CT_INSERT_RATE)?;
            let plan = xlb_perf::katran::Plan::from_desired(&setup::bench_desired())?;
            // Everything to the generator's MAC: Katran sends to one router.
            let k = Katran::load(&built.object, &plan, sizes.ct, [2, 0, 0, 0, 0, 2])?;
            rig.lb
                .run_in(|| check_forwarding(k.program()?, frames, lb_if))?
                .context("Katran does not forward the reference frames")?;
            Ok(k)
        })()
        .map_err(|e| format!("{e:#}"));
        Ok(Rival { pin, ipip, katran })
    }
}

/// The dataplanes of the mixes, put on the LB's eth0 one at a time.
struct Planes<'a> {
    dp: &'a mut Dataplane,
    pin: &'a std::path::Path,
    lbside: &'a mut Bench,
    rival: Option<Rival>,
}

impl Planes<'_> {
    fn rival(&mut self) -> &mut Rival {
        self.rival.as_mut().expect("a rival side only with --katran")
    }

    fn katran(&mut self) -> Result<&mut crate::katran_bench::Katran> {
        self.rival().katran.as_mut().map_err(|e| anyhow::anyhow!("{e}"))
    }

    fn attach(&mut self, lb: &NamedNetns, side: Side) -> Result<Option<XdpLinkId>> {
        Ok(match side {
            Side::Reflect(p) => Some(attach_in(lb, self.lbside.program_mut(p)?)?),
            Side::Xlb => {
                let dp = &mut *self.dp;
                lb.run_in(|| dp.attach_xdp("eth0", XdpMode::Native))??;
                None
            }
            Side::XlbIpip => {
                let dp = &mut self.rival().ipip;
                lb.run_in(|| dp.attach_xdp("eth0", XdpMode::Native))??;
                None
            }
            Side::Katran => Some(attach_in(lb, self.katran()?.program_mut()?)?),
        })
    }

    fn detach(&mut self, side: Side, link: Option<XdpLinkId>) -> Result<()> {
        match (side, link) {
            (Side::Reflect(p), Some(id)) => self.lbside.program_mut(p)?.detach(id)?,
            (Side::Katran, Some(id)) => self.katran()?.program_mut()?.detach(id)?,
            (Side::XlbIpip, _) => Dataplane::detach_all(self.rival().pin.path())?,
            _ => Dataplane::detach_all(self.pin)?,
        }
        Ok(())
    }

    /// The side's LB program's (run time ns, run count).
    fn run_stats(&mut self, side: Side) -> Result<(u64, u64)> {
        match side {
            Side::Reflect(p) => run_stats(self.lbside.program(p)?),
            Side::Xlb => run_stats(self.dp.xdp_program()),
            Side::XlbIpip => run_stats(self.rival().ipip.xdp_program()),
            Side::Katran => run_stats(self.katran()?.program()?),
        }
    }
}

fn attach_in(ns: &NamedNetns, prog: &mut Xdp) -> Result<XdpLinkId> {
    ns.run_in(|| prog.attach("eth0", AyaXdpMode::Driver))?.context("attaching to the LB's eth0")
}

/// The traffic mixes: (name, templates).
fn mixes(frames: &[(String, Vec<u8>)]) -> Vec<(&'static str, Vec<Template>)> {
    let f = |n: &str| frames.iter().find(|(k, _)| k == n).expect("reference frame").1.clone();
    let (syn, ack, udp, nonvip, v6) = (
        f("tcp_syn_vip.bin"),
        f("tcp_ack_vip.bin"),
        f("udp_vip.bin"),
        f("tcp_nonvip.bin"),
        f("tcp6_syn_vip.bin"),
    );
    let mut mixed: Vec<Template> = (0..8).map(|_| Template::fixed(&ack)).collect();
    mixed.push(Template::new_flow(&syn));
    mixed.push(Template::fixed(&nonvip));
    vec![
        ("established (1 flow)", vec![Template::fixed(&ack)]),
        ("SYN flood (new flow/pkt)", vec![Template::new_flow(&syn)]),
        ("UDP", vec![Template::fixed(&udp)]),
        ("IPv6 SYN", vec![Template::fixed(&v6)]),
        ("mix 80% est/10% new/10% non-VIP", mixed),
    ]
}

pub fn run_pps(opts: &PpsOpts) -> Result<PpsReport> {
    let frames = read_frames(&opts.packets)?;
    let syn = frames[0].1.clone();
    let mut rig = build_rig(opts.generator)?;
    rig.frames_per_call = opts.frames_per_call;
    let generator_name = rig.generator.name().to_string();
    let pin = PinDir::new("pps");
    let max = opts.services.iter().copied().max().unwrap_or(1).max(16);
    let d = MapSizes::default();
    // The sweep's services have 10 backends each (service-local entries).
    let sizes = MapSizes {
        services: max + 16,
        frontends: d.frontends.max(max + 16),
        backends: d.backends.max(max * SWEEP_BACKENDS + 1024),
        ..d
    };
    let mut dp = Dataplane::load(&LoadOptions {
        pin_dir: pin.path().to_path_buf(),
        sizes,
        ..LoadOptions::default()
    })?;
    let mut applier = Datapath::open(pin.path())?;
    let mut programming = Vec::new();
    let t0 = Instant::now();
    applier.apply(&setup::bench_desired())?;
    programming.push(ProgramTime {
        dataplane: "xlb".into(),
        services: 3,
        seconds: t0.elapsed().as_secs_f64(),
    });
    let mut lbside = Bench::load()?;

    // Mixes: limit vs xlb, interleaved rounds.
    let mut ms = mixes(&frames);
    if let Some(only) = &opts.mix {
        ms.retain(|(name, _)| name.contains(only.as_str()));
        anyhow::ensure!(!ms.is_empty(), "no traffic mix named like {only:?}");
    }
    let mut load = vec![loadavg()];
    // Sides: the limit first (the ratios' base), xlb, then the optional
    // ones; [mix][side]: one Rate per round.
    let mut sides: Vec<(&str, u32, Side)> =
        vec![("limit (reflect)", 0, Side::Reflect("xlb_bench_reflect")), ("xlb", 3, Side::Xlb)];
    if opts.grow_reflector {
        sides.push((GROW_ROW, 0, Side::Reflect("xlb_bench_reflect_grow")));
    }
    let rival = if opts.katran {
        let r = Rival::load(&rig, &frames, sizes, &opts.katran_src)?;
        sides.push((IPIP_ROW, 3, Side::XlbIpip));
        if r.katran.is_ok() {
            sides.push((KATRAN_ROW, 3, Side::Katran));
        }
        Some(r)
    } else {
        None
    };
    let mut planes = Planes { dp: &mut dp, pin: pin.path(), lbside: &mut lbside, rival };
    let mut got: Vec<Vec<Vec<Rate>>> = vec![vec![Vec::new(); sides.len()]; ms.len()];
    for round in 0..opts.rounds as usize {
        // Rotating order: each side goes first in turn.
        for j in 0..sides.len() {
            let side = (j + round) % sides.len();
            let link = planes.attach(&rig.lb, sides[side].2)?;
            for (i, (name, t)) in ms.iter().enumerate() {
                phase(name, sides[side].0);
                got[i][side].push(rig.measure(t, opts.seconds, opts.batch)?);
            }
            planes.detach(sides[side].2, link)?;
        }
    }
    let mut rows = Vec::new();
    for (i, (name, _)) in ms.iter().enumerate() {
        let m =
            |k: usize, f: fn(&Rate) -> f64| median(&got[i][k].iter().map(f).collect::<Vec<_>>());
        let recv = |r: &Rate| r.received;
        let wall = |r: &Rate| r.received_wall;
        let cpu = |r: &Rate| r.cpu_ns_per_packet;
        let busy = |r: &Rate| r.received_busy;
        let delivered = |k: usize| m(k, recv) / m(k, |r| r.sent);
        for (k, (dataplane, services, side)) in sides.iter().enumerate() {
            // A rival that loses the frames has no rate to show: its
            // delivered share must be the reflector's, within 20 %.
            let error = (matches!(side, Side::Katran | Side::XlbIpip)
                && delivered(k) < 0.8 * delivered(0))
            .then(|| {
                format!(
                    "not forwarded: {:.0} % of the frames sent arrived (reflector {:.0} %)",
                    100.0 * delivered(k),
                    100.0 * delivered(0)
                )
            });
            rows.push(PpsRow {
                error,
                mix: name.to_string(),
                dataplane: dataplane.to_string(),
                services: *services,
                sent_mpps: m(k, |r| r.sent) / 1e6,
                received_mpps: m(k, recv) / 1e6,
                vs_limit: Some(m(k, recv) / m(0, recv)),
                received_mpps_wall: Some(m(k, wall) / 1e6),
                vs_limit_wall: Some(m(k, wall) / m(0, wall)),
                cpu_ns_per_packet: Some(m(k, cpu)),
                received_mpps_busy: Some(m(k, busy) / 1e6),
                vs_limit_busy: Some(m(k, busy) / m(0, busy)),
            });
        }
        if let Some(Rival { katran: Err(e), .. }) = &planes.rival {
            rows.push(PpsRow {
                error: Some(e.clone()),
                ..PpsRow::plain(name, KATRAN_ROW.into(), 3, f64::NAN, f64::NAN)
            });
        }
    }

    load.push(loadavg());
    let in_situ = if opts.prog_stats {
        in_situ(&mut rig, &mut planes, &sides, &ms, opts)?
    } else {
        Vec::new()
    };
    drop(planes);
    if opts.mixes_only {
        drop(dp);
        drop(rig);
        drop(pin);
        return Ok(PpsReport {
            generator: generator_name,
            seconds: opts.seconds,
            rounds: opts.rounds,
            mixes: rows,
            sweep: Vec::new(),
            programming,
            held: Vec::new(),
            loadavg: load,
            in_situ,
        });
    }

    // Held flows under a flood, guard on (the default) and off.
    let mut held = Vec::new();
    for rate in [lb::loader::DEFAULT_CT_INSERT_RATE, 0] {
        held.push(held_under_flood(&mut rig, opts, &syn, rate)?);
    }

    // Scale sweep: new connections (SYN, new source per packet).
    let flood = [Template::new_flow(&syn)];
    let mut sweep = Vec::new();
    for &n in &opts.services {
        let t0 = Instant::now();
        applier.apply(&setup::scale_desired(n, SWEEP_BACKENDS, SWEEP_MAGLEV))?;
        programming.push(ProgramTime {
            dataplane: "xlb".into(),
            services: n,
            seconds: t0.elapsed().as_secs_f64(),
        });
        let lb = &rig.lb;
        lb.run_in(|| dp.attach_xdp("eth0", XdpMode::Native))??;
        let mut v = Vec::new();
        let mut s = Vec::new();
        for _ in 0..opts.rounds {
            let Rate { sent: a, received: b, .. } =
                rig.measure(&flood, opts.seconds, opts.batch)?;
            s.push(a);
            v.push(b);
        }
        Dataplane::detach_all(pin.path())?;
        sweep.push(PpsRow::plain(
            "new connection (SYN)",
            "xlb".into(),
            n,
            median(&s) / 1e6,
            median(&v) / 1e6,
        ));
    }
    drop(dp);
    drop(rig);
    // kube-proxy: a fresh rig per ruleset (conntrack starts empty).
    for &n in opts.services.iter().filter(|n| **n <= 10_000) {
        for mode in ["iptables", "nftables"] {
            let mut rig = build_rig(opts.generator)?;
            let mut passp = crate::benchprog::load_pass()?;
            let pass: &mut Xdp = passp.program_mut("xlb_pass").context("xlb_pass")?.try_into()?;
            attach_in(&rig.lb, pass)?;
            let mut svcs = synthetic(n - 1, 2, Ipv4Addr::new(10, 101, 0, 1), 80, 8080);
            // 16 endpoints: masquerading (externalTrafficPolicy Cluster) gives
            // each endpoint ~64k source ports, so a flood of new connections
            // exhausts a 2-endpoint service's NAT tuples within a round.
            let mut target = synthetic(1, 16, Ipv4Addr::new(10, 100, 0, 1), 80, 8080).remove(0);
            target.name = "measured".into();
            target.cluster_ip = Ipv4Addr::new(10, 97, 0, 1);
            svcs.push(target);
            let t0 = Instant::now();
            if mode == "iptables" {
                let rules = iptables_restore(&svcs, &KpConfig::default())?;
                run_with_input(
                    "ip",
                    &["netns", "exec", rig.lb.name(), "iptables-restore", "--noflush"],
                    rules.as_bytes(),
                )?;
            } else {
                let rules = nftables(&svcs, &KpConfig::default())?;
                run_with_input(
                    "ip",
                    &["netns", "exec", rig.lb.name(), "nft", "-f", "-"],
                    rules.as_bytes(),
                )?;
            }
            programming.push(ProgramTime {
                dataplane: mode.into(),
                services: n,
                seconds: t0.elapsed().as_secs_f64(),
            });
            let mut v = Vec::new();
            let mut s = Vec::new();
            for _ in 0..opts.rounds {
                let Rate { sent: a, received: b, .. } =
                    rig.measure(&flood, opts.seconds.min(0.3), opts.batch)?;
                s.push(a);
                v.push(b);
            }
            sweep.push(PpsRow::plain(
                "new connection (SYN)",
                format!("kube-proxy {mode}"),
                n,
                median(&s) / 1e6,
                median(&v) / 1e6,
            ));
        }
    }
    drop(pin);
    Ok(PpsReport {
        generator: generator_name,
        seconds: opts.seconds,
        rounds: opts.rounds,
        mixes: rows,
        sweep,
        programming,
        held,
        loadavg: load,
        in_situ,
    })
}

/// `--prog-stats`: the mixes again (reflector and xlb interleaved, `rounds`
/// rounds) with the kernel's BPF run-time statistics on, each program's ns
/// per run read around each measurement.
fn in_situ(
    rig: &mut Rig,
    planes: &mut Planes,
    sides: &[(&str, u32, Side)],
    ms: &[(&'static str, Vec<Template>)],
    opts: &PpsOpts,
) -> Result<Vec<InSituRow>> {
    let _on = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| anyhow::anyhow!("BPF_ENABLE_STATS: {e}"))?;
    // [mix][side] -> samples of (received, cycle, gen, lb, sink).
    let mut samples = vec![vec![Vec::new(); sides.len()]; ms.len()];
    for round in 0..opts.rounds as usize {
        for j in 0..sides.len() {
            let k = (j + round) % sides.len();
            let side = sides[k].2;
            let link = planes.attach(&rig.lb, side)?;
            for (i, (_, t)) in ms.iter().enumerate() {
                let g0 = run_stats(rig.bench.wrapper())?;
                let s0 = run_stats(rig.bench.program("xlb_bench_sink")?)?;
                let l0 = planes.run_stats(side)?;
                let m = rig.measure(t, opts.seconds, opts.batch)?;
                let g1 = run_stats(rig.bench.wrapper())?;
                let s1 = run_stats(rig.bench.program("xlb_bench_sink")?)?;
                let l1 = planes.run_stats(side)?;
                samples[i][k].push([
                    m.received,
                    m.cpu_ns_per_packet,
                    per_run(g0, g1),
                    per_run(l0, l1),
                    per_run(s0, s1),
                ]);
            }
            planes.detach(side, link)?;
        }
    }
    let mut rows = Vec::new();
    for (i, (name, _)) in ms.iter().enumerate() {
        for (k, (dataplane, _, _)) in sides.iter().enumerate() {
            let col = |c: usize| median(&samples[i][k].iter().map(|s| s[c]).collect::<Vec<_>>());
            let (r, cycle, g, l, sk) = (col(0), col(1), col(2), col(3), col(4));
            rows.push(InSituRow {
                mix: name.to_string(),
                dataplane: dataplane.to_string(),
                received_mpps: r / 1e6,
                cycle_ns: cycle,
                generator_ns: g,
                lb_ns: l,
                sink_ns: sk,
                rest_ns: cycle - g - l - sk,
            });
        }
    }
    Ok(rows)
}

// ---- held connections under a new-flow flood (#14 item 2) ------------------

/// Flows held through the VIP while a SYN flood runs and the service's
/// table changes under them: with the connection table's insert budget (the
/// flood guard) and without.
#[derive(Clone, Debug, Serialize)]
pub struct HeldRow {
    /// New connection-table entries allowed per second per CPU (0: no limit).
    pub ct_insert_rate: u32,
    pub held: u32,
    /// Held flows that reached another backend at some check.
    pub broken: u32,
    /// Table changes (100 ⇄ 200 backends) made during the flood.
    pub changes: u32,
    pub flood_sent_mpps: f64,
    pub flood_received_mpps: f64,
    /// xlb_ct_guard: entries the flood wrote, flows it got without one.
    pub inserted: u64,
    pub skipped: u64,
}

/// Held flows of `held_under_flood`.
const HELD: u16 = 96;
/// Flood slices; after each the table changes and every held flow is checked.
const HELD_CHECKS: u32 = 10;
/// The connection table of the held-flows run: the generator here reaches
/// well under a Mpps, so a 64k table stands for the default 512k one under
/// a NIC's multi-Mpps flood (a slice of the flood cycles it at least once
/// without the guard).
const HELD_CT: u32 = 65536;

/// The SYN (or, `ack`, the ACK) of held flow `i`: the template's flow from
/// source port 40000 + i.
fn held_frame(syn: &[u8], i: u16, ack: bool) -> Vec<u8> {
    let mut f = syn.to_vec();
    let l4 = 14 + usize::from(f[14] & 0x0f) * 4;
    f[l4..l4 + 2].copy_from_slice(&(40000 + i).to_be_bytes());
    if ack {
        f[l4 + 13] = 0x10;
    }
    f
}

/// 96 flows through the VIP, then a SYN flood in slices; after each slice
/// the service's table changes (100 ⇄ 200 backends: Maglev would move about
/// half of a flow's choices) and every held flow sends a packet: a flow
/// whose packet leaves differently from its first (another backend) is
/// broken. The held flows' packets keep their entries fresh, as live
/// connections do.
fn held_under_flood(rig: &mut Rig, opts: &PpsOpts, syn: &[u8], rate: u32) -> Result<HeldRow> {
    let pin = PinDir::new(&format!("held{rate}"));
    let mut dp = Dataplane::load(&LoadOptions {
        pin_dir: pin.path().to_path_buf(),
        sizes: MapSizes { ct: HELD_CT, ..MapSizes::default() },
        ct_insert_rate: rate,
        ..LoadOptions::default()
    })?;
    let mut applier = Datapath::open(pin.path())?;
    let tables = [setup::bench_desired(), setup::bench_desired_backends(200)];
    applier.apply(&tables[0])?;
    let lb_if = rig.lb.run_in(|| ifindex("eth0"))?.context("the LB's eth0")?;
    let send = |ns: &NamedNetns, dp: &mut Dataplane, frame: &[u8]| -> Result<Vec<u8>> {
        let mut out = vec![0u8; frame.len() + 256];
        let r = ns.run_in(|| test_run(dp.xdp_program(), frame, lb_if, 1, Some(&mut out)))??;
        out.truncate(r.data_size_out as usize);
        Ok(out)
    };
    let first: Vec<Vec<u8>> = (0..HELD)
        .map(|i| {
            send(&rig.lb, &mut dp, &held_frame(syn, i, false))?;
            send(&rig.lb, &mut dp, &held_frame(syn, i, true))
        })
        .collect::<Result<_>>()?;
    let guard0 = applier.store().ct_guard()?;
    rig.lb.run_in(|| dp.attach_xdp("eth0", XdpMode::Native))??;
    let flood = [Template::new_flow(syn)];
    let mut broken = vec![false; usize::from(HELD)];
    let (mut sent, mut got) = (Vec::new(), Vec::new());
    for check in 0..HELD_CHECKS {
        let Rate { sent: s, received: r, .. } =
            rig.measure(&flood, opts.seconds / f64::from(HELD_CHECKS), opts.batch)?;
        sent.push(s);
        got.push(r);
        applier.apply(&tables[(check as usize + 1) % 2])?;
        for i in 0..HELD {
            if send(&rig.lb, &mut dp, &held_frame(syn, i, true))? != first[usize::from(i)] {
                broken[usize::from(i)] = true;
            }
        }
    }
    Dataplane::detach_all(pin.path())?;
    let guard = applier.store().ct_guard()?;
    Ok(HeldRow {
        ct_insert_rate: rate,
        held: u32::from(HELD),
        broken: broken.iter().filter(|b| **b).count() as u32,
        changes: HELD_CHECKS,
        flood_sent_mpps: median(&sent) / 1e6,
        flood_received_mpps: median(&got) / 1e6,
        inserted: guard.inserted - guard0.inserted,
        skipped: guard.skipped - guard0.skipped,
    })
}

impl PpsReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "Packet rate through the LB veth (generator: {} → LB eth0 → back to the generator's XDP sink, which counts), one core, {} rounds × {:.1} s, medians; load average {}\n\n",
            self.generator,
            self.rounds,
            self.seconds,
            self.loadavg.iter().map(|l| format!("{l:.2}")).collect::<Vec<_>>().join(" → ")
        );
        s.push_str("| mix | dataplane | sent Mpps | received Mpps | vs limit | CPU ns/packet | received Mpps, busy time | vs limit, busy time | received Mpps, wall clock | vs limit, wall clock |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let opt = |v: Option<f64>, d: usize| v.map_or("-".into(), |x| format!("{x:.d$}"));
        for r in &self.mixes {
            if let Some(e) = &r.error {
                s.push_str(&format!(
                    "| {} | {} | error: {} | | | | | | | |\n",
                    r.mix,
                    r.dataplane,
                    e.replace('|', "/").replace('\n', " ")
                ));
                continue;
            }
            s.push_str(&format!(
                "| {} | {} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} |\n",
                r.mix,
                r.dataplane,
                r.sent_mpps,
                r.received_mpps,
                opt(r.vs_limit, 2),
                opt(r.cpu_ns_per_packet, 0),
                opt(r.received_mpps_busy, 2),
                opt(r.vs_limit_busy, 2),
                opt(r.received_mpps_wall, 2),
                opt(r.vs_limit_wall, 2),
            ));
        }
        s.push_str("\nReceived Mpps: per second of the rig's CPU time (live frames: generator, LB and sink all run on the generator's thread, softirq included; AF_PACKET: per second the generator was running or runnable) — the rate on a core of its own. Busy time adds the time other tasks held the shared CPU (it swings between rounds); wall clock also counts the generator's sleeps (each live-frames syscall waits for two RCU grace periods: the XDP dispatcher's program swap), in which no packet moves: that adds the same time to every packet and pulls ratios towards 1 (the harness's figure before session 8, with `--frames-per-call 65536`).\n");
        if !self.in_situ.is_empty() {
            s.push_str("\nWhere a packet's time goes (kernel BPF run-time statistics on: each program's run_time_ns / run_cnt; the statistics' own clock reads are inside every program's figure; ns/packet = CPU time of the generator's thread (softirq included) per packet received, rest = that − the three programs)\n\n");
            s.push_str("| mix | dataplane | received Mpps | ns/packet | generator ns | LB program ns | sink ns | rest ns |\n|---|---|---:|---:|---:|---:|---:|---:|\n");
            for r in &self.in_situ {
                s.push_str(&format!(
                    "| {} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
                    r.mix,
                    r.dataplane,
                    r.received_mpps,
                    r.cycle_ns,
                    r.generator_ns,
                    r.lb_ns,
                    r.sink_ns,
                    r.rest_ns
                ));
            }
        }
        if self.sweep.is_empty() {
            return s;
        }
        s.push_str("\nNew-connection rate (SYN, new source per packet) by number of services\n\n");
        s.push_str("| dataplane | services | sent Mpps | received Mpps | vs xlb (same N) |\n|---|---:|---:|---:|---:|\n");
        for r in &self.sweep {
            let x = self
                .sweep
                .iter()
                .find(|o| o.dataplane == "xlb" && o.services == r.services)
                .map(|o| r.received_mpps / o.received_mpps);
            s.push_str(&format!(
                "| {} | {} | {:.3} | {:.3} | {} |\n",
                r.dataplane,
                r.services,
                r.sent_mpps,
                r.received_mpps,
                x.map_or("-".into(), |x| format!("{x:.3}"))
            ));
        }
        s.push_str(&format!(
            "\nHeld flows under a SYN flood ({HELD} flows, a {HELD_CT}-entry connection table, the service's table changing 100 ⇄ 200 backends after each of {HELD_CHECKS} slices; a flow is broken when a packet reaches another backend)\n\n"
        ));
        s.push_str("| ct insert budget /s/CPU | held | broken | flood sent Mpps | flood received Mpps | entries written | flows without entry |\n|---:|---:|---:|---:|---:|---:|---:|\n");
        for h in &self.held {
            let budget =
                if h.ct_insert_rate == 0 { "none".into() } else { h.ct_insert_rate.to_string() };
            s.push_str(&format!(
                "| {budget} | {} | {} | {:.3} | {:.3} | {} | {} |\n",
                h.held, h.broken, h.flood_sent_mpps, h.flood_received_mpps, h.inserted, h.skipped
            ));
        }
        s.push_str("\nProgramming time from scratch\n\n| dataplane | services | seconds |\n|---|---:|---:|\n");
        for p in &self.programming {
            s.push_str(&format!("| {} | {} | {:.3} |\n", p.dataplane, p.services, p.seconds));
        }
        s
    }
}
