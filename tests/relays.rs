//! The relays (issue B): the scylla-cdc reader model's window arithmetic, generation barrier and
//! resume rules against reference/scylla_cdc.md, both relays' checkpoint discipline, and the
//! `compare` expectations on the default scenario.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use outbox_sim::cdc::{LogPage, PageState, StreamGroup, StreamId};
use outbox_sim::history::{CheckpointWhat, OpKind};
use outbox_sim::model::{Cursor, Timestamp};
use outbox_sim::ports::{CheckpointStore, Clock, LocalFuture, OutboxStore, StoreError};
use outbox_sim::relay::{Preset, Relay, RelayContext, StartTimestamp, StreamConfig, StreamRelay};
use outbox_sim::scenario::workload::{WorkloadConfig, drive};
use outbox_sim::scenario::{Scenario, run};
use outbox_sim::seed::Seed;
use outbox_sim::sim::scylla::{Client, SimStore};
use outbox_sim::sim::{Sim, SimBuilder};
use outbox_sim::writer::{OrderWriter, WriterConfig};

/// One log read as the cluster received it.
#[derive(Clone, Debug)]
struct Read {
    at: Timestamp,
    first_stream: StreamId,
    from: Timestamp,
    to: Timestamp,
}

/// An `OutboxStore` that records every log read and forwards to the simulated cluster.
struct Recording {
    inner: SimStore,
    clock: Rc<dyn Clock>,
    reads: Rc<RefCell<Vec<Read>>>,
}

impl OutboxStore for Recording {
    outbox_sim::forward_outbox_store!(inner: write, scan_outbox, peer_count, generation_at, next_generation, first_generation, stream_groups);
    fn read_log<'a>(
        &'a self,
        streams: &'a [StreamId],
        from: Timestamp,
        to: Timestamp,
        page: Option<PageState>,
        page_size: usize,
    ) -> LocalFuture<'a, Result<LogPage, StoreError>> {
        if page.is_none() {
            self.reads.borrow_mut().push(Read {
                at: self.clock.now(),
                first_stream: streams[0],
                from,
                to,
            });
        }
        self.inner.read_log(streams, from, to, page, page_size)
    }
}

fn small_sim(seed: u64) -> Sim {
    SimBuilder::new()
        .nodes(1)
        .vnodes_per_node(8)
        .shards_per_node(2)
        .build(Seed(seed))
        .unwrap()
}

fn ctx(sim: &Sim, reads: &Rc<RefCell<Vec<Read>>>, incarnation: u32) -> RelayContext {
    RelayContext {
        store: Rc::new(Recording {
            inner: sim.store(Client::Relay),
            clock: sim.clock_port(),
            reads: reads.clone(),
        }),
        checkpoints: Rc::new(sim.checkpoints(incarnation)),
        publisher: Rc::new(sim.producer(incarnation)),
        clock: sim.clock_port(),
        incarnation,
    }
}

fn start_workload(sim: &Sim, secs: u64) {
    let w = Rc::new(OrderWriter::new(
        Rc::new(sim.store(Client::Writer)),
        sim.clock_port(),
        sim.history(),
        sim.rng("writer"),
        WriterConfig::default(),
    ));
    let start = sim.now();
    let cfg = WorkloadConfig {
        orders_per_s: 10.0,
        ..WorkloadConfig::default()
    };
    sim.spawn(
        "workload",
        drive(
            w,
            sim.clock_port(),
            sim.rng("workload"),
            cfg,
            start,
            start + Duration::from_secs(secs),
        ),
    )
    .detach();
}

fn by_group(reads: &[Read]) -> BTreeMap<StreamId, Vec<Read>> {
    let mut m: BTreeMap<StreamId, Vec<Read>> = BTreeMap::new();
    for r in reads {
        m.entry(r.first_stream).or_default().push(r.clone());
    }
    m
}

#[test]
fn windows_follow_the_scylla_cdc_formula() {
    let mut sim = small_sim(21);
    start_workload(&sim, 300);
    let reads = Rc::new(RefCell::new(Vec::new()));
    let cfg = StreamConfig::default();
    let (w, s, p) = (cfg.window_size, cfg.safety_interval, cfg.sleep_interval);
    let t0 = sim.now();
    let relay = StreamRelay::new("m", cfg);
    sim.spawn("relay", relay.run(ctx(&sim, &reads, 1))).detach();
    sim.run_until(t0 + Duration::from_secs(300)).unwrap();
    let groups = by_group(&reads.borrow());
    assert_eq!(groups.len(), 8, "one reader per vnode group");
    for (_, rs) in groups {
        // Default start = now: the first query waits until start + S + 100 ms.
        assert_eq!(rs[0].from, t0.floor_ms());
        assert_eq!(rs[0].at, t0 + s + Duration::from_millis(100));
        for pair in rs.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert_eq!(b.from, a.to, "consecutive windows neither gap nor overlap");
            assert_eq!(
                b.to,
                (b.from + w).min(b.at - s).floor_ms(),
                "end = min(begin + W, now − S)"
            );
            assert!(
                b.at.saturating_since(a.at) >= p,
                "a reader sleeps P between windows"
            );
            assert!(b.to <= b.at - s, "never reads inside the safety interval");
        }
        assert!(
            rs.len() >= 20,
            "steady state: one window per ~P ({} windows)",
            rs.len()
        );
    }
}

#[test]
fn a_lagging_reader_advances_by_whole_windows_and_still_sleeps() {
    let mut sim = small_sim(22);
    start_workload(&sim, 60);
    let reads = Rc::new(RefCell::new(Vec::new()));
    let cfg = StreamConfig {
        start: StartTimestamp::Ago(Duration::from_secs(1_800)),
        ..StreamConfig::default()
    };
    let (w, p) = (cfg.window_size, cfg.sleep_interval);
    let t0 = sim.now();
    sim.spawn(
        "relay",
        StreamRelay::new("m", cfg).run(ctx(&sim, &reads, 1)),
    )
    .detach();
    sim.run_until(t0 + Duration::from_secs(120)).unwrap();
    for (_, rs) in by_group(&reads.borrow()) {
        assert_eq!(rs[0].from, (t0 - Duration::from_secs(1_800)).floor_ms());
        for pair in rs.windows(2).take(5) {
            assert_eq!(
                pair[0].to.saturating_since(pair[0].from),
                w,
                "full windows while behind"
            );
            assert!(
                pair[1].at.saturating_since(pair[0].at) >= p,
                "scylla-cdc sleeps even while lagging"
            );
        }
    }
}

#[test]
fn the_next_generation_starts_only_after_every_old_reader_passed_it() {
    let mut sim = small_sim(23);
    start_workload(&sim, 400);
    let reads = Rc::new(RefCell::new(Vec::new()));
    let t0 = sim.now();
    let cluster = sim.cluster();
    let clock = sim.clock_port();
    let gen_start = Rc::new(RefCell::new(None));
    let gs = gen_start.clone();
    sim.spawn("nemesis", async move {
        clock.sleep(Duration::from_secs(60)).await;
        *gs.borrow_mut() = Some(cluster.join_node(clock.now()));
    })
    .detach();
    sim.spawn(
        "relay",
        StreamRelay::new("m", StreamConfig::default()).run(ctx(&sim, &reads, 1)),
    )
    .detach();
    sim.run_until(t0 + Duration::from_secs(400)).unwrap();
    let t_new = gen_start.borrow().expect("generation created");
    let new_streams: Vec<StreamId> = sim
        .cluster()
        .state()
        .topology
        .generations
        .last()
        .unwrap()
        .streams()
        .collect();
    let reads = reads.borrow();
    let (new, old): (Vec<&Read>, Vec<&Read>) = reads
        .iter()
        .partition(|r| new_streams.contains(&r.first_stream));
    assert!(!new.is_empty() && !old.is_empty());
    let last_old = old.iter().map(|r| r.at).max().unwrap();
    let first_new = new.iter().map(|r| r.at).min().unwrap();
    assert!(
        first_new >= last_old,
        "barrier: new readers start after the last old window"
    );
    for (_, rs) in by_group(&old.iter().map(|r| (*r).clone()).collect::<Vec<_>>()) {
        assert!(
            rs.last().unwrap().to >= t_new,
            "every old reader read past the new generation's start"
        );
    }
    for (_, rs) in by_group(&new.iter().map(|r| (*r).clone()).collect::<Vec<_>>()) {
        assert_eq!(
            rs[0].from, t_new,
            "new readers begin at the generation start"
        );
    }
    // And the stream assignment kept per-key order across the switch: no reordering.
    let a = outbox_sim::check::analyze(&sim.history().ops());
    assert_eq!(a.reordered, 0);
}

/// Seeds the checkpoint table, then starts a relay and returns each group's first window start.
fn resume_from(
    start: StartTimestamp,
    saved_generation: bool,
) -> (
    Timestamp,
    Timestamp,
    BTreeMap<StreamId, Timestamp>,
    Vec<StreamGroup>,
) {
    let mut sim = small_sim(24);
    let t0 = sim.now();
    let checkpoints = sim.checkpoints(1);
    let groups = sim.cluster().state().topology.generations[0]
        .groups()
        .to_vec();
    let g0 = sim.cluster().state().topology.generations[0].start;
    let g = groups.clone();
    let seed = sim.spawn("seed", async move {
        if saved_generation {
            checkpoints.save_generation(g0).await.unwrap();
        }
        for (i, group) in g.iter().enumerate() {
            for (j, s) in group.streams.iter().enumerate() {
                // Stream j of group i consumed up to t0 − 600 s + 10·i + j seconds.
                let t =
                    t0 - Duration::from_secs(600) + Duration::from_secs(10 * i as u64 + j as u64);
                checkpoints.save_stream(*s, t).await.unwrap();
            }
        }
    });
    sim.block_on(seed).unwrap();
    let reads = Rc::new(RefCell::new(Vec::new()));
    let cfg = StreamConfig {
        start,
        should_load_progress: true,
        should_save_progress: true,
        ..StreamConfig::default()
    };
    let now = sim.now();
    sim.spawn(
        "relay",
        StreamRelay::new("m", cfg).run(ctx(&sim, &reads, 2)),
    )
    .detach();
    sim.run_until(now + Duration::from_secs(60)).unwrap();
    let first: BTreeMap<StreamId, Timestamp> = by_group(&reads.borrow())
        .into_iter()
        .map(|(s, rs)| (s, rs[0].from))
        .collect();
    (t0, now, first, groups)
}

#[test]
fn resume_uses_the_minimum_checkpoint_of_each_reader_unless_start_is_now() {
    // start_timestamp far back + saved generation: each reader resumes at the min of its streams.
    let (t0, _, first, groups) = resume_from(
        StartTimestamp::Resume {
            fresh: Duration::ZERO,
            resuming: Duration::from_secs(86_400),
        },
        true,
    );
    for (i, group) in groups.iter().enumerate() {
        let expected = t0 - Duration::from_secs(600) + Duration::from_secs(10 * i as u64);
        assert_eq!(first[&group.streams[0]], expected.floor_ms(), "group {i}");
    }
    // The library default start = now: loaded checkpoints older than now are ignored (#120).
    let (_, now, first, _) = resume_from(StartTimestamp::Now, true);
    for (_, from) in first {
        assert_eq!(
            from,
            now.floor_ms(),
            "start = now wins over older checkpoints"
        );
    }
}

#[test]
fn the_saver_first_rewinds_to_the_lower_timestamp() {
    // scylla-cdc pitfall §2.6.3: right after a restart the saver writes `lower` for every stream.
    let mut sim = small_sim(25);
    let checkpoints = sim.checkpoints(1);
    let stream = sim.cluster().state().topology.generations[0].groups()[0].streams[0];
    let t0 = sim.now();
    let t = sim.spawn("seed", async move {
        checkpoints
            .save_stream(stream, t0 - Duration::from_secs(5))
            .await
            .unwrap()
    });
    sim.block_on(t).unwrap();
    let reads = Rc::new(RefCell::new(Vec::new()));
    let cfg = StreamConfig {
        start: StartTimestamp::Ago(Duration::from_secs(3_600)),
        should_load_progress: true,
        should_save_progress: true,
        ..StreamConfig::default()
    };
    let now = sim.now();
    sim.spawn(
        "relay",
        StreamRelay::new("m", cfg).run(ctx(&sim, &reads, 1)),
    )
    .detach();
    sim.run_until(now + Duration::from_millis(500)).unwrap();
    let saved = sim.cluster().state().checkpoints.streams[&stream];
    assert!(
        saved < t0 - Duration::from_secs(1_000),
        "rewound to the lower timestamp ({saved})"
    );
}

#[test]
fn checkpoints_never_pass_unpublished_rows() {
    // poll-safe and stream-safe under a broker outage and crashes: every saved position covers
    // only rows that were published before the save.
    let mut scenario = Scenario::short_for_tests();
    scenario.duration_s = 240.0;
    scenario.drain_s = 200.0;
    scenario
        .faults
        .broker_outages
        .push(outbox_sim::scenario::Window {
            at_s: 60.0,
            duration_s: 30.0,
        });
    scenario
        .faults
        .relay_crashes
        .push(outbox_sim::scenario::RelayCrash {
            at_s: 100.0,
            downtime_s: 20.0,
        });
    scenario
        .faults
        .relay_crashes
        .push(outbox_sim::scenario::RelayCrash {
            at_s: 170.0,
            downtime_s: 5.0,
        });
    for preset in [Preset::PollSafe, Preset::StreamSafe, Preset::StreamTuned] {
        let relay = preset.relay(scenario.visibility_bound(), scenario.cdc_ttl());
        let report = run(&scenario, Rc::new(relay.clone()), Seed(26)).unwrap();
        assert_eq!(report.lost, 0, "{preset}");
        assert_eq!(report.reordered, 0, "{preset}");
        assert!(report.restarts >= 2);
        // Run it again, keeping the world to inspect its history (same seed, same digest).
        let (ops, log) = history_of(&scenario, relay, 26);
        let mut published: BTreeMap<outbox_sim::model::EventId, Timestamp> = BTreeMap::new();
        let mut checked = 0;
        for op in &ops {
            match &op.kind {
                OpKind::Published { event, .. } => {
                    published.entry(*event).or_insert(op.at);
                }
                OpKind::CheckpointSaved {
                    what: CheckpointWhat::Cursor,
                    position,
                    ..
                } => {
                    for (e, created_at) in &log.outbox {
                        if created_at < position {
                            assert!(
                                published.contains_key(e),
                                "{preset}: cursor {position} passed unpublished {e}"
                            );
                        }
                    }
                    checked += 1;
                }
                OpKind::CheckpointSaved {
                    what: CheckpointWhat::Stream(s),
                    position,
                    ..
                } => {
                    for (e, created_at) in log.by_stream.get(s).into_iter().flatten() {
                        if created_at < position && *created_at < op.at - Duration::from_secs(5) {
                            assert!(
                                published.contains_key(e),
                                "{preset}: stream {s} checkpoint {position} passed unpublished {e}"
                            );
                        }
                    }
                    checked += 1;
                }
                _ => {}
            }
        }
        assert!(checked > 10, "{preset}: checkpoints were saved ({checked})");
    }
}

struct LogIndex {
    outbox: Vec<(outbox_sim::model::EventId, Timestamp)>,
    by_stream: BTreeMap<StreamId, Vec<(outbox_sim::model::EventId, Timestamp)>>,
}

fn history_of(
    scenario: &Scenario,
    relay: outbox_sim::relay::AnyRelay,
    seed: u64,
) -> (Vec<outbox_sim::history::Op>, LogIndex) {
    let (report, sim) =
        outbox_sim::scenario::run_world(scenario, Rc::new(relay), Seed(seed)).unwrap();
    assert_eq!(format!("{:016x}", sim.history().digest()), report.digest);
    let cluster = sim.cluster();
    let state = cluster.state();
    let mut idx = LogIndex {
        outbox: Vec::new(),
        by_stream: BTreeMap::new(),
    };
    let all: Vec<StreamId> = state
        .topology
        .generations
        .iter()
        .flat_map(|g| g.streams())
        .collect();
    let page = state.log.read(
        &all,
        Timestamp::MIN.offset_micros(1),
        Timestamp::MAX,
        None,
        usize::MAX,
        sim.now(),
    );
    for row in page.rows {
        idx.outbox.push((row.event.id, row.event.created_at));
        idx.by_stream
            .entry(row.stream_id)
            .or_default()
            .push((row.event.id, row.time.timestamp()));
    }
    let ops = sim.history().ops().clone();
    (ops, idx)
}

#[test]
fn polling_cursor_is_saved_only_after_acks() {
    let mut sim = small_sim(27);
    start_workload(&sim, 30);
    let reads = Rc::new(RefCell::new(Vec::new()));
    let relay = Preset::PollSafe.relay(Duration::from_secs(1), Duration::from_secs(86_400));
    let broker = sim.broker();
    broker.set_down(true);
    let t0 = sim.now();
    sim.spawn("relay", relay.run(ctx(&sim, &reads, 1))).detach();
    sim.run_until(t0 + Duration::from_secs(60)).unwrap();
    assert_eq!(
        sim.cluster().state().checkpoints.cursor,
        None,
        "nothing acknowledged, nothing saved"
    );
    broker.set_down(false);
    sim.run_until(t0 + Duration::from_secs(400)).unwrap();
    let cursor: Cursor = sim
        .cluster()
        .state()
        .checkpoints
        .cursor
        .expect("saved after acks");
    let last_commit = sim
        .history()
        .ops()
        .iter()
        .filter_map(|o| match o.kind {
            OpKind::Committed { write_ts, .. } => Some(write_ts),
            _ => None,
        })
        .max()
        .unwrap();
    assert_eq!(
        cursor.created_at, last_commit,
        "the cursor ends on the last row"
    );
}

#[test]
fn compare_on_the_default_scenario_shows_what_the_issue_predicts() {
    let scenario = Scenario::default_scenario();
    let report = |p: Preset| {
        let relay = p.relay(scenario.visibility_bound(), scenario.cdc_ttl());
        run(&scenario, Rc::new(relay), Seed(1)).unwrap()
    };
    let naive = report(Preset::PollNaive);
    let safe = report(Preset::PollSafe);
    let default = report(Preset::StreamDefault);
    let checkpointed = report(Preset::StreamCheckpointed);
    let stream_safe = report(Preset::StreamSafe);
    let tuned = report(Preset::StreamTuned);
    assert!(naive.committed > 10_000);
    assert!(
        naive.lost > 0,
        "poll-naive loses rows under skew/visibility delay"
    );
    assert!(
        default.lost > 0,
        "stream-default loses what was written while it was down"
    );
    assert!(
        checkpointed.lost > 0,
        "stream-checkpointed too (scylla-cdc #120)"
    );
    for r in [&safe, &stream_safe, &tuned] {
        assert_eq!((r.lost, r.reordered, r.phantom), (0, 0, 0), "{}", r.relay);
    }
    assert!(
        default.latency_ms.p50 >= 30_000.0,
        "stream-default p50 {}",
        default.latency_ms.p50
    );
    assert!(
        tuned.latency_ms.p99 < 5_000.0,
        "stream-tuned p99 {}",
        tuned.latency_ms.p99
    );
    assert!(
        default.queries_per_min > 20.0 * safe.queries_per_min,
        "streams query far more than polling"
    );
    assert!(
        stream_safe.duplicated > 0,
        "restarts replay windows: at-least-once"
    );
}
