//! The virtual clock and its timer queue.
//!
//! [`SimClock`] owns simulated time. Sleeping registers a timer; nothing moves time except
//! [`SimClock::advance`], which the executor calls only when no task is runnable. Timers that
//! share a deadline fire in registration order, so wake-ups are a pure function of the program.
//! Every timer remembers the label of the task that armed it, so a hang can name who was
//! waiting.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::model::Timestamp;
use crate::ports::{Clock, SleepFuture};

struct Timer {
    /// Registration number: orders timers that share a deadline, and tells a slot's current
    /// timer from an earlier one whose queue entry is still in the heap.
    id: u64,
    deadline: Timestamp,
    waker: Waker,
    /// The arming task's label, an index into `State::labels`.
    label: u32,
}

/// Where an armed timer lives: its slot and registration number.
type TimerRef = (u32, u64);

struct State {
    now: Timestamp,
    next_id: u64,
    /// Timers by deadline, each deadline's in registration order as (registration number,
    /// slot); entries of cancelled timers are skipped. Many timers share a deadline (a page of
    /// publishes acknowledged together), so they are queued and fired as one bucket.
    queue: VecDeque<(Timestamp, VecDeque<(u64, u32)>)>,
    /// Emptied buckets, reused.
    spare: Vec<VecDeque<(u64, u32)>>,
    /// Armed timers in reusable slots (no hashing on the hot path).
    slots: Vec<Option<Timer>>,
    free: Vec<u32>,
    armed: usize,
    /// Task labels, registered once per task; timers refer to them by index.
    labels: Vec<Rc<str>>,
    current_label: u32,
    /// Wakers of the timers `advance` fires, reused between calls.
    due: Vec<Waker>,
}

/// Whether the timer `r` is still armed.
fn is_armed(slots: &[Option<Timer>], (slot, id): TimerRef) -> bool {
    slots[slot as usize].as_ref().is_some_and(|t| t.id == id)
}

impl State {
    /// The timer `r` if it is still armed.
    fn get_mut(&mut self, (slot, id): TimerRef) -> Option<&mut Timer> {
        self.slots[slot as usize].as_mut().filter(|t| t.id == id)
    }

    /// The earliest deadline with an armed timer, dropping cancelled entries before it.
    fn next_deadline(&mut self) -> Option<Timestamp> {
        let State {
            queue,
            spare,
            slots,
            ..
        } = self;
        loop {
            let (deadline, bucket) = queue.front_mut()?;
            while let Some(&(id, slot)) = bucket.front() {
                if is_armed(slots, (slot, id)) {
                    return Some(*deadline);
                }
                bucket.pop_front(); // cancelled: its Sleep was dropped
            }
            let (_, empty) = queue.pop_front().expect("front seen");
            spare.push(empty);
        }
    }

    /// Disarms `r`, if it is still armed, and hands its timer back.
    fn disarm(&mut self, r: TimerRef) -> Option<Timer> {
        self.get_mut(r)?;
        self.free.push(r.0);
        self.armed -= 1;
        self.slots[r.0 as usize].take()
    }

    fn arm(&mut self, deadline: Timestamp, waker: Waker) -> TimerRef {
        let id = self.next_id;
        self.next_id += 1;
        let timer = Timer {
            id,
            deadline,
            waker,
            label: self.current_label,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(timer);
                slot
            }
            None => {
                self.slots.push(Some(timer));
                (self.slots.len() - 1) as u32
            }
        };
        self.armed += 1;
        let State { queue, spare, .. } = self;
        // Deadlines mostly arrive in order (waits of one length), so the search starts at the
        // back.
        let i = match queue.back() {
            Some((last, _)) if *last < deadline => queue.len(),
            _ => queue.partition_point(|(t, _)| *t < deadline),
        };
        match queue.get_mut(i) {
            Some((t, bucket)) if *t == deadline => bucket.push_back((id, slot)),
            _ => {
                let mut bucket = spare.pop().unwrap_or_default();
                bucket.push_back((id, slot));
                if i == queue.len() {
                    queue.push_back((deadline, bucket));
                } else {
                    queue.insert(i, (deadline, bucket));
                }
            }
        }
        (slot, id)
    }
}

/// Simulated time: a shared handle (clones see the same clock).
#[derive(Clone)]
pub struct SimClock {
    state: Rc<RefCell<State>>,
}

impl std::fmt::Debug for SimClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.borrow();
        f.debug_struct("SimClock")
            .field("now", &s.now)
            .field("armed", &s.armed)
            .finish()
    }
}

impl SimClock {
    /// A clock reading `start`, with no timers.
    pub fn new(start: Timestamp) -> Self {
        SimClock {
            state: Rc::new(RefCell::new(State {
                now: start,
                next_id: 0,
                queue: VecDeque::new(),
                spare: Vec::new(),
                slots: Vec::new(),
                free: Vec::new(),
                armed: 0,
                labels: vec![Rc::from("main")],
                current_label: 0,
                due: Vec::new(),
            })),
        }
    }

    /// The current simulated time.
    pub fn now(&self) -> Timestamp {
        self.state.borrow().now
    }

    /// A future completing at `deadline` (immediately if it has passed).
    pub fn sleep_until(&self, deadline: Timestamp) -> Sleep {
        Sleep {
            clock: self.clone(),
            deadline,
            id: None,
        }
    }

    /// Deadline of the earliest armed timer.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.state.borrow_mut().next_deadline()
    }

    /// Moves time to the earliest armed deadline, if it is not after `limit`, and wakes every
    /// timer due by then in (deadline, arming order). Returns the new time, or `None` when no
    /// timer is due by `limit` (time then stays put).
    pub fn advance(&self, limit: Timestamp) -> Option<Timestamp> {
        let next = self.next_deadline()?;
        if next > limit {
            return None;
        }
        let mut due = {
            let mut s = self.state.borrow_mut();
            let mut due = std::mem::take(&mut s.due);
            assert!(next >= s.now, "timer deadline {next} before now {}", s.now);
            s.now = next;
            let (_, mut bucket) = s.queue.pop_front().expect("next_deadline found it");
            for (id, slot) in bucket.drain(..) {
                if let Some(t) = s.disarm((slot, id)) {
                    due.push(t.waker);
                }
            }
            s.spare.push(bucket);
            due
        };
        for w in due.drain(..) {
            w.wake();
        }
        self.state.borrow_mut().due = due;
        Some(next)
    }

    /// Sets the time forward to `t` without firing anything (used when a run stops at a deadline
    /// with no timer exactly there). Panics if a timer is due before `t`.
    pub fn jump_to(&self, t: Timestamp) {
        if let Some(next) = self.next_deadline() {
            assert!(next >= t, "jump_to({t}) would skip a timer due at {next}");
        }
        let mut s = self.state.borrow_mut();
        assert!(t >= s.now, "time cannot go backwards: {t} < {}", s.now);
        s.now = t;
    }

    /// Armed timers as `(deadline, label of the task that armed it)`, earliest first.
    pub fn armed_timers(&self) -> Vec<(Timestamp, String)> {
        let s = self.state.borrow();
        let mut v: Vec<_> = s
            .slots
            .iter()
            .flatten()
            .map(|t| (t.deadline, s.labels[t.label as usize].to_string()))
            .collect();
        v.sort();
        v
    }

    /// Labels timers armed from now on (the executor sets this around each task poll).
    pub(crate) fn set_current_label(&self, label: u32) -> u32 {
        std::mem::replace(&mut self.state.borrow_mut().current_label, label)
    }

    /// Registers a task label for [`set_current_label`](Self::set_current_label).
    pub(crate) fn register_label(&self, label: &str) -> u32 {
        let mut s = self.state.borrow_mut();
        s.labels.push(Rc::from(label));
        (s.labels.len() - 1) as u32
    }
}

impl Clock for SimClock {
    fn now(&self) -> Timestamp {
        SimClock::now(self)
    }

    fn sleep(&self, d: Duration) -> SleepFuture {
        let deadline = self.now() + d;
        SleepFuture::Sim(self.sleep_until(deadline))
    }
}

/// The future returned by [`SimClock::sleep_until`]; dropping it disarms its timer.
#[derive(Debug)]
pub struct Sleep {
    clock: SimClock,
    deadline: Timestamp,
    id: Option<TimerRef>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut s = this.clock.state.borrow_mut();
        if s.now >= this.deadline {
            if let Some(r) = this.id.take() {
                s.disarm(r);
            }
            return Poll::Ready(());
        }
        match this.id {
            Some(r) => {
                if let Some(t) = s.get_mut(r) {
                    t.waker.clone_from(cx.waker());
                }
            }
            None => this.id = Some(s.arm(this.deadline, cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(r) = self.id
            && let Ok(mut s) = self.clock.state.try_borrow_mut()
        {
            s.disarm(r);
        }
    }
}
/// Values parked until simulated times, for one future that runs many activities itself (a
/// batch of sends, a set of writes) instead of a future each.
///
/// Values come out in order of (time, order parked), which is the order in which timers of
/// those times would fire, and so the order a `FuturesUnordered` would poll futures woken by
/// them. Each distinct time gets one timer, armed when the first value is parked for it, in the
/// poll of the parking task; as every timer wakes that same task, it wakes at the same place
/// among the other tasks as with one timer per value.
pub struct Parked<T> {
    clock: Rc<dyn Clock>,
    /// Sorted by (time, order parked); parking is mostly at the back (waits of one length).
    queue: VecDeque<(Timestamp, u64, T)>,
    /// One armed timer per distinct time ahead, sorted by time.
    timers: VecDeque<(Timestamp, SleepFuture)>,
    waker: Option<Waker>,
    parked: u64,
}

impl<T> std::fmt::Debug for Parked<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parked")
            .field("values", &self.queue.len())
            .field("timers", &self.timers.len())
            .finish()
    }
}

impl<T> Parked<T> {
    /// Nothing parked yet.
    pub fn new(clock: Rc<dyn Clock>) -> Self {
        Parked {
            clock,
            queue: VecDeque::new(),
            timers: VecDeque::new(),
            waker: None,
            parked: 0,
        }
    }

    /// Values parked.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is parked.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Parks `value` until `at`, which must be after now, arming a timer for `at` if none is.
    pub fn park(&mut self, at: Timestamp, value: T, cx: &mut Context<'_>) {
        let key = (at, self.parked);
        self.parked += 1;
        let i = self.queue.len()
            - self
                .queue
                .iter()
                .rev()
                .take_while(|(t, n, _)| (*t, *n) > key)
                .count();
        if i == self.queue.len() {
            self.queue.push_back((at, key.1, value));
        } else {
            self.queue.insert(i, (at, key.1, value));
        }
        let j = match self.timers.back() {
            Some((t, _)) if *t < at => self.timers.len(),
            _ => self.timers.partition_point(|(t, _)| *t < at),
        };
        if self.timers.get(j).is_none_or(|(t, _)| *t != at) {
            let mut sleep = self.clock.sleep(at.saturating_since(self.clock.now()));
            let armed = Pin::new(&mut sleep).poll(cx).is_pending();
            debug_assert!(armed, "parked until a time after now");
            if j == self.timers.len() {
                self.timers.push_back((at, sleep));
            } else {
                self.timers.insert(j, (at, sleep));
            }
        }
        if self.waker.is_none() {
            self.waker = Some(cx.waker().clone());
        }
    }

    /// Call at the start of every poll: forgets fired timers, and hands the others the polling
    /// task's waker if it changed.
    pub fn poll_timers(&mut self, cx: &mut Context<'_>) {
        let now = self.clock.now();
        while self.timers.front().is_some_and(|(t, _)| *t <= now) {
            self.timers.pop_front();
        }
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            for (_, sleep) in &mut self.timers {
                let _ = Pin::new(sleep).poll(cx);
            }
            self.waker = Some(cx.waker().clone());
        }
    }

    /// The next value whose time has come, if any.
    pub fn pop_due(&mut self) -> Option<T> {
        let now = self.clock.now();
        if self.queue.front().is_some_and(|(t, _, _)| *t <= now) {
            self.queue.pop_front().map(|(_, _, v)| v)
        } else {
            None
        }
    }
}
