//! Blobs: small files of a backup (VMX, disk descriptor, NVRAM) stored whole as
//! `<name>.blob` in the backup directory, with the chunk encoding (header, CRC32, zstd,
//! AES-256-GCM when the repository is encrypted). The manifest records the blob's digest.

use std::io::Write;

use crate::chunk::ChunkCodec;
use crate::digest::{ChunkDigest, Sha256};
use crate::error::{Error, Result};
use crate::format::MAX_CHUNK_SIZE;
use crate::id::FileName;

/// Collects a small file's bytes (`io::Write`) before it is stored with
/// [`crate::BackupWriter::write_blob`].
#[derive(Debug)]
pub struct BlobWriter {
    name: FileName,
    data: Vec<u8>,
}

impl BlobWriter {
    /// An empty blob called `name`.
    #[must_use]
    pub fn new(name: FileName) -> BlobWriter {
        BlobWriter {
            name,
            data: Vec::new(),
        }
    }

    /// A blob with `data`.
    #[must_use]
    pub fn with_data(name: FileName, data: Vec<u8>) -> BlobWriter {
        BlobWriter { name, data }
    }

    /// The blob's name.
    #[must_use]
    pub fn name(&self) -> &FileName {
        &self.name
    }

    /// Encodes the blob; returns (stored bytes, digest, plain SHA-256, size).
    pub(crate) fn encode(&self, codec: &ChunkCodec) -> Result<(Vec<u8>, ChunkDigest, Sha256, u64)> {
        if self.data.len() > MAX_CHUNK_SIZE as usize {
            return Err(Error::InvalidArgument(format!(
                "blob {} is {} bytes; blobs are for small files (at most {MAX_CHUNK_SIZE})",
                self.name,
                self.data.len()
            )));
        }
        let digest = codec.digest(&self.data);
        let stored = codec.encode(&digest, &self.data)?;
        Ok((
            stored,
            digest,
            Sha256::of(&self.data),
            self.data.len() as u64,
        ))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Decodes a stored blob and checks it against the manifest.
#[derive(Debug)]
pub struct BlobReader;

impl BlobReader {
    /// Decodes `stored` (the blob file at `path`), checking its digest and size.
    ///
    /// # Errors
    /// [`Error::BlobCorrupt`] naming the file.
    pub fn decode(
        codec: &ChunkCodec,
        path: &str,
        digest: &ChunkDigest,
        size: u64,
        stored: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let plain = codec
            .decode(digest, stored, usize::try_from(size).ok())
            .map_err(|e| Error::BlobCorrupt {
                path: path.to_owned(),
                reason: match e {
                    Error::ChunkCorrupt { reason, .. } => reason,
                    other => other.to_string(),
                },
            })?;
        Ok(plain)
    }
}
