//! hangar's REST API: axum routes that parse a request, call the service layer, and
//! render its answer in the Fly Machines API v1 shapes.
//!
//! Handlers hold no logic of their own. Errors become HTTP responses in exactly one
//! place ([`error::ApiError`]); authentication is one middleware ([`auth`]).

pub mod auth;
mod checkpoints;
pub mod error;
mod extract;
mod files;
mod images;
mod jobs;
mod machines;
mod network;
pub mod openapi;
mod ops;
mod volumes;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post, put};
use hangar_core::Service;
use metrics_exporter_prometheus::PrometheusHandle;

/// Largest JSON body accepted; bigger ones get 413.
pub const MAX_JSON_BODY: usize = 1024 * 1024;
/// Largest file written through the files API.
pub const MAX_FILE_BODY: usize = hangar_core::service::MAX_FILE_SIZE as usize;
/// Largest image archive accepted by an import.
pub const MAX_IMPORT_BODY: usize = 16 * 1024 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub token: auth::Token,
    pub metrics: Option<PrometheusHandle>,
}

/// The whole API, ready to serve.
pub fn router(state: AppState) -> Router {
    let machine = "/v1/apps/{app}/machines/{id}";
    let api = Router::new()
        .route(
            "/v1/apps",
            get(machines::list_apps).post(machines::create_app),
        )
        .route(
            "/v1/apps/{app}",
            get(machines::get_app).delete(machines::delete_app),
        )
        .route(
            "/v1/apps/{app}/egress",
            get(network::get_egress).put(network::set_egress),
        )
        .route(
            "/v1/apps/{app}/machines",
            get(machines::list_machines).post(machines::create_machine),
        )
        .route(
            machine,
            get(machines::get_machine)
                .post(machines::update_machine)
                .delete(machines::destroy_machine),
        )
        .route(&format!("{machine}/start"), post(machines::start))
        .route(&format!("{machine}/stop"), post(machines::stop))
        .route(&format!("{machine}/restart"), post(machines::restart))
        .route(&format!("{machine}/signal"), post(machines::signal))
        .route(&format!("{machine}/suspend"), post(machines::suspend))
        .route(&format!("{machine}/wait"), get(machines::wait))
        .route(&format!("{machine}/exec"), post(machines::exec))
        .route(&format!("{machine}/events"), get(machines::events))
        .route(&format!("{machine}/ps"), get(machines::ps))
        .route(&format!("{machine}/logs"), get(machines::logs))
        .route(
            &format!("{machine}/lease"),
            get(machines::get_lease)
                .post(machines::create_lease)
                .delete(machines::release_lease),
        )
        .route(&format!("{machine}/metadata"), get(machines::get_metadata))
        .route(&format!("{machine}/expose"), post(machines::expose))
        .route(
            &format!("{machine}/checkpoints"),
            get(checkpoints::list).post(checkpoints::create),
        )
        .route(
            &format!("{machine}/checkpoints/{{checkpoint}}"),
            get(checkpoints::get).delete(checkpoints::delete),
        )
        .route(
            &format!("{machine}/checkpoints/{{checkpoint}}/restore"),
            post(checkpoints::restore),
        )
        .route(
            &format!("{machine}/checkpoints/{{checkpoint}}/diff"),
            get(checkpoints::diff),
        )
        .route(&format!("{machine}/fork"), post(checkpoints::fork))
        .route(&format!("{machine}/commit"), post(checkpoints::commit))
        .route(
            &format!("{machine}/files"),
            get(files::read)
                .put(files::write)
                .post(files::post)
                .delete(files::remove)
                // Only this route takes bodies this large: a file's raw bytes.
                .layer(DefaultBodyLimit::max(MAX_FILE_BODY)),
        )
        .route(&format!("{machine}/files/mkdir"), post(files::mkdir))
        .route(
            &format!("{machine}/jobs"),
            get(jobs::list).post(jobs::create),
        )
        .route(
            &format!("{machine}/jobs/{{job}}"),
            get(jobs::get).delete(jobs::cancel),
        )
        .route(
            &format!("{machine}/jobs/{{job}}/signal"),
            post(jobs::signal),
        )
        .route(
            &format!("{machine}/jobs/{{job}}/stdin"),
            post(jobs::stdin).layer(DefaultBodyLimit::max(hangar_core::service::MAX_JOB_STDIN)),
        )
        .route(
            &format!("{machine}/metadata/{{key}}"),
            post(machines::set_metadata).delete(machines::delete_metadata),
        )
        .route(
            "/v1/apps/{app}/volumes",
            get(volumes::list).post(volumes::create),
        )
        .route(
            "/v1/apps/{app}/volumes/{id}",
            get(volumes::get)
                .post(volumes::update)
                .delete(volumes::delete),
        )
        .route("/v1/apps/{app}/volumes/{id}/extend", put(volumes::extend))
        .route(
            "/v1/apps/{app}/volumes/{id}/snapshots",
            get(volumes::list_snapshots).post(volumes::create_snapshot),
        )
        .route("/v1/images", get(images::list))
        .route(
            "/v1/images/import",
            post(images::import).layer(DefaultBodyLimit::max(MAX_IMPORT_BODY)),
        )
        .route("/v1/images/pull", post(images::pull))
        .route("/v1/images/push", post(images::push))
        .route("/v1/images/prune", post(images::prune))
        .route(
            "/v1/images/{reference}",
            get(images::inspect).delete(images::remove),
        )
        .route("/v1/registries/{host}/login", post(images::login))
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/metrics", get(ops::metrics))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));

    Router::new()
        .route("/healthz", get(ops::healthz))
        .merge(api)
        .fallback(ops::not_found)
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(middleware::from_fn(ops::observe_request))
        .with_state(state)
}
