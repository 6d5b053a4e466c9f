//! The read plan of one disk: which 4 MiB chunks to read from vCenter, which to take from the
//! parent backup, which are zero — and how to group the reads into HTTP range requests.
//!
//! Pure functions over byte ranges, so that the rules that decide what a backup contains are
//! exact and tested without a vCenter:
//! - Chunks are aligned to disk offsets (`index × chunk_size`); the last one may be short.
//! - A **full** backup reads the areas CBT reports as allocated (`changeId="*"`); everything else
//!   is zero (unallocated areas of a thin disk read as zeros).
//! - An **incremental** reads the areas changed since the parent's changeId; a chunk it does not
//!   touch is the parent's chunk; a partly changed chunk is the parent's chunk with the changed
//!   bytes laid over it.

use std::ops::Range;

/// Where the bytes of one chunk come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkSource {
    /// All zero: nothing allocated in this chunk (full backup).
    Zero,
    /// Unchanged since the parent backup: reuse the parent's chunk at the same index.
    Parent,
    /// Read `ranges` (absolute disk offsets, sorted, disjoint, inside the chunk) from the disk; the
    /// rest of the chunk comes from `base`.
    Read {
        /// Byte ranges of the disk to read.
        ranges: Vec<Range<u64>>,
        /// What the parts of the chunk outside `ranges` hold.
        base: Base,
    },
}

/// The content of a partly read chunk outside its read ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// Zeros (full backup: unallocated space), or nothing because the ranges cover the chunk.
    Zero,
    /// The parent backup's chunk at the same index.
    Parent,
}

/// The plan for one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    /// Disk capacity in bytes.
    pub capacity: u64,
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// One entry per chunk, in disk order.
    pub chunks: Vec<ChunkSource>,
}

impl DiskPlan {
    /// Number of bytes the plan reads from the disk.
    #[must_use]
    pub fn bytes_to_read(&self) -> u64 {
        self.chunks
            .iter()
            .map(|c| match c {
                ChunkSource::Read { ranges, .. } => ranges.iter().map(|r| r.end - r.start).sum(),
                ChunkSource::Zero | ChunkSource::Parent => 0,
            })
            .sum()
    }

    /// The byte range of chunk `index`.
    #[must_use]
    pub fn chunk_range(&self, index: usize) -> Range<u64> {
        chunk_range(index, self.chunk_size, self.capacity)
    }
}

/// The byte range of chunk `index` of a disk of `capacity` bytes.
#[must_use]
pub fn chunk_range(index: usize, chunk_size: u64, capacity: u64) -> Range<u64> {
    let start = (index as u64).saturating_mul(chunk_size).min(capacity);
    start..start.saturating_add(chunk_size).min(capacity)
}

/// Number of chunks of a disk.
#[must_use]
pub fn chunk_count(capacity: u64, chunk_size: u64) -> usize {
    usize::try_from(capacity.div_ceil(chunk_size.max(1))).unwrap_or(usize::MAX)
}

/// Sorts, clips to `0..capacity` and merges overlapping or touching extents.
#[must_use]
pub fn normalise(mut extents: Vec<Range<u64>>, capacity: u64) -> Vec<Range<u64>> {
    extents.retain(|r| r.start < r.end && r.start < capacity);
    for r in &mut extents {
        r.end = r.end.min(capacity);
    }
    extents.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(extents.len());
    for r in extents {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// Plans a disk: `areas` are the extents CBT reported (allocated areas for a full backup, changed
/// areas for an incremental); `incremental` says whether untouched chunks come from the parent.
#[must_use]
pub fn plan_disk(
    capacity: u64,
    chunk_size: u64,
    areas: Vec<Range<u64>>,
    incremental: bool,
) -> DiskPlan {
    let chunk_size = chunk_size.max(1);
    let areas = normalise(areas, capacity);
    let count = chunk_count(capacity, chunk_size);
    let untouched = if incremental {
        ChunkSource::Parent
    } else {
        ChunkSource::Zero
    };
    let mut chunks = vec![untouched; count];
    for area in areas {
        let first = usize::try_from(area.start / chunk_size).unwrap_or(usize::MAX);
        let last = usize::try_from((area.end - 1) / chunk_size).unwrap_or(usize::MAX);
        let last = last.min(count.saturating_sub(1));
        for (index, chunk) in chunks.iter_mut().enumerate().take(last + 1).skip(first) {
            let bounds = chunk_range(index, chunk_size, capacity);
            let piece = area.start.max(bounds.start)..area.end.min(bounds.end);
            let base = if incremental {
                Base::Parent
            } else {
                Base::Zero
            };
            match chunk {
                ChunkSource::Read { ranges, .. } => ranges.push(piece),
                other => {
                    *other = ChunkSource::Read {
                        ranges: vec![piece],
                        base,
                    }
                }
            }
        }
    }
    // A chunk read completely needs no base: say so, so that no parent chunk is fetched for it.
    for (index, chunk) in chunks.iter_mut().enumerate() {
        if let ChunkSource::Read { ranges, base } = chunk {
            let bounds = chunk_range(index, chunk_size, capacity);
            let covered: u64 = ranges.iter().map(|r| r.end - r.start).sum();
            if covered == bounds.end - bounds.start {
                *base = Base::Zero;
            }
        }
    }
    DiskPlan {
        capacity,
        chunk_size,
        chunks,
    }
}

/// One HTTP range request: a contiguous byte range of the disk and the chunks it feeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// The disk range to GET.
    pub range: Range<u64>,
}

/// Groups the read ranges of consecutive chunks into range requests of at most `max_request`
/// bytes. Ranges that touch across a chunk boundary are fetched in one request; gaps are not read
/// (a gap costs a request, reading it would cost bandwidth on exactly the data CBT says is unused).
#[must_use]
pub fn fetches(plan: &DiskPlan, max_request: u64) -> Vec<Fetch> {
    let max_request = max_request.max(1);
    let mut out: Vec<Fetch> = Vec::new();
    let ranges = plan.chunks.iter().flat_map(|c| match c {
        ChunkSource::Read { ranges, .. } => ranges.as_slice(),
        ChunkSource::Zero | ChunkSource::Parent => &[],
    });
    for r in ranges {
        let mut start = r.start;
        while start < r.end {
            match out.last_mut() {
                Some(last)
                    if last.range.end == start
                        && last.range.end - last.range.start < max_request =>
                {
                    let room = max_request - (last.range.end - last.range.start);
                    let end = r.end.min(start + room);
                    last.range.end = end;
                    start = end;
                }
                _ => {
                    let end = r.end.min(start + max_request);
                    out.push(Fetch { range: start..end });
                    start = end;
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // vectors of one range are the point here
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const CHUNK: u64 = 4 * MIB;

    #[test]
    fn full_backup_of_an_empty_thin_disk_reads_nothing() {
        let plan = plan_disk(10 * MIB + 64 * 1024, CHUNK, vec![], false);
        assert_eq!(plan.chunks, vec![ChunkSource::Zero; 3]);
        assert_eq!(plan.bytes_to_read(), 0);
        assert_eq!(
            plan.chunk_range(2),
            8 * MIB..10 * MIB + 64 * 1024,
            "the last chunk is short"
        );
    }

    #[test]
    fn full_backup_reads_only_allocated_parts_and_zero_fills_the_rest() {
        let plan = plan_disk(12 * MIB, CHUNK, vec![MIB..2 * MIB, 4 * MIB..8 * MIB], false);
        assert_eq!(
            plan.chunks,
            vec![
                ChunkSource::Read {
                    ranges: vec![MIB..2 * MIB],
                    base: Base::Zero
                },
                ChunkSource::Read {
                    ranges: vec![4 * MIB..8 * MIB],
                    base: Base::Zero
                },
                ChunkSource::Zero,
            ]
        );
        assert_eq!(plan.bytes_to_read(), 5 * MIB);
    }

    #[test]
    fn incremental_overlays_partial_changes_on_the_parent_chunk() {
        let plan = plan_disk(12 * MIB, CHUNK, vec![3 * MIB..5 * MIB], true);
        assert_eq!(
            plan.chunks,
            vec![
                ChunkSource::Read {
                    ranges: vec![3 * MIB..4 * MIB],
                    base: Base::Parent
                },
                ChunkSource::Read {
                    ranges: vec![4 * MIB..5 * MIB],
                    base: Base::Parent
                },
                ChunkSource::Parent,
            ]
        );
    }

    #[test]
    fn a_fully_changed_chunk_needs_no_parent_data() {
        let plan = plan_disk(8 * MIB, CHUNK, vec![0..MIB, MIB..4 * MIB], true);
        assert_eq!(
            plan.chunks[0],
            ChunkSource::Read {
                ranges: vec![0..4 * MIB],
                base: Base::Zero
            }
        );
        assert_eq!(plan.chunks[1], ChunkSource::Parent);
    }

    #[test]
    fn extents_are_clipped_sorted_and_merged() {
        let merged = normalise(vec![5..10, 0..3, 3..4, 8..12, 20..20, 30..40], 35);
        assert_eq!(merged, vec![0..4, 5..12, 30..35]);
    }

    #[test]
    fn fetches_join_touching_ranges_across_chunks_and_respect_the_cap() {
        let plan = plan_disk(
            16 * MIB,
            CHUNK,
            vec![2 * MIB..10 * MIB, 12 * MIB..13 * MIB],
            false,
        );
        let f = fetches(&plan, 6 * MIB);
        let ranges: Vec<_> = f.into_iter().map(|f| f.range).collect();
        assert_eq!(
            ranges,
            vec![2 * MIB..8 * MIB, 8 * MIB..10 * MIB, 12 * MIB..13 * MIB]
        );
    }

    #[test]
    fn every_read_byte_is_fetched_exactly_once() {
        // A pseudo-random set of extents: the fetches must cover exactly the planned reads.
        let mut extents = Vec::new();
        let mut x: u64 = 12345;
        for _ in 0..200 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let start = (x >> 20) % (64 * MIB);
            let len = (x >> 8) % (3 * MIB) + 1;
            extents.push(start..start + len);
        }
        let capacity = 64 * MIB + 4096;
        let plan = plan_disk(capacity, CHUNK, extents.clone(), true);
        let fetched: u64 = fetches(&plan, 8 * MIB)
            .iter()
            .map(|f| f.range.end - f.range.start)
            .sum();
        let expected: u64 = normalise(extents, capacity)
            .iter()
            .map(|r| r.end - r.start)
            .sum();
        assert_eq!(fetched, expected);
        assert_eq!(plan.bytes_to_read(), expected);
    }
}
