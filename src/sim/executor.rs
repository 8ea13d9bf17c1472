//! The deterministic runtime: a single-threaded smol executor driven by the virtual clock.
//!
//! The loop is turmoil's: run every runnable task until none is left, then move the clock to the
//! next timer and wake it. Time therefore moves only when nothing is runnable, and a run is a
//! pure function of the tasks and the seed they draw from. A step budget (polls of tasks) turns a
//! hang — a task that yields forever, or a relay that never lets time move — into an error naming
//! the timers still armed.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use async_executor::{LocalExecutor, Task};

use crate::model::Timestamp;
use crate::sim::clock::SimClock;

/// Polls allowed without time moving: more means some task is spinning (e.g. a zero-length sleep
/// in a loop), which no amount of simulated time would end.
pub const MAX_STEPS_PER_INSTANT: u64 = 20_000_000;

/// Why the runtime stopped before the awaited work completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeError {
    /// More task polls than the budget allows; the work is spinning.
    StepBudgetExceeded {
        /// Polls run.
        steps: u64,
        /// Simulated time when the budget ran out.
        now: Timestamp,
        /// Armed timers `(deadline, task label)`.
        waiting: Vec<(Timestamp, String)>,
    },
    /// Nothing runnable and no timer armed, yet the awaited task is not finished: it waits on
    /// something that will never happen.
    Stalled {
        /// Simulated time of the stall.
        now: Timestamp,
    },
}

impl std::fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuntimeError::StepBudgetExceeded {
                steps,
                now,
                waiting,
            } => {
                write!(
                    f,
                    "step budget exceeded after {steps} polls at {now}; armed timers: "
                )?;
                if waiting.is_empty() {
                    f.write_str("none")?;
                }
                for (i, (t, label)) in waiting.iter().take(10).enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{label} at {t}")?;
                }
                if waiting.len() > 10 {
                    write!(f, ", … {} more", waiting.len() - 10)?;
                }
                Ok(())
            }
            RuntimeError::Stalled { now } => {
                write!(f, "stalled at {now}: no task runnable and no timer armed")
            }
        }
    }
}

impl std::error::Error for RuntimeError {}

/// Wraps a task's future so timers it arms carry its label.
struct Labeled<F> {
    label: Rc<str>,
    clock: SimClock,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for Labeled<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let prev = self.clock.set_current_label(self.label.clone());
        let out = self.inner.as_mut().poll(cx);
        self.clock.set_current_label(prev);
        out
    }
}

/// The single-threaded executor plus its clock and step budget.
pub struct SimExecutor {
    ex: Rc<LocalExecutor<'static>>,
    clock: SimClock,
    steps: u64,
    step_budget: u64,
}

impl std::fmt::Debug for SimExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimExecutor")
            .field("clock", &self.clock)
            .field("steps", &self.steps)
            .field("step_budget", &self.step_budget)
            .finish()
    }
}

impl SimExecutor {
    /// An executor on `clock` that fails after `step_budget` task polls in total.
    pub fn new(clock: SimClock, step_budget: u64) -> Self {
        SimExecutor {
            ex: Rc::new(LocalExecutor::new()),
            clock,
            steps: 0,
            step_budget,
        }
    }

    /// The clock this executor drives.
    pub fn clock(&self) -> &SimClock {
        &self.clock
    }

    /// Task polls so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Spawns a labelled task. Dropping the returned [`Task`] cancels it at its current await
    /// point, which is how a relay crash is modelled.
    pub fn spawn<T: 'static>(
        &self,
        label: &str,
        fut: impl Future<Output = T> + 'static,
    ) -> Task<T> {
        self.ex.spawn(Labeled {
            label: Rc::from(label),
            clock: self.clock.clone(),
            inner: Box::pin(fut),
        })
    }

    /// Runs every runnable task until none is left.
    fn run_ready(&mut self) -> Result<(), RuntimeError> {
        let mut at_this_instant = 0u64;
        while self.ex.try_tick() {
            self.steps += 1;
            at_this_instant += 1;
            if self.steps > self.step_budget || at_this_instant > MAX_STEPS_PER_INSTANT {
                return Err(RuntimeError::StepBudgetExceeded {
                    steps: self.steps,
                    now: self.clock.now(),
                    waiting: self.clock.armed_timers(),
                });
            }
        }
        Ok(())
    }

    /// Runs all tasks until simulated time reaches `deadline`, then leaves the clock at exactly
    /// `deadline` (tasks keep their state and continue on the next call).
    pub fn run_until(&mut self, deadline: Timestamp) -> Result<(), RuntimeError> {
        loop {
            self.run_ready()?;
            if self.clock.advance(deadline).is_none() {
                if self.clock.now() < deadline {
                    self.clock.jump_to(deadline);
                }
                return self.run_ready();
            }
        }
    }

    /// Runs until `task` completes and returns its output, or fails with a stall or the budget.
    pub fn block_on<T: 'static>(&mut self, mut task: Task<T>) -> Result<T, RuntimeError> {
        loop {
            self.run_ready()?;
            if task.is_finished() {
                let waker = futures::task::noop_waker();
                let mut cx = Context::from_waker(&waker);
                match Pin::new(&mut task).poll(&mut cx) {
                    Poll::Ready(v) => return Ok(v),
                    Poll::Pending => unreachable!("a finished task is ready"),
                }
            }
            if self.clock.advance(Timestamp::MAX).is_none() {
                return Err(RuntimeError::Stalled {
                    now: self.clock.now(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::Clock;
    use std::cell::RefCell;
    use std::time::Duration;

    #[test]
    fn time_moves_only_when_idle_and_timers_fire_in_order() {
        let clock = SimClock::new(Timestamp(0));
        let mut ex = SimExecutor::new(clock.clone(), 1_000);
        let log = Rc::new(RefCell::new(Vec::new()));
        for (name, ms) in [("b", 20u64), ("a", 10), ("c", 20)] {
            let (c, l) = (clock.clone(), log.clone());
            ex.spawn(name, async move {
                c.sleep(Duration::from_millis(ms)).await;
                l.borrow_mut().push((name, c.now()));
            })
            .detach();
        }
        ex.run_until(Timestamp(1_000_000)).unwrap();
        assert_eq!(
            *log.borrow(),
            vec![
                ("a", Timestamp(10_000)),
                ("b", Timestamp(20_000)),
                ("c", Timestamp(20_000))
            ]
        );
        assert_eq!(clock.now(), Timestamp(1_000_000));
    }

    #[test]
    fn a_spinning_task_exhausts_the_budget_and_names_the_waiting_timers() {
        let clock = SimClock::new(Timestamp(0));
        let mut ex = SimExecutor::new(clock.clone(), 100);
        let c = clock.clone();
        ex.spawn(
            "sleeper",
            async move { c.sleep(Duration::from_secs(5)).await },
        )
        .detach();
        let spin = ex.spawn("spinner", async {
            loop {
                futures_lite::future::yield_now().await;
            }
        });
        let err = ex.block_on(spin).unwrap_err();
        match &err {
            RuntimeError::StepBudgetExceeded { waiting, .. } => {
                assert_eq!(
                    waiting,
                    &vec![(Timestamp(5_000_000), "sleeper".to_string())]
                );
            }
            other => panic!("expected budget error, got {other:?}"),
        }
        assert!(err.to_string().contains("sleeper at "), "{err}");
    }

    #[test]
    fn a_task_waiting_on_nothing_is_reported_as_stalled() {
        let clock = SimClock::new(Timestamp(0));
        let mut ex = SimExecutor::new(clock, 100);
        let (_tx, rx) = async_channel::bounded::<()>(1);
        let t = ex.spawn("waiter", async move { rx.recv().await.ok() });
        assert_eq!(
            ex.block_on(t).unwrap_err(),
            RuntimeError::Stalled { now: Timestamp(0) }
        );
    }

    #[test]
    fn dropping_a_task_disarms_its_timers() {
        let clock = SimClock::new(Timestamp(0));
        let mut ex = SimExecutor::new(clock.clone(), 100);
        let c = clock.clone();
        let t = ex.spawn(
            "victim",
            async move { c.sleep(Duration::from_secs(1)).await },
        );
        ex.run_until(Timestamp(10)).unwrap();
        assert_eq!(clock.armed_timers().len(), 1);
        drop(t);
        ex.run_until(Timestamp(10)).unwrap(); // the executor drops the cancelled future
        assert!(clock.armed_timers().is_empty());
        assert_eq!(clock.next_deadline(), None);
    }
}
