//! The reconcilers: desired state in ([`Desired`]), the difference written
//! to the datapath maps, bookkeeping of what was written. Each reconciler
//! owns its tables end to end — desired → diff → writes → bookkeeping — over
//! a [`MapStore`] (the pinned maps, or memory in tests):
//!
//! - `services`: service names, frontends, source ranges, Maglev tables,
//!   backends with their names, weights, ids, indices and generations;
//! - `node`: this node's settings and the tunnel endpoints the backends need;
//! - `network`: the pod network — every node's pod ranges, the addresses
//!   tunnels are accepted from, masquerade settings ([`Network`]);
//! - `endpoints`: this node's pods ([`Endpoint`]).
//!
//! (Policy and sockets will follow the same shape.) [`Datapath`]
//! runs them in dependency order. It restores its bookkeeping from the maps
//! when it opens (so a restarted agent disturbs no established flow and
//! writes nothing that is already there), writes only what differs, and
//! changes bookkeeping only after the write it stands for succeeded, so a
//! failed apply is simply retried.
//!
//! The pod network has entry points of its own ([`Datapath::apply_network`],
//! [`Datapath::apply_endpoints`], and their `resync_*`): its desired state
//! comes from other sources (Nodes; the CNI plugin's records) at other
//! times than the services'.
//!
//! Three entry points: [`Datapath::apply`] diffs a whole desired state;
//! [`Datapath::apply_services`] touches only the services named (a watch
//! event's worth: its cost grows with the change, not with the cluster);
//! [`Datapath::resync`] first re-reads the maps, so entries changed or deleted
//! behind the agent's back are repaired by the diff that follows.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    maps::Maps,
    model::{Desired, Endpoint, Network, NodeConfig, Service, ServiceKey},
    store::{BpfStore, MapStore, StoreError, Write},
    view::{self, Detail, ServiceListing},
};

mod endpoints;
mod fefilter;
#[cfg(test)]
mod fixtures;
mod ids;
mod network;
mod node;
pub mod policy;
mod services;
mod svcids;
mod tables;
#[cfg(test)]
mod tests;

pub use network::NetworkProblem;
pub use services::Problem;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("service {service}: {problem}")]
    Invalid { service: ServiceKey, problem: Problem },
    #[error("{what} capacity exhausted ({capacity}); raise the map size")]
    Capacity { what: &'static str, capacity: u32 },
    #[error("pod network: {0}")]
    Network(#[from] NetworkProblem),
}

/// What one apply wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ApplyStats {
    pub services_added: usize,
    pub services_removed: usize,
    pub services_changed: usize,
    /// Service names, source ranges and frontends written.
    pub frontend_writes: usize,
    /// Backend entries and service indices written.
    pub backend_writes: usize,
    /// Backend names and weights written or removed (xlb_backend_meta).
    pub meta_writes: usize,
    pub table_writes: usize,
    /// Frontends, source ranges, tables, service indices and backend entries removed.
    pub deletes: usize,
    /// This node's settings written.
    pub node_writes: usize,
    /// Pod ranges, tunnel peers, non-masquerade prefixes and pod network
    /// settings written.
    pub network_writes: usize,
    /// Pod addresses written (xlb_endpoints).
    pub endpoint_writes: usize,
    /// NetworkPolicy entries, isolation and address identities written.
    pub policy_writes: usize,
    /// Frontend filter words written (xlb_fe_filter, #14).
    pub filter_writes: usize,
    /// Maglev tables built (the CPU-heavy step; a table is written only if
    /// it differs from the map's).
    pub tables_built: usize,
    /// Frontends or source ranges were written or removed: caches of
    /// service settings in the datapath were told (xlb_config_gen).
    pub settings_changed: bool,
    /// Backends removed (not only terminating), with their service's
    /// protocol: sockets translated to them are to be terminated
    /// ([`crate::sockdestroy`]).
    #[serde(skip)]
    pub gone_backends: Vec<crate::sockdestroy::GoneBackend>,
    #[serde(skip)]
    pub duration: Duration,
}

impl ApplyStats {
    /// Map operations in all.
    pub fn writes(&self) -> usize {
        self.frontend_writes
            + self.backend_writes
            + self.meta_writes
            + self.table_writes
            + self.deletes
            + self.node_writes
            + self.network_writes
            + self.endpoint_writes
            + self.policy_writes
            + self.filter_writes
    }
}

/// The datapath of one node: its maps (the pinned BPF maps unless said) and
/// what has been applied to them.
#[derive(Debug)]
pub struct Datapath<S: MapStore = BpfStore> {
    store: S,
    services: services::Services,
    node: node::Node,
    network: network::NetworkState,
    endpoints: endpoints::Endpoints,
    policy: policy::PolicyState,
    /// Settings were written but xlb_config_gen could not be bumped.
    config_gen_owed: bool,
}

impl Datapath<BpfStore> {
    /// Opens the maps pinned under `pin_dir` and restores the applied state
    /// from them.
    pub fn open(pin_dir: &Path) -> Result<Datapath, DatapathError> {
        Datapath::restore(BpfStore::open(pin_dir)?)
    }

    pub fn pin_dir(&self) -> &Path {
        self.store.pin_dir()
    }

    /// The maps, for tests that inspect or damage entries.
    pub fn maps(&self) -> &Maps {
        self.store.maps()
    }
}

/// The reconcilers' state as the maps hold it. Backend ids: as
/// xlb_svc_backends holds them, with array-only ones adopted
/// ([`svcids`]); the services' xlb_svc_backend_ids values that differ from
/// that, and the hash entries of adopted ids, are owed
/// ([`services::Services::pay_ids`]).
fn read<S: MapStore>(store: &S) -> Result<(services::Services, node::Node), DatapathError> {
    let detail = Detail { tables: true, ..Detail::default() };
    let ids = svcids::merge(store.svc_backends_hash()?, store.svc_ids_all()?);
    let raw = view::read_services_from(store, detail, ids.entries, &ids.adopt)?;
    let mut node = node::Node::restore(store.node()?);
    let mut services =
        services::Services::restore(raw, store.capacity(), &mut node.tunnels, store.fe_filter()?);
    services.owe_ids(&ids.adopt, ids.arrays);
    Ok((services, node))
}

impl<S: MapStore> Datapath<S> {
    /// The datapath `store` holds: the applied state restored from it.
    ///
    /// Takes the maps over: where xlb_svc_backend_ids disagrees with the
    /// xlb_svc_backends entries restored (a rollback to an agent from before
    /// the array, then churn), or lacks one (an older agent's hash entry),
    /// the array values are rewritten here, and an array-only id (an agent
    /// of 8c29de7..aa2347d) gets its hash entry: the agent restores before
    /// its programs attach, so its XDP never reads a stale word (the
    /// attached program of a hash-only agent does not read the array at
    /// all). Read-only readers use [`crate::view::DatapathView`].
    pub fn restore(mut store: S) -> Result<Datapath<S>, DatapathError> {
        let (mut services, node) = read(&store)?;
        services.pay_ids(&mut store, &mut ApplyStats::default())?;
        let network = network::NetworkState::restore(&store)?;
        let endpoints = endpoints::Endpoints::restore(&store)?;
        let policy = policy::PolicyState::restore(&store)?;
        Ok(Datapath { store, services, node, network, endpoints, policy, config_gen_owed: false })
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, for writes behind the reconcilers' back (tests of resync).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    pub fn into_store(self) -> S {
        self.store
    }

    /// Service keys currently applied.
    pub fn service_keys(&self) -> impl Iterator<Item = &ServiceKey> {
        self.services.keys()
    }

    /// Moves whenever [`Datapath::tunnel_endpoints`] may have changed.
    pub fn tunnel_generation(&self) -> u64 {
        self.node.tunnels.gen
    }

    /// Every node address the datapath may tunnel to (this node's own
    /// addresses excluded: those backends are delivered locally).
    pub fn tunnel_endpoints(&self) -> BTreeSet<IpAddr> {
        self.node.tunnel_endpoints()
    }

    /// Makes the datapath hold exactly `desired`: writes only the difference.
    pub fn apply(&mut self, desired: &Desired) -> Result<ApplyStats, DatapathError> {
        let gone: Vec<ServiceKey> =
            self.services.keys().filter(|k| !desired.services.contains_key(*k)).cloned().collect();
        let upsert: Vec<&Service> = desired.services.values().collect();
        self.apply_set(&desired.node, &gone, &upsert)
    }

    /// Makes the datapath hold `changed` — each service as given, or removed
    /// when `None` (a key named twice: the last counts) — and this node's
    /// settings; services not named are left alone. The incremental form of
    /// [`Datapath::apply`] for a stream of changes: its cost grows with the
    /// change, not with the services held.
    pub fn apply_services<'a>(
        &mut self,
        node: &NodeConfig,
        changed: impl IntoIterator<Item = (&'a ServiceKey, Option<&'a Service>)>,
    ) -> Result<ApplyStats, DatapathError> {
        let mut named: BTreeMap<&ServiceKey, Option<&Service>> = BTreeMap::new();
        for (key, svc) in changed {
            if let Some(s) = svc.filter(|s| s.key != *key) {
                return Err(DatapathError::Invalid {
                    service: key.clone(),
                    problem: Problem::WrongKey { given: s.key.clone() },
                });
            }
            named.insert(key, svc);
        }
        let gone: Vec<ServiceKey> = named
            .iter()
            .filter(|(k, s)| s.is_none() && self.services.contains(k))
            .map(|(k, _)| (*k).clone())
            .collect();
        let upsert: Vec<&Service> = named.values().flatten().copied().collect();
        self.apply_set(node, &gone, &upsert)
    }

    /// Re-reads the applied state from the maps, then makes them hold exactly
    /// `desired`: the periodic full diff. Whatever changed behind the agent's
    /// back (an entry deleted or rewritten by hand, a service a missed delete
    /// left behind) is put right. Maglev tables whose map content is still
    /// what was written are not rebuilt.
    pub fn resync(&mut self, desired: &Desired) -> Result<ApplyStats, DatapathError> {
        let (services, mut node) = read(&self.store)?;
        let old = std::mem::replace(&mut self.services, services);
        self.services.carry_over(old);
        node.tunnels.gen = self.node.tunnels.gen + 1;
        self.node = node;
        self.apply(desired)
    }

    fn apply_set(
        &mut self,
        node: &NodeConfig,
        gone: &[ServiceKey],
        upsert: &[&Service],
    ) -> Result<ApplyStats, DatapathError> {
        let start = Instant::now();
        for svc in upsert {
            services::validate(svc)?;
        }
        let mut stats = ApplyStats::default();
        if self.node.apply(&mut self.store, node)? {
            stats.node_writes += 1;
        }
        let applied =
            self.services.apply(&mut self.store, &mut self.node.tunnels, gone, upsert, &mut stats);
        // Settings caches are told about whatever was written, also when
        // the apply stopped half way (or the last bump failed).
        if stats.settings_changed || self.config_gen_owed {
            match self.store.write(Write::ConfigGenBump) {
                Ok(()) => self.config_gen_owed = false,
                Err(e) => {
                    self.config_gen_owed = true;
                    if applied.is_ok() {
                        return Err(e.into());
                    }
                }
            }
        }
        applied?;
        stats.duration = start.elapsed();
        Ok(stats)
    }

    /// Makes the pod network tables hold `net` (writes only the difference).
    pub fn apply_network(&mut self, net: &Network) -> Result<ApplyStats, DatapathError> {
        let start = Instant::now();
        network::validate(net)?;
        let mut stats = ApplyStats::default();
        self.network.apply(&mut self.store, net, &mut stats)?;
        stats.duration = start.elapsed();
        Ok(stats)
    }

    /// [`Datapath::apply_network`] after re-reading the tables: repairs
    /// what changed behind the agent's back.
    pub fn resync_network(&mut self, net: &Network) -> Result<ApplyStats, DatapathError> {
        self.network = network::NetworkState::restore(&self.store)?;
        self.apply_network(net)
    }

    /// Makes xlb_endpoints hold exactly the addresses of `eps` (this
    /// node's pods).
    pub fn apply_endpoints(&mut self, eps: &[Endpoint]) -> Result<ApplyStats, DatapathError> {
        let start = Instant::now();
        endpoints::validate(eps)?;
        let mut stats = ApplyStats::default();
        self.endpoints.apply(&mut self.store, eps, &mut stats)?;
        stats.duration = start.elapsed();
        Ok(stats)
    }

    /// [`Datapath::apply_endpoints`] after re-reading xlb_endpoints (xlb-cni
    /// writes it too).
    pub fn resync_endpoints(&mut self, eps: &[Endpoint]) -> Result<ApplyStats, DatapathError> {
        self.endpoints = endpoints::Endpoints::restore(&self.store)?;
        self.apply_endpoints(eps)
    }

    /// Makes the NetworkPolicy maps hold exactly `desired` (#11).
    pub fn apply_policy(
        &mut self,
        desired: &crate::policy::PolicyDesired,
    ) -> Result<ApplyStats, DatapathError> {
        let start = Instant::now();
        let mut stats = ApplyStats::default();
        self.policy.apply(&mut self.store, desired, &mut stats)?;
        stats.duration = start.elapsed();
        Ok(stats)
    }

    /// What the datapath holds, read from the maps (not from memory).
    pub fn list(&self) -> Result<Vec<ServiceListing>, DatapathError> {
        Ok(view::list(&self.store)?)
    }

    /// The `xlb service list` text: every service, frontend and backend, read
    /// from the maps, in a stable order.
    pub fn dump(&self) -> Result<String, DatapathError> {
        Ok(view::render(&self.list()?))
    }
}
