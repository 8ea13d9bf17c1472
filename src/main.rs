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

use outbox_sim::relay::{PRESETS, Preset};
use outbox_sim::report::{compare_json, compare_table, report_json};
use outbox_sim::scenario::{RunReport, Scenario, run};
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
    },
    /// List the relay presets and their settings.
    Presets {
        /// Scenario whose skew and TTL size the safe presets.
        #[arg(long)]
        scenario: Option<PathBuf>,
    },
    /// Run one preset on one seed and print its verdict (exit 0: no anomaly, 1: anomalies).
    Run {
        /// Preset name (see `presets`).
        #[arg(long)]
        relay: String,
        /// Seed of the run.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Scenario file.
        #[arg(long)]
        scenario: Option<PathBuf>,
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

fn preset(name: &str) -> Result<Preset, String> {
    Preset::parse(name).ok_or_else(|| {
        let names: Vec<_> = PRESETS.iter().map(|p| p.name()).collect();
        format!(
            "--relay: unknown preset '{name}' (expected one of: {})",
            names.join(", ")
        )
    })
}

fn run_preset(scenario: &Scenario, p: Preset, seed: Seed) -> Result<RunReport, String> {
    let relay = p.relay(scenario.visibility_bound(), scenario.cdc_ttl());
    run(scenario, Rc::new(relay), seed).map_err(|e| format!("{p}: {e}"))
}

/// Runs every preset, spread over the machine's cores; results stay in preset order.
fn run_all(scenario: &Scenario, seed: Seed) -> Result<Vec<RunReport>, String> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(PRESETS.len());
    let mut slots: Vec<Option<Result<RunReport, String>>> =
        (0..PRESETS.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    PRESETS
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| i % threads == t)
                        .map(|(i, p)| (i, run_preset(scenario, *p, seed)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (i, r) in h.join().expect("a preset run panicked") {
                slots[i] = Some(r);
            }
        }
    });
    slots
        .into_iter()
        .map(|r| r.expect("every preset ran"))
        .collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Compare {
        scenario: None,
        seed: 1,
        json: false,
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
        } => {
            let sc = load(&scenario)?;
            let started = Instant::now();
            let reports = run_all(&sc, Seed(seed))?;
            let wall = started.elapsed();
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
                    "{} presets × {:.0} simulated s in {:.2} s wall ({:.0}× time compression); replay: outbox-sim compare --seed {seed}{}",
                    reports.len(),
                    sim_s / reports.len() as f64,
                    wall.as_secs_f64(),
                    sim_s / wall.as_secs_f64().max(1e-9),
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
            json,
        } => {
            let p = preset(&relay)?;
            let sc = load(&scenario)?;
            let replay = format!(
                "outbox-sim run --relay {p} --seed {seed}{}",
                scenario
                    .as_ref()
                    .map(|s| format!(" --scenario {}", s.display()))
                    .unwrap_or_default()
            );
            let r = run_preset(&sc, p, Seed(seed))?;
            let anomalies = r.lost + r.reordered + r.phantom;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report_json(&r)).expect("json")
                );
            } else {
                println!("replay: {replay}");
                print!(
                    "{}",
                    compare_table(&sc.name, seed, std::slice::from_ref(&r))
                );
                println!(
                    "verdict: {}",
                    if anomalies == 0 { "ok" } else { "ANOMALIES" }
                );
                if !r.lost_sample.is_empty() {
                    println!("lost (first {}): {:?}", r.lost_sample.len(), r.lost_sample);
                }
            }
            Ok(if anomalies == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
