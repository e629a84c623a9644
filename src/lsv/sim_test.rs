//! Deterministic crash simulation of the log-structured store on the simulated disk.
//!
//! For each seed: format a small pool on a `SimDisk` (seeded delays, reordered completions, a
//! volatile cache), run random writes, unmaps and reads through a volume with the cleaner
//! running (the log wraps several times, so segments are cleaned, checkpointed and reused) and
//! checkpoints requested at random, pull the plug at a random step (mid-record, mid-clean and
//! mid-checkpoint included), recover from what the disk kept, and check that every
//! acknowledged write is there, that a write in flight at the crash left either its old or
//! its new contents in each block and never a mix within a block, and that unmapped blocks
//! read zeroes. Half the seeds crash a second time after writing on the recovered pool. Two
//! seeds in five also shrink and grow the volume now and then: blocks cut off read zeroes
//! once grown back (before and after a crash), whatever the log still holds of them.
//!
//! `UNBLEND_SIM_SEEDS=N` runs N seeds (default 200); `UNBLEND_SIM_SEED=S` runs only seed S,
//! which is how a failure printed by this test is replayed.

use std::collections::HashMap;
use std::sync::Arc;

use super::cleaner::Cleaner;
use super::pool::LsvPool;
use super::volume::LsvVolume;
use crate::bdev::sim::{SimDisk, SimRng};
use crate::bdev::{BdevRegistry, ChannelContext, IoChannel, IoRequest, IoStatus, IoType, IoVec};

const BLOCK: usize = 4096;
const DISK_BLOCKS: u64 = 8192; // 32 MiB
const VOLUME_BLOCKS: u64 = 512;
/// The volume of the dense seeds: about 60% of the small disk's segments.
const DENSE_VOLUME_BLOCKS: u64 = 2048;
/// The crash simulation's pool: 16 MiB, 13 segments of 1 MiB, so the log wraps quickly.
const SMALL_DISK_BLOCKS: u64 = 4096;

/// The contents a block has after a write tagged `tag` (every 8-byte word carries both).
fn pattern(lba: u64, tag: u64) -> u64 {
    (lba.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ tag).wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1
}

fn fill(buf: &mut [u8], lba: u64, tag: u64) {
    let w = pattern(lba, tag).to_le_bytes();
    for c in buf.chunks_exact_mut(8) {
        c.copy_from_slice(&w);
    }
}

/// What a block reads as: None for zeroes, Some(tag) for a whole write, Err for a mix.
fn classify(buf: &[u8], lba: u64, tags: &[u64]) -> Result<Option<u64>, String> {
    if buf.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    for &t in tags {
        let w = pattern(lba, t).to_le_bytes();
        if buf.chunks_exact(8).all(|c| c == w) {
            return Ok(Some(t));
        }
    }
    Err(format!(
        "block {lba} holds neither zeroes nor a whole write"
    ))
}

struct Harness {
    ch: IoChannel,
    bufs: Vec<Vec<u8>>,
    out: Vec<crate::bdev::IoCompletion>,
}

impl Harness {
    fn open(pool: &Arc<LsvPool>) -> Harness {
        Self::open_as(pool, false)
    }

    /// With `own_log`, the channel gets a log writer of its own, as if on its own reactor.
    fn open_as(pool: &Arc<LsvPool>, own_log: bool) -> Harness {
        let (meta, table) = pool.volume("v").expect("volume exists");
        let reg = BdevRegistry::new();
        let mut volume = LsvVolume::new(pool.clone(), meta, table);
        if own_log {
            volume = volume.with_own_log();
        }
        let entry = reg.register(Arc::new(volume)).unwrap();
        // 16 writes and a FLUSH may be in flight at once.
        let ch = entry
            .open_channel(&ChannelContext {
                queue_depth: 17,
                buffers: None,
            })
            .unwrap();
        Harness {
            ch,
            bufs: (0..16).map(|_| vec![0u8; 4 * BLOCK]).collect(),
            out: Vec::with_capacity(16),
        }
    }

    /// Submits a one-block write of `lba` with `tag`'s pattern from slot `slot`'s buffer
    /// (the request's tag is the slot).
    fn submit_block_write(&mut self, slot: usize, lba: u64, tag: u64) -> Result<(), String> {
        fill(&mut self.bufs[slot][..BLOCK], lba, tag);
        // SAFETY: the slot's buffer is untouched until its write completes.
        let iov = unsafe { IoVec::from_raw(self.bufs[slot].as_mut_ptr(), BLOCK) };
        self.ch
            .submit(
                &IoRequest {
                    io_type: IoType::Write,
                    offset_blocks: lba,
                    num_blocks: 1,
                    iovs: &[iov],
                    fua: false,
                    tag: slot as u64,
                },
                0,
            )
            .map_err(|e| format!("submit: {e}"))
    }

    fn read_block(&mut self, lba: u64) -> Vec<u8> {
        let mut buf = vec![0xA5u8; BLOCK];
        // SAFETY: `buf` lives, untouched, until the read completes below.
        let iov = unsafe { IoVec::from_raw(buf.as_mut_ptr(), BLOCK) };
        self.ch
            .submit(
                &IoRequest {
                    io_type: IoType::Read,
                    offset_blocks: lba,
                    num_blocks: 1,
                    iovs: &[iov],
                    fua: false,
                    tag: 999,
                },
                0,
            )
            .unwrap();
        loop {
            self.out.clear();
            self.ch.poll(0, &mut self.out);
            if let Some(c) = self.out.iter().find(|c| c.tag == 999) {
                assert_eq!(c.status, IoStatus::Success);
                return buf;
            }
        }
    }
}

#[derive(Clone, Copy)]
struct InFlight {
    lba: u64,
    blocks: u64,
    /// Some(tag) for a write, None for an unmap.
    tag: Option<u64>,
}

thread_local! {
    /// Segments cleaned, and the highest checkpoint generation reached, over a test's seeds.
    static CLEANED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static CHECKPOINTS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Of the cleaned segments, those freed without being read (nothing live in them).
    static CLEANED_UNREAD: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Seeds whose pool was formatted over an earlier pool's crashed image.
    static FORMATTED_OVER: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Victims whose live blocks were found by reading only headers and live writes.
    static READ_IN_PARTS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Of those, victims whose live blocks the segment summary in memory found.
    static READ_FROM_SUMMARY: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Shrinks, grows (of a volume that had shrunk, so over blocks cut off), and grows that
    /// replaced an earlier grow's fence (so retired it).
    static SHRINKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static GROWS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static FENCES_REPLACED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Times a log head waited for a checkpoint to free a journal slot, and recoveries that
    /// found the log by the journal (no segment probed) and by probing (version 2 pools).
    static JOURNAL_FULL_WAITS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static RECOVERED_BY_JOURNAL: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static RECOVERED_BY_PROBING: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Checkpoints during which records were numbered (taken a piece per poll).
    static CHECKPOINTS_OVERLAPPING_WRITES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Checkpoints during which the cleaner cleaned segments.
    static CHECKPOINTS_OVERLAPPING_CLEANING: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Notes what a pool about to be dropped did with its journal.
fn note_journal(pool: &LsvPool) {
    let waits = pool
        .journal_full_waits
        .load(std::sync::atomic::Ordering::Relaxed);
    JOURNAL_FULL_WAITS.with(|c| c.set(c.get() + waits));
    let walks = pool
        .checkpoints_overlapping_writes
        .load(std::sync::atomic::Ordering::Relaxed);
    CHECKPOINTS_OVERLAPPING_WRITES.with(|c| c.set(c.get() + walks));
    let walks = pool
        .checkpoints_overlapping_cleaning
        .load(std::sync::atomic::Ordering::Relaxed);
    CHECKPOINTS_OVERLAPPING_CLEANING.with(|c| c.set(c.get() + walks));
}

/// What the model knows of a volume's blocks.
#[derive(Default)]
struct Model {
    /// The acknowledged contents (None: zeroes).
    acked: HashMap<u64, Option<u64>>,
    /// Every tag a block ever had.
    tags: HashMap<u64, Vec<u64>>,
    /// What a crash may leave in each block (write-back pools): its contents at the last
    /// completed FLUSH, and everything written since (acknowledged or not). Absent: [None].
    allowed: HashMap<u64, Vec<Option<u64>>>,
    /// FUA pools: every acknowledged write must survive, FLUSH or not.
    strict: bool,
    /// The volume's size at creation (its largest), the most requests submitted per step, and
    /// the largest request.
    volume_blocks: u64,
    /// The volume's size now, and whether it is shrunk and grown now and then.
    size_blocks: u64,
    resizes: bool,
    burst: usize,
    max_request_blocks: u64,
}

/// The harness's tag for its FLUSH requests.
const FLUSH_TAG: u64 = 1000;

/// Runs `steps` random requests on `pool` with its cleaner, then crashes the disk; returns the
/// image and what was in flight.
fn run_until_crash(
    rng: &mut SimRng,
    disk: &SimDisk,
    pool: &Arc<LsvPool>,
    model: &mut Model,
    steps: u64,
    tag_base: u64,
) -> Result<(Vec<u8>, Vec<InFlight>), String> {
    let mut h = Harness::open(pool);
    let mut cleaner = Cleaner::new(pool.clone())?;
    cleaner.check_every_poll();
    let mut busy = vec![false; model.volume_blocks as usize];
    let mut slots: Vec<Option<InFlight>> = vec![None; 16];
    let mut flush: Option<FlushMarks> = None;
    for step in 0..steps {
        // The channel sees the volume's size now (an lsv volume is resizable).
        debug_assert_eq!(h.ch.num_blocks(), u64::MAX);
        let reach = model.size_blocks;
        // Submit requests (one, or a burst) on free slots, to blocks with nothing in flight.
        for _ in 0..model.burst {
            let Some(slot) = slots.iter().position(|s| s.is_none()) else {
                break;
            };
            let blocks = 1 + rng.below(model.max_request_blocks);
            let lba = rng.below(reach - blocks);
            if (lba..lba + blocks).all(|b| !busy[b as usize]) {
                let unmap = rng.below(5) == 0;
                let tag = tag_base + step * 16 + slot as u64 + 1;
                let buf = &mut h.bufs[slot];
                for b in 0..blocks {
                    fill(
                        &mut buf[b as usize * BLOCK..(b as usize + 1) * BLOCK],
                        lba + b,
                        tag,
                    );
                }
                // SAFETY: the slot's buffer is untouched until its write completes.
                let iov = unsafe { IoVec::from_raw(buf.as_mut_ptr(), blocks as usize * BLOCK) };
                let req = IoRequest {
                    io_type: if unmap { IoType::Unmap } else { IoType::Write },
                    offset_blocks: lba,
                    num_blocks: blocks,
                    iovs: if unmap {
                        &[]
                    } else {
                        std::slice::from_ref(&iov)
                    },
                    fua: false,
                    tag: slot as u64,
                };
                h.ch.submit(&req, 0).map_err(|e| format!("submit: {e}"))?;
                for b in lba..lba + blocks {
                    busy[b as usize] = true;
                    if !unmap {
                        model.tags.entry(b).or_default().push(tag);
                    }
                    model
                        .allowed
                        .entry(b)
                        .or_insert_with(|| vec![None])
                        .push((!unmap).then_some(tag));
                }
                slots[slot] = Some(InFlight {
                    lba,
                    blocks,
                    tag: (!unmap).then_some(tag),
                });
            }
        }
        if rng.below(200) == 0 {
            pool.request_checkpoint();
        }
        if model.resizes && rng.below(100) == 0 {
            resize(rng, pool, model, &busy, &mut flush)?;
        }
        if flush.is_none() && rng.below(25) == 0 {
            let req = IoRequest::flush(FLUSH_TAG);
            h.ch.submit(&req, 0).map_err(|e| format!("flush: {e}"))?;
            // From each block's history, what the flush does not cover: the write in flight
            // on it (one at most), and everything after.
            let marks: HashMap<u64, usize> = model
                .allowed
                .iter()
                .map(|(&b, v)| (b, v.len() - busy[b as usize] as usize))
                .collect();
            flush = Some((model.acked.clone(), marks));
        }
        cleaner.poll();
        h.out.clear();
        h.ch.poll(0, &mut h.out);
        for c in h.out.drain(..) {
            if c.tag == FLUSH_TAG {
                if c.status != IoStatus::Success {
                    return Err(format!("step {step}: FLUSH failed: {:?}", c.status));
                }
                // Everything acknowledged before the flush was issued is durable now.
                let (acked, marks) = flush.take().expect("a flush in flight");
                for b in 0..model.volume_blocks {
                    let floor = acked.get(&b).copied().flatten();
                    let since = model
                        .allowed
                        .get(&b)
                        .map(|v| v[marks.get(&b).copied().unwrap_or(1).min(v.len())..].to_vec())
                        .unwrap_or_default();
                    let mut now = vec![floor];
                    now.extend(since);
                    model.allowed.insert(b, now);
                }
                continue;
            }
            let f = slots[c.tag as usize]
                .take()
                .expect("completion for a slot in flight");
            if c.status != IoStatus::Success {
                return Err(format!("step {step}: I/O failed: {:?}", c.status));
            }
            for b in f.lba..f.lba + f.blocks {
                busy[b as usize] = false;
                // A write that a shrink cut off maps nothing.
                let kept = if b < model.size_blocks { f.tag } else { None };
                model.acked.insert(b, kept);
            }
        }
    }
    // Crash: whatever is in flight may or may not have reached the disk.
    let in_flight: Vec<InFlight> = slots.iter().flatten().copied().collect();
    let image = disk.crash();
    drop(cleaner);
    drop(h);
    for (total, count) in [
        (&CLEANED, &pool.segments_cleaned),
        (&CLEANED_UNREAD, &pool.segments_cleaned_unread),
        (&READ_IN_PARTS, &pool.segments_read_in_parts),
        (&READ_FROM_SUMMARY, &pool.segments_read_from_summary),
    ] {
        let n = count.load(std::sync::atomic::Ordering::Relaxed);
        total.with(|c| c.set(c.get() + n));
    }
    CHECKPOINTS.with(|c| {
        c.set(
            c.get().max(
                pool.checkpoint_gen
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
        )
    });
    Ok((image, in_flight))
}

/// What a FLUSH in flight covers: each block's acknowledged contents when it was issued, and
/// how much of each block's history (`Model::allowed`) came before it.
type FlushMarks = (HashMap<u64, Option<u64>>, HashMap<u64, usize>);

/// Shrinks the volume to a random size, or grows it back towards its largest. A shrink cuts
/// off blocks (writes in flight to them map nothing); a grow waits until none are in flight
/// past the end (whether such a write maps after a grow depends on when it was numbered)
/// and may be refused with Busy while the cleaner writes a checkpoint.
fn resize(
    rng: &mut SimRng,
    pool: &LsvPool,
    model: &mut Model,
    busy: &[bool],
    flush: &mut Option<FlushMarks>,
) -> Result<(), String> {
    let size = model.size_blocks;
    let floor = (model.volume_blocks / 4).max(model.max_request_blocks + 1);
    if rng.below(2) == 0 && size > floor {
        let to = floor + rng.below(size - floor);
        pool.resize_volume("v", to)
            .map_err(|e| format!("shrink: {e}"))?;
        for b in to..size {
            model.acked.insert(b, None);
            model.allowed.insert(b, vec![None]);
            if let Some((acked, marks)) = flush.as_mut() {
                acked.insert(b, None);
                marks.insert(b, 1);
            }
        }
        model.size_blocks = to;
        SHRINKS.with(|c| c.set(c.get() + 1));
    } else if size < model.volume_blocks && !busy[size as usize..].iter().any(|&b| b) {
        let to = size + 1 + rng.below(model.volume_blocks - size);
        let fenced = pool.volume("v").expect("volume v").1.fence().is_some();
        match pool.resize_volume("v", to) {
            Ok(_) => {
                model.size_blocks = to;
                GROWS.with(|c| c.set(c.get() + 1));
                if fenced {
                    FENCES_REPLACED.with(|c| c.set(c.get() + 1));
                }
            }
            Err(super::pool::PoolError::Busy(_)) => {}
            Err(e) => return Err(format!("grow: {e}")),
        }
    }
    Ok(())
}

/// After the last recovery: writes to random blocks and to the volume's last block read back
/// what was written (recovery must number new records above everything the pool kept,
/// a grow fence's number included, or such writes would be kept out).
fn writes_read_back(
    rng: &mut SimRng,
    pool: &Arc<LsvPool>,
    model: &Model,
    tag_base: u64,
) -> Result<(), String> {
    let mut h = Harness::open(pool);
    let mut cleaner = Cleaner::new(pool.clone())?;
    cleaner.check_every_poll();
    let size = model.size_blocks;
    for i in 0..9u64 {
        let lba = if i == 0 { size - 1 } else { rng.below(size) };
        let tag = tag_base + i;
        h.submit_block_write(0, lba, tag)?;
        let mut status = None;
        for _ in 0..100_000 {
            cleaner.poll();
            h.out.clear();
            h.ch.poll(0, &mut h.out);
            if let Some(c) = h.out.first() {
                status = Some(c.status);
                break;
            }
        }
        let Some(status) = status else {
            return Err(format!(
                "the write of block {lba} did not complete in 100,000 polls: {}",
                pool.stats()
            ));
        };
        if status != IoStatus::Success {
            return Err(format!("write of block {lba} failed: {status:?}"));
        }
        let got = classify(&h.read_block(lba), lba, &[tag])?;
        if got != Some(tag) {
            return Err(format!(
                "block {lba} reads {got:?} right after its write {tag}"
            ));
        }
    }
    Ok(())
}

/// Opens the pool on a crashed image and checks every block against the model; then the
/// blocks in flight at the crash are settled to what they read.
fn recover_and_check(
    image: Vec<u8>,
    seed: u64,
    model: &mut Model,
    in_flight: &[InFlight],
) -> Result<(Arc<SimDisk>, Arc<LsvPool>), String> {
    let disk = Arc::new(SimDisk::from_image("sim", image, seed ^ 0xDEAD, 3));
    let reg = BdevRegistry::new();
    let base = reg.register(disk.clone()).unwrap();
    let pool = LsvPool::open_named(base).map_err(|e| format!("recovery failed: {e}"))?;
    pool.set_fua_records(model.strict);
    // A journaled pool's recovery reads no segment's first block; a version 2 pool's does.
    let probed = pool
        .recovery_segments_probed
        .load(std::sync::atomic::Ordering::Relaxed);
    match (&pool.journal, probed) {
        (Some(_), 0) => RECOVERED_BY_JOURNAL.with(|c| c.set(c.get() + 1)),
        (Some(_), n) => {
            return Err(format!(
                "recovery probed {n} segments although the journal is intact"
            ))
        }
        (None, _) => RECOVERED_BY_PROBING.with(|c| c.set(c.get() + 1)),
    }
    let size = pool.volume("v").expect("volume v").0.num_blocks;
    if size != model.size_blocks {
        return Err(format!(
            "the volume reopened with {size} blocks, not {}",
            model.size_blocks
        ));
    }
    let mut h = Harness::open(&pool);
    for lba in 0..model.size_blocks {
        let empty = Vec::new();
        let all_tags = model.tags.get(&lba).unwrap_or(&empty);
        let data = h.read_block(lba);
        let got = classify(&data, lba, all_tags).map_err(|e| {
            // Name whose data it is, if it is some other block's write.
            let whose = model.tags.iter().find_map(|(&l, ts)| {
                ts.iter()
                    .find(|&&t| classify(&data, l, &[t]) == Ok(Some(t)))
                    .map(|t| (l, *t))
            });
            format!(
                "{e} (mapped at {:?}; it is the write of (block, tag) {whose:?})",
                pool.volume("v").map(|v| v.1.lookup(lba))
            )
        })?;
        let want = model.acked.get(&lba).copied().flatten();
        let racing = in_flight
            .iter()
            .find(|f| (f.lba..f.lba + f.blocks).contains(&lba));
        let zero = vec![None];
        let allowed = model.allowed.get(&lba).unwrap_or(&zero);
        let ok = if model.strict {
            got == want || racing.is_some_and(|f| got == f.tag)
        } else {
            allowed.contains(&got)
        };
        if !ok {
            return Err(format!(
                "block {lba}: read {got:?}, acknowledged {want:?}, in flight at the crash {:?}, allowed since the last flush {allowed:?}",
                racing.map(|f| f.tag)
            ));
        }
        model.acked.insert(lba, got);
        model.allowed.insert(lba, vec![got]);
    }
    drop(h);
    // As the appliance's load does, before the pool takes I/O.
    if !pool
        .checkpoint_after_recovery()
        .map_err(|e| format!("the load's checkpoint failed: {e}"))?
    {
        return Err("recovery did not ask for the load's checkpoint".into());
    }
    Ok((disk, pool))
}

/// Seed `seed`'s pool on `disk` with its volume, the model of it, and the steps of its first
/// run (drawn from `rng`).
fn seed_pool(
    seed: u64,
    rng: &mut SimRng,
    disk: &Arc<SimDisk>,
) -> Result<(Arc<LsvPool>, Model, u64), String> {
    let reg = BdevRegistry::new();
    let base = reg.register(disk.clone()).unwrap();
    let pool = LsvPool::create("p", base, 1 << 20).map_err(|e| e.to_string())?;
    // One seed in eight writes a volume near the pool's size with single-block writes, many
    // at a time: the cleaner works under pressure, and its victims hold many scattered live
    // blocks (records of many moves, whose headers span several blocks).
    let dense = seed % 8 == 5;
    let volume_blocks = if dense {
        DENSE_VOLUME_BLOCKS
    } else {
        VOLUME_BLOCKS
    };
    pool.create_volume("v", volume_blocks)
        .map_err(|e| e.to_string())?;
    // A third of the seeds write every record with FUA, and check every acknowledged write.
    let strict = seed.is_multiple_of(3);
    pool.set_fua_records(strict);
    let model = Model {
        strict,
        volume_blocks,
        size_blocks: volume_blocks,
        resizes: seed % 5 < 2,
        burst: if dense { 16 } else { 1 },
        max_request_blocks: if dense { 1 } else { 4 },
        ..Model::default()
    };
    let steps = if dense {
        200 + rng.below(800)
    } else {
        20 + rng.below(1500)
    };
    Ok((pool, model, steps))
}

fn run_seed(seed: u64) -> Result<(), String> {
    let mut rng = SimRng::new(seed);
    // Some seeds use a version 2 pool (no journal: recovery probes every segment), others
    // a journal of 2 slots (heads wait for checkpoints to free slots, and slots are reused).
    let journal = if seed % 7 == 3 {
        Some(0)
    } else if seed % 4 == 1 {
        Some(2)
    } else {
        None
    };
    super::pool::TEST_JOURNAL_SLOTS.with(|t| t.set(journal));
    let mut disk = Arc::new(SimDisk::new("sim", SMALL_DISK_BLOCKS, seed, 3));
    // One seed in six formats its pool over an earlier pool's crashed image on the same disk:
    // one with the same history (the same draws, the same disk timing: a script run again)
    // that ran on further. Its records stay past the new pool's chains, and their writes,
    // which the new pool never made, must never show in it.
    if seed % 6 == 4 {
        // How much further: drawn apart, so that the earlier run's draws are this run's.
        let further = 1 + SimRng::new(seed ^ 0x5EED_F0A7).below(300);
        let mut earlier = rng.clone();
        let (old, mut old_model, steps) = seed_pool(seed, &mut earlier, &disk)?;
        let steps = steps + further;
        let (image, _) = run_until_crash(&mut earlier, &disk, &old, &mut old_model, steps, 0)
            .map_err(|e| format!("the earlier pool: {e}"))?;
        drop(old);
        disk = Arc::new(SimDisk::from_image("sim", image, seed, 3));
        FORMATTED_OVER.with(|c| c.set(c.get() + 1));
    }
    let (pool, mut model, steps) = seed_pool(seed, &mut rng, &disk)?;
    let (image, in_flight) = run_until_crash(&mut rng, &disk, &pool, &mut model, steps, 0)?;
    note_journal(&pool);
    drop(pool);
    let (disk2, pool2) = recover_and_check(image, seed, &mut model, &in_flight)?;
    let last = if seed.is_multiple_of(2) {
        // Life goes on after recovery, and the pool survives a second crash.
        let steps = 20 + rng.below(600);
        let (image, in_flight) =
            run_until_crash(&mut rng, &disk2, &pool2, &mut model, steps, 1 << 40)?;
        note_journal(&pool2);
        drop(pool2);
        recover_and_check(image, seed ^ 0xBEEF, &mut model, &in_flight)
            .map_err(|e| format!("after the second crash: {e}"))?
            .1
    } else {
        pool2
    };
    writes_read_back(&mut rng, &last, &model, 1 << 41)
        .map_err(|e| format!("after the last recovery: {e}"))?;
    Ok(())
}

#[test]
fn crash_simulation_loses_no_acknowledged_write() {
    let seeds: Vec<u64> = match std::env::var("UNBLEND_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("UNBLEND_SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("UNBLEND_SIM_SEEDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(200u64);
            (1..=n).collect()
        }
    };
    let many = seeds.len() >= 20;
    let mut cleaned_seeds = 0;
    for seed in seeds {
        let before = CLEANED.with(|c| c.get());
        if let Err(e) = run_seed(seed) {
            panic!(
                "seed {seed} failed: {e}\\nreplay: UNBLEND_SIM_SEED={seed} cargo test --lib crash_simulation"
            );
        }
        if CLEANED.with(|c| c.get()) > before {
            cleaned_seeds += 1;
        }
    }
    let unread = CLEANED_UNREAD.with(|c| c.get());
    let in_parts = READ_IN_PARTS.with(|c| c.get());
    let from_summary = READ_FROM_SUMMARY.with(|c| c.get());
    let (shrinks, grows) = (SHRINKS.with(|c| c.get()), GROWS.with(|c| c.get()));
    let replaced = FENCES_REPLACED.with(|c| c.get());
    let journal_waits = JOURNAL_FULL_WAITS.with(|c| c.get());
    let by_journal = RECOVERED_BY_JOURNAL.with(|c| c.get());
    let by_probing = RECOVERED_BY_PROBING.with(|c| c.get());
    let overlapped = CHECKPOINTS_OVERLAPPING_WRITES.with(|c| c.get());
    let overlapped_cleaning = CHECKPOINTS_OVERLAPPING_CLEANING.with(|c| c.get());
    eprintln!(
        "crash simulation: the cleaner ran in {cleaned_seeds} seeds ({unread} segments freed unread, {in_parts} read in parts, {from_summary} of them found through the summary alone); newest checkpoint generation {}; {shrinks} shrinks, {grows} grows ({replaced} replacing a fence); {by_journal} recoveries by the journal, {by_probing} by probing; {journal_waits} waits for a journal slot; {overlapped} checkpoints taken with writes going on, {overlapped_cleaning} with cleaning",
        CHECKPOINTS.with(|c| c.get())
    );
    if many {
        // The simulation must reach the cleaner and segment reuse, or it proves little.
        assert!(
            cleaned_seeds >= 10,
            "the cleaner ran in only {cleaned_seeds} seeds"
        );
        // And its unread path (a victim with nothing live, freed without reading it).
        assert!(unread > 0, "no segment was ever freed unread");
        // And its part reads: headers, then live writes only; or, where the summary in
        // memory tells, the live blocks alone.
        assert!(
            in_parts > from_summary && from_summary > 0,
            "{in_parts} victims read in parts, {from_summary} of them through the summary alone"
        );
        // And volumes shrunk and grown back over the blocks cut off.
        assert!(
            shrinks > 0 && replaced > 0,
            "{shrinks} shrinks, {grows} grows, {replaced} replacing a fence"
        );
        // And both ways of finding the log, and heads held up by a full journal.
        assert!(
            by_journal > 0 && by_probing > 0 && journal_waits > 0,
            "{by_journal} recoveries by the journal, {by_probing} by probing, {journal_waits} waits for a journal slot"
        );
        // And pools formatted over an earlier pool.
        assert!(
            FORMATTED_OVER.with(|c| c.get()) > 0,
            "no pool formatted over another"
        );
        // And writes numbered while a checkpoint's snapshot was being taken.
        assert!(
            overlapped > 0 && overlapped_cleaning > 0,
            "{overlapped} checkpoints taken with writes going on, {overlapped_cleaning} with cleaning"
        );
    }
}

/// Two channels (two reactors) write the same blocks at once; whatever the table ends with
/// must be what replaying the log gives after a restart (the higher sequence number wins
/// either way).
fn run_two_writers(seed: u64) -> Result<(), String> {
    let mut rng = SimRng::new(seed);
    let disk = Arc::new(SimDisk::new("sim", DISK_BLOCKS, seed, 4));
    let reg = BdevRegistry::new();
    let base = reg.register(disk.clone()).unwrap();
    let pool = LsvPool::create("p", base, 1 << 20).map_err(|e| e.to_string())?;
    pool.set_fua_records(true);
    pool.create_volume("v", VOLUME_BLOCKS)
        .map_err(|e| e.to_string())?;
    let mut hs = [Harness::open_as(&pool, true), Harness::open_as(&pool, true)];
    let mut in_flight = [[false; 16]; 2];
    const HOT: u64 = 8; // both writers hammer the same 8 blocks
    for step in 0..400u64 {
        let w = rng.below(2) as usize;
        if let Some(slot) = in_flight[w].iter().position(|b| !b) {
            let lba = rng.below(HOT);
            let tag = step * 32 + w as u64 * 16 + slot as u64 + 1;
            hs[w].submit_block_write(slot, lba, tag)?;
            in_flight[w][slot] = true;
        }
        for (w, h) in hs.iter_mut().enumerate() {
            h.out.clear();
            h.ch.poll(0, &mut h.out);
            for c in h.out.drain(..) {
                in_flight[w][c.tag as usize] = false;
            }
        }
    }
    // Drain both, then read what the live table says.
    while in_flight.iter().flatten().any(|&b| b) {
        for (w, h) in hs.iter_mut().enumerate() {
            h.out.clear();
            h.ch.poll(0, &mut h.out);
            for c in h.out.drain(..) {
                in_flight[w][c.tag as usize] = false;
            }
        }
    }
    let before: Vec<Vec<u8>> = (0..HOT).map(|lba| hs[0].read_block(lba)).collect();
    drop(hs);
    let image = disk.crash();
    drop(pool);
    let reg2 = BdevRegistry::new();
    let base2 = reg2
        .register(Arc::new(SimDisk::from_image("sim", image, 1, 0)))
        .unwrap();
    let pool2 = LsvPool::open_named(base2).map_err(|e| e.to_string())?;
    let mut h2 = Harness::open(&pool2);
    for lba in 0..HOT {
        if h2.read_block(lba) != before[lba as usize] {
            return Err(format!("block {lba} changed across the restart"));
        }
    }
    Ok(())
}

#[test]
fn two_writers_on_one_block_end_as_replay_does() {
    for seed in 1..=50 {
        if let Err(e) = run_two_writers(seed) {
            panic!("seed {seed}: {e}");
        }
    }
}
