//! The incremental translator against the whole-cluster translation, on every golden
//! scenario: objects fed one change at a time (in a scrambled order, with deletions and
//! re-creations, and a relabelled slice) must end in exactly the state, or exactly the
//! errors, `translate` gives for the final objects; the keys it reports as changed must
//! cover every datapath service whose value differs from before; and a change touches
//! only what depends on it. Fast tier: no privileges.
use std::{collections::BTreeMap, fs, path::PathBuf, sync::Arc};

use lb::model::{Service, ServiceKey};
use xlb_control::cluster::EndpointSlice;
use xlb_control::{
    cluster::{Changes, Cluster, KindChanges, ObjectKey},
    source::file,
    translate::{translate, TranslateOptions, Translator},
};

fn options(yaml: &str) -> TranslateOptions {
    let header = yaml.lines().find_map(|l| l.strip_prefix("# xlb-test:")).expect("header");
    let mut opts = TranslateOptions::new("");
    for word in header.split_whitespace() {
        let (k, v) = word.split_once('=').unwrap();
        match k {
            "node" => opts.node_name = v.to_string(),
            "external-ip-cidr" => opts.external_ip_cidrs.push(v.parse().unwrap()),
            "proxy-name" => opts.proxy_name = v.to_string(),
            _ => panic!("unknown key {k}"),
        }
    }
    opts
}

fn one<K>(obj: Option<&K>, key: ObjectKey) -> KindChanges<K>
where
    K: Clone
        + k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
{
    KindChanges { full: false, objects: vec![(key, obj.cloned().map(Arc::new))] }
}

/// Every change of `cluster` as its own batch, in a scrambled order.
fn batches(cluster: &Cluster) -> Vec<Changes> {
    let mut out = Vec::new();
    for n in &cluster.nodes {
        out.push(Changes { nodes: one(Some(n), ObjectKey::of(n)), ..Default::default() });
    }
    for s in &cluster.slices {
        out.push(Changes { slices: one(Some(s), ObjectKey::of(s)), ..Default::default() });
    }
    for s in &cluster.services {
        out.push(Changes { services: one(Some(s), ObjectKey::of(s)), ..Default::default() });
    }
    for p in &cluster.pods {
        out.push(Changes { pods: one(Some(p), ObjectKey::of(p)), ..Default::default() });
    }
    // Deterministic scramble: reverse, then interleave halves.
    out.reverse();
    let half = out.len() / 2;
    let (a, b) = out.split_at(half);
    let mut mixed = Vec::new();
    for i in 0..a.len().max(b.len()) {
        if let Some(x) = b.get(i) {
            mixed.push(x.clone());
        }
        if let Some(x) = a.get(i) {
            mixed.push(x.clone());
        }
    }
    mixed
}

fn check(t: &Translator, cluster: &Cluster, opts: &TranslateOptions, what: &str) {
    let want = translate(cluster, opts);
    let got = t.result();
    assert_eq!(got, want, "{what}");
}

#[test]
fn incremental_equals_whole_on_every_golden_scenario() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    let mut ran = 0;
    for path in &cases {
        let case = path.file_stem().unwrap().to_string_lossy().into_owned();
        let yaml = fs::read_to_string(path).unwrap();
        let Ok(cluster) = file::load_str(&yaml, &case) else { continue };
        ran += 1;
        // Both ways of treating problems: rejecting whole, leaving out.
        for leave_out_invalid in [false, true] {
            let opts = TranslateOptions { leave_out_invalid, ..options(&yaml) };
            let case = format!("{case} (leave_out_invalid={leave_out_invalid})");

            // One object at a time; the changed keys must cover every difference.
            let mut t = Translator::new(opts.clone());
            let mut before: BTreeMap<ServiceKey, Service> = BTreeMap::new();
            for b in batches(&cluster) {
                t.update(b);
                let changed = t.take_changed();
                let now = t.desired().services.clone();
                for (k, v) in &now {
                    if before.get(k) != Some(v) {
                        assert!(changed.contains(k), "{case}: {k} changed but not reported");
                    }
                }
                for k in before.keys() {
                    if !now.contains_key(k) {
                        assert!(changed.contains(k), "{case}: {k} removed but not reported");
                    }
                }
                before = now;
            }
            check(&t, &cluster, &opts, &format!("{case}: fed one object at a time"));

            // Delete every slice, then put them back: identical again.
            for s in &cluster.slices {
                t.update(Changes {
                    slices: one::<EndpointSlice>(None, ObjectKey::of(s)),
                    ..Default::default()
                });
            }
            let no_slices = Cluster { slices: Vec::new(), ..cluster.clone() };
            check(&t, &no_slices, &opts, &format!("{case}: without slices"));
            for s in &cluster.slices {
                t.update(Changes { slices: one(Some(s), ObjectKey::of(s)), ..Default::default() });
            }
            check(&t, &cluster, &opts, &format!("{case}: slices back"));

            // Delete the nodes, then a full listing of everything: identical.
            for n in &cluster.nodes {
                t.update(Changes {
                    nodes: one::<k8s_openapi::api::core::v1::Node>(None, ObjectKey::of(n)),
                    ..Default::default()
                });
            }
            let no_nodes = Cluster { nodes: Vec::new(), ..cluster.clone() };
            check(&t, &no_nodes, &opts, &format!("{case}: without nodes"));
            t.update(Changes::full(cluster.clone()));
            check(&t, &cluster, &opts, &format!("{case}: full relisting"));

            // A full listing of nothing empties it.
            t.update(Changes::full(Cluster::default()));
            check(&t, &Cluster::default(), &opts, &format!("{case}: empty listing"));
        }
    }
    assert!(ran >= 10, "only {ran} scenarios ran");
}

/// #12 item 1: leaving out reports exactly the problems rejecting reports,
/// and applies the rest: every golden scenario with this node known gives a
/// desired state, holding every datapath service of the valid objects.
#[test]
fn leaving_out_reports_every_problem_and_keeps_the_rest() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut with_problems = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let yaml = fs::read_to_string(&path).unwrap();
        let case = path.file_stem().unwrap().to_string_lossy().into_owned();
        let Ok(cluster) = file::load_str(&yaml, &case) else { continue };
        let strict = options(&yaml);
        let lenient = TranslateOptions { leave_out_invalid: true, ..strict.clone() };
        let mut t = Translator::new(lenient.clone());
        t.update(Changes::full(cluster.clone()));
        let problems = t.problems();
        match translate(&cluster, &strict) {
            Ok(want) => {
                assert!(problems.is_empty(), "{case}: {problems:?}");
                assert_eq!(t.result().unwrap(), want, "{case}: a valid scenario is unchanged");
            }
            Err(errors) => {
                with_problems += 1;
                assert_eq!(problems, errors.0, "{case}: the same problems, in the same order");
                let node_known = cluster
                    .nodes
                    .iter()
                    .any(|n| n.metadata.name.as_deref() == Some(strict.node_name.as_str()));
                assert_eq!(t.result().is_ok(), node_known, "{case}: {:?}", t.result());
                // Each Service without a problem (its own, or a frontend
                // another claimed first) is there whole.
                for svc in &cluster.services {
                    let me = xlb_control::translate::ObjectRef::of(svc);
                    if problems.iter().any(|p| p.object == me) {
                        continue;
                    }
                    let alone = Cluster { services: vec![svc.clone()], ..cluster.clone() };
                    if let (Ok(want), true) = (translate(&alone, &strict), node_known) {
                        let got = t.result().unwrap();
                        for (k, v) in &want.services {
                            assert_eq!(got.services.get(k), Some(v), "{case}: {k}");
                        }
                    }
                }
            }
        }
    }
    assert!(with_problems >= 4, "only {with_problems} scenarios with problems");
}

/// #12 item 1: a frontend two Services claim goes to the first claim (by
/// namespace and name) when problems are left out; the other Service keeps
/// its other frontends, and gets the address once the first lets it go.
#[test]
fn a_contested_frontend_goes_to_the_first_claim() {
    let cluster = file::load_str(TWO, "two").unwrap();
    let opts = TranslateOptions { leave_out_invalid: true, ..TranslateOptions::new("lb") };
    let mut t = Translator::new(opts);
    t.update(Changes::full(cluster.clone()));
    let _ = t.take_changed();
    let (a, b) = (ServiceKey("default/a:http".into()), ServiceKey("default/b:http".into()));
    let mut svc_b = cluster.services[1].clone();
    let ingress =
        svc_b.status.as_mut().unwrap().load_balancer.as_mut().unwrap().ingress.as_mut().unwrap();
    ingress[0].ip = Some("10.100.0.1".into());
    ingress.push(k8s_openapi::api::core::v1::LoadBalancerIngress {
        ip: Some("10.100.0.3".into()),
        ..Default::default()
    });
    t.update(Changes { services: one(Some(&svc_b), ObjectKey::of(&svc_b)), ..Default::default() });
    assert!(t.check().is_ok(), "left out, not rejected");
    let problems: Vec<String> = t.problems().iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("is already a frontend of default/a:http"), "{problems:?}");
    let addrs = |t: &Translator, k: &ServiceKey| -> Vec<String> {
        t.service(k).unwrap().frontends.iter().map(|f| f.addr.to_string()).collect()
    };
    assert_eq!(addrs(&t, &a), ["10.100.0.1"]);
    assert_eq!(addrs(&t, &b), ["10.100.0.3"], "b keeps its other frontend only");
    assert_eq!(t.desired().services[&b].frontends.len(), 1);
    // a goes: b gets the address, and is reported changed.
    let _ = t.take_changed();
    t.update(Changes {
        services: one::<k8s_openapi::api::core::v1::Service>(
            None,
            ObjectKey::of(&cluster.services[0]),
        ),
        ..Default::default()
    });
    assert!(t.take_changed().contains(&b));
    assert_eq!(addrs(&t, &b), ["10.100.0.1", "10.100.0.3"]);
    assert!(t.problems().is_empty());
}

const TWO: &str = concat!(
    "apiVersion: v1
kind: Service
metadata: {name: a, namespace: default}
spec:
  type: LoadBalancer
  ipFamilies: [IPv4]
  ports: [{name: http, port: 80}]
status: {loadBalancer: {ingress: [{ip: 10.100.0.1}]}}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: default}
spec:
  type: LoadBalancer
  ipFamilies: [IPv4]
  ports: [{name: http, port: 80}]
status: {loadBalancer: {ingress: [{ip: 10.100.0.2}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s1, namespace: default, labels: {kubernetes.io/service-name: a}}
addressType: IPv4
ports: [{name: http, port: 80}]
endpoints:
- {addresses: [10.244.1.5], nodeName: node1}
---
",
    include_str!("fixtures/three-nodes.yaml")
);

#[test]
fn a_change_touches_only_what_depends_on_it() {
    let cluster = file::load_str(TWO, "two").unwrap();
    let opts = TranslateOptions::new("lb");
    let mut t = Translator::new(opts.clone());
    t.update(Changes::full(cluster.clone()));
    assert_eq!(t.take_changed().len(), 2);

    // A node no endpoint names changes address: nothing to do.
    let mut node2 = cluster.nodes[2].clone();
    node2.status.as_mut().unwrap().addresses.as_mut().unwrap()[0].address = "10.0.0.99".into();
    t.update(Changes { nodes: one(Some(&node2), ObjectKey::of(&node2)), ..Default::default() });
    assert!(t.take_changed().is_empty());

    // node1 (a's endpoint) changes address: only a.
    let mut node1 = cluster.nodes[1].clone();
    node1.status.as_mut().unwrap().addresses.as_mut().unwrap()[0].address = "10.0.0.98".into();
    t.update(Changes { nodes: one(Some(&node1), ObjectKey::of(&node1)), ..Default::default() });
    assert_eq!(t.take_changed(), [ServiceKey("default/a:http".into())]);

    // The slice is relabelled from a to b: both change.
    let mut s1 = cluster.slices[0].clone();
    s1.service_name = Some("b".into());
    t.update(Changes { slices: one(Some(&s1), ObjectKey::of(&s1)), ..Default::default() });
    assert_eq!(
        t.take_changed(),
        [ServiceKey("default/a:http".into()), ServiceKey("default/b:http".into())]
    );
    assert!(t.desired().services[&ServiceKey("default/a:http".into())].backends.is_empty());
    assert_eq!(t.desired().services[&ServiceKey("default/b:http".into())].backends.len(), 1);

    // b takes a's address: rejected whole (duplicate frontend), a's fix accepted with
    // every change since.
    let mut b = cluster.services[1].clone();
    b.status.as_mut().unwrap().load_balancer.as_mut().unwrap().ingress.as_mut().unwrap()[0].ip =
        Some("10.100.0.1".into());
    t.update(Changes { services: one(Some(&b), ObjectKey::of(&b)), ..Default::default() });
    let errors = t.check().unwrap_err();
    assert!(errors.to_string().contains("is already a frontend of default/a:http"), "{errors}");
    t.update(Changes {
        services: one::<k8s_openapi::api::core::v1::Service>(
            None,
            ObjectKey::of(&cluster.services[0]),
        ),
        ..Default::default()
    });
    assert!(t.check().is_ok());
    let changed = t.take_changed();
    assert_eq!(changed, [ServiceKey("default/a:http".into()), ServiceKey("default/b:http".into())]);
}
