//! `hangar image ...`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Subcommand;
use futures::Stream;
use hangar_client::Client;

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
    }
    Ok(ExitCode::SUCCESS)
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
