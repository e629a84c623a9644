//! The null bdev: every request completes at the next poll; reads return zeroes.

use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    blocks_for_size, check_block_size, Bdev, BdevChannel, BdevError, ChannelContext, IoRequest,
    IoStatus, IoType, SlotCompletion, SubmitError,
};

/// `bdev_null_create`'s parameters, as SPDK names them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullCreateParams {
    pub name: String,
    pub num_blocks: u64,
    pub block_size: u64,
    #[serde(default)]
    pub uuid: Option<Uuid>,
    /// Metadata and protection information are not supported; only 0 is accepted.
    #[serde(default)]
    pub md_size: u32,
    #[serde(default)]
    pub dif_type: u32,
    #[serde(default)]
    pub physical_block_size: Option<u64>,
    /// SPDK's protection-information and alignment hints, accepted and ignored (no DIF here).
    #[serde(default)]
    pub dif_is_head_of_md: bool,
    #[serde(default)]
    pub dif_pi_format: Option<u32>,
    #[serde(default)]
    pub preferred_write_alignment: Option<u32>,
    #[serde(default)]
    pub preferred_write_granularity: Option<u32>,
    #[serde(default)]
    pub optimal_write_size: Option<u32>,
    #[serde(default)]
    pub preferred_unmap_alignment: Option<u32>,
    #[serde(default)]
    pub preferred_unmap_granularity: Option<u32>,
    /// unblend's own (QEMU's null-co calls it the same): whether reads fill buffers with
    /// zeroes (default true). False leaves them untouched, as SPDK's null bdev does, so a
    /// front end is measured without a 4 KiB memset per read.
    #[serde(default)]
    pub read_zeroes: Option<bool>,
}

impl NullCreateParams {
    /// The params SPDK's client sends for a plain null bdev.
    pub fn new(name: &str, num_blocks: u64, block_size: u64) -> NullCreateParams {
        NullCreateParams {
            name: name.to_string(),
            num_blocks,
            block_size,
            uuid: None,
            md_size: 0,
            dif_type: 0,
            physical_block_size: None,
            dif_is_head_of_md: false,
            dif_pi_format: None,
            preferred_write_alignment: None,
            preferred_write_granularity: None,
            optimal_write_size: None,
            preferred_unmap_alignment: None,
            preferred_unmap_granularity: None,
            read_zeroes: None,
        }
    }
}

pub struct NullBdev {
    name: String,
    uuid: Uuid,
    block_size: u32,
    num_blocks: u64,
    zero_reads: bool,
}

impl NullBdev {
    pub fn create(p: &NullCreateParams) -> Result<NullBdev, BdevError> {
        let block_size = check_block_size(p.block_size)?;
        if p.num_blocks == 0 {
            return Err(BdevError::ZeroSize);
        }
        if p.num_blocks.checked_mul(block_size as u64).is_none() {
            return Err(BdevError::Unsupported(format!(
                "null bdev of {} blocks of {block_size} bytes overflows a 64-bit size",
                p.num_blocks
            )));
        }
        if p.md_size != 0 || p.dif_type != 0 {
            return Err(BdevError::Unsupported(
                "null bdev: metadata (md_size) and DIF are not supported".into(),
            ));
        }
        super::check_name(&p.name)?;
        Ok(NullBdev {
            name: p.name.clone(),
            uuid: p.uuid.unwrap_or_else(Uuid::new_v4),
            block_size,
            num_blocks: p.num_blocks,
            zero_reads: p.read_zeroes.unwrap_or(true),
        })
    }

    /// Whether reads fill the caller's buffers with zeroes (the default). With `false` a read
    /// leaves them untouched, as SPDK's null bdev does with caller-supplied buffers: that
    /// measures the stack alone, without a 4 KiB memset per read.
    pub fn set_zero_reads(&mut self, zero_reads: bool) {
        self.zero_reads = zero_reads;
    }

    /// A null bdev of `size_bytes`, for the benchmark and tests.
    pub fn with_size(name: &str, size_bytes: u64, block_size: u64) -> Result<NullBdev, BdevError> {
        let bs = check_block_size(block_size)?;
        NullBdev::create(&NullCreateParams::new(
            name,
            blocks_for_size(size_bytes, bs)?,
            block_size,
        ))
    }
}

impl Bdev for NullBdev {
    fn name(&self) -> &str {
        &self.name
    }
    fn uuid(&self) -> Uuid {
        self.uuid
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }
    fn product_name(&self) -> &'static str {
        "Null disk"
    }
    fn supports(&self, _io_type: IoType) -> bool {
        true
    }
    fn create_channel(&self, ctx: &ChannelContext) -> Result<Box<dyn BdevChannel>, BdevError> {
        Ok(Box::new(NullChannel {
            zero_reads: self.zero_reads,
            pending: Vec::with_capacity(ctx.queue_depth as usize),
        }))
    }
    fn config_json(&self) -> Value {
        let mut params = json!({
            "name": self.name,
            "num_blocks": self.num_blocks,
            "block_size": self.block_size,
            "uuid": self.uuid.to_string(),
        });
        if !self.zero_reads {
            // Only when it differs from the default, so SPDK-made configs stay as they were.
            params["read_zeroes"] = json!(false);
        }
        json!({
            "method": "bdev_null_create",
            "params": params,
        })
    }
}

struct NullChannel {
    zero_reads: bool,
    pending: Vec<SlotCompletion>,
}

impl BdevChannel for NullChannel {
    #[inline]
    fn submit(&mut self, slot: u32, req: &IoRequest<'_>) -> Result<(), SubmitError> {
        if req.io_type == IoType::Read && self.zero_reads {
            for v in req.iovs {
                // SAFETY: IoVec's contract: valid for `len` bytes and ours until completion.
                unsafe { std::ptr::write_bytes(v.addr(), 0, v.len()) };
            }
        }
        // The bdev layer hands out at most queue_depth slots, and `pending` has that capacity.
        debug_assert!(self.pending.len() < self.pending.capacity());
        self.pending.push(SlotCompletion {
            slot,
            status: IoStatus::Success,
        });
        Ok(())
    }

    #[inline]
    fn poll(&mut self, done: &mut Vec<SlotCompletion>) {
        done.append(&mut self.pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::testing::{iov, open, run};
    use std::sync::Arc;

    #[test]
    fn reads_zeroes_and_checks_ranges() {
        let mut ch = open(
            Arc::new(NullBdev::with_size("n", 1 << 20, 4096).unwrap()),
            4,
            None,
        );
        let mut buf = vec![0xffu8; 8192];
        assert_eq!(
            run(&mut ch, IoType::Read, 10, 2, &[iov(&mut buf)]),
            IoStatus::Success
        );
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(
            run(&mut ch, IoType::Write, 0, 2, &[iov(&mut buf)]),
            IoStatus::Success
        );
        assert_eq!(run(&mut ch, IoType::Flush, 0, 0, &[]), IoStatus::Success);
        let req = IoRequest {
            io_type: IoType::Read,
            offset_blocks: 255,
            num_blocks: 2,
            iovs: &[iov(&mut buf)],
            fua: false,
            tag: 0,
        };
        assert!(matches!(
            ch.submit(&req, 0),
            Err(SubmitError::OutOfRange { .. })
        ));
        let short = IoRequest {
            offset_blocks: 0,
            num_blocks: 3,
            ..req
        };
        assert!(matches!(
            ch.submit(&short, 0),
            Err(SubmitError::IovMismatch { .. })
        ));
        let wild_flush = IoRequest {
            io_type: IoType::Flush,
            offset_blocks: u64::MAX,
            num_blocks: 2,
            iovs: &[],
            ..req
        };
        assert!(matches!(
            ch.submit(&wild_flush, 0),
            Err(SubmitError::OutOfRange { .. })
        ));
        assert_eq!(ch.in_flight(), 0);
    }

    #[test]
    fn zero_reads_off_leaves_buffers_alone() {
        let mut null = NullBdev::with_size("n", 1 << 20, 4096).unwrap();
        null.set_zero_reads(false);
        let mut ch = open(Arc::new(null), 4, None);
        let mut buf = vec![0xabu8; 4096];
        assert_eq!(
            run(&mut ch, IoType::Read, 0, 1, &[iov(&mut buf)]),
            IoStatus::Success
        );
        assert!(buf.iter().all(|&b| b == 0xab));
    }

    #[test]
    fn queue_full_is_reported_not_overrun() {
        let mut ch = open(
            Arc::new(NullBdev::with_size("n", 1 << 20, 4096).unwrap()),
            2,
            None,
        );
        let req = IoRequest::flush(0);
        ch.submit(&req, 0).unwrap();
        ch.submit(&req, 0).unwrap();
        assert_eq!(ch.submit(&req, 0), Err(SubmitError::QueueFull(2)));
        let mut out = Vec::with_capacity(2);
        assert_eq!(ch.poll(5, &mut out), 2);
        assert!(out.iter().all(|c| c.latency_ns == 5));
    }

    #[test]
    fn bad_params_are_refused() {
        let p = |num_blocks, block_size| NullCreateParams::new("n", num_blocks, block_size);
        assert!(NullBdev::create(&p(0, 512)).is_err());
        assert!(NullBdev::create(&p(8, 520)).is_err());
        assert!(NullBdev::create(&NullCreateParams {
            md_size: 8,
            ..p(8, 512)
        })
        .is_err());
        assert!(
            NullBdev::create(&p(u64::MAX / 2, 4096)).is_err(),
            "size overflow"
        );
        assert!(NullBdev::create(&p(8, 512)).is_ok());
    }
}
