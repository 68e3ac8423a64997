use serde_json::Value;

use super::*;

fn plan3(y: &str) -> Workload {
    plan(y, "test.yaml", 3).unwrap_or_else(|e| panic!("{e}"))
}

fn err3(y: &str) -> String {
    plan(y, "test.yaml", 3).map(|_| ()).expect_err("bad input accepted").to_string()
}

fn slices_of<'a>(w: &'a [Value], svc: &str) -> Vec<&'a Value> {
    w.iter().filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == svc).collect()
}

fn addresses(slice: &Value) -> Vec<String> {
    slice["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["addresses"][0].as_str().unwrap().to_string())
        .collect()
}

const DEPLOY: &str = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        ports:
        - {name: http, containerPort: 8080}
        - {name: dns, containerPort: 53, protocol: UDP}
";

#[test]
fn the_seed_example_places_addresses_and_publishes() {
    let w = plan3(SEED);
    let pods: Vec<(String, u32, u32)> = w.pods.iter().map(|p| (p.role(), p.node, p.slot)).collect();
    assert_eq!(pods.len(), 3, "{pods:?}");
    assert!(pods[0].0.starts_with("nginx-") && pods[0].1 == 1, "{pods:?}");
    assert!(pods[1].0.starts_with("nginx-") && pods[1].1 == 2, "{pods:?}");
    assert_eq!(pods[2], ("client-pod".to_string(), 3, 1));
    assert_eq!(w.pods[0].labels.get("app").map(String::as_str), Some("nginx"));
    assert!(w.pods[0].labels.contains_key("pod-template-hash"));
    let svc = w.service("default", "nginx-service").unwrap();
    assert_eq!(svc.kind, "ClusterIP");
    assert_eq!(
        svc.cluster_ips,
        vec![IpAddr::from(spec::CLUSTER_IP_V4), IpAddr::from(spec::CLUSTER_IP_V6)]
    );
    let lb = w.service("default", "nginx").unwrap();
    assert_eq!(lb.lb_ips, vec![IpAddr::from(spec::VIP_V4), IpAddr::from(spec::VIP_V6)]);
    assert_eq!(lb.ports[0].node_port, Some(30080));

    let all = w.endpoint_slices();
    let s = slices_of(&all, "nginx-service");
    assert_eq!(s.len(), 2, "one per family: {s:?}");
    assert_eq!(s[0]["addressType"], "IPv4");
    assert_eq!(s[1]["addressType"], "IPv6");
    assert_eq!(addresses(s[0]), vec!["10.244.1.11", "10.244.2.11"]);
    assert_eq!(addresses(s[1]), vec!["2001:db8:244:1::11", "2001:db8:244:2::11"]);
    assert_eq!(s[0]["ports"], serde_json::json!([{"name": "", "protocol": "TCP", "port": 80}]));
    assert_eq!(
        s[0]["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        slices::MANAGED_BY
    );
    let e = &s[0]["endpoints"][1];
    assert_eq!(e["nodeName"], "node2");
    assert_eq!(e["conditions"]["ready"], true);
    assert_eq!(e["targetRef"]["name"], w.pods[1].name.as_str());
    assert!(e.get("zone").is_none(), "zone-less: {e}");
    // The LB Service's named targetPort resolves to the same port.
    let s = slices_of(&all, "nginx");
    assert_eq!(s[0]["ports"][0]["port"], 80);
    assert_eq!(s[0]["ports"][0]["name"], "http");
}

#[test]
fn named_target_ports_resolve_per_pod_and_group_the_endpoints() {
    let y = format!(
        "{DEPLOY}---
apiVersion: v1
kind: Pod
metadata: {{name: legacy, namespace: shop, labels: {{app: web}}}}
spec:
  containers:
  - name: c
    ports: [{{name: http, containerPort: 9090}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: bare, namespace: shop, labels: {{app: web}}}}
spec:
  containers: [{{name: c}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  selector: {{app: web}}
  ports:
  - {{name: web, port: 80, targetPort: http}}
  - {{name: dns, port: 53, protocol: UDP, targetPort: dns}}
  - {{name: raw, port: 81, targetPort: 7000}}
"
    );
    let w = plan3(&y);
    let all = w.endpoint_slices();
    let s = slices_of(&all, "web");
    let ports = |s: &Value| -> Vec<(String, u64)> {
        s["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap().to_string(), p["port"].as_u64().unwrap()))
            .collect()
    };
    // Three port sets: the Deployment's pods (http 8080, dns 53), the
    // legacy pod (http 9090, no dns), the bare pod (only the number).
    assert_eq!(s.len(), 3, "{s:#?}");
    let by_ports: BTreeMap<Vec<(String, u64)>, Vec<String>> =
        s.iter().map(|s| (ports(s), addresses(s))).collect();
    let web_pods: Vec<String> =
        w.pods.iter().filter(|p| p.name.starts_with("web-")).map(|p| p.v4().to_string()).collect();
    let want = |p: &[(&str, u64)]| p.iter().map(|(n, v)| (n.to_string(), *v)).collect::<Vec<_>>();
    assert_eq!(by_ports[&want(&[("web", 8080), ("dns", 53), ("raw", 7000)])], web_pods);
    assert_eq!(by_ports[&want(&[("web", 9090), ("raw", 7000)])], vec!["10.244.3.11"]);
    assert_eq!(by_ports[&want(&[("raw", 7000)])], vec!["10.244.1.12"]);
    assert!(s.iter().all(|s| s["metadata"]["namespace"] == "shop"));
}

#[test]
fn families_follow_the_ip_family_policy() {
    let svc = |extra: &str| {
        format!(
            "{DEPLOY}---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: http}}]
{extra}"
        )
    };
    let families = |w: &Workload| -> Vec<String> {
        w.endpoint_slices().iter().map(|s| s["addressType"].as_str().unwrap().into()).collect()
    };
    let w = plan3(&svc(""));
    assert_eq!(families(&w), vec!["IPv4"], "SingleStack IPv4 by default");
    assert_eq!(w.services[0].cluster_ips, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
    let w = plan3(&svc("  ipFamilies: [IPv6]\n"));
    assert_eq!(families(&w), vec!["IPv6"]);
    assert_eq!(w.services[0].cluster_ips, vec!["fd00:10:96::10".parse::<IpAddr>().unwrap()]);
    let w = plan3(&svc("  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv6, IPv4]\n"));
    assert_eq!(families(&w), vec!["IPv6", "IPv4"]);
    let w = plan3(&svc("  clusterIP: 10.96.5.5\n"));
    assert_eq!(w.services[0].cluster_ips, vec!["10.96.5.5".parse::<IpAddr>().unwrap()]);
    let w = plan3(&svc("  clusterIP: None\n"));
    assert!(w.services[0].cluster_ips.is_empty(), "headless");
    assert_eq!(families(&w), vec!["IPv4"], "headless Services have slices too");
    // Written back as the API server would hold it.
    let m = w.manifest(&LabSpec { nodes: 3, ..LabSpec::default() });
    assert!(m.contains("clusterIP: None"), "{m}");
}

#[test]
fn replicas_spread_round_robin_and_node_names_are_honoured() {
    let y = "
apiVersion: v1
kind: Pod
metadata: {name: pinned}
spec: {nodeName: node3, containers: [{name: c}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 5
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: free}
spec: {containers: [{name: c}]}
";
    let w = plan3(y);
    let placed: Vec<(u32, u32)> = w.pods.iter().map(|p| (p.node, p.slot)).collect();
    assert_eq!(placed, vec![(3, 1), (1, 1), (2, 1), (3, 2), (1, 2), (2, 2), (3, 3)]);
    let names: BTreeSet<&str> = w.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names.len(), 7, "unique names: {names:?}");
    let plans = w.pod_plans();
    assert_eq!(plans[1].tcp, vec![80]);
    let spec = LabSpec { nodes: 3, workload: plans, ..LabSpec::default() };
    spec.validate().unwrap();
    // The agents' manifest: every object once, parseable, pods running
    // with the planned addresses.
    let m = w.manifest(&spec);
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&m)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "Pod").count(), 7);
    assert_eq!(kinds.iter().filter(|k| **k == "Node").count(), 4, "lb and 3 nodes");
    let ns = docs.iter().find(|d| d["kind"] == "Namespace").unwrap();
    assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "default");
    let pinned = docs.iter().find(|d| d["metadata"]["name"] == "pinned").unwrap();
    assert_eq!(pinned["status"]["podIPs"][0]["ip"], "10.244.3.11");
    assert_eq!(pinned["spec"]["nodeName"], "node3");
}

#[test]
fn bad_fields_are_named_with_their_object() {
    let svc = |ports: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec:\n  selector: {{a: b}}\n  ports: {ports}\n")
    };
    let cases = [
        (DEPLOY.replace("replicas: 2", "replicas: two"), "Deployment shop/web: spec.replicas: "),
        (
            DEPLOY.replace("containerPort: 8080", "containerPort: 0"),
            "Deployment shop/web: spec.template.spec.containers[0].ports[0].containerPort: ",
        ),
        (
            DEPLOY.replace("protocol: UDP", "protocol: QUIC"),
            "Deployment shop/web: spec.template.spec.containers[0].ports[1].protocol: ",
        ),
        (
            DEPLOY.replace("selector: {matchLabels: {app: web}}", "selector: {matchLabels: {app: api}}"),
            "Deployment shop/web: spec.selector.matchLabels: app=api",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {nodeName: node9, containers: [{name: c}]}\n"
                .into(),
            "Pod default/p: spec.nodeName: \"node9\" is not a node",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {}\n".into(),
            "Pod default/p: spec.containers: ",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\nspec: {containers: [{name: c}]}\n"
                .into(),
            "Pod default/Bad_Name: metadata.name: ",
        ),
        (svc("[{port: 80, targetPort: -1}]"), "Service default/s: spec.ports[0].targetPort: "),
        (svc("[{name: a, port: 80}, {port: 81}]"), "Service default/s: spec.ports[1].name: required"),
        (svc("[{port: 70000}]"), "Service default/s: spec.ports[0].port: "),
        (svc("[{port: 80, nodePort: 30001}]"), "Service default/s: spec.ports[0].nodePort: "),
        (
            svc("[{port: 80}]\n  clusterIP: 192.168.0.1"),
            "Service default/s: spec.clusterIP: 192.168.0.1 is outside the lab's service range",
        ),
        (
            svc("[{port: 80}]\n  ipFamilyPolicy: Sometimes"),
            "Service default/s: spec.ipFamilyPolicy: ",
        ),
        (svc("[{port: 80}]\n  type: Magic"), "Service default/s: spec.type: "),
        (
            "apiVersion: v1\nkind: Node\nmetadata: {name: n}\n".into(),
            "Node n: kind: the lab makes the Node objects itself",
        ),
        (
            "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\n".into(),
            "Job default/j: kind: batch/v1 Job is not taken by the lab",
        ),
        ("kind: [\n".into(), "test.yaml: document 1: "),
    ];
    for (y, want) in cases {
        let e = err3(&y);
        assert!(e.starts_with("test.yaml: "), "{e}");
        assert!(e.contains(want), "want {want:?} in the error:\n{e}\nfor:\n{y}");
    }
}

#[test]
fn a_service_selecting_nothing_gets_one_empty_slice_and_one_without_a_selector_none() {
    let y = "
apiVersion: v1
kind: Service
metadata: {name: lonely}
spec: {selector: {app: nobody}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: manual}
spec: {ports: [{port: 80}]}
";
    let w = plan3(y);
    let all = w.endpoint_slices();
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["metadata"]["name"], "lonely-ipv4");
    assert_eq!(all[0]["endpoints"], serde_json::json!([]));
    assert_eq!(w.services[1].cluster_ips, vec!["10.96.0.11".parse::<IpAddr>().unwrap()]);
}

#[test]
fn more_than_a_hundred_endpoints_take_several_slices() {
    let y = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: big}
spec:
  replicas: 150
  selector: {matchLabels: {app: big}}
  template:
    metadata: {labels: {app: big}}
    spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: big}
spec: {selector: {app: big}, ports: [{port: 80}]}
";
    let w = plan3(y);
    let all = w.endpoint_slices();
    let sizes: Vec<usize> = all.iter().map(|s| s["endpoints"].as_array().unwrap().len()).collect();
    assert_eq!(sizes, vec![100, 50]);
    assert_eq!(all[1]["metadata"]["name"], "big-ipv4-2");
}
