//! hangar's OpenAPI document, served at `GET /v1/openapi.json`.

use axum::Json;
use hangar_types::MachineMount;
use utoipa::OpenApi;

use crate::{checkpoints, files, images, jobs, machines, network, volumes};

#[derive(OpenApi)]
#[openapi(
    info(title = "hangar Machines API", version = "1", description = "The Fly Machines API v1 dialect, with hangar's additions (images, registries, logs, suspend, checkpoints, fork, files, egress policy, jobs); volumes are Fly's."),
    paths(
        machines::list_apps, machines::create_app, machines::get_app, machines::delete_app,
        machines::list_machines, machines::create_machine, machines::get_machine, machines::update_machine,
        machines::destroy_machine, machines::start, machines::stop, machines::restart, machines::signal,
        machines::suspend, machines::wait, machines::exec, machines::events, machines::ps, machines::logs,
        machines::create_lease, machines::get_lease, machines::release_lease,
        machines::get_metadata, machines::set_metadata, machines::delete_metadata, machines::expose,
        images::list, images::import, images::pull, images::push, images::inspect, images::remove,
        images::prune, images::login,
        checkpoints::create, checkpoints::list, checkpoints::get, checkpoints::delete,
        checkpoints::restore, checkpoints::diff, checkpoints::fork,
        checkpoints::commit,
        files::read, files::write, files::post, files::mkdir, files::remove,
        volumes::list, volumes::create, volumes::get, volumes::update, volumes::delete,
        volumes::extend, volumes::list_snapshots, volumes::create_snapshot,
        network::get_egress, network::set_egress,
        jobs::create, jobs::list, jobs::get, jobs::cancel, jobs::signal, jobs::stdin,
    ),
    components(schemas(MachineMount)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
