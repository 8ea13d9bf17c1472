//! Tokens and shards: Cassandra's Murmur3Partitioner and Scylla's sharder.
//!
//! `murmur3_token` reproduces `org.apache.cassandra.utils.MurmurHash.hash3_x64_128` including its
//! historical quirk of sign-extending the tail bytes (Scylla keeps it for compatibility), so a
//! simulated key lands on the token a real cluster gives it. `shard_of` and
//! `first_token_for_shard` follow Scylla's `dht::sharder` with `murmur3_partitioner_ignore_msb_bits`.

/// Scylla's default `murmur3_partitioner_ignore_msb_bits`.
pub const DEFAULT_IGNORE_MSB_BITS: u32 = 12;

const C1: u64 = 0x87c3_7b91_1142_53d5;
const C2: u64 = 0x4cf5_ad43_2745_937f;

fn fmix(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// Cassandra's `hash3_x64_128(key, 0, len, seed)`, returning `(h1, h2)`.
pub fn hash3_x64_128(key: &[u8], seed: u64) -> (u64, u64) {
    let nblocks = key.len() / 16;
    let (mut h1, mut h2) = (seed, seed);
    for block in key.chunks_exact(16) {
        let mut k1 = u64::from_le_bytes(block[..8].try_into().expect("8 bytes"));
        let mut k2 = u64::from_le_bytes(block[8..].try_into().expect("8 bytes"));
        k1 = k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 ^= k1;
        h1 = h1
            .rotate_left(27)
            .wrapping_add(h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        k2 = k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 ^= k2;
        h2 = h2
            .rotate_left(31)
            .wrapping_add(h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }
    let tail = &key[nblocks * 16..];
    // Java's `(long) key.get(i)` sign-extends the byte: the quirk every Cassandra-compatible
    // partitioner must keep.
    let byte = |i: usize| tail[i] as i8 as i64 as u64;
    let (mut k1, mut k2) = (0u64, 0u64);
    for i in (8..tail.len()).rev() {
        k2 ^= byte(i) << ((i - 8) * 8);
    }
    if tail.len() > 8 {
        k2 = k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 ^= k2;
    }
    for i in (0..tail.len().min(8)).rev() {
        k1 ^= byte(i) << (i * 8);
    }
    if !tail.is_empty() {
        k1 = k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 ^= k1;
    }
    h1 ^= key.len() as u64;
    h2 ^= key.len() as u64;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix(h1);
    h2 = fmix(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    (h1, h2)
}

/// The Murmur3Partitioner token of a serialized partition key (`i64::MIN` is never a key token).
pub fn murmur3_token(key: &[u8]) -> i64 {
    let t = hash3_x64_128(key, 0).0 as i64;
    if t == i64::MIN { i64::MAX } else { t }
}

fn unbias(token: i64) -> u64 {
    (token as u64).wrapping_add(1 << 63)
}

fn bias(u: u64) -> i64 {
    u.wrapping_sub(1 << 63) as i64
}

/// Scylla's `shard_of(token)` for a node with `shards` shards.
pub fn shard_of(token: i64, shards: u32, ignore_msb: u32) -> u32 {
    assert!(shards > 0, "a node has at least one shard");
    let z = unbias(token) << ignore_msb;
    ((u128::from(z) * u128::from(shards)) >> 64) as u32
}

/// The first token `t` in the ring range `(start, end]` (wrapping past `i64::MAX` when
/// `end <= start`) with `shard_of(t) == shard`, or `None` if the range holds no such token.
pub fn first_token_for_shard(
    start: i64,
    end: i64,
    shard: u32,
    shards: u32,
    ignore_msb: u32,
) -> Option<i64> {
    assert!(shard < shards, "shard {shard} out of {shards}");
    let first = unbias(start).wrapping_add(1);
    let span = unbias(end).wrapping_sub(first); // distance from `first` to `end`, wrapping
    if shard_of(bias(first), shards, ignore_msb) == shard {
        return Some(bias(first));
    }
    // Within each cycle of 2^(64 − msb) unbiased values, shard j starts at ceil(j·cycle/shards).
    let cycle_bits = 64 - ignore_msb;
    let cycle: u128 = 1u128 << cycle_bits;
    let offset = (u128::from(shard) * cycle).div_ceil(u128::from(shards)) as u64;
    let base = if cycle_bits == 64 {
        0
    } else {
        first & !((1u64 << cycle_bits) - 1)
    };
    let mut candidate = base + offset; // base ≤ 2^64 − cycle and offset < cycle: no overflow
    if candidate < first {
        candidate = candidate.wrapping_add(cycle as u64); // the next cycle (wraps the ring)
    }
    let distance = candidate.wrapping_sub(first);
    if distance > span {
        return None;
    }
    debug_assert_eq!(shard_of(bias(candidate), shards, ignore_msb), shard);
    Some(bias(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors computed by Cassandra, as pinned in the DataStax C# driver's `TokenTests.MurmurHashTest`
    /// ("inputs and result values from Cassandra"), including tails with bytes ≥ 0x80.
    #[test]
    fn murmur3_tokens_match_cassandra() {
        let seq = |from: u8| -> Vec<u8> { (from..from + 16).collect() };
        let cases: Vec<(Vec<u8>, i64)> = vec![
            (seq(1), -5563837382979743776),
            (seq(2), -1513403162740402161),
            (seq(3), -495360443712684655),
            (seq(4), 1734091135765407943),
            (seq(5), -3199412112042527988),
            (seq(6), -6316563938475080831),
            (seq(7), 8228893370679682632),
            (vec![0; 16], 5457549051747178710),
            (vec![255; 16], -2824192546314762522),
            (vec![254; 16], -833317529301936754),
            (
                vec![
                    0, 1, 2, 3, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
                ],
                6463632673159404390,
            ),
            (vec![254; 17], -1672437813826982685),
            (vec![254; 4], 4566408979886474012),
            (vec![0; 4], -3485513579396041028),
            (vec![0, 1, 127, 127], 6573459401642635627),
            (vec![0, 255, 255, 255], 123573637386978882),
            (vec![255, 1, 2, 3], -2839127690952877842),
        ];
        for (key, token) in cases {
            assert_eq!(murmur3_token(&key), token, "key {key:?}");
        }
    }

    #[test]
    fn shards_split_the_ring_evenly() {
        assert_eq!(shard_of(i64::MIN, 4, 0), 0);
        assert_eq!(shard_of(i64::MAX, 4, 0), 3);
        assert_eq!(shard_of(0, 4, 0), 2);
        assert_eq!(shard_of(-1, 4, 0), 1);
        // With ignore_msb = 12 the pattern repeats every 2^52 tokens.
        let t = i64::MIN + (1 << 52);
        assert_eq!(shard_of(t, 4, 12), 0);
        assert_eq!(shard_of(t - 1, 4, 12), 3);
    }

    #[test]
    fn first_token_for_shard_is_the_first_in_range() {
        let cycle = 1i64 << 52;
        let start = -1_000_000_000i64;
        let end = start + 3 * cycle;
        for shards in [1u32, 3, 4, 8] {
            for shard in 0..shards {
                let t = first_token_for_shard(start, end, shard, shards, 12)
                    .expect("range spans cycles");
                assert!(t > start && t <= end);
                assert_eq!(shard_of(t, shards, 12), shard);
                // nothing before it in the range is on that shard (check a sample step back)
                if t - 1 > start {
                    assert_ne!(shard_of(t - 1, shards, 12), shard);
                }
            }
        }
        // A tiny range holds only the shard of its tokens.
        let s = shard_of(11, 4, 12);
        assert_eq!(first_token_for_shard(10, 12, s, 4, 12), Some(11));
        assert_eq!(first_token_for_shard(10, 12, (s + 2) % 4, 4, 12), None);
        // A range wrapping past i64::MAX.
        let t = first_token_for_shard(i64::MAX - 10, i64::MIN + cycle, 0, 4, 12).unwrap();
        assert_eq!(shard_of(t, 4, 12), 0);
    }
}
