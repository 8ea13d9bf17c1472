//! The simulated Kafka/Redpanda broker: one topic, keyed partitioning, offsets, idempotent
//! producer sessions, and injectable produce faults.
//!
//! Partitioning is Kafka's default for keyed records: `toPositive(murmur2(key)) % partitions`
//! over the key's UTF-8 bytes. A [`SimProducer`] is one producer session (one producer id, as a
//! relay incarnation has): it retries retriable errors internally until the delivery timeout,
//! like librdkafka, and with idempotence on the broker drops a retried batch it already appended
//! (same producer id, partition and sequence number). A new session has a new producer id, so a
//! relay that re-sends after a restart appends again: the duplicate a crash explains.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::history::{History, OpKind};
use crate::model::{AggregateId, OutboxEvent, Timestamp};
use crate::ports::{Clock, Delivery, LocalFuture, PublishError, PublishErrorKind, Publisher};
use crate::seed::SimRng;
use crate::sim::clock::Parked;
use crate::sim::scylla::ms;

/// Kafka's `Utils.murmur2` (seed `0x9747b28c`), as the Java client's default partitioner uses it.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's default partition for a keyed record.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions
}

/// The record key of an event: the aggregate id as text.
pub fn record_key(aggregate: AggregateId) -> String {
    aggregate.0.to_string()
}

/// Settings of the simulated broker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Topic partitions.
    pub partitions: u32,
    /// Time from produce to acknowledgement (acks=all).
    pub ack_latency_ms: i64,
    /// librdkafka `message.timeout.ms`: a record not acknowledged by then fails with a timeout.
    pub delivery_timeout_ms: i64,
    /// librdkafka `retry.backoff.ms`.
    pub retry_backoff_ms: i64,
    /// `enable.idempotence`.
    pub idempotent: bool,
    /// The topic's `retention.ms`: records appended longer ago are deleted (their offsets
    /// stay used).
    pub retention_ms: i64,
}

/// Default topic partitions.
pub const DEFAULT_PARTITIONS: u32 = 6;
/// Default acknowledgement latency.
pub const DEFAULT_ACK_LATENCY_MS: i64 = 2;
/// librdkafka's default `message.timeout.ms` (300 s).
pub const DEFAULT_DELIVERY_TIMEOUT_MS: i64 = 300_000;
/// librdkafka's default `retry.backoff.ms`.
pub const DEFAULT_RETRY_BACKOFF_MS: i64 = 100;
/// Kafka's default topic `retention.ms` (7 days).
pub const DEFAULT_RETENTION_MS: i64 = 7 * 24 * 3_600_000;

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            partitions: DEFAULT_PARTITIONS,
            ack_latency_ms: DEFAULT_ACK_LATENCY_MS,
            delivery_timeout_ms: DEFAULT_DELIVERY_TIMEOUT_MS,
            retry_backoff_ms: DEFAULT_RETRY_BACKOFF_MS,
            idempotent: true,
            retention_ms: DEFAULT_RETENTION_MS,
        }
    }
}

/// Injected broker faults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BrokerFaults {
    /// The broker is down: every attempt fails and is retried.
    pub down: bool,
    /// Probability that an attempt fails retriably before anything is appended.
    pub retriable_error_probability: f64,
    /// Probability that an attempt is appended but its acknowledgement is lost (the client
    /// retries; only idempotence prevents a duplicate).
    pub lost_ack_probability: f64,
    /// Probability that an attempt fails fatally.
    pub fatal_error_probability: f64,
    /// Extra acknowledgement latency.
    pub slow_ack_ms: i64,
}

/// One appended record. The key and headers are derived from the value on demand (they are
/// fixed functions of it), so a stored record costs one event, not four more allocations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Offset in its partition.
    pub offset: u64,
    /// The event (the value).
    pub value: OutboxEvent,
    /// Broker append time (`LogAppendTime`).
    pub append_time: Timestamp,
    /// Producer id of the session that appended it.
    pub producer_id: u64,
}

impl Record {
    /// Record key (`aggregate_id` as text).
    pub fn key(&self) -> String {
        record_key(self.value.aggregate_id)
    }

    /// Headers; `id` holds the event id.
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        vec![("id".to_string(), self.value.id.0.to_string().into_bytes())]
    }
}

/// What the broker remembers of one producer's sequence on one partition: the next sequence
/// number it will append, the offsets of those appended (Kafka keeps only five in-flight batches
/// and answers older retries with DUPLICATE_SEQUENCE_NUMBER, which clients treat as success; the
/// model keeps them all to hand back the offset), and numbers the producer gave up on.
#[derive(Debug, Default)]
struct Sequence {
    next: u64,
    /// (sequence number, offset, append time) in sequence order (appends of one producer and
    /// partition happen in sequence order); forgotten once older than the delivery timeout,
    /// after which the producer has given up on retrying it.
    appended: VecDeque<(u64, u64, Timestamp)>,
    abandoned: std::collections::BTreeSet<u64>,
}

impl Sequence {
    /// The offset `seq` was appended at, if it is remembered.
    fn appended_offset(&self, seq: u64) -> Option<u64> {
        // The usual attempt is a new sequence number, past the newest one appended.
        if self.appended.back().is_none_or(|&(last, _, _)| seq > last) {
            return None;
        }
        self.position(seq).ok().map(|i| self.appended[i].1)
    }

    /// Where `seq` is in `appended` (`Ok`), or where it would go (`Err`).
    fn position(&self, seq: u64) -> Result<usize, usize> {
        let i = self.appended.partition_point(|&(s, _, _)| s < seq);
        match self.appended.get(i) {
            Some(&(s, _, _)) if s == seq => Ok(i),
            _ => Err(i),
        }
    }

    fn record_append(&mut self, seq: u64, offset: u64, at: Timestamp) {
        match self.appended.back() {
            Some(&(last, _, _)) if seq <= last => match self.position(seq) {
                Ok(i) => self.appended[i] = (seq, offset, at),
                Err(i) => self.appended.insert(i, (seq, offset, at)),
            },
            _ => self.appended.push_back((seq, offset, at)),
        }
    }
}

/// Records per chunk of a partition's log.
const CHUNK: usize = 1_024;

/// A partition's log: appended at the back, trimmed at the front (retention), in fixed-size
/// chunks, so a growing log never copies the records it already holds (a contiguous buffer
/// would, at every doubling).
#[derive(Debug, Default)]
struct PartitionLog {
    chunks: VecDeque<VecDeque<Record>>,
    len: usize,
}

impl PartitionLog {
    fn push_back(&mut self, r: Record) {
        match self.chunks.back_mut() {
            Some(c) if c.len() < CHUNK => c.push_back(r),
            _ => {
                let mut c = VecDeque::with_capacity(CHUNK);
                c.push_back(r);
                self.chunks.push_back(c);
            }
        }
        self.len += 1;
    }

    fn front(&self) -> Option<&Record> {
        self.chunks.front().and_then(VecDeque::front)
    }

    fn pop_front(&mut self) {
        if let Some(c) = self.chunks.front_mut() {
            c.pop_front();
            self.len -= 1;
            // An emptied chunk goes; the next push starts a new one.
            if c.is_empty() {
                self.chunks.pop_front();
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Record> {
        self.chunks.iter().flatten()
    }
}

impl Drop for PartitionLog {
    /// Releasing a record releases its payload, whose count was last touched when the record
    /// was appended: start loading the counts a few records ahead.
    fn drop(&mut self) {
        for chunk in &mut self.chunks {
            while let Some(r) = chunk.pop_front() {
                if let Some(ahead) = chunk.get(PAYLOAD_AHEAD) {
                    crate::prefetch::prefetch_counts(&ahead.value.payload);
                }
                drop(r);
            }
        }
    }
}

#[derive(Debug)]
struct BrokerState {
    config: BrokerConfig,
    /// Per partition, the retained records (the first one's offset is the log start).
    partitions: Vec<PartitionLog>,
    /// Per partition, the next offset.
    next_offset: Vec<u64>,
    /// Per partition, the latest acknowledgement time handed out.
    last_ack: Vec<Timestamp>,
    /// Idempotence state per (producer id, partition).
    sequences: BTreeMap<(u64, u32), Sequence>,
    next_producer_id: u64,
    faults: BrokerFaults,
    rng: SimRng,
}

/// The simulated broker: a shared handle.
#[derive(Clone, Debug)]
pub struct SimBroker {
    state: Rc<RefCell<BrokerState>>,
}

enum Attempt {
    Appended(Delivery),
    Retry,
    Fatal(String),
}

impl SimBroker {
    /// A broker with one topic. `config` must have been validated.
    pub fn new(config: BrokerConfig, rng: SimRng) -> Self {
        let partitions = (0..config.partitions)
            .map(|_| PartitionLog::default())
            .collect();
        let partition_count = config.partitions as usize;
        SimBroker {
            state: Rc::new(RefCell::new(BrokerState {
                config,
                partitions,
                last_ack: vec![Timestamp::MIN; partition_count],
                next_offset: vec![0; partition_count],
                sequences: BTreeMap::new(),
                next_producer_id: 1,
                faults: BrokerFaults::default(),
                rng,
            })),
        }
    }

    /// The broker's settings.
    pub fn config(&self) -> BrokerConfig {
        self.state.borrow().config.clone()
    }

    /// Current faults.
    pub fn faults(&self) -> BrokerFaults {
        self.state.borrow().faults.clone()
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: BrokerFaults) {
        self.state.borrow_mut().faults = faults;
    }

    /// Takes the broker down or brings it back.
    pub fn set_down(&self, down: bool) {
        self.state.borrow_mut().faults.down = down;
    }

    /// A new producer session (new producer id) publishing on `clock`, recording acknowledged
    /// records in `history` under `incarnation`.
    pub fn producer(
        &self,
        clock: Rc<dyn Clock>,
        history: History,
        incarnation: u32,
    ) -> SimProducer {
        let id = {
            let mut s = self.state.borrow_mut();
            s.next_producer_id += 1;
            s.next_producer_id - 1
        };
        SimProducer {
            broker: self.clone(),
            clock,
            history,
            incarnation,
            producer_id: id,
            next_seq: RefCell::new(Vec::new()),
        }
    }

    /// The producer gave up on `seq` (delivery timeout or fatal error): later sequence numbers
    /// may be appended without it.
    fn abandon(&self, producer_id: u64, partition: u32, seq: u64) {
        let mut s = self.state.borrow_mut();
        let sq = s
            .sequences
            .entry((producer_id, partition))
            .or_insert_with(|| Sequence {
                next: 1,
                ..Default::default()
            });
        sq.abandoned.insert(seq);
    }

    /// A copy of one partition's retained records (see [`BrokerConfig::retention_ms`]).
    pub fn partition(&self, p: u32) -> Vec<Record> {
        self.state.borrow().partitions[p as usize]
            .iter()
            .cloned()
            .collect()
    }

    /// Records retained in every partition.
    pub fn len(&self) -> usize {
        self.state.borrow().partitions.iter().map(|p| p.len).sum()
    }

    /// Whether the topic is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When an append to `partition` ready at `ready` is acknowledged: a partition's leader
    /// answers produce requests in order, so never before an earlier append's acknowledgement.
    fn ack_time(&self, partition: u32, ready: Timestamp) -> Timestamp {
        let mut s = self.state.borrow_mut();
        let last = &mut s.last_ack[partition as usize];
        *last = (*last).max(ready);
        *last
    }

    fn attempt(
        &self,
        producer_id: u64,
        partition: u32,
        seq: u64,
        event: &OutboxEvent,
        now: Timestamp,
    ) -> (Attempt, bool) {
        let mut s = self.state.borrow_mut();
        let s = &mut *s;
        if s.faults.down {
            return (Attempt::Retry, false);
        }
        if s.faults.fatal_error_probability > 0.0
            && s.rng.random_bool(s.faults.fatal_error_probability.min(1.0))
        {
            return (Attempt::Fatal("MSG_SIZE_TOO_LARGE".into()), false);
        }
        if s.faults.retriable_error_probability > 0.0
            && s.rng
                .random_bool(s.faults.retriable_error_probability.min(1.0))
        {
            return (Attempt::Retry, false);
        }
        let lost_ack = s.faults.lost_ack_probability > 0.0
            && s.rng.random_bool(s.faults.lost_ack_probability.min(1.0));
        if s.config.idempotent {
            let sq = s
                .sequences
                .entry((producer_id, partition))
                .or_insert_with(|| Sequence {
                    next: 1,
                    ..Default::default()
                });
            if let Some(offset) = sq.appended_offset(seq) {
                // A retry of a batch this session already appended: acknowledged, not appended.
                let d = Delivery { partition, offset };
                return (
                    if lost_ack {
                        Attempt::Retry
                    } else {
                        Attempt::Appended(d)
                    },
                    false,
                );
            }
            while sq.abandoned.remove(&sq.next) {
                sq.next += 1;
            }
            if seq > sq.next {
                // OUT_OF_ORDER_SEQUENCE_NUMBER: an earlier record of this partition is still in
                // flight; the client retries, which keeps per-partition order.
                return (Attempt::Retry, false);
            }
        }
        let part = &mut s.partitions[partition as usize];
        let offset = s.next_offset[partition as usize];
        s.next_offset[partition as usize] += 1;
        let retained_from = now - ms(s.config.retention_ms);
        while part.front().is_some_and(|r| r.append_time < retained_from) {
            part.pop_front();
        }
        part.push_back(Record {
            offset,
            value: event.clone(),
            append_time: now,
            producer_id,
        });
        if let Some(sq) = s.sequences.get_mut(&(producer_id, partition)) {
            sq.next = sq.next.max(seq + 1);
            sq.record_append(seq, offset, now);
            let given_up = now - ms(s.config.delivery_timeout_ms);
            while sq.appended.front().is_some_and(|&(_, _, at)| at < given_up) {
                sq.appended.pop_front();
            }
        }
        let d = Delivery { partition, offset };
        (
            if lost_ack {
                Attempt::Retry
            } else {
                Attempt::Appended(d)
            },
            true,
        )
    }
}

/// One producer session; a relay incarnation's [`Publisher`].
pub struct SimProducer {
    broker: SimBroker,
    clock: Rc<dyn Clock>,
    history: History,
    incarnation: u32,
    producer_id: u64,
    /// Last sequence number used, per partition.
    next_seq: RefCell<Vec<u64>>,
}

impl std::fmt::Debug for SimProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimProducer")
            .field("producer_id", &self.producer_id)
            .field("incarnation", &self.incarnation)
            .finish()
    }
}

impl SimProducer {
    /// The session's producer id.
    pub fn producer_id(&self) -> u64 {
        self.producer_id
    }

    /// Starts sending `event`: picks its partition and producer sequence number.
    fn begin(&self, event: &OutboxEvent) -> Send {
        let cfg = self.broker.config();
        // The key's text, encoded on the stack (the record derives it again on demand).
        let mut key = uuid::Uuid::encode_buffer();
        let key = event.aggregate_id.0.hyphenated().encode_lower(&mut key);
        let partition = partition_for(key.as_bytes(), cfg.partitions);
        let seq = {
            let mut seqs = self.next_seq.borrow_mut();
            if seqs.len() <= partition as usize {
                seqs.resize(partition as usize + 1, 0);
            }
            let s = &mut seqs[partition as usize];
            *s += 1;
            *s
        };
        Send {
            partition,
            seq,
            deadline: self.clock.now() + ms(cfg.delivery_timeout_ms),
            ack_latency: ms(cfg.ack_latency_ms),
            retry_backoff: ms(cfg.retry_backoff_ms),
            next: Next::Attempt,
        }
    }

    /// Runs a send as far as it goes at the current instant: to its result, or to the time it
    /// must be resumed (an acknowledgement, a retry backoff, the end of the delivery timeout).
    /// A resume time at or before now means "resume at once", as a zero-length sleep would.
    fn step(&self, send: &mut Send, event: &OutboxEvent) -> Step {
        let now = self.clock.now();
        match std::mem::replace(&mut send.next, Next::Attempt) {
            Next::Record(outcome) => Step::Done(self.record(event, outcome, now)),
            Next::Attempt => {
                let (attempt, _) =
                    self.broker
                        .attempt(self.producer_id, send.partition, send.seq, event, now);
                match attempt {
                    Attempt::Appended(d) => {
                        let slow = self.broker.faults().slow_ack_ms;
                        let ack_at = self
                            .broker
                            .ack_time(d.partition, now + send.ack_latency + ms(slow));
                        send.next = Next::Record(Outcome::Published(d));
                        Step::Resume(ack_at)
                    }
                    Attempt::Fatal(why) => {
                        self.broker
                            .abandon(self.producer_id, send.partition, send.seq);
                        send.next = Next::Record(Outcome::Fatal(why));
                        Step::Resume(now + send.ack_latency)
                    }
                    Attempt::Retry if now + send.retry_backoff >= send.deadline => {
                        self.broker
                            .abandon(self.producer_id, send.partition, send.seq);
                        send.next = Next::Record(Outcome::TimedOut);
                        Step::Resume(send.deadline)
                    }
                    Attempt::Retry => Step::Resume(now + send.retry_backoff),
                }
            }
        }
    }

    /// Records how a send ended and hands its result to the caller.
    fn record(
        &self,
        event: &OutboxEvent,
        outcome: Outcome,
        now: Timestamp,
    ) -> Result<Delivery, PublishError> {
        let (op, result) = match outcome {
            Outcome::Published(d) => (
                OpKind::Published {
                    event: event.id,
                    aggregate: event.aggregate_id,
                    seq: event.seq,
                    partition: d.partition,
                    offset: d.offset,
                    incarnation: self.incarnation,
                },
                Ok(d),
            ),
            Outcome::Fatal(why) => (
                OpKind::PublishFailed {
                    event: event.id,
                    incarnation: self.incarnation,
                    transient: false,
                },
                Err(PublishErrorKind::Fatal(why)),
            ),
            Outcome::TimedOut => (
                OpKind::PublishFailed {
                    event: event.id,
                    incarnation: self.incarnation,
                    transient: true,
                },
                Err(PublishErrorKind::Timeout),
            ),
        };
        self.history.record(now, op);
        result.map_err(|kind| PublishError {
            event: event.id,
            kind,
        })
    }

    async fn send(&self, event: &OutboxEvent) -> Result<Delivery, PublishError> {
        let mut send = self.begin(event);
        loop {
            match self.step(&mut send, event) {
                Step::Done(result) => return result,
                Step::Resume(at) => {
                    self.clock
                        .sleep(at.saturating_since(self.clock.now()))
                        .await
                }
            }
        }
    }
}

/// One record on its way: its partition, producer sequence number, delivery deadline, the
/// producer's timings as they were when it started, and what happens when it is next resumed.
struct Send {
    partition: u32,
    seq: u64,
    deadline: Timestamp,
    ack_latency: std::time::Duration,
    retry_backoff: std::time::Duration,
    next: Next,
}

enum Next {
    Attempt,
    Record(Outcome),
}

enum Outcome {
    Published(Delivery),
    Fatal(String),
    TimedOut,
}

enum Step {
    Done(Result<Delivery, PublishError>),
    Resume(Timestamp),
}

/// [`PublishAll`] starts loading a payload's reference count this many events ahead. The
/// append copies the event, and so counts a reference to its payload; the relay's read last
/// touched that count a whole page of rows before, so it is out of the cache by then.
const PAYLOAD_AHEAD: usize = crate::prefetch::AHEAD;

/// `join_all` of up to this many futures polls every one on each wake, in order; of more, only
/// the woken ones, in the order they were woken (futures-util's `SMALL`).
const JOIN_ALL_SMALL: usize = 30;

/// A batch of sends in one future: no boxed future, no task and, for sends resumed at the same
/// time, one timer instead of one each. It runs exactly what `join_all` over [`SimProducer::send`]
/// runs, in the same order: every send starts in the first poll, in order; then sends resume when
/// their time comes, in the order `join_all` would poll them (by index for a small batch, by
/// the order their timers were armed for a large one). Timers are armed in the same polls as the
/// individual sends would arm theirs, and all wake the same task, so the task wakes at the same
/// place among the other tasks as before: a run's history is unchanged.
struct PublishAll<'a> {
    producer: &'a SimProducer,
    events: &'a [OutboxEvent],
    sends: Vec<Send>,
    results: Vec<Option<Result<Delivery, PublishError>>>,
    /// Indices of the sends waiting to resume.
    waiting: Parked<usize>,
    left: usize,
}

impl<'a> PublishAll<'a> {
    fn new(producer: &'a SimProducer, events: &'a [OutboxEvent]) -> Self {
        PublishAll {
            producer,
            events,
            sends: Vec::with_capacity(events.len()),
            results: (0..events.len()).map(|_| None).collect(),
            waiting: Parked::new(producer.clock.clone()),
            left: events.len(),
        }
    }

    /// Runs send `i` until it finishes or must wait for a later time.
    fn run(&mut self, i: usize, cx: &mut std::task::Context<'_>) {
        loop {
            match self.producer.step(&mut self.sends[i], &self.events[i]) {
                Step::Done(r) => {
                    self.results[i] = Some(r);
                    self.left -= 1;
                    return;
                }
                Step::Resume(at) if at <= self.producer.clock.now() => continue,
                Step::Resume(at) => {
                    self.waiting.park(at, i, cx);
                    return;
                }
            }
        }
    }
}

impl std::future::Future for PublishAll<'_> {
    type Output = Vec<Result<Delivery, PublishError>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = &mut *self;
        if this.sends.is_empty() && !this.events.is_empty() {
            for i in 0..this.events.len() {
                if let Some(e) = this.events.get(i + PAYLOAD_AHEAD) {
                    crate::prefetch::prefetch_counts(&e.payload);
                }
                let send = this.producer.begin(&this.events[i]);
                this.sends.push(send);
                this.run(i, cx);
            }
        } else {
            this.waiting.poll_timers(cx);
            if this.events.len() <= JOIN_ALL_SMALL {
                let mut due: Vec<usize> = std::iter::from_fn(|| this.waiting.pop_due()).collect();
                due.sort_unstable();
                for i in due {
                    this.run(i, cx);
                }
            } else {
                while let Some(i) = this.waiting.pop_due() {
                    this.run(i, cx);
                }
            }
        }
        if this.left > 0 {
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(
            this.results
                .iter_mut()
                .map(|r| r.take().expect("every send finished"))
                .collect(),
        )
    }
}

impl Publisher for SimProducer {
    fn publish<'a>(
        &'a self,
        event: &'a OutboxEvent,
    ) -> LocalFuture<'a, Result<Delivery, PublishError>> {
        Box::pin(self.send(event))
    }

    fn publish_all<'a>(
        &'a self,
        events: &'a [OutboxEvent],
    ) -> LocalFuture<'a, Vec<Result<Delivery, PublishError>>> {
        Box::pin(PublishAll::new(self, events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Publishes three rounds of `n` records (`batched`: with `publish_all`, else with
    /// `join_all` over `publish`) under produce errors, lost acks and a broker outage, while a
    /// second producer sends alone. Returns every result, the history digest and its length.
    fn rounds(batched: bool, n: usize) -> (Vec<Result<Delivery, PublishError>>, u64, usize) {
        use crate::sim::SimBuilder;
        use std::time::Duration;
        let mut b = SimBuilder::new();
        b.config_mut().broker.delivery_timeout_ms = 450;
        let mut sim = b.build(crate::seed::Seed(5)).unwrap();
        let broker = sim.broker();
        broker.set_faults(BrokerFaults {
            retriable_error_probability: 0.2,
            lost_ack_probability: 0.1,
            fatal_error_probability: 0.02,
            ..BrokerFaults::default()
        });
        let event = |n: usize, seq: u64| OutboxEvent {
            id: crate::model::EventId(uuid::Uuid::from_u128(n as u128 * 1_000 + seq as u128)),
            aggregate_type: "Order".into(),
            aggregate_id: AggregateId(uuid::Uuid::from_u128(n as u128)),
            seq,
            event_type: crate::model::EventType::OrderCreated,
            payload: "{}".into(),
            created_at: Timestamp::MIN,
        };
        let producer = broker.producer(sim.clock_port(), sim.history(), 1);
        let other = broker.producer(sim.clock_port(), sim.history(), 2);
        let clock = sim.clock_port();
        let outage = {
            let (clock, broker) = (sim.clock_port(), broker.clone());
            sim.spawn("outage", async move {
                clock.sleep(Duration::from_millis(130)).await;
                broker.set_down(true);
                clock.sleep(Duration::from_millis(240)).await;
                broker.set_down(false);
            })
        };
        let alone = {
            let clock = sim.clock_port();
            sim.spawn("alone", async move {
                for i in 0..300 {
                    let _ = other.publish(&event(10_000 + i % 7, i as u64)).await;
                    clock.sleep(Duration::from_micros(1_999)).await;
                }
            })
        };
        let t = sim.spawn("rounds", async move {
            let mut out = Vec::new();
            for round in 0..3u64 {
                let events: Vec<OutboxEvent> = (0..n).map(|i| event(i % 40, round)).collect();
                let results = if batched {
                    producer.publish_all(&events).await
                } else {
                    futures::future::join_all(events.iter().map(|e| producer.publish(e))).await
                };
                out.extend(results);
                clock.sleep(Duration::from_millis(101)).await;
            }
            out
        });
        let out = sim.block_on(t).unwrap();
        sim.block_on(alone).unwrap();
        sim.block_on(outage).unwrap();
        let history = sim.history();
        (out, history.digest(), history.len())
    }

    /// `publish_all` runs exactly what `join_all` over `publish` runs, for a batch `join_all`
    /// polls whole (up to 30) and for one it polls by wake-up: same results, same history op
    /// for op, next to another producer's sends.
    #[test]
    fn publish_all_runs_exactly_as_join_all_of_publish() {
        for n in [12, 30, 31, 200] {
            let (results, digest, ops) = rounds(true, n);
            let kinds = |f: fn(&Result<Delivery, PublishError>) -> bool| {
                results.iter().filter(|r| f(r)).count()
            };
            assert!(kinds(|r| r.is_ok()) > 0, "n = {n}");
            assert!(
                kinds(|r| matches!(r, Err(e) if e.kind == PublishErrorKind::Timeout)) > 0,
                "n = {n}: some sends time out"
            );
            if n >= 30 {
                assert!(
                    kinds(|r| matches!(r, Err(e) if matches!(e.kind, PublishErrorKind::Fatal(_))))
                        > 0,
                    "n = {n}: some sends fail for good"
                );
            }
            assert_eq!(rounds(false, n), (results, digest, ops), "n = {n}");
        }
    }

    /// Records older than `retention.ms` are deleted on the next append to their partition;
    /// offsets keep counting from where they were.
    #[test]
    fn retention_deletes_old_records_and_offsets_go_on() {
        use crate::sim::SimBuilder;
        let mut b = SimBuilder::new().partitions(1);
        b.config_mut().broker.retention_ms = 1_000;
        let mut sim = b.build(crate::seed::Seed(2)).unwrap();
        let broker = sim.broker();
        let producer = broker.producer(sim.clock_port(), sim.history(), 1);
        let clock = sim.clock_port();
        let event = |n: u8| OutboxEvent {
            id: crate::model::EventId(uuid::Uuid::from_bytes([n; 16])),
            aggregate_type: "Order".into(),
            aggregate_id: AggregateId(uuid::Uuid::from_bytes([1; 16])),
            seq: u64::from(n),
            event_type: crate::model::EventType::OrderCreated,
            payload: "{}".into(),
            created_at: Timestamp::MIN,
        };
        let t = sim.spawn("p", async move {
            let mut offsets = Vec::new();
            for n in 1..=3 {
                offsets.push(producer.publish(&event(n)).await.unwrap().offset);
            }
            clock.sleep(std::time::Duration::from_secs(2)).await;
            offsets.push(producer.publish(&event(4)).await.unwrap().offset);
            offsets
        });
        assert_eq!(sim.block_on(t).unwrap(), vec![0, 1, 2, 3]);
        let kept: Vec<u64> = broker.partition(0).iter().map(|r| r.offset).collect();
        assert_eq!(kept, vec![3]);
    }

    /// Vectors from Apache Kafka's `UtilsTest.testMurmur2` (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java),
    /// the Java client's own test of the partitioner hash.
    #[test]
    fn murmur2_matches_kafka_java_client() {
        let cases: [(&str, i32); 6] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ];
        for (key, hash) in cases {
            assert_eq!(murmur2(key.as_bytes()), hash, "key {key}");
        }
        // Partition = toPositive(hash) % n, e.g. "foobar" → (-790332482 & 0x7fffffff) % 6.
        assert_eq!(
            partition_for(b"foobar", 6),
            ((-790_332_482i32 & 0x7fff_ffff) as u32) % 6
        );
    }
}
