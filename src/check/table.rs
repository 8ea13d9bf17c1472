//! The checker's aggregates, by id: an open-addressing table (linear probing, backward-shift
//! deletion) of boxed states. Its own table, not a `HashMap`, because the checker asks where a key
//! *would* be before it looks the key up: it prefetches the slot of an op a few ops ahead, then
//! the state the slot points to, so the two cache misses of a lookup overlap other work.

use crate::model::AggregateId;
use crate::prefetch::prefetch;

/// Aggregate id → boxed `V`.
#[derive(Clone, Debug)]
pub(super) struct AggregateTable<V> {
    /// A power of two long, at most half full (short probe runs: a missing key's run is the
    /// usual case, on every first commit of an order).
    slots: Vec<Option<(AggregateId, Box<V>)>>,
    len: usize,
    /// `64 − log2(slots.len())`: a hash's top bits pick the home slot.
    shift: u32,
}

const MIN_SLOTS: usize = 16;

impl<V> Default for AggregateTable<V> {
    fn default() -> Self {
        AggregateTable {
            slots: std::iter::repeat_with(|| None).take(MIN_SLOTS).collect(),
            len: 0,
            shift: 64 - MIN_SLOTS.trailing_zeros(),
        }
    }
}

impl<V> AggregateTable<V> {
    /// The slot a key's probe starts at: Fibonacci hashing of both halves of the id.
    fn home(&self, key: &AggregateId) -> usize {
        let (hi, lo) = key.0.as_u64_pair();
        ((hi ^ lo.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// `Ok(slot)` holding `key`, or `Err(slot)`: the empty slot that ends its probe.
    fn find(&self, key: &AggregateId) -> Result<usize, usize> {
        let mut i = self.home(key);
        loop {
            match &self.slots[i] {
                None => return Err(i),
                Some((k, _)) if k == key => return Ok(i),
                Some(_) => i = (i + 1) & self.mask(),
            }
        }
    }

    /// Entries held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    /// The state of `key`.
    pub(super) fn get(&self, key: &AggregateId) -> Option<&V> {
        let i = self.find(key).ok()?;
        self.slots[i].as_ref().map(|(_, v)| &**v)
    }

    /// The state of `key`, to change.
    pub(super) fn get_mut(&mut self, key: &AggregateId) -> Option<&mut V> {
        let i = self.find(key).ok()?;
        self.slots[i].as_mut().map(|(_, v)| &mut **v)
    }

    /// The state of `key`, made with `V::default()` if absent.
    pub(super) fn get_or_default(&mut self, key: AggregateId) -> &mut V
    where
        V: Default,
    {
        let i = match self.find(&key) {
            Ok(i) => i,
            Err(i) => {
                let i = if (self.len + 1) * 2 > self.slots.len() {
                    self.grow();
                    self.find(&key).expect_err("absent")
                } else {
                    i
                };
                self.slots[i] = Some((key, Box::default()));
                self.len += 1;
                i
            }
        };
        self.slots[i]
            .as_mut()
            .map(|(_, v)| &mut **v)
            .expect("filled")
    }

    /// Takes `key`'s state out. The entries after it in its probe run move back into the gap,
    /// so no tombstone is left and a long run's churn never grows the table.
    pub(super) fn remove(&mut self, key: &AggregateId) -> Option<Box<V>> {
        let mut gap = self.find(key).ok()?;
        let (_, v) = self.slots[gap].take().expect("found");
        self.len -= 1;
        let mut j = gap;
        loop {
            j = (j + 1) & self.mask();
            let Some((k, _)) = &self.slots[j] else { break };
            // The entry at j may move to the gap iff its home is not cyclically in (gap, j].
            let home = self.home(k);
            let stays = if gap < j {
                gap < home && home <= j
            } else {
                gap < home || home <= j
            };
            if !stays {
                self.slots[gap] = self.slots[j].take();
                gap = j;
            }
        }
        Some(v)
    }

    /// Every entry, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&AggregateId, &V)> {
        self.slots.iter().flatten().map(|(k, v)| (k, &**v))
    }

    /// Starts loading the slot where `key`'s probe starts.
    pub(super) fn prefetch_slot(&self, key: &AggregateId) {
        prefetch(&self.slots[self.home(key)], 1);
    }

    fn grow(&mut self) {
        let doubled = self.slots.len() * 2;
        let old = std::mem::replace(
            &mut self.slots,
            std::iter::repeat_with(|| None).take(doubled).collect(),
        );
        self.shift -= 1;
        for (k, v) in old.into_iter().flatten() {
            let i = self.find(&k).expect_err("keys are distinct");
            self.slots[i] = Some((k, v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use uuid::Uuid;

    #[derive(Clone, Debug)]
    enum Step {
        Add(u8, u32),
        Remove(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (any::<u8>(), any::<u32>()).prop_map(|(k, v)| Step::Add(k, v)),
            any::<u8>().prop_map(Step::Remove),
        ]
    }

    /// Ids of a few shapes: small integers (the same low halves), and ids that differ only in
    /// one half, so probe runs collide and wrap.
    fn id(k: u8) -> AggregateId {
        AggregateId(match k % 3 {
            0 => Uuid::from_u128(u128::from(k)),
            1 => Uuid::from_u64_pair(u64::from(k), 7),
            _ => Uuid::from_u64_pair(7, u64::from(k) << 56),
        })
    }

    proptest! {
        /// Adds (adding to a value) and removes in any order: the table holds what a BTreeMap
        /// holds after the same steps, whatever the collisions and wrap-arounds.
        #[test]
        fn behaves_as_a_map(steps in proptest::collection::vec(step(), 0..400)) {
            let mut t: AggregateTable<u64> = AggregateTable::default();
            let mut m: BTreeMap<AggregateId, u64> = BTreeMap::new();
            for s in steps {
                match s {
                    Step::Add(k, v) => {
                        *t.get_or_default(id(k)) += u64::from(v);
                        *m.entry(id(k)).or_default() += u64::from(v);
                    }
                    Step::Remove(k) => {
                        prop_assert_eq!(t.remove(&id(k)).map(|b| *b), m.remove(&id(k)));
                    }
                }
                prop_assert_eq!(t.len(), m.len());
                prop_assert!(t.len() * 2 <= t.slots.len());
            }
            let mut got: Vec<(AggregateId, u64)> = t.iter().map(|(k, v)| (*k, *v)).collect();
            got.sort_unstable();
            prop_assert_eq!(got, m.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>());
            for k in 0..=255u8 {
                prop_assert_eq!(t.get(&id(k)).copied(), m.get(&id(k)).copied());
            }
        }
    }
}
