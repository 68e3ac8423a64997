//! The lab as the connection-level benchmarks use it: a `lab::Lab` with one
//! `xlb run` agent per node namespace watching a generated manifest
//! ([`XlbLab`]), the manifest rewritten to add/remove/terminate endpoints
//! while traffic runs, and kube-proxy's iptables mode installed in the same
//! LB namespace for a second VIP ([`install_kube_proxy`]): the xlb XDP
//! program passes that VIP up (not a frontend), iptables DNATs it to the pod
//! IPs and masquerades, the router already routes the VIP range to the LB.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::{Duration, Instant},
};

use lab::{
    agent::{self, Agent, AgentSpec},
    manifests::{self, EndpointState},
    Lab, LabError, LabSpec,
};

use crate::kubeproxy::{iptables_restore, synthetic, KpConfig};

/// The VIP kube-proxy's rules answer in the lab (routed to the LB like the
/// xlb VIP, not an xlb frontend).
pub const KP_VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 1);
pub const AGENT_READY: Duration = Duration::from_secs(30);
/// Agents poll their manifest every second.
pub const APPLY_WITHIN: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum RigError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("writing manifest {}: {source}", path.display())]
    Manifest { path: PathBuf, source: std::io::Error },
    #[error("kube-proxy ruleset: {0}")]
    Rules(#[from] crate::kubeproxy::KpError),
    #[error("iptables-restore in {ns}: {detail}")]
    Restore { ns: String, detail: String },
}

/// A lab with agents on the LB and every node. Field order is drop order:
/// agents stop before the lab goes.
pub struct XlbLab {
    pub control: Control,
    pub lab: Lab,
}

/// The agents and the manifest they watch: what changes backends (kept
/// apart from the lab so traffic can borrow the lab meanwhile).
pub struct Control {
    pub agents: Vec<Agent>,
    pub config: PathBuf,
    spec: LabSpec,
}

impl XlbLab {
    /// Builds the lab, writes the manifest with the endpoints `state` says,
    /// starts the agents and waits until each has programmed a backend.
    pub fn start(spec: LabSpec, state: &dyn Fn(&str) -> EndpointState) -> Result<XlbLab, RigError> {
        let exe = agent::xlb_binary()?;
        // Native routes: the baselines reach pods straight from the client.
        let lab =
            Lab::build(LabSpec { static_neighbours: true, native_routes: true, ..spec.clone() })?;
        let config = lab.temp_dir().join("nginx.yaml");
        let control = Control { agents: Vec::new(), config, spec: lab.spec().clone() };
        let mut rig = XlbLab { control, lab };
        rig.control.write_manifest(state)?;
        let agent_spec = AgentSpec::new(&exe, &rig.control.config);
        rig.control.agents = agent::start_all(&mut rig.lab, &agent_spec, AGENT_READY)?;
        // Clean measurements: no ICMP redirects from the LB (it forwards
        // kube-proxy traffic out of the interface it came in on), and the
        // client may use every port for short-lived connections.
        for (ns, key, value) in [
            ("lb", "net.ipv4.conf.all.send_redirects", "0"),
            ("lb", "net.ipv4.conf.eth0.send_redirects", "0"),
            ("client", "net.ipv4.ip_local_port_range", "1024 65535"),
        ] {
            rig.lab.run(ns, "sysctl", &["-qw", &format!("{key}={value}")])?;
        }
        Ok(rig)
    }

    /// Where the agents' logs end (for error messages).
    pub fn logs(&self) -> String {
        self.control.logs()
    }
}

impl Control {
    /// Rewrites the manifest atomically (the agents pick it up within a
    /// second or two).
    pub fn write_manifest(&self, state: &dyn Fn(&str) -> EndpointState) -> Result<(), RigError> {
        let text = manifests::nginx(&self.spec, state);
        let tmp = self.config.with_extension("yaml.new");
        let io = |source| RigError::Manifest { path: self.config.clone(), source };
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &self.config).map_err(io)
    }

    /// Waits until every agent's maps hold exactly `active` (addresses) as
    /// active backends and `terminating` as terminating ones, in every IPv4
    /// service. Returns how long it took.
    pub fn wait_backends(
        &mut self,
        active: &[IpAddr],
        terminating: &[IpAddr],
    ) -> Result<Duration, RigError> {
        use std::collections::BTreeSet;
        let t0 = Instant::now();
        let want_a: BTreeSet<IpAddr> = active.iter().copied().collect();
        let want_t: BTreeSet<IpAddr> = terminating.iter().copied().collect();
        let ready = |services: &[lb::view::ServiceListing]| {
            let v4: Vec<_> =
                services.iter().filter(|s| s.frontends.iter().any(|f| f.addr.is_ipv4())).collect();
            !v4.is_empty()
                && v4.iter().all(|s| {
                    let a: BTreeSet<IpAddr> =
                        s.backends.iter().filter(|b| !b.terminating).map(|b| b.addr).collect();
                    let t: BTreeSet<IpAddr> =
                        s.backends.iter().filter(|b| b.terminating).map(|b| b.addr).collect();
                    a == want_a && t == want_t
                })
        };
        for a in &mut self.agents {
            a.wait_until(APPLY_WITHIN, &ready)?;
        }
        Ok(t0.elapsed())
    }

    /// Where the agents' logs end (for error messages).
    pub fn logs(&self) -> String {
        self.agents.iter().map(|a| format!("--- {} ---\n{}\n", a.node, a.log_tail(10))).collect()
    }
}

/// Loads kube-proxy's iptables ruleset into the LB namespace: `services - 1`
/// filler services and, last in KUBE-SERVICES (the most rules to walk), the
/// measured one: load-balancer IP [`KP_VIP`] port 80 → `endpoints` port 80.
/// Returns the iptables-restore time.
pub fn install_kube_proxy(
    lab: &Lab,
    services: u32,
    endpoints: &[Ipv4Addr],
) -> Result<Duration, RigError> {
    let mut svcs = synthetic(services.saturating_sub(1), 2, Ipv4Addr::new(10, 101, 0, 1), 80, 8080);
    let mut measured = synthetic(1, 1, KP_VIP, 80, 80).remove(0);
    measured.name = "nginx-kp".into();
    measured.cluster_ip = Ipv4Addr::new(10, 97, 0, 1);
    measured.endpoints = endpoints.iter().map(|a| SocketAddrV4::new(*a, 80)).collect();
    svcs.push(measured);
    let rules = iptables_restore(&svcs, &KpConfig::default())?;
    let path = lab.temp_dir().join("kube-proxy.rules");
    std::fs::write(&path, &rules)
        .map_err(|source| RigError::Manifest { path: path.clone(), source })?;
    let t0 = Instant::now();
    let ns = lab.ns("lb")?.to_string();
    let mut cmd = std::process::Command::new("iptables-restore");
    cmd.arg("--noflush").arg(&path);
    let out = lab.output("lb", cmd)?;
    if !out.status.success() {
        return Err(RigError::Restore {
            ns,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(t0.elapsed())
}
