//! Poll vs stream, in **simulated** time: per preset, the end-to-end latency (publish − commit on
//! the virtual clock) under steady load and under a burst. Each iteration is one delivered event;
//! `iter_custom` returns the simulated latencies of the events it covers, so criterion's "time"
//! here is simulated delivery latency, not CPU time. DB queries/min per preset are printed.

use std::rc::Rc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use outbox_sim::check::delivery_latencies_us;
use outbox_sim::relay::PRESETS;
use outbox_sim::scenario::workload::Burst;
use outbox_sim::scenario::{Faults, Scenario, run_world};
use outbox_sim::seed::Seed;

fn scenario(burst: bool) -> Scenario {
    let mut s = Scenario::default_scenario();
    s.name = if burst {
        "burst".into()
    } else {
        "steady".into()
    };
    s.duration_s = 300.0;
    s.drain_s = 120.0;
    s.faults = Faults::default();
    s.workload.bursts = if burst {
        vec![Burst {
            at_s: 100.0,
            duration_s: 30.0,
            orders_per_s: 400.0,
        }]
    } else {
        Vec::new()
    };
    s
}

fn bench(c: &mut Criterion) {
    for burst in [false, true] {
        let sc = scenario(burst);
        let mut group = c.benchmark_group(format!("simulated_latency_{}", sc.name));
        group
            .sample_size(20)
            .warm_up_time(Duration::from_millis(100))
            .measurement_time(Duration::from_millis(500));
        for p in PRESETS {
            let relay = p.relay(sc.visibility_bound(), sc.cdc_ttl());
            let (report, sim) = run_world(&sc, Rc::new(relay), Seed(1)).expect("the scenario runs");
            let latencies = delivery_latencies_us(&sim.history().ops());
            println!(
                "{} {p}: p50 {:.0} ms, p99 {:.0} ms (simulated), {:.0} queries/min, {:.0} rows scanned/min",
                sc.name,
                report.latency_ms.p50,
                report.latency_ms.p99,
                report.queries_per_min,
                report.rows_scanned_per_min
            );
            let mut i = 0usize;
            group.bench_function(p.name(), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += Duration::from_micros(latencies[i % latencies.len()]);
                        i += 1;
                    }
                    total
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
