//! Time as a parameter: every decision that depends on "now" (GC cutoff, lock staleness, retention,
//! backup ids) asks a [`Clock`], so tests can move time exactly.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + Debug {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<Timestamp>>);

impl ManualClock {
    /// A clock showing `start`.
    #[must_use]
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock(Arc::new(Mutex::new(start)))
    }

    /// Sets the time (backwards too: clocks jump).
    pub fn set(&self, t: Timestamp) {
        let mut g = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *g = t;
    }

    /// Moves the time by `d` (negative moves it back).
    pub fn advance(&self, d: SignedDuration) {
        let mut g = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *g = g.checked_add(d).unwrap_or(*g);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_both_ways() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let c = ManualClock::new(t0);
        let c2 = c.clone();
        c.advance(SignedDuration::from_secs(60));
        assert_eq!(
            c2.now(),
            "2026-01-01T00:01:00Z".parse::<Timestamp>().unwrap()
        );
        c.advance(SignedDuration::from_secs(-120));
        assert!(c2.now() < t0);
    }
}
