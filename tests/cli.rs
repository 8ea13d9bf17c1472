//! The command line: bad input is one line naming the file, field and reason with exit status 2;
//! verdicts map to exit statuses; the same seed prints the same bytes.

use std::path::PathBuf;
use std::process::{Command, Output};

fn outbox_sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outbox-sim"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn scenario_file(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const SMALL: &str = r#"
name = "small"
duration_s = 30
drain_s = 60
[cluster]
nodes = 1
vnodes_per_node = 8
shards_per_node = 2
[workload]
orders_per_s = 5
"#;

fn assert_bad_input(args: &[&str], expect: &[&str]) {
    let out = outbox_sim(args);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for e in expect {
        assert!(err.contains(e), "{args:?}: expected {e:?} in {err:?}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn malformed_and_contradictory_scenarios_exit_2_naming_file_and_field() {
    let syntax = scenario_file("syntax.toml", "duration_s = 30\n[cluster\nnodes = 3\n");
    assert_bad_input(
        &["compare", "--scenario", syntax.to_str().unwrap()],
        &["syntax.toml", "line 2"],
    );

    let unknown = scenario_file("unknown.toml", &format!("{SMALL}\nbogus_knob = 1\n"));
    assert_bad_input(
        &["compare", "--scenario", unknown.to_str().unwrap()],
        &["unknown.toml", "bogus_knob"],
    );

    let negative = scenario_file(
        "negative.toml",
        &SMALL.replace("nodes = 1", "nodes = 1\nreplication_delay_min_ms = -5"),
    );
    assert_bad_input(
        &[
            "run",
            "--relay",
            "poll-safe",
            "--scenario",
            negative.to_str().unwrap(),
        ],
        &[
            "negative.toml",
            "cluster.replication_delay_min_ms",
            "negative",
        ],
    );

    let late_crash = scenario_file(
        "late_crash.toml",
        &format!("{SMALL}\n[[faults.relay_crashes]]\nat_s = 45\ndowntime_s = 5\n"),
    );
    assert_bad_input(
        &["compare", "--scenario", late_crash.to_str().unwrap()],
        &[
            "late_crash.toml",
            "faults.relay_crashes[0].at_s",
            "write phase",
        ],
    );

    let skew = scenario_file(
        "skew.toml",
        &SMALL.replace("nodes = 1", "nodes = 1\nclock_skew_ms = 9000"),
    );
    assert_bad_input(
        &["presets", "--scenario", skew.to_str().unwrap()],
        &["skew.toml", "cluster.clock_skew_ms"],
    );

    assert_bad_input(
        &["compare", "--scenario", "/nonexistent/x.toml"],
        &["/nonexistent/x.toml", "cannot read"],
    );
}

#[test]
fn unknown_relays_exit_2_and_list_what_exists() {
    assert_bad_input(
        &["run", "--relay", "poll-magic"],
        &["--relay", "poll-magic", "poll-safe", "mutant:<name>"],
    );
    assert_bad_input(
        &["hunt", "--relay", "mutant:nope"],
        &["--relay", "nope", "checkpoint-before-ack"],
    );
    let out = outbox_sim(&["run", "--seed", "x", "--relay", "poll-safe"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap's usage errors are status 2 too"
    );
}

#[test]
fn run_exits_1_on_anomalies_and_0_when_clean() {
    let small = scenario_file(
        "small.toml",
        &format!("{SMALL}\n[[faults.relay_crashes]]\nat_s = 10\ndowntime_s = 5\n"),
    );
    let path = small.to_str().unwrap();
    let bad = outbox_sim(&[
        "run",
        "--relay",
        "stream-default",
        "--seed",
        "3",
        "--scenario",
        path,
    ]);
    assert_eq!(bad.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert!(
        stdout.starts_with("replay: outbox-sim run --relay stream-default --seed 3 --scenario"),
        "{stdout}"
    );
    assert!(stdout.contains("Lost"), "{stdout}");
    let good = outbox_sim(&[
        "run",
        "--relay",
        "stream-safe",
        "--seed",
        "3",
        "--scenario",
        path,
    ]);
    assert_eq!(
        good.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&good.stdout)
    );
}

#[test]
fn compare_prints_the_same_json_for_the_same_seed() {
    let small = scenario_file("small_compare.toml", SMALL);
    let path = small.to_str().unwrap();
    let a = outbox_sim(&["compare", "--scenario", path, "--seed", "9", "--json"]);
    let b = outbox_sim(&["compare", "--scenario", path, "--seed", "9", "--json"]);
    let c = outbox_sim(&["compare", "--scenario", path, "--seed", "10", "--json"]);
    assert!(a.status.success());
    assert_eq!(a.stdout, b.stdout);
    assert_ne!(a.stdout, c.stdout);
    let v: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    let presets = v["presets"].as_array().unwrap();
    assert_eq!(presets.len(), 6);
    for p in presets {
        for key in [
            "committed",
            "published",
            "lost",
            "duplicated",
            "reordered",
            "catch_up_ms",
            "queries_per_min",
            "rows_scanned_per_min",
        ] {
            assert!(p.get(key).is_some(), "{key} missing in {p}");
        }
        for q in ["p50", "p99", "max"] {
            assert!(p["latency_ms"][q].is_number());
        }
    }
}

#[test]
fn presets_and_mutants_are_listed() {
    let out = outbox_sim(&["presets"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for name in [
        "poll-naive",
        "poll-safe",
        "stream-default",
        "stream-checkpointed",
        "stream-safe",
        "stream-tuned",
    ] {
        assert!(text.contains(name), "{text}");
    }
    assert!(text.contains("safety 30000 ms"));
    let out = outbox_sim(&["mutants"]);
    assert!(String::from_utf8_lossy(&out.stdout).lines().count() >= 8);
}

#[test]
fn live_with_unreachable_servers_exits_2_within_the_timeout_naming_the_server() {
    let started = std::time::Instant::now();
    assert_bad_input(
        &[
            "live",
            "--scylla",
            "127.0.0.1:1",
            "--kafka",
            "mock",
            "--connect-timeout-s",
            "3",
        ],
        &["ScyllaDB at 127.0.0.1:1"],
    );
    assert_bad_input(
        &[
            "live",
            "--scylla",
            "127.0.0.1:1",
            "--kafka",
            "127.0.0.1:1",
            "--connect-timeout-s",
            "2",
        ],
        &["Kafka at 127.0.0.1:1", "within 2 s"],
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "both gave up within their timeouts"
    );
    assert_bad_input(&["live", "--relay", "nope"], &["--relay nope", "poll-safe"]);
    assert_bad_input(&["live", "--rate", "0"], &["--rate 0"]);
}

#[test]
fn live_runs_the_real_pipeline_against_the_cql_front_and_mock_kafka() {
    let front = outbox_sim::front::start(outbox_sim::front::FrontConfig::default()).unwrap();
    let out = outbox_sim(&[
        "live",
        "--scylla",
        &front.contact(),
        "--kafka",
        "mock",
        "--relay",
        "poll-safe",
        "--orders",
        "40",
        "--rate",
        "200",
        "--crash-after-s",
        "0.3",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verdict: ok"), "{stdout}");
    assert!(stdout.contains("wall-clock time"), "{stdout}");
    assert!(stdout.contains("0 acknowledged ids missing"), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("poll-safe"))
        .expect("a table row");
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "120", "120 committed: {row}");
    assert_eq!(cols[3], "0", "0 lost: {row}");
    assert!(stdout.contains("relay_crashed=1"), "{stdout}");
}

/// A reader that goes away (`outbox-sim presets | head -0`) ends the command quietly, as other
/// command-line tools do, instead of a panic in `println!`. The pipe is closed before the child
/// has started, so its first write meets a closed pipe (if the write ever came first, the test
/// would pass without proving anything; it cannot fail spuriously).
#[test]
#[cfg(unix)]
fn a_closed_stdout_is_not_a_panic() {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_outbox-sim"))
        .arg("presets")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("it ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
