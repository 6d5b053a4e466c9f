//! `vbm repo init` and `vbm repo stats`: create a repository (optionally encrypted, with its key
//! file written outside it) and show its figures.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde::Serialize;
use vbm_repo::{InitOptions, RepoKey, RepoStats, Repository};

use crate::output;
use crate::repo_args::RepoArgs;

#[cfg(test)]
pub(crate) mod test_support;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Create a repository in an empty (or new) directory.
    Init(InitArgs),
    /// Show a repository's size, backups and deduplication.
    Stats(StatsArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct InitArgs {
    /// The directory to create the repository in.
    dir: PathBuf,

    /// Encrypt chunks and blobs with AES-256-GCM under a new random key.
    #[arg(long)]
    encrypt: bool,

    /// Where to write the new key (must be outside the repository). Default:
    /// `$VBM_KEY_DIR/<repo-id>.key`, else `$XDG_CONFIG_HOME/vbm/keys/`, else `~/.config/vbm/keys/`.
    #[arg(long, value_name = "PATH", requires = "encrypt")]
    key_file: Option<PathBuf>,

    /// Chunk size (power of two, 4K to 64M), e.g. `4M` or `4194304`.
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    chunk_size: u32,

    /// zstd compression level (0 = store uncompressed, 1-22).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(0..=22))]
    compression_level: i32,

    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct StatsArgs {
    #[command(flatten)]
    repo: RepoArgs,

    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

/// Parses `4194304`, `4M`, `4MiB`, `64K`.
fn parse_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (num, mult) = match t.trim_end_matches(['B', 'b', 'i']).char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1024u64),
        Some((i, 'M' | 'm')) => (&t[..i], 1024 * 1024),
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a size: {s:?}"))?;
    u32::try_from(n * mult).map_err(|_| format!("size too large: {s:?}"))
}

pub(crate) fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Init(args) => init(args),
        Command::Stats(args) => stats(args),
    }
}

/// The directory must be new, empty, or hold only `lost+found` (a fresh mount point).
fn check_empty(dir: &Path) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lost+found")
        .collect();
    if !names.is_empty() {
        bail!(
            "{} is not empty ({}); a repository needs an empty directory",
            dir.display(),
            names.join(", ")
        );
    }
    Ok(())
}

/// The absolute form of `p` as far as it exists (for the "key inside repository" check).
fn absolute(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let mut existing = abs.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent.to_owned();
            }
            _ => return abs,
        }
    }
    let mut out = existing.canonicalize().unwrap_or(existing);
    for name in rest.into_iter().rev() {
        out.push(name);
    }
    out
}

#[derive(Debug, Serialize)]
struct InitJson {
    id: String,
    path: PathBuf,
    chunk_size: u32,
    compression_level: i32,
    encrypted: bool,
    key_file: Option<PathBuf>,
}

fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    check_empty(&args.dir)?;
    let id = Repository::new_id();
    let mut key_file = None;
    let key = if args.encrypt {
        let path = match &args.key_file {
            Some(p) => p.clone(),
            None => vbm_repo::default_key_path(&id, |k| std::env::var_os(k)).context(
                "no place for the key file: set VBM_KEY_DIR or HOME, or pass --key-file",
            )?,
        };
        if absolute(&path).starts_with(absolute(&args.dir)) {
            bail!(
                "the key file {} must not be inside the repository: whoever can read the \
                 repository must not find its key there",
                path.display()
            );
        }
        let key = RepoKey::generate()?;
        // The key is durable before the repository that needs it exists.
        key.write_new(&path)
            .with_context(|| format!("writing the key file {}", path.display()))?;
        key_file = Some(path);
        Some(key)
    } else {
        None
    };
    let options = InitOptions {
        chunk_size: args.chunk_size,
        compression_level: args.compression_level,
        key,
        id: Some(id.clone()),
        ..InitOptions::default()
    };
    let repo = match Repository::init_local(&args.dir, &options) {
        Ok(r) => r,
        Err(e) => {
            if let Some(p) = &key_file {
                let _ = std::fs::remove_file(p);
            }
            return Err(e)
                .with_context(|| format!("creating a repository in {}", args.dir.display()));
        }
    };
    if args.json {
        output::json(&InitJson {
            id: repo.id().to_owned(),
            path: absolute(&args.dir),
            chunk_size: repo.chunk_size(),
            compression_level: repo.config().compression_level,
            encrypted: repo.is_encrypted(),
            key_file,
        })?;
    } else {
        output::line(&format!(
            "created repository {} in {} (chunks of {}, zstd level {}{})",
            repo.id(),
            args.dir.display(),
            output::bytes(u64::from(repo.chunk_size())),
            repo.config().compression_level,
            if repo.is_encrypted() {
                ", encrypted with AES-256-GCM"
            } else {
                ""
            }
        ))?;
        if let Some(p) = key_file {
            output::line(&format!("key file: {}", p.display()))?;
            output::line(
                "BACK UP THIS KEY FILE NOW, somewhere other than the repository: without it \
                 no backup in this repository can be restored.",
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn stats(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let repo = args.repo.open()?;
    let stats = RepoStats::compute(&repo)?;
    if args.json {
        output::json(&stats)?;
        return Ok(ExitCode::SUCCESS);
    }
    let ratio = stats
        .dedup_ratio
        .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
    for (k, v) in [
        ("repository", stats.id.clone()),
        ("encrypted", stats.encrypted.to_string()),
        ("chunk size", output::bytes(u64::from(stats.chunk_size))),
        (
            "compression",
            format!("zstd level {}", stats.compression_level),
        ),
        ("VMs", stats.vms.to_string()),
        ("backups", stats.backups.to_string()),
        ("partial backups", stats.partial_backups.to_string()),
        ("unreadable backups", stats.unreadable_backups.to_string()),
        ("chunks", stats.chunks.to_string()),
        ("stored", output::bytes(stats.chunk_bytes)),
        ("quarantined chunks", stats.bad_chunks.to_string()),
        ("logical (all backups)", output::bytes(stats.logical_bytes)),
        ("dedup ratio", ratio),
    ] {
        output::line(&format!("{k:<22} {v}"))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init_args(dir: &Path) -> InitArgs {
        InitArgs {
            dir: dir.to_owned(),
            encrypt: false,
            key_file: None,
            chunk_size: 65536,
            compression_level: 3,
            json: false,
        }
    }

    #[test]
    fn init_plain_and_encrypted_and_stats() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("r");
        init(init_args(&dir)).unwrap();
        assert!(dir.join("repo.json").exists());
        let err = init(init_args(&dir)).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        stats(StatsArgs {
            repo: test_support::repo_args(&dir),
            json: true,
        })
        .unwrap();

        let enc = tmp.path().join("e");
        let inside = InitArgs {
            encrypt: true,
            key_file: Some(enc.join("k.key")),
            ..init_args(&enc)
        };
        let err = init(inside).unwrap_err();
        assert!(
            err.to_string()
                .contains("must not be inside the repository"),
            "{err}"
        );
        let key = tmp.path().join("keys/e.key");
        init(InitArgs {
            encrypt: true,
            key_file: Some(key.clone()),
            ..init_args(&enc)
        })
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let repo = Repository::open_local(&enc, Some(&key)).unwrap();
        assert!(repo.is_encrypted());
        let err = RepoArgs {
            repo: enc.clone(),
            key_file: Some(tmp.path().join("none.key")),
        }
        .open()
        .unwrap_err();
        assert!(format!("{err:#}").contains("none.key"), "{err:#}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("lots").is_err());
    }
}
