//! The healthCheckNodePort responder of externalTrafficPolicy: Local
//! LoadBalancer services, with kube-proxy's semantics: an HTTP server on each
//! such port of this node answers any GET with 200 when the service has a
//! ready endpoint on this node and 503 when it has none, and a JSON body
//! naming the service and its `localEndpoints` count — so the external load
//! balancer sends traffic only to nodes that can serve it locally. Ports come
//! and go with the services ([`HealthServer::update`], fed from
//! [`crate::translate::Translator::take_health_checks`]); each port is one
//! small task on the agent's runtime.
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
                    warn!(%addr, service = %check.service, error = %e,
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
