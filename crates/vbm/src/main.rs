//! # vbm — the binary
//!
//! `vbm serve` and the command line over `vbm-engine` and `vbm-server`. The only crate that prints
//! to the terminal, installs the tracing subscriber and uses `anyhow`. Each command lives in its
//! own module under `cmd/`; this file only parses arguments and dispatches.

mod cmd;
mod output;
mod vcenter_args;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Virtual machines of a vCenter (`vms list`).
    Vms(cmd::vms::Args),
    /// Run the service: REST API, scheduler, job runner, metrics.
    Serve(cmd::serve::Args),
    /// API keys for the REST API (`apikey create`).
    Apikey(cmd::apikey::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Serve(args) = &cli.command {
        cmd::serve::init_logging(args);
    }
    output::init_logging();
    let result = match cli.command {
        Command::Version(args) => cmd::version::run(args),
        Command::Vms(args) => cmd::vms::run(args),
        Command::Serve(args) => cmd::serve::run(args),
        Command::Apikey(args) => cmd::apikey::run(args),
    };
    output::finish(result)
}
