//! The virtio-blk device's feature bits and configuration space (virtio 1.2, section 5.2.4).

use super::request::{SECTOR_BYTES, SEG_MAX};

/// virtio-blk feature bits (`VIRTIO_BLK_F_*`).
pub const BLK_F_SIZE_MAX: u64 = 1 << 1;
pub const BLK_F_SEG_MAX: u64 = 1 << 2;
pub const BLK_F_RO: u64 = 1 << 5;
pub const BLK_F_BLK_SIZE: u64 = 1 << 6;
pub const BLK_F_FLUSH: u64 = 1 << 9;
pub const BLK_F_TOPOLOGY: u64 = 1 << 10;
pub const BLK_F_MQ: u64 = 1 << 12;
pub const BLK_F_DISCARD: u64 = 1 << 13;
pub const BLK_F_WRITE_ZEROES: u64 = 1 << 14;
/// Transport feature bits.
pub const RING_F_INDIRECT_DESC: u64 = 1 << 28;
pub const RING_F_EVENT_IDX: u64 = 1 << 29;
pub const F_VERSION_1: u64 = 1 << 32;
/// vhost-user's own bit: the front end may negotiate protocol features.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// Largest single data segment the device takes (`segment_limits` may advertise less).
pub const SIZE_MAX_BYTES: u32 = 1 << 20;
/// Largest discard or write-zeroes request, in 512-byte sectors (64 MiB).
pub const MAX_DISCARD_SECTORS: u32 = (64 << 20) / SECTOR_BYTES as u32;
/// Bytes of configuration space we serve (through `write_zeroes_may_unmap` and its padding).
pub const CONFIG_BYTES: usize = 60;

/// What the configuration space describes.
#[derive(Debug, Clone, Copy)]
pub struct BlkConfig {
    pub num_blocks: u64,
    pub block_size: u32,
    /// Most data segments per request, and the largest one (bytes): together they bound a
    /// request to what the bdev takes in one I/O.
    pub seg_max: u32,
    pub size_max: u32,
    pub num_queues: u16,
    pub readonly: bool,
    pub unmap: bool,
    pub write_zeroes: bool,
}

impl BlkConfig {
    /// The device features offered to the driver.
    /// The segment limits for a bdev that takes at most `max_iovs` iovecs and `max_rw_blocks`
    /// blocks per I/O: (seg_max, size_max).
    pub fn segment_limits(block_size: u32, max_iovs: usize, max_rw_blocks: u64) -> (u32, u32) {
        let bs = block_size as u64;
        let max_bytes = max_rw_blocks.max(1) * bs;
        let seg_max = (SEG_MAX.min(max_iovs.max(1)) as u64).min(max_bytes / bs);
        let size_max = (max_bytes / seg_max / bs * bs).clamp(bs, SIZE_MAX_BYTES as u64);
        debug_assert!(seg_max * size_max <= max_bytes);
        (seg_max as u32, size_max as u32)
    }

    pub fn features(&self) -> u64 {
        let mut f = F_VERSION_1
            | RING_F_INDIRECT_DESC
            | RING_F_EVENT_IDX
            | VHOST_USER_F_PROTOCOL_FEATURES
            | BLK_F_SIZE_MAX
            | BLK_F_SEG_MAX
            | BLK_F_BLK_SIZE
            | BLK_F_TOPOLOGY
            | BLK_F_FLUSH
            | BLK_F_MQ;
        if self.readonly {
            f |= BLK_F_RO;
        } else {
            if self.unmap {
                f |= BLK_F_DISCARD;
            }
            if self.write_zeroes {
                f |= BLK_F_WRITE_ZEROES;
            }
        }
        f
    }

    /// The configuration space, little-endian as VERSION_1 requires.
    pub fn bytes(&self) -> [u8; CONFIG_BYTES] {
        let mut c = [0u8; CONFIG_BYTES];
        let sectors_per_block = self.block_size as u64 / SECTOR_BYTES;
        let put32 = |c: &mut [u8; CONFIG_BYTES], at: usize, v: u32| {
            c[at..at + 4].copy_from_slice(&v.to_le_bytes())
        };
        // capacity, in 512-byte sectors
        c[0..8].copy_from_slice(&(self.num_blocks * sectors_per_block).to_le_bytes());
        put32(&mut c, 8, self.size_max); // size_max
        put32(&mut c, 12, self.seg_max); // seg_max
                                         // 16..20 geometry: left zero (unused by VERSION_1 drivers)
        put32(&mut c, 20, self.block_size); // blk_size
                                            // topology: physical_block_exp, alignment_offset, min_io_size, opt_io_size
        c[24] = 0;
        c[25] = 0;
        c[26..28].copy_from_slice(&1u16.to_le_bytes()); // min_io_size in logical blocks
        put32(&mut c, 28, 0); // opt_io_size: none stated
        c[32] = 0; // writeback (CONFIG_WCE is not offered)
        c[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        let block_sectors = sectors_per_block as u32;
        put32(&mut c, 36, MAX_DISCARD_SECTORS); // max_discard_sectors
        put32(&mut c, 40, 1); // max_discard_seg
        put32(&mut c, 44, block_sectors); // discard_sector_alignment
        put32(&mut c, 48, MAX_DISCARD_SECTORS); // max_write_zeroes_sectors
        put32(&mut c, 52, 1); // max_write_zeroes_seg
        c[56] = u8::from(self.unmap); // write_zeroes_may_unmap
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_layout() {
        assert_eq!(BlkConfig::segment_limits(4096, 8, 64), (8, 32768));
        assert_eq!(BlkConfig::segment_limits(4096, 64, 16384), (63, 1 << 20));
        assert_eq!(BlkConfig::segment_limits(4096, 64, 4), (4, 4096));
        let cfg = BlkConfig {
            num_blocks: 1000,
            block_size: 4096,
            seg_max: 8,
            size_max: 32768,
            num_queues: 2,
            readonly: false,
            unmap: true,
            write_zeroes: true,
        };
        let b = cfg.bytes();
        assert_eq!(u64::from_le_bytes(b[0..8].try_into().unwrap()), 8000);
        assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 4096);
        assert_eq!(u16::from_le_bytes(b[34..36].try_into().unwrap()), 2);
        assert_eq!(u32::from_le_bytes(b[44..48].try_into().unwrap()), 8);
        let f = cfg.features();
        assert!(f & BLK_F_DISCARD != 0 && f & BLK_F_RO == 0);
        let ro = BlkConfig {
            readonly: true,
            ..cfg
        };
        assert!(ro.features() & BLK_F_RO != 0 && ro.features() & BLK_F_DISCARD == 0);
    }
}
