//! Wall-clock throughput of the simulated pipeline — writer → CDC log → relay → broker →
//! checker — in events/s, and the checker's cost per event.

use std::rc::Rc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use outbox_sim::check::analyze;
use outbox_sim::relay::Preset;
use outbox_sim::scenario::{Scenario, run, run_world};
use outbox_sim::seed::Seed;

/// The same allocator as the `outbox-sim` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `fixtures/scenarios/throughput.toml`: 500 orders/s for a simulated minute, a minute of drain,
/// no faults.
fn scenario() -> Scenario {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/scenarios/throughput.toml"
    );
    Scenario::load(std::path::Path::new(path)).expect("the throughput scenario loads")
}

/// The writer alone (no relay): orders → batches → cluster (tables + CDC log) → history.
fn writer_only(orders_per_s: f64) -> u64 {
    use outbox_sim::scenario::workload::{WorkloadConfig, drive};
    use outbox_sim::sim::SimBuilder;
    use outbox_sim::sim::scylla::Client;
    use outbox_sim::writer::{OrderWriter, WriterConfig};
    let mut sim = SimBuilder::new().build(Seed(1)).expect("default world");
    let writer = Rc::new(OrderWriter::new(
        Rc::new(sim.store(Client::Writer)),
        sim.clock_port(),
        sim.history(),
        sim.rng("writer"),
        WriterConfig::default(),
    ));
    let start = sim.now();
    let cfg = WorkloadConfig {
        orders_per_s,
        ..WorkloadConfig::default()
    };
    let t = sim.spawn(
        "w",
        drive(
            writer,
            sim.clock_port(),
            sim.rng("workload"),
            cfg,
            start,
            start + Duration::from_secs(60),
        ),
    );
    sim.block_on(t).expect("runs").committed
}

fn bench(c: &mut Criterion) {
    {
        let events = writer_only(500.0);
        let mut group = c.benchmark_group("sim");
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(5));
        group.throughput(Throughput::Elements(events));
        group.bench_function("writer_events", |b| b.iter(|| writer_only(500.0)));
        group.finish();
    }
    let sc = scenario();
    let relay = Rc::new(Preset::PollSafe.relay(sc.visibility_bound(), sc.cdc_ttl()));
    let (report, sim) = run_world(&sc, relay.clone(), Seed(1)).expect("runs");
    let mut group = c.benchmark_group("sim");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(report.committed));
    group.bench_function("pipeline_poll_safe_events", |b| {
        b.iter(|| run(&sc, relay.clone(), Seed(1)).expect("runs"))
    });
    let ops = sim.history().ops().clone();
    group.throughput(Throughput::Elements(report.committed));
    group.bench_function("checker_per_event", |b| b.iter(|| analyze(&ops)));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
