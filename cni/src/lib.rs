//! xlb's CNI plugin (the `xlb-cni` binary) as a library: the network
//! configuration and results of the CNI spec 1.0/1.1 ([`config`]), its
//! errors ([`error`]), address management from the node's pod ranges
//! ([`ipam`]), a small rtnetlink client ([`netlink`]) and namespace entry
//! ([`netns`]), the records it leaves for the agent ([`record`]), and the
//! operations themselves ([`plugin`]). The agent (`xlb run --pod-network`)
//! links it for the records and the configuration list it installs; the
//! datapath side (programs, xlb_endpoints) is lb's.
pub mod config;
pub mod error;
pub mod ipam;
pub mod netlink;
pub mod netns;
pub mod plugin;
pub mod record;
