//! The lab itself, on the real kernel (root): a 2-node lab whose pods got
//! their network from xlb-cni (the nodes' agents running only the pod
//! network, no services) is reachable end to end (client -> router -> node
//! -> pod over native routes, pod to pod on one node and across nodes),
//! nginx answers with its pod name on both families, and teardown leaves
//! nothing behind — also after a panic, and for leftovers of killed runs.
use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::unix::fs::MetadataExt,
    panic::{catch_unwind, AssertUnwindSafe},
    process::Command,
    time::{Duration, Instant},
};

use lab::{agent, http, netns, Lab, LabSpec};

fn namespaces_with(prefix: &str) -> Vec<String> {
    netns::list().unwrap().into_iter().filter(|n| n.starts_with(&format!("{prefix}-"))).collect()
}

/// A TCP handshake from namespace `from` to a listener on `to` (in the
/// namespace that owns `to`) completes.
fn tcp_reaches(lab: &Lab, from: &str, to: IpAddr) {
    let owner = lab
        .hosts()
        .find(|h| IpAddr::from(h.v4) == to || IpAddr::from(h.v6) == to)
        .map(|h| h.name.clone())
        .expect("address of a lab host");
    // The socket stays in the namespace it was made in.
    let listener = lab.in_ns(&owner, || TcpListener::bind((to, 7777))).unwrap().unwrap();
    lab.in_ns(from, || {
        TcpStream::connect_timeout(&SocketAddr::new(to, 7777), Duration::from_secs(2))
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("{from} -> {owner} {to}: {e}"));
    let (_, peer) = listener.accept().unwrap();
    eprintln!("{from} -> {owner} {to}: ok from {peer}");
}

fn netns_inode_of_thread() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
}

#[test]
fn two_node_lab_routes_serves_and_tears_down() {
    let t0 = Instant::now();
    let mut lab =
        Lab::build(LabSpec { pods_per_node: 2, native_routes: true, ..LabSpec::default() })
            .expect("building the lab");
    let agents = agent::start_node_agents(&lab, &[]).expect("the nodes' agents");
    lab.start_pods().expect("the pods' network");
    eprintln!("built {} in {:?}", lab.prefix(), t0.elapsed());
    let prefix = lab.prefix().to_string();
    let tmp = lab.temp_dir().to_path_buf();
    assert_eq!(namespaces_with(&prefix).len(), 3 + 2 + 4, "client, router, lb, 2 nodes, 4 pods");

    // Native routes: client -> router -> node -> pod and back, and the LB
    // to every node over the fabric bridge; pods reach each other on one
    // node (redirect) and across nodes (the overlay).
    let mut paths: Vec<(&str, IpAddr)> = Vec::new();
    for pod in lab.pods() {
        paths.push(("client", pod.host.v4.into()));
        paths.push(("client", pod.host.v6.into()));
    }
    for n in lab.nodes() {
        paths.push(("lb", n.host.v4.into()));
        paths.push(("lb", n.host.v6.into()));
    }
    for other in ["pod1-2", "pod2-1"] {
        let p = lab.pod(other).unwrap().host.clone();
        paths.push(("pod1-1", p.v4.into()));
        paths.push(("pod1-1", p.v6.into()));
    }
    for (from, to) in paths {
        tcp_reaches(&lab, from, to);
    }

    // nginx answers with the pod's name, over both families, keep-alive works.
    let pods: Vec<_> = lab.pods().cloned().collect();
    lab.in_ns("client", || {
        for pod in &pods {
            for ip in [pod.host.v4.into(), pod.host.v6.into()] {
                let addr = SocketAddr::new(ip, 80);
                assert_eq!(http::get(addr).unwrap(), pod.host.name, "GET http://{addr}/");
            }
            let mut conn =
                http::Conn::connect(SocketAddr::new(pod.host.v4.into(), 80), http::DEFAULT_TIMEOUT)
                    .unwrap();
            for _ in 0..5 {
                assert_eq!(conn.get(false).unwrap(), pod.host.name);
            }
        }
    })
    .unwrap();

    // The driver: many connections, counted per backend.
    let before = lab.link_stats("client", "eth0").unwrap();
    let targets: Vec<SocketAddr> =
        pods.iter().map(|p| SocketAddr::new(p.host.v4.into(), 80)).collect();
    let report = lab.in_ns("client", || http::drive(&http::DriveSpec::new(targets, 200))).unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.succeeded(), 200);
    for pod in &pods {
        assert_eq!(report.per_backend.get(&pod.host.name), Some(&50), "{:?}", report.per_backend);
    }
    let delta = lab.link_stats("client", "eth0").unwrap() - before;
    // Each request is at least SYN, ACK, request, FIN... out and as many in.
    assert!(delta.tx_packets >= 200 * 4 && delta.rx_packets >= 200 * 4, "{delta:?}");

    // xlb_pass sits on the LB's router-side peer.
    let link = lab.run("router", "ip", &["-j", "link", "show", "dev", "lb0"]).unwrap();
    assert!(link.contains("\"xdp\""), "no XDP on lb0: {link}");

    let t1 = Instant::now();
    drop(agents);
    drop(lab);
    eprintln!("teardown in {:?}", t1.elapsed());
    assert_eq!(namespaces_with(&prefix), Vec::<String>::new());
    assert!(!tmp.exists(), "{} left behind", tmp.display());
}

#[test]
fn in_ns_threads_and_spawned_processes_live_in_the_namespace() {
    let lab = Lab::build(LabSpec { nodes: 1, backends: false, ..LabSpec::default() }).unwrap();
    let want =
        std::fs::metadata(format!("/run/netns/{}", lab.ns("client").unwrap())).unwrap().ino();
    let (outer, inner) = lab
        .in_ns("client", || {
            let outer = netns_inode_of_thread();
            let inner = std::thread::spawn(netns_inode_of_thread).join().unwrap();
            (outer, inner)
        })
        .unwrap();
    assert_eq!((outer, inner), (want, want));
    assert_ne!(netns_inode_of_thread(), want, "the caller's thread stays where it was");

    let mut sleeper = Command::new("sleep");
    sleeper.arg("30");
    let mut child = lab.spawn("client", sleeper).unwrap();
    let ino = std::fs::metadata(format!("/proc/{}/ns/net", child.pid())).unwrap().ino();
    assert_eq!(ino, want);
    let pid = child.pid();
    drop(lab);
    assert!(
        child.wait_timeout(Duration::from_secs(3)).unwrap().is_some(),
        "process {pid} survived the lab's teardown"
    );
}

#[test]
fn a_panicking_test_still_tears_down() {
    let mut prefix = String::new();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let lab = Lab::build(LabSpec { nodes: 1, backends: false, ..LabSpec::default() }).unwrap();
        prefix = lab.prefix().to_string();
        panic!("test failure inside the lab");
    }));
    assert!(result.is_err());
    assert!(!prefix.is_empty());
    assert_eq!(namespaces_with(&prefix), Vec::<String>::new());
}

#[test]
fn cleanup_stale_removes_leftovers_of_dead_runs_only() {
    // pid 4194304 is above the kernel's pid limit, so never running.
    let dead = "xlbstale4194304-0-client";
    let live = format!("xlbstale{}-0-client", std::process::id());
    for ns in [dead, live.as_str()] {
        let st = Command::new("ip").args(["netns", "add", ns]).status().unwrap();
        assert!(st.success(), "ip netns add {ns}");
    }
    let removed = Lab::cleanup_stale("xlbstale").unwrap();
    let left = netns::list().unwrap();
    let _ = Command::new("ip").args(["netns", "delete", &live]).status();
    assert_eq!(removed, vec![dead.to_string()]);
    assert!(!left.contains(&dead.to_string()));
    assert!(left.contains(&live), "a live process's namespace was removed");
}

#[test]
fn bad_spec_is_rejected_with_the_field_name() {
    let err = Lab::build(LabSpec { fabric_mtu: 1400, ..LabSpec::default() }).unwrap_err();
    assert!(err.to_string().contains("client_mtu"), "{err}");
}
