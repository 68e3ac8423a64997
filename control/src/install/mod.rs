//! `xlb install`: the install manifests, rendered from typed Kubernetes
//! objects (k8s-openapi) for the options a platform engineer picks (mode,
//! kube-proxy beside or replaced, pod network, Maglev size, policy
//! logging). By concern: [`rbac`] (service account and the ClusterRole
//! derived from the registry of watched kinds and the source's verbs),
//! [`workloads`] (the node and frontend DaemonSets: arguments, mounts,
//! capabilities, probes), [`crd`] (the NetworkLogging CRD and its object),
//! [`monitoring`] (PodMonitor), [`strict`] (parsing manifests back into the
//! API types, refusing unknown fields: the tests and `xlb install check`).
//! The rendered default is committed under deploy/kubernetes/ and a test
//! keeps it current.
pub mod crd;
pub mod monitoring;
pub mod rbac;
pub mod strict;
pub mod workloads;

use std::fmt::Write as _;

use k8s_openapi::{api::core::v1::Namespace, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use serde::Serialize;

/// The agent's metrics, /healthz and /readyz port (`--metrics-addr`).
pub const METRICS_PORT: u16 = 9465;
/// kube-proxy's node health port (`--healthz-addr`): what cloud load
/// balancers probe.
pub const HEALTHZ_PORT: u16 = 10256;
/// The label (and value) that makes a node a load-balancer frontend.
pub const FRONTEND_LABEL: (&str, &str) = ("xlb.io/role", "frontend");
/// Where the image holds the binaries (deploy/image/Dockerfile).
pub const XLB_BIN: &str = "/usr/local/bin/xlb";
pub const CNI_BIN: &str = "/usr/local/bin/xlb-cni";

/// What runs where.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// The full dataplane on every node (XDP + tc on the uplink, socket
    /// load balancing, the pod network, NetworkPolicy), and frontend-only
    /// agents on the nodes labelled `xlb.io/role=frontend`.
    #[default]
    Full,
    /// Only the load-balancer frontends, on the labelled nodes: the cluster
    /// keeps its CNI and its kube-proxy; xlb serves LoadBalancer,
    /// externalIP and NodePort traffic on those nodes at XDP.
    Frontends,
}

/// kube-proxy beside xlb or replaced by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KubeProxy {
    /// kube-proxy stays: it keeps serving its node health port (xlb serves
    /// none) and the API server is reached through its ClusterIP.
    #[default]
    Beside,
    /// No kube-proxy: xlb answers the node health port, and reaches the API
    /// server directly (`api_server`), as nothing translates the
    /// `kubernetes` Service's ClusterIP before the first agent runs.
    Replace,
}

/// Everything `xlb install render` takes; `Default` is the committed
/// deploy/kubernetes/xlb.yaml.
#[derive(Clone, Debug)]
pub struct InstallOptions {
    pub namespace: String,
    pub image: String,
    pub mode: Mode,
    pub kube_proxy: KubeProxy,
    /// xlb is the nodes' CNI (full mode only).
    pub pod_network: bool,
    /// The Maglev table size of every service without an annotation (a
    /// prime); None: sized by each service's endpoints. Every agent gets
    /// the same value: nodes must build identical tables.
    pub maglev_size: Option<u32>,
    /// Policy action logging: /var/log/network mounted and the
    /// NetworkLogging `default` object (denies logged).
    pub policy_logging: bool,
    /// `--iface`: "auto" (the default route's interface) or names.
    pub ifaces: Vec<String>,
    /// The host's cgroup2 mount (the socket programs attach at its root).
    pub cgroup_root: String,
    /// `host:port` of the API server (required with [`KubeProxy::Replace`]).
    pub api_server: Option<String>,
    /// CIDRs Service externalIPs may use (`--external-ip-cidr`).
    pub external_ip_cidrs: Vec<String>,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            namespace: "kube-system".into(),
            image: format!("xlb:{}", env!("CARGO_PKG_VERSION")),
            mode: Mode::Full,
            kube_proxy: KubeProxy::Beside,
            pod_network: true,
            maglev_size: None,
            policy_logging: false,
            ifaces: vec!["auto".into()],
            cgroup_root: "/sys/fs/cgroup".into(),
            api_server: None,
            external_ip_cidrs: Vec::new(),
        }
    }
}

/// Options that cannot be rendered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InstallError {
    #[error(
        "--kube-proxy replace needs --api-server HOST:PORT: without kube-proxy nothing \
         translates the kubernetes Service's ClusterIP until the first agent runs"
    )]
    ApiServerNeeded,
    #[error("--api-server {0:?}: expected HOST:PORT")]
    BadApiServer(String),
    #[error("--maglev-size {0}: not a prime up to {max}", max = lb::model::MAX_MAGLEV_SIZE)]
    BadMaglevSize(u32),
    #[error("--pod-network needs --mode full: frontend-only nodes run no pods' network")]
    PodNetworkNeedsFull,
    #[error("--namespace {0:?}: not a DNS label")]
    BadNamespace(String),
}

impl InstallOptions {
    pub fn check(&self) -> Result<(), InstallError> {
        if self.kube_proxy == KubeProxy::Replace && self.api_server.is_none() {
            return Err(InstallError::ApiServerNeeded);
        }
        if let Some(a) = &self.api_server {
            match a.rsplit_once(':') {
                Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {}
                _ => return Err(InstallError::BadApiServer(a.clone())),
            }
        }
        if let Some(m) = self.maglev_size {
            if !crate::translate::valid_maglev_size(m) {
                return Err(InstallError::BadMaglevSize(m));
            }
        }
        if self.pod_network && self.mode == Mode::Frontends {
            return Err(InstallError::PodNetworkNeedsFull);
        }
        let ns = &self.namespace;
        let label = !ns.is_empty()
            && ns.len() <= 63
            && ns.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !ns.starts_with('-')
            && !ns.ends_with('-');
        if !label {
            return Err(InstallError::BadNamespace(ns.clone()));
        }
        Ok(())
    }
}

/// One rendered object: its kind and name (for listings and tests) and its
/// YAML document.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub kind: String,
    pub name: String,
    pub yaml: String,
}

impl Manifest {
    /// A typed object (k8s-openapi), serialized as the API orders fields.
    pub fn typed<T: Serialize + k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta>>(
        obj: &T,
    ) -> Manifest {
        Manifest {
            kind: T::KIND.to_string(),
            name: obj.metadata().name.clone().unwrap_or_default(),
            yaml: serde_yaml::to_string(obj).expect("API objects serialize"),
        }
    }
}

/// Labels every object of the install carries; `component` is "node",
/// "frontend" or "agent" (shared objects).
pub fn labels(component: &str) -> std::collections::BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", "xlb"),
        ("app.kubernetes.io/component", component),
        ("app.kubernetes.io/part-of", "xlb"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Every object of the install, in apply order (CRD and RBAC before the
/// DaemonSets that use them).
pub fn render(opts: &InstallOptions) -> Result<Vec<Manifest>, InstallError> {
    opts.check()?;
    let mut out = Vec::new();
    // kube-system exists already and must never be owned by this file
    // (`kubectl delete -f` would delete it); another namespace is created.
    if opts.namespace != "kube-system" {
        out.push(Manifest::typed(&Namespace {
            metadata: ObjectMeta {
                name: Some(opts.namespace.clone()),
                labels: Some(labels("agent")),
                ..Default::default()
            },
            ..Default::default()
        }));
    }
    out.push(Manifest::typed(&crd::network_logging_crd()));
    out.push(Manifest::typed(&rbac::service_account(opts)));
    out.push(Manifest::typed(&rbac::cluster_role()));
    out.push(Manifest::typed(&rbac::cluster_role_binding(opts)));
    if opts.mode == Mode::Full {
        out.push(Manifest::typed(&workloads::daemon_set(opts, workloads::Role::Node)));
    }
    out.push(Manifest::typed(&workloads::daemon_set(opts, workloads::Role::Frontend)));
    if opts.policy_logging {
        out.push(crd::network_logging_default(true, false));
    }
    Ok(out)
}

/// The options as the command line that renders them (the header of the
/// rendered file says how to reproduce it).
pub fn command_line(opts: &InstallOptions) -> String {
    let d = InstallOptions::default();
    let mut s = String::from("xlb install render");
    if opts.namespace != d.namespace {
        write!(s, " --namespace {}", opts.namespace).ok();
    }
    if opts.image != d.image {
        write!(s, " --image {}", opts.image).ok();
    }
    if opts.mode == Mode::Frontends {
        s.push_str(" --mode frontends");
    }
    if opts.kube_proxy == KubeProxy::Replace {
        s.push_str(" --kube-proxy replace");
    }
    if !opts.pod_network && opts.mode == Mode::Full {
        s.push_str(" --no-pod-network");
    }
    if let Some(m) = opts.maglev_size {
        write!(s, " --maglev-size {m}").ok();
    }
    if opts.policy_logging {
        s.push_str(" --policy-logging");
    }
    if opts.ifaces != d.ifaces {
        for i in &opts.ifaces {
            write!(s, " --iface {i}").ok();
        }
    }
    if opts.cgroup_root != d.cgroup_root {
        write!(s, " --cgroup-root {}", opts.cgroup_root).ok();
    }
    if let Some(a) = &opts.api_server {
        write!(s, " --api-server {a}").ok();
    }
    for c in &opts.external_ip_cidrs {
        write!(s, " --external-ip-cidr {c}").ok();
    }
    s
}

/// The manifests as one multi-document YAML file, with a header saying
/// how it was made and why the agent holds each privilege.
pub fn to_yaml(opts: &InstallOptions, manifests: &[Manifest]) -> String {
    let mut out = String::new();
    writeln!(out, "# xlb install manifests, rendered by `{}`.", command_line(opts)).ok();
    out.push_str(
        "# Do not edit: render again (deploy/README.md, the migration guide in README.md).\n#\n",
    );
    for line in workloads::PRIVILEGES_WHY.lines() {
        writeln!(out, "# {line}").ok();
    }
    for m in manifests {
        out.push_str("---\n");
        out.push_str(&m.yaml);
    }
    out
}
