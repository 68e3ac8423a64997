//! A private bpffs directory for one test's (or one benchmark run's) pinned
//! maps and links: unique per process and per guard, so tests run in
//! parallel and beside a real agent; removed on drop, also when the test
//! panics. Not created: the loader (or the agent under test) creates it,
//! and a test may check that nothing was pinned.
use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

/// `/sys/fs/bpf/xlbt<pid>-<seq>-<tag>`, removed on drop.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// A fresh directory name (a stale directory of the same name is
    /// removed). Panics unless running as root.
    pub fn new(tag: &str) -> PinDir {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        crate::require_root("pinning BPF maps under /sys/fs/bpf");
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/sys/fs/bpf/xlbt{}-{seq}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        PinDir { path }
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

/// A numeric field (`max_entries`, `id`, ...) of the map pinned at `path`,
/// as `bpftool -j map show pinned` reports it. Panics with bpftool's error.
pub fn pinned_map_field(path: &std::path::Path, field: &str) -> u64 {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("running bpftool (apt-get install bpftool): {e}"));
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let key = format!("\"{field}\":");
    let at =
        text.find(&key).unwrap_or_else(|| panic!("no {field} in bpftool's {text}")) + key.len();
    text[at..].trim_start().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}
