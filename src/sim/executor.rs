//! The deterministic runtime: a single-threaded executor driven by the virtual clock.
//!
//! The loop is turmoil's: run every runnable task until none is left, then move the clock to the
//! next timer and wake it. Time therefore moves only when nothing is runnable, and a run is a
//! pure function of the tasks and the seed they draw from. A step budget (polls of tasks) turns a
//! hang — a task that yields forever, or a relay that never lets time move — into an error naming
//! the timers still armed.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

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
    /// The label's number with the clock.
    label: u32,
    clock: SimClock,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for Labeled<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let prev = self.clock.set_current_label(self.label);
        let out = self.inner.as_mut().poll(cx);
        self.clock.set_current_label(prev);
        out
    }
}

/// A task is idle (waiting for a wake-up).
const IDLE: u8 = 0;
/// A task is in the run queue.
const SCHEDULED: u8 = 1;
/// A task is being polled.
const RUNNING: u8 = 2;
/// A task finished or was cancelled; wake-ups are ignored.
const DONE: u8 = 4;

/// The run queue, shared with every task's waker.
#[derive(Default)]
struct RunQueue {
    ids: Mutex<VecDeque<usize>>,
}

/// A task's waker: puts the task at the back of the run queue, once.
///
/// The schedule is async-task's (what smol's executors use), so a run is the same poll for
/// poll: a wake-up while the task is queued is absorbed; one while it is being polled puts it
/// back in the queue after that poll returns, behind whatever the poll woke.
struct TaskWaker {
    id: usize,
    state: AtomicU8,
    queue: Arc<RunQueue>,
}

impl TaskWaker {
    fn push(&self) {
        self.queue
            .ids
            .lock()
            .expect("run queue lock")
            .push_back(self.id);
    }

    /// Marks the task scheduled; queues it if it was idle.
    fn schedule(&self) {
        let prev = self.state.fetch_or(SCHEDULED, Ordering::AcqRel);
        if prev & (SCHEDULED | RUNNING | DONE) == 0 {
            self.push();
        }
    }
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.schedule();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.schedule();
    }
}

/// What a task's handle and the task share: the output, once ready, and who awaits it.
struct JoinState<T> {
    output: Option<T>,
    finished: bool,
    awaiter: Option<Waker>,
}

/// A spawned task's future, with its waker.
struct Slot {
    future: Option<Pin<Box<dyn Future<Output = ()>>>>,
    task: Arc<TaskWaker>,
    /// `task` as a waker, built once (a poll borrows it; no reference count per poll).
    waker: Waker,
    /// The handle was dropped without [`Task::detach`]: drop the future at its next turn.
    cancelled: Rc<std::cell::Cell<bool>>,
}

#[derive(Default)]
struct Tasks {
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
}

/// The handle of a spawned task: await it (or [`SimExecutor::block_on`] it) for the output.
/// Dropping it cancels the task at its current await point, which is how a relay crash is
/// modelled; [`detach`](Task::detach) lets the task run on unobserved.
#[must_use = "dropping a task cancels it; call detach() to let it run"]
pub struct Task<T> {
    join: Rc<RefCell<JoinState<T>>>,
    cancelled: Rc<std::cell::Cell<bool>>,
    waker: Arc<TaskWaker>,
    detached: bool,
}

impl<T> std::fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("id", &self.waker.id)
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T> Task<T> {
    /// Lets the task run to completion without a handle.
    pub fn detach(mut self) {
        self.detached = true;
    }

    /// Whether the task has finished.
    pub fn is_finished(&self) -> bool {
        self.join.borrow().finished
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        if !self.detached && !self.join.borrow().finished {
            self.cancelled.set(true);
            self.waker.schedule();
        }
    }
}

impl<T> Future for Task<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut j = self.join.borrow_mut();
        match j.output.take() {
            Some(v) => Poll::Ready(v),
            None => {
                assert!(!j.finished, "a task's output is taken once");
                j.awaiter = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// The single-threaded executor plus its clock and step budget.
pub struct SimExecutor {
    queue: Arc<RunQueue>,
    tasks: RefCell<Tasks>,
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
            queue: Arc::default(),
            tasks: RefCell::default(),
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
        let join = Rc::new(RefCell::new(JoinState {
            output: None,
            finished: false,
            awaiter: None,
        }));
        let labeled = Labeled {
            label: self.clock.register_label(label),
            clock: self.clock.clone(),
            inner: Box::pin(fut),
        };
        let j = join.clone();
        let future = Box::pin(async move {
            let v = labeled.await;
            let awaiter = {
                let mut j = j.borrow_mut();
                j.output = Some(v);
                j.finished = true;
                j.awaiter.take()
            };
            if let Some(w) = awaiter {
                w.wake();
            }
        });
        let cancelled = Rc::new(std::cell::Cell::new(false));
        let mut tasks = self.tasks.borrow_mut();
        let id = tasks.free.pop().unwrap_or(tasks.slots.len());
        let waker = Arc::new(TaskWaker {
            id,
            state: AtomicU8::new(IDLE),
            queue: self.queue.clone(),
        });
        let slot = Slot {
            future: Some(future),
            task: waker.clone(),
            waker: Waker::from(waker.clone()),
            cancelled: cancelled.clone(),
        };
        if id == tasks.slots.len() {
            tasks.slots.push(Some(slot));
        } else {
            tasks.slots[id] = Some(slot);
        }
        // Queued at once, as smol's executors do.
        waker.schedule();
        Task {
            join,
            cancelled,
            waker,
            detached: false,
        }
    }

    /// Polls the task at the front of the run queue, if any (dropping it instead if its handle
    /// cancelled it). Returns whether a task was polled.
    fn try_tick(&mut self) -> bool {
        let Some(id) = self.queue.ids.lock().expect("run queue lock").pop_front() else {
            return false;
        };
        let tasks = self.tasks.get_mut();
        let slot = tasks.slots[id].as_mut().expect("a queued task exists");
        if slot.cancelled.get() {
            slot.task.state.store(DONE, Ordering::Release);
            let slot = tasks.slots[id].take();
            tasks.free.push(id);
            drop(slot);
            return true;
        }
        let mut future = slot.future.take().expect("a queued task is not running");
        slot.task.state.store(RUNNING, Ordering::Release);
        let poll = future.as_mut().poll(&mut Context::from_waker(&slot.waker));
        match poll {
            Poll::Ready(()) => {
                slot.task.state.store(DONE, Ordering::Release);
                tasks.slots[id] = None;
                tasks.free.push(id);
                drop(future);
            }
            Poll::Pending => {
                slot.future = Some(future);
                let prev = slot.task.state.fetch_and(!RUNNING, Ordering::AcqRel);
                if prev & SCHEDULED != 0 {
                    // Woken while it ran: back in the queue, behind what it woke.
                    slot.task.push();
                }
            }
        }
        true
    }

    /// Runs every runnable task until none is left.
    fn run_ready(&mut self) -> Result<(), RuntimeError> {
        let mut at_this_instant = 0u64;
        while self.try_tick() {
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

    /// async-task's schedule: a task that wakes another and then itself during one poll runs
    /// again after the other; a wake-up of a task already queued is absorbed.
    #[test]
    fn a_task_woken_while_running_is_queued_behind_what_it_woke() {
        let clock = SimClock::new(Timestamp(0));
        let mut ex = SimExecutor::new(clock, 1_000);
        let log = Rc::new(RefCell::new(Vec::new()));
        let (tx, rx) = async_channel::unbounded::<u32>();
        let l = log.clone();
        ex.spawn("b", async move {
            while let Ok(n) = rx.recv().await {
                l.borrow_mut().push(format!("b{n}"));
            }
        })
        .detach();
        let l = log.clone();
        let a = ex.spawn("a", async move {
            for n in 0..3 {
                l.borrow_mut().push(format!("a{n}"));
                // Two sends, two wake-ups of `b`: it runs once for both.
                tx.send(n).await.unwrap();
                tx.send(n + 10).await.unwrap();
                futures_lite::future::yield_now().await;
            }
        });
        ex.block_on(a).unwrap();
        assert_eq!(
            *log.borrow(),
            ["a0", "b0", "b10", "a1", "b1", "b11", "a2", "b2", "b12"]
        );
        // b parks on recv; a and b alternate three times; a finishes, dropping the sender; b
        // sees the channel closed. Had the second send queued b twice, b would run 3 times more.
        assert_eq!(ex.steps(), 1 + 3 + 3 + 1 + 1);
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
