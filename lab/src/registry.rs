//! What every live lab owns — namespaces, processes, directories — in a
//! process-wide registry, so teardown works from `Drop` (also on panic) and
//! from a signal handler thread ([`teardown_all`]).
use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use crate::netns;

static LABS: Mutex<Vec<Arc<Owned>>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Resources of one lab, torn down once.
#[derive(Debug, Default)]
pub(crate) struct Owned {
    pub(crate) prefix: String,
    namespaces: Mutex<Vec<String>>,
    pids: Mutex<Vec<i32>>,
    dirs: Mutex<Vec<PathBuf>>,
    /// cgroup trees: killed and removed (rmdir, deepest first) before the
    /// namespaces go.
    cgroups: Mutex<Vec<crate::cgroup::Cgroup>>,
    done: AtomicBool,
}

impl Owned {
    pub(crate) fn register(prefix: String) -> Arc<Owned> {
        let owned = Arc::new(Owned { prefix, ..Owned::default() });
        lock(&LABS).push(owned.clone());
        owned
    }

    pub(crate) fn add_namespace(&self, ns: String) {
        lock(&self.namespaces).push(ns);
    }
    pub(crate) fn add_pid(&self, pid: i32) {
        lock(&self.pids).push(pid);
    }
    /// After the process was reaped (its pid may be reused from now on).
    pub(crate) fn remove_pid(&self, pid: i32) {
        lock(&self.pids).retain(|p| *p != pid);
    }
    pub(crate) fn add_cgroup(&self, cg: crate::cgroup::Cgroup) {
        lock(&self.cgroups).push(cg);
    }
    pub(crate) fn add_dir(&self, dir: PathBuf) {
        let mut dirs = lock(&self.dirs);
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }

    /// Kills processes (SIGTERM, then SIGKILL after a grace period), deletes
    /// namespaces (killing anything still inside them) and directories.
    /// Runs once; later calls return at once. Errors are logged, not
    /// returned: teardown goes on with the next resource.
    pub(crate) fn teardown(&self) {
        if self.done.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::debug!(prefix = %self.prefix, "tearing down lab");
        let pids = lock(&self.pids).clone();
        stop_pids(&pids, Duration::from_secs(2));
        for cg in lock(&self.cgroups).iter().rev() {
            if let Err(e) = cg.remove() {
                tracing::warn!(cgroup = %cg.path().display(), error = %e, "removing cgroup");
            }
        }
        let namespaces = lock(&self.namespaces).clone();
        for ns in namespaces.iter().rev() {
            let inside = netns::pids(ns);
            stop_pids(&inside, Duration::from_millis(500));
            if let Err(e) = netns::delete(ns) {
                tracing::warn!(ns = %ns, error = %e, "deleting namespace");
            }
        }
        for dir in lock(&self.dirs).iter().rev() {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "removing directory"),
            }
        }
        lock(&LABS).retain(|o| !std::ptr::eq(o.as_ref(), self));
    }
}

/// True once `pid` is gone or a zombie.
pub(crate) fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised command name, which may hold spaces.
        Ok(stat) => {
            stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
        }
    }
}

/// SIGTERM, wait up to `grace`, SIGKILL whatever is left.
pub(crate) fn stop_pids(pids: &[i32], grace: Duration) {
    let own = std::process::id() as i32;
    let pids: Vec<i32> = pids.iter().copied().filter(|p| *p > 1 && *p != own).collect();
    for &pid in &pids {
        // SAFETY: plain syscall.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && !pids.iter().all(|p| is_dead(*p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &pid in &pids {
        if !is_dead(pid) {
            // SAFETY: plain syscall.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Tears down every lab this process has built and not yet dropped. For a
/// signal-handling thread (not async-signal-safe: call it from a thread that
/// waits for the signal, not from a signal handler itself).
pub fn teardown_all() {
    let labs: Vec<Arc<Owned>> = lock(&LABS).clone();
    for lab in labs {
        lab.teardown();
    }
}
