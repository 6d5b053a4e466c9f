//! `vbm apikey create`: a new API key for `X-API-Key`, printed once; only its hash is stored.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::output;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Create a key and print it (it cannot be shown again).
    Create {
        /// The service's data directory.
        #[arg(long, env = "VBM_DATA")]
        data: PathBuf,
        /// A label for the key.
        #[arg(long, default_value = "default")]
        name: String,
        /// Print JSON (`id`, `name`, `key`).
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Create { data, name, json } => {
            let runtime = vbm_server::runtime()?;
            let (record, token) = runtime.block_on(vbm_server::create_api_key(&data, &name))?;
            if json {
                output::json(&serde_json::json!({
                    "id": record.id,
                    "name": record.name,
                    "key": token.expose(),
                }))?;
            } else {
                output::line(token.expose())?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
