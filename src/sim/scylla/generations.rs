//! Topology and CDC generations: the token ring, its vnodes, and the stream sets built from them.
//!
//! A generation is a snapshot of the ring: for every vnode `(previous end, end]` and every shard
//! `j` of its owner, one stream whose token is the first token of the vnode on shard `j`
//! (Scylla's `find_first_token_for_shard`). A write with timestamp `ts` goes to the generation
//! operating at `ts`, then to the vnode whose end is the first ≥ its token, then to
//! `streams[shard_of(token, streams.len())]`. Generation `G` operates over `[T_G, T_next)`.

use rand::Rng;

use crate::cdc::{StreamGroup, StreamId};
use crate::model::Timestamp;
use crate::seed::SimRng;
use crate::sim::scylla::token::{first_token_for_shard, shard_of};

/// One node of the simulated cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Node number, from 0, never reused.
    pub id: u32,
    /// Offset of this node's clock from true time, in µs.
    pub clock_skew_us: i64,
    /// Shards (cores) of this node.
    pub shards: u32,
    /// The node's vnode tokens (each the end of a range it owns).
    pub tokens: Vec<i64>,
}

/// `stream_for` finds a token's group starting from its bucket: the token's top bits.
const BUCKET_BITS: u32 = 12;

/// The bucket of a token; buckets are in token order.
fn bucket_of(token: i64) -> usize {
    ((token as u64 ^ 1 << 63) >> (64 - BUCKET_BITS)) as usize
}

/// The lowest token of bucket `b`.
fn bucket_start(b: u64) -> i64 {
    ((b << (64 - BUCKET_BITS)) ^ 1 << 63) as i64
}

/// One CDC generation.
#[derive(Clone, Debug)]
pub struct Generation {
    /// When it starts operating (`cdc_generation_timestamps.time`).
    pub start: Timestamp,
    /// When it was announced (the row became readable).
    pub announced_at: Timestamp,
    /// One group per vnode, sorted by `range_end`.
    groups: Vec<StreamGroup>,
    /// The same groups laid flat for [`stream_for`](Self::stream_for), which runs on every
    /// write: the range ends alone, where to start looking among them by a token's top bits
    /// (so a lookup scans a step or two instead of bisecting), and every stream in one vector,
    /// group after group, with each group's first index and count.
    ends: Vec<i64>,
    start_by_bucket: Vec<u32>,
    spans: Vec<(u32, u32)>,
    streams: Vec<StreamId>,
    ignore_msb: u32,
}

impl Generation {
    /// Builds the stream set of a ring. `vnodes` is `(token, shards of owner)` in any order.
    pub fn build(
        start: Timestamp,
        announced_at: Timestamp,
        vnodes: &[(i64, u32)],
        ignore_msb: u32,
        rng: &mut SimRng,
    ) -> Self {
        assert!(!vnodes.is_empty(), "a generation needs at least one vnode");
        let mut sorted = vnodes.to_vec();
        sorted.sort_unstable();
        sorted.dedup_by_key(|v| v.0);
        let n = sorted.len();
        let mut groups = Vec::with_capacity(n);
        for (i, &(end, shards)) in sorted.iter().enumerate() {
            // The first vnode owns the wrap-around range (last end, first end].
            let prev = sorted[(i + n - 1) % n].0;
            let prev = if n == 1 { end } else { prev };
            let streams = (0..shards)
                .map(|j| {
                    let token =
                        first_token_for_shard(prev, end, j, shards, ignore_msb).unwrap_or(end);
                    StreamId::new(token, rng.random(), i as u32)
                })
                .collect();
            groups.push(StreamGroup {
                range_end: end,
                streams,
            });
        }
        let mut spans = Vec::with_capacity(groups.len());
        let mut streams = Vec::new();
        for g in &groups {
            spans.push((streams.len() as u32, g.streams.len() as u32));
            streams.extend_from_slice(&g.streams);
        }
        let ends: Vec<i64> = groups.iter().map(|g| g.range_end).collect();
        let start_by_bucket = (0..1u64 << BUCKET_BITS)
            .map(|b| ends.partition_point(|end| *end < bucket_start(b)) as u32)
            .collect();
        Generation {
            start,
            announced_at,
            ends,
            start_by_bucket,
            spans,
            streams,
            groups,
            ignore_msb,
        }
    }

    /// One group per vnode, sorted by `range_end`.
    pub fn groups(&self) -> &[StreamGroup] {
        &self.groups
    }

    /// The stream a partition with this token writes to.
    pub fn stream_for(&self, token: i64) -> StreamId {
        let mut i = self.start_by_bucket[bucket_of(token)] as usize;
        while self.ends.get(i).is_some_and(|end| *end < token) {
            i += 1;
        }
        let (first, count) = self.spans[if i == self.ends.len() { 0 } else { i }];
        let shard = shard_of(token, count, self.ignore_msb);
        self.streams[(first + shard) as usize]
    }

    /// Every stream of this generation.
    pub fn streams(&self) -> impl Iterator<Item = StreamId> + '_ {
        self.streams.iter().copied()
    }
}

/// The ring plus every generation it has had.
#[derive(Clone, Debug)]
pub struct Topology {
    /// Live nodes, by id.
    pub nodes: Vec<Node>,
    /// Generations in start order.
    pub generations: Vec<Generation>,
    next_node_id: u32,
    vnodes_per_node: u32,
    ignore_msb: u32,
}

impl Topology {
    /// A ring of `nodes` nodes with random tokens; its first generation starts at `start`.
    pub fn new(
        nodes: u32,
        vnodes_per_node: u32,
        shards: u32,
        ignore_msb: u32,
        skews_us: &[i64],
        start: Timestamp,
        rng: &mut SimRng,
    ) -> Self {
        assert_eq!(skews_us.len(), nodes as usize, "one clock skew per node");
        let mut t = Topology {
            nodes: Vec::new(),
            generations: Vec::new(),
            next_node_id: 0,
            vnodes_per_node,
            ignore_msb,
        };
        for &skew in skews_us {
            t.add_node(shards, skew, rng);
        }
        let g = Generation::build(start, start, &t.vnodes(), ignore_msb, rng);
        t.generations.push(g);
        t
    }

    fn add_node(&mut self, shards: u32, clock_skew_us: i64, rng: &mut SimRng) -> u32 {
        let id = self.next_node_id;
        self.next_node_id += 1;
        let tokens = (0..self.vnodes_per_node)
            .map(|_| rng.random::<i64>().max(i64::MIN + 1))
            .collect();
        self.nodes.push(Node {
            id,
            clock_skew_us,
            shards,
            tokens,
        });
        id
    }

    fn vnodes(&self) -> Vec<(i64, u32)> {
        self.nodes
            .iter()
            .flat_map(|n| n.tokens.iter().map(move |&t| (t, n.shards)))
            .collect()
    }

    /// A node joins: new tokens, and a new generation starting at `start`.
    pub fn join(
        &mut self,
        shards: u32,
        clock_skew_us: i64,
        now: Timestamp,
        start: Timestamp,
        rng: &mut SimRng,
    ) -> u32 {
        let id = self.add_node(shards, clock_skew_us, rng);
        self.push_generation(now, start, rng);
        id
    }

    /// A node leaves (its ranges go to the neighbours), and a new generation starts at `start`.
    /// Returns false (and changes nothing) if it is the last node or unknown.
    pub fn leave(&mut self, id: u32, now: Timestamp, start: Timestamp, rng: &mut SimRng) -> bool {
        if self.nodes.len() <= 1 || !self.nodes.iter().any(|n| n.id == id) {
            return false;
        }
        self.nodes.retain(|n| n.id != id);
        self.push_generation(now, start, rng);
        true
    }

    fn push_generation(&mut self, now: Timestamp, start: Timestamp, rng: &mut SimRng) {
        let last = self
            .generations
            .last()
            .expect("the first generation exists")
            .start;
        let start = start.max(last.offset_micros(1_000)); // generation timestamps are distinct ms
        let g = Generation::build(start.floor_ms(), now, &self.vnodes(), self.ignore_msb, rng);
        self.generations.push(g);
    }

    /// Index of the generation operating at `t`.
    pub fn generation_index_at(&self, t: Timestamp) -> Option<usize> {
        let i = self.generations.partition_point(|g| g.start <= t);
        i.checked_sub(1)
    }

    /// The generation operating at `t`.
    pub fn generation_at(&self, t: Timestamp) -> Option<&Generation> {
        self.generation_index_at(t).map(|i| &self.generations[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::Seed;
    use crate::sim::scylla::token::{DEFAULT_IGNORE_MSB_BITS, murmur3_token};

    fn topo(rng: &mut SimRng) -> Topology {
        Topology::new(
            3,
            256,
            4,
            DEFAULT_IGNORE_MSB_BITS,
            &[0, 0, 0],
            Timestamp(0),
            rng,
        )
    }

    /// The bucketed lookup finds the group a bisection of the groups finds (the first whose end
    /// is ≥ the token, wrapping past the last), for the ring's edges, every range end and its
    /// neighbours, bucket boundaries, and random tokens; for rings of 1 to 1,000 vnodes.
    #[test]
    fn stream_for_finds_the_group_a_bisection_finds() {
        let mut rng = Seed(3).rng("t");
        for vnodes in [1usize, 2, 7, 768, 1_000] {
            let ring: Vec<(i64, u32)> = (0..vnodes).map(|_| (rng.random(), 3)).collect();
            let g = Generation::build(Timestamp(0), Timestamp(0), &ring, 12, &mut rng);
            let bisect = |token: i64| {
                let i = g.groups.partition_point(|gr| gr.range_end < token);
                let group = &g.groups[if i == g.groups.len() { 0 } else { i }];
                let shard = shard_of(token, group.streams.len() as u32, g.ignore_msb);
                group.streams[shard as usize]
            };
            let mut tokens = vec![i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX];
            for gr in &g.groups {
                tokens.extend([
                    gr.range_end.saturating_sub(1),
                    gr.range_end,
                    gr.range_end.saturating_add(1),
                ]);
            }
            for b in 0..1u64 << BUCKET_BITS {
                tokens.extend([bucket_start(b), bucket_start(b).wrapping_sub(1)]);
            }
            tokens.extend((0..10_000).map(|_| rng.random::<i64>()));
            for t in tokens {
                assert_eq!(g.stream_for(t), bisect(t), "token {t}, {vnodes} vnodes");
            }
        }
    }

    #[test]
    fn one_stream_per_vnode_and_shard_in_its_own_vnode() {
        let mut rng = Seed(3).rng("t");
        let t = topo(&mut rng);
        let g = &t.generations[0];
        assert_eq!(g.groups().len(), 768);
        assert_eq!(g.streams().count(), 3072);
        let mut prev = g.groups().last().unwrap().range_end;
        let mut fallbacks = 0;
        for (i, group) in g.groups().iter().enumerate() {
            for (j, s) in group.streams.iter().enumerate() {
                assert_eq!(s.vnode_index(), i as u32);
                assert_eq!(s.version(), 1);
                let tok = s.token();
                let inside = if i == 0 {
                    tok > prev || tok <= group.range_end
                } else {
                    tok > prev && tok <= group.range_end
                };
                assert!(
                    inside,
                    "stream token {tok} outside vnode ({prev}, {}]",
                    group.range_end
                );
                // A vnode narrower than a shard cycle may hold no token of shard j; Scylla then
                // uses the range end, as the model does.
                if tok != group.range_end {
                    assert_eq!(
                        shard_of(tok, 4, DEFAULT_IGNORE_MSB_BITS),
                        j as u32,
                        "stream on its shard"
                    );
                } else {
                    fallbacks += 1;
                }
            }
            prev = group.range_end;
        }
        assert!(
            fallbacks < 3072 / 10,
            "{fallbacks} streams fell back to the range end"
        );
    }

    #[test]
    fn every_key_maps_to_exactly_one_stream_of_the_generation_at_its_timestamp() {
        let mut rng = Seed(4).rng("t");
        let mut t = topo(&mut rng);
        t.join(4, 0, Timestamp(10), Timestamp(65_000_000), &mut rng);
        let (g0, g1) = (&t.generations[0], &t.generations[1]);
        assert_eq!(g1.groups().len(), 1024);
        let s0: std::collections::BTreeSet<_> = g0.streams().collect();
        let s1: std::collections::BTreeSet<_> = g1.streams().collect();
        assert!(s0.is_disjoint(&s1), "stream ids are fresh per generation");
        for k in 0u32..2_000 {
            let token = murmur3_token(&k.to_be_bytes());
            let a = t
                .generation_at(Timestamp(64_999_999))
                .unwrap()
                .stream_for(token);
            let b = t
                .generation_at(Timestamp(65_000_000))
                .unwrap()
                .stream_for(token);
            assert!(s0.contains(&a) && !s1.contains(&a));
            assert!(s1.contains(&b) && !s0.contains(&b));
            // the stream's group is the vnode owning the token, and the same token lands on the same shard
            let owner = g1
                .groups()
                .iter()
                .find(|gr| gr.streams.contains(&b))
                .unwrap();
            let i = g1.groups().partition_point(|gr| gr.range_end < token) % g1.groups().len();
            assert_eq!(owner.range_end, g1.groups()[i].range_end);
        }
        assert!(t.generation_at(Timestamp(-1)).is_none());
    }

    #[test]
    fn leaving_shrinks_the_ring_but_never_below_one_node() {
        let mut rng = Seed(5).rng("t");
        let mut t = Topology::new(2, 8, 2, 12, &[0, 0], Timestamp(0), &mut rng);
        assert!(t.leave(0, Timestamp(1), Timestamp(5_000_000), &mut rng));
        assert_eq!(t.generations[1].groups().len(), 8);
        assert!(!t.leave(1, Timestamp(2), Timestamp(9_000_000), &mut rng));
        assert!(!t.leave(7, Timestamp(2), Timestamp(9_000_000), &mut rng));
        assert_eq!(t.generations.len(), 2);
    }
}
