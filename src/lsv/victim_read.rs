//! Reading a cleaner's victim in parts instead of whole: where its summary on disk
//! (`segment_summary.rs`) can tell each block's owner (volume and LBA), only the live blocks;
//! else first its record headers, then only the writes that still hold live blocks.
//!
//! Each read is a request the device serves among the user's writes, and their number, not
//! their bytes, is what costs: on this VM's virtio disk, 17 k 4 KiB reads a second (a victim's
//! ~120 header reads, at the rate one reactor's random writes make victims) took 32% off a
//! 68 KiB sequential writer's bandwidth, and 4 k a second 5% (fio, see the README). Read
//! through the summary, a victim costs one read for the summary and one per run of live
//! blocks.
//!
//! The summary path is taken only while both checkpoints cover every unmap in the victim
//! (`SummaryView::unmaps_after`): an uncovered unmap must be logged again by the cleaner, and
//! only its record header has it. It reads each write that holds a live block whole and
//! checks it against the write's data checksum, which the summary keeps too, as the header
//! way does: a write that fails sends the cleaner to read the victim whole, whose chain walk
//! reports the damage and leaves the segment as it is.
//!
//! A victim is picked for having few live blocks, so reading all of it (8 MiB by default) to
//! find them spends the device's bandwidth, which the user writes it is cleaning for need.
//! The pool's segment summary marks where each record of a segment's current use begins
//! (`LsvPool::summarize`: the first header block holds `HEADER_MARK | header blocks`), so the
//! headers can be read at once, without walking the chain block by block. The chain is then
//! walked through the headers read (the same checks as `LsvPool::walk_chain`: this segment,
//! one epoch, rising sequence numbers), the extent tables tell which writes still hold live
//! blocks, and those writes are read whole, each checked against its entry's data checksum.
//!
//! The header marks in memory are complete for a victim's current use when its first block is
//! marked: a segment reused in this process marks every record it takes, and after a restart
//! only replayed records are marked, all of a segment's or none (its chain's sequence numbers
//! rise, so once one record is past the checkpoint, all later ones are). Anything else (no
//! mark at block 0, a header that does not check out, a data checksum that fails, more reads
//! than the plan's bound) sends the cleaner back to reading the victim whole.
//!
//! Bounds: at most `MAX_READS` reads a phase (a plan over that reads the victim whole), at most
//! one header mark a block; reads go `QUEUE_DEPTH` at a time.

use super::pool::LsvPool;
use super::record::{EntryOp, RecordHeader, BLOCK_BYTES};
use super::segment_summary::SummaryView;
use crate::bdev::{IoChannel, IoCompletion, IoRequest, IoStatus, IoType, IoVec};
use crate::mem::DmaRegion;

/// Reads whose gap is at most this many blocks are made one (one larger read beats two small
/// ones on this kind of device).
const MERGE_GAP_BLOCKS: u32 = 4;
/// Most reads one phase may plan; a victim of many small records is read whole instead.
const MAX_READS: usize = 256;

/// What the victim's reads are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Headers,
    Live,
}

/// One victim's part reads: what to read, what is in flight, and the chain walked.
pub(super) struct PartialRead {
    pub phase: Phase,
    /// (block offset in the segment, blocks), in offset order.
    reads: Vec<(u32, u32)>,
    next: usize,
    outstanding: u32,
    failed: bool,
    /// Header reads, kept for the walk: (offset, header blocks).
    headers: Vec<(u32, u32)>,
    /// The chain walked through the headers: (first data block in the pool, header).
    pub chain: Vec<(u64, RecordHeader)>,
    /// The live blocks' reads were planned from the pool's summary alone (no header read).
    pub from_summary: bool,
    /// Then: the writes read, to check against their data checksums (first block in the
    /// segment, blocks, checksum), in offset order.
    summary_writes: Vec<(u32, u32, u32)>,
}

impl PartialRead {
    pub fn new(seg_blocks: usize) -> PartialRead {
        PartialRead {
            phase: Phase::Headers,
            reads: Vec::with_capacity(seg_blocks),
            next: 0,
            outstanding: 0,
            failed: false,
            headers: Vec::with_capacity(seg_blocks),
            chain: Vec::new(),
            from_summary: false,
            summary_writes: Vec::with_capacity(seg_blocks),
        }
    }

    /// Forgets the last victim's plan: a new one begins, in `phase`.
    fn start(&mut self, phase: Phase, from_summary: bool) {
        self.phase = phase;
        self.from_summary = from_summary;
        self.reads.clear();
        self.headers.clear();
        self.chain.clear();
        self.summary_writes.clear();
        self.next = 0;
        self.outstanding = 0;
        self.failed = false;
    }

    /// Plans reads of only the writes that hold live blocks of victim `seg` (`is_live(volume,
    /// lba, pba)`), found through its summary read from disk, with no header read; false if
    /// the summary cannot tell alone (an unmap in it that both checkpoints do not cover yet
    /// must be logged again, and only its header has it) or the reads would be too many.
    /// Each write is read whole, to be checked against its data checksum (`verify`), as the
    /// header way does. The cleaner then moves what the summary names and the extent tables
    /// still map there.
    pub fn plan_from_summary(
        &mut self,
        pool: &LsvPool,
        seg: u64,
        summary: &SummaryView,
        mut is_live: impl FnMut(u32, u64, u64) -> bool,
    ) -> bool {
        self.start(Phase::Live, true);
        if summary.unmaps_after() > pool.reusable_seq() {
            return false;
        }
        let seg_start = pool.segment_first_block(seg);
        let (reads, writes) = (&mut self.reads, &mut self.summary_writes);
        let mut whole = true;
        summary.for_each_owner(|at, volume, lba| {
            let seen = writes.last().is_some_and(|&(s, n, _)| at < s + n);
            if seen || !whole || !is_live(volume, lba, seg_start + at as u64) {
                return;
            }
            match summary.write_at(at) {
                Some(w) => {
                    debug_assert!(w.0 <= at && at < w.0 + w.1);
                    plan_read(reads, w.0, w.1);
                    writes.push(w);
                }
                None => whole = false,
            }
        });
        whole && self.reads.len() <= MAX_READS
    }

    /// Plans the header reads of victim `seg`; false if its summary cannot say where its
    /// records are (read it whole).
    pub fn plan_headers(&mut self, pool: &LsvPool, seg: u64) -> bool {
        self.start(Phase::Headers, false);
        pool.header_marks(seg, &mut self.headers);
        if self.headers.first().is_none_or(|&(at, _)| at != 0) {
            return false;
        }
        for i in 0..self.headers.len() {
            let (at, blocks) = self.headers[i];
            self.plan_read(at, blocks);
        }
        self.reads.len() <= MAX_READS
    }

    /// Submits planned reads into `buf` (the victim's image, at their offsets) while the
    /// channel has room; returns the blocks submitted. A failed submit marks the whole plan
    /// failed (the reads in flight still complete).
    pub fn submit(
        &mut self,
        ch: &mut IoChannel,
        buf: &DmaRegion,
        seg_first_block: u64,
        queue_depth: u32,
    ) -> u64 {
        let mut submitted = 0;
        while !self.failed && self.next < self.reads.len() && ch.in_flight() < queue_depth {
            let (at, blocks) = self.reads[self.next];
            let off = at as usize * BLOCK_BYTES;
            let len = blocks as usize * BLOCK_BYTES;
            debug_assert!(off + len <= buf.len());
            // SAFETY: an in-bounds range of the cleaner's segment buffer, untouched by anyone
            // else until this read completes (the cleaner waits for every read of a victim).
            let iov = unsafe { IoVec::from_raw(buf.as_ptr().add(off), len) };
            let r = ch.submit(
                &IoRequest {
                    io_type: IoType::Read,
                    offset_blocks: seg_first_block + at as u64,
                    num_blocks: blocks as u64,
                    iovs: &[iov],
                    fua: false,
                    tag: 0,
                },
                0,
            );
            if r.is_err() {
                self.failed = true;
                break;
            }
            self.next += 1;
            self.outstanding += 1;
            submitted += blocks as u64;
        }
        submitted
    }

    /// Counts completed reads.
    pub fn complete(&mut self, done: &[IoCompletion]) {
        for c in done {
            debug_assert!(self.outstanding > 0);
            self.outstanding = self.outstanding.saturating_sub(1);
            self.failed |= c.status != IoStatus::Success;
        }
    }

    /// Whether the phase is over: every planned read completed, or, after a failure, every
    /// read in flight did.
    pub fn finished(&self) -> bool {
        self.outstanding == 0 && (self.failed || self.next >= self.reads.len())
    }

    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Walks the chain through the headers read into `bytes` (the victim's image) and plans
    /// reads of every write that still holds a live block (`is_live(volume, lba, pba)`).
    /// False if the chain does not check out (read the victim whole).
    pub fn plan_live(
        &mut self,
        pool: &LsvPool,
        seg: u64,
        bytes: &[u8],
        mut is_live: impl FnMut(u32, u64, u64) -> bool,
    ) -> bool {
        self.phase = Phase::Live;
        self.reads.clear();
        self.next = 0;
        self.outstanding = 0;
        self.chain.clear();
        let seg_blocks = pool.seg_blocks;
        let seg_start = pool.segment_first_block(seg);
        let mut at = 0usize;
        let mut epoch = None;
        let mut last_seq = 0;
        while at < seg_blocks {
            // An unmarked block ends the chain: every record of this use is marked.
            let Ok(i) = self.headers.binary_search_by_key(&(at as u32), |h| h.0) else {
                break;
            };
            let Some(h) = bytes
                .get(at * BLOCK_BYTES..)
                .and_then(|b| RecordHeader::decode(b).ok())
            else {
                break;
            };
            let end = at + h.total_blocks() as usize;
            if h.segment != seg
                || end > seg_blocks
                || epoch.is_some_and(|e| e != h.segment_epoch)
                || h.seq <= last_seq
            {
                break;
            }
            if h.header_blocks != self.headers[i].1 {
                return false; // the mark and the header disagree: do not guess
            }
            epoch = Some(h.segment_epoch);
            last_seq = h.seq;
            let first_data = at + h.header_blocks as usize;
            let mut d = first_data;
            for e in h.entries.iter().filter(|e| e.op == EntryOp::Write) {
                let n = e.num_blocks as usize;
                if d + n > end {
                    return false;
                }
                let live = (0..n as u64).any(|b| {
                    is_live(
                        e.volume as u32,
                        e.lba.wrapping_add(b),
                        seg_start + (d as u64) + b,
                    )
                });
                if live {
                    self.plan_read(d as u32, n as u32);
                }
                d += n;
            }
            self.chain.push((seg_start + first_data as u64, h));
            at = end;
        }
        !self.chain.is_empty() && self.reads.len() <= MAX_READS
    }

    fn plan_read(&mut self, at: u32, blocks: u32) {
        plan_read(&mut self.reads, at, blocks);
    }

    /// Checks every write that was read against its entry's data checksum.
    pub fn verify(&self, pool: &LsvPool, seg: u64, bytes: &[u8]) -> bool {
        if self.from_summary {
            debug_assert!(self.chain.is_empty());
            return self.summary_writes.iter().all(|&(at, n, crc)| {
                let (at, n) = (at as usize, n as usize);
                crc32c::crc32c(&bytes[at * BLOCK_BYTES..(at + n) * BLOCK_BYTES]) == crc
            });
        }
        let seg_start = pool.segment_first_block(seg);
        // Writes and reads both go in offset order: one pass over each.
        let mut r = 0;
        for (first_data, h) in &self.chain {
            let mut d = (*first_data - seg_start) as usize;
            for e in h.entries.iter().filter(|e| e.op == EntryOp::Write) {
                let n = e.num_blocks as usize;
                while r < self.reads.len() && (self.reads[r].0 + self.reads[r].1) as usize <= d {
                    r += 1;
                }
                let read = self
                    .reads
                    .get(r)
                    .is_some_and(|&(at, len)| at as usize <= d && d + n <= (at + len) as usize);
                if read {
                    let data = &bytes[d * BLOCK_BYTES..(d + n) * BLOCK_BYTES];
                    if crc32c::crc32c(data) != e.data_crc {
                        return false;
                    }
                }
                d += n;
            }
        }
        true
    }
}

/// Adds a read to `reads` (planned in offset order), merged with the one before when they
/// overlap, touch or nearly do.
fn plan_read(reads: &mut Vec<(u32, u32)>, at: u32, blocks: u32) {
    if let Some(last) = reads.last_mut() {
        debug_assert!(at >= last.0);
        let end = last.0 + last.1;
        if at <= end + MERGE_GAP_BLOCKS {
            last.1 = end.max(at + blocks) - last.0;
            return;
        }
    }
    reads.push((at, blocks));
}
