//! `xlb-lab`: the showcase. Builds the network-namespace lab (client,
//! router, LB, nodes with nginx pods; see `lab`), writes the service's
//! manifests, starts one `xlb run` agent per node namespace (the `xlb`
//! binary beside this one, or `--xlb` / $XLB_BIN; the nodes' agents are
//! their pod network), gives the pods their network through xlb-cni as a
//! container runtime does, drives real HTTP requests from the client to the
//! VIP over IPv4 and IPv6 and from pods to pods across nodes through the
//! Geneve overlay, and prints where they landed and the packet counters
//! that show direct server return and the overlay at work; then requests to
//! the service's ClusterIP from a pod and from a node, with the counters
//! that show they were translated at the socket.
//! Everything is torn down on exit and on Ctrl-C. A binary of its own so
//! that the `xlb` agent does not link the lab.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::Parser;
use lab::{
    agent::{self, Agent, AgentSpec},
    http::{self, DriveReport, DriveSpec},
    manifests::{self, EndpointState},
    spec::{CLUSTER_IP_V4, CLUSTER_IP_V6, VIP_PORT, VIP_V4, VIP_V6},
    Lab, LabSpec, LinkStats,
};

/// Start of the lab's namespace names ("xlblab<pid>-<n>-client").
const NAME_PREFIX: &str = "xlblab";
/// How long the agents get to load, attach and apply.
const AGENT_READY: Duration = Duration::from_secs(30);

/// Build the network-namespace lab and run xlb in it.
#[derive(Parser, Debug)]
#[command(name = "xlb-lab", version)]
struct LabArgs {
    /// The `xlb` binary the agents run [default: $XLB_BIN, else the `xlb`
    /// beside this binary].
    #[arg(long, value_name = "PATH")]
    xlb: Option<PathBuf>,
    /// Backend nodes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    nodes: u32,
    /// nginx pods per node.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=32))]
    pods_per_node: u32,
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
    /// Manifests to run instead of the built-in ones (the embedded
    /// examples/nginx.yaml for the default 2 x 1 lab, else generated from
    /// the lab's pods).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// After the run, keep the lab up until Ctrl-C (to poke at it).
    #[arg(long)]
    hold: bool,
    /// Extra `xlb run` flag for every agent, e.g. --agent-arg=--xdp-mode=generic; repeatable.
    #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
    agent_args: Vec<String>,
}

fn main() -> ExitCode {
    match run(LabArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xlb-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
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
    install_signal_teardown()?;
    let stale = Lab::cleanup_stale(NAME_PREFIX).context("removing leftovers of earlier runs")?;
    if !stale.is_empty() {
        println!("removed {} leftovers of killed runs: {}", stale.len(), stale.join(", "));
    }

    let spec = LabSpec {
        nodes: args.nodes,
        pods_per_node: args.pods_per_node,
        name_prefix: NAME_PREFIX.into(),
        ..LabSpec::default()
    };
    let pods = spec.nodes * spec.pods_per_node;
    println!(
        "building the lab: client, router, load balancer, {} node{} with {} nginx pod{} each ...",
        spec.nodes,
        plural(spec.nodes),
        spec.pods_per_node,
        plural(spec.pods_per_node)
    );
    let t0 = Instant::now();
    let mut lab = Lab::build(spec.clone()).context("building the lab")?;
    println!("  built in {:.1}s: namespaces {}-*", t0.elapsed().as_secs_f64(), lab.prefix());
    print_topology(&lab);

    let config = lab.temp_dir().join("nginx.yaml");
    let (text, origin) = match &args.config {
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            format!("{}", path.display()),
        ),
        None if spec.nodes == 2 && spec.pods_per_node == 1 => (
            xlb_control::examples::NGINX.to_string(),
            "control/examples/nginx.yaml (embedded)".into(),
        ),
        None => (
            manifests::nginx(&spec, &|_| EndpointState::Ready),
            format!("generated for the {pods} pods"),
        ),
    };
    std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
    println!(
        "manifests: {origin}: Service default/nginx, LoadBalancer {VIP_V4} and {VIP_V6} port {VIP_PORT}, ClusterIP {CLUSTER_IP_V4} and {CLUSTER_IP_V6}"
    );

    let mut agent_spec = AgentSpec::new(&xlb, &config);
    agent_spec.extra_args.extend(args.agent_args.iter().cloned());
    let t1 = Instant::now();
    let mut agents = agent::start_all(&mut lab, &agent_spec, AGENT_READY)?;
    println!(
        "agents: {} ready in {:.1}s (pins under /sys/fs/bpf/{}, logs in {} until teardown)",
        agents.iter().map(|a| a.node.as_str()).collect::<Vec<_>>().join(", "),
        t1.elapsed().as_secs_f64(),
        lab.prefix(),
        lab.temp_dir().display()
    );

    let outcome = exercise(&lab, &mut agents, &args)
        .and_then(|()| east_west(&lab, &mut agents, &xlb, args.requests_east_west));
    if let Err(e) = &outcome {
        for a in &agents {
            eprintln!("--- last lines of the {} agent's log ---\n{}", a.node, a.log_tail(15));
        }
        eprintln!("xlb-lab: {e:#}");
    }
    if args.hold {
        hold(&lab, &xlb);
    }
    println!("tearing down the lab");
    drop(agents);
    drop(lab);
    outcome
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

fn exercise(lab: &Lab, agents: &mut [Agent], args: &LabArgs) -> anyhow::Result<()> {
    let before = snapshot(lab, agents)?;
    let drive = |target: SocketAddr, requests: usize| -> anyhow::Result<DriveReport> {
        let spec = DriveSpec {
            concurrency: args.concurrency as usize,
            ..DriveSpec::new(vec![target], requests)
        };
        Ok(lab.in_ns("client", || http::drive(&spec))?)
    };
    println!(
        "\nsending {} requests to http://{VIP_V4}/ and {} to http://[{VIP_V6}]/ from the client, \
         one TCP connection each, {} at a time ...",
        args.requests, args.requests_v6, args.concurrency
    );
    // One request per family first: if the VIP does not answer, say so in
    // seconds rather than after hundreds of connect timeouts.
    let vips = [SocketAddr::from((VIP_V4, VIP_PORT)), SocketAddr::from((VIP_V6, VIP_PORT))];
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
    let v4 = drive(vips[0], args.requests)?;
    let v6 = drive(vips[1], args.requests_v6)?;
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
    print_spread(lab, &v4, &v6);
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
    let Some(from) = pods.first() else { return Ok(()) };
    let requests = (args.requests / 4).max(10);
    println!(
        "\npod-to-pod: {requests} requests from {} ({}) to every other pod, each family, \
         one TCP connection each ...",
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
    for to in pods.iter().filter(|p| p.host.name != from.host.name) {
        for (family, addr) in
            [("IPv4", std::net::IpAddr::from(to.host.v4)), ("IPv6", to.host.v6.into())]
        {
            let spec = DriveSpec {
                concurrency: 4,
                ..DriveSpec::new(vec![SocketAddr::new(addr, 80)], requests)
            };
            let r = lab.in_ns(&from.host.name, || http::drive(&spec))?;
            let served = r.per_backend.get(&to.host.name).copied().unwrap_or(0);
            let path =
                if to.node == from.node { "same node: redirect" } else { "across nodes: overlay" };
            println!(
                "  -> {:<8} {:<6} {family} {:>4} ok, {} failed  ({path})",
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

fn print_spread(lab: &Lab, v4: &DriveReport, v6: &DriveReport) {
    let pct =
        |n: usize, total: usize| if total == 0 { 0.0 } else { n as f64 * 100.0 / total as f64 };
    let (t4, t6) = (v4.succeeded(), v6.succeeded());
    println!("\nwhere they landed (the body of each response names the pod that served it):");
    println!("  {:<10} {:<8} {:>14} {:>14} {:>14}", "POD", "NODE", "IPv4", "IPv6", "ALL");
    let mut names: Vec<String> = lab.pods().map(|p| p.host.name.clone()).collect();
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
            "  {:<10} {:<8} {:>6} {:>5.1}%  {:>6} {:>5.1}%  {:>6} {:>5.1}%",
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
        let pods: Vec<String> =
            n.pods.iter().map(|p| format!("{} {} {}", p.host.name, p.host.v4, p.host.v6)).collect();
        println!("  {} {} {} (tc): {}", n.host.name, n.host.v4, n.host.v6, pods.join(", "));
    }
}

/// Keeps the lab up until Ctrl-C (the signal thread tears it down).
fn hold(lab: &Lab, xlb: &Path) {
    println!(
        "\nthe lab stays up until Ctrl-C; try:\n  ip netns exec {} curl -s http://{VIP_V4}/\n  \
         {} service list --pin-dir /sys/fs/bpf/{}/lb",
        lab.ns("client").unwrap_or("?"),
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

/// Requests to the ClusterIPs from the first pod and from the last node's
/// own processes (each in its namespace and its cgroup): who answered, the
/// peer the client's socket saw, and the node agents' socket counters
/// (translated at connect(); the packets went straight to the pod).
fn east_west(lab: &Lab, agents: &mut [Agent], xlb: &Path, requests: usize) -> anyhow::Result<()> {
    if requests == 0 {
        return Ok(());
    }
    let probe = lab::eastwest::probe_binary(xlb)?;
    let pod = lab.pods().next().context("the lab has no pod")?.host.name.clone();
    let node = lab.nodes().last().context("the lab has no node")?.host.name.clone();
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
        "\nsending {requests} requests to http://{CLUSTER_IP_V4}/ and to \
         http://[{CLUSTER_IP_V6}]/ (the service's ClusterIPs) from {pod} and from {node}, \
         one TCP connection each ..."
    );
    let before = sock_counters(agents)?;
    println!(
        "  {:<8} {:<22} {:>4} {:>6}  {:<24} ANSWERED BY",
        "FROM", "TO", "OK", "FAILED", "PEER SEEN (getpeername)"
    );
    let mut failed = 0;
    let mut wrong_peer = 0;
    for client in [&pod, &node] {
        for target in [
            SocketAddr::from((CLUSTER_IP_V4, VIP_PORT)),
            SocketAddr::from((CLUSTER_IP_V6, VIP_PORT)),
        ] {
            let r = lab::eastwest::drive(lab, &probe, client, target, requests)?;
            let answered: Vec<String> =
                r.per_backend.iter().map(|(pod, n)| format!("{pod} {n}")).collect();
            println!(
                "  {client:<8} {:<22} {:>4} {:>6}  {:<24} {}",
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
    if failed > 0 {
        bail!("{failed} of {} ClusterIP requests failed", 4 * requests);
    }
    if wrong_peer > 0 {
        bail!("{wrong_peer} connections saw a peer other than the ClusterIP");
    }
    if translated < 4 * requests as u64 {
        bail!("{translated} socket translations for {} ClusterIP connections", 4 * requests);
    }
    Ok(())
}
