//! Packing an unpacked layer back into a gzip-compressed OCI layer blob, for pushes.
//!
//! Layers are stored unpacked, so a push re-creates each blob from `layers/<diffid>/rootfs`.
//! The tar is deterministic — entries sorted by name, parents first, times, modes,
//! ownership and xattrs as on disk — so pushing the same layer twice gives the same
//! digests and a registry that already has it is not sent it again. Overlay's on-disk
//! whiteouts turn back into OCI ones: a 0/0 character device `x` becomes an empty
//! `.wh.x`, a directory marked `trusted.overlay.opaque=y` gets a `.wh..wh..opq` entry.
//!
//! An overlay upper directory that uses redirects or metadata-only copies is refused:
//! those entries' contents are in lower layers, which an OCI layer cannot point to.
//!
//! Reads only the layer directory; writes only the blob file it is given.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use hangar_core::image::ImageError;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use crate::unpack::OVERLAY_OPAQUE_XATTR;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
const OVERLAY_REDIRECT_XATTR: &str = "trusted.overlay.redirect";
const OVERLAY_METACOPY_XATTR: &str = "trusted.overlay.metacopy";

/// A packed layer blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedLayer {
    /// `sha256:` of the uncompressed tar (the OCI diff id).
    pub diff_id: String,
    /// `sha256:` of the compressed blob.
    pub digest: String,
    /// Compressed bytes.
    pub size: u64,
}

/// Packs the directory tree `rootfs` into a gzip-compressed tar at `out`. Blocking.
pub fn pack_layer(rootfs: &Path, out: &Path) -> Result<PackedLayer, ImageError> {
    let file = File::create(out).map_err(|e| ImageError::io("create layer blob", e))?;
    let compressed = HashingWriter::new(file);
    let gz = GzEncoder::new(compressed, Compression::default());
    let tar_out = HashingWriter::new(gz);
    let mut packer = Packer {
        builder: tar::Builder::new(tar_out),
        links: HashMap::new(),
    };
    packer.dir_contents(rootfs, Path::new(""))?;
    let tar_out = packer
        .builder
        .into_inner()
        .map_err(|e| ImageError::io("write layer blob", e))?;
    let (gz, diff_id, _) = tar_out.finish();
    let compressed = gz
        .finish()
        .map_err(|e| ImageError::io("write layer blob", e))?;
    let (mut file, digest, size) = compressed.finish();
    file.flush()
        .map_err(|e| ImageError::io("write layer blob", e))?;
    Ok(PackedLayer {
        diff_id,
        digest,
        size,
    })
}

struct Packer<W: Write> {
    builder: tar::Builder<W>,
    /// First path seen for each multiply-linked inode, so later ones become hard links.
    links: HashMap<(u64, u64), PathBuf>,
}

impl<W: Write> Packer<W> {
    /// Appends the children of `dir` (shown in the tar as `rel`), sorted by name.
    fn dir_contents(&mut self, dir: &Path, rel: &Path) -> Result<(), ImageError> {
        let mut names: Vec<OsString> = std::fs::read_dir(dir)
            .map_err(|e| ImageError::io(format!("read {}", dir.display()), e))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|e| ImageError::io(format!("read {}", dir.display()), e))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            self.entry(&dir.join(&name), &rel.join(&name), &name)?;
        }
        Ok(())
    }

    fn entry(&mut self, path: &Path, rel: &Path, name: &OsStr) -> Result<(), ImageError> {
        let io_err =
            |what: &str, e: io::Error| ImageError::io(format!("{what} {}", path.display()), e);
        let meta = std::fs::symlink_metadata(path).map_err(|e| io_err("stat", e))?;
        let ft = meta.file_type();
        let mut header = Header::new_gnu();
        header.set_mode(meta.mode() & 0o7777);
        header.set_uid(meta.uid() as u64);
        header.set_gid(meta.gid() as u64);
        header.set_mtime(meta.mtime().max(0) as u64);
        header.set_size(0);

        if ft.is_char_device() && meta.rdev() == 0 {
            // An overlay whiteout: hides `name` of lower layers.
            let mut wh = OsString::from(WHITEOUT_PREFIX);
            wh.push(name);
            let wh_path = rel.with_file_name(wh);
            header.set_entry_type(EntryType::Regular);
            header.set_mode(0o600);
            return self.append(&mut header, &wh_path, io::empty(), path);
        }

        let xattrs = list_xattrs(path).map_err(|e| io_err("read xattrs of", e))?;
        // A renamed directory or a metadata-only copy (overlay's redirect_dir and
        // metacopy features) points into lower layers: its contents are not here, and an
        // OCI layer has no way to say where they are.
        if let Some((k, _)) = xattrs
            .iter()
            .find(|(k, _)| k == OVERLAY_REDIRECT_XATTR || k == OVERLAY_METACOPY_XATTR)
        {
            return Err(ImageError::Unsupported(format!(
                "pack {} as an image layer: it carries {k}, so its contents live in a lower \
                 layer (overlay redirect_dir or metacopy is on for this host's overlays)",
                rel.display()
            )));
        }
        let opaque = xattrs
            .iter()
            .any(|(k, v)| k == OVERLAY_OPAQUE_XATTR && v == b"y");
        let records: Vec<(String, Vec<u8>)> = xattrs
            .into_iter()
            .filter(|(k, _)| !k.starts_with("trusted.overlay."))
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v))
            .collect();
        if !records.is_empty() {
            self.pax(&records, path)?;
        }

        if ft.is_dir() {
            header.set_entry_type(EntryType::Directory);
            self.append(&mut header, rel, io::empty(), path)?;
            if opaque {
                let mut wh = Header::new_gnu();
                wh.set_entry_type(EntryType::Regular);
                wh.set_mode(0o600);
                // A fresh header's ids are blank, which unpackers (ours included)
                // reject.
                wh.set_uid(0);
                wh.set_gid(0);
                wh.set_mtime(meta.mtime().max(0) as u64);
                wh.set_size(0);
                self.append(&mut wh, &rel.join(OPAQUE_WHITEOUT), io::empty(), path)?;
            }
            return self.dir_contents(path, rel);
        }
        if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(|e| io_err("read link", e))?;
            header.set_entry_type(EntryType::Symlink);
            return self.append_link(&mut header, rel, target.as_os_str().as_bytes(), path);
        }
        if meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key) {
                header.set_entry_type(EntryType::Link);
                let first = first.clone();
                return self.append_link(&mut header, rel, first.as_os_str().as_bytes(), path);
            }
            self.links.insert(key, rel.to_path_buf());
        }
        if ft.is_file() {
            header.set_entry_type(EntryType::Regular);
            header.set_size(meta.len());
            let f = File::open(path).map_err(|e| io_err("open", e))?;
            return self.append(&mut header, rel, f, path);
        }
        if ft.is_char_device() || ft.is_block_device() {
            header.set_entry_type(if ft.is_char_device() {
                EntryType::Char
            } else {
                EntryType::Block
            });
            let rdev = meta.rdev();
            header
                .set_device_major(libc::major(rdev))
                .and_then(|()| header.set_device_minor(libc::minor(rdev)))
                .map_err(|e| io_err("pack", e))?;
            return self.append(&mut header, rel, io::empty(), path);
        }
        if ft.is_fifo() {
            header.set_entry_type(EntryType::Fifo);
            return self.append(&mut header, rel, io::empty(), path);
        }
        tracing::debug!(path = %path.display(), "leaving a socket out of the layer");
        Ok(())
    }

    fn append(
        &mut self,
        header: &mut Header,
        rel: &Path,
        data: impl io::Read,
        path: &Path,
    ) -> Result<(), ImageError> {
        self.builder
            .append_data(header, rel, data)
            .map_err(|e| ImageError::io(format!("pack {}", path.display()), e))
    }

    /// A link entry whose target is stored byte for byte: `tar`'s own `append_link`
    /// normalises the target as a path (`./.` becomes `.`), which would change what a
    /// symlink points at. Long targets go in a GNU long-link entry first.
    fn append_link(
        &mut self,
        header: &mut Header,
        rel: &Path,
        target: &[u8],
        path: &Path,
    ) -> Result<(), ImageError> {
        let err = |e| ImageError::io(format!("pack {}", path.display()), e);
        let field = header.as_old().linkname.len();
        if target.len() < field {
            header.set_link_name_literal(target).map_err(err)?;
        } else {
            let mut long = Header::new_gnu();
            long.as_gnu_mut().expect("a GNU header").name[..13].copy_from_slice(b"././@LongLink");
            long.set_entry_type(EntryType::GNULongLink);
            long.set_mode(0o644);
            long.set_size(target.len() as u64 + 1);
            long.set_cksum();
            let mut data = target.to_vec();
            data.push(0);
            self.builder.append(&long, &data[..]).map_err(err)?;
            header
                .set_link_name_literal(&target[..field - 1])
                .map_err(err)?;
        }
        self.append(header, rel, io::empty(), path)
    }

    /// A PAX extended header carrying `records` for the entry that follows.
    fn pax(&mut self, records: &[(String, Vec<u8>)], path: &Path) -> Result<(), ImageError> {
        let mut data = Vec::new();
        for (key, value) in records {
            // "<len> <key>=<value>\n", where <len> counts itself.
            let rest = key.len() + value.len() + 3;
            let mut len = rest + 1;
            while len.to_string().len() + rest != len {
                len = len.to_string().len() + rest;
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        let mut header = Header::new_ustar();
        header
            .set_path("PaxHeader")
            .map_err(|e| ImageError::io("pack pax header", e))?;
        header.set_entry_type(EntryType::XHeader);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.builder
            .append(&header, &data[..])
            .map_err(|e| ImageError::io(format!("pack {}", path.display()), e))
    }
}

/// Extended attributes of `path` itself (not of a symlink's target).
fn list_xattrs(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut names = vec![0u8; 1024];
    let n = loop {
        // SAFETY: `c` is NUL-terminated and `names` is a live buffer of the given length.
        let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => names.resize(names.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(e),
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let Ok(key) = std::str::from_utf8(name) else {
            continue;
        };
        let cname = CString::new(name).map_err(io::Error::other)?;
        let mut value = vec![0u8; 256];
        loop {
            // SAFETY: both strings are NUL-terminated and `value` is live for its length.
            let m = unsafe {
                libc::lgetxattr(
                    c.as_ptr(),
                    cname.as_ptr(),
                    value.as_mut_ptr().cast(),
                    value.len(),
                )
            };
            if m >= 0 {
                value.truncate(m as usize);
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) => value.resize(value.len() * 4, 0),
                Some(libc::ENODATA) => {
                    value.clear();
                    break;
                }
                _ => return Err(e),
            }
        }
        out.push((key.to_string(), value));
    }
    out.sort();
    Ok(out)
}

/// Passes bytes through, hashing and counting them.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The writer, the `sha256:` digest and the count of what went through.
    fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, digest, self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStringExt;

    use super::*;
    use crate::blob::unpack_blob;
    use crate::unpack::UnpackOptions;

    fn listing(root: &Path) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                let content = if m.is_file() {
                    std::fs::read(&p).unwrap()
                } else if m.file_type().is_symlink() {
                    std::fs::read_link(&p).unwrap().into_os_string().into_vec()
                } else {
                    Vec::new()
                };
                if m.is_dir() {
                    stack.push(p.clone());
                }
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, m.mode(), content));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn packs_deterministically_and_unpacks_to_the_same_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("etc/deep")).unwrap();
        std::fs::write(src.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
        std::fs::write(src.join("etc/deep/x"), vec![7u8; 100_000]).unwrap();
        std::os::unix::fs::symlink("../etc/hosts", src.join("etc/deep/link")).unwrap();
        std::fs::hard_link(src.join("etc/hosts"), src.join("hosts2")).unwrap();
        let long = "n".repeat(150);
        std::fs::write(src.join(&long), b"long").unwrap();

        let a = pack_layer(&src, &tmp.path().join("a.tgz")).unwrap();
        let b = pack_layer(&src, &tmp.path().join("b.tgz")).unwrap();
        assert_eq!(a, b, "packing twice gives the same digests");

        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let f = File::open(tmp.path().join("a.tgz")).unwrap();
        let unpacked = unpack_blob(
            f,
            Some(&a.digest),
            Some(&a.diff_id),
            &out,
            &UnpackOptions::default(),
        )
        .unwrap();
        assert_eq!(unpacked.diff_id, a.diff_id);
        assert_eq!(listing(&src), listing(&out));
        assert_eq!(
            std::fs::metadata(out.join("hosts2")).unwrap().ino(),
            std::fs::metadata(out.join("etc/hosts")).unwrap().ino(),
            "hard links stay hard links"
        );
    }

    #[test]
    fn overlay_whiteouts_become_oci_whiteouts() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: whiteout devices and trusted xattrs need root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        for (name, kind) in [
            (".wh.gone", EntryType::Regular),
            ("opaque/", EntryType::Directory),
            ("opaque/.wh..wh..opq", EntryType::Regular),
            ("opaque/kept", EntryType::Regular),
        ] {
            let mut h = Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(0o755);
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(0);
            tar.append_data(&mut h, name, io::empty()).unwrap();
        }
        let layer = tmp.path().join("layer");
        std::fs::create_dir(&layer).unwrap();
        crate::unpack::unpack_layer(
            &tar.into_inner().unwrap()[..],
            &layer,
            &UnpackOptions::default(),
        )
        .unwrap();

        let out = tmp.path().join("out.tgz");
        pack_layer(&layer, &out).unwrap();
        let gz = flate2::read::GzDecoder::new(File::open(&out).unwrap());
        let mut names: Vec<(String, EntryType)> = tar::Archive::new(gz)
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type(),
                )
            })
            .collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        // What was packed unpacks again, whiteouts included.
        let again = tmp.path().join("again");
        std::fs::create_dir(&again).unwrap();
        crate::unpack::unpack_layer(
            flate2::read::GzDecoder::new(File::open(&out).unwrap()),
            &again,
            &UnpackOptions::default(),
        )
        .unwrap();
        assert!(again.join("opaque/kept").is_file());
        assert_eq!(
            names,
            vec![
                (".wh.gone".to_string(), EntryType::Regular),
                ("opaque".to_string(), EntryType::Directory),
                ("opaque/.wh..wh..opq".to_string(), EntryType::Regular),
                ("opaque/kept".to_string(), EntryType::Regular),
            ]
        );
    }

    #[test]
    fn overlay_redirects_and_metacopies_are_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: trusted xattrs need root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        for xattr in [OVERLAY_REDIRECT_XATTR, OVERLAY_METACOPY_XATTR] {
            let layer = tmp.path().join(xattr);
            std::fs::create_dir_all(layer.join("moved")).unwrap();
            let c = CString::new(layer.join("moved").as_os_str().as_bytes()).unwrap();
            let key = CString::new(xattr).unwrap();
            // SAFETY: both strings are NUL-terminated; the value is a live buffer.
            let rc =
                unsafe { libc::setxattr(c.as_ptr(), key.as_ptr(), b"/etc".as_ptr().cast(), 4, 0) };
            if rc != 0 {
                eprintln!("skipping: {}", io::Error::last_os_error());
                return;
            }
            let err = pack_layer(&layer, &tmp.path().join("out.tgz")).unwrap_err();
            assert!(
                matches!(&err, ImageError::Unsupported(m) if m.contains(xattr)),
                "{err:?}"
            );
        }
    }
}
