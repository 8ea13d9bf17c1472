//! The CDC stream relay (the seed's phase 3): a model of scylla-cdc 0.7's `CDCLogReader` plus the
//! outbox consumer.
//!
//! The reader follows reference/scylla_cdc.md §2 and its pseudo-model, with the library's option
//! names and defaults (window 60 s, safety 30 s, sleep 10 s, pause between saves 10 s, start =
//! now when built, progress saving and loading off):
//! - one worker reads one generation at a time; a fetcher polls for the next generation every
//!   `sleep_interval` and, when it appears, bounds every reader of the current generation by its
//!   start; the next generation's readers start only after **all** current readers finished
//!   (the generation barrier);
//! - one reader per vnode group; each reads windows `[begin, min(begin + window, now − safety))` at
//!   millisecond precision, consumes every row (awaiting each publish), and sleeps
//!   `sleep_interval` after each window — also while lagging (PR #128 "no sleep on lag" was never
//!   merged);
//! - transient read errors are retried forever from the same page, 100 ms doubling up to
//!   `sleep_interval`; any other error stops every reader after its current window, and the worker
//!   returns the first error;
//! - checkpoints: the saver writes, for every stream of a reader, the end of its last fully
//!   consumed window every `pause_between_saves` — starting with the reader's *lower timestamp*
//!   before loaded checkpoints are applied (pitfall §2.6.3) — and on exit saves only the group's
//!   first stream, with the begin of the last window; the generation row is saved whenever the
//!   worker starts a generation's readers, the first one included;
//! - resume: `start = max(start_timestamp, loaded generation)`, the generation operating at
//!   `start` (or the earliest one), each reader from `max(lower, min loaded checkpoint of its
//!   streams)`. With the default `start_timestamp = now`, checkpoints older than now are ignored:
//!   rows written while the relay was down are skipped (scylla-cdc #120). That pitfall is
//!   modelled, not fixed: `stream-checkpointed` shows it, `stream-safe` avoids it.
//!
//! Departure from the library, on purpose: a crash drops every reader at once (the relay future
//! is dropped), where a library stop lets each reader finish one more window.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::{Either, select};
use futures::stream::FuturesUnordered;

use crate::cdc::{LogRow, StreamGroup, StreamId};
use crate::model::Timestamp;
use crate::ports::LocalFuture;
use crate::relay::{Relay, RelayContext, RelayError, backoff};

/// scylla-cdc's `DEFAULT_WINDOW_SIZE`.
pub const DEFAULT_WINDOW_SIZE: Duration = Duration::from_secs(60);
/// scylla-cdc's `DEFAULT_SAFETY_INTERVAL`.
pub const DEFAULT_SAFETY_INTERVAL: Duration = Duration::from_secs(30);
/// scylla-cdc's `DEFAULT_SLEEP_INTERVAL`.
pub const DEFAULT_SLEEP_INTERVAL: Duration = Duration::from_secs(10);
/// scylla-cdc's `DEFAULT_PAUSE` between checkpoint saves.
pub const DEFAULT_PAUSE_BETWEEN_SAVES: Duration = Duration::from_secs(10);
/// The scylla driver's default page size.
pub const DEFAULT_PAGE_SIZE: usize = 5_000;
/// scylla-cdc's `BASIC_TIMEOUT_SLEEP` (first retry pause after a transient error).
pub const BASIC_TIMEOUT_SLEEP: Duration = Duration::from_millis(100);
/// Pause after a publish failure before the consumer retries the same row.
pub const CONSUMER_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Where reading starts (scylla-cdc's `start_timestamp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartTimestamp {
    /// The system clock when the builder is created (the library default).
    Now,
    /// `now − d`, always.
    Ago(Duration),
    /// `now − resuming` if a saved generation exists (a restart), else `now − fresh`.
    Resume {
        /// Look-back on a first start: covers rows stamped slightly behind now (clock skew).
        fresh: Duration,
        /// Look-back on a restart: far enough that the loaded checkpoints win.
        resuming: Duration,
    },
}

/// Settings of a [`StreamRelay`], named as `CDCLogReaderBuilder`'s options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamConfig {
    /// `window_size`.
    pub window_size: Duration,
    /// `safety_interval`.
    pub safety_interval: Duration,
    /// `sleep_interval`.
    pub sleep_interval: Duration,
    /// `pause_between_saves`.
    pub pause_between_saves: Duration,
    /// `start_timestamp`.
    pub start: StartTimestamp,
    /// `should_load_progress`.
    pub should_load_progress: bool,
    /// `should_save_progress` (with a table-backed saver in the cluster).
    pub should_save_progress: bool,
    /// Page size of log reads.
    pub page_size: usize,
    /// Not in scylla-cdc: skip the sleep after a window while the reader is behind (PR #128).
    pub no_sleep_when_lagging: bool,
    /// Not in scylla-cdc: wrap the checkpoint saver so it never writes a stream's checkpoint
    /// below the position loaded for it. scylla-cdc's saver first writes the reader's lower
    /// timestamp for every stream (§2.6.3), so a second crash soon after a restart rewinds
    /// progress to the generation start or `now − TTL`: hours of re-reading at 6× real time.
    pub monotonic_checkpoints: bool,
    /// scylla-cdc's generation barrier: the next generation's readers start only after every
    /// reader of the current one finished. `false` exists to show what the barrier protects.
    pub generation_barrier: bool,
}

impl Default for StreamConfig {
    /// scylla-cdc 0.7's defaults.
    fn default() -> Self {
        StreamConfig {
            window_size: DEFAULT_WINDOW_SIZE,
            safety_interval: DEFAULT_SAFETY_INTERVAL,
            sleep_interval: DEFAULT_SLEEP_INTERVAL,
            pause_between_saves: DEFAULT_PAUSE_BETWEEN_SAVES,
            start: StartTimestamp::Now,
            should_load_progress: false,
            should_save_progress: false,
            page_size: DEFAULT_PAGE_SIZE,
            no_sleep_when_lagging: false,
            generation_barrier: true,
            monotonic_checkpoints: false,
        }
    }
}

impl StreamConfig {
    /// One line of settings for `outbox-sim presets`.
    pub fn describe(&self) -> String {
        let start = match self.start {
            StartTimestamp::Now => "now".to_string(),
            StartTimestamp::Ago(d) => format!("now-{}s", d.as_secs()),
            StartTimestamp::Resume { fresh, resuming } => {
                format!(
                    "now-{}ms fresh, now-{}s on resume",
                    fresh.as_millis(),
                    resuming.as_secs()
                )
            }
        };
        format!(
            "cdc stream: window {} ms, safety {} ms, sleep {} ms, saves every {} ms, start {start}, load {}, save {}{}{}",
            self.window_size.as_millis(),
            self.safety_interval.as_millis(),
            self.sleep_interval.as_millis(),
            self.pause_between_saves.as_millis(),
            self.should_load_progress,
            self.should_save_progress,
            if self.no_sleep_when_lagging {
                ", no sleep while lagging"
            } else {
                ""
            },
            if self.monotonic_checkpoints {
                ", monotonic saver"
            } else {
                ""
            },
        )
    }
}

/// The CDC stream relay.
#[derive(Clone, Debug)]
pub struct StreamRelay {
    name: String,
    config: StreamConfig,
}

impl StreamRelay {
    /// A stream relay named `name`.
    pub fn new(name: &str, config: StreamConfig) -> Self {
        assert!(config.page_size > 0, "page size must be positive");
        assert!(
            !config.sleep_interval.is_zero()
                || config.no_sleep_when_lagging
                || !config.window_size.is_zero()
        );
        StreamRelay {
            name: name.to_string(),
            config,
        }
    }

    /// Its settings.
    pub fn config(&self) -> &StreamConfig {
        &self.config
    }
}

impl Relay for StreamRelay {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn run(&self, ctx: RelayContext) -> LocalFuture<'static, Result<(), RelayError>> {
        Box::pin(worker(Rc::new(self.config.clone()), ctx))
    }
}

/// Retries a transient store error forever with scylla-cdc's backoff.
async fn retry<T, F>(
    ctx: &RelayContext,
    cap: Duration,
    mut op: impl FnMut() -> F,
) -> Result<T, RelayError>
where
    F: std::future::Future<Output = Result<T, crate::ports::StoreError>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() => {
                ctx.clock
                    .sleep(backoff(BASIC_TIMEOUT_SLEEP, attempt, cap))
                    .await;
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The worker: generations one after another, all readers of one generation at a time.
async fn worker(cfg: Rc<StreamConfig>, ctx: RelayContext) -> Result<(), RelayError> {
    let now = ctx.clock.now();
    let mut start = match cfg.start {
        StartTimestamp::Now => now,
        StartTimestamp::Ago(d) => now - d,
        StartTimestamp::Resume { fresh, .. } => now - fresh,
    };
    if cfg.should_load_progress {
        // build(): an error here fails the build, i.e. the relay.
        let loaded = ctx.checkpoints.load_generation().await?;
        if let (Some(_), StartTimestamp::Resume { resuming, .. }) = (loaded, cfg.start) {
            start = now - resuming;
        }
        if let Some(g) = loaded {
            start = start.max(g);
        }
    }
    // The fetcher's first lookup: the generation at `start`, else the earliest; poll until one exists.
    let mut generation = loop {
        let at = retry(&ctx, cfg.sleep_interval, || ctx.store.generation_at(start)).await?;
        let found = match at {
            Some(g) => Some(g),
            None => retry(&ctx, cfg.sleep_interval, || ctx.store.first_generation()).await?,
        };
        if let Some(g) = found {
            break g;
        }
        ctx.clock.sleep(cfg.sleep_interval).await;
    };
    if !cfg.generation_barrier {
        return worker_without_barrier(cfg, ctx, start, generation).await;
    }
    loop {
        // Every generation the worker starts, the first included, is saved before its readers
        // spawn; a failed save fails the worker.
        if cfg.should_save_progress {
            ctx.checkpoints.save_generation(generation).await?;
        }
        let lower = start.max(generation);
        let groups = retry(&ctx, cfg.sleep_interval, || {
            ctx.store.stream_groups(generation)
        })
        .await?;
        match read_generation(&cfg, &ctx, generation, lower, groups, None).await? {
            Some(next) => generation = next,
            None => return Ok(()),
        }
    }
}

/// Not scylla-cdc: starts each generation's readers as soon as the generation is known, while the
/// previous generation's readers are still finishing (what the barrier prevents).
async fn worker_without_barrier(
    cfg: Rc<StreamConfig>,
    ctx: RelayContext,
    start: Timestamp,
    mut generation: Timestamp,
) -> Result<(), RelayError> {
    let mut running: FuturesUnordered<LocalFuture<'_, Result<Option<Timestamp>, RelayError>>> =
        FuturesUnordered::new();
    loop {
        if cfg.should_save_progress {
            ctx.checkpoints.save_generation(generation).await?;
        }
        let lower = start.max(generation);
        let groups = retry(&ctx, cfg.sleep_interval, || {
            ctx.store.stream_groups(generation)
        })
        .await?;
        let (tx, rx) = futures::channel::oneshot::channel();
        running.push(Box::pin(read_generation(
            &cfg,
            &ctx,
            generation,
            lower,
            groups,
            Some(tx),
        )));
        let mut rx = rx;
        loop {
            match select(rx, running.next()).await {
                Either::Left((Ok(next), _)) => {
                    generation = next;
                    break;
                }
                Either::Left((Err(_), _)) => return futures::future::pending().await,
                Either::Right((Some(Err(e)), _)) => return Err(e),
                Either::Right((Some(Ok(_)), pending_rx)) => rx = pending_rx,
                Either::Right((None, pending_rx)) => match pending_rx.await {
                    Ok(next) => {
                        generation = next;
                        break;
                    }
                    Err(_) => return futures::future::pending().await,
                },
            }
        }
    }
}

/// Runs every reader of `generation` plus the next-generation fetcher; returns the next
/// generation once every reader passed it.
async fn read_generation(
    cfg: &Rc<StreamConfig>,
    ctx: &RelayContext,
    generation: Timestamp,
    lower: Timestamp,
    groups: Vec<StreamGroup>,
    mut announce: Option<futures::channel::oneshot::Sender<Timestamp>>,
) -> Result<Option<Timestamp>, RelayError> {
    let uppers: Vec<Rc<Cell<Option<Timestamp>>>> =
        groups.iter().map(|_| Rc::new(Cell::new(None))).collect();
    let mut readers: FuturesUnordered<LocalFuture<'_, Result<(), RelayError>>> = groups
        .into_iter()
        .zip(&uppers)
        .map(|(g, upper)| {
            Box::pin(read_group(
                cfg.clone(),
                ctx.clone(),
                g.streams,
                lower,
                upper.clone(),
            )) as LocalFuture<'_, _>
        })
        .collect();
    let mut next: Option<Timestamp> = None;
    let mut first_error: Option<RelayError> = None;
    // The fetcher: poll `next_generation` every sleep interval until one appears.
    let fetch = async {
        loop {
            // scylla-cdc counts peers to pick the consistency, then asks for the next generation;
            // errors are retried on the next round.
            let _ = ctx.store.peer_count().await;
            if let Ok(Some(g)) = ctx.store.next_generation(generation).await {
                return g;
            }
            ctx.clock.sleep(cfg.sleep_interval).await;
        }
    };
    let mut fetch: LocalFuture<'_, Timestamp> = Box::pin(fetch);
    let mut fetching = true;
    while !readers.is_empty() {
        if fetching {
            match select(readers.next(), fetch.as_mut()).await {
                Either::Left((Some(result), _)) => note(result, &mut first_error, &uppers),
                Either::Left((None, _)) => break,
                Either::Right((g, _)) => {
                    fetching = false;
                    next = Some(g);
                    if let Some(tx) = announce.take() {
                        let _ = tx.send(g);
                    }
                    if first_error.is_none() {
                        for u in &uppers {
                            u.set(Some(g));
                        }
                    }
                }
            }
        } else if let Some(result) = readers.next().await {
            note(result, &mut first_error, &uppers);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(next),
    }
}

fn note(
    result: Result<(), RelayError>,
    first_error: &mut Option<RelayError>,
    uppers: &[Rc<Cell<Option<Timestamp>>>],
) {
    if let Err(e) = result
        && first_error.is_none()
    {
        *first_error = Some(e);
        // Stop every reader after its current window.
        for u in uppers {
            u.set(Some(Timestamp::MIN));
        }
    }
}

/// One stream reader (one vnode group) with its checkpoint saver.
async fn read_group(
    cfg: Rc<StreamConfig>,
    ctx: RelayContext,
    streams: Vec<StreamId>,
    lower: Timestamp,
    upper: Rc<Cell<Option<Timestamp>>>,
) -> Result<(), RelayError> {
    let mut begin = lower;
    // Per stream, the position loaded at start (the floor of a monotonic saver).
    let mut floors: Vec<Timestamp> = vec![Timestamp::MIN; streams.len()];
    if cfg.should_load_progress {
        let mut loaded = Vec::new();
        for (i, s) in streams.iter().enumerate() {
            if let Some(t) =
                retry(&ctx, cfg.sleep_interval, || ctx.checkpoints.load_stream(*s)).await?
            {
                loaded.push(t);
                floors[i] = t;
            }
        }
        if let Some(min) = loaded.into_iter().min() {
            begin = begin.max(min);
        }
    }
    if !cfg.monotonic_checkpoints {
        floors.fill(Timestamp::MIN);
    }
    // The watch channel the saver reads: starts at `lower`, not at the loaded position.
    let progress = Rc::new(Cell::new(lower));
    let reading = read_windows(&cfg, &ctx, &streams, begin, &upper, &progress);
    let result = if cfg.should_save_progress {
        let saver = save_periodically(&cfg, &ctx, &streams, &floors, &progress);
        match select(Box::pin(reading), Box::pin(saver)).await {
            Either::Left((r, _)) => r,
            Either::Right(((), _)) => unreachable!("the saver never ends"),
        }
    } else {
        reading.await
    };
    if result.is_ok() && cfg.should_save_progress && progress.get() >= floors[0] {
        // The final save: first stream only, the begin of the last window.
        ctx.checkpoints
            .save_stream(streams[0], progress.get())
            .await?;
    }
    result
}

async fn save_periodically(
    cfg: &StreamConfig,
    ctx: &RelayContext,
    streams: &[StreamId],
    floors: &[Timestamp],
    progress: &Cell<Timestamp>,
) {
    loop {
        let at = progress.get();
        for (s, floor) in streams.iter().zip(floors) {
            if at < *floor {
                continue; // a monotonic saver refuses to move a checkpoint back
            }
            // scylla-cdc logs a failed save and carries on.
            let _ = ctx.checkpoints.save_stream(*s, at).await;
        }
        ctx.clock.sleep(cfg.pause_between_saves).await;
    }
}

/// The window loop of one reader.
async fn read_windows(
    cfg: &StreamConfig,
    ctx: &RelayContext,
    streams: &[StreamId],
    mut begin: Timestamp,
    upper: &Cell<Option<Timestamp>>,
    progress: &Cell<Timestamp>,
) -> Result<(), RelayError> {
    let too_recent = |begin: Timestamp| {
        let safe = ctx.clock.now() - cfg.safety_interval;
        (begin > safe).then(|| begin.saturating_since(safe) + Duration::from_millis(100))
    };
    if let Some(wait) = too_recent(begin) {
        ctx.clock.sleep(wait).await;
    }
    loop {
        if let Some(wait) = too_recent(begin) {
            ctx.clock.sleep(wait).await; // "time travel": wait and recompute
            continue;
        }
        let safe = ctx.clock.now() - cfg.safety_interval;
        let end = (begin + cfg.window_size).min(safe).floor_ms();
        let window_begin = begin.floor_ms();
        let mut page = None;
        let mut attempt = 0;
        loop {
            match ctx
                .store
                .read_log(streams, window_begin, end, page, cfg.page_size)
                .await
            {
                Ok(p) => {
                    attempt = 0;
                    for row in &p.rows {
                        consume(ctx, row).await?;
                    }
                    match p.next {
                        Some(state) => page = Some(state),
                        None => break,
                    }
                }
                Err(e) if e.is_transient() => {
                    ctx.clock
                        .sleep(backoff(BASIC_TIMEOUT_SLEEP, attempt, cfg.sleep_interval))
                        .await;
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if upper.get().is_some_and(|u| end >= u) {
            return Ok(());
        }
        begin = end;
        progress.set(begin);
        let lagging = begin + cfg.window_size < ctx.clock.now() - cfg.safety_interval;
        if !(cfg.no_sleep_when_lagging && lagging) {
            ctx.clock.sleep(cfg.sleep_interval).await;
        }
    }
}

/// The outbox consumer shared with the live world: one CDC row → one publish, awaited before the
/// row counts as consumed. Transient publish errors are retried (back-pressure on this reader);
/// a fatal one fails the reader, as an `Err` from `consume_cdc` does.
pub async fn consume(ctx: &RelayContext, row: &LogRow) -> Result<(), RelayError> {
    loop {
        match ctx.publisher.publish(&row.event).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_transient() => ctx.clock.sleep(CONSUMER_RETRY_PAUSE).await,
            Err(e) => return Err(e.into()),
        }
    }
}
