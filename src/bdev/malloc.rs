//! The malloc bdev: a RAM disk in one page-aligned region.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    blocks_for_size, check_block_size, Bdev, BdevChannel, BdevError, ChannelContext, IoRequest,
    IoStatus, IoType, SlotCompletion, SubmitError,
};
use crate::mem::DmaRegion;

/// Largest RAM disk we create; also never more than the machine's physical memory.
pub const MAX_MALLOC_BYTES: u64 = 64 << 30;

fn physical_memory_bytes() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages.max(0) as u64).saturating_mul(page.max(0) as u64)
}

/// `bdev_malloc_create`'s parameters, as SPDK names them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MallocCreateParams {
    #[serde(default)]
    pub name: Option<String>,
    pub num_blocks: u64,
    pub block_size: u64,
    #[serde(default)]
    pub uuid: Option<Uuid>,
    #[serde(default)]
    pub optimal_io_boundary: u32,
    #[serde(default)]
    pub md_size: u32,
    #[serde(default)]
    pub md_interleave: bool,
    #[serde(default)]
    pub dif_type: u32,
    #[serde(default)]
    pub dif_is_head_of_md: bool,
    #[serde(default)]
    pub physical_block_size: Option<u64>,
    #[serde(default)]
    pub dif_pi_format: Option<u32>,
    #[serde(default)]
    pub numa_id: Option<i32>,
}

pub struct MallocBdev {
    name: String,
    uuid: Uuid,
    block_size: u32,
    num_blocks: u64,
    memory: Arc<DmaRegion>,
}

impl MallocBdev {
    /// `name` must already be chosen (SPDK picks `MallocN` when the caller gives none).
    pub fn create(name: &str, p: &MallocCreateParams) -> Result<MallocBdev, BdevError> {
        let block_size = check_block_size(p.block_size)?;
        if p.num_blocks == 0 {
            return Err(BdevError::ZeroSize);
        }
        if p.md_size != 0 || p.dif_type != 0 {
            return Err(BdevError::Unsupported(
                "malloc bdev: metadata (md_size) and DIF are not supported".into(),
            ));
        }
        super::check_name(name)?;
        let bytes = p
            .num_blocks
            .checked_mul(block_size as u64)
            .filter(|&b| b <= MAX_MALLOC_BYTES.min(physical_memory_bytes()))
            .ok_or_else(|| {
                BdevError::Unsupported(format!(
                    "malloc bdev of {} blocks is larger than the limit ({MAX_MALLOC_BYTES} bytes, \
                     and no more than physical memory)",
                    p.num_blocks
                ))
            })?;
        // Lazily faulted: RAM is spent as the disk is written, not when it is created.
        let memory = DmaRegion::new_lazy(bytes as usize).map_err(|e| BdevError::Io {
            path: format!("malloc bdev {name}"),
            source: e,
        })?;
        Ok(MallocBdev {
            name: name.to_string(),
            uuid: p.uuid.unwrap_or_else(Uuid::new_v4),
            block_size,
            num_blocks: p.num_blocks,
            memory: Arc::new(memory),
        })
    }

    pub fn with_size(
        name: &str,
        size_bytes: u64,
        block_size: u64,
    ) -> Result<MallocBdev, BdevError> {
        let bs = check_block_size(block_size)?;
        MallocBdev::create(
            name,
            &MallocCreateParams {
                name: Some(name.to_string()),
                num_blocks: blocks_for_size(size_bytes, bs)?,
                block_size,
                uuid: None,
                optimal_io_boundary: 0,
                md_size: 0,
                md_interleave: false,
                dif_type: 0,
                dif_is_head_of_md: false,
                physical_block_size: None,
                dif_pi_format: None,
                numa_id: None,
            },
        )
    }
}

impl Bdev for MallocBdev {
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
        "Malloc disk"
    }
    fn supports(&self, _io_type: IoType) -> bool {
        true
    }
    fn create_channel(&self, ctx: &ChannelContext) -> Result<Box<dyn BdevChannel>, BdevError> {
        Ok(Box::new(MallocChannel {
            memory: self.memory.clone(),
            block_size: self.block_size as usize,
            pending: Vec::with_capacity(ctx.queue_depth as usize),
        }))
    }
    fn config_json(&self) -> Value {
        json!({
            "method": "bdev_malloc_create",
            "params": {
                "name": self.name,
                "num_blocks": self.num_blocks,
                "block_size": self.block_size,
                "uuid": self.uuid.to_string(),
            }
        })
    }
}

/// Zeroes `len` bytes at `disk`: whole pages are handed back to the kernel (they read as
/// zeroes and stop costing RAM, so unmapping a fresh disk does not fault it in); only the
/// partial pages at the edges are written.
fn zero_range(disk: *mut u8, len: usize) {
    // The kernel's page size (madvise works in whole pages, and rounds the length up).
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    debug_assert!(page.is_power_of_two(), "page size {page}");
    let addr = disk as usize;
    let first_page = addr.div_ceil(page) * page;
    let end = addr + len;
    let last_page = end / page * page;
    if last_page > first_page {
        // SAFETY: both edges lie inside [disk, disk+len), which the caller guarantees is in
        // the region; MADV_DONTNEED on a private anonymous mapping makes the pages read as
        // zeroes afterwards.
        let rc = unsafe {
            std::ptr::write_bytes(disk, 0, first_page - addr);
            std::ptr::write_bytes(last_page as *mut u8, 0, end - last_page);
            libc::madvise(
                first_page as *mut libc::c_void,
                last_page - first_page,
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            return;
        }
    }
    // SAFETY: [disk, disk+len) is inside the region (caller's guarantee).
    unsafe { std::ptr::write_bytes(disk, 0, len) };
}

struct MallocChannel {
    memory: Arc<DmaRegion>,
    block_size: usize,
    pending: Vec<SlotCompletion>,
}

impl BdevChannel for MallocChannel {
    fn submit(&mut self, slot: u32, req: &IoRequest<'_>) -> Result<(), SubmitError> {
        if req.io_type != IoType::Flush {
            // The bdev layer checked offset+num_blocks against the bdev, whose size fits the
            // region, so none of this overflows or leaves the region.
            let start = req.offset_blocks as usize * self.block_size;
            let len = req.num_blocks as usize * self.block_size;
            debug_assert!(self.memory.len() >= start + len);
            // SAFETY: in bounds (above). Like a real device, two channels writing the same
            // blocks at once leave them with one of the two contents; callers order such I/O.
            let disk = unsafe { self.memory.as_ptr().add(start) };
            match req.io_type {
                IoType::Read | IoType::Write => {
                    let mut at = 0usize;
                    for v in req.iovs {
                        // SAFETY: `disk+at .. +v.len()` stays within `len` because the iovecs
                        // sum to `len` (checked by the bdev layer); the iovec is ours until
                        // completion.
                        unsafe {
                            if req.io_type == IoType::Read {
                                std::ptr::copy_nonoverlapping(disk.add(at), v.addr(), v.len());
                            } else {
                                std::ptr::copy_nonoverlapping(v.addr(), disk.add(at), v.len());
                            }
                        }
                        at += v.len();
                    }
                    debug_assert_eq!(at, len);
                }
                _ => zero_range(disk, len),
            }
        }
        debug_assert!(self.pending.len() < self.pending.capacity());
        self.pending.push(SlotCompletion {
            slot,
            status: IoStatus::Success,
        });
        Ok(())
    }

    fn poll(&mut self, done: &mut Vec<SlotCompletion>) {
        done.append(&mut self.pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::testing::{iov, open, run};

    #[test]
    fn write_read_unmap_round_trip() {
        let mut ch = open(
            Arc::new(MallocBdev::with_size("m", 1 << 20, 512).unwrap()),
            4,
            None,
        );
        let mut a: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();
        let mut b: Vec<u8> = (0..512).map(|i| (i % 13) as u8).collect();
        let (a0, b0) = (a.clone(), b.clone());
        // A two-iovec write of three blocks, read back as one.
        assert_eq!(
            run(&mut ch, IoType::Write, 7, 3, &[iov(&mut a), iov(&mut b)]),
            IoStatus::Success
        );
        let mut back = vec![0u8; 1536];
        assert_eq!(
            run(&mut ch, IoType::Read, 7, 3, &[iov(&mut back)]),
            IoStatus::Success
        );
        assert_eq!(&back[..1024], &a0[..]);
        assert_eq!(&back[1024..], &b0[..]);
        assert_eq!(run(&mut ch, IoType::Unmap, 8, 1, &[]), IoStatus::Success);
        assert_eq!(
            run(&mut ch, IoType::Read, 7, 3, &[iov(&mut back)]),
            IoStatus::Success
        );
        assert_eq!(&back[..512], &a0[..512]);
        assert!(back[512..1024].iter().all(|&x| x == 0));
        assert_eq!(
            run(&mut ch, IoType::WriteZeroes, 9, 1, &[]),
            IoStatus::Success
        );
        assert_eq!(
            run(&mut ch, IoType::Read, 9, 1, &[iov(&mut back[..512])]),
            IoStatus::Success
        );
        assert!(back[..512].iter().all(|&x| x == 0));
    }

    fn rss_kib() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    #[test]
    fn unmapping_a_large_fresh_disk_costs_no_memory() {
        let mut ch = open(
            Arc::new(MallocBdev::with_size("big", 1 << 30, 4096).unwrap()),
            4,
            None,
        );
        let before = rss_kib();
        assert_eq!(
            run(&mut ch, IoType::Unmap, 1, 262_000, &[]),
            IoStatus::Success
        );
        assert_eq!(
            run(&mut ch, IoType::WriteZeroes, 0, 262_144, &[]),
            IoStatus::Success
        );
        let grown = rss_kib().saturating_sub(before);
        assert!(grown < 64 * 1024, "zeroing 1 GiB faulted in {grown} KiB");
        // Written data next to a zeroed range survives; the range reads as zeroes.
        let mut w = vec![7u8; 8192];
        assert_eq!(
            run(&mut ch, IoType::Write, 10, 2, &[iov(&mut w)]),
            IoStatus::Success
        );
        assert_eq!(
            run(&mut ch, IoType::WriteZeroes, 11, 1, &[]),
            IoStatus::Success
        );
        let mut r = vec![1u8; 8192];
        assert_eq!(
            run(&mut ch, IoType::Read, 10, 2, &[iov(&mut r)]),
            IoStatus::Success
        );
        assert!(r[..4096].iter().all(|&b| b == 7));
        assert!(r[4096..].iter().all(|&b| b == 0));
    }

    #[test]
    fn config_json_recreates_the_bdev() {
        let m = MallocBdev::with_size("Malloc3", 1 << 20, 4096).unwrap();
        let cfg = m.config_json();
        assert_eq!(cfg["method"], "bdev_malloc_create");
        let p: MallocCreateParams = serde_json::from_value(cfg["params"].clone()).unwrap();
        let again = MallocBdev::create("Malloc3", &p).unwrap();
        assert_eq!(again.uuid(), m.uuid());
        assert_eq!(again.num_blocks(), 256);
    }
}
