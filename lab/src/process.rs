//! Processes inside lab namespaces: [`LabChild`] stops (SIGTERM, then
//! SIGKILL) and reaps its process when dropped, and the lab's registry
//! kills it too if the lab goes first.
use std::{
    process::{Child, ExitStatus},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::registry::{self, Owned};

/// A process the lab started in one of its namespaces.
#[derive(Debug)]
pub struct LabChild {
    pub(crate) child: Child,
    pub(crate) name: String,
    pub(crate) ns: String,
    pub(crate) owner: Arc<Owned>,
    pub(crate) reaped: bool,
}

impl LabChild {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// What it is ("nginx pod1-1", or the program name).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The namespace it runs in.
    pub fn ns(&self) -> &str {
        &self.ns
    }
    /// The std handle, for its piped stdio. Wait through [`LabChild`]'s
    /// own methods so the registry forgets the pid once it is reaped.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Exit status if it has exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        let r = self.child.try_wait()?;
        if r.is_some() {
            self.mark_reaped();
        }
        Ok(r)
    }

    /// Waits up to `timeout` for it to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; reaps it.
    pub fn stop(&mut self, grace: Duration) -> std::io::Result<ExitStatus> {
        if !self.reaped {
            registry::stop_pids(&[self.child.id() as i32], grace);
        }
        let status = self.child.wait()?;
        self.mark_reaped();
        Ok(status)
    }

    fn mark_reaped(&mut self) {
        if !self.reaped {
            self.reaped = true;
            self.owner.remove_pid(self.child.id() as i32);
        }
    }
}

impl Drop for LabChild {
    fn drop(&mut self) {
        if let Err(e) = self.stop(Duration::from_secs(2)) {
            tracing::warn!(name = %self.name, error = %e, "stopping lab process");
        }
    }
}
