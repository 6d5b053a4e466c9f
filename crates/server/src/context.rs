//! What every part of the service shares: the database, the backend, the clock, the master key
//! and the metrics.

use std::sync::Arc;

use crate::backend::Backend;
use crate::clock::Clock;
use crate::config::Limits;
use crate::crypto::{MasterKey, Secret};
use crate::db::Db;
use crate::error::Result;
use crate::ids::VcenterId;
use crate::metrics::Metrics;
use crate::vcenter::{Vcenter, VcenterTarget, password_env_name};

/// Shared service parts; cheap to clone.
#[derive(Debug, Clone)]
pub struct Context {
    /// State.
    pub db: Db,
    /// Engine, vCenter, repository.
    pub backend: Arc<dyn Backend>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Seals vCenter passwords.
    pub key: MasterKey,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Concurrency limits.
    pub limits: Limits,
}

/// Where a vCenter's password comes from: `VCENTER_PASSWORD_<NAME>`, then the stored one, then
/// `VCENTER_PASSWORD`.
pub(crate) fn password_source(name: &str, stored: bool) -> &'static str {
    if std::env::var_os(password_env_name(name)).is_some() {
        "env"
    } else if stored {
        "stored"
    } else if std::env::var_os("VCENTER_PASSWORD").is_some() {
        "env"
    } else {
        "none"
    }
}

impl Context {
    /// Makes the catalog equal to the repository (R4, F2): adds restore points the catalog
    /// lacks, removes rows whose manifest is gone, takes newer verify results. A repository
    /// that cannot be listed changes nothing. Returns (added, removed).
    ///
    /// # Errors
    /// Backend or database errors.
    pub async fn sync_catalog(&self) -> Result<(usize, usize)> {
        let listing = self.backend.catalog().await?;
        Ok(self.db.backup_sync(listing).await?)
    }

    /// A vCenter as the API shows it.
    ///
    /// # Errors
    /// Not found, database errors.
    pub async fn vcenter(&self, id: VcenterId) -> Result<Vcenter> {
        let row = self.db.vcenter_get(id).await?;
        let mut v = row.vcenter;
        v.password_source = password_source(&v.name, v.password_set).to_owned();
        Ok(v)
    }

    /// Everything needed to connect to a saved vCenter, password decrypted.
    ///
    /// # Errors
    /// Not found; a password that does not decrypt with this master key.
    pub async fn target(&self, id: VcenterId) -> Result<VcenterTarget> {
        let row = self.db.vcenter_get(id).await?;
        let v = row.vcenter;
        let password = match std::env::var(password_env_name(&v.name)) {
            Ok(p) => Some(Secret::new(p)),
            Err(_) => match &row.password_sealed {
                Some(sealed) => Some(self.key.open(sealed, v.id.as_str())?),
                None => std::env::var("VCENTER_PASSWORD").ok().map(Secret::new),
            },
        };
        Ok(VcenterTarget {
            id: v.id,
            name: v.name,
            url: v.url,
            username: v.username,
            password,
            trust: v.trust,
        })
    }
}
