//! `/api/v1/runs`: run history with per-VM results, logs, cancel, and the live event stream (SSE).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};

use super::auth::{Caller, Permission};
use super::error::{ApiError, Problem};
use super::extract::{ApiPath, ApiQuery, Pagination, cursor};
use crate::AppState;
use crate::backend::Progress;
use crate::db::RunFilter;
use crate::ids::{JobId, RunId};
use crate::run::{LogLine, Run, RunStatus, RunVm};
use crate::runner::RunEvent;

/// A run with its per-VM results and live progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunDetail {
    /// The run.
    #[serde(flatten)]
    pub run: Run,
    /// Per-VM results.
    pub vms: Vec<RunVm>,
    /// Live progress while running.
    pub progress: Vec<Progress>,
}

/// A page of runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    /// Items, newest first.
    pub items: Vec<Run>,
    /// Cursor of the next page.
    pub next_cursor: Option<String>,
}

/// A page of log lines.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    /// Lines, oldest first.
    pub items: Vec<LogLine>,
    /// Cursor of the next page.
    pub next_cursor: Option<String>,
}

/// Query of `GET /runs`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only runs of this job.
    pub job_id: Option<JobId>,
    /// Only runs in this state.
    pub status: Option<RunStatus>,
    /// Items per page, 1-500.
    pub limit: Option<u32>,
    /// Cursor.
    pub cursor: Option<String>,
}

/// Query of `GET /runs/{id}/logs`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Lines per page, 1-500.
    pub limit: Option<u32>,
    /// Cursor.
    pub cursor: Option<String>,
}

/// Lists runs, newest first.
#[utoipa::path(get, path = "/api/v1/runs", tag = "runs", params(ListQuery),
    responses((status = 200, body = RunList), (status = 400, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<RunList>, ApiError> {
    caller.require(Permission::Read)?;
    let page = Pagination {
        limit: q.limit,
        cursor: q.cursor,
    }
    .page()?;
    let rows = state
        .ctx()
        .db
        .run_list(
            RunFilter {
                job_id: q.job_id,
                status: q.status,
            },
            page,
        )
        .await?;
    Ok(Json(RunList {
        items: rows.items,
        next_cursor: cursor(rows.next),
    }))
}

/// One run with per-VM results and live progress.
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "runs", params(("id" = String, Path)),
    responses((status = 200, body = RunDetail), (status = 404, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RunId>,
) -> Result<Json<RunDetail>, ApiError> {
    caller.require(Permission::Read)?;
    let db = &state.ctx().db;
    let run = db.run_get(id.clone()).await?;
    let vms = db.run_vms(id.clone()).await?;
    let progress = state.runner().progress(&id);
    Ok(Json(RunDetail { run, vms, progress }))
}

/// A run's log.
#[utoipa::path(get, path = "/api/v1/runs/{id}/logs", tag = "runs", params(("id" = String, Path), LogQuery),
    responses((status = 200, body = LogPage), (status = 404, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RunId>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Json<LogPage>, ApiError> {
    caller.require(Permission::Read)?;
    let page = Pagination {
        limit: q.limit,
        cursor: q.cursor,
    }
    .page()?;
    let db = &state.ctx().db;
    db.run_get(id.clone()).await?;
    let rows = db.run_logs(id, page).await?;
    Ok(Json(LogPage {
        items: rows.items,
        next_cursor: cursor(rows.next),
    }))
}

/// Cancels a queued or running run.
#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", tag = "runs", params(("id" = String, Path)),
    responses((status = 200, body = Run), (status = 404, body = Problem), (status = 409, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RunId>,
) -> Result<Json<Run>, ApiError> {
    caller.require(Permission::Operate)?;
    let reason = format!("cancelled by API key {}", caller.key_name);
    Ok(Json(state.runner().cancel(&id, &reason).await?))
}

fn sse_event(event: &RunEvent) -> Event {
    let name = match event {
        RunEvent::Progress { .. } => "progress",
        RunEvent::Log { .. } => "log",
        RunEvent::Status { .. } => "status",
    };
    Event::default()
        .event(name)
        .data(serde_json::to_string(event).unwrap_or_default())
}

/// Live events of a run (Server-Sent Events: `progress`, `log`, `status`). Starts with the
/// current status; ends after the run's final status.
#[utoipa::path(get, path = "/api/v1/runs/{id}/events", tag = "runs", params(("id" = String, Path)),
    responses((status = 200, content_type = "text/event-stream", body = RunEvent), (status = 404, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn events(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RunId>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    caller.require(Permission::Read)?;
    // Subscribe before reading the status: no event can fall between the two.
    let rx = state.runner().subscribe();
    let run = state.ctx().db.run_get(id.clone()).await?;
    let first = RunEvent::Status {
        run_id: id.clone(),
        status: run.status,
    };
    let done = run.status.is_terminal();
    let head = stream::iter(std::iter::once(Ok(sse_event(&first))));
    let tail = stream::unfold((rx, id, done), |(mut rx, id, done)| async move {
        if done {
            return None;
        }
        loop {
            match rx.recv().await {
                Ok(event) if event.run_id() == &id => {
                    let end =
                        matches!(&event, RunEvent::Status { status, .. } if status.is_terminal());
                    return Some((Ok(sse_event(&event)), (rx, id, end)));
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(head.chain(tail)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
