//! The repository flags of commands that read or write backups: `--repo DIR [--key-file PATH]`.

use std::path::PathBuf;

use anyhow::Context;
use vbm_repo::Repository;

/// Where the repository is and how to unlock it.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RepoArgs {
    /// The backup repository (a directory made by `vbm repo init`).
    #[arg(long, value_name = "DIR")]
    pub(crate) repo: PathBuf,

    /// Key file of an encrypted repository (default: the one `vbm repo init --encrypt` wrote).
    #[arg(long, value_name = "PATH", env = "VBM_REPO_KEY_FILE")]
    pub(crate) key_file: Option<PathBuf>,
}

impl RepoArgs {
    /// Opens the repository.
    ///
    /// # Errors
    /// When it does not exist, is not a repository, or the key is missing or wrong.
    pub(crate) fn open(&self) -> anyhow::Result<Repository> {
        Repository::open_local(&self.repo, self.key_file.as_deref())
            .with_context(|| format!("opening repository {}", self.repo.display()))
    }
}
