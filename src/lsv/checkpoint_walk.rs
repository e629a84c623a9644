//! A checkpoint's snapshot, taken a bounded piece at a time.
//!
//! A snapshot writes a row for every segment and an entry for every mapped block
//! (`checkpoint.rs`). Taken in one go, it held the cleaner's reactor for as long as that
//! takes: about 100 ms for a 12 GiB volume written full (3.1 million entries), every
//! checkpoint. The cleaner now takes it a piece per poll, between its cleaning steps, and
//! the reactor serves I/O between the pieces.
//!
//! A piece is at most `PIECE_SEGMENTS` segment rows, `PIECE_LEAVES` extent-table leaves
//! (512 entries each), or `PIECE_CRC_BYTES` of the body's checksum.
//!
//! Why a snapshot taken over many polls, with writes and cleaning going on, is still one
//! recovery can start from:
//! - `complete_seq` and `next_seq` are taken when the walk begins. Every record at or below
//!   `complete_seq` is in the tables then, so the walk sees it or something newer; whatever
//!   changes during the walk has a record numbered above `complete_seq` (a user write, an
//!   unmap, or a relocation record, which keeps its blocks' original numbers), and replay
//!   applies it again (an entry is applied if its number is at least the one it replaces).
//! - Those records are found: a segment opened during the walk is in the journal with an
//!   epoch above `complete_seq` (or, in a version 2 pool, probed); rows are restored from
//!   the map's own live counts, not the rows'.
//! - Those records are durable before the checkpoint counts: the body is flushed before
//!   its header is written. A victim cleaned during the walk is freed (and may be reused)
//!   only after the flush that makes its relocation records and the writes that superseded
//!   its dead blocks durable, so an entry the walk took pointing into it is replayed over.
//! - The checkpoint being taken counts for nothing until its header is durable: segment and
//!   journal-slot reuse wait for both durable checkpoints, as before.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::checkpoint::{BodyWriter, CheckpointHeader, SegmentRow, CP_HEADER_BYTES};
use super::extent_table::{ExtentTable, Stored};
use super::pool::{LsvPool, PoolError};

/// Segment rows a piece writes.
#[cfg(not(test))]
pub const PIECE_SEGMENTS: u64 = 16_384;
/// Extent-table leaves a piece walks (512 entries each: 32,768 entries, about 1 ms).
#[cfg(not(test))]
pub const PIECE_LEAVES: usize = 64;
/// Body bytes a piece checksums (about 0.5 ms).
#[cfg(not(test))]
pub const PIECE_CRC_BYTES: usize = 4 << 20;
// Tests take small pieces, so that writes and the cleaner's other work interleave with a
// walk in the simulator's small pools too.
#[cfg(test)]
pub const PIECE_SEGMENTS: u64 = 5;
#[cfg(test)]
pub const PIECE_LEAVES: usize = 1;
#[cfg(test)]
pub const PIECE_CRC_BYTES: usize = 4096;

/// Where a walk stands.
#[derive(Debug)]
enum Phase {
    Segments {
        next: u64,
    },
    /// Volume `index` of `tables`, from `next_lba` (None: its section is not begun).
    Volume {
        index: usize,
        next_lba: Option<u64>,
    },
    /// The body is written; checksummed up to `done`.
    Checksum {
        done: usize,
    },
}

/// A snapshot being taken into a checkpoint buffer (a slot's size: header, then body).
pub struct CheckpointWalk {
    generation: u64,
    complete_seq: u64,
    next_seq: u64,
    /// The volumes when the walk began (a volume created later has only records after
    /// `complete_seq`; one deleted meanwhile is walked all the same and skipped at load).
    tables: Vec<(u32, Arc<ExtentTable>)>,
    phase: Phase,
    body: BodyWriter,
    crc: u32,
    pieces: u64,
    /// The pool's `segments_cleaned` when the walk began.
    cleaned_at_begin: u64,
}

/// What one piece of a walk came to.
#[derive(Debug)]
pub enum WalkStep {
    More,
    /// The snapshot is in the buffer, header included.
    Done(CheckpointHeader),
}

impl CheckpointWalk {
    /// Begins the snapshot for the next checkpoint (the caller holds the checkpoint lock).
    pub fn begin(pool: &LsvPool) -> CheckpointWalk {
        let (complete_seq, next_seq) = pool.complete_seq();
        CheckpointWalk {
            generation: pool.checkpoint_generation() + 1,
            complete_seq,
            next_seq,
            tables: pool.volume_tables(),
            phase: Phase::Segments { next: 0 },
            body: BodyWriter::new(),
            crc: 0,
            pieces: 0,
            cleaned_at_begin: pool.segments_cleaned.load(Ordering::Relaxed),
        }
    }

    /// Takes the next piece of the snapshot into `buf`.
    pub fn step(&mut self, pool: &LsvPool, buf: &mut [u8]) -> Result<WalkStep, PoolError> {
        debug_assert!(buf.len() > CP_HEADER_BYTES);
        self.pieces += 1;
        let cp = |e: super::checkpoint::CheckpointError| PoolError::Corrupt(e.to_string());
        let (head, body) = buf.split_at_mut(CP_HEADER_BYTES);
        match self.phase {
            Phase::Segments { next } => {
                let end = (next + PIECE_SEGMENTS).min(pool.sb.segment_count);
                for seg in next..end {
                    let row = SegmentRow {
                        state: pool.usage.state(seg),
                        live_blocks: pool.usage.live(seg),
                        last_seq: pool.usage.last_seq(seg),
                    };
                    self.body.segment(body, row).map_err(cp)?;
                }
                self.phase = if end < pool.sb.segment_count {
                    Phase::Segments { next: end }
                } else {
                    Phase::Volume {
                        index: 0,
                        next_lba: None,
                    }
                };
            }
            Phase::Volume { index, next_lba } => {
                let Some((id, table)) = self.tables.get(index) else {
                    self.body.end_volume(body);
                    self.phase = Phase::Checksum { done: 0 };
                    return Ok(WalkStep::More);
                };
                let start = match next_lba {
                    Some(lba) => lba,
                    None => {
                        self.body.begin_volume(body, *id).map_err(cp)?;
                        0
                    }
                };
                let mut err = None;
                let w = &mut self.body;
                let next = table.for_each_from(start, PIECE_LEAVES, |lba, s| {
                    let seq = match s {
                        Stored::At(p) => pool.seq_of(p),
                        Stored::Tombstone(q) => q,
                    };
                    if err.is_none() {
                        err = w.entry(body, lba, s, seq).err();
                    }
                });
                if let Some(e) = err {
                    return Err(cp(e));
                }
                self.phase = match next {
                    Some(lba) => Phase::Volume {
                        index,
                        next_lba: Some(lba),
                    },
                    None => Phase::Volume {
                        index: index + 1,
                        next_lba: None,
                    },
                };
            }
            Phase::Checksum { done } => {
                let len = self.body.written_bytes();
                debug_assert_eq!(self.body.settled(), len, "every section is ended");
                let end = (done + PIECE_CRC_BYTES).min(len);
                self.crc = crc32c::crc32c_append(self.crc, &body[done..end]);
                if end < len {
                    self.phase = Phase::Checksum { done: end };
                } else {
                    let h = CheckpointHeader {
                        generation: self.generation,
                        complete_seq: self.complete_seq,
                        next_seq: self.next_seq,
                        segment_count: pool.sb.segment_count,
                        volume_count: self.body.volumes,
                        body_bytes: len as u64,
                        body_crc: self.crc,
                    };
                    h.encode(head);
                    pool.checkpoint_walk_pieces
                        .store(self.pieces, Ordering::Relaxed);
                    if pool.next_seq_now() > self.next_seq {
                        pool.checkpoint_walks_overlapping_writes
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    if pool.segments_cleaned.load(Ordering::Relaxed) > self.cleaned_at_begin {
                        pool.checkpoint_walks_overlapping_cleaning
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(WalkStep::Done(h));
                }
            }
        }
        Ok(WalkStep::More)
    }
}
