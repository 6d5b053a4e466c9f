//! Building, starting and stopping the testbed process.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::control::Control;

/// How long the testbed may take to print its ready line (it builds the inventory first).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The workspace root (where `testbed/` and `Cargo.toml` live).
#[must_use]
pub fn repo_root() -> PathBuf {
    // crates/testkit → ../..
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Options for [`Testbed::start_with`].
#[derive(Debug, Clone)]
pub struct TestbedOptions {
    /// A spec name under `testbed/specs/` (without `.json`), a path to a spec file, or inline JSON
    /// (anything starting with `{`).
    pub spec: String,
    /// Credentials the simulator accepts; `None` keeps the testbed's defaults.
    pub user: Option<String>,
    /// See `user`.
    pub password: Option<String>,
    /// Where the datastores live; `None` = a temp dir owned by the testbed process.
    pub data_dir: Option<PathBuf>,
}

impl TestbedOptions {
    /// Options for the named spec with everything else defaulted.
    #[must_use]
    pub fn spec(spec: &str) -> Self {
        Self {
            spec: spec.to_owned(),
            user: None,
            password: None,
            data_dir: None,
        }
    }
}

/// The line the testbed prints on stdout once it serves.
#[derive(Debug, Deserialize)]
struct ReadyLine {
    sdk_url: String,
    plain_sdk_url: Option<String>,
    thumbprint_sha256: String,
    thumbprint_sha1: String,
    user: String,
    password: String,
    data_dir: PathBuf,
    cert_pem: String,
    instance_uuid: String,
    #[serde(default)]
    api_type: String,
}

/// A running testbed (govmomi's vcsim, extended). Dropping it kills the process.
#[derive(Debug)]
pub struct Testbed {
    /// `https://127.0.0.1:PORT/sdk`, self-signed certificate.
    pub sdk_url: String,
    /// `http://127.0.0.1:PORT/sdk`: the same simulator over plain HTTP.
    pub plain_sdk_url: String,
    /// User name the simulator accepts.
    pub user: String,
    /// Password the simulator accepts.
    pub password: String,
    /// SHA-256 thumbprint of the certificate, uppercase hex with colons.
    pub thumbprint_sha256: String,
    /// SHA-1 thumbprint (as vSphere shows it), uppercase hex with colons.
    pub thumbprint_sha1: String,
    /// The certificate in PEM form (for CA-bundle trust tests).
    pub cert_pem: String,
    /// The simulated vCenter's instance UUID (`ServiceContent.about.instanceUuid`), random per
    /// start.
    pub instance_uuid: String,
    /// `ServiceContent.about.apiType`: `VirtualCenter`, or `HostAgent` for a spec with
    /// `"esx": true` (a standalone ESXi host; its `instance_uuid` is empty).
    pub api_type: String,
    /// Directory holding one subdirectory per datastore.
    pub data_dir: PathBuf,
    control: Control,
    // Field order matters: the stdin handle is dropped before the child is killed, and the spec
    // file outlives the process.
    _stdin: Option<ChildStdin>,
    child: Child,
    _spec_file: Option<tempfile::NamedTempFile>,
    _data_dir: Option<tempfile::TempDir>,
}

impl Testbed {
    /// Builds the testbed if needed and starts it with the given spec (see [`TestbedOptions::spec`]).
    ///
    /// # Errors
    /// When the build fails, the spec is missing or invalid, or the testbed does not become ready.
    pub async fn start(spec: &str) -> anyhow::Result<Self> {
        Self::start_with(TestbedOptions::spec(spec)).await
    }

    /// Like [`Testbed::start`] with full options.
    ///
    /// # Errors
    /// As [`Testbed::start`].
    pub async fn start_with(options: TestbedOptions) -> anyhow::Result<Self> {
        let binary = build().await?;
        let (spec_path, spec_file) = resolve_spec(&options.spec)?;
        let mut cmd = Command::new(&binary);
        cmd.arg("--spec")
            .arg(&spec_path)
            .args(["--listen", "127.0.0.1:0", "--plain-listen", "127.0.0.1:0"])
            .arg("--exit-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(user) = &options.user {
            cmd.args(["--user", user]);
        }
        if let Some(password) = &options.password {
            cmd.args(["--password", password]);
        }
        // The datastores live in a directory this struct owns: the testbed cannot clean up after
        // itself when it is killed, and leftover datastores would fill /tmp run after run.
        let owned_dir = match &options.data_dir {
            Some(dir) => {
                cmd.arg("--data-dir").arg(dir);
                None
            }
            None => {
                let dir = tempfile::Builder::new().prefix("vbm-testbed-").tempdir()?;
                cmd.arg("--data-dir").arg(dir.path());
                Some(dir)
            }
        };
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .context("testbed stdout was not captured")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(READY_TIMEOUT, lines.next_line())
            .await
            .context("testbed did not print its ready line in time")?
            .context("reading the testbed's ready line")?;
        let Some(line) = line else {
            let status = child.wait().await?;
            bail!("testbed exited before it was ready ({status}); see its stderr above");
        };
        let ready: ReadyLine = serde_json::from_str(&line)
            .with_context(|| format!("testbed ready line is not the expected JSON: {line}"))?;
        // Keep draining stdout so that the testbed never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let plain_sdk_url = ready
            .plain_sdk_url
            .context("testbed started without its plain-HTTP listener")?;
        let control = Control::new(&plain_sdk_url)?;
        Ok(Self {
            sdk_url: ready.sdk_url,
            plain_sdk_url,
            user: ready.user,
            password: ready.password,
            thumbprint_sha256: ready.thumbprint_sha256,
            thumbprint_sha1: ready.thumbprint_sha1,
            cert_pem: ready.cert_pem,
            instance_uuid: ready.instance_uuid,
            api_type: ready.api_type,
            data_dir: ready.data_dir,
            control,
            _stdin: stdin,
            child,
            _spec_file: spec_file,
            _data_dir: owned_dir,
        })
    }

    /// The client for the testbed's control endpoint (guest writes, faults, snapshots, stats).
    #[must_use]
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// The process id, for tests that signal the simulator itself.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `host:port` of the HTTPS listener.
    #[must_use]
    pub fn https_authority(&self) -> &str {
        authority(&self.sdk_url)
    }
}

fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

fn resolve_spec(spec: &str) -> anyhow::Result<(PathBuf, Option<tempfile::NamedTempFile>)> {
    if spec.trim_start().starts_with('{') {
        let mut file = tempfile::Builder::new()
            .prefix("vbm-spec-")
            .suffix(".json")
            .tempfile()?;
        std::io::Write::write_all(&mut file, spec.as_bytes())?;
        return Ok((file.path().to_owned(), Some(file)));
    }
    let as_path = PathBuf::from(spec);
    if as_path.extension().is_some_and(|ext| ext == "json") {
        return Ok((as_path, None));
    }
    let named = repo_root()
        .join("testbed/specs")
        .join(format!("{spec}.json"));
    if !named.is_file() {
        bail!(
            "no testbed spec named {spec:?} ({} does not exist)",
            named.display()
        );
    }
    Ok((named, None))
}

/// Runs `testbed/build.sh` under a file lock (nextest runs every test in its own process, and they
/// must not build at the same time) and returns the binary's path.
async fn build() -> anyhow::Result<PathBuf> {
    if let Ok(binary) = std::env::var("VBM_TESTBED_BIN")
        && Path::new(&binary).is_file()
        && std::env::var_os("VBM_TESTBED_SKIP_BUILD").is_some()
    {
        return Ok(PathBuf::from(binary));
    }
    let root = repo_root();
    let lock_dir = std::env::var_os("VBM_TESTBED_BIN")
        .map(PathBuf::from)
        .and_then(|p| p.parent().map(Path::to_owned))
        .unwrap_or_else(|| root.join("target/testbed"));
    std::fs::create_dir_all(&lock_dir)?;
    let output = Command::new("flock")
        .arg(lock_dir.join(".build.lock"))
        .arg("bash")
        .arg(root.join("testbed/build.sh"))
        .stdin(Stdio::null())
        .output()
        .await
        .context("running testbed/build.sh (is util-linux's flock installed?)")?;
    if !output.status.success() {
        bail!(
            "testbed/build.sh failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let binary = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::trim);
    match binary {
        Some(path) if Path::new(path).is_file() => Ok(PathBuf::from(path)),
        _ => bail!("testbed/build.sh did not print the binary path; output:\n{stdout}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_strips_scheme_and_path() {
        assert_eq!(authority("https://127.0.0.1:4431/sdk"), "127.0.0.1:4431");
        assert_eq!(authority("127.0.0.1:1"), "127.0.0.1:1");
    }

    #[test]
    fn unknown_spec_name_is_a_clear_error() {
        let err = resolve_spec("no-such-spec").unwrap_err().to_string();
        assert!(
            err.contains("no testbed spec named \"no-such-spec\""),
            "{err}"
        );
    }

    #[test]
    fn inline_spec_goes_to_a_temp_file() {
        let (path, file) = resolve_spec(r#"{"datacenters": []}"#).unwrap();
        assert!(file.is_some());
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            r#"{"datacenters": []}"#
        );
    }
}
