//! Logs: the tail of a machine's log file, and following it as it grows.
//!
//! `hangar init` writes the file (JSON lines of [`LogLine`]); this side only reads.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::time::Duration;

use futures::Stream;
use hangar_types::LogLine;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::Service;
use crate::error::{Error, Result};

/// Bytes read back from the end of the file to find the last lines.
const TAIL_WINDOW: u64 = 4 * 1024 * 1024;
const FOLLOW_POLL: Duration = Duration::from_millis(100);
pub const MAX_TAIL_LINES: usize = 10_000;

/// Where a follow continues from.
#[derive(Debug, Clone)]
pub struct LogFollow {
    path: PathBuf,
    offset: u64,
}

impl Service {
    /// The last `lines` lines of the machine's log, and a position to follow from.
    pub async fn logs(
        &self,
        app: &str,
        id: &str,
        lines: usize,
    ) -> Result<(Vec<LogLine>, LogFollow)> {
        let machine = self.machine(app, id).await?;
        let path = self.driver.log_path(&machine.id);
        let lines = lines.min(MAX_TAIL_LINES);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Vec::new(), LogFollow { path, offset: 0 }));
            }
            Err(err) => {
                return Err(Error::Internal(format!(
                    "reading {}: {err}",
                    path.display()
                )));
            }
        };
        let len = file
            .metadata()
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .len();
        let start = len.saturating_sub(TAIL_WINDOW);
        file.seek(SeekFrom::Start(start))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        file.read_to_end(&mut buf)
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        // Only whole lines: a partial first line (window cut) and last line (being written) are skipped.
        let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut text = &buf[..complete];
        if start > 0 {
            let first = text
                .iter()
                .position(|&b| b == b'\n')
                .map_or(text.len(), |i| i + 1);
            text = &text[first..];
        }
        let parsed: Vec<LogLine> = parse_lines(text);
        let skip = parsed.len().saturating_sub(lines);
        let offset = start + complete as u64;
        Ok((
            parsed.into_iter().skip(skip).collect(),
            LogFollow { path, offset },
        ))
    }
}

impl LogFollow {
    /// New lines as they are written, until the stream is dropped.
    pub fn stream(self) -> impl Stream<Item = LogLine> + Send + 'static {
        futures::stream::unfold(
            (self, Vec::<LogLine>::new()),
            |(mut follow, mut pending)| async move {
                loop {
                    if !pending.is_empty() {
                        let line = pending.remove(0);
                        return Some((line, (follow, pending)));
                    }
                    pending = follow.read_new().await;
                    if pending.is_empty() {
                        tokio::time::sleep(FOLLOW_POLL).await;
                    }
                }
            },
        )
    }

    async fn read_new(&mut self) -> Vec<LogLine> {
        let Ok(mut file) = tokio::fs::File::open(&self.path).await else {
            return Vec::new();
        };
        let Ok(meta) = file.metadata().await else {
            return Vec::new();
        };
        if meta.len() < self.offset {
            // Truncated or replaced: start over.
            self.offset = 0;
        }
        if meta.len() == self.offset || file.seek(SeekFrom::Start(self.offset)).await.is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        if file.read_to_end(&mut buf).await.is_err() {
            return Vec::new();
        }
        let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.offset += complete as u64;
        parse_lines(&buf[..complete])
    }
}

fn parse_lines(text: &[u8]) -> Vec<LogLine> {
    text.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect()
}
