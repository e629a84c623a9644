//! Checkpoints taken and written beside the cleaning: `CheckpointWalk` takes the snapshot a
//! bounded piece at a time, and `CheckpointWriter` writes it (body, flush, then the header
//! with FUA) on a channel of its own, both polled by the cleaner between its own steps.
//!
//! A snapshot writes a row for every segment and an entry for every mapped block
//! (`checkpoint.rs`). Taken in one go, it held the cleaner's reactor for as long as that
//! takes: about 100 ms for a 12 GiB volume written full (3.1 million entries), every
//! checkpoint, and no victim was cleaned until its body (75 MB there) was written. Now the
//! reactor serves I/O between the pieces, and cleaning goes on throughout, unless the
//! cleaner's last relocation record found no free journal slot: then it waits for the
//! checkpoint, which frees slots, rather than read victims it cannot move.
//!
//! Bounds: a piece is at most `PIECE_SEGMENTS` segment rows, `PIECE_LEAVES` extent-table
//! leaves (512 entries each), or `PIECE_CRC_BYTES` of the body's checksum; body writes are
//! `IO_BYTES` each, `QUEUE_DEPTH` at most in flight.
//!
//! Why a checkpoint taken and written over many polls, with writes and cleaning going on,
//! is still one recovery can start from:
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
//!   Its row may say Sealed: recovery then restores it Sealed with the live count the map
//!   gives (none), and the cleaner frees it again.
//! - The checkpoint being taken counts for nothing until its header is durable: what waits
//!   for both durable checkpoints (journal-slot reuse, victims freed unread, unmaps no
//!   checkpoint covers) goes by the two durable ones, as before.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::checkpoint::{BodyWriter, CheckpointHeader, SegmentRow, CP_HEADER_BYTES, CP_VERSION};
use super::extent_table::{ExtentTable, Stored, FANOUT};
use super::pool::{LsvPool, PoolError};
use super::record::BLOCK_BYTES;
use crate::bdev::{ChannelContext, IoChannel, IoCompletion, IoRequest, IoStatus, IoType, IoVec};
use crate::mem::DmaRegion;

/// Bytes a body write carries.
const IO_BYTES: usize = 4 << 20;
/// Writes a checkpoint has in flight at most (its channel's depth): 16 MiB of body, so that a
/// large body does not fill the device's queue ahead of the log's records.
const QUEUE_DEPTH: u32 = 4;

/// Segment rows a piece writes.
#[cfg(not(test))]
pub const PIECE_SEGMENTS: u64 = 16_384;
/// Extent-table leaves a piece walks (512 entries each: 32,768 entries, about 1 ms).
#[cfg(not(test))]
pub const PIECE_LEAVES: usize = 64;
/// Body bytes a piece checksums.
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
    /// Up to a leaf's worth of entries (512) with their sequence numbers, gathered before
    /// they are encoded: each entry's place in the body depends on the entry before (its
    /// size does), so encoding as the walk goes would wait out each `seq_of` cache miss in
    /// turn; gathered into fixed places, the misses overlap.
    gathered: Vec<(u64, Stored, u64)>,
    crc: u32,
    pieces: u64,
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
            gathered: Vec::with_capacity(FANOUT),
            crc: 0,
            pieces: 0,
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
                let (w, gathered) = (&mut self.body, &mut self.gathered);
                let mut encode = |gathered: &mut Vec<(u64, Stored, u64)>| {
                    for &(lba, s, seq) in gathered.iter() {
                        if err.is_none() {
                            err = w.entry(body, lba, s, seq).err();
                        }
                    }
                    gathered.clear();
                };
                let next = table.for_each_from(start, PIECE_LEAVES, |lba, s| {
                    let seq = match s {
                        Stored::At(p) => pool.seq_of(p),
                        Stored::Tombstone(q) => q,
                    };
                    gathered.push((lba, s, seq));
                    if gathered.len() == FANOUT {
                        encode(gathered);
                    }
                });
                encode(gathered);
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
                        version: CP_VERSION,
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
                    return Ok(WalkStep::Done(h));
                }
            }
        }
        Ok(WalkStep::More)
    }
}

/// Takes and writes checkpoints on the cleaner's reactor, beside the cleaning (on a channel
/// of its own): walk (a piece per poll), body writes, a flush, then the header with FUA.
pub struct CheckpointWriter {
    pool: Arc<LsvPool>,
    ch: IoChannel,
    /// A slot's size, mapped as it is written (a pool's first checkpoint allocates it).
    buf: Option<DmaRegion>,
    state: WriterState,
    done: Vec<IoCompletion>,
    /// The pool's `segments_cleaned` when the checkpoint began.
    cleaned_at_begin: u64,
}

enum WriterState {
    Idle,
    Walking(Box<CheckpointWalk>),
    Body {
        h: CheckpointHeader,
        offset: u64,
        len: usize,
        next: usize,
        outstanding: u32,
        failed: bool,
    },
    Flush {
        h: CheckpointHeader,
        offset: u64,
    },
    Header {
        h: CheckpointHeader,
    },
}

/// What a poll of the writer came to.
#[derive(Debug, PartialEq, Eq)]
pub enum WriterPoll {
    /// No checkpoint is being written.
    Idle,
    /// A checkpoint is being written: a step was taken.
    Busy,
    /// A checkpoint is being written: its I/O is in flight.
    Waiting,
    /// Checkpoint `h` is durable (the pool knows it: `end_checkpoint`).
    Durable(CheckpointHeader),
    /// The checkpoint failed (logged); the lock is dropped.
    Failed,
}

impl CheckpointWriter {
    /// A writer for `pool`, built on the thread that will poll it.
    pub fn new(pool: Arc<LsvPool>) -> Result<CheckpointWriter, String> {
        let ch = pool
            .base
            .open_channel(&ChannelContext {
                queue_depth: QUEUE_DEPTH,
                buffers: None,
            })
            .map_err(|e| e.to_string())?;
        Ok(CheckpointWriter {
            pool,
            ch,
            buf: None,
            state: WriterState::Idle,
            done: Vec::with_capacity(QUEUE_DEPTH as usize),
            cleaned_at_begin: 0,
        })
    }

    /// Whether a checkpoint is being taken or written.
    pub fn busy(&self) -> bool {
        !matches!(self.state, WriterState::Idle)
    }

    /// Begins the next checkpoint; false if one is running (here or a blocking one).
    pub fn start(&mut self) -> bool {
        debug_assert!(!self.busy());
        if !self.pool.begin_checkpoint() {
            return false;
        }
        if self.buf.is_none() {
            match DmaRegion::new_lazy(self.pool.sb.metadata_slot_bytes as usize) {
                Ok(r) => self.buf = Some(r),
                Err(e) => {
                    tracing::error!(pool = %self.pool.name, "checkpoint buffer: {e}");
                    self.pool.abort_checkpoint();
                    return false;
                }
            }
        }
        self.cleaned_at_begin = self.pool.segments_cleaned.load(Ordering::Relaxed);
        self.state = WriterState::Walking(Box::new(CheckpointWalk::begin(&self.pool)));
        true
    }

    /// Tests: whether the snapshot is still being taken.
    #[cfg(test)]
    pub fn walking(&self) -> bool {
        matches!(self.state, WriterState::Walking(_))
    }

    /// Drops a checkpoint whose snapshot is still being taken (nothing of it is in flight).
    pub fn cancel_walk(&mut self) {
        if let WriterState::Walking(_) = self.state {
            self.state = WriterState::Idle;
            self.pool.abort_checkpoint();
        }
    }

    /// Takes the next step of the checkpoint being written, if there is one.
    pub fn poll(&mut self) -> WriterPoll {
        self.done.clear();
        if self.ch.in_flight() > 0 {
            self.ch.poll(0, &mut self.done);
        }
        let state = std::mem::replace(&mut self.state, WriterState::Idle);
        let (next, result) = match state {
            WriterState::Idle => (WriterState::Idle, WriterPoll::Idle),
            WriterState::Walking(mut walk) => {
                let buf = self.buf.as_ref().expect("checkpoint buffer");
                // SAFETY: our buffer; no I/O on it is in flight while a walk runs.
                let bytes = unsafe { std::slice::from_raw_parts_mut(buf.as_ptr(), buf.len()) };
                match walk.step(&self.pool, bytes) {
                    Ok(WalkStep::More) => (WriterState::Walking(walk), WriterPoll::Busy),
                    Ok(WalkStep::Done(h)) => {
                        let (offset, len) = self.pool.checkpoint_extent(&h);
                        let mut outstanding = 0;
                        let next = self.submit_body(offset, len, BLOCK_BYTES, &mut outstanding);
                        (
                            WriterState::Body {
                                h,
                                offset,
                                len,
                                next,
                                outstanding,
                                failed: false,
                            },
                            WriterPoll::Busy,
                        )
                    }
                    Err(e) => {
                        tracing::error!(pool = %self.pool.name, "checkpoint: {e}");
                        self.pool.abort_checkpoint();
                        (WriterState::Idle, WriterPoll::Failed)
                    }
                }
            }
            WriterState::Body {
                h,
                offset,
                len,
                mut next,
                mut outstanding,
                mut failed,
            } => {
                debug_assert!(self.done.len() <= outstanding as usize);
                outstanding -= self.done.len() as u32;
                failed |= self.done.iter().any(|c| c.status != IoStatus::Success);
                let completed = !self.done.is_empty();
                if !failed {
                    next = self.submit_body(offset, len, next, &mut outstanding);
                }
                if outstanding > 0 {
                    let body = WriterState::Body {
                        h,
                        offset,
                        len,
                        next,
                        outstanding,
                        failed,
                    };
                    if completed {
                        (body, WriterPoll::Busy)
                    } else {
                        (body, WriterPoll::Waiting)
                    }
                } else if failed || next < len {
                    // A write failed, or none would submit with nothing in flight (it would
                    // wait for ever).
                    tracing::error!(pool = %self.pool.name, failed, "checkpoint body write failed or could not be submitted");
                    (self.fail(&h), WriterPoll::Failed)
                } else if self.submit_flush() {
                    (WriterState::Flush { h, offset }, WriterPoll::Busy)
                } else {
                    (self.fail(&h), WriterPoll::Failed)
                }
            }
            WriterState::Flush { h, offset } => match self.done.first().map(|c| c.status) {
                None => (WriterState::Flush { h, offset }, WriterPoll::Waiting),
                Some(IoStatus::Success) => {
                    // The body is durable: the header, with FUA, makes the checkpoint count.
                    if self.submit_header(offset) {
                        (WriterState::Header { h }, WriterPoll::Busy)
                    } else {
                        (self.fail(&h), WriterPoll::Failed)
                    }
                }
                Some(_) => (self.fail(&h), WriterPoll::Failed),
            },
            WriterState::Header { h } => match self.done.first() {
                None => (WriterState::Header { h }, WriterPoll::Waiting),
                Some(c) if c.status != IoStatus::Success => (self.fail(&h), WriterPoll::Failed),
                Some(_) => {
                    self.pool.end_checkpoint(&h, true);
                    if self.pool.segments_cleaned.load(Ordering::Relaxed) > self.cleaned_at_begin {
                        self.pool
                            .checkpoints_overlapping_cleaning
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    if self.pool.next_seq_now() > h.next_seq {
                        self.pool
                            .checkpoints_overlapping_writes
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    (WriterState::Idle, WriterPoll::Durable(h))
                }
            },
        };
        self.state = next;
        result
    }

    fn fail(&self, h: &CheckpointHeader) -> WriterState {
        tracing::error!(pool = %self.pool.name, generation = h.generation, "checkpoint failed");
        self.pool.end_checkpoint(h, false);
        WriterState::Idle
    }

    fn submit_flush(&mut self) -> bool {
        self.ch.submit(&IoRequest::flush(0), 0).is_ok()
    }

    /// Writes the header (the buffer's first block) to the slot at byte `offset`, with FUA.
    fn submit_header(&mut self, offset: u64) -> bool {
        let buf = self.buf.as_ref().expect("checkpoint buffer");
        // SAFETY: the header block of our buffer, untouched until the write completes.
        let iov = unsafe { IoVec::from_raw(buf.as_ptr(), BLOCK_BYTES) };
        let header = IoRequest {
            io_type: IoType::Write,
            offset_blocks: offset / BLOCK_BYTES as u64,
            num_blocks: 1,
            iovs: &[iov],
            fua: true,
            tag: 0,
        };
        self.ch.submit(&header, 0).is_ok()
    }

    /// Submits body writes from `next` while the channel has room; returns the new `next`.
    fn submit_body(
        &mut self,
        offset: u64,
        len: usize,
        mut next: usize,
        outstanding: &mut u32,
    ) -> usize {
        let buf = self.buf.as_ref().expect("checkpoint buffer");
        while next < len && self.ch.in_flight() < self.ch.queue_depth() {
            let n = (len - next).min(IO_BYTES);
            // SAFETY: inside our checkpoint buffer, untouched until the write completes.
            let iov = unsafe { IoVec::from_raw(buf.as_ptr().add(next), n) };
            let r = self.ch.submit(
                &IoRequest {
                    io_type: IoType::Write,
                    offset_blocks: (offset + next as u64) / BLOCK_BYTES as u64,
                    num_blocks: (n / BLOCK_BYTES) as u64,
                    iovs: &[iov],
                    fua: false,
                    tag: 0,
                },
                0,
            );
            if r.is_err() {
                break;
            }
            *outstanding += 1;
            next += n;
        }
        next
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        // Wait out writes in flight on our buffer (only when dropped mid-checkpoint); the
        // checkpoint does not count.
        let mut out = Vec::new();
        self.ch.drain(&mut out);
        match std::mem::replace(&mut self.state, WriterState::Idle) {
            WriterState::Idle => {}
            WriterState::Walking(_) => self.pool.abort_checkpoint(),
            // The header landed: the checkpoint counts (the next one must not overwrite it).
            WriterState::Header { h }
                if out.first().is_some_and(|c| c.status == IoStatus::Success) =>
            {
                self.pool.end_checkpoint(&h, true)
            }
            WriterState::Body { h, .. }
            | WriterState::Flush { h, .. }
            | WriterState::Header { h } => self.pool.end_checkpoint(&h, false),
        }
    }
}
