//! The simulated world: [`SimBuilder`] → [`Sim`], a virtual clock, a deterministic executor, a
//! ScyllaDB cluster with CDC and a Kafka broker, all drawing randomness from one seed.
//!
//! ```
//! use outbox_sim::sim::SimBuilder;
//! use outbox_sim::seed::Seed;
//!
//! let sim = SimBuilder::new().nodes(1).vnodes_per_node(4).build(Seed(1)).unwrap();
//! assert_eq!(sim.cluster().state().topology.generations.len(), 1);
//! ```

pub mod broker;
pub mod clock;
pub mod executor;
pub mod scylla;

use std::fmt;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::history::History;
use crate::model::{SIM_EPOCH, Timestamp};
use crate::ports::Clock;
use crate::seed::{Seed, SimRng};
use broker::{BrokerConfig, SimBroker, SimProducer};
use clock::SimClock;
use executor::{RuntimeError, SimExecutor};
use scylla::{Client, ClusterConfig, SimCheckpoints, SimCluster, SimStore};

/// Default step budget: task polls a run may take before it is declared hung.
pub const DEFAULT_STEP_BUDGET: u64 = 2_000_000_000;

/// How long before the simulation starts the cluster's first CDC generation began (the cluster
/// existed before the workload did).
pub const FIRST_GENERATION_AGE: std::time::Duration = std::time::Duration::from_secs(3_600);

/// Every setting of a simulated world (the `[cluster]` and `[broker]` tables of a scenario).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// The ScyllaDB cluster.
    pub cluster: ClusterConfig,
    /// The Kafka broker.
    pub broker: BrokerConfig,
    /// Task polls allowed before the run is declared hung (0 = the default).
    pub step_budget: u64,
}

/// A setting that cannot work, named by its path in the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The setting, e.g. `cluster.nodes`.
    pub field: String,
    /// Why it was rejected.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

fn fail<T>(field: &str, reason: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError {
        field: field.to_string(),
        reason: reason.into(),
    })
}

impl SimConfig {
    /// Checks every setting; the first bad one is returned by name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        let range = |field: &str, v: u32, lo: u32, hi: u32| -> Result<(), ConfigError> {
            if v < lo || v > hi {
                return fail(field, format!("must be between {lo} and {hi}, got {v}"));
            }
            Ok(())
        };
        range("cluster.nodes", c.nodes, 1, 64)?;
        range("cluster.vnodes_per_node", c.vnodes_per_node, 1, 1024)?;
        range("cluster.shards_per_node", c.shards_per_node, 1, 256)?;
        for (field, v) in [
            ("cluster.clock_skew_ms", c.clock_skew_ms),
            (
                "cluster.replication_delay_min_ms",
                c.replication_delay_min_ms,
            ),
            (
                "cluster.replication_delay_max_ms",
                c.replication_delay_max_ms,
            ),
            ("cluster.stall_ms", c.stall_ms),
            ("cluster.future_write_limit_ms", c.future_write_limit_ms),
            ("cluster.past_write_limit_ms", c.past_write_limit_ms),
            ("cluster.generation_delay_ms", c.generation_delay_ms),
            ("cluster.outbox_ttl_s", c.outbox_ttl_s),
            ("cluster.orders_ttl_s", c.orders_ttl_s),
            ("cluster.write_latency_ms", c.write_latency_ms),
            ("cluster.read_latency_ms", c.read_latency_ms),
            ("cluster.read_timeout_ms", c.read_timeout_ms),
            ("cluster.write_timeout_ms", c.write_timeout_ms),
            ("broker.ack_latency_ms", self.broker.ack_latency_ms),
        ] {
            if v < 0 {
                return fail(field, format!("must not be negative, got {v}"));
            }
        }
        if c.client_timestamp_resolution_us <= 0 {
            return fail(
                "cluster.client_timestamp_resolution_us",
                format!("must be positive, got {}", c.client_timestamp_resolution_us),
            );
        }
        if self.broker.retention_ms <= 0 {
            return fail(
                "broker.retention_ms",
                format!("must be positive, got {}", self.broker.retention_ms),
            );
        }
        if c.cdc_ttl_s <= 0 {
            return fail(
                "cluster.cdc_ttl_s",
                format!("must be positive, got {}", c.cdc_ttl_s),
            );
        }
        if c.replication_delay_min_ms > c.replication_delay_max_ms {
            return fail(
                "cluster.replication_delay_min_ms",
                format!(
                    "{} is above replication_delay_max_ms {}",
                    c.replication_delay_min_ms, c.replication_delay_max_ms
                ),
            );
        }
        if !(0.0..=1.0).contains(&c.stall_probability) {
            return fail(
                "cluster.stall_probability",
                format!("must be within [0, 1], got {}", c.stall_probability),
            );
        }
        let skew = c.clock_skew_ms.saturating_add(if c.client_timestamps {
            c.client_clock_skew_ms.abs()
        } else {
            0
        });
        if skew >= c.future_write_limit_ms {
            return fail(
                "cluster.clock_skew_ms",
                format!(
                    "skew {skew} ms reaches the future-write limit {} ms: writes would be rejected",
                    c.future_write_limit_ms
                ),
            );
        }
        range("broker.partitions", self.broker.partitions, 1, 100_000)?;
        if self.broker.delivery_timeout_ms <= 0 {
            return fail(
                "broker.delivery_timeout_ms",
                format!("must be positive, got {}", self.broker.delivery_timeout_ms),
            );
        }
        if self.broker.retry_backoff_ms <= 0 {
            return fail(
                "broker.retry_backoff_ms",
                format!("must be positive, got {}", self.broker.retry_backoff_ms),
            );
        }
        Ok(())
    }
}

/// Builds a [`Sim`].
///
/// # Default configuration
/// - cluster: [`scylla::DEFAULT_NODES`] nodes × [`scylla::DEFAULT_VNODES_PER_NODE`] vnodes ×
///   [`scylla::DEFAULT_SHARDS_PER_NODE`] shards, node clock skew ±[`scylla::DEFAULT_CLOCK_SKEW_MS`] ms,
///   replication delay [`scylla::DEFAULT_REPLICATION_DELAY_MIN_MS`]–[`scylla::DEFAULT_REPLICATION_DELAY_MAX_MS`] ms
///   with stalls of [`scylla::DEFAULT_STALL_MS`] ms at probability [`scylla::DEFAULT_STALL_PROBABILITY`],
///   generation delay [`scylla::DEFAULT_GENERATION_DELAY_MS`] ms, CDC TTL [`scylla::DEFAULT_CDC_TTL_S`] s;
/// - broker: [`broker::DEFAULT_PARTITIONS`] partitions, ack latency [`broker::DEFAULT_ACK_LATENCY_MS`] ms,
///   delivery timeout [`broker::DEFAULT_DELIVERY_TIMEOUT_MS`] ms, idempotent producer;
/// - step budget [`DEFAULT_STEP_BUDGET`].
#[derive(Clone, Debug, Default)]
pub struct SimBuilder {
    config: SimConfig,
    streaming_history: bool,
}

impl SimBuilder {
    /// A builder holding the default configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder starting from `config`.
    pub fn from_config(config: SimConfig) -> Self {
        SimBuilder {
            config,
            streaming_history: false,
        }
    }

    /// The configuration so far, for settings without a dedicated setter.
    pub fn config_mut(&mut self) -> &mut SimConfig {
        &mut self.config
    }

    /// Nodes at start.
    pub fn nodes(mut self, n: u32) -> Self {
        self.config.cluster.nodes = n;
        self
    }

    /// Vnodes per node.
    pub fn vnodes_per_node(mut self, n: u32) -> Self {
        self.config.cluster.vnodes_per_node = n;
        self
    }

    /// Shards per node.
    pub fn shards_per_node(mut self, n: u32) -> Self {
        self.config.cluster.shards_per_node = n;
        self
    }

    /// Node clock skew bound.
    pub fn clock_skew_ms(mut self, ms: i64) -> Self {
        self.config.cluster.clock_skew_ms = ms;
        self
    }

    /// Replication delay range.
    pub fn replication_delay_ms(mut self, min: i64, max: i64) -> Self {
        self.config.cluster.replication_delay_min_ms = min;
        self.config.cluster.replication_delay_max_ms = max;
        self
    }

    /// Stall probability and length.
    pub fn stalls(mut self, probability: f64, ms: i64) -> Self {
        self.config.cluster.stall_probability = probability;
        self.config.cluster.stall_ms = ms;
        self
    }

    /// CDC log TTL.
    pub fn cdc_ttl_s(mut self, s: i64) -> Self {
        self.config.cluster.cdc_ttl_s = s;
        self
    }

    /// Generation delay.
    pub fn generation_delay_ms(mut self, ms: i64) -> Self {
        self.config.cluster.generation_delay_ms = ms;
        self
    }

    /// Topic partitions.
    pub fn partitions(mut self, n: u32) -> Self {
        self.config.broker.partitions = n;
        self
    }

    /// Keep no ops in the history, only its digest and the streaming checker's state
    /// ([`History::streaming`]): what a long run needs to stay within bounded memory.
    pub fn streaming_history(mut self, streaming: bool) -> Self {
        self.streaming_history = streaming;
        self
    }

    /// Step budget.
    pub fn step_budget(mut self, steps: u64) -> Self {
        self.config.step_budget = steps;
        self
    }

    /// Validates the configuration and builds the world, seeded by `seed`.
    pub fn build(&self, seed: Seed) -> Result<Sim, ConfigError> {
        self.config.validate()?;
        let clock = SimClock::new(SIM_EPOCH);
        let budget = if self.config.step_budget == 0 {
            DEFAULT_STEP_BUDGET
        } else {
            self.config.step_budget
        };
        let history = if self.streaming_history {
            History::streaming()
        } else {
            History::new()
        };
        let first_generation = SIM_EPOCH - FIRST_GENERATION_AGE;
        let cluster = SimCluster::new(
            self.config.cluster.clone(),
            first_generation,
            seed.rng("cluster"),
            history.clone(),
        );
        let broker = SimBroker::new(self.config.broker.clone(), seed.rng("broker"));
        Ok(Sim {
            seed,
            config: self.config.clone(),
            executor: SimExecutor::new(clock.clone(), budget),
            clock,
            history,
            cluster,
            broker,
        })
    }
}

/// A simulated world.
#[derive(Debug)]
pub struct Sim {
    seed: Seed,
    config: SimConfig,
    executor: SimExecutor,
    clock: SimClock,
    history: History,
    cluster: SimCluster,
    broker: SimBroker,
}

impl Sim {
    /// The run's seed.
    pub fn seed(&self) -> Seed {
        self.seed
    }

    /// The validated configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// The virtual clock.
    pub fn clock(&self) -> SimClock {
        self.clock.clone()
    }

    /// The clock as the port trait object the pipeline takes.
    pub fn clock_port(&self) -> Rc<dyn Clock> {
        Rc::new(self.clock.clone())
    }

    /// Current simulated time.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The history of the run.
    pub fn history(&self) -> History {
        self.history.clone()
    }

    /// The cluster.
    pub fn cluster(&self) -> SimCluster {
        self.cluster.clone()
    }

    /// The broker.
    pub fn broker(&self) -> SimBroker {
        self.broker.clone()
    }

    /// The RNG of a named component, forked from the run's seed.
    pub fn rng(&self, component: &str) -> SimRng {
        self.seed.rng(component)
    }

    /// A session of `client` on the cluster.
    pub fn store(&self, client: Client) -> SimStore {
        SimStore::new(self.cluster.clone(), self.clock_port(), client)
    }

    /// The relay's checkpoint table, as relay incarnation `incarnation` sees it.
    pub fn checkpoints(&self, incarnation: u32) -> SimCheckpoints {
        SimCheckpoints::new(self.cluster.clone(), self.clock_port(), incarnation)
    }

    /// A new producer session for relay incarnation `incarnation`.
    pub fn producer(&self, incarnation: u32) -> SimProducer {
        self.broker
            .producer(self.clock_port(), self.history.clone(), incarnation)
    }

    /// Spawns a labelled task on the simulation's executor.
    pub fn spawn<T: 'static>(
        &self,
        label: &str,
        fut: impl std::future::Future<Output = T> + 'static,
    ) -> crate::sim::executor::Task<T> {
        self.executor.spawn(label, fut)
    }

    /// Runs every task until simulated time reaches `deadline`.
    pub fn run_until(&mut self, deadline: Timestamp) -> Result<(), RuntimeError> {
        self.executor.run_until(deadline)
    }

    /// Runs until `task` completes.
    pub fn block_on<T: 'static>(
        &mut self,
        task: crate::sim::executor::Task<T>,
    ) -> Result<T, RuntimeError> {
        self.executor.block_on(task)
    }

    /// Task polls so far.
    pub fn steps(&self) -> u64 {
        self.executor.steps()
    }
}
