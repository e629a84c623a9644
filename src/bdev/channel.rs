//! `IoChannel`: the bdev layer's per-reactor handle on a bdev.
//!
//! It checks each request against the bdev's geometry before the module sees it, assigns it a
//! slot from a preallocated table (so nothing is allocated per I/O), records statistics, and
//! hands completions back with the caller's tag and the I/O's latency.

use std::sync::Arc;

use crossbeam_utils::CachePadded;

use super::iostat::{BdevIoStat, ChannelStats};
use super::{
    Bdev, BdevChannel, BdevError, ChannelContext, IoRequest, IoStatus, IoType, SlotCompletion,
    SubmitError, MAX_DATA_BYTES, MAX_IOVS, MAX_QUEUE_DEPTH,
};

/// A finished request, as the caller sees it.
#[derive(Debug, Clone, Copy)]
pub struct IoCompletion {
    pub tag: u64,
    pub io_type: IoType,
    pub status: IoStatus,
    /// From the pass that submitted it to the pass that completed it.
    pub latency_ns: u64,
}

#[derive(Clone, Copy)]
struct Slot {
    tag: u64,
    io_type: IoType,
    bytes: u64,
    submit_ns: u64,
}

pub struct IoChannel {
    module: Box<dyn BdevChannel>,
    block_size: u64,
    num_blocks: u64,
    supported: [bool; 5],
    slots: Box<[Slot]>,
    free_slots: Vec<u32>,
    done: Vec<SlotCompletion>,
    stats: Arc<CachePadded<ChannelStats>>,
    iostat: Arc<BdevIoStat>,
    queue_depth: u32,
}

impl IoChannel {
    /// Opens a channel on the calling reactor with room for `ctx.queue_depth` requests.
    pub fn open(
        bdev: &dyn Bdev,
        iostat: Arc<BdevIoStat>,
        ctx: &ChannelContext,
    ) -> Result<IoChannel, BdevError> {
        if ctx.queue_depth == 0 || ctx.queue_depth > MAX_QUEUE_DEPTH {
            return Err(BdevError::Channel(format!(
                "queue depth {} is outside 1..={MAX_QUEUE_DEPTH}",
                ctx.queue_depth
            )));
        }
        let module = bdev.create_channel(ctx)?;
        let stats = iostat.attach().ok_or_else(|| {
            BdevError::Channel(format!("bdev {} has too many open channels", bdev.name()))
        })?;
        let qd = ctx.queue_depth;
        let empty = Slot {
            tag: 0,
            io_type: IoType::Read,
            bytes: 0,
            submit_ns: 0,
        };
        Ok(IoChannel {
            module,
            block_size: bdev.block_size() as u64,
            // A resizable bdev's module checks the range against its size now.
            num_blocks: if bdev.resizable() {
                u64::MAX
            } else {
                bdev.num_blocks()
            },
            supported: IoType::ALL.map(|t| bdev.supports(t)),
            slots: vec![empty; qd as usize].into_boxed_slice(),
            free_slots: (0..qd).rev().collect(),
            done: Vec::with_capacity(qd as usize),
            stats,
            iostat,
            queue_depth: qd,
        })
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// The size requests are checked against here: the bdev's size at open, or u64::MAX
    /// for a resizable bdev (its module checks).
    pub fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    pub fn queue_depth(&self) -> u32 {
        self.queue_depth
    }

    pub fn in_flight(&self) -> u32 {
        self.queue_depth - self.free_slots.len() as u32
    }

    /// Polls until nothing is in flight, yielding the thread between polls, and adds the
    /// completions to `out`. For stops and drops (waiting out I/O on buffers about to go),
    /// not the I/O path.
    pub fn drain(&mut self, out: &mut Vec<IoCompletion>) {
        while self.in_flight() > 0 {
            self.poll(0, out);
            std::thread::yield_now();
        }
    }

    #[inline]
    fn check_range(&self, req: &IoRequest<'_>) -> Result<(), SubmitError> {
        let end = req.offset_blocks.checked_add(req.num_blocks);
        if end.is_none_or(|end| end > self.num_blocks) {
            return Err(SubmitError::OutOfRange {
                offset: req.offset_blocks,
                count: req.num_blocks,
                num_blocks: self.num_blocks,
            });
        }
        Ok(())
    }

    fn check(&self, req: &IoRequest<'_>) -> Result<u64, SubmitError> {
        if !self.supported[req.io_type as usize] {
            return Err(SubmitError::Unsupported(req.io_type));
        }
        if req.io_type == IoType::Flush {
            // A flush covers the whole bdev; a range, if given, must still lie inside it.
            self.check_range(req)?;
            return Ok(0);
        }
        if req.num_blocks == 0 || req.num_blocks > u32::MAX as u64 {
            return Err(SubmitError::BadLength {
                count: req.num_blocks,
            });
        }
        self.check_range(req)?;
        let want_bytes = req.num_blocks * self.block_size;
        if req.io_type.carries_data() {
            if want_bytes > MAX_DATA_BYTES {
                return Err(SubmitError::BadLength {
                    count: req.num_blocks,
                });
            }
            if req.iovs.len() > MAX_IOVS {
                return Err(SubmitError::TooManyIovs(req.iovs.len()));
            }
            let iov_bytes: u64 = req.iovs.iter().map(|v| v.len() as u64).sum();
            if iov_bytes != want_bytes {
                return Err(SubmitError::IovMismatch {
                    iov_bytes,
                    want_bytes,
                });
            }
        }
        Ok(want_bytes)
    }

    /// Submits one request. On error nothing was started.
    #[inline]
    pub fn submit(&mut self, req: &IoRequest<'_>, now_ns: u64) -> Result<(), SubmitError> {
        let bytes = self.check(req)?;
        let Some(slot) = self.free_slots.pop() else {
            return Err(SubmitError::QueueFull(self.queue_depth));
        };
        self.slots[slot as usize] = Slot {
            tag: req.tag,
            io_type: req.io_type,
            bytes,
            submit_ns: now_ns,
        };
        if let Err(e) = self.module.submit(slot, req) {
            self.free_slots.push(slot);
            return Err(e);
        }
        Ok(())
    }

    /// Reaps finished requests into `out` (appending); returns how many. `out` should have
    /// capacity for `queue_depth` entries so that this never allocates.
    #[inline]
    pub fn poll(&mut self, now_ns: u64, out: &mut Vec<IoCompletion>) -> usize {
        debug_assert!(self.done.is_empty());
        self.module.poll(&mut self.done);
        let n = self.done.len();
        for c in self.done.drain(..) {
            let slot = self.slots[c.slot as usize];
            let latency_ns = now_ns.saturating_sub(slot.submit_ns);
            self.stats.record(
                slot.io_type,
                slot.bytes,
                latency_ns,
                c.status == IoStatus::Success,
            );
            self.free_slots.push(c.slot);
            debug_assert!(self.free_slots.len() <= self.queue_depth as usize);
            out.push(IoCompletion {
                tag: slot.tag,
                io_type: slot.io_type,
                status: c.status,
                latency_ns,
            });
        }
        n
    }
}

impl Drop for IoChannel {
    fn drop(&mut self) {
        let in_flight = self.in_flight();
        if in_flight > 0 {
            tracing::warn!(in_flight, "I/O channel closed with requests in flight");
        }
        self.iostat.detach(&self.stats);
    }
}
