//! The stream relay on the real scylla-cdc 0.7 `CDCLogReader`.
//!
//! [`LibraryRelay`] is a [`Relay`]: each incarnation builds a `CDCLogReader` (on tokio, through
//! `async-compat`) whose `ConsumerFactory` hands every row to the incarnation's smol task, which
//! publishes it on the [`Publisher`](crate::ports::Publisher) port and answers only after the
//! broker acknowledged it. `consume_cdc` returns only then, so the library's checkpoint of a
//! window never runs ahead of the acknowledgements, and rows of one stream are published one at a
//! time, in log order. A crash drops the incarnation's future, and with it the reader's
//! `RemoteHandle`, which cancels every stream reader (scylla-cdc ≥ 0.7, #165). A graceful stop
//! ([`LibraryRelay::stop_handle`]) calls `CDCLogReader::stop` and joins the handle.
//!
//! Settings map one to one onto `CDCLogReaderBuilder` ([`builder_plan`]): window, safety, sleep,
//! pause between saves, save/load progress, start timestamp. The checkpoint saver is the
//! library's `TableBackedCheckpointSaver` on `orders_ks.cdc_checkpoints`, wrapped in
//! [`MonotonicSaver`] when the preset asks for checkpoints that never move back. Settings the
//! library does not have (no sleep while lagging, no generation barrier, another page size) are
//! refused with an error instead of silently ignored.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_compat::Compat;
use async_trait::async_trait;
use futures::future::Either;
use scylla::client::session::Session;
use scylla::value::CqlValue;
use scylla_cdc::cdc_types::{GenerationTimestamp, StreamID};
use scylla_cdc::checkpoints::{CDCCheckpointSaver, Checkpoint, TableBackedCheckpointSaver};
use scylla_cdc::consumer::{CDCRow, Consumer, ConsumerFactory, OperationType};
use scylla_cdc::log_reader::CDCLogReaderBuilder;

use super::scylla::{CHECKPOINT_TABLE, KEYSPACE, OUTBOX_TABLE};
use crate::model::{AggregateId, EventId, EventType, OutboxEvent, Timestamp};
use crate::ports::{LocalFuture, PublishError};
use crate::relay::stream::DEFAULT_PAGE_SIZE;
use crate::relay::{Relay, RelayContext, RelayError, StartTimestamp, StreamConfig};

/// What one incarnation passes to `CDCLogReaderBuilder`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuilderPlan {
    /// `window_size`.
    pub window_size: Duration,
    /// `safety_interval`.
    pub safety_interval: Duration,
    /// `sleep_interval`.
    pub sleep_interval: Duration,
    /// `pause_between_saves`.
    pub pause_between_saves: Duration,
    /// `should_save_progress`.
    pub save_progress: bool,
    /// `should_load_progress`.
    pub load_progress: bool,
    /// `start_timestamp` as a look-back from now; `None` leaves the library default (now).
    pub look_back: Option<Duration>,
    /// Wrap the saver in [`MonotonicSaver`].
    pub monotonic: bool,
}

/// Maps a stream-relay configuration to builder settings. `resuming` says whether a generation
/// row was found in the checkpoint table (a restart). Settings the library lacks are an error.
pub fn builder_plan(config: &StreamConfig, resuming: bool) -> Result<BuilderPlan, String> {
    if config.no_sleep_when_lagging {
        return Err("scylla-cdc 0.7 always sleeps between windows (no_sleep_when_lagging)".into());
    }
    if !config.generation_barrier {
        return Err("scylla-cdc 0.7 always keeps the generation barrier".into());
    }
    if config.page_size != DEFAULT_PAGE_SIZE {
        return Err(format!(
            "scylla-cdc 0.7 reads pages of the session default ({DEFAULT_PAGE_SIZE} rows), not {}",
            config.page_size
        ));
    }
    let look_back = match config.start {
        StartTimestamp::Now => None,
        StartTimestamp::Ago(d) => Some(d),
        StartTimestamp::Resume { fresh, resuming: r } => Some(if resuming { r } else { fresh }),
    };
    Ok(BuilderPlan {
        window_size: config.window_size,
        safety_interval: config.safety_interval,
        sleep_interval: config.sleep_interval,
        pause_between_saves: config.pause_between_saves,
        save_progress: config.should_save_progress,
        load_progress: config.should_load_progress,
        look_back,
        monotonic: config.monotonic_checkpoints,
    })
}

/// A checkpoint saver that never writes a stream's checkpoint below the last one it saved or
/// loaded for it. scylla-cdc first saves every stream at the reader's lower timestamp after a
/// restart, which rewinds progress if the relay crashes again before the next save.
pub struct MonotonicSaver {
    inner: Arc<dyn CDCCheckpointSaver>,
    floor: Mutex<HashMap<StreamID, Duration>>,
}

impl fmt::Debug for MonotonicSaver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MonotonicSaver").finish_non_exhaustive()
    }
}

impl MonotonicSaver {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn CDCCheckpointSaver>) -> Self {
        MonotonicSaver {
            inner,
            floor: Mutex::default(),
        }
    }

    fn floor(&self, stream: &StreamID) -> Option<Duration> {
        self.floor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(stream)
            .copied()
    }

    fn raise(&self, stream: &StreamID, t: Duration) {
        let mut f = self.floor.lock().unwrap_or_else(|e| e.into_inner());
        let e = f.entry(stream.clone()).or_insert(t);
        *e = (*e).max(t);
    }
}

#[async_trait]
impl CDCCheckpointSaver for MonotonicSaver {
    async fn save_checkpoint(&self, checkpoint: &Checkpoint) -> anyhow::Result<()> {
        let floor = match self.floor(&checkpoint.stream_id) {
            Some(f) => f,
            None => {
                let loaded = self
                    .inner
                    .load_last_checkpoint(&checkpoint.stream_id)
                    .await?
                    .unwrap_or_default();
                self.raise(&checkpoint.stream_id, loaded);
                loaded
            }
        };
        if checkpoint.timestamp < floor {
            return Ok(());
        }
        self.inner.save_checkpoint(checkpoint).await?;
        self.raise(&checkpoint.stream_id, checkpoint.timestamp);
        Ok(())
    }

    async fn save_new_generation(&self, generation: &GenerationTimestamp) -> anyhow::Result<()> {
        self.inner.save_new_generation(generation).await
    }

    async fn load_last_generation(&self) -> anyhow::Result<Option<GenerationTimestamp>> {
        self.inner.load_last_generation().await
    }

    async fn load_last_checkpoint(&self, stream_id: &StreamID) -> anyhow::Result<Option<Duration>> {
        let t = self.inner.load_last_checkpoint(stream_id).await?;
        if let Some(t) = t {
            self.raise(stream_id, t);
        }
        Ok(t)
    }
}

/// A row handed to the smol side, with the channel its acknowledgement goes back on.
type Handoff = (RowEvent, async_channel::Sender<Result<(), PublishError>>);

/// An outbox event read from a CDC row, on its way from the library's (tokio) side to the
/// relay's. [`OutboxEvent`] shares its payload through a single-threaded `Rc`, so the payload
/// crosses as a `String` and the event is built on the relay's side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowEvent {
    id: EventId,
    aggregate_type: String,
    aggregate_id: AggregateId,
    seq: u64,
    event_type: EventType,
    payload: String,
    created_at: Timestamp,
}

impl RowEvent {
    /// The event as the relay publishes it.
    pub fn into_event(self) -> OutboxEvent {
        OutboxEvent {
            id: self.id,
            aggregate_type: self.aggregate_type.into(),
            aggregate_id: self.aggregate_id,
            seq: self.seq,
            event_type: self.event_type,
            payload: self.payload.into(),
            created_at: self.created_at,
        }
    }
}

/// Rows that were not outbox inserts, or lacked a column, with the reason.
pub type DeadLetters = Arc<Mutex<Vec<String>>>;

struct Forward {
    tx: async_channel::Sender<Handoff>,
    dead: DeadLetters,
}

#[async_trait]
impl ConsumerFactory for Forward {
    async fn new_consumer(&self) -> Box<dyn Consumer> {
        Box::new(Forward {
            tx: self.tx.clone(),
            dead: self.dead.clone(),
        })
    }
}

/// Reads the outbox columns of a CDC row.
pub fn event_from_row(row: &mut CDCRow<'_>) -> Result<RowEvent, String> {
    if !matches!(
        row.operation,
        OperationType::RowInsert | OperationType::RowUpdate
    ) {
        return Err(format!(
            "stream {} time {}: operation {:?} is not an outbox insert",
            row.stream_id, row.time, row.operation
        ));
    }
    let at = format!("stream {} time {}", row.stream_id, row.time);
    let mut take = |c: &str| {
        row.take_value(c)
            .ok_or_else(|| format!("{at}: column {c} is null or missing"))
    };
    let uuid = |v: CqlValue, c: &str| match v {
        CqlValue::Uuid(u) => Ok(u),
        other => Err(format!("column {c}: expected uuid, got {other:?}")),
    };
    let text = |v: CqlValue, c: &str| match v {
        CqlValue::Text(s) | CqlValue::Ascii(s) => Ok(s),
        other => Err(format!("column {c}: expected text, got {other:?}")),
    };
    let aggregate = uuid(take("aggregate_id")?, "aggregate_id")?;
    let seq = match take("seq")? {
        CqlValue::BigInt(n) if n >= 0 => n as u64,
        other => return Err(format!("column seq: expected bigint ≥ 0, got {other:?}")),
    };
    let id = uuid(take("id")?, "id")?;
    let aggregate_type = text(take("aggregate_type")?, "aggregate_type")?;
    let event_type = text(take("event_type")?, "event_type")?;
    let payload = text(take("payload")?, "payload")?;
    let created_at = match take("created_at")? {
        CqlValue::Timestamp(t) => Timestamp::from_millis(t.0),
        other => {
            return Err(format!(
                "column created_at: expected timestamp, got {other:?}"
            ));
        }
    };
    Ok(RowEvent {
        id: EventId(id),
        aggregate_type,
        aggregate_id: AggregateId(aggregate),
        seq,
        event_type: EventType::parse(&event_type)
            .ok_or_else(|| format!("column event_type: unknown {event_type:?}"))?,
        payload,
        created_at,
    })
}

#[async_trait]
impl Consumer for Forward {
    async fn consume_cdc(&mut self, mut data: CDCRow<'_>) -> anyhow::Result<()> {
        let event = match event_from_row(&mut data) {
            Ok(e) => e,
            Err(why) => {
                self.dead
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(why);
                return Ok(());
            }
        };
        let (ack_tx, ack_rx) = async_channel::bounded(1);
        self.tx
            .send((event, ack_tx))
            .await
            .map_err(|_| anyhow::anyhow!("the relay incarnation is gone"))?;
        match ack_rx.recv().await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::anyhow!("publish failed: {e}")),
            Err(_) => Err(anyhow::anyhow!("the relay incarnation is gone")),
        }
    }
}

/// The stream relay on the real `CDCLogReader`.
#[derive(Clone)]
pub struct LibraryRelay {
    name: String,
    session: Arc<Session>,
    config: StreamConfig,
    dead: DeadLetters,
    stop: (async_channel::Sender<()>, async_channel::Receiver<()>),
}

/// Stops a running [`LibraryRelay`] gracefully: `CDCLogReader::stop`, then its join.
#[derive(Clone, Debug)]
pub struct StopHandle(async_channel::Sender<()>);

impl StopHandle {
    /// Asks the running incarnation to stop. Its `run` future then resolves `Ok(())` once
    /// every stream reader finished its current window and the last rows were acknowledged.
    pub fn stop(&self) {
        let _ = self.0.try_send(());
    }
}

impl fmt::Debug for LibraryRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LibraryRelay")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish()
    }
}

impl LibraryRelay {
    /// A relay named `name` reading `orders_ks.outbox_messages` through `session` with `config`;
    /// an error if the library cannot do what `config` asks.
    pub fn new(name: &str, session: Arc<Session>, config: StreamConfig) -> Result<Self, String> {
        builder_plan(&config, false)?;
        Ok(LibraryRelay {
            name: name.into(),
            session,
            config,
            dead: DeadLetters::default(),
            stop: async_channel::bounded(1),
        })
    }

    /// A handle that stops the running incarnation gracefully (a drop of its future is a
    /// crash instead).
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.stop.0.clone())
    }

    /// Rows the consumer could not turn into outbox events.
    pub fn dead_letters(&self) -> Vec<String> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Relay for LibraryRelay {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn run(&self, ctx: RelayContext) -> LocalFuture<'static, Result<(), RelayError>> {
        let this = self.clone();
        Box::pin(async move {
            let resuming = if this.config.should_load_progress {
                ctx.checkpoints.load_generation().await?.is_some()
            } else {
                false
            };
            let plan = builder_plan(&this.config, resuming).map_err(RelayError::Other)?;
            let (tx, rx) = async_channel::bounded::<Handoff>(256);
            let factory = Arc::new(Forward {
                tx,
                dead: this.dead.clone(),
            });
            let now = ctx.clock.now();
            let session = this.session.clone();
            let build = async move {
                let mut b = CDCLogReaderBuilder::new()
                    .session(session.clone())
                    .keyspace(KEYSPACE)
                    .table_name(OUTBOX_TABLE)
                    .window_size(plan.window_size)
                    .safety_interval(plan.safety_interval)
                    .sleep_interval(plan.sleep_interval)
                    .pause_between_saves(plan.pause_between_saves)
                    .should_save_progress(plan.save_progress)
                    .should_load_progress(plan.load_progress)
                    .consumer_factory(factory);
                if let Some(back) = plan.look_back {
                    let start = now - back;
                    b = b.start_timestamp(Duration::from_millis(start.as_millis().max(0) as u64));
                }
                if plan.save_progress || plan.load_progress {
                    let table: Arc<dyn CDCCheckpointSaver> = Arc::new(
                        TableBackedCheckpointSaver::builder()
                            .session(session)
                            .keyspace(KEYSPACE)
                            .table_name(CHECKPOINT_TABLE)
                            .create_table(false)
                            .build()
                            .await?,
                    );
                    let saver = if plan.monotonic {
                        Arc::new(MonotonicSaver::new(table))
                    } else {
                        table
                    };
                    b = b.checkpoint_saver(saver);
                }
                b.build().await
            };
            let (mut reader, handle) = Compat::new(build)
                .await
                .map_err(|e| RelayError::Other(format!("CDCLogReader: {e:#}")))?;
            let publish = async {
                while let Ok((row, ack)) = rx.recv().await {
                    let event = row.into_event();
                    let r = ctx.publisher.publish(&event).await.map(drop);
                    let _ = ack.send(r).await;
                }
            };
            // The join: the handle resolves when every reader ended (after a stop, or on the
            // first error). Publishing goes on meanwhile, so the last windows are acknowledged.
            // The channel closes when the worker drops its consumers, just before the handle
            // resolves, so a finished publishing loop means "await the result", not an error.
            let mut handle = Box::pin(Compat::new(handle));
            let running = async {
                let mut publish = Box::pin(publish);
                match futures::future::select(handle.as_mut(), publish.as_mut()).await {
                    Either::Left((r, _)) => r,
                    Either::Right(((), _)) => handle.as_mut().await,
                }
            };
            let mut running = Box::pin(running);
            let stop = this.stop.1.clone();
            let outcome =
                match futures::future::select(running.as_mut(), Box::pin(stop.recv())).await {
                    Either::Left((outcome, _)) => outcome,
                    Either::Right(_) => {
                        // A graceful stop: each reader finishes its current window (and the final
                        // checkpoint save), then the handle resolves.
                        reader.stop();
                        running.await
                    }
                };
            drop(reader);
            outcome.map_err(|e| RelayError::Other(format!("CDCLogReader: {e:#}")))
        })
    }
}
