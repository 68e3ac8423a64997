//! The HTTP face of the double: serves connections, routes GET requests to get, list and
//! watch, and answers the way kube-apiserver does: JSON lists with `metadata.resourceVersion`
//! and `continue`, chunked newline-delimited watch streams, `Status` bodies for errors.

use crate::resource::{route, Route};
use crate::selector::Selector;
use crate::store::{status_object, Filter, ListError, ListPage, Obj, WatchFrom, WatchMsg};
use crate::Shared;
use bytes::Bytes;
use http_body::Frame;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Sleep;

/// Accepts connections until the task is aborted (pause or drop drops the listener).
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                // Subscribed here, not in the task: a pause that follows this accept must
                // cut the connection even if its task has not run yet.
                let kill = shared.kill.subscribe();
                tokio::spawn(serve(stream, shared.clone(), kill));
            }
            Err(e) => {
                tracing::warn!(error = %e, "apiserver double: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves one HTTP/1.1 connection until the client closes it or the server cuts every
/// connection (pause, drop).
async fn serve(stream: TcpStream, shared: Arc<Shared>, mut kill: watch::Receiver<u64>) {
    let svc_shared = shared.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = svc_shared.clone();
        async move { Ok::<_, Infallible>(respond(&shared, req.method(), req.uri())) }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        // A cut connection must not serve one more request first.
        biased;
        _ = kill.changed() => {}
        _ = conn => {}
    }
}

/// A response body: a whole JSON document, or a watch stream.
pub(crate) enum Body {
    Full(Option<Bytes>),
    Watch(WatchBody),
}

pub(crate) struct WatchBody {
    rx: mpsc::UnboundedReceiver<WatchMsg>,
    deadline: Pin<Box<Sleep>>,
    _guard: WatchGuard,
}

/// Unregisters a watch when hyper drops its body (client gone, timeout, cut).
struct WatchGuard {
    shared: Arc<Shared>,
    id: Option<u64>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.shared.lock().remove_watch(id);
        }
    }
}

/// The body error that makes hyper drop the connection mid-stream, without the final chunk.
#[derive(Debug, thiserror::Error)]
#[error("watch connection cut by the test")]
pub(crate) struct Cut;

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Watch(w) => match w.rx.poll_recv(cx) {
                Poll::Ready(Some(WatchMsg::Line(line))) => Poll::Ready(Some(Ok(Frame::data(line)))),
                Poll::Ready(Some(WatchMsg::Abort)) => Poll::Ready(Some(Err(Cut))),
                Poll::Ready(None) => Poll::Ready(None),
                // timeoutSeconds elapsed: end the stream cleanly, as the server does.
                Poll::Pending => w.deadline.as_mut().poll(cx).map(|()| None),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Body::Full(Some(b)) => http_body::SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => http_body::SizeHint::with_exact(0),
            Body::Watch(_) => http_body::SizeHint::default(),
        }
    }
}

fn json_response(code: StatusCode, body: &impl Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(body).expect("response bodies are plain JSON");
    let mut resp = Response::new(Body::Full(Some(Bytes::from(bytes))));
    *resp.status_mut() = code;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn status_response(
    code: u16,
    reason: &str,
    message: &str,
    details: Option<Value>,
) -> Response<Body> {
    let mut status = status_object(code, reason, message);
    if let Some(d) = details {
        status["details"] = d;
    }
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &status)
}

fn bad_request(message: &str) -> Response<Body> {
    status_response(400, "BadRequest", message, None)
}

fn reason_for(code: u16) -> (&'static str, &'static str) {
    match code {
        429 => ("TooManyRequests", "Too many requests, please try again later."),
        503 => ("ServiceUnavailable", "The server is currently unable to handle the request"),
        504 => ("Timeout", "The server was unable to return a response in the time allotted"),
        _ => ("InternalError", "Internal error occurred: injected failure"),
    }
}

fn respond(shared: &Arc<Shared>, method: &Method, uri: &Uri) -> Response<Body> {
    let path = uri.path();
    if let Some(code) = shared.take_injected_failure() {
        shared.counters.injected_failures.fetch_add(1, Ordering::Relaxed);
        let (reason, message) = reason_for(code);
        let mut resp = status_response(code, reason, message, None);
        if code == 429 {
            resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        return resp;
    }
    if method != Method::GET {
        shared.counters.other.fetch_add(1, Ordering::Relaxed);
        return status_response(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            None,
        );
    }
    match path {
        "/version" => {
            shared.counters.other.fetch_add(1, Ordering::Relaxed);
            return json_response(StatusCode::OK, &version_info());
        }
        "/healthz" | "/livez" | "/readyz" => {
            shared.counters.other.fetch_add(1, Ordering::Relaxed);
            return Response::new(Body::Full(Some(Bytes::from_static(b"ok"))));
        }
        _ => {}
    }
    let Some(route) = route(path) else {
        shared.counters.other.fetch_add(1, Ordering::Relaxed);
        return status_response(
            404,
            "NotFound",
            "the server could not find the requested resource",
            Some(json!({})),
        );
    };
    let query: HashMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().collect();
    let q = |k: &str| query.get(k).map(String::as_str);
    if let Some(name) = &route.name {
        shared.counters.get.fetch_add(1, Ordering::Relaxed);
        let obj = shared.lock().get(route.resource, route.namespace.as_deref(), name);
        return match obj {
            Some(obj) => json_response(StatusCode::OK, &*obj),
            None => status_response(
                404,
                "NotFound",
                &format!("{} \"{name}\" not found", route.resource.plural),
                Some(json!({ "name": name, "kind": route.resource.plural })),
            ),
        };
    }
    let labels = match Selector::labels(q("labelSelector").unwrap_or("")) {
        Ok(s) => s,
        Err(e) => return bad_request(&e),
    };
    let fields = match Selector::fields(q("fieldSelector").unwrap_or("")) {
        Ok(s) => s,
        Err(e) => return bad_request(&e),
    };
    let filter =
        Filter { resource: route.resource, namespace: route.namespace.clone(), labels, fields };
    if matches!(q("watch"), Some("true" | "1")) {
        shared.counters.watch.fetch_add(1, Ordering::Relaxed);
        watch(shared, filter, &q)
    } else {
        shared.counters.list.fetch_add(1, Ordering::Relaxed);
        list(shared, &route, &filter, &q)
    }
}

fn watch<'a>(
    shared: &Arc<Shared>,
    filter: Filter,
    q: &impl Fn(&str) -> Option<&'a str>,
) -> Response<Body> {
    let send_initial = q("sendInitialEvents") == Some("true");
    let from = match q("resourceVersion") {
        _ if send_initial => WatchFrom::Current { initial_events_end: true },
        None | Some("" | "0") => WatchFrom::Current { initial_events_end: false },
        Some(rv) => match rv.parse() {
            Ok(rv) => WatchFrom::After(rv),
            Err(_) => return bad_request(&format!("invalid resource version: {rv:?}")),
        },
    };
    let timeout = match q("timeoutSeconds").map(str::parse::<u64>) {
        None => shared.opts.default_watch_timeout,
        Some(Ok(s)) => Duration::from_secs(s),
        Some(Err(_)) => return bad_request("invalid timeoutSeconds"),
    };
    let bookmarks = q("allowWatchBookmarks") == Some("true");
    let (id, rx) = shared.lock().watch(filter, from, bookmarks);
    let body = WatchBody {
        rx,
        deadline: Box::pin(tokio::time::sleep(timeout)),
        _guard: WatchGuard { shared: shared.clone(), id },
    };
    let mut resp = Response::new(Body::Watch(body));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn list<'a>(
    shared: &Arc<Shared>,
    route: &Route,
    filter: &Filter,
    q: &impl Fn(&str) -> Option<&'a str>,
) -> Response<Body> {
    let limit = match q("limit").map(str::parse::<usize>) {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(_)) => return bad_request("invalid limit"),
    };
    let page = shared.lock().list(filter, limit, q("continue").filter(|c| !c.is_empty()));
    match page {
        Ok(page) => json_response(StatusCode::OK, &ListBody { route, page: &page }),
        Err(ListError::Expired) => {
            shared.counters.gone.fetch_add(1, Ordering::Relaxed);
            status_response(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter.",
                None,
            )
        }
    }
}

/// A `…List` document. Items are written without `kind`/`apiVersion`, as the server does.
struct ListBody<'a> {
    route: &'a Route,
    page: &'a ListPage,
}

impl Serialize for ListBody<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Item<'a>(&'a Obj);
        impl Serialize for Item<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let fields = self.0.as_object().into_iter().flatten();
                let fields: Vec<_> =
                    fields.filter(|(k, _)| *k != "kind" && *k != "apiVersion").collect();
                let mut m = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
        let r = self.route.resource;
        let mut meta = json!({ "resourceVersion": self.page.rv.to_string() });
        if let Some(c) = &self.page.continue_token {
            meta["continue"] = c.clone().into();
        }
        if let Some(n) = self.page.remaining {
            meta["remainingItemCount"] = n.into();
        }
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("kind", &format!("{}List", r.kind))?;
        m.serialize_entry("apiVersion", &r.api_version())?;
        m.serialize_entry("metadata", &meta)?;
        m.serialize_entry("items", &self.page.items.iter().map(Item).collect::<Vec<_>>())?;
        m.end()
    }
}

fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-xlb-apiserver-double",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}
