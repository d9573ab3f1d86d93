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
    /// Show or set what the app's machines may reach outside the private network.
    ///
    /// `hangar app egress web` shows the policy; `--deny`, `--allow-all` or
    /// `--allow 1.2.3.0/24 --allow example.com` set it, for running machines too.
    Egress {
        name: String,
        /// Allow only these CIDRs, addresses and domain names (repeatable).
        #[arg(long, conflicts_with_all = ["deny", "allow_all"])]
        allow: Vec<String>,
        /// Allow nothing outside the private network.
        #[arg(long, conflicts_with = "allow_all")]
        deny: bool,
        /// Allow everything (the default policy).
        #[arg(long)]
        allow_all: bool,
    },
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
        AppCommand::Egress {
            name,
            allow,
            deny,
            allow_all,
        } => {
            use hangar_types::{EgressMode, EgressPolicy};
            let policy = if deny {
                Some(EgressPolicy {
                    policy: EgressMode::Deny,
                    allow: Vec::new(),
                })
            } else if allow_all {
                Some(EgressPolicy::default())
            } else if !allow.is_empty() {
                Some(EgressPolicy {
                    policy: EgressMode::Allowlist,
                    allow,
                })
            } else {
                None
            };
            let policy = match policy {
                Some(p) => client.set_egress(&name, &p).await?,
                None => client.get_egress(&name).await?,
            };
            if json {
                output::json(&policy);
            } else {
                let mode = serde_json::to_value(policy.policy)?;
                println!("egress of app {name}: {}", mode.as_str().unwrap_or("?"));
                for a in &policy.allow {
                    println!("  allow {a}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
