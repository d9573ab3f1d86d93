//! hangar's MCP server: the platform as task-shaped tools, machine logs and files
//! as resources, and a guide for models.
//!
//! Every tool is a client of the REST API ([`hangar_client::Client`]), so MCP adds
//! no second implementation and acts with exactly the caller's token: over stdio
//! the token of `HANGAR_TOKEN`; over streamable HTTP ([`http`]) the bearer token the
//! MCP client presented, sent on to the daemon's own API.

#[cfg(test)]
mod bad_input;
pub mod http;
pub mod output;
pub mod tools;

use std::sync::Arc;

use hangar_client::Client;
use rmcp::model::*;
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::Value;

pub use tools::Toolset;

/// What a model should know before it starts.
pub const GUIDE: &str = "\
# Working with hangar machines

- Create a machine once (machine_run) and keep it: stop it when idle
  (machine_lifecycle action=stop) and start it again later; its files persist.
- Address machines by name within an app.
- Take a checkpoint before a risky step (checkpoint action=create); if it goes
  wrong, restore it (action=restore) instead of starting over. Fork to try an
  alternative next to the original.
- Machines: machine_list shows them all, or one with machine=NAME.
- Commands: exec waits up to 30 s. Anything longer: exec with background=true,
  then job_poll with the cursor it returns (wait_secs waits for the end), and
  job_control action=cancel when you no longer need it. A non-zero exit code is
  data.
- Interactive programs: exec with stdin_open=true, then job_control action=stdin
  with the text (end lines with \\n; eof=true closes stdin), and job_poll for
  what it printed.
- Output is capped: the head and tail are kept; poll the job with a cursor for
  the rest.
- Errors carry a code and say what to do next; retryable=true means try again.
";

/// How the server finds the API and its defaults.
#[derive(Clone)]
pub struct Config {
    /// Where the REST API listens (`host:port` or a URL).
    pub api: String,
    /// The app used when a tool call names none.
    pub default_app: Option<String>,
    pub toolsets: Vec<Toolset>,
}

/// Where a call's API client comes from.
#[derive(Clone)]
enum Auth {
    /// One token for the whole session (stdio).
    Fixed(Client),
    /// The bearer token of each HTTP request.
    PerRequest,
}

#[derive(Clone)]
pub struct HangarMcp {
    config: Arc<Config>,
    auth: Auth,
    tools: Arc<Vec<Tool>>,
}

/// The caller's token, put into request extensions by the HTTP layer.
#[derive(Clone)]
pub struct CallerToken(pub String);

impl HangarMcp {
    /// A server acting with `token` (stdio).
    pub fn with_token(config: Config, token: &str) -> Self {
        let client = Client::new(&config.api, token);
        Self::new(config, Auth::Fixed(client))
    }

    /// A server acting with each HTTP request's own bearer token.
    pub fn per_request(config: Config) -> Self {
        Self::new(config, Auth::PerRequest)
    }

    fn new(config: Config, auth: Auth) -> Self {
        let tools = Arc::new(tools::catalogue(&config.toolsets));
        HangarMcp {
            config: Arc::new(config),
            auth,
            tools,
        }
    }

    fn ctx(&self, context: &RequestContext<RoleServer>) -> Result<tools::Ctx, McpError> {
        let client = match &self.auth {
            Auth::Fixed(client) => client.clone(),
            Auth::PerRequest => {
                let token = context
                    .extensions
                    .get::<http::request::Parts>()
                    .and_then(|parts| parts.extensions.get::<CallerToken>())
                    .map(|t| t.0.clone())
                    .ok_or_else(|| {
                        McpError::invalid_request("this request carries no bearer token", None)
                    })?;
                http::client_for(&self.config.api, &token)
            }
        };
        Ok(tools::Ctx {
            client,
            default_app: self.config.default_app.clone(),
        })
    }
}

struct PeerProgress {
    peer: rmcp::Peer<RoleServer>,
    token: ProgressToken,
}

impl tools::Progress for PeerProgress {
    fn report(&self, progress: f64, message: String) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self
                .peer
                .notify_progress(
                    ProgressNotificationParam::new(self.token.clone(), progress)
                        .with_message(message),
                )
                .await;
        })
    }
}

fn error_result(err: &tools::ToolError) -> CallToolResult {
    let next = if err.retryable {
        " (retryable: try again shortly)"
    } else {
        ""
    };
    let mut result = CallToolResult::error(vec![ContentBlock::text(format!(
        "{} [{}]{next}",
        err.error, err.code
    ))]);
    result.structured_content = Some(tools::error_value(err));
    result
}

impl ServerHandler for HangarMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("hangar", env!("CARGO_PKG_VERSION")))
        .with_instructions(GUIDE)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.tools.as_ref().clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let ctx = self.ctx(&context)?;
        let progress = context.meta.get_progress_token().map(|token| PeerProgress {
            peer: context.peer.clone(),
            token,
        });
        let args = Value::Object(request.arguments.unwrap_or_default());
        let outcome = tools::call(
            &ctx,
            &self.config.toolsets,
            &request.name,
            args,
            progress.as_ref().map(|p| p as &dyn tools::Progress),
        )
        .await;
        let result = match outcome {
            None => {
                return Err(McpError::invalid_params(
                    format!(
                        "unknown tool {:?}; list the tools with tools/list",
                        request.name
                    ),
                    None,
                ));
            }
            Some(Err(tools::InvalidParams(message))) => {
                return Err(McpError::invalid_params(
                    format!("invalid arguments for {}: {message}", request.name),
                    None,
                ));
            }
            Some(Ok(Ok(output))) => {
                let mut content = vec![ContentBlock::text(output.text)];
                content.extend(output.extra);
                let mut result = CallToolResult::success(content);
                result.structured_content = Some(output.structured);
                result
            }
            Some(Ok(Err(err))) => error_result(&err),
        };
        Ok(result.into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new("hangar://guide", "guide")
                .with_description("How to work with hangar machines")
                .with_mime_type("text/markdown"),
        ]))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new(
                "hangar://apps/{app}/machines/{machine}/logs",
                "machine logs",
            )
            .with_description("The last 200 lines of a machine's output")
            .with_mime_type("text/plain"),
            ResourceTemplate::new(
                "hangar://apps/{app}/machines/{machine}/files/{path}",
                "machine file",
            )
            .with_description("A file inside a machine, by absolute path without the leading /"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let uri = request.uri.as_str();
        if uri == "hangar://guide" {
            return Ok(ReadResourceResult::new(vec![
                ResourceContents::text(GUIDE, uri).with_mime_type("text/markdown"),
            ])
            .into());
        }
        let not_found = || {
            McpError::resource_not_found(
                format!("no resource {uri:?}; see resources/templates/list"),
                None,
            )
        };
        let rest = uri.strip_prefix("hangar://apps/").ok_or_else(not_found)?;
        let (app, rest) = rest.split_once("/machines/").ok_or_else(not_found)?;
        let (machine, what) = rest.split_once('/').ok_or_else(not_found)?;
        let ctx = self.ctx(&context)?;
        let failed = |e: hangar_client::ClientError| {
            let e = tools::ToolError::from(e);
            McpError::resource_not_found(format!("{} [{}]", e.error, e.code), None)
        };
        if what == "logs" {
            let lines = ctx.client.logs(app, machine, 200).await.map_err(failed)?;
            let text = lines
                .into_iter()
                .map(|l| l.message)
                .collect::<Vec<_>>()
                .join("\n");
            return Ok(ReadResourceResult::new(vec![ResourceContents::text(text, uri)]).into());
        }
        let path = what.strip_prefix("files/").ok_or_else(not_found)?;
        let path = format!("/{path}");
        let file = ctx
            .client
            .read_file(app, machine, &path)
            .await
            .map_err(failed)?;
        let contents = match String::from_utf8(file.contents) {
            Ok(text) if !text.contains('\0') => ResourceContents::text(text, uri),
            Ok(text) => blob(text.into_bytes(), uri, &path),
            Err(e) => blob(e.into_bytes(), uri, &path),
        };
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}

fn blob(bytes: Vec<u8>, uri: &str, path: &str) -> ResourceContents {
    use base64::Engine;
    ResourceContents::blob(base64::engine::general_purpose::STANDARD.encode(bytes), uri)
        .with_mime_type(tools::mime_for(path))
}

/// Serves MCP over stdin and stdout until the client closes them.
pub async fn serve_stdio(config: Config, token: &str) -> anyhow_free::Result {
    use rmcp::ServiceExt;
    let server = HangarMcp::with_token(config, token)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| e.to_string())?;
    server.waiting().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Errors of [`serve_stdio`] as sentences.
pub mod anyhow_free {
    pub type Result = std::result::Result<(), String>;
}
