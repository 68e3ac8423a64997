//! The policy reconciler (#11): a [`PolicyDesired`] into xlb_policy_ep
//! (isolation per endpoint, and whether its entries need the trie),
//! xlb_policy (allowed entries, port ranges as prefixes,
//! [`crate::policy::port_prefixes`]; single ports go to the hash
//! xlb_policy_exact, the store decides by prefix length) and xlb_ip_identity. Same
//! shape as the others: restores its mirror from the maps, writes what
//! differs (adds and changes first, then removals, so an endpoint never
//! loses an entry it keeps), bookkeeping after each write succeeded.
//! An endpoint becomes isolated only after its entries are in (isolation
//! written last), and stops being isolated before its entries go.
use std::collections::BTreeMap;

use super::{ApplyStats, DatapathError};
use crate::{
    abi,
    model::Cidr,
    policy::{port_prefixes, Allow, Direction, EntryKey, PolicyDesired},
    store::{MapStore, StoreError, Write},
};

/// The xlb_policy keys of one allowed entry of endpoint `ep`.
pub fn entry_keys(ep: u32, dir: Direction, a: &Allow) -> Vec<EntryKey> {
    let base = EntryKey {
        bits: abi::POLICY_ANY_PROTO_BITS,
        ep,
        identity: a.peer,
        dir: dir.abi(),
        proto: 0,
        port: 0,
    };
    match (a.proto, a.ports) {
        (None, _) => vec![base],
        (Some(proto), None) => {
            vec![EntryKey { bits: abi::POLICY_PROTO_BITS, proto, ..base }]
        }
        (Some(proto), Some((lo, hi))) => port_prefixes(lo, hi)
            .into_iter()
            .map(|(port, bits)| EntryKey {
                bits: abi::POLICY_PROTO_BITS + u32::from(bits),
                proto,
                port,
                ..base
            })
            .collect(),
    }
}

/// Every map entry `desired` stands for.
struct Entries {
    eps: BTreeMap<u32, u32>,
    policy: BTreeMap<EntryKey, u32>,
    addrs: BTreeMap<Cidr, abi::AddrIdentity>,
}

fn entries(desired: &PolicyDesired) -> Entries {
    let mut eps = BTreeMap::new();
    let mut policy = BTreeMap::new();
    for (&ifindex, ep) in &desired.endpoints {
        let mut flags = 0;
        for (dir, allowed, flag, lpm) in [
            (Direction::Ingress, &ep.ingress, abi::POLICY_F_INGRESS, abi::POLICY_F_INGRESS_LPM),
            (Direction::Egress, &ep.egress, abi::POLICY_F_EGRESS, abi::POLICY_F_EGRESS_LPM),
        ] {
            let Some(allowed) = allowed else { continue };
            flags |= flag;
            for (a, &p) in allowed {
                for k in entry_keys(ifindex, dir, a) {
                    // Anything but a single port is in the trie: the
                    // datapath looks there only when told.
                    if k.bits != abi::POLICY_KEY_BITS {
                        flags |= lpm;
                    }
                    // Two allows may share a prefix: the lower policy number wins.
                    let e = policy.entry(k).or_insert(p);
                    *e = (*e).min(p);
                }
            }
        }
        if flags != 0 {
            eps.insert(ifindex, flags);
        }
    }
    let addrs = desired
        .addrs
        .iter()
        .map(|(c, v)| {
            (
                c.network(),
                abi::AddrIdentity { identity: v.identity, cidr_identity: v.cidr_identity },
            )
        })
        .collect();
    Entries { eps, policy, addrs }
}

/// The mirror of the policy maps.
#[derive(Debug, Default)]
pub(crate) struct PolicyState {
    eps: BTreeMap<u32, u32>,
    policy: BTreeMap<EntryKey, u32>,
    addrs: BTreeMap<Cidr, abi::AddrIdentity>,
}

impl PolicyState {
    pub fn restore<S: MapStore>(store: &S) -> Result<PolicyState, StoreError> {
        Ok(PolicyState {
            eps: store.policy_eps()?.into_iter().collect(),
            policy: store.policies()?.into_iter().collect(),
            addrs: store.addr_identities()?.into_iter().map(|(c, v)| (c.network(), v)).collect(),
        })
    }

    pub fn apply<S: MapStore>(
        &mut self,
        store: &mut S,
        desired: &PolicyDesired,
        stats: &mut ApplyStats,
    ) -> Result<(), DatapathError> {
        let want = entries(desired);
        // Addresses first: an entry naming a new identity finds it.
        for (c, v) in &want.addrs {
            if self.addrs.get(c) != Some(v) {
                store.write(Write::AddrIdentity { cidr: *c, value: *v })?;
                self.addrs.insert(*c, *v);
                stats.policy_writes += 1;
            }
        }
        // Endpoints leaving isolation (or losing a direction) before their entries go.
        let lowered: Vec<(u32, Option<u32>)> = self
            .eps
            .iter()
            .filter_map(|(i, f)| match want.eps.get(i) {
                None => Some((*i, None)),
                Some(w) if w & f != *f => Some((*i, Some(*w))),
                _ => None,
            })
            .collect();
        for (ifindex, flags) in lowered {
            match flags {
                None => {
                    store.write(Write::PolicyEpDelete { ifindex })?;
                    self.eps.remove(&ifindex);
                    stats.deletes += 1;
                }
                Some(flags) => {
                    store.write(Write::PolicyEp { ifindex, flags })?;
                    self.eps.insert(ifindex, flags);
                    stats.policy_writes += 1;
                }
            }
        }
        for (k, p) in &want.policy {
            if self.policy.get(k) != Some(p) {
                store.write(Write::Policy { key: *k, policy: *p })?;
                self.policy.insert(*k, *p);
                stats.policy_writes += 1;
            }
        }
        for (ifindex, flags) in &want.eps {
            if self.eps.get(ifindex) != Some(flags) {
                store.write(Write::PolicyEp { ifindex: *ifindex, flags: *flags })?;
                self.eps.insert(*ifindex, *flags);
                stats.policy_writes += 1;
            }
        }
        let gone: Vec<EntryKey> =
            self.policy.keys().filter(|k| !want.policy.contains_key(k)).copied().collect();
        for key in gone {
            store.write(Write::PolicyDelete { key })?;
            self.policy.remove(&key);
            stats.deletes += 1;
        }
        let gone: Vec<Cidr> =
            self.addrs.keys().filter(|c| !want.addrs.contains_key(c)).copied().collect();
        for cidr in gone {
            store.write(Write::AddrIdentityDelete { cidr })?;
            self.addrs.remove(&cidr);
            stats.deletes += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        policy::{AddrIdentity, EndpointPolicy},
        store::{MemStore, Target},
    };

    fn desired(ports: (u16, u16), peer: u32) -> PolicyDesired {
        let allow = Allow { peer, proto: Some(6), ports: Some(ports) };
        PolicyDesired {
            addrs: BTreeMap::from([(
                "10.0.1.1/32".parse().unwrap(),
                AddrIdentity { identity: 300, cidr_identity: 0 },
            )]),
            endpoints: BTreeMap::from([(
                7,
                EndpointPolicy { ingress: Some(BTreeMap::from([(allow, 1)])), egress: None },
            )]),
            policies: BTreeMap::from([(1, "x/p".into())]),
        }
    }

    #[test]
    fn ranges_become_prefixes_restored_exactly_isolation_last_in_first_out() {
        let mut store = MemStore::default();
        let mut st = PolicyState::restore(&store).unwrap();
        let mut stats = ApplyStats::default();
        st.apply(&mut store, &desired((8080, 8083), 300), &mut stats).unwrap();
        let keys: Vec<(u32, u16)> =
            store.policies().unwrap().iter().map(|(k, _)| (k.bits, k.port)).collect();
        assert_eq!(keys, [(94, 8080)]);
        let log: Vec<&'static str> = store.log().iter().map(|w| w.target.map()).collect();
        assert_eq!(log, ["xlb_ip_identity", "xlb_policy", "xlb_policy_ep"], "isolation last");

        let mut again = PolicyState::restore(&store).unwrap();
        let mut stats = ApplyStats::default();
        again.apply(&mut store, &desired((8080, 8083), 300), &mut stats).unwrap();
        assert_eq!(stats.writes(), 0, "restored exactly");

        // Nothing selects the endpoint any more: isolation goes first.
        store.take_log();
        let empty = PolicyDesired::default();
        again.apply(&mut store, &empty, &mut ApplyStats::default()).unwrap();
        let log: Vec<(Target, bool)> = store.log().iter().map(|w| (w.target, w.delete)).collect();
        assert_eq!(log[0], (Target::PolicyEp(7), true));
        assert_eq!(log.len(), 3);
        assert!(
            store.policies().unwrap().is_empty() && store.addr_identities().unwrap().is_empty()
        );
    }

    #[test]
    fn single_ports_in_the_hash_the_trie_flagged_only_when_used() {
        let mut store = MemStore::default();
        let mut st = PolicyState::restore(&store).unwrap();
        // One port: the hash, no trie lookups for the endpoint.
        st.apply(&mut store, &desired((80, 80), 300), &mut ApplyStats::default()).unwrap();
        let log: Vec<&'static str> = store.log().iter().map(|w| w.target.map()).collect();
        assert_eq!(log, ["xlb_ip_identity", "xlb_policy_exact", "xlb_policy_ep"]);
        assert_eq!(store.policy_eps().unwrap(), [(7, abi::POLICY_F_INGRESS)]);
        // A range: trie entries first, then the flag that makes it looked at.
        store.take_log();
        st.apply(&mut store, &desired((8080, 8083), 300), &mut ApplyStats::default()).unwrap();
        let log: Vec<(&'static str, bool)> =
            store.log().iter().map(|w| (w.target.map(), w.delete)).collect();
        assert_eq!(
            log,
            [("xlb_policy", false), ("xlb_policy_ep", false), ("xlb_policy_exact", true)]
        );
        assert_eq!(
            store.policy_eps().unwrap(),
            [(7, abi::POLICY_F_INGRESS | abi::POLICY_F_INGRESS_LPM)]
        );
        // Back to one port: the flag drops before the trie entry goes.
        store.take_log();
        st.apply(&mut store, &desired((80, 80), 300), &mut ApplyStats::default()).unwrap();
        let log: Vec<(&'static str, bool)> =
            store.log().iter().map(|w| (w.target.map(), w.delete)).collect();
        assert_eq!(
            log,
            [("xlb_policy_ep", false), ("xlb_policy_exact", false), ("xlb_policy", true)]
        );
    }

    #[test]
    fn entry_keys_per_shape() {
        let any = Allow { peer: 0, proto: None, ports: None };
        assert_eq!(entry_keys(1, Direction::Egress, &any)[0].bits, 72);
        let udp = Allow { peer: 5, proto: Some(17), ports: None };
        let k = entry_keys(1, Direction::Egress, &udp)[0];
        assert_eq!((k.bits, k.proto, k.dir), (80, 17, abi::POLICY_DIR_EGRESS as u8));
        let r = Allow { peer: 5, proto: Some(6), ports: Some((1, 4)) };
        assert_eq!(entry_keys(1, Direction::Ingress, &r).len(), 3);
    }
}
