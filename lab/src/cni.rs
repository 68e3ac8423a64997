//! The lab's container runtime, as far as networking goes: it gives pods
//! their network by running the node's CNI plugin exactly as containerd or
//! CRI-O do — the configuration list the node's agent installed (the first
//! `*.conflist` of the node's CNI configuration directory, by name), each
//! plugin's configuration derived from it (cniVersion and name added) on
//! stdin, CNI_COMMAND / CNI_CONTAINERID / CNI_NETNS / CNI_IFNAME /
//! CNI_ARGS / CNI_PATH in the environment, the plugin binary found by its
//! `type` in CNI_PATH — and, when the pod goes, DEL with the ADD's result as
//! prevResult. A plugin that says "try again later" (the agent is not
//! ready) is retried, as the kubelet does. Plugins run in the node's
//! network namespace: the runtime's host.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::LabError;

/// How long a node's agent gets to install its CNI configuration.
pub const CNI_READY: Duration = Duration::from_secs(30);

/// A node's CNI directories (the agent writes the first, xlb-cni the others).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCni {
    pub conf_dir: PathBuf,
    pub state_dir: PathBuf,
    pub ipam_dir: PathBuf,
}

impl NodeCni {
    /// The directories of node `name` under the lab's scratch directory.
    pub fn under(dir: &Path, name: &str) -> NodeCni {
        let base = dir.join(name).join("cni");
        NodeCni {
            conf_dir: base.join("net.d"),
            state_dir: base.join("state"),
            ipam_dir: base.join("ipam"),
        }
    }

    /// The `xlb run` flags that make the node's agent its pod network with
    /// these directories.
    pub fn agent_args(&self) -> Vec<String> {
        let d = |p: &Path| p.display().to_string();
        vec![
            "--pod-network".into(),
            "--cni-conf-dir".into(),
            d(&self.conf_dir),
            "--cni-state-dir".into(),
            d(&self.state_dir),
            "--ipam-dir".into(),
            d(&self.ipam_dir),
        ]
    }
}

/// The `xlb-cni` binary: $XLB_CNI_BIN, else the one beside this executable
/// (or one level up, for test executables in deps/).
pub fn plugin_dir() -> Result<PathBuf, LabError> {
    if let Some(p) = std::env::var_os("XLB_CNI_BIN") {
        let p = PathBuf::from(p);
        return match (p.is_file(), p.parent()) {
            (true, Some(dir)) => Ok(dir.to_path_buf()),
            _ => Err(LabError::NoCni { tried: p.display().to_string() }),
        };
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut tried = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        if dir.join("xlb-cni").is_file() {
            return Ok(dir.to_path_buf());
        }
        tried.push(dir.join("xlb-cni").display().to_string());
    }
    Err(LabError::NoCni { tried: tried.join(" or ") })
}

/// One attachment: what ADD was called with and returned.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// The node's namespace: the runtime's "host", where plugins run.
    pub node_ns: String,
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub args: String,
    /// The configuration list ADD used, and its result.
    pub conflist: Value,
    pub result: Value,
}

/// The configuration list the runtime uses: the first `*.conflist` of
/// `dir` by name, waiting up to `timeout` for one to appear.
pub fn conflist(dir: &Path, timeout: Duration) -> Result<Value, LabError> {
    let t0 = Instant::now();
    loop {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|x| x == "conflist"));
        files.sort();
        if let Some(f) = files.first() {
            let text = std::fs::read_to_string(f)
                .map_err(|source| LabError::Io { path: f.clone(), source })?;
            return serde_json::from_str(&text).map_err(|e| LabError::Cni {
                op: "reading the configuration list".into(),
                detail: format!("{}: {e}", f.display()),
            });
        }
        if t0.elapsed() > timeout {
            return Err(LabError::Cni {
                op: "waiting for the node's CNI configuration".into(),
                detail: format!(
                    "no *.conflist in {} after {:?}: is the node's agent running with --pod-network?",
                    dir.display(),
                    timeout
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The configuration one plugin of `list` gets: its object, with the
/// list's cniVersion and name, and `prevResult` when given.
fn plugin_conf(list: &Value, plugin: &Value, prev: Option<&Value>) -> Value {
    let mut c = plugin.clone();
    c["cniVersion"] = list["cniVersion"].clone();
    c["name"] = list["name"].clone();
    if let Some(obj) = c.as_object_mut() {
        obj.remove("capabilities");
    }
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    c
}

/// Runs one plugin of one attachment: its stdout as JSON (Null when empty),
/// or the plugin's error result.
fn exec(
    plugin_dir: &Path,
    command: &str,
    a: &Attachment,
    conf: &Value,
) -> Result<Value, (Option<u64>, String)> {
    let ty = conf["type"].as_str().unwrap_or("");
    let bin = plugin_dir.join(ty);
    let mut cmd = Command::new(&bin);
    crate::netns::enter_before_exec(&a.node_ns, &mut cmd).map_err(|e| (None, e.to_string()))?;
    let mut child = cmd
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &a.container_id)
        .env("CNI_NETNS", &a.netns)
        .env("CNI_IFNAME", &a.ifname)
        .env("CNI_ARGS", &a.args)
        .env("CNI_PATH", plugin_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| (None, format!("running {}: {e}", bin.display())))?;
    let _ = child.stdin.take().map(|mut i| i.write_all(conf.to_string().as_bytes()));
    let out = child.wait_with_output().map_err(|e| (None, e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).map_err(|e| (None, format!("{ty}: output {text:?}: {e}")))?
    };
    if out.status.success() {
        Ok(v)
    } else {
        Err((
            v["code"].as_u64(),
            format!("{ty} {command}: {v} {}", String::from_utf8_lossy(&out.stderr).trim()),
        ))
    }
}

/// ADD through every plugin of `list`, each getting the previous one's
/// result; retried while a plugin says "try again later" (code 11), up to
/// `timeout`.
pub fn add(
    plugin_dir: &Path,
    list: &Value,
    mut a: Attachment,
    timeout: Duration,
) -> Result<Attachment, LabError> {
    let t0 = Instant::now();
    let plugins = list["plugins"].as_array().cloned().unwrap_or_default();
    a.conflist = list.clone();
    loop {
        let mut prev: Option<Value> = None;
        let mut failed = None;
        for p in &plugins {
            match exec(plugin_dir, "ADD", &a, &plugin_conf(list, p, prev.as_ref())) {
                Ok(v) => prev = Some(v),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            None => {
                a.result = prev.unwrap_or(Value::Null);
                return Ok(a);
            }
            Some((Some(11), _)) if t0.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Some((_, detail)) => {
                // The spec: a failed ADD is followed by a DEL.
                let _ = del(plugin_dir, &a);
                return Err(LabError::Cni { op: format!("ADD {}", a.container_id), detail });
            }
        }
    }
}

/// DEL through the plugins of the attachment's list, in reverse order,
/// with its ADD result as prevResult.
pub fn del(plugin_dir: &Path, a: &Attachment) -> Result<(), LabError> {
    let plugins = a.conflist["plugins"].as_array().cloned().unwrap_or_default();
    let prev = (!a.result.is_null()).then_some(&a.result);
    for p in plugins.iter().rev() {
        exec(plugin_dir, "DEL", a, &plugin_conf(&a.conflist, p, prev)).map_err(|(_, detail)| {
            LabError::Cni { op: format!("DEL {}", a.container_id), detail }
        })?;
    }
    Ok(())
}
