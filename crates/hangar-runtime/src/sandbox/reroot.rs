//! Restore without a rebuild: a stopped machine's root file system is replaced
//! under its running init.
//!
//! Rebuilding the sandbox around a restored layer costs tens of milliseconds: init
//! dies, its mount namespace ends with an unmount that syncs the layers' file
//! system, and a new sandbox boots. A stopped machine holds nothing in its root but
//! init's working directory, so the root can change under it instead:
//!
//! 1. the new overlay is made on the host, detached from every namespace
//!    (`fsopen`, `fsconfig`, `fsmount`);
//! 2. a short-lived thread leaves the daemon's file system context
//!    (`unshare(CLONE_FS)`) and joins the machine's mount namespace;
//! 3. it clones the machine's own mounts (`/proc`, `/dev`, `/sys`, volumes,
//!    `/etc/resolv.conf`), attaches the new root on the old `/dev`, moves the clones
//!    into it and `pivot_root`s, which moves init's root and working directory too;
//! 4. the old root is detached while a descriptor still holds it, so the unmount's
//!    sync happens when the caller drops that descriptor, off the restore's path.
//!
//! Every mount point in the new root is opened component by component without
//! following symlinks, as at boot; the thread's root is the machine's, so nothing it
//! resolves can reach the host.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::rootfs::{self, StepError};

/// A mount of the machine's that moves to the new root, at the same path.
#[derive(Debug, Clone)]
pub(crate) struct Carry {
    /// Relative to the root: `proc`, `data/db`, `etc/resolv.conf`.
    pub path: String,
    /// A file mount (resolv.conf) rather than a directory.
    pub file: bool,
}

impl Carry {
    pub fn dir(path: &str) -> Carry {
        Carry {
            path: path.trim_matches('/').to_string(),
            file: false,
        }
    }

    pub fn file(path: &str) -> Carry {
        Carry {
            path: path.trim_matches('/').to_string(),
            file: true,
        }
    }
}

/// Where the new root is attached before the pivot: on the machine's `/dev`, a
/// tmpfs of hangar's that is not part of any layer.
const PARKING: &str = "/dev/.hangar-root";

fn cstr(s: &str) -> Result<CString, StepError> {
    CString::new(s).map_err(|_| format!("{s:?} contains NUL"))
}

fn os_err(what: impl std::fmt::Display) -> StepError {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Takes ownership of a descriptor a syscall returned, or its error.
fn owned(rc: libc::c_long, what: impl std::fmt::Display) -> Result<OwnedFd, StepError> {
    if rc < 0 {
        return Err(os_err(what));
    }
    // SAFETY: a fresh descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

fn check(rc: libc::c_long, what: impl std::fmt::Display) -> Result<(), StepError> {
    if rc < 0 { Err(os_err(what)) } else { Ok(()) }
}

/// An overlay of `lower` (topmost first) under `upper`, mounted nowhere yet, with
/// the flags boot gives a machine's root.
pub(crate) fn detached_overlay(
    lower: &[String],
    upper: &Path,
    work: &Path,
) -> Result<OwnedFd, StepError> {
    let name = cstr("overlay")?;
    // SAFETY: fsopen with a NUL-terminated file system name.
    let fs = owned(
        unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), libc::FSOPEN_CLOEXEC) },
        "fsopen overlay",
    )?;
    let set = |key: &str, value: &str| -> Result<(), StepError> {
        let (k, v) = (cstr(key)?, cstr(value)?);
        // SAFETY: fsconfig on our fs context with NUL-terminated key and value.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                libc::FSCONFIG_SET_STRING,
                k.as_ptr(),
                v.as_ptr(),
                0,
            )
        };
        check(rc, format!("overlay option {key}"))
    };
    set("lowerdir", &lower.join(":"))?;
    set("upperdir", &upper.to_string_lossy())?;
    set("workdir", &work.to_string_lossy())?;
    // SAFETY: fsconfig command with no key or value.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            libc::FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    check(rc, "creating the overlay")?;
    // SAFETY: fsmount on a created fs context.
    owned(
        unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                fs.as_raw_fd(),
                libc::FSMOUNT_CLOEXEC,
                libc::MOUNT_ATTR_NODEV,
            )
        },
        "fsmount overlay",
    )
}

/// Makes `root` (a detached mount) the root of the mount namespace `ns`, carrying
/// `carry` over from the old root. Returns a descriptor of the old root, already
/// detached: dropping it finishes the unmount (and its sync).
///
/// Runs on a thread of its own, which joins the namespace and ends there.
pub(crate) fn pivot(ns: OwnedFd, root: OwnedFd, carry: Vec<Carry>) -> Result<OwnedFd, StepError> {
    std::thread::Builder::new()
        .name("hangar-reroot".into())
        .spawn(move || in_namespace(ns, root, &carry))
        .map_err(|e| format!("starting the reroot thread: {e}"))?
        .join()
        .map_err(|_| "the reroot thread panicked".to_string())?
}

fn in_namespace(ns: OwnedFd, root: OwnedFd, carry: &[Carry]) -> Result<OwnedFd, StepError> {
    // setns into a mount namespace wants a file system context of our own; the
    // thread keeps it until it ends.
    // SAFETY: unshare and setns with flag arguments and a namespace descriptor.
    check(
        unsafe { libc::unshare(libc::CLONE_FS) } as libc::c_long,
        "unshare(CLONE_FS)",
    )?;
    check(
        unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) } as libc::c_long,
        "joining the machine's mount namespace",
    )?;
    let old_root = rootfs::open_path(Path::new("/"))?;
    // Cloned before the new root joins the tree, so no clone contains it.
    let mut clones = Vec::with_capacity(carry.len());
    for c in carry {
        let path = cstr(&format!("/{}", c.path))?;
        // SAFETY: open_tree with a NUL-terminated path and flag arguments.
        let fd = owned(
            unsafe {
                libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as u32,
                )
            },
            format!("cloning the mount at /{}", c.path),
        )?;
        clones.push((c, fd));
    }
    let parking = cstr(PARKING)?;
    // SAFETY: mkdir of a NUL-terminated path.
    if unsafe { libc::mkdir(parking.as_ptr(), 0o700) } < 0
        && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
    {
        return Err(os_err(format!("creating {PARKING}")));
    }
    let empty = cstr("")?;
    // SAFETY: move_mount of a detached mount onto a NUL-terminated path.
    let attached = check(
        unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                root.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_FDCWD,
                parking.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH,
            )
        },
        "attaching the new root",
    );
    let moved = attached.and_then(|()| {
        for (c, clone) in clones {
            let under = rootfs::open_path(Path::new(PARKING))?;
            let target = if c.file {
                rootfs::open_file_under(under, &c.path)?
            } else {
                rootfs::open_dir_under(under, &c.path)?
            };
            // SAFETY: move_mount between two descriptors we own.
            check(
                unsafe {
                    libc::syscall(
                        libc::SYS_move_mount,
                        clone.as_raw_fd(),
                        empty.as_ptr(),
                        target.as_raw_fd(),
                        empty.as_ptr(),
                        libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
                    )
                },
                format!("moving /{} to the new root", c.path),
            )?;
        }
        rootfs::enter(Path::new(PARKING))
    });
    match moved {
        Ok(()) => {
            // The clone of /dev shares the old one's tmpfs, parking spot included.
            // SAFETY: rmdir of a NUL-terminated path.
            unsafe { libc::rmdir(parking.as_ptr()) };
            Ok(old_root)
        }
        Err(e) => {
            // Still in the old root: take the new one back off it.
            // SAFETY: umount2 and rmdir of a NUL-terminated path.
            unsafe {
                libc::umount2(parking.as_ptr(), libc::MNT_DETACH);
                libc::rmdir(parking.as_ptr());
            }
            Err(e)
        }
    }
}
