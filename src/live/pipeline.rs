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

/// A publisher that acknowledges at once and keeps the event ids it was given, in order (for
/// measuring a reader alone, without a broker).
#[derive(Debug, Default)]
pub struct Collector(std::cell::RefCell<Vec<EventId>>);

impl Collector {
    /// How many events arrived.
    pub fn len(&self) -> usize {
        self.0.borrow().len()
    }

    /// Whether none arrived.
    pub fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }

    /// Takes the ids collected so far.
    pub fn take(&self) -> Vec<EventId> {
        self.0.take()
    }
}

impl Publisher for Collector {
    fn publish<'a>(
        &'a self,
        event: &'a OutboxEvent,
    ) -> LocalFuture<'a, Result<Delivery, PublishError>> {
        self.0.borrow_mut().push(event.id);
        let offset = self.0.borrow().len() as u64;
        Box::pin(async move {
            Ok(Delivery {
                partition: 0,
                offset,
            })
        })
    }
}

/// Runs one incarnation of `relay` on `store` until `sink` holds `want` events or `timeout`
/// passed, then one more `settle` (so a duplicate would show); returns the ids in arrival order.
pub async fn collect(
    relay: &dyn Relay,
    store: Rc<dyn OutboxStore>,
    checkpoints: Rc<dyn CheckpointStore>,
    want: usize,
    timeout: Duration,
    settle: Duration,
) -> Vec<EventId> {
    let sink = Rc::new(Collector::default());
    let ctx = RelayContext {
        store,
        checkpoints,
        publisher: sink.clone(),
        clock: Rc::new(WallClock),
        incarnation: 1,
    };
    let run = relay.run(ctx);
    let wait = async {
        let deadline = Instant::now() + timeout;
        while sink.len() < want && Instant::now() < deadline {
            WallClock.sleep(Duration::from_millis(20)).await;
        }
        WallClock.sleep(settle).await;
    };
    futures::pin_mut!(run);
    futures::pin_mut!(wait);
    let _ = select(run, wait).await;
    sink.take()
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

/// The ports of live incarnations: the checkpoint table on a live cluster (rows of relay
/// `outbox`) and a new rdkafka producer session per incarnation.
#[derive(Debug)]
pub struct LivePorts {
    /// The cluster session the checkpoints go through.
    pub store: super::scylla::ScyllaStore,
    /// Where checkpoint saves and loads are recorded.
    pub history: History,
    /// The producer settings.
    pub kafka: super::kafka::KafkaConfig,
}

impl IncarnationPorts for LivePorts {
    fn checkpoints(&self, n: u32) -> Rc<dyn CheckpointStore> {
        Rc::new(super::scylla::ScyllaCheckpoints::new(
            self.store.clone(),
            self.history.clone(),
            n,
            "outbox",
        ))
    }

    fn publisher(&self, _n: u32) -> Result<Rc<dyn Publisher>, String> {
        Ok(Rc::new(
            super::kafka::KafkaPublisher::new(&self.kafka).map_err(|e| e.to_string())?,
        ))
    }
}

/// Where `outbox-sim live` runs.
#[derive(Clone, Debug)]
pub struct LiveTarget {
    /// ScyllaDB contact point, `host:port`.
    pub scylla: String,
    /// Kafka bootstrap servers.
    pub kafka: String,
    /// The topic.
    pub topic: String,
    /// The relay preset.
    pub preset: crate::relay::Preset,
    /// How long to wait for either server before giving up.
    pub connect_timeout: Duration,
}

/// What `outbox-sim live` measured.
#[derive(Clone, Debug)]
pub struct LiveReport {
    /// The run in the simulated runs' report shape (times are wall-clock).
    pub report: crate::scenario::RunReport,
    /// Whether the drain ended with every committed event published.
    pub drained: bool,
    /// Records read back from the topic.
    pub on_topic: usize,
    /// Acknowledged event ids not found on the topic.
    pub missing_on_topic: usize,
    /// Rows the relay could not read as outbox events.
    pub dead_letters: Vec<String>,
    /// Whether the relay's queries were counted (the real scylla-cdc reader uses its own
    /// session, which this crate does not see).
    pub relay_queries_counted: bool,
}

/// Checks that a Kafka cluster answers a metadata request within `timeout`.
pub fn kafka_reachable(bootstrap: &str, timeout: Duration) -> Result<(), String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| format!("Kafka at {bootstrap}: {e}"))?;
    consumer
        .fetch_metadata(None, timeout)
        .map(drop)
        .map_err(|e| {
            format!(
                "Kafka at {bootstrap}: no metadata within {} s ({e})",
                timeout.as_secs_f64()
            )
        })
}

/// Runs the real pipeline against live servers: schema, writer, the preset's relay (polling over
/// [`ScyllaStore`](super::scylla::ScyllaStore), or the real scylla-cdc reader for stream
/// presets), the topic read back, the checker. Unreachable servers fail within
/// `connect_timeout`.
pub fn run_live(target: &LiveTarget, opts: &LiveOptions) -> Result<LiveReport, String> {
    use super::kafka::{KafkaConfig, read_topic};
    use super::scylla::{ScyllaStore, connect, create_schema};
    use crate::relay::AnyRelay;
    use crate::sim::scylla::{Client, QueryStats};

    // `--kafka mock`: librdkafka's in-process mock cluster (3 brokers, 6 partitions).
    let mock = if target.kafka == "mock" {
        let m = rdkafka::mocking::MockCluster::new(3)
            .map_err(|e| format!("mock Kafka cluster: {e}"))?;
        m.create_topic(&target.topic, 6, 3)
            .map_err(|e| format!("mock Kafka cluster: topic {}: {e}", target.topic))?;
        Some(m)
    } else {
        None
    };
    let target = &LiveTarget {
        kafka: mock
            .as_ref()
            .map_or(target.kafka.clone(), |m| m.bootstrap_servers()),
        ..target.clone()
    };
    kafka_reachable(&target.kafka, target.connect_timeout)?;
    let history = History::new();
    let scenario = crate::scenario::Scenario::default_scenario();
    let (outcome, stats, dead_letters, counted) = smol::block_on(async {
        let session = connect(&target.scylla, target.connect_timeout, true)
            .await
            .map_err(|e| e.to_string())?;
        create_schema(&session, 1, target.connect_timeout)
            .await
            .map_err(|e| e.to_string())?;
        let stats = Rc::new(std::cell::RefCell::new(QueryStats::default()));
        let store = ScyllaStore::new(
            session.clone(),
            Client::Writer,
            target.connect_timeout,
            stats.clone(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let (relay, counted): (Rc<dyn Relay>, bool) = match target
            .preset
            .relay(scenario.visibility_bound(), scenario.cdc_ttl())
        {
            AnyRelay::Poll(p) => (Rc::new(p), true),
            AnyRelay::Stream(s) => (
                Rc::new(super::scylla_cdc::LibraryRelay::new(
                    target.preset.name(),
                    session.clone(),
                    s.config().clone(),
                )?),
                false,
            ),
        };
        let ports = LivePorts {
            store: store.clone(),
            history: history.clone(),
            kafka: KafkaConfig::new(&target.kafka, &target.topic),
        };
        let outcome = run_pipeline(
            Rc::new(store.clone()),
            Rc::new(store.for_client(Client::Relay)),
            &ports,
            relay,
            history.clone(),
            opts,
        )
        .await?;
        let stats = stats.borrow().clone();
        Ok::<_, String>((outcome, stats, store.dead_letters(), counted))
    })?;
    let read = read_topic(
        &target.kafka,
        &target.topic,
        outcome.published.len(),
        Duration::from_secs(30),
    )?;
    let on_topic_ids: std::collections::BTreeSet<String> =
        read.iter().map(|r| r.id.clone()).collect();
    let missing_on_topic = outcome
        .published
        .iter()
        .filter(|id| !on_topic_ids.contains(&id.0.to_string()))
        .count();
    let minutes = (outcome.wall_s / 60.0).max(1e-9);
    let total = stats.total(Client::Relay);
    let latency_cdf = crate::check::latency_cdf(outcome.latencies_us.clone());
    let report = crate::scenario::RunReport {
        relay: target.preset.name().to_string(),
        scenario: format!("live {} → {}", target.scylla, target.kafka),
        seed: opts.seed.0,
        analysis: outcome.analysis,
        queries_per_min: total.queries as f64 / minutes,
        rows_scanned_per_min: total.rows_scanned as f64 / minutes,
        queries_by_kind: stats
            .nonzero()
            .into_iter()
            .filter(|(c, _, _)| *c == Client::Relay)
            .map(|(_, k, c)| (k, c.queries))
            .collect(),
        sim_s: outcome.wall_s,
        steps: 0,
        digest: format!("{:016x}", history.digest()),
        history_ops: history.len(),
        latency_cdf,
    };
    Ok(LiveReport {
        report,
        drained: outcome.drained,
        on_topic: read.len(),
        missing_on_topic,
        dead_letters,
        relay_queries_counted: counted,
    })
}
