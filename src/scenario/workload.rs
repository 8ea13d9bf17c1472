//! The order workload: Poisson order arrivals at a steady rate plus bursts, each order walking its
//! lifecycle with random pauses between steps.
//!
//! The driver keeps an agenda of due lifecycle steps and up to `max_in_flight` batches in flight;
//! an order's next step is scheduled only after its previous batch was acknowledged, so an
//! aggregate never has two writes in flight. New orders stop at the end of the write phase;
//! lifecycles already started finish if their steps fall before it.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use futures::future::{Either, select};
use futures::stream::FuturesUnordered;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::model::{AggregateId, EventType, Timestamp};
use crate::ports::{Clock, LocalFuture, SleepFuture};
use crate::seed::{SimRng, exponential_duration, uniform_duration};
use crate::sim::clock::Parked;
use crate::writer::{OrderWriter, SettledStep, SettledWrite, WriteFailure};

/// A period of extra order arrivals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Burst {
    /// Start, seconds after the run starts.
    pub at_s: f64,
    /// Length in seconds.
    pub duration_s: f64,
    /// Arrival rate during the burst (replaces the steady rate).
    pub orders_per_s: f64,
}

/// The `[workload]` table of a scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkloadConfig {
    /// Steady order arrival rate.
    pub orders_per_s: f64,
    /// Bursts.
    pub bursts: Vec<Burst>,
    /// Shortest pause between two lifecycle steps of an order.
    pub step_delay_min_ms: i64,
    /// Longest pause between two lifecycle steps of an order.
    pub step_delay_max_ms: i64,
    /// Probability that a non-terminal order is cancelled at its next step.
    pub cancel_probability: f64,
    /// Batches in flight at once.
    pub max_in_flight: usize,
}

/// Default steady rate.
pub const DEFAULT_ORDERS_PER_S: f64 = 20.0;
/// Default shortest pause between lifecycle steps.
pub const DEFAULT_STEP_DELAY_MIN_MS: i64 = 200;
/// Default longest pause between lifecycle steps.
pub const DEFAULT_STEP_DELAY_MAX_MS: i64 = 20_000;
/// Default cancel probability per step.
pub const DEFAULT_CANCEL_PROBABILITY: f64 = 0.1;
/// Default batches in flight.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            orders_per_s: DEFAULT_ORDERS_PER_S,
            bursts: Vec::new(),
            step_delay_min_ms: DEFAULT_STEP_DELAY_MIN_MS,
            step_delay_max_ms: DEFAULT_STEP_DELAY_MAX_MS,
            cancel_probability: DEFAULT_CANCEL_PROBABILITY,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

impl WorkloadConfig {
    /// Arrival rate at `offset` into the run.
    pub fn rate_at(&self, offset: Duration) -> f64 {
        let s = offset.as_secs_f64();
        self.bursts
            .iter()
            .filter(|b| s >= b.at_s && s < b.at_s + b.duration_s)
            .map(|b| b.orders_per_s)
            .fold(self.orders_per_s, f64::max)
    }
}

/// What a workload run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkloadSummary {
    /// Orders started.
    pub orders: u64,
    /// Events committed.
    pub committed: u64,
    /// Events that failed.
    pub failed: u64,
}

fn next_step(last: EventType, rng: &mut SimRng, cancel: f64) -> Option<EventType> {
    let cancelled = rng.random_bool(cancel.clamp(0.0, 1.0));
    match last {
        EventType::OrderCreated if cancelled => Some(EventType::OrderCancelled),
        EventType::OrderCreated => Some(EventType::OrderPaid),
        EventType::OrderPaid if cancelled => Some(EventType::OrderCancelled),
        EventType::OrderPaid => Some(EventType::OrderShipped),
        EventType::OrderShipped | EventType::OrderCancelled => None,
    }
}

/// A write's outcome as the driver sees it: the order, the event type, success or failure.
type Completion = (AggregateId, EventType, Result<(), WriteFailure>);

/// The driver's writes in flight.
trait InFlight {
    fn len(&self) -> usize;
    fn push(&mut self, order: AggregateId, event_type: EventType);
    /// The next finished write, in the order a `FuturesUnordered` of `OrderWriter::write`
    /// futures would yield it.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Completion>>;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes as futures, for a store that answers asynchronously.
struct WriteFutures {
    writer: Rc<OrderWriter>,
    set: FuturesUnordered<LocalFuture<'static, Completion>>,
}

impl InFlight for WriteFutures {
    fn len(&self) -> usize {
        self.set.len()
    }

    fn push(&mut self, order: AggregateId, event_type: EventType) {
        let w = self.writer.clone();
        self.set.push(Box::pin(async move {
            let r = w.write(order, event_type).await.map(|_| ());
            (order, event_type, r)
        }));
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Completion>> {
        self.set.poll_next_unpin(cx)
    }
}

/// Writes on a store that settles them on arrival, kept as plain values: no future, task or
/// allocation per write, and one timer per distinct wake-up time.
///
/// It does what a `FuturesUnordered` of write futures does, in the same order: writes whose
/// wait ended are resumed first, in the order their timers were armed (the order those timers
/// fire and wake their futures); writes pushed since are started after them, in push order.
/// Every timer is armed in the same poll of the driver's task as the write's own timer would be,
/// and all wake that one task, so the task wakes at the same place among the others as before.
struct SettledWrites {
    writer: Rc<OrderWriter>,
    fresh: VecDeque<(AggregateId, EventType)>,
    waiting: Parked<SettledWrite>,
}

impl SettledWrites {
    /// Files a step's outcome: a finished write is returned, a waiting one is parked (or resumed
    /// at once if its time has come).
    fn settle(
        &mut self,
        (order, event_type): (AggregateId, EventType),
        mut step: SettledStep,
        cx: &mut Context<'_>,
    ) -> Option<Completion> {
        loop {
            match step {
                SettledStep::Done(r) => return Some((order, event_type, r.map(|_| ()))),
                SettledStep::Wait(w, at) if at <= self.writer.now() => {
                    step = self.writer.resume_settled(w);
                }
                SettledStep::Wait(w, at) => {
                    self.waiting.park(at, w, cx);
                    return None;
                }
            }
        }
    }
}

impl InFlight for SettledWrites {
    fn len(&self) -> usize {
        self.fresh.len() + self.waiting.len()
    }

    fn push(&mut self, order: AggregateId, event_type: EventType) {
        self.fresh.push_back((order, event_type));
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Completion>> {
        self.waiting.poll_timers(cx);
        loop {
            let (write, step) = if let Some(w) = self.waiting.pop_due() {
                ((w.order(), w.event_type()), self.writer.resume_settled(w))
            } else if let Some((order, event_type)) = self.fresh.pop_front() {
                (
                    (order, event_type),
                    self.writer.start_settled(order, event_type),
                )
            } else if self.is_empty() {
                return Poll::Ready(None);
            } else {
                return Poll::Pending;
            };
            if let Some(done) = self.settle(write, step, cx) {
                return Poll::Ready(Some(done));
            }
        }
    }
}

/// Drives `writer` from `start` until `end` (no new orders or steps after `end`).
pub async fn drive(
    writer: Rc<OrderWriter>,
    clock: Rc<dyn Clock>,
    rng: SimRng,
    config: WorkloadConfig,
    start: Timestamp,
    end: Timestamp,
) -> WorkloadSummary {
    if writer.settles_writes() {
        let writes = SettledWrites {
            writer: writer.clone(),
            fresh: VecDeque::new(),
            waiting: Parked::new(clock.clone()),
        };
        drive_writes(writes, writer, clock, rng, config, start, end).await
    } else {
        let writes = WriteFutures {
            writer: writer.clone(),
            set: FuturesUnordered::new(),
        };
        drive_writes(writes, writer, clock, rng, config, start, end).await
    }
}

/// A due lifecycle step of the workload's agenda: `((due, ticket), order, event)`.
type Step = ((Timestamp, u64), AggregateId, EventType);

async fn drive_writes(
    mut in_flight: impl InFlight,
    writer: Rc<OrderWriter>,
    clock: Rc<dyn Clock>,
    mut rng: SimRng,
    config: WorkloadConfig,
    start: Timestamp,
    end: Timestamp,
) -> WorkloadSummary {
    let mut summary = WorkloadSummary::default();
    // Due steps, earliest first: ((due, ticket), order, event) under `Reverse`. The ticket
    // orders steps due at the same time, so keys are unique and the order total. An 8-ary heap:
    // a pop sifts through ~5 levels of a 10,000-step agenda, each level's children side by side
    // (a binary heap's 14 levels were slower than a B-tree; the B-tree shifts keys in its nodes).
    let mut agenda: dary_heap::OctonaryHeap<Reverse<Step>> = dary_heap::OctonaryHeap::new();
    let mut ticket = 0u64;
    let mut next_arrival = start;
    let step_min = Duration::from_millis(config.step_delay_min_ms.max(0) as u64);
    let step_max = Duration::from_millis(config.step_delay_max_ms.max(0) as u64);
    // The sleep towards the next due arrival or step, kept across completions while that
    // deadline stands (most completions do not move it), instead of a new timer per completion.
    let mut wait: Option<(Timestamp, SleepFuture)> = None;
    // The agenda's next step, once the writer has been told it comes (see `OrderWriter::prepare`).
    let mut prepared = 0u64;
    loop {
        let now = clock.now();
        // Admit everything due, as capacity allows.
        while in_flight.len() < config.max_in_flight.max(1) {
            let arrival_due = next_arrival <= now && next_arrival < end;
            let step_due = agenda
                .peek()
                .is_some_and(|Reverse(((t, _), _, _))| *t <= now);
            let (order, event_type) = if step_due {
                let Reverse((_, order, event_type)) = agenda.pop().expect("checked");
                (order, event_type)
            } else if arrival_due {
                let rate = config.rate_at(next_arrival.saturating_since(start));
                next_arrival = if rate > 0.0 {
                    next_arrival
                        + exponential_duration(&mut rng, Duration::from_secs_f64(1.0 / rate))
                } else {
                    end
                };
                summary.orders += 1;
                let order = writer.new_order();
                // Its write starts once the admission is over: a little time to load its slots.
                writer.prepare(order);
                (order, EventType::OrderCreated)
            } else {
                break;
            };
            in_flight.push(order, event_type);
        }
        if let Some(&Reverse(((_, step), order, _))) = agenda.peek()
            && step != prepared
        {
            prepared = step;
            writer.prepare(order);
        }
        let next_due = [
            (next_arrival < end).then_some(next_arrival),
            agenda.peek().map(|Reverse(((t, _), _, _))| *t),
        ]
        .into_iter()
        .flatten()
        .min();
        if in_flight.is_empty() {
            wait = None;
            match next_due {
                Some(t) => clock.sleep(t.saturating_since(now)).await,
                None => return summary,
            }
            continue;
        }
        let at_capacity = in_flight.len() >= config.max_in_flight.max(1);
        let next = std::future::poll_fn(|cx| in_flight.poll_next(cx));
        let completed = match next_due {
            // Something is due but there is no room: only a completion can make progress.
            Some(t) if !at_capacity || t > now => {
                if wait.as_ref().is_none_or(|(deadline, _)| *deadline != t) {
                    wait = Some((t, clock.sleep(t.saturating_since(now))));
                }
                let (_, sleep) = wait.as_mut().expect("set above");
                match select(sleep, pin!(next)).await {
                    Either::Left(_) => {
                        wait = None;
                        None
                    }
                    Either::Right((c, _)) => c,
                }
            }
            _ => next.await,
        };
        if let Some((order, event_type, result)) = completed {
            match result {
                Ok(()) => {
                    summary.committed += 1;
                    if let Some(next) = next_step(event_type, &mut rng, config.cancel_probability) {
                        let at = clock.now() + uniform_duration(&mut rng, step_min, step_max);
                        if at < end {
                            ticket += 1;
                            agenda.push(Reverse(((at, ticket), order, next)));
                        }
                    }
                }
                Err(_) => summary.failed += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{OutboxStore, ScanFrom};
    use crate::seed::Seed;
    use crate::sim::SimBuilder;
    use crate::sim::scylla::Client;
    use crate::writer::WriterConfig;

    /// Drives 20 simulated seconds of orders with a burst, then write timeouts (so retries and
    /// failures), with a reader polling the outbox alongside, which shares the cluster and the clock.
    fn run(settled: bool) -> (WorkloadSummary, u64, usize, Vec<usize>) {
        let mut sim = SimBuilder::new().build(Seed(11)).expect("default world");
        let faults = {
            let (clock, cluster) = (sim.clock_port(), sim.cluster());
            sim.spawn("faults", async move {
                clock.sleep(Duration::from_secs(8)).await;
                cluster.set_write_timeout_probability(0.5);
                clock.sleep(Duration::from_secs(10)).await;
                cluster.set_write_timeout_probability(0.0);
            })
        };
        let writer = Rc::new(OrderWriter::new(
            Rc::new(sim.store(Client::Writer)),
            sim.clock_port(),
            sim.history(),
            sim.rng("writer"),
            WriterConfig::default(),
        ));
        let start = sim.now();
        let config = WorkloadConfig {
            orders_per_s: 400.0,
            step_delay_min_ms: 0,
            step_delay_max_ms: 3_000,
            max_in_flight: 64,
            // Thousands of orders within microseconds: writes start, finish and retry together.
            bursts: vec![Burst {
                at_s: 5.0,
                duration_s: 0.003,
                orders_per_s: 2_000_000.0,
            }],
            ..WorkloadConfig::default()
        };
        let end = start + Duration::from_secs(20);
        let reader = sim.store(Client::Relay);
        let clock = sim.clock_port();
        sim.cluster().set_read_timeout_probability(0.05);
        let reads = sim.spawn("reader", async move {
            let mut seen = Vec::new();
            while clock.now() < end {
                let rows = reader
                    .scan_outbox(ScanFrom::Beginning, clock.now(), 1_000)
                    .await
                    .map_or(usize::MAX, |r| r.len());
                seen.push(rows);
                clock.sleep(Duration::from_micros(7_001)).await;
            }
            seen
        });
        let (clock, rng) = (sim.clock_port(), sim.rng("workload"));
        let t = if settled {
            assert!(writer.settles_writes());
            sim.spawn("w", drive(writer, clock, rng, config, start, end))
        } else {
            // A future per write, as on a store that answers asynchronously.
            let writes = WriteFutures {
                writer: writer.clone(),
                set: FuturesUnordered::new(),
            };
            sim.spawn(
                "w",
                drive_writes(writes, writer, clock, rng, config, start, end),
            )
        };
        let summary = sim.block_on(t).expect("runs");
        let seen = sim.block_on(reads).expect("runs");
        sim.block_on(faults).expect("runs");
        let history = sim.history();
        (summary, history.digest(), history.len(), seen)
    }

    /// Writes kept as plain values do exactly what a future per write does: same summary, same
    /// history op for op, and the same rows seen by a reader running alongside.
    #[test]
    fn settled_writes_run_exactly_as_write_futures() {
        let (summary, digest, ops, seen) = run(true);
        assert!(summary.committed > 5_000, "{summary:?}");
        assert!(
            summary.failed > 0,
            "timeouts exhaust some retries: {summary:?}"
        );
        assert!(seen.contains(&usize::MAX), "some reads time out");
        assert_eq!(run(false), (summary, digest, ops, seen));
    }
}
