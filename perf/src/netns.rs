//! Network namespaces the benchmarks create and own: an anonymous one for the
//! calling thread ([`in_private_netns`]: gone when the thread ends, even on a
//! crash) and named ones for multi-namespace rigs ([`NamedNetns`]: deleted on
//! drop), plus running `ip`/`iptables`/... inside them. Every name carries the
//! process id so parallel runs never clash.
use std::{
    fs::File,
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("{op} (needs root / CAP_SYS_ADMIN): {source}")]
    Syscall { op: &'static str, source: io::Error },
    #[error("starting `{cmd}`: {source}")]
    Spawn { cmd: String, source: io::Error },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command { cmd: String, status: String, stderr: String },
    #[error("a thread in namespace {ns} panicked: {detail}")]
    Panicked { ns: String, detail: String },
    #[error("bpffs directory {}: {source}", path.display())]
    PinDir { path: PathBuf, source: io::Error },
}

/// Runs `f` on a new thread inside a new, empty network namespace (only `lo`,
/// down). The namespace dies with the thread (and any process it started
/// that still runs there). Processes spawned from `f` start in it too.
pub fn in_private_netns<T, F>(f: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            // SAFETY: unshare affects only this thread's namespaces.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(NetnsError::Syscall {
                    op: "unshare(CLONE_NEWNET)",
                    source: io::Error::last_os_error(),
                });
            }
            run("ip", &["link", "set", "lo", "up"])?;
            Ok(f())
        });
        h.join()
            .map_err(|p| NetnsError::Panicked { ns: "private".into(), detail: panic_text(&p) })?
    })
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// Runs a command in the calling thread's namespace; its stdout on success.
pub fn run(program: &str, args: &[&str]) -> Result<String, NetnsError> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_cmd(cmd)
}

/// Runs a prepared command; its stdout on success, stderr in the error.
pub fn run_cmd(mut cmd: Command) -> Result<String, NetnsError> {
    let text = format!("{cmd:?}").replace('"', "");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetnsError::Spawn { cmd: text.clone(), source })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            cmd: text,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a shell-free command with `input` on its stdin.
pub fn run_with_input(program: &str, args: &[&str], input: &[u8]) -> Result<String, NetnsError> {
    use std::io::Write;
    let text = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetnsError::Spawn { cmd: text.clone(), source })?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let write = stdin.write_all(input);
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|source| NetnsError::Spawn { cmd: text.clone(), source })?;
    if !out.status.success() || write.is_err() {
        return Err(NetnsError::Command {
            cmd: text,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn next_seq() -> u32 {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A named namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct NamedNetns {
    name: String,
}

impl NamedNetns {
    /// Creates `xlbperf<pid>-<seq>-<role>`; a stale one of the same name is
    /// replaced.
    pub fn create(role: &str) -> Result<NamedNetns, NetnsError> {
        let name = format!("xlbperf{}-{}-{role}", std::process::id(), next_seq());
        let _ = run("ip", &["netns", "delete", &name]);
        run("ip", &["netns", "add", &name])?;
        let ns = NamedNetns { name };
        ns.exec("ip", &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, NetnsError> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]).args(args);
        run_cmd(cmd)
    }

    /// A command that will run inside when spawned.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `f` on a thread that has joined this namespace.
    pub fn run_in<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let path = Path::new("/run/netns").join(&self.name);
        let fd = File::open(&path)
            .map_err(|source| NetnsError::Syscall { op: "open /run/netns/<ns>", source })?;
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                // SAFETY: plain syscall on a valid fd; only this thread moves.
                if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(NetnsError::Syscall {
                        op: "setns",
                        source: io::Error::last_os_error(),
                    });
                }
                drop(fd);
                Ok(f())
            });
            h.join().map_err(|p| NetnsError::Panicked {
                ns: self.name.clone(),
                detail: panic_text(&p),
            })?
        })
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        // Processes we started inside were stopped by their own guards;
        // deleting the name frees the namespace once they are gone.
        let _ = run("ip", &["netns", "delete", &self.name]);
    }
}

/// A bpffs directory for one run's pinned maps, removed on drop.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// `/sys/fs/bpf/xlbperf<pid>-<seq>-<role>`, emptied if a stale one exists.
    pub fn create(role: &str) -> Result<PinDir, NetnsError> {
        let path = PathBuf::from(format!(
            "/sys/fs/bpf/xlbperf{}-{}-{role}",
            std::process::id(),
            next_seq()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .map_err(|source| NetnsError::PinDir { path: path.clone(), source })?;
        Ok(PinDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The interface index of `iface` in the calling thread's namespace.
pub fn ifindex(iface: &str) -> Option<u32> {
    let c = std::ffi::CString::new(iface).ok()?;
    // SAFETY: c is a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The MAC address of `iface` in the calling thread's namespace.
pub fn mac(iface: &str) -> Result<[u8; 6], NetnsError> {
    let out = run("ip", &["-o", "link", "show", "dev", iface])?;
    let text =
        out.split("link/ether ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap_or("");
    let mut m = [0u8; 6];
    let parts: Vec<_> = text.split(':').collect();
    if parts.len() != 6 {
        return Err(NetnsError::Command {
            cmd: format!("ip link show dev {iface}"),
            status: "ok".into(),
            stderr: format!("no link/ether address in {out:?}"),
        });
    }
    for (b, p) in m.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).unwrap_or(0);
    }
    Ok(m)
}
