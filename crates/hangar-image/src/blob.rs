//! Blob plumbing: digests computed while streaming, compression detected from magic
//! bytes, and the verified unpack of one layer blob.
//!
//! A blob is trusted only once its bytes hash to the digest that named it; a layer's
//! uncompressed tar must also hash to its diff id from the image config.

use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use hangar_core::image::ImageError;
use sha2::{Digest, Sha256};

use crate::unpack::{UnpackOptions, UnpackStats, unpack_layer};

/// A reader that hashes everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// `sha256:<hex>` of everything read, and how many bytes that was.
    pub fn finish(self) -> (String, u64) {
        (
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.bytes,
        )
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// `sha256:<hex>` of a byte slice.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex part of a `sha256:` digest.
pub fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(h) if crate::reference::is_digest(digest) => Ok(h),
        _ => Err(ImageError::BadArchive(format!(
            "unsupported digest {digest:?}: only sha256 is accepted"
        ))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Detects compression from the first bytes of a blob.
    pub fn detect(head: &[u8]) -> Result<Compression, ImageError> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Ok(Compression::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Ok(Compression::Zstd)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Err(ImageError::BadArchive(
                "xz-compressed archives are not supported; use gzip or zstd".into(),
            ))
        } else if head.starts_with(b"BZh") {
            Err(ImageError::BadArchive(
                "bzip2-compressed archives are not supported; use gzip or zstd".into(),
            ))
        } else {
            Ok(Compression::None)
        }
    }
}

/// Wraps `reader` in the decompressor its magic bytes ask for.
pub fn decompress<'a, R: BufRead + 'a>(mut reader: R) -> Result<Box<dyn Read + 'a>, ImageError> {
    let head = reader
        .fill_buf()
        .map_err(|e| ImageError::io("read blob", e))?;
    Ok(match Compression::detect(head)? {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(
            zstd::Decoder::with_buffer(reader).map_err(|e| ImageError::io("start zstd", e))?,
        ),
    })
}

/// What a layer blob turned out to be.
#[derive(Debug, Clone)]
pub struct UnpackedBlob {
    /// Digest of the blob as stored (compressed).
    pub blob_digest: String,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    pub stats: UnpackStats,
}

/// Unpacks a (possibly compressed) layer blob into `dest`, checking the blob against
/// `blob_digest` and the uncompressed tar against `diff_id` when they are known.
///
/// The whole stream is read even past the tar's end marker, so the digests cover every
/// byte. On error `dest` may hold part of the layer; the caller removes it.
pub fn unpack_blob<R: Read>(
    reader: R,
    blob_digest: Option<&str>,
    diff_id: Option<&str>,
    dest: &Path,
    options: &UnpackOptions,
) -> Result<UnpackedBlob, ImageError> {
    let mut raw = BufReader::with_capacity(256 * 1024, HashingReader::new(reader));
    let (stats, actual_diff) = {
        let decompressed = decompress(&mut raw)?;
        let mut tar = HashingReader::new(decompressed);
        let stats = unpack_layer(&mut tar, dest, options)?;
        io::copy(&mut tar, &mut io::sink()).map_err(|e| ImageError::io("read layer", e))?;
        (stats, tar.finish().0)
    };
    io::copy(&mut raw, &mut io::sink()).map_err(|e| ImageError::io("read layer", e))?;
    let (actual_blob, _) = raw.into_inner().finish();
    if let Some(expected) = blob_digest
        && expected != actual_blob
    {
        return Err(ImageError::DigestMismatch {
            digest: expected.to_string(),
            actual: actual_blob,
        });
    }
    if let Some(expected) = diff_id
        && expected != actual_diff
    {
        return Err(ImageError::DigestMismatch {
            digest: expected.to_string(),
            actual: actual_diff,
        });
    }
    Ok(UnpackedBlob {
        blob_digest: actual_blob,
        diff_id: actual_diff,
        stats,
    })
}
