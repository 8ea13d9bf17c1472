//! The runner: plays a [`Scenario`] against a [`Relay`] in a fresh simulated world.
//!
//! Three tasks share the executor: the workload (writes orders until the drain starts), the
//! nemesis (switches scheduled faults on and off; everything is off when the drain starts) and
//! the supervisor (starts the relay, crashes it on schedule or at a trigger point, restarts it
//! after its downtime, and restarts it after a backoff if it returned on its own). The run stops
//! at the end of the drain; the checker then reads the history.

use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use futures::future::{Either, select};
use serde::Serialize;

use super::Scenario;
use super::tripwire::Tripwire;
use super::workload::drive;
use crate::check::Analysis;
use crate::history::OpKind;
use crate::model::Timestamp;
use crate::ports::Clock;
use crate::relay::{Relay, RelayContext};
use crate::seed::Seed;
use crate::sim::broker::BrokerFaults;
use crate::sim::executor::RuntimeError;
use crate::sim::scylla::{Client, QueryKind};
use crate::sim::{ConfigError, Sim, SimBuilder};
use crate::writer::{OrderWriter, WriterConfig};

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
    /// The latency CDF of every delivered event: (latency ms, fraction ≤ it), 200 points.
    #[serde(skip)]
    pub latency_cdf: Vec<(f64, f64)>,
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
    /// A case failed to run (reported from a worker thread).
    Failed(String),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Config(e) => write!(f, "configuration: {e}"),
            RunError::Runtime(e) => write!(f, "simulation: {e}"),
            RunError::Failed(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for RunError {}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Plays `scenario` against `relay` with `seed`: the write phase with its faults, then the drain.
///
/// The history is checked as it is recorded and not kept ([`History::streaming`]), so memory
/// stays bounded by the TTL however long the scenario; [`run_world`] keeps it.
///
/// [`History::streaming`]: crate::history::History::streaming
pub fn run(scenario: &Scenario, relay: Rc<dyn Relay>, seed: Seed) -> Result<RunReport, RunError> {
    play(scenario, relay, seed, true).map(|(report, _)| report)
}

/// Like [`run`], keeping every op of the history, and hands back the finished world (cluster,
/// broker, history) for inspection. Same seed, same digest and report as [`run`].
pub fn run_world(
    scenario: &Scenario,
    relay: Rc<dyn Relay>,
    seed: Seed,
) -> Result<(RunReport, Sim), RunError> {
    play(scenario, relay, seed, false)
}

fn play(
    scenario: &Scenario,
    relay: Rc<dyn Relay>,
    seed: Seed,
    streaming_history: bool,
) -> Result<(RunReport, Sim), RunError> {
    let mut sim = SimBuilder::from_config(scenario.sim_config())
        .streaming_history(streaming_history)
        .build(seed)
        .map_err(RunError::Config)?;
    let clock = sim.clock_port();
    let history = sim.history();
    let start = sim.now();
    let write_end = start + secs(scenario.duration_s);
    let end = write_end + secs(scenario.drain_s);

    let writer = Rc::new(OrderWriter::new(
        Rc::new(sim.store(Client::Writer)),
        clock.clone(),
        history.clone(),
        sim.rng("writer"),
        WriterConfig {
            client_timestamps: scenario.cluster.client_timestamps,
            client_clock_skew_us: scenario.cluster.client_clock_skew_ms * 1_000,
            client_timestamp_resolution_us: scenario.cluster.client_timestamp_resolution_us,
            ..WriterConfig::default()
        },
    ));
    let workload = drive(
        writer.clone(),
        clock.clone(),
        sim.rng("workload"),
        scenario.workload.clone(),
        start,
        write_end,
    );
    sim.spawn("workload", workload).detach();
    sim.spawn(
        "nemesis",
        nemesis(scenario.clone(), &sim, writer, start, write_end),
    )
    .detach();
    sim.spawn(
        "supervisor",
        supervisor(scenario, &sim, relay.clone(), start, write_end),
    )
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
    let analysis = history.analysis();
    let latency_cdf = history.delivery_cdf();
    let report = RunReport {
        relay: relay.name(),
        scenario: scenario.name.clone(),
        seed: seed.0,
        analysis,
        queries_per_min: total.queries as f64 / minutes,
        rows_scanned_per_min: total.rows_scanned as f64 / minutes,
        queries_by_kind,
        sim_s: end.saturating_since(start).as_secs_f64(),
        steps: sim.steps(),
        digest: format!("{:016x}", history.digest()),
        history_ops: history.len(),
        latency_cdf,
    };
    Ok((report, sim))
}

/// The state of every window fault at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
struct WindowState {
    db_down: bool,
    read_timeout_p: f64,
    broker: BrokerFaults,
    late: Option<(f64, Duration)>,
    stall_ms: i64,
}

fn window_state(f: &super::Faults, offset_s: f64) -> WindowState {
    let active = |at: f64, d: f64| at <= offset_s && offset_s < at + d;
    let mut s = WindowState {
        db_down: f.db_outages.iter().any(|w| active(w.at_s, w.duration_s)),
        ..Default::default()
    };
    s.read_timeout_p = f
        .read_timeouts
        .iter()
        .filter(|w| active(w.at_s, w.duration_s))
        .map(|w| w.probability)
        .fold(0.0, f64::max);
    s.broker.down = f
        .broker_outages
        .iter()
        .any(|w| active(w.at_s, w.duration_s));
    for e in f
        .broker_errors
        .iter()
        .filter(|w| active(w.at_s, w.duration_s))
    {
        s.broker.retriable_error_probability = s
            .broker
            .retriable_error_probability
            .max(e.retriable_probability);
        s.broker.lost_ack_probability = s.broker.lost_ack_probability.max(e.lost_ack_probability);
    }
    s.broker.slow_ack_ms = f
        .slow_acks
        .iter()
        .filter(|w| active(w.at_s, w.duration_s))
        .map(|w| w.ack_ms)
        .max()
        .unwrap_or(0);
    s.late = f
        .late_writes
        .iter()
        .filter(|w| active(w.at_s, w.duration_s))
        .map(|w| {
            (
                w.probability,
                Duration::from_millis(w.lateness_ms.max(0) as u64),
            )
        })
        .max_by(|a, b| a.1.cmp(&b.1));
    s.stall_ms = f
        .replication_stalls
        .iter()
        .filter(|w| active(w.at_s, w.duration_s))
        .map(|w| w.stall_ms)
        .max()
        .unwrap_or(0);
    s
}

/// Applies topology changes at their times and recomputes window faults at every window edge;
/// at `write_end` every fault is off.
fn nemesis(
    scenario: Scenario,
    sim: &Sim,
    writer: Rc<OrderWriter>,
    start: Timestamp,
    write_end: Timestamp,
) -> impl std::future::Future<Output = ()> + 'static {
    let (clock, history, cluster, broker) =
        (sim.clock_port(), sim.history(), sim.cluster(), sim.broker());
    async move {
        nemesis_loop(
            scenario, clock, history, cluster, broker, writer, start, write_end,
        )
        .await
    }
}

#[allow(clippy::too_many_arguments)]
async fn nemesis_loop(
    scenario: Scenario,
    clock: Rc<dyn Clock>,
    history: crate::history::History,
    cluster: crate::sim::scylla::SimCluster,
    broker: crate::sim::broker::SimBroker,
    writer: Rc<OrderWriter>,
    start: Timestamp,
    write_end: Timestamp,
) {
    let f = &scenario.faults;
    let mut edges: Vec<f64> = Vec::new();
    let windows = f
        .db_outages
        .iter()
        .chain(&f.broker_outages)
        .map(|w| (w.at_s, w.duration_s))
        .chain(f.read_timeouts.iter().map(|w| (w.at_s, w.duration_s)))
        .chain(f.broker_errors.iter().map(|w| (w.at_s, w.duration_s)))
        .chain(f.slow_acks.iter().map(|w| (w.at_s, w.duration_s)))
        .chain(f.late_writes.iter().map(|w| (w.at_s, w.duration_s)))
        .chain(f.replication_stalls.iter().map(|w| (w.at_s, w.duration_s)));
    for (at, d) in windows {
        edges.push(at);
        edges.push(at + d);
    }
    let mut topology: Vec<(f64, super::TopologyKind)> = f
        .topology_changes
        .iter()
        .map(|t| (t.at_s, t.kind))
        .collect();
    topology.sort_by(|a, b| a.0.total_cmp(&b.0));
    let drain_s = write_end.saturating_since(start).as_secs_f64();
    edges.retain(|e| *e < drain_s);
    edges.push(drain_s);
    edges.sort_by(f64::total_cmp);
    edges.dedup();
    let mut topology = VecDeque::from(topology);
    let mut state = WindowState::default();
    let names = |s: &WindowState| {
        [
            ("db_outage", s.db_down),
            ("read_timeouts", s.read_timeout_p > 0.0),
            ("broker_outage", s.broker.down),
            (
                "broker_errors",
                s.broker.retriable_error_probability > 0.0 || s.broker.lost_ack_probability > 0.0,
            ),
            ("slow_acks", s.broker.slow_ack_ms > 0),
            ("late_writes", s.late.is_some()),
            ("replication_stall", s.stall_ms > 0),
        ]
    };
    for edge in edges {
        while topology.front().is_some_and(|(at, _)| *at <= edge) {
            let (at, kind) = topology.pop_front().expect("checked");
            clock
                .sleep((start + secs(at)).saturating_since(clock.now()))
                .await;
            let now = clock.now();
            let name = match kind {
                super::TopologyKind::Join => {
                    cluster.join_node(now);
                    "node_join"
                }
                super::TopologyKind::Leave => {
                    if cluster.leave_node(now).is_none() {
                        continue;
                    }
                    "node_leave"
                }
            };
            history.record(
                now,
                OpKind::Fault {
                    name: name.into(),
                    on: true,
                },
            );
        }
        clock
            .sleep((start + secs(edge)).saturating_since(clock.now()))
            .await;
        let next = if edge >= drain_s {
            WindowState::default()
        } else {
            window_state(f, edge)
        };
        if next == state {
            continue;
        }
        let now = clock.now();
        for ((name, was), (_, is)) in names(&state).into_iter().zip(names(&next)) {
            if was != is {
                history.record(
                    now,
                    OpKind::Fault {
                        name: name.into(),
                        on: is,
                    },
                );
            }
        }
        cluster.set_unavailable(next.db_down);
        cluster.set_read_timeout_probability(next.read_timeout_p);
        cluster.set_stall_all_ms(next.stall_ms);
        broker.set_faults(next.broker.clone());
        writer.set_late_writes(next.late);
        state = next;
    }
}

/// Starts, crashes and restarts the relay.
fn supervisor(
    scenario: &Scenario,
    sim: &Sim,
    relay: Rc<dyn Relay>,
    start: Timestamp,
    write_end: Timestamp,
) -> impl std::future::Future<Output = ()> + 'static {
    let clock: Rc<dyn Clock> = sim.clock_port();
    let history = sim.history();
    let mut crashes: Vec<(Timestamp, Duration)> = scenario
        .faults
        .relay_crashes
        .iter()
        .map(|c| (start + secs(c.at_s), secs(c.downtime_s)))
        .collect();
    crashes.sort();
    let mut crashes = VecDeque::from(crashes);
    let (wire, fired) = Tripwire::new(
        &scenario.faults.crash_triggers,
        start,
        write_end,
        clock.clone(),
        history.clone(),
    );
    let restart_backoff = secs(scenario.restart_backoff_s);
    let store = Rc::new(sim.store(Client::Relay));
    let broker = sim.broker();
    let cluster = sim.cluster();
    async move {
        let mut incarnation = 0u32;
        loop {
            incarnation += 1;
            while crashes.front().is_some_and(|(t, _)| *t <= clock.now()) {
                crashes.pop_front(); // due while the relay was down
            }
            let checkpoints = Rc::new(crate::sim::scylla::SimCheckpoints::new(
                cluster.clone(),
                clock.clone(),
                incarnation,
            ));
            let publisher = Rc::new(broker.producer(clock.clone(), history.clone(), incarnation));
            let (store, checkpoints, publisher) = wire.wrap(store.clone(), checkpoints, publisher);
            let ctx = RelayContext {
                store,
                checkpoints,
                publisher,
                clock: clock.clone(),
                incarnation,
            };
            history.record(clock.now(), OpKind::RelayStarted { incarnation });
            let run = relay.run(ctx);
            let timer = match crashes.front() {
                Some((t, _)) => Either::Left(clock.sleep(t.saturating_since(clock.now()))),
                None => Either::Right(futures::future::pending::<()>()),
            };
            let trip = Box::pin(fired.recv());
            match select(run, select(timer, trip)).await {
                Either::Left((result, _)) => {
                    let error = result.err().map(|e| e.to_string());
                    history.record(clock.now(), OpKind::RelayExited { incarnation, error });
                    clock.sleep(restart_backoff).await;
                }
                Either::Right((crash, relay_future)) => {
                    drop(relay_future); // the crash: dropped at its current await point
                    history.record(clock.now(), OpKind::RelayCrashed { incarnation });
                    let downtime = match crash {
                        Either::Left(_) => crashes.pop_front().expect("a timed crash is queued").1,
                        Either::Right((Ok((_, downtime_s)), _)) => secs(downtime_s),
                        Either::Right((Err(_), _)) => Duration::ZERO,
                    };
                    clock.sleep(downtime).await;
                }
            }
        }
    }
}
