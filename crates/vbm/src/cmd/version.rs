//! `vbm version`: the version, for humans or scripts.

use std::process::ExitCode;

use crate::output;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let version = env!("CARGO_PKG_VERSION");
    if args.json {
        output::json(&serde_json::json!({ "name": "vbm", "version": version }))?;
    } else {
        output::line(&format!("vbm {version}"))?;
    }
    Ok(ExitCode::SUCCESS)
}
