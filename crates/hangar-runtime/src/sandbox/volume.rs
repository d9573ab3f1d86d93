//! Volumes: persistent disks mounted into one machine at a time.
//!
//! Owns `state_dir/layers/volumes/` and `state_dir/layers/volume-snapshots/`. Each
//! volume is a sparse file holding an ext4 file system, kept on the layers file
//! system (btrfs), so a snapshot, a fork and a restore are reflink clones of the
//! file (`FICLONE`: one ioctl, no data copied) and the size limit is the file
//! system's own (a full volume gives `ENOSPC` inside the machine and nothing else).
//!
//! A volume reaches a machine through a loop device attached with `AUTOCLEAR` and
//! mounted only inside the machine's own mount namespace by the boot helper
//! ([`super::boot`]). The daemon holds the device open just until the helper has
//! mounted it, so when the namespace dies (destroy, restore, a failed boot) the
//! last reference goes and the kernel detaches the device itself: no mount and no
//! loop device can be left on the host by any error path.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hangar_core::MachineId;
use hangar_core::driver::{Attachment, VolumeOrigin, VolumeUsage};

use super::storage::run;
use super::{SandboxDriver, SandboxError};

/// How long an attach waits for the previous user of a volume (a sandbox being torn
/// down) to let go of it.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> SandboxError {
    SandboxError::io(context)
}

#[derive(Debug, Clone)]
pub(crate) struct Volumes {
    volumes: PathBuf,
    snapshots: PathBuf,
}

impl Volumes {
    pub fn open(layers: &Path) -> Result<Volumes, SandboxError> {
        let v = Volumes {
            volumes: layers.join("volumes"),
            snapshots: layers.join("volume-snapshots"),
        };
        for dir in [&v.volumes, &v.snapshots] {
            std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        Ok(v)
    }

    pub fn image(&self, id: &str) -> Result<PathBuf, SandboxError> {
        check_id(id)?;
        Ok(self.volumes.join(format!("{id}.ext4")))
    }

    fn snapshot_image(&self, id: &str) -> Result<PathBuf, SandboxError> {
        check_id(id)?;
        Ok(self.snapshots.join(format!("{id}.ext4")))
    }

    /// Creates the volume's image: an empty ext4 file system, or a clone of a
    /// snapshot or of another volume grown to `size`. Built under a temporary name,
    /// so a failure leaves nothing.
    pub fn create(&self, id: &str, size: u64, origin: Origin<'_>) -> Result<(), SandboxError> {
        let image = self.image(id)?;
        if image.exists() {
            return Err(SandboxError::InvalidSpec(format!("volume {id} exists")));
        }
        let tmp = self.volumes.join(format!(".{id}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let built = (|| {
            match origin {
                Origin::Empty => {
                    let file = File::create(&tmp).map_err(io_err("creating the volume image"))?;
                    file.set_len(size)
                        .map_err(io_err("sizing the volume image"))?;
                    drop(file);
                    run(Command::new("mkfs.ext4")
                        .args(["-q", "-F", "-m", "0", "-E"])
                        .arg("lazy_itable_init=1,lazy_journal_init=1,nodiscard")
                        .arg(&tmp))?;
                }
                Origin::Snapshot(snapshot) => {
                    clone_file(&self.snapshot_image(snapshot)?, &tmp)?;
                    grow_offline(&tmp, size)?;
                }
                Origin::Volume(source, attached) => {
                    let from = self.image(source)?;
                    match attached {
                        Some(mount) => frozen(mount, &from, || clone_file(&from, &tmp))?,
                        None => clone_file(&from, &tmp)?,
                    }
                    grow_offline(&tmp, size)?;
                }
            }
            std::fs::rename(&tmp, &image).map_err(io_err("installing the volume image"))
        })();
        if built.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        built
    }

    /// Grows the image and its file system to `size` bytes; a mounted one online.
    /// Returns false when the mounted file system could not grow in place (the host
    /// withholds `CAP_SYS_RESOURCE`): it grows the next time the volume is attached.
    pub fn extend(
        &self,
        id: &str,
        size: u64,
        attached: Option<&Path>,
    ) -> Result<bool, SandboxError> {
        let image = self.image(id)?;
        let current = std::fs::metadata(&image)
            .map_err(io_err(format!("reading volume {id}")))?
            .len();
        if size <= current {
            return Ok(true);
        }
        let Some(mount) = attached else {
            // e2fsck and resize2fs must never touch a mounted file system.
            wait_released(id, &image)?;
            grow_offline(&image, size)?;
            return Ok(true);
        };
        let device = attached_loop(&image)
            .ok_or_else(|| SandboxError::InvalidSpec(format!("volume {id} is not mounted")))?;
        let dir = open_mount(mount, &device)?;
        OpenOptions::new()
            .write(true)
            .open(&image)
            .and_then(|f| f.set_len(size))
            .map_err(io_err("growing the volume image"))?;
        let dev = File::open(&device).map_err(io_err(format!("opening {}", device.display())))?;
        // SAFETY: an argument-less ioctl on a loop device we opened.
        if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_CAPACITY, 0) } < 0 {
            return Err(io_err("updating the loop device's size")(
                io::Error::last_os_error(),
            ));
        }
        let block = statfs(&dir)?.block_size.max(1024);
        let blocks: u64 = size / block;
        // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 from the pointer.
        if unsafe { libc::ioctl(dir.as_raw_fd(), EXT4_IOC_RESIZE_FS, &blocks as *const u64) } < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EPERM) {
                std::fs::write(self.pending_growth(id), b"")
                    .map_err(io_err("recording the volume's pending growth"))?;
                return Ok(false);
            }
            return Err(io_err("growing the mounted file system")(err));
        }
        Ok(true)
    }

    /// Marks a volume whose image grew while its file system could not.
    fn pending_growth(&self, id: &str) -> PathBuf {
        self.volumes.join(format!("{id}.grow"))
    }

    /// A clone of the volume as `snapshot`; a mounted file system is frozen (flushed
    /// and held still) for the instant the clone takes. Returns the size in bytes.
    pub fn snapshot(
        &self,
        id: &str,
        snapshot: &str,
        attached: Option<&Path>,
    ) -> Result<u64, SandboxError> {
        let image = self.image(id)?;
        let target = self.snapshot_image(snapshot)?;
        let tmp = self.snapshots.join(format!(".{snapshot}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let taken = match attached {
            Some(mount) => frozen(mount, &image, || clone_file(&image, &tmp)),
            None => clone_file(&image, &tmp),
        }
        .and_then(|()| std::fs::rename(&tmp, &target).map_err(io_err("installing the snapshot")));
        if let Err(e) = taken {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::metadata(&target)
            .map(|m| m.len())
            .map_err(io_err("reading the snapshot"))
    }

    pub fn remove(&self, id: &str) -> Result<(), SandboxError> {
        remove_file(&self.image(id)?)?;
        remove_file(&self.pending_growth(id))
    }

    pub fn remove_snapshot(&self, id: &str) -> Result<(), SandboxError> {
        remove_file(&self.snapshot_image(id)?)
    }

    /// Attaches the volume to a free loop device that detaches itself once nothing
    /// holds it. Waits for a sandbox being torn down to release the volume first:
    /// one file system is never mounted twice.
    pub fn attach(&self, id: &str) -> Result<LoopDevice, SandboxError> {
        let image = self.image(id)?;
        if !image.exists() {
            return Err(SandboxError::InvalidSpec(format!(
                "volume {id} does not exist on this host"
            )));
        }
        wait_released(id, &image)?;
        let pending = self.pending_growth(id);
        if pending.exists() {
            grow_file_system(&image)?;
            remove_file(&pending)?;
        }
        let backing = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&image)
            .map_err(io_err(format!("opening volume {id}")))?;
        attach_loop(&backing)
    }
}

/// Waits for the kernel to detach the loop device of a sandbox just torn down: its
/// mount namespace goes with its last process, the device a moment later.
fn wait_released(id: &str, image: &Path) -> Result<(), SandboxError> {
    let deadline = Instant::now() + RELEASE_TIMEOUT;
    let mut pause = Duration::from_millis(1);
    while attached_loop(image).is_some() {
        if Instant::now() >= deadline {
            return Err(SandboxError::InvalidSpec(format!(
                "volume {id} is still in use by a sandbox"
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    Ok(())
}

/// What a new volume starts as; `Volume` names the source's mount point (via
/// `/proc/PID/root`) while it is mounted.
pub(crate) enum Origin<'a> {
    Empty,
    Snapshot(&'a str),
    Volume(&'a str, Option<&'a Path>),
}

/// A loop device held open; dropping it lets the kernel detach it once the mount
/// that uses it (if any) is gone.
#[derive(Debug)]
pub(crate) struct LoopDevice {
    pub path: PathBuf,
    _fd: File,
}

/// Volume ids become file names: letters, digits, `-` and `_` only.
fn check_id(id: &str) -> Result<(), SandboxError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SandboxError::InvalidSpec(format!(
            "{id:?} is not a volume id"
        )))
    }
}

fn remove_file(path: &Path) -> Result<(), SandboxError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("removing {}", path.display()))(e)),
    }
}

/// `target` becomes a copy of `source` sharing its blocks (a reflink); where the file
/// system cannot share blocks (layers on plain directories) the data is copied.
fn clone_file(source: &Path, target: &Path) -> Result<(), SandboxError> {
    let src = File::open(source).map_err(io_err(format!("opening {}", source.display())))?;
    let dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(target)
        .map_err(io_err(format!("creating {}", target.display())))?;
    // SAFETY: FICLONE takes the source descriptor as its argument.
    if unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY) => {
            drop(dst);
            std::fs::copy(source, target)
                .map(|_| ())
                .map_err(io_err("copying the volume image"))
        }
        _ => Err(io_err("cloning the volume image")(err)),
    }
}

/// Grows an unmounted image and its file system.
fn grow_offline(image: &Path, size: u64) -> Result<(), SandboxError> {
    let current = std::fs::metadata(image)
        .map_err(io_err("reading the volume image"))?
        .len();
    if size <= current {
        return Ok(());
    }
    OpenOptions::new()
        .write(true)
        .open(image)
        .and_then(|f| f.set_len(size))
        .map_err(io_err("growing the volume image"))?;
    grow_file_system(image)
}

/// Grows an unmounted image's file system to the image's size.
fn grow_file_system(image: &Path) -> Result<(), SandboxError> {
    // resize2fs wants a freshly checked file system; exit code 1 means "fixed".
    let out = Command::new("e2fsck")
        .args(["-f", "-p"])
        .arg(image)
        .output()
        .map_err(io_err("running e2fsck"))?;
    if !matches!(out.status.code(), Some(0 | 1)) {
        return Err(SandboxError::Unsupported(format!(
            "e2fsck failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim()
        )));
    }
    run(Command::new("resize2fs").arg("-p").arg(image))
}

/// Runs `f` with the mounted file system of `image` (reached at `mount`) frozen.
fn frozen<T>(
    mount: &Path,
    image: &Path,
    f: impl FnOnce() -> Result<T, SandboxError>,
) -> Result<T, SandboxError> {
    let device = attached_loop(image)
        .ok_or_else(|| SandboxError::InvalidSpec("the volume is not mounted".into()))?;
    let dir = open_mount(mount, &device)?;
    // SAFETY: FIFREEZE and FITHAW take an ignored int argument.
    if unsafe { libc::ioctl(dir.as_raw_fd(), FIFREEZE, 0) } < 0 {
        return Err(io_err("freezing the volume's file system")(
            io::Error::last_os_error(),
        ));
    }
    let result = f();
    // SAFETY: as above.
    if unsafe { libc::ioctl(dir.as_raw_fd(), FITHAW, 0) } < 0 {
        tracing::error!(error = %io::Error::last_os_error(), "thawing a volume failed");
    }
    result
}

/// Opens a volume's mount point inside a machine and checks that it really is the
/// volume's file system: a machine cannot swap something else in under the path.
fn open_mount(mount: &Path, device: &Path) -> Result<File, SandboxError> {
    // The path runs through the machine's own tree, which it may have changed:
    // only a directory is opened (never a FIFO that would block, nor a device), and
    // it is used only if it is the volume's file system.
    use std::os::unix::fs::OpenOptionsExt;
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(mount)
        .map_err(io_err(format!("opening {}", mount.display())))?;
    let rdev = std::fs::metadata(device)
        .map_err(io_err(format!("reading {}", device.display())))?
        .rdev();
    let dev = dir
        .metadata()
        .map_err(io_err("reading the mount point"))?
        .dev();
    if dev != rdev {
        return Err(SandboxError::InvalidSpec(format!(
            "{} is not the volume's file system any more",
            mount.display()
        )));
    }
    Ok(dir)
}

fn statfs(dir: &File) -> Result<VolumeUsage, SandboxError> {
    let s = nix::sys::statvfs::fstatvfs(dir).map_err(|e| {
        io_err("reading the volume's usage")(io::Error::from_raw_os_error(e as i32))
    })?;
    Ok(VolumeUsage {
        block_size: s.fragment_size(),
        blocks: s.blocks(),
        blocks_free: s.blocks_free(),
        blocks_avail: s.blocks_available(),
    })
}

/// The usage of the volume mounted at `mount`, checked to be `image`'s.
pub(crate) fn usage(mount: &Path, image: &Path) -> Option<VolumeUsage> {
    let device = attached_loop(image)?;
    statfs(&open_mount(mount, &device).ok()?).ok()
}

/// The loop device backed by `image`, if any.
pub(crate) fn attached_loop(image: &Path) -> Option<PathBuf> {
    let meta = std::fs::metadata(image).ok()?;
    std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .find_map(|dev| {
            let name = dev.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                return None;
            }
            // Compare the file, not the path: sysfs shows " (deleted)" and the like.
            let backing = std::fs::read_to_string(dev.path().join("loop/backing_file")).ok()?;
            let backing = std::fs::metadata(backing.trim()).ok()?;
            let same = backing.dev() == meta.dev() && backing.ino() == meta.ino();
            same.then(|| PathBuf::from(format!("/dev/{name}")))
        })
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
// _IOWR('X', 119, int), _IOWR('X', 120, int), _IOW('f', 16, u64)
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

/// Attaches `backing` to a free loop device with `AUTOCLEAR` (`LOOP_CONFIGURE`, one
/// ioctl, so the device is never seen half-configured).
fn attach_loop(backing: &File) -> Result<LoopDevice, SandboxError> {
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(io_err("opening /dev/loop-control"))?;
    // Another process may take the free device first: try again a few times.
    for _ in 0..16 {
        // SAFETY: an argument-less ioctl on the loop control device.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io_err("finding a free loop device")(
                io::Error::last_os_error(),
            ));
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(dev) => dev,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(format!("opening {}", path.display()))(e)),
        };
        if !dev
            .metadata()
            .is_ok_and(|m| m.file_type().is_block_device())
        {
            return Err(SandboxError::Unsupported(format!(
                "{} is not a block device",
                path.display()
            )));
        }
        let mut config = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            // SAFETY: all-zero is a valid loop_info64.
            info: unsafe { std::mem::zeroed() },
            reserved: [0; 8],
        };
        config.info.flags = LO_FLAGS_AUTOCLEAR;
        // SAFETY: LOOP_CONFIGURE reads one struct loop_config.
        if unsafe {
            libc::ioctl(
                dev.as_raw_fd(),
                LOOP_CONFIGURE,
                &config as *const LoopConfig,
            )
        } == 0
        {
            return Ok(LoopDevice { path, _fd: dev });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) {
            return Err(io_err("attaching the volume to a loop device")(err));
        }
    }
    Err(SandboxError::Unsupported(
        "no free loop device could be claimed".into(),
    ))
}

impl SandboxDriver {
    /// The volume's mount point as the daemon reaches it: through init's root, in the
    /// machine's mount namespace.
    fn mount_point(&self, attached: &Attachment) -> Result<PathBuf, SandboxError> {
        let pid = self
            .init_pid(&attached.machine_id)
            .ok_or_else(|| SandboxError::NotFound(attached.machine_id.clone()))?;
        Ok(PathBuf::from(format!("/proc/{pid}/root")).join(attached.path.trim_start_matches('/')))
    }

    /// The mount point if the machine's sandbox runs, else `None` (the volume is not
    /// mounted anywhere).
    fn live_mount(&self, attached: Option<&Attachment>) -> Option<PathBuf> {
        attached.and_then(|a| self.mount_point(a).ok())
    }

    pub async fn create_volume_image(
        &self,
        id: &str,
        size: u64,
        origin: &VolumeOrigin,
        source_attached: Option<&Attachment>,
    ) -> Result<(), SandboxError> {
        let volumes = self.volumes.clone();
        let mount = self.live_mount(source_attached);
        let (id, origin) = (id.to_string(), origin.clone());
        blocking(move || {
            let origin = match &origin {
                VolumeOrigin::Empty => Origin::Empty,
                VolumeOrigin::Snapshot(s) => Origin::Snapshot(s),
                VolumeOrigin::Volume(v) => Origin::Volume(v, mount.as_deref()),
            };
            volumes.create(&id, size, origin)
        })
        .await
    }

    pub async fn extend_volume_image(
        &self,
        id: &str,
        size: u64,
        attached: Option<&Attachment>,
    ) -> Result<bool, SandboxError> {
        let volumes = self.volumes.clone();
        let mount = self.live_mount(attached);
        let id = id.to_string();
        blocking(move || volumes.extend(&id, size, mount.as_deref())).await
    }

    pub async fn snapshot_volume_image(
        &self,
        id: &str,
        snapshot: &str,
        attached: Option<&Attachment>,
    ) -> Result<u64, SandboxError> {
        let volumes = self.volumes.clone();
        let mount = self.live_mount(attached);
        let (id, snapshot) = (id.to_string(), snapshot.to_string());
        blocking(move || volumes.snapshot(&id, &snapshot, mount.as_deref())).await
    }

    pub async fn volume_usage_of(&self, id: &str, attached: &Attachment) -> Option<VolumeUsage> {
        let mount = self.mount_point(attached).ok()?;
        let image = self.volumes.image(id).ok()?;
        tokio::task::spawn_blocking(move || usage(&mount, &image))
            .await
            .ok()
            .flatten()
    }

    /// Deletes the volume once no sandbox holds it (the service has already checked
    /// that no machine mounts it).
    pub async fn delete_volume_image(&self, id: &str) -> Result<(), SandboxError> {
        let volumes = self.volumes.clone();
        let id = id.to_string();
        blocking(move || {
            let image = volumes.image(&id)?;
            wait_released(&id, &image)?;
            volumes.remove(&id)
        })
        .await
    }

    pub async fn delete_volume_snapshot_image(&self, id: &str) -> Result<(), SandboxError> {
        self.volumes.remove_snapshot(id)
    }

    /// Loop devices for every volume of a sandbox being built, held until its boot
    /// helper has mounted them.
    pub(crate) async fn attach_volumes(
        &self,
        machine: &MachineId,
        mounts: &[hangar_core::driver::VolumeMount],
    ) -> Result<Vec<LoopDevice>, SandboxError> {
        let volumes = self.volumes.clone();
        let ids: Vec<String> = mounts.iter().map(|m| m.volume.clone()).collect();
        let machine = machine.clone();
        blocking(move || {
            let mut devices = Vec::with_capacity(ids.len());
            for id in &ids {
                match volumes.attach(id) {
                    Ok(device) => devices.push(device),
                    Err(e) => {
                        tracing::warn!(machine = %machine, volume = %id, error = %e, "attaching a volume failed");
                        // Devices attached so far detach as they drop.
                        return Err(e);
                    }
                }
            }
            Ok(devices)
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SandboxError> + Send + 'static,
) -> Result<T, SandboxError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SandboxError::Protocol(format!("volume task: {e}")))?
}
