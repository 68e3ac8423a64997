//! Managed neighbour entries for tunnel next hops, in a private network
//! namespace: routable endpoints get one each (matched to their own
//! addresses even when an unroutable endpoint sits between them), an
//! unroutable one is skipped and retried later. Privileged tier: needs root.
use std::{collections::BTreeSet, net::IpAddr, process::Command};

fn ip(args: &str) {
    let st = Command::new("ip").args(args.split_whitespace()).status().expect("running ip");
    assert!(st.success(), "ip {args} failed");
}

#[test]
fn routable_endpoints_get_managed_entries_and_unroutable_ones_are_retried() {
    testkit::require_root("this test (a network namespace)");
    testkit::netns::in_private_netns(|| {
        ip("link add v0 type veth peer name v1");
        ip("link set v0 up");
        ip("link set v1 up");
        ip("addr add 10.0.0.2/24 dev v0");
        let a: IpAddr = "10.0.0.11".parse().unwrap();
        let far: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "10.0.0.12".parse().unwrap();
        let mut n = lb::neigh::Neighbours::new();
        let created = n.sync(&BTreeSet::from([a, far, b])).expect("sync");
        assert_eq!(created, 2, "one entry per routable endpoint");
        let out = Command::new("ip").args(["neigh", "show", "dev", "v0"]).output().unwrap();
        let table = String::from_utf8_lossy(&out.stdout).to_string();
        for addr in [a, b] {
            assert!(
                table.lines().any(|l| l.starts_with(&format!("{addr} ")) && l.contains("managed")),
                "{addr} has no managed entry:\n{table}"
            );
        }
        assert!(!table.contains("203.0.113.1"), "{table}");
        // Once routed, the skipped endpoint gets its entry on the next sync.
        ip("route add 203.0.113.0/24 via 10.0.0.1 dev v0");
        let created = n.sync(&BTreeSet::from([a, far, b])).expect("sync");
        assert_eq!(created, 1, "the gateway of the now-routed endpoint");
        let out = Command::new("ip").args(["neigh", "show", "dev", "v0"]).output().unwrap();
        let table = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            table.lines().any(|l| l.starts_with("10.0.0.1 ") && l.contains("managed")),
            "{table}"
        );
    })
    .expect("a private network namespace");
}
