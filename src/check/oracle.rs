//! The whole-history checker, kept as the oracle the streaming checker is tested against.

use std::collections::{BTreeMap, BTreeSet};

use hdrhistogram::Histogram;

use super::{Analysis, Anomaly, EXPIRY_GRACE, LatencyMs};
use crate::history::{CheckpointWhat, Op, OpKind};
use crate::model::{AggregateId, EventId, Timestamp};

struct Commit {
    at: Timestamp,
    aggregate: AggregateId,
    seq: u64,
    write_ts: Timestamp,
    expires_at: Timestamp,
}

/// Per event: every publish as (time, incarnation).
type Publishes = BTreeMap<EventId, Vec<(Timestamp, u32)>>;

/// The whole-history checker the streaming [`Checker`](super::Checker) replaced, kept as its
/// test oracle.
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
