//! The rdkafka publisher against librdkafka's in-process mock cluster (real Kafka protocol, no
//! Docker): keys, headers and partitions match the simulated broker's murmur2 partitioning, and
//! with injected request errors and a broker down then up, nothing is lost and no duplicate is
//! left unexplained.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use outbox_sim::check::analyze;
use outbox_sim::history::{History, OpKind};
use outbox_sim::live::kafka::{KafkaConfig, KafkaPublisher};
use outbox_sim::model::{AggregateId, EventId, EventType, OutboxEvent, SIM_EPOCH, Timestamp};
use outbox_sim::ports::{Delivery, PublishError, Publisher};
use outbox_sim::seed::{Seed, uuid_v4};
use outbox_sim::sim::broker::partition_for;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const PARTITIONS: u32 = 6;

fn events(n_aggregates: usize, per_aggregate: u64) -> Vec<OutboxEvent> {
    let mut rng = Seed(5).rng("live-kafka");
    let aggregates: Vec<AggregateId> = (0..n_aggregates)
        .map(|_| AggregateId(uuid_v4(&mut rng)))
        .collect();
    let mut out = Vec::new();
    for seq in 1..=per_aggregate {
        for a in &aggregates {
            out.push(OutboxEvent {
                id: EventId(uuid_v4(&mut rng)),
                aggregate_type: "Order".into(),
                aggregate_id: *a,
                seq,
                event_type: if seq == 1 {
                    EventType::OrderCreated
                } else {
                    EventType::OrderPaid
                },
                payload: Rc::from(format!("{{\"seq\":{seq}}}")),
                created_at: SIM_EPOCH.offset_micros(seq as i64),
            });
        }
    }
    out
}

struct Consumed {
    partition: u32,
    offset: u64,
    key: String,
    id: String,
}

fn consume_all(bootstrap: &str, topic: &str, want: usize) -> Vec<Consumed> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "outbox-sim-check")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let id = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "id"))
                    .and_then(|h| h.value)
                    .unwrap();
                out.push(Consumed {
                    partition: m.partition() as u32,
                    offset: m.offset() as u64,
                    key: String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
                    id: String::from_utf8(id.to_vec()).unwrap(),
                });
            }
            Some(Err(e)) => panic!("consumer: {e}"),
            None if out.len() >= want => {
                // One more quiet poll came back empty: nothing else is in flight.
                break;
            }
            None => {}
        }
    }
    out
}

fn publish_all(
    publisher: &KafkaPublisher,
    events: &[OutboxEvent],
) -> Vec<Result<Delivery, PublishError>> {
    smol::block_on(publisher.publish_all(events))
}

#[test]
fn records_carry_key_header_and_the_java_clients_partition() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("outbox", PARTITIONS as i32, 3).unwrap();
    let publisher =
        KafkaPublisher::new(&KafkaConfig::new(&mock.bootstrap_servers(), "outbox")).unwrap();
    let evs = events(40, 5);
    let deliveries = publish_all(&publisher, &evs);
    let consumed = consume_all(&mock.bootstrap_servers(), "outbox", evs.len());
    assert_eq!(
        consumed.len(),
        evs.len(),
        "every record read back exactly once"
    );
    let by_id: BTreeMap<&str, &Consumed> = consumed.iter().map(|c| (c.id.as_str(), c)).collect();
    for (e, d) in evs.iter().zip(&deliveries) {
        let d = d.as_ref().expect("no fault, no error");
        let c = by_id[e.id.0.to_string().as_str()];
        assert_eq!(c.key, e.aggregate_id.0.to_string());
        assert_eq!(
            c.partition,
            partition_for(c.key.as_bytes(), PARTITIONS),
            "murmur2, as the simulated broker"
        );
        assert_eq!(
            (d.partition, d.offset),
            (c.partition, c.offset),
            "the acknowledgement names the record"
        );
    }
    // Per aggregate, offsets increase with seq.
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    let mut sorted: Vec<&Consumed> = consumed.iter().collect();
    sorted.sort_by_key(|c| (c.partition, c.offset));
    let seq_of: BTreeMap<String, u64> = evs.iter().map(|e| (e.id.0.to_string(), e.seq)).collect();
    for c in sorted {
        let seq = seq_of[&c.id];
        let prev = last.insert(c.key.as_str(), seq).unwrap_or(0);
        assert!(
            seq > prev,
            "aggregate {} went from seq {prev} to {seq}",
            c.key
        );
    }
}

#[test]
fn request_errors_and_a_broker_outage_lose_nothing_and_explain_every_duplicate() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("outbox", PARTITIONS as i32, 3).unwrap();
    let mut cfg = KafkaConfig::new(&mock.bootstrap_servers(), "outbox");
    cfg.message_timeout = Duration::from_secs(20);
    let publisher = KafkaPublisher::new(&cfg).unwrap();
    let evs = events(50, 4);
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    );
    let (first, second) = evs.split_at(evs.len() / 2);
    let mut results = publish_all(&publisher, first);
    // The whole cluster goes down while the second half is being sent, then comes back.
    mock.broker_down(-1).unwrap();
    let results_second = smol::block_on(async {
        let send = publisher.publish_all(second);
        let outage = async {
            smol::Timer::after(Duration::from_millis(800)).await;
            mock.broker_up(-1).unwrap();
        };
        futures::join!(send, outage).0
    });
    results.extend(results_second);
    // A relay re-sends what failed; with idempotence there is nothing else to re-send.
    let history = History::new();
    history.record(Timestamp(0), OpKind::RelayStarted { incarnation: 1 });
    for e in &evs {
        history.record(
            Timestamp(1),
            OpKind::Committed {
                event: e.id,
                aggregate: e.aggregate_id,
                seq: e.seq,
                write_ts: e.created_at,
                visible_at: e.created_at,
                expires_at: Timestamp::MAX,
                late: false,
            },
        );
    }
    let mut t = 2;
    for (e, r) in evs.iter().zip(&results) {
        if let Err(err) = r {
            assert!(err.is_transient(), "{err}");
            history.record(
                Timestamp(t),
                OpKind::PublishFailed {
                    event: e.id,
                    incarnation: 1,
                    transient: true,
                },
            );
            t += 1;
            smol::block_on(publisher.publish(e)).expect("a retry after the outage succeeds");
        }
    }
    let consumed = consume_all(&mock.bootstrap_servers(), "outbox", evs.len());
    let ids: BTreeMap<String, &OutboxEvent> = evs.iter().map(|e| (e.id.0.to_string(), e)).collect();
    let mut sorted: Vec<&Consumed> = consumed.iter().collect();
    sorted.sort_by_key(|c| (c.partition, c.offset));
    for c in sorted {
        let e = ids[&c.id];
        history.record(
            Timestamp(t),
            OpKind::Published {
                event: e.id,
                aggregate: e.aggregate_id,
                seq: e.seq,
                partition: c.partition,
                offset: c.offset,
                incarnation: 1,
            },
        );
        t += 1;
    }
    let a = analyze(&history.ops());
    assert_eq!(a.committed, evs.len() as u64);
    assert_eq!(a.lost, 0, "{:?}", a.anomalies.first());
    assert_eq!(a.duplicated_unexplained, 0, "{:?}", a.anomalies.first());
    assert_eq!(a.reordered, 0, "{:?}", a.anomalies.first());
    assert_eq!(a.phantom, 0);
}
