//! `vcenters`: saved connections; the password column holds only sealed bytes.

use jiff::Timestamp;
use rusqlite::{OptionalExtension, Row, params};

use super::{Db, Error, Page, Paged, Result, limit_plus_one, paged};
use crate::clock::{from_millis, to_millis};
use crate::ids::VcenterId;
use crate::vcenter::{Trust, Vcenter, VcenterInput};

/// A stored row: the API view plus the sealed password.
#[derive(Debug, Clone)]
pub struct VcenterRow {
    /// What the API shows (`password_source` is filled in by the caller).
    pub vcenter: Vcenter,
    /// The sealed password (see [`crate::crypto::MasterKey::seal`]).
    pub password_sealed: Option<Vec<u8>>,
}

/// What to do with the stored password on update.
#[derive(Debug, Clone)]
pub enum PasswordChange {
    /// Keep it.
    Keep,
    /// Replace it with these sealed bytes.
    Set(Vec<u8>),
    /// Remove it.
    Clear,
}

const COLUMNS: &str =
    "rowid, id, name, url, username, password_sealed, trust, allow_http, created_at, updated_at";

fn from_row(row: &Row<'_>) -> rusqlite::Result<(i64, VcenterRow, String)> {
    let sealed: Option<Vec<u8>> = row.get(5)?;
    let trust: String = row.get(6)?;
    let id: String = row.get(1)?;
    Ok((
        row.get(0)?,
        VcenterRow {
            vcenter: Vcenter {
                id: VcenterId::parse(&id).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        1,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })?,
                name: row.get(2)?,
                url: row.get(3)?,
                username: row.get(4)?,
                trust: Trust::System,
                allow_http: row.get(7)?,
                password_set: sealed.is_some(),
                password_source: String::new(),
                created_at: from_millis(row.get(8)?),
                updated_at: from_millis(row.get(9)?),
            },
            password_sealed: sealed,
        },
        trust,
    ))
}

fn finish(raw: (i64, VcenterRow, String)) -> Result<(i64, VcenterRow)> {
    let (seq, mut row, trust) = raw;
    row.vcenter.trust = serde_json::from_str(&trust)?;
    Ok((seq, row))
}

fn unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::ConstraintViolation)
    )
}

impl Db {
    /// Inserts a connection.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the name is taken.
    pub async fn vcenter_create(
        &self,
        id: VcenterId,
        input: VcenterInput,
        password_sealed: Option<Vec<u8>>,
        now: Timestamp,
    ) -> Result<VcenterRow> {
        let trust = serde_json::to_string(&input.trust)?;
        self.write(move |c| {
            c.execute(
                "INSERT INTO vcenters (id, name, url, username, password_sealed, trust, allow_http, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                params![id.as_str(), input.name, input.url, input.username, password_sealed, trust, input.allow_http, to_millis(now)],
            )
            .map_err(|e| {
                if unique_violation(&e) {
                    Error::Conflict(format!("a vCenter named {:?} already exists", input.name))
                } else {
                    e.into()
                }
            })?;
            get(c, &id)
        })
        .await
    }

    /// One connection.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub async fn vcenter_get(&self, id: VcenterId) -> Result<VcenterRow> {
        self.read(move |c| get(c, &id)).await
    }

    /// The connection with this name (case-insensitive), if any: backups record the vCenter by
    /// name.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn vcenter_by_name(&self, name: String) -> Result<Option<VcenterRow>> {
        self.read(move |c| {
            c.query_row(
                &format!("SELECT {COLUMNS} FROM vcenters WHERE name = ?1 COLLATE NOCASE"),
                [name],
                from_row,
            )
            .optional()?
            .map(|r| finish(r).map(|(_, row)| row))
            .transpose()
        })
        .await
    }

    /// A page of connections in creation order.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn vcenter_list(&self, page: Page) -> Result<Paged<VcenterRow>> {
        self.read(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {COLUMNS} FROM vcenters WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"
            ))?;
            let rows = stmt
                .query_map(
                    params![page.after.unwrap_or(0), limit_plus_one(page)],
                    from_row,
                )?
                .map(|r| finish(r?))
                .collect::<Result<Vec<_>>>()?;
            Ok(paged(rows, page))
        })
        .await
    }

    /// Replaces a connection's settings.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Conflict`] on a duplicate name.
    pub async fn vcenter_update(
        &self,
        id: VcenterId,
        input: VcenterInput,
        password: PasswordChange,
        now: Timestamp,
    ) -> Result<VcenterRow> {
        let trust = serde_json::to_string(&input.trust)?;
        self.write(move |c| {
            let tx = c.transaction()?;
            let changed = tx
                .execute(
                    "UPDATE vcenters SET name = ?2, url = ?3, username = ?4, trust = ?5, allow_http = ?6, updated_at = ?7 WHERE id = ?1",
                    params![id.as_str(), input.name, input.url, input.username, trust, input.allow_http, to_millis(now)],
                )
                .map_err(|e| {
                    if unique_violation(&e) {
                        Error::Conflict(format!("a vCenter named {:?} already exists", input.name))
                    } else {
                        e.into()
                    }
                })?;
            if changed == 0 {
                return Err(Error::NotFound { what: "vCenter", id: id.to_string() });
            }
            match password {
                PasswordChange::Keep => {}
                PasswordChange::Set(sealed) => {
                    tx.execute("UPDATE vcenters SET password_sealed = ?2 WHERE id = ?1", params![id.as_str(), sealed])?;
                }
                PasswordChange::Clear => {
                    tx.execute("UPDATE vcenters SET password_sealed = NULL WHERE id = ?1", params![id.as_str()])?;
                }
            }
            let row = get(&tx, &id)?;
            tx.commit()?;
            Ok(row)
        })
        .await
    }

    /// Deletes a connection that no job uses.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Conflict`] naming the jobs that use it.
    pub async fn vcenter_delete(&self, id: VcenterId) -> Result<()> {
        self.write(move |c| {
            let jobs: Vec<String> = c
                .prepare("SELECT j.name FROM job_vcenters jv JOIN jobs j ON j.id = jv.job_id WHERE jv.vcenter_id = ?1 ORDER BY j.name")?
                .query_map([id.as_str()], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            if !jobs.is_empty() {
                return Err(Error::Conflict(format!(
                    "the vCenter is used by job(s) {}; change or delete them first",
                    jobs.join(", ")
                )));
            }
            let n = c.execute("DELETE FROM vcenters WHERE id = ?1", [id.as_str()])?;
            if n == 0 {
                return Err(Error::NotFound { what: "vCenter", id: id.to_string() });
            }
            Ok(())
        })
        .await
    }
}

fn get(c: &rusqlite::Connection, id: &VcenterId) -> Result<VcenterRow> {
    let raw = c
        .query_row(
            &format!("SELECT {COLUMNS} FROM vcenters WHERE id = ?1"),
            [id.as_str()],
            from_row,
        )
        .optional()?
        .ok_or_else(|| Error::NotFound {
            what: "vCenter",
            id: id.to_string(),
        })?;
    finish(raw).map(|(_, row)| row)
}
