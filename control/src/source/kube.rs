//! Kubernetes API source: one kube-runtime watcher + a store per kind registered in
//! [`crate::cluster::kinds`] (Service, discovery.k8s.io/v1 EndpointSlice, Node), and a loop
//! that hands the consumer [`Changes`]: once every store has finished its first list, every
//! object (each kind a full listing); after that, only the objects that changed, looked up in
//! the stores (shared `Arc`s: nothing is deep-copied), coalesced while the consumer is busy or
//! the minimum interval has not passed. Its neighbours: the daemon (daemon.rs) feeds the
//! changes to [`crate::translate::Translator`]; [`crate::source::file`] is the other source.
//!
//! Resilience comes from kube-runtime and is relied on deliberately: a watch that ends or
//! breaks resumes from its last resourceVersion; a 410 Gone (history compacted) makes the
//! watcher relist, and the store buffers the relisted objects and swaps them in in one
//! step at the end of the list (as kube-runtime's reflector does), so no object that still
//! exists ever goes missing. The store is this module's rather than the reflector's: it
//! keeps each object once, found by the namespace and name in its metadata (the
//! reflector's key beside each object held four more strings: with its table, ~20 MB at
//! 30k Services). A relist may hide deletions (no delete event), so after one the kind is
//! handed over as a full listing again and the consumer diffs it whole. Errors are retried with
//! kube's default exponential backoff (0.8 s doubling to 30 s, with jitter). A new kind
//! (Pod, Namespace, NetworkPolicy) is watched once it is registered: the loop below, the
//! probe and the counters all go over the registered kinds (the service account must be
//! allowed to list and watch it).

use crate::cluster::{
    for_each_kind,
    kinds::{PerKind, Same},
    Changes, Kind, KindChanges, KindVisitor, ObjectKey,
};
use anyhow::Context as _;
use futures::future::BoxFuture;
use futures::StreamExt;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// The API verbs this source uses on every registered kind, and nothing
/// else: `list` (the start-up probe, the watchers' listings and relists)
/// and `watch`. The agent never reads one object by name (`get`) nor writes
/// anything. The install's ClusterRole is derived from this and the
/// registry ([`crate::install::rbac`]).
pub const VERBS: [&str; 2] = ["list", "watch"];

/// How to reach the API server.
#[derive(Debug, Clone, Default)]
pub struct KubeOptions {
    /// A kubeconfig file; without it, in-cluster configuration or the default kubeconfig
    /// (`KUBECONFIG`, `~/.kube/config`) as `kube::Config::infer` finds them.
    pub kubeconfig: Option<PathBuf>,
}

/// How the watch loop behaves; `Default` is what `xlb run` uses.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Minimum time between two hand-overs: changes arriving meanwhile are coalesced into
    /// the next one. Zero hands each change over at once; a burst still coalesces while the
    /// consumer is busy (at most one batch waits in the channel).
    pub min_interval: Duration,
    /// How long the start-up probe may take before the API counts as unreachable.
    pub probe_timeout: Duration,
    /// Objects per list page during (re)lists; `None` lists everything at once.
    pub page_size: Option<u32>,
    /// Counters of this source, for metrics and readiness; keep a clone to read them.
    pub stats: Arc<KubeStats>,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            min_interval: Duration::ZERO,
            probe_timeout: Duration::from_secs(10),
            page_size: Some(500),
            stats: Arc::default(),
        }
    }
}

/// Counters of one watched kind.
#[derive(Debug, Default)]
pub struct KindStats {
    /// Objects in the store after the last event.
    pub objects: AtomicU64,
    /// Relists after the first list (410 Gone, or a watch that could not resume).
    pub restarts: AtomicU64,
    /// Watch and list errors (each retried with backoff).
    pub errors: AtomicU64,
    /// Applied and deleted objects seen on the watch (not counting lists).
    pub events: AtomicU64,
}

/// Counters of the Kubernetes source; the metrics endpoint reads them.
#[derive(Debug, Default)]
pub struct KubeStats {
    /// Each watched kind's counters.
    pub per_kind: PerKind<Same<KindStats>>,
    /// Batches of changes handed to the consumer.
    pub batches: AtomicU64,
    /// Every store has completed its first list (the first batch was built).
    pub synced: AtomicBool,
}

impl KubeStats {
    /// Each kind's counters with the kind's name, for labelled metrics.
    pub fn kinds(&self) -> Vec<(&'static str, &KindStats)> {
        self.per_kind.iter().collect()
    }
}

/// Watches the API and sends [`Changes`] with default [`WatchOptions`]. See [`run_with`].
pub async fn run(opts: KubeOptions, tx: mpsc::Sender<Changes>) -> anyhow::Result<()> {
    run_with(opts, WatchOptions::default(), tx).await
}

/// Connects, checks that every watched kind can be listed (an unreachable or forbidden
/// API is an error returned within `probe_timeout`, for the caller to report while it
/// keeps serving what it has), then watches until the receiver of `tx` is dropped.
/// Nothing is sent before every store has completed its first list; the first batch
/// lists every object.
pub async fn run_with(
    opts: KubeOptions,
    watch: WatchOptions,
    tx: mpsc::Sender<Changes>,
) -> anyhow::Result<()> {
    let config = client_config(&opts).await?;
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config)
        .with_context(|| format!("building a Kubernetes client for {url}"))?;
    let absent = tokio::time::timeout(watch.probe_timeout, probe(&client))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {:?}", watch.probe_timeout))
        .and_then(|r| r)
        .with_context(|| {
            format!("Kubernetes API at {url} is not usable (unreachable, or refuses to list)")
        })?;

    let config = watcher::Config { page_size: watch.page_size, ..Default::default() };
    let stats = watch.stats.clone();
    let wake = Arc::new(tokio::sync::Notify::new());
    // Aborts every watcher task when this function returns.
    let mut tasks = JoinSet::new();
    let w =
        Watches { client: &client, config: &config, stats: &stats, wake: &wake, absent: &absent };
    let kinds = w.watch_every_kind(&mut tasks);

    info!(url, "waiting for the first list of every watched kind");
    for k in &kinds {
        let kind = k.kind();
        k.ready()
            .await
            .with_context(|| format!("the {kind} watcher stopped before its first list"))?;
    }
    stats.synced.store(true, Ordering::Relaxed);
    let objects: Vec<String> = kinds.iter().map(|k| format!("{}={}", k.kind(), k.len())).collect();
    info!(objects = objects.join(" "), "Kubernetes caches synced");

    // The first batch: every object. Pending changes are taken (and dropped) before the
    // stores are read, so a change landing meanwhile is in the next batch, never lost.
    let mut first = true;
    loop {
        let mut changes = Changes::default();
        for k in &kinds {
            k.take_into(first, &mut changes);
        }
        first = false;
        if changes.is_empty() {
            // A wake-up whose changes an earlier batch already carried.
            wake.notified().await;
            continue;
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        if tx.send(changes).await.is_err() {
            debug!("receiver gone; stopping the Kubernetes source");
            return Ok(());
        }
        let sent_at = Instant::now();
        tokio::select! {
            _ = wake.notified() => {}
            Some(done) = tasks.join_next() => {
                anyhow::bail!("a Kubernetes watcher stopped: {done:?}");
            }
        }
        if !watch.min_interval.is_zero() {
            tokio::time::sleep_until(sent_at + watch.min_interval).await;
        }
    }
}

async fn client_config(opts: &KubeOptions) -> anyhow::Result<kube::Config> {
    match &opts.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))
        }
        None => kube::Config::infer().await.context(
            "no --kubeconfig given, and neither in-cluster configuration nor a default \
             kubeconfig (KUBECONFIG, ~/.kube/config) is usable",
        ),
    }
}

/// One small list per kind: proves the API is reachable and that we may list each kind.
/// Returns the optional kinds (custom resources, [`Kind::OPTIONAL`]) the API does not
/// serve (404: the CRD is not installed) or does not let us list (403: RBAC rendered
/// before the kind was added): they count as listed and empty, with a warning.
async fn probe(client: &Client) -> anyhow::Result<HashSet<&'static str>> {
    type Probe = BoxFuture<'static, anyhow::Result<Option<&'static str>>>;
    struct Probes<'a>(&'a Client, Vec<Probe>);
    impl KindVisitor for Probes<'_> {
        fn visit<K: Kind>(&mut self) {
            let api = Api::<K>::all(self.0.clone());
            self.1.push(Box::pin(async move {
                let lp = ListParams::default().limit(1);
                match api.list(&lp).await {
                    Ok(_) => Ok(None),
                    Err(kube::Error::Api(s)) if K::OPTIONAL && s.code == 404 => Ok(Some(K::KIND)),
                    Err(kube::Error::Api(s)) if K::OPTIONAL && s.code == 403 => {
                        warn!(
                            kind = K::KIND,
                            message = %s.message,
                            "forbidden to list this optional kind: taken as empty (the \
                             service account needs list and watch on it)"
                        );
                        Ok(Some(K::KIND))
                    }
                    Err(e) => Err(e).with_context(|| format!("listing {}s", K::KIND)),
                }
            }));
        }
    }
    let mut probes = Probes(client, Vec::new());
    for_each_kind(&mut probes);
    let mut absent = HashSet::new();
    for p in probes.1 {
        if let Some(kind) = p.await? {
            info!(
                kind,
                "not served by this API server (its CRD is not installed): taken as empty; \
                 installing it later takes effect when the agent restarts"
            );
            absent.insert(kind);
        }
    }
    Ok(absent)
}

/// An optional kind the API does not serve: listed, and empty.
struct Absent<K>(std::marker::PhantomData<K>);

impl<K: Kind> WatchedKind for Absent<K> {
    fn kind(&self) -> &'static str {
        K::KIND
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), watch::error::RecvError>> {
        Box::pin(async { Ok(()) })
    }

    fn len(&self) -> usize {
        0
    }

    fn take_into(&self, full: bool, changes: &mut Changes) {
        *K::of_mut(changes) = KindChanges { full, objects: Vec::new() };
    }
}

/// Keys of one kind's objects changed since the last batch, and whether it relisted.
#[derive(Debug, Default)]
struct Pending {
    keys: HashSet<ObjectKey>,
    full: bool,
}

/// An object of a store, hashed and compared by its namespace and name, read from its
/// metadata (the key is not stored beside it).
struct Keyed<K>(Arc<K>);

impl<K: Kind> Keyed<K> {
    fn key(&self) -> (Option<&str>, &str) {
        let m = self.0.meta();
        (m.namespace.as_deref(), m.name.as_deref().unwrap_or(""))
    }
}

impl<K: Kind> Hash for Keyed<K> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.key().hash(h);
    }
}

impl<K: Kind> PartialEq for Keyed<K> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<K: Kind> Eq for Keyed<K> {}

/// An [`ObjectKey`] looking up a [`Keyed`] object: hashes as [`Keyed::key`] does.
struct Lookup<'a>(&'a ObjectKey);

impl Hash for Lookup<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        (self.0.namespace.as_deref(), self.0.name.as_str()).hash(h);
    }
}

impl<K: Kind> hashbrown::Equivalent<Keyed<K>> for Lookup<'_> {
    fn equivalent(&self, obj: &Keyed<K>) -> bool {
        (self.0.namespace.as_deref(), self.0.name.as_str()) == obj.key()
    }
}

/// A kind's objects, and what changed in them since the last batch.
struct Held<K> {
    /// Every object as of the last event; a relist's objects replace them at its end.
    store: hashbrown::HashSet<Keyed<K>>,
    /// A list's objects so far (None: not listing).
    listing: Option<hashbrown::HashSet<Keyed<K>>>,
    pending: Pending,
}

/// A watched kind: its objects, what changed in them since the last batch, and whether
/// its first list is complete.
struct Watched<K: Kind> {
    held: Arc<Mutex<Held<K>>>,
    listed: watch::Receiver<bool>,
}

impl<K: Kind> Watched<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held<K>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A [`Watched`] kind, whatever the kind: what the batching loop does with each.
trait WatchedKind: Send + Sync {
    fn kind(&self) -> &'static str;
    /// Resolves once the store has completed its first list (an error: the watcher stopped).
    fn ready(&self) -> BoxFuture<'_, Result<(), watch::error::RecvError>>;
    /// Objects in the store.
    fn len(&self) -> usize;
    /// Puts the kind's changes since the last call into `changes` (all objects when
    /// `full` or after a relist).
    fn take_into(&self, full: bool, changes: &mut Changes);
}

impl<K: Kind> WatchedKind for Watched<K> {
    fn kind(&self) -> &'static str {
        K::KIND
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), watch::error::RecvError>> {
        let mut listed = self.listed.clone();
        Box::pin(async move { listed.wait_for(|l| *l).await.map(|_| ()) })
    }

    fn len(&self) -> usize {
        self.lock().store.len()
    }

    fn take_into(&self, full: bool, changes: &mut Changes) {
        *K::of_mut(changes) = self.take(full);
    }
}

impl<K: Kind> Watched<K> {
    /// The changes since the last call (all objects when `full` or after a relist).
    fn take(&self, full: bool) -> KindChanges<K> {
        let mut held = self.lock();
        let p = std::mem::take(&mut held.pending);
        if full || p.full {
            let objects = held.store.iter().map(|o| (ObjectKey::of(&*o.0), Some(o.0.clone())));
            return KindChanges { full: true, objects: objects.collect() };
        }
        let objects = p
            .keys
            .into_iter()
            .map(|key| {
                let obj = held.store.get(&Lookup(&key)).map(|o| o.0.clone());
                (key, obj)
            })
            .collect();
        KindChanges { full: false, objects }
    }
}

/// The annotation `kubectl apply` leaves on every object it applied: a
/// copy of the whole object as last applied.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no translation reads before the store keeps an object:
/// managedFields (server-side apply's field owners, often larger than the
/// spec) and kubectl's last-applied copy of the object.
fn slim(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            meta.annotations = None;
        }
    }
}

/// `obj` as the store keeps it: a copy, every list in it exactly as long as it is (as
/// decoded, a list keeps room to grow: an EndpointSlice's 10 endpoints room for 16, each
/// endpoint's one address room for 4, ~35 MB more at 30k slices).
fn compact<K: Kind>(obj: K) -> Arc<K> {
    Arc::new(obj.clone())
}

/// What every watched kind shares.
struct Watches<'a> {
    client: &'a Client,
    config: &'a watcher::Config,
    stats: &'a Arc<KubeStats>,
    wake: &'a Arc<tokio::sync::Notify>,
    /// Optional kinds the API does not serve.
    absent: &'a HashSet<&'static str>,
}

impl Watches<'_> {
    /// Starts a watcher for every registered kind, in registration order.
    fn watch_every_kind(&self, tasks: &mut JoinSet<()>) -> Vec<Box<dyn WatchedKind>> {
        struct Start<'a, 'w> {
            watches: &'a Watches<'w>,
            tasks: &'a mut JoinSet<()>,
            started: Vec<Box<dyn WatchedKind>>,
        }
        impl KindVisitor for Start<'_, '_> {
            fn visit<K: Kind>(&mut self) {
                if self.watches.absent.contains(K::KIND) {
                    self.started.push(Box::new(Absent::<K>(std::marker::PhantomData)));
                    return;
                }
                self.started.push(Box::new(self.watches.watch_kind::<K>(self.tasks)));
            }
        }
        let mut start = Start { watches: self, tasks, started: Vec::new() };
        for_each_kind(&mut start);
        start.started
    }

    /// Starts the watcher of kind `K` on a task in `tasks`, keeping its objects, and
    /// returns them with the pending changes. Every applied or deleted object is noted
    /// by key, every relist as a full listing, and the batching loop is woken.
    fn watch_kind<K: Kind>(&self, tasks: &mut JoinSet<()>) -> Watched<K> {
        let events = watcher::watcher(Api::<K>::all(self.client.clone()), self.config.clone())
            .default_backoff()
            .modify(|o: &mut K| slim(o.meta_mut()));
        let held = Arc::new(Mutex::new(Held::<K> {
            store: hashbrown::HashSet::new(),
            listing: None,
            pending: Pending::default(),
        }));
        let (listed_tx, listed) = watch::channel(false);
        let (stats, wake, shared) = (self.stats.clone(), self.wake.clone(), held.clone());
        tasks.spawn(async move {
            let kind = K::KIND;
            let mut events = std::pin::pin!(events);
            let mut lists = 0u64;
            let lock = || shared.lock().unwrap_or_else(PoisonError::into_inner);
            while let Some(event) = events.next().await {
                let s = K::of(&stats.per_kind);
                match event {
                    Ok(Event::Init) => {
                        lists += 1;
                        lock().listing = Some(hashbrown::HashSet::new());
                        if lists > 1 {
                            s.restarts.fetch_add(1, Ordering::Relaxed);
                            info!(kind, "watch restarted: relisting (the store keeps its objects until the list completes)");
                        }
                    }
                    Ok(Event::InitApply(o)) => {
                        if let Some(l) = lock().listing.as_mut() {
                            l.replace(Keyed(compact(o)));
                        }
                    }
                    Ok(Event::InitDone) => {
                        let mut h = lock();
                        if let Some(listed) = h.listing.take() {
                            h.store = listed;
                        }
                        let objects = h.store.len();
                        if lists > 1 {
                            h.pending.full = true;
                        }
                        drop(h);
                        s.objects.store(objects as u64, Ordering::Relaxed);
                        debug!(kind, objects, "list complete");
                        listed_tx.send_replace(true);
                        if lists > 1 {
                            wake.notify_one();
                        }
                    }
                    Ok(event @ (Event::Apply(_) | Event::Delete(_))) => {
                        let mut h = lock();
                        let key = match event {
                            Event::Apply(o) => {
                                let key = ObjectKey::of(&o);
                                h.store.replace(Keyed(compact(o)));
                                key
                            }
                            Event::Delete(o) => {
                                let key = ObjectKey::of(&o);
                                h.store.remove(&Lookup(&key));
                                key
                            }
                            _ => continue,
                        };
                        h.pending.keys.insert(key);
                        let objects = h.store.len();
                        drop(h);
                        s.events.fetch_add(1, Ordering::Relaxed);
                        s.objects.store(objects as u64, Ordering::Relaxed);
                        wake.notify_one();
                    }
                    Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                        s.errors.fetch_add(1, Ordering::Relaxed);
                        info!(kind, message = %status.message, "resourceVersion expired (410 Gone); relisting");
                    }
                    Err(e) => {
                        s.errors.fetch_add(1, Ordering::Relaxed);
                        warn!(kind, error = %lb::report::Chain(&e), "watch failed; retrying with backoff");
                    }
                }
            }
        });
        Watched { held, listed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

    #[test]
    fn slim_drops_managed_fields_and_the_last_applied_copy_and_keeps_other_annotations() {
        let mut meta = ObjectMeta {
            name: Some("web".into()),
            managed_fields: Some(vec![ManagedFieldsEntry {
                manager: Some("kubectl".into()),
                ..Default::default()
            }]),
            annotations: Some(
                [
                    (LAST_APPLIED.to_string(), "{\"kind\":\"Service\"}".to_string()),
                    ("xlb.io/maglev-size".to_string(), "16381".to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        };
        slim(&mut meta);
        assert_eq!(meta.managed_fields, None);
        assert_eq!(
            meta.annotations,
            Some([("xlb.io/maglev-size".to_string(), "16381".to_string())].into())
        );
        let mut only_last = ObjectMeta {
            annotations: Some([(LAST_APPLIED.to_string(), "{}".to_string())].into()),
            ..Default::default()
        };
        slim(&mut only_last);
        assert_eq!(only_last.annotations, None);
    }
}
