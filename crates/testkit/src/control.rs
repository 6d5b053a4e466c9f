//! Client for the testbed's control endpoint (`/_testbed/…`): simulated guest writes, CBT resets,
//! disk digests, snapshot listings, fault injection and transfer statistics.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// What `GET /_testbed/info` reports.
#[derive(Debug, Clone, Deserialize)]
pub struct Info {
    /// Every VM of the inventory.
    pub vms: Vec<VmInfo>,
    /// Everything else the testbed reports (datacenters, URLs, …).
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

impl Info {
    /// The VM with this name.
    ///
    /// # Errors
    /// When the inventory has no VM of that name.
    pub fn vm(&self, name: &str) -> anyhow::Result<&VmInfo> {
        self.vms.iter().find(|vm| vm.name == name).with_context(|| {
            let names: Vec<_> = self.vms.iter().map(|vm| vm.name.as_str()).collect();
            format!("testbed has no VM named {name:?} (it has {names:?})")
        })
    }
}

/// One VM as the testbed sees it.
#[derive(Debug, Clone, Deserialize)]
pub struct VmInfo {
    /// Display name (unescaped).
    pub name: String,
    /// Managed object id, e.g. `vm-57`.
    pub moref: String,
    /// `config.instanceUuid`.
    pub instance_uuid: String,
    /// VM folder path below the datacenter's VM folder.
    #[serde(default)]
    pub folder: String,
    /// `on` / `off`.
    #[serde(default)]
    pub power: String,
    /// Whether Changed Block Tracking is enabled.
    #[serde(default)]
    pub cbt: bool,
    /// Snapshot names.
    #[serde(default)]
    pub snapshots: Vec<String>,
    /// `[ds] dir/vm.vmx`.
    #[serde(default)]
    pub vmx_path: String,
    /// Virtual disks.
    #[serde(default)]
    pub disks: Vec<DiskInfo>,
}

/// One virtual disk as the testbed sees it.
#[derive(Debug, Clone, Deserialize)]
pub struct DiskInfo {
    /// Device key (for QueryChangedDiskAreas).
    pub key: i32,
    /// Device label.
    #[serde(default)]
    pub label: String,
    /// Descriptor path, `[ds] dir/disk.vmdk`.
    pub file: String,
    /// Local path of the `-flat.vmdk` extent.
    pub flat_path: PathBuf,
    /// Capacity in bytes.
    pub capacity_bytes: u64,
    /// Thin provisioned.
    #[serde(default)]
    pub thin: bool,
    /// Disk mode (`persistent`, `independent_persistent`, …).
    #[serde(default)]
    pub mode: String,
    /// Datastore name.
    #[serde(default)]
    pub datastore: String,
}

/// Snapshots of one VM (`GET /_testbed/snapshots`).
#[derive(Debug, Clone, Deserialize)]
pub struct VmSnapshots {
    /// VM name.
    pub vm: String,
    /// VM moref.
    pub moref: String,
    /// Flattened snapshot tree.
    #[serde(default)]
    pub snapshots: Vec<SnapshotInfo>,
}

/// One snapshot.
#[derive(Debug, Clone, Deserialize)]
pub struct SnapshotInfo {
    /// Snapshot name.
    pub name: String,
    /// Snapshot moref.
    pub moref: String,
    /// Everything else (description, create time, parent).
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

/// HTTP client for `/_testbed/`.
#[derive(Debug, Clone)]
pub struct Control {
    base: String,
    http: reqwest::Client,
}

impl Control {
    pub(crate) fn new(plain_sdk_url: &str) -> anyhow::Result<Self> {
        let base = plain_sdk_url
            .strip_suffix("/sdk")
            .with_context(|| format!("unexpected SDK URL {plain_sdk_url}"))?;
        // reqwest has no built-in crypto provider in this workspace (ring, not aws-lc): install it
        // once per process; a second install is a no-op error we can ignore.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().build()?;
        Ok(Self {
            base: format!("{base}/_testbed"),
            http,
        })
    }

    /// Base URL of the control endpoint.
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<T> {
        let url = format!("{}/{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{method} {url} answered {status}: {text}");
        }
        let text = if text.trim().is_empty() {
            "null"
        } else {
            &text
        };
        serde_json::from_str(text)
            .with_context(|| format!("{method} {url}: unexpected body {text}"))
    }

    /// The inventory and URLs.
    ///
    /// # Errors
    /// When the testbed does not answer as expected.
    pub async fn info(&self) -> anyhow::Result<Info> {
        self.call(reqwest::Method::GET, "info", None).await
    }

    /// A simulated guest write of `length` deterministic bytes derived from `seed` at `offset` of
    /// disk `key` of VM `vm` (name, moref or instance UUID); CBT records it. Returns the testbed's
    /// answer (written range and the flat file's new SHA-256).
    ///
    /// # Errors
    /// When the testbed refuses the write (unknown VM/disk, out of range).
    pub async fn write(
        &self,
        vm: &str,
        key: i32,
        offset: u64,
        length: u64,
        seed: u64,
    ) -> anyhow::Result<Value> {
        let body = json!({ "offset": offset, "length": length, "seed": seed });
        self.call(
            reqwest::Method::POST,
            &disk_path(vm, key, "write"),
            Some(body),
        )
        .await
    }

    /// Writes `length` zero bytes at `offset` (a guest discarding data).
    ///
    /// # Errors
    /// As [`Control::write`].
    pub async fn write_zero(
        &self,
        vm: &str,
        key: i32,
        offset: u64,
        length: u64,
    ) -> anyhow::Result<Value> {
        let body = json!({ "offset": offset, "length": length, "zero": true });
        self.call(
            reqwest::Method::POST,
            &disk_path(vm, key, "write"),
            Some(body),
        )
        .await
    }

    /// SHA-256 (hex) of a disk's flat file as it is now.
    ///
    /// # Errors
    /// When the testbed does not know the disk.
    pub async fn disk_sha256(&self, vm: &str, key: i32) -> anyhow::Result<String> {
        #[derive(Deserialize)]
        struct Digest {
            sha256: String,
        }
        let digest: Digest = self
            .call(reqwest::Method::GET, &disk_path(vm, key, "sha256"), None)
            .await?;
        Ok(digest.sha256)
    }

    /// Grows a disk to `capacity` bytes.
    ///
    /// # Errors
    /// When the testbed refuses.
    pub async fn resize(&self, vm: &str, key: i32, capacity: u64) -> anyhow::Result<Value> {
        let body = json!({ "capacity": capacity });
        self.call(
            reqwest::Method::POST,
            &disk_path(vm, key, "resize"),
            Some(body),
        )
        .await
    }

    /// Resets CBT for every disk of the VM: older changeIds become invalid.
    ///
    /// # Errors
    /// When the testbed does not know the VM.
    pub async fn cbt_reset(&self, vm: &str) -> anyhow::Result<Value> {
        let path = format!("vms/{}/cbt/reset", escape(vm));
        self.call(reqwest::Method::POST, &path, Some(json!({})))
            .await
    }

    /// Every VM's snapshots.
    ///
    /// # Errors
    /// When the testbed does not answer as expected.
    pub async fn snapshots(&self) -> anyhow::Result<Vec<VmSnapshots>> {
        self.call(reqwest::Method::GET, "snapshots", None).await
    }

    /// Names of the snapshots of one VM.
    ///
    /// # Errors
    /// When the testbed does not answer as expected.
    pub async fn snapshot_names(&self, vm: &str) -> anyhow::Result<Vec<String>> {
        let all = self.snapshots().await?;
        Ok(all
            .into_iter()
            .filter(|v| v.vm == vm || v.moref == vm)
            .flat_map(|v| v.snapshots.into_iter().map(|s| s.name))
            .collect())
    }

    /// Adds a fault rule, e.g. `json!({"kind": "transfer_truncate", "path_contains": "-flat.vmdk",
    /// "after_bytes": 100000})`.
    ///
    /// # Errors
    /// When the testbed rejects the rule.
    pub async fn add_fault(&self, rule: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, "faults", Some(rule)).await
    }

    /// The fault rules with how often each fired.
    ///
    /// # Errors
    /// When the testbed does not answer as expected.
    pub async fn faults(&self) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, "faults", None).await
    }

    /// Removes every fault rule.
    ///
    /// # Errors
    /// When the testbed does not answer as expected.
    pub async fn clear_faults(&self) -> anyhow::Result<()> {
        let _: Value = self.call(reqwest::Method::DELETE, "faults", None).await?;
        Ok(())
    }

    /// Transfer and call counters (`folder_get_bytes`, `soap_calls`, `active_sessions`, …).
    ///
    /// # Errors
    /// When the testbed does not answer as expected.
    pub async fn stats(&self) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, "stats", None).await
    }

    /// Resets the counters.
    ///
    /// # Errors
    /// When the testbed does not answer as expected.
    pub async fn reset_stats(&self) -> anyhow::Result<()> {
        let _: Value = self
            .call(reqwest::Method::POST, "stats/reset", Some(json!({})))
            .await?;
        Ok(())
    }
}

fn disk_path(vm: &str, key: i32, action: &str) -> String {
    format!("vms/{}/disks/{key}/{action}", escape(vm))
}

/// Percent-encodes one path segment (VM names may hold anything).
fn escape(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_keeps_unreserved_and_encodes_the_rest() {
        assert_eq!(escape("web-01_a.b~"), "web-01_a.b~");
        assert_eq!(escape("a b/c%"), "a%20b%2Fc%25");
        assert_eq!(escape("Ü"), "%C3%9C");
    }

    #[test]
    fn control_base_comes_from_the_sdk_url() {
        let control = Control::new("http://127.0.0.1:1234/sdk").unwrap();
        assert_eq!(control.base_url(), "http://127.0.0.1:1234/_testbed");
        assert!(Control::new("http://127.0.0.1:1234/other").is_err());
    }
}
