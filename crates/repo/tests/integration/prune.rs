//! Retention on synthetic timelines (table and property tests, PBS `tests/prune.rs` / restic
//! style) and crash-safe execution (FAULT-MATRIX F3, T1, T3).

use jiff::Timestamp;
use proptest::prelude::*;
use vbm_repo::backend::{CrashKind, CrashPlan, CrashTrigger};
use vbm_repo::gc::{GcOptions, gc};
use vbm_repo::prune::{
    Action, Candidate, PruneGuards, PruneOptions, PrunePlan, RetentionPolicy, plan, prune,
};
use vbm_repo::{BackupId, Cancel, ManualClock};

use super::common::*;

fn cand(vm: &str, time: &str) -> Candidate {
    Candidate {
        id: format!("{vm}/{time}").parse().unwrap(),
        in_use: false,
    }
}

fn kept(p: &PrunePlan) -> Vec<String> {
    p.entries
        .iter()
        .filter(|e| e.action == Action::Keep)
        .map(|e| e.id.time_str())
        .collect()
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn days(from: &str, n: u32) -> Vec<String> {
    let start: jiff::civil::Date = from.parse().unwrap();
    (0..n)
        .map(|i| {
            let d = start
                .checked_add(jiff::Span::new().days(i64::from(i)))
                .unwrap();
            format!("{}T030000Z", d)
        })
        .collect()
}

struct Row {
    name: &'static str,
    times: Vec<String>,
    policy: RetentionPolicy,
    now: &'static str,
    kept: Vec<&'static str>,
}

fn policy(f: impl FnOnce(&mut RetentionPolicy)) -> RetentionPolicy {
    let mut p = RetentionPolicy::default();
    f(&mut p);
    p
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn retention_table() {
    let rows = vec![
        Row {
            name: "keep-last 3",
            times: days("2026-11-01", 5),
            policy: policy(|p| p.keep_last = Some(3)),
            now: "2026-11-06T00:00:00Z",
            kept: vec![
                "2026-11-03T030000Z",
                "2026-11-04T030000Z",
                "2026-11-05T030000Z",
            ],
        },
        Row {
            name: "keep-daily 2 keeps the last backup of each day",
            times: strs(&[
                "2026-11-01T010000Z",
                "2026-11-01T130000Z",
                "2026-11-02T010000Z",
                "2026-11-02T130000Z",
                "2026-11-03T010000Z",
                "2026-11-03T130000Z",
            ]),
            policy: policy(|p| p.keep_daily = Some(2)),
            now: "2026-11-04T00:00:00Z",
            kept: vec!["2026-11-02T130000Z", "2026-11-03T130000Z"],
        },
        Row {
            name: "keep-weekly 2 uses ISO weeks",
            times: strs(&[
                "2026-11-16T030000Z",
                "2026-11-20T030000Z",
                "2026-11-22T030000Z",
                "2026-11-23T030000Z",
                "2026-11-28T030000Z",
                "2026-11-30T030000Z",
            ]),
            policy: policy(|p| p.keep_weekly = Some(2)),
            now: "2026-12-01T00:00:00Z",
            kept: vec!["2026-11-28T030000Z", "2026-11-30T030000Z"],
        },
        Row {
            name: "keep-weekly across the year boundary (2027-01-01 is in 2026-W53)",
            times: strs(&[
                "2026-12-28T030000Z",
                "2026-12-31T030000Z",
                "2027-01-01T030000Z",
                "2027-01-04T030000Z",
            ]),
            policy: policy(|p| p.keep_weekly = Some(2)),
            now: "2027-01-05T00:00:00Z",
            kept: vec!["2027-01-01T030000Z", "2027-01-04T030000Z"],
        },
        Row {
            name: "keep-monthly 2 and keep-yearly 3",
            times: strs(&[
                "2024-12-15T030000Z",
                "2025-06-15T030000Z",
                "2025-12-01T030000Z",
                "2025-12-20T030000Z",
                "2026-01-10T030000Z",
            ]),
            policy: policy(|p| {
                p.keep_monthly = Some(2);
                p.keep_yearly = Some(3);
            }),
            now: "2026-02-01T00:00:00Z",
            kept: vec![
                "2024-12-15T030000Z",
                "2025-12-20T030000Z",
                "2026-01-10T030000Z",
            ],
        },
        Row {
            name: "max-age 7 days keeps everything younger",
            times: days("2026-11-01", 10),
            policy: policy(|p| p.max_age_days = Some(7)),
            now: "2026-11-10T12:00:00Z",
            kept: vec![
                "2026-11-04T030000Z",
                "2026-11-05T030000Z",
                "2026-11-06T030000Z",
                "2026-11-07T030000Z",
                "2026-11-08T030000Z",
                "2026-11-09T030000Z",
                "2026-11-10T030000Z",
            ],
        },
        Row {
            name: "rules combine as a union",
            times: days("2026-10-01", 31),
            policy: policy(|p| {
                p.keep_last = Some(2);
                p.keep_weekly = Some(3);
                p.keep_monthly = Some(2);
            }),
            now: "2026-11-01T00:00:00Z",
            kept: vec![
                "2026-10-18T030000Z",
                "2026-10-25T030000Z",
                "2026-10-30T030000Z",
                "2026-10-31T030000Z",
            ],
        },
    ];
    for row in rows {
        let cands: Vec<_> = row.times.iter().map(|t| cand("vm-1", t)).collect();
        let guards = PruneGuards {
            force: true,
            ..PruneGuards::default()
        };
        let p = plan(&cands, &row.policy, &guards, ts(row.now));
        assert_eq!(kept(&p), row.kept, "{}", row.name);
        for e in &p.entries {
            assert!(
                !e.reasons.is_empty(),
                "{}: every decision says why",
                row.name
            );
        }
    }
}

// covers T3: future-dated backups are flagged, kept, and do not displace real ones.
#[test]
fn future_dated_backups_do_not_displace_real_ones() {
    let mut cands: Vec<_> = ["2026-11-01", "2026-11-08", "2026-11-15", "2026-11-22"]
        .iter()
        .map(|d| cand("vm-1", &format!("{d}T030000Z")))
        .collect();
    for d in ["2027-01-01", "2027-01-08", "2027-01-15"] {
        cands.push(cand("vm-1", &format!("{d}T030000Z")));
    }
    let p = plan(
        &cands,
        &policy(|p| p.keep_weekly = Some(3)),
        &PruneGuards::default(),
        ts("2026-11-23T00:00:00Z"),
    );
    let removed: Vec<_> = p.removals().map(BackupId::time_str).collect();
    assert_eq!(removed, vec!["2026-11-01T030000Z"]);
    let future: Vec<_> = p.entries.iter().filter(|e| e.future_dated).collect();
    assert_eq!(future.len(), 3);
    assert!(
        future
            .iter()
            .all(|e| e.action == Action::Keep && e.reasons[0].contains("future"))
    );
    assert!(p.refused.is_none());
}

// covers T3: garbage backups dated one minute after each real weekly one. keep-weekly alone
// would keep only the garbage; the share guard refuses that plan, and keep-within (max-age)
// keeps the real ones.
#[test]
fn garbage_after_each_weekly_backup_cannot_wipe_the_real_ones() {
    let mut cands = Vec::new();
    for d in ["2026-11-01", "2026-11-08", "2026-11-15", "2026-11-22"] {
        cands.push(cand("vm-1", &format!("{d}T030000Z")));
        cands.push(cand("vm-1", &format!("{d}T030100Z")));
    }
    let now = ts("2026-11-23T00:00:00Z");
    let weekly = policy(|p| p.keep_weekly = Some(3));
    let p = plan(&cands, &weekly, &PruneGuards::default(), now);
    assert!(
        p.refused
            .as_deref()
            .unwrap()
            .contains("would remove 5 of 8"),
        "{:?}",
        p.refused
    );
    let with_age = policy(|p| {
        p.keep_weekly = Some(3);
        p.max_age_days = Some(30);
    });
    let p = plan(&cands, &with_age, &PruneGuards::default(), now);
    assert_eq!(p.removals().count(), 0);
}

// covers T1: a clock that jumped 40 days forward must not wipe history without --force.
#[test]
fn clock_jump_forward_is_refused_without_force() {
    let cands: Vec<_> = days("2026-11-01", 10)
        .iter()
        .map(|t| cand("vm-1", t))
        .collect();
    let pol = policy(|p| p.max_age_days = Some(7));
    let now = ts("2026-12-20T00:00:00Z");
    let p = plan(&cands, &pol, &PruneGuards::default(), now);
    assert!(p.refused.is_some());
    let forced = plan(
        &cands,
        &pol,
        &PruneGuards {
            force: true,
            ..PruneGuards::default()
        },
        now,
    );
    assert!(forced.refused.is_none());
    assert_eq!(
        kept(&forced),
        vec!["2026-11-10T030000Z"],
        "the newest backup always stays"
    );
}

#[test]
fn backups_in_use_by_a_restore_are_kept() {
    let mut cands: Vec<_> = days("2026-11-01", 4)
        .iter()
        .map(|t| cand("vm-1", t))
        .collect();
    cands[0].in_use = true;
    let p = plan(
        &cands,
        &policy(|p| p.keep_last = Some(1)),
        &PruneGuards {
            force: true,
            ..PruneGuards::default()
        },
        ts("2026-11-05T00:00:00Z"),
    );
    assert_eq!(kept(&p), vec!["2026-11-01T030000Z", "2026-11-04T030000Z"]);
}

fn arb_policy() -> impl Strategy<Value = RetentionPolicy> {
    let n = || proptest::option::of(0u32..6);
    (n(), n(), n(), n(), n(), n()).prop_map(|(a, b, c, d, e, f)| RetentionPolicy {
        keep_last: a,
        max_age_days: b.map(|x| x * 10),
        keep_daily: c,
        keep_weekly: d,
        keep_monthly: e,
        keep_yearly: f,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Invariants of any plan: the newest real backup of each VM stays, future-dated ones stay,
    /// every decision has a reason, the plan does not depend on input order, keep-last N keeps
    /// the N newest, and running the plan again on its result removes nothing more (F3).
    #[test]
    fn plan_invariants(
        offsets in proptest::collection::vec((0u8..2, 0i64..(2 * 366 * 86_400)), 1..40),
        pol in arb_policy(),
        future_secs in 0i64..(3 * 86_400),
    ) {
        let base = ts("2025-01-01T00:00:00Z");
        let mut cands: Vec<Candidate> = offsets
            .iter()
            .map(|(v, o)| Candidate {
                id: BackupId::new(vm(&format!("vm-{v}")), base + secs(*o)).unwrap(),
                in_use: false,
            })
            .collect();
        cands.sort_by(|a, b| a.id.cmp(&b.id));
        cands.dedup_by(|a, b| a.id == b.id);
        let latest = cands.iter().map(|c| c.id.time()).max().unwrap();
        // "now" is sometimes before the latest backups (future-dated ones).
        let now = latest - secs(future_secs) + secs(3600);
        let guards = PruneGuards { force: true, ..PruneGuards::default() };
        let p = plan(&cands, &pol, &guards, now);
        let mut reversed = cands.clone();
        reversed.reverse();
        prop_assert_eq!(&plan(&reversed, &pol, &guards, now).entries, &p.entries);
        let limit = now + guards.future_tolerance;
        for v in ["vm-0", "vm-1"] {
            let mine: Vec<_> = p.entries.iter().filter(|e| e.id.vm().as_str() == v).collect();
            let real: Vec<_> = mine.iter().filter(|e| e.id.time() <= limit).collect();
            if let Some(newest) = real.last() {
                prop_assert_eq!(newest.action, Action::Keep);
            }
            if let Some(n) = pol.keep_last {
                for e in real.iter().rev().take(n as usize) {
                    prop_assert_eq!(e.action, Action::Keep);
                }
            }
            for e in mine.iter().filter(|e| e.id.time() > limit) {
                prop_assert!(e.future_dated && e.action == Action::Keep);
            }
        }
        for e in &p.entries {
            prop_assert!(!e.reasons.is_empty());
        }
        let rest: Vec<Candidate> = p
            .entries
            .iter()
            .filter(|e| e.action == Action::Keep)
            .map(|e| Candidate { id: e.id.clone(), in_use: false })
            .collect();
        let again = plan(&rest, &pol, &guards, now);
        prop_assert_eq!(again.removals().count(), 0);
    }
}

// covers F3: prune killed at every file operation; the rerun reaches the same final set as an
// uninterrupted run, and everything left restores.
#[test]
fn prune_killed_at_any_point_converges_to_the_golden_result() {
    single_threaded(prune_killed_inner);
}

fn prune_killed_inner() {
    let policy = RetentionPolicy {
        keep_last: Some(2),
        ..RetentionPolicy::default()
    };
    let options = PruneOptions {
        policy,
        guards: PruneGuards {
            force: true,
            ..PruneGuards::default()
        },
        ..PruneOptions::default()
    };
    let setup = || {
        let clock = ManualClock::new(t0());
        let (fs, repo) = crash_repo(&clock);
        for i in 0..5i64 {
            backup(
                &repo,
                "vm-1",
                t0() + secs(i * 86_400),
                &[
                    disk("d", disk_image(3 * CS as usize, i as u64)),
                    config("c", vec![i as u8]),
                ],
            )
            .unwrap();
        }
        fs.sync_all();
        clock.advance(secs(5 * 86_400));
        (clock, fs, repo)
    };
    // Golden run.
    let (_clock, fs, repo) = setup();
    fs.arm(None);
    let golden = prune(&repo, &options, &mut |_| {}, &Cancel::new()).unwrap();
    let golden_set = repo.list_backups().unwrap().committed;
    assert_eq!(golden.removed.len(), 3);
    assert_eq!(golden_set.len(), 2);
    let (ops, _) = fs.counts();
    eprintln!("F3: prune killed and powered off at each of {ops} operations");
    assert!(ops > 10, "{ops}");
    for k in 1..=ops {
        for kind in [CrashKind::ProcessKill, CrashKind::PowerCut] {
            let (clock, fs, repo) = setup();
            fs.arm(Some(CrashPlan {
                kind,
                at: CrashTrigger::Op(k),
            }));
            let _ = prune(&repo, &options, &mut |_| {}, &Cancel::new());
            assert!(fs.crashed(), "op {k}");
            fs.reboot();
            // The dead prune's lock goes stale; the rerun converges.
            clock.advance(secs(601));
            let repo = reopen_crash(&fs, &clock);
            let visible = repo.list_backups().unwrap().committed;
            assert!(
                golden_set.iter().all(|id| visible.contains(id)),
                "op {k} {kind:?}: a kept backup vanished"
            );
            prune(&repo, &options, &mut |_| {}, &Cancel::new()).unwrap();
            assert_eq!(
                repo.list_backups().unwrap().committed,
                golden_set,
                "op {k} {kind:?}"
            );
            assert_all_restorable(&repo);
            // Leftovers of the interrupted removal are GC's job.
            clock.advance(secs(7200));
            gc(&repo, &GcOptions::default(), &mut |_| {}, &Cancel::new()).unwrap();
            assert!(
                repo.list_backups().unwrap().partial.is_empty(),
                "op {k} {kind:?}"
            );
            assert_all_restorable(&repo);
        }
    }
}
