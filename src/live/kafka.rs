//! The [`Publisher`] port over rdkafka's `FutureProducer`, on smol (no tokio).
//!
//! Settings follow the outbox contract: idempotence on, `acks=all`, key = `aggregate_id` text,
//! header `id` = event id, value = the event as JSON, and `partitioner=murmur2_random` so records
//! land on the partitions Kafka's Java client (and the simulated broker) would choose. The local
//! queue is bounded (`queue.buffering.max.messages`); a full queue waits, it does not fail.
//! Delivery errors map to the port's classes: librdkafka's retriable errors and timeouts are
//! transient, everything else is fatal.

use std::future::Future;
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::{AsyncRuntime, Timeout};

use crate::model::OutboxEvent;
use crate::ports::{Delivery, LocalFuture, PublishError, PublishErrorKind, Publisher};

/// rdkafka's `AsyncRuntime` on smol (as rdkafka's `examples/runtime_smol.rs`).
#[derive(Debug)]
pub struct SmolRuntime;

impl AsyncRuntime for SmolRuntime {
    type Delay = futures::future::Map<smol::Timer, fn(Instant)>;

    fn spawn<T>(task: T)
    where
        T: Future<Output = ()> + Send + 'static,
    {
        smol::spawn(task).detach()
    }

    fn delay_for(duration: Duration) -> Self::Delay {
        FutureExt::map(smol::Timer::after(duration), |_| ())
    }
}

/// Settings of a [`KafkaPublisher`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// The topic.
    pub topic: String,
    /// `message.timeout.ms`: a record not acknowledged by then fails (transient).
    pub message_timeout: Duration,
    /// `queue.buffering.max.messages`: records waiting in the client at most.
    pub max_in_flight: u32,
    /// `linger.ms`.
    pub linger: Duration,
}

impl KafkaConfig {
    /// Defaults for `topic` on `bootstrap`: 30 s delivery timeout, 10,000 queued records, 5 ms
    /// linger.
    pub fn new(bootstrap: &str, topic: &str) -> Self {
        KafkaConfig {
            bootstrap: bootstrap.to_string(),
            topic: topic.to_string(),
            message_timeout: Duration::from_secs(30),
            max_in_flight: 10_000,
            linger: Duration::from_millis(5),
        }
    }
}

/// A producer session (one producer id): a relay incarnation's publisher on a real broker.
pub struct KafkaPublisher {
    producer: FutureProducer<rdkafka::client::DefaultClientContext, SmolRuntime>,
    topic: String,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("topic", &self.topic)
            .finish()
    }
}

/// Why a [`KafkaPublisher`] could not be created.
#[derive(Debug)]
pub struct KafkaSetupError(pub String);

impl std::fmt::Display for KafkaSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kafka producer: {}", self.0)
    }
}

impl std::error::Error for KafkaSetupError {}

impl KafkaPublisher {
    /// A new producer session.
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaSetupError> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &config.bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set(
                "message.timeout.ms",
                config.message_timeout.as_millis().to_string(),
            )
            .set(
                "queue.buffering.max.messages",
                config.max_in_flight.to_string(),
            )
            .set("linger.ms", config.linger.as_millis().to_string())
            .create()
            .map_err(|e: KafkaError| KafkaSetupError(e.to_string()))?;
        Ok(KafkaPublisher {
            producer,
            topic: config.topic.clone(),
        })
    }

    /// The JSON value of a record.
    pub fn value(event: &OutboxEvent) -> Vec<u8> {
        serde_json::to_vec(event).expect("an outbox event serialises")
    }
}

/// Whether a delivery error may go away on its own (librdkafka has already retried it until
/// `message.timeout.ms`; the relay may send again).
pub fn is_transient(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        e.rdkafka_error_code(),
        Some(
            MessageTimedOut
                | QueueFull
                | RequestTimedOut
                | BrokerTransportFailure
                | AllBrokersDown
                | LeaderNotAvailable
                | NotLeaderForPartition
                | NetworkException
                | NotEnoughReplicas
                | NotEnoughReplicasAfterAppend
                | KafkaStorageError
                | PreferredLeaderNotAvailable
        )
    )
}

impl Publisher for KafkaPublisher {
    fn publish<'a>(
        &'a self,
        event: &'a OutboxEvent,
    ) -> LocalFuture<'a, Result<Delivery, PublishError>> {
        Box::pin(async move {
            let key = event.aggregate_id.0.to_string();
            let id = event.id.0.to_string();
            let value = Self::value(event);
            let headers = OwnedHeaders::new().insert(Header {
                key: "id",
                value: Some(id.as_str()),
            });
            let record = FutureRecord::to(&self.topic)
                .key(&key)
                .payload(&value)
                .headers(headers);
            match self.producer.send(record, Timeout::Never).await {
                Ok(d) => Ok(Delivery {
                    partition: d.partition as u32,
                    offset: d.offset as u64,
                }),
                Err((e, _)) => {
                    let kind = if is_transient(&e) {
                        PublishErrorKind::Timeout
                    } else {
                        PublishErrorKind::Fatal(e.to_string())
                    };
                    Err(PublishError {
                        event: event.id,
                        kind,
                    })
                }
            }
        })
    }
}

/// One record read back from the topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadBack {
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// The record key (the aggregate id as text).
    pub key: String,
    /// The `id` header (the event id as text).
    pub id: String,
}

/// Reads every partition of `topic` from the beginning until `want` records arrived and one
/// more poll came back empty, or `timeout` passed. Records without a key or `id` header are
/// returned with empty strings (the caller counts them), not dropped.
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    want: usize,
    timeout: Duration,
) -> Result<Vec<ReadBack>, String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "outbox-sim-read-back")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| format!("kafka consumer: {e}"))?;
    let meta = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    let mut tpl = TopicPartitionList::new();
    for t in meta.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let id = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "id"))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                out.push(ReadBack {
                    partition: m.partition() as u32,
                    offset: m.offset() as u64,
                    key: m
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default(),
                    id,
                });
            }
            Some(Err(e)) => return Err(format!("reading {topic}: {e}")),
            None if out.len() >= want => break,
            None => {}
        }
    }
    Ok(out)
}
