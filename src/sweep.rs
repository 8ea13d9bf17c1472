//! Sweeping relay settings: stream safety/sleep/window (with and without scylla-cdc's sleep while
//! lagging) and polling interval/lag, each run on one scenario, then the latency-vs-DB-cost Pareto
//! frontier.
//!
//! A point is on the frontier if no other point has both a lower p99 latency and fewer queries
//! per minute. Loss-free points are marked: a fast point that loses rows is not a configuration.

use std::rc::Rc;
use std::time::Duration;

use serde::Serialize;

use crate::relay::{
    AnyRelay, CursorMode, PollingConfig, PollingRelay, StartTimestamp, StreamConfig, StreamRelay,
};
use crate::scenario::{RunError, Scenario, run};
use crate::seed::Seed;

/// One configuration to try.
#[derive(Clone, Debug)]
pub struct SweepPoint {
    /// A short description, e.g. `stream S=2s P=0.5s W=10s`.
    pub label: String,
    /// The relay.
    pub relay: AnyRelay,
}

/// What one point measured.
#[derive(Clone, Debug, Serialize)]
pub struct SweepResult {
    /// The point's label.
    pub label: String,
    /// p99 latency, ms (simulated).
    pub latency_p99_ms: f64,
    /// p50 latency, ms (simulated).
    pub latency_p50_ms: f64,
    /// Relay DB requests per minute.
    pub queries_per_min: f64,
    /// Rows the cluster read for the relay per minute (polling's real cost).
    pub rows_scanned_per_min: f64,
    /// The longest catch-up after a restart, ms (where "no sleep while lagging" helps).
    pub catch_up_max_ms: f64,
    /// Events lost.
    pub lost: u64,
    /// Whether no anomaly failed the run.
    pub clean: bool,
    /// On the Pareto frontier of (p99, queries/min).
    pub frontier: bool,
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{s}s")
    }
}

/// The default grid for `scenario`: stream relays with safety ∈ {visibility bound, 5 s, 30 s},
/// sleep ∈ {0.5, 2, 10} s, window ∈ {10, 60} s, with and without sleeping while lagging; polling
/// every {0.5, 1, 2, 5} s with lag ∈ {0, 2, 5} s. Stream points save/load progress like
/// stream-safe; polling points use poll-safe's cursor.
pub fn default_grid(scenario: &Scenario) -> Vec<SweepPoint> {
    let bound = scenario.visibility_bound();
    let bound = Duration::from_millis(bound.as_millis().div_ceil(500) as u64 * 500)
        .max(Duration::from_millis(500));
    let ttl = scenario.cdc_ttl();
    let mut points = Vec::new();
    for safety in [bound, Duration::from_secs(5), Duration::from_secs(30)] {
        for sleep in [
            Duration::from_millis(500),
            Duration::from_secs(2),
            Duration::from_secs(10),
        ] {
            for window in [Duration::from_secs(10), Duration::from_secs(60)] {
                for no_sleep_when_lagging in [false, true] {
                    let label = format!(
                        "stream S={} P={} W={}{}",
                        secs(safety),
                        secs(sleep),
                        secs(window),
                        if no_sleep_when_lagging {
                            " no-sleep-lagging"
                        } else {
                            ""
                        }
                    );
                    let cfg = StreamConfig {
                        safety_interval: safety,
                        sleep_interval: sleep,
                        window_size: window,
                        no_sleep_when_lagging,
                        should_load_progress: true,
                        should_save_progress: true,
                        monotonic_checkpoints: true,
                        start: StartTimestamp::Resume {
                            fresh: safety,
                            resuming: ttl,
                        },
                        ..StreamConfig::default()
                    };
                    points.push(SweepPoint {
                        relay: AnyRelay::Stream(StreamRelay::new(&label, cfg)),
                        label,
                    });
                }
            }
        }
    }
    for interval in [
        Duration::from_millis(500),
        Duration::from_secs(1),
        Duration::from_secs(2),
        Duration::from_secs(5),
    ] {
        for lag in [
            Duration::ZERO,
            Duration::from_secs(2),
            Duration::from_secs(5),
        ] {
            let label = format!("poll every={} lag={}", secs(interval), secs(lag));
            let cfg = PollingConfig {
                poll_interval: interval,
                lag,
                cursor: CursorMode::Inclusive,
                ..PollingConfig::default()
            };
            points.push(SweepPoint {
                relay: AnyRelay::Poll(PollingRelay::new(&label, cfg)),
                label,
            });
        }
    }
    points
}

/// Runs every point on `scenario` with `seed` (in parallel), then marks the frontier.
pub fn sweep(
    scenario: &Scenario,
    points: &[SweepPoint],
    seed: Seed,
    progress: impl Fn() + Sync,
) -> Result<Vec<SweepResult>, RunError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(1);
    let mut slots: Vec<Option<Result<SweepResult, String>>> =
        (0..points.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let progress = &progress;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    points
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| i % threads == t)
                        .map(|(i, p)| {
                            let r = run(scenario, Rc::new(p.relay.clone()), seed)
                                .map_err(|e| e.to_string())
                                .map(|r| SweepResult {
                                    label: p.label.clone(),
                                    latency_p99_ms: r.latency_ms.p99,
                                    latency_p50_ms: r.latency_ms.p50,
                                    queries_per_min: r.queries_per_min,
                                    rows_scanned_per_min: r.rows_scanned_per_min,
                                    catch_up_max_ms: r
                                        .catch_up_ms
                                        .iter()
                                        .copied()
                                        .fold(0.0, f64::max),
                                    lost: r.lost,
                                    clean: !r.failed(),
                                    frontier: false,
                                });
                            progress();
                            (i, r)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (i, r) in h.join().expect("a sweep point panicked") {
                slots[i] = Some(r);
            }
        }
    });
    let mut results = slots
        .into_iter()
        .map(|r| r.expect("every point ran").map_err(RunError::Failed))
        .collect::<Result<Vec<_>, _>>()?;
    mark_frontier(&mut results);
    Ok(results)
}

/// Marks the clean points no other clean point beats on both p99 and queries/min.
pub fn mark_frontier(results: &mut [SweepResult]) {
    let clean: Vec<(f64, f64)> = results
        .iter()
        .filter(|r| r.clean)
        .map(|r| (r.latency_p99_ms, r.queries_per_min))
        .collect();
    for r in results.iter_mut() {
        r.frontier = r.clean
            && !clean.iter().any(|&(l, q)| {
                (l < r.latency_p99_ms && q <= r.queries_per_min)
                    || (l <= r.latency_p99_ms && q < r.queries_per_min)
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(label: &str, p99: f64, q: f64, clean: bool) -> SweepResult {
        SweepResult {
            label: label.into(),
            latency_p99_ms: p99,
            latency_p50_ms: p99 / 2.0,
            queries_per_min: q,
            rows_scanned_per_min: 0.0,
            catch_up_max_ms: 0.0,
            lost: u64::from(!clean),
            clean,
            frontier: false,
        }
    }

    #[test]
    fn the_frontier_keeps_only_undominated_clean_points() {
        let mut v = vec![
            r("fast-costly", 1_000.0, 100_000.0, true),
            r("slow-cheap", 30_000.0, 50.0, true),
            r("dominated", 31_000.0, 60.0, true),
            r("fast-cheap-but-lossy", 500.0, 10.0, false),
            r("middle", 5_000.0, 5_000.0, true),
        ];
        mark_frontier(&mut v);
        let on: Vec<&str> = v
            .iter()
            .filter(|x| x.frontier)
            .map(|x| x.label.as_str())
            .collect();
        assert_eq!(on, vec!["fast-costly", "slow-cheap", "middle"]);
    }
}
