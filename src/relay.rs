//! Relays move committed outbox events to the topic. The [`Relay`] trait is the extension point;
//! [`PollingRelay`] and [`StreamRelay`] are the two reference relays, and [`Preset`] names the
//! configurations the harness compares.
//!
//! A relay is a future built from a [`RelayContext`] (the ports of one incarnation). A crash is
//! that future dropped at an await point; a restart calls [`Relay::run`] again with a new context
//! holding the same durable store and checkpoint table and a new producer session. A relay that
//! returns (with or without an error) is restarted by the harness's supervisor.
//!
//! Plugging in your own relay:
//!
//! ```
//! use std::rc::Rc;
//! use outbox_sim::ports::{LocalFuture, ScanFrom};
//! use outbox_sim::relay::{Relay, RelayContext, RelayError};
//!
//! /// Republishes the whole outbox every 5 s: loses nothing, duplicates everything.
//! #[derive(Debug)]
//! struct Naive;
//!
//! impl Relay for Naive {
//!     fn name(&self) -> String {
//!         "naive".into()
//!     }
//!     fn run(&self, ctx: RelayContext) -> LocalFuture<'static, Result<(), RelayError>> {
//!         Box::pin(async move {
//!             loop {
//!                 let rows = ctx.store.scan_outbox(ScanFrom::Beginning, ctx.clock.now(), 5_000).await?;
//!                 for e in &rows {
//!                     ctx.publisher.publish(e).await?;
//!                 }
//!                 ctx.clock.sleep(std::time::Duration::from_secs(5)).await;
//!             }
//!         })
//!     }
//! }
//!
//! let scenario = outbox_sim::scenario::Scenario::short_for_tests();
//! let report = outbox_sim::scenario::run(&scenario, Rc::new(Naive), outbox_sim::seed::Seed(1)).unwrap();
//! assert_eq!(report.lost, 0);
//! assert!(report.duplicated > 0);
//! ```

pub mod poll;
pub mod stream;

use std::fmt;
use std::rc::Rc;
use std::time::Duration;

pub use poll::{CursorMode, PollingConfig, PollingRelay};
pub use stream::{DEFAULT_SAFETY_INTERVAL, StartTimestamp, StreamConfig, StreamRelay};

use crate::ports::{
    CheckpointStore, Clock, LocalFuture, OutboxStore, PublishError, Publisher, StoreError,
};

/// The ports of one relay incarnation.
#[derive(Clone)]
pub struct RelayContext {
    /// The cluster (durable across incarnations).
    pub store: Rc<dyn OutboxStore>,
    /// The checkpoint table (durable across incarnations).
    pub checkpoints: Rc<dyn CheckpointStore>,
    /// This incarnation's producer session.
    pub publisher: Rc<dyn Publisher>,
    /// Time.
    pub clock: Rc<dyn Clock>,
    /// 1 for the first start, +1 per restart.
    pub incarnation: u32,
}

impl fmt::Debug for RelayContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayContext")
            .field("incarnation", &self.incarnation)
            .finish()
    }
}

/// Why a relay stopped on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayError {
    /// A database request failed in a way the relay does not retry.
    Store(StoreError),
    /// A publish failed in a way the relay does not retry.
    Publish(PublishError),
    /// Anything else.
    Other(String),
}

impl fmt::Display for RelayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayError::Store(e) => write!(f, "store: {e}"),
            RelayError::Publish(e) => write!(f, "publish: {e}"),
            RelayError::Other(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for RelayError {}

impl From<StoreError> for RelayError {
    fn from(e: StoreError) -> Self {
        RelayError::Store(e)
    }
}

impl From<PublishError> for RelayError {
    fn from(e: PublishError) -> Self {
        RelayError::Publish(e)
    }
}

/// A relay: builds the future of one incarnation.
pub trait Relay {
    /// A short name for reports.
    fn name(&self) -> String;
    /// The relay's main loop for one incarnation. It should run until dropped.
    fn run(&self, ctx: RelayContext) -> LocalFuture<'static, Result<(), RelayError>>;
}

/// The named relay configurations `compare` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Preset {
    /// The seed's phase 2: every 2 s, `created_at > last_seen`, no lag window.
    PollNaive,
    /// Every 2 s, a lag window covering the scenario's skew and visibility delay (≥ 5 s),
    /// inclusive cursor with the overlap deduplicated.
    PollSafe,
    /// The seed's phase 3: scylla-cdc defaults, no progress saving.
    StreamDefault,
    /// scylla-cdc defaults + save/load progress, `start_timestamp` left at now (scylla-cdc #120).
    StreamCheckpointed,
    /// stream-checkpointed with `start_timestamp` = now − CDC TTL when resuming, now − safety
    /// interval on a first start, and a checkpoint saver that never moves a checkpoint back.
    StreamSafe,
    /// stream-safe with low-latency settings.
    StreamTuned,
}

/// Every preset, in table order.
pub const PRESETS: [Preset; 6] = [
    Preset::PollNaive,
    Preset::PollSafe,
    Preset::StreamDefault,
    Preset::StreamCheckpointed,
    Preset::StreamSafe,
    Preset::StreamTuned,
];

/// Poll interval of both polling presets.
pub const PRESET_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Smallest lag window of `poll-safe`.
pub const PRESET_POLL_SAFE_MIN_LAG: Duration = Duration::from_secs(5);
/// Smallest safety interval of `stream-tuned`.
pub const PRESET_TUNED_MIN_SAFETY: Duration = Duration::from_secs(2);
/// Sleep interval of `stream-tuned`.
pub const PRESET_TUNED_SLEEP: Duration = Duration::from_millis(500);
/// Window size of `stream-tuned`.
pub const PRESET_TUNED_WINDOW: Duration = Duration::from_secs(10);

impl Preset {
    /// The preset's fixed name.
    pub const fn name(self) -> &'static str {
        match self {
            Preset::PollNaive => "poll-naive",
            Preset::PollSafe => "poll-safe",
            Preset::StreamDefault => "stream-default",
            Preset::StreamCheckpointed => "stream-checkpointed",
            Preset::StreamSafe => "stream-safe",
            Preset::StreamTuned => "stream-tuned",
        }
    }

    /// Looks a preset up by name.
    pub fn parse(name: &str) -> Option<Preset> {
        PRESETS.into_iter().find(|p| p.name() == name)
    }

    /// The relay this preset runs in a world whose visibility bound (worst clock skew between
    /// writers plus worst replication delay) is `visibility_bound` and whose CDC TTL is `cdc_ttl`.
    pub fn relay(self, visibility_bound: Duration, cdc_ttl: Duration) -> AnyRelay {
        let round_up =
            |d: Duration| Duration::from_millis(d.as_millis().div_ceil(500) as u64 * 500);
        let tuned_safety = round_up(visibility_bound).max(PRESET_TUNED_MIN_SAFETY);
        match self {
            Preset::PollNaive => AnyRelay::Poll(PollingRelay::new(
                self.name(),
                PollingConfig {
                    poll_interval: PRESET_POLL_INTERVAL,
                    lag: Duration::ZERO,
                    cursor: CursorMode::Exclusive,
                    ..PollingConfig::default()
                },
            )),
            Preset::PollSafe => AnyRelay::Poll(PollingRelay::new(
                self.name(),
                PollingConfig {
                    poll_interval: PRESET_POLL_INTERVAL,
                    lag: round_up(visibility_bound).max(PRESET_POLL_SAFE_MIN_LAG),
                    cursor: CursorMode::Inclusive,
                    ..PollingConfig::default()
                },
            )),
            Preset::StreamDefault => {
                AnyRelay::Stream(StreamRelay::new(self.name(), StreamConfig::default()))
            }
            Preset::StreamCheckpointed => AnyRelay::Stream(StreamRelay::new(
                self.name(),
                StreamConfig {
                    should_save_progress: true,
                    should_load_progress: true,
                    ..StreamConfig::default()
                },
            )),
            Preset::StreamSafe => AnyRelay::Stream(StreamRelay::new(
                self.name(),
                StreamConfig {
                    should_save_progress: true,
                    should_load_progress: true,
                    start: StartTimestamp::Resume {
                        fresh: DEFAULT_SAFETY_INTERVAL,
                        resuming: cdc_ttl,
                    },
                    monotonic_checkpoints: true,
                    ..StreamConfig::default()
                },
            )),
            Preset::StreamTuned => AnyRelay::Stream(StreamRelay::new(
                self.name(),
                StreamConfig {
                    should_save_progress: true,
                    should_load_progress: true,
                    start: StartTimestamp::Resume {
                        fresh: tuned_safety,
                        resuming: cdc_ttl,
                    },
                    monotonic_checkpoints: true,
                    safety_interval: tuned_safety,
                    sleep_interval: PRESET_TUNED_SLEEP,
                    window_size: PRESET_TUNED_WINDOW,
                    pause_between_saves: Duration::from_secs(1),
                    ..StreamConfig::default()
                },
            )),
        }
    }

    /// One line describing the preset's settings.
    pub fn describe(self, visibility_bound: Duration, cdc_ttl: Duration) -> String {
        match self.relay(visibility_bound, cdc_ttl) {
            AnyRelay::Poll(p) => p.config().describe(),
            AnyRelay::Stream(s) => s.config().describe(),
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Either reference relay (what a [`Preset`] resolves to).
#[derive(Clone, Debug)]
pub enum AnyRelay {
    /// A polling relay.
    Poll(PollingRelay),
    /// A CDC stream relay.
    Stream(StreamRelay),
}

impl Relay for AnyRelay {
    fn name(&self) -> String {
        match self {
            AnyRelay::Poll(r) => r.name(),
            AnyRelay::Stream(r) => r.name(),
        }
    }

    fn run(&self, ctx: RelayContext) -> LocalFuture<'static, Result<(), RelayError>> {
        match self {
            AnyRelay::Poll(r) => r.run(ctx),
            AnyRelay::Stream(r) => r.run(ctx),
        }
    }
}

/// Sleeps for a retry: `base · 2^attempt`, capped at `cap` (scylla-cdc's transient-error backoff).
pub(crate) fn backoff(base: Duration, attempt: u32, cap: Duration) -> Duration {
    base.saturating_mul(1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX))
        .min(cap)
}
