//! Churn drivers: traffic that runs while backends change, and what it saw.
//! [`run_under_load`] opens long-lived keep-alive connections through a
//! target (each learns which pod serves it), keeps every one of them busy
//! with a request every `interval`, runs a steady stream of short-lived
//! connections from other threads, and meanwhile calls the caller's churn
//! actions. A held connection is *broken* the first time a request on it
//! fails or is answered by another pod; a new connection *fails* when
//! connect, request or response fails. Sockets live in the namespace the
//! lab says (the client), worker threads too.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use lab::{
    http::{Conn, HttpError},
    Lab, LabError,
};
use serde::Serialize;

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub target: SocketAddr,
    /// Long-lived connections held open.
    pub held: usize,
    /// Pause between two requests on the same held connection.
    pub interval: Duration,
    /// Threads opening short-lived connections back to back.
    pub new_conn_threads: usize,
    pub timeout: Duration,
}

impl LoadSpec {
    pub fn new(target: SocketAddr) -> Self {
        LoadSpec {
            target,
            held: 64,
            interval: Duration::from_millis(20),
            new_conn_threads: 2,
            timeout: Duration::from_secs(2),
        }
    }
}

/// One held connection's story.
#[derive(Clone, Debug, Serialize)]
pub struct Held {
    /// The pod that answered its first request.
    pub pod: String,
    pub requests_ok: u64,
    /// When (since the load started) and how it broke.
    pub broken: Option<(Duration, String)>,
}

/// What the load saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadReport {
    pub held: Vec<Held>,
    /// Successful short-lived connections: (since start, pod).
    pub new_ok: Vec<(Duration, String)>,
    /// Failed short-lived connections: (since start, error).
    pub new_failed: Vec<(Duration, String)>,
    pub elapsed: Duration,
}

impl LoadReport {
    /// Broken held connections whose pod is not in `affected`.
    pub fn broken_unaffected(&self, affected: &[&str]) -> Vec<&Held> {
        self.held
            .iter()
            .filter(|h| h.broken.is_some() && !affected.contains(&h.pod.as_str()))
            .collect()
    }
    /// Held connections per pod.
    pub fn held_per_pod(&self) -> BTreeMap<&str, usize> {
        let mut m = BTreeMap::new();
        for h in &self.held {
            *m.entry(h.pod.as_str()).or_default() += 1;
        }
        m
    }
    /// Short-lived connections answered by `pod` inside [from, to).
    pub fn new_on(&self, pod: &str, from: Duration, to: Duration) -> usize {
        self.new_ok.iter().filter(|(t, p)| p == pod && *t >= from && *t < to).count()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChurnError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("opening held connection {index} to {target}: {source}")]
    Open { index: usize, target: SocketAddr, source: HttpError },
}

/// Opens the held connections in `ns`, starts the load, calls
/// `churn(started)` on this thread (`started`: the instant the load's
/// clock counts from), stops the load when it returns, and reports.
pub fn run_under_load<R: Send>(
    lab: &Lab,
    ns: &str,
    spec: &LoadSpec,
    churn: impl FnOnce(Instant) -> R,
) -> Result<(R, LoadReport), ChurnError> {
    let target = spec.target;
    let opened: Result<Vec<(Conn, String)>, ChurnError> = lab.in_ns(ns, || {
        (0..spec.held)
            .map(|index| {
                let mut c = Conn::connect(target, spec.timeout)
                    .map_err(|source| ChurnError::Open { index, target, source })?;
                let pod =
                    c.get(false).map_err(|source| ChurnError::Open { index, target, source })?;
                Ok((c, pod))
            })
            .collect()
    })?;
    let opened = opened?;
    let stop = AtomicBool::new(false);
    let new_ok = Mutex::new(Vec::new());
    let new_failed = Mutex::new(Vec::new());
    let t0 = Instant::now();
    let (result, held) = std::thread::scope(|s| {
        let holder = s.spawn(|| hold(opened, &stop, spec.interval, t0));
        let mut loaders = Vec::new();
        for _ in 0..spec.new_conn_threads {
            loaders.push(s.spawn(|| {
                lab.in_ns(ns, || {
                    while !stop.load(Ordering::Relaxed) {
                        let r = Conn::connect(target, spec.timeout).and_then(|mut c| c.get(true));
                        let t = t0.elapsed();
                        match r {
                            Ok(pod) => {
                                new_ok.lock().unwrap_or_else(|p| p.into_inner()).push((t, pod))
                            }
                            Err(e) => new_failed
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push((t, e.to_string())),
                        }
                    }
                })
            }));
        }
        // Stop the workers even if `churn` panics.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let guard = StopOnDrop(&stop);
        let result = churn(t0);
        drop(guard);
        let held = holder.join().expect("held-connection worker panicked");
        for l in loaders {
            l.join().expect("new-connection worker panicked").expect("entering the namespace");
        }
        (result, held)
    });
    Ok((
        result,
        LoadReport {
            held,
            new_ok: new_ok.into_inner().unwrap_or_else(|p| p.into_inner()),
            new_failed: new_failed.into_inner().unwrap_or_else(|p| p.into_inner()),
            elapsed: t0.elapsed(),
        },
    ))
}

/// Keeps every connection busy until `stop`; a connection that fails or
/// changes pod is marked broken and dropped.
fn hold(
    conns: Vec<(Conn, String)>,
    stop: &AtomicBool,
    interval: Duration,
    t0: Instant,
) -> Vec<Held> {
    let mut state: Vec<(Option<Conn>, Held)> = conns
        .into_iter()
        .map(|(c, pod)| (Some(c), Held { pod, requests_ok: 1, broken: None }))
        .collect();
    // One last sweep after `stop`, so late breakage is seen too.
    let mut last = false;
    loop {
        last |= stop.load(Ordering::Relaxed);
        let sweep = Instant::now();
        for (conn, h) in state.iter_mut() {
            let Some(c) = conn else { continue };
            match c.get(false) {
                Ok(p) if p == h.pod => h.requests_ok += 1,
                Ok(p) => {
                    h.broken = Some((t0.elapsed(), format!("answered by {p}")));
                    *conn = None;
                }
                Err(e) => {
                    h.broken = Some((t0.elapsed(), e.to_string()));
                    *conn = None;
                }
            }
        }
        if last {
            break;
        }
        std::thread::sleep(interval.saturating_sub(sweep.elapsed()));
    }
    state.into_iter().map(|(_, h)| h).collect()
}
