//! Retention on real backups with faked timestamps: the server runs under libfaketime and the
//! test moves its wall clock a day at a time, so that backup ids (their times) are days apart.
//! keep_last and max_age_days delete exactly what they should after each backup, the newest
//! backup is never removed, the preview says why, a confirmed apply removes what the preview
//! showed, and GC then frees the chunks only the removed backups used.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::common::{SMALL_SPEC, add_testbed, backups, call, create_job, run_job, wait_run};
use vbm_testkit::{Server, ServerOptions, Testbed};

fn ids(list: &[Value]) -> BTreeSet<String> {
    list.iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The time in a backup id `vm-…/YYYY-MM-DDTHHMMSSZ`.
fn time_of(id: &str) -> jiff::Timestamp {
    let time = id.rsplit('/').next().unwrap();
    jiff::fmt::strtime::parse("%Y-%m-%dT%H%M%SZ", time)
        .unwrap()
        .to_datetime()
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .unwrap()
        .timestamp()
}

/// Whole days (rounded) between the test's start and a backup id's time.
fn day_of(id: &str, base: jiff::Timestamp) -> i32 {
    let secs = time_of(id).duration_since(base).as_secs();
    i32::try_from((secs + 43_200).div_euclid(86_400)).unwrap()
}

// covers T1/T3 guards on real data (newest kept), F3 (idempotent removal), retention preview
#[tokio::test]
async fn keep_last_and_max_age_on_backups_days_apart() {
    let tb = Testbed::start(SMALL_SPEC).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("faketime");
    std::fs::write(&clock, "+0d\n").unwrap();
    let mut server = Server::start_with(ServerOptions {
        repo: Some(dir.path().join("repo")),
        config_toml: Some("[gc]\ncron = \"\"\ngrace_secs = 0\n".into()),
        faketime_file: Some(clock.clone()),
        ..ServerOptions::default()
    })
    .await
    .unwrap();
    let vc = add_testbed(&server, "lab", &tb).await;
    let info = tb.control().info().await.unwrap();
    let (web, app) = (info.vm("web01").unwrap(), info.vm("app01").unwrap());
    let kl = create_job(
        &server,
        json!({"name": "keep-last", "sources": [{"vcenter_id": vc, "vms": [web.instance_uuid]}],
               "retention": {"keep_last": 2}}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ma = create_job(
        &server,
        json!({"name": "max-age", "sources": [{"vcenter_id": vc, "vms": [app.instance_uuid]}],
               "retention": {"max_age_days": 2}}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let base = jiff::Timestamp::now();
    for day in 0..4 {
        std::fs::write(&clock, format!("+{day}d\n")).unwrap();
        // A guest write a day: each backup has data of its own.
        tb.control()
            .write("web01", web.disks[0].key, 1 << 20, 64 * 1024, day)
            .await
            .unwrap();
        let (r1, r2) = (run_job(&server, &kl).await, run_job(&server, &ma).await);
        for r in [r1, r2] {
            let done = wait_run(&server, &r, Duration::from_secs(120)).await;
            assert_eq!(done["status"], "success", "day {day}: {done}");
        }
        let kept_kl: Vec<i32> = ids(&backups(&server, &format!("&job_id={kl}")).await)
            .iter()
            .map(|id| day_of(id, base))
            .collect();
        let kept_ma: Vec<i32> = ids(&backups(&server, &format!("&job_id={ma}")).await)
            .iter()
            .map(|id| day_of(id, base))
            .collect();
        let day = i32::try_from(day).unwrap();
        // keep_last 2: the two newest days.
        let expect_kl: Vec<i32> = ((day - 1).max(0)..=day).collect();
        assert_eq!(kept_kl, expect_kl, "keep_last after day {day}");
        // max_age_days 2: everything younger than two days (the backup of day-2 is a few
        // seconds older than that by the time retention runs).
        let expect_ma: Vec<i32> = ((day - 1).max(0)..=day).collect();
        assert_eq!(kept_ma, expect_ma, "max_age after day {day}");
    }
    // The run log says what retention removed.
    let (_, _, runs) = call(
        &server,
        "GET",
        &format!("/api/v1/runs?job_id={kl}&limit=1"),
        None,
    )
    .await;
    let last = runs["items"][0]["id"].as_str().unwrap().to_owned();
    let (_, _, logs) = call(&server, "GET", &format!("/api/v1/runs/{last}/logs"), None).await;
    assert!(
        logs.to_string().contains("retention removed 1 backup(s)"),
        "{logs}"
    );

    // The preview explains every decision.
    let (status, _, preview) = call(
        &server,
        "GET",
        &format!("/api/v1/jobs/{kl}/retention"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    let plan = &preview["vms"][0]["plan"];
    assert_eq!(plan["keep"].as_array().unwrap().len(), 2, "{preview}");
    assert!(plan["remove"].as_array().unwrap().is_empty());
    assert!(
        plan["keep"][0]["reasons"].to_string().contains("newest"),
        "{plan}"
    );
    assert!(
        plan["keep"][1]["reasons"]
            .to_string()
            .contains("keep-last 2"),
        "{plan}"
    );

    // Tighten the policy: the preview shows what would go and why; applying removes exactly it.
    let (_, _, job) = call(&server, "GET", &format!("/api/v1/jobs/{kl}"), None).await;
    let mut spec =
        json!({"name": job["name"], "sources": job["sources"], "retention": {"keep_last": 1}});
    spec["mode"] = job["mode"].clone();
    let (status, _, body) = call(&server, "PUT", &format!("/api/v1/jobs/{kl}"), Some(spec)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, _, preview) = call(
        &server,
        "GET",
        &format!("/api/v1/jobs/{kl}/retention"),
        None,
    )
    .await;
    let plan = &preview["vms"][0]["plan"];
    let going = plan["remove"][0]["backup_id"].as_str().unwrap().to_owned();
    assert_eq!(
        plan["remove"][0]["reasons"],
        json!(["matched no keep rule"])
    );
    assert!(plan["blocked"].is_null(), "{plan}");
    let newest = plan["keep"][0]["backup_id"].as_str().unwrap().to_owned();
    let (status, _, applied) = call(
        &server,
        "POST",
        &format!("/api/v1/jobs/{kl}/retention"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    assert_eq!(applied["removed"], json!([going]));
    assert_eq!(
        ids(&backups(&server, &format!("&job_id={kl}")).await),
        [newest].into(),
        "the newest backup is never removed"
    );
    // Applying again changes nothing (F3: idempotent).
    let (_, _, again) = call(
        &server,
        "POST",
        &format!("/api/v1/jobs/{kl}/retention"),
        Some(json!({"force": false})),
    )
    .await;
    assert_eq!(again["removed"], json!([]));

    // GC frees the chunks only the removed backups referenced.
    let (status, _, run) = call(&server, "POST", "/api/v1/repository/gc", None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let done = wait_run(
        &server,
        run["id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(done["status"], "success", "{done}");
    let reason = done["reason"].as_str().unwrap();
    assert!(!reason.contains("freed 0 bytes"), "{reason}");
    // Every remaining backup still verifies after GC.
    for b in backups(&server, "").await {
        let id = b["id"].as_str().unwrap().replace('/', "%2F");
        let (_, _, v) = call(
            &server,
            "POST",
            &format!("/api/v1/backups/{id}/verify"),
            None,
        )
        .await;
        let v = wait_run(&server, v["id"].as_str().unwrap(), Duration::from_secs(60)).await;
        assert_eq!(v["status"], "success", "{v}");
    }
    server.terminate(Duration::from_secs(30)).await.unwrap();
}
