//! Hunting for failures: swarm cases over many seeds, stop at the first failing one, shrink its
//! fault plan.
//!
//! A case is `(base scenario, relay, seed)`: the seed draws the swarm plan (which fault kinds are
//! on, when, how hard, plus bursts, skew, client timestamps and short TTLs) and seeds the world.
//! Cases are independent, so they run on every core; the reported failure is always the lowest
//! failing seed, whatever the thread timing. Shrinking removes fault entries one at a time, then
//! halves durations, keeping each step only if the same anomaly kind still appears.

use std::rc::Rc;

use rand::Rng;

use crate::mutants::Mutant;
use crate::relay::{PRESETS, Preset, Relay};
use crate::scenario::faults::{RelayCrash, swarm};
use crate::scenario::workload::Burst;
use crate::scenario::{RunError, RunReport, Scenario, run};
use crate::seed::Seed;

/// The hunt's default base scenario (also at `fixtures/scenarios/hunt.toml`).
pub const HUNT_SCENARIO_TOML: &str = include_str!("../fixtures/scenarios/hunt.toml");

/// Which relay a case runs: a preset or a mutant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelaySpec {
    /// A preset.
    Preset(Preset),
    /// A mutant.
    Mutant(Mutant),
}

impl RelaySpec {
    /// Parses `poll-safe` or `mutant:<name>`; the error lists what is accepted.
    pub fn parse(s: &str) -> Result<RelaySpec, String> {
        if let Some(m) = s.strip_prefix("mutant:") {
            return Mutant::parse(m).map(RelaySpec::Mutant).ok_or_else(|| {
                let names: Vec<_> = crate::mutants::MUTANTS.iter().map(|m| m.name()).collect();
                format!(
                    "unknown mutant '{m}' (expected one of: {})",
                    names.join(", ")
                )
            });
        }
        Preset::parse(s).map(RelaySpec::Preset).ok_or_else(|| {
            let names: Vec<_> = PRESETS.iter().map(|p| p.name()).collect();
            format!(
                "unknown relay '{s}' (expected one of: {}, or mutant:<name>)",
                names.join(", ")
            )
        })
    }

    /// The relay for `scenario` (safe presets size their windows from it).
    pub fn relay(self, scenario: &Scenario) -> Rc<dyn Relay> {
        match self {
            RelaySpec::Preset(p) => {
                Rc::new(p.relay(scenario.visibility_bound(), scenario.cdc_ttl()))
            }
            RelaySpec::Mutant(m) => m.relay(scenario.visibility_bound(), scenario.cdc_ttl()),
        }
    }
}

impl std::fmt::Display for RelaySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelaySpec::Preset(p) => write!(f, "{p}"),
            RelaySpec::Mutant(m) => write!(f, "mutant:{m}"),
        }
    }
}

/// The hunt's default base scenario.
pub fn hunt_scenario() -> Scenario {
    Scenario::parse(HUNT_SCENARIO_TOML, None).expect("the built-in hunt scenario is valid")
}

/// The swarm case of `seed` on `base`: its faults replaced by a swarm plan, and sometimes a burst,
/// more clock skew, millisecond client timestamps, or a CDC TTL shorter than a relay downtime.
pub fn swarm_scenario(base: &Scenario, seed: Seed) -> Scenario {
    let mut s = base.clone();
    s.name = format!("{}+swarm", base.name);
    s.faults = swarm(seed, base.duration_s);
    let mut rng = seed.rng("swarm-world");
    let d = base.duration_s;
    if rng.random_bool(0.4) {
        s.workload.bursts.push(Burst {
            at_s: rng.random_range(0.0..d * 0.8),
            duration_s: rng.random_range(5.0..30.0),
            orders_per_s: rng.random_range(100.0..400.0),
        });
    }
    if rng.random_bool(0.3) {
        s.cluster.clock_skew_ms = rng.random_range(20..1_500);
    }
    if rng.random_bool(0.25) {
        s.cluster.client_timestamps = true;
        s.cluster.client_clock_skew_ms = rng.random_range(-500..=500);
        s.cluster.client_timestamp_resolution_us = 1_000;
    }
    if rng.random_bool(0.1) {
        // Downtime longer than the CDC log TTL: the TTL stays long against the relays' own
        // latency (≤ 40 s), the crash comes early, and the drain gives the relay time to catch up.
        let ttl = rng.random_range(200..300);
        s.cluster.cdc_ttl_s = ttl;
        s.cluster.outbox_ttl_s = ttl;
        let crash = RelayCrash {
            at_s: rng.random_range(5.0..20.0),
            downtime_s: ttl as f64 + rng.random_range(30.0..60.0),
        };
        s.drain_s = s.drain_s.max(crash.at_s + crash.downtime_s + 180.0 - d);
        s.faults.relay_crashes.push(crash);
    }
    s
}

/// Runs one case: the swarm case of `seed` if `swarm_mode`, else `base` itself.
pub fn run_case(
    base: &Scenario,
    spec: RelaySpec,
    seed: Seed,
    swarm_mode: bool,
) -> Result<RunReport, RunError> {
    let scenario = if swarm_mode {
        swarm_scenario(base, seed)
    } else {
        base.clone()
    };
    run(&scenario, spec.relay(&scenario), seed)
}

/// A failing case and its shrunk plan.
#[derive(Debug)]
pub struct Found {
    /// The failing seed.
    pub seed: u64,
    /// Its report.
    pub report: RunReport,
    /// The swarm scenario with the smallest plan that still fails the same way.
    pub shrunk: Scenario,
    /// The shrunk scenario's report.
    pub shrunk_report: RunReport,
    /// Fault entries before and after shrinking.
    pub plan_size: (usize, usize),
    /// Runs spent shrinking.
    pub shrink_runs: usize,
}

/// What a hunt did.
#[derive(Debug)]
pub struct HuntOutcome {
    /// Cases run.
    pub cases: u64,
    /// The first failing case, if any.
    pub found: Option<Found>,
}

/// Runs swarm cases for `seeds` in order (in parallel batches), stopping at the lowest failing
/// seed; `progress` is called after each batch with the cases done so far.
pub fn hunt(
    base: &Scenario,
    spec: RelaySpec,
    seeds: std::ops::Range<u64>,
    mut progress: impl FnMut(u64),
) -> Result<HuntOutcome, RunError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(1);
    let batch = (threads * 4) as u64;
    let mut cases = 0;
    let mut next = seeds.start;
    while next < seeds.end {
        let chunk: Vec<u64> = (next..(next + batch).min(seeds.end)).collect();
        next += chunk.len() as u64;
        let results = parallel(&chunk, threads, |seed| {
            run_case(base, spec, Seed(seed), true).map(|r| r.failed())
        })?;
        cases += chunk.len() as u64;
        progress(cases);
        if let Some((seed, _)) = chunk.iter().zip(results).find(|(_, failed)| *failed) {
            let scenario = swarm_scenario(base, Seed(*seed));
            let report = run(&scenario, spec.relay(&scenario), Seed(*seed))?;
            let kind = report
                .first_failure()
                .map(|a| a.kind())
                .unwrap_or("")
                .to_string();
            let before = scenario.faults.len();
            let (shrunk, shrunk_report, shrink_runs) = shrink(scenario, spec, Seed(*seed), &kind)?;
            let after = shrunk.faults.len();
            return Ok(HuntOutcome {
                cases,
                found: Some(Found {
                    seed: *seed,
                    report,
                    shrunk,
                    shrunk_report,
                    plan_size: (before, after),
                    shrink_runs,
                }),
            });
        }
    }
    Ok(HuntOutcome { cases, found: None })
}

fn parallel<T: Send>(
    seeds: &[u64],
    threads: usize,
    f: impl Fn(u64) -> Result<T, RunError> + Sync,
) -> Result<Vec<T>, RunError> {
    let mut slots: Vec<Option<Result<T, String>>> = (0..seeds.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = (0..threads.min(seeds.len()))
            .map(|t| {
                s.spawn(move || {
                    seeds
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| i % threads == t)
                        .map(|(i, seed)| (i, f(*seed).map_err(|e| e.to_string())))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (i, r) in h.join().expect("a case panicked") {
                slots[i] = Some(r);
            }
        }
    });
    slots
        .into_iter()
        .map(|r| r.expect("every case ran").map_err(RunError::Failed))
        .collect()
}

/// Greedy shrinking: remove fault entries, then weaken them, while the run still fails with an
/// anomaly of `kind`. Returns the smallest scenario, its report and the runs spent.
pub fn shrink(
    mut scenario: Scenario,
    spec: RelaySpec,
    seed: Seed,
    kind: &str,
) -> Result<(Scenario, RunReport, usize), RunError> {
    const MAX_RUNS: usize = 300;
    let fails = |s: &Scenario| -> Result<Option<RunReport>, RunError> {
        let r = run(s, spec.relay(s), seed)?;
        Ok(r.anomalies
            .iter()
            .any(|a| a.is_failure() && a.kind() == kind)
            .then_some(r))
    };
    let mut report = fails(&scenario)?
        .ok_or_else(|| RunError::Failed("the failure did not reproduce".into()))?;
    let mut runs = 1;
    'outer: while runs < MAX_RUNS {
        let mut candidates = scenario.faults.without_one();
        candidates.extend(scenario.faults.weakened());
        let mut bursts = Vec::new();
        for i in 0..scenario.workload.bursts.len() {
            let mut s = scenario.clone();
            s.workload.bursts.remove(i);
            bursts.push(s);
        }
        let candidates = candidates
            .into_iter()
            .map(|faults| Scenario {
                faults,
                ..scenario.clone()
            })
            .chain(bursts);
        for candidate in candidates {
            if runs >= MAX_RUNS {
                break 'outer;
            }
            runs += 1;
            if let Some(r) = fails(&candidate)? {
                scenario = candidate;
                report = r;
                continue 'outer;
            }
        }
        break;
    }
    Ok((scenario, report, runs))
}

/// The TOML of a scenario (for printing a shrunk plan as a file to replay).
pub fn scenario_toml(s: &Scenario) -> String {
    toml::to_string(s).unwrap_or_else(|e| format!("# cannot render the scenario: {e}\n"))
}
