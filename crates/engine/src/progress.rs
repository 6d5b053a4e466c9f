//! Progress events: what a backup, restore or verify is doing right now, for the CLI's progress
//! bars, the service's live view (SSE) and its persisted run log.
//!
//! Libraries never print; they report through an injected [`ProgressSink`]. Events are plain,
//! serialisable data so that the service can broadcast and store them as they are.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The phases of the specification (7.3): Connecting → Snapshot → Downloading → Compressing → Done.
/// Restore and verify reuse them where they fit (`Downloading` = reading from the repository or
/// vCenter, `Compressing` = writing/checking) and add their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Logging in, resolving the VM, checking its state.
    Connecting,
    /// Creating (or removing) the vbm snapshot.
    Snapshot,
    /// Moving disk data (from vCenter during a backup, to the target during a restore).
    Downloading,
    /// Hashing, compressing and storing chunks; writing indexes and the manifest.
    Compressing,
    /// Restoring files to their destination.
    Restoring,
    /// Checking digests.
    Verifying,
    /// Finished successfully.
    Done,
    /// Finished with an error (the message says which).
    Failed,
}

/// Severity of an event's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Routine progress.
    Info,
    /// Something the administrator should know; the operation continues (e.g. a CBT reset forced
    /// a full read, an independent disk was skipped).
    Warning,
    /// The operation failed.
    Error,
}

/// One progress report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProgressEvent {
    /// What is happening.
    pub phase: Phase,
    /// The VM the event is about.
    pub vm: String,
    /// The disk (device label or file) the byte counters refer to; `None` for VM-wide events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// Bytes done of the current phase (for the disk, or for the VM when `disk` is `None`).
    pub bytes_done: u64,
    /// Bytes the phase will process in total, when known.
    pub bytes_total: u64,
    /// Recent throughput in bytes per second.
    pub rate_bytes_per_sec: u64,
    /// Estimated seconds until the phase ends, when it can be estimated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// Severity of `message`.
    pub level: Level,
    /// A human-readable line for logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ProgressEvent {
    /// A VM-wide event with a message and no byte counters.
    #[must_use]
    pub fn message(phase: Phase, vm: &str, level: Level, message: impl Into<String>) -> Self {
        Self {
            phase,
            vm: vm.to_owned(),
            disk: None,
            bytes_done: 0,
            bytes_total: 0,
            rate_bytes_per_sec: 0,
            eta_seconds: None,
            level,
            message: Some(message.into()),
        }
    }
}

/// Receives progress events. Implementations must be cheap and must not block: the engine calls
/// them from its data path.
pub trait ProgressSink: Send + Sync {
    /// Called for every event, in order per VM.
    fn event(&self, event: &ProgressEvent);
}

/// A sink that drops everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn event(&self, _event: &ProgressEvent) {}
}

impl<F: Fn(&ProgressEvent) + Send + Sync> ProgressSink for F {
    fn event(&self, event: &ProgressEvent) {
        self(event);
    }
}

/// Byte counter for one disk (or VM) that turns "n more bytes" into rate-limited events with a
/// smoothed rate and an ETA.
#[derive(Debug)]
pub struct Meter {
    phase: Phase,
    vm: String,
    disk: Option<String>,
    total: u64,
    state: Mutex<MeterState>,
}

#[derive(Debug)]
struct MeterState {
    done: u64,
    started: Instant,
    last_emit: Option<Instant>,
    window_start: Instant,
    window_bytes: u64,
    rate: f64,
}

/// Minimum time between two events of the same meter (the last one is always sent).
const EMIT_INTERVAL: Duration = Duration::from_millis(250);

impl Meter {
    /// A meter for `total` bytes of `phase`.
    #[must_use]
    pub fn new(phase: Phase, vm: &str, disk: Option<&str>, total: u64) -> Self {
        let now = Instant::now();
        Self {
            phase,
            vm: vm.to_owned(),
            disk: disk.map(str::to_owned),
            total,
            state: Mutex::new(MeterState {
                done: 0,
                started: now,
                last_emit: None,
                window_start: now,
                window_bytes: 0,
                rate: 0.0,
            }),
        }
    }

    /// Adds `n` bytes and emits an event if enough time passed since the last one.
    pub fn add(&self, n: u64, sink: &dyn ProgressSink) {
        let event = {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            state.done = state.done.saturating_add(n);
            state.window_bytes = state.window_bytes.saturating_add(n);
            let now = Instant::now();
            let window = now.duration_since(state.window_start);
            if window >= Duration::from_secs(1) {
                // Exponential smoothing over ~1 s windows keeps the rate steady but responsive.
                #[allow(clippy::cast_precision_loss)] // rates are estimates
                let current = state.window_bytes as f64 / window.as_secs_f64();
                state.rate = if state.rate == 0.0 {
                    current
                } else {
                    0.7 * state.rate + 0.3 * current
                };
                state.window_start = now;
                state.window_bytes = 0;
            }
            let due = state
                .last_emit
                .is_none_or(|t| now.duration_since(t) >= EMIT_INTERVAL);
            if !due && state.done < self.total {
                return;
            }
            state.last_emit = Some(now);
            self.snapshot(&state)
        };
        sink.event(&event);
    }

    /// Emits the current state unconditionally (e.g. at the end of a phase).
    pub fn flush(&self, sink: &dyn ProgressSink) {
        let event = match self.state.lock() {
            Ok(state) => self.snapshot(&state),
            Err(_) => return,
        };
        sink.event(&event);
    }

    /// Bytes counted so far.
    #[must_use]
    pub fn done(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.done)
    }

    fn snapshot(&self, state: &MeterState) -> ProgressEvent {
        let rate = if state.rate > 0.0 {
            state.rate
        } else {
            let elapsed = state.started.elapsed().as_secs_f64();
            #[allow(clippy::cast_precision_loss)]
            if elapsed > 0.0 {
                state.done as f64 / elapsed
            } else {
                0.0
            }
        };
        let remaining = self.total.saturating_sub(state.done);
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let eta_seconds = (rate >= 1.0).then(|| (remaining as f64 / rate).ceil() as u64);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rate_bytes_per_sec = rate as u64;
        ProgressEvent {
            phase: self.phase,
            vm: self.vm.clone(),
            disk: self.disk.clone(),
            bytes_done: state.done,
            bytes_total: self.total,
            rate_bytes_per_sec,
            eta_seconds,
            level: Level::Info,
            message: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_reports_the_final_count_and_serialises_phases_in_snake_case() {
        let seen = Mutex::new(Vec::new());
        let sink = |e: &ProgressEvent| seen.lock().unwrap().push(e.clone());
        let meter = Meter::new(Phase::Downloading, "web01", Some("Hard disk 1"), 100);
        meter.add(40, &sink);
        meter.add(60, &sink);
        let events = seen.lock().unwrap();
        let last = events.last().unwrap();
        assert_eq!(last.bytes_done, 100, "the completing add always emits");
        assert_eq!(last.bytes_total, 100);
        let json = serde_json::to_value(last).unwrap();
        assert_eq!(json["phase"], "downloading");
        assert_eq!(json["disk"], "Hard disk 1");
    }

    #[test]
    fn meter_rate_limits_intermediate_events() {
        let count = Mutex::new(0u32);
        let sink = |_: &ProgressEvent| *count.lock().unwrap() += 1;
        let meter = Meter::new(Phase::Compressing, "vm", None, 1_000_000);
        for _ in 0..1000 {
            meter.add(1, &sink);
        }
        assert!(
            *count.lock().unwrap() < 10,
            "1000 quick adds must not flood the sink"
        );
        assert_eq!(meter.done(), 1000);
    }
}
