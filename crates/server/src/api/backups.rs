//! `/api/v1/backups`: the catalog with manifests, verify and restore.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Caller, Permission};
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiPath, ApiQuery, Pagination, cursor};
use crate::AppState;
use crate::backend::RestoreTarget;
use crate::db::{BackupFilter, BackupRecord};
use crate::ids::{BackupId, InstanceUuid, JobId};
use crate::run::{NewRun, Run, RunKind, Trigger};
use crate::vcenter::FieldError;

/// A page of backups.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackupList {
    /// Items, newest first, each with its manifest.
    pub items: Vec<BackupRecord>,
    /// Cursor of the next page.
    pub next_cursor: Option<String>,
}

/// Query of `GET /backups`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only backups made by this job.
    pub job_id: Option<JobId>,
    /// Only backups of this VM.
    pub instance_uuid: Option<InstanceUuid>,
    /// Only backups of VMs with exactly this name.
    pub vm: Option<String>,
    /// Items per page, 1-500.
    pub limit: Option<u32>,
    /// Cursor.
    pub cursor: Option<String>,
}

/// Body of `POST /backups/{id}/restore`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Where to.
    pub to: RestoreTarget,
}

/// Lists completed backups with their manifests.
#[utoipa::path(get, path = "/api/v1/backups", tag = "backups", params(ListQuery),
    responses((status = 200, body = BackupList), (status = 400, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<BackupList>, ApiError> {
    caller.require(Permission::Read)?;
    let page = Pagination {
        limit: q.limit,
        cursor: q.cursor,
    }
    .page()?;
    if q.vm.as_ref().is_some_and(|v| v.len() > 512) {
        return Err(ApiError::bad_request("vm must be at most 512 bytes"));
    }
    let filter = BackupFilter {
        job_id: q.job_id.map(|j| j.to_string()),
        instance_uuid: q.instance_uuid.map(|u| u.to_string()),
        vm_name: q.vm,
    };
    let rows = state.ctx().db.backup_list(filter, page).await?;
    Ok(Json(BackupList {
        items: rows.items,
        next_cursor: cursor(rows.next),
    }))
}

fn backup_id(raw: &str) -> Result<BackupId, ApiError> {
    BackupId::parse(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// One backup with its manifest.
#[utoipa::path(get, path = "/api/v1/backups/{id}", tag = "backups", params(("id" = String, Path)),
    responses((status = 200, body = BackupRecord), (status = 400, body = Problem), (status = 404, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<BackupRecord>, ApiError> {
    caller.require(Permission::Read)?;
    Ok(Json(state.ctx().db.backup_get(backup_id(&id)?).await?))
}

/// Starts a full verify of a backup (every chunk decoded and checked, every file's SHA-256, and
/// the disk sizes against the vCenter it came from); follow it as a run. Corrupt chunks are
/// quarantined; the verdict of this backup and of every other backup sharing damaged data is
/// recorded in the catalog (`verify_ok`, `verified_at`, `verify_problems`) and the repository.
#[utoipa::path(post, path = "/api/v1/backups/{id}/verify", tag = "backups", params(("id" = String, Path)),
    responses((status = 202, body = Run), (status = 400, body = Problem), (status = 404, body = Problem), (status = 507, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Run>), ApiError> {
    caller.require(Permission::Operate)?;
    let id = backup_id(&id)?;
    state.ctx().db.backup_get(id.clone()).await?;
    let mut run = NewRun::queued(RunKind::Verify, None, Trigger::Manual);
    run.params = serde_json::json!({ "backup_id": id });
    Ok((
        StatusCode::ACCEPTED,
        Json(state.runner().submit(run).await?),
    ))
}

/// Starts a restore of a backup; follow it as a run. Targets: `directory` (files on the
/// server), `new_vm` (upload and register in a vCenter), `in_place` (over the original VM,
/// found by instance UUID; needs `confirm: true`). Every restored file is checked against the
/// manifest's SHA-256.
#[utoipa::path(post, path = "/api/v1/backups/{id}/restore", tag = "backups", params(("id" = String, Path)), request_body = RestoreRequest,
    responses((status = 202, body = Run), (status = 400, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem), (status = 507, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn restore(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<RestoreRequest>,
) -> Result<(StatusCode, Json<Run>), ApiError> {
    caller.require(Permission::Operate)?;
    let id = backup_id(&id)?;
    match &req.to {
        RestoreTarget::Directory { path } => {
            let p = std::path::Path::new(path);
            if !p.is_absolute()
                || path.len() > 4096
                || p.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(ApiError::invalid(vec![FieldError::new(
                    "to.path",
                    "must be an absolute path without '..'",
                )]));
            }
        }
        RestoreTarget::NewVm {
            vcenter_id,
            name,
            datastore,
            ..
        } => {
            state.ctx().db.vcenter_get(vcenter_id.clone()).await?;
            let mut errors = Vec::new();
            if name.is_empty() || name.chars().count() > 80 || name.chars().any(char::is_control) {
                errors.push(FieldError::new(
                    "to.name",
                    "must be 1-80 characters without control characters",
                ));
            }
            if datastore.is_empty() || datastore.len() > 256 {
                errors.push(FieldError::new("to.datastore", "must be 1-256 characters"));
            }
            if !errors.is_empty() {
                return Err(ApiError::invalid(errors));
            }
        }
        RestoreTarget::InPlace {
            vcenter_id,
            confirm,
            ..
        } => {
            if !confirm {
                return Err(ApiError::invalid(vec![FieldError::new(
                    "to.confirm",
                    "must be true: an in-place restore powers the VM off and overwrites its disks and configuration",
                )]));
            }
            match vcenter_id {
                Some(vc) => {
                    state.ctx().db.vcenter_get(vc.clone()).await?;
                }
                None => {
                    let backup = state.ctx().db.backup_get(id.clone()).await?;
                    if state
                        .ctx()
                        .db
                        .vcenter_by_name(backup.vcenter.clone())
                        .await?
                        .is_none()
                    {
                        return Err(ApiError::invalid(vec![FieldError::new(
                            "to.vcenter_id",
                            format!(
                                "the backup came from vCenter {:?}, which vbm no longer knows: name the vCenter",
                                backup.vcenter
                            ),
                        )]));
                    }
                }
            }
        }
    }
    state.ctx().db.backup_get(id.clone()).await?;
    let mut run = NewRun::queued(RunKind::Restore, None, Trigger::Manual);
    run.params = serde_json::json!({ "backup_id": id, "restore": req.to });
    Ok((
        StatusCode::ACCEPTED,
        Json(state.runner().submit(run).await?),
    ))
}
