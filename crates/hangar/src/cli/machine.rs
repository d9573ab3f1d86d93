//! `hangar machine ...`

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use futures::StreamExt;
use hangar_client::{Client, ClientError};
use hangar_types::{
    CreateMachineRequest, ExposeRequest, Machine, MachineConfig, MachineExecRequest, MachineGuest,
    MachineInit, MachineRestart, StopRequest,
};

use super::output;

#[derive(Debug, Args)]
pub struct AppArg {
    /// The app the machine belongs to.
    #[arg(
        long,
        short,
        env = "HANGAR_APP",
        default_value = "default",
        global = true
    )]
    pub app: String,
}

#[derive(Debug, Subcommand)]
pub enum MachineCommand {
    /// Create a machine from an image and wait until it is started.
    Run(RunArgs),
    /// List the app's machines.
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        app: AppArg,
        /// Include destroyed machines.
        #[arg(long)]
        all: bool,
    },
    /// Show one machine.
    Status {
        #[command(flatten)]
        app: AppArg,
        machine: String,
    },
    /// Publish a port of the machine through the edge proxy (no restart) and print
    /// its URLs.
    Expose {
        #[command(flatten)]
        app: AppArg,
        machine: String,
        /// The port the machine's server listens on.
        #[arg(long)]
        port: u16,
        /// Do not start the machine when a request arrives while it is stopped.
        #[arg(long)]
        no_autostart: bool,
        /// `off`, `stop` or `suspend` once idle.
        #[arg(long)]
        autostop: Option<String>,
    },
    /// Start a stopped machine.
    Start {
        #[command(flatten)]
        app: AppArg,
        machine: String,
    },
    /// Stop a machine (its process gets the signal, then is killed after the timeout).
    Stop {
        #[command(flatten)]
        app: AppArg,
        machine: String,
        #[arg(long, short)]
        signal: Option<String>,
        /// Seconds or a duration like `30s`.
        #[arg(long, short)]
        timeout: Option<String>,
    },
    /// Stop and start a machine.
    Restart {
        #[command(flatten)]
        app: AppArg,
        machine: String,
    },
    /// Run a command in a started machine; exits with the command's exit code.
    Exec {
        #[command(flatten)]
        app: AppArg,
        machine: String,
        /// Seconds before the command is killed.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Pass this process's standard input to the command.
        #[arg(long, short)]
        interactive: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print a machine's logs.
    Logs {
        #[command(flatten)]
        app: AppArg,
        machine: String,
        /// Keep printing new lines.
        #[arg(long, short)]
        follow: bool,
        /// How many of the last lines.
        #[arg(long, short = 'n', default_value_t = 100)]
        lines: usize,
    },
    /// Checkpoint, restore, diff and delete snapshots of a machine's root filesystem.
    #[command(subcommand, alias = "cp")]
    Checkpoint(super::checkpoint::CheckpointCommand),
    /// Read, write, list, make and remove files inside a machine, started or stopped.
    #[command(subcommand)]
    Files(super::files::FilesCommand),
    /// New machines starting from a checkpoint (or the current state), each
    /// independent afterwards.
    Fork {
        #[command(flatten)]
        app: AppArg,
        machine: String,
        /// Checkpoint id or name; the current state when absent.
        #[arg(long)]
        checkpoint: Option<String>,
        /// How many machines (1 to 100).
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Name of the new machine (`NAME-1`, `NAME-2`, ... with a count).
        #[arg(long)]
        name: Option<String>,
    },
    /// Record a machine's root filesystem (or one of its checkpoints) as a local image:
    /// its image's layers plus the machine's changes as one more layer, optionally
    /// pushed to a registry.
    Commit {
        #[command(flatten)]
        app: AppArg,
        machine: String,
        /// The local image to record, e.g. `built:v1`.
        #[arg(long, short = 't')]
        tag: String,
        /// Checkpoint id or name; the current state when absent.
        #[arg(long)]
        checkpoint: Option<String>,
        /// Push the image afterwards, to DEST (`registry[:port]/repository[:tag]`) or,
        /// without one, to the tag itself.
        #[arg(long, value_name = "DEST", num_args = 0..=1, default_missing_value = "")]
        push: Option<String>,
    },
    /// Destroy a machine.
    #[command(alias = "rm")]
    Destroy {
        #[command(flatten)]
        app: AppArg,
        machine: String,
        /// Destroy even if it is started.
        #[arg(long, short)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    app: AppArg,
    /// Image reference, e.g. `busybox:latest`.
    image: String,
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    cpus: Option<i64>,
    /// Memory in MiB.
    #[arg(long)]
    memory: Option<i64>,
    /// `KEY=VALUE`, repeatable.
    #[arg(long = "env", short)]
    env: Vec<String>,
    /// `no`, `always` or `on-failure`.
    #[arg(long)]
    restart: Option<String>,
    /// Destroy the machine when its process exits.
    #[arg(long)]
    rm: bool,
    /// `VOLUME:/path`: mount a volume (id or name) at a path, repeatable.
    #[arg(long = "volume", short = 'v')]
    volumes: Vec<String>,
    /// The command, replacing the image's.
    #[arg(last = true)]
    command: Vec<String>,
}

pub async fn run(client: &Client, cmd: MachineCommand, json: bool) -> Result<ExitCode> {
    match cmd {
        MachineCommand::Run(args) => run_machine(client, args, json).await?,
        MachineCommand::List { app, all } => {
            let machines = client.list_machines(&app.app).await?;
            let machines: Vec<&Machine> = machines
                .iter()
                .filter(|m| all || m.state != "destroyed")
                .collect();
            if json {
                output::json(&machines);
            } else {
                let rows: Vec<Vec<String>> = machines
                    .iter()
                    .map(|m| {
                        vec![
                            m.id.clone(),
                            m.name.clone(),
                            m.state.clone(),
                            m.config.image.clone(),
                            m.created_at.clone(),
                        ]
                    })
                    .collect();
                output::table(&["ID", "NAME", "STATE", "IMAGE", "CREATED"], &rows);
            }
        }
        MachineCommand::Status { app, machine } => {
            let id = resolve(client, &app.app, &machine).await?;
            let m = client.get_machine(&app.app, &id).await?;
            if json {
                output::json(&m);
            } else {
                print_status(&m);
            }
        }
        MachineCommand::Expose {
            app,
            machine,
            port,
            no_autostart,
            autostop,
        } => {
            let id = resolve(client, &app.app, &machine).await?;
            let req = ExposeRequest {
                internal_port: port,
                autostart: Some(!no_autostart),
                autostop,
            };
            let urls = client.expose(&app.app, &id, &req).await?;
            if json {
                output::json(&urls);
            } else {
                println!("{}", urls.url);
                println!("{}", urls.machine_url);
                if let Some(https) = &urls.https_url {
                    println!("{https}");
                }
            }
        }
        MachineCommand::Start { app, machine } => {
            let id = resolve(client, &app.app, &machine).await?;
            client.start_machine(&app.app, &id).await?;
            done(json, &id, "started");
        }
        MachineCommand::Stop {
            app,
            machine,
            signal,
            timeout,
        } => {
            let id = resolve(client, &app.app, &machine).await?;
            let req = StopRequest {
                signal,
                timeout: timeout.map(serde_json::Value::String),
            };
            client.stop_machine(&app.app, &id, &req).await?;
            done(json, &id, "stopped");
        }
        MachineCommand::Restart { app, machine } => {
            let id = resolve(client, &app.app, &machine).await?;
            client.restart_machine(&app.app, &id).await?;
            done(json, &id, "restarted");
        }
        MachineCommand::Exec {
            app,
            machine,
            timeout,
            interactive,
            command,
        } => {
            let id = resolve(client, &app.app, &machine).await?;
            let stdin = if interactive && !std::io::stdin().is_terminal() {
                let mut buf = String::new();
                std::io::stdin()
                    .read_to_string(&mut buf)
                    .context("reading standard input")?;
                Some(buf)
            } else {
                None
            };
            let req = MachineExecRequest {
                command: Some(command),
                timeout: Some(timeout),
                stdin,
                ..Default::default()
            };
            let out = client.exec(&app.app, &id, &req).await?;
            if json {
                output::json(&out);
            } else {
                std::io::stdout().write_all(out.stdout.as_bytes())?;
                std::io::stderr().write_all(out.stderr.as_bytes())?;
            }
            return Ok(ExitCode::from(out.exit_code.clamp(0, 255) as u8));
        }
        MachineCommand::Logs {
            app,
            machine,
            follow,
            lines,
        } => {
            let id = resolve(client, &app.app, &machine).await?;
            let print = |line: &hangar_types::LogLine| {
                if json {
                    println!("{}", serde_json::to_string(line).unwrap_or_default());
                } else if line.stream == "init" {
                    println!("{} [hangar] {}", line.timestamp, line.message);
                } else {
                    println!("{} {}", line.timestamp, line.message);
                }
            };
            if follow {
                let mut stream = Box::pin(client.follow_logs(&app.app, &id, lines).await?);
                while let Some(line) = stream.next().await {
                    print(&line?);
                }
            } else {
                for line in client.logs(&app.app, &id, lines).await? {
                    print(&line);
                }
            }
        }
        MachineCommand::Checkpoint(cmd) => super::checkpoint::run(client, cmd, json).await?,
        MachineCommand::Files(cmd) => super::files::run(client, cmd, json).await?,
        MachineCommand::Fork {
            app,
            machine,
            checkpoint,
            count,
            name,
        } => {
            let req = hangar_types::ForkMachineRequest {
                checkpoint,
                count: Some(count),
                name,
            };
            super::checkpoint::fork(client, &app.app, &machine, req, json).await?
        }
        MachineCommand::Commit {
            app,
            machine,
            tag,
            checkpoint,
            push,
        } => {
            let req = hangar_types::CommitMachineRequest {
                reference: tag,
                checkpoint,
                push: push.is_some(),
                destination: push.filter(|d| !d.is_empty()),
            };
            super::checkpoint::commit(client, &app.app, &machine, req, json).await?
        }
        MachineCommand::Destroy {
            app,
            machine,
            force,
        } => {
            let id = resolve(client, &app.app, &machine).await?;
            client.destroy_machine(&app.app, &id, force).await?;
            done(json, &id, "destroyed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_machine(client: &Client, args: RunArgs, json: bool) -> Result<()> {
    let mut env = BTreeMap::new();
    for pair in &args.env {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--env {pair:?} is not KEY=VALUE");
        };
        env.insert(key.to_string(), value.to_string());
    }
    let guest = (args.cpus.is_some() || args.memory.is_some()).then(|| MachineGuest {
        cpus: args.cpus.unwrap_or(1),
        memory_mb: args.memory.unwrap_or(256),
        ..Default::default()
    });
    let mut mounts = Vec::new();
    for spec in &args.volumes {
        let Some((volume, path)) = spec.split_once(':') else {
            bail!("--volume {spec:?} is not VOLUME:/path");
        };
        mounts.push(serde_json::json!({"volume": volume, "path": path}));
    }
    let mut config = MachineConfig {
        image: args.image,
        init: (!args.command.is_empty()).then(|| MachineInit {
            exec: Some(args.command),
            ..Default::default()
        }),
        env,
        guest,
        restart: args.restart.map(|policy| MachineRestart {
            policy: Some(policy),
            max_retries: None,
        }),
        auto_destroy: args.rm,
        ..Default::default()
    };
    if !mounts.is_empty() {
        config
            .extra
            .insert("mounts".into(), serde_json::Value::Array(mounts));
    }
    let app = &args.app.app;
    // The default app is created on first use; a named one must exist.
    if app == "default" {
        match client.create_app(app, None).await {
            Ok(_) => {}
            Err(err) if err.code() == Some("app_exists") => {}
            Err(err) => return Err(err.into()),
        }
    }
    // An image not yet here is pulled first, so people see its layers arrive; the
    // daemon would pull it anyway, recording the progress as machine events.
    if !json && names_registry(&config.image) {
        match client.inspect_image(&config.image).await {
            Ok(_) => {}
            Err(err) if err.code() == Some("image_not_found") => {
                super::image::pull_with_progress(client, &config.image).await?;
            }
            Err(err) => return Err(err.into()),
        }
    }
    let req = CreateMachineRequest {
        name: args.name,
        config,
        ..Default::default()
    };
    let machine = client.create_machine(app, &req).await?;
    if json {
        output::json(&machine);
    } else {
        println!(
            "machine {} ({}) is {}",
            machine.id, machine.name, machine.state
        );
    }
    Ok(())
}

/// Whether a reference names a registry (`host.name/...`, `host:port/...`, `localhost/...`).
fn names_registry(reference: &str) -> bool {
    reference.split_once('/').is_some_and(|(first, _)| {
        first.contains('.') || first.contains(':') || first == "localhost"
    })
}

/// Accepts a machine's id or its name.
pub(super) async fn resolve(client: &Client, app: &str, machine: &str) -> Result<String> {
    let is_id = machine.len() == 14 && machine.bytes().all(|b| b.is_ascii_hexdigit());
    if is_id {
        return Ok(machine.to_string());
    }
    let machines = client.list_machines(app).await?;
    machines
        .into_iter()
        .find(|m| m.name == machine && m.state != "destroyed")
        .map(|m| m.id)
        .ok_or_else(|| {
            ClientError::Api {
                status: 404,
                code: "machine_not_found".into(),
                message: format!("no machine named or with id {machine:?} in app {app:?}; see `hangar machine list -a {app}`"),
            }
            .into()
        })
}

fn done(json: bool, id: &str, what: &str) {
    if json {
        output::json(&serde_json::json!({"ok": true, "id": id, "result": what}));
    } else {
        println!("machine {id} {what}");
    }
}

fn print_status(m: &Machine) {
    let rows = [
        ("id", m.id.clone()),
        ("name", m.name.clone()),
        ("state", m.state.clone()),
        ("image", m.config.image.clone()),
        ("instance", m.instance_id.clone()),
        ("created", m.created_at.clone()),
        ("updated", m.updated_at.clone()),
    ];
    for (key, value) in rows {
        println!("{key:<10} {value}");
    }
    if !m.events.is_empty() {
        println!("\nrecent events:");
        for e in &m.events {
            let when = chrono::DateTime::from_timestamp_millis(e.timestamp)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default();
            println!("  {when}  {:<8} {:<10} {}", e.kind, e.status, e.source);
        }
    }
}
