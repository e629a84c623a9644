//! The cleaner: frees segments by moving their live blocks to its own log heads, and has its
//! `CheckpointWriter` write the checkpoints that make freed segments reusable.
//!
//! One cleaner runs per pool, as a service poller on one reactor, with a channel of its own on
//! the base bdev. It is a state machine that never blocks:
//!
//! - **Victims.** When free segments (plus cleaned ones waiting for checkpoints) fall below
//!   `LsvPool::clean_target`, it picks a sealed segment with no record in flight by the pool's
//!   policy (greedy, cost-benefit, or lifespan), walks its records, and keeps the blocks the
//!   extent table still points at. A victim with nothing live and every record covered by
//!   both checkpoints is not read at all; a mostly dead one is read in parts (its headers,
//!   then its live writes: `victim_read`); any other is read whole.
//! - **Streams.** Moved blocks go to relocation log heads, never to a user head, so data that
//!   survived a cleaning is kept apart from fresh user writes. With the lifespan policy, moved
//!   blocks older than the running average age of moved blocks go to a second, "cold" stream
//!   (SepBIT-style classes by lifespan).
//! - **Moves.** Each batch is one log record; every entry carries the
//!   original write's sequence number, so replay orders it correctly against newer writes.
//!   When the record completes, each block's mapping moves with `remap_if` (only if it still
//!   points at the old place: a newer write always wins).
//! - **Reuse.** An emptied segment is Free at once. Recovery from either checkpoint slot never
//!   needs one of its records: its live blocks are in relocation records (replayed like any
//!   other, ordered by their original sequence numbers), its dead blocks were superseded by
//!   writes or unmaps that are in the log or a checkpoint, and its unmaps that neither
//!   checkpoint covers are re-logged as relocation records too.
//! - **Checkpoints** are taken every `CHECKPOINT_INTERVAL` while the pool is written, and when
//!   the log written since the last one passes a quarter of the pool (at most 512 MiB), which
//!   bounds recovery time; cleaning needs none. Both wait until that log is also
//!   `CHECKPOINT_SPACING_RATIO` times the last checkpoint's size, since every checkpoint
//!   writes the whole map (`checkpoint_due`). A `CheckpointWriter` takes each one a bounded
//!   piece per poll and writes it on a channel of its own (`checkpoint_writer.rs`): the
//!   reactor goes on serving I/O, and the cleaner cleaning, meanwhile.
//!
//! Bounds: one victim and one record (at most `MAX_DATA_BLOCKS` blocks) in flight at a time;
//! checkpoints are written by a `CheckpointWriter` on a channel of its own, beside the
//! cleaning (`checkpoint_writer.rs` bounds its writes).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::checkpoint_writer::{CheckpointWriter, WriterPoll};
use super::extent_table::{ExtentTable, Mapping};
use super::pool::{LsvPool, CLEANER_RESERVE_SEGMENTS};
use super::record::{
    header_blocks_for, Entry, EntryOp, RecordHeader, BLOCK_BYTES, MAX_DATA_BLOCKS,
};
use super::segment_summary::{SummaryBuilder, SummaryView};
use super::usage::{CleanerPolicy, SegmentState, UsageDeltas};
use super::victim_read::{PartialRead, Phase};
use crate::bdev::{ChannelContext, IoChannel, IoCompletion, IoRequest, IoStatus, IoType, IoVec};
use crate::mem::DmaRegion;

/// A periodic checkpoint is taken this often while the pool is being written.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(30);
/// Log bytes since the last checkpoint that trigger one (a quarter of the pool, at most this).
pub const CHECKPOINT_LOG_BYTES: u64 = 512 << 20;
/// A checkpoint taken for time or log volume also waits for this many times the last
/// checkpoint's size in log bytes written since it began. Every checkpoint writes the whole
/// map (about 7 bytes a randomly written block): a fully mapped 1 TiB pool's is about
/// 1.9 GB, which every 512 MiB of log, or every 30 s under a light load, would be several
/// times the log itself. Spaced so, checkpoints begun for time or log volume write at most an
/// eighth of the log's bytes (and recovery replays up to eight checkpoints' worth of log,
/// about as long as reading the checkpoint takes eight times). Journal pressure and explicit
/// requests do not wait, so the journal's ring (half its slots, a segment opened each) caps
/// the spacing for the biggest maps; nor do clean shutdown and a grow, which write their own.
pub const CHECKPOINT_SPACING_RATIO: u64 = 8;

/// What the cleaner knows of the pool since its last checkpoint, for `checkpoint_due`.
#[derive(Debug, Clone, Copy)]
pub struct SinceCheckpoint {
    /// A checkpoint was asked for (tests, the simulator).
    pub requested: bool,
    /// More than half the journal's slots wait for a checkpoint (`SegmentJournal::pressure`).
    pub journal_pressure: bool,
    /// Records were numbered since the last checkpoint began.
    pub written: bool,
    pub elapsed: Duration,
    /// Log bytes (user and cleaner records) written since the last durable checkpoint began
    /// (a recovery's replayed log included, until a checkpoint covers it).
    pub log_bytes: u64,
    pub pool_bytes: u64,
    /// The last durable checkpoint's size on disk, header and body.
    pub last_checkpoint_bytes: u64,
}

/// Why a checkpoint is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointReason {
    Requested = 0,
    JournalPressure = 1,
    LogBytes = 2,
    Interval = 3,
}

impl CheckpointReason {
    pub const COUNT: usize = 4;
    pub const ALL: [CheckpointReason; Self::COUNT] = [
        CheckpointReason::Requested,
        CheckpointReason::JournalPressure,
        CheckpointReason::LogBytes,
        CheckpointReason::Interval,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointReason::Requested => "requested",
            CheckpointReason::JournalPressure => "journal_pressure",
            CheckpointReason::LogBytes => "log_bytes",
            CheckpointReason::Interval => "interval",
        }
    }
}

/// The log bytes after which a checkpoint is due for log volume: a quarter of the pool (at
/// most `CHECKPOINT_LOG_BYTES`), or `CHECKPOINT_SPACING_RATIO` times the last checkpoint's
/// size if that is more.
pub fn checkpoint_log_spacing_bytes(pool_bytes: u64, last_checkpoint_bytes: u64) -> u64 {
    (pool_bytes / 4)
        .min(CHECKPOINT_LOG_BYTES)
        .max(checkpoint_min_spacing_bytes(last_checkpoint_bytes))
}

/// The log bytes every checkpoint for time or log volume waits for:
/// `CHECKPOINT_SPACING_RATIO` times the last checkpoint's size.
pub fn checkpoint_min_spacing_bytes(last_checkpoint_bytes: u64) -> u64 {
    last_checkpoint_bytes.saturating_mul(CHECKPOINT_SPACING_RATIO)
}

/// Whether a checkpoint is due, and why.
pub fn checkpoint_due(s: &SinceCheckpoint) -> Option<CheckpointReason> {
    let spaced = s.log_bytes >= checkpoint_min_spacing_bytes(s.last_checkpoint_bytes);
    if s.requested {
        Some(CheckpointReason::Requested)
    } else if s.journal_pressure {
        Some(CheckpointReason::JournalPressure)
    } else if s.log_bytes >= checkpoint_log_spacing_bytes(s.pool_bytes, s.last_checkpoint_bytes) {
        Some(CheckpointReason::LogBytes)
    } else if s.written && s.elapsed >= CHECKPOINT_INTERVAL && spaced {
        Some(CheckpointReason::Interval)
    } else {
        None
    }
}

/// How often an idle cleaner looks at the pool.
const CHECK_EVERY: Duration = Duration::from_millis(1);
const QUEUE_DEPTH: u32 = 16;
/// Entries one relocation record carries at most (its header stays under 10 blocks).
const MAX_MOVE_ENTRIES: usize = 1024;
/// The flushes before victims are freed and after their free marks.
const TAG_FLUSH: u64 = 1;
/// The writes that zero a cleaned victim's first block.
const TAG_FREE_MARK: u64 = 2;
/// The write of a segment-journal entry.
const TAG_JOURNAL: u64 = 3;
/// The read of a victim's summary, and the write of a relocation segment's: never a record's
/// (a relocation record's tag is its sequence number, always below `MAX_SEQ`).
const TAG_SUMMARY: u64 = u64::MAX - 1;
const _: () = assert!(TAG_SUMMARY >= super::record::MAX_SEQ);
/// Cleaned victims freed by one flush at most (`LsvPool::clean_target` leaves room for one).
pub(super) const FLUSH_BATCH: usize = 8;

/// What `poll` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanerPoll {
    Idle,
    Busy,
    /// I/O in flight.
    Waiting,
    /// The pool is closing and nothing is in flight: drop the cleaner.
    Done,
}

struct LiveBlock {
    volume: u32,
    lba: u64,
    pba: u64,
    seq: u64,
    /// Block index inside the victim segment.
    offset: usize,
    cold: bool,
}

struct Stream {
    head: usize,
    /// Open segment, next free block in it, and its epoch.
    open: Option<(u64, u64, u64)>,
    /// The open segment's summary (pools of format version 4).
    summary: Option<SummaryBuilder>,
    /// The summary of the segment it sealed last, until it is written with the stream's
    /// next record: (segment, buffer, bytes).
    summary_to_write: Option<(u64, *mut u8, usize)>,
}

enum State {
    Idle,
    Reading {
        seg: u64,
    },
    /// Reading the victim's summary (`segment_summary`), to read only its live writes.
    ReadingSummary {
        seg: u64,
    },
    /// Reading the victim in parts (`victim_read`): its headers, then its live writes.
    ReadingParts {
        seg: u64,
    },
    Moving {
        seg: u64,
    },
    /// A relocation record in flight, and with it the journal entry of the segment it
    /// opened: both must complete before the moves count.
    Writing {
        seg: u64,
        stream: usize,
        to_seg: u64,
        first_pba: u64,
        count: usize,
        unmaps: usize,
        blocks: u64,
        outstanding: u32,
        failed: bool,
    },
    /// The flush is done; the first blocks of cleaned victims are being zeroed
    /// (`mark_free`); a second flush (`MarkFlush`) makes that durable, and they are free.
    Marking {
        /// How many of `awaiting_flush` (its first ones) are being marked.
        count: usize,
        outstanding: u32,
        failed: bool,
    },
    /// The flush that makes the free marks of the first `count` waiting victims durable.
    MarkFlush {
        count: usize,
    },
    /// Everything live was moved; a flush of the base bdev makes durable the relocation
    /// records and the user records that superseded the victim's dead blocks, before the
    /// victim is marked free (`Marking`) and reused.
    Freeing {
        /// How many of `awaiting_flush` (its first ones) this flush covers.
        count: usize,
    },
}

pub struct Cleaner {
    pool: Arc<LsvPool>,
    ch: IoChannel,
    seg_buf: DmaRegion,
    /// A victim's summary, read from disk (pools of format version 4).
    summary_buf: Option<DmaRegion>,
    staging: DmaRegion,
    /// One zero block: what `mark_free` writes over a cleaned victim's first block.
    free_mark: DmaRegion,
    /// The block of a journal entry being written, and the slot claimed for the segment a
    /// stream just opened (until its entry is submitted with its first record).
    journal_block: DmaRegion,
    journal_claim: Option<u64>,
    /// Takes and writes checkpoints, beside the cleaning.
    checkpoint: CheckpointWriter,
    /// The last relocation record (or unmaps record) found no free journal slot: no victim
    /// is read again while a checkpoint, which frees slots, is being written. (No free
    /// segment is not a reason: the cleaner's own freeing makes some, checkpoint or not.)
    /// Cleared by the next reserve, when a checkpoint fails, and when one becomes durable
    /// and a slot is free.
    journal_full: bool,
    streams: [Stream; 2],
    state: State,
    live: Vec<LiveBlock>,
    cursor: usize,
    /// The victim's unmaps that a checkpoint does not yet cover, re-logged before it is freed.
    unmaps: Vec<Entry>,
    unmap_cursor: usize,
    tables: Vec<(u32, Arc<ExtentTable>)>,
    deltas: UsageDeltas,
    done: Vec<IoCompletion>,
    next_check: Instant,
    next_sample: Instant,
    last_checkpoint: Instant,
    seq_at_checkpoint: u64,
    /// Running average age (in sequence numbers) of moved blocks: the lifespan classes' cut.
    average_age: f64,
    check_every: Duration,
    /// The newest relocation record known durable (flushed before its victim was freed).
    last_moved_seq: u64,
    /// The record in flight.
    moving_seq: u64,
    /// Cleaned victims waiting for a flush before they are free, and the newest relocation
    /// record the flush in flight covers.
    /// Each with the room cleaning it gains (its blocks less what moving them wrote): the
    /// credit throttled user writes get when it is freed.
    awaiting_flush: Vec<(u64, u64)>,
    flushed_moving_seq: u64,
    /// Blocks written so far moving the current victim.
    victim_written: u64,
    /// The victim's part reads (taken out while its plan consults the extent tables).
    partial: Option<PartialRead>,
    /// Whether the current victim's live blocks were found by part reads (if any is left
    /// behind after the moves, it is read whole and collected again).
    victim_read_in_parts: bool,
    /// Tests: the next victim, cleaned whatever the free segments.
    #[cfg(test)]
    forced_victim: Option<u64>,
}

impl Cleaner {
    /// A cleaner for `pool`; built on the thread that will poll it.
    pub fn new(pool: Arc<LsvPool>) -> Result<Cleaner, String> {
        let ch = pool
            .base
            .open_channel(&ChannelContext {
                queue_depth: QUEUE_DEPTH,
                buffers: None,
            })
            .map_err(|e| e.to_string())?;
        let seg_buf =
            DmaRegion::new_lazy(pool.sb.segment_bytes as usize).map_err(|e| e.to_string())?;
        let staging = DmaRegion::new_lazy(
            (header_blocks_for(MAX_MOVE_ENTRIES) as usize + MAX_DATA_BLOCKS as usize) * BLOCK_BYTES,
        )
        .map_err(|e| e.to_string())?;
        // Anonymous memory: zero, and never written.
        let free_mark = DmaRegion::new(BLOCK_BYTES, false).map_err(|e| e.to_string())?;
        let checkpoint = CheckpointWriter::new(pool.clone())?;
        let journal_block = DmaRegion::new(BLOCK_BYTES, false).map_err(|e| e.to_string())?;
        let summary_bytes = pool
            .summary_on_disk(0)
            .map(|(_, blocks)| blocks as usize * BLOCK_BYTES);
        let summary_buf = summary_bytes
            .map(|b| DmaRegion::new(b, false))
            .transpose()
            .map_err(|e| e.to_string())?;
        let mut summaries = [None, None];
        if summary_bytes.is_some() {
            for s in &mut summaries {
                *s = Some(
                    SummaryBuilder::new(pool.sb.segment_bytes, pool.sb.uuid)
                        .map_err(|e| e.to_string())?,
                );
            }
        }
        // One cleaner per pool: two would free (and mark) each other's segments.
        if pool.cleaner_attached.swap(true, Ordering::AcqRel) {
            return Err(format!("pool {} already has a cleaner", pool.name));
        }
        let mut heads = [0usize; 2];
        for i in 0..heads.len() {
            let Some(h) = pool.claim_head() else {
                for &h in &heads[..i] {
                    pool.release_head(h);
                }
                pool.cleaner_attached.store(false, Ordering::Release);
                return Err("no free log head for the cleaner".into());
            };
            heads[i] = h;
        }
        let seg_blocks = pool.seg_blocks;
        let now = Instant::now();
        // Segments recovery found Cleaned: their moves are durable, but a checkpoint taken
        // before their free marks saw them, so their first blocks may still begin their old
        // chains. They are freed as every cleaned victim is: marked, flushed, then free.
        let awaiting_flush = (0..pool.sb.segment_count)
            .filter(|&s| pool.usage.state(s) == SegmentState::Cleaned)
            .map(|s| (s, seg_blocks as u64))
            .collect();
        Ok(Cleaner {
            seq_at_checkpoint: pool.next_seq_now(),
            pool,
            ch,
            seg_buf,
            summary_buf,
            staging,
            free_mark,
            journal_block,
            journal_claim: None,
            checkpoint,
            journal_full: false,
            streams: {
                let [a, b] = summaries;
                let stream = |head, summary| Stream {
                    head,
                    open: None,
                    summary,
                    summary_to_write: None,
                };
                [stream(heads[0], a), stream(heads[1], b)]
            },
            state: State::Idle,
            live: Vec::with_capacity(seg_blocks),
            cursor: 0,
            unmaps: Vec::new(),
            unmap_cursor: 0,
            tables: Vec::new(),
            deltas: UsageDeltas::default(),
            done: Vec::with_capacity(QUEUE_DEPTH as usize),
            next_check: now,
            next_sample: now,
            last_checkpoint: now,
            average_age: 0.0,
            check_every: CHECK_EVERY,
            last_moved_seq: 0,
            moving_seq: 0,
            awaiting_flush,
            flushed_moving_seq: 0,
            victim_written: 0,
            partial: Some(PartialRead::new(seg_blocks)),
            victim_read_in_parts: false,
            #[cfg(test)]
            forced_victim: None,
        })
    }

    /// Looks at the pool on every poll instead of once a millisecond (the simulator's
    /// deterministic mode: nothing then depends on the wall clock but periodic checkpoints).
    pub fn check_every_poll(&mut self) {
        self.check_every = Duration::ZERO;
    }

    /// After the flush that made the moves out of the first `count` cleaned victims durable:
    /// zeroes each one's first block (made durable by the next flush, before the victims are
    /// free), so that a crash that loses the first record
    /// of the segment's next use leaves no chain of its old use to walk (the old records,
    /// already moved, could otherwise look damaged under the new use's later records). Not
    /// before that flush: a crash could then keep the mark and lose the moves, leaving a
    /// checkpoint's blocks in a segment whose chain is gone (the cleaner could never collect
    /// them again). None if nothing could be submitted (the flush is redone next pass).
    fn mark_free(&mut self, count: usize) -> Option<State> {
        debug_assert!(count <= self.awaiting_flush.len() && count <= QUEUE_DEPTH as usize);
        let mut submitted = 0;
        for i in 0..count {
            let seg = self.awaiting_flush[i].0;
            // SAFETY: the free-mark block is ours, zero, and never written to.
            let iov = unsafe { IoVec::from_raw(self.free_mark.as_ptr(), BLOCK_BYTES) };
            let r = self.ch.submit(
                &IoRequest {
                    io_type: IoType::Write,
                    offset_blocks: self.pool.segment_first_block(seg),
                    num_blocks: 1,
                    iovs: &[iov],
                    fua: false,
                    tag: TAG_FREE_MARK,
                },
                0,
            );
            if r.is_err() {
                break;
            }
            submitted += 1;
        }
        (submitted > 0).then_some(State::Marking {
            count: submitted,
            outstanding: submitted as u32,
            failed: false,
        })
    }

    /// Zeroes the first block of every cleaned victim waiting, with FUA (`mark_free`), and
    /// waits for the writes: for `drop`, after its last flush. False if a write failed (they
    /// then stay Cleaned).
    fn mark_all_waiting(&mut self) -> bool {
        let mut out = Vec::with_capacity(QUEUE_DEPTH as usize);
        let mut at = 0;
        while at < self.awaiting_flush.len() {
            let n = (self.awaiting_flush.len() - at).min(QUEUE_DEPTH as usize);
            for &(seg, _) in &self.awaiting_flush[at..at + n] {
                // SAFETY: the free-mark block is ours, zero, and never written to.
                let iov = unsafe { IoVec::from_raw(self.free_mark.as_ptr(), BLOCK_BYTES) };
                let req = IoRequest {
                    io_type: IoType::Write,
                    offset_blocks: self.pool.segment_first_block(seg),
                    num_blocks: 1,
                    iovs: &[iov],
                    fua: true,
                    tag: TAG_FREE_MARK,
                };
                if self.ch.submit(&req, 0).is_err() {
                    break;
                }
            }
            out.clear();
            self.ch.drain(&mut out);
            if out.len() != n || out.iter().any(|c| c.status != IoStatus::Success) {
                return false;
            }
            at += n;
        }
        true
    }

    /// Tests: cleans sealed segment `seg` next, however many segments are free.
    #[cfg(test)]
    pub fn force_victim(&mut self, seg: u64) {
        self.forced_victim = Some(seg);
    }

    /// Tests: whether a checkpoint is being taken or written.
    #[cfg(test)]
    pub fn checkpoint_busy(&self) -> bool {
        self.checkpoint.busy()
    }

    /// Tests: whether the victim's live blocks are collected and the next relocation record
    /// is not yet numbered.
    #[cfg(test)]
    pub fn moving(&self) -> bool {
        matches!(self.state, State::Moving { .. })
    }

    fn seg_blocks(&self) -> u64 {
        self.pool.seg_blocks as u64
    }

    /// One step of work. Call it from a poller (or a test's loop).
    pub fn poll(&mut self) -> CleanerPoll {
        self.done.clear();
        let mut done = std::mem::take(&mut self.done);
        if self.ch.in_flight() > 0 {
            self.ch.poll(0, &mut done);
        }
        let r = self.step(&done);
        self.done = done;
        // A closing pool's checkpoint still walking is dropped (a clean shutdown writes one
        // of its own; a pool removed without one replays its log when opened again); one
        // being written keeps a closing cleaner until it is done.
        if self.pool.closing.load(Ordering::Acquire) {
            self.checkpoint.cancel_walk();
        }
        match self.checkpoint.poll() {
            WriterPoll::Idle => r,
            WriterPoll::Waiting => match r {
                CleanerPoll::Idle | CleanerPoll::Done => CleanerPoll::Waiting,
                r => r,
            },
            WriterPoll::Busy => CleanerPoll::Busy,
            WriterPoll::Failed => {
                self.journal_full = false;
                CleanerPoll::Busy
            }
            WriterPoll::Durable(h) => {
                self.last_checkpoint = Instant::now();
                self.seq_at_checkpoint = h.next_seq;
                // A slot is free once both checkpoints cover its entry, which may take the
                // next one too: until then, victims would be read for moves that find no
                // slot (the journal's pressure begins that next one at once).
                self.journal_full = !self.pool.journal_slot_free();
                CleanerPoll::Busy
            }
        }
    }

    fn step(&mut self, done: &[IoCompletion]) -> CleanerPoll {
        // A relocation record (and its segment's journal entry) stays in Writing until both
        // are done.
        if let State::Writing {
            outstanding,
            failed,
            stream,
            ..
        } = &mut self.state
        {
            // A segment summary written with the record: its buffer is free again, and its
            // failure fails nothing (it is a hint).
            for c in done.iter().filter(|c| c.tag == TAG_SUMMARY) {
                if c.status != IoStatus::Success {
                    tracing::debug!(pool = %self.pool.name, "cleaner: segment summary write failed: {:?}", c.status);
                }
                if let Some(summary) = &mut self.streams[*stream].summary {
                    summary.written();
                }
            }
            count_done(done, outstanding, failed);
            if *outstanding > 0 {
                return if done.is_empty() {
                    CleanerPoll::Waiting
                } else {
                    CleanerPoll::Busy
                };
            }
        }
        let state = std::mem::replace(&mut self.state, State::Idle);
        let (next, result) = match state {
            State::Idle => return self.idle(),
            State::Reading { seg } => match done.first() {
                None => (State::Reading { seg }, CleanerPoll::Waiting),
                Some(c) if c.status != IoStatus::Success => {
                    tracing::error!(pool = %self.pool.name, seg, "cleaner: reading the victim failed: {:?}", c.status);
                    self.abandon(seg);
                    (State::Idle, CleanerPoll::Busy)
                }
                Some(_) => {
                    self.collect_live(seg);
                    (State::Moving { seg }, CleanerPoll::Busy)
                }
            },
            State::ReadingSummary { seg } => match done.first() {
                None => (State::ReadingSummary { seg }, CleanerPoll::Waiting),
                Some(c) => {
                    let read = c.status == IoStatus::Success;
                    self.plan_parts(seg, read)
                }
            },
            State::ReadingParts { seg } => self.read_parts(seg, done),
            State::Moving { seg } => self.move_batch(seg),
            State::Writing {
                seg,
                stream,
                to_seg,
                first_pba,
                count,
                unmaps,
                blocks,
                outstanding,
                failed,
            } => {
                debug_assert_eq!(outstanding, 0, "counted before the match");
                self.unmap_cursor += unmaps;
                self.moved(seg, stream, to_seg, first_pba, count, blocks, !failed)
            }
            State::Marking {
                count,
                mut outstanding,
                mut failed,
            } => {
                count_done(done, &mut outstanding, &mut failed);
                if outstanding > 0 {
                    (
                        State::Marking {
                            count,
                            outstanding,
                            failed,
                        },
                        CleanerPoll::Waiting,
                    )
                } else if failed {
                    // The cleaned segments stay Cleaned; the next pass flushes and marks them
                    // again.
                    tracing::error!(pool = %self.pool.name, "cleaner: marking cleaned segments free failed");
                    (State::Idle, CleanerPoll::Busy)
                } else if self.ch.submit(&IoRequest::flush(TAG_FLUSH), 0).is_ok() {
                    (State::MarkFlush { count }, CleanerPoll::Busy)
                } else {
                    (State::Idle, CleanerPoll::Busy)
                }
            }
            State::MarkFlush { count } => match done.first() {
                None => (State::MarkFlush { count }, CleanerPoll::Waiting),
                Some(c) if c.status != IoStatus::Success => {
                    tracing::error!(pool = %self.pool.name, "cleaner: flush of free marks failed");
                    (State::Idle, CleanerPoll::Busy)
                }
                Some(_) => {
                    for (seg, gain) in self.awaiting_flush.drain(..count) {
                        // Its live blocks are in durable relocation records, the writes that
                        // superseded its dead blocks are durable, and so is its free mark:
                        // reusable.
                        self.pool
                            .usage
                            .transition(seg, SegmentState::Cleaned, SegmentState::Free);
                        self.pool.grant_credit(gain);
                    }
                    (State::Idle, CleanerPoll::Busy)
                }
            },
            State::Freeing { count } => match done.first() {
                None => (State::Freeing { count }, CleanerPoll::Waiting),
                Some(c) if c.status != IoStatus::Success => {
                    // The cleaned segments stay Cleaned; the next flush tries again.
                    tracing::error!(pool = %self.pool.name, "cleaner: flush before reuse failed");
                    (State::Idle, CleanerPoll::Busy)
                }
                Some(_) => {
                    self.last_moved_seq = self.flushed_moving_seq;
                    match self.mark_free(count) {
                        Some(state) => (state, CleanerPoll::Busy),
                        None => (State::Idle, CleanerPoll::Busy),
                    }
                }
            },
        };
        self.state = next;
        result
    }

    fn idle(&mut self) -> CleanerPoll {
        if self.pool.closing.load(Ordering::Acquire) {
            return CleanerPoll::Done;
        }
        let now = Instant::now();
        if now < self.next_check {
            return CleanerPoll::Idle;
        }
        self.next_check = now + self.check_every;
        // Deleted volumes' blocks come off the live counts here, between victims.
        if let Ok(mut dead) = self.pool.dead_blocks.try_lock() {
            if !dead.is_empty() && self.pool.dead_blocks_ready() {
                self.pool.apply_dead_blocks(&mut dead);
            }
        }
        if now >= self.next_sample {
            self.next_sample = now + Duration::from_secs(1);
            self.pool.sample_write_amplification();
        }
        let free = self.pool.usage.free_count() as u64;
        let cleaned = self.pool.usage.count_in(SegmentState::Cleaned) as u64;
        let log_since = self.pool.log_blocks_since_checkpoint() * BLOCK_BYTES as u64;
        let due = checkpoint_due(&SinceCheckpoint {
            requested: self.pool.checkpoint_wanted.load(Ordering::Acquire),
            journal_pressure: self.pool.journal_pressure(),
            written: self.pool.next_seq_now() > self.seq_at_checkpoint,
            elapsed: now - self.last_checkpoint,
            log_bytes: log_since,
            pool_bytes: self.pool.sb.pool_bytes,
            last_checkpoint_bytes: self.pool.last_checkpoint_bytes.load(Ordering::Relaxed),
        });
        if let Some(reason) = due {
            if !self.checkpoint.busy() && self.checkpoint.start() {
                self.pool.checkpoints_begun_for[reason as usize].fetch_add(1, Ordering::Relaxed);
                self.pool.checkpoint_wanted.store(false, Ordering::Release);
                return CleanerPoll::Busy;
            }
        }
        // Free the cleaned victims with one flush: when a batch is ready, when free segments
        // run short, or when there is no more cleaning to do now.
        let waiting = self.awaiting_flush.len();
        let short = free + waiting as u64 >= self.pool.clean_target() || free < 2;
        if waiting > 0
            && (waiting >= FLUSH_BATCH || short || free <= self.pool.throttle_start())
            && self.ch.submit(&IoRequest::flush(TAG_FLUSH), 0).is_ok()
        {
            self.flushed_moving_seq = self.moving_seq;
            let count = waiting.min(QUEUE_DEPTH as usize);
            self.state = State::Freeing { count };
            return CleanerPoll::Busy;
        }
        if self.journal_full && self.checkpoint.busy() {
            return CleanerPoll::Idle;
        }
        // One free segment is enough to move a victim's live blocks (less than a segment's
        // worth, by `victim`'s minimum gain); with none, only victims with nothing live.
        let stuck = free == 0 && self.victim().is_none_or(|v| self.pool.usage.live(v) > 0);
        #[cfg(test)]
        let forced = self.forced_victim.take();
        // Like `pick_victim`'s: a record in flight into the victim could map a block after
        // its reads, and that block would be moved from a buffer that never held it.
        #[cfg(test)]
        debug_assert!(forced.is_none_or(|v| self.pool.usage.records_in_flight(v) == 0));
        #[cfg(not(test))]
        let forced: Option<u64> = None;
        if forced.is_none() && (free + cleaned >= self.pool.clean_target() || stuck) {
            if free <= CLEANER_RESERVE_SEGMENTS && cleaned == 0 && self.victim().is_none() {
                self.pool.full.store(true, Ordering::Release);
            }
            self.pool.nothing_to_clean.store(stuck, Ordering::Release);
            return CleanerPoll::Idle;
        }
        let Some(seg) = forced.or_else(|| self.victim()) else {
            if free <= CLEANER_RESERVE_SEGMENTS && cleaned == 0 {
                self.pool.full.store(true, Ordering::Release);
            }
            // Throttled writes must not wait for credit that cleaning cannot earn.
            self.pool.nothing_to_clean.store(true, Ordering::Release);
            return CleanerPoll::Idle;
        };
        self.pool.full.store(false, Ordering::Release);
        self.pool.nothing_to_clean.store(false, Ordering::Release);
        if !self
            .pool
            .usage
            .transition(seg, SegmentState::Sealed, SegmentState::Cleaning)
        {
            return CleanerPoll::Busy;
        }
        self.victim_written = 0;
        if self.clean_unread(seg) {
            // More dead victims join the same flush, up to a batch.
            while self.awaiting_flush.len() < FLUSH_BATCH {
                let Some(next) = self.victim() else { break };
                if !self.unread_cleanable(next)
                    || !self.pool.usage.transition(
                        next,
                        SegmentState::Sealed,
                        SegmentState::Cleaning,
                    )
                {
                    break;
                }
                if !self.clean_unread(next) {
                    self.pool
                        .usage
                        .transition(next, SegmentState::Cleaning, SegmentState::Sealed);
                    break;
                }
            }
            return CleanerPoll::Busy;
        }
        // Mostly dead (as victims are): read its headers, then only its live writes.
        // (A segment that took a failed record is read whole: a failed record's header may be
        // on the media without its data, and only a whole read checks every record's data
        // before trusting the records behind it.)
        if self.pool.usage.live(seg) as u64 * 2 <= self.seg_blocks()
            && !self.pool.usage.had_failed_record(seg)
        {
            // Best: its summary on disk says which blocks are live, and only those are read.
            // Each read is a request the device serves among the user's writes: a victim's
            // ~120 header reads cost one reactor's random writes about a fifth.
            if let Some(state) = self.read_summary(seg) {
                self.state = state;
                return CleanerPoll::Busy;
            }
            let (state, poll) = self.plan_parts(seg, false);
            self.state = state;
            return poll;
        }
        let (state, poll) = self.read_whole(seg);
        self.state = state;
        poll
    }

    /// Submits the read of victim `seg`'s summary: the state that waits for it, or None if
    /// the pool keeps no summaries or the read could not be submitted.
    fn read_summary(&mut self, seg: u64) -> Option<State> {
        let (block, blocks) = self.pool.summary_on_disk(seg)?;
        let buf = self.summary_buf.as_ref()?;
        // SAFETY: our summary buffer, untouched until the read completes.
        let iov = unsafe { IoVec::from_raw(buf.as_ptr(), buf.len()) };
        let r = self.ch.submit(
            &IoRequest {
                io_type: IoType::Read,
                offset_blocks: block,
                num_blocks: blocks,
                iovs: &[iov],
                fua: false,
                tag: TAG_SUMMARY,
            },
            0,
        );
        if let Err(e) = r {
            tracing::debug!(pool = %self.pool.name, seg, "cleaner: summary read submit failed: {e}");
            return None;
        }
        self.pool
            .cleaner_blocks_read
            .fetch_add(blocks, Ordering::Relaxed);
        Some(State::ReadingSummary { seg })
    }

    /// Victim `seg`'s summary, as read into the summary buffer `buf`, if it checks out: the
    /// summary of the use the segment holds now.
    fn summary_in<'a>(&self, buf: &'a DmaRegion, seg: u64) -> Option<SummaryView<'a>> {
        // SAFETY: the read into the buffer has completed, and nothing writes it until the
        // next victim's summary read.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr(), buf.len()) };
        SummaryView::check(
            bytes,
            self.pool.sb.uuid,
            seg,
            self.pool.usage.last_seq(seg),
            self.pool.seg_blocks,
        )
    }

    /// Plans victim `seg`'s part reads: through its summary, if it was read (`summary_read`)
    /// and checks out; else through its record headers; with neither, it is read whole.
    fn plan_parts(&mut self, seg: u64, summary_read: bool) -> (State, CleanerPoll) {
        let mut p = self
            .partial
            .take()
            .expect("the part reader is home when idle");
        // Out while the plan consults the extent tables (`table` borrows the cleaner).
        let buf = self.summary_buf.take();
        self.tables.clear();
        let pool = self.pool.clone();
        let planned_from_summary = summary_read
            && buf
                .as_ref()
                .and_then(|b| self.summary_in(b, seg))
                .is_some_and(|view| {
                    p.plan_from_summary(&pool, seg, &view, |volume, lba, pba| {
                        self.table(volume).is_some_and(|t| {
                            lba < t.num_blocks() && t.lookup(lba) == Mapping::At(pba)
                        })
                    })
                });
        self.summary_buf = buf;
        let planned = planned_from_summary || p.plan_headers(&pool, seg);
        self.partial = Some(p);
        if planned {
            return self.read_parts(seg, &[]);
        }
        self.read_whole(seg)
    }

    /// Reads victim `seg` whole into the segment buffer.
    fn read_whole(&mut self, seg: u64) -> (State, CleanerPoll) {
        self.victim_read_in_parts = false;
        // SAFETY: our segment buffer, untouched until the read completes.
        let iov = unsafe { IoVec::from_raw(self.seg_buf.as_ptr(), self.seg_buf.len()) };
        let r = self.ch.submit(
            &IoRequest {
                io_type: IoType::Read,
                offset_blocks: self.pool.segment_first_block(seg),
                num_blocks: self.seg_blocks(),
                iovs: &[iov],
                fua: false,
                tag: seg,
            },
            0,
        );
        if let Err(e) = r {
            tracing::error!(pool = %self.pool.name, "cleaner: read submit failed: {e}");
            self.abandon(seg);
            return (State::Idle, CleanerPoll::Idle);
        }
        self.pool
            .cleaner_blocks_read
            .fetch_add(self.seg_blocks(), Ordering::Relaxed);
        (State::Reading { seg }, CleanerPoll::Busy)
    }

    /// Drives the part reads of victim `seg` (`done`: completions of this pass): submits
    /// what the channel has room for; when the headers are in, plans the live writes' reads;
    /// when those are in, collects the live blocks. Anything amiss: the victim is read whole.
    fn read_parts(&mut self, seg: u64, done: &[IoCompletion]) -> (State, CleanerPoll) {
        let mut p = self.partial.take().expect("the part reader is home");
        p.complete(done);
        let first = self.pool.segment_first_block(seg);
        let submitted = p.submit(&mut self.ch, &self.seg_buf, first, QUEUE_DEPTH);
        self.pool
            .cleaner_blocks_read
            .fetch_add(submitted, Ordering::Relaxed);
        if !p.finished() {
            self.partial = Some(p);
            return (State::ReadingParts { seg }, CleanerPoll::Waiting);
        }
        // SAFETY: every read into the buffer has completed; it is ours.
        let bytes =
            unsafe { std::slice::from_raw_parts(self.seg_buf.as_ptr(), self.seg_buf.len()) };
        let headers_in = p.phase == Phase::Headers;
        let ok = !p.failed()
            && match p.phase {
                Phase::Headers => {
                    self.tables.clear();
                    let pool = self.pool.clone();
                    p.plan_live(&pool, seg, bytes, |volume, lba, pba| {
                        self.table(volume).is_some_and(|t| {
                            lba < t.num_blocks() && t.lookup(lba) == Mapping::At(pba)
                        })
                    })
                }
                Phase::Live => p.verify(&self.pool, seg, bytes),
            };
        if !ok {
            self.partial = Some(p);
            tracing::debug!(pool = %self.pool.name, seg, "cleaner: part reads did not do; reading the victim whole");
            return self.read_whole(seg);
        }
        if headers_in {
            // The live writes' reads are planned: the next pass submits them.
            self.partial = Some(p);
            return (State::ReadingParts { seg }, CleanerPoll::Busy);
        }
        if p.from_summary {
            self.partial = Some(p);
            if !self.collect_summarized(seg) {
                // The summary no longer checks out (nothing writes the buffer between the
                // plan and here; this is belt and braces).
                return self.read_whole(seg);
            }
            self.pool
                .segments_read_from_summary
                .fetch_add(1, Ordering::Relaxed);
        } else {
            let chain = std::mem::take(&mut p.chain);
            self.collect_from(seg, &chain);
            p.chain = chain;
            self.partial = Some(p);
        }
        self.victim_read_in_parts = true;
        self.pool
            .segments_read_in_parts
            .fetch_add(1, Ordering::Relaxed);
        (State::Moving { seg }, CleanerPoll::Busy)
    }

    fn victim(&self) -> Option<u64> {
        // Cleaning must free more than the headers it writes.
        let min_gain = (self.seg_blocks() / 32).max(2) as u32;
        let now_seq = self.pool.complete_seq_now() + 1;
        self.pool
            .usage
            .pick_victim(self.pool.usage.policy(), now_seq, min_gain)
    }

    /// Whether victim `seg` can be cleaned without reading it: nothing in it is live (with no
    /// record in flight into it, its live count is exact: writers apply a record's usage
    /// changes before it stops counting as in flight), and every record in it is covered by
    /// both checkpoints, so none of its unmaps needs logging again.
    fn unread_cleanable(&self, seg: u64) -> bool {
        self.pool.usage.records_in_flight(seg) == 0
            && self.pool.usage.live(seg) == 0
            && self.pool.usage.last_seq(seg) <= self.pool.reusable_seq()
    }

    /// Cleans a Cleaning victim that `unread_cleanable` allows without reading its 8 MiB:
    /// it waits for the next flush like any cleaned segment. False (nothing done) otherwise.
    /// Sequential overwrites leave every victim dead, and reading each one had the cleaner,
    /// and so throttled user writes, at half the device's write bandwidth.
    fn clean_unread(&mut self, seg: u64) -> bool {
        debug_assert_eq!(self.pool.usage.state(seg), SegmentState::Cleaning);
        if !self.unread_cleanable(seg) {
            return false;
        }
        self.pool.usage.mark_cleaned(seg);
        self.pool.segments_cleaned.fetch_add(1, Ordering::Relaxed);
        self.pool
            .segments_cleaned_unread
            .fetch_add(1, Ordering::Relaxed);
        self.awaiting_flush.push((seg, self.seg_blocks()));
        true
    }

    /// Gives a victim back (it stays sealed, to be tried again).
    fn abandon(&mut self, seg: u64) {
        self.pool
            .usage
            .transition(seg, SegmentState::Cleaning, SegmentState::Sealed);
        self.live.clear();
        self.cursor = 0;
        self.unmaps.clear();
        self.unmap_cursor = 0;
    }

    fn table(&mut self, volume: u32) -> Option<Arc<ExtentTable>> {
        if let Some((_, t)) = self.tables.iter().find(|(id, _)| *id == volume) {
            return Some(t.clone());
        }
        let t = self.pool.table_of(volume)?;
        self.tables.push((volume, t.clone()));
        Some(t)
    }

    /// Walks the victim's records and keeps the blocks that are still live.
    fn collect_live(&mut self, seg: u64) {
        self.tables.clear();
        // SAFETY: the read completed; the buffer is ours.
        let bytes =
            unsafe { std::slice::from_raw_parts(self.seg_buf.as_ptr(), self.seg_buf.len()) };
        match self.pool.walk_chain(seg, bytes) {
            Ok(chain) => self.collect_from(seg, &chain),
            Err(e) => {
                self.collect_from(seg, &[]);
                tracing::error!(pool = %self.pool.name, seg, "cleaner: {e}; segment left as it is");
            }
        }
    }

    /// Keeps the blocks of the victim's records (`chain`, their data in the segment buffer)
    /// that the extent tables still point at, and its unmaps no checkpoint covers.
    fn collect_from(&mut self, seg: u64, chain: &[(u64, RecordHeader)]) {
        self.live.clear();
        self.cursor = 0;
        self.unmaps.clear();
        self.unmap_cursor = 0;
        let reusable = self.pool.reusable_seq();
        let seg_start = self.pool.segment_first_block(seg);
        let now_seq = self.pool.complete_seq_now() + 1;
        let lifespan = self.pool.usage.policy() == CleanerPolicy::Lifespan;
        for (first_data, h) in chain {
            let mut pba = *first_data;
            for e in &h.entries {
                if e.op != EntryOp::Write {
                    // An unmap newer than both checkpoints lives only in the log: re-log it,
                    // or reusing this segment could bring back the data it removed.
                    let seq = e.seq_in(h.seq);
                    if seq > reusable {
                        self.unmaps.push(Entry {
                            data_seq: seq,
                            data_crc: 0,
                            ..*e
                        });
                    }
                    continue;
                }
                for b in 0..e.num_blocks as u64 {
                    // A record that checks out may still name blocks past any volume's end.
                    if let Some(lba) = e.lba.checked_add(b) {
                        self.keep_if_live(
                            e.volume as u32,
                            lba,
                            pba + b,
                            seg_start,
                            now_seq,
                            lifespan,
                        );
                    }
                }
                pba += e.num_blocks as u64;
            }
        }
        // Each stream's blocks together, in their old order.
        self.live.sort_by_key(|b| b.cold);
    }

    /// Keeps the blocks of victim `seg` that the extent tables still point at, found through
    /// its summary (read for its plan, still in the summary buffer). False if the summary no
    /// longer checks out (nothing kept).
    fn collect_summarized(&mut self, seg: u64) -> bool {
        self.live.clear();
        self.cursor = 0;
        self.unmaps.clear();
        self.unmap_cursor = 0;
        let seg_start = self.pool.segment_first_block(seg);
        let now_seq = self.pool.complete_seq_now() + 1;
        let lifespan = self.pool.usage.policy() == CleanerPolicy::Lifespan;
        // Out while the blocks are kept (`keep_if_live` borrows the cleaner).
        let Some(buf) = self.summary_buf.take() else {
            return false;
        };
        let known = match self.summary_in(&buf, seg) {
            Some(view) => {
                view.for_each_owner(|at, volume, lba| {
                    self.keep_if_live(
                        volume,
                        lba,
                        seg_start + at as u64,
                        seg_start,
                        now_seq,
                        lifespan,
                    );
                });
                true
            }
            None => false,
        };
        self.summary_buf = Some(buf);
        if !known {
            self.live.clear();
            return false;
        }
        self.live.sort_by_key(|b| b.cold);
        true
    }

    /// Keeps victim block `pba` (of the segment at `seg_start`) if volume `volume`'s block
    /// `lba` still maps to it, marked cold by the lifespan policy's running average age.
    fn keep_if_live(
        &mut self,
        volume: u32,
        lba: u64,
        pba: u64,
        seg_start: u64,
        now_seq: u64,
        lifespan: bool,
    ) {
        let live = self
            .table(volume)
            .is_some_and(|t| lba < t.num_blocks() && t.lookup(lba) == Mapping::At(pba));
        if !live {
            return;
        }
        let seq = self.pool.seq_of(pba);
        let age = now_seq.saturating_sub(seq) as f64;
        let cold = lifespan && self.average_age > 0.0 && age > self.average_age;
        self.average_age = if self.average_age == 0.0 {
            age
        } else {
            self.average_age * 0.999 + age * 0.001
        };
        self.live.push(LiveBlock {
            volume,
            lba,
            pba,
            seq,
            offset: (pba - seg_start) as usize,
            cold,
        });
    }

    /// Room for a record of `blocks` in stream `s`'s segment: (segment, block in it).
    fn reserve(&mut self, s: usize, blocks: u64) -> Option<(u64, u64, u64)> {
        self.journal_full = false;
        self.reserve_in_stream(s, blocks)
    }

    fn reserve_in_stream(&mut self, s: usize, blocks: u64) -> Option<(u64, u64, u64)> {
        let seg_blocks = self.seg_blocks();
        if let Some((seg, next, epoch)) = self.streams[s].open {
            if next + blocks <= seg_blocks {
                self.streams[s].open = Some((seg, next + blocks, epoch));
                return Some((seg, next, epoch));
            }
            self.pool
                .usage
                .transition(seg, SegmentState::Open, SegmentState::Sealed);
            self.streams[s].open = None;
            let stream = &mut self.streams[s];
            debug_assert!(
                stream.summary_to_write.is_none(),
                "taken by the last record"
            );
            stream.summary_to_write = stream.summary.as_mut().and_then(|b| b.seal());
        }
        debug_assert!(self.journal_claim.is_none());
        // The summary sealed above goes with this record, or, if it finds no room, not at
        // all (never later, over a newer use's).
        let Some(seg) = self.pool.usage.open_free(0) else {
            self.drop_summary_to_write(s);
            return None;
        };
        // A full journal waits for a checkpoint, as a pool with no free segment does.
        let Ok(claim) = self.pool.claim_journal() else {
            self.pool
                .usage
                .transition(seg, SegmentState::Open, SegmentState::Free);
            self.journal_full = true;
            self.drop_summary_to_write(s);
            return None;
        };
        self.journal_claim = claim;
        self.streams[s].open = Some((seg, blocks, 0));
        if let Some(summary) = &mut self.streams[s].summary {
            summary.begin(seg);
        }
        Some((seg, 0, 0))
    }

    /// Stream `s`'s sealed summary, if one waits, is not written: its buffer is free again.
    fn drop_summary_to_write(&mut self, s: usize) {
        if self.streams[s].summary_to_write.take().is_some() {
            self.summary_not_written(s);
        }
    }

    /// A summary of stream `s`'s builder, handed out to be written, was not: its buffer is
    /// free again.
    fn summary_not_written(&mut self, s: usize) {
        if let Some(summary) = &mut self.streams[s].summary {
            summary.written();
        }
    }

    /// Builds and submits the next relocation record, or finishes the victim.
    fn move_batch(&mut self, seg: u64) -> (State, CleanerPoll) {
        if self.pool.closing.load(Ordering::Acquire) {
            self.abandon(seg);
            return (State::Idle, CleanerPoll::Busy);
        }
        if self.unmap_cursor < self.unmaps.len() {
            return self.move_unmaps(seg);
        }
        if self.cursor == self.live.len() {
            self.live.clear();
            self.cursor = 0;
            self.unmaps.clear();
            self.unmap_cursor = 0;
            if self.pool.usage.live(seg) != 0 && self.victim_read_in_parts {
                // Part reads missed something: look at the whole victim before giving up.
                tracing::debug!(pool = %self.pool.name, seg, live = self.pool.usage.live(seg), "cleaner: live blocks left after part reads; reading the victim whole");
                return self.read_whole(seg);
            }
            if self.pool.usage.live(seg) != 0 {
                tracing::warn!(pool = %self.pool.name, seg, live = self.pool.usage.live(seg), "cleaner: victim still has live blocks after the move; left sealed");
                self.abandon(seg);
                return (State::Idle, CleanerPoll::Busy);
            }
            #[cfg(test)]
            if super::pool::traced(0, u64::MAX) {
                eprintln!(
                    "trace: segment {seg} cleaned (last_seq {})",
                    self.pool.usage.last_seq(seg)
                );
            }
            // Cleaned: free after the next flush of the base bdev (one flush covers a batch).
            self.pool.usage.mark_cleaned(seg);
            self.pool.segments_cleaned.fetch_add(1, Ordering::Relaxed);
            let gain = self.seg_blocks().saturating_sub(self.victim_written);
            self.awaiting_flush.push((seg, gain));
            return (State::Idle, CleanerPoll::Busy);
        }
        let stream = self.live[self.cursor].cold as usize;
        // The batch: blocks of one stream, as many as a record and the segment hold.
        let seg_blocks = self.seg_blocks();
        let room_if_fresh = seg_blocks - header_blocks_for(MAX_MOVE_ENTRIES) as u64;
        let mut count = 0usize;
        while self.cursor + count < self.live.len()
            && count < MAX_MOVE_ENTRIES
            && (count as u64) < room_if_fresh.min(MAX_DATA_BLOCKS as u64)
            && self.live[self.cursor + count].cold as usize == stream
        {
            count += 1;
        }
        // Shrink to what fits the open segment: its tail is filled, never left empty. (An
        // unfilled tail is space nobody can use until the segment is cleaned again; leaving
        // a third of each relocation segment empty once made greedy clean the same blocks
        // round and round without gaining a segment.)
        if let Some((_, next, _)) = self.streams[stream].open {
            let left = seg_blocks - next;
            let fit = (0..=count)
                .rev()
                .find(|&n| n as u64 + header_blocks_for(n.max(1)) as u64 <= left)
                .unwrap_or(0);
            if fit > 0 {
                count = fit;
            }
        }
        let hblocks = header_blocks_for(count) as u64;
        let blocks = hblocks + count as u64;
        let Some((to_seg, at, epoch)) = self.reserve(stream, blocks) else {
            // No free segment even in the reserve (freeing cleaned victims makes some), or no
            // free journal slot (a checkpoint frees some; no victim is read meanwhile, see
            // `idle`).
            self.abandon(seg);
            return (State::Idle, CleanerPoll::Idle);
        };
        let mut h = self.new_record(stream, to_seg, at, epoch);
        // A block cut off by a shrink since the victim was read: this record carries its old
        // data with its old number, which only a grow fence keeps out of replay; the fence
        // must stand until checkpoints cover this record. (Checked after the numbering: a
        // shrink and grow after it take a fence above this record's number.)
        let cut = self.live[self.cursor..self.cursor + count].iter().any(|b| {
            self.tables
                .iter()
                .find(|(v, _)| *v == b.volume)
                .is_some_and(|(_, t)| b.lba >= t.num_blocks() || t.fenced(b.lba, b.seq))
        });
        if cut {
            self.pool.note_cut_relocation(h.seq);
        }
        // Copy the blocks into the staging buffer after the header, merging runs.
        let data_at = hblocks as usize * BLOCK_BYTES;
        let mut crc = 0u32;
        for i in 0..count {
            let b = &self.live[self.cursor + i];
            // SAFETY: distinct in-bounds blocks of our two buffers.
            let (src, dst) = unsafe {
                (
                    std::slice::from_raw_parts(
                        self.seg_buf.as_ptr().add(b.offset * BLOCK_BYTES),
                        BLOCK_BYTES,
                    ),
                    std::slice::from_raw_parts_mut(
                        self.staging.as_ptr().add(data_at + i * BLOCK_BYTES),
                        BLOCK_BYTES,
                    ),
                )
            };
            dst.copy_from_slice(src);
            let bcrc = crc32c::crc32c(src);
            crc = crc32c::crc32c_append(crc, src);
            let merge = h.entries.last_mut().filter(|e| {
                e.volume == b.volume as u64
                    && e.lba + e.num_blocks as u64 == b.lba
                    && e.data_seq == b.seq
            });
            match merge {
                Some(e) => {
                    e.num_blocks += 1;
                    e.data_crc = crc32c::crc32c_append(e.data_crc, src);
                    h.data_blocks += 1;
                }
                None => {
                    h.push(Entry {
                        volume: b.volume as u64,
                        lba: b.lba,
                        num_blocks: 1,
                        op: EntryOp::Write,
                        data_crc: bcrc,
                        data_seq: b.seq,
                    })
                    .expect("sized to fit");
                }
            }
        }
        h.data_crc = crc;
        // The header may have shrunk (merged entries): move the data up behind it.
        let hb = h.header_blocks as u64;
        if hb < hblocks {
            // SAFETY: overlapping copy inside the staging buffer (memmove).
            unsafe {
                std::ptr::copy(
                    self.staging.as_ptr().add(data_at),
                    self.staging.as_ptr().add(hb as usize * BLOCK_BYTES),
                    count * BLOCK_BYTES,
                );
            }
        }
        let total = hb + count as u64;
        let (start_pba, outstanding, failed) = self.write_record(stream, &h, to_seg, at, total);
        if outstanding == 0 {
            return self.moved(seg, stream, to_seg, start_pba + hb, count, total, false);
        }
        // Blocks the header no longer needs stay unused at the segment's tail of this record.
        if hb < hblocks {
            if let Some((s, n, e)) = self.streams[stream].open {
                self.streams[stream].open = Some((s, n - (hblocks - hb), e));
            }
        }
        (
            State::Writing {
                seg,
                stream,
                to_seg,
                first_pba: start_pba + hb,
                count,
                unmaps: 0,
                blocks: total,
                outstanding,
                failed,
            },
            CleanerPoll::Busy,
        )
    }

    /// A record header for stream `s`, numbered now, going to block `at` of `to_seg`: the
    /// first record of a segment's use sets its epoch.
    fn new_record(&mut self, s: usize, to_seg: u64, at: u64, epoch: u64) -> RecordHeader {
        let seq = self.pool.next_seq(self.streams[s].head);
        self.moving_seq = seq;
        let epoch = if at == 0 {
            let (seg, next, _) = self.streams[s].open.expect("just reserved");
            self.streams[s].open = Some((seg, next, seq));
            seq
        } else {
            epoch
        };
        let mut h = RecordHeader::new(seq, to_seg, epoch);
        // Relocation records become durable at the flush before a victim is freed.
        h.durable_seq = self.last_moved_seq;
        h
    }

    /// Encodes `h` at the front of the staging buffer (its data already follows it there),
    /// notes where its blocks go, and submits the `total` blocks to block `at` of `to_seg`,
    /// after the journal entry of `to_seg` if the record opens it: (first block, writes
    /// submitted, whether one failed to submit). Nothing is written to a segment whose
    /// entry could not be.
    fn write_record(
        &mut self,
        stream: usize,
        h: &RecordHeader,
        to_seg: u64,
        at: u64,
        total: u64,
    ) -> (u64, u32, bool) {
        let start_pba = self.pool.segment_first_block(to_seg) + at;
        let mut outstanding = 0;
        // The summary of the segment the stream sealed for this record goes with it, or not
        // at all (never later, over a newer use's).
        let summary_to_write = self.streams[stream].summary_to_write.take();
        if let Some(position) = self.journal_claim.take() {
            debug_assert_eq!(at, 0);
            // SAFETY: the journal block is ours, and no write of it is in flight (one
            // relocation record, and so one entry, at a time).
            let block =
                unsafe { std::slice::from_raw_parts_mut(self.journal_block.as_ptr(), BLOCK_BYTES) };
            let pba = self.pool.journal_entry(position, to_seg, h.seq, block);
            // SAFETY: as above; ours until the write completes.
            let iov = unsafe { IoVec::from_raw(self.journal_block.as_ptr(), BLOCK_BYTES) };
            let r = self.ch.submit(
                &IoRequest {
                    io_type: IoType::Write,
                    offset_blocks: pba,
                    num_blocks: 1,
                    iovs: &[iov],
                    fua: false,
                    tag: TAG_JOURNAL,
                },
                0,
            );
            if let Err(e) = r {
                tracing::error!(pool = %self.pool.name, "cleaner: journal entry submit failed: {e}");
                self.pool.usage.record_started(to_seg);
                if summary_to_write.is_some() {
                    self.summary_not_written(stream);
                }
                return (start_pba, 0, true);
            }
            outstanding += 1;
        }
        // A hint, whose failure fails nothing (`count_done`).
        if let Some((sealed, ptr, len)) = summary_to_write {
            let (block, blocks) = self
                .pool
                .summary_on_disk(sealed)
                .expect("a pool with summaries");
            debug_assert_eq!(blocks as usize * BLOCK_BYTES, len);
            // SAFETY: the stream's builder's buffer, lent to this write until it completes
            // (`step` gives it back).
            let iov = unsafe { IoVec::from_raw(ptr, len) };
            let r = self.ch.submit(
                &IoRequest {
                    io_type: IoType::Write,
                    offset_blocks: block,
                    num_blocks: blocks,
                    iovs: &[iov],
                    fua: false,
                    tag: TAG_SUMMARY,
                },
                0,
            );
            match r {
                Ok(()) => outstanding += 1,
                Err(e) => {
                    tracing::debug!(pool = %self.pool.name, "cleaner: segment summary not written: {e}");
                    self.summary_not_written(stream);
                }
            }
        }
        let hb = h.header_blocks as usize;
        // SAFETY: the staging buffer is ours; its first `hb` blocks hold the header.
        let head =
            unsafe { std::slice::from_raw_parts_mut(self.staging.as_ptr(), hb * BLOCK_BYTES) };
        h.encode(head);
        self.pool.summarize(h, start_pba + hb as u64);
        if let Some(summary) = &mut self.streams[stream].summary {
            summary.note(h, at as usize + hb);
        }
        self.pool.usage.record_started(to_seg);
        // SAFETY: header plus data, contiguous in the staging buffer, ours until completion.
        let iov = unsafe { IoVec::from_raw(self.staging.as_ptr(), total as usize * BLOCK_BYTES) };
        let r = self.ch.submit(
            &IoRequest {
                io_type: IoType::Write,
                offset_blocks: start_pba,
                num_blocks: total,
                iovs: &[iov],
                fua: false,
                tag: h.seq,
            },
            0,
        );
        match r {
            Ok(()) => (start_pba, outstanding + 1, false),
            Err(e) => {
                tracing::error!(pool = %self.pool.name, "cleaner: record submit failed: {e}");
                // A journal write in flight is waited for, then the record counts as failed.
                (start_pba, outstanding, true)
            }
        }
    }

    /// Writes a record of the victim's pending unmaps (no data) to the relocation stream.
    fn move_unmaps(&mut self, seg: u64) -> (State, CleanerPoll) {
        let n = (self.unmaps.len() - self.unmap_cursor).min(MAX_MOVE_ENTRIES);
        let hb = header_blocks_for(n) as u64;
        let Some((to_seg, at, epoch)) = self.reserve(0, hb) else {
            self.abandon(seg);
            return (State::Idle, CleanerPoll::Idle);
        };
        let mut h = self.new_record(0, to_seg, at, epoch);
        for e in &self.unmaps[self.unmap_cursor..self.unmap_cursor + n] {
            h.push(*e).expect("sized to fit");
        }
        let (start_pba, outstanding, failed) = self.write_record(0, &h, to_seg, at, hb);
        if outstanding == 0 {
            return self.moved(seg, 0, to_seg, start_pba + hb, 0, hb, false);
        }
        (
            State::Writing {
                seg,
                stream: 0,
                to_seg,
                first_pba: start_pba + hb,
                count: 0,
                unmaps: n,
                blocks: hb,
                outstanding,
                failed,
            },
            CleanerPoll::Busy,
        )
    }

    /// A relocation record completed (or failed): move the mappings that still point at the
    /// old places.
    #[allow(clippy::too_many_arguments)]
    fn moved(
        &mut self,
        seg: u64,
        stream: usize,
        to_seg: u64,
        first_pba: u64,
        count: usize,
        blocks: u64,
        ok: bool,
    ) -> (State, CleanerPoll) {
        if !ok {
            self.pool.usage.note_failed_record(to_seg);
        }
        self.pool.usage.record_finished(to_seg);
        self.pool.record_done();
        if !ok {
            self.pool.head_oldest(self.streams[stream].head, None);
            tracing::error!(pool = %self.pool.name, seg, "cleaner: relocation write failed");
            if let Some((s, _, _)) = self.streams[stream].open.take() {
                self.pool
                    .usage
                    .transition(s, SegmentState::Open, SegmentState::Sealed);
            }
            self.abandon(seg);
            return (State::Idle, CleanerPoll::Busy);
        }
        for i in 0..count {
            let (volume, lba, old) = {
                let b = &self.live[self.cursor + i];
                (b.volume, b.lba, b.pba)
            };
            let new = first_pba + i as u64;
            if let Some(t) = self.table(volume) {
                #[cfg(test)]
                if super::pool::traced(lba, 1) {
                    eprintln!("trace: cleaner moves lba {lba} {old} -> {new} (victim {seg}, record into {to_seg})");
                }
                if lba < t.num_blocks() && t.remap_if(lba, old, new) {
                    self.pool
                        .add_delta(&mut self.deltas, self.pool.segment_of(old), -1);
                    self.pool.add_delta(&mut self.deltas, to_seg, 1);
                }
            }
        }
        self.pool.apply_deltas(&mut self.deltas);
        // Only now, with every mapping moved, may a checkpoint count this record complete.
        self.pool.head_oldest(self.streams[stream].head, None);
        self.pool
            .cleaner_blocks_written
            .fetch_add(blocks, Ordering::Relaxed);
        self.victim_written += blocks;
        self.cursor += count;
        (State::Moving { seg }, CleanerPoll::Busy)
    }
}

/// Counts `done` off `outstanding` requests, noting in `failed` whether any failed (a segment
/// summary's write fails nothing: it is a hint).
fn count_done(done: &[IoCompletion], outstanding: &mut u32, failed: &mut bool) {
    debug_assert!(
        done.len() <= *outstanding as usize,
        "more completions than requests"
    );
    *outstanding -= done.len() as u32;
    *failed |= done
        .iter()
        .any(|c| c.status != IoStatus::Success && c.tag != TAG_SUMMARY);
}

impl Drop for Cleaner {
    fn drop(&mut self) {
        // Wait out I/O still in flight on our buffers (only when dropped mid-operation).
        let mut out = Vec::new();
        self.ch.drain(&mut out);
        // Cleaned victims still waiting (a Freeing or Marking state included): one last
        // flush makes their moves durable, then their free marks, and they are free (a stop,
        // not the I/O path).
        if !self.awaiting_flush.is_empty()
            && self.ch.submit(&IoRequest::flush(TAG_FLUSH), 0).is_ok()
        {
            out.clear();
            self.ch.drain(&mut out);
            if out.iter().all(|c| c.status == IoStatus::Success) && self.mark_all_waiting() {
                for (seg, _) in self.awaiting_flush.drain(..) {
                    self.pool
                        .usage
                        .transition(seg, SegmentState::Cleaned, SegmentState::Free);
                }
            }
        }
        if let State::Writing { to_seg, stream, .. } = self.state {
            self.pool.usage.record_finished(to_seg);
            self.pool.record_done();
            self.pool.head_oldest(self.streams[stream].head, None);
        }
        if let State::Reading { seg }
        | State::ReadingSummary { seg }
        | State::ReadingParts { seg }
        | State::Moving { seg }
        | State::Writing { seg, .. } = self.state
        {
            self.pool
                .usage
                .transition(seg, SegmentState::Cleaning, SegmentState::Sealed);
        }
        for s in &mut self.streams {
            if let Some((seg, _, _)) = s.open.take() {
                self.pool
                    .usage
                    .transition(seg, SegmentState::Open, SegmentState::Sealed);
            }
            self.pool.release_head(s.head);
        }
        self.pool.cleaner_attached.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn since(log_bytes: u64, pool_bytes: u64, last_checkpoint_bytes: u64) -> SinceCheckpoint {
        SinceCheckpoint {
            requested: false,
            journal_pressure: false,
            written: true,
            elapsed: Duration::ZERO,
            log_bytes,
            pool_bytes,
            last_checkpoint_bytes,
        }
    }

    #[test]
    fn a_small_map_is_checkpointed_every_512_mib_of_log_or_a_quarter_of_the_pool() {
        // A 16 GiB pool's 12 GiB volume written full at random: a 21 MB checkpoint.
        let s = since(512 * MIB - 1, 16 * GIB, 21 * MIB);
        assert_eq!(checkpoint_due(&s), None);
        let s = since(512 * MIB, 16 * GIB, 21 * MIB);
        assert_eq!(checkpoint_due(&s), Some(CheckpointReason::LogBytes));
        // A 1 GiB pool: a quarter of it.
        let s = since(256 * MIB, GIB, MIB);
        assert_eq!(checkpoint_due(&s), Some(CheckpointReason::LogBytes));
    }

    #[test]
    fn a_big_map_is_checkpointed_after_eight_times_its_size_of_log() {
        // A fully mapped 1 TiB pool: about 1.9 GB of map.
        let cp = 1900 * MIB;
        let s = since(512 * MIB, 1024 * GIB, cp);
        assert_eq!(checkpoint_due(&s), None);
        let s = since(8 * cp - 1, 1024 * GIB, cp);
        assert_eq!(checkpoint_due(&s), None);
        let s = since(8 * cp, 1024 * GIB, cp);
        assert_eq!(checkpoint_due(&s), Some(CheckpointReason::LogBytes));
        assert_eq!(checkpoint_log_spacing_bytes(1024 * GIB, cp), 8 * cp);
        assert_eq!(checkpoint_log_spacing_bytes(16 * GIB, 21 * MIB), 512 * MIB);
    }

    #[test]
    fn the_interval_waits_for_log_worth_the_checkpoint_under_a_light_load() {
        let mut s = since(100 * MIB, 16 * GIB, 21 * MIB);
        s.elapsed = CHECKPOINT_INTERVAL;
        // 100 MiB of log is less than 8 x 21 MiB: a checkpoint now would be most of the
        // bytes written.
        assert_eq!(checkpoint_due(&s), None);
        s.log_bytes = 8 * 21 * MIB;
        assert_eq!(checkpoint_due(&s), Some(CheckpointReason::Interval));
        s.elapsed = CHECKPOINT_INTERVAL - Duration::from_millis(1);
        assert_eq!(checkpoint_due(&s), None);
        // Nothing written since: no checkpoint, however long.
        s.elapsed = CHECKPOINT_INTERVAL * 100;
        s.written = false;
        s.log_bytes = 0;
        assert_eq!(checkpoint_due(&s), None);
    }

    #[test]
    fn requests_and_journal_pressure_do_not_wait_for_spacing() {
        let mut s = since(0, 1024 * GIB, 1900 * MIB);
        s.journal_pressure = true;
        assert_eq!(checkpoint_due(&s), Some(CheckpointReason::JournalPressure));
        s.requested = true;
        assert_eq!(checkpoint_due(&s), Some(CheckpointReason::Requested));
    }
}
