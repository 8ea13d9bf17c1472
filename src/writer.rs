//! The order service: writes each order change and its outbox event as one logged batch.
//!
//! [`OrderWriter`] owns the per-aggregate sequence: the next event of an order gets `seq = last + 1`,
//! and `last` advances only when the batch is acknowledged, so committed events of an aggregate
//! are numbered 1, 2, 3… without gaps. A failed batch is reported (and recorded as
//! `WriteFailed`), never half-applied: the store applies both rows or neither. Transient failures
//! are retried with the same event id. Lifecycles are enforced:
//! `OrderCreated → OrderPaid → OrderShipped`, or `OrderCancelled` after created or paid.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use rand::Rng;

use crate::history::{History, OpKind};
use crate::model::{AggregateId, EventId, EventType, OutboxEvent, Timestamp};
use crate::ports::{Clock, Committed, OrderBatch, OutboxStore, StoreError, WriteTimestamp};
use crate::seed::{SimRng, uuid_v4};
use crate::table::PrefetchMap;

/// Default retries of a transiently failed batch.
pub const DEFAULT_WRITE_RETRIES: u32 = 3;
/// Default pause before retrying a failed batch.
pub const DEFAULT_WRITE_RETRY_BACKOFF_MS: u64 = 100;

/// How the writer stamps its batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterConfig {
    /// Send `USING TIMESTAMP` from the writer's clock instead of letting the coordinator stamp.
    pub client_timestamps: bool,
    /// Offset of the writer's clock from true time, µs.
    pub client_clock_skew_us: i64,
    /// Resolution of the writer's clock, µs (timestamps are truncated to it).
    pub client_timestamp_resolution_us: i64,
    /// Retries after a transient failure.
    pub retries: u32,
    /// Pause between retries.
    pub retry_backoff: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            client_timestamps: false,
            client_clock_skew_us: 0,
            client_timestamp_resolution_us: 1,
            retries: DEFAULT_WRITE_RETRIES,
            retry_backoff: Duration::from_millis(DEFAULT_WRITE_RETRY_BACKOFF_MS),
        }
    }
}

/// Why an event was not written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteFailure {
    /// The lifecycle forbids this event now (e.g. paid after shipped).
    InvalidTransition {
        /// The order.
        order: AggregateId,
        /// Its last event, if any.
        last: Option<EventType>,
        /// The refused event.
        next: EventType,
    },
    /// Another write of this order is in flight (the writer serialises each aggregate).
    Busy(AggregateId),
    /// The store failed the batch (after retries, if transient).
    Store(StoreError),
}

impl fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteFailure::InvalidTransition { order, last, next } => {
                write!(f, "order {order}: {next} cannot follow {last:?}")
            }
            WriteFailure::Busy(order) => write!(f, "order {order}: a write is already in flight"),
            WriteFailure::Store(e) => write!(f, "store: {e}"),
        }
    }
}

impl std::error::Error for WriteFailure {}

/// A write between its start and its result: the event, how it is stamped, attempts so far.
#[derive(Debug)]
struct PendingWrite {
    event: OutboxEvent,
    timestamp: Option<Timestamp>,
    late: Option<Duration>,
    attempt: u32,
}

/// A write in progress on a store that settles writes, waiting for its answer (or, after a
/// transient failure, for its retry).
#[derive(Debug)]
pub struct SettledWrite {
    write: PendingWrite,
    answer: Option<Result<Committed, StoreError>>,
}

impl SettledWrite {
    /// The order written.
    pub fn order(&self) -> AggregateId {
        self.write.event.aggregate_id
    }

    /// The event type written.
    pub fn event_type(&self) -> EventType {
        self.write.event.event_type
    }
}

/// Where a settled write stands after a step.
#[derive(Debug)]
pub enum SettledStep {
    /// Waiting until the time given (at or before now: resume at once).
    Wait(SettledWrite, Timestamp),
    /// Finished, as [`OrderWriter::write`] would have returned.
    Done(Result<OutboxEvent, WriteFailure>),
}

#[derive(Clone, Copy, Debug)]
struct Progress {
    last_seq: u64,
    last: Option<EventType>,
    busy: bool,
}

/// The order service's write path.
pub struct OrderWriter {
    store: Rc<dyn OutboxStore>,
    clock: Rc<dyn Clock>,
    history: History,
    rng: RefCell<SimRng>,
    // Point lookups only, so a hash map keeps runs deterministic.
    orders: RefCell<PrefetchMap<AggregateId, Progress>>,
    /// Finished orders by the time their `orders` row expires, when the writer forgets them.
    finished: RefCell<BinaryHeap<Reverse<(Timestamp, AggregateId)>>>,
    /// `"Order"`, the routing column of every event.
    aggregate_type: smol_str::SmolStr,
    config: WriterConfig,
    late_writes: Cell<Option<(f64, Duration)>>,
}

impl fmt::Debug for OrderWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrderWriter")
            .field("orders", &self.orders.borrow().len())
            .finish()
    }
}

/// The event's JSON payload, keys in order, assembled on the stack and copied once into its
/// shared buffer (no formatting machinery, no intermediate `String`: this runs once per
/// simulated event).
fn payload_json(order: AggregateId, event_type: EventType, seq: u64, amount_cents: u32) -> Rc<str> {
    let mut amount = itoa::Buffer::new();
    let amount = amount.format(amount_cents);
    let mut seq_text = itoa::Buffer::new();
    let seq_text = seq_text.format(seq);
    let mut id = uuid::Uuid::encode_buffer();
    let id = order.0.hyphenated().encode_lower(&mut id);
    let parts = [
        r#"{"amount_cents":"#,
        amount,
        r#","event":""#,
        event_type.as_str(),
        r#"","order_id":""#,
        id,
        r#"","seq":"#,
        seq_text,
        "}",
    ];
    // At most 16 + 10 + 10 + 14 + 14 + 36 + 8 + 20 + 1 = 129 bytes.
    let mut out = arrayvec::ArrayString::<160>::new();
    for p in parts {
        out.push_str(p);
    }
    Rc::from(out.as_str())
}

/// Whether an order's lifecycle ends with this event.
fn is_final(event: EventType) -> bool {
    matches!(event, EventType::OrderShipped | EventType::OrderCancelled)
}

fn allowed(last: Option<EventType>, next: EventType) -> bool {
    use EventType::*;
    matches!(
        (last, next),
        (None, OrderCreated)
            | (Some(OrderCreated), OrderPaid | OrderCancelled)
            | (Some(OrderPaid), OrderShipped | OrderCancelled)
    )
}

impl OrderWriter {
    /// A writer on `store`, recording commits in `history`, drawing ids from `rng`.
    pub fn new(
        store: Rc<dyn OutboxStore>,
        clock: Rc<dyn Clock>,
        history: History,
        rng: SimRng,
        config: WriterConfig,
    ) -> Self {
        OrderWriter {
            store,
            clock,
            history,
            rng: RefCell::new(rng),
            orders: RefCell::new(Default::default()),
            finished: RefCell::new(BinaryHeap::new()),
            aggregate_type: smol_str::SmolStr::new_static("Order"),
            config,
            late_writes: Cell::new(None),
        }
    }

    /// A hint that `order` is written next (or soon): start loading what its write will look up,
    /// here and in the store. Changes nothing else.
    pub fn prepare(&self, order: AggregateId) {
        self.orders.borrow().prefetch(&order);
        self.store.prepare_write(order);
    }

    /// A fresh order id.
    pub fn new_order(&self) -> AggregateId {
        AggregateId(uuid_v4(&mut self.rng.borrow_mut()))
    }

    /// Writes `event_type` for `order` with the writer's timestamp policy.
    pub async fn write(
        &self,
        order: AggregateId,
        event_type: EventType,
    ) -> Result<OutboxEvent, WriteFailure> {
        self.write_at(order, event_type, None).await
    }

    /// Writes `event_type` for `order`; `timestamp` forces `USING TIMESTAMP` (a late write).
    pub async fn write_at(
        &self,
        order: AggregateId,
        event_type: EventType,
        timestamp: Option<Timestamp>,
    ) -> Result<OutboxEvent, WriteFailure> {
        let mut write = self.begin(order, event_type, timestamp)?;
        let result = loop {
            let result = self.store.write(self.batch(&write)).await;
            if !self.retries(&mut write, &result) {
                break result;
            }
            self.clock.sleep(self.config.retry_backoff).await;
        };
        self.finish(write, result)
    }

    /// The writer's clock reading.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Whether the store decides each write as it arrives, so writes can be driven with
    /// [`start_settled`](OrderWriter::start_settled) instead of a future each.
    pub fn settles_writes(&self) -> bool {
        self.store.settles_writes()
    }

    /// Starts a write on a store that [settles writes](OrderWriter::settles_writes): what
    /// [`write`](OrderWriter::write) does up to its first wait, with the same effects in the same
    /// order. The caller resumes it with [`resume_settled`](OrderWriter::resume_settled) at the
    /// returned time.
    pub fn start_settled(&self, order: AggregateId, event_type: EventType) -> SettledStep {
        match self.begin(order, event_type, None) {
            Ok(write) => self.attempt_settled(write),
            Err(e) => SettledStep::Done(Err(e)),
        }
    }

    /// Resumes a settled write whose wait is over: a retry after a transient failure, or its
    /// result.
    pub fn resume_settled(&self, write: SettledWrite) -> SettledStep {
        match write.answer {
            None => self.attempt_settled(write.write),
            Some(result) => {
                let mut w = write.write;
                if self.retries(&mut w, &result) {
                    SettledStep::Wait(
                        SettledWrite {
                            write: w,
                            answer: None,
                        },
                        self.clock.now() + self.config.retry_backoff,
                    )
                } else {
                    SettledStep::Done(self.finish(w, result))
                }
            }
        }
    }

    fn attempt_settled(&self, write: PendingWrite) -> SettledStep {
        match self.store.write_settled(self.batch(&write)) {
            Ok((answer, wait)) => SettledStep::Wait(
                SettledWrite {
                    write,
                    answer: Some(answer),
                },
                self.clock.now() + wait,
            ),
            Err(_) => SettledStep::Done(self.finish(
                write,
                Err(StoreError::Rejected(
                    "the store does not settle writes on arrival".into(),
                )),
            )),
        }
    }

    /// Checks the order's lifecycle, claims its next sequence number and builds the event.
    fn begin(
        &self,
        order: AggregateId,
        event_type: EventType,
        timestamp: Option<Timestamp>,
    ) -> Result<PendingWrite, WriteFailure> {
        self.forget_expired();
        let seq = {
            let mut orders = self.orders.borrow_mut();
            let p = orders.get_or_insert_with(order, || Progress {
                last_seq: 0,
                last: None,
                busy: false,
            });
            if p.busy {
                return Err(WriteFailure::Busy(order));
            }
            if !allowed(p.last, event_type) {
                return Err(WriteFailure::InvalidTransition {
                    order,
                    last: p.last,
                    next: event_type,
                });
            }
            p.busy = true;
            p.last_seq + 1
        };
        let (id, amount) = {
            let mut rng = self.rng.borrow_mut();
            (
                EventId(uuid_v4(&mut rng)),
                rng.random_range(100..100_000u32),
            )
        };
        let payload = payload_json(order, event_type, seq, amount);
        let event = OutboxEvent {
            id,
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: order,
            seq,
            event_type,
            payload,
            created_at: Timestamp::MIN,
        };
        let late = match (timestamp, self.late_writes.get()) {
            (None, Some((p, lateness))) if self.rng.borrow_mut().random_bool(p.clamp(0.0, 1.0)) => {
                Some(lateness)
            }
            _ => None,
        };
        Ok(PendingWrite {
            event,
            timestamp,
            late,
            attempt: 0,
        })
    }

    /// The batch of the write's next attempt, stamped as the writer's policy says.
    fn batch(&self, write: &PendingWrite) -> OrderBatch {
        let timestamp = match (write.timestamp, write.late) {
            (Some(t), _) => WriteTimestamp::Client(t),
            (None, Some(lateness)) => WriteTimestamp::Client(self.clock.now() - lateness),
            (None, None) if self.config.client_timestamps => {
                let t = self
                    .clock
                    .now()
                    .offset_micros(self.config.client_clock_skew_us)
                    .0;
                let r = self.config.client_timestamp_resolution_us.max(1);
                WriteTimestamp::Client(Timestamp(t.div_euclid(r) * r))
            }
            (None, None) => WriteTimestamp::Coordinator,
        };
        OrderBatch {
            status: write.event.event_type.status(),
            event: write.event.clone(),
            timestamp,
        }
    }

    /// Whether a failed attempt is tried again (counting it).
    fn retries(&self, write: &mut PendingWrite, result: &Result<Committed, StoreError>) -> bool {
        match result {
            Err(e) if e.is_transient() && write.attempt < self.config.retries => {
                write.attempt += 1;
                true
            }
            _ => false,
        }
    }

    /// Releases the order and records the write's outcome.
    fn finish(
        &self,
        write: PendingWrite,
        result: Result<Committed, StoreError>,
    ) -> Result<OutboxEvent, WriteFailure> {
        let PendingWrite { event, late, .. } = write;
        let (order, seq, event_type) = (event.aggregate_id, event.seq, event.event_type);
        let now = self.clock.now();
        let mut orders = self.orders.borrow_mut();
        let p = orders.get_mut(&order).expect("registered above");
        p.busy = false;
        match result {
            Ok(committed) => {
                p.last_seq = seq;
                p.last = Some(event_type);
                if let (true, Some(expires_at)) = (is_final(event_type), committed.order_expires_at)
                    && expires_at != Timestamp::MAX
                {
                    self.finished
                        .borrow_mut()
                        .push(Reverse((expires_at, order)));
                }
                let mut e = event;
                e.created_at = committed.created_at;
                self.history.record(
                    now,
                    OpKind::Committed {
                        event: e.id,
                        aggregate: e.aggregate_id,
                        seq: e.seq,
                        write_ts: e.created_at,
                        visible_at: committed.visible_at.unwrap_or(now),
                        expires_at: committed.expires_at.unwrap_or(Timestamp::MAX),
                        late: late.is_some(),
                    },
                );
                Ok(e)
            }
            Err(err) => {
                self.history.record(
                    now,
                    OpKind::WriteFailed {
                        aggregate: order,
                        seq,
                        error: err.to_string(),
                    },
                );
                Err(WriteFailure::Store(err))
            }
        }
    }

    /// From now on, stamps each write with probability `p` as `USING TIMESTAMP now − lateness`
    /// (a late write); `None` switches it off.
    pub fn set_late_writes(&self, late: Option<(f64, Duration)>) {
        self.late_writes.set(late);
    }

    /// Forgets finished orders whose `orders` row has expired (`cluster.orders_ttl_s`): the
    /// table no longer holds them either, so the writer's memory is bounded by the TTL, not by
    /// the run's length.
    fn forget_expired(&self) {
        let now = self.clock.now();
        let mut finished = self.finished.borrow_mut();
        let mut orders = self.orders.borrow_mut();
        while let Some(Reverse((at, order))) = finished.peek().copied()
            && at <= now
        {
            finished.pop();
            if orders
                .get(&order)
                .is_some_and(|p| !p.busy && p.last.is_some_and(is_final))
            {
                orders.remove(&order);
            }
        }
    }

    /// Orders this writer holds (touched, and not finished with expired rows).
    pub fn order_count(&self) -> usize {
        self.orders.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::Seed;
    use crate::sim::SimBuilder;
    use crate::sim::scylla::Client;

    fn setup(sim: &crate::sim::Sim) -> Rc<OrderWriter> {
        Rc::new(OrderWriter::new(
            Rc::new(sim.store(Client::Writer)),
            sim.clock_port(),
            sim.history(),
            sim.rng("writer"),
            WriterConfig::default(),
        ))
    }

    /// A finished order is forgotten once its `orders` row expired (the table no longer holds
    /// it); an unfinished one, or one whose row lives on, is kept.
    #[test]
    fn finished_orders_are_forgotten_when_their_row_expires() {
        for (orders_ttl_s, kept) in [(0, 3), (5, 2)] {
            let mut b = SimBuilder::new();
            b.config_mut().cluster.orders_ttl_s = orders_ttl_s;
            let mut sim = b.build(Seed(1)).unwrap();
            let w = setup(&sim);
            let clock = sim.clock_port();
            let t = sim.spawn("writer", async move {
                let shipped = w.new_order();
                for e in [
                    EventType::OrderCreated,
                    EventType::OrderPaid,
                    EventType::OrderShipped,
                ] {
                    w.write(shipped, e).await.unwrap();
                }
                let open = w.new_order();
                w.write(open, EventType::OrderCreated).await.unwrap();
                clock.sleep(Duration::from_secs(6)).await;
                w.write(w.new_order(), EventType::OrderCreated)
                    .await
                    .unwrap();
                w.order_count()
            });
            assert_eq!(
                sim.block_on(t).unwrap(),
                kept,
                "orders_ttl_s {orders_ttl_s}"
            );
        }
    }

    #[test]
    fn the_payload_is_the_json_serde_would_write() {
        let order = AggregateId(uuid::Uuid::from_bytes([7; 16]));
        let expected = serde_json::json!({
            "order_id": order.0.to_string(),
            "event": "OrderPaid",
            "seq": 2,
            "amount_cents": 4_200,
        });
        let text = payload_json(order, EventType::OrderPaid, 2, 4_200);
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, expected);
        assert_eq!(&*text, expected.to_string());
        // The longest payload fits the stack buffer.
        let longest = payload_json(order, EventType::OrderCancelled, u64::MAX, u32::MAX);
        let parsed: serde_json::Value = serde_json::from_str(&longest).unwrap();
        assert_eq!(parsed["seq"], u64::MAX);
    }

    #[test]
    fn lifecycle_is_enforced_and_seq_has_no_gaps() {
        let mut sim = SimBuilder::new().build(Seed(1)).unwrap();
        let w = setup(&sim);
        let w2 = w.clone();
        let t = sim.spawn("writer", async move {
            let o = w2.new_order();
            let a = w2.write(o, EventType::OrderCreated).await.unwrap();
            let bad = w2.write(o, EventType::OrderShipped).await.unwrap_err();
            let b = w2.write(o, EventType::OrderPaid).await.unwrap();
            let c = w2.write(o, EventType::OrderShipped).await.unwrap();
            let after_end = w2.write(o, EventType::OrderCancelled).await.unwrap_err();
            (a.seq, b.seq, c.seq, bad, after_end)
        });
        let (a, b, c, bad, after_end) = sim.block_on(t).unwrap();
        assert_eq!((a, b, c), (1, 2, 3));
        assert!(matches!(
            bad,
            WriteFailure::InvalidTransition {
                next: EventType::OrderShipped,
                ..
            }
        ));
        assert!(matches!(after_end, WriteFailure::InvalidTransition { .. }));
        let commits = sim
            .history()
            .ops()
            .iter()
            .filter(|o| matches!(o.kind, OpKind::Committed { .. }))
            .count();
        assert_eq!(commits, 3);
    }

    #[test]
    fn a_rejected_write_is_reported_and_leaves_nothing_behind() {
        let mut sim = SimBuilder::new().build(Seed(2)).unwrap();
        let w = setup(&sim);
        let cluster = sim.cluster();
        let far_future = sim.now() + Duration::from_secs(60);
        let t = sim.spawn("writer", async move {
            let o = w.new_order();
            let r = w
                .write_at(o, EventType::OrderCreated, Some(far_future))
                .await;
            (o, r)
        });
        let (o, r) = sim.block_on(t).unwrap();
        match r {
            Err(WriteFailure::Store(StoreError::Rejected(why))) => {
                assert!(why.contains("from the future"), "{why}")
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        let s = cluster.state();
        assert!(s.tables.order(&o).is_none());
        assert_eq!(s.tables.outbox_len(), 0);
        assert!(s.log.is_empty());
        drop(s);
        let ops = sim.history();
        assert!(
            ops.ops()
                .iter()
                .any(|op| matches!(op.kind, OpKind::WriteFailed { seq: 1, .. }))
        );
    }

    #[test]
    fn transient_failures_are_retried_then_reported() {
        let mut sim = SimBuilder::new().build(Seed(3)).unwrap();
        let w = setup(&sim);
        sim.cluster().set_unavailable(true);
        let t = sim.spawn("writer", async move {
            let o = w.new_order();
            w.write(o, EventType::OrderCreated).await
        });
        let r = sim.block_on(t).unwrap();
        assert_eq!(r.unwrap_err(), WriteFailure::Store(StoreError::Unavailable));
        use crate::sim::scylla::QueryKind;
        assert_eq!(
            sim.cluster()
                .stats()
                .get(Client::Writer, QueryKind::Write)
                .queries,
            1 + DEFAULT_WRITE_RETRIES as u64
        );
    }
}
