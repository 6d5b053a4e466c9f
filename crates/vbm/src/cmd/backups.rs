//! `vbm backups list`: the backups in a repository, read from its manifests alone.

use std::process::ExitCode;

use serde::Serialize;
use vbm_repo::verify::VerifyState;
use vbm_repo::{BackupId, Catalog, Manifest};

use crate::output;
use crate::repo_args::RepoArgs;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// List backups, oldest first per VM.
    List(ListArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    repo: RepoArgs,

    /// Only backups of this VM (display name or repository VM key).
    #[arg(long, value_name = "NAME")]
    vm: Option<String>,

    /// Print a JSON array of objects with `id` and the manifest fields.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Row<'a> {
    id: &'a BackupId,
    #[serde(flatten)]
    manifest: &'a Manifest,
    logical_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    dedup_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verify: Option<&'a VerifyState>,
}

pub(crate) fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let Command::List(args) = cmd;
    let repo = args.repo.open()?;
    let catalog = Catalog::load(&repo)?;
    let entries: Vec<_> = catalog
        .entries()
        .filter(|e| {
            args.vm
                .as_deref()
                .is_none_or(|vm| e.manifest.vm_name == vm || e.id.vm().as_str() == vm)
        })
        .collect();
    if args.json {
        let rows: Vec<Row<'_>> = entries
            .iter()
            .map(|e| {
                let s = e.summary();
                Row {
                    id: &e.id,
                    manifest: &e.manifest,
                    logical_bytes: s.logical_bytes,
                    dedup_ratio: s.dedup_ratio,
                    verify: e.verify.as_ref(),
                }
            })
            .collect();
        output::json(&rows)?;
    } else {
        for e in &entries {
            let s = e.summary();
            output::line(&format!(
                "{:<50} {:<24} {:<11} {:>10} logical {:>10} new{}",
                e.id.to_string(),
                e.manifest.vm_name,
                format!("{:?}", e.manifest.mode).to_lowercase(),
                output::bytes(s.logical_bytes),
                output::bytes(s.written_bytes),
                e.verify
                    .as_ref()
                    .map_or_else(String::new, |v| format!("  verify {}", v.state))
            ))?;
        }
        for (id, why) in &catalog.unreadable {
            output::line(&format!("{id}: UNREADABLE: {why}"))?;
        }
        if entries.is_empty() {
            output::line("no backups")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::repo::test_support::*;

    #[test]
    fn list_as_text_and_json() {
        let tmp = tempfile::tempdir().unwrap();
        repo_with_backups(tmp.path(), 2);
        for (vm, json) in [
            (None, false),
            (Some("Test VM".to_owned()), true),
            (Some("vm-9".to_owned()), false),
        ] {
            run(Command::List(ListArgs {
                repo: repo_args(tmp.path()),
                vm,
                json,
            }))
            .unwrap();
        }
    }

    #[test]
    fn json_rows_have_the_id_and_the_manifest_fields() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, ids) = repo_with_backups(tmp.path(), 1);
        let e = &Catalog::load(&repo)
            .unwrap()
            .vms
            .into_values()
            .next()
            .unwrap()[0];
        let row = Row {
            id: &e.id,
            manifest: &e.manifest,
            logical_bytes: 1,
            dedup_ratio: None,
            verify: None,
        };
        let v = serde_json::to_value(&row).unwrap();
        assert_eq!(v["id"], ids[0].to_string());
        for f in [
            "job_id", "vm_name", "started", "finished", "vcenter", "snapshot", "files",
        ] {
            assert!(v.get(f).is_some(), "{f}");
        }
    }
}
