//! `xlb-perf`: the xlb benchmark suite. Each subcommand is one scenario
//! (see perf/README.md); `all` runs every one and writes the report (JSON,
//! CSV, SVG plots, markdown summary) into perf/out/.
mod afpacket;
mod benchprog;
mod churnbench;
mod cluster_bench;
mod compare;
mod conn;
mod eastwest;
mod encap;
mod katran_bench;
mod maglev_report;
mod micro;
mod podnet;
mod policy_bench;
mod policy_conn;
mod pps;
mod readme;
mod report;
mod scale;
mod setup;
mod summary;
mod tcnat;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    about = "xlb benchmarks: datapath microbenchmark, packet rate, kube-proxy baselines, connections, churn"
)]
struct Cli {
    /// Where reports go.
    #[arg(long, global = true, default_value_os_t = report::default_out_dir())]
    out: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// ns/packet of xlb_xdp on the reference frames, net over XDP_PASS.
    Micro {
        /// Directory of the reference frames.
        #[arg(long, default_value_os_t = micro::default_packets_dir())]
        packets: PathBuf,
        #[arg(long, default_value_t = 15)]
        rounds: u32,
        #[arg(long, default_value_t = 50_000)]
        repeat: u32,
        #[arg(long, default_value_t = 200)]
        singles: u32,
    },
    /// Packet rate through the LB veth: xlb vs the physical limit vs kube-proxy.
    Pps(pps::PpsOpts),
    /// Katran's XDP balancer (built from its source) beside xlb Geneve and
    /// xlb IPIP: net ns/packet on the reference frames, then packet rate on
    /// the LB veth with ratios against the reflector, one run.
    Katran(katran_bench::KatranOpts),
    /// Real TCP through the lab: direct vs xlb vs kube-proxy iptables
    /// (connections/s, latency percentiles, iperf3 throughput).
    Conn {
        #[arg(long, default_value_t = 2)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        #[arg(long, default_value_t = 1000)]
        kp_services: u32,
    },
    /// The pod network: xlb's BPF Geneve vs the kernel's VXLAN vs plain
    /// routing across nodes, redirect vs a Linux bridge on one node
    /// (iperf3, request latency, interleaved), CNI ADD latency.
    Podnet {
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        #[arg(long, default_value_t = 5_000)]
        requests: usize,
        /// Pods created at once for the CNI ADD latency.
        #[arg(long, default_value_t = 100)]
        pods: usize,
    },
    /// From a pod to a service: direct vs xlb's socket LB vs kube-proxy
    /// iptables, at 1, 1k and 10k services (connections/s, latency; UDP).
    Eastwest {
        #[arg(long, value_delimiter = ',', default_values_t = [1u32, 1000, 10000])]
        services: Vec<u32>,
        #[arg(long, default_value_t = 100)]
        rounds: u32,
        /// Requests (connections) per path and round.
        #[arg(long, default_value_t = 200)]
        requests: usize,
        /// CPUs of the client and the server, "CLIENT,SERVER" ("none": not
        /// pinned).
        #[arg(long, default_value = "0,0")]
        pin: String,
    },
    /// Backends added/removed/terminated under load: broken connections.
    Churn {
        #[arg(long, default_value_t = 96)]
        held: usize,
        /// Seconds of traffic after each change is applied.
        #[arg(long, default_value_t = 1.0)]
        dwell: f64,
    },
    /// Cost vs backends per service and vs connection-table fill.
    Scale {
        #[arg(long, default_value_os_t = micro::default_packets_dir())]
        packets: PathBuf,
        #[arg(long, default_value_t = 9)]
        rounds: u32,
        #[arg(long, default_value_t = 20_000)]
        repeat: u32,
        /// Backends per service of the first table (0 alone: skip it).
        #[arg(long, value_delimiter = ',', default_values_t = [1u32, 10, 100, 1000])]
        backends: Vec<u32>,
        /// Connection-table fills, percent.
        #[arg(long, value_delimiter = ',', default_values_t = [10u32, 50, 100])]
        ct_fill: Vec<u32>,
        /// Another xlb_xdp object timed beside the embedded one at every
        /// fill: NAME=FILE.o (repeatable).
        #[arg(long = "variant")]
        variants: Vec<String>,
        /// Loads of each variant.
        #[arg(long, default_value_t = 2)]
        copies: u32,
    },
    /// NetworkPolicy (#11): ns/packet of the pod tc programs with 0, 1, 100
    /// and 10,000 rules (established and new connections), and policy
    /// programming latency p50/p99 at 10,000 pods.
    Policy {
        /// Rule counts (0 first: the ratios' baseline).
        #[arg(long, value_delimiter = ',', default_values_t = [0usize, 1, 100, 10_000])]
        rules: Vec<usize>,
        #[arg(long, default_value_t = 9)]
        rounds: u32,
        #[arg(long, default_value_t = 20_000)]
        repeat: u32,
        /// repeat=1 calls per row, configuration and round.
        #[arg(long, default_value_t = 500)]
        calls: u32,
        /// Pod addresses in the address map.
        #[arg(long, default_value_t = 10_000)]
        pods: u32,
        /// Single-rule changes timed for the programming latency.
        #[arg(long, default_value_t = 500)]
        changes: u32,
        /// Loads of each configuration's datapath (JIT placement).
        #[arg(long, default_value_t = 2)]
        copies: u32,
        /// Every rule a two-port range: all in the LPM trie, none in the
        /// single-port hash (the layout before it): where the growth came from.
        #[arg(long)]
        flow_range: bool,
    },
    /// NetworkPolicy (#11) and real connections: connection and request
    /// rate between pods with 1,000 (and 10,000) policies vs none, xlb
    /// against iptables in kube-router's shape, same run.
    PolicyConn {
        /// Policy counts measured against none.
        #[arg(long, value_delimiter = ',', default_values_t = [1_000usize])]
        policies: Vec<usize>,
        #[arg(long, default_value_t = 9)]
        rounds: u32,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
    /// Maglev table quality (evenness, disruption) for M in {16381, 65537}.
    Maglev,
    /// The control plane at cluster scale: cold start, endpoint churn
    /// latency, agent CPU and RSS, map memory (API server double + `xlb run`).
    Cluster {
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        #[arg(long, default_value_t = 10)]
        endpoints: usize,
        #[arg(long, default_value_t = 1_000)]
        nodes: usize,
        /// Endpoint changes per second.
        #[arg(long, default_value_t = 1_000)]
        rate: u32,
        /// Seconds of churn.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Lower rates measured first (seconds / 2 each).
        #[arg(long, value_delimiter = ',', default_values_t = [100u32, 500])]
        lower_rates: Vec<u32>,
        /// The agent's --min-interval, ms.
        #[arg(long, default_value_t = 0)]
        min_interval_ms: u64,
        /// xlb.io/maglev-size on every service (default: none, M chosen from
        /// the backend count).
        #[arg(long)]
        maglev_size: Option<u32>,
        /// The xlb binary (default: beside xlb-perf).
        #[arg(long, default_value_os_t = cluster_bench::default_xlb())]
        xlb: PathBuf,
    },
    /// Geneve vs IPIP: net ns of xlb_xdp per reference frame with every
    /// service in each mode, one interleaved run.
    Encap {
        #[arg(long, default_value_os_t = micro::default_packets_dir())]
        packets: PathBuf,
        #[arg(long, default_value_t = 21)]
        rounds: u32,
        #[arg(long, default_value_t = 20_000)]
        repeat: u32,
        /// Loads of each object per mode (JIT placement moves a load's time).
        #[arg(long, default_value_t = 2)]
        copies: u32,
        /// Another revision (or an xlb_xdp object file) timed beside the
        /// working tree on the same two datapaths; repeatable.
        #[arg(long = "rev")]
        revs: Vec<String>,
    },
    /// A node's tc NAT per packet (IPIP decap + DNAT, a reply's reverse NAT,
    /// and a Geneve decap without NAT as control), the working tree's tc
    /// object beside REV's, one interleaved run.
    Tcnat {
        #[arg(long, default_value_t = 31)]
        rounds: u32,
        #[arg(long, default_value = "main")]
        rev: String,
    },
    /// The XDP program of another revision against the working tree's, in
    /// one interleaved run (net ns/packet over XDP_PASS on the reference
    /// frames): `xlb-perf compare main`, `xlb-perf compare 1002f7c`.
    Compare {
        /// Any revision git names (commit, branch, tag).
        rev: String,
        #[arg(long, default_value_os_t = micro::default_packets_dir())]
        packets: PathBuf,
        #[arg(long, default_value_t = 15)]
        rounds: u32,
        #[arg(long, default_value_t = 20_000)]
        repeat: u32,
        /// Loads of each object (JIT placement moves a load's time).
        #[arg(long, default_value_t = 3)]
        copies: u32,
        /// Per-CPU connection-table insert budget of both programs (0: none;
        /// 125000, the agent's default: the new-flow row is a SYN flood
        /// served past the budget, as in `xlb-perf pps`).
        #[arg(long, default_value_t = 0)]
        ct_insert_rate: u32,
    },
    /// Rewrites README.md's performance table from the report files in
    /// --out (micro.json, pps.json, cluster.json, compare.json, podnet.json): the table
    /// is generated, never typed.
    Readme {
        /// The README to rewrite (between its perf-table markers).
        #[arg(long, default_value_os_t = readme::default_readme())]
        readme: PathBuf,
    },
    /// Every scenario above, plus CSV, SVG and the summary (targets with
    /// ratios and met / not met). Exits non-zero if a scenario failed.
    All {
        /// CI-sized: fewer rounds, shorter runs, sweep up to 1000 services.
        #[arg(long)]
        quick: bool,
    },
}

/// Name bases of what benchmarks create ("<base><pid>-<seq>..."): testkit's
/// namespaces and pin dirs, and the labs' prefixes (LabSpec's default, the
/// podnet and policy rigs').
const STALE_BASES: &[&str] = &["xlbt", "xlb", "xlbpn", "xlbpx", "xlbpl", "pcx", "pck"];

/// Removes what an earlier, killed run left behind (a signal skips the
/// guards' Drop): only names whose process is gone, so benchmarks and tests
/// running beside this one keep theirs.
fn remove_stale() {
    for base in STALE_BASES {
        match lab::Lab::cleanup_stale(base) {
            Ok(removed) if !removed.is_empty() => {
                eprintln!("removed leftovers of killed runs: {}", removed.join(", "))
            }
            Ok(_) => {}
            Err(e) => eprintln!(
                "removing leftovers of killed runs ({base}*): {:#}",
                anyhow::Error::new(e)
            ),
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    remove_stale();
    match cli.cmd {
        Cmd::Micro { packets, rounds, repeat, singles } => {
            let r = micro::run(&micro::MicroOpts {
                packets,
                rounds,
                repeat,
                singles,
                ..Default::default()
            })?;
            let md = r.markdown();
            println!("{md}");
            report::write(&cli.out, "micro", &r, &md)?;
        }
        Cmd::Katran(opts) => {
            let r = katran_bench::run(&opts)?;
            let md = r.markdown();
            print!("{md}");
            report::write(&cli.out, "katran", &r, &md)?;
        }
        Cmd::Pps(opts) => {
            let r = pps::run_pps(&opts)?;
            let md = r.markdown();
            println!("{md}");
            report::write(&cli.out, "pps", &r, &md)?;
        }
        Cmd::Conn { seconds, rounds, kp_services } => {
            let r =
                conn::run(&conn::ConnOpts { seconds, rounds, kp_services, ..Default::default() })?;
            let md = r.markdown();
            println!("{md}");
            report::write(&cli.out, "conn", &r, &md)?;
        }
        Cmd::Podnet { seconds, rounds, requests, pods } => {
            let r = podnet::run(&podnet::PodnetOpts { seconds, rounds, requests, pods })?;
            let md = r.markdown();
            println!("{md}");
            report::write(&cli.out, "podnet", &r, &md)?;
        }
        Cmd::Eastwest { services, rounds, requests, pin } => {
            let pin = match pin.as_str() {
                "none" => None,
                p => {
                    let (c, s) = p.split_once(',').context("--pin: CLIENT,SERVER or none")?;
                    Some((c.trim().parse()?, s.trim().parse()?))
                }
            };
            let r = eastwest::run(&eastwest::EwOpts { services, rounds, requests, pin })?;
            let md = r.markdown();
            println!("{md}");
            report::write(&cli.out, "eastwest", &r, &md)?;
        }
        Cmd::Churn { held, dwell } => {
            let r = churnbench::run(&churnbench::ChurnOpts {
                held,
                dwell: std::time::Duration::from_secs_f64(dwell),
            })?;
            let md = r.markdown();
            println!("{md}");
            report::write(&cli.out, "churn", &r, &md)?;
            r.check()?;
        }
        Cmd::Scale { packets, rounds, repeat, backends, ct_fill, variants, copies } => {
            let variants = variants
                .iter()
                .map(|v| {
                    v.split_once('=')
                        .map(|(n, f)| (n.to_string(), PathBuf::from(f)))
                        .ok_or_else(|| anyhow::anyhow!("--variant {v}: want NAME=FILE.o"))
                })
                .collect::<Result<Vec<_>>>()?;
            let r = scale::run(&scale::ScaleOpts {
                packets,
                rounds,
                repeat,
                backends,
                ct_fill,
                variants,
                copies,
                ..Default::default()
            })?;
            let md = r.markdown();
            println!("{md}");
            report::write(&cli.out, "scale", &r, &md)?;
        }
        Cmd::Policy { rules, rounds, repeat, calls, pods, changes, copies, flow_range } => {
            let r = policy_bench::run(&policy_bench::PolicyOpts {
                rules,
                rounds,
                repeat,
                calls,
                pods,
                changes,
                copies,
                flow_range,
            })?;
            let md = r.markdown();
            println!("{md}");
            report::write(&cli.out, "policy", &r, &md)?;
        }
        Cmd::PolicyConn { policies, rounds, seconds } => {
            let r = policy_conn::run(&policy_conn::ConnOpts { policies, rounds, seconds })?;
            let md = r.markdown();
            println!("{md}");
            report::write(&cli.out, "policy-conn", &r, &md)?;
        }
        Cmd::Cluster {
            services,
            endpoints,
            nodes,
            rate,
            seconds,
            lower_rates,
            min_interval_ms,
            maglev_size,
            xlb,
        } => {
            let r = cluster_bench::run(&cluster_bench::ClusterOpts {
                services,
                endpoints,
                nodes,
                rate,
                seconds,
                lower_rates,
                min_interval_ms,
                maglev_size,
                xlb,
            })?;
            let md = r.markdown();
            println!("{md}");
            report::write(&cli.out, "cluster", &r, &md)?;
        }
        Cmd::Encap { packets, rounds, repeat, copies, revs } => {
            let r = encap::run(&encap::EncapOpts { packets, rounds, repeat, copies, revs })?;
            let md = r.markdown();
            println!("{md}");
            report::write(&cli.out, "encap", &r, &md)?;
        }
        Cmd::Tcnat { rounds, rev } => {
            let r = tcnat::run(&tcnat::TcNatOpts { rounds, rev })?;
            let md = r.markdown();
            println!("{md}");
            report::write(&cli.out, "tcnat", &r, &md)?;
        }
        Cmd::Compare { rev, packets, rounds, repeat, copies, ct_insert_rate } => {
            let r = compare::run(&compare::CompareOpts {
                rev,
                packets,
                rounds,
                repeat,
                copies,
                ct_insert_rate,
            })?;
            let md = r.markdown();
            println!("{md}");
            report::write(&cli.out, "compare", &r, &md)?;
        }
        Cmd::Readme { readme } => {
            let table = readme::table(&cli.out)?;
            readme::rewrite(&readme, &table)?;
            println!("{table}");
            eprintln!("rewrote the performance table of {}", readme.display());
        }
        Cmd::Maglev => {
            let md = maglev(&cli.out)?;
            println!("{md}");
        }
        Cmd::All { quick } => return all(&cli.out, quick),
    }
    Ok(())
}

/// One scenario of `all`: its report written, or its error kept.
fn scenario<T: serde::Serialize>(
    out: &std::path::Path,
    name: &str,
    f: impl FnOnce() -> Result<T>,
    md: impl Fn(&T) -> String,
) -> Result<T, String> {
    let t0 = std::time::Instant::now();
    eprintln!("== {name} ==");
    let r = f().and_then(|r| {
        let text = md(&r);
        println!("{text}");
        report::write(out, name, &r, &text)?;
        Ok(r)
    });
    eprintln!("== {name}: {:.0} s ==", t0.elapsed().as_secs_f64());
    r.map_err(|e| {
        eprintln!("{name} FAILED: {e:#}");
        format!("{e:#}")
    })
}

fn all(out: &std::path::Path, quick: bool) -> Result<()> {
    let t0 = std::time::Instant::now();
    let micro_opts = if quick {
        micro::MicroOpts { rounds: 5, repeat: 10_000, singles: 50, ..Default::default() }
    } else {
        micro::MicroOpts::default()
    };
    let micro = scenario(out, "micro", || micro::run(&micro_opts), |m| m.markdown());
    let pps_opts = pps::PpsOpts {
        packets: micro::default_packets_dir(),
        seconds: if quick { 0.3 } else { 1.0 },
        rounds: if quick { 1 } else { 3 },
        services: if quick { vec![1, 1000] } else { vec![1, 1000, 10_000, 100_000] },
        batch: 64,
        generator: None,
        mixes_only: false,
        mix: None,
        grow_reflector: false,
        frames_per_call: None,
        prog_stats: false,
        katran: false,
        katran_src: katran_bench::default_src(),
    };
    let pps = scenario(out, "pps", || pps::run_pps(&pps_opts), |p| p.markdown());
    let conn_opts = if quick {
        conn::ConnOpts {
            seconds: 1,
            rounds: 1,
            kp_services: 100,
            latency_requests: 5_000,
            ..Default::default()
        }
    } else {
        conn::ConnOpts::default()
    };
    let conn = scenario(out, "conn", || conn::run(&conn_opts), |c| c.markdown());
    let churn_opts = if quick {
        churnbench::ChurnOpts { held: 32, dwell: std::time::Duration::from_millis(500) }
    } else {
        churnbench::ChurnOpts::default()
    };
    let churn = scenario(out, "churn", || churnbench::run(&churn_opts), |c| c.markdown());
    let podnet_opts = if quick {
        podnet::PodnetOpts { seconds: 1, rounds: 1, requests: 2_000, pods: 20 }
    } else {
        podnet::PodnetOpts::default()
    };
    let podnet = scenario(out, "podnet", || podnet::run(&podnet_opts), |p| p.markdown());
    let scale_opts = if quick {
        scale::ScaleOpts { rounds: 3, repeat: 5_000, ct_capacity: 65_536, ..Default::default() }
    } else {
        scale::ScaleOpts::default()
    };
    let scale = scenario(out, "scale", || scale::run(&scale_opts), |s| s.markdown());
    let maglev = maglev(out).map_err(|e| format!("{e:#}"));
    if let Ok(m) = &maglev {
        println!("{m}");
    }
    if let Ok(m) = &micro {
        report::micro_csv(out, m)?;
    }
    if let Ok(p) = &pps {
        report::pps_csv(out, p)?;
        report::sweep_plot(out, p)?;
    }
    let results = summary::Results {
        micro,
        pps,
        conn,
        churn,
        scale,
        maglev,
        quick,
        seconds: t0.elapsed().as_secs_f64(),
    };
    let text = summary::render(&results);
    std::fs::write(out.join("summary.md"), &text)?;
    println!("{}", summary::targets(&results));
    println!("report: {} ({:.0} s)", out.join("summary.md").display(), results.seconds);
    let failed: Vec<&str> = [
        ("micro", results.micro.is_err()),
        ("pps", results.pps.is_err()),
        ("conn", results.conn.is_err()),
        ("churn", results.churn.is_err()),
        ("scale", results.scale.is_err()),
        ("podnet", podnet.is_err()),
        ("maglev", results.maglev.is_err()),
    ]
    .into_iter()
    .filter_map(|(n, f)| f.then_some(n))
    .collect();
    anyhow::ensure!(failed.is_empty(), "scenarios failed: {}", failed.join(", "));
    Ok(())
}

fn maglev(out: &std::path::Path) -> Result<String> {
    let rows = maglev_report::maglev_report(&maglev_report::MaglevReportOptions::default())?;
    let md = maglev_report::markdown(&rows);
    report::write(out, "maglev", &rows, &md)?;
    Ok(md)
}
