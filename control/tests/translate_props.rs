//! Fuzz tier of the manifest -> translation path (#12 item 13): property
//! tests over generated Services, EndpointSlices and Nodes, written as YAML
//! and read by the manifest loader, with values drawn from valid and invalid
//! pools (bad IPs, ports, protocols, families, annotations, conditions,
//! names; duplicate frontends; endpoints on unknown nodes or none):
//! - loading and translating never panic;
//! - every problem names its object (kind, name) and a field;
//! - leaving invalid parts out reports exactly the problems rejecting
//!   reports, applies whenever this node is known, never exposes an
//!   externalIP outside --external-ip-cidr, and never gives one frontend to
//!   two services.
//!
//! Budget: PROPTEST_CASES (default 256 here: the quick tier); the long run
//! (README) sets PROPTEST_CASES=100000.
use std::{collections::HashSet, net::IpAddr};

use proptest::prelude::*;
use xlb_control::{
    cluster::Changes,
    source::file,
    translate::{translate, TranslateOptions, Translator},
};

fn pick(pool: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
    prop::sample::select(pool)
}

/// `usual` three times in four, else any of `pool` (valid or not): most
/// objects stay valid enough to reach the datapath state.
fn mostly(
    usual: &'static str,
    pool: &'static [&'static str],
) -> impl Strategy<Value = &'static str> + Clone {
    prop_oneof![3 => Just(usual), 1 => prop::sample::select(pool)]
}

fn service() -> impl Strategy<Value = String> {
    let meta = (pick(&["default", "a", "b"]), pick(&["web", "api", "x"]));
    let spec = (
        mostly("type: LoadBalancer", &["", "type: ClusterIP", "type: NodePort", "type: Bogus"]),
        mostly("", &[
            "ipFamilies: [IPv4]",
            "ipFamilies: [IPv6]",
            "ipFamilies: [IPv4, IPv6]",
            "ipFamilies: [IPvX]",
        ]),
        mostly("", &[
            "externalIPs: [10.1.0.5]",
            "externalIPs: [203.0.113.9]",
            "externalIPs: [nope, \"2001:db8::9\"]",
        ]),
        mostly("", &[
            "sessionAffinity: ClientIP",
            "sessionAffinity: Sticky",
            "sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}",
        ]),
        mostly("", &["externalTrafficPolicy: Local", "externalTrafficPolicy: Weird"]),
        mostly("", &[
            "loadBalancerSourceRanges: [10.0.0.0/8]",
            "loadBalancerSourceRanges: [bad, \"2001:db8::/64\"]",
        ]),
        prop::collection::vec(port(), 0..3),
    );
    let annotations = mostly(
        "",
        &[
            "annotations: {xlb.io/maglev-size: \"7\"}",
            "annotations: {xlb.io/maglev-size: \"8\"}",
            "annotations: {xlb.io/encap: ipip, xlb.io/no-endpoints: drop}",
            "annotations: {xlb.io/encap: gre, xlb.io/no-endpoints: maybe}",
        ],
    );
    let ingress = mostly(
        "status: {loadBalancer: {ingress: [{ip: 10.100.0.1}]}}",
        &[
            "",
            "status: {loadBalancer: {ingress: [{ip: 10.100.0.1}]}}",
            "status: {loadBalancer: {ingress: [{ip: 10.100.0.2}, {ip: \"2001:db8:100::1\"}]}}",
            "status: {loadBalancer: {ingress: [{ip: bogus}, {ip: 10.100.0.3, ipMode: Proxy}]}}",
        ],
    );
    (meta, spec, annotations, ingress).prop_map(|((ns, name), s, ann, ing)| {
        let (ty, fam, ext, aff, etp, ranges, ports) = s;
        let mut y = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n"
        );
        if !ann.is_empty() {
            y += &format!("  {ann}\n");
        }
        y += "spec:\n";
        for line in [ty, fam, ext, aff, etp, ranges] {
            if !line.is_empty() {
                y += &format!("  {line}\n");
            }
        }
        if !ports.is_empty() {
            y += &format!("  ports: [{}]\n", ports.join(", "));
        }
        if !ing.is_empty() {
            y += &format!("{ing}\n");
        }
        y
    })
}

fn port() -> impl Strategy<Value = String> {
    (
        pick(&["http", "dns", "", "Bad_Name"]),
        mostly("", &["protocol: TCP", "protocol: UDP", "protocol: SCTP", "protocol: QUIC"]),
        mostly("80", &["53", "0", "-1", "65535", "70000"]),
        mostly(
            "",
            &["targetPort: 8080", "targetPort: web", "targetPort: 0", "targetPort: Bad_Name"],
        ),
        mostly("", &["nodePort: 30080", "nodePort: 0"]),
    )
        .prop_map(|(name, proto, port, target, node_port)| {
            let mut fields = vec![format!("port: {port}")];
            if !name.is_empty() {
                fields.push(format!("name: {name}"));
            }
            for f in [proto, target, node_port] {
                if !f.is_empty() {
                    fields.push(f.to_string());
                }
            }
            format!("{{{}}}", fields.join(", "))
        })
}

fn slice() -> impl Strategy<Value = String> {
    (
        pick(&["default", "a", "b"]),
        pick(&["web", "api", "x"]),
        0u8..4,
        pick(&["IPv4", "IPv6", "FQDN", "Bogus"]),
        pick(&["[{name: http, port: 8080}]", "[{name: dns, port: 5353, protocol: UDP}]", "[{name: web, port: 0}]", "[{port: 80}]"]),
        prop::collection::vec(endpoint(), 0..4),
    )
        .prop_map(|(ns, svc, n, ty, ports, eps)| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {svc}-{n}\n  \
                 namespace: {ns}\n  labels: {{kubernetes.io/service-name: {svc}}}\naddressType: {ty}\n\
                 ports: {ports}\nendpoints: [{}]\n",
                eps.join(", ")
            )
        })
}

fn endpoint() -> impl Strategy<Value = String> {
    (
        pick(&["[10.244.1.5]", "[10.244.2.6]", "[\"2001:db8:244::5\"]", "[x]", "[]"]),
        pick(&["", "nodeName: node1", "nodeName: lb", "nodeName: gone"]),
        pick(&[
            "",
            "conditions: {ready: true}",
            "conditions: {ready: false}",
            "conditions: {ready: false, serving: true, terminating: true}",
        ]),
    )
        .prop_map(|(addrs, node, cond)| {
            let mut f = vec![format!("addresses: {addrs}")];
            for x in [node, cond] {
                if !x.is_empty() {
                    f.push(x.to_string());
                }
            }
            format!("{{{}}}", f.join(", "))
        })
}

fn nodes() -> impl Strategy<Value = &'static str> {
    const BOTH: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: lb}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.2}, {type: InternalIP, address: \"2001:db8:f::2\"}]}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: node1}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.11}]}\n";
    mostly(BOTH, &[
        "apiVersion: v1\nkind: Node\nmetadata: {name: lb}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.2}, {type: InternalIP, address: \"2001:db8:f::2\"}]}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: node1}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.11}]}\n",
        "apiVersion: v1\nkind: Node\nmetadata: {name: lb}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.2}]}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: node1}\nstatus: {addresses: [{type: Hostname, address: node1}]}\n",
        "apiVersion: v1\nkind: Node\nmetadata: {name: node1}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.11}]}\n",
    ])
}

fn cluster_yaml() -> impl Strategy<Value = String> {
    (prop::collection::vec(service(), 0..5), prop::collection::vec(slice(), 0..5), nodes())
        .prop_map(|(svcs, slices, nodes)| {
            let mut docs = svcs;
            docs.extend(slices);
            docs.push(nodes.to_string());
            docs.join("---\n")
        })
}

fn options(leave_out_invalid: bool) -> TranslateOptions {
    TranslateOptions {
        external_ip_cidrs: vec!["10.1.0.0/16".parse().unwrap()],
        leave_out_invalid,
        ..TranslateOptions::new("lb")
    }
}

fn check(yaml: &str) {
    // Duplicate objects (same kind, namespace, name) are a load error; any
    // load error must name where it is.
    let cluster = match file::load_str(yaml, "gen.yaml") {
        Ok(c) => c,
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("gen.yaml"), "load error without its origin: {msg}");
            return;
        }
    };
    let strict = translate(&cluster, &options(false));
    let mut t = Translator::new(options(true));
    t.update(Changes::full(cluster.clone()));
    let problems = t.problems();
    for p in &problems {
        assert!(!p.field.is_empty(), "no field: {p}");
        assert!(["Service", "EndpointSlice", "Node"].contains(&p.object.kind), "{p}");
        assert!(!p.object.name.is_empty(), "unnamed object: {p}");
        assert!(p.to_string().starts_with(&format!("{} ", p.object.kind)), "{p}");
    }
    // Every problem a whole rejection names is reported; leaving out may
    // find more, only duplicate frontends among parts a rejected Service
    // never got to claim.
    let strict_errors = strict.as_ref().err().map(|e| e.0.clone()).unwrap_or_default();
    let duplicate = |p: &xlb_control::translate::ConfigError| {
        matches!(p.problem, xlb_control::translate::Problem::DuplicateFrontend { .. })
    };
    for e in &strict_errors {
        if duplicate(e) {
            // Leaving out, more claims exist (the valid parts of rejected
            // Services): a later claim stays later, maybe after another.
            let same = |p: &&xlb_control::translate::ConfigError| {
                duplicate(p) && p.object == e.object && p.field == e.field
            };
            assert!(problems.iter().any(|p| same(&p)), "{e} not reported when leaving out");
        } else {
            assert!(problems.contains(e), "{e} not reported when leaving out");
        }
    }
    for p in problems.iter().filter(|p| !strict_errors.contains(p)) {
        assert!(duplicate(p), "{p}: only reported when leaving out");
    }
    let node_known = cluster.nodes.iter().any(|n| n.metadata.name.as_deref() == Some("lb"));
    let Ok(desired) = t.result() else {
        assert!(!node_known, "left out, yet not applied: {:?}", t.result());
        return;
    };
    let allowed: IpAddr = "10.1.0.0".parse().unwrap();
    let mut seen = HashSet::new();
    for svc in desired.services.values() {
        for fe in &svc.frontends {
            if fe.kind == lb::model::FrontendKind::ExternalIp {
                let inside = matches!((fe.addr, allowed), (IpAddr::V4(a), IpAddr::V4(b))
                    if a.octets()[..2] == b.octets()[..2]);
                assert!(inside, "{}: externalIP {} outside the allowed CIDR", svc.key, fe.addr);
            }
            assert!(
                seen.insert((fe.addr, fe.port, fe.proto)),
                "{}: frontend {}:{} given twice",
                svc.key,
                fe.addr,
                fe.port
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn generated_manifests_never_panic_and_every_problem_is_named(yaml in cluster_yaml()) {
        check(&yaml);
    }
}

/// The generator is worth its cases: most clusters load, many have
/// problems, and many still apply frontends when problems are left out.
#[test]
fn the_generator_reaches_translation() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut loaded, mut with_problems, mut with_frontends) = (0, 0, 0);
    for _ in 0..200 {
        let yaml = cluster_yaml().new_tree(&mut runner).unwrap().current();
        let Ok(cluster) = file::load_str(&yaml, "gen.yaml") else { continue };
        loaded += 1;
        let mut t = Translator::new(options(true));
        t.update(Changes::full(cluster));
        with_problems += usize::from(!t.problems().is_empty());
        if let Ok(d) = t.result() {
            with_frontends += usize::from(d.services.values().any(|s| !s.frontends.is_empty()));
        }
    }
    eprintln!("of 200: {loaded} loaded, {with_problems} with problems, {with_frontends} applying frontends");
    assert!(loaded >= 100 && with_problems >= 30 && with_frontends >= 30);
}
