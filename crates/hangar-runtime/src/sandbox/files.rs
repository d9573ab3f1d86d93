//! The files API on the host side: reading, writing, listing, making and removing
//! paths inside a machine's root filesystem, started or stopped.
//!
//! The machine's root is reached through `/proc/<init pid>/root`, which holds for a
//! stopped machine too because init keeps its mount namespace. Every path is resolved
//! by the kernel with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_XDEV)` relative to a directory fd on that root, so symlinks and `..`
//! planted by the machine resolve inside it and never reach a host file. Changes are
//! made with `*at` calls on the resolved parent's fd and the final name, never by
//! resolving a string path on the host again. `/proc`, `/sys`, `/dev` and any other
//! mount inside the machine are out of reach: `RESOLVE_NO_XDEV` refuses to cross
//! into them. Volumes are the exception: a path under a volume's mount point is
//! resolved from the volume's own root, opened inside the machine's root and checked
//! to be the root of an ext4 file system (the only kind a machine gets mounted), so
//! a link planted on the way cannot swap in `/proc` or `/dev`.
//!
//! This module must not touch anything outside the machine's root.

use std::ffi::{CStr, CString};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use hangar_core::MachineId;
use hangar_core::driver::{
    DriverError, FileData, FileEntry, FileType, PathErrorKind, WriteOptions,
};

use super::SandboxDriver;

const RESOLVE_NO_XDEV: u64 = 0x01;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;
const RESOLVE: u64 = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;

/// `struct open_how` from `linux/openat2.h` (libc's is not constructible).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `statfs.f_type` of ext4, the file system of every volume.
const EXT4_SUPER_MAGIC: libc::c_long = 0xEF53;
/// The inode number of an ext4 file system's root directory.
const EXT4_ROOT_INO: libc::ino_t = 2;

/// Top-level trees of the machine the files API refuses outright.
const FORBIDDEN: [&str; 3] = ["proc", "sys", "dev"];

/// A path inside the machine, checked and made lexically normal: no empty, `.` or
/// `..` components (`..` stops at the root, as the kernel does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GuestPath {
    given: String,
    /// Components below the root the path is resolved from.
    parts: Vec<String>,
    /// Components from the machine's root to that root: a volume's mount point.
    base: Vec<String>,
}

impl GuestPath {
    pub(crate) fn parse(path: &str) -> Result<GuestPath, DriverError> {
        let invalid = |why: &str| path_error(PathErrorKind::Invalid, path, why);
        if path.contains('\0') {
            return Err(invalid("contains a NUL byte"));
        }
        if !path.starts_with('/') {
            return Err(invalid("is not absolute; give a path starting with /"));
        }
        let mut parts: Vec<String> = Vec::new();
        for part in path.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                part => parts.push(part.to_string()),
            }
        }
        if parts
            .first()
            .is_some_and(|p| FORBIDDEN.contains(&p.as_str()))
        {
            return Err(invalid(
                "is under /proc, /sys or /dev, which the files API does not reach; use exec",
            ));
        }
        Ok(GuestPath {
            given: path.to_string(),
            parts,
            base: Vec::new(),
        })
    }

    /// The same path, resolved from the root of a volume mounted at `mount` when it
    /// is under it (the longest such mount).
    fn under_volume(self, mounts: &[Vec<String>]) -> (Option<Vec<String>>, GuestPath) {
        let Some(mount) = mounts
            .iter()
            .filter(|m| !m.is_empty() && self.parts.starts_with(m))
            .max_by_key(|m| m.len())
        else {
            return (None, self);
        };
        let path = GuestPath {
            given: self.given,
            parts: self.parts[mount.len()..].to_vec(),
            base: mount.clone(),
        };
        (Some(mount.clone()), path)
    }

    /// The path relative to the machine's root, `.` for the root itself.
    fn relative(parts: &[String]) -> String {
        if parts.is_empty() {
            ".".to_string()
        } else {
            parts.join("/")
        }
    }

    fn absolute(&self) -> String {
        let all: Vec<&str> = self
            .base
            .iter()
            .chain(&self.parts)
            .map(String::as_str)
            .collect();
        format!("/{}", all.join("/"))
    }

    fn err(&self, e: io::Error) -> DriverError {
        let kind = match e.raw_os_error().unwrap_or(0) {
            libc::ENOENT => PathErrorKind::NotFound,
            libc::ENOTDIR => PathErrorKind::NotADirectory,
            libc::EISDIR => PathErrorKind::IsADirectory,
            libc::ENOTEMPTY => PathErrorKind::NotEmpty,
            libc::EXDEV | libc::ELOOP | libc::ENAMETOOLONG | libc::EBUSY => PathErrorKind::Invalid,
            _ => return DriverError::io(format!("files API on {:?}", self.given), e),
        };
        let why = match kind {
            PathErrorKind::NotFound => {
                "does not exist (or a parent directory does not; writes and mkdir make missing parents with parents=true)"
            }
            PathErrorKind::NotADirectory => "is not a directory (or a parent of it is not)",
            PathErrorKind::IsADirectory => "is a directory",
            PathErrorKind::NotEmpty => {
                "is a directory that is not empty; pass recursive=true to delete it with its contents"
            }
            _ => match e.raw_os_error() {
                Some(libc::EXDEV) | Some(libc::EBUSY) => {
                    "crosses into another mount (/proc, /sys or /dev), which the files API does not reach; use exec"
                }
                Some(libc::ELOOP) => "runs through too many symlinks or a /proc magic link",
                _ => "is too long",
            },
        };
        path_error(kind, &self.given, why)
    }
}

fn path_error(kind: PathErrorKind, path: &str, why: &str) -> DriverError {
    DriverError::Path {
        kind,
        path: path.to_string(),
        why: why.to_string(),
    }
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Resolves `path` inside the root `root` (see the module docs).
fn openat2(root: &OwnedFd, path: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
    openat2_how(root, path, flags, RESOLVE)
}

fn openat2_how(
    root: &OwnedFd,
    path: &str,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    let mut tries = 0;
    loop {
        // SAFETY: `c` and `how` outlive the call; the size is that of `how`.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if ret >= 0 {
            // SAFETY: the kernel just gave us this fd.
            return Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) });
        }
        let err = io::Error::last_os_error();
        // RESOLVE_IN_ROOT answers EAGAIN when a rename raced the walk.
        if err.raw_os_error() == Some(libc::EAGAIN) && tries < 16 {
            tries += 1;
            continue;
        }
        return Err(err);
    }
}

/// Opens one name in `dir` without following a symlink there.
fn openat(dir: &OwnedFd, name: &str, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: `c` outlives the call.
    let ret = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode as libc::c_uint,
        )
    };
    check(ret)?;
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: a zeroed stat is valid to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out pointer.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

fn lstatat(dir: &OwnedFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: a zeroed stat is valid to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` and `st` are valid for the call.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

fn unlinkat(dir: &OwnedFd, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `name` is valid for the call.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

fn mkdirat(dir: &OwnedFd, name: &str, mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: `c` is valid for the call.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) })
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// The names in a directory, without `.` and `..`.
fn read_dir(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    // fdopendir takes the fd it is given; hand it a fresh one opened for reading.
    let fd = openat(dir, ".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
    // SAFETY: `raw` is an open directory fd, owned by the DIR from here on.
    let dirp = unsafe { libc::fdopendir(raw) };
    if dirp.is_null() {
        let err = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `raw` is still ours to close.
        unsafe { libc::close(raw) };
        return Err(err);
    }
    let mut names = Vec::new();
    loop {
        // SAFETY: `dirp` is a valid DIR until closedir below.
        let ent = unsafe { libc::readdir(dirp) };
        if ent.is_null() {
            break;
        }
        // SAFETY: readdir returns a valid dirent with a NUL-terminated name.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
    // SAFETY: `dirp` is valid and not used again.
    unsafe { libc::closedir(dirp) };
    Ok(names)
}

fn readlinkat(dir: &OwnedFd, name: &CStr) -> io::Result<String> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `buf` is writable for its length.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// A handle on one machine's root directory.
pub(crate) struct GuestRoot {
    fd: OwnedFd,
}

impl GuestRoot {
    fn open(init_pid: i32) -> io::Result<GuestRoot> {
        let path = cstr(&format!("/proc/{init_pid}/root"))?;
        // SAFETY: `path` is valid for the call.
        let ret = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        check(ret)?;
        // SAFETY: the kernel just gave us this fd.
        Ok(GuestRoot {
            fd: unsafe { OwnedFd::from_raw_fd(ret) },
        })
    }

    /// The root of the volume mounted at `mount` (components below this root).
    fn volume(&self, mount: &[String]) -> io::Result<GuestRoot> {
        // Crossing mounts is the point; magic links and `..` above the root stay out.
        let fd = openat2_how(
            &self.fd,
            &GuestPath::relative(mount),
            libc::O_PATH | libc::O_DIRECTORY,
            RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
        )?;
        let st = fstat(&fd)?;
        // SAFETY: fstatfs into a zeroed struct on a descriptor we own.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        check(unsafe { libc::fstatfs(fd.as_raw_fd(), &mut fs) })?;
        if fs.f_type != EXT4_SUPER_MAGIC || st.st_ino != EXT4_ROOT_INO {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        Ok(GuestRoot { fd })
    }

    fn resolve(&self, parts: &[String], flags: libc::c_int) -> io::Result<OwnedFd> {
        openat2(&self.fd, &GuestPath::relative(parts), flags)
    }

    /// The parent directory of `path` (created when `create`) and its final name.
    fn parent<'p>(
        &self,
        path: &'p GuestPath,
        create: bool,
    ) -> Result<(OwnedFd, &'p str), DriverError> {
        let Some((name, dirs)) = path.parts.split_last() else {
            return Err(path_error(
                PathErrorKind::Invalid,
                &path.given,
                if path.base.is_empty() {
                    "is the machine's root directory"
                } else {
                    "is a volume's mount point"
                },
            ));
        };
        let dir = if create {
            self.make_dirs(path, dirs)?
        } else {
            self.resolve(dirs, libc::O_PATH | libc::O_DIRECTORY)
                .map_err(|e| path.err(e))?
        };
        Ok((dir, name))
    }

    /// `mkdir -p` of `dirs`, one component at a time, each resolved inside the root.
    fn make_dirs(&self, path: &GuestPath, dirs: &[String]) -> Result<OwnedFd, DriverError> {
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        let mut current = self.resolve(&[], flags).map_err(|e| path.err(e))?;
        for i in 0..dirs.len() {
            current = match self.resolve(&dirs[..=i], flags) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    match mkdirat(&current, &dirs[i], 0o755) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(path.err(e)),
                    }
                    self.resolve(&dirs[..=i], flags).map_err(|e| path.err(e))?
                }
                Err(e) => return Err(path.err(e)),
            };
        }
        Ok(current)
    }

    pub(crate) fn read(&self, path: &GuestPath, max_len: u64) -> Result<FileData, DriverError> {
        let fd = self
            .resolve(
                &path.parts,
                libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK,
            )
            .map_err(|e| path.err(e))?;
        let st = fstat(&fd).map_err(|e| path.err(e))?;
        if is_dir(&st) {
            return Err(path.err(io::Error::from_raw_os_error(libc::EISDIR)));
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(path_error(
                PathErrorKind::NotRegular,
                &path.given,
                "is not a regular file (a device, FIFO or socket)",
            ));
        }
        let too_large = || {
            path_error(
                PathErrorKind::TooLarge,
                &path.given,
                &format!("is larger than {max_len} bytes, the most the files API reads; use exec"),
            )
        };
        if st.st_size as u64 > max_len {
            return Err(too_large());
        }
        let mut contents = Vec::with_capacity(st.st_size as usize);
        std::fs::File::from(fd)
            .take(max_len + 1)
            .read_to_end(&mut contents)
            .map_err(|e| path.err(e))?;
        if contents.len() as u64 > max_len {
            return Err(too_large());
        }
        Ok(FileData {
            contents,
            mode: st.st_mode & 0o7777,
            mtime: st.st_mtime,
        })
    }

    pub(crate) fn list(&self, path: &GuestPath) -> Result<Vec<FileEntry>, DriverError> {
        let dir = self
            .resolve(&path.parts, libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(|e| path.err(e))?;
        let base = path.absolute();
        let mut entries = Vec::new();
        for name in read_dir(&dir).map_err(|e| path.err(e))? {
            // An entry removed since the listing is skipped, not an error.
            let Ok(st) = lstatat(&dir, &name) else {
                continue;
            };
            let kind = match st.st_mode & libc::S_IFMT {
                libc::S_IFREG => FileType::File,
                libc::S_IFDIR => FileType::Dir,
                libc::S_IFLNK => FileType::Symlink,
                _ => FileType::Other,
            };
            let target = match kind {
                FileType::Symlink => readlinkat(&dir, &name).ok(),
                _ => None,
            };
            let name = name.to_string_lossy().into_owned();
            entries.push(FileEntry {
                path: if base == "/" {
                    format!("/{name}")
                } else {
                    format!("{base}/{name}")
                },
                name,
                kind,
                size: st.st_size as u64,
                mode: st.st_mode & 0o7777,
                mtime: st.st_mtime,
                target,
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Writes to a temporary file beside the target, then renames it over the target:
    /// readers in the machine see the old file or the new one, never half of it.
    pub(crate) fn write(
        &self,
        path: &GuestPath,
        contents: &[u8],
        options: WriteOptions,
    ) -> Result<(), DriverError> {
        let (dir, name) = self.parent(path, options.parents)?;
        let temp = format!(".hangar-write-{}", hangar_core::ids::random_hex(8));
        let ctemp = cstr(&temp).map_err(|e| path.err(e))?;
        let fd = openat(
            &dir,
            &temp,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o600,
        )
        .map_err(|e| path.err(e))?;
        let written = (|| {
            // Ownership first: chown clears set-id bits that fchmod then sets.
            // SAFETY: plain syscalls on an fd we own.
            check(unsafe { libc::fchown(fd.as_raw_fd(), options.uid, options.gid) })?;
            check(unsafe {
                libc::fchmod(fd.as_raw_fd(), (options.mode & 0o7777) as libc::mode_t)
            })?;
            let mut file = std::fs::File::from(fd);
            file.write_all(contents)?;
            file.sync_all()?;
            let cname = cstr(name)?;
            // SAFETY: both names are valid for the call; both sides are `dir`.
            check(unsafe {
                libc::renameat(
                    dir.as_raw_fd(),
                    ctemp.as_ptr(),
                    dir.as_raw_fd(),
                    cname.as_ptr(),
                )
            })
        })();
        if let Err(e) = written {
            let _ = unlinkat(&dir, &ctemp, 0);
            return Err(path.err(e));
        }
        Ok(())
    }

    pub(crate) fn mkdir(
        &self,
        path: &GuestPath,
        mode: u32,
        parents: bool,
    ) -> Result<(), DriverError> {
        let (dir, name) = self.parent(path, parents)?;
        match mkdirat(&dir, name, 0o700) {
            Ok(()) => {
                // The umask shaped the mode above; set the one asked for on the new
                // directory itself, reached without following a symlink.
                let fd = openat(&dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                    .map_err(|e| path.err(e))?;
                // SAFETY: a plain syscall on an fd we own.
                check(unsafe { libc::fchmod(fd.as_raw_fd(), (mode & 0o7777) as libc::mode_t) })
                    .map_err(|e| path.err(e))
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                match self.resolve(&path.parts, libc::O_PATH | libc::O_DIRECTORY) {
                    Ok(_) => Ok(()),
                    Err(_) => Err(path_error(
                        PathErrorKind::NotADirectory,
                        &path.given,
                        "exists and is not a directory",
                    )),
                }
            }
            Err(e) => Err(path.err(e)),
        }
    }

    pub(crate) fn remove(&self, path: &GuestPath, recursive: bool) -> Result<(), DriverError> {
        let (dir, name) = self.parent(path, false)?;
        let cname = cstr(name).map_err(|e| path.err(e))?;
        let st = lstatat(&dir, &cname).map_err(|e| path.err(e))?;
        if !is_dir(&st) {
            return unlinkat(&dir, &cname, 0).map_err(|e| path.err(e));
        }
        if recursive {
            let fd = openat(&dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                .map_err(|e| path.err(e))?;
            remove_contents(&fd, st.st_dev).map_err(|e| path.err(e))?;
        }
        unlinkat(&dir, &cname, libc::AT_REMOVEDIR).map_err(|e| path.err(e))
    }
}

/// Empties a directory without following symlinks or leaving its filesystem.
fn remove_contents(dir: &OwnedFd, dev: libc::dev_t) -> io::Result<()> {
    for name in read_dir(dir)? {
        let st = match lstatat(dir, &name) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        if is_dir(&st) {
            if st.st_dev != dev {
                return Err(io::Error::from_raw_os_error(libc::EXDEV));
            }
            let child = openat(
                dir,
                name.to_str()
                    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            )?;
            remove_contents(&child, dev)?;
            unlinkat(dir, &name, libc::AT_REMOVEDIR)?;
        } else {
            match unlinkat(dir, &name, 0) {
                Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

/// The machine's volume mount points (as components), from its recorded spec.
fn volume_mounts(spec: &std::path::Path) -> Vec<Vec<String>> {
    let Ok(text) = std::fs::read(spec) else {
        return Vec::new();
    };
    let spec: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
    spec["mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["path"].as_str())
        .filter_map(|p| GuestPath::parse(p).ok())
        .map(|p| p.parts)
        .collect()
}

impl SandboxDriver {
    /// Runs `op` on the machine's root on a blocking thread.
    pub(crate) async fn with_root<T: Send + 'static>(
        &self,
        id: &MachineId,
        path: &str,
        op: impl FnOnce(&GuestRoot, &GuestPath) -> Result<T, DriverError> + Send + 'static,
    ) -> Result<T, DriverError> {
        let path = GuestPath::parse(path)?;
        let pid = self
            .init_pid(id)
            .ok_or_else(|| DriverError::NotFound(id.clone()))?;
        let start = super::proc_start_time(pid);
        let spec = self.machine_dir(id).join("spec.json");
        let id = id.clone();
        tokio::task::spawn_blocking(move || {
            let root = GuestRoot::open(pid)
                .map_err(|e| DriverError::io(format!("opening the root of machine {id}"), e))?;
            // The pid could have been reused between reading the pidfile and opening
            // its root: go on only if it is still the same process.
            if start.is_none() || super::proc_start_time(pid) != start {
                return Err(DriverError::NotFound(id));
            }
            match path.under_volume(&volume_mounts(&spec)) {
                (None, path) => op(&root, &path),
                (Some(mount), path) => {
                    let volume = root.volume(&mount).map_err(|e| path.err(e))?;
                    op(&volume, &path)
                }
            }
        })
        .await
        .map_err(|e| DriverError::Other(format!("files task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(p: &str) -> Vec<String> {
        GuestPath::parse(p).unwrap().parts
    }

    #[test]
    fn dot_dot_stops_at_the_root() {
        assert_eq!(parts("/../../etc/passwd"), ["etc", "passwd"]);
        assert_eq!(parts("/a/./b//../c/"), ["a", "c"]);
        assert!(parts("/").is_empty());
    }

    #[test]
    fn bad_paths_are_invalid() {
        for p in [
            "",
            "etc/passwd",
            "/a\0b",
            "/proc/1/root",
            "/sys",
            "/../dev/null",
        ] {
            let err = GuestPath::parse(p).unwrap_err();
            assert!(
                matches!(
                    err,
                    DriverError::Path {
                        kind: PathErrorKind::Invalid,
                        ..
                    }
                ),
                "{p:?}: {err:?}"
            );
        }
        assert!(GuestPath::parse("/procfs").is_ok());
    }

    proptest::proptest! {
        /// Whatever a caller sends, a parsed path is plain names under the root: no
        /// `..`, `.`, empty or slashed component, and never in a refused tree.
        #[test]
        fn parsed_paths_are_plain_names(path in "[/.a-z\\x00]{0,24}") {
            if let Ok(parsed) = GuestPath::parse(&path) {
                proptest::prop_assert!(path.starts_with('/'));
                for part in &parsed.parts {
                    proptest::prop_assert!(!["", ".", ".."].contains(&part.as_str()));
                    proptest::prop_assert!(!part.contains('/') && !part.contains('\0'));
                }
                if let Some(first) = parsed.parts.first() {
                    proptest::prop_assert!(!FORBIDDEN.contains(&first.as_str()));
                }
            }
        }
    }
}
