//! Wall-clock throughput of the simulated pipeline — writer → CDC log → relay → broker →
//! checker — in events/s, and the checker's cost per event.

use std::rc::Rc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use outbox_sim::check::analyze;
use outbox_sim::relay::Preset;
use outbox_sim::scenario::{Faults, Scenario, run, run_world};
use outbox_sim::seed::Seed;

fn scenario() -> Scenario {
    let mut s = Scenario::default_scenario();
    s.name = "throughput".into();
    s.duration_s = 60.0;
    s.drain_s = 60.0;
    s.faults = Faults::default();
    s.workload.bursts.clear();
    s.workload.orders_per_s = 500.0;
    s
}

fn bench(c: &mut Criterion) {
    let sc = scenario();
    let relay = Rc::new(Preset::PollSafe.relay(sc.visibility_bound(), sc.cdc_ttl()));
    let (report, sim) = run_world(&sc, relay.clone(), Seed(1)).expect("runs");
    let mut group = c.benchmark_group("sim");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(report.committed));
    group.bench_function("pipeline_poll_safe_events", |b| b.iter(|| run(&sc, relay.clone(), Seed(1)).expect("runs")));
    let ops = sim.history().ops().clone();
    group.throughput(Throughput::Elements(report.committed));
    group.bench_function("checker_per_event", |b| b.iter(|| analyze(&ops)));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
