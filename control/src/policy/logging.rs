//! Policy action logging as GKE Dataplane V2 does it: the datapath's
//! verdicts of new connections (XLB_EV_POLICY events) become one JSON line
//! each in /var/log/network/policy_action.log.
//! - [`LoggingConfig`]: the cluster-scoped `NetworkLogging` object named
//!   `default` (networking.gke.io/v1alpha1): `spec.cluster.allow.{log,
//!   delegate}`, `spec.cluster.deny.{log,delegate}`. With delegate, allows
//!   are logged only for policies annotated
//!   `policy.network.gke.io/enable-logging: "true"`, denies only in
//!   namespaces annotated `policy.network.gke.io/enable-deny-logging:
//!   "true"` (the destination's for ingress, the source's for egress).
//! - [`Record`]: the line's schema.
//! - [`PolicyLogger`]: denies aggregated (key: the connection with the
//!   source port zeroed; the first record held and counted for
//!   [`DENY_AGGREGATION_MS`], then written; at most [`DENY_CACHE_MAX`] held,
//!   overflow counted), a token bucket of [`RATE_PER_S`] records per second
//!   (dropped records counted), written through [`RotatingFile`] (10 MB,
//!   5 files kept). Time is passed in (milliseconds), so tests drive it.
//! - [`PolicyEvent`] and [`resolve`]: a datapath verdict named (pods,
//!   namespaces, workloads, the allowing policy) with the agent's
//!   [`PolicyNames`]; the agent's event reader feeds them to the logger.
use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::agent::PolicyNames;

pub const DEFAULT_LOG_PATH: &str = "/var/log/network/policy_action.log";
pub const DENY_AGGREGATION_MS: u64 = 5_000;
pub const DENY_CACHE_MAX: usize = 3_000;
pub const RATE_PER_S: u32 = 500;
pub const ROTATE_BYTES: u64 = 10 * 1024 * 1024;
pub const ROTATE_KEEP: usize = 5;
pub const ALLOW_ANNOTATION: &str = "policy.network.gke.io/enable-logging";
pub const DENY_ANNOTATION: &str = "policy.network.gke.io/enable-deny-logging";

/// `spec.cluster.{allow,deny}` of NetworkLogging `default`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Action {
    pub log: bool,
    pub delegate: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoggingConfig {
    pub allow: Action,
    pub deny: Action,
}

impl LoggingConfig {
    /// From the NetworkLogging object (as JSON): only `default` counts;
    /// an invalid one is an error naming the field (the caller logs it and
    /// keeps logging off).
    pub fn from_object(obj: &serde_json::Value) -> Result<Option<LoggingConfig>, String> {
        let name = obj.pointer("/metadata/name").and_then(|v| v.as_str()).unwrap_or("");
        if name != "default" {
            return Ok(None);
        }
        for (at, field) in [
            ("/spec", "spec"),
            ("/spec/cluster", "spec.cluster"),
            ("/spec/cluster/allow", "spec.cluster.allow"),
            ("/spec/cluster/deny", "spec.cluster.deny"),
        ] {
            match obj.pointer(at) {
                None | Some(serde_json::Value::Null | serde_json::Value::Object(_)) => {}
                Some(v) => {
                    return Err(format!("NetworkLogging default: {field}: {v} is not an object"))
                }
            }
        }
        let action = |which: &str| -> Result<Action, String> {
            let at = format!("/spec/cluster/{which}");
            let flag = |f: &str| -> Result<bool, String> {
                match obj.pointer(&format!("{at}/{f}")) {
                    None | Some(serde_json::Value::Null) => Ok(false),
                    Some(serde_json::Value::Bool(b)) => Ok(*b),
                    Some(v) => Err(format!(
                        "NetworkLogging default: spec.cluster.{which}.{f}: {v} is not a boolean"
                    )),
                }
            };
            Ok(Action { log: flag("log")?, delegate: flag("delegate")? })
        };
        Ok(Some(LoggingConfig { allow: action("allow")?, deny: action("deny")? }))
    }
}

/// Who an address is in a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Peer {
    Pod {
        pod_name: String,
        pod_namespace: String,
        namespace: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        workload_kind: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        workload_name: Option<String>,
    },
    Instance {
        instance: IpAddr,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Connection {
    pub src_ip: IpAddr,
    pub dest_ip: IpAddr,
    pub src_port: u16,
    pub dest_port: u16,
    /// "tcp", "udp", "sctp", "icmp" or the number.
    pub protocol: String,
    /// "ingress" or "egress".
    pub direction: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyRef {
    pub name: String,
    pub namespace: String,
    pub kind: String,
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Record {
    pub connection: Connection,
    /// "allow" or "deny".
    pub disposition: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyRef>,
    pub src: Peer,
    pub dest: Peer,
    pub count: u64,
    pub node_name: String,
    /// RFC 3339, UTC.
    pub timestamp: String,
}

/// A verdict the datapath reported, resolved to names.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub record: Record,
    /// The allowing policy's annotation says log it (delegate).
    pub policy_logging: bool,
    /// The namespace of the checked pod (destination for ingress, source
    /// for egress) says log denies (delegate).
    pub namespace_deny_logging: bool,
}

/// A NetworkPolicy verdict of a new connection as the datapath reported
/// it (an XLB_EV_POLICY event), before names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyEvent {
    /// Unix time, nanoseconds.
    pub wall_ns: u64,
    /// Checked on the destination pod's ingress (else the source's egress).
    pub ingress: bool,
    pub allowed: bool,
    /// The policy number that allowed it (0: none, e.g. the node itself).
    pub policy: u32,
    /// The peer's identity as the datapath saw it.
    pub peer_identity: u32,
    pub proto: u8,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
}

/// "tcp", "udp", "sctp", "icmp", "icmpv6" or the number.
pub fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// RFC 3339 UTC with microseconds, from Unix nanoseconds.
pub fn rfc3339(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let micros = (unix_ns % 1_000_000_000) / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Who `ip` is: a pod (with its workload), else the address.
pub fn peer(names: &PolicyNames, ip: IpAddr) -> Peer {
    match names.pod(ip) {
        Some(p) => Peer::Pod {
            pod_name: p.name.clone(),
            pod_namespace: p.namespace.clone(),
            namespace: p.namespace.clone(),
            workload_kind: p.workload.as_ref().map(|w| w.0.clone()),
            workload_name: p.workload.as_ref().map(|w| w.1.clone()),
        },
        None => Peer::Instance { instance: ip },
    }
}

/// Names a verdict: pods, workloads, the allowing policy, and the delegate
/// rules' inputs (the policy's annotation; the namespace of the checked
/// pod: the destination's for ingress, the source's for egress).
pub fn resolve(ev: &PolicyEvent, names: &PolicyNames, node: &str) -> Verdict {
    let policies: Vec<PolicyRef> = if ev.allowed {
        names
            .compiled
            .policies
            .get(&ev.policy)
            .map(|full| {
                let (namespace, name) = full.split_once('/').unwrap_or(("", full));
                PolicyRef {
                    name: name.to_string(),
                    namespace: namespace.to_string(),
                    kind: "NetworkPolicy".into(),
                }
            })
            .into_iter()
            .collect()
    } else {
        Vec::new()
    };
    let checked = if ev.ingress { ev.dst } else { ev.src };
    let namespace_deny_logging =
        names.pod(checked).is_some_and(|p| names.deny_logged_namespaces.contains(&p.namespace));
    Verdict {
        record: Record {
            connection: Connection {
                src_ip: ev.src,
                dest_ip: ev.dst,
                src_port: ev.src_port,
                dest_port: ev.dst_port,
                protocol: proto_name(ev.proto),
                direction: if ev.ingress { "ingress" } else { "egress" }.into(),
            },
            disposition: if ev.allowed { "allow" } else { "deny" }.into(),
            policies,
            src: peer(names, ev.src),
            dest: peer(names, ev.dst),
            count: 1,
            node_name: node.to_string(),
            timestamp: rfc3339(ev.wall_ns),
        },
        policy_logging: ev.allowed && names.logged_policies.contains(&ev.policy),
        namespace_deny_logging,
    }
}

/// What the logger did (Prometheus counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LogStats {
    pub logged: u64,
    pub aggregated: u64,
    pub rate_limited: u64,
    /// Connections in the rate-limited records (a deny record counts many).
    pub rate_limited_connections: u64,
    pub cache_overflow: u64,
    pub failed: u64,
}

/// A file rotated at `max` bytes, `keep` old files (`.1` newest).
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max: u64,
    keep: usize,
    file: Option<File>,
    size: u64,
}

impl RotatingFile {
    pub fn new(path: &Path, max: u64, keep: usize) -> RotatingFile {
        RotatingFile { path: path.to_path_buf(), max, keep, file: None, size: 0 }
    }

    pub fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = OpenOptions::new().create(true).append(true).open(&self.path)?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        if self.size > 0 && self.size + line.len() as u64 + 1 > self.max {
            self.rotate()?;
            return self.write_line(line);
        }
        let f = self.file.as_mut().expect("opened above");
        // One write per line: O_APPEND keeps lines whole even if two
        // writers share the file.
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        f.write_all(&buf)?;
        self.size += line.len() as u64 + 1;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let name = |i: usize| PathBuf::from(format!("{}.{i}", self.path.display()));
        let _ = std::fs::remove_file(name(self.keep));
        for i in (1..self.keep).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        std::fs::rename(&self.path, name(1))?;
        self.size = 0;
        Ok(())
    }
}

/// The aggregation, rate limit and output of policy records.
#[derive(Debug)]
pub struct PolicyLogger {
    pub config: LoggingConfig,
    out: RotatingFile,
    /// Denies held: key -> (first record, due at ms).
    held: HashMap<Connection, (Record, u64)>,
    tokens: f64,
    last_ms: u64,
    pub stats: LogStats,
}

impl PolicyLogger {
    pub fn new(config: LoggingConfig, out: RotatingFile) -> PolicyLogger {
        PolicyLogger {
            config,
            out,
            held: HashMap::new(),
            tokens: f64::from(RATE_PER_S),
            last_ms: 0,
            stats: LogStats::default(),
        }
    }

    /// Ready to log (the gauge): configured to log something.
    pub fn ready(&self) -> bool {
        self.config.allow.log || self.config.deny.log
    }

    fn emit(&mut self, rec: &Record, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = now_ms;
        self.tokens = (self.tokens + elapsed * f64::from(RATE_PER_S)).min(f64::from(RATE_PER_S));
        if self.tokens < 1.0 {
            self.stats.rate_limited += 1;
            self.stats.rate_limited_connections += rec.count;
            return;
        }
        self.tokens -= 1.0;
        match serde_json::to_string(rec)
            .map_err(std::io::Error::other)
            .and_then(|l| self.out.write_line(&l))
        {
            Ok(()) => self.stats.logged += 1,
            Err(_) => self.stats.failed += 1,
        }
    }

    /// Takes one verdict at `now_ms`.
    pub fn verdict(&mut self, v: Verdict, now_ms: u64) {
        self.flush(now_ms);
        let allow = v.record.disposition == "allow";
        let action = if allow { self.config.allow } else { self.config.deny };
        if !action.log {
            return;
        }
        if action.delegate && !(if allow { v.policy_logging } else { v.namespace_deny_logging }) {
            return;
        }
        if allow {
            // Allowed connections no policy matched are not logged.
            if v.record.policies.is_empty() {
                return;
            }
            self.emit(&v.record, now_ms);
            return;
        }
        let mut key = v.record.connection.clone();
        key.src_port = 0;
        if let Some((rec, _)) = self.held.get_mut(&key) {
            rec.count += 1;
            self.stats.aggregated += 1;
            return;
        }
        if self.held.len() >= DENY_CACHE_MAX {
            self.stats.cache_overflow += 1;
            return;
        }
        self.held.insert(key, (v.record, now_ms + DENY_AGGREGATION_MS));
    }

    /// Writes the held denies that are due at `now_ms` (in due order).
    pub fn flush(&mut self, now_ms: u64) {
        let mut due: Vec<(u64, Connection)> = self
            .held
            .iter()
            .filter(|(_, (_, at))| *at <= now_ms)
            .map(|(k, (_, at))| (*at, k.clone()))
            .collect();
        due.sort_by_key(|(at, _)| *at);
        for (_, k) in due {
            if let Some((rec, _)) = self.held.remove(&k) {
                self.emit(&rec, now_ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(disposition: &str, sport: u16) -> Record {
        Record {
            connection: Connection {
                src_ip: "10.84.0.11".parse().unwrap(),
                dest_ip: "10.84.1.13".parse().unwrap(),
                src_port: sport,
                dest_port: 8080,
                protocol: "tcp".into(),
                direction: "ingress".into(),
            },
            disposition: disposition.into(),
            policies: if disposition == "allow" {
                vec![PolicyRef {
                    name: "allow-web".into(),
                    namespace: "x".into(),
                    kind: "NetworkPolicy".into(),
                }]
            } else {
                vec![]
            },
            src: Peer::Pod {
                pod_name: "client".into(),
                pod_namespace: "y".into(),
                namespace: "y".into(),
                workload_kind: Some("Deployment".into()),
                workload_name: Some("client".into()),
            },
            dest: Peer::Instance { instance: "10.84.1.13".parse().unwrap() },
            count: 1,
            node_name: "node1".into(),
            timestamp: "2026-12-06T06:00:00Z".into(),
        }
    }

    fn logger(config: LoggingConfig, dir: &Path) -> PolicyLogger {
        PolicyLogger::new(
            config,
            RotatingFile::new(&dir.join("policy_action.log"), ROTATE_BYTES, ROTATE_KEEP),
        )
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xlb-policylog-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn lines(dir: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("policy_action.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn verdict(d: &str, sport: u16) -> Verdict {
        Verdict { record: record(d, sport), policy_logging: false, namespace_deny_logging: false }
    }

    const ALL: LoggingConfig = LoggingConfig {
        allow: Action { log: true, delegate: false },
        deny: Action { log: true, delegate: false },
    };

    #[test]
    fn record_schema_golden() {
        let line = serde_json::to_string(&record("allow", 41000)).unwrap();
        assert_eq!(
            line,
            r#"{"connection":{"src_ip":"10.84.0.11","dest_ip":"10.84.1.13","src_port":41000,"dest_port":8080,"protocol":"tcp","direction":"ingress"},"disposition":"allow","policies":[{"name":"allow-web","namespace":"x","kind":"NetworkPolicy"}],"src":{"pod_name":"client","pod_namespace":"y","namespace":"y","workload_kind":"Deployment","workload_name":"client"},"dest":{"instance":"10.84.1.13"},"count":1,"node_name":"node1","timestamp":"2026-12-06T06:00:00Z"}"#
        );
    }

    #[test]
    fn denies_aggregate_for_five_seconds_by_connection_without_source_port() {
        let dir = tmp("agg");
        let mut l = logger(ALL, &dir);
        for (i, t) in [0u64, 1000, 2000, 4999].iter().enumerate() {
            l.verdict(verdict("deny", 40000 + i as u16), *t);
        }
        assert!(lines(&dir).is_empty(), "held for 5 s");
        l.flush(5000);
        let got = lines(&dir);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["count"], 4);
        assert_eq!(got[0]["connection"]["src_port"], 40000, "the first record's");
        assert_eq!(l.stats.aggregated, 3);
        // Allows are written at once, one per connection.
        l.verdict(verdict("allow", 1), 6000);
        assert_eq!(lines(&dir).len(), 2);
        // An allow no policy matched is not logged.
        let mut v = verdict("allow", 2);
        v.record.policies.clear();
        l.verdict(v, 6000);
        assert_eq!(lines(&dir).len(), 2);
    }

    #[test]
    fn the_deny_cache_is_bounded_and_the_rate_limited() {
        let dir = tmp("bound");
        let mut l = logger(ALL, &dir);
        for i in 0..(DENY_CACHE_MAX as u32 + 10) {
            let mut v = verdict("deny", 1);
            v.record.connection.dest_port = (i % 65535) as u16 + 1;
            v.record.connection.dest_ip = IpAddr::from([10, 0, (i >> 8) as u8, i as u8]);
            l.verdict(v, 0);
        }
        assert_eq!(l.stats.cache_overflow, 10);
        l.flush(5000);
        // 3,000 due at once: the bucket holds 500.
        assert_eq!(l.stats.logged, RATE_PER_S as u64);
        assert_eq!(l.stats.rate_limited, DENY_CACHE_MAX as u64 - RATE_PER_S as u64);
        // A second later the bucket is full again.
        l.verdict(verdict("allow", 5), 6000);
        assert_eq!(l.stats.logged, RATE_PER_S as u64 + 1);
    }

    #[test]
    fn delegate_rules_and_the_config_object() {
        let cfg = LoggingConfig::from_object(&serde_json::json!({
            "apiVersion": "networking.gke.io/v1alpha1", "kind": "NetworkLogging",
            "metadata": {"name": "default"},
            "spec": {"cluster": {"allow": {"log": true, "delegate": true}, "deny": {"log": true, "delegate": true}}}
        }))
        .unwrap()
        .unwrap();
        assert_eq!(cfg.allow, Action { log: true, delegate: true });
        let other = serde_json::json!({"metadata": {"name": "other"}});
        assert_eq!(LoggingConfig::from_object(&other).unwrap(), None);
        let bad = serde_json::json!({"metadata": {"name": "default"}, "spec": {"cluster": {"deny": {"log": "yes"}}}});
        assert_eq!(
            LoggingConfig::from_object(&bad).unwrap_err(),
            "NetworkLogging default: spec.cluster.deny.log: \"yes\" is not a boolean"
        );
        let dir = tmp("delegate");
        let mut l = logger(cfg, &dir);
        l.verdict(verdict("allow", 1), 0);
        l.verdict(verdict("deny", 1), 0);
        l.flush(10_000);
        assert!(lines(&dir).is_empty(), "delegated: neither annotated");
        let mut a = verdict("allow", 2);
        a.policy_logging = true;
        let mut d = verdict("deny", 2);
        d.namespace_deny_logging = true;
        l.verdict(a, 20_000);
        l.verdict(d, 20_000);
        l.flush(30_000);
        let got: Vec<String> =
            lines(&dir).iter().map(|v| v["disposition"].as_str().unwrap().to_string()).collect();
        assert_eq!(got, ["allow", "deny"]);
    }

    #[test]
    fn the_file_rotates_keeping_five() {
        let dir = tmp("rotate");
        let path = dir.join("p.log");
        let mut f = RotatingFile::new(&path, 100, 5);
        for i in 0..40 {
            f.write_line(&format!("{i:040}")).unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["p.log", "p.log.1", "p.log.2", "p.log.3", "p.log.4", "p.log.5"]);
        assert!(std::fs::metadata(&path).unwrap().len() <= 100);
        let _ = std::fs::remove_dir_all(&dir);
    }

    // Verdict events injected as the agent's reader hands them over,
    // resolved with names compiled from a manifest.

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Namespace
metadata:
  name: y
  labels: {ns: y}
  annotations: {policy.network.gke.io/enable-deny-logging: "true"}
---
apiVersion: v1
kind: Pod
metadata:
  name: a
  namespace: x
  labels: {pod: a, pod-template-hash: 7c9}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: a-7c9, uid: u1, controller: true}]
spec: {nodeName: node1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: y, labels: {pod: b}}
spec: {nodeName: node1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.2.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: b-from-a
  namespace: y
  annotations: {policy.network.gke.io/enable-logging: "true"}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}], ports: [{port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-egress, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{ports: [{port: 53, protocol: UDP}]}]
"#;

    fn names(extra: &str) -> PolicyNames {
        let cluster = crate::source::file::load_str(&format!("{CLUSTER}{extra}"), "test").unwrap();
        let mut changes = crate::cluster::Changes::full(cluster);
        let mut objs = crate::policy::agent::PolicyObjects::default();
        objs.take(&mut changes);
        let compiled = objs.compile();
        assert!(compiled.errors.is_empty(), "{:?}", compiled.errors);
        objs.names(&compiled)
    }

    fn event(src: &str, sport: u16, dst: &str, dport: u16, ingress: bool) -> PolicyEvent {
        PolicyEvent {
            // 2026-12-06T06:00:00.000250Z
            wall_ns: 1_796_536_800_000_250_000,
            ingress,
            allowed: false,
            policy: 0,
            peer_identity: 0,
            proto: 6,
            src: src.parse().unwrap(),
            src_port: sport,
            dst: dst.parse().unwrap(),
            dst_port: dport,
        }
    }

    fn line(v: &Verdict) -> String {
        serde_json::to_string(&v.record).unwrap()
    }

    #[test]
    fn verdict_events_resolve_to_golden_records() {
        let n = names("");
        let policy = *n.compiled.policies.iter().find(|(_, p)| *p == "y/b-from-a").unwrap().0;
        let allow =
            PolicyEvent { allowed: true, policy, ..event("10.0.1.1", 41000, "10.0.2.2", 80, true) };
        let v = resolve(&allow, &n, "node1");
        assert_eq!(
            line(&v),
            r#"{"connection":{"src_ip":"10.0.1.1","dest_ip":"10.0.2.2","src_port":41000,"dest_port":80,"protocol":"tcp","direction":"ingress"},"disposition":"allow","policies":[{"name":"b-from-a","namespace":"y","kind":"NetworkPolicy"}],"src":{"pod_name":"a","pod_namespace":"x","namespace":"x","workload_kind":"Deployment","workload_name":"a"},"dest":{"pod_name":"b","pod_namespace":"y","namespace":"y"},"count":1,"node_name":"node1","timestamp":"2026-12-06T06:00:00.000250Z"}"#
        );
        assert!(v.policy_logging, "b-from-a carries enable-logging");
        let deny = event("192.0.2.7", 5000, "10.0.2.2", 81, true);
        let v = resolve(&deny, &n, "node1");
        assert_eq!(
            line(&v),
            r#"{"connection":{"src_ip":"192.0.2.7","dest_ip":"10.0.2.2","src_port":5000,"dest_port":81,"protocol":"tcp","direction":"ingress"},"disposition":"deny","src":{"instance":"192.0.2.7"},"dest":{"pod_name":"b","pod_namespace":"y","namespace":"y"},"count":1,"node_name":"node1","timestamp":"2026-12-06T06:00:00.000250Z"}"#
        );
        assert!(v.namespace_deny_logging, "ingress: the destination's namespace y");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn delegate_rules_with_annotated_policies_and_namespaces() {
        let n = names(
            r#"
---
apiVersion: networking.gke.io/v1alpha1
kind: NetworkLogging
metadata: {name: default}
spec: {cluster: {allow: {log: true, delegate: true}, deny: {log: true, delegate: true}}}
"#,
        );
        assert_eq!(
            n.logging,
            LoggingConfig {
                allow: Action { log: true, delegate: true },
                deny: Action { log: true, delegate: true }
            }
        );
        let dir = tmp("delegate-names");
        let mut l = logger(n.logging, &dir);
        let b_from_a = *n.compiled.policies.iter().find(|(_, p)| *p == "y/b-from-a").unwrap().0;
        let a_egress = *n.compiled.policies.iter().find(|(_, p)| *p == "x/a-egress").unwrap().0;
        let evs = [
            // allowed by the annotated policy: logged
            PolicyEvent {
                allowed: true,
                policy: b_from_a,
                ..event("10.0.1.1", 1, "10.0.2.2", 80, true)
            },
            // allowed by a policy without the annotation: not logged
            PolicyEvent {
                allowed: true,
                policy: a_egress,
                proto: 17,
                ..event("10.0.1.1", 2, "10.0.2.2", 53, false)
            },
            // denied into y (annotated): logged
            event("10.0.1.1", 3, "10.0.2.2", 81, true),
            // denied out of x (the source's namespace, not annotated): not logged
            event("10.0.1.1", 4, "10.0.2.2", 82, false),
            // denied out of y (annotated) to x: logged
            event("10.0.2.2", 5, "10.0.1.1", 83, false),
        ];
        for (i, e) in evs.iter().enumerate() {
            l.verdict(resolve(e, &n, "node1"), i as u64);
        }
        l.flush(DENY_AGGREGATION_MS + 10);
        let got: Vec<(String, String, u64)> = lines(&dir)
            .iter()
            .map(|v| {
                (
                    v["disposition"].as_str().unwrap().to_string(),
                    v["connection"]["direction"].as_str().unwrap().to_string(),
                    v["connection"]["dest_port"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("allow".to_string(), "ingress".to_string(), 80),
                ("deny".into(), "ingress".into(), 81),
                ("deny".into(), "egress".into(), 83)
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn network_logging_objects_invalid_ones_named_and_ignored() {
        let n = names(
            r#"
---
apiVersion: networking.gke.io/v1alpha1
kind: NetworkLogging
metadata: {name: default}
spec: {cluster: {allow: {log: 1}}}
---
apiVersion: networking.gke.io/v1alpha1
kind: NetworkLogging
metadata: {name: other}
spec: {cluster: {deny: {log: true}}}
"#,
        );
        assert_eq!(n.logging, LoggingConfig::default(), "the invalid default is ignored");
        assert_eq!(
            n.logging_errors,
            ["NetworkLogging default: spec.cluster.allow.log: 1 is not a boolean"]
        );
        let n = names(
            "\n---\napiVersion: networking.gke.io/v1alpha1\nkind: NetworkLogging\n\
             metadata: {name: default}\nspec: {cluster: [1]}\n",
        );
        assert_eq!(
            n.logging_errors,
            ["NetworkLogging default: spec.cluster: [1] is not an object"]
        );
    }

    #[test]
    fn injected_denies_aggregate_and_the_bucket_limits_records_and_counts_connections() {
        let n = names("");
        let dir = tmp("inject");
        let mut l = logger(ALL, &dir);
        // One client retrying from 50 source ports within 5 s: one record, count 50.
        for p in 0..50u16 {
            l.verdict(
                resolve(&event("192.0.2.9", 30000 + p, "10.0.2.2", 81, true), &n, "n"),
                p as u64 * 90,
            );
        }
        l.flush(4_999);
        assert!(lines(&dir).is_empty());
        l.flush(5_000);
        let got = lines(&dir);
        assert_eq!((got.len(), got[0]["count"].as_u64()), (1, Some(50)));
        assert_eq!(l.stats.aggregated, 49);
        // 600 distinct denies due at once: 500 written, 100 rate-limited.
        for i in 0..600u32 {
            let dst = format!("10.0.2.{}", 2 + (i % 200));
            l.verdict(
                resolve(&event("192.0.2.9", 1, &dst, 1000 + (i / 200) as u16, true), &n, "n"),
                10_000,
            );
        }
        l.flush(15_000);
        assert_eq!(l.stats.logged, 1 + 500);
        assert_eq!((l.stats.rate_limited, l.stats.rate_limited_connections), (100, 100));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
