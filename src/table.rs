//! A hash map keyed by random 128-bit ids (aggregates, CDC streams) that can be told a key ahead
//! of its lookup: open addressing with linear probing and backward-shift deletion. Its own table,
//! not a `HashMap`, because a caller that knows the next key a few steps early can start loading
//! the key's slot ([`PrefetchMap::prefetch`]), so the cache miss of the lookup overlaps other
//! work. The big maps of a run (the checker's aggregates, the writer's and the cluster's orders)
//! are looked up at random, once or twice per event, and each lookup used to be a miss.
//!
//! Iteration order is the slots' order, fixed by the keys and the insertion history: the same
//! run gives the same order, and callers that report in key order sort.

use crate::cdc::StreamId;
use crate::model::AggregateId;
use crate::prefetch::prefetch;

/// A key of a [`PrefetchMap`]: an id whose bits are (close to) random.
pub(crate) trait TableKey: Copy + Eq {
    /// The id's bits, as two words.
    fn words(&self) -> (u64, u64);
}

impl TableKey for AggregateId {
    fn words(&self) -> (u64, u64) {
        self.0.as_u64_pair()
    }
}

impl TableKey for StreamId {
    fn words(&self) -> (u64, u64) {
        let (hi, lo) = self.0.split_at(8);
        let word = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
        (word(hi), word(lo))
    }
}

/// `K` → `V`, at most half full.
#[derive(Clone, Debug)]
pub(crate) struct PrefetchMap<K, V> {
    /// A power of two long, at most half full (short probe runs: a missing key's run is the
    /// usual case, on every first commit of an order).
    slots: Vec<Option<(K, V)>>,
    len: usize,
    /// `64 − log2(slots.len())`: a hash's top bits pick the home slot.
    shift: u32,
}

const MIN_SLOTS: usize = 16;

impl<K, V> Default for PrefetchMap<K, V> {
    fn default() -> Self {
        PrefetchMap {
            slots: std::iter::repeat_with(|| None).take(MIN_SLOTS).collect(),
            len: 0,
            shift: 64 - MIN_SLOTS.trailing_zeros(),
        }
    }
}

impl<K: TableKey, V> PrefetchMap<K, V> {
    /// The slot a key's probe starts at: Fibonacci hashing of both halves of the id.
    fn home(&self, key: &K) -> usize {
        let (hi, lo) = key.words();
        ((hi ^ lo.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// `Ok(slot)` holding `key`, or `Err(slot)`: the empty slot that ends its probe.
    fn find(&self, key: &K) -> Result<usize, usize> {
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
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether `key` is held.
    #[cfg(test)]
    fn contains_key(&self, key: &K) -> bool {
        self.find(key).is_ok()
    }

    /// The value of `key`.
    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        let i = self.find(key).ok()?;
        self.slots[i].as_ref().map(|(_, v)| v)
    }

    /// The value of `key`, to change.
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let i = self.find(key).ok()?;
        self.slots[i].as_mut().map(|(_, v)| v)
    }

    /// The value of `key`, made with `make` if absent.
    pub(crate) fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        let i = match self.find(&key) {
            Ok(i) => i,
            Err(i) => {
                let i = if (self.len + 1) * 2 > self.slots.len() {
                    self.grow();
                    self.find(&key).expect_err("absent")
                } else {
                    i
                };
                self.slots[i] = Some((key, make()));
                self.len += 1;
                i
            }
        };
        self.slots[i].as_mut().map(|(_, v)| v).expect("filled")
    }

    /// Sets `key`'s value, returning the old one.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let mut value = Some(value);
        let slot = self.get_or_insert_with(key, || value.take().expect("once"));
        value.map(|v| std::mem::replace(slot, v))
    }

    /// Takes `key`'s value out. The entries after it in its probe run move back into the gap,
    /// so no tombstone is left and a long run's churn never grows the table.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
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

    /// Every entry, in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.slots.iter().flatten().map(|(k, v)| (k, v))
    }

    /// Every value, to change, in slot order.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.slots.iter_mut().flatten().map(|(_, v)| v)
    }

    /// Keeps the entries `keep` says yes to.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        let gone: Vec<K> = self
            .slots
            .iter_mut()
            .flatten()
            .filter_map(|(k, v)| (!keep(k, v)).then_some(*k))
            .collect();
        for k in gone {
            self.remove(&k);
        }
    }

    /// Starts loading the slot where `key`'s probe starts (a hint: changes nothing).
    pub(crate) fn prefetch(&self, key: &K) {
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
        Set(u8, u32),
        Remove(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (any::<u8>(), any::<u32>()).prop_map(|(k, v)| Step::Add(k, v)),
            (any::<u8>(), any::<u32>()).prop_map(|(k, v)| Step::Set(k, v)),
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
        /// Adds (to a value), sets and removes in any order: the table holds what a BTreeMap
        /// holds after the same steps, whatever the collisions and wrap-arounds.
        #[test]
        fn behaves_as_a_map(steps in proptest::collection::vec(step(), 0..400)) {
            let mut t: PrefetchMap<AggregateId, u64> = PrefetchMap::default();
            let mut m: BTreeMap<AggregateId, u64> = BTreeMap::new();
            for s in steps {
                match s {
                    Step::Add(k, v) => {
                        *t.get_or_insert_with(id(k), || 0) += u64::from(v);
                        *m.entry(id(k)).or_default() += u64::from(v);
                    }
                    Step::Set(k, v) => {
                        prop_assert_eq!(t.insert(id(k), u64::from(v)), m.insert(id(k), u64::from(v)));
                    }
                    Step::Remove(k) => {
                        prop_assert_eq!(t.remove(&id(k)), m.remove(&id(k)));
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
                prop_assert_eq!(t.contains_key(&id(k)), m.contains_key(&id(k)));
            }
        }
    }
}
