//! Wall-clock throughput of the live edges, no Docker needed:
//! - `live/kafka_publish`: the rdkafka publisher (idempotent, acks=all) into librdkafka's
//!   in-process mock cluster, records/s;
//! - `live/front_cdc_rows`: CDC log rows/s the CQL front serves to the real scylla-cdc
//!   `CDCLogReader` (one window over pre-written rows, 5,000-row pages, a collecting consumer).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use outbox_sim::front::{self, FrontConfig};
use outbox_sim::history::History;
use outbox_sim::live::WallClock;
use outbox_sim::live::kafka::{KafkaConfig, KafkaPublisher};
use outbox_sim::live::pipeline::collect;
use outbox_sim::live::scylla::{ScyllaCheckpoints, ScyllaStore, connect, create_schema};
use outbox_sim::live::scylla_cdc::LibraryRelay;
use outbox_sim::model::{AggregateId, EventId, EventType, OrderStatus, OutboxEvent, Timestamp};
use outbox_sim::ports::{Clock, OrderBatch, OutboxStore, Publisher, WriteTimestamp};
use outbox_sim::relay::{StartTimestamp, StreamConfig};
use outbox_sim::seed::Seed;
use outbox_sim::sim::scylla::{Client, ClusterConfig, QueryStats};
use rdkafka::mocking::MockCluster;

fn event(n: u128) -> OutboxEvent {
    OutboxEvent {
        id: EventId(uuid::Uuid::from_u128(0xe000_0000 + n)),
        aggregate_type: "Order".into(),
        aggregate_id: AggregateId(uuid::Uuid::from_u128(0xa000_0000 + n)),
        seq: 1,
        event_type: EventType::OrderCreated,
        payload: "{\"items\":3,\"total\":\"42.00\"}".into(),
        created_at: Timestamp(0),
    }
}

fn kafka_publish(c: &mut Criterion) {
    const N: usize = 10_000;
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("outbox", 6, 3).unwrap();
    let publisher =
        KafkaPublisher::new(&KafkaConfig::new(&mock.bootstrap_servers(), "outbox")).unwrap();
    let events: Vec<OutboxEvent> = (0..N as u128).map(event).collect();
    let mut g = c.benchmark_group("live");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("kafka_publish", |b| {
        b.iter(|| {
            let r = smol::block_on(publisher.publish_all(&events));
            assert!(r.iter().all(Result::is_ok));
        })
    });
    g.finish();
}

fn front_cdc_rows(c: &mut Criterion) {
    const N: usize = 20_000;
    let f = front::start(FrontConfig {
        cluster: ClusterConfig {
            nodes: 1,
            vnodes_per_node: 8,
            shards_per_node: 2,
            clock_skew_ms: 0,
            stall_probability: 0.0,
            ..ClusterConfig::default()
        },
        seed: Seed(1),
        ..FrontConfig::default()
    })
    .unwrap();
    let store = smol::block_on(async {
        let session = connect(&f.contact(), Duration::from_secs(10), false)
            .await
            .unwrap();
        create_schema(&session, 1, Duration::from_secs(10))
            .await
            .unwrap();
        let s = ScyllaStore::new(
            session,
            Client::Writer,
            Duration::from_secs(10),
            Rc::new(RefCell::new(QueryStats::default())),
        )
        .await
        .unwrap();
        for chunk in (0..N as u128).collect::<Vec<_>>().chunks(500) {
            let writes = chunk.iter().map(|n| {
                s.write(OrderBatch {
                    status: OrderStatus::Created,
                    event: event(*n),
                    timestamp: WriteTimestamp::Client(WallClock.now()),
                })
            });
            for r in futures::future::join_all(writes).await {
                r.unwrap();
            }
        }
        // Older than the safety interval before the reader starts.
        WallClock.sleep(Duration::from_millis(600)).await;
        s
    });
    let config = StreamConfig {
        window_size: Duration::from_secs(600),
        safety_interval: Duration::from_millis(500),
        sleep_interval: Duration::from_secs(5),
        start: StartTimestamp::Ago(Duration::from_secs(300)),
        ..StreamConfig::default()
    };
    let relay = LibraryRelay::new("bench", store.session(), config).unwrap();
    let mut g = c.benchmark_group("live");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("front_cdc_rows", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let got = smol::block_on(collect(
                    &relay,
                    Rc::new(store.for_client(Client::Relay)),
                    Rc::new(ScyllaCheckpoints::new(
                        store.clone(),
                        History::new(),
                        1,
                        "bench",
                    )),
                    N,
                    Duration::from_secs(120),
                    Duration::ZERO,
                ));
                total += started.elapsed();
                assert_eq!(got.len(), N, "every row delivered once");
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, kafka_publish, front_cdc_rows);
criterion_main!(benches);
