//! The checker: reads a run's [`History`](crate::history::History) and reports anomalies,
//! coverage, and how fast and how costly delivery was.
//!
//! Definitions (all over the history, nothing else):
//! - **lost**: committed, never published by the end of the run (drain included); split into
//!   [`Anomaly::Lost`] and [`Anomaly::ExpiredBeforeRead`] (its rows expired first — explained if
//!   the relay was down at that moment);
//! - **duplicated**: acknowledged records beyond the first per event; a duplicate is *explained*
//!   if the relay restarted in between (a new incarnation) or the same incarnation saw a publish
//!   error in between (a relay re-sends what it cannot prove acknowledged), unless the new
//!   incarnation loaded a polling cursor already past it;
//! - **reordered**: an event whose first record sits, in its partition's offset order, after the
//!   first record of a later `seq` of the same aggregate;
//! - **phantom**: published, never committed;
//! - **checkpoint regressed**: a save of the same checkpoint row below an earlier save by the same
//!   incarnation (scylla-cdc's rewind to the lower timestamp on restart is a new incarnation's
//!   first save and is counted in coverage as `checkpoint_rewound_on_restart`, not as an anomaly);
//! - **latency**: first publish − commit, over events committed while a relay incarnation was up
//!   and published by that same incarnation (what a crash delays is the catch-up's business);
//! - **catch-up**: for each restart, the time until every event committed before it and still
//!   unpublished was published (0 if none was pending);
//! - **coverage** ("sometimes"): how often each fault and trigger actually happened.
//!
//! The checker assumes the history is in time order (the history asserts it) and that all records
//! of one aggregate share a partition (the keyed partitioner guarantees it).

mod anomaly;

use std::collections::{BTreeMap, BTreeSet};

use hdrhistogram::Histogram;
use serde::Serialize;

pub use anomaly::Anomaly;

use crate::history::{CheckpointWhat, Op, OpKind};
use crate::model::{AggregateId, EventId, Timestamp};

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencyMs {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Worst.
    pub max: f64,
}

/// What the checker found.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Analysis {
    /// Events committed.
    pub committed: u64,
    /// Distinct committed events published.
    pub published: u64,
    /// Records acknowledged (with duplicates).
    pub records: u64,
    /// Committed, never published (lost + expired).
    pub lost: u64,
    /// Records beyond the first per event.
    pub duplicated: u64,
    /// Duplicates no crash or publish error explains.
    pub duplicated_unexplained: u64,
    /// Events first-published after a later event of their aggregate, with timestamps in seq
    /// order (the relay's doing; writer-caused inversions are in coverage).
    pub reordered: u64,
    /// Published, never committed.
    pub phantom: u64,
    /// Latency over events committed and delivered by one incarnation.
    pub latency_ms: LatencyMs,
    /// Events in the latency population.
    pub latency_samples: u64,
    /// Catch-up time per restart, ms.
    pub catch_up_ms: Vec<f64>,
    /// Relay restarts (crash or exit followed by a start).
    pub restarts: u32,
    /// Every anomaly, in the order found (at most 1,000 kept).
    pub anomalies: Vec<Anomaly>,
    /// Anomalies per kind (all of them, also past the kept 1,000).
    pub anomaly_counts: BTreeMap<String, u64>,
    /// How often each fault, trigger and recovery path happened.
    pub coverage: BTreeMap<String, u64>,
}

impl Analysis {
    /// Whether any anomaly fails the run.
    pub fn failed(&self) -> bool {
        self.anomalies.iter().any(Anomaly::is_failure)
    }

    /// The first failing anomaly.
    pub fn first_failure(&self) -> Option<&Anomaly> {
        self.anomalies.iter().find(|a| a.is_failure())
    }

    fn push(&mut self, a: Anomaly) {
        *self.anomaly_counts.entry(a.kind().to_string()).or_default() += 1;
        if self.anomalies.len() < MAX_KEPT_ANOMALIES {
            self.anomalies.push(a);
        }
    }

    fn cover(&mut self, what: &str, n: u64) {
        if n > 0 {
            *self.coverage.entry(what.to_string()).or_default() += n;
        }
    }
}

const MAX_KEPT_ANOMALIES: usize = 1_000;

/// A row that expires unread counts against the relay only if the relay was up, and the cluster
/// reachable, for this long before the row expired (time to catch up after a restart).
pub const EXPIRY_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

struct Commit {
    at: Timestamp,
    aggregate: AggregateId,
    seq: u64,
    write_ts: Timestamp,
    expires_at: Timestamp,
}

/// Per event: every publish as (time, incarnation).
type Publishes = BTreeMap<EventId, Vec<(Timestamp, u32)>>;

/// Every event's delivery latency (first publish − commit) in µs, in commit order; events never
/// published are left out.
pub fn delivery_latencies_us(ops: &[Op]) -> Vec<u64> {
    let mut committed: BTreeMap<EventId, Timestamp> = BTreeMap::new();
    let mut order: Vec<EventId> = Vec::new();
    let mut first: BTreeMap<EventId, Timestamp> = BTreeMap::new();
    for op in ops {
        match &op.kind {
            OpKind::Committed { event, .. } => {
                committed.insert(*event, op.at);
                order.push(*event);
            }
            OpKind::Published { event, .. } => {
                first.entry(*event).or_insert(op.at);
            }
            _ => {}
        }
    }
    order
        .iter()
        .filter_map(|e| Some(first.get(e)?.saturating_since(committed[e]).as_micros() as u64))
        .collect()
}

/// The latency CDF of delivery latencies in µs: 200 points of (latency ms, fraction ≤ it).
pub fn latency_cdf(mut latencies_us: Vec<u64>) -> Vec<(f64, f64)> {
    latencies_us.sort_unstable();
    (1..=200)
        .filter_map(|i| {
            let q = i as f64 / 200.0;
            let idx = ((latencies_us.len() as f64 * q).ceil() as usize).checked_sub(1)?;
            Some((latencies_us[idx] as f64 / 1_000.0, q))
        })
        .collect()
}

/// Analyses a history.
pub fn analyze(ops: &[Op]) -> Analysis {
    let mut a = Analysis::default();
    let mut commits: BTreeMap<EventId, Commit> = BTreeMap::new();
    let mut publishes: Publishes = BTreeMap::new();
    let mut failure_times: BTreeMap<u32, BTreeSet<Timestamp>> = BTreeMap::new();
    let mut topic: BTreeMap<u32, BTreeMap<u64, (EventId, AggregateId, u64)>> = BTreeMap::new();
    let mut up_intervals: Vec<(Timestamp, Option<Timestamp>)> = Vec::new();
    let mut restarts: Vec<Timestamp> = Vec::new();
    let mut loaded_cursor: BTreeMap<u32, Timestamp> = BTreeMap::new();
    let mut loaded: BTreeMap<(u32, CheckpointWhat), Timestamp> = BTreeMap::new();
    let mut last_save: BTreeMap<(u32, CheckpointWhat), Timestamp> = BTreeMap::new();
    let mut end = Timestamp::MIN;
    let mut db_outages: Vec<(Timestamp, Option<Timestamp>)> = Vec::new();

    for op in ops {
        end = end.max(op.at);
        match &op.kind {
            OpKind::Committed {
                event,
                aggregate,
                seq,
                write_ts,
                expires_at,
                late,
                ..
            } => {
                commits.insert(
                    *event,
                    Commit {
                        at: op.at,
                        aggregate: *aggregate,
                        seq: *seq,
                        write_ts: *write_ts,
                        expires_at: *expires_at,
                    },
                );
                a.cover("late_write_committed", u64::from(*late));
            }
            OpKind::WriteFailed { .. } => a.cover("write_failed", 1),
            OpKind::Published {
                event,
                aggregate,
                seq,
                partition,
                offset,
                incarnation,
            } => {
                a.records += 1;
                publishes
                    .entry(*event)
                    .or_default()
                    .push((op.at, *incarnation));
                topic
                    .entry(*partition)
                    .or_default()
                    .insert(*offset, (*event, *aggregate, *seq));
            }
            OpKind::PublishFailed { incarnation, .. } => {
                failure_times.entry(*incarnation).or_default().insert(op.at);
                a.cover("publish_failed", 1);
            }
            OpKind::RelayStarted { .. } => {
                if !up_intervals.is_empty() {
                    restarts.push(op.at);
                }
                up_intervals.push((op.at, None));
            }
            OpKind::RelayCrashed { .. } | OpKind::RelayExited { .. } => {
                if let Some(last) = up_intervals.last_mut() {
                    last.1.get_or_insert(op.at);
                }
                let name = if matches!(op.kind, OpKind::RelayCrashed { .. }) {
                    "relay_crashed"
                } else {
                    "relay_exited"
                };
                a.cover(name, 1);
            }
            OpKind::CheckpointLoaded {
                what,
                position: Some(p),
                incarnation,
            } => {
                if *what == CheckpointWhat::Cursor {
                    loaded_cursor.insert(*incarnation, *p);
                }
                loaded.insert((*incarnation, *what), *p);
            }
            OpKind::CheckpointLoaded { .. } => {}
            OpKind::CheckpointSaved {
                what,
                position,
                incarnation,
            } => {
                let key = (*incarnation, *what);
                if let Some(prev) = last_save.get(&key)
                    && position < prev
                {
                    a.push(Anomaly::CheckpointRegressed {
                        what: *what,
                        from: *prev,
                        to: *position,
                        at: op.at,
                        incarnation: *incarnation,
                    });
                }
                if let Some(l) = loaded.get(&key)
                    && position < l
                {
                    // Below what this incarnation itself loaded: scylla-cdc's saver writes the
                    // reader's lower timestamp first (reference §2.6.3).
                    a.cover("checkpoint_rewound_on_restart", 1);
                    a.push(Anomaly::CheckpointRegressed {
                        what: *what,
                        from: *l,
                        to: *position,
                        at: op.at,
                        incarnation: *incarnation,
                    });
                }
                last_save.insert(key, *position);
            }
            OpKind::GenerationCreated { .. } => a.cover("generation_created", 1),
            OpKind::Fault { name, on } => {
                if name == "db_outage" {
                    if *on {
                        db_outages.push((op.at, None));
                    } else if let Some(last) = db_outages.last_mut() {
                        last.1.get_or_insert(op.at);
                    }
                }
                if *on {
                    a.cover(name, 1);
                }
            }
        }
    }
    // The first generation exists before the run; only later ones are faults.
    if let Some(n) = a.coverage.get_mut("generation_created") {
        *n -= 1;
        if *n == 0 {
            a.coverage.remove("generation_created");
        }
    }

    a.committed = commits.len() as u64;
    // Whether the relay was down, or the cluster unreachable, at any moment of [from, to].
    let hindered = |from: Timestamp, to: Timestamp| {
        let up_throughout = up_intervals
            .iter()
            .any(|(s, e)| *s <= from && e.is_none_or(|e| to < e));
        let db_down = db_outages
            .iter()
            .any(|(s, e)| *s <= to && e.is_none_or(|e| from < e));
        !up_throughout || db_down
    };
    for (id, ps) in &publishes {
        if commits.contains_key(id) {
            a.published += 1;
        } else {
            a.phantom += 1;
            a.push(Anomaly::Phantom { event: *id });
        }
        a.duplicated += ps.len() as u64 - 1;
        for pair in ps.windows(2) {
            let ((t0, i0), (t1, i1)) = (pair[0], pair[1]);
            let why = if i0 != i1 {
                // A restart explains it, unless the new incarnation loaded a cursor past the row.
                match (loaded_cursor.get(&i1), commits.get(id)) {
                    (Some(cursor), Some(c)) if c.write_ts < *cursor => Some(format!(
                        "incarnation {i1} loaded cursor {cursor}, already past the row's created_at {}",
                        c.write_ts
                    )),
                    _ => None,
                }
            } else {
                // A failed publish in this incarnation (of this event or of its batch) makes a
                // relay send again what it cannot prove was acknowledged.
                let failed_between = failure_times
                    .get(&i1)
                    .is_some_and(|ts| ts.range(t0..=t1).next().is_some());
                (!failed_between).then(|| {
                    format!("same incarnation {i1}, no crash and no publish error in between")
                })
            };
            if let Some(why) = why {
                a.duplicated_unexplained += 1;
                a.push(Anomaly::DuplicatedUnexplained {
                    event: *id,
                    incarnation: i1,
                    previous_at: t0,
                    again_at: t1,
                    why,
                });
            }
        }
    }
    for (id, c) in &commits {
        if publishes.contains_key(id) {
            continue;
        }
        a.lost += 1;
        if c.expires_at <= end {
            let explained = hindered(c.expires_at - EXPIRY_GRACE, c.expires_at);
            a.cover("expired_before_read", 1);
            a.push(Anomaly::ExpiredBeforeRead {
                event: *id,
                committed_at: c.at,
                expired_at: c.expires_at,
                explained_by_downtime: explained,
            });
        } else {
            a.push(Anomaly::Lost {
                event: *id,
                aggregate: c.aggregate,
                seq: c.seq,
                committed_at: c.at,
            });
        }
    }

    // Reordering: first occurrences in offset order, per aggregate.
    let mut seen: BTreeSet<EventId> = BTreeSet::new();
    let mut max_seq: BTreeMap<AggregateId, (u64, Timestamp)> = BTreeMap::new();
    for (partition, part) in &topic {
        for (offset, (event, aggregate, seq)) in part {
            if !seen.insert(*event) {
                continue;
            }
            let write_ts = commits.get(event).map_or(Timestamp::MIN, |c| c.write_ts);
            let m = max_seq.entry(*aggregate).or_insert((0, Timestamp::MIN));
            if *seq < m.0 {
                // Equal timestamps count too: Scylla orders them by the timeuuid's random bits.
                let caused_by_writer = write_ts >= m.1;
                if caused_by_writer {
                    a.cover("writer_timestamp_inversion", 1);
                } else {
                    a.reordered += 1;
                }
                a.push(Anomaly::ReorderedWithinAggregate {
                    event: *event,
                    aggregate: *aggregate,
                    seq: *seq,
                    after_seq: m.0,
                    partition: *partition,
                    offset: *offset,
                    caused_by_writer,
                });
            } else {
                *m = (*seq, write_ts);
            }
        }
    }

    // Latency over events committed and delivered by the same incarnation.
    let same_incarnation = |commit: Timestamp, publish: Timestamp| {
        up_intervals
            .iter()
            .any(|(s, e)| *s <= commit && e.is_none_or(|e| commit < e && publish <= e))
    };
    let mut hist = Histogram::<u64>::new(3).expect("valid histogram");
    for (id, c) in &commits {
        if let Some(ps) = publishes.get(id)
            && same_incarnation(c.at, ps[0].0)
        {
            hist.record(ps[0].0.saturating_since(c.at).as_micros() as u64)
                .expect("histogram auto-resizes");
        }
    }
    a.latency_samples = hist.len();
    if !hist.is_empty() {
        let ms = |us: u64| us as f64 / 1_000.0;
        a.latency_ms = LatencyMs {
            p50: ms(hist.value_at_quantile(0.50)),
            p99: ms(hist.value_at_quantile(0.99)),
            max: ms(hist.max()),
        };
    }

    // Catch-up per restart.
    a.restarts = restarts.len() as u32;
    for r in restarts {
        let worst = commits
            .iter()
            .filter(|(_, c)| c.at < r)
            .filter_map(|(id, _)| publishes.get(id).map(|ps| ps[0].0))
            .filter(|p| *p >= r)
            .map(|p| p.saturating_since(r))
            .max()
            .unwrap_or_default();
        a.catch_up_ms.push(worst.as_micros() as f64 / 1_000.0);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::History;
    use uuid::Uuid;

    fn id(n: u8) -> EventId {
        EventId(Uuid::from_bytes([n; 16]))
    }
    fn agg(n: u8) -> AggregateId {
        AggregateId(Uuid::from_bytes([n; 16]))
    }
    fn commit(h: &History, at: i64, e: u8, a: u8, seq: u64) {
        h.record(
            Timestamp(at),
            OpKind::Committed {
                event: id(e),
                aggregate: agg(a),
                seq,
                write_ts: Timestamp(at),
                visible_at: Timestamp(at),
                expires_at: Timestamp::MAX,
                late: false,
            },
        );
    }
    fn publish(h: &History, at: i64, e: u8, a: u8, seq: u64, offset: u64, incarnation: u32) {
        h.record(
            Timestamp(at),
            OpKind::Published {
                event: id(e),
                aggregate: agg(a),
                seq,
                partition: 0,
                offset,
                incarnation,
            },
        );
    }

    #[test]
    fn each_anomaly_is_found_and_explained_duplicates_are_not() {
        let h = History::new();
        h.record(Timestamp(0), OpKind::RelayStarted { incarnation: 1 });
        commit(&h, 1, 1, 1, 1);
        commit(&h, 2, 2, 1, 2);
        commit(&h, 3, 3, 2, 1); // lost
        publish(&h, 4, 2, 1, 2, 0, 1); // seq 2 before seq 1: reordered
        publish(&h, 5, 1, 1, 1, 1, 1);
        publish(&h, 6, 1, 1, 1, 2, 1); // same incarnation, no error: unexplained
        h.record(Timestamp(7), OpKind::RelayCrashed { incarnation: 1 });
        h.record(Timestamp(8), OpKind::RelayStarted { incarnation: 2 });
        publish(&h, 9, 2, 1, 2, 3, 2); // after a restart: explained
        publish(&h, 10, 9, 9, 1, 4, 2); // never committed: phantom
        let what = CheckpointWhat::Generation;
        h.record(
            Timestamp(11),
            OpKind::CheckpointSaved {
                what,
                position: Timestamp(50),
                incarnation: 2,
            },
        );
        h.record(
            Timestamp(12),
            OpKind::CheckpointSaved {
                what,
                position: Timestamp(40),
                incarnation: 2,
            },
        );
        let a = analyze(&h.ops());
        let kinds: Vec<&str> = a.anomalies.iter().map(Anomaly::kind).collect();
        assert_eq!(
            kinds,
            vec![
                "CheckpointRegressed",
                "DuplicatedUnexplained",
                "Phantom",
                "Lost",
                "ReorderedWithinAggregate"
            ]
        );
        assert_eq!(
            (
                a.committed,
                a.published,
                a.lost,
                a.duplicated,
                a.duplicated_unexplained
            ),
            (3, 2, 1, 2, 1)
        );
        assert_eq!((a.reordered, a.phantom, a.restarts), (1, 1, 1));
        assert_eq!(a.coverage.get("relay_crashed"), Some(&1));
        assert!(a.failed());
    }

    #[test]
    fn expiry_during_downtime_is_explained_and_does_not_fail() {
        let h = History::new();
        h.record(Timestamp(0), OpKind::RelayStarted { incarnation: 1 });
        h.record(
            Timestamp(1),
            OpKind::Committed {
                event: id(1),
                aggregate: agg(1),
                seq: 1,
                write_ts: Timestamp(1),
                visible_at: Timestamp(1),
                expires_at: Timestamp(50),
                late: false,
            },
        );
        h.record(Timestamp(2), OpKind::RelayCrashed { incarnation: 1 });
        h.record(Timestamp(100), OpKind::RelayStarted { incarnation: 2 });
        let a = analyze(&h.ops());
        assert_eq!(a.lost, 1);
        assert!(matches!(
            a.anomalies[0],
            Anomaly::ExpiredBeforeRead {
                explained_by_downtime: true,
                ..
            }
        ));
        assert!(!a.failed());
    }

    #[test]
    fn a_publish_error_explains_a_retry_in_the_same_incarnation() {
        let h = History::new();
        h.record(Timestamp(0), OpKind::RelayStarted { incarnation: 1 });
        commit(&h, 1, 1, 1, 1);
        publish(&h, 2, 1, 1, 1, 0, 1);
        h.record(
            Timestamp(3),
            OpKind::PublishFailed {
                event: id(1),
                incarnation: 1,
                transient: true,
            },
        );
        publish(&h, 4, 1, 1, 1, 1, 1);
        let a = analyze(&h.ops());
        assert_eq!((a.duplicated, a.duplicated_unexplained), (1, 0));
        assert!(!a.failed());
    }
}
