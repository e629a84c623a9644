//! Log records: what a reactor appends to its open segment for one poll pass (group commit).
//!
//! ## Record format (version 2)
//!
//! A record starts on a 4 KiB boundary inside a segment: `header_blocks` blocks of header,
//! then `data_blocks` blocks of data, the writes' data in entry order.
//!
//! ```text
//! header, little endian:
//!   0  magic            u32  "ULR1"
//!   4  version          u16  2
//!   6  flags            u16  0
//!   8  seq              u64  the record's global sequence number
//!  16  segment          u64  the segment it was written to
//!  24  segment_epoch    u64  seq of the first record of this use of the segment: every
//!                            record of one use carries it, so a chain stops at a stale
//!                            record left by the segment's previous use
//!  32  entry_count      u32
//!  36  header_blocks    u32
//!  40  data_blocks      u32
//!  44  data_crc         u32  crc32c of all data blocks
//!  48  durable_seq      u64  the newest record of this segment's chain its writer knew to be
//!                            durable (completed before a flush, or written with FUA) when
//!                            it built this one; 0 if none. A record at or below it that
//!                            fails its checksum is damage, not a write torn by a crash.
//!  56  reserved         4 bytes, zero
//!  60  header_crc       u32  crc32c of the whole header (header_blocks * 4 KiB) with this
//!                            field taken as zero
//!  64  entries          entry_count * 32 bytes:
//!        volume u32, op u8 (1 write, 2 unmap), 3 zero bytes, lba u64, num_blocks u32,
//!        data_crc u32 (crc32c of this write's data; 0 for unmap),
//!        data_seq u64 (sequence number of the write that made this data: 0 means this
//!        record's own seq; the cleaner's relocation records carry the original's)
//! ```
//!
//! Both checksums must hold for a record to count: replay stops at the first record whose
//! header or data does not check out (a torn write at the crash). A header whose checksum
//! holds is still refused if a sequence number in it (`seq`, `segment_epoch`, `durable_seq`,
//! an entry's `data_seq`) is `MAX_SEQ` or more, or a `data_seq` is not below `seq`: no
//! writer makes one. Recovery's chain walk then ends there, as at a torn record.

use thiserror::Error;

pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"ULR1");
pub const RECORD_VERSION: u16 = 2;
pub const BLOCK_BYTES: usize = 4096;
/// Sequence numbers never come near this (at ten million records a second, not for ten
/// thousand years): a number at or above it read from disk (a grow fence, a journal epoch
/// or position) is damage, not a number to go on from.
pub const MAX_SEQ: u64 = 1 << 62;
/// Recovery refuses a pool whose numbers (or checkpoint generations) would go on from within
/// this of `MAX_SEQ`: only damage puts them there, and numbering on from there would write
/// what a later open refuses. A pool opened below it would take 2^60 records to reach
/// `MAX_SEQ` (3,600 years at ten million a second). A number crafted to lie just below
/// `MAX_SEQ - SEQ_HEADROOM` still opens once, and is refused at a later open.
pub const SEQ_HEADROOM: u64 = 1 << 60;
const FIXED_HEADER_BYTES: usize = 64;
const ENTRY_BYTES: usize = 32;
/// Most entries one record may carry (a generous bound on one poll pass's writes).
pub const MAX_ENTRIES: usize = 4096;
/// Most data blocks one record may carry (4 MiB).
pub const MAX_DATA_BLOCKS: u32 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryOp {
    Write = 1,
    Unmap = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub volume: u64,
    pub lba: u64,
    pub num_blocks: u32,
    pub op: EntryOp,
    pub data_crc: u32,
    /// The sequence number of the write that made this data; 0: the record's own.
    pub data_seq: u64,
}

impl Entry {
    /// The sequence number this entry's effect is ordered by.
    pub fn seq_in(&self, record_seq: u64) -> u64 {
        if self.data_seq == 0 {
            record_seq
        } else {
            self.data_seq
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub seq: u64,
    pub segment: u64,
    pub segment_epoch: u64,
    pub durable_seq: u64,
    pub header_blocks: u32,
    pub data_blocks: u32,
    pub data_crc: u32,
    pub entries: Vec<Entry>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("no record here (magic {0:#010x})")]
    NoRecord(u32),
    #[error("record version {0} is not supported")]
    Version(u16),
    #[error("record header checksum mismatch")]
    HeaderChecksum,
    #[error("record data checksum mismatch")]
    DataChecksum,
    #[error("record header is inconsistent: {0}")]
    Inconsistent(&'static str),
    #[error("record is full")]
    Full,
}

/// Header blocks needed for `entries` entries.
pub fn header_blocks_for(entries: usize) -> u32 {
    (FIXED_HEADER_BYTES + entries * ENTRY_BYTES).div_ceil(BLOCK_BYTES) as u32
}

impl RecordHeader {
    pub fn new(seq: u64, segment: u64, segment_epoch: u64) -> RecordHeader {
        RecordHeader {
            seq,
            segment,
            segment_epoch,
            durable_seq: 0,
            header_blocks: 1,
            data_blocks: 0,
            data_crc: 0,
            entries: Vec::new(),
        }
    }

    /// Adds one entry; a write's data follows the data already in the record.
    pub fn push(&mut self, e: Entry) -> Result<(), RecordError> {
        if e.num_blocks == 0 {
            return Err(RecordError::Inconsistent("empty entry"));
        }
        let data = if e.op == EntryOp::Write {
            e.num_blocks
        } else {
            0
        };
        let total = self.data_blocks.checked_add(data);
        if self.entries.len() >= MAX_ENTRIES || total.is_none_or(|t| t > MAX_DATA_BLOCKS) {
            return Err(RecordError::Full);
        }
        self.entries.push(e);
        self.data_blocks += data;
        self.header_blocks = header_blocks_for(self.entries.len());
        Ok(())
    }

    /// Total blocks the record takes in its segment.
    pub fn total_blocks(&self) -> u32 {
        self.header_blocks + self.data_blocks
    }

    /// Writes the header into `out` (`header_blocks * 4 KiB` bytes); `data_crc` must already
    /// be the crc32c of the record's data blocks.
    pub fn encode(&self, out: &mut [u8]) {
        let len = self.header_blocks as usize * BLOCK_BYTES;
        assert!(out.len() >= len, "header buffer too small");
        let out = &mut out[..len];
        out.fill(0);
        out[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        out[4..6].copy_from_slice(&RECORD_VERSION.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.segment.to_le_bytes());
        out[24..32].copy_from_slice(&self.segment_epoch.to_le_bytes());
        out[32..36].copy_from_slice(&(self.entries.len() as u32).to_le_bytes());
        out[36..40].copy_from_slice(&self.header_blocks.to_le_bytes());
        out[40..44].copy_from_slice(&self.data_blocks.to_le_bytes());
        out[44..48].copy_from_slice(&self.data_crc.to_le_bytes());
        out[48..56].copy_from_slice(&self.durable_seq.to_le_bytes());
        for (i, e) in self.entries.iter().enumerate() {
            let o = FIXED_HEADER_BYTES + i * ENTRY_BYTES;
            debug_assert!(e.volume <= u32::MAX as u64);
            out[o..o + 4].copy_from_slice(&(e.volume as u32).to_le_bytes());
            out[o + 4] = e.op as u8;
            out[o + 8..o + 16].copy_from_slice(&e.lba.to_le_bytes());
            out[o + 16..o + 20].copy_from_slice(&e.num_blocks.to_le_bytes());
            out[o + 20..o + 24].copy_from_slice(&e.data_crc.to_le_bytes());
            out[o + 24..o + 32].copy_from_slice(&e.data_seq.to_le_bytes());
        }
        let crc = crc32c::crc32c(out);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
    }

    /// From a record's first block alone: its (sequence number, segment), if the block
    /// starts like a record of this version. Nothing is checksummed (a header may span
    /// several blocks): recovery's probe for segments used since a checkpoint uses it, and a
    /// false match costs only a read of the segment, whose chain is then checked whole.
    pub fn peek(block: &[u8]) -> Option<(u64, u64)> {
        let block = block.get(..FIXED_HEADER_BYTES)?;
        let u64_at = |o: usize| u64::from_le_bytes(block[o..o + 8].try_into().expect("8"));
        (block[0..4] == RECORD_MAGIC.to_le_bytes() && block[4..6] == RECORD_VERSION.to_le_bytes())
            .then(|| (u64_at(8), u64_at(16)))
    }

    /// Reads a header from `bytes` (at least its first block; all its blocks for success).
    pub fn decode(bytes: &[u8]) -> Result<RecordHeader, RecordError> {
        if bytes.len() < BLOCK_BYTES {
            return Err(RecordError::Inconsistent("shorter than one block"));
        }
        let u16_at = |o: usize| u16::from_le_bytes(bytes[o..o + 2].try_into().expect("2"));
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4"));
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8"));
        let magic = u32_at(0);
        if magic != RECORD_MAGIC {
            return Err(RecordError::NoRecord(magic));
        }
        let count = u32_at(32) as usize;
        let header_blocks = u32_at(36);
        if count > MAX_ENTRIES || header_blocks != header_blocks_for(count) {
            return Err(RecordError::Inconsistent(
                "entry count and header size disagree",
            ));
        }
        let len = header_blocks as usize * BLOCK_BYTES;
        if bytes.len() < len {
            return Err(RecordError::Inconsistent(
                "header runs past the bytes given",
            ));
        }
        let stored = u32_at(60);
        let mut h = crc32c::crc32c(&bytes[..60]);
        h = crc32c::crc32c_append(h, &[0u8; 4]);
        h = crc32c::crc32c_append(h, &bytes[64..len]);
        if h != stored {
            return Err(RecordError::HeaderChecksum);
        }
        let version = u16_at(4);
        if version != RECORD_VERSION {
            return Err(RecordError::Version(version));
        }
        // Numbers at or above MAX_SEQ are never handed out: such a header is damage (and
        // would alias the summary's header marks).
        let seq = u64_at(8);
        if [8, 24, 48].iter().any(|&o| u64_at(o) >= MAX_SEQ) {
            return Err(RecordError::Inconsistent("impossible sequence number"));
        }
        let mut entries = Vec::with_capacity(count);
        let mut data_blocks = 0u32;
        for i in 0..count {
            let o = FIXED_HEADER_BYTES + i * ENTRY_BYTES;
            let op = match bytes[o + 4] {
                1 => EntryOp::Write,
                2 => EntryOp::Unmap,
                _ => return Err(RecordError::Inconsistent("unknown entry op")),
            };
            let num_blocks = u32_at(o + 16);
            if num_blocks == 0 {
                return Err(RecordError::Inconsistent("empty entry"));
            }
            if op == EntryOp::Write {
                data_blocks = data_blocks
                    .checked_add(num_blocks)
                    .ok_or(RecordError::Inconsistent("data size overflows"))?;
            }
            // A moved write's number is its original's, older than the record moving it.
            let data_seq = u64_at(o + 24);
            if data_seq >= MAX_SEQ || (data_seq != 0 && data_seq >= seq) {
                return Err(RecordError::Inconsistent("impossible data sequence number"));
            }
            entries.push(Entry {
                volume: u32_at(o) as u64,
                lba: u64_at(o + 8),
                num_blocks,
                op,
                data_crc: u32_at(o + 20),
                data_seq,
            });
        }
        if data_blocks != u32_at(40) || data_blocks > MAX_DATA_BLOCKS {
            return Err(RecordError::Inconsistent("entries and data size disagree"));
        }
        Ok(RecordHeader {
            seq,
            segment: u64_at(16),
            segment_epoch: u64_at(24),
            durable_seq: u64_at(48),
            header_blocks,
            data_blocks,
            data_crc: u32_at(44),
            entries,
        })
    }

    /// Checks the record's data (its `data_blocks` blocks, right after the header).
    pub fn verify_data(&self, data: &[u8]) -> Result<(), RecordError> {
        let len = self.data_blocks as usize * BLOCK_BYTES;
        if data.len() < len || crc32c::crc32c(&data[..len]) != self.data_crc {
            return Err(RecordError::DataChecksum);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (RecordHeader, Vec<u8>) {
        let mut h = RecordHeader::new(77, 3, 70);
        let mut data = Vec::new();
        for i in 0..5u64 {
            let block = vec![i as u8 + 1; BLOCK_BYTES * 2];
            h.push(Entry {
                volume: 1,
                lba: i * 10,
                num_blocks: 2,
                op: EntryOp::Write,
                data_crc: crc32c::crc32c(&block),
                data_seq: 0,
            })
            .unwrap();
            data.extend_from_slice(&block);
        }
        h.push(Entry {
            volume: 2,
            lba: 5,
            num_blocks: 100,
            op: EntryOp::Unmap,
            data_crc: 0,
            data_seq: 0,
        })
        .unwrap();
        h.data_crc = crc32c::crc32c(&data);
        (h, data)
    }

    #[test]
    fn round_trips_and_checks_data() {
        let (h, data) = sample();
        let mut buf = vec![0u8; h.header_blocks as usize * BLOCK_BYTES];
        h.encode(&mut buf);
        let back = RecordHeader::decode(&buf).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.total_blocks(), 1 + 10);
        back.verify_data(&data).unwrap();
        let mut bad = data.clone();
        bad[5000] ^= 1;
        assert_eq!(back.verify_data(&bad), Err(RecordError::DataChecksum));
    }

    #[test]
    fn a_header_of_several_blocks_is_known_by_its_first_block() {
        let mut h = RecordHeader::new(77, 5, 70);
        for i in 0..200 {
            h.push(Entry {
                volume: 1,
                lba: i * 2,
                num_blocks: 1,
                op: EntryOp::Unmap,
                data_crc: 0,
                data_seq: 0,
            })
            .unwrap();
        }
        assert_eq!(h.header_blocks, 2);
        let mut buf = vec![0u8; 2 * BLOCK_BYTES];
        h.encode(&mut buf);
        assert!(RecordHeader::decode(&buf[..BLOCK_BYTES]).is_err());
        assert_eq!(RecordHeader::peek(&buf[..BLOCK_BYTES]), Some((77, 5)));
        assert_eq!(RecordHeader::peek(&[0u8; BLOCK_BYTES]), None);
        assert_eq!(RecordHeader::peek(&buf[..10]), None);
    }

    #[test]
    fn flipped_header_bits_and_torn_headers_are_caught() {
        let (h, _) = sample();
        let mut good = vec![0u8; BLOCK_BYTES];
        h.encode(&mut good);
        for byte in [0usize, 5, 9, 17, 25, 33, 41, 45, 61, 64, 90, 250, 4000] {
            let mut b = good.clone();
            b[byte] ^= 0x10;
            assert!(
                RecordHeader::decode(&b).is_err(),
                "flip at {byte} not caught"
            );
        }
        // A torn write: the tail of the header block never made it.
        let mut torn = good.clone();
        torn[100..].fill(0);
        assert!(RecordHeader::decode(&torn).is_err());
        // Zeroes, as a fresh segment reads: no record.
        assert_eq!(
            RecordHeader::decode(&vec![0u8; BLOCK_BYTES]),
            Err(RecordError::NoRecord(0))
        );
    }

    #[test]
    fn large_records_span_header_blocks_and_are_bounded() {
        let mut h = RecordHeader::new(1, 0, 0);
        for i in 0..500 {
            h.push(Entry {
                volume: 0,
                lba: i,
                num_blocks: 1,
                op: EntryOp::Write,
                data_crc: 0,
                data_seq: 0,
            })
            .unwrap();
        }
        assert_eq!(h.header_blocks, header_blocks_for(500));
        assert!(h.header_blocks > 1);
        let mut buf = vec![0u8; h.header_blocks as usize * BLOCK_BYTES];
        h.encode(&mut buf);
        assert_eq!(RecordHeader::decode(&buf).unwrap().entries.len(), 500);
        // Truncated to its first block, it is refused rather than misread.
        assert!(RecordHeader::decode(&buf[..BLOCK_BYTES]).is_err());
        // Data beyond the bound is refused.
        let mut full = RecordHeader::new(1, 0, 0);
        let big = Entry {
            volume: 0,
            lba: 0,
            num_blocks: MAX_DATA_BLOCKS,
            op: EntryOp::Write,
            data_crc: 0,
            data_seq: 0,
        };
        full.push(big).unwrap();
        assert_eq!(
            full.push(Entry {
                num_blocks: 1,
                ..big
            }),
            Err(RecordError::Full)
        );
    }
}
