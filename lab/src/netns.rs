//! Named network namespaces (/run/netns, as `ip netns` keeps them): create,
//! delete, list, enter — per thread with [`in_netns`] (testkit's), or in a
//! child process before exec with [`enter_before_exec`] — and run `ip`
//! commands inside.
use std::{
    fs::File,
    io,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::Path,
    process::{Command, Output, Stdio},
};

use crate::LabError;

const NETNS_DIR: &str = "/run/netns";

/// Creates the named namespace (`ip netns add`).
pub(crate) fn add(name: &str) -> Result<(), LabError> {
    run_checked(Command::new("ip").args(["netns", "add", name]), "host").map(drop)
}

/// Deletes the named namespace; a missing one is not an error.
pub(crate) fn delete(name: &str) -> Result<(), LabError> {
    if !Path::new(NETNS_DIR).join(name).exists() {
        return Ok(());
    }
    run_checked(Command::new("ip").args(["netns", "delete", name]), "host").map(drop)
}

/// Names of all named namespaces on the host.
pub fn list() -> Result<Vec<String>, LabError> {
    let dir = match std::fs::read_dir(NETNS_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(LabError::Io { path: NETNS_DIR.into(), source }),
    };
    let mut names: Vec<String> =
        dir.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort();
    Ok(names)
}

/// Opens the namespace's handle (close-on-exec).
pub fn open(name: &str) -> Result<File, LabError> {
    File::open(Path::new(NETNS_DIR).join(name)).map_err(|source| LabError::Netns {
        ns: name.into(),
        op: "open",
        source,
    })
}

/// Runs `f` on a fresh thread that has joined namespace `ns`, so sockets it
/// opens live there (testkit's `in_named_netns`). Threads `f` spawns
/// inherit the namespace. A panic in `f` is resumed on the caller. Note
/// /sys still shows the host's view (it is tagged at mount time); use
/// [`crate::stats`] for interface counters.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T, LabError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    testkit::netns::in_named_netns(ns, f)
        .map_err(|source| LabError::Enter { ns: ns.into(), source })
}

/// Makes `cmd` join namespace `ns` between fork and exec, unblock every
/// signal (a caller's signal thread may have blocked some) and get SIGKILL
/// when the spawning thread dies, so a killed lab leaves no process behind.
/// The namespace handle lives in `cmd` (close-on-exec) until it is dropped.
pub(crate) fn enter_before_exec(ns: &str, cmd: &mut Command) -> Result<(), LabError> {
    let fd = open(ns)?;
    // SAFETY: the closure only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            Ok(())
        });
    }
    Ok(())
}

/// Runs `ip -n <ns> <args>`, returning stdout.
pub(crate) fn ip(ns: &str, args: &[&str]) -> Result<String, LabError> {
    let out = run_checked(Command::new("ip").arg("-n").arg(ns).args(args), ns)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Process ids inside namespace `ns` (`ip netns pids`).
pub(crate) fn pids(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `cmd` to completion; a non-zero exit is an error carrying stderr.
pub(crate) fn run_checked(cmd: &mut Command, ns: &str) -> Result<Output, LabError> {
    let line = describe(cmd);
    let out = cmd.stdin(Stdio::null()).output().map_err(|source| LabError::Spawn {
        ns: ns.into(),
        cmd: line.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(LabError::Command {
            ns: ns.into(),
            cmd: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// "prog arg arg" for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
