//! The simulated ScyllaDB cluster with CDC, faithful to reference/scylla_cdc.md §6.
//!
//! One [`SimCluster`] holds keyspace `orders_ks`: `orders`, `outbox_messages` (partition key
//! `aggregate_id`, clustering `seq`, CDC on), its log `outbox_messages_scylla_cdc_log`, the relay
//! checkpoint table, the token ring and its CDC generations. It assumes nothing about who calls it
//! or how time moves: every operation takes `now` from the [`Clock`](crate::ports::Clock) its
//! handle was given, virtual or wall.
//!
//! What the model keeps from the real thing:
//! - write timestamps come from the coordinator's clock (each node has its own skew) or from the
//!   client (`USING TIMESTAMP`); CDC admission rejects timestamps more than
//!   `future_write_limit_ms` ahead of the coordinator's clock, and timestamps more than
//!   `past_write_limit_ms` behind it unless they fall in the current generation;
//! - a write becomes readable only after a replication delay drawn per write, with rare long
//!   stalls — the reason safety windows exist;
//! - log rows are `(cdc$stream_id, cdc$time, cdc$batch_seq_no)`-keyed, equal timestamps ordered by
//!   the timeuuid's random bits, and expire after the CDC TTL (default 24 h);
//! - a topology change announces a new generation starting `generation_delay_ms` ahead;
//! - every request is counted per client and kind, so relays are compared on DB cost.

mod generations;
mod store;
mod tables;
pub mod token;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

pub use generations::{Generation, Node, Topology};
pub use store::{SimCheckpoints, SimStore};
pub use tables::{BaseTables, CdcLog, CheckpointTable};

use crate::cdc::{CdcTime, StreamId};
use crate::history::{History, OpKind};
use crate::model::{AggregateId, Order, OutboxEvent, Timestamp};
use crate::ports::{Committed, OrderBatch, StoreError, WriteTimestamp};
use crate::seed::{SimRng, uniform_duration};

/// Settings of the simulated cluster. Durations are in the unit their name ends with; they are
/// signed so that a negative value in a scenario file is reported, not wrapped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Nodes at start.
    pub nodes: u32,
    /// Vnodes (tokens) per node.
    pub vnodes_per_node: u32,
    /// Shards per node.
    pub shards_per_node: u32,
    /// Node clocks are offset from true time by a value drawn uniformly from ±this.
    pub clock_skew_ms: i64,
    /// Use client-side timestamps (`USING TIMESTAMP` from the writer's clock) instead of the
    /// coordinator's.
    pub client_timestamps: bool,
    /// Offset of the writer's own clock from true time (used with `client_timestamps`).
    pub client_clock_skew_ms: i64,
    /// Resolution of the writer's clock in µs (1000 = a millisecond clock, so bursts share
    /// timestamps); used with `client_timestamps`.
    pub client_timestamp_resolution_us: i64,
    /// Smallest replication (visibility) delay.
    pub replication_delay_min_ms: i64,
    /// Largest ordinary replication delay.
    pub replication_delay_max_ms: i64,
    /// Probability that a write stalls before becoming visible.
    pub stall_probability: f64,
    /// Extra delay of a stalled write.
    pub stall_ms: i64,
    /// CDC rejects timestamps further ahead of the coordinator's clock than this.
    pub future_write_limit_ms: i64,
    /// Timestamps further behind than this are accepted only inside the current generation.
    pub past_write_limit_ms: i64,
    /// A new generation starts this long after the topology change announcing it.
    pub generation_delay_ms: i64,
    /// CDC log TTL (`cdc = {'ttl': …}`).
    pub cdc_ttl_s: i64,
    /// TTL of outbox rows (0 = none).
    pub outbox_ttl_s: i64,
    /// TTL of `orders` rows, renewed by every write of the order (0 = none, the default: orders
    /// are the business's data). A long simulation sets it to keep the table bounded.
    pub orders_ttl_s: i64,
    /// Time from a write request to its acknowledgement.
    pub write_latency_ms: i64,
    /// Time of one read request.
    pub read_latency_ms: i64,
    /// A read that times out takes this long to fail (`read_request_timeout_in_ms`).
    pub read_timeout_ms: i64,
    /// A write that times out takes this long to fail (`write_request_timeout_in_ms`).
    pub write_timeout_ms: i64,
}

/// Default nodes.
pub const DEFAULT_NODES: u32 = 3;
/// Default vnodes per node (Scylla's `num_tokens`).
pub const DEFAULT_VNODES_PER_NODE: u32 = 256;
/// Default shards per node.
pub const DEFAULT_SHARDS_PER_NODE: u32 = 4;
/// Default node clock skew bound (NTP-synchronised machines).
pub const DEFAULT_CLOCK_SKEW_MS: i64 = 20;
/// Default minimum replication delay.
pub const DEFAULT_REPLICATION_DELAY_MIN_MS: i64 = 1;
/// Default maximum ordinary replication delay.
pub const DEFAULT_REPLICATION_DELAY_MAX_MS: i64 = 10;
/// Default stall probability per write.
pub const DEFAULT_STALL_PROBABILITY: f64 = 0.001;
/// Default stall length.
pub const DEFAULT_STALL_MS: i64 = 2_000;
/// Scylla's future-write limit in `cdc::metadata::get_stream` (5 s).
pub const DEFAULT_FUTURE_WRITE_LIMIT_MS: i64 = 5_000;
/// Scylla's past-write limit outside the current generation (5 s).
pub const DEFAULT_PAST_WRITE_LIMIT_MS: i64 = 5_000;
/// `2 * ring_delay + generation_leeway` = 2 × 30 s + 5 s.
pub const DEFAULT_GENERATION_DELAY_MS: i64 = 65_000;
/// CDC log TTL default (24 h).
pub const DEFAULT_CDC_TTL_S: i64 = 86_400;
/// Outbox row TTL default (24 h).
pub const DEFAULT_OUTBOX_TTL_S: i64 = 86_400;
/// Default write latency.
pub const DEFAULT_WRITE_LATENCY_MS: i64 = 1;
/// Default read latency.
pub const DEFAULT_READ_LATENCY_MS: i64 = 1;
/// Scylla's `read_request_timeout_in_ms`.
pub const DEFAULT_READ_TIMEOUT_MS: i64 = 5_000;
/// Scylla's `write_request_timeout_in_ms`.
pub const DEFAULT_WRITE_TIMEOUT_MS: i64 = 2_000;

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nodes: DEFAULT_NODES,
            vnodes_per_node: DEFAULT_VNODES_PER_NODE,
            shards_per_node: DEFAULT_SHARDS_PER_NODE,
            clock_skew_ms: DEFAULT_CLOCK_SKEW_MS,
            client_timestamps: false,
            client_clock_skew_ms: 0,
            client_timestamp_resolution_us: 1,
            replication_delay_min_ms: DEFAULT_REPLICATION_DELAY_MIN_MS,
            replication_delay_max_ms: DEFAULT_REPLICATION_DELAY_MAX_MS,
            stall_probability: DEFAULT_STALL_PROBABILITY,
            stall_ms: DEFAULT_STALL_MS,
            future_write_limit_ms: DEFAULT_FUTURE_WRITE_LIMIT_MS,
            past_write_limit_ms: DEFAULT_PAST_WRITE_LIMIT_MS,
            generation_delay_ms: DEFAULT_GENERATION_DELAY_MS,
            cdc_ttl_s: DEFAULT_CDC_TTL_S,
            outbox_ttl_s: DEFAULT_OUTBOX_TTL_S,
            orders_ttl_s: 0,
            write_latency_ms: DEFAULT_WRITE_LATENCY_MS,
            read_latency_ms: DEFAULT_READ_LATENCY_MS,
            read_timeout_ms: DEFAULT_READ_TIMEOUT_MS,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT_MS,
        }
    }
}

pub(crate) fn ms(v: i64) -> Duration {
    Duration::from_millis(v.max(0) as u64)
}

/// Who sent a request (costs are reported per client).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Client {
    /// The order writer.
    Writer,
    /// The relay under test.
    Relay,
}

/// The kinds of request the cluster counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryKind {
    /// The writer's logged batch.
    Write,
    /// A page of the polling relay's filtering scan.
    OutboxScan,
    /// A page of a CDC log window read.
    LogRead,
    /// `system.peers` and `cdc_generation_timestamps` queries.
    GenerationMeta,
    /// `cdc_streams_descriptions_v2` queries.
    StreamMeta,
    /// Checkpoint table reads.
    CheckpointRead,
    /// Checkpoint table writes.
    CheckpointWrite,
}

const KINDS: [QueryKind; 7] = [
    QueryKind::Write,
    QueryKind::OutboxScan,
    QueryKind::LogRead,
    QueryKind::GenerationMeta,
    QueryKind::StreamMeta,
    QueryKind::CheckpointRead,
    QueryKind::CheckpointWrite,
];

/// Requests and rows read, for one client and kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueryCount {
    /// Requests sent (including failed ones).
    pub queries: u64,
    /// Rows the cluster read to answer them.
    pub rows_scanned: u64,
}

/// Request counters of a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryStats {
    counts: [[QueryCount; 7]; 2],
}

impl QueryStats {
    fn slot(&mut self, client: Client, kind: QueryKind) -> &mut QueryCount {
        &mut self.counts[client as usize][kind as usize]
    }

    /// Counts one request of `client` and `kind` that read `rows` rows.
    pub fn add(&mut self, client: Client, kind: QueryKind, rows: usize) {
        let slot = self.slot(client, kind);
        slot.queries += 1;
        slot.rows_scanned += rows as u64;
    }

    /// Counter of one client and kind.
    pub fn get(&self, client: Client, kind: QueryKind) -> QueryCount {
        self.counts[client as usize][kind as usize]
    }

    /// Sum over every kind for one client.
    pub fn total(&self, client: Client) -> QueryCount {
        self.counts[client as usize]
            .iter()
            .fold(QueryCount::default(), |a, c| QueryCount {
                queries: a.queries + c.queries,
                rows_scanned: a.rows_scanned + c.rows_scanned,
            })
    }

    /// Every non-zero counter, ordered.
    pub fn nonzero(&self) -> Vec<(Client, QueryKind, QueryCount)> {
        let mut v = Vec::new();
        for client in [Client::Writer, Client::Relay] {
            for kind in KINDS {
                let c = self.get(client, kind);
                if c.queries > 0 {
                    v.push((client, kind, c));
                }
            }
        }
        v
    }
}

/// Injected database faults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DbFaults {
    /// Every request fails with `Unavailable`.
    pub unavailable: bool,
    /// Probability that a read times out.
    pub read_timeout_probability: f64,
    /// Probability that a write times out (and is not applied).
    pub write_timeout_probability: f64,
    /// Extra visibility delay of every write (a replication stall).
    pub stall_all_ms: i64,
}

/// The state behind a [`SimCluster`] handle.
#[derive(Debug)]
pub struct ClusterState {
    config: ClusterConfig,
    rng: SimRng,
    /// Ring and generations.
    pub topology: Topology,
    /// `outbox_messages_scylla_cdc_log`. Declared (so dropped) before the tables: its rows share
    /// their events with the outbox rows, and are spread over thousands of partitions. Dropped
    /// first, each row only releases its share; the outbox, in write order, then frees the
    /// events and their payloads in the order they were allocated.
    pub log: CdcLog,
    /// `orders` and `outbox_messages`.
    pub tables: BaseTables,
    /// The relay checkpoint table.
    pub checkpoints: CheckpointTable,
    /// Injected faults.
    pub faults: DbFaults,
    /// Request counters.
    pub stats: QueryStats,
    history: History,
    writes_since_purge: u32,
}

const PURGE_EVERY_WRITES: u32 = 4_096;

/// The simulated cluster: a shared handle (clones see the same cluster).
#[derive(Clone, Debug)]
pub struct SimCluster {
    state: Rc<RefCell<ClusterState>>,
}

impl SimCluster {
    /// A cluster whose first generation starts at `start`. `config` must have been validated
    /// (see [`SimBuilder::build`](crate::sim::SimBuilder::build)).
    pub fn new(config: ClusterConfig, start: Timestamp, mut rng: SimRng, history: History) -> Self {
        let skew = config.clock_skew_ms.saturating_mul(1_000);
        let skews: Vec<i64> = (0..config.nodes)
            .map(|_| rng.random_range(-skew..=skew))
            .collect();
        let topology = Topology::new(
            config.nodes,
            config.vnodes_per_node,
            config.shards_per_node,
            token::DEFAULT_IGNORE_MSB_BITS,
            &skews,
            start,
            &mut rng,
        );
        let streams = topology.generations[0].streams().count();
        history.record(start, OpKind::GenerationCreated { start, streams });
        let state = ClusterState {
            config,
            rng,
            topology,
            tables: BaseTables::default(),
            log: CdcLog::default(),
            checkpoints: CheckpointTable::default(),
            faults: DbFaults::default(),
            stats: QueryStats::default(),
            history,
            writes_since_purge: 0,
        };
        SimCluster {
            state: Rc::new(RefCell::new(state)),
        }
    }

    /// Read access to the whole state (for checks and reports).
    pub fn state(&self) -> std::cell::Ref<'_, ClusterState> {
        self.state.borrow()
    }

    pub(crate) fn state_mut(&self) -> std::cell::RefMut<'_, ClusterState> {
        self.state.borrow_mut()
    }

    /// The cluster's settings.
    pub fn config(&self) -> ClusterConfig {
        self.state.borrow().config.clone()
    }

    /// Request counters so far.
    pub fn stats(&self) -> QueryStats {
        self.state.borrow().stats.clone()
    }

    /// Makes every request fail with `Unavailable` (or heals it).
    pub fn set_unavailable(&self, on: bool) {
        self.state.borrow_mut().faults.unavailable = on;
    }

    /// Sets the probability that a read times out.
    pub fn set_read_timeout_probability(&self, p: f64) {
        self.state.borrow_mut().faults.read_timeout_probability = p;
    }

    /// Delays the visibility of every write by `stall_ms` (0 heals).
    pub fn set_stall_all_ms(&self, stall_ms: i64) {
        self.state.borrow_mut().faults.stall_all_ms = stall_ms;
    }

    /// Sets the probability that a write times out (unapplied).
    pub fn set_write_timeout_probability(&self, p: f64) {
        self.state.borrow_mut().faults.write_timeout_probability = p;
    }

    /// A node joins at `now`: a new generation starts `generation_delay_ms` later. Returns its
    /// start.
    pub fn join_node(&self, now: Timestamp) -> Timestamp {
        let mut s = self.state.borrow_mut();
        let s = &mut *s;
        let skew = s.config.clock_skew_ms.saturating_mul(1_000);
        let node_skew = s.rng.random_range(-skew..=skew);
        let start = now + ms(s.config.generation_delay_ms);
        s.topology
            .join(s.config.shards_per_node, node_skew, now, start, &mut s.rng);
        s.announce_last_generation(now)
    }

    /// The oldest node leaves at `now` (if more than one remains): a new generation starts
    /// `generation_delay_ms` later. Returns its start, or `None` if nothing changed.
    pub fn leave_node(&self, now: Timestamp) -> Option<Timestamp> {
        let mut s = self.state.borrow_mut();
        let s = &mut *s;
        let id = s.topology.nodes.first()?.id;
        let start = now + ms(s.config.generation_delay_ms);
        if !s.topology.leave(id, now, start, &mut s.rng) {
            return None;
        }
        Some(s.announce_last_generation(now))
    }
}

impl ClusterState {
    fn announce_last_generation(&mut self, now: Timestamp) -> Timestamp {
        let g = self
            .topology
            .generations
            .last()
            .expect("a generation exists");
        let start = g.start;
        self.history.record(
            now,
            OpKind::GenerationCreated {
                start,
                streams: g.streams().count(),
            },
        );
        start
    }

    /// Whether a read at this moment times out (draws from the cluster's RNG).
    pub(crate) fn read_fault(&mut self) -> Option<StoreError> {
        if self.faults.unavailable {
            return Some(StoreError::Unavailable);
        }
        let p = self.faults.read_timeout_probability;
        if p > 0.0 && self.rng.random_bool(p.min(1.0)) {
            return Some(StoreError::Timeout);
        }
        None
    }

    pub(crate) fn count(&mut self, client: Client, kind: QueryKind, rows: usize) {
        self.stats.add(client, kind, rows);
    }

    pub(crate) fn cfg(&self) -> &ClusterConfig {
        &self.config
    }

    /// The CDC stream of `order`'s partition in generation `gen_idx`.
    fn stream_of(&self, gen_idx: usize, order: AggregateId) -> StreamId {
        let token = token::murmur3_token(order.0.as_bytes());
        self.topology.generations[gen_idx].stream_for(token)
    }

    /// Starts loading what a write of `order` looks up: its `orders` row and its CDC stream's
    /// partition (in the newest generation). A hint: changes nothing.
    pub(crate) fn prefetch_write(&self, order: AggregateId) {
        self.tables.prefetch_order(order);
        if let Some(newest) = self.topology.generations.len().checked_sub(1) {
            self.log.prefetch_stream(self.stream_of(newest, order));
        }
    }

    /// Applies the writer's batch at `now`: both rows and the log row, or nothing.
    pub(crate) fn apply_batch(
        &mut self,
        batch: OrderBatch,
        now: Timestamp,
    ) -> Result<Committed, StoreError> {
        self.count(Client::Writer, QueryKind::Write, 0);
        if self.faults.unavailable {
            return Err(StoreError::Unavailable);
        }
        let p = self.faults.write_timeout_probability;
        if p > 0.0 && self.rng.random_bool(p.min(1.0)) {
            return Err(StoreError::Timeout);
        }
        // The coordinator is a random live node; its clock decides admission.
        let node = self.rng.random_range(0..self.topology.nodes.len());
        let coordinator_now = now.offset_micros(self.topology.nodes[node].clock_skew_us);
        let ts = match batch.timestamp {
            WriteTimestamp::Coordinator => coordinator_now,
            WriteTimestamp::Client(t) => t,
        };
        let future_limit = self.config.future_write_limit_ms.saturating_mul(1_000);
        if ts.micros_since(coordinator_now) > future_limit {
            return Err(StoreError::Rejected(
                "cdc: attempted to get a stream \"from the future\"".into(),
            ));
        }
        let Some(gen_idx) = self.topology.generation_index_at(ts) else {
            return Err(StoreError::Rejected(
                "cdc: could not find any CDC stream".into(),
            ));
        };
        // The log row goes in last; its partition's newest row loads meanwhile.
        let stream_id = self.stream_of(gen_idx, batch.event.aggregate_id);
        self.log.prefetch_newest(stream_id);
        let past_limit = self.config.past_write_limit_ms.saturating_mul(1_000);
        if coordinator_now.micros_since(ts) >= past_limit
            && self.topology.generation_index_at(coordinator_now) != Some(gen_idx)
        {
            return Err(StoreError::Rejected(
                "cdc: attempted to get a stream \"from the past\"".into(),
            ));
        }

        let mut delay = uniform_duration(
            &mut self.rng,
            ms(self.config.replication_delay_min_ms),
            ms(self.config.replication_delay_max_ms),
        );
        if self.config.stall_probability > 0.0
            && self.rng.random_bool(self.config.stall_probability.min(1.0))
        {
            delay += ms(self.config.stall_ms);
        }
        let visible_at = now + delay + ms(self.faults.stall_all_ms);
        let event = Rc::new(OutboxEvent {
            created_at: ts,
            ..batch.event
        });
        let time = CdcTime {
            micros: ts.0,
            lsb: self.rng.random(),
        };
        let order = Order {
            id: event.aggregate_id,
            status: batch.status,
            last_seq: event.seq,
            updated_at: ts,
        };
        if let Some(prev) = self.tables.order(&order.id) {
            assert_eq!(
                prev.last_seq + 1,
                event.seq,
                "writer skipped a seq for {}",
                order.id
            );
        } else {
            assert_eq!(event.seq, 1, "first event of {} must have seq 1", order.id);
        }
        let outbox_expiry = match self.config.outbox_ttl_s {
            0 => Timestamp::MAX,
            s => now + Duration::from_secs(s as u64),
        };
        let order_expiry = match self.config.orders_ttl_s {
            0 => None,
            s => Some(now + Duration::from_secs(s as u64)),
        };
        self.tables.insert_order(order, order_expiry);
        self.tables
            .insert_outbox(event.clone(), visible_at, outbox_expiry);
        let log_expiry = now + Duration::from_secs(self.config.cdc_ttl_s as u64);
        self.log
            .insert_write(stream_id, time, event, visible_at, log_expiry);

        self.writes_since_purge += 1;
        if self.writes_since_purge >= PURGE_EVERY_WRITES {
            self.writes_since_purge = 0;
            self.log.purge(now);
            self.tables.purge(now);
        }
        Ok(Committed {
            created_at: ts,
            visible_at: Some(visible_at),
            expires_at: Some(log_expiry.min(outbox_expiry)),
            order_expires_at: Some(order_expiry.unwrap_or(Timestamp::MAX)),
        })
    }
}
