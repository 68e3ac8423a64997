//! A three-namespace forwarding rig for the kube-proxy baselines: client
//! (192.0.2.10) — lb (192.0.2.1 | 10.0.0.2, forwarding, where the rules go)
//! — backend (10.0.0.11, endpoint addresses 10.244.1.x on lo). Namespaces are
//! deleted on drop.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use testkit::netns::{self, NamedNetns, NetnsError};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const LB_FABRIC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const BACKEND_NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);

#[derive(Debug)]
pub struct ForwardRig {
    pub client: NamedNetns,
    pub lb: NamedNetns,
    pub backend: NamedNetns,
}

impl ForwardRig {
    /// Builds the rig; `endpoints` are put on the backend's lo.
    pub fn build(endpoints: &[Ipv4Addr]) -> Result<ForwardRig, NetnsError> {
        let rig = ForwardRig {
            client: NamedNetns::create("fwc")?,
            lb: NamedNetns::create("fwl")?,
            backend: NamedNetns::create("fwb")?,
        };
        let (c, l, b) = (rig.client.name(), rig.lb.name(), rig.backend.name());
        let ip = |args: &[&str]| netns::run("ip", args);
        ip(&["link", "add", "c0", "netns", c, "type", "veth", "peer", "name", "l0", "netns", l])?;
        ip(&["link", "add", "l1", "netns", l, "type", "veth", "peer", "name", "b0", "netns", b])?;
        rig.client.exec("ip", &["addr", "add", "192.0.2.10/24", "dev", "c0"])?;
        rig.client.exec("ip", &["link", "set", "c0", "up"])?;
        rig.client.exec("ip", &["route", "add", "default", "via", "192.0.2.1"])?;
        rig.lb.exec("ip", &["addr", "add", "192.0.2.1/24", "dev", "l0"])?;
        rig.lb.exec("ip", &["addr", "add", "10.0.0.2/24", "dev", "l1"])?;
        rig.lb.exec("ip", &["link", "set", "l0", "up"])?;
        rig.lb.exec("ip", &["link", "set", "l1", "up"])?;
        rig.lb.exec("ip", &["route", "add", "10.244.0.0/16", "via", "10.0.0.11"])?;
        rig.lb.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        rig.backend.exec("ip", &["addr", "add", "10.0.0.11/24", "dev", "b0"])?;
        rig.backend.exec("ip", &["link", "set", "b0", "up"])?;
        rig.backend.exec("ip", &["route", "add", "default", "via", "10.0.0.2"])?;
        for e in endpoints {
            rig.backend.exec("ip", &["addr", "add", &format!("{e}/32"), "dev", "lo"])?;
        }
        Ok(rig)
    }
}

/// Tiny TCP servers in a namespace: each accepted connection gets one line,
/// "<listen address> <peer address>\n", then is closed. Stopped on drop.
#[derive(Debug)]
pub struct EchoServers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServers {
    pub fn start(ns: &NamedNetns, addrs: &[SocketAddr]) -> Result<EchoServers, NetnsError> {
        let listeners = ns.run_in(|| {
            addrs
                .iter()
                .map(|a| TcpListener::bind(a).map(|l| (*a, l)))
                .collect::<Result<Vec<_>, _>>()
        })?;
        let listeners = listeners
            .map_err(|source| NetnsError::Syscall { op: "bind endpoint listener", source })?;
        let stop = Arc::new(AtomicBool::new(false));
        let threads = listeners
            .into_iter()
            .map(|(addr, l)| {
                let stop = stop.clone();
                l.set_nonblocking(true).expect("nonblocking listener");
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match l.accept() {
                            Ok((mut s, peer)) => {
                                let _ = s.set_nonblocking(false);
                                let _ = s.write_all(format!("{addr} {peer}\n").as_bytes());
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(2)),
                        }
                    }
                })
            })
            .collect();
        Ok(EchoServers { stop, threads })
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects `n` times to `target` from namespace `ns`; each answer line, or
/// the error, in order. Bounded by `timeout` per connection.
pub fn connect_many(
    ns: &NamedNetns,
    target: SocketAddr,
    n: usize,
    timeout: Duration,
) -> Result<Vec<Result<String, String>>, NetnsError> {
    ns.run_in(|| {
        (0..n)
            .map(|_| {
                let t0 = Instant::now();
                let mut s =
                    TcpStream::connect_timeout(&target, timeout).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(
                    timeout.saturating_sub(t0.elapsed()).max(Duration::from_millis(10)),
                ))
                .map_err(|e| e.to_string())?;
                let mut line = String::new();
                s.read_to_string(&mut line).map_err(|e| e.to_string())?;
                Ok(line.trim().to_string())
            })
            .collect()
    })
}
