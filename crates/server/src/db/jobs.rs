//! `jobs`, `job_vcenters` (which vCenters a job uses: a vCenter in use cannot be deleted) and
//! `schedules` (cron, time zone and the stored next run time in UTC milliseconds).

use jiff::Timestamp;
use rusqlite::{OptionalExtension, Transaction, params};

use super::{Db, Error, Page, Paged, Result, limit_plus_one, paged, runs, ts};
use crate::clock::{from_millis, to_millis};
use crate::ids::{JobId, RunId};
use crate::jobs::{Job, JobSpec};
use crate::run::{NewRun, RunKind, RunStatus, Trigger};
use crate::scheduler::Tick;

/// A schedule that is due.
#[derive(Debug, Clone)]
pub struct DueSchedule {
    /// Its job.
    pub job_id: JobId,
    /// Cron expression.
    pub cron: String,
    /// Time zone.
    pub timezone: String,
    /// Window.
    pub window_minutes: Option<u32>,
    /// The stored next run time.
    pub next_run: Timestamp,
}

/// A job with its schedule state.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// The job.
    pub job: Job,
    /// Stored next run time.
    pub next_run: Option<Timestamp>,
    /// Last time the schedule fired.
    pub last_fired: Option<Timestamp>,
}

fn load(c: &rusqlite::Connection, id: &JobId) -> Result<JobRow> {
    c.query_row(
        "SELECT j.spec, j.created_at, j.updated_at, s.next_run, s.last_fired
         FROM jobs j LEFT JOIN schedules s ON s.job_id = j.id WHERE j.id = ?1",
        [id.as_str()],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        },
    )
    .optional()?
    .ok_or_else(|| Error::NotFound {
        what: "job",
        id: id.to_string(),
    })
    .and_then(|(spec, created, updated, next, last)| {
        Ok(JobRow {
            job: Job {
                id: id.clone(),
                spec: serde_json::from_str(&spec)?,
                created_at: from_millis(created),
                updated_at: from_millis(updated),
            },
            next_run: ts(next),
            last_fired: ts(last),
        })
    })
}

fn conflict_or(e: rusqlite::Error, spec: &JobSpec) -> Error {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => {
            let text = e.to_string();
            if text.contains("FOREIGN KEY") {
                Error::Conflict("a source names a vCenter that does not exist".into())
            } else {
                Error::Conflict(format!("a job named {:?} already exists", spec.name))
            }
        }
        _ => e.into(),
    }
}

fn write_links(
    tx: &Transaction<'_>,
    id: &JobId,
    spec: &JobSpec,
    next_run: Option<Timestamp>,
) -> Result<()> {
    tx.execute("DELETE FROM job_vcenters WHERE job_id = ?1", [id.as_str()])?;
    for source in &spec.sources {
        tx.execute(
            "INSERT OR IGNORE INTO job_vcenters (job_id, vcenter_id) VALUES (?1, ?2)",
            params![id.as_str(), source.vcenter_id.as_str()],
        )
        .map_err(|e| conflict_or(e, spec))?;
    }
    match &spec.schedule {
        Some(s) => {
            tx.execute(
                "INSERT INTO schedules (job_id, cron, timezone, window_minutes, enabled, next_run)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(job_id) DO UPDATE SET cron = ?2, timezone = ?3, window_minutes = ?4, enabled = ?5, next_run = ?6",
                params![id.as_str(), s.cron, s.timezone, spec.window_minutes, spec.enabled, next_run.map(to_millis)],
            )?;
        }
        None => {
            tx.execute("DELETE FROM schedules WHERE job_id = ?1", [id.as_str()])?;
        }
    }
    Ok(())
}

impl Db {
    /// Inserts a job and its schedule (`next_run` computed by the caller from the cron).
    ///
    /// # Errors
    /// [`Error::Conflict`] for a duplicate name or an unknown vCenter.
    pub async fn job_create(
        &self,
        spec: JobSpec,
        next_run: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<JobRow> {
        let id = JobId::generate();
        let text = serde_json::to_string(&spec)?;
        self.write(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO jobs (id, name, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
                params![id.as_str(), spec.name, text, to_millis(now)],
            )
            .map_err(|e| conflict_or(e, &spec))?;
            write_links(&tx, &id, &spec, next_run)?;
            let row = load(&tx, &id)?;
            tx.commit()?;
            Ok(row)
        })
        .await
    }

    /// One job.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub async fn job_get(&self, id: JobId) -> Result<JobRow> {
        self.read(move |c| load(c, &id)).await
    }

    /// A page of jobs in creation order.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn job_list(&self, page: Page) -> Result<Paged<JobRow>> {
        self.read(move |c| {
            let ids: Vec<(i64, String)> = c
                .prepare("SELECT rowid, id FROM jobs WHERE rowid > ?1 ORDER BY rowid LIMIT ?2")?
                .query_map(
                    params![page.after.unwrap_or(0), limit_plus_one(page)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?
                .collect::<rusqlite::Result<_>>()?;
            let mut rows = Vec::with_capacity(ids.len());
            for (seq, id) in ids {
                let id = JobId::parse(&id).map_err(|e| Error::Invalid(e.to_string()))?;
                rows.push((seq, load(c, &id)?));
            }
            Ok(paged(rows, page))
        })
        .await
    }

    /// Every job (for inventory-wide views; bounded by the number of jobs an admin creates).
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn job_all(&self) -> Result<Vec<JobRow>> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.job_list(Page { limit: 500, after }).await?;
            out.extend(page.items);
            match page.next {
                Some(n) => after = Some(n),
                None => return Ok(out),
            }
        }
    }

    /// Replaces a job's definition. The stored next run time changes only when the schedule
    /// (cron, time zone) changed: `next_run` is then the caller's fresh computation.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Conflict`].
    pub async fn job_update(
        &self,
        id: JobId,
        spec: JobSpec,
        fresh_next_run: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<JobRow> {
        let text = serde_json::to_string(&spec)?;
        self.write(move |c| {
            let tx = c.transaction()?;
            let old = load(&tx, &id)?;
            let same_schedule = old.job.spec.schedule == spec.schedule;
            let next_run = if same_schedule {
                old.next_run
            } else {
                fresh_next_run
            };
            tx.execute(
                "UPDATE jobs SET name = ?2, spec = ?3, updated_at = ?4 WHERE id = ?1",
                params![id.as_str(), spec.name, text, to_millis(now)],
            )
            .map_err(|e| conflict_or(e, &spec))?;
            write_links(&tx, &id, &spec, next_run)?;
            let row = load(&tx, &id)?;
            tx.commit()?;
            Ok(row)
        })
        .await
    }

    /// Deletes a job; its history stays (runs keep the job name).
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Conflict`] while a run of it is active.
    pub async fn job_delete(&self, id: JobId) -> Result<()> {
        self.write(move |c| {
            let tx = c.transaction()?;
            if let Some(run) = runs::active_run_of(&tx, &id)? {
                return Err(Error::Conflict(format!(
                    "run {run} of this job is active; cancel it first"
                )));
            }
            let n = tx.execute("DELETE FROM jobs WHERE id = ?1", [id.as_str()])?;
            if n == 0 {
                return Err(Error::NotFound {
                    what: "job",
                    id: id.to_string(),
                });
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Enabled schedules whose next run time is at or before `now`.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn due_schedules(&self, now: Timestamp) -> Result<Vec<DueSchedule>> {
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT job_id, cron, timezone, window_minutes, next_run FROM schedules
                 WHERE enabled = 1 AND next_run IS NOT NULL AND next_run <= ?1 ORDER BY next_run",
            )?;
            let rows = stmt
                .query_map([to_millis(now)], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.into_iter()
                .map(|(id, cron, timezone, window_minutes, next)| {
                    Ok(DueSchedule {
                        job_id: JobId::parse(&id).map_err(|e| Error::Invalid(e.to_string()))?,
                        cron,
                        timezone,
                        window_minutes,
                        next_run: from_millis(next),
                    })
                })
                .collect()
        })
        .await
    }

    /// The earliest stored next run time of an enabled schedule.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn earliest_next_run(&self) -> Result<Option<Timestamp>> {
        self.read(|c| {
            let ms: Option<i64> = c.query_row(
                "SELECT MIN(next_run) FROM schedules WHERE enabled = 1",
                [],
                |r| r.get(0),
            )?;
            Ok(ts(ms))
        })
        .await
    }

    /// Applies a scheduler decision atomically: the new next run time and, for a firing, the
    /// queued run (skipped while the job already has an active run: no pile-up, F10) or, for a
    /// missed occurrence, a `missed` record. Compare-and-set on the stored next run time, so a
    /// decision taken on stale data does nothing. Returns the new run's id.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn apply_tick(
        &self,
        entry: &DueSchedule,
        decision: &Tick,
        now: Timestamp,
    ) -> Result<Option<RunId>> {
        let entry = entry.clone();
        let decision = decision.clone();
        self.write(move |c| {
            let tx = c.transaction()?;
            let (next, run) = match decision {
                Tick::Wait => return Ok(None),
                Tick::Fire { scheduled_for, next, catch_up } => {
                    let trigger = if catch_up { Trigger::CatchUp } else { Trigger::Schedule };
                    let mut run = NewRun::queued(RunKind::Backup, Some(entry.job_id.clone()), trigger);
                    run.scheduled_for = Some(scheduled_for);
                    if let Some(active) = runs::active_run_of(&tx, &entry.job_id)? {
                        run.status = RunStatus::Missed;
                        run.reason = Some(format!("skipped: run {active} of this job was still active"));
                    }
                    (next, run)
                }
                Tick::Missed { scheduled_for, next } => {
                    let mut run = NewRun::queued(RunKind::Backup, Some(entry.job_id.clone()), Trigger::Schedule);
                    run.scheduled_for = Some(scheduled_for);
                    run.status = RunStatus::Missed;
                    run.reason = Some("missed: the server was not running inside the backup window".into());
                    (next, run)
                }
            };
            let changed = tx.execute(
                "UPDATE schedules SET next_run = ?3, last_fired = ?4 WHERE job_id = ?1 AND next_run = ?2",
                params![entry.job_id.as_str(), to_millis(entry.next_run), next.map(to_millis), to_millis(now)],
            )?;
            if changed == 0 {
                return Ok(None);
            }
            let queued = run.status == RunStatus::Queued;
            let id = runs::insert(&tx, &run, now)?;
            tx.commit()?;
            Ok(queued.then_some(id))
        })
        .await
    }

    /// What the job's runs and the catalog know about each VM the job touched (R3).
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn job_seen_vms(&self, job: JobId) -> Result<Vec<crate::jobs::protection::SeenVm>> {
        use std::collections::BTreeMap;

        use crate::jobs::protection::SeenVm;
        self.read(move |c| {
            let mut out: BTreeMap<(String, String), SeenVm> = BTreeMap::new();
            // Keyed by vCenter (name, as backups record it) and instance UUID: two vCenters may
            // hold VMs with the same UUID.
            let mut stmt = c.prepare(
                "SELECT rv.vcenter_id, rv.instance_uuid,
                    (SELECT x.vm_name FROM run_vms x JOIN runs y ON y.id = x.run_id
                       WHERE y.job_id = ?1 AND x.vcenter_id = rv.vcenter_id
                         AND x.instance_uuid = rv.instance_uuid ORDER BY y.seq DESC LIMIT 1),
                    MIN(COALESCE(rv.started_at, r.created_at)),
                    MAX(CASE WHEN rv.status = 'success' THEN rv.finished_at END),
                    (SELECT v.name FROM vcenters v WHERE v.id = rv.vcenter_id)
                 FROM run_vms rv JOIN runs r ON r.id = rv.run_id
                 WHERE r.job_id = ?1 GROUP BY rv.vcenter_id, rv.instance_uuid",
            )?;
            let rows = stmt.query_map([job.as_str()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })?;
            for row in rows {
                let (vc, uuid, name, first, last, vc_name) = row?;
                let uuid = uuid.to_ascii_lowercase();
                out.insert(
                    (vc_name.unwrap_or_default().to_lowercase(), uuid.clone()),
                    SeenVm {
                        vcenter_id: crate::ids::VcenterId::parse(&vc).ok(),
                        vm_name: name.unwrap_or_else(|| uuid.clone()),
                        instance_uuid: uuid,
                        first_seen: ts(first),
                        last_success: ts(last),
                    },
                );
            }
            let mut stmt = c.prepare(
                "SELECT instance_uuid, MAX(vm_name), MIN(started), MAX(finished), vcenter FROM backups
                 WHERE job_id = ?1 AND instance_uuid IS NOT NULL GROUP BY vcenter, instance_uuid",
            )?;
            let rows = stmt.query_map([job.as_str()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })?;
            for row in rows {
                let (uuid, name, first, last, vc_name) = row?;
                let uuid = uuid.to_ascii_lowercase();
                let (first, last) = (from_millis(first), from_millis(last));
                let key = (vc_name.to_lowercase(), uuid.clone());
                let vm = out.entry(key).or_insert_with(|| SeenVm {
                    vcenter_id: None,
                    instance_uuid: uuid,
                    vm_name: name,
                    first_seen: None,
                    last_success: None,
                });
                vm.first_seen = Some(vm.first_seen.map_or(first, |f| f.min(first)));
                vm.last_success = Some(vm.last_success.map_or(last, |l| l.max(last)));
            }
            Ok(out.into_values().collect())
        })
        .await
    }
}
