//! The Kubernetes objects the control plane acts on, however they were
//! obtained (manifest files or the API watcher): the one input of
//! [`crate::translate::translate`].
use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};

/// A snapshot of the objects xlb programs from.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
}
