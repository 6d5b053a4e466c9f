//! Time as a parameter: the scheduler, retention and run records read the wall clock through
//! [`Clock`], so tests set it exactly (STYLE.md "Time and randomness are parameters").

use std::sync::{Arc, Mutex};

use jiff::Timestamp;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that only moves when told to (tests, simulations).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<Timestamp>>);

impl ManualClock {
    /// A clock standing at `at`.
    #[must_use]
    pub fn new(at: Timestamp) -> Self {
        Self(Arc::new(Mutex::new(at)))
    }

    /// Sets the time (forwards or backwards: clock jumps are what it is for).
    pub fn set(&self, at: Timestamp) {
        if let Ok(mut guard) = self.0.lock() {
            *guard = at;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        self.0.lock().map_or_else(|e| *e.into_inner(), |g| *g)
    }
}

/// Milliseconds since the Unix epoch: how instants are stored in the database (sortable).
#[must_use]
pub fn to_millis(at: Timestamp) -> i64 {
    at.as_millisecond()
}

/// The inverse of [`to_millis`]; out-of-range values clamp to the representable range.
#[must_use]
pub fn from_millis(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}
