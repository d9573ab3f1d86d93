//! `hangar machine checkpoint ...` and `hangar machine fork`: keeping and rewinding a
//! machine's root filesystem.

use anyhow::Result;
use clap::Subcommand;
use hangar_client::Client;
use hangar_types::{CheckpointDiff, CommitMachineRequest, ForkMachineRequest};

use super::machine::{AppArg, resolve};
use super::output;

#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Snapshot the machine's root filesystem (processes frozen for the instant).
    Create {
        #[command(flatten)]
        app: AppArg,
        machine: String,
        /// A name to refer to it by.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the machine's checkpoints, oldest first.
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        app: AppArg,
        machine: String,
    },
    /// Put the machine's root filesystem back to a checkpoint (a started machine is
    /// restarted into it).
    Restore {
        #[command(flatten)]
        app: AppArg,
        machine: String,
        /// Checkpoint id or name.
        checkpoint: String,
    },
    /// What changed since a checkpoint (or between two).
    Diff {
        #[command(flatten)]
        app: AppArg,
        machine: String,
        checkpoint: String,
        /// Another checkpoint; the current state when absent.
        #[arg(long)]
        to: Option<String>,
    },
    /// Delete a checkpoint (machines forked from it keep their files).
    #[command(alias = "rm")]
    Delete {
        #[command(flatten)]
        app: AppArg,
        machine: String,
        checkpoint: String,
    },
}

pub async fn run(client: &Client, cmd: CheckpointCommand, json: bool) -> Result<()> {
    match cmd {
        CheckpointCommand::Create { app, machine, name } => {
            let id = resolve(client, &app.app, &machine).await?;
            let c = client
                .create_checkpoint(&app.app, &id, name.as_deref())
                .await?;
            if json {
                output::json(&c);
            } else {
                println!("checkpoint {} ({}) of machine {id}", c.id, c.name);
            }
        }
        CheckpointCommand::List { app, machine } => {
            let id = resolve(client, &app.app, &machine).await?;
            let list = client.list_checkpoints(&app.app, &id).await?;
            if json {
                output::json(&list);
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|c| {
                        vec![
                            c.id.clone(),
                            c.name.clone(),
                            c.machine_state.clone(),
                            c.created_at.clone(),
                        ]
                    })
                    .collect();
                output::table(&["ID", "NAME", "MACHINE STATE", "CREATED"], &rows);
            }
        }
        CheckpointCommand::Restore {
            app,
            machine,
            checkpoint,
        } => {
            let id = resolve(client, &app.app, &machine).await?;
            let c = client
                .restore_checkpoint(&app.app, &id, &checkpoint)
                .await?;
            if json {
                output::json(&c);
            } else {
                println!("machine {id} restored to checkpoint {} ({})", c.id, c.name);
            }
        }
        CheckpointCommand::Diff {
            app,
            machine,
            checkpoint,
            to,
        } => {
            let id = resolve(client, &app.app, &machine).await?;
            let diff = client
                .diff_checkpoint(&app.app, &id, &checkpoint, to.as_deref())
                .await?;
            if json {
                output::json(&diff);
            } else {
                print_diff(&diff);
            }
        }
        CheckpointCommand::Delete {
            app,
            machine,
            checkpoint,
        } => {
            let id = resolve(client, &app.app, &machine).await?;
            client.delete_checkpoint(&app.app, &id, &checkpoint).await?;
            if json {
                output::json(&serde_json::json!({"ok": true, "checkpoint": checkpoint}));
            } else {
                println!("checkpoint {checkpoint} of machine {id} deleted");
            }
        }
    }
    Ok(())
}

/// `hangar machine fork`.
pub async fn fork(
    client: &Client,
    app: &str,
    machine: &str,
    req: ForkMachineRequest,
    json: bool,
) -> Result<()> {
    let id = resolve(client, app, machine).await?;
    let forked = client.fork_machine(app, &id, &req).await?;
    if json {
        output::json(&forked);
    } else {
        let rows: Vec<Vec<String>> = forked
            .machines
            .iter()
            .map(|m| vec![m.id.clone(), m.name.clone(), m.state.clone()])
            .collect();
        println!("forked from checkpoint {}", forked.checkpoint);
        output::table(&["ID", "NAME", "STATE"], &rows);
    }
    Ok(())
}

/// `hangar machine commit`.
pub async fn commit(
    client: &Client,
    app: &str,
    machine: &str,
    req: CommitMachineRequest,
    json: bool,
) -> Result<()> {
    let id = resolve(client, app, machine).await?;
    let committed = client.commit_machine(app, &id, &req).await?;
    if json {
        output::json(&committed);
        return Ok(());
    }
    let image = &committed.image;
    println!(
        "committed {}{} as {} ({}, {} layer(s), {:.1} MB)",
        id,
        committed
            .checkpoint
            .as_deref()
            .map(|c| format!(" checkpoint {c}"))
            .unwrap_or_default(),
        image.reference,
        image.digest,
        image.layers,
        image.size as f64 / 1e6
    );
    if let Some(pushed) = &committed.pushed {
        println!(
            "pushed {} ({}, {} layer(s), {} already there, {:.1} MB sent)",
            pushed.reference,
            pushed.digest,
            pushed.layers,
            pushed.layers_present,
            pushed.bytes_uploaded as f64 / 1e6
        );
    }
    Ok(())
}

/// `A path (size)`, `M path (size)`, `D path`, like `git status --short`.
fn print_diff(diff: &CheckpointDiff) {
    for (mark, entries) in [
        ("A", &diff.added),
        ("M", &diff.modified),
        ("D", &diff.deleted),
    ] {
        for e in entries {
            println!("{mark} {} ({} bytes)", e.path, e.size);
        }
    }
}
