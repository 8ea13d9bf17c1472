//! The checker: reads a run's [`History`](crate::history::History) and counts what went wrong
//! and how fast things went.
//!
//! Definitions (all over the history, nothing else):
//! - **lost**: committed, never published by the end of the run (drain included);
//! - **duplicated**: acknowledged records beyond the first per event;
//! - **reordered**: an event whose first record sits, in its partition's offset order, after the
//!   first record of a later `seq` of the same aggregate;
//! - **phantom**: published, never committed;
//! - **latency**: first publish − commit, over events committed while a relay incarnation was up
//!   and published by that same incarnation (what a crash delays is the catch-up's business);
//! - **catch-up**: for each restart, the time until every event committed before it and still
//!   unpublished was published (0 if none was pending).
//!
//! The checker assumes the history is in time order (the history asserts it) and that all records
//! of one aggregate share a partition (the keyed partitioner guarantees it).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::history::{Op, OpKind};
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
    /// Distinct events published.
    pub published: u64,
    /// Records acknowledged (with duplicates).
    pub records: u64,
    /// Committed, never published.
    pub lost: u64,
    /// Records beyond the first per event.
    pub duplicated: u64,
    /// Events first-published after a later event of their aggregate.
    pub reordered: u64,
    /// Published, never committed.
    pub phantom: u64,
    /// Latency over events committed while the relay was up.
    pub latency_ms: LatencyMs,
    /// Events in the latency population.
    pub latency_samples: u64,
    /// Catch-up time per restart, ms.
    pub catch_up_ms: Vec<f64>,
    /// Relay restarts (crash or exit followed by a start).
    pub restarts: u32,
    /// Ids of lost events (first 20), for reports.
    pub lost_sample: Vec<EventId>,
    /// Ids of reordered events (first 20), for reports.
    pub reordered_sample: Vec<EventId>,
}

/// Analyses a history.
pub fn analyze(ops: &[Op]) -> Analysis {
    let mut a = Analysis::default();
    let mut commits: BTreeMap<EventId, Timestamp> = BTreeMap::new();
    let mut first_publish: BTreeMap<EventId, Timestamp> = BTreeMap::new();
    // partition → offset → (event, aggregate, seq)
    let mut topic: BTreeMap<u32, BTreeMap<u64, (EventId, AggregateId, u64)>> = BTreeMap::new();
    let mut up_intervals: Vec<(Timestamp, Option<Timestamp>)> = Vec::new();
    let mut restarts: Vec<Timestamp> = Vec::new();
    let mut ever_started = false;

    for op in ops {
        match &op.kind {
            OpKind::Committed { event, .. } => {
                commits.insert(*event, op.at);
            }
            OpKind::Published {
                event,
                aggregate,
                seq,
                partition,
                offset,
                ..
            } => {
                a.records += 1;
                first_publish.entry(*event).or_insert(op.at);
                topic
                    .entry(*partition)
                    .or_default()
                    .insert(*offset, (*event, *aggregate, *seq));
            }
            OpKind::RelayStarted { .. } => {
                if ever_started {
                    restarts.push(op.at);
                }
                ever_started = true;
                up_intervals.push((op.at, None));
            }
            OpKind::RelayCrashed { .. } | OpKind::RelayExited { .. } => {
                if let Some(last) = up_intervals.last_mut() {
                    last.1.get_or_insert(op.at);
                }
            }
            _ => {}
        }
    }

    a.committed = commits.len() as u64;
    a.published = first_publish
        .keys()
        .filter(|e| commits.contains_key(e))
        .count() as u64;
    a.phantom = first_publish
        .keys()
        .filter(|e| !commits.contains_key(e))
        .count() as u64;
    a.duplicated = a.records - first_publish.len() as u64;
    for (id, _) in commits
        .iter()
        .filter(|(id, _)| !first_publish.contains_key(id))
    {
        a.lost += 1;
        if a.lost_sample.len() < 20 {
            a.lost_sample.push(*id);
        }
    }

    // Reordering: first occurrences in offset order, per aggregate.
    let mut seen: BTreeMap<EventId, ()> = BTreeMap::new();
    let mut max_seq: BTreeMap<AggregateId, u64> = BTreeMap::new();
    for part in topic.values() {
        for (event, aggregate, seq) in part.values() {
            if seen.insert(*event, ()).is_some() {
                continue;
            }
            let m = max_seq.entry(*aggregate).or_insert(0);
            if *seq < *m {
                a.reordered += 1;
                if a.reordered_sample.len() < 20 {
                    a.reordered_sample.push(*event);
                }
            } else {
                *m = *seq;
            }
        }
    }

    // Latency over events committed while an incarnation was up.
    let same_incarnation = |commit: Timestamp, publish: Timestamp| {
        up_intervals
            .iter()
            .any(|(s, e)| *s <= commit && e.is_none_or(|e| commit < e && publish <= e))
    };
    let mut hist = Histogram::<u64>::new(3).expect("valid histogram");
    for (id, at) in &commits {
        if let Some(p) = first_publish.get(id)
            && same_incarnation(*at, *p)
        {
            hist.record(p.saturating_since(*at).as_micros() as u64)
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
            .filter(|(_, at)| **at < r)
            .filter_map(|(id, _)| first_publish.get(id))
            .filter(|p| **p >= r)
            .map(|p| p.saturating_since(r))
            .max()
            .unwrap_or_default();
        a.catch_up_ms.push(worst.as_micros() as f64 / 1_000.0);
    }
    a
}
