//! xlb's control plane as a library: Kubernetes objects from a source
//! (manifest files or the API) are collected in a [`cluster::Cluster`],
//! translated into the datapath's [`lb::model::Desired`] by
//! [`translate::translate`], and rendered as text by [`render`]. The `xlb`
//! binary (main.rs) wires these to `lb::datapath`.
pub mod cluster;
pub mod examples;
pub mod healthcheck;
pub mod render;
pub mod source;
pub mod translate;
