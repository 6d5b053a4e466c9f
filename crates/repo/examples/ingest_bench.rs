//! Repository ingest/restore benchmark against the raw limits of the same data, in one run
//! (`bench/repo-ingest.sh` builds and runs it; see `bench/RESULTS.md`).
//!
//! ```text
//! ingest_bench --image IMG --workdir DIR [--threads 2] [--level 3] [--chunk-size 4194304]
//!              [--repeat 2]      (each figure is the best of --repeat runs)
//! ```
//!
//! Prints, from the same run and the same data: SHA-256 and zstd rates on one core, plain file
//! write (with fsync) and cold read rates, the repository's ingest (write) and restore (read)
//! throughput using `--threads` threads, and the ratio ingest ÷ min(hash × cores,
//! compress × cores, disk write).
#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark's output is its purpose

use std::error::Error;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use sha2::Digest as _;
use vbm_repo::{
    BackupMode, FileKind, FileName, InitOptions, LocalBackend, Manifest, ManifestFile, OpenOptions,
    Repository, Sha256, VmKey, is_all_zero,
};

type R<T> = Result<T, Box<dyn Error>>;

struct Args {
    repeat: usize,
    image: PathBuf,
    workdir: PathBuf,
    threads: usize,
    level: i32,
    chunk_size: u32,
}

fn args() -> R<Args> {
    let mut a = Args {
        repeat: 2,
        image: PathBuf::new(),
        workdir: PathBuf::from("/var/tmp/vbm-bench"),
        // One more thread than cores keeps both cores busy while a thread waits for an fsync.
        threads: std::thread::available_parallelism().map_or(2, usize::from) + 1,
        level: 3,
        chunk_size: 4 << 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--image" => a.image = v.into(),
            "--workdir" => a.workdir = v.into(),
            "--threads" => a.threads = v.parse()?,
            "--level" => a.level = v.parse()?,
            "--chunk-size" => a.chunk_size = v.parse()?,
            "--repeat" => a.repeat = v.parse::<usize>()?.max(1),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if a.image.as_os_str().is_empty() {
        return Err("--image is required".into());
    }
    Ok(a)
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

/// The fastest of `n` runs of `f` (seconds): the machine is shared, the best run is the one
/// least disturbed.
fn best<T>(n: usize, mut f: impl FnMut() -> R<T>) -> R<(f64, T)> {
    let mut best: Option<(f64, T)> = None;
    for _ in 0..n {
        let t = Instant::now();
        let v = f()?;
        let s = t.elapsed().as_secs_f64();
        if best.as_ref().is_none_or(|(b, _)| s < *b) {
            best = Some((s, v));
        }
    }
    best.ok_or_else(|| "no run".into())
}

/// Drops a file's clean pages from the page cache, so the next read comes from the disk.
fn drop_cache(path: &Path) -> R<()> {
    let f = File::open(path)?;
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)?;
    Ok(())
}

fn drop_cache_tree(dir: &Path) -> R<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            drop_cache_tree(&p)?;
        } else {
            drop_cache(&p)?;
        }
    }
    Ok(())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn main() -> R<()> {
    let a = args()?;
    let cs = a.chunk_size as usize;
    std::fs::create_dir_all(&a.workdir)?;
    let t = Instant::now();
    let mut image = Vec::new();
    File::open(&a.image)?.read_to_end(&mut image)?;
    let total = image.len() as u64;
    let chunks: Vec<&[u8]> = image.chunks(cs).collect();
    let nonzero: Vec<&[u8]> = chunks.iter().copied().filter(|c| !is_all_zero(c)).collect();
    let nonzero_bytes: u64 = nonzero.iter().map(|c| c.len() as u64).sum();
    println!(
        "cpu                {} ({} threads available)",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "image              {} ({:.2} GiB, {} chunks of {} MiB, {:.1} % all-zero chunks; loaded in {:.1} s)",
        a.image.display(),
        total as f64 / (1u64 << 30) as f64,
        chunks.len(),
        cs >> 20,
        100.0 * (chunks.len() - nonzero.len()) as f64 / chunks.len().max(1) as f64,
        t.elapsed().as_secs_f64()
    );

    // 1. SHA-256, one core, every byte.
    let (sha_s, acc) = best(a.repeat, || {
        let mut acc = 0u8;
        for c in &chunks {
            acc ^= sha2::Sha256::digest(c)[0];
        }
        Ok(acc)
    })?;
    let sha = mbps(total, sha_s);
    std::hint::black_box(acc);

    // 2. zstd at the chosen level, one core, every byte; and the compressed size.
    let mut comp = zstd::bulk::Compressor::new(a.level)?;
    let mut out = vec![0u8; zstd::zstd_safe::compress_bound(cs)];
    let (zstd_s, compressed) = best(a.repeat, || {
        let mut compressed = 0u64;
        for c in &chunks {
            compressed += comp.compress_to_buffer(c, &mut out[..])? as u64;
        }
        Ok(compressed)
    })?;
    let zstd = mbps(total, zstd_s);
    let (nz_s, ()) = best(a.repeat, || {
        for c in &nonzero {
            comp.compress_to_buffer(c, &mut out[..])?;
        }
        Ok(())
    })?;
    let zstd_nz = mbps(nonzero_bytes, nz_s);

    // 3. Plain file write with fsync, then a cold read.
    let plain = a.workdir.join("plain.img");
    let (write_s, ()) = best(a.repeat, || {
        let _ = std::fs::remove_file(&plain);
        let mut f = File::create(&plain)?;
        for c in &chunks {
            f.write_all(c)?;
        }
        f.sync_all()?;
        Ok(())
    })?;
    let write = mbps(total, write_s);
    let (read_s, ()) = best(a.repeat, || {
        drop_cache(&plain)?;
        let mut f = File::open(&plain)?;
        let mut buf = vec![0u8; cs];
        while f.read(&mut buf)? > 0 {}
        Ok(())
    })?;
    let read = mbps(total, read_s);
    std::fs::remove_file(&plain)?;

    // 4. Repository ingest on `threads` threads (a fresh repository per run).
    let repo_dir = a.workdir.join("repo");
    // The engine hashes whole files while reading them; that is not the repository's work.
    let sha_file = Sha256::of(&image);
    let mut repo = None;
    let (ingest_s, stats) = best(a.repeat, || {
        let _ = std::fs::remove_dir_all(&repo_dir);
        let r = Repository::init(
            Arc::new(LocalBackend::new(&repo_dir)),
            &InitOptions {
                chunk_size: a.chunk_size,
                compression_level: a.level,
                ..InitOptions::default()
            },
            OpenOptions::default(),
        )?;
        std::fs::File::open(&repo_dir)?.sync_all()?;
        let t = Instant::now();
        let stats = ingest(&r, &chunks, total, sha_file, a.threads)?;
        let s = t.elapsed();
        repo = Some(r);
        // `best` times the whole closure: report only the ingest part through the stats.
        Ok((s, stats))
    })?;
    let _ = ingest_s;
    let (ingest_t, stats) = stats;
    let ingest = mbps(total, ingest_t.as_secs_f64());
    let repo = repo.ok_or("no repository")?;

    // 5. Repository restore (cold cache) on `threads` threads into a sink, checking the SHA-256.
    let (restore_s, ()) = best(a.repeat, || {
        drop_cache_tree(&repo_dir)?;
        let reader = repo.open_backup(&repo.list_backups()?.committed[0])?;
        let file = reader.open_file("bench-flat.vmdk")?;
        let got = file.copy_to(&mut std::io::sink(), a.threads, &mut |_| {})?;
        if got != sha_file {
            return Err("restored data differs".into());
        }
        Ok(())
    })?;
    let restore = mbps(total, restore_s);

    let ncores = std::thread::available_parallelism().map_or(1, usize::from);
    let cores = ncores as f64;
    let limit = (sha * cores).min(zstd * cores).min(write);
    // What ingest could reach if it were purely CPU-bound: every non-zero byte is hashed and
    // compressed, zero chunks cost nothing.
    let nz_share = nonzero_bytes as f64 / total as f64;
    let cpu_ceiling = cores / (nz_share * (1.0 / sha + 1.0 / zstd_nz));
    println!("sha256 (1 core)    {sha:8.0} MB/s");
    println!(
        "zstd -{} (1 core)   {zstd:8.0} MB/s  (non-zero chunks only: {zstd_nz:.0} MB/s; compresses to {:.1} %)",
        a.level,
        100.0 * compressed as f64 / total as f64
    );
    println!("file write+fsync   {write:8.0} MB/s");
    println!("file read (cold)   {read:8.0} MB/s");
    println!(
        "repo ingest          {ingest:6.0} MB/s  ({} threads on {ncores} cores; {} new chunks, {} zero, {:.2} GiB stored)",
        a.threads,
        stats.chunks_new,
        stats.chunks_zero,
        stats.bytes_written as f64 / (1u64 << 30) as f64
    );
    println!(
        "repo restore         {restore:6.0} MB/s  ({} threads; cold cache, decompress + verify every chunk)",
        a.threads
    );
    println!(
        "limit = min(sha×{c}, zstd×{c}, write) = {limit:.0} MB/s",
        c = ncores
    );
    println!(
        "ratio ingest/limit {:8.2}  (target >= 0.80)",
        ingest / limit
    );
    println!(
        "cpu ceiling          {cpu_ceiling:6.0} MB/s  ({c} cores / (non-zero share × (1/sha + 1/zstd on non-zero chunks)); ingest reaches {:.2} of it)",
        ingest / cpu_ceiling,
        c = ncores
    );
    std::fs::remove_dir_all(&repo_dir)?;
    Ok(())
}

/// One backup of the image through the repository API, chunks inserted on `threads` threads.
fn ingest(
    repo: &Repository,
    chunks: &[&[u8]],
    total: u64,
    sha_file: Sha256,
    threads: usize,
) -> R<vbm_repo::WriterStats> {
    let w = repo.start_backup(&VmKey::new("bench")?, jiff::Timestamp::now())?;
    let index = w.new_index(FileName::new("disk-2000")?, total)?;
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| -> R<()> {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<(), vbm_repo::Error> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(c) = chunks.get(i) else {
                            return Ok(());
                        };
                        let r = w.insert_chunk(c)?;
                        index.set(i as u64, r.digest)?;
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "ingest thread panicked")??;
        }
        Ok(())
    })?;
    let summary = w.finish_index(index)?;
    let stats = w.stats();
    w.commit(Manifest {
        format_version: 0,
        job_id: "bench".into(),
        vm_name: "bench".into(),
        vm_key: VmKey::new("bench")?,
        vm_instance_uuid: None,
        vm_folder: None,
        started: jiff::Timestamp::now(),
        finished: jiff::Timestamp::now(),
        vcenter: "-".into(),
        vcenter_uuid: None,
        snapshot: "-".into(),
        mode: BackupMode::Full,
        parent: None,
        files: vec![ManifestFile {
            path: "bench-flat.vmdk".into(),
            size_bytes: total,
            sha256: sha_file,
            kind: FileKind::Disk,
            storage: summary.storage(),
        }],
        disks: vec![],
        bytes_read: total,
        bytes_written: 0,
        chunks_new: 0,
        chunks_reused: 0,
        warnings: vec![],
        vbm_version: env!("CARGO_PKG_VERSION").into(),
    })?;
    Ok(stats)
}
