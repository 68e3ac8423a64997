//! Sources of Kubernetes objects: manifest files ([`file`]) and the API
//! server ([`kube`]). Both produce a [`crate::cluster::Cluster`].
pub mod file;
pub mod kube;
