//! `xlb-probe`: the lab's workload and client process. Pods run
//! `xlb-probe serve` on the ports their manifests declare (TCP: an HTTP
//! answer naming the pod; UDP: a datagram naming it); clients run
//! `xlb-probe tcp|udp|udp-hold TARGET` and print one JSON line per attempt:
//! what the socket saw (peer from getpeername, source from recvmsg, body,
//! or the errno of a failure). Real processes, so that the lab puts them in
//! a pod's network namespace and cgroup and xlb's socket programs see them.
//! std only: every address it reports is what the kernel returned.
//!
//! `--watch PID` (tcp, udp-hold): each timed line also carries the
//! scheduler's view of the request, read outside the timed span:
//! `wait_ns`, the time this thread and every thread of process PID (the
//! server) spent runnable but not running (run_delay of
//! /proc/.../schedstat), and `nivcsw`, this thread's involuntary context
//! switches (getrusage RUSAGE_THREAD). A benchmark tells with them a
//! request another process took the core from.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
    time::{Duration, Instant},
};

const USAGE: &str = "usage:
  xlb-probe serve --name NAME [--tcp PORT]... [--udp PORT]... [--serial]
  xlb-probe tcp ADDR:PORT [--count N] [--timeout-ms MS] [--watch PID]
  xlb-probe udp ADDR:PORT [--count N] [--connected] [--timeout-ms MS]
  xlb-probe udp-hold ADDR:PORT [--count N] [--interval-ms MS] [--timeout-ms MS] [--unconnected] [--watch PID]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xlb-probe: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

struct Opts {
    name: String,
    tcp: Vec<u16>,
    udp: Vec<u16>,
    count: usize,
    connected: bool,
    unconnected: bool,
    /// serve: answer each TCP connection on the accepting thread (one
    /// client at a time; benchmarks: no thread start per connection).
    serial: bool,
    timeout: Duration,
    interval: Duration,
    target: Option<SocketAddr>,
    /// tcp, udp-hold: the process whose scheduler waits count too (the server).
    watch: Option<u32>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        name: String::new(),
        tcp: Vec::new(),
        udp: Vec::new(),
        count: 1,
        connected: false,
        unconnected: false,
        serial: false,
        timeout: Duration::from_millis(2000),
        interval: Duration::from_millis(100),
        target: None,
        watch: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{a}: missing value"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{a} {v}: {e}"));
        match a.as_str() {
            "--name" => o.name = value()?,
            "--tcp" => o.tcp.push(num(value()?)? as u16),
            "--udp" => o.udp.push(num(value()?)? as u16),
            "--count" => o.count = num(value()?)? as usize,
            "--timeout-ms" => o.timeout = Duration::from_millis(num(value()?)?),
            "--interval-ms" => o.interval = Duration::from_millis(num(value()?)?),
            "--connected" => o.connected = true,
            "--unconnected" => o.unconnected = true,
            "--serial" => o.serial = true,
            "--watch" => o.watch = Some(num(value()?)? as u32),
            t if !t.starts_with("--") && o.target.is_none() => {
                o.target = Some(t.parse().map_err(|e| format!("{t}: {e}"))?)
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

fn run(args: &[String]) -> Result<(), String> {
    let (cmd, rest) = args.split_first().ok_or("no command")?;
    let o = parse(rest)?;
    let target = || o.target.ok_or("no target ADDR:PORT".to_string());
    match cmd.as_str() {
        "serve" => serve(&o),
        "tcp" => {
            let mut sched = o.watch.map(Sched::new);
            for _ in 0..o.count {
                let s0 = sched.as_mut().map(Sched::read);
                let r = tcp_once(target()?, o.timeout);
                report(r.map(|f| f + &sched_fields(&mut sched, s0)));
            }
            Ok(())
        }
        "udp" => {
            for _ in 0..o.count {
                report(udp_once(target()?, o.connected, o.timeout));
            }
            Ok(())
        }
        "udp-hold" => udp_hold(target()?, &o),
        other => Err(format!("unknown command {other}")),
    }
}

/// One outcome as a JSON line (flushed: the reader may be waiting for it).
fn report(r: Result<String, std::io::Error>) {
    let line = match r {
        Ok(fields) => format!("{{\"ok\":true,{fields}}}"),
        Err(e) => format!(
            "{{\"ok\":false,\"errno\":{},\"error\":{}}}",
            e.raw_os_error().unwrap_or(0),
            json_str(&e.to_string())
        ),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// connect, getpeername, one HTTP request, the body.
fn tcp_once(target: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect_timeout(&target, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let peer = s.peer_addr()?;
    let local = s.local_addr()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim();
    let t = t0.elapsed();
    Ok(format!(
        "\"peer\":\"{peer}\",\"local\":\"{local}\",\"body\":{},\"us\":{},\"ns\":{}",
        json_str(body),
        t.as_micros(),
        t.as_nanos()
    ))
}

fn bind_any(target: SocketAddr) -> std::io::Result<UdpSocket> {
    UdpSocket::bind(if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
}

/// One query: sendto (or connect + send), recvfrom; the source the kernel
/// reported, getpeername when connected.
fn udp_once(target: SocketAddr, connected: bool, timeout: Duration) -> std::io::Result<String> {
    let s = bind_any(target)?;
    s.set_read_timeout(Some(timeout))?;
    let mut peer = String::new();
    if connected {
        s.connect(target)?;
        peer = format!(",\"peer\":\"{}\"", s.peer_addr()?);
        s.send(b"query")?;
    } else {
        s.send_to(b"query", target)?;
    }
    let mut buf = [0u8; 512];
    let (n, from) = s.recv_from(&mut buf)?;
    let body = String::from_utf8_lossy(&buf[..n]);
    Ok(format!("\"from\":\"{from}\"{peer},\"body\":{}", json_str(body.trim())))
}

/// A UDP socket kept for `count` exchanges, one per interval: connected
/// (each line: getpeername, body; after a backend is removed the socket may
/// be destroyed: ECONNABORTED, then no destination), or with
/// `--unconnected` sendto/recvfrom on the one socket (each line: the
/// source recvfrom reported, body).
fn udp_hold(target: SocketAddr, o: &Opts) -> Result<(), String> {
    let s = bind_any(target).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(o.timeout)).map_err(|e| e.to_string())?;
    if !o.unconnected {
        if let Err(e) = s.connect(target) {
            report(Err(e));
            return Ok(());
        }
    }
    let mut sched = o.watch.map(Sched::new);
    for _ in 0..o.count {
        let s0 = sched.as_mut().map(Sched::read);
        let r = (|| {
            let t0 = Instant::now();
            let mut buf = [0u8; 512];
            let (n, seen) = if o.unconnected {
                s.send_to(b"query", target)?;
                let (n, from) = s.recv_from(&mut buf)?;
                (n, format!("\"from\":\"{from}\""))
            } else {
                let peer = s.peer_addr()?;
                s.send(b"query")?;
                (s.recv(&mut buf)?, format!("\"peer\":\"{peer}\""))
            };
            let body = String::from_utf8_lossy(&buf[..n]);
            let t = t0.elapsed();
            let (us, ns) = (t.as_micros(), t.as_nanos());
            Ok(format!("{seen},\"body\":{},\"us\":{us},\"ns\":{ns}", json_str(body.trim())))
        })();
        report(r.map(|f| f + &sched_fields(&mut sched, s0)));
        if !o.interval.is_zero() {
            std::thread::sleep(o.interval);
        }
    }
    Ok(())
}

/// The scheduler's counters of this thread and of a watched process's
/// threads (their list read once: a serial server's threads are fixed).
struct Sched {
    tasks: Vec<std::path::PathBuf>,
}

/// (run_delay ns summed over this thread and the watched threads, this
/// thread's involuntary context switches).
type SchedSample = (u64, i64);

impl Sched {
    fn new(pid: u32) -> Sched {
        let dir = format!("/proc/{pid}/task");
        let tasks = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path().join("schedstat")).collect())
            .unwrap_or_default();
        Sched { tasks }
    }

    fn read(&mut self) -> SchedSample {
        // schedstat: "sum_exec_runtime run_delay timeslices" (ns, ns, count).
        let delay = |p: &std::path::Path| -> u64 {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|t| t.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
                .unwrap_or(0)
        };
        let mut wait = delay(std::path::Path::new("/proc/thread-self/schedstat"));
        wait += self.tasks.iter().map(|t| delay(t)).sum::<u64>();
        // SAFETY: getrusage fills the zeroed struct.
        let nivcsw = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
            ru.ru_nivcsw
        };
        (wait, nivcsw)
    }
}

/// The JSON fields of a request's scheduler waits (none without --watch).
fn sched_fields(sched: &mut Option<Sched>, before: Option<SchedSample>) -> String {
    match (sched.as_mut(), before) {
        (Some(s), Some((w0, n0))) => {
            let (w1, n1) = s.read();
            format!(",\"wait_ns\":{},\"nivcsw\":{}", w1.saturating_sub(w0), n1 - n0)
        }
        _ => String::new(),
    }
}

/// Serves every port given, on both families, until killed.
fn serve(o: &Opts) -> Result<(), String> {
    if o.name.is_empty() || (o.tcp.is_empty() && o.udp.is_empty()) {
        return Err("serve needs --name and at least one port".into());
    }
    let mut threads = Vec::new();
    for &port in &o.tcp {
        for addr in [format!("0.0.0.0:{port}"), format!("[::]:{port}")] {
            let l = listen_tcp(&addr).map_err(|e| format!("tcp {addr}: {e}"))?;
            let name = o.name.clone();
            let serial = o.serial;
            threads.push(std::thread::spawn(move || {
                for conn in l.incoming().flatten() {
                    if serial {
                        answer_http(conn, &name);
                        continue;
                    }
                    let name = name.clone();
                    std::thread::spawn(move || answer_http(conn, &name));
                }
            }));
        }
    }
    for &port in &o.udp {
        for addr in [format!("0.0.0.0:{port}"), format!("[::]:{port}")] {
            let s = bind_udp(&addr).map_err(|e| format!("udp {addr}: {e}"))?;
            let name = o.name.clone();
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while let Ok((_, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(format!("{name}\n").as_bytes(), from);
                }
            }));
        }
    }
    println!("serving");
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// A listener; the IPv6 one only for IPv6 (the IPv4 one has its own).
fn listen_tcp(addr: &str) -> std::io::Result<TcpListener> {
    let sa: SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let fd = v6only_socket(&sa, libc::SOCK_STREAM)?;
    // SAFETY: fd is a fresh socket we own.
    let l = unsafe { <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    bind_listen(&l, &sa, true)?;
    Ok(l)
}

fn bind_udp(addr: &str) -> std::io::Result<UdpSocket> {
    let sa: SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let fd = v6only_socket(&sa, libc::SOCK_DGRAM)?;
    // SAFETY: fd is a fresh socket we own.
    let s = unsafe { <UdpSocket as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    bind_listen(&s, &sa, false)?;
    Ok(s)
}

fn v6only_socket(sa: &SocketAddr, ty: i32) -> std::io::Result<i32> {
    let domain = if sa.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket calls on a fresh fd; option values live across them.
    unsafe {
        let fd = libc::socket(domain, ty | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let p = (&one as *const libc::c_int).cast();
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, p, len);
        if sa.is_ipv6() {
            libc::setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, p, len);
        }
        Ok(fd)
    }
}

fn bind_listen(
    sock: &impl std::os::fd::AsRawFd,
    sa: &SocketAddr,
    listen: bool,
) -> std::io::Result<()> {
    let (storage, len) = sockaddr(sa);
    let fd = sock.as_raw_fd();
    // SAFETY: storage holds a valid sockaddr of `len` bytes for the call.
    unsafe {
        if libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if listen && libc::listen(fd, 4096) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn sockaddr(sa: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zeroed is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match sa {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Reads the request head, answers "NAME\n", closes.
fn answer_http(mut conn: TcpStream, name: &str) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let body = format!("{name}\n");
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
