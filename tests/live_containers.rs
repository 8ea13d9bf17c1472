//! Live-container tests (testcontainers): a real Kafka for the rdkafka publisher, a real
//! ScyllaDB for the outbox schema with CDC, and the whole live pipeline (writer, the polling
//! relay and the real scylla-cdc reader, each with a relay restart) on both. Without a Docker engine each test prints
//! `SKIPPED: <reason>` and passes; with `OUTBOX_SIM_REQUIRE_DOCKER=1` it fails instead.
//!
//! tokio (needed by testcontainers and the scylla driver) is entered through `async-compat` here
//! only; the crate's own code stays on smol.

use std::time::Duration;

use async_compat::Compat;
use outbox_sim::live::kafka::{KafkaConfig, KafkaPublisher};
use outbox_sim::live::require_docker;
use outbox_sim::model::{AggregateId, EventId, EventType, OutboxEvent, SIM_EPOCH};
use outbox_sim::ports::Publisher;
use testcontainers::runners::AsyncRunner;

#[test]
fn kafka_container_acknowledges_keyed_records() {
    if require_docker().is_err() {
        return;
    }
    smol::block_on(Compat::new(async {
        use testcontainers_modules::kafka::apache::{KAFKA_PORT, Kafka};
        let node = Kafka::default()
            .start()
            .await
            .expect("kafka container starts");
        let port = node
            .get_host_port_ipv4(KAFKA_PORT)
            .await
            .expect("mapped port");
        let publisher =
            KafkaPublisher::new(&KafkaConfig::new(&format!("127.0.0.1:{port}"), "outbox")).unwrap();
        let event = OutboxEvent {
            id: EventId(uuid::Uuid::from_u128(1)),
            aggregate_type: "Order".into(),
            aggregate_id: AggregateId(uuid::Uuid::from_u128(2)),
            seq: 1,
            event_type: EventType::OrderCreated,
            payload: "{}".into(),
            created_at: SIM_EPOCH,
        };
        let d = publisher.publish(&event).await.expect("acknowledged");
        assert_eq!(d.partition, 0, "auto-created topic has one partition");
        node.rm().await.expect("container removed");
    }));
}

#[test]
fn scylla_container_accepts_the_outbox_schema_and_logs_the_batch() {
    if require_docker().is_err() {
        return;
    }
    smol::block_on(Compat::new(async {
        use scylla::client::session_builder::SessionBuilder;
        use testcontainers_modules::scylladb::ScyllaDB;
        let node = ScyllaDB::default()
            .start()
            .await
            .expect("scylla container starts");
        let port = node.get_host_port_ipv4(9042).await.expect("mapped port");
        let session = SessionBuilder::new()
            .known_node(format!("127.0.0.1:{port}"))
            .connection_timeout(Duration::from_secs(30))
            .build()
            .await
            .expect("connects");
        for ddl in [
            "CREATE KEYSPACE IF NOT EXISTS orders_ks WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 1} AND tablets = {'enabled': false}",
            "CREATE TABLE IF NOT EXISTS orders_ks.orders (id uuid PRIMARY KEY, status text, last_seq bigint)",
            "CREATE TABLE IF NOT EXISTS orders_ks.outbox_messages (aggregate_id uuid, seq bigint, id uuid, aggregate_type text, event_type text, payload text, created_at timestamp, PRIMARY KEY (aggregate_id, seq)) WITH cdc = {'enabled': true}",
        ] {
            session.query_unpaged(ddl, ()).await.expect(ddl);
        }
        let batch = "BEGIN BATCH \
            INSERT INTO orders_ks.orders (id, status, last_seq) VALUES (00000000-0000-0000-0000-000000000002, 'Created', 1); \
            INSERT INTO orders_ks.outbox_messages (aggregate_id, seq, id, aggregate_type, event_type, payload, created_at) \
            VALUES (00000000-0000-0000-0000-000000000002, 1, 00000000-0000-0000-0000-000000000001, 'Order', 'OrderCreated', '{}', toTimestamp(now())); \
            APPLY BATCH";
        session
            .query_unpaged(batch, ())
            .await
            .expect("the logged batch applies");
        let log = session
            .query_unpaged(
                "SELECT \"cdc$stream_id\" FROM orders_ks.outbox_messages_scylla_cdc_log",
                (),
            )
            .await
            .expect("the CDC log is readable")
            .into_rows_result()
            .expect("rows");
        assert_eq!(log.rows_num(), 1, "one log row for the one outbox insert");
        node.rm().await.expect("container removed");
    }));
}

/// The whole pipeline on real containers: `live::run_live` with a relay crash and restart.
fn pipeline_on_containers(preset: outbox_sim::relay::Preset) {
    if require_docker().is_err() {
        return;
    }
    use outbox_sim::live::pipeline::{LiveOptions, LiveTarget, run_live};
    use testcontainers_modules::kafka::apache::{KAFKA_PORT, Kafka};
    use testcontainers_modules::scylladb::ScyllaDB;
    let (scylla, kafka, nodes) = smol::block_on(Compat::new(async {
        let s = ScyllaDB::default().start().await.expect("scylla starts");
        let k = Kafka::default().start().await.expect("kafka starts");
        let sp = s.get_host_port_ipv4(9042).await.expect("port");
        let kp = k.get_host_port_ipv4(KAFKA_PORT).await.expect("port");
        (format!("127.0.0.1:{sp}"), format!("127.0.0.1:{kp}"), (s, k))
    }));
    let report = run_live(
        &LiveTarget {
            scylla,
            kafka,
            topic: format!("outbox-{}", preset.name()),
            preset,
            connect_timeout: Duration::from_secs(60),
        },
        &LiveOptions {
            orders: 200,
            writes_per_s: 50.0,
            crash_after: Some(Duration::from_secs(6)),
            drain_timeout: Duration::from_secs(180),
            ..LiveOptions::default()
        },
    )
    .expect("the live pipeline runs");
    // ContainerAsync's Drop needs a tokio context.
    smol::block_on(Compat::new(async move { drop(nodes) }));
    let a = &report.report.analysis;
    assert!(report.drained, "every committed event was published");
    assert_eq!((a.lost, a.reordered, a.duplicated_unexplained), (0, 0, 0));
    assert_eq!(report.missing_on_topic, 0);
    assert!(a.restarts >= 1);
}

#[test]
fn poll_safe_pipeline_with_a_restart_on_real_scylla_and_kafka() {
    pipeline_on_containers(outbox_sim::relay::Preset::PollSafe);
}

#[test]
fn stream_safe_pipeline_on_the_real_scylla_cdc_reader_with_a_restart() {
    pipeline_on_containers(outbox_sim::relay::Preset::StreamSafe);
}
