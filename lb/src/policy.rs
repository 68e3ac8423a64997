//! NetworkPolicy as the datapath holds it (#11), knowing nothing of
//! Kubernetes: security identities, the address -> identity map, and per
//! endpoint (a pod's host veth, by ifindex) its isolation per direction and
//! the allowed (peer identity, protocol, port range) entries. `control`
//! compiles NetworkPolicies into a [`PolicyDesired`]; the policy reconciler
//! (`reconcile::policy`) writes it. Port ranges become prefixes of the
//! policy trie's port bits here ([`port_prefixes`]).
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use crate::{abi, model::Cidr};

/// Peer wildcard in a policy entry: any source or destination.
pub const ID_ANY: u32 = abi::ID_UNKNOWN;
/// A node itself: this node's traffic to its pods is always allowed.
pub const ID_HOST: u32 = abi::ID_HOST;
/// An address no pod and no ipBlock prefix holds.
pub const ID_WORLD: u32 = abi::ID_WORLD;
/// Pods' identities (labels + namespace): from here, below [`ID_CIDR_MIN`].
pub const ID_POD_MIN: u32 = abi::ID_POD_MIN;
/// ipBlock prefixes' identities: from here up.
pub const ID_CIDR_MIN: u32 = abi::ID_CIDR_MIN;

/// Direction of a policy entry, as seen by the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn abi(self) -> u8 {
        match self {
            Direction::Ingress => abi::POLICY_DIR_INGRESS as u8,
            Direction::Egress => abi::POLICY_DIR_EGRESS as u8,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// What an entry allows: a peer identity ([`ID_ANY`] for every peer), an IP
/// protocol (None: every protocol, every port) and an inclusive port range
/// (None: every port of the protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Allow {
    pub peer: u32,
    pub proto: Option<u8>,
    pub ports: Option<(u16, u16)>,
}

/// An endpoint's policy: `None` in a direction means not isolated there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// Allowed entries -> the policy (its number, [`PolicyDesired::policies`])
    /// that allows it first.
    pub ingress: Option<BTreeMap<Allow, u32>>,
    pub egress: Option<BTreeMap<Allow, u32>>,
}

/// What an address is: its own identity (a pod's, or [`ID_WORLD`]) and the
/// most specific ipBlock prefix holding it (0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrIdentity {
    pub identity: u32,
    pub cidr_identity: u32,
}

/// The whole policy state of a node's datapath.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyDesired {
    /// Address prefixes (pods: full length) -> identities.
    pub addrs: BTreeMap<Cidr, AddrIdentity>,
    /// This node's endpoints selected by some policy, by host veth ifindex.
    pub endpoints: BTreeMap<u32, EndpointPolicy>,
    /// Policy number -> "namespace/name" (numbers from 1).
    pub policies: BTreeMap<u32, String>,
}

/// One xlb_policy entry's key, ordered (the map's LPM key is
/// [`crate::maps::policy_key`] of it): `bits` counts the key bits after
/// prefixlen (abi::POLICY_*_BITS); `proto` and `port` (host order) are zero
/// past them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryKey {
    pub ep: u32,
    pub dir: u8,
    pub identity: u32,
    pub proto: u8,
    pub port: u16,
    pub bits: u32,
}

/// The prefixes (value, prefix length in bits of 16) covering the inclusive
/// range `lo..=hi` exactly: the fewest aligned blocks.
pub fn port_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    while lo <= hi {
        // The largest aligned block starting at lo that ends within hi.
        let mut size = if lo == 0 { 1 << 16 } else { 1u32 << lo.trailing_zeros() };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros() as u8));
        lo += size;
    }
    out
}

/// Every identity an entry names (for tools).
pub fn peers(ep: &EndpointPolicy) -> BTreeSet<u32> {
    ep.ingress.iter().chain(ep.egress.iter()).flat_map(|m| m.keys().map(|a| a.peer)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_split_into_aligned_prefixes() {
        assert_eq!(port_prefixes(80, 80), [(80, 16)]);
        assert_eq!(port_prefixes(0, 65535), [(0, 0)]);
        assert_eq!(port_prefixes(8080, 8083), [(8080, 14)]);
        assert_eq!(port_prefixes(1, 4), [(1, 16), (2, 15), (4, 16)]);
        assert_eq!(port_prefixes(32768, 65535), [(32768, 1)]);
        // Exact cover: every port in the range hits exactly one prefix, none outside.
        for (lo, hi) in [(1u16, 65535u16), (1000, 2000), (65535, 65535), (3, 5)] {
            let ps = port_prefixes(lo, hi);
            let covers = |p: u32| {
                ps.iter()
                    .filter(|&&(v, l)| {
                        let mask = if l == 0 { 0 } else { u32::MAX << (16 - l) & 0xffff };
                        (p & mask) == u32::from(v) & mask
                    })
                    .count()
            };
            for p in 0..=65535u32 {
                let want = usize::from(p >= u32::from(lo) && p <= u32::from(hi));
                assert_eq!(covers(p), want, "{lo}-{hi}: port {p}");
            }
        }
    }
}
