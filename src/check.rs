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
#[cfg(test)]
mod oracle;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

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
    /// Every anomaly, in the order found: as ops arrive, and for events and aggregates when they
    /// settle or at the end (at most 1,000 kept, plus the first failure if it came later).
    pub anomalies: Vec<Anomaly>,
    /// Anomalies per kind (all of them, also past the kept 1,000).
    pub anomaly_counts: BTreeMap<String, u64>,
    /// Anomalies that fail the run (all of them, also past the kept 1,000).
    pub failures: u64,
    /// How often each fault, trigger and recovery path happened.
    pub coverage: BTreeMap<String, u64>,
}

impl Analysis {
    /// Whether any anomaly fails the run.
    pub fn failed(&self) -> bool {
        self.failures > 0
    }

    /// The first failing anomaly.
    pub fn first_failure(&self) -> Option<&Anomaly> {
        self.anomalies.iter().find(|a| a.is_failure())
    }

    /// Counts `a` and keeps it among the first 1,000, or past them if it is the first failure
    /// (so [`first_failure`](Self::first_failure) always finds one when the run failed).
    fn push(&mut self, a: Anomaly) {
        *self.anomaly_counts.entry(a.kind().to_string()).or_default() += 1;
        let failure = a.is_failure();
        if self.anomalies.len() < MAX_KEPT_ANOMALIES || (failure && self.failures == 0) {
            self.anomalies.push(a);
        }
        self.failures += u64::from(failure);
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

/// Analyses a whole history (the same as feeding every op to a [`Checker`]).
pub fn analyze(ops: &[Op]) -> Analysis {
    let mut c = Checker::new();
    c.observe_all(ops);
    c.analysis()
}

/// A record for an event is expected at most this long after its rows expired (a relay that
/// read them just before expiry and then waited out a broker outage). Past it the checker
/// settles the event, forgets it, and reports any later record for it as a phantom.
pub const SETTLE_AFTER_EXPIRY: std::time::Duration = std::time::Duration::from_secs(300);

/// What the checker keeps of a committed event until it settles.
#[derive(Clone, Copy, Debug)]
struct Tracked {
    at: Timestamp,
    expires_at: Timestamp,
    /// First record: (ack time, incarnation).
    first: Option<(Timestamp, u32)>,
    /// Latest record.
    last: Option<(Timestamp, u32)>,
}

/// Records of an event not (yet) committed: the relay may read a write before the writer's
/// acknowledgement is recorded, or the event is a phantom.
#[derive(Clone, Debug)]
struct Orphan {
    first: (Timestamp, u32),
    last: (Timestamp, u32),
}

/// One event of an aggregate: what the ordering check needs, and, from its commit until it
/// settles, its tracking state. Keeping events inside their aggregate's entry makes each op one
/// lookup (both ops of an event name its aggregate).
#[derive(Clone, Copy, Debug)]
struct AggregateEvent {
    event: EventId,
    seq: u64,
    /// Write timestamp once the commit is seen.
    write_ts: Timestamp,
    /// Partition and lowest offset of its records, once published.
    first: Option<(u32, u64)>,
    /// Set from the commit until the event settles.
    tracked: Option<Tracked>,
}

/// Per aggregate: its events (an order has a handful) and how many are still tracked. Its
/// ordering is judged when the last of them settles, or at the end, over offsets rather than
/// acknowledgement order (a retried append can be acknowledged after later offsets).
#[derive(Clone, Debug, Default)]
struct AggregateState {
    /// Inline up to an order's lifecycle (three events): no second allocation, no second cache
    /// miss, on the two ops every event brings.
    events: smallvec::SmallVec<[AggregateEvent; 3]>,
    tracked: u32,
}

/// How far ahead the checker loads the state of an aggregate it looks up. A lookup is two
/// dependent cache misses (the table's slot, then the state it points to): the slot's load
/// starts two steps ahead, the state's one step ahead.
const STEP: usize = crate::prefetch::AHEAD;

/// The aggregate an op looks up in the checker's table.
fn aggregate_of(op: &Op) -> Option<&AggregateId> {
    match &op.kind {
        OpKind::Committed { aggregate, .. } | OpKind::Published { aggregate, .. } => {
            Some(aggregate)
        }
        _ => None,
    }
}

/// The streaming checker: observes a history op by op, in time order, and keeps only what a
/// later op can still change.
///
/// An event is tracked from its commit until [`SETTLE_AFTER_EXPIRY`] past its rows' expiry;
/// then it is settled (published, or reported lost/expired) and forgotten, so a run's memory
/// stays bounded by the TTL, however long the run. Events whose rows never expire are tracked
/// to the end. [`analyze`] over a whole history gives the same figures as feeding it here.
#[derive(Clone, Debug)]
pub struct Checker {
    a: Analysis,
    /// Events with tracking state (inside `aggregates`).
    tracked_events: usize,
    orphans: BTreeMap<EventId, Orphan>,
    settle: BinaryHeap<Reverse<(Timestamp, EventId, AggregateId)>>,
    /// Boxed states, so the table's slots stay small (24 bytes) and a slot and its state are
    /// two lines to prefetch.
    aggregates: crate::table::PrefetchMap<AggregateId, Box<AggregateState>>,
    last_failure: BTreeMap<u32, Timestamp>,
    up_intervals: Vec<(Timestamp, Option<Timestamp>)>,
    restarts: Vec<Timestamp>,
    catch_up: Vec<std::time::Duration>,
    loaded_cursor: BTreeMap<u32, Timestamp>,
    // Point lookups only (and a retain), so hash maps keep the analysis deterministic.
    loaded: rustc_hash::FxHashMap<(u32, CheckpointWhat), Timestamp>,
    last_save: rustc_hash::FxHashMap<(u32, CheckpointWhat), Timestamp>,
    db_outages: Vec<(Timestamp, Option<Timestamp>)>,
    end: Timestamp,
    latency: Histogram<u64>,
    delivery: Histogram<u64>,
}

impl Default for Checker {
    fn default() -> Self {
        Self::new()
    }
}

impl Checker {
    /// A checker that has seen nothing.
    pub fn new() -> Self {
        Checker {
            a: Analysis::default(),
            tracked_events: 0,
            orphans: BTreeMap::new(),
            settle: BinaryHeap::new(),
            aggregates: Default::default(),
            last_failure: BTreeMap::new(),
            up_intervals: Vec::new(),
            restarts: Vec::new(),
            catch_up: Vec::new(),
            loaded_cursor: BTreeMap::new(),
            loaded: Default::default(),
            last_save: Default::default(),
            db_outages: Vec::new(),
            end: Timestamp::MIN,
            latency: Histogram::new(3).expect("valid histogram"),
            delivery: Histogram::new(3).expect("valid histogram"),
        }
    }

    /// Events (committed or only published) the checker still holds.
    pub fn tracked(&self) -> usize {
        self.tracked_events + self.orphans.len()
    }

    /// Observes `ops` in order, exactly as [`observe`](Self::observe) one by one, with the state
    /// of the aggregate a few ops ahead fetched into the cache meanwhile.
    pub fn observe_all(&mut self, ops: &[Op]) {
        self.observe_ahead(ops, ops.len());
    }

    /// Observes the first `n` of `ops`, as [`observe_all`](Self::observe_all) does; the rest
    /// only have their aggregate's state fetched, to be observed next (the caller keeps them).
    /// A caller that shows ops in batches thus keeps the fetches going across batches.
    pub fn observe_ahead(&mut self, ops: &[Op], n: usize) {
        for (k, op) in ops[..n].iter().enumerate() {
            if let Some(aggregate) = ops.get(k + 2 * STEP).and_then(aggregate_of) {
                self.aggregates.prefetch(aggregate);
            }
            if let Some(state) = ops
                .get(k + STEP)
                .and_then(aggregate_of)
                .and_then(|a| self.aggregates.get(a))
            {
                crate::prefetch::prefetch(&**state, size_of::<AggregateState>().div_ceil(64));
            }
            self.observe(op);
        }
    }

    /// Observes the next op (ops arrive in time order).
    pub fn observe(&mut self, op: &Op) {
        self.end = self.end.max(op.at);
        self.settle_before(op.at);
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
                self.commit(op.at, *event, *aggregate, *seq, *write_ts, *expires_at);
                self.a.cover("late_write_committed", u64::from(*late));
            }
            OpKind::WriteFailed { .. } => self.a.cover("write_failed", 1),
            OpKind::Published {
                event,
                aggregate,
                seq,
                partition,
                offset,
                incarnation,
            } => self.publish(
                op.at,
                *event,
                *aggregate,
                *seq,
                *partition,
                *offset,
                *incarnation,
            ),
            OpKind::PublishFailed { incarnation, .. } => {
                self.last_failure.insert(*incarnation, op.at);
                self.a.cover("publish_failed", 1);
            }
            OpKind::RelayStarted { incarnation } => {
                if !self.up_intervals.is_empty() {
                    self.restarts.push(op.at);
                    self.catch_up.push(std::time::Duration::ZERO);
                }
                self.up_intervals.push((op.at, None));
                // Only a running incarnation saves checkpoints: forget the others' positions.
                let keep = |k: &(u32, CheckpointWhat), _: &mut Timestamp| k.0 >= *incarnation;
                self.loaded.retain(keep);
                self.last_save.retain(keep);
            }
            OpKind::RelayCrashed { .. } | OpKind::RelayExited { .. } => {
                if let Some(last) = self.up_intervals.last_mut() {
                    last.1.get_or_insert(op.at);
                }
                let name = if matches!(op.kind, OpKind::RelayCrashed { .. }) {
                    "relay_crashed"
                } else {
                    "relay_exited"
                };
                self.a.cover(name, 1);
            }
            OpKind::CheckpointLoaded {
                what,
                position: Some(p),
                incarnation,
            } => {
                if *what == CheckpointWhat::Cursor {
                    self.loaded_cursor.insert(*incarnation, *p);
                }
                self.loaded.insert((*incarnation, *what), *p);
            }
            OpKind::CheckpointLoaded { .. } => {}
            OpKind::CheckpointSaved {
                what,
                position,
                incarnation,
            } => self.checkpoint_saved(op.at, *what, *position, *incarnation),
            OpKind::GenerationCreated { .. } => self.a.cover("generation_created", 1),
            OpKind::Fault { name, on } => {
                if name == "db_outage" {
                    if *on {
                        self.db_outages.push((op.at, None));
                    } else if let Some(last) = self.db_outages.last_mut() {
                        last.1.get_or_insert(op.at);
                    }
                }
                if *on {
                    self.a.cover(name, 1);
                }
            }
        }
    }

    fn commit(
        &mut self,
        at: Timestamp,
        event: EventId,
        aggregate: AggregateId,
        seq: u64,
        write_ts: Timestamp,
        expires_at: Timestamp,
    ) {
        self.a.committed += 1;
        let mut t = Tracked {
            at,
            expires_at,
            first: None,
            last: None,
        };
        if let Some(o) = self.orphans.remove(&event) {
            // Published before the writer's acknowledgement was recorded.
            t.first = Some(o.first);
            t.last = Some(o.last);
            self.first_delivery(&t);
        }
        let agg = self.aggregates.get_or_insert_with(aggregate, Box::default);
        agg.tracked += 1;
        let e = match agg.events.iter().position(|e| e.event == event) {
            Some(i) => {
                agg.events[i].write_ts = write_ts;
                &mut agg.events[i]
            }
            None => {
                agg.events.push(AggregateEvent {
                    event,
                    seq,
                    write_ts,
                    first: None,
                    tracked: None,
                });
                agg.events.last_mut().expect("pushed")
            }
        };
        if e.tracked.replace(t).is_none() {
            self.tracked_events += 1;
        }
        if expires_at != Timestamp::MAX {
            self.settle.push(Reverse((
                expires_at + SETTLE_AFTER_EXPIRY,
                event,
                aggregate,
            )));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn publish(
        &mut self,
        at: Timestamp,
        event: EventId,
        aggregate: AggregateId,
        seq: u64,
        partition: u32,
        offset: u64,
        incarnation: u32,
    ) {
        self.a.records += 1;
        let now = (at, incarnation);
        // The event's entry in its aggregate (made here if the commit is not seen yet), with the
        // lowest offset of its records for the ordering check.
        let agg = self.aggregates.get_or_insert_with(aggregate, Box::default);
        let i = match agg.events.iter().position(|e| e.event == event) {
            Some(i) => i,
            None => {
                agg.events.push(AggregateEvent {
                    event,
                    seq,
                    write_ts: Timestamp::MIN,
                    first: None,
                    tracked: None,
                });
                agg.events.len() - 1
            }
        };
        let e = &mut agg.events[i];
        match &mut e.first {
            Some((_, o)) => *o = (*o).min(offset),
            None => e.first = Some((partition, offset)),
        }
        let (previous, delivered) = match &mut e.tracked {
            Some(t) => {
                let previous = t.last.replace(now);
                if t.first.is_none() {
                    t.first = Some(now);
                }
                (previous, Some((*t, e.write_ts)))
            }
            None => match self.orphans.get_mut(&event) {
                Some(o) => (Some(std::mem::replace(&mut o.last, now)), None),
                None => {
                    self.orphans.insert(
                        event,
                        Orphan {
                            first: now,
                            last: now,
                        },
                    );
                    (None, None)
                }
            },
        };
        match previous {
            None => {
                if let Some((t, _)) = delivered {
                    self.first_delivery(&t);
                }
            }
            Some(prev) => {
                self.a.duplicated += 1;
                self.duplicate(event, delivered.map(|(_, w)| w), prev, now);
            }
        }
    }

    /// Accounting for an event's first record, once both it and the commit are known.
    fn first_delivery(&mut self, t: &Tracked) {
        let (p, _) = t.first.expect("delivered");
        self.a.published += 1;
        let us = p.saturating_since(t.at).as_micros() as u64;
        self.delivery.record(us).expect("histogram auto-resizes");
        let same_incarnation = self
            .up_intervals
            .iter()
            .any(|(s, e)| *s <= t.at && e.is_none_or(|e| t.at < e && p <= e));
        if same_incarnation {
            self.latency.record(us).expect("histogram auto-resizes");
        }
        // Catch-up: every restart after the commit and not after the first record.
        let from = self.restarts.partition_point(|r| *r <= t.at);
        for (r, worst) in self.restarts[from..]
            .iter()
            .zip(&mut self.catch_up[from..])
            .take_while(|(r, _)| **r <= p)
        {
            *worst = (*worst).max(p.saturating_since(*r));
        }
    }

    /// Reordering: an aggregate's first records in offset order; one whose seq is below an
    /// earlier one's is reordered.
    fn judge_order(a: &mut Analysis, aggregate: AggregateId, events: &[AggregateEvent]) {
        // On the stack for an order's usual handful of events.
        let mut firsts: smallvec::SmallVec<[&AggregateEvent; 4]> =
            events.iter().filter(|e| e.first.is_some()).collect();
        firsts.sort_by_key(|e| e.first);
        let (mut max_seq, mut max_write_ts) = (0, Timestamp::MIN);
        for e in firsts {
            let (partition, offset) = e.first.expect("filtered");
            if e.seq < max_seq {
                // Equal timestamps count too: Scylla orders them by the timeuuid's random bits.
                let caused_by_writer = e.write_ts >= max_write_ts;
                if caused_by_writer {
                    a.cover("writer_timestamp_inversion", 1);
                } else {
                    a.reordered += 1;
                }
                a.push(Anomaly::ReorderedWithinAggregate {
                    event: e.event,
                    aggregate,
                    seq: e.seq,
                    after_seq: max_seq,
                    partition,
                    offset,
                    caused_by_writer,
                });
            } else {
                (max_seq, max_write_ts) = (e.seq, e.write_ts);
            }
        }
    }

    /// A record beyond an event's first; `write_ts` is the event's write timestamp while it is
    /// tracked.
    fn duplicate(
        &mut self,
        event: EventId,
        write_ts: Option<Timestamp>,
        (t0, i0): (Timestamp, u32),
        (t1, i1): (Timestamp, u32),
    ) {
        let why = if i0 != i1 {
            // A restart explains it, unless the new incarnation loaded a cursor past the row.
            match (self.loaded_cursor.get(&i1), write_ts) {
                (Some(cursor), Some(w)) if w < *cursor => Some(format!(
                    "incarnation {i1} loaded cursor {cursor}, already past the row's created_at {w}"
                )),
                _ => None,
            }
        } else {
            // A failed publish in this incarnation (of this event or of its batch) makes a relay
            // send again what it cannot prove was acknowledged.
            let failed_between = self.last_failure.get(&i1).is_some_and(|f| *f >= t0);
            (!failed_between)
                .then(|| format!("same incarnation {i1}, no crash and no publish error in between"))
        };
        if let Some(why) = why {
            self.a.duplicated_unexplained += 1;
            self.a.push(Anomaly::DuplicatedUnexplained {
                event,
                incarnation: i1,
                previous_at: t0,
                again_at: t1,
                why,
            });
        }
    }

    fn checkpoint_saved(
        &mut self,
        at: Timestamp,
        what: CheckpointWhat,
        position: Timestamp,
        incarnation: u32,
    ) {
        let key = (incarnation, what);
        if let Some(prev) = self.last_save.insert(key, position)
            && position < prev
        {
            self.a.push(Anomaly::CheckpointRegressed {
                what,
                from: prev,
                to: position,
                at,
                incarnation,
            });
        }
        if let Some(l) = self.loaded.get(&key)
            && position < *l
        {
            // Below what this incarnation itself loaded: scylla-cdc's saver writes the
            // reader's lower timestamp first (reference §2.6.3).
            let l = *l;
            self.a.cover("checkpoint_rewound_on_restart", 1);
            self.a.push(Anomaly::CheckpointRegressed {
                what,
                from: l,
                to: position,
                at,
                incarnation,
            });
        }
    }

    /// Whether the relay was down, or the cluster unreachable, at any moment of [from, to].
    fn hindered(&self, from: Timestamp, to: Timestamp) -> bool {
        let up_throughout = self
            .up_intervals
            .iter()
            .any(|(s, e)| *s <= from && e.is_none_or(|e| to < e));
        let db_down = self
            .db_outages
            .iter()
            .any(|(s, e)| *s <= to && e.is_none_or(|e| from < e));
        !up_throughout || db_down
    }

    /// The verdict on an event nobody published.
    fn unpublished(&self, id: EventId, aggregate: AggregateId, seq: u64, t: &Tracked) -> Anomaly {
        if t.expires_at <= self.end {
            Anomaly::ExpiredBeforeRead {
                event: id,
                committed_at: t.at,
                expired_at: t.expires_at,
                explained_by_downtime: self.hindered(t.expires_at - EXPIRY_GRACE, t.expires_at),
            }
        } else {
            Anomaly::Lost {
                event: id,
                aggregate,
                seq,
                committed_at: t.at,
            }
        }
    }

    fn count_unpublished(a: &mut Analysis, anomaly: Anomaly) {
        a.lost += 1;
        if matches!(anomaly, Anomaly::ExpiredBeforeRead { .. }) {
            a.cover("expired_before_read", 1);
        }
        a.push(anomaly);
    }

    /// Settles every event whose settle time is before `now`.
    fn settle_before(&mut self, now: Timestamp) {
        while let Some(Reverse((at, id, aggregate))) = self.settle.peek().copied()
            && at < now
        {
            self.settle.pop();
            let Some(m) = self.aggregates.get_mut(&aggregate) else {
                continue;
            };
            let Some((t, seq)) = m
                .events
                .iter_mut()
                .find(|e| e.event == id)
                .and_then(|e| Some((e.tracked.take()?, e.seq)))
            else {
                continue;
            };
            m.tracked -= 1;
            let settled = m.tracked == 0;
            self.tracked_events -= 1;
            if t.first.is_none() {
                let anomaly = self.unpublished(id, aggregate, seq, &t);
                Self::count_unpublished(&mut self.a, anomaly);
            }
            if settled && let Some(m) = self.aggregates.remove(&aggregate) {
                Self::judge_order(&mut self.a, aggregate, &m.events);
            }
        }
    }

    /// The analysis of everything observed so far, as if the history ended at the last op.
    pub fn analysis(&self) -> Analysis {
        let mut a = self.a.clone();
        // The first generation exists before the run; only later ones are faults.
        if let Some(n) = a.coverage.get_mut("generation_created") {
            *n -= 1;
            if *n == 0 {
                a.coverage.remove("generation_created");
            }
        }
        let mut left: Vec<(AggregateId, &AggregateEvent, &Tracked)> = self
            .aggregates
            .iter()
            .flat_map(|(id, m)| m.events.iter().map(move |e| (*id, e)))
            .filter_map(|(id, e)| Some((id, e, e.tracked.as_ref()?)))
            .filter(|(_, _, t)| t.first.is_none())
            .collect();
        // Ids compare as bytes, big-endian: the same order as their `u128`s, which compare in
        // two instructions instead of sixteen.
        left.sort_unstable_by_key(|(_, e, _)| e.event.0.as_u128());
        for (aggregate, e, t) in left {
            Self::count_unpublished(&mut a, self.unpublished(e.event, aggregate, e.seq, t));
        }
        let mut aggregates: Vec<(&AggregateId, &Box<AggregateState>)> =
            self.aggregates.iter().collect();
        aggregates.sort_unstable_by_key(|(id, _)| id.0.as_u128());
        // In id order the states are at random places: load each a few aggregates ahead.
        for (k, (id, m)) in aggregates.iter().enumerate() {
            if let Some((_, ahead)) = aggregates.get(k + STEP) {
                crate::prefetch::prefetch(&***ahead, size_of::<AggregateState>().div_ceil(64));
            }
            Self::judge_order(&mut a, **id, &m.events);
        }
        for id in self.orphans.keys() {
            a.phantom += 1;
            a.push(Anomaly::Phantom { event: *id });
        }
        a.latency_samples = self.latency.len();
        if !self.latency.is_empty() {
            let ms = |us: u64| us as f64 / 1_000.0;
            a.latency_ms = LatencyMs {
                p50: ms(self.latency.value_at_quantile(0.50)),
                p99: ms(self.latency.value_at_quantile(0.99)),
                max: ms(self.latency.max()),
            };
        }
        a.restarts = self.restarts.len() as u32;
        a.catch_up_ms = self
            .catch_up
            .iter()
            .map(|d| d.as_micros() as f64 / 1_000.0)
            .collect();
        a
    }

    /// The CDF of every delivered event's latency (first record − commit, whichever incarnation):
    /// 200 points of (latency ms, fraction ≤ it).
    pub fn delivery_cdf(&self) -> Vec<(f64, f64)> {
        if self.delivery.is_empty() {
            return Vec::new();
        }
        (1..=200)
            .map(|i| {
                let q = i as f64 / 200.0;
                (self.delivery.value_at_quantile(q) as f64 / 1_000.0, q)
            })
            .collect()
    }
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
            // In the order found: as the ops arrive, then the end-of-run verdicts (unpublished
            // events, each aggregate's order, phantoms).
            vec![
                "DuplicatedUnexplained",
                "CheckpointRegressed",
                "Lost",
                "ReorderedWithinAggregate",
                "Phantom",
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

    /// The streaming checker, fed op by op as the world runs (and forgetting settled events),
    /// finds what the whole-history oracle finds in the kept history, on swarm worlds with
    /// crashes, outages, lost acknowledgements, expiries, reorders and phantom-free duplicates;
    /// and a run that keeps no ops has the same digest and report.
    #[test]
    fn the_streaming_checker_agrees_with_the_whole_history_oracle() {
        use crate::hunt::{RelaySpec, hunt_scenario, swarm_scenario};
        use crate::seed::Seed;
        let base = hunt_scenario();
        let mut failing = 0;
        for (spec, seed) in [
            ("poll-naive", 0),
            ("poll-safe", 1),
            ("stream-default", 0),
            ("stream-safe", 2),
            ("stream-tuned", 1),
            ("mutant:concurrent-publish", 1),
            ("mutant:checkpoint-before-ack", 1),
            ("mutant:swallowed-publish-error", 3),
        ] {
            let sc = swarm_scenario(&base, Seed(seed));
            let relay = RelaySpec::parse(spec).expect("a known relay");
            let (report, sim) =
                crate::scenario::run_world(&sc, relay.relay(&sc), Seed(seed)).expect("runs");
            let oracle = oracle::analyze(&sim.history().ops());
            let mut streamed = report.analysis.clone();
            assert_eq!(
                streamed.anomaly_counts, oracle.anomaly_counts,
                "{spec} {seed}"
            );
            if oracle.anomalies.len() < MAX_KEPT_ANOMALIES {
                let sorted = |a: &Analysis| {
                    let mut v: Vec<String> = a.anomalies.iter().map(|x| format!("{x:?}")).collect();
                    v.sort();
                    v
                };
                assert_eq!(sorted(&streamed), sorted(&oracle), "{spec} {seed}");
            }
            streamed.anomalies = oracle.anomalies.clone();
            assert_eq!(streamed, oracle, "{spec} {seed}");
            failing += u32::from(oracle.failed());

            let streaming = crate::scenario::run(&sc, relay.relay(&sc), Seed(seed)).expect("runs");
            assert_eq!(streaming.digest, report.digest, "{spec} {seed}");
            assert_eq!(streaming.analysis, report.analysis, "{spec} {seed}");
        }
        assert!(failing >= 3, "the sample includes failing runs ({failing})");
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
