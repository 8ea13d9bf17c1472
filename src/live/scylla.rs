//! The [`OutboxStore`] and [`CheckpointStore`] ports over the `scylla` driver.
//!
//! The driver needs tokio; every call is entered through [`async_compat::Compat`], so callers stay
//! on smol and nothing outside `live/` sees tokio. Each statement is prepared once per store and
//! every request (every page) is counted under the store's [`Client`] and a [`QueryKind`], the
//! same counters the simulated cluster keeps, so live and simulated runs report the same costs.
//!
//! Schema ([`schema_cql`]): keyspace `orders_ks` (vnodes), `orders`, `outbox_messages` (partition
//! key `aggregate_id`, clustering `seq`, CDC on), `poll_cursor` (the polling relay's cursor) and
//! `cdc_checkpoints` (scylla-cdc's `TableBackedCheckpointSaver` layout: one row per stream plus
//! the generation row `stream_id = 0x00`, so our stream relay and the library share it).
//!
//! Write timestamps: the batch is sent with `USING TIMESTAMP` = the writer's time truncated to
//! the millisecond, and `created_at` holds the same value, so `created_at`, `WRITETIME()` and
//! `cdc$time` agree exactly. Log rows whose columns do not make an outbox event are not dropped
//! silently: they are routed to [`ScyllaStore::dead_letters`] with the reason.

use std::cell::RefCell;
use std::fmt;
use std::ops::ControlFlow;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use async_compat::Compat;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::response::PagingState;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlTimeuuid};
use uuid::Uuid;

use crate::cdc::{CdcTime, LogPage, LogRow, Operation, PageState, StreamGroup, StreamId};
use crate::history::{CheckpointWhat, History, OpKind};
use crate::model::{AggregateId, Cursor, EventId, EventType, OutboxEvent, Timestamp};
use crate::ports::{
    CheckpointStore, Clock, Committed, LocalFuture, OrderBatch, OutboxStore, ScanFrom, StoreError,
    WriteTimestamp,
};
use crate::sim::scylla::{Client, QueryKind, QueryStats};

/// The keyspace of the outbox schema.
pub const KEYSPACE: &str = "orders_ks";
/// The CDC-enabled outbox table.
pub const OUTBOX_TABLE: &str = "outbox_messages";
/// The checkpoint table (scylla-cdc's layout).
pub const CHECKPOINT_TABLE: &str = "cdc_checkpoints";

/// Why the live world could not be set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LiveError {
    /// No connection within the timeout.
    Unreachable {
        /// What was dialled.
        target: String,
        /// Why it failed.
        reason: String,
    },
    /// A statement failed while setting up.
    Setup {
        /// The statement or step.
        what: String,
        /// The server's or driver's error.
        reason: String,
    },
}

impl fmt::Display for LiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LiveError::Unreachable { target, reason } => write!(f, "{target}: {reason}"),
            LiveError::Setup { what, reason } => write!(f, "{what}: {reason}"),
        }
    }
}

impl std::error::Error for LiveError {}

/// Runs `fut` (which needs tokio) from any executor, giving up after `timeout`.
pub(crate) async fn bounded<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    let fut = async { Some(Compat::new(fut).await) };
    let timer = async {
        smol::Timer::after(timeout).await;
        None
    };
    smol::future::or(fut, timer).await
}

/// Connects a session to `contact` (`host:port`), failing with [`LiveError::Unreachable`] after
/// `timeout`. `full_metadata` keeps the driver's default schema-metadata fetch.
pub async fn connect(
    contact: &str,
    timeout: Duration,
    full_metadata: bool,
) -> Result<Arc<Session>, LiveError> {
    let unreachable = |reason: String| LiveError::Unreachable {
        target: format!("ScyllaDB at {contact}"),
        reason,
    };
    let mut builder = SessionBuilder::new()
        .known_node(contact)
        .connection_timeout(timeout);
    if !full_metadata {
        builder = builder.fetch_schema_metadata(false);
    }
    match bounded(timeout, builder.build()).await {
        Some(Ok(s)) => Ok(Arc::new(s)),
        Some(Err(e)) => Err(unreachable(e.to_string())),
        None => Err(unreachable(format!(
            "no CQL session within {} s",
            timeout.as_secs_f64()
        ))),
    }
}

/// The schema statements, in order (keyspace with `replication_factor`, vnodes).
pub fn schema_cql(replication_factor: u32) -> Vec<String> {
    vec![
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {KEYSPACE} WITH replication = {{'class': 'NetworkTopologyStrategy', 'replication_factor': {replication_factor}}} AND tablets = {{'enabled': false}}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {KEYSPACE}.orders (id uuid PRIMARY KEY, status text, last_seq bigint)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {KEYSPACE}.{OUTBOX_TABLE} (aggregate_id uuid, seq bigint, id uuid, aggregate_type text, event_type text, payload text, created_at timestamp, PRIMARY KEY (aggregate_id, seq)) WITH cdc = {{'enabled': true}}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {KEYSPACE}.poll_cursor (relay text PRIMARY KEY, created_at_us bigint, id uuid)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {KEYSPACE}.{CHECKPOINT_TABLE} (stream_id blob PRIMARY KEY, generation timestamp, time timestamp)"
        ),
    ]
}

/// Creates the schema and waits for schema agreement.
pub async fn create_schema(
    session: &Session,
    replication_factor: u32,
    timeout: Duration,
) -> Result<(), LiveError> {
    for ddl in schema_cql(replication_factor) {
        match bounded(timeout, session.query_unpaged(ddl.as_str(), ())).await {
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                return Err(LiveError::Setup {
                    what: ddl,
                    reason: e.to_string(),
                });
            }
            None => {
                return Err(LiveError::Setup {
                    what: ddl,
                    reason: format!("no answer within {} s", timeout.as_secs_f64()),
                });
            }
        }
    }
    Ok(())
}

const OUTBOX_COLUMNS: &str =
    "aggregate_id, seq, id, aggregate_type, event_type, payload, created_at";

/// The statements a store prepares.
struct Statements {
    insert_order: PreparedStatement,
    insert_outbox: PreparedStatement,
    scan: PreparedStatement,
    read_log: PreparedStatement,
    generation_at: PreparedStatement,
    next_generation: PreparedStatement,
    streams: PreparedStatement,
    save_cursor: PreparedStatement,
    load_cursor: PreparedStatement,
    save_checkpoint: PreparedStatement,
    load_stream: PreparedStatement,
    load_generation: PreparedStatement,
}

/// The text of every statement a [`ScyllaStore`] sends, prepared or not (what a CQL server must
/// understand to serve it).
pub fn statement_texts() -> Vec<String> {
    vec![
        format!("INSERT INTO {KEYSPACE}.orders (id, status, last_seq) VALUES (?, ?, ?)"),
        format!("INSERT INTO {KEYSPACE}.{OUTBOX_TABLE} ({OUTBOX_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"),
        format!(
            "SELECT {OUTBOX_COLUMNS} FROM {KEYSPACE}.{OUTBOX_TABLE} WHERE created_at >= ? AND created_at < ? ALLOW FILTERING"
        ),
        format!(
            "SELECT \"cdc$stream_id\", \"cdc$time\", \"cdc$batch_seq_no\", \"cdc$operation\", \"cdc$end_of_batch\", \"cdc$ttl\", {OUTBOX_COLUMNS} FROM {KEYSPACE}.{OUTBOX_TABLE}_scylla_cdc_log WHERE \"cdc$stream_id\" IN ? AND \"cdc$time\" >= minTimeuuid(?) AND \"cdc$time\" < minTimeuuid(?)"
        ),
        "SELECT time FROM system_distributed.cdc_generation_timestamps WHERE key = 'timestamps' AND time <= ? ORDER BY time DESC LIMIT 1".into(),
        "SELECT time FROM system_distributed.cdc_generation_timestamps WHERE key = 'timestamps' AND time > ? ORDER BY time ASC LIMIT 1".into(),
        "SELECT range_end, streams FROM system_distributed.cdc_streams_descriptions_v2 WHERE time = ?".into(),
        format!("INSERT INTO {KEYSPACE}.poll_cursor (relay, created_at_us, id) VALUES (?, ?, ?)"),
        format!("SELECT created_at_us, id FROM {KEYSPACE}.poll_cursor WHERE relay = ?"),
        format!("UPDATE {KEYSPACE}.{CHECKPOINT_TABLE} SET generation = ?, time = ? WHERE stream_id = ?"),
        format!("SELECT time FROM {KEYSPACE}.{CHECKPOINT_TABLE} WHERE stream_id = ? LIMIT 1"),
        format!("SELECT generation FROM {KEYSPACE}.{CHECKPOINT_TABLE} WHERE stream_id = ? LIMIT 1"),
        "SELECT COUNT(*) FROM system.peers".into(),
        "SELECT time FROM system_distributed.cdc_generation_timestamps WHERE key = 'timestamps'".into(),
    ]
}

impl Statements {
    async fn prepare(session: &Session, timeout: Duration) -> Result<Self, LiveError> {
        let texts = statement_texts();
        let mut prepared = Vec::with_capacity(12);
        for text in &texts[..12] {
            match bounded(timeout, session.prepare(text.as_str())).await {
                Some(Ok(p)) => prepared.push(p),
                Some(Err(e)) => {
                    return Err(LiveError::Setup {
                        what: format!("PREPARE {text}"),
                        reason: e.to_string(),
                    });
                }
                None => {
                    return Err(LiveError::Setup {
                        what: format!("PREPARE {text}"),
                        reason: format!("no answer within {} s", timeout.as_secs_f64()),
                    });
                }
            }
        }
        let mut it = prepared.into_iter();
        let mut next = || it.next().expect("12 statements");
        Ok(Statements {
            insert_order: next(),
            insert_outbox: next(),
            scan: next(),
            read_log: next(),
            generation_at: next(),
            next_generation: next(),
            streams: next(),
            save_cursor: next(),
            load_cursor: next(),
            save_checkpoint: next(),
            load_stream: next(),
            load_generation: next(),
        })
    }
}

/// Maps a driver error to the port's classes (the same split scylla-cdc uses for retries).
pub fn store_error(e: &ExecutionError) -> StoreError {
    match e {
        ExecutionError::RequestTimeout(_) => StoreError::Timeout,
        ExecutionError::ConnectionPoolError(_) | ExecutionError::EmptyPlan => {
            StoreError::Unavailable
        }
        ExecutionError::LastAttemptError(a) => match a {
            RequestAttemptError::DbError(db, _) => match db {
                DbError::ReadTimeout { .. } | DbError::WriteTimeout { .. } => StoreError::Timeout,
                DbError::Unavailable { .. }
                | DbError::Overloaded
                | DbError::IsBootstrapping
                | DbError::RateLimitReached { .. } => StoreError::Unavailable,
                _ => StoreError::Rejected(e.to_string()),
            },
            RequestAttemptError::BrokenConnectionError(_)
            | RequestAttemptError::UnableToAllocStreamId => StoreError::Unavailable,
            _ => StoreError::Rejected(e.to_string()),
        },
        _ => StoreError::Rejected(e.to_string()),
    }
}

/// A client's session on a live cluster: the [`OutboxStore`] port.
#[derive(Clone)]
pub struct ScyllaStore {
    session: Arc<Session>,
    st: Arc<Statements>,
    client: Client,
    timeout: Duration,
    stats: Rc<RefCell<QueryStats>>,
    dead_letters: Rc<RefCell<Vec<String>>>,
}

impl fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScyllaStore")
            .field("client", &self.client)
            .finish()
    }
}

type OutboxRow = (
    Uuid,
    i64,
    Option<Uuid>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<CqlTimestamp>,
);

type LogTuple = (
    Vec<u8>,
    CqlTimeuuid,
    i32,
    i8,
    Option<bool>,
    Option<i64>,
    Uuid,
    i64,
    Option<Uuid>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<CqlTimestamp>,
);

fn outbox_event(r: OutboxRow) -> Result<OutboxEvent, String> {
    let (aggregate, seq, id, aggregate_type, event_type, payload, created_at) = r;
    let missing = |c: &str| format!("outbox row {aggregate}/{seq}: column {c} is null");
    let event_type = event_type.ok_or_else(|| missing("event_type"))?;
    Ok(OutboxEvent {
        id: EventId(id.ok_or_else(|| missing("id"))?),
        aggregate_type: aggregate_type
            .ok_or_else(|| missing("aggregate_type"))?
            .into(),
        aggregate_id: AggregateId(aggregate),
        seq: u64::try_from(seq).map_err(|_| format!("outbox row {aggregate}: seq {seq} < 0"))?,
        event_type: EventType::parse(&event_type).ok_or_else(|| {
            format!("outbox row {aggregate}/{seq}: unknown event_type {event_type:?}")
        })?,
        payload: payload.ok_or_else(|| missing("payload"))?.into(),
        created_at: Timestamp::from_millis(created_at.ok_or_else(|| missing("created_at"))?.0),
    })
}

fn log_row(r: LogTuple) -> Result<LogRow, String> {
    let (stream, time, batch_seq_no, op, end_of_batch, ttl, a, seq, id, at, et, p, created) = r;
    let stream_id = StreamId(
        stream
            .as_slice()
            .try_into()
            .map_err(|_| format!("cdc$stream_id has {} bytes, not 16", stream.len()))?,
    );
    let uuid = Uuid::from(time);
    let time = CdcTime::from_uuid(uuid).ok_or_else(|| format!("cdc$time {uuid} is not v1"))?;
    let operation = match op {
        1 => Operation::Update,
        2 => Operation::Insert,
        other => return Err(format!("cdc$operation {other} is not an outbox insert")),
    };
    Ok(LogRow {
        stream_id,
        time,
        batch_seq_no,
        operation,
        end_of_batch: end_of_batch.unwrap_or(false),
        ttl,
        event: outbox_event((a, seq, id, at, et, p, created))?,
    })
}

impl ScyllaStore {
    /// Prepares the store's statements on `session`; requests are counted under `client` in
    /// `stats`. Each request gives up after `timeout` (the driver's own timeout also applies).
    pub async fn new(
        session: Arc<Session>,
        client: Client,
        timeout: Duration,
        stats: Rc<RefCell<QueryStats>>,
    ) -> Result<Self, LiveError> {
        let st = Arc::new(Statements::prepare(&session, timeout).await?);
        Ok(ScyllaStore {
            session,
            st,
            client,
            timeout,
            stats,
            dead_letters: Rc::default(),
        })
    }

    /// The same session and statements, counted under another client.
    pub fn for_client(&self, client: Client) -> Self {
        ScyllaStore {
            client,
            ..self.clone()
        }
    }

    /// The session.
    pub fn session(&self) -> Arc<Session> {
        self.session.clone()
    }

    /// Requests counted so far (every client of this store's counters).
    pub fn stats(&self) -> QueryStats {
        self.stats.borrow().clone()
    }

    /// Rows that could not be read as outbox events, with the reason.
    pub fn dead_letters(&self) -> Vec<String> {
        self.dead_letters.borrow().clone()
    }

    fn count(&self, kind: QueryKind, rows: usize) {
        self.stats.borrow_mut().add(self.client, kind, rows);
    }

    async fn run<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, ExecutionError>>,
    ) -> Result<T, StoreError> {
        match bounded(self.timeout, fut).await {
            Some(r) => r.map_err(|e| store_error(&e)),
            None => Err(StoreError::Timeout),
        }
    }

    /// Every page of a prepared read, decoded as `R`, counted as `kind`.
    async fn read_all<R, V>(
        &self,
        kind: QueryKind,
        stmt: &PreparedStatement,
        values: V,
        page_size: usize,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
        V: scylla::serialize::row::SerializeRow + Clone,
    {
        let mut stmt = stmt.clone();
        stmt.set_page_size(i32::try_from(page_size.max(1)).unwrap_or(i32::MAX));
        let mut paging = PagingState::start();
        let mut out = Vec::new();
        loop {
            let (result, next) = self
                .run(
                    self.session
                        .execute_single_page(&stmt, values.clone(), paging),
                )
                .await
                .inspect_err(|_| self.count(kind, 0))?;
            let rows = result
                .into_rows_result()
                .map_err(|e| StoreError::Rejected(e.to_string()))?;
            let before = out.len();
            for r in rows
                .rows::<R>()
                .map_err(|e| StoreError::Rejected(e.to_string()))?
            {
                out.push(r.map_err(|e| StoreError::Rejected(e.to_string()))?);
            }
            self.count(kind, out.len() - before);
            match next.into_paging_control_flow() {
                ControlFlow::Break(()) => return Ok(out),
                ControlFlow::Continue(p) => paging = p,
            }
        }
    }

    async fn read_timestamp(
        &self,
        kind: QueryKind,
        stmt: &PreparedStatement,
        t: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        let rows: Vec<(CqlTimestamp,)> = self
            .read_all(kind, stmt, (CqlTimestamp(t.as_millis()),), 1)
            .await?;
        Ok(rows.first().map(|(t,)| Timestamp::from_millis(t.0)))
    }

    fn route<T>(&self, r: Result<T, String>) -> Option<T> {
        r.map_err(|why| self.dead_letters.borrow_mut().push(why))
            .ok()
    }
}

impl OutboxStore for ScyllaStore {
    fn write(&self, batch: OrderBatch) -> LocalFuture<'_, Result<Committed, StoreError>> {
        Box::pin(async move {
            let t = match batch.timestamp {
                WriteTimestamp::Client(t) => t,
                WriteTimestamp::Coordinator => crate::live::WallClock.now(),
            }
            .floor_ms();
            let mut event = batch.event;
            event.created_at = t;
            let mut b = Batch::new(BatchType::Logged);
            b.append_statement(self.st.insert_order.clone());
            b.append_statement(self.st.insert_outbox.clone());
            b.set_timestamp(Some(t.as_micros()));
            let seq = i64::try_from(event.seq).unwrap_or(i64::MAX);
            let values = (
                (event.aggregate_id.0, format!("{:?}", batch.status), seq),
                (
                    event.aggregate_id.0,
                    seq,
                    event.id.0,
                    event.aggregate_type.to_string(),
                    event.event_type.as_str(),
                    event.payload.to_string(),
                    CqlTimestamp(t.as_millis()),
                ),
            );
            self.count(QueryKind::Write, 0);
            self.run(self.session.batch(&b, values)).await?;
            Ok(Committed {
                created_at: t,
                visible_at: None,
                expires_at: None,
                order_expires_at: None,
            })
        })
    }

    fn scan_outbox(
        &self,
        from: ScanFrom,
        until: Timestamp,
        page_size: usize,
    ) -> LocalFuture<'_, Result<Vec<OutboxEvent>, StoreError>> {
        Box::pin(async move {
            let lower = match from {
                ScanFrom::Beginning => Timestamp::from_millis(0),
                ScanFrom::After(c) => c.created_at.floor_ms(),
                ScanFrom::AtOrAfter(t) => t.floor_ms(),
            };
            let until_ms = CqlTimestamp(until.as_millis() + i64::from(until.floor_ms() != until));
            let rows: Vec<OutboxRow> = self
                .read_all(
                    QueryKind::OutboxScan,
                    &self.st.scan,
                    (CqlTimestamp(lower.as_millis()), until_ms),
                    page_size,
                )
                .await?;
            let mut events: Vec<OutboxEvent> = rows
                .into_iter()
                .filter_map(|r| self.route(outbox_event(r)))
                .filter(|e| e.created_at < until)
                .filter(|e| match from {
                    ScanFrom::Beginning => true,
                    ScanFrom::After(c) => (e.created_at, e.id) > (c.created_at, c.id),
                    ScanFrom::AtOrAfter(t) => e.created_at >= t,
                })
                .collect();
            events.sort_by_key(|e| (e.created_at, e.id));
            Ok(events)
        })
    }

    fn peer_count(&self) -> LocalFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            self.count(QueryKind::GenerationMeta, 1);
            let r = self
                .run(
                    self.session
                        .query_unpaged("SELECT COUNT(*) FROM system.peers", ()),
                )
                .await?;
            let rows = r
                .into_rows_result()
                .map_err(|e| StoreError::Rejected(e.to_string()))?;
            let (n,): (i64,) = rows
                .single_row()
                .map_err(|e| StoreError::Rejected(e.to_string()))?;
            Ok(usize::try_from(n).unwrap_or(0))
        })
    }

    fn generation_at(
        &self,
        t: Timestamp,
    ) -> LocalFuture<'_, Result<Option<Timestamp>, StoreError>> {
        Box::pin(self.read_timestamp(QueryKind::GenerationMeta, &self.st.generation_at, t))
    }

    fn next_generation(
        &self,
        g: Timestamp,
    ) -> LocalFuture<'_, Result<Option<Timestamp>, StoreError>> {
        Box::pin(self.read_timestamp(QueryKind::GenerationMeta, &self.st.next_generation, g))
    }

    fn first_generation(&self) -> LocalFuture<'_, Result<Option<Timestamp>, StoreError>> {
        Box::pin(async move {
            self.count(QueryKind::GenerationMeta, 0);
            let r = self
                .run(self.session.query_unpaged(
                    "SELECT time FROM system_distributed.cdc_generation_timestamps WHERE key = 'timestamps'",
                    (),
                ))
                .await?;
            let rows = r
                .into_rows_result()
                .map_err(|e| StoreError::Rejected(e.to_string()))?;
            let mut first = None;
            for row in rows
                .rows::<(CqlTimestamp,)>()
                .map_err(|e| StoreError::Rejected(e.to_string()))?
            {
                let (t,) = row.map_err(|e| StoreError::Rejected(e.to_string()))?;
                first = Some(first.map_or(t.0, |f: i64| f.min(t.0)));
            }
            Ok(first.map(Timestamp::from_millis))
        })
    }

    fn stream_groups(&self, g: Timestamp) -> LocalFuture<'_, Result<Vec<StreamGroup>, StoreError>> {
        Box::pin(async move {
            let rows: Vec<(i64, Vec<Vec<u8>>)> = self
                .read_all(
                    QueryKind::StreamMeta,
                    &self.st.streams,
                    (CqlTimestamp(g.as_millis()),),
                    5_000,
                )
                .await?;
            let mut groups = Vec::with_capacity(rows.len());
            for (range_end, streams) in rows {
                let streams = streams
                    .iter()
                    .map(|s| s.as_slice().try_into().map(StreamId))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| StoreError::Rejected("a stream id is not 16 bytes".into()))?;
                groups.push(StreamGroup { range_end, streams });
            }
            groups.sort_by_key(|g| g.range_end);
            Ok(groups)
        })
    }

    fn read_log<'a>(
        &'a self,
        streams: &'a [StreamId],
        from: Timestamp,
        to: Timestamp,
        _page: Option<PageState>,
        page_size: usize,
    ) -> LocalFuture<'a, Result<LogPage, StoreError>> {
        // Every page of the window is read here (the driver's paging state is opaque), so the
        // port's own page state is never handed out.
        Box::pin(async move {
            let ids: Vec<Vec<u8>> = streams.iter().map(|s| s.0.to_vec()).collect();
            let tuples: Vec<LogTuple> = self
                .read_all(
                    QueryKind::LogRead,
                    &self.st.read_log,
                    (
                        ids,
                        CqlTimestamp(from.as_millis()),
                        CqlTimestamp(to.as_millis()),
                    ),
                    page_size,
                )
                .await?;
            let rows = tuples
                .into_iter()
                .filter_map(|t| self.route(log_row(t)))
                .collect();
            Ok(LogPage { rows, next: None })
        })
    }
}

/// The relay checkpoint table on a live cluster, as one relay incarnation sees it; saves and
/// loads are recorded in `history` like the simulated table's.
#[derive(Clone, Debug)]
pub struct ScyllaCheckpoints {
    store: ScyllaStore,
    history: History,
    incarnation: u32,
    relay: String,
}

impl ScyllaCheckpoints {
    /// The checkpoint rows of relay `relay` (the cursor's key), seen by `incarnation`.
    pub fn new(store: ScyllaStore, history: History, incarnation: u32, relay: &str) -> Self {
        ScyllaCheckpoints {
            store: store.for_client(Client::Relay),
            history,
            incarnation,
            relay: relay.into(),
        }
    }

    fn saved(&self, what: CheckpointWhat, position: Timestamp) {
        self.history.record(
            crate::live::WallClock.now(),
            OpKind::CheckpointSaved {
                what,
                position,
                incarnation: self.incarnation,
            },
        );
    }

    fn loaded(&self, what: CheckpointWhat, position: Option<Timestamp>) {
        self.history.record(
            crate::live::WallClock.now(),
            OpKind::CheckpointLoaded {
                what,
                position,
                incarnation: self.incarnation,
            },
        );
    }

    async fn save_row(
        &self,
        stream: Vec<u8>,
        generation: Option<Timestamp>,
        time: Timestamp,
    ) -> Result<(), StoreError> {
        let s = &self.store;
        s.count(QueryKind::CheckpointWrite, 0);
        s.run(s.session.execute_unpaged(
            &s.st.save_checkpoint,
            (
                generation.map(|g| CqlTimestamp(g.as_millis())),
                CqlTimestamp(time.as_millis()),
                stream,
            ),
        ))
        .await
        .map(drop)
    }
}

impl CheckpointStore for ScyllaCheckpoints {
    fn save_cursor(&self, cursor: Cursor) -> LocalFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let s = &self.store;
            s.count(QueryKind::CheckpointWrite, 0);
            s.run(s.session.execute_unpaged(
                &s.st.save_cursor,
                (
                    self.relay.as_str(),
                    cursor.created_at.as_micros(),
                    cursor.id.0,
                ),
            ))
            .await?;
            self.saved(CheckpointWhat::Cursor, cursor.created_at);
            Ok(())
        })
    }

    fn load_cursor(&self) -> LocalFuture<'_, Result<Option<Cursor>, StoreError>> {
        Box::pin(async move {
            let rows: Vec<(Option<i64>, Option<Uuid>)> = self
                .store
                .read_all(
                    QueryKind::CheckpointRead,
                    &self.store.st.load_cursor,
                    (self.relay.as_str(),),
                    1,
                )
                .await?;
            let cursor = rows.first().and_then(|(t, id)| {
                Some(Cursor {
                    created_at: Timestamp((*t)?),
                    id: EventId((*id)?),
                })
            });
            self.loaded(CheckpointWhat::Cursor, cursor.map(|c| c.created_at));
            Ok(cursor)
        })
    }

    fn save_generation(&self, generation: Timestamp) -> LocalFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.save_row(
                vec![0],
                Some(generation),
                Timestamp::from_millis(i64::MAX / 1_000),
            )
            .await?;
            self.saved(CheckpointWhat::Generation, generation);
            Ok(())
        })
    }

    fn load_generation(&self) -> LocalFuture<'_, Result<Option<Timestamp>, StoreError>> {
        Box::pin(async move {
            let rows: Vec<(Option<CqlTimestamp>,)> = self
                .store
                .read_all(
                    QueryKind::CheckpointRead,
                    &self.store.st.load_generation,
                    (vec![0u8],),
                    1,
                )
                .await?;
            let g = rows
                .first()
                .and_then(|(g,)| *g)
                .map(|g| Timestamp::from_millis(g.0));
            self.loaded(CheckpointWhat::Generation, g);
            Ok(g)
        })
    }

    fn save_stream(
        &self,
        stream: StreamId,
        time: Timestamp,
    ) -> LocalFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            // Truncated to the millisecond (the column's precision): never later than asked.
            self.save_row(stream.0.to_vec(), None, time).await?;
            self.saved(CheckpointWhat::Stream(stream), time.floor_ms());
            Ok(())
        })
    }

    fn load_stream(
        &self,
        stream: StreamId,
    ) -> LocalFuture<'_, Result<Option<Timestamp>, StoreError>> {
        Box::pin(async move {
            let rows: Vec<(Option<CqlTimestamp>,)> = self
                .store
                .read_all(
                    QueryKind::CheckpointRead,
                    &self.store.st.load_stream,
                    (stream.0.to_vec(),),
                    1,
                )
                .await?;
            let t = rows
                .first()
                .and_then(|(t,)| *t)
                .map(|t| Timestamp::from_millis(t.0));
            self.loaded(CheckpointWhat::Stream(stream), t);
            Ok(t)
        })
    }
}
