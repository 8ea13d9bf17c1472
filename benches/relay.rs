//! CPU cost per delivered event of each preset's relay, as wall time of a fault-free run divided
//! by its events (the writer, cluster and broker models are the same for every preset, so the
//! differences are the relays' own).

use std::rc::Rc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use outbox_sim::relay::PRESETS;
use outbox_sim::scenario::{Faults, Scenario, run};
use outbox_sim::seed::Seed;

/// The same allocator as the `outbox-sim` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench(c: &mut Criterion) {
    let mut sc = Scenario::default_scenario();
    sc.duration_s = 60.0;
    sc.drain_s = 60.0;
    sc.faults = Faults::default();
    sc.workload.bursts.clear();
    sc.workload.orders_per_s = 100.0;
    let mut group = c.benchmark_group("relay");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for p in PRESETS {
        let relay = Rc::new(p.relay(sc.visibility_bound(), sc.cdc_ttl()));
        let events = run(&sc, relay.clone(), Seed(1)).expect("runs").committed;
        group.throughput(Throughput::Elements(events));
        group.bench_function(p.name(), |b| {
            b.iter(|| run(&sc, relay.clone(), Seed(1)).expect("runs"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
