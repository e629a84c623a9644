//! A pool: the superblock, the volume table, the segment usage table, the global record
//! sequence and every volume's extent table, on one base bdev. Opening a pool recovers it by
//! replaying its log.
//!
//! ## Volume table (format version 1)
//!
//! The first 4 KiB block of checkpoint slot A (`metadata_offset`), little endian:
//!
//! ```text
//!    0  magic "UVT1"   4  count u32
//!    8  entries, 80 bytes each: id u32, name_len u8, 3 zero, num_blocks u64, uuid 16 bytes,
//!       name 48 bytes (UTF-8, zero padded)
//! 4000  pool name 48 bytes (UTF-8, zero padded), 4048 its length u8
//! 4092  crc32c of bytes 0..4092
//! ```
//!
//! It is rewritten (with FUA) whenever a volume is created or deleted.
//!
//! ## Recovery (this version)
//!
//! Every segment's record chain is read from its start and checked (header and data
//! checksums, the record naming this segment); a segment's chain ends at the first record that
//! fails. All records are then replayed in sequence order into the extent tables, which also
//! rebuilds the live counts. Segments that hold records are sealed; new writes go to free
//! segments. There is no checkpoint yet, so recovery reads every segment's log.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use thiserror::Error;
use uuid::Uuid;

use super::extent_table::{ExtentTable, Mapping, Update};
use super::format::{FormatError, Superblock, SUPERBLOCK_BYTES};
use super::record::{EntryOp, RecordHeader, BLOCK_BYTES};
use super::usage::{SegmentState, UsageDeltas, UsageTable};
use crate::bdev::{BdevEntry, ChannelContext, IoChannel, IoRequest, IoStatus, IoType, IoVec};
use crate::mem::DmaRegion;

const VT_MAGIC: &[u8; 4] = b"UVT1";
const VT_ENTRY_BYTES: usize = 80;
const VT_NAME_BYTES: usize = 48;
/// Volumes one pool holds (volume table version 1 fits them in one block).
pub const MAX_VOLUMES: usize = (POOL_NAME_AT - 8) / VT_ENTRY_BYTES;
const POOL_NAME_AT: usize = 4000;

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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMeta {
    pub id: u32,
    pub name: String,
    pub uuid: Uuid,
    pub num_blocks: u64,
}

/// Blocking I/O on the base bdev for the control path (format, open, volume table).
struct SyncIo {
    ch: IoChannel,
    buf: DmaRegion,
}

impl SyncIo {
    fn new(base: &BdevEntry, bytes: usize) -> Result<SyncIo, PoolError> {
        let ch = base
            .open_channel(&ChannelContext {
                queue_depth: 4,
                buffers: None,
            })
            .map_err(|e| PoolError::Base(e.to_string()))?;
        let buf = DmaRegion::new(bytes, false).map_err(|e| PoolError::Base(e.to_string()))?;
        Ok(SyncIo { ch, buf })
    }

    fn run(
        &mut self,
        io_type: IoType,
        offset: u64,
        len: usize,
        fua: bool,
    ) -> Result<(), PoolError> {
        assert!(
            len <= self.buf.len()
                && len.is_multiple_of(BLOCK_BYTES)
                && offset.is_multiple_of(BLOCK_BYTES as u64)
        );
        // SAFETY: the region is ours and untouched while the request runs (we wait for it).
        let iov = unsafe { IoVec::from_raw(self.buf.as_ptr(), len) };
        let iovs = [iov];
        let data = io_type == IoType::Read || io_type == IoType::Write;
        self.ch
            .submit(
                &IoRequest {
                    io_type,
                    offset_blocks: if data { offset / BLOCK_BYTES as u64 } else { 0 },
                    num_blocks: if data { (len / BLOCK_BYTES) as u64 } else { 0 },
                    iovs: if data { &iovs } else { &[] },
                    fua,
                    tag: 0,
                },
                0,
            )
            .map_err(|e| PoolError::Io(e.to_string()))?;
        let mut out = Vec::with_capacity(4);
        loop {
            self.ch.poll(0, &mut out);
            if let Some(c) = out.pop() {
                return match c.status {
                    IoStatus::Success => Ok(()),
                    IoStatus::Failed(errno) => Err(PoolError::Io(
                        std::io::Error::from_raw_os_error(errno).to_string(),
                    )),
                };
            }
            std::thread::yield_now();
        }
    }

    fn bytes(&self, len: usize) -> &[u8] {
        // SAFETY: no request is running; the region is at least `len` bytes.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr(), len) }
    }

    fn bytes_mut(&mut self, len: usize) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.buf.as_ptr(), len) }
    }
}

/// Which write's data lives where in one segment: runs of blocks, each with the sequence
/// number of the write that produced the data, appended in block order by the segment's only
/// writer and read lock-free by anyone (the extent table's `seq_of`).
struct SegmentSummary {
    starts: Box<[AtomicU64]>,
    seqs: Box<[AtomicU64]>,
    len: AtomicU32,
}

impl SegmentSummary {
    fn new(capacity: usize) -> SegmentSummary {
        SegmentSummary {
            starts: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            seqs: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            len: AtomicU32::new(0),
        }
    }

    /// Appends a run starting at pool block `start` (block order: only the owner appends).
    fn push(&self, start: u64, seq: u64) {
        let n = self.len.load(Ordering::Relaxed) as usize;
        assert!(n < self.starts.len(), "segment summary overflow");
        debug_assert!(n == 0 || self.starts[n - 1].load(Ordering::Relaxed) < start);
        self.starts[n].store(start, Ordering::Relaxed);
        self.seqs[n].store(seq, Ordering::Relaxed);
        self.len.store(n as u32 + 1, Ordering::Release);
    }

    fn seq_at(&self, pba: u64) -> u64 {
        let n = self.len.load(Ordering::Acquire) as usize;
        // The last run starting at or before `pba`.
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.starts[mid].load(Ordering::Relaxed) <= pba {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        debug_assert!(lo > 0, "no summary run covers block {pba}");
        if lo == 0 {
            return 0;
        }
        self.seqs[lo - 1].load(Ordering::Relaxed)
    }
}

pub struct LsvPool {
    pub name: String,
    pub sb: Superblock,
    pub(super) base: BdevEntry,
    pub(super) usage: UsageTable,
    /// Allocated when a segment first takes a record, so an empty pool costs nothing here.
    summaries: Box<[std::sync::OnceLock<SegmentSummary>]>,
    seg_blocks: usize,
    /// Records submitted and not yet applied, over all channels.
    records_in_flight: AtomicU64,
    /// Since the pool was opened: blocks of user data written, and blocks the log took for
    /// them (data plus record headers). Their ratio is the write amplification.
    user_blocks_written: AtomicU64,
    log_blocks_written: AtomicU64,
    next_seq: AtomicU64,
    volumes: RwLock<BTreeMap<u32, (VolumeMeta, Arc<ExtentTable>)>>,
}

fn encode_volume_table(pool_name: &str, vols: &[VolumeMeta]) -> Vec<u8> {
    debug_assert!(pool_name.len() <= VT_NAME_BYTES && vols.len() <= MAX_VOLUMES);
    let mut b = vec![0u8; BLOCK_BYTES];
    b[POOL_NAME_AT..POOL_NAME_AT + pool_name.len()].copy_from_slice(pool_name.as_bytes());
    b[POOL_NAME_AT + VT_NAME_BYTES] = pool_name.len() as u8;
    b[0..4].copy_from_slice(VT_MAGIC);
    b[4..8].copy_from_slice(&(vols.len() as u32).to_le_bytes());
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

fn decode_volume_table(b: &[u8]) -> Result<(String, Vec<VolumeMeta>), PoolError> {
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
            Ok(VolumeMeta {
                id: u32::from_le_bytes(b[o..o + 4].try_into().expect("4")),
                num_blocks: u64::from_le_bytes(b[o + 8..o + 16].try_into().expect("8")),
                uuid: Uuid::from_slice(&b[o + 16..o + 32]).expect("16"),
                name: String::from_utf8(b[o + 32..o + 32 + len].to_vec())
                    .map_err(|_| PoolError::VolumeTable("name is not UTF-8"))?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((pool_name, vols))
}

impl LsvPool {
    /// Formats a new pool on `base`: superblock, an empty volume table, and the first block of
    /// every segment zeroed so that no record of an earlier life is replayed.
    pub fn create(
        name: &str,
        base: BdevEntry,
        segment_bytes: u64,
    ) -> Result<Arc<LsvPool>, PoolError> {
        let bs = base.bdev.block_size();
        if bs as usize != BLOCK_BYTES {
            return Err(PoolError::BlockSize(bs));
        }
        let bytes = base.bdev.num_blocks() * bs as u64;
        let sb = Superblock::plan(bytes, segment_bytes, Uuid::new_v4())?;
        let mut io = SyncIo::new(&base, BLOCK_BYTES)?;
        io.bytes_mut(BLOCK_BYTES).fill(0);
        for s in 0..sb.segment_count {
            io.run(IoType::Write, sb.segment_offset(s), BLOCK_BYTES, false)?;
        }
        if name.is_empty() || name.len() > VT_NAME_BYTES || name.contains('/') {
            return Err(PoolError::BadName(name.to_string()));
        }
        let vt = encode_volume_table(name, &[]);
        io.bytes_mut(BLOCK_BYTES).copy_from_slice(&vt);
        io.run(IoType::Write, sb.metadata_offset, BLOCK_BYTES, false)?;
        io.bytes_mut(SUPERBLOCK_BYTES).copy_from_slice(&sb.encode());
        io.run(IoType::Write, 0, SUPERBLOCK_BYTES, false)?;
        io.run(IoType::Flush, 0, 0, false)?;
        drop(io);
        // Just formatted: there is no log to replay.
        Self::load(base, false)
    }

    /// Opens an existing pool (named as it was created) and recovers it from its log.
    pub fn open_named(base: BdevEntry) -> Result<Arc<LsvPool>, PoolError> {
        Self::load(base, true)
    }

    fn load(base: BdevEntry, replay: bool) -> Result<Arc<LsvPool>, PoolError> {
        let bs = base.bdev.block_size();
        if bs as usize != BLOCK_BYTES {
            return Err(PoolError::BlockSize(bs));
        }
        let bytes = base.bdev.num_blocks() * bs as u64;
        let mut io = SyncIo::new(&base, BLOCK_BYTES * 2)?;
        io.run(IoType::Read, 0, SUPERBLOCK_BYTES, false)?;
        let sb = Superblock::decode(io.bytes(SUPERBLOCK_BYTES), bytes)?;
        io.run(IoType::Read, sb.metadata_offset, BLOCK_BYTES, false)?;
        let (name, metas) = decode_volume_table(io.bytes(BLOCK_BYTES))?;
        drop(io);
        let seg_blocks = (sb.segment_bytes / BLOCK_BYTES as u64) as usize;
        let pool = LsvPool {
            summaries: (0..sb.segment_count)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            seg_blocks,
            records_in_flight: AtomicU64::new(0),
            user_blocks_written: AtomicU64::new(0),
            log_blocks_written: AtomicU64::new(0),
            name,
            usage: UsageTable::new(
                sb.segment_count,
                (sb.segment_bytes / BLOCK_BYTES as u64) as u32,
            ),
            sb,
            base,
            next_seq: AtomicU64::new(1),
            volumes: RwLock::new(
                metas
                    .into_iter()
                    .map(|m| {
                        let t = Arc::new(ExtentTable::new(m.num_blocks));
                        (m.id, (m, t))
                    })
                    .collect(),
            ),
        };
        if replay {
            pool.recover()?;
        }
        Ok(Arc::new(pool))
    }

    /// The block address (in 4 KiB pool blocks) where segment `seg` starts.
    pub(super) fn segment_first_block(&self, seg: u64) -> u64 {
        self.sb.segment_offset(seg) / BLOCK_BYTES as u64
    }

    /// The segment a pool block address falls in.
    pub(super) fn segment_of(&self, pba: u64) -> u64 {
        (pba * BLOCK_BYTES as u64 - self.sb.first_segment_offset) / self.sb.segment_bytes
    }

    /// A sequence number for a new record, which is now in flight (until `record_done`).
    pub(super) fn next_seq(&self) -> u64 {
        self.records_in_flight.fetch_add(1, Ordering::AcqRel);
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn record_done(&self) {
        self.records_in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Notes, before the record is written, where each of its writes' data will live.
    pub(super) fn summarize(&self, h: &RecordHeader, first_data_pba: u64) {
        let seg = h.segment as usize;
        let mut pba = first_data_pba;
        for e in &h.entries {
            if e.op == EntryOp::Write {
                self.summaries[seg]
                    .get_or_init(|| SegmentSummary::new(self.seg_blocks))
                    .push(pba, h.seq);
                pba += e.num_blocks as u64;
            }
        }
    }

    /// The sequence number of the write whose data is at pool block `pba`.
    pub(super) fn seq_of(&self, pba: u64) -> u64 {
        match self.summaries[self.segment_of(pba) as usize].get() {
            Some(summary) => summary.seq_at(pba),
            None => {
                debug_assert!(
                    false,
                    "block {pba} is mapped but its segment has no summary"
                );
                0
            }
        }
    }

    /// Applies one record's entries to the extent tables (replay and live I/O share this).
    /// `first_data_pba` is where the record's data starts.
    /// `table`: the volume every entry belongs to (a live channel's records hold one volume),
    /// or None to look each entry's volume up (replay). Entries read from disk are bounded
    /// here: blocks past a volume's end, or of a volume no longer in the table, are skipped.
    pub(super) fn apply_record(
        &self,
        h: &RecordHeader,
        first_data_pba: u64,
        deltas: &mut UsageDeltas,
        live: bool,
        table: Option<&ExtentTable>,
    ) {
        // Live I/O: a record older than this one may still be in flight (ours counts once).
        let older_in_flight = live && self.records_in_flight.load(Ordering::Acquire) > 1;
        let seq_of = |a: u64| self.seq_of(a);
        let mut pba = first_data_pba;
        for e in &h.entries {
            let looked_up;
            let table = match table {
                Some(t) => t,
                None => {
                    let vols = self.volumes.read().unwrap_or_else(|e| e.into_inner());
                    looked_up = vols.get(&(e.volume as u32)).map(|v| v.1.clone());
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
            for b in 0..e.num_blocks as u64 {
                let Some(lba) = e.lba.checked_add(b).filter(|&l| l < table.num_blocks()) else {
                    break;
                };
                let addr = (e.op == EntryOp::Write).then_some(pba + b);
                if let Update::Applied { previous } =
                    table.update(lba, addr, h.seq, &seq_of, older_in_flight)
                {
                    if let Mapping::At(old) = previous {
                        self.add_delta(deltas, self.segment_of(old), -1);
                    }
                    if let Some(a) = addr {
                        self.add_delta(deltas, self.segment_of(a), 1);
                    }
                }
            }
            if e.op == EntryOp::Write {
                pba += e.num_blocks as u64;
            }
        }
    }

    fn add_delta(&self, deltas: &mut UsageDeltas, seg: u64, d: i32) {
        if !deltas.add(seg, d) {
            self.usage.apply(deltas);
            assert!(deltas.add(seg, d));
        }
    }

    pub(super) fn apply_deltas(&self, deltas: &mut UsageDeltas) {
        self.usage.apply(deltas);
    }

    fn recover(&self) -> Result<(), PoolError> {
        let seg_blocks = self.sb.segment_bytes as usize / BLOCK_BYTES;
        let mut io = SyncIo::new(&self.base, self.sb.segment_bytes as usize)?;
        // (seq, segment, first data pba, header)
        let mut records: Vec<(u64, u64, u64, RecordHeader)> = Vec::new();
        let mut used = Vec::new();
        for seg in 0..self.sb.segment_count {
            // A segment whose first block holds no record has no log: one block read tells.
            io.run(
                IoType::Read,
                self.sb.segment_offset(seg),
                BLOCK_BYTES,
                false,
            )?;
            let magic = u32::from_le_bytes(io.bytes(4).try_into().expect("4 bytes"));
            if magic != super::record::RECORD_MAGIC {
                continue;
            }
            io.run(
                IoType::Read,
                self.sb.segment_offset(seg),
                self.sb.segment_bytes as usize,
                false,
            )?;
            let bytes = io.bytes(self.sb.segment_bytes as usize);
            let mut at = 0usize;
            let mut any = false;
            while at < seg_blocks {
                let Ok(h) = RecordHeader::decode(&bytes[at * BLOCK_BYTES..]) else {
                    break;
                };
                let end = at + h.total_blocks() as usize;
                if h.segment != seg || end > seg_blocks {
                    break;
                }
                let data = &bytes[(at + h.header_blocks as usize) * BLOCK_BYTES..end * BLOCK_BYTES];
                if h.verify_data(data).is_err() {
                    break;
                }
                let first_data =
                    self.segment_first_block(seg) + (at + h.header_blocks as usize) as u64;
                self.summarize(&h, first_data);
                records.push((h.seq, seg, first_data, h));
                any = true;
                at = end;
            }
            if any {
                used.push(seg);
            }
        }
        records.sort_by_key(|r| r.0);
        let mut deltas = UsageDeltas::default();
        for (_, _, first_data, h) in &records {
            self.apply_record(h, *first_data, &mut deltas, false, None);
        }
        self.usage.apply(&mut deltas);
        for seg in used {
            let opened = self
                .usage
                .transition(seg, SegmentState::Free, SegmentState::Open);
            debug_assert!(opened);
            self.usage
                .transition(seg, SegmentState::Open, SegmentState::Sealed);
        }
        let last = records.last().map_or(0, |r| r.0);
        self.next_seq.store(last + 1, Ordering::Relaxed);
        tracing::info!(pool = %self.name, records = records.len(), next_seq = last + 1, "pool recovered");
        Ok(())
    }

    fn write_volume_table(
        &self,
        vols: &BTreeMap<u32, (VolumeMeta, Arc<ExtentTable>)>,
    ) -> Result<(), PoolError> {
        let metas: Vec<VolumeMeta> = vols.values().map(|v| v.0.clone()).collect();
        let mut io = SyncIo::new(&self.base, BLOCK_BYTES)?;
        io.bytes_mut(BLOCK_BYTES)
            .copy_from_slice(&encode_volume_table(&self.name, &metas));
        io.run(IoType::Write, self.sb.metadata_offset, BLOCK_BYTES, true)
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
        let mut vols = self.volumes.write().unwrap_or_else(|e| e.into_inner());
        if vols.values().any(|v| v.0.name == name) {
            return Err(PoolError::VolumeExists(name.to_string()));
        }
        if vols.len() >= MAX_VOLUMES {
            return Err(PoolError::TooManyVolumes);
        }
        let id = (1..)
            .find(|i| !vols.contains_key(i))
            .expect("fewer than u32::MAX volumes");
        let meta = VolumeMeta {
            id,
            name: name.to_string(),
            uuid: Uuid::new_v4(),
            num_blocks,
        };
        let table = Arc::new(ExtentTable::new(num_blocks));
        vols.insert(id, (meta.clone(), table.clone()));
        if let Err(e) = self.write_volume_table(&vols) {
            vols.remove(&id);
            return Err(e);
        }
        Ok((meta, table))
    }

    pub fn volume(&self, name: &str) -> Option<(VolumeMeta, Arc<ExtentTable>)> {
        self.volumes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|v| v.0.name == name)
            .cloned()
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
    /// Deletes a volume: it leaves the volume table at once; its blocks become garbage for the
    /// cleaner. Channels still open on it keep working until they close.
    pub fn delete_volume(&self, name: &str) -> Result<(), PoolError> {
        let mut vols = self.volumes.write().unwrap_or_else(|e| e.into_inner());
        let id = vols
            .iter()
            .find(|(_, v)| v.0.name == name)
            .map(|(id, _)| *id)
            .ok_or_else(|| PoolError::NoSuchVolume(name.to_string()))?;
        let removed = vols.remove(&id).expect("found above");
        if let Err(e) = self.write_volume_table(&vols) {
            vols.insert(id, removed);
            return Err(e);
        }
        Ok(())
    }

    /// Counts a record written for the log (live I/O only).
    pub(super) fn count_record(&self, h: &RecordHeader) {
        self.user_blocks_written
            .fetch_add(h.data_blocks as u64, Ordering::Relaxed);
        self.log_blocks_written
            .fetch_add(h.total_blocks() as u64, Ordering::Relaxed);
    }

    /// `unblend_lsv_get_stats`'s figures for this pool.
    pub fn stats(&self) -> serde_json::Value {
        let segs = self.sb.segment_count;
        let free = self.usage.free_count() as u64;
        let live_blocks: u64 = (0..segs).map(|s| self.usage.live(s) as u64).sum();
        let vols = self.volumes.read().unwrap_or_else(|e| e.into_inner());
        let (table_bytes, mapped): (u64, u64) = vols
            .values()
            .map(|v| (v.1.memory_bytes(), v.1.mapped_blocks()))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        let user = self.user_blocks_written.load(Ordering::Relaxed);
        let log = self.log_blocks_written.load(Ordering::Relaxed);
        serde_json::json!({
            "name": self.name,
            "segment_bytes": self.sb.segment_bytes,
            "segments": segs,
            "free_segments": free,
            "used_segments": segs - free,
            "live_bytes": live_blocks * BLOCK_BYTES as u64,
            "user_bytes_written": user * BLOCK_BYTES as u64,
            "log_bytes_written": log * BLOCK_BYTES as u64,
            "write_amplification": if user == 0 { serde_json::Value::Null } else { serde_json::json!(log as f64 / user as f64) },
            "extent_table_bytes": table_bytes,
            "mapped_blocks": mapped,
            "extent_table_bytes_per_mapped_block": if mapped == 0 { serde_json::Value::Null } else { serde_json::json!(table_bytes as f64 / mapped as f64) },
        })
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

/// True when `base` starts with an unblend pool superblock (a cheap check before `open`).
pub fn holds_pool(base: &BdevEntry) -> bool {
    if base.bdev.block_size() as usize != BLOCK_BYTES {
        return false;
    }
    let bytes = base.bdev.num_blocks() * BLOCK_BYTES as u64;
    let Ok(mut io) = SyncIo::new(base, SUPERBLOCK_BYTES) else {
        return false;
    };
    io.run(IoType::Read, 0, SUPERBLOCK_BYTES, false).is_ok()
        && Superblock::decode(io.bytes(SUPERBLOCK_BYTES), bytes).is_ok()
}
