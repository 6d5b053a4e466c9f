//! `vbm verify`: prove backups restore. Exit 0 when everything is intact, 3 when damage was
//! found (listed precisely), 1 when verify itself could not run. With vCenter flags it also
//! checks that each backed-up disk still has the capacity vCenter reports (specification 2.3).

use std::process::ExitCode;

use vbm_engine::CancellationToken;
use vbm_repo::BackupId;
use vbm_repo::verify::{VerifyMode, VerifyOptions};

use crate::output;
use crate::progress_ui::TerminalProgress;
use crate::repo_args::RepoArgs;
use crate::vcenter_args::OptionalVcenterArgs;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    repo: RepoArgs,

    /// Verify only this backup (`<vm-key>/<timestamp>`; repeatable). Default: all.
    #[arg(long = "backup", value_name = "ID")]
    backups: Vec<BackupId>,

    /// Only check that manifests, indexes and blobs are intact and every chunk exists (no
    /// chunk data is read).
    #[arg(long)]
    quick: bool,

    /// Do not move damaged chunks aside (`<digest>.bad`).
    #[arg(long)]
    no_quarantine: bool,

    /// Print the report as JSON (`ok`, damaged backups, files and chunks, and the vCenter
    /// findings).
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    vcenter: OptionalVcenterArgs,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let repo = args.repo.open()?;
    let options = VerifyOptions {
        mode: if args.quick {
            VerifyMode::Quick
        } else {
            VerifyMode::Full
        },
        backups: (!args.backups.is_empty()).then_some(args.backups),
        quarantine: !args.no_quarantine,
        ..VerifyOptions::default()
    };
    let runtime = crate::runtime()?;
    let outcome = runtime.block_on(async {
        let client = match args.vcenter.get() {
            Some(vcenter) => Some(vcenter.connect().await?),
            None => None,
        };
        let progress = TerminalProgress::new(args.json);
        let cancel = CancellationToken::new();
        let stop = crate::cancel_on_signals(cancel.clone());
        let outcome =
            vbm_engine::verify_with(&repo, options, client.as_ref(), &progress, &cancel).await;
        stop.abort();
        progress.finish();
        if let Some(client) = client
            && let Err(e) = client.logout().await
        {
            tracing::warn!(error = %e, "logout failed");
        }
        anyhow::Ok(outcome?)
    })?;
    let report = &outcome.repository;
    if args.json {
        // The repository's report, with the overall verdict and the vCenter findings added.
        let mut json = serde_json::to_value(report)?;
        if let Some(object) = json.as_object_mut() {
            object.insert("ok".into(), outcome.ok.into());
            object.insert("vcenter".into(), serde_json::to_value(&outcome.vcenter)?);
        }
        output::json(&json)?;
    } else {
        for b in &report.backups {
            if b.ok {
                output::line(&format!("ok       {}", b.id))?;
                continue;
            }
            output::line(&format!("DAMAGED  {}", b.id))?;
            for p in &b.problems {
                match &p.file {
                    Some(f) => output::line(&format!("         {f}: {}", p.problem))?,
                    None => output::line(&format!("         {}", p.problem))?,
                }
            }
        }
        for c in &report.chunks {
            output::line(&format!(
                "chunk {} {:?}: {}{} (used by {} file(s))",
                c.digest,
                c.kind,
                c.detail,
                if c.quarantined { ", quarantined" } else { "" },
                c.referenced_by.len()
            ))?;
        }
        for f in &outcome.vcenter {
            let tag = if f.failure { "MISMATCH" } else { "note    " };
            output::line(&format!("{tag} {}: {}", f.backup, f.message))?;
        }
        let damaged = report.damaged().count();
        output::line(&format!(
            "{} backup(s) verified ({}), {} chunk(s), {} checked: {}",
            report.backups_checked,
            if args.quick { "quick" } else { "full" },
            report.chunks_checked,
            output::bytes(report.bytes_checked),
            if outcome.ok {
                "all OK".to_owned()
            } else if report.ok {
                "the repository is intact, but vCenter disagrees".to_owned()
            } else {
                format!("{damaged} damaged")
            }
        ))?;
    }
    Ok(if outcome.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::repo::test_support::*;

    fn args(dir: &std::path::Path, quick: bool) -> Args {
        Args {
            repo: repo_args(dir),
            backups: vec![],
            quick,
            no_quarantine: false,
            json: true,
            vcenter: OptionalVcenterArgs {
                vcenter: None,
                user: None,
                thumbprint: None,
                insecure: false,
                ca_file: None,
            },
        }
    }

    #[test]
    fn exit_0_when_intact_and_3_when_damaged() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, ids) = repo_with_backups(tmp.path(), 2);
        assert_eq!(run(args(tmp.path(), true)).unwrap(), ExitCode::SUCCESS);
        assert_eq!(run(args(tmp.path(), false)).unwrap(), ExitCode::SUCCESS);
        let data = noise(3 * CHUNK as usize, 0);
        let d = repo.chunk_digest(&data[..CHUNK as usize]).to_hex();
        let p = tmp
            .path()
            .join("chunks")
            .join(&d[..2])
            .join(&d[2..4])
            .join(&d);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&p, bytes).unwrap();
        let mut one = args(tmp.path(), false);
        one.backups = vec![ids[1].clone()];
        assert_eq!(
            run(one).unwrap(),
            ExitCode::SUCCESS,
            "the other backup is intact"
        );
        assert_eq!(run(args(tmp.path(), false)).unwrap(), ExitCode::from(3));
        assert!(run(args(&tmp.path().join("missing"), false)).is_err());
    }
}
