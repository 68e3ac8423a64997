//! `xlb-perf encap`: what Geneve costs over IPIP per packet. Two datapaths
//! (each its own maps, loaded and programmed like `micro`: the reference
//! frames' services, 100 backends each), one with every service in Geneve
//! mode (the default: DNAT + outer Ethernet/IP/UDP/Geneve + DSR option), one
//! in IPIP mode (outer Ethernet/IP only, inner packet as sent). The working
//! tree's xlb_xdp runs on both; `--rev REV` (repeatable: a revision, or an
//! xlb_xdp object file) adds another object on the same two datapaths
//! (compare.rs builds and loads it), so a change's Geneve − IPIP is read
//! beside its base's from one run. Timed as `compare` times objects: the
//! xlb_bench wrapper, each round xlb_pass and every loaded copy of every
//! (object, mode) on one frame in a rotating order; net = median over
//! rounds and copies of (program − xlb_pass of the same round); Δ = Geneve −
//! IPIP of the same round and copy, its median. Each object's output frames
//! are checked against the tree's in both modes first (after the flow's
//! first packet): a change of the datapath that moves a byte shows as
//! "same output: NO".
use anyhow::{Context, Result};
use aya::Ebpf;
use lb::{
    datapath::Datapath,
    loader::{Dataplane, LoadOptions, MapSizes, DEFAULT_CT_INSERT_RATE},
    model::Encap,
};
use serde::Serialize;
use testkit::{
    netns::{ifindex, in_private_netns},
    pins::PinDir,
};
use xlb_perf::stats::{loadavg, median};

use crate::{
    benchprog::{load_pass, test_run, xdp_of, Bench, Template},
    compare::{build_rev, load_copies, shared_pins},
    micro::read_frames,
    setup,
};

/// One object's figures on one frame.
#[derive(Clone, Debug, Serialize)]
pub struct EncapCell {
    pub geneve_ns: f64,
    pub ipip_ns: f64,
    /// Median over rounds and copies of (Geneve − IPIP).
    pub delta_ns: f64,
    /// Fastest Geneve run − fastest IPIP run (over rounds and copies): on
    /// a shared machine noise only adds time, so the minima are the
    /// figure least moved by other load.
    pub delta_min_ns: f64,
    /// Median over rounds and copies of (the tree's Geneve − this
    /// object's Geneve): what the tree changed in Geneve mode.
    pub tree_geneve_minus_ns: f64,
    /// Same verdict and output frame as the working tree's, both modes.
    pub same_output: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct EncapRow {
    pub frame: String,
    /// The working tree's.
    pub geneve_ns: f64,
    pub ipip_ns: f64,
    pub delta_ns: f64,
    pub delta_min_ns: f64,
    /// Each `--rev` object's, in the order given.
    pub revs: Vec<EncapCell>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EncapReport {
    pub rounds: u32,
    pub repeat: u32,
    pub copies: u32,
    /// (as given, commit or object path) per `--rev`.
    pub revs: Vec<(String, String)>,
    /// Load average (1 min) before and after the run.
    pub load: [f64; 2],
    pub rows: Vec<EncapRow>,
}

#[derive(Clone, Debug)]
pub struct EncapOpts {
    pub packets: std::path::PathBuf,
    pub rounds: u32,
    pub repeat: u32,
    pub copies: u32,
    pub revs: Vec<String>,
}

pub(crate) fn load(encap: Encap) -> Result<(PinDir, Dataplane)> {
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

pub fn run(o: &EncapOpts) -> Result<EncapReport> {
    let frames = read_frames(&o.packets)?;
    let mut objs = Vec::new();
    for rev in &o.revs {
        let (commit, bytes) = build_rev(rev)?;
        objs.push((rev.clone(), commit, bytes));
    }
    let o = o.clone();
    in_private_netns(move || run_inside(&o, frames, objs))?
}

/// The verdict and output frame of `e`'s xlb_xdp on `frame`'s second
/// packet (the first inserts the flow).
fn output(e: &Ebpf, frame: &[u8], ifindex: u32) -> Result<(u32, Vec<u8>)> {
    let p = xdp_of(e, "xlb_xdp")?;
    let mut out = vec![0u8; 512];
    test_run(p, frame, ifindex, 1, None)?;
    let r = test_run(p, frame, ifindex, 1, Some(&mut out))?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}

fn run_inside(
    o: &EncapOpts,
    frames: Vec<(String, Vec<u8>)>,
    objs: Vec<(String, String, Vec<u8>)>,
) -> Result<EncapReport> {
    let load_before = loadavg();
    setup::lb_port("xb0", "xb1")?;
    let ifindex = ifindex("xb0").context("xb0 has no ifindex")?;
    let (gp, _geneve) = load(Encap::Geneve)?;
    let (ip, _ipip) = load(Encap::Ipip)?;
    // loaded[object][mode]: copies of the object on that mode's maps; the
    // tree first. A --rev object's maps of another layout are its own.
    let mut pins = Vec::new();
    let mut loaded: Vec<[Vec<Ebpf>; 2]> = vec![[
        load_copies(lb::objects::xdp(), gp.path(), o.copies, DEFAULT_CT_INSERT_RATE)?,
        load_copies(lb::objects::xdp(), ip.path(), o.copies, DEFAULT_CT_INSERT_RATE)?,
    ]];
    for (rev, _, bytes) in &objs {
        let mut modes: [Vec<Ebpf>; 2] = Default::default();
        for (m, tree) in [gp.path(), ip.path()].into_iter().enumerate() {
            let p = PinDir::new("encap-rev");
            std::fs::create_dir_all(p.path())?;
            shared_pins(bytes, tree, p.path())?;
            modes[m] = load_copies(bytes, p.path(), o.copies, DEFAULT_CT_INSERT_RATE)
                .with_context(|| format!("loading {rev}"))?;
            pins.push(p);
        }
        loaded.push(modes);
    }
    let pass = load_pass()?;
    let mut bench = Bench::load()?;

    // Behaviour, and the flows' first packets (their connection-table
    // entries): every object against the tree's, in both modes.
    let mut same = vec![vec![true; frames.len()]; loaded.len()];
    for (fi, (_, f)) in frames.iter().enumerate() {
        for m in 0..2 {
            let want = output(&loaded[0][m][0], f, ifindex)?;
            for (oi, obj) in loaded.iter().enumerate().skip(1) {
                same[oi][fi] &= output(&obj[m][0], f, ifindex)? == want;
            }
        }
    }
    // Slots: xlb_pass, then per object per mode its copies.
    let copies = o.copies as usize;
    let mut fds = vec![xdp_of(&pass, "xlb_pass")?.fd()?.try_clone()?];
    for obj in &loaded {
        for mode in obj {
            for e in mode {
                fds.push(xdp_of(e, "xlb_xdp")?.fd()?.try_clone()?);
            }
        }
    }
    let slot = |obj: usize, mode: usize, copy: usize| 1 + (obj * 2 + mode) * copies + copy;
    let tpls: Vec<Template> = frames.iter().map(|(_, f)| Template::fixed(f)).collect();
    let times = bench.time_rotating(&tpls, &fds, o.rounds, o.repeat, ifindex)?;
    let mut rows = Vec::new();
    for (ci, (name, _)) in frames.iter().enumerate() {
        let t = &times[ci];
        let cell = |obj: usize| {
            let net = |mode: usize| {
                let d: Vec<f64> = (0..copies)
                    .flat_map(|c| t[slot(obj, mode, c)].iter().zip(&t[0]).map(|(x, b)| x - b))
                    .collect();
                median(&d)
            };
            let d: Vec<f64> = (0..copies)
                .flat_map(|c| {
                    t[slot(obj, 0, c)].iter().zip(&t[slot(obj, 1, c)]).map(|(g, i)| g - i)
                })
                .collect();
            let vs: Vec<f64> = (0..copies)
                .flat_map(|c| t[slot(0, 0, c)].iter().zip(&t[slot(obj, 0, c)]).map(|(x, y)| x - y))
                .collect();
            let min = |mode: usize| {
                (0..copies)
                    .flat_map(|c| t[slot(obj, mode, c)].iter().copied())
                    .fold(f64::INFINITY, f64::min)
            };
            EncapCell {
                geneve_ns: net(0),
                ipip_ns: net(1),
                delta_ns: median(&d),
                delta_min_ns: min(0) - min(1),
                tree_geneve_minus_ns: median(&vs),
                same_output: same[obj][ci],
            }
        };
        let tree = cell(0);
        rows.push(EncapRow {
            frame: name.clone(),
            geneve_ns: tree.geneve_ns,
            ipip_ns: tree.ipip_ns,
            delta_ns: tree.delta_ns,
            delta_min_ns: tree.delta_min_ns,
            revs: (1..loaded.len()).map(cell).collect(),
        });
    }
    Ok(EncapReport {
        rounds: o.rounds,
        repeat: o.repeat,
        copies: o.copies,
        revs: objs.into_iter().map(|(r, c, _)| (r, c)).collect(),
        load: [load_before, loadavg()],
        rows,
    })
}

fn short(commit: &str) -> &str {
    if commit.ends_with(".o") {
        commit.trim_start_matches('0')
    } else {
        &commit[..commit.len().min(10)]
    }
}

impl EncapReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Geneve vs IPIP (xlb-perf encap)\n\nNet ns/packet over xlb_pass, same wrapper, one \
             interleaved run: {} rounds × {} iterations, {} load(s) of each object per mode, \
             medians; load average {:.1} → {:.1}; target: Geneve within 10 ns of IPIP on every \
             frame. Δ min: fastest Geneve run − fastest IPIP run (noise only adds \
             time).\n\n| frame | Geneve ns | IPIP ns | Δ Geneve − IPIP | Δ min | within 10 ns |",
            self.rounds, self.repeat, self.copies, self.load[0], self.load[1]
        );
        for (rev, commit) in &self.revs {
            s.push_str(&format!(
                " {rev} ({}) Δ (Geneve/IPIP) | Δ min | tree − rev: Δ | Geneve | same output |",
                short(commit)
            ));
        }
        s.push_str("\n|---|---:|---:|---:|---:|---|");
        for _ in &self.revs {
            s.push_str("---:|---:|---:|---:|---|");
        }
        s.push('\n');
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {:.0} | {:.0} | {:+.1} | {:+.1} | {} |",
                r.frame,
                r.geneve_ns,
                r.ipip_ns,
                r.delta_ns,
                r.delta_min_ns,
                if r.delta_ns <= 10.0 { "yes" } else { "no" }
            ));
            for c in &r.revs {
                s.push_str(&format!(
                    " {:+.1} ({:.0}/{:.0}) | {:+.1} | {:+.1} | {:+.1} | {} |",
                    c.delta_ns,
                    c.geneve_ns,
                    c.ipip_ns,
                    c.delta_min_ns,
                    r.delta_ns - c.delta_ns,
                    c.tree_geneve_minus_ns,
                    if c.same_output { "yes" } else { "NO" }
                ));
            }
            s.push('\n');
        }
        s
    }
}
