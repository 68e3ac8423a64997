//! A small HTTP/1.1 client over std `TcpStream` with bounded timeouts, and a
//! many-connections driver that counts which backend answered. The lab's
//! nginx answers every GET with its pod name, so the body names the pod.
//! Sockets live in the calling thread's namespace: run inside
//! [`crate::Lab::in_ns`] (worker threads inherit it).
use std::{
    collections::BTreeMap,
    io::{self, BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

/// Default bound on connect, each read and each write.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("{addr}: {op}: {source}")]
    Io { addr: SocketAddr, op: &'static str, source: io::Error },
    #[error("{addr}: bad response: {reason}")]
    BadResponse { addr: SocketAddr, reason: String },
    #[error("{addr}: HTTP status {status}")]
    Status { addr: SocketAddr, status: u16 },
}

/// One keep-alive HTTP/1.1 connection.
#[derive(Debug)]
pub struct Conn {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, HttpError> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|source| HttpError::Connect { addr, source })?;
        let io = |source| HttpError::Io { addr, op: "socket options", source };
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        Ok(Conn { addr, reader: BufReader::new(stream) })
    }

    /// The connection's local address (the client side of the 4-tuple).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.reader.get_ref().local_addr()
    }

    /// `GET /`; returns the trimmed body (the pod name). With `close`, asks
    /// the server to close the connection afterwards.
    pub fn get(&mut self, close: bool) -> Result<String, HttpError> {
        let addr = self.addr;
        let host = match addr {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        let connection = if close { "close" } else { "keep-alive" };
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: {connection}\r\n\r\n");
        self.reader.get_mut().write_all(req.as_bytes()).map_err(|source| HttpError::Io {
            addr,
            op: "write request",
            source,
        })?;
        self.read_response()
    }

    fn read_response(&mut self) -> Result<String, HttpError> {
        let addr = self.addr;
        let bad = |reason: String| HttpError::BadResponse { addr, reason };
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(|source| HttpError::Io {
            addr,
            op: "read status line",
            source,
        })?;
        if n == 0 {
            return Err(bad("connection closed before the status line".into()));
        }
        let status: u16 = line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| line.strip_prefix("HTTP/1.0 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| bad(format!("status line {:?}", line.trim_end())))?;
        let mut length: Option<usize> = None;
        loop {
            line.clear();
            let n = self.reader.read_line(&mut line).map_err(|source| HttpError::Io {
                addr,
                op: "read header",
                source,
            })?;
            if n == 0 {
                return Err(bad("connection closed inside the headers".into()));
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(
                        value
                            .trim()
                            .parse()
                            .map_err(|_| bad(format!("Content-Length {value:?}")))?,
                    );
                }
            }
        }
        let length = length.ok_or_else(|| bad("no Content-Length".into()))?;
        if length > 64 * 1024 {
            return Err(bad(format!("Content-Length {length} is larger than 64 KiB")));
        }
        let mut body = vec![0; length];
        io::Read::read_exact(&mut self.reader, &mut body).map_err(|source| HttpError::Io {
            addr,
            op: "read body",
            source,
        })?;
        if status != 200 {
            return Err(HttpError::Status { addr, status });
        }
        Ok(String::from_utf8_lossy(&body).trim().to_string())
    }
}

/// One request on a fresh connection; returns the name of the pod that
/// answered.
pub fn get(addr: SocketAddr) -> Result<String, HttpError> {
    Conn::connect(addr, DEFAULT_TIMEOUT)?.get(true)
}

/// What [`drive`] does.
#[derive(Clone, Debug)]
pub struct DriveSpec {
    /// Requests go round-robin over these.
    pub targets: Vec<SocketAddr>,
    /// Total requests, each on its own connection.
    pub requests: usize,
    /// Worker threads (connections in flight at once).
    pub concurrency: usize,
    pub timeout: Duration,
}

impl DriveSpec {
    pub fn new(targets: Vec<SocketAddr>, requests: usize) -> Self {
        DriveSpec { targets, requests, concurrency: 8, timeout: DEFAULT_TIMEOUT }
    }
}

/// Where requests landed, what failed, and how long they took.
#[derive(Debug, Default)]
pub struct DriveReport {
    /// Answers per pod name.
    pub per_backend: BTreeMap<String, usize>,
    /// Answers per (target, pod name).
    pub per_target: BTreeMap<(SocketAddr, String), usize>,
    pub failures: Vec<HttpError>,
    /// Per successful request: connect + request + response.
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
}

impl DriveReport {
    pub fn succeeded(&self) -> usize {
        self.latencies.len()
    }
    /// Latency at quantile `q` (0.0..=1.0) of successful requests.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        let mut l = self.latencies.clone();
        l.sort();
        let i = ((l.len() as f64 - 1.0) * q.clamp(0.0, 1.0)).round() as usize;
        l.get(i).copied()
    }
}

/// Sends `spec.requests` requests, each on a new connection, from
/// `spec.concurrency` threads.
pub fn drive(spec: &DriveSpec) -> DriveReport {
    let next = AtomicUsize::new(0);
    let report = Mutex::new(DriveReport::default());
    let start = Instant::now();
    if !spec.targets.is_empty() {
        std::thread::scope(|s| {
            for _ in 0..spec.concurrency.max(1) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= spec.requests {
                        break;
                    }
                    let target = spec.targets[i % spec.targets.len()];
                    let t0 = Instant::now();
                    let result = Conn::connect(target, spec.timeout).and_then(|mut c| c.get(true));
                    let took = t0.elapsed();
                    let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
                    match result {
                        Ok(pod) => {
                            *r.per_target.entry((target, pod.clone())).or_default() += 1;
                            *r.per_backend.entry(pod).or_default() += 1;
                            r.latencies.push(took);
                        }
                        Err(e) => r.failures.push(e),
                    }
                });
            }
        });
    }
    let mut report = report.into_inner().unwrap_or_else(|p| p.into_inner());
    report.elapsed = start.elapsed();
    report
}
