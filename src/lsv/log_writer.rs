//! A reactor's log head in one pool: every write that the pool's volume channels on this
//! reactor receive goes into its records.
//!
//! One `LogWriter` exists per (pool, reactor thread), shared by that thread's volume channels
//! of the pool (`LogWriter::for_this_thread`). It owns an open segment and the next free block
//! in it. The writes gathered between two polls, from every volume, become one record (group
//! commit): a header block with an entry per write, then every write's data, written with one
//! vectored write to the base bdev. When it completes, the extent tables point each block at
//! its new home and the writes are acknowledged, each to the channel that received it: they
//! are as durable as the base bdev makes a completed write (a write-back cache, like a disk's),
//! or durable outright with `fua_records`.
//!
//! Records are applied and acknowledged strictly in log order, so the acknowledged records
//! are always an unbroken prefix of the log: recovery reads a segment's chain up to its first
//! hole, and nothing acknowledged can lie beyond one.
//!
//! Bounds: `RECORDS_IN_FLIGHT` records at once; at most `MAX_WRITES_PER_RECORD` writes and
//! `MAX_DATA_BLOCKS` blocks per record; `MAX_CHANNELS_PER_WRITER` channels; pending writes
//! at most the sum of the channels' queue depths (each channel bounds its own).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::extent_table::ExtentTable;
use super::pool::{Applying, LsvPool, CLEANER_RESERVE_SEGMENTS, MAX_LOG_HEADS};
use super::record::{
    header_blocks_for, Entry, EntryOp, RecordHeader, BLOCK_BYTES, MAX_DATA_BLOCKS,
};
use super::segment_summary::SummaryBuilder;
use super::usage::{SegmentState, UsageDeltas};
use crate::bdev::{
    BdevError, ChannelContext, IoChannel, IoCompletion, IoRequest, IoStatus, IoType, IoVec,
    SlotCompletion, MAX_IOVS,
};
use crate::mem::{BufferPool, BufferPoolConfig, DmaBuf};

/// Writes gathered into one record at most (one header block holds 126 entries; the iovec
/// budget of one base request is the tighter bound).
pub const MAX_WRITES_PER_RECORD: usize = 63;
/// Records in flight from which the writer holds small batches back to let them grow, and
/// the record size (data blocks) a held batch grows to before it goes anyway.
const BATCH_WHEN_IN_FLIGHT: usize = 2;
const BATCH_TARGET_BLOCKS: u32 = 64;
/// Records one writer has in flight at once.
pub const RECORDS_IN_FLIGHT: usize = 8;
/// In the log order (and as a base request's tag), the writer's segment-journal write: at
/// most one in flight, queued ahead of the first record of the segment it names.
const JOURNAL_SLOT: usize = RECORDS_IN_FLIGHT;
/// In the log order (and as a base request's tag), the writer's segment-summary write: at most
/// one in flight, queued ahead of the first record of the next segment, so that a front end
/// waiting for that record also reaps the summary's completion. Its failure fails nothing.
const SUMMARY_SLOT: usize = RECORDS_IN_FLIGHT + 1;
/// Iovecs one write may carry.
pub const MAX_WRITE_IOVS: usize = 8;
/// Volume channels one writer serves at once.
pub const MAX_CHANNELS_PER_WRITER: usize = 1024;

/// A write (or unmap) waiting for the next record.
pub(super) struct PendingWrite {
    /// The channel that received it, and its slot there.
    pub chan: u32,
    pub slot: u32,
    pub volume: u64,
    pub op: EntryOp,
    pub lba: u64,
    pub num_blocks: u32,
    pub iovs: [IoVec; MAX_WRITE_IOVS],
    pub iov_count: usize,
}

struct Head {
    seg: u64,
    next_block: u64,
    /// The seq of this segment's first record (0 until it is numbered).
    epoch: u64,
}

/// Why `reserve` found no room.
enum NoRoom {
    /// Not now: the journal write for the last segment opened is in flight, or every
    /// journal slot waits for a checkpoint (which the cleaner writes).
    Wait,
    /// No free segment.
    Full,
}

/// (channel, slot) of each write in a record.
type RecordSlots = Vec<(u32, u32)>;

struct InFlightRecord {
    header: RecordHeader,
    header_buf: DmaBuf,
    first_data_pba: u64,
    slots: RecordSlots,
}

/// One registered channel: its queue depth and its acknowledged writes not yet collected.
struct Outbox {
    volume: u64,
    queue_depth: usize,
    done: Vec<SlotCompletion>,
}

thread_local! {
    /// This thread's writers, by pool (the pool's address; a writer holds its pool, so the
    /// address cannot be reused while the entry's writer lives).
    static WRITERS: RefCell<Vec<(usize, Weak<RefCell<LogWriter>>)>> = const { RefCell::new(Vec::new()) };
}

pub(super) struct LogWriter {
    pool: Arc<LsvPool>,
    /// Writes one record takes at most: half the channels' summed queue depth (so two
    /// records can be in flight, the device working on one while the next fills), 4..=63.
    record_writes: usize,
    /// The newest record that completed, and the newest known durable (completed before a
    /// flush was issued, or written with FUA).
    pub last_completed_seq: u64,
    pub durable_seq: u64,
    /// This writer's slot in the pool's log-head table.
    log_head: usize,
    base: IoChannel,
    headers: BufferPool,
    head: Option<Head>,
    /// The journal slot claimed for the segment just opened, until its entry is submitted.
    journal_claim: Option<u64>,
    /// The buffer of the journal write in flight.
    journal_buf: Option<DmaBuf>,
    /// Records that failed to submit while `journal_buf`'s write was in flight: they count as
    /// in flight (`LsvPool::record_done` not yet called) until it lands.
    records_awaiting_journal: u32,
    pending: Vec<PendingWrite>,
    records: Vec<Option<InFlightRecord>>,
    /// Record slots (and `JOURNAL_SLOT`, `SUMMARY_SLOT`) in log order, and each one's outcome
    /// once its write completes.
    order: VecDeque<usize>,
    outcome: Vec<Option<IoStatus>>,
    outboxes: Vec<Option<Outbox>>,
    base_done: Vec<IoCompletion>,
    deltas: UsageDeltas,
    /// Entry and slot vectors of finished records, one per record slot, reused so that
    /// building a record allocates nothing.
    spare: Vec<(Vec<Entry>, RecordSlots)>,
    /// Record slots in flight behind a failed record; they fail when they complete.
    doomed: Vec<bool>,
    /// The extent tables of the volumes whose channels use this writer, sorted by volume id
    /// (`apply_record` finds each entry's table by binary search).
    tables: Vec<(u64, Arc<ExtentTable>)>,
    /// The open segment's summary, written when it is sealed (pools of format version 4);
    /// while its write is in flight it is in the log order (`SUMMARY_SLOT`).
    summary: Option<SummaryBuilder>,
}

impl LogWriter {
    /// A writer for a new channel of queue depth `ctx.queue_depth` on `volume`, with the
    /// channel registered in it: (writer, channel id). `shared`: this thread's writer for
    /// `pool` (made on first use); otherwise one of its own (tests: two "reactors" on one
    /// thread).
    pub fn open(
        pool: &Arc<LsvPool>,
        volume: u64,
        table: &Arc<ExtentTable>,
        ctx: &ChannelContext,
        shared: bool,
    ) -> Result<(Rc<RefCell<LogWriter>>, u32), BdevError> {
        let key = Arc::as_ptr(pool) as usize;
        let existing = shared
            .then(|| {
                WRITERS.with(|w| {
                    let mut w = w.borrow_mut();
                    w.retain(|(_, weak)| weak.strong_count() > 0);
                    w.iter()
                        .find(|(k, _)| *k == key)
                        .and_then(|(_, weak)| weak.upgrade())
                })
            })
            .flatten();
        let writer = match existing {
            Some(w) => w,
            None => {
                let w = Rc::new(RefCell::new(LogWriter::new(pool, ctx)?));
                if shared {
                    WRITERS.with(|ws| ws.borrow_mut().push((key, Rc::downgrade(&w))));
                }
                w
            }
        };
        let id = writer
            .borrow_mut()
            .register(volume, table, ctx.queue_depth as usize)?;
        Ok((writer, id))
    }

    fn new(pool: &Arc<LsvPool>, ctx: &ChannelContext) -> Result<LogWriter, BdevError> {
        // Record headers come from a small pool of the writer's own, so that the caller's
        // use of the reactor's pool can never starve the log of header buffers.
        let headers = BufferPool::new(BufferPoolConfig {
            buf_bytes: BLOCK_BYTES,
            count: RECORDS_IN_FLIGHT + 1,
            try_hugepages: false,
        })
        .map_err(|e| BdevError::Channel(e.to_string()))?;
        // Its records, a journal entry and a segment summary.
        let base = pool.base.open_channel(&ChannelContext {
            queue_depth: RECORDS_IN_FLIGHT as u32 + 2,
            buffers: ctx.buffers.clone(),
        })?;
        let summary = if pool.sb.summary_offset != 0 {
            Some(
                SummaryBuilder::new(pool.sb.segment_bytes, pool.sb.uuid)
                    .map_err(|e| BdevError::Channel(e.to_string()))?,
            )
        } else {
            None
        };
        let log_head = pool.claim_head().ok_or_else(|| {
            BdevError::Channel(format!(
                "pool {:?} has no free log head (at most {MAX_LOG_HEADS} reactors)",
                pool.name
            ))
        })?;
        Ok(LogWriter {
            pool: pool.clone(),
            record_writes: 4,
            last_completed_seq: 0,
            durable_seq: 0,
            log_head,
            base,
            headers,
            head: None,
            journal_claim: None,
            journal_buf: None,
            records_awaiting_journal: 0,
            pending: Vec::new(),
            records: (0..RECORDS_IN_FLIGHT).map(|_| None).collect(),
            outcome: vec![None; RECORDS_IN_FLIGHT + 2],
            order: VecDeque::with_capacity(RECORDS_IN_FLIGHT + 2),
            outboxes: Vec::new(),
            base_done: Vec::with_capacity(RECORDS_IN_FLIGHT + 2),
            deltas: UsageDeltas::default(),
            spare: (0..RECORDS_IN_FLIGHT)
                .map(|_| {
                    (
                        Vec::with_capacity(MAX_WRITES_PER_RECORD),
                        Vec::with_capacity(MAX_WRITES_PER_RECORD),
                    )
                })
                .collect(),
            doomed: vec![false; RECORDS_IN_FLIGHT + 2],
            tables: Vec::new(),
            summary,
        })
    }

    /// Adds a channel (made when a channel opens, not on the I/O path).
    fn register(
        &mut self,
        volume: u64,
        table: &Arc<ExtentTable>,
        queue_depth: usize,
    ) -> Result<u32, BdevError> {
        let id = match self.outboxes.iter().position(|o| o.is_none()) {
            Some(i) => i,
            None if self.outboxes.len() < MAX_CHANNELS_PER_WRITER => {
                self.outboxes.push(None);
                self.outboxes.len() - 1
            }
            None => {
                return Err(BdevError::Channel(format!(
                    "pool {:?}: more than {MAX_CHANNELS_PER_WRITER} volume channels on one reactor",
                    self.pool.name
                )))
            }
        };
        self.outboxes[id] = Some(Outbox {
            volume,
            queue_depth,
            done: Vec::with_capacity(queue_depth),
        });
        match self.tables.binary_search_by_key(&volume, |(v, _)| *v) {
            Ok(i) => debug_assert!(
                Arc::ptr_eq(&self.tables[i].1, table),
                "volume id {volume} names two tables (ids are never reused)"
            ),
            Err(i) => self.tables.insert(i, (volume, table.clone())),
        }
        self.resize_for_channels();
        Ok(id as u32)
    }

    /// Removes a channel (it has nothing in flight). Its volume's table leaves the cache
    /// when no other channel of that volume remains.
    pub fn unregister(&mut self, id: u32) {
        let Some(gone) = self.outboxes[id as usize].take() else {
            return;
        };
        if !self
            .outboxes
            .iter()
            .flatten()
            .any(|o| o.volume == gone.volume)
        {
            self.tables.retain(|(v, _)| *v != gone.volume);
        }
        self.resize_for_channels();
    }

    fn resize_for_channels(&mut self) {
        let qd: usize = self.outboxes.iter().flatten().map(|o| o.queue_depth).sum();
        self.record_writes = (qd / 2).clamp(4, MAX_WRITES_PER_RECORD);
        self.pending.reserve(qd.saturating_sub(self.pending.len()));
    }

    /// Queues a write for the next record.
    #[inline]
    pub fn push(&mut self, w: PendingWrite) {
        debug_assert!(w.iov_count <= MAX_WRITE_IOVS);
        self.pending.push(w);
    }

    /// Acknowledged writes for channel `id` (taken; they are appended to `out`).
    #[inline]
    pub fn take_done(&mut self, id: u32, out: &mut Vec<SlotCompletion>) {
        if let Some(o) = self.outboxes[id as usize].as_mut() {
            out.append(&mut o.done);
        }
    }

    /// Commits what is pending, reaps record completions, and acknowledges in log order.
    pub fn poll(&mut self) {
        self.commit();
        if self.base.in_flight() > 0 {
            self.base_done.clear();
            let mut base_done = std::mem::take(&mut self.base_done);
            self.base.poll(0, &mut base_done);
            for c in base_done.drain(..) {
                self.record_completed(c.tag as usize, c.status);
            }
            self.base_done = base_done;
        }
    }

    fn complete(&mut self, chan: u32, slot: u32, status: IoStatus) {
        // A channel only closes with nothing in flight, so its outbox is there.
        if let Some(o) = self.outboxes[chan as usize].as_mut() {
            o.done.push(SlotCompletion { slot, status });
        }
    }

    fn blocks_per_segment(&self) -> u64 {
        self.pool.seg_blocks as u64
    }

    fn pending_blocks(&self) -> u32 {
        self.pending
            .iter()
            .filter(|w| w.op == EntryOp::Write)
            .map(|w| w.num_blocks)
            .sum()
    }

    /// Room for `blocks` in the open segment, sealing it and opening another when full
    /// (with a journal slot claimed for it, `journal_claim`). With a cleaner running, the
    /// last free segments are left to it.
    fn reserve(&mut self, blocks: u64) -> Result<(u64, u64), NoRoom> {
        if let Some(h) = &self.head {
            if h.next_block + blocks <= self.blocks_per_segment() {
                let at = (h.seg, h.next_block);
                self.head.as_mut().expect("checked").next_block += blocks;
                return Ok(at);
            }
            let sealed =
                self.pool
                    .usage
                    .transition(h.seg, SegmentState::Open, SegmentState::Sealed);
            debug_assert!(sealed);
            self.head = None;
            self.write_summary();
        }
        let cleaner = self.pool.cleaner_attached.load(Ordering::Relaxed);
        if self.journal_buf.is_some() {
            return Err(NoRoom::Wait);
        }
        debug_assert!(self.journal_claim.is_none());
        let keep = if cleaner { CLEANER_RESERVE_SEGMENTS } else { 0 };
        // The segment first, then its journal slot: a head that finds no segment (a full
        // pool waits on the cleaner, polling) must not use up journal positions.
        let seg = self.pool.usage.open_free(keep).ok_or(NoRoom::Full)?;
        let claim = match self.pool.claim_journal() {
            Ok(claim) => claim,
            Err(_) => {
                let given_back =
                    self.pool
                        .usage
                        .transition(seg, SegmentState::Open, SegmentState::Free);
                debug_assert!(given_back);
                // The cleaner's checkpoint frees slots; without a cleaner nothing will.
                if cleaner {
                    return Err(NoRoom::Wait);
                }
                if self.pool.journal_full_waits.load(Ordering::Relaxed) == 1 {
                    tracing::error!(pool = %self.pool.name, "the segment journal is full and no cleaner runs to write the checkpoint that frees it: writes fail with ENOSPC");
                }
                return Err(NoRoom::Full);
            }
        };
        self.journal_claim = claim;
        self.head = Some(Head {
            seg,
            next_block: blocks,
            epoch: 0,
        });
        if let Some(summary) = &mut self.summary {
            summary.begin(seg);
        }
        Ok((seg, 0))
    }

    /// Submits the summary of the segment just sealed, if it has one, in the log order ahead
    /// of the next segment's records (they are acknowledged after it, so a front end that
    /// waits for them reaps it too). Nothing depends on it: a summary that is not written,
    /// or fails, only sends the cleaner to the segment's record headers.
    fn write_summary(&mut self) {
        let Some(summary) = &mut self.summary else {
            return;
        };
        let Some((seg, ptr, len)) = summary.seal() else {
            return;
        };
        // A closing pool's writers land nothing more on its base.
        if !self.pool.begin_summary_write() {
            summary.written();
            return;
        }
        let (block, _) = self
            .pool
            .summary_on_disk(seg)
            .expect("a pool with summaries");
        // SAFETY: the builder's buffer, lent to this write until `summary_written`.
        let iov = unsafe { IoVec::from_raw(ptr, len) };
        let req = IoRequest {
            io_type: IoType::Write,
            offset_blocks: block,
            num_blocks: (len / BLOCK_BYTES) as u64,
            iovs: &[iov],
            // Durable as the records are: no write is left behind a pool's last flush.
            fua: self.pool.fua_records(),
            tag: SUMMARY_SLOT as u64,
        };
        match self.base.submit(&req, 0) {
            Ok(()) => {
                self.order.push_back(SUMMARY_SLOT);
                self.outcome[SUMMARY_SLOT] = None;
            }
            Err(e) => {
                tracing::debug!(pool = %self.pool.name, seg, "segment summary not written: {e}");
                summary.written();
                self.pool.end_summary_write();
            }
        }
    }

    /// Whether the summary's write is in flight.
    fn summary_writing(&self) -> bool {
        self.summary.as_ref().is_some_and(|s| s.is_writing())
    }

    /// The summary write is over: its buffer is free again.
    fn summary_written(&mut self, status: IoStatus) {
        if status != IoStatus::Success {
            tracing::debug!(pool = %self.pool.name, "segment summary write failed: {status:?}");
        }
        if let Some(summary) = &mut self.summary {
            summary.written();
        }
        self.pool.end_summary_write();
    }

    /// Submits the journal entry of the segment just opened (`journal_claim`), ahead of its
    /// first record (`epoch`) in the log order; false if the submit failed.
    fn submit_journal_entry(&mut self, seg: u64, epoch: u64) -> bool {
        let Some(position) = self.journal_claim.take() else {
            return true;
        };
        // The pool has a buffer more than record slots, and one journal write at a time.
        let mut buf = self.headers.get().expect("a buffer kept for the journal");
        let block = self
            .pool
            .journal_entry(position, seg, epoch, buf.as_mut_slice());
        // SAFETY: the buffer stays on loan to this write until it completes.
        let iov = unsafe { IoVec::from_buf(&mut buf, BLOCK_BYTES) };
        let req = IoRequest {
            io_type: IoType::Write,
            offset_blocks: block,
            num_blocks: 1,
            iovs: &[iov],
            // Records written with FUA are acknowledged as durable: so must the entry be.
            fua: self.pool.fua_records(),
            tag: JOURNAL_SLOT as u64,
        };
        match self.base.submit(&req, 0) {
            Ok(()) => {
                self.order.push_back(JOURNAL_SLOT);
                self.outcome[JOURNAL_SLOT] = None;
                self.journal_buf = Some(buf);
                true
            }
            Err(e) => {
                tracing::error!("lsv journal entry submit failed: {e}");
                self.headers.put(buf);
                false
            }
        }
    }

    /// Fails the first `take` pending writes with `errno` and drops them.
    fn fail_pending(&mut self, take: usize, errno: i32) {
        for i in 0..take {
            let (chan, slot) = (self.pending[i].chan, self.pending[i].slot);
            self.complete(chan, slot, IoStatus::Failed(errno));
        }
        self.pending.drain(..take);
    }

    /// Whether writes that find no room must fail now (no cleaner, or it can free nothing);
    /// otherwise they wait for the cleaner.
    fn out_of_space(&self) -> bool {
        !self.pool.cleaner_attached.load(Ordering::Relaxed)
            || self.pool.full.load(Ordering::Acquire)
    }

    /// Turns the writes gathered since the last poll into records and submits them; fails
    /// them (ENODEV) once the pool is closing, so that nothing more of it lands on its base.
    fn commit(&mut self) {
        // A plain load first, so that writes given to a closing pool fail at once (and do
        // not wait for throttle credit that no cleaner will grant); the exact check is made
        // as each record is numbered, below.
        if !self.pending.is_empty() && self.pool.closing.load(Ordering::Relaxed) {
            self.fail_pending(self.pending.len(), libc::ENODEV);
        }
        while !self.pending.is_empty() {
            // Group commit: while the device already has records of ours to work on, let
            // small batches grow into large records (the device's large-write speed is the
            // point of the log); an idle device gets whatever is pending at once.
            let records_in_flight = self.order.len()
                - self.journal_buf.is_some() as usize
                - self.summary_writing() as usize;
            if records_in_flight >= BATCH_WHEN_IN_FLIGHT
                && self.pending.len() < self.record_writes
                && self.pending_blocks() < BATCH_TARGET_BLOCKS
            {
                return;
            }
            let Some(slot_idx) = self.records.iter().position(|r| r.is_none()) else {
                return; // all record slots busy: the rest waits for the next poll
            };
            // Take as many pending writes as fit one record. Throttled, records wait for
            // credit anyway: let them carry everything pending, to spend fewer header blocks
            // (space the cleaner must reclaim) per write.
            let max_take = if self.pool.throttled() {
                MAX_WRITES_PER_RECORD
            } else {
                self.record_writes
            };
            // A record never spans segments (a single write always fits one: see submit).
            let seg_blocks = self.blocks_per_segment();
            let mut take = 0;
            let mut data_blocks = 0u32;
            let mut iovs = 1;
            for w in &self.pending {
                let d = if w.op == EntryOp::Write {
                    w.num_blocks
                } else {
                    0
                };
                if take == max_take
                    || data_blocks + d > MAX_DATA_BLOCKS
                    || iovs + w.iov_count > MAX_IOVS
                    || header_blocks_for(take + 1) as u64 + (data_blocks + d) as u64 > seg_blocks
                {
                    break;
                }
                take += 1;
                data_blocks += d;
                iovs += w.iov_count;
            }
            debug_assert!(take > 0, "a single write always fits a record");
            let blocks = header_blocks_for(take) as u64 + data_blocks as u64;
            // Throttled: the whole record waits for the cleaner's credit (and grows meanwhile).
            let Some(charged) = self.pool.admit_user_record(blocks) else {
                return;
            };
            // A free record slot implies a free header buffer (both RECORDS_IN_FLIGHT).
            let Some(mut header_buf) = self.headers.get() else {
                self.pool.grant_credit(charged);
                return;
            };
            let (seg, at) = match self.reserve(blocks) {
                Ok(room) => room,
                Err(NoRoom::Wait) => {
                    self.headers.put(header_buf);
                    self.pool.grant_credit(charged);
                    return;
                }
                Err(NoRoom::Full) => {
                    self.headers.put(header_buf);
                    self.pool.grant_credit(charged);
                    if !self.out_of_space() {
                        return; // the cleaner is making room: try again next poll
                    }
                    // Pool full: fail what cannot be logged (writes and unmaps alike); reads go on.
                    self.fail_pending(take, libc::ENOSPC);
                    continue;
                }
            };
            // A closing pool numbers no new record. `LsvPool::writes_stopped` pairs with
            // this: the count goes up before `closing` is read, and `close` sets `closing`
            // before the count is read there (all SeqCst), so either this sees the pool
            // closing, or the closer sees the count and then the record it numbered (in
            // flight from `next_seq` on). One pair of RMWs per record, as `next_seq` and
            // `record_done` already are.
            self.pool.committing.fetch_add(1, Ordering::SeqCst);
            if self.pool.closing.load(Ordering::SeqCst) {
                self.pool.committing.fetch_sub(1, Ordering::SeqCst);
                self.headers.put(header_buf);
                self.pool.grant_credit(charged);
                self.fail_pending(self.pending.len(), libc::ENODEV);
                return;
            }
            let seq = self.pool.next_seq(self.log_head);
            self.pool.committing.fetch_sub(1, Ordering::SeqCst);
            let head = self.head.as_mut().expect("reserved above");
            if at == 0 {
                head.epoch = seq;
            }
            let epoch = head.epoch;
            if at == 0 && !self.submit_journal_entry(seg, seq) {
                // Nothing may go into a segment recovery could not find.
                if let Some(h) = self.head.take() {
                    self.pool
                        .usage
                        .transition(h.seg, SegmentState::Open, SegmentState::Sealed);
                }
                self.pool.record_done();
                self.publish_oldest();
                self.headers.put(header_buf);
                self.fail_pending(take, libc::EIO);
                continue;
            }
            let mut header = RecordHeader::new(seq, seg, epoch);
            header.durable_seq = self.durable_seq;
            // Reuse a finished record's vectors: nothing is allocated per record.
            let (entries, mut slots) = self.spare.pop().expect("one spare per record slot");
            header.entries = entries;
            let mut crc = 0u32;
            let mut base_iovs: [IoVec; MAX_IOVS] = [IoVec::empty(); MAX_IOVS];
            let mut n = 1;
            for w in self.pending.drain(..take) {
                let mut wcrc = 0u32;
                if w.op == EntryOp::Write {
                    for v in &w.iovs[..w.iov_count] {
                        // SAFETY: IoVec's contract: valid, and ours until we complete the write.
                        let bytes = unsafe { std::slice::from_raw_parts(v.addr(), v.len()) };
                        wcrc = crc32c::crc32c_append(wcrc, bytes);
                        crc = crc32c::crc32c_append(crc, bytes);
                        base_iovs[n] = *v;
                        n += 1;
                    }
                }
                header
                    .push(Entry {
                        volume: w.volume,
                        lba: w.lba,
                        num_blocks: w.num_blocks,
                        op: w.op,
                        data_crc: wcrc,
                        data_seq: 0,
                    })
                    .expect("sized to fit above");
                slots.push((w.chan, w.slot));
            }
            header.data_crc = crc;
            let hb = header.header_blocks as usize * BLOCK_BYTES;
            header.encode(&mut header_buf.as_mut_slice()[..hb]);
            // SAFETY: the header buffer stays on loan to this record until it completes.
            base_iovs[0] = unsafe { IoVec::from_buf(&mut header_buf, hb) };
            let start_pba = self.pool.segment_first_block(seg) + at;
            self.pool
                .summarize(&header, start_pba + header.header_blocks as u64);
            if let Some(summary) = &mut self.summary {
                summary.note(&header, (at + header.header_blocks as u64) as usize);
            }
            let req = IoRequest {
                io_type: IoType::Write,
                offset_blocks: start_pba,
                num_blocks: blocks,
                iovs: &base_iovs[..n],
                fua: self.pool.fua_records(),
                tag: slot_idx as u64,
            };
            self.pool.usage.record_started(seg);
            match self.base.submit(&req, 0) {
                Ok(()) => {
                    self.order.push_back(slot_idx);
                    self.outcome[slot_idx] = None;
                    self.records[slot_idx] = Some(InFlightRecord {
                        first_data_pba: start_pba + header.header_blocks as u64,
                        header,
                        header_buf,
                        slots,
                    });
                }
                Err(e) => {
                    tracing::error!("lsv record submit failed: {e}");
                    // Its blocks stay unwritten: a hole that recovery would stop at, so
                    // nothing more goes into this segment.
                    if let Some(h) = self.head.take() {
                        self.pool
                            .usage
                            .transition(h.seg, SegmentState::Open, SegmentState::Sealed);
                    }
                    self.pool.usage.note_failed_record(seg);
                    self.pool.usage.record_finished(seg);
                    // A journal entry still in flight (this segment's, just submitted)
                    // keeps the record counted until it lands (`LsvPool::writes_stopped`).
                    if self.journal_buf.is_some() {
                        self.records_awaiting_journal += 1;
                    } else {
                        self.pool.record_done();
                    }
                    self.publish_oldest();
                    self.headers.put(header_buf);
                    for &(chan, slot) in &slots {
                        self.complete(chan, slot, IoStatus::Failed(libc::EIO));
                    }
                    header.entries.clear();
                    slots.clear();
                    self.spare.push((header.entries, slots));
                }
            }
        }
    }

    /// Notes a record's outcome, then applies and acknowledges every record at the head of
    /// the log order whose write has completed. A failed record fails every record behind it
    /// (they sit beyond a hole that recovery would stop at) and closes the segment.
    fn record_completed(&mut self, idx: usize, status: IoStatus) {
        self.outcome[idx] = Some(status);
        let mut failed = false;
        while let Some(&front) = self.order.front() {
            let Some(status) = self.outcome[front] else {
                break;
            };
            self.order.pop_front();
            self.outcome[front] = None;
            if front == SUMMARY_SLOT {
                // A hint: it fails no record, whatever became of it or of those before it.
                self.doomed[front] = false;
                self.summary_written(status);
                continue;
            }
            // Doomed: behind a record that failed earlier; it fails, but opens no new hole
            // (what lies behind it was doomed with it, and the segment is sealed already).
            let doomed = std::mem::take(&mut self.doomed[front]);
            let status = if failed || doomed {
                IoStatus::Failed(libc::EIO)
            } else {
                status
            };
            if status != IoStatus::Success && !failed && !doomed {
                failed = true;
                if let Some(h) = self.head.take() {
                    self.pool
                        .usage
                        .transition(h.seg, SegmentState::Open, SegmentState::Sealed);
                }
            }
            if front == JOURNAL_SLOT {
                // The records behind it in the order may now be acknowledged.
                if status != IoStatus::Success {
                    tracing::error!("lsv journal entry write failed: {status:?}");
                }
                let buf = self
                    .journal_buf
                    .take()
                    .expect("a journal write was in flight");
                self.headers.put(buf);
                self.release_records_awaiting_journal();
                continue;
            }
            self.finish_record(front, status);
        }
        if failed {
            // Everything still in the order lies beyond the hole: it fails when it reaches
            // the front (the flag is taken there, so none outlives its record).
            for &behind in &self.order {
                self.doomed[behind] = true;
            }
        }
        self.publish_oldest();
    }

    /// Counts as done the records that failed to submit while a journal entry was in flight
    /// (it has landed now).
    fn release_records_awaiting_journal(&mut self) {
        for _ in 0..std::mem::take(&mut self.records_awaiting_journal) {
            self.pool.record_done();
        }
    }

    /// Tells the pool the oldest record this writer still has in flight (for checkpoints).
    fn publish_oldest(&self) {
        let oldest = self
            .order
            .iter()
            .find(|&&i| i < RECORDS_IN_FLIGHT)
            .and_then(|&i| self.records[i].as_ref())
            .map(|r| r.header.seq);
        self.pool.head_oldest(self.log_head, oldest);
    }

    fn finish_record(&mut self, idx: usize, status: IoStatus) {
        let Some(mut rec) = self.records[idx].take() else {
            return;
        };
        if status == IoStatus::Success {
            self.last_completed_seq = rec.header.seq;
            if self.pool.fua_records() {
                self.durable_seq = rec.header.seq;
            }
            self.pool.apply_record(
                &rec.header,
                rec.first_data_pba,
                &mut self.deltas,
                Applying::Live,
                &self.tables,
            );
            self.pool.count_record(&rec.header);
            // Before the record stops counting as in flight: a sealed segment with none in
            // flight must show its true live count (the cleaner frees one showing 0 unread).
            self.pool.apply_deltas(&mut self.deltas);
        } else {
            self.pool.usage.note_failed_record(rec.header.segment);
        }
        self.pool.usage.record_finished(rec.header.segment);
        self.pool.record_done();
        self.headers.put(rec.header_buf);
        for &(chan, slot) in &rec.slots {
            self.complete(chan, slot, status);
        }
        rec.header.entries.clear();
        rec.slots.clear();
        self.spare.push((rec.header.entries, rec.slots));
    }
}

impl Drop for LogWriter {
    /// The last channel closed: seal the open segment, so it is not left open for ever, and
    /// give the log head back.
    fn drop(&mut self) {
        // A journal entry may still be in flight (its record failed to submit, and failed
        // its writes at once): wait it out, its buffer is ours. Not the I/O path.
        let mut done = Vec::new();
        self.base.drain(&mut done);
        // A segment summary's write is over too (its completion may have come earlier, while
        // a record ahead of it in the order had not): it is counted until then.
        if self.summary_writing() {
            let status = done
                .iter()
                .find(|c| c.tag == SUMMARY_SLOT as u64)
                .map_or(IoStatus::Success, |c| c.status);
            self.summary_written(status);
        }
        self.release_records_awaiting_journal();
        // Records still here (their completions came in the drain above, not applied) are
        // in flight no more: the pool's count must say so (`LsvPool::writes_stopped`).
        // Their writes were never acknowledged nor mapped: their blocks are garbage, as a
        // failed record's (and their segments may be cleaned again).
        for r in self.records.iter_mut() {
            if let Some(rec) = r.take() {
                self.pool.usage.note_failed_record(rec.header.segment);
                self.pool.usage.record_finished(rec.header.segment);
                self.pool.record_done();
            }
        }
        if let Some(h) = self.head.take() {
            self.pool
                .usage
                .transition(h.seg, SegmentState::Open, SegmentState::Sealed);
        }
        self.pool.release_head(self.log_head);
    }
}
