//! Stable numbers: security identities of pods (a number per (namespace,
//! labels)), and the numbers of policies and ipBlock prefixes, the same on
//! every node that sees the same objects. A number is a hash of its key
//! into the kind's range; a collision takes the next free number, keys
//! taken in their sorted order, so the outcome depends only on the set of
//! keys, and a key keeps its number while others come and go.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use lb::policy::{ID_CIDR_MIN, ID_POD_MIN};

/// The canonical text of a label set: "namespace\0k=v\0k=v...".
pub(super) fn key(namespace: &str, labels: &BTreeMap<String, String>) -> String {
    let mut s = namespace.to_string();
    for (k, v) in labels {
        s.push('\0');
        s.push_str(k);
        s.push('=');
        s.push_str(v);
    }
    s
}

fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The identity of every distinct label set among `sets`.
pub(super) fn assign<'a>(
    sets: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
) -> HashMap<String, u32> {
    number(sets.into_iter().map(|(ns, l)| key(ns, l)), ID_POD_MIN..ID_CIDR_MIN)
}

/// A number in `range` for each distinct key, stable across recompiles
/// and the same on every node: the key's hash, a collision taking the next
/// free number with keys taken in sorted order. So a key keeps its number
/// when others come and go (unless it collided), and what the datapath
/// holds for it (identities in the maps, the allowing policy an event
/// names) need not be rewritten when an unrelated object changes.
pub(super) fn number(
    keys: impl IntoIterator<Item = String>,
    range: std::ops::Range<u32>,
) -> HashMap<String, u32> {
    let keys: BTreeSet<String> = keys.into_iter().collect();
    let span = u64::from(range.end - range.start);
    let mut taken = HashSet::new();
    let mut out = HashMap::new();
    for k in keys {
        let mut id = range.start + (fnv1a64(&k) % span) as u32;
        while !taken.insert(id) {
            id = if id + 1 >= range.end { range.start } else { id + 1 };
        }
        out.insert(k, id);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn same_labels_same_identity_on_every_node_namespace_counts() {
        let a = l(&[("pod", "a")]);
        let b = l(&[("pod", "b")]);
        let one = assign([("x", &a), ("x", &b), ("y", &a)]);
        // Another node sees the same pods in another order.
        let two = assign([("y", &a), ("x", &b), ("x", &a), ("x", &a)]);
        assert_eq!(one, two);
        assert_eq!(one.len(), 3);
        assert_ne!(one[&key("x", &a)], one[&key("y", &a)]);
        for id in one.values() {
            assert!((ID_POD_MIN..ID_CIDR_MIN).contains(id));
        }
        // A label set's identity does not depend on the others (no collision).
        let alone = assign([("x", &a)]);
        assert_eq!(alone[&key("x", &a)], one[&key("x", &a)]);
    }

    #[test]
    fn a_collision_takes_the_next_free_number_in_key_order_and_wraps() {
        // Three keys in a range of three numbers: every number used once,
        // the same whatever order the keys come in.
        let keys = ["p", "q", "r"].map(String::from);
        let one = number(keys.clone(), 10..13);
        let two = number(keys.iter().rev().cloned(), 10..13);
        assert_eq!(one, two);
        let mut ids: Vec<u32> = one.values().copied().collect();
        ids.sort_unstable();
        assert_eq!(ids, [10, 11, 12]);
    }
}
