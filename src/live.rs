//! The live world: the same ports over real systems. This is the only module that reads the
//! system clock or sleeps on real time, and the only one whose public items name `rdkafka` types.
//!
//! - [`WallClock`]: the [`Clock`] port on the system clock (smol timers);
//! - [`kafka`]: the [`Publisher`](crate::ports::Publisher) port over rdkafka's `FutureProducer`
//!   on smol (no tokio), tested in `cargo test` against librdkafka's in-process mock cluster;
//! - [`scylla`]: the [`OutboxStore`](crate::ports::OutboxStore) and
//!   [`CheckpointStore`](crate::ports::CheckpointStore) ports over the `scylla` driver;
//! - [`scylla_cdc`]: a [`Relay`](crate::relay::Relay) that runs the real scylla-cdc
//!   `CDCLogReader`, each stream preset mapped to its builder settings;
//! - [`pipeline`]: the writer, a relay and the checker wired to live ports (`outbox-sim live`);
//! - [`serve`]: the real-time loop of `outbox-sim serve` around the [CQL front](crate::front);
//! - [`docker_available`]: the probe live-container tests use to skip (or fail, with
//!   `OUTBOX_SIM_REQUIRE_DOCKER=1`) when no Docker engine is reachable.
//!
//! The scylla driver and scylla-cdc need tokio; they are entered through `async-compat` inside
//! this module only.

pub mod kafka;
pub mod pipeline;
pub mod scylla;
pub mod scylla_cdc;
pub mod serve;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::model::Timestamp;
use crate::ports::{Clock, SleepFuture};

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct WallClock;

impl Clock for WallClock {
    fn now(&self) -> Timestamp {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
    }

    fn sleep(&self, d: Duration) -> SleepFuture {
        SleepFuture::Boxed(Box::pin(async move {
            smol::Timer::after(d).await;
        }))
    }
}

/// Whether a Docker engine answers `GET /_ping` on its socket (`DOCKER_HOST=unix://…`, else
/// `/var/run/docker.sock`) within 3 s; the error says why not. `OUTBOX_SIM_SKIP_DOCKER=1` forces
/// a skip.
pub async fn docker_available() -> Result<(), String> {
    if std::env::var_os("OUTBOX_SIM_SKIP_DOCKER").is_some() {
        return Err("OUTBOX_SIM_SKIP_DOCKER is set".into());
    }
    let socket = match std::env::var("DOCKER_HOST") {
        Ok(h) => h
            .strip_prefix("unix://")
            .map(str::to_string)
            .ok_or_else(|| format!("DOCKER_HOST={h} is not a unix socket"))?,
        Err(_) => "/var/run/docker.sock".to_string(),
    };
    if !std::path::Path::new(&socket).exists() {
        return Err(format!("no Docker engine: socket {socket} not found"));
    }
    let ping = async {
        use smol::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = smol::net::unix::UnixStream::connect(&socket)
            .await
            .map_err(|e| format!("{socket}: {e}"))?;
        stream
            .write_all(b"GET /_ping HTTP/1.0\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        stream
            .read_to_end(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        if buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!(
                "{socket}: the engine did not answer /_ping with 200"
            ))
        }
    };
    let timeout = async {
        smol::Timer::after(Duration::from_secs(3)).await;
        Err("the Docker engine did not answer a ping within 3 s".to_string())
    };
    smol::future::or(ping, timeout).await
}

/// For a live-container test: `Ok(())` to go on, or `Err(reason)` after printing
/// `SKIPPED: <reason>`; panics instead when `OUTBOX_SIM_REQUIRE_DOCKER=1`.
pub fn require_docker() -> Result<(), String> {
    match smol::block_on(docker_available()) {
        Ok(()) => Ok(()),
        Err(reason) if std::env::var("OUTBOX_SIM_REQUIRE_DOCKER").as_deref() == Ok("1") => {
            panic!("OUTBOX_SIM_REQUIRE_DOCKER=1 but no Docker engine: {reason}")
        }
        Err(reason) => {
            // Written to the stream directly: the test harness captures `eprintln!`, and a skip
            // must be visible in a plain `cargo test`.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED: {reason}");
            Err(reason)
        }
    }
}
