//! The simulated world (issue A): the cluster's CDC model, the broker, determinism and
//! configuration errors, checked through the public API.

use std::rc::Rc;
use std::time::Duration;

use outbox_sim::cdc::StreamId;
use outbox_sim::history::OpKind;
use outbox_sim::model::{EventType, Timestamp};
use outbox_sim::ports::{OutboxStore, Publisher};
use outbox_sim::scenario::workload::{WorkloadConfig, drive};
use outbox_sim::seed::Seed;
use outbox_sim::sim::broker::BrokerFaults;
use outbox_sim::sim::scylla::Client;
use outbox_sim::sim::{Sim, SimBuilder};
use outbox_sim::writer::{OrderWriter, WriterConfig};

fn writer(sim: &Sim) -> Rc<OrderWriter> {
    Rc::new(OrderWriter::new(
        Rc::new(sim.store(Client::Writer)),
        sim.clock_port(),
        sim.history(),
        sim.rng("writer"),
        WriterConfig::default(),
    ))
}

fn small() -> SimBuilder {
    SimBuilder::new()
        .nodes(2)
        .vnodes_per_node(16)
        .shards_per_node(2)
}

#[test]
fn writes_at_or_after_a_new_generation_land_in_its_streams() {
    let mut sim = small().clock_skew_ms(0).build(Seed(11)).unwrap();
    let cluster = sim.cluster();
    let start = cluster.join_node(sim.now());
    assert_eq!(
        start.saturating_since(sim.now()),
        Duration::from_secs(65),
        "default generation delay"
    );
    let (old, new): (Vec<StreamId>, Vec<StreamId>) = {
        let s = cluster.state();
        let g = &s.topology.generations;
        (
            g[g.len() - 2].streams().collect(),
            g[g.len() - 1].streams().collect(),
        )
    };
    let w = writer(&sim);
    let clock = sim.clock_port();
    let t = sim.spawn("w", async move {
        clock
            .sleep(start.saturating_since(clock.now()) - Duration::from_secs(1))
            .await;
        let mut out = Vec::new();
        for (i, ts) in [start.offset_micros(-1), start, start.offset_micros(1_000)]
            .into_iter()
            .enumerate()
        {
            for _ in 0..20 {
                let o = w.new_order();
                let e = w
                    .write_at(o, EventType::OrderCreated, Some(ts))
                    .await
                    .unwrap();
                out.push((i, e.aggregate_id));
            }
        }
        out
    });
    let written = sim.block_on(t).unwrap();
    let s = cluster.state();
    let store = sim.store(Client::Relay);
    drop(s);
    let clock = sim.clock_port();
    let all: Vec<StreamId> = old.iter().chain(new.iter()).copied().collect();
    let t = sim.spawn("r", async move {
        clock.sleep(Duration::from_secs(5)).await;
        store
            .read_log(
                &all,
                Timestamp::MIN.offset_micros(1),
                Timestamp::MAX,
                None,
                10_000,
            )
            .await
            .unwrap()
    });
    let page = sim.block_on(t).unwrap();
    assert_eq!(page.rows.len(), 60);
    for (i, agg) in written {
        let rows: Vec<_> = page
            .rows
            .iter()
            .filter(|r| r.event.aggregate_id == agg)
            .collect();
        assert_eq!(rows.len(), 1, "one log row per write");
        let in_new = new.contains(&rows[0].stream_id);
        let in_old = old.contains(&rows[0].stream_id);
        assert!(in_new != in_old, "exactly one generation");
        assert_eq!(
            in_new,
            i > 0,
            "ts < start → old generation, ts ≥ start → new"
        );
    }
}

#[test]
fn rows_are_invisible_before_their_visibility_time_and_windows_are_exact() {
    let mut sim = small()
        .replication_delay_ms(100, 100)
        .stalls(0.0, 0)
        .clock_skew_ms(0)
        .build(Seed(12))
        .unwrap();
    let w = writer(&sim);
    let store = sim.store(Client::Relay);
    let streams: Vec<StreamId> = sim.cluster().state().topology.generations[0]
        .streams()
        .collect();
    let clock = sim.clock_port();
    let t = sim.spawn("t", async move {
        let base = clock.now().floor_ms();
        // Client timestamps at exact microseconds, written out of order.
        let offsets_us = [5_000i64, 1_000, 3_000, 2_999, 4_000, 1_000];
        for off in offsets_us {
            let o = w.new_order();
            w.write_at(o, EventType::OrderCreated, Some(base.offset_micros(off)))
                .await
                .unwrap();
        }
        let read = |from: i64, to: i64| {
            let store = &store;
            let streams = &streams;
            async move {
                let p = store
                    .read_log(
                        streams,
                        base.offset_micros(from),
                        base.offset_micros(to),
                        None,
                        100,
                    )
                    .await
                    .unwrap();
                p.rows
                    .iter()
                    .map(|r| (r.stream_id, r.time.micros - base.0))
                    .collect::<Vec<_>>()
            }
        };
        let early = read(0, 10_000).await; // ~1 ms after the last write: nothing visible yet
        clock.sleep(Duration::from_millis(200)).await;
        let window = read(1_000, 4_000).await;
        let all = read(0, 10_000).await;
        (early, window, all)
    });
    let (early, window, all) = sim.block_on(t).unwrap();
    assert!(
        early.is_empty(),
        "rows visible before their replication delay: {early:?}"
    );
    let mut in_window: Vec<i64> = window.iter().map(|(_, us)| *us).collect();
    in_window.sort();
    assert_eq!(
        in_window,
        vec![1_000, 1_000, 2_999, 3_000],
        "[from, to) is half-open"
    );
    assert_eq!(all.len(), 6);
    // Log order: stream by stream (each stream's rows contiguous), by time within a stream.
    let mut seen = Vec::new();
    for pair in all.windows(2) {
        if pair[0].0 == pair[1].0 {
            assert!(
                pair[0].1 <= pair[1].1,
                "rows of one stream in time order: {all:?}"
            );
        } else {
            seen.push(pair[0].0);
            assert!(
                !seen.contains(&pair[1].0),
                "a stream's rows are contiguous: {all:?}"
            );
        }
    }
}

#[test]
fn rows_past_the_cdc_ttl_are_gone() {
    let mut sim = small()
        .cdc_ttl_s(60)
        .replication_delay_ms(0, 0)
        .stalls(0.0, 0)
        .build(Seed(13))
        .unwrap();
    let w = writer(&sim);
    let store = sim.store(Client::Relay);
    let streams: Vec<StreamId> = sim.cluster().state().topology.generations[0]
        .streams()
        .collect();
    let clock = sim.clock_port();
    let t = sim.spawn("t", async move {
        let o = w.new_order();
        w.write(o, EventType::OrderCreated).await.unwrap();
        let n = |store: &outbox_sim::sim::scylla::SimStore| {
            let streams = streams.clone();
            let store = store.clone();
            async move {
                store
                    .read_log(&streams, Timestamp(0), Timestamp::MAX, None, 10)
                    .await
                    .unwrap()
                    .rows
                    .len()
            }
        };
        clock.sleep(Duration::from_secs(59)).await;
        let before = n(&store).await;
        clock.sleep(Duration::from_secs(2)).await;
        let after = n(&store).await;
        (before, after)
    });
    assert_eq!(sim.block_on(t).unwrap(), (1, 0));
}

fn publish_n(sim: &mut Sim, n: usize, sessions: u32) -> usize {
    let w = writer(sim);
    let producers: Vec<_> = (1..=sessions).map(|i| sim.producer(i)).collect();
    let t = sim.spawn("p", async move {
        let mut events = Vec::new();
        for _ in 0..n {
            let o = w.new_order();
            events.push(w.write(o, EventType::OrderCreated).await.unwrap());
        }
        for p in &producers {
            for e in &events {
                p.publish(e).await.unwrap();
            }
        }
    });
    sim.block_on(t).unwrap();
    sim.broker().len()
}

#[test]
fn idempotent_retries_never_duplicate_but_a_new_session_does() {
    let mut sim = small().build(Seed(14)).unwrap();
    sim.broker().set_faults(BrokerFaults {
        lost_ack_probability: 0.5,
        retriable_error_probability: 0.2,
        ..Default::default()
    });
    assert_eq!(
        publish_n(&mut sim, 200, 1),
        200,
        "lost acks retried within one session: no duplicate"
    );

    let mut sim = small().build(Seed(14)).unwrap();
    sim.broker().set_faults(BrokerFaults {
        lost_ack_probability: 0.5,
        ..Default::default()
    });
    assert_eq!(
        publish_n(&mut sim, 50, 2),
        100,
        "a second session re-publishing appends again"
    );

    let mut b = small();
    b.config_mut().broker.idempotent = false;
    let mut sim = b.build(Seed(14)).unwrap();
    sim.broker().set_faults(BrokerFaults {
        lost_ack_probability: 0.5,
        ..Default::default()
    });
    assert!(
        publish_n(&mut sim, 200, 1) > 200,
        "without idempotence, lost acks duplicate"
    );
}

#[test]
fn records_are_keyed_by_aggregate_with_the_event_id_header() {
    let mut sim = small().partitions(6).build(Seed(15)).unwrap();
    publish_n(&mut sim, 60, 1);
    let broker = sim.broker();
    let mut total = 0;
    for p in 0..6 {
        for r in broker.partition(p) {
            total += 1;
            assert_eq!(r.key(), r.value.aggregate_id.0.to_string());
            assert_eq!(
                outbox_sim::sim::broker::partition_for(r.key().as_bytes(), 6),
                p
            );
            assert_eq!(
                r.headers()[0],
                ("id".to_string(), r.value.id.0.to_string().into_bytes())
            );
        }
    }
    assert_eq!(total, 60);
}

fn workload_digest(seed: u64) -> (u64, usize) {
    let mut sim = SimBuilder::new().build(Seed(seed)).unwrap();
    let w = writer(&sim);
    let start = sim.now();
    let cfg = WorkloadConfig {
        orders_per_s: 50.0,
        ..WorkloadConfig::default()
    };
    let t = sim.spawn(
        "workload",
        drive(
            w,
            sim.clock_port(),
            sim.rng("workload"),
            cfg,
            start,
            start + Duration::from_secs(60),
        ),
    );
    sim.block_on(t).unwrap();
    let h = sim.history();
    let commits = h
        .ops()
        .iter()
        .filter(|o| matches!(o.kind, OpKind::Committed { .. }))
        .count();
    (h.digest(), commits)
}

#[test]
fn same_seed_same_history_different_seed_different_history() {
    let (a, n) = workload_digest(7);
    let (b, _) = workload_digest(7);
    let (c, _) = workload_digest(8);
    assert!(n > 2_000, "a real workload ran ({n} commits)");
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn bad_configuration_names_the_field() {
    let cases: Vec<(SimBuilder, &str)> = vec![
        (SimBuilder::new().nodes(0), "cluster.nodes"),
        (SimBuilder::new().partitions(0), "broker.partitions"),
        (
            SimBuilder::new().replication_delay_ms(-1, 5),
            "cluster.replication_delay_min_ms",
        ),
        (
            SimBuilder::new().replication_delay_ms(50, 5),
            "cluster.replication_delay_min_ms",
        ),
        (
            SimBuilder::new().generation_delay_ms(-65_000),
            "cluster.generation_delay_ms",
        ),
        (
            SimBuilder::new().clock_skew_ms(6_000),
            "cluster.clock_skew_ms",
        ),
        (
            SimBuilder::new().stalls(1.5, 10),
            "cluster.stall_probability",
        ),
        (SimBuilder::new().cdc_ttl_s(0), "cluster.cdc_ttl_s"),
        (
            SimBuilder::new().shards_per_node(0),
            "cluster.shards_per_node",
        ),
    ];
    for (builder, field) in cases {
        let err = builder.build(Seed(1)).expect_err(field);
        assert_eq!(err.field, field, "{err}");
        assert!(err.to_string().starts_with(field));
    }
}

/// A long run holds only what its TTLs keep: the cluster purges expired `orders`, outbox and
/// log rows, the broker deletes records past `retention.ms`, the writer forgets finished orders
/// whose row expired, and the streaming checker forgets settled events. Without each of these
/// the corresponding count would be the run's total.
#[test]
fn a_long_run_holds_only_what_its_ttls_keep() {
    use outbox_sim::relay::Preset;
    use outbox_sim::scenario::{Faults, Scenario, run_world};
    let mut sc = Scenario::default_scenario();
    sc.name = "bounded".into();
    sc.duration_s = 1_500.0;
    sc.drain_s = 30.0;
    sc.faults = Faults::default();
    sc.workload.bursts.clear();
    sc.workload.orders_per_s = 40.0;
    sc.cluster.cdc_ttl_s = 30;
    sc.cluster.outbox_ttl_s = 30;
    sc.cluster.orders_ttl_s = 30;
    sc.broker.retention_ms = 30_000;
    let relay = Rc::new(Preset::PollSafe.relay(sc.visibility_bound(), sc.cdc_ttl()));
    let (report, sim) = run_world(&sc, relay, Seed(3)).unwrap();
    assert!(!report.failed(), "{:?}", report.first_failure());
    let committed = report.committed as usize;
    assert!(committed > 100_000, "{committed}");
    let cluster = sim.cluster();
    let (orders, log_rows) = {
        let s = cluster.state();
        (s.tables.order_rows(), s.log.len())
    };
    // 30 s of a ~1,500 s run, plus purge lag (every 4,096 writes) and orders mid-lifecycle.
    assert!(
        orders < committed / 20,
        "orders rows {orders} of {committed}"
    );
    assert!(
        log_rows < committed / 20,
        "log rows {log_rows} of {committed}"
    );
    let records = sim.broker().len();
    assert!(
        records < committed / 20,
        "topic records {records} of {committed}"
    );
    // The checker holds events until 5 minutes past their rows' expiry.
    let tracked = sim.history().tracked_events();
    assert!(
        tracked < committed / 3,
        "checker tracks {tracked} of {committed}"
    );
    assert!(
        tracked > 0,
        "the last events are still within their settling time"
    );
}

/// The bench's throughput scenario file is the default scenario at 500 orders/s for a minute
/// plus a minute of drain, with no faults and no burst, and it yields the 72,700 events the
/// README's instruction counts are for.
#[test]
fn the_throughput_fixture_is_the_default_scenario_at_500_orders_without_faults() {
    use outbox_sim::relay::Preset;
    use outbox_sim::scenario::{Faults, Scenario, run};
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/scenarios/throughput.toml"
    );
    let fixture = Scenario::load(std::path::Path::new(path)).unwrap();
    let mut expected = Scenario::default_scenario();
    expected.name = "throughput".into();
    expected.duration_s = 60.0;
    expected.drain_s = 60.0;
    expected.faults = Faults::default();
    expected.workload.bursts.clear();
    expected.workload.orders_per_s = 500.0;
    assert_eq!(fixture, expected);
    let relay = Rc::new(Preset::PollSafe.relay(fixture.visibility_bound(), fixture.cdc_ttl()));
    let report = run(&fixture, relay, Seed(1)).unwrap();
    assert_eq!(report.committed, 72_700);
}
