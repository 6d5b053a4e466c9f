//! Configuration: a TOML file (`vbm serve --config FILE`), overridden by command-line flags and
//! environment variables (`VBM_DATA`, `VBM_LISTEN`, `VBM_REPO`, `VBM_MASTER_KEY`, `VBM_LOG`).
//! Unknown keys are errors, so a typo never silently falls back to a default.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file cannot be read.
    #[error("config file {path}: {source}")]
    Read {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for vbm.
    #[error("config file {path}: {message}")]
    Parse {
        /// Path.
        path: String,
        /// Parser message (line and column).
        message: String,
    },
    /// A value is out of range.
    #[error("config: {0}")]
    Invalid(String),
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `host:port` to listen on (default `127.0.0.1:8080`).
    pub listen: Option<String>,
    /// Data directory: database, master key, database copies.
    pub data_dir: Option<PathBuf>,
    /// Backup repository directory.
    pub repo: Option<PathBuf>,
    /// Key file of an encrypted repository (default: the repository's default key location).
    pub repo_key_file: Option<PathBuf>,
    /// How backups read and store data.
    pub engine: EngineConfig,
    /// Logging.
    pub log: LogConfig,
    /// Concurrency limits.
    pub limits: Limits,
    /// HTTP limits.
    pub http: HttpConfig,
    /// Garbage collection schedule.
    pub gc: GcConfig,
    /// The sweep of leftover `vbm-*` snapshots.
    pub snapshots: SnapshotsConfig,
}

/// `[snapshots]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotsConfig {
    /// Seconds between two sweeps of every vCenter for `vbm-*` snapshots that finished runs
    /// left behind (default 3600; 0 = never; the first sweep runs this long after start).
    pub sweep_interval_secs: u64,
}

impl Default for SnapshotsConfig {
    fn default() -> Self {
        Self {
            sweep_interval_secs: 3600,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `vbm_server=debug` (overridden by `VBM_LOG`).
    pub level: String,
    /// `text` or `json` (JSON lines: one event per line, control characters escaped).
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[limits]`: how many VM backups run at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// In total (1-256, default 4).
    pub max_concurrent_backups: u32,
    /// Per vCenter (default 4).
    pub per_vcenter: u32,
    /// Per ESXi host (default 2).
    pub per_host: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_concurrent_backups: 4,
            per_vcenter: 4,
            per_host: 2,
        }
    }
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest accepted request body (default 1 MiB).
    pub body_limit_bytes: usize,
    /// Time allowed to produce a response (default 60 s; SSE streams are exempt once started).
    pub request_timeout_secs: u64,
    /// Time a client has to send a request's headers once it has connected or finished its
    /// previous request (default 30 s): closes slowloris and idle keep-alive connections (I2).
    pub header_timeout_secs: u64,
    /// Connections served at once (default 1024); further clients wait in the listen queue.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: 1024 * 1024,
            request_timeout_secs: 60,
            header_timeout_secs: 30,
            max_connections: 1024,
        }
    }
}

/// `[gc]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// Cron expression (default Sundays 04:00); empty = never.
    pub cron: String,
    /// Time zone of the expression.
    pub timezone: String,
    /// Unreferenced chunks younger than this are kept (default: the grace period recorded in
    /// the repository, one hour). Never shorter than the longest clock skew between writers.
    pub grace_secs: Option<u64>,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            cron: "0 4 * * 0".into(),
            timezone: "UTC".into(),
            grace_secs: None,
        }
    }
}

/// `[engine]`: how backups read and store data.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Parallel HTTP range requests per disk (1-64, default 4).
    pub streams: u32,
    /// Threads hashing, compressing and decoding chunks (0 = one per core).
    pub workers: u32,
    /// Largest single HTTP range request, bytes (1 MiB-1 GiB, default 32 MiB). Smaller requests
    /// report progress and resume after a broken connection at a finer grain.
    pub max_request_bytes: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            streams: 4,
            workers: 0,
            max_request_bytes: 32 << 20,
        }
    }
}

impl Config {
    /// Reads and checks a config file.
    ///
    /// # Errors
    /// Unreadable file, bad TOML, unknown keys, out-of-range values.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            Error::Parse { message, .. } => Error::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses config text.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn parse(text: &str) -> Result<Self, Error> {
        let config: Self = toml::from_str(text).map_err(|e| Error::Parse {
            path: String::new(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), Error> {
        let l = &self.limits;
        for (name, v) in [
            ("limits.max_concurrent_backups", l.max_concurrent_backups),
            ("limits.per_vcenter", l.per_vcenter),
            ("limits.per_host", l.per_host),
        ] {
            if !(1..=256).contains(&v) {
                return Err(Error::Invalid(format!(
                    "{name} must be between 1 and 256, got {v}"
                )));
            }
        }
        if !(1..=64).contains(&self.engine.streams) {
            return Err(Error::Invalid(format!(
                "engine.streams must be between 1 and 64, got {}",
                self.engine.streams
            )));
        }
        if !((1 << 20)..=(1 << 30)).contains(&self.engine.max_request_bytes) {
            return Err(Error::Invalid(format!(
                "engine.max_request_bytes must be between 1 MiB and 1 GiB, got {}",
                self.engine.max_request_bytes
            )));
        }
        if self.engine.workers > 256 {
            return Err(Error::Invalid(
                "engine.workers must be between 0 (one per core) and 256".into(),
            ));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.http.body_limit_bytes) {
            return Err(Error::Invalid(
                "http.body_limit_bytes must be between 1 KiB and 64 MiB".into(),
            ));
        }
        if !(1..=3600).contains(&self.http.request_timeout_secs) {
            return Err(Error::Invalid(
                "http.request_timeout_secs must be between 1 and 3600".into(),
            ));
        }
        if !(1..=300).contains(&self.http.header_timeout_secs) {
            return Err(Error::Invalid(
                "http.header_timeout_secs must be between 1 and 300".into(),
            ));
        }
        if !(8..=65536).contains(&self.http.max_connections) {
            return Err(Error::Invalid(
                "http.max_connections must be between 8 and 65536".into(),
            ));
        }
        if self.snapshots.sweep_interval_secs > 7 * 24 * 3600 {
            return Err(Error::Invalid(
                "snapshots.sweep_interval_secs must be between 0 (never) and 604800 (a week)"
                    .into(),
            ));
        }
        if !self.gc.cron.is_empty() {
            crate::scheduler::CronSchedule::parse(&self.gc.cron, &self.gc.timezone)
                .map_err(|e| Error::Invalid(format!("gc.{e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../../deploy/vbm.toml");
        let c = Config::parse(text).unwrap();
        assert_eq!(c.limits.per_host, 2);
    }

    #[test]
    fn typos_are_errors() {
        let err = Config::parse("[limits]\nmax_concurent_backups = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field"), "{err}");
        let err = Config::parse("[limits]\nper_host = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("limits.per_host must be between 1 and 256"),
            "{err}"
        );
    }
}
