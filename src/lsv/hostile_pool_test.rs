//! Hostile pools: damage that every checksum lets through.
//!
//! Random bit flips are caught by the checksums (`corruption_test.rs`). Here a field of the
//! superblock, the volume table, a journal entry, a checkpoint header or body, or a record
//! header takes an extreme or random value, and its checksum is made right again, as a bug
//! or a hand-made image would. Then opening the pool (recovery), reading, writing and
//! unmapping every volume, the cleaner cleaning every sealed segment, two checkpoints, opening
//! the pool again after all that, and the offline `pool inspect`, `pool check` and
//! `pool check --repair` must each refuse with an error or go on: never panic (and, in this
//! debug build, never fail a `debug_assert!`). A pool that opened must open again after its
//! own writes, and every write it acknowledged before a flush must read back; a repair that
//! leaves nothing must leave a pool that checks clean.
//!
//! `UNBLEND_HOSTILE_SEEDS=N` runs N seeds (default 300) from `UNBLEND_HOSTILE_FIRST_SEED`
//! (default 0); `UNBLEND_HOSTILE_SEED=S` runs seed S alone. A failing seed is printed with the
//! damage it made.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use super::cleaner::Cleaner;
use super::corruption_test::{
    clean, image_of, open_image_on_disk, pattern, pool_with_cleaner, Harness, BLOCK, VOLUME_BLOCKS,
};
use super::format::Superblock;
use super::pool::{LsvPool, FENCE_AT, NEXT_ID_AT, VT_ENTRY_BYTES};
use super::record::{RecordHeader, MAX_SEQ, SEQ_HEADROOM};
use super::segment_journal::{JournalEntry, SlotContent, JOURNAL_OFFSET};
use super::usage::SegmentState;
use crate::bdev::sim::SimRng;
use crate::bdev::{IoStatus, IoType};

/// Blocks a volume is read at most (a damaged size may be huge).
const MAX_READ_BLOCKS: u64 = 512;
/// Polls the cleaner gets per segment it is made to clean.
const CLEAN_POLLS: usize = 2_000;

/// The pool every seed damages: two volumes, a grow fence, two checkpoints, a cleaned
/// segment and its relocation record, unmaps, and records written since the newest
/// checkpoint (recovery replays them).
fn base_image() -> &'static (Vec<u8>, Superblock) {
    static IMAGE: OnceLock<(Vec<u8>, Superblock)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let (disk, pool, mut cleaner, mut h) = pool_with_cleaner(0);
        for i in 0..200u64 {
            h.write(i * 7 % VOLUME_BLOCKS, 1 + i);
        }
        for i in 0..16u64 {
            h.write_run(i * 16, 4, 300 + i);
        }
        for i in 0..8u64 {
            unmap(&mut h, i * 30, 2);
        }
        pool.checkpoint_sync().unwrap();
        let victim = (0..pool.usage.len() as u64)
            .filter(|&s| pool.usage.state(s) == SegmentState::Sealed)
            .min_by_key(|&s| pool.usage.live(s))
            .expect("a sealed segment");
        clean(&pool, &mut cleaner, victim);
        pool.create_volume("w", 32).unwrap();
        let mut w = Harness::open_volume(&pool, "w");
        for lba in 0..8 {
            w.write(lba, 900 + lba);
        }
        drop(w);
        pool.resize_volume("v", 200).unwrap();
        pool.resize_volume("v", VOLUME_BLOCKS).unwrap();
        pool.checkpoint_sync().unwrap();
        for i in 0..150u64 {
            h.write(i * 11 % VOLUME_BLOCKS, 1000 + i);
        }
        for i in 0..4u64 {
            unmap(&mut h, 100 + i * 9, 3);
        }
        let sb = pool.sb;
        drop(h);
        drop(cleaner);
        let image = image_of(&disk);
        drop(pool);
        (image, sb)
    })
}

fn unmap(h: &mut Harness, lba: u64, blocks: u64) -> IoStatus {
    let mut none = vec![0u8; (blocks as usize) * BLOCK];
    h.try_run(IoType::Unmap, lba, &mut none)
}

/// One checksummed structure in the image, and where.
#[derive(Debug, Clone, Copy)]
enum Target {
    Superblock,
    VolumeTable,
    /// A journal slot holding an entry, at this byte offset.
    JournalEntry(usize),
    /// A valid checkpoint slot's header, at this byte offset.
    CheckpointHeader(usize),
    /// The same slot's body (its header at this byte offset, the body behind it).
    CheckpointBody(usize),
    /// A record header (`header_blocks` blocks) at this byte offset.
    Record(usize, usize),
}

/// Every structure of the image a seed may damage.
fn targets(image: &[u8], sb: &Superblock) -> Vec<Target> {
    let mut t = vec![Target::Superblock, Target::VolumeTable];
    for i in 0..sb.journal_slots() as usize {
        let at = JOURNAL_OFFSET as usize + i * BLOCK;
        if let SlotContent::Entry(_) =
            JournalEntry::decode(&image[at..at + BLOCK], &sb.uuid, sb.segment_count)
        {
            t.push(Target::JournalEntry(at));
        }
    }
    for k in 0..2 {
        let at = (sb.metadata_offset + k * sb.metadata_slot_bytes) as usize;
        if super::checkpoint::CheckpointHeader::decode(&image[at..at + BLOCK]).is_ok() {
            t.push(Target::CheckpointHeader(at));
            t.push(Target::CheckpointBody(at));
        }
    }
    let seg_blocks = (sb.segment_bytes as usize) / BLOCK;
    for seg in 0..sb.segment_count {
        let start = sb.segment_offset(seg) as usize;
        let end = start + sb.segment_bytes as usize;
        let mut block = 0;
        while block < seg_blocks {
            let Ok(h) = RecordHeader::decode(&image[start + block * BLOCK..end]) else {
                break;
            };
            t.push(Target::Record(
                start + block * BLOCK,
                h.header_blocks as usize,
            ));
            block += h.total_blocks() as usize;
        }
    }
    t
}

fn get(b: &[u8], at: usize, width: usize) -> u64 {
    let mut v = [0u8; 8];
    v[..width].copy_from_slice(&b[at..at + width]);
    u64::from_le_bytes(v)
}

fn put(b: &mut [u8], at: usize, width: usize, value: u64) {
    b[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
}

fn put_crc(b: &mut [u8], covered: std::ops::Range<usize>, at: usize) {
    let crc = crc32c::crc32c(&b[covered]);
    b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// An extreme, near or random value for a field of `width` bytes now holding `now`.
fn hostile_value(rng: &mut SimRng, now: u64, width: usize, sb: &Superblock) -> u64 {
    let seg_blocks = sb.segment_bytes / BLOCK as u64;
    let choices = [
        0,
        1,
        now.wrapping_add(1),
        now.wrapping_sub(1),
        now ^ (1 << rng.below(width as u64 * 8)),
        sb.segment_count,
        sb.segment_count - 1,
        seg_blocks,
        seg_blocks - 1,
        VOLUME_BLOCKS,
        MAX_SEQ - SEQ_HEADROOM - (1 << 20),
        MAX_SEQ - (1 << 17),
        MAX_SEQ - 1,
        MAX_SEQ,
        u32::MAX as u64,
        u64::MAX,
        u64::MAX - 1,
        rng.next_u64(),
    ];
    let v = choices[rng.below(choices.len() as u64) as usize];
    if width == 8 {
        v
    } else {
        v & ((1u64 << (width * 8)) - 1)
    }
}

/// Sets one field of `target` to a hostile value (or copies a neighbour over it) and makes
/// its checksums right again. Returns what it did.
fn damage(image: &mut [u8], sb: &Superblock, target: Target, rng: &mut SimRng) -> String {
    // (offset, width) of the fields each structure checksums.
    let (base, fields): (usize, Vec<(usize, usize)>) = match target {
        Target::Superblock => (
            0,
            vec![
                (8, 4),
                (12, 4),
                (32, 8),
                (40, 8),
                (48, 8),
                (56, 8),
                (64, 8),
                (72, 8),
            ],
        ),
        Target::VolumeTable => {
            let mut f = vec![
                (4, 4),
                (NEXT_ID_AT, 4),
                (FENCE_AT, 4),
                (FENCE_AT + 8, 8),
                (FENCE_AT + 16, 8),
            ];
            for i in 0..3 {
                let o = 8 + i * VT_ENTRY_BYTES;
                f.extend([(o, 4), (o + 4, 1), (o + 8, 8)]);
            }
            (4096, f)
        }
        Target::JournalEntry(at) => {
            if rng.below(4) == 0 {
                // Another slot's entry, whole (two slots naming one use, or a position twice).
                let from = JOURNAL_OFFSET as usize + rng.below(sb.journal_slots()) as usize * BLOCK;
                image.copy_within(from..from + BLOCK, at);
                return format!("{target:?}: the slot at {from} copied over it");
            }
            (at, vec![(4, 2), (24, 8), (32, 8), (40, 8)])
        }
        Target::CheckpointHeader(at) => (
            at,
            vec![(4, 4), (8, 8), (16, 8), (24, 8), (32, 8), (40, 4), (48, 8)],
        ),
        Target::CheckpointBody(at) => {
            let body_bytes = get(image, at + 48, 8) as usize;
            let width = [1, 2, 4, 8][rng.below(4) as usize];
            // (An earlier damage of this seed may have set the header's body size.)
            if body_bytes < 8 || body_bytes > (sb.metadata_slot_bytes as usize) - BLOCK {
                return format!("{target:?}: no body of a size to damage");
            }
            let o = rng.below((body_bytes - width) as u64) as usize;
            (at + BLOCK, vec![(o, width)])
        }
        Target::Record(at, _) => {
            let mut f = vec![(8, 8), (16, 8), (24, 8), (40, 4), (44, 4), (48, 8)];
            let entries = get(image, at + 32, 4) as usize;
            for i in 0..entries.min(64) {
                let o = 64 + i * 32;
                f.extend([
                    (o, 4),
                    (o + 4, 1),
                    (o + 8, 8),
                    (o + 16, 4),
                    (o + 20, 4),
                    (o + 24, 8),
                ]);
            }
            (at, f)
        }
    };
    let (off, width) = fields[rng.below(fields.len() as u64) as usize];
    let now = get(image, base + off, width);
    let value = hostile_value(rng, now, width, sb);
    put(image, base + off, width, value);
    let what = format!("{target:?}: field at +{off} ({width} bytes) {now:#x} -> {value:#x}");
    match target {
        Target::Superblock | Target::VolumeTable => put_crc(image, base..base + 4092, base + 4092),
        Target::JournalEntry(at) => put_crc(image, at..at + 48, at + 48),
        Target::CheckpointHeader(at) => put_crc(image, at..at + 60, at + 60),
        Target::CheckpointBody(at) => {
            let body_bytes = get(image, at + 48, 8) as usize;
            put_crc(image, at + BLOCK..at + BLOCK + body_bytes, at + 56);
            put_crc(image, at..at + 60, at + 60);
        }
        Target::Record(at, header_blocks) => {
            image[at + 60..at + 64].fill(0);
            put_crc(image, at..at + header_blocks * BLOCK, at + 60);
        }
    }
    what
}

/// Everything the appliance does with a pool, on `image`. Err: what went wrong that was not
/// a panic but still must not happen.
fn exercise(image: Vec<u8>) -> Result<(), String> {
    let (disk, opened) = open_image_on_disk(image.clone());
    if let Ok(pool) = opened {
        let kept = use_pool(&pool);
        drop(pool);
        let after = disk.crash();
        let pool = match open_image_on_disk(after).1 {
            Ok(pool) => pool,
            Err(e) => return Err(format!("opened, then refused after its own writes: {e}")),
        };
        for (name, lba, want) in kept {
            let mut h = Harness::try_open_volume(&pool, &name)
                .ok_or_else(|| format!("volume {name} is gone after a reopen"))?;
            let mut got = vec![0u8; BLOCK];
            let status = h.try_run(IoType::Read, lba, &mut got);
            if status != IoStatus::Success || got != want {
                return Err(format!(
                    "{name} block {lba}, written and flushed, reads back {status:?} {}",
                    if got == want { "right" } else { "wrong" }
                ));
            }
        }
    }
    offline_tools(&image)
}

/// Reads, writes and unmaps every volume, has the cleaner clean every sealed segment, and
/// writes two checkpoints (both slots). Failures are fine; panics are not. Returns the
/// writes that succeeded before a flush that did: (volume, block, data).
fn use_pool(pool: &Arc<LsvPool>) -> Vec<(String, u64, Vec<u8>)> {
    let mut buf = vec![0u8; BLOCK];
    let mut kept = Vec::new();
    for v in pool.volumes() {
        let Some(mut h) = Harness::try_open_volume(pool, &v.name) else {
            continue;
        };
        for lba in 0..v.num_blocks.min(MAX_READ_BLOCKS) {
            h.try_run(IoType::Read, lba, &mut buf);
        }
        let mut written = Vec::new();
        for lba in [0, v.num_blocks.saturating_sub(1)] {
            let mut data = pattern(lba, 0xB0B);
            if h.try_run(IoType::Write, lba, &mut data) == IoStatus::Success {
                written.push((v.name.clone(), lba, data));
            }
        }
        // Between the two written blocks (a damaged size may be 1 or 2).
        if v.num_blocks >= 3 {
            unmap(&mut h, v.num_blocks / 2, 1);
        }
        if h.try_run(IoType::Flush, 0, &mut []) == IoStatus::Success {
            kept.extend(written);
        }
    }
    let Ok(mut cleaner) = Cleaner::new(pool.clone()) else {
        return kept;
    };
    cleaner.check_every_poll();
    for seg in 0..pool.usage.len() as u64 {
        if pool.usage.state(seg) != SegmentState::Sealed || pool.usage.records_in_flight(seg) != 0 {
            continue;
        }
        cleaner.force_victim(seg);
        for _ in 0..CLEAN_POLLS {
            cleaner.poll();
            if pool.usage.state(seg) == SegmentState::Free {
                break;
            }
        }
    }
    drop(cleaner);
    let _ = pool.checkpoint_sync();
    let _ = pool.checkpoint_sync();
    kept
}

/// A file holding a pool image, removed when dropped (a panic included).
struct ImageFile(std::path::PathBuf);

impl Drop for ImageFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `pool inspect`, `pool check` and `pool check --repair` on a file holding `image`. A
/// repair that leaves nothing remaining must leave a pool that checks clean.
fn offline_tools(image: &[u8]) -> Result<(), String> {
    let file = ImageFile(std::env::temp_dir().join(format!(
        "unblend-hostile-{}-{:?}.img",
        std::process::id(),
        std::thread::current().id()
    )));
    std::fs::write(&file.0, image).unwrap();
    let _ = super::tools::inspect(&file.0);
    let _ = super::tools::check(&file.0, false);
    if let Ok(r) = super::tools::check(&file.0, true) {
        if r.remaining.is_empty() {
            let again = super::tools::check(&file.0, false).map_err(|e| e.to_string())?;
            if !again.remaining.is_empty() {
                return Err(format!(
                    "check --repair left nothing ({:?}), then check found {:?}",
                    r.repaired, again.remaining
                ));
            }
        }
    }
    Ok(())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
    })
}

#[test]
fn a_hostile_pool_is_refused_or_served_never_a_panic() {
    let (image, sb) = base_image();
    let targets = targets(image, sb);
    // The image has every kind of structure to damage.
    assert!(targets.iter().any(|t| matches!(t, Target::JournalEntry(_))));
    assert_eq!(
        targets
            .iter()
            .filter(|t| matches!(t, Target::CheckpointHeader(_)))
            .count(),
        2
    );
    let records = targets
        .iter()
        .filter(|t| matches!(t, Target::Record(..)))
        .count();
    assert!(records > 200, "{records} records");
    // Undamaged, it opens and everything goes.
    exercise(image.clone()).unwrap();
    let seeds: Vec<u64> = match env_u64("UNBLEND_HOSTILE_SEED") {
        Some(s) => vec![s],
        None => {
            let first = env_u64("UNBLEND_HOSTILE_FIRST_SEED").unwrap_or(0);
            (first..first + env_u64("UNBLEND_HOSTILE_SEEDS").unwrap_or(300)).collect()
        }
    };
    // One of each kind.
    let mut kinds: Vec<Target> = Vec::new();
    for t in &targets {
        if !kinds
            .iter()
            .any(|k| std::mem::discriminant(k) == std::mem::discriminant(t))
        {
            kinds.push(*t);
        }
    }
    assert_eq!(kinds.len(), 6, "{kinds:?}");
    let mut failures = Vec::new();
    for &seed in &seeds {
        let mut rng = SimRng::new(seed);
        let mut bad = image.clone();
        let mut done = Vec::new();
        for _ in 0..1 + rng.below(3) {
            // A kind first, then one of its kind: records far outnumber the rest.
            let kind = std::mem::discriminant(&kinds[rng.below(kinds.len() as u64) as usize]);
            let of_kind: Vec<Target> = targets
                .iter()
                .copied()
                .filter(|t| std::mem::discriminant(t) == kind)
                .collect();
            let t = of_kind[rng.below(of_kind.len() as u64) as usize];
            done.push(damage(&mut bad, sb, t, &mut rng));
        }
        // Shown with `--nocapture`: an abort (a failed allocation) reports nothing else.
        eprintln!("hostile seed {seed}: {done:?}");
        match catch_unwind(AssertUnwindSafe(|| exercise(bad))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("seed {seed}: {e}; after {done:?}")),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("seed {seed}: panicked: {msg}; after {done:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed (rerun one with UNBLEND_HOSTILE_SEED=S):\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
}
