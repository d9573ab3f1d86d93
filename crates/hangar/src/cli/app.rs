//! `hangar app ...`

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use hangar_client::Client;

use super::output;

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Create an app.
    Create {
        name: String,
        /// The org the app belongs to (machines of one org share a private network).
        #[arg(long)]
        org: Option<String>,
    },
    /// List apps.
    #[command(alias = "ls")]
    List,
    /// Destroy an app and all its machines.
    #[command(alias = "rm")]
    Destroy { name: String },
}

pub async fn run(client: &Client, cmd: AppCommand, json: bool) -> Result<ExitCode> {
    match cmd {
        AppCommand::Create { name, org } => {
            let app = client.create_app(&name, org.as_deref()).await?;
            if json {
                output::json(&app);
            } else {
                println!("created app {} (org {})", app.name, app.organization.slug);
            }
        }
        AppCommand::List => {
            let apps = client.list_apps().await?;
            if json {
                output::json(&apps);
            } else {
                let rows: Vec<Vec<String>> = apps
                    .apps
                    .iter()
                    .map(|a| vec![a.name.clone(), a.machine_count.to_string()])
                    .collect();
                output::table(&["NAME", "MACHINES"], &rows);
            }
        }
        AppCommand::Destroy { name } => {
            client.delete_app(&name).await?;
            if json {
                output::json(&serde_json::json!({"ok": true, "app": name}));
            } else {
                println!("destroyed app {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
