//! The REST API under `/api/v1`, `/metrics` and `/healthz`. Handlers are thin: extract, call,
//! map. Everything except `/healthz` goes through the API key middleware ([`auth`]).

pub mod auth;
pub mod backups;
pub mod error;
pub mod extract;
pub mod jobs;
pub mod repository;
pub mod runs;
pub mod vcenters;
pub mod vms;

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::AppState;
use auth::Caller;
use error::ApiError;

struct SecurityAddon;

impl Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// The OpenAPI document, generated from the handlers and types.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "vbm API", description = "vSphere Backup Manager REST API. Authenticate with the X-API-Key header (`vbm apikey create`). Errors are application/problem+json."),
    modifiers(&SecurityAddon),
    paths(
        health, metrics, openapi_json,
        vcenters::list, vcenters::create, vcenters::get, vcenters::update, vcenters::delete, vcenters::test_saved, vcenters::test_unsaved,
        jobs::list, jobs::create, jobs::get, jobs::update, jobs::delete, jobs::run_now, jobs::cancel, jobs::retention_preview, jobs::retention_apply,
        runs::list, runs::get, runs::logs, runs::cancel, runs::events,
        vms::list,
        backups::list, backups::get, backups::verify, backups::restore,
        repository::stats, repository::gc, repository::rebuild_catalog,
    ),
    components(schemas(error::Problem, crate::runner::RunEvent))
)]
pub struct ApiDoc;

/// Body of `/healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `maintenance`.
    pub status: &'static str,
    /// vbm version.
    pub version: &'static str,
    /// Why the service is in maintenance mode.
    pub maintenance: Option<String>,
}

/// Liveness and maintenance state; no authentication.
#[utoipa::path(get, path = "/healthz", tag = "service",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub(crate) async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let maintenance = state.ctx().db.maintenance().map(str::to_owned);
    let status = if maintenance.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(Health {
            status: if maintenance.is_some() {
                "maintenance"
            } else {
                "ok"
            },
            version: env!("CARGO_PKG_VERSION"),
            maintenance,
        }),
    )
}

/// Prometheus metrics (text format 0.0.4). Send the key as `X-API-Key` or `Authorization: Bearer`.
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, content_type = "text/plain", body = String), (status = 401, body = error::Problem)), security(("api_key" = [])))]
pub(crate) async fn metrics(State(state): State<AppState>, _caller: Caller) -> Response {
    state.refresh_metrics().await;
    let mut response = state.ctx().metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "service",
    responses((status = 200, content_type = "application/json", body = Object)), security(("api_key" = [])))]
pub(crate) async fn openapi_json(_caller: Caller) -> Response {
    match ApiDoc::openapi().to_json() {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see /api/v1/openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint",
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "handler panicked").into_response()
}

/// The router: a pure function of the state.
pub fn router(state: AppState) -> Router {
    let config = state.config();
    let body_limit = config.http.body_limit_bytes;
    let timeout = Duration::from_secs(config.http.request_timeout_secs);
    let v1 = Router::new()
        .route("/openapi.json", get(openapi_json))
        .route("/vcenters", get(vcenters::list).post(vcenters::create))
        .route("/vcenters/test", post(vcenters::test_unsaved))
        .route(
            "/vcenters/{id}",
            get(vcenters::get)
                .put(vcenters::update)
                .delete(vcenters::delete),
        )
        .route("/vcenters/{id}/test", post(vcenters::test_saved))
        .route("/jobs", get(jobs::list).post(jobs::create))
        .route(
            "/jobs/{id}",
            get(jobs::get).put(jobs::update).delete(jobs::delete),
        )
        .route("/jobs/{id}/run", post(jobs::run_now))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route(
            "/jobs/{id}/retention",
            get(jobs::retention_preview).post(jobs::retention_apply),
        )
        .route("/runs", get(runs::list))
        .route("/runs/{id}", get(runs::get))
        .route("/runs/{id}/logs", get(runs::logs))
        .route("/runs/{id}/events", get(runs::events))
        .route("/runs/{id}/cancel", post(runs::cancel))
        .route("/vms", get(vms::list))
        .route("/backups", get(backups::list))
        // Backup ids may contain '/': clients percent-encode it (%2F) inside the segment.
        .route("/backups/{id}", get(backups::get))
        .route("/backups/{id}/verify", post(backups::verify))
        .route("/backups/{id}/restore", post(backups::restore))
        .route("/repository/stats", get(repository::stats))
        .route("/repository/gc", post(repository::gc))
        .route(
            "/repository/rebuild-catalog",
            post(repository::rebuild_catalog),
        );
    let protected = Router::new()
        .nest("/api/v1", v1)
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    Router::new()
        .route("/healthz", get(health))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(RequestBodyTimeoutLayer::new(timeout))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}
