//! `xlb-perf compare REV`: the XDP program of another revision against the
//! working tree's, timed in one interleaved run, so a change that costs a few
//! ns per packet shows up (no silent regressions).
//!
//! REV may also name an xlb_xdp object file (`*.o`, e.g. a variant with a
//! stage short-circuited): it is timed as is.
//! The other revision's BPF sources (`git archive REV xdp tc lb/bpf`) are
//! compiled in a temporary directory with the build's own clang invocation
//! (bpf_build::Clang). Both objects run on the maps of one datapath loaded
//! and programmed by the working tree like `micro` (the reference frames'
//! services, M = 16381 so the table sits in xlb_maglev, which every
//! revision reads). A map of the other object whose type, key or value size
//! differs from the working tree's (another ABI) gets an instance of its own
//! (empty: counters, caches); every other map is shared through a pin
//! directory of its own that re-pins the working tree's maps.
//!
//! Timing is micro's and lb/tests/perf_ablation.rs's method: the xlb_bench
//! wrapper restores the frame each iteration and tail-calls the program under
//! test; each round times xlb_pass and every loaded copy of both objects on
//! one frame in a rotating order; a figure is the median over rounds and
//! copies of (program - xlb_pass of the same round), with the quartiles.
//! Each object is loaded `copies` times: where the JIT image lands moves a
//! load's time by a few ns.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context, Result};
use aya::{maps::MapData, programs::Xdp, Ebpf, EbpfLoader};
use lb::{
    datapath::Datapath,
    loader::{Dataplane, LoadOptions, MapSizes},
};
use serde::Serialize;
use testkit::{
    netns::{ifindex, in_private_netns},
    pins::PinDir,
};

use crate::{
    benchprog::{load_pass, test_run, xdp_of, Bench, Template},
    micro::{read_frames, NEW_DEST, NEW_FLOW},
    setup,
};

#[derive(Clone, Debug)]
pub struct CompareOpts {
    /// The other revision (anything `git archive` takes).
    pub rev: String,
    pub packets: PathBuf,
    pub rounds: u32,
    pub repeat: u32,
    pub copies: u32,
    /// xlb_ct_insert_rate of every loaded copy (0: no budget, every new
    /// flow inserts; 125000: the agent's default, so a flood of new flows
    /// is served past the budget as under `xlb-perf pps`).
    pub ct_insert_rate: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompareRow {
    pub frame: String,
    pub pass_ns: f64,
    /// Net ns of the other revision: median, first and third quartile.
    pub rev_ns: [f64; 3],
    /// Net ns of the working tree.
    pub tree_ns: [f64; 3],
    /// Net ns of the working tree's program loaded by lb::loader::Dataplane
    /// (as micro and pps load it) instead of the copies' loader.
    pub dataplane_ns: [f64; 3],
    /// Same verdict and output frame for both (after the flow's first packet).
    pub same_behaviour: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    pub rev: String,
    pub commit: String,
    pub rounds: u32,
    pub repeat: u32,
    pub copies: u32,
    pub ct_insert_rate: u32,
    /// Maps the other object does not share (another layout).
    pub own_maps: Vec<String>,
    pub rows: Vec<CompareRow>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn git(args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo_root())
        .args(args)
        .output()
        .context("running git")?;
    ensure!(
        out.status.success(),
        "git {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out.stdout)
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `rev`'s xlb_xdp object, compiled like the build compiles the working
/// tree's: (full commit id, object bytes).
pub fn build_rev(rev: &str) -> Result<(String, Vec<u8>)> {
    // An object file instead of a revision: a variant built by hand (an
    // ablation: a stage short-circuited), timed the same way.
    if rev.ends_with(".o") && Path::new(rev).is_file() {
        let bytes = std::fs::read(rev).with_context(|| format!("reading {rev}"))?;
        return Ok((format!("{rev:0>10}"), bytes));
    }
    build_rev_object(rev, "xdp/xlb_xdp.c")
}

/// `src` (a BPF C file under xdp/ or tc/) of revision `rev` compiled like
/// the build compiles the working tree's: (full commit id, object bytes).
pub(crate) fn build_rev_object(rev: &str, src: &str) -> Result<(String, Vec<u8>)> {
    let commit = String::from_utf8(git(&["rev-parse", "--verify", &format!("{rev}^{{commit}}")])?)?
        .trim()
        .to_string();
    let dir = TempDir(std::env::temp_dir().join(format!("xlb-compare-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let tar = git(&["archive", "--format=tar", &commit, "xdp", "tc", "lb/bpf"])?;
    let mut untar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&dir.0)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("running tar")?;
    std::io::Write::write_all(untar.stdin.as_mut().context("tar stdin")?, &tar)?;
    drop(untar.stdin.take());
    ensure!(untar.wait()?.success(), "tar -x of git archive {commit} failed");
    let clang = std::env::var("XLB_CLANG").unwrap_or_else(|_| "clang".into());
    let cc = bpf_build::Clang::at_run_time(&clang, vec![dir.0.join("lb/bpf")])
        .map_err(anyhow::Error::msg)?;
    let obj = dir.0.join("object.o");
    cc.object(&dir.0.join(src), &obj)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("compiling {src} of {commit}"))?;
    Ok((commit, std::fs::read(&obj)?))
}

/// (type, key size, value size) of a map.
fn shape(m: &MapData) -> Result<(String, u32, u32)> {
    let i = m.info()?;
    Ok((format!("{:?}", i.map_type().ok()), i.key_size(), i.value_size()))
}

/// A pin directory for `bytes`' maps: the working tree's map under every
/// name whose shape matches; the names listed in the result do not match
/// and get maps of their own when the object loads.
pub(crate) fn shared_pins(bytes: &[u8], tree: &Path, into: &Path) -> Result<Vec<String>> {
    // Learn the object's maps by loading it once with pins of its own.
    let probe = PinDir::new("cmp-probe");
    std::fs::create_dir_all(probe.path())?;
    let ebpf = EbpfLoader::new()
        .default_map_pin_directory(probe.path())
        .load(bytes)
        .context("loading the other revision's object")?;
    let mut own = Vec::new();
    for (name, map) in ebpf.maps() {
        let data = match map {
            aya::maps::Map::Array(d)
            | aya::maps::Map::HashMap(d)
            | aya::maps::Map::LruHashMap(d)
            | aya::maps::Map::PerCpuArray(d)
            | aya::maps::Map::PerCpuHashMap(d)
            | aya::maps::Map::LpmTrie(d)
            | aya::maps::Map::DevMapHash(d)
            | aya::maps::Map::RingBuf(d)
            | aya::maps::Map::ProgramArray(d) => d,
            _ => {
                own.push(name.to_string());
                continue;
            }
        };
        let pinned = tree.join(name);
        match MapData::from_pin(&pinned) {
            Ok(cur) if shape(&cur)? == shape(data)? => {
                cur.pin(into.join(name)).with_context(|| format!("re-pinning {name}"))?;
            }
            _ => own.push(name.to_string()),
        }
    }
    own.sort();
    Ok(own)
}

/// Loads `copies` instances of the object's xlb_xdp on the maps of `pins`,
/// with the connection table's insert budget `ct_insert_rate` per CPU.
pub(crate) fn load_copies(
    bytes: &[u8],
    pins: &Path,
    copies: u32,
    ct_insert_rate: u32,
) -> Result<Vec<Ebpf>> {
    (0..copies)
        .map(|_| {
            let mut loader = EbpfLoader::new();
            loader.default_map_pin_directory(pins);
            loader.override_global("xlb_events_enabled", &1u32, false);
            loader.override_global("xlb_ct_insert_rate", &ct_insert_rate, false);
            // A set-associative xlb_ct is indexed by its number of sets.
            let sets = MapData::from_pin(pins.join("xlb_ct"))
                .ok()
                .and_then(|d| d.info().ok())
                .map(|i| i.max_entries());
            if let Some(sets) = &sets {
                loader.override_global(lb::loader::CT_SETS_GLOBAL, sets, false);
            }
            // xlb_backend_stats as an ARRAY (#14) is indexed by its rows' width.
            let slots = lb::loader::pinned_backend_slots(pins);
            if let Some(slots) = &slots {
                loader.override_global(lb::loader::BACKEND_SLOTS_GLOBAL, slots, false);
            }
            let mut e = loader.load(bytes).context("loading an xlb_xdp object")?;
            let p: &mut Xdp = e.program_mut("xlb_xdp").context("no xlb_xdp")?.try_into()?;
            p.load().context("the verifier rejected xlb_xdp")?;
            Ok(e)
        })
        .collect()
}

/// Median, first and third quartile (nearest rank).
pub(crate) fn quartiles(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    [at(0.5), at(0.25), at(0.75)]
}

pub fn run(o: &CompareOpts) -> Result<CompareReport> {
    let (commit, bytes) = build_rev(&o.rev)?;
    let frames = read_frames(&o.packets)?;
    let o = o.clone();
    in_private_netns(move || run_inside(&o, commit, bytes, frames))?
}

fn run_inside(
    o: &CompareOpts,
    commit: String,
    rev_bytes: Vec<u8>,
    frames: Vec<(String, Vec<u8>)>,
) -> Result<CompareReport> {
    setup::lb_port("xb0", "xb1")?;
    let ifindex = ifindex("xb0").context("xb0 has no ifindex")?;
    let tree_pins = PinDir::new("cmp-tree");
    let mut dp = Dataplane::load(&LoadOptions {
        pin_dir: tree_pins.path().to_path_buf(),
        sizes: MapSizes::default(),
        // The same insert budget as the copies below: with the agent's
        // default a full table's new flows would mix in flood-path
        // (unpinned) packets and the column would not time an insert.
        ct_insert_rate: o.ct_insert_rate,
        ..LoadOptions::default()
    })
    .context("loading the datapath")?;
    Datapath::open(tree_pins.path())?.apply(&setup::bench_desired())?;
    let rev_pins = PinDir::new("cmp-rev");
    std::fs::create_dir_all(rev_pins.path())?;
    let own_maps = shared_pins(&rev_bytes, tree_pins.path(), rev_pins.path())?;
    let rev = load_copies(&rev_bytes, rev_pins.path(), o.copies, o.ct_insert_rate)?;
    let tree = load_copies(lb::objects::xdp(), tree_pins.path(), o.copies, o.ct_insert_rate)?;
    let pass = load_pass()?;
    let mut bench = Bench::load()?;

    // Behaviour: each frame twice through each (the first inserts the flow).
    let mut same = Vec::new();
    for (_, frame) in &frames {
        let mut outs = Vec::new();
        for e in [&rev[0], &tree[0]] {
            let p = xdp_of(e, "xlb_xdp")?;
            let mut out = vec![0u8; 512];
            test_run(p, frame, ifindex, 1, None)?;
            let r = test_run(p, frame, ifindex, 1, Some(&mut out))?;
            out.truncate(r.data_size_out as usize);
            outs.push((r.return_value, out));
        }
        same.push(outs[0] == outs[1]);
    }
    same.push(true); // new flows: outputs differ by design (new sources)
    same.push(true); // new destinations: likewise

    let mut cases: Vec<(String, Template)> =
        frames.iter().map(|(n, b)| (n.clone(), Template::fixed(b))).collect();
    cases.push((NEW_FLOW.into(), Template::new_flow(&frames[0].1)));
    // A flood to random non-service destinations: tcp_nonvip's SYN to a new
    // destination address and port each iteration (every packet a new flow).
    let nonvip = frames.iter().find(|(n, _)| n.starts_with("tcp_nonvip"));
    if let Some((_, b)) = nonvip {
        cases.push((NEW_DEST.into(), Template::new_dest(b)));
    }
    // Slot 0: xlb_pass; then the copies of the revision, then the tree's.
    let mut fds = vec![xdp_of(&pass, "xlb_pass")?.fd()?.try_clone()?];
    for e in rev.iter().chain(&tree) {
        fds.push(xdp_of(e, "xlb_xdp")?.fd()?.try_clone()?);
    }
    // Last: the working tree's program as lb::loader::Dataplane loaded it
    // (the one micro and pps time), on the same maps as the copies.
    fds.push(dp.xdp_program().fd()?.try_clone()?);
    let k = fds.len();
    let copies = o.copies as usize;
    let mut rows = Vec::new();
    let tpls: Vec<Template> = cases.iter().map(|(_, t)| t.clone()).collect();
    let times = bench.time_rotating(&tpls, &fds, o.rounds, o.repeat, ifindex)?;
    for (ci, (name, _)) in cases.iter().enumerate() {
        let t = &times[ci];
        let net = |slots: std::ops::Range<usize>| {
            let d: Vec<f64> =
                slots.flat_map(|s| t[s].iter().zip(&t[0]).map(|(x, b)| x - b)).collect();
            quartiles(d)
        };
        rows.push(CompareRow {
            frame: name.clone(),
            pass_ns: quartiles(t[0].clone())[0],
            rev_ns: net(1..1 + copies),
            tree_ns: net(1 + copies..k - 1),
            dataplane_ns: net(k - 1..k),
            same_behaviour: same[ci],
        });
    }
    if rows.is_empty() {
        bail!("no frames timed");
    }
    Ok(CompareReport {
        rev: o.rev.clone(),
        commit,
        rounds: o.rounds,
        repeat: o.repeat,
        copies: o.copies,
        ct_insert_rate: o.ct_insert_rate,
        own_maps,
        rows,
    })
}

impl CompareReport {
    pub fn markdown(&self) -> String {
        let short = &self.commit[..self.commit.len().min(10)];
        let mut s = format!(
            "# xlb_xdp: {} ({short}) vs the working tree (xlb-perf compare)\n\n\
             Net ns/packet over xlb_pass, same wrapper, one interleaved run: {} rounds × {} \
             iterations, {} loads of each object; median (quartiles) over rounds and loads; \
             connection-table insert budget {}/s per CPU (0: none). \
             Maps {} does not share with the tree (private to each load, or of another layout): {}.\n\n\
             | frame | xlb_pass ns | {} | working tree | Δ tree − rev | tree via Dataplane::load | same behaviour |\n\
             |---|---:|---:|---:|---:|---:|---|\n",
            self.rev,
            self.rounds,
            self.repeat,
            self.copies,
            self.ct_insert_rate,
            self.rev,
            if self.own_maps.is_empty() { "none".into() } else { self.own_maps.join(", ") },
            self.rev,
        );
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {:.0} | {:.1} ({:.1}–{:.1}) | {:.1} ({:.1}–{:.1}) | {:+.1} | {:.1} ({:.1}–{:.1}) | {} |\n",
                r.frame,
                r.pass_ns,
                r.rev_ns[0],
                r.rev_ns[1],
                r.rev_ns[2],
                r.tree_ns[0],
                r.tree_ns[1],
                r.tree_ns[2],
                r.tree_ns[0] - r.rev_ns[0],
                r.dataplane_ns[0],
                r.dataplane_ns[1],
                r.dataplane_ns[2],
                if r.same_behaviour { "yes" } else { "NO" },
            ));
        }
        s
    }
}
