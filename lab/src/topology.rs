//! [`Lab`]: builds the topology of [`crate::spec`] out of named namespaces,
//! veth pairs and a bridge; gives the pods their network through each
//! node's CNI plugin once the nodes' agents run ([`Lab::start_pods`]); runs
//! processes, closures and nginx backends in it; tears it all down on drop
//! (pods first, with CNI DEL, as a runtime would).
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use crate::{
    cgroup::{self, Cgroup},
    cni::{self, Attachment, NodeCni},
    netns, nginx,
    process::LabChild,
    registry::Owned,
    spec::{self, LabSpec},
    stats::{self, LinkStats},
    LabError,
};

/// Where pinned BPF objects live; the lab makes per-lab directories below.
const BPFFS: &str = "/sys/fs/bpf";
/// How long a fresh nginx gets to answer.
const BACKEND_READY: Duration = Duration::from_secs(5);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A namespace of the lab with its main addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Role name: "client", "router", "lb", "node1", "pod1-1".
    pub name: String,
    /// Full namespace name: "<prefix>-<name>".
    pub ns: String,
    /// Address of its eth0 (router: its client-side c0).
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// A backend node: eth0 on the fabric, routes to its pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub host: Host,
    /// 1-based; picks its addresses and pod CIDR.
    pub index: u32,
    pub pods: Vec<Pod>,
}

/// A pod: nginx on port 80 answering "<name>\n" (a pod "podN-M" of the
/// lab's spec), or a workload's pod serving its declared ports with
/// `xlb-probe serve`, answering its lab name. Its addresses are the address
/// plan's (asked of the CNI plugin as static addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// `host.name` is its lab name ([`spec::role`]).
    pub host: Host,
    /// Kubernetes namespace and name.
    pub namespace: String,
    pub name: String,
    /// The ports its server listens on.
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
    /// Name of the node it runs on.
    pub node: String,
    /// The interface on the node that leads to it (the host-side veth
    /// xlb-cni made; empty until [`Lab::start_pods`]).
    pub node_iface: String,
}

/// A built lab. Dropping it tears everything down.
pub struct Lab {
    spec: LabSpec,
    prefix: String,
    owned: Arc<Owned>,
    client: Host,
    router: Host,
    lb: Host,
    nodes: Vec<Node>,
    tmp: PathBuf,
    backends: Mutex<BTreeMap<String, LabChild>>,
    /// Keeps xlb_pass attached on the LB's router-side veth.
    xdp_pass: Option<aya::Ebpf>,
    /// The pods' CNI attachments (DEL'd at teardown), by pod name.
    attachments: Mutex<BTreeMap<String, Attachment>>,
    /// The lab's cgroup tree (east-west, #9): <cgroup2>/<prefix>.
    cgroups: PathBuf,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab").field("prefix", &self.prefix).field("spec", &self.spec).finish()
    }
}

fn host(prefix: &str, name: String, v4: Ipv4Addr, v6: Ipv6Addr) -> Host {
    Host { ns: format!("{prefix}-{name}"), name, v4, v6 }
}

impl Lab {
    /// Builds the lab: namespaces (the pods' too), links, addresses,
    /// routes, sysctls and the XDP_PASS program on the LB's router-side
    /// peer. The pods have no network yet: it is the nodes' agents' to give
    /// (start them, then [`Lab::start_pods`]). On error, whatever was built
    /// is torn down.
    pub fn build(spec: LabSpec) -> Result<Lab, LabError> {
        spec.validate()?;
        // SAFETY: plain syscall.
        let uid = unsafe { libc::geteuid() };
        if uid != 0 {
            return Err(LabError::NotRoot { uid });
        }
        let prefix = format!(
            "{}{}-{}",
            spec.name_prefix,
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let owned = Owned::register(prefix.clone());
        let tmp = std::env::temp_dir().join(&prefix);
        owned.add_dir(tmp.clone());
        let nodes = (1..=spec.nodes)
            .map(|n| {
                let pods = if spec.workload.is_empty() {
                    (1..=spec.pods_per_node)
                        .map(|m| Pod {
                            host: host(
                                &prefix,
                                spec::pod_name(n, m),
                                spec::pod_v4(n, m),
                                spec::pod_v6(n, m),
                            ),
                            namespace: "default".into(),
                            name: spec::pod_name(n, m),
                            tcp: vec![80],
                            udp: Vec::new(),
                            node: spec::node_name(n),
                            node_iface: String::new(),
                        })
                        .collect()
                } else {
                    spec.workload
                        .iter()
                        .filter(|p| p.node == n)
                        .map(|p| Pod {
                            host: host(
                                &prefix,
                                p.role(),
                                spec::pod_v4(n, p.slot),
                                spec::pod_v6(n, p.slot),
                            ),
                            namespace: p.namespace.clone(),
                            name: p.name.clone(),
                            tcp: p.tcp.clone(),
                            udp: p.udp.clone(),
                            node: spec::node_name(n),
                            node_iface: String::new(),
                        })
                        .collect()
                };
                Node {
                    host: host(&prefix, spec::node_name(n), spec::node_v4(n), spec::node_v6(n)),
                    index: n,
                    pods,
                }
            })
            .collect();
        let mut lab = Lab {
            client: host(&prefix, "client".into(), spec::CLIENT_V4, spec::CLIENT_V6),
            router: host(&prefix, "router".into(), spec::ROUTER_CLIENT_V4, spec::ROUTER_CLIENT_V6),
            lb: host(&prefix, "lb".into(), spec::LB_V4, spec::LB_V6),
            nodes,
            spec,
            prefix,
            owned,
            tmp,
            backends: Mutex::new(BTreeMap::new()),
            xdp_pass: None,
            attachments: Mutex::new(BTreeMap::new()),
            cgroups: PathBuf::new(),
        };
        let t0 = Instant::now();
        std::fs::create_dir_all(&lab.tmp)
            .map_err(|source| LabError::Io { path: lab.tmp.clone(), source })?;
        lab.create_namespaces()?;
        lab.create_cgroups()?;
        lab.wire()?;
        lab.prepare_fabric()?;
        lab.attach_pass()?;
        tracing::info!(prefix = %lab.prefix, took_ms = t0.elapsed().as_millis() as u64, "lab built");
        Ok(lab)
    }

    /// Removes what killed runs left behind: namespaces, bpffs directories
    /// and temp directories named "<base><pid>-<seq>..." whose pid is no
    /// longer running (processes inside such namespaces are killed).
    /// Returns the names removed.
    pub fn cleanup_stale(base: &str) -> Result<Vec<String>, LabError> {
        let mut removed = Vec::new();
        for ns in netns::list()? {
            if stale(base, &ns) {
                crate::registry::stop_pids(&netns::pids(&ns), Duration::from_millis(500));
                netns::delete(&ns)?;
                removed.push(ns);
            }
        }
        if let Ok(root) = cgroup::root() {
            for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if stale(base, &name) {
                    let path = e.path();
                    Cgroup { path: path.clone() }
                        .remove()
                        .map_err(|source| LabError::Io { path: path.clone(), source })?;
                    removed.push(path.display().to_string());
                }
            }
        }
        for dir in [PathBuf::from(BPFFS), std::env::temp_dir()] {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if stale(base, &name) {
                    let path = e.path();
                    std::fs::remove_dir_all(&path)
                        .map_err(|source| LabError::Io { path: path.clone(), source })?;
                    removed.push(path.display().to_string());
                }
            }
        }
        Ok(removed)
    }

    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }
    /// "<name_prefix><pid>-<seq>", the start of every namespace name.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn client(&self) -> &Host {
        &self.client
    }
    pub fn router(&self) -> &Host {
        &self.router
    }
    pub fn lb(&self) -> &Host {
        &self.lb
    }
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.nodes.iter().flat_map(|n| n.pods.iter())
    }
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods().find(|p| p.host.name == name)
    }
    /// Every host of the lab, client first.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        [&self.client, &self.router, &self.lb]
            .into_iter()
            .chain(self.nodes.iter().map(|n| &n.host))
            .chain(self.pods().map(|p| &p.host))
    }
    /// The lab's scratch directory (nginx configs and logs), removed on drop.
    pub fn temp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Full namespace name for a role name ("client", "node1") or a full name.
    pub fn ns(&self, name: &str) -> Result<&str, LabError> {
        self.hosts().find(|h| h.name == name || h.ns == name).map(|h| h.ns.as_str()).ok_or_else(
            || LabError::UnknownNamespace {
                name: name.into(),
                prefix: self.prefix.clone(),
                known: self.hosts().map(|h| h.name.as_str()).collect::<Vec<_>>().join(", "),
            },
        )
    }

    /// Starts `cmd` inside namespace `ns` (role or full name). The process
    /// is stopped when the returned guard or the lab is dropped, and gets
    /// SIGKILL if the calling thread dies first (PR_SET_PDEATHSIG): spawn
    /// from a thread that outlives the process.
    pub fn spawn(&self, ns: &str, mut cmd: Command) -> Result<LabChild, LabError> {
        let ns = self.ns(ns)?.to_string();
        netns::enter_before_exec(&ns, &mut cmd)?;
        let name = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd.spawn().map_err(|source| LabError::Spawn {
            ns: ns.clone(),
            cmd: netns::describe(&cmd),
            source,
        })?;
        self.owned.add_pid(child.id() as i32);
        Ok(LabChild { child, name, ns, owner: self.owned.clone(), reaped: false })
    }

    /// Runs `cmd` in `ns` to completion with output captured, whatever its
    /// exit status.
    pub fn output(&self, ns: &str, mut cmd: Command) -> Result<Output, LabError> {
        let ns = self.ns(ns)?.to_string();
        netns::enter_before_exec(&ns, &mut cmd)?;
        cmd.stdin(Stdio::null()).output().map_err(|source| LabError::Spawn {
            ns,
            cmd: netns::describe(&cmd),
            source,
        })
    }

    /// Runs `program args` in `ns`; a non-zero exit is an error with stderr.
    /// Returns stdout.
    pub fn run(&self, ns: &str, program: &str, args: &[&str]) -> Result<String, LabError> {
        let ns = self.ns(ns)?.to_string();
        let mut cmd = Command::new(program);
        cmd.args(args);
        netns::enter_before_exec(&ns, &mut cmd)?;
        let out = netns::run_checked(&mut cmd, &ns)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a thread inside `ns`: sockets it opens live there.
    pub fn in_ns<T, F>(&self, ns: &str, f: F) -> Result<T, LabError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        netns::in_netns(self.ns(ns)?, f)
    }

    /// Counters of `iface` in `ns`.
    pub fn link_stats(&self, ns: &str, iface: &str) -> Result<LinkStats, LabError> {
        stats::link_stats(self.ns(ns)?, iface)
    }

    /// A fresh directory /sys/fs/bpf/<prefix>/<name> for one agent's pins
    /// (bpffs is shared by all namespaces, so each agent needs its own);
    /// removed with the lab.
    pub fn pin_dir(&self, name: &str) -> Result<PathBuf, LabError> {
        let root = Path::new(BPFFS).join(&self.prefix);
        self.owned.add_dir(root.clone());
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)
            .map_err(|source| LabError::Io { path: dir.clone(), source })?;
        Ok(dir)
    }

    /// A further namespace "<prefix>-<role>" (lo up), removed with the lab
    /// (benchmarks' extra pods). Its full name.
    pub fn add_namespace(&self, role: &str) -> Result<String, LabError> {
        let ns = format!("{}-{role}", self.prefix);
        netns::add(&ns)?;
        self.owned.add_namespace(ns.clone());
        netns::ip(&ns, &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Removes `dir` (recursively) with the lab.
    pub fn track_dir(&self, dir: PathBuf) {
        self.owned.add_dir(dir);
    }

    /// The CNI directories of node `node` (the agent's flags:
    /// [`NodeCni::agent_args`]).
    pub fn node_cni(&self, node: &str) -> NodeCni {
        NodeCni::under(&self.tmp, node)
    }

    /// Whether `name` is one of the lab's pod-running nodes (not the LB).
    pub fn is_node(&self, name: &str) -> bool {
        self.nodes.iter().any(|n| n.host.name == name)
    }

    /// Gives every pod its network as a container runtime does: the
    /// node's CNI configuration list (waiting until the node's agent has
    /// installed it), xlb-cni ADD with the pod's namespace and its planned
    /// addresses (CNI_ARGS IP=...); then, if `spec.backends`, nginx in
    /// every pod (ready when this returns).
    pub fn start_pods(&mut self) -> Result<(), LabError> {
        let plugin_dir = cni::plugin_dir()?;
        for i in 0..self.nodes.len() {
            let node = self.nodes[i].host.name.clone();
            let list = cni::conflist(&self.node_cni(&node).conf_dir, cni::CNI_READY)?;
            for j in 0..self.nodes[i].pods.len() {
                let p = self.nodes[i].pods[j].host.clone();
                let a = Attachment {
                    node_ns: self.nodes[i].host.ns.clone(),
                    container_id: p.ns.clone(),
                    netns: Path::new("/run/netns").join(&p.ns),
                    ifname: "eth0".into(),
                    args: format!(
                        "K8S_POD_NAMESPACE={};K8S_POD_NAME={};IP={},{}",
                        self.nodes[i].pods[j].namespace, self.nodes[i].pods[j].name, p.v4, p.v6
                    ),
                    conflist: serde_json::Value::Null,
                    result: serde_json::Value::Null,
                };
                let a = cni::add(&plugin_dir, &list, a, cni::CNI_READY)?;
                self.nodes[i].pods[j].node_iface =
                    a.result["interfaces"][0]["name"].as_str().unwrap_or_default().to_string();
                self.attachments.lock().unwrap_or_else(|e| e.into_inner()).insert(p.name, a);
            }
        }
        if self.spec.backends {
            let pods: Vec<String> = self.pods().map(|p| p.host.name.clone()).collect();
            for pod in &pods {
                if self.spec.workload.is_empty() {
                    self.start_backend(pod)?;
                } else {
                    self.start_server(pod)?;
                }
            }
        }
        Ok(())
    }

    /// Starts `xlb-probe serve` in workload pod `pod` (its namespace and
    /// cgroup) on its declared ports, answering its lab name, and waits
    /// until every socket is bound. Nothing for a pod without ports.
    pub fn start_server(&self, pod: &str) -> Result<(), LabError> {
        let p = self.pod(pod).ok_or_else(|| LabError::UnknownNamespace {
            name: pod.into(),
            prefix: self.prefix.clone(),
            known: self.pods().map(|p| p.host.name.as_str()).collect::<Vec<_>>().join(", "),
        })?;
        if p.tcp.is_empty() && p.udp.is_empty() {
            return Ok(());
        }
        self.stop_backend(pod);
        let probe = crate::eastwest::probe_binary(&crate::agent::xlb_binary()?)?;
        let mut cmd = Command::new(probe);
        cmd.args(["serve", "--name", pod]);
        for port in &p.tcp {
            cmd.args(["--tcp", &port.to_string()]);
        }
        for port in &p.udp {
            cmd.args(["--udp", &port.to_string()]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        self.cgroup(pod)?.join_before_exec(&mut cmd);
        let mut child = self.spawn(&p.host.ns, cmd)?;
        child.name = format!("server {pod}");
        // It prints "serving" once every socket is bound, or fails.
        let mut line = String::new();
        let stdout = child.child_mut().stdout.take();
        let read = stdout.map(|out| {
            use std::io::BufRead as _;
            std::io::BufReader::new(out).read_line(&mut line)
        });
        if line.trim() != "serving" {
            let mut stderr = String::new();
            if let Some(mut e) = child.child_mut().stderr.take() {
                use std::io::Read as _;
                let _ = e.read_to_string(&mut stderr);
            }
            return Err(LabError::BackendNotReady {
                pod: pod.into(),
                addr: format!("tcp {:?} udp {:?}", p.tcp, p.udp),
                waited_ms: 0,
                detail: format!("xlb-probe serve: {read:?}: {}", stderr.trim()),
            });
        }
        self.backends.lock().unwrap_or_else(|p| p.into_inner()).insert(pod.into(), child);
        Ok(())
    }

    /// Starts nginx in pod `pod` and waits until it answers on both
    /// families. Replaces a running one.
    pub fn start_backend(&self, pod: &str) -> Result<(), LabError> {
        let p = self.pod(pod).ok_or_else(|| LabError::UnknownNamespace {
            name: pod.into(),
            prefix: self.prefix.clone(),
            known: self.pods().map(|p| p.host.name.as_str()).collect::<Vec<_>>().join(", "),
        })?;
        self.stop_backend(pod);
        let dir = self.tmp.join(pod);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LabError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx::config(pod, &dir)).map_err(io(&conf))?;
        let log = dir.join("stderr.log");
        let stderr = std::fs::File::create(&log).map_err(io(&log))?;
        let mut cmd = Command::new("nginx");
        cmd.arg("-c").arg(&conf).arg("-p").arg(&dir).arg("-e").arg(dir.join("error.log"));
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        self.cgroup(pod)?.join_before_exec(&mut cmd);
        let mut child = self.spawn(&p.host.ns, cmd)?;
        child.name = format!("nginx {pod}");
        let targets = [SocketAddr::from((p.host.v4, 80)), SocketAddr::from((p.host.v6, 80))];
        let t0 = Instant::now();
        let ready = self.in_ns(&p.host.ns, || {
            let mut last = String::new();
            while t0.elapsed() < BACKEND_READY {
                match targets.iter().try_for_each(|a| {
                    TcpStream::connect_timeout(a, Duration::from_millis(200)).map(drop)
                }) {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e.to_string(),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(last)
        })?;
        if let Err(detail) = ready {
            let exited = child.try_wait().ok().flatten();
            let mut detail = detail;
            if let Some(status) = exited {
                let _ = write!(detail, "; nginx exited ({status})");
            }
            let errlog = std::fs::read_to_string(&log).unwrap_or_default()
                + &std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            if !errlog.trim().is_empty() {
                let _ = write!(detail, "; log: {}", errlog.trim());
            }
            return Err(LabError::BackendNotReady {
                pod: pod.into(),
                addr: format!("{} and {}", targets[0], targets[1]),
                waited_ms: t0.elapsed().as_millis(),
                detail,
            });
        }
        self.backends.lock().unwrap_or_else(|p| p.into_inner()).insert(pod.into(), child);
        Ok(())
    }

    /// Stops pod `pod`'s nginx, if running.
    pub fn stop_backend(&self, pod: &str) {
        let child = self.backends.lock().unwrap_or_else(|p| p.into_inner()).remove(pod);
        drop(child);
    }

    /// Tears the lab down now (same as dropping it).
    pub fn teardown(self) {}

    fn create_namespaces(&self) -> Result<(), LabError> {
        // The LB forwards too: bpf_fib_lookup from XDP answers "forwarding
        // disabled" on an ingress device that does not forward.
        let forwarders: Vec<&str> = [self.router.ns.as_str(), self.lb.ns.as_str()]
            .into_iter()
            .chain(self.nodes.iter().map(|n| n.host.ns.as_str()))
            .collect();
        for h in self.hosts() {
            netns::add(&h.ns)?;
            self.owned.add_namespace(h.ns.clone());
            let mut sysctls = vec![
                // Addresses usable at once: no duplicate address detection.
                ("net/ipv6/conf/all/accept_dad", "0"),
                ("net/ipv6/conf/default/accept_dad", "0"),
                ("net/ipv4/conf/all/rp_filter", "0"),
                ("net/ipv4/conf/default/rp_filter", "0"),
                ("net/ipv4/conf/all/accept_redirects", "0"),
                ("net/ipv4/conf/default/accept_redirects", "0"),
                ("net/ipv6/conf/all/accept_redirects", "0"),
                ("net/ipv6/conf/default/accept_redirects", "0"),
            ];
            if forwarders.contains(&h.ns.as_str()) {
                sysctls.extend([
                    ("net/ipv4/ip_forward", "1"),
                    ("net/ipv6/conf/all/forwarding", "1"),
                    ("net/ipv6/conf/default/forwarding", "1"),
                    // The router forwards between ports of one bridge (LB to
                    // node): redirects would only teach hosts to bypass it.
                    ("net/ipv4/conf/all/send_redirects", "0"),
                    ("net/ipv4/conf/default/send_redirects", "0"),
                ]);
            }
            write_sysctls(&h.ns, &sysctls)?;
            netns::ip(&h.ns, &["link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    fn wire(&self) -> Result<(), LabError> {
        let fabric = self.spec.fabric_mtu.to_string();
        let edge = self.spec.client_mtu.to_string();
        let (r, c, l) = (&self.router.ns, &self.client.ns, &self.lb.ns);
        let cidr4 = |(a, l): (Ipv4Addr, u8)| format!("{a}/{l}");
        let cidr6 = |(a, l): (Ipv6Addr, u8)| format!("{a}/{l}");

        // client <-> router
        veth(r, "c0", c, "eth0", &edge)?;
        addr(
            r,
            "c0",
            &format!("{}/24", spec::ROUTER_CLIENT_V4),
            &format!("{}/64", spec::ROUTER_CLIENT_V6),
        )?;
        addr(c, "eth0", &format!("{}/24", spec::CLIENT_V4), &format!("{}/64", spec::CLIENT_V6))?;
        default_routes(
            c,
            &spec::ROUTER_CLIENT_V4.to_string(),
            &spec::ROUTER_CLIENT_V6.to_string(),
        )?;

        // the fabric bridge; the LB and the nodes are its ports
        netns::ip(
            r,
            &["link", "add", "br0", "type", "bridge", "stp_state", "0", "mcast_snooping", "0"],
        )?;
        netns::ip(r, &["link", "set", "br0", "mtu", &fabric])?;
        veth(r, "lb0", l, "eth0", &fabric)?;
        netns::ip(r, &["link", "set", "lb0", "master", "br0"])?;
        for n in &self.nodes {
            let port = format!("n{}", n.index);
            veth(r, &port, &n.host.ns, "eth0", &fabric)?;
            netns::ip(r, &["link", "set", &port, "master", "br0"])?;
        }
        netns::ip(r, &["link", "set", "br0", "up"])?;
        addr(
            r,
            "br0",
            &format!("{}/24", spec::ROUTER_FABRIC_V4),
            &format!("{}/64", spec::ROUTER_FABRIC_V6),
        )?;
        addr(l, "eth0", &format!("{}/24", spec::LB_V4), &format!("{}/64", spec::LB_V6))?;
        let (gw4, gw6) = (spec::ROUTER_FABRIC_V4.to_string(), spec::ROUTER_FABRIC_V6.to_string());
        default_routes(l, &gw4, &gw6)?;
        // VIP packets the XDP program passes up (no such service) end here
        // with an ICMP error instead of looping LB -> router -> LB.
        netns::ip(l, &["route", "add", "unreachable", &cidr4(spec::VIP_RANGE_V4)])?;
        netns::ip(l, &["-6", "route", "add", "unreachable", &cidr6(spec::VIP_RANGE_V6)])?;
        netns::ip(
            r,
            &["route", "add", &cidr4(spec::VIP_RANGE_V4), "via", &spec::LB_V4.to_string()],
        )?;
        netns::ip(
            r,
            &["-6", "route", "add", &cidr6(spec::VIP_RANGE_V6), "via", &spec::LB_V6.to_string()],
        )?;

        for n in &self.nodes {
            let ns = &n.host.ns;
            let i = n.index;
            addr(ns, "eth0", &format!("{}/24", n.host.v4), &format!("{}/64", n.host.v6))?;
            default_routes(ns, &gw4, &gw6)?;
            // A routed underlay that knows the pod ranges (a cloud VPC's
            // alias ranges): the router sends them to their node. Without
            // it only the overlay reaches pods (the pods' network is the
            // CNI plugin's: see start_pods).
            if self.spec.native_routes {
                let (v4, v6) = (n.host.v4.to_string(), n.host.v6.to_string());
                netns::ip(r, &["route", "add", &cidr4(spec::pod_cidr_v4(i)), "via", &v4])?;
                netns::ip(r, &["-6", "route", "add", &cidr6(spec::pod_cidr_v6(i)), "via", &v6])?;
            }
        }
        Ok(())
    }

    /// Makes the fabric look like real NICs to the LB's XDP program:
    /// - lb0 computes checksums itself: a veth otherwise hands the LB
    ///   CHECKSUM_PARTIAL packets (pseudo-header sum only, finished "by the
    ///   hardware" later), which XDP rewrites and XDP_TX sends on unfinished;
    /// - with `static_neighbours`, permanent neighbour entries on the LB for
    ///   every node: XDP's bpf_fib_lookup needs a resolved next hop, and
    ///   nothing on the LB itself ever talks to the nodes.
    fn prepare_fabric(&self) -> Result<(), LabError> {
        let r = &self.router.ns;
        netns::in_netns(r, || set_tx_checksum(r, "lb0", false))??;
        if self.spec.static_neighbours {
            for n in &self.nodes {
                let mac = mac_of(&n.host.ns, "eth0")?;
                for ip in [n.host.v4.to_string(), n.host.v6.to_string()] {
                    netns::ip(
                        &self.lb.ns,
                        &[
                            "neigh",
                            "replace",
                            &ip,
                            "lladdr",
                            &mac,
                            "dev",
                            "eth0",
                            "nud",
                            "permanent",
                        ],
                    )?;
                }
            }
        }
        Ok(())
    }

    /// xlb_pass on lb0, the router-side peer of the LB's eth0: a veth only
    /// accepts XDP_TX'd (and redirected) frames when its peer runs XDP.
    fn attach_pass(&mut self) -> Result<(), LabError> {
        let ns = self.router.ns.clone();
        let ebpf = netns::in_netns(&ns, || -> Result<aya::Ebpf, LabError> {
            let mut ebpf = aya::Ebpf::load(testkit::objects::pass())
                .map_err(|e| LabError::XdpLoad { source: Box::new(e) })?;
            let attach_err = |e: aya::programs::ProgramError| LabError::XdpAttach {
                ns: ns.clone(),
                iface: "lb0".into(),
                source: Box::new(e),
            };
            let prog: &mut aya::programs::Xdp = ebpf
                .program_mut("xlb_pass")
                .ok_or(LabError::XdpProgramMissing { name: "xlb_pass" })?
                .try_into()
                .map_err(attach_err)?;
            prog.load().map_err(attach_err)?;
            prog.attach("lb0", aya::programs::XdpMode::Driver).map_err(attach_err)?;
            Ok(ebpf)
        })??;
        self.xdp_pass = Some(ebpf);
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let t0 = Instant::now();
        self.backends.lock().unwrap_or_else(|p| p.into_inner()).clear();
        // The pods go as a runtime removes them: CNI DEL, best effort.
        let attachments =
            std::mem::take(&mut *self.attachments.lock().unwrap_or_else(|p| p.into_inner()));
        if let Ok(dir) = cni::plugin_dir() {
            for a in attachments.values() {
                if let Err(e) = cni::del(&dir, a) {
                    tracing::warn!(pod = %a.container_id, error = %e, "CNI DEL");
                }
            }
        }
        self.xdp_pass = None;
        self.owned.teardown();
        tracing::info!(prefix = %self.prefix, took_ms = t0.elapsed().as_millis() as u64, "lab torn down");
    }
}

// --- East-west (#9): every node and pod in a cgroup of its own ---

impl Lab {
    /// The cgroup of node or pod `name`: <cgroup2>/<prefix>/<node>[/<pod>].
    /// A node's agent attaches xlb's socket programs at its node's
    /// directory and so sees exactly that node's processes and pods.
    pub fn cgroup(&self, name: &str) -> Result<Cgroup, LabError> {
        if let Some(n) = self.nodes.iter().find(|n| n.host.name == name) {
            return Ok(Cgroup { path: self.cgroups.join(&n.host.name) });
        }
        let p = self.pod(name).ok_or_else(|| LabError::UnknownNamespace {
            name: name.into(),
            prefix: self.prefix.clone(),
            known: self.nodes.iter().map(|n| n.host.name.as_str()).collect::<Vec<_>>().join(", "),
        })?;
        Ok(Cgroup { path: self.cgroups.join(&p.node).join(&p.host.name) })
    }

    fn create_cgroups(&mut self) -> Result<(), LabError> {
        self.cgroups = cgroup::root()?.join(&self.prefix);
        let top = Cgroup::create(&self.cgroups)?;
        // The whole tree goes at teardown (processes killed, rmdir deepest first).
        self.owned.add_cgroup(top.clone());
        for n in &self.nodes {
            let node = top.child(&n.host.name)?;
            for p in &n.pods {
                node.child(&p.host.name)?;
            }
        }
        Ok(())
    }
}

/// A veth pair: `a` in namespace `ns_a`, `b` in `ns_b`, both up with `mtu`.
fn veth(ns_a: &str, a: &str, ns_b: &str, b: &str, mtu: &str) -> Result<(), LabError> {
    netns::ip(
        ns_a,
        &[
            "link", "add", a, "mtu", mtu, "type", "veth", "peer", "name", b, "mtu", mtu, "netns",
            ns_b,
        ],
    )?;
    netns::ip(ns_a, &["link", "set", a, "up"])?;
    netns::ip(ns_b, &["link", "set", b, "up"])?;
    Ok(())
}

fn addr(ns: &str, dev: &str, v4: &str, v6: &str) -> Result<(), LabError> {
    netns::ip(ns, &["addr", "add", v4, "dev", dev])?;
    netns::ip(ns, &["addr", "add", v6, "dev", dev, "nodad"])?;
    Ok(())
}

fn default_routes(ns: &str, gw4: &str, gw6: &str) -> Result<(), LabError> {
    netns::ip(ns, &["route", "add", "default", "via", gw4])?;
    netns::ip(ns, &["-6", "route", "add", "default", "via", gw6])?;
    Ok(())
}

/// The MAC address of `iface` in `ns`.
fn mac_of(ns: &str, iface: &str) -> Result<String, LabError> {
    let out = netns::ip(ns, &["-j", "link", "show", "dev", iface])?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| LabError::Command {
        ns: ns.into(),
        cmd: format!("ip -j link show dev {iface}"),
        status: "unparsable output".into(),
        stderr: e.to_string(),
    })?;
    v.get(0).and_then(|l| l.get("address")).and_then(|a| a.as_str()).map(str::to_string).ok_or_else(
        || LabError::Command {
            ns: ns.into(),
            cmd: format!("ip -j link show dev {iface}"),
            status: "no address".into(),
            stderr: out.clone(),
        },
    )
}

/// Turns transmit checksum offload of `iface` on or off (ETHTOOL_STXCSUM,
/// what `ethtool -K IF tx off` does), in the calling thread's namespace.
fn set_tx_checksum(ns: &str, iface: &str, on: bool) -> Result<(), LabError> {
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    let fail = |source| LabError::Netns { ns: ns.into(), op: "ethtool tx checksum", source };
    let mut value = EthtoolValue { cmd: ETHTOOL_STXCSUM, data: on as u32 };
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: &mut value, _pad: [0; 16] };
    req.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: a datagram socket for the ioctl, closed below; `req` points at
    // `value`, both live across the call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(fail(std::io::Error::last_os_error()));
        }
        let rc = libc::ioctl(fd, libc::SIOCETHTOOL, &mut req);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(fail(err));
        }
    }
    Ok(())
}

/// Writes /proc/sys entries (per-namespace for net/) from inside `ns`.
fn write_sysctls(ns: &str, entries: &[(&str, &str)]) -> Result<(), LabError> {
    netns::in_netns(ns, || {
        entries.iter().try_for_each(|(key, value)| {
            let path = Path::new("/proc/sys").join(key);
            std::fs::write(&path, value).map_err(|source| LabError::Io { path, source })
        })
    })?
}

/// Whether `name` is "<base><pid>-<seq>[-...]" of a process no longer running.
fn stale(base: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(base) else { return false };
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    let Ok(pid) = rest[..digits].parse::<u32>() else { return false };
    let Some(rest) = rest[digits..].strip_prefix('-') else { return false };
    let seq = rest.chars().take_while(char::is_ascii_digit).count();
    if seq == 0 || !(rest.len() == seq || rest[seq..].starts_with('-')) {
        return false;
    }
    // A zombie counts as gone: a killed lab whose parent has not reaped it.
    pid != std::process::id() && crate::registry::is_dead(pid as i32)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stale_matches_only_dead_lab_names() {
        // pid 4194304 is above the kernel's pid_max limit: never running.
        assert!(super::stale("xlb", "xlb4194304-0-client"));
        assert!(super::stale("xlb", "xlb4194304-12"));
        assert!(!super::stale("xlb", "xlb"));
        assert!(!super::stale("xlb", "xlb-lab"));
        assert!(!super::stale("xlb", "xlb4194304-x"));
        assert!(!super::stale("xlb", "xlb4194304-0x"));
        assert!(!super::stale("xlb", &format!("xlb{}-0-client", std::process::id())));
        assert!(!super::stale("xlb", "xlb1-0-client"), "pid 1 is running");
    }
}
