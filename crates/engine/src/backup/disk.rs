//! The data path of one disk: ranged reads from the datastore (several at once), chunks hashed,
//! compressed and stored on every core, the fixed index, and — for a full read — the whole-file
//! SHA-256, with the network never idle waiting for the CPU.
//!
//! Three stages connected by ordered, bounded streams:
//! 1. **fetch** — the plan's chunks in disk order; consecutive chunks to read form a group fetched
//!    with as few range requests as possible; up to `streams` groups in flight;
//! 2. **store** — per chunk on the blocking pool: overlay changed bytes on the parent's chunk
//!    when needed (a damaged parent chunk is read again from vCenter), then insert (hash, dedup,
//!    compress, write); up to `workers` in flight;
//! 3. **digest** (full reads only) — the chunks in order into one SHA-256 on its own thread.
//!
//! An incremental leaves unchanged chunks alone here: their data is in the repository already,
//! and the file's SHA-256 is computed from the finished index after the snapshot is removed
//! (see `backup.rs`), so the snapshot lives only as long as the changed data takes to move.
//!
//! Memory stays bounded by the two buffer depths (≈ (streams × group + workers) chunks).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{StreamExt, stream};
use tokio_util::sync::CancellationToken;
use vbm_repo::{
    BackupWriter, ChunkDigest, FileName, FixedIndexReader, FixedIndexWriter, IndexSummary,
    Repository, Sha256, Sha256Hasher,
};
use vbm_vsphere::{Client, DatastoreFile};

use crate::error::{Error, Result};
use crate::plan::{self, Base, ChunkSource, DiskPlan};
use crate::progress::{Meter, Phase, ProgressSink};

/// Chunks per fetch group at most (a group is fetched by one stream).
const GROUP_CHUNKS: usize = 4;

pub(super) struct DiskJob<'a> {
    pub(super) client: &'a Client,
    pub(super) repo: &'a Repository,
    pub(super) writer: &'a Arc<BackupWriter>,
    pub(super) flat: DatastoreFile,
    pub(super) plan: DiskPlan,
    pub(super) parent: Option<Arc<FixedIndexReader>>,
    pub(super) index_name: FileName,
    pub(super) vm_name: &'a str,
    pub(super) label: &'a str,
    pub(super) streams: usize,
    pub(super) workers: usize,
    pub(super) max_request: u64,
    pub(super) progress: &'a dyn ProgressSink,
    pub(super) cancel: &'a CancellationToken,
}

pub(super) struct DiskOutcome {
    pub(super) index: IndexSummary,
    /// The whole file's SHA-256 when it was computed inline (full read); `None` for an
    /// incremental, whose digest is computed from the index afterwards.
    pub(super) sha256: Option<Sha256>,
    pub(super) bytes_read: u64,
    pub(super) warnings: Vec<String>,
}

/// What the fetch stage hands on.
enum Unit {
    /// Nothing to read.
    Ready(Item),
    /// Consecutive chunks read together.
    Group(Vec<(usize, Vec<Range<u64>>, Base)>),
}

/// One chunk on its way to the store stage.
enum Item {
    Zero(usize),
    Parent(usize),
    Data {
        index: usize,
        buf: Vec<u8>,
        ranges: Vec<Range<u64>>,
        base: Base,
    },
}

/// What the digest stage consumes.
enum Piece {
    Zeros(u64),
    Data(Vec<u8>),
    /// An unchanged chunk of an incremental: nothing to hash inline.
    Skip,
}

struct Shared<'a> {
    client: &'a Client,
    repo: Repository,
    writer: Arc<BackupWriter>,
    index: Arc<FixedIndexWriter>,
    parent: Option<Arc<FixedIndexReader>>,
    flat: DatastoreFile,
    chunk_size: u64,
    capacity: u64,
    bytes_read: AtomicU64,
    repaired: AtomicU64,
}

pub(super) async fn back_up_disk(job: DiskJob<'_>) -> Result<DiskOutcome> {
    let capacity = job.plan.capacity;
    let index = match &job.parent {
        Some(parent) => {
            let (writer, name, parent) =
                (job.writer.clone(), job.index_name.clone(), parent.clone());
            tokio::task::spawn_blocking(move || {
                writer.new_index_from_parent(name, capacity, &parent)
            })
            .await
            .map_err(|e| Error::join(&e))??
        }
        None => job.writer.new_index(job.index_name.clone(), capacity)?,
    };
    let shared = Shared {
        client: job.client,
        repo: job.repo.clone(),
        writer: job.writer.clone(),
        index: Arc::new(index),
        parent: job.parent.clone(),
        flat: job.flat.clone(),
        chunk_size: job.plan.chunk_size,
        capacity,
        bytes_read: AtomicU64::new(0),
        repaired: AtomicU64::new(0),
    };
    let meter = Meter::new(Phase::Downloading, job.vm_name, Some(job.label), capacity);

    // Stage 3 (full reads) runs on its own thread and is fed in disk order.
    let inline_digest = job.parent.is_none();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(job.workers.max(1) * 2);
    let digest = tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256Hasher::new();
        while let Some(piece) = rx.blocking_recv() {
            match piece {
                Piece::Zeros(n) => hasher.update_zeros(n),
                Piece::Data(d) => hasher.update(&d),
                Piece::Skip => {}
            }
        }
        hasher.finish()
    });

    let units = units(&job.plan, job.max_request);
    let shared_ref = &shared;
    let mut chunks = stream::iter(units)
        .map(|unit| fetch(shared_ref, unit))
        .buffered(job.streams.max(1))
        .flat_map(|r| match r {
            Ok(items) => stream::iter(items.into_iter().map(Ok).collect::<Vec<_>>()),
            Err(e) => stream::iter(vec![Err(e)]),
        })
        .map(|item| async move { store(shared_ref, item?).await })
        .buffered(job.workers.max(1));

    let consumed: Result<()> = async {
        while let Some(piece) = chunks.next().await {
            if job.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let (len, piece) = piece?;
            meter.add(len, job.progress);
            if inline_digest && tx.send(piece).await.is_err() {
                return Err(Error::Internal("the digest thread stopped".into()));
            }
        }
        Ok(())
    }
    .await;
    drop(chunks);
    drop(tx);
    let sha256 = digest.await.map_err(|e| Error::join(&e))?;
    let sha256 = inline_digest.then_some(sha256);
    consumed?;
    meter.flush(job.progress);

    let Shared {
        index,
        writer,
        bytes_read,
        repaired,
        ..
    } = shared;
    let index =
        Arc::try_unwrap(index).map_err(|_| Error::Internal("the index is still shared".into()))?;
    let summary = tokio::task::spawn_blocking(move || writer.finish_index(index))
        .await
        .map_err(|e| Error::join(&e))??;
    let mut warnings = Vec::new();
    let repaired = repaired.load(Ordering::Relaxed);
    if repaired > 0 {
        warnings.push(format!(
            "{}: {repaired} chunk(s) of the last backup were missing or damaged in the repository; read them again from vCenter (run a full verify of older backups)",
            job.label
        ));
    }
    Ok(DiskOutcome {
        index: summary,
        sha256,
        bytes_read: bytes_read.load(Ordering::Relaxed),
        warnings,
    })
}

/// The plan as a sequence of units in disk order: zero/parent chunks pass straight through;
/// consecutive chunks to read form groups of at most [`GROUP_CHUNKS`] chunks and `max_request`
/// bytes.
fn units(plan: &DiskPlan, max_request: u64) -> Vec<Unit> {
    let mut out = Vec::new();
    let mut group: Vec<(usize, Vec<Range<u64>>, Base)> = Vec::new();
    let mut group_bytes = 0u64;
    for (index, chunk) in plan.chunks.iter().enumerate() {
        match chunk {
            ChunkSource::Zero | ChunkSource::Parent => {
                if !group.is_empty() {
                    out.push(Unit::Group(std::mem::take(&mut group)));
                    group_bytes = 0;
                }
                out.push(Unit::Ready(if matches!(chunk, ChunkSource::Zero) {
                    Item::Zero(index)
                } else {
                    Item::Parent(index)
                }));
            }
            ChunkSource::Read { ranges, base } => {
                let bytes: u64 = ranges.iter().map(|r| r.end - r.start).sum();
                if !group.is_empty()
                    && (group.len() >= GROUP_CHUNKS || group_bytes + bytes > max_request)
                {
                    out.push(Unit::Group(std::mem::take(&mut group)));
                    group_bytes = 0;
                }
                group.push((index, ranges.clone(), *base));
                group_bytes += bytes;
            }
        }
    }
    if !group.is_empty() {
        out.push(Unit::Group(group));
    }
    out
}

/// Stage 1: reads a group's ranges (touching ranges merged into one request) into chunk buffers.
async fn fetch(shared: &Shared<'_>, unit: Unit) -> Result<Vec<Item>> {
    let group = match unit {
        Unit::Ready(item) => return Ok(vec![item]),
        Unit::Group(group) => group,
    };
    let first = group.first().map_or(0, |g| g.0);
    let mut buffers: Vec<Vec<u8>> = group
        .iter()
        .map(|(index, _, _)| {
            let r = plan::chunk_range(*index, shared.chunk_size, shared.capacity);
            vec![0u8; usize::try_from(r.end - r.start).unwrap_or(0)]
        })
        .collect();
    let requests = plan::normalise(
        group.iter().flat_map(|g| g.1.iter().cloned()).collect(),
        shared.capacity,
    );
    for request in requests {
        let mut pos = request.start;
        let mut body =
            shared
                .client
                .get_range(&shared.flat, request.start, request.end - request.start)?;
        while let Some(bytes) = body.next().await {
            let mut bytes = &bytes?[..];
            while !bytes.is_empty() {
                let chunk = usize::try_from(pos / shared.chunk_size).unwrap_or(usize::MAX);
                let slot = chunk
                    .checked_sub(first)
                    .and_then(|i| buffers.get_mut(i))
                    .ok_or_else(|| Error::Internal(format!("read at {pos} outside its group")))?;
                let offset = usize::try_from(pos % shared.chunk_size).unwrap_or(0);
                let n = bytes.len().min(slot.len().saturating_sub(offset));
                if n == 0 {
                    return Err(Error::Internal(format!("read at {pos} beyond its chunk")));
                }
                slot[offset..offset + n].copy_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
                pos += n as u64;
            }
        }
        if pos != request.end {
            return Err(Error::VSphere(vbm_vsphere::Error::Truncated {
                file: shared.flat.path.to_string(),
                got: pos - request.start,
                expected: request.end - request.start,
            }));
        }
        shared
            .bytes_read
            .fetch_add(request.end - request.start, Ordering::Relaxed);
    }
    Ok(group
        .into_iter()
        .zip(buffers)
        .map(|((index, ranges, base), buf)| Item::Data {
            index,
            buf,
            ranges,
            base,
        })
        .collect())
}

/// Stage 2: one chunk into the repository; returns its length and what the digest stage needs.
async fn store(shared: &Shared<'_>, item: Item) -> Result<(u64, Piece)> {
    match item {
        Item::Zero(index) => {
            shared.index.set_zero(index as u64)?;
            Ok((
                chunk_len(shared, index),
                Piece::Zeros(chunk_len(shared, index)),
            ))
        }
        // Unchanged since the parent: the index (copied from the parent, every chunk referenced)
        // already names it; its data is hashed from the repository after the snapshot is gone.
        Item::Parent(index) => Ok((chunk_len(shared, index), Piece::Skip)),
        Item::Data {
            index,
            mut buf,
            ranges,
            base,
        } => {
            let len = chunk_len(shared, index);
            if base == Base::Parent {
                let digest = parent_digest(shared, index)?;
                match read_chunk(shared, digest, len).await {
                    Ok(mut data) => {
                        let start =
                            plan::chunk_range(index, shared.chunk_size, shared.capacity).start;
                        for r in &ranges {
                            let a = usize::try_from(r.start - start).unwrap_or(0);
                            let b = usize::try_from(r.end - start).unwrap_or(0);
                            data[a..b].copy_from_slice(&buf[a..b]);
                        }
                        buf = data;
                    }
                    Err(e) => {
                        tracing::warn!(chunk = %digest, error = %e, "parent chunk unusable; reading the whole chunk again from vCenter");
                        buf = refetch(shared, index).await?;
                    }
                }
            }
            insert(shared, index, buf)
                .await
                .map(|d| (len, Piece::Data(d)))
        }
    }
}

fn chunk_len(shared: &Shared<'_>, index: usize) -> u64 {
    let r = plan::chunk_range(index, shared.chunk_size, shared.capacity);
    r.end - r.start
}

fn parent_digest(shared: &Shared<'_>, index: usize) -> Result<ChunkDigest> {
    shared
        .parent
        .as_ref()
        .map(|p| p.digest(index as u64))
        .ok_or_else(|| Error::Internal("parent chunk without a parent index".into()))
}

async fn read_chunk(shared: &Shared<'_>, digest: ChunkDigest, len: u64) -> Result<Vec<u8>> {
    if digest.is_zero() {
        return Ok(vec![0; usize::try_from(len).unwrap_or(0)]);
    }
    let repo = shared.repo.clone();
    let len = usize::try_from(len).unwrap_or(0);
    Ok(
        tokio::task::spawn_blocking(move || repo.read_chunk(&digest, len))
            .await
            .map_err(|e| Error::join(&e))??,
    )
}

/// Reads a whole chunk from vCenter (a parent chunk turned out damaged or missing).
async fn refetch(shared: &Shared<'_>, index: usize) -> Result<Vec<u8>> {
    let range = plan::chunk_range(index, shared.chunk_size, shared.capacity);
    let mut out = Vec::with_capacity(usize::try_from(range.end - range.start).unwrap_or(0));
    let mut body = shared
        .client
        .get_range(&shared.flat, range.start, range.end - range.start)?;
    while let Some(bytes) = body.next().await {
        out.extend_from_slice(&bytes?);
    }
    shared
        .bytes_read
        .fetch_add(out.len() as u64, Ordering::Relaxed);
    shared.repaired.fetch_add(1, Ordering::Relaxed);
    Ok(out)
}

/// Hashes, compresses and stores a chunk, and records it in the index.
async fn insert(shared: &Shared<'_>, index: usize, data: Vec<u8>) -> Result<Vec<u8>> {
    let writer = shared.writer.clone();
    let (chunk, data) =
        tokio::task::spawn_blocking(move || writer.insert_chunk(&data).map(|r| (r, data)))
            .await
            .map_err(|e| Error::join(&e))??;
    shared.index.set(index as u64, chunk.digest)?;
    Ok(data)
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn units_group_consecutive_reads_and_pass_the_rest_through() {
        let p = plan::plan_disk(
            40 * MIB,
            4 * MIB,
            vec![0..20 * MIB, 28 * MIB..29 * MIB],
            false,
        );
        let u = units(&p, 64 * MIB);
        let shape: Vec<String> = u
            .iter()
            .map(|u| match u {
                Unit::Ready(Item::Zero(i)) => format!("z{i}"),
                Unit::Ready(Item::Parent(i)) => format!("p{i}"),
                Unit::Ready(Item::Data { .. }) => "d".to_owned(),
                Unit::Group(g) => format!("g{:?}", g.iter().map(|c| c.0).collect::<Vec<_>>()),
            })
            .collect();
        assert_eq!(
            shape,
            vec!["g[0, 1, 2, 3]", "g[4]", "z5", "z6", "g[7]", "z8", "z9"]
        );
    }

    #[test]
    fn units_respect_the_request_cap() {
        let p = plan::plan_disk(16 * MIB, 4 * MIB, vec![0..16 * MIB], false);
        let groups = units(&p, 8 * MIB)
            .into_iter()
            .filter(|u| matches!(u, Unit::Group(_)))
            .count();
        assert_eq!(groups, 2);
    }
}
