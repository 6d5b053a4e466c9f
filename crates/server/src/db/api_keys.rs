//! `api_keys`: only SHA-256 hashes of keys are stored (I11); the role column is where the
//! role model of the security issue slots in (today every key is `admin`).

use jiff::Timestamp;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Db, Error, Result, ts};
use crate::clock::{from_millis, to_millis};
use crate::ids::ApiKeyId;

/// An API key as shown to admins (never the key itself).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiKeyRecord {
    /// Id.
    pub id: ApiKeyId,
    /// Label.
    pub name: String,
    /// Role (`admin` until roles arrive).
    pub role: String,
    /// Created.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Revoked.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<Timestamp>,
}

impl Db {
    /// Stores a new key's hash.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn api_key_create(
        &self,
        name: String,
        hash: [u8; 32],
        now: Timestamp,
    ) -> Result<ApiKeyRecord> {
        let id = ApiKeyId::generate();
        self.write(move |c| {
            c.execute(
                "INSERT INTO api_keys (id, name, hash, role, created_at) VALUES (?1, ?2, ?3, 'admin', ?4)",
                params![id.as_str(), name, hash.to_vec(), to_millis(now)],
            )?;
            Ok(ApiKeyRecord { id, name, role: "admin".into(), created_at: now, revoked_at: None })
        })
        .await
    }

    /// The live (not revoked) key with this hash.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn api_key_lookup(&self, hash: [u8; 32]) -> Result<Option<ApiKeyRecord>> {
        self.read(move |c| {
            let row = c
                .query_row(
                    "SELECT id, name, role, created_at, revoked_at FROM api_keys WHERE hash = ?1 AND revoked_at IS NULL",
                    [hash.to_vec()],
                    |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            row.map(|(id, name, role, created, revoked)| {
                Ok(ApiKeyRecord {
                    id: ApiKeyId::parse(&id).map_err(|e| Error::Invalid(e.to_string()))?,
                    name,
                    role,
                    created_at: from_millis(created),
                    revoked_at: ts(revoked),
                })
            })
            .transpose()
        })
        .await
    }

    /// Revokes a key.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub async fn api_key_revoke(&self, id: ApiKeyId, now: Timestamp) -> Result<()> {
        self.write(move |c| {
            let n = c.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id.as_str(), to_millis(now)],
            )?;
            if n == 0 {
                return Err(Error::NotFound {
                    what: "API key",
                    id: id.to_string(),
                });
            }
            Ok(())
        })
        .await
    }
}
