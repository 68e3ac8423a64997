//! `xlb-perf katran`: Katran's XDP balancer beside xlb (Geneve, its default,
//! and IPIP, Katran's encapsulation) on the same frames and the same veth.
//!
//! Katran's object is built at benchmark time from its source (a checkout or
//! a git mirror: `git archive` of katran/lib/bpf and linux_includes into a
//! temporary directory, then clang `-O2 -g -target bpf` with its Makefile's
//! defines), never vendored; a missing source makes its rows say so. The
//! object's flavour is Katran's default build (IPIP / IP6-in-IP6 encap, no
//! inline decap, no QUIC/TPR routing in use), its flood guard
//! (MAX_CONN_RATE, new connections per second per CPU past which the LRU is
//! not written) set to xlb's --ct-insert-rate default. We load it with aya
//! and program its maps with our own code (crate::katran's layouts and
//! plan): the reference frames' three VIPs with xlb's backends as reals (each
//! at its node's address), the rings filled by xlb's Maglev, the gateway MAC
//! in ctl_array, and one LRU per CPU in lru_mapping, xlb's connection-table
//! size split over the CPUs as Katran splits its LruSize over its forwarding
//! cores (KatranLb.cpp; map flags 0; its fallback_cache is for tests).
//!
//! Two measurements, both interleaved with xlb in one run:
//!   - ns/packet: BPF_PROG_TEST_RUN through the xlb_bench wrapper (frame
//!     restored each iteration), net over xlb_pass of the same round, as
//!     `micro` and `compare` time programs;
//!   - packet rate on the veth: `xlb-perf pps`'s mixes with Katran and xlb
//!     IPIP as extra dataplanes (pps.rs), ratios against the reflector of
//!     the same rounds.
//!
//! Every frame's output is checked before timing: a VIP frame must leave
//! with XDP_TX as IPIP to its real's host, with the frame's IP packet inside.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use aya::{
    maps::{Array, ArrayOfMaps, HashMap, MapData},
    programs::Xdp,
    Ebpf, EbpfLoader,
};
use lb::{model::Encap, report::Chain};
use serde::Serialize;
use testkit::netns::{ifindex, in_private_netns};
use xlb_perf::{
    katran::{
        ipip_outer_dst, CtlValue, Plan, RealDef, VipKey, VipMeta, CTL_MAC_POS, FLOW_KEY_SIZE,
        REAL_POS_LRU_SIZE,
    },
    stats::{loadavg, median},
};

use crate::{
    benchprog::{load_pass, test_run, xdp_of, Bench, Template},
    micro::{read_frames, verdict_name},
    pps::{self, PpsOpts, PpsReport},
    setup,
};

/// Where this machine keeps Katran's source (a read-only git mirror).
pub const DEFAULT_SRC: &str = "/work/.mirror/facebookincubator+katran/repo";

pub fn default_src() -> PathBuf {
    PathBuf::from(DEFAULT_SRC)
}

/// Katran's XDP program (balancer.bpf.c, section "xdp").
const PROG: &str = "balancer_ingress";

/// Katran's compiled balancer: the object and the commit it came from.
#[derive(Clone, Debug)]
pub struct Built {
    pub commit: String,
    pub object: Vec<u8>,
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn git(src: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new("git").arg("-C").arg(src).args(args).output().context("running git")?;
    ensure!(
        out.status.success(),
        "git -C {} {}: {}",
        src.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out.stdout)
}

/// Builds Katran's balancer from `src` (a checkout holding
/// katran/lib/bpf, or a git directory whose HEAD does), its flood guard at
/// `max_conn_rate` new connections per second per CPU. "source not found"
/// when `src` holds neither.
pub fn build(src: &Path, max_conn_rate: u32) -> Result<Built> {
    const MAIN: &str = "katran/lib/bpf/balancer.bpf.c";
    let tmp = TempDir(std::env::temp_dir().join(format!("xlb-katran-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&tmp.0);
    std::fs::create_dir_all(&tmp.0).context("creating the build directory")?;
    let (root, commit) = if src.join(MAIN).is_file() {
        let commit = git(src, &["rev-parse", "HEAD"])
            .map(|c| String::from_utf8_lossy(&c).trim().to_string())
            .unwrap_or_else(|_| "(not a git checkout)".into());
        (src.to_path_buf(), commit)
    } else if src.exists() && git(src, &["cat-file", "-e", &format!("HEAD:{MAIN}")]).is_ok() {
        let commit = String::from_utf8_lossy(&git(src, &["rev-parse", "HEAD"])?).trim().to_string();
        let tar = git(src, &["archive", "HEAD", "katran/lib/bpf", "katran/lib/linux_includes"])?;
        let mut child = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(&tmp.0)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("running tar")?;
        std::io::Write::write_all(child.stdin.as_mut().expect("piped"), &tar)
            .context("feeding tar")?;
        ensure!(child.wait()?.success(), "tar -x of Katran's sources failed");
        (tmp.0.clone(), commit)
    } else {
        bail!("katran: source not found at {} (pass --katran-src DIR)", src.display());
    };
    // The BPF target is not x86_64, so glibc's features.h (reached through
    // Katran's <string.h>) asks for gnu/stubs-32.h, which 64-bit-only
    // systems do not install: an empty one stands in (nothing is used).
    let stub = tmp.0.join("stub");
    std::fs::create_dir_all(stub.join("gnu"))?;
    std::fs::write(stub.join("gnu/stubs-32.h"), "")?;
    let clang = std::env::var("XLB_CLANG").unwrap_or_else(|_| "clang".into());
    let multiarch = bpf_build::multiarch_dir(&clang).map_err(|e| anyhow!(e))?;
    let obj = tmp.0.join("balancer.bpf.o");
    let out = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf"])
        // Katran's Makefile-bpf flags.
        .args(["-D__KERNEL__", "-Wno-unused-value", "-Wno-pointer-sign"])
        .arg("-Wno-compare-distinct-pointer-types")
        .arg(format!("-DMAX_CONN_RATE={max_conn_rate}"))
        .arg(format!("-I{}", root.display()))
        .arg(format!("-I{}", root.join("katran/lib/linux_includes").display()))
        .arg(format!("-I{}", stub.display()))
        .arg(format!("-I{}", multiarch.display()))
        .arg("-c")
        .arg(root.join(MAIN))
        .arg("-o")
        .arg(&obj)
        .output()
        .with_context(|| format!("running {clang}"))?;
    ensure!(
        out.status.success(),
        "compiling Katran's balancer ({commit}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Built { commit, object: std::fs::read(&obj).context("reading Katran's object")? })
}

/// Katran's balancer loaded and programmed.
pub struct Katran {
    ebpf: Ebpf,
    /// The per-CPU connection tables (lru_mapping holds them too).
    _lrus: Vec<MapData>,
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).ok_or_else(|| anyhow!("Katran's object has no map {name}"))
}

impl Katran {
    /// Loads `obj`, programs `plan`, sends everything to `gateway` (Katran
    /// forwards to one router MAC), with `ct` connection-table entries in
    /// all, an equal LRU per CPU.
    pub fn load(obj: &[u8], plan: &Plan, ct: u32, gateway: [u8; 6]) -> Result<Katran> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("ch_rings", plan.ring_entries())
            // QUIC server ids (unused here): 16M preallocated entries
            // (64 MiB) by default, one will do.
            .map_max_entries("server_id_map", 1)
            .load(obj)
            .map_err(|e| anyhow!("loading Katran's object: {}", Chain(&e)))?;
        let p: &mut Xdp = ebpf
            .program_mut(PROG)
            .ok_or_else(|| anyhow!("Katran's object has no program {PROG}"))?
            .try_into()?;
        p.load().map_err(|e| anyhow!("loading {PROG}: {}", Chain(&e)))?;
        {
            let mut vips: HashMap<_, VipKey, VipMeta> = map(&mut ebpf, "vip_map")?.try_into()?;
            for v in &plan.vips {
                vips.insert(v.key, v.meta, 0).context("vip_map update")?;
            }
        }
        {
            let mut reals: Array<_, RealDef> = map(&mut ebpf, "reals")?.try_into()?;
            for (id, r) in plan.reals.iter().enumerate().skip(1) {
                reals.set(id as u32, *r, 0).context("reals update")?;
            }
        }
        {
            let mut rings: Array<_, u32> = map(&mut ebpf, "ch_rings")?.try_into()?;
            for v in &plan.vips {
                let base = v.meta.vip_num * xlb_perf::katran::RING_SIZE;
                for (i, id) in v.ring.iter().enumerate() {
                    rings.set(base + i as u32, *id, 0).context("ch_rings update")?;
                }
            }
        }
        {
            let mut ctl: Array<_, CtlValue> = map(&mut ebpf, "ctl_array")?.try_into()?;
            ctl.set(CTL_MAC_POS, CtlValue::mac(gateway), 0).context("ctl_array update")?;
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| anyhow!("nr_cpus: {e}"))?;
        let per_cpu = (ct / cpus as u32).max(1);
        let mut lrus = Vec::new();
        {
            let mut outer: ArrayOfMaps<_, MapData> = map(&mut ebpf, "lru_mapping")?.try_into()?;
            for cpu in 0..cpus as u32 {
                let def = aya_obj::Map::new_from_params(
                    aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32,
                    FLOW_KEY_SIZE,
                    REAL_POS_LRU_SIZE,
                    per_cpu,
                    0,
                );
                let lru = MapData::create(def, "katran_lru", None)
                    .map_err(|e| anyhow!("creating CPU {cpu}'s LRU: {}", Chain(&e)))?;
                outer.set(cpu, &lru, 0).context("lru_mapping update")?;
                lrus.push(lru);
            }
        }
        Ok(Katran { ebpf, _lrus: lrus })
    }

    pub fn program(&self) -> Result<&Xdp> {
        xdp_of(&self.ebpf, PROG)
    }

    pub fn program_mut(&mut self) -> Result<&mut Xdp> {
        Ok(self.ebpf.program_mut(PROG).ok_or_else(|| anyhow!("no program {PROG}"))?.try_into()?)
    }
}

/// What `prog` does with `frame`'s second packet (the first may insert
/// the flow): the verdict, and for XDP_TX the IPIP check (`Ok` with the
/// outer destination, `Err` with what is wrong).
pub fn forwarding(
    prog: &Xdp,
    frame: &[u8],
    ifindex: u32,
) -> Result<(&'static str, Option<Result<IpAddr>>)> {
    let mut out = vec![0u8; frame.len() + 256];
    test_run(prog, frame, ifindex, 1, None)?;
    let r = test_run(prog, frame, ifindex, 1, Some(&mut out))?;
    out.truncate(r.data_size_out as usize);
    let ipip = (r.return_value == 3).then(|| ipip_outer_dst(frame, &out));
    Ok((verdict_name(r.return_value), ipip))
}

/// The nodes' addresses: where IPIP to a real must go.
fn is_node(a: IpAddr) -> bool {
    (1..=setup::NODES)
        .any(|n| a == IpAddr::V4(setup::node_v4(n)) || a == IpAddr::V6(setup::node_v6(n)))
}

/// Checks that `prog` forwards each VIP frame as IPIP to a node, and
/// passes the non-VIP one: one line per frame, or the first failure.
pub fn check_forwarding(
    prog: &Xdp,
    frames: &[(String, Vec<u8>)],
    ifindex: u32,
) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for (name, f) in frames {
        let (v, ipip) = forwarding(prog, f, ifindex)?;
        let vip = !name.contains("nonvip");
        match (vip, v, ipip) {
            (true, "TX", Some(Ok(dst))) if is_node(dst) => {
                lines.push(format!("{name}: TX IPIP → {dst}"))
            }
            (true, _, Some(Ok(dst))) => bail!("{name}: IPIP to {dst}, not a node"),
            (true, _, Some(Err(e))) => bail!("{name}: XDP_TX but {e:#}"),
            (true, v, None) => bail!("{name}: XDP_{v}, not forwarded"),
            (false, v, _) => lines.push(format!("{name}: {v}")),
        }
    }
    Ok(lines)
}

#[derive(Clone, Debug, clap::Args)]
pub struct KatranOpts {
    /// ns/packet: rounds, each timing every program on every frame.
    #[arg(long, default_value_t = 15)]
    pub ns_rounds: u32,
    /// ns/packet: iterations per program per frame per round.
    #[arg(long, default_value_t = 20_000)]
    pub ns_repeat: u32,
    /// Only the ns/packet table (no packet rate on the veth).
    #[arg(long)]
    pub micro_only: bool,
    /// The packet-rate run and Katran's source (--katran and --mixes-only
    /// are implied).
    #[command(flatten)]
    pub pps: PpsOpts,
}

#[derive(Clone, Debug, Serialize)]
pub struct NsRow {
    pub frame: String,
    pub pass_ns: f64,
    /// Net ns over xlb_pass (medians): the MAC-swap reflector (`pps`'s
    /// limit), xlb Geneve, xlb IPIP, Katran.
    pub reflect_ns: f64,
    pub geneve_ns: f64,
    pub ipip_ns: f64,
    pub katran_ns: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct KatranReport {
    pub katran_src: String,
    pub katran_commit: String,
    pub rounds: u32,
    pub repeat: u32,
    /// Load average (1 min) before and after the ns/packet run.
    pub load: [f64; 2],
    /// What each dataplane does with each frame (checked before timing).
    pub outputs: Vec<String>,
    pub ns: Vec<NsRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pps: Option<PpsReport>,
}

pub fn run(o: &KatranOpts) -> Result<KatranReport> {
    let frames = read_frames(&o.pps.packets)?;
    let built = build(&o.pps.katran_src, lb::loader::DEFAULT_CT_INSERT_RATE)?;
    let oc = o.clone();
    let b = built.clone();
    let (load, outputs, ns) = in_private_netns(move || micro(&oc, &b, frames))??;
    let pps = if o.micro_only {
        None
    } else {
        let mut p = o.pps.clone();
        p.katran = true;
        p.mixes_only = true;
        Some(pps::run_pps(&p)?)
    };
    Ok(KatranReport {
        katran_src: o.pps.katran_src.display().to_string(),
        katran_commit: built.commit,
        rounds: o.ns_rounds,
        repeat: o.ns_repeat,
        load,
        outputs,
        ns,
        pps,
    })
}

type MicroOut = ([f64; 2], Vec<String>, Vec<NsRow>);

fn micro(o: &KatranOpts, built: &Built, frames: Vec<(String, Vec<u8>)>) -> Result<MicroOut> {
    let load0 = loadavg();
    setup::lb_port("xb0", "xb1")?;
    let ifindex = ifindex("xb0").context("xb0 has no ifindex")?;
    let (_gp, mut geneve) = crate::encap::load(Encap::Geneve)?;
    let (_ip, mut ipip) = crate::encap::load(Encap::Ipip)?;
    let plan = Plan::from_desired(&setup::bench_desired())?;
    let ct = lb::loader::MapSizes::default().ct;
    let katran = Katran::load(&built.object, &plan, ct, [2, 0, 0, 0, 0, 2])?;
    let pass = load_pass()?;
    let mut bench = Bench::load()?;

    let mut outputs = Vec::new();
    for (who, lines) in [
        ("katran", check_forwarding(katran.program()?, &frames, ifindex)),
        ("xlb IPIP", check_forwarding(ipip.xdp_program(), &frames, ifindex)),
    ] {
        let lines =
            lines.with_context(|| format!("{who} does not forward the reference frames"))?;
        outputs.extend(lines.into_iter().map(|l| format!("{who}: {l}")));
    }
    let fds = [
        xdp_of(&pass, "xlb_pass")?.fd()?.try_clone()?,
        bench.program("xlb_bench_reflect")?.fd()?.try_clone()?,
        geneve.xdp_program().fd()?.try_clone()?,
        ipip.xdp_program().fd()?.try_clone()?,
        katran.program()?.fd()?.try_clone()?,
    ];
    // The reference frames, then the SYN flood (a new source per packet).
    let mut cases: Vec<(String, Template)> =
        frames.iter().map(|(n, f)| (n.clone(), Template::fixed(f))).collect();
    cases.push(("tcp_syn_vip.bin, new flow/pkt".into(), Template::new_flow(&frames[0].1)));
    let tpls: Vec<Template> = cases.iter().map(|(_, t)| t.clone()).collect();
    let times = bench.time_rotating(&tpls, &fds, o.ns_rounds, o.ns_repeat, ifindex)?;
    let rows = cases
        .iter()
        .enumerate()
        .map(|(ci, (name, _))| {
            let t = &times[ci];
            let net =
                |s: usize| median(&t[s].iter().zip(&t[0]).map(|(x, b)| x - b).collect::<Vec<_>>());
            NsRow {
                frame: name.clone(),
                pass_ns: median(&t[0]),
                reflect_ns: net(1),
                geneve_ns: net(2),
                ipip_ns: net(3),
                katran_ns: net(4),
            }
        })
        .collect();
    Ok(([load0, loadavg()], outputs, rows))
}

impl KatranReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Katran vs xlb (xlb-perf katran)\n\nKatran {} (built from {}), default flavour (IPIP), MAX_CONN_RATE {}.\n\nNet ns/packet over xlb_pass (BPF_PROG_TEST_RUN through the xlb_bench wrapper, frame restored each iteration; {} rounds × {} iterations, rotating order, medians); load average {:.2} → {:.2}\n\n| frame | xlb_pass ns | reflector | xlb Geneve | xlb IPIP | Katran (IPIP) | Katran / xlb IPIP | Katran / xlb Geneve |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
            &self.katran_commit[..self.katran_commit.len().min(10)],
            self.katran_src,
            lb::loader::DEFAULT_CT_INSERT_RATE,
            self.rounds,
            self.repeat,
            self.load[0],
            self.load[1]
        );
        for r in &self.ns {
            s.push_str(&format!(
                "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} |\n",
                r.frame,
                r.pass_ns,
                r.reflect_ns,
                r.geneve_ns,
                r.ipip_ns,
                r.katran_ns,
                r.katran_ns / r.ipip_ns,
                r.katran_ns / r.geneve_ns
            ));
        }
        s.push_str("\nOutputs checked before timing (second packet of each flow):\n\n");
        for l in &self.outputs {
            s.push_str(&format!("- {l}\n"));
        }
        if let Some(p) = &self.pps {
            s.push('\n');
            s.push_str(&p.markdown());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_source_is_named_not_built() {
        for dir in [Path::new("/nonexistent/katran"), Path::new("/")] {
            let e = build(dir, 125_000).unwrap_err();
            assert!(format!("{e:#}").contains("source not found"), "{dir:?}: {e:#}");
        }
    }
}
