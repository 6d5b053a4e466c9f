//! `vbm restore`: a backup to a local directory, to vCenter as a new VM, or in place.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use vbm_engine::{CancellationToken, DirOptions, InPlaceOptions, RestoreReport, VcenterTarget};
use vbm_repo::BackupId;

use crate::output;
use crate::progress_ui::TerminalProgress;
use crate::repo_args::RepoArgs;
use crate::vcenter_args::OptionalVcenterArgs;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    repo: RepoArgs,

    /// The restore point (`vbm backups list` shows the ids).
    #[arg(long, value_name = "ID")]
    backup: BackupId,

    /// Restore the files (.vmx, .vmdk, -flat.vmdk, .nvram) into this directory.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["name", "in_place"])]
    to_dir: Option<PathBuf>,

    /// With --to-dir: replace files that already exist.
    #[arg(long, requires = "to_dir")]
    overwrite: bool,

    /// Restore into vCenter as a new VM with this name.
    #[arg(
        long,
        value_name = "NAME",
        requires = "datastore",
        conflicts_with = "in_place"
    )]
    name: Option<String>,

    /// Datastore for the new VM's files.
    #[arg(long, value_name = "DS")]
    datastore: Option<String>,

    /// VM folder for the new VM (path below the datacenter's VM folder).
    #[arg(long, value_name = "PATH")]
    folder: Option<String>,

    /// Cluster, host or resource pool for the new VM.
    #[arg(long, value_name = "NAME")]
    pool: Option<String>,

    /// Host to register the new VM on.
    #[arg(long, value_name = "NAME")]
    host: Option<String>,

    /// Power the restored VM on.
    #[arg(long)]
    power_on: bool,

    /// Overwrite the original VM's disks and configuration with the backup.
    #[arg(long, requires = "yes_overwrite_vm")]
    in_place: bool,

    /// Confirms --in-place: the VM's current disks are replaced.
    #[arg(long)]
    yes_overwrite_vm: bool,

    #[command(flatten)]
    vcenter: OptionalVcenterArgs,

    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = crate::runtime()?;
    let report = runtime.block_on(restore(&args))?;
    if args.json {
        output::json(&report)?;
    } else {
        output::line(&format!(
            "restored {} to {}: {} files, {}, every digest matches the manifest",
            report.backup_id,
            report.target,
            report.files.len(),
            output::bytes(report.bytes_restored)
        ))?;
        for warning in &report.warnings {
            output::line(&format!("warning: {warning}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn restore(args: &Args) -> anyhow::Result<RestoreReport> {
    let repo = args.repo.open()?;
    let progress = TerminalProgress::new(false);
    let cancel = CancellationToken::new();
    let stop = crate::cancel_on_signals(cancel.clone());
    let workers = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let result = if let Some(dir) = &args.to_dir {
        let options = DirOptions {
            overwrite: args.overwrite,
            workers,
        };
        vbm_engine::restore_to_dir(&repo, &args.backup, dir, &options, &progress, &cancel).await
    } else {
        let Some(vcenter) = args.vcenter.get() else {
            bail!(
                "restore needs --to-dir DIR, or --vcenter URL --user USER with --name NEW --datastore DS (or --in-place)"
            );
        };
        let client = vcenter.connect().await?;
        let result = if args.in_place {
            let options = InPlaceOptions {
                confirm: args.yes_overwrite_vm,
                power_on: args.power_on.then_some(true),
            };
            vbm_engine::restore_in_place(
                &client,
                &repo,
                &args.backup,
                options,
                workers,
                &progress,
                &cancel,
            )
            .await
        } else {
            let (Some(name), Some(datastore)) = (&args.name, &args.datastore) else {
                bail!("a restore into vCenter needs --name NEW and --datastore DS (or --in-place)");
            };
            let target = VcenterTarget {
                name: name.clone(),
                datastore: datastore.clone(),
                folder: args.folder.clone(),
                resource_pool: args.pool.clone(),
                host: args.host.clone(),
                power_on: args.power_on,
            };
            vbm_engine::restore_to_vcenter(
                &client,
                &repo,
                &args.backup,
                &target,
                workers,
                &progress,
                &cancel,
            )
            .await
        };
        if let Err(e) = client.logout().await {
            tracing::warn!(error = %e, "logout failed");
        }
        result
    };
    stop.abort();
    progress.finish();
    Ok(result?)
}
