//! The machine's log: the main process's output, line by line, as JSON lines
//! `{"timestamp", "stream", "message"}` appended to the log fd.

use std::os::fd::RawFd;

use serde::Serialize;

use crate::sys;

/// Lines longer than this are split: a process printing without newlines must not
/// grow init's memory.
const MAX_LINE: usize = 16 * 1024;

#[derive(Serialize)]
struct Line<'a> {
    timestamp: String,
    stream: &'a str,
    message: &'a str,
}

pub struct Log {
    fd: RawFd,
}

impl Log {
    pub fn new(fd: RawFd) -> Self {
        Log { fd }
    }

    pub fn write(&self, stream: &str, message: &[u8]) {
        let message = String::from_utf8_lossy(message);
        let line = Line {
            timestamp: crate::time::now_rfc3339(),
            stream,
            message: &message,
        };
        let mut out = serde_json::to_vec(&line).unwrap_or_default();
        out.push(b'\n');
        // The log fd is O_APPEND: one write keeps a line whole. A full disk loses
        // lines rather than stalling the machine.
        let _ = sys::write_all(self.fd, &out);
    }

    pub fn init(&self, message: &str) {
        self.write("init", message.as_bytes());
    }
}

/// One output stream of the main process, split into lines.
pub struct LogPipe {
    pub fd: RawFd,
    pub stream: &'static str,
    partial: Vec<u8>,
}

impl LogPipe {
    pub fn new(fd: RawFd, stream: &'static str) -> Self {
        LogPipe {
            fd,
            stream,
            partial: Vec::new(),
        }
    }

    /// Reads what is available and logs complete lines. Returns false at end of
    /// file (the remainder has been logged and the fd closed).
    pub fn pump(&mut self, log: &Log) -> bool {
        let mut buf = [0u8; 8192];
        loop {
            match sys::read(self.fd, &mut buf) {
                Ok(0) => {
                    self.finish(log);
                    return false;
                }
                Ok(n) => self.feed(&buf[..n], log),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => {
                    self.finish(log);
                    return false;
                }
            }
        }
    }

    fn feed(&mut self, mut data: &[u8], log: &Log) {
        while let Some(pos) = data.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&data[..pos]);
            self.flush(log);
            data = &data[pos + 1..];
        }
        self.partial.extend_from_slice(data);
        while self.partial.len() >= MAX_LINE {
            let rest = self.partial.split_off(MAX_LINE);
            log.write(self.stream, &self.partial);
            self.partial = rest;
        }
    }

    fn flush(&mut self, log: &Log) {
        let line = self.partial.strip_suffix(b"\r").unwrap_or(&self.partial);
        log.write(self.stream, line);
        self.partial.clear();
    }

    fn finish(&mut self, log: &Log) {
        if !self.partial.is_empty() {
            self.flush(log);
        }
        self.partial = Vec::new();
        sys::close(self.fd);
        self.fd = -1;
    }
}
