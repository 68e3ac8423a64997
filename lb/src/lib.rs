//! xlb's load-balancer core: the service model, Maglev, the datapath ABI,
//! typed access to the BPF maps behind a map-store seam, the read model of
//! what they hold, the reconcilers that write them, and loading/attaching
//! the BPF programs. Knows nothing of Kubernetes; `control` feeds it
//! [`model::Desired`].
// The test fixtures shared with the integration tests name the crate `lb`.
#[cfg(test)]
extern crate self as lb;

pub mod abi;
pub mod census;
pub mod datapath;
pub mod events;
pub mod features;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod model;
pub mod neigh;
pub mod objects;
pub mod policy;
pub mod reconcile;
pub mod report;
pub mod sockdestroy;
pub mod store;
pub mod view;
