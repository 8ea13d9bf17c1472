//! The port handles of the simulated cluster: [`SimStore`] (an [`OutboxStore`]) and
//! [`SimCheckpoints`] (a [`CheckpointStore`]).
//!
//! A handle is one client's session: it counts its requests under its [`Client`], reads time from
//! the [`Clock`] it was given, and spends simulated time on every request (latency, or the
//! timeout before a timed-out request fails). State is evaluated when the request arrives.

use std::rc::Rc;

use super::{Client, ClusterState, QueryKind, SimCluster, ms};
use crate::cdc::{LogPage, PageState, StreamGroup, StreamId};
use crate::history::{CheckpointWhat, OpKind};
use crate::model::{AggregateId, Cursor, OutboxEvent, Timestamp};
use crate::ports::{
    CheckpointStore, Clock, Committed, LocalFuture, OrderBatch, OutboxStore, ScanFrom, StoreError,
};

/// One client's session on the simulated cluster.
#[derive(Clone)]
pub struct SimStore {
    cluster: SimCluster,
    clock: Rc<dyn Clock>,
    client: Client,
}

impl std::fmt::Debug for SimStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimStore")
            .field("client", &self.client)
            .finish()
    }
}

impl SimStore {
    /// A session of `client` on `cluster`, timed by `clock`.
    pub fn new(cluster: SimCluster, clock: Rc<dyn Clock>, client: Client) -> Self {
        SimStore {
            cluster,
            clock,
            client,
        }
    }

    /// Runs one read request: fault check, the query against the state at arrival, then latency.
    /// `query` returns the value, the rows it read and the requests (pages) it took.
    /// Applies a batch as it arrives; the answer comes after the write latency, or after the
    /// timeout for a write that timed out.
    fn settle(&self, batch: OrderBatch) -> (Result<Committed, StoreError>, std::time::Duration) {
        let now = self.clock.now();
        let mut s = self.cluster.state_mut();
        let result = s.apply_batch(batch, now);
        let wait = if result == Err(StoreError::Timeout) {
            ms(s.cfg().write_timeout_ms)
        } else {
            ms(s.cfg().write_latency_ms)
        };
        (result, wait)
    }

    async fn read<T>(
        &self,
        kind: QueryKind,
        query: impl FnOnce(&mut ClusterState, Timestamp) -> (T, usize, u64),
    ) -> Result<T, StoreError> {
        let now = self.clock.now();
        let (fault, latency, timeout) = {
            let mut s = self.cluster.state_mut();
            let fault = s.read_fault();
            (
                fault,
                ms(s.cfg().read_latency_ms),
                ms(s.cfg().read_timeout_ms),
            )
        };
        if let Some(err) = fault {
            self.cluster.state_mut().count(self.client, kind, 0);
            let wait = if err == StoreError::Timeout {
                timeout
            } else {
                latency
            };
            self.clock.sleep(wait).await;
            return Err(err);
        }
        let (value, requests) = {
            let mut s = self.cluster.state_mut();
            let (v, rows, requests) = query(&mut s, now);
            let requests = requests.max(1);
            for i in 0..requests {
                s.count(self.client, kind, if i == 0 { rows } else { 0 });
            }
            (v, requests)
        };
        self.clock
            .sleep(latency.saturating_mul(requests.min(u64::from(u32::MAX)) as u32))
            .await;
        Ok(value)
    }
}

impl OutboxStore for SimStore {
    fn write(&self, batch: OrderBatch) -> LocalFuture<'_, Result<Committed, StoreError>> {
        Box::pin(async move {
            let (result, wait) = self.settle(batch);
            self.clock.sleep(wait).await;
            result
        })
    }

    fn settles_writes(&self) -> bool {
        true
    }

    fn prepare_write(&self, order: AggregateId) {
        self.cluster.state().prefetch_write(order);
    }

    fn write_settled(
        &self,
        batch: OrderBatch,
    ) -> Result<(Result<Committed, StoreError>, std::time::Duration), OrderBatch> {
        Ok(self.settle(batch))
    }

    fn scan_outbox(
        &self,
        from: ScanFrom,
        until: Timestamp,
        page_size: usize,
    ) -> LocalFuture<'_, Result<Vec<OutboxEvent>, StoreError>> {
        Box::pin(self.read(QueryKind::OutboxScan, move |s, now| {
            let rows = s.tables.scan(from, until, now);
            // ALLOW FILTERING reads every partition; pages are counted by rows returned.
            let pages = rows.len().div_ceil(page_size.max(1)) as u64;
            let scanned = s.tables.outbox_len();
            (rows, scanned, pages)
        }))
    }

    fn peer_count(&self) -> LocalFuture<'_, Result<usize, StoreError>> {
        Box::pin(self.read(QueryKind::GenerationMeta, |s, _| {
            (
                s.topology.nodes.len().saturating_sub(1),
                s.topology.nodes.len().saturating_sub(1),
                1,
            )
        }))
    }

    fn generation_at(
        &self,
        t: Timestamp,
    ) -> LocalFuture<'_, Result<Option<Timestamp>, StoreError>> {
        Box::pin(self.read(QueryKind::GenerationMeta, move |s, now| {
            let g = s
                .topology
                .generations
                .iter()
                .rev()
                .find(|g| g.announced_at <= now && g.start <= t);
            (g.map(|g| g.start), 1, 1)
        }))
    }

    fn next_generation(
        &self,
        after: Timestamp,
    ) -> LocalFuture<'_, Result<Option<Timestamp>, StoreError>> {
        Box::pin(self.read(QueryKind::GenerationMeta, move |s, now| {
            let g = s
                .topology
                .generations
                .iter()
                .find(|g| g.announced_at <= now && g.start > after);
            (g.map(|g| g.start), 1, 1)
        }))
    }

    fn first_generation(&self) -> LocalFuture<'_, Result<Option<Timestamp>, StoreError>> {
        Box::pin(self.read(QueryKind::GenerationMeta, |s, now| {
            let listed = s
                .topology
                .generations
                .iter()
                .filter(|g| g.announced_at <= now)
                .count();
            (s.topology.generations.first().map(|g| g.start), listed, 1)
        }))
    }

    fn stream_groups(&self, g: Timestamp) -> LocalFuture<'_, Result<Vec<StreamGroup>, StoreError>> {
        Box::pin(self.read(QueryKind::StreamMeta, move |s, now| {
            let groups = s
                .topology
                .generations
                .iter()
                .find(|gn| gn.start == g && gn.announced_at <= now)
                .map(|gn| gn.groups().to_vec())
                .unwrap_or_default();
            let n = groups.len();
            (groups, n, 1)
        }))
    }

    fn read_log<'a>(
        &'a self,
        streams: &'a [StreamId],
        from: Timestamp,
        to: Timestamp,
        page: Option<PageState>,
        page_size: usize,
    ) -> LocalFuture<'a, Result<LogPage, StoreError>> {
        Box::pin(self.read(QueryKind::LogRead, move |s, now| {
            let p = s.log.read(streams, from, to, page, page_size, now);
            let n = p.rows.len();
            (p, n, 1)
        }))
    }
}

/// The relay's checkpoint table on the simulated cluster, as one relay incarnation sees it;
/// saves and loads are recorded in the history under that incarnation.
#[derive(Clone, Debug)]
pub struct SimCheckpoints {
    store: SimStore,
    incarnation: u32,
}

impl SimCheckpoints {
    /// The checkpoint table of `cluster`, accessed by relay incarnation `incarnation`, timed by
    /// `clock`.
    pub fn new(cluster: SimCluster, clock: Rc<dyn Clock>, incarnation: u32) -> Self {
        SimCheckpoints {
            store: SimStore::new(cluster, clock, Client::Relay),
            incarnation,
        }
    }

    async fn save(
        &self,
        what: CheckpointWhat,
        position: Timestamp,
        apply: impl FnOnce(&mut ClusterState),
    ) -> Result<(), StoreError> {
        let store = &self.store;
        let (fault, latency, timeout) = {
            let mut s = store.cluster.state_mut();
            s.count(Client::Relay, QueryKind::CheckpointWrite, 0);
            (
                s.read_fault(),
                ms(s.cfg().write_latency_ms),
                ms(s.cfg().write_timeout_ms),
            )
        };
        if let Some(err) = fault {
            let wait = if err == StoreError::Timeout {
                timeout
            } else {
                latency
            };
            store.clock.sleep(wait).await;
            return Err(err);
        }
        {
            let now = store.clock.now();
            let mut s = store.cluster.state_mut();
            apply(&mut s);
            let incarnation = self.incarnation;
            s.history.record(
                now,
                OpKind::CheckpointSaved {
                    what,
                    position,
                    incarnation,
                },
            );
        }
        store.clock.sleep(latency).await;
        Ok(())
    }

    async fn load<T: Copy>(
        &self,
        what: CheckpointWhat,
        read: impl FnOnce(&ClusterState) -> Option<T>,
        position: impl FnOnce(T) -> Timestamp,
    ) -> Result<Option<T>, StoreError> {
        let v = self
            .store
            .read(QueryKind::CheckpointRead, |s, _| (read(s), 1, 1))
            .await?;
        let now = self.store.clock.now();
        let op = OpKind::CheckpointLoaded {
            what,
            position: v.map(position),
            incarnation: self.incarnation,
        };
        self.store.cluster.state_mut().history.record(now, op);
        Ok(v)
    }
}

impl CheckpointStore for SimCheckpoints {
    fn save_cursor(&self, cursor: Cursor) -> LocalFuture<'_, Result<(), StoreError>> {
        Box::pin(
            self.save(CheckpointWhat::Cursor, cursor.created_at, move |s| {
                s.checkpoints.cursor = Some(cursor)
            }),
        )
    }

    fn load_cursor(&self) -> LocalFuture<'_, Result<Option<Cursor>, StoreError>> {
        Box::pin(self.load(
            CheckpointWhat::Cursor,
            |s| s.checkpoints.cursor,
            |c| c.created_at,
        ))
    }

    fn save_generation(&self, generation: Timestamp) -> LocalFuture<'_, Result<(), StoreError>> {
        Box::pin(self.save(CheckpointWhat::Generation, generation, move |s| {
            s.checkpoints.generation = Some(generation)
        }))
    }

    fn load_generation(&self) -> LocalFuture<'_, Result<Option<Timestamp>, StoreError>> {
        Box::pin(self.load(
            CheckpointWhat::Generation,
            |s| s.checkpoints.generation,
            |g| g,
        ))
    }

    fn save_stream(
        &self,
        stream: StreamId,
        time: Timestamp,
    ) -> LocalFuture<'_, Result<(), StoreError>> {
        Box::pin(self.save(CheckpointWhat::Stream(stream), time, move |s| {
            s.checkpoints.streams.insert(stream, time);
        }))
    }

    fn load_stream(
        &self,
        stream: StreamId,
    ) -> LocalFuture<'_, Result<Option<Timestamp>, StoreError>> {
        Box::pin(self.load(
            CheckpointWhat::Stream(stream),
            move |s| s.checkpoints.streams.get(&stream).copied(),
            |t| t,
        ))
    }
}
