//! `vbm backup`: back up one VM into a repository, full or CBT-incremental.

use std::process::ExitCode;

use serde::Serialize;
use vbm_engine::{BackupOptions, BackupReport, CancellationToken, ModeRequest, VmSelector};

use crate::output;
use crate::progress_ui::TerminalProgress;
use crate::repo_args::RepoArgs;
use crate::vcenter_args::VcenterArgs;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    vcenter: VcenterArgs,

    #[command(flatten)]
    repo: RepoArgs,

    /// The VM, by name (must be unique in the vCenter).
    #[arg(
        long,
        value_name = "NAME",
        required_unless_present = "vm_uuid",
        conflicts_with = "vm_uuid"
    )]
    vm: Option<String>,

    /// The VM, by instance UUID (`config.instanceUuid`).
    #[arg(long, value_name = "UUID")]
    vm_uuid: Option<String>,

    /// Read every allocated block instead of only the changes since the last backup.
    #[arg(long)]
    full: bool,

    /// Quiesce the guest file systems (needs VMware Tools).
    #[arg(long)]
    quiesce: bool,

    /// Parallel range requests per disk.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    streams: u16,

    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Json<'a> {
    id: String,
    mode: vbm_repo::BackupMode,
    bytes_read: u64,
    bytes_written: u64,
    logical_bytes: u64,
    warnings: &'a [String],
    timings: vbm_engine::Timings,
    manifest: &'a vbm_repo::Manifest,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = crate::runtime()?;
    let report = runtime.block_on(backup(&args))?;
    if args.json {
        output::json(&Json {
            id: report.backup_id.to_string(),
            mode: report.mode,
            bytes_read: report.bytes_read,
            bytes_written: report.bytes_written,
            logical_bytes: report.logical_bytes,
            warnings: &report.warnings,
            timings: report.timings,
            manifest: &report.manifest,
        })?;
    } else {
        let mode = match report.mode {
            vbm_repo::BackupMode::Full => "full",
            vbm_repo::BackupMode::Incremental => "incremental",
        };
        output::line(&format!(
            "backup {} ({mode}): {} of VM data, {} read from vCenter, {} newly stored",
            report.backup_id,
            output::bytes(report.logical_bytes),
            output::bytes(report.bytes_read),
            output::bytes(report.bytes_written)
        ))?;
        for warning in &report.warnings {
            output::line(&format!("warning: {warning}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn backup(args: &Args) -> anyhow::Result<BackupReport> {
    let repo = args.repo.open()?;
    let client = args.vcenter.connect().await?;
    let selector = match (&args.vm, &args.vm_uuid) {
        (_, Some(uuid)) => VmSelector::InstanceUuid(uuid.clone()),
        (Some(name), None) => VmSelector::Name(name.clone()),
        (None, None) => anyhow::bail!("name the VM with --vm or --vm-uuid"),
    };
    let mut options = BackupOptions::new(selector);
    options.mode = if args.full {
        ModeRequest::Full
    } else {
        ModeRequest::Incremental
    };
    options.quiesce = args.quiesce;
    options.streams = usize::from(args.streams);
    options.vcenter = vcenter_host(&args.vcenter.vcenter);
    let progress = TerminalProgress::new(false);
    let cancel = CancellationToken::new();
    let stop = crate::cancel_on_signals(cancel.clone());
    let result = vbm_engine::backup(&client, &repo, &options, &progress, &cancel).await;
    stop.abort();
    progress.finish();
    if let Err(e) = client.logout().await {
        tracing::warn!(error = %e, "logout failed");
    }
    Ok(result?)
}

/// The host part of a vCenter URL, for the manifest.
pub(crate) fn vcenter_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', ':']).next().unwrap_or(rest).to_owned()
}
