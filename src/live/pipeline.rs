//! The pipeline on live ports: the order writer, a relay under a small supervisor (with an
//! optional crash and restart), publishes recorded in a [`History`], and the same checker as the
//! simulated runs. `outbox-sim live` and the CQL-front tests drive it.
//!
//! Time is the wall clock; the writer's rate and the relay's crash are real-time. The run ends
//! when every committed event was published (or the drain timeout passed), so its length is what
//! the relay needs, not a guess.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::{Either, select};

use super::WallClock;
use crate::check::{Analysis, analyze, delivery_latencies_us};
use crate::history::{History, OpKind};
use crate::model::{EventId, EventType, OutboxEvent};
use crate::ports::{
    CheckpointStore, Clock, Delivery, LocalFuture, OutboxStore, PublishError, Publisher,
};
use crate::relay::{Relay, RelayContext};
use crate::seed::Seed;
use crate::writer::{OrderWriter, WriterConfig};

/// A [`Publisher`] that records every acknowledgement and failure in the history, as the
/// simulated producer does.
pub struct RecordingPublisher {
    inner: Rc<dyn Publisher>,
    history: History,
    incarnation: u32,
}

impl std::fmt::Debug for RecordingPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingPublisher")
            .field("incarnation", &self.incarnation)
            .finish()
    }
}

impl RecordingPublisher {
    /// Wraps `inner` for relay incarnation `incarnation`.
    pub fn new(inner: Rc<dyn Publisher>, history: History, incarnation: u32) -> Self {
        RecordingPublisher {
            inner,
            history,
            incarnation,
        }
    }
}

impl Publisher for RecordingPublisher {
    fn publish<'a>(
        &'a self,
        event: &'a OutboxEvent,
    ) -> LocalFuture<'a, Result<Delivery, PublishError>> {
        Box::pin(async move {
            let r = self.inner.publish(event).await;
            let kind = match &r {
                Ok(d) => OpKind::Published {
                    event: event.id,
                    aggregate: event.aggregate_id,
                    seq: event.seq,
                    partition: d.partition,
                    offset: d.offset,
                    incarnation: self.incarnation,
                },
                Err(e) => OpKind::PublishFailed {
                    event: event.id,
                    incarnation: self.incarnation,
                    transient: e.is_transient(),
                },
            };
            self.history.record(WallClock.now(), kind);
            r
        })
    }
}

/// How a live run is driven.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveOptions {
    /// Orders written; each goes Created → Paid → Shipped (three events).
    pub orders: usize,
    /// Writes per second (all orders' steps interleaved).
    pub writes_per_s: f64,
    /// Crash the relay this long after the start, if set…
    pub crash_after: Option<Duration>,
    /// …and restart it after this downtime.
    pub downtime: Duration,
    /// Give up waiting for the relay this long after the last write.
    pub drain_timeout: Duration,
    /// Seed of the writer's ids.
    pub seed: Seed,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            orders: 100,
            writes_per_s: 200.0,
            crash_after: None,
            downtime: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(120),
            seed: Seed(1),
        }
    }
}

/// What a live run measured.
#[derive(Clone, Debug)]
pub struct LiveOutcome {
    /// The checker's verdict.
    pub analysis: Analysis,
    /// Every event id the relay got acknowledged (with repeats), for reading the topic back.
    pub published: Vec<EventId>,
    /// Wall seconds from the first write to the end of the drain.
    pub wall_s: f64,
    /// Whether the drain ended because every committed event was published.
    pub drained: bool,
    /// Delivery latencies in µs, every delivered event.
    pub latencies_us: Vec<u64>,
}

/// Builds the ports of one relay incarnation.
pub trait IncarnationPorts {
    /// The checkpoint table as incarnation `n` sees it.
    fn checkpoints(&self, n: u32) -> Rc<dyn CheckpointStore>;
    /// A new producer session for incarnation `n`.
    fn publisher(&self, n: u32) -> Result<Rc<dyn Publisher>, String>;
}

fn all_published(history: &History) -> bool {
    let ops = history.ops();
    let mut committed = std::collections::BTreeSet::new();
    let mut published = std::collections::BTreeSet::new();
    for op in ops.iter() {
        match &op.kind {
            OpKind::Committed { event, .. } => {
                committed.insert(*event);
            }
            OpKind::Published { event, .. } => {
                published.insert(*event);
            }
            _ => {}
        }
    }
    committed.is_subset(&published)
}

/// Runs the writer and `relay` on live ports until every committed event was published or the
/// drain timeout passed, then checks the history. Must be polled on a single-threaded executor.
pub async fn run_pipeline(
    store: Rc<dyn OutboxStore>,
    relay_store: Rc<dyn OutboxStore>,
    ports: &dyn IncarnationPorts,
    relay: Rc<dyn Relay>,
    history: History,
    opts: &LiveOptions,
) -> Result<LiveOutcome, String> {
    let clock: Rc<dyn Clock> = Rc::new(WallClock);
    let writer = OrderWriter::new(
        store,
        clock.clone(),
        history.clone(),
        opts.seed.rng("live-writer"),
        WriterConfig::default(),
    );
    let started = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / opts.writes_per_s.max(0.001));
    let write = async {
        let orders: Vec<_> = (0..opts.orders).map(|_| writer.new_order()).collect();
        for step in [
            EventType::OrderCreated,
            EventType::OrderPaid,
            EventType::OrderShipped,
        ] {
            for &order in &orders {
                // A failed write is recorded by the writer and not retried here: the checker
                // only expects what was committed.
                let _ = writer.write(order, step).await;
                clock.sleep(gap).await;
            }
        }
    };
    let mut crash_at = opts.crash_after.map(|d| started + d);
    let supervise = async {
        let mut incarnation = 0;
        loop {
            incarnation += 1;
            let ctx = RelayContext {
                store: relay_store.clone(),
                checkpoints: ports.checkpoints(incarnation),
                publisher: Rc::new(RecordingPublisher::new(
                    ports.publisher(incarnation)?,
                    history.clone(),
                    incarnation,
                )),
                clock: clock.clone(),
                incarnation,
            };
            history.record(clock.now(), OpKind::RelayStarted { incarnation });
            let run = relay.run(ctx);
            let crash = match crash_at.take() {
                Some(at) => Either::Left(clock.sleep(at.saturating_duration_since(Instant::now()))),
                None => Either::Right(futures::future::pending::<()>()),
            };
            match select(run, crash).await {
                Either::Left((result, _)) => {
                    let error = result.err().map(|e| e.to_string());
                    history.record(clock.now(), OpKind::RelayExited { incarnation, error });
                    clock.sleep(Duration::from_secs(1)).await;
                }
                Either::Right((_, run)) => {
                    drop(run);
                    history.record(clock.now(), OpKind::RelayCrashed { incarnation });
                    clock.sleep(opts.downtime).await;
                }
            }
        }
    };
    let drained = async {
        write.await;
        let deadline = Instant::now() + opts.drain_timeout;
        while Instant::now() < deadline {
            if all_published(&history) {
                return Ok::<bool, String>(true);
            }
            clock.sleep(Duration::from_millis(100)).await;
        }
        Ok(false)
    };
    let drained = smol::future::or(drained, supervise).await?;
    let ops = history.ops();
    let published = ops
        .iter()
        .filter_map(|op| match op.kind {
            OpKind::Published { event, .. } => Some(event),
            _ => None,
        })
        .collect();
    Ok(LiveOutcome {
        analysis: analyze(&ops),
        published,
        wall_s: started.elapsed().as_secs_f64(),
        drained,
        latencies_us: delivery_latencies_us(&ops),
    })
}
