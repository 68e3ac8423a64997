//! `xlb install`: `render` prints the install manifests for the options
//! given (the library's [`xlb_control::install`]), `check` reads manifests
//! back strictly (unknown fields, the agent's arguments through this very
//! parser, the ClusterRole against what the watchers need), `cni` copies
//! the CNI plugin onto the host (the DaemonSet's init container).
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{Args, Parser as _, Subcommand, ValueEnum};
use xlb_control::install::{
    self, crd, monitoring, rbac,
    strict::{self, Object},
    InstallOptions, KubeProxy, Mode,
};

#[derive(Subcommand, Debug)]
pub enum InstallCmd {
    /// Print the install manifests (multi-document YAML) for these options.
    Render(RenderArgs),
    /// Check manifests: every document decodes into its Kubernetes type with
    /// no unknown field, every xlb container's arguments are ones this
    /// binary accepts, the ClusterRole grants exactly what the agent uses.
    Check {
        /// Manifest files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Copy the CNI plugin into the host's CNI bin directory (atomically:
    /// a runtime never runs a half-written plugin).
    Cni {
        #[arg(long, value_name = "FILE", default_value = install::CNI_BIN)]
        from: PathBuf,
        #[arg(long, value_name = "DIR", default_value = "/opt/cni/bin")]
        to: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModeArg {
    /// The full dataplane on every node; frontends on labelled nodes.
    Full,
    /// Load-balancer frontends only, on the labelled nodes.
    Frontends,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KubeProxyArg {
    /// kube-proxy keeps running (and serving the node health port).
    Beside,
    /// kube-proxy is removed: xlb serves the health port, reaches the API
    /// server directly (--api-server).
    Replace,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum WhatArg {
    /// The install: CRD, RBAC, DaemonSets (and NetworkLogging default with
    /// --policy-logging).
    Install,
    /// The Prometheus Operator PodMonitor.
    PodMonitor,
    /// An example NetworkLogging `default` object (denies logged).
    NetworkLogging,
}

#[derive(Args, Debug)]
pub struct RenderArgs {
    /// What to render.
    #[arg(long, value_enum, default_value_t = WhatArg::Install)]
    what: WhatArg,
    #[arg(long, default_value = "kube-system")]
    namespace: String,
    /// The image holding xlb and xlb-cni (deploy/image/Dockerfile).
    #[arg(long, default_value_t = InstallOptions::default().image)]
    image: String,
    #[arg(long, value_enum, default_value_t = ModeArg::Full)]
    mode: ModeArg,
    #[arg(long, value_enum, default_value_t = KubeProxyArg::Beside)]
    kube_proxy: KubeProxyArg,
    /// Leave the pod network to another CNI (full mode).
    #[arg(long)]
    no_pod_network: bool,
    /// Maglev table size of services without an annotation (a prime); by
    /// default sized by each service's endpoints.
    #[arg(long, value_name = "PRIME")]
    maglev_size: Option<u32>,
    /// Policy action logging to /var/log/network (NetworkLogging default:
    /// denies logged).
    #[arg(long)]
    policy_logging: bool,
    /// The uplink ("auto": each node's default-route interface); repeatable.
    #[arg(long = "iface", value_name = "IF|auto", default_value = "auto")]
    ifaces: Vec<String>,
    /// The host's cgroup2 mount point.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/cgroup")]
    cgroup_root: String,
    /// HOST:PORT of the API server (needed with --kube-proxy replace).
    #[arg(long, value_name = "HOST:PORT")]
    api_server: Option<String>,
    /// A CIDR Service externalIPs may use; repeatable.
    #[arg(long = "external-ip-cidr", value_name = "CIDR")]
    external_ip_cidrs: Vec<String>,
}

impl RenderArgs {
    fn options(&self) -> InstallOptions {
        let mode = match self.mode {
            ModeArg::Full => Mode::Full,
            ModeArg::Frontends => Mode::Frontends,
        };
        InstallOptions {
            namespace: self.namespace.clone(),
            image: self.image.clone(),
            mode,
            kube_proxy: match self.kube_proxy {
                KubeProxyArg::Beside => KubeProxy::Beside,
                KubeProxyArg::Replace => KubeProxy::Replace,
            },
            pod_network: mode == Mode::Full && !self.no_pod_network,
            maglev_size: self.maglev_size,
            policy_logging: self.policy_logging,
            ifaces: self.ifaces.clone(),
            cgroup_root: self.cgroup_root.clone(),
            api_server: self.api_server.clone(),
            external_ip_cidrs: self.external_ip_cidrs.clone(),
        }
    }
}

/// What `xlb install render --what WHAT` prints for `opts`.
pub fn render(what: WhatArg, opts: &InstallOptions) -> anyhow::Result<String> {
    Ok(match what {
        WhatArg::Install => install::to_yaml(opts, &install::render(opts)?),
        WhatArg::PodMonitor => format!(
            "# The Prometheus Operator's PodMonitor for the xlb agents (port `metrics`),\n\
             # rendered by `xlb install render --what pod-monitor`.\n---\n{}",
            monitoring::pod_monitor(opts).yaml
        ),
        WhatArg::NetworkLogging => format!(
            "# Policy action logging: denied connections logged to\n\
             # /var/log/network/policy_action.log on each node (GKE's NetworkLogging;\n\
             # allow.log logs allowed ones; delegate: only where annotated).\n\
             # Rendered by `xlb install render --what network-logging`.\n---\n{}",
            crd::network_logging_default(true, false).yaml
        ),
    })
}

pub fn run(cmd: InstallCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        InstallCmd::Render(args) => {
            let text = render(args.what, &args.options())?;
            std::io::stdout().write_all(text.as_bytes()).context("writing to stdout")?;
            Ok(ExitCode::SUCCESS)
        }
        InstallCmd::Check { files } => {
            let mut failed = false;
            for f in &files {
                match check_file(f) {
                    Ok(summary) => println!("{}: ok ({summary})", f.display()),
                    Err(problems) => {
                        failed = true;
                        for p in problems {
                            eprintln!("{}: {p}", f.display());
                        }
                    }
                }
            }
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        InstallCmd::Cni { from, to } => {
            install_cni(&from, &to)?;
            println!("installed {} as {}", from.display(), to.join("xlb-cni").display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Copies `from` to `dir/xlb-cni` through a temporary file in `dir` and a
/// rename.
fn install_cni(from: &Path, dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = dir.join(".xlb-cni.tmp");
    std::fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", tmp.display()))?;
    let dest = dir.join("xlb-cni");
    std::fs::rename(&tmp, &dest)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))
}

/// `args` of an xlb container, parsed by `xlb`'s own parser as the kubelet
/// would run them (`$(VAR)` expanded to a stand-in value).
pub fn check_args(args: &[String]) -> Result<(), String> {
    let expanded = args.iter().map(|a| expand(a));
    match crate::Cli::try_parse_from(std::iter::once("xlb".to_string()).chain(expanded)) {
        Ok(_) => Ok(()),
        Err(e) => Err(e.render().to_string().lines().next().unwrap_or("").to_string()),
    }
}

/// `$(NAME)` replaced by "stand-in" (what the kubelet does with the env).
fn expand(arg: &str) -> String {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        match rest[start..].find(')') {
            Some(end) => {
                out.push_str("stand-in");
                rest = &rest[start + end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Every problem of one manifest file, or a summary of what it holds.
fn check_file(path: &Path) -> Result<String, Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("reading: {e}")])?;
    let objects = strict::parse(&text).map_err(|e| vec![e.to_string()])?;
    let mut problems = Vec::new();
    let mut kinds = Vec::new();
    for o in &objects {
        match o {
            Object::DaemonSet(ds) => {
                kinds.push("DaemonSet");
                let name = ds.metadata.name.as_deref().unwrap_or("?");
                let spec = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref());
                let containers = spec
                    .into_iter()
                    .flat_map(|s| s.init_containers.iter().flatten().chain(s.containers.iter()));
                for c in containers {
                    let Some(command) = c.command.as_ref() else { continue };
                    if command.first().map(String::as_str) != Some(install::XLB_BIN) {
                        continue;
                    }
                    let mut argv: Vec<String> = command[1..].to_vec();
                    argv.extend(c.args.iter().flatten().cloned());
                    if let Err(e) = check_args(&argv) {
                        problems.push(format!("DaemonSet {name}: container {}: {e}", c.name));
                    }
                }
            }
            Object::ClusterRole(role) => {
                kinds.push("ClusterRole");
                if role.metadata.name.as_deref() == Some(rbac::NAME) {
                    for d in rbac::compare(role) {
                        problems.push(format!("ClusterRole {}: {d}", rbac::NAME));
                    }
                }
            }
            Object::Namespace(_) => kinds.push("Namespace"),
            Object::ServiceAccount(_) => kinds.push("ServiceAccount"),
            Object::ClusterRoleBinding(_) => kinds.push("ClusterRoleBinding"),
            Object::ConfigMap(_) => kinds.push("ConfigMap"),
            Object::Crd(_) => kinds.push("CustomResourceDefinition"),
            Object::NetworkLogging(_) => kinds.push("NetworkLogging"),
            Object::PodMonitor(_) => kinds.push("PodMonitor"),
        }
    }
    if problems.is_empty() {
        Ok(kinds.join(", "))
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xlb_control::install::workloads::{agent_args, Role};

    /// Every option combination the renderer offers.
    fn variants() -> Vec<InstallOptions> {
        let base = InstallOptions::default();
        vec![
            base.clone(),
            InstallOptions {
                kube_proxy: KubeProxy::Replace,
                api_server: Some("10.0.0.1:6443".into()),
                maglev_size: Some(16381),
                policy_logging: true,
                external_ip_cidrs: vec!["192.0.2.0/24".into()],
                ..base.clone()
            },
            InstallOptions { mode: Mode::Frontends, pod_network: false, ..base.clone() },
            InstallOptions {
                pod_network: false,
                ifaces: vec!["ens5".into(), "ens6".into()],
                ..base
            },
        ]
    }

    #[test]
    fn the_rendered_agent_arguments_are_accepted_by_the_real_parser() {
        for opts in variants() {
            for role in [Role::Node, Role::Frontend] {
                let args = agent_args(&opts, role);
                check_args(&args).unwrap_or_else(|e| panic!("{role:?} {args:?}: {e}"));
            }
        }
        // And the check is a real one: a flag xlb does not know fails.
        let mut args = agent_args(&InstallOptions::default(), Role::Node);
        args.push("--keep-attached".into());
        let e = check_args(&args).unwrap_err();
        assert!(e.contains("--keep-attached"), "{e}");
    }

    #[test]
    fn every_variant_renders_strictly_parseable_manifests_with_exact_rbac() {
        let dir = std::env::temp_dir().join(format!("xlb-install-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (i, opts) in variants().into_iter().enumerate() {
            for what in [WhatArg::Install, WhatArg::PodMonitor, WhatArg::NetworkLogging] {
                let path = dir.join(format!("{i}-{what:?}.yaml"));
                std::fs::write(&path, render(what, &opts).unwrap()).unwrap();
                let summary = check_file(&path).unwrap_or_else(|p| panic!("{opts:?}: {p:#?}"));
                if what == WhatArg::Install {
                    assert!(summary.contains("ClusterRole,"), "{summary}");
                    assert!(summary.contains("DaemonSet"), "{summary}");
                }
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn install_cni_replaces_the_plugin_atomically_and_executable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("xlb-install-cni-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("plugin");
        for content in ["first", "second"] {
            std::fs::write(&src, content).unwrap();
            install_cni(&src, &dir).unwrap();
            let dest = dir.join("xlb-cni");
            assert_eq!(std::fs::read_to_string(&dest).unwrap(), content);
            assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o755);
            assert!(!dir.join(".xlb-cni.tmp").exists());
        }
        let e = install_cni(&dir.join("missing"), &dir).unwrap_err();
        assert!(format!("{e:#}").contains("No such file"), "{e:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn expand_replaces_kubelet_variables() {
        assert_eq!(expand("--node-name=$(NODE_NAME)"), "--node-name=stand-in");
        assert_eq!(expand("a$(X)b$(Y"), "astand-inb$(Y");
    }
}
