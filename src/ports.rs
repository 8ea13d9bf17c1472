//! The only seams between the pipeline and a world: [`Clock`], [`OutboxStore`],
//! [`CheckpointStore`] and [`Publisher`].
//!
//! The writer and the relays are written against these traits and nothing else, so the same code
//! runs in the simulated world (virtual clock, in-memory cluster and broker) and the live one
//! (system clock, `scylla`, `rdkafka`). The traits are shaped after scylla-cdc's own seams
//! (`CDCCheckpointSaver`, the generation fetcher, the stream reader's one query) so the live
//! adapters stay thin.
//!
//! Futures are `!Send` boxed futures ([`LocalFuture`]): every world drives the pipeline on a
//! single-threaded executor, and a relay is dropped (crashed) at any await point.
//!
//! Errors are small enums that say whether retrying can help ([`StoreError::is_transient`],
//! [`PublishError::is_transient`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::cdc::{LogPage, PageState, StreamGroup, StreamId};
use crate::model::{AggregateId, Cursor, EventId, OrderStatus, OutboxEvent, Timestamp};

/// A boxed, single-threaded future: what every port method returns.
pub type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Time as the pipeline sees it.
pub trait Clock {
    /// The current time.
    fn now(&self) -> Timestamp;
    /// Completes once `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> SleepFuture;
}

/// What [`Clock::sleep`] returns: the simulated clock's timer held inline (sleeping is the most
/// frequent await of a simulated run, a few per event, so it allocates nothing), or any other
/// clock's boxed future.
pub enum SleepFuture {
    /// A timer of the simulated clock.
    Sim(crate::sim::clock::Sleep),
    /// Any other clock's sleep.
    Boxed(LocalFuture<'static, ()>),
}

impl std::fmt::Debug for SleepFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SleepFuture::Sim(s) => s.fmt(f),
            SleepFuture::Boxed(_) => f.write_str("SleepFuture::Boxed"),
        }
    }
}

impl Future for SleepFuture {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        match &mut *self {
            SleepFuture::Sim(s) => Pin::new(s).poll(cx),
            SleepFuture::Boxed(b) => b.as_mut().poll(cx),
        }
    }
}

/// Why a database request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The coordinator gave up waiting for replicas (CQL `ReadTimeout`/`WriteTimeout`, or the
    /// driver's request timeout). Transient.
    Timeout,
    /// Not enough replicas alive, or no connection (CQL `Unavailable`, broken connection).
    /// Transient.
    Unavailable,
    /// The request can never succeed as sent (e.g. a CDC write "from the future"). Permanent.
    Rejected(String),
}

impl StoreError {
    /// Whether the same request may succeed if retried later.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Timeout | StoreError::Unavailable => true,
            StoreError::Rejected(_) => false,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Timeout => f.write_str("request timed out"),
            StoreError::Unavailable => f.write_str("cluster unavailable"),
            StoreError::Rejected(why) => write!(f, "rejected: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// How the write timestamp of a batch is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteTimestamp {
    /// The coordinator's clock (the scylla driver 1.x default).
    Coordinator,
    /// `USING TIMESTAMP t` from the client.
    Client(Timestamp),
}

/// The writer's logged batch: the order row's new state plus its outbox row, applied together or
/// not at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderBatch {
    /// The order's new status.
    pub status: OrderStatus,
    /// The outbox row; `created_at` is replaced by the batch's write timestamp.
    pub event: OutboxEvent,
    /// Where the write timestamp comes from.
    pub timestamp: WriteTimestamp,
}

/// What a successful batch reports back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The write timestamp the rows were stored with: the outbox row's `created_at` and the
    /// CDC log's `cdc$time`.
    pub created_at: Timestamp,
    /// When the write becomes readable, if the world knows (the simulation does; a live cluster
    /// does not say).
    pub visible_at: Option<Timestamp>,
    /// When its outbox and CDC log rows expire, if the world knows.
    pub expires_at: Option<Timestamp>,
    /// When the order's row expires unless written again (`Timestamp::MAX`: never), if the
    /// world knows.
    pub order_expires_at: Option<Timestamp>,
}

/// Where a polling scan starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanFrom {
    /// Every row.
    Beginning,
    /// Rows with `(created_at, id) > cursor`.
    After(Cursor),
    /// Rows with `created_at >= t`.
    AtOrAfter(Timestamp),
}

/// The cluster: the writer's batch, the polling relay's scan and the CDC source.
pub trait OutboxStore {
    /// Applies one logged batch (order row + outbox row).
    fn write(&self, batch: OrderBatch) -> LocalFuture<'_, Result<Committed, StoreError>>;

    /// A hint that `order` is written soon: the store may start loading what that write will
    /// touch. Changes nothing; by default it does nothing.
    fn prepare_write(&self, _order: AggregateId) {}

    /// Whether this store decides a write the moment it arrives and the client then only waits
    /// for the answer (the simulated cluster). Such a store implements [`write_settled`], and a
    /// driver of many concurrent writes can run them without a future each.
    ///
    /// [`write_settled`]: OutboxStore::write_settled
    fn settles_writes(&self) -> bool {
        false
    }

    /// For a store that [settles writes](OutboxStore::settles_writes): applies `batch` now and
    /// returns its outcome with how long the client waits for it. [`write`](OutboxStore::write)
    /// is exactly this followed by that wait. Any other store hands the batch back.
    fn write_settled(
        &self,
        batch: OrderBatch,
    ) -> Result<(Result<Committed, StoreError>, std::time::Duration), OrderBatch> {
        Err(batch)
    }

    /// `SELECT * FROM outbox_messages WHERE created_at … ALLOW FILTERING`, all pages of it, rows
    /// with `from` ≤ row and `created_at < until`, sorted by `(created_at, id)` client-side (CQL
    /// cannot order across partitions). `page_size` sets how many requests the scan takes.
    fn scan_outbox(
        &self,
        from: ScanFrom,
        until: Timestamp,
        page_size: usize,
    ) -> LocalFuture<'_, Result<Vec<OutboxEvent>, StoreError>>;

    /// `SELECT COUNT(*) FROM system.peers` (scylla-cdc runs it before each generation query).
    fn peer_count(&self) -> LocalFuture<'_, Result<usize, StoreError>>;

    /// Start of the generation operating at `t` (`time <= t ORDER BY time DESC LIMIT 1`).
    fn generation_at(&self, t: Timestamp)
    -> LocalFuture<'_, Result<Option<Timestamp>, StoreError>>;

    /// Start of the first generation after `g` (`time > g ORDER BY time ASC LIMIT 1`).
    fn next_generation(
        &self,
        g: Timestamp,
    ) -> LocalFuture<'_, Result<Option<Timestamp>, StoreError>>;

    /// Start of the earliest generation still listed.
    fn first_generation(&self) -> LocalFuture<'_, Result<Option<Timestamp>, StoreError>>;

    /// The stream groups (vnodes) of generation `g`, in `range_end` order.
    fn stream_groups(&self, g: Timestamp) -> LocalFuture<'_, Result<Vec<StreamGroup>, StoreError>>;

    /// One page of `SELECT * FROM <log> WHERE "cdc$stream_id" IN ? AND "cdc$time" >= from AND
    /// "cdc$time" < to`, resuming after `page` when given.
    fn read_log<'a>(
        &'a self,
        streams: &'a [StreamId],
        from: Timestamp,
        to: Timestamp,
        page: Option<PageState>,
        page_size: usize,
    ) -> LocalFuture<'a, Result<LogPage, StoreError>>;
}

/// Implements the listed [`OutboxStore`] methods by forwarding them to `self.$inner` — for port
/// wrappers (fault triggers, mutants, recorders) that intercept only a few methods.
///
/// ```ignore
/// impl OutboxStore for Recording {
///     outbox_sim::forward_outbox_store!(inner: write, scan_outbox, peer_count);
///     fn read_log<'a>(/* … */) { /* the intercepted method */ }
///     // …
/// }
/// ```
#[macro_export]
macro_rules! forward_outbox_store {
    ($inner:ident : $($method:ident),* $(,)?) => {
        $($crate::forward_outbox_store!(@one $inner $method);)*
    };
    (@one $inner:ident write) => {
        fn write(&self, batch: $crate::ports::OrderBatch) -> $crate::ports::LocalFuture<'_, Result<$crate::ports::Committed, $crate::ports::StoreError>> {
            self.$inner.write(batch)
        }
    };
    (@one $inner:ident scan_outbox) => {
        fn scan_outbox(
            &self,
            from: $crate::ports::ScanFrom,
            until: $crate::model::Timestamp,
            page_size: usize,
        ) -> $crate::ports::LocalFuture<'_, Result<Vec<$crate::model::OutboxEvent>, $crate::ports::StoreError>> {
            self.$inner.scan_outbox(from, until, page_size)
        }
    };
    (@one $inner:ident peer_count) => {
        fn peer_count(&self) -> $crate::ports::LocalFuture<'_, Result<usize, $crate::ports::StoreError>> {
            self.$inner.peer_count()
        }
    };
    (@one $inner:ident generation_at) => {
        fn generation_at(&self, t: $crate::model::Timestamp) -> $crate::ports::LocalFuture<'_, Result<Option<$crate::model::Timestamp>, $crate::ports::StoreError>> {
            self.$inner.generation_at(t)
        }
    };
    (@one $inner:ident next_generation) => {
        fn next_generation(&self, g: $crate::model::Timestamp) -> $crate::ports::LocalFuture<'_, Result<Option<$crate::model::Timestamp>, $crate::ports::StoreError>> {
            self.$inner.next_generation(g)
        }
    };
    (@one $inner:ident first_generation) => {
        fn first_generation(&self) -> $crate::ports::LocalFuture<'_, Result<Option<$crate::model::Timestamp>, $crate::ports::StoreError>> {
            self.$inner.first_generation()
        }
    };
    (@one $inner:ident stream_groups) => {
        fn stream_groups(&self, g: $crate::model::Timestamp) -> $crate::ports::LocalFuture<'_, Result<Vec<$crate::cdc::StreamGroup>, $crate::ports::StoreError>> {
            self.$inner.stream_groups(g)
        }
    };
    (@one $inner:ident read_log) => {
        fn read_log<'a>(
            &'a self,
            streams: &'a [$crate::cdc::StreamId],
            from: $crate::model::Timestamp,
            to: $crate::model::Timestamp,
            page: Option<$crate::cdc::PageState>,
            page_size: usize,
        ) -> $crate::ports::LocalFuture<'a, Result<$crate::cdc::LogPage, $crate::ports::StoreError>> {
            self.$inner.read_log(streams, from, to, page, page_size)
        }
    };
}

/// Durable relay progress, kept in the cluster (like scylla-cdc's `TableBackedCheckpointSaver`
/// table), so it survives relay crashes and is unreachable when the cluster is.
pub trait CheckpointStore {
    /// Saves the polling relay's cursor.
    fn save_cursor(&self, cursor: Cursor) -> LocalFuture<'_, Result<(), StoreError>>;
    /// Loads the polling relay's cursor.
    fn load_cursor(&self) -> LocalFuture<'_, Result<Option<Cursor>, StoreError>>;
    /// Saves the generation the stream reader is on (scylla-cdc's `stream_id = 0x00` row).
    fn save_generation(&self, generation: Timestamp) -> LocalFuture<'_, Result<(), StoreError>>;
    /// Loads the last saved generation.
    fn load_generation(&self) -> LocalFuture<'_, Result<Option<Timestamp>, StoreError>>;
    /// Saves one stream's progress: everything before `time` was consumed.
    fn save_stream(
        &self,
        stream: StreamId,
        time: Timestamp,
    ) -> LocalFuture<'_, Result<(), StoreError>>;
    /// Loads one stream's progress.
    fn load_stream(
        &self,
        stream: StreamId,
    ) -> LocalFuture<'_, Result<Option<Timestamp>, StoreError>>;
}

/// Where a record landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Delivery {
    /// Topic partition.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
}

/// Why a publish failed; hands back the event that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishError {
    /// The event that was not acknowledged (it may or may not have been appended).
    pub event: EventId,
    /// What went wrong.
    pub kind: PublishErrorKind,
}

/// The classes of publish failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishErrorKind {
    /// No acknowledgement within the delivery timeout (librdkafka `MessageTimedOut`). Transient;
    /// the record may have been appended.
    Timeout,
    /// A fatal producer error (e.g. `MSG_SIZE_TOO_LARGE`, fenced producer). Permanent.
    Fatal(String),
}

impl PublishError {
    /// Whether publishing the same event again may succeed.
    pub fn is_transient(&self) -> bool {
        match self.kind {
            PublishErrorKind::Timeout => true,
            PublishErrorKind::Fatal(_) => false,
        }
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            PublishErrorKind::Timeout => write!(f, "event {}: delivery timed out", self.event),
            PublishErrorKind::Fatal(why) => write!(f, "event {}: fatal: {why}", self.event),
        }
    }
}

impl std::error::Error for PublishError {}

/// The topic: key = `aggregate_id`, header `id` = event id, acknowledged once durable.
pub trait Publisher {
    /// Produces one record and waits for its acknowledgement.
    fn publish<'a>(
        &'a self,
        event: &'a OutboxEvent,
    ) -> LocalFuture<'a, Result<Delivery, PublishError>>;

    /// Produces several records concurrently (in order, as one producer keeps order per partition)
    /// and waits for every acknowledgement.
    fn publish_all<'a>(
        &'a self,
        events: &'a [OutboxEvent],
    ) -> LocalFuture<'a, Vec<Result<Delivery, PublishError>>> {
        Box::pin(futures::future::join_all(
            events.iter().map(|e| self.publish(e)),
        ))
    }
}
