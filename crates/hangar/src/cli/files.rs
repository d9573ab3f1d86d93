//! `hangar machine files ...`: reading and changing files inside a machine, started
//! or stopped, through the files API.

use std::io::{Read, Write};

use anyhow::{Context, Result};
use clap::Subcommand;
use hangar_client::{Client, WriteFileOptions};
use hangar_types::FileType;

use super::machine::{AppArg, resolve};
use super::output;

#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// List a directory inside the machine.
    Ls {
        #[command(flatten)]
        app: AppArg,
        machine: String,
        /// Absolute path inside the machine.
        #[arg(default_value = "/")]
        path: String,
    },
    /// Print a file inside the machine (raw bytes to stdout, or to --output).
    Get {
        #[command(flatten)]
        app: AppArg,
        machine: String,
        path: String,
        /// Write the contents to this local file instead of stdout.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
    /// Write a file inside the machine from a local file (or stdin with `-`).
    Put {
        #[command(flatten)]
        app: AppArg,
        machine: String,
        /// Local file, or `-` for stdin.
        source: String,
        /// Absolute path inside the machine.
        path: String,
        /// Octal permission bits (default 0644).
        #[arg(long, short)]
        mode: Option<String>,
        #[arg(long)]
        uid: Option<u32>,
        #[arg(long)]
        gid: Option<u32>,
        /// Create missing parent directories.
        #[arg(long, short)]
        parents: bool,
    },
    /// Remove a file or symlink (a directory with --recursive).
    Rm {
        #[command(flatten)]
        app: AppArg,
        machine: String,
        path: String,
        #[arg(long, short)]
        recursive: bool,
    },
    /// Make a directory inside the machine.
    Mkdir {
        #[command(flatten)]
        app: AppArg,
        machine: String,
        path: String,
        /// Octal permission bits (default 0755).
        #[arg(long, short)]
        mode: Option<String>,
        #[arg(long, short)]
        parents: bool,
    },
}

fn octal(mode: Option<String>) -> Result<Option<u32>> {
    mode.map(|m| {
        u32::from_str_radix(m.trim_start_matches("0o"), 8)
            .with_context(|| format!("mode {m:?} is not octal, e.g. 0644"))
    })
    .transpose()
}

fn done(json: bool, what: &str, path: &str) {
    if json {
        output::json(&serde_json::json!({"ok": true, "path": path, "result": what}));
    } else {
        println!("{path} {what}");
    }
}

pub async fn run(client: &Client, cmd: FilesCommand, json: bool) -> Result<()> {
    match cmd {
        FilesCommand::Ls { app, machine, path } => {
            let id = resolve(client, &app.app, &machine).await?;
            let entries = client.list_files(&app.app, &id, &path).await?;
            if json {
                output::json(&entries);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    let kind = match e.kind {
                        FileType::File => "file",
                        FileType::Dir => "dir",
                        FileType::Symlink => "symlink",
                        FileType::Other => "other",
                    };
                    let name = match &e.target {
                        Some(target) => format!("{} -> {target}", e.name),
                        None => e.name.clone(),
                    };
                    vec![
                        format!("{:04o}", e.mode),
                        kind.into(),
                        e.size.to_string(),
                        name,
                    ]
                })
                .collect();
            output::table(&["MODE", "TYPE", "SIZE", "NAME"], &rows);
        }
        FilesCommand::Get {
            app,
            machine,
            path,
            output,
        } => {
            let id = resolve(client, &app.app, &machine).await?;
            let file = client.read_file(&app.app, &id, &path).await?;
            match output {
                Some(local) => std::fs::write(&local, &file.contents)
                    .with_context(|| format!("writing {}", local.display()))?,
                None => std::io::stdout().write_all(&file.contents)?,
            }
        }
        FilesCommand::Put {
            app,
            machine,
            source,
            path,
            mode,
            uid,
            gid,
            parents,
        } => {
            let id = resolve(client, &app.app, &machine).await?;
            let contents = if source == "-" {
                let mut buf = Vec::new();
                std::io::stdin().read_to_end(&mut buf)?;
                buf
            } else {
                std::fs::read(&source).with_context(|| format!("reading {source}"))?
            };
            let options = WriteFileOptions {
                mode: octal(mode)?,
                uid,
                gid,
                parents,
            };
            client
                .write_file(&app.app, &id, &path, contents, &options)
                .await?;
            done(json, "written", &path);
        }
        FilesCommand::Rm {
            app,
            machine,
            path,
            recursive,
        } => {
            let id = resolve(client, &app.app, &machine).await?;
            client.remove_file(&app.app, &id, &path, recursive).await?;
            done(json, "removed", &path);
        }
        FilesCommand::Mkdir {
            app,
            machine,
            path,
            mode,
            parents,
        } => {
            let id = resolve(client, &app.app, &machine).await?;
            client
                .make_dir(&app.app, &id, &path, octal(mode)?, parents)
                .await?;
            done(json, "made", &path);
        }
    }
    Ok(())
}
