//! `hangar mcp`: the MCP server over stdio, a client of the REST API found from
//! `HANGAR_API` and authenticated with `HANGAR_TOKEN`.

use std::process::ExitCode;

use anyhow::{Result, anyhow};
use clap::Args;
use hangar_mcp::{Config, Toolset};

#[derive(Debug, Args)]
pub struct McpArgs {
    /// The app tools use when a call names none (created on first use).
    #[arg(long, env = "HANGAR_APP")]
    pub app: Option<String>,
    /// Opt-in toolsets beyond the default: images, apps, volumes (comma-separated) or all.
    #[arg(long, env = "HANGAR_MCP_TOOLSETS", default_value = "")]
    pub toolsets: String,
}

pub async fn run(args: McpArgs) -> Result<ExitCode> {
    let toolsets = Toolset::parse_list(&args.toolsets).map_err(|e| anyhow!(e))?;
    let api = std::env::var("HANGAR_API").unwrap_or_else(|_| hangar_client::DEFAULT_API.into());
    let token = std::env::var("HANGAR_TOKEN").unwrap_or_default();
    let config = Config {
        api,
        default_app: args.app,
        toolsets,
    };
    hangar_mcp::serve_stdio(config, &token)
        .await
        .map_err(|e| anyhow!("MCP over stdio ended: {e}"))?;
    Ok(ExitCode::SUCCESS)
}
