//! The engine benchmark of issue 5 (not a test): a realistic 4 GiB ext4 image served by the
//! testbed as a VM disk over HTTPS, backed up full, changed by scattered 64 KiB writes on ~2 % of
//! its 4 MiB chunks, backed up incrementally, and restored into vCenter — each next to the limit
//! measured in the same run (raw `curl` download/upload of the same file, the repository codec's
//! 2-core ceiling) and next to restic and borg on the same data.
//!
//! Run it through `bench/engine.sh` (which builds the image and installs the peers); flags:
//! `--no-peers` (skip restic and borg), `--level N` (zstd level of the repository; default: the
//! repository default), `--change F` (share of chunks touched on day 2), `--workers N` and
//! `--streams N` (the engine's chunk workers and range streams per disk).

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
#![allow(clippy::cast_precision_loss)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use vbm_engine::vbm_repo::chunk::ChunkCodec;
use vbm_engine::vbm_repo::{InitOptions, Repository, is_all_zero};
use vbm_engine::vbm_vsphere::{
    Client, ConnectOptions, DatastoreFile, DatastorePath, Thumbprint, Trust,
};
use vbm_engine::{
    BackupOptions, CancellationToken, ModeRequest, NoProgress, RunId, VcenterTarget, VmSelector,
};
use vbm_testkit::{Testbed, TestbedOptions};

/// The same allocator as the `vbm` binary (ADR 32).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MIB: f64 = 1024.0 * 1024.0;
const CHUNK: usize = 4 << 20;

struct Args {
    image: PathBuf,
    work: PathBuf,
    change: f64,
    peers: bool,
    level: Option<i32>,
    workers: Option<usize>,
    streams: Option<usize>,
}

fn args() -> Args {
    let mut image = None;
    let mut work = std::env::temp_dir().join("vbm-engine-bench");
    let mut change = 0.02;
    let mut peers = true;
    let mut level = None;
    let (mut workers, mut streams) = (None, None);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--image" => image = it.next().map(PathBuf::from),
            "--work" => work = it.next().map(PathBuf::from).unwrap(),
            "--change" => change = it.next().unwrap().parse().unwrap(),
            "--no-peers" => peers = false,
            "--level" => level = it.next().map(|l| l.parse().unwrap()),
            "--workers" => workers = it.next().map(|l| l.parse().unwrap()),
            "--streams" => streams = it.next().map(|l| l.parse().unwrap()),
            other => panic!("unknown argument {other}"),
        }
    }
    Args {
        image: image.expect("--image PATH of a raw disk image"),
        work,
        change,
        peers,
        level,
        workers,
        streams,
    }
}

fn restic() -> Command {
    let mut cmd = Command::new("restic");
    cmd.env("RESTIC_PASSWORD", "bench");
    cmd
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

fn dir_size(path: &Path) -> u64 {
    let out = Command::new("du").args(["-sb"]).arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0)
}

/// Flushes dirty pages so that one measurement does not pay for the previous one's writes.
fn settle() {
    let _ = Command::new("sync").status();
}

fn run(cmd: &mut Command) -> f64 {
    settle();
    let t = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    secs(t)
}

/// The repository codec (SHA-256 + zstd at the repository's level) over every non-zero chunk of
/// the image on `threads` threads: the CPU ceiling of a backup of this data.
fn codec_ceiling(image: &Path, level: i32, threads: usize) -> f64 {
    let data = std::fs::read(image).unwrap();
    let codec = ChunkCodec::new(level, None);
    let chunks: Vec<&[u8]> = data.chunks(CHUNK).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(chunk) = chunks.get(i) else { break };
                    if is_all_zero(chunk) {
                        continue;
                    }
                    let digest = codec.digest(chunk);
                    std::hint::black_box(codec.encode(&digest, chunk).unwrap());
                }
            });
        }
    });
    data.len() as f64 / t.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    let _ = std::fs::remove_dir_all(&args.work);
    std::fs::create_dir_all(&args.work).unwrap();
    let size = std::fs::metadata(&args.image).unwrap().len();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        .unwrap_or_default();
    println!(
        "# vbm engine benchmark\n\nCPU: {cpu}, {} cores; image {} ({:.0} MiB)\n",
        std::thread::available_parallelism().map_or(0, usize::from),
        args.image.display(),
        size as f64 / MIB
    );

    // The testbed serves the image itself as the VM's flat disk (writes of "day 2" go into it).
    let spec = serde_json::json!({
        "seed": 1, "cbt_block_size": 65536, "qcda_window": 1u64 << 30,
        "datacenters": [{"name": "DC0", "datastores": [{"name": "ds1"}], "hosts": ["esx1"],
            "vms": [{"name": "bench", "power": "on", "cbt": true,
                "disks": [{"capacity": size, "thin": true, "fill": {"kind": "image", "path": args.image, "link": true}}]}]}]
    });
    let tb = Testbed::start_with(TestbedOptions {
        data_dir: Some(args.work.join("datastores")),
        ..TestbedOptions::spec(&spec.to_string())
    })
    .await
    .unwrap();
    let info = tb.control().info().await.unwrap();
    let vm = info.vm("bench").unwrap().clone();
    let key = vm.disks[0].key;
    let options = ConnectOptions::new(tb.sdk_url.clone(), tb.user.clone(), tb.password.clone())
        .trust(Trust::Pinned(
            Thumbprint::parse(&tb.thumbprint_sha256).unwrap(),
        ));
    let client = Client::connect(options).await.unwrap();
    let flat = DatastoreFile::new(
        "DC0",
        DatastorePath::parse(&vm.disks[0].file.replace(".vmdk", "-flat.vmdk")).unwrap(),
    );
    let mut origin = url::Url::parse(&tb.sdk_url).unwrap();
    origin.set_path("/");
    let url = flat.url(&origin);
    let auth = format!("{}:{}", tb.user, tb.password);

    // Limits measured now, on this machine, with this data.
    let t_curl_get =
        run(Command::new("curl").args(["-sSfk", "-u", &auth, "-o", "/dev/null", &url]));
    let repo_dir = args.work.join("repo");
    let mut init = InitOptions::default();
    if let Some(level) = args.level {
        init.compression_level = level;
    }
    let repo = Repository::init_local(&repo_dir, &init).unwrap();
    let level = repo.config().compression_level;
    let ceiling = codec_ceiling(&args.image, level, 2);
    let curl_rate = size as f64 / t_curl_get;
    let limit = curl_rate.min(ceiling);

    // 1. Full backup.
    let cancel = CancellationToken::new();
    let mut options = BackupOptions::new(VmSelector::Name("bench".into()));
    if let Some(workers) = args.workers {
        options.workers = workers;
    }
    if let Some(streams) = args.streams {
        options.streams = streams;
    }
    options.mode = ModeRequest::Incremental;
    settle();
    let t = Instant::now();
    let full = vbm_engine::backup(&client, &repo, &options, &NoProgress, &cancel)
        .await
        .unwrap();
    let t_full = secs(t);
    let full_rate = size as f64 / t_full;
    let repo_full = dir_size(&repo_dir);

    // Peers, day 1.
    let restic_repo = args.work.join("restic");
    let borg_repo = args.work.join("borg");
    let mut peers = Vec::new();
    if args.peers {
        run(restic()
            .args(["init", "--repository-version", "2", "-q", "-r"])
            .arg(&restic_repo));
        let t1 = run(restic()
            .args(["backup", "-q", "-r"])
            .arg(&restic_repo)
            .arg(&args.image));
        let s1 = dir_size(&restic_repo);
        run(Command::new("borg")
            .args(["init", "--encryption", "none"])
            .arg(&borg_repo)
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes"));
        let b1 = run(Command::new("borg")
            .args(["create", "--compression", &format!("zstd,{level}")])
            .arg(format!("{}::day1", borg_repo.display()))
            .arg(&args.image)
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes"));
        let bs1 = dir_size(&borg_repo);
        peers.push((t1, s1, b1, bs1));
    }

    // 2. Day 2: scattered 64 KiB writes on ~2 % of the 4 MiB chunks (64 KiB-aligned, like a file
    // system's blocks), then an incremental.
    let chunks = size / CHUNK as u64;
    let touched = ((chunks as f64 * args.change).round() as u64).max(1);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < usize::try_from(touched).unwrap() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        picked.insert(x % chunks);
    }
    for (n, chunk) in picked.iter().enumerate() {
        let offset = chunk * CHUNK as u64 + (x.rotate_left(n as u32) % 64) * 65536;
        tb.control()
            .write("bench", key, offset, 65536, n as u64)
            .await
            .unwrap();
    }
    let changed = touched * 65536;
    options.run_id = RunId::new();
    settle();
    let t = Instant::now();
    let incr = vbm_engine::backup(&client, &repo, &options, &NoProgress, &cancel)
        .await
        .unwrap();
    let t_incr = secs(t);
    let small: u64 = incr
        .manifest
        .files
        .iter()
        .filter(|f| f.kind != vbm_engine::vbm_repo::FileKind::Disk)
        .map(|f| f.size_bytes)
        .sum();
    let disk_read = incr.bytes_read - small;
    let fixed = incr.timings.snapshot_create_seconds
        + incr.timings.cbt_query_seconds
        + incr.timings.snapshot_remove_seconds;
    let repo_incr = dir_size(&repo_dir);

    // Peers, day 2 and restore.
    if args.peers {
        let (t1, s1, b1, bs1) = peers[0];
        let t2 = run(restic()
            .args(["backup", "-q", "-r"])
            .arg(&restic_repo)
            .arg(&args.image));
        let s2 = dir_size(&restic_repo);
        let restore_dir = args.work.join("restic-restore");
        let tr = run(restic()
            .args(["restore", "latest", "-q", "-r"])
            .arg(&restic_repo)
            .arg("--target")
            .arg(&restore_dir));
        let _ = std::fs::remove_dir_all(&restore_dir);
        let b2 = run(Command::new("borg")
            .args(["create", "--compression", &format!("zstd,{level}")])
            .arg(format!("{}::day2", borg_repo.display()))
            .arg(&args.image)
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes"));
        let bs2 = dir_size(&borg_repo);
        let borg_restore = args.work.join("borg-restore");
        std::fs::create_dir_all(&borg_restore).unwrap();
        let br = run(Command::new("borg")
            .arg("extract")
            .arg(format!("{}::day2", borg_repo.display()))
            .current_dir(&borg_restore)
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes"));
        let _ = std::fs::remove_dir_all(&borg_restore);
        peers[0] = (t1, s1, b1, bs1);
        peers.push((t2, s2, tr, 0));
        peers.push((b2, bs2, br, 0));
    }

    // 3. Restore into vCenter as a new VM (PUT of every byte) next to a raw curl upload.
    // Uploads land on the same virtual disk as everything else, so writeback of earlier steps
    // disturbs them: alternate curl and vbm twice and keep the best of each.
    let datastore_dir = args.work.join("datastores").join("ds1");
    let mut t_curl_put = f64::MAX;
    let mut t_restore = f64::MAX;
    for round in 0..2 {
        let dest = DatastoreFile::new(
            "DC0",
            DatastorePath::new("ds1", format!("curl-upload-{round}/upload-flat.vmdk")),
        );
        t_curl_put = t_curl_put.min(run(Command::new("curl")
            .args(["-sSfk", "-u", &auth, "-T"])
            .arg(&args.image)
            .arg(dest.url(&origin))));
        let _ = std::fs::remove_dir_all(datastore_dir.join(format!("curl-upload-{round}")));
        let target = VcenterTarget {
            name: format!("bench-restored-{round}"),
            datastore: "ds1".into(),
            folder: None,
            resource_pool: None,
            host: None,
            power_on: false,
        };
        settle();
        let t = Instant::now();
        vbm_engine::restore_to_vcenter(
            &client,
            &repo,
            &incr.backup_id,
            &target,
            2,
            &NoProgress,
            &cancel,
        )
        .await
        .unwrap();
        t_restore = t_restore.min(secs(t));
        let _ = std::fs::remove_dir_all(datastore_dir.join(format!("bench-restored-{round}")));
    }

    println!("| measure | value |\n|---|---|");
    println!(
        "| raw curl GET of the flat file | {:.1} s, {:.0} MiB/s |",
        t_curl_get,
        curl_rate / MIB
    );
    println!(
        "| repository codec (SHA-256 + zstd {level}), 2 threads, on this data | {:.0} MiB/s |",
        ceiling / MIB
    );
    println!(
        "| **full backup** | {:.1} s, {:.0} MiB/s, read {:.0} MiB, stored {:.0} MiB |",
        t_full,
        full_rate / MIB,
        full.bytes_read as f64 / MIB,
        repo_full as f64 / MIB
    );
    println!(
        "| full backup rate ÷ min(curl, codec ceiling) | **{:.2}** (target ≥ 0.8) |",
        full_rate / limit
    );
    println!(
        "| day 2 | {touched} of {chunks} chunks touched, {:.2} MiB changed |",
        changed as f64 / MIB
    );
    println!(
        "| **incremental** | {:.2} s: vSphere fixed costs {:.2} s (snapshot {:.2}, QCDA {:.2}, remove {:.2}), data work {:.2} s (while the snapshot exists), file digest of unchanged data from the repository {:.2} s (after the snapshot is gone), commit {:.2} s |",
        t_incr,
        fixed,
        incr.timings.snapshot_create_seconds,
        incr.timings.cbt_query_seconds,
        incr.timings.snapshot_remove_seconds,
        incr.timings.data_seconds,
        incr.timings.digest_seconds,
        incr.timings.commit_seconds
    );
    println!(
        "| incremental: disk bytes read ÷ bytes changed | **{:.2}** ({} ÷ {}; target ≤ 1.1) |",
        disk_read as f64 / changed as f64,
        disk_read,
        changed
    );
    println!(
        "| repository growth on day 2 | {:.1} MiB |",
        (repo_incr.saturating_sub(repo_full)) as f64 / MIB
    );
    println!(
        "| raw curl PUT of the same size (best of 2) | {:.1} s, {:.0} MiB/s |",
        t_curl_put,
        size as f64 / t_curl_put / MIB
    );
    println!(
        "| **restore to vCenter** (new VM, PUT; best of 2) | {:.1} s, {:.0} MiB/s |",
        t_restore,
        size as f64 / t_restore / MIB
    );
    println!(
        "| restore rate ÷ curl upload | **{:.2}** (target ≥ 0.8) |",
        t_curl_put / t_restore
    );
    if args.peers {
        let (rt1, rs1, bt1, bs1) = peers[0];
        let (rt2, rs2, rtr, _) = peers[1];
        let (bt2, bs2, btr, _) = peers[2];
        println!(
            "\n| tool | full | day 2 | restore | repo after full | growth day 2 |\n|---|---|---|---|---|---|"
        );
        println!(
            "| vbm | {t_full:.1} s | {t_incr:.2} s (data {:.2} s) | {t_restore:.1} s (into vCenter) | {:.0} MiB | {:.1} MiB |",
            incr.timings.data_seconds,
            repo_full as f64 / MIB,
            (repo_incr.saturating_sub(repo_full)) as f64 / MIB
        );
        println!(
            "| restic 0.14 (local file) | {rt1:.1} s | {rt2:.2} s | {rtr:.1} s (to disk) | {:.0} MiB | {:.1} MiB |",
            rs1 as f64 / MIB,
            (rs2.saturating_sub(rs1)) as f64 / MIB
        );
        println!(
            "| borg 1.2 zstd,{level} (local file) | {bt1:.1} s | {bt2:.2} s | {btr:.1} s (to disk) | {:.0} MiB | {:.1} MiB |",
            bs1 as f64 / MIB,
            (bs2.saturating_sub(bs1)) as f64 / MIB
        );
    }
}
