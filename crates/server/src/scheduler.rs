//! The scheduler: cron expressions read in a time zone, next run times stored in UTC, and the
//! decision taken at each tick — a pure function of (schedule, stored next run, window, now).
//!
//! Rules (tested exactly with an injected clock):
//! - The stored `next_run` is the truth; a restart reads it back unchanged.
//! - When `now ≥ next_run`, every missed occurrence up to `now` collapses into one decision about
//!   the latest of them (T1: a clock 30 days fast launches one run, not 30): it runs once if still
//!   inside its window, otherwise it is recorded as missed. Then `next_run` becomes the first
//!   occurrence after `now`.
//! - A clock that jumps backwards just waits for the stored `next_run` (T2: no double run).
//! - DST (T4) follows croner: a time inside the spring gap runs at the first valid time after the
//!   gap; a time in the repeated autumn hour runs once, on its first pass.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use croner::Cron;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::db::Db;
use crate::vcenter::FieldError;

/// A parsed cron expression with its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    tz: TimeZone,
}

impl CronSchedule {
    /// Parses a five-field cron expression and an IANA time zone name.
    ///
    /// # Errors
    /// A field error naming `schedule.cron` or `schedule.timezone`.
    pub fn parse(expr: &str, tz: &str) -> Result<Self, FieldError> {
        if expr.len() > 200 || expr.split_whitespace().count() != 5 {
            return Err(FieldError::new(
                "schedule.cron",
                "must have exactly five fields: minute hour day-of-month month day-of-week",
            ));
        }
        let cron = Cron::from_str(expr).map_err(|e| {
            FieldError::new("schedule.cron", format!("invalid cron expression: {e}"))
        })?;
        let tz = if tz.len() > 64 {
            None
        } else {
            TimeZone::get(tz).ok()
        }
        .ok_or_else(|| {
            FieldError::new(
                "schedule.timezone",
                format!(
                    "unknown time zone {:?}; use an IANA name like Europe/Berlin or UTC",
                    tz.chars().take(64).collect::<String>()
                ),
            )
        })?;
        Ok(Self { cron, tz })
    }

    /// The first occurrence strictly after `t`.
    #[must_use]
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let zoned = t.to_zoned(self.tz.clone());
        self.cron
            .find_next_occurrence(&zoned, false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The last occurrence at or before `t`.
    #[must_use]
    pub fn latest_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        let zoned = t.to_zoned(self.tz.clone());
        self.cron
            .find_previous_occurrence(&zoned, true)
            .ok()
            .map(|z| z.timestamp())
    }
}

/// What a tick decides for one schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tick {
    /// Not due yet.
    Wait,
    /// Start a run for the occurrence `scheduled_for`; store `next` as the new next run.
    Fire {
        /// The occurrence this run stands for.
        scheduled_for: Timestamp,
        /// New next run time.
        next: Option<Timestamp>,
        /// True when the occurrence was missed (server down, clock jump) and is caught up.
        catch_up: bool,
    },
    /// The occurrence is outside its window: record it as missed; store `next`.
    Missed {
        /// The occurrence.
        scheduled_for: Timestamp,
        /// New next run time.
        next: Option<Timestamp>,
    },
}

/// How late a run may start and still count as on time (the scheduler's tick granularity).
const ON_TIME: SignedDuration = SignedDuration::from_secs(90);

/// The decision for one schedule. Pure.
#[must_use]
pub fn tick(
    schedule: &CronSchedule,
    next_run: Timestamp,
    window_minutes: Option<u32>,
    now: Timestamp,
) -> Tick {
    if now < next_run {
        return Tick::Wait;
    }
    let latest = schedule
        .latest_at_or_before(now)
        .map_or(next_run, |l| l.max(next_run));
    let next = schedule.next_after(now);
    let deadline = match window_minutes {
        Some(minutes) => latest
            .checked_add(SignedDuration::from_mins(i64::from(minutes)))
            .ok(),
        None => schedule.next_after(latest),
    };
    let in_window = deadline.is_none_or(|d| now < d);
    if in_window {
        let late = now.duration_since(latest) > ON_TIME || latest != next_run;
        Tick::Fire {
            scheduled_for: latest,
            next,
            catch_up: late,
        }
    } else {
        Tick::Missed {
            scheduled_for: latest,
            next,
        }
    }
}

/// The longest the loop sleeps, so that a wall clock that jumps is noticed within this time.
const MAX_SLEEP: Duration = Duration::from_secs(20);

/// Runs the scheduler until `shutdown`: fires due schedules into the run queue (each firing and
/// its new next run time commit in one transaction, so a crash cannot fire twice).
pub async fn run(
    db: Db,
    clock: Arc<dyn Clock>,
    wake: Arc<Notify>,
    runner_wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    loop {
        let now = clock.now();
        let sleep_for = match db.due_schedules(now).await {
            Ok(due) => {
                for entry in due {
                    let decision = match CronSchedule::parse(&entry.cron, &entry.timezone) {
                        Ok(schedule) => tick(&schedule, entry.next_run, entry.window_minutes, now),
                        Err(e) => {
                            tracing::error!(job = %entry.job_id, error = %e, "stored schedule no longer parses");
                            continue;
                        }
                    };
                    match db.apply_tick(&entry, &decision, now).await {
                        Ok(Some(run)) => {
                            tracing::info!(job = %entry.job_id, run = %run, ?decision, "schedule fired");
                            runner_wake.notify_one();
                        }
                        Ok(None) => {
                            tracing::info!(job = %entry.job_id, ?decision, "schedule advanced without a new run");
                        }
                        Err(e) => {
                            tracing::error!(job = %entry.job_id, error = %e, "cannot apply schedule tick")
                        }
                    }
                }
                match db.earliest_next_run().await {
                    Ok(Some(t)) => t
                        .duration_since(clock.now())
                        .try_into()
                        .unwrap_or(Duration::ZERO)
                        .min(MAX_SLEEP),
                    _ => MAX_SLEEP,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "scheduler cannot read schedules");
                MAX_SLEEP
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(sleep_for.max(Duration::from_millis(50))) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn berlin(cron: &str) -> CronSchedule {
        CronSchedule::parse(cron, "Europe/Berlin").unwrap()
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let e = CronSchedule::parse("61 2 * * *", "UTC").unwrap_err();
        assert_eq!(e.field, "schedule.cron");
        let e = CronSchedule::parse("* * *", "UTC").unwrap_err();
        assert!(e.message.contains("five fields"), "{e}");
        let e = CronSchedule::parse("0 2 * * *", "Mars/Olympus").unwrap_err();
        assert_eq!(e.field, "schedule.timezone");
    }

    #[test]
    fn on_time_fire_and_advance() {
        let s = CronSchedule::parse("30 2 * * *", "UTC").unwrap();
        let next = at("2026-05-01T02:30:00Z");
        assert_eq!(tick(&s, next, None, at("2026-05-01T02:29:59Z")), Tick::Wait);
        assert_eq!(
            tick(&s, next, None, at("2026-05-01T02:30:01Z")),
            Tick::Fire {
                scheduled_for: next,
                next: Some(at("2026-05-02T02:30:00Z")),
                catch_up: false
            }
        );
    }

    // covers T1: 30 days of missed occurrences become one catch-up run.
    #[test]
    fn forward_jump_coalesces() {
        let s = CronSchedule::parse("30 2 * * *", "UTC").unwrap();
        let next = at("2026-05-01T02:30:00Z");
        let now = at("2026-05-31T09:00:00Z");
        assert_eq!(
            tick(&s, next, None, now),
            Tick::Fire {
                scheduled_for: at("2026-05-31T02:30:00Z"),
                next: Some(at("2026-06-01T02:30:00Z")),
                catch_up: true
            }
        );
        // With a 2 h window the latest occurrence (6.5 h ago) is out of it: missed, not run.
        assert_eq!(
            tick(&s, next, Some(120), now),
            Tick::Missed {
                scheduled_for: at("2026-05-31T02:30:00Z"),
                next: Some(at("2026-06-01T02:30:00Z")),
            }
        );
    }

    // covers T2: a backwards jump waits for the stored next run; no second run.
    #[test]
    fn backward_jump_waits() {
        let s = CronSchedule::parse("30 2 * * *", "UTC").unwrap();
        let stored_after_fire = at("2026-05-02T02:30:00Z");
        assert_eq!(
            tick(&s, stored_after_fire, None, at("2026-05-01T00:30:00Z")),
            Tick::Wait
        );
    }

    /// Simulates the scheduler minute by minute over `[from, to)` and returns the fire times.
    fn simulate(s: &CronSchedule, from: &str, to: &str) -> Vec<Timestamp> {
        let mut now = at(from);
        let end = at(to);
        let mut next = s.next_after(now).unwrap();
        let mut fired = Vec::new();
        while now < end {
            match tick(s, next, None, now) {
                Tick::Fire {
                    scheduled_for,
                    next: n,
                    ..
                } => {
                    fired.push(scheduled_for);
                    next = n.unwrap();
                }
                Tick::Missed { next: n, .. } => next = n.unwrap(),
                Tick::Wait => {}
            }
            now = now.checked_add(SignedDuration::from_secs(60)).unwrap();
        }
        fired
    }

    // covers T4: a 02:30 Europe/Berlin job runs exactly once on both transition days.
    #[test]
    fn dst_spring_forward_runs_once_after_the_gap() {
        let s = berlin("30 2 * * *");
        let fired = simulate(&s, "2026-03-28T00:00:00Z", "2026-03-31T00:00:00Z");
        let local: Vec<_> = fired
            .iter()
            .map(|t| {
                t.to_zoned(TimeZone::get("Europe/Berlin").unwrap())
                    .datetime()
                    .to_string()
            })
            .collect();
        // 2026-03-29 02:30 does not exist in Berlin; it runs at 03:00 local (01:00 UTC).
        assert_eq!(
            local,
            [
                "2026-03-28T02:30:00",
                "2026-03-29T03:00:00",
                "2026-03-30T02:30:00"
            ]
        );
        assert_eq!(fired[1], at("2026-03-29T01:00:00Z"));
    }

    // covers T4 (autumn): 02:30 happens twice on 2026-10-25; the job runs once, on the first pass.
    #[test]
    fn dst_fall_back_runs_once() {
        let s = berlin("30 2 * * *");
        let fired = simulate(&s, "2026-10-24T00:00:00Z", "2026-10-27T00:00:00Z");
        assert_eq!(
            fired,
            [
                at("2026-10-24T00:30:00Z"),
                at("2026-10-25T00:30:00Z"),
                at("2026-10-26T01:30:00Z")
            ]
        );
    }

    #[test]
    fn hourly_jobs_follow_wall_clock_in_the_gap() {
        // An hourly job has 23 runs on the spring day and 25 on the autumn day (real hours).
        let s = berlin("0 * * * *");
        let spring = simulate(&s, "2026-03-28T22:59:00Z", "2026-03-29T22:00:00Z");
        assert_eq!(spring.len(), 23);
        let autumn = simulate(&s, "2026-10-24T21:59:00Z", "2026-10-25T23:00:00Z");
        assert_eq!(autumn.len(), 25);
    }
}
