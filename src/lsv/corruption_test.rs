//! Corruption tests on the simulated disk: flipped bits in the superblock, a checkpoint and a
//! log record. Recovery either falls back to an older checkpoint (and then every
//! acknowledged write reads back), or refuses with a clear error; it never returns wrong data
//! in silence.
//!
//! Each test writes through a volume with the disk's delays off and every write durable
//! (records go out with FUA, checkpoints flush), takes the disk's image, flips bits in it,
//! and opens the pool again on a disk made from the damaged image.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use super::extent_table::Mapping;
use super::format::Superblock;
use super::pool::{LsvPool, PoolError};
use super::volume::LsvVolume;
use crate::bdev::sim::SimDisk;
use crate::bdev::{BdevRegistry, ChannelContext, IoChannel, IoRequest, IoStatus, IoType, IoVec};

pub(super) const BLOCK: usize = 4096;
/// 16 MiB: 13 segments of 1 MiB.
pub(super) const DISK_BLOCKS: u64 = 4096;
pub(super) const SEGMENT_BYTES: u64 = 1 << 20;
pub(super) const VOLUME_BLOCKS: u64 = 256;

/// The contents of block `lba` after the write tagged `tag` (0 is never a tag: zeroes).
pub(super) fn pattern(lba: u64, tag: u64) -> Vec<u8> {
    let w = (((lba << 32) ^ tag.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1).to_le_bytes();
    w.iter().copied().cycle().take(BLOCK).collect()
}

/// One channel on the pool's volume "v", driven to completion request by request.
pub(super) struct Harness {
    ch: IoChannel,
    out: Vec<crate::bdev::IoCompletion>,
}

impl Harness {
    pub(super) fn open(pool: &Arc<LsvPool>) -> Harness {
        Harness::open_volume(pool, "v")
    }

    /// The same on volume `name`.
    pub(super) fn open_volume(pool: &Arc<LsvPool>, name: &str) -> Harness {
        Harness::try_open_volume(pool, name).expect("the volume opens")
    }

    /// The same; None if the volume is not there or cannot be a bdev.
    pub(super) fn try_open_volume(pool: &Arc<LsvPool>, name: &str) -> Option<Harness> {
        let (meta, table) = pool.volume(name)?;
        let reg = BdevRegistry::new();
        let entry = reg
            .register(Arc::new(LsvVolume::new(pool.clone(), meta, table)))
            .ok()?;
        let ch = entry
            .open_channel(&ChannelContext {
                queue_depth: 4,
                buffers: None,
            })
            .ok()?;
        Some(Harness {
            ch,
            out: Vec::with_capacity(4),
        })
    }

    fn run(&mut self, io_type: IoType, lba: u64, buf: &mut [u8]) {
        let status = self.try_run(io_type, lba, buf);
        assert_eq!(status, IoStatus::Success, "{io_type:?} of block {lba}");
    }

    pub(super) fn try_run(&mut self, io_type: IoType, lba: u64, buf: &mut [u8]) -> IoStatus {
        // SAFETY: `buf` lives, untouched, until the request completes in `finish`.
        unsafe { self.start(io_type, lba, buf) };
        self.finish()
    }

    /// Submits one request (tag 7) without waiting for it.
    /// SAFETY: `buf` must live, untouched, until `finish` returns.
    unsafe fn start(&mut self, io_type: IoType, lba: u64, buf: &mut [u8]) {
        // SAFETY: the caller keeps `buf` until the request completes.
        let iov = unsafe { IoVec::from_raw(buf.as_mut_ptr(), buf.len()) };
        let data = matches!(io_type, IoType::Read | IoType::Write);
        let flush = io_type == IoType::Flush;
        self.ch
            .submit(
                &IoRequest {
                    io_type,
                    offset_blocks: if flush { 0 } else { lba },
                    num_blocks: if flush { 0 } else { (buf.len() / BLOCK) as u64 },
                    iovs: if data {
                        std::slice::from_ref(&iov)
                    } else {
                        &[]
                    },
                    fua: false,
                    tag: 7,
                },
                0,
            )
            .unwrap();
    }

    /// Polls once; the status if the request `start` submitted completed.
    fn poll_once(&mut self) -> Option<IoStatus> {
        self.out.clear();
        self.ch.poll(0, &mut self.out);
        self.out.iter().find(|c| c.tag == 7).map(|c| c.status)
    }

    /// Polls until the request `start` submitted completes.
    fn finish(&mut self) -> IoStatus {
        loop {
            self.out.clear();
            self.ch.poll(0, &mut self.out);
            if let Some(c) = self.out.iter().find(|c| c.tag == 7) {
                return c.status;
            }
        }
    }

    /// Writes blocks `lba..lba + n` with `tag`'s pattern in one request.
    pub(super) fn write_run(&mut self, lba: u64, n: u64, tag: u64) {
        let mut buf: Vec<u8> = (lba..lba + n).flat_map(|b| pattern(b, tag)).collect();
        self.run(IoType::Write, lba, &mut buf);
    }

    /// Writes block `lba` with `tag`'s pattern: one record (header block, data block).
    pub(super) fn write(&mut self, lba: u64, tag: u64) {
        let mut buf = pattern(lba, tag);
        self.run(IoType::Write, lba, &mut buf);
    }

    pub(super) fn read(&mut self, lba: u64) -> Vec<u8> {
        let mut buf = vec![0xA5u8; BLOCK];
        self.run(IoType::Read, lba, &mut buf);
        buf
    }
}

/// A fresh pool with volume "v" on a simulated disk without delays.
fn new_pool() -> (Arc<SimDisk>, Arc<LsvPool>) {
    new_pool_with_delays(0)
}

/// The same, each request completing after up to `max_delay_polls` polls of its channel.
fn new_pool_with_delays(max_delay_polls: u32) -> (Arc<SimDisk>, Arc<LsvPool>) {
    let disk = Arc::new(SimDisk::new("sim", DISK_BLOCKS, 1, max_delay_polls));
    let base = BdevRegistry::new().register(disk.clone()).unwrap();
    let pool = LsvPool::create("p", base, SEGMENT_BYTES).unwrap();
    // Every record with FUA: each acknowledged write is durable (and known durable by the
    // records after it), so any damage found later is damage, not a crash.
    pool.set_fua_records(true);
    pool.create_volume("v", VOLUME_BLOCKS).unwrap();
    (disk, pool)
}

/// What the disk holds durably; everything written so far must be in it.
pub(super) fn image_of(disk: &SimDisk) -> Vec<u8> {
    assert_eq!(disk.unflushed_blocks(), 0, "every write was durable");
    disk.crash()
}

fn open_image(image: Vec<u8>) -> Result<Arc<LsvPool>, PoolError> {
    open_image_on_disk(image).1
}

/// The same, with the disk the pool is opened on (to take its image again later).
pub(super) fn open_image_on_disk(
    image: Vec<u8>,
) -> (Arc<SimDisk>, Result<Arc<LsvPool>, PoolError>) {
    let disk = Arc::new(SimDisk::from_image("sim", image, 2, 0));
    let base = BdevRegistry::new().register(disk.clone()).unwrap();
    (disk, LsvPool::open_named(base))
}

fn flip(image: &mut [u8], at: u64, mask: u8) {
    image[at as usize] ^= mask;
}

/// A fresh pool (requests delayed up to `max_delay_polls` polls), its cleaner looking at it
/// on every poll, and a channel on "v".
pub(super) fn pool_with_cleaner(
    max_delay_polls: u32,
) -> (Arc<SimDisk>, Arc<LsvPool>, super::cleaner::Cleaner, Harness) {
    let (disk, pool) = new_pool_with_delays(max_delay_polls);
    let mut cleaner = super::cleaner::Cleaner::new(pool.clone()).unwrap();
    cleaner.check_every_poll();
    let h = Harness::open(&pool);
    (disk, pool, cleaner, h)
}

/// The byte offset of checkpoint generation `gen`'s slot.
fn checkpoint_slot(sb: &Superblock, gen: u64) -> u64 {
    sb.metadata_offset + ((gen - 1) % 2) * sb.metadata_slot_bytes
}

/// Opens the pool on `image`: it recovers from checkpoint generation `gen`, and every block
/// reads what `model` says.
fn assert_recovers_from(image: Vec<u8>, gen: u64, model: &BTreeMap<u64, u64>) -> Arc<LsvPool> {
    let pool = open_image(image).unwrap();
    assert_eq!(pool.stats()["checkpoint"]["generation"], gen);
    assert_reads(&pool, model);
    pool
}

/// Stops writing (every write so far was durable), crashes the disk, and opens the pool on
/// its image.
fn crash_and_reopen(
    disk: &SimDisk,
    pool: Arc<LsvPool>,
    h: Harness,
    cleaner: super::cleaner::Cleaner,
) -> Arc<LsvPool> {
    drop(h);
    drop(cleaner);
    let image = image_of(disk);
    drop(pool);
    open_image(image).unwrap()
}

/// Blocks the pool's segments count live.
fn live_blocks(pool: &LsvPool) -> u64 {
    (0..pool.usage.len() as u64)
        .map(|s| pool.usage.live(s) as u64)
        .sum()
}

/// Every block of the volume reads what `model` says (absent: zeroes).
fn assert_reads(pool: &Arc<LsvPool>, model: &BTreeMap<u64, u64>) {
    let mut h = Harness::open(pool);
    for lba in 0..VOLUME_BLOCKS {
        let want = match model.get(&lba) {
            Some(&tag) => pattern(lba, tag),
            None => vec![0u8; BLOCK],
        };
        assert!(
            h.read(lba) == want,
            "block {lba} does not read {:?}",
            model.get(&lba)
        );
    }
}

/// The pool block `lba` of volume "v" maps to.
fn pba_of(pool: &LsvPool, lba: u64) -> u64 {
    match pool.volume("v").unwrap().1.lookup(lba) {
        Mapping::At(pba) => pba,
        Mapping::Zero => panic!("block {lba} is not mapped"),
    }
}

#[test]
fn a_flipped_superblock_bit_is_refused() {
    let (disk, pool) = new_pool();
    Harness::open(&pool).write(5, 1);
    drop(pool);
    let image = image_of(&disk);
    assert!(open_image(image.clone()).is_ok());
    for byte in 0..80u64 {
        let mut bad = image.clone();
        flip(&mut bad, byte, 1 << (byte % 8));
        let e = match open_image(bad) {
            Ok(_) => panic!("a flip in superblock byte {byte} was not caught"),
            Err(e) => e.to_string(),
        };
        if byte < 8 {
            assert!(
                e.contains("not an unblend pool (bad magic)"),
                "byte {byte}: {e}"
            );
        } else {
            assert!(
                e.contains("superblock checksum mismatch"),
                "byte {byte}: {e}"
            );
        }
    }
}

/// A pool's image after blocks written before checkpoint generation 2, between 2 and 3, and
/// after 3 (all durable), with the model of what each block holds and the superblock.
fn written_around_two_checkpoints() -> (Vec<u8>, BTreeMap<u64, u64>, Superblock) {
    let (disk, pool) = new_pool();
    let sb: Superblock = pool.sb;
    let mut model = BTreeMap::new();
    let mut h = Harness::open(&pool);
    for lba in 0..32 {
        h.write(lba, 1);
        model.insert(lba, 1);
    }
    assert_eq!(pool.checkpoint_sync().unwrap(), 2);
    for lba in (16..48).chain(64..80) {
        h.write(lba, 2);
        model.insert(lba, 2);
    }
    assert_eq!(pool.checkpoint_sync().unwrap(), 3);
    for lba in 100..110 {
        h.write(lba, 3);
        model.insert(lba, 3);
    }
    drop(h);
    drop(pool);
    (image_of(&disk), model, sb)
}

#[test]
fn a_damaged_checkpoint_falls_back_to_the_older_one() {
    let (image, model, sb) = written_around_two_checkpoints();
    let slot_of = |gen: u64| checkpoint_slot(&sb, gen);

    // Undamaged: recovery starts from generation 3.
    drop(assert_recovers_from(image.clone(), 3, &model));

    // Generation 3's header or body damaged: generation 2 plus the log since it.
    for at in [
        slot_of(3) + 20,         // header: complete_seq
        slot_of(3) + 4096 + 10,  // body: segment 0's row
        slot_of(3) + 4096 + 300, // body: further in
    ] {
        let mut bad = image.clone();
        flip(&mut bad, at, 0x08);
        let pool = open_image(bad).unwrap_or_else(|e| panic!("flip at {at}: {e}"));
        assert_eq!(
            pool.stats()["checkpoint"]["generation"],
            2,
            "flip at {at}: recovered from the damaged checkpoint"
        );
        assert_reads(&pool, &model);
    }

    // Both damaged: refused.
    let mut bad = image.clone();
    flip(&mut bad, slot_of(3) + 4096 + 10, 0x08);
    flip(&mut bad, slot_of(2) + 4096 + 10, 0x08);
    let e = match open_image(bad) {
        Ok(_) => panic!("opened with both checkpoints damaged"),
        Err(e) => e,
    };
    assert!(matches!(e, PoolError::Corrupt(_)), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("no valid checkpoint"), "{e}");
    assert!(e.contains("checkpoint body checksum mismatch"), "{e}");
}

/// Rewrites the checkpoint in the slot at `slot` of `image` as checkpoint format version 1
/// (24-byte entries), as an older build wrote it. The pool has one volume.
fn rewrite_as_version_1(image: &mut [u8], slot: u64) {
    use super::checkpoint::{decode_body, push_v1_entry, CheckpointHeader, CP_HEADER_BYTES};
    let slot = slot as usize;
    let h = CheckpointHeader::decode(&image[slot..slot + CP_HEADER_BYTES]).unwrap();
    assert_eq!((h.version, h.volume_count), (2, 1));
    let body_at = slot + CP_HEADER_BYTES;
    let body = &image[body_at..body_at + h.body_bytes as usize];
    let mut entries = Vec::new();
    decode_body(body, &h, |_, lba, stored, seq| {
        entries.push((lba, stored, seq))
    })
    .unwrap();
    let rows_bytes = h.segment_count as usize * 16;
    let mut v1 = body[..rows_bytes + 16].to_vec();
    v1[rows_bytes + 8..rows_bytes + 16].copy_from_slice(&(entries.len() as u64).to_le_bytes());
    for (lba, stored, seq) in entries {
        push_v1_entry(&mut v1, lba, stored, seq);
    }
    let h1 = CheckpointHeader {
        version: 1,
        body_bytes: v1.len() as u64,
        body_crc: crc32c::crc32c(&v1),
        ..h
    };
    h1.encode(&mut image[slot..slot + CP_HEADER_BYTES]);
    image[body_at..body_at + v1.len()].copy_from_slice(&v1);
}

/// A pool an older build wrote (both checkpoints in format version 1) opens and reads right;
/// its next checkpoint is version 2, and with one slot of each it opens from the newer.
#[test]
fn a_pool_with_version_1_checkpoints_opens_and_moves_to_version_2() {
    let (mut image, mut model, sb) = written_around_two_checkpoints();
    for gen in [2, 3] {
        rewrite_as_version_1(&mut image, checkpoint_slot(&sb, gen));
    }
    // Both version 1: from generation 3, and from 2 when 3's body is damaged.
    drop(assert_recovers_from(image.clone(), 3, &model));
    let mut bad = image.clone();
    flip(
        &mut bad,
        checkpoint_slot(&sb, 3) + 4096 + 16 * sb.segment_count + 20,
        0x04,
    );
    drop(assert_recovers_from(bad, 2, &model));

    // Opened, written and checkpointed by this build: generation 4 is version 2.
    let (disk, pool) = open_image_on_disk(image);
    let pool = pool.unwrap();
    pool.set_fua_records(true);
    let mut h = Harness::open(&pool);
    for lba in 100..120 {
        h.write(lba, 4);
        model.insert(lba, 4);
    }
    assert_eq!(pool.checkpoint_sync().unwrap(), 4);
    drop(h);
    drop(pool);
    let image = image_of(&disk);
    let version_at = |gen: u64| {
        let at = checkpoint_slot(&sb, gen) as usize + 4;
        u32::from_le_bytes(image[at..at + 4].try_into().unwrap())
    };
    assert_eq!((version_at(3), version_at(4)), (1, 2));
    drop(assert_recovers_from(image.clone(), 4, &model));
    // Version 2's damaged: from version 1's, and the log since.
    let mut bad = image;
    flip(
        &mut bad,
        checkpoint_slot(&sb, 4) + 4096 + 16 * sb.segment_count + 2,
        0x04,
    );
    drop(assert_recovers_from(bad, 3, &model));
}

/// Writes blocks 0..8 (tag 1), then block 3 and block 7 again (tag 2): ten records in one
/// segment, after checkpoint generation 1 (so all are replayed). Returns the image, the
/// model and the pool blocks holding block 3's and block 7's newest data.
fn ten_records() -> (Vec<u8>, BTreeMap<u64, u64>, Superblock, u64, u64) {
    let (disk, pool) = new_pool();
    let mut model = BTreeMap::new();
    let mut h = Harness::open(&pool);
    for lba in 0..8 {
        h.write(lba, 1);
        model.insert(lba, 1);
    }
    h.write(3, 2);
    h.write(7, 2);
    model.insert(3, 2);
    model.insert(7, 2);
    drop(h);
    let (p3, p7) = (pba_of(&pool, 3), pba_of(&pool, 7));
    let sb = pool.sb;
    // One record each (a header block, then the data block), in order, in one segment.
    assert_eq!(p7, p3 + 2);
    assert_eq!(
        (p3 * BLOCK as u64 - sb.first_segment_offset) / sb.segment_bytes,
        (p7 * BLOCK as u64 - sb.first_segment_offset) / sb.segment_bytes
    );
    drop(pool);
    (image_of(&disk), model, sb, p3, p7)
}

#[test]
fn a_flipped_bit_inside_a_chain_is_refused() {
    let (image, model, sb, p3, _) = ten_records();
    let seg = (p3 * BLOCK as u64 - sb.first_segment_offset) / sb.segment_bytes;
    assert_reads(&open_image(image.clone()).unwrap(), &model);
    // Block 3's second write is followed by block 7's in the same segment: bad data there
    // is damage, not a torn tail.
    let mut bad = image.clone();
    flip(&mut bad, p3 * BLOCK as u64 + 1234, 0x40);
    let e = match open_image(bad) {
        Ok(_) => panic!("opened with a damaged record inside a chain"),
        Err(e) => e,
    };
    match &e {
        PoolError::Corrupt(msg) => assert!(
            msg.contains(&format!("segment {seg}:"))
                && msg.contains("has bad data and a later record says it was durable"),
            "{msg}"
        ),
        other => panic!("want PoolError::Corrupt, got {other:?}"),
    }
}

#[test]
fn a_torn_last_record_leaves_the_previous_contents() {
    let (image, model, _, _, p7) = ten_records();
    // Block 7's second write is the last record of the chain: damage there looks like a
    // record torn at a crash, so replay stops before it and block 7 reads its first write.
    let mut before = model.clone();
    before.insert(7, 1);
    for (what, at) in [
        ("data", p7 * BLOCK as u64 + 77),
        ("header", (p7 - 1) * BLOCK as u64 + 12),
    ] {
        let mut bad = image.clone();
        flip(&mut bad, at, 0x02);
        let pool = open_image(bad).unwrap_or_else(|e| panic!("torn {what}: {e}"));
        assert_reads(&pool, &before);
        // The pool goes on: a new write to block 7 lands.
        let mut h = Harness::open(&pool);
        h.write(7, 9);
        assert_eq!(h.read(7), pattern(7, 9));
    }
}

/// The log and the checkpoints name volumes by id. A volume created after another was deleted
/// must not get its id: after a crash, the deleted volume's records would be replayed into it,
/// and one tenant would read another's data.
#[test]
fn a_new_volume_never_reads_a_deleted_ones_data_after_a_crash() {
    let (disk, pool) = new_pool();
    let old_id = pool.volume("v").unwrap().0.id;
    let mut h = Harness::open(&pool);
    h.write(3, 11);
    drop(h);
    pool.delete_volume("v").unwrap();
    pool.create_volume("v", VOLUME_BLOCKS).unwrap();
    let new_id = pool.volume("v").unwrap().0.id;
    assert_ne!(new_id, old_id, "a deleted volume's id was handed out again");
    // Crash (no checkpoint since the write), and recover.
    let image = image_of(&disk);
    drop(pool);
    let pool = open_image(image).unwrap();
    assert_eq!(pool.volume("v").unwrap().0.id, new_id);
    let mut h = Harness::open(&pool);
    assert!(
        h.read(3).iter().all(|&b| b == 0),
        "the new volume reads the deleted one's data"
    );
    // The next id survives the reopen too.
    pool.create_volume("w", VOLUME_BLOCKS).unwrap();
    assert!(pool.volume("w").unwrap().0.id > new_id);
}

/// Formatting zeroes only each segment's first block, so an earlier pool's records stay on the
/// device past the new pool's. A new pool with the same history as the old one up to a crash
/// (the same sequence numbers and epochs: a pool's numbers start at one) must still end each
/// chain at its own last record, or it replays the old pool's writes into its volume.
#[test]
fn a_pool_formatted_over_an_older_one_never_replays_its_records() {
    let (disk, old) = new_pool();
    let mut h = Harness::open(&old);
    for lba in 0..40 {
        h.write(lba, 1);
    }
    drop(h);
    let image = image_of(&disk);
    drop(old);
    // The same disk (seed), formatted again.
    let disk = Arc::new(SimDisk::from_image("sim", image, 1, 0));
    let base = BdevRegistry::new().register(disk.clone()).unwrap();
    let pool = LsvPool::create("p", base, SEGMENT_BYTES).unwrap();
    pool.set_fua_records(true);
    pool.create_volume("v", VOLUME_BLOCKS).unwrap();
    let mut h = Harness::open(&pool);
    let mut model = BTreeMap::new();
    for lba in 0..5 {
        h.write(lba, 2);
        model.insert(lba, 2);
    }
    drop(h);
    let image = image_of(&disk);
    drop(pool);
    let pool = open_image(image).unwrap();
    assert_reads(&pool, &model);
}

/// A deleted volume's blocks stop counting as live (the cleaner takes them off between
/// victims), or its segments would look live for good and the cleaner would go round them.
#[test]
fn a_deleted_volumes_blocks_stop_counting_as_live() {
    let (_disk, pool, mut cleaner, mut h) = pool_with_cleaner(0);
    for lba in 0..20 {
        h.write(lba, 1);
    }
    drop(h);
    assert_eq!(live_blocks(&pool), 20);
    pool.delete_volume("v").unwrap();
    cleaner.poll();
    assert_eq!(
        live_blocks(&pool),
        0,
        "a deleted volume's blocks still count as live"
    );
}

/// Every kind of request on `h`'s volume fails with ENODEV (`what` names the volume).
fn assert_every_request_fails_with_enodev(h: &mut Harness, what: &str) {
    for io_type in [IoType::Write, IoType::Read, IoType::Unmap, IoType::Flush] {
        let mut buf = pattern(3, 3);
        assert_eq!(
            h.try_run(io_type, 3, &mut buf),
            IoStatus::Failed(libc::ENODEV),
            "{io_type:?} on {what}"
        );
    }
}

/// A volume deleted while a channel has it open (SPDK's hot remove): the write in flight
/// completes but is not mapped, later requests fail with ENODEV, and nothing of the volume
/// counts as live (before, its writes went on and counted live with nobody mapping them).
#[test]
fn a_volume_deleted_while_open_fails_its_requests_and_leaves_nothing_live() {
    let (_disk, pool, mut cleaner, mut h) = pool_with_cleaner(0);
    for lba in 0..10 {
        h.write(lba, 1);
    }
    let mut in_flight = pattern(20, 2);
    // SAFETY: `in_flight` lives until `finish` below.
    unsafe { h.start(IoType::Write, 20, &mut in_flight) };
    pool.delete_volume("v").unwrap();
    assert_eq!(h.finish(), IoStatus::Success);
    assert_every_request_fails_with_enodev(&mut h, "a deleted volume");
    cleaner.poll();
    assert_eq!(
        live_blocks(&pool),
        0,
        "a deleted volume's blocks count as live"
    );
}

/// A pool being destroyed (`bdev_lvol_delete_lvstore`) retires its volumes: a write already
/// in a record lands (and counts as in flight until then), every later request fails with
/// ENODEV, and then no record is in flight, so the base can be let go with nothing of the
/// pool still to land on it.
#[test]
fn a_destroyed_pools_volumes_fail_their_requests_and_leave_nothing_in_flight() {
    // The disk completes a write a few polls after it is submitted.
    let (_disk, pool, _cleaner, mut h) = pool_with_cleaner(4);
    h.write(0, 1);
    let mut in_flight = pattern(20, 2);
    // SAFETY: `in_flight` lives until `finish` below.
    unsafe { h.start(IoType::Write, 20, &mut in_flight) };
    // One poll: the write is in a record, submitted, not yet complete.
    assert_eq!(h.poll_once(), None, "the record completed at once");
    pool.close();
    pool.retire_volumes();
    assert!(!pool.writes_stopped(), "a record in flight went unseen");
    assert_eq!(h.finish(), IoStatus::Success);
    assert_every_request_fails_with_enodev(&mut h, "a destroyed pool's volume");
    assert!(
        pool.writes_stopped(),
        "records in flight after every write completed"
    );
    assert_eq!(
        pool.volume("v").unwrap().1.lookup(3),
        Mapping::Zero,
        "a write after the retire was mapped"
    );
}

/// Once a pool is closing, its log writers number no new record: a write given to one fails
/// with ENODEV, though its volume was not retired, and nothing is left in flight.
#[test]
fn a_closing_pools_log_writers_take_no_new_record() {
    let (_disk, pool, _cleaner, mut h) = pool_with_cleaner(0);
    h.write(0, 1);
    let written = pool.write_counters();
    pool.close();
    let mut buf = pattern(3, 3);
    assert_eq!(
        h.try_run(IoType::Write, 3, &mut buf),
        IoStatus::Failed(libc::ENODEV)
    );
    assert_eq!(pool.write_counters(), written, "a record was written");
    assert!(pool.writes_stopped());
}

/// A log writer's segment-summary write counts as a write of the pool until it is over, so a
/// destroy waits for it before it lets the base go; once the pool is closing, none starts.
#[test]
fn a_closing_pool_waits_for_its_summary_writes_and_starts_none() {
    let (_disk, pool) = new_pool();
    assert!(
        pool.begin_summary_write(),
        "an open pool's summary is written"
    );
    pool.close();
    assert!(!pool.writes_stopped(), "a summary write is in flight");
    pool.end_summary_write();
    assert!(pool.writes_stopped());
    assert!(!pool.begin_summary_write(), "a closing pool's is not");
    assert!(pool.writes_stopped(), "and counts for nothing");
}

/// A reactor that stops drops its service pollers at once, the cleaner's among them: the
/// pool is told its cleaner stopped all the same (and its stop callback runs), so that an
/// lvstore's erase, waiting for that at shutdown, goes on (it waited out its hour before,
/// and shutdown its 300 s).
#[test]
fn a_cleaner_dropped_by_its_stopping_reactor_counts_as_stopped() {
    use crate::reactor::ReactorSet;
    let (_disk, pool) = new_pool_with_delays(0);
    let set = ReactorSet::start_one_for_tests();
    let called = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = called.clone();
    super::pools::start_cleaner(
        &pool,
        &set.handle(),
        Some(Arc::new(move || {
            seen.fetch_add(1, SeqCst);
        })),
    );
    // Registered: a message sent after the cleaner's has run.
    let (tx, rx) = std::sync::mpsc::channel();
    set.handle().send(0, move |_| tx.send(()).unwrap()).unwrap();
    rx.recv().unwrap();
    assert!(
        !pool.cleaner_stopped.load(SeqCst),
        "the cleaner stopped early"
    );
    set.handle().request_stop();
    set.join();
    assert!(pool.cleaner_stopped.load(SeqCst));
    assert_eq!(called.load(SeqCst), 1, "the stop callback ran once");
}

/// The first segment filled with 128 one-block records at even blocks (tag 1): 128 live
/// blocks, no two adjacent, so moving them takes one entry each (a header of 2 blocks).
/// Returns the segment and where block 0 lives in it.
fn fill_even_blocks(
    pool: &Arc<LsvPool>,
    h: &mut Harness,
    model: &mut BTreeMap<u64, u64>,
) -> (u64, u64) {
    for lba in (0..VOLUME_BLOCKS).step_by(2) {
        h.write(lba, 1);
        model.insert(lba, 1);
    }
    let at = |lba| match pool.volume("v").unwrap().1.lookup(lba) {
        Mapping::At(p) => p,
        Mapping::Zero => panic!("block {lba} is not mapped"),
    };
    let victim = pool.segment_of(at(0));
    assert_eq!(pool.segment_of(at(VOLUME_BLOCKS - 2)), victim);
    (victim, at(0))
}

/// Records of 4 blocks (a header and 4 data blocks each, tag 1) fill the first segment; the
/// 52nd does not fit and seals it. Returns the segment and where block 0 lives in it.
fn fill_with_runs_of_4(
    pool: &Arc<LsvPool>,
    h: &mut Harness,
    model: &mut BTreeMap<u64, u64>,
) -> (u64, u64) {
    for i in 0..52 {
        h.write_run(4 * i, 4, 1);
        for b in 4 * i..4 * i + 4 {
            model.insert(b, 1);
        }
    }
    let Mapping::At(p0) = pool.volume("v").unwrap().1.lookup(0) else {
        panic!("block 0 is not mapped")
    };
    (pool.segment_of(p0), p0)
}

/// Writes each run `(lba, blocks)` with tag 2's pattern, and notes it in `model`.
fn write_runs_again(h: &mut Harness, model: &mut BTreeMap<u64, u64>, runs: &[(u64, u64)]) {
    for &(lba, n) in runs {
        h.write_run(lba, n, 2);
        for b in lba..lba + n {
            model.insert(b, 2);
        }
    }
}

/// The runs that leave `fill_with_runs_of_4`'s segment with only blocks 0 and 101 live.
const ALL_BUT_0_AND_101: [(u64, u64); 2] = [(1, 100), (102, 106)];

/// `fill_with_runs_of_4`'s segment with all but blocks 0 and 101 written again elsewhere
/// (tag 2): a mostly dead victim, its two live blocks far apart. Returns the segment.
fn mostly_dead_victim(pool: &Arc<LsvPool>, h: &mut Harness, model: &mut BTreeMap<u64, u64>) -> u64 {
    let (victim, _) = fill_with_runs_of_4(pool, h, model);
    write_runs_again(h, model, &ALL_BUT_0_AND_101);
    assert_eq!(pool.usage.live(victim), 2);
    victim
}

/// The generation of the pool's newest checkpoint.
fn checkpoint_generation(pool: &LsvPool) -> u64 {
    pool.checkpoint_gen
        .load(std::sync::atomic::Ordering::SeqCst)
}

/// Has the cleaner clean `victim` until the segment is free for reuse.
pub(super) fn clean(pool: &LsvPool, cleaner: &mut super::cleaner::Cleaner, victim: u64) {
    clean_until(pool, cleaner, victim, super::usage::SegmentState::Free);
}

/// Has the cleaner clean `victim` until the segment is in `state` (Cleaned: moved out and
/// waiting for its flushes and free mark, nothing of them submitted yet; Free: reusable).
pub(super) fn clean_until(
    pool: &LsvPool,
    cleaner: &mut super::cleaner::Cleaner,
    victim: u64,
    state: super::usage::SegmentState,
) {
    cleaner.force_victim(victim);
    for _ in 0..10_000 {
        cleaner.poll();
        if pool.usage.state(victim) == state {
            return;
        }
    }
    panic!(
        "segment {victim} is {:?}, not {state:?}",
        pool.usage.state(victim)
    );
}

/// Writes block 1 (recorded in `model`) until `reused(where it lands)`, within 300 writes.
/// Returns what block 1 held before that last write (its tag; 0 for zeroes).
fn write_block_1_until(
    h: &mut Harness,
    pool: &LsvPool,
    model: &mut BTreeMap<u64, u64>,
    reused: impl Fn(u64) -> bool,
) -> u64 {
    for tag in 2..300 {
        let before = model.get(&1).copied().unwrap_or(0);
        h.write(1, tag);
        model.insert(1, tag);
        if matches!(pool.volume("v").unwrap().1.lookup(1), Mapping::At(p) if reused(p)) {
            return before;
        }
    }
    panic!("the victim was not reused");
}

/// Recovery finds the segments used since the checkpoint by their first block. A segment the
/// cleaner opened takes a record of many moves first, whose header spans several blocks;
/// before, the probe checked that header whole from one block, missed the segment, and the
/// moves were not replayed: a block whose old place was reused read zeroes.
#[test]
fn a_segment_opened_by_the_cleaner_with_a_long_header_is_replayed() {
    let (disk, pool, mut cleaner, mut h) = pool_with_cleaner(0);
    let mut model = BTreeMap::new();
    let (victim, p0) = fill_even_blocks(&pool, &mut h, &mut model);
    // The next record seals the victim (the head opens another segment).
    h.write(1, 2);
    model.insert(1, 2);
    // Both checkpoints cover the victim's records (so it is free once cleaned).
    pool.checkpoint_sync().unwrap();
    pool.checkpoint_sync().unwrap();
    clean(&pool, &mut cleaner, victim);
    let Mapping::At(moved) = pool.volume("v").unwrap().1.lookup(0) else {
        panic!("block 0 is not mapped after the move")
    };
    let to = pool.segment_of(moved);
    assert_ne!(to, victim);
    // The moves' record is the first of its segment, and its header spans 2 blocks.
    let first = pool.segment_first_block(to);
    assert_eq!(
        moved,
        first + 2,
        "block 0 moved to the first data block after 2 header blocks"
    );
    // Once the user's head fills its segment, its next one is the victim (the lowest free),
    // and its first record overwrites the place the checkpoints still map block 0 to.
    write_block_1_until(&mut h, &pool, &mut model, |p| p == p0);
    let pool = crash_and_reopen(&disk, pool, h, cleaner);
    assert_reads(&pool, &model);
}

/// An unmap whose record is older than a cleaner's move of the block, but lands after the
/// move: live, the block ends unmapped (the unmap is newer than the moved data). Replay applies
/// the unmap first, to a block the checkpoint does not map (the write it unmapped was in the
/// victim, since reused), then the move: the unmap must leave a tombstone for the move to lose
/// to, or the unmapped data comes back after a crash.
#[test]
fn an_unmap_replayed_before_a_move_of_older_data_keeps_the_block_unmapped() {
    // Requests complete only when their channel is polled enough: the unmap waits for its.
    let (disk, pool, mut cleaner, mut h) = pool_with_cleaner(20);
    let mut model = BTreeMap::new();
    let (victim, _) = fill_even_blocks(&pool, &mut h, &mut model);
    let table = pool.volume("v").unwrap().1;
    // The unmap of block 4 takes its sequence number (its record seals the victim) ...
    let mut none = vec![0u8; BLOCK];
    // SAFETY: `none` lives until the unmap completes below.
    unsafe { h.start(IoType::Unmap, 4, &mut none) };
    assert_eq!(h.poll_once(), None, "the unmap completed at once");
    model.remove(&4);
    // ... the cleaner moves block 4's data (a newer record, carrying the older data's number)
    // and frees the victim ...
    clean(&pool, &mut cleaner, victim);
    assert!(matches!(table.lookup(4), Mapping::At(p) if pool.segment_of(p) != victim));
    // ... then the unmap lands.
    assert_eq!(h.finish(), IoStatus::Success);
    assert_eq!(table.lookup(4), Mapping::Zero);
    // The victim is reused, so the write of block 4 is gone from the log.
    write_block_1_until(&mut h, &pool, &mut model, |p| pool.segment_of(p) == victim);
    let pool = crash_and_reopen(&disk, pool, h, cleaner);
    assert_reads(&pool, &model);
}

/// Whether the first block of segment `seg` is zero in `image` (its free mark).
fn marked_free(pool: &LsvPool, image: &[u8], seg: u64) -> bool {
    let at = pool.sb.segment_offset(seg) as usize;
    image[at..at + BLOCK].iter().all(|&b| b == 0)
}

/// A cleaner stopped while a cleaned victim waits for its flush frees it with a last flush;
/// it zeroes the victim's first block before, as it does running (else the victim's old
/// chain stays for a torn reuse to find).
#[test]
fn a_stopped_cleaner_marks_the_victims_it_frees() {
    use super::usage::SegmentState;
    let (disk, pool, mut cleaner, mut h) = pool_with_cleaner(0);
    let mut model = BTreeMap::new();
    let (victim, _) = fill_with_runs_of_4(&pool, &mut h, &mut model);
    clean_until(&pool, &mut cleaner, victim, SegmentState::Cleaned);
    drop(cleaner);
    assert_eq!(pool.usage.state(victim), SegmentState::Free);
    drop(h);
    assert!(marked_free(&pool, &image_of(&disk), victim));
}

/// A checkpoint taken while a cleaned victim waits for its free mark records it Cleaned. After
/// a crash, recovery must not free it as it is (its first block still begins its old chain):
/// it stays Cleaned until a cleaner has marked it, and the data moved out of it reads back.
#[test]
fn a_victim_cleaned_at_a_checkpoint_is_marked_before_reuse_after_a_crash() {
    use super::usage::SegmentState;
    let (disk, pool, mut cleaner, mut h) = pool_with_cleaner(0);
    let mut model = BTreeMap::new();
    let (victim, _) = fill_with_runs_of_4(&pool, &mut h, &mut model);
    clean_until(&pool, &mut cleaner, victim, SegmentState::Cleaned);
    pool.checkpoint_sync().unwrap();
    // The crash: before the free mark was written.
    let image = image_of(&disk);
    assert!(!marked_free(&pool, &image, victim));
    drop((h, cleaner, pool));
    let disk = Arc::new(SimDisk::from_image("sim", image, 2, 0));
    let pool = LsvPool::open_named(BdevRegistry::new().register(disk.clone()).unwrap()).unwrap();
    assert_eq!(pool.usage.state(victim), SegmentState::Cleaned);
    assert_reads(&pool, &model);
    let mut cleaner = super::cleaner::Cleaner::new(pool.clone()).unwrap();
    cleaner.check_every_poll();
    for _ in 0..1000 {
        if pool.usage.state(victim) == SegmentState::Free {
            break;
        }
        cleaner.poll();
    }
    assert_eq!(pool.usage.state(victim), SegmentState::Free);
    assert!(marked_free(&pool, &disk.crash(), victim));
}

/// A checkpoint walks the map, then a victim is cleaned, freed and reused before the
/// checkpoint is written: the checkpoint holds the victim's old places for every block it
/// had, and recovery from it must replay the relocation record and the reuse over them.
/// (Before checkpoints were written beside the cleaning, nothing was cleaned between a
/// snapshot and its header.)
#[test]
fn a_victim_cleaned_and_reused_after_a_checkpoint_walked_it_is_replayed_over() {
    use super::checkpoint_writer::{CheckpointWriter, WriterPoll};
    let (disk, pool, mut cleaner, mut h) = pool_with_cleaner(0);
    let mut model = BTreeMap::new();
    let (victim, p0) = fill_with_runs_of_4(&pool, &mut h, &mut model);
    let gen = checkpoint_generation(&pool);
    let mut writer = CheckpointWriter::new(pool.clone()).unwrap();
    assert!(writer.start());
    while writer.walking() {
        assert_ne!(writer.poll(), WriterPoll::Failed);
    }
    // The snapshot maps block 0 into the victim; now the victim is emptied and reused.
    clean(&pool, &mut cleaner, victim);
    write_block_1_until(&mut h, &pool, &mut model, |p| p == p0);
    h.write(2, 77);
    model.insert(2, 77);
    loop {
        match writer.poll() {
            WriterPoll::Durable(cp) => {
                assert_eq!(cp.generation, gen + 1);
                break;
            }
            WriterPoll::Failed => panic!("the checkpoint failed"),
            _ => {}
        }
    }
    drop((writer, h, cleaner));
    let image = image_of(&disk);
    drop(pool);
    let pool = assert_recovers_from(image, gen + 1, &model);
    assert_eq!(pool.usage.state(victim), super::usage::SegmentState::Sealed);
}

/// What a crash that tore a reused segment's new use left at the segment's start.
enum TornReuse {
    /// The new first record lost whole, the old use's first record back in its place (as in a
    /// pool written before the cleaner zeroed a victim's first block), the new second record
    /// landed inside the old first record's data.
    FirstRecordLost,
    /// Only the new first record's header block lost (what the cleaner left there before the
    /// reuse is back); its data block landed, and no later record was written.
    FirstHeaderLost,
}

/// A segment used since the checkpoint, cleaned and reused before the next one, then torn by
/// a crash as `how` says: the old use's chain must not read as damage (a record with bad data
/// that a later one says was durable), and the pool must open with everything else intact.
fn a_torn_reuse_opens(how: TornReuse) {
    let (disk, pool, mut cleaner, mut h) = pool_with_cleaner(0);
    let at_start = checkpoint_generation(&pool);
    let mut model = BTreeMap::new();
    let (victim, p0) = fill_with_runs_of_4(&pool, &mut h, &mut model);
    let seg_at = pool.sb.segment_offset(victim) as usize;
    // The old first record (header and first data block), as written.
    let old_first = image_of(&disk)[seg_at..seg_at + 2 * BLOCK].to_vec();
    clean(&pool, &mut cleaner, victim);
    let cleaned_first = image_of(&disk)[seg_at..seg_at + BLOCK].to_vec();
    // The new use: its first record (block 1's write) at blocks 0-1.
    let before = write_block_1_until(&mut h, &pool, &mut model, |p| p == p0);
    if let TornReuse::FirstRecordLost = how {
        // Its second (block 3's) at blocks 2-3, inside the old first record's data (1-4).
        h.write(3, 999);
        assert_eq!(
            pool.volume("v").unwrap().1.lookup(3),
            Mapping::At(p0 + 2),
            "block 3's write is not the new use's second record"
        );
    }
    assert_eq!(
        checkpoint_generation(&pool),
        at_start,
        "a checkpoint ran: the case is not set up"
    );
    drop(h);
    drop(cleaner);
    let mut image = image_of(&disk);
    drop(pool);
    match how {
        TornReuse::FirstRecordLost => image[seg_at..seg_at + 2 * BLOCK].copy_from_slice(&old_first),
        TornReuse::FirstHeaderLost => image[seg_at..seg_at + BLOCK].copy_from_slice(&cleaned_first),
    }
    // The new records are gone (none was flushed past a lost one); the rest reads back.
    model.insert(1, before);
    let pool = open_image(image).unwrap_or_else(|e| panic!("the pool does not open: {e}"));
    assert_reads(&pool, &model);
}

/// Found by review: recovery refused the pool (the newer use's record inside the old first
/// record is what tells a torn reuse from damage).
#[test]
fn a_reused_segment_whose_new_first_record_was_lost_still_opens() {
    a_torn_reuse_opens(TornReuse::FirstRecordLost);
}

/// Nothing of the new use is left to recognise: the cleaner zeroes a victim's first block
/// before the flush that frees it, so the old use's chain is gone (before, recovery refused
/// the pool).
#[test]
fn a_reused_segment_whose_new_first_header_was_lost_still_opens() {
    a_torn_reuse_opens(TornReuse::FirstHeaderLost);
}

/// A shrink cuts blocks off while the log still holds their writes; the volume grows back
/// over them. After a crash, replay must not map those writes into the grown volume (the
/// grow's fence keeps them out), while a write made after the grow comes back.
#[test]
fn a_block_cut_off_by_a_shrink_reads_zeroes_after_a_grow_and_a_crash() {
    let (disk, pool) = new_pool();
    let mut h = Harness::open(&pool);
    h.write(200, 1);
    h.write(201, 1);
    h.write(50, 1);
    drop(h);
    pool.resize_volume("v", 100).unwrap();
    pool.resize_volume("v", VOLUME_BLOCKS).unwrap();
    let mut h = Harness::open(&pool);
    assert_eq!(
        h.read(200),
        vec![0u8; BLOCK],
        "the cut block reads its old data"
    );
    h.write(201, 2);
    drop(h);
    // Crash: no checkpoint since the first write, so every record above is replayed.
    let image = image_of(&disk);
    drop(pool);
    let model = BTreeMap::from([(50, 1), (201, 2)]);
    let disk = Arc::new(SimDisk::from_image("sim", image, 2, 0));
    let pool = LsvPool::open_named(BdevRegistry::new().register(disk.clone()).unwrap()).unwrap();
    assert_reads(&pool, &model);
    // The fence survived the reopen: a second crash still keeps the old writes out.
    drop(pool);
    let pool = open_image(disk.crash()).unwrap();
    assert_reads(&pool, &model);
}

/// Blocks 200 and 50 written, a checkpoint, a shrink to 100 and a grow back; then `after`
/// (more resizes, checkpoints). The newest checkpoint is damaged: recovery falls back to the
/// one before, and block 200, cut off, must still read zeroes.
fn a_cut_block_stays_out_after_a_fallback(after: impl FnOnce(&LsvPool)) {
    let (disk, pool) = new_pool();
    let sb: Superblock = pool.sb;
    let mut h = Harness::open(&pool);
    h.write(200, 1);
    h.write(50, 1);
    drop(h);
    pool.checkpoint_sync().unwrap();
    pool.resize_volume("v", 100).unwrap();
    pool.resize_volume("v", VOLUME_BLOCKS).unwrap();
    after(&pool);
    let newest = checkpoint_generation(&pool);
    drop(pool);
    let mut image = image_of(&disk);
    let slot_of = |gen: u64| checkpoint_slot(&sb, gen);
    flip(&mut image, slot_of(newest) + 4096 + 10, 0x08);
    let pool = open_image(image).unwrap();
    assert_eq!(pool.stats()["checkpoint"]["generation"], newest - 1);
    assert_reads(&pool, &BTreeMap::from([(50, 1)]));
}

/// A checkpoint taken before the shrink still maps the cut block. If recovery falls back to
/// it (the newer one is damaged), the grow's fence keeps that entry out as well.
#[test]
fn a_cut_block_in_an_older_checkpoint_stays_out_of_the_grown_volume() {
    a_cut_block_stays_out_after_a_fallback(|pool| {
        pool.checkpoint_sync().unwrap();
    });
}

/// The first grow's fence is replaced only once no checkpoint recovery may load began
/// before that grow. Here nothing is written between the checkpoint, the shrink and the
/// grow, so that checkpoint already covers every record below the grow's number; it still
/// maps the cut block, and with the newer checkpoint damaged recovery falls back to it.
#[test]
fn a_second_grow_leaves_no_checkpoint_from_before_the_first_to_fall_back_to() {
    a_cut_block_stays_out_after_a_fallback(|pool| {
        pool.resize_volume("v", VOLUME_BLOCKS + 44).unwrap();
    });
}

/// The cleaner found blocks live, then a shrink cut them off and a grow took its fence, and
/// only then did the cleaner number the record that moves them: that record carries their
/// old data, numbered above the fence. Two checkpoints taken in between cover every record
/// below the fence, yet a second grow must not replace the fence until they cover the
/// relocation record too, or after a crash it maps the old data again.
#[test]
fn a_fence_stands_until_a_relocation_of_cut_blocks_is_covered() {
    let (disk, pool, mut cleaner, mut h) = pool_with_cleaner(0);
    let mut model = BTreeMap::new();
    let (victim, _) = fill_with_runs_of_4(&pool, &mut h, &mut model);
    cleaner.force_victim(victim);
    while !cleaner.moving() {
        cleaner.poll();
    }
    pool.resize_volume("v", 100).unwrap();
    model.retain(|&lba, _| lba < 100);
    pool.resize_volume("v", VOLUME_BLOCKS).unwrap();
    pool.checkpoint_sync().unwrap();
    pool.checkpoint_sync().unwrap();
    clean(&pool, &mut cleaner, victim);
    pool.resize_volume("v", VOLUME_BLOCKS + 44).unwrap();
    let pool = crash_and_reopen(&disk, pool, h, cleaner);
    assert_reads(&pool, &model);
}

/// Recovery numbers records from above the log it found; a grow fence may have taken a
/// number above that (its records lost in the crash, the volume table written). Numbers
/// must go on above the fence, or the next writes to the blocks it guards are kept out:
/// acknowledged, and lost.
#[test]
fn writes_after_a_crash_that_kept_only_a_grows_fence_are_mapped() {
    let (disk, pool) = new_pool();
    Harness::open(&pool).write(5, 1);
    let image = image_of(&disk);
    drop(pool);
    let disk = Arc::new(SimDisk::from_image("sim", image, 2, 0));
    let pool = LsvPool::open_named(BdevRegistry::new().register(disk.clone()).unwrap()).unwrap();
    // Write-back: these records are numbered, written, never flushed; the crash loses them.
    pool.set_fua_records(false);
    let mut h = Harness::open(&pool);
    for tag in 2..10 {
        h.write(6, tag);
    }
    drop(h);
    pool.resize_volume("v", 100).unwrap();
    pool.resize_volume("v", VOLUME_BLOCKS).unwrap();
    drop(pool);
    let pool = open_image(disk.crash()).unwrap();
    let mut h = Harness::open(&pool);
    h.write(200, 11);
    assert_eq!(
        h.read(200),
        pattern(200, 11),
        "a write after the grow was kept out"
    );
}

/// A grow while another grow's fence stands first retires that fence with checkpoints (one
/// fence per pool), and a run of shrinks and grows with writes between ends, after a crash,
/// with exactly the writes the volume held.
#[test]
fn shrinks_and_grows_in_turn_keep_only_what_the_volume_held() {
    // Two grows in a row: the second fence's floor (200) is above the first's (100), so
    // only the first keeps block 120's write out; replacing it without the checkpoints
    // brings that write back.
    shrink_and_grow(&[
        (VOLUME_BLOCKS, &[10, 120, 250]),
        (100, &[11, 12, 99]),
        (200, &[13, 150, 199]),
        (VOLUME_BLOCKS, &[14, 210]),
    ]);
    shrink_and_grow(&[
        (VOLUME_BLOCKS, &[10, 120, 250]),
        (100, &[11, 12, 99]),
        (200, &[13, 150, 199]),
        (50, &[14, 15, 49]),
        (VOLUME_BLOCKS, &[16, 60, 255]),
    ]);
}

/// Resizes volume "v" to each size in turn, writing the blocks given after each; then
/// crashes and checks that the volume reads exactly what it held.
fn shrink_and_grow(plan: &[(u64, &[u64])]) {
    let (disk, pool) = new_pool();
    let mut model = BTreeMap::new();
    let mut tag = 0;
    let mut grown = false;
    for &(size, lbas) in plan {
        let before = checkpoint_generation(&pool);
        let grows = size > pool.volume("v").unwrap().0.num_blocks;
        pool.resize_volume("v", size).unwrap();
        model.retain(|&lba, _| lba < size);
        if grows && std::mem::replace(&mut grown, true) {
            // The previous grow's fence stood: both slots had to begin after it.
            assert!(
                checkpoint_generation(&pool) >= before + 2,
                "no checkpoints retired the fence"
            );
        }
        let mut h = Harness::open(&pool);
        for &lba in lbas {
            tag += 1;
            h.write(lba, tag);
            model.insert(lba, tag);
        }
    }
    let image = image_of(&disk);
    drop(pool);
    let pool = open_image(image).unwrap();
    assert_reads(&pool, &model);
}

/// A volume table whose grow fence names an impossible sequence number (checksum intact) is
/// refused with a clear error, not loaded to keep every later write out.
#[test]
fn a_grow_fence_with_an_impossible_number_is_refused() {
    let (disk, pool) = new_pool();
    pool.resize_volume("v", 100).unwrap();
    pool.resize_volume("v", VOLUME_BLOCKS).unwrap();
    drop(pool);
    let mut image = image_of(&disk);
    assert!(open_image(image.clone()).is_ok());
    let vt = super::format::VOLUME_TABLE_OFFSET as usize;
    image[vt + 3968 + 8..vt + 3968 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
    let crc = crc32c::crc32c(&image[vt..vt + 4092]);
    image[vt + 4092..vt + 4096].copy_from_slice(&crc.to_le_bytes());
    let e = match open_image(image) {
        Ok(_) => panic!("opened with a grow fence at u64::MAX"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("grow fence sequence number out of range"), "{e}");
}

/// A journal slot is reused only once both checkpoints cover its entry: recovery from the
/// older checkpoint (the newer one damaged) still finds every segment opened since it.
#[test]
fn a_fallback_checkpoint_finds_every_segment_opened_since_it() {
    let journal_slots = |n| super::pool::TEST_JOURNAL_SLOTS.with(|t| t.set(n));
    journal_slots(Some(4));
    let (disk, pool) = new_pool();
    let sb: Superblock = pool.sb;
    let mut model = BTreeMap::new();
    let mut h = Harness::open(&pool);
    assert_eq!(pool.checkpoint_sync().unwrap(), 2);
    // Segment A, journal position 0: opened after generation 2, covered by generation 3.
    for lba in 0..100 {
        h.write(lba, 1);
        model.insert(lba, 1);
    }
    assert_eq!(pool.checkpoint_sync().unwrap(), 3);
    // Then segments B, C, D (positions 1..=3), until the ring comes back to A's slot: the
    // write that would open a segment there is refused (no cleaner is here to write the
    // checkpoint that frees the slot), since recovery from generation 2 needs A's entry.
    // Blocks 0..100 are not written again: they live in A only.
    let mut refused = false;
    for i in 0..600u64 {
        let lba = 100 + i % 156;
        let tag = 2 + i;
        let mut buf = pattern(lba, tag);
        match h.try_run(IoType::Write, lba, &mut buf) {
            IoStatus::Success => {
                model.insert(lba, tag);
            }
            IoStatus::Failed(e) if e == libc::ENOSPC => {
                refused = true;
                break;
            }
            s => panic!("write of block {lba}: {s:?}"),
        }
    }
    assert!(
        refused,
        "the journal reused a slot the older checkpoint needs"
    );
    assert_eq!(pool.stats()["journal"]["full_waits"], 1);

    drop(h);
    drop(pool);
    let image = image_of(&disk);
    let slot_of = |gen: u64| checkpoint_slot(&sb, gen);
    drop(assert_recovers_from(image.clone(), 3, &model));
    // Generation 3 damaged: generation 2, and every segment the journal names since.
    let mut bad = image;
    flip(&mut bad, slot_of(3) + 20, 0x08);
    let pool = assert_recovers_from(bad, 2, &model);
    assert_eq!(pool.stats()["recovery"]["segments_probed"], 0);
    journal_slots(None);
}

/// A damaged journal entry: recovery says so and reads the first block of every segment
/// instead, and every write reads back.
#[test]
fn a_damaged_journal_entry_makes_recovery_probe_every_segment() {
    let (disk, pool) = new_pool();
    let mut model = BTreeMap::new();
    let mut h = Harness::open(&pool);
    // Three segments' worth after the first checkpoint: positions 0..3 of the journal.
    for i in 0..300u64 {
        let lba = i % VOLUME_BLOCKS;
        h.write(lba, 1 + i);
        model.insert(lba, 1 + i);
    }
    drop(h);
    drop(pool);
    let image = image_of(&disk);
    let pool = open_image(image.clone()).unwrap();
    assert_eq!(pool.stats()["recovery"]["segments_probed"], 0);
    assert_eq!(pool.stats()["recovery"]["segments_read"], 3);
    assert_reads(&pool, &model);
    drop(pool);
    // Position 1's entry (slot 1) damaged: its segment is found by probing.
    let mut bad = image;
    flip(
        &mut bad,
        super::segment_journal::JOURNAL_OFFSET + 4096 + 33,
        0x02,
    );
    let pool = open_image(bad).unwrap();
    assert!(
        pool.stats()["recovery"]["segments_probed"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(pool.stats()["recovery"]["segments_read"], 3);
    assert_reads(&pool, &model);
    // The damaged slot is held like the two intact entries: reused before checkpoints cover
    // the log found, an intact journal would lead a recovery from the same checkpoint past
    // the segment it named.
    assert_eq!(pool.stats()["journal"]["uncovered_entries"], 3);
    pool.checkpoint_sync().unwrap();
    pool.checkpoint_sync().unwrap();
    assert_eq!(pool.stats()["journal"]["uncovered_entries"], 0);
}

/// A pool whose block 5 holds tag 1, crashed, and in its image a use of a free segment whose
/// journal entry the crash lost: its first record, writing block 5 (tag 2), well made.
/// `quiescent`: a checkpoint was taken with nothing in flight after the write (a clean close,
/// or a load's checkpoint), and the use began after it. Returns the image, the superblock,
/// that segment and the record's number.
fn image_with_an_unjournaled_chain(quiescent: bool) -> (Vec<u8>, Superblock, u64, u64) {
    use super::record::{Entry, EntryOp, RecordHeader};
    let (mut disk, mut pool) = new_pool();
    let mut h = Harness::open(&pool);
    h.write(5, 1);
    drop(h);
    if quiescent {
        // Loaded again: the load's checkpoint, taken before any I/O.
        drop(pool);
        let (d, p) = open_image_on_disk(image_of(&disk));
        (disk, pool) = (d, p.unwrap());
        assert!(pool.checkpoint_after_recovery().unwrap());
    }
    let sb: Superblock = pool.sb;
    let volume = pool.volume("v").unwrap().0.id as u64;
    let seg = pool.segment_of(pba_of(&pool, 5)) + 3;
    let seq = pool.next_seq_now() + 10;
    drop(pool);
    let mut image = image_of(&disk);
    let data = pattern(5, 2);
    let mut rh = RecordHeader::new(seq, seg, seq);
    rh.push(Entry {
        volume,
        lba: 5,
        num_blocks: 1,
        op: EntryOp::Write,
        data_crc: crc32c::crc32c(&data),
        data_seq: 0,
    })
    .unwrap();
    rh.data_crc = crc32c::crc32c(&data);
    let at = sb.segment_offset(seg) as usize;
    rh.encode(&mut image[at..at + BLOCK]);
    image[at + BLOCK..at + 2 * BLOCK].copy_from_slice(&data);
    (image, sb, seg, seq)
}

/// A crash kept a segment's first record but lost its journal entry (the segment stayed
/// free), and a later use of the segment kept its entry but lost its first record: the old
/// chain at the segment's start is not the use the journal names, and is not replayed.
#[test]
fn a_chain_the_journal_does_not_name_is_not_replayed() {
    use super::segment_journal::{JournalEntry, JOURNAL_OFFSET};
    let (mut image, sb, seg, seq) = image_with_an_unjournaled_chain(false);
    // The later use's entry (epoch above the stale use's records), in a free slot.
    let entry = JournalEntry {
        position: 7,
        segment: seg,
        epoch: seq + 5,
    };
    let slot = JOURNAL_OFFSET as usize + 7 * BLOCK;
    entry.encode(&sb.uuid, &mut image[slot..slot + BLOCK]);
    let pool = open_image(image.clone()).unwrap();
    assert_reads(&pool, &BTreeMap::from([(5, 1)]));
    // Numbers go on above the entry's epoch and the unreplayed chain.
    assert!(pool.next_seq_now() > seq + 5);
    drop(pool);
    // The same chain named by its own entry is replayed (the test's record is well made).
    let entry = JournalEntry {
        epoch: seq,
        ..entry
    };
    entry.encode(&sb.uuid, &mut image[slot..slot + BLOCK]);
    let pool = open_image(image).unwrap();
    assert_reads(&pool, &BTreeMap::from([(5, 2)]));
}

/// Writes `count` one-block writes (block `i % VOLUME_BLOCKS`, tag `tag`) through `ch`, up to
/// 16 in flight: how many failed.
fn burst(ch: &mut IoChannel, count: u64, tag: u64) -> usize {
    let bufs: Vec<Vec<u8>> = (0..count)
        .map(|i| pattern(i % VOLUME_BLOCKS, tag))
        .collect();
    let (mut next, mut done, mut failed) = (0u64, 0u64, 0usize);
    let mut out = Vec::new();
    while done < count {
        while next < count && next - done < 16 {
            // SAFETY: `bufs` outlives every request (all complete before it is dropped).
            let iov = unsafe { IoVec::from_raw(bufs[next as usize].as_ptr().cast_mut(), BLOCK) };
            ch.submit(
                &IoRequest {
                    io_type: IoType::Write,
                    offset_blocks: next % VOLUME_BLOCKS,
                    num_blocks: 1,
                    iovs: &[iov],
                    fua: false,
                    tag: next,
                },
                0,
            )
            .unwrap();
            next += 1;
        }
        out.clear();
        ch.poll(0, &mut out);
        done += out.len() as u64;
        failed += out.iter().filter(|c| c.status != IoStatus::Success).count();
    }
    failed
}

/// A record that fails fails the records behind it in the log order (they lie beyond a hole
/// that recovery stops at), and no record after that: one already complete behind another
/// still in flight fails at once, rather than being flagged to fail whatever record next
/// takes its slot.
#[test]
fn a_failed_record_fails_only_the_records_behind_it() {
    for seed in 0..40u64 {
        let disk = Arc::new(SimDisk::new("sim", DISK_BLOCKS, seed, 3));
        let base = BdevRegistry::new().register(disk.clone()).unwrap();
        let pool = LsvPool::create("p", base, SEGMENT_BYTES).unwrap();
        pool.create_volume("v", VOLUME_BLOCKS).unwrap();
        let (meta, table) = pool.volume("v").unwrap();
        let entry = BdevRegistry::new()
            .register(Arc::new(LsvVolume::new(pool.clone(), meta, table)))
            .unwrap();
        let mut ch = entry
            .open_channel(&ChannelContext {
                queue_depth: 16,
                buffers: None,
            })
            .unwrap();
        disk.fail_write_in(2 + seed % 4);
        // One failed write fails at most what was in flight with it (the channel's 16),
        // while writes go on without a pause.
        let failed = burst(&mut ch, 400, 1);
        assert!(
            failed > 0 && failed <= 16,
            "seed {seed}: {failed} writes failed"
        );
        // Every record from here on succeeds, in every record slot and across a segment.
        assert_eq!(
            burst(&mut ch, 400, 2),
            0,
            "seed {seed}: a later write failed"
        );
    }
}

/// A relocation record that finds no free journal slot makes the cleaner wait for the
/// checkpoints that free slots: while they are written, no victim is read (its moves could
/// not be written; reading victims over and over once held the cleaner's reactor and the
/// disk for nothing), and cleaning goes on once a slot is free.
#[test]
fn a_full_journal_holds_victims_while_the_checkpoint_that_frees_slots_is_written() {
    let journal_slots = |n| super::pool::TEST_JOURNAL_SLOTS.with(|t| t.set(n));
    journal_slots(Some(4));
    // Requests complete after up to 30 polls, so that the checkpoint spans many.
    let (_disk, pool) = new_pool_with_delays(30);
    let mut h = Harness::open(&pool);
    let mut model = BTreeMap::new();
    for lba in 0..100 {
        h.write(lba, 1);
        model.insert(lba, 1);
    }
    let victim = pool.segment_of(pba_of(&pool, 0));
    // Fill the journal: with no cleaner attached, the write that finds no slot fails.
    let mut full = false;
    for i in 0..600u64 {
        let lba = 100 + i % 156;
        let mut buf = pattern(lba, 2 + i);
        match h.try_run(IoType::Write, lba, &mut buf) {
            IoStatus::Success => {
                model.insert(lba, 2 + i);
            }
            IoStatus::Failed(e) if e == libc::ENOSPC => {
                full = true;
                break;
            }
            s => panic!("write of block {lba}: {s:?}"),
        }
    }
    assert!(full, "the journal never filled");
    assert_ne!(pool.usage.state(victim), super::usage::SegmentState::Open);

    let mut cleaner = super::cleaner::Cleaner::new(pool.clone()).unwrap();
    cleaner.check_every_poll();
    let bytes_read = || pool.stats()["cleaner"]["bytes_read"].as_u64().unwrap();
    let full_waits = || pool.stats()["journal"]["full_waits"].as_u64().unwrap();
    let waits_before = full_waits();
    // The victim is read, its first relocation record finds no journal slot, and the
    // journal's pressure begins a checkpoint.
    cleaner.force_victim(victim);
    let mut polls = 0;
    while !(full_waits() > waits_before && cleaner.checkpoint_busy()) {
        cleaner.poll();
        polls += 1;
        assert!(polls < 10_000, "the cleaner never met the full journal");
    }
    let read = bytes_read();
    assert!(read > 0, "the victim was not read");
    // While that checkpoint is written, no victim is read, though one is asked for.
    cleaner.force_victim(victim);
    let mut busy_polls = 0;
    while cleaner.checkpoint_busy() {
        cleaner.poll();
        busy_polls += 1;
        assert_eq!(
            bytes_read(),
            read,
            "a victim was read while the full journal waited for the checkpoint"
        );
        assert!(busy_polls < 100_000, "the checkpoint never ended");
    }
    assert!(busy_polls > 10, "the checkpoint took {busy_polls} polls");
    // Then cleaning goes on: asked for again whenever it is given back, the victim is cleaned
    // and freed. Its slot is free once both checkpoints cover its entry; until then the hold
    // goes on through the next checkpoint too, so the victim is read once more only.
    let mut polls = 0;
    while pool.usage.state(victim) != super::usage::SegmentState::Free {
        if pool.usage.state(victim) == super::usage::SegmentState::Sealed {
            cleaner.force_victim(victim);
        }
        cleaner.poll();
        polls += 1;
        assert!(polls < 100_000, "the victim was never cleaned");
    }
    assert!(bytes_read() > read);
    assert!(
        bytes_read() <= 2 * read,
        "the victim was read {} times its size",
        bytes_read() as f64 / read as f64
    );
    drop(cleaner);
    assert_reads(&pool, &model);
    journal_slots(None);
}

/// Checkpoints are spaced by the log written since the newest durable one began
/// (`cleaner::checkpoint_due`). That count takes in the log a recovery replayed until a
/// checkpoint covers it (or repeated crashes under a light writer would let the replay grow),
/// and a checkpoint that never became durable does not reset it.
#[test]
fn the_log_since_the_last_checkpoint_counts_the_replay_and_outlives_a_failed_checkpoint() {
    let (disk, pool) = new_pool();
    assert_eq!(pool.checkpoint_sync().unwrap(), 2);
    let mut h = Harness::open(&pool);
    for lba in 0..40 {
        h.write(lba, 1);
    }
    let since = |pool: &LsvPool| {
        pool.stats()["checkpoint"]["log_bytes_since"]
            .as_u64()
            .unwrap()
    };
    let written = since(&pool);
    assert!(
        written >= 40 * BLOCK as u64,
        "{written} bytes since the checkpoint"
    );
    // A checkpoint begun and dropped (as a failed one is) leaves the count as it was.
    assert!(pool.begin_checkpoint());
    pool.abort_checkpoint();
    assert_eq!(since(&pool), written);
    drop(h);
    let image = image_of(&disk);
    drop(pool);
    // Reopened: nothing written since the open, but the replayed log counts.
    let pool = open_image(image).unwrap();
    let replayed = pool.stats()["recovery"]["log_bytes_replayed"]
        .as_u64()
        .unwrap();
    assert_eq!(
        replayed, written,
        "the replay is the log written since the checkpoint"
    );
    assert_eq!(since(&pool), replayed);
    // A durable checkpoint covers it.
    pool.checkpoint_sync().unwrap();
    assert_eq!(since(&pool), 0);
}

/// A mostly dead victim is cleaned through its summary on disk: only the summary and its live
/// blocks are read (no record header), and they read back after a crash.
#[test]
fn a_mostly_dead_victim_is_cleaned_reading_only_its_live_blocks() {
    use std::sync::atomic::Ordering::SeqCst;
    let (disk, pool, mut cleaner, mut h) = pool_with_cleaner(0);
    let mut model = BTreeMap::new();
    let victim = mostly_dead_victim(&pool, &mut h, &mut model);
    let read_before = pool.cleaner_blocks_read.load(SeqCst);
    clean(&pool, &mut cleaner, victim);
    assert_eq!(pool.segments_read_from_summary.load(SeqCst), 1);
    assert_eq!(
        pool.cleaner_blocks_read.load(SeqCst) - read_before,
        pool.summary_on_disk(victim).unwrap().1 + 8,
        "only its summary and the two writes that hold the live blocks are read (4 blocks each)"
    );
    assert_ne!(pool.segment_of(pba_of(&pool, 0)), victim);
    assert_ne!(pool.segment_of(pba_of(&pool, 101)), victim);
    let pool = crash_and_reopen(&disk, pool, h, cleaner);
    assert_reads(&pool, &model);
}

/// A victim whose summary on disk is damaged is cleaned from its record headers instead
/// (the summary's checksum fails), and its live blocks read back after a crash.
#[test]
fn a_victim_with_a_damaged_summary_is_cleaned_from_its_headers() {
    use std::sync::atomic::Ordering::SeqCst;
    let (disk, pool, mut cleaner, mut h) = pool_with_cleaner(0);
    let mut model = BTreeMap::new();
    let victim = mostly_dead_victim(&pool, &mut h, &mut model);
    let (summary_block, _) = pool.summary_on_disk(victim).unwrap();
    // An owner's byte: the victim's block 1 (block 0 is its first record's header).
    disk.rot(summary_block * BLOCK as u64 + 64 + 8 + 3, 0x01);
    clean(&pool, &mut cleaner, victim);
    assert_eq!(pool.segments_read_from_summary.load(SeqCst), 0);
    assert_eq!(
        pool.segments_read_in_parts.load(SeqCst),
        1,
        "headers, then live writes"
    );
    assert_ne!(pool.segment_of(pba_of(&pool, 0)), victim);
    assert_ne!(pool.segment_of(pba_of(&pool, 101)), victim);
    let pool = crash_and_reopen(&disk, pool, h, cleaner);
    assert_reads(&pool, &model);
}

/// A log writer's segment-summary write that fails fails no record: the write that sealed
/// the segment, whose record sits behind the summary in the log order, succeeds, and so do
/// those after it. The segment, without a summary, is cleaned from its record headers.
#[test]
fn a_failed_summary_write_fails_no_record() {
    use std::sync::atomic::Ordering::SeqCst;
    let (disk, pool, mut cleaner, mut h) = pool_with_cleaner(0);
    let mut model = BTreeMap::new();
    // 51 records of 4 blocks fill the first segment but one block (`fill_with_runs_of_4`).
    for i in 0..51 {
        h.write_run(4 * i, 4, 1);
        for b in 4 * i..4 * i + 4 {
            model.insert(b, 1);
        }
    }
    let victim = pool.segment_of(pba_of(&pool, 0));
    // The 52nd seals it, and its summary's write fails.
    disk.fail_write_at(pool.summary_on_disk(victim).unwrap().0);
    let mut buf: Vec<u8> = (204..208).flat_map(|b| pattern(b, 1)).collect();
    assert_eq!(h.try_run(IoType::Write, 204, &mut buf), IoStatus::Success);
    assert!(!disk.write_failure_pending(), "the summary's write failed");
    for b in 204..208 {
        model.insert(b, 1);
    }
    assert_ne!(
        pool.segment_of(pba_of(&pool, 204)),
        victim,
        "the 52nd opened another"
    );
    write_runs_again(&mut h, &mut model, &ALL_BUT_0_AND_101);
    clean(&pool, &mut cleaner, victim);
    assert_eq!(
        pool.segments_read_from_summary.load(SeqCst),
        0,
        "it has no summary"
    );
    assert_eq!(
        pool.segments_read_in_parts.load(SeqCst),
        1,
        "from its headers"
    );
    let pool = crash_and_reopen(&disk, pool, h, cleaner);
    assert_reads(&pool, &model);
}

/// After a restart, a victim whose records are all older than the checkpoint recovery
/// loaded (so no record of it was replayed, and its record headers are marked nowhere in
/// memory) is still cleaned reading only its summary and live blocks: its summary on disk
/// names its use by its newest record, which the checkpoint's segment row keeps. Before
/// format version 4 such a victim was read whole.
#[test]
fn a_victim_sealed_before_a_restart_is_cleaned_through_its_summary_on_disk() {
    use std::sync::atomic::Ordering::SeqCst;
    let (disk, pool, cleaner, mut h) = pool_with_cleaner(0);
    let mut model = BTreeMap::new();
    let victim = mostly_dead_victim(&pool, &mut h, &mut model);
    pool.checkpoint_sync().unwrap();
    let pool = crash_and_reopen(&disk, pool, h, cleaner);
    assert_eq!(pool.usage.live(victim), 2);
    let mut cleaner = super::cleaner::Cleaner::new(pool.clone()).unwrap();
    cleaner.check_every_poll();
    let read_before = pool.cleaner_blocks_read.load(SeqCst);
    clean(&pool, &mut cleaner, victim);
    assert_eq!(pool.segments_read_from_summary.load(SeqCst), 1);
    assert_eq!(
        pool.cleaner_blocks_read.load(SeqCst) - read_before,
        pool.summary_on_disk(victim).unwrap().1 + 8,
        "its summary and the two writes that hold the live blocks"
    );
    let h = Harness::open(&pool);
    let pool = crash_and_reopen(&disk, pool, h, cleaner);
    assert_reads(&pool, &model);
}

/// A victim holding an unmap that no checkpoint covers is cleaned from its record headers:
/// the unmap must be logged again before the segment is reused, and only its header has it.
#[test]
fn a_victim_holding_an_uncovered_unmap_is_cleaned_from_its_headers() {
    use std::sync::atomic::Ordering::SeqCst;
    let (disk, pool, mut cleaner, mut h) = pool_with_cleaner(0);
    let mut model = BTreeMap::new();
    h.write(250, 1);
    h.run(IoType::Unmap, 250, &mut [0u8; BLOCK]);
    let (victim, _) = fill_with_runs_of_4(&pool, &mut h, &mut model);
    assert_eq!(pool.segment_of(pba_of(&pool, 0)), victim);
    // Everything in the victim written again elsewhere: nothing live, the unmap uncovered.
    write_runs_again(&mut h, &mut model, &[(0, 104), (104, 104)]);
    assert_eq!(pool.usage.live(victim), 0);
    clean(&pool, &mut cleaner, victim);
    assert_eq!(pool.segments_read_in_parts.load(SeqCst), 1);
    assert_eq!(
        pool.segments_read_from_summary.load(SeqCst),
        0,
        "the summary has no unmap to log again"
    );
    let pool = crash_and_reopen(&disk, pool, h, cleaner);
    assert_reads(&pool, &model);
}

/// A live block of a mostly dead victim rots on the disk: the cleaner checks the write it
/// reads through the summary against the write's checksum, finds the damage, and leaves the
/// victim as it is (read whole, its chain walk reports it) rather than move the rotten data
/// under a fresh checksum, where nothing could tell it was damaged any more.
#[test]
fn a_rotten_live_block_is_not_moved_under_a_fresh_checksum() {
    use super::usage::SegmentState;
    use std::sync::atomic::Ordering::SeqCst;
    let (disk, pool, mut cleaner, mut h) = pool_with_cleaner(0);
    let mut model = BTreeMap::new();
    let (victim, _) = fill_with_runs_of_4(&pool, &mut h, &mut model);
    for (lba, n) in ALL_BUT_0_AND_101 {
        h.write_run(lba, n, 2);
    }
    assert_eq!(pool.usage.live(victim), 2);
    let rotten = pba_of(&pool, 101);
    disk.rot(rotten * BLOCK as u64 + 7, 0x10);
    cleaner.force_victim(victim);
    for _ in 0..1000 {
        cleaner.poll();
    }
    assert_eq!(pool.segments_read_from_summary.load(SeqCst), 0);
    assert_eq!(pool.usage.state(victim), SegmentState::Sealed);
    assert_eq!(pba_of(&pool, 101), rotten, "the rotten block was not moved");
    assert_eq!(pool.segment_of(pba_of(&pool, 0)), victim);
}

/// `image` with a bit of its first journal slot's segment number flipped (its checksum then
/// fails): recovery must probe every segment's first block.
fn damage_journal(mut image: Vec<u8>) -> Vec<u8> {
    flip(
        &mut image,
        super::segment_journal::JOURNAL_OFFSET + 33,
        0x02,
    );
    image
}

/// A crash kept a segment's first record but lost its journal entry: recovery leaves the
/// chain unreplayed and the segment free. The appliance's load then writes a checkpoint
/// (`checkpoint_after_recovery`, every load), so a later recovery that must probe every segment
/// (a damaged journal slot) does not replay that chain either: without it, a block would
/// change across the second restart with no write to it.
#[test]
fn a_chain_whose_entry_a_crash_lost_stays_out_after_a_later_crash() {
    let (image, _, _, _) = image_with_an_unjournaled_chain(false);
    // A journal slot damaged: the probe of every segment finds the chain and replays it (the
    // test's record is well made), as a recovery from the crash's checkpoint would.
    let probed = |p: &LsvPool| p.stats()["recovery"]["segments_probed"].as_u64() > Some(0);
    let pool = open_image(damage_journal(image.clone())).unwrap();
    assert!(probed(&pool));
    assert_reads(&pool, &BTreeMap::from([(5, 2)]));
    drop(pool);

    // The journal intact: the chain is not the use any entry names, and stays out.
    let (disk2, pool) = open_image_on_disk(image);
    let pool = pool.unwrap();
    assert_reads(&pool, &BTreeMap::from([(5, 1)]));
    // The load's checkpoint (the close was not clean: the log since was read).
    assert!(pool.checkpoint_after_recovery().unwrap());
    assert!(!pool.checkpoint_after_recovery().unwrap());
    drop(pool);
    // Then a crash with a journal slot damaged: the probe finds the chain again, below the
    // checkpoint now, and leaves it.
    let (disk3, pool) = open_image_on_disk(damage_journal(image_of(&disk2)));
    let pool = pool.unwrap();
    assert!(probed(&pool));
    assert_reads(&pool, &BTreeMap::from([(5, 1)]));
    drop(pool);
    drop(disk3);
}

/// The same crash just after a checkpoint taken with nothing in flight (a clean close, a
/// format, or a load's own checkpoint): recovery then finds nothing past the checkpoint, no
/// sign that the close was not clean, and the load must still write its checkpoint before
/// the pool takes I/O, or a later recovery that probes every segment replays the chain.
#[test]
fn a_chain_whose_entry_a_crash_lost_after_a_quiescent_checkpoint_stays_out() {
    let (image, _, _, _) = image_with_an_unjournaled_chain(true);
    // The control: a probing recovery straight after the crash replays the chain (the test's
    // record is well made), as one after a load that wrote no checkpoint did.
    let pool = open_image(damage_journal(image.clone())).unwrap();
    assert_reads(&pool, &BTreeMap::from([(5, 2)]));
    drop(pool);
    let (disk, pool) = open_image_on_disk(image);
    let pool = pool.unwrap();
    assert_eq!(pool.stats()["recovery"]["segments_read"], 0);
    assert_reads(&pool, &BTreeMap::from([(5, 1)]));
    assert!(pool.checkpoint_after_recovery().unwrap());
    assert!(!pool.checkpoint_after_recovery().unwrap(), "one per load");
    drop(pool);
    let pool = open_image(damage_journal(image_of(&disk))).unwrap();
    assert!(pool.stats()["recovery"]["segments_probed"].as_u64() > Some(0));
    assert_reads(&pool, &BTreeMap::from([(5, 1)]));
}
