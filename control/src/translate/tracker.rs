//! Incremental dependency tracking: keeps every object the translation reads
//! (the sources' `Arc`s, never copied) with the indices that say what a
//! change touches, and answers, for a batch of [`Changes`], which Services
//! must be translated again:
//! - a Service change: that Service;
//! - an EndpointSlice change: the Service its `kubernetes.io/service-name`
//!   label names, before and after;
//! - a Node change, only if its addresses changed (status heartbeats do
//!   not): the Services with a slice whose endpoints name it; and when it is
//!   this node, every NodePort and LoadBalancer Service (its addresses are
//!   their frontends), every pod with a hostPort here and this node's
//!   settings;
//! - a Pod change: that Pod, if it maps a host port on this node (before or
//!   after): other Pods are not kept at all.
//!
//! So the cost of an update grows with the change, not with the cluster.
//! What the Services translate to is the [`super::Translator`]'s; the
//! dependencies are read from the objects alone, so another consumer of the
//! same objects (ClusterIP, say) can use the same answer.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

// hashbrown's tables (foldhash, seeded per table): these are keyed by
// object and node names any namespace user chooses, so not an unseeded hash
// (FxHash) that a user could collide on purpose; faster than std's SipHash
// at a cold start's 30k slices and 300k endpoint node lookups.
use hashbrown::{HashMap, HashSet};

use k8s_openapi::api::core::v1::{Node, Pod, Service as KubeService};

use super::{
    endpoints::{self, ServiceName},
    hostports,
    nodes::Nodes,
    services,
};
use crate::cluster::{self, Changes, EndpointSlice, KindChanges, ObjectKey};

/// What a batch of changes touches.
#[derive(Debug, Default)]
pub(super) struct Touched {
    /// Services to translate again (those gone included).
    pub(super) services: BTreeSet<ObjectKey>,
    /// Pods to translate again (host ports; those gone included).
    pub(super) pods: BTreeSet<ObjectKey>,
    /// This node's addresses changed.
    pub(super) this_node: bool,
}

/// A slice filed under its Service: its key (shared with `slices`) and the object.
type Filed = (Arc<ObjectKey>, Arc<EndpointSlice>);

/// Every object the translation reads, indexed by what depends on it.
#[derive(Debug)]
pub(super) struct Tracker {
    /// The node xlb runs on.
    this_node: String,
    services: BTreeMap<ObjectKey, Arc<KubeService>>,
    /// Each EndpointSlice by key. The key is shared by the indices below
    /// (at 30k slices of 10 endpoints, a key and a node list of its own per
    /// node held ~55 MB); the Service a slice is filed under and the nodes
    /// it names are read from the object again when it is unfiled.
    slices: HashMap<Arc<ObjectKey>, Arc<EndpointSlice>>,
    /// (namespace, Service name) -> its slices, sorted by slice name (a
    /// Vec: most Services have one slice, and a BTreeMap's first node
    /// held ~400 bytes each, ~12 MB at 30k Services).
    slices_of: HashMap<ServiceName, Vec<Filed>>,
    /// Node name -> the slices whose endpoints name it.
    slices_on: HashMap<String, HashSet<Arc<ObjectKey>>>,
    nodes: Nodes,
    /// This node's pods that map a host port.
    pods: BTreeMap<ObjectKey, Arc<Pod>>,
}

impl Tracker {
    pub(super) fn new(this_node: &str) -> Self {
        Tracker {
            this_node: this_node.to_string(),
            services: BTreeMap::new(),
            slices: HashMap::new(),
            slices_of: HashMap::new(),
            slices_on: HashMap::new(),
            nodes: Nodes::default(),
            pods: BTreeMap::new(),
        }
    }

    /// Takes in a source's changes; what they touch.
    pub(super) fn update(&mut self, changes: Changes) -> Touched {
        // Each kind this translation reads; the others are other consumers'.
        let Changes { services, slices, nodes, pods, .. } = changes;
        let mut touched = Touched::default();
        self.update_nodes(nodes, &mut touched);
        self.update_slices(slices, &mut touched);
        self.update_services(services, &mut touched);
        self.update_pods(pods, &mut touched);
        touched
    }

    /// Pod `key`, if it maps a host port on this node.
    pub(super) fn pod(&self, key: &ObjectKey) -> Option<&Arc<Pod>> {
        self.pods.get(key)
    }

    fn update_pods(&mut self, pods: KindChanges<Pod>, touched: &mut Touched) {
        for (key, pod) in pods.into_changes(self.pods.keys()) {
            let pod = pod.filter(|p| hostports::relevant(p, &self.this_node));
            if let (Some(old), Some(new)) = (self.pods.get(&key), &pod) {
                if cluster::unchanged(old, new) {
                    continue;
                }
            }
            match pod {
                Some(p) => {
                    self.pods.insert(key.clone(), p);
                }
                None if self.pods.remove(&key).is_none() => continue,
                None => {}
            }
            touched.pods.insert(key);
        }
    }

    /// Service `key` (None: not held).
    pub(super) fn service(&self, key: &ObjectKey) -> Option<&Arc<KubeService>> {
        self.services.get(key)
    }

    /// The EndpointSlices of `svc`, by slice name.
    pub(super) fn slices_of(&self, svc: &KubeService) -> Vec<&EndpointSlice> {
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let name = svc.metadata.name.as_deref().unwrap_or("");
        let slices = self.slices_of.get(&(ns.to_string(), name.to_string()));
        slices.map(|v| v.iter().map(|(_, s)| &**s).collect()).unwrap_or_default()
    }

    pub(super) fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    /// Objects held: (Services, EndpointSlices, Nodes).
    pub(super) fn counts(&self) -> (usize, usize, usize) {
        (self.services.len(), self.slices.len(), self.nodes.len())
    }

    fn update_nodes(&mut self, mut nodes: KindChanges<Node>, touched: &mut Touched) {
        // Nodes are cluster-scoped: known by name alone, whatever a manifest says.
        for (key, _) in &mut nodes.objects {
            key.namespace = None;
        }
        let held: Vec<ObjectKey> = if nodes.full {
            self.nodes.names().map(|n| ObjectKey::new(None, n)).collect()
        } else {
            Vec::new()
        };
        let this_before = self.nodes.addrs(&self.this_node).map(<[_]>::to_vec);
        for (key, node) in nodes.into_changes(&held) {
            if !self.nodes.update(key.name.clone(), node) {
                continue;
            }
            for slice in self.slices_on.get(&key.name).into_iter().flatten() {
                if let Some(owner) = endpoints::owner(&self.slices[&**slice]) {
                    self.touch(&owner, touched);
                }
            }
        }
        touched.this_node = self.nodes.addrs(&self.this_node) != this_before.as_deref();
        if touched.this_node {
            let node_ports = self.services.iter().filter(|(_, s)| services::opens_node_ports(s));
            touched.services.extend(node_ports.map(|(k, _)| k.clone()));
            touched.pods.extend(self.pods.keys().cloned());
        }
    }

    fn update_slices(&mut self, slices: KindChanges<EndpointSlice>, touched: &mut Touched) {
        for (key, slice) in slices.into_changes(self.slices.keys().map(|k| &**k)) {
            if let (Some(old), Some(new)) = (self.slices.get(&key), &slice) {
                if cluster::unchanged(old, new) {
                    continue;
                }
            }
            if let Some(old) = self.slices.remove_entry(&key) {
                self.unfile(old, touched);
            }
            if let Some(slice) = slice {
                self.file(key, slice, touched);
            }
        }
    }

    /// Indexes `slice` under its Service and its endpoints' nodes.
    fn file(&mut self, key: ObjectKey, object: Arc<EndpointSlice>, touched: &mut Touched) {
        let key = Arc::new(key);
        if let Some(owner) = endpoints::owner(&object) {
            self.touch(&owner, touched);
            // Most Services have one slice: room for one.
            let of_owner = self.slices_of.entry(owner).or_insert_with(|| Vec::with_capacity(1));
            match of_owner.binary_search_by(|(k, _)| k.name.cmp(&key.name)) {
                Ok(i) => of_owner[i].1 = object.clone(),
                Err(i) => of_owner.insert(i, (key.clone(), object.clone())),
            }
        }
        for n in endpoints::nodes_named(&object) {
            self.slices_on.entry_ref(n).or_default().insert(key.clone());
        }
        self.slices.insert(key, object);
    }

    /// Undoes [`Tracker::file`] of slice `key`.
    fn unfile(&mut self, (key, old): (Arc<ObjectKey>, Arc<EndpointSlice>), touched: &mut Touched) {
        if let Some(owner) = endpoints::owner(&old) {
            if let Some(m) = self.slices_of.get_mut(&owner) {
                if let Ok(i) = m.binary_search_by(|(k, _)| k.name.cmp(&key.name)) {
                    m.remove(i);
                }
                if m.is_empty() {
                    self.slices_of.remove(&owner);
                }
            }
            self.touch(&owner, touched);
        }
        for n in endpoints::nodes_named(&old) {
            if let Some(on) = self.slices_on.get_mut(n) {
                on.remove(&key);
                if on.is_empty() {
                    self.slices_on.remove(n);
                }
            }
        }
    }

    fn update_services(&mut self, services: KindChanges<KubeService>, touched: &mut Touched) {
        for (key, svc) in services.into_changes(self.services.keys()) {
            if let (Some(old), Some(new)) = (self.services.get(&key), &svc) {
                if cluster::unchanged(old, new) {
                    continue;
                }
            }
            touched.services.insert(key.clone());
            match svc {
                Some(svc) => self.services.insert(key, svc),
                None => self.services.remove(&key),
            };
        }
    }

    /// Marks the Service a slice filed under (namespace, name) belongs to: a
    /// manifest's Service without a namespace is in "default".
    fn touch(&self, (ns, name): &ServiceName, touched: &mut Touched) {
        let key = ObjectKey::new(Some(ns), name);
        if self.services.contains_key(&key) {
            touched.services.insert(key);
        }
        if ns == "default" {
            let bare = ObjectKey::new(None, name);
            if self.services.contains_key(&bare) {
                touched.services.insert(bare);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cluster::{Cluster, Kind},
        source::file::load_str,
    };

    /// Services a (LoadBalancer, endpoint on node1) and b (ClusterIP,
    /// endpoint on node2); this node is lb.
    const OBJECTS: &str = concat!(
        "
apiVersion: v1
kind: Service
metadata: {name: a, namespace: default}
spec: {type: LoadBalancer, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: default}
spec: {ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: a-1, namespace: default, labels: {kubernetes.io/service-name: a}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.5], nodeName: node1}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: b-1, namespace: default, labels: {kubernetes.io/service-name: b}}
addressType: IPv4
endpoints: [{addresses: [10.244.2.5], nodeName: node2}]
---
",
        include_str!("../../tests/fixtures/three-nodes.yaml")
    );

    fn tracker() -> (Tracker, Cluster) {
        let cluster = load_str(OBJECTS, "objects").unwrap();
        let mut t = Tracker::new("lb");
        let touched = t.update(Changes::full(cluster.clone()));
        assert_eq!(names(&touched), ["a", "b"]);
        assert!(touched.this_node);
        (t, cluster)
    }

    fn one<K: Kind>(obj: &K) -> KindChanges<K> {
        KindChanges {
            full: false,
            objects: vec![(ObjectKey::of(obj), Some(Arc::new(obj.clone())))],
        }
    }

    fn names(t: &Touched) -> Vec<&str> {
        t.services.iter().map(|k| k.name.as_str()).collect()
    }

    fn set_address(node: &mut Node, addr: &str) {
        node.status.as_mut().unwrap().addresses.as_mut().unwrap()[0].address = addr.into();
    }

    #[test]
    fn a_node_touches_the_services_with_endpoints_on_it_when_its_addresses_change() {
        let (mut t, cluster) = tracker();
        let mut node2 = cluster.nodes[2].clone();
        node2.metadata.labels = Some([("heartbeat".to_string(), "1".to_string())].into());
        let touched = t.update(Changes { nodes: one(&node2), ..Default::default() });
        assert!(names(&touched).is_empty() && !touched.this_node, "{touched:?}");

        set_address(&mut node2, "10.0.0.99");
        let touched = t.update(Changes { nodes: one(&node2), ..Default::default() });
        assert_eq!(names(&touched), ["b"]);
        assert!(!touched.this_node);
    }

    #[test]
    fn this_node_touches_every_service_with_node_ports() {
        let (mut t, cluster) = tracker();
        let mut lb = cluster.nodes[0].clone();
        set_address(&mut lb, "10.0.0.3");
        let touched = t.update(Changes { nodes: one(&lb), ..Default::default() });
        assert_eq!(names(&touched), ["a"]);
        assert!(touched.this_node);
    }

    #[test]
    fn a_slice_touches_its_service_before_and_after() {
        let (mut t, cluster) = tracker();
        let mut slice = cluster.slices[0].clone();
        slice.service_name = Some("b".into());
        slice.endpoints[0].node_name = Some("node2".into());
        let touched = t.update(Changes { slices: one(&slice), ..Default::default() });
        assert_eq!(names(&touched), ["a", "b"]);
        assert_eq!(t.slices_of(&cluster.services[1]).len(), 2);

        // node1 has no endpoint left: its change touches nothing.
        let mut node1 = cluster.nodes[1].clone();
        set_address(&mut node1, "10.0.0.98");
        let touched = t.update(Changes { nodes: one(&node1), ..Default::default() });
        assert!(names(&touched).is_empty());
    }

    #[test]
    fn a_full_listing_touches_what_it_leaves_out() {
        let (mut t, cluster) = tracker();
        let without_b = Cluster {
            services: vec![cluster.services[0].clone()],
            slices: vec![cluster.slices[0].clone()],
            ..cluster.clone()
        };
        let touched = t.update(Changes::full(without_b));
        assert_eq!(names(&touched), ["b"], "unchanged objects are skipped, b is gone");
        assert!(t.service(&ObjectKey::new(Some("default"), "b")).is_none());
        assert_eq!(t.counts(), (1, 1, 3));
    }
}
