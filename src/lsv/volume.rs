//! A volume: a thin bdev whose writes are appended to the pool's log.
//!
//! A channel (one per reactor) hands its writes, unmaps and write-zeroes to its reactor's
//! `LogWriter` for the pool, which every volume of the pool on that reactor shares: writes of
//! all of them that arrive between two polls go out as one record (see `log_writer.rs`).
//! They are acknowledged when their record completes: as durable as the base bdev makes a
//! completed write (a write-back cache, like a disk's). FLUSH then issues one flush of the base bdev, which
//! covers every write acknowledged before it on any channel. A pool created with
//! `fua_records` writes every record with FUA instead: acknowledged means durable, and FLUSH
//! has nothing left to do. Reads look each block up and read runs of contiguous pool blocks; blocks never
//! written, or unmapped, read as zeroes. UNMAP and WRITE_ZEROES are records without data.
//!
//! Limits: at most 63 writes and 4 MiB of data per record; 8 iovecs per write; 64 blocks
//! per read; 2^20 blocks per unmap.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use serde_json::{json, Value};
use uuid::Uuid;

use super::extent_table::{ExtentTable, Mapping};
use super::log_writer::{LogWriter, PendingWrite, MAX_WRITE_IOVS};
use super::pool::{LsvPool, VolumeMeta};
use super::record::{EntryOp, BLOCK_BYTES, MAX_DATA_BLOCKS};
use crate::bdev::{
    Bdev, BdevChannel, BdevError, ChannelContext, IoChannel, IoCompletion, IoRequest, IoStatus,
    IoType, IoVec, SlotCompletion, SubmitError,
};

/// Blocks one UNMAP / WRITE_ZEROES may cover (each block is one extent-table update).
pub const MAX_UNMAP_BLOCKS: u64 = 1 << 20;
/// Blocks one READ may cover (each contiguous run of pool blocks is one base read).
pub const MAX_READ_BLOCKS: u64 = 64;

pub struct LsvVolume {
    pool: Arc<LsvPool>,
    meta: VolumeMeta,
    table: Arc<ExtentTable>,
    bdev_name: String,
    /// Tests: channels get a log writer of their own, as if each were on its own reactor.
    #[cfg(test)]
    own_log: bool,
}

/// The bdev name of volume `volume` of pool `pool` (SPDK's lvol alias): `pool/volume`.
pub fn volume_bdev_name(pool: &str, volume: &str) -> String {
    format!("{pool}/{volume}")
}

impl LsvVolume {
    pub fn new(pool: Arc<LsvPool>, meta: VolumeMeta, table: Arc<ExtentTable>) -> LsvVolume {
        let bdev_name = volume_bdev_name(&pool.name, &meta.name);
        LsvVolume {
            pool,
            meta,
            table,
            bdev_name,
            #[cfg(test)]
            own_log: false,
        }
    }

    /// Tests: each channel gets a log writer of its own (two "reactors" on one thread).
    #[cfg(test)]
    pub fn with_own_log(mut self) -> LsvVolume {
        self.own_log = true;
        self
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
    fn resizable(&self) -> bool {
        true
    }
    fn create_channel(&self, ctx: &ChannelContext) -> Result<Box<dyn BdevChannel>, BdevError> {
        let qd = ctx.queue_depth as usize;
        // Every read may need a base read per block in the worst case.
        let base_qd = (qd * MAX_READ_BLOCKS as usize).min(4096);
        let base = self.pool.base.open_channel(&ChannelContext {
            queue_depth: base_qd as u32,
            buffers: ctx.buffers.clone(),
        })?;
        let volume = self.meta.id as u64;
        #[cfg(test)]
        let shared = !self.own_log;
        #[cfg(not(test))]
        let shared = true;
        let (writer, chan) = LogWriter::open(&self.pool, volume, &self.table, ctx, shared)?;
        Ok(Box::new(VolumeChannel {
            pool: self.pool.clone(),
            writer,
            chan,
            flush_mark: vec![0; qd],
            volume,
            table: self.table.clone(),
            base,
            read_parts: vec![0; qd],
            read_status: vec![IoStatus::Success; qd],
            done: Vec::with_capacity(qd),
            base_done: Vec::with_capacity(qd),
            runs: Vec::with_capacity(MAX_READ_BLOCKS as usize),
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

/// Base-channel tags: records and read parts.
const READ_TAG: u64 = 1 << 40;
const FLUSH_TAG: u64 = 1 << 41;

struct VolumeChannel {
    pool: Arc<LsvPool>,
    /// This reactor's log writer for the pool, shared with its other volume channels, and
    /// this channel's id in it.
    writer: Rc<RefCell<LogWriter>>,
    chan: u32,
    /// Per slot: the writer's `last_completed_seq` when that slot's FLUSH was issued.
    flush_mark: Vec<u64>,
    volume: u64,
    table: Arc<ExtentTable>,
    /// Reads and flushes (records go through the writer's own channel).
    base: IoChannel,
    read_parts: Vec<u32>,
    read_status: Vec<IoStatus>,
    done: Vec<SlotCompletion>,
    base_done: Vec<IoCompletion>,
    /// Scratch for one read's runs: (first pool block, blocks, destination).
    runs: Vec<(u64, u64, *mut u8)>,
}

impl VolumeChannel {
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
        // The volume was deleted since this channel opened.
        if self.table.retired() {
            self.done.push(SlotCompletion {
                slot,
                status: IoStatus::Failed(libc::ENODEV),
            });
            return Ok(());
        }
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
                // A write and its record's header fit one segment (records never span two).
                if write
                    && (req.num_blocks > MAX_DATA_BLOCKS as u64
                        || req.num_blocks >= self.pool.seg_blocks as u64)
                {
                    return Err(SubmitError::BadLength {
                        count: req.num_blocks,
                    });
                }
                let mut iovs = [IoVec::empty(); MAX_WRITE_IOVS];
                for (d, s) in iovs.iter_mut().zip(req.iovs) {
                    *d = *s;
                }
                self.writer.borrow_mut().push(PendingWrite {
                    chan: self.chan,
                    slot,
                    volume: self.volume,
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
                self.flush_mark[slot as usize] = self.writer.borrow().last_completed_seq;
                self.base
                    .submit(&IoRequest::flush(FLUSH_TAG | slot as u64), 0)
            }
        }
    }

    fn poll(&mut self, done: &mut Vec<SlotCompletion>) {
        {
            let mut writer = self.writer.borrow_mut();
            writer.poll();
            writer.take_done(self.chan, &mut self.done);
        }
        if self.base.in_flight() > 0 {
            self.base_done.clear();
            let mut base_done = std::mem::take(&mut self.base_done);
            self.base.poll(0, &mut base_done);
            for c in base_done.drain(..) {
                if c.tag & FLUSH_TAG != 0 {
                    let slot = (c.tag & !FLUSH_TAG) as u32;
                    if c.status == IoStatus::Success {
                        let mut w = self.writer.borrow_mut();
                        w.durable_seq = w.durable_seq.max(self.flush_mark[slot as usize]);
                    }
                    self.done.push(SlotCompletion {
                        slot,
                        status: c.status,
                    });
                } else {
                    debug_assert!(c.tag & READ_TAG != 0);
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
                }
            }
            self.base_done = base_done;
        }
        done.append(&mut self.done);
    }
}

impl Drop for VolumeChannel {
    fn drop(&mut self) {
        self.writer.borrow_mut().unregister(self.chan);
    }
}
