//! The block-device layer: the `Bdev` trait every module implements, per-reactor channels,
//! the registry of bdevs by name, and per-bdev I/O statistics.
//!
//! A module (null, malloc, uring, and later lsv and nvme) implements `Bdev` and `BdevChannel`.
//! Callers never talk to a module channel directly: they open an `IoChannel`, which checks every
//! request against the bdev's geometry, keeps statistics, and maps completions back to the
//! caller's tags.

pub mod channel;
pub mod delay;
pub mod iostat;
pub mod malloc;
pub mod null;
pub mod registry;
pub mod sim;
pub mod uring;

use std::rc::Rc;

use serde_json::{json, Value};
use thiserror::Error;
use uuid::Uuid;

use crate::mem::{BufferPool, DmaBuf};

pub use channel::{IoChannel, IoCompletion};
pub use iostat::{BdevIoStat, IoStatTotals};
pub use registry::{BdevEntry, BdevRegistry};

/// Most iovecs one request may carry.
pub const MAX_IOVS: usize = 64;
/// Most bytes one READ or WRITE may move.
pub const MAX_DATA_BYTES: u64 = 64 << 20;
/// Most requests one channel may have in flight.
pub const MAX_QUEUE_DEPTH: u32 = 4096;
/// Smallest and largest block sizes a bdev may have.
pub const MIN_BLOCK_SIZE: u32 = 512;
pub const MAX_BLOCK_SIZE: u32 = 64 * 1024;
/// Longest bdev name.
pub const MAX_NAME_BYTES: usize = 255;

#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoType {
    Read = 0,
    Write = 1,
    Flush = 2,
    Unmap = 3,
    WriteZeroes = 4,
}

impl IoType {
    pub const ALL: [IoType; 5] = [
        IoType::Read,
        IoType::Write,
        IoType::Flush,
        IoType::Unmap,
        IoType::WriteZeroes,
    ];

    /// SPDK's name for the I/O type (as in `supported_io_types` and iostat).
    pub fn name(self) -> &'static str {
        match self {
            IoType::Read => "read",
            IoType::Write => "write",
            IoType::Flush => "flush",
            IoType::Unmap => "unmap",
            IoType::WriteZeroes => "write_zeroes",
        }
    }

    /// True for the types that move data through iovecs.
    pub fn carries_data(self) -> bool {
        matches!(self, IoType::Read | IoType::Write)
    }
}

/// One piece of a vectored I/O's memory.
#[derive(Debug, Clone, Copy)]
pub struct IoVec {
    addr: *mut u8,
    len: usize,
}

impl IoVec {
    /// # Safety
    /// `addr` must be valid for reads and writes of `len` bytes, and nothing else may touch that
    /// memory, from the moment a request carrying this iovec is submitted until it completes.
    pub unsafe fn from_raw(addr: *mut u8, len: usize) -> IoVec {
        IoVec { addr, len }
    }

    /// An iovec over the first `len` bytes of a pool buffer.
    ///
    /// # Safety
    /// The buffer must stay on loan (not be put back) and untouched until every request
    /// carrying this iovec has completed.
    pub unsafe fn from_buf(buf: &mut DmaBuf, len: usize) -> IoVec {
        assert!(len <= buf.len(), "iovec longer than its buffer");
        IoVec {
            addr: buf.as_ptr(),
            len,
        }
    }

    /// A zero-length placeholder (for preallocated arrays); never submitted as data.
    pub const fn empty() -> IoVec {
        IoVec {
            addr: std::ptr::null_mut(),
            len: 0,
        }
    }

    pub fn addr(&self) -> *mut u8 {
        self.addr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One I/O as a caller submits it.
#[derive(Debug, Clone, Copy)]
pub struct IoRequest<'a> {
    pub io_type: IoType,
    pub offset_blocks: u64,
    pub num_blocks: u64,
    /// The data, for READ and WRITE; empty otherwise.
    pub iovs: &'a [IoVec],
    /// Force unit access: the write is durable when it completes.
    pub fua: bool,
    /// The caller's cookie, handed back in the completion.
    pub tag: u64,
}

impl IoRequest<'static> {
    /// A FLUSH of the whole bdev: every write completed before it is durable when it completes.
    pub const fn flush(tag: u64) -> IoRequest<'static> {
        IoRequest {
            io_type: IoType::Flush,
            offset_blocks: 0,
            num_blocks: 0,
            iovs: &[],
            fua: false,
            tag,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoStatus {
    Success,
    /// Failed with this errno (EIO, ENOSPC, ...).
    Failed(i32),
}

/// A completion as a module reports it: the bdev layer's slot and the outcome.
#[derive(Debug, Clone, Copy)]
pub struct SlotCompletion {
    pub slot: u32,
    pub status: IoStatus,
}

/// Why a request was not accepted. Nothing was started; the caller still owns its buffers.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SubmitError {
    #[error("channel queue is full ({0} requests in flight)")]
    QueueFull(u32),
    #[error("blocks {offset}+{count} lie beyond the end of the bdev ({num_blocks} blocks)")]
    OutOfRange {
        offset: u64,
        count: u64,
        num_blocks: u64,
    },
    #[error("request of {count} blocks is empty or too long")]
    BadLength { count: u64 },
    #[error("iovecs carry {iov_bytes} bytes but the request needs {want_bytes}")]
    IovMismatch { iov_bytes: u64, want_bytes: u64 },
    #[error("request has {0} iovecs; the limit is {MAX_IOVS}")]
    TooManyIovs(usize),
    #[error("bdev does not support {0:?}")]
    Unsupported(IoType),
}

#[derive(Debug, Error)]
pub enum BdevError {
    #[error("block size {0} is not a power of two between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE}")]
    BadBlockSize(u64),
    #[error("size {size_bytes} bytes is not a multiple of the block size {block_size}")]
    SizeNotMultiple { size_bytes: u64, block_size: u32 },
    #[error("size must be at least one block")]
    ZeroSize,
    #[error(
        "bdev name {0:?} is empty, too long, or has characters other than letters, digits and ._-:"
    )]
    BadName(String),
    #[error("a bdev named {0:?} already exists")]
    Exists(String),
    #[error("no bdev named {0:?}")]
    NotFound(String),
    #[error("file {0:?} does not exist")]
    MissingFile(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("cannot create channel: {0}")]
    Channel(String),
    #[error("bdev {bdev:?} is claimed by {by}")]
    Claimed { bdev: String, by: String },
    #[error("bdev {other:?} already has the file or device that {bdev:?} would open")]
    SameFile { bdev: String, other: String },
}

/// What a module needs to set up a channel on the calling reactor.
pub struct ChannelContext {
    /// Most requests the caller will have in flight on this channel.
    pub queue_depth: u32,
    /// This reactor's buffer pool, whose region a module may register for zero-copy I/O.
    pub buffers: Option<Rc<BufferPool>>,
}

/// A module's per-reactor queue pair. Used only through `IoChannel`, which has already
/// checked the request's range, length and iovecs.
pub trait BdevChannel {
    /// Starts (or queues) one request. `slot` comes back in its completion.
    fn submit(&mut self, slot: u32, req: &IoRequest<'_>) -> Result<(), SubmitError>;
    /// Issues what was queued since the last call and appends finished requests to `done`.
    /// `done` has room for a full queue, so pushing into it never allocates.
    fn poll(&mut self, done: &mut Vec<SlotCompletion>);
}

/// A block device.
pub trait Bdev: Send + Sync {
    fn name(&self) -> &str;
    fn uuid(&self) -> Uuid;
    fn block_size(&self) -> u32;
    fn num_blocks(&self) -> u64;
    /// The module's name, as `product_name` in `bdev_get_bdevs` shows it.
    fn product_name(&self) -> &'static str;
    fn supports(&self, io_type: IoType) -> bool;
    /// Opens a channel for the calling reactor.
    fn create_channel(&self, ctx: &ChannelContext) -> Result<Box<dyn BdevChannel>, BdevError>;
    /// Module-specific information (`driver_specific` in `bdev_get_bdevs`).
    fn driver_info(&self) -> Value {
        json!({})
    }
    /// The RPC call that recreates this bdev: `{"method": ..., "params": {...}}`.
    fn config_json(&self) -> Value;
    /// Makes everything written so far durable, from outside the I/O path (at shutdown).
    fn flush_sync(&self) -> Result<(), BdevError> {
        Ok(())
    }
    /// Most iovecs one READ or WRITE may carry (front ends advertise it, as virtio's seg_max).
    fn max_iovs(&self) -> usize {
        MAX_IOVS
    }
    /// Most blocks one READ or WRITE may move.
    fn max_rw_blocks(&self) -> u64 {
        MAX_DATA_BYTES / self.block_size() as u64
    }
    /// Whether `num_blocks` may change while channels are open (an lsv volume, resized
    /// online). Its channels check each request against the size now themselves; the
    /// generic channel then checks only that a range does not overflow, and front ends
    /// look at the size again.
    fn resizable(&self) -> bool {
        false
    }

    /// The file or block device the bdev's data lives in, if any, as (device, inode) of a
    /// file or (`BLOCK_DEVICE`, device number) of a block device. The registry takes no
    /// second bdev on the same one: two bdevs on one file write each other's data, and a
    /// pool loaded through one would be loaded again, stale, through the other. Overlap it
    /// does not see: a partition and its whole disk, a loop device and its file.
    fn backing_file(&self) -> Option<(u64, u64)> {
        None
    }
}

/// In `Bdev::backing_file`, the first half for a block device.
pub const BLOCK_DEVICE: u64 = u64::MAX;

/// `bdev_get_bdevs`'s description of a bdev (keys as SPDK names them).
#[derive(serde::Serialize)]
pub struct BdevInfo<'a> {
    pub name: &'a str,
    pub aliases: [&'a str; 0],
    pub product_name: &'static str,
    pub block_size: u32,
    pub num_blocks: u64,
    pub uuid: String,
    pub claimed: bool,
    /// SPDK's claim type ("exclusive_write", as an lvstore's claim of its base), when claimed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_type: Option<&'static str>,
    pub zoned: bool,
    pub supported_io_types: SupportedIoTypes,
    pub driver_specific: Value,
}

#[derive(serde::Serialize)]
pub struct SupportedIoTypes {
    pub read: bool,
    pub write: bool,
    pub flush: bool,
    pub unmap: bool,
    pub write_zeroes: bool,
}

impl<'a> BdevInfo<'a> {
    pub fn of(bdev: &'a dyn Bdev) -> BdevInfo<'a> {
        BdevInfo {
            name: bdev.name(),
            aliases: [],
            product_name: bdev.product_name(),
            block_size: bdev.block_size(),
            num_blocks: bdev.num_blocks(),
            uuid: bdev.uuid().to_string(),
            claimed: false,
            claim_type: None,
            zoned: false,
            supported_io_types: SupportedIoTypes {
                read: bdev.supports(IoType::Read),
                write: bdev.supports(IoType::Write),
                flush: bdev.supports(IoType::Flush),
                unmap: bdev.supports(IoType::Unmap),
                write_zeroes: bdev.supports(IoType::WriteZeroes),
            },
            driver_specific: bdev.driver_info(),
        }
    }
}

impl BdevInfo<'_> {
    /// The same, claimed (`BdevRegistry::claim`) or not.
    pub fn with_claim(mut self, claimed: bool) -> Self {
        self.claimed = claimed;
        self.claim_type = claimed.then_some("exclusive_write");
        self
    }
}

/// `bdev_get_bdevs`'s description of a bdev, as a JSON value.
pub fn bdev_info_json(bdev: &dyn Bdev) -> Value {
    serde_json::to_value(BdevInfo::of(bdev)).expect("bdev info serialises")
}

/// Checks a block size: a power of two in [512, 64 KiB].
pub fn check_block_size(block_size: u64) -> Result<u32, BdevError> {
    if block_size.is_power_of_two()
        && (MIN_BLOCK_SIZE as u64..=MAX_BLOCK_SIZE as u64).contains(&block_size)
    {
        Ok(block_size as u32)
    } else {
        Err(BdevError::BadBlockSize(block_size))
    }
}

/// Converts a byte size to blocks, refusing sizes that are zero or not a multiple.
pub fn blocks_for_size(size_bytes: u64, block_size: u32) -> Result<u64, BdevError> {
    if size_bytes == 0 {
        return Err(BdevError::ZeroSize);
    }
    if !size_bytes.is_multiple_of(block_size as u64) {
        return Err(BdevError::SizeNotMultiple {
            size_bytes,
            block_size,
        });
    }
    Ok(size_bytes / block_size as u64)
}

/// Checks a bdev name: 1..=255 bytes of letters, digits and `._-:/` (a volume is `pool/name`).
pub fn check_name(name: &str) -> Result<(), BdevError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(BdevError::BadName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes() {
        assert_eq!(check_block_size(512).unwrap(), 512);
        assert_eq!(check_block_size(4096).unwrap(), 4096);
        for bad in [0, 256, 1000, 3000, 1 << 20] {
            assert!(matches!(
                check_block_size(bad),
                Err(BdevError::BadBlockSize(_))
            ));
        }
    }

    #[test]
    fn sizes_to_blocks() {
        assert_eq!(blocks_for_size(1 << 20, 4096).unwrap(), 256);
        assert!(matches!(
            blocks_for_size(5000, 4096),
            Err(BdevError::SizeNotMultiple { .. })
        ));
        assert!(matches!(blocks_for_size(0, 4096), Err(BdevError::ZeroSize)));
    }

    #[test]
    fn names() {
        assert!(check_name("Malloc0").is_ok());
        assert!(check_name("lvs/vol").is_ok());
        assert!(check_name("a b").is_err());
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(256)).is_err());
    }
}

/// Helpers for the modules' unit tests: run one request to completion on a channel.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::sync::Arc;

    pub fn open(bdev: Arc<dyn Bdev>, queue_depth: u32, pool: Option<Rc<BufferPool>>) -> IoChannel {
        let reg = BdevRegistry::new();
        let entry = reg.register(bdev).unwrap();
        entry
            .open_channel(&ChannelContext {
                queue_depth,
                buffers: pool,
            })
            .unwrap()
    }

    /// Submits one request and polls until it completes (at most ~10 s).
    pub fn run(
        ch: &mut IoChannel,
        io_type: IoType,
        offset_blocks: u64,
        num_blocks: u64,
        iovs: &[IoVec],
    ) -> IoStatus {
        ch.submit(
            &IoRequest {
                io_type,
                offset_blocks,
                num_blocks,
                iovs,
                fua: false,
                tag: 99,
            },
            0,
        )
        .unwrap();
        let mut out = Vec::with_capacity(ch.queue_depth() as usize);
        for _ in 0..1_000_000 {
            ch.poll(1, &mut out);
            if let Some(c) = out.pop() {
                assert_eq!(c.tag, 99);
                assert_eq!(c.io_type, io_type);
                return c.status;
            }
            std::thread::sleep(std::time::Duration::from_micros(10));
        }
        panic!("request never completed");
    }

    /// An iovec over a Vec's bytes.
    pub fn iov(v: &mut [u8]) -> IoVec {
        // SAFETY: the tests keep the Vec alive and untouched until `run` returns.
        unsafe { IoVec::from_raw(v.as_mut_ptr(), v.len()) }
    }
}
