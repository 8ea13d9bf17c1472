//! Storage of the simulated keyspace `orders_ks`: `orders`, `outbox_messages`, its CDC log
//! `outbox_messages_scylla_cdc_log`, and the relay checkpoint table.
//!
//! Every stored row carries the time it becomes readable (replication delay) and the time it
//! expires (TTL). Reads filter on both, so a row is invisible before its visibility time, visible
//! after, and gone once expired; `purge` only frees memory and never changes what reads return.

use std::collections::{BTreeSet, VecDeque};
use std::ops::Bound;
use std::rc::Rc;

use crate::cdc::{CdcTime, LogPage, LogRow, Operation, PageState, StreamId};
use crate::model::{AggregateId, Cursor, EventId, Order, OutboxEvent, Timestamp};
use crate::ports::ScanFrom;
use crate::prefetch::{AHEAD, prefetch, prefetch_counts};
use crate::table::PrefetchMap;

#[derive(Clone, Debug)]
struct Stored<T> {
    value: T,
    visible_at: Timestamp,
    expires_at: Timestamp,
}

impl<T> Stored<T> {
    fn readable(&self, now: Timestamp) -> bool {
        self.visible_at <= now && now < self.expires_at
    }
}

/// Rows in key order, in a ring buffer: writes arrive in nearly increasing key order (keys start
/// with the write timestamp; only clock skew puts a row behind its predecessors), so an insert
/// lands at or near the back, a window read is a binary search and a scan, and expiry pops the
/// front. Unlike a B-tree, the rows are not moved around node by node on every insert.
#[derive(Debug)]
struct SortedRows<K, V> {
    rows: VecDeque<(K, Stored<V>)>,
}

impl<K, V> Default for SortedRows<K, V> {
    fn default() -> Self {
        SortedRows {
            rows: VecDeque::new(),
        }
    }
}

impl<K: Ord + Copy, V> SortedRows<K, V> {
    /// Inserts a row; `false` (and nothing changes) if its key is taken.
    fn insert(&mut self, key: K, row: Stored<V>) -> bool {
        if self.rows.back().is_none_or(|(last, _)| *last < key) {
            self.rows.push_back((key, row));
            return true;
        }
        let i = self.position_from_back(key);
        if self.rows.get(i).is_some_and(|(k, _)| *k == key) {
            return false;
        }
        self.rows.insert(i, (key, row));
        true
    }

    /// The index of the first row not below `key`, searched from the back: a late row lands
    /// a few places from the end, so gallop backwards, then bisect that stretch only (a
    /// bisection of the whole table misses the cache at every step).
    fn position_from_back(&self, key: K) -> usize {
        let len = self.rows.len();
        let mut step = 1;
        let mut hi = len;
        loop {
            let lo = len.saturating_sub(step);
            if lo == 0 || self.rows[lo].0 < key {
                let (a, b) = self.rows.as_slices();
                let below = |r: &(K, Stored<V>)| r.0 < key;
                // Bisect rows[lo..hi] across the ring buffer's two halves.
                return if hi <= a.len() {
                    lo + a[lo..hi].partition_point(below)
                } else if lo >= a.len() {
                    lo + b[lo - a.len()..hi - a.len()].partition_point(below)
                } else {
                    let in_a = a[lo..].partition_point(below);
                    if lo + in_a < a.len() {
                        lo + in_a
                    } else {
                        a.len() + b[..hi - a.len()].partition_point(below)
                    }
                };
            }
            hi = lo + 1;
            step *= 2;
        }
    }

    /// The newest key.
    fn last(&self) -> Option<K> {
        self.rows.back().map(|(k, _)| *k)
    }

    fn len(&self) -> usize {
        self.rows.len()
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Rows with keys in `(lo, hi)`, in key order (both ends found by bisection, so the caller
    /// knows the count up front).
    fn range(
        &self,
        lo: Bound<K>,
        hi: Bound<K>,
    ) -> impl ExactSizeIterator<Item = &(K, Stored<V>)> + Clone {
        let start = match lo {
            Bound::Included(k) => self.rows.partition_point(|(r, _)| *r < k),
            Bound::Excluded(k) => self.rows.partition_point(|(r, _)| *r <= k),
            Bound::Unbounded => 0,
        };
        let end = match hi {
            Bound::Included(k) => self.rows.partition_point(|(r, _)| *r <= k),
            Bound::Excluded(k) => self.rows.partition_point(|(r, _)| *r < k),
            Bound::Unbounded => self.rows.len(),
        };
        self.rows.range(start..end.max(start))
    }

    /// Drops expired rows from the front (rows expire roughly in key order; stragglers are
    /// filtered by reads until a later purge). Returns how many went.
    fn purge_front(&mut self, now: Timestamp) -> usize {
        let before = self.rows.len();
        while self.rows.front().is_some_and(|(_, r)| r.expires_at <= now) {
            self.rows.pop_front();
        }
        before - self.rows.len()
    }
}

/// A stored log row: the columns its partition and clustering key do not already hold, and the
/// base row's columns shared with the `outbox_messages` row of the same write (a log row is a
/// copy of them, so sharing changes nothing a read returns; it saves a copy per write).
#[derive(Clone, Debug)]
struct LogEntry {
    operation: Operation,
    end_of_batch: bool,
    ttl: Option<i64>,
    event: Rc<OutboxEvent>,
}

/// `outbox_messages_scylla_cdc_log`: one clustering-ordered partition per stream.
#[derive(Debug, Default)]
pub struct CdcLog {
    // Looked up by id only (reads follow the query's stream list), so a hash map keeps runs
    // deterministic.
    streams: PrefetchMap<StreamId, SortedRows<(CdcTime, i32), LogEntry>>,
    rows: usize,
}

impl CdcLog {
    /// Appends a row.
    pub fn insert(&mut self, row: LogRow, visible_at: Timestamp, expires_at: Timestamp) {
        let LogRow {
            stream_id,
            time,
            batch_seq_no,
            operation,
            end_of_batch,
            ttl,
            event,
        } = row;
        let entry = LogEntry {
            operation,
            end_of_batch,
            ttl,
            event: Rc::new(event),
        };
        self.insert_entry(
            stream_id,
            (time, batch_seq_no),
            entry,
            visible_at,
            expires_at,
        );
    }

    /// Appends the single-row batch's log row of a write whose base row is `event`.
    pub fn insert_write(
        &mut self,
        stream_id: StreamId,
        time: CdcTime,
        event: Rc<OutboxEvent>,
        visible_at: Timestamp,
        expires_at: Timestamp,
    ) {
        let entry = LogEntry {
            operation: Operation::Insert,
            end_of_batch: true,
            ttl: None,
            event,
        };
        self.insert_entry(stream_id, (time, 0), entry, visible_at, expires_at);
    }

    fn insert_entry(
        &mut self,
        stream_id: StreamId,
        key: (CdcTime, i32),
        entry: LogEntry,
        visible_at: Timestamp,
        expires_at: Timestamp,
    ) {
        let part = self
            .streams
            .get_or_insert_with(stream_id, SortedRows::default);
        let fresh = part.insert(
            key,
            Stored {
                value: entry,
                visible_at,
                expires_at,
            },
        );
        assert!(fresh, "log primary key collision");
        self.rows += 1;
    }

    /// Starts loading the slot of `stream`'s partition (a hint).
    pub(crate) fn prefetch_stream(&self, stream: StreamId) {
        self.streams.prefetch(&stream);
    }

    /// Starts loading the newest row of `stream`'s partition and the room after it, which an
    /// append compares its key with and writes to (a hint; finds the partition's slot, so best
    /// after [`prefetch_stream`](Self::prefetch_stream)).
    pub(crate) fn prefetch_newest(&self, stream: StreamId) {
        if let Some(back) = self.streams.get(&stream).and_then(|p| p.rows.back()) {
            prefetch(back, 3);
        }
    }

    /// Rows stored (including invisible and expired ones not yet purged).
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether the log holds no row.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// One page of the window `[from, to)` over `streams`, as a reader at `now` sees it. Returns
    /// the page and the rows read.
    pub fn read(
        &self,
        streams: &[StreamId],
        from: Timestamp,
        to: Timestamp,
        page: Option<PageState>,
        page_size: usize,
        now: Timestamp,
    ) -> LogPage {
        assert!(page_size > 0, "page size must be positive");
        let mut out = LogPage::default();
        if from >= to {
            return out;
        }
        let first = page.map_or(0, |p| p.stream_index);
        let hi = Bound::Excluded((
            CdcTime {
                micros: to.0,
                lsb: 0,
            },
            i32::MIN,
        ));
        for (i, stream) in streams.iter().enumerate().skip(first) {
            let Some(part) = self.streams.get(stream) else {
                continue;
            };
            let lo = match page {
                Some(p) if i == p.stream_index => Bound::Excluded(p.after),
                _ => Bound::Included((
                    CdcTime {
                        micros: from.0,
                        lsb: 0,
                    },
                    i32::MIN,
                )),
            };
            // Most windows of a caught-up reader start after a partition's last row: skip the
            // search.
            let past_end = part.last().is_some_and(|last| match lo {
                Bound::Included(k) => last < k,
                Bound::Excluded(k) => last <= k,
                Bound::Unbounded => false,
            });
            if past_end {
                continue;
            }
            for (key, stored) in part.range(lo, hi) {
                if !stored.readable(now) {
                    continue;
                }
                let e = &stored.value;
                out.rows.push(LogRow {
                    stream_id: *stream,
                    time: key.0,
                    batch_seq_no: key.1,
                    operation: e.operation,
                    end_of_batch: e.end_of_batch,
                    ttl: e.ttl,
                    event: OutboxEvent::clone(&e.event),
                });
                if out.rows.len() == page_size {
                    out.next = Some(PageState {
                        stream_index: i,
                        after: *key,
                    });
                    return out;
                }
            }
        }
        out
    }

    /// Drops expired rows from the front of each partition (rows expire roughly in clustering
    /// order; stragglers are filtered by reads until a later purge).
    pub fn purge(&mut self, now: Timestamp) {
        for part in self.streams.values_mut() {
            self.rows -= part.purge_front(now);
        }
        self.streams.retain(|_, p| !p.is_empty());
    }
}

/// `orders` (point lookups only, so a hash map keeps runs deterministic) and `outbox_messages`.
#[derive(Debug, Default)]
pub struct BaseTables {
    /// `orders`, by order id.
    orders: PrefetchMap<AggregateId, Order>,
    /// Orders rows with a TTL, by expiry (an entry is stale if the order was written again).
    order_expiry: BTreeSet<(Timestamp, AggregateId)>,
    /// Each such order's current expiry.
    order_ttl_end: rustc_hash::FxHashMap<AggregateId, Timestamp>,
    /// Shared with the write's CDC log row.
    outbox: SortedRows<(Timestamp, EventId), Rc<OutboxEvent>>,
}

impl BaseTables {
    /// The `orders` row of `order`.
    pub fn order(&self, order: &AggregateId) -> Option<&Order> {
        self.orders.get(order)
    }

    /// `orders` rows held (expired ones go at the next purge).
    pub fn order_rows(&self) -> usize {
        self.orders.len()
    }

    /// Starts loading the `orders` slot of `order` (a hint).
    pub(crate) fn prefetch_order(&self, order: AggregateId) {
        self.orders.prefetch(&order);
    }

    /// Upserts an `orders` row; `expires_at` is its TTL's end, if it has one.
    pub fn insert_order(&mut self, order: Order, expires_at: Option<Timestamp>) {
        match expires_at {
            Some(at) => {
                self.order_expiry.insert((at, order.id));
                self.order_ttl_end.insert(order.id, at);
            }
            None => {
                self.order_ttl_end.remove(&order.id);
            }
        }
        self.orders.insert(order.id, order);
    }

    /// Inserts an outbox row.
    pub fn insert_outbox(
        &mut self,
        event: Rc<OutboxEvent>,
        visible_at: Timestamp,
        expires_at: Timestamp,
    ) {
        let key = (event.created_at, event.id);
        let fresh = self.outbox.insert(
            key,
            Stored {
                value: event,
                visible_at,
                expires_at,
            },
        );
        assert!(fresh, "outbox primary key collision");
    }

    /// Outbox rows stored.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// The polling relay's filtering scan at `now`: readable rows from `from` with
    /// `created_at < until`, in `(created_at, id)` order.
    pub fn scan(&self, from: ScanFrom, until: Timestamp, now: Timestamp) -> Vec<OutboxEvent> {
        let lo = match from {
            ScanFrom::Beginning => Bound::Unbounded,
            ScanFrom::After(Cursor { created_at, id }) => Bound::Excluded((created_at, id)),
            ScanFrom::AtOrAfter(t) => Bound::Included((t, EventId(uuid::Uuid::nil()))),
        };
        let hi = Bound::Excluded((until, EventId(uuid::Uuid::nil())));
        if matches!((lo, hi), (Bound::Excluded(a) | Bound::Included(a), Bound::Excluded(b)) if a >= b)
        {
            return Vec::new();
        }
        let rows = self.outbox.range(lo, hi);
        // Sized for every row in range (a few unreadable ones aside): a poll's page is
        // thousands of rows, and growing the vector would copy them again and again.
        let mut out = Vec::with_capacity(rows.len());
        // A copy reads the row's event and counts a reference to its payload, two lines last
        // touched when the row was written: start loading the event two steps ahead, and the
        // payload's count, found through the event, one step ahead.
        let mut events_ahead = rows.clone().skip(2 * AHEAD);
        let mut payloads_ahead = rows.clone().skip(AHEAD);
        for (_, s) in rows {
            if let Some((_, a)) = events_ahead.next() {
                prefetch(Rc::as_ptr(&a.value), size_of::<OutboxEvent>().div_ceil(64));
            }
            if let Some((_, a)) = payloads_ahead.next() {
                prefetch_counts(&a.value.payload);
            }
            if s.readable(now) {
                out.push(OutboxEvent::clone(&s.value));
            }
        }
        out
    }

    /// Drops expired outbox rows from the front.
    pub fn purge(&mut self, now: Timestamp) {
        self.outbox.purge_front(now);
        while let Some(&(at, id)) = self.order_expiry.first()
            && at <= now
        {
            self.order_expiry.pop_first();
            // Unless written again since (its newer entry decides).
            if self.order_ttl_end.get(&id) == Some(&at) {
                self.order_ttl_end.remove(&id);
                self.orders.remove(&id);
            }
        }
    }
}

/// The relay checkpoint table (scylla-cdc's `checkpoints` table plus the polling cursor).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointTable {
    /// The polling relay's cursor.
    pub cursor: Option<Cursor>,
    /// The stream reader's generation row (`stream_id = 0x00`).
    pub generation: Option<Timestamp>,
    /// Per-stream progress (point lookups only, so a hash map keeps runs deterministic).
    pub streams: rustc_hash::FxHashMap<StreamId, Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdc::Operation;
    use crate::model::EventType;

    fn event(n: u8, at: i64) -> OutboxEvent {
        OutboxEvent {
            id: EventId(uuid::Uuid::from_bytes([n; 16])),
            aggregate_type: "Order".into(),
            aggregate_id: AggregateId(uuid::Uuid::from_bytes([n; 16])),
            seq: 1,
            event_type: EventType::OrderCreated,
            payload: Rc::from("{}"),
            created_at: Timestamp(at),
        }
    }

    fn row(stream: StreamId, at: i64, lsb: u64) -> LogRow {
        LogRow {
            stream_id: stream,
            time: CdcTime { micros: at, lsb },
            batch_seq_no: 0,
            operation: Operation::Insert,
            end_of_batch: true,
            ttl: None,
            event: event(lsb as u8, at),
        }
    }

    /// The ring buffer agrees with a B-tree on inserts (in order, a little late, far behind,
    /// duplicate keys), ranges and expiry, also once it has wrapped around.
    #[test]
    fn sorted_rows_agree_with_a_btree() {
        use rand::{Rng, SeedableRng};
        use std::collections::BTreeMap;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut rows: SortedRows<i64, ()> = SortedRows::default();
        let mut model: BTreeMap<i64, Timestamp> = BTreeMap::new();
        let mut now = 0i64;
        for step in 0..20_000 {
            now += rng.random_range(0..3);
            let key = match rng.random_range(0..10) {
                0 => rng.random_range(0..=now),
                1..=3 => now - rng.random_range(0..50),
                _ => now,
            };
            let expires_at = Timestamp(key + 500);
            let stored = Stored {
                value: (),
                visible_at: Timestamp(0),
                expires_at,
            };
            let fresh = !model.contains_key(&key);
            assert_eq!(
                rows.insert(key, stored),
                fresh,
                "insert {key} at step {step}"
            );
            model.entry(key).or_insert(expires_at);
            if step % 1_000 == 999 {
                let purged = rows.purge_front(Timestamp(now));
                let mut expected = 0;
                while model
                    .first_key_value()
                    .is_some_and(|(_, at)| *at <= Timestamp(now))
                {
                    model.pop_first();
                    expected += 1;
                }
                assert_eq!(purged, expected);
            }
            if step % 97 == 0 {
                let (a, b) = (
                    now - rng.random_range(0..400),
                    now - rng.random_range(0..200),
                );
                let got: Vec<i64> = rows
                    .range(Bound::Excluded(a), Bound::Included(b))
                    .map(|(k, _)| *k)
                    .collect();
                let want: Vec<i64> = if a < b {
                    model
                        .range((Bound::Excluded(a), Bound::Included(b)))
                        .map(|(k, _)| *k)
                        .collect()
                } else {
                    Vec::new()
                };
                assert_eq!(got, want, "range ({a}, {b}] at step {step}");
            }
        }
        assert_eq!(rows.len(), model.len());
        assert!(rows.rows.iter().map(|(k, _)| k).eq(model.keys()));
    }

    #[test]
    fn window_reads_are_half_open_visible_only_and_paged_in_log_order() {
        let (a, b) = (StreamId::new(1, 0, 0), StreamId::new(2, 0, 1));
        let mut log = CdcLog::default();
        log.insert(row(a, 100, 9), Timestamp(0), Timestamp::MAX);
        log.insert(row(a, 100, 3), Timestamp(0), Timestamp::MAX); // same µs: ordered by lsb
        log.insert(row(a, 200, 1), Timestamp(0), Timestamp::MAX); // at `to`: excluded
        log.insert(row(b, 150, 1), Timestamp(50), Timestamp::MAX); // visible from t=50
        log.insert(row(b, 99, 1), Timestamp(0), Timestamp::MAX); // before `from`
        log.insert(row(b, 120, 2), Timestamp(0), Timestamp(40)); // expired at t=40
        let times = |p: &LogPage| {
            p.rows
                .iter()
                .map(|r| (r.time.micros, r.time.lsb))
                .collect::<Vec<_>>()
        };

        let early = log.read(
            &[a, b],
            Timestamp(100),
            Timestamp(200),
            None,
            10,
            Timestamp(30),
        );
        assert_eq!(times(&early), vec![(100, 3), (100, 9), (120, 2)]);
        let late = log.read(
            &[a, b],
            Timestamp(100),
            Timestamp(200),
            None,
            10,
            Timestamp(60),
        );
        assert_eq!(times(&late), vec![(100, 3), (100, 9), (150, 1)]);
        assert!(late.next.is_none());

        let mut pages = Vec::new();
        let mut state = None;
        loop {
            let p = log.read(
                &[a, b],
                Timestamp(100),
                Timestamp(200),
                state,
                1,
                Timestamp(60),
            );
            pages.extend(times(&p));
            match p.next {
                Some(s) => state = Some(s),
                None => break,
            }
        }
        assert_eq!(
            pages,
            times(&late),
            "1-row pages return the same rows in the same order"
        );

        log.purge(Timestamp(60));
        assert_eq!(
            log.len(),
            6,
            "the expired row sits behind a live one: reads filter it"
        );
        log.purge(Timestamp::MAX);
        assert!(log.is_empty());
    }

    #[test]
    fn outbox_scan_respects_bounds_and_visibility() {
        let mut t = BaseTables::default();
        t.insert_outbox(Rc::new(event(1, 10)), Timestamp(0), Timestamp::MAX);
        t.insert_outbox(Rc::new(event(2, 10)), Timestamp(0), Timestamp::MAX);
        t.insert_outbox(Rc::new(event(3, 20)), Timestamp(100), Timestamp::MAX);
        t.insert_outbox(Rc::new(event(4, 30)), Timestamp(0), Timestamp::MAX);
        let ids = |v: Vec<OutboxEvent>| v.iter().map(|e| e.id.0.as_bytes()[0]).collect::<Vec<_>>();
        assert_eq!(
            ids(t.scan(ScanFrom::Beginning, Timestamp(100), Timestamp(50))),
            vec![1, 2, 4]
        );
        assert_eq!(
            ids(t.scan(ScanFrom::Beginning, Timestamp(100), Timestamp(100))),
            vec![1, 2, 3, 4]
        );
        let c = Cursor {
            created_at: Timestamp(10),
            id: EventId(uuid::Uuid::from_bytes([1; 16])),
        };
        assert_eq!(
            ids(t.scan(ScanFrom::After(c), Timestamp(30), Timestamp(100))),
            vec![2, 3]
        );
        assert_eq!(
            ids(t.scan(
                ScanFrom::AtOrAfter(Timestamp(10)),
                Timestamp(11),
                Timestamp(100)
            )),
            vec![1, 2]
        );
        assert!(
            t.scan(
                ScanFrom::AtOrAfter(Timestamp(40)),
                Timestamp(30),
                Timestamp(100)
            )
            .is_empty()
        );
    }
}
