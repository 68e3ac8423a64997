//! The agents as DaemonSets, one per role: [`Role::Node`] (the full
//! dataplane on every node that is not a frontend: XDP + tc on the uplink,
//! socket load balancing at the host's cgroup2 root, the pod network with
//! xlb-cni installed by an init container, NetworkPolicy and its logs) and
//! [`Role::Frontend`] (XDP + tc only, on the nodes labelled
//! `xlb.io/role=frontend`). [`agent_args`] is the agent's command line (a
//! test parses it with the real `xlb` parser); [`PRIVILEGES_WHY`] says why
//! each capability and host path is there.
use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet},
        core::v1::{
            Affinity, AppArmorProfile, Capabilities, Container, ContainerPort,
            EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, HostPathVolumeSource,
            NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
            ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
            SeccompProfile, SecurityContext, Toleration, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::{
    labels, rbac, InstallOptions, KubeProxy, CNI_BIN, FRONTEND_LABEL, HEALTHZ_PORT, METRICS_PORT,
    XLB_BIN,
};

/// Where the host's cgroup2 root is mounted in the agent's container.
pub const CGROUP_MOUNT: &str = "/run/xlb/cgroupv2";
/// Where the init container sees the host's /opt/cni/bin.
pub const CNI_BIN_MOUNT: &str = "/host/opt/cni/bin";

/// The two agent roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Node,
    Frontend,
}

impl Role {
    pub fn component(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Frontend => "frontend",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Node => "xlb-node",
            Role::Frontend => "xlb-frontend",
        }
    }

    /// The Linux capabilities the agent's container gets (all others
    /// dropped); see [`PRIVILEGES_WHY`].
    pub fn capabilities(self) -> &'static [&'static str] {
        match self {
            Role::Node => &["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"],
            Role::Frontend => &["BPF", "NET_ADMIN", "PERFMON"],
        }
    }
}

/// Why the agent holds each privilege; the header of the rendered file.
pub const PRIVILEGES_WHY: &str = "\
What the agent may do, and why (no privileged container):
- CAP_BPF: create maps, load programs, pin them in bpffs.
- CAP_NET_ADMIN: attach XDP and tc (TCX) to the uplink and cgroup socket
  programs to the cgroup2 root, keep tunnel next hops in the neighbour
  table (netlink), set forwarding/accept_local (/proc/sys/net, host's).
- CAP_PERFMON: the verifier allows the datapath's pointer arithmetic
  (packet length as data_end - data: 'pointer -= pointer prohibited'
  without it) and the socket iterators (tracing programs) only with it.
  The privileged test runs the frontend without each of BPF, NET_ADMIN,
  PERFMON in turn: it does not start.
- CAP_SYS_ADMIN + CAP_SYS_PTRACE + hostPID (node role only): socket
  termination runs its iterator inside each pod's network namespace
  (setns needs CAP_SYS_ADMIN; opening /proc/PID/ns/net of a process of
  another user needs CAP_SYS_PTRACE; hostPID makes the cgroup's PIDs
  visible). Frontends hold neither.
- seccomp and AppArmor Unconfined: older runtimes' default seccomp profile
  allows bpf() only with CAP_SYS_ADMIN, and AppArmor's default profile
  denies the writes to /proc/sys/net.
- Host paths: /sys/fs/bpf (pinned maps and links: a restarted agent takes
  over without a gap), the cgroup2 root (read-only; socket programs),
  /proc/sys/net, /run/xlb (CNI records, IPAM), /etc/cni/net.d (the agent
  writes its conflist once the node's podCIDRs are known), /opt/cni/bin
  (init container only), /var/log/network (policy logs, when enabled).
- RBAC: list and watch of the kinds the agent reads, nothing else.";

/// The agent's arguments (after the binary). `$(NODE_NAME)` is expanded
/// by the kubelet from the environment.
pub fn agent_args(opts: &InstallOptions, role: Role) -> Vec<String> {
    let mut a: Vec<String> = vec!["run".into(), "--kube".into(), "--node-name=$(NODE_NAME)".into()];
    for i in &opts.ifaces {
        a.push(format!("--iface={i}"));
    }
    a.push(format!("--metrics-addr=[::]:{METRICS_PORT}"));
    match opts.kube_proxy {
        // kube-proxy holds its health port; the agent's would be skipped
        // with a warning on every start.
        KubeProxy::Beside => a.push("--no-healthz".into()),
        KubeProxy::Replace => a.push(format!("--healthz-addr=[::]:{HEALTHZ_PORT}")),
    }
    match role {
        Role::Node => {
            a.push(format!("--socket-lb={CGROUP_MOUNT}"));
            if opts.pod_network {
                a.push("--pod-network".into());
            }
        }
        Role::Frontend => a.push("--socket-lb=off".into()),
    }
    if let Some(m) = opts.maglev_size {
        a.push(format!("--maglev-size={m}"));
    }
    for c in &opts.external_ip_cidrs {
        a.push(format!("--external-ip-cidr={c}"));
    }
    a
}

fn host_path(name: &str, path: &str, kind: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource { path: path.into(), type_: Some(kind.into()) }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("metrics".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

fn quantities(cpu: &str, memory: &str) -> BTreeMap<String, Quantity> {
    [("cpu", cpu), ("memory", memory)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect()
}

/// Resources from the measured agent: an idle agent with the default map
/// sizes has 22 MiB RSS (33 MiB peak) and its maps take 288 MiB (the BPF
/// memlock of its maps, each counted once; 31 MiB with --small-maps);
/// 204 MiB peak RSS at 10,000 services × 10 endpoints (README). The maps
/// are charged to the pod's memory cgroup when the agent creates them
/// (the first start on a node; later agents reuse the pinned ones), so
/// the request covers them and the limit leaves room for a large cluster.
/// CPU is spent on changes only.
pub const REQUESTS: (&str, &str) = ("100m", "384Mi");
pub const LIMITS: (&str, &str) = ("2", "1Gi");

/// The DaemonSet of `role`.
pub fn daemon_set(opts: &InstallOptions, role: Role) -> DaemonSet {
    let name = role.name();
    let mut selector = BTreeMap::new();
    selector.insert("app.kubernetes.io/name".to_string(), "xlb".to_string());
    selector.insert("app.kubernetes.io/component".to_string(), role.component().to_string());

    let (label, value) = FRONTEND_LABEL;
    let placement = NodeSelectorRequirement {
        key: label.into(),
        operator: if role == Role::Frontend { "In" } else { "NotIn" }.into(),
        values: Some(vec![value.into()]),
    };
    let linux = NodeSelectorRequirement {
        key: "kubernetes.io/os".into(),
        operator: "In".into(),
        values: Some(vec!["linux".into()]),
    };

    let mut volumes = vec![
        host_path("bpffs", "/sys/fs/bpf", "Directory"),
        host_path("proc-sys-net", "/proc/sys/net", "Directory"),
        host_path("run-xlb", "/run/xlb", "DirectoryOrCreate"),
        Volume {
            name: "run".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            mount_propagation: Some("HostToContainer".into()),
            ..mount("bpffs", "/sys/fs/bpf", false)
        },
        mount("proc-sys-net", "/proc/sys/net", false),
        // /run is the agent's (the event stream's reader lock); /run/xlb
        // the host's.
        mount("run", "/run", false),
        mount("run-xlb", "/run/xlb", false),
    ];
    let mut init = Vec::new();
    if role == Role::Node {
        volumes.push(host_path("cgroup", &opts.cgroup_root, "Directory"));
        mounts.push(mount("cgroup", CGROUP_MOUNT, true));
        if opts.pod_network {
            volumes.push(host_path("cni-conf", "/etc/cni/net.d", "DirectoryOrCreate"));
            volumes.push(host_path("cni-bin", "/opt/cni/bin", "DirectoryOrCreate"));
            mounts.push(mount("cni-conf", "/etc/cni/net.d", false));
            init.push(Container {
                name: "install-cni".into(),
                image: Some(opts.image.clone()),
                image_pull_policy: Some("IfNotPresent".into()),
                command: Some(vec![
                    XLB_BIN.into(),
                    "install".into(),
                    "cni".into(),
                    format!("--from={CNI_BIN}"),
                    format!("--to={CNI_BIN_MOUNT}"),
                ]),
                volume_mounts: Some(vec![mount("cni-bin", CNI_BIN_MOUNT, false)]),
                security_context: Some(SecurityContext {
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        ..Default::default()
                    }),
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        if opts.policy_logging {
            volumes.push(host_path("policy-log", "/var/log/network", "DirectoryOrCreate"));
            mounts.push(mount("policy-log", "/var/log/network", false));
        }
    }

    let mut envs = vec![env_field("NODE_NAME", "spec.nodeName")];
    if let Some((host, port)) = opts.api_server.as_deref().and_then(|a| a.rsplit_once(':')) {
        // kube's in-cluster configuration reads these: the API server
        // directly, not through the kubernetes Service's ClusterIP.
        envs.push(env("KUBERNETES_SERVICE_HOST", host.trim_matches(['[', ']'])));
        envs.push(env("KUBERNETES_SERVICE_PORT", port));
    }

    let mut ports = vec![ContainerPort {
        name: Some("metrics".into()),
        container_port: METRICS_PORT.into(),
        protocol: Some("TCP".into()),
        ..Default::default()
    }];
    if opts.kube_proxy == KubeProxy::Replace {
        ports.push(ContainerPort {
            name: Some("healthz".into()),
            container_port: HEALTHZ_PORT.into(),
            protocol: Some("TCP".into()),
            ..Default::default()
        });
    }

    let agent = Container {
        name: "xlb".into(),
        image: Some(opts.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec![XLB_BIN.into()]),
        args: Some(agent_args(opts, role)),
        env: Some(envs),
        ports: Some(ports),
        // Up to a minute to load the datapath and list a large cluster;
        // then /healthz fails only if the reconcile runtime stops beating.
        startup_probe: Some(http_probe("/healthz", 2, 30)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(REQUESTS.0, REQUESTS.1)),
            limits: Some(quantities(LIMITS.0, LIMITS.1)),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(role.capabilities().iter().map(|c| c.to_string()).collect()),
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "Unconfined".into(),
                ..Default::default()
            }),
            app_armor_profile: Some(AppArmorProfile {
                type_: "Unconfined".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };

    let mut annotations = BTreeMap::new();
    annotations.insert("prometheus.io/scrape".to_string(), "true".to_string());
    annotations.insert("prometheus.io/port".to_string(), METRICS_PORT.to_string());

    DaemonSet {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(opts.namespace.clone()),
            labels: Some(labels(role.component())),
            ..Default::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector { match_labels: Some(selector), ..Default::default() },
            // Hitless: a stopping agent leaves its programs attached and
            // serving from the pinned maps; the next one takes them over
            // through the pinned links. Only changes wait while a node's
            // agent restarts, so a tenth of the nodes may roll at once.
            // No surge: two agents of a node would share the pins.
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::String("10%".into())),
                    max_surge: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(role.component())),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    host_network: Some(true),
                    host_pid: (role == Role::Node).then_some(true),
                    dns_policy: Some("ClusterFirstWithHostNet".into()),
                    service_account_name: Some(rbac::NAME.into()),
                    priority_class_name: Some("system-node-critical".into()),
                    tolerations: Some(vec![Toleration {
                        operator: Some("Exists".into()),
                        ..Default::default()
                    }]),
                    affinity: Some(Affinity {
                        node_affinity: Some(NodeAffinity {
                            required_during_scheduling_ignored_during_execution: Some(
                                NodeSelector {
                                    node_selector_terms: vec![NodeSelectorTerm {
                                        match_expressions: Some(vec![linux, placement]),
                                        ..Default::default()
                                    }],
                                },
                            ),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    termination_grace_period_seconds: Some(30),
                    init_containers: (!init.is_empty()).then_some(init),
                    containers: vec![agent],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}
