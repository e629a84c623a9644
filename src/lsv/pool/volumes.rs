//! A pool's volumes: their table on disk, and creating, resizing and deleting them.
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

use super::*;

const VT_MAGIC: &[u8; 4] = b"UVT1";
pub(in crate::lsv) const VT_ENTRY_BYTES: usize = 80;
pub(super) const VT_NAME_BYTES: usize = 48;
/// Volumes one pool holds (volume table version 1 fits them in one block).
pub const MAX_VOLUMES: usize = (POOL_NAME_AT - 8) / VT_ENTRY_BYTES;
const POOL_NAME_AT: usize = 4000;
pub(in crate::lsv) const NEXT_ID_AT: usize = POOL_NAME_AT + VT_NAME_BYTES + 4;
/// The grow fence: volume id, sequence number, floor.
pub(in crate::lsv) const FENCE_AT: usize = 3968;
const _: () =
    assert!(8 + MAX_VOLUMES * VT_ENTRY_BYTES <= FENCE_AT && FENCE_AT + 24 <= POOL_NAME_AT);

/// A decoded volume table.
pub(super) struct VolumeTable {
    pub(super) pool_name: String,
    pub(super) volumes: Vec<VolumeMeta>,
    /// The id the next volume gets.
    pub(super) next_volume_id: u32,
    /// The last grow's fence and its volume, while it stands.
    pub(super) fence: Option<(u32, GrowFence)>,
}

pub(super) fn encode_volume_table(
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

pub(super) fn decode_volume_table(b: &[u8]) -> Result<VolumeTable, PoolError> {
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
pub(super) fn standing_fence(
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
    /// `LogWriter::commit`), no record is in flight, and no segment summary's write
    /// (`begin_summary_write`). Its cleaner, and volume operations, are the caller's to wait
    /// for (`Pools::cleaner_running`, `volume_ops_running`).
    pub fn writes_stopped(&self) -> bool {
        debug_assert!(self.is_closing());
        // The count first: a commit that ended before it was read numbered its records
        // before, and the in-flight count then shows them.
        self.committing.load(Ordering::SeqCst) == 0
            && self.records_in_flight.load(Ordering::SeqCst) == 0
            && self.summary_writes.load(Ordering::SeqCst) == 0
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
    pub(in crate::lsv) fn note_cut_relocation(&self, seq: u64) {
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
    pub(in crate::lsv) fn dead_blocks_ready(&self) -> bool {
        self.complete_seq_now() + 1 >= self.dead_blocks_after_seq.load(Ordering::SeqCst)
    }

    /// Takes deleted volumes' blocks off their segments' live counts (see `delete_volume`).
    pub(in crate::lsv) fn apply_dead_blocks(&self, dead: &mut BTreeMap<u64, u32>) {
        let mut deltas = UsageDeltas::default();
        for (seg, n) in std::mem::take(dead) {
            self.add_delta(&mut deltas, seg, -(n as i32));
        }
        self.apply_deltas(&mut deltas);
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
