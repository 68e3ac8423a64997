//! A service's backend ids read back from their two maps at a restore.
//! xlb_svc_backends holds every service-local index (what an agent from
//! before xlb_svc_backend_ids reads, so a rollback to one loses nothing);
//! xlb_svc_backend_ids caches the first [`abi::SVC_IDS`] in front of it (what
//! XDP reads first). Layouts a restore can meet, and what it takes:
//!
//! - this agent's: the two agree (a word is 0 or the hash's id);
//! - an agent from before the array (hash only): the hash;
//! - one from 8c29de7..aa2347d (indexes below SVC_IDS in the array only):
//!   an array word with no hash entry is adopted, and its hash entry is
//!   written ([`IdsRead::adopt`]);
//! - any of those after a rollback to a hash-only agent and churn: the hash
//!   wins; an array word that disagrees with it is stale (the old agent
//!   freed or reused the index, or gave the id to another backend), and so
//!   is one with no hash entry whose id the hash names elsewhere or whose
//!   xlb_backends entry is free or another service's (checked by
//!   [`crate::view::read_services_from`]).
//!
//! The restore then rewrites every array value that differs from what it
//! restored, before its programs attach (the reconciler's `pay_ids`).
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::abi;

/// The entries a restore takes from the two maps.
#[derive(Debug, Default)]
pub(crate) struct IdsRead {
    /// (service, index) -> backend id: every hash entry, and the array
    /// words with none (sorted).
    pub entries: Vec<(abi::SvcBackendKey, u32)>,
    /// The array-only entries of `entries`: taken only if their
    /// xlb_backends entry is in use by their service; each one taken is
    /// given its hash entry.
    pub adopt: HashSet<(u32, u32)>,
    /// The xlb_svc_backend_ids values as read (non-zero ones).
    pub arrays: BTreeMap<u32, abi::SvcBackendIds>,
}

/// The hash wins; an array word where the hash has no entry is a candidate
/// for adoption unless its id is named by a hash entry (or by an earlier
/// candidate: one id, one index).
pub(crate) fn merge(
    hash: Vec<(abi::SvcBackendKey, u32)>,
    arrays: Vec<(u32, abi::SvcBackendIds)>,
) -> IdsRead {
    let held: HashMap<(u32, u32), u32> =
        hash.iter().map(|(k, id)| ((k.svc_id, k.index), *id)).collect();
    let mut named: HashSet<u32> = held.values().copied().collect();
    let arrays: BTreeMap<u32, abi::SvcBackendIds> = arrays.into_iter().collect();
    let mut entries = hash;
    let mut adopt = HashSet::new();
    for (&svc_id, ids) in &arrays {
        for (index, &id) in (0..).zip(&ids.id) {
            if id == 0 || held.contains_key(&(svc_id, index)) || !named.insert(id) {
                continue;
            }
            entries.push((abi::SvcBackendKey { svc_id, index }, id));
            adopt.insert((svc_id, index));
        }
    }
    entries.sort_unstable_by_key(|(k, _)| (k.svc_id, k.index));
    IdsRead { entries, adopt, arrays }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(svc_id: u32, index: u32) -> abi::SvcBackendKey {
        abi::SvcBackendKey { svc_id, index }
    }

    fn ids(words: &[(usize, u32)]) -> abi::SvcBackendIds {
        let mut v = abi::SvcBackendIds { id: [0; abi::SVC_IDS as usize] };
        for &(i, id) in words {
            v.id[i] = id;
        }
        v
    }

    #[test]
    fn the_hash_wins_and_array_only_words_are_candidates() {
        let hash = vec![(key(1, 0), 10), (key(1, 1), 11), (key(1, 20), 30)];
        // Word 0 agrees; word 1 disagrees (stale: the hash wins); word 2 has
        // no hash entry (a candidate); word 3 names an id the hash holds at
        // another index (stale); service 2's word 0 is a candidate, its
        // word 1 names the same id again (stale: one id, one index).
        let arrays =
            vec![(1, ids(&[(0, 10), (1, 99), (2, 12), (3, 30)])), (2, ids(&[(0, 40), (1, 40)]))];
        let r = merge(hash, arrays);
        assert_eq!(
            r.entries,
            vec![
                (key(1, 0), 10),
                (key(1, 1), 11),
                (key(1, 2), 12),
                (key(1, 20), 30),
                (key(2, 0), 40)
            ]
        );
        assert_eq!(r.adopt, HashSet::from([(1, 2), (2, 0)]));
        assert_eq!(r.arrays.len(), 2);
    }
}
