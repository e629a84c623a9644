//! The segment journal: where recovery finds the segments opened since a checkpoint.
//!
//! Every time a log head (a reactor's writer or a cleaner stream) opens a segment for a new
//! use, it first writes one journal entry naming the segment and the use's epoch (the
//! sequence number of the use's first record). Recovery reads the journal instead of the
//! first block of every segment, so what it reads grows with the log written since the
//! checkpoint, not with the pool.
//!
//! ## Format (pool format version 3; version 2 pools have no journal and are probed)
//!
//! A ring of `slots` 4 KiB blocks at byte 8 KiB of the pool (the superblock's segment-sized
//! region; `Superblock::journal_slots`). Entry `position` lives in slot `position % slots`.
//!
//! ```text
//! entry block, little endian:
//!   0  magic      u32  "USJ1"
//!   4  version    u16  1
//!   6  zero       u16
//!   8  pool uuid  16 bytes (an entry of an earlier pool on the same device is not ours)
//!  24  position   u64  monotonic over the pool's life; slot = position % slots
//!  32  segment    u64
//!  40  epoch      u64  seq of the use's first record
//!  48  crc32c     u32  of bytes 0..48
//!  52  zero up to 4096
//! ```
//!
//! ## Rules
//!
//! - **Order.** A use's entry completes before any of its records is acknowledged: a log
//!   writer queues the entry ahead of the first record in its log order, and the cleaner
//!   waits for both before it counts its moves done. So whatever a FLUSH makes durable in a
//!   segment, it makes the segment's entry durable too.
//! - **Retention.** A slot is reused only when its entry's epoch is at or below the complete
//!   sequence number of *both* checkpoints, so recovery from either finds every use begun
//!   after it. When more than half the slots hold entries a checkpoint does not cover, a
//!   checkpoint is due (`pressure`); when none is free, a head waits to open a segment.
//! - **Damage.** An entry with our magic and uuid but a bad checksum or an impossible
//!   segment makes recovery fall back to reading the first block of every segment.

use std::sync::atomic::{AtomicU64, Ordering};

use uuid::Uuid;

use super::record::{BLOCK_BYTES, MAX_SEQ};

pub const JOURNAL_MAGIC: u32 = u32::from_le_bytes(*b"USJ1");
pub const JOURNAL_VERSION: u16 = 1;
/// Where the ring starts (bytes): after the superblock and the volume table.
pub const JOURNAL_OFFSET: u64 = 8192;
/// Most slots a ring has (4 MiB): room for far more segment opens than a checkpoint
/// interval makes.
pub const MAX_JOURNAL_SLOTS: u64 = 1024;
const ENTRY_BYTES: usize = 48;
/// A slot that holds no entry recovery may need.
const SLOT_FREE: u64 = 0;
/// A slot claimed for an entry whose epoch is not numbered yet.
const SLOT_CLAIMED: u64 = u64::MAX;
/// Times `claim` waits for another head that is between its two steps.
const MAX_CLAIM_SPINS: u64 = 1024;

/// One journal entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalEntry {
    pub position: u64,
    pub segment: u64,
    pub epoch: u64,
}

/// What a journal slot holds, as read from disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotContent {
    /// Never written by this pool (zeroes, or another pool's entry).
    Empty,
    Entry(JournalEntry),
    /// Ours, but damaged.
    Damaged(&'static str),
}

impl JournalEntry {
    /// Encodes the entry into a whole 4 KiB block.
    pub fn encode(&self, uuid: &Uuid, block: &mut [u8]) {
        assert!(block.len() >= BLOCK_BYTES);
        block[..BLOCK_BYTES].fill(0);
        block[0..4].copy_from_slice(&JOURNAL_MAGIC.to_le_bytes());
        block[4..6].copy_from_slice(&JOURNAL_VERSION.to_le_bytes());
        block[8..24].copy_from_slice(uuid.as_bytes());
        block[24..32].copy_from_slice(&self.position.to_le_bytes());
        block[32..40].copy_from_slice(&self.segment.to_le_bytes());
        block[40..48].copy_from_slice(&self.epoch.to_le_bytes());
        let crc = crc32c::crc32c(&block[..ENTRY_BYTES]);
        block[48..52].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes one slot's block of a pool with `uuid` and `segment_count` segments.
    pub fn decode(block: &[u8], uuid: &Uuid, segment_count: u64) -> SlotContent {
        let u64_at = |o: usize| u64::from_le_bytes(block[o..o + 8].try_into().expect("8 bytes"));
        if block.len() < BLOCK_BYTES
            || u32::from_le_bytes(block[0..4].try_into().expect("4 bytes")) != JOURNAL_MAGIC
            || &block[8..24] != uuid.as_bytes()
        {
            return SlotContent::Empty;
        }
        let crc = u32::from_le_bytes(block[48..52].try_into().expect("4 bytes"));
        if crc != crc32c::crc32c(&block[..ENTRY_BYTES]) {
            return SlotContent::Damaged("checksum mismatch");
        }
        if u16::from_le_bytes([block[4], block[5]]) != JOURNAL_VERSION {
            return SlotContent::Damaged("unknown entry version");
        }
        let e = JournalEntry {
            position: u64_at(24),
            segment: u64_at(32),
            epoch: u64_at(40),
        };
        if e.segment >= segment_count {
            return SlotContent::Damaged("segment out of range");
        }
        if e.epoch == SLOT_FREE || e.epoch >= MAX_SEQ {
            return SlotContent::Damaged("impossible epoch");
        }
        // Positions count segment opens, fewer than sequence numbers.
        if e.position >= MAX_SEQ {
            return SlotContent::Damaged("impossible position");
        }
        SlotContent::Entry(e)
    }
}

/// The ring in memory: the next position, and each slot's entry epoch (what retention
/// checks). Lock-free; touched once per segment opened, never per I/O.
pub struct SegmentJournal {
    slots: u64,
    next_position: AtomicU64,
    epochs: Box<[AtomicU64]>,
}

impl SegmentJournal {
    pub fn new(slots: u64) -> SegmentJournal {
        assert!((2..=MAX_JOURNAL_SLOTS).contains(&slots));
        SegmentJournal {
            slots,
            next_position: AtomicU64::new(0),
            epochs: (0..slots).map(|_| AtomicU64::new(SLOT_FREE)).collect(),
        }
    }

    pub fn slots(&self) -> u64 {
        self.slots
    }

    /// The pool block (4 KiB) of `position`'s slot.
    pub fn block_of(&self, position: u64) -> u64 {
        JOURNAL_OFFSET / BLOCK_BYTES as u64 + position % self.slots
    }

    /// Recovery only: what the ring holds (valid entries), and where it goes on.
    pub fn restore(&self, entries: &[JournalEntry]) {
        let mut next = 0;
        for e in entries {
            self.epochs[(e.position % self.slots) as usize].store(e.epoch, Ordering::Relaxed);
            next = next.max(e.position + 1);
        }
        self.next_position.store(next, Ordering::SeqCst);
    }

    /// Whether `claim` would find the next slot free now (a look, not a claim).
    pub fn next_slot_free(&self, covered_seq: u64) -> bool {
        let position = self.next_position.load(Ordering::SeqCst);
        !Self::held(
            self.epochs[(position % self.slots) as usize].load(Ordering::SeqCst),
            covered_seq,
        )
    }

    /// Claims the next slot for a new entry: its position, or None while every slot it may
    /// take holds an entry that a checkpoint does not cover yet (`covered_seq`: the older
    /// checkpoint's complete sequence number). The entry's epoch is set with `set_epoch`
    /// once numbered. (A head claims only once it holds the segment, so nothing gives a
    /// claim back.)
    pub fn claim(&self, covered_seq: u64) -> Option<u64> {
        // Bounded: at most one pass over the ring, and a few spins.
        let mut spins = 0;
        for _ in 0..self.slots + MAX_CLAIM_SPINS {
            let position = self.next_position.load(Ordering::SeqCst);
            let slot = &self.epochs[(position % self.slots) as usize];
            let held = slot.load(Ordering::SeqCst);
            if Self::held(held, covered_seq) {
                if self.next_position.load(Ordering::SeqCst) != position {
                    continue; // another head took this position meanwhile: look again
                }
                if held == SLOT_CLAIMED && spins < MAX_CLAIM_SPINS {
                    // Another head is between taking this slot and the position.
                    spins += 1;
                    std::hint::spin_loop();
                    continue;
                }
                // The slot's entry is still needed: the ring is full here.
                return None;
            }
            // Take the slot, then the position; whoever wins the slot owns this position.
            if slot
                .compare_exchange(held, SLOT_CLAIMED, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue;
            }
            if self
                .next_position
                .compare_exchange(position, position + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return Some(position);
            }
            // Another claimer moved the position on (it took a different slot): give this
            // one back and look again.
            slot.store(held, Ordering::SeqCst);
        }
        None
    }

    /// Recovery only: slot `slot` held a damaged entry, which may have named a segment used
    /// since the checkpoint (recovery found it by probing). It is not reused until both
    /// checkpoints cover `seq` (above every number taken before the crash); reused sooner,
    /// an intact journal would lead the next recovery from the same checkpoint past that
    /// segment.
    pub fn hold(&self, slot: u64, seq: u64) {
        debug_assert!(seq != SLOT_FREE && seq != SLOT_CLAIMED);
        self.epochs[slot as usize].store(seq, Ordering::SeqCst);
    }

    /// The claimed `position`'s entry is for a use with this epoch.
    pub fn set_epoch(&self, position: u64, epoch: u64) {
        debug_assert!(epoch != SLOT_FREE && epoch != SLOT_CLAIMED);
        let slot = &self.epochs[(position % self.slots) as usize];
        debug_assert_eq!(slot.load(Ordering::SeqCst), SLOT_CLAIMED);
        slot.store(epoch, Ordering::SeqCst);
    }

    fn needed(epoch: &AtomicU64, covered_seq: u64) -> bool {
        Self::held(epoch.load(Ordering::Relaxed), covered_seq)
    }

    /// Whether a slot whose epoch word reads `v` may not be taken: claimed, or holding an
    /// entry a checkpoint complete up to `covered_seq` does not cover.
    fn held(v: u64, covered_seq: u64) -> bool {
        v != SLOT_FREE && (v == SLOT_CLAIMED || v > covered_seq)
    }

    /// Slots whose entries a checkpoint complete up to `covered_seq` does not cover.
    pub fn uncovered(&self, covered_seq: u64) -> u64 {
        self.epochs
            .iter()
            .filter(|e| Self::needed(e, covered_seq))
            .count() as u64
    }

    /// Whether a checkpoint is due to free slots: one of the slots that the next half ring
    /// of claims will take holds an entry no checkpoint covers (claims take slots in turn,
    /// so that entry would stop them).
    pub fn pressure(&self, covered_seq: u64) -> bool {
        let next = self.next_position.load(Ordering::Relaxed);
        (next..next + self.slots.div_ceil(2))
            .any(|p| Self::needed(&self.epochs[(p % self.slots) as usize], covered_seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_told_apart_from_empty() {
        let uuid = Uuid::from_u128(7);
        let e = JournalEntry {
            position: 1234,
            segment: 5,
            epoch: 99,
        };
        let mut b = vec![0u8; BLOCK_BYTES];
        e.encode(&uuid, &mut b);
        assert_eq!(JournalEntry::decode(&b, &uuid, 8), SlotContent::Entry(e));
        // Another pool's entry, or zeroes: empty.
        assert_eq!(
            JournalEntry::decode(&b, &Uuid::from_u128(8), 8),
            SlotContent::Empty
        );
        assert_eq!(
            JournalEntry::decode(&vec![0u8; BLOCK_BYTES], &uuid, 8),
            SlotContent::Empty
        );
        // Every flipped bit in the entry is damage (or, in the magic or uuid, not ours).
        for byte in 0..52 {
            let mut d = b.clone();
            d[byte] ^= 0x10;
            assert_ne!(
                JournalEntry::decode(&d, &uuid, 8),
                SlotContent::Entry(e),
                "flip in byte {byte} not caught"
            );
        }
        // A segment past the pool's end is damage, and so is an epoch no sequence number
        // reaches.
        assert!(matches!(
            JournalEntry::decode(&b, &uuid, 5),
            SlotContent::Damaged(_)
        ));
        let mut far = vec![0u8; BLOCK_BYTES];
        JournalEntry {
            epoch: MAX_SEQ,
            ..e
        }
        .encode(&uuid, &mut far);
        assert!(matches!(
            JournalEntry::decode(&far, &uuid, 8),
            SlotContent::Damaged(_)
        ));
        // And a position no count of segment opens reaches (restore goes on from it).
        JournalEntry {
            position: u64::MAX,
            ..e
        }
        .encode(&uuid, &mut far);
        assert!(matches!(
            JournalEntry::decode(&far, &uuid, 8),
            SlotContent::Damaged(_)
        ));
    }

    #[test]
    fn a_slot_is_reused_only_once_both_checkpoints_cover_its_entry() {
        let j = SegmentJournal::new(4);
        for (i, epoch) in [10, 20, 30, 40].into_iter().enumerate() {
            let p = j.claim(0).unwrap();
            assert_eq!(p, i as u64);
            j.set_epoch(p, epoch);
        }
        assert!(j.pressure(0));
        assert!(j.pressure(10), "slot 1, two claims ahead, holds epoch 20");
        assert!(!j.pressure(20));
        assert_eq!(j.claim(9), None, "slot 0 holds epoch 10");
        assert_eq!(j.claim(10), Some(4));
        assert_eq!(j.block_of(4), j.block_of(0));
        // A claimed slot is needed until it is numbered.
        assert_eq!(j.uncovered(u64::MAX - 1), 1);
        j.set_epoch(4, 50);
        assert_eq!(j.claim(20), Some(5));
        j.set_epoch(5, 55);
        // Then 6, slot 2 (epoch 30).
        assert_eq!(j.claim(29), None);
        assert_eq!(j.claim(30), Some(6));
        j.set_epoch(6, 60);
        assert_eq!(j.uncovered(30), 4);
        // Next claims: position 7 (slot 3, epoch 40), 8 (slot 0, epoch 50).
        assert!(j.pressure(45));
        assert!(!j.pressure(50));
    }

    #[test]
    fn restore_goes_on_after_the_newest_position() {
        let j = SegmentJournal::new(4);
        j.restore(&[
            JournalEntry {
                position: 9,
                segment: 1,
                epoch: 90,
            },
            JournalEntry {
                position: 6,
                segment: 2,
                epoch: 60,
            },
        ]);
        // Position 10 is slot 2, which held position 6 (epoch 60).
        assert_eq!(j.claim(59), None);
        assert_eq!(j.claim(60), Some(10));
    }
}
