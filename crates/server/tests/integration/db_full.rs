//! S-D3: the database's disk fills up. The API answers writes with 507 and a clear message,
//! reads keep working, nothing is deleted (retention and GC refuse), and after space is freed
//! writes work again and `integrity_check` is ok (INV-3).
//!
//! Needs root (a small tmpfs under the data directory); skipped otherwise, or with
//! `BM_TEST_ROOT=0`. CI runs as root.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use super::common::{
    SMALL_SPEC, add_testbed, call, create_job, manifests_on_disk, run_job, server_with_repo,
    wait_run,
};
use vbm_testkit::Testbed;

/// Unmounts on drop, also when the test fails.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

// covers S-D3, INV-3
#[tokio::test]
async fn a_full_database_disk_gets_507_and_deletes_nothing() {
    if !rustix::process::geteuid().is_root() || std::env::var("BM_TEST_ROOT").as_deref() == Ok("0")
    {
        eprintln!("skipped: S-D3 needs root to mount a tmpfs");
        return;
    }
    let tb = Testbed::start(SMALL_SPEC).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mut server = server_with_repo(dir.path(), "").await;
    let vc = add_testbed(&server, "lab", &tb).await;
    let web = tb
        .control()
        .info()
        .await
        .unwrap()
        .vm("web01")
        .unwrap()
        .clone();
    let job = create_job(
        &server,
        json!({"name": "web", "sources": [{"vcenter_id": vc, "vms": [web.instance_uuid]}],
               "retention": {"keep_last": 1}}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = run_job(&server, &job).await;
    assert_eq!(
        wait_run(&server, &run, Duration::from_secs(120)).await["status"],
        "success"
    );

    // Move the data directory onto a 4 MiB tmpfs.
    server.terminate(Duration::from_secs(30)).await.unwrap();
    let saved = dir.path().join("data-saved");
    copy_dir(&server.data_dir, &saved);
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&server.data_dir)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs failed");
    let _mount = Mount(server.data_dir.clone());
    copy_dir(&saved, &server.data_dir);
    server.restart().await.unwrap();

    // Fill it.
    let filler = server.data_dir.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0x5a_u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    // Writes fail with 507 once SQLite cannot grow its files (the first few may still fit in
    // pages it already holds).
    let mut full = None;
    for i in 0..2000 {
        let (status, _, body) = call(
            &server,
            "POST",
            "/api/v1/jobs",
            Some(json!({"name": format!("filler-{i}"),
                        "sources": [{"vcenter_id": vc, "name_patterns": ["nothing-*"]}]})),
        )
        .await;
        if status == StatusCode::INSUFFICIENT_STORAGE {
            full = Some(body);
            break;
        }
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let body = full.expect("the database never reported a full disk");
    assert!(
        body["detail"].as_str().unwrap().contains("disk is full"),
        "{body}"
    );
    // Every write says so; reads work; nothing is deleted.
    for (method, path, req) in [
        ("POST", format!("/api/v1/jobs/{job}/run"), None),
        ("POST", "/api/v1/repository/gc".to_owned(), None),
        (
            "POST",
            format!("/api/v1/jobs/{job}/retention"),
            Some(json!({"force": true})),
        ),
    ] {
        let (status, _, body) = call(&server, method, &path, req).await;
        assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{path}: {body}");
    }
    for path in [
        "/api/v1/jobs",
        "/api/v1/backups",
        "/api/v1/runs",
        "/healthz",
    ] {
        let (status, _, body) = call(&server, "GET", path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    assert_eq!(manifests_on_disk(&repo).len(), 1);

    // Free the space: writes work again and the database is intact.
    std::fs::remove_file(&filler).unwrap();
    let (status, _, body) = call(
        &server,
        "POST",
        "/api/v1/jobs",
        Some(json!({"name": "after", "sources": [{"vcenter_id": vc, "name_patterns": ["x"]}]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let db = rusqlite::Connection::open_with_flags(
        server.data_dir.join("vbm.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(db);
    server.terminate(Duration::from_secs(30)).await.unwrap();
}
