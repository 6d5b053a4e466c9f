//! `/api/v1/vcenters`: saved connections (password write-only) and "test connection".

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Caller, Permission};
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiPath, ApiQuery, Pagination, cursor};
use crate::AppState;
use crate::backend::ConnectionInfo;
use crate::context::password_source;
use crate::db::PasswordChange;
use crate::ids::VcenterId;
use crate::vcenter::{Vcenter, VcenterInput, VcenterTarget};

/// A page of vCenters.
#[derive(Debug, Serialize, ToSchema)]
pub struct VcenterList {
    /// Items.
    pub items: Vec<Vcenter>,
    /// Cursor of the next page.
    pub next_cursor: Option<String>,
}

/// Query of `GET /vcenters`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Items per page, 1-500.
    pub limit: Option<u32>,
    /// Cursor.
    pub cursor: Option<String>,
}

fn view(mut v: Vcenter) -> Vcenter {
    v.password_source = password_source(&v.name, v.password_set).to_owned();
    v
}

fn validate(input: &VcenterInput) -> Result<(), ApiError> {
    input.validate().map_err(ApiError::invalid)
}

/// Lists saved vCenters.
#[utoipa::path(get, path = "/api/v1/vcenters", tag = "vcenters", params(ListQuery),
    responses((status = 200, body = VcenterList), (status = 400, body = Problem), (status = 401, body = Problem)),
    security(("api_key" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<VcenterList>, ApiError> {
    caller.require(Permission::Read)?;
    let page = Pagination {
        limit: q.limit,
        cursor: q.cursor,
    }
    .page()?;
    let rows = state.ctx().db.vcenter_list(page).await?;
    Ok(Json(VcenterList {
        items: rows.items.into_iter().map(|r| view(r.vcenter)).collect(),
        next_cursor: cursor(rows.next),
    }))
}

/// Saves a vCenter connection. The password is encrypted at rest and never returned.
#[utoipa::path(post, path = "/api/v1/vcenters", tag = "vcenters", request_body = VcenterInput,
    responses((status = 201, body = Vcenter), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("api_key" = [])))]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(input): ApiJson<VcenterInput>,
) -> Result<(StatusCode, Json<Vcenter>), ApiError> {
    caller.require(Permission::Administer)?;
    validate(&input)?;
    let ctx = state.ctx();
    let id = VcenterId::generate();
    let sealed = input
        .password
        .as_ref()
        .filter(|p| !p.expose().is_empty())
        .map(|p| ctx.key.seal(p.expose(), id.as_str()));
    let row = ctx
        .db
        .vcenter_create(id, input, sealed, ctx.clock.now())
        .await?;
    tracing::info!(vcenter = %row.vcenter.id, name = %row.vcenter.name, key = %caller.key_name, "vCenter saved");
    Ok((StatusCode::CREATED, Json(view(row.vcenter))))
}

/// One vCenter.
#[utoipa::path(get, path = "/api/v1/vcenters/{id}", tag = "vcenters", params(("id" = String, Path)),
    responses((status = 200, body = Vcenter), (status = 404, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<VcenterId>,
) -> Result<Json<Vcenter>, ApiError> {
    caller.require(Permission::Read)?;
    Ok(Json(state.ctx().vcenter(id).await?))
}

/// Replaces a vCenter's settings; omit `password` to keep the stored one, `""` to clear it.
#[utoipa::path(put, path = "/api/v1/vcenters/{id}", tag = "vcenters", params(("id" = String, Path)),
    request_body = VcenterInput,
    responses((status = 200, body = Vcenter), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("api_key" = [])))]
pub(crate) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<VcenterId>,
    ApiJson(input): ApiJson<VcenterInput>,
) -> Result<Json<Vcenter>, ApiError> {
    caller.require(Permission::Administer)?;
    validate(&input)?;
    let ctx = state.ctx();
    let change = match &input.password {
        None => PasswordChange::Keep,
        Some(p) if p.expose().is_empty() => PasswordChange::Clear,
        Some(p) => PasswordChange::Set(ctx.key.seal(p.expose(), id.as_str())),
    };
    let row = ctx
        .db
        .vcenter_update(id, input, change, ctx.clock.now())
        .await?;
    state.forget_inventory(&row.vcenter.id);
    Ok(Json(view(row.vcenter)))
}

/// Deletes a vCenter no job uses.
#[utoipa::path(delete, path = "/api/v1/vcenters/{id}", tag = "vcenters", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<VcenterId>,
) -> Result<StatusCode, ApiError> {
    caller.require(Permission::Administer)?;
    state.ctx().db.vcenter_delete(id.clone()).await?;
    state.forget_inventory(&id);
    Ok(StatusCode::NO_CONTENT)
}

/// Tests a saved connection: certificate thumbprint (to pin), trust, login.
#[utoipa::path(post, path = "/api/v1/vcenters/{id}/test", tag = "vcenters", params(("id" = String, Path)),
    responses((status = 200, body = ConnectionInfo), (status = 404, body = Problem), (status = 503, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn test_saved(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<VcenterId>,
) -> Result<Json<ConnectionInfo>, ApiError> {
    caller.require(Permission::Administer)?;
    let target = state.ctx().target(id).await?;
    Ok(Json(state.ctx().backend.test_connection(target).await?))
}

/// Tests connection settings before saving them (nothing is stored).
#[utoipa::path(post, path = "/api/v1/vcenters/test", tag = "vcenters", request_body = VcenterInput,
    responses((status = 200, body = ConnectionInfo), (status = 422, body = Problem), (status = 503, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn test_unsaved(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(input): ApiJson<VcenterInput>,
) -> Result<Json<ConnectionInfo>, ApiError> {
    caller.require(Permission::Administer)?;
    validate(&input)?;
    let target = VcenterTarget {
        id: VcenterId::generate(),
        name: input.name,
        url: input.url,
        username: input.username,
        password: input.password,
        trust: input.trust,
    };
    Ok(Json(state.ctx().backend.test_connection(target).await?))
}
