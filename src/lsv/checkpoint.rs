//! Checkpoints: the extent tables and the segment usage table, written to one of the pool's
//! two checkpoint slots (A, B alternate), so that recovery replays only the log written since.
//!
//! ## Checkpoint format (version 2; version 1 is still read)
//!
//! A checkpoint fills its slot from the slot's start: a 4 KiB header, then the body.
//!
//! ```text
//! header, little endian:
//!   0  magic            "UCP1"
//!   4  version          u32  2 (1 still read: its body differs in the entries only)
//!   8  generation       u64  1 for the one written at format, then +1 each time
//!  16  complete_seq     u64  every record with seq <= this is in the checkpoint;
//!                            recovery replays the records after it
//!  24  next_seq         u64  the pool's next sequence number when the snapshot began
//!  32  segment_count    u64
//!  40  volume_count     u32
//!  44  reserved         u32  0
//!  48  body_bytes       u64
//!  56  body_crc         u32  crc32c of the body
//!  60  header_crc       u32  crc32c of bytes 0..60
//! body:
//!   segment_count x 16 bytes: state u8 (0 free, 1 open, 2 sealed or cleaning, 3 cleaned),
//!       3 zero, live_blocks u32, last_seq u64
//!   volume_count x (volume id u32, 4 zero, entry_count u64, entry_count entries in lba order)
//!
//! a version 2 entry: a tag byte, then up to three little-endian fields of the lengths it
//! gives, each measured against the entry before it in the same volume (the first entry
//! against lba -1, pool block -1 and seq 0):
//!   tag bits 0-1  lba gap (lba - previous lba - 1): 0: none (gap 0), 1: 1 byte, 2: 2 bytes,
//!                 3: 8 bytes
//!   tag bits 2-4  where: 0: a tombstone (unmapped; the seq is its unmap's), no bytes;
//!                 1 to 5: that many bytes of zigzag(pool block - (previous mapped entry's
//!                 pool block + 1)), never 0; 6: the previous mapped entry's pool block + 1,
//!                 no bytes; 7: not used
//!   tag bits 5-7  seq step, zigzag(seq - previous seq): 0: none (step 0); 1 to 6: that
//!                 many bytes; 7: 8 bytes (seq: of the write whose data is there, or of
//!                 the unmap)
//!   zigzag(d) = (d << 1) ^ (d >> 63), d an i64: small steps either way take one byte
//! a version 1 entry: 24 bytes: lba u64, pool block u64 (u64::MAX: a tombstone), seq u64
//! ```
//!
//! A block written in order with its neighbours takes 1 byte (one multi-block write's blocks)
//! or 2 (one record's 4 KiB writes, a seq apart); a 4 KiB random write's block about 7 (its
//! address and seq steps are random); no entry takes more than `MAX_ENTRY_BYTES` (22),
//! so a slot sized at 24 bytes a pool block (`format.rs`) holds any map version 1 held.
//!
//! A pool written by an older build opens here (its version 1 checkpoints are read), and its
//! next checkpoints are version 2. An older build reads version 1 only: it takes a version 2
//! checkpoint as damaged and recovers from the other slot, which is safe (recovery may
//! always fall back one checkpoint, see `checkpoint_writer.rs`), and refuses the pool with
//! "checkpoint version 2 is not supported" when the other slot is no use either (version 2
//! too, or damaged). An older build's `pool check` reports a version 2 slot as damaged, and
//! its `--repair` rewrites both slots in version 1 from the other one and the log (nothing is
//! lost); this build's `--repair` writes version 2.
//!
//! The snapshot is fuzzy: writes go on while it is taken. `complete_seq` is one less than the
//! oldest record that was in flight (or not yet numbered) when the snapshot began, so every
//! record at or below it is in the tables; entries from later records may be in the snapshot
//! too, and replaying them again is harmless (an entry is applied only if its sequence number
//! is at least the one it replaces).
//!
//! The body is written and flushed before the header is written with FUA, so a crash in the
//! middle leaves the slot's old header failing its body checksum or the other slot newer:
//! recovery takes the newest slot whose header and body both check out, and falls back to
//! the other slot if the newest is damaged.

use thiserror::Error;

use super::extent_table::Stored;
use super::record::MAX_SEQ;
use super::usage::SegmentState;

pub const CP_MAGIC: &[u8; 4] = b"UCP1";
pub const CP_VERSION: u32 = 2;
/// The oldest checkpoint version this build reads (fixed 24-byte entries).
pub const OLDEST_CP_VERSION: u32 = 1;
pub const CP_HEADER_BYTES: usize = 4096;
const SEGMENT_BYTES: usize = 16;
const VOLUME_BYTES: usize = 16;
/// A version 2 entry's most bytes: its tag, an lba gap in 8, an address step (below 2^34)
/// in 5, a seq step in 8.
pub const MAX_ENTRY_BYTES: usize = 22;
/// Every entry has its tag byte.
const MIN_ENTRY_BYTES: usize = 1;
const V1_ENTRY_BYTES: usize = 24;
const V1_TOMBSTONE_ADDR: u64 = u64::MAX;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CheckpointError {
    #[error("no checkpoint here")]
    NoCheckpoint,
    #[error("checkpoint version {0} is not supported")]
    Version(u32),
    #[error("checkpoint header checksum mismatch")]
    HeaderChecksum,
    #[error("checkpoint body checksum mismatch")]
    BodyChecksum,
    #[error("checkpoint is inconsistent: {0}")]
    Inconsistent(&'static str),
    #[error("checkpoint does not fit its slot ({need} bytes, slot {slot})")]
    TooBig { need: usize, slot: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointHeader {
    /// `CP_VERSION` when written by this build; the body's format.
    pub version: u32,
    pub generation: u64,
    pub complete_seq: u64,
    pub next_seq: u64,
    pub segment_count: u64,
    pub volume_count: u32,
    pub body_bytes: u64,
    pub body_crc: u32,
}

impl CheckpointHeader {
    pub fn encode(&self, out: &mut [u8]) {
        let out = &mut out[..CP_HEADER_BYTES];
        out.fill(0);
        out[0..4].copy_from_slice(CP_MAGIC);
        debug_assert!((OLDEST_CP_VERSION..=CP_VERSION).contains(&self.version));
        out[4..8].copy_from_slice(&self.version.to_le_bytes());
        out[8..16].copy_from_slice(&self.generation.to_le_bytes());
        out[16..24].copy_from_slice(&self.complete_seq.to_le_bytes());
        out[24..32].copy_from_slice(&self.next_seq.to_le_bytes());
        out[32..40].copy_from_slice(&self.segment_count.to_le_bytes());
        out[40..44].copy_from_slice(&self.volume_count.to_le_bytes());
        out[48..56].copy_from_slice(&self.body_bytes.to_le_bytes());
        out[56..60].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32c::crc32c(&out[..60]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
    }

    pub fn decode(b: &[u8]) -> Result<CheckpointHeader, CheckpointError> {
        if b.len() < CP_HEADER_BYTES || &b[0..4] != CP_MAGIC {
            return Err(CheckpointError::NoCheckpoint);
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8"));
        if crc32c::crc32c(&b[..60]) != u32_at(60) {
            return Err(CheckpointError::HeaderChecksum);
        }
        let version = u32_at(4);
        if !(OLDEST_CP_VERSION..=CP_VERSION).contains(&version) {
            return Err(CheckpointError::Version(version));
        }
        let h = CheckpointHeader {
            version,
            generation: u64_at(8),
            complete_seq: u64_at(16),
            next_seq: u64_at(24),
            segment_count: u64_at(32),
            volume_count: u32_at(40),
            body_bytes: u64_at(48),
            body_crc: u32_at(56),
        };
        // Numbers at or above MAX_SEQ are never handed out, and generations count checkpoints,
        // fewer still: such a header is damage. (Recovery also refuses to number on from
        // within `SEQ_HEADROOM` of it.)
        if h.complete_seq >= h.next_seq
            || h.next_seq >= MAX_SEQ
            || h.generation == 0
            || h.generation >= MAX_SEQ
        {
            return Err(CheckpointError::Inconsistent("sequence numbers"));
        }
        Ok(h)
    }
}

/// A segment's row in a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentRow {
    pub state: SegmentState,
    pub live_blocks: u32,
    pub last_seq: u64,
}

fn state_code(s: SegmentState) -> u8 {
    match s {
        SegmentState::Free => 0,
        SegmentState::Open => 1,
        SegmentState::Sealed | SegmentState::Cleaning => 2,
        SegmentState::Cleaned => 3,
    }
}

/// Bytes a value needs (0 for 0).
#[inline(always)]
fn byte_len(v: u64) -> usize {
    (64 - v.leading_zeros() as usize).div_ceil(8)
}

/// Field lengths for the tag's codes: the lba gap's, where's and the seq step's.
const GAP_BYTES: [usize; 4] = [0, 1, 2, 8];
const WHERE_BYTES: [usize; 8] = [0, 1, 2, 3, 4, 5, 0, 0];
const WHERE_TOMBSTONE: u8 = 0;
const WHERE_NEXT: u8 = 6;
const SEQ_BYTES: [usize; 8] = [0, 1, 2, 3, 4, 5, 6, 8];

/// The low `n` bytes of a u64, for n in 0..=8.
const LOW_BYTES: [u64; 9] = [
    0,
    0xFF,
    0xFFFF,
    0xFF_FFFF,
    0xFFFF_FFFF,
    0xFF_FFFF_FFFF,
    0xFFFF_FFFF_FFFF,
    0xFF_FFFF_FFFF_FFFF,
    u64::MAX,
];

/// Reads the `n`-byte (at most 8) little-endian field at `body[*at..]`, moving `at` past it.
/// Entries far from the body's end read it as a whole u64 instead (`decode_entry`).
#[inline(always)]
fn get_field(body: &[u8], at: &mut usize, n: usize) -> Result<u64, CheckpointError> {
    let b = body
        .get(*at..*at + n)
        .ok_or(CheckpointError::Inconsistent("an entry runs past the body"))?;
    let mut word = [0u8; 8];
    word[..n].copy_from_slice(b);
    *at += n;
    Ok(u64::from_le_bytes(word))
}

#[inline]
fn zigzag(d: i64) -> u64 {
    ((d << 1) ^ (d >> 63)) as u64
}

#[inline]
fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

/// Where an entry's fields are measured from: the entry before it in its volume (all zero
/// for a volume's first entry).
#[derive(Debug, Clone, Copy, Default)]
struct EntryBase {
    /// The previous entry's lba + 1.
    next_lba: u64,
    /// The previous mapped entry's pool block + 1.
    next_addr: u64,
    seq: u64,
}

/// Where no volume section is open.
const NO_SECTION: usize = usize::MAX;

/// Writes a checkpoint body (version 2) into a buffer, bounded by the buffer's size. It
/// keeps only its place, and each call takes the buffer, so a body can be written a piece
/// per poll (`checkpoint_writer.rs`).
#[derive(Debug)]
pub struct BodyWriter {
    at: usize,
    /// The open volume section's header (`NO_SECTION`: none), its entries so far, and what
    /// its next entry is measured from.
    section_at: usize,
    section_entries: u64,
    base: EntryBase,
    pub volumes: u32,
}

impl Default for BodyWriter {
    fn default() -> Self {
        BodyWriter {
            at: 0,
            section_at: NO_SECTION,
            section_entries: 0,
            base: EntryBase::default(),
            volumes: 0,
        }
    }
}

impl BodyWriter {
    pub fn new() -> BodyWriter {
        BodyWriter::default()
    }

    /// Bytes written so far.
    pub fn written_bytes(&self) -> usize {
        self.at
    }

    /// Bytes before this are final: the open volume section's count is written when it ends.
    pub fn settled(&self) -> usize {
        if self.section_at == NO_SECTION {
            self.at
        } else {
            self.section_at
        }
    }

    fn room(&self, buf: &[u8], n: usize) -> Result<(), CheckpointError> {
        if self.at + n > buf.len() {
            return Err(CheckpointError::TooBig {
                need: self.at + n,
                slot: buf.len(),
            });
        }
        Ok(())
    }

    pub fn segment(&mut self, buf: &mut [u8], row: SegmentRow) -> Result<(), CheckpointError> {
        debug_assert!(
            self.section_at == NO_SECTION,
            "segment rows come before the volumes"
        );
        self.room(buf, SEGMENT_BYTES)?;
        let b = &mut buf[self.at..self.at + SEGMENT_BYTES];
        b.fill(0);
        b[0] = state_code(row.state);
        b[4..8].copy_from_slice(&row.live_blocks.to_le_bytes());
        b[8..16].copy_from_slice(&row.last_seq.to_le_bytes());
        self.at += SEGMENT_BYTES;
        Ok(())
    }

    pub fn begin_volume(&mut self, buf: &mut [u8], id: u32) -> Result<(), CheckpointError> {
        self.end_volume(buf);
        self.room(buf, VOLUME_BYTES)?;
        let b = &mut buf[self.at..self.at + VOLUME_BYTES];
        b.fill(0);
        b[0..4].copy_from_slice(&id.to_le_bytes());
        self.section_at = self.at;
        self.section_entries = 0;
        self.base = EntryBase::default();
        self.at += VOLUME_BYTES;
        self.volumes += 1;
        Ok(())
    }

    /// Appends the open volume's entry for `lba`, which comes after every lba before it.
    /// Called for every mapped block at each checkpoint: it writes in place, with no branch
    /// on a field's size.
    #[inline]
    pub fn entry(
        &mut self,
        buf: &mut [u8],
        lba: u64,
        stored: Stored,
        seq: u64,
    ) -> Result<(), CheckpointError> {
        assert!(self.section_at != NO_SECTION, "entry outside a volume");
        assert!(lba >= self.base.next_lba, "entries come in lba order");
        let gap = lba - self.base.next_lba;
        let gap_code = match byte_len(gap) {
            0 => 0,
            1 => 1,
            2 => 2,
            _ => 3,
        };
        // where: the address's step from the previous mapped entry's next block.
        let (where_code, where_step, next_addr) = match stored {
            Stored::At(a) => {
                debug_assert!(a <= super::extent_table::MAX_POOL_BLOCK);
                let step = zigzag(a.wrapping_sub(self.base.next_addr) as i64);
                let code = if step == 0 {
                    WHERE_NEXT
                } else {
                    byte_len(step) as u8
                };
                debug_assert!(code <= WHERE_NEXT, "an address step fits 5 bytes");
                (code, step, a + 1)
            }
            Stored::Tombstone(_) => (WHERE_TOMBSTONE, 0, self.base.next_addr),
        };
        let seq_step = zigzag(seq.wrapping_sub(self.base.seq) as i64);
        let seq_bytes = byte_len(seq_step);
        let seq_code = seq_bytes.min(7);
        let tag = gap_code as u8 | where_code << 2 | (seq_code as u8) << 5;
        let fields = [
            (gap, GAP_BYTES[gap_code]),
            (where_step, WHERE_BYTES[where_code as usize]),
            (seq_step, SEQ_BYTES[seq_code]),
        ];
        let n = 1 + fields.iter().map(|f| f.1).sum::<usize>();
        if self.at + MAX_ENTRY_BYTES <= buf.len() {
            // Each field is stored as a whole u64 (the next field or entry overwrites the
            // rest): no branch on a field's length.
            let e = &mut buf[self.at..self.at + MAX_ENTRY_BYTES];
            e[0] = tag;
            let mut o = 1;
            for (v, len) in fields {
                e[o..o + 8].copy_from_slice(&v.to_le_bytes());
                o += len;
            }
        } else {
            // Near the buffer's end: only what fits.
            self.room(buf, n)?;
            buf[self.at] = tag;
            let mut o = self.at + 1;
            for (v, len) in fields {
                buf[o..o + len].copy_from_slice(&v.to_le_bytes()[..len]);
                o += len;
            }
        }
        debug_assert!(n <= MAX_ENTRY_BYTES);
        self.at += n;
        self.section_entries += 1;
        self.base = EntryBase {
            next_lba: lba + 1,
            next_addr,
            seq,
        };
        Ok(())
    }

    /// Ends the open volume section (writes its entry count), if there is one.
    pub fn end_volume(&mut self, buf: &mut [u8]) {
        if self.section_at != NO_SECTION {
            let at = self.section_at;
            buf[at + 8..at + 16].copy_from_slice(&self.section_entries.to_le_bytes());
            self.section_at = NO_SECTION;
        }
    }
}

/// Reads one version 2 entry at `body[*at..]`, measured from `base`, which it moves on.
fn decode_entry(
    body: &[u8],
    at: &mut usize,
    base: &mut EntryBase,
) -> Result<(u64, Stored, u64), CheckpointError> {
    let tag = *body
        .get(*at)
        .ok_or(CheckpointError::Inconsistent("an entry runs past the body"))?;
    let (gap_code, where_code, seq_code) = (tag & 3, (tag >> 2) & 7, tag >> 5);
    let lens = [
        GAP_BYTES[gap_code as usize],
        WHERE_BYTES[where_code as usize],
        SEQ_BYTES[seq_code as usize],
    ];
    let [gap, where_step, seq_step] = if *at + MAX_ENTRY_BYTES <= body.len() {
        // Each field read as a whole u64 and masked: no branch on a field's length.
        let mut o = *at + 1;
        let fields = lens.map(|n| {
            let word = u64::from_le_bytes(body[o..o + 8].try_into().expect("8"));
            o += n;
            word & LOW_BYTES[n]
        });
        *at = o;
        fields
    } else {
        *at += 1;
        [
            get_field(body, at, lens[0])?,
            get_field(body, at, lens[1])?,
            get_field(body, at, lens[2])?,
        ]
    };
    let lba = base
        .next_lba
        .checked_add(gap)
        .filter(|&l| l < u64::MAX)
        .ok_or(CheckpointError::Inconsistent("an lba overflows"))?;
    let seq = base.seq.wrapping_add(unzigzag(seq_step) as u64);
    let stored = match where_code {
        WHERE_TOMBSTONE => Stored::Tombstone(seq),
        1..=WHERE_NEXT => {
            let a = base.next_addr.wrapping_add(unzigzag(where_step) as u64);
            if a > super::extent_table::MAX_POOL_BLOCK {
                return Err(CheckpointError::Inconsistent(
                    "a block address out of range",
                ));
            }
            base.next_addr = a + 1;
            Stored::At(a)
        }
        _ => return Err(CheckpointError::Inconsistent("an unknown entry tag")),
    };
    base.next_lba = lba + 1;
    base.seq = seq;
    Ok((lba, stored, seq))
}

/// Appends a version 1 entry (24 bytes) as older builds wrote it: for the tests and benches
/// that make version 1 bodies.
pub fn push_v1_entry(out: &mut Vec<u8>, lba: u64, stored: Stored, seq: u64) {
    let addr = match stored {
        Stored::At(a) => a,
        Stored::Tombstone(_) => V1_TOMBSTONE_ADDR,
    };
    for v in [lba, addr, seq] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Reads one version 1 entry (24 bytes) at `body[*at..]`.
fn decode_v1_entry(body: &[u8], at: &mut usize) -> Result<(u64, Stored, u64), CheckpointError> {
    let e = body
        .get(*at..*at + V1_ENTRY_BYTES)
        .ok_or(CheckpointError::Inconsistent("entries run past the body"))?;
    let u64_at = |o: usize| u64::from_le_bytes(e[o..o + 8].try_into().expect("8"));
    let (lba, addr, seq) = (u64_at(0), u64_at(8), u64_at(16));
    *at += V1_ENTRY_BYTES;
    let stored = if addr == V1_TOMBSTONE_ADDR {
        Stored::Tombstone(seq)
    } else {
        Stored::At(addr)
    };
    Ok((lba, stored, seq))
}

/// A decoded body: the segment rows, and every volume's entries handed to `entry`
/// (volume id, lba, stored, seq). Every length is checked against the body's size.
pub fn decode_body(
    body: &[u8],
    h: &CheckpointHeader,
    mut entry: impl FnMut(u32, u64, Stored, u64),
) -> Result<Vec<SegmentRow>, CheckpointError> {
    if body.len() as u64 != h.body_bytes {
        return Err(CheckpointError::Inconsistent("body length"));
    }
    if crc32c::crc32c(body) != h.body_crc {
        return Err(CheckpointError::BodyChecksum);
    }
    let segs = h.segment_count as usize;
    let seg_end = segs
        .checked_mul(SEGMENT_BYTES)
        .filter(|&n| n <= body.len())
        .ok_or(CheckpointError::Inconsistent(
            "segment table runs past the body",
        ))?;
    let mut rows = Vec::with_capacity(segs);
    for i in 0..segs {
        let b = &body[i * SEGMENT_BYTES..(i + 1) * SEGMENT_BYTES];
        let state = match b[0] {
            0 => SegmentState::Free,
            1 => SegmentState::Open,
            2 => SegmentState::Sealed,
            3 => SegmentState::Cleaned,
            _ => return Err(CheckpointError::Inconsistent("unknown segment state")),
        };
        rows.push(SegmentRow {
            state,
            live_blocks: u32::from_le_bytes(b[4..8].try_into().expect("4")),
            last_seq: u64::from_le_bytes(b[8..16].try_into().expect("8")),
        });
    }
    let min_entry = if h.version == 1 {
        V1_ENTRY_BYTES
    } else {
        MIN_ENTRY_BYTES
    };
    let mut at = seg_end;
    for _ in 0..h.volume_count {
        if at + VOLUME_BYTES > body.len() {
            return Err(CheckpointError::Inconsistent("volume runs past the body"));
        }
        let id = u32::from_le_bytes(body[at..at + 4].try_into().expect("4"));
        let count = u64::from_le_bytes(body[at + 8..at + 16].try_into().expect("8"));
        at += VOLUME_BYTES;
        // Every entry takes at least `min_entry` bytes, so a count no body could hold is
        // refused before the loop.
        if count > ((body.len() - at) / min_entry) as u64 {
            return Err(CheckpointError::Inconsistent("entries run past the body"));
        }
        let mut base = EntryBase::default();
        for _ in 0..count {
            let (lba, stored, seq) = if h.version == 1 {
                decode_v1_entry(body, &mut at)?
            } else {
                decode_entry(body, &mut at, &mut base)?
            };
            entry(id, lba, stored, seq);
        }
    }
    if at != body.len() {
        return Err(CheckpointError::Inconsistent("bytes after the last volume"));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Entry = (u32, u64, Stored, u64);
    /// A volume's id and its entries (lba, stored, seq).
    type Volume = (u32, Vec<(u64, Stored, u64)>);

    /// A body of `rows` segment rows and these volumes' entries, with its header.
    fn encode(rows: usize, volumes: &[Volume]) -> (CheckpointHeader, Vec<u8>) {
        let mut buf = vec![0u8; 1 << 20];
        let mut w = BodyWriter::new();
        for i in 0..rows {
            let state = [
                SegmentState::Sealed,
                SegmentState::Free,
                SegmentState::Cleaned,
            ][i % 3];
            let row = SegmentRow {
                state,
                live_blocks: i as u32 * 10,
                last_seq: i as u64 * 3,
            };
            w.segment(&mut buf, row).unwrap();
        }
        for (id, entries) in volumes {
            w.begin_volume(&mut buf, *id).unwrap();
            for &(lba, stored, seq) in entries {
                w.entry(&mut buf, lba, stored, seq).unwrap();
            }
        }
        w.end_volume(&mut buf);
        let n = w.written_bytes();
        buf.truncate(n);
        let h = CheckpointHeader {
            version: CP_VERSION,
            generation: 2,
            complete_seq: 5,
            next_seq: 6,
            segment_count: rows as u64,
            volume_count: w.volumes,
            body_bytes: n as u64,
            body_crc: crc32c::crc32c(&buf),
        };
        (h, buf)
    }

    fn decode_all(
        body: &[u8],
        h: &CheckpointHeader,
    ) -> Result<(Vec<SegmentRow>, Vec<Entry>), CheckpointError> {
        let mut seen = Vec::new();
        let rows = decode_body(body, h, |v, l, s, q| seen.push((v, l, s, q)))?;
        Ok((rows, seen))
    }

    fn sample() -> (CheckpointHeader, Vec<u8>) {
        encode(
            3,
            &[
                (
                    1,
                    vec![
                        (7, Stored::At(1000), 4),
                        (8, Stored::At(1001), 4),
                        (9, Stored::Tombstone(5), 5),
                        (4000, Stored::At(3), 2),
                    ],
                ),
                (3, vec![]),
            ],
        )
    }

    #[test]
    fn round_trips() {
        let (h, body) = sample();
        let mut hb = vec![0u8; CP_HEADER_BYTES];
        h.encode(&mut hb);
        let h2 = CheckpointHeader::decode(&hb).unwrap();
        assert_eq!(h2, h);
        let (rows, seen) = decode_all(&body, &h2).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2].state, SegmentState::Cleaned);
        assert_eq!(
            seen,
            vec![
                (1, 7, Stored::At(1000), 4),
                (1, 8, Stored::At(1001), 4),
                (1, 9, Stored::Tombstone(5), 5),
                (1, 4000, Stored::At(3), 2)
            ]
        );
    }

    #[test]
    fn no_entry_takes_more_than_the_bound() {
        let far = crate::lsv::extent_table::MAX_POOL_BLOCK;
        let worst = vec![
            (0, Stored::At(far), u64::MAX >> 1),
            ((1 << 52) - 2, Stored::At(0), 0),
            ((1 << 52) - 1, Stored::At(far), u64::MAX),
        ];
        let (h, body) = encode(0, &[(1, worst.clone())]);
        assert!(
            body.len() <= VOLUME_BYTES + 3 * MAX_ENTRY_BYTES,
            "{}",
            body.len()
        );
        assert!(MAX_ENTRY_BYTES <= crate::lsv::format::CHECKPOINT_ENTRY_BYTES as usize);
        let (_, seen) = decode_all(&body, &h).unwrap();
        let want: Vec<_> = worst.into_iter().map(|(l, s, q)| (1, l, s, q)).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn an_entry_takes_its_tag_and_the_bytes_its_steps_need() {
        let entries = |es: Vec<(u64, Stored, u64)>| {
            let (h, body) = encode(0, &[(1, es.clone())]);
            let (_, seen) = decode_all(&body, &h).unwrap();
            let want: Vec<Entry> = es.into_iter().map(|(l, s, q)| (1, l, s, q)).collect();
            assert_eq!(seen, want);
            body.len() - VOLUME_BYTES
        };
        // The first entry: tag, then 1 (addr 0 is 1 past -1: the next), seq 77 (1 byte).
        assert_eq!(entries(vec![(0, Stored::At(0), 77)]), 2);
        // In order, one seq: a tag each.
        let run = |n: u64, seq_step: u64| {
            (0..n)
                .map(|i| (100 + i, Stored::At(5000 + i), 77 + i * seq_step))
                .collect()
        };
        assert_eq!(entries(run(1000, 0)), (1 + 1 + 2 + 1) + 999);
        // In order, a seq apart: a tag and a byte each.
        assert_eq!(entries(run(1000, 1)), (1 + 1 + 2 + 1) + 999 * 2);
        // Gaps, a tombstone, an address step back and a seq step back.
        assert_eq!(
            entries(vec![
                (300, Stored::At(7), 9),
                (301, Stored::Tombstone(4), 4),
                (40_000, Stored::At(5), 1 << 40),
            ]),
            (1 + 2 + 1 + 1) + (1 + 1) + (1 + 2 + 1 + 6)
        );
    }

    #[test]
    fn a_version_1_body_still_reads() {
        let mut body = vec![0u8; SEGMENT_BYTES];
        body[0] = 2;
        body.extend_from_slice(&9u32.to_le_bytes());
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(&2u64.to_le_bytes());
        push_v1_entry(&mut body, 5, Stored::At(70), 3);
        push_v1_entry(&mut body, 6, Stored::Tombstone(8), 8);
        let h = CheckpointHeader {
            version: 1,
            generation: 4,
            complete_seq: 8,
            next_seq: 9,
            segment_count: 1,
            volume_count: 1,
            body_bytes: body.len() as u64,
            body_crc: crc32c::crc32c(&body),
        };
        let mut hb = vec![0u8; CP_HEADER_BYTES];
        h.encode(&mut hb);
        let h = CheckpointHeader::decode(&hb).unwrap();
        let (rows, seen) = decode_all(&body, &h).unwrap();
        assert_eq!(rows[0].state, SegmentState::Sealed);
        assert_eq!(
            seen,
            vec![(9, 5, Stored::At(70), 3), (9, 6, Stored::Tombstone(8), 8)]
        );
        hb[4..8].copy_from_slice(&3u32.to_le_bytes());
        let crc = crc32c::crc32c(&hb[..60]);
        hb[60..64].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            CheckpointHeader::decode(&hb),
            Err(CheckpointError::Version(3))
        );
    }

    #[test]
    fn flipped_bits_are_caught() {
        let (h, body) = sample();
        let mut hb = vec![0u8; CP_HEADER_BYTES];
        h.encode(&mut hb);
        for byte in 0..64 {
            let mut b = hb.clone();
            b[byte] ^= 0x10;
            assert!(CheckpointHeader::decode(&b).is_err(), "header byte {byte}");
        }
        for byte in 0..body.len() {
            let mut b = body.clone();
            b[byte] ^= 0x01;
            assert!(decode_all(&b, &h).is_err(), "body byte {byte}");
        }
    }

    #[test]
    fn a_body_that_does_not_fit_is_refused() {
        let mut buf = vec![0u8; 20];
        let mut w = BodyWriter::new();
        w.segment(
            &mut buf,
            SegmentRow {
                state: SegmentState::Free,
                live_blocks: 0,
                last_seq: 0,
            },
        )
        .unwrap();
        assert!(matches!(
            w.begin_volume(&mut buf, 1),
            Err(CheckpointError::TooBig { .. })
        ));
        let mut buf = vec![0u8; 20];
        let mut w = BodyWriter::new();
        w.begin_volume(&mut buf, 1).unwrap();
        w.entry(&mut buf, 0, Stored::At(0), 0).unwrap();
        assert!(matches!(
            w.entry(&mut buf, 9, Stored::At(1 << 20), 1 << 40),
            Err(CheckpointError::TooBig { .. })
        ));
        assert_eq!(
            w.written_bytes(),
            VOLUME_BYTES + 1,
            "a refused entry writes nothing"
        );
    }

    fn stored() -> impl Strategy<Value = Stored> {
        prop_oneof![
            (0..=crate::lsv::extent_table::MAX_POOL_BLOCK).prop_map(Stored::At),
            (0..4u64).prop_map(|_| Stored::Tombstone(0)),
        ]
    }

    proptest! {
        #[test]
        fn any_map_round_trips(
            volumes in proptest::collection::vec(
                (any::<u32>(), proptest::collection::vec((0..1u64 << 40, stored(), any::<u64>()), 0..60)),
                0..4,
            )
        ) {
            let volumes: Vec<Volume> = volumes
                .into_iter()
                .map(|(id, mut es)| {
                    es.sort_by_key(|e| e.0);
                    es.dedup_by_key(|e| e.0);
                    let es = es
                        .into_iter()
                        .map(|(l, s, q)| match s {
                            Stored::Tombstone(_) => (l, Stored::Tombstone(q), q),
                            s => (l, s, q),
                        })
                        .collect();
                    (id, es)
                })
                .collect();
            let (h, body) = encode(2, &volumes);
            let (_, seen) = decode_all(&body, &h).unwrap();
            let want: Vec<Entry> = volumes
                .iter()
                .flat_map(|(id, es)| es.iter().map(move |&(l, s, q)| (*id, l, s, q)))
                .collect();
            prop_assert_eq!(seen, want);
        }

        /// A body that passes its checksum but holds anything at all is read or refused,
        /// never a panic (a checksum is no proof against a crafted body).
        #[test]
        fn any_bytes_with_a_good_checksum_are_read_or_refused(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            volumes in 0..4u32,
            segments in 0..3u64,
            version in 1..=2u32,
        ) {
            let h = CheckpointHeader {
                version,
                generation: 1,
                complete_seq: 1,
                next_seq: 2,
                segment_count: segments,
                volume_count: volumes,
                body_bytes: bytes.len() as u64,
                body_crc: crc32c::crc32c(&bytes),
            };
            let _ = decode_all(&bytes, &h);
        }

        /// The same, from a good version 2 body with some bytes changed (so that more of
        /// them get as far as the entries).
        #[test]
        fn a_changed_body_with_a_good_checksum_is_read_or_refused(
            changes in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        ) {
            let (mut h, mut body) = sample();
            for (at, v) in changes {
                let n = body.len();
                body[at % n] = v;
            }
            h.body_crc = crc32c::crc32c(&body);
            let _ = decode_all(&body, &h);
        }
    }
}
