//! `xlb-perf`: the xlb benchmark suite. Each subcommand is one scenario
//! (see perf/README.md); `all` runs every one and writes the report (JSON,
//! CSV, SVG plots, markdown summary) into perf/out/.
mod benchprog;
mod micro;
mod report;
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
    }
    Ok(())
}
