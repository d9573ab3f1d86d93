//! Machines' writable layers and their checkpoints.
//!
//! Owns `state_dir/layers/`: one directory per machine holding the overlay's `upper/`
//! and `work/`, and read-only checkpoints of it. It never touches a machine's runtime
//! directory (sockets, pidfile, cgroups): a layer outlives its sandbox, so a machine
//! whose init died (a host reboot) comes back with its files.
//!
//! ```text
//! state_dir/layers/               btrfs: the data dir's own, or a loop-mounted image
//!     machines/<machine-id>/      a subvolume: upper/ work/
//!     checkpoints/<machine-id>/<checkpoint-id>/   read-only snapshots of it
//! state_dir/layers.btrfs          the sparse image, when the data dir is not btrfs
//! ```
//!
//! A checkpoint, a restore and a fork are btrfs snapshots (one ioctl each, no data
//! copied). Without btrfs (no kernel support, no `mkfs.btrfs`) layers are plain
//! directories: machines work, and checkpoint verbs report that they are unsupported.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use hangar_core::MachineId;
use hangar_core::driver::CheckpointDiff;

use super::SandboxError;

/// Where writable layers live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageMode {
    /// btrfs subvolumes: on the state directory's file system if it is btrfs, else on
    /// a sparse btrfs image of `image_size` bytes (default: 64 GiB or the free space,
    /// whichever is smaller) loop-mounted inside it. Falls back to plain directories
    /// when btrfs cannot be used.
    Btrfs { image_size: Option<u64> },
    /// Plain directories: no checkpoints.
    Plain,
}

const DEFAULT_IMAGE_SIZE: u64 = 64 << 30;
const MIN_IMAGE_SIZE: u64 = 1 << 30;
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
/// The inode number of every btrfs subvolume's root directory.
const SUBVOLUME_INODE: u64 = 256;

#[derive(Debug, Clone)]
pub(crate) struct Storage {
    root: PathBuf,
    btrfs: bool,
}

/// Names of staged layers in `layers/machines/`: hidden, and no machine id.
const STAGED_PREFIX: &str = ".staged-";
/// Names of spare layers: `.spare-<machine-id>.<checkpoint-id>`.
const SPARE_PREFIX: &str = ".spare-";

/// A layer beside the machines' own: a restore's new layer before the swap, its
/// old one after.
#[derive(Debug)]
pub(crate) struct Staged(PathBuf);

impl Staged {
    pub fn upper(&self) -> PathBuf {
        self.0.join("upper")
    }

    pub fn work(&self) -> PathBuf {
        self.0.join("work")
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> SandboxError {
    SandboxError::io(context)
}

impl Storage {
    /// Prepares `state_dir/layers`, mounting the btrfs image if it is not mounted
    /// (after a reboot). Nothing is unmounted when the daemon exits: running machines
    /// keep using it.
    pub fn open(state_dir: &Path, mode: &StorageMode) -> Result<Storage, SandboxError> {
        let root = state_dir.join("layers");
        std::fs::create_dir_all(&root).map_err(io_err(format!("creating {}", root.display())))?;
        let btrfs = match mode {
            StorageMode::Plain => false,
            StorageMode::Btrfs { image_size } => {
                if is_btrfs(&root) {
                    true
                } else {
                    match mount_image(state_dir, &root, *image_size) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(
                                error = %super::error_chain(&e),
                                "btrfs is not usable: writable layers are plain directories and checkpoints are unavailable"
                            );
                            false
                        }
                    }
                }
            }
        };
        for sub in ["machines", "checkpoints"] {
            std::fs::create_dir_all(root.join(sub))
                .map_err(io_err(format!("creating layers/{sub}")))?;
        }
        // Staged layers a restore left behind when the daemon stopped mid-way, and
        // spares (made again when next needed).
        if let Ok(entries) = std::fs::read_dir(root.join("machines")) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with('.')
                    && let Err(e) = remove_tree(&entry.path())
                {
                    tracing::warn!(path = %entry.path().display(), error = %e, "removing a staged layer");
                }
            }
        }
        Ok(Storage { root, btrfs })
    }

    pub fn is_btrfs(&self) -> bool {
        self.btrfs
    }

    fn layer(&self, id: &MachineId) -> PathBuf {
        self.root.join("machines").join(id.as_str())
    }

    pub fn upper(&self, id: &MachineId) -> PathBuf {
        self.layer(id).join("upper")
    }

    pub fn work(&self, id: &MachineId) -> PathBuf {
        self.layer(id).join("work")
    }

    fn checkpoints(&self, id: &MachineId) -> PathBuf {
        self.root.join("checkpoints").join(id.as_str())
    }

    fn checkpoint_path(&self, id: &MachineId, checkpoint: &str) -> Result<PathBuf, SandboxError> {
        check_name(checkpoint)?;
        Ok(self.checkpoints(id).join(checkpoint))
    }

    fn require_btrfs(&self) -> Result<(), SandboxError> {
        if self.btrfs {
            Ok(())
        } else {
            Err(SandboxError::Unsupported(
                "checkpoints need btrfs, and this host's writable layers are plain directories \
                 (no btrfs support in the kernel or no mkfs.btrfs); install btrfs-progs and restart hangar"
                    .into(),
            ))
        }
    }

    /// Creates the machine's layer if it does not exist; an existing one is kept.
    pub fn ensure_layer(&self, id: &MachineId) -> Result<(), SandboxError> {
        let layer = self.layer(id);
        if !layer.exists() {
            if self.btrfs {
                btrfs::create_subvolume(&layer)
                    .map_err(io_err(format!("creating subvolume {}", layer.display())))?;
            } else {
                std::fs::create_dir(&layer)
                    .map_err(io_err(format!("creating {}", layer.display())))?;
            }
        }
        for dir in [self.upper(id), self.work(id)] {
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(format!("creating {}", dir.display()))(e)),
            }
        }
        Ok(())
    }

    pub fn has_layer(&self, id: &MachineId) -> bool {
        self.layer(id).exists()
    }

    /// Deletes the machine's layer; an absent one is fine.
    pub fn remove_layer(&self, id: &MachineId) -> Result<(), SandboxError> {
        remove_tree(&self.layer(id))
    }

    /// Deletes the layer and every checkpoint of the machine.
    pub fn remove_all(&self, id: &MachineId) -> Result<(), SandboxError> {
        self.remove_layer(id)?;
        let spares = format!("{SPARE_PREFIX}{id}.");
        if let Ok(entries) = std::fs::read_dir(self.root.join("machines")) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&spares) {
                    remove_tree(&entry.path())?;
                }
            }
        }
        let dir = self.checkpoints(id);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                remove_tree(&entry.path())?;
            }
        }
        match std::fs::remove_dir(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("removing {}", dir.display()))(e)),
        }
    }

    /// Flushes the layer's file system when much data is dirty, so that a snapshot
    /// taken next (with the machine frozen) has little left to write. With little
    /// dirty data the snapshot's own commit is cheaper than a second one here.
    pub fn sync(&self, id: &MachineId) {
        if dirty_bytes() < SYNC_FIRST_ABOVE {
            return;
        }
        if let Ok(f) = File::open(self.layer(id)) {
            // SAFETY: syncfs on a descriptor we own.
            unsafe { libc::syncfs(f.as_raw_fd()) };
        }
    }

    /// A read-only snapshot of the machine's layer.
    pub fn checkpoint(&self, id: &MachineId, checkpoint: &str) -> Result<(), SandboxError> {
        self.require_btrfs()?;
        let target = self.checkpoint_path(id, checkpoint)?;
        if !self.layer(id).exists() {
            return Err(SandboxError::NotFound(id.clone()));
        }
        std::fs::create_dir_all(self.checkpoints(id))
            .map_err(io_err("creating the checkpoint directory"))?;
        btrfs::snapshot(&self.layer(id), &target, true)
            .map_err(io_err(format!("snapshotting the layer of {id}")))
    }

    /// The upper directory of a checkpoint; `InvalidSpec` when there is no such
    /// checkpoint.
    pub fn checkpoint_upper(
        &self,
        id: &MachineId,
        checkpoint: &str,
    ) -> Result<PathBuf, SandboxError> {
        let upper = self.checkpoint_path(id, checkpoint)?.join("upper");
        if !upper.is_dir() {
            return Err(SandboxError::InvalidSpec(format!(
                "machine {id} has no checkpoint {checkpoint}"
            )));
        }
        Ok(upper)
    }

    pub fn has_checkpoint(&self, id: &MachineId, checkpoint: &str) -> bool {
        self.checkpoint_path(id, checkpoint)
            .is_ok_and(|p| p.exists())
    }

    pub fn remove_checkpoint(&self, id: &MachineId, checkpoint: &str) -> Result<(), SandboxError> {
        remove_tree(&self.checkpoint_path(id, checkpoint)?)?;
        remove_tree(&self.spare_path(id, checkpoint)?)
    }

    /// Replaces the machine's layer with a writable snapshot of one of its
    /// checkpoints, atomically: the old layer is swapped out, then deleted.
    pub fn restore(&self, id: &MachineId, checkpoint: &str) -> Result<(), SandboxError> {
        let staged = self.stage(id, checkpoint)?;
        self.swap(id, &staged)?;
        self.discard(&staged)
    }

    /// A writable snapshot of one of the machine's checkpoints, beside its layer and
    /// not in use yet. Each has a name of its own, so an old one can still be in
    /// the middle of its deletion.
    pub fn stage(&self, id: &MachineId, checkpoint: &str) -> Result<Staged, SandboxError> {
        self.require_btrfs()?;
        let source = self.checkpoint_path(id, checkpoint)?;
        if !source.exists() {
            return Err(SandboxError::InvalidSpec(format!(
                "machine {id} has no checkpoint {checkpoint}"
            )));
        }
        let staged = self.staged_path(id);
        if std::fs::rename(self.spare_path(id, checkpoint)?, &staged).is_ok() {
            return Ok(Staged(staged));
        }
        btrfs::snapshot(&source, &staged, false)
            .map_err(io_err(format!("snapshotting checkpoint {checkpoint}")))?;
        Ok(Staged(staged))
    }

    fn staged_path(&self, id: &MachineId) -> PathBuf {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        self.root
            .join("machines")
            .join(format!("{STAGED_PREFIX}{id}.{nonce}"))
    }

    /// Where a machine keeps its spare of `checkpoint`: a writable snapshot made
    /// ahead of time, so that the next restore to (or fork of) that checkpoint is a
    /// rename instead of a snapshot and the transaction commit it waits for.
    fn spare_path(&self, id: &MachineId, checkpoint: &str) -> Result<PathBuf, SandboxError> {
        check_name(checkpoint)?;
        Ok(self
            .root
            .join("machines")
            .join(format!("{SPARE_PREFIX}{id}.{checkpoint}")))
    }

    /// Makes the spare of `checkpoint` if there is none. Off every request's path: a
    /// restore or fork that finds no spare snapshots for itself.
    pub fn prepare_spare(&self, id: &MachineId, checkpoint: &str) -> Result<(), SandboxError> {
        let spare = self.spare_path(id, checkpoint)?;
        if spare.exists() || !self.has_checkpoint(id, checkpoint) {
            return Ok(());
        }
        let staged = self.staged_path(id);
        btrfs::snapshot(&self.checkpoint_path(id, checkpoint)?, &staged, false)
            .map_err(io_err(format!("snapshotting checkpoint {checkpoint}")))?;
        let staged = Staged(staged);
        if let Err(e) = std::fs::rename(&staged.0, &spare) {
            self.discard(&staged)?;
            return Err(io_err("naming a spare layer")(e));
        }
        // Deleted while the spare was made: it would spare nothing.
        if !self.has_checkpoint(id, checkpoint) {
            remove_tree(&spare)?;
        }
        Ok(())
    }

    /// Makes `staged` the machine's layer; `staged` then holds the old one (if
    /// there was one), for [`Storage::discard`].
    pub fn swap(&self, id: &MachineId, staged: &Staged) -> Result<(), SandboxError> {
        let layer = self.layer(id);
        if layer.exists() {
            exchange(&staged.0, &layer).map_err(io_err("swapping in the restored layer"))
        } else {
            std::fs::rename(&staged.0, &layer).map_err(io_err("moving in the restored layer"))
        }
    }

    /// Deletes a staged (or swapped-out) layer.
    pub fn discard(&self, staged: &Staged) -> Result<(), SandboxError> {
        remove_tree(&staged.0)
    }

    /// Gives `target` a writable snapshot of `source`'s checkpoint as its layer.
    pub fn fork(
        &self,
        source: &MachineId,
        checkpoint: &str,
        target: &MachineId,
    ) -> Result<(), SandboxError> {
        self.require_btrfs()?;
        let from = self.checkpoint_path(source, checkpoint)?;
        if !from.exists() {
            return Err(SandboxError::InvalidSpec(format!(
                "machine {source} has no checkpoint {checkpoint}"
            )));
        }
        let layer = self.layer(target);
        if layer.exists() {
            return Err(SandboxError::InvalidSpec(format!(
                "machine {target} already has a writable layer"
            )));
        }
        if std::fs::rename(self.spare_path(source, checkpoint)?, &layer).is_ok() {
            return Ok(());
        }
        btrfs::snapshot(&from, &layer, false)
            .map_err(io_err(format!("snapshotting checkpoint {checkpoint}")))
    }

    /// What changed from checkpoint `from` to checkpoint `to` (or the live layer).
    pub fn diff(
        &self,
        id: &MachineId,
        from: &str,
        to: Option<&str>,
    ) -> Result<CheckpointDiff, SandboxError> {
        let a = self.checkpoint_path(id, from)?.join("upper");
        let b = match to {
            Some(to) => self.checkpoint_path(id, to)?.join("upper"),
            None => self.upper(id),
        };
        for side in [&a, &b] {
            if !side.exists() {
                return Err(SandboxError::InvalidSpec(format!(
                    "{} does not exist",
                    side.display()
                )));
            }
        }
        super::diff::diff_uppers(&a, &b).map_err(io_err("comparing layers"))
    }

    /// Machines that have a layer (their sandbox may be gone).
    pub fn layer_ids(&self) -> Vec<MachineId> {
        std::fs::read_dir(self.root.join("machines"))
            .map(|dir| {
                dir.flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(MachineId::parse))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Dirty data above which a checkpoint flushes before freezing the machine.
const SYNC_FIRST_ABOVE: u64 = 32 << 20;

/// The host's dirty and under-writeback page cache, from `/proc/meminfo`.
fn dirty_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .filter(|l| l.starts_with("Dirty:") || l.starts_with("Writeback:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum::<u64>()
        * 1024
}

/// Checkpoint ids become file names: letters, digits, `-` and `_` only.
fn check_name(name: &str) -> Result<(), SandboxError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SandboxError::InvalidSpec(format!(
            "{name:?} is not a checkpoint id"
        )))
    }
}

fn is_btrfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BTRFS_SUPER_MAGIC)
}

fn is_subvolume(path: &Path) -> bool {
    is_btrfs(path)
        && std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir() && m.ino() == SUBVOLUME_INODE)
}

/// Deletes a subvolume (with everything in it) or a plain directory tree.
fn remove_tree(path: &Path) -> Result<(), SandboxError> {
    if !path.exists() {
        return Ok(());
    }
    if is_subvolume(path) {
        btrfs::delete_subvolume(path)
            .map_err(io_err(format!("deleting subvolume {}", path.display())))
    } else {
        match std::fs::remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("removing {}", path.display()))(e)),
        }
    }
}

/// Swaps two paths in one step (`renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let a = cstring(a)?;
    let b = cstring(b)?;
    // SAFETY: two NUL-terminated paths.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// Creates (once) and mounts the sparse btrfs image at `root`.
fn mount_image(state_dir: &Path, root: &Path, size: Option<u64>) -> Result<(), SandboxError> {
    let image = state_dir.join("layers.btrfs");
    if !image.exists() {
        let size = match size {
            Some(size) => size.max(MIN_IMAGE_SIZE),
            None => {
                let free = nix::sys::statvfs::statvfs(state_dir)
                    .map(|s| s.blocks_available() * s.fragment_size())
                    .unwrap_or(DEFAULT_IMAGE_SIZE);
                free.clamp(MIN_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
            }
        };
        // Built under a temporary name so a crash never leaves a half-made image.
        let tmp = state_dir.join(".layers.btrfs.tmp");
        let file = File::create(&tmp).map_err(io_err("creating the btrfs image"))?;
        file.set_len(size)
            .map_err(io_err("sizing the btrfs image"))?;
        drop(file);
        run(Command::new("mkfs.btrfs").arg("-q").arg("-f").arg(&tmp))?;
        std::fs::rename(&tmp, &image).map_err(io_err("installing the btrfs image"))?;
    }
    // Direct I/O on the loop device: the image's data is cached once (by btrfs),
    // not a second time as dirty pages of the image file competing with commits.
    let device = attached_loop(&image).map_or_else(
        || {
            let out = Command::new("losetup")
                .args(["--find", "--show", "--direct-io=on"])
                .arg(&image)
                .output()
                .map_err(io_err("running losetup"))?;
            if !out.status.success() {
                return Err(SandboxError::Unsupported(format!(
                    "losetup failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        },
        Ok,
    )?;
    run(Command::new("mount")
        .args(["-t", "btrfs", "-o", "noatime,discard"])
        .arg(&device)
        .arg(root))?;
    if is_btrfs(root) {
        Ok(())
    } else {
        Err(SandboxError::Unsupported(format!(
            "{} is not btrfs after mounting",
            root.display()
        )))
    }
}

/// The loop device already backed by `image`, if any (attached before a daemon
/// restart, unmounted since).
fn attached_loop(image: &Path) -> Option<String> {
    let image = image.canonicalize().ok()?;
    std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .find_map(|dev| {
            let name = dev.file_name().to_string_lossy().into_owned();
            let backing = std::fs::read_to_string(dev.path().join("loop/backing_file")).ok()?;
            (name.starts_with("loop") && Path::new(backing.trim()) == image)
                .then(|| format!("/dev/{name}"))
        })
}

/// Runs a host tool (mkfs, resize2fs, losetup), its stderr in the error when it fails.
pub(super) fn run(cmd: &mut Command) -> Result<(), SandboxError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(io_err(format!("running {program}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SandboxError::Unsupported(format!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The three btrfs ioctls hangar needs, called directly: a snapshot is one syscall.
mod btrfs {
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;
    use std::path::Path;

    const SUBVOL_NAME_MAX: usize = 4039;
    const SUBVOL_RDONLY: u64 = 1 << 1;
    // _IOW(0x94, nr, 4096-byte argument)
    const IOC_SNAP_DESTROY: libc::c_ulong = 0x5000_940f;
    const IOC_SNAP_CREATE_V2: libc::c_ulong = 0x5000_9417;
    const IOC_SUBVOL_CREATE_V2: libc::c_ulong = 0x5000_9418;

    /// `struct btrfs_ioctl_vol_args_v2`.
    #[repr(C)]
    struct VolArgsV2 {
        fd: i64,
        transid: u64,
        flags: u64,
        unused: [u64; 4],
        name: [u8; SUBVOL_NAME_MAX + 1],
    }

    /// `struct btrfs_ioctl_vol_args`.
    #[repr(C)]
    struct VolArgs {
        fd: i64,
        name: [u8; 4088],
    }

    const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);
    const _: () = assert!(std::mem::size_of::<VolArgs>() == 4096);

    fn split(path: &Path) -> io::Result<(File, Vec<u8>)> {
        let parent = path
            .parent()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no parent directory"))?;
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?
            .as_encoded_bytes()
            .to_vec();
        if name.len() > SUBVOL_NAME_MAX {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "name too long"));
        }
        Ok((File::open(parent)?, name))
    }

    fn v2(fd: i64, flags: u64, name: &[u8]) -> Box<VolArgsV2> {
        let mut args = Box::new(VolArgsV2 {
            fd,
            transid: 0,
            flags,
            unused: [0; 4],
            name: [0; SUBVOL_NAME_MAX + 1],
        });
        args.name[..name.len()].copy_from_slice(name);
        args
    }

    fn ioctl<T>(dir: &File, request: libc::c_ulong, args: &mut T) -> io::Result<()> {
        // SAFETY: `args` is the 4096-byte structure this request expects.
        let rc = unsafe { libc::ioctl(dir.as_raw_fd(), request, args as *mut T) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    pub fn create_subvolume(path: &Path) -> io::Result<()> {
        let (dir, name) = split(path)?;
        ioctl(&dir, IOC_SUBVOL_CREATE_V2, &mut *v2(0, 0, &name))
    }

    /// Snapshots the subvolume `source` as `target`.
    pub fn snapshot(source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
        let src = File::open(source)?;
        let (dir, name) = split(target)?;
        let flags = if read_only { SUBVOL_RDONLY } else { 0 };
        ioctl(
            &dir,
            IOC_SNAP_CREATE_V2,
            &mut *v2(i64::from(src.as_raw_fd()), flags, &name),
        )
    }

    /// Deletes a subvolume and everything in it (read-only ones too, as root).
    pub fn delete_subvolume(path: &Path) -> io::Result<()> {
        let (dir, name) = split(path)?;
        let mut args = Box::new(VolArgs {
            fd: 0,
            name: [0; 4088],
        });
        args.name[..name.len()].copy_from_slice(&name);
        ioctl(&dir, IOC_SNAP_DESTROY, &mut *args)
    }
}
