//! Deliberately broken relays, each a bug real relays have had. The checker must catch every one
//! of them; `outbox-sim hunt --relay mutant:<name>` shows how fast.
//!
//! Most mutants are a reference relay with one thing changed — a setting, or a port wrapper that
//! lies to it the way a buggy driver or client would; `checkpoint-before-ack` has its own loop.

use std::rc::Rc;
use std::time::Duration;

use crate::cdc::{LogPage, PageState, StreamId};
use crate::model::{OutboxEvent, Timestamp};
use crate::ports::{
    Clock, Delivery, LocalFuture, OutboxStore, PublishError, Publisher, ScanFrom, StoreError,
};
use crate::relay::{
    AnyRelay, CursorMode, PollingConfig, PollingRelay, Preset, Relay, RelayContext, RelayError,
    StartTimestamp, StreamConfig, StreamRelay,
};

/// The mutants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mutant {
    /// Polling relay that saves its cursor before the publisher acknowledged the rows.
    CheckpointBeforeAck,
    /// Polling relay without a lag window (`created_at > last_seen` up to now).
    NoLagWindow,
    /// Polling relay with an exclusive timestamp cursor and a row limit per poll.
    ExclusiveCursor,
    /// Polling relay publishing a page's rows concurrently, without per-key ordering.
    ConcurrentPublish,
    /// Stream relay with a zero safety interval under clock skew and replication delay.
    NoSafetyWindow,
    /// Stream relay that starts a new generation's readers before the old ones finished.
    NoGenerationBarrier,
    /// Stream relay that loads checkpoints but resumes from now (scylla-cdc #120).
    ResumeFromNow,
    /// Stream relay whose consumer swallows publish errors and acknowledges the row anyway.
    SwallowedPublishError,
    /// Stream relay whose reads return empty pages while the cluster is unreachable, so its
    /// checkpoints advance over unread windows (scylla-cdc #149).
    CheckpointWhileDbDown,
    /// Stream relay whose generation fetcher never sees the next generation (scylla-cdc #72).
    MissedGeneration,
}

/// Every mutant.
pub const MUTANTS: [Mutant; 10] = [
    Mutant::CheckpointBeforeAck,
    Mutant::NoLagWindow,
    Mutant::ExclusiveCursor,
    Mutant::ConcurrentPublish,
    Mutant::NoSafetyWindow,
    Mutant::NoGenerationBarrier,
    Mutant::ResumeFromNow,
    Mutant::SwallowedPublishError,
    Mutant::CheckpointWhileDbDown,
    Mutant::MissedGeneration,
];

impl Mutant {
    /// The mutant's name (`mutant:<name>` on the command line).
    pub const fn name(self) -> &'static str {
        match self {
            Mutant::CheckpointBeforeAck => "checkpoint-before-ack",
            Mutant::NoLagWindow => "no-lag-window",
            Mutant::ExclusiveCursor => "exclusive-cursor",
            Mutant::ConcurrentPublish => "concurrent-publish",
            Mutant::NoSafetyWindow => "no-safety-window",
            Mutant::NoGenerationBarrier => "no-generation-barrier",
            Mutant::ResumeFromNow => "resume-from-now",
            Mutant::SwallowedPublishError => "swallowed-publish-error",
            Mutant::CheckpointWhileDbDown => "checkpoint-while-db-down",
            Mutant::MissedGeneration => "missed-generation",
        }
    }

    /// The real-world bug it reproduces.
    pub const fn bug(self) -> &'static str {
        match self {
            Mutant::CheckpointBeforeAck => {
                "offset committed before the produce was acknowledged (at-most-once by accident)"
            }
            Mutant::NoLagWindow => {
                "the seed's `created_at > last_seen` poller (Kafka Connect JDBC timestamp.delay.interval.ms = 0)"
            }
            Mutant::ExclusiveCursor => {
                "exclusive timestamp cursor + batch limit skips rows sharing the last timestamp (stream-reactor #448)"
            }
            Mutant::ConcurrentPublish => {
                "rows of one key sent by concurrent tasks (MassTransit: 'set concurrency to 1 for in-order delivery')"
            }
            Mutant::NoSafetyWindow => {
                "safety interval 0: rows stamped behind the reader by skew or visible late are skipped (scylladb #19383)"
            }
            Mutant::NoGenerationBarrier => {
                "new generation read before the old one is drained (scylla-cdc-java #57 class)"
            }
            Mutant::ResumeFromNow => {
                "checkpoints loaded but start_timestamp = now wins (scylla-cdc #120)"
            }
            Mutant::SwallowedPublishError => "consume_cdc returns Ok after a failed produce",
            Mutant::CheckpointWhileDbDown => {
                "checkpoints advance while the session is down (scylla-cdc #149)"
            }
            Mutant::MissedGeneration => "generation fetcher misses a generation (scylla-cdc #72)",
        }
    }

    /// Looks a mutant up by name.
    pub fn parse(name: &str) -> Option<Mutant> {
        MUTANTS.into_iter().find(|m| m.name() == name)
    }

    /// The broken relay, sized for a world with this visibility bound and CDC TTL.
    pub fn relay(self, visibility_bound: Duration, cdc_ttl: Duration) -> Rc<dyn Relay> {
        let poll_safe = match Preset::PollSafe.relay(visibility_bound, cdc_ttl) {
            AnyRelay::Poll(p) => p.config().clone(),
            AnyRelay::Stream(_) => unreachable!("poll-safe is a polling relay"),
        };
        let tuned = match Preset::StreamTuned.relay(visibility_bound, cdc_ttl) {
            AnyRelay::Stream(s) => s.config().clone(),
            AnyRelay::Poll(_) => unreachable!("stream-tuned is a stream relay"),
        };
        let name = format!("mutant:{}", self.name());
        let wrapped = |inner: AnyRelay, wrap: Wrap| -> Rc<dyn Relay> {
            Rc::new(Wrapped {
                name: name.clone(),
                inner,
                wrap,
            })
        };
        let poll = |cfg: PollingConfig| AnyRelay::Poll(PollingRelay::new(&name, cfg));
        let stream = |cfg: StreamConfig| AnyRelay::Stream(StreamRelay::new(&name, cfg));
        match self {
            Mutant::CheckpointBeforeAck => Rc::new(SaveFirst {
                name: name.clone(),
                config: poll_safe,
            }),
            Mutant::NoLagWindow => wrapped(
                poll(PollingConfig {
                    lag: Duration::ZERO,
                    ..poll_safe
                }),
                Wrap::None,
            ),
            Mutant::ExclusiveCursor => wrapped(
                poll(PollingConfig {
                    cursor: CursorMode::Exclusive,
                    max_rows_per_poll: Some(20),
                    ..poll_safe
                }),
                Wrap::None,
            ),
            Mutant::ConcurrentPublish => wrapped(
                poll(PollingConfig {
                    ordered_per_key: false,
                    ..poll_safe
                }),
                Wrap::Jitter,
            ),
            Mutant::NoSafetyWindow => wrapped(
                stream(StreamConfig {
                    safety_interval: Duration::ZERO,
                    start: StartTimestamp::Resume {
                        fresh: Duration::ZERO,
                        resuming: cdc_ttl,
                    },
                    ..tuned
                }),
                Wrap::None,
            ),
            Mutant::NoGenerationBarrier => wrapped(
                stream(StreamConfig {
                    generation_barrier: false,
                    ..tuned
                }),
                Wrap::None,
            ),
            Mutant::ResumeFromNow => wrapped(
                stream(StreamConfig {
                    start: StartTimestamp::Now,
                    ..tuned
                }),
                Wrap::None,
            ),
            Mutant::SwallowedPublishError => wrapped(stream(tuned), Wrap::SwallowErrors),
            Mutant::CheckpointWhileDbDown => wrapped(stream(tuned), Wrap::EmptyOnError),
            Mutant::MissedGeneration => wrapped(stream(tuned), Wrap::BlindToGenerations),
        }
    }
}

impl std::fmt::Display for Mutant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug)]
enum Wrap {
    None,
    Jitter,
    SwallowErrors,
    EmptyOnError,
    BlindToGenerations,
}

/// A reference relay run with lying ports.
#[derive(Debug)]
struct Wrapped {
    name: String,
    inner: AnyRelay,
    wrap: Wrap,
}

impl Relay for Wrapped {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn run(&self, mut ctx: RelayContext) -> LocalFuture<'static, Result<(), RelayError>> {
        match self.wrap {
            Wrap::None => {}
            Wrap::Jitter => {
                ctx.publisher = Rc::new(Jitter {
                    inner: ctx.publisher.clone(),
                    clock: ctx.clock.clone(),
                })
            }
            Wrap::SwallowErrors => {
                ctx.publisher = Rc::new(Swallow {
                    inner: ctx.publisher.clone(),
                })
            }
            Wrap::EmptyOnError => {
                ctx.store = Rc::new(Lying {
                    inner: ctx.store.clone(),
                    empty_on_error: true,
                })
            }
            Wrap::BlindToGenerations => {
                ctx.store = Rc::new(Lying {
                    inner: ctx.store.clone(),
                    empty_on_error: false,
                })
            }
        }
        self.inner.run(ctx)
    }
}

/// Sends each record after a pseudo-random pause (0–49 ms, from the event id), so concurrent
/// sends of one key reach the broker in any order.
struct Jitter {
    inner: Rc<dyn Publisher>,
    clock: Rc<dyn Clock>,
}

impl Publisher for Jitter {
    fn publish<'a>(
        &'a self,
        event: &'a OutboxEvent,
    ) -> LocalFuture<'a, Result<Delivery, PublishError>> {
        Box::pin(async move {
            let pause = u64::from(event.id.0.as_bytes()[15]) % 50;
            self.clock.sleep(Duration::from_millis(pause)).await;
            self.inner.publish(event).await
        })
    }
}

/// Turns every publish error into a fake acknowledgement.
struct Swallow {
    inner: Rc<dyn Publisher>,
}

impl Publisher for Swallow {
    fn publish<'a>(
        &'a self,
        event: &'a OutboxEvent,
    ) -> LocalFuture<'a, Result<Delivery, PublishError>> {
        Box::pin(async move {
            Ok(self.inner.publish(event).await.unwrap_or(Delivery {
                partition: u32::MAX,
                offset: 0,
            }))
        })
    }
}

/// A store that answers log-read errors with empty pages, or hides every later generation.
struct Lying {
    inner: Rc<dyn OutboxStore>,
    empty_on_error: bool,
}

impl OutboxStore for Lying {
    crate::forward_outbox_store!(inner: write, scan_outbox, peer_count, generation_at, first_generation, stream_groups);
    fn next_generation(
        &self,
        g: Timestamp,
    ) -> LocalFuture<'_, Result<Option<Timestamp>, StoreError>> {
        if self.empty_on_error {
            self.inner.next_generation(g)
        } else {
            Box::pin(async { Ok(None) })
        }
    }

    fn read_log<'a>(
        &'a self,
        streams: &'a [StreamId],
        from: Timestamp,
        to: Timestamp,
        page: Option<PageState>,
        page_size: usize,
    ) -> LocalFuture<'a, Result<LogPage, StoreError>> {
        Box::pin(async move {
            match self
                .inner
                .read_log(streams, from, to, page, page_size)
                .await
            {
                Err(_) if self.empty_on_error => Ok(LogPage::default()),
                other => other,
            }
        })
    }
}

/// The polling relay with the save moved before the publish.
#[derive(Debug)]
struct SaveFirst {
    name: String,
    config: PollingConfig,
}

impl Relay for SaveFirst {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn run(&self, ctx: RelayContext) -> LocalFuture<'static, Result<(), RelayError>> {
        let cfg = self.config.clone();
        Box::pin(async move {
            let mut cursor = ctx.checkpoints.load_cursor().await?;
            loop {
                let from = cursor.map_or(ScanFrom::Beginning, ScanFrom::After);
                let rows = match ctx
                    .store
                    .scan_outbox(from, ctx.clock.now() - cfg.lag, cfg.page_size)
                    .await
                {
                    Ok(rows) => rows,
                    Err(_) => {
                        ctx.clock.sleep(cfg.poll_interval).await;
                        continue;
                    }
                };
                if let Some(last) = rows.last() {
                    let c = crate::model::Cursor {
                        created_at: last.created_at,
                        id: last.id,
                    };
                    // The bug: the position is durable before the rows are.
                    if ctx.checkpoints.save_cursor(c).await.is_ok() {
                        cursor = Some(c);
                    }
                }
                for e in &rows {
                    while ctx.publisher.publish(e).await.is_err() {
                        ctx.clock.sleep(Duration::from_millis(100)).await;
                    }
                }
                ctx.clock.sleep(cfg.poll_interval).await;
            }
        })
    }
}
