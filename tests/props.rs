//! Property tests over random fault plans: the safe presets never show an anomaly. proptest
//! generates the plan (crashes, trigger crashes, topology changes, outages, broker errors, late
//! writes, stalls), shrinks a failing one to a minimal plan, and persists it under
//! `fixtures/proptest-regressions/` so the next `cargo test` replays it first.

use std::rc::Rc;

use outbox_sim::relay::Preset;
use outbox_sim::scenario::faults::{
    BrokerErrors, CrashTrigger, Faults, LateWrites, ProbabilityWindow, RelayCrash,
    ReplicationStall, SlowAcks, TopologyChange, TopologyKind, Trigger, Window,
};
use outbox_sim::scenario::{Scenario, run};
use outbox_sim::seed::Seed;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

const DURATION_S: f64 = 60.0;

fn base() -> Scenario {
    let mut s = outbox_sim::hunt::hunt_scenario();
    s.name = "props".into();
    s.duration_s = DURATION_S;
    s.drain_s = 150.0;
    s.cluster.vnodes_per_node = 8;
    s.workload.orders_per_s = 10.0;
    s
}

#[derive(Clone, Debug)]
enum Entry {
    Crash(RelayCrash),
    Trigger(CrashTrigger),
    Topology(TopologyChange),
    DbOutage(Window),
    ReadTimeouts(ProbabilityWindow),
    BrokerOutage(Window),
    BrokerErrors(BrokerErrors),
    SlowAcks(SlowAcks),
    Late(LateWrites),
    Stall(ReplicationStall),
}

fn at() -> impl Strategy<Value = f64> {
    0.0..DURATION_S * 0.95
}

fn entry() -> impl Strategy<Value = Entry> {
    let trigger = prop_oneof![
        Just(Trigger::AfterPublish),
        Just(Trigger::MidWindow),
        Just(Trigger::GenerationSwitch),
        Just(Trigger::AfterCheckpoint)
    ];
    prop_oneof![
        (at(), 0.5..40.0)
            .prop_map(|(at_s, downtime_s)| Entry::Crash(RelayCrash { at_s, downtime_s })),
        (trigger, at(), 1u32..15, 0.5..20.0).prop_map(|(trigger, after_s, nth, downtime_s)| {
            Entry::Trigger(CrashTrigger {
                trigger,
                after_s,
                nth,
                downtime_s,
            })
        }),
        (at(), any::<bool>()).prop_map(|(at_s, join)| Entry::Topology(TopologyChange {
            at_s,
            kind: if join {
                TopologyKind::Join
            } else {
                TopologyKind::Leave
            }
        })),
        (at(), 0.5..20.0)
            .prop_map(|(at_s, duration_s)| Entry::DbOutage(Window { at_s, duration_s })),
        (at(), 1.0..30.0, 0.01..0.6).prop_map(|(at_s, duration_s, probability)| {
            Entry::ReadTimeouts(ProbabilityWindow {
                at_s,
                duration_s,
                probability,
            })
        }),
        (at(), 0.5..20.0)
            .prop_map(|(at_s, duration_s)| Entry::BrokerOutage(Window { at_s, duration_s })),
        (at(), 1.0..30.0, 0.0..0.5, 0.0..0.4).prop_map(|(at_s, duration_s, r, l)| {
            Entry::BrokerErrors(BrokerErrors {
                at_s,
                duration_s,
                retriable_probability: r,
                lost_ack_probability: l,
            })
        }),
        (at(), 1.0..30.0, 1i64..2_000).prop_map(|(at_s, duration_s, ack_ms)| Entry::SlowAcks(
            SlowAcks {
                at_s,
                duration_s,
                ack_ms
            }
        )),
        (at(), 1.0..30.0, 0.01..0.5, 1i64..4_000).prop_map(
            |(at_s, duration_s, probability, lateness_ms)| {
                Entry::Late(LateWrites {
                    at_s,
                    duration_s,
                    probability,
                    lateness_ms,
                })
            }
        ),
        (at(), 0.5..10.0, 10i64..4_000).prop_map(|(at_s, duration_s, stall_ms)| {
            Entry::Stall(ReplicationStall {
                at_s,
                duration_s,
                stall_ms,
            })
        }),
    ]
}

fn plan() -> impl Strategy<Value = Faults> {
    proptest::collection::vec(entry(), 0..6).prop_map(|entries| {
        let mut f = Faults::default();
        for e in entries {
            match e {
                Entry::Crash(x) => f.relay_crashes.push(x),
                Entry::Trigger(x) => f.crash_triggers.push(x),
                Entry::Topology(x) => f.topology_changes.push(x),
                Entry::DbOutage(x) => f.db_outages.push(x),
                Entry::ReadTimeouts(x) => f.read_timeouts.push(x),
                Entry::BrokerOutage(x) => f.broker_outages.push(x),
                Entry::BrokerErrors(x) => f.broker_errors.push(x),
                Entry::SlowAcks(x) => f.slow_acks.push(x),
                Entry::Late(x) => f.late_writes.push(x),
                Entry::Stall(x) => f.replication_stalls.push(x),
            }
        }
        f
    })
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/proptest-regressions/props.txt"
        )))),
        ..ProptestConfig::default()
    }
}

fn check(preset: Preset, faults: Faults, seed: u64) -> Result<(), TestCaseError> {
    let scenario = Scenario { faults, ..base() };
    scenario
        .validate()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let relay = preset.relay(scenario.visibility_bound(), scenario.cdc_ttl());
    let r = run(&scenario, Rc::new(relay), Seed(seed))
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(
        !r.failed(),
        "{preset} seed {seed}: {}",
        r.first_failure()
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    Ok(())
}

proptest! {
    #![proptest_config(config(86))]

    #[test]
    fn poll_safe_never_shows_an_anomaly(faults in plan(), seed in 0u64..1_000_000) {
        check(Preset::PollSafe, faults, seed)?;
    }

    #[test]
    fn stream_safe_never_shows_an_anomaly(faults in plan(), seed in 0u64..1_000_000) {
        check(Preset::StreamSafe, faults, seed)?;
    }

    #[test]
    fn stream_tuned_never_shows_an_anomaly(faults in plan(), seed in 0u64..1_000_000) {
        check(Preset::StreamTuned, faults, seed)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    /// The checker is not vacuous: under the same plans plus one crash, the library-default
    /// stream relay loses rows whenever the crash happened.
    #[test]
    fn stream_default_loses_rows_after_a_crash(faults in plan(), seed in 0u64..1_000_000, at_s in 5.0..50.0f64) {
        let mut faults = faults;
        faults.relay_crashes.push(RelayCrash { at_s, downtime_s: 10.0 });
        let scenario = Scenario { faults, ..base() };
        let relay = Preset::StreamDefault.relay(scenario.visibility_bound(), scenario.cdc_ttl());
        let r = run(&scenario, Rc::new(relay), Seed(seed)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(r.lost > 0, "stream-default kept everything across a crash: {:?}", r.coverage);
    }
}
