//! xlb agents in the lab: one `xlb run` per node namespace (the LB and every
//! backend node), each with its own bpffs pin directory (bpffs is shared by
//! all namespaces), its output in a log file, and readiness read from its
//! pinned maps through `lb::view` — the same read model `xlb service list` has.
//! A node's agent is also its pod network (`--pod-network`, with the node's
//! CNI directories): pods get their network once it runs
//! ([`crate::Lab::start_pods`]).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lb::view::DatapathView;
pub use lb::view::ServiceListing;

use crate::{Lab, LabChild, LabError};

/// The `xlb` binary: $XLB_BIN, else the one beside this executable
/// (target/<profile>/ for xlb-lab and xlb-perf, or one level up for test
/// executables in deps/).
pub fn xlb_binary() -> Result<PathBuf, LabError> {
    if let Some(p) = std::env::var_os("XLB_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(LabError::NoXlb { tried: p.display().to_string() })
        };
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut tried = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        let p = dir.join("xlb");
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p.display().to_string());
    }
    Err(LabError::NoXlb { tried: tried.join(" or ") })
}

/// One running `xlb run`.
#[derive(Debug)]
pub struct Agent {
    /// Node name: "lb", "node1", ...
    pub node: String,
    pub pin_dir: PathBuf,
    pub log: PathBuf,
    child: LabChild,
}

/// How to start the agents.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    /// The `xlb` binary.
    pub exe: PathBuf,
    /// The manifest file every agent watches.
    pub config: PathBuf,
    /// Extra arguments for `xlb run`.
    pub extra_args: Vec<String>,
    /// RUST_LOG for the agents.
    pub log_filter: String,
}

impl AgentSpec {
    pub fn new(exe: impl Into<PathBuf>, config: impl Into<PathBuf>) -> Self {
        AgentSpec {
            exe: exe.into(),
            config: config.into(),
            extra_args: vec!["--small-maps".into()],
            log_filter: "info".into(),
        }
    }
}

impl Agent {
    /// Starts `xlb run --iface eth0` in the namespace of `node` ("lb",
    /// "node1", ...), with pins in the lab's pin directory for it; a pod
    /// node's agent runs its pod network too.
    pub fn start(lab: &Lab, node: &str, spec: &AgentSpec) -> Result<Agent, LabError> {
        let pin_dir = lab.pin_dir(node)?;
        let log = lab.temp_dir().join(format!("agent-{node}.log"));
        let io = |source| LabError::Io { path: log.clone(), source };
        let out = std::fs::File::create(&log).map_err(io)?;
        let err = out.try_clone().map_err(io)?;
        let mut cmd = Command::new(&spec.exe);
        cmd.args(["run", "--iface", "eth0", "--node-name", node])
            .arg("--config")
            .arg(&spec.config)
            .arg("--pin-dir")
            .arg(&pin_dir)
            .args(if lab.is_node(node) { lab.node_cni(node).agent_args() } else { Vec::new() })
            .args(&spec.extra_args);
        // A node's agent translates service addresses at the sockets of
        // its node's cgroup (its processes and pods; east-west, #9).
        if let Ok(cg) = lab.cgroup(node) {
            cmd.arg("--socket-lb").arg(cg.path());
        }
        cmd.env("RUST_LOG", &spec.log_filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let mut child = lab.spawn(node, cmd)?;
        child.name = format!("xlb agent {node}");
        Ok(Agent { node: node.into(), pin_dir, log, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// What the agent's pinned maps hold.
    pub fn services(&self) -> Result<Vec<ServiceListing>, LabError> {
        let err = |detail: String| LabError::Agent { node: self.node.clone(), detail };
        let view =
            DatapathView::open(&self.pin_dir).map_err(|e| err(format!("opening its maps: {e}")))?;
        view.services().map_err(|e| err(format!("listing its maps: {e}")))
    }

    /// The datapath counters (packets), by name, summed over CPUs.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>, LabError> {
        let counters = lb::loader::read_counters(&self.pin_dir).map_err(|e| LabError::Agent {
            node: self.node.clone(),
            detail: format!("reading counters: {e}"),
        })?;
        Ok(counters.into_iter().map(|(c, n)| (c.name(), n.packets)).collect())
    }

    /// Waits until `ready` holds for its maps (polled), failing early if
    /// the agent exits.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        ready: &dyn Fn(&[ServiceListing]) -> bool,
    ) -> Result<(), LabError> {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(LabError::Agent {
                    node: self.node.clone(),
                    detail: format!("exited ({status}); log:\n{}", self.log_tail(20)),
                });
            }
            let last = match self.services() {
                Ok(s) if ready(&s) => return Ok(()),
                Ok(s) => format!("{} services, not the expected state", s.len()),
                Err(e) => e.to_string(),
            };
            if t0.elapsed() > timeout {
                return Err(LabError::Agent {
                    node: self.node.clone(),
                    detail: format!(
                        "not ready after {} ms ({last}); log:\n{}",
                        t0.elapsed().as_millis(),
                        self.log_tail(20)
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Has it exited? (reaps it if so)
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// SIGTERM (the agent leaves its programs attached unless it runs with
    /// --detach-on-exit; maps stay pinned), then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) -> std::io::Result<std::process::ExitStatus> {
        self.child.stop(grace)
    }

    /// SIGKILL at once (a crash, `kill -9`), then reaps it.
    pub fn kill(&mut self) -> std::io::Result<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child, not yet reaped.
        if unsafe { libc::kill(self.child.pid() as i32, libc::SIGKILL) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.child.stop(Duration::from_secs(5))
    }
}

/// Starts the LB's and every node's agent with `spec`, gives the pods their
/// network once the nodes' agents are up ([`Lab::start_pods`]), and waits
/// up to `timeout` until every agent has programmed an active backend. The
/// agents, LB first. A failure names the agents' last log lines.
pub fn start_all(
    lab: &mut Lab,
    spec: &AgentSpec,
    timeout: Duration,
) -> Result<Vec<Agent>, LabError> {
    start_all_until(lab, spec, timeout, &has_active_backends)
}

/// [`start_all`], ready when `ready` holds for every agent's maps (a
/// workload without Services has no backend to wait for).
pub fn start_all_until(
    lab: &mut Lab,
    spec: &AgentSpec,
    timeout: Duration,
    ready: &dyn Fn(&[ServiceListing]) -> bool,
) -> Result<Vec<Agent>, LabError> {
    let mut agents = Vec::new();
    let names: Vec<String> = std::iter::once("lb".to_string())
        .chain(lab.nodes().iter().map(|n| n.host.name.clone()))
        .collect();
    for node in &names {
        agents.push(Agent::start(lab, node, spec)?);
    }
    if let Err(e) = lab.start_pods() {
        let logs: String =
            agents.iter().map(|a| format!("\n--- {} ---\n{}", a.node, a.log_tail(10))).collect();
        return Err(LabError::Agent { node: "every node".into(), detail: format!("{e}{logs}") });
    }
    for a in &mut agents {
        a.wait_until(timeout, ready)?;
    }
    Ok(agents)
}

/// Starts an agent on every pod node that only runs the pod network (the
/// Nodes of the lab, no services), with `extra` `xlb run` flags: for labs
/// that measure or test without xlb's load balancing but whose pods need
/// their network.
pub fn start_node_agents(lab: &Lab, extra: &[&str]) -> Result<Vec<Agent>, LabError> {
    let config = lab.temp_dir().join("nodes.yaml");
    std::fs::write(&config, crate::manifests::nodes(lab.spec()))
        .map_err(|source| LabError::Io { path: config.clone(), source })?;
    let mut spec = AgentSpec::new(xlb_binary()?, &config);
    spec.extra_args.extend(extra.iter().map(|s| s.to_string()));
    lab.nodes().iter().map(|n| Agent::start(lab, &n.host.name, &spec)).collect()
}

/// A readiness check for [`start_all_until`]: every Service of `names`
/// ("namespace/name") is in the maps (with its backends: a Service and its
/// endpoints are applied together).
pub fn lists_services(names: Vec<String>) -> impl Fn(&[ServiceListing]) -> bool {
    move |listed| names.iter().all(|n| listed.iter().any(|l| l.name.starts_with(&format!("{n}:"))))
}

/// True when some service has at least one active backend.
pub fn has_active_backends(services: &[ServiceListing]) -> bool {
    services.iter().any(|s| s.active_backends > 0)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
