//! `hangar image ...`

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Subcommand;
use futures::{Stream, StreamExt};
use hangar_client::{Client, ClientError};
use hangar_types::{ImageSummary, PullEvent};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::output;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import a root filesystem directory or an archive (rootfs tar, `docker save`,
    /// OCI layout) into the image store.
    Import {
        path: PathBuf,
        /// The reference to store it under, e.g. `busybox:latest`.
        #[arg(long, short)]
        tag: String,
    },
    /// List images.
    #[command(alias = "ls")]
    List,
    /// Pull an image from the registry its reference names, e.g.
    /// `127.0.0.1:5000/team/app:v1`, showing progress per layer on stderr.
    Pull { reference: String },
    /// Push a local image to a registry: the one its reference names, or `--to`.
    /// Credentials come from `hangar registry login`.
    Push {
        reference: String,
        /// Destination, e.g. `127.0.0.1:5000/team/app:v1`.
        #[arg(long)]
        to: Option<String>,
    },
    /// Show an image's source, layers, size and config.
    Inspect { reference: String },
    /// Forget an image (refused while a machine uses it); its layers stay until prune.
    #[command(alias = "remove")]
    Rm { reference: String },
    /// Delete layers no image and no machine uses.
    Prune,
}

pub async fn run(client: &Client, cmd: ImageCommand, json: bool) -> Result<ExitCode> {
    match cmd {
        ImageCommand::Import { path, tag } => {
            let meta =
                std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
            let summary = if meta.is_dir() {
                client.import_image(&tag, tar_directory(path)).await?
            } else if meta.is_file() {
                client.import_image(&tag, read_file(&path).await?).await?
            } else {
                bail!(
                    "{} is neither a directory nor an archive file",
                    path.display()
                );
            };
            if json {
                output::json(&summary);
            } else {
                println!(
                    "imported {} ({}, {} layer(s))",
                    summary.reference, summary.digest, summary.layers
                );
            }
        }
        ImageCommand::List => {
            let images = client.list_images().await?;
            if json {
                output::json(&images);
            } else {
                let rows: Vec<Vec<String>> = images
                    .iter()
                    .map(|i| {
                        vec![
                            i.reference.clone(),
                            short_digest(&i.digest),
                            format!("{:.1} MB", i.size as f64 / 1e6),
                            i.layers.to_string(),
                        ]
                    })
                    .collect();
                output::table(&["REFERENCE", "DIGEST", "SIZE", "LAYERS"], &rows);
            }
        }
        ImageCommand::Pull { reference } => {
            let summary = pull_with_progress(client, &reference).await?;
            if json {
                output::json(&summary);
            } else {
                println!(
                    "pulled {} ({}, {} layer(s), {:.1} MB)",
                    summary.reference,
                    summary.digest,
                    summary.layers,
                    summary.size as f64 / 1e6
                );
            }
        }
        ImageCommand::Push { reference, to } => {
            let pushed = client.push_image(&reference, to.as_deref()).await?;
            if json {
                output::json(&pushed);
            } else {
                println!(
                    "pushed {} ({}, {} layer(s), {} already there, {:.1} MB sent)",
                    pushed.reference,
                    pushed.digest,
                    pushed.layers,
                    pushed.layers_present,
                    pushed.bytes_uploaded as f64 / 1e6
                );
            }
        }
        ImageCommand::Inspect { reference } => {
            let details = client.inspect_image(&reference).await?;
            if json {
                output::json(&details);
            } else {
                let s = &details.source;
                println!("reference  {}", details.reference);
                println!("registry   {}", or_dash(&s.registry));
                println!("repository {}", s.repository);
                println!("tag        {}", or_dash(&s.tag));
                println!("digest     {}", s.digest);
                println!("size       {:.1} MB", details.size as f64 / 1e6);
                let c = &details.config;
                println!("entrypoint {}", or_dash(&c.entrypoint.join(" ")));
                println!("cmd        {}", or_dash(&c.cmd.join(" ")));
                println!("workdir    {}", or_dash(&c.working_dir));
                println!("user       {}", or_dash(&c.user));
                for e in &c.env {
                    println!("env        {e}");
                }
                println!("layers:");
                let rows: Vec<Vec<String>> = details
                    .layers
                    .iter()
                    .map(|l| vec![l.diff_id.clone(), format!("{:.1} MB", l.size as f64 / 1e6)])
                    .collect();
                output::table(&["DIFF ID", "SIZE"], &rows);
            }
        }
        ImageCommand::Rm { reference } => {
            client.remove_image(&reference).await?;
            if json {
                output::json(&serde_json::json!({"removed": reference}));
            } else {
                println!("removed {reference}");
            }
        }
        ImageCommand::Prune => {
            let pruned = client.prune_images().await?;
            if json {
                output::json(&pruned);
            } else {
                println!(
                    "removed {} layer(s), freed {:.1} MB",
                    pruned.layers_removed,
                    pruned.bytes_freed as f64 / 1e6
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Pulls through the event stream: a bar per layer and one for the total, on stderr
/// (drawn only when it is a terminal).
pub(super) async fn pull_with_progress(client: &Client, reference: &str) -> Result<ImageSummary> {
    let mut events = Box::pin(client.pull_image_events(reference).await?);
    let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let layer_style = ProgressStyle::with_template(
        "{prefix:>19} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}",
    )?
    .progress_chars("=> ");
    let total_style = ProgressStyle::with_template(
        "{prefix:>19} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec} {msg}",
    )?
    .progress_chars("=> ");
    let mut total: Option<ProgressBar> = None;
    // The total is added first, so it stays on top of the layers.
    let mut layers: HashMap<String, ProgressBar> = HashMap::new();
    let mut layer_bar = |digest: &str, total_bytes: u64| {
        layers
            .entry(digest.to_string())
            .or_insert_with(|| {
                let bar = bars.add(ProgressBar::new(total_bytes));
                bar.set_style(layer_style.clone());
                bar.set_prefix(short_digest(digest));
                bar
            })
            .clone()
    };
    let mut done: HashMap<String, u64> = HashMap::new();
    while let Some(event) = events.next().await {
        match event? {
            PullEvent::Resolved {
                reference,
                layers: n,
                total_bytes,
            } => {
                let bar = bars.add(ProgressBar::new(total_bytes));
                bar.set_style(total_style.clone());
                bar.set_prefix("total");
                bar.set_message(format!("{reference}, {n} layer(s)"));
                total = Some(bar);
            }
            PullEvent::Layer {
                digest,
                done_bytes,
                total_bytes,
            } => {
                let bar = layer_bar(&digest, total_bytes);
                bar.set_length(total_bytes);
                bar.set_position(done_bytes);
                let before = done.insert(digest, done_bytes).unwrap_or(0);
                if let Some(t) = &total {
                    t.inc(done_bytes.saturating_sub(before));
                }
            }
            PullEvent::LayerDone { digest, cached } => {
                let bar = layer_bar(&digest, 0);
                if cached {
                    bar.set_message("already present");
                } else {
                    bar.set_message("unpacked");
                }
                bar.finish();
            }
            PullEvent::Done { image } => {
                if let Some(t) = &total {
                    t.finish_with_message(format!(
                        "{} {}",
                        image.reference,
                        short_digest(&image.digest)
                    ));
                }
                return Ok(image);
            }
            PullEvent::Error { error, code } => {
                if let Some(t) = &total {
                    t.abandon();
                }
                return Err(ClientError::Api {
                    status: 0,
                    code,
                    message: error,
                }
                .into());
            }
        }
    }
    bail!("the pull's event stream ended without a result; check `hangar image list`")
}

fn short_digest(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!("sha256:{}", &hex[..hex.len().min(12)])
}

async fn read_file(
    path: &Path,
) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(tokio_util::io::ReaderStream::new(file))
}

/// Streams a tar of `dir` (owners, modes and symlinks kept) as it is written.
fn tar_directory(
    dir: PathBuf,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(16);
    tokio::task::spawn_blocking(move || {
        struct Sender(tokio::sync::mpsc::Sender<std::io::Result<Bytes>>);
        impl std::io::Write for Sender {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0
                    .blocking_send(Ok(Bytes::copy_from_slice(buf)))
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload ended")
                    })?;
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let writer = std::io::BufWriter::with_capacity(256 * 1024, Sender(tx.clone()));
        let mut builder = tar::Builder::new(writer);
        builder.follow_symlinks(false);
        builder.mode(tar::HeaderMode::Complete);
        let result = builder
            .append_dir_all(".", &dir)
            .and_then(|()| builder.into_inner())
            .and_then(|mut w| {
                use std::io::Write;
                w.flush()
            });
        if let Err(err) = result {
            let _ = tx.blocking_send(Err(err));
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
