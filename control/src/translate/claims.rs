//! Frontend ownership across Services: an (address, port, protocol) may be
//! the frontend of one service port only. Every claim is kept, ordered by
//! the claiming Service (namespace, name) and its order within it; the first
//! wins and each later one is a [`Problem::DuplicateFrontend`] error, so the
//! verdict does not depend on the order objects arrived in. Kept by the
//! [`super::Translator`] as Services are (re)translated.
use std::net::{IpAddr, SocketAddr};

// hashbrown's tables (foldhash, seeded per table): these are keyed by
// frontend addresses and ports any namespace user chooses, so not an unseeded hash
// (FxHash) that a user could collide on purpose; faster than std's SipHash
// for a cold start's 30k claims.
use hashbrown::HashMap;

use lb::model::{Frontend, Proto, ServiceKey};

use super::errors::{ConfigError, ObjectRef, Problem};
use crate::cluster::ObjectKey;

/// The frontend a service port claims.
pub(super) type Slot = (IpAddr, u16, Proto);

/// One claim: the claiming service port and the field it came from.
#[derive(Clone, Debug)]
struct Claim {
    key: ServiceKey,
    field: String,
}

/// A frontend's claims, ordered by (Service, sequence within the Service):
/// almost always one, so a sorted vector (a BTreeMap's first node is ~1.5 KB:
/// 44 MB at 30k services).
type Claimants = Vec<((ObjectKey, usize), Claim)>;

/// Every claim of every frontend.
#[derive(Debug, Default)]
pub(super) struct Claims {
    /// Frontend -> its claims.
    by_slot: HashMap<Slot, Claimants>,
    /// Frontends claimed more than once.
    contested: usize,
}

impl Claims {
    /// Service `owner`'s claim number `seq`: `frontend` of datapath service
    /// `key`, from API field `field`. Returns the slot, for [`Claims::release`].
    pub(super) fn claim(
        &mut self,
        owner: &ObjectKey,
        seq: usize,
        key: &ServiceKey,
        frontend: &Frontend,
        field: String,
    ) -> Slot {
        let slot = (frontend.addr, frontend.port, frontend.proto);
        let claim = Claim { key: key.clone(), field };
        let c = self.by_slot.entry(slot).or_insert_with(|| Vec::with_capacity(1));
        let at = (owner.clone(), seq);
        match c.binary_search_by(|(k, _)| k.cmp(&at)) {
            Ok(i) => c[i].1 = claim,
            Err(i) => c.insert(i, (at, claim)),
        }
        if c.len() == 2 {
            self.contested += 1;
        }
        slot
    }

    /// Drops Service `owner`'s claims, `slots` in claim order.
    pub(super) fn release(&mut self, owner: &ObjectKey, slots: &[Slot]) {
        for (seq, slot) in slots.iter().enumerate() {
            let Some(c) = self.by_slot.get_mut(slot) else { continue };
            let before = c.len();
            let at = (owner.clone(), seq);
            if let Ok(i) = c.binary_search_by(|(k, _)| k.cmp(&at)) {
                c.remove(i);
            }
            if before > 1 && c.len() <= 1 {
                self.contested -= 1;
            }
            if c.is_empty() {
                self.by_slot.remove(slot);
            }
        }
    }

    /// The service port `slot` goes to: its first claim.
    pub(super) fn winner(&self, slot: &Slot) -> Option<&ServiceKey> {
        self.by_slot.get(slot)?.first().map(|(_, c)| &c.key)
    }

    /// The service ports claiming `slot` when more than one does.
    pub(super) fn contenders(&self, slot: &Slot) -> impl Iterator<Item = &ServiceKey> {
        self.by_slot
            .get(slot)
            .filter(|c| c.len() > 1)
            .into_iter()
            .flat_map(|c| c.iter().map(|(_, c)| &c.key))
    }

    /// No frontend is claimed twice.
    pub(super) fn are_clear(&self) -> bool {
        self.contested == 0
    }

    /// The errors of Service `owner` (named `object` in them): each of its
    /// claims, `slots` in claim order, that another claim precedes.
    pub(super) fn duplicates(
        &self,
        owner: &ObjectKey,
        object: &ObjectRef,
        slots: &[Slot],
    ) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        for (seq, slot) in slots.iter().enumerate() {
            let claims = &self.by_slot[slot];
            let at = (owner.clone(), seq);
            let (first_at, first) = claims.first().expect("claimed");
            if *first_at == at {
                continue;
            }
            let Some((_, me)) = claims.iter().find(|(k, _)| *k == at) else { continue };
            let (addr, port, proto) = *slot;
            errors.push(ConfigError {
                object: object.clone(),
                field: me.field.clone(),
                problem: Problem::DuplicateFrontend {
                    frontend: format!("{}/{}", SocketAddr::new(addr, port), proto),
                    other: first.key.clone(),
                },
            });
        }
        errors
    }
}
