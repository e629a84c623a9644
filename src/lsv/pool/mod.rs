//! A pool: the superblock, the volume table, the segment usage table, the global record
//! sequence and every volume's extent table, on one base bdev. Opening a pool recovers it by
//! replaying its log.
//!
//! - `volumes.rs`: the volume table on disk, and volumes' create, resize and delete;
//! - `recovery.rs`: what opening a pool runs;
//! - `summary.rs`: the segment summary in memory;
//! - `sync_io.rs`: blocking I/O for the control path.

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

mod volumes;
use volumes::{decode_volume_table, encode_volume_table, standing_fence, VT_NAME_BYTES};
pub use volumes::{read_volume_table, VolumeTableView, MAX_VOLUMES};
#[cfg(test)]
pub(super) use volumes::{FENCE_AT, NEXT_ID_AT, VT_ENTRY_BYTES};

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
/// is its seed) and from what the device's first two blocks held (an earlier pool's
/// superblock and volume table, which a destroy leaves), so that a seed's run, whose
/// checkpoints' sizes follow the sequence numbers (`first_seq`), is the same every time, and
/// a pool formatted over another on the same disk, destroyed or not, still gets another
/// uuid, as outside tests (an earlier pool's segment summaries, never erased, are told apart
/// by it).
fn new_pool_uuid(base: &BdevEntry) -> Result<Uuid, PoolError> {
    #[cfg(test)]
    {
        let mut io = SyncIo::new(base, 2 * BLOCK_BYTES)?;
        io.run(IoType::Read, 0, 2 * BLOCK_BYTES, false)?;
        let before = crc32c::crc32c(io.bytes(2 * BLOCK_BYTES)) as u128;
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
    /// Log writers' segment-summary writes in flight (`begin_summary_write`).
    summary_writes: AtomicU64,
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
        let mut version = super::format::FORMAT_VERSION;
        #[cfg(test)]
        if TEST_JOURNAL_SLOTS.with(|t| t.get()) == Some(0) {
            version = super::format::OLDEST_FORMAT_VERSION;
        }
        let sb =
            Superblock::plan_for_version(bytes, segment_bytes, new_pool_uuid(&base)?, version)?;
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
            summary_writes: AtomicU64::new(0),
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

    /// A log writer is about to submit a segment summary's write: counted until
    /// `end_summary_write`, unless the pool is closing (false: nothing more of it may land
    /// on its base). The count goes up before `closing` is read, and the closer reads the
    /// count after setting it (`writes_stopped`): one of them sees the other.
    pub(in crate::lsv) fn begin_summary_write(&self) -> bool {
        self.summary_writes.fetch_add(1, Ordering::SeqCst);
        if self.closing.load(Ordering::SeqCst) {
            self.end_summary_write();
            return false;
        }
        true
    }

    /// A write `begin_summary_write` counted is over (done, failed, or never submitted).
    pub(in crate::lsv) fn end_summary_write(&self) {
        let was = self.summary_writes.fetch_sub(1, Ordering::SeqCst);
        debug_assert!(was > 0, "summary writes miscounted");
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
