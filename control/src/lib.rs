//! xlb's control plane as a library: Kubernetes objects of the kinds
//! registered in [`cluster::kinds`] come from a [`source`] (manifest files or
//! the API) as [`cluster::Changes`], are translated into the datapath's
//! [`lb::model::Desired`] by [`translate::Translator`] (by concern: services,
//! endpoints, nodes, and a tracker of what a change touches), and rendered as
//! text by [`render`]. The pod network the agent runs on a node (routes,
//! peers, masquerade, this node's pods from the CNI plugin's records) is
//! [`podnet`]'s. NetworkPolicy (Pods, Namespaces, NetworkPolicies compiled
//! into identities and per-pod rules; policy action logging) is
//! [`policy`]'s. The install manifests (`xlb install render`) are [`install`]'s; the
//! `xlb` binary (main.rs) wires these to `lb::datapath`.
pub mod cluster;
pub mod examples;
pub mod healthcheck;
pub mod install;
pub mod podnet;
pub mod policy;
pub mod render;
pub mod source;
pub mod translate;
pub mod uplink;
