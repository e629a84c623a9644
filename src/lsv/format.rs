//! The pool's on-disk layout and its superblock.
//!
//! ## Layout (format version 4)
//!
//! ```text
//! offset 0                      superblock (4 KiB), below
//! offset 4 KiB                  volume table (4 KiB, see `pool/volumes.rs`)
//! offset 8 KiB                  segment journal: `journal_slots` 4 KiB blocks
//!                               (`segment_journal.rs`), then zero up to segment_bytes
//! metadata_offset               two checkpoint slots of metadata_slot_bytes each (A, B)
//! summary_offset                segment summaries: `summary_blocks` 4 KiB blocks per
//!                               segment (`segment_summary.rs`), then zero up to a
//!                               segment boundary
//! first_segment_offset          segment 0, segment 1, ... (segment_bytes each)
//! ```
//!
//! Every region starts on a segment boundary, so segments are aligned for large sequential
//! writes. A checkpoint slot (format in `checkpoint.rs`) holds a 4 KiB header, 16 bytes per
//! segment, 16 bytes per volume and 24 bytes per pool block (an entry takes 24 in version 1
//! of the checkpoint format, at most 22 in version 2), so a full pool's map always fits.
//! Version 3 is version 4 without the summary region (`summary_offset` 0): it is still read,
//! and its cleaner finds a victim's live blocks through its record headers instead.
//! Version 2 is version 3 without the segment journal (its region is zero): it is still
//! read, and its recovery reads the first block of every segment instead.
//! Version 1 (no checkpoints, volume table in slot A) is not read.
//!
//! ## Superblock (little endian)
//!
//! ```text
//!  0  magic            8 bytes  "UNBLEND\0"
//!  8  version          u32      4 (2 and 3 still read)
//! 12  block_size       u32      4096
//! 16  uuid             16 bytes
//! 32  segment_bytes    u64      1 MiB ..= 256 MiB, a power of two
//! 40  segment_count    u64
//! 48  metadata_offset  u64
//! 56  metadata_slot_bytes u64
//! 64  first_segment_offset u64
//! 72  pool_bytes       u64      size of the base bdev when formatted
//! 80  summary_offset   u64      version 4; zero in versions 2 and 3
//! 88  reserved         zero up to byte 4092
//! 4092 crc32c          u32      of bytes 0..4092
//! ```

use thiserror::Error;
use uuid::Uuid;

pub const MAGIC: &[u8; 8] = b"UNBLEND\0";
pub const FORMAT_VERSION: u32 = 4;
/// The oldest version this build reads (no segment journal).
pub const OLDEST_FORMAT_VERSION: u32 = 2;
pub const SUPERBLOCK_BYTES: usize = 4096;
pub const POOL_BLOCK_BYTES: u32 = 4096;
pub const MIN_SEGMENT_BYTES: u64 = 1 << 20;
pub const MAX_SEGMENT_BYTES: u64 = 256 << 20;
pub const DEFAULT_SEGMENT_BYTES: u64 = 8 << 20;
/// A pool needs room for at least this many segments (the cleaner needs free ones to work).
pub const MIN_SEGMENTS: u64 = 8;
/// The largest pool: every block address must fit an extent-table entry (32 bits, see
/// `extent_table.rs`), about 15 TiB.
pub const MAX_POOL_BYTES: u64 = (super::extent_table::MAX_POOL_BLOCK + 1) * POOL_BLOCK_BYTES as u64;
/// Where the volume table lives.
pub const VOLUME_TABLE_OFFSET: u64 = 4096;
pub const CHECKPOINT_HEADER_BYTES: u64 = 4096;
pub const CHECKPOINT_SEGMENT_BYTES: u64 = 16;
pub const CHECKPOINT_VOLUME_BYTES: u64 = 16;
pub const CHECKPOINT_ENTRY_BYTES: u64 = 24;
/// Volumes a checkpoint slot has room for (the volume table holds fewer).
pub const CHECKPOINT_MAX_VOLUMES: u64 = 64;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not an unblend pool (bad magic)")]
    BadMagic,
    #[error(
        "pool format version {0} is not supported (this build reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION})"
    )]
    UnsupportedVersion(u32),
    #[error("superblock checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("superblock is inconsistent: {0}")]
    Inconsistent(String),
    #[error("segment size {0} is not a power of two between 1 MiB and 256 MiB")]
    BadSegmentSize(u64),
    #[error("a pool of {0} bytes is larger than the {MAX_POOL_BYTES} bytes the extent table can address")]
    TooLarge(u64),
    #[error("a pool of {pool_bytes} bytes holds fewer than {MIN_SEGMENTS} segments of {segment_bytes} bytes after its metadata")]
    TooSmall { pool_bytes: u64, segment_bytes: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    /// `FORMAT_VERSION` for new pools; `OLDEST_FORMAT_VERSION` for pools without a journal.
    pub version: u32,
    pub uuid: Uuid,
    pub block_size: u32,
    pub segment_bytes: u64,
    pub segment_count: u64,
    pub metadata_offset: u64,
    pub metadata_slot_bytes: u64,
    pub first_segment_offset: u64,
    pub pool_bytes: u64,
    /// Where the segment summaries begin (0: none, before version 4).
    pub summary_offset: u64,
}

fn align_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

impl Superblock {
    /// Plans the layout of a new pool on `pool_bytes` with segments of `segment_bytes`.
    pub fn plan(
        pool_bytes: u64,
        segment_bytes: u64,
        uuid: Uuid,
    ) -> Result<Superblock, FormatError> {
        Superblock::plan_for_version(pool_bytes, segment_bytes, uuid, FORMAT_VERSION)
    }

    /// The same in format `version` (an older one's layout: a pool it made, or tests).
    pub fn plan_for_version(
        pool_bytes: u64,
        segment_bytes: u64,
        uuid: Uuid,
        version: u32,
    ) -> Result<Superblock, FormatError> {
        if !segment_bytes.is_power_of_two()
            || !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&segment_bytes)
        {
            return Err(FormatError::BadSegmentSize(segment_bytes));
        }
        if pool_bytes > MAX_POOL_BYTES {
            return Err(FormatError::TooLarge(pool_bytes));
        }
        let too_small = FormatError::TooSmall {
            pool_bytes,
            segment_bytes,
        };
        // The header takes the first segment-sized region.
        let metadata_offset = segment_bytes;
        // Size the checkpoint slots for every block the pool could hold.
        let max_blocks = pool_bytes / POOL_BLOCK_BYTES as u64;
        let slot = align_up(
            CHECKPOINT_HEADER_BYTES
                + pool_bytes / segment_bytes * CHECKPOINT_SEGMENT_BYTES
                + CHECKPOINT_MAX_VOLUMES * CHECKPOINT_VOLUME_BYTES
                + max_blocks * CHECKPOINT_ENTRY_BYTES,
            segment_bytes,
        );
        // Room for a summary of every segment the pool could hold.
        let (summary_offset, summary_bytes) = if version >= 4 {
            let per_segment =
                super::segment_summary::summary_blocks(segment_bytes) * POOL_BLOCK_BYTES as u64;
            (
                metadata_offset + 2 * slot,
                align_up(pool_bytes / segment_bytes * per_segment, segment_bytes),
            )
        } else {
            (0, 0)
        };
        let first_segment_offset = metadata_offset + 2 * slot + summary_bytes;
        let segment_count = pool_bytes
            .checked_sub(first_segment_offset)
            .ok_or(too_small.clone())?
            / segment_bytes;
        if segment_count < MIN_SEGMENTS {
            return Err(too_small);
        }
        Ok(Superblock {
            version,
            uuid,
            block_size: POOL_BLOCK_BYTES,
            segment_bytes,
            segment_count,
            metadata_offset,
            metadata_slot_bytes: slot,
            first_segment_offset,
            pool_bytes,
            summary_offset,
        })
    }

    /// Slots of the segment journal (`segment_journal.rs`): 0 for a version 2 pool, else
    /// what fits between the volume table and the first metadata region, at most
    /// `MAX_JOURNAL_SLOTS`.
    pub fn journal_slots(&self) -> u64 {
        if self.version < 3 {
            return 0;
        }
        ((self.metadata_offset - super::segment_journal::JOURNAL_OFFSET) / POOL_BLOCK_BYTES as u64)
            .min(super::segment_journal::MAX_JOURNAL_SLOTS)
    }

    /// Where segment `n`'s summary lives (byte offset), if the pool keeps summaries
    /// (version 4).
    pub fn summary_offset_of(&self, n: u64) -> Option<u64> {
        debug_assert!(n < self.segment_count);
        (self.summary_offset != 0).then(|| {
            self.summary_offset
                + n * super::segment_summary::summary_blocks(self.segment_bytes)
                    * POOL_BLOCK_BYTES as u64
        })
    }

    /// Byte offset of segment `n` in the pool.
    pub fn segment_offset(&self, n: u64) -> u64 {
        debug_assert!(n < self.segment_count);
        self.first_segment_offset + n * self.segment_bytes
    }

    pub fn encode(&self) -> [u8; SUPERBLOCK_BYTES] {
        let mut b = [0u8; SUPERBLOCK_BYTES];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.block_size.to_le_bytes());
        b[16..32].copy_from_slice(self.uuid.as_bytes());
        let fields = [
            self.segment_bytes,
            self.segment_count,
            self.metadata_offset,
            self.metadata_slot_bytes,
            self.first_segment_offset,
            self.pool_bytes,
            self.summary_offset,
        ];
        for (i, f) in fields.iter().enumerate() {
            b[32 + 8 * i..40 + 8 * i].copy_from_slice(&f.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b[..SUPERBLOCK_BYTES - 4]);
        b[SUPERBLOCK_BYTES - 4..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a superblock: magic, version, checksum, then that its layout is
    /// self-consistent and fits in `device_bytes`.
    pub fn decode(b: &[u8], device_bytes: u64) -> Result<Superblock, FormatError> {
        if b.len() < SUPERBLOCK_BYTES {
            return Err(FormatError::Inconsistent("superblock is truncated".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        if &b[0..8] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let stored = u32_at(SUPERBLOCK_BYTES - 4);
        let computed = crc32c::crc32c(&b[..SUPERBLOCK_BYTES - 4]);
        if stored != computed {
            return Err(FormatError::Checksum { stored, computed });
        }
        let version = u32_at(8);
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let sb = Superblock {
            version,
            block_size: u32_at(12),
            uuid: Uuid::from_slice(&b[16..32]).expect("16 bytes"),
            segment_bytes: u64_at(32),
            segment_count: u64_at(40),
            metadata_offset: u64_at(48),
            metadata_slot_bytes: u64_at(56),
            first_segment_offset: u64_at(64),
            pool_bytes: u64_at(72),
            summary_offset: u64_at(80),
        };
        let bad = |why: &str| Err(FormatError::Inconsistent(why.to_string()));
        if sb.block_size != POOL_BLOCK_BYTES {
            return bad("block size is not 4096");
        }
        let planned =
            Superblock::plan_for_version(sb.pool_bytes, sb.segment_bytes, sb.uuid, version)
                .map_err(|e| FormatError::Inconsistent(e.to_string()))?;
        if planned != sb {
            return bad("layout does not match its own pool size and segment size");
        }
        if sb.pool_bytes > device_bytes {
            return bad("pool is larger than its device (was the device shrunk?)");
        }
        Ok(sb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb() -> Superblock {
        Superblock::plan(1 << 30, DEFAULT_SEGMENT_BYTES, Uuid::from_u128(42)).unwrap()
    }

    #[test]
    fn plan_is_aligned_and_leaves_room() {
        let s = sb();
        assert_eq!(s.first_segment_offset % s.segment_bytes, 0);
        assert!(s.segment_offset(s.segment_count - 1) + s.segment_bytes <= s.pool_bytes);
        assert!(s.metadata_slot_bytes >= (1 << 30) / 4096 * 24);
        assert!(Superblock::plan(16 << 20, DEFAULT_SEGMENT_BYTES, Uuid::nil()).is_err());
        assert!(Superblock::plan(MAX_POOL_BYTES, DEFAULT_SEGMENT_BYTES, Uuid::nil()).is_ok());
        assert_eq!(
            Superblock::plan(MAX_POOL_BYTES + 4096, DEFAULT_SEGMENT_BYTES, Uuid::nil()),
            Err(FormatError::TooLarge(MAX_POOL_BYTES + 4096))
        );
        assert_eq!(
            Superblock::plan(1 << 30, 3 << 20, Uuid::nil()),
            Err(FormatError::BadSegmentSize(3 << 20))
        );
    }

    #[test]
    fn round_trips() {
        let s = sb();
        assert_eq!(Superblock::decode(&s.encode(), 1 << 30).unwrap(), s);
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let s = sb();
        let good = s.encode();
        // Flip one bit in each of the first 88 bytes and a few reserved and checksum bytes.
        for byte in (0..88).chain([100, 2000, 4091, 4092, 4095]) {
            let mut b = good;
            b[byte] ^= 0x04;
            assert!(
                Superblock::decode(&b, 1 << 30).is_err(),
                "flip in byte {byte} not caught"
            );
        }
    }

    #[test]
    fn wrong_magic_version_or_device() {
        let s = sb();
        let mut b = s.encode();
        b[0] = b'X';
        assert_eq!(Superblock::decode(&b, 1 << 30), Err(FormatError::BadMagic));
        let mut b = s.encode();
        b[8] = 5;
        let crc = crc32c::crc32c(&b[..SUPERBLOCK_BYTES - 4]);
        b[SUPERBLOCK_BYTES - 4..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            Superblock::decode(&b, 1 << 30),
            Err(FormatError::UnsupportedVersion(5))
        );
        // A version 2 pool (no journal) and a version 3 one (no summaries) are still read.
        let v2 = Superblock::plan_for_version(1 << 30, DEFAULT_SEGMENT_BYTES, s.uuid, 2).unwrap();
        let back = Superblock::decode(&v2.encode(), 1 << 30).unwrap();
        assert_eq!(back, v2);
        assert_eq!(back.journal_slots(), 0);
        let v3 = Superblock::plan_for_version(1 << 30, DEFAULT_SEGMENT_BYTES, s.uuid, 3).unwrap();
        let back = Superblock::decode(&v3.encode(), 1 << 30).unwrap();
        assert_eq!((back, back.summary_offset_of(0)), (v3, None));
        // Version 4's summaries lie between the checkpoint slots and the first segment.
        let (first, last) = (
            s.summary_offset_of(0).unwrap(),
            s.summary_offset_of(s.segment_count - 1).unwrap(),
        );
        assert_eq!(first, s.metadata_offset + 2 * s.metadata_slot_bytes);
        assert!(
            last + super::super::segment_summary::summary_blocks(s.segment_bytes) * 4096
                <= s.first_segment_offset
        );
        assert_eq!(
            v3.first_segment_offset,
            s.first_segment_offset - s.segment_bytes
        );
        // A version 3 superblock that names a summary region is damage.
        let forged = Superblock { version: 3, ..s };
        assert!(Superblock::decode(&forged.encode(), 1 << 30).is_err());
        assert_eq!(
            s.journal_slots(),
            super::super::segment_journal::MAX_JOURNAL_SLOTS.min((8 << 20) / 4096 - 2)
        );
        assert!(matches!(
            Superblock::decode(&s.encode(), 1 << 29),
            Err(FormatError::Inconsistent(_))
        ));
    }
}
