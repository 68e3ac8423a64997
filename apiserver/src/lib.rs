//! An in-process double of the Kubernetes API server for tests and benchmarks. It speaks
//! the real list/watch wire protocol over plain HTTP on 127.0.0.1 — JSON lists with
//! `resourceVersion`, `limit`/`continue` pagination, label and field selectors, chunked
//! watch streams of ADDED/MODIFIED/DELETED/BOOKMARK events replayed from a bounded
//! history, ERROR 410 Expired once that history is compacted, `timeoutSeconds` — so the
//! real kube-rs client and watcher run against it unchanged. Tests drive it through
//! [`ApiServer`]: write objects, compact, cut watches, inject failures, pause the server.
//!
//! Served: core/v1 services, pods, nodes, namespaces; discovery.k8s.io/v1 endpointslices;
//! networking.k8s.io/v1 networkpolicies ([`RESOURCES`]). Only reads go over HTTP; writes
//! go through the handle. Namespaces need not exist before objects are put in them.

mod http;
mod resource;
mod selector;
mod store;

pub use resource::{ResourceType, RESOURCES};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use store::Store;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

/// Which object an error is about: `Service default/web`, `Node node1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectId {
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("object does not serialize to JSON: {source}")]
    Encode {
        #[source]
        source: serde_json::Error,
    },
    #[error("{object}: stored object does not decode into the requested type: {source}")]
    Decode {
        object: ObjectId,
        #[source]
        source: serde_json::Error,
    },
    #[error("object is not a JSON object")]
    NotAnObject,
    #[error("apiVersion {api_version:?} kind {kind:?} is not served by the double")]
    UnknownKind { api_version: String, kind: String },
    #[error("{kind}: {field} is missing or empty")]
    MissingField { kind: &'static str, field: &'static str },
    #[error("{object} already exists")]
    AlreadyExists { object: ObjectId },
    #[error("{object} not found")]
    NotFound { object: ObjectId },
    #[error("{object}: metadata.resourceVersion {given} does not match the stored {current}")]
    Conflict { object: ObjectId, given: String, current: String },
    #[error("manifest document {index}: {source}")]
    ManifestYaml {
        index: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("manifest document {index}: {source}")]
    ManifestObject {
        index: usize,
        #[source]
        source: Box<Error>,
    },
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Server knobs; `Default` suits tests.
#[derive(Debug, Clone)]
pub struct Options {
    /// Changes kept for watch replay; older resourceVersions get 410 Expired.
    pub history_limit: usize,
    /// How often watches that set `allowWatchBookmarks` get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Watch duration when the request has no `timeoutSeconds`.
    pub default_watch_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            history_limit: 100_000,
            bookmark_interval: Duration::from_secs(1),
            default_watch_timeout: Duration::from_secs(1800),
        }
    }
}

/// Request and stream counters, for assertions such as "a relist happened".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Collection GETs without `watch`.
    pub list: u64,
    /// Collection GETs with `watch=true`.
    pub watch: u64,
    /// Single-object GETs.
    pub get: u64,
    /// Anything else (/version, unknown paths, non-GET).
    pub other: u64,
    /// Requests answered with an injected failure (see [`ApiServer::fail_next`]).
    pub injected_failures: u64,
    /// 410 answers: ERROR events for compacted watches and expired `continue` tokens.
    pub gone: u64,
    /// ADDED/MODIFIED/DELETED events queued on watch streams.
    pub watch_events: u64,
    pub bookmarks: u64,
}

#[derive(Default)]
struct Counters {
    list: AtomicU64,
    watch: AtomicU64,
    get: AtomicU64,
    other: AtomicU64,
    injected_failures: AtomicU64,
    gone: AtomicU64,
}

/// State shared by the handle, the accept loop and every connection.
pub(crate) struct Shared {
    store: Mutex<Store>,
    counters: Counters,
    /// (requests left to fail, HTTP status)
    fail: Mutex<(u32, u16)>,
    /// Bumped to cut every open connection.
    kill: tokio::sync::watch::Sender<u64>,
    opts: Options,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take_injected_failure(&self) -> Option<u16> {
        let mut fail = self.fail.lock().unwrap_or_else(PoisonError::into_inner);
        (fail.0 > 0).then(|| {
            fail.0 -= 1;
            fail.1
        })
    }
}

/// A running API server double; dropping it stops the server and cuts its connections.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Mutex<Option<JoinHandle<()>>>,
    ticker: JoinHandle<()>,
}

impl fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiServer").field("addr", &self.addr).finish_non_exhaustive()
    }
}

fn listen(addr: SocketAddr) -> Result<TcpListener, Error> {
    let bind = |source| Error::Bind { addr, source };
    let socket = TcpSocket::new_v4().map_err(bind)?;
    // Lets resume() rebind the port while closed connections sit in TIME_WAIT.
    socket.set_reuseaddr(true).map_err(bind)?;
    socket.bind(addr).map_err(bind)?;
    socket.listen(1024).map_err(bind)
}

impl ApiServer {
    /// Starts a server with default [`Options`] on 127.0.0.1 and an ephemeral port.
    pub async fn start() -> Result<ApiServer, Error> {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Result<ApiServer, Error> {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            source,
        })?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(opts.history_limit)),
            counters: Counters::default(),
            fail: Mutex::new((0, 500)),
            kill: tokio::sync::watch::Sender::new(0),
            opts,
        });
        let accept = tokio::spawn(http::accept_loop(listener, shared.clone()));
        let ticker = tokio::spawn({
            let shared = shared.clone();
            async move {
                let mut tick = tokio::time::interval(shared.opts.bookmark_interval);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    shared.lock().bookmark_all();
                }
            }
        });
        Ok(ApiServer { shared, addr, accept: Mutex::new(Some(accept)), ticker })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the cluster URL for a client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig (YAML) pointing at this server, context `xlb-double`, no credentials.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: xlb-double\n  cluster:\n    server: {}\n\
             users:\n- name: xlb-double\n  user: {{}}\ncontexts:\n- name: xlb-double\n  context:\n    \
             cluster: xlb-double\n    user: xlb-double\ncurrent-context: xlb-double\n",
            self.url()
        )
    }

    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), Error> {
        std::fs::write(path, self.kubeconfig())
            .map_err(|source| Error::Write { path: path.to_path_buf(), source })
    }

    fn to_value(obj: &impl Serialize) -> Result<Value, Error> {
        serde_json::to_value(obj).map_err(|source| Error::Encode { source })
    }

    /// Creates an object (a `serde_json::Value` or a typed k8s-openapi object). The server
    /// sets resourceVersion, uid, creationTimestamp and generation; returns the stored object.
    pub fn create(&self, obj: &impl Serialize) -> Result<Value, Error> {
        let v = Self::to_value(obj)?;
        Ok((*self.shared.lock().create(v)?).clone())
    }

    /// Replaces an existing object (a set `metadata.resourceVersion` must match).
    pub fn update(&self, obj: &impl Serialize) -> Result<Value, Error> {
        let v = Self::to_value(obj)?;
        Ok((*self.shared.lock().update(v)?).clone())
    }

    /// Creates the object, or replaces it when it exists.
    pub fn apply(&self, obj: &impl Serialize) -> Result<Value, Error> {
        let v = Self::to_value(obj)?;
        Ok((*self.shared.lock().apply(v)?).clone())
    }

    /// Applies every object of a multi-document YAML manifest (`kind: List` is unpacked).
    pub fn apply_yaml(&self, yaml: &str) -> Result<Vec<Value>, Error> {
        let mut applied = Vec::new();
        for (index, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
            let doc =
                Value::deserialize(doc).map_err(|source| Error::ManifestYaml { index, source })?;
            let objects = match doc {
                Value::Null => continue,
                Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
                    m.get("items").and_then(Value::as_array).cloned().unwrap_or_default()
                }
                other => vec![other],
            };
            for obj in objects {
                let stored = self
                    .shared
                    .lock()
                    .apply(obj)
                    .map_err(|e| Error::ManifestObject { index, source: Box::new(e) })?;
                applied.push((*stored).clone());
            }
        }
        Ok(applied)
    }

    /// Deletes a typed kind's object; `namespace` is ignored for cluster-scoped kinds.
    pub fn delete<K: k8s_openapi::Resource>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, Error> {
        self.delete_kind(K::API_VERSION, K::KIND, namespace, name)
    }

    pub fn delete_kind(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, Error> {
        let resource = resource::by_kind(api_version, kind).ok_or_else(|| Error::UnknownKind {
            api_version: api_version.into(),
            kind: kind.into(),
        })?;
        Ok((*self.shared.lock().delete(resource, namespace, name)?).clone())
    }

    /// The stored object of a typed kind, decoded.
    pub fn get<K: k8s_openapi::Resource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<K>, Error> {
        let Some(v) = self.get_kind(K::API_VERSION, K::KIND, namespace, name) else {
            return Ok(None);
        };
        let object = ObjectId {
            kind: K::KIND,
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        };
        serde_json::from_value(v).map(Some).map_err(|source| Error::Decode { object, source })
    }

    pub fn get_kind(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let resource = resource::by_kind(api_version, kind)?;
        let namespace =
            if resource.namespaced { Some(namespace.unwrap_or("default")) } else { None };
        self.shared.lock().get(resource, namespace, name).map(|o| (*o).clone())
    }

    /// The latest resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().resource_version()
    }

    /// Drops the change history (and pagination snapshots): every watch resumed from an
    /// earlier resourceVersion gets ERROR 410 Expired and must relist.
    pub fn compact(&self) {
        self.shared.lock().compact();
    }

    /// Cuts every open watch connection mid-stream, like a network failure; returns how many.
    pub fn disconnect_watches(&self) -> usize {
        self.shared.lock().abort_watches()
    }

    /// Answers the next `n` requests with `code` (500, 429 with Retry-After, 503, …) and a Status body.
    pub fn fail_next(&self, n: u32, code: u16) {
        *self.shared.fail.lock().unwrap_or_else(PoisonError::into_inner) = (n, code);
    }

    /// Makes the API unreachable: closes the listening socket (connections are refused)
    /// and cuts every open connection. Objects can still be changed through the handle.
    pub async fn pause(&self) {
        // Stop accepting first, so no connection opened during the pause escapes the cut.
        let accept = self.accept.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(task) = accept {
            task.abort();
            let _ = task.await;
        }
        self.shared.kill.send_modify(|epoch| *epoch += 1);
        self.shared.lock().abort_watches();
    }

    /// Listens again on the same address after [`pause`](Self::pause).
    pub async fn resume(&self) -> Result<(), Error> {
        let mut accept = self.accept.lock().unwrap_or_else(PoisonError::into_inner);
        if accept.is_none() {
            let listener = listen(self.addr)?;
            *accept = Some(tokio::spawn(http::accept_loop(listener, self.shared.clone())));
        }
        Ok(())
    }

    /// Open watch streams.
    pub fn active_watches(&self) -> usize {
        self.shared.lock().watch_count()
    }

    pub fn counts(&self) -> Counts {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let s = self.shared.lock().stats;
        Counts {
            list: get(&c.list),
            watch: get(&c.watch),
            get: get(&c.get),
            other: get(&c.other),
            injected_failures: get(&c.injected_failures),
            gone: get(&c.gone) + s.gone,
            watch_events: s.watch_events,
            bookmarks: s.bookmarks,
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.ticker.abort();
        if let Some(task) = self.accept.lock().unwrap_or_else(PoisonError::into_inner).take() {
            task.abort();
        }
        self.shared.lock().abort_watches();
        self.shared.kill.send_modify(|epoch| *epoch += 1);
    }
}
