//! `xlb-perf encap`: what Geneve costs over IPIP per packet. Two datapaths
//! (each its own maps and xlb_xdp, loaded and programmed like `micro`: the
//! reference frames' services, 100 backends each), one with every service
//! in Geneve mode (the default: DNAT + outer Ethernet/IP/UDP/Geneve + DSR
//! option), one in IPIP mode (outer Ethernet/IP only, inner packet as
//! sent). Timed as `compare` times two objects: the xlb_bench wrapper,
//! each round xlb_pass and both programs on one frame in a rotating order,
//! net = median over rounds of (program − xlb_pass of the same round);
//! Δ = Geneve − IPIP per round, its median.
use anyhow::{Context, Result};
use lb::{
    datapath::Datapath,
    loader::{Dataplane, LoadOptions, MapSizes},
    model::Encap,
};
use serde::Serialize;
use testkit::{
    netns::{ifindex, in_private_netns},
    pins::PinDir,
};
use xlb_perf::stats::median;

use crate::{
    benchprog::{load_pass, test_run, xdp_of, Bench, Template},
    micro::read_frames,
    setup,
};

#[derive(Clone, Debug, Serialize)]
pub struct EncapRow {
    pub frame: String,
    pub geneve_ns: f64,
    pub ipip_ns: f64,
    /// Median over rounds of (Geneve − IPIP).
    pub delta_ns: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EncapReport {
    pub rounds: u32,
    pub repeat: u32,
    pub rows: Vec<EncapRow>,
}

fn load(encap: Encap) -> Result<(PinDir, Dataplane)> {
    let pin = PinDir::new("encap");
    let dp = Dataplane::load(&LoadOptions {
        pin_dir: pin.path().to_path_buf(),
        sizes: MapSizes::default(),
        ..LoadOptions::default()
    })
    .context("loading a datapath")?;
    let mut d = setup::bench_desired();
    for s in d.services.values_mut() {
        s.encap = encap;
    }
    Datapath::open(pin.path())?.apply(&d).context("programming the services")?;
    Ok((pin, dp))
}

pub fn run(packets: &std::path::Path, rounds: u32, repeat: u32) -> Result<EncapReport> {
    let frames = read_frames(packets)?;
    in_private_netns(move || run_inside(frames, rounds, repeat))?
}

fn run_inside(frames: Vec<(String, Vec<u8>)>, rounds: u32, repeat: u32) -> Result<EncapReport> {
    setup::lb_port("xb0", "xb1")?;
    let ifindex = ifindex("xb0").context("xb0 has no ifindex")?;
    let (_gp, mut geneve) = load(Encap::Geneve)?;
    let (_ip, mut ipip) = load(Encap::Ipip)?;
    let pass = load_pass()?;
    let mut bench = Bench::load()?;
    // Slots: xlb_pass, Geneve, IPIP.
    let fds = [
        xdp_of(&pass, "xlb_pass")?.fd()?.try_clone()?,
        geneve.xdp_program().fd()?.try_clone()?,
        ipip.xdp_program().fd()?.try_clone()?,
    ];
    // The flows' first packets (their connection-table entries).
    for (_, f) in &frames {
        test_run(geneve.xdp_program(), f, ifindex, 1, None)?;
        test_run(ipip.xdp_program(), f, ifindex, 1, None)?;
    }
    let mut rows = Vec::new();
    let mut times = vec![[Vec::new(), Vec::new(), Vec::new()]; frames.len()];
    for round in 0..rounds as usize {
        for (ci, (_, f)) in frames.iter().enumerate() {
            bench.set_templates(&[Template::fixed(f)])?;
            for j in 0..3 {
                let slot = (j + round + ci) % 3;
                bench.set_target(&fds[slot])?;
                let r = test_run(bench.wrapper(), f, ifindex, repeat, None)?;
                times[ci][slot].push(r.duration.as_nanos() as f64);
            }
        }
    }
    for (ci, (name, _)) in frames.iter().enumerate() {
        let t = &times[ci];
        let net =
            |s: usize| median(&t[s].iter().zip(&t[0]).map(|(x, b)| x - b).collect::<Vec<_>>());
        let delta = median(&t[1].iter().zip(&t[2]).map(|(g, i)| g - i).collect::<Vec<_>>());
        rows.push(EncapRow {
            frame: name.clone(),
            geneve_ns: net(1),
            ipip_ns: net(2),
            delta_ns: delta,
        });
    }
    Ok(EncapReport { rounds, repeat, rows })
}

impl EncapReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Geneve vs IPIP (xlb-perf encap)\n\nNet ns/packet over xlb_pass, same wrapper, one \
             interleaved run: {} rounds × {} iterations, medians; target: Geneve within 10 ns of \
             IPIP on every frame.\n\n| frame | Geneve ns | IPIP ns | Δ Geneve − IPIP | within 10 ns |\n\
             |---|---:|---:|---:|---|\n",
            self.rounds, self.repeat
        );
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {:.0} | {:.0} | {:+.0} | {} |\n",
                r.frame,
                r.geneve_ns,
                r.ipip_ns,
                r.delta_ns,
                if r.delta_ns <= 10.0 { "yes" } else { "no" }
            ));
        }
        s
    }
}
