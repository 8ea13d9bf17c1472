//! Scenarios: what a run does — cluster and broker settings, workload, scheduled faults, and how
//! long the write phase and the drain phase last — and the runner that plays one against a relay.
//!
//! A run has a **write phase** (`duration_s`: orders are written, faults fire) and a **drain
//! phase** (`drain_s`: no writes, every fault off, the relay keeps running) that must deliver
//! everything committed. Scenarios are TOML (see `fixtures/scenarios/default.toml`); unknown keys
//! and impossible values are errors that name the file, the field and the reason.

pub mod workload;

use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use futures::future::{Either, select};
use serde::{Deserialize, Serialize};

use crate::check::{Analysis, analyze};
use crate::history::OpKind;
use crate::model::Timestamp;
use crate::relay::{Relay, RelayContext};
use crate::seed::Seed;
use crate::sim::broker::BrokerConfig;
use crate::sim::executor::RuntimeError;
use crate::sim::scylla::{Client, ClusterConfig, QueryKind, ms};
use crate::sim::{ConfigError, Sim, SimBuilder, SimConfig};
use crate::writer::{OrderWriter, WriterConfig};
use workload::{WorkloadConfig, drive};

/// The default scenario, compiled in (also at `fixtures/scenarios/default.toml`).
pub const DEFAULT_SCENARIO_TOML: &str = include_str!("../fixtures/scenarios/default.toml");

/// A relay crash at `at_s`, restarted `downtime_s` later.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayCrash {
    /// Seconds into the run.
    pub at_s: f64,
    /// Seconds the relay stays down.
    pub downtime_s: f64,
}

/// What a topology change does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopologyKind {
    /// A node bootstraps.
    Join,
    /// The oldest node is decommissioned.
    Leave,
}

/// A topology change (→ a new CDC generation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyChange {
    /// Seconds into the run.
    pub at_s: f64,
    /// Join or leave.
    pub kind: TopologyKind,
}

/// A time window during which a fault holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Start, seconds into the run.
    pub at_s: f64,
    /// Length in seconds.
    pub duration_s: f64,
}

/// Scheduled faults (the `[faults]` table).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Relay crashes.
    pub relay_crashes: Vec<RelayCrash>,
    /// Topology changes.
    pub topology_changes: Vec<TopologyChange>,
    /// Windows in which the cluster answers `Unavailable`.
    pub db_outages: Vec<Window>,
    /// Windows in which the broker is down.
    pub broker_outages: Vec<Window>,
}

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
        let within = |field: String, at: f64| -> Result<(), ScenarioError> {
            secs(&field, at)?;
            if at >= self.duration_s {
                return Err(bad(
                    field,
                    format!(
                        "{at} s is not inside the write phase (duration_s = {})",
                        self.duration_s
                    ),
                ));
            }
            Ok(())
        };
        let mut last_crash_end = -1.0;
        for (i, c) in self.faults.relay_crashes.iter().enumerate() {
            within(format!("faults.relay_crashes[{i}].at_s"), c.at_s)?;
            secs(
                &format!("faults.relay_crashes[{i}].downtime_s"),
                c.downtime_s,
            )?;
            if c.at_s < last_crash_end {
                return Err(bad(
                    format!("faults.relay_crashes[{i}].at_s"),
                    "crashes must be in time order and not overlap the previous downtime",
                ));
            }
            last_crash_end = c.at_s + c.downtime_s;
        }
        for (i, t) in self.faults.topology_changes.iter().enumerate() {
            within(format!("faults.topology_changes[{i}].at_s"), t.at_s)?;
        }
        for (name, windows) in [
            ("db_outages", &self.faults.db_outages),
            ("broker_outages", &self.faults.broker_outages),
        ] {
            for (i, w) in windows.iter().enumerate() {
                within(format!("faults.{name}[{i}].at_s"), w.at_s)?;
                secs(&format!("faults.{name}[{i}].duration_s"), w.duration_s)?;
            }
        }
        Ok(())
    }

    /// The worst gap between a row's timestamp and the moment it becomes readable, relative to
    /// other rows: twice the node skew (two coordinators), the client skew if client timestamps
    /// are on, the largest replication delay and a stall.
    pub fn visibility_bound(&self) -> Duration {
        let c = &self.cluster;
        let client = if c.client_timestamps {
            c.client_clock_skew_ms.abs()
        } else {
            0
        };
        let stall = if c.stall_probability > 0.0 {
            c.stall_ms
        } else {
            0
        };
        ms(2 * c.clock_skew_ms + client + c.replication_delay_max_ms + stall)
    }

    /// The CDC log TTL.
    pub fn cdc_ttl(&self) -> Duration {
        Duration::from_secs(self.cluster.cdc_ttl_s.max(0) as u64)
    }
}

/// What one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// Relay name.
    pub relay: String,
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Checker results.
    #[serde(flatten)]
    pub analysis: Analysis,
    /// Relay DB requests per simulated minute (whole run).
    pub queries_per_min: f64,
    /// Rows the cluster read for the relay, per simulated minute.
    pub rows_scanned_per_min: f64,
    /// Relay requests per kind.
    pub queries_by_kind: Vec<(QueryKind, u64)>,
    /// Simulated seconds run.
    pub sim_s: f64,
    /// Task polls.
    pub steps: u64,
    /// History fingerprint.
    pub digest: String,
    /// History length.
    pub history_ops: usize,
}

impl std::ops::Deref for RunReport {
    type Target = Analysis;
    fn deref(&self) -> &Analysis {
        &self.analysis
    }
}

/// Why a run could not complete.
#[derive(Debug)]
pub enum RunError {
    /// The scenario's world settings are invalid.
    Config(ConfigError),
    /// The simulation hung.
    Runtime(RuntimeError),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Config(e) => write!(f, "configuration: {e}"),
            RunError::Runtime(e) => write!(f, "simulation: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

/// A scheduled change to the world, applied at its time.
type FaultAction = Box<dyn FnOnce(Timestamp)>;

fn secs_f(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Plays `scenario` against `relay` with `seed`: the write phase with its faults, then the drain.
pub fn run(scenario: &Scenario, relay: Rc<dyn Relay>, seed: Seed) -> Result<RunReport, RunError> {
    run_world(scenario, relay, seed).map(|(report, _)| report)
}

/// Like [`run`], and hands back the finished world (cluster, broker, history) for inspection.
pub fn run_world(
    scenario: &Scenario,
    relay: Rc<dyn Relay>,
    seed: Seed,
) -> Result<(RunReport, Sim), RunError> {
    let mut sim = SimBuilder::from_config(scenario.sim_config())
        .build(seed)
        .map_err(RunError::Config)?;
    let clock = sim.clock_port();
    let history = sim.history();
    let start = sim.now();
    let write_end = start + secs_f(scenario.duration_s);
    let end = write_end + secs_f(scenario.drain_s);

    let writer = Rc::new(OrderWriter::new(
        Rc::new(sim.store(Client::Writer)),
        clock.clone(),
        history.clone(),
        sim.rng("writer"),
        WriterConfig {
            client_timestamps: scenario.cluster.client_timestamps,
            client_clock_skew_us: scenario.cluster.client_clock_skew_ms * 1_000,
            ..WriterConfig::default()
        },
    ));
    sim.spawn(
        "workload",
        drive(
            writer,
            clock.clone(),
            sim.rng("workload"),
            scenario.workload.clone(),
            start,
            write_end,
        ),
    )
    .detach();

    // The nemesis: scheduled cluster and broker faults, all off when the drain starts.
    let mut events: Vec<(Timestamp, u8, FaultAction)> = Vec::new();
    for t in &scenario.faults.topology_changes {
        let cluster = sim.cluster();
        let kind = t.kind;
        let h = history.clone();
        events.push((
            start + secs_f(t.at_s),
            0,
            Box::new(move |now| {
                let name = match kind {
                    TopologyKind::Join => {
                        cluster.join_node(now);
                        "node_join"
                    }
                    TopologyKind::Leave => {
                        cluster.leave_node(now);
                        "node_leave"
                    }
                };
                h.record(
                    now,
                    OpKind::Fault {
                        name: name.into(),
                        on: true,
                    },
                );
            }),
        ));
    }
    for w in &scenario.faults.db_outages {
        let (on, off) = (
            start + secs_f(w.at_s),
            (start + secs_f(w.at_s + w.duration_s)).min(write_end),
        );
        let (c1, c2, h1, h2) = (
            sim.cluster(),
            sim.cluster(),
            history.clone(),
            history.clone(),
        );
        events.push((
            on,
            1,
            Box::new(move |now| {
                c1.set_unavailable(true);
                h1.record(
                    now,
                    OpKind::Fault {
                        name: "db_outage".into(),
                        on: true,
                    },
                );
            }),
        ));
        events.push((
            off,
            2,
            Box::new(move |now| {
                c2.set_unavailable(false);
                h2.record(
                    now,
                    OpKind::Fault {
                        name: "db_outage".into(),
                        on: false,
                    },
                );
            }),
        ));
    }
    for w in &scenario.faults.broker_outages {
        let (on, off) = (
            start + secs_f(w.at_s),
            (start + secs_f(w.at_s + w.duration_s)).min(write_end),
        );
        let (b1, b2, h1, h2) = (sim.broker(), sim.broker(), history.clone(), history.clone());
        events.push((
            on,
            1,
            Box::new(move |now| {
                b1.set_down(true);
                h1.record(
                    now,
                    OpKind::Fault {
                        name: "broker_outage".into(),
                        on: true,
                    },
                );
            }),
        ));
        events.push((
            off,
            2,
            Box::new(move |now| {
                b2.set_down(false);
                h2.record(
                    now,
                    OpKind::Fault {
                        name: "broker_outage".into(),
                        on: false,
                    },
                );
            }),
        ));
    }
    events.sort_by_key(|(t, order, _)| (*t, *order));
    let nemesis_clock = clock.clone();
    sim.spawn("nemesis", async move {
        for (at, _, apply) in events {
            nemesis_clock
                .sleep(at.saturating_since(nemesis_clock.now()))
                .await;
            apply(nemesis_clock.now());
        }
    })
    .detach();

    // The supervisor: starts the relay, crashes it on schedule, restarts it after downtime or
    // after it returned on its own.
    let crashes: Vec<(Timestamp, Duration)> = scenario
        .faults
        .relay_crashes
        .iter()
        .map(|c| (start + secs_f(c.at_s), secs_f(c.downtime_s)))
        .collect();
    let restart_backoff = secs_f(scenario.restart_backoff_s);
    let make_ctx = {
        let store = Rc::new(sim.store(Client::Relay));
        let checkpoints = Rc::new(sim.checkpoints());
        let broker = sim.broker();
        let (clock, history) = (clock.clone(), history.clone());
        move |incarnation: u32| RelayContext {
            store: store.clone(),
            checkpoints: checkpoints.clone(),
            publisher: Rc::new(broker.producer(clock.clone(), history.clone(), incarnation)),
            clock: clock.clone(),
            incarnation,
        }
    };
    let sup_clock = clock.clone();
    let sup_history = history.clone();
    let sup_relay = relay.clone();
    sim.spawn("supervisor", async move {
        let mut incarnation = 0u32;
        let mut crash_plan = crashes.into_iter().peekable();
        loop {
            incarnation += 1;
            let fut = sup_relay.run(make_ctx(incarnation));
            sup_history.record(sup_clock.now(), OpKind::RelayStarted { incarnation });
            let crash_at = crash_plan.peek().map(|(t, _)| *t);
            let stop = match crash_at {
                Some(t) => Either::Left(sup_clock.sleep(t.saturating_since(sup_clock.now()))),
                None => Either::Right(futures::future::pending::<()>()),
            };
            match select(fut, stop).await {
                Either::Left((result, _)) => {
                    let error = result.err().map(|e| e.to_string());
                    sup_history.record(sup_clock.now(), OpKind::RelayExited { incarnation, error });
                    sup_clock.sleep(restart_backoff).await;
                }
                Either::Right((_, relay_future)) => {
                    drop(relay_future); // the crash: dropped at its current await point
                    sup_history.record(sup_clock.now(), OpKind::RelayCrashed { incarnation });
                    let (_, downtime) = crash_plan.next().expect("peeked");
                    sup_clock.sleep(downtime).await;
                }
            }
        }
    })
    .detach();

    sim.run_until(end).map_err(RunError::Runtime)?;

    let stats = sim.cluster().stats();
    let minutes = end.saturating_since(start).as_secs_f64() / 60.0;
    let total = stats.total(Client::Relay);
    let queries_by_kind = stats
        .nonzero()
        .into_iter()
        .filter(|(c, _, _)| *c == Client::Relay)
        .map(|(_, k, c)| (k, c.queries))
        .collect();
    let ops = history.ops();
    let report = RunReport {
        relay: relay.name(),
        scenario: scenario.name.clone(),
        seed: seed.0,
        analysis: analyze(&ops),
        queries_per_min: total.queries as f64 / minutes,
        rows_scanned_per_min: total.rows_scanned as f64 / minutes,
        queries_by_kind,
        sim_s: end.saturating_since(start).as_secs_f64(),
        steps: sim.steps(),
        digest: format!("{:016x}", history.digest()),
        history_ops: ops.len(),
    };
    drop(ops);
    Ok((report, sim))
}
