//! Map fill levels on a schedule: a background thread runs the datapath's
//! census ([`lb::census`]: entries per map against capacity, by walking
//! each map) every `--metrics-census-interval` and keeps the last result
//! for /metrics.
//!
//! Why not at scrape time: counting a map is O(entries) (a 1M-entry LRU
//! connection table is ~64 MB of keys and values copied). Scrapes read the
//! last result and its age (`xlb_map_census_timestamp_seconds`) and cost
//! (`xlb_map_census_duration_seconds`).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

pub use lb::census::MapFill;

/// The last census.
#[derive(Clone, Debug, Default)]
pub struct Census {
    pub maps: BTreeMap<&'static str, MapFill>,
    /// Unix time it finished; 0: none yet.
    pub finished_unix: f64,
    pub duration: Duration,
    /// Maps that could not be counted, with the reason.
    pub errors: BTreeMap<&'static str, String>,
}

/// Counts every tracked map pinned under `pin_dir` once.
pub fn run_once(pin_dir: &Path) -> Census {
    let c = lb::census::run(pin_dir);
    Census {
        maps: c.maps,
        finished_unix: super::unix_now(),
        duration: c.duration,
        errors: c.errors.into_iter().map(|(m, e)| (m, e.to_string())).collect(),
    }
}

/// The background census; stops when dropped.
#[derive(Debug)]
pub struct CensusThread {
    results: Arc<Mutex<Census>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CensusThread {
    pub fn start(pin_dir: PathBuf, every: Duration) -> CensusThread {
        let results = Arc::new(Mutex::new(Census::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (results.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("xlb-census".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let c = run_once(&pin_dir);
                    *r.lock().expect("not poisoned") = c;
                    let t0 = Instant::now();
                    while t0.elapsed() < every && !s.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
            .ok();
        CensusThread { results, stop, thread }
    }

    pub fn results(&self) -> Arc<Mutex<Census>> {
        self.results.clone()
    }
}

impl Drop for CensusThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
