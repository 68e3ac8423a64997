//! The Kubernetes objects the control plane acts on, however they were
//! obtained (manifest files or the API watcher), and the forms they travel in.
//! Each form is a [`PerKind`] table, one value per kind registered in
//! [`kinds`] (the one list of kinds):
//! - [`Changes`]: the objects changed since the last hand-over, each kind a
//!   [`KindChanges`] (shared as `Arc`s with the source's caches, never
//!   deep-copied), or every object of a kind at once (`full`: first list,
//!   relist, file reload). Its producers are [`crate::source::file`] and
//!   [`crate::source::kube`]; its consumer is
//!   [`crate::translate::Translator`], which re-translates only what a
//!   change touches.
//! - [`Cluster`]: a plain snapshot, for manifest files, `xlb validate` and tests.
//! - [`Objects`]: a mirror kept current from [`Changes`] (tests and tools).
pub mod kinds;
pub mod networklogging;
pub mod slice;

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

pub use kinds::{for_each_kind, Kind, KindVisitor, PerKind};
pub use slice::EndpointSlice;

/// A snapshot of the objects xlb programs from: every object of each kind.
pub type Cluster = PerKind<kinds::Listed>;

/// What a source hands the reconciler: the changes since its last hand-over.
pub type Changes = PerKind<kinds::Changed>;

/// The objects of a source, kept current from its [`Changes`] (a mirror for
/// tests and tools; the translator keeps its own indexed copy).
pub type Objects = PerKind<kinds::Stored>;

/// Identity of an object: namespace (None for cluster-scoped kinds, or a
/// manifest that left it out) and name. Orders as `translate` orders objects.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: Option<&str>, name: &str) -> Self {
        ObjectKey { namespace: namespace.map(str::to_string), name: name.to_string() }
    }

    /// The key of `obj`, from its metadata.
    pub fn of<K: kube::Resource>(obj: &K) -> Self {
        let m = obj.meta();
        ObjectKey { namespace: m.namespace.clone(), name: m.name.clone().unwrap_or_default() }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Changes of one kind: each changed object as it is now, or `None` when it
/// was deleted.
#[derive(Clone, Debug)]
pub struct KindChanges<K> {
    /// `objects` lists every object of the kind the source holds: any object
    /// not listed is gone (a first list, a relist after 410 Gone, a reload).
    pub full: bool,
    pub objects: Vec<(ObjectKey, Option<Arc<K>>)>,
}

impl<K> Default for KindChanges<K> {
    fn default() -> Self {
        KindChanges { full: false, objects: Vec::new() }
    }
}

impl<K: kube::Resource> KindChanges<K> {
    /// Every object of a kind, as a full listing.
    pub fn full(objects: impl IntoIterator<Item = K>) -> Self {
        KindChanges {
            full: true,
            objects: objects.into_iter().map(|o| (ObjectKey::of(&o), Some(Arc::new(o)))).collect(),
        }
    }
}

impl<K> KindChanges<K> {
    /// The changes one by one: each listed object, and for a full listing a
    /// deletion of every key of `held` it leaves out (gone without a delete
    /// event).
    pub fn into_changes<'h>(
        self,
        held: impl IntoIterator<Item = &'h ObjectKey>,
    ) -> Vec<(ObjectKey, Option<Arc<K>>)> {
        let mut objects = self.objects;
        if self.full {
            let listed: HashSet<&ObjectKey> = objects.iter().map(|(k, _)| k).collect();
            let gone: Vec<ObjectKey> =
                held.into_iter().filter(|k| !listed.contains(k)).cloned().collect();
            objects.extend(gone.into_iter().map(|k| (k, None)));
        }
        objects
    }
}

/// `new` is `old` (the same `Arc`, or an equal object): a change to skip.
pub fn unchanged<K: PartialEq>(old: &Arc<K>, new: &Arc<K>) -> bool {
    Arc::ptr_eq(old, new) || **old == **new
}

impl Changes {
    /// Every object of `cluster`, each kind a full listing.
    pub fn full(mut cluster: Cluster) -> Self {
        struct Full<'a>(&'a mut Cluster, Changes);
        impl KindVisitor for Full<'_> {
            fn visit<K: Kind>(&mut self) {
                *K::of_mut(&mut self.1) = KindChanges::full(std::mem::take(K::of_mut(self.0)));
            }
        }
        let mut full = Full(&mut cluster, Changes::default());
        for_each_kind(&mut full);
        full.1
    }

    /// Some kind is listed in full: objects may have gone without a delete
    /// event, so the consumer should diff everything.
    pub fn any_full(&self) -> bool {
        self.tally().any_full
    }

    /// Every kind is listed in full: the source has listed everything once.
    pub fn all_full(&self) -> bool {
        self.tally().all_full
    }

    /// Objects listed, all kinds together.
    pub fn len(&self) -> usize {
        self.tally().objects
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && !self.any_full()
    }

    fn tally(&self) -> Tally<'_> {
        let mut t = Tally { changes: self, any_full: false, all_full: true, objects: 0 };
        for_each_kind(&mut t);
        t
    }
}

/// What [`Changes`] hold, over every kind.
struct Tally<'a> {
    changes: &'a Changes,
    any_full: bool,
    all_full: bool,
    objects: usize,
}

impl KindVisitor for Tally<'_> {
    fn visit<K: Kind>(&mut self) {
        let c = K::of(self.changes);
        self.any_full |= c.full;
        self.all_full &= c.full;
        self.objects += c.objects.len();
    }
}

impl Cluster {
    /// Each kind's name and how many objects of it the snapshot holds.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        struct Counts<'a>(&'a Cluster, Vec<(&'static str, usize)>);
        impl KindVisitor for Counts<'_> {
            fn visit<K: Kind>(&mut self) {
                self.1.push((K::KIND, K::of(self.0).len()));
            }
        }
        let mut c = Counts(self, Vec::new());
        for_each_kind(&mut c);
        c.1
    }
}

impl Objects {
    pub fn apply(&mut self, changes: &Changes) {
        struct Apply<'a>(&'a mut Objects, &'a Changes);
        impl KindVisitor for Apply<'_> {
            fn visit<K: Kind>(&mut self) {
                apply_kind(K::of_mut(self.0), K::of(self.1));
            }
        }
        for_each_kind(&mut Apply(self, changes));
    }

    /// A deep copy, ordered by namespace and name.
    pub fn snapshot(&self) -> Cluster {
        struct Snapshot<'a>(&'a Objects, Cluster);
        impl KindVisitor for Snapshot<'_> {
            fn visit<K: Kind>(&mut self) {
                *K::of_mut(&mut self.1) = K::of(self.0).values().map(|o| (**o).clone()).collect();
            }
        }
        let mut s = Snapshot(self, Cluster::default());
        for_each_kind(&mut s);
        s.1
    }
}

fn apply_kind<K>(map: &mut BTreeMap<ObjectKey, Arc<K>>, changes: &KindChanges<K>) {
    if changes.full {
        map.clear();
    }
    for (key, obj) in &changes.objects {
        match obj {
            Some(o) => {
                map.insert(key.clone(), o.clone());
            }
            None => {
                map.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Node, Service};

    use super::*;

    fn node(name: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n
    }

    #[test]
    fn registry_names_each_kind_once() {
        struct Names(Vec<String>);
        impl KindVisitor for Names {
            fn visit<K: Kind>(&mut self) {
                self.0.push(format!(
                    "{} {} {} {}",
                    K::API_VERSION,
                    K::KIND,
                    K::LIST_KIND,
                    K::NAMESPACED
                ));
            }
        }
        let mut names = Names(Vec::new());
        for_each_kind(&mut names);
        assert_eq!(
            names.0,
            [
                "v1 Service ServiceList true",
                "discovery.k8s.io/v1 EndpointSlice EndpointSliceList true",
                "v1 Node NodeList false",
                "v1 Pod PodList true",
                "v1 Namespace NamespaceList false",
                "networking.k8s.io/v1 NetworkPolicy NetworkPolicyList true",
                "networking.gke.io/v1alpha1 NetworkLogging NetworkLoggingList false",
            ]
        );
    }

    #[test]
    fn full_listing_of_a_cluster_and_its_tally() {
        let cluster = Cluster { nodes: vec![node("a"), node("b")], ..Default::default() };
        assert_eq!(
            cluster.counts(),
            [
                ("Service", 0),
                ("EndpointSlice", 0),
                ("Node", 2),
                ("Pod", 0),
                ("Namespace", 0),
                ("NetworkPolicy", 0),
                ("NetworkLogging", 0)
            ]
        );
        let changes = Changes::full(cluster);
        assert!(changes.any_full() && changes.all_full());
        assert_eq!(changes.len(), 2);
        assert!(changes.services.objects.is_empty() && changes.services.full);

        let one =
            Changes { services: KindChanges::full([Service::default()]), ..Default::default() };
        assert!(one.any_full() && !one.all_full());
        assert!(Changes::default().is_empty());
    }

    #[test]
    fn a_full_listing_deletes_what_it_leaves_out() {
        let held = [ObjectKey::new(None, "a"), ObjectKey::new(None, "gone")];
        let changes = KindChanges::full([node("a"), node("new")]).into_changes(&held);
        let keys: Vec<(String, bool)> =
            changes.iter().map(|(k, o)| (k.to_string(), o.is_some())).collect();
        assert_eq!(keys, [("a".into(), true), ("new".into(), true), ("gone".into(), false)]);

        let mut objects = Objects::default();
        objects.apply(&Changes::full(Cluster { nodes: vec![node("x")], ..Default::default() }));
        objects.apply(&Changes { nodes: KindChanges::full([node("y")]), ..Default::default() });
        let names: Vec<String> =
            objects.snapshot().nodes.iter().map(|n| ObjectKey::of(n).name).collect();
        assert_eq!(names, ["y"]);
    }
}
