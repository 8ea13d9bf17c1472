//! The history of a run: every operation, in the order it happened, with its simulated time.
//!
//! The writer records commits (with write timestamp and visibility time), the publisher records
//! every acknowledged record (partition, offset, relay incarnation), the runner records crashes,
//! restarts and faults, and the cluster records generations. The checker reads nothing else. The
//! history's [`digest`](History::digest) is the fingerprint of a run: same seed, same digest.

use std::cell::{Ref, RefCell};
use std::hash::{BuildHasher, Hash, Hasher};
use std::rc::Rc;

use serde::Serialize;

use crate::cdc::StreamId;
use crate::check::{Analysis, Checker};
use crate::model::{AggregateId, EventId, Timestamp};

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpKind {
    /// A batch (order row + outbox row) was acknowledged to the writer.
    Committed {
        /// The outbox event id.
        event: EventId,
        /// Its aggregate.
        aggregate: AggregateId,
        /// Its per-aggregate sequence number.
        seq: u64,
        /// The write timestamp (= `created_at` = `cdc$time`).
        write_ts: Timestamp,
        /// When the write became readable.
        visible_at: Timestamp,
        /// When its rows expire (CDC log / outbox TTL); `Timestamp::MAX` if never.
        expires_at: Timestamp,
        /// Whether the writer back-dated it (a late-write fault).
        late: bool,
    },
    /// A batch failed and was not applied.
    WriteFailed {
        /// The aggregate whose event was not written.
        aggregate: AggregateId,
        /// The sequence number the event would have had.
        seq: u64,
        /// Why.
        error: String,
    },
    /// The broker acknowledged a record to the relay.
    Published {
        /// The event id (header `id`).
        event: EventId,
        /// The record key.
        aggregate: AggregateId,
        /// The event's sequence number.
        seq: u64,
        /// Partition written.
        partition: u32,
        /// Offset written.
        offset: u64,
        /// The relay incarnation (producer session) that published it.
        incarnation: u32,
    },
    /// A publish returned an error to the relay (the record may still have been appended).
    PublishFailed {
        /// The event id.
        event: EventId,
        /// The relay incarnation.
        incarnation: u32,
        /// Whether the error was transient.
        transient: bool,
    },
    /// A relay incarnation started (1 is the first start).
    RelayStarted {
        /// The new incarnation.
        incarnation: u32,
    },
    /// A relay incarnation was dropped at an await point.
    RelayCrashed {
        /// The crashed incarnation.
        incarnation: u32,
    },
    /// A relay incarnation returned on its own.
    RelayExited {
        /// The incarnation.
        incarnation: u32,
        /// Its error, if it returned one.
        error: Option<String>,
    },
    /// A checkpoint write reached the cluster.
    CheckpointSaved {
        /// What was saved.
        what: CheckpointWhat,
        /// The saved position.
        position: Timestamp,
        /// The relay incarnation that saved it.
        incarnation: u32,
    },
    /// A relay read a checkpoint row.
    CheckpointLoaded {
        /// What was read.
        what: CheckpointWhat,
        /// The position found, if any.
        position: Option<Timestamp>,
        /// The relay incarnation that read it.
        incarnation: u32,
    },
    /// A topology change announced a new CDC generation.
    GenerationCreated {
        /// When it starts operating.
        start: Timestamp,
        /// Its number of streams.
        streams: usize,
    },
    /// A fault was switched on or off.
    Fault {
        /// The fault's name.
        name: String,
        /// On or off.
        on: bool,
    },
}

/// Which checkpoint row was saved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointWhat {
    /// The polling relay's cursor.
    Cursor,
    /// The stream reader's generation row.
    Generation,
    /// One stream's progress.
    Stream(StreamId),
}

/// One history entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Op {
    /// Simulated time of the operation.
    pub at: Timestamp,
    /// The operation.
    #[serde(flatten)]
    pub kind: OpKind,
}

/// The digest's hash: foldhash's quality hasher with a fixed seed (the same on every run of a
/// build; word-at-a-time, unlike FNV's byte-at-a-time loop, which was a tenth of a run's cost).
const DIGEST_SEED: foldhash::quality::FixedState = foldhash::quality::FixedState::with_seed(0);

/// A shared, append-only history (clones append to the same log).
///
/// Every op goes, as it is recorded, to the running [`digest`](History::digest) and to a
/// streaming [`Checker`]; a history made with [`History::new`] also keeps the ops themselves
/// (for tests, replays and "ops around the failure"), one made with [`History::streaming`] does
/// not, so a long run's memory does not grow with its length.
#[derive(Clone, Debug)]
pub struct History {
    inner: Rc<RefCell<Inner>>,
}

struct Inner {
    ops: Option<Vec<Op>>,
    pending: Vec<Op>,
    last_at: Option<Timestamp>,
    len: usize,
    digest: foldhash::quality::FoldHasher<'static>,
    checker: Checker,
}

/// Ops recorded but not yet shown to the checker: it takes them in batches, so it can fetch the
/// state an op needs a few ops ahead (see [`Checker::observe_ahead`]). A full batch is shown
/// but for its last ops, whose states are being fetched: they lead the next batch.
const PENDING: usize = 64 + AHEAD;
const AHEAD: usize = 2 * crate::prefetch::AHEAD;

impl Inner {
    /// Shows the checker every pending op but the last `keep`.
    fn flush(&mut self, keep: usize) {
        let n = self.pending.len().saturating_sub(keep);
        self.checker.observe_ahead(&self.pending, n);
        match &mut self.ops {
            Some(ops) => ops.extend(self.pending.drain(..n)),
            None => drop(self.pending.drain(..n)),
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("len", &self.len)
            .field("keeps_ops", &self.ops.is_some())
            .field("tracked", &self.checker.tracked())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// An empty history that keeps every op.
    pub fn new() -> Self {
        Self::with_ops(true)
    }

    /// An empty history that keeps only its digest and the checker's running state.
    pub fn streaming() -> Self {
        Self::with_ops(false)
    }

    fn with_ops(keep: bool) -> Self {
        History {
            inner: Rc::new(RefCell::new(Inner {
                ops: keep.then(Vec::new),
                pending: Vec::with_capacity(PENDING),
                last_at: None,
                len: 0,
                digest: DIGEST_SEED.build_hasher(),
                checker: Checker::new(),
            })),
        }
    }

    /// Appends an operation. Times never go backwards.
    pub fn record(&self, at: Timestamp, kind: OpKind) {
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        if let Some(last) = inner.last_at {
            assert!(at >= last, "history time went backwards: {at} after {last}");
        }
        let op = Op { at, kind };
        op.hash(&mut inner.digest);
        inner.last_at = Some(at);
        inner.len += 1;
        inner.pending.push(op);
        if inner.pending.len() == PENDING {
            inner.flush(AHEAD);
        }
    }

    /// Shows the checker every op recorded so far. Borrows mutably only if some are pending, so
    /// it never conflicts with a `Ref` from [`ops`](Self::ops) (nothing is recorded while one
    /// is held).
    fn flush(&self) {
        if !self.inner.borrow().pending.is_empty() {
            self.inner.borrow_mut().flush(0);
        }
    }

    /// Whether this history keeps its ops ([`History::new`]).
    pub fn keeps_ops(&self) -> bool {
        self.inner.borrow().ops.is_some()
    }

    /// All operations so far.
    ///
    /// # Panics
    /// If the history was made with [`History::streaming`], which keeps none.
    pub fn ops(&self) -> Ref<'_, Vec<Op>> {
        self.flush();
        Ref::map(self.inner.borrow(), |i| {
            i.ops
                .as_ref()
                .expect("a streaming history keeps no ops; build the world with History::new")
        })
    }

    /// The checker's analysis of everything recorded so far.
    pub fn analysis(&self) -> Analysis {
        self.flush();
        self.inner.borrow().checker.analysis()
    }

    /// The CDF of delivery latencies recorded so far (see [`Checker::delivery_cdf`]).
    pub fn delivery_cdf(&self) -> Vec<(f64, f64)> {
        self.flush();
        self.inner.borrow().checker.delivery_cdf()
    }

    /// Events the checker still tracks (bounded by the TTL on a long run).
    pub fn tracked_events(&self) -> usize {
        self.flush();
        self.inner.borrow().checker.tracked()
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.inner.borrow().len
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A 64-bit fingerprint of every operation in order (foldhash with a fixed seed: equal for
    /// equal histories within one build of the crate).
    pub fn digest(&self) -> u64 {
        self.inner.borrow().digest.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::analyze;
    use uuid::Uuid;

    /// The checker takes ops in batches, yet whatever reads the history sees every op recorded
    /// so far: after each of 167 ops, the analysis, the tracked count and the ops are those of
    /// the whole prefix. A second history, read only at the end, takes the same ops in full
    /// batches (each keeping its last ops for the next) and ends with the same analysis.
    #[test]
    fn readers_see_every_op_recorded_so_far() {
        let h = History::new();
        let unread = History::new();
        let mut ops = Vec::new();
        let mut record = |at: i64, kind: OpKind| {
            h.record(Timestamp(at), kind.clone());
            unread.record(Timestamp(at), kind.clone());
            ops.push(Op {
                at: Timestamp(at),
                kind,
            });
            assert_eq!(h.analysis(), analyze(&ops), "after {} ops", ops.len());
            assert_eq!(h.len(), ops.len());
            assert_eq!(*h.ops(), ops);
        };
        record(0, OpKind::RelayStarted { incarnation: 1 });
        for k in 0..100u64 {
            let (event, aggregate) = (
                EventId(Uuid::from_u64_pair(1, k)),
                AggregateId(Uuid::from_u64_pair(2, k % 30)),
            );
            let at = 1_000 * (k as i64 + 1);
            record(
                at,
                OpKind::Committed {
                    event,
                    aggregate,
                    seq: k / 30 + 1,
                    write_ts: Timestamp(at - 500),
                    visible_at: Timestamp(at),
                    expires_at: Timestamp::MAX,
                    late: false,
                },
            );
            // Every third event stays unpublished, so the tracked count keeps changing.
            if k % 3 != 0 {
                record(
                    at + 200,
                    OpKind::Published {
                        event,
                        aggregate,
                        seq: k / 30 + 1,
                        partition: 0,
                        offset: k,
                        incarnation: 1,
                    },
                );
            }
        }
        let unpublished = 34;
        assert_eq!(h.analysis().lost, unpublished);
        assert_eq!(h.tracked_events(), 100);
        assert!(
            h.len() > 2 * PENDING,
            "the unread history filled two batches"
        );
        assert_eq!(unread.analysis(), h.analysis());
        assert_eq!(*unread.ops(), *h.ops());
        assert_eq!(unread.digest(), h.digest());
    }
}
