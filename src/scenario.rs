//! Scenarios: what a run does — cluster and broker settings, workload, scheduled faults, and how
//! long the write phase and the drain phase last — and the runner that plays one against a relay.
//!
//! A run has a **write phase** (`duration_s`: orders are written, faults fire) and a **drain
//! phase** (`drain_s`: no writes, every fault off, the relay keeps running) that must deliver
//! everything committed. Scenarios are TOML (see `fixtures/scenarios/default.toml`); unknown keys
//! and impossible values are errors that name the file, the field and the reason.

pub mod faults;
pub mod tripwire;
pub mod workload;

pub use faults::{
    BrokerErrors, CrashTrigger, Faults, LateWrites, ProbabilityWindow, RelayCrash,
    ReplicationStall, SlowAcks, TopologyChange, TopologyKind, Trigger, Window,
};

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sim::broker::BrokerConfig;
use crate::sim::scylla::{ClusterConfig, ms};
use crate::sim::{ConfigError, SimConfig};
use workload::WorkloadConfig;

/// The default scenario, compiled in (also at `fixtures/scenarios/default.toml`).
pub const DEFAULT_SCENARIO_TOML: &str = include_str!("../fixtures/scenarios/default.toml");

/// A scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name for reports.
    #[serde(default)]
    pub name: String,
    /// Length of the write phase, seconds.
    pub duration_s: f64,
    /// Length of the drain phase, seconds.
    #[serde(default = "default_drain_s")]
    pub drain_s: f64,
    /// Pause before the supervisor restarts a relay that returned on its own, seconds.
    #[serde(default = "default_restart_backoff_s")]
    pub restart_backoff_s: f64,
    /// The cluster.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// The broker.
    #[serde(default)]
    pub broker: BrokerConfig,
    /// The order workload.
    #[serde(default)]
    pub workload: WorkloadConfig,
    /// Scheduled faults.
    #[serde(default)]
    pub faults: Faults,
}

fn default_drain_s() -> f64 {
    300.0
}

fn default_restart_backoff_s() -> f64 {
    5.0
}

/// A scenario that cannot be used, with where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioError {
    /// The file, if the scenario came from one.
    pub file: Option<PathBuf>,
    /// The offending field (dotted path), or the location of a syntax error.
    pub field: String,
    /// Why.
    pub reason: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self
            .file
            .as_ref()
            .map_or("<scenario>".to_string(), |p| p.display().to_string());
        write!(f, "{file}: {}: {}", self.field, self.reason)
    }
}

impl std::error::Error for ScenarioError {}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> ScenarioError {
    ScenarioError {
        file: None,
        field: field.into(),
        reason: reason.into(),
    }
}

impl Scenario {
    /// The default scenario.
    pub fn default_scenario() -> Scenario {
        Scenario::parse(DEFAULT_SCENARIO_TOML, None)
            .expect("the built-in default scenario is valid")
    }

    /// A small, fast scenario for tests and doc examples: 60 s of writes on a 1-node cluster with
    /// 16 vnodes, 30 s drain, no faults.
    pub fn short_for_tests() -> Scenario {
        Scenario {
            name: "short".into(),
            duration_s: 60.0,
            drain_s: 90.0,
            restart_backoff_s: default_restart_backoff_s(),
            cluster: ClusterConfig {
                nodes: 1,
                vnodes_per_node: 16,
                shards_per_node: 2,
                ..ClusterConfig::default()
            },
            broker: BrokerConfig::default(),
            workload: WorkloadConfig {
                orders_per_s: 5.0,
                ..WorkloadConfig::default()
            },
            faults: Faults::default(),
        }
    }

    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            file: Some(path.to_path_buf()),
            field: "-".into(),
            reason: format!("cannot read: {e}"),
        })?;
        Scenario::parse(&text, Some(path))
    }

    /// Parses and validates scenario text.
    pub fn parse(text: &str, path: Option<&Path>) -> Result<Scenario, ScenarioError> {
        let with_file = |mut e: ScenarioError| {
            e.file = path.map(Path::to_path_buf);
            e
        };
        let scenario: Scenario = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            let at = line.map_or("-".to_string(), |l| format!("line {l}"));
            with_file(bad(at, e.message().replace('\n', " ")))
        })?;
        scenario.validate().map_err(with_file)?;
        Ok(scenario)
    }

    /// The world settings of this scenario.
    pub fn sim_config(&self) -> SimConfig {
        SimConfig {
            cluster: self.cluster.clone(),
            broker: self.broker.clone(),
            step_budget: 0,
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let secs = |field: &str, v: f64| -> Result<(), ScenarioError> {
            if !v.is_finite() || v < 0.0 {
                return Err(bad(
                    field,
                    format!("must be a non-negative number of seconds, got {v}"),
                ));
            }
            Ok(())
        };
        secs("duration_s", self.duration_s)?;
        if self.duration_s <= 0.0 {
            return Err(bad("duration_s", "must be positive"));
        }
        secs("drain_s", self.drain_s)?;
        secs("restart_backoff_s", self.restart_backoff_s)?;
        if self.duration_s + self.drain_s > 7.0 * 86_400.0 {
            return Err(bad(
                "duration_s",
                "write phase plus drain must stay under 7 days",
            ));
        }
        self.sim_config()
            .validate()
            .map_err(|ConfigError { field, reason }| bad(field, reason))?;
        let w = &self.workload;
        for (field, v) in [
            ("workload.orders_per_s", w.orders_per_s),
            ("workload.cancel_probability", w.cancel_probability),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(bad(
                    field,
                    format!("must be a non-negative number, got {v}"),
                ));
            }
        }
        if w.cancel_probability > 1.0 {
            return Err(bad(
                "workload.cancel_probability",
                format!("must be within [0, 1], got {}", w.cancel_probability),
            ));
        }
        if w.step_delay_min_ms < 0 {
            return Err(bad(
                "workload.step_delay_min_ms",
                format!("must not be negative, got {}", w.step_delay_min_ms),
            ));
        }
        if w.step_delay_min_ms > w.step_delay_max_ms {
            return Err(bad(
                "workload.step_delay_min_ms",
                format!(
                    "{} is above step_delay_max_ms {}",
                    w.step_delay_min_ms, w.step_delay_max_ms
                ),
            ));
        }
        if w.max_in_flight == 0 {
            return Err(bad("workload.max_in_flight", "must be at least 1"));
        }
        for (i, b) in w.bursts.iter().enumerate() {
            secs(&format!("workload.bursts[{i}].at_s"), b.at_s)?;
            secs(&format!("workload.bursts[{i}].duration_s"), b.duration_s)?;
            if !b.orders_per_s.is_finite() || b.orders_per_s < 0.0 {
                return Err(bad(
                    format!("workload.bursts[{i}].orders_per_s"),
                    format!("must be a non-negative number, got {}", b.orders_per_s),
                ));
            }
        }
        self.faults
            .validate(self.duration_s)
            .map_err(|(field, reason)| bad(format!("faults.{field}"), reason))?;
        Ok(())
    }

    /// The worst gap between a row's timestamp and the moment it becomes readable, relative to
    /// other rows: twice the node skew (two coordinators), the client skew if client timestamps
    /// are on, the largest replication delay, a random stall *plus* the worst scheduled stall
    /// (they add up on one write), and the worst back-dating of late writes. Safe presets size
    /// their lag/safety window from it.
    pub fn visibility_bound(&self) -> Duration {
        let c = &self.cluster;
        let client = if c.client_timestamps {
            c.client_clock_skew_ms.abs()
        } else {
            0
        };
        let random_stall = if c.stall_probability > 0.0 {
            c.stall_ms
        } else {
            0
        };
        let scheduled_stall = self
            .faults
            .replication_stalls
            .iter()
            .map(|s| s.stall_ms)
            .max()
            .unwrap_or(0);
        let late = self
            .faults
            .late_writes
            .iter()
            .map(|l| l.lateness_ms)
            .max()
            .unwrap_or(0);
        ms(2 * c.clock_skew_ms
            + client
            + c.replication_delay_max_ms
            + random_stall
            + scheduled_stall
            + late)
    }

    /// The CDC log TTL.
    pub fn cdc_ttl(&self) -> Duration {
        Duration::from_secs(self.cluster.cdc_ttl_s.max(0) as u64)
    }
}

mod runner;

pub use runner::{RunError, RunReport, run, run_world};
