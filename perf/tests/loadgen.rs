//! The connection-level load generators against real servers in a lab
//! (root; fails, does not skip, without it): wrk's output parsed from a live
//! run and checked against the pod's own packet counters (one connection
//! per request with `Connection: close`, one for all with keep-alive), the
//! parser on a saved live capture, iperf3's reported throughput against the
//! bytes the pod received, and kube-proxy's iptables rules in the lab's LB
//! namespace DNATing the second VIP (rule counters = connections).
use std::{net::SocketAddr, time::Duration};

use lab::{spec, Lab, LabSpec};
use xlb_perf::{
    labrig::{install_kube_proxy, KP_VIP},
    loadgen::{iperf3, parse_wrk, wrk_raw, WrkSpec},
};

/// A one-node lab whose pod the client reaches straight (native routes);
/// the node's agent runs only its pod network.
fn lab() -> (Lab, Vec<lab::agent::Agent>) {
    let mut lab = Lab::build(LabSpec {
        nodes: 1,
        pods_per_node: 1,
        native_routes: true,
        ..LabSpec::default()
    })
    .unwrap_or_else(|e| panic!("building the lab (needs root): {e}"));
    let agents = lab::agent::start_node_agents(&lab, &[])
        .unwrap_or_else(|e| panic!("the node's agent: {e}"));
    lab.start_pods().unwrap_or_else(|e| panic!("the pod's network: {e}"));
    (lab, agents)
}

const POD: &str = "pod1-1";

#[test]
fn wrk_output_parsed_from_a_live_run_matches_the_pods_packet_counters() {
    let (lab, _agents) = lab();
    let url = format!("http://{}/", spec::pod_v4(1, 1));
    let tmp = lab.temp_dir().to_path_buf();
    for close in [true, false] {
        let before = lab.link_stats(POD, "eth0").unwrap();
        let spec = WrkSpec {
            url: url.clone(),
            threads: 1,
            connections: if close { 4 } else { 1 },
            duration: Duration::from_secs(1),
            close,
        };
        let raw = wrk_raw(&lab, "client", &spec, &tmp).expect("wrk");
        eprintln!("--- wrk (close={close}) ---\n{raw}");
        let r = parse_wrk(&raw).expect("parsing live wrk output");
        let rx = (lab.link_stats(POD, "eth0").unwrap() - before).rx_packets;
        assert!(r.requests >= 200, "too few requests to judge: {r:?}");
        assert_eq!(r.errors(), 0, "{r:?}");
        assert!((r.seconds - 1.0).abs() < 0.2, "{r:?}");
        let rate = r.requests as f64 / r.seconds;
        assert!((r.requests_per_sec / rate - 1.0).abs() < 0.05, "Requests/sec vs count: {r:?}");
        assert!(0.0 < r.p50_us && r.p50_us <= r.p99_us && r.p99_us <= r.p999_us, "{r:?}");
        assert!(r.p999_us <= r.max_us, "{r:?}");
        // Each short-lived connection costs the pod at least SYN, request
        // (with ACK), and the client's ACK of the FIN: 3 packets in. A
        // keep-alive connection: one request packet each, plus ACKs.
        if close {
            assert!(rx >= 3 * r.requests, "{rx} packets for {} connections", r.requests);
        } else {
            assert!(
                rx >= r.requests && rx < 3 * r.requests,
                "{rx} packets for {} keep-alive requests",
                r.requests
            );
        }
    }
}

#[test]
fn wrk_parser_on_a_saved_live_capture() {
    let r = parse_wrk(include_str!("data/wrk_close.txt")).unwrap();
    assert_eq!((r.requests, r.requests_per_sec), (4357, 4338.37));
    assert_eq!((r.p50_us, r.p99_us, r.p999_us, r.max_us), (385.0, 6364.0, 8441.0, 9387.0));
    assert_eq!(r.errors(), 0);
    assert!(r.p50_us <= r.p99_us && r.p99_us <= r.p999_us);
    // A report whose Lua hook disagrees with the report is refused.
    let text =
        include_str!("data/wrk_close.txt").replace("XLBPERF requests=", "XLBPERF requests=1");
    assert!(parse_wrk(&text).unwrap_err().to_string().contains("requests"));
}

#[test]
fn iperf3_throughput_matches_the_bytes_the_pod_received() {
    let (lab, _agents) = lab();
    lab.stop_backend(POD);
    let mut server = std::process::Command::new("iperf3");
    server
        .args(["-s", "-p", "80"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _server = lab.spawn(POD, server).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = lab.link_stats(POD, "eth0").unwrap();
    let r = iperf3(&lab, "client", spec::pod_v4(1, 1).into(), 80, Duration::from_secs(1))
        .expect("iperf3");
    let rx = (lab.link_stats(POD, "eth0").unwrap() - before).rx_bytes as f64;
    eprintln!("{r:?}; pod received {rx} bytes");
    assert!(r.received_bps > 1e8, "{r:?}");
    let payload = r.received_bps / 8.0 * r.seconds;
    assert!(
        rx >= 0.95 * payload && rx <= 1.3 * payload,
        "{rx} bytes on the wire for {payload} of payload"
    );
}

#[test]
fn kube_proxy_rules_in_the_lab_dnat_the_second_vip_to_the_pod() {
    let (lab, _agents) = lab();
    install_kube_proxy(&lab, 100, &[spec::pod_v4(1, 1)]).expect("iptables-restore");
    const N: usize = 20;
    let answers: Vec<String> = lab
        .in_ns("client", || {
            (0..N).map(|_| lab::http::get(SocketAddr::from((KP_VIP, 80))).unwrap()).collect()
        })
        .unwrap();
    assert!(answers.iter().all(|a| a == POD), "{answers:?}");
    // The measured service's DNAT rule counted exactly those connections.
    let saved = lab.run("lb", "iptables-save", &["-c", "-t", "nat"]).unwrap();
    let dnat = saved
        .lines()
        .find(|l| l.ends_with(&format!("--to-destination {}:80", spec::pod_v4(1, 1))))
        .unwrap_or_else(|| panic!("no DNAT to the pod:\n{saved}"));
    let packets: usize = dnat.trim_start_matches('[').split(':').next().unwrap().parse().unwrap();
    assert_eq!(packets, N, "{dnat}");
}
