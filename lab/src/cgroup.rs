//! cgroup v2 directories for the lab: a tree per lab under the host's
//! cgroup2 mount (found at runtime, `lb::loader::cgroup2_root`), one
//! directory per node and one per pod below its node:
//!
//! ```text
//! <cgroup2>/<lab prefix>/<node>/           the node's own processes
//! <cgroup2>/<lab prefix>/<node>/<pod>/     each pod's processes
//! ```
//!
//! so that an agent attaching xlb's socket programs at its node's directory
//! sees exactly that node's processes and pods (as a real agent attaching at
//! a machine's cgroup root sees all of its), never the host's. A process
//! joins before exec ([`Cgroup::join_before_exec`]); teardown kills what is
//! left inside (cgroup.kill) and removes the directories deepest first
//! (a cgroup directory is removed with rmdir, never recursively).
use std::{
    ffi::CString,
    io,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::LabError;

/// One cgroup v2 directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    pub(crate) path: PathBuf,
}

/// The host's cgroup2 mount point.
pub fn root() -> Result<PathBuf, LabError> {
    let io = |source| LabError::Io { path: "/proc/self/mountinfo".into(), source };
    lb::loader::cgroup2_root().map_err(io)?.ok_or_else(|| {
        io(io::Error::new(io::ErrorKind::NotFound, "no cgroup2 file system is mounted"))
    })
}

impl Cgroup {
    /// Creates `path` (and missing parents); an existing one is reused.
    pub fn create(path: impl Into<PathBuf>) -> Result<Cgroup, LabError> {
        let path = path.into();
        std::fs::create_dir_all(&path)
            .map_err(|source| LabError::Io { path: path.clone(), source })?;
        Ok(Cgroup { path })
    }

    /// A child directory, created.
    pub fn child(&self, name: &str) -> Result<Cgroup, LabError> {
        Cgroup::create(self.path.join(name))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `cmd`'s process join this cgroup before it execs (it writes
    /// "0", itself, to cgroup.procs): everything it starts stays inside.
    pub fn join_before_exec(&self, cmd: &mut Command) {
        let procs = CString::new(self.path.join("cgroup.procs").as_os_str().as_encoded_bytes())
            .expect("a cgroup path has no NUL");
        // SAFETY: between fork and exec only async-signal-safe calls
        // (open, write, close) on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0\n".as_ptr().cast(), 2);
                let err = io::Error::last_os_error();
                libc::close(fd);
                if n != 2 {
                    return Err(err);
                }
                Ok(())
            });
        }
    }

    /// Pids in this cgroup (not its children).
    pub fn procs(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Pids in this cgroup and every one below it.
    pub fn procs_recursive(&self) -> Vec<i32> {
        let mut out = self.procs();
        for d in subdirs(&self.path) {
            out.extend(Cgroup { path: d }.procs_recursive());
        }
        out
    }

    /// Kills every process in the subtree and removes the directories,
    /// deepest first. A missing directory is fine.
    pub fn remove(&self) -> io::Result<()> {
        if !self.path.exists() {
            return Ok(());
        }
        // cgroup.kill (Linux 5.14) SIGKILLs the whole subtree at once.
        let kill = self.path.join("cgroup.kill");
        if kill.exists() {
            let _ = std::fs::write(&kill, "1");
        } else {
            for pid in self.procs_recursive() {
                // SAFETY: plain syscall.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match remove_tree(&self.path) {
                Ok(()) => return Ok(()),
                // EBUSY while killed processes are still exiting.
                Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn subdirs(path: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(path) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

fn remove_tree(path: &Path) -> io::Result<()> {
    for d in subdirs(path) {
        remove_tree(&d)?;
    }
    match std::fs::remove_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}
