//! The CLI: each command turns its arguments into one or a few API calls through
//! [`hangar_client::Client`], and prints a readable table or, with `--json`, the API's
//! JSON. Errors are one line and a non-zero exit.

mod app;
mod checkpoint;
mod files;
mod image;
mod machine;
mod mcp;
mod output;
mod registry;
mod volume;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use hangar_client::{Client, ClientError};

use crate::serve::{self, ServeArgs};

#[derive(Debug, Parser)]
#[command(
    name = "hangar",
    version,
    about = "Machines for robots: create once, start in milliseconds, stop for hours."
)]
pub struct Cli {
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
    /// Create, list and destroy apps.
    #[command(subcommand)]
    App(app::AppCommand),
    /// Run and manage machines.
    #[command(subcommand, alias = "m")]
    Machine(machine::MachineCommand),
    /// Pull, import, list, inspect, remove and prune images.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Registry credentials for pulls.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Persistent volumes: create, list, show, extend, snapshot, fork, destroy.
    #[command(subcommand, alias = "vol")]
    Volume(volume::VolumeCommand),
    /// Serve the platform as MCP tools over stdio.
    Mcp(mcp::McpArgs),
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let client = || Client::from_env();
    match cli.command {
        Command::Serve(args) => serve::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::App(cmd) => app::run(&client(), cmd, cli.json).await,
        Command::Machine(cmd) => machine::run(&client(), cmd, cli.json).await,
        Command::Image(cmd) => image::run(&client(), cmd, cli.json).await,
        Command::Registry(cmd) => registry::run(&client(), cmd, cli.json).await,
        Command::Volume(cmd) => volume::run(&client(), cmd, cli.json)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Mcp(args) => mcp::run(args).await,
    }
}

/// One clear line on stderr: the API's sentence and code, or the local failure.
pub fn print_error(err: &anyhow::Error, json: bool) {
    let (message, code) = match err.downcast_ref::<ClientError>() {
        Some(ClientError::Api { message, code, .. }) => (message.clone(), code.clone()),
        Some(other) => (other.to_string(), "client_error".to_string()),
        None => (format!("{err:#}"), "client_error".to_string()),
    };
    if json {
        eprintln!("{}", serde_json::json!({"error": message, "code": code}));
    } else {
        eprintln!("error: {message} ({code})");
    }
}
