//! `xlb-perf`: the xlb benchmark suite. Each subcommand is one scenario
//! (see perf/README.md); `all` runs every one and writes the report (JSON,
//! CSV, SVG plots, markdown summary) into perf/out/.
mod benchprog;
mod churnbench;
mod conn;
mod maglev_report;
mod micro;
mod pps;
mod report;
mod scale;
mod setup;

use std::path::PathBuf;

use anyhow::Result;
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
    Pps {
        #[arg(long, default_value_os_t = micro::default_packets_dir())]
        packets: PathBuf,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Service counts of the scale sweep (kube-proxy only up to 10000).
        #[arg(long, value_delimiter = ',', default_values_t = [1u32, 1000, 10000])]
        services: Vec<u32>,
        #[arg(long, default_value_t = 64)]
        batch: u32,
    },
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
    },
    /// Maglev table quality (evenness, disruption) for M in {16381, 65537}.
    Maglev,
    /// Every scenario above with default settings, plus the summary.
    All,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
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
        Cmd::Pps { packets, seconds, rounds, services, batch } => {
            let r = pps::run_pps(&pps::PpsOpts { packets, seconds, rounds, services, batch })?;
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
        Cmd::Scale { packets, rounds, repeat } => {
            let r =
                scale::run(&scale::ScaleOpts { packets, rounds, repeat, ..Default::default() })?;
            let md = r.markdown();
            println!("{md}");
            report::write(&cli.out, "scale", &r, &md)?;
        }
        Cmd::Maglev => {
            let md = maglev(&cli.out)?;
            println!("{md}");
        }
        Cmd::All => {
            let t0 = std::time::Instant::now();
            let m = micro::run(&micro::MicroOpts::default())?;
            let m_md = m.markdown();
            report::write(&cli.out, "micro", &m, &m_md)?;
            println!("{m_md}");
            let p = pps::run_pps(&pps::PpsOpts {
                packets: micro::default_packets_dir(),
                seconds: 1.0,
                rounds: 3,
                services: vec![1, 1000, 10000],
                batch: 64,
            })?;
            let p_md = p.markdown();
            report::write(&cli.out, "pps", &p, &p_md)?;
            println!("{p_md}");
            let g_md = maglev(&cli.out)?;
            println!("{g_md}");
            report::micro_csv(&cli.out, &m)?;
            report::pps_csv(&cli.out, &p)?;
            report::sweep_plot(&cli.out, &p)?;
            let summary = format!(
                "# xlb benchmark report\n\nWhole suite: {:.0} s on this machine.\n\n## Datapath microbenchmark\n\n{m_md}\n## Packet rate\n\n{p_md}\n## Maglev quality\n\n{g_md}",
                t0.elapsed().as_secs_f64()
            );
            std::fs::write(cli.out.join("summary.md"), summary)?;
            println!("report: {}", cli.out.join("summary.md").display());
        }
    }
    Ok(())
}

fn maglev(out: &std::path::Path) -> Result<String> {
    let rows = maglev_report::maglev_report(&maglev_report::MaglevReportOptions::default())?;
    let md = maglev_report::markdown(&rows);
    report::write(out, "maglev", &rows, &md)?;
    Ok(md)
}
