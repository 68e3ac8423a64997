//! Manifests all the way into the real pinned maps: the embedded nginx
//! example translated and applied lists back exactly; one endpoint change in
//! the manifests rewrites one service; re-applying writes nothing.
//! Privileged tier: needs root and BPF; fails (never skips) without them.
use std::net::SocketAddr;

use lb::{
    datapath::Datapath,
    loader::{Dataplane, LoadOptions},
};
use testkit::pins::PinDir;
use xlb_control::{
    examples,
    source::file,
    translate::{translate, TranslateOptions},
};

/// The nginx example plus a second service, "default/web", with one ready
/// and one given endpoint condition.
fn manifests(second_endpoint: &str) -> String {
    format!(
        "{}---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: LoadBalancer
  ipFamilies: [IPv4]
  ports: [{{name: http, port: 80, targetPort: 8080}}]
status:
  loadBalancer:
    ingress: [{{ip: 10.100.0.9}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
- {{addresses: [10.244.1.12], nodeName: node1, conditions: {{ready: true}}}}
- {{addresses: [10.244.2.12], nodeName: node2, conditions: {second_endpoint}}}
",
        examples::NGINX
    )
}

#[test]
fn manifests_to_maps_one_endpoint_change_rewrites_one_service() {
    let pins = PinDir::new("apply");
    let _dp = Dataplane::load(&LoadOptions::small(pins.path()))
        .expect("loading the datapath (root and BPF required)");
    let mut path = Datapath::open(pins.path()).expect("opening the pinned maps");
    let opts = TranslateOptions::new("lb");

    let ready = "{ready: true}";
    let cluster = file::load_str(&manifests(ready), "test").unwrap();
    let want = translate(&cluster, &opts).unwrap();
    let first = path.apply(&want).unwrap();
    assert_eq!(first.services_added, 3, "{first:?}");

    // What the maps hold is what the manifests say: one service per family.
    let listing = path.list().unwrap();
    let summary = |name: &str| {
        let s = listing.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("{name}"));
        let mut fe: Vec<String> =
            s.frontends.iter().map(|f| SocketAddr::new(f.addr, f.port).to_string()).collect();
        let mut be: Vec<String> = s
            .backends
            .iter()
            .map(|b| format!("{} via {:?}", SocketAddr::new(b.addr, b.port), b.node))
            .collect();
        fe.sort();
        be.sort();
        (fe, be)
    };
    assert_eq!(
        summary("default/nginx:http"),
        (
            // Packet frontends (NodePort on the node's address, the LB IP) and
            // socket frontends (the same reached from inside the node, the
            // NodePort on loopback too, and the ClusterIP).
            [
                "10.0.0.2:30080",
                "10.0.0.2:30080",
                "10.100.0.1:80",
                "10.100.0.1:80",
                "10.96.0.10:80",
                "127.0.0.1:30080",
            ]
            .map(String::from)
            .to_vec(),
            vec![
                "10.244.1.11:80 via Some(10.0.0.11)".to_string(),
                "10.244.2.11:80 via Some(10.0.0.12)".to_string()
            ]
        )
    );
    assert_eq!(
        summary("default/nginx:http/ipv6"),
        (
            [
                "[2001:db8:100::1]:80",
                "[2001:db8:100::1]:80",
                "[2001:db8:f::2]:30080",
                "[2001:db8:f::2]:30080",
                "[::1]:30080",
                "[fd00:10:96::10]:80",
            ]
            .map(String::from)
            .to_vec(),
            vec![
                "[2001:db8:244:1::11]:80 via Some(2001:db8:f::11)".to_string(),
                "[2001:db8:244:2::11]:80 via Some(2001:db8:f::12)".to_string()
            ]
        )
    );

    // The same manifests again: nothing to write.
    let again = path.apply(&translate(&cluster, &opts).unwrap()).unwrap();
    assert_eq!(again.writes(), 0, "{again:?}");

    // One endpoint of default/web starts terminating: one service changes.
    let term = "{ready: false, serving: false, terminating: true}";
    let cluster = file::load_str(&manifests(term), "test").unwrap();
    let st = path.apply(&translate(&cluster, &opts).unwrap()).unwrap();
    assert_eq!((st.services_added, st.services_removed, st.services_changed), (0, 0, 1), "{st:?}");
    let web = path.list().unwrap().into_iter().find(|s| s.name == "default/web:http").unwrap();
    assert_eq!(web.active_backends, 1, "{web:?}");
    let t = web.backends.iter().find(|b| b.addr.to_string() == "10.244.2.12").unwrap();
    assert!(t.terminating && t.slots == 0, "{t:?}");
}
