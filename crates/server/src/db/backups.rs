//! `backups`: the catalog of restore points. It mirrors the repository and is rebuilt from it
//! (R4, F2): a row is inserted only after the repository has the manifest, and a sync removes
//! rows whose manifest vanished and adds manifests without a row.

use std::collections::{HashMap, HashSet};

use jiff::Timestamp;
use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Db, Error, Page, Paged, Result, limit_plus_one, paged, ts};
use crate::backend::{CatalogEntry, CatalogListing, VerifiedBackup, VerifyState};
use crate::clock::{from_millis, to_millis};
use crate::ids::{BackupId, RunId};

/// A catalog row as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BackupRecord {
    /// Id.
    pub id: BackupId,
    /// Job that made it.
    pub job_id: Option<String>,
    /// Run that made it.
    pub run_id: Option<String>,
    /// vCenter label.
    pub vcenter: String,
    /// VM name at backup time.
    pub vm_name: String,
    /// VM instance UUID.
    pub instance_uuid: Option<String>,
    /// `full` / `incremental`.
    pub mode: String,
    /// Start.
    #[schema(value_type = String, format = DateTime)]
    pub started: Timestamp,
    /// End.
    #[schema(value_type = String, format = DateTime)]
    pub finished: Timestamp,
    /// Logical size.
    pub logical_bytes: u64,
    /// Bytes read from vCenter.
    pub bytes_read: u64,
    /// Bytes newly stored.
    pub bytes_written: u64,
    /// Last verify.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub verified_at: Option<Timestamp>,
    /// Its result.
    pub verify_ok: Option<bool>,
    /// Problems it found.
    pub verify_problems: Vec<String>,
    /// The manifest.
    #[schema(value_type = Object)]
    pub manifest: serde_json::Value,
}

/// Filter of catalog listings.
#[derive(Debug, Clone, Default)]
pub struct BackupFilter {
    /// Only backups of this job.
    pub job_id: Option<String>,
    /// Only backups of this VM (instance UUID).
    pub instance_uuid: Option<String>,
    /// Only backups whose VM name is exactly this.
    pub vm_name: Option<String>,
}

const COLUMNS: &str = "seq, id, job_id, run_id, vcenter, vm_name, instance_uuid, mode, started, finished, \
    logical_bytes, bytes_read, bytes_written, verified_at, verify_ok, verify_problems, manifest";

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<(i64, BackupRecord)> {
    let conv = |e: &dyn std::fmt::Display| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            e.to_string().into(),
        )
    };
    let problems: Option<String> = r.get(15)?;
    let manifest: String = r.get(16)?;
    Ok((
        r.get(0)?,
        BackupRecord {
            id: BackupId::parse(&r.get::<_, String>(1)?).map_err(|e| conv(&e))?,
            job_id: r.get(2)?,
            run_id: r.get(3)?,
            vcenter: r.get(4)?,
            vm_name: r.get(5)?,
            instance_uuid: r.get(6)?,
            mode: r.get(7)?,
            started: from_millis(r.get(8)?),
            finished: from_millis(r.get(9)?),
            logical_bytes: u(r.get(10)?),
            bytes_read: u(r.get(11)?),
            bytes_written: u(r.get(12)?),
            verified_at: ts(r.get(13)?),
            verify_ok: r.get(14)?,
            verify_problems: problems
                .map(|p| serde_json::from_str(&p))
                .transpose()
                .map_err(|e| conv(&e))?
                .unwrap_or_default(),
            manifest: serde_json::from_str(&manifest).map_err(|e| conv(&e))?,
        },
    ))
}

/// The problem lines stored for a verify known only from the repository's `verify.json` (which
/// records a count, not the lines).
fn recorded_problems(state: &VerifyState) -> Vec<String> {
    if state.problems == 0 {
        Vec::new()
    } else {
        vec![format!(
            "{} problem(s) found by the verify of {} (details are in that verify run's log)",
            state.problems, state.verified_at
        )]
    }
}

fn insert(c: &rusqlite::Connection, e: &CatalogEntry, run: Option<&RunId>) -> Result<()> {
    let problems = match &e.verify {
        Some(v) => Some(serde_json::to_string(&recorded_problems(v))?),
        None => None,
    };
    c.execute(
        "INSERT INTO backups (id, job_id, run_id, vcenter, vm_name, instance_uuid, mode, started, finished, logical_bytes, bytes_read, bytes_written, manifest, verified_at, verify_ok, verify_problems)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
         ON CONFLICT(id) DO UPDATE SET run_id = COALESCE(?3, run_id)",
        params![
            e.id.as_str(),
            e.job_id,
            run.map(RunId::as_str),
            e.vcenter,
            e.vm_name,
            e.instance_uuid,
            e.mode,
            to_millis(e.started),
            to_millis(e.finished),
            i(e.logical_bytes),
            i(e.bytes_read),
            i(e.bytes_written),
            serde_json::to_string(&e.manifest)?,
            e.verify.as_ref().map(|v| to_millis(v.verified_at)),
            e.verify.as_ref().map(|v| v.ok),
            problems,
        ],
    )?;
    Ok(())
}

impl Db {
    /// Records a restore point the repository now holds.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn backup_record(&self, entry: CatalogEntry, run: Option<RunId>) -> Result<()> {
        self.write(move |c| insert(c, &entry, run.as_ref())).await
    }

    /// Makes the catalog equal to the repository's list: adds missing rows, removes rows whose
    /// manifest is gone (never rows whose manifest is only unreadable), and takes verify results
    /// the repository recorded after the row's (e.g. by `vbm verify`). Returns (added, removed).
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn backup_sync(&self, listing: CatalogListing) -> Result<(usize, usize)> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let existing: HashMap<String, Option<i64>> = tx
                .prepare("SELECT id, verified_at FROM backups")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let wanted: HashSet<String> = listing
                .entries
                .iter()
                .map(|e| e.id.to_string())
                .chain(listing.unreadable.iter().map(ToString::to_string))
                .collect();
            let mut added = 0;
            for e in &listing.entries {
                match existing.get(e.id.as_str()) {
                    None => {
                        insert(&tx, e, None)?;
                        added += 1;
                    }
                    Some(row_verified) => {
                        if let Some(v) = &e.verify
                            && row_verified.is_none_or(|at| at < to_millis(v.verified_at))
                        {
                            tx.execute(
                                "UPDATE backups SET verified_at = ?2, verify_ok = ?3, verify_problems = ?4 WHERE id = ?1",
                                params![
                                    e.id.as_str(),
                                    to_millis(v.verified_at),
                                    v.ok,
                                    serde_json::to_string(&recorded_problems(v))?
                                ],
                            )?;
                        }
                    }
                }
            }
            let mut removed = 0;
            for id in existing.keys().filter(|id| !wanted.contains(id.as_str())) {
                removed += tx.execute("DELETE FROM backups WHERE id = ?1", [id])?;
            }
            tx.commit()?;
            Ok((added, removed))
        })
        .await
    }

    /// The restore point read from a snapshot (the engine names snapshots `vbm-<run id>` and
    /// records the name in the manifest): how recovery finds a backup a crash left uncatalogued
    /// in its run (F2).
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn backup_by_snapshot(
        &self,
        snapshot: String,
        instance_uuid: String,
    ) -> Result<Option<BackupRecord>> {
        self.read(move |c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {COLUMNS} FROM backups WHERE json_extract(manifest, '$.snapshot') = ?1 AND instance_uuid = ?2"
                ),
                params![snapshot, instance_uuid],
                from_row,
            )
            .optional()?
            .map(|(_, b)| b))
        })
        .await
    }

    /// One restore point.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub async fn backup_get(&self, id: BackupId) -> Result<BackupRecord> {
        self.read(move |c| {
            c.query_row(
                &format!("SELECT {COLUMNS} FROM backups WHERE id = ?1"),
                [id.as_str()],
                from_row,
            )
            .optional()?
            .map(|(_, b)| b)
            .ok_or_else(|| Error::NotFound {
                what: "backup",
                id: id.to_string(),
            })
        })
        .await
    }

    /// A page of restore points, newest first.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn backup_list(
        &self,
        filter: BackupFilter,
        page: Page,
    ) -> Result<Paged<BackupRecord>> {
        self.read(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {COLUMNS} FROM backups WHERE seq < ?1 AND (?2 IS NULL OR job_id = ?2)
                 AND (?3 IS NULL OR instance_uuid = ?3) AND (?4 IS NULL OR vm_name = ?4)
                 ORDER BY seq DESC LIMIT ?5"
            ))?;
            let rows = stmt
                .query_map(
                    params![
                        page.after.unwrap_or(i64::MAX),
                        filter.job_id,
                        filter.instance_uuid,
                        filter.vm_name,
                        limit_plus_one(page)
                    ],
                    from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(paged(rows, page))
        })
        .await
    }

    /// Every restore point of one VM made by one job (retention works per job and VM).
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn backups_of(
        &self,
        job_id: String,
        instance_uuid: String,
    ) -> Result<Vec<BackupRecord>> {
        self.read(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {COLUMNS} FROM backups WHERE job_id = ?1 AND instance_uuid = ?2 ORDER BY started DESC"
            ))?;
            let rows = stmt
                .query_map(params![job_id, instance_uuid], from_row)?
                .map(|r| r.map(|(_, b)| b))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// The distinct VMs a job has backups of.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn backup_vms_of_job(&self, job_id: String) -> Result<Vec<(String, String)>> {
        self.read(move |c| {
            let rows = c
                .prepare("SELECT DISTINCT instance_uuid, vm_name FROM backups WHERE job_id = ?1 AND instance_uuid IS NOT NULL ORDER BY vm_name")?
                .query_map([job_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Newest finish time per (job, VM name): seeds the "last success" metric after a restart.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn backup_last_success(&self) -> Result<Vec<(String, String, Timestamp)>> {
        self.read(|c| {
            let rows = c
                .prepare("SELECT COALESCE(job_id, ''), vm_name, MAX(finished) FROM backups GROUP BY job_id, vm_name")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, from_millis(r.get(2)?))))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Stores a verify result; false when the backup has no catalog row.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn backup_set_verified(&self, verdict: VerifiedBackup) -> Result<bool> {
        let problems = serde_json::to_string(&verdict.problems)?;
        self.write(move |c| {
            let n = c.execute(
                "UPDATE backups SET verified_at = ?2, verify_ok = ?3, verify_problems = ?4 WHERE id = ?1",
                params![verdict.id.as_str(), to_millis(verdict.verified_at), verdict.ok, problems],
            )?;
            Ok(n > 0)
        })
        .await
    }

    /// Removes catalog rows (after the repository deleted the restore points).
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn backup_forget(&self, ids: Vec<BackupId>) -> Result<()> {
        self.write(move |c| {
            let tx = c.transaction()?;
            for id in &ids {
                tx.execute("DELETE FROM backups WHERE id = ?1", [id.as_str()])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }
}
