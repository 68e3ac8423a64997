//! `xlb`: the node agent (`xlb run`), the inspection CLI (`xlb service list`,
//! `xlb backend list`, `xlb ct list`, `xlb maglev show`, `xlb stats`,
//! `xlb endpoint list`, `xlb tunnel list`), the event stream (`xlb
//! monitor`), the agent's status (`xlb status`), the offline checker
//! (`xlb validate`) and the install manifests (`xlb install`).
//! Argument parsing and dispatch only; the work lives in the library
//! (translation) and in the daemon/inspect modules. (The lab is its own
//! binary, `xlb-lab`: the agent links no test tooling.)
mod daemon;
mod flows;
mod inspect;
mod install_cli;
mod metrics;
mod monitor;
mod observe;

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
    Run(Box<daemon::RunArgs>),
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
    /// Inspect the connection table of a running node.
    Ct {
        #[command(subcommand)]
        cmd: CtCmd,
    },
    /// Inspect the Maglev tables of a running node.
    Maglev {
        #[command(subcommand)]
        cmd: MaglevCmd,
    },
    /// Inspect the pods of a running node (its pod network's endpoints).
    Endpoint {
        #[command(subcommand)]
        cmd: EndpointCmd,
    },
    /// Inspect the pod network's tunnels of a running node: every node's
    /// pod ranges, the peers tunnels are accepted from, masquerade.
    Tunnel {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// Datapath counters by reason and per-service totals of a running node.
    /// NetworkPolicy (#11): what manifests compile to, and why a
    /// connection is allowed or denied.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    Stats(StatsArgs),
    /// Print datapath events live: new flows (backend chosen) and drops.
    Monitor(monitor::MonitorArgs),
    /// Live flows with verdicts (forwarded, policy allowed/denied, dropped),
    /// pods and services named, through the agent (several at once).
    Observe(observe::ObserveArgs),
    /// Translate manifests and print the desired datapath state, or every
    /// error (exit status 1). Touches nothing.
    Validate(ValidateArgs),
    /// Ask the running agent how it is: ready or why not, and the problems
    /// of its configuration (objects or parts of them left out).
    Status(StatusArgs),
    /// Install on a cluster: render the manifests, check edited ones, or
    /// (the DaemonSet's init container) install the CNI plugin on the host.
    Install {
        #[command(subcommand)]
        cmd: install_cli::InstallCmd,
    },
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// The agent's --metrics-addr.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9465")]
    metrics_addr: std::net::SocketAddr,
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

#[derive(Subcommand, Debug)]
enum EndpointCmd {
    /// The pods xlb_endpoints holds, named by the CNI plugin's records.
    List {
        #[command(flatten)]
        list: ListArgs,
        /// Where xlb-cni records the pods.
        #[arg(long, value_name = "DIR", default_value = xlb_cni::config::DEFAULT_STATE_DIR)]
        cni_state_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum CtCmd {
    /// List connection-table entries.
    List {
        #[command(flatten)]
        list: ListArgs,
        /// Only entries of this service ("namespace/name" or "namespace/name:port").
        #[arg(long)]
        service: Option<String>,
        /// Only entries of this client address.
        #[arg(long)]
        client: Option<std::net::IpAddr>,
        /// At most this many entries.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

#[derive(Subcommand, Debug)]
enum MaglevCmd {
    /// A service's table: slots per backend, share against the ideal.
    Show {
        /// "namespace/name" (every port and family) or "namespace/name:port".
        service: String,
        #[command(flatten)]
        list: ListArgs,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Every NetworkPolicy of the manifests, the pods it isolates, each
    /// isolated pod's allowed entries, and the policies skipped as invalid.
    List {
        /// Manifest file or directory (Pods, Namespaces, NetworkPolicies).
        #[arg(long)]
        config: PathBuf,
    },
    /// Why `from` reaches `to` on a port or not: the allowing policy per
    /// direction, or the policies isolating it.
    Trace {
        #[arg(long)]
        config: PathBuf,
        /// A pod (namespace/name) or an address.
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        port: u16,
        /// tcp, udp or sctp.
        #[arg(long, default_value = "tcp")]
        protocol: String,
    },
}

#[derive(Args, Debug)]
struct StatsArgs {
    #[command(flatten)]
    list: ListArgs,
    /// Show counters that are zero too.
    #[arg(long)]
    all: bool,
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
    /// What a service without a usable endpoint does with a packet, unless
    /// its xlb.io/no-endpoints annotation says otherwise.
    #[arg(long, value_enum, default_value_t = NoEndpointsArg::Reject)]
    no_endpoints: NoEndpointsArg,
    /// Maglev table size of services without an xlb.io/maglev-size
    /// annotation: a prime up to 16381, the same on every node ("auto":
    /// sized by each service's endpoints).
    #[arg(long, value_name = "PRIME|auto", default_value = "auto", value_parser = parse_maglev_size)]
    maglev_size: u32,
    /// Outer source address of IPv4 tunnels (default: the node's first
    /// IPv4 InternalIP).
    #[arg(long, value_name = "ADDR")]
    tunnel_v4: Option<Ipv4Addr>,
    /// Outer source address of IPv6 tunnels (default: the node's first
    /// IPv6 InternalIP).
    #[arg(long, value_name = "ADDR")]
    tunnel_v6: Option<Ipv6Addr>,
}

/// `--no-endpoints`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum NoEndpointsArg {
    /// TCP RST / ICMP port unreachable, rate-limited (kube-proxy's behaviour).
    Reject,
    /// Drop silently: the client times out.
    Drop,
}

impl TranslateArgs {
    pub(crate) fn options(&self) -> TranslateOptions {
        TranslateOptions {
            no_endpoints: match self.no_endpoints {
                NoEndpointsArg::Reject => lb::model::NoEndpoints::Reject,
                NoEndpointsArg::Drop => lb::model::NoEndpoints::Drop,
            },
            external_ip_cidrs: self.external_ip_cidrs.clone(),
            proxy_name: self.proxy_name.clone(),
            tunnel_v4: self.tunnel_v4,
            tunnel_v6: self.tunnel_v6,
            maglev_size: self.maglev_size,
            ..TranslateOptions::new(&self.node_name)
        }
    }
}

/// `--maglev-size`: "auto" or a prime up to the largest table.
fn parse_maglev_size(s: &str) -> Result<u32, String> {
    if s == "auto" {
        return Ok(lb::model::MAGLEV_SIZE_AUTO);
    }
    match s.parse::<u32>() {
        Ok(n) if translate::valid_maglev_size(n) => Ok(n),
        _ => Err(format!("expected auto or a prime up to {}", lb::model::MAX_MAGLEV_SIZE)),
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
        Cmd::Run(args) => daemon::run(*args),
        Cmd::Service { cmd: ListCmd::List(a) } => inspect::services(&a.pin_dir, a.json),
        Cmd::Backend { cmd: ListCmd::List(a) } => inspect::backends(&a.pin_dir, a.json),
        Cmd::Ct { cmd: CtCmd::List { list, service, client, limit } } => inspect::ct_list(
            &list.pin_dir,
            &inspect::CtFilter { service, client, limit },
            list.json,
        ),
        Cmd::Maglev { cmd: MaglevCmd::Show { service, list } } => {
            inspect::maglev_show(&list.pin_dir, &service, list.json)
        }
        Cmd::Endpoint { cmd: EndpointCmd::List { list, cni_state_dir } } => {
            inspect::endpoints(&list.pin_dir, &cni_state_dir, list.json)
        }
        Cmd::Tunnel { cmd: ListCmd::List(a) } => inspect::tunnels(&a.pin_dir, a.json),
        Cmd::Policy { cmd } => policy(cmd),
        Cmd::Stats(a) => inspect::stats(&a.list.pin_dir, a.all, a.list.json),
        Cmd::Monitor(args) => monitor::run(args),
        Cmd::Observe(args) => observe::run(args),
        Cmd::Validate(args) => validate(&args),
        Cmd::Status(args) => status(&args),
        Cmd::Install { cmd } => install_cli::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xlb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// GET /status from the agent and print it.
fn status(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    use std::io::{Read, Write};

    use anyhow::Context;
    let addr = args.metrics_addr;
    let timeout = std::time::Duration::from_secs(5);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to the agent at {addr} (--metrics-addr)"))?;
    s.set_read_timeout(Some(timeout)).context("setting a read timeout")?;
    write!(s, "GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .with_context(|| format!("asking {addr} for /status"))?;
    let mut out = String::new();
    s.read_to_string(&mut out).with_context(|| format!("reading /status from {addr}"))?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    if !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!("{addr}/status: {}", head.lines().next().unwrap_or("no answer"));
    }
    print!("{body}");
    Ok(ExitCode::SUCCESS)
}

fn policy(cmd: PolicyCmd) -> anyhow::Result<ExitCode> {
    use xlb_control::policy;
    let load = |config: &PathBuf| -> anyhow::Result<policy::Compiled> {
        let c = source::file::load_path(config)?;
        Ok(policy::compile(&c.pods, &c.namespaces, &c.policies))
    };
    match cmd {
        PolicyCmd::List { config } => {
            print!("{}", policy::render_list(&load(&config)?));
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Trace { config, from, to, port, protocol } => {
            let c = load(&config)?;
            let addr = |s: &str| -> anyhow::Result<std::net::IpAddr> {
                if let Ok(a) = s.parse() {
                    return Ok(a);
                }
                let (ns, name) = s.split_once('/').unwrap_or(("default", s));
                c.pods
                    .values()
                    .find(|p| p.namespace == ns && p.name == name)
                    .and_then(|p| p.ips.first().copied())
                    .ok_or_else(|| anyhow::anyhow!("{s}: no such pod with an address"))
            };
            let proto = match protocol.to_ascii_lowercase().as_str() {
                "tcp" => policy::PROTO_TCP,
                "udp" => policy::PROTO_UDP,
                "sctp" => policy::PROTO_SCTP,
                other => anyhow::bail!("--protocol {other:?}: expected tcp, udp or sctp"),
            };
            let (src, dst) = (addr(&from)?, addr(&to)?);
            print!("{}", policy::trace(&c, src, dst, proto, port));
            Ok(if c.verdict(src, dst, proto, port).allowed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
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
