//! Fixtures of the service model for the reconciler tests: compiled into
//! lb's unit tests (reconcile::tests) and, by path, into the privileged
//! integration tests (lb/tests/datapath*.rs), so both build the same
//! services the same way.
#![allow(dead_code)] // each test binary uses a different part

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use lb::model::{
    Affinity, Backend, Desired, Frontend, FrontendKind, NodeConfig, Proto, Service, ServiceKey,
};

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn key(name: &str) -> ServiceKey {
    ServiceKey::new("default", name, "http")
}

/// Endpoint `addr`:8080 on `node`.
pub fn backend(addr: &str, node: &str) -> Backend {
    Backend::new(ip(addr), 8080, ip(node))
}

/// A service with one LoadBalancer frontend `vip`:80 (the default table
/// size; tests in memory shrink it).
pub fn service(name: &str, vip: &str, backends: Vec<Backend>) -> Service {
    let fe =
        Frontend { addr: ip(vip), port: 80, proto: Proto::Tcp, kind: FrontendKind::LoadBalancer };
    Service::with_frontend(key(name), fe, backends)
}

/// This node: tunnel source 10.0.0.2.
pub fn node() -> NodeConfig {
    NodeConfig { tunnel_v4: Some(Ipv4Addr::new(10, 0, 0, 2)), tunnel_v6: None }
}

/// Two services on three backends over two nodes; the second with affinity
/// and a source range.
pub fn two() -> Desired {
    let a = service(
        "a",
        "10.100.0.1",
        vec![
            backend("10.244.1.11", "10.0.0.11"),
            backend("10.244.2.11", "10.0.0.12"),
            backend("10.244.2.12", "10.0.0.12"),
        ],
    );
    let mut b = service(
        "b",
        "10.100.0.2",
        vec![backend("10.244.1.21", "10.0.0.11"), backend("10.244.2.21", "10.0.0.12")],
    );
    b.affinity = Some(Affinity { timeout: Duration::from_secs(600) });
    b.source_ranges = vec!["192.0.2.0/24".parse().unwrap()];
    Desired::new(node(), [a, b])
}
