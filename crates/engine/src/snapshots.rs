//! The snapshot lifecycle: every snapshot vbm creates is named `vbm-<run-id>`, carries a
//! description that says what it is, and is removed — on success, on error, on cancel, and after a
//! crash by a sweep that removes `vbm-*` snapshots (and only those) before the next run.

use std::time::Duration;

use serde::Serialize;
use vbm_vsphere::{Client, MoRef};

use crate::error::Result;

/// Every snapshot vbm creates starts with this; the sweep removes nothing else.
pub const SNAPSHOT_PREFIX: &str = "vbm-";

/// Identifies one run (one VM's backup, restore or verify). Unique even when the clock repeats
/// itself: a UTC timestamp plus random bits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct RunId(String);

impl RunId {
    /// A fresh id like `20261127T033114Z-3fa2c1d0`.
    #[must_use]
    pub fn new() -> Self {
        let now = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
        let random: u32 = rand::random();
        Self(format!("{now}-{random:08x}"))
    }

    /// Wraps an id chosen by the caller (the service uses its run ids). Only ASCII letters,
    /// digits, `-` and `_` are kept: the id becomes part of a snapshot name.
    #[must_use]
    pub fn from_string(id: &str) -> Self {
        let clean: String = id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(64)
            .collect();
        if clean.is_empty() {
            Self::new()
        } else {
            Self(clean)
        }
    }

    /// The id.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of the snapshot of a run.
#[must_use]
pub fn snapshot_name(run: &RunId) -> String {
    format!("{SNAPSHOT_PREFIX}{run}")
}

/// The description of the snapshot of a run: an administrator who finds it in vCenter learns
/// what it is and that it is safe to delete when no vbm run is active.
#[must_use]
pub fn snapshot_description(run: &RunId, job: &str) -> String {
    format!(
        "Created by vbm (vSphere Backup Manager) for backup run {run}{}. vbm removes it when the backup ends; if it is still here, no vbm run is using it and it is safe to delete.",
        if job.is_empty() {
            String::new()
        } else {
            format!(" of job {job}")
        }
    )
}

/// How snapshot removal is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemovePolicy {
    /// Attempts in total (at least 1).
    pub attempts: u32,
    /// Delay before the second attempt; doubled for each further one.
    pub delay: Duration,
}

impl Default for RemovePolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            delay: Duration::from_secs(5),
        }
    }
}

/// Removes one snapshot, retrying per `policy`. An already removed snapshot counts as removed.
///
/// # Errors
/// The last attempt's error.
pub async fn remove_snapshot(
    client: &Client,
    snapshot: &MoRef,
    policy: RemovePolicy,
) -> Result<()> {
    let mut delay = policy.delay;
    let mut attempt = 1;
    loop {
        match client.remove_snapshot(snapshot, false, true).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_managed_object_not_found() => return Ok(()),
            Err(e) if attempt < policy.attempts.max(1) => {
                tracing::warn!(%snapshot, attempt, error = %e, "snapshot removal failed; retrying");
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Names of the snapshots removed.
    pub removed: Vec<String>,
    /// Snapshots that could not be removed, with the reason (they stay listed as orphans).
    pub failed: Vec<(String, String)>,
}

/// Removes the `vbm-*` snapshots of a VM left by runs that crashed or were killed, except the one
/// named `keep` (a run that is still active). Snapshots of anyone else are never touched.
///
/// # Errors
/// When the VM's snapshots cannot be listed; removal failures are reported in the result.
pub async fn sweep_snapshots(
    client: &Client,
    vm: &MoRef,
    keep: Option<&str>,
    policy: RemovePolicy,
) -> Result<SweepReport> {
    let mut report = SweepReport::default();
    let mut leftovers = client.snapshots_with_prefix(vm, SNAPSHOT_PREFIX).await?;
    // Children first, so that removing one never consolidates into another we remove next.
    leftovers.sort_by_key(|s| std::cmp::Reverse(s.depth));
    for snap in leftovers {
        if keep == Some(snap.name.as_str()) {
            continue;
        }
        match remove_snapshot(client, &snap.moref, policy).await {
            Ok(()) => {
                tracing::info!(%vm, snapshot = %snap.name, "removed a snapshot left by an earlier vbm run");
                report.removed.push(snap.name);
            }
            Err(e) => report.failed.push((snap.name, e.to_string())),
        }
    }
    Ok(report)
}

/// [`sweep_snapshots`] over every VM of the vCenter (the service runs this at start-up).
///
/// # Errors
/// When the VM list cannot be read.
pub async fn sweep_all(client: &Client, policy: RemovePolicy) -> Result<SweepReport> {
    let mut report = SweepReport::default();
    for vm in client.list_vms().await? {
        let has_ours = vm
            .flat_snapshots()
            .iter()
            .any(|s| s.name.starts_with(SNAPSHOT_PREFIX));
        if !has_ours {
            continue;
        }
        let one = sweep_snapshots(client, &vm.moref, None, policy).await?;
        report.removed.extend(one.removed);
        report.failed.extend(one.failed);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_unique_and_snapshot_safe() {
        let a = RunId::new();
        let b = RunId::new();
        assert_ne!(a, b);
        assert!(snapshot_name(&a).starts_with("vbm-"));
        assert_eq!(RunId::from_string("job 7/../run#1").as_str(), "job7run1");
        assert!(!RunId::from_string("///").as_str().is_empty());
    }

    #[test]
    fn description_names_the_run_and_job() {
        let run = RunId::from_string("r1");
        let text = snapshot_description(&run, "nightly");
        assert!(text.contains("run r1 of job nightly"), "{text}");
        assert!(text.contains("safe to delete"));
    }
}
