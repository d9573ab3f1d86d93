//! Safe unpacking of one layer tar into one directory.
//!
//! This module owns the rule that nothing in an archive can write outside the layer
//! directory it is unpacked into. Every entry name is cleaned lexically (a leading `/`
//! is dropped, as OCI layers expect; a `..` that would climb above the layer root is
//! rejected), and every parent directory is opened component by component with
//! `O_NOFOLLOW`, so a symbolic link planted earlier in the same archive is never
//! followed. Hard links must point at an entry already in this layer, reached the same
//! way.
//!
//! OCI whiteouts become overlayfs whiteouts, because layers are stacked as overlay
//! lower directories: `.wh.name` becomes a 0/0 character device `name`, and
//! `.wh..wh..opq` becomes the `trusted.overlay.opaque=y` xattr on its directory.
//!
//! Device nodes other than the 0/0 whiteout are skipped (the runtime gives every
//! machine its own `/dev`) or refused, as [`DevicePolicy`] says.
//!
//! It does not know about digests, compression or where layers live: callers hand it
//! a plain tar stream and an empty directory, and remove that directory if it fails.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use hangar_core::image::ImageError;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstatat, futimens, mkdirat, mknodat, utimensat};
use nix::sys::stat::{UtimensatFlags, makedev};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use tar::EntryType;

/// Prefix of an OCI whiteout entry.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Marks its directory as opaque: nothing below from lower layers shows through.
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// The xattr overlayfs reads to treat a directory as opaque.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What to do with character and block devices other than the 0/0 whiteout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DevicePolicy {
    /// Leave them out and log them: machines get their own `/dev`.
    #[default]
    Skip,
    /// Reject the layer with [`ImageError::UnsafeEntry`].
    Refuse,
}

/// How to unpack.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    pub devices: DevicePolicy,
    /// Apply the uid/gid recorded in the archive. Needs root; without it files belong
    /// to whoever unpacks.
    pub preserve_ownership: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            devices: DevicePolicy::default(),
            preserve_ownership: nix::unistd::geteuid().is_root(),
        }
    }
}

/// What an unpack produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
    /// Device nodes left out under [`DevicePolicy::Skip`].
    pub skipped_devices: Vec<String>,
}

/// Unpacks the tar stream `reader` into `dest`, an existing empty directory.
///
/// On error `dest` may hold part of the layer; the caller removes it. Nothing is ever
/// written outside `dest`.
pub fn unpack_layer<R: Read>(
    reader: R,
    dest: &Path,
    options: &UnpackOptions,
) -> Result<UnpackStats, ImageError> {
    let root = open_dir_path(dest).map_err(|e| ImageError::io("open layer directory", e))?;
    let mut unpacker = Unpacker {
        root,
        root_path: dest.to_path_buf(),
        options: options.clone(),
        stats: UnpackStats::default(),
        dirs: Vec::new(),
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| bad_archive("read archive", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| bad_archive("read archive entry", e))?;
        unpacker.entry(entry)?;
    }
    unpacker.finish_dirs()?;
    Ok(unpacker.stats)
}

fn bad_archive(what: &str, e: io::Error) -> ImageError {
    ImageError::BadArchive(format!("{what}: {e}"))
}

/// Directory metadata applied after all entries, since creating children changes a
/// directory's mtime and a read-only mode would stop us adding them.
struct DirMeta {
    comps: Vec<OsString>,
    mode: u32,
    mtime: Option<TimeSpec>,
}

struct Unpacker {
    root: OwnedFd,
    root_path: PathBuf,
    options: UnpackOptions,
    stats: UnpackStats,
    dirs: Vec<DirMeta>,
}

/// The parts of a tar header applied to every created entry.
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: Option<TimeSpec>,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Unpacker {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ImageError> {
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            return Ok(());
        }
        let raw_name = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_name).into_owned();
        let unsafe_entry = |reason: &str| ImageError::UnsafeEntry {
            entry: name.clone(),
            reason: reason.to_string(),
        };
        let comps = clean_path(&raw_name).map_err(&unsafe_entry)?;
        self.stats.entries += 1;
        let meta = self.meta(&mut entry, &name)?;

        let Some((last, parents)) = comps.split_last() else {
            // `./` itself: the layer root's own metadata.
            if kind != EntryType::Directory {
                return Err(unsafe_entry("only a directory may name the layer root"));
            }
            self.dirs.push(DirMeta {
                comps: Vec::new(),
                mode: meta.mode,
                mtime: meta.mtime,
            });
            return self.set_owner_xattrs_fd(self.root.as_raw_fd(), &meta, &name);
        };

        // Whiteouts first: their names say what they are, whatever their type.
        let last_str = last.to_string_lossy();
        if let Some(target) = last_str.strip_prefix(WHITEOUT_PREFIX) {
            let parent = self.open_parent(parents, &name)?;
            if last_str == OPAQUE_WHITEOUT {
                return set_xattr_fd(parent.as_raw_fd(), OVERLAY_OPAQUE_XATTR, b"y")
                    .map_err(|e| ImageError::io(format!("mark {name:?} opaque"), e));
            }
            if target.starts_with(WHITEOUT_PREFIX) {
                // Other `.wh..wh.` names are aufs bookkeeping with no meaning here.
                tracing::debug!(entry = %name, "skipping aufs metadata entry");
                return Ok(());
            }
            if target.is_empty() || target == "." || target == ".." {
                return Err(unsafe_entry("whiteout names no file"));
            }
            return match mknodat(
                Some(parent.as_raw_fd()),
                target,
                SFlag::S_IFCHR,
                Mode::empty(),
                makedev(0, 0),
            ) {
                // The whiteout only hides lower layers; an entry of this layer stays.
                Ok(()) | Err(Errno::EEXIST) => Ok(()),
                Err(e) => Err(ImageError::io(
                    format!("create whiteout {name:?}"),
                    e.into(),
                )),
            };
        }

        let parent = self.open_parent(parents, &name)?;
        let pfd = parent.as_raw_fd();
        match kind {
            EntryType::Directory => {
                let replaced_whiteout = self.prepare_dir(pfd, last, &name)?;
                let dir =
                    open_dir_at(pfd, last).map_err(|e| self.parent_error(e, &name, "directory"))?;
                if replaced_whiteout {
                    // A whiteout then a directory of the same name in one layer means
                    // "replace": nothing below may show through.
                    set_xattr_fd(dir.as_raw_fd(), OVERLAY_OPAQUE_XATTR, b"y")
                        .map_err(|e| ImageError::io(format!("mark {name:?} opaque"), e))?;
                }
                self.set_owner_xattrs_fd(dir.as_raw_fd(), &meta, &name)?;
                self.dirs.push(DirMeta {
                    comps: comps.clone(),
                    mode: meta.mode,
                    mtime: meta.mtime,
                });
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.remove_existing(pfd, parents, last, &name)?;
                let fd = openat(
                    Some(pfd),
                    last.as_os_str(),
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| ImageError::io(format!("create {name:?}"), e.into()))?;
                // SAFETY: openat returned a fresh descriptor that nothing else owns.
                let mut file = unsafe { File::from_raw_fd(fd) };
                let n = io::copy(&mut entry, &mut file)
                    .map_err(|e| ImageError::io(format!("write {name:?}"), e))?;
                self.stats.bytes += n;
                self.set_owner_xattrs_fd(file.as_raw_fd(), &meta, &name)?;
                // After chown, which clears set-id bits.
                fchmod(file.as_raw_fd(), Mode::from_bits_truncate(meta.mode))
                    .map_err(|e| ImageError::io(format!("chmod {name:?}"), e.into()))?;
                if let Some(t) = meta.mtime {
                    futimens(file.as_raw_fd(), &t, &t)
                        .map_err(|e| ImageError::io(format!("set mtime of {name:?}"), e.into()))?;
                }
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_entry("symbolic link without a target"))?
                    .into_owned();
                self.remove_existing(pfd, parents, last, &name)?;
                // The target is stored as is: it is only ever followed inside a
                // machine's root, never while unpacking.
                symlinkat(OsStr::from_bytes(&target), Some(pfd), last.as_os_str())
                    .map_err(|e| ImageError::io(format!("create symlink {name:?}"), e.into()))?;
                if self.options.preserve_ownership {
                    fchownat(
                        Some(pfd),
                        last.as_os_str(),
                        Some(Uid::from_raw(meta.uid as u32)),
                        Some(Gid::from_raw(meta.gid as u32)),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| ImageError::io(format!("chown {name:?}"), e.into()))?;
                }
                if let Some(t) = meta.mtime {
                    utimensat(
                        Some(pfd),
                        last.as_os_str(),
                        &t,
                        &t,
                        UtimensatFlags::NoFollowSymlink,
                    )
                    .map_err(|e| ImageError::io(format!("set mtime of {name:?}"), e.into()))?;
                }
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_entry("hard link without a target"))?
                    .into_owned();
                let tcomps = clean_path(&target)
                    .map_err(|r| unsafe_entry(&format!("hard link target {r}")))?;
                let Some((tlast, tparents)) = tcomps.split_last() else {
                    return Err(unsafe_entry("hard link to the layer root"));
                };
                let tparent = self.open_existing_parent(tparents, &name)?;
                let st = fstatat(
                    Some(tparent.as_raw_fd()),
                    tlast.as_os_str(),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|_| unsafe_entry("hard link target is not in this layer"))?;
                if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    return Err(unsafe_entry("hard link to a directory"));
                }
                if tcomps == comps {
                    return Ok(());
                }
                self.remove_existing(pfd, parents, last, &name)?;
                linkat(
                    Some(tparent.as_raw_fd()),
                    tlast.as_os_str(),
                    Some(pfd),
                    last.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| ImageError::io(format!("create hard link {name:?}"), e.into()))?;
            }
            EntryType::Char | EntryType::Block => {
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                if kind == EntryType::Char && major == 0 && minor == 0 {
                    // Already an overlay whiteout (layers exported from overlay).
                    self.remove_existing(pfd, parents, last, &name)?;
                    mknodat(
                        Some(pfd),
                        last.as_os_str(),
                        SFlag::S_IFCHR,
                        Mode::empty(),
                        makedev(0, 0),
                    )
                    .map_err(|e| ImageError::io(format!("create whiteout {name:?}"), e.into()))?;
                    return Ok(());
                }
                match self.options.devices {
                    DevicePolicy::Refuse => {
                        return Err(unsafe_entry("device nodes are not allowed in layers"));
                    }
                    DevicePolicy::Skip => {
                        tracing::warn!(entry = %name, "skipping device node in layer");
                        self.stats.skipped_devices.push(name);
                    }
                }
            }
            EntryType::Fifo => {
                self.remove_existing(pfd, parents, last, &name)?;
                mknodat(
                    Some(pfd),
                    last.as_os_str(),
                    SFlag::S_IFIFO,
                    Mode::from_bits_truncate(meta.mode),
                    0,
                )
                .map_err(|e| ImageError::io(format!("create fifo {name:?}"), e.into()))?;
            }
            other => {
                tracing::debug!(entry = %name, kind = ?other, "skipping unsupported tar entry");
            }
        }
        Ok(())
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Meta, ImageError> {
        let h = entry.header();
        let bad = |what: &str| ImageError::BadArchive(format!("entry {name:?}: bad {what}"));
        let mut meta = Meta {
            mode: h.mode().map_err(|_| bad("mode"))? & 0o7777,
            uid: h.uid().map_err(|_| bad("uid"))?,
            gid: h.gid().map_err(|_| bad("gid"))?,
            mtime: h.mtime().ok().map(|t| TimeSpec::new(t as i64, 0)),
            xattrs: Vec::new(),
        };
        if let Some(exts) = entry.pax_extensions().map_err(|_| bad("pax header"))? {
            for ext in exts {
                let ext = ext.map_err(|_| bad("pax header"))?;
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                let text = std::str::from_utf8(value).unwrap_or("");
                match key {
                    "uid" => meta.uid = text.parse().map_err(|_| bad("pax uid"))?,
                    "gid" => meta.gid = text.parse().map_err(|_| bad("pax gid"))?,
                    "mtime" => {
                        if let Some(t) = parse_pax_time(text) {
                            meta.mtime = Some(t);
                        }
                    }
                    _ => {
                        if let Some(xname) = key.strip_prefix("SCHILY.xattr.") {
                            if xattr_allowed(xname) {
                                meta.xattrs.push((xname.to_string(), value.to_vec()));
                            } else {
                                tracing::debug!(entry = %name, xattr = %xname, "dropping xattr");
                            }
                        }
                    }
                }
            }
        }
        Ok(meta)
    }

    fn set_owner_xattrs_fd(&self, fd: RawFd, meta: &Meta, name: &str) -> Result<(), ImageError> {
        if self.options.preserve_ownership {
            fchown(
                fd,
                Some(Uid::from_raw(meta.uid as u32)),
                Some(Gid::from_raw(meta.gid as u32)),
            )
            .map_err(|e| ImageError::io(format!("chown {name:?}"), e.into()))?;
        }
        for (k, v) in &meta.xattrs {
            if let Err(e) = set_xattr_fd(fd, k, v) {
                // Filesystems without user xattrs or capabilities still run most images.
                tracing::warn!(entry = %name, xattr = %k, error = %e, "cannot set xattr");
            }
        }
        Ok(())
    }

    /// Opens the parent directories of an entry, creating missing ones, never following
    /// a symbolic link.
    fn open_parent(&self, parents: &[OsString], name: &str) -> Result<OwnedFd, ImageError> {
        let mut cur = dup(&self.root)?;
        for (i, comp) in parents.iter().enumerate() {
            let next = match open_dir_at(cur.as_raw_fd(), comp) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match mkdirat(
                        Some(cur.as_raw_fd()),
                        comp.as_os_str(),
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => {
                            return Err(ImageError::io(
                                format!("create parent of {name:?}"),
                                e.into(),
                            ));
                        }
                    }
                    open_dir_at(cur.as_raw_fd(), comp).map_err(|e| {
                        self.component_error(e, cur.as_raw_fd(), comp, &parents[..=i], name)
                    })?
                }
                Err(e) => {
                    return Err(self.component_error(
                        e,
                        cur.as_raw_fd(),
                        comp,
                        &parents[..=i],
                        name,
                    ));
                }
            };
            cur = next;
        }
        Ok(cur)
    }

    /// Like [`Self::open_parent`] but creates nothing: for hard link targets.
    fn open_existing_parent(
        &self,
        parents: &[OsString],
        name: &str,
    ) -> Result<OwnedFd, ImageError> {
        let mut cur = dup(&self.root)?;
        for (i, comp) in parents.iter().enumerate() {
            cur = open_dir_at(cur.as_raw_fd(), comp).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    ImageError::UnsafeEntry {
                        entry: name.to_string(),
                        reason: "hard link target is not in this layer".into(),
                    }
                } else {
                    let err = self.component_error(e, cur.as_raw_fd(), comp, &parents[..=i], name);
                    match err {
                        ImageError::UnsafeEntry { entry, reason } => ImageError::UnsafeEntry {
                            entry,
                            reason: format!("hard link target: {reason}"),
                        },
                        other => other,
                    }
                }
            })?;
        }
        Ok(cur)
    }

    fn component_error(
        &self,
        e: io::Error,
        dirfd: RawFd,
        comp: &OsStr,
        so_far: &[OsString],
        name: &str,
    ) -> ImageError {
        let shown = so_far
            .iter()
            .map(|c| c.to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        let is_symlink = fstatat(Some(dirfd), comp, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK)
            .unwrap_or(false);
        if is_symlink {
            return ImageError::UnsafeEntry {
                entry: name.to_string(),
                reason: format!("path goes through symbolic link {shown:?}"),
            };
        }
        if e.raw_os_error() == Some(libc::ENOTDIR) {
            return ImageError::UnsafeEntry {
                entry: name.to_string(),
                reason: format!("parent {shown:?} is not a directory"),
            };
        }
        ImageError::io(format!("open parent {shown:?} of {name:?}"), e)
    }

    fn parent_error(&self, e: io::Error, name: &str, what: &str) -> ImageError {
        ImageError::io(format!("open {what} {name:?}"), e)
    }

    /// Makes room for a non-directory entry: a later entry of the same name replaces
    /// an earlier one.
    fn remove_existing(
        &self,
        pfd: RawFd,
        parents: &[OsString],
        last: &OsStr,
        name: &str,
    ) -> Result<(), ImageError> {
        match unlinkat(Some(pfd), last, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(Errno::EISDIR) | Err(Errno::EPERM) => {
                // Parents were opened without following links, so this path is inside
                // the layer; remove_dir_all does not follow links either.
                let mut p = self.root_path.clone();
                p.extend(parents);
                p.push(last);
                std::fs::remove_dir_all(&p)
                    .map_err(|e| ImageError::io(format!("replace directory {name:?}"), e))
            }
            Err(e) => Err(ImageError::io(format!("replace {name:?}"), e.into())),
        }
    }

    /// Makes room for a directory entry; returns whether it replaced a whiteout.
    fn prepare_dir(&self, pfd: RawFd, last: &OsStr, name: &str) -> Result<bool, ImageError> {
        let mut replaced_whiteout = false;
        if let Ok(st) = fstatat(Some(pfd), last, AtFlags::AT_SYMLINK_NOFOLLOW) {
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                return Ok(false);
            }
            replaced_whiteout = st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0;
            unlinkat(Some(pfd), last, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| ImageError::io(format!("replace {name:?}"), e.into()))?;
        }
        match mkdirat(Some(pfd), last, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => Ok(replaced_whiteout),
            Err(e) => Err(ImageError::io(
                format!("create directory {name:?}"),
                e.into(),
            )),
        }
    }

    /// Applies directory modes and mtimes, deepest first so a parent's mtime is set
    /// after its children changed it.
    fn finish_dirs(&mut self) -> Result<(), ImageError> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.comps.len()));
        for d in dirs {
            let shown = d
                .comps
                .iter()
                .map(|c| c.to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let mut fd = dup(&self.root)?;
            let mut replaced = false;
            for comp in &d.comps {
                fd = match open_dir_at(fd.as_raw_fd(), comp) {
                    Ok(fd) => fd,
                    // A later entry replaced the directory (or one above it) with a
                    // file or a link: its metadata no longer applies to anything.
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::ENOTDIR | libc::ENOENT | libc::ELOOP)
                        ) =>
                    {
                        replaced = true;
                        break;
                    }
                    Err(e) => return Err(ImageError::io(format!("reopen directory {shown:?}"), e)),
                };
            }
            if replaced {
                continue;
            }
            fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(d.mode))
                .map_err(|e| ImageError::io(format!("chmod {shown:?}"), e.into()))?;
            if let Some(t) = d.mtime {
                futimens(fd.as_raw_fd(), &t, &t)
                    .map_err(|e| ImageError::io(format!("set mtime of {shown:?}"), e.into()))?;
            }
        }
        Ok(())
    }
}

/// Cleans an entry name into components inside the layer: drops a leading `/`, empty
/// and `.` components, resolves `..` lexically and refuses one that climbs above the
/// root.
pub fn clean_path(raw: &[u8]) -> Result<Vec<OsString>, &'static str> {
    let mut out: Vec<OsString> = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err("escapes the layer through \"..\"");
                }
            }
            c => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

/// Extended attributes carried over from archives. `trusted.*` (which includes the
/// overlay's own attributes) and security labels of the build host are dropped: a layer
/// must not be able to steer overlayfs.
fn xattr_allowed(name: &str) -> bool {
    name.starts_with("user.")
        || name == "security.capability"
        || name == "system.posix_acl_access"
        || name == "system.posix_acl_default"
}

fn parse_pax_time(s: &str) -> Option<TimeSpec> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nanos: i64 = digits.parse().ok()?;
    Some(TimeSpec::new(secs, if secs < 0 { 0 } else { nanos }))
}

fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: open returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_dir_at(dirfd: RawFd, name: &OsStr) -> io::Result<OwnedFd> {
    let fd = openat(
        Some(dirfd),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: openat returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, ImageError> {
    fd.try_clone()
        .map_err(|e| ImageError::io("duplicate descriptor", e))
}

/// Sets an xattr on an open file or directory.
pub(crate) fn set_xattr_fd(fd: RawFd, name: &str, value: &[u8]) -> io::Result<()> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the name is NUL-terminated and the value pointer/length describe a live
    // slice for the duration of the call.
    let rc = unsafe { libc::fsetxattr(fd, cname.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_strips_and_rejects() {
        let ok = |s: &str| {
            clean_path(s.as_bytes())
                .unwrap()
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/")
        };
        assert_eq!(ok("/etc/passwd"), "etc/passwd");
        assert_eq!(ok("./a//b/./c"), "a/b/c");
        assert_eq!(ok("a/b/../c"), "a/c");
        assert_eq!(ok("./"), "");
        assert!(clean_path(b"../x").is_err());
        assert!(clean_path(b"a/../../x").is_err());
        assert!(clean_path(b"/../x").is_err());
    }

    #[test]
    fn pax_time_parses_fractions() {
        let t = parse_pax_time("1700000000.5").unwrap();
        assert_eq!(t.tv_sec(), 1_700_000_000);
        assert_eq!(t.tv_nsec(), 500_000_000);
        assert!(parse_pax_time("x").is_none());
    }
}
