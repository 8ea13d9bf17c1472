//! The ScyllaDB CDC data model as readers see it: stream ids, generations, log rows.
//!
//! Shared by the simulated cluster and the live adapters. The shapes follow
//! `system_distributed.cdc_streams_descriptions_v2` (one row per vnode, holding one stream per
//! shard) and the log table `<base>_scylla_cdc_log`, whose primary key is
//! `("cdc$stream_id", "cdc$time", "cdc$batch_seq_no")`.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{OutboxEvent, Timestamp};

/// A CDC stream id: 16 bytes laid out as `| token:64 | random:38 | vnode index:22 | version:4 |`,
/// high quadword first, big-endian (Scylla's `cdc/generation.cc`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StreamId(pub [u8; 16]);

impl StreamId {
    /// The stream-id version Scylla writes for vnode-based generations.
    pub const VERSION: u8 = 1;

    /// Builds a stream id from its parts. `random` keeps its low 38 bits, `vnode_index` its low 22.
    pub fn new(token: i64, random: u64, vnode_index: u32) -> Self {
        let hi = token as u64;
        let lo = ((random & ((1 << 38) - 1)) << 26)
            | ((u64::from(vnode_index) & ((1 << 22) - 1)) << 4)
            | u64::from(Self::VERSION);
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&hi.to_be_bytes());
        b[8..].copy_from_slice(&lo.to_be_bytes());
        StreamId(b)
    }

    fn lo(&self) -> u64 {
        u64::from_be_bytes(self.0[8..].try_into().expect("8 bytes"))
    }

    /// The token the stream lives at (its owning vnode and shard are those of this token).
    pub fn token(&self) -> i64 {
        i64::from_be_bytes(self.0[..8].try_into().expect("8 bytes"))
    }

    /// The vnode index field.
    pub fn vnode_index(&self) -> u32 {
        ((self.lo() >> 4) & ((1 << 22) - 1)) as u32
    }

    /// The version field (1 for vnode generations).
    pub fn version(&self) -> u8 {
        (self.lo() & 0xf) as u8
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for StreamId {
    /// Lower-case hex without `0x`, like scylla-cdc's `StreamID`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The streams of one vnode in one generation: one row of `cdc_streams_descriptions_v2`, and one
/// scylla-cdc `StreamReader`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamGroup {
    /// The vnode's last token (`range_end`).
    pub range_end: i64,
    /// One stream per shard of the owning node, in shard order.
    pub streams: Vec<StreamId>,
}

/// `cdc$operation` values (reference/scylla_cdc.md §6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operation {
    /// 0: preimage.
    PreImage,
    /// 1: update.
    Update,
    /// 2: insert.
    Insert,
    /// 3: row delete.
    RowDelete,
    /// 4: partition delete.
    PartitionDelete,
    /// 9: postimage.
    PostImage,
}

impl Operation {
    /// The raw `cdc$operation` tinyint.
    pub const fn code(self) -> i8 {
        match self {
            Operation::PreImage => 0,
            Operation::Update => 1,
            Operation::Insert => 2,
            Operation::RowDelete => 3,
            Operation::PartitionDelete => 4,
            Operation::PostImage => 9,
        }
    }
}

/// A `cdc$time` value: a version-1 timeuuid whose timestamp is the write timestamp.
///
/// Ordered as Scylla orders the clustering column: by timestamp, then by the remaining (random)
/// bits, so rows with equal write timestamps come in an order fixed by those random bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CdcTime {
    /// The write timestamp in µs.
    pub micros: i64,
    /// The clock-sequence and node bytes (random per write).
    pub lsb: u64,
}

/// 100-ns ticks between the UUID epoch (1582-10-15) and the Unix epoch.
const UUID_TICKS_AT_UNIX_EPOCH: u64 = 0x01b2_1dd2_1381_4000;

impl CdcTime {
    /// The timeuuid as Scylla stores it (version 1, RFC 4122 variant).
    pub fn to_uuid(self) -> Uuid {
        let ticks = (self.micros as u64)
            .wrapping_mul(10)
            .wrapping_add(UUID_TICKS_AT_UNIX_EPOCH);
        let mut node = [0u8; 6];
        node.copy_from_slice(&self.lsb.to_be_bytes()[2..]);
        let clock_seq = ((self.lsb >> 48) as u16) & 0x3fff;
        let ts = uuid::Timestamp::from_gregorian_time(ticks, clock_seq);
        Uuid::new_v1(ts, &node)
    }

    /// Reads a version-1 timeuuid back (the inverse of [`CdcTime::to_uuid`]); `None` for other
    /// versions.
    pub fn from_uuid(u: Uuid) -> Option<Self> {
        let (ticks, clock_seq) = u.get_timestamp()?.to_gregorian();
        let micros = (ticks.wrapping_sub(UUID_TICKS_AT_UNIX_EPOCH) as i64).div_euclid(10);
        let b = u.as_bytes();
        let mut node = [0u8; 8];
        node[2..].copy_from_slice(&b[10..16]);
        let lsb = (u64::from(clock_seq & 0x3fff) << 48) | u64::from_be_bytes(node);
        Some(CdcTime { micros, lsb })
    }

    /// The write timestamp.
    pub fn timestamp(self) -> Timestamp {
        Timestamp(self.micros)
    }
}

/// One row of `outbox_messages_scylla_cdc_log`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRow {
    /// `cdc$stream_id`.
    pub stream_id: StreamId,
    /// `cdc$time`.
    pub time: CdcTime,
    /// `cdc$batch_seq_no`: position within the `(stream, time)` group.
    pub batch_seq_no: i32,
    /// `cdc$operation`.
    pub operation: Operation,
    /// `cdc$end_of_batch`: true on the last row of its `(stream, time)` group.
    pub end_of_batch: bool,
    /// `cdc$ttl`: the TTL of the base write, if it had one.
    pub ttl: Option<i64>,
    /// The base row's columns.
    pub event: OutboxEvent,
}

impl LogRow {
    /// The row's primary key, the dedup key of at-least-once CDC delivery.
    pub fn key(&self) -> (StreamId, CdcTime, i32) {
        (self.stream_id, self.time, self.batch_seq_no)
    }
}

/// Where a paged log read stopped: the last row returned (Scylla's paging state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PageState {
    /// Index of the stream (in the query's stream list) of the last row returned.
    pub stream_index: usize,
    /// Clustering key of the last row returned.
    pub after: (CdcTime, i32),
}

/// One page of a log read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogPage {
    /// Rows in log order: stream by stream (in query order), each by `(cdc$time, batch_seq_no)`.
    pub rows: Vec<LogRow>,
    /// Set when more rows may follow.
    pub next: Option<PageState>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_id_layout_matches_scylla() {
        // reference/scylla_cdc.md §6.3's example id: token 0x7ffe0c687fcce86e, version 1.
        let raw = 0x7ffe0c687fcce86e0783343730000001u128.to_be_bytes();
        let id = StreamId(raw);
        assert_eq!(id.token(), 0x7ffe0c687fcce86e);
        assert_eq!(id.version(), 1);
        assert_eq!(id.to_string(), "7ffe0c687fcce86e0783343730000001");
        let rebuilt = StreamId::new(
            id.token(),
            (id.lo() >> 26) & ((1 << 38) - 1),
            id.vnode_index(),
        );
        assert_eq!(rebuilt, id);
        let s = StreamId::new(-5, u64::MAX, 3);
        assert_eq!((s.token(), s.vnode_index(), s.version()), (-5, 3, 1));
    }

    #[test]
    fn cdc_time_is_a_v1_uuid_of_the_write_timestamp() {
        let t = CdcTime {
            micros: 1_767_225_600_123_456,
            lsb: 0xdead_beef_0102_0304,
        };
        let u = t.to_uuid();
        assert_eq!(u.get_version_num(), 1);
        let (secs, nanos) = u.get_timestamp().expect("v1").to_unix();
        assert_eq!(secs as i64 * 1_000_000 + i64::from(nanos / 1_000), t.micros);
        // Reading it back keeps the timestamp and the 14-bit clock sequence + node.
        let back = CdcTime::from_uuid(u).expect("v1");
        assert_eq!(back.micros, t.micros);
        assert_eq!(back.lsb, t.lsb & 0x3fff_ffff_ffff_ffff);
        assert_eq!(back.to_uuid(), u);
    }
}
