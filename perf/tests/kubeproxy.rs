//! The kube-proxy baseline rulesets really load into a kernel and really
//! DNAT: 1000 services (iptables-restore / nft -f) in a private forwarding
//! rig, then real TCP connections from the client namespace to a
//! load-balancer IP land on both endpoints, masqueraded like kube-proxy does.
//! Needs root; fails (does not skip) without it.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use testkit::netns::run_with_input;
use xlb_perf::{
    forward::{connect_many, EchoServers, ForwardRig, LB_FABRIC},
    kubeproxy::{iptables_restore, nftables, synthetic, KpConfig},
};

const EP1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const EP2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);

fn services() -> Vec<xlb_perf::kubeproxy::KpService> {
    // 999 filler services (other addresses) and the one the client uses,
    // last, so its rule is at the end of KUBE-SERVICES.
    let mut s = synthetic(999, 2, Ipv4Addr::new(10, 101, 0, 1), 80, 8080);
    let mut real = synthetic(1, 2, Ipv4Addr::new(10, 100, 0, 1), 80, 8080).remove(0);
    real.name = "nginx".into();
    real.cluster_ip = Ipv4Addr::new(10, 97, 0, 1);
    real.endpoints = vec![SocketAddrV4::new(EP1, 8080), SocketAddrV4::new(EP2, 8080)];
    s.push(real);
    s
}

fn check_dnat(rig: &ForwardRig) {
    let _servers = EchoServers::start(
        &rig.backend,
        &[SocketAddr::from((EP1, 8080)), SocketAddr::from((EP2, 8080))],
    )
    .expect("endpoint listeners");
    let answers = connect_many(
        &rig.client,
        SocketAddr::from(([10, 100, 0, 1], 80)),
        40,
        Duration::from_secs(3),
    )
    .expect("client namespace");
    let mut hit = BTreeSet::new();
    for a in &answers {
        let line = a.as_ref().expect("connection through the DNAT rules");
        let (ep, peer) = line.split_once(' ').expect("endpoint answer");
        assert!(
            peer.starts_with(&format!("{LB_FABRIC}:")),
            "peer {peer}: want the LB's address (external traffic is masqueraded)"
        );
        hit.insert(ep.to_string());
    }
    assert_eq!(
        hit,
        BTreeSet::from(["10.244.1.10:8080".to_string(), "10.244.1.11:8080".to_string()]),
        "40 connections should reach both endpoints"
    );
}

#[test]
fn iptables_ruleset_for_1000_services_loads_and_dnats() {
    let rig = ForwardRig::build(&[EP1, EP2]).expect("rig (needs root)");
    let rules = iptables_restore(&services(), &KpConfig::default()).unwrap();
    let t0 = Instant::now();
    let mut cmd = vec!["netns", "exec", rig.lb.name(), "iptables-restore", "--noflush"];
    cmd.retain(|_| true);
    run_with_input("ip", &cmd, rules.as_bytes()).expect("iptables-restore");
    eprintln!("iptables-restore of 1000 services: {:?}", t0.elapsed());
    let saved = rig.lb.exec("iptables-save", &["-t", "nat"]).unwrap();
    assert_eq!(saved.lines().filter(|l| l.starts_with(":KUBE-SEP-")).count(), 2000);
    assert_eq!(
        saved.lines().filter(|l| l.starts_with("-A KUBE-SERVICES")).count(),
        2001,
        "one rule per cluster IP and per LB IP, plus the nodeports rule"
    );
    check_dnat(&rig);
}

#[test]
fn nftables_ruleset_for_1000_services_loads_and_dnats() {
    let rig = ForwardRig::build(&[EP1, EP2]).expect("rig (needs root)");
    let rules = nftables(&services(), &KpConfig::default()).unwrap();
    let t0 = Instant::now();
    run_with_input("ip", &["netns", "exec", rig.lb.name(), "nft", "-f", "-"], rules.as_bytes())
        .expect("nft -f");
    eprintln!("nft -f of 1000 services: {:?}", t0.elapsed());
    let listed = rig.lb.exec("nft", &["list", "map", "ip", "kube-proxy", "service-ips"]).unwrap();
    assert_eq!(listed.matches("goto").count(), 2000);
    check_dnat(&rig);
}
