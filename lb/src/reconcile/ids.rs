//! Id allocation: dense id pools (service ids, backend ids, service-local
//! backend indices) and backend generations.
use std::collections::{BTreeSet, VecDeque};

use super::DatapathError;

/// Dense ids in `first..limit`; freed ids are reused oldest-first (FIFO) so
/// that an id comes back as late as possible, or, in a pool made by
/// [`IdPool::lowest_first`], lowest-first.
#[derive(Clone, Debug)]
pub(crate) struct IdPool {
    next: u32,
    limit: u32,
    /// Lowest-first: kept sorted.
    free: VecDeque<u32>,
    lowest: bool,
}

impl IdPool {
    /// A pool whose `used` ids are taken (the gaps below the highest are free).
    pub fn new(first: u32, limit: u32, used: &BTreeSet<u32>) -> IdPool {
        let next = used.iter().next_back().map_or(first, |m| m + 1).max(first);
        let free = (first..next).filter(|i| !used.contains(i)).collect();
        IdPool { next, limit, free, lowest: false }
    }

    /// The same, handing out the lowest free id first: service-local
    /// backend indexes, so that a service's stay below [`crate::abi::SVC_IDS`]
    /// (xlb_svc_backend_ids) through a rolling update. (An index is reused
    /// only after no Maglev slot names it; connection entries name backend
    /// ids, not indexes, so an index coming back soon is harmless.)
    pub fn lowest_first(first: u32, limit: u32, used: &BTreeSet<u32>) -> IdPool {
        IdPool { lowest: true, ..IdPool::new(first, limit, used) }
    }

    /// Puts `id` back on the free list, in order if lowest-first.
    fn put_back(&mut self, id: u32, front: bool) {
        if self.lowest {
            let at = self.free.partition_point(|&f| f < id);
            self.free.insert(at, id);
        } else if front {
            self.free.push_front(id);
        } else {
            self.free.push_back(id);
        }
    }

    pub fn alloc(&mut self, what: &'static str) -> Result<u32, DatapathError> {
        if let Some(id) = self.free.pop_front() {
            return Ok(id);
        }
        if self.next >= self.limit {
            return Err(DatapathError::Capacity { what, capacity: self.limit });
        }
        self.next += 1;
        Ok(self.next - 1)
    }

    /// Gives back an id just allocated (its write failed): it is the next
    /// one handed out again.
    pub fn unalloc(&mut self, id: u32) {
        self.put_back(id, true);
    }

    pub fn release(&mut self, id: u32) {
        self.put_back(id, false);
    }

    /// Marks `id` used (it was found in use after the pool was built).
    pub fn take(&mut self, id: u32) {
        if id >= self.next {
            self.free.extend(self.next..id);
            self.next = id + 1;
        } else {
            self.free.retain(|&f| f != id);
        }
    }
}

/// Backend generations. A connection-table entry names its backend by id
/// and generation, so a backend id's new owner must never get a generation
/// that id had before: each one is above both a counter (seeded from the
/// clock and the generations found in the maps) and the id's last one.
#[derive(Clone, Debug)]
pub(crate) struct Generations {
    next: u32,
}

impl Generations {
    /// Generations from above `seen` (the highest in the maps) and the
    /// current Unix second.
    pub fn after(seen: u32) -> Generations {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() as u32);
        Generations { next: now.max(seen.wrapping_add(1)).max(1) }
    }

    /// At least where `other` is.
    pub fn merge(&mut self, other: &Generations) {
        self.next = self.next.max(other.next);
    }

    /// The generation of a new owner of an id whose last one was `last`
    /// (0: never used). Unique per id until the u32 counter wraps.
    pub fn next_after(&mut self, last: u32) -> u32 {
        let mut g = self.next.max(last.wrapping_add(1));
        if g == 0 || g == last {
            g = 1;
        }
        self.next = g.wrapping_add(1).max(1);
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_fills_gaps_first_then_reuses_oldest_freed() {
        let mut p = IdPool::new(1, 6, &[1, 3].into());
        assert_eq!(p.alloc("x").unwrap(), 2);
        assert_eq!(p.alloc("x").unwrap(), 4);
        p.release(3);
        p.release(1);
        assert_eq!(p.alloc("x").unwrap(), 3);
        assert_eq!(p.alloc("x").unwrap(), 1);
        assert_eq!(p.alloc("x").unwrap(), 5);
        let e = p.alloc("things").unwrap_err().to_string();
        assert!(e.contains("things capacity exhausted (6)"), "{e}");
    }

    #[test]
    fn unalloc_hands_the_same_id_out_again() {
        let mut p = IdPool::new(0, 10, &BTreeSet::new());
        let a = p.alloc("x").unwrap();
        p.unalloc(a);
        assert_eq!(p.alloc("x").unwrap(), a);
        p.release(a);
        let b = p.alloc("x").unwrap();
        assert_eq!(b, a, "a freed id comes back");
        let c = p.alloc("x").unwrap();
        p.unalloc(c);
        assert_eq!(p.alloc("x").unwrap(), c);
    }

    #[test]
    fn lowest_first_pool_hands_out_the_lowest_free_id() {
        let mut p = IdPool::lowest_first(0, 100, &[0, 2, 5].into());
        assert_eq!(p.alloc("x").unwrap(), 1);
        assert_eq!(p.alloc("x").unwrap(), 3);
        p.release(5);
        p.release(0);
        assert_eq!(p.alloc("x").unwrap(), 0, "lowest, not oldest freed");
        let a = p.alloc("x").unwrap();
        assert_eq!(a, 4);
        p.unalloc(a);
        assert_eq!(p.alloc("x").unwrap(), 4);
        assert_eq!(p.alloc("x").unwrap(), 5);
        assert_eq!(p.alloc("x").unwrap(), 6);
        // A rolling update of 10 (one added, then one removed, each in
        // turn) stays within the first 11 indexes.
        let mut p = IdPool::lowest_first(0, 100, &(0..10).collect());
        let mut live: VecDeque<u32> = (0..10).collect();
        for _ in 0..50 {
            live.push_back(p.alloc("x").unwrap());
            p.release(live.pop_front().unwrap());
        }
        assert!(live.iter().all(|&i| i < 11), "{live:?}");
    }

    #[test]
    fn generations_rise_above_the_last_one_of_the_id() {
        let mut g = Generations { next: 10 };
        assert_eq!(g.next_after(0), 10);
        assert_eq!(g.next_after(100), 101, "above the id's last generation");
        assert_eq!(g.next_after(5), 102, "and never back");
        let mut top = Generations { next: u32::MAX };
        assert_eq!(top.next_after(7), u32::MAX);
        assert_ne!(top.next_after(u32::MAX), u32::MAX, "wraps, never repeats the last");
    }
}
