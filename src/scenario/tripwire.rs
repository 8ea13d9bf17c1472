//! Crashes at named trigger points: port wrappers that notice when a relay reaches a point, and
//! freeze it there so the supervisor can drop it.
//!
//! The wrappers sit between one relay incarnation and its ports. When an armed trigger fires
//! inside a wrapped call, that call never completes and the supervisor is told; it then drops
//! the relay future — the relay dies exactly at the trigger point, e.g. with a record appended
//! and acknowledged by the broker but the acknowledgement never seen by the relay.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::cdc::{LogPage, PageState, StreamGroup, StreamId};
use crate::history::{History, OpKind};
use crate::model::{Cursor, OutboxEvent, Timestamp};
use crate::ports::{
    CheckpointStore, Clock, Delivery, LocalFuture, OutboxStore, PublishError, Publisher, ScanFrom,
    StoreError,
};
use crate::scenario::faults::{CrashTrigger, Trigger};

/// The armed trigger crashes of a run, shared by every incarnation's wrappers.
pub struct Tripwire {
    armed: RefCell<Vec<(Timestamp, CrashTrigger, u32)>>,
    fired: RefCell<Option<async_channel::Sender<(Trigger, f64)>>>,
    mid_window: Cell<u32>,
    until: Timestamp,
    clock: Rc<dyn Clock>,
    history: History,
}

impl std::fmt::Debug for Tripwire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tripwire")
            .field("armed", &self.armed.borrow().len())
            .finish()
    }
}

impl Tripwire {
    /// Trigger crashes armed at `start + after_s` and disarmed at `until` (the drain); firings
    /// are sent on the returned receiver as `(trigger, downtime_s)`.
    pub fn new(
        triggers: &[CrashTrigger],
        start: Timestamp,
        until: Timestamp,
        clock: Rc<dyn Clock>,
        history: History,
    ) -> (Rc<Tripwire>, async_channel::Receiver<(Trigger, f64)>) {
        let (tx, rx) = async_channel::unbounded();
        let armed = triggers
            .iter()
            .map(|t| {
                (
                    start + std::time::Duration::from_secs_f64(t.after_s.max(0.0)),
                    t.clone(),
                    t.nth.max(1),
                )
            })
            .collect();
        let w = Tripwire {
            armed: RefCell::new(armed),
            fired: RefCell::new(Some(tx)),
            mid_window: Cell::new(0),
            until,
            clock,
            history,
        };
        (Rc::new(w), rx)
    }

    /// Whether a publish can still fire a trigger (a trigger is only disarmed by firing, which
    /// ends the incarnation, so the answer holds for a whole incarnation).
    fn watches_publishes(&self) -> bool {
        self.armed
            .borrow()
            .iter()
            .any(|(_, t, _)| matches!(t.trigger, Trigger::AfterPublish | Trigger::MidWindow))
    }

    /// Records a hit of `trigger`; returns true if it fired (the caller must then never return).
    fn hit(&self, trigger: Trigger) -> bool {
        let now = self.clock.now();
        if now >= self.until {
            return false;
        }
        let mut armed = self.armed.borrow_mut();
        let Some(i) = armed
            .iter()
            .position(|(at, t, _)| t.trigger == trigger && *at <= now)
        else {
            return false;
        };
        armed[i].2 -= 1;
        if armed[i].2 > 0 {
            return false;
        }
        let (_, t, _) = armed.remove(i);
        self.history.record(
            now,
            OpKind::Fault {
                name: format!("crash_{}", trigger.name()),
                on: true,
            },
        );
        if let Some(tx) = self.fired.borrow().as_ref() {
            let _ = tx.try_send((trigger, t.downtime_s));
        }
        true
    }

    /// Wraps one incarnation's ports.
    pub fn wrap(
        self: &Rc<Self>,
        store: Rc<dyn OutboxStore>,
        checkpoints: Rc<dyn CheckpointStore>,
        publisher: Rc<dyn Publisher>,
    ) -> (
        Rc<dyn OutboxStore>,
        Rc<dyn CheckpointStore>,
        Rc<dyn Publisher>,
    ) {
        self.mid_window.set(0);
        let first_generation = Rc::new(Cell::new(None));
        (
            Rc::new(WiredStore {
                inner: store,
                wire: self.clone(),
                first_generation,
            }),
            Rc::new(WiredCheckpoints {
                inner: checkpoints,
                wire: self.clone(),
            }),
            // With no publish trigger armed there is nothing to notice: the producer itself.
            if self.watches_publishes() {
                Rc::new(WiredPublisher {
                    inner: publisher,
                    wire: self.clone(),
                })
            } else {
                publisher
            },
        )
    }
}

async fn frozen<T>() -> T {
    futures::future::pending().await
}

struct WiredStore {
    inner: Rc<dyn OutboxStore>,
    wire: Rc<Tripwire>,
    first_generation: Rc<Cell<Option<Timestamp>>>,
}

impl OutboxStore for WiredStore {
    crate::forward_outbox_store!(inner: write, peer_count, generation_at, next_generation, first_generation);
    fn scan_outbox(
        &self,
        from: ScanFrom,
        until: Timestamp,
        page: usize,
    ) -> LocalFuture<'_, Result<Vec<OutboxEvent>, StoreError>> {
        Box::pin(async move {
            let rows = self.inner.scan_outbox(from, until, page).await?;
            if rows.len() >= 2 {
                self.wire.mid_window.set(rows.len() as u32 / 2);
            }
            Ok(rows)
        })
    }

    fn stream_groups(&self, g: Timestamp) -> LocalFuture<'_, Result<Vec<StreamGroup>, StoreError>> {
        Box::pin(async move {
            let first = self.first_generation.get().get_or_insert(g).to_owned();
            self.first_generation.set(Some(first));
            if g != first && self.wire.hit(Trigger::GenerationSwitch) {
                return frozen().await;
            }
            self.inner.stream_groups(g).await
        })
    }

    fn read_log<'a>(
        &'a self,
        streams: &'a [StreamId],
        from: Timestamp,
        to: Timestamp,
        page: Option<PageState>,
        page_size: usize,
    ) -> LocalFuture<'a, Result<LogPage, StoreError>> {
        Box::pin(async move {
            let p = self
                .inner
                .read_log(streams, from, to, page, page_size)
                .await?;
            if p.rows.len() >= 2 {
                self.wire.mid_window.set(p.rows.len() as u32 / 2);
            }
            Ok(p)
        })
    }
}

struct WiredPublisher {
    inner: Rc<dyn Publisher>,
    wire: Rc<Tripwire>,
}

impl Publisher for WiredPublisher {
    fn publish<'a>(
        &'a self,
        event: &'a OutboxEvent,
    ) -> LocalFuture<'a, Result<Delivery, PublishError>> {
        Box::pin(async move {
            let r = self.inner.publish(event).await;
            if r.is_ok() {
                if self.wire.hit(Trigger::AfterPublish) {
                    return frozen().await;
                }
                let left = self.wire.mid_window.get();
                if left > 0 {
                    self.wire.mid_window.set(left - 1);
                    if left == 1 && self.wire.hit(Trigger::MidWindow) {
                        return frozen().await;
                    }
                }
            }
            r
        })
    }
}

struct WiredCheckpoints {
    inner: Rc<dyn CheckpointStore>,
    wire: Rc<Tripwire>,
}

impl WiredCheckpoints {
    async fn after(&self, r: Result<(), StoreError>) -> Result<(), StoreError> {
        if r.is_ok() && self.wire.hit(Trigger::AfterCheckpoint) {
            return frozen().await;
        }
        r
    }
}

impl CheckpointStore for WiredCheckpoints {
    fn save_cursor(&self, cursor: Cursor) -> LocalFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let r = self.inner.save_cursor(cursor).await;
            self.after(r).await
        })
    }

    fn load_cursor(&self) -> LocalFuture<'_, Result<Option<Cursor>, StoreError>> {
        self.inner.load_cursor()
    }

    fn save_generation(&self, generation: Timestamp) -> LocalFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let r = self.inner.save_generation(generation).await;
            self.after(r).await
        })
    }

    fn load_generation(&self) -> LocalFuture<'_, Result<Option<Timestamp>, StoreError>> {
        self.inner.load_generation()
    }

    fn save_stream(
        &self,
        stream: StreamId,
        time: Timestamp,
    ) -> LocalFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let r = self.inner.save_stream(stream, time).await;
            self.after(r).await
        })
    }

    fn load_stream(
        &self,
        stream: StreamId,
    ) -> LocalFuture<'_, Result<Option<Timestamp>, StoreError>> {
        self.inner.load_stream(stream)
    }
}
