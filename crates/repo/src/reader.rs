//! Reading a committed backup: [`BackupReader`] (manifest, indexes, blobs) and [`FileReader`]
//! (any file of the backup, streamed in order or read at any offset — restore and, later,
//! instant recovery).

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex, PoisonError};

use crate::blob::BlobReader;
use crate::digest::{ChunkDigest, Sha256, Sha256Hasher};
use crate::error::{Error, Result};
use crate::fixed_index::FixedIndexReader;
use crate::id::{BackupId, FileName};
use crate::layout;
use crate::manifest::{FileStorage, Manifest, ManifestFile};
use crate::parallel::ordered_map;
use crate::repository::Repository;

/// A committed backup opened for reading.
#[derive(Debug, Clone)]
pub struct BackupReader {
    repo: Repository,
    id: BackupId,
    manifest: Manifest,
}

impl BackupReader {
    pub(crate) fn new(repo: Repository, id: BackupId, manifest: Manifest) -> BackupReader {
        BackupReader { repo, id, manifest }
    }

    /// The backup's id.
    #[must_use]
    pub fn id(&self) -> &BackupId {
        &self.id
    }

    /// Its manifest.
    #[must_use]
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Reads and checks an index: present, its SHA-256 equal to `expected`, internally
    /// consistent.
    ///
    /// # Errors
    /// [`Error::IndexCorrupt`] (missing, damaged, or not what the manifest recorded).
    pub fn open_index(&self, name: &FileName, expected: &Sha256) -> Result<FixedIndexReader> {
        let path = layout::index(&self.id, name);
        let corrupt = |reason: String| Error::IndexCorrupt {
            path: path.to_string(),
            reason,
        };
        let bytes = match self.repo.inner.backend.get(&path) {
            Ok(b) => b,
            Err(Error::NotFound { .. }) => return Err(corrupt("missing".into())),
            Err(e) => return Err(e),
        };
        let actual = Sha256::of(&bytes);
        if actual != *expected {
            return Err(corrupt(format!(
                "SHA-256 is {actual}, the manifest recorded {expected} ({} bytes)",
                bytes.len()
            )));
        }
        FixedIndexReader::decode(path.as_str(), &bytes)
    }

    /// Reads and checks a blob file.
    ///
    /// # Errors
    /// [`Error::BlobCorrupt`].
    pub fn read_blob(&self, name: &FileName, digest: &ChunkDigest, size: u64) -> Result<Vec<u8>> {
        let path = layout::blob(&self.id, name);
        let stored = match self.repo.inner.backend.get(&path) {
            Ok(b) => b,
            Err(Error::NotFound { .. }) => {
                return Err(Error::BlobCorrupt {
                    path: path.to_string(),
                    reason: "missing".into(),
                });
            }
            Err(e) => return Err(e),
        };
        BlobReader::decode(
            self.repo.inner.store.codec(),
            path.as_str(),
            digest,
            size,
            stored,
        )
    }

    /// Opens a file of the backup by its manifest path.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an unknown path; index/blob errors.
    pub fn open_file(&self, path: &str) -> Result<FileReader> {
        let file = self.manifest.file_by_path(path).ok_or_else(|| {
            Error::InvalidArgument(format!("backup {} has no file {path:?}", self.id))
        })?;
        self.open(file)
    }

    /// Opens a file of the backup.
    ///
    /// # Errors
    /// Index/blob errors.
    pub fn open(&self, file: &ManifestFile) -> Result<FileReader> {
        let source = match &file.storage {
            FileStorage::Index { name, sha256 } => {
                let index = self.open_index(name, sha256)?;
                if index.logical_size() != file.size_bytes {
                    return Err(Error::IndexCorrupt {
                        path: layout::index(&self.id, name).to_string(),
                        reason: format!(
                            "covers {} bytes, the manifest says {}",
                            index.logical_size(),
                            file.size_bytes
                        ),
                    });
                }
                Source::Index(Arc::new(index))
            }
            FileStorage::Blob { name, digest } => Source::Blob(
                Arc::new(self.read_blob(name, digest, file.size_bytes)?),
                *digest,
            ),
        };
        Ok(FileReader {
            repo: self.repo.clone(),
            file: file.clone(),
            source,
            cache: Mutex::new(None),
        })
    }
}

#[derive(Debug, Clone)]
enum Source {
    Index(Arc<FixedIndexReader>),
    Blob(Arc<Vec<u8>>, ChunkDigest),
}

/// A contiguous part of a file: one chunk of an index-backed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Byte offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// The chunk ([`ChunkDigest::ZERO`]: all zeros, restore may leave a hole).
    pub digest: ChunkDigest,
}

/// One file of a backup. `read_at` takes `&self` and is safe from many threads.
#[derive(Debug)]
pub struct FileReader {
    repo: Repository,
    file: ManifestFile,
    source: Source,
    cache: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
}

impl FileReader {
    /// The manifest entry of the file.
    #[must_use]
    pub fn file(&self) -> &ManifestFile {
        &self.file
    }

    /// Size in bytes.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.file.size_bytes
    }

    /// The index behind the file, if it is index-backed.
    #[must_use]
    pub fn index(&self) -> Option<&FixedIndexReader> {
        match &self.source {
            Source::Index(i) => Some(i),
            Source::Blob(..) => None,
        }
    }

    /// The file's chunks in order (for a blob: one segment carrying the blob's digest), so that
    /// restore can write holes for zero chunks and fetch the others in parallel.
    #[must_use]
    pub fn segments(&self) -> Vec<Segment> {
        match &self.source {
            Source::Index(i) => (0..i.chunk_count())
                .map(|pos| Segment {
                    offset: i.chunk_offset(pos),
                    len: i.chunk_len(pos),
                    digest: i.digest(pos),
                })
                .collect(),
            Source::Blob(b, digest) => vec![Segment {
                offset: 0,
                len: b.len() as u64,
                digest: *digest,
            }],
        }
    }

    fn chunk(&self, index: &FixedIndexReader, pos: u64) -> Result<Arc<Vec<u8>>> {
        if let Some((p, data)) = &*self.cache.lock().unwrap_or_else(PoisonError::into_inner)
            && *p == pos
        {
            return Ok(data.clone());
        }
        let len = usize::try_from(index.chunk_len(pos)).unwrap_or(0);
        let data = Arc::new(self.repo.read_chunk(&index.digest(pos), len)?);
        *self.cache.lock().unwrap_or_else(PoisonError::into_inner) = Some((pos, data.clone()));
        Ok(data)
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns how many (0 at or past the end).
    ///
    /// # Errors
    /// Chunk errors naming the digest (never silently wrong bytes).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let size = self.size();
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from((size - offset).min(buf.len() as u64)).unwrap_or(buf.len());
        match &self.source {
            Source::Blob(b, _) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                buf[..want].copy_from_slice(&b[start..start + want]);
                Ok(want)
            }
            Source::Index(index) => {
                let cs = u64::from(index.chunk_size());
                let mut done = 0usize;
                while done < want {
                    let pos = (offset + done as u64) / cs;
                    let within = usize::try_from((offset + done as u64) % cs).unwrap_or(0);
                    let n;
                    if index.is_zero(pos) {
                        let chunk_len = usize::try_from(index.chunk_len(pos)).unwrap_or(0);
                        n = (chunk_len - within).min(want - done);
                        buf[done..done + n].fill(0);
                    } else {
                        let data = self.chunk(index, pos)?;
                        n = (data.len() - within).min(want - done);
                        buf[done..done + n].copy_from_slice(&data[within..within + n]);
                    }
                    done += n;
                }
                Ok(want)
            }
        }
    }

    /// Streams the whole file in order into `out`, decoding chunks on `threads` threads, and
    /// returns its SHA-256 (compare with the manifest's `sha256`). `progress` gets the bytes
    /// done so far.
    ///
    /// # Errors
    /// Chunk errors naming the digest, write errors.
    pub fn copy_to(
        &self,
        out: &mut dyn Write,
        threads: usize,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Sha256> {
        let mut hasher = Sha256Hasher::new();
        match &self.source {
            Source::Blob(b, _) => {
                hasher.update(b);
                out.write_all(b)
                    .map_err(|e| Error::io("write", self.file.path.clone(), e))?;
                progress(b.len() as u64);
            }
            Source::Index(index) => {
                let positions: Vec<u64> = (0..index.chunk_count()).collect();
                let mut done = 0u64;
                let zeros = vec![0u8; index.chunk_size() as usize];
                ordered_map(
                    &positions,
                    threads,
                    |&pos| {
                        if index.is_zero(pos) {
                            Ok(None)
                        } else {
                            let len = usize::try_from(index.chunk_len(pos)).unwrap_or(0);
                            self.repo.read_chunk(&index.digest(pos), len).map(Some)
                        }
                    },
                    |i, data: Result<Option<Vec<u8>>>| {
                        let len = index.chunk_len(positions[i]);
                        let data = data?;
                        let bytes = match &data {
                            Some(d) => d.as_slice(),
                            None => &zeros[..usize::try_from(len).unwrap_or(0)],
                        };
                        hasher.update(bytes);
                        out.write_all(bytes)
                            .map_err(|e| Error::io("write", self.file.path.clone(), e))?;
                        done += len;
                        progress(done);
                        Ok(())
                    },
                )?;
            }
        }
        Ok(hasher.finish())
    }

    /// A `Read + Seek` view of the file.
    #[must_use]
    pub fn cursor(&self) -> FileCursor<'_> {
        FileCursor {
            reader: self,
            pos: 0,
        }
    }
}

/// `Read + Seek` over a [`FileReader`].
#[derive(Debug)]
pub struct FileCursor<'a> {
    reader: &'a FileReader,
    pos: u64,
}

impl Read for FileCursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .reader
            .read_at(self.pos, buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for FileCursor<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let size = self.reader.size();
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let target = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?;
        self.pos = target;
        Ok(target)
    }
}
