//! Authentication: one extractor, [`Caller`], applied as a middleware to every route except
//! `/healthz` (I8). A key comes in `X-API-Key` (or `Authorization: Bearer`, for Prometheus);
//! keys in query strings are never looked at. Roles slot in through [`Caller::require`]: today
//! every key is an admin key; the security issue adds roles without touching handlers.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;
use crate::AppState;
use crate::crypto::{API_KEY_PREFIX, hash_api_key};
use crate::ids::ApiKeyId;

/// What a caller may do (checked in one place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read anything.
    Read,
    /// Run, cancel, restore, verify.
    Operate,
    /// Change jobs, schedules, vCenters, keys.
    Administer,
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key used.
    pub key_id: ApiKeyId,
    /// Its label.
    pub key_name: String,
    /// Its role.
    pub role: String,
}

impl Caller {
    /// Checks a permission.
    ///
    /// # Errors
    /// 403 when the caller's role does not allow it.
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        let allowed = match self.role.as_str() {
            "admin" => true,
            "operator" => permission != Permission::Administer,
            "viewer" => permission == Permission::Read,
            _ => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("role {} may not do this", self.role),
            ))
        }
    }
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or invalid API key: send it in the X-API-Key header (create one with `vbm apikey create`)",
    )
}

fn presented_key(parts: &Parts) -> Option<&str> {
    if let Some(v) = parts.headers.get("x-api-key") {
        return v.to_str().ok();
    }
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(caller) = parts.extensions.get::<Self>() {
            return Ok(caller.clone());
        }
        let key = presented_key(parts).ok_or_else(unauthorized)?;
        // Exact match only: no trimming, no case folding (I8).
        if !key.starts_with(API_KEY_PREFIX) || key.len() != API_KEY_PREFIX.len() + 64 {
            return Err(unauthorized());
        }
        let record = state
            .ctx()
            .db
            .api_key_lookup(hash_api_key(key))
            .await
            .map_err(ApiError::from)?
            .ok_or_else(unauthorized)?;
        let caller = Self {
            key_id: record.id,
            key_name: record.name,
            role: record.role,
        };
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

/// The middleware that authenticates every request of the protected router.
pub(crate) async fn require_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    Caller::from_request_parts(&mut parts, &state).await?;
    Ok(next.run(Request::from_parts(parts, body)).await)
}
