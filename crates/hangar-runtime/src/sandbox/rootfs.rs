//! The machine's file system view, built by the boot helper inside the machine's
//! fresh mount namespace: the overlay root, `/proc`, a minimal `/dev`, a read-only
//! `/sys`, then `pivot_root` so the host's tree is gone.
//!
//! Every writable mount the machine can reach is `nodev`: device nodes work only
//! where this module bind-mounts them, so `CAP_MKNOD` cannot open a host disk.

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
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let open_dir = |parent: &OwnedFd, name: &std::ffi::CStr| -> Result<OwnedFd, StepError> {
        // SAFETY: openat on a directory descriptor we own and a NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                parent.as_raw_fd(),
                name.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(format!(
                "volume mount point {path}: {:?} is not a directory: {}",
                name,
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let root_c = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())
        .map_err(ctx("the root path"))?;
    // SAFETY: open of a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            root_c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!(
            "opening the root: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a fresh descriptor.
    let mut dir = unsafe { OwnedFd::from_raw_fd(fd) };
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err(format!(
                "volume mount point {path} must not contain . or .."
            ));
        }
        let name = std::ffi::CString::new(part).map_err(ctx("the mount path"))?;
        // SAFETY: mkdirat on a descriptor we own; EEXIST is fine.
        if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) } < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("creating volume mount point {path}: {err}"));
            }
        }
        dir = open_dir(&dir, &name)?;
    }
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
    let etc = root.join("etc");
    match std::fs::symlink_metadata(&etc) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err("/etc in the image is not a directory".into()),
        Err(_) => mkdir_p(&etc)?,
    }
    let target = etc.join("resolv.conf");
    match std::fs::symlink_metadata(&target) {
        Ok(m) if m.is_file() => {}
        Ok(m) if m.is_dir() => return Err("/etc/resolv.conf in the image is a directory".into()),
        Ok(_) => {
            std::fs::remove_file(&target).map_err(ctx("replacing the /etc/resolv.conf link"))?;
            std::fs::File::create(&target).map_err(ctx("creating /etc/resolv.conf"))?;
        }
        Err(_) => {
            std::fs::File::create(&target).map_err(ctx("creating /etc/resolv.conf"))?;
        }
    }
    bind(
        source,
        &target,
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )
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
