//! Faults: the scheduled ones a scenario lists (`[faults]`), and the swarm plans drawn from a
//! seed.
//!
//! A fault plan is data — lists of faults with times and intensities — so a failing plan can be
//! printed, pasted into a scenario file, and shrunk by removing or weakening entries. Swarm
//! testing (Groce et al.): each seed enables a random subset of fault kinds, each with random
//! times and intensities, so no single fault kind crowds out the interactions of the others.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::seed::{Seed, SimRng};

/// A relay crash at `at_s`, restarted `downtime_s` later.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayCrash {
    /// Seconds into the run.
    pub at_s: f64,
    /// Seconds the relay stays down.
    pub downtime_s: f64,
}

/// Named points at which a relay can be crashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A record was appended and acknowledged by the broker, before the relay saw the ack (and
    /// so before it could checkpoint it).
    AfterPublish,
    /// Between two rows of a CDC window, or of a polling page, that has more rows to go.
    MidWindow,
    /// When the relay fetches the streams of a generation other than the first it read.
    GenerationSwitch,
    /// Right after a checkpoint write succeeded.
    AfterCheckpoint,
}

impl Trigger {
    /// The trigger's name in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Trigger::AfterPublish => "after_publish",
            Trigger::MidWindow => "mid_window",
            Trigger::GenerationSwitch => "generation_switch",
            Trigger::AfterCheckpoint => "after_checkpoint",
        }
    }
}

/// A crash at a named trigger point: armed at `after_s`, fires at the `nth` hit after that.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrashTrigger {
    /// The trigger point.
    pub trigger: Trigger,
    /// Armed from this many seconds into the run.
    pub after_s: f64,
    /// Fires at this hit after arming (1 = the first).
    pub nth: u32,
    /// Seconds the relay stays down.
    pub downtime_s: f64,
}

/// What a topology change does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopologyKind {
    /// A node bootstraps.
    Join,
    /// The oldest node is decommissioned.
    Leave,
}

/// A topology change (→ a new CDC generation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyChange {
    /// Seconds into the run.
    pub at_s: f64,
    /// Join or leave.
    pub kind: TopologyKind,
}

/// A time window during which a fault holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Start, seconds into the run.
    pub at_s: f64,
    /// Length in seconds.
    pub duration_s: f64,
}

/// A window with a probability (read timeouts).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbabilityWindow {
    /// Start, seconds into the run.
    pub at_s: f64,
    /// Length in seconds.
    pub duration_s: f64,
    /// Probability per request.
    pub probability: f64,
}

/// Broker produce errors during a window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerErrors {
    /// Start, seconds into the run.
    pub at_s: f64,
    /// Length in seconds.
    pub duration_s: f64,
    /// Probability that an attempt fails retriably before appending.
    pub retriable_probability: f64,
    /// Probability that an appended attempt loses its acknowledgement.
    pub lost_ack_probability: f64,
}

/// Slow broker acknowledgements during a window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowAcks {
    /// Start, seconds into the run.
    pub at_s: f64,
    /// Length in seconds.
    pub duration_s: f64,
    /// Extra acknowledgement latency.
    pub ack_ms: i64,
}

/// Writes stamped in the past (`USING TIMESTAMP now − lateness`) during a window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LateWrites {
    /// Start, seconds into the run.
    pub at_s: f64,
    /// Length in seconds.
    pub duration_s: f64,
    /// Probability that a write is late.
    pub probability: f64,
    /// How far in the past a late write is stamped.
    pub lateness_ms: i64,
}

/// Every write in a window becomes readable only after an extra delay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationStall {
    /// Start, seconds into the run.
    pub at_s: f64,
    /// Length in seconds.
    pub duration_s: f64,
    /// Extra visibility delay.
    pub stall_ms: i64,
}

/// Scheduled faults (the `[faults]` table). Every window ends at the latest when the drain starts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Relay crashes at fixed times.
    pub relay_crashes: Vec<RelayCrash>,
    /// Relay crashes at named trigger points.
    pub crash_triggers: Vec<CrashTrigger>,
    /// Topology changes.
    pub topology_changes: Vec<TopologyChange>,
    /// Windows in which the cluster answers `Unavailable`.
    pub db_outages: Vec<Window>,
    /// Windows in which reads time out with some probability.
    pub read_timeouts: Vec<ProbabilityWindow>,
    /// Windows in which the broker is down.
    pub broker_outages: Vec<Window>,
    /// Windows of produce errors.
    pub broker_errors: Vec<BrokerErrors>,
    /// Windows of slow acknowledgements.
    pub slow_acks: Vec<SlowAcks>,
    /// Windows of late (back-dated) writes.
    pub late_writes: Vec<LateWrites>,
    /// Windows of replication stalls.
    pub replication_stalls: Vec<ReplicationStall>,
}

impl Faults {
    /// Number of fault entries (the size of a plan).
    pub fn len(&self) -> usize {
        self.relay_crashes.len()
            + self.crash_triggers.len()
            + self.topology_changes.len()
            + self.db_outages.len()
            + self.read_timeouts.len()
            + self.broker_outages.len()
            + self.broker_errors.len()
            + self.slow_acks.len()
            + self.late_writes.len()
            + self.replication_stalls.len()
    }

    /// Whether the plan has no fault.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every plan with exactly one entry removed (the first shrinking step).
    pub fn without_one(&self) -> Vec<Faults> {
        let mut out = Vec::new();
        macro_rules! each {
            ($($field:ident),*) => {$(
                for i in 0..self.$field.len() {
                    let mut f = self.clone();
                    f.$field.remove(i);
                    out.push(f);
                }
            )*};
        }
        each!(
            relay_crashes,
            crash_triggers,
            topology_changes,
            db_outages,
            read_timeouts,
            broker_outages,
            broker_errors,
            slow_acks,
            late_writes,
            replication_stalls
        );
        out
    }

    /// Every plan with one entry weakened: durations and downtimes halved, probabilities halved
    /// (the second shrinking step). Entries already small are left alone.
    pub fn weakened(&self) -> Vec<Faults> {
        let mut out = Vec::new();
        let half = |v: f64, min: f64| if v / 2.0 >= min { Some(v / 2.0) } else { None };
        for i in 0..self.relay_crashes.len() {
            if let Some(d) = half(self.relay_crashes[i].downtime_s, 1.0) {
                let mut f = self.clone();
                f.relay_crashes[i].downtime_s = d;
                out.push(f);
            }
        }
        for i in 0..self.crash_triggers.len() {
            if let Some(d) = half(self.crash_triggers[i].downtime_s, 1.0) {
                let mut f = self.clone();
                f.crash_triggers[i].downtime_s = d;
                out.push(f);
            }
        }
        macro_rules! window {
            ($field:ident) => {
                for i in 0..self.$field.len() {
                    if let Some(d) = half(self.$field[i].duration_s, 1.0) {
                        let mut f = self.clone();
                        f.$field[i].duration_s = d;
                        out.push(f);
                    }
                }
            };
        }
        window!(db_outages);
        window!(read_timeouts);
        window!(broker_outages);
        window!(broker_errors);
        window!(slow_acks);
        window!(late_writes);
        window!(replication_stalls);
        out
    }
}

impl Faults {
    /// Checks every entry against a write phase of `duration_s` seconds; the error names the
    /// field (relative to `faults.`) and the reason.
    pub fn validate(&self, duration_s: f64) -> Result<(), (String, String)> {
        let secs = |field: String, v: f64| -> Result<(), (String, String)> {
            if !v.is_finite() || v < 0.0 {
                return Err((
                    field,
                    format!("must be a non-negative number of seconds, got {v}"),
                ));
            }
            Ok(())
        };
        let within = |field: String, at: f64| -> Result<(), (String, String)> {
            secs(field.clone(), at)?;
            if at >= duration_s {
                return Err((
                    field,
                    format!("{at} s is not inside the write phase (duration_s = {duration_s})"),
                ));
            }
            Ok(())
        };
        let probability = |field: String, p: f64| -> Result<(), (String, String)> {
            if !(0.0..=1.0).contains(&p) {
                return Err((field, format!("must be within [0, 1], got {p}")));
            }
            Ok(())
        };
        let non_negative = |field: String, v: i64| -> Result<(), (String, String)> {
            if v < 0 {
                return Err((field, format!("must not be negative, got {v}")));
            }
            Ok(())
        };
        for (i, c) in self.relay_crashes.iter().enumerate() {
            within(format!("relay_crashes[{i}].at_s"), c.at_s)?;
            secs(format!("relay_crashes[{i}].downtime_s"), c.downtime_s)?;
        }
        for (i, c) in self.crash_triggers.iter().enumerate() {
            within(format!("crash_triggers[{i}].after_s"), c.after_s)?;
            secs(format!("crash_triggers[{i}].downtime_s"), c.downtime_s)?;
            if c.nth == 0 {
                return Err((
                    format!("crash_triggers[{i}].nth"),
                    "must be at least 1".into(),
                ));
            }
        }
        for (i, t) in self.topology_changes.iter().enumerate() {
            within(format!("topology_changes[{i}].at_s"), t.at_s)?;
        }
        for (name, windows) in [
            ("db_outages", &self.db_outages),
            ("broker_outages", &self.broker_outages),
        ] {
            for (i, w) in windows.iter().enumerate() {
                within(format!("{name}[{i}].at_s"), w.at_s)?;
                secs(format!("{name}[{i}].duration_s"), w.duration_s)?;
            }
        }
        for (i, w) in self.read_timeouts.iter().enumerate() {
            within(format!("read_timeouts[{i}].at_s"), w.at_s)?;
            secs(format!("read_timeouts[{i}].duration_s"), w.duration_s)?;
            probability(format!("read_timeouts[{i}].probability"), w.probability)?;
        }
        for (i, w) in self.broker_errors.iter().enumerate() {
            within(format!("broker_errors[{i}].at_s"), w.at_s)?;
            secs(format!("broker_errors[{i}].duration_s"), w.duration_s)?;
            probability(
                format!("broker_errors[{i}].retriable_probability"),
                w.retriable_probability,
            )?;
            probability(
                format!("broker_errors[{i}].lost_ack_probability"),
                w.lost_ack_probability,
            )?;
        }
        for (i, w) in self.slow_acks.iter().enumerate() {
            within(format!("slow_acks[{i}].at_s"), w.at_s)?;
            secs(format!("slow_acks[{i}].duration_s"), w.duration_s)?;
            non_negative(format!("slow_acks[{i}].ack_ms"), w.ack_ms)?;
        }
        for (i, w) in self.late_writes.iter().enumerate() {
            within(format!("late_writes[{i}].at_s"), w.at_s)?;
            secs(format!("late_writes[{i}].duration_s"), w.duration_s)?;
            probability(format!("late_writes[{i}].probability"), w.probability)?;
            non_negative(format!("late_writes[{i}].lateness_ms"), w.lateness_ms)?;
        }
        for (i, w) in self.replication_stalls.iter().enumerate() {
            within(format!("replication_stalls[{i}].at_s"), w.at_s)?;
            secs(format!("replication_stalls[{i}].duration_s"), w.duration_s)?;
            non_negative(format!("replication_stalls[{i}].stall_ms"), w.stall_ms)?;
        }
        Ok(())
    }
}

/// Draws a swarm plan for a write phase of `duration_s` seconds: a random subset of fault kinds,
/// each with one to three entries at random times and intensities.
pub fn swarm(seed: Seed, duration_s: f64) -> Faults {
    let mut rng = seed.rng("swarm");
    let mut f = Faults::default();
    let d = duration_s;
    let at = |rng: &mut SimRng, from: f64| rng.random_range(from.min(d * 0.9)..d * 0.9);
    let count = |rng: &mut SimRng| rng.random_range(1..=3usize);
    if rng.random_bool(0.6) {
        for _ in 0..count(&mut rng) {
            f.relay_crashes.push(RelayCrash {
                at_s: at(&mut rng, 5.0),
                downtime_s: rng.random_range(1.0..60.0),
            });
        }
    }
    if rng.random_bool(0.5) {
        let triggers = [
            Trigger::AfterPublish,
            Trigger::MidWindow,
            Trigger::GenerationSwitch,
            Trigger::AfterCheckpoint,
        ];
        for _ in 0..count(&mut rng) {
            let trigger = triggers[rng.random_range(0..triggers.len())];
            f.crash_triggers.push(CrashTrigger {
                trigger,
                after_s: at(&mut rng, 0.0),
                nth: rng.random_range(1..=20),
                downtime_s: rng.random_range(0.5..30.0),
            });
        }
    }
    if rng.random_bool(0.5) {
        // One change, or several in quick succession.
        let first = at(&mut rng, 5.0);
        for i in 0..count(&mut rng) {
            let kind = if rng.random_bool(0.75) {
                TopologyKind::Join
            } else {
                TopologyKind::Leave
            };
            f.topology_changes.push(TopologyChange {
                at_s: (first + 3.0 * i as f64).min(d * 0.95),
                kind,
            });
        }
    }
    if rng.random_bool(0.3) {
        for _ in 0..count(&mut rng) {
            f.db_outages.push(Window {
                at_s: at(&mut rng, 5.0),
                duration_s: rng.random_range(1.0..30.0),
            });
        }
    }
    if rng.random_bool(0.3) {
        f.read_timeouts.push(ProbabilityWindow {
            at_s: at(&mut rng, 0.0),
            duration_s: rng.random_range(5.0..60.0),
            probability: rng.random_range(0.05..0.5),
        });
    }
    if rng.random_bool(0.3) {
        f.broker_outages.push(Window {
            at_s: at(&mut rng, 5.0),
            duration_s: rng.random_range(1.0..40.0),
        });
    }
    if rng.random_bool(0.3) {
        f.broker_errors.push(BrokerErrors {
            at_s: at(&mut rng, 0.0),
            duration_s: rng.random_range(5.0..60.0),
            retriable_probability: rng.random_range(0.0..0.5),
            lost_ack_probability: rng.random_range(0.0..0.3),
        });
    }
    if rng.random_bool(0.2) {
        f.slow_acks.push(SlowAcks {
            at_s: at(&mut rng, 0.0),
            duration_s: rng.random_range(5.0..60.0),
            ack_ms: rng.random_range(10..2_000),
        });
    }
    if rng.random_bool(0.3) {
        f.late_writes.push(LateWrites {
            at_s: at(&mut rng, 5.0),
            duration_s: rng.random_range(5.0..40.0),
            probability: rng.random_range(0.01..0.3),
            lateness_ms: rng.random_range(10..4_000),
        });
    }
    if rng.random_bool(0.3) {
        f.replication_stalls.push(ReplicationStall {
            at_s: at(&mut rng, 0.0),
            duration_s: rng.random_range(1.0..20.0),
            stall_ms: rng.random_range(100..4_000),
        });
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swarm_plans_vary_by_seed_and_replay_exactly() {
        let a = swarm(Seed(1), 180.0);
        assert_eq!(a, swarm(Seed(1), 180.0));
        let sizes: Vec<usize> = (0..50).map(|s| swarm(Seed(s), 180.0).len()).collect();
        assert!(sizes.contains(&0) || sizes.iter().min() < sizes.iter().max());
        let kinds_seen = (0..200)
            .map(|s| swarm(Seed(s), 180.0))
            .fold([false; 10], |mut k, f| {
                k[0] |= !f.relay_crashes.is_empty();
                k[1] |= !f.crash_triggers.is_empty();
                k[2] |= !f.topology_changes.is_empty();
                k[3] |= !f.db_outages.is_empty();
                k[4] |= !f.read_timeouts.is_empty();
                k[5] |= !f.broker_outages.is_empty();
                k[6] |= !f.broker_errors.is_empty();
                k[7] |= !f.slow_acks.is_empty();
                k[8] |= !f.late_writes.is_empty();
                k[9] |= !f.replication_stalls.is_empty();
                k
            });
        assert_eq!(
            kinds_seen, [true; 10],
            "every fault kind appears within 200 seeds"
        );
    }

    #[test]
    fn shrinking_steps_make_plans_smaller_or_weaker() {
        let plan = swarm(Seed(3), 180.0);
        for smaller in plan.without_one() {
            assert_eq!(smaller.len() + 1, plan.len());
        }
        for weaker in plan.weakened() {
            assert_eq!(weaker.len(), plan.len());
            assert_ne!(weaker, plan);
        }
    }
}
