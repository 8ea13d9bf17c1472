//! Rendering run reports: the `compare` table and its JSON form.
//!
//! Everything here is a pure function of [`RunReport`]s, so the same seed prints the same bytes.
//! Latencies are simulated time (publish − commit on the virtual clock), never wall time.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::scenario::RunReport;

/// The JSON object of one report, with the keys `compare --json` promises.
pub fn report_json(r: &RunReport) -> Value {
    json!({
        "preset": r.relay,
        "committed": r.committed,
        "published": r.published,
        "lost": r.lost,
        "duplicated": r.duplicated,
        "reordered": r.reordered,
        "phantom": r.phantom,
        "latency_ms": { "p50": r.latency_ms.p50, "p99": r.latency_ms.p99, "max": r.latency_ms.max },
        "catch_up_ms": r.catch_up_ms,
        "queries_per_min": round1(r.queries_per_min),
        "rows_scanned_per_min": round1(r.rows_scanned_per_min),
        "digest": r.digest,
    })
}

/// The JSON document of a comparison.
pub fn compare_json(scenario: &str, seed: u64, reports: &[RunReport]) -> Value {
    json!({
        "scenario": scenario,
        "seed": seed,
        "time": "simulated",
        "presets": reports.iter().map(report_json).collect::<Vec<_>>(),
    })
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn secs(ms: f64) -> String {
    if ms >= 10_000.0 {
        format!("{:.1}s", ms / 1_000.0)
    } else {
        format!("{ms:.0}ms")
    }
}

fn compact(v: f64) -> String {
    match v {
        v if v >= 10_000_000.0 => format!("{:.1}M", v / 1_000_000.0),
        v if v >= 10_000.0 => format!("{:.1}k", v / 1_000.0),
        v => format!("{v:.0}"),
    }
}

/// The comparison table (one row per report).
pub fn compare_table(scenario: &str, seed: u64, reports: &[RunReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scenario {scenario}, seed {seed} — latencies are simulated time (publish − commit)"
    );
    let header = [
        "preset",
        "committed",
        "published",
        "lost",
        "dup",
        "reord",
        "p50",
        "p99",
        "max",
        "catch-up per restart",
        "queries/min",
        "rows/min",
    ];
    let rows: Vec<[String; 12]> = reports
        .iter()
        .map(|r| {
            let catch_up = if r.catch_up_ms.is_empty() {
                "-".to_string()
            } else {
                r.catch_up_ms
                    .iter()
                    .map(|c| secs(*c))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            [
                r.relay.clone(),
                r.committed.to_string(),
                r.published.to_string(),
                r.lost.to_string(),
                r.duplicated.to_string(),
                r.reordered.to_string(),
                secs(r.latency_ms.p50),
                secs(r.latency_ms.p99),
                secs(r.latency_ms.max),
                catch_up,
                compact(r.queries_per_min),
                compact(r.rows_scanned_per_min),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == 0 {
                let _ = write!(s, "{cell:<w$}");
            } else {
                let _ = write!(s, "  {cell:>w$}");
            }
        }
        s.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
    out
}
