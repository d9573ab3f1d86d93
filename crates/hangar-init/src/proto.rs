//! The control protocol between the runtime driver and init.
//!
//! Newline-delimited JSON over a unix stream socket. Every request is one connection:
//! the client writes one [`Request`] line and reads one [`Response`] line. A
//! [`Request::Watch`] connection instead receives a [`Response::Status`] line at once
//! and then one [`Event`] line per event, until either side closes it.
//!
//! Binary payloads (file contents, stdin, output) travel as standard base64 strings.

use serde::{Deserialize, Serialize};

/// Longest output of one `exec` stream kept; the rest is dropped and flagged.
pub const MAX_EXEC_OUTPUT: usize = 16 << 20;

/// Longest request line init accepts (base64 of files and stdin included).
pub const MAX_REQUEST: usize = 96 << 20;

/// Most stdin bytes init holds for one `exec` that its command has not read yet;
/// a [`Request::ExecStdin`] past this is refused with [`ErrorKind::Busy`].
pub const MAX_STDIN_PENDING: usize = 8 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Is the main process running; how did the last one end.
    Status,
    /// Writes the files, then executes the main process.
    Start(StartRequest),
    /// Signals the main process, waits, then kills every process in the machine.
    Stop(StopRequest),
    /// Sends a signal to the main process.
    Signal { signal: i32 },
    /// Runs a command beside the main process and returns its output.
    Exec(ExecRequest),
    /// Sends a signal to the process group of the running `exec` with this id.
    Kill { id: String, signal: i32 },
    /// Writes `data` to the stdin of the running `exec` with this id, which was
    /// started with [`ExecRequest::keep_stdin`]; `eof` closes it once `data` is
    /// written. Answered with [`Response::Ok`] once init holds the data.
    ExecStdin {
        id: String,
        #[serde(default, with = "base64")]
        data: Vec<u8>,
        #[serde(default)]
        eof: bool,
    },
    /// Lists the machine's processes.
    Ps,
    /// Turns the connection into a stream of [`Event`]s.
    Watch,
    /// Kills every process and exits init, which ends the sandbox.
    Shutdown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StartRequest {
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    /// `/` when empty.
    #[serde(default)]
    pub cwd: String,
    /// `user`, `uid`, `user:group` or `uid:gid`, resolved with the machine's own
    /// `/etc/passwd` and `/etc/group`; root when empty.
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub files: Vec<FileSpec>,
}

#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileSpec {
    /// Absolute path inside the machine; parent directories are created.
    pub path: String,
    #[serde(with = "base64")]
    pub contents: Vec<u8>,
    /// Permission bits; `0644` when zero.
    #[serde(default)]
    pub mode: u32,
}

impl std::fmt::Debug for FileSpec {
    // Contents may be secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSpec")
            .field("path", &self.path)
            .field("len", &self.contents.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRequest {
    pub signal: i32,
    /// How long the main process gets after `signal` before everything is killed.
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Names the exec for a later [`Request::Kill`]; anonymous when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub argv: Vec<String>,
    /// Added to (and overriding) the environment of the last main process.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: String,
    #[serde(default)]
    pub user: String,
    #[serde(default, with = "base64")]
    pub stdin: Vec<u8>,
    /// Keep stdin open once `stdin` is written, for [`Request::ExecStdin`]; without
    /// it the command reads end of file after `stdin`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_stdin: bool,
    /// The command's process group is killed after this long; 0 means no limit.
    #[serde(default)]
    pub timeout_ms: u64,
    /// Send [`Response::Output`] lines as output arrives, before the reply (which
    /// still carries all of it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Status(StatusReply),
    Started {
        pid: i32,
    },
    /// `exit` is `None` when no main process was running.
    Stopped {
        exit: Option<ExitInfo>,
    },
    Exec(ExecReply),
    /// A piece of a streaming exec's output, as it was written. The first line of a
    /// streaming exec is an empty piece of stdout: the command runs, and input sent
    /// from then on finds it.
    Output {
        stderr: bool,
        #[serde(with = "base64")]
        data: Vec<u8>,
    },
    Ps {
        processes: Vec<ProcInfo>,
    },
    Ok,
    Error {
        kind: ErrorKind,
        message: String,
    },
}

impl Response {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Response::Error {
            kind,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request could not be parsed or makes no sense.
    BadRequest,
    /// The command cannot be executed (missing binary, bad user, bad directory).
    InvalidCommand,
    NotRunning,
    AlreadyRunning,
    /// Init holds too much unread input for the command; try again once it read some.
    Busy,
    /// Something init itself needed failed.
    Internal,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// Pid of the main process (inside the machine) while it runs.
    pub pid: Option<i32>,
    pub last_exit: Option<ExitInfo>,
}

/// How a process ended: `code` is its exit code, or `128 + signal` if a signal
/// ended it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub code: i32,
    pub signal: Option<i32>,
}

impl ExitInfo {
    /// Decodes a `waitpid` status.
    pub fn from_wait_status(status: i32) -> Self {
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            ExitInfo {
                code: 128 + sig,
                signal: Some(sig),
            }
        } else {
            ExitInfo {
                code: libc::WEXITSTATUS(status),
                signal: None,
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecReply {
    #[serde(with = "base64")]
    pub stdout: Vec<u8>,
    #[serde(with = "base64")]
    pub stderr: Vec<u8>,
    /// Output past [`MAX_EXEC_OUTPUT`] was dropped.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub exit: ExitInfo,
    pub timed_out: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub command: String,
    pub cwd: String,
    pub rss_bytes: u64,
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    /// `(protocol, address)` pairs such as `("tcp", "0.0.0.0:8080")`.
    pub listen_sockets: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The main process ended.
    Exited(ExitInfo),
}

/// One JSON line (with its newline) for any protocol message.
pub fn encode_line<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(msg).unwrap_or_else(|e| {
        // Only non-string map keys fail, and our types have none.
        format!("{{\"result\":\"error\",\"kind\":\"internal\",\"message\":\"encode: {e}\"}}")
            .into_bytes()
    });
    out.push(b'\n');
    out
}

/// Standard base64 (with padding) as a serde string.
pub mod base64 {
    use serde::{Deserialize, Deserializer, Serializer};

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(input: &[u8]) -> String {
        let mut out = Vec::with_capacity(input.len().div_ceil(3) * 4);
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            out.push(ALPHABET[(n >> 18) as usize & 63]);
            out.push(ALPHABET[(n >> 12) as usize & 63]);
            out.push(if chunk.len() > 1 {
                ALPHABET[(n >> 6) as usize & 63]
            } else {
                b'='
            });
            out.push(if chunk.len() > 2 {
                ALPHABET[n as usize & 63]
            } else {
                b'='
            });
        }
        // Only ASCII from the alphabet was pushed.
        String::from_utf8(out).unwrap_or_default()
    }

    pub fn decode(input: &str) -> Result<Vec<u8>, String> {
        fn value(c: u8) -> Option<u32> {
            Some(match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => return None,
            } as u32)
        }
        let bytes = input.trim_end_matches('=').as_bytes();
        if input.len() - bytes.len() > 2 || bytes.len() % 4 == 1 {
            return Err("invalid base64 length".into());
        }
        let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
        for chunk in bytes.chunks(4) {
            let mut n = 0u32;
            for (i, &c) in chunk.iter().enumerate() {
                let v = value(c).ok_or_else(|| format!("invalid base64 byte {c:#x}"))?;
                n |= v << (18 - 6 * i);
            }
            out.push((n >> 16) as u8);
            if chunk.len() > 2 {
                out.push((n >> 8) as u8);
            }
            if chunk.len() > 3 {
                out.push(n as u8);
            }
        }
        Ok(out)
    }

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        decode(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for len in 0..300 {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let enc = base64::encode(&data);
            assert_eq!(base64::decode(&enc).unwrap(), data, "{enc}");
        }
        assert_eq!(base64::encode(b"hello"), "aGVsbG8=");
        assert!(base64::decode("a").is_err());
        assert!(base64::decode("a*==").is_err());
    }

    #[test]
    fn requests_have_stable_shapes() {
        let req = Request::Stop(StopRequest {
            signal: 15,
            timeout_ms: 100,
        });
        let line = String::from_utf8(encode_line(&req)).unwrap();
        assert_eq!(line, "{\"op\":\"stop\",\"signal\":15,\"timeout_ms\":100}\n");
        let exec: Request = serde_json::from_str(r#"{"op":"exec","argv":["id"]}"#).unwrap();
        assert_eq!(
            exec,
            Request::Exec(ExecRequest {
                argv: vec!["id".into()],
                ..ExecRequest::default()
            })
        );
        let kill = String::from_utf8(encode_line(&Request::Kill {
            id: "job_1".into(),
            signal: 15,
        }))
        .unwrap();
        assert_eq!(kill, "{\"op\":\"kill\",\"id\":\"job_1\",\"signal\":15}\n");
        let stdin = String::from_utf8(encode_line(&Request::ExecStdin {
            id: "job_1".into(),
            data: b"hi".to_vec(),
            eof: true,
        }))
        .unwrap();
        assert_eq!(
            stdin,
            "{\"op\":\"exec_stdin\",\"id\":\"job_1\",\"data\":\"aGk=\",\"eof\":true}\n"
        );
        let ev = String::from_utf8(encode_line(&Event::Exited(ExitInfo {
            code: 137,
            signal: Some(9),
        })))
        .unwrap();
        assert_eq!(ev, "{\"event\":\"exited\",\"code\":137,\"signal\":9}\n");
    }

    #[test]
    fn wait_statuses_decode() {
        assert_eq!(
            ExitInfo::from_wait_status(3 << 8),
            ExitInfo {
                code: 3,
                signal: None
            }
        );
        assert_eq!(
            ExitInfo::from_wait_status(9),
            ExitInfo {
                code: 137,
                signal: Some(9)
            }
        );
    }
}
