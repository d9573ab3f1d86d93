//! The machine's file system view, built by the boot helper inside the machine's
//! fresh mount namespace: the overlay root, `/proc`, a minimal `/dev`, a read-only
//! `/sys`, then `pivot_root` so the host's tree is gone.
//!
//! Every writable mount the machine can reach is `nodev`: device nodes work only
//! where this module bind-mounts them, so `CAP_MKNOD` cannot open a host disk.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::unistd::{chdir, pivot_root};

/// A step that failed: what it was doing, and why.
pub type StepError = String;

fn ctx<E: std::fmt::Display>(what: impl Into<String>) -> impl FnOnce(E) -> StepError {
    let what = what.into();
    move |e| format!("{what}: {e}")
}

/// Device files bind-mounted from the host's `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// `/proc` files a machine must not write (they configure the whole host): made
/// read-only.
const PROC_READ_ONLY: [&str; 5] = ["sys", "sysrq-trigger", "irq", "bus", "fs"];
/// `/proc` files a machine must not read: covered with `/dev/null`.
const PROC_MASKED: [&str; 6] = [
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "timer_stats",
];

/// Mounts the overlay of `lower` (topmost first) under `upper` at `target`.
pub fn mount_overlay(
    lower: &[String],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), StepError> {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    if opts.len() >= 4096 {
        return Err(
            "too many image layers for one overlay mount (the options exceed a page)".into(),
        );
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(ctx("mounting the overlay root"))
}

/// Mounts a volume's ext4 file system (on `device`) at `path` inside the machine's
/// root. The mount point is made component by component without following
/// symlinks, so the machine's own files cannot send the mount elsewhere.
pub fn mount_volume(root: &Path, device: &Path, path: &str) -> Result<(), StepError> {
    let dir = open_dir_under(open_path(root)?, path)?;
    let target = format!("/proc/self/fd/{}", dir.as_raw_fd());
    mount(
        Some(device),
        target.as_str(),
        Some("ext4"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(ctx(format!("mounting the volume at {path}")))
}

/// An `O_PATH` descriptor of the directory `path`.
pub(crate) fn open_path(path: &Path) -> Result<OwnedFd, StepError> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(ctx("the path"))?;
    // SAFETY: open of a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!(
            "opening {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the directory `path` under `root`, creating what is missing, one component
/// at a time and never following a symlink: a machine's own files cannot send a
/// mount made there anywhere else.
pub(crate) fn open_dir_under(root: OwnedFd, path: &str) -> Result<OwnedFd, StepError> {
    let mut dir = root;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err(format!("mount point {path} must not contain . or .."));
        }
        let name = CString::new(part).map_err(ctx("the mount path"))?;
        // SAFETY: mkdirat on a descriptor we own; EEXIST is fine.
        if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) } < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("creating mount point {path}: {err}"));
            }
        }
        // SAFETY: openat on a directory descriptor we own and a NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(format!(
                "mount point {path}: {part:?} is not a directory: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a fresh descriptor nobody else owns.
        dir = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    Ok(dir)
}

/// Opens the regular file `path` under `root` as a mount point, the way
/// [`bind_resolv_conf`] treats `/etc/resolv.conf`: a symlink or a missing file is
/// replaced by an empty file, a directory is an error, and nothing is followed.
pub(crate) fn open_file_under(root: OwnedFd, path: &str) -> Result<OwnedFd, StepError> {
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    let dir = open_dir_under(root, parent)?;
    let name = CString::new(name).map_err(ctx("the mount path"))?;
    let open = |flags: libc::c_int| {
        // SAFETY: openat on a directory descriptor we own and a NUL-terminated name.
        let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, 0o644) };
        // SAFETY: a fresh descriptor nobody else owns.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
    };
    if let Some(fd) = open(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) {
        let meta = std::fs::File::from(fd.try_clone().map_err(ctx(path.to_string()))?)
            .metadata()
            .map_err(ctx(format!("inspecting {path}")))?;
        if meta.is_file() {
            return Ok(fd);
        }
        if meta.is_dir() {
            return Err(format!("/{path} in the machine is a directory"));
        }
        // SAFETY: unlinkat of a name in a directory we own.
        if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } < 0 {
            return Err(format!(
                "replacing the /{path} link: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    open(libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_WRONLY | libc::O_CLOEXEC)
        .ok_or_else(|| format!("creating /{path}: {}", std::io::Error::last_os_error()))
}

fn mkdir_p(path: &Path) -> Result<(), StepError> {
    std::fs::create_dir_all(path).map_err(ctx(format!("creating {}", path.display())))
}

fn bind(src: &Path, dst: &Path, extra: MsFlags) -> Result<(), StepError> {
    mount(
        Some(src),
        dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(ctx(format!(
        "bind-mounting {} on {}",
        src.display(),
        dst.display()
    )))?;
    if !extra.is_empty() {
        mount(
            None::<&str>,
            dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
            None::<&str>,
        )
        .map_err(ctx(format!("remounting {}", dst.display())))?;
    }
    Ok(())
}

/// Mounts `/proc`, `/dev` and `/sys` under `root` (the mounted overlay). Must run in
/// the machine's PID namespace so `/proc` shows only the machine's processes.
pub fn populate(root: &Path) -> Result<(), StepError> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;

    let proc_dir = root.join("proc");
    mkdir_p(&proc_dir)?;
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        nosuid_nodev_noexec,
        None::<&str>,
    )
    .map_err(ctx("mounting /proc"))?;
    for name in PROC_READ_ONLY {
        let p = proc_dir.join(name);
        if p.exists() {
            bind(&p, &p, MsFlags::MS_RDONLY | nosuid_nodev_noexec)?;
        }
    }

    let dev = root.join("dev");
    mkdir_p(&dev)?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755,size=65536k"),
    )
    .map_err(ctx("mounting /dev"))?;
    for name in DEVICES {
        let target = dev.join(name);
        std::fs::File::create(&target).map_err(ctx(format!("creating /dev/{name}")))?;
        bind(&Path::new("/dev").join(name), &target, MsFlags::empty())?;
    }
    let pts = dev.join("pts");
    mkdir_p(&pts)?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .map_err(ctx("mounting /dev/pts"))?;
    let shm = dev.join("shm");
    mkdir_p(&shm)?;
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        nosuid_nodev_noexec,
        Some("mode=1777,size=65536k"),
    )
    .map_err(ctx("mounting /dev/shm"))?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(link)).map_err(ctx(format!("linking /dev/{link}")))?;
    }
    // Masks go on after /dev exists: they are binds of the machine's /dev/null.
    for name in PROC_MASKED {
        let p = proc_dir.join(name);
        if p.exists() {
            bind(&dev.join("null"), &p, MsFlags::empty())?;
        }
    }

    let sys = root.join("sys");
    mkdir_p(&sys)?;
    mount(
        Some("sysfs"),
        &sys,
        Some("sysfs"),
        MsFlags::MS_RDONLY | nosuid_nodev_noexec,
        None::<&str>,
    )
    .map_err(ctx("mounting /sys"))?;
    Ok(())
}

/// Makes `root` the root directory and detaches the host's tree.
pub fn enter(root: &Path) -> Result<(), StepError> {
    chdir(root).map_err(ctx("entering the root file system"))?;
    // pivot_root(".", ".") stacks the old root on top of the new one; unmounting
    // "." then removes it without needing a directory for it in the image.
    pivot_root(".", ".").map_err(ctx("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(ctx("detaching the host root"))?;
    chdir("/").map_err(ctx("chdir /"))?;
    Ok(())
}

/// Bind-mounts `source` (hangar's resolv.conf for the machine) on the image's
/// `/etc/resolv.conf` under `root`, read-only, the way container runtimes do. Runs
/// before `enter`, so every path is checked not to be a symlink: an image cannot
/// point the mount at the host. A symlink or missing file is replaced by an empty
/// file in the writable layer; the image's layers are not touched.
pub fn bind_resolv_conf(root: &Path, source: &Path) -> Result<(), StepError> {
    let target = open_file_under(open_path(root)?, "etc/resolv.conf")?;
    mount(
        Some(source),
        format!("/proc/self/fd/{}", target.as_raw_fd()).as_str(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(ctx("bind-mounting /etc/resolv.conf"))?;
    // The descriptor names the file under the mount; the path reaches the mount.
    mount(
        None::<&str>,
        &root.join("etc/resolv.conf"),
        None::<&str>,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(ctx("making /etc/resolv.conf read-only"))
}

/// Brings the loopback interface of the machine's network namespace up.
pub fn loopback_up() -> Result<(), StepError> {
    // SAFETY: a datagram socket and two ioctls on a zeroed, correctly sized ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let mut result = Ok(());
        if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            result = Err(format!(
                "reading lo flags: {}",
                std::io::Error::last_os_error()
            ));
        } else {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req) < 0 {
                result = Err(format!(
                    "bringing lo up: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        libc::close(fd);
        result
    }
}
