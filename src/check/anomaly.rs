//! The anomalies the checker reports, each naming the property it violates and the events
//! involved, after Jepsen's queue checkers (`:lost-write`, `:duplicate`, `:nonmonotonic-poll`).

use std::fmt;

use serde::Serialize;

use crate::history::{CheckpointWhat, Op, OpKind};
use crate::model::{AggregateId, EventId, Timestamp};

/// One violation found in a history.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "anomaly", rename_all = "snake_case")]
pub enum Anomaly {
    /// Committed, never published, and its rows did not expire first.
    Lost {
        /// The event.
        event: EventId,
        /// Its aggregate.
        aggregate: AggregateId,
        /// Its seq.
        seq: u64,
        /// When it was committed.
        committed_at: Timestamp,
    },
    /// Published again with no crash, exit or publish error to explain it, or re-published after
    /// the relay loaded a checkpoint that already covered it.
    DuplicatedUnexplained {
        /// The event.
        event: EventId,
        /// The incarnation that published it again.
        incarnation: u32,
        /// When it was published before.
        previous_at: Timestamp,
        /// When it was published again.
        again_at: Timestamp,
        /// Why no crash explains it.
        why: String,
    },
    /// First published after a later event of its aggregate.
    ReorderedWithinAggregate {
        /// The late event.
        event: EventId,
        /// Its aggregate.
        aggregate: AggregateId,
        /// Its seq.
        seq: u64,
        /// The highest seq of the aggregate already in the topic.
        after_seq: u64,
        /// Partition.
        partition: u32,
        /// Offset of its first record.
        offset: u64,
        /// The writer stamped this event later than the later-seq one (clock skew or a late
        /// write inverted the timestamps), so log order itself is out of seq order: the writer,
        /// not the relay, reordered it. Reported; does not fail a run.
        caused_by_writer: bool,
    },
    /// Published, never committed.
    Phantom {
        /// The event.
        event: EventId,
    },
    /// A checkpoint went backwards within one relay incarnation.
    CheckpointRegressed {
        /// Which checkpoint.
        what: CheckpointWhat,
        /// The previous position.
        from: Timestamp,
        /// The new, earlier position.
        to: Timestamp,
        /// When.
        at: Timestamp,
        /// The incarnation.
        incarnation: u32,
    },
    /// Never published, and its rows expired first.
    ExpiredBeforeRead {
        /// The event.
        event: EventId,
        /// When it was committed.
        committed_at: Timestamp,
        /// When its rows expired.
        expired_at: Timestamp,
        /// The relay was down, or the cluster unreachable, within [`EXPIRY_GRACE`] before the
        /// rows expired (e.g. downtime longer than the TTL): the fault, not the relay, lost it.
        /// Such expiries are reported but do not fail a run.
        ///
        /// [`EXPIRY_GRACE`]: crate::check::EXPIRY_GRACE
        explained_by_downtime: bool,
    },
}

impl Anomaly {
    /// The property this anomaly violates.
    pub fn property(&self) -> &'static str {
        match self {
            Anomaly::Lost { .. } => "always: every committed event is published",
            Anomaly::DuplicatedUnexplained { .. } => {
                "always: every duplicate is explained by a crash or a publish error"
            }
            Anomaly::ReorderedWithinAggregate {
                caused_by_writer: true,
                ..
            } => "(explained) the writer's timestamps were out of seq order",
            Anomaly::ReorderedWithinAggregate { .. } => {
                "always: an aggregate's events reach the topic in seq order"
            }
            Anomaly::Phantom { .. } => "always: only committed events are published",
            Anomaly::CheckpointRegressed { .. } => {
                "always: a relay's checkpoints only move forward"
            }
            Anomaly::ExpiredBeforeRead {
                explained_by_downtime: true,
                ..
            } => "(explained) rows expired while the relay was down",
            Anomaly::ExpiredBeforeRead { .. } => {
                "always: a running relay reads rows before they expire"
            }
        }
    }

    /// The anomaly's kind, as a short name.
    pub fn kind(&self) -> &'static str {
        match self {
            Anomaly::Lost { .. } => "Lost",
            Anomaly::DuplicatedUnexplained { .. } => "DuplicatedUnexplained",
            Anomaly::ReorderedWithinAggregate { .. } => "ReorderedWithinAggregate",
            Anomaly::Phantom { .. } => "Phantom",
            Anomaly::CheckpointRegressed { .. } => "CheckpointRegressed",
            Anomaly::ExpiredBeforeRead { .. } => "ExpiredBeforeRead",
        }
    }

    /// Whether this anomaly fails a run (explained expiries do not).
    pub fn is_failure(&self) -> bool {
        !matches!(
            self,
            Anomaly::ExpiredBeforeRead {
                explained_by_downtime: true,
                ..
            } | Anomaly::ReorderedWithinAggregate {
                caused_by_writer: true,
                ..
            }
        )
    }

    /// The event this anomaly is about, if any.
    pub fn event(&self) -> Option<EventId> {
        match self {
            Anomaly::Lost { event, .. }
            | Anomaly::DuplicatedUnexplained { event, .. }
            | Anomaly::ReorderedWithinAggregate { event, .. }
            | Anomaly::Phantom { event }
            | Anomaly::ExpiredBeforeRead { event, .. } => Some(*event),
            Anomaly::CheckpointRegressed { .. } => None,
        }
    }

    /// When it happened (or the event was committed).
    fn time(&self) -> Option<Timestamp> {
        match self {
            Anomaly::Lost { committed_at, .. }
            | Anomaly::ExpiredBeforeRead { committed_at, .. } => Some(*committed_at),
            Anomaly::DuplicatedUnexplained { again_at, .. } => Some(*again_at),
            Anomaly::CheckpointRegressed { at, .. } => Some(*at),
            Anomaly::ReorderedWithinAggregate { .. } | Anomaly::Phantom { .. } => None,
        }
    }

    /// The operations around the anomaly: every op about its event, plus relay lifecycle,
    /// checkpoint and fault ops within 30 s of it (at most `limit`).
    pub fn context<'a>(&self, ops: &'a [Op], limit: usize) -> Vec<&'a Op> {
        let event = self.event();
        let mut t = self.time();
        if t.is_none() {
            t = ops
                .iter()
                .find(|o| event.is_some_and(|e| mentions(o, e)))
                .map(|o| o.at);
        }
        let near = |o: &Op| {
            t.is_some_and(|t| {
                let d = (o.at.0 - t.0).abs();
                d <= 30_000_000
                    && matches!(
                        o.kind,
                        OpKind::RelayStarted { .. }
                            | OpKind::RelayCrashed { .. }
                            | OpKind::RelayExited { .. }
                            | OpKind::Fault { .. }
                            | OpKind::GenerationCreated { .. }
                            | OpKind::CheckpointSaved {
                                what: CheckpointWhat::Cursor | CheckpointWhat::Generation,
                                ..
                            }
                    )
            })
        };
        ops.iter()
            .filter(|o| event.is_some_and(|e| mentions(o, e)) || near(o))
            .take(limit)
            .collect()
    }
}

fn mentions(op: &Op, e: EventId) -> bool {
    match op.kind {
        OpKind::Committed { event, .. }
        | OpKind::Published { event, .. }
        | OpKind::PublishFailed { event, .. } => event == e,
        _ => false,
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Anomaly::Lost {
                event,
                aggregate,
                seq,
                committed_at,
            } => {
                write!(
                    f,
                    "Lost: event {event} (aggregate {aggregate} seq {seq}) committed at {committed_at}, never published"
                )
            }
            Anomaly::DuplicatedUnexplained {
                event,
                incarnation,
                previous_at,
                again_at,
                why,
            } => write!(
                f,
                "DuplicatedUnexplained: event {event} published at {previous_at} and again at {again_at} by incarnation {incarnation}: {why}"
            ),
            Anomaly::ReorderedWithinAggregate {
                event,
                aggregate,
                seq,
                after_seq,
                partition,
                offset,
                caused_by_writer,
            } => write!(
                f,
                "ReorderedWithinAggregate: aggregate {aggregate} seq {seq} (event {event}) at partition {partition} offset {offset}, after seq {after_seq}{}",
                if *caused_by_writer {
                    " (the writer stamped it later)"
                } else {
                    ""
                }
            ),
            Anomaly::Phantom { event } => {
                write!(f, "Phantom: event {event} published but never committed")
            }
            Anomaly::CheckpointRegressed {
                what,
                from,
                to,
                at,
                incarnation,
            } => write!(
                f,
                "CheckpointRegressed: {what:?} moved back from {from} to {to} at {at} (incarnation {incarnation})"
            ),
            Anomaly::ExpiredBeforeRead {
                event,
                committed_at,
                expired_at,
                explained_by_downtime,
            } => write!(
                f,
                "ExpiredBeforeRead: event {event} committed at {committed_at} expired at {expired_at} unread{}",
                if *explained_by_downtime {
                    " (relay was down)"
                } else {
                    " while the relay was running"
                }
            ),
        }
    }
}
