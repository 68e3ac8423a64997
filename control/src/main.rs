//! `xlb`: the node agent (`xlb run`), the inspection CLI (`xlb service list`,
//! `xlb backend list`), the offline checker (`xlb validate`) and the lab
//! (`xlb lab`). Argument parsing and dispatch only; the work lives in the
//! library (translation) and in the daemon/inspect modules.
mod daemon;
mod inspect;
mod lab_cmd;

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::ExitCode,
};

use clap::{Args, Parser, Subcommand};
use lb::{loader::DEFAULT_PIN_DIR, model::Cidr};
use xlb_control::{
    render, source,
    translate::{self, TranslateOptions, DEFAULT_PROXY_NAME},
};

#[derive(Parser, Debug)]
#[command(name = "xlb", version, about = "XDP Kubernetes service load balancer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the node agent: load and attach the datapath, program it from the
    /// manifests (or the API) and keep it in step with their changes.
    Run(daemon::RunArgs),
    /// Inspect the services of a running node.
    Service {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// Inspect the backends of a running node.
    Backend {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// Translate manifests and print the desired datapath state, or every
    /// error (exit status 1). Touches nothing.
    Validate(ValidateArgs),
    /// Build the network-namespace lab and run xlb in it.
    Lab(lab_cmd::LabArgs),
}

#[derive(Subcommand, Debug)]
enum ListCmd {
    /// List what the pinned maps hold.
    List(ListArgs),
}

#[derive(Args, Debug)]
struct ListArgs {
    /// bpffs directory of the node's pinned maps.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// How manifests are translated on this node (shared by `run` and `validate`).
#[derive(Args, Debug, Clone)]
pub(crate) struct TranslateArgs {
    /// This node's name (its Node object gives the NodePort addresses and the
    /// tunnel source addresses).
    #[arg(long)]
    node_name: String,
    /// A CIDR Service externalIPs may use; repeatable. None given: every
    /// externalIP is rejected (CVE-2020-8554).
    #[arg(long = "external-ip-cidr", value_name = "CIDR")]
    external_ip_cidrs: Vec<Cidr>,
    /// Serve only unlabelled services and those whose
    /// service.kubernetes.io/service-proxy-name label has this value.
    #[arg(long, default_value = DEFAULT_PROXY_NAME)]
    proxy_name: String,
    /// Outer source address of IPv4 tunnels (default: the node's first
    /// IPv4 InternalIP).
    #[arg(long, value_name = "ADDR")]
    tunnel_v4: Option<Ipv4Addr>,
    /// Outer source address of IPv6 tunnels (default: the node's first
    /// IPv6 InternalIP).
    #[arg(long, value_name = "ADDR")]
    tunnel_v6: Option<Ipv6Addr>,
}

impl TranslateArgs {
    pub(crate) fn options(&self) -> TranslateOptions {
        TranslateOptions {
            external_ip_cidrs: self.external_ip_cidrs.clone(),
            proxy_name: self.proxy_name.clone(),
            tunnel_v4: self.tunnel_v4,
            tunnel_v6: self.tunnel_v6,
            ..TranslateOptions::new(&self.node_name)
        }
    }
}

#[derive(Args, Debug)]
struct ValidateArgs {
    /// Manifest file or directory.
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    translate: TranslateArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(args) => daemon::run(args),
        Cmd::Service { cmd: ListCmd::List(a) } => inspect::services(&a.pin_dir, a.json),
        Cmd::Backend { cmd: ListCmd::List(a) } => inspect::backends(&a.pin_dir, a.json),
        Cmd::Validate(args) => validate(&args),
        Cmd::Lab(args) => lab_cmd::run(args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xlb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(args: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let cluster = source::file::load_path(&args.config)?;
    match translate::translate(&cluster, &args.translate.options()) {
        Ok(desired) => {
            print!("{}", render::desired(&desired));
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprint!("{}", render::errors(&errors));
            Ok(ExitCode::FAILURE)
        }
    }
}
