//! `runs`, `run_vms` (per-VM results) and `run_logs`.

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{Db, Error, Page, Paged, Result, limit_plus_one, paged, ts};
use crate::clock::{from_millis, to_millis};
use crate::ids::{BackupId, InstanceUuid, JobId, RunId, VcenterId};
use crate::run::{LogLine, NewRun, Run, RunKind, RunStatus, RunVm, Trigger, escape_control};

/// Filter of run listings.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only this job's runs.
    pub job_id: Option<JobId>,
    /// Only runs in this state.
    pub status: Option<RunStatus>,
}

const COLUMNS: &str = "seq, id, kind, job_id, job_name, trigger, status, attempt, retry_of, \
    scheduled_for, not_before, created_at, started_at, finished_at, reason, params";

fn bad(e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.to_string().into())
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<(i64, Run)> {
    let kind: String = r.get(2)?;
    let trigger: String = r.get(5)?;
    let status: String = r.get(6)?;
    let params: String = r.get(15)?;
    Ok((
        r.get(0)?,
        Run {
            id: RunId::parse(&r.get::<_, String>(1)?).map_err(bad)?,
            kind: RunKind::parse(&kind).ok_or_else(|| bad(&kind))?,
            job_id: r
                .get::<_, Option<String>>(3)?
                .map(|s| JobId::parse(&s))
                .transpose()
                .map_err(bad)?,
            job_name: r.get(4)?,
            trigger: Trigger::parse(&trigger).ok_or_else(|| bad(&trigger))?,
            status: RunStatus::parse(&status).ok_or_else(|| bad(&status))?,
            attempt: r.get(7)?,
            retry_of: r
                .get::<_, Option<String>>(8)?
                .map(|s| RunId::parse(&s))
                .transpose()
                .map_err(bad)?,
            scheduled_for: ts(r.get(9)?),
            not_before: ts(r.get(10)?),
            created_at: from_millis(r.get(11)?),
            started_at: ts(r.get(12)?),
            finished_at: ts(r.get(13)?),
            reason: r.get(14)?,
            params: serde_json::from_str(&params).map_err(bad)?,
        },
    ))
}

/// Inserts a run (inside the caller's transaction).
pub(super) fn insert(c: &Connection, run: &NewRun, now: Timestamp) -> Result<RunId> {
    let job_name: Option<String> = match &run.job_id {
        Some(id) => c
            .query_row("SELECT name FROM jobs WHERE id = ?1", [id.as_str()], |r| {
                r.get(0)
            })
            .optional()?,
        None => None,
    };
    let finished = run.status.is_terminal().then(|| to_millis(now));
    c.execute(
        "INSERT INTO runs (id, kind, job_id, job_name, trigger, status, attempt, retry_of, scheduled_for, not_before, created_at, finished_at, reason, params)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            run.id.as_str(),
            run.kind.as_str(),
            run.job_id.as_ref().map(JobId::as_str),
            job_name,
            run.trigger.as_str(),
            run.status.as_str(),
            run.attempt,
            run.retry_of.as_ref().map(RunId::as_str),
            run.scheduled_for.map(to_millis),
            run.not_before.map(to_millis),
            to_millis(now),
            finished,
            run.reason,
            serde_json::to_string(&run.params)?,
        ],
    )?;
    Ok(run.id.clone())
}

/// The queued or running run of a job, if any.
pub(super) fn active_run_of(c: &Connection, job: &JobId) -> Result<Option<RunId>> {
    let id: Option<String> = c
        .query_row(
            "SELECT id FROM runs WHERE job_id = ?1 AND status IN ('queued', 'running') ORDER BY seq LIMIT 1",
            [job.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    id.map(|s| RunId::parse(&s).map_err(|e| Error::Invalid(e.to_string())))
        .transpose()
}

fn get(c: &Connection, id: &RunId) -> Result<Run> {
    c.query_row(
        &format!("SELECT {COLUMNS} FROM runs WHERE id = ?1"),
        [id.as_str()],
        from_row,
    )
    .optional()?
    .map(|(_, run)| run)
    .ok_or_else(|| Error::NotFound {
        what: "run",
        id: id.to_string(),
    })
}

fn vm_from_row(r: &Row<'_>) -> rusqlite::Result<RunVm> {
    let status: String = r.get(3)?;
    let warnings: String = r.get(9)?;
    Ok(RunVm {
        vcenter_id: VcenterId::parse(&r.get::<_, String>(0)?).map_err(bad)?,
        instance_uuid: InstanceUuid::parse(&r.get::<_, String>(1)?).map_err(bad)?,
        vm_name: r.get(2)?,
        status: RunStatus::parse(&status).ok_or_else(|| bad(&status))?,
        mode: r.get(4)?,
        backup_id: r
            .get::<_, Option<String>>(5)?
            .map(|s| BackupId::parse(&s))
            .transpose()
            .map_err(bad)?,
        bytes_read: r.get::<_, i64>(6)?.try_into().unwrap_or(0),
        bytes_written: r.get::<_, i64>(7)?.try_into().unwrap_or(0),
        error: r.get(8)?,
        warnings: serde_json::from_str(&warnings).map_err(bad)?,
        started_at: ts(r.get(10)?),
        finished_at: ts(r.get(11)?),
    })
}

impl Db {
    /// Inserts a run. For a job's backup run, refuses when the job already has an active run
    /// (L2: "run now" twice gives one run and a 409).
    ///
    /// # Errors
    /// [`Error::Conflict`] naming the active run; [`Error::NotFound`] for an unknown job.
    pub async fn run_create(&self, run: NewRun, now: Timestamp) -> Result<Run> {
        self.write(move |c| {
            let tx = c.transaction()?;
            if let Some(job) = &run.job_id {
                let exists: bool = tx
                    .query_row("SELECT 1 FROM jobs WHERE id = ?1", [job.as_str()], |_| {
                        Ok(true)
                    })
                    .optional()?
                    .unwrap_or(false);
                if !exists {
                    return Err(Error::NotFound {
                        what: "job",
                        id: job.to_string(),
                    });
                }
                if run.kind == RunKind::Backup
                    && let Some(active) = active_run_of(&tx, job)?
                {
                    return Err(Error::Conflict(format!(
                        "the job already has an active run {active}"
                    )));
                }
            }
            let id = insert(&tx, &run, now)?;
            let out = get(&tx, &id)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    /// One run.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub async fn run_get(&self, id: RunId) -> Result<Run> {
        self.read(move |c| get(c, &id)).await
    }

    /// A page of runs, newest first.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn run_list(&self, filter: RunFilter, page: Page) -> Result<Paged<Run>> {
        self.read(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {COLUMNS} FROM runs WHERE seq < ?1 AND (?2 IS NULL OR job_id = ?2) AND (?3 IS NULL OR status = ?3)
                 ORDER BY seq DESC LIMIT ?4"
            ))?;
            let rows = stmt
                .query_map(
                    params![
                        page.after.unwrap_or(i64::MAX),
                        filter.job_id.as_ref().map(JobId::as_str),
                        filter.status.map(RunStatus::as_str),
                        limit_plus_one(page)
                    ],
                    from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(paged(rows, page))
        })
        .await
    }

    /// The active (queued or running) run of a job.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn job_active_run(&self, job: JobId) -> Result<Option<RunId>> {
        self.read(move |c| active_run_of(c, &job)).await
    }

    /// Queued runs that may start now, oldest first; a backup run waits while another run of its
    /// job is running.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn runs_startable(&self, now: Timestamp) -> Result<Vec<Run>> {
        self.read(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {COLUMNS} FROM runs r WHERE status = 'queued' AND (not_before IS NULL OR not_before <= ?1)
                 AND NOT (kind = 'backup' AND job_id IS NOT NULL AND EXISTS
                     (SELECT 1 FROM runs o WHERE o.job_id = r.job_id AND o.status = 'running'))
                 ORDER BY seq LIMIT 100"
            ))?;
            let rows = stmt
                .query_map([to_millis(now)], from_row)?
                .map(|r| r.map(|(_, run)| run))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// The earliest `not_before` of a queued run in the future.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn next_delayed_run(&self) -> Result<Option<Timestamp>> {
        self.read(|c| {
            let ms: Option<i64> = c.query_row(
                "SELECT MIN(not_before) FROM runs WHERE status = 'queued' AND not_before IS NOT NULL",
                [],
                |r| r.get(0),
            )?;
            Ok(ts(ms))
        })
        .await
    }

    /// Moves a run from queued to running; false when it was no longer queued.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn run_start(&self, id: RunId, now: Timestamp) -> Result<bool> {
        self.write(move |c| {
            let n = c.execute(
                "UPDATE runs SET status = 'running', started_at = ?2 WHERE id = ?1 AND status = 'queued'",
                params![id.as_str(), to_millis(now)],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// Ends a run (only a non-terminal one; terminal states never change).
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn run_finish(
        &self,
        id: RunId,
        status: RunStatus,
        reason: Option<String>,
        now: Timestamp,
    ) -> Result<bool> {
        self.write(move |c| {
            let n = c.execute(
                "UPDATE runs SET status = ?2, reason = ?3, finished_at = ?4 WHERE id = ?1 AND status IN ('queued', 'running')",
                params![id.as_str(), status.as_str(), reason, to_millis(now)],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// Records or updates one VM's result in a run.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn run_vm_put(&self, run: RunId, vm: RunVm) -> Result<()> {
        let warnings = serde_json::to_string(&vm.warnings)?;
        self.write(move |c| {
            c.execute(
                "INSERT INTO run_vms (run_id, vcenter_id, instance_uuid, vm_name, status, mode, backup_id, bytes_read, bytes_written, error, warnings, started_at, finished_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 ON CONFLICT(run_id, vcenter_id, instance_uuid) DO UPDATE SET vm_name = ?4, status = ?5, mode = ?6, backup_id = ?7,
                   bytes_read = ?8, bytes_written = ?9, error = ?10, warnings = ?11, started_at = ?12, finished_at = ?13",
                params![
                    run.as_str(),
                    vm.vcenter_id.as_str(),
                    vm.instance_uuid.as_str(),
                    vm.vm_name,
                    vm.status.as_str(),
                    vm.mode,
                    vm.backup_id.as_ref().map(BackupId::as_str),
                    i64::try_from(vm.bytes_read).unwrap_or(i64::MAX),
                    i64::try_from(vm.bytes_written).unwrap_or(i64::MAX),
                    vm.error,
                    warnings,
                    vm.started_at.map(to_millis),
                    vm.finished_at.map(to_millis),
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// The per-VM results of a run.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn run_vms(&self, run: RunId) -> Result<Vec<RunVm>> {
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT vcenter_id, instance_uuid, vm_name, status, mode, backup_id, bytes_read, bytes_written, error, warnings, started_at, finished_at
                 FROM run_vms WHERE run_id = ?1 ORDER BY vm_name, instance_uuid",
            )?;
            let rows = stmt
                .query_map([run.as_str()], vm_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Appends a log line (control characters escaped: I6).
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn run_log(
        &self,
        run: RunId,
        level: &'static str,
        message: String,
        now: Timestamp,
    ) -> Result<LogLine> {
        let message = escape_control(&message);
        self.write(move |c| {
            c.execute(
                "INSERT INTO run_logs (run_id, at, level, message) VALUES (?1, ?2, ?3, ?4)",
                params![run.as_str(), to_millis(now), level, message],
            )?;
            Ok(LogLine {
                seq: c.last_insert_rowid(),
                at: now,
                level: level.to_owned(),
                message,
            })
        })
        .await
    }

    /// A page of a run's log, oldest first.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn run_logs(&self, run: RunId, page: Page) -> Result<Paged<LogLine>> {
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT seq, at, level, message FROM run_logs WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![run.as_str(), page.after.unwrap_or(0), limit_plus_one(page)], |r| {
                    let seq: i64 = r.get(0)?;
                    Ok((
                        seq,
                        LogLine { seq, at: from_millis(r.get(1)?), level: r.get(2)?, message: r.get(3)? },
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(paged(rows, page))
        })
        .await
    }

    /// After a crash: every `running` run and VM becomes `interrupted` (INV-7). Returns those
    /// runs so that their snapshots can be swept and they can be retried.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn recover_interrupted(&self, now: Timestamp) -> Result<Vec<(Run, Vec<RunVm>)>> {
        let runs = self
            .read(|c| {
                let mut stmt = c.prepare(&format!(
                    "SELECT {COLUMNS} FROM runs WHERE status = 'running' ORDER BY seq"
                ))?;
                let rows = stmt
                    .query_map([], from_row)?
                    .map(|r| r.map(|(_, run)| run))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .await?;
        let mut out = Vec::new();
        for run in runs {
            let vms = self.run_vms(run.id.clone()).await?;
            let id = run.id.clone();
            self.write(move |c| {
                let tx = c.transaction()?;
                tx.execute(
                    "UPDATE runs SET status = 'interrupted', finished_at = ?2,
                       reason = 'interrupted: the server stopped while this run was active' WHERE id = ?1",
                    params![id.as_str(), to_millis(now)],
                )?;
                tx.execute(
                    "UPDATE run_vms SET status = 'interrupted', finished_at = ?2,
                       error = 'interrupted: the server stopped during this backup'
                     WHERE run_id = ?1 AND status IN ('queued', 'running')",
                    params![id.as_str(), to_millis(now)],
                )?;
                tx.commit()?;
                Ok(())
            })
            .await?;
            let run = self.run_get(run.id.clone()).await?;
            out.push((run, vms));
        }
        Ok(out)
    }
}
