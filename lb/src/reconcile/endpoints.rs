//! The endpoints reconciler: this node's pods in xlb_endpoints, one entry
//! per pod address (its host veth, MACs and identity). Desired [`Endpoint`]s
//! come from the CNI plugin's records (the agent reads them); xlb-cni also
//! writes a new pod's entries itself, so the pod is reachable when ADD
//! returns — with the same values ([`crate::maps::endpoint_value`]), so the
//! reconciler then finds nothing to write. It owns the map: restores its
//! mirror from it, repairs what differs, removes what no pod claims.
use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{network::NetworkProblem, ApplyStats, DatapathError};
use crate::{
    abi,
    maps::endpoint_value,
    model::Endpoint,
    store::{MapStore, StoreError, Write},
};

/// Refuses an address claimed twice or an endpoint without an interface.
pub(crate) fn validate(eps: &[Endpoint]) -> Result<(), DatapathError> {
    let mut seen: BTreeMap<IpAddr, &str> = BTreeMap::new();
    for ep in eps {
        if ep.ifindex == 0 {
            return Err(DatapathError::Network(NetworkProblem::NoInterface {
                name: ep.name.clone(),
            }));
        }
        for a in &ep.addrs {
            if let Some(first) = seen.insert(*a, &ep.name) {
                return Err(DatapathError::Network(NetworkProblem::DuplicateAddress {
                    addr: *a,
                    first: first.to_string(),
                    second: ep.name.clone(),
                }));
            }
        }
    }
    Ok(())
}

/// The mirror of xlb_endpoints.
#[derive(Debug, Default)]
pub(crate) struct Endpoints {
    applied: BTreeMap<IpAddr, abi::Endpoint>,
}

impl Endpoints {
    pub fn restore<S: MapStore>(store: &S) -> Result<Endpoints, StoreError> {
        Ok(Endpoints { applied: store.endpoints()?.into_iter().collect() })
    }

    pub fn apply<S: MapStore>(
        &mut self,
        store: &mut S,
        eps: &[Endpoint],
        stats: &mut ApplyStats,
    ) -> Result<(), DatapathError> {
        let desired: BTreeMap<IpAddr, abi::Endpoint> = eps
            .iter()
            .flat_map(|ep| {
                let v = endpoint_value(ep);
                ep.addrs.iter().map(move |a| (*a, v))
            })
            .collect();
        for (addr, value) in &desired {
            if self.applied.get(addr) != Some(value) {
                store.write(Write::Endpoint { addr: *addr, value: *value })?;
                self.applied.insert(*addr, *value);
                stats.endpoint_writes += 1;
            }
        }
        let gone: Vec<IpAddr> =
            self.applied.keys().filter(|a| !desired.contains_key(a)).copied().collect();
        for addr in gone {
            store.write(Write::EndpointDelete { addr })?;
            self.applied.remove(&addr);
            stats.deletes += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemStore, Target};

    fn pod(name: &str, ifindex: u32, addrs: &[&str]) -> Endpoint {
        Endpoint {
            name: name.into(),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            ifindex,
            mac: [2, 0, 0, 0, 0, ifindex as u8],
            host_mac: [2, 0, 0, 0, 1, ifindex as u8],
            identity: abi::ID_POD_MIN + ifindex,
        }
    }

    #[test]
    fn pods_are_written_per_address_changed_in_place_and_removed() {
        let mut store = MemStore::default();
        let mut eps = Endpoints::restore(&store).unwrap();
        let a = pod("default/a", 7, &["10.244.1.11", "2001:db8:244:1::11"]);
        let b = pod("default/b", 8, &["10.244.1.12"]);
        let mut stats = ApplyStats::default();
        eps.apply(&mut store, &[a.clone(), b.clone()], &mut stats).unwrap();
        assert_eq!(stats.endpoint_writes, 3);
        let mut again = Endpoints::restore(&store).unwrap();
        let mut stats = ApplyStats::default();
        again.apply(&mut store, &[a.clone(), b.clone()], &mut stats).unwrap();
        assert_eq!(stats.writes(), 0, "restored exactly: nothing to write");

        // b restarted on a new veth, a gone.
        store.take_log();
        let b2 = pod("default/b", 9, &["10.244.1.12"]);
        let mut stats = ApplyStats::default();
        again.apply(&mut store, &[b2], &mut stats).unwrap();
        let log: Vec<(Target, bool)> = store.log().iter().map(|w| (w.target, w.delete)).collect();
        assert_eq!(
            log,
            [
                (Target::Endpoint("10.244.1.12".parse().unwrap()), false),
                (Target::Endpoint("10.244.1.11".parse().unwrap()), true),
                (Target::Endpoint("2001:db8:244:1::11".parse().unwrap()), true),
            ]
        );
        assert_eq!(store.endpoints().unwrap().len(), 1);
    }

    #[test]
    fn an_address_claimed_twice_is_refused() {
        let err = validate(&[pod("x", 1, &["10.244.1.5"]), pod("y", 2, &["10.244.1.5"])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("10.244.1.5 given to two endpoints (x, y)"), "{err}");
        assert!(validate(&[pod("z", 0, &[])]).is_err());
    }
}
