//! `hangar volume ...`: persistent disks, mounted into one machine at a time with
//! `hangar machine run --volume VOLUME:/path`.

use anyhow::Result;
use clap::Subcommand;
use hangar_client::Client;
use hangar_types::{CreateVolumeRequest, Volume, VolumeSnapshot};

use super::machine::AppArg;
use super::output;

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create an empty ext4 volume, or one from a snapshot (--snapshot).
    Create {
        #[command(flatten)]
        app: AppArg,
        name: String,
        /// Size in GB.
        #[arg(long, short)]
        size: Option<u64>,
        /// Start as this snapshot of one of the app's volumes.
        #[arg(long)]
        snapshot: Option<String>,
    },
    /// List the app's volumes.
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        app: AppArg,
    },
    /// Show one volume.
    Show {
        #[command(flatten)]
        app: AppArg,
        /// Volume id or name.
        volume: String,
    },
    /// Grow a volume (while its machine runs, if it has one).
    Extend {
        #[command(flatten)]
        app: AppArg,
        volume: String,
        /// The new size in GB.
        #[arg(long, short)]
        size: u64,
    },
    /// Delete a volume and its snapshots (refused while a machine mounts it).
    #[command(alias = "rm")]
    Destroy {
        #[command(flatten)]
        app: AppArg,
        volume: String,
    },
    /// Take a snapshot of a volume, or list them with --list.
    Snapshot {
        #[command(flatten)]
        app: AppArg,
        volume: String,
        /// List the volume's snapshots instead.
        #[arg(long)]
        list: bool,
    },
    /// A new volume that starts as a copy of another (nothing is copied on disk).
    Fork {
        #[command(flatten)]
        app: AppArg,
        volume: String,
        /// The new volume's name; the source's when absent.
        #[arg(long)]
        name: Option<String>,
        /// Size in GB; the source's when absent.
        #[arg(long, short)]
        size: Option<u64>,
    },
}

pub async fn run(client: &Client, cmd: VolumeCommand, json: bool) -> Result<()> {
    match cmd {
        VolumeCommand::Create {
            app,
            name,
            size,
            snapshot,
        } => {
            let req = CreateVolumeRequest {
                name,
                size_gb: size,
                snapshot_id: snapshot,
                ..Default::default()
            };
            show(&client.create_volume(&app.app, &req).await?, json);
        }
        VolumeCommand::List { app } => {
            let list = client.list_volumes(&app.app).await?;
            if json {
                output::json(&list);
            } else {
                let rows: Vec<Vec<String>> = list.iter().map(row).collect();
                output::table(&HEADER, &rows);
            }
        }
        VolumeCommand::Show { app, volume } => {
            show(&client.get_volume(&app.app, &volume).await?, json);
        }
        VolumeCommand::Extend { app, volume, size } => {
            let r = client.extend_volume(&app.app, &volume, size).await?;
            if json {
                output::json(&r);
            } else {
                println!("volume {} is now {} GB", r.volume.id, r.volume.size_gb);
            }
        }
        VolumeCommand::Destroy { app, volume } => {
            let v = client.delete_volume(&app.app, &volume).await?;
            if json {
                output::json(&v);
            } else {
                println!("volume {} destroyed", v.id);
            }
        }
        VolumeCommand::Snapshot { app, volume, list } => {
            if list {
                let list = client.list_volume_snapshots(&app.app, &volume).await?;
                if json {
                    output::json(&list);
                } else {
                    let rows: Vec<Vec<String>> = list.iter().map(snapshot_row).collect();
                    output::table(&["ID", "SIZE", "STATUS", "CREATED"], &rows);
                }
            } else {
                let s = client.create_volume_snapshot(&app.app, &volume).await?;
                if json {
                    output::json(&s);
                } else {
                    println!("snapshot {} of volume {volume}", s.id);
                }
            }
        }
        VolumeCommand::Fork {
            app,
            volume,
            name,
            size,
        } => {
            let source = client.get_volume(&app.app, &volume).await?;
            let req = CreateVolumeRequest {
                name: name.unwrap_or(source.name),
                size_gb: size,
                source_volume_id: Some(source.id),
                ..Default::default()
            };
            show(&client.create_volume(&app.app, &req).await?, json);
        }
    }
    Ok(())
}

const HEADER: [&str; 5] = ["ID", "NAME", "SIZE", "ATTACHED TO", "CREATED"];

fn row(v: &Volume) -> Vec<String> {
    vec![
        v.id.clone(),
        v.name.clone(),
        format!("{} GB", v.size_gb),
        v.attached_machine_id.clone().unwrap_or_default(),
        v.created_at.clone(),
    ]
}

fn snapshot_row(s: &VolumeSnapshot) -> Vec<String> {
    vec![
        s.id.clone(),
        format!("{} B", s.size),
        s.status.clone(),
        s.created_at.clone(),
    ]
}

fn show(v: &Volume, json: bool) {
    if json {
        output::json(v);
    } else {
        output::table(&HEADER, &[row(v)]);
    }
}
