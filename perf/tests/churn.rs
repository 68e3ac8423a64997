//! The churn driver detects what it must (root, real `xlb run` agents in a
//! lab; needs the `xlb` binary: `cargo build -p xlb-control` or XLB_BIN):
//! killing one backend pod's nginx under load breaks exactly the held
//! connections that pod served, none of the others, and new connections
//! that land on it fail — only after the kill.
use std::{net::SocketAddr, time::Duration};

use lab::{manifests::EndpointState, spec, LabSpec};
use xlb_perf::{
    churn::{run_under_load, LoadSpec},
    labrig::XlbLab,
};

#[test]
fn killing_a_backend_pod_breaks_its_held_connections_and_only_those() {
    let rig = XlbLab::start(LabSpec { nodes: 2, pods_per_node: 2, ..LabSpec::default() }, &|_| {
        EndpointState::Ready
    })
    .unwrap_or_else(|e| panic!("lab with xlb agents (needs root and the xlb binary): {e}"));
    const KILLED: &str = "pod1-1";
    let load = LoadSpec {
        held: 48,
        new_conn_threads: 1,
        ..LoadSpec::new(SocketAddr::from((spec::VIP_V4, 80)))
    };
    let (killed_at, r) = run_under_load(&rig.lab, "client", &load, |t0| {
        std::thread::sleep(Duration::from_millis(500));
        let at = t0.elapsed();
        rig.lab.stop_backend(KILLED);
        std::thread::sleep(Duration::from_millis(1000));
        at
    })
    .expect("load");
    let per_pod = r.held_per_pod();
    eprintln!("held per pod {per_pod:?}; new ok {} failed {}", r.new_ok.len(), r.new_failed.len());
    let on_killed = per_pod.get(KILLED).copied().unwrap_or(0);
    assert!(on_killed > 0, "no held connection landed on {KILLED}: {per_pod:?}");
    let broken: Vec<_> = r.held.iter().filter(|h| h.broken.is_some()).collect();
    assert_eq!(broken.len(), on_killed, "broken: {broken:#?}");
    assert!(broken.iter().all(|h| h.pod == KILLED && h.broken.as_ref().unwrap().0 >= killed_at));
    assert!(r.broken_unaffected(&[KILLED]).is_empty());
    assert!(r.held.iter().filter(|h| h.pod != KILLED).all(|h| h.requests_ok > 5));
    // Maglev still sends about a quarter of new connections to the dead pod.
    assert!(!r.new_failed.is_empty(), "no new connection failed after the kill");
    assert!(r.new_failed.iter().all(|(t, _)| *t >= killed_at), "{:?}", r.new_failed.first());
    assert!(r.new_on(KILLED, Duration::ZERO, killed_at) > 0);
    assert_eq!(r.new_on(KILLED, killed_at + Duration::from_millis(50), r.elapsed), 0);
}
