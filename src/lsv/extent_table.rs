//! The extent table: maps (volume, LBA) to where the block lives in the pool's log.
//!
//! One table per volume: a three-level radix of atomics (a top array, then 512-way nodes,
//! then leaves of 512 entries). Nodes and leaves are allocated on first write to their range
//! and installed with compare-and-swap, so unmapped ranges cost nothing and readers and writers
//! on every reactor use the table without locks. A mapped 4 KiB block costs one 4-byte entry
//! (plus its share of a 2 KiB leaf and of the nodes: about 4.03 bytes in all when dense).
//!
//! ## Entry format (version 2, in memory only: checkpoints store `Stored`, see `checkpoint.rs`)
//!
//! ```text
//!  31      28 27                                                  0
//! +----------+----------------------------------------------------+
//! | 0x0      | 0: never written                                    |
//! | < 0xF    | pool block address + 1 (addresses up to MAX_POOL_BLOCK) |
//! | 0xF      | tombstone: the low 28 bits of its unmap's sequence number; the whole |
//! |          | number is in the leaf's tombstone array, at the same index            |
//! +----------+----------------------------------------------------+
//! ```
//!
//! - A never-written entry (0) reads zeroes, and any write replaces it.
//! - A tombstone reads zeroes and keeps the unmap's sequence number, so an older write still
//!   in flight (or a relocation replayed after the unmap) cannot resurrect the block. A leaf
//!   gets its tombstone array (8 bytes per entry) with its first tombstone. The unmap raises
//!   the array's number (`fetch_max`) before it swaps the entry, and the entry's low bits
//!   make two tombstones different values (unless their numbers are a multiple of 2^28
//!   apart, far more records than one write stays in flight for), so a racing write's
//!   compare-and-swap fails when a newer unmap got in between its two loads.
//! - Two writes to one block in flight at once (on two reactors) are ordered by sequence
//!   number, so the entry ends as log replay would leave it (the higher one wins). A mapped
//!   entry does not store its sequence number: the caller's `seq_of(address)` gives it, from
//!   the log's segment summaries (the sequence number of the write whose data lives there; a
//!   block the cleaner moved keeps its original write's number).
//! - The cleaner moves a block with `remap_if`, which swaps the address only if the entry
//!   still holds the old one, so a newer write always wins over a relocation.
//! - A volume that grew carries a `GrowFence`: a write numbered below the grow, to a block
//!   at or past the size the volume grew from, was made for a block that was cut off by a
//!   shrink (it raced the shrink, or the log still holds it from before), and is never
//!   mapped, live or in replay. Without it, a block cut off and then grown back could read
//!   its old data after a crash.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};

/// Entries per leaf and pointers per node.
pub const FANOUT: usize = 512;
const FANOUT_BITS: u32 = 9;
/// The largest volume: 2^40 blocks of 4 KiB (4 PiB, thin). Its table's top level is 32 MiB
/// of zeroed pointers, backed by memory only where nodes are installed.
/// Checked wherever a size comes in: the RPCs, and the volume table read from disk (a larger
/// size there is damage, not a table to allocate).
pub const MAX_VOLUME_BLOCKS: u64 = 1 << 40;
/// Largest pool block address an entry can hold (pools up to 15 TiB of 4 KiB blocks).
pub const MAX_POOL_BLOCK: u64 = TOMBSTONE_TAG as u64 - 2;

/// Entries at or above this are tombstones.
const TOMBSTONE_TAG: u32 = 0xF000_0000;
const TOMBSTONE_LOW_BITS: u64 = 0x0FFF_FFFF;

/// Where a block lives, as an extent-table entry sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Never written, or unmapped: reads zeroes.
    Zero,
    /// In the pool at this block address.
    At(u64),
}

#[inline]
fn mapped_entry(addr: u64) -> u32 {
    debug_assert!(addr <= MAX_POOL_BLOCK);
    (addr + 1) as u32
}

#[inline]
fn tombstone_entry(seq: u64) -> u32 {
    TOMBSTONE_TAG | (seq & TOMBSTONE_LOW_BITS) as u32
}

#[inline]
fn is_tombstone(e: u32) -> bool {
    e >= TOMBSTONE_TAG
}

#[inline]
fn decode(e: u32) -> Mapping {
    if e == 0 || is_tombstone(e) {
        Mapping::Zero
    } else {
        Mapping::At(e as u64 - 1)
    }
}

struct Leaf {
    entries: [AtomicU32; FANOUT],
    /// The sequence numbers of the unmaps behind tombstones (allocated with the first one).
    tombstones: AtomicPtr<TombstoneSeqs>,
}

struct TombstoneSeqs {
    seqs: [AtomicU64; FANOUT],
}

impl Leaf {
    /// The sequence number of the unmap behind the tombstone at `i`.
    #[inline]
    fn tombstone_seq(&self, i: usize) -> u64 {
        let t = self.tombstones.load(Ordering::Acquire);
        debug_assert!(!t.is_null(), "a tombstone without its array");
        if t.is_null() {
            return 0;
        }
        // SAFETY: an installed array lives until the table drops; `&self` keeps it alive.
        unsafe { &*t }.seqs[i].load(Ordering::Acquire)
    }

    /// The sequence number behind the non-zero entry value `e` at `i`.
    #[inline]
    fn seq_of_entry(&self, i: usize, e: u32, seq_of: &dyn Fn(u64) -> u64) -> u64 {
        debug_assert!(e != 0);
        if is_tombstone(e) {
            self.tombstone_seq(i)
        } else {
            seq_of(e as u64 - 1)
        }
    }

    /// The stored form of the non-zero entry value `e` at `i`.
    fn stored(&self, i: usize, e: u32) -> Stored {
        if is_tombstone(e) {
            Stored::Tombstone(self.tombstone_seq(i))
        } else {
            Stored::At(e as u64 - 1)
        }
    }
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
    /// A write with a higher sequence number got there first (or the volume was deleted
    /// before this update began); nothing changed.
    Stale,
    /// The volume was deleted (or shrunk past the block) while this write was applied: its
    /// new mapping was taken back,
    /// and `previous` is gone (for usage accounting: the previous block is dead, the new one
    /// was never live).
    Dropped { previous: Mapping },
}

/// What a volume was when it last grew: writes numbered below `seq` to blocks at or past
/// `floor_blocks` are never mapped (see the module's notes, and `LsvPool::resize_volume`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrowFence {
    /// The sequence number the grow took (no record has it).
    pub seq: u64,
    /// The volume's size before the grow.
    pub floor_blocks: u64,
}

/// One volume's map.
pub struct ExtentTable {
    top: Box<[AtomicPtr<Node>]>,
    /// The volume's size now (resize changes it, up to the capacity `top` was sized for).
    num_blocks: AtomicU64,
    leaves: AtomicU64,
    nodes: AtomicU64,
    tombstone_arrays: AtomicU64,
    mapped: AtomicU64,
    /// Set by `drain` (the volume was deleted): no update installs a mapping after that.
    retired: AtomicBool,
    /// The `GrowFence`'s sequence number (0: none) and floor; set before the size it guards.
    fence_seq: AtomicU64,
    fence_floor_blocks: AtomicU64,
}

// SAFETY: all shared state is atomics; nodes, leaves and tombstone arrays are only freed in
// `Drop`, when no other reference to the table exists.
unsafe impl Send for ExtentTable {}
// SAFETY: as above.
unsafe impl Sync for ExtentTable {}

/// Installs a fresh allocation in `slot` if it is empty; returns what the slot holds and
/// whether this call installed it. `make` allocates; a loser's allocation is freed.
/// SeqCst (once per allocation, so cheap): `drain`'s SeqCst walk then finds a node or leaf a
/// racing update installed before it read `retired` as false.
fn install<T>(slot: &AtomicPtr<T>, make: fn() -> Box<T>) -> (*mut T, bool) {
    let cur = slot.load(Ordering::Acquire);
    if !cur.is_null() {
        return (cur, false);
    }
    let fresh = Box::into_raw(make());
    match slot.compare_exchange(cur, fresh, Ordering::SeqCst, Ordering::Acquire) {
        Ok(_) => (fresh, true),
        Err(winner) => {
            // SAFETY: `fresh` came from Box::into_raw above and was never shared.
            drop(unsafe { Box::from_raw(fresh) });
            (winner, false)
        }
    }
}

fn new_leaf() -> Box<Leaf> {
    Box::new(Leaf {
        entries: std::array::from_fn(|_| AtomicU32::new(0)),
        tombstones: AtomicPtr::new(std::ptr::null_mut()),
    })
}

fn new_node() -> Box<Node> {
    Box::new(Node {
        leaves: std::array::from_fn(|_| AtomicPtr::new(std::ptr::null_mut())),
    })
}

fn new_tombstone_seqs() -> Box<TombstoneSeqs> {
    Box::new(TombstoneSeqs {
        seqs: std::array::from_fn(|_| AtomicU64::new(0)),
    })
}

impl ExtentTable {
    /// A table for a volume of `num_blocks` blocks (at most `FANOUT^2 * 2^32`). Its top
    /// level has room to grow the volume to `growth_capacity(num_blocks)`.
    pub fn new(num_blocks: u64) -> ExtentTable {
        let per_top = (FANOUT * FANOUT) as u64;
        let top_len = Self::growth_capacity(num_blocks).div_ceil(per_top).max(1) as usize;
        // Zeroed, so the kernel backs the top level lazily: the largest volume's 32 MiB of
        // pointers cost memory only where nodes are installed (and walks read zero pages).
        // SAFETY: every element is a null `AtomicPtr`, whose bytes are all zero.
        let top = unsafe { Box::<[AtomicPtr<Node>]>::new_zeroed_slice(top_len).assume_init() };
        ExtentTable {
            top,
            num_blocks: AtomicU64::new(num_blocks),
            leaves: AtomicU64::new(0),
            nodes: AtomicU64::new(0),
            tombstone_arrays: AtomicU64::new(0),
            mapped: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            fence_seq: AtomicU64::new(0),
            fence_floor_blocks: AtomicU64::new(0),
        }
    }

    pub fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Acquire)
    }

    /// Retires the volume without emptying its map, for a pool being destroyed (nothing
    /// reads its maps again): from now on its channels fail every request, and an update
    /// maps nothing (as after `drain`).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }

    /// Whether the volume was deleted (`drain` or `retire` ran): its channels fail their I/O.
    pub fn retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// How far a volume created with `num_blocks` may grow: 8 times its size, and at least
    /// 1 GiB of 4 KiB blocks, but not past `MAX_VOLUME_BLOCKS` (the top level costs 8 bytes
    /// per GiB of that).
    pub fn growth_capacity(num_blocks: u64) -> u64 {
        num_blocks
            .saturating_mul(8)
            .max(1 << 18)
            .min(MAX_VOLUME_BLOCKS.max(num_blocks))
    }

    /// The most blocks this table can map.
    pub fn capacity_blocks(&self) -> u64 {
        (self.top.len() * FANOUT * FANOUT) as u64
    }

    /// The fence the volume's last grow left, if it still stands.
    pub fn fence(&self) -> Option<GrowFence> {
        let seq = self.fence_seq.load(Ordering::SeqCst);
        (seq != 0).then(|| GrowFence {
            seq,
            floor_blocks: self.fence_floor_blocks.load(Ordering::SeqCst),
        })
    }

    /// Sets the fence a reopened pool's volume table holds, or drops one that no replay can
    /// need any more (no write numbered below it is in flight or will be replayed).
    pub fn set_fence(&self, fence: Option<GrowFence>) {
        let f = fence.unwrap_or(GrowFence {
            seq: 0,
            floor_blocks: 0,
        });
        self.fence_floor_blocks
            .store(f.floor_blocks, Ordering::SeqCst);
        self.fence_seq.store(f.seq, Ordering::SeqCst);
    }

    /// Whether a write of `lba` numbered `seq` is kept out by the fence.
    #[inline]
    pub fn fenced(&self, lba: u64, seq: u64) -> bool {
        let f = self.fence_seq.load(Ordering::SeqCst);
        f != 0 && seq < f && lba >= self.fence_floor_blocks.load(Ordering::SeqCst)
    }

    /// Grows the volume to `blocks`, fenced at `fence_seq` (a sequence number no record
    /// has): a write numbered below it to the blocks gained is never mapped. The fence is
    /// set before the new size shows, so an update that sees the size sees the fence.
    /// Err: past `capacity_blocks`.
    pub fn grow(&self, blocks: u64, fence_seq: u64) -> Result<(), u64> {
        if blocks > self.capacity_blocks() {
            return Err(self.capacity_blocks());
        }
        let old = self.num_blocks();
        assert!(blocks >= old, "grow from {old} to {blocks} blocks");
        debug_assert!(fence_seq != 0);
        self.set_fence(Some(GrowFence {
            seq: fence_seq,
            floor_blocks: old,
        }));
        self.num_blocks.store(blocks, Ordering::SeqCst);
        Ok(())
    }

    /// Shrinks the volume to `blocks`: clears the entries past the new end and calls
    /// `freed` with each pool block they mapped (the caller frees them; no list is built,
    /// since a shrink may cut off millions).
    pub fn shrink(&self, blocks: u64, mut freed: impl FnMut(u64)) {
        // SeqCst, as `drain`'s: an update that installs past the new end after this either
        // sees the new size and takes its mapping back, or is found by the walk below.
        let old = self.num_blocks.swap(blocks, Ordering::SeqCst);
        assert!(blocks <= old, "shrink from {old} to {blocks} blocks");
        // Only installed leaves: a walk of every LBA cut off would take hours for a volume
        // shrunk from petabytes, on the reactor that serves the RPC.
        self.for_each_installed(blocks, |lba, leaf, i| {
            if lba >= old {
                return;
            }
            // A block past the end keeps no tombstone number, which a later unmap (after the
            // volume grows again) would otherwise inherit through fetch_max.
            let seqs = leaf.tombstones.load(Ordering::Acquire);
            if !seqs.is_null() {
                // SAFETY: installed arrays live until the table drops.
                unsafe { &*seqs }.seqs[i].store(0, Ordering::Release);
            }
            let v = leaf.entries[i].swap(0, Ordering::SeqCst);
            if let Mapping::At(p) = decode(v) {
                self.mapped.fetch_sub(1, Ordering::Relaxed);
                freed(p);
            }
        });
    }

    #[inline]
    fn split(lba: u64) -> (usize, usize, usize) {
        let leaf_i = (lba & (FANOUT as u64 - 1)) as usize;
        let node_i = ((lba >> FANOUT_BITS) & (FANOUT as u64 - 1)) as usize;
        let top_i = (lba >> (2 * FANOUT_BITS)) as usize;
        (top_i, node_i, leaf_i)
    }

    /// The leaf holding `lba` and its index there, if the leaf exists (reads never allocate).
    /// SeqCst loads (plain loads on x86; see `install`).
    #[inline]
    fn leaf(&self, lba: u64) -> Option<(&Leaf, usize)> {
        let (t, n, l) = Self::split(lba);
        let node = self.top.get(t)?.load(Ordering::SeqCst);
        if node.is_null() {
            return None;
        }
        // SAFETY: installed nodes live until the table drops; `&self` keeps it alive.
        let leaf = unsafe { &*node }.leaves[n].load(Ordering::SeqCst);
        if leaf.is_null() {
            return None;
        }
        // SAFETY: as for nodes.
        Some((unsafe { &*leaf }, l))
    }

    /// The leaf holding `lba` and its index there, allocating the node and leaf if needed.
    fn leaf_or_create(&self, lba: u64) -> (&Leaf, usize) {
        let (t, n, l) = Self::split(lba);
        let (node, fresh) = install(&self.top[t], new_node);
        if fresh {
            self.nodes.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: installed nodes live until the table drops.
        let (leaf, fresh) = install(&unsafe { &*node }.leaves[n], new_leaf);
        if fresh {
            self.leaves.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: installed leaves live until the table drops.
        (unsafe { &*leaf }, l)
    }

    /// The tombstone number slot for index `i` of `leaf`, allocating the leaf's array if needed.
    fn tombstone_slot<'a>(&self, leaf: &'a Leaf, i: usize) -> &'a AtomicU64 {
        let (seqs, fresh) = install(&leaf.tombstones, new_tombstone_seqs);
        if fresh {
            self.tombstone_arrays.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: installed arrays live until the table drops, and so as long as `leaf`.
        &unsafe { &*seqs }.seqs[i]
    }

    /// Where `lba` lives now. Plain atomic loads; never allocates.
    #[inline]
    pub fn lookup(&self, lba: u64) -> Mapping {
        if lba >= self.capacity_blocks() {
            return Mapping::Zero;
        }
        self.leaf(lba).map_or(Mapping::Zero, |(leaf, i)| {
            decode(leaf.entries[i].load(Ordering::Acquire))
        })
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
        // A block past the end (a shrink raced with this record), of a deleted volume, or
        // written before the volume grew back over it, takes nothing.
        if lba >= self.num_blocks() || self.retired() || (addr.is_some() && self.fenced(lba, seq)) {
            return Update::Stale;
        }
        // An unmap of a never-written block needs no tombstone when no older write can
        // still land (a newer one that lands meanwhile wins anyway), and so no memory.
        if addr.is_none()
            && !older_in_flight
            && self
                .leaf(lba)
                .is_none_or(|(leaf, i)| leaf.entries[i].load(Ordering::Acquire) == 0)
        {
            return Update::Applied {
                previous: Mapping::Zero,
            };
        }
        let (leaf, i) = self.leaf_or_create(lba);
        let new = match addr {
            Some(a) => mapped_entry(a),
            None => {
                // Raised before the entry changes, so a write that sees the new tombstone
                // sees at least this number.
                self.tombstone_slot(leaf, i)
                    .fetch_max(seq, Ordering::AcqRel);
                tombstone_entry(seq)
            }
        };
        let entry = &leaf.entries[i];
        let mut cur = entry.load(Ordering::Acquire);
        loop {
            if cur != 0 && leaf.seq_of_entry(i, cur, seq_of) > seq {
                return Update::Stale;
            }
            #[cfg(test)]
            tests::between_check_and_swap();
            // SeqCst (no dearer than AcqRel on x86): with `drain`'s, orders this swap and
            // the `retired` load after it against `drain`'s store and swaps (below).
            match entry.compare_exchange_weak(cur, new, Ordering::SeqCst, Ordering::Acquire) {
                Ok(_) => {
                    let previous = decode(cur);
                    if addr.is_some()
                        && (self.retired.load(Ordering::SeqCst)
                            || lba >= self.num_blocks.load(Ordering::SeqCst)
                            || self.fenced(lba, seq))
                    {
                        // `drain` (or a shrink past `lba`, then perhaps a grow back over it)
                        // began after the check above. If its walk has not reached this
                        // entry, take the new mapping back (else it took it, and counts it
                        // dead): either way nothing of a deleted volume, or cut off by a
                        // shrink, stays live. The size is loaded before the fence, which a
                        // grow sets before the size.
                        if entry
                            .compare_exchange(new, 0, Ordering::SeqCst, Ordering::Relaxed)
                            .is_ok()
                        {
                            if previous != Mapping::Zero {
                                self.mapped.fetch_sub(1, Ordering::Relaxed);
                            }
                            return Update::Dropped { previous };
                        }
                    }
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
        let Some((leaf, i)) = self.leaf(lba) else {
            return false;
        };
        debug_assert!(from <= MAX_POOL_BLOCK && to <= MAX_POOL_BLOCK);
        leaf.entries[i]
            .compare_exchange(
                mapped_entry(from),
                mapped_entry(to),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
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
        self.for_each_installed(0, |lba, leaf, i| {
            let v = leaf.entries[i].load(Ordering::Acquire);
            if v != 0 {
                f(lba, leaf.stored(i, v));
            }
        });
    }

    /// `for_each` a piece at a time: from `start_lba` (a leaf's first), over at most
    /// `max_leaves` installed leaves. Returns where the next piece starts, or None at the end.
    pub fn for_each_from(
        &self,
        start_lba: u64,
        max_leaves: usize,
        mut f: impl FnMut(u64, Stored),
    ) -> Option<u64> {
        debug_assert_eq!(start_lba % FANOUT as u64, 0, "a piece starts at a leaf");
        let (t0, n0, _) = Self::split(start_lba);
        let mut leaves = 0;
        for t in t0..self.top.len() {
            let node = self.top[t].load(Ordering::SeqCst);
            if node.is_null() {
                continue;
            }
            let first = if t == t0 { n0 } else { 0 };
            // SAFETY: installed nodes and leaves live until the table drops.
            let node = unsafe { &*node };
            for n in first..FANOUT {
                let base = ((t as u64) << (2 * FANOUT_BITS)) | ((n as u64) << FANOUT_BITS);
                if leaves == max_leaves {
                    return Some(base);
                }
                let leaf = node.leaves[n].load(Ordering::SeqCst);
                if leaf.is_null() {
                    continue;
                }
                leaves += 1;
                // SAFETY: as above.
                let leaf = unsafe { &*leaf };
                for i in 0..FANOUT {
                    let v = leaf.entries[i].load(Ordering::Acquire);
                    if v != 0 {
                        f(base | i as u64, leaf.stored(i, v));
                    }
                }
            }
        }
        None
    }

    /// Empties every entry (the volume is deleted), calling `f` with each pool block that
    /// was mapped. Each entry is swapped, not read, so a racing `remap_if` either moved the
    /// block first (and `f` gets its new place) or fails.
    /// An update that installs a mapping after this began takes it back itself (`Dropped`),
    /// or finds it taken here.
    pub fn drain(&self, mut f: impl FnMut(u64)) {
        self.retired.store(true, Ordering::SeqCst);
        self.for_each_installed(0, |_, leaf, i| {
            let e = &leaf.entries[i];
            if e.load(Ordering::SeqCst) == 0 {
                return;
            }
            if let Mapping::At(a) = decode(e.swap(0, Ordering::SeqCst)) {
                self.mapped.fetch_sub(1, Ordering::Relaxed);
                f(a);
            }
        });
    }

    /// Calls `f` with every index at or past `first_lba` of every installed leaf and its LBA,
    /// in LBA order. It visits only what is installed (and the top level), never the LBAs
    /// of a whole unmapped range: the largest volume costs its 2^22 top pointers.
    /// The pointers are loaded SeqCst, for `drain` and `shrink` (see `install`).
    fn for_each_installed(&self, first_lba: u64, mut f: impl FnMut(u64, &Leaf, usize)) {
        let (first_t, _, _) = Self::split(first_lba);
        for (t, slot) in self.top.iter().enumerate().skip(first_t) {
            let node = slot.load(Ordering::SeqCst);
            if node.is_null() {
                continue;
            }
            // SAFETY: installed nodes and leaves live until the table drops.
            for (n, l) in unsafe { &*node }.leaves.iter().enumerate() {
                let leaf_lba = ((t as u64) << (2 * FANOUT_BITS)) | ((n as u64) << FANOUT_BITS);
                if leaf_lba + FANOUT as u64 <= first_lba {
                    continue;
                }
                let leaf = l.load(Ordering::SeqCst);
                if leaf.is_null() {
                    continue;
                }
                // SAFETY: as above.
                let leaf = unsafe { &*leaf };
                let first_i = first_lba.saturating_sub(leaf_lba) as usize;
                for i in first_i..FANOUT {
                    f(leaf_lba | i as u64, leaf, i);
                }
            }
        }
    }

    /// Recovery only (no other user of the table yet): sets an entry as a checkpoint
    /// stored it.
    pub fn restore(&self, lba: u64, stored: Stored) {
        assert!(lba < self.capacity_blocks());
        let (leaf, i) = self.leaf_or_create(lba);
        let new = match stored {
            Stored::At(a) => mapped_entry(a),
            Stored::Tombstone(seq) => {
                self.tombstone_slot(leaf, i).store(seq, Ordering::Release);
                tombstone_entry(seq)
            }
        };
        let old = leaf.entries[i].swap(new, Ordering::AcqRel);
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
            + self.tombstone_arrays.load(Ordering::Relaxed)
                * std::mem::size_of::<TombstoneSeqs>() as u64
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
                if leaf.is_null() {
                    continue;
                }
                // SAFETY: as above.
                let leaf = unsafe { Box::from_raw(leaf) };
                let seqs = leaf.tombstones.load(Ordering::Acquire);
                if !seqs.is_null() {
                    // SAFETY: as above.
                    drop(unsafe { Box::from_raw(seqs) });
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

    thread_local! {
        /// Runs once, on this thread, between an update's check and its swap.
        static BETWEEN: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
            const { std::cell::RefCell::new(None) };
    }

    /// Has `f` run (once, on this thread) between the next update's check and its swap.
    fn between_check_and_swap_run(f: impl FnOnce() + 'static) {
        BETWEEN.with(|b| *b.borrow_mut() = Some(Box::new(f)));
    }

    pub(super) fn between_check_and_swap() {
        if let Some(f) = BETWEEN.with(|b| b.borrow_mut().take()) {
            f();
        }
    }

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
    fn four_bytes_per_mapped_block_when_dense_and_tombstones_cost_only_their_leaves() {
        let t = ExtentTable::new(1 << 20);
        for lba in 0..(1 << 20) {
            t.update(lba, Some(addr(1)), 1, &seq_of, false);
        }
        let per_block = t.memory_bytes() as f64 / t.mapped_blocks() as f64;
        assert!(per_block <= 4.05, "{per_block} bytes per mapped block");
        // Unmapping one leaf's blocks gives that leaf (only) its tombstone array.
        let before = t.memory_bytes();
        for lba in 0..FANOUT as u64 {
            t.update(lba, None, 2, &seq_of, false);
        }
        assert_eq!(
            t.memory_bytes() - before,
            std::mem::size_of::<TombstoneSeqs>() as u64
        );
        assert_eq!(t.mapped_blocks(), (1 << 20) - FANOUT as u64);
    }

    #[test]
    fn a_walk_in_pieces_sees_what_one_walk_sees() {
        // Leaves in two nodes and past the first top slot, with gaps between them.
        let t = ExtentTable::new(1 << 20);
        let lbas = [
            0u64, 5, 511, 512, 4096, 262_143, 262_144, 300_000, 1_048_575,
        ];
        for (i, &lba) in lbas.iter().enumerate() {
            t.update(lba, Some(addr(i as u64 + 1)), i as u64 + 1, &seq_of, true);
        }
        t.update(4097, None, 20, &seq_of, true);
        let mut whole = Vec::new();
        t.for_each(|lba, s| whole.push((lba, s)));
        assert_eq!(whole.len(), lbas.len() + 1);
        for max_leaves in [1, 2, 3, 100] {
            let mut pieces = Vec::new();
            let mut at = Some(0);
            let mut calls = 0;
            while let Some(start) = at {
                at = t.for_each_from(start, max_leaves, |lba, s| pieces.push((lba, s)));
                calls += 1;
                assert!(calls <= 100, "the walk ends");
            }
            assert_eq!(pieces, whole, "{max_leaves} leaves a piece");
        }
        // Seven leaves hold entries: one leaf a piece takes seven pieces.
        let mut at = Some(0);
        let mut calls = 0;
        while let Some(start) = at {
            at = t.for_each_from(start, 1, |_, _| {});
            calls += 1;
        }
        assert_eq!(calls, 7);
    }

    #[test]
    fn tombstones_keep_whole_sequence_numbers() {
        let t = ExtentTable::new(1024);
        // Numbers past the entry's 28 low bits still order as whole numbers.
        let big = (1u64 << 40) + 5;
        t.update(3, Some(addr(1)), 1, &seq_of, true);
        t.update(3, None, big, &seq_of, true);
        assert_eq!(t.update(3, Some(addr(6)), 6, &seq_of, true), Update::Stale);
        assert_eq!(
            t.update(3, Some(addr(5)), big - (1 << 28), &seq_of, true),
            Update::Stale
        );
        let mut seen = Vec::new();
        t.for_each(|lba, s| seen.push((lba, s)));
        assert_eq!(seen, vec![(3, Stored::Tombstone(big))]);
        // An older unmap changes nothing; a newer write wins.
        assert_eq!(t.update(3, None, big - 1, &seq_of, true), Update::Stale);
        let newer = big + 1_000_000; // seq_of(addr(newer)) is its residue: use a real oracle
        let oracle = move |a: u64| if a == 77 { newer } else { seq_of(a) };
        assert!(matches!(
            t.update(3, Some(77), newer, &oracle, true),
            Update::Applied { .. }
        ));
        assert_eq!(t.lookup(3), Mapping::At(77));
        // A checkpoint's tombstone comes back whole.
        let r = ExtentTable::new(1024);
        r.restore(9, Stored::Tombstone(big));
        assert_eq!(r.update(9, Some(addr(6)), 6, &seq_of, false), Update::Stale);
        assert_eq!(r.lookup(9), Mapping::Zero);
    }

    #[test]
    fn a_newer_unmap_between_a_writes_check_and_swap_wins() {
        let t = Arc::new(ExtentTable::new(1024));
        t.update(4, Some(addr(1)), 1, &seq_of, true);
        t.update(4, None, 2, &seq_of, true);
        // Write 3 checks the tombstone of unmap 2 and passes; before it swaps, unmap 4
        // lands. The tombstone's value changed, so the write's swap fails and it looks again.
        let u = t.clone();
        between_check_and_swap_run(move || {
            assert!(matches!(
                u.update(4, None, 4, &seq_of, true),
                Update::Applied { .. }
            ));
        });
        assert_eq!(t.update(4, Some(addr(3)), 3, &seq_of, true), Update::Stale);
        assert_eq!(t.lookup(4), Mapping::Zero);
        let mut seen = Vec::new();
        t.for_each(|lba, s| seen.push((lba, s)));
        assert_eq!(seen, vec![(4, Stored::Tombstone(4))]);
    }

    #[test]
    fn a_write_that_swaps_after_a_drain_began_takes_its_mapping_back() {
        let t = Arc::new(ExtentTable::new(1024));
        t.update(6, Some(addr(1)), 1, &seq_of, true);
        t.update(8, Some(addr(2)), 2, &seq_of, true);
        // Write 3 to block 8 has checked; the volume is deleted; the write swaps.
        let d = t.clone();
        let drained = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = drained.clone();
        between_check_and_swap_run(move || {
            d.drain(|a| seen.lock().unwrap().push(a));
        });
        // The drain emptied block 8 while the write waited, so the write's swap fails; its
        // retry installs into the empty entry, then sees the volume retired and takes its
        // mapping back.
        let r = t.update(8, Some(addr(3)), 3, &seq_of, true);
        assert_eq!(
            r,
            Update::Dropped {
                previous: Mapping::Zero
            }
        );
        assert_eq!(*drained.lock().unwrap(), vec![addr(1), addr(2)]);
        assert_eq!(t.lookup(8), Mapping::Zero);
        assert_eq!(t.mapped_blocks(), 0);
        // Updates that begin after the drain change nothing.
        assert_eq!(t.update(9, Some(addr(4)), 4, &seq_of, true), Update::Stale);
        assert_eq!(t.lookup(9), Mapping::Zero);
    }

    #[test]
    fn a_write_that_swaps_after_a_shrink_past_it_takes_its_mapping_back() {
        let t = Arc::new(ExtentTable::new(1024));
        t.update(8, Some(addr(2)), 2, &seq_of, true);
        let d = t.clone();
        let freed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = freed.clone();
        between_check_and_swap_run(move || {
            d.shrink(4, |p| seen.lock().unwrap().push(p));
        });
        let r = t.update(8, Some(addr(3)), 3, &seq_of, true);
        assert_eq!(
            r,
            Update::Dropped {
                previous: Mapping::Zero
            }
        );
        assert_eq!(*freed.lock().unwrap(), vec![addr(2)]);
        assert_eq!(t.mapped_blocks(), 0);
        t.grow(1024, 4).unwrap();
        assert_eq!(t.lookup(8), Mapping::Zero);
    }

    #[test]
    fn a_write_that_swaps_after_a_shrink_and_a_grow_back_takes_its_mapping_back() {
        let t = Arc::new(ExtentTable::new(1024));
        let d = t.clone();
        // The write of block 8 (number 3) has passed its checks; the volume shrinks past
        // the block and grows back (taking number 10) before its swap.
        between_check_and_swap_run(move || {
            d.shrink(4, |_| {});
            d.grow(1024, 10).unwrap();
        });
        let r = t.update(8, Some(addr(3)), 3, &seq_of, true);
        assert_eq!(
            r,
            Update::Dropped {
                previous: Mapping::Zero
            }
        );
        assert_eq!(t.lookup(8), Mapping::Zero);
        assert_eq!(t.mapped_blocks(), 0);
    }

    /// A shrink visits only the leaves installed past the new end: a volume shrunk from
    /// the largest size to a few blocks used to walk every one of 2^40 LBAs, which took the
    /// RPC's reactor hours (found by the hostile RPC test).
    #[test]
    fn shrinking_the_largest_volume_frees_its_mapped_tail_without_walking_every_block() {
        let t = ExtentTable::new(MAX_VOLUME_BLOCKS);
        let end = MAX_VOLUME_BLOCKS - 1;
        for (lba, a) in [(3, 30), (1000, 40), (1 << 30, 50), (end, 60)] {
            let u = t.update(lba, Some(addr(a)), a, &seq_of, false);
            assert!(matches!(u, Update::Applied { .. }), "{u:?}");
        }
        // A tombstone past the new end goes too.
        t.update(end - 1, None, 70, &seq_of, false);
        let mut freed = Vec::new();
        t.shrink(1000, |p| freed.push(p));
        freed.sort_unstable();
        assert_eq!(freed, vec![addr(40), addr(50), addr(60)]);
        assert_eq!(t.mapped_blocks(), 1);
        assert_eq!(t.lookup(3), Mapping::At(addr(30)));
        assert_eq!(t.lookup(999), Mapping::Zero);
        let mut left = Vec::new();
        t.for_each(|lba, stored| left.push((lba, stored)));
        assert_eq!(left, vec![(3, Stored::At(addr(30)))]);
    }

    #[test]
    fn a_write_numbered_before_a_grow_never_maps_a_block_the_grow_gave_back() {
        let t = ExtentTable::new(1024);
        t.shrink(4, |p| panic!("block {p} freed from an empty table"));
        t.grow(1024, 10).unwrap();
        assert_eq!(
            t.fence(),
            Some(GrowFence {
                seq: 10,
                floor_blocks: 4
            })
        );
        // Numbered below the grow: past the old end it is kept out, below it not.
        assert_eq!(t.update(8, Some(addr(1)), 9, &seq_of, true), Update::Stale);
        assert_eq!(t.lookup(8), Mapping::Zero);
        assert!(matches!(
            t.update(3, Some(addr(2)), 9, &seq_of, true),
            Update::Applied { .. }
        ));
        // Numbered after it: mapped. An unmap is never kept out.
        assert!(matches!(
            t.update(8, Some(addr(3)), 11, &seq_of, true),
            Update::Applied { .. }
        ));
        assert_eq!(t.lookup(8), Mapping::At(addr(3)));
        assert!(matches!(
            t.update(8, None, 12, &seq_of, true),
            Update::Applied { .. }
        ));
        t.set_fence(None);
        assert_eq!(t.fence(), None);
        assert!(!t.fenced(8, 1));
    }

    #[test]
    fn concurrent_writers_and_unmappers_end_with_the_highest_sequence() {
        // Block `lba` is unmapped by sequence numbers where (seq + lba) % 5 == 0.
        let unmaps = |seq: u64, lba: u64| (seq + lba).is_multiple_of(5);
        let t = Arc::new(ExtentTable::new(4096));
        let threads: Vec<_> = (0..4u64)
            .map(|w| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for round in 0..2000u64 {
                        let seq = round * 4 + w;
                        for lba in 0..64 {
                            let a = (!unmaps(seq, lba)).then_some(addr(seq));
                            t.update(lba, a, seq, &seq_of, true);
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        let last = 1999 * 4 + 3;
        for lba in 0..64 {
            let want = if unmaps(last, lba) {
                Mapping::Zero
            } else {
                Mapping::At(addr(last))
            };
            assert_eq!(t.lookup(lba), want, "lba {lba}");
        }
        assert_eq!(
            t.mapped_blocks(),
            (0..64).filter(|&l| !unmaps(last, l)).count() as u64
        );
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
