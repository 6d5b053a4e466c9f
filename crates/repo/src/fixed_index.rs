//! Fixed index (`<name>.fidx`): the ordered chunk digests of one file (a disk), so that chunk `i`
//! holds bytes `[i × chunk_size, min((i+1) × chunk_size, size))`.
//!
//! ```text
//! header (128 bytes, little-endian):
//!   magic[8] version u32 flags u32 logical_size u64 chunk_size u64 count u64
//!   sha256(digest list)[32] reserved[56] (zeros)
//! digest list: count × 32 bytes
//! ```
//!
//! All-zero chunks are recorded as [`ChunkDigest::ZERO`]. The header's digest of the digest list
//! catches a damaged or truncated index even without the manifest's digest of the whole file.

use std::sync::Mutex;

use crate::digest::{ChunkDigest, Sha256};
use crate::error::{Error, Result};
use crate::format::{FIDX_HEADER_LEN, FIDX_MAGIC, FIDX_VERSION};
use crate::id::FileName;

/// Number of chunks of a file of `size` bytes.
fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size))
}

/// Length of chunk `pos` of a file of `size` bytes.
fn chunk_len_at(size: u64, chunk_size: u32, pos: u64) -> u64 {
    let start = pos * u64::from(chunk_size);
    size.saturating_sub(start).min(u64::from(chunk_size))
}

/// Builds the index of one file. Positions may be set in any order and from several threads;
/// every position must be set before the index is written.
#[derive(Debug)]
pub struct FixedIndexWriter {
    name: FileName,
    logical_size: u64,
    chunk_size: u32,
    digests: Mutex<Vec<Option<ChunkDigest>>>,
}

impl FixedIndexWriter {
    /// An index for a file of `logical_size` bytes with no position set.
    ///
    /// # Errors
    /// When the chunk count does not fit in memory.
    pub fn new(name: FileName, logical_size: u64, chunk_size: u32) -> Result<FixedIndexWriter> {
        let count = usize::try_from(chunk_count(logical_size, chunk_size)).map_err(|_| {
            Error::InvalidArgument(format!("file of {logical_size} bytes too large"))
        })?;
        Ok(FixedIndexWriter {
            name,
            logical_size,
            chunk_size,
            digests: Mutex::new(vec![None; count]),
        })
    }

    /// An index pre-filled from `parent` (an incremental backup): every position that exists in
    /// both with the same length is copied; positions beyond the parent, and a last chunk whose
    /// length changed, stay unset.
    ///
    /// # Errors
    /// When the chunk sizes differ or the file is too large.
    pub fn from_parent(
        name: FileName,
        logical_size: u64,
        parent: &FixedIndexReader,
    ) -> Result<FixedIndexWriter> {
        let w = FixedIndexWriter::new(name, logical_size, parent.chunk_size())?;
        {
            let mut d = w.lock();
            for (pos, slot) in d.iter_mut().enumerate() {
                let pos64 = pos as u64;
                if pos64 < parent.chunk_count()
                    && parent.chunk_len(pos64) == chunk_len_at(logical_size, w.chunk_size, pos64)
                {
                    *slot = Some(parent.digest(pos64));
                }
            }
        }
        Ok(w)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<ChunkDigest>>> {
        self.digests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The index name.
    #[must_use]
    pub fn name(&self) -> &FileName {
        &self.name
    }

    /// Size of the file in bytes.
    #[must_use]
    pub fn logical_size(&self) -> u64 {
        self.logical_size
    }

    /// The chunk size.
    #[must_use]
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Number of positions.
    #[must_use]
    pub fn chunk_count(&self) -> u64 {
        chunk_count(self.logical_size, self.chunk_size)
    }

    /// Length of the chunk at `pos` (the last one may be shorter).
    #[must_use]
    pub fn chunk_len(&self, pos: u64) -> u64 {
        chunk_len_at(self.logical_size, self.chunk_size, pos)
    }

    /// Sets position `pos`.
    ///
    /// # Errors
    /// When `pos` is out of range.
    pub fn set(&self, pos: u64, digest: ChunkDigest) -> Result<()> {
        let mut d = self.lock();
        let count = d.len();
        let slot = usize::try_from(pos)
            .ok()
            .and_then(|p| d.get_mut(p))
            .ok_or_else(|| {
                Error::InvalidArgument(format!("index position {pos} out of range 0..{count}"))
            })?;
        *slot = Some(digest);
        Ok(())
    }

    /// Marks position `pos` as all zeros.
    ///
    /// # Errors
    /// When `pos` is out of range.
    pub fn set_zero(&self, pos: u64) -> Result<()> {
        self.set(pos, ChunkDigest::ZERO)
    }

    /// Marks every position not set yet as all zeros (areas a thin disk never allocated).
    pub fn fill_unset_with_zero(&self) {
        for slot in self.lock().iter_mut() {
            if slot.is_none() {
                *slot = Some(ChunkDigest::ZERO);
            }
        }
    }

    /// Positions not set yet.
    #[must_use]
    pub fn unset_positions(&self) -> Vec<u64> {
        self.lock()
            .iter()
            .enumerate()
            .filter(|(_, d)| d.is_none())
            .map(|(i, _)| i as u64)
            .collect()
    }

    /// The digests set so far (for callers that must reference them).
    #[must_use]
    pub fn digests(&self) -> Vec<Option<ChunkDigest>> {
        self.lock().clone()
    }

    /// Encodes the index; fails if a position is unset.
    pub(crate) fn encode(&self) -> Result<(Vec<u8>, FixedIndexReader)> {
        let d = self.lock();
        let mut digests = Vec::with_capacity(d.len());
        for (pos, slot) in d.iter().enumerate() {
            let Some(digest) = slot else {
                return Err(Error::InvalidArgument(format!(
                    "index {}: position {pos} was never set",
                    self.name
                )));
            };
            digests.push(*digest);
        }
        drop(d);
        let reader = FixedIndexReader {
            logical_size: self.logical_size,
            chunk_size: self.chunk_size,
            digests,
        };
        Ok((reader.encode(), reader))
    }
}

/// A decoded fixed index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedIndexReader {
    logical_size: u64,
    chunk_size: u32,
    digests: Vec<ChunkDigest>,
}

impl FixedIndexReader {
    fn list_digest(digests: &[ChunkDigest]) -> Sha256 {
        let mut h = crate::digest::Sha256Hasher::new();
        for d in digests {
            h.update(d.as_bytes());
        }
        h.finish()
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIDX_HEADER_LEN + 32 * self.digests.len());
        out.extend_from_slice(&FIDX_MAGIC);
        out.extend_from_slice(&FIDX_VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.logical_size.to_le_bytes());
        out.extend_from_slice(&u64::from(self.chunk_size).to_le_bytes());
        out.extend_from_slice(&(self.digests.len() as u64).to_le_bytes());
        out.extend_from_slice(Self::list_digest(&self.digests).as_bytes());
        out.resize(FIDX_HEADER_LEN, 0);
        for d in &self.digests {
            out.extend_from_slice(d.as_bytes());
        }
        out
    }

    /// Decodes and checks an index file (`what` names it in errors).
    ///
    /// # Errors
    /// [`Error::IndexCorrupt`] naming the failed check.
    pub fn decode(what: &str, bytes: &[u8]) -> Result<FixedIndexReader> {
        let corrupt = |reason: String| Error::IndexCorrupt {
            path: what.to_owned(),
            reason,
        };
        if bytes.len() < FIDX_HEADER_LEN {
            return Err(corrupt(format!(
                "truncated: {} bytes, shorter than the {FIDX_HEADER_LEN}-byte header",
                bytes.len()
            )));
        }
        if bytes[0..8] != FIDX_MAGIC {
            return Err(corrupt("bad magic (not a vbm fixed index)".into()));
        }
        let le32 = |o: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[o..o + 4]);
            u32::from_le_bytes(b)
        };
        let le64 = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let version = le32(8);
        if version != FIDX_VERSION {
            return Err(Error::UnsupportedFormat {
                what: "fixed index",
                found: version,
                supported: FIDX_VERSION.to_string(),
            });
        }
        let logical_size = le64(16);
        let chunk_size = u32::try_from(le64(24))
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| corrupt("invalid chunk size".into()))?;
        let count = le64(32);
        if count != chunk_count(logical_size, chunk_size) {
            return Err(corrupt(format!(
                "{count} digests do not cover {logical_size} bytes in chunks of {chunk_size}"
            )));
        }
        let body = &bytes[FIDX_HEADER_LEN..];
        if body.len() as u64 != count.saturating_mul(32) {
            return Err(corrupt(format!(
                "truncated or extended: {} bytes of digests, expected {}",
                body.len(),
                count.saturating_mul(32)
            )));
        }
        let digests: Vec<ChunkDigest> = body
            .chunks_exact(32)
            .map(|c| {
                let mut b = [0u8; 32];
                b.copy_from_slice(c);
                ChunkDigest::from_bytes(b)
            })
            .collect();
        let mut recorded = [0u8; 32];
        recorded.copy_from_slice(&bytes[40..72]);
        if Self::list_digest(&digests).as_bytes() != &recorded {
            return Err(corrupt("digest list does not match its checksum".into()));
        }
        Ok(FixedIndexReader {
            logical_size,
            chunk_size,
            digests,
        })
    }

    /// Size of the file in bytes.
    #[must_use]
    pub fn logical_size(&self) -> u64 {
        self.logical_size
    }

    /// The chunk size.
    #[must_use]
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Number of chunks.
    #[must_use]
    pub fn chunk_count(&self) -> u64 {
        self.digests.len() as u64
    }

    /// Digest at `pos` ([`ChunkDigest::ZERO`] beyond the end).
    #[must_use]
    pub fn digest(&self, pos: u64) -> ChunkDigest {
        usize::try_from(pos)
            .ok()
            .and_then(|p| self.digests.get(p))
            .copied()
            .unwrap_or(ChunkDigest::ZERO)
    }

    /// Length of the chunk at `pos`.
    #[must_use]
    pub fn chunk_len(&self, pos: u64) -> u64 {
        chunk_len_at(self.logical_size, self.chunk_size, pos)
    }

    /// Byte offset of the chunk at `pos`.
    #[must_use]
    pub fn chunk_offset(&self, pos: u64) -> u64 {
        pos * u64::from(self.chunk_size)
    }

    /// Whether the chunk at `pos` is all zeros (restore can leave a hole).
    #[must_use]
    pub fn is_zero(&self, pos: u64) -> bool {
        self.digest(pos).is_zero()
    }

    /// All digests in order.
    #[must_use]
    pub fn digests(&self) -> &[ChunkDigest] {
        &self.digests
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(b: u8) -> ChunkDigest {
        ChunkDigest::from_bytes([b; 32])
    }

    #[test]
    fn round_trip_any_order_and_short_last_chunk() {
        let w = FixedIndexWriter::new(FileName::new("disk").unwrap(), 10_000, 4096).unwrap();
        assert_eq!(w.chunk_count(), 3);
        assert_eq!(w.chunk_len(2), 10_000 - 8192);
        w.set(2, d(3)).unwrap();
        w.set(0, d(1)).unwrap();
        assert!(w.encode().is_err(), "unset position must fail");
        assert_eq!(w.unset_positions(), vec![1]);
        w.set_zero(1).unwrap();
        assert!(w.set(3, d(9)).is_err());
        let (bytes, reader) = w.encode().unwrap();
        assert_eq!(bytes.len(), FIDX_HEADER_LEN + 3 * 32);
        let r = FixedIndexReader::decode("x", &bytes).unwrap();
        assert_eq!(r, reader);
        assert!(r.is_zero(1));
        assert_eq!(r.digest(2), d(3));
        assert_eq!(r.chunk_offset(2), 8192);
    }

    #[test]
    fn damage_is_detected() {
        let w = FixedIndexWriter::new(FileName::new("disk").unwrap(), 8192, 4096).unwrap();
        w.set(0, d(1)).unwrap();
        w.set(1, d(2)).unwrap();
        let (bytes, _) = w.encode().unwrap();
        assert!(FixedIndexReader::decode("x", &bytes[..bytes.len() - 1]).is_err());
        assert!(FixedIndexReader::decode("x", &bytes[..100]).is_err());
        for i in [0, 20, 40, 130, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert!(FixedIndexReader::decode("x", &b).is_err(), "byte {i}");
        }
    }

    #[test]
    fn from_parent_copies_only_matching_positions() {
        let w = FixedIndexWriter::new(FileName::new("p").unwrap(), 10_000, 4096).unwrap();
        for i in 0..3 {
            w.set(i, d(i as u8 + 1)).unwrap();
        }
        let (_, parent) = w.encode().unwrap();
        let grown =
            FixedIndexWriter::from_parent(FileName::new("c").unwrap(), 20_000, &parent).unwrap();
        assert_eq!(grown.unset_positions(), vec![2, 3, 4]);
        let same =
            FixedIndexWriter::from_parent(FileName::new("c").unwrap(), 10_000, &parent).unwrap();
        assert!(same.unset_positions().is_empty());
    }
}
