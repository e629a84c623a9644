//! The segment summary on disk: which write's data each block of a segment's use holds,
//! written once the use is sealed, so that the cleaner finds a victim's live blocks with one
//! read and the pool keeps none of it in memory (it kept 12 bytes a block before format
//! version 4).
//!
//! Each segment has `summary_blocks` 4 KiB blocks of its own in the pool's summary region
//! (`Superblock::summary_offset_of`). The writer of a segment's use (a reactor's log head, or
//! a cleaner stream) builds the summary in memory as it numbers each record
//! (`SummaryBuilder::note`), and writes it when the use is sealed (the next record does not
//! fit). Nothing waits for that write and nothing depends on it: a summary is a hint, checked
//! before use (its checksum, its pool, its segment and the use's newest record), and a
//! victim without a good one is read through its record headers instead, as before. Every
//! block it names is moved only if an extent table still maps it there, and only after the
//! write holding it is read and matches the write's data checksum kept here.
//!
//! ## Format (version 1, little endian)
//!
//! ```text
//!  0  magic          4 bytes  "USS1"
//!  4  version        u32      1
//!  8  pool uuid      16 bytes
//! 24  segment        u64
//! 32  last_seq       u64      the newest record of the use (the usage table's `last_seq`:
//!                             record numbers are never reused, so it names the use; a use
//!                             that took no record keeps the last one's, but it has nothing
//!                             live, and its last use was cleaned whole)
//! 40  unmaps_after   u64      the newest unmap's sequence number in the use (0: none), or
//!                             u64::MAX if a block's owner did not fit `pack_owner`
//! 48  seg_blocks     u32      blocks per segment
//! 52  reserved       zero up to byte 60
//! 60  crc32c         u32      of the whole summary (every block), these 4 bytes as zero
//! 64  owners         u64 per block: `pack_owner(volume, lba, first)` of the write whose
//!                    data it holds (`first`: the write's first block), or NO_OWNER
//! 64 + 8 * seg_blocks
//!     write crcs     u32 per block: at a write's first block, the write's data checksum
//!                    (its entry's `data_crc`); zero elsewhere
//! ```
//!
//! Bounds: a summary is `summary_blocks(segment_bytes)` blocks (7 for 8 MiB segments, 193 for
//! 256 MiB); a builder holds two (one filling, one being written), and a use sealed while
//! the last use's summary is still being written goes without one.

use uuid::Uuid;

use super::record::{EntryOp, RecordHeader, BLOCK_BYTES};
use crate::mem::DmaRegion;

const MAGIC: &[u8; 4] = b"USS1";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 64;
const CRC_AT: usize = 60;
/// Bytes per block in a summary: an owner and a write checksum.
const BYTES_PER_BLOCK: u64 = 12;

/// In the owners, a block that holds no write's data (a header block, a block not written
/// in this use, or one whose owner did not fit `pack_owner`).
const NO_OWNER: u64 = u64::MAX;
/// Owners pack a volume id below this into their top 16 bits.
const OWNER_VOLUMES: u64 = 0xFFFF;
/// Below the volume, the bit that marks a write's first block, then the LBA.
const OWNER_FIRST: u64 = 1 << 47;
const OWNER_LBA_BITS: u32 = 47;

/// 4 KiB blocks a summary of a segment of `segment_bytes` takes.
pub fn summary_blocks(segment_bytes: u64) -> u64 {
    let seg_blocks = segment_bytes / BLOCK_BYTES as u64;
    (HEADER_BYTES as u64 + BYTES_PER_BLOCK * seg_blocks).div_ceil(BLOCK_BYTES as u64)
}

/// A block's owner in one word: the volume in the top 16 bits, whether the block is its
/// write's first, and the LBA in the low 47 (None if the volume or LBA does not fit; such a
/// segment is cleaned from its headers).
fn pack_owner(volume: u64, lba: u64, first: bool) -> Option<u64> {
    (volume < OWNER_VOLUMES && lba < 1 << OWNER_LBA_BITS)
        .then_some(volume << (OWNER_LBA_BITS + 1) | if first { OWNER_FIRST } else { 0 } | lba)
}

/// (volume, lba, first block of its write).
fn unpack_owner(owner: u64) -> (u32, u64, bool) {
    debug_assert_ne!(owner, NO_OWNER);
    (
        (owner >> (OWNER_LBA_BITS + 1)) as u32,
        owner & ((1 << OWNER_LBA_BITS) - 1),
        owner & OWNER_FIRST != 0,
    )
}

fn crc_of(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&bytes[..CRC_AT]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &bytes[CRC_AT + 4..])
}

/// The summary of a segment's use, built by the use's only writer as it numbers each
/// record, and handed out to be written once the use is sealed.
pub(super) struct SummaryBuilder {
    seg_blocks: usize,
    bytes: usize,
    uuid: Uuid,
    buffers: [DmaRegion; 2],
    /// The buffer being filled, and the segment whose use it summarizes.
    building: Option<(usize, u64)>,
    /// The buffer whose write is in flight.
    writing: Option<usize>,
    last_seq: u64,
    unmaps_after: u64,
}

impl SummaryBuilder {
    pub fn new(segment_bytes: u64, uuid: Uuid) -> std::io::Result<SummaryBuilder> {
        let bytes = summary_blocks(segment_bytes) as usize * BLOCK_BYTES;
        Ok(SummaryBuilder {
            seg_blocks: segment_bytes as usize / BLOCK_BYTES,
            bytes,
            uuid,
            buffers: [DmaRegion::new(bytes, false)?, DmaRegion::new(bytes, false)?],
            building: None,
            writing: None,
            last_seq: 0,
            unmaps_after: 0,
        })
    }

    fn buf(&mut self, i: usize) -> &mut [u8] {
        // SAFETY: the builder's own region, `bytes` long; a buffer is filled only while no
        // write of it is in flight (`writing` is another index), and `&mut self` makes the
        // access unique.
        unsafe { std::slice::from_raw_parts_mut(self.buffers[i].as_ptr(), self.bytes) }
    }

    /// A new use of segment `seg` begins (its first record is next): it is summarized in the
    /// buffer no write holds. The last use, if it was not sealed, is dropped.
    pub fn begin(&mut self, seg: u64) {
        let free = (0..2).find(|&i| self.writing != Some(i));
        self.building = free.map(|i| (i, seg));
        self.last_seq = 0;
        self.unmaps_after = 0;
        if let Some(i) = free {
            let owners_end = HEADER_BYTES + 8 * self.seg_blocks;
            let buf = self.buf(i);
            buf[..HEADER_BYTES].fill(0);
            buf[HEADER_BYTES..owners_end].fill(0xFF);
            buf[owners_end..].fill(0);
        }
    }

    /// Notes record `h` of the use being summarized, its first data block at block
    /// `first_data_at` of the segment.
    pub fn note(&mut self, h: &RecordHeader, first_data_at: usize) {
        let Some((i, seg)) = self.building else {
            return;
        };
        debug_assert_eq!(h.segment, seg, "a record of another segment");
        debug_assert!(h.seq > self.last_seq, "records are noted in their order");
        self.last_seq = h.seq;
        let seg_blocks = self.seg_blocks;
        let mut unmaps_after = self.unmaps_after;
        let buf = self.buf(i);
        let (owners, crcs) = buf[HEADER_BYTES..].split_at_mut(8 * seg_blocks);
        let mut at = first_data_at;
        for e in &h.entries {
            if e.op != EntryOp::Write {
                unmaps_after = unmaps_after.max(e.seq_in(h.seq));
                continue;
            }
            for b in 0..e.num_blocks as usize {
                let Some(o) = owners.get_mut(8 * (at + b)..8 * (at + b + 1)) else {
                    debug_assert!(false, "a record past its segment's end");
                    unmaps_after = u64::MAX;
                    break;
                };
                let owner = e
                    .lba
                    .checked_add(b as u64)
                    .and_then(|lba| pack_owner(e.volume, lba, b == 0));
                if owner.is_none() {
                    unmaps_after = u64::MAX;
                }
                o.copy_from_slice(&owner.unwrap_or(NO_OWNER).to_le_bytes());
                if b == 0 {
                    crcs[4 * at..4 * at + 4].copy_from_slice(&e.data_crc.to_le_bytes());
                }
            }
            at += e.num_blocks as usize;
        }
        self.unmaps_after = unmaps_after;
    }

    /// The use being summarized is sealed: its summary, ready to write (segment, buffer,
    /// bytes), lent to that write until `written`. None if it goes without one: the last
    /// summary's write is still in flight, or the use holds no record.
    pub fn seal(&mut self) -> Option<(u64, *mut u8, usize)> {
        let (i, seg) = self.building.take()?;
        if self.last_seq == 0 || self.writing.is_some() {
            return None;
        }
        let (uuid, last_seq, unmaps_after, seg_blocks) =
            (self.uuid, self.last_seq, self.unmaps_after, self.seg_blocks);
        let buf = self.buf(i);
        buf[0..4].copy_from_slice(MAGIC);
        buf[4..8].copy_from_slice(&VERSION.to_le_bytes());
        buf[8..24].copy_from_slice(uuid.as_bytes());
        buf[24..32].copy_from_slice(&seg.to_le_bytes());
        buf[32..40].copy_from_slice(&last_seq.to_le_bytes());
        buf[40..48].copy_from_slice(&unmaps_after.to_le_bytes());
        buf[48..52].copy_from_slice(&(seg_blocks as u32).to_le_bytes());
        let crc = crc_of(buf);
        buf[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        self.writing = Some(i);
        Some((seg, self.buffers[i].as_ptr(), self.bytes))
    }

    /// Whether the summary `seal` handed out is still lent to its write.
    pub fn is_writing(&self) -> bool {
        self.writing.is_some()
    }

    /// The write `seal` handed out is over (done or failed): its buffer is free.
    pub fn written(&mut self) {
        debug_assert!(self.writing.is_some(), "no summary write was in flight");
        self.writing = None;
    }
}

/// A summary read back, checked: it is the summary of the use that a segment holds now.
pub(super) struct SummaryView<'a> {
    owners: &'a [u8],
    crcs: &'a [u8],
    unmaps_after: u64,
}

impl<'a> SummaryView<'a> {
    /// `bytes` as the summary of segment `seg` of pool `uuid`, in its use whose newest record
    /// is `last_seq`; None if it is not (damaged, never written, or another use's).
    pub fn check(
        bytes: &'a [u8],
        uuid: Uuid,
        seg: u64,
        last_seq: u64,
        seg_blocks: usize,
    ) -> Option<SummaryView<'a>> {
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let owners_end = HEADER_BYTES + 8 * seg_blocks;
        if bytes.len() < owners_end + 4 * seg_blocks
            || &bytes[0..4] != MAGIC
            || u32_at(4) != VERSION
            || bytes[8..24] != *uuid.as_bytes()
            || u64_at(24) != seg
            || last_seq == 0
            || u64_at(32) != last_seq
            || u32_at(48) as usize != seg_blocks
            || u32_at(CRC_AT) != crc_of(bytes)
        {
            return None;
        }
        Some(SummaryView {
            owners: &bytes[HEADER_BYTES..owners_end],
            crcs: &bytes[owners_end..owners_end + 4 * seg_blocks],
            unmaps_after: u64_at(40),
        })
    }

    /// The newest unmap's sequence number in the use (0: none; u64::MAX: the summary cannot
    /// name every block's owner).
    pub fn unmaps_after(&self) -> u64 {
        self.unmaps_after
    }

    fn owner(&self, i: usize) -> Option<(u32, u64, bool)> {
        let o = u64::from_le_bytes(self.owners.get(8 * i..8 * i + 8)?.try_into().ok()?);
        (o != NO_OWNER).then(|| unpack_owner(o))
    }

    /// Calls `f(block offset, volume, lba)` for every block that holds a write's data.
    pub fn for_each_owner(&self, mut f: impl FnMut(u32, u32, u64)) {
        for i in 0..self.owners.len() / 8 {
            if let Some((volume, lba, _)) = self.owner(i) {
                f(i as u32, volume, lba);
            }
        }
    }

    /// The write whose data block `at` holds: (its first block, its blocks, its data
    /// checksum). None if `at` holds none. Bounded: the walk is at most a segment.
    pub fn write_at(&self, at: u32) -> Option<(u32, u32, u32)> {
        // One write's blocks: the same volume, LBAs one apart, only the first marked.
        let follows = |i: usize| -> Option<bool> {
            let (v, lba, first) = self.owner(i)?;
            let (pv, plba, _) = self.owner(i.checked_sub(1)?)?;
            Some(!first && v == pv && plba.checked_add(1) == Some(lba))
        };
        let mut start = at as usize;
        while !self.owner(start)?.2 {
            if !follows(start)? {
                return None;
            }
            start -= 1;
        }
        let mut end = start + 1;
        while follows(end) == Some(true) {
            end += 1;
        }
        let crc = u32::from_le_bytes(self.crcs.get(4 * start..4 * start + 4)?.try_into().ok()?);
        Some((start as u32, (end - start) as u32, crc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsv::record::Entry;

    const SEG_BYTES: u64 = 1 << 20;

    fn write(lba: u64, num_blocks: u32, data_crc: u32, data_seq: u64) -> Entry {
        Entry {
            volume: 1,
            lba,
            num_blocks,
            op: EntryOp::Write,
            data_crc,
            data_seq,
        }
    }

    /// Builds a summary of segment 5 from `records` (each at its block offset) and returns
    /// its bytes.
    fn built(records: &[(usize, RecordHeader)]) -> Vec<u8> {
        let mut b = SummaryBuilder::new(SEG_BYTES, Uuid::from_u128(9)).unwrap();
        b.begin(5);
        for (at, h) in records {
            b.note(h, at + h.header_blocks as usize);
        }
        let (seg, ptr, len) = b.seal().expect("a summary");
        assert_eq!(seg, 5);
        // SAFETY: the builder's buffer, lent to this "write" until `written`.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec();
        b.written();
        bytes
    }

    /// A summary tells one write from the next by its first-block mark, not by LBAs that
    /// follow on: adjacent writes of one record and a moved write that follows on in LBA are
    /// each their own, with their own checksum; a header block is none. An unmap in the use
    /// is reported.
    #[test]
    fn a_summary_tells_adjacent_writes_apart() {
        let mut h = RecordHeader::new(1000, 5, 1000);
        h.push(write(10, 4, 0xA, 0)).unwrap();
        h.push(write(14, 2, 0xB, 0)).unwrap();
        h.push(Entry {
            op: EntryOp::Unmap,
            ..write(30, 1, 0, 0)
        })
        .unwrap();
        h.push(write(16, 1, 0xC, 7)).unwrap();
        assert_eq!(h.header_blocks, 1);
        let bytes = built(&[(0, h)]);
        let v = SummaryView::check(&bytes, Uuid::from_u128(9), 5, 1000, 256).unwrap();
        assert_eq!(v.write_at(0), None, "the header block");
        for (at, want) in [
            (1, (1, 4, 0xA)),
            (4, (1, 4, 0xA)),
            (5, (5, 2, 0xB)),
            (6, (5, 2, 0xB)),
            (7, (7, 1, 0xC)),
        ] {
            assert_eq!(v.write_at(at), Some(want), "block {at}");
        }
        assert_eq!(v.write_at(8), None, "never written");
        assert_eq!(v.unmaps_after(), 1000, "the unmap's number");
        let mut named = Vec::new();
        v.for_each_owner(|at, volume, lba| named.push((at, volume, lba)));
        assert_eq!(named.len(), 7);
        assert_eq!(named[0], (1, 1, 10));
        assert_eq!(named[6], (7, 1, 16));
    }

    /// A summary is taken only for the use it was built for, undamaged.
    #[test]
    fn a_damaged_or_stale_summary_is_refused() {
        let mut h = RecordHeader::new(77, 5, 77);
        h.push(write(3, 2, 0xD, 0)).unwrap();
        let bytes = built(&[(0, h)]);
        let uuid = Uuid::from_u128(9);
        assert!(SummaryView::check(&bytes, uuid, 5, 77, 256).is_some());
        assert!(
            SummaryView::check(&bytes, uuid, 5, 78, 256).is_none(),
            "another use"
        );
        assert!(
            SummaryView::check(&bytes, uuid, 6, 77, 256).is_none(),
            "another segment"
        );
        assert!(
            SummaryView::check(&bytes, Uuid::nil(), 5, 77, 256).is_none(),
            "another pool"
        );
        assert!(
            SummaryView::check(&bytes, uuid, 5, 77, 512).is_none(),
            "another size"
        );
        for at in [0, 30, 61, 64, 100, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x20;
            assert!(
                SummaryView::check(&bad, uuid, 5, 77, 256).is_none(),
                "a flipped bit at byte {at}"
            );
        }
        assert!(SummaryView::check(&vec![0; bytes.len()], uuid, 5, 77, 256).is_none());
    }

    /// Two buffers: a use that begins while the last one's summary is being written is
    /// summarized in the other, and goes without a summary only if that write is still in
    /// flight when it is sealed in turn.
    #[test]
    fn a_use_sealed_while_the_last_summary_is_written_goes_without() {
        let mut b = SummaryBuilder::new(SEG_BYTES, Uuid::nil()).unwrap();
        let rec = |seq, seg| {
            let mut h = RecordHeader::new(seq, seg, seq);
            h.push(write(0, 1, 1, 0)).unwrap();
            h
        };
        b.begin(1);
        b.note(&rec(10, 1), 1);
        assert!(b.seal().is_some());
        b.begin(2);
        b.note(&rec(11, 2), 1);
        assert!(
            b.seal().is_none(),
            "one write at a time: the first is in flight"
        );
        b.written();
        b.begin(3);
        b.note(&rec(12, 3), 1);
        assert!(b.seal().is_some());
        b.begin(4);
        assert!(b.seal().is_none(), "no record");
    }

    /// A summary that checks out but holds anything at all (a hostile or buggy writer's:
    /// random owners, checksums and unmap mark, with the header and checksum made right)
    /// is walked without a panic, and every write it names lies inside the segment and
    /// covers the block asked about.
    #[test]
    fn any_well_formed_summary_is_walked_safely() {
        let mut rng = crate::bdev::sim::SimRng::new(17);
        let seg_blocks = 256;
        let mut bytes = built(&[(0, {
            let mut h = RecordHeader::new(5, 5, 5);
            h.push(write(0, 1, 1, 0)).unwrap();
            h
        })]);
        for round in 0..200 {
            for b in bytes[HEADER_BYTES..].chunks_mut(8) {
                // Mostly owners of a few volumes and nearby LBAs, so that runs form.
                let v = match rng.below(4) {
                    0 => NO_OWNER,
                    1 => rng.next_u64(),
                    _ => pack_owner(rng.below(3), rng.below(16), rng.below(3) == 0).unwrap(),
                };
                let n = b.len();
                b.copy_from_slice(&v.to_le_bytes()[..n]);
            }
            bytes[24..32].copy_from_slice(&5u64.to_le_bytes());
            bytes[32..40].copy_from_slice(&(round + 1u64).to_le_bytes());
            bytes[40..48].copy_from_slice(&rng.next_u64().to_le_bytes());
            let crc = crc_of(&bytes);
            bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
            let v = SummaryView::check(&bytes, Uuid::from_u128(9), 5, round + 1, seg_blocks)
                .expect("well formed");
            v.for_each_owner(|at, _, _| assert!((at as usize) < seg_blocks));
            for at in 0..seg_blocks as u32 + 2 {
                if let Some((first, n, _)) = v.write_at(at) {
                    assert!(first <= at && at < first + n, "block {at}: {first}+{n}");
                    assert!((first + n) as usize <= seg_blocks);
                }
            }
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(summary_blocks(1 << 20), 1);
        assert_eq!(summary_blocks(8 << 20), 7);
        assert_eq!(summary_blocks(256 << 20), 193);
    }
}
