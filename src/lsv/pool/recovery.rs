//! Recovery: what opening a pool does, after a crash or a clean shutdown.
//!
//! The newest checkpoint whose header and body check out is loaded (the other slot if the
//! newest is damaged; neither: the pool refuses to open). Then the log written since is read:
//! only segments that were open at the checkpoint, written after it began, or free then (one
//! block read tells whether a free one was reused), so recovery time follows the log written
//! since the checkpoint, not the pool's size. A segment's chain of records (header and data
//! checksums, this segment, one epoch, rising sequence numbers) ends at the first record that
//! fails. A checkpoint entry pointing at a block that a later use of its segment overwrote
//! (the block was moved or replaced after the checkpoint, by a record in the replay) is held
//! as its sequence number alone until that record replaces it. Sequence numbers then jump by
//! `SEQ_GAP_AFTER_RECOVERY`, past any number a record
//! torn at the crash may carry, so a stale record can never pass for part of a new chain.
//! Records after the checkpoint are replayed in sequence order; every entry carries the
//! sequence number of the write that made its data, and an entry replaces a mapping only if
//! that number is at least the mapping's. Live counts are then counted from the map itself.

use super::*;

/// A checkpoint read back and checked: its header, segment rows and body (whose entries
/// recovery decodes again as it applies them: the body is smaller than its entries decoded,
/// about 7 bytes against 40 for a block written at random).
type LoadedCheckpoint = (CheckpointHeader, Vec<SegmentRow>, CheckpointBody);

/// A checked checkpoint body, in the region it was read into.
struct CheckpointBody {
    region: DmaRegion,
    len: usize,
}

impl CheckpointBody {
    fn bytes(&self) -> &[u8] {
        // SAFETY: the reads into the region are done; it is at least `len` bytes.
        unsafe { std::slice::from_raw_parts(self.region.as_ptr(), self.len) }
    }
}

/// In recovery's map of what each block read holds, a record header block (a sequence
/// number of 0 matches no checkpoint entry).
const HEADER_CONTENT: (u32, u64, u64) = (u32::MAX, u64::MAX, 0);

impl LsvPool {
    /// Recovery: the newest checkpoint whose header and body check out (falling back to the
    /// other slot), then every record written after it, in sequence order.
    pub(super) fn recover(&self) -> Result<(), PoolError> {
        let t0 = Instant::now();
        let slots = [
            self.sb.metadata_offset,
            self.sb.metadata_offset + self.sb.metadata_slot_bytes,
        ];
        // Both headers, then the body of the newest only (the other's only if that fails):
        // a body holds the whole map, and reading two doubled the time to open.
        let mut found: Vec<_> = slots
            .iter()
            .map(|&o| (o, read_checkpoint_header(&self.base, &self.sb, o)))
            .collect();
        found.sort_by_key(|(_, r)| std::cmp::Reverse(r.as_ref().map_or(0, |h| h.generation)));
        let mut damage = Vec::new();
        let mut chosen = None;
        let mut other_seq = 0;
        let mut other_next_seq = 0;
        for (offset, r) in found {
            match r.and_then(|h| {
                if chosen.is_some() {
                    // The older checkpoint: its header says what it covers (its body is
                    // checked when recovery falls back to it).
                    other_seq = h.complete_seq;
                    other_next_seq = h.next_seq;
                    return Ok(());
                }
                chosen = Some(read_checkpoint_body(&self.base, offset, h)?);
                Ok(())
            }) {
                Ok(()) => {}
                Err(e) if e == "no checkpoint here" => {}
                Err(e) => damage.push(format!("slot at {offset}: {e}")),
            }
        }
        let Some((h, rows, body)) = chosen else {
            return Err(PoolError::Corrupt(format!(
                "no valid checkpoint ({})",
                if damage.is_empty() {
                    "both slots empty".to_string()
                } else {
                    damage.join("; ")
                }
            )));
        };
        if !damage.is_empty() {
            tracing::warn!(pool = %self.name, generation = h.generation, "a checkpoint is damaged ({}); recovering from the other one", damage.join("; "));
        }
        let after = h.complete_seq;
        #[cfg(test)]
        if traced(0, u64::MAX) {
            eprintln!(
                "trace: recover from checkpoint {} complete_seq {after}",
                h.generation
            );
        }
        // The log since: segments that were open or written after the checkpoint began are
        // read whole, and so is every segment the journal says was opened for a use begun
        // after it (a cleaned segment may be reused without a new checkpoint). A pool with
        // no journal (version 2), or a damaged one, has the first block of every other
        // segment read instead: it tells whether the segment was (re)used since.
        let mut io = SyncIo::new(&self.base, self.sb.segment_bytes as usize)?;
        let mut records: Vec<(u64, u64, RecordHeader)> = Vec::new();
        // What each block read holds now: (volume, lba, data seq).
        let mut content: std::collections::HashMap<u64, (u32, u64, u64)> =
            std::collections::HashMap::new();
        let mut newest_in = vec![0u64; self.sb.segment_count as usize];
        let mut segments_read = 0u64;
        let mut segments_probed = 0u64;
        // The newest record of a chain left unreplayed (numbers go on above it).
        let mut stale_newest = 0u64;
        // Which segments to read whole, their first blocks read PROBE_BATCH at a time.
        let mut whole = vec![false; self.sb.segment_count as usize];
        for seg in 0..self.sb.segment_count {
            let row = rows[seg as usize];
            whole[seg as usize] = row.state == SegmentState::Open || row.last_seq > after;
        }
        let mut damaged_slots = Vec::new();
        // The journal's intact entries, and whether every slot was intact.
        let (journal_entries, journal_intact) = match &self.journal {
            Some(j) => self.read_journal(&mut io, j, &mut damaged_slots)?,
            None => (Vec::new(), false),
        };
        let journaled = journal_intact.then_some(&journal_entries);
        let probe_all = journaled.is_none();
        // Segments read for the journal alone, and the uses it names in each: a chain there
        // is replayed only if it is one of those uses. (A crash may keep a use's first record
        // and lose its entry; such a segment is left as free, and a later use's entry that
        // lands while that use's first record does not must not revive the old chain.)
        let mut journal_uses: std::collections::HashMap<u64, Vec<u64>> =
            std::collections::HashMap::new();
        // Numbers go on above every intact entry's epoch, damaged journal or not (the slot
        // stays held until a checkpoint covers it).
        let newest_journaled = journal_entries.iter().map(|e| e.epoch).max().unwrap_or(0);
        for e in journaled.into_iter().flatten() {
            if e.epoch > after && !whole[e.segment as usize] {
                journal_uses.entry(e.segment).or_default().push(e.epoch);
            }
        }
        for &seg in journal_uses.keys() {
            whole[seg as usize] = true;
        }
        let mut probe = Vec::with_capacity(PROBE_BATCH);
        for seg in 0..self.sb.segment_count {
            if probe_all && !whole[seg as usize] {
                probe.push(seg);
                segments_probed += 1;
            }
            if probe.len() == PROBE_BATCH || (seg + 1 == self.sb.segment_count && !probe.is_empty())
            {
                let offsets: Vec<u64> = probe.iter().map(|&s| self.sb.segment_offset(s)).collect();
                io.read_blocks(&offsets)?;
                let bytes = io.bytes(probe.len() * BLOCK_BYTES);
                for (i, &s) in probe.iter().enumerate() {
                    // The first block alone: a header may span several (a cleaner's record
                    // of many moves), and checking it whole here would miss that segment.
                    let block = &bytes[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES];
                    whole[s as usize] = RecordHeader::peek(block)
                        .is_some_and(|(seq, segment)| segment == s && seq > after);
                }
                probe.clear();
            }
        }
        for seg in 0..self.sb.segment_count {
            if !whole[seg as usize] {
                continue;
            }
            segments_read += 1;
            let buf = io.buf.as_ptr();
            io.read_into(
                self.sb.segment_offset(seg),
                buf,
                self.sb.segment_bytes as usize,
            )?;
            let bytes = io.bytes(self.sb.segment_bytes as usize);
            let chain = self.walk_chain(seg, bytes)?;
            if let (Some(uses), Some((_, first))) = (journal_uses.get(&seg), chain.first()) {
                if !uses.contains(&first.segment_epoch) {
                    tracing::warn!(pool = %self.name, seg, epoch = first.segment_epoch, "recovery: a segment's chain is not the use its journal entries name; not replayed");
                    stale_newest = stale_newest.max(chain.last().map_or(0, |(_, h)| h.seq));
                    continue;
                }
            }
            for (first_data, rh) in chain {
                newest_in[seg as usize] = rh.seq;
                // Header blocks hold no volume's data: a checkpoint entry pointing at one
                // points at a place its segment's later use overwrote.
                for b in first_data - rh.header_blocks as u64..first_data {
                    content.insert(b, HEADER_CONTENT);
                }
                let mut pba = first_data;
                for e in rh.entries.iter().filter(|e| e.op == EntryOp::Write) {
                    for b in 0..e.num_blocks as u64 {
                        let id = (e.volume as u32, e.lba.wrapping_add(b), e.seq_in(rh.seq));
                        content.insert(pba + b, id);
                    }
                    pba += e.num_blocks as u64;
                }
                if rh.seq > after {
                    records.push((rh.seq, first_data, rh));
                }
            }
        }
        // The checkpoint's map, decoded again from its body (checked when it was read).
        let mut outside = None;
        // The newest number in the map: later writes must outnumber it, or they would lose
        // to it (a checkpoint is taken while writes go on, so it may pass `h.next_seq`).
        let mut newest_mapped = 0u64;
        // The volume of the entries before (they come a volume at a time).
        let mut volume: Option<(u32, Option<Arc<ExtentTable>>)> = None;
        decode_body(body.bytes(), &h, |vol, lba, stored, seq| {
            #[cfg(test)]
            if traced(lba, 1) {
                eprintln!("trace: checkpoint has lba {lba} {stored:?} seq {seq}");
            }
            newest_mapped = newest_mapped.max(seq);
            if outside.is_some() {
                return;
            }
            if volume.as_ref().is_none_or(|v| v.0 != vol) {
                volume = Some((vol, self.table_of(vol)));
            }
            let Some((_, Some(table))) = &volume else {
                return;
            };
            if lba >= table.num_blocks()
                || (matches!(stored, Stored::At(_)) && table.fenced(lba, seq))
            {
                return;
            }
            let mut stored = stored;
            if let Stored::At(pba) = stored {
                if !self.in_segments(pba) {
                    outside = Some((vol, lba));
                    return;
                }
                if content.get(&pba).is_some_and(|&c| c != (vol, lba, seq)) {
                    // The block was moved away and its old place reused since the checkpoint;
                    // the record that moved or replaced it comes in the replay. Until then it
                    // holds only its sequence number.
                    stored = Stored::Tombstone(seq);
                } else {
                    let seg = self.segment_of(pba);
                    self.seqs_of(seg).seqs[(pba - self.segment_first_block(seg)) as usize]
                        .store(seq, Ordering::Relaxed);
                }
            }
            table.restore(lba, stored);
        })
        .map_err(|e| PoolError::Corrupt(format!("checkpoint {}: {e}", h.generation)))?;
        if let Some((vol, lba)) = outside {
            return Err(PoolError::Corrupt(format!(
                "checkpoint {} maps volume {vol} block {lba} outside the segments",
                h.generation
            )));
        }
        drop(body);
        drop(content);

        records.sort_by_key(|r| r.0);
        // Blocks the replayed records move (the cleaner's entries carry their data's older
        // sequence number): an unmap replayed before such a move must leave a tombstone, or
        // the move would bring back data the unmap dropped (the write it unmapped may be
        // gone with its reused segment). At most one per block of the log replayed.
        let mut moved = std::collections::HashSet::new();
        for (_, _, rh) in &records {
            for e in rh
                .entries
                .iter()
                .filter(|e| e.op == EntryOp::Write && e.data_seq != 0)
            {
                for b in 0..e.num_blocks as u64 {
                    if let Some(lba) = e.lba.checked_add(b) {
                        moved.insert((e.volume, lba));
                    }
                }
            }
        }
        let mut deltas = UsageDeltas::default();
        // Each record's blocks are summarized just before it is applied, in sequence order.
        for (_, first_data, rh) in &records {
            self.summarize(rh, *first_data);
            self.apply_record(
                rh,
                *first_data,
                &mut deltas,
                Applying::Replay { moved: &moved },
                &[],
            );
        }
        // Live counts from the map itself.
        let mut live = vec![0u32; self.sb.segment_count as usize];
        for (_, t) in self
            .volumes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            t.for_each(|_, s| {
                if let Stored::At(pba) = s {
                    live[self.segment_of(pba) as usize] += 1;
                }
            });
        }
        for seg in 0..self.sb.segment_count as usize {
            let row = rows[seg];
            let written = newest_in[seg] > after;
            let state = match row.state {
                SegmentState::Free if !written => SegmentState::Free,
                SegmentState::Cleaned if !written => SegmentState::Cleaned,
                _ => SegmentState::Sealed,
            };
            if matches!(state, SegmentState::Free | SegmentState::Cleaned) && live[seg] != 0 {
                return Err(PoolError::Corrupt(format!(
                    "segment {seg} is {state:?} in checkpoint {} but {} blocks map into it",
                    h.generation, live[seg]
                )));
            }
            self.usage.restore(
                seg as u64,
                state,
                live[seg],
                row.last_seq.max(newest_in[seg]),
            );
        }
        let last = records.last().map_or(0, |r| r.0);
        let newest = newest_in.iter().copied().max().unwrap_or(0);
        // Numbers past the newest record found may have been taken by records that were in
        // flight at the crash and left partly on the media; skipping well past them keeps
        // every sequence number (and so every segment epoch) unique for ever.
        // A grow fence's number was taken, and written to the volume table, maybe with no
        // record after it landing: numbers must go on above it, or new writes to the
        // blocks it guards would be kept out.
        let fence_seq = standing_fence(&self.volumes.read().unwrap_or_else(|e| e.into_inner()))
            .map_or(0, |(_, f)| f.seq);
        // The journal's epochs too: an entry may have landed while its use's records did not,
        // and its slot is not reused until a checkpoint covers its epoch.
        let next_seq = h
            .next_seq
            .max(last.saturating_add(1))
            .max(newest.saturating_add(1))
            .max(fence_seq.saturating_add(1))
            .max(newest_journaled.saturating_add(1))
            .max(stale_newest.saturating_add(1))
            .max(newest_mapped.saturating_add(1))
            .saturating_add(SEQ_GAP_AFTER_RECOVERY);
        // Numbers go on from here, and one read back at or above MAX_SEQ is damage: a pool
        // whose numbers are already within SEQ_HEADROOM of it was damaged in a way its
        // checksums let through, and numbering on would write what a later open refuses.
        if next_seq >= MAX_SEQ - SEQ_HEADROOM || h.generation >= MAX_SEQ - SEQ_HEADROOM {
            return Err(PoolError::Corrupt(format!(
                "sequence number {next_seq} or checkpoint generation {} is within 2^60 of the largest (2^62): only damage puts a pool there",
                h.generation
            )));
        }
        self.next_seq.store(next_seq, Ordering::SeqCst);
        if let Some(j) = &self.journal {
            for &slot in &damaged_slots {
                // Above every number taken before the crash.
                j.hold(slot, next_seq - 1);
            }
        }
        // Relocation records in the log may carry blocks cut off by a shrink (see
        // `note_cut_relocation`); which ones is not known now, so a fence replaced later must
        // wait for both checkpoints to cover the whole log found.
        self.cut_relocation_seq
            .store(last.max(newest), Ordering::SeqCst);
        self.checkpoint_gen.store(h.generation, Ordering::SeqCst);
        self.last_checkpoint_bytes
            .store(self.checkpoint_extent(&h).1 as u64, Ordering::Relaxed);
        self.checkpoint_seq.store(after, Ordering::SeqCst);
        self.checkpoint_seq_prev
            .store(other_seq.min(after), Ordering::SeqCst);
        self.checkpoint_next_seq.store(h.next_seq, Ordering::SeqCst);
        self.checkpoint_next_seq_prev
            .store(other_next_seq.min(h.next_seq), Ordering::SeqCst);
        // A segment the checkpoint saw Cleaned had its moves completed before its row was taken,
        // and the checkpoint's flush made them durable; it stays Cleaned until the cleaner
        // has zeroed its first block (`Cleaner::new`), since the checkpoint may have been
        // taken before that (recovery writes nothing).
        self.recovery_segments_read
            .store(segments_read, Ordering::Relaxed);
        self.checkpoint_due_after_recovery
            .store(true, Ordering::Relaxed);
        let replayed_blocks: u64 = records
            .iter()
            .map(|(_, _, rh)| rh.total_blocks() as u64)
            .sum();
        self.recovery_log_blocks
            .store(replayed_blocks, Ordering::Relaxed);
        self.replayed_uncovered_blocks
            .store(replayed_blocks, Ordering::Relaxed);
        self.recovery_segments_probed
            .store(segments_probed, Ordering::Relaxed);
        tracing::info!(pool = %self.name, checkpoint = h.generation, records = records.len(), segments_read, segments_probed, ms = t0.elapsed().as_millis() as u64, "pool recovered");
        Ok(())
    }

    /// Reads the segment journal and restores its ring: its entries, or None if one is
    /// damaged (recovery then reads the first block of every segment; the damaged slots go
    /// to `damaged`).
    fn read_journal(
        &self,
        io: &mut SyncIo,
        journal: &SegmentJournal,
        damaged: &mut Vec<u64>,
    ) -> Result<(Vec<JournalEntry>, bool), PoolError> {
        let len = journal.slots() as usize * BLOCK_BYTES;
        let buf = io.buf.as_ptr();
        io.read_into(JOURNAL_OFFSET, buf, len)?;
        let bytes = io.bytes(len);
        let mut entries = Vec::new();
        let mut damage = None;
        for (slot, block) in bytes.chunks_exact(BLOCK_BYTES).enumerate() {
            match JournalEntry::decode(block, &self.sb.uuid, self.sb.segment_count) {
                SlotContent::Empty => {}
                SlotContent::Entry(e) if e.position % journal.slots() == slot as u64 => {
                    entries.push(e)
                }
                SlotContent::Entry(_) => damage = Some((slot, "entry in the wrong slot")),
                SlotContent::Damaged(why) => damage = Some((slot, why)),
            }
            if damage.is_some_and(|(s, _)| s == slot) {
                damaged.push(slot as u64);
            }
        }
        journal.restore(&entries);
        if let Some((slot, why)) = damage {
            tracing::warn!(pool = %self.name, slot, "segment journal is damaged ({why}); recovery reads the first block of every segment");
            return Ok((entries, false));
        }
        Ok((entries, true))
    }

    /// The records of one use of segment `seg` (its bytes), in order, up to the first that
    /// does not check out: (first data block, header). A record whose data fails its checksum
    /// while a good record of the same use follows it is corruption, not a torn tail: an error.
    pub(in crate::lsv) fn walk_chain(
        &self,
        seg: u64,
        bytes: &[u8],
    ) -> Result<Vec<(u64, RecordHeader)>, PoolError> {
        let mut out = Vec::new();
        let mut at = 0usize;
        let mut epoch = None;
        let mut last_seq = 0;
        let good_header = |at: usize, epoch: Option<u64>, last: u64| -> Option<RecordHeader> {
            let h = RecordHeader::decode(bytes.get(at * BLOCK_BYTES..)?).ok()?;
            let end = at + h.total_blocks() as usize;
            (h.segment == seg
                && end <= self.seg_blocks
                && epoch.is_none_or(|e| e == h.segment_epoch)
                && h.seq > last)
                .then_some(h)
        };
        while at < self.seg_blocks {
            let Some(h) = good_header(at, epoch, last_seq) else {
                break;
            };
            let end = at + h.total_blocks() as usize;
            let data = &bytes[(at + h.header_blocks as usize) * BLOCK_BYTES..end * BLOCK_BYTES];
            if h.verify_data(data).is_err() {
                // A later record whose writer knew this one durable makes this damage;
                // otherwise it is a write the crash tore (later ones may have landed: they
                // lie beyond the hole, unflushed, and are dropped). Unless a newer use of
                // the segment wrote over this record: its first record lost at the crash,
                // a later one landed here; the old use was cleaned before the reuse. A newer
                // use began after every record of this one, so its epoch is above this seq.
                let reused = (at + h.header_blocks as usize..end).any(|b| {
                    RecordHeader::decode(&bytes[b * BLOCK_BYTES..])
                        .is_ok_and(|r| r.segment == seg && r.segment_epoch > h.seq)
                });
                if !reused
                    && good_header(end, Some(h.segment_epoch), h.seq)
                        .is_some_and(|next| next.durable_seq >= h.seq)
                {
                    return Err(PoolError::Corrupt(format!(
                        "segment {seg}: record {} has bad data and a later record says it was durable",
                        h.seq
                    )));
                }
                break;
            }
            epoch = Some(h.segment_epoch);
            last_seq = h.seq;
            let first_data = self.segment_first_block(seg) + (at + h.header_blocks as usize) as u64;
            out.push((first_data, h));
            at = end;
        }
        Ok(out)
    }
}

/// Reads and checks the checkpoint in the slot at `offset` of the pool `sb` on `base`: its
/// header, then its body.
fn read_checkpoint_at(
    base: &BdevEntry,
    sb: &Superblock,
    offset: u64,
) -> Result<LoadedCheckpoint, String> {
    let h = read_checkpoint_header(base, sb, offset)?;
    read_checkpoint_body(base, offset, h)
}

/// Reads and checks the header of the checkpoint in the slot at `offset`.
fn read_checkpoint_header(
    base: &BdevEntry,
    sb: &Superblock,
    offset: u64,
) -> Result<CheckpointHeader, String> {
    let mut io = SyncIo::new(base, CP_HEADER_BYTES).map_err(|e| e.to_string())?;
    io.run(IoType::Read, offset, CP_HEADER_BYTES, false)
        .map_err(|e| e.to_string())?;
    let h = CheckpointHeader::decode(io.bytes(CP_HEADER_BYTES)).map_err(|e| e.to_string())?;
    if h.segment_count != sb.segment_count
        || h.body_bytes.saturating_add(CP_HEADER_BYTES as u64) > sb.metadata_slot_bytes
    {
        return Err("checkpoint does not match the pool's layout".into());
    }
    Ok(h)
}

/// Reads and checks the body of the checkpoint `h` in the slot at `offset`.
fn read_checkpoint_body(
    base: &BdevEntry,
    offset: u64,
    h: CheckpointHeader,
) -> Result<LoadedCheckpoint, String> {
    let mut io = SyncIo::new(base, BLOCK_BYTES).map_err(|e| e.to_string())?;
    let len = (h.body_bytes as usize).div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
    let region = DmaRegion::new_lazy(len.max(BLOCK_BYTES)).map_err(|e| e.to_string())?;
    io.read_into(offset + CP_HEADER_BYTES as u64, region.as_ptr(), len)
        .map_err(|e| e.to_string())?;
    let body = CheckpointBody {
        region,
        len: h.body_bytes as usize,
    };
    // Every entry is checked now, so that a damaged body is found before recovery chooses it.
    // Numbers at or above MAX_SEQ are never handed out: a body holding one is damage (a
    // tombstone there would keep every later write of its block out).
    let mut impossible = false;
    let rows = decode_body(body.bytes(), &h, |_, _, stored, seq| {
        // (A tombstone's number is its entry's seq.)
        debug_assert!(!matches!(stored, Stored::Tombstone(s) if s != seq));
        impossible |= seq >= MAX_SEQ;
    })
    .map_err(|e| e.to_string())?;
    if impossible || rows.iter().any(|r| r.last_seq >= MAX_SEQ) {
        return Err("checkpoint body holds an impossible sequence number".into());
    }
    Ok((h, rows, body))
}

/// The two checkpoint slots (A, then B) of the pool `sb` on `base`: each slot's offset and
/// the header of the checkpoint it holds, once its header and body check out, or why not
/// (`CheckpointError::NoCheckpoint`'s text for a slot never written). Reads only.
pub fn checkpoint_slots(
    base: &BdevEntry,
    sb: &Superblock,
) -> Vec<(u64, Result<CheckpointHeader, String>)> {
    [
        sb.metadata_offset,
        sb.metadata_offset + sb.metadata_slot_bytes,
    ]
    .into_iter()
    .map(|o| (o, read_checkpoint_at(base, sb, o).map(|c| c.0)))
    .collect()
}
