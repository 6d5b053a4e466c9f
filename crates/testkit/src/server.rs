//! Starting the real `vbm serve` binary for API tests: a temp data directory, a free loopback
//! port, an API key, and kill -9 / SIGTERM / restart on the same data directory. Optionally a
//! backup repository (created at first start), a faked clock that the test can move while the
//! server runs, and environment changes between restarts (failpoints).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::OnceCell;

use crate::testbed::repo_root;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

static BINARY: OnceCell<PathBuf> = OnceCell::const_new();

/// Options for [`Server::start_with`].
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Backup repository directory (`--repo`; created with `--init-repo` when absent or empty).
    pub repo: Option<PathBuf>,
    /// Content of a `vbm.toml` to pass with `--config`.
    pub config_toml: Option<String>,
    /// Extra environment variables (e.g. `VCENTER_PASSWORD_LAB`).
    pub env: Vec<(String, String)>,
    /// Run under `faketime` with this spec (e.g. `+30d`, `@2026-03-29 01:59:00`); monotonic time
    /// stays real (`FAKETIME_DONT_FAKE_MONOTONIC=1`).
    pub faketime: Option<String>,
    /// Run under libfaketime reading its offset from this file (e.g. `+1d`), re-read on every
    /// clock call: the test moves the server's wall clock without a restart by rewriting the
    /// file. Monotonic time stays real. Ignored when `faketime` is set.
    pub faketime_file: Option<PathBuf>,
    /// Use JSON log lines.
    pub json_logs: bool,
}

/// Where Debian's libfaketime lives (package `libfaketime`, pulled in by `faketime`).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// A running `vbm serve`. Dropping it kills the process; the data directory lives as long as
/// the `Server`.
#[derive(Debug)]
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// An admin API key.
    pub api_key: String,
    /// The data directory (database, master key).
    pub data_dir: PathBuf,
    /// Where the server's stderr (its log) goes, appended across restarts.
    pub log_path: PathBuf,
    options: ServerOptions,
    child: Option<Child>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// Builds `vbm` once per test process (under a file lock) and returns its path; `VBM_BIN`
/// overrides.
///
/// # Errors
/// When the build fails.
pub async fn vbm_binary() -> anyhow::Result<PathBuf> {
    BINARY
        .get_or_try_init(|| async {
            if let Ok(bin) = std::env::var("VBM_BIN")
                && Path::new(&bin).is_file()
            {
                return Ok(PathBuf::from(bin));
            }
            let root = repo_root();
            let output = Command::new(env!("CARGO"))
                .current_dir(&root)
                .args([
                    "build",
                    "-p",
                    "vbm",
                    "--bin",
                    "vbm",
                    "--message-format=json-render-diagnostics",
                ])
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()
                .await
                .context("running cargo build -p vbm")?;
            if !output.status.success() {
                bail!("cargo build -p vbm failed ({})", output.status);
            }
            let stdout = String::from_utf8_lossy(&output.stdout);
            stdout
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| {
                    v.get("executable")
                        .and_then(|e| e.as_str())
                        .map(PathBuf::from)
                })
                .next_back()
                .context("cargo did not report the vbm executable")
        })
        .await
        .cloned()
}

impl Server {
    /// Starts `vbm serve` with defaults.
    ///
    /// # Errors
    /// Build or start failures.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(ServerOptions::default()).await
    }

    /// Starts `vbm serve` with options: creates the data dir and an API key first.
    ///
    /// # Errors
    /// Build or start failures.
    pub async fn start_with(options: ServerOptions) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("vbm-server-").tempdir()?;
        let data_dir = dir.path().join("data");
        let (api_key, http) = new_api_key(&data_dir).await?;
        let log_path = dir.path().join("server.log");
        let mut server = Self {
            url: String::new(),
            api_key,
            data_dir,
            log_path,
            options,
            child: None,
            http,
            _dir: dir,
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let bin = vbm_binary().await?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut cmd = if let Some(spec) = &self.options.faketime {
            let mut c = Command::new("faketime");
            c.arg("-f").arg(spec).arg(&bin);
            c.env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            c
        } else if let Some(file) = &self.options.faketime_file {
            if !Path::new(LIBFAKETIME).is_file() {
                bail!("{LIBFAKETIME} is missing: run scripts/deps.sh (Debian package faketime)");
            }
            let mut c = Command::new(&bin);
            c.env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME_TIMESTAMP_FILE", file)
                .env("FAKETIME_NO_CACHE", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env_remove("FAKETIME");
            c
        } else {
            Command::new(&bin)
        };
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&self.data_dir)
            .env("VBM_LOG", "info")
            .env_remove("VCENTER_PASSWORD")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        if let Some(repo) = &self.options.repo {
            cmd.arg("--repo").arg(repo).arg("--init-repo");
        }
        if let Some(toml) = &self.options.config_toml {
            let path = self.data_dir.with_file_name("vbm.toml");
            std::fs::write(&path, toml)?;
            cmd.arg("--config").arg(path);
        }
        if self.options.json_logs {
            cmd.args(["--log-format", "json"]);
        }
        for (k, v) in &self.options.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("starting vbm serve")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(READY_TIMEOUT, lines.next_line())
            .await
            .context("vbm serve did not report its address in time")??;
        let Some(line) = line else {
            let status = child.wait().await?;
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            bail!("vbm serve exited before listening ({status}):\n{log}");
        };
        let v: serde_json::Value = serde_json::from_str(&line)?;
        let addr = v["listening"].as_str().context("no listening address")?;
        self.url = format!("http://{addr}");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
        Ok(())
    }

    /// Creates a new API key in the data directory and uses it from now on (after a test
    /// deleted the database, R4).
    ///
    /// # Errors
    /// When `vbm apikey create` fails.
    pub async fn renew_api_key(&mut self) -> anyhow::Result<()> {
        let (key, http) = new_api_key(&self.data_dir).await?;
        self.api_key = key;
        self.http = http;
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) an environment variable for the next (re)start, e.g.
    /// `VBM_FAILPOINTS`.
    pub fn set_env(&mut self, name: &str, value: Option<&str>) {
        self.options.env.retain(|(k, _)| k != name);
        if let Some(v) = value {
            self.options.env.push((name.to_owned(), v.to_owned()));
        }
    }

    /// Waits up to `timeout` for the process to exit by itself (e.g. at a failpoint).
    ///
    /// # Errors
    /// When it is still running after `timeout`.
    pub async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let child = self.child.as_mut().context("server not running")?;
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .context("vbm serve did not exit in time")??;
        self.child = None;
        Ok(status)
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// An HTTP client that sends the API key.
    #[must_use]
    pub fn client(&self) -> &reqwest::Client {
        &self.http
    }

    /// `url` + `path`.
    #[must_use]
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Kills the server with SIGKILL (a crash) and waits for it.
    ///
    /// # Errors
    /// When it cannot be killed.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Sends SIGTERM and waits up to `timeout` for a graceful exit.
    ///
    /// # Errors
    /// When it does not exit in time.
    pub async fn terminate(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("server not running")?;
        let pid = child.id().context("server already exited")?;
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        tokio::time::timeout(timeout, child.wait())
            .await
            .context("vbm serve did not stop after SIGTERM")?
            .map_err(Into::into)
    }

    /// Starts the server again on the same data directory (a new port).
    ///
    /// # Errors
    /// Start failures.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.kill9().await?;
        }
        self.spawn().await
    }

    /// Like [`Server::restart`] with other faketime settings.
    ///
    /// # Errors
    /// Start failures.
    pub async fn restart_with_faketime(&mut self, spec: Option<String>) -> anyhow::Result<()> {
        self.options.faketime = spec;
        self.restart().await
    }

    /// The server's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// Creates an admin API key with `vbm apikey create` and a client that sends it.
async fn new_api_key(data_dir: &Path) -> anyhow::Result<(String, reqwest::Client)> {
    let bin = vbm_binary().await?;
    let out = Command::new(&bin)
        .args(["apikey", "create", "--name", "test", "--data"])
        .arg(data_dir)
        .stdin(Stdio::null())
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "vbm apikey create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let api_key = String::from_utf8(out.stdout)?.trim().to_owned();
    // reqwest has no built-in crypto provider in this workspace (ring, not aws-lc).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-api-key", api_key.parse()?);
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .build()?;
    Ok((api_key, http))
}
