//! Starting a child process: resolve the command, fork, set the child up, exec.
//!
//! Init is single-threaded, so `fork` is safe here. Failures between `fork` and
//! `exec` travel back over a close-on-exec pipe, so the caller learns "executable
//! not found" or "no such directory" as an error instead of a process exiting 127.
//! The child is never waited for here: the central reaper in the server collects it.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::sys;
use crate::users::{self, Identity};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to run, already validated.
pub struct Command {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
}

/// Why a command could not be started: `(is_the_callers_fault, message)`.
pub type SpawnError = (bool, String);

/// The child's standard streams: fds that are dup'ed onto 0, 1 and 2.
pub struct Stdio {
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
}

/// Merges `overrides` over `base` by key; later entries win.
pub fn merge_env(base: &[String], overrides: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(base.len() + overrides.len());
    for kv in base.iter().chain(overrides) {
        let key = kv.split('=').next().unwrap_or("");
        match out.iter_mut().find(|e| e.split('=').next() == Some(key)) {
            Some(slot) => *slot = kv.clone(),
            None => out.push(kv.clone()),
        }
    }
    out
}

fn env_get<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .find_map(|kv| kv.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

/// Finds `name` in `path` like `execvp` would.
fn lookup(name: &str, path: &str) -> Option<String> {
    if name.contains('/') {
        return Some(name.to_string());
    }
    path.split(':').find_map(|dir| {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(name);
        let meta = std::fs::metadata(&candidate).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0)
            .then(|| candidate.to_string_lossy().into_owned())
    })
}

fn cstring(s: &str, what: &str) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| (true, format!("{what} contains a NUL byte")))
}

/// Stages reported by the child over the error pipe.
const STAGE_CHDIR: u8 = 1;
const STAGE_IDS: u8 = 2;
const STAGE_EXEC: u8 = 3;
const STAGE_STDIO: u8 = 4;

/// Forks and executes `cmd`; returns the child's pid once `execve` succeeded.
pub fn spawn(cmd: &Command, stdio: &Stdio) -> Result<libc::pid_t, SpawnError> {
    let Some(arg0) = cmd.argv.first().filter(|a| !a.is_empty()) else {
        return Err((true, "empty command".into()));
    };
    let ident: Identity = users::resolve(&cmd.user, Path::new("/")).map_err(|e| (true, e))?;
    let mut env = cmd.env.clone();
    if env_get(&env, "PATH").is_none() {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if env_get(&env, "HOME").is_none() {
        env.push(format!("HOME={}", ident.home));
    }
    let path = env_get(&env, "PATH").unwrap_or(DEFAULT_PATH);
    let exe =
        lookup(arg0, path).ok_or_else(|| (true, format!("executable file not found: {arg0}")))?;
    let exe_c = cstring(&exe, "command")?;
    let argv_c = cmd
        .argv
        .iter()
        .map(|a| cstring(a, "argument"))
        .collect::<Result<Vec<_>, _>>()?;
    let env_c = env
        .iter()
        .map(|e| cstring(e, "environment"))
        .collect::<Result<Vec<_>, _>>()?;
    let cwd = if cmd.cwd.is_empty() { "/" } else { &cmd.cwd };
    let cwd_c = cstring(cwd, "working directory")?;
    let mut argv_p: Vec<*const libc::c_char> = argv_c.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env_c.iter().map(|e| e.as_ptr()).collect();
    env_p.push(std::ptr::null());
    let groups: Vec<libc::gid_t> = ident.groups.clone();

    let (err_r, err_w) = sys::pipe().map_err(|e| (false, format!("pipe: {e}")))?;
    // SAFETY: init is single-threaded; the child only makes system calls on data
    // prepared above and then execs or exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        sys::close(err_r);
        sys::close(err_w);
        return Err((false, format!("fork: {e}")));
    }
    if pid == 0 {
        // SAFETY: in the child; see `child`.
        unsafe {
            child(
                err_w, stdio, &ident, &groups, &cwd_c, &exe_c, &argv_p, &env_p,
            )
        }
    }
    sys::close(err_w);
    let mut report = [0u8; 5];
    let mut got = 0;
    while got < report.len() {
        match sys::read(err_r, &mut report[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    sys::close(err_r);
    if got == 0 {
        return Ok(pid);
    }
    let errno = i32::from_le_bytes([report[1], report[2], report[3], report[4]]);
    let why = sys::errno_message(errno);
    Err(match report[0] {
        STAGE_CHDIR => (true, format!("working directory {cwd}: {why}")),
        STAGE_IDS => (true, format!("switching to user {:?}: {why}", cmd.user)),
        STAGE_EXEC => (true, format!("exec {exe}: {why}")),
        _ => (false, format!("setting up the process: {why}")),
    })
}

/// Runs in the forked child: never returns.
///
/// # Safety
/// Must only be called in a freshly forked child of a single-threaded process.
#[allow(clippy::too_many_arguments)]
unsafe fn child(
    err_w: RawFd,
    stdio: &Stdio,
    ident: &Identity,
    groups: &[libc::gid_t],
    cwd: &CString,
    exe: &CString,
    argv: &[*const libc::c_char],
    env: &[*const libc::c_char],
) -> ! {
    let fail = |stage: u8| -> ! {
        // SAFETY: errno location is thread-local and valid; write/_exit are
        // async-signal-safe.
        unsafe {
            let errno = *libc::__errno_location();
            let mut msg = [stage, 0, 0, 0, 0];
            msg[1..].copy_from_slice(&errno.to_le_bytes());
            libc::write(err_w, msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        }
    };
    // SAFETY: plain system calls on valid arguments in a single-threaded child.
    unsafe {
        // A clean slate of signals: default dispositions, nothing blocked.
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

        libc::setsid();
        for (src, dst) in [(stdio.stdin, 0), (stdio.stdout, 1), (stdio.stderr, 2)] {
            if libc::dup2(src, dst) < 0 {
                fail(STAGE_STDIO);
            }
        }
        if libc::setgroups(groups.len(), groups.as_ptr()) < 0
            || libc::setgid(ident.gid) < 0
            || libc::setuid(ident.uid) < 0
        {
            fail(STAGE_IDS);
        }
        if libc::chdir(cwd.as_ptr()) < 0 {
            fail(STAGE_CHDIR);
        }
        libc::execve(exe.as_ptr(), argv.as_ptr(), env.as_ptr());
        fail(STAGE_EXEC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_merges_by_key() {
        let base = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        let over = vec!["A=2".to_string(), "B=3".to_string()];
        assert_eq!(merge_env(&base, &over), vec!["PATH=/bin", "A=2", "B=3"]);
        assert_eq!(env_get(&base, "PATH"), Some("/bin"));
        assert_eq!(env_get(&base, "PAT"), None);
    }

    #[test]
    fn lookup_searches_path() {
        assert_eq!(lookup("/x/y", ""), Some("/x/y".into()));
        assert!(lookup("sh", DEFAULT_PATH).is_some());
        assert_eq!(lookup("no-such-binary-anywhere", DEFAULT_PATH), None);
    }
}
