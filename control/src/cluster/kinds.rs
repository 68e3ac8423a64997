//! The registry of the Kubernetes kinds xlb reads: the one place that lists
//! them (`registry!` at the bottom). Everything that holds something per kind
//! is a [`PerKind`] table — a field per registered kind, of a type chosen by a
//! [`Family`]: the snapshots, changes and mirrors of [`super`], the Kubernetes
//! source's counters ([`crate::source::kube`]). Code that treats kinds alike
//! (decoding manifests in [`crate::source::file`], one watcher per kind in
//! [`crate::source::kube`], applying a full listing) is generic over [`Kind`]
//! and runs once per kind through [`for_each_kind`]. Code that reads one kind
//! (the translation) takes its field: `changes.services`.
//!
//! A new kind (Pod, Namespace, NetworkPolicy, a CRD) joins with one line in
//! `registry!`:
//!
//! ```text
//! registry! {
//!     ...
//!     /// Pods: addresses and labels (pod routes, policy selectors).
//!     pods: Pod,
//! }
//! ```
//!
//! From there manifests may hold Pods and PodLists, the Kubernetes source
//! probes, watches and counts them, and every table has a `pods` field
//! (`changes.pods: KindChanges<Pod>`, `cluster.pods: Vec<Pod>`). What is left
//! is the consumer that reads `changes.pods` (the translation's tracker takes
//! the kinds it reads with `let Changes { services, slices, nodes, .. }`),
//! and the service account's permission to list and watch the kind. The type
//! needs `k8s_openapi`'s `Resource`, `ListableResource` and `Metadata` (a
//! CRD: write those impls for it).
use std::{collections::BTreeMap, fmt, marker::PhantomData, sync::Arc};

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, Pod, Service},
        networking::v1::NetworkPolicy,
    },
    ClusterResourceScope, NamespaceResourceScope,
};
use serde::de::DeserializeOwned;

use super::{networklogging::NetworkLogging, slice::EndpointSlice, KindChanges, ObjectKey};

/// A registered kind: the k8s-openapi type of its objects, and where its
/// value sits in a [`PerKind`] table. Implemented by `registry!` only.
pub trait Kind:
    kube::Resource<DynamicType = ()>
    + Clone
    + PartialEq
    + fmt::Debug
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// "EndpointSlice": names the kind in errors, logs and metric labels.
    const KIND: &'static str;
    /// "discovery.k8s.io/v1".
    const API_VERSION: &'static str;
    /// "EndpointSliceList": the list of it a manifest may hold.
    const LIST_KIND: &'static str;
    /// Namespaced (Service) or cluster-scoped (Node).
    const NAMESPACED: bool;
    /// A custom resource (its group is not Kubernetes' own: neither the core
    /// group nor `*.k8s.io`): a cluster may not serve it (the CRD is not
    /// installed). The Kubernetes source then treats the kind as listed and
    /// empty instead of waiting for it.
    const OPTIONAL: bool;
    /// "endpointslices": the plural of URL paths (and of RBAC rules).
    const PLURAL: &'static str;
    /// "discovery.k8s.io" ("" for the core group).
    const GROUP: &'static str;

    /// This kind's value in `table`.
    fn of<F: Family>(table: &PerKind<F>) -> &F::Of<Self>;
    /// This kind's value in `table`, to change.
    fn of_mut<F: Family>(table: &mut PerKind<F>) -> &mut F::Of<Self>;
}

/// What a [`PerKind`] table holds for each kind `K`: `Of<K>`.
pub trait Family {
    type Of<K: Kind>;
}

/// Every object of a kind: `Vec<K>` (a snapshot, [`super::Cluster`]).
#[derive(Debug)]
pub enum Listed {}
impl Family for Listed {
    type Of<K: Kind> = Vec<K>;
}

/// What changed in a kind: [`KindChanges<K>`] ([`super::Changes`]).
#[derive(Debug)]
pub enum Changed {}
impl Family for Changed {
    type Of<K: Kind> = KindChanges<K>;
}

/// A kind's objects by key, shared ([`super::Objects`]).
#[derive(Debug)]
pub enum Stored {}
impl Family for Stored {
    type Of<K: Kind> = BTreeMap<ObjectKey, Arc<K>>;
}

/// The same type `T` for every kind (counters, names): such a table can be
/// iterated, see [`PerKind::iter`].
#[derive(Debug)]
pub struct Same<T>(PhantomData<T>);
impl<T> Family for Same<T> {
    type Of<K: Kind> = T;
}

/// Code run once per registered kind, generic over it; see [`for_each_kind`].
pub trait KindVisitor {
    fn visit<K: Kind>(&mut self);
}

/// Whether a k8s-openapi scope is namespaced.
pub trait Scope {
    const NAMESPACED: bool;
}
impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}
impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

/// Kubernetes' own API groups: the core group ("") and `*.k8s.io`.
pub const fn builtin_group(group: &str) -> bool {
    let g = group.as_bytes();
    let suffix = b"k8s.io";
    if g.is_empty() {
        return true;
    }
    if g.len() < suffix.len() {
        return false;
    }
    let mut i = 0;
    while i < suffix.len() {
        if g[g.len() - suffix.len() + i] != suffix[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Declares the registered kinds: generates [`PerKind`] (a field per kind),
/// the [`Kind`] impls, [`for_each_kind`] and the impls a table needs.
macro_rules! registry {
    ($( $(#[$doc:meta])* $field:ident: $ty:ty, )+) => {
        /// One `F::Of<K>` for every registered kind `K`, a field each (named
        /// as the kinds are in `registry!`).
        pub struct PerKind<F: Family> {
            $( $(#[$doc])* pub $field: F::Of<$ty>, )+
        }

        $(
            impl Kind for $ty {
                const KIND: &'static str = <$ty as k8s_openapi::Resource>::KIND;
                const API_VERSION: &'static str = <$ty as k8s_openapi::Resource>::API_VERSION;
                const LIST_KIND: &'static str = <$ty as k8s_openapi::ListableResource>::LIST_KIND;
                const NAMESPACED: bool =
                    <<$ty as k8s_openapi::Resource>::Scope as Scope>::NAMESPACED;
                const OPTIONAL: bool =
                    !builtin_group(<$ty as k8s_openapi::Resource>::GROUP);
                const PLURAL: &'static str = <$ty as k8s_openapi::Resource>::URL_PATH_SEGMENT;
                const GROUP: &'static str = <$ty as k8s_openapi::Resource>::GROUP;

                fn of<F: Family>(table: &PerKind<F>) -> &F::Of<Self> {
                    &table.$field
                }
                fn of_mut<F: Family>(table: &mut PerKind<F>) -> &mut F::Of<Self> {
                    &mut table.$field
                }
            }
        )+

        /// Runs `visitor` once per registered kind, in registration order.
        pub fn for_each_kind<V: KindVisitor>(visitor: &mut V) {
            $( visitor.visit::<$ty>(); )+
        }

        impl<F: Family> Default for PerKind<F>
        where
            $( F::Of<$ty>: Default, )+
        {
            fn default() -> Self {
                PerKind { $( $field: Default::default(), )+ }
            }
        }

        impl<F: Family> Clone for PerKind<F>
        where
            $( F::Of<$ty>: Clone, )+
        {
            fn clone(&self) -> Self {
                PerKind { $( $field: self.$field.clone(), )+ }
            }
        }

        impl<F: Family> fmt::Debug for PerKind<F>
        where
            $( F::Of<$ty>: fmt::Debug, )+
        {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct("PerKind")$( .field(stringify!($field), &self.$field) )+.finish()
            }
        }

        impl<T> PerKind<Same<T>> {
            /// Each kind's name and value, in registration order.
            pub fn iter(&self) -> impl Iterator<Item = (&'static str, &T)> {
                [$( (<$ty as Kind>::KIND, &self.$field), )+].into_iter()
            }
        }
    };
}

registry! {
    /// Services: ports, frontends, traffic policies.
    services: Service,
    /// EndpointSlices: the endpoints of a Service (`kubernetes.io/service-name`),
    /// kept compact (only what the translation reads: [`super::slice`]).
    slices: EndpointSlice,
    /// Nodes: addresses (NodePort frontends, tunnel endpoints).
    nodes: Node,
    /// Pods: addresses, labels, container ports (NetworkPolicy identities).
    pods: Pod,
    /// Namespaces: labels (NetworkPolicy namespaceSelector).
    namespaces: Namespace,
    /// networking.k8s.io/v1 NetworkPolicies.
    policies: NetworkPolicy,
    /// networking.gke.io/v1alpha1 NetworkLogging (cluster-scoped, `default`):
    /// policy action logging (#11). A CRD: optional.
    network_loggings: NetworkLogging,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_resources_are_optional_and_named_for_rbac() {
        let optional = [
            <Service as Kind>::OPTIONAL,
            <EndpointSlice as Kind>::OPTIONAL,
            <NetworkPolicy as Kind>::OPTIONAL,
            <NetworkLogging as Kind>::OPTIONAL,
        ];
        assert_eq!(optional, [false, false, false, true]);
        assert_eq!(
            (
                <NetworkLogging as Kind>::GROUP,
                <NetworkLogging as Kind>::PLURAL,
                <NetworkLogging as Kind>::NAMESPACED
            ),
            ("networking.gke.io", "networkloggings", false)
        );
        assert!(builtin_group("") && builtin_group("discovery.k8s.io") && !builtin_group("x.io"));
    }
}
