//! The frontend filter (xlb_fe_filter, #14): one bit per hash of a frontend
//! key, which the XDP program reads before its frontend lookup so that a
//! packet to no frontend is passed without one. A set bit is a "maybe" (keys
//! share bits), so each bit counts the frontend keys that hash to it and is
//! cleared only when the last is gone. Written by the services reconciler
//! in step with xlb_frontends: a bit is set before its frontend is written,
//! cleared only after the frontend's delete ([`FeFilter::flush`] at the end
//! of an apply); the armed flag is written once every word the frontends
//! need is in (a map created empty by another version filters nothing
//! until then).
use std::collections::{BTreeSet, HashMap};

use crate::{
    abi,
    store::{MapStore, StoreError, Write},
};

#[derive(Clone, Debug)]
pub(crate) struct FeFilter {
    /// Frontend keys held per bit (bits with none are absent).
    counts: HashMap<u32, u32>,
    /// The words the held frontends need.
    want: Vec<u64>,
    /// The words and the armed flag (last) the map holds.
    held: Vec<u64>,
    /// Words whose `want` may be below `held` (a bit to clear).
    dirty: BTreeSet<u32>,
}

fn split(bit: u32) -> (usize, u64) {
    ((bit >> 6) as usize, 1u64 << (bit & 63))
}

impl FeFilter {
    /// The filter of the frontend `keys` (what xlb_frontends holds), over
    /// `held` (the map as read: [`MapStore::fe_filter`]; a short read is
    /// taken as zeros).
    pub fn restore<'a>(
        mut held: Vec<u64>,
        keys: impl Iterator<Item = &'a abi::FrontendKey>,
    ) -> FeFilter {
        held.resize(abi::FE_FILTER_ARMED as usize + 1, 0);
        let mut f = FeFilter {
            counts: HashMap::new(),
            want: vec![0; abi::FE_FILTER_WORDS as usize],
            held,
            dirty: BTreeSet::new(),
        };
        for k in keys {
            f.added(k);
        }
        f.dirty = (0..abi::FE_FILTER_WORDS)
            .filter(|&i| f.want[i as usize] != f.held[i as usize])
            .collect();
        f
    }

    /// Before `key` is written to xlb_frontends: its bit in the map.
    pub fn before_add<S: MapStore>(
        &mut self,
        store: &mut S,
        key: &abi::FrontendKey,
        writes: &mut usize,
    ) -> Result<(), StoreError> {
        let (i, b) = split(abi::fe_filter_bit(key));
        if self.held[i] & b == 0 {
            let bits = self.held[i] | b;
            store.write(Write::FeFilter { index: i as u32, bits })?;
            self.held[i] = bits;
            *writes += 1;
        }
        Ok(())
    }

    /// `key` is in xlb_frontends now (bookkeeping).
    pub fn added(&mut self, key: &abi::FrontendKey) {
        let bit = abi::fe_filter_bit(key);
        *self.counts.entry(bit).or_insert(0) += 1;
        let (i, b) = split(bit);
        self.want[i] |= b;
    }

    /// `key` is gone from xlb_frontends (bookkeeping): its bit is cleared
    /// by the next [`FeFilter::flush`] if no other key holds it.
    pub fn removed(&mut self, key: &abi::FrontendKey) {
        let bit = abi::fe_filter_bit(key);
        let Some(n) = self.counts.get_mut(&bit) else { return };
        *n -= 1;
        if *n == 0 {
            self.counts.remove(&bit);
            let (i, b) = split(bit);
            self.want[i] &= !b;
            self.dirty.insert(i as u32);
        }
    }

    /// Makes the map hold the words the frontends need (bits set first
    /// where a restore found them missing, stale ones cleared), then arms
    /// the filter. Call only when the frontends the bookkeeping holds are
    /// what xlb_frontends holds (before or after an apply's writes).
    pub fn flush<S: MapStore>(
        &mut self,
        store: &mut S,
        writes: &mut usize,
    ) -> Result<(), StoreError> {
        while let Some(&i) = self.dirty.first() {
            let want = self.want[i as usize];
            if want != self.held[i as usize] {
                store.write(Write::FeFilter { index: i, bits: want })?;
                self.held[i as usize] = want;
                *writes += 1;
            }
            self.dirty.remove(&i);
        }
        let armed = abi::FE_FILTER_ARMED as usize;
        if self.held[armed] == 0 {
            store.write(Write::FeFilter { index: armed as u32, bits: 1 })?;
            self.held[armed] = 1;
            *writes += 1;
        }
        Ok(())
    }
}
