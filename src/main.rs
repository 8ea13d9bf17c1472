//! `outbox-sim`: the command line.
//!
//! With no subcommand it runs `compare`: the default scenario against every relay preset, one
//! table. Bad input (unknown preset, unreadable or invalid scenario) prints one line naming the
//! file, field and reason and exits with status 2.

use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Instant;

use clap::{Parser, Subcommand};

use indicatif::{ProgressBar, ProgressStyle};
use outbox_sim::hunt::{RelaySpec, hunt, hunt_scenario, scenario_toml, swarm_scenario};
use outbox_sim::mutants::MUTANTS;
use outbox_sim::relay::{PRESETS, Preset};
use outbox_sim::report::{compare_json, compare_table, report_json};
use outbox_sim::scenario::{RunReport, Scenario, run, run_world};
use outbox_sim::seed::Seed;

/// Poll vs CDC-stream outbox relays on a simulated ScyllaDB + Kafka, measured and broken.
#[derive(Parser, Debug)]
#[command(name = "outbox-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one scenario against every preset and print one table (the default).
    Compare {
        /// Scenario file (default: the built-in fixtures/scenarios/default.toml).
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Seed of the run.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Also write target/outbox-sim/report.html (latency CDF per preset and the table).
        #[arg(long)]
        html: bool,
    },
    /// List the relay presets and their settings.
    Presets {
        /// Scenario whose skew and TTL size the safe presets.
        #[arg(long)]
        scenario: Option<PathBuf>,
    },
    /// Run one case and print its verdict (exit 0: no anomaly, 1: anomalies, 2: bad input).
    Run {
        /// A preset name, or `mutant:<name>`.
        #[arg(long)]
        relay: String,
        /// Seed of the run.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Scenario file (default: the default scenario, or the hunt scenario with --swarm).
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Replace the scenario's faults with the seed's swarm plan (what `hunt` runs).
        #[arg(long)]
        swarm: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run swarm cases until one fails; print its replay line, anomalies and shrunk plan
    /// (exit 1: found, 0: none, 2: bad input).
    Hunt {
        /// A preset name, or `mutant:<name>`.
        #[arg(long)]
        relay: String,
        /// Number of seeds to try.
        #[arg(long, default_value_t = 200)]
        seeds: u64,
        /// First seed.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Base scenario (default: the built-in hunt scenario).
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the mutants and the bugs they reproduce.
    Mutants,
    /// Run the real pipeline against a live ScyllaDB and Kafka (or the CQL front): writer,
    /// relay (the real scylla-cdc reader for stream presets), topic read back, checker
    /// (exit 0: clean, 1: anomalies, 2: bad input or unreachable servers).
    Live {
        /// ScyllaDB contact point.
        #[arg(long, default_value = "127.0.0.1:9042")]
        scylla: String,
        /// Kafka bootstrap servers, or `mock` for librdkafka's in-process mock cluster.
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka: String,
        /// Relay preset.
        #[arg(long, default_value = "poll-safe")]
        relay: String,
        /// Orders to write (three events each).
        #[arg(long, default_value_t = 100)]
        orders: usize,
        /// Writes per second.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Crash the relay this many seconds in (restarted after 1 s).
        #[arg(long)]
        crash_after_s: Option<f64>,
        /// Topic.
        #[arg(long, default_value = "outbox")]
        topic: String,
        /// Seconds to wait for each server before giving up.
        #[arg(long, default_value_t = 10.0)]
        connect_timeout_s: f64,
    },
    /// Serve the simulated cluster over CQL v4 (one listener per node on 127.0.0.x) in real
    /// time, applying the scenario's cluster settings and topology changes.
    Serve {
        /// Nodes (listeners 127.0.0.1 … 127.0.0.N).
        #[arg(long, default_value_t = 1)]
        nodes: u32,
        /// Port of every listener.
        #[arg(long, default_value_t = 9042)]
        port: u16,
        /// Scenario whose [cluster] settings and topology changes apply.
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Cap rows per page (1 exercises client paging).
        #[arg(long)]
        max_page_rows: Option<usize>,
        /// Stop after this many seconds (default: run until killed).
        #[arg(long)]
        for_s: Option<f64>,
    },
    /// Sweep stream safety/sleep/window and polling interval/lag; print the latency vs
    /// queries/min Pareto frontier (loss-free points only).
    Sweep {
        /// Scenario file (default: the default scenario).
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Seed of every run.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn load(scenario: &Option<PathBuf>) -> Result<Scenario, String> {
    match scenario {
        Some(path) => Scenario::load(path).map_err(|e| e.to_string()),
        None => Ok(Scenario::default_scenario()),
    }
}

fn run_preset(scenario: &Scenario, p: Preset, seed: Seed) -> Result<RunReport, String> {
    let relay = p.relay(scenario.visibility_bound(), scenario.cdc_ttl());
    run(scenario, Rc::new(relay), seed).map_err(|e| format!("{p}: {e}"))
}

/// Runs every preset, spread over the machine's cores; results stay in preset order. Workers
/// pull presets from a shared queue, most expensive first (stream-tuned's many short windows cost
/// several times the others), so the wall time is close to the longest single run.
fn run_all(scenario: &Scenario, seed: Seed) -> Result<Vec<RunReport>, String> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(PRESETS.len());
    let mut order: Vec<usize> = (0..PRESETS.len()).collect();
    order.reverse(); // PRESETS lists the cheapest first; the stream presets cost the most.
    let next = AtomicUsize::new(0);
    let slots: Mutex<Vec<Option<Result<RunReport, String>>>> =
        Mutex::new((0..PRESETS.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let r = run_preset(scenario, PRESETS[i], seed);
                    slots.lock().expect("a preset run panicked")[i] = Some(r);
                }
            });
        }
    });
    slots
        .into_inner()
        .expect("a preset run panicked")
        .into_iter()
        .map(|r| r.expect("every preset ran"))
        .collect()
}

/// mimalloc: the simulation allocates and frees small objects at a high rate (rows, timers,
/// futures); it runs 10–20 % faster than on the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Like other command-line tools, end quietly when the reader of stdout goes away
    // (`outbox-sim presets | head`) instead of panicking in `println!`.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Compare {
        scenario: None,
        seed: 1,
        json: false,
        html: false,
    });
    match execute(command) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
    }
}

fn execute(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Compare {
            scenario,
            seed,
            json,
            html,
        } => {
            let sc = load(&scenario)?;
            let started = Instant::now();
            let reports = run_all(&sc, Seed(seed))?;
            let wall = started.elapsed();
            if html {
                let path = write_report(&outbox_sim::report::html_report(
                    &sc.name, seed, &reports, None,
                ))?;
                eprintln!("wrote {path}");
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&compare_json(&sc.name, seed, &reports))
                        .expect("json")
                );
            } else {
                print!("{}", compare_table(&sc.name, seed, &reports));
                let sim_s: f64 = reports.iter().map(|r| r.sim_s).sum();
                println!(
                    "{} presets × {:.0} simulated s in {:.2} s wall ({:.0}× time compression), peak memory {}; replay: outbox-sim compare --seed {seed}{}",
                    reports.len(),
                    sim_s / reports.len() as f64,
                    wall.as_secs_f64(),
                    sim_s / wall.as_secs_f64().max(1e-9),
                    peak_memory(),
                    scenario
                        .map(|p| format!(" --scenario {}", p.display()))
                        .unwrap_or_default(),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Presets { scenario } => {
            let sc = load(&scenario)?;
            for p in PRESETS {
                println!(
                    "{:<20} {}",
                    p.name(),
                    p.describe(sc.visibility_bound(), sc.cdc_ttl())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            relay,
            seed,
            scenario,
            swarm,
            json,
        } => {
            let spec = RelaySpec::parse(&relay).map_err(|e| format!("--relay: {e}"))?;
            let base = match (&scenario, swarm) {
                (Some(path), _) => Scenario::load(path).map_err(|e| e.to_string())?,
                (None, true) => hunt_scenario(),
                (None, false) => Scenario::default_scenario(),
            };
            let replay = replay_line(spec, seed, &scenario, swarm);
            let sc = if swarm {
                swarm_scenario(&base, Seed(seed))
            } else {
                base
            };
            // Checked as it runs, keeping no ops: memory stays bounded however long the run.
            let started = Instant::now();
            let report = run(&sc, spec.relay(&sc), Seed(seed)).map_err(|e| e.to_string())?;
            let wall = started.elapsed().as_secs_f64();
            if json {
                let mut v = report_json(&report);
                v["replay"] = replay.into();
                v["verdict"] = if report.failed() { "anomalies" } else { "ok" }.into();
                v["anomalies"] = serde_json::to_value(&report.anomalies).expect("json");
                v["coverage"] = serde_json::to_value(&report.coverage).expect("json");
                println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            } else {
                println!("replay: {replay}");
                print_verdict(&sc, &report);
                println!(
                    "{:.0} simulated s in {wall:.2} s wall ({:.0}× time compression), {} history ops checked as they came, peak memory {}",
                    report.sim_s,
                    report.sim_s / wall.max(1e-9),
                    report.history_ops,
                    peak_memory(),
                );
                if let Some(first) = report.first_failure() {
                    // Replay the same seed keeping every op, to show the ones around it.
                    let (again, sim) =
                        run_world(&sc, spec.relay(&sc), Seed(seed)).map_err(|e| e.to_string())?;
                    if again.digest != report.digest {
                        return Err(format!(
                            "the replay of seed {seed} diverged (digest {} then {}): the run is not deterministic",
                            report.digest, again.digest
                        ));
                    }
                    let history = sim.history();
                    let ops = history.ops();
                    println!("ops around it (replayed, digest {}):", again.digest);
                    for op in first.context(&ops, 15) {
                        println!("  {} {:?}", op.at, op.kind);
                    }
                }
            }
            Ok(if report.failed() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Hunt {
            relay,
            seeds,
            from,
            scenario,
            json,
        } => {
            let spec = RelaySpec::parse(&relay).map_err(|e| format!("--relay: {e}"))?;
            let base = match &scenario {
                Some(path) => Scenario::load(path).map_err(|e| e.to_string())?,
                None => hunt_scenario(),
            };
            let bar = if json {
                ProgressBar::hidden()
            } else {
                ProgressBar::new(seeds)
            };
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} seeds  {per_sec}  {msg}")
                    .expect("valid template"),
            );
            bar.set_message(format!("{spec}"));
            let started = Instant::now();
            let outcome = hunt(&base, spec, from..from.saturating_add(seeds), |done| {
                bar.set_position(done)
            })
            .map_err(|e| e.to_string())?;
            bar.finish_and_clear();
            let wall = started.elapsed().as_secs_f64();
            let rate = outcome.cases as f64 / wall.max(1e-9);
            match outcome.found {
                None => {
                    if json {
                        let v = serde_json::json!({ "relay": spec.to_string(), "found": false, "cases": outcome.cases, "cases_per_s": rate });
                        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
                    } else {
                        println!(
                            "no failing seed in {}..{} for {spec}: {} cases in {wall:.1} s ({rate:.0} cases/s)",
                            from,
                            from + seeds,
                            outcome.cases
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Some(found) => {
                    let replay = replay_line(spec, found.seed, &scenario, true);
                    let dir = PathBuf::from("target/outbox-sim");
                    let file = dir.join(format!(
                        "shrunk-{}-{}.toml",
                        spec.to_string().replace(':', "-"),
                        found.seed
                    ));
                    let saved = std::fs::create_dir_all(&dir)
                        .and_then(|_| std::fs::write(&file, scenario_toml(&found.shrunk)));
                    if json {
                        let v = serde_json::json!({
                            "relay": spec.to_string(), "found": true, "seed": found.seed, "replay": replay,
                            "cases": outcome.cases, "cases_per_s": rate,
                            "anomalies": found.report.anomalies.iter().take(20).collect::<Vec<_>>(),
                            "plan_size": [found.plan_size.0, found.plan_size.1],
                            "shrunk_faults": found.shrunk.faults,
                            "shrunk_anomalies": found.shrunk_report.anomalies.iter().take(20).collect::<Vec<_>>(),
                        });
                        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
                    } else {
                        println!("replay: {replay}");
                        println!(
                            "found after {} cases ({wall:.1} s, {rate:.0} cases/s)",
                            outcome.cases
                        );
                        print_verdict(&swarm_scenario(&base, Seed(found.seed)), &found.report);
                        println!(
                            "shrunk plan: {} → {} fault entries in {} runs; still fails with {}",
                            found.plan_size.0,
                            found.plan_size.1,
                            found.shrink_runs,
                            found
                                .shrunk_report
                                .first_failure()
                                .map_or("-", |a| a.kind()),
                        );
                        print!(
                            "{}",
                            indent(&toml::to_string(&found.shrunk.faults).unwrap_or_default())
                        );
                        if saved.is_ok() {
                            println!(
                                "replay shrunk: outbox-sim run --relay {spec} --seed {} --scenario {}",
                                found.seed,
                                file.display()
                            );
                        }
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Sweep {
            scenario,
            seed,
            json,
        } => {
            let sc = load(&scenario)?;
            let points = outbox_sim::sweep::default_grid(&sc);
            let bar = if json {
                ProgressBar::hidden()
            } else {
                ProgressBar::new(points.len() as u64)
            };
            let mut results = outbox_sim::sweep::sweep(&sc, &points, Seed(seed), || bar.inc(1))
                .map_err(|e| e.to_string())?;
            bar.finish_and_clear();
            let reports = run_all(&sc, Seed(seed))?;
            let path = write_report(&outbox_sim::report::html_report(
                &sc.name,
                seed,
                &reports,
                Some(&results),
            ))?;
            eprintln!("wrote {path}");
            if json {
                println!("{}", serde_json::to_string_pretty(&results).expect("json"));
            } else {
                results.sort_by(|a, b| a.queries_per_min.total_cmp(&b.queries_per_min));
                println!(
                    "scenario {}, seed {seed} — p99/p50 are simulated latency; * = Pareto frontier among loss-free points",
                    sc.name
                );
                println!(
                    "{:<45} {:>10} {:>10} {:>12} {:>12} {:>12} {:>6}",
                    "configuration",
                    "p99",
                    "p50",
                    "queries/min",
                    "rows/min",
                    "catch-up max",
                    "lost"
                );
                for r in &results {
                    println!(
                        "{:<45} {:>8.0}ms {:>8.0}ms {:>12.0} {:>12.0} {:>10.0}ms {:>6}  {}{}",
                        r.label,
                        r.latency_p99_ms,
                        r.latency_p50_ms,
                        r.queries_per_min,
                        r.rows_scanned_per_min,
                        r.catch_up_max_ms,
                        r.lost,
                        if r.frontier { "*" } else { "" },
                        if r.clean { "" } else { " (anomalies)" }
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Live {
            scylla,
            kafka,
            relay,
            orders,
            rate,
            crash_after_s,
            topic,
            connect_timeout_s,
        } => live(
            scylla,
            kafka,
            relay,
            orders,
            rate,
            crash_after_s,
            topic,
            connect_timeout_s,
        ),
        Command::Serve {
            nodes,
            port,
            scenario,
            max_page_rows,
            for_s,
        } => serve(nodes, port, &scenario, max_page_rows, for_s),
        Command::Mutants => {
            for m in MUTANTS {
                println!("mutant:{:<26} {}", m.name(), m.bug());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn live(
    scylla: String,
    kafka: String,
    relay: String,
    orders: usize,
    rate: f64,
    crash_after_s: Option<f64>,
    topic: String,
    connect_timeout_s: f64,
) -> Result<ExitCode, String> {
    use outbox_sim::live::pipeline::{LiveOptions, LiveTarget, run_live};
    let preset = Preset::parse(&relay).ok_or_else(|| {
        format!(
            "--relay {relay}: unknown preset (one of {})",
            PRESETS.map(|p| p.name()).join(", ")
        )
    })?;
    if !(rate > 0.0 && rate.is_finite()) {
        return Err(format!(
            "--rate {rate}: must be a positive number of writes per second"
        ));
    }
    if !(connect_timeout_s > 0.0 && connect_timeout_s.is_finite()) {
        return Err(format!(
            "--connect-timeout-s {connect_timeout_s}: must be positive"
        ));
    }
    let target = LiveTarget {
        scylla,
        kafka,
        topic,
        preset,
        connect_timeout: std::time::Duration::from_secs_f64(connect_timeout_s),
    };
    let opts = LiveOptions {
        orders,
        writes_per_s: rate,
        crash_after: crash_after_s.map(|s| std::time::Duration::from_secs_f64(s.max(0.0))),
        ..LiveOptions::default()
    };
    let r = run_live(&target, &opts)?;
    print!(
        "{}",
        compare_table(
            &r.report.scenario,
            r.report.seed,
            std::slice::from_ref(&r.report)
        )
        .replace("simulated time", "wall-clock time")
    );
    println!(
        "topic {}: {} records read back, {} acknowledged ids missing; drained: {}",
        target.topic, r.on_topic, r.missing_on_topic, r.drained
    );
    if !r.relay_queries_counted {
        println!("queries/min: the real scylla-cdc reader's own session is not counted (0 above)");
    }
    for d in &r.dead_letters {
        println!("dead letter: {d}");
    }
    print_verdict_lines(&r.report);
    let clean = !r.report.failed() && r.drained && r.missing_on_topic == 0;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn serve(
    nodes: u32,
    port: u16,
    scenario: &Option<PathBuf>,
    max_page_rows: Option<usize>,
    for_s: Option<f64>,
) -> Result<ExitCode, String> {
    use outbox_sim::front::{FrontConfig, start};
    use outbox_sim::scenario::TopologyKind;
    use std::time::Duration;
    let sc = load(scenario)?;
    let front = start(FrontConfig {
        nodes,
        port,
        max_page_rows,
        cluster: sc.cluster.clone(),
        seed: Seed(1),
    })
    .map_err(|e| format!("serve: {e}"))?;
    let addrs: Vec<String> = front.addrs.iter().map(|a| a.to_string()).collect();
    println!(
        "outbox-sim CQL front: {} node(s) at {}",
        nodes,
        addrs.join(", ")
    );
    println!(
        "  keyspace orders_ks: orders, outbox_messages (CDC on), poll_cursor, cdc_checkpoints"
    );
    println!(
        "  connect:  SessionBuilder::new().known_node(\"{}\")",
        addrs[0]
    );
    println!(
        "  or:       outbox-sim live --scylla {} --kafka <bootstrap> --relay stream-tuned",
        addrs[0]
    );
    let changes: Vec<(f64, TopologyKind)> = sc
        .faults
        .topology_changes
        .iter()
        .map(|t| (t.at_s, t.kind))
        .collect();
    outbox_sim::live::serve::run(
        &front,
        changes,
        for_s.map(Duration::from_secs_f64),
        |line| println!("{line}"),
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes the HTML report to target/outbox-sim/report.html.
fn write_report(html: &str) -> Result<String, String> {
    let dir = PathBuf::from("target/outbox-sim");
    let path = dir.join("report.html");
    std::fs::create_dir_all(&dir)
        .and_then(|_| std::fs::write(&path, html))
        .map_err(|e| format!("{}: cannot write the report: {e}", path.display()))?;
    Ok(path.display().to_string())
}

fn replay_line(spec: RelaySpec, seed: u64, scenario: &Option<PathBuf>, swarm: bool) -> String {
    format!(
        "outbox-sim run --relay {spec} --seed {seed}{}{}",
        if swarm { " --swarm" } else { "" },
        scenario
            .as_ref()
            .map(|s| format!(" --scenario {}", s.display()))
            .unwrap_or_default()
    )
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

/// This process's peak resident memory (Linux `VmHWM`), or why it is unknown.
fn peak_memory() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.0} MB (VmHWM)", kb / 1024.0))
        })
        .unwrap_or_else(|| "unknown (no /proc/self/status)".to_string())
}

fn print_verdict(scenario: &Scenario, r: &RunReport) {
    print!(
        "{}",
        compare_table(&scenario.name, r.seed, std::slice::from_ref(r))
    );
    print_verdict_lines(r);
}

fn print_verdict_lines(r: &RunReport) {
    let failing: Vec<_> = r.anomalies.iter().filter(|a| a.is_failure()).collect();
    println!(
        "verdict: {}",
        if failing.is_empty() {
            "ok".to_string()
        } else {
            format!("{} anomalies", r.anomaly_counts.values().sum::<u64>())
        }
    );
    for (kind, n) in &r.anomaly_counts {
        println!("  {kind}: {n}");
    }
    if let Some(first) = r.first_failure() {
        println!("first violation — {}", first.property());
        println!("  {first}");
    }
    let cov: Vec<String> = r.coverage.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "exercised: {}",
        if cov.is_empty() {
            "nothing".to_string()
        } else {
            cov.join(" ")
        }
    );
}
