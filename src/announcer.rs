//! Self-announcement timers (`announce-self`): RARPs for each port's MAC, on QEMU's schedule.
//! Round k goes out `min(initial + k * step, max)` ms after the previous one; a timer started
//! with an id that is already running replaces it.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use log::debug;

use crate::port::Port;

/// Most rounds one timer may run (QEMU's migration parameter limit).
pub const MAX_ROUNDS: u64 = 1000;

/// QEMU's `AnnounceParameters` (delays in milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub initial: u64,
    pub max: u64,
    pub rounds: u64,
    pub step: u64,
}

impl Schedule {
    /// The delay before round `k` (0-based).
    pub fn delay(&self, k: u64) -> Duration {
        let ms = self
            .initial
            .saturating_add(k.saturating_mul(self.step))
            .min(self.max.max(self.initial));
        Duration::from_millis(ms)
    }
}

/// A running timer's cancellation flag.
#[derive(Debug, Default)]
struct Cancel {
    cancelled: Mutex<bool>,
    wake: Condvar,
}

impl Cancel {
    fn cancel(&self) {
        *self.cancelled.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
    }

    /// Sleeps for `d` unless cancelled first; returns whether it was cancelled.
    fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut cancelled = self.cancelled.lock().unwrap_or_else(|p| p.into_inner());
        while !*cancelled {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            cancelled = self
                .wake
                .wait_timeout(cancelled, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// The named timers.
#[derive(Debug, Default)]
pub struct Announcer {
    timers: Mutex<HashMap<String, Arc<Cancel>>>,
}

impl Announcer {
    /// Starts (or replaces) timer `id` announcing on `ports`.
    pub fn start(&self, id: String, schedule: Schedule, ports: Vec<Port>) {
        let cancel = Arc::new(Cancel::default());
        if let Some(old) = self
            .timers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), cancel.clone())
        {
            old.cancel();
        }
        let spawned = std::thread::Builder::new()
            .name(format!("announce-{id}"))
            .spawn(move || {
                for k in 0..schedule.rounds {
                    if cancel.sleep(schedule.delay(k)) {
                        debug!("announce timer {id:?} replaced");
                        return;
                    }
                    for port in &ports {
                        port.announce();
                    }
                }
            });
        if let Err(e) = spawned {
            log::warn!("announce-self: cannot start timer: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_by_step_up_to_max() {
        let s = Schedule {
            initial: 50,
            max: 120,
            rounds: 5,
            step: 30,
        };
        let ms: Vec<u128> = (0..5).map(|k| s.delay(k).as_millis()).collect();
        assert_eq!(ms, vec![50, 80, 110, 120, 120]);
        let s = Schedule {
            initial: 10,
            max: 0,
            rounds: 1,
            step: u64::MAX,
        };
        assert_eq!(
            s.delay(3).as_millis(),
            10,
            "max below initial and overflow are harmless"
        );
    }

    #[test]
    fn a_cancelled_sleep_returns_at_once() {
        let c = Arc::new(Cancel::default());
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.sleep(Duration::from_secs(60)));
        c.cancel();
        assert!(t.join().unwrap());
    }
}
