//! The segment summary: for each pool block of a segment's current use, in memory, the
//! sequence number of the write whose data it holds, that write's owner (volume and LBA) and
//! its data checksum. The extent table reads the numbers (`LsvPool::seq_of`); the cleaner
//! finds a victim's live blocks and record headers through it (`victim_read.rs`).

use super::*;

/// In a segment summary, the mark of a record's first header block (sequence numbers, which
/// the summary holds for data blocks, never come near it).
const HEADER_MARK: u64 = 0xFFFF << 48;

/// The summary of one segment's current use, in memory only: for each block, the sequence
/// number of the write whose data it holds, that write's owner (volume and LBA) and, at the
/// write's first block, its data checksum; set before the block is written (by the segment's
/// only writer, or at recovery) and read lock-free by anyone (the extent table's `seq_of`,
/// the cleaner). A block the cleaner moved keeps its original write's number. 20 bytes per
/// pool block of a segment that has taken a record.
pub(super) struct SegmentSeqs {
    pub(super) seqs: Box<[AtomicU64]>,
    /// Per block: `pack_owner(volume, lba, first)` of the write whose data it holds (`first`:
    /// the write's first block), or `NO_OWNER` (a header block, or an owner too large).
    owners: Box<[AtomicU64]>,
    /// At a write's first block: the write's data checksum (its entry's `data_crc`).
    write_crcs: Box<[AtomicU32]>,
    /// The newest unmap's sequence number in this use (0: none), or `u64::MAX` once a block's
    /// owner could not be packed. While both checkpoints cover it, the owners alone say what
    /// the cleaner must move out of the segment (`LsvPool::for_each_owner`).
    headers_needed_after: AtomicU64,
}

/// In a segment summary's owners, a block that holds no write's data (or one whose owner did
/// not fit `pack_owner`).
const NO_OWNER: u64 = u64::MAX;
/// Owners pack a volume id below this into their top 16 bits.
const OWNER_VOLUMES: u64 = 0xFFFF;
/// Below the volume, the bit that marks a write's first block, then the LBA.
const OWNER_FIRST: u64 = 1 << 47;
const OWNER_LBA_BITS: u32 = 47;

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

impl LsvPool {
    pub(super) fn seqs_of(&self, seg: u64) -> &SegmentSeqs {
        self.summaries[seg as usize].get_or_init(|| SegmentSeqs {
            seqs: (0..self.seg_blocks).map(|_| AtomicU64::new(0)).collect(),
            owners: (0..self.seg_blocks)
                .map(|_| AtomicU64::new(NO_OWNER))
                .collect(),
            write_crcs: (0..self.seg_blocks).map(|_| AtomicU32::new(0)).collect(),
            headers_needed_after: AtomicU64::new(0),
        })
    }

    /// Notes, before the record is written, which write's data each of its blocks holds, and
    /// the segment's age.
    /// The record's first header block is marked `HEADER_MARK | header blocks`, so the
    /// cleaner can read a victim's headers without walking its chain (`victim_read`).
    pub(in crate::lsv) fn summarize(&self, h: &RecordHeader, first_data_pba: u64) {
        let seqs = self.seqs_of(h.segment);
        let seg_start = self.segment_first_block(h.segment);
        self.usage.note_write(h.segment, h.seq, h.segment_epoch);
        debug_assert!(h.seq < HEADER_MARK && (h.header_blocks as u64) < 1 << 32);
        let header_at = (first_data_pba - h.header_blocks as u64 - seg_start) as usize;
        if header_at == 0 {
            // A new use of the segment: its unmaps so far are none.
            seqs.headers_needed_after.store(0, Ordering::Release);
        }
        seqs.seqs[header_at].store(HEADER_MARK | h.header_blocks as u64, Ordering::Release);
        for o in &seqs.owners[header_at..header_at + h.header_blocks as usize] {
            o.store(NO_OWNER, Ordering::Release);
        }
        let mut pba = first_data_pba;
        for e in &h.entries {
            let seq = e.seq_in(h.seq);
            if e.op == EntryOp::Write {
                for b in 0..e.num_blocks as u64 {
                    let at = (pba + b - seg_start) as usize;
                    seqs.seqs[at].store(seq, Ordering::Release);
                    let owner = e
                        .lba
                        .checked_add(b)
                        .and_then(|lba| pack_owner(e.volume, lba, b == 0));
                    if b == 0 {
                        seqs.write_crcs[at].store(e.data_crc, Ordering::Release);
                    }
                    if owner.is_none() {
                        seqs.headers_needed_after.store(u64::MAX, Ordering::Release);
                    }
                    seqs.owners[at].store(owner.unwrap_or(NO_OWNER), Ordering::Release);
                }
                pba += e.num_blocks as u64;
            } else {
                seqs.headers_needed_after.fetch_max(seq, Ordering::AcqRel);
            }
        }
    }

    /// Memory the segment summaries take: 20 bytes (a sequence number, an owner and a
    /// checksum) per block of every segment that has one: that has taken a record since the
    /// pool was opened, or that held mapped blocks in the checkpoint recovery loaded. They are
    /// never freed: at most 20 bytes per 4 KiB block of the pool (about 0.5% of its size).
    pub(in crate::lsv) fn summary_bytes(&self) -> u64 {
        let summarized = self.summaries.iter().filter(|s| s.get().is_some()).count() as u64;
        let per_block = (size_of::<AtomicU64>() * 2 + size_of::<AtomicU32>()) as u64;
        summarized * self.seg_blocks as u64 * per_block
    }

    /// Calls `f(block offset, volume, lba)` for every block of victim `seg` that the summary
    /// names an owner for, and returns true; or returns false, calling nothing,
    /// if the summary cannot say alone what cleaning the segment must keep: it has none, or it
    /// does not begin at the segment's first block (after a restart, a segment whose records
    /// are older than the checkpoint), or the segment holds an unmap that a checkpoint does not
    /// cover yet (it must be logged again, and only its header has it), or an owner too large
    /// to pack. Owners left by an earlier use of the segment, where this use has not written,
    /// may be among those named: the caller keeps only blocks an extent table maps to, and no
    /// table maps into a segment's earlier use once it was cleaned. `headers_needed_after`
    /// looks at unmaps only, where `Cleaner::unread_cleanable` looks at every record: a
    /// victim read through its summary still has its live blocks moved, so only its unmaps
    /// need the checkpoints' cover.
    pub(in crate::lsv) fn for_each_owner(
        &self,
        seg: u64,
        mut f: impl FnMut(u32, u32, u64),
    ) -> bool {
        let Some(s) = self.summaries[seg as usize].get() else {
            return false;
        };
        if s.seqs[0].load(Ordering::Acquire) & HEADER_MARK != HEADER_MARK
            || s.headers_needed_after.load(Ordering::Acquire) > self.reusable_seq()
        {
            return false;
        }
        for (i, o) in s.owners.iter().enumerate() {
            let o = o.load(Ordering::Acquire);
            if o != NO_OWNER {
                let (volume, lba, _) = unpack_owner(o);
                f(i as u32, volume, lba);
            }
        }
        true
    }

    /// The write whose data block `at` of segment `seg` holds, as the summary has it: (its
    /// first block, its blocks, its data checksum). None if the summary does not hold one
    /// whole write there (then read the victim's headers). Bounded: the walk is at most a
    /// segment. Past the current use's last record, an earlier use's owners may rarely seem
    /// to go on with the write (a moved write, which keeps its sequence number, can land in
    /// two uses at the same offset): the checksum then fails, and the victim is read whole.
    pub(in crate::lsv) fn summarized_write(&self, seg: u64, at: u32) -> Option<(u32, u32, u32)> {
        let s = self.summaries[seg as usize].get()?;
        let owner =
            |i: usize| Some(s.owners.get(i)?.load(Ordering::Acquire)).filter(|&o| o != NO_OWNER);
        let seq = |i: usize| s.seqs[i].load(Ordering::Acquire);
        // One write's blocks: the same volume and sequence number, LBAs one apart.
        let follows = |i: usize| -> Option<bool> {
            let (v, lba, first) = unpack_owner(owner(i)?);
            let (pv, plba, _) = unpack_owner(owner(i.checked_sub(1)?)?);
            Some(!first && v == pv && lba == plba + 1 && seq(i) == seq(i - 1))
        };
        let mut start = at as usize;
        while !unpack_owner(owner(start)?).2 {
            if !follows(start)? {
                return None;
            }
            start -= 1;
        }
        let mut end = start + 1;
        while end < s.owners.len() && follows(end) == Some(true) {
            end += 1;
        }
        Some((
            start as u32,
            (end - start) as u32,
            s.write_crcs[start].load(Ordering::Acquire),
        ))
    }

    /// Where segment `seg`'s summary marks record headers: (block offset, header blocks),
    /// in offset order, appended to `out`. Marks of an earlier use of the segment may be
    /// among them (where the current use has not written); the chain walk skips those.
    pub(in crate::lsv) fn header_marks(&self, seg: u64, out: &mut Vec<(u32, u32)>) {
        let Some(s) = self.summaries[seg as usize].get() else {
            return;
        };
        for (i, v) in s.seqs.iter().enumerate() {
            let v = v.load(Ordering::Acquire);
            if v & HEADER_MARK == HEADER_MARK {
                let blocks = (v & 0xFFFF_FFFF) as u32;
                if blocks > 0 && i + blocks as usize <= self.seg_blocks {
                    out.push((i as u32, blocks));
                }
            }
        }
    }

    /// The sequence number of the write whose data is at pool block `pba`.
    pub(in crate::lsv) fn seq_of(&self, pba: u64) -> u64 {
        let seg = self.segment_of(pba);
        match self.summaries[seg as usize].get() {
            Some(s) => {
                let seq =
                    s.seqs[(pba - self.segment_first_block(seg)) as usize].load(Ordering::Acquire);
                debug_assert!(
                    seq & HEADER_MARK != HEADER_MARK,
                    "block {pba} is mapped but holds a record header"
                );
                seq
            }
            None => {
                debug_assert!(
                    false,
                    "block {pba} is mapped but its segment has no summary"
                );
                0
            }
        }
    }
}
