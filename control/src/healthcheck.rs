//! The healthCheckNodePort responder of externalTrafficPolicy: Local
//! LoadBalancer services, with kube-proxy's semantics: an HTTP server on each
//! such port of this node answers any GET with 200 when the service has a
//! ready endpoint on this node and 503 when it has none, and a JSON body
//! naming the service and its `localEndpoints` count — so the external load
//! balancer sends traffic only to nodes that can serve it locally. Ports come
//! and go with the services ([`HealthServer::update`], fed from
//! [`crate::translate::Translator::take_health_checks`]); each port is one
//! small task on the agent's runtime. Also the node's own kube-proxy-compatible
//! health endpoint (`:10256/healthz`, [`serve_node_health`]).
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use crate::translate::HealthCheck;

const MAX_REQUEST: usize = 4096;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// One served port.
struct Port {
    check: Arc<Mutex<HealthCheck>>,
    task: JoinHandle<()>,
}

/// The responders of this node; dropping it stops every one.
pub struct HealthServer {
    addr: IpAddr,
    ports: HashMap<u16, Port>,
    /// The proxy's own health (`serviceProxyHealthy`): a 503 while false.
    healthy: Arc<AtomicBool>,
}

impl std::fmt::Debug for HealthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthServer").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        for p in self.ports.values() {
            p.task.abort();
        }
    }
}

impl HealthServer {
    /// Responders listening on `addr` (the unspecified address: every
    /// address of the node, both families where the kernel allows).
    pub fn new(addr: IpAddr) -> Self {
        HealthServer { addr, ports: HashMap::new(), healthy: Arc::new(AtomicBool::new(true)) }
    }

    /// Whether the proxy itself is healthy (kube-proxy: recently synced).
    pub fn set_proxy_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Ports served now.
    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.ports.keys().copied().collect();
        p.sort_unstable();
        p
    }

    /// Serves exactly `checks`: new ports are opened, gone ones closed, the
    /// counts of the others updated in place. Must run on a tokio runtime.
    pub fn update(&mut self, checks: Vec<HealthCheck>) {
        let mut want: HashMap<u16, HealthCheck> = HashMap::new();
        for c in checks {
            if let Some(other) = want.get(&c.port) {
                warn!(port = c.port, service = %c.service, other = %other.service,
                    "healthCheckNodePort used by two services; serving the first");
                continue;
            }
            want.insert(c.port, c);
        }
        self.ports.retain(|port, p| {
            let keep = want.contains_key(port);
            if !keep {
                p.task.abort();
                info!(port, "health check port closed");
            }
            keep
        });
        for (port, check) in want {
            if let Some(p) = self.ports.get(&port) {
                *p.check.lock().unwrap_or_else(PoisonError::into_inner) = check;
                continue;
            }
            let addr = SocketAddr::new(self.addr, port);
            let listener = match bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    warn!(%addr, service = %check.service, error = %lb::report::Chain(&e),
                        "cannot open the healthCheckNodePort; the load balancer will see this node as down");
                    continue;
                }
            };
            info!(%addr, service = %check.service, local_endpoints = check.local_endpoints,
                "serving health checks");
            let shared = Arc::new(Mutex::new(check));
            let task = tokio::spawn(serve(listener, shared.clone(), self.healthy.clone()));
            self.ports.insert(port, Port { check: shared, task });
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = std::net::TcpListener::bind(addr)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket)
}

async fn serve(listener: TcpListener, check: Arc<Mutex<HealthCheck>>, healthy: Arc<AtomicBool>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "health check accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let check = check.clone();
        let healthy = healthy.load(Ordering::Relaxed);
        tokio::spawn(async move {
            let answer = tokio::time::timeout(IO_TIMEOUT, answer(stream, &check, healthy)).await;
            if let Ok(Err(e)) = answer {
                debug!(%peer, error = %e, "health check request");
            }
        });
    }
}

/// Reads one request head and answers it (any method and path, as kube-proxy).
async fn answer(
    mut stream: TcpStream,
    check: &Mutex<HealthCheck>,
    healthy: bool,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let c = check.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let response = response(&c, healthy);
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The HTTP response kube-proxy gives for `c`.
pub fn response(c: &HealthCheck, healthy: bool) -> String {
    let body = serde_json::json!({
        "service": {
            "namespace": c.service.namespace.as_deref().unwrap_or("default"),
            "name": c.service.name,
        },
        "localEndpoints": c.local_endpoints,
        "serviceProxyHealthy": healthy,
    })
    .to_string();
    let status =
        if c.local_endpoints > 0 && healthy { "200 OK" } else { "503 Service Unavailable" };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n\
         X-Load-Balancing-Endpoint-Weight: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        c.local_endpoints,
        body.len()
    )
}

/// How long a change may wait for the datapath before the node reports
/// itself unhealthy on /healthz (kube-proxy's default: 2 minutes).
pub const NODE_HEALTH_TIMEOUT: Duration = Duration::from_secs(120);

/// The proxy's freshness, kube-proxy's `ProxierHealthServer` model: the time
/// the datapath last matched the source and the oldest change still waiting.
#[derive(Debug, Default)]
pub struct ProxyFreshness {
    inner: Mutex<Freshness>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Freshness {
    last_updated: Option<std::time::SystemTime>,
    oldest_pending: Option<std::time::SystemTime>,
}

impl ProxyFreshness {
    /// A change from the source is waiting for the datapath.
    pub fn queued(&self) {
        let mut f = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f.oldest_pending.get_or_insert_with(std::time::SystemTime::now);
    }

    /// The datapath matches the source (applied, or nothing to apply).
    pub fn updated(&self) {
        let mut f = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f.last_updated = Some(std::time::SystemTime::now());
        f.oldest_pending = None;
    }

    fn get(&self) -> Freshness {
        *self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn rfc3339(t: Option<std::time::SystemTime>) -> String {
    let t = t.unwrap_or(std::time::UNIX_EPOCH);
    k8s_openapi::jiff::Timestamp::try_from(t).map(|t| t.to_string()).unwrap_or_default()
}

/// kube-proxy's node health answer (`--healthz-bind-address`, port 10256),
/// which cloud load balancers probe: `/healthz` and `/livez` give 200 while
/// no change has waited for the datapath longer than `timeout` (none
/// pending, or pending for less), else 503; the JSON body carries
/// `lastUpdated` and `currentTime` (and `nodeEligible` on /healthz: xlb does
/// not drain nodes, always true). Any other path: 404.
pub fn node_health_response(
    path: &str,
    fresh: &ProxyFreshness,
    timeout: Duration,
    now: std::time::SystemTime,
) -> String {
    let f = fresh.get();
    let healthy =
        f.oldest_pending.is_none_or(|t| now.duration_since(t).unwrap_or_default() < timeout);
    let mut body = serde_json::json!({
        "lastUpdated": rfc3339(f.last_updated),
        "currentTime": rfc3339(Some(now)),
    });
    let status = match path {
        "/healthz" | "/livez" => {
            if path == "/healthz" {
                body["nodeEligible"] = serde_json::Value::Bool(true);
            }
            if healthy {
                "200 OK"
            } else {
                "503 Service Unavailable"
            }
        }
        _ => {
            let msg = "404 page not found\n";
            return format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{msg}",
                msg.len()
            );
        }
    };
    let body = body.to_string();
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Serves [`node_health_response`] on `addr` until the task is aborted.
/// Must run on a tokio runtime; a port already taken (kube-proxy still
/// running) is an error for the caller to report.
pub fn serve_node_health(
    addr: SocketAddr,
    fresh: Arc<ProxyFreshness>,
) -> std::io::Result<JoinHandle<()>> {
    let listener = bind(addr)?;
    Ok(tokio::spawn(async move {
        loop {
            let (mut stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, "node health accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let fresh = fresh.clone();
            tokio::spawn(async move {
                let answer = async {
                    let path = read_path(&mut stream).await?;
                    let r = node_health_response(
                        &path,
                        &fresh,
                        NODE_HEALTH_TIMEOUT,
                        std::time::SystemTime::now(),
                    );
                    stream.write_all(r.as_bytes()).await?;
                    stream.shutdown().await
                };
                if let Ok(Err(e)) = tokio::time::timeout(IO_TIMEOUT, answer).await {
                    debug!(%peer, error = %e, "node health request");
                }
            });
        }
    }))
}

/// Reads a request head; its path (query dropped).
async fn read_path(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let target = head.lines().next().unwrap_or("").split_whitespace().nth(1).unwrap_or("");
    Ok(target.split('?').next().unwrap_or("").to_string())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::*;

    fn code(r: &str) -> &str {
        r.split_whitespace().nth(1).unwrap()
    }

    fn body(r: &str) -> serde_json::Value {
        serde_json::from_str(r.split_once("\r\n\r\n").unwrap().1).unwrap()
    }

    #[test]
    fn node_health_is_kube_proxys() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let f = ProxyFreshness::default();
        // Nothing pending: healthy, even before the first update.
        let r = node_health_response("/healthz", &f, SHORT, now);
        assert_eq!(code(&r), "200", "{r}");
        assert_eq!(body(&r)["currentTime"], "2023-11-14T22:13:20Z");
        assert_eq!(body(&r)["nodeEligible"], true);
        f.updated();
        f.inner.lock().unwrap().last_updated = Some(now - Duration::from_secs(5));
        // A change pending for less than the timeout: still healthy.
        f.inner.lock().unwrap().oldest_pending = Some(now - Duration::from_secs(10));
        assert_eq!(code(&node_health_response("/livez", &f, SHORT, now)), "200");
        // Pending for longer: 503 on /healthz and /livez.
        f.inner.lock().unwrap().oldest_pending = Some(now - SHORT);
        let r = node_health_response("/healthz", &f, SHORT, now);
        assert_eq!(code(&r), "503", "{r}");
        assert_eq!(body(&r)["lastUpdated"], "2023-11-14T22:13:15Z");
        assert_eq!(code(&node_health_response("/livez", &f, SHORT, now)), "503");
        assert!(body(&node_health_response("/livez", &f, SHORT, now))
            .get("nodeEligible")
            .is_none());
        // Applied: healthy again.
        f.updated();
        let r = node_health_response("/healthz", &f, SHORT, SystemTime::now());
        assert_eq!(code(&r), "200", "{r}");
        assert_eq!(code(&node_health_response("/metrics", &f, SHORT, now)), "404");
    }

    const SHORT: Duration = Duration::from_secs(60);
}
