//! The boot helper: the short-lived process that builds a sandbox and becomes (by
//! forking) the machine's PID 1.
//!
//! The daemon is multithreaded and must never fork, so [`SandboxDriver::create`]
//! re-executes a binary (the configured `boot_exe`, normally the `hangar` binary
//! itself) with the hidden subcommand [`BOOT_SUBCOMMAND`]. That binary must call
//! [`run_if_requested`] first thing in `main`, before starting any threads.
//!
//! The helper joins the machine's cgroups, binds the control socket and opens the
//! log and init executable on the host, unshares the namespaces and forks. The child
//! (PID 1 of the new PID namespace) takes its own mount namespace, mounts the overlay
//! root and the rest of the file system, drops privileges and executes init from the file descriptor opened
//! earlier, so nothing of hangar is ever copied into the image. The helper reports
//! `ready PID` on stdout once init has been executed (or the error on stderr) and
//! exits; init is re-parented away from the daemon and outlives it.
//!
//! [`SandboxDriver::create`]: super::SandboxDriver

use std::ffi::{CString, OsStr};
use std::fs::OpenOptions;
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, fork, sethostname};
use serde::{Deserialize, Serialize};

use super::{caps, rootfs, seccomp};

/// The hidden first argument that turns the re-executed binary into the boot helper.
pub const BOOT_SUBCOMMAND: &str = "__sandbox-boot";

/// What the driver tells the helper, as JSON in a file in the machine's directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BootConfig {
    pub machine_id: String,
    /// Image layers, topmost first.
    pub lower: Vec<String>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub rootfs: PathBuf,
    pub init: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub pidfile: PathBuf,
    pub cgroup_procs: Vec<PathBuf>,
    /// Volumes: a loop device each, mounted at a path inside the machine.
    #[serde(default)]
    pub mounts: Vec<BootMount>,
    /// Bind-mounted on the machine's `/etc/resolv.conf` (the image is not changed).
    #[serde(default)]
    pub resolv_conf: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BootMount {
    pub device: PathBuf,
    pub path: String,
}

/// Runs the boot helper and exits if this process was started as one; returns at
/// once otherwise. Call it first thing in `main`, before any threads exist (so
/// before starting an async runtime).
pub fn run_if_requested() {
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() != Some(OsStr::new(BOOT_SUBCOMMAND)) {
        return;
    }
    let code = match args.next() {
        Some(config) => match boot(Path::new(&config)) {
            Ok(pid) => {
                println!("ready {pid}");
                0
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        },
        None => {
            eprintln!("usage: {BOOT_SUBCOMMAND} CONFIG");
            2
        }
    };
    std::process::exit(code)
}

fn ctx<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Builds the sandbox; returns init's pid on the host.
fn boot(config_path: &Path) -> Result<i32, String> {
    let config: BootConfig = serde_json::from_slice(
        &std::fs::read(config_path).map_err(ctx("reading the boot config"))?,
    )
    .map_err(ctx("parsing the boot config"))?;

    // Leave the daemon's session: a terminal's ^C to the daemon must not reach machines.
    let _ = nix::unistd::setsid();
    let me = std::process::id().to_string();
    for procs in &config.cgroup_procs {
        std::fs::write(procs, &me).map_err(ctx(&format!("joining {}", procs.display())))?;
    }

    let init = OpenOptions::new()
        .read(true)
        .open(&config.init)
        .map_err(ctx("opening the init executable"))?;
    let log = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(&config.log)
        .map_err(ctx("opening the log"))?;
    let _ = std::fs::remove_file(&config.socket);
    let listener = UnixListener::bind(&config.socket).map_err(ctx("binding the control socket"))?;
    std::fs::set_permissions(&config.socket, std::fs::Permissions::from_mode(0o600))
        .map_err(ctx("securing the control socket"))?;
    let filters = seccomp::filters().map_err(ctx("building the seccomp filter"))?;

    // The mount namespace is the child's own (below): pivot_root moves the root of
    // every process in a namespace, and this helper must keep the host's.
    unshare(
        CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWCGROUP
            | CloneFlags::CLONE_NEWPID,
    )
    .map_err(ctx("creating namespaces"))?;

    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ctx("pipe"))?;
    // SAFETY: the helper is single-threaded (run before any runtime starts).
    match unsafe { fork() }.map_err(ctx("fork"))? {
        ForkResult::Child => {
            drop(err_r);
            let err = match become_init(&config, &init, &log, &listener, &filters) {
                Err(e) => e,
                Ok(never) => match never {},
            };
            let _ = nix::unistd::write(&err_w, err.as_bytes());
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(1) }
        }
        ForkResult::Parent { child } => {
            drop(err_w);
            let mut report = String::new();
            let _ = std::fs::File::from(err_r).read_to_string(&mut report);
            if !report.is_empty() {
                let _ = waitpid(child, None);
                return Err(report);
            }
            let pid = child.as_raw();
            let start = super::proc_start_time(pid).unwrap_or(0);
            let tmp = config.pidfile.with_extension("tmp");
            std::fs::write(&tmp, format!("{pid} {start}\n")).map_err(ctx("writing the pidfile"))?;
            std::fs::rename(&tmp, &config.pidfile).map_err(ctx("writing the pidfile"))?;
            Ok(pid)
        }
    }
}

enum Never {}

/// In the forked child, PID 1 of the new namespace: finish the machine and exec init.
fn become_init(
    config: &BootConfig,
    init: &std::fs::File,
    log: &std::fs::File,
    listener: &UnixListener,
    filters: &[seccompiler::BpfProgram],
) -> Result<Never, String> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(ctx("creating the mount namespace"))?;
    // Nothing mounted from here on may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(ctx("making the mount namespace private"))?;
    rootfs::mount_overlay(&config.lower, &config.upper, &config.work, &config.rootfs)?;
    for m in &config.mounts {
        rootfs::mount_volume(&config.rootfs, &m.device, &m.path)?;
    }
    rootfs::populate(&config.rootfs)?;
    if let Some(resolv) = &config.resolv_conf {
        rootfs::bind_resolv_conf(&config.rootfs, resolv)?;
    }
    rootfs::enter(&config.rootfs)?;
    sethostname(&config.machine_id).map_err(ctx("setting the hostname"))?;
    rootfs::loopback_up()?;

    // Init's own stdio must not hold the daemon's pipes open.
    let devnull = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(ctx("opening /dev/null"))?;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors.
        if unsafe { libc::dup2(devnull.as_raw_fd(), fd) } < 0 {
            return Err(format!(
                "redirecting stdio: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    let control_fd = listener.as_raw_fd();
    let log_fd = log.as_raw_fd();
    for fd in [control_fd, log_fd] {
        inheritable(fd)?;
    }

    caps::drop_to_default().map_err(ctx("dropping capabilities"))?;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
    }
    seccomp::apply(filters).map_err(ctx("installing the seccomp filter"))?;

    let argv = [
        CString::new("hangar-init").unwrap_or_default(),
        CString::new(format!("--control-fd={control_fd}")).unwrap_or_default(),
        CString::new(format!("--log-fd={log_fd}")).unwrap_or_default(),
    ];
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: valid NUL-terminated arrays; on success this does not return.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            init.as_raw_fd(),
            c"".as_ptr(),
            argv_p.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    Err(format!(
        "executing init: {}",
        std::io::Error::last_os_error()
    ))
}

fn inheritable(fd: RawFd) -> Result<(), String> {
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        return Err(format!("fcntl: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}
