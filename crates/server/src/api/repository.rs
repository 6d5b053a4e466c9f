//! `/api/v1/repository`: usage, garbage collection, catalog rebuild (R4).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{Caller, Permission};
use super::error::{ApiError, Problem};
use crate::AppState;
use crate::backend::RepoStats;
use crate::run::{NewRun, Run, RunKind, Trigger};

/// Result of a catalog rebuild.
#[derive(Debug, Serialize, ToSchema)]
pub struct CatalogSync {
    /// Restore points found in the repository but missing from the catalog.
    pub added: usize,
    /// Catalog rows whose manifest is gone.
    pub removed: usize,
}

/// Repository usage (also exported as metrics): restore points, chunks, quarantined chunks,
/// bytes used, and free/total bytes of its file system.
#[utoipa::path(get, path = "/api/v1/repository/stats", tag = "repository",
    responses((status = 200, body = RepoStats), (status = 503, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn stats(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<RepoStats>, ApiError> {
    caller.require(Permission::Read)?;
    let stats = state.ctx().backend.repo_stats().await?;
    state
        .ctx()
        .metrics
        .set_repository(stats.used_bytes, stats.free_bytes);
    Ok(Json(stats))
}

/// Starts a garbage collection (mark every chunk a backup references, delete unreferenced
/// chunks older than the grace period); follow it as a run. Refused while the database cannot
/// be written.
#[utoipa::path(post, path = "/api/v1/repository/gc", tag = "repository",
    responses((status = 202, body = Run), (status = 503, body = Problem), (status = 507, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn gc(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<(StatusCode, Json<Run>), ApiError> {
    caller.require(Permission::Administer)?;
    if let Some(m) = state.ctx().db.maintenance() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("GC refused: {m}"),
        ));
    }
    let run = state
        .runner()
        .submit(NewRun::queued(RunKind::Gc, None, Trigger::Manual))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}

/// Rebuilds the catalog from the repository's manifests (disaster recovery of the server, R4):
/// adds restore points it lacks, removes rows whose manifest is gone (never rows whose manifest
/// is only unreadable), takes newer verify results.
#[utoipa::path(post, path = "/api/v1/repository/rebuild-catalog", tag = "repository",
    responses((status = 200, body = CatalogSync), (status = 503, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn rebuild_catalog(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<CatalogSync>, ApiError> {
    caller.require(Permission::Administer)?;
    let (added, removed) = state.sync_catalog().await?;
    Ok(Json(CatalogSync { added, removed }))
}
