//! The CQL front with the real `scylla` driver and the real scylla-cdc reader: the whole live
//! pipeline (live::scylla writer → front → scylla-cdc `CDCLogReader` → rdkafka → MockCluster),
//! checked by the same checker as the simulated runs. No Docker needed. Intervals are scaled
//! down (window 1 s, safety 0.5 s, sleep 0.2 s, generation announce delay 1.5 s) so each test
//! takes seconds.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use outbox_sim::front::{self, FrontConfig, FrontHandle};
use outbox_sim::history::History;
use outbox_sim::live::WallClock;
use outbox_sim::live::kafka::{KafkaConfig, read_topic};
use outbox_sim::live::pipeline::{LiveOptions, LivePorts, run_pipeline};
use outbox_sim::live::scylla::{ScyllaCheckpoints, ScyllaStore, connect, create_schema};
use outbox_sim::live::scylla_cdc::LibraryRelay;
use outbox_sim::model::{AggregateId, EventId, EventType, OrderStatus, OutboxEvent, Timestamp};
use outbox_sim::ports::{
    CheckpointStore, Clock, OrderBatch, OutboxStore, ScanFrom, WriteTimestamp,
};
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
        assert_eq!(committed.created_at, now.floor_ms());
        let stored = OutboxEvent {
            created_at: committed.created_at,
            ..event(1, 1)
        };
        WallClock.sleep(Duration::from_millis(50)).await;
        let later = WallClock.now() + Duration::from_secs(1);
        let rows = s
            .scan_outbox(ScanFrom::Beginning, later, 100)
            .await
            .expect("scan");
        assert_eq!(rows, vec![stored.clone()]);
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
        assert_eq!(page.rows[0].event, stored);
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
        assert_eq!(
            cp.load_stream(streams[0]).await.unwrap(),
            Some(now.floor_ms())
        );
        assert_eq!(cp.load_stream(streams[1]).await.unwrap(), None);
    });
    assert_eq!(
        front::describe(&f.stats)["errors"],
        0,
        "no request was refused"
    );
}

/// stream-safe's settings, scaled down: window 1 s, safety 0.5 s, sleep 0.2 s.
fn scaled_safe() -> StreamConfig {
    StreamConfig {
        window_size: Duration::from_secs(1),
        safety_interval: Duration::from_millis(500),
        sleep_interval: Duration::from_millis(200),
        pause_between_saves: Duration::from_millis(300),
        start: StartTimestamp::Resume {
            fresh: Duration::from_millis(500),
            resuming: Duration::from_secs(3_600),
        },
        should_load_progress: true,
        should_save_progress: true,
        monotonic_checkpoints: true,
        ..StreamConfig::default()
    }
}

struct Run {
    analysis: outbox_sim::check::Analysis,
    drained: bool,
    read_back: usize,
    /// Acknowledged event ids not found on the topic.
    missing_on_topic: usize,
    /// Records on the topic whose event was never committed.
    phantom_on_topic: usize,
    published: usize,
    dead_letters: Vec<String>,
    log_rows: u64,
    /// Responses that told the client more pages follow.
    paged: u64,
    connections_after_connect: u64,
    connections_at_end: u64,
    /// Events committed at or after the second generation's start.
    in_new_generation: usize,
    wall_s: f64,
}

/// The whole live pipeline on a front of `nodes` nodes: `orders` orders at 150 writes/s, the
/// real scylla-cdc reader (relay crash after 3 s, 1 s down), a node joining 1 s in (its
/// generation starts 1.5 s later, while the writer is still writing).
fn live_pipeline(nodes: u32, max_page_rows: Option<usize>, orders: usize) -> Run {
    let f = front(nodes, max_page_rows);
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("outbox", 6, 3).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let history = History::new();
    let (outcome, dead_letters, connections_after_connect, generation) = smol::block_on(async {
        let s = store(&f.contact(), true).await;
        let connections_after_connect = front::describe(&f.stats)["connections"];
        let relay = LibraryRelay::new("stream-safe-scaled", s.session(), scaled_safe())
            .expect("the library can run these settings");
        let mut kafka = KafkaConfig::new(&bootstrap, "outbox");
        kafka.linger = Duration::from_millis(1);
        let ports = LivePorts {
            store: s.clone(),
            history: history.clone(),
            kafka,
        };
        let joiner = async {
            WallClock.sleep(Duration::from_millis(1_000)).await;
            f.join_node().expect("a node joins")
        };
        let opts = LiveOptions {
            orders,
            writes_per_s: 100.0,
            crash_after: Some(Duration::from_millis(3_000)),
            downtime: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(30),
            seed: Seed(3),
        };
        let relay: Rc<dyn Relay> = Rc::new(relay.clone());
        // join_node blocks this thread only while the front's thread answers (microseconds).
        let (outcome, generation) = futures::join!(
            run_pipeline(
                Rc::new(s.clone()),
                Rc::new(s.for_client(Client::Relay)),
                &ports,
                relay,
                history.clone(),
                &opts,
            ),
            joiner
        );
        (
            outcome.expect("the pipeline runs"),
            s.dead_letters(),
            connections_after_connect,
            generation,
        )
    });
    let published = outcome.published.len();
    let in_new_generation = history
        .ops()
        .iter()
        .filter(|op| matches!(op.kind, outbox_sim::history::OpKind::Committed { write_ts, .. } if write_ts.as_millis() >= generation))
        .count();
    let on_topic = read_topic(&bootstrap, "outbox", published, Duration::from_secs(20))
        .expect("the topic reads back");
    let topic_ids: std::collections::BTreeSet<String> =
        on_topic.iter().map(|r| r.id.clone()).collect();
    let missing_on_topic = outcome
        .published
        .iter()
        .filter(|id| !topic_ids.contains(&id.0.to_string()))
        .count();
    let committed: std::collections::BTreeSet<String> = history
        .ops()
        .iter()
        .filter_map(|op| match op.kind {
            outbox_sim::history::OpKind::Committed { event, .. } => Some(event.0.to_string()),
            _ => None,
        })
        .collect();
    let phantom_on_topic = topic_ids.difference(&committed).count();
    let read_back = on_topic.len();
    Run {
        analysis: outcome.analysis,
        drained: outcome.drained,
        read_back,
        missing_on_topic,
        phantom_on_topic,
        published,
        dead_letters,
        log_rows: front::describe(&f.stats)["log_rows"],
        paged: front::describe(&f.stats)["paged"],
        connections_after_connect,
        connections_at_end: front::describe(&f.stats)["connections"],
        in_new_generation,
        wall_s: outcome.wall_s,
    }
}

fn assert_clean(run: &Run) {
    let a = &run.analysis;
    assert!(
        run.drained,
        "every committed event was published before the timeout"
    );
    assert_eq!(a.lost, 0, "lost: {:?}", a.anomalies.first());
    assert_eq!(a.reordered, 0, "reordered: {:?}", a.anomalies.first());
    assert_eq!(a.duplicated_unexplained, 0, "{:?}", a.anomalies.first());
    assert_eq!(a.phantom, 0);
    assert!(!a.failed(), "{:?}", a.anomaly_counts);
    assert!(a.restarts >= 1, "the relay was restarted");
    assert_eq!(
        run.missing_on_topic, 0,
        "every acknowledged record is on the topic"
    );
    assert_eq!(
        run.phantom_on_topic, 0,
        "the topic holds only committed events"
    );
    // A record whose publish the crash interrupted can be on the topic unacknowledged: the
    // topic may hold more records than acknowledgements, never fewer.
    assert!(run.read_back >= run.published);
    assert!(run.dead_letters.is_empty(), "{:?}", run.dead_letters);
    assert_eq!(
        run.connections_at_end, run.connections_after_connect,
        "no reconnect loop: the sessions kept their connections"
    );
}

#[test]
fn real_scylla_cdc_through_a_generation_change_and_a_restart_loses_nothing() {
    let run = live_pipeline(1, None, 150);
    eprintln!(
        "committed {} published {} log rows served {} in {:.1} s; {} written into the new generation",
        run.analysis.committed, run.published, run.log_rows, run.wall_s, run.in_new_generation
    );
    assert_eq!(run.analysis.committed, 450);
    assert!(
        run.in_new_generation > 50,
        "the writer kept writing into the new generation"
    );
    assert!(
        run.log_rows >= 360,
        "the reader read the log through the front"
    );
    assert_clean(&run);
}

#[test]
fn three_nodes_and_one_row_pages_lose_nothing() {
    let run = live_pipeline(3, Some(1), 100);
    eprintln!(
        "3 nodes, 1-row pages: committed {} published {} log rows served {} in {:.1} s",
        run.analysis.committed, run.published, run.log_rows, run.wall_s
    );
    assert_eq!(run.analysis.committed, 300);
    assert!(run.in_new_generation > 0);
    assert!(
        run.paged >= run.log_rows / 2,
        "1-row pages: {} paged responses for {} rows",
        run.paged,
        run.log_rows
    );
    assert_clean(&run);
}

/// Sends one raw frame and reads one response: (opcode, body).
fn raw(stream: &mut std::net::TcpStream, header: [u8; 9], body: &[u8]) -> (u8, Vec<u8>) {
    use std::io::{Read, Write};
    stream.write_all(&header).unwrap();
    stream.write_all(body).unwrap();
    let mut h = [0u8; 9];
    stream.read_exact(&mut h).unwrap();
    let len = u32::from_be_bytes(h[5..9].try_into().unwrap()) as usize;
    let mut b = vec![0u8; len];
    stream.read_exact(&mut b).unwrap();
    (h[4], b)
}

fn header(opcode: u8, len: usize) -> [u8; 9] {
    let l = (len as u32).to_be_bytes();
    [4, 0, 0, 1, opcode, l[0], l[1], l[2], l[3]]
}

fn error_code(body: &[u8]) -> i32 {
    i32::from_be_bytes(body[..4].try_into().unwrap())
}

#[test]
fn malformed_frames_unknown_opcodes_and_unsupported_statements_get_errors() {
    let f = front(1, None);
    let mut c = std::net::TcpStream::connect(f.addrs[0]).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    // An opcode no client sends.
    let (op, body) = raw(&mut c, header(0x42, 0), &[]);
    assert_eq!((op, error_code(&body)), (0x00, 0x000A), "Protocol error");
    // A QUERY whose body is truncated.
    let (op, body) = raw(&mut c, header(0x07, 3), &[0, 0, 0]);
    assert_eq!((op, error_code(&body)), (0x00, 0x000A));
    // An unsupported statement: Invalid, naming it.
    let q = b"DROP TABLE orders_ks.outbox_messages";
    let mut qb = (q.len() as u32).to_be_bytes().to_vec();
    qb.extend_from_slice(q);
    qb.extend_from_slice(&[0, 1, 0]); // consistency ONE, no flags
    let (op, body) = raw(&mut c, header(0x07, qb.len()), &qb);
    assert_eq!((op, error_code(&body)), (0x00, 0x2200));
    assert!(String::from_utf8_lossy(&body).contains("DROP"));
    // An EXECUTE of an id the server never prepared: UNPREPARED with the id.
    let eb = [0u8, 2, 0xab, 0xcd, 0, 1, 0];
    let (op, body) = raw(&mut c, header(0x0A, eb.len()), &eb);
    assert_eq!((op, error_code(&body)), (0x00, 0x2500));
    assert!(body.ends_with(&[0, 2, 0xab, 0xcd]));
    // A v5 frame: a Protocol error, and the connection still serves v4.
    let mut h5 = header(0x05, 0);
    h5[0] = 5;
    let (op, body) = raw(&mut c, h5, &[]);
    assert_eq!((op, error_code(&body)), (0x00, 0x000A));
    let (op, _) = raw(&mut c, header(0x05, 0), &[]);
    assert_eq!(
        op, 0x06,
        "SUPPORTED after the errors, on the same connection"
    );
    // Other connections are served too: the real driver connects and reads.
    smol::block_on(async {
        let s = store(&f.contact(), false).await;
        assert_eq!(s.peer_count().await.unwrap(), 0);
        // A dropped prepared cache: the driver re-prepares on UNPREPARED and goes on.
        f.forget_prepared();
        let now = WallClock.now();
        s.write(OrderBatch {
            status: OrderStatus::Created,
            event: event(2, 1),
            timestamp: WriteTimestamp::Client(now),
        })
        .await
        .expect("the batch applies after re-preparing");
    });
    assert!(front::describe(&f.stats)["errors"] >= 5);
}

/// Runs `relay` until it delivered `want` events (or 30 s passed); returns them in order.
async fn collect(relay: &dyn Relay, s: &ScyllaStore, want: usize) -> Vec<EventId> {
    outbox_sim::live::pipeline::collect(
        relay,
        Rc::new(s.for_client(Client::Relay)),
        Rc::new(ScyllaCheckpoints::new(
            s.clone(),
            History::new(),
            1,
            "fidelity",
        )),
        want,
        Duration::from_secs(30),
        Duration::from_millis(500),
    )
    .await
}

#[test]
fn fidelity_the_real_reader_and_the_model_deliver_the_same_rows_per_stream_in_order() {
    let f = front(2, Some(1));
    smol::block_on(async {
        let s = store(&f.contact(), true).await;
        // 240 events of 80 orders, written over ~1.2 s.
        let mut written = Vec::new();
        for seq in 1..=3u64 {
            for n in 0..80u128 {
                let c = s
                    .write(OrderBatch {
                        status: OrderStatus::Created,
                        event: event(100 + n, seq),
                        timestamp: WriteTimestamp::Client(WallClock.now()),
                    })
                    .await
                    .unwrap();
                written.push(OutboxEvent {
                    created_at: c.created_at,
                    ..event(100 + n, seq)
                });
                WallClock.sleep(Duration::from_millis(5)).await;
            }
        }
        let config = StreamConfig {
            window_size: Duration::from_secs(1),
            safety_interval: Duration::from_millis(500),
            sleep_interval: Duration::from_millis(200),
            start: StartTimestamp::Ago(Duration::from_secs(30)),
            ..StreamConfig::default()
        };
        let library = LibraryRelay::new("library", s.session(), config.clone()).unwrap();
        let model = outbox_sim::relay::StreamRelay::new("model", config);
        let by_library = collect(&library, &s, written.len()).await;
        let by_model = collect(&model, &s, written.len()).await;

        // Which stream each event's log row is in.
        let now = WallClock.now();
        let g = s.generation_at(now).await.unwrap().unwrap();
        let streams: Vec<_> = s
            .stream_groups(g)
            .await
            .unwrap()
            .into_iter()
            .flat_map(|g| g.streams)
            .collect();
        let log = s
            .read_log(&streams, now - Duration::from_secs(60), now, None, 5_000)
            .await
            .unwrap();
        let stream_of: std::collections::BTreeMap<EventId, _> =
            log.rows.iter().map(|r| (r.event.id, r.stream_id)).collect();
        assert_eq!(stream_of.len(), written.len());
        let per_stream = |seq: &[EventId]| {
            let mut m: std::collections::BTreeMap<_, Vec<EventId>> = Default::default();
            for id in seq {
                m.entry(stream_of[id]).or_default().push(*id);
            }
            m
        };
        eprintln!(
            "fidelity: {} rows in {} streams; library delivered {}, model delivered {}",
            written.len(),
            per_stream(&by_library).len(),
            by_library.len(),
            by_model.len()
        );
        assert_eq!(
            by_library.len(),
            written.len(),
            "the library delivered each row once"
        );
        assert_eq!(
            by_model.len(),
            written.len(),
            "the model delivered each row once"
        );
        assert_eq!(
            per_stream(&by_library),
            per_stream(&by_model),
            "same rows per stream, in the same order"
        );
        // And both follow the log's own order within a stream.
        let log_order: Vec<EventId> = log.rows.iter().map(|r| r.event.id).collect();
        assert_eq!(per_stream(&by_library), per_stream(&log_order));
    });
}

#[test]
fn a_graceful_stop_joins_the_real_reader_after_its_last_window_and_final_save() {
    use outbox_sim::live::pipeline::Collector;
    let f = front(1, None);
    smol::block_on(async {
        let s = store(&f.contact(), true).await;
        for n in 0..60u128 {
            s.write(OrderBatch {
                status: OrderStatus::Created,
                event: event(300 + n, 1),
                timestamp: WriteTimestamp::Client(WallClock.now()),
            })
            .await
            .unwrap();
        }
        let config = StreamConfig {
            start: StartTimestamp::Ago(Duration::from_secs(30)),
            ..scaled_safe()
        };
        let relay = LibraryRelay::new("stoppable", s.session(), config).unwrap();
        let stopper = relay.stop_handle();
        let sink = Rc::new(Collector::default());
        let history = History::new();
        let ctx = outbox_sim::relay::RelayContext {
            store: Rc::new(s.for_client(Client::Relay)),
            checkpoints: Rc::new(ScyllaCheckpoints::new(s.clone(), history, 1, "stop")),
            publisher: sink.clone(),
            clock: Rc::new(WallClock),
            incarnation: 1,
        };
        let run = relay.run(ctx);
        let driver = async {
            while sink.len() < 60 {
                WallClock.sleep(Duration::from_millis(20)).await;
            }
            stopper.stop();
        };
        let guard = async {
            WallClock.sleep(Duration::from_secs(30)).await;
            panic!("the reader neither delivered everything nor stopped within 30 s");
        };
        let (result, ()) = smol::future::or(async { futures::join!(run, driver) }, guard).await;
        assert_eq!(result, Ok(()), "a stopped reader returns Ok after its join");
        assert_eq!(sink.len(), 60, "each row once, nothing after the stop");
        // The library's final save ran: the first stream of each reader has a checkpoint.
        let g = s.generation_at(WallClock.now()).await.unwrap().unwrap();
        let groups = s.stream_groups(g).await.unwrap();
        let cp = ScyllaCheckpoints::new(s.clone(), History::new(), 2, "stop");
        for group in groups {
            assert!(
                cp.load_stream(group.streams[0]).await.unwrap().is_some(),
                "stream {} has a checkpoint",
                group.streams[0]
            );
        }
    });
}
