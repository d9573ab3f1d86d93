//! Hostile and well-formed layer tarballs against the unpacker and the store.
//!
//! Every hostile case runs with a sentinel "outside" directory next to the layer and
//! checks that nothing appeared there (and that a pre-existing file was not touched).

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hangar_core::image::{ImageError, ImageStore};
use hangar_image::blob::unpack_blob;
use hangar_image::unpack::{DevicePolicy, UnpackOptions, unpack_layer};
use hangar_image::{LocalImageStore, StoreOptions};
use tar::{EntryType, Header};

/// Builds tar archives with raw header names, so `..` and absolute paths survive.
#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn raw(
        &mut self,
        name: &str,
        kind: EntryType,
        link: &str,
        data: &[u8],
        mode: u32,
        dev: (u32, u32),
    ) -> &mut Self {
        let mut h = Header::new_ustar();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(1001);
        h.set_mtime(1_600_000_000);
        if matches!(kind, EntryType::Char | EntryType::Block) {
            h.set_device_major(dev.0).unwrap();
            h.set_device_minor(dev.1).unwrap();
        }
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(name, EntryType::Regular, "", data, 0o644, (0, 0))
    }
    fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(name, EntryType::Directory, "", b"", 0o755, (0, 0))
    }
    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, EntryType::Symlink, target, b"", 0o777, (0, 0))
    }
    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, EntryType::Link, target, b"", 0o644, (0, 0))
    }
    fn bytes(&self) -> Vec<u8> {
        let mut b = self.0.clone();
        b.extend(std::iter::repeat_n(0u8, 1024));
        b
    }
}

struct Sandbox {
    _tmp: tempfile::TempDir,
    layer: PathBuf,
    outside: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let tmp = tempfile::tempdir().unwrap();
        let layer = tmp.path().join("layer");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&layer).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"keep").unwrap();
        Sandbox {
            _tmp: tmp,
            layer,
            outside,
        }
    }

    fn unpack(&self, tar: &Tar) -> Result<hangar_image::unpack::UnpackStats, ImageError> {
        unpack_layer(&tar.bytes()[..], &self.layer, &UnpackOptions::default())
    }

    /// The sentinel holds exactly what it held before.
    fn assert_outside_untouched(&self) {
        let names: Vec<String> = std::fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec!["secret"],
            "something escaped into the outside directory"
        );
        let secret = self.outside.join("secret");
        assert_eq!(std::fs::read(&secret).unwrap(), b"keep");
        assert_eq!(
            std::fs::metadata(&secret).unwrap().nlink(),
            1,
            "secret was hard linked"
        );
        assert!(!self.outside.parent().unwrap().join("escape").exists());
    }
}

fn assert_unsafe(result: Result<impl std::fmt::Debug, ImageError>, want_entry: &str) -> String {
    match result {
        Err(ImageError::UnsafeEntry { entry, reason }) => {
            assert_eq!(entry, want_entry, "error names the wrong entry ({reason})");
            reason
        }
        other => panic!("expected UnsafeEntry for {want_entry:?}, got {other:?}"),
    }
}

#[test]
fn dotdot_escapes_are_rejected() {
    for name in ["../escape", "a/../../escape", "./../escape", "/../escape"] {
        let sb = Sandbox::new();
        let reason = assert_unsafe(sb.unpack(Tar::default().file(name, b"x")), name);
        assert!(reason.contains(".."), "{reason}");
        sb.assert_outside_untouched();
    }
}

#[test]
fn absolute_paths_land_inside_the_layer() {
    let sb = Sandbox::new();
    sb.unpack(Tar::default().file("/etc/x", b"hi").file("a/../b", b"b"))
        .unwrap();
    assert_eq!(std::fs::read(sb.layer.join("etc/x")).unwrap(), b"hi");
    assert_eq!(std::fs::read(sb.layer.join("b")).unwrap(), b"b");
    sb.assert_outside_untouched();
}

type Case = fn(&mut Tar, &str) -> &'static str;

#[test]
fn writes_through_symlinks_are_rejected() {
    // Each case builds its archive against the sandbox's outside path and says which
    // entry must be named.
    let cases: &[Case] = &[
        |t, out| {
            t.symlink("evil", out).file("evil/file", b"x");
            "evil/file"
        },
        |t, _| {
            t.symlink("evil", "../outside").file("evil/pwned", b"x");
            "evil/pwned"
        },
        |t, _| {
            t.symlink("evil", "../..").file("evil/etc/passwd", b"x");
            "evil/etc/passwd"
        },
        |t, _| {
            t.symlink("evil", "/").file("evil/escape", b"x");
            "evil/escape"
        },
        // A chain: a -> b -> outside.
        |t, out| {
            t.symlink("b", out).symlink("a", "b").file("a/file", b"x");
            "a/file"
        },
        // A symlink as a middle component, and non-file entries through one.
        |t, out| {
            t.dir("d").symlink("d/l", out).file("d/l/deep/x", b"x");
            "d/l/deep/x"
        },
        |t, out| {
            t.symlink("evil", out).dir("evil/sub");
            "evil/sub"
        },
        |t, out| {
            t.symlink("evil", out).symlink("evil/l", "/");
            "evil/l"
        },
        |t, out| {
            t.symlink("evil", out).file("evil/.wh.secret", b"");
            "evil/.wh.secret"
        },
    ];
    for case in cases {
        let sb = Sandbox::new();
        let mut tar = Tar::default();
        let entry = case(&mut tar, sb.outside.to_str().unwrap());
        let reason = assert_unsafe(sb.unpack(&tar), entry);
        assert!(reason.contains("symbolic link"), "{entry}: {reason}");
        sb.assert_outside_untouched();
    }
}

#[test]
fn a_directory_entry_replaces_a_symlink_instead_of_following_it() {
    let sb = Sandbox::new();
    let abs = sb.outside.to_str().unwrap().to_string();
    sb.unpack(
        Tar::default()
            .symlink("evil", &abs)
            .file("evil", b"now a file"),
    )
    .unwrap();
    assert!(
        std::fs::symlink_metadata(sb.layer.join("evil"))
            .unwrap()
            .is_file()
    );
    sb.assert_outside_untouched();
}

#[test]
fn a_later_entry_may_replace_a_directory() {
    // Found by the property test: the directory's deferred metadata must not fail
    // the layer once a file or a link has taken its place.
    let sb = Sandbox::new();
    sb.unpack(
        Tar::default()
            .dir("d")
            .file("d/inner", b"x")
            .file("d", b"now a file")
            .dir("e")
            .symlink("e", "d"),
    )
    .unwrap();
    assert_eq!(std::fs::read(sb.layer.join("d")).unwrap(), b"now a file");
    assert!(
        std::fs::symlink_metadata(sb.layer.join("e"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    sb.assert_outside_untouched();
}

#[test]
fn hard_links_must_stay_inside_the_layer() {
    let cases: &[Case] = &[
        |t, _| {
            t.hardlink("link", "/etc/passwd");
            "link"
        },
        |t, _| {
            t.hardlink("link", "../../x");
            "link"
        },
        |t, _| {
            t.hardlink("link", "../outside/secret");
            "link"
        },
        |t, out| {
            let s = format!("{out}/secret");
            t.hardlink("link", &s);
            "link"
        },
        |t, out| {
            t.symlink("s", out).hardlink("h", "s/secret");
            "h"
        },
    ];
    for case in cases {
        let sb = Sandbox::new();
        let mut tar = Tar::default();
        let entry = case(&mut tar, sb.outside.to_str().unwrap());
        assert_unsafe(sb.unpack(&tar), entry);
        sb.assert_outside_untouched();
    }
    // Linking to a symlink links the symlink itself, never its target.
    let sb = Sandbox::new();
    sb.unpack(
        Tar::default()
            .symlink("s", "../outside/secret")
            .hardlink("h", "s"),
    )
    .unwrap();
    assert!(
        std::fs::symlink_metadata(sb.layer.join("h"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    sb.assert_outside_untouched();
}

#[test]
fn whiteouts_of_nothing_are_rejected() {
    for name in [".wh..", "d/.wh..", ".wh.", ".wh.."] {
        let sb = Sandbox::new();
        let reason = assert_unsafe(sb.unpack(Tar::default().file(name, b"")), name);
        assert!(reason.contains("whiteout"), "{reason}");
        sb.assert_outside_untouched();
    }
}

#[test]
fn device_nodes_are_skipped_or_refused() {
    let mut tar = Tar::default();
    tar.raw("dev/null", EntryType::Char, "", b"", 0o666, (1, 3))
        .raw("dev/sda", EntryType::Block, "", b"", 0o660, (8, 0))
        .file("ok", b"x");
    let sb = Sandbox::new();
    let stats = sb.unpack(&tar).unwrap();
    assert_eq!(stats.skipped_devices, vec!["dev/null", "dev/sda"]);
    assert!(!sb.layer.join("dev/null").exists());
    assert!(sb.layer.join("ok").exists());

    let sb = Sandbox::new();
    let opts = UnpackOptions {
        devices: DevicePolicy::Refuse,
        ..Default::default()
    };
    let err = unpack_layer(&tar.bytes()[..], &sb.layer, &opts);
    let reason = assert_unsafe(err, "dev/null");
    assert!(reason.contains("device"), "{reason}");
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    let sb = Sandbox::new();
    sb.unpack(
        Tar::default()
            .dir("etc/")
            .file("etc/.wh.gone", b"")
            .dir("var/cache/")
            .file("var/cache/.wh..wh..opq", b"")
            .file("var/cache/new", b"n")
            .file(".wh..wh.plnk", b"")
            .raw("pre", EntryType::Char, "", b"", 0, (0, 0)),
    )
    .unwrap();
    for p in ["etc/gone", "pre"] {
        let m = std::fs::symlink_metadata(sb.layer.join(p)).unwrap();
        assert!(m.file_type().is_char_device(), "{p}");
        assert_eq!(m.rdev(), 0, "{p}");
    }
    assert!(!sb.layer.join("etc/.wh.gone").exists());
    assert!(!sb.layer.join(".wh..wh.plnk").exists());
    assert_eq!(
        xattr(&sb.layer.join("var/cache"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(xattr(&sb.layer.join("etc"), "trusted.overlay.opaque"), None);
    assert_eq!(std::fs::read(sb.layer.join("var/cache/new")).unwrap(), b"n");
}

#[test]
fn metadata_is_preserved() {
    let sb = Sandbox::new();
    let mut tar = Tar::default();
    tar.raw("bin/", EntryType::Directory, "", b"", 0o555, (0, 0))
        .raw("bin/su", EntryType::Regular, "", b"elf", 0o4755, (0, 0))
        .hardlink("bin/su2", "bin/su")
        .symlink("bin/sh", "busybox")
        .raw("run/fifo", EntryType::Fifo, "", b"", 0o600, (0, 0));
    sb.unpack(&tar).unwrap();
    let su = std::fs::metadata(sb.layer.join("bin/su")).unwrap();
    assert_eq!(su.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(su.mtime(), 1_600_000_000);
    if nix::unistd::geteuid().is_root() {
        assert_eq!((su.uid(), su.gid()), (1000, 1001));
    }
    assert_eq!(su.nlink(), 2);
    assert_eq!(
        su.ino(),
        std::fs::metadata(sb.layer.join("bin/su2")).unwrap().ino()
    );
    assert_eq!(
        std::fs::read_link(sb.layer.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let bin = std::fs::metadata(sb.layer.join("bin")).unwrap();
    assert_eq!(bin.permissions().mode() & 0o7777, 0o555);
    assert_eq!(
        bin.mtime(),
        1_600_000_000,
        "directory mtime set after its children"
    );
    assert!(
        std::fs::metadata(sb.layer.join("run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

#[test]
fn compressed_layers_are_detected_and_digests_checked() {
    let mut tar = Tar::default();
    tar.file("hello", b"world");
    let plain = tar.bytes();
    let diff_id = hangar_image::blob::sha256_digest(&plain);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&plain[..], 1).unwrap();
    for blob in [plain.clone(), gz, zst] {
        let sb = Sandbox::new();
        let digest = hangar_image::blob::sha256_digest(&blob);
        let out = unpack_blob(
            &blob[..],
            Some(&digest),
            Some(&diff_id),
            &sb.layer,
            &UnpackOptions::default(),
        )
        .unwrap();
        assert_eq!(out.diff_id, diff_id);
        assert_eq!(std::fs::read(sb.layer.join("hello")).unwrap(), b"world");

        let sb = Sandbox::new();
        let wrong = format!("sha256:{}", "0".repeat(64));
        match unpack_blob(
            &blob[..],
            Some(&wrong),
            None,
            &sb.layer,
            &UnpackOptions::default(),
        ) {
            Err(ImageError::DigestMismatch { digest, actual }) => {
                assert_eq!(digest, wrong);
                assert_eq!(actual, hangar_image::blob::sha256_digest(&blob));
            }
            other => panic!("expected a digest mismatch, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_hostile_import_leaves_no_layer_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalImageStore::open(tmp.path().join("store"), StoreOptions::default()).unwrap();
    let mut tar = Tar::default();
    tar.file("ok/1", b"fine")
        .symlink("evil", "/")
        .file("evil/etc/shadow", b"x");
    let err = store
        .import("hostile", Box::pin(std::io::Cursor::new(tar.bytes())))
        .await;
    assert_unsafe(err, "evil/etc/shadow");
    let left = |sub: &str| {
        std::fs::read_dir(tmp.path().join("store").join(sub))
            .unwrap()
            .count()
    };
    assert_eq!(left("layers"), 0);
    assert_eq!(left("tmp"), 0);
    assert_eq!(left("images"), 0);
    assert!(matches!(
        store.resolve("hostile", None).await,
        Err(ImageError::NotFound { .. })
    ));
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a live buffer of the given length.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        None
    } else {
        buf.truncate(rc as usize);
        Some(buf)
    }
}
