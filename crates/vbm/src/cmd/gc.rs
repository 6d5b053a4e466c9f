//! `vbm gc`: delete chunks that no backup references (safe while backups run).

use std::process::ExitCode;

use vbm_repo::Cancel;
use vbm_repo::gc::{GcOptions, gc};

use crate::output;
use crate::repo_args::RepoArgs;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    repo: RepoArgs,

    /// Report what would be deleted; change nothing.
    #[arg(long)]
    dry_run: bool,

    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let repo = args.repo.open()?;
    let options = GcOptions {
        dry_run: args.dry_run,
        ..GcOptions::default()
    };
    let report = gc(&repo, &options, &mut |_| {}, &Cancel::new())?;
    if args.json {
        output::json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    output::line(&format!(
        "{} backup(s) reference {} chunk(s); {verb} {} unreferenced chunk(s), freeing {}",
        report.backups_marked,
        report.chunks_marked,
        report.chunks_deleted,
        output::bytes(report.bytes_freed)
    ))?;
    if report.chunks_kept_recent > 0 {
        output::line(&format!(
            "kept {} unreferenced chunk(s) touched after {} (grace period; a later run collects them)",
            report.chunks_kept_recent, report.cutoff
        ))?;
    }
    for (what, n) in [
        ("temporary file(s) removed", report.temp_files_removed),
        (
            "object(s) restored from an interrupted GC",
            report.trash_restored,
        ),
        (
            "quarantined chunk(s) present (see `vbm verify`)",
            report.bad_chunks,
        ),
    ] {
        if n > 0 {
            output::line(&format!("{n} {what}"))?;
        }
    }
    for id in &report.partial_backups_removed {
        output::line(&format!("removed the unfinished backup {id}"))?;
    }
    for lock in &report.stale_locks_cleared {
        output::line(&format!("cleared stale lock {lock}"))?;
    }
    for s in &report.skipped {
        output::line(&format!("skipped {}: {}", s.path, s.reason))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::repo::test_support::*;

    #[test]
    fn gc_runs_dry_and_for_real() {
        let tmp = tempfile::tempdir().unwrap();
        repo_with_backups(tmp.path(), 1);
        for (dry_run, json) in [(true, false), (false, true)] {
            let code = run(Args {
                repo: repo_args(tmp.path()),
                dry_run,
                json,
            })
            .unwrap();
            assert_eq!(code, ExitCode::SUCCESS);
        }
    }
}
