//! /healthz and /readyz: liveness from the reconcile runtime's heartbeat,
//! readiness from the first successful apply and the source's health.
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
    time::{SystemTime, UNIX_EPOCH},
};

/// A heartbeat older than this makes /healthz fail: the runtime that runs
/// the reconcile loop is stuck (a blocked apply, a deadlock).
pub const STALL_AFTER_MS: u64 = 30_000;

#[derive(Debug, Default)]
pub struct Health {
    applied_once: AtomicBool,
    /// Unix ms of the last heartbeat; 0: not started yet.
    heartbeat_ms: AtomicU64,
    source_problem: Mutex<Option<String>>,
    /// The configuration's problems, for /status.
    problems: Mutex<Problems>,
}

/// What /status says about the configuration.
#[derive(Debug, Default)]
struct Problems {
    rejected: bool,
    list: Vec<String>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Health {
    pub fn beat(&self) {
        self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// The datapath matched the source at least once.
    pub fn applied(&self) {
        self.applied_once.store(true, Ordering::Relaxed);
    }

    /// The source cannot be read (API unreachable, manifests unreadable).
    pub fn source_failed(&self, reason: String) {
        *self.source_problem.lock().expect("not poisoned") = Some(reason);
    }

    pub fn source_ok(&self) {
        *self.source_problem.lock().expect("not poisoned") = None;
    }

    /// The configuration's problems now: refused whole (`rejected`), or left out.
    pub fn set_problems(&self, problems: &[xlb_control::translate::ConfigError], rejected: bool) {
        let list = problems.iter().map(|p| p.to_string()).collect();
        *self.problems.lock().expect("not poisoned") = Problems { rejected, list };
    }

    /// The /status page: readiness and the configuration's problems.
    pub fn status(&self) -> String {
        let mut out = match self.ready() {
            Ok(()) => "ready\n".to_string(),
            Err(why) => format!("not ready: {why}\n"),
        };
        let p = self.problems.lock().expect("not poisoned");
        let n = p.list.len();
        if n == 0 {
            out.push_str("configuration: no problems\n");
        } else if p.rejected {
            out.push_str(&format!(
                "configuration: rejected whole ({n} problem{}), the running state stays:\n",
                if n == 1 { "" } else { "s" }
            ));
        } else {
            out.push_str(&format!(
                "configuration: {n} problem{} left out, everything valid applied:\n",
                if n == 1 { "" } else { "s" }
            ));
        }
        for line in &p.list {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// Ok, or why not live.
    pub fn live(&self) -> Result<(), String> {
        let hb = self.heartbeat_ms.load(Ordering::Relaxed);
        let age = now_ms().saturating_sub(hb);
        if hb != 0 && age > STALL_AFTER_MS {
            return Err(format!("reconcile runtime stalled: no heartbeat for {} s", age / 1000));
        }
        Ok(())
    }

    /// Ok, or why not ready.
    pub fn ready(&self) -> Result<(), String> {
        self.live()?;
        if let Some(p) = self.source_problem.lock().expect("not poisoned").as_ref() {
            return Err(format!("source unavailable: {p}"));
        }
        if !self.applied_once.load(Ordering::Relaxed) {
            return Err("no configuration applied yet".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_after_an_apply_and_while_the_source_is_fine() {
        let h = Health::default();
        assert_eq!(h.ready(), Err("no configuration applied yet".into()));
        h.applied();
        assert_eq!(h.ready(), Ok(()));
        h.source_failed("API down".into());
        assert_eq!(h.ready(), Err("source unavailable: API down".into()));
        h.source_ok();
        assert_eq!(h.ready(), Ok(()));
        h.heartbeat_ms.store(1, Ordering::Relaxed);
        assert!(h.live().unwrap_err().contains("stalled"));
    }
}
