//! The order workload: Poisson order arrivals at a steady rate plus bursts, each order walking its
//! lifecycle with random pauses between steps.
//!
//! The driver keeps an agenda of due lifecycle steps and up to `max_in_flight` batches in flight;
//! an order's next step is scheduled only after its previous batch was acknowledged, so an
//! aggregate never has two writes in flight. New orders stop at the end of the write phase;
//! lifecycles already started finish if their steps fall before it.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::{Either, select};
use futures::stream::FuturesUnordered;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::model::{AggregateId, EventType, Timestamp};
use crate::ports::{Clock, SleepFuture};
use crate::seed::{SimRng, exponential_duration, uniform_duration};
use crate::writer::{OrderWriter, WriteFailure};

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

/// Drives `writer` from `start` until `end` (no new orders or steps after `end`).
pub async fn drive(
    writer: Rc<OrderWriter>,
    clock: Rc<dyn Clock>,
    mut rng: SimRng,
    config: WorkloadConfig,
    start: Timestamp,
    end: Timestamp,
) -> WorkloadSummary {
    let mut summary = WorkloadSummary::default();
    let mut agenda: BTreeMap<(Timestamp, u64), (AggregateId, EventType)> = BTreeMap::new();
    let mut ticket = 0u64;
    // Writes are pushed from one place, so they share one future type and the set holds them
    // unboxed (one allocation per write fewer).
    let mut in_flight = FuturesUnordered::new();
    let mut next_arrival = start;
    let step_min = Duration::from_millis(config.step_delay_min_ms.max(0) as u64);
    let step_max = Duration::from_millis(config.step_delay_max_ms.max(0) as u64);
    // The sleep towards the next due arrival or step, kept across completions while that
    // deadline stands (most completions do not move it), instead of a new timer per completion.
    let mut wait: Option<(Timestamp, SleepFuture)> = None;
    loop {
        let now = clock.now();
        // Admit everything due, as capacity allows.
        while in_flight.len() < config.max_in_flight.max(1) {
            let arrival_due = next_arrival <= now && next_arrival < end;
            let step_due = agenda
                .first_key_value()
                .is_some_and(|((t, _), _)| *t <= now);
            let (order, event_type) = if step_due {
                agenda.pop_first().expect("checked").1
            } else if arrival_due {
                let rate = config.rate_at(next_arrival.saturating_since(start));
                next_arrival = if rate > 0.0 {
                    next_arrival
                        + exponential_duration(&mut rng, Duration::from_secs_f64(1.0 / rate))
                } else {
                    end
                };
                summary.orders += 1;
                (writer.new_order(), EventType::OrderCreated)
            } else {
                break;
            };
            let w = writer.clone();
            in_flight.push(async move {
                let r: Result<(), WriteFailure> = w.write(order, event_type).await.map(|_| ());
                (order, event_type, r)
            });
        }
        let next_due = [
            (next_arrival < end).then_some(next_arrival),
            agenda.first_key_value().map(|((t, _), _)| *t),
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
        let completed = match next_due {
            // Something is due but there is no room: only a completion can make progress.
            Some(t) if !at_capacity || t > now => {
                if wait.as_ref().is_none_or(|(deadline, _)| *deadline != t) {
                    wait = Some((t, clock.sleep(t.saturating_since(now))));
                }
                let (_, sleep) = wait.as_mut().expect("set above");
                match select(sleep, in_flight.next()).await {
                    Either::Left(_) => {
                        wait = None;
                        None
                    }
                    Either::Right((c, _)) => c,
                }
            }
            _ => in_flight.next().await,
        };
        if let Some((order, event_type, result)) = completed {
            match result {
                Ok(()) => {
                    summary.committed += 1;
                    if let Some(next) = next_step(event_type, &mut rng, config.cancel_probability) {
                        let at = clock.now() + uniform_duration(&mut rng, step_min, step_max);
                        if at < end {
                            ticket += 1;
                            agenda.insert((at, ticket), (order, next));
                        }
                    }
                }
                Err(_) => summary.failed += 1,
            }
        }
    }
}
