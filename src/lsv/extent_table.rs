//! The extent table: maps (volume, LBA) to where the block lives in the pool's log.
//!
//! One table per volume: a three-level radix of atomics (a top array, then 512-way nodes,
//! then leaves of 512 entries). Nodes and leaves are allocated on first write to their range
//! and installed with compare-and-swap, so unmapped ranges cost nothing and readers and writers
//! on every reactor use the table without locks. A mapped 4 KiB block costs one 8-byte entry
//! (plus its share of a 4 KiB leaf).
//!
//! ## Entry format (version 1)
//!
//! ```text
//!  63            48 47                                             0
//! +----------------+------------------------------------------------+
//! |  seq tag (16)  |  pool block address + 1 (48)                   |
//! +----------------+------------------------------------------------+
//! ```
//!
//! - The whole entry 0 means "never written": reads zeroes, and any write replaces it.
//! - Address field all ones is an unmap tombstone: reads zeroes, and still carries the tag of
//!   the unmap, so that an older write cannot resurrect the block.
//! - The tag is the low 16 bits of the log record's sequence number. Two writes to one block
//!   in flight at once (on two reactors) are ordered by it, wrapping: the entry ends as log
//!   replay would leave it (the higher sequence number wins). This needs the two sequence
//!   numbers to be within 2^15 of each other: the log writer (not built yet) must hold back
//!   new records while its oldest in-flight record is `SEQ_WINDOW` behind the newest.
//! - The cleaner moves a block with `remap_if`, which swaps the address only if the entry
//!   still holds the old one (same tag), so a newer write always wins over a relocation.

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// Entries per leaf and pointers per node.
pub const FANOUT: usize = 512;
const FANOUT_BITS: u32 = 9;
/// Largest pool block address an entry can hold.
pub const MAX_POOL_BLOCK: u64 = (1 << 48) - 3;
/// Records in flight must stay within this distance of one another in sequence numbers.
pub const SEQ_WINDOW: u64 = 1 << 14;

const ADDR_MASK: u64 = (1 << 48) - 1;
/// The address field of an unmap tombstone.
const TOMBSTONE: u64 = ADDR_MASK;

/// Where a block lives, as an extent-table entry sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Never written, or unmapped: reads zeroes.
    Zero,
    /// In the pool at this block address.
    At(u64),
}

#[inline]
fn tag_of(seq: u64) -> u64 {
    seq & 0xFFFF
}

#[inline]
fn encode(addr: Option<u64>, seq: u64) -> u64 {
    let a = match addr {
        Some(a) => {
            debug_assert!(a <= MAX_POOL_BLOCK);
            a + 1
        }
        None => TOMBSTONE,
    };
    (tag_of(seq) << 48) | a
}

#[inline]
fn decode(e: u64) -> Mapping {
    match e & ADDR_MASK {
        0 | TOMBSTONE => Mapping::Zero,
        a => Mapping::At(a - 1),
    }
}

/// True if a write tagged `mine` may replace an entry tagged `theirs` (same or newer).
#[inline]
fn newer_or_same(mine: u64, theirs: u64) -> bool {
    (mine.wrapping_sub(theirs) & 0xFFFF) < 0x8000
}

struct Leaf {
    entries: [AtomicU64; FANOUT],
}

struct Node {
    leaves: [AtomicPtr<Leaf>; FANOUT],
}

/// The outcome of `update`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// The entry now holds the new mapping; `previous` is what it held (for usage accounting).
    Applied { previous: Mapping },
    /// A write with a higher sequence number got there first; nothing changed.
    Stale,
}

/// One volume's map.
pub struct ExtentTable {
    top: Box<[AtomicPtr<Node>]>,
    num_blocks: u64,
    leaves: AtomicU64,
    nodes: AtomicU64,
    mapped: AtomicU64,
}

// SAFETY: all shared state is atomics; nodes and leaves are only freed in `Drop`, when no
// other reference to the table exists.
unsafe impl Send for ExtentTable {}
// SAFETY: as above.
unsafe impl Sync for ExtentTable {}

fn new_leaf() -> *mut Leaf {
    Box::into_raw(Box::new(Leaf {
        entries: std::array::from_fn(|_| AtomicU64::new(0)),
    }))
}

fn new_node() -> *mut Node {
    Box::into_raw(Box::new(Node {
        leaves: std::array::from_fn(|_| AtomicPtr::new(std::ptr::null_mut())),
    }))
}

impl ExtentTable {
    /// A table for a volume of `num_blocks` blocks (at most `FANOUT^2 * 2^32`).
    pub fn new(num_blocks: u64) -> ExtentTable {
        let per_top = (FANOUT * FANOUT) as u64;
        let top_len = num_blocks.div_ceil(per_top).max(1) as usize;
        ExtentTable {
            top: (0..top_len)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
            num_blocks,
            leaves: AtomicU64::new(0),
            nodes: AtomicU64::new(0),
            mapped: AtomicU64::new(0),
        }
    }

    pub fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    #[inline]
    fn split(lba: u64) -> (usize, usize, usize) {
        let leaf_i = (lba & (FANOUT as u64 - 1)) as usize;
        let node_i = ((lba >> FANOUT_BITS) & (FANOUT as u64 - 1)) as usize;
        let top_i = (lba >> (2 * FANOUT_BITS)) as usize;
        (top_i, node_i, leaf_i)
    }

    /// The entry for `lba`, if its leaf exists (reads never allocate).
    #[inline]
    fn entry(&self, lba: u64) -> Option<&AtomicU64> {
        let (t, n, l) = Self::split(lba);
        let node = self.top.get(t)?.load(Ordering::Acquire);
        if node.is_null() {
            return None;
        }
        // SAFETY: installed nodes live until the table drops; `&self` keeps it alive.
        let leaf = unsafe { &*node }.leaves[n].load(Ordering::Acquire);
        if leaf.is_null() {
            return None;
        }
        // SAFETY: as for nodes.
        Some(&unsafe { &*leaf }.entries[l])
    }

    /// The entry for `lba`, allocating its node and leaf if needed.
    fn entry_or_create(&self, lba: u64) -> &AtomicU64 {
        let (t, n, l) = Self::split(lba);
        let slot = &self.top[t];
        let mut node = slot.load(Ordering::Acquire);
        if node.is_null() {
            let fresh = new_node();
            match slot.compare_exchange(node, fresh, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.nodes.fetch_add(1, Ordering::Relaxed);
                    node = fresh;
                }
                Err(winner) => {
                    // SAFETY: `fresh` was never shared.
                    drop(unsafe { Box::from_raw(fresh) });
                    node = winner;
                }
            }
        }
        // SAFETY: installed nodes live until the table drops.
        let lslot = &unsafe { &*node }.leaves[n];
        let mut leaf = lslot.load(Ordering::Acquire);
        if leaf.is_null() {
            let fresh = new_leaf();
            match lslot.compare_exchange(leaf, fresh, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.leaves.fetch_add(1, Ordering::Relaxed);
                    leaf = fresh;
                }
                Err(winner) => {
                    // SAFETY: `fresh` was never shared.
                    drop(unsafe { Box::from_raw(fresh) });
                    leaf = winner;
                }
            }
        }
        // SAFETY: installed leaves live until the table drops.
        &unsafe { &*leaf }.entries[l]
    }

    /// Where `lba` lives now. Plain atomic loads; never allocates.
    #[inline]
    pub fn lookup(&self, lba: u64) -> Mapping {
        debug_assert!(
            lba < self.num_blocks,
            "lba {lba} beyond {}",
            self.num_blocks
        );
        self.entry(lba)
            .map_or(Mapping::Zero, |e| decode(e.load(Ordering::Acquire)))
    }

    /// Records that the write (or unmap, with `addr` None) with sequence number `seq` put
    /// `lba` at `addr`, unless a write with a higher sequence number already did.
    pub fn update(&self, lba: u64, addr: Option<u64>, seq: u64) -> Update {
        assert!(
            lba < self.num_blocks,
            "lba {lba} beyond {}",
            self.num_blocks
        );
        if addr.is_none() && self.entry(lba).is_none() {
            // Unmapping a range never written needs no leaf.
            return Update::Applied {
                previous: Mapping::Zero,
            };
        }
        let entry = self.entry_or_create(lba);
        let new = encode(addr, seq);
        let mut cur = entry.load(Ordering::Acquire);
        loop {
            if cur != 0 && !newer_or_same(tag_of(seq), cur >> 48) {
                return Update::Stale;
            }
            match entry.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    let previous = decode(cur);
                    match (previous, addr) {
                        (Mapping::Zero, Some(_)) => {
                            self.mapped.fetch_add(1, Ordering::Relaxed);
                        }
                        (Mapping::At(_), None) => {
                            self.mapped.fetch_sub(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                    return Update::Applied { previous };
                }
                Err(now) => cur = now,
            }
        }
    }

    /// The cleaner's move: points `lba` at `to` only if it still lives at `from`. Returns
    /// whether it moved (false: a newer write or an unmap got there first, and wins).
    pub fn remap_if(&self, lba: u64, from: u64, to: u64) -> bool {
        let Some(entry) = self.entry(lba) else {
            return false;
        };
        let cur = entry.load(Ordering::Acquire);
        if decode(cur) != Mapping::At(from) {
            return false;
        }
        let moved = (cur & !ADDR_MASK) | (to + 1);
        debug_assert!(to <= MAX_POOL_BLOCK);
        entry
            .compare_exchange(cur, moved, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Blocks that read data (not zeroes).
    pub fn mapped_blocks(&self) -> u64 {
        self.mapped.load(Ordering::Relaxed)
    }

    /// Memory the table uses, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        (self.top.len() * std::mem::size_of::<AtomicPtr<Node>>()) as u64
            + self.nodes.load(Ordering::Relaxed) * std::mem::size_of::<Node>() as u64
            + self.leaves.load(Ordering::Relaxed) * std::mem::size_of::<Leaf>() as u64
    }
}

impl Drop for ExtentTable {
    fn drop(&mut self) {
        for slot in self.top.iter() {
            let node = slot.load(Ordering::Acquire);
            if node.is_null() {
                continue;
            }
            // SAFETY: `&mut self`: nobody else holds the table; each pointer was made by
            // Box::into_raw and is freed exactly once here.
            let node = unsafe { Box::from_raw(node) };
            for l in node.leaves.iter() {
                let leaf = l.load(Ordering::Acquire);
                if !leaf.is_null() {
                    // SAFETY: as above.
                    drop(unsafe { Box::from_raw(leaf) });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    #[test]
    fn unwritten_reads_zero_and_costs_no_leaf() {
        let t = ExtentTable::new(1 << 30);
        assert_eq!(t.lookup(12345), Mapping::Zero);
        assert_eq!(
            t.update(7, None, 1),
            Update::Applied {
                previous: Mapping::Zero
            }
        );
        assert_eq!(t.memory_bytes(), (t.top.len() * 8) as u64);
    }

    #[test]
    fn higher_sequence_wins_in_either_order() {
        let t = ExtentTable::new(1024);
        assert!(matches!(t.update(5, Some(100), 11), Update::Applied { .. }));
        assert_eq!(t.update(5, Some(200), 10), Update::Stale);
        assert_eq!(t.lookup(5), Mapping::At(100));
        // Across the 16-bit wrap.
        assert!(matches!(
            t.update(6, Some(1), 0xFFFF),
            Update::Applied { .. }
        ));
        assert!(matches!(
            t.update(6, Some(2), 0x1_0001),
            Update::Applied { .. }
        ));
        assert_eq!(t.update(6, Some(3), 0xFFFE), Update::Stale);
        assert_eq!(t.lookup(6), Mapping::At(2));
        // An unmap is ordered like a write: an older write cannot resurrect the block.
        assert!(matches!(
            t.update(5, None, 12),
            Update::Applied {
                previous: Mapping::At(100)
            }
        ));
        assert_eq!(t.update(5, Some(300), 11), Update::Stale);
        assert_eq!(t.lookup(5), Mapping::Zero);
        assert_eq!(t.mapped_blocks(), 1);
    }

    #[test]
    fn remap_if_loses_to_a_newer_write() {
        let t = ExtentTable::new(1024);
        t.update(9, Some(40), 1);
        assert!(t.remap_if(9, 40, 41));
        assert_eq!(t.lookup(9), Mapping::At(41));
        t.update(9, Some(50), 2);
        assert!(!t.remap_if(9, 41, 42), "a stale relocation must not win");
        assert_eq!(t.lookup(9), Mapping::At(50));
        // The relocation kept the tag: a write older than the relocated one is still stale.
        t.update(10, Some(60), 30);
        assert!(t.remap_if(10, 60, 61));
        assert_eq!(t.update(10, Some(70), 29), Update::Stale);
    }

    #[test]
    fn eight_bytes_per_mapped_block_when_dense() {
        let t = ExtentTable::new(1 << 20);
        for lba in 0..(1 << 20) {
            t.update(lba, Some(lba + 1000), 1);
        }
        let per_block = t.memory_bytes() as f64 / t.mapped_blocks() as f64;
        assert!(per_block <= 8.1, "{per_block} bytes per mapped block");
    }

    #[test]
    fn concurrent_writers_end_with_the_highest_sequence() {
        let t = Arc::new(ExtentTable::new(4096));
        let threads: Vec<_> = (0..4u64)
            .map(|w| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for round in 0..2000u64 {
                        let seq = round * 4 + w;
                        for lba in 0..64 {
                            t.update(lba, Some(seq), seq);
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        for lba in 0..64 {
            assert_eq!(t.lookup(lba), Mapping::At(1999 * 4 + 3));
        }
        assert_eq!(t.mapped_blocks(), 64);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write { lba: u64, addr: u64 },
        Unmap { lba: u64 },
        Relocate { lba: u64, to: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..2048u64, 0..1_000_000u64).prop_map(|(lba, addr)| Op::Write { lba, addr }),
            (0..2048u64).prop_map(|lba| Op::Unmap { lba }),
            (0..2048u64, 0..1_000_000u64).prop_map(|(lba, to)| Op::Relocate { lba, to }),
        ]
    }

    proptest! {
        /// The table against a BTreeMap model, for writes, unmaps and relocations in
        /// sequence order.
        #[test]
        fn matches_a_btreemap_model(ops in proptest::collection::vec(op(), 1..400)) {
            let t = ExtentTable::new(2048);
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            for (seq, op) in ops.iter().enumerate() {
                match *op {
                    Op::Write { lba, addr } => {
                        let applied = matches!(t.update(lba, Some(addr), seq as u64), Update::Applied { .. });
                        prop_assert!(applied);
                        model.insert(lba, addr);
                    }
                    Op::Unmap { lba } => {
                        t.update(lba, None, seq as u64);
                        model.remove(&lba);
                    }
                    Op::Relocate { lba, to } => {
                        let moved = match model.get(&lba) {
                            Some(&from) => t.remap_if(lba, from, to),
                            None => t.remap_if(lba, 0, to),
                        };
                        prop_assert_eq!(moved, model.contains_key(&lba));
                        if moved {
                            model.insert(lba, to);
                        }
                    }
                }
            }
            for lba in 0..2048 {
                let want = model.get(&lba).map_or(Mapping::Zero, |&a| Mapping::At(a));
                prop_assert_eq!(t.lookup(lba), want);
            }
            prop_assert_eq!(t.mapped_blocks(), model.len() as u64);
        }
    }
}
