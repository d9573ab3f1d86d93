//! Apps and machines routes.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hangar_core::service::ExecRequest;
use hangar_types::*;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{Body, LeaseNonce, Query};

#[derive(Deserialize)]
pub struct ListAppsQuery {
    org_slug: Option<String>,
}

#[utoipa::path(get, path = "/v1/apps", tag = "Apps", params(("org_slug" = Option<String>, Query, description = "Only this org's apps")),
    responses((status = 200, body = ListAppsResponse)))]
pub async fn list_apps(
    State(s): State<AppState>,
    Query(q): Query<ListAppsQuery>,
) -> ApiResult<Json<ListAppsResponse>> {
    Ok(Json(s.service.list_apps(q.org_slug.as_deref()).await?))
}

#[utoipa::path(post, path = "/v1/apps", tag = "Apps", request_body = CreateAppRequest,
    responses((status = 201, body = App), (status = 409, body = ErrorResponse)))]
pub async fn create_app(
    State(s): State<AppState>,
    Body(req): Body<CreateAppRequest>,
) -> ApiResult<(StatusCode, Json<App>)> {
    Ok((StatusCode::CREATED, Json(s.service.create_app(req).await?)))
}

#[utoipa::path(get, path = "/v1/apps/{app}", tag = "Apps", responses((status = 200, body = App), (status = 404, body = ErrorResponse)))]
pub async fn get_app(State(s): State<AppState>, Path(app): Path<String>) -> ApiResult<Json<App>> {
    Ok(Json(s.service.get_app(&app).await?))
}

#[utoipa::path(delete, path = "/v1/apps/{app}", tag = "Apps", responses((status = 202, description = "Deleted, with its machines")))]
pub async fn delete_app(
    State(s): State<AppState>,
    Path(app): Path<String>,
) -> ApiResult<StatusCode> {
    s.service.delete_app(&app).await?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Deserialize)]
pub struct ListMachinesQuery {
    #[serde(default)]
    include_deleted: bool,
}

#[utoipa::path(get, path = "/v1/apps/{app}/machines", tag = "Machines", responses((status = 200, body = [Machine])))]
pub async fn list_machines(
    State(s): State<AppState>,
    Path(app): Path<String>,
    Query(q): Query<ListMachinesQuery>,
) -> ApiResult<Json<Vec<Machine>>> {
    Ok(Json(
        s.service.list_machines(&app, q.include_deleted).await?,
    ))
}

#[utoipa::path(post, path = "/v1/apps/{app}/machines", tag = "Machines", request_body = CreateMachineRequest,
    responses((status = 200, body = Machine), (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
pub async fn create_machine(
    State(s): State<AppState>,
    Path(app): Path<String>,
    Body(req): Body<CreateMachineRequest>,
) -> ApiResult<Json<Machine>> {
    Ok(Json(s.service.create_machine(&app, req).await?))
}

#[utoipa::path(get, path = "/v1/apps/{app}/machines/{id}", tag = "Machines", responses((status = 200, body = Machine), (status = 404, body = ErrorResponse)))]
pub async fn get_machine(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Machine>> {
    Ok(Json(s.service.get_machine(&app, &id).await?))
}

#[utoipa::path(post, path = "/v1/apps/{app}/machines/{id}", tag = "Machines", request_body = UpdateMachineRequest,
    responses((status = 200, body = Machine), (status = 412, body = ErrorResponse)))]
pub async fn update_machine(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    LeaseNonce(caller): LeaseNonce,
    Body(req): Body<UpdateMachineRequest>,
) -> ApiResult<Json<Machine>> {
    Ok(Json(
        s.service.update_machine(&app, &id, req, &caller).await?,
    ))
}

#[derive(Deserialize)]
pub struct DestroyQuery {
    #[serde(default)]
    force: bool,
}

#[utoipa::path(delete, path = "/v1/apps/{app}/machines/{id}", tag = "Machines", params(("force" = Option<bool>, Query, description = "Destroy even if started")),
    responses((status = 200, description = "Destroyed"), (status = 409, body = ErrorResponse)))]
pub async fn destroy_machine(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<DestroyQuery>,
    LeaseNonce(caller): LeaseNonce,
) -> ApiResult<Json<Value>> {
    s.service
        .destroy_machine(&app, &id, q.force, &caller)
        .await?;
    Ok(Json(json!({"ok": true})))
}

#[utoipa::path(post, path = "/v1/apps/{app}/machines/{id}/start", tag = "Machines", responses((status = 200, description = "{\"previous_state\": ...}")))]
pub async fn start(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    LeaseNonce(caller): LeaseNonce,
) -> ApiResult<Json<Value>> {
    let previous = s.service.start_machine(&app, &id, &caller).await?;
    Ok(Json(json!({"previous_state": previous.as_str()})))
}

#[utoipa::path(post, path = "/v1/apps/{app}/machines/{id}/stop", tag = "Machines", request_body = Option<StopRequest>, responses((status = 200, description = "Stopped")))]
pub async fn stop(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    LeaseNonce(caller): LeaseNonce,
    Body(req): Body<StopRequest>,
) -> ApiResult<Json<Value>> {
    s.service.stop_machine(&app, &id, req, &caller).await?;
    Ok(Json(json!({"ok": true})))
}

#[derive(Deserialize)]
pub struct RestartQuery {
    timeout: Option<String>,
    signal: Option<String>,
}

#[utoipa::path(post, path = "/v1/apps/{app}/machines/{id}/restart", tag = "Machines", responses((status = 200, description = "Restarted")))]
pub async fn restart(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<RestartQuery>,
    LeaseNonce(caller): LeaseNonce,
) -> ApiResult<Json<Value>> {
    let timeout = q
        .timeout
        .map(|t| hangar_core::config::parse_duration(&Value::String(t)))
        .transpose()?;
    let signal = q
        .signal
        .as_deref()
        .map(hangar_core::config::parse_signal)
        .transpose()?;
    s.service
        .restart_machine(&app, &id, timeout, signal, &caller)
        .await?;
    Ok(Json(json!({"ok": true})))
}

#[utoipa::path(post, path = "/v1/apps/{app}/machines/{id}/signal", tag = "Machines", request_body = SignalRequest, responses((status = 200, description = "Sent")))]
pub async fn signal(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    LeaseNonce(caller): LeaseNonce,
    Body(req): Body<SignalRequest>,
) -> ApiResult<Json<Value>> {
    s.service
        .signal_machine(&app, &id, &req.signal, &caller)
        .await?;
    Ok(Json(json!({"ok": true})))
}

#[utoipa::path(post, path = "/v1/apps/{app}/machines/{id}/suspend", tag = "Machines", responses((status = 200, description = "Suspended")))]
pub async fn suspend(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    LeaseNonce(caller): LeaseNonce,
) -> ApiResult<Json<Value>> {
    s.service.suspend_machine(&app, &id, &caller).await?;
    Ok(Json(json!({"ok": true})))
}

#[derive(Deserialize)]
pub struct WaitQuery {
    state: Option<String>,
    timeout: Option<String>,
    instance_id: Option<String>,
}

#[utoipa::path(get, path = "/v1/apps/{app}/machines/{id}/wait", tag = "Machines",
    params(("state" = Option<String>, Query, description = "started (default), stopped, suspended or destroyed"),
           ("timeout" = Option<String>, Query, description = "seconds, default 60, at most 300")),
    responses((status = 200, description = "The machine reached the state"), (status = 408, body = ErrorResponse)))]
pub async fn wait(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Json<Value>> {
    let timeout = match q.timeout {
        Some(t) => hangar_core::config::parse_duration(&Value::String(t))?,
        None => hangar_core::service::DEFAULT_WAIT,
    };
    let state = q.state.unwrap_or_else(|| "started".to_string());
    let machine = s
        .service
        .wait(&app, &id, &state, timeout, q.instance_id.as_deref())
        .await?;
    Ok(Json(
        json!({"ok": true, "state": machine.state, "instance_id": machine.instance_id}),
    ))
}

#[utoipa::path(post, path = "/v1/apps/{app}/machines/{id}/exec", tag = "Machines", request_body = MachineExecRequest,
    responses((status = 200, body = MachineExecResponse), (status = 409, body = ErrorResponse)))]
pub async fn exec(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Body(req): Body<MachineExecRequest>,
) -> ApiResult<Json<MachineExecResponse>> {
    let req = ExecRequest::try_from(req)?;
    Ok(Json(s.service.exec(&app, &id, req).await?))
}

#[utoipa::path(get, path = "/v1/apps/{app}/machines/{id}/events", tag = "Machines", responses((status = 200, body = [MachineEvent])))]
pub async fn events(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Vec<MachineEvent>>> {
    Ok(Json(s.service.list_events(&app, &id).await?))
}

#[utoipa::path(get, path = "/v1/apps/{app}/machines/{id}/ps", tag = "Machines", responses((status = 200, body = [ProcessStat])))]
pub async fn ps(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Vec<ProcessStat>>> {
    Ok(Json(s.service.ps(&app, &id).await?))
}

#[derive(Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    follow: bool,
    lines: Option<usize>,
}

/// A JSON array of the last lines, or with `follow=true` a server-sent event stream
/// (one `data:` JSON line each) that goes on as the machine writes.
#[utoipa::path(get, path = "/v1/apps/{app}/machines/{id}/logs", tag = "Machines",
    params(("follow" = Option<bool>, Query, description = "stream new lines as server-sent events"),
           ("lines" = Option<usize>, Query, description = "how many of the last lines (default 100)")),
    responses((status = 200, body = [LogLine])))]
pub async fn logs(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    let (lines, follow) = s.service.logs(&app, &id, q.lines.unwrap_or(100)).await?;
    if !q.follow {
        return Ok(Json(lines).into_response());
    }
    let tail = futures::stream::iter(lines);
    let events = tail
        .chain(follow.stream())
        .map(|line| Event::default().json_data(line));
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

#[utoipa::path(post, path = "/v1/apps/{app}/machines/{id}/lease", tag = "Machines", request_body = CreateLeaseRequest,
    responses((status = 200, body = Lease), (status = 409, body = ErrorResponse)))]
pub async fn create_lease(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    LeaseNonce(caller): LeaseNonce,
    Body(req): Body<CreateLeaseRequest>,
) -> ApiResult<Json<Lease>> {
    Ok(Json(
        s.service
            .create_lease(&app, &id, req.ttl, req.description, &caller)
            .await?,
    ))
}

#[utoipa::path(get, path = "/v1/apps/{app}/machines/{id}/lease", tag = "Machines", responses((status = 200, body = Lease), (status = 404, body = ErrorResponse)))]
pub async fn get_lease(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Lease>> {
    Ok(Json(s.service.get_lease(&app, &id).await?))
}

#[utoipa::path(delete, path = "/v1/apps/{app}/machines/{id}/lease", tag = "Machines", responses((status = 200, description = "Released"), (status = 412, body = ErrorResponse)))]
pub async fn release_lease(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    LeaseNonce(caller): LeaseNonce,
) -> ApiResult<Json<Value>> {
    s.service.release_lease(&app, &id, &caller).await?;
    Ok(Json(json!({"ok": true})))
}

#[utoipa::path(get, path = "/v1/apps/{app}/machines/{id}/metadata", tag = "Machines", responses((status = 200, body = std::collections::BTreeMap<String, String>)))]
pub async fn get_metadata(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<std::collections::BTreeMap<String, String>>> {
    Ok(Json(s.service.get_metadata(&app, &id).await?))
}

/// hangar addition: publish a port through the edge proxy without a restart.
#[utoipa::path(post, path = "/v1/apps/{app}/machines/{id}/expose", tag = "Machines", request_body = ExposeRequest, responses((status = 200, body = ExposeResponse)))]
pub async fn expose(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    LeaseNonce(caller): LeaseNonce,
    Body(req): Body<ExposeRequest>,
) -> ApiResult<Json<ExposeResponse>> {
    Ok(Json(
        s.service.expose_machine(&app, &id, req, &caller).await?,
    ))
}

#[derive(Deserialize)]
pub struct MetadataValue {
    value: String,
}

#[utoipa::path(post, path = "/v1/apps/{app}/machines/{id}/metadata/{key}", tag = "Machines", request_body = Object, responses((status = 204)))]
pub async fn set_metadata(
    State(s): State<AppState>,
    Path((app, id, key)): Path<(String, String, String)>,
    LeaseNonce(caller): LeaseNonce,
    Body(body): Body<MetadataValue>,
) -> ApiResult<StatusCode> {
    s.service
        .set_metadata(&app, &id, &key, Some(body.value), &caller)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/v1/apps/{app}/machines/{id}/metadata/{key}", tag = "Machines", responses((status = 204)))]
pub async fn delete_metadata(
    State(s): State<AppState>,
    Path((app, id, key)): Path<(String, String, String)>,
    LeaseNonce(caller): LeaseNonce,
) -> ApiResult<StatusCode> {
    s.service
        .set_metadata(&app, &id, &key, None, &caller)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
