//! Next-hop readiness for the tunnel: XDP cannot resolve a neighbour, so the
//! agent keeps a kernel-managed neighbour entry (NTF_EXT_MANAGED, Linux 5.16+)
//! for the next hop of every tunnel endpoint the datapath sends to. The
//! kernel resolves such entries by itself and keeps them fresh; XDP then
//! finds a resolved next hop for every node. (While one is still resolving,
//! XDP hands the encapsulated packet to the kernel: ok_neigh_pass.)
//!
//! Uses iproute2 (`ip -batch`): one process per sync, only for endpoints not
//! seen before.
use std::{
    collections::BTreeSet,
    io::Write,
    net::IpAddr,
    process::{Command, Stdio},
};

#[derive(Debug, thiserror::Error)]
pub enum NeighError {
    #[error("running ip: {0}")]
    Spawn(std::io::Error),
    #[error("ip {what} failed: {stderr}")]
    Ip { what: &'static str, stderr: String },
}

/// The tunnel endpoints whose next hops are kept resolved.
#[derive(Debug, Default)]
pub struct Neighbours {
    done: BTreeSet<IpAddr>,
}

/// Where the kernel sends packets for each address: (next hop, device), or
/// None for an address with no route (reported, not fatal: the node may
/// become reachable later, and XDP counts what it cannot send).
fn next_hops(addrs: &[IpAddr]) -> Result<Vec<Option<(IpAddr, String)>>, NeighError> {
    let script: String = addrs.iter().map(|a| format!("route get {a}\n")).collect();
    // -force: an unroutable address fails its own line only. The answers are
    // matched by their "dst", not by position, since failed lines print none.
    let out = ip_batch(&["-j"], &script, None)?;
    let mut found: std::collections::HashMap<IpAddr, (IpAddr, String)> = Default::default();
    for line in out.lines().filter(|l| l.trim_start().starts_with('[')) {
        let (Some(dst), Some(dev)) = (json_field(line, "dst"), json_field(line, "dev")) else {
            continue;
        };
        let Ok(dst) = dst.parse::<IpAddr>() else { continue };
        let gw = json_field(line, "gateway").and_then(|g| g.parse().ok());
        found.insert(dst, (gw.unwrap_or(dst), dev));
    }
    Ok(addrs.iter().map(|a| found.remove(a)).collect())
}

/// The string value of `"key":"value"` in a flat JSON line (enough for ip's output).
fn json_field(line: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":\"");
    let start = line.find(&pat)? + pat.len();
    let end = line[start..].find('"')? + start;
    Some(line[start..end].to_string())
}

/// Runs `ip -force -batch` on `script`. Strict: a failed line is an
/// error. Lenient: failed lines are skipped (their errors dropped) and the
/// output of the others is returned.
fn ip_batch(
    args: &[&str],
    script: &str,
    strict: Option<&'static str>,
) -> Result<String, NeighError> {
    let mut child = Command::new("ip")
        .args(args)
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NeighError::Spawn)?;
    // The script is written from a thread of its own while this one reads:
    // ip answers line by line, and with both written first, a script and its
    // answers larger than the pipes (route get for a few thousand nodes)
    // block ip on its full stdout and this process on ip's full stdin for
    // ever.
    let mut stdin = child.stdin.take().expect("piped");
    let script = script.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
    let out = child.wait_with_output().map_err(NeighError::Spawn)?;
    writer.join().expect("ip stdin writer panicked").map_err(NeighError::Spawn)?;
    if let Some(what) = strict.filter(|_| !out.status.success()) {
        return Err(NeighError::Ip { what, stderr: String::from_utf8_lossy(&out.stderr).into() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Neighbours {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes sure every endpoint in `endpoints` has a managed neighbour entry
    /// for its next hop. Endpoints handled before are skipped; returns how
    /// many entries were created. A next hop that already has a resolved
    /// entry (e.g. a static one) is left alone; an endpoint without a route
    /// is retried on the next sync.
    pub fn sync(&mut self, endpoints: &BTreeSet<IpAddr>) -> Result<usize, NeighError> {
        let new: Vec<IpAddr> = endpoints.difference(&self.done).copied().collect();
        if new.is_empty() {
            return Ok(0);
        }
        let hops = next_hops(&new)?;
        let existing = ip_batch(
            &[],
            "neigh show nud permanent\nneigh show nud reachable\n",
            Some("neigh show"),
        )?;
        // Next hops with a resolved entry already, and those written now:
        // nodes behind one gateway share its entry.
        let mut skip: std::collections::HashSet<String> = existing
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(String::from)
            .collect();
        let mut script = String::new();
        let mut count = 0;
        let mut routed = Vec::new();
        for (addr, hop) in new.iter().zip(&hops) {
            let Some((nh, dev)) = hop else { continue };
            routed.push(*addr);
            if !skip.insert(nh.to_string()) {
                continue;
            }
            script.push_str(&format!("neigh replace {nh} dev {dev} managed\n"));
            count += 1;
        }
        if !script.is_empty() {
            ip_batch(&[], &script, Some("neigh replace"))?;
        }
        self.done.extend(routed);
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::{ip_batch, json_field};

    /// A script and answers far larger than a pipe (route get for 20,000
    /// nodes: ~0.5 MB in, ~2 MB out) complete: the agent once wrote the
    /// whole script before reading and hung for ever at 7,500 nodes
    /// (xlb-perf cluster at GKE's limits). Read-only: routes to loopback.
    #[test]
    fn a_batch_larger_than_the_pipes_completes() {
        const LINES: usize = 20_000;
        let script = "route get 127.0.0.1\n".repeat(LINES);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(ip_batch(&["-j"], &script, Some("route get")));
        });
        let out = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("ip -batch still running after 20 s: the pipes deadlocked")
            .expect("ip -batch");
        let answers = out.lines().filter(|l| l.contains("\"dst\":\"127.0.0.1\"")).count();
        assert_eq!(answers, LINES);
    }

    #[test]
    fn reads_route_get_json() {
        let line = r#"[{"dst":"10.0.0.11","dev":"eth0","prefsrc":"10.0.0.2","flags":[],"uid":0,"cache":[]}]"#;
        assert_eq!(json_field(line, "dev").as_deref(), Some("eth0"));
        assert_eq!(json_field(line, "gateway"), None);
        let via = r#"[{"dst":"10.1.0.1","gateway":"10.0.0.1","dev":"eth0"}]"#;
        assert_eq!(json_field(via, "gateway").as_deref(), Some("10.0.0.1"));
    }
}
