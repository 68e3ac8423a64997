//! The state behind the double: objects keyed by (resource, namespace, name), one global
//! resourceVersion, a bounded history of changes for watch replay, the open watches and
//! the snapshots that back paginated lists. Everything here runs under one lock, so a
//! change is recorded, appended to history and queued on every matching watch atomically.

use crate::resource::{self, ResourceType};
use crate::selector::Selector;
use crate::{Error, ObjectId};
use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

pub(crate) type Obj = Arc<Value>;
type Key = (String, String);

/// Snapshots kept for `continue` tokens; older ones expire (410, like a compacted etcd revision).
const MAX_SNAPSHOTS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    fn wire(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One recorded change. `old` is the object before the change (for selector transitions),
/// `new` the object as sent (for a delete: the last state with the deletion's resourceVersion).
struct Change {
    rv: u64,
    resource: &'static ResourceType,
    event: EventType,
    old: Option<Obj>,
    new: Obj,
}

/// What a watch stream body receives.
pub(crate) enum WatchMsg {
    /// One newline-terminated JSON watch event.
    Line(Bytes),
    /// Cut the connection without ending the chunked stream (a network failure).
    Abort,
}

/// Which objects a watch or list selects.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    pub resource: &'static ResourceType,
    pub namespace: Option<String>,
    pub labels: Selector,
    pub fields: Selector,
}

impl Filter {
    fn selects(&self, obj: &Value) -> bool {
        let ns_ok = match &self.namespace {
            Some(ns) => {
                obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns.as_str())
            }
            None => true,
        };
        ns_ok && self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// The event a watch with this filter sees for `change`, following the API server:
    /// an object moving out of the selection is DELETED, moving in is ADDED.
    fn event_for(&self, change: &Change) -> Option<EventType> {
        if !std::ptr::eq(self.resource, change.resource) {
            return None;
        }
        let now = self.selects(&change.new);
        match change.event {
            EventType::Added | EventType::Deleted => now.then_some(change.event),
            EventType::Modified => {
                match (change.old.as_deref().is_some_and(|o| self.selects(o)), now) {
                    (true, true) => Some(EventType::Modified),
                    (false, true) => Some(EventType::Added),
                    (true, false) => Some(EventType::Deleted),
                    (false, false) => None,
                }
            }
        }
    }
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatchFrom {
    /// `resourceVersion` unset or "0": synthetic ADDED events for the current state first.
    Current { initial_events_end: bool },
    /// Replay every change after this resourceVersion, or 410 if it is compacted away.
    After(u64),
}

struct Watcher {
    id: u64,
    filter: Filter,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<WatchMsg>,
}

struct Snapshot {
    rv: u64,
    items: Arc<Vec<Obj>>,
    unfiltered: bool,
}

/// One page of a list.
pub(crate) struct ListPage {
    pub rv: u64,
    pub items: Vec<Obj>,
    pub continue_token: Option<String>,
    pub remaining: Option<u64>,
}

/// Why a list request was refused.
pub(crate) enum ListError {
    /// The `continue` token is unknown or its snapshot expired (HTTP 410).
    Expired,
}

/// Counters read by the handle.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct StoreStats {
    pub watch_events: u64,
    pub bookmarks: u64,
    pub gone: u64,
}

pub(crate) struct Store {
    rv: u64,
    objects: HashMap<(&'static str, &'static str), BTreeMap<Key, Obj>>,
    history: VecDeque<Change>,
    history_limit: usize,
    /// Watches from a resourceVersion below this get 410 Gone: changes after it are all in `history`.
    compacted: u64,
    watchers: Vec<Watcher>,
    next_id: u64,
    snapshots: HashMap<u64, Snapshot>,
    snapshot_order: VecDeque<u64>,
    uid_seed: u64,
    pub stats: StoreStats,
}

fn table_key(r: &ResourceType) -> (&'static str, &'static str) {
    (r.group, r.plural)
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let uid_seed =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Store {
            rv: 0,
            objects: HashMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: 0,
            watchers: Vec::new(),
            next_id: 1,
            snapshots: HashMap::new(),
            snapshot_order: VecDeque::new(),
            uid_seed,
            stats: StoreStats::default(),
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn watch_count(&self) -> usize {
        self.watchers.len()
    }

    fn table(&mut self, r: &ResourceType) -> &mut BTreeMap<Key, Obj> {
        self.objects.entry(table_key(r)).or_default()
    }

    /// Validates an incoming object and fills in what the server defaults: canonical
    /// apiVersion/kind, and the namespace (`default` when unset; removed for cluster scope).
    fn identify(
        obj: Value,
    ) -> Result<(&'static ResourceType, ObjectId, Map<String, Value>), Error> {
        let Value::Object(mut obj) = obj else {
            return Err(Error::NotAnObject);
        };
        let text = |obj: &Map<String, Value>, f: &str| {
            obj.get(f).and_then(Value::as_str).unwrap_or("").to_string()
        };
        let (api_version, kind) = (text(&obj, "apiVersion"), text(&obj, "kind"));
        let resource = resource::by_kind(&api_version, &kind)
            .ok_or(Error::UnknownKind { api_version, kind })?;
        let missing = |field| Error::MissingField { kind: resource.kind, field };
        let meta = obj
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or(missing("metadata"))?;
        let name = meta.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
        let name = name.ok_or(missing("metadata.name"))?.to_string();
        let namespace = if resource.namespaced {
            let ns = meta.get("namespace").and_then(Value::as_str).filter(|n| !n.is_empty());
            let ns = ns.unwrap_or("default").to_string();
            meta.insert("namespace".into(), Value::String(ns.clone()));
            Some(ns)
        } else {
            meta.remove("namespace");
            None
        };
        Ok((resource, ObjectId { kind: resource.kind, namespace, name }, obj))
    }

    fn key(id: &ObjectId) -> Key {
        (id.namespace.clone().unwrap_or_default(), id.name.clone())
    }

    pub fn get(
        &mut self,
        resource: &ResourceType,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Obj> {
        let key = (namespace.unwrap_or_default().to_string(), name.to_string());
        self.table(resource).get(&key).cloned()
    }

    pub fn create(&mut self, obj: Value) -> Result<Obj, Error> {
        let (resource, id, mut obj) = Self::identify(obj)?;
        let key = Self::key(&id);
        if self.table(resource).contains_key(&key) {
            return Err(Error::AlreadyExists { object: id });
        }
        self.rv += 1;
        let uid = self.uid();
        let meta =
            obj.get_mut("metadata").and_then(Value::as_object_mut).expect("identify made metadata");
        meta.insert("resourceVersion".into(), self.rv.to_string().into());
        meta.insert("uid".into(), uid.into());
        meta.insert("creationTimestamp".into(), rfc3339_now().into());
        meta.insert("generation".into(), 1.into());
        let new = Arc::new(Value::Object(obj));
        self.table(resource).insert(key, new.clone());
        self.record(Change {
            rv: self.rv,
            resource,
            event: EventType::Added,
            old: None,
            new: new.clone(),
        });
        Ok(new)
    }

    /// Replaces an existing object. A `metadata.resourceVersion` in `obj` must match the
    /// stored one (optimistic concurrency); an update that changes nothing is a no-op with
    /// no new resourceVersion and no event, as on the real server.
    pub fn update(&mut self, obj: Value) -> Result<Obj, Error> {
        let (resource, id, mut obj) = Self::identify(obj)?;
        let key = Self::key(&id);
        let Some(old) = self.table(resource).get(&key).cloned() else {
            return Err(Error::NotFound { object: id });
        };
        let old_meta = &old["metadata"];
        let current = old_meta["resourceVersion"].as_str().unwrap_or_default().to_string();
        let meta =
            obj.get_mut("metadata").and_then(Value::as_object_mut).expect("identify made metadata");
        match meta.get("resourceVersion").and_then(Value::as_str) {
            Some(given) if !given.is_empty() && given != current => {
                return Err(Error::Conflict { object: id, given: given.to_string(), current });
            }
            _ => {}
        }
        for f in ["uid", "creationTimestamp", "generation"] {
            meta.insert(f.into(), old_meta[f].clone());
        }
        meta.insert("resourceVersion".into(), current.into());
        let content_changed = {
            let strip = |o: &Map<String, Value>| {
                o.iter()
                    .filter(|(k, _)| *k != "metadata" && *k != "status")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Map<_, _>>()
            };
            old.as_object().map(strip) != Some(strip(&obj))
        };
        if Some(&obj) == old.as_object() {
            return Ok(old);
        }
        self.rv += 1;
        let meta =
            obj.get_mut("metadata").and_then(Value::as_object_mut).expect("identify made metadata");
        meta.insert("resourceVersion".into(), self.rv.to_string().into());
        if content_changed {
            let generation = meta.get("generation").and_then(Value::as_u64).unwrap_or(0) + 1;
            meta.insert("generation".into(), generation.into());
        }
        let new = Arc::new(Value::Object(obj));
        self.table(resource).insert(key, new.clone());
        self.record(Change {
            rv: self.rv,
            resource,
            event: EventType::Modified,
            old: Some(old),
            new: new.clone(),
        });
        Ok(new)
    }

    /// Create, or replace when it exists (what `kubectl apply` amounts to for whole objects).
    pub fn apply(&mut self, obj: Value) -> Result<Obj, Error> {
        let (resource, id, mut fields) = Self::identify(obj)?;
        if let Some(meta) = fields.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        if self.table(resource).contains_key(&Self::key(&id)) {
            self.update(Value::Object(fields))
        } else {
            self.create(Value::Object(fields))
        }
    }

    pub fn delete(
        &mut self,
        resource: &'static ResourceType,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Obj, Error> {
        let namespace =
            if resource.namespaced { Some(namespace.unwrap_or("default")) } else { None };
        let key = (namespace.unwrap_or_default().to_string(), name.to_string());
        let Some(old) = self.table(resource).remove(&key) else {
            let object = ObjectId {
                kind: resource.kind,
                namespace: namespace.map(str::to_string),
                name: name.to_string(),
            };
            return Err(Error::NotFound { object });
        };
        self.rv += 1;
        let mut gone = (*old).clone();
        gone["metadata"]["resourceVersion"] = self.rv.to_string().into();
        let new = Arc::new(gone);
        self.record(Change {
            rv: self.rv,
            resource,
            event: EventType::Deleted,
            old: Some(old),
            new: new.clone(),
        });
        Ok(new)
    }

    fn record(&mut self, change: Change) {
        let mut lines: [Option<Bytes>; 3] = [None, None, None];
        let mut sent = 0;
        self.watchers.retain(|w| {
            let Some(event) = w.filter.event_for(&change) else {
                return true;
            };
            let line =
                lines[event as usize].get_or_insert_with(|| event_line(event.wire(), &change.new));
            sent += 1;
            w.tx.send(WatchMsg::Line(line.clone())).is_ok()
        });
        self.stats.watch_events += sent;
        self.history.push_back(change);
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.rv;
            }
        }
    }

    /// Opens a watch. Replay and registration happen under the store lock, so the stream
    /// sees every change exactly once and in order. A compacted `from` yields a stream
    /// holding one ERROR event (410 Expired) that then ends, as the real server answers.
    pub fn watch(
        &mut self,
        filter: Filter,
        from: WatchFrom,
        bookmarks: bool,
    ) -> (Option<u64>, mpsc::UnboundedReceiver<WatchMsg>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let send = |tx: &mpsc::UnboundedSender<WatchMsg>, line| {
            let _ = tx.send(WatchMsg::Line(line));
        };
        match from {
            WatchFrom::After(rv) if rv < self.compacted => {
                let message = format!("too old resource version: {rv} ({})", self.compacted + 1);
                send(&tx, event_line("ERROR", &status_object(410, "Expired", &message)));
                self.stats.gone += 1;
                return (None, rx);
            }
            WatchFrom::After(rv) => {
                for change in self.history.iter().filter(|c| c.rv > rv) {
                    if let Some(event) = filter.event_for(change) {
                        send(&tx, event_line(event.wire(), &change.new));
                        self.stats.watch_events += 1;
                    }
                }
            }
            WatchFrom::Current { initial_events_end } => {
                let key = table_key(filter.resource);
                for obj in self.objects.get(&key).into_iter().flat_map(|t| t.values()) {
                    if filter.selects(obj) {
                        send(&tx, event_line("ADDED", obj));
                        self.stats.watch_events += 1;
                    }
                }
                if initial_events_end {
                    send(&tx, bookmark_line(filter.resource, self.rv, true));
                    self.stats.bookmarks += 1;
                }
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.watchers.push(Watcher { id, filter, bookmarks, tx });
        (Some(id), rx)
    }

    pub fn remove_watch(&mut self, id: u64) {
        self.watchers.retain(|w| w.id != id);
    }

    /// Sends a BOOKMARK at the current resourceVersion to every watch that asked for them.
    /// Everything up to that version is already queued on the stream, so the bookmark is exact.
    pub fn bookmark_all(&mut self) {
        let rv = self.rv;
        let mut sent = 0;
        self.watchers.retain(|w| {
            if !w.bookmarks {
                return true;
            }
            sent += 1;
            w.tx.send(WatchMsg::Line(bookmark_line(w.filter.resource, rv, false))).is_ok()
        });
        self.stats.bookmarks += sent;
    }

    /// Cuts every watch connection; returns how many there were.
    pub fn abort_watches(&mut self) -> usize {
        let n = self.watchers.len();
        for w in self.watchers.drain(..) {
            let _ = w.tx.send(WatchMsg::Abort);
        }
        n
    }

    /// Drops the change history and pagination snapshots: a watch from any earlier
    /// resourceVersion, or a `continue` token, now gets 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
        self.snapshots.clear();
        self.snapshot_order.clear();
    }

    /// One page of a list. The first page fixes a snapshot; `continue` pages are cut from
    /// it, so a paginated list is consistent at the first page's resourceVersion.
    pub fn list(
        &mut self,
        filter: &Filter,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ListError> {
        let limit = limit.filter(|l| *l > 0);
        let (snap_id, offset) = match continue_token {
            Some(token) => {
                let (id, offset) = token.split_once('.').ok_or(ListError::Expired)?;
                let id: u64 = id.parse().map_err(|_| ListError::Expired)?;
                let offset: usize = offset.parse().map_err(|_| ListError::Expired)?;
                if !self.snapshots.contains_key(&id) {
                    return Err(ListError::Expired);
                }
                (id, offset)
            }
            None => {
                let key = table_key(filter.resource);
                let items: Vec<Obj> = self
                    .objects
                    .get(&key)
                    .into_iter()
                    .flat_map(|t| t.values())
                    .filter(|o| filter.selects(o))
                    .cloned()
                    .collect();
                match limit {
                    Some(l) if items.len() > l => {
                        let unfiltered = filter.labels.is_empty() && filter.fields.is_empty();
                        (
                            self.add_snapshot(Snapshot {
                                rv: self.rv,
                                items: Arc::new(items),
                                unfiltered,
                            }),
                            0,
                        )
                    }
                    _ => {
                        return Ok(ListPage {
                            rv: self.rv,
                            items,
                            continue_token: None,
                            remaining: None,
                        })
                    }
                }
            }
        };
        let snap = &self.snapshots[&snap_id];
        let (rv, all, unfiltered) = (snap.rv, snap.items.clone(), snap.unfiltered);
        let end = limit.map_or(all.len(), |l| (offset + l).min(all.len()));
        let items = all.get(offset..end).unwrap_or_default().to_vec();
        if end >= all.len() {
            self.snapshots.remove(&snap_id);
            return Ok(ListPage { rv, items, continue_token: None, remaining: None });
        }
        let remaining = unfiltered.then_some((all.len() - end) as u64);
        Ok(ListPage { rv, items, continue_token: Some(format!("{snap_id}.{end}")), remaining })
    }

    fn add_snapshot(&mut self, snap: Snapshot) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.snapshots.insert(id, snap);
        self.snapshot_order.push_back(id);
        while self.snapshot_order.len() > MAX_SNAPSHOTS {
            if let Some(old) = self.snapshot_order.pop_front() {
                self.snapshots.remove(&old);
            }
        }
        id
    }

    fn uid(&self) -> String {
        let a = self.uid_seed;
        let b = self.rv;
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (a >> 32) as u32,
            (a >> 16) as u16,
            a as u16 & 0xfff,
            (b >> 48) as u16 & 0xfff,
            b & 0xffff_ffff_ffff
        )
    }
}

/// A serialized watch event line: `{"type":…,"object":…}\n`.
fn event_line(kind: &str, object: &Value) -> Bytes {
    #[derive(Serialize)]
    struct Wire<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        object: &'a Value,
    }
    let mut v = serde_json::to_vec(&Wire { kind, object }).expect("a JSON value always serializes");
    v.push(b'\n');
    Bytes::from(v)
}

fn bookmark_line(resource: &ResourceType, rv: u64, initial_events_end: bool) -> Bytes {
    let mut meta = json!({ "resourceVersion": rv.to_string(), "creationTimestamp": null });
    if initial_events_end {
        meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    event_line(
        "BOOKMARK",
        &json!({ "kind": resource.kind, "apiVersion": resource.api_version(), "metadata": meta }),
    )
}

/// A `metav1.Status` failure object, as the API server returns in error bodies and ERROR events.
pub(crate) fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

/// The current UTC time as RFC 3339 with second precision, like `creationTimestamp`.
fn rfc3339_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, app: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": {"app": app}}, "spec": {"ports": [{"port": 80}]}})
    }

    fn all_services() -> Filter {
        Filter {
            resource: resource::by_kind("v1", "Service").unwrap(),
            namespace: None,
            labels: Selector::everything(),
            fields: Selector::everything(),
        }
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<WatchMsg>) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(WatchMsg::Line(l)) = rx.try_recv() {
            out.push(serde_json::from_slice(&l).unwrap());
        }
        out
    }

    #[test]
    fn create_update_delete_set_server_fields() {
        let mut s = Store::new(100);
        let a = s.create(svc("a", "web")).unwrap();
        assert_eq!(a["metadata"]["namespace"], "default");
        assert_eq!(a["metadata"]["resourceVersion"], "1");
        assert_eq!(a["metadata"]["generation"], 1);
        assert!(a["metadata"]["creationTimestamp"].as_str().unwrap().ends_with('Z'));
        assert!(matches!(s.create(svc("a", "web")), Err(Error::AlreadyExists { .. })));
        // No-op update: no new resourceVersion.
        let same = s.update(svc("a", "web")).unwrap();
        assert_eq!(same["metadata"]["resourceVersion"], "1");
        let mut changed = svc("a", "web");
        changed["spec"]["ports"][0]["port"] = 81.into();
        let b = s.update(changed.clone()).unwrap();
        assert_eq!(
            (b["metadata"]["resourceVersion"].as_str(), b["metadata"]["generation"].as_u64()),
            (Some("2"), Some(2))
        );
        assert_eq!(b["metadata"]["uid"], a["metadata"]["uid"]);
        changed["metadata"]["resourceVersion"] = "1".into();
        changed["spec"]["ports"][0]["port"] = 82.into();
        assert!(matches!(s.update(changed), Err(Error::Conflict { .. })));
        let d =
            s.delete(resource::by_kind("v1", "Service").unwrap(), Some("default"), "a").unwrap();
        assert_eq!(d["metadata"]["resourceVersion"], "3");
        assert!(matches!(s.update(svc("a", "web")), Err(Error::NotFound { .. })));
        assert!(matches!(
            s.create(json!({"apiVersion": "v1", "kind": "Service", "metadata": {}})),
            Err(Error::MissingField { field: "metadata.name", .. })
        ));
        assert!(matches!(
            s.create(json!({"apiVersion": "v2", "kind": "Service"})),
            Err(Error::UnknownKind { .. })
        ));
    }

    #[test]
    fn watch_replays_history_and_expires_after_compaction() {
        let mut s = Store::new(100);
        s.create(svc("a", "web")).unwrap();
        s.create(svc("b", "web")).unwrap();
        let (_, mut rx) = s.watch(all_services(), WatchFrom::After(1), true);
        let ev = drain(&mut rx);
        assert_eq!(ev.len(), 1);
        assert_eq!(
            (ev[0]["type"].as_str(), ev[0]["object"]["metadata"]["name"].as_str()),
            (Some("ADDED"), Some("b"))
        );
        s.compact();
        let (id, mut rx) = s.watch(all_services(), WatchFrom::After(1), true);
        assert!(id.is_none());
        let ev = drain(&mut rx);
        assert_eq!(
            (ev[0]["type"].as_str(), ev[0]["object"]["code"].as_u64()),
            (Some("ERROR"), Some(410))
        );
        assert!(rx.try_recv().is_err(), "stream ends after the error");
        // From the current version nothing is lost.
        let (id, _) = s.watch(all_services(), WatchFrom::After(2), true);
        assert!(id.is_some());
    }

    #[test]
    fn history_overflow_compacts() {
        let mut s = Store::new(2);
        for n in ["a", "b", "c", "d"] {
            s.create(svc(n, "web")).unwrap();
        }
        assert!(s.watch(all_services(), WatchFrom::After(1), false).0.is_none());
        assert!(s.watch(all_services(), WatchFrom::After(2), false).0.is_some());
    }

    #[test]
    fn selector_transitions_become_added_and_deleted() {
        let mut s = Store::new(100);
        s.create(svc("a", "web")).unwrap();
        let mut f = all_services();
        f.labels = Selector::labels("app=web").unwrap();
        let (_, mut rx) = s.watch(f, WatchFrom::After(1), false);
        s.update(svc("a", "db")).unwrap();
        s.update(svc("a", "web")).unwrap();
        s.update(svc("a", "web")).unwrap(); // no-op
        let types: Vec<String> =
            drain(&mut rx).iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
        assert_eq!(types, ["DELETED", "ADDED"]);
    }

    #[test]
    fn pagination_is_a_consistent_snapshot() {
        let mut s = Store::new(100);
        for n in ["a", "b", "c", "d", "e"] {
            s.create(svc(n, "web")).unwrap();
        }
        let p1 = s.list(&all_services(), Some(2), None).ok().unwrap();
        assert_eq!((p1.items.len(), p1.remaining, p1.rv), (2, Some(3), 5));
        s.delete(resource::by_kind("v1", "Service").unwrap(), None, "e").unwrap();
        let p2 = s.list(&all_services(), Some(2), p1.continue_token.as_deref()).ok().unwrap();
        let p3 = s.list(&all_services(), Some(2), p2.continue_token.as_deref()).ok().unwrap();
        assert_eq!(p3.items[0]["metadata"]["name"], "e", "snapshot taken at the first page");
        assert!(p3.continue_token.is_none());
        assert!(matches!(
            s.list(&all_services(), Some(2), p2.continue_token.as_deref()),
            Err(ListError::Expired)
        ));
    }

    #[test]
    fn timestamp_format() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20"));
    }
}
