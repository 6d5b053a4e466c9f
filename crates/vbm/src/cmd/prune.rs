//! `vbm prune`: apply retention. Shows what goes and why; `--dry-run` changes nothing.

use std::process::ExitCode;

use vbm_repo::prune::{Action, PruneGuards, PruneOptions, RetentionPolicy, prune};
use vbm_repo::{Cancel, VmKey};

use crate::output;
use crate::repo_args::RepoArgs;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    repo: RepoArgs,

    /// Keep the N newest backups of each VM.
    #[arg(long, value_name = "N")]
    keep_last: Option<u32>,

    /// Keep every backup younger than D days.
    #[arg(long, value_name = "D")]
    max_age_days: Option<u32>,

    /// Keep the newest backup of each of the last N days that have backups.
    #[arg(long, value_name = "N")]
    keep_daily: Option<u32>,

    /// … of each of the last N ISO weeks.
    #[arg(long, value_name = "N")]
    keep_weekly: Option<u32>,

    /// … of each of the last N months.
    #[arg(long, value_name = "N")]
    keep_monthly: Option<u32>,

    /// … of each of the last N years.
    #[arg(long, value_name = "N")]
    keep_yearly: Option<u32>,

    /// Only this VM (its repository key, the first part of a backup id).
    #[arg(long, value_name = "VM-KEY")]
    vm: Option<VmKey>,

    /// Show the plan, remove nothing.
    #[arg(long)]
    dry_run: bool,

    /// Remove even when the plan removes more than --max-remove-percent of a VM's backups.
    #[arg(long)]
    force: bool,

    /// Refuse plans that remove more than this share of a VM's backups (guards against a
    /// clock that jumped forward).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    max_remove_percent: u8,

    /// Print the plan and result as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let repo = args.repo.open()?;
    let options = PruneOptions {
        policy: RetentionPolicy {
            keep_last: args.keep_last,
            max_age_days: args.max_age_days,
            keep_daily: args.keep_daily,
            keep_weekly: args.keep_weekly,
            keep_monthly: args.keep_monthly,
            keep_yearly: args.keep_yearly,
        },
        guards: PruneGuards {
            max_remove_share: f64::from(args.max_remove_percent) / 100.0,
            force: args.force,
            ..PruneGuards::default()
        },
        vm: args.vm,
        dry_run: args.dry_run,
    };
    let report = prune(&repo, &options, &mut |_| {}, &Cancel::new())?;
    if args.json {
        output::json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for e in &report.plan.entries {
        let what = match e.action {
            Action::Keep => "keep  ",
            Action::Remove => "REMOVE",
        };
        output::line(&format!("{what} {}  {}", e.id, e.reasons.join("; ")))?;
    }
    let n = report.plan.removals().count();
    if let Some(reason) = &report.plan.refused {
        output::line(&format!("the plan would be refused: {reason}"))?;
    }
    output::line(&format!(
        "{verb} {} of {} backup(s){}",
        if args.dry_run {
            n
        } else {
            report.removed.len()
        },
        report.plan.entries.len(),
        if args.dry_run {
            " (dry run: nothing changed)"
        } else {
            "; run `vbm gc` to free the space"
        }
    ))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::repo::test_support::*;

    fn args(dir: &std::path::Path) -> Args {
        Args {
            repo: repo_args(dir),
            keep_last: Some(1),
            max_age_days: None,
            keep_daily: None,
            keep_weekly: None,
            keep_monthly: None,
            keep_yearly: None,
            vm: None,
            dry_run: true,
            force: false,
            max_remove_percent: 50,
            json: false,
        }
    }

    #[test]
    fn dry_run_changes_nothing_and_the_guard_needs_force() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, ids) = repo_with_backups(tmp.path(), 3);
        run(args(tmp.path())).unwrap();
        assert_eq!(repo.list_backups().unwrap().committed.len(), 3);
        let err = run(Args {
            dry_run: false,
            ..args(tmp.path())
        })
        .unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        run(Args {
            dry_run: false,
            force: true,
            json: true,
            ..args(tmp.path())
        })
        .unwrap();
        assert_eq!(repo.list_backups().unwrap().committed, vec![ids[2].clone()]);
    }
}
