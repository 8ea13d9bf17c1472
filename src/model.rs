//! The data the pipeline moves: timestamps, ids, orders and outbox events.
//!
//! Everything here is plain data with no behaviour that depends on a world: the simulated cluster,
//! the live adapters and the checker all speak these types. Timestamps are microseconds since the
//! Unix epoch, exactly like CQL write timestamps, so a simulated `cdc$time` and a real one compare
//! the same way.

use std::fmt;
use std::ops::{Add, Sub};
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;
use uuid::Uuid;

/// Microseconds since the Unix epoch (the unit of CQL write timestamps and `WRITETIME()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

/// Where every simulated world starts: 2026-01-01T00:00:00Z.
pub const SIM_EPOCH: Timestamp = Timestamp(1_767_225_600_000_000);

impl Timestamp {
    /// The smallest representable timestamp.
    pub const MIN: Timestamp = Timestamp(i64::MIN);
    /// The largest representable timestamp.
    pub const MAX: Timestamp = Timestamp(i64::MAX);

    /// A timestamp from microseconds since the Unix epoch.
    pub const fn from_micros(us: i64) -> Self {
        Timestamp(us)
    }

    /// A timestamp from milliseconds since the Unix epoch.
    pub const fn from_millis(ms: i64) -> Self {
        Timestamp(ms.saturating_mul(1_000))
    }

    /// Microseconds since the Unix epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// Milliseconds since the Unix epoch, rounded towards negative infinity.
    pub const fn as_millis(self) -> i64 {
        self.0.div_euclid(1_000)
    }

    /// This timestamp truncated to whole milliseconds (CQL `timestamp` precision).
    pub const fn floor_ms(self) -> Self {
        Timestamp(self.as_millis() * 1_000)
    }

    /// Shifts by a signed number of microseconds, saturating at the ends.
    pub const fn offset_micros(self, us: i64) -> Self {
        Timestamp(self.0.saturating_add(us))
    }

    /// `self − earlier` as a duration, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0).max(0) as u64)
    }

    /// `self − other` in signed microseconds.
    pub const fn micros_since(self, other: Timestamp) -> i64 {
        self.0.saturating_sub(other.0)
    }
}

fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_micros(rhs)))
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(duration_micros(rhs)))
    }
}

impl fmt::Display for Timestamp {
    /// Seconds since [`SIM_EPOCH`] with microsecond precision, e.g. `+12.000345s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rel = self.0.saturating_sub(SIM_EPOCH.0);
        let sign = if rel < 0 { "-" } else { "+" };
        let abs = rel.unsigned_abs();
        write!(f, "{sign}{}.{:06}s", abs / 1_000_000, abs % 1_000_000)
    }
}

/// Identity of one outbox event (the Kafka header `id`, the consumer's dedup key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventId(pub Uuid);

/// Identity of one aggregate (an order): the partition key and the Kafka record key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AggregateId(pub Uuid);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for AggregateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The lifecycle events of an order, in the only orders they may occur:
/// `OrderCreated → OrderPaid → OrderShipped`, or `OrderCreated [→ OrderPaid] → OrderCancelled`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// The order was placed.
    OrderCreated,
    /// The order was paid.
    OrderPaid,
    /// The order left the warehouse (terminal).
    OrderShipped,
    /// The order was cancelled (terminal).
    OrderCancelled,
}

impl EventType {
    /// The event type as written to the outbox `event_type` column.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::OrderCreated => "OrderCreated",
            EventType::OrderPaid => "OrderPaid",
            EventType::OrderShipped => "OrderShipped",
            EventType::OrderCancelled => "OrderCancelled",
        }
    }

    /// The order status this event leaves the order in.
    pub const fn status(self) -> OrderStatus {
        match self {
            EventType::OrderCreated => OrderStatus::Created,
            EventType::OrderPaid => OrderStatus::Paid,
            EventType::OrderShipped => OrderStatus::Shipped,
            EventType::OrderCancelled => OrderStatus::Cancelled,
        }
    }

    /// Whether no event may follow this one.
    pub const fn is_terminal(self) -> bool {
        matches!(self, EventType::OrderShipped | EventType::OrderCancelled)
    }

    /// Parses the outbox `event_type` column.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "OrderCreated" => EventType::OrderCreated,
            "OrderPaid" => EventType::OrderPaid,
            "OrderShipped" => EventType::OrderShipped,
            "OrderCancelled" => EventType::OrderCancelled,
            _ => return None,
        })
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status column of `orders_ks.orders`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OrderStatus {
    /// Placed, not paid.
    Created,
    /// Paid, not shipped.
    Paid,
    /// Shipped.
    Shipped,
    /// Cancelled.
    Cancelled,
}

/// One row of `orders_ks.orders`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The order id (= the aggregate id of its events).
    pub id: AggregateId,
    /// Current status.
    pub status: OrderStatus,
    /// `seq` of the last event written for this order.
    pub last_seq: u64,
    /// Write timestamp of the last change.
    pub updated_at: Timestamp,
}

/// One row of `orders_ks.outbox_messages` (partition key `aggregate_id`, clustering `seq`).
///
/// Copies into the log, the broker and the history are cheap: the payload is reference-counted
/// and a short routing name is stored inline.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OutboxEvent {
    /// Event id (Kafka header `id`).
    pub id: EventId,
    /// Routing column, e.g. `"Order"`. Short names are stored inline, so copying an event does
    /// not touch a shared reference count for them.
    pub aggregate_type: SmolStr,
    /// The aggregate (order) this event belongs to; the Kafka key.
    pub aggregate_id: AggregateId,
    /// Position in the aggregate's history, from 1, without gaps among committed events.
    pub seq: u64,
    /// What happened.
    pub event_type: EventType,
    /// The event body as JSON text, shared by the event's copies. Not atomically counted: an
    /// event lives on one thread (the live CDC relay's rows cross threads as
    /// `live::scylla_cdc::RowEvent`).
    pub payload: Rc<str>,
    /// The write timestamp of the batch that created the row.
    pub created_at: Timestamp,
}

/// The polling relay's cursor: the last `(created_at, id)` it published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cursor {
    /// `created_at` of the last published row.
    pub created_at: Timestamp,
    /// `id` of the last published row (tie-breaker among equal timestamps).
    pub id: EventId,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_arithmetic_saturates_and_floors() {
        let t = Timestamp(1_500);
        assert_eq!(t.as_millis(), 1);
        assert_eq!(t.floor_ms(), Timestamp(1_000));
        assert_eq!(Timestamp(-1).as_millis(), -1);
        assert_eq!(Timestamp(-1).floor_ms(), Timestamp(-1_000));
        assert_eq!(t + Duration::from_millis(2), Timestamp(3_500));
        assert_eq!(t - Duration::from_millis(2), Timestamp(-500));
        assert_eq!(Timestamp::MAX + Duration::from_secs(1), Timestamp::MAX);
        assert_eq!(
            Timestamp(10).saturating_since(Timestamp(20)),
            Duration::ZERO
        );
        assert_eq!(
            format!("{}", SIM_EPOCH.offset_micros(12_000_345)),
            "+12.000345s"
        );
    }

    #[test]
    fn event_type_round_trips_through_its_column_text() {
        for t in [
            EventType::OrderCreated,
            EventType::OrderPaid,
            EventType::OrderShipped,
            EventType::OrderCancelled,
        ] {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("OrderLost"), None);
    }
}
