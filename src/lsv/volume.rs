//! A volume: a thin bdev whose writes are appended to the pool's log.
//!
//! Each channel (one per reactor) keeps its own log head: an open segment and the next free
//! block in it. Writes that arrive between two polls are gathered into one record (group
//! commit): a header block, then every write's data, written with one vectored write to the
//! base bdev. When it completes, the extent table points each block at its new home and the
//! writes are acknowledged: they are as durable as the base bdev makes a completed write
//! (a write-back cache, like a disk's). FLUSH then issues one flush of the base bdev, which
//! covers every write acknowledged before it on any channel. A pool created with
//! `fua_records` writes every record with FUA instead: acknowledged means durable, and FLUSH
//! has nothing left to do. Reads look each block up and read runs of contiguous pool blocks; blocks never
//! written, or unmapped, read as zeroes. UNMAP and WRITE_ZEROES are records without data.
//!
//! Limits of this version: a log head per (volume, reactor) rather than per reactor; at most
//! 63 writes and 4 MiB of data per record; 8 iovecs per write; no cleaner, so a pool whose
//! free segments are used up fails writes with ENOSPC.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};
use uuid::Uuid;

use super::extent_table::{ExtentTable, Mapping};
use super::pool::{LsvPool, VolumeMeta, CLEANER_RESERVE_SEGMENTS, MAX_LOG_HEADS};
use super::record::{
    header_blocks_for, Entry, EntryOp, RecordHeader, BLOCK_BYTES, MAX_DATA_BLOCKS,
};
use super::usage::{SegmentState, UsageDeltas};
use crate::bdev::{
    Bdev, BdevChannel, BdevError, ChannelContext, IoChannel, IoCompletion, IoRequest, IoStatus,
    IoType, IoVec, SlotCompletion, SubmitError, MAX_IOVS,
};
use crate::mem::{BufferPool, BufferPoolConfig, DmaBuf};

/// Writes gathered into one record at most (one header block holds 126 entries; the iovec
/// budget of one base request is the tighter bound).
pub const MAX_WRITES_PER_RECORD: usize = 63;
/// Records in flight from which a channel holds small batches back to let them grow, and
/// the record size (data blocks) a held batch grows to before it goes anyway.
const BATCH_WHEN_IN_FLIGHT: usize = 2;
const BATCH_TARGET_BLOCKS: u32 = 64;
/// Records one channel has in flight at once.
pub const RECORDS_IN_FLIGHT: usize = 8;
/// Iovecs one write may carry.
pub const MAX_WRITE_IOVS: usize = 8;
/// Blocks one UNMAP / WRITE_ZEROES may cover (each block is one extent-table update).
pub const MAX_UNMAP_BLOCKS: u64 = 1 << 20;
/// Blocks one READ may cover (each contiguous run of pool blocks is one base read).
pub const MAX_READ_BLOCKS: u64 = 64;

pub struct LsvVolume {
    pool: Arc<LsvPool>,
    meta: VolumeMeta,
    table: Arc<ExtentTable>,
    bdev_name: String,
}

impl LsvVolume {
    pub fn new(pool: Arc<LsvPool>, meta: VolumeMeta, table: Arc<ExtentTable>) -> LsvVolume {
        let bdev_name = format!("{}/{}", pool.name, meta.name);
        LsvVolume {
            pool,
            meta,
            table,
            bdev_name,
        }
    }

    pub fn table(&self) -> &Arc<ExtentTable> {
        &self.table
    }
}

impl Bdev for LsvVolume {
    fn name(&self) -> &str {
        &self.bdev_name
    }
    fn uuid(&self) -> Uuid {
        self.meta.uuid
    }
    fn block_size(&self) -> u32 {
        BLOCK_BYTES as u32
    }
    fn num_blocks(&self) -> u64 {
        self.table.num_blocks()
    }
    fn product_name(&self) -> &'static str {
        "Logical Volume"
    }
    fn supports(&self, _io_type: IoType) -> bool {
        true
    }
    fn max_iovs(&self) -> usize {
        MAX_WRITE_IOVS
    }
    fn max_rw_blocks(&self) -> u64 {
        MAX_READ_BLOCKS.min(MAX_DATA_BLOCKS as u64)
    }
    fn create_channel(&self, ctx: &ChannelContext) -> Result<Box<dyn BdevChannel>, BdevError> {
        let qd = ctx.queue_depth as usize;
        // Record headers come from a small pool of the channel's own, so that the caller's
        // use of the reactor's pool can never starve the log of header buffers.
        let headers = Rc::new(
            BufferPool::new(BufferPoolConfig {
                buf_bytes: BLOCK_BYTES,
                count: RECORDS_IN_FLIGHT,
                try_hugepages: false,
            })
            .map_err(|e| BdevError::Channel(e.to_string()))?,
        );
        // Every read may need a base read per block in the worst case.
        let base_qd = (qd * MAX_READ_BLOCKS as usize + RECORDS_IN_FLIGHT).min(4096);
        let base = self.pool.base.open_channel(&ChannelContext {
            queue_depth: base_qd as u32,
            buffers: ctx.buffers.clone(),
        })?;
        let log_head = self.pool.claim_head().ok_or_else(|| {
            BdevError::Channel(format!(
                "pool {:?} has no free log head (at most {MAX_LOG_HEADS} channels)",
                self.pool.name
            ))
        })?;
        Ok(Box::new(VolumeChannel {
            record_writes: (qd / 2).clamp(4, MAX_WRITES_PER_RECORD),
            last_completed_seq: 0,
            durable_seq: 0,
            flush_mark: vec![0; qd],
            log_head,
            pool: self.pool.clone(),
            volume: self.meta.id as u64,
            table: self.table.clone(),
            base,
            headers,
            head: None,
            pending: Vec::with_capacity(qd),
            records: (0..RECORDS_IN_FLIGHT).map(|_| None).collect(),
            order: std::collections::VecDeque::with_capacity(RECORDS_IN_FLIGHT),
            outcome: vec![None; RECORDS_IN_FLIGHT],
            read_parts: vec![0; qd],
            read_status: vec![IoStatus::Success; qd],
            done: Vec::with_capacity(qd),
            base_done: Vec::with_capacity(qd + RECORDS_IN_FLIGHT),
            deltas: UsageDeltas::default(),
            runs: Vec::with_capacity(MAX_READ_BLOCKS as usize),
            doomed: vec![false; RECORDS_IN_FLIGHT],
            spare: (0..RECORDS_IN_FLIGHT)
                .map(|_| {
                    (
                        Vec::with_capacity(MAX_WRITES_PER_RECORD),
                        Vec::with_capacity(MAX_WRITES_PER_RECORD),
                    )
                })
                .collect(),
        }))
    }
    fn driver_info(&self) -> Value {
        json!({ "lvol": { "lvol_store_uuid": self.pool.sb.uuid.to_string(), "base_bdev": self.pool.base.bdev.name(), "thin_provision": true } })
    }
    /// Nothing: a volume is brought back by examine when its pool's base bdev is created.
    fn config_json(&self) -> Value {
        Value::Null
    }
}

struct PendingWrite {
    slot: u32,
    op: EntryOp,
    lba: u64,
    num_blocks: u32,
    iovs: [IoVec; MAX_WRITE_IOVS],
    iov_count: usize,
}

struct Head {
    seg: u64,
    next_block: u64,
    /// The seq of this segment's first record (0 until it is numbered).
    epoch: u64,
}

struct InFlightRecord {
    header: RecordHeader,
    header_buf: DmaBuf,
    first_data_pba: u64,
    slots: Vec<u32>,
}

/// Base-channel tags: records and read parts.
const READ_TAG: u64 = 1 << 40;
const FLUSH_TAG: u64 = 1 << 41;

struct VolumeChannel {
    pool: Arc<LsvPool>,
    /// Writes one record takes at most: half the channel's queue depth (so two records can
    /// be in flight, the device working on one while the next fills), within 4..=63.
    record_writes: usize,
    /// The newest record of this channel that completed, and the newest known durable
    /// (completed before one of our flushes was issued, or written with FUA).
    last_completed_seq: u64,
    durable_seq: u64,
    /// Per slot: `last_completed_seq` when that slot's FLUSH was issued.
    flush_mark: Vec<u64>,
    /// This channel's slot in the pool's log-head table.
    log_head: usize,
    volume: u64,
    table: Arc<ExtentTable>,
    base: IoChannel,
    headers: Rc<BufferPool>,
    head: Option<Head>,
    pending: Vec<PendingWrite>,
    records: Vec<Option<InFlightRecord>>,
    /// Record slots in the order their records were placed in the log, and each one's
    /// outcome once its write completes. Records are applied and acknowledged strictly in
    /// this order, so the acknowledged records are always an unbroken prefix of the log:
    /// recovery reads a segment's chain up to its first hole, and nothing acknowledged can
    /// lie beyond one.
    order: std::collections::VecDeque<usize>,
    outcome: Vec<Option<IoStatus>>,
    read_parts: Vec<u32>,
    read_status: Vec<IoStatus>,
    done: Vec<SlotCompletion>,
    base_done: Vec<IoCompletion>,
    deltas: UsageDeltas,
    /// Entry and slot vectors of finished records, one per record slot, reused so that
    /// building a record allocates nothing.
    spare: Vec<(Vec<Entry>, Vec<u32>)>,
    /// Record slots in flight behind a failed record; they fail when they complete.
    doomed: Vec<bool>,
    /// Scratch for one read's runs: (first pool block, blocks, destination).
    runs: Vec<(u64, u64, *mut u8)>,
}

impl VolumeChannel {
    fn blocks_per_segment(&self) -> u64 {
        self.pool.sb.segment_bytes / BLOCK_BYTES as u64
    }

    fn pending_blocks(&self) -> u32 {
        self.pending
            .iter()
            .filter(|w| w.op == EntryOp::Write)
            .map(|w| w.num_blocks)
            .sum()
    }

    /// Room for `blocks` in the open segment, sealing it and opening another when full.
    /// With a cleaner running, the last free segments are left to it.
    fn reserve(&mut self, blocks: u64) -> Option<(u64, u64)> {
        if let Some(h) = &self.head {
            if h.next_block + blocks <= self.blocks_per_segment() {
                let at = (h.seg, h.next_block);
                self.head.as_mut().expect("checked").next_block += blocks;
                return Some(at);
            }
            let sealed =
                self.pool
                    .usage
                    .transition(h.seg, SegmentState::Open, SegmentState::Sealed);
            debug_assert!(sealed);
            self.head = None;
        }
        let keep = if self.pool.cleaner_attached.load(Ordering::Relaxed) {
            CLEANER_RESERVE_SEGMENTS
        } else {
            0
        };
        let seg = self.pool.usage.open_free(keep)?;
        self.head = Some(Head {
            seg,
            next_block: blocks,
            epoch: 0,
        });
        Some((seg, 0))
    }

    /// Whether writes that find no room must fail now (no cleaner, or it can free nothing);
    /// otherwise they wait for the cleaner.
    fn out_of_space(&self) -> bool {
        !self.pool.cleaner_attached.load(Ordering::Relaxed)
            || self.pool.full.load(Ordering::Acquire)
    }

    /// Turns the writes gathered this pass into records and submits them.
    fn commit(&mut self) {
        while !self.pending.is_empty() {
            // Group commit: while the device already has records of ours to work on, let
            // small batches grow into large records (the device's large-write speed is the
            // point of the log); an idle device gets whatever is pending at once.
            if self.order.len() >= BATCH_WHEN_IN_FLIGHT
                && self.pending.len() < self.record_writes
                && self.pending_blocks() < BATCH_TARGET_BLOCKS
            {
                return;
            }
            let Some(slot_idx) = self.records.iter().position(|r| r.is_none()) else {
                return; // all record slots busy: the rest waits for the next pass
            };
            // Take as many pending writes as fit one record.
            let mut take = 0;
            let mut data_blocks = 0u32;
            let mut iovs = 1;
            for w in &self.pending {
                let d = if w.op == EntryOp::Write {
                    w.num_blocks
                } else {
                    0
                };
                if take == self.record_writes
                    || data_blocks + d > MAX_DATA_BLOCKS
                    || iovs + w.iov_count > MAX_IOVS
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
            if !self.pool.admit_user_record(blocks) {
                return;
            }
            // A free record slot implies a free header buffer (both RECORDS_IN_FLIGHT).
            let Some(mut header_buf) = self.headers.get() else {
                self.pool.grant_credit(blocks);
                return;
            };
            let Some((seg, at)) = self.reserve(blocks) else {
                self.headers.put(header_buf);
                self.pool.grant_credit(blocks);
                if !self.out_of_space() {
                    return; // the cleaner is making room: try again next pass
                }
                // Pool full: fail what cannot be logged (writes and unmaps alike); reads go on.
                for w in self.pending.drain(..take) {
                    self.done.push(SlotCompletion {
                        slot: w.slot,
                        status: IoStatus::Failed(libc::ENOSPC),
                    });
                }
                continue;
            };
            let seq = self.pool.next_seq(self.log_head);
            let head = self.head.as_mut().expect("reserved above");
            if at == 0 {
                head.epoch = seq;
            }
            let mut header = RecordHeader::new(seq, seg, head.epoch);
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
                        volume: self.volume,
                        lba: w.lba,
                        num_blocks: w.num_blocks,
                        op: w.op,
                        data_crc: wcrc,
                        data_seq: 0,
                    })
                    .expect("sized to fit above");
                slots.push(w.slot);
            }
            header.data_crc = crc;
            let hb = header.header_blocks as usize * BLOCK_BYTES;
            header.encode(&mut header_buf.as_mut_slice()[..hb]);
            // SAFETY: the header buffer stays on loan to this record until it completes.
            base_iovs[0] = unsafe { IoVec::from_buf(&mut header_buf, hb) };
            let start_pba = self.pool.segment_first_block(seg) + at;
            self.pool
                .summarize(&header, start_pba + header.header_blocks as u64);
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
                    self.pool.usage.record_finished(seg);
                    self.pool.record_done();
                    self.publish_oldest();
                    self.headers.put(header_buf);
                    for &s in &slots {
                        self.done.push(SlotCompletion {
                            slot: s,
                            status: IoStatus::Failed(libc::EIO),
                        });
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
            let status = if failed {
                IoStatus::Failed(libc::EIO)
            } else {
                status
            };
            if status != IoStatus::Success && !failed {
                failed = true;
                if let Some(h) = self.head.take() {
                    self.pool
                        .usage
                        .transition(h.seg, SegmentState::Open, SegmentState::Sealed);
                }
            }
            self.finish_record(front, status);
        }
        if failed {
            for &behind in &self.order {
                self.doomed[behind] = true;
            }
        }
        self.publish_oldest();
    }

    /// Tells the pool the oldest record this channel still has in flight (for checkpoints).
    fn publish_oldest(&self) {
        let oldest = self
            .order
            .front()
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
                true,
                Some(&self.table),
            );
            self.pool.count_record(&rec.header);
        }
        self.pool.usage.record_finished(rec.header.segment);
        self.pool.record_done();
        self.headers.put(rec.header_buf);
        for &s in &rec.slots {
            self.done.push(SlotCompletion { slot: s, status });
        }
        rec.header.entries.clear();
        rec.slots.clear();
        self.spare.push((rec.header.entries, rec.slots));
    }

    fn submit_read(&mut self, slot: u32, req: &IoRequest<'_>) -> Result<(), SubmitError> {
        if req.num_blocks > MAX_READ_BLOCKS {
            return Err(SubmitError::BadLength {
                count: req.num_blocks,
            });
        }
        // Map each block of the request to its place in the caller's iovecs, zero the
        // unmapped ones, and gather runs of contiguous pool blocks into `runs`.
        self.runs.clear();
        let mut block = 0u64;
        for v in req.iovs {
            if v.len() % BLOCK_BYTES != 0 {
                return Err(SubmitError::Unsupported(IoType::Read));
            }
            for k in 0..(v.len() / BLOCK_BYTES) {
                // SAFETY: inside the caller's iovec (k < len / 4096).
                let dst = unsafe { v.addr().add(k * BLOCK_BYTES) };
                match self.table.lookup(req.offset_blocks + block) {
                    // SAFETY: one block of the caller's memory, ours until completion.
                    Mapping::Zero => unsafe { std::ptr::write_bytes(dst, 0, BLOCK_BYTES) },
                    Mapping::At(pba) => match self.runs.last_mut() {
                        Some((p, n, d))
                            if *p + *n == pba
                                && *d as usize + *n as usize * BLOCK_BYTES == dst as usize =>
                        {
                            *n += 1
                        }
                        _ => self.runs.push((pba, 1, dst)),
                    },
                }
                block += 1;
            }
        }
        let room = self.base.queue_depth() - self.base.in_flight();
        if self.runs.len() as u32 > room {
            return Err(SubmitError::QueueFull(self.base.queue_depth()));
        }
        self.read_status[slot as usize] = IoStatus::Success;
        self.read_parts[slot as usize] = self.runs.len() as u32;
        if self.runs.is_empty() {
            self.done.push(SlotCompletion {
                slot,
                status: IoStatus::Success,
            });
            return Ok(());
        }
        for i in 0..self.runs.len() {
            let (pba, blocks, dst) = self.runs[i];
            // SAFETY: the run lies in one of the caller's iovecs (it only grew while it stayed
            // contiguous inside it), ours until this read completes.
            let iov = unsafe { IoVec::from_raw(dst, blocks as usize * BLOCK_BYTES) };
            let r = self.base.submit(
                &IoRequest {
                    io_type: IoType::Read,
                    offset_blocks: pba,
                    num_blocks: blocks,
                    iovs: &[iov],
                    fua: false,
                    tag: READ_TAG | slot as u64,
                },
                0,
            );
            // Room was checked above, and every run lies inside the base bdev.
            debug_assert!(r.is_ok(), "read part refused: {r:?}");
            if r.is_err() {
                self.read_parts[slot as usize] -= 1;
                self.read_status[slot as usize] = IoStatus::Failed(libc::EIO);
            }
        }
        if self.read_parts[slot as usize] == 0 {
            self.done.push(SlotCompletion {
                slot,
                status: self.read_status[slot as usize],
            });
        }
        Ok(())
    }
}

impl BdevChannel for VolumeChannel {
    fn submit(&mut self, slot: u32, req: &IoRequest<'_>) -> Result<(), SubmitError> {
        // The volume may have shrunk since this channel opened.
        let size = self.table.num_blocks();
        if req.io_type != IoType::Flush
            && req
                .offset_blocks
                .checked_add(req.num_blocks)
                .is_none_or(|end| end > size)
        {
            return Err(SubmitError::OutOfRange {
                offset: req.offset_blocks,
                count: req.num_blocks,
                num_blocks: size,
            });
        }
        match req.io_type {
            IoType::Read => self.submit_read(slot, req),
            IoType::Write | IoType::Unmap | IoType::WriteZeroes => {
                if req.iovs.len() > MAX_WRITE_IOVS {
                    return Err(SubmitError::TooManyIovs(req.iovs.len()));
                }
                let write = req.io_type == IoType::Write;
                if !write && req.num_blocks > MAX_UNMAP_BLOCKS {
                    return Err(SubmitError::BadLength {
                        count: req.num_blocks,
                    });
                }
                if write && req.num_blocks > MAX_DATA_BLOCKS as u64 {
                    return Err(SubmitError::BadLength {
                        count: req.num_blocks,
                    });
                }
                let mut iovs = [IoVec::empty(); MAX_WRITE_IOVS];
                for (d, s) in iovs.iter_mut().zip(req.iovs) {
                    *d = *s;
                }
                self.pending.push(PendingWrite {
                    slot,
                    op: if write {
                        EntryOp::Write
                    } else {
                        EntryOp::Unmap
                    },
                    lba: req.offset_blocks,
                    num_blocks: req.num_blocks as u32,
                    iovs,
                    iov_count: if write { req.iovs.len() } else { 0 },
                });
                Ok(())
            }
            // Every acknowledged write's record has completed, on this channel or any other
            // (records are acknowledged when their write completes): one flush of the base
            // bdev, issued now, makes them all durable. With FUA records nothing is left.
            IoType::Flush => {
                if self.pool.fua_records() {
                    self.done.push(SlotCompletion {
                        slot,
                        status: IoStatus::Success,
                    });
                    return Ok(());
                }
                self.flush_mark[slot as usize] = self.last_completed_seq;
                self.base.submit(
                    &IoRequest {
                        io_type: IoType::Flush,
                        offset_blocks: 0,
                        num_blocks: 0,
                        iovs: &[],
                        fua: false,
                        tag: FLUSH_TAG | slot as u64,
                    },
                    0,
                )
            }
        }
    }

    fn poll(&mut self, done: &mut Vec<SlotCompletion>) {
        self.commit();
        self.base_done.clear();
        let mut base_done = std::mem::take(&mut self.base_done);
        self.base.poll(0, &mut base_done);
        for c in base_done.drain(..) {
            if c.tag & FLUSH_TAG != 0 {
                let slot = (c.tag & !FLUSH_TAG) as u32;
                if c.status == IoStatus::Success {
                    self.durable_seq = self.durable_seq.max(self.flush_mark[slot as usize]);
                }
                self.done.push(SlotCompletion {
                    slot,
                    status: c.status,
                });
            } else if c.tag & READ_TAG != 0 {
                let slot = (c.tag & !READ_TAG) as usize;
                if c.status != IoStatus::Success {
                    self.read_status[slot] = c.status;
                }
                self.read_parts[slot] -= 1;
                if self.read_parts[slot] == 0 {
                    self.done.push(SlotCompletion {
                        slot: slot as u32,
                        status: self.read_status[slot],
                    });
                }
            } else {
                let idx = c.tag as usize;
                let status = if std::mem::take(&mut self.doomed[idx]) {
                    IoStatus::Failed(libc::EIO)
                } else {
                    c.status
                };
                self.record_completed(idx, status);
            }
        }
        self.base_done = base_done;
        self.pool.apply_deltas(&mut self.deltas);
        done.append(&mut self.done);
    }
}

impl Drop for VolumeChannel {
    /// A closing channel seals its open segment, so the segment is not left open for ever.
    fn drop(&mut self) {
        if let Some(h) = self.head.take() {
            self.pool
                .usage
                .transition(h.seg, SegmentState::Open, SegmentState::Sealed);
        }
        self.pool.release_head(self.log_head);
    }
}
