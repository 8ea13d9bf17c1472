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

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// A log-scale axis mapping `[lo, hi]` onto `[a, b]` pixels.
fn log_scale(v: f64, lo: f64, hi: f64, a: f64, b: f64) -> f64 {
    let (v, lo, hi) = (v.max(lo).log10(), lo.log10(), hi.log10());
    a + (v - lo) / (hi - lo).max(1e-9) * (b - a)
}

fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut t = Vec::new();
    let mut v = 10f64.powf(lo.log10().floor());
    while v <= hi * 1.0001 {
        if v >= lo * 0.9999 {
            t.push(v);
        }
        v *= 10.0;
    }
    t
}

/// An inline SVG of the latency CDF of each report (x: simulated latency, log scale).
pub fn cdf_svg(reports: &[RunReport]) -> String {
    let (w, h, l, r, t, b) = (760.0, 380.0, 70.0, 190.0, 20.0, 50.0);
    let all: Vec<f64> = reports
        .iter()
        .flat_map(|x| x.latency_cdf.iter().map(|p| p.0))
        .filter(|v| *v > 0.0)
        .collect();
    let lo = all.iter().copied().fold(f64::MAX, f64::min).max(0.1);
    let hi = all.iter().copied().fold(1.0, f64::max);
    let mut out = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"##
    );
    let _ = write!(
        out,
        r##"<rect x="{l}" y="{t}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        w - l - r,
        h - t - b
    );
    for tv in ticks(lo, hi) {
        let x = log_scale(tv, lo, hi, l, w - r);
        let label = if tv >= 1000.0 {
            format!("{}s", tv / 1000.0)
        } else {
            format!("{tv}ms")
        };
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            t,
            h - b,
            h - b + 16.0
        );
    }
    for q in [0.0, 0.25, 0.5, 0.75, 0.99] {
        let y = h - b - q * (h - t - b);
        let _ = write!(
            out,
            r##"<line x1="{l}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{q}</text>"##,
            w - r,
            l - 6.0,
            y + 4.0
        );
    }
    let _ = write!(
        out,
        r##"<text x="{}" y="{}" text-anchor="middle">end-to-end latency, publish − commit (simulated time, log scale)</text>"##,
        (l + w - r) / 2.0,
        h - 8.0
    );
    let _ = write!(
        out,
        r##"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">fraction of events</text>"##,
        (t + h - b) / 2.0,
        (t + h - b) / 2.0
    );
    for (i, rep) in reports.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<String> = rep
            .latency_cdf
            .iter()
            .map(|(ms, q)| {
                format!(
                    "{:.1},{:.1}",
                    log_scale(*ms, lo, hi, l, w - r),
                    h - b - q * (h - t - b)
                )
            })
            .collect();
        let _ = write!(
            out,
            r##"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"##,
            pts.join(" ")
        );
        let y = t + 16.0 + i as f64 * 18.0;
        let _ = write!(
            out,
            r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="{c}" stroke-width="3"/><text x="{}" y="{}">{}</text>"##,
            w - r + 10.0,
            w - r + 30.0,
            w - r + 36.0,
            y + 4.0,
            esc(&rep.relay)
        );
    }
    out.push_str("</svg>");
    out
}

/// An inline SVG of sweep points: p99 latency against queries/min (both log scale); frontier
/// points filled, points with anomalies drawn as crosses.
pub fn frontier_svg(points: &[crate::sweep::SweepResult]) -> String {
    let (w, h, l, r, t, b) = (760.0, 420.0, 80.0, 200.0, 20.0, 50.0);
    let qs: Vec<f64> = points.iter().map(|p| p.queries_per_min.max(1.0)).collect();
    let ls: Vec<f64> = points.iter().map(|p| p.latency_p99_ms.max(1.0)).collect();
    let (qlo, qhi) = (
        qs.iter().copied().fold(f64::MAX, f64::min),
        qs.iter().copied().fold(1.0, f64::max),
    );
    let (llo, lhi) = (
        ls.iter().copied().fold(f64::MAX, f64::min),
        ls.iter().copied().fold(1.0, f64::max),
    );
    let mut out = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"##
    );
    let _ = write!(
        out,
        r##"<rect x="{l}" y="{t}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        w - l - r,
        h - t - b
    );
    for tv in ticks(qlo, qhi) {
        let x = log_scale(tv, qlo, qhi, l, w - r);
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{t}" x2="{x:.1}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{tv}</text>"##,
            h - b,
            h - b + 16.0
        );
    }
    for tv in ticks(llo, lhi) {
        let y = log_scale(tv, llo, lhi, h - b, t);
        let label = if tv >= 1000.0 {
            format!("{}s", tv / 1000.0)
        } else {
            format!("{tv}ms")
        };
        let _ = write!(
            out,
            r##"<line x1="{l}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            w - r,
            l - 6.0,
            y + 4.0
        );
    }
    let _ = write!(
        out,
        r##"<text x="{}" y="{}" text-anchor="middle">relay DB queries per minute (log scale)</text>"##,
        (l + w - r) / 2.0,
        h - 8.0
    );
    let _ = write!(
        out,
        r##"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">p99 latency, simulated (log scale)</text>"##,
        (t + h - b) / 2.0,
        (t + h - b) / 2.0
    );
    for p in points {
        let x = log_scale(p.queries_per_min.max(1.0), qlo, qhi, l, w - r);
        let y = log_scale(p.latency_p99_ms.max(1.0), llo, lhi, h - b, t);
        let c = if p.label.starts_with("poll") {
            COLORS[1]
        } else {
            COLORS[0]
        };
        if !p.clean {
            let _ = write!(
                out,
                r##"<path d="M{} {} L{} {} M{} {} L{} {}" stroke="{c}"/>"##,
                x - 4.0,
                y - 4.0,
                x + 4.0,
                y + 4.0,
                x - 4.0,
                y + 4.0,
                x + 4.0,
                y - 4.0
            );
        } else {
            let fill = if p.frontier { c } else { "none" };
            let _ = write!(
                out,
                r##"<circle cx="{x:.1}" cy="{y:.1}" r="5" stroke="{c}" fill="{fill}"><title>{}</title></circle>"##,
                esc(&p.label)
            );
        }
    }
    let legend = [
        ("stream (scylla-cdc model)", COLORS[0]),
        ("polling", COLORS[1]),
    ];
    for (i, (name, c)) in legend.iter().enumerate() {
        let y = t + 16.0 + i as f64 * 18.0;
        let _ = write!(
            out,
            r##"<circle cx="{}" cy="{y}" r="5" fill="{c}"/><text x="{}" y="{}">{name}</text>"##,
            w - r + 16.0,
            w - r + 26.0,
            y + 4.0
        );
    }
    let y = t + 52.0;
    let _ = write!(
        out,
        r##"<text x="{}" y="{y}">filled: Pareto frontier</text><text x="{}" y="{}">hollow: dominated; ×: anomalies</text>"##,
        w - r + 10.0,
        w - r + 10.0,
        y + 16.0
    );
    out.push_str("</svg>");
    out
}

/// The self-contained HTML report: frontier (if a sweep ran), latency CDF per preset, the table.
pub fn html_report(
    scenario: &str,
    seed: u64,
    reports: &[RunReport],
    sweep: Option<&[crate::sweep::SweepResult]>,
) -> String {
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>outbox-sim report</title>",
    );
    out.push_str("<style>body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}</style></head><body>");
    let _ = write!(
        out,
        "<h1>outbox-sim: poll vs stream</h1><p>scenario <b>{}</b>, seed {seed}. All latencies are simulated time (publish − commit on the virtual clock).</p>",
        esc(scenario)
    );
    if let Some(points) = sweep {
        out.push_str("<h2>Latency vs DB queries (sweep)</h2>");
        out.push_str(&frontier_svg(points));
    }
    out.push_str("<h2>Latency CDF per preset</h2>");
    out.push_str(&cdf_svg(reports));
    out.push_str("<h2>Comparison</h2><table><tr>");
    for h in [
        "preset",
        "committed",
        "published",
        "lost",
        "dup",
        "reord",
        "p50 ms",
        "p99 ms",
        "max ms",
        "catch-up ms",
        "queries/min",
        "rows/min",
    ] {
        let _ = write!(out, "<th>{h}</th>");
    }
    out.push_str("</tr>");
    for r in reports {
        let catch = r
            .catch_up_ms
            .iter()
            .map(|c| format!("{c:.0}"))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{:.0}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td></tr>",
            esc(&r.relay),
            r.committed,
            r.published,
            r.lost,
            r.duplicated,
            r.reordered,
            r.latency_ms.p50,
            r.latency_ms.p99,
            r.latency_ms.max,
            catch,
            r.queries_per_min,
            r.rows_scanned_per_min
        );
    }
    out.push_str("</table></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::SweepResult;

    #[test]
    fn the_html_report_is_self_contained_and_labelled() {
        let point = |label: &str, p99: f64, q: f64, frontier: bool| SweepResult {
            label: label.into(),
            latency_p99_ms: p99,
            latency_p50_ms: p99 / 2.0,
            queries_per_min: q,
            rows_scanned_per_min: 0.0,
            catch_up_max_ms: 0.0,
            lost: 0,
            clean: true,
            frontier,
        };
        let sweep = vec![
            point("poll every=2s lag=5s", 7_000.0, 42.0, true),
            point("stream S=30s", 40_000.0, 4_000.0, false),
        ];
        let html = html_report("default", 1, &[], Some(&sweep));
        assert!(html.starts_with("<!doctype html>"));
        assert!(!html.contains("src=\"http"), "no external resources");
        for label in [
            "p99 latency, simulated",
            "queries per minute",
            "fraction of events",
            "Pareto frontier",
            "poll every=2s lag=5s",
        ] {
            assert!(html.contains(label), "missing {label}");
        }
        assert_eq!(html.matches("<svg").count(), 2);
    }
}
