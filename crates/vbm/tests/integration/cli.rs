//! The CLI contract of issue 5: `vbm backup --json`, `vbm restore --to-dir`, exit codes, and
//! messages that say what is wrong.

use super::support::{Env, sha256_file, stdout_json};

#[tokio::test]
async fn backup_json_then_restore_to_a_directory_reproduces_the_disks() {
    let env = Env::new("default").await;
    let full = stdout_json(&env.run(&env.backup_args("web01")));
    assert_eq!(full["mode"], "full");
    let id = full["id"].as_str().unwrap().to_owned();
    assert!(full["bytes_read"].as_u64().unwrap() > 0);
    assert!(full["manifest"]["files"].as_array().unwrap().len() >= 4);

    let info = env.tb.control().info().await.unwrap();
    let disk = &info.vm("web01").unwrap().disks[0];
    env.tb
        .control()
        .write("web01", disk.key, 0, 4096, 3)
        .await
        .unwrap();
    let incremental = stdout_json(&env.run(&env.backup_args("web01")));
    assert_eq!(incremental["mode"], "incremental");
    assert!(
        incremental["bytes_read"].as_u64().unwrap() < 200_000,
        "{}",
        incremental["bytes_read"]
    );

    let target = env.dir.path().join("restore");
    let restored = env.run(&[
        "restore".into(),
        "--repo".into(),
        env.repo.display().to_string(),
        "--backup".into(),
        id,
        "--to-dir".into(),
        target.display().to_string(),
        "--json".into(),
    ]);
    let report = stdout_json(&restored);
    for file in full["manifest"]["files"].as_array().unwrap() {
        let path = target.join(file["path"].as_str().unwrap());
        assert_eq!(
            sha256_file(&path),
            file["sha256"].as_str().unwrap(),
            "{}",
            path.display()
        );
    }
    assert_eq!(
        report["files"].as_array().unwrap().len(),
        full["manifest"]["files"].as_array().unwrap().len()
    );
}

#[tokio::test]
async fn wrong_password_or_thumbprint_fail_with_a_message_that_says_which() {
    let env = Env::new("default").await;
    let mut args = env.backup_args("web01");
    let output = env
        .command(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .env("VCENTER_PASSWORD", "wrong")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("user name or password"), "{stderr}");

    let at = args.iter().position(|a| a == "--thumbprint").unwrap();
    args[at + 1] = "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF".into();
    let output = env.run(&args);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("thumbprint mismatch"), "{stderr}");
    assert!(
        env.repository()
            .list_backups()
            .unwrap()
            .committed
            .is_empty()
    );

    let unknown = env.run(&env.backup_args("no such vm"));
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("not found"));
}

// Specification 2.3: verify compares each disk's size with what vCenter reports now.
#[tokio::test]
async fn verify_with_vcenter_flags_reports_a_disk_resized_since_the_backup() {
    let env = Env::new("default").await;
    stdout_json(&env.run(&env.backup_args("db01")));
    let mut verify: Vec<String> = vec![
        "verify".into(),
        "--repo".into(),
        env.repo.display().to_string(),
        "--json".into(),
    ];
    verify.extend(env.vcenter_args());
    let clean = stdout_json(&env.run(&verify));
    assert_eq!(clean["ok"], true, "{clean}");

    let info = env.tb.control().info().await.unwrap();
    let disk = &info.vm("db01").unwrap().disks[0];
    env.tb
        .control()
        .resize("db01", disk.key, disk.capacity_bytes + (1 << 20))
        .await
        .unwrap();
    let output = env.run(&verify);
    assert_eq!(
        output.status.code(),
        Some(3),
        "a size mismatch is a verification failure"
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let findings = report["vcenter"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["failure"] == true
            && f["message"]
                .as_str()
                .unwrap()
                .contains("vCenter now reports")),
        "{report}"
    );
}
