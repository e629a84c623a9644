//! Offline pool tools (`unblend pool format | inspect | check`): they open the pool's file or
//! device directly, with the appliance stopped.
//!
//! They are thin over the pool's own code, so that they see the pool as the appliance does:
//! `format` is `LsvPool::create` (superblock, volume table, checkpoint generation 1);
//! `inspect` and `check` read the checkpoint slots with the pool's own checks and open the
//! pool with `LsvPool::open_named`, which recovers it in memory and writes nothing. Only
//! `check --repair` writes, and only checkpoints (`LsvPool::checkpoint_sync`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;

use thiserror::Error;
use uuid::Uuid;

use super::checkpoint::{CheckpointError, CheckpointHeader};
use super::format::{FormatError, Superblock, SUPERBLOCK_BYTES};
use super::pool::{checkpoint_slots, read_volume_table, LsvPool, PoolError};
use super::record::{RecordHeader, BLOCK_BYTES};
use crate::bdev::uring::{UringBdev, UringCreateParams};
use crate::bdev::{BdevEntry, BdevError, BdevRegistry};

/// The name the tools give the pool's file or device as a bdev.
const TOOL_BDEV_NAME: &str = "pool-tool";

#[derive(Debug, Error)]
pub enum ToolError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} does not exist")]
    Missing(String),
    #[error("{path}: {source}")]
    Format {
        path: String,
        #[source]
        source: FormatError,
    },
    #[error("{0} already holds an unblend pool; pass --force to format it again (destroys it)")]
    AlreadyFormatted(String),
    #[error("{path}: {source}")]
    Bdev {
        path: String,
        #[source]
        source: BdevError,
    },
    #[error("{path}: {source}")]
    Pool {
        path: String,
        #[source]
        source: PoolError,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ToolError + '_ {
    move |source| ToolError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn device_bytes(file: &mut File, path: &Path) -> Result<u64, ToolError> {
    let meta = file.metadata().map_err(io(path))?;
    if meta.file_type().is_block_device() {
        file.seek(SeekFrom::End(0)).map_err(io(path))
    } else {
        Ok(meta.len())
    }
}

fn open(path: &Path) -> Result<File, ToolError> {
    if !path.exists() {
        return Err(ToolError::Missing(path.display().to_string()));
    }
    OpenOptions::new().read(true).open(path).map_err(io(path))
}

fn read_superblock(file: &mut File, path: &Path) -> Result<Superblock, ToolError> {
    let bytes = device_bytes(file, path)?;
    let mut b = vec![0u8; SUPERBLOCK_BYTES];
    file.seek(SeekFrom::Start(0)).map_err(io(path))?;
    file.read_exact(&mut b).map_err(io(path))?;
    Superblock::decode(&b, bytes).map_err(|source| ToolError::Format {
        path: path.display().to_string(),
        source,
    })
}

/// Opens the file or device as the appliance does (io_uring, O_DIRECT, 4 KiB blocks), in a
/// registry of its own.
fn open_bdev(path: &Path) -> Result<BdevEntry, ToolError> {
    let bdev_err = |source| ToolError::Bdev {
        path: path.display().to_string(),
        source,
    };
    let bdev = UringBdev::create(&UringCreateParams {
        name: TOOL_BDEV_NAME.into(),
        filename: path.display().to_string(),
        block_size: Some(BLOCK_BYTES as u64),
        uuid: None,
        size_bytes: None,
        sqpoll: false,
    })
    .map_err(bdev_err)?;
    BdevRegistry::new()
        .register(Arc::new(bdev))
        .map_err(bdev_err)
}

fn pool_err(path: &Path) -> impl Fn(PoolError) -> ToolError + '_ {
    move |source| ToolError::Pool {
        path: path.display().to_string(),
        source,
    }
}

/// Formats a new pool named `name`, exactly as the appliance makes one (`LsvPool::create`):
/// superblock, an empty volume table and checkpoint generation 1. `size_bytes` creates a
/// regular file of that size if there is none. A file or device that already holds a pool is
/// refused unless `force`.
pub fn format(
    path: &Path,
    size_bytes: Option<u64>,
    segment_bytes: u64,
    force: bool,
    name: &str,
) -> Result<Superblock, ToolError> {
    if let Some(size) = size_bytes {
        if !path.exists() {
            let f = File::create(path).map_err(io(path))?;
            f.set_len(size).map_err(io(path))?;
        }
    }
    let mut file = open(path)?;
    if !force && read_superblock(&mut file, path).is_ok() {
        return Err(ToolError::AlreadyFormatted(path.display().to_string()));
    }
    // Refuse a bad segment size or a too small device before touching anything.
    let bytes = device_bytes(&mut file, path)?;
    drop(file);
    Superblock::plan(bytes, segment_bytes, Uuid::nil()).map_err(|source| ToolError::Format {
        path: path.display().to_string(),
        source,
    })?;
    let entry = open_bdev(path)?;
    let pool = LsvPool::create(name, entry, segment_bytes).map_err(pool_err(path))?;
    Ok(pool.sb)
}

/// What a walk of every segment's record chain found (the pool's own `walk_chain`: a chain
/// ends silently at a torn record or at a stale record of the segment's previous use).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogScan {
    pub segments_with_records: u64,
    pub records: u64,
    pub newest_seq: Option<u64>,
    /// Chains broken in the middle: a record with bad data that later records follow.
    pub problems: Vec<String>,
}

/// Walks every segment's chain of records, reading the file directly.
fn scan_log(file: &mut File, path: &Path, pool: &LsvPool) -> Result<LogScan, ToolError> {
    let sb = &pool.sb;
    let mut scan = LogScan::default();
    let mut first = vec![0u8; BLOCK_BYTES];
    let mut seg_bytes = Vec::new();
    for seg in 0..sb.segment_count {
        let at = sb.segment_offset(seg);
        file.seek(SeekFrom::Start(at)).map_err(io(path))?;
        file.read_exact(&mut first).map_err(io(path))?;
        // A segment without a record of its own at its start holds no chain.
        let starts = match RecordHeader::decode(&first) {
            Ok(h) => h.segment == seg,
            // A header of more than one block: decode the whole segment below.
            Err(super::record::RecordError::Inconsistent(_)) => true,
            Err(_) => false,
        };
        if !starts {
            continue;
        }
        seg_bytes.resize(sb.segment_bytes as usize, 0);
        file.seek(SeekFrom::Start(at)).map_err(io(path))?;
        file.read_exact(&mut seg_bytes).map_err(io(path))?;
        match pool.walk_chain(seg, &seg_bytes) {
            Ok(chain) => {
                if !chain.is_empty() {
                    scan.segments_with_records += 1;
                    scan.records += chain.len() as u64;
                    scan.newest_seq = scan.newest_seq.max(chain.last().map(|c| c.1.seq));
                }
            }
            Err(e) => scan.problems.push(format!("log: {e}")),
        }
    }
    Ok(scan)
}

/// What a checkpoint slot holds.
enum Slot {
    Valid(CheckpointHeader),
    Empty,
    Damaged(String),
}

fn slot_label(i: usize) -> char {
    (b'A' + i as u8) as char
}

fn read_slots(entry: &BdevEntry, sb: &Superblock) -> Vec<(u64, Slot)> {
    let empty = CheckpointError::NoCheckpoint.to_string();
    checkpoint_slots(entry, sb)
        .into_iter()
        .map(|(offset, r)| {
            let slot = match r {
                Ok(h) => Slot::Valid(h),
                Err(e) if e == empty => Slot::Empty,
                Err(e) => Slot::Damaged(e),
            };
            (offset, slot)
        })
        .collect()
}

/// The problems with the checkpoint slots: a damaged slot; both slots empty; one slot empty
/// while the other holds generation 2 or later (so the empty one held a checkpoint once).
fn slot_problems(slots: &[(u64, Slot)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, (offset, s)) in slots.iter().enumerate() {
        let label = slot_label(i);
        match s {
            Slot::Damaged(e) => {
                problems.push(format!("checkpoint slot {label} at offset {offset}: {e}"))
            }
            Slot::Empty => {
                let other = &slots[1 - i].1;
                if let Slot::Valid(h) = other {
                    if h.generation >= 2 {
                        problems.push(format!(
                            "checkpoint slot {label} at offset {offset}: no checkpoint, but the other slot holds generation {} (this one held generation {})",
                            h.generation,
                            h.generation - 1
                        ));
                    }
                }
            }
            Slot::Valid(_) => {}
        }
    }
    if slots.iter().all(|(_, s)| matches!(s, Slot::Empty)) {
        problems.push("checkpoint slots A and B are both empty".to_string());
    }
    problems
}

/// The report `inspect` prints: the superblock's layout, the volume table, both checkpoint
/// slots, then what recovery makes of the pool (it writes nothing). A pool that recovery
/// refuses is still inspected as far as it goes.
pub fn inspect(path: &Path) -> Result<String, ToolError> {
    let mut file = open(path)?;
    let sb = read_superblock(&mut file, path)?;
    let mut out = format!(
        "pool {}\n  uuid {}\n  format version {}\n  block size {}\n  pool bytes {}\n  segment bytes {}\n  segments {}\n  volume table at {}\n  metadata at {} (2 checkpoint slots of {} bytes)\n  first segment at {}\n",
        path.display(),
        sb.uuid,
        sb.version,
        sb.block_size,
        sb.pool_bytes,
        sb.segment_bytes,
        sb.segment_count,
        super::format::VOLUME_TABLE_OFFSET,
        sb.metadata_offset,
        sb.metadata_slot_bytes,
        sb.first_segment_offset
    );
    match sb.summary_offset_of(0) {
        Some(at) => out.push_str(&format!(
            "  segment summaries at {at} ({} blocks each)\n",
            super::segment_summary::summary_blocks(sb.segment_bytes)
        )),
        None => out.push_str("  no segment summaries (format version 3 or older)\n"),
    }
    let entry = open_bdev(path)?;
    match read_volume_table(&entry) {
        Ok((name, vols, fence)) => {
            out.push_str(&format!(
                "volume table: pool name {name}, {} volume(s)\n",
                vols.len()
            ));
            for v in vols {
                out.push_str(&format!(
                    "  volume {} (id {}): uuid {}, {} blocks ({} bytes)\n",
                    v.name,
                    v.id,
                    v.uuid,
                    v.num_blocks,
                    v.num_blocks * BLOCK_BYTES as u64
                ));
            }
            if let Some((id, f)) = fence {
                out.push_str(&format!(
                    "  grow fence: volume id {id} grew from {} blocks at sequence {}; older \
                     writes past that size are not replayed\n",
                    f.floor_blocks, f.seq
                ));
            }
        }
        Err(e) => out.push_str(&format!("volume table: damaged: {e}\n")),
    }
    for (i, (offset, s)) in read_slots(&entry, &sb).iter().enumerate() {
        let label = slot_label(i);
        let what = match s {
            Slot::Valid(h) => format!(
                "valid, version {}, generation {}, complete_seq {}, next_seq {}, body {} bytes",
                h.version, h.generation, h.complete_seq, h.next_seq, h.body_bytes
            ),
            Slot::Empty => "empty (no checkpoint written)".to_string(),
            Slot::Damaged(e) => format!("damaged: {e}"),
        };
        out.push_str(&format!(
            "checkpoint slot {label} at offset {offset}: {what}\n"
        ));
    }
    match LsvPool::open_named(entry) {
        Ok(pool) => {
            let st = pool.stats();
            let scan = scan_log(&mut file, path, &pool)?;
            out.push_str(&format!(
                "recovery: ok, from checkpoint generation {} (complete_seq {})\n  segments free {}, used {}\n  live bytes {}\n  mapped blocks {}\n  log: {} segment(s) holding records, {} record(s), newest record seq {}\n  log tail: next sequence number {} (recovery skips {} numbers past the newest record)\n",
                st["checkpoint"]["generation"],
                st["checkpoint"]["complete_seq"],
                st["free_segments"],
                st["used_segments"],
                st["live_bytes"],
                st["mapped_blocks"],
                scan.segments_with_records,
                scan.records,
                scan.newest_seq.map_or("none".to_string(), |s| s.to_string()),
                pool.next_seq_now(),
                super::pool::SEQ_GAP_AFTER_RECOVERY,
            ));
            out.push_str(&format!(
                "  segment journal: {} slot(s), {} entr(ies) no checkpoint covers; recovery read {} segment(s) whole and probed the first block of {}\n",
                st["journal"]["slots"],
                st["journal"]["uncovered_entries"],
                st["recovery"]["segments_read"],
                st["recovery"]["segments_probed"],
            ));
            for p in &scan.problems {
                out.push_str(&format!("  {p}\n"));
            }
        }
        Err(e) => out.push_str(&format!("recovery: refused: {e}\n")),
    }
    Ok(out)
}

/// What `check` found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Every problem found.
    pub problems: Vec<String>,
    /// What `--repair` fixed.
    pub repaired: Vec<String>,
    /// The problems still there at the end (empty: the pool is consistent now).
    pub remaining: Vec<String>,
}

/// Checks the superblock, both checkpoint slots, that recovery accepts the pool, and every
/// segment's chain of records. Writes nothing unless `repair`: then, if the pool opens
/// although a checkpoint slot is damaged, two fresh checkpoints make both slots valid again.
pub fn check(path: &Path, repair: bool) -> Result<CheckReport, ToolError> {
    let mut file = open(path)?;
    let sb = match read_superblock(&mut file, path) {
        Ok(sb) => sb,
        Err(ToolError::Format { source, .. }) => {
            let problems = vec![format!("superblock: {source}")];
            return Ok(CheckReport {
                remaining: problems.clone(),
                problems,
                repaired: Vec::new(),
            });
        }
        Err(e) => return Err(e),
    };
    let entry = open_bdev(path)?;
    let slot_probs = slot_problems(&read_slots(&entry, &sb));
    let mut problems = slot_probs.clone();
    let mut report = CheckReport::default();
    match LsvPool::open_named(entry.clone()) {
        Ok(pool) => {
            problems.extend(scan_log(&mut file, path, &pool)?.problems);
            let mut remaining = problems.clone();
            if repair && !slot_probs.is_empty() {
                let written = pool
                    .checkpoint_sync()
                    .and_then(|a| pool.checkpoint_sync().map(|b| (a, b)));
                drop(pool);
                match written {
                    Ok((a, b)) => {
                        let now = read_slots(&entry, &sb);
                        if slot_problems(&now).is_empty()
                            && now.iter().all(|(_, s)| matches!(s, Slot::Valid(_)))
                        {
                            report.repaired.push(format!(
                                "repaired: wrote checkpoints generation {a} and {b}; both checkpoint slots are valid"
                            ));
                            remaining.retain(|p| !slot_probs.contains(p));
                        } else {
                            remaining.push(format!(
                                "repair: wrote checkpoints generation {a} and {b}, but a slot still does not check out"
                            ));
                        }
                    }
                    Err(e) => remaining.push(format!("repair failed: {e}")),
                }
            }
            report.remaining = remaining;
        }
        Err(e) => {
            problems.push(format!("recovery: refused: {e}"));
            report.remaining = problems.clone();
        }
    }
    report.problems = problems;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsv::record::{Entry, EntryOp};
    use std::io::Write;

    fn img(name: &str) -> std::path::PathBuf {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-images");
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        let _ = std::fs::remove_file(&p);
        p
    }

    /// Writes one record (volume 1, 2 blocks at lba 8) at block `at` of segment `seg`.
    fn write_record(
        path: &Path,
        sb: &Superblock,
        seg: u64,
        at: u64,
        seq: u64,
        epoch: u64,
        corrupt_data: bool,
    ) {
        let data = vec![0x5Au8; BLOCK_BYTES * 2];
        let mut h = RecordHeader::new(seq, seg, epoch);
        // As a FUA writer would: the record before this one is known durable.
        h.durable_seq = seq - 1;
        h.push(Entry {
            volume: 1,
            lba: 8,
            num_blocks: 2,
            op: EntryOp::Write,
            data_crc: crc32c::crc32c(&data),
            data_seq: 0,
        })
        .unwrap();
        h.data_crc = crc32c::crc32c(&data);
        let mut rec = vec![0u8; h.total_blocks() as usize * BLOCK_BYTES];
        h.encode(&mut rec);
        rec[BLOCK_BYTES..].copy_from_slice(&data);
        if corrupt_data {
            rec[BLOCK_BYTES + 100] ^= 1;
        }
        poke(path, sb.segment_offset(seg) + at * BLOCK_BYTES as u64, &rec);
        if at == 0 && seq == epoch {
            // A segment's first record: as a log head does, journal the segment's new use.
            let slots = sb.journal_slots();
            let mut block = vec![0u8; BLOCK_BYTES];
            crate::lsv::segment_journal::JournalEntry {
                position: epoch,
                segment: seg,
                epoch,
            }
            .encode(&sb.uuid, &mut block);
            let slot_offset =
                crate::lsv::segment_journal::JOURNAL_OFFSET + (epoch % slots) * BLOCK_BYTES as u64;
            poke(path, slot_offset, &block);
        }
    }

    fn poke(path: &Path, offset: u64, bytes: &[u8]) {
        let mut f = OpenOptions::new().write(true).open(path).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(bytes).unwrap();
        f.sync_all().unwrap();
    }

    fn peek(path: &Path, offset: u64) -> u8 {
        let mut f = File::open(path).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        let mut b = [0u8];
        f.read_exact(&mut b).unwrap();
        b[0]
    }

    fn assert_has(report: &str, needle: &str) {
        assert!(report.contains(needle), "{needle:?} not in:\n{report}");
    }

    #[test]
    fn format_inspect_check_repair_and_corruption() {
        let p = img("tools_pool.img");
        let sb = format(&p, Some(128 << 20), 1 << 20, false, "tpool").unwrap();
        assert!(matches!(
            format(&p, None, 1 << 20, false, "tpool"),
            Err(ToolError::AlreadyFormatted(_))
        ));
        let slot_a = sb.metadata_offset;
        let slot_b = sb.metadata_offset + sb.metadata_slot_bytes;
        // The pool's numbers start past `base` (`first_seq`): the records below are written
        // with numbers above it.
        let base = crate::lsv::pool::first_seq(&sb.uuid) - 1;
        let report = inspect(&p).unwrap();
        assert_has(&report, "format version 4\n");
        assert_has(&report, "(1 blocks each)\n");
        assert_has(&report, "volume table: pool name tpool, 0 volume(s)\n");
        assert_has(
            &report,
            &format!("checkpoint slot A at offset {slot_a}: valid, version 2, generation 1, complete_seq {base}, next_seq {}, body ", base + 1),
        );
        assert_has(
            &report,
            &format!("checkpoint slot B at offset {slot_b}: empty"),
        );
        assert_has(&report, "recovery: ok, from checkpoint generation 1");
        assert_has(&report, "mapped blocks 0\n");
        assert_has(&report, "log: 0 segment(s) holding records");
        assert_eq!(check(&p, false).unwrap(), CheckReport::default());

        // The appliance's pool code opens what format made; give it a volume.
        let pool = LsvPool::open_named(open_bdev(&p).unwrap()).unwrap();
        pool.create_volume("vm1", 1000).unwrap();
        drop(pool);
        // Segment 3: a record, then a stale record of the segment's previous use (older
        // epoch, lower seq): the chain ends silently before it.
        write_record(&p, &sb, 3, 0, base + 42, base + 42, false);
        write_record(&p, &sb, 3, 3, base + 10, base + 10, false);
        let report = inspect(&p).unwrap();
        assert_has(&report, "volume table: pool name tpool, 1 volume(s)\n");
        assert_has(&report, "  volume vm1 (id 1): uuid ");
        assert_has(&report, ", 1000 blocks (4096000 bytes)\n");
        assert_has(&report, "mapped blocks 2\n");
        // Found by the journal: segment 3 read whole, no segment's first block probed.
        assert_has(
            &report,
            "recovery read 1 segment(s) whole and probed the first block of 0\n",
        );
        assert_has(
            &report,
            &format!(
                "log: 1 segment(s) holding records, 1 record(s), newest record seq {}\n",
                base + 42
            ),
        );
        assert_eq!(check(&p, false).unwrap(), CheckReport::default());

        // Checkpoint generation 2 goes to slot B; then damage it.
        let pool = LsvPool::open_named(open_bdev(&p).unwrap()).unwrap();
        assert_eq!(pool.checkpoint_sync().unwrap(), 2);
        drop(pool);
        assert_has(
            &inspect(&p).unwrap(),
            &format!("checkpoint slot B at offset {slot_b}: valid, version 2, generation 2"),
        );
        let at = slot_b + 4096 + 5;
        let flipped = peek(&p, at) ^ 0x10;
        poke(&p, at, &[flipped]);
        let want =
            format!("checkpoint slot B at offset {slot_b}: checkpoint body checksum mismatch");
        for _ in 0..2 {
            // Without --repair nothing is written: the same problem each time.
            let r = check(&p, false).unwrap();
            assert_eq!(r.problems, vec![want.clone()]);
            assert_eq!(r.remaining, r.problems);
            assert!(r.repaired.is_empty());
            assert_eq!(peek(&p, at), flipped);
        }
        let report = inspect(&p).unwrap();
        assert_has(
            &report,
            &format!(
                "checkpoint slot B at offset {slot_b}: damaged: checkpoint body checksum mismatch"
            ),
        );
        // Recovery falls back to generation 1 and replays the record since.
        assert_has(&report, "recovery: ok, from checkpoint generation 1");
        assert_has(&report, "mapped blocks 2\n");
        let r = check(&p, true).unwrap();
        assert_eq!(r.problems, vec![want]);
        assert!(r.remaining.is_empty(), "{r:?}");
        assert_eq!(r.repaired.len(), 1);
        assert_has(
            &r.repaired[0],
            "repaired: wrote checkpoints generation 2 and 3",
        );
        assert_eq!(check(&p, false).unwrap(), CheckReport::default());
        let report = inspect(&p).unwrap();
        assert_has(
            &report,
            &format!("checkpoint slot A at offset {slot_a}: valid, version 2, generation 3"),
        );
        assert_has(
            &report,
            &format!("checkpoint slot B at offset {slot_b}: valid, version 2, generation 2"),
        );
        assert_has(&report, "mapped blocks 2\n");

        // Segment 5: a record with bad data that a later record of the same use follows is
        // corruption, not a torn tail: recovery refuses, and check says why.
        let seq = base + (1 << 40);
        write_record(&p, &sb, 5, 0, seq, seq, true);
        write_record(&p, &sb, 5, 3, seq + 1, seq, false);
        let r = check(&p, true).unwrap();
        assert_eq!(r.problems.len(), 1, "{r:?}");
        assert_has(
            &r.problems[0],
            "recovery: refused: pool is damaged: segment 5",
        );
        assert_has(
            &r.problems[0],
            "bad data and a later record says it was durable",
        );
        assert_eq!(r.remaining, r.problems);
        assert!(r.repaired.is_empty());
        let report = inspect(&p).unwrap();
        assert_has(&report, "recovery: refused: pool is damaged: segment 5");

        // A flipped superblock bit: check names it, inspect refuses with a clear error.
        poke(&p, 40, &[peek(&p, 40) ^ 0xFF]);
        let r = check(&p, false).unwrap();
        assert_eq!(r.problems.len(), 1);
        assert_has(&r.problems[0], "superblock: superblock checksum mismatch");
        let e = inspect(&p).unwrap_err().to_string();
        assert_has(&e, "checksum mismatch");
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn both_slots_damaged_or_empty_is_refused() {
        let p = img("tools_pool_slots.img");
        let sb = format(&p, Some(64 << 20), 1 << 20, false, "lvs0").unwrap();
        // Slot A's header loses its magic: both slots empty.
        poke(&p, sb.metadata_offset, &[0u8; 4]);
        let r = check(&p, false).unwrap();
        assert_eq!(r.problems.len(), 2, "{r:?}");
        assert_eq!(r.problems[0], "checkpoint slots A and B are both empty");
        assert_has(
            &r.problems[1],
            "recovery: refused: pool is damaged: no valid checkpoint",
        );
        let report = inspect(&p).unwrap();
        assert_has(
            &report,
            "recovery: refused: pool is damaged: no valid checkpoint",
        );
        // A bad name or segment size is refused before anything is written.
        assert!(matches!(
            format(&p, None, 1 << 20, true, ""),
            Err(ToolError::Pool {
                source: PoolError::BadName(_),
                ..
            })
        ));
        assert!(matches!(
            format(&p, None, 3 << 20, true, "lvs0"),
            Err(ToolError::Format {
                source: FormatError::BadSegmentSize(_),
                ..
            })
        ));
        let _ = std::fs::remove_file(&p);
    }
}
