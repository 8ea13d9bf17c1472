//! `outbox-sim`: until the relays land, runs a short simulated writer workload and prints what the
//! cluster holds.

use std::rc::Rc;
use std::time::Duration;

use outbox_sim::scenario::workload::{WorkloadConfig, drive};
use outbox_sim::seed::Seed;
use outbox_sim::sim::SimBuilder;
use outbox_sim::sim::scylla::Client;
use outbox_sim::writer::{OrderWriter, WriterConfig};

fn main() {
    let seed = Seed(1);
    let mut sim = SimBuilder::new()
        .build(seed)
        .expect("default configuration is valid");
    let writer = Rc::new(OrderWriter::new(
        Rc::new(sim.store(Client::Writer)),
        sim.clock_port(),
        sim.history(),
        sim.rng("writer"),
        WriterConfig::default(),
    ));
    let start = sim.now();
    let end = start + Duration::from_secs(600);
    let task = sim.spawn(
        "workload",
        drive(
            writer,
            sim.clock_port(),
            sim.rng("workload"),
            WorkloadConfig::default(),
            start,
            end,
        ),
    );
    let summary = sim.block_on(task).expect("workload runs");
    let cluster = sim.cluster();
    let state = cluster.state();
    println!("SEED={seed}");
    println!(
        "orders {}  committed {}  failed {}",
        summary.orders, summary.committed, summary.failed
    );
    println!(
        "outbox rows {}  cdc log rows {}  generations {}",
        state.tables.outbox_len(),
        state.log.len(),
        state.topology.generations.len()
    );
    println!(
        "history ops {}  digest {:016x}",
        sim.history().len(),
        sim.history().digest()
    );
}
