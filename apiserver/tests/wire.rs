//! Wire-protocol tests of the API server double, spoken to with a plain HTTP client:
//! list + watch round trip, pagination and selectors, 410 after compaction, bookmarks and
//! watch timeouts, injected failures, pause/resume and cut connections.

use apiserver::{ApiServer, Options};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Response, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::time::Duration;

const STEP: Duration = Duration::from_secs(5);

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(server: &ApiServer, path_and_query: &str) -> Response<Incoming> {
    let uri = format!("{}{path_and_query}", server.url()).parse().unwrap();
    tokio::time::timeout(STEP, client().get(uri))
        .await
        .expect("request timed out")
        .expect("request failed")
}

async fn get_json(server: &ApiServer, path_and_query: &str) -> (StatusCode, Value) {
    let resp = send(server, path_and_query).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{path_and_query}: body is not JSON: {e}")),
    )
}

/// Reads newline-delimited watch events off a chunked response body.
struct Watch {
    body: Incoming,
    buf: Vec<u8>,
}

impl Watch {
    async fn open(server: &ApiServer, path_and_query: &str) -> Watch {
        let resp = send(server, path_and_query).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path_and_query}");
        assert_eq!(
            resp.headers()["transfer-encoding"],
            "chunked",
            "watch must be a chunked stream"
        );
        Watch { body: resp.into_body(), buf: Vec::new() }
    }

    /// The next event; `Ok(None)` when the server ended the stream cleanly, `Err` when the
    /// connection was cut.
    async fn next(&mut self) -> Result<Option<Value>, hyper::Error> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(Some(serde_json::from_slice(&line).expect("watch line is JSON")));
            }
            let frame = tokio::time::timeout(STEP, self.body.frame())
                .await
                .expect("no watch event in time");
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(e),
                Some(Ok(f)) => {
                    self.buf.extend_from_slice(f.data_ref().map_or(&[][..], |d| d.as_ref()))
                }
            }
        }
    }

    async fn event(&mut self) -> (String, Value) {
        let ev = self.next().await.expect("stream cut").expect("stream ended");
        (ev["type"].as_str().unwrap().to_string(), ev["object"].clone())
    }
}

fn service(ns: &str, name: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    })
}

fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn list_then_watch_round_trip() {
    let server = ApiServer::start().await.unwrap();
    server.create(&service("default", "web", "web")).unwrap();
    let (status, list) = get_json(&server, "/api/v1/services").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (list["kind"].as_str(), list["apiVersion"].as_str()),
        (Some("ServiceList"), Some("v1"))
    );
    assert_eq!(names(&list), ["web"]);
    let item = &list["items"][0];
    assert!(item.get("kind").is_none(), "list items carry no kind, like the real server");
    assert!(
        item["metadata"]["uid"].is_string() && item["metadata"]["creationTimestamp"].is_string()
    );
    let list_rv: u64 = list["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    assert_eq!(list_rv, server.resource_version());

    let mut w = Watch::open(
        &server,
        &format!("/api/v1/services?watch=true&resourceVersion={list_rv}&timeoutSeconds=30"),
    )
    .await;
    server.create(&service("other", "db", "db")).unwrap();
    let mut changed = service("default", "web", "web");
    changed["spec"]["ports"][0]["port"] = 8080.into();
    server.update(&changed).unwrap();
    server.delete_kind("v1", "Service", Some("default"), "web").unwrap();

    let (t, added) = w.event().await;
    assert_eq!(
        (t.as_str(), added["kind"].as_str(), added["metadata"]["namespace"].as_str()),
        ("ADDED", Some("Service"), Some("other"))
    );
    let (t, modified) = w.event().await;
    assert_eq!(
        (t.as_str(), modified["spec"]["ports"][0]["port"].as_u64()),
        ("MODIFIED", Some(8080))
    );
    assert_eq!(modified["metadata"]["generation"], 2);
    let (t, deleted) = w.event().await;
    assert_eq!((t.as_str(), deleted["metadata"]["name"].as_str()), ("DELETED", Some("web")));
    assert!(
        rv(&added) < rv(&modified) && rv(&modified) < rv(&deleted),
        "resourceVersions increase"
    );
    assert_eq!(rv(&deleted), server.resource_version(), "a delete gets its own resourceVersion");

    // A watch without resourceVersion starts with synthetic ADDED events for the current state.
    let mut w = Watch::open(&server, "/api/v1/namespaces/other/services?watch=1").await;
    let (t, obj) = w.event().await;
    assert_eq!((t.as_str(), obj["metadata"]["name"].as_str()), ("ADDED", Some("db")));

    // Single objects and not-found Status bodies.
    let (status, obj) = get_json(&server, "/api/v1/namespaces/other/services/db").await;
    assert_eq!((status, obj["metadata"]["name"].as_str()), (StatusCode::OK, Some("db")));
    let (status, st) = get_json(&server, "/api/v1/namespaces/other/services/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        (st["kind"].as_str(), st["reason"].as_str(), st["code"].as_u64()),
        (Some("Status"), Some("NotFound"), Some(404))
    );
    let counts = server.counts();
    assert_eq!((counts.list, counts.watch, counts.get), (1, 2, 2));
}

#[tokio::test]
async fn pagination_and_selectors() {
    let server = ApiServer::start().await.unwrap();
    for (ns, name, app) in [
        ("a", "s1", "web"),
        ("a", "s2", "db"),
        ("b", "s3", "web"),
        ("b", "s4", "web"),
        ("c", "s5", "db"),
    ] {
        server.create(&service(ns, name, app)).unwrap();
    }
    let (_, p1) = get_json(&server, "/api/v1/services?limit=2").await;
    assert_eq!(names(&p1), ["s1", "s2"]);
    assert_eq!(p1["metadata"]["remainingItemCount"], 3);
    let token = p1["metadata"]["continue"].as_str().unwrap().to_string();
    // Changes after the first page do not show in later pages: the list is one snapshot.
    server.create(&service("d", "s6", "web")).unwrap();
    let (_, p2) = get_json(&server, &format!("/api/v1/services?limit=2&continue={token}")).await;
    assert_eq!(names(&p2), ["s3", "s4"]);
    let token = p2["metadata"]["continue"].as_str().unwrap().to_string();
    let (_, p3) = get_json(&server, &format!("/api/v1/services?limit=2&continue={token}")).await;
    assert_eq!(names(&p3), ["s5"]);
    assert!(p3["metadata"].get("continue").is_none());
    assert_eq!(p1["metadata"]["resourceVersion"], p3["metadata"]["resourceVersion"]);

    let (_, web) = get_json(&server, "/api/v1/services?labelSelector=app%3Dweb").await;
    assert_eq!(names(&web), ["s1", "s3", "s4", "s6"]);
    let (_, not_web_in_b) =
        get_json(&server, "/api/v1/namespaces/b/services?labelSelector=app!%3Dweb").await;
    assert_eq!(names(&not_web_in_b), Vec::<String>::new());
    let (_, by_name) = get_json(&server, "/api/v1/services?fieldSelector=metadata.name%3Ds5").await;
    assert_eq!(names(&by_name), ["s5"]);
    let (status, _) = get_json(&server, "/api/v1/services?labelSelector=app%20in%20web").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn compaction_answers_410() {
    let server = ApiServer::start().await.unwrap();
    let first = server.create(&service("default", "a", "web")).unwrap();
    server.create(&service("default", "b", "web")).unwrap();
    server.create(&service("default", "c", "web")).unwrap();
    let (_, p1) = get_json(&server, "/api/v1/services?limit=1").await;
    let token = p1["metadata"]["continue"].as_str().unwrap().to_string();

    server.compact();
    let mut w = Watch::open(
        &server,
        &format!("/api/v1/services?watch=true&resourceVersion={}", rv(&first)),
    )
    .await;
    let (t, status) = w.event().await;
    assert_eq!(t, "ERROR");
    assert_eq!(
        (status["kind"].as_str(), status["code"].as_u64(), status["reason"].as_str()),
        (Some("Status"), Some(410), Some("Expired"))
    );
    assert!(w.next().await.unwrap().is_none(), "the stream ends after the ERROR event");

    let (status, body) =
        get_json(&server, &format!("/api/v1/services?limit=1&continue={token}")).await;
    assert_eq!((status, body["code"].as_u64()), (StatusCode::GONE, Some(410)));

    // Watching from the current resourceVersion works and sees new changes.
    let mut w = Watch::open(
        &server,
        &format!("/api/v1/services?watch=true&resourceVersion={}", server.resource_version()),
    )
    .await;
    server.create(&service("default", "d", "web")).unwrap();
    assert_eq!(w.event().await.0, "ADDED");
    assert_eq!(server.counts().gone, 2);
}

#[tokio::test]
async fn bookmarks_timeouts_and_streaming_lists() {
    let opts = Options { bookmark_interval: Duration::from_millis(100), ..Options::default() };
    let server = ApiServer::start_with(opts).await.unwrap();
    server.create(&service("default", "a", "web")).unwrap();
    let now = server.resource_version();
    let mut w = Watch::open(
        &server,
        &format!("/api/v1/services?watch=true&allowWatchBookmarks=true&resourceVersion={now}"),
    )
    .await;
    server.create(&service("default", "b", "web")).unwrap();
    assert_eq!(w.event().await.0, "ADDED");
    let (t, bm) = w.event().await;
    assert_eq!(
        (t.as_str(), bm["kind"].as_str(), bm["apiVersion"].as_str()),
        ("BOOKMARK", Some("Service"), Some("v1"))
    );
    assert_eq!(rv(&bm), server.resource_version());

    // No bookmarks unless asked; timeoutSeconds ends the stream cleanly.
    let mut w = Watch::open(
        &server,
        &format!(
            "/api/v1/services?watch=true&timeoutSeconds=1&resourceVersion={}",
            server.resource_version()
        ),
    )
    .await;
    assert!(w.next().await.unwrap().is_none(), "stream should end after 1 s with no event");

    // Streaming list: current objects, then a bookmark marking the end of the initial events.
    let mut w = Watch::open(&server, "/api/v1/services?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true").await;
    assert_eq!(w.event().await.1["metadata"]["name"], "a");
    assert_eq!(w.event().await.1["metadata"]["name"], "b");
    let (t, bm) = w.event().await;
    assert_eq!(
        (t.as_str(), bm["metadata"]["annotations"]["k8s.io/initial-events-end"].as_str()),
        ("BOOKMARK", Some("true"))
    );
}

#[tokio::test]
async fn failures_pause_and_disconnects() {
    let server = ApiServer::start().await.unwrap();
    server.fail_next(2, 500);
    let (status, body) = get_json(&server, "/api/v1/nodes").await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, Some("InternalError"))
    );
    assert_eq!(get_json(&server, "/api/v1/nodes").await.0, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(get_json(&server, "/api/v1/nodes").await.0, StatusCode::OK);
    server.fail_next(1, 429);
    let resp = send(&server, "/api/v1/nodes").await;
    assert_eq!(
        (resp.status(), resp.headers()["retry-after"].to_str().unwrap()),
        (StatusCode::TOO_MANY_REQUESTS, "1")
    );
    assert_eq!(server.counts().injected_failures, 3);

    let now = server.resource_version();
    let mut w =
        Watch::open(&server, &format!("/api/v1/nodes?watch=true&resourceVersion={now}")).await;
    assert_eq!(server.active_watches(), 1);
    assert_eq!(server.disconnect_watches(), 1);
    assert!(w.next().await.is_err(), "a cut watch is an error, not a clean end");

    let _w = Watch::open(&server, &format!("/api/v1/nodes?watch=true&resourceVersion={now}")).await;
    server.pause().await;
    assert_eq!(server.active_watches(), 0);
    let uri = format!("{}/api/v1/nodes", server.url()).parse().unwrap();
    let err = client().get(uri).await.expect_err("paused server must be unreachable");
    assert!(err.is_connect(), "expected connection refused, got {err:?}");
    server
        .create(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}))
        .unwrap();
    server.resume().await.unwrap();
    let (status, list) = get_json(&server, "/api/v1/nodes").await;
    assert_eq!((status, names(&list)), (StatusCode::OK, vec!["n1".to_string()]));
}

#[tokio::test]
async fn manifests_and_typed_objects() {
    use k8s_openapi::api::core::v1::Node;
    let server = ApiServer::start().await.unwrap();
    let yaml = "apiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n---\n\
                apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: web}\naddressType: IPv4\n\
                endpoints: [{addresses: [10.244.1.10]}]\n---\n\
                apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Node, metadata: {name: node1, namespace: ignored}}\n";
    let applied = server.apply_yaml(yaml).unwrap();
    assert_eq!(applied.len(), 3);
    let node: Node = server.get(None, "node1").unwrap().unwrap();
    assert!(node.metadata.namespace.is_none(), "cluster-scoped objects have no namespace");
    let (_, slices) =
        get_json(&server, "/apis/discovery.k8s.io/v1/namespaces/web/endpointslices").await;
    assert_eq!(
        (slices["kind"].as_str(), names(&slices)),
        (Some("EndpointSliceList"), vec!["web-1".to_string()])
    );
    // Re-applying unchanged objects is a no-op; a bad document is named.
    let before = server.resource_version();
    server.apply_yaml(yaml).unwrap();
    assert_eq!(server.resource_version(), before);
    let err =
        server.apply_yaml("apiVersion: v1\nkind: Service\nmetadata: {namespace: x}\n").unwrap_err();
    assert_eq!(err.to_string(), "manifest document 0: Service: metadata.name is missing or empty");
    let err =
        server.apply_yaml("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n").unwrap_err();
    assert!(err.to_string().contains("ConfigMap"), "{err}");
}
