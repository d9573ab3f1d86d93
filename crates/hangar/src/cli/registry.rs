//! `hangar registry ...`: credentials the daemon uses when it pulls.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use hangar_client::Client;
use hangar_types::RegistryLoginRequest;

use super::output;

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Store credentials for a registry in the daemon (mode 0600, never logged).
    /// The password is read from stdin so it stays out of shell history and `ps`.
    Login {
        /// `host[:port]`, as it appears in image references.
        host: String,
        #[arg(long, short)]
        username: String,
        /// Read the password from stdin (required).
        #[arg(long)]
        password_stdin: bool,
        /// Speak plain HTTP to this registry (loopback registries always are).
        #[arg(long)]
        insecure: bool,
    },
}

pub async fn run(client: &Client, cmd: RegistryCommand, json: bool) -> Result<ExitCode> {
    match cmd {
        RegistryCommand::Login {
            host,
            username,
            password_stdin,
            insecure,
        } => {
            if !password_stdin {
                bail!(
                    "give the password on stdin with --password-stdin, e.g. `echo \"$PASSWORD\" | hangar registry login {host} -u {username} --password-stdin`"
                );
            }
            let mut password = String::new();
            std::io::stdin()
                .read_to_string(&mut password)
                .context("reading the password from stdin")?;
            let password = password.trim_end_matches(['\n', '\r']).to_string();
            if password.is_empty() {
                bail!("the password read from stdin is empty");
            }
            let stored = client
                .registry_login(
                    &host,
                    &RegistryLoginRequest {
                        username,
                        password,
                        insecure,
                    },
                )
                .await?;
            if json {
                output::json(&stored);
            } else {
                println!(
                    "stored credentials for {} as {}{}",
                    stored.registry,
                    stored.username,
                    if stored.insecure { " (plain HTTP)" } else { "" }
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
