//! The polling relay (the seed's phase 2): scan the outbox table every `poll_interval` for rows
//! newer than a cursor, publish them in `(created_at, id)` order, move the cursor.
//!
//! The cursor is saved in the cluster only after the publisher acknowledged every row up to it,
//! so a crash re-publishes (duplicates) and never skips. What it cannot see it can skip: a row
//! whose `created_at` is behind the cursor when it becomes visible (clock skew between writers,
//! replication delay) is never read again. The `lag` window — read only rows older than
//! `now − lag` — is the cure, as in Kafka Connect JDBC's `timestamp.delay.interval.ms` and
//! stream-reactor's `slice.delay.ms`.
//!
//! Cursor modes: `Exclusive` is the seed's `created_at > last_seen` (by timestamp only, so rows
//! sharing the last timestamp but not yet seen are skipped — stream-reactor #448); `Inclusive`
//! re-reads `created_at >= last_seen` and drops the overlap it already published in this
//! incarnation (after a restart the overlap is re-published: a duplicate the crash explains).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::model::{Cursor, EventId, Timestamp};
use crate::ports::{LocalFuture, ScanFrom};
use crate::relay::{Relay, RelayContext, RelayError, backoff};

/// How the cursor bounds the next scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CursorMode {
    /// `created_at > last_seen` (the seed's algorithm).
    Exclusive,
    /// `created_at >= last_seen`, overlap deduplicated.
    Inclusive,
}

/// Settings of a [`PollingRelay`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollingConfig {
    /// Pause between scans.
    pub poll_interval: Duration,
    /// Only rows with `created_at < now − lag` are read (0 = no upper bound at all).
    pub lag: Duration,
    /// Rows per page of the scan.
    pub page_size: usize,
    /// Cursor semantics.
    pub cursor: CursorMode,
    /// Publish at most this many rows per poll (like JDBC's `batch.max.rows`); `None` = all.
    pub max_rows_per_poll: Option<usize>,
    /// Send a row only after the previous row of its aggregate was acknowledged (rows of
    /// different aggregates still go out concurrently). Without it, a failed send re-sent later
    /// lands behind its aggregate's next event.
    pub ordered_per_key: bool,
}

/// Default poll interval.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Default page size.
pub const DEFAULT_PAGE_SIZE: usize = 1_000;

impl Default for PollingConfig {
    fn default() -> Self {
        PollingConfig {
            poll_interval: DEFAULT_POLL_INTERVAL,
            lag: Duration::ZERO,
            page_size: DEFAULT_PAGE_SIZE,
            cursor: CursorMode::Exclusive,
            max_rows_per_poll: None,
            ordered_per_key: true,
        }
    }
}

impl PollingConfig {
    /// One line of settings for `outbox-sim presets`.
    pub fn describe(&self) -> String {
        let cursor = match self.cursor {
            CursorMode::Exclusive => "created_at > last_seen",
            CursorMode::Inclusive => "created_at >= last_seen, overlap deduplicated",
        };
        format!(
            "polling: every {} ms, lag {} ms, page {}, cursor {cursor}; cursor saved after every ack",
            self.poll_interval.as_millis(),
            self.lag.as_millis(),
            self.page_size
        )
    }
}

/// The polling relay.
#[derive(Clone, Debug)]
pub struct PollingRelay {
    name: String,
    config: PollingConfig,
}

impl PollingRelay {
    /// A polling relay named `name`.
    pub fn new(name: &str, config: PollingConfig) -> Self {
        assert!(config.page_size > 0, "page size must be positive");
        PollingRelay {
            name: name.to_string(),
            config,
        }
    }

    /// Its settings.
    pub fn config(&self) -> &PollingConfig {
        &self.config
    }
}

impl Relay for PollingRelay {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn run(&self, ctx: RelayContext) -> LocalFuture<'static, Result<(), RelayError>> {
        Box::pin(poll_loop(self.config.clone(), ctx))
    }
}

/// Publishes `rows` in order. With `ordered_per_key`, rows of different aggregates go out
/// concurrently but a row is sent only after the previous row of its aggregate was acknowledged,
/// and sending stops at the first failure (`None` = not sent); otherwise the whole page is sent
/// at once.
async fn publish_rows(
    ctx: &RelayContext,
    rows: &[crate::model::OutboxEvent],
    ordered_per_key: bool,
) -> Vec<Option<Result<crate::ports::Delivery, crate::ports::PublishError>>> {
    if !ordered_per_key {
        return ctx
            .publisher
            .publish_all(rows)
            .await
            .into_iter()
            .map(Some)
            .collect();
    }
    let mut results: Vec<Option<_>> = (0..rows.len()).map(|_| None).collect();
    let mut i = 0;
    // Membership only, never iterated: a hash set keeps the relay deterministic.
    let mut aggregates = rustc_hash::FxHashSet::default();
    while i < rows.len() {
        aggregates.clear();
        let mut j = i;
        while j < rows.len() && aggregates.insert(rows[j].aggregate_id) {
            j += 1;
        }
        let chunk = ctx.publisher.publish_all(&rows[i..j]).await;
        let failed = chunk.iter().any(Result::is_err);
        for (k, r) in chunk.into_iter().enumerate() {
            results[i + k] = Some(r);
        }
        if failed {
            break;
        }
        i = j;
    }
    results
}

async fn poll_loop(cfg: PollingConfig, ctx: RelayContext) -> Result<(), RelayError> {
    let mut failures = 0u32;
    let mut cursor: Option<Cursor> = loop {
        match ctx.checkpoints.load_cursor().await {
            Ok(c) => break c,
            Err(e) if e.is_transient() => {
                failures += 1;
                ctx.clock
                    .sleep(backoff(
                        Duration::from_millis(100),
                        failures,
                        cfg.poll_interval,
                    ))
                    .await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    // Ids published at or after the cursor's timestamp in this incarnation (inclusive mode).
    let mut overlap: BTreeSet<(Timestamp, EventId)> = BTreeSet::new();
    loop {
        let now = ctx.clock.now();
        let until = if cfg.lag.is_zero() {
            Timestamp::MAX
        } else {
            now - cfg.lag
        };
        let from = match (cursor, cfg.cursor) {
            (None, _) => ScanFrom::Beginning,
            (Some(c), CursorMode::Exclusive) => ScanFrom::After(Cursor {
                created_at: c.created_at,
                id: EventId(uuid::Uuid::max()),
            }),
            (Some(c), CursorMode::Inclusive) => ScanFrom::AtOrAfter(c.created_at),
        };
        let rows = match ctx.store.scan_outbox(from, until, cfg.page_size).await {
            Ok(rows) => rows,
            Err(e) if e.is_transient() => {
                ctx.clock.sleep(cfg.poll_interval).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let mut fresh: Vec<_> = rows
            .into_iter()
            .filter(|e| !overlap.contains(&(e.created_at, e.id)))
            .collect();
        if let Some(limit) = cfg.max_rows_per_poll {
            fresh.truncate(limit);
        }
        let results = publish_rows(&ctx, &fresh, cfg.ordered_per_key).await;
        // Advance over the acknowledged prefix only; remember every acknowledged row so a re-read
        // in this incarnation does not send it again.
        let mut advanced = None;
        let mut prefix = true;
        let mut fatal = None;
        for (event, result) in fresh.iter().zip(&results) {
            match result {
                Some(Ok(_)) => {
                    if prefix {
                        advanced = Some(Cursor {
                            created_at: event.created_at,
                            id: event.id,
                        });
                    }
                }
                Some(Err(e)) => {
                    prefix = false;
                    if !e.is_transient() {
                        fatal = Some(e.clone());
                    }
                }
                None => prefix = false,
            }
        }
        // Keep only the overlap the next inclusive scan can return: rows at or after the cursor.
        let keep_from = advanced.map(|c| (c.created_at, EventId(uuid::Uuid::nil())));
        for (event, result) in fresh.iter().zip(&results) {
            let key = (event.created_at, event.id);
            if matches!(result, Some(Ok(_))) && keep_from.is_none_or(|k| key >= k) {
                overlap.insert(key);
            }
        }
        if let Some(c) = advanced {
            cursor = Some(c);
            overlap = overlap.split_off(&(c.created_at, EventId(uuid::Uuid::nil())));
            // The cursor lives in the cluster; if it cannot be saved now, a later save catches up.
            let _ = ctx.checkpoints.save_cursor(c).await;
        }
        if let Some(e) = fatal {
            return Err(e.into());
        }
        ctx.clock.sleep(cfg.poll_interval).await;
    }
}
