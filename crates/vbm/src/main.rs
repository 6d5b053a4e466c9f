//! # vbm — the binary
//!
//! `vbm serve` and the command line over `vbm-engine` and `vbm-server`. The only crate that prints
//! to the terminal, installs the tracing subscriber and uses `anyhow`. Each command lives in its
//! own module under `cmd/`; this file only parses arguments and dispatches.

mod cmd;
mod output;
mod progress_ui;
mod repo_args;
mod vcenter_args;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Backup and restore move multi-MiB buffers through many threads; glibc's malloc returns such
/// blocks to the kernel on every free and faults them in again (ADR 32).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// vSphere Backup Manager: CBT-incremental, deduplicated, verifiable backups of vSphere VMs.
#[derive(Debug, Parser)]
#[command(name = "vbm", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print version and build information.
    Version(cmd::version::Args),
    /// Create a repository and show its figures.
    #[command(subcommand)]
    Repo(cmd::repo::Command),
    /// Verify backups (quick or full); exit 3 when damage is found.
    Verify(cmd::verify::Args),
    /// Apply retention: remove backups no rule keeps.
    Prune(cmd::prune::Args),
    /// Delete chunks no backup references.
    Gc(cmd::gc::Args),
    /// List the backups in a repository.
    #[command(subcommand)]
    Backups(cmd::backups::Command),
    /// Back up one VM into a repository (CBT-incremental unless --full).
    Backup(cmd::backup::Args),
    /// Restore a backup to a directory, to vCenter as a new VM, or in place.
    Restore(cmd::restore::Args),
    /// Virtual machines of a vCenter (`vms list`).
    Vms(cmd::vms::Args),
    /// Run the service: REST API, scheduler, job runner, metrics.
    Serve(cmd::serve::Args),
    /// API keys for the REST API (`apikey create`).
    Apikey(cmd::apikey::Args),
}

/// The async runtime of the CLI commands: two workers are plenty (the heavy work runs on the
/// blocking pool).
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Cancels `token` on Ctrl-C or SIGTERM, so that a running backup removes its snapshot and
/// leaves no half backup. Abort the returned task when the work is done.
pub(crate) fn cancel_on_signals(
    token: vbm_engine::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::warn!(
            "interrupted: cancelling (removing the snapshot, discarding the partial backup)"
        );
        token.cancel();
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Serve(args) = &cli.command {
        cmd::serve::init_logging(args);
    }
    output::init_logging();
    let result = match cli.command {
        Command::Version(args) => cmd::version::run(args),
        Command::Repo(cmd) => cmd::repo::run(cmd),
        Command::Verify(args) => cmd::verify::run(args),
        Command::Prune(args) => cmd::prune::run(args),
        Command::Gc(args) => cmd::gc::run(args),
        Command::Backups(cmd) => cmd::backups::run(cmd),
        Command::Backup(args) => cmd::backup::run(args),
        Command::Restore(args) => cmd::restore::run(args),
        Command::Vms(args) => cmd::vms::run(args),
        Command::Serve(args) => cmd::serve::run(args),
        Command::Apikey(args) => cmd::apikey::run(args),
    };
    output::finish(result)
}
