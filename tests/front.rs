//! The CQL front with the real `scylla` driver and the real scylla-cdc reader: the whole live
//! pipeline (live::scylla writer → front → scylla-cdc `CDCLogReader` → rdkafka → MockCluster),
//! checked by the same checker as the simulated runs. No Docker needed. Intervals are scaled
//! down (window 1 s, safety 0.5 s, sleep 0.2 s, generation announce delay 1.5 s) so each test
//! takes seconds.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use outbox_sim::front::{self, FrontConfig, FrontHandle};
use outbox_sim::history::History;
use outbox_sim::live::WallClock;
use outbox_sim::live::kafka::{KafkaConfig, KafkaPublisher, read_topic};
use outbox_sim::live::pipeline::{IncarnationPorts, LiveOptions, run_pipeline};
use outbox_sim::live::scylla::{ScyllaCheckpoints, ScyllaStore, connect, create_schema};
use outbox_sim::live::scylla_cdc::LibraryRelay;
use outbox_sim::model::{AggregateId, EventId, EventType, OrderStatus, OutboxEvent, Timestamp};
use outbox_sim::ports::{CheckpointStore, Clock, OrderBatch, OutboxStore, Publisher, ScanFrom, WriteTimestamp};
use outbox_sim::relay::{Relay, StartTimestamp, StreamConfig};
use outbox_sim::seed::Seed;
use outbox_sim::sim::scylla::{Client, ClusterConfig, QueryStats};
use rdkafka::mocking::MockCluster;

const TIMEOUT: Duration = Duration::from_secs(10);

fn front(nodes: u32, max_page_rows: Option<usize>) -> FrontHandle {
    front::start(FrontConfig {
        nodes,
        port: 0,
        max_page_rows,
        cluster: ClusterConfig {
            nodes,
            vnodes_per_node: 4,
            shards_per_node: 2,
            clock_skew_ms: 0,
            stall_probability: 0.0,
            generation_delay_ms: 1_500,
            ..ClusterConfig::default()
        },
        seed: Seed(7),
    })
    .expect("the front starts")
}

async fn store(contact: &str, full_metadata: bool) -> ScyllaStore {
    let session = connect(contact, TIMEOUT, full_metadata)
        .await
        .expect("the driver connects to the front");
    create_schema(&session, 1, TIMEOUT).await.expect("schema");
    ScyllaStore::new(
        session,
        Client::Writer,
        TIMEOUT,
        Rc::new(RefCell::new(QueryStats::default())),
    )
    .await
    .expect("statements prepare")
}

fn event(n: u128, seq: u64) -> OutboxEvent {
    OutboxEvent {
        id: EventId(uuid::Uuid::from_u128(0xe000 + n * 16 + u128::from(seq))),
        aggregate_type: "Order".into(),
        aggregate_id: AggregateId(uuid::Uuid::from_u128(0xa000 + n)),
        seq,
        event_type: if seq == 1 {
            EventType::OrderCreated
        } else {
            EventType::OrderPaid
        },
        payload: "{}".into(),
        created_at: Timestamp(0),
    }
}

#[test]
fn the_driver_connects_and_the_live_store_round_trips_through_the_front() {
    let f = front(1, None);
    smol::block_on(async {
        let s = store(&f.contact(), true).await;
        let now = WallClock.now();
        let committed = s
            .write(OrderBatch {
                status: OrderStatus::Created,
                event: event(1, 1),
                timestamp: WriteTimestamp::Client(now),
            })
            .await
            .expect("the logged batch applies");
        assert_eq!(committed.event.created_at, now.floor_ms());
        WallClock.sleep(Duration::from_millis(50)).await;
        let later = WallClock.now() + Duration::from_secs(1);
        let rows = s
            .scan_outbox(ScanFrom::Beginning, later, 100)
            .await
            .expect("scan");
        assert_eq!(rows, vec![committed.event.clone()]);
        let g = s.generation_at(now).await.unwrap().expect("a generation");
        let groups = s.stream_groups(g).await.unwrap();
        assert_eq!(groups.len(), 4, "one group per vnode");
        let streams: Vec<_> = groups.iter().flat_map(|g| g.streams.clone()).collect();
        assert_eq!(streams.len(), 8, "one stream per shard of each vnode");
        let page = s
            .read_log(&streams, now - Duration::from_secs(1), later, None, 100)
            .await
            .unwrap();
        assert_eq!(page.rows.len(), 1);
        assert_eq!(page.rows[0].event, committed.event);
        assert_eq!(page.rows[0].time.timestamp(), now.floor_ms());
        assert_eq!(s.peer_count().await.unwrap(), 0);
        assert!(s.dead_letters().is_empty());

        // The checkpoint table, as scylla-cdc's saver lays it out.
        let history = History::new();
        let cp = ScyllaCheckpoints::new(s.clone(), history, 1, "outbox");
        assert_eq!(cp.load_generation().await.unwrap(), None);
        cp.save_generation(g).await.unwrap();
        assert_eq!(cp.load_generation().await.unwrap(), Some(g.floor_ms()));
        cp.save_stream(streams[0], now).await.unwrap();
        assert_eq!(cp.load_stream(streams[0]).await.unwrap(), Some(now.floor_ms()));
        assert_eq!(cp.load_stream(streams[1]).await.unwrap(), None);
    });
    assert_eq!(
        front::describe(&f.stats)["errors"],
        0,
        "no request was refused"
    );
}
