//! `GET /api/v1/vms`: the inventory of every saved vCenter (or one), paginated (L4).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Caller, Permission};
use super::error::{ApiError, Problem};
use super::extract::{ApiQuery, Pagination};
use crate::AppState;
use crate::backend::VmSummary;
use crate::db::Page;
use crate::ids::VcenterId;

/// A VM with the vCenter it belongs to.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VmView {
    /// vCenter id.
    pub vcenter_id: VcenterId,
    /// vCenter name.
    pub vcenter: String,
    /// The VM.
    #[serde(flatten)]
    pub vm: VmSummary,
}

/// A page of VMs.
#[derive(Debug, Serialize, ToSchema)]
pub struct VmList {
    /// Items, by vCenter then name.
    pub items: Vec<VmView>,
    /// Cursor of the next page.
    pub next_cursor: Option<String>,
    /// vCenters that could not be listed, with the reason.
    pub errors: Vec<String>,
}

/// Query of `GET /vms`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this vCenter.
    pub vcenter_id: Option<VcenterId>,
    /// Items per page, 1-500.
    pub limit: Option<u32>,
    /// Cursor.
    pub cursor: Option<String>,
}

/// Lists VMs of all vCenters (inventory cached for 30 s).
#[utoipa::path(get, path = "/api/v1/vms", tag = "vms", params(ListQuery),
    responses((status = 200, body = VmList), (status = 400, body = Problem), (status = 404, body = Problem)), security(("api_key" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<VmList>, ApiError> {
    caller.require(Permission::Read)?;
    let page = Pagination {
        limit: q.limit,
        cursor: q.cursor,
    }
    .page()?;
    let ctx = state.ctx();
    let vcenters = match q.vcenter_id {
        Some(id) => vec![ctx.vcenter(id).await?],
        None => {
            let mut all = Vec::new();
            let mut after = None;
            loop {
                let p = ctx.db.vcenter_list(Page { limit: 500, after }).await?;
                all.extend(p.items.into_iter().map(|r| r.vcenter));
                match p.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            all
        }
    };
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for vc in vcenters {
        match state.inventory(&vc.id).await {
            Ok(vms) => rows.extend(vms.iter().map(|vm| VmView {
                vcenter_id: vc.id.clone(),
                vcenter: vc.name.clone(),
                vm: vm.clone(),
            })),
            Err(e) => errors.push(format!("vCenter {}: {}", vc.name, e)),
        }
    }
    rows.sort_by(|a, b| {
        (&a.vcenter, &a.vm.name, &a.vm.instance_uuid).cmp(&(
            &b.vcenter,
            &b.vm.name,
            &b.vm.instance_uuid,
        ))
    });
    let start = usize::try_from(page.after.unwrap_or(0)).unwrap_or(usize::MAX);
    let end = start.saturating_add(page.limit as usize);
    let next_cursor = (end < rows.len()).then(|| end.to_string());
    let items = rows
        .into_iter()
        .skip(start)
        .take(page.limit as usize)
        .collect();
    Ok(Json(VmList {
        items,
        next_cursor,
        errors,
    }))
}
