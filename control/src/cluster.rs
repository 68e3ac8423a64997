//! The Kubernetes objects the control plane acts on, however they were
//! obtained (manifest files or the API watcher), and the form a source hands
//! them over in: [`Changes`], the objects changed since the last hand-over
//! (shared as `Arc`s with the source's caches, never deep-copied), or every
//! object of a kind at once (`full`: first list, relist, file reload). The
//! one consumer is [`crate::translate::Translator`], which re-translates only
//! what a change touches. [`Cluster`] is a plain snapshot, for manifest files,
//! `xlb validate` and tests.
use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{
    api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    Metadata,
};

/// A snapshot of the objects xlb programs from.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
}

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
    pub fn of<K: Metadata<Ty = ObjectMeta>>(obj: &K) -> Self {
        let m = obj.metadata();
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

impl<K: Metadata<Ty = ObjectMeta>> KindChanges<K> {
    /// Every object of a kind, as a full listing.
    pub fn full(objects: impl IntoIterator<Item = K>) -> Self {
        KindChanges {
            full: true,
            objects: objects.into_iter().map(|o| (ObjectKey::of(&o), Some(Arc::new(o)))).collect(),
        }
    }
}

/// What a source hands the reconciler: the changes since its last hand-over.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    pub services: KindChanges<Service>,
    pub slices: KindChanges<EndpointSlice>,
    pub nodes: KindChanges<Node>,
}

impl Changes {
    /// Every object of `cluster`, each kind a full listing.
    pub fn full(cluster: Cluster) -> Self {
        Changes {
            services: KindChanges::full(cluster.services),
            slices: KindChanges::full(cluster.slices),
            nodes: KindChanges::full(cluster.nodes),
        }
    }

    /// Some kind is listed in full: objects may have gone without a delete
    /// event, so the consumer should diff everything.
    pub fn any_full(&self) -> bool {
        self.services.full || self.slices.full || self.nodes.full
    }

    /// Objects listed, all kinds together.
    pub fn len(&self) -> usize {
        self.services.objects.len() + self.slices.objects.len() + self.nodes.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && !self.any_full()
    }
}

/// The objects of a source, kept current from its [`Changes`] (a mirror for
/// tests and tools; the translator keeps its own indexed copy).
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    pub slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    pub nodes: BTreeMap<ObjectKey, Arc<Node>>,
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

impl Objects {
    pub fn apply(&mut self, changes: &Changes) {
        apply_kind(&mut self.services, &changes.services);
        apply_kind(&mut self.slices, &changes.slices);
        apply_kind(&mut self.nodes, &changes.nodes);
    }

    /// A deep copy, ordered by namespace and name.
    pub fn snapshot(&self) -> Cluster {
        Cluster {
            services: self.services.values().map(|o| (**o).clone()).collect(),
            slices: self.slices.values().map(|o| (**o).clone()).collect(),
            nodes: self.nodes.values().map(|o| (**o).clone()).collect(),
        }
    }
}
