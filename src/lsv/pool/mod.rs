//! A pool: the superblock, the volume table, the segment usage table, the global record
//! sequence and every volume's extent table, on one base bdev. Opening a pool recovers it by
//! replaying its log.
//!
//! ## Volume table (format version 1)
//!
//! At `VOLUME_TABLE_OFFSET` (4 KiB), one 4 KiB block, little endian:
//!
//! ```text
//!    0  magic "UVT1"   4  count u32
//!    8  entries, 80 bytes each: id u32, name_len u8, 3 zero, num_blocks u64, uuid 16 bytes,
//!       name 48 bytes (UTF-8, zero padded)
//! 3968  grow fence: volume id u32, 4 zero, sequence number u64 (0: none), floor_blocks u64
//!       (all zero in tables written before it)
//! 4000  pool name 48 bytes (UTF-8, zero padded), 4048 its length u8
//! 4052  next volume id u32 (0 in tables written before it: one past the largest id is used)
//! 4092  crc32c of bytes 0..4092
//! ```
//!
//! It is rewritten (with FUA) whenever a volume is created, resized or deleted. Volume ids are
//! never reused: the log and the checkpoints name volumes by id, so a new volume given a
//! deleted one's id would, after a crash, be replayed the deleted volume's data.
//!
//! The grow fence is the last grow's `GrowFence` (see `extent_table.rs`), at most one per
//! pool: a volume that grows takes a sequence number F, and no write numbered below F to a
//! block at or past its old size is mapped, by replay or by a checkpoint entry. The log and
//! an older checkpoint may still hold such writes, for blocks a shrink cut off; without the
//! fence they would map again into the grown volume after a crash. A grow while another
//! grow's fence stands first waits for both checkpoint slots to have begun after that grow
//! and to cover every record below its F (writing checkpoints), when no replay can meet
//! such a write any more.
//!
//! Recovery, which opening a pool runs, is in `recovery.rs`.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use thiserror::Error;
use uuid::Uuid;

use super::checkpoint::{decode_body, CheckpointHeader, SegmentRow, CP_HEADER_BYTES};
use super::checkpoint_writer::{CheckpointWalk, WalkStep};
use super::cleaner::CheckpointReason;
use super::extent_table::Stored;
use super::extent_table::{ExtentTable, GrowFence, Mapping, Update, MAX_VOLUME_BLOCKS};
use super::format::{FormatError, Superblock, SUPERBLOCK_BYTES, VOLUME_TABLE_OFFSET};
use super::record::{EntryOp, RecordHeader, BLOCK_BYTES, MAX_SEQ, SEQ_HEADROOM};
use super::segment_journal::{JournalEntry, SegmentJournal, SlotContent, JOURNAL_OFFSET};
use super::usage::{SegmentState, UsageDeltas, UsageTable};
use crate::bdev::{BdevEntry, ChannelContext, IoChannel, IoRequest, IoStatus, IoType, IoVec};
use crate::mem::DmaRegion;

mod sync_io;
use sync_io::{SyncIo, PROBE_BATCH};

mod summary;
use summary::SegmentSeqs;

mod recovery;
pub use recovery::checkpoint_slots;

const VT_MAGIC: &[u8; 4] = b"UVT1";
pub(super) const VT_ENTRY_BYTES: usize = 80;
const VT_NAME_BYTES: usize = 48;
/// Volumes one pool holds (volume table version 1 fits them in one block).
pub const MAX_VOLUMES: usize = (POOL_NAME_AT - 8) / VT_ENTRY_BYTES;
const POOL_NAME_AT: usize = 4000;
pub(super) const NEXT_ID_AT: usize = POOL_NAME_AT + VT_NAME_BYTES + 4;
/// The grow fence: volume id, sequence number, floor.
pub(super) const FENCE_AT: usize = 3968;
const _: () =
    assert!(8 + MAX_VOLUMES * VT_ENTRY_BYTES <= FENCE_AT && FENCE_AT + 24 <= POOL_NAME_AT);
/// Largest single request of checkpoint I/O.
const CHECKPOINT_IO_BYTES: usize = 4 << 20;

#[derive(Debug, Error)]
pub enum PoolError {
    #[error("pool base bdev: {0}")]
    Base(String),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("base bdev block size must be 4096 (it is {0})")]
    BlockSize(u32),
    #[error("volume table is corrupt: {0}")]
    VolumeTable(&'static str),
    #[error("a volume named {0:?} already exists")]
    VolumeExists(String),
    #[error("no volume named {0:?}")]
    NoSuchVolume(String),
    #[error("volume name {0:?} is empty or longer than 48 bytes")]
    BadName(String),
    #[error("the pool already has {MAX_VOLUMES} volumes")]
    TooManyVolumes,
    #[error("I/O error on the base bdev: {0}")]
    Io(String),
    #[error("pool is damaged: {0}")]
    Corrupt(String),
    #[error("volume size of {0} blocks is zero or more than its map can grow to")]
    BadSize(u64),
    #[error("volume {0:?} cannot grow until a checkpoint covers the pool's last grow (one is being written, or writes from before that grow are in flight); retry the resize")]
    Busy(String),
    #[error("an lvol operation on lvstore {pool:?} did not start within {waited_s} s: those ahead of it (on this lvstore, or in every job slot) still run (is a base bdev slow, or hung?); it did nothing, retry it")]
    JobsAhead { pool: String, waited_s: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMeta {
    pub id: u32,
    pub name: String,
    pub uuid: Uuid,
    pub num_blocks: u64,
}

/// How `LsvPool::apply_record` applies a record.
#[derive(Clone, Copy)]
pub(super) enum Applying<'a> {
    /// A log writer's record that just completed.
    Live,
    /// Recovery's replay, in sequence order; `moved`: the (volume, block)s that replayed
    /// relocation records move.
    Replay {
        moved: &'a std::collections::HashSet<(u64, u64)>,
    },
}

/// Test builds: `UNBLEND_TRACE_LBA=N` prints every change to block N's mapping (the crash
/// simulator's debugging aid).
#[cfg(test)]
pub(super) fn traced(lba: u64, n: u64) -> bool {
    static T: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    T.get_or_init(|| std::env::var("UNBLEND_TRACE_LBA").ok()?.parse().ok())
        .is_some_and(|t| (lba..lba + n).contains(&t))
}

/// A new pool's uuid: random. Test builds derive it from the base bdev's (a simulated disk's
/// is its seed) and from what the device's first block held (an earlier pool's superblock),
/// so that a seed's run, whose checkpoints' sizes follow the sequence numbers (`first_seq`),
/// is the same every time, and a pool formatted over another on the same disk still gets
/// another uuid, as outside tests.
fn new_pool_uuid(base: &BdevEntry) -> Result<Uuid, PoolError> {
    #[cfg(test)]
    {
        let mut io = SyncIo::new(base, BLOCK_BYTES)?;
        io.run(IoType::Read, 0, BLOCK_BYTES, false)?;
        let before = crc32c::crc32c(io.bytes(BLOCK_BYTES)) as u128;
        let b = base.bdev.uuid().as_u128() ^ before << 64;
        Ok(Uuid::from_u128(
            b.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835) ^ b >> 64,
        ))
    }
    #[cfg(not(test))]
    {
        let _ = base;
        Ok(Uuid::new_v4())
    }
}

/// Bits of a new pool's uuid that choose its first sequence number.
const FIRST_SEQ_BITS: u32 = 47;
const _: () = assert!(1 << FIRST_SEQ_BITS < MAX_SEQ - SEQ_HEADROOM);

/// A new pool's first sequence number: 1 plus 47 bits of its uuid, not 1. Formatting zeroes
/// only each segment's first block, so an earlier pool's records stay on the device past the
/// new pool's chains, and records carry no pool uuid. A chain goes on only into a record of its
/// own epoch (and segment, with a higher number): were every pool's numbers to start at one, a
/// new pool with the same early history as the old one (a script run again) would take the
/// old pool's records after its own for its own at recovery, and replay another pool's data
/// into its volumes. From a random start an old record has that epoch with odds of about
/// 2^-47, and 2^47 numbers are years of records (at a million a second) below the headroom.
pub(super) fn first_seq(uuid: &Uuid) -> u64 {
    1 + (uuid.as_u128() as u64 & ((1 << FIRST_SEQ_BITS) - 1))
}

/// Log-head slots: one per channel or cleaner stream that appends records (checkpoints read
/// them to know which records may still be in flight).
pub const MAX_LOG_HEADS: usize = 256;
const HEAD_UNUSED: u64 = 0;
const HEAD_IDLE: u64 = u64::MAX;

#[cfg(test)]
thread_local! {
    /// Tests: the journal ring that pools made or opened on this thread get (None: the
    /// format's; Some(0): format version 2, no journal; Some(n): at most n slots).
    pub(super) static TEST_JOURNAL_SLOTS: std::cell::Cell<Option<u64>> =
        const { std::cell::Cell::new(None) };
}

/// Every journal slot holds an entry that a checkpoint does not cover yet: no segment can be
/// opened until one does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct JournalFull;

/// Sequence numbers skipped after recovery: more than every record that can be in flight at
/// once (`MAX_LOG_HEADS` heads of at most `RECORDS_IN_FLIGHT` records each).
pub const SEQ_GAP_AFTER_RECOVERY: u64 = 1 << 16;
const _: () = assert!(
    SEQ_GAP_AFTER_RECOVERY > (MAX_LOG_HEADS * super::log_writer::RECORDS_IN_FLIGHT) as u64 + 2
);
/// Free segments only the cleaner may take (two relocation streams, one spare).
pub const CLEANER_RESERVE_SEGMENTS: u64 = 3;
/// One-minute write-amplification window: a sample per second.
const WA_WINDOW_SAMPLES: usize = 61;

pub struct LsvPool {
    pub name: String,
    pub sb: Superblock,
    pub(super) base: BdevEntry,
    pub(super) usage: UsageTable,
    /// Allocated when a segment first takes a record, so an empty pool costs nothing here.
    summaries: Box<[std::sync::OnceLock<SegmentSeqs>]>,
    /// Blocks per segment.
    pub(super) seg_blocks: usize,
    /// Records submitted and not yet applied, over all channels.
    records_in_flight: AtomicU64,
    /// Log writers inside `LogWriter::commit` (see there, and `writes_stopped`).
    pub(super) committing: std::sync::atomic::AtomicU32,
    /// Since the pool was opened: blocks of user data written, blocks the log took for them
    /// (data plus record headers), blocks the cleaner moved (with their headers), and blocks
    /// of checkpoints. (log + cleaner + checkpoint) / user is the write amplification.
    user_blocks_written: AtomicU64,
    log_blocks_written: AtomicU64,
    records_written: AtomicU64,
    pub(super) cleaner_blocks_written: AtomicU64,
    pub(super) checkpoint_blocks_written: AtomicU64,
    pub(super) segments_cleaned: AtomicU64,
    /// Of those, the ones freed without reading them (nothing live, nothing to re-log).
    pub(super) segments_cleaned_unread: AtomicU64,
    /// Blocks the cleaner read from victims.
    pub(super) cleaner_blocks_read: AtomicU64,
    /// Victims whose live blocks the cleaner found reading only headers and live writes.
    pub(super) segments_read_in_parts: AtomicU64,
    /// Of those, victims whose live blocks the summary in memory found (no header read).
    pub(super) segments_read_from_summary: AtomicU64,
    next_seq: AtomicU64,
    volumes: RwLock<BTreeMap<u32, (VolumeMeta, Arc<ExtentTable>)>>,
    /// The id the next volume gets (ids are never reused; changed under `volume_ops_lock`).
    next_volume_id: AtomicU32,
    /// Blocks of deleted volumes per segment, for the cleaner to take off the live counts
    /// (at most one entry per segment).
    pub(super) dead_blocks: Mutex<BTreeMap<u64, u32>>,
    /// `dead_blocks` wait until every record numbered below this has completed: a user
    /// write's record that installed one of them just before the delete or shrink adds its
    /// +1 when it completes, and the -1 must not come first.
    pub(super) dead_blocks_after_seq: AtomicU64,
    /// Per log head: 0 unused, u64::MAX idle, else the oldest record it has in flight (or a
    /// lower bound taken before that record was numbered).
    log_heads: Box<[AtomicU64]>,
    /// The newest durable checkpoint's generation and complete_seq.
    pub(super) checkpoint_gen: AtomicU64,
    /// Pieces the last checkpoint's snapshot took (`checkpoint_writer.rs`), and checkpoints
    /// during which records were numbered (writes went on while they were taken and
    /// written) and during which the cleaner cleaned segments.
    pub(super) checkpoint_walk_pieces: AtomicU64,
    pub(super) checkpoints_overlapping_writes: AtomicU64,
    pub(super) checkpoints_overlapping_cleaning: AtomicU64,
    pub(super) checkpoint_seq: AtomicU64,
    /// complete_seq of the other (older) slot's checkpoint; 0 if it is not valid.
    checkpoint_seq_prev: AtomicU64,
    /// The lower of the two slots' `next_seq` (as `checkpoint_seq_prev`): every checkpoint
    /// recovery may load began after this number was taken.
    checkpoint_next_seq_prev: AtomicU64,
    /// The newest checkpoint's `next_seq`.
    checkpoint_next_seq: AtomicU64,
    /// The newest relocation record that may carry a block a shrink had cut off when the
    /// record was numbered (`note_cut_relocation`): no grow fence is retired before both
    /// checkpoints cover it.
    cut_relocation_seq: AtomicU64,
    /// Where recovery finds the segments opened since a checkpoint (None: a version 2 pool,
    /// whose recovery reads the first block of every segment).
    pub(super) journal: Option<SegmentJournal>,
    /// Times a log head found every journal slot waiting for a checkpoint.
    pub(super) journal_full_waits: AtomicU64,
    /// Journal entries written (a block each; counted in the write amplification).
    journal_blocks_written: AtomicU64,
    /// What the last recovery read: segments whole, and first blocks probed.
    pub(super) recovery_segments_read: AtomicU64,
    pub(super) recovery_segments_probed: AtomicU64,
    /// A recovery ran and its load's checkpoint is not written yet (`checkpoint_after_recovery`).
    checkpoint_due_after_recovery: AtomicBool,
    /// Log blocks written (user and cleaner) since open when the newest durable checkpoint
    /// began, and when the one being written began.
    log_blocks_at_checkpoint: AtomicU64,
    log_blocks_at_begin: AtomicU64,
    /// Blocks of the records the last recovery replayed, and the same until a checkpoint
    /// covers them (0 after): log no checkpoint covers that `log_blocks` does not count.
    recovery_log_blocks: AtomicU64,
    replayed_uncovered_blocks: AtomicU64,
    /// The newest durable checkpoint's size on disk (header and body): what the cleaner
    /// spaces checkpoints by (`cleaner::checkpoint_due`).
    pub(super) last_checkpoint_bytes: AtomicU64,
    /// Checkpoints the cleaner began, by `CheckpointReason` (its index).
    pub(super) checkpoints_begun_for: [AtomicU64; CheckpointReason::COUNT],
    checkpoint_busy: AtomicBool,
    /// Whether a cleaner runs for this pool (without one, a full pool fails writes at once).
    pub(super) cleaner_attached: AtomicBool,
    /// Set by the cleaner when no segment can be freed: writes that find no room fail.
    pub(super) full: AtomicBool,
    /// Set by the cleaner while it finds no victim it could clean: throttled writes then go
    /// on (to find room or fail with ENOSPC) rather than wait for credit nobody can earn.
    pub(super) nothing_to_clean: AtomicBool,
    /// Set when the pool is being deleted or closed: its cleaner stops.
    pub(super) closing: AtomicBool,
    /// A checkpoint is wanted soon (`request_checkpoint`): the cleaner begins one when it
    /// next looks, and clears this.
    pub(super) checkpoint_wanted: AtomicBool,
    /// The pool's cleaner poller has stopped (closed), or could not start.
    pub(super) cleaner_stopped: AtomicBool,
    /// Serializes volume operations (create, resize, delete): held across their blocking
    /// work (the volume table's write, a shrink's or a delete's walk of the map), while
    /// `volumes` is held only to read or change the map itself (`volumes_now`), so that the
    /// cleaner, checkpoints and RPCs on reactor 0 never wait for that work.
    volume_ops_lock: std::sync::Mutex<()>,
    /// A volume operation of this pool runs on a job thread (`try_volume_job_turn`).
    volume_job_running: AtomicBool,
    /// Volume operations (create, resize, delete) under way off the caller's thread
    /// (`begin_volume_op`): a pool being destroyed waits for them before its base goes.
    volume_ops: std::sync::atomic::AtomicU32,
    /// Blocks user records may take while throttled (earned by the cleaner; see
    /// `admit_user_record`). Never above two segments.
    throttle_credit_blocks: std::sync::atomic::AtomicI64,
    /// User records held back by throttling since open (each hold counts once per try).
    pub(super) throttled_records: AtomicU64,
    wa_history: Mutex<VecDeque<(Instant, u64, u64)>>,
    opened: Instant,
    /// Write every user record with FUA (acknowledged = durable) rather than relying on
    /// FLUSH (write-back semantics, the default).
    fua_records: AtomicBool,
}

/// A decoded volume table.
struct VolumeTable {
    pool_name: String,
    volumes: Vec<VolumeMeta>,
    /// The id the next volume gets.
    next_volume_id: u32,
    /// The last grow's fence and its volume, while it stands.
    fence: Option<(u32, GrowFence)>,
}

fn encode_volume_table(
    pool_name: &str,
    vols: &[VolumeMeta],
    next_volume_id: u32,
    fence: Option<(u32, GrowFence)>,
) -> Vec<u8> {
    debug_assert!(vols.iter().all(|v| v.id < next_volume_id));
    debug_assert!(fence.is_none_or(|(id, f)| f.seq != 0 && vols.iter().any(|v| v.id == id)));
    debug_assert!(pool_name.len() <= VT_NAME_BYTES && vols.len() <= MAX_VOLUMES);
    let mut b = vec![0u8; BLOCK_BYTES];
    b[POOL_NAME_AT..POOL_NAME_AT + pool_name.len()].copy_from_slice(pool_name.as_bytes());
    b[POOL_NAME_AT + VT_NAME_BYTES] = pool_name.len() as u8;
    b[0..4].copy_from_slice(VT_MAGIC);
    b[4..8].copy_from_slice(&(vols.len() as u32).to_le_bytes());
    b[NEXT_ID_AT..NEXT_ID_AT + 4].copy_from_slice(&next_volume_id.to_le_bytes());
    if let Some((id, f)) = fence {
        b[FENCE_AT..FENCE_AT + 4].copy_from_slice(&id.to_le_bytes());
        b[FENCE_AT + 8..FENCE_AT + 16].copy_from_slice(&f.seq.to_le_bytes());
        b[FENCE_AT + 16..FENCE_AT + 24].copy_from_slice(&f.floor_blocks.to_le_bytes());
    }
    for (i, v) in vols.iter().enumerate() {
        let o = 8 + i * VT_ENTRY_BYTES;
        b[o..o + 4].copy_from_slice(&v.id.to_le_bytes());
        b[o + 4] = v.name.len() as u8;
        b[o + 8..o + 16].copy_from_slice(&v.num_blocks.to_le_bytes());
        b[o + 16..o + 32].copy_from_slice(v.uuid.as_bytes());
        b[o + 32..o + 32 + v.name.len()].copy_from_slice(v.name.as_bytes());
    }
    let crc = crc32c::crc32c(&b[..4092]);
    b[4092..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode_volume_table(b: &[u8]) -> Result<VolumeTable, PoolError> {
    if &b[0..4] != VT_MAGIC {
        return Err(PoolError::VolumeTable("bad magic"));
    }
    if crc32c::crc32c(&b[..4092]) != u32::from_le_bytes(b[4092..4096].try_into().expect("4")) {
        return Err(PoolError::VolumeTable("checksum mismatch"));
    }
    let count = u32::from_le_bytes(b[4..8].try_into().expect("4")) as usize;
    if count > MAX_VOLUMES {
        return Err(PoolError::VolumeTable("too many entries"));
    }
    let name_len = b[POOL_NAME_AT + VT_NAME_BYTES] as usize;
    if name_len == 0 || name_len > VT_NAME_BYTES {
        return Err(PoolError::VolumeTable("bad pool name length"));
    }
    let pool_name = String::from_utf8(b[POOL_NAME_AT..POOL_NAME_AT + name_len].to_vec())
        .map_err(|_| PoolError::VolumeTable("pool name is not UTF-8"))?;
    let vols = (0..count)
        .map(|i| {
            let o = 8 + i * VT_ENTRY_BYTES;
            let len = b[o + 4] as usize;
            if len == 0 || len > VT_NAME_BYTES {
                return Err(PoolError::VolumeTable("bad name length"));
            }
            let num_blocks = u64::from_le_bytes(b[o + 8..o + 16].try_into().expect("8"));
            if num_blocks == 0 || num_blocks > MAX_VOLUME_BLOCKS {
                return Err(PoolError::VolumeTable("volume size out of range"));
            }
            Ok(VolumeMeta {
                id: u32::from_le_bytes(b[o..o + 4].try_into().expect("4")),
                num_blocks,
                uuid: Uuid::from_slice(&b[o + 16..o + 32]).expect("16"),
                name: String::from_utf8(b[o + 32..o + 32 + len].to_vec())
                    .map_err(|_| PoolError::VolumeTable("name is not UTF-8"))?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let stored = u32::from_le_bytes(b[NEXT_ID_AT..NEXT_ID_AT + 4].try_into().expect("4"));
    let above_all = vols.iter().map(|v| v.id as u64 + 1).max().unwrap_or(1);
    if above_all > u32::MAX as u64 {
        return Err(PoolError::VolumeTable("volume id out of range"));
    }
    // Never below one past the largest id (a table from before the field has 0 there).
    let next_volume_id = stored.max(above_all as u32);
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8"));
    let fence_id = u32::from_le_bytes(b[FENCE_AT..FENCE_AT + 4].try_into().expect("4"));
    let fence = GrowFence {
        seq: u64_at(FENCE_AT + 8),
        floor_blocks: u64_at(FENCE_AT + 16),
    };
    // Sequence numbers never come near 2^62 (at ten million records a second, not for ten
    // thousand years): a fence there would keep every later write out.
    if fence.seq >= MAX_SEQ {
        return Err(PoolError::VolumeTable(
            "grow fence sequence number out of range",
        ));
    }
    // A fence of a volume no longer in the table guards nothing (ids are never reused).
    let fence =
        (fence.seq != 0 && vols.iter().any(|v| v.id == fence_id)).then_some((fence_id, fence));
    Ok(VolumeTable {
        pool_name,
        volumes: vols,
        next_volume_id,
        fence,
    })
}

/// The grow fence standing in a pool's volumes, if any (at most one).
fn standing_fence(
    vols: &BTreeMap<u32, (VolumeMeta, Arc<ExtentTable>)>,
) -> Option<(u32, GrowFence)> {
    let mut fences = vols
        .iter()
        .filter_map(|(id, v)| v.1.fence().map(|f| (*id, f)));
    let first = fences.next();
    debug_assert!(fences.next().is_none(), "two grow fences stand");
    first
}

impl LsvPool {
    /// Formats a new pool on `base`: superblock, an empty volume table, an empty first
    /// checkpoint, and the first block of every segment zeroed so that no record of an
    /// earlier life is replayed.
    pub fn create(
        name: &str,
        base: BdevEntry,
        segment_bytes: u64,
    ) -> Result<Arc<LsvPool>, PoolError> {
        let bs = base.bdev.block_size();
        if bs as usize != BLOCK_BYTES {
            return Err(PoolError::BlockSize(bs));
        }
        if name.is_empty() || name.len() > VT_NAME_BYTES || name.contains('/') {
            return Err(PoolError::BadName(name.to_string()));
        }
        let bytes = base.bdev.num_blocks() * bs as u64;
        #[allow(unused_mut)]
        let mut sb = Superblock::plan(bytes, segment_bytes, new_pool_uuid(&base)?)?;
        #[cfg(test)]
        if TEST_JOURNAL_SLOTS.with(|t| t.get()) == Some(0) {
            sb.version = super::format::OLDEST_FORMAT_VERSION;
        }
        let mut io = SyncIo::new(&base, BLOCK_BYTES)?;
        io.zero_blocks(sb.segment_count, |s| sb.segment_offset(s))?;
        // Nor may the journal hold entries of one (they carry the pool's uuid as well).
        io.zero_blocks(sb.journal_slots(), |slot| {
            JOURNAL_OFFSET + slot * BLOCK_BYTES as u64
        })?;
        // Neither checkpoint slot may hold a checkpoint of an earlier pool (the buffer still
        // holds zeroes).
        io.run(IoType::Write, sb.metadata_offset, BLOCK_BYTES, false)?;
        io.run(
            IoType::Write,
            sb.metadata_offset + sb.metadata_slot_bytes,
            BLOCK_BYTES,
            false,
        )?;
        let vt = encode_volume_table(name, &[], 1, None);
        io.bytes_mut(BLOCK_BYTES).copy_from_slice(&vt);
        io.run(IoType::Write, VOLUME_TABLE_OFFSET, BLOCK_BYTES, false)?;
        drop(io);
        let pool = Self::new_in_memory(base, sb, name.to_string(), Vec::new(), 1);
        pool.next_seq
            .store(first_seq(&pool.sb.uuid), Ordering::SeqCst);
        // The first checkpoint (generation 1): all segments free, nothing mapped.
        pool.checkpoint_sync()?;
        let mut io = SyncIo::new(&pool.base, SUPERBLOCK_BYTES)?;
        io.bytes_mut(SUPERBLOCK_BYTES).copy_from_slice(&sb.encode());
        io.run(IoType::Write, 0, SUPERBLOCK_BYTES, false)?;
        io.run(IoType::Flush, 0, 0, false)?;
        Ok(Arc::new(pool))
    }

    /// Opens an existing pool (named as it was created) and recovers it: its newest valid
    /// checkpoint, then the log written since.
    pub fn open_named(base: BdevEntry) -> Result<Arc<LsvPool>, PoolError> {
        let bs = base.bdev.block_size();
        if bs as usize != BLOCK_BYTES {
            return Err(PoolError::BlockSize(bs));
        }
        let bytes = base.bdev.num_blocks() * bs as u64;
        let mut io = SyncIo::new(&base, BLOCK_BYTES)?;
        io.run(IoType::Read, 0, SUPERBLOCK_BYTES, false)?;
        let sb = Superblock::decode(io.bytes(SUPERBLOCK_BYTES), bytes)?;
        io.run(IoType::Read, VOLUME_TABLE_OFFSET, BLOCK_BYTES, false)?;
        let vt = decode_volume_table(io.bytes(BLOCK_BYTES))?;
        drop(io);
        let pool = Self::new_in_memory(base, sb, vt.pool_name, vt.volumes, vt.next_volume_id);
        if let Some((id, fence)) = vt.fence {
            let table = pool
                .table_of(id)
                .expect("decode keeps only a present volume's fence");
            table.set_fence(Some(fence));
        }
        pool.recover()?;
        Ok(Arc::new(pool))
    }

    fn new_in_memory(
        base: BdevEntry,
        sb: Superblock,
        name: String,
        metas: Vec<VolumeMeta>,
        next_volume_id: u32,
    ) -> LsvPool {
        let seg_blocks = (sb.segment_bytes / BLOCK_BYTES as u64) as usize;
        #[allow(unused_mut)]
        let mut journal_slots = sb.journal_slots();
        #[cfg(test)]
        if let Some(n) = TEST_JOURNAL_SLOTS.with(|t| t.get()).filter(|&n| n >= 2) {
            journal_slots = journal_slots.min(n);
        }
        LsvPool {
            summaries: (0..sb.segment_count)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            seg_blocks,
            records_in_flight: AtomicU64::new(0),
            committing: std::sync::atomic::AtomicU32::new(0),
            user_blocks_written: AtomicU64::new(0),
            log_blocks_written: AtomicU64::new(0),
            records_written: AtomicU64::new(0),
            cleaner_blocks_written: AtomicU64::new(0),
            checkpoint_blocks_written: AtomicU64::new(0),
            segments_cleaned: AtomicU64::new(0),
            segments_cleaned_unread: AtomicU64::new(0),
            cleaner_blocks_read: AtomicU64::new(0),
            segments_read_in_parts: AtomicU64::new(0),
            segments_read_from_summary: AtomicU64::new(0),
            name,
            usage: UsageTable::new(sb.segment_count, seg_blocks as u32),
            sb,
            base,
            next_seq: AtomicU64::new(1),
            next_volume_id: AtomicU32::new(next_volume_id),
            dead_blocks: Mutex::new(BTreeMap::new()),
            dead_blocks_after_seq: AtomicU64::new(0),
            volumes: RwLock::new(
                metas
                    .into_iter()
                    .map(|m| {
                        let t = Arc::new(ExtentTable::new(m.num_blocks));
                        (m.id, (m, t))
                    })
                    .collect(),
            ),
            log_heads: (0..MAX_LOG_HEADS)
                .map(|_| AtomicU64::new(HEAD_UNUSED))
                .collect(),
            checkpoint_gen: AtomicU64::new(0),
            checkpoint_walk_pieces: AtomicU64::new(0),
            checkpoints_overlapping_writes: AtomicU64::new(0),
            checkpoints_overlapping_cleaning: AtomicU64::new(0),
            checkpoint_seq: AtomicU64::new(0),
            checkpoint_seq_prev: AtomicU64::new(0),
            checkpoint_next_seq_prev: AtomicU64::new(0),
            checkpoint_next_seq: AtomicU64::new(0),
            cut_relocation_seq: AtomicU64::new(0),
            journal: (journal_slots >= 2).then(|| SegmentJournal::new(journal_slots)),
            journal_full_waits: AtomicU64::new(0),
            journal_blocks_written: AtomicU64::new(0),
            recovery_segments_read: AtomicU64::new(0),
            recovery_segments_probed: AtomicU64::new(0),
            checkpoint_due_after_recovery: AtomicBool::new(false),
            log_blocks_at_checkpoint: AtomicU64::new(0),
            log_blocks_at_begin: AtomicU64::new(0),
            recovery_log_blocks: AtomicU64::new(0),
            replayed_uncovered_blocks: AtomicU64::new(0),
            last_checkpoint_bytes: AtomicU64::new(0),
            checkpoints_begun_for: Default::default(),
            checkpoint_busy: AtomicBool::new(false),
            cleaner_attached: AtomicBool::new(false),
            full: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            checkpoint_wanted: AtomicBool::new(false),
            cleaner_stopped: AtomicBool::new(false),
            volume_ops: std::sync::atomic::AtomicU32::new(0),
            volume_ops_lock: std::sync::Mutex::new(()),
            volume_job_running: AtomicBool::new(false),
            throttle_credit_blocks: std::sync::atomic::AtomicI64::new(0),
            nothing_to_clean: AtomicBool::new(false),
            throttled_records: AtomicU64::new(0),
            wa_history: Mutex::new(VecDeque::with_capacity(WA_WINDOW_SAMPLES)),
            opened: Instant::now(),
            fua_records: AtomicBool::new(false),
        }
    }

    /// The block address (in 4 KiB pool blocks) where segment `seg` starts.
    pub(super) fn segment_first_block(&self, seg: u64) -> u64 {
        self.sb.segment_offset(seg) / BLOCK_BYTES as u64
    }

    /// The segment a pool block address falls in.
    pub(super) fn segment_of(&self, pba: u64) -> u64 {
        (pba * BLOCK_BYTES as u64 - self.sb.first_segment_offset) / self.sb.segment_bytes
    }

    /// Whether `pba` lies in some segment (addresses read from disk are checked with this).
    fn in_segments(&self, pba: u64) -> bool {
        let first = self.sb.first_segment_offset / BLOCK_BYTES as u64;
        pba >= first && pba < first + self.sb.segment_count * self.seg_blocks as u64
    }

    /// Claims a log-head slot for a channel or cleaner stream; None when all are taken.
    pub(super) fn claim_head(&self) -> Option<usize> {
        self.log_heads.iter().position(|h| {
            h.compare_exchange(HEAD_UNUSED, HEAD_IDLE, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        })
    }

    pub(super) fn release_head(&self, head: usize) {
        self.log_heads[head].store(HEAD_UNUSED, Ordering::SeqCst);
    }

    /// A sequence number for a new record of log head `head`, which is now in flight (until
    /// `record_done`). An idle head first publishes a lower bound of the number it is about
    /// to take, so a checkpoint beginning meanwhile cannot count the record as complete.
    pub(super) fn next_seq(&self, head: usize) -> u64 {
        if self.log_heads[head].load(Ordering::SeqCst) == HEAD_IDLE {
            self.log_heads[head].store(self.next_seq.load(Ordering::SeqCst), Ordering::SeqCst);
        }
        self.records_in_flight.fetch_add(1, Ordering::AcqRel);
        self.next_seq.fetch_add(1, Ordering::SeqCst)
    }

    /// Publishes log head `head`'s oldest record still in flight (None: idle).
    pub(super) fn head_oldest(&self, head: usize, oldest: Option<u64>) {
        self.log_heads[head].store(oldest.unwrap_or(HEAD_IDLE), Ordering::SeqCst);
    }

    pub(super) fn record_done(&self) {
        self.records_in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Every record with a sequence number at or below this has been applied.
    pub(super) fn complete_seq(&self) -> (u64, u64) {
        let next = self.next_seq.load(Ordering::SeqCst);
        let oldest = self
            .log_heads
            .iter()
            .map(|h| h.load(Ordering::SeqCst))
            .filter(|&v| v != HEAD_UNUSED && v != HEAD_IDLE)
            .min()
            .unwrap_or(u64::MAX);
        (next.min(oldest) - 1, next)
    }

    /// The extent table of volume `id`, if it exists.
    pub(super) fn table_of(&self, id: u32) -> Option<Arc<ExtentTable>> {
        self.volumes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .map(|v| v.1.clone())
    }

    /// Applies one record's entries to the extent tables (replay and live I/O share this).
    /// `first_data_pba` is where the record's data starts. `how`: live, or replay.
    /// `tables`: the tables of the volumes a live log writer serves, by volume id; a volume
    /// not among them (and every volume in replay) is looked up. Entries read from disk are bounded
    /// here: blocks past a volume's end, or of a volume no longer in the table, are skipped.
    pub(super) fn apply_record(
        &self,
        h: &RecordHeader,
        first_data_pba: u64,
        deltas: &mut UsageDeltas,
        how: Applying<'_>,
        tables: &[(u64, Arc<ExtentTable>)],
    ) {
        debug_assert!(
            tables.windows(2).all(|w| w[0].0 < w[1].0),
            "tables sorted by id"
        );
        // Whether an unmap of a never-written block must leave a tombstone: live, when a
        // record older than this one may still be in flight (ours counts once); in replay,
        // when a later record moves older data of that block (see `Applying::Replay`).
        let (older_in_flight, moved) = match how {
            Applying::Live => (self.records_in_flight.load(Ordering::Acquire) > 1, None),
            Applying::Replay { moved } => (false, Some(moved)),
        };
        let seq_of = |a: u64| self.seq_of(a);
        let mut pba = first_data_pba;
        for e in &h.entries {
            let looked_up;
            let table = match tables.binary_search_by_key(&e.volume, |(v, _)| *v) {
                Ok(i) => tables[i].1.as_ref(),
                Err(_) => {
                    looked_up = self.table_of(e.volume as u32);
                    match &looked_up {
                        Some(t) => t.as_ref(),
                        None => {
                            if e.op == EntryOp::Write {
                                pba += e.num_blocks as u64;
                            }
                            continue;
                        }
                    }
                }
            };
            let seq = e.seq_in(h.seq);
            #[cfg(test)]
            if traced(e.lba, e.num_blocks as u64) {
                eprintln!(
                    "trace: apply live={} record {} seg {} {:?} seq {seq} lba {}+{} at {pba}",
                    moved.is_none(),
                    h.seq,
                    h.segment,
                    e.op,
                    e.lba,
                    e.num_blocks
                );
            }
            for b in 0..e.num_blocks as u64 {
                let Some(lba) = e.lba.checked_add(b).filter(|&l| l < table.num_blocks()) else {
                    break;
                };
                let addr = (e.op == EntryOp::Write).then_some(pba + b);
                let older_in_flight = older_in_flight
                    || (addr.is_none() && moved.is_some_and(|m| m.contains(&(e.volume, lba))));
                let (previous, installed) =
                    match table.update(lba, addr, seq, &seq_of, older_in_flight) {
                        Update::Applied { previous } => (previous, addr),
                        Update::Dropped { previous } => (previous, None),
                        Update::Stale => continue,
                    };
                if let Mapping::At(old) = previous {
                    self.add_delta(deltas, self.segment_of(old), -1);
                }
                if let Some(a) = installed {
                    self.add_delta(deltas, self.segment_of(a), 1);
                }
            }
            if e.op == EntryOp::Write {
                pba += e.num_blocks as u64;
            }
        }
    }

    pub(super) fn add_delta(&self, deltas: &mut UsageDeltas, seg: u64, d: i32) {
        if !deltas.add(seg, d) {
            self.usage.apply(deltas);
            assert!(deltas.add(seg, d));
        }
    }

    pub(super) fn apply_deltas(&self, deltas: &mut UsageDeltas) {
        self.usage.apply(deltas);
    }

    /// The volumes' extent tables, by id (a checkpoint walks them).
    pub(super) fn volume_tables(&self) -> Vec<(u32, Arc<ExtentTable>)> {
        self.volumes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, v)| (*id, v.1.clone()))
            .collect()
    }

    /// The newest durable checkpoint's generation.
    pub(super) fn checkpoint_generation(&self) -> u64 {
        self.checkpoint_gen.load(Ordering::SeqCst)
    }

    /// Takes a snapshot for the next checkpoint into `buf` (a slot's size) in one go.
    fn snapshot(&self, buf: &mut [u8]) -> Result<CheckpointHeader, PoolError> {
        let mut walk = CheckpointWalk::begin(self);
        loop {
            if let WalkStep::Done(h) = walk.step(self, buf)? {
                return Ok(h);
            }
        }
    }

    /// Where checkpoint generation `gen`'s slot begins.
    fn slot_offset(&self, gen: u64) -> u64 {
        debug_assert!(gen > 0);
        self.sb.metadata_offset + ((gen - 1) % 2) * self.sb.metadata_slot_bytes
    }

    /// Where checkpoint `h` is written, and how many bytes of its slot (body rounded up).
    pub(super) fn checkpoint_extent(&self, h: &CheckpointHeader) -> (u64, usize) {
        let len = (CP_HEADER_BYTES + h.body_bytes as usize).div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        (self.slot_offset(h.generation), len)
    }

    /// Records at or below this are covered by both checkpoint slots: a cleaned segment whose
    /// records all are may be reused.
    pub(super) fn reusable_seq(&self) -> u64 {
        self.checkpoint_seq
            .load(Ordering::SeqCst)
            .min(self.checkpoint_seq_prev.load(Ordering::SeqCst))
    }

    /// Claims a journal slot for a segment about to be opened: `Ok(None)` for a pool with no
    /// journal; `Err(JournalFull)` while every slot holds an entry a checkpoint does not
    /// cover (the cleaner writes one: see `journal_pressure`).
    pub(super) fn claim_journal(&self) -> Result<Option<u64>, JournalFull> {
        match &self.journal {
            None => Ok(None),
            Some(j) => j.claim(self.reusable_seq()).map(Some).ok_or_else(|| {
                self.journal_full_waits.fetch_add(1, Ordering::Relaxed);
                JournalFull
            }),
        }
    }

    /// Numbers the claimed `position`'s entry (segment `segment`, use `epoch`) and encodes it
    /// into `block`: the pool block to write it to.
    pub(super) fn journal_entry(
        &self,
        position: u64,
        segment: u64,
        epoch: u64,
        block: &mut [u8],
    ) -> u64 {
        let j = self.journal.as_ref().expect("claimed from the journal");
        j.set_epoch(position, epoch);
        self.journal_blocks_written.fetch_add(1, Ordering::Relaxed);
        JournalEntry {
            position,
            segment,
            epoch,
        }
        .encode(&self.sb.uuid, block);
        j.block_of(position)
    }

    /// Whether a head could claim a journal slot now (a pool with no journal: always).
    pub(super) fn journal_slot_free(&self) -> bool {
        self.journal
            .as_ref()
            .is_none_or(|j| j.next_slot_free(self.reusable_seq()))
    }

    /// Whether a checkpoint is due to free journal slots.
    pub(super) fn journal_pressure(&self) -> bool {
        self.journal
            .as_ref()
            .is_some_and(|j| j.pressure(self.reusable_seq()))
    }

    /// `complete_seq` as of now.
    pub(super) fn complete_seq_now(&self) -> u64 {
        self.complete_seq().0
    }

    /// The sequence number the next record will take.
    pub(super) fn next_seq_now(&self) -> u64 {
        self.next_seq.load(Ordering::SeqCst)
    }

    /// Drops the checkpoint lock without writing a checkpoint.
    pub(super) fn abort_checkpoint(&self) {
        self.checkpoint_busy.store(false, Ordering::Release);
    }

    /// Takes the checkpoint lock (one checkpoint at a time); false if one is running.
    pub(super) fn begin_checkpoint(&self) -> bool {
        let ok = self
            .checkpoint_busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if ok {
            self.log_blocks_at_begin
                .store(self.log_blocks(), Ordering::Relaxed);
        }
        ok
    }

    /// Log blocks (user and cleaner records) written since the newest durable checkpoint
    /// began: what recovery would replay at most. Counts a recovery's replayed log until a
    /// checkpoint covers it.
    pub(super) fn log_blocks_since_checkpoint(&self) -> u64 {
        (self.log_blocks() + self.replayed_uncovered_blocks.load(Ordering::Relaxed))
            .saturating_sub(self.log_blocks_at_checkpoint.load(Ordering::Relaxed))
    }

    /// Checkpoint `h` is durable (or failed, with `durable` false): frees the segments it
    /// makes reusable and drops the lock.
    pub(super) fn end_checkpoint(&self, h: &CheckpointHeader, durable: bool) {
        if durable {
            debug_assert_eq!(h.generation, self.checkpoint_gen.load(Ordering::SeqCst) + 1);
            self.checkpoint_gen.store(h.generation, Ordering::SeqCst);
            let prev = self.checkpoint_seq.swap(h.complete_seq, Ordering::SeqCst);
            self.checkpoint_seq_prev.store(prev, Ordering::SeqCst);
            let prev = self.checkpoint_next_seq.swap(h.next_seq, Ordering::SeqCst);
            self.checkpoint_next_seq_prev.store(prev, Ordering::SeqCst);
            let (_, len) = self.checkpoint_extent(h);
            self.checkpoint_blocks_written
                .fetch_add((len / BLOCK_BYTES) as u64, Ordering::Relaxed);
            self.last_checkpoint_bytes
                .store(len as u64, Ordering::Relaxed);
            self.log_blocks_at_checkpoint.store(
                self.log_blocks_at_begin.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
            self.replayed_uncovered_blocks.store(0, Ordering::Relaxed);
            if self.usage.free_count() as u64 > CLEANER_RESERVE_SEGMENTS {
                self.full.store(false, Ordering::Release);
            }
        }
        self.checkpoint_busy.store(false, Ordering::Release);
    }

    /// After recovery, writes a checkpoint at once, before the pool takes I/O; returns whether
    /// it did (once per recovery). A crash may keep a segment's first record and lose its
    /// journal entry: recovery leaves that chain unreplayed and the segment free, and until a
    /// checkpoint covers the chain's numbers a later recovery that must read every segment's
    /// first block (a damaged journal slot) would replay it, and blocks would change under no
    /// new write. From this checkpoint on, no recovery reads anything numbered before it.
    /// Every load needs it, a clean one too: a crash just after a checkpoint taken with
    /// nothing in flight (a format, a clean close, a load's own) leaves no sign that anything
    /// was written since, when the first segment opened after it kept its first record and
    /// lost its entry. The appliance's loads call this (and `unblend bench`'s `open=1`); the
    /// offline tools, which write nothing unless asked, do not.
    pub fn checkpoint_after_recovery(&self) -> Result<bool, PoolError> {
        if !self
            .checkpoint_due_after_recovery
            .swap(false, Ordering::Relaxed)
        {
            return Ok(false);
        }
        self.checkpoint_sync()?;
        Ok(true)
    }

    /// Writes a checkpoint now, blocking (format, clean shutdown, tests). Waits for a
    /// checkpoint the cleaner has running to finish first.
    pub fn checkpoint_sync(&self) -> Result<u64, PoolError> {
        while !self.begin_checkpoint() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let r = self.write_checkpoint_blocking();
        if let Err(e) = &r {
            tracing::error!(pool = %self.name, "checkpoint failed: {e}");
        }
        r
    }

    fn write_checkpoint_blocking(&self) -> Result<u64, PoolError> {
        let fail = |e: PoolError, h: Option<&CheckpointHeader>| {
            if let Some(h) = h {
                self.end_checkpoint(h, false);
            } else {
                self.checkpoint_busy.store(false, Ordering::Release);
            }
            e
        };
        let buf = DmaRegion::new_lazy(self.sb.metadata_slot_bytes as usize)
            .map_err(|e| fail(PoolError::Base(e.to_string()), None))?;
        // SAFETY: the region is ours alone.
        let bytes = unsafe { std::slice::from_raw_parts_mut(buf.as_ptr(), buf.len()) };
        let h = self.snapshot(bytes).map_err(|e| fail(e, None))?;
        let (offset, len) = self.checkpoint_extent(&h);
        let mut io = SyncIo::new(&self.base, BLOCK_BYTES).map_err(|e| fail(e, Some(&h)))?;
        let mut at = CP_HEADER_BYTES;
        while at < len {
            let n = (len - at).min(CHECKPOINT_IO_BYTES);
            // SAFETY: inside `buf`, untouched while the write runs.
            io.run_on(
                IoType::Write,
                offset + at as u64,
                unsafe { buf.as_ptr().add(at) },
                n,
                false,
            )
            .map_err(|e| fail(e, Some(&h)))?;
            at += n;
        }
        io.run(IoType::Flush, 0, 0, false)
            .map_err(|e| fail(e, Some(&h)))?;
        io.run_on(IoType::Write, offset, buf.as_ptr(), CP_HEADER_BYTES, true)
            .map_err(|e| fail(e, Some(&h)))?;
        self.end_checkpoint(&h, true);
        Ok(h.generation)
    }

    /// Writes the volume table of `vols` with the fence standing in them, or `fence`.
    fn write_volume_table(
        &self,
        vols: &BTreeMap<u32, (VolumeMeta, Arc<ExtentTable>)>,
        next_volume_id: u32,
        fence: Option<(u32, GrowFence)>,
    ) -> Result<(), PoolError> {
        let metas: Vec<VolumeMeta> = vols.values().map(|v| v.0.clone()).collect();
        let fence = fence.or_else(|| standing_fence(vols));
        let mut io = SyncIo::new(&self.base, BLOCK_BYTES)?;
        io.bytes_mut(BLOCK_BYTES)
            .copy_from_slice(&encode_volume_table(
                &self.name,
                &metas,
                next_volume_id,
                fence,
            ));
        io.run(IoType::Write, VOLUME_TABLE_OFFSET, BLOCK_BYTES, true)
    }

    /// Creates a thin volume of `num_blocks` 4 KiB blocks.
    pub fn create_volume(
        &self,
        name: &str,
        num_blocks: u64,
    ) -> Result<(VolumeMeta, Arc<ExtentTable>), PoolError> {
        if name.is_empty() || name.len() > VT_NAME_BYTES {
            return Err(PoolError::BadName(name.to_string()));
        }
        if num_blocks == 0 || num_blocks > MAX_VOLUME_BLOCKS {
            return Err(PoolError::BadSize(num_blocks));
        }
        let _serial = self
            .volume_ops_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // The map as it will be, written to the volume table before it is the map: only
        // volume operations change it, and they wait for this one.
        let mut vols = self.volumes_now();
        if vols.values().any(|v| v.0.name == name) {
            return Err(PoolError::VolumeExists(name.to_string()));
        }
        if vols.len() >= MAX_VOLUMES {
            return Err(PoolError::TooManyVolumes);
        }
        // Ids are never reused (see the volume table's format).
        let id = self.next_volume_id.load(Ordering::Relaxed);
        let Some(next_id) = id.checked_add(1) else {
            return Err(PoolError::TooManyVolumes);
        };
        debug_assert!(!vols.contains_key(&id), "volume id {id} handed out twice");
        let meta = VolumeMeta {
            id,
            name: name.to_string(),
            uuid: Uuid::new_v4(),
            num_blocks,
        };
        let table = Arc::new(ExtentTable::new(num_blocks));
        vols.insert(id, (meta.clone(), table.clone()));
        self.write_volume_table(&vols, next_id, None)?;
        self.volumes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (meta.clone(), table.clone()));
        self.next_volume_id.store(next_id, Ordering::Relaxed);
        Ok((meta, table))
    }

    /// A copy of the volumes' map (the tables shared), for a volume operation to change and
    /// write to the volume table before it takes the map's lock to apply the change: no
    /// reader of the map (the cleaner, a checkpoint, an RPC on reactor 0) waits for that
    /// write. Call it holding `volume_ops_lock`.
    fn volumes_now(&self) -> BTreeMap<u32, (VolumeMeta, Arc<ExtentTable>)> {
        self.volumes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn volume(&self, name: &str) -> Option<(VolumeMeta, Arc<ExtentTable>)> {
        self.volumes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|v| v.0.name == name)
            .cloned()
    }

    /// Retires every volume (`ExtentTable::retire`): the pool is being destroyed, and from
    /// now on their channels fail every request and write nothing more.
    pub fn retire_volumes(&self) {
        for (_, table) in self
            .volumes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            table.retire();
        }
    }

    /// Whether nothing of a closing pool can land on its base any more from its log
    /// writers: none is committing (from now on each fails what it is given: see
    /// `LogWriter::commit`) and no record is in flight. Its cleaner, and volume operations,
    /// are the caller's to wait for (`Pools::cleaner_running`, `volume_ops_running`).
    pub fn writes_stopped(&self) -> bool {
        debug_assert!(self.is_closing());
        // The count first: a commit that ended before it was read numbered its records
        // before, and the in-flight count then shows them.
        self.committing.load(Ordering::SeqCst) == 0
            && self.records_in_flight.load(Ordering::SeqCst) == 0
    }

    pub fn volumes(&self) -> Vec<VolumeMeta> {
        self.volumes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|v| v.0.clone())
            .collect()
    }
}

impl LsvPool {
    /// Resizes a volume to `blocks`.
    /// - Growing is immediate, up to the size its map was made for
    ///   (`ExtentTable::growth_capacity`). It takes a sequence number and leaves a grow fence
    ///   (see the volume table's notes): no write numbered below it maps the blocks gained,
    ///   which an earlier shrink may have cut off while the log still holds writes of them.
    ///   A fence another grow left must first be retired (`fence_retired`), by up to two
    ///   checkpoints; if the cleaner is writing one, or writes from before that grow are
    ///   still in flight even then, the resize fails with `Busy`.
    /// - Shrinking drops the blocks past the new end and frees their space. Replay and
    ///   checkpoint loading skip blocks past a volume's end, so it writes no checkpoint.
    ///
    /// Channels check every request against the size now; a write that passed the check
    /// before a shrink cut its block off maps nothing (`ExtentTable::update`).
    pub fn resize_volume(&self, name: &str, blocks: u64) -> Result<VolumeMeta, PoolError> {
        self.resize_volume_with_id(name, None, blocks)
    }

    /// `resize_volume`, refused (`NoSuchVolume`) unless the volume named `name` is still
    /// volume `expected_id` when its size changes: the one a request named (perhaps by
    /// uuid), not one that took its name meanwhile.
    pub fn resize_volume_with_id(
        &self,
        name: &str,
        expected_id: Option<u32>,
        blocks: u64,
    ) -> Result<VolumeMeta, PoolError> {
        if blocks == 0 || blocks > MAX_VOLUME_BLOCKS {
            return Err(PoolError::BadSize(blocks));
        }
        // Retire a standing fence before a grow sets its own (a size past what the volume
        // can grow to is refused below, before any checkpoint). Outside the volumes' lock: a
        // checkpoint's walk takes it when it begins. Never waits for the cleaner's
        // checkpoint: this may run on the cleaner's own reactor, which would then never
        // finish it; the caller is told to retry instead (the RPC lets the cleaner write
        // them first: `grow_waits_for_checkpoints`).
        for _ in 0..2 {
            if !self.grow_waits_for_checkpoints(name, blocks) || !self.begin_checkpoint() {
                break;
            }
            self.write_checkpoint_blocking()?;
        }
        let _serial = self
            .volume_ops_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut vols = self.volumes_now();
        let id = volume_id(&vols, name)?;
        if expected_id.is_some_and(|e| e != id) {
            return Err(PoolError::NoSuchVolume(name.to_string()));
        }
        let (meta, table) = vols.get(&id).cloned().expect("found above");
        if blocks > table.capacity_blocks() {
            return Err(PoolError::BadSize(blocks));
        }
        let old = meta.num_blocks;
        let standing = standing_fence(&vols);
        let fence = if blocks > old {
            if standing.is_some_and(|(_, f)| !self.fence_retired(f)) {
                return Err(PoolError::Busy(name.to_string()));
            }
            let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
            Some((
                id,
                GrowFence {
                    seq,
                    floor_blocks: old,
                },
            ))
        } else {
            None
        };
        vols.get_mut(&id).expect("found above").0.num_blocks = blocks;
        self.write_volume_table(&vols, self.next_volume_id.load(Ordering::Relaxed), fence)?;
        // The table on the media says the new size (and fence) first: a write the new size
        // lets in is never acknowledged for a volume that would reopen smaller.
        let mut live = self.volumes.write().unwrap_or_else(|e| e.into_inner());
        let entry = live
            .get_mut(&id)
            .expect("only volume operations remove volumes, and they wait for this one");
        entry.0.num_blocks = blocks;
        let resized = entry.0.clone();
        if let Some((_, f)) = fence {
            if let Some((was, _)) = standing {
                live.get(&was).expect("standing in vols").1.set_fence(None);
            }
            table
                .grow(blocks, f.seq)
                .expect("the size was checked against the table's capacity above");
        }
        // The walk of the blocks cut off (seconds for a TiB) holds only the volume-operation
        // lock: the cleaner and checkpoints read the volumes meanwhile, and no other resize
        // runs until it is done.
        drop(live);
        if blocks < old {
            let mut dead = self.dead_counts();
            table.shrink(blocks, |pba| self.count_dead(&mut dead, pba));
            // Dead now; off the live counts between the cleaner's victims (see `delete_volume`).
            self.note_dead_blocks(&dead);
        }
        Ok(resized)
    }

    /// Whether a cleaner runs for the pool (it writes the checkpoints `request_checkpoint`
    /// asks for).
    pub fn has_cleaner(&self) -> bool {
        self.cleaner_attached.load(Ordering::Acquire)
    }

    /// Asks the pool's cleaner for a checkpoint when it next looks at the pool (its idle
    /// poll, every `pools::CLEANER_PERIOD_US`).
    pub fn request_checkpoint(&self) {
        self.checkpoint_wanted.store(true, Ordering::Release);
    }

    /// Takes back a `request_checkpoint` the cleaner has not begun yet.
    pub fn cancel_checkpoint_request(&self) {
        self.checkpoint_wanted.store(false, Ordering::Release);
    }

    /// Whether a resize of volume `name` to `blocks` would first write checkpoints to retire
    /// another volume's grow fence (`resize_volume`): a grow while a fence stands that both
    /// checkpoints do not cover yet. A caller that must not block (the RPC, on reactor 0)
    /// asks the cleaner for them (`request_checkpoint`) and resizes once this is false.
    pub fn grow_waits_for_checkpoints(&self, name: &str, blocks: u64) -> bool {
        // A size past what the volume can grow to is refused at once, without waiting.
        let grows = self
            .volume(name)
            .is_some_and(|(m, t)| blocks > m.num_blocks && blocks <= t.capacity_blocks());
        let standing = standing_fence(&self.volumes.read().unwrap_or_else(|e| e.into_inner()));
        grows && standing.is_some_and(|(_, f)| !self.fence_retired(f))
    }

    /// Whether no recovery can meet a write that grow fence `f` keeps out: both checkpoint
    /// slots began after the grow took its number, and cover every record below it. A
    /// checkpoint that began before could hold a block of a shrunk range (loaded into the
    /// grown volume), and a record below the number could be replayed into it.
    /// Relocation records numbered after the fence's grow may still carry such a write (the
    /// cleaner found the block live before the shrink): `note_cut_relocation` names the
    /// newest, which both slots must cover too.
    fn fence_retired(&self, f: GrowFence) -> bool {
        let reusable = self.reusable_seq();
        reusable + 1 >= f.seq
            && reusable >= self.cut_relocation_seq.load(Ordering::SeqCst)
            && self.checkpoint_next_seq_prev.load(Ordering::SeqCst) > f.seq
    }

    /// The cleaner numbered relocation record `seq` and then found one of its blocks cut off
    /// by a shrink (past its volume's end, or behind a grow fence): replayed without the
    /// fence that keeps it out, it would map the old data again. A shrink and grow after the
    /// numbering take a fence above `seq`, which the retirement rule already covers.
    pub(super) fn note_cut_relocation(&self, seq: u64) {
        self.cut_relocation_seq.fetch_max(seq, Ordering::SeqCst);
    }

    /// Deletes a volume: it leaves the volume table at once; its blocks become garbage for the
    /// cleaner. Channels still open on it fail every request from then on with ENODEV (as
    /// SPDK's bdevs do once hot-removed), and its writes in flight are not mapped.
    pub fn delete_volume(&self, name: &str) -> Result<(), PoolError> {
        let _serial = self
            .volume_ops_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut vols = self.volumes_now();
        let id = volume_id(&vols, name)?;
        vols.remove(&id);
        self.write_volume_table(&vols, self.next_volume_id.load(Ordering::Relaxed), None)?;
        let removed = self
            .volumes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
            .expect("only volume operations remove volumes, and they wait for this one");
        // Its blocks are dead now: they come off the segments' live counts, or the cleaner
        // would find victims with live blocks nobody maps and go round them for good. The
        // cleaner applies the counts itself, between victims: a block it is moving right now
        // has its new segment's count raised by the cleaner after the move, and must not be
        // taken off that count before.
        let mut dead = self.dead_counts();
        removed.1.drain(|pba| self.count_dead(&mut dead, pba));
        self.note_dead_blocks(&dead);
        Ok(())
    }

    /// Dead blocks per segment, to fill with `count_dead` and hand to `note_dead_blocks`: a
    /// dense array (4 bytes a segment), since a deleted volume can free millions of blocks
    /// (a 12 GiB volume's 3 million took 300 ms of reactor 0 in a map keyed by segment).
    fn dead_counts(&self) -> Vec<u32> {
        vec![0; self.sb.segment_count as usize]
    }

    fn count_dead(&self, dead: &mut [u32], pba: u64) {
        let seg = self.segment_of(pba) as usize;
        debug_assert!(
            seg < dead.len(),
            "mapped block {pba} lies past the segments"
        );
        if let Some(n) = dead.get_mut(seg) {
            *n += 1;
        }
    }

    /// Blocks no volume maps any more (deleted, or past a shrunk volume's end): they come
    /// off their segments' live counts when the cleaner is between victims and every record
    /// in flight now has completed (`dead_blocks_ready`); at once with no cleaner.
    fn note_dead_blocks(&self, per_segment: &[u32]) {
        let mut dead = self.dead_blocks.lock().unwrap_or_else(|e| e.into_inner());
        for (seg, &n) in per_segment.iter().enumerate().filter(|(_, n)| **n > 0) {
            *dead.entry(seg as u64).or_insert(0) += n;
        }
        self.dead_blocks_after_seq
            .fetch_max(self.next_seq_now(), Ordering::SeqCst);
        if !self.cleaner_attached.load(Ordering::Acquire) {
            self.apply_dead_blocks(&mut dead);
        }
    }

    /// Whether every record that was in flight when blocks were last noted dead has
    /// completed (and so added its own counts first).
    pub(super) fn dead_blocks_ready(&self) -> bool {
        self.complete_seq_now() + 1 >= self.dead_blocks_after_seq.load(Ordering::SeqCst)
    }

    /// Takes deleted volumes' blocks off their segments' live counts (see `delete_volume`).
    pub(super) fn apply_dead_blocks(&self, dead: &mut BTreeMap<u64, u32>) {
        let mut deltas = UsageDeltas::default();
        for (seg, n) in std::mem::take(dead) {
            self.add_delta(&mut deltas, seg, -(n as i32));
        }
        self.apply_deltas(&mut deltas);
    }

    /// Counts a record written for the log (live I/O only).
    pub(super) fn count_record(&self, h: &RecordHeader) {
        self.records_written.fetch_add(1, Ordering::Relaxed);
        self.user_blocks_written
            .fetch_add(h.data_blocks as u64, Ordering::Relaxed);
        self.log_blocks_written
            .fetch_add(h.total_blocks() as u64, Ordering::Relaxed);
    }

    /// (user blocks, blocks written to the base bdev for them: log, cleaner, checkpoints)
    /// since the pool was opened.
    pub fn write_counters(&self) -> (u64, u64) {
        (
            self.user_blocks_written.load(Ordering::Relaxed),
            self.written_blocks(),
        )
    }

    /// Blocks written to the log by users and the cleaner since the pool was opened.
    pub(super) fn log_blocks(&self) -> u64 {
        self.log_blocks_written.load(Ordering::Relaxed)
            + self.cleaner_blocks_written.load(Ordering::Relaxed)
    }

    /// Everything written to the base bdev per block of user data, since open.
    fn amplification(user: u64, written: u64) -> serde_json::Value {
        if user == 0 {
            serde_json::Value::Null
        } else {
            serde_json::json!(written as f64 / user as f64)
        }
    }

    fn written_blocks(&self) -> u64 {
        self.log_blocks()
            + self.checkpoint_blocks_written.load(Ordering::Relaxed)
            + self.journal_blocks_written.load(Ordering::Relaxed)
    }

    /// Takes a (user, written) sample for the one-minute window (the cleaner calls this about
    /// once a second).
    pub(super) fn sample_write_amplification(&self) {
        let mut h = self.wa_history.lock().unwrap_or_else(|e| e.into_inner());
        if h.len() == WA_WINDOW_SAMPLES {
            h.pop_front();
        }
        h.push_back((
            Instant::now(),
            self.user_blocks_written.load(Ordering::Relaxed),
            self.written_blocks(),
        ));
    }

    /// Free segments below which user writes are throttled. Every free segment held back
    /// raises the utilization of the rest (and so the cleaner's cost), so these stay small.
    pub(super) fn throttle_start(&self) -> u64 {
        CLEANER_RESERVE_SEGMENTS + 2
    }

    /// Free segments the cleaner works to keep in hand: above the throttle by 1/256 of the
    /// segments, and by at least a flush batch (`cleaner::FLUSH_BATCH`) where that is no
    /// more than 1/16 of them. The cleaner frees its cleaned victims one flush (an
    /// `fdatasync` on a file) per batch, and stops cleaning at the target: with 1 segment
    /// of margin, as a 4 GiB pool had, a batch held 1 or 2 victims, and the flushes cost one
    /// reactor's random writes about 14% (see the README). Pools under 128 segments get less, and
    /// under 32 the old margin of 1.
    pub(super) fn clean_target(&self) -> u64 {
        let segs = self.sb.segment_count;
        let batch = (super::cleaner::FLUSH_BATCH as u64).min(segs / 16);
        self.throttle_start() + (segs / 256).max(batch).max(1)
    }

    /// Whether a user record of `blocks` may be written now (smooth throttling). While free
    /// segments are plenty, always. Below `throttle_start` free segments, a record takes its
    /// blocks from the credit the cleaner earns by freeing space (a victim's dead blocks), so
    /// user writes go at the cleaner's pace: records are held back whole, never shrunk, since
    /// a smaller record costs a header block per fewer writes and so more space to clean.
    /// A pool the cleaner can free nothing in admits everything (the write then fails with
    /// ENOSPC or finds room).
    /// Returns None to hold the record, or the credit it took (to give back if the record
    /// does not go after all).
    #[inline]
    pub(super) fn admit_user_record(&self, blocks: u64) -> Option<u64> {
        if !self.throttled()
            || self.full.load(Ordering::Acquire)
            || self.nothing_to_clean.load(Ordering::Acquire)
        {
            return Some(0);
        }
        let before = self
            .throttle_credit_blocks
            .fetch_sub(blocks as i64, Ordering::AcqRel);
        if before >= blocks as i64 {
            return Some(blocks);
        }
        self.throttle_credit_blocks
            .fetch_add(blocks as i64, Ordering::AcqRel);
        self.throttled_records.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// The cleaner freed `blocks` of room net of what it wrote: user writes may use them.
    /// Credit is capped at two segments, so a throttled pool never bursts far ahead of it.
    pub(super) fn grant_credit(&self, blocks: u64) {
        let cap = 2 * self.seg_blocks as i64;
        let _ =
            self.throttle_credit_blocks
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                    Some((c + blocks as i64).min(cap))
                });
    }

    /// Whether user writes are being throttled now.
    pub fn throttled(&self) -> bool {
        self.cleaner_attached.load(Ordering::Relaxed)
            && (self.usage.free_count() as u64) < self.throttle_start()
    }

    /// `unblend_lsv_get_stats`'s figures for this pool.
    pub fn stats(&self) -> serde_json::Value {
        let segs = self.sb.segment_count;
        let free = self.usage.free_count() as u64;
        let live_blocks: u64 = (0..segs).map(|s| self.usage.live(s) as u64).sum();
        let (table_bytes, mapped): (u64, u64) = {
            let vols = self.volumes.read().unwrap_or_else(|e| e.into_inner());
            vols.values()
                .map(|v| (v.1.memory_bytes(), v.1.mapped_blocks()))
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
        };
        let user = self.user_blocks_written.load(Ordering::Relaxed);
        let log = self.log_blocks_written.load(Ordering::Relaxed);
        let cleaner = self.cleaner_blocks_written.load(Ordering::Relaxed);
        let cp = self.checkpoint_blocks_written.load(Ordering::Relaxed);
        let written = self.written_blocks();
        let (minute_user, minute_written, minute_s) = {
            let h = self.wa_history.lock().unwrap_or_else(|e| e.into_inner());
            match (h.front(), h.back()) {
                (Some(a), Some(b)) => (b.1 - a.1, b.2 - a.2, (b.0 - a.0).as_secs_f64()),
                _ => (0, 0, 0.0),
            }
        };
        let uptime_s = self.opened.elapsed().as_secs_f64();
        let b = BLOCK_BYTES as u64;
        serde_json::json!({
            "name": self.name,
            "segment_bytes": self.sb.segment_bytes,
            "segments": segs,
            "free_segments": free,
            "used_segments": segs - free,
            "cleaned_segments_awaiting_checkpoint": self.usage.count_in(SegmentState::Cleaned),
            "live_bytes": live_blocks * b,
            "user_bytes_written": user * b,
            "log_bytes_written": log * b,
            "user_records_written": self.records_written.load(Ordering::Relaxed),
            "cleaner_bytes_written": cleaner * b,
            "checkpoint_bytes_written": cp * b,
            "write_amplification": Self::amplification(user, written),
            "write_amplification_last_minute": Self::amplification(minute_user, minute_written),
            "last_minute_window_s": minute_s,
            "cleaner": {
                "attached": self.cleaner_attached.load(Ordering::Relaxed),
                "policy": self.usage.policy().as_str(),
                "segments_cleaned": self.segments_cleaned.load(Ordering::Relaxed),
                "segments_cleaned_unread": self.segments_cleaned_unread.load(Ordering::Relaxed),
                "bytes_read": self.cleaner_blocks_read.load(Ordering::Relaxed) * b,
                "segments_read_in_parts": self.segments_read_in_parts.load(Ordering::Relaxed),
                "segments_read_from_summary": self.segments_read_from_summary.load(Ordering::Relaxed),
                "bytes_moved_per_s": if uptime_s > 0.0 { cleaner as f64 * b as f64 / uptime_s } else { 0.0 },
            },
            "throttle": {
                "active": self.throttled(),
                "credit_bytes": self.throttle_credit_blocks.load(Ordering::Relaxed).max(0) as u64 * b,
                "records_held": self.throttled_records.load(Ordering::Relaxed),
                "start_below_free_segments": self.throttle_start(),
                "pool_full": self.full.load(Ordering::Relaxed),
            },
            "checkpoint": {
                "generation": self.checkpoint_gen.load(Ordering::Relaxed),
                "complete_seq": self.checkpoint_seq.load(Ordering::Relaxed),
                "last_bytes": self.last_checkpoint_bytes.load(Ordering::Relaxed),
                "log_bytes_since": self.log_blocks_since_checkpoint() * BLOCK_BYTES as u64,
                "log_trigger_bytes": super::cleaner::checkpoint_log_spacing_bytes(
                    self.sb.pool_bytes,
                    self.last_checkpoint_bytes.load(Ordering::Relaxed),
                ),
                "min_spacing_bytes": super::cleaner::checkpoint_min_spacing_bytes(
                    self.last_checkpoint_bytes.load(Ordering::Relaxed),
                ),
                "begun_for": serde_json::Value::Object(CheckpointReason::ALL.iter().map(|r| {
                    let n = self.checkpoints_begun_for[*r as usize].load(Ordering::Relaxed);
                    (r.as_str().to_string(), serde_json::json!(n))
                }).collect()),
                "walk_pieces_last": self.checkpoint_walk_pieces.load(Ordering::Relaxed),
                "overlapping_writes": self.checkpoints_overlapping_writes.load(Ordering::Relaxed),
                "overlapping_cleaning": self.checkpoints_overlapping_cleaning.load(Ordering::Relaxed),
            },
            "journal": {
                "slots": self.journal.as_ref().map_or(0, |j| j.slots()),
                "uncovered_entries": self.journal.as_ref().map_or(0, |j| j.uncovered(self.reusable_seq())),
                "full_waits": self.journal_full_waits.load(Ordering::Relaxed),
                "bytes_written": self.journal_blocks_written.load(Ordering::Relaxed) * BLOCK_BYTES as u64,
            },
            "recovery": {
                "segments_read": self.recovery_segments_read.load(Ordering::Relaxed),
                "log_bytes_replayed": self.recovery_log_blocks.load(Ordering::Relaxed) * BLOCK_BYTES as u64,
                "segments_probed": self.recovery_segments_probed.load(Ordering::Relaxed),
            },
            "extent_table_bytes": table_bytes,
            "segment_summary_bytes": self.summary_bytes(),
            "mapped_blocks": mapped,
            "extent_table_bytes_per_mapped_block": if mapped == 0 { serde_json::Value::Null } else { serde_json::json!(table_bytes as f64 / mapped as f64) },
        })
    }

    /// Whether user records are written with FUA (see `volume.rs`).
    #[inline]
    pub fn fua_records(&self) -> bool {
        self.fua_records.load(Ordering::Relaxed)
    }

    pub fn set_fua_records(&self, on: bool) {
        self.fua_records.store(on, Ordering::Relaxed);
    }

    /// Sets the cleaner's victim policy.
    pub fn set_policy(&self, p: super::usage::CleanerPolicy) {
        self.usage.set_policy(p);
    }

    /// Stops the pool's cleaner (the pool is being deleted or the appliance stops).
    pub fn close(&self) {
        // SeqCst: see `LogWriter::commit`.
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Whether the pool was closed (unloaded, destroyed, or at shutdown).
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Counts a volume operation as under way until the guard drops (on whichever thread
    /// does the work): `volume_ops_running` says when none is.
    pub fn begin_volume_op(self: &Arc<Self>) -> VolumeOp {
        self.volume_ops.fetch_add(1, Ordering::AcqRel);
        VolumeOp(self.clone())
    }

    /// Volume operations under way (`begin_volume_op`).
    pub fn volume_ops_running(&self) -> u32 {
        self.volume_ops.load(Ordering::Acquire)
    }

    /// The pool's turn to run a volume operation on a job thread, if no other of its own
    /// runs (they wait for each other on `volume_ops_lock` anyway): so that one pool's long
    /// walks hold one job thread, not all of them. Held until the guard drops.
    pub fn try_volume_job_turn(self: &Arc<Self>) -> Option<VolumeJobTurn> {
        self.volume_job_running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| VolumeJobTurn(self.clone()))
    }

    /// The base bdev's name.
    pub fn base_name(&self) -> &str {
        self.base.bdev.name()
    }

    /// Free segments (SPDK's `free_clusters`).
    pub fn free_segments(&self) -> u64 {
        self.usage.free_count() as u64
    }
}

/// A pool's turn to run a volume operation on a job thread (`LsvPool::try_volume_job_turn`),
/// until dropped.
pub struct VolumeJobTurn(Arc<LsvPool>);

impl Drop for VolumeJobTurn {
    fn drop(&mut self) {
        self.0.volume_job_running.store(false, Ordering::Release);
    }
}

/// A volume operation under way (`LsvPool::begin_volume_op`), until dropped.
pub struct VolumeOp(Arc<LsvPool>);

impl Drop for VolumeOp {
    fn drop(&mut self) {
        let was = self.0.volume_ops.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(was > 0, "volume operations miscounted");
    }
}

/// The pool's name, its volumes, and the grow fence standing (with its volume's id).
pub type VolumeTableView = (String, Vec<VolumeMeta>, Option<(u32, GrowFence)>);

/// Reads and checks the volume table of the pool on `base`.
pub fn read_volume_table(base: &BdevEntry) -> Result<VolumeTableView, PoolError> {
    let mut io = SyncIo::new(base, BLOCK_BYTES)?;
    io.run(IoType::Read, VOLUME_TABLE_OFFSET, BLOCK_BYTES, false)?;
    decode_volume_table(io.bytes(BLOCK_BYTES)).map(|vt| (vt.pool_name, vt.volumes, vt.fence))
}

/// The id of the volume named `name` in a volume table.
fn volume_id(
    vols: &BTreeMap<u32, (VolumeMeta, Arc<ExtentTable>)>,
    name: &str,
) -> Result<u32, PoolError> {
    vols.iter()
        .find(|(_, v)| v.0.name == name)
        .map(|(id, _)| *id)
        .ok_or_else(|| PoolError::NoSuchVolume(name.to_string()))
}

/// What a pool on `base` is, read without opening it: its uuid and its name (from the
/// superblock and the volume table). None if `base` holds no pool (no valid superblock); an
/// error if it cannot be read, or its volume table is damaged (opening it would fail too).
pub fn peek_pool(base: &BdevEntry) -> Result<Option<(Uuid, String)>, PoolError> {
    let Some((sb, mut io)) = read_superblock(base)? else {
        return Ok(None);
    };
    io.run(IoType::Read, VOLUME_TABLE_OFFSET, BLOCK_BYTES, false)?;
    let vt = decode_volume_table(io.bytes(BLOCK_BYTES))?;
    Ok(Some((sb.uuid, vt.pool_name)))
}

/// `base`'s superblock, if it holds a valid one, and the I/O it was read with; an error if it
/// cannot be read.
fn read_superblock(base: &BdevEntry) -> Result<Option<(Superblock, SyncIo)>, PoolError> {
    if base.bdev.block_size() as usize != BLOCK_BYTES {
        return Ok(None);
    }
    let bytes = base.bdev.num_blocks() * BLOCK_BYTES as u64;
    let mut io = SyncIo::new(base, SUPERBLOCK_BYTES)?;
    io.run(IoType::Read, 0, SUPERBLOCK_BYTES, false)?;
    Ok(Superblock::decode(io.bytes(SUPERBLOCK_BYTES), bytes)
        .ok()
        .map(|sb| (sb, io)))
}

/// Destroys pool `uuid` on `base` (`bdev_lvol_delete_lvstore`): zeroes its superblock, with
/// FUA and then a flush, so that examine and the offline tools find no pool there any more.
/// Call it only once nothing of the pool writes the base (its cleaner has stopped). The rest
/// of the pool stays on the device, unread: a pool formatted there later numbers its records
/// from another start (`first_seq`), so none of the old records joins its log. Returns false,
/// writing nothing, if `base` no longer starts with that pool's superblock.
pub fn erase_superblock(base: &BdevEntry, uuid: Uuid) -> Result<bool, PoolError> {
    let Some((sb, mut io)) = read_superblock(base)? else {
        return Ok(false);
    };
    if sb.uuid != uuid {
        return Ok(false);
    }
    io.bytes_mut(SUPERBLOCK_BYTES).fill(0);
    io.run(IoType::Write, 0, SUPERBLOCK_BYTES, true)?;
    io.run(IoType::Flush, 0, 0, false)?;
    Ok(true)
}

/// True when `base` starts with an unblend pool superblock (a cheap check before `open`).
pub fn holds_pool(base: &BdevEntry) -> bool {
    matches!(read_superblock(base), Ok(Some(_)))
}
