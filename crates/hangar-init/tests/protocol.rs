//! Runs the real init binary as an ordinary child process (not PID 1, no
//! namespaces, no root needed) and drives it through its control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hangar_init::proto::{
    ErrorKind, Event, ExecRequest, FileSpec, Request, Response, StartRequest, StopRequest,
};

struct Init {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Init {
    fn spawn() -> Init {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("init.sock");
        let log = dir.path().join("log");
        let listener = UnixListener::bind(&socket).unwrap();
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let (lfd, logfd) = (listener.as_raw_fd(), log_file.as_raw_fd());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hangar-init"));
        cmd.arg(format!("--control-fd={lfd}"))
            .arg(format!("--log-fd={logfd}"));
        // SAFETY: only fcntl between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                for fd in [lfd, logfd] {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        Init {
            child,
            socket,
            log,
            _dir: dir,
        }
    }

    fn call(&self, req: &Request) -> Response {
        let mut s = UnixStream::connect(&self.socket).unwrap();
        s.write_all(&hangar_init::proto::encode_line(req)).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    fn exec(&self, argv: &[&str], stdin: &[u8], timeout_ms: u64) -> Response {
        self.call(&Request::Exec(ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            stdin: stdin.to_vec(),
            timeout_ms,
            ..ExecRequest::default()
        }))
    }
}

impl Drop for Init {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn runs_and_stops_a_main_process() {
    let init = Init::spawn();
    let dir = init._dir.path().to_path_buf();
    let mut watch = UnixStream::connect(&init.socket).unwrap();
    watch
        .write_all(&hangar_init::proto::encode_line(&Request::Watch))
        .unwrap();
    let mut watch = BufReader::new(watch);
    let mut line = String::new();
    watch.read_line(&mut line).unwrap();
    assert!(line.contains("\"status\""), "{line}");

    let marker = dir.join("file.txt");
    let resp = init.call(&Request::Start(StartRequest {
        argv: strings(&["sh", "-c", "echo hi; echo oops >&2; exec sleep 1000"]),
        env: strings(&["PATH=/usr/bin:/bin"]),
        files: vec![FileSpec {
            path: marker.to_string_lossy().into_owned(),
            contents: b"content".to_vec(),
            mode: 0o600,
        }],
        ..StartRequest::default()
    }));
    let Response::Started { pid } = resp else {
        panic!("{resp:?}")
    };
    assert_eq!(std::fs::read(&marker).unwrap(), b"content");
    assert!(matches!(
        init.call(&Request::Start(StartRequest {
            argv: strings(&["true"]),
            ..StartRequest::default()
        })),
        Response::Error {
            kind: ErrorKind::AlreadyRunning,
            ..
        }
    ));
    let Response::Status(status) = init.call(&Request::Status) else {
        panic!()
    };
    assert_eq!(status.pid, Some(pid));

    // Output reaches the log as JSON lines.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&init.log).unwrap();
        if log.contains("\"stream\":\"stdout\",\"message\":\"hi\"")
            && log.contains("\"stream\":\"stderr\",\"message\":\"oops\"")
        {
            break;
        }
        assert!(Instant::now() < deadline, "log: {log}");
        std::thread::yield_now();
    }

    let resp = init.call(&Request::Stop(StopRequest {
        signal: libc::SIGTERM,
        timeout_ms: 5000,
    }));
    let Response::Stopped { exit: Some(exit) } = resp else {
        panic!("{resp:?}")
    };
    assert_eq!(exit.signal, Some(libc::SIGTERM));
    line.clear();
    watch.read_line(&mut line).unwrap();
    let event: Event = serde_json::from_str(&line).unwrap();
    assert_eq!(event, Event::Exited(exit));
    assert_eq!(
        init.call(&Request::Stop(StopRequest::default())),
        Response::Stopped { exit: None }
    );
}

#[test]
fn exec_collects_output_and_honours_timeouts() {
    let init = Init::spawn();
    let Response::Exec(out) = init.exec(&["sh", "-c", "echo out; echo err >&2; exit 3"], b"", 0)
    else {
        panic!()
    };
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice(), out.exit.code),
        (&b"out\n"[..], &b"err\n"[..], 3)
    );
    let Response::Exec(out) = init.exec(&["cat"], b"from stdin", 0) else {
        panic!()
    };
    assert_eq!(out.stdout, b"from stdin");

    let started = Instant::now();
    let Response::Exec(out) = init.exec(&["sleep", "1000"], b"", 200) else {
        panic!()
    };
    assert!(out.timed_out);
    assert_eq!(out.exit.signal, Some(libc::SIGKILL));
    assert!(started.elapsed() < Duration::from_secs(10));

    match init.exec(&["no-such-command"], b"", 0) {
        Response::Error {
            kind: ErrorKind::InvalidCommand,
            message,
        } => assert_eq!(message, "executable file not found: no-such-command"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        init.exec(&[], b"", 0),
        Response::Error {
            kind: ErrorKind::InvalidCommand,
            ..
        }
    ));
    let resp = init.call(&Request::Exec(ExecRequest {
        argv: strings(&["true"]),
        cwd: "/no/such/dir".into(),
        ..ExecRequest::default()
    }));
    assert!(
        matches!(&resp, Response::Error { kind: ErrorKind::InvalidCommand, message } if message.contains("/no/such/dir")),
        "{resp:?}"
    );
}

/// Reads protocol lines until one that is not output, collecting stdout on the way.
fn read_reply(reader: &mut BufReader<UnixStream>, stdout: &mut Vec<u8>) -> Response {
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        match serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}")) {
            Response::Output {
                stderr: false,
                data,
            } => stdout.extend_from_slice(&data),
            Response::Output { .. } => {}
            other => return other,
        }
    }
}

#[test]
fn a_named_exec_takes_stdin_while_it_runs_until_eof() {
    let init = Init::spawn();
    let mut conn = UnixStream::connect(&init.socket).unwrap();
    let req = Request::Exec(ExecRequest {
        id: "job_in".into(),
        argv: strings(&["sh", "-c", "read line; echo got:$line; cat"]),
        stdin: b"first\n".to_vec(),
        keep_stdin: true,
        stream: true,
        ..ExecRequest::default()
    });
    conn.write_all(&hangar_init::proto::encode_line(&req))
        .unwrap();
    let mut reader = BufReader::new(conn);
    // First word: it runs (an empty piece of stdout), so input may be sent now.
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(
        serde_json::from_str::<Response>(&line).unwrap(),
        Response::Output {
            stderr: false,
            data: Vec::new()
        },
        "{line}"
    );
    // The first line came with the request; the command answers it and keeps reading.
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let Response::Output { data, .. } = serde_json::from_str(&line).unwrap() else {
        panic!("{line}")
    };
    assert_eq!(data, b"got:first\n");

    let send = |data: &[u8], eof: bool| {
        init.call(&Request::ExecStdin {
            id: "job_in".into(),
            data: data.to_vec(),
            eof,
        })
    };
    assert_eq!(send(b"more\n", false), Response::Ok);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(
        line.contains(&hangar_init::proto::base64::encode(b"more\n")),
        "{line}"
    );
    assert_eq!(send(b"last\n", true), Response::Ok);
    let mut stdout = Vec::new();
    let Response::Exec(out) = read_reply(&mut reader, &mut stdout) else {
        panic!()
    };
    assert_eq!(out.exit.code, 0, "cat ends at end of file");
    assert_eq!(out.stdout, b"got:first\nmore\nlast\n");
    // The exec is gone: more input is refused.
    assert!(matches!(
        send(b"late", false),
        Response::Error {
            kind: ErrorKind::NotRunning,
            ..
        }
    ));

    // An exec not asked to keep stdin open reads end of file and takes no more.
    let mut conn = UnixStream::connect(&init.socket).unwrap();
    let req = Request::Exec(ExecRequest {
        id: "job_plain".into(),
        argv: strings(&["sh", "-c", "cat; echo ready; sleep 1000"]),
        stream: true,
        ..ExecRequest::default()
    });
    conn.write_all(&hangar_init::proto::encode_line(&req))
        .unwrap();
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("\"output\""), "{line}");
    let refused = init.call(&Request::ExecStdin {
        id: "job_plain".into(),
        data: b"x".to_vec(),
        eof: false,
    });
    assert!(
        matches!(&refused, Response::Error { kind: ErrorKind::NotRunning, message } if message.contains("closed")),
        "{refused:?}"
    );
    // Dropping the connection kills the exec.
    drop(reader);
}

#[test]
fn garbage_gets_an_error_not_a_crash() {
    let init = Init::spawn();
    let mut s = UnixStream::connect(&init.socket).unwrap();
    s.write_all(b"{not json\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    assert!(line.contains("bad_request"), "{line}");
    assert!(matches!(init.call(&Request::Status), Response::Status(_)));
    assert_eq!(
        init.call(&Request::Signal { signal: 15 }),
        Response::error(ErrorKind::NotRunning, "no main process is running")
    );
}
