//! The HTTP side of the metrics endpoint: a small HTTP/1.1 server on its own
//! thread (not on the reconcile runtime, so a scrape never waits for an
//! apply and /healthz can report a stuck runtime). One request per
//! connection, GET only, bounded request size and socket timeouts.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context;
use prometheus_client::{encoding::text::encode, registry::Registry};
use tracing::{debug, warn};

use super::ControlMetrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST: usize = 8192;

/// The serving thread; stops (and joins) when dropped.
#[derive(Debug)]
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` (an error if taken: two agents must not share one
    /// endpoint silently) and serves until dropped.
    pub fn start(
        addr: SocketAddr,
        registry: Registry,
        control: &'static ControlMetrics,
    ) -> anyhow::Result<Server> {
        let listener = TcpListener::bind(addr)
            .with_context(|| format!("binding the metrics endpoint {addr} (--metrics-addr)"))?;
        listener.set_nonblocking(true).context("metrics listener: nonblocking")?;
        let addr = listener.local_addr().context("metrics listener address")?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("xlb-metrics".into())
            .spawn(move || serve(listener, registry, control, &flag))
            .context("starting the metrics thread")?;
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz, /status");
        Ok(Server { stop, thread: Some(thread) })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: TcpListener, registry: Registry, control: &ControlMetrics, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = handle(stream, &registry, control) {
                    debug!(%peer, error = %e, "metrics request");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                warn!(error = %e, "metrics endpoint: accept failed");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Reads the request head (up to the blank line), returns method and path.
fn read_head(stream: &mut TcpStream) -> std::io::Result<(String, String)> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "request too large"));
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let path = target.split('?').next().unwrap_or("").to_string();
    Ok((method, path))
}

fn handle(
    mut stream: TcpStream,
    registry: &Registry,
    control: &ControlMetrics,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let (method, path) = read_head(&mut stream)?;
    if method == "GET" && path == "/flows" {
        // Streams until the client goes, on its own thread (`xlb observe`).
        crate::flows::subscribe(stream);
        return Ok(());
    }
    let (status, ctype, body) = if method != "GET" && method != "HEAD" {
        ("405 Method Not Allowed", "text/plain", "GET only\n".to_string())
    } else {
        match path.as_str() {
            "/metrics" => {
                let mut body = String::new();
                match encode(&mut body, registry) {
                    Ok(()) => ("200 OK", OPENMETRICS, body),
                    Err(_) => {
                        ("500 Internal Server Error", "text/plain", "encoding failed\n".into())
                    }
                }
            }
            "/healthz" => match control.health.live() {
                Ok(()) => ("200 OK", "text/plain", "ok\n".into()),
                Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
            },
            "/status" => ("200 OK", "text/plain", control.health.status()),
            "/readyz" => match control.health.ready() {
                Ok(()) => ("200 OK", "text/plain", "ready\n".into()),
                Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
            },
            _ => (
                "404 Not Found",
                "text/plain",
                "not found: try /metrics, /healthz, /readyz, /status or /flows\n".into(),
            ),
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}
