//! One test per NetworkPolicy rule, on the e2e suite's cluster: namespaces
//! x, y, z (label ns=<name>) with pods a, b, c (label pod=<name>, container
//! ports serve-80-tcp 80/TCP, serve-81-udp 81/UDP), addresses 10.0.<ns>.<pod>.
use std::net::IpAddr;

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};

use super::*;

const NS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

fn ip(ns: &str, pod: &str) -> IpAddr {
    let n = NS.iter().position(|x| *x == ns).unwrap() + 1;
    let p = PODS.iter().position(|x| *x == pod).unwrap() + 1;
    format!("10.0.{n}.{p}").parse().unwrap()
}

fn cluster() -> (Vec<Pod>, Vec<Namespace>) {
    let mut pods = Vec::new();
    let mut nss = Vec::new();
    for ns in NS {
        nss.push(
            serde_yaml::from_str(&format!("metadata: {{name: {ns}, labels: {{ns: {ns}}}}}"))
                .unwrap(),
        );
        for pod in PODS {
            pods.push(
                serde_yaml::from_str(&format!(
                    "metadata: {{name: {pod}, namespace: {ns}, labels: {{pod: {pod}}}}}
spec:
  nodeName: node1
  containers:
  - name: c
    ports:
    - {{name: serve-80-tcp, containerPort: 80}}
    - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}
status: {{podIP: {}, phase: Running}}",
                    ip(ns, pod)
                ))
                .unwrap(),
            );
        }
    }
    (pods, nss)
}

fn policies(yaml: &str) -> Vec<NetworkPolicy> {
    yaml.split("\n---\n").map(|d| serde_yaml::from_str(d).unwrap()).collect()
}

fn compiled(yaml: &str) -> Compiled {
    let (pods, nss) = cluster();
    let c = compile(&pods, &nss, &if yaml.is_empty() { vec![] } else { policies(yaml) });
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    c
}

/// "x/a" -> (ns, pod)
fn split(p: &str) -> (&str, &str) {
    p.split_once('/').unwrap()
}

fn can(c: &Compiled, from: &str, to: &str, proto: u8, port: u16) -> bool {
    let (fns, fp) = split(from);
    let (tns, tp) = split(to);
    c.verdict(ip(fns, fp), ip(tns, tp), proto, port).allowed()
}

/// The reachability matrix on TCP 80 as the e2e suite prints it: a row per
/// source, "." allowed, "X" denied.
fn matrix(c: &Compiled, proto: u8, port: u16) -> String {
    let all: Vec<String> =
        NS.iter().flat_map(|n| PODS.iter().map(move |p| format!("{n}/{p}"))).collect();
    let mut out = String::new();
    for from in &all {
        out.push_str(from);
        out.push(' ');
        for to in &all {
            out.push(if can(c, from, to, proto, port) { '.' } else { 'X' });
        }
        out.push('\n');
    }
    out
}

fn full_except(denied: &[(&str, &str)]) -> String {
    let all: Vec<String> =
        NS.iter().flat_map(|n| PODS.iter().map(move |p| format!("{n}/{p}"))).collect();
    let mut out = String::new();
    for from in &all {
        out.push_str(from);
        out.push(' ');
        for to in &all {
            let deny =
                denied.iter().any(|(f, t)| (f == &"*" || f == from) && (t == &"*" || t == to));
            out.push(if deny { 'X' } else { '.' });
        }
        out.push('\n');
    }
    out
}

#[test]
fn no_policy_no_isolation() {
    let c = compiled("");
    assert!(c.endpoints.is_empty());
    assert_eq!(matrix(&c, PROTO_TCP, 80), full_except(&[]));
    // Every pod has an identity; pods with the same labels in another
    // namespace have another one.
    assert_eq!(c.identities.len(), 9);
}

#[test]
fn default_deny_ingress_isolates_the_namespace_for_ingress_only() {
    let c = compiled("metadata: {name: deny, namespace: x}\nspec: {podSelector: {}}");
    assert_eq!(c.endpoints.len(), 3);
    let ep = &c.endpoints[&ObjectKey::new(Some("x"), "a")];
    assert_eq!(ep.ingress.as_ref().map(|m| m.len()), Some(0));
    assert!(ep.egress.is_none(), "policyTypes defaults to Ingress without egress rules");
    assert_eq!(matrix(&c, PROTO_TCP, 80), full_except(&[("*", "x/a"), ("*", "x/b"), ("*", "x/c")]));
}

#[test]
fn empty_rule_allows_all_empty_list_allows_nothing() {
    let c = compiled("metadata: {name: all, namespace: x}\nspec: {podSelector: {}, ingress: [{}]}");
    assert_eq!(matrix(&c, PROTO_TCP, 80), full_except(&[]));
    let c = compiled("metadata: {name: none, namespace: x}\nspec: {podSelector: {}, ingress: []}");
    assert!(!can(&c, "y/a", "x/a", PROTO_TCP, 80));
    // Empty `from` and `ports` lists are the absent ones: everything.
    let c = compiled(
        "metadata: {name: all, namespace: x}\nspec: {podSelector: {}, ingress: [{from: [], ports: []}]}",
    );
    assert!(can(&c, "z/c", "x/a", PROTO_UDP, 9999));
}

#[test]
fn pod_selector_peer_is_in_the_policys_namespace() {
    let c = compiled(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]",
    );
    assert!(can(&c, "x/b", "x/a", PROTO_TCP, 80));
    assert!(!can(&c, "y/b", "x/a", PROTO_TCP, 80), "pod=b of another namespace");
    assert!(!can(&c, "x/c", "x/a", PROTO_TCP, 80));
    assert!(can(&c, "x/c", "x/b", PROTO_TCP, 80), "x/b is not selected");
}

#[test]
fn namespace_selector_alone_and_with_pod_selector_in_one_peer_or_two() {
    // One peer: pod=b in namespaces ns=y (AND).
    let c = compiled(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}",
    );
    assert!(can(&c, "y/b", "x/a", PROTO_TCP, 80));
    assert!(!can(&c, "y/a", "x/a", PROTO_TCP, 80));
    assert!(!can(&c, "x/b", "x/a", PROTO_TCP, 80));
    // Two peers: every pod of ns=y, or pod=b of x (OR).
    let c = compiled(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    - podSelector: {matchLabels: {pod: b}}",
    );
    assert!(can(&c, "y/a", "x/a", PROTO_TCP, 80));
    assert!(can(&c, "x/b", "x/a", PROTO_TCP, 80));
    assert!(!can(&c, "z/b", "x/a", PROTO_TCP, 80));
    // Empty namespaceSelector: every namespace; the name label works.
    let c = compiled(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]",
    );
    assert!(can(&c, "z/c", "x/b", PROTO_TCP, 80));
    assert!(!can(&c, "y/c", "x/b", PROTO_TCP, 80));
}

#[test]
fn match_expressions_select_peers_and_targets() {
    let c = compiled(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [y]}]}
      podSelector: {matchExpressions: [{key: pod, operator: Exists}]}",
    );
    assert!(can(&c, "z/c", "x/a", PROTO_TCP, 80));
    assert!(can(&c, "x/c", "x/b", PROTO_TCP, 80));
    assert!(!can(&c, "y/c", "x/a", PROTO_TCP, 80), "ns NotIn [y]");
    assert!(can(&c, "y/c", "x/c", PROTO_TCP, 80), "x/c not selected (In [a, b])");
    let c = compiled(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: DoesNotExist}]}
  ingress: []",
    );
    assert!(c.endpoints.is_empty(), "every pod has the label: none selected");
}

#[test]
fn ip_block_with_except_matches_pod_addresses() {
    // Egress from x/a to 10.0.2.0/24 (namespace y) except y/b.
    let c = compiled(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.2.0/24, except: [10.0.2.2/32]}}]",
    );
    assert!(can(&c, "x/a", "y/a", PROTO_TCP, 80));
    assert!(can(&c, "x/a", "y/c", PROTO_UDP, 81));
    assert!(!can(&c, "x/a", "y/b", PROTO_TCP, 80), "except");
    assert!(!can(&c, "x/a", "z/a", PROTO_TCP, 80), "outside the cidr");
    // Addresses outside every pod: by their prefix.
    let v = c.verdict(ip("x", "a"), "10.0.2.200".parse().unwrap(), PROTO_TCP, 443);
    assert!(v.allowed());
    let v = c.verdict(ip("x", "a"), "192.0.2.1".parse().unwrap(), PROTO_TCP, 443);
    assert!(!v.allowed());
    // The address map: the pod's own identity and the most specific prefix.
    let addrs = c.addr_identities();
    let yb = addrs[&Cidr { addr: ip("y", "b"), len: 32 }];
    assert_eq!(yb.cidr_identity, c.cidrs[&"10.0.2.2/32".parse().unwrap()]);
    // An overlapping except (wider than the address) still excludes it.
    let c = compiled(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24]}}, {ipBlock: {cidr: 10.0.2.2/32}}]",
    );
    assert!(can(&c, "x/a", "z/a", PROTO_TCP, 80));
    assert!(!can(&c, "x/a", "y/a", PROTO_TCP, 80));
    assert!(can(&c, "x/a", "y/b", PROTO_TCP, 80), "allowed by the second peer");
}

#[test]
fn ports_by_number_range_name_protocol() {
    let c = compiled(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: 80}, {protocol: UDP, port: 1000, endPort: 1010}, {protocol: SCTP}]",
    );
    assert!(can(&c, "y/a", "x/a", PROTO_TCP, 80));
    assert!(!can(&c, "y/a", "x/a", PROTO_UDP, 80), "protocol defaults to TCP");
    assert!(!can(&c, "y/a", "x/a", PROTO_TCP, 81));
    assert!(can(&c, "y/a", "x/a", PROTO_UDP, 1000) && can(&c, "y/a", "x/a", PROTO_UDP, 1010));
    assert!(!can(&c, "y/a", "x/a", PROTO_UDP, 1011) && !can(&c, "y/a", "x/a", PROTO_UDP, 999));
    assert!(can(&c, "y/a", "x/a", PROTO_SCTP, 5), "SCTP, every port");
    // Named ports: on the destination (ingress: the endpoint's own).
    let c = compiled(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: serve-81-udp, protocol: UDP}]}]",
    );
    assert!(can(&c, "y/a", "x/a", PROTO_UDP, 81));
    assert!(!can(&c, "y/a", "x/a", PROTO_TCP, 80));
    // A name with the wrong protocol resolves to nothing.
    let c = compiled(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: serve-81-udp}]}]",
    );
    assert!(!can(&c, "y/a", "x/a", PROTO_UDP, 81) && !can(&c, "y/a", "x/a", PROTO_TCP, 81));
    // Egress named port: the destination pod's.
    let c = compiled(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {}}], ports: [{port: serve-80-tcp}]}]",
    );
    assert!(can(&c, "x/a", "z/b", PROTO_TCP, 80));
    assert!(!can(&c, "x/a", "z/b", PROTO_TCP, 81));
}

#[test]
fn policy_types_defaults_and_egress_isolation() {
    // Egress rules without policyTypes: Ingress and Egress.
    let c = compiled(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]",
    );
    let ep = &c.endpoints[&ObjectKey::new(Some("x"), "a")];
    assert!(ep.ingress.is_some() && ep.egress.is_some());
    assert!(can(&c, "x/a", "x/b", PROTO_TCP, 80));
    assert!(!can(&c, "x/a", "x/c", PROTO_TCP, 80));
    assert!(!can(&c, "x/b", "x/a", PROTO_TCP, 80), "ingress isolated, no ingress rule");
    // policyTypes [Egress] ignores ingress rules and leaves ingress open.
    let c = compiled(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  ingress: [{from: [{podSelector: {matchLabels: {pod: none}}}]}]
  egress: []",
    );
    assert!(can(&c, "x/b", "x/a", PROTO_TCP, 80));
    assert!(!can(&c, "x/a", "x/b", PROTO_TCP, 80));
}

#[test]
fn union_of_policies_and_deny_wins_nowhere() {
    let c = compiled(
        "metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
metadata: {name: allow-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]
---
metadata: {name: allow-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}], ports: [{port: 81, protocol: UDP}]}]
---
metadata: {name: b-out, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {pod: a}}}]}]",
    );
    assert!(can(&c, "x/b", "x/a", PROTO_TCP, 80));
    assert!(!can(&c, "x/b", "x/a", PROTO_UDP, 81));
    assert!(!can(&c, "x/c", "x/a", PROTO_TCP, 80), "x/c egress isolated by deny-all");
    let v = c.verdict(ip("x", "b"), ip("x", "a"), PROTO_TCP, 80);
    let num = |n: &str| *c.policies.iter().find(|(_, v)| v.as_str() == n).unwrap().0;
    assert_eq!(v.egress, Some(Ok(num("x/b-out"))));
    assert_eq!(v.ingress, Some(Ok(num("x/allow-b"))));
}

#[test]
fn an_invalid_policy_is_named_and_skipped_the_others_apply() {
    let (pods, nss) = cluster();
    let c = compile(
        &pods,
        &nss,
        &policies(
            "metadata: {name: bad, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/33}}]
  - ports: [{port: 80, endPort: 70}]
  - from: [{podSelector: {matchExpressions: [{key: pod, operator: Maybe}]}}]
  - from: [{}]
  - ports: [{protocol: ICMP}]
---
metadata: {name: good, namespace: y}
spec: {podSelector: {}}",
        ),
    );
    let errs: Vec<String> = c.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(errs.len(), 5, "{errs:#?}");
    assert!(
        errs[0].starts_with("NetworkPolicy x/bad: spec.ingress[0].from[0].ipBlock.cidr: "),
        "{errs:?}"
    );
    assert_eq!(
        errs[1],
        "NetworkPolicy x/bad: spec.ingress[1].ports[0].endPort: 70 is not a port number >= port 80 (policy skipped)"
    );
    assert!(errs[2].contains("spec.ingress[2].from[0].podSelector.matchExpressions[0].operator"));
    assert!(errs[3].contains("spec.ingress[3].from[0]: must specify a peer"));
    assert!(errs[4].contains("spec.ingress[4].ports[0].protocol: \"ICMP\" is not one of"));
    assert!(!c.endpoints.contains_key(&ObjectKey::new(Some("x"), "a")), "bad: skipped");
    assert!(c.endpoints.contains_key(&ObjectKey::new(Some("y"), "a")), "good: applied");
}

#[test]
fn trace_names_the_allowing_policy_or_the_isolating_ones() {
    let c = compiled(
        "metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]",
    );
    let t = trace(&c, ip("x", "b"), ip("x", "a"), PROTO_TCP, 80);
    assert!(t.contains("ingress of the destination: allowed by NetworkPolicy x/web"), "{t}");
    assert!(t.contains("egress of the source: not isolated"), "{t}");
    assert!(t.ends_with("verdict: ALLOW\n"), "{t}");
    let t = trace(&c, ip("x", "c"), ip("x", "a"), PROTO_TCP, 80);
    assert!(t.contains("DENIED: isolated by NetworkPolicy x/web"), "{t}");
    assert!(t.ends_with("verdict: DENY\n"), "{t}");
}

#[test]
fn a_deployments_pods_are_logged_as_the_deployment_other_owners_as_they_are() {
    let pod = |name: &str, labels: &str, owner: &str| -> Pod {
        serde_yaml::from_str(&format!(
            "metadata: {{name: {name}, namespace: x, labels: {{{labels}}},
  ownerReferences: [{{apiVersion: apps/v1, kind: {owner}, controller: true, uid: u}}]}}
status: {{podIP: 10.0.1.9, phase: Running}}"
        ))
        .unwrap()
    };
    let workload = |p: &Pod| pod_info(p).unwrap().workload.unwrap();
    let of = |k: &str, n: &str| (k.to_string(), n.to_string());
    // The ReplicaSet a Deployment made: named <deployment>-<hash>, the pod
    // labelled with the hash.
    let mut p =
        pod("web-7c9d-x1", "app: web, pod-template-hash: 7c9d", "ReplicaSet, name: web-7c9d");
    assert_eq!(workload(&p), of("Deployment", "web"));
    // A ReplicaSet of its own (no hash label, or one its name does not end in).
    p = pod("rs-abc", "app: web", "ReplicaSet, name: rs");
    assert_eq!(workload(&p), of("ReplicaSet", "rs"));
    p = pod("rs-abc", "pod-template-hash: 99", "ReplicaSet, name: rs-7c9d");
    assert_eq!(workload(&p), of("ReplicaSet", "rs-7c9d"));
    p = pod("db-0", "app: db", "StatefulSet, name: db");
    assert_eq!(workload(&p), of("StatefulSet", "db"));
}

#[test]
fn policies_and_prefixes_keep_their_numbers_when_others_come_and_go() {
    let one = "metadata: {name: m, namespace: y}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.0.2.0/24}}]}]";
    // A policy sorting before it, with prefixes of its own around it.
    let other = "metadata: {name: a, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24]}}]}]";
    let alone = compiled(one);
    let both = compiled(&format!("{other}\n---\n{one}"));
    let number = |c: &Compiled, name: &str| {
        *c.policies.iter().find(|(_, n)| n.as_str() == name).expect(name).0
    };
    assert_eq!(number(&alone, "y/m"), number(&both, "y/m"));
    assert_ne!(number(&both, "x/a"), number(&both, "y/m"));
    assert!(!both.policies.contains_key(&0), "0 means no policy");
    let prefix: Cidr = "10.0.2.0/24".parse().unwrap();
    assert_eq!(alone.cidrs[&prefix], both.cidrs[&prefix]);
    assert_eq!(both.cidrs.len(), 3);
    // The verdict names the policy by the number it keeps.
    let v = both.verdict(ip("y", "a"), ip("y", "b"), PROTO_TCP, 80);
    assert_eq!(v.ingress, Some(Ok(number(&both, "y/m"))));
}
