//! UDP in a lab's namespaces: an echo server in a pod for the length of a
//! thread scope, and one datagram's round trip from a pod (the echo, or
//! nothing within the wait). Used by the pod-network and policy end-to-end
//! tests.
use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    thread::Scope,
    time::Duration,
};

use crate::Lab;

/// Echoes every datagram on [::]:`port` in namespace `ns` until `stop`
/// (checked every 100 ms); returns once the socket is bound.
pub fn echo<'s>(s: &'s Scope<'s, '_>, lab: &'s Lab, ns: &'s str, port: u16, stop: &'s AtomicBool) {
    let (tx, rx) = std::sync::mpsc::channel();
    s.spawn(move || {
        lab.in_ns(ns, || {
            let sock = UdpSocket::bind(("::", port))
                .unwrap_or_else(|e| panic!("UDP echo in {ns}: bind [::]:{port}: {e}"));
            sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], peer);
                }
            }
        })
        .unwrap_or_else(|e| panic!("UDP echo in {ns}: {e}"));
    });
    rx.recv().unwrap_or_else(|_| panic!("UDP echo in {ns} did not start"));
}

/// Sends `msg` from namespace `from` (bound to `bind`, port chosen by the
/// kernel; an unspecified address binds any) to `to`: the answer, or None
/// after `wait`. Any other socket error panics, naming the pair.
pub fn round(
    lab: &Lab,
    from: &str,
    bind: IpAddr,
    to: SocketAddr,
    msg: &[u8],
    wait: Duration,
) -> Option<Vec<u8>> {
    lab.in_ns(from, || {
        let sock = UdpSocket::bind(SocketAddr::new(bind, 0))
            .unwrap_or_else(|e| panic!("{from} -> {to}: bind {bind}: {e}"));
        sock.set_read_timeout(Some(wait)).unwrap();
        sock.send_to(msg, to).unwrap_or_else(|e| panic!("{from} -> {to}: send: {e}"));
        let mut buf = [0u8; 2048];
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => Some(buf[..n].to_vec()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) => panic!("{from} -> {to}: {e}"),
        }
    })
    .unwrap_or_else(|e| panic!("{from}: {e}"))
}

/// The unspecified address of `to`'s family (bind any).
pub fn any_of(to: IpAddr) -> IpAddr {
    if to.is_ipv4() {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u8; 16])
    }
}
