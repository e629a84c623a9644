//! The segment summary in memory: for each pool block of a segment's current use, the
//! sequence number of the write whose data it holds, and where its records' headers are. The
//! extent table reads the numbers (`LsvPool::seq_of`); the cleaner finds a victim's record
//! headers through the marks (`victim_read.rs`). Which write each block holds is on disk
//! (`segment_summary.rs`), not here.

use super::*;

/// In a segment summary, the mark of a record's first header block (sequence numbers, which
/// the summary holds for data blocks, never come near it).
const HEADER_MARK: u64 = 0xFFFF << 48;

/// The sequence numbers of one segment's current use, in memory: for each block, the number
/// of the write whose data it holds (a record's first header block: `HEADER_MARK | header
/// blocks`); set before the block is written (by the segment's only writer, or at recovery)
/// and read lock-free by anyone (the extent table's `seq_of`, the cleaner). A block the
/// cleaner moved keeps its original write's number. 8 bytes per pool block of a segment that
/// has taken a record. Which write each block holds is on disk (`segment_summary.rs`).
pub(super) struct SegmentSeqs {
    pub(super) seqs: Box<[AtomicU64]>,
}

impl LsvPool {
    pub(super) fn seqs_of(&self, seg: u64) -> &SegmentSeqs {
        self.summaries[seg as usize].get_or_init(|| SegmentSeqs {
            seqs: (0..self.seg_blocks).map(|_| AtomicU64::new(0)).collect(),
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
        seqs.seqs[header_at].store(HEADER_MARK | h.header_blocks as u64, Ordering::Release);
        let mut at = (first_data_pba - seg_start) as usize;
        for e in h.entries.iter().filter(|e| e.op == EntryOp::Write) {
            let seq = e.seq_in(h.seq);
            for s in &seqs.seqs[at..at + e.num_blocks as usize] {
                s.store(seq, Ordering::Release);
            }
            at += e.num_blocks as usize;
        }
    }

    /// Memory the segment summaries take: 8 bytes (a sequence number) per block of every
    /// segment that has one: that has taken a record since the pool was opened, or that held
    /// mapped blocks in the checkpoint recovery loaded. They are never freed: at most 8 bytes
    /// per 4 KiB block of the pool (0.2% of its size).
    pub(in crate::lsv) fn summary_bytes(&self) -> u64 {
        let summarized = self.summaries.iter().filter(|s| s.get().is_some()).count() as u64;
        summarized * self.seg_blocks as u64 * size_of::<AtomicU64>() as u64
    }

    /// Where segment `seg`'s summary on disk begins (a pool block address), if the pool keeps
    /// summaries (format version 4), and its blocks.
    pub(in crate::lsv) fn summary_on_disk(&self, seg: u64) -> Option<(u64, u64)> {
        let blocks = crate::lsv::segment_summary::summary_blocks(self.sb.segment_bytes);
        let offset = self.sb.summary_offset_of(seg)?;
        Some((offset / BLOCK_BYTES as u64, blocks))
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
