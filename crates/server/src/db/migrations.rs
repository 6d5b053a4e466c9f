//! Embedded, append-only schema migrations on `PRAGMA user_version` (ADR 0021): migration N
//! brings the schema from version N-1 to N. Never edit a released migration; add one.

use rusqlite::Connection;

use super::{Error, Result};

/// The migrations, in order. Index 0 is version 1.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r"
CREATE TABLE vcenters (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    url TEXT NOT NULL,
    username TEXT NOT NULL,
    password_sealed BLOB,
    trust TEXT NOT NULL,
    allow_http INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    spec TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
CREATE TABLE job_vcenters (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    vcenter_id TEXT NOT NULL REFERENCES vcenters(id) ON DELETE RESTRICT,
    PRIMARY KEY (job_id, vcenter_id)
) STRICT;
CREATE TABLE schedules (
    job_id TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    window_minutes INTEGER,
    enabled INTEGER NOT NULL,
    next_run INTEGER,
    last_fired INTEGER
) STRICT;
CREATE TABLE runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    job_id TEXT REFERENCES jobs(id) ON DELETE SET NULL,
    job_name TEXT,
    trigger TEXT NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    retry_of TEXT,
    scheduled_for INTEGER,
    not_before INTEGER,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    reason TEXT,
    params TEXT NOT NULL
) STRICT;
CREATE INDEX runs_job ON runs(job_id, seq);
CREATE INDEX runs_status ON runs(status);
CREATE TABLE run_vms (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    vcenter_id TEXT NOT NULL,
    instance_uuid TEXT NOT NULL,
    vm_name TEXT NOT NULL,
    status TEXT NOT NULL,
    mode TEXT,
    backup_id TEXT,
    bytes_read INTEGER NOT NULL DEFAULT 0,
    bytes_written INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    warnings TEXT NOT NULL DEFAULT '[]',
    started_at INTEGER,
    finished_at INTEGER,
    PRIMARY KEY (run_id, vcenter_id, instance_uuid)
) STRICT;
CREATE TABLE run_logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    at INTEGER NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
) STRICT;
CREATE INDEX run_logs_run ON run_logs(run_id, seq);
CREATE TABLE backups (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    job_id TEXT,
    run_id TEXT,
    vcenter TEXT NOT NULL,
    vm_name TEXT NOT NULL,
    instance_uuid TEXT,
    mode TEXT NOT NULL,
    started INTEGER NOT NULL,
    finished INTEGER NOT NULL,
    logical_bytes INTEGER NOT NULL,
    bytes_read INTEGER NOT NULL,
    bytes_written INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    verified_at INTEGER,
    verify_ok INTEGER,
    verify_problems TEXT
) STRICT;
CREATE INDEX backups_vm ON backups(instance_uuid, started);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash BLOB NOT NULL UNIQUE,
    role TEXT NOT NULL DEFAULT 'admin',
    created_at INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at INTEGER
) STRICT;
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
",
];

/// The schema version this build writes.
#[must_use]
pub fn latest() -> u32 {
    u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX)
}

/// Applies every migration above the database's `user_version`, each in its own transaction.
///
/// # Errors
/// A database newer than this build, or a failing migration.
pub fn run(conn: &Connection) -> Result<()> {
    let current: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > latest() {
        return Err(Error::Invalid(format!(
            "the database has schema version {current}, newer than this vbm ({}); upgrade vbm",
            latest()
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index + 1;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}\nPRAGMA user_version = {version}; COMMIT;"
        ))
        .inspect_err(|_| {
            let _ = conn.execute_batch("ROLLBACK");
        })?;
        tracing::info!(version, "database migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_are_idempotent() {
        let conn = Connection::open_in_memory().unwrap();
        run(&conn).unwrap();
        run(&conn).unwrap();
        let v: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, latest());
    }

    #[test]
    fn newer_database_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("PRAGMA user_version = 999").unwrap();
        assert!(
            run(&conn)
                .unwrap_err()
                .to_string()
                .contains("newer than this vbm")
        );
    }
}
