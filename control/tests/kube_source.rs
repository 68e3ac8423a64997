//! The Kubernetes source against the API server double (real HTTP, real kube-rs client and
//! watchers): the first batch waits for every kind and lists everything, later batches
//! carry only the changed objects (creates, updates, deletes), a 410 relist keeps live
//! objects, catches up and hands the kind over in full again, a cut watch resumes without
//! relisting, bursts coalesce, and an unreachable API at start is an error. The test keeps
//! a mirror of the source's objects ([`Objects`]) and checks snapshots of it.

use apiserver::ApiServer;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use xlb_control::cluster::{Changes, Cluster, Objects};
use xlb_control::examples::NGINX;
use xlb_control::source::kube::{run_with, KubeOptions, KubeStats, WatchOptions};

/// Generous: kube's backoff after an error is 0.8–1.6 s, doubling on repeats.
const WAIT: Duration = Duration::from_secs(30);

/// A kubeconfig file for the double, removed on drop.
struct Kubeconfig(PathBuf);

impl Kubeconfig {
    fn write(server: &ApiServer) -> Kubeconfig {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "xlb-kube-source-{}-{}.yaml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        server.write_kubeconfig(&path).unwrap();
        Kubeconfig(path)
    }
}

impl Drop for Kubeconfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The running source, the mirror of its objects, and a snapshot of the mirror after
/// every batch, with the batch.
struct Source {
    rx: mpsc::Receiver<Changes>,
    task: JoinHandle<anyhow::Result<()>>,
    stats: Arc<KubeStats>,
    objects: Objects,
    seen: Vec<Arc<Cluster>>,
    batches: Vec<Changes>,
    _kubeconfig: Kubeconfig,
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Source {
    fn start(server: &ApiServer, watch: WatchOptions) -> Source {
        let kubeconfig = Kubeconfig::write(server);
        let opts = KubeOptions { kubeconfig: Some(kubeconfig.0.clone()) };
        let stats = watch.stats.clone();
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(run_with(opts, watch, tx));
        Source {
            rx,
            task,
            stats,
            objects: Objects::default(),
            seen: Vec::new(),
            batches: Vec::new(),
            _kubeconfig: kubeconfig,
        }
    }

    async fn next(&mut self) -> Arc<Cluster> {
        match tokio::time::timeout(WAIT, self.rx.recv()).await {
            Ok(Some(changes)) => {
                self.objects.apply(&changes);
                self.batches.push(changes);
                let c = Arc::new(self.objects.snapshot());
                self.seen.push(c.clone());
                c
            }
            Ok(None) => panic!("the source stopped: {:?}", (&mut self.task).await),
            Err(_) => panic!(
                "no snapshot within {WAIT:?}; last seen: {:?}",
                self.seen.last().map(|c| summary(c))
            ),
        }
    }

    /// Snapshots until one satisfies `want`.
    async fn until(&mut self, what: &str, want: impl Fn(&Cluster) -> bool) -> Arc<Cluster> {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(
                Instant::now() < deadline,
                "no snapshot with {what}; last: {:?}",
                self.seen.last().map(|c| summary(c))
            );
            let c = self.next().await;
            if want(&c) {
                return c;
            }
        }
    }
}

/// Polls `cond` until it holds.
async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn names<K: kube::Resource>(objs: &[K]) -> Vec<String> {
    objs.iter()
        .map(|o| match o.namespace() {
            Some(ns) => format!("{ns}/{}", o.name_any()),
            None => o.name_any(),
        })
        .collect()
}

fn summary(c: &Cluster) -> (Vec<String>, Vec<String>, Vec<String>) {
    (names(&c.services), names(&c.slices), names(&c.nodes))
}

fn has(list: &[String], name: &str) -> bool {
    list.iter().any(|n| n == name)
}

fn web_service(name: &str, port: i32) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some("10.96.0.20".into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn nginx_port(c: &Cluster) -> Option<i32> {
    let svc = c.services.iter().find(|s| s.name_any() == "nginx")?;
    Some(svc.spec.as_ref()?.ports.as_ref()?.first()?.port)
}

#[tokio::test]
async fn snapshots_follow_the_api() {
    let server = ApiServer::start().await.unwrap();
    server.apply_yaml(NGINX).unwrap();
    let mut src = Source::start(&server, WatchOptions::default());

    let first = src.next().await;
    assert_eq!(
        summary(&first),
        (
            vec!["default/nginx".to_string()],
            vec!["default/nginx-v4".to_string(), "default/nginx-v6".to_string()],
            vec!["lb".to_string(), "node1".to_string(), "node2".to_string()],
        ),
        "the first snapshot holds every kind's full list"
    );
    let b = &src.batches[0];
    assert!(b.services.full && b.slices.full && b.nodes.full, "the first batch lists everything");
    let svc = &first.services[0];
    let ingress =
        svc.status.as_ref().unwrap().load_balancer.as_ref().unwrap().ingress.as_ref().unwrap();
    assert_eq!(ingress[0].ip.as_deref(), Some("10.100.0.1"));
    assert_eq!(svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].node_port, Some(30080));
    let v6 = &first.slices[1];
    assert_eq!(
        (v6.address_type.as_str(), v6.endpoints[0].addresses[0].as_str()),
        ("IPv6", "2001:db8:244:1::11")
    );
    assert!(svc.metadata.resource_version.is_some() && svc.metadata.uid.is_some());
    assert!(src.stats.synced.load(Ordering::Relaxed));

    // Create (typed object), update, delete: each shows up in a later snapshot.
    server.create(&web_service("web", 8080)).unwrap();
    let c = src.until("default/web", |c| has(&summary(c).0, "default/web")).await;
    assert_eq!(c.services.len(), 2);

    let mut slice: EndpointSlice = server.get(Some("default"), "nginx-v4").unwrap().unwrap();
    slice.endpoints[1].conditions.as_mut().unwrap().ready = Some(false);
    server.update(&slice).unwrap();
    let not_ready = |c: &Cluster| {
        c.slices
            .iter()
            .find(|s| s.name_any() == "nginx-v4")
            .and_then(|s| s.endpoints[1].conditions.as_ref()?.ready)
            == Some(false)
    };
    src.until("nginx-v4 endpoint 2 not ready", not_ready).await;
    let b = src.batches.last().unwrap();
    assert!(!b.any_full(), "a change is not a full listing");
    assert_eq!(
        b.slices.objects.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>(),
        ["default/nginx-v4"],
        "the batch carries the one changed object"
    );
    assert!(b.services.objects.is_empty() && b.nodes.objects.is_empty());

    server.delete::<k8s_openapi::api::core::v1::Node>(None, "node2").unwrap();
    let c = src.until("node2 gone", |c| !has(&summary(c).2, "node2")).await;
    let b = src.batches.last().unwrap();
    assert_eq!(b.nodes.objects.len(), 1);
    assert!(b.nodes.objects[0].1.is_none(), "a deletion is the key without an object");
    assert_eq!(names(&c.nodes), ["lb", "node1"]);
    assert!(not_ready(&c), "later snapshots keep earlier changes");

    let s = &src.stats;
    assert_eq!(s.per_kind.services.objects.load(Ordering::Relaxed), 2);
    assert_eq!(s.per_kind.nodes.objects.load(Ordering::Relaxed), 2);
    assert!(s.per_kind.slices.events.load(Ordering::Relaxed) >= 1);
    assert_eq!(s.kinds().iter().map(|(_, k)| k.restarts.load(Ordering::Relaxed)).sum::<u64>(), 0);
}

#[tokio::test]
async fn relist_after_410_keeps_live_objects_and_catches_up() {
    let server = ApiServer::start().await.unwrap();
    server.apply_yaml(NGINX).unwrap();
    // One object per page: the relist takes several requests, during which the old
    // store contents must stay visible.
    let watch = WatchOptions { page_size: Some(1), ..WatchOptions::default() };
    let mut src = Source::start(&server, watch);
    src.next().await;
    let lists_before = server.counts().list;

    // While the API is down: changes, then compaction of the history the watchers would
    // resume from. Their next watch gets ERROR 410 and they must relist.
    server.pause().await;
    server.delete::<EndpointSlice>(Some("default"), "nginx-v6").unwrap();
    server.create(&web_service("late", 80)).unwrap();
    server.apply_yaml("apiVersion: v1\nkind: Node\nmetadata: {name: node3}\n").unwrap();
    let mut nginx: Service = server.get(Some("default"), "nginx").unwrap().unwrap();
    nginx.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 8080;
    server.update(&nginx).unwrap();
    server.compact();
    server.resume().await.unwrap();

    let caught_up = |c: &Cluster| {
        let (svcs, slices, nodes) = summary(c);
        has(&svcs, "default/late")
            && !has(&slices, "default/nginx-v6")
            && nginx_port(c) == Some(8080)
            && has(&nodes, "node3")
    };
    src.until("the changes made while the API was down", caught_up).await;
    for c in &src.seen {
        let (svcs, slices, nodes) = summary(c);
        assert!(
            has(&svcs, "default/nginx") && has(&slices, "default/nginx-v4"),
            "live objects dropped: {svcs:?} {slices:?}"
        );
        assert!(
            nodes.starts_with(&["lb".into(), "node1".into(), "node2".into()]),
            "a relist must not empty the store: {nodes:?}"
        );
    }
    let counts = server.counts();
    assert!(counts.gone >= 3, "every kind's watch should get 410: {counts:?}");
    assert!(counts.list > lists_before, "relisted");
    // The kinds whose history was compacted (the ones with objects; Pod,
    // Namespace and NetworkPolicy have none here).
    for (kind, k) in src.stats.kinds() {
        if matches!(kind, "Service" | "EndpointSlice" | "Node") {
            assert!(k.restarts.load(Ordering::Relaxed) >= 1, "{kind} did not relist");
        }
    }
    let relisted = |f: fn(&Changes) -> bool| src.batches[1..].iter().any(f);
    assert!(
        relisted(|b| b.services.full) && relisted(|b| b.slices.full) && relisted(|b| b.nodes.full),
        "after a relist each kind is handed over in full (deletions may hide in it)"
    );
    // And the watches keep working after the relist.
    server.create(&web_service("after", 80)).unwrap();
    src.until("default/after", |c| has(&summary(c).0, "default/after")).await;
}

#[tokio::test]
async fn cut_watches_resume_without_relisting() {
    let server = ApiServer::start().await.unwrap();
    server.apply_yaml(NGINX).unwrap();
    let mut src = Source::start(&server, WatchOptions::default());
    src.next().await;
    // The watches open just after the first lists complete.
    // One watch per registered kind (#11 added Pod, Namespace, NetworkPolicy).
    let kinds = src.stats.kinds().len();
    wait_for("a watch per kind", || server.active_watches() == kinds).await;
    let lists_before = server.counts().list;

    // A cut watch ends like a server-side timeout: kube re-watches at once from its last
    // resourceVersion. Make that first attempt fail; the watcher backs off and retries.
    server.fail_next(1, 500);
    assert_eq!(server.disconnect_watches(), kinds);
    server.apply_yaml("apiVersion: v1\nkind: Node\nmetadata: {name: node3}\n").unwrap();
    src.until("node3", |c| has(&summary(c).2, "node3")).await;
    assert_eq!(
        server.counts().list,
        lists_before,
        "resumed from the last resourceVersion, no relist"
    );
    assert_eq!(server.counts().injected_failures, 1);
    let stats = &src.stats;
    assert_eq!(
        stats.kinds().iter().map(|(_, k)| k.restarts.load(Ordering::Relaxed)).sum::<u64>(),
        0
    );
    assert_eq!(stats.kinds().iter().map(|(_, k)| k.errors.load(Ordering::Relaxed)).sum::<u64>(), 1);
}

#[tokio::test]
async fn bursts_are_coalesced() {
    let server = ApiServer::start().await.unwrap();
    server.apply_yaml(NGINX).unwrap();
    let watch =
        WatchOptions { min_interval: Duration::from_millis(300), ..WatchOptions::default() };
    let mut src = Source::start(&server, watch);
    src.next().await;
    for i in 0..200 {
        server.create(&web_service(&format!("burst-{i:03}"), 80)).unwrap();
    }
    let c = src.until("all 200 services", |c| c.services.len() == 201).await;
    assert_eq!(c.services[200].name_any(), "nginx", "snapshots are sorted by namespace and name");
    let batches = src.seen.len() - 1;
    assert!(batches <= 3, "200 changes in a burst took {batches} batches");
    let carried: usize = src.batches[1..].iter().map(|b| b.services.objects.len()).sum();
    assert_eq!(carried, 200, "each created service handed over once");
}

#[tokio::test]
async fn unreachable_api_at_start_is_an_error() {
    let server = ApiServer::start().await.unwrap();
    server.pause().await;
    let mut src = Source::start(&server, WatchOptions::default());
    let started = Instant::now();
    let result =
        tokio::time::timeout(WAIT, &mut src.task).await.expect("run() must give up").unwrap();
    let err = format!("{:#}", result.expect_err("an unreachable API is an error"));
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(err.contains("is not usable") && err.contains(&server.url()), "{err}");
    assert!(src.rx.recv().await.is_none(), "no snapshot without the API");

    let opts = KubeOptions { kubeconfig: Some("/nonexistent/kubeconfig".into()) };
    let (tx, _rx) = mpsc::channel(1);
    let err = format!("{:#}", run_with(opts, WatchOptions::default(), tx).await.unwrap_err());
    assert!(err.contains("/nonexistent/kubeconfig"), "{err}");
}

/// NetworkLogging (#11, a CRD on GKE) is watched like the built-in kinds: the double
/// serves it, a malformed object does not block the valid one, the policy side reads the
/// `default` one and names the broken one by field, and changes arrive as watch events.
#[tokio::test]
async fn network_logging_is_watched_and_a_malformed_one_blocks_nothing() {
    let server = ApiServer::start().await.unwrap();
    server.apply_yaml(NGINX).unwrap();
    let logging = |name: &str, spec: &str| {
        format!(
            "apiVersion: networking.gke.io/v1alpha1\nkind: NetworkLogging\n\
             metadata: {{name: {name}}}\nspec: {spec}\n"
        )
    };
    server.apply_yaml(&logging("broken", "{cluster: {deny: {log: maybe}}}")).unwrap();
    server.apply_yaml(&logging("default", "{cluster: {deny: {log: true}}}")).unwrap();
    let mut src = Source::start(&server, WatchOptions::default());
    let first = src.next().await;
    assert_eq!(names(&first.network_loggings), ["broken", "default"]);
    let config = |c: &Cluster| {
        let mut objs = xlb_control::policy::agent::PolicyObjects::default();
        objs.take(&mut Changes::full(c.clone()));
        let compiled = objs.compile();
        let n = objs.names(&compiled);
        (n.logging.deny.log, n.logging.allow.log, n.logging_errors)
    };
    assert_eq!(config(&first), (true, false, vec![]), "only `default` is read");

    server.apply_yaml(&logging("default", "{cluster: {allow: {log: yes}}}")).unwrap();
    let bad = src
        .until("the default turned invalid", |c| {
            c.network_loggings
                .iter()
                .any(|o| o.spec.as_ref().is_some_and(|s| s.to_string().contains("yes")))
        })
        .await;
    assert_eq!(
        config(&bad),
        (
            false,
            false,
            vec!["NetworkLogging default: spec.cluster.allow.log: \"yes\" is not a boolean"
                .to_string()]
        )
    );
    assert_eq!(bad.services.len(), 1, "other kinds unaffected");
}
