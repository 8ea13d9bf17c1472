//! The real-time loop of `outbox-sim serve`: applies a scenario's topology changes to a running
//! [`front`](crate::front) at their times and reports its counters every 10 s.

use std::time::{Duration, Instant};

use crate::front::{FrontHandle, describe};
use crate::scenario::TopologyKind;

/// Runs until `for_` passed (or forever), calling `out` with each line to print.
pub fn run(
    front: &FrontHandle,
    mut changes: Vec<(f64, TopologyKind)>,
    for_: Option<Duration>,
    mut out: impl FnMut(String),
) {
    changes.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut changes = changes.into_iter().peekable();
    let started = Instant::now();
    let mut last_report: Option<f64> = None;
    loop {
        let t = started.elapsed().as_secs_f64();
        if for_.is_some_and(|f| started.elapsed() >= f) {
            break;
        }
        while changes.peek().is_some_and(|(at, _)| *at <= t) {
            let (at, kind) = changes.next().expect("peeked");
            let start = match kind {
                TopologyKind::Join => front.join_node(),
                TopologyKind::Leave => front.leave_node(),
            };
            out(match start {
                Some(ms) => {
                    format!("{at:>7.1}s  node {kind:?}: a new generation starts at {ms} ms")
                }
                None => format!("{at:>7.1}s  node {kind:?}: refused (the last node cannot leave)"),
            });
        }
        if last_report.is_none_or(|l| t - l >= 10.0) {
            last_report = Some(t);
            let s = describe(&front.stats);
            out(format!(
                "{t:>7.1}s  connections {} frames {} errors {} log rows served {}",
                s["connections"], s["frames"], s["errors"], s["log_rows"]
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
