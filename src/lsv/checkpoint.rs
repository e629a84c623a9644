//! Checkpoints: the extent tables and the segment usage table, written to one of the pool's
//! two checkpoint slots (A, B alternate), so that recovery replays only the log written since.
//!
//! ## Checkpoint format (version 1)
//!
//! A checkpoint fills its slot from the slot's start: a 4 KiB header, then the body.
//!
//! ```text
//! header, little endian:
//!   0  magic            "UCP1"
//!   4  version          u32  1
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
//!   volume_count x (volume id u32, 4 zero, entry_count u64,
//!       entry_count x 24 bytes: lba u64, pool block u64 (u64::MAX: unmapped, a tombstone),
//!       seq u64 (of the write whose data is there, or of the unmap))
//! ```
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
use super::usage::SegmentState;

pub const CP_MAGIC: &[u8; 4] = b"UCP1";
pub const CP_VERSION: u32 = 1;
pub const CP_HEADER_BYTES: usize = 4096;
const SEGMENT_BYTES: usize = 16;
const VOLUME_BYTES: usize = 16;
const ENTRY_BYTES: usize = 24;
const TOMBSTONE_ADDR: u64 = u64::MAX;

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
        out[4..8].copy_from_slice(&CP_VERSION.to_le_bytes());
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
        if u32_at(4) != CP_VERSION {
            return Err(CheckpointError::Version(u32_at(4)));
        }
        let h = CheckpointHeader {
            generation: u64_at(8),
            complete_seq: u64_at(16),
            next_seq: u64_at(24),
            segment_count: u64_at(32),
            volume_count: u32_at(40),
            body_bytes: u64_at(48),
            body_crc: u32_at(56),
        };
        if h.complete_seq >= h.next_seq || h.generation == 0 {
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

/// Writes a checkpoint body into a buffer, bounded by the buffer's size. It keeps only its
/// place, and each call takes the buffer, so a body can be written a piece per poll
/// (`checkpoint_writer.rs`).
#[derive(Debug, Default)]
pub struct BodyWriter {
    at: usize,
    /// The open volume section: where its header is, and its entries so far.
    section: Option<(usize, u64)>,
    pub volumes: u32,
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
        self.section.map_or(self.at, |(at, _)| at)
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
            self.section.is_none(),
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
        self.section = Some((self.at, 0));
        self.at += VOLUME_BYTES;
        self.volumes += 1;
        Ok(())
    }

    pub fn entry(
        &mut self,
        buf: &mut [u8],
        lba: u64,
        stored: Stored,
        seq: u64,
    ) -> Result<(), CheckpointError> {
        self.room(buf, ENTRY_BYTES)?;
        let addr = match stored {
            Stored::At(a) => a,
            Stored::Tombstone(_) => TOMBSTONE_ADDR,
        };
        let b = &mut buf[self.at..self.at + ENTRY_BYTES];
        b[0..8].copy_from_slice(&lba.to_le_bytes());
        b[8..16].copy_from_slice(&addr.to_le_bytes());
        b[16..24].copy_from_slice(&seq.to_le_bytes());
        self.at += ENTRY_BYTES;
        self.section.as_mut().expect("entry outside a volume").1 += 1;
        Ok(())
    }

    /// Ends the open volume section (writes its entry count), if there is one.
    pub fn end_volume(&mut self, buf: &mut [u8]) {
        if let Some((at, count)) = self.section.take() {
            buf[at + 8..at + 16].copy_from_slice(&count.to_le_bytes());
        }
    }
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
    let mut at = seg_end;
    for _ in 0..h.volume_count {
        if at + VOLUME_BYTES > body.len() {
            return Err(CheckpointError::Inconsistent("volume runs past the body"));
        }
        let id = u32::from_le_bytes(body[at..at + 4].try_into().expect("4"));
        let count = u64::from_le_bytes(body[at + 8..at + 16].try_into().expect("8"));
        at += VOLUME_BYTES;
        let bytes = (count as usize)
            .checked_mul(ENTRY_BYTES)
            .filter(|&n| at + n <= body.len())
            .ok_or(CheckpointError::Inconsistent("entries run past the body"))?;
        for e in body[at..at + bytes].chunks_exact(ENTRY_BYTES) {
            let lba = u64::from_le_bytes(e[0..8].try_into().expect("8"));
            let addr = u64::from_le_bytes(e[8..16].try_into().expect("8"));
            let seq = u64::from_le_bytes(e[16..24].try_into().expect("8"));
            let stored = if addr == TOMBSTONE_ADDR {
                Stored::Tombstone(seq)
            } else {
                Stored::At(addr)
            };
            entry(id, lba, stored, seq);
        }
        at += bytes;
    }
    if at != body.len() {
        return Err(CheckpointError::Inconsistent("bytes after the last volume"));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (CheckpointHeader, Vec<u8>) {
        let mut buf = vec![0u8; 1 << 16];
        let mut w = BodyWriter::new();
        for (st, live, seq) in [
            (SegmentState::Sealed, 10, 5),
            (SegmentState::Free, 0, 0),
            (SegmentState::Cleaned, 0, 3),
        ] {
            w.segment(
                &mut buf,
                SegmentRow {
                    state: st,
                    live_blocks: live,
                    last_seq: seq,
                },
            )
            .unwrap();
        }
        w.begin_volume(&mut buf, 1).unwrap();
        w.entry(&mut buf, 7, Stored::At(1000), 4).unwrap();
        w.entry(&mut buf, 9, Stored::Tombstone(5), 5).unwrap();
        w.begin_volume(&mut buf, 3).unwrap();
        w.end_volume(&mut buf);
        let volumes = w.volumes;
        let n = w.written_bytes();
        buf.truncate(n);
        let h = CheckpointHeader {
            generation: 2,
            complete_seq: 5,
            next_seq: 6,
            segment_count: 3,
            volume_count: volumes,
            body_bytes: n as u64,
            body_crc: crc32c::crc32c(&buf),
        };
        (h, buf)
    }

    #[test]
    fn round_trips() {
        let (h, body) = sample();
        let mut hb = vec![0u8; CP_HEADER_BYTES];
        h.encode(&mut hb);
        let h2 = CheckpointHeader::decode(&hb).unwrap();
        assert_eq!(h2, h);
        let mut seen = Vec::new();
        let rows = decode_body(&body, &h2, |v, l, s, q| seen.push((v, l, s, q))).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2].state, SegmentState::Cleaned);
        assert_eq!(
            seen,
            vec![(1, 7, Stored::At(1000), 4), (1, 9, Stored::Tombstone(5), 5)]
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
            assert!(
                decode_body(&b, &h, |_, _, _, _| {}).is_err(),
                "body byte {byte}"
            );
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
    }
}
