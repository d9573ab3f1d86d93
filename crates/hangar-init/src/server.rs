//! Init's event loop: one thread, one `poll`, one `waitpid(-1)`.
//!
//! Everything init waits for is a file descriptor: a signalfd (child exits and
//! signals to forward), the control socket, request connections, the main process's
//! output pipes and each running `exec`'s pipes. Deadlines (stop timeouts, exec
//! timeouts) become the `poll` timeout. Child statuses are only ever collected in
//! [`Init::reap`]; the main process and the `exec`s learn their status from there.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::logs::{Log, LogPipe};
use crate::proto::{
    self, ErrorKind, Event, ExecReply, ExecRequest, ExitInfo, FileSpec, Request, Response,
    StartRequest, StatusReply, StopRequest,
};
use crate::spawn::{self, Command, Stdio};
use crate::sys;

/// Signals init passes on to the main process.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGQUIT,
];

/// After an `exec`'s process ends, how long init still collects output that its
/// background children may write before replying.
const EXEC_LINGER: Duration = Duration::from_millis(100);

/// How long a reply may block on a client that does not read.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses `--control-fd=N --log-fd=N` and runs init; never returns.
pub fn run() -> ! {
    let mut control = None;
    let mut log = None;
    for arg in std::env::args().skip(1) {
        if let Some(v) = arg.strip_prefix("--control-fd=") {
            control = v.parse::<RawFd>().ok();
        } else if let Some(v) = arg.strip_prefix("--log-fd=") {
            log = v.parse::<RawFd>().ok();
        }
    }
    let (Some(control), Some(log)) = (control, log) else {
        eprintln!("usage: hangar-init --control-fd=N --log-fd=N");
        std::process::exit(2);
    };
    match Init::new(control, log).and_then(|mut init| init.run()) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            Log::new(log).init(&format!("init failed: {e}"));
            std::process::exit(1)
        }
    }
}

struct MainProcess {
    pid: libc::pid_t,
}

/// A connection whose request line is still being read.
struct Pending {
    fd: RawFd,
    buf: Vec<u8>,
}

/// The write end of an `exec`'s stdin and what is still to be written to it.
struct StdinPipe {
    fd: RawFd,
    pending: Vec<u8>,
    /// How much of `pending` was written.
    off: usize,
    /// More may come ([`Request::ExecStdin`]); closed once `pending` is written if not.
    keep_open: bool,
}

impl StdinPipe {
    fn unwritten(&self) -> usize {
        self.pending.len() - self.off
    }

    /// Writes what it can without blocking. `false` once the pipe is done with:
    /// everything written and no more to come, or the command closed its end.
    fn pump(&mut self) -> bool {
        while self.off < self.pending.len() {
            match sys::write(self.fd, &self.pending[self.off..]) {
                Ok(n) => self.off += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        self.pending.clear();
        self.off = 0;
        self.keep_open
    }
}

struct ExecSession {
    id: String,
    stream: bool,
    conn: RawFd,
    pid: libc::pid_t,
    stdin: Option<StdinPipe>,
    outputs: [Option<RawFd>; 2],
    collected: [Vec<u8>; 2],
    truncated: [bool; 2],
    exit: Option<ExitInfo>,
    deadline: Option<Instant>,
    linger_until: Option<Instant>,
    timed_out: bool,
}

impl ExecSession {
    fn done(&self, now: Instant) -> bool {
        self.exit.is_some()
            && (self.outputs.iter().all(Option::is_none)
                || self.linger_until.is_some_and(|t| now >= t))
    }
}

struct Init {
    pid1: bool,
    listener: RawFd,
    log: Log,
    sigfd: RawFd,
    devnull: RawFd,
    pending: Vec<Pending>,
    watchers: Vec<RawFd>,
    main: Option<MainProcess>,
    main_env: Vec<String>,
    last_exit: Option<ExitInfo>,
    main_pipes: Vec<LogPipe>,
    stop_waiters: Vec<RawFd>,
    stop_deadline: Option<Instant>,
    execs: Vec<ExecSession>,
    shutdown: bool,
}

#[derive(Clone, Copy)]
enum Source {
    Signals,
    Listener,
    Pending(RawFd),
    Watcher(RawFd),
    MainPipe(RawFd),
    ExecOut(RawFd),
    ExecIn(RawFd),
    ExecConn(RawFd),
}

impl Init {
    fn new(listener: RawFd, log_fd: RawFd) -> io::Result<Self> {
        sys::set_cloexec(listener)?;
        sys::set_cloexec(log_fd)?;
        sys::set_nonblocking(listener, true)?;
        // Processes in the machine run as the same root with the same capabilities;
        // without this they could open init's control socket and the host log file
        // through /proc/1/fd.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        // SAFETY: getpid has no preconditions.
        let pid1 = unsafe { libc::getpid() } == 1;
        if !pid1 {
            // Outside a PID namespace (tests), orphans still come to us.
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        }
        // SAFETY: signal setup with valid, zeroed structures.
        let sigfd = unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            for sig in FORWARDED {
                libc::sigaddset(&mut set, sig);
                // PID 1 drops signals that have the default disposition, even
                // blocked ones sent from outside: give them a handler.
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = noop_handler as *const () as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            sys::cvt(libc::signalfd(
                -1,
                &set,
                libc::SFD_CLOEXEC | libc::SFD_NONBLOCK,
            ))?
        };
        // SAFETY: opening a constant path.
        let devnull = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        let devnull = sys::cvt(devnull)?;
        let init = Init {
            pid1,
            listener,
            log: Log::new(log_fd),
            sigfd,
            devnull,
            pending: Vec::new(),
            watchers: Vec::new(),
            main: None,
            main_env: Vec::new(),
            last_exit: None,
            main_pipes: Vec::new(),
            stop_waiters: Vec::new(),
            stop_deadline: None,
            execs: Vec::new(),
            shutdown: false,
        };
        Ok(init)
    }

    fn run(&mut self) -> io::Result<()> {
        // Children that ended before the signalfd existed.
        self.reap();
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut sources: Vec<Source> = Vec::new();
        while !self.shutdown {
            fds.clear();
            sources.clear();
            let mut add = |fd: RawFd, events: libc::c_short, src: Source| {
                fds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
                sources.push(src);
            };
            add(self.sigfd, libc::POLLIN, Source::Signals);
            add(self.listener, libc::POLLIN, Source::Listener);
            for p in &self.pending {
                add(p.fd, libc::POLLIN, Source::Pending(p.fd));
            }
            for &w in &self.watchers {
                add(w, libc::POLLIN, Source::Watcher(w));
            }
            for p in &self.main_pipes {
                add(p.fd, libc::POLLIN, Source::MainPipe(p.fd));
            }
            for e in &self.execs {
                for fd in e.outputs.iter().flatten() {
                    add(*fd, libc::POLLIN, Source::ExecOut(*fd));
                }
                // An open stdin with nothing to write is not polled: it would
                // always be writable.
                if let Some(pipe) = e.stdin.as_ref().filter(|p| p.unwritten() > 0) {
                    add(pipe.fd, libc::POLLOUT, Source::ExecIn(pipe.fd));
                }
                add(e.conn, libc::POLLIN, Source::ExecConn(e.conn));
            }
            let timeout = self.next_deadline().map_or(-1, |t| {
                let ms = t.saturating_duration_since(Instant::now()).as_millis();
                // Round up so we never spin just before a deadline.
                (ms + 1).min(i32::MAX as u128) as i32
            });
            // SAFETY: `fds` is a valid array of pollfd of the given length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            for i in 0..fds.len() {
                if fds[i].revents != 0 {
                    self.handle(sources[i]);
                }
            }
            self.check_deadlines();
        }
        Ok(())
    }

    fn next_deadline(&self) -> Option<Instant> {
        let execs = self
            .execs
            .iter()
            .flat_map(|e| [e.deadline.filter(|_| !e.timed_out), e.linger_until]);
        execs.chain([self.stop_deadline]).flatten().min()
    }

    fn handle(&mut self, src: Source) {
        match src {
            Source::Signals => self.on_signals(),
            Source::Listener => self.accept(),
            Source::Pending(fd) => self.read_request(fd),
            Source::Watcher(fd) => {
                let mut buf = [0u8; 64];
                if !matches!(sys::read(fd, &mut buf), Ok(n) if n > 0) {
                    self.watchers.retain(|&w| w != fd);
                    sys::close(fd);
                }
            }
            Source::MainPipe(fd) => {
                if let Some(i) = self.main_pipes.iter().position(|p| p.fd == fd)
                    && !self.main_pipes[i].pump(&self.log)
                {
                    self.main_pipes.remove(i);
                }
            }
            Source::ExecOut(fd) => self.exec_output(fd),
            Source::ExecIn(fd) => self.exec_input(fd),
            Source::ExecConn(fd) => {
                // The client sends nothing after its request: readable means it left.
                let mut buf = [0u8; 64];
                if matches!(sys::read(fd, &mut buf), Ok(0) | Err(_))
                    && let Some(e) = self.execs.iter_mut().find(|e| e.conn == fd)
                {
                    if e.exit.is_none() {
                        let _ = sys::kill(-e.pid, libc::SIGKILL);
                        let _ = sys::kill(e.pid, libc::SIGKILL);
                    }
                    sys::close(e.conn);
                    e.conn = -1;
                }
            }
        }
        self.finish_execs();
    }

    fn on_signals(&mut self) {
        let mut info: libc::signalfd_siginfo = unsafe {
            // SAFETY: plain-old-data structure.
            std::mem::zeroed()
        };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        let mut child = false;
        loop {
            // SAFETY: reading one siginfo into a correctly sized buffer.
            let n = unsafe {
                libc::read(
                    self.sigfd,
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if n != size as isize {
                break;
            }
            let sig = info.ssi_signo as libc::c_int;
            if sig == libc::SIGCHLD {
                child = true;
            } else if let Some(main) = &self.main {
                let _ = sys::kill(main.pid, sig);
            }
        }
        if child {
            self.reap();
        }
    }

    /// The one place child statuses are collected.
    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: `status` is a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            let exit = ExitInfo::from_wait_status(status);
            if self.main.as_ref().is_some_and(|m| m.pid == pid) {
                self.main_exited(exit);
            } else if let Some(e) = self.execs.iter_mut().find(|e| e.pid == pid) {
                e.exit = Some(exit);
                e.linger_until = Some(Instant::now() + EXEC_LINGER);
            }
            // Anything else is an orphan that re-parented to us: collected, done.
        }
    }

    fn main_exited(&mut self, exit: ExitInfo) {
        self.main = None;
        self.last_exit = Some(exit);
        // What the process printed before it ended belongs before the exit note.
        self.main_pipes.retain_mut(|p| p.pump(&self.log));
        let how = match exit.signal {
            Some(sig) => format!("main process killed by signal {sig}"),
            None => format!("main process exited with code {}", exit.code),
        };
        self.log.init(&how);
        // The machine is stopped when its main process ends: nothing may linger.
        self.kill_everything();
        let event = proto::encode_line(&Event::Exited(exit));
        self.watchers.retain(|&w| {
            // Watchers are non-blocking; one that cannot take a short line is gone.
            if matches!(sys::write(w, &event), Ok(n) if n == event.len()) {
                true
            } else {
                sys::close(w);
                false
            }
        });
        self.stop_deadline = None;
        for fd in std::mem::take(&mut self.stop_waiters) {
            reply(fd, &Response::Stopped { exit: Some(exit) });
        }
    }

    /// SIGKILLs every process in the machine except init.
    fn kill_everything(&mut self) {
        if self.pid1 {
            // In our own PID namespace, -1 means exactly "everyone but me".
            let _ = sys::kill(-1, libc::SIGKILL);
        } else {
            if let Some(m) = &self.main {
                let _ = sys::kill(-m.pid, libc::SIGKILL);
            }
            for e in &self.execs {
                let _ = sys::kill(-e.pid, libc::SIGKILL);
            }
        }
    }

    fn check_deadlines(&mut self) {
        let now = Instant::now();
        if self.stop_deadline.is_some_and(|t| now >= t) {
            self.stop_deadline = None;
            if let Some(main) = &self.main {
                let _ = sys::kill(main.pid, libc::SIGKILL);
            }
            self.kill_everything();
        }
        for e in &mut self.execs {
            if !e.timed_out && e.exit.is_none() && e.deadline.is_some_and(|t| now >= t) {
                e.timed_out = true;
                let _ = sys::kill(-e.pid, libc::SIGKILL);
                let _ = sys::kill(e.pid, libc::SIGKILL);
            }
        }
        self.finish_execs();
    }

    fn accept(&mut self) {
        loop {
            // SAFETY: accepting on our listener without peer address.
            let fd = unsafe {
                libc::accept4(
                    self.listener,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if fd < 0 {
                return;
            }
            let tv = libc::timeval {
                tv_sec: SEND_TIMEOUT.as_secs() as libc::time_t,
                tv_usec: 0,
            };
            // SAFETY: setting a socket option from a valid timeval.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_SNDTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            self.pending.push(Pending {
                fd,
                buf: Vec::new(),
            });
            // Most clients have written their request by now.
            self.read_request(fd);
        }
    }

    fn read_request(&mut self, fd: RawFd) {
        let Some(i) = self.pending.iter().position(|p| p.fd == fd) else {
            return;
        };
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let p = &mut self.pending[i];
            match sys::read(fd, &mut chunk) {
                Ok(0) => {
                    self.pending.remove(i);
                    sys::close(fd);
                    return;
                }
                Ok(n) => {
                    let start = p.buf.len();
                    p.buf.extend_from_slice(&chunk[..n]);
                    if let Some(pos) = p.buf[start..].iter().position(|&b| b == b'\n') {
                        let p = self.pending.remove(i);
                        let line = &p.buf[..start + pos];
                        let parsed = serde_json::from_slice::<Request>(line);
                        drop(p.buf);
                        match parsed {
                            Ok(req) => self.dispatch(fd, req),
                            Err(e) => reply(
                                fd,
                                &Response::error(
                                    ErrorKind::BadRequest,
                                    format!("bad request: {e}"),
                                ),
                            ),
                        }
                        return;
                    }
                    if p.buf.len() > proto::MAX_REQUEST {
                        self.pending.remove(i);
                        reply(
                            fd,
                            &Response::error(ErrorKind::BadRequest, "request too large"),
                        );
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.pending.remove(i);
                    sys::close(fd);
                    return;
                }
            }
        }
    }

    fn dispatch(&mut self, fd: RawFd, req: Request) {
        match req {
            Request::Status => reply(fd, &Response::Status(self.status())),
            Request::Start(start) => {
                let resp = self.start(start);
                reply(fd, &resp);
            }
            Request::Stop(stop) => self.stop(fd, stop),
            Request::Signal { signal } => {
                let resp = match &self.main {
                    None => Response::error(ErrorKind::NotRunning, "no main process is running"),
                    Some(m) => match sys::kill(m.pid, signal) {
                        Ok(()) => Response::Ok,
                        Err(e) => {
                            Response::error(ErrorKind::BadRequest, format!("signal {signal}: {e}"))
                        }
                    },
                };
                reply(fd, &resp);
            }
            Request::Exec(exec) => self.exec(fd, exec),
            Request::Kill { id, signal } => {
                let resp = self.kill_exec(&id, signal);
                reply(fd, &resp);
            }
            Request::ExecStdin { id, data, eof } => {
                let resp = self.exec_stdin(&id, data, eof);
                reply(fd, &resp);
            }
            Request::Ps => reply(
                fd,
                &Response::Ps {
                    processes: crate::ps::list(),
                },
            ),
            Request::Watch => {
                let status = proto::encode_line(&Response::Status(self.status()));
                if sys::write(fd, &status).is_ok_and(|n| n == status.len()) {
                    self.watchers.push(fd);
                } else {
                    sys::close(fd);
                }
            }
            Request::Shutdown => {
                self.log.init("shutting down");
                self.kill_everything();
                reply(fd, &Response::Ok);
                self.shutdown = true;
            }
        }
    }

    fn status(&self) -> StatusReply {
        StatusReply {
            pid: self.main.as_ref().map(|m| m.pid),
            last_exit: self.last_exit,
        }
    }

    fn start(&mut self, req: StartRequest) -> Response {
        if let Some(m) = &self.main {
            return Response::error(
                ErrorKind::AlreadyRunning,
                format!("the main process is already running as pid {}", m.pid),
            );
        }
        for file in &req.files {
            if let Err(e) = write_file(file) {
                return Response::error(
                    ErrorKind::BadRequest,
                    format!("writing {}: {e}", file.path),
                );
            }
        }
        let (out_r, out_w) = match sys::pipe() {
            Ok(p) => p,
            Err(e) => return Response::error(ErrorKind::Internal, format!("pipe: {e}")),
        };
        let (err_r, err_w) = match sys::pipe() {
            Ok(p) => p,
            Err(e) => {
                sys::close(out_r);
                sys::close(out_w);
                return Response::error(ErrorKind::Internal, format!("pipe: {e}"));
            }
        };
        let cmd = Command {
            argv: req.argv,
            env: req.env,
            cwd: req.cwd,
            user: req.user,
        };
        let stdio = Stdio {
            stdin: self.devnull,
            stdout: out_w,
            stderr: err_w,
        };
        let result = spawn::spawn(&cmd, &stdio);
        sys::close(out_w);
        sys::close(err_w);
        match result {
            Ok(pid) => {
                let _ = sys::set_nonblocking(out_r, true);
                let _ = sys::set_nonblocking(err_r, true);
                self.main_pipes.push(LogPipe::new(out_r, "stdout"));
                self.main_pipes.push(LogPipe::new(err_r, "stderr"));
                self.main = Some(MainProcess { pid });
                self.main_env = cmd.env;
                self.log
                    .init(&format!("started {:?} as pid {pid}", cmd.argv));
                Response::Started { pid }
            }
            Err((caller, message)) => {
                sys::close(out_r);
                sys::close(err_r);
                self.log
                    .init(&format!("could not start {:?}: {message}", cmd.argv));
                let kind = if caller {
                    ErrorKind::InvalidCommand
                } else {
                    ErrorKind::Internal
                };
                Response::error(kind, message)
            }
        }
    }

    fn stop(&mut self, fd: RawFd, req: StopRequest) {
        let Some(main) = &self.main else {
            reply(fd, &Response::Stopped { exit: None });
            return;
        };
        let signal = if req.signal > 0 {
            req.signal
        } else {
            libc::SIGTERM
        };
        let _ = sys::kill(main.pid, signal);
        let deadline = Instant::now() + Duration::from_millis(req.timeout_ms);
        self.stop_deadline = Some(self.stop_deadline.map_or(deadline, |d| d.min(deadline)));
        let _ = sys::set_nonblocking(fd, false);
        self.stop_waiters.push(fd);
        if req.timeout_ms == 0 {
            self.check_deadlines();
        }
    }

    /// Signals the whole process group of a running exec, so a shell's children
    /// (`sh -c 'sleep 300'`) get it too.
    fn kill_exec(&mut self, id: &str, signal: i32) -> Response {
        let Some(e) = self
            .execs
            .iter()
            .find(|e| !id.is_empty() && e.id == id && e.exit.is_none())
        else {
            return Response::error(
                ErrorKind::NotRunning,
                format!("no running exec is named {id:?}"),
            );
        };
        // The group may already be empty while the leader is not yet reaped.
        match sys::kill(-e.pid, signal).or_else(|_| sys::kill(e.pid, signal)) {
            Ok(()) => Response::Ok,
            Err(err) => Response::error(ErrorKind::BadRequest, format!("signal {signal}: {err}")),
        }
    }

    /// Queues input for a running exec's stdin and writes what the pipe takes now.
    fn exec_stdin(&mut self, id: &str, data: Vec<u8>, eof: bool) -> Response {
        let Some(e) = self
            .execs
            .iter_mut()
            .find(|e| !id.is_empty() && e.id == id && e.exit.is_none())
        else {
            return Response::error(
                ErrorKind::NotRunning,
                format!("no running exec is named {id:?}"),
            );
        };
        let Some(pipe) = e.stdin.as_mut() else {
            return Response::error(
                ErrorKind::NotRunning,
                format!("the stdin of exec {id:?} is closed"),
            );
        };
        if pipe.unwritten() + data.len() > proto::MAX_STDIN_PENDING {
            return Response::error(
                ErrorKind::Busy,
                format!(
                    "exec {id:?} has {} bytes of stdin it has not read yet; send more once it reads",
                    pipe.unwritten()
                ),
            );
        }
        pipe.pending.drain(..pipe.off);
        pipe.off = 0;
        pipe.pending.extend_from_slice(&data);
        if eof {
            pipe.keep_open = false;
        }
        if !pipe.pump() {
            let unread = pipe.unwritten();
            sys::close(pipe.fd);
            e.stdin = None;
            if unread > 0 {
                return Response::error(
                    ErrorKind::NotRunning,
                    format!("exec {id:?} closed its stdin; {unread} bytes were not read"),
                );
            }
        }
        Response::Ok
    }

    fn exec(&mut self, conn: RawFd, req: ExecRequest) {
        if !req.id.is_empty() && self.execs.iter().any(|e| e.id == req.id) {
            reply(
                conn,
                &Response::error(
                    ErrorKind::AlreadyRunning,
                    format!("an exec named {:?} is already running", req.id),
                ),
            );
            return;
        }
        let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = match three_pipes() {
            Ok(p) => p,
            Err(e) => {
                reply(
                    conn,
                    &Response::error(ErrorKind::Internal, format!("pipe: {e}")),
                );
                return;
            }
        };
        let cmd = Command {
            argv: req.argv,
            env: spawn::merge_env(&self.main_env, &req.env),
            cwd: req.cwd,
            user: req.user,
        };
        let stdio = Stdio {
            stdin: in_r,
            stdout: out_w,
            stderr: err_w,
        };
        let result = spawn::spawn(&cmd, &stdio);
        for fd in [in_r, out_w, err_w] {
            sys::close(fd);
        }
        let pid = match result {
            Ok(pid) => pid,
            Err((caller, message)) => {
                for fd in [in_w, out_r, err_r] {
                    sys::close(fd);
                }
                let kind = if caller {
                    ErrorKind::InvalidCommand
                } else {
                    ErrorKind::Internal
                };
                reply(conn, &Response::error(kind, message));
                return;
            }
        };
        for fd in [in_w, out_r, err_r] {
            let _ = sys::set_nonblocking(fd, true);
        }
        // Only a named exec can be sent more input later.
        let keep_open = req.keep_stdin && !req.id.is_empty();
        let stdin = if req.stdin.is_empty() && !keep_open {
            sys::close(in_w);
            None
        } else {
            Some(StdinPipe {
                fd: in_w,
                pending: req.stdin,
                off: 0,
                keep_open,
            })
        };
        self.execs.push(ExecSession {
            id: req.id,
            stream: req.stream,
            conn,
            pid,
            stdin,
            outputs: [Some(out_r), Some(err_r)],
            collected: [Vec::new(), Vec::new()],
            truncated: [false, false],
            exit: None,
            deadline: (req.timeout_ms > 0)
                .then(|| Instant::now() + Duration::from_millis(req.timeout_ms)),
            linger_until: None,
            timed_out: false,
        });
        // A streaming exec's client hears at once that it runs: input it sends from
        // now on (on another connection) finds the exec here.
        if let Some(e) = self.execs.last_mut()
            && e.stream
            && e.conn >= 0
        {
            let line = proto::encode_line(&Response::Output {
                stderr: false,
                data: Vec::new(),
            });
            let _ = sys::set_nonblocking(e.conn, false);
            if sys::write_all(e.conn, &line).is_err() {
                e.stream = false;
            }
            let _ = sys::set_nonblocking(e.conn, true);
        }
    }

    fn exec_output(&mut self, fd: RawFd) {
        let Some(e) = self
            .execs
            .iter_mut()
            .find(|e| e.outputs.contains(&Some(fd)))
        else {
            return;
        };
        let i = usize::from(e.outputs[1] == Some(fd));
        let mut buf = [0u8; 64 * 1024];
        loop {
            match sys::read(fd, &mut buf) {
                Ok(n) if n > 0 => {
                    let room = proto::MAX_EXEC_OUTPUT.saturating_sub(e.collected[i].len());
                    e.collected[i].extend_from_slice(&buf[..n.min(room)]);
                    if e.stream && e.conn >= 0 && n.min(room) > 0 {
                        let line = proto::encode_line(&Response::Output {
                            stderr: i == 1,
                            data: buf[..n.min(room)].to_vec(),
                        });
                        // Blocking (bounded by the send timeout) so a line is never
                        // cut; a client that stops reading loses its stream.
                        let _ = sys::set_nonblocking(e.conn, false);
                        let sent = sys::write_all(e.conn, &line);
                        let _ = sys::set_nonblocking(e.conn, true);
                        if sent.is_err() {
                            e.stream = false;
                        }
                    }
                    if n > room {
                        e.truncated[i] = true;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                // End of file or a broken pipe: the stream is over.
                _ => {
                    sys::close(fd);
                    e.outputs[i] = None;
                    return;
                }
            }
        }
    }

    fn exec_input(&mut self, fd: RawFd) {
        let Some(e) = self
            .execs
            .iter_mut()
            .find(|e| e.stdin.as_ref().is_some_and(|p| p.fd == fd))
        else {
            return;
        };
        if let Some(pipe) = e.stdin.as_mut()
            && !pipe.pump()
        {
            sys::close(fd);
            e.stdin = None;
        }
    }

    /// Replies to every `exec` that is complete.
    fn finish_execs(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.execs.len() {
            if !self.execs[i].done(now) {
                i += 1;
                continue;
            }
            let e = self.execs.swap_remove(i);
            for fd in e.outputs.into_iter().flatten() {
                sys::close(fd);
            }
            if let Some(pipe) = e.stdin {
                sys::close(pipe.fd);
            }
            let [stdout, stderr] = e.collected;
            let big = stdout.len() + stderr.len() > 1 << 20;
            if e.conn >= 0 {
                let _ = sys::set_nonblocking(e.conn, false);
                reply(
                    e.conn,
                    &Response::Exec(ExecReply {
                        stdout,
                        stderr,
                        stdout_truncated: e.truncated[0],
                        stderr_truncated: e.truncated[1],
                        exit: e.exit.unwrap_or_default(),
                        timed_out: e.timed_out,
                    }),
                );
            }
            if big {
                // Give large buffers back so an idle machine stays small.
                // SAFETY: malloc_trim has no preconditions.
                unsafe { libc::malloc_trim(0) };
            }
        }
    }
}

type PipePair = (RawFd, RawFd);

/// stdin, stdout and stderr pipes for an `exec`; none leak when one fails.
fn three_pipes() -> io::Result<(PipePair, PipePair, PipePair)> {
    let a = sys::pipe()?;
    let b = sys::pipe().inspect_err(|_| [a.0, a.1].into_iter().for_each(sys::close))?;
    let c = sys::pipe().inspect_err(|_| [a.0, a.1, b.0, b.1].into_iter().for_each(sys::close))?;
    Ok((a, b, c))
}

extern "C" fn noop_handler(_: libc::c_int) {}

/// Writes one response line and closes the connection.
fn reply(fd: RawFd, resp: &Response) {
    let _ = sys::set_nonblocking(fd, false);
    let _ = sys::write_all(fd, &proto::encode_line(resp));
    sys::close(fd);
}

fn write_file(file: &FileSpec) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = std::path::Path::new(&file.path);
    if !path.is_absolute() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path must be absolute",
        ));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mode = if file.mode == 0 {
        0o644
    } else {
        file.mode & 0o7777
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    std::io::Write::write_all(&mut f, &file.contents)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
}
