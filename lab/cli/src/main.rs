//! `xlb-lab`: the showcase. Takes a workload from manifests as a user
//! writes them (`--manifest FILE`, else the embedded seed example: an nginx
//! Deployment behind `Service nginx-service`, see `lab::workload`), builds
//! the network-namespace lab (client, router, LB, nodes with the workload's
//! pods; see `lab`), writes what the agents read (the Services with their
//! addresses, the Pods, the EndpointSlices the endpoint-slice controller
//! would publish, the Nodes), starts one `xlb run` agent per node namespace
//! (the `xlb` binary beside this one, or `--xlb` / $XLB_BIN; the nodes'
//! agents are their pod network), gives the pods their network through
//! xlb-cni as a container runtime does, drives real HTTP requests from the
//! client to a LoadBalancer Service's VIPs over IPv4 and IPv6 and from pods
//! to pods across nodes through the Geneve overlay, and prints where they
//! landed and the packet counters that show direct server return and the
//! overlay at work; then requests to a Service's ClusterIPs from a pod and
//! from a node, with the counters that show they were translated at the
//! socket. `--hold` keeps the lab up; `xlb-lab probe` prints a held lab's
//! reachability matrix. Everything is torn down on exit and on Ctrl-C. A
//! binary of its own so that the `xlb` agent does not link the lab.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use lab::{
    agent::{self, Agent, AgentSpec},
    held,
    http::{self, DriveReport, DriveSpec},
    reach::{self, Probe},
    workload::{self, PlannedService, Protocol, Workload},
    Lab, LabSpec, LinkStats,
};

/// Start of the lab's namespace names ("xlblab<pid>-<n>-client").
const NAME_PREFIX: &str = "xlblab";
/// How long the agents get to load, attach and apply.
const AGENT_READY: Duration = Duration::from_secs(30);

/// Build the network-namespace lab and run xlb in it.
#[derive(Parser, Debug)]
#[command(name = "xlb-lab", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: LabArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print the reachability matrix of a held lab's pods (`xlb-lab --hold`
    /// running beside): every pod to every pod on one port and protocol,
    /// rows from, columns to, `.` reachable, `X` not.
    Probe(ProbeArgs),
}

#[derive(clap::Args, Debug)]
struct ProbeArgs {
    /// The destination port.
    #[arg(long, default_value_t = 80)]
    port: u16,
    /// TCP or UDP.
    #[arg(long, default_value = "TCP", value_parser = ["TCP", "UDP", "tcp", "udp"])]
    protocol: String,
    /// Probe the pods' IPv6 addresses.
    #[arg(long)]
    ipv6: bool,
    /// Milliseconds a probe waits for a connection or an answer.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Which held lab (the start of its namespace names, e.g.
    /// xlblab4242-0) when several are held.
    #[arg(long, default_value = NAME_PREFIX)]
    lab: String,
}

#[derive(clap::Args, Debug)]
struct LabArgs {
    /// The `xlb` binary the agents run [default: $XLB_BIN, else the `xlb`
    /// beside this binary].
    #[arg(long, value_name = "PATH")]
    xlb: Option<PathBuf>,
    /// Nodes the workload's pods run on.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    nodes: u32,
    /// The workload: Kubernetes manifests as written for a cluster
    /// (Namespaces, Deployments, Pods, Services, NetworkPolicies)
    /// [default: the embedded seed example, lab/examples/nginx-service.yaml].
    #[arg(long, visible_alias = "config", value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Requests to the IPv4 VIP, each on a new TCP connection.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Requests to the IPv6 VIP, each on a new TCP connection.
    #[arg(long, default_value_t = 50)]
    requests_v6: usize,
    /// Requests to the service's ClusterIP (each family) from a pod and
    /// from a node, each on a new TCP connection.
    #[arg(long, default_value_t = 20)]
    requests_east_west: usize,
    /// Connections in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    concurrency: u32,
    /// After the run, keep the lab up until Ctrl-C (to poke at it; `xlb-lab
    /// probe` finds it).
    #[arg(long)]
    hold: bool,
    /// Extra `xlb run` flag for every agent, e.g. --agent-arg=--xdp-mode=generic; repeatable.
    #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
    agent_args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Cmd::Probe(args)) => probe(args),
        None => run(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xlb-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `xlb-lab probe`: the matrix of the held lab.
fn probe(args: ProbeArgs) -> anyhow::Result<()> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        bail!("`xlb-lab probe` enters the lab's namespaces: run it as root");
    }
    let mut held = held::find(&args.lab);
    let lab = match held.len() {
        0 => bail!(
            "no held lab whose name starts with {:?}: start one with `./scripts/lab.sh --hold` \
             (or `xlb-lab --manifest FILE --hold`) and probe from another shell",
            args.lab
        ),
        1 => held.remove(0),
        _ => bail!(
            "{} held labs: {}; choose one with --lab",
            held.len(),
            held.iter().map(|h| h.prefix.as_str()).collect::<Vec<_>>().join(", ")
        ),
    };
    let probe = Probe {
        port: args.port,
        protocol: if args.protocol.eq_ignore_ascii_case("udp") {
            Protocol::Udp
        } else {
            Protocol::Tcp
        },
        ipv6: args.ipv6,
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let m = reach::matrix(&lab.probe, &lab.probe_pods(), probe)
        .with_context(|| format!("probing the lab {}", lab.prefix))?;
    print!("{m}");
    Ok(())
}

/// Runs the lab. Fails (non-zero exit) if any request failed or the
/// counters do not show direct server return.
fn run(args: LabArgs) -> anyhow::Result<()> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        bail!("`xlb-lab` builds network namespaces and loads BPF programs: run it as root");
    }
    // Checked (and made absolute) before anything is built.
    let xlb = match &args.xlb {
        Some(path) => path.clone(),
        None => agent::xlb_binary()?,
    };
    let xlb = xlb.canonicalize().with_context(|| format!("the xlb binary {}", xlb.display()))?;
    let probe_bin = lab::eastwest::probe_binary(&xlb)?;
    let (text, origin) = match &args.manifest {
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (workload::SEED.to_string(), "lab/examples/nginx-service.yaml (embedded)".into()),
    };
    let work = workload::plan(&text, &origin, args.nodes)?;
    install_signal_teardown()?;
    let stale = Lab::cleanup_stale(NAME_PREFIX).context("removing leftovers of earlier runs")?;
    if !stale.is_empty() {
        println!("removed {} leftovers of killed runs: {}", stale.len(), stale.join(", "));
    }

    let spec = LabSpec {
        nodes: args.nodes,
        workload: work.pod_plans(),
        name_prefix: NAME_PREFIX.into(),
        ..LabSpec::default()
    };
    println!(
        "building the lab: client, router, load balancer, {} node{}; the workload of {origin}: \
         {} pod{} ...",
        spec.nodes,
        plural(spec.nodes),
        work.pods.len(),
        plural(work.pods.len() as u32),
    );
    let t0 = Instant::now();
    let mut lab = Lab::build(spec.clone()).context("building the lab")?;
    println!("  built in {:.1}s: namespaces {}-*", t0.elapsed().as_secs_f64(), lab.prefix());
    print_topology(&lab);

    let config = lab.temp_dir().join("manifest.yaml");
    std::fs::write(&config, work.manifest(&spec))
        .with_context(|| format!("writing {}", config.display()))?;
    print_services(&work, &config);

    let mut agent_spec = AgentSpec::new(&xlb, &config);
    agent_spec.extra_args.extend(args.agent_args.iter().cloned());
    let t1 = Instant::now();
    let ready = agent::lists_services(work.programmed_services());
    let mut agents = agent::start_all_until(&mut lab, &agent_spec, AGENT_READY, &ready)?;
    println!(
        "agents: {} ready in {:.1}s (pins under /sys/fs/bpf/{}, logs in {} until teardown)",
        agents.iter().map(|a| a.node.as_str()).collect::<Vec<_>>().join(", "),
        t1.elapsed().as_secs_f64(),
        lab.prefix(),
        lab.temp_dir().display()
    );

    let outcome = exercise(&lab, &work, &mut agents, &args)
        .and_then(|()| east_west(&lab, &work, &mut agents, &probe_bin, args.requests_east_west));
    if let Err(e) = &outcome {
        for a in &agents {
            eprintln!("--- last lines of the {} agent's log ---\n{}", a.node, a.log_tail(15));
        }
        eprintln!("xlb-lab: {e:#}");
    }
    if args.hold {
        hold(&lab, &work, &xlb, &probe_bin)?;
    }
    println!("tearing down the lab");
    drop(agents);
    drop(lab);
    outcome
}

/// The Services as the agents get them.
fn print_services(work: &Workload, config: &Path) {
    println!("manifests for the agents: {}", config.display());
    for s in &work.services {
        let ips = |v: &[std::net::IpAddr]| {
            v.iter().map(|ip| ip.to_string()).collect::<Vec<_>>().join(" and ")
        };
        let ports: Vec<String> = s
            .ports
            .iter()
            .map(|p| {
                let target = match &p.target {
                    workload::TargetPort::Number(n) => n.to_string(),
                    workload::TargetPort::Name(n) => n.clone(),
                };
                let node = p.node_port.map(|n| format!(" (nodePort {n})")).unwrap_or_default();
                format!("{}/{} -> {target}{node}", p.port, p.protocol.as_str())
            })
            .collect();
        let endpoints = work.pods.iter().filter(|p| s.selects(p)).count();
        let vip = if s.lb_ips.is_empty() {
            String::new()
        } else {
            format!(", LoadBalancer {}", ips(&s.lb_ips))
        };
        println!(
            "  Service {}/{} {}: ClusterIP {}{vip}, port {}; {endpoints} endpoint{}",
            s.namespace,
            s.name,
            s.kind,
            if s.cluster_ips.is_empty() { "None".into() } else { ips(&s.cluster_ips) },
            ports.join(", "),
            plural(endpoints as u32),
        );
    }
}

/// Interface counters of the lab's main links.
struct Snapshot {
    links: BTreeMap<String, LinkStats>,
    counters: BTreeMap<String, BTreeMap<&'static str, u64>>,
}

fn snapshot(lab: &Lab, agents: &[Agent]) -> anyhow::Result<Snapshot> {
    let mut links = BTreeMap::new();
    links.insert("client".to_string(), lab.link_stats("client", "eth0")?);
    links.insert("lb".to_string(), lab.link_stats("lb", "eth0")?);
    for n in lab.nodes() {
        links.insert(n.host.name.clone(), lab.link_stats(&n.host.name, "eth0")?);
    }
    let mut counters = BTreeMap::new();
    for a in agents {
        counters.insert(a.node.clone(), a.counters()?);
    }
    Ok(Snapshot { links, counters })
}

/// The first LoadBalancer Service with load-balancer addresses, a TCP port
/// and endpoints: the one the client reaches by its VIPs.
fn vip_service(work: &Workload) -> Option<(&PlannedService, u16)> {
    work.services.iter().find_map(|s| {
        let port = s.ports.iter().find(|p| p.protocol == Protocol::Tcp)?.port;
        let served = work.pods.iter().any(|p| s.selects(p));
        (s.kind == "LoadBalancer" && !s.lb_ips.is_empty() && served).then_some((s, port))
    })
}

fn exercise(
    lab: &Lab,
    work: &Workload,
    agents: &mut [Agent],
    args: &LabArgs,
) -> anyhow::Result<()> {
    let Some((svc, port)) = vip_service(work) else {
        println!(
            "\nno LoadBalancer Service with a TCP port and endpoints in the workload: \
             no requests through a VIP"
        );
        return pod_to_pod(lab, agents, args);
    };
    let before = snapshot(lab, agents)?;
    let drive = |target: Option<SocketAddr>, requests: usize| -> anyhow::Result<DriveReport> {
        let Some(target) = target else { return Ok(DriveReport::default()) };
        let spec = DriveSpec {
            concurrency: args.concurrency as usize,
            ..DriveSpec::new(vec![target], requests)
        };
        Ok(lab.in_ns("client", || http::drive(&spec))?)
    };
    let vip4 = svc.lb_ips.iter().find(|ip| ip.is_ipv4()).map(|ip| SocketAddr::new(*ip, port));
    let vip6 = svc.lb_ips.iter().find(|ip| ip.is_ipv6()).map(|ip| SocketAddr::new(*ip, port));
    let vips: Vec<SocketAddr> = vip4.into_iter().chain(vip6).collect();
    println!(
        "\nsending {} requests to {} and {} to {} (Service {}/{}'s load-balancer addresses) \
         from the client, one TCP connection each, {} at a time ...",
        args.requests,
        vip4.map_or("-".into(), |a| format!("http://{a}/")),
        args.requests_v6,
        vip6.map_or("-".into(), |a| format!("http://{a}/")),
        svc.namespace,
        svc.name,
        args.concurrency
    );
    // One request per family first: if the VIP does not answer, say so in
    // seconds rather than after hundreds of connect timeouts.
    let probe = lab.in_ns("client", || {
        vips.iter().try_for_each(|vip| {
            http::Conn::connect(*vip, Duration::from_secs(2))
                .and_then(|mut c| c.get(true))
                .map(drop)
        })
    })?;
    if let Err(e) = probe {
        println!("  the VIP does not answer: {e}");
        let dsr = print_dsr(&before, &snapshot(lab, agents)?);
        if let Err(d) = dsr {
            println!("  ({d})");
        }
        bail!("the VIP does not answer: {e}");
    }
    let v4 = drive(vip4, args.requests)?;
    let v6 = drive(vip6, args.requests_v6)?;
    let after = snapshot(lab, agents)?;

    let failed = v4.failures.len() + v6.failures.len();
    let ok = v4.succeeded() + v6.succeeded();
    let mut all = v4.latencies.clone();
    all.extend(&v6.latencies);
    let merged = DriveReport { latencies: all, ..DriveReport::default() };
    let ms =
        |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3));
    println!(
        "  {ok} ok, {failed} failed in {:.0} ms; latency p50 {}, p99 {}, max {}",
        (v4.elapsed + v6.elapsed).as_secs_f64() * 1e3,
        ms(merged.latency_quantile(0.5)),
        ms(merged.latency_quantile(0.99)),
        ms(merged.latency_quantile(1.0)),
    );
    for e in v4.failures.iter().chain(&v6.failures).take(5) {
        println!("  failed: {e}");
    }
    let endpoints = work.pods.iter().filter(|p| svc.selects(p)).map(|p| p.role()).collect();
    print_spread(lab, endpoints, &v4, &v6);
    let dsr = print_dsr(&before, &after);
    let pods = pod_to_pod(lab, agents, args);

    for a in agents.iter_mut() {
        if let Some(status) = a.exited() {
            bail!("the {} agent exited during the run ({status})", a.node);
        }
    }
    if failed > 0 {
        bail!("{failed} of {} requests failed", failed + ok);
    }
    dsr?;
    pods
}

/// Pod-to-pod HTTP across nodes (the Geneve overlay in BPF) and on one node
/// (bpf_redirect_peer), both families, with the counters that show it.
fn pod_to_pod(lab: &Lab, agents: &[Agent], args: &LabArgs) -> anyhow::Result<()> {
    let pods: Vec<_> = lab.pods().cloned().collect();
    // From a pod that serves nothing (a client), else the first; to every
    // other pod that serves TCP, on its first TCP port.
    let Some(from) = pods.iter().find(|p| p.tcp.is_empty() && p.udp.is_empty()).or(pods.first())
    else {
        return Ok(());
    };
    let targets: Vec<_> =
        pods.iter().filter(|p| p.host.name != from.host.name && !p.tcp.is_empty()).collect();
    if targets.is_empty() {
        return Ok(());
    }
    let requests = (args.requests / 4).max(10);
    println!(
        "\npod-to-pod: {requests} requests from {} ({}) to every other pod serving TCP, each \
         family, one TCP connection each ...",
        from.host.name, from.node
    );
    let count = |name: &str| -> u64 {
        agents
            .iter()
            .filter_map(|a| a.counters().ok())
            .map(|c| c.get(name).copied().unwrap_or(0))
            .sum()
    };
    let (enc0, dec0, red0) =
        (count("ok_pod_encap"), count("ok_pod_decap"), count("ok_pod_redirect"));
    let mut failed = 0;
    for to in targets {
        for (family, addr) in
            [("IPv4", std::net::IpAddr::from(to.host.v4)), ("IPv6", to.host.v6.into())]
        {
            let spec = DriveSpec {
                concurrency: 4,
                ..DriveSpec::new(vec![SocketAddr::new(addr, to.tcp[0])], requests)
            };
            let r = lab.in_ns(&from.host.name, || http::drive(&spec))?;
            let served = r.per_backend.get(&to.host.name).copied().unwrap_or(0);
            let path =
                if to.node == from.node { "same node: redirect" } else { "across nodes: overlay" };
            println!(
                "  -> {:<24} {:<6} {family} {:>4} ok, {} failed  ({path})",
                to.host.name,
                to.node,
                served,
                r.failures.len()
            );
            failed += r.failures.len() + (r.succeeded() - served);
        }
    }
    println!(
        "  datapath: {} packets encapsulated, {} decapsulated into pods, {} redirected between pods on a node",
        count("ok_pod_encap") - enc0,
        count("ok_pod_decap") - dec0,
        count("ok_pod_redirect") - red0
    );
    if failed > 0 {
        bail!("{failed} pod-to-pod requests failed or reached the wrong pod");
    }
    Ok(())
}

fn print_spread(lab: &Lab, mut names: Vec<String>, v4: &DriveReport, v6: &DriveReport) {
    let pct =
        |n: usize, total: usize| if total == 0 { 0.0 } else { n as f64 * 100.0 / total as f64 };
    let (t4, t6) = (v4.succeeded(), v6.succeeded());
    println!("\nwhere they landed (the body of each response names the pod that served it):");
    println!("  {:<24} {:<8} {:>14} {:>14} {:>14}", "POD", "NODE", "IPv4", "IPv6", "ALL");
    // Answers from a pod the lab does not know would be a bug; show them.
    for name in v4.per_backend.keys().chain(v6.per_backend.keys()) {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    for name in names {
        let node = lab.pod(&name).map_or("?", |p| p.node.as_str());
        let a = v4.per_backend.get(&name).copied().unwrap_or(0);
        let b = v6.per_backend.get(&name).copied().unwrap_or(0);
        println!(
            "  {:<24} {:<8} {:>6} {:>5.1}%  {:>6} {:>5.1}%  {:>6} {:>5.1}%",
            name,
            node,
            a,
            pct(a, t4),
            b,
            pct(b, t6),
            a + b,
            pct(a + b, t4 + t6)
        );
    }
}

/// Prints the counter deltas and checks them: the LB received no more than
/// the client sent (plus a little neighbour-discovery slack), so none of the
/// replies the client received came through it.
fn print_dsr(before: &Snapshot, after: &Snapshot) -> anyhow::Result<()> {
    let d = |name: &str| after.links[name] - before.links[name];
    let (client, lb) = (d("client"), d("lb"));
    let counter = |node: &str, name: &str| -> u64 {
        let get =
            |s: &Snapshot| s.counters.get(node).and_then(|c| c.get(name)).copied().unwrap_or(0);
        get(after).saturating_sub(get(before))
    };
    println!("\ndirect server return, from the packet counters of this run:");
    println!(
        "  {:<8} eth0  sent {:>7}  received {:>7}",
        "client", client.tx_packets, client.rx_packets
    );
    println!(
        "  {:<8} eth0  sent {:>7}  received {:>7}   XDP: forwarded {} (ok_xdp_tx)",
        "lb",
        lb.tx_packets,
        lb.rx_packets,
        counter("lb", "ok_xdp_tx") + counter("lb", "ok_xdp_redirect")
    );
    let mut node_tx = 0;
    for (name, _) in after.links.iter().filter(|(n, _)| n.starts_with("node")) {
        let n = d(name);
        node_tx += n.tx_packets;
        println!(
            "  {:<8} eth0  sent {:>7}  received {:>7}   tc: decapsulated {}, replies translated {}",
            name,
            n.tx_packets,
            n.rx_packets,
            counter(name, "ok_tc_decap"),
            counter(name, "ok_tc_revnat")
        );
    }
    let mut drops = String::new();
    for (node, c) in &after.counters {
        for (name, _) in c.iter().filter(|(n, _)| n.starts_with("drop_")) {
            let n = counter(node, name);
            if n > 0 {
                let _ = write!(drops, " {node}:{name}={n}");
            }
        }
    }
    if !drops.is_empty() {
        println!("  datapath drops:{drops}");
    }
    // Neighbour discovery and the like may add a few packets either way.
    let slack = 16 + client.tx_packets / 100;
    let through_lb = lb.rx_packets.saturating_sub(client.tx_packets);
    if client.rx_packets <= slack {
        bail!("DSR not shown: the client received only {} packets", client.rx_packets);
    }
    if lb.rx_packets > client.tx_packets + slack {
        bail!(
            "DSR NOT shown: the LB received {} packets, {through_lb} more than the client sent \
             ({}): replies may be crossing it",
            lb.rx_packets,
            client.tx_packets
        );
    }
    println!(
        "  => direct server return: the LB received {} packets for the {} the client sent \
         ({:+} from neighbour discovery and the like); none of the {} replies the client \
         received crossed it: the nodes sent {}.",
        lb.rx_packets,
        client.tx_packets,
        lb.rx_packets as i64 - client.tx_packets as i64,
        client.rx_packets,
        node_tx
    );
    Ok(())
}

fn print_topology(lab: &Lab) {
    let c = lab.client();
    let lb = lab.lb();
    println!("  client {} {} -> router -> lb {} {} (XDP)", c.v4, c.v6, lb.v4, lb.v6);
    for n in lab.nodes() {
        println!("  {} {} {} (tc, socket LB):", n.host.name, n.host.v4, n.host.v6);
        for p in &n.pods {
            let serves: Vec<String> = p
                .tcp
                .iter()
                .map(|t| format!("{t}/TCP"))
                .chain(p.udp.iter().map(|u| format!("{u}/UDP")))
                .collect();
            println!(
                "    pod {}/{} {} {}{}",
                p.namespace,
                p.name,
                p.host.v4,
                p.host.v6,
                if serves.is_empty() {
                    String::new()
                } else {
                    format!(" serving {}", serves.join(" "))
                }
            );
        }
    }
}

/// Keeps the lab up until Ctrl-C (the signal thread tears it down), with
/// its description on disk for `xlb-lab probe`.
fn hold(lab: &Lab, work: &Workload, xlb: &Path, probe: &Path) -> anyhow::Result<()> {
    let state = held::write(lab, probe)?;
    let mut tries = String::new();
    // A pod that serves nothing (a client) if there is one.
    let pod = lab.pods().find(|p| p.tcp.is_empty() && p.udp.is_empty()).or(lab.pods().next());
    if let (Some((svc, port)), Some(pod)) = (east_west_service(work), pod) {
        // Into the pod's cgroup first: `ip netns exec` mounts its own /sys.
        let _ = write!(
            tries,
            "\n  # Service {}/{} from pod {} (in its cgroup, so its node's agent translates):\n  \
             sh -c 'echo $$ > {}/cgroup.procs && exec ip netns exec {} curl -s http://{}/'",
            svc.namespace,
            svc.name,
            pod.host.name,
            lab.cgroup(&pod.host.name).map_or("?".into(), |c| c.path().display().to_string()),
            pod.host.ns,
            SocketAddr::new(svc.cluster_ips[0], port)
        );
    }
    if let Some((svc, port)) = vip_service(work) {
        let _ = write!(
            tries,
            "\n  ip netns exec {} curl -s http://{}/",
            lab.ns("client").unwrap_or("?"),
            SocketAddr::new(svc.lb_ips[0], port)
        );
    }
    println!(
        "\nthe lab stays up until Ctrl-C (described in {}); try:{tries}\n  \
         {} service list --pin-dir /sys/fs/bpf/{}/node1\n  \
         ./scripts/lab.sh probe --port 80          # every pod to every pod: . reachable, X not",
        state.display(),
        xlb.display(),
        lab.prefix()
    );
    loop {
        std::thread::park();
    }
}

/// On SIGINT or SIGTERM: tear down every lab (agents, nginx, namespaces,
/// pins) from a dedicated thread, then exit 130.
fn install_signal_teardown() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Register before returning, so no signal slips by in between.
    let (mut int, mut term) = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;
    std::thread::Builder::new().name("lab-signals".into()).spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("\ninterrupted: tearing down the lab");
        lab::teardown_all();
        std::process::exit(130);
    })?;
    Ok(())
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

// --- East-west (#9): the service's ClusterIP from a pod and from a node ---

/// The Service the east-west requests go to: default/nginx-service (the
/// seed example's) if there is one, else the first with ClusterIPs, a TCP
/// port and endpoints.
fn east_west_service(work: &Workload) -> Option<(&PlannedService, u16)> {
    let usable = |s: &&PlannedService| {
        !s.cluster_ips.is_empty()
            && s.ports.iter().any(|p| p.protocol == Protocol::Tcp)
            && work.pods.iter().any(|p| s.selects(p))
    };
    let svc = work
        .service("default", "nginx-service")
        .filter(usable)
        .or_else(|| work.services.iter().find(usable))?;
    Some((svc, svc.ports.iter().find(|p| p.protocol == Protocol::Tcp)?.port))
}

/// Requests to a Service's ClusterIPs from a client pod (one the Service
/// does not select, on a node without its endpoints if there is one) and
/// from a node's own processes (such a node again), each in its namespace
/// and its cgroup: who answered, the peer the client's socket saw, and the
/// node agents' socket counters (translated at connect(); the packets went
/// straight to the pod).
fn east_west(
    lab: &Lab,
    work: &Workload,
    agents: &mut [Agent],
    probe: &Path,
    requests: usize,
) -> anyhow::Result<()> {
    if requests == 0 {
        return Ok(());
    }
    let Some((svc, port)) = east_west_service(work) else {
        println!("\nno Service with a ClusterIP, a TCP port and endpoints: no east-west requests");
        return Ok(());
    };
    let serving: Vec<String> =
        work.pods.iter().filter(|p| svc.selects(p)).map(|p| lab::spec::node_name(p.node)).collect();
    let node_of = |role: &str| lab.pod(role).map_or("?".to_string(), |p| p.node.clone());
    let others: Vec<_> = work.pods.iter().filter(|p| !svc.selects(p)).collect();
    let pod = others
        .iter()
        .find(|p| !serving.contains(&lab::spec::node_name(p.node)))
        .or(others.first())
        .map(|p| p.role())
        .or_else(|| work.pods.first().map(|p| p.role()))
        .context("the workload has no pod")?;
    let node = lab
        .nodes()
        .iter()
        .map(|n| n.host.name.clone())
        .rfind(|n| !serving.contains(n))
        .or_else(|| lab.nodes().last().map(|n| n.host.name.clone()))
        .context("the lab has no node")?;
    let targets: Vec<SocketAddr> =
        svc.cluster_ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
    // Per agent: connect() translations, getpeername/recvmsg reverse
    // translations, and packets a service translation rewrote per packet
    // (XDP's DNAT, tc's DSR reply and its per-packet fallback; the pod
    // overlay's encapsulation is not a translation and is not counted).
    const PER_PACKET_NAT: [&str; 6] = [
        "ok_xdp_tx",
        "ok_xdp_redirect",
        "ok_local_deliver",
        "ok_tc_revnat",
        "ok_fallback_nat",
        "ok_fallback_revnat",
    ];
    let sock_counters = |agents: &[Agent]| -> anyhow::Result<BTreeMap<String, [u64; 3]>> {
        let mut out = BTreeMap::new();
        for a in agents.iter() {
            let c = a.counters()?;
            let get = |n: &str| c.get(n).copied().unwrap_or(0);
            let packets: u64 = PER_PACKET_NAT.iter().map(|n| get(n)).sum();
            out.insert(a.node.clone(), [get("ok_sock_connect"), get("ok_sock_revnat"), packets]);
        }
        Ok(out)
    };
    println!(
        "\nsending {requests} requests to {} (Service {}/{}'s ClusterIPs) from pod {pod} \
         ({}) and from {node}'s own processes, one TCP connection each ...",
        targets.iter().map(|t| format!("http://{t}/")).collect::<Vec<_>>().join(" and "),
        svc.namespace,
        svc.name,
        node_of(&pod),
    );
    let before = sock_counters(agents)?;
    println!(
        "  {:<12} {:<22} {:>4} {:>6}  {:<24} ANSWERED BY",
        "FROM", "TO", "OK", "FAILED", "PEER SEEN (getpeername)"
    );
    let mut failed = 0;
    let mut wrong_peer = 0;
    for client in [&pod, &node] {
        for &target in &targets {
            let r = lab::eastwest::drive(lab, probe, client, target, requests)?;
            let answered: Vec<String> = r
                .per_backend
                .iter()
                .map(|(pod, n)| format!("{pod} ({}) {n}", node_of(pod)))
                .collect();
            println!(
                "  {client:<12} {:<22} {:>4} {:>6}  {:<24} {}",
                target.to_string(),
                r.succeeded(),
                r.failures.len(),
                if r.wrong_peer == 0 { target.to_string() } else { "NOT the ClusterIP".into() },
                answered.join(", ")
            );
            for e in r.failures.iter().take(3) {
                println!("    failed: {e}");
            }
            failed += r.failures.len();
            wrong_peer += r.wrong_peer;
        }
    }
    let after = sock_counters(agents)?;
    println!("  counters of each agent during these requests:");
    let (mut translated, mut nat) = (0, 0);
    for (node, now) in &after {
        let was = before.get(node).copied().unwrap_or_default();
        let d: Vec<u64> = now.iter().zip(was).map(|(n, w)| n - w).collect();
        translated += d[0];
        nat += d[2];
        println!(
            "    {node:<8} ok_sock_connect +{:<5} ok_sock_revnat +{:<5} packets NAT'd by XDP/tc +{}",
            d[0], d[1], d[2]
        );
    }
    println!(
        "  {translated} connections given a pod's address at connect(); {nat} packets NAT'd \
         on the way"
    );
    for a in agents.iter_mut() {
        if let Some(status) = a.exited() {
            bail!("the {} agent exited during the run ({status})", a.node);
        }
    }
    let connections = 2 * targets.len() * requests;
    if failed > 0 {
        bail!("{failed} of {connections} ClusterIP requests failed");
    }
    if wrong_peer > 0 {
        bail!("{wrong_peer} connections saw a peer other than the ClusterIP");
    }
    if translated < connections as u64 {
        bail!("{translated} socket translations for {connections} ClusterIP connections");
    }
    if nat > 0 {
        bail!("{nat} packets were translated per packet: the ClusterIP traffic was not all translated at the socket");
    }
    Ok(())
}
