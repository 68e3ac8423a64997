//! Kubernetes API source: one kube-runtime watcher + reflector store per watched kind
//! (Service, discovery.k8s.io/v1 EndpointSlice, Node), and a loop that sends a fresh
//! [`Cluster`] snapshot once every store has finished its first list and then after
//! changes, coalesced. Its neighbours: the daemon (daemon.rs) consumes the snapshots,
//! [`crate::translate`] turns them into the datapath model; [`crate::source::file`] is
//! the other source of the same snapshots.
//!
//! Resilience comes from kube-runtime and is relied on deliberately: a watch that ends or
//! breaks resumes from its last resourceVersion; a 410 Gone (history compacted) makes the
//! watcher relist, and the reflector buffers the relisted objects and swaps them into the
//! store in one step at the end of the list, so a snapshot never lacks an object that still
//! exists; errors are retried with kube's default exponential backoff (0.8 s doubling to
//! 30 s, with jitter). A new kind (Pod, Namespace, NetworkPolicy) joins by one more
//! [`watch_kind`] call, a [`KindStats`] field and a `Cluster` field.

use crate::cluster::Cluster;
use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

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
    /// Minimum time between two snapshots: changes arriving meanwhile are coalesced into
    /// the next one. Zero sends as soon as the previous snapshot was taken; a burst still
    /// coalesces while a snapshot is being built or the consumer is busy.
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
    pub services: KindStats,
    pub slices: KindStats,
    pub nodes: KindStats,
    /// Snapshots handed to the consumer.
    pub snapshots: AtomicU64,
    /// Every store has completed its first list (the first snapshot was built).
    pub synced: AtomicBool,
}

impl KubeStats {
    /// Each kind's counters with the kind's name, for labelled metrics.
    pub fn kinds(&self) -> [(&'static str, &KindStats); 3] {
        [("Service", &self.services), ("EndpointSlice", &self.slices), ("Node", &self.nodes)]
    }
}

/// Watches the API and sends a fresh [`Cluster`] after every change (coalesced), with
/// default [`WatchOptions`]. See [`run_with`].
pub async fn run(opts: KubeOptions, tx: mpsc::Sender<Arc<Cluster>>) -> anyhow::Result<()> {
    run_with(opts, WatchOptions::default(), tx).await
}

/// Connects, checks that every watched kind can be listed (an unreachable or forbidden
/// API is an error returned within `probe_timeout`, for the caller to report while it
/// keeps serving what it has), then watches until the receiver of `tx` is dropped.
/// No snapshot is sent before every store has completed its first list.
pub async fn run_with(
    opts: KubeOptions,
    watch: WatchOptions,
    tx: mpsc::Sender<Arc<Cluster>>,
) -> anyhow::Result<()> {
    let config = client_config(&opts).await?;
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config)
        .with_context(|| format!("building a Kubernetes client for {url}"))?;
    tokio::time::timeout(watch.probe_timeout, probe(&client))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {:?}", watch.probe_timeout))
        .and_then(|r| r)
        .with_context(|| {
            format!("Kubernetes API at {url} is not usable (unreachable, or refuses to list)")
        })?;

    let config = watcher::Config { page_size: watch.page_size, ..Default::default() };
    let stats = watch.stats.clone();
    let (changed_tx, mut changed) = tokio::sync::watch::channel(0u64);
    let changed_tx = Arc::new(changed_tx);
    // Aborts every watcher task when this function returns.
    let mut tasks = JoinSet::new();
    let w = Watches { client: &client, config: &config, stats: &stats, changed: &changed_tx };
    let services = w.watch_kind::<Service>(&mut tasks, |s| &s.services);
    let slices = w.watch_kind::<EndpointSlice>(&mut tasks, |s| &s.slices);
    let nodes = w.watch_kind::<Node>(&mut tasks, |s| &s.nodes);

    info!(url, "waiting for the first list of every watched kind");
    for (kind, ready) in [
        ("Service", services.wait_until_ready().await),
        ("EndpointSlice", slices.wait_until_ready().await),
        ("Node", nodes.wait_until_ready().await),
    ] {
        ready.with_context(|| format!("the {kind} watcher stopped before its first list"))?;
    }
    stats.synced.store(true, Ordering::Relaxed);
    info!(
        services = services.len(),
        slices = slices.len(),
        nodes = nodes.len(),
        "Kubernetes caches synced"
    );

    drop(changed_tx);
    loop {
        // Mark every change so far as seen before reading the stores: a change that lands
        // while the snapshot is built triggers the next round, so none is lost.
        changed.borrow_and_update();
        let cluster = Cluster {
            services: snapshot(&services),
            slices: snapshot(&slices),
            nodes: snapshot(&nodes),
        };
        stats.snapshots.fetch_add(1, Ordering::Relaxed);
        if tx.send(Arc::new(cluster)).await.is_err() {
            debug!("snapshot receiver gone; stopping the Kubernetes source");
            return Ok(());
        }
        let sent_at = Instant::now();
        if changed.changed().await.is_err() {
            anyhow::bail!("every Kubernetes watcher stopped");
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
async fn probe(client: &Client) -> anyhow::Result<()> {
    let lp = ListParams::default().limit(1);
    Api::<Service>::all(client.clone()).list(&lp).await.context("listing Services")?;
    Api::<EndpointSlice>::all(client.clone()).list(&lp).await.context("listing EndpointSlices")?;
    Api::<Node>::all(client.clone()).list(&lp).await.context("listing Nodes")?;
    Ok(())
}

/// The store's objects, ordered by namespace and name so snapshots are deterministic.
fn snapshot<K>(store: &Store<K>) -> Vec<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let mut objects: Vec<Arc<K>> = store.state();
    objects.sort_by_cached_key(|o| (o.namespace(), o.name_any()));
    objects.into_iter().map(Arc::unwrap_or_clone).collect()
}

/// What every watched kind shares.
struct Watches<'a> {
    client: &'a Client,
    config: &'a watcher::Config,
    stats: &'a Arc<KubeStats>,
    changed: &'a Arc<tokio::sync::watch::Sender<u64>>,
}

impl Watches<'_> {
    /// Starts the watcher + reflector of kind `K` on a task in `tasks` and returns the
    /// store it keeps current. Every store change bumps the `changed` counter.
    fn watch_kind<K>(
        &self,
        tasks: &mut JoinSet<()>,
        stats_of: fn(&KubeStats) -> &KindStats,
    ) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let (reader, writer) = reflector::store::<K>();
        let events = watcher::watcher(Api::<K>::all(self.client.clone()), self.config.clone())
            .default_backoff()
            .reflect(writer);
        let (store, stats, changed) = (reader.clone(), self.stats.clone(), self.changed.clone());
        tasks.spawn(async move {
            let kind = K::kind(&()).to_string();
            let mut events = std::pin::pin!(events);
            let mut lists = 0u64;
            while let Some(event) = events.next().await {
                let s = stats_of(&stats);
                match event {
                    Ok(Event::Init) => {
                        lists += 1;
                        if lists > 1 {
                            s.restarts.fetch_add(1, Ordering::Relaxed);
                            info!(kind, "watch restarted: relisting (the store keeps its objects until the list completes)");
                        }
                    }
                    Ok(Event::InitApply(_)) => {}
                    Ok(Event::InitDone) => {
                        s.objects.store(store.len() as u64, Ordering::Relaxed);
                        debug!(kind, objects = store.len(), "list complete");
                        changed.send_modify(|n| *n += 1);
                    }
                    Ok(Event::Apply(_) | Event::Delete(_)) => {
                        s.events.fetch_add(1, Ordering::Relaxed);
                        s.objects.store(store.len() as u64, Ordering::Relaxed);
                        changed.send_modify(|n| *n += 1);
                    }
                    Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                        s.errors.fetch_add(1, Ordering::Relaxed);
                        info!(kind, message = %status.message, "resourceVersion expired (410 Gone); relisting");
                    }
                    Err(e) => {
                        s.errors.fetch_add(1, Ordering::Relaxed);
                        warn!(kind, error = %e, "watch failed; retrying with backoff");
                    }
                }
            }
        });
        reader
    }
}
