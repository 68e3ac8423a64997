//! Network namespaces that tests and benchmarks create and own: an anonymous
//! one for a thread of its own ([`in_private_netns`]: gone when the thread
//! ends, even on a crash) and named ones for multi-namespace rigs and child
//! processes ([`NamedNetns`]: deleted on drop), plus running `ip`,
//! `iptables`, ... in them. Every name carries the process id so parallel
//! runs never clash. A panic on a namespace's thread is resumed on the
//! caller, so a test fails with its own message.
use std::{
    fs::File,
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::{Scope, ScopedJoinHandle},
};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("{op} (needs root / CAP_SYS_ADMIN): {source}")]
    Syscall { op: &'static str, source: io::Error },
    #[error("starting `{cmd}`: {source}")]
    Spawn { cmd: String, source: io::Error },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command { cmd: String, status: String, stderr: String },
}

/// Runs `f` on a new thread inside a new, empty network namespace (only `lo`,
/// up). The namespace dies with the thread (and any process it started
/// that still runs there). Processes spawned from `f` start in it too.
pub fn in_private_netns<T, F>(f: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    std::thread::scope(|s| {
        join(spawn_named(s, move || {
            // SAFETY: unshare affects only this thread's namespaces.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(NetnsError::Syscall {
                    op: "unshare(CLONE_NEWNET)",
                    source: io::Error::last_os_error(),
                });
            }
            run("ip", &["link", "set", "lo", "up"])?;
            Ok(f())
        }))
    })
}

/// Runs `f` on a new thread that has joined the named namespace `name`
/// (/run/netns/`name`), so sockets it opens live there.
pub fn in_named_netns<T, F>(name: &str, f: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let fd = File::open(Path::new(NETNS_DIR).join(name))
        .map_err(|source| NetnsError::Syscall { op: "open /run/netns/<ns>", source })?;
    std::thread::scope(|s| {
        join(spawn_named(s, move || {
            // SAFETY: plain syscall on a valid fd; only this thread moves.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(NetnsError::Syscall {
                    op: "setns",
                    source: io::Error::last_os_error(),
                });
            }
            drop(fd);
            Ok(f())
        }))
    })
}

/// A scoped thread named like the caller's (a test's name), so a panic
/// message says which test it came from.
fn spawn_named<'scope, T: Send + 'scope>(
    s: &'scope Scope<'scope, '_>,
    f: impl FnOnce() -> T + Send + 'scope,
) -> ScopedJoinHandle<'scope, T> {
    let mut b = std::thread::Builder::new();
    if let Some(name) = std::thread::current().name() {
        b = b.name(format!("{name} (netns)"));
    }
    b.spawn_scoped(s, f).expect("spawning a namespace thread")
}

fn join<T>(h: ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
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

/// Runs `ip -batch` over `lines` (one `ip` command each, without the `ip`)
/// in the calling thread's namespace; the error names every line.
pub fn ip_batch(lines: &[String]) -> Result<(), NetnsError> {
    let script = lines.join("\n");
    run_with_input("ip", &["-batch", "-"], script.as_bytes()).map(drop).map_err(|e| match e {
        NetnsError::Command { status, stderr, .. } => {
            NetnsError::Command { cmd: format!("ip -batch:\n{script}\n"), status, stderr }
        }
        e => e,
    })
}

fn next_seq() -> u32 {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

const NETNS_DIR: &str = "/run/netns";

/// A named namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct NamedNetns {
    name: String,
}

impl NamedNetns {
    /// Creates `xlbt<pid>-<seq>-<role>` with `lo` up; a stale one of the
    /// same name is replaced.
    pub fn create(role: &str) -> Result<NamedNetns, NetnsError> {
        let name = format!("xlbt{}-{}-{role}", std::process::id(), next_seq());
        let _ = run("ip", &["netns", "delete", &name]);
        run("ip", &["netns", "add", &name])?;
        let ns = NamedNetns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// /run/netns/<name>: what `nsenter --net=` and setns take.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Runs a command inside (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, NetnsError> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]).args(args);
        run_cmd(cmd)
    }

    /// `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name]).args(args);
        run_cmd(cmd)
    }

    /// A veth pair `a` <-> `b` inside, both up.
    pub fn veth(&self, a: &str, b: &str) -> Result<(), NetnsError> {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
        self.ip(&["link", "set", a, "up"])?;
        self.ip(&["link", "set", b, "up"])?;
        Ok(())
    }

    /// A command that will run inside when spawned (`ip netns exec`: with
    /// the namespace's own /sys and /etc/netns files).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// A command that will run inside when spawned, joining only the
    /// network namespace (`nsenter --net`): unlike `ip netns exec` it keeps
    /// the caller's mounts, so an agent's bpffs pins are the caller's.
    pub fn nsenter(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display())).arg(program);
        cmd
    }

    /// Runs `f` on a thread that has joined this namespace.
    pub fn run_in<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        in_named_netns(&self.name, f)
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        // Processes we started inside were stopped by their own guards;
        // deleting the name frees the namespace once they are gone.
        let _ = run("ip", &["netns", "delete", &self.name]);
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
