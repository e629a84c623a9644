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
//!  63  62                                                          0
//! +---+-------------------------------------------------------------+
//! | 0 |  pool block address + 1   (0 in the whole entry: never written) |
//! | 1 |  sequence number of the unmap that left this tombstone          |
//! +---+-------------------------------------------------------------+
//! ```
//!
//! - A never-written entry (0) reads zeroes, and any write replaces it.
//! - A tombstone reads zeroes and keeps the unmap's sequence number, so an older write still
//!   in flight cannot resurrect the block.
//! - Two writes to one block in flight at once (on two reactors) are ordered by sequence
//!   number, so the entry ends as log replay would leave it (the higher one wins). A mapped
//!   entry does not store its sequence number: the caller's `seq_of(address)` gives it, from
//!   the log's segment summaries (the sequence number of the write whose data lives there; a
//!   block the cleaner moved keeps its original write's number).
//! - The cleaner moves a block with `remap_if`, which swaps the address only if the entry
//!   still holds the old one, so a newer write always wins over a relocation.

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// Entries per leaf and pointers per node.
pub const FANOUT: usize = 512;
const FANOUT_BITS: u32 = 9;
/// Largest pool block address an entry can hold.
pub const MAX_POOL_BLOCK: u64 = (1 << 63) - 2;
/// Largest sequence number a tombstone can hold.
pub const MAX_SEQ: u64 = (1 << 63) - 1;

const TOMBSTONE_BIT: u64 = 1 << 63;

/// Where a block lives, as an extent-table entry sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Never written, or unmapped: reads zeroes.
    Zero,
    /// In the pool at this block address.
    At(u64),
}

#[inline]
fn encode(addr: Option<u64>, seq: u64) -> u64 {
    match addr {
        Some(a) => {
            debug_assert!(a <= MAX_POOL_BLOCK);
            a + 1
        }
        None => {
            debug_assert!(seq <= MAX_SEQ);
            TOMBSTONE_BIT | seq
        }
    }
}

#[inline]
fn decode(e: u64) -> Mapping {
    if e == 0 || e & TOMBSTONE_BIT != 0 {
        Mapping::Zero
    } else {
        Mapping::At(e - 1)
    }
}

/// The sequence number behind a non-zero entry.
#[inline]
fn seq_of_entry(e: u64, seq_of: &dyn Fn(u64) -> u64) -> u64 {
    if e & TOMBSTONE_BIT != 0 {
        e & !TOMBSTONE_BIT
    } else {
        seq_of(e - 1)
    }
}

struct Leaf {
    entries: [AtomicU64; FANOUT],
}

struct Node {
    leaves: [AtomicPtr<Leaf>; FANOUT],
}

/// A non-empty entry, as `for_each` gives it and a checkpoint stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    At(u64),
    /// Unmapped by the unmap with this sequence number.
    Tombstone(u64),
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
    /// The volume's size now (resize changes it, up to the capacity `top` was sized for).
    num_blocks: AtomicU64,
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
    /// A table for a volume of `num_blocks` blocks (at most `FANOUT^2 * 2^32`). Its top
    /// level has room to grow the volume to `growth_capacity(num_blocks)`.
    pub fn new(num_blocks: u64) -> ExtentTable {
        let per_top = (FANOUT * FANOUT) as u64;
        let top_len = Self::growth_capacity(num_blocks).div_ceil(per_top).max(1) as usize;
        ExtentTable {
            top: (0..top_len)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
            num_blocks: AtomicU64::new(num_blocks),
            leaves: AtomicU64::new(0),
            nodes: AtomicU64::new(0),
            mapped: AtomicU64::new(0),
        }
    }

    pub fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Acquire)
    }

    /// How far a volume created with `num_blocks` may grow: 8 times its size, and at least
    /// 1 GiB of 4 KiB blocks (the top level costs 8 bytes per GiB of that).
    pub fn growth_capacity(num_blocks: u64) -> u64 {
        num_blocks.saturating_mul(8).max(1 << 18)
    }

    /// The most blocks this table can map.
    pub fn capacity_blocks(&self) -> u64 {
        (self.top.len() * FANOUT * FANOUT) as u64
    }

    /// Changes the volume's size. Shrinking clears the entries past the new end and returns
    /// the pool blocks they mapped (the caller frees them). Err: past `capacity_blocks`.
    pub fn resize(&self, blocks: u64) -> Result<Vec<u64>, u64> {
        if blocks > self.capacity_blocks() {
            return Err(self.capacity_blocks());
        }
        let old = self.num_blocks.swap(blocks, Ordering::AcqRel);
        let mut freed = Vec::new();
        for lba in blocks..old {
            if let Some(e) = self.entry(lba) {
                let v = e.swap(0, Ordering::AcqRel);
                if let Mapping::At(p) = decode(v) {
                    self.mapped.fetch_sub(1, Ordering::Relaxed);
                    freed.push(p);
                }
            }
        }
        Ok(freed)
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
        if lba >= self.capacity_blocks() {
            return Mapping::Zero;
        }
        self.entry(lba)
            .map_or(Mapping::Zero, |e| decode(e.load(Ordering::Acquire)))
    }

    /// Records that the write (or unmap, with `addr` None) with sequence number `seq` put
    /// `lba` at `addr`, unless a write with a higher sequence number already did. `seq_of`
    /// gives the sequence number of the write whose data is at a pool address.
    /// `older_in_flight`: whether any record older than this one may still complete; when
    /// it may not, an unmap of a never-written range needs no tombstone (and no memory).
    pub fn update(
        &self,
        lba: u64,
        addr: Option<u64>,
        seq: u64,
        seq_of: &dyn Fn(u64) -> u64,
        older_in_flight: bool,
    ) -> Update {
        // A block past the end (a shrink raced with this record) takes nothing.
        if lba >= self.num_blocks() {
            return Update::Stale;
        }
        if addr.is_none() && !older_in_flight && self.entry(lba).is_none() {
            return Update::Applied {
                previous: Mapping::Zero,
            };
        }
        let entry = self.entry_or_create(lba);
        let new = encode(addr, seq);
        let mut cur = entry.load(Ordering::Acquire);
        loop {
            if cur != 0 && seq_of_entry(cur, seq_of) > seq {
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
        debug_assert!(from <= MAX_POOL_BLOCK && to <= MAX_POOL_BLOCK);
        entry
            .compare_exchange(from + 1, to + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Blocks that read data (not zeroes). Racing updates may make a momentary reading
    /// off by the number in flight; the count itself never drifts.
    pub fn mapped_blocks(&self) -> u64 {
        let m = self.mapped.load(Ordering::Relaxed);
        if m > self.num_blocks() {
            0 // a decrement landed before its increment: transient
        } else {
            m
        }
    }

    /// Calls `f` for every entry that is not empty, in LBA order (a checkpoint's snapshot;
    /// entries changing meanwhile are seen either before or after their change).
    pub fn for_each(&self, mut f: impl FnMut(u64, Stored)) {
        self.for_each_installed(|lba, e| {
            let v = e.load(Ordering::Acquire);
            if v == 0 {
                return;
            }
            f(
                lba,
                if v & TOMBSTONE_BIT != 0 {
                    Stored::Tombstone(v & !TOMBSTONE_BIT)
                } else {
                    Stored::At(v - 1)
                },
            );
        });
    }

    /// Empties every entry (the volume is deleted), calling `f` with each pool block that
    /// was mapped. Each entry is swapped, not read, so a racing `remap_if` either moved the
    /// block first (and `f` gets its new place) or fails.
    pub fn drain(&self, mut f: impl FnMut(u64)) {
        self.for_each_installed(|_, e| {
            if e.load(Ordering::Relaxed) == 0 {
                return;
            }
            if let Mapping::At(a) = decode(e.swap(0, Ordering::AcqRel)) {
                self.mapped.fetch_sub(1, Ordering::Relaxed);
                f(a);
            }
        });
    }

    /// Calls `f` with every entry of every installed leaf and its LBA, in LBA order.
    fn for_each_installed(&self, mut f: impl FnMut(u64, &AtomicU64)) {
        for (t, slot) in self.top.iter().enumerate() {
            let node = slot.load(Ordering::Acquire);
            if node.is_null() {
                continue;
            }
            // SAFETY: installed nodes and leaves live until the table drops.
            for (n, l) in unsafe { &*node }.leaves.iter().enumerate() {
                let leaf = l.load(Ordering::Acquire);
                if leaf.is_null() {
                    continue;
                }
                // SAFETY: as above.
                for (i, e) in unsafe { &*leaf }.entries.iter().enumerate() {
                    let lba =
                        ((t as u64) << (2 * FANOUT_BITS)) | ((n as u64) << FANOUT_BITS) | i as u64;
                    f(lba, e);
                }
            }
        }
    }

    /// Recovery only: sets an entry as a checkpoint stored it.
    pub fn restore(&self, lba: u64, stored: Stored) {
        assert!(lba < self.capacity_blocks());
        let new = match stored {
            Stored::At(a) => encode(Some(a), 0),
            Stored::Tombstone(seq) => encode(None, seq),
        };
        let old = self.entry_or_create(lba).swap(new, Ordering::AcqRel);
        let was_mapped = matches!(decode(old), Mapping::At(_));
        let is_mapped = matches!(stored, Stored::At(_));
        if is_mapped && !was_mapped {
            self.mapped.fetch_add(1, Ordering::Relaxed);
        } else if was_mapped && !is_mapped {
            self.mapped.fetch_sub(1, Ordering::Relaxed);
        }
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

    /// Test oracle: the data at address `a` was written by sequence number `a % 1_000_000`.
    fn seq_of(a: u64) -> u64 {
        a % 1_000_000
    }

    fn addr(seq: u64) -> u64 {
        7_000_000 + seq
    }

    #[test]
    fn unwritten_reads_zero_and_costs_no_leaf() {
        let t = ExtentTable::new(1 << 30);
        assert_eq!(t.lookup(12345), Mapping::Zero);
        assert_eq!(
            t.update(7, None, 1, &seq_of, false),
            Update::Applied {
                previous: Mapping::Zero
            }
        );
        assert_eq!(t.memory_bytes(), (t.top.len() * 8) as u64);
    }

    #[test]
    fn higher_sequence_wins_in_either_order_however_far_apart() {
        let t = ExtentTable::new(1024);
        assert!(matches!(
            t.update(5, Some(addr(11)), 11, &seq_of, true),
            Update::Applied { .. }
        ));
        assert_eq!(
            t.update(5, Some(addr(10)), 10, &seq_of, true),
            Update::Stale
        );
        assert_eq!(t.lookup(5), Mapping::At(addr(11)));
        // A write long after the entry's (no wrap-around: sequence numbers are whole).
        assert!(matches!(
            t.update(5, Some(addr(900_001)), 900_001, &seq_of, true),
            Update::Applied { .. }
        ));
        // An unmap is ordered like a write: an older write cannot resurrect the block.
        assert!(matches!(
            t.update(5, None, 900_002, &seq_of, true),
            Update::Applied {
                previous: Mapping::At(_)
            }
        ));
        assert_eq!(
            t.update(5, Some(addr(900_000)), 900_000, &seq_of, true),
            Update::Stale
        );
        assert_eq!(t.lookup(5), Mapping::Zero);
        // With an older write in flight, unmapping a never-written block leaves a tombstone.
        t.update(600, None, 50, &seq_of, true);
        assert_eq!(
            t.update(600, Some(addr(49)), 49, &seq_of, true),
            Update::Stale
        );
        assert_eq!(t.mapped_blocks(), 0);
    }

    #[test]
    fn remap_if_loses_to_a_newer_write_and_keeps_the_original_order() {
        let t = ExtentTable::new(1024);
        t.update(9, Some(addr(1)), 1, &seq_of, true);
        // The cleaner copies the block to a new address that still carries seq 1.
        assert!(t.remap_if(9, addr(1), 8_000_000 + 1));
        assert_eq!(t.lookup(9), Mapping::At(8_000_001));
        // A user write (seq 2) in flight during the move wins over the moved copy.
        assert!(matches!(
            t.update(9, Some(addr(2)), 2, &seq_of, true),
            Update::Applied { .. }
        ));
        assert!(
            !t.remap_if(9, 8_000_001, 9_000_001),
            "a stale relocation must not win"
        );
        assert_eq!(t.lookup(9), Mapping::At(addr(2)));
    }

    #[test]
    fn eight_bytes_per_mapped_block_when_dense() {
        let t = ExtentTable::new(1 << 20);
        for lba in 0..(1 << 20) {
            t.update(lba, Some(addr(1)), 1, &seq_of, false);
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
                            t.update(lba, Some(addr(seq)), seq, &seq_of, true);
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        for lba in 0..64 {
            assert_eq!(t.lookup(lba), Mapping::At(addr(1999 * 4 + 3)));
        }
        assert_eq!(t.mapped_blocks(), 64);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write { lba: u64 },
        Unmap { lba: u64 },
        Relocate { lba: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..2048u64).prop_map(|lba| Op::Write { lba }),
            (0..2048u64).prop_map(|lba| Op::Unmap { lba }),
            (0..2048u64).prop_map(|lba| Op::Relocate { lba }),
        ]
    }

    proptest! {
        /// The table against a BTreeMap model, for writes, unmaps and relocations in
        /// sequence order (addresses encode the sequence number of their data).
        #[test]
        fn matches_a_btreemap_model(ops in proptest::collection::vec(op(), 1..400)) {
            let t = ExtentTable::new(2048);
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            for (i, op) in ops.iter().enumerate() {
                let seq = i as u64 + 1;
                match *op {
                    Op::Write { lba } => {
                        let applied = matches!(t.update(lba, Some(addr(seq)), seq, &seq_of, true), Update::Applied { .. });
                        prop_assert!(applied);
                        model.insert(lba, addr(seq));
                    }
                    Op::Unmap { lba } => {
                        t.update(lba, None, seq, &seq_of, i % 2 == 0);
                        model.remove(&lba);
                    }
                    Op::Relocate { lba } => {
                        let moved = match model.get(&lba) {
                            // The copy keeps its data's sequence number (same residue).
                            Some(&from) => t.remap_if(lba, from, from + 1_000_000),
                            None => t.remap_if(lba, 5, 6),
                        };
                        prop_assert_eq!(moved, model.contains_key(&lba));
                        if moved {
                            let from = model[&lba];
                            model.insert(lba, from + 1_000_000);
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
