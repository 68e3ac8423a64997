//! deploy/ against the code (fast tier, no privileges) and the agent's
//! privileges against the kernel (privileged tier):
//! - the committed manifests are what `xlb install render` prints now
//!   (`XLB_BLESS=1` rewrites them);
//! - every manifest under deploy/ decodes strictly into the Kubernetes API
//!   types and passes `xlb install check` (no unknown field, the agents'
//!   arguments accepted by xlb's own parser, the ClusterRole exactly what
//!   the registry's watchers need); a wrong flag or field fails that check;
//! - the DaemonSets, the PodMonitor and the Prometheus scrape config agree
//!   on the shipped ports and labels; no hard-coded interface, no
//!   privileged container, hitless rolling updates;
//! - deploy/image/Dockerfile: pinned bases, copied paths that exist, the
//!   binaries Cargo builds, the paths the DaemonSets run;
//! - the agent runs with exactly the capabilities its DaemonSet grants
//!   (setpriv drops the rest), with `--iface auto`, in a namespace of the
//!   test's own, and turns ready.
use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::apps::v1::DaemonSet;
use testkit::{netns::NamedNetns, pins::PinDir};
use xlb_control::install::{
    self, rbac,
    strict::{self, Object},
    workloads::Role,
    METRICS_PORT,
};

const XLB: &str = env!("CARGO_BIN_EXE_xlb");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The committed renderings: file, `xlb install render` arguments.
const COMMITTED: [(&str, &[&str]); 3] = [
    ("deploy/kubernetes/xlb.yaml", &[]),
    ("deploy/kubernetes/networklogging-default.yaml", &["--what", "network-logging"]),
    ("deploy/prometheus/xlb-podmonitor.yaml", &["--what", "pod-monitor"]),
];

fn render(args: &[&str]) -> String {
    let out = Command::new(XLB).args(["install", "render"]).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "xlb install render {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn committed_manifests_are_current() {
    let bless = std::env::var_os("XLB_BLESS").is_some();
    let mut stale = Vec::new();
    for (file, args) in COMMITTED {
        let want = render(args);
        let path = repo().join(file);
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            if bless {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &want).unwrap();
            } else {
                stale.push(format!("{file} (xlb install render {})", args.join(" ")));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "stale, render again (XLB_BLESS=1 cargo test -p xlb-control --test deploy):\n{}",
        stale.join("\n")
    );
    // The old hand-written sketch is gone.
    assert!(!repo().join("deploy/kubernetes/xlb-daemonset.yaml").exists());
}

/// Every YAML manifest under deploy/kubernetes and the PodMonitor.
fn manifests() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    out.push(repo().join("deploy/prometheus/xlb-podmonitor.yaml"));
    out.sort();
    out
}

fn objects(path: &Path) -> Vec<Object> {
    strict::parse(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn daemon_sets() -> Vec<DaemonSet> {
    objects(&repo().join("deploy/kubernetes/xlb.yaml"))
        .into_iter()
        .filter_map(|o| match o {
            Object::DaemonSet(d) => Some(*d),
            _ => None,
        })
        .collect()
}

#[test]
fn every_manifest_parses_strictly_and_passes_install_check() {
    let files = manifests();
    assert!(files.len() >= 3, "{files:?}");
    for f in &files {
        assert!(!objects(f).is_empty(), "{}: no object", f.display());
    }
    let out = Command::new(XLB).args(["install", "check"]).args(&files).output().unwrap();
    assert!(
        out.status.success(),
        "xlb install check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The check is real: a flag xlb does not take, an unknown field and a
    // wider role each fail it, named.
    let dir = std::env::temp_dir().join(format!("xlb-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/xlb.yaml")).unwrap();
    for (what, bad, expect) in [
        ("flag", text.replacen("- --no-healthz", "- --keep-attached", 1), "--keep-attached"),
        (
            "field",
            text.replacen("hostNetwork: true", "hostNetwrk: true", 1),
            "hostNetwrk: unknown field",
        ),
        ("rbac", text.replacen("  - list\n", "  - list\n  - get\n", 1), "excess: get"),
        ("rbac", text.replacen("  - watch\n", "", 1), "missing: watch"),
    ] {
        assert_ne!(bad, text, "{what}: the substitution did not apply");
        let f = dir.join(format!("{what}.yaml"));
        std::fs::write(&f, bad).unwrap();
        let out = Command::new(XLB).args(["install", "check"]).arg(&f).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expect), "{what}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_cluster_role_is_the_registrys_kinds_with_list_and_watch() {
    let role = objects(&repo().join("deploy/kubernetes/xlb.yaml"))
        .into_iter()
        .find_map(|o| match o {
            Object::ClusterRole(r) => Some(r),
            _ => None,
        })
        .expect("a ClusterRole");
    assert_eq!(rbac::compare(&role), Vec::<String>::new());
    let need = rbac::needed();
    // The registry's kinds, as the DESIGN lists them.
    for r in ["services", "endpointslices", "nodes", "pods", "namespaces", "networkpolicies"] {
        assert!(need.keys().any(|(_, res)| res == r), "{r} not in {need:?}");
    }
    assert!(need.values().all(|v| v == &["list", "watch"]), "{need:?}");
}

#[test]
fn daemon_sets_ports_probes_and_privileges() {
    let sets = daemon_sets();
    let names: Vec<_> = sets.iter().map(|d| d.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["xlb-node", "xlb-frontend"]);
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/xlb.yaml")).unwrap();
    assert!(!text.contains("eth0"), "an interface name is hard-coded");
    for (ds, role) in sets.iter().zip([Role::Node, Role::Frontend]) {
        let name = ds.metadata.name.as_deref().unwrap();
        let spec = ds.spec.as_ref().unwrap();
        let strategy = spec.update_strategy.as_ref().unwrap();
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"), "{name}");
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.host_network, Some(true), "{name}");
        assert_eq!(pod.service_account_name.as_deref(), Some(rbac::NAME), "{name}");
        let c = &pod.containers[0];
        let args = c.args.clone().unwrap();
        assert!(args.contains(&"--iface=auto".to_string()), "{name}: {args:?}");
        // Hitless: the programs stay attached across the restart.
        assert!(!args.iter().any(|a| a.contains("detach-on-exit")), "{name}: {args:?}");
        let metrics_addr = args.iter().find_map(|a| a.strip_prefix("--metrics-addr=")).unwrap();
        assert!(metrics_addr.ends_with(&format!(":{METRICS_PORT}")), "{metrics_addr}");
        let port = c.ports.iter().flatten().find(|p| p.name.as_deref() == Some("metrics")).unwrap();
        assert_eq!(port.container_port, i32::from(METRICS_PORT), "{name}");
        for (probe, path) in [
            (&c.liveness_probe, "/healthz"),
            (&c.readiness_probe, "/readyz"),
            (&c.startup_probe, "/healthz"),
        ] {
            let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("httpGet probe");
            assert_eq!(get.path.as_deref(), Some(path), "{name}");
            assert_eq!(
                get.port,
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("metrics".into())
            );
        }
        let sc = c.security_context.as_ref().unwrap();
        assert_ne!(sc.privileged, Some(true), "{name}");
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        let added: Vec<&str> = caps.add.iter().flatten().map(String::as_str).collect();
        assert_eq!(added, role.capabilities(), "{name}");
        assert!(c.resources.as_ref().unwrap().requests.is_some(), "{name}");
        let mounts: BTreeSet<&str> =
            c.volume_mounts.iter().flatten().map(|m| m.mount_path.as_str()).collect();
        assert!(mounts.contains("/sys/fs/bpf"), "{name}");
        if role == Role::Node {
            for m in ["/etc/cni/net.d", install::workloads::CGROUP_MOUNT, "/run/xlb"] {
                assert!(mounts.contains(m), "{name}: {m} in {mounts:?}");
            }
            let init = &pod.init_containers.as_ref().unwrap()[0];
            assert_eq!(init.command.as_ref().unwrap()[..3], [install::XLB_BIN, "install", "cni"]);
        }
    }
}

#[test]
fn pod_monitor_and_scrape_config_match_the_daemon_sets() {
    let sets = daemon_sets();
    let pm = objects(&repo().join("deploy/prometheus/xlb-podmonitor.yaml"));
    let Some(Object::PodMonitor(pm)) = pm.first() else { panic!("{pm:?}") };
    let endpoint = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    let selector = pm["spec"]["selector"]["matchLabels"].as_object().unwrap();
    for ds in &sets {
        let labels = ds.spec.as_ref().unwrap().template.metadata.as_ref().unwrap();
        let labels = labels.labels.as_ref().unwrap();
        for (k, v) in selector {
            assert_eq!(labels.get(k).map(String::as_str), v.as_str(), "{k}");
        }
    }
    let k8s: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("deploy/prometheus/prometheus-kubernetes.yml"))
            .unwrap(),
    )
    .unwrap();
    let relabel = k8s["scrape_configs"][0]["relabel_configs"].as_sequence().unwrap();
    let keeps: Vec<(String, String)> = relabel
        .iter()
        .filter(|r| r["action"].as_str() == Some("keep"))
        .map(|r| {
            (
                r["source_labels"][0].as_str().unwrap().to_string(),
                r["regex"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(keeps
        .contains(&("__meta_kubernetes_pod_label_app_kubernetes_io_name".into(), "xlb".into())));
    assert!(keeps.contains(&("__meta_kubernetes_pod_container_port_name".into(), "metrics".into())));
    let ns =
        k8s["scrape_configs"][0]["kubernetes_sd_configs"][0]["namespaces"]["names"][0].as_str();
    assert_eq!(ns, sets[0].metadata.namespace.as_deref());
}

#[test]
fn dockerfile_builds_the_binaries_the_daemon_sets_run() {
    let text = std::fs::read_to_string(repo().join("deploy/image/Dockerfile")).unwrap();
    // Cargo's binaries of the two packages.
    let mut bins = BTreeSet::new();
    for manifest in ["control/Cargo.toml", "cni/Cargo.toml"] {
        let m = std::fs::read_to_string(repo().join(manifest)).unwrap();
        let mut in_bin = false;
        for line in m.lines() {
            if line.starts_with('[') {
                in_bin = line.trim() == "[[bin]]";
            } else if in_bin {
                if let Some(n) = line.strip_prefix("name = ") {
                    bins.insert(n.trim_matches('"').to_string());
                }
            }
        }
    }
    assert_eq!(bins, BTreeSet::from(["xlb".to_string(), "xlb-cni".to_string()]));
    let members = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let mut stages = 0;
    let mut built = BTreeSet::new();
    let mut installed = BTreeSet::new();
    let mut copied = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if let Some(image) = line.strip_prefix("FROM ") {
            stages += 1;
            let image = image.split_whitespace().next().unwrap();
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(
                tag.chars().next().is_some_and(|c| c.is_ascii_digit()) && tag.contains('.'),
                "FROM {image}: pin a version"
            );
        } else if let Some(rest) = line.strip_prefix("COPY ") {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            if let Some(from) = parts[0].strip_prefix("--from=builder") {
                assert!(from.is_empty());
                let src = parts[1];
                let bin = src.strip_prefix("/src/target/release/").expect("a release binary");
                built.insert(bin.to_string());
                installed.insert(parts[2].to_string());
            } else {
                for src in &parts[..parts.len() - 1] {
                    assert!(repo().join(src).exists(), "COPY {src}: no such path");
                    copied.insert(src.to_string());
                }
            }
        } else if line.contains("cargo build") {
            assert!(line.contains("--locked"), "{line}");
            for b in &bins {
                assert!(line.contains(&format!("--bin {b}")), "{line}: --bin {b}");
            }
        }
    }
    assert_eq!(stages, 2, "a builder and a runtime stage");
    assert_eq!(built, bins);
    assert_eq!(
        installed,
        BTreeSet::from([install::XLB_BIN.to_string(), install::CNI_BIN.to_string()])
    );
    // Every workspace member (cargo reads them all) and the BPF sources.
    let list = members.split("members = [").nth(1).unwrap().split(']').next().unwrap();
    for m in list.split(',').map(|m| m.trim().trim_matches('"')).filter(|m| !m.is_empty()) {
        let top = m.split('/').next().unwrap();
        assert!(copied.contains(top), "workspace member {m} not copied");
    }
    for dir in ["xdp", "tc", "sock", "Cargo.lock"] {
        assert!(copied.contains(dir), "{dir} not copied");
    }
    // The toolchain is at least the workspace's rust-version.
    let pinned = text.split("rust:").nth(1).unwrap().split('-').next().unwrap();
    let msrv = members.split("rust-version = \"").nth(1).unwrap().split('"').next().unwrap();
    let v = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap()).collect() };
    assert!(v(pinned) >= v(msrv), "toolchain {pinned} older than rust-version {msrv}");
}

/// GET `path` on 127.0.0.1:9465 inside `ns`: the status code.
fn status_in(ns: &NamedNetns, path: &str) -> Option<u16> {
    ns.run_in(|| {
        let addr = format!("127.0.0.1:{METRICS_PORT}").parse().unwrap();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).ok()?;
        raw.split_whitespace().nth(1)?.parse().ok()
    })
    .ok()?
}

/// The agent under `setpriv` with only `caps` (bounding set: nothing else
/// can be gained; no new privileges), as the DaemonSet's container runs it,
/// with `--iface=auto` in a namespace whose default route is via xv0.
/// Ok(log) once ready, Err(log) if it exits or is not ready in 30 s.
fn run_with_caps(tag: &str, caps: &[&str], extra: &[String]) -> Result<String, String> {
    testkit::require_root("this test (BPF, netns, setpriv)");
    let ns = NamedNetns::create(tag).unwrap_or_else(|e| panic!("{e}"));
    ns.veth("xv0", "xv1").unwrap_or_else(|e| panic!("{e}"));
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "xv0"]).unwrap_or_else(|e| panic!("{e}"));
    ns.ip(&["route", "add", "default", "via", "192.0.2.254", "dev", "xv0"])
        .unwrap_or_else(|e| panic!("{e}"));
    let pins = PinDir::new(tag);
    let dir = std::env::temp_dir().join(format!("xlb-caps-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = repo().join("control/examples/nginx.yaml");
    let caps: Vec<String> = caps.iter().map(|c| format!("+{}", c.to_ascii_lowercase())).collect();
    let set = format!("-all,{}", caps.join(","));
    let log = std::fs::File::create(dir.join("xlb.log")).unwrap();
    let mut child = ns
        .nsenter("setpriv")
        .args([
            &format!("--bounding-set={set}"),
            "--inh-caps=-all",
            "--no-new-privs",
            "--",
            XLB,
            "run",
            "--iface=auto",
            "--node-name=lb",
            "--small-maps",
            "--no-healthz",
            "--detach-on-exit",
        ])
        .arg("--config")
        .arg(&config)
        .arg("--pin-dir")
        .arg(pins.path())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawning setpriv (util-linux)");
    let t0 = Instant::now();
    let ready = loop {
        if status_in(&ns, "/readyz") == Some(200) {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(30) || child.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // SIGTERM: --detach-on-exit removes the programs.
    // SAFETY: kill on our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.join("xlb.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let log = format!("capabilities {set}:\n{log}");
    if ready {
        Ok(log)
    } else {
        Err(log)
    }
}

#[test]
fn the_frontend_needs_exactly_its_capabilities_and_finds_the_default_route_iface() {
    let off = ["--socket-lb=off".to_string()];
    let caps = Role::Frontend.capabilities();
    let log = run_with_caps("capfe", caps, &off).unwrap_or_else(|log| panic!("not ready: {log}"));
    assert!(log.contains("--iface auto") && log.contains("xv0"), "{log}");
    // Each one is needed: without it the agent does not start (CAP_PERFMON:
    // the verifier refuses the datapath's `data_end - data`).
    for (i, missing) in caps.iter().enumerate() {
        let fewer: Vec<&str> =
            caps.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, c)| *c).collect();
        let tag = format!("capfe{i}");
        if let Ok(log) = run_with_caps(&tag, &fewer, &off) {
            panic!("ready without CAP_{missing}: the DaemonSet grants more than needed\n{log}");
        }
    }
}

#[test]
fn the_node_agent_runs_with_its_capabilities_and_socket_lb_on_its_own_cgroup() {
    // A cgroup of the test's own (never the root): the socket programs
    // attach there, as the DaemonSet's attach at the host's cgroup2 root.
    let root = lb::loader::cgroup2_root().unwrap().expect("a cgroup2 mount");
    let cg = root.join(format!("xlb-capnode-{}", std::process::id()));
    std::fs::create_dir_all(&cg).unwrap();
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _rm = Rm(cg.clone());
    let extra = [format!("--socket-lb={}", cg.display())];
    let log = run_with_caps("capnode", Role::Node.capabilities(), &extra)
        .unwrap_or_else(|log| panic!("not ready: {log}"));
    // The socket iterators (tracing programs: CAP_PERFMON) loaded.
    assert!(log.contains("attached the socket programs"), "{log}");
    assert!(log.contains("socket termination available"), "{log}");
}
