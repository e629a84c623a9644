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
            zero_reads: true,
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
        NullBdev::create(&NullCreateParams {
            name: name.to_string(),
            num_blocks: blocks_for_size(size_bytes, bs)?,
            block_size,
            uuid: None,
            md_size: 0,
            dif_type: 0,
            physical_block_size: None,
        })
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
        json!({
            "method": "bdev_null_create",
            "params": {
                "name": self.name,
                "num_blocks": self.num_blocks,
                "block_size": self.block_size,
                "uuid": self.uuid.to_string(),
            }
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
