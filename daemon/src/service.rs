//! systemd integration: readiness, watchdog pings, reload and stop notifications.
//! Every call does nothing when the daemon does not run under systemd
//! (`NOTIFY_SOCKET` unset).

use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::{debug, warn};

fn send(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(error) = sd_notify::notify(states) {
        warn!(error = %error, "failed to notify systemd");
    }
}

/// Tells systemd that the daemon's connections are up.
pub fn ready() {
    send(&[
        NotifyState::Ready,
        NotifyState::Status("admitting and placing jobs"),
    ]);
}

/// Tells systemd that a reload started; `ready` ends it.
pub fn reloading() {
    let now = monotonic_usec();
    send(&[NotifyState::Reloading, NotifyState::MonotonicUsec(now)]);
}

/// Tells systemd that the daemon is draining.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// Reads CLOCK_MONOTONIC in microseconds, the clock systemd expects with RELOADING=1.
fn monotonic_usec() -> i128 {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid pointer we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut time) };
    i128::from(time.tv_sec) * 1_000_000 + i128::from(time.tv_nsec) / 1_000
}

/// Pings the systemd watchdog from the reconcile loop, so that a wedged loop stops
/// the pings and systemd restarts the daemon.
pub struct Watchdog {
    interval: Option<Duration>,
    last: Instant,
}

impl Watchdog {
    /// Reads `WATCHDOG_USEC`; pings at half the configured timeout.
    pub fn from_env() -> Self {
        let interval = sd_notify::watchdog_enabled().map(|timeout| timeout / 2);
        if let Some(interval) = interval {
            debug!(
                interval_ms = interval.as_millis() as u64,
                "systemd watchdog enabled"
            );
        }
        Self {
            interval,
            last: Instant::now(),
        }
    }

    /// Sends a ping when half the watchdog timeout has passed since the last one.
    pub fn ping(&mut self) {
        let Some(interval) = self.interval else {
            return;
        };
        if self.last.elapsed() >= interval {
            send(&[NotifyState::Watchdog]);
            self.last = Instant::now();
        }
    }

    /// Returns the maximum time the reconcile loop may sleep between pings.
    pub fn max_sleep(&self) -> Option<Duration> {
        self.interval
    }
}
