//! `/v1/apps/{app}/egress`: an app's egress policy (a hangar addition).

use axum::Json;
use axum::extract::{Path, State};
use hangar_types::{EgressPolicy, ErrorResponse};

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::Body;

#[utoipa::path(get, path = "/v1/apps/{app}/egress", tag = "Network", responses((status = 200, body = EgressPolicy), (status = 404, body = ErrorResponse)))]
pub async fn get_egress(
    State(s): State<AppState>,
    Path(app): Path<String>,
) -> ApiResult<Json<EgressPolicy>> {
    Ok(Json(s.service.get_egress(&app).await?))
}

/// Replaces the policy; the app's running machines follow at once.
#[utoipa::path(put, path = "/v1/apps/{app}/egress", tag = "Network", request_body = EgressPolicy, responses((status = 200, body = EgressPolicy), (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn set_egress(
    State(s): State<AppState>,
    Path(app): Path<String>,
    Body(policy): Body<EgressPolicy>,
) -> ApiResult<Json<EgressPolicy>> {
    Ok(Json(s.service.set_egress(&app, policy).await?))
}
