//! `/api/v1/jobs`: jobs with their schedule state, last and active run, live progress, run-now,
//! cancel and retention preview.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Caller, Permission};
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiPath, ApiQuery, Pagination, cursor};
use crate::AppState;
use crate::backend::{Progress, RetentionRequest};
use crate::db::JobRow;
use crate::db::{Page, RunFilter};
use crate::ids::JobId;
use crate::jobs::protection::{self, Protection};
use crate::jobs::retention::RetentionPlan;
use crate::jobs::{Job, JobSpec};
use crate::run::{NewRun, Run, RunKind, Trigger};
use crate::scheduler::CronSchedule;

/// A job as the API shows it: definition, schedule state, last and active run, live progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    /// The job.
    #[serde(flatten)]
    pub job: Job,
    /// Next scheduled run (UTC), as stored: survives restarts unchanged.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_run: Option<Timestamp>,
    /// When the schedule last fired.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_fired: Option<Timestamp>,
    /// `idle`, `queued` or `running`.
    pub status: String,
    /// The queued or running run.
    pub active_run: Option<Run>,
    /// The most recent finished run.
    pub last_run: Option<Run>,
    /// Live progress of the running run, per VM.
    pub progress: Vec<Progress>,
    /// The VMs the job protects and whether each has a successful backup within the RPO (R3).
    pub protection: Protection,
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    /// Items.
    pub items: Vec<JobView>,
    /// Cursor of the next page.
    pub next_cursor: Option<String>,
}

/// Query of `GET /jobs`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Items per page, 1-500.
    pub limit: Option<u32>,
    /// Cursor.
    pub cursor: Option<String>,
}

/// Retention preview of one VM of a job.
#[derive(Debug, Serialize, ToSchema)]
pub struct VmRetention {
    /// VM instance UUID.
    pub instance_uuid: String,
    /// VM name.
    pub vm_name: String,
    /// What the policy keeps and removes now.
    pub plan: RetentionPlan,
}

/// `GET /jobs/{id}/retention` and `POST /jobs/{id}/retention`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetentionPreview {
    /// Retention runs after each successful backup: this is the next one.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_purge: Option<Timestamp>,
    /// Per VM.
    pub vms: Vec<VmRetention>,
    /// Restore points deleted by this request (`POST` only; empty for the preview).
    pub removed: Vec<crate::ids::BackupId>,
}

/// Body of `POST /jobs/{id}/retention`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionApply {
    /// Apply plans that a guard blocked (more than half of a VM's backups at once: check the
    /// clock and the policy first).
    #[serde(default)]
    pub force: bool,
}

fn next_run_for(spec: &JobSpec, now: Timestamp) -> Option<Timestamp> {
    spec.schedule
        .as_ref()
        .and_then(|s| CronSchedule::parse(&s.cron, &s.timezone).ok())
        .and_then(|c| c.next_after(now))
}

async fn view(state: &AppState, row: JobRow) -> Result<JobView, ApiError> {
    let db = &state.ctx().db;
    let recent = db
        .run_list(
            RunFilter {
                job_id: Some(row.job.id.clone()),
                status: None,
            },
            Page {
                limit: 5,
                after: None,
            },
        )
        .await?;
    let active_run = recent
        .items
        .iter()
        .find(|r| !r.status.is_terminal())
        .cloned();
    let last_run = recent
        .items
        .iter()
        .find(|r| r.status.is_terminal())
        .cloned();
    let status = active_run
        .as_ref()
        .map_or("idle", |r| r.status.as_str())
        .to_owned();
    let progress = active_run
        .as_ref()
        .map(|r| state.runner().progress(&r.id))
        .unwrap_or_default();
    let seen = db.job_seen_vms(row.job.id.clone()).await?;
    let protection = protection::assess(&row.job, seen, state.ctx().clock.now());
    Ok(JobView {
        job: row.job,
        next_run: row.next_run,
        last_fired: row.last_fired,
        status,
        active_run,
        last_run,
        progress,
        protection,
    })
}

async fn check_sources(state: &AppState, spec: &JobSpec) -> Result<(), ApiError> {
    spec.validate().map_err(ApiError::invalid)?;
    for (i, s) in spec.sources.iter().enumerate() {
        if let Err(e) = state.ctx().db.vcenter_get(s.vcenter_id.clone()).await {
            return Err(match e {
                crate::db::Error::NotFound { .. } => {
                    ApiError::invalid(vec![crate::vcenter::FieldError::new(
                        format!("sources[{i}].vcenter_id"),
                        format!("no vCenter with id {}", s.vcenter_id),
                    )])
                }
                other => other.into(),
            });
        }
    }
    Ok(())
}

/// Lists jobs across all vCenters (the unified dashboard).
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, body = JobList), (status = 400, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<JobList>, ApiError> {
    caller.require(Permission::Read)?;
    let page = Pagination {
        limit: q.limit,
        cursor: q.cursor,
    }
    .page()?;
    let rows = state.ctx().db.job_list(page).await?;
    let mut items = Vec::with_capacity(rows.items.len());
    for row in rows.items {
        items.push(view(&state, row).await?);
    }
    Ok(Json(JobList {
        items,
        next_cursor: cursor(rows.next),
    }))
}

/// Creates a job.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", request_body = JobSpec,
    responses((status = 201, body = JobView), (status = 409, body = Problem), (status = 422, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(spec): ApiJson<JobSpec>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    caller.require(Permission::Administer)?;
    check_sources(&state, &spec).await?;
    let now = state.ctx().clock.now();
    let next = next_run_for(&spec, now);
    let row = state.ctx().db.job_create(spec, next, now).await?;
    tracing::info!(job = %row.job.id, name = %row.job.spec.name, key = %caller.key_name, "job created");
    state.wake_scheduler();
    Ok((StatusCode::CREATED, Json(view(&state, row).await?)))
}

/// One job: definition, status and live progress.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = JobView), (status = 400, body = Problem), (status = 404, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<JobId>,
) -> Result<Json<JobView>, ApiError> {
    caller.require(Permission::Read)?;
    let row = state.ctx().db.job_get(id).await?;
    Ok(Json(view(&state, row).await?))
}

/// Replaces a job's definition. The next run time changes only if the schedule changed.
#[utoipa::path(put, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path)), request_body = JobSpec,
    responses((status = 200, body = JobView), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<JobId>,
    ApiJson(spec): ApiJson<JobSpec>,
) -> Result<Json<JobView>, ApiError> {
    caller.require(Permission::Administer)?;
    check_sources(&state, &spec).await?;
    let now = state.ctx().clock.now();
    let next = next_run_for(&spec, now);
    let row = state.ctx().db.job_update(id, spec, next, now).await?;
    state.wake_scheduler();
    Ok(Json(view(&state, row).await?))
}

/// Deletes a job (its run history and backups stay).
#[utoipa::path(delete, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<JobId>,
) -> Result<StatusCode, ApiError> {
    caller.require(Permission::Administer)?;
    state.ctx().db.job_delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Runs a job now. 409 when it already has an active run (L2).
#[utoipa::path(post, path = "/api/v1/jobs/{id}/run", tag = "jobs", params(("id" = String, Path)),
    responses((status = 202, body = Run), (status = 404, body = Problem), (status = 409, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn run_now(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<JobId>,
) -> Result<(StatusCode, Json<Run>), ApiError> {
    caller.require(Permission::Operate)?;
    let run = state
        .runner()
        .submit(NewRun::queued(RunKind::Backup, Some(id), Trigger::Manual))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}

/// Cancels the job's active run.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = Run), (status = 404, body = Problem), (status = 409, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<JobId>,
) -> Result<Json<Run>, ApiError> {
    caller.require(Permission::Operate)?;
    let db = &state.ctx().db;
    db.job_get(id.clone()).await?;
    let active = db.job_active_run(id).await?.ok_or_else(|| {
        ApiError::new(StatusCode::CONFLICT, "the job has no active run to cancel")
    })?;
    let reason = format!("cancelled by API key {}", caller.key_name);
    Ok(Json(state.runner().cancel(&active, &reason).await?))
}

/// Plans (and with `apply`) retention for every VM the job has backups of.
async fn retention_for_job(
    state: &AppState,
    id: JobId,
    apply: bool,
    force: bool,
) -> Result<RetentionPreview, ApiError> {
    let ctx = state.ctx();
    let row = ctx.db.job_get(id.clone()).await?;
    if apply {
        if let Some(m) = ctx.db.maintenance() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("retention refused: {m}"),
            ));
        }
        // S-D3: nothing is deleted while the database cannot record it.
        ctx.db.probe_writable().await?;
    }
    let now = ctx.clock.now();
    let mut vms = Vec::new();
    let mut removed = Vec::new();
    for (uuid, name) in ctx.db.backup_vms_of_job(id.to_string()).await? {
        let Ok(instance_uuid) = crate::ids::InstanceUuid::parse(&uuid) else {
            continue;
        };
        let outcome = ctx
            .backend
            .retention(RetentionRequest {
                job_id: id.clone(),
                instance_uuid,
                policy: row.job.spec.retention.clone(),
                now,
                apply,
                force,
            })
            .await?;
        if !outcome.removed.is_empty() {
            ctx.db.backup_forget(outcome.removed.clone()).await?;
            tracing::info!(job = %id, vm = %name, removed = outcome.removed.len(), "retention applied on request");
        }
        removed.extend(outcome.removed);
        vms.push(VmRetention {
            instance_uuid: uuid,
            vm_name: name,
            plan: outcome.plan,
        });
    }
    Ok(RetentionPreview {
        next_purge: row.next_run,
        vms,
        removed,
    })
}

/// What the job's retention policy keeps and removes, per VM, why, and when the next purge
/// happens (retention runs after each successful backup).
#[utoipa::path(get, path = "/api/v1/jobs/{id}/retention", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = RetentionPreview), (status = 404, body = Problem), (status = 503, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn retention_preview(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<JobId>,
) -> Result<Json<RetentionPreview>, ApiError> {
    caller.require(Permission::Read)?;
    Ok(Json(retention_for_job(&state, id, false, false).await?))
}

/// Applies the job's retention now, for every VM; with `force`, also plans a guard blocked.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/retention", tag = "jobs", params(("id" = String, Path)), request_body = RetentionApply,
    responses((status = 200, body = RetentionPreview), (status = 404, body = Problem), (status = 503, body = Problem), (status = 507, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn retention_apply(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<JobId>,
    ApiJson(req): ApiJson<RetentionApply>,
) -> Result<Json<RetentionPreview>, ApiError> {
    caller.require(Permission::Administer)?;
    Ok(Json(retention_for_job(&state, id, true, req.force).await?))
}
