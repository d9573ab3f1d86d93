//! MCP over streamable HTTP at `/mcp` on the API listener.
//!
//! Requests need the same bearer token as the REST API; without one the answer is
//! 401 with a `WWW-Authenticate` header pointing at the RFC 9728 metadata served at
//! `/.well-known/oauth-protected-resource`. Browser origins other than loopback are
//! refused, so a web page cannot drive a local daemon. Tools then act with the
//! caller's own token against the API (see [`client_for`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use hangar_client::Client;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub use ::http::request;

use crate::{CallerToken, Config, HangarMcp};

const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// Largest JSON-RPC message accepted over HTTP.
pub const MAX_MCP_BODY: usize = 32 << 20;

/// Says whether a bearer token is one the daemon accepts.
pub type TokenCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

#[derive(Clone)]
struct Guard {
    check: TokenCheck,
}

/// The `/mcp` and metadata routes, to merge into the API router.
pub fn router(config: Config, check: TokenCheck, shutdown: CancellationToken) -> Router {
    let server = HangarMcp::per_request(config);
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default()
            .with_cancellation_token(shutdown)
            // Above the largest file_write, so an oversized one gets a sentence, not a reset.
            .with_max_request_body_bytes(MAX_MCP_BODY),
    );
    let guard = Guard { check };
    Router::new()
        .nest_service("/mcp", service)
        .layer(middleware::from_fn_with_state(guard, require_token))
        .route(METADATA_PATH, get(metadata))
        .route(&format!("{METADATA_PATH}/mcp"), get(metadata))
}

fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

async fn metadata(headers: HeaderMap) -> Json<serde_json::Value> {
    let base = base_url(&headers);
    Json(json!({
        "resource": format!("{base}/mcp"),
        "authorization_servers": [],
        "bearer_methods_supported": ["header"],
        "resource_name": "hangar",
        "resource_documentation": "Send the daemon's token (HANGAR_TOKEN) as Authorization: Bearer TOKEN",
    }))
}

fn is_loopback_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        rest.split(':').next().unwrap_or("")
    };
    matches!(host, "localhost" | "127.0.0.1" | "::1")
}

fn refuse(status: StatusCode, code: &str, error: &str) -> Response {
    (status, Json(json!({"error": error, "code": code}))).into_response()
}

async fn require_token(State(guard): State<Guard>, mut req: Request, next: Next) -> Response {
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !is_loopback_origin(origin) {
            return refuse(
                StatusCode::FORBIDDEN,
                "forbidden",
                "requests from this browser origin are refused; connect from a loopback origin or without an Origin header",
            );
        }
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && (guard.check)(t))
        .map(str::to_string);
    let Some(token) = token else {
        let mut response = refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the daemon's token as Authorization: Bearer TOKEN (HANGAR_TOKEN, or the data dir's root-token)",
        );
        let challenge = format!(
            "Bearer resource_metadata=\"{}{METADATA_PATH}\"",
            base_url(req.headers())
        );
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        return response;
    };
    req.extensions_mut().insert(CallerToken(token));
    next.run(req).await
}

/// A client of the API acting with `token`; one per token, so connections are reused.
pub fn client_for(api: &str, token: &str) -> Client {
    static CLIENTS: OnceLock<Mutex<HashMap<(String, String), Client>>> = OnceLock::new();
    let clients = CLIENTS.get_or_init(Default::default);
    let mut clients = clients.lock().expect("client cache poisoned");
    // Bounded: tokens are few; a flood of distinct ones just starts over.
    if clients.len() > 256 {
        clients.clear();
    }
    clients
        .entry((api.to_string(), token.to_string()))
        .or_insert_with(|| Client::new(api, token))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_origins_pass() {
        for ok in [
            "http://localhost:3000",
            "http://127.0.0.1",
            "https://[::1]:8080",
        ] {
            assert!(is_loopback_origin(ok), "{ok}");
        }
        for bad in [
            "https://evil.example",
            "http://localhost.evil.example",
            "null",
            "file://",
        ] {
            assert!(!is_loopback_origin(bad), "{bad}");
        }
    }
}
