//! Offline pool tools (`unblend pool format | inspect | check`): they open the pool's file or
//! device directly, with the appliance stopped.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use thiserror::Error;
use uuid::Uuid;

use super::format::{FormatError, Superblock, SUPERBLOCK_BYTES};
use super::record::{RecordError, RecordHeader, BLOCK_BYTES};

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

fn open(path: &Path, write: bool) -> Result<File, ToolError> {
    if !path.exists() {
        return Err(ToolError::Missing(path.display().to_string()));
    }
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(io(path))
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

/// Writes a new superblock (and zeroes the first block of every segment, so that no record
/// of an earlier life is read back). `size_bytes` creates or extends a regular file.
pub fn format(
    path: &Path,
    size_bytes: Option<u64>,
    segment_bytes: u64,
    force: bool,
) -> Result<Superblock, ToolError> {
    if let Some(size) = size_bytes {
        if !path.exists() {
            let f = File::create(path).map_err(io(path))?;
            f.set_len(size).map_err(io(path))?;
        }
    }
    let mut file = open(path, true)?;
    if !force && read_superblock(&mut file, path).is_ok() {
        return Err(ToolError::AlreadyFormatted(path.display().to_string()));
    }
    let bytes = device_bytes(&mut file, path)?;
    let sb = Superblock::plan(bytes, segment_bytes, Uuid::new_v4()).map_err(|source| {
        ToolError::Format {
            path: path.display().to_string(),
            source,
        }
    })?;
    let zero = vec![0u8; BLOCK_BYTES];
    for s in 0..sb.segment_count {
        file.seek(SeekFrom::Start(sb.segment_offset(s)))
            .map_err(io(path))?;
        file.write_all(&zero).map_err(io(path))?;
    }
    file.seek(SeekFrom::Start(0)).map_err(io(path))?;
    file.write_all(&sb.encode()).map_err(io(path))?;
    file.sync_all().map_err(io(path))?;
    Ok(sb)
}

/// What a scan found in one segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentScan {
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub used_blocks: u64,
    /// Why the scan stopped before the segment's end, if not at an empty block.
    pub stopped: Option<String>,
}

/// Walks one segment's record chain, checking each record's header and data checksums.
pub fn scan_segment(
    file: &mut File,
    path: &Path,
    sb: &Superblock,
    seg: u64,
) -> Result<SegmentScan, ToolError> {
    let mut scan = SegmentScan::default();
    let blocks = sb.segment_bytes / BLOCK_BYTES as u64;
    let base = sb.segment_offset(seg);
    let mut at = 0u64;
    let mut buf = vec![0u8; BLOCK_BYTES];
    while at < blocks {
        file.seek(SeekFrom::Start(base + at * BLOCK_BYTES as u64))
            .map_err(io(path))?;
        file.read_exact(&mut buf[..BLOCK_BYTES]).map_err(io(path))?;
        let magic = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
        if magic == 0 {
            break; // a never-written block: the end of this segment's log
        }
        if magic != super::record::RECORD_MAGIC {
            scan.stopped = Some(format!(
                "block {at} holds no record header (magic {magic:#010x})"
            ));
            break;
        }
        let header_blocks = u32::from_le_bytes(buf[36..40].try_into().expect("4 bytes")) as u64;
        let data_blocks = u32::from_le_bytes(buf[40..44].try_into().expect("4 bytes")) as u64;
        let total = header_blocks.saturating_add(data_blocks);
        if header_blocks == 0 || at.saturating_add(total) > blocks {
            scan.stopped = Some(format!("record at block {at} runs past the segment end"));
            break;
        }
        let mut rec = vec![0u8; (total as usize) * BLOCK_BYTES];
        file.seek(SeekFrom::Start(base + at * BLOCK_BYTES as u64))
            .map_err(io(path))?;
        file.read_exact(&mut rec).map_err(io(path))?;
        let header = match RecordHeader::decode(&rec) {
            Ok(h) => h,
            Err(RecordError::NoRecord(_)) => break,
            Err(e) => {
                scan.stopped = Some(format!("record at block {at}: {e}"));
                break;
            }
        };
        if let Err(e) = header.verify_data(&rec[header_blocks as usize * BLOCK_BYTES..]) {
            scan.stopped = Some(format!("record at block {at} (seq {}): {e}", header.seq));
            break;
        }
        if header.segment != seg {
            scan.stopped = Some(format!(
                "record at block {at} says it belongs to segment {}",
                header.segment
            ));
            break;
        }
        scan.records += 1;
        scan.first_seq.get_or_insert(header.seq);
        scan.last_seq = Some(header.seq);
        at += total;
        scan.used_blocks = at;
    }
    Ok(scan)
}

/// The report `inspect` prints.
pub fn inspect(path: &Path) -> Result<String, ToolError> {
    let mut file = open(path, false)?;
    let sb = read_superblock(&mut file, path)?;
    let mut out = format!(
        "pool {}\n  uuid {}\n  format version {}\n  block size {}\n  pool bytes {}\n  segment bytes {}\n  segments {}\n  metadata at {} (2 checkpoint slots of {} bytes)\n  first segment at {}\n",
        path.display(),
        sb.uuid,
        super::format::FORMAT_VERSION,
        sb.block_size,
        sb.pool_bytes,
        sb.segment_bytes,
        sb.segment_count,
        sb.metadata_offset,
        sb.metadata_slot_bytes,
        sb.first_segment_offset
    );
    let (mut used, mut records, mut last) = (0u64, 0u64, None::<u64>);
    for s in 0..sb.segment_count {
        let scan = scan_segment(&mut file, path, &sb, s)?;
        if scan.records > 0 {
            used += 1;
            records += scan.records;
            last = last.max(scan.last_seq);
        }
    }
    out.push_str(&format!(
        "  segments holding records {used}, records {records}, log tail seq {}\n  checkpoint: none written (checkpoints are not implemented yet)\n",
        last.map_or("none".to_string(), |s| s.to_string())
    ));
    Ok(out)
}

/// Checks the superblock and every record; returns the problems found (empty: consistent).
pub fn check(path: &Path) -> Result<Vec<String>, ToolError> {
    let mut file = open(path, false)?;
    let sb = read_superblock(&mut file, path)?;
    let mut problems = Vec::new();
    for s in 0..sb.segment_count {
        let scan = scan_segment(&mut file, path, &sb, s)?;
        if let Some(why) = scan.stopped {
            problems.push(format!("segment {s}: {why}"));
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsv::record::{Entry, EntryOp};

    fn img(name: &str) -> std::path::PathBuf {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-images");
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        let _ = std::fs::remove_file(&p);
        p
    }

    fn write_record(path: &Path, sb: &Superblock, seg: u64, seq: u64, corrupt_data: bool) {
        let data = vec![0x5Au8; BLOCK_BYTES * 2];
        let mut h = RecordHeader::new(seq, seg, seq);
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
        let mut f = OpenOptions::new().write(true).open(path).unwrap();
        f.seek(SeekFrom::Start(sb.segment_offset(seg))).unwrap();
        f.write_all(&rec).unwrap();
    }

    #[test]
    fn format_inspect_check_and_corruption() {
        let p = img("tools_pool.img");
        let sb = format(&p, Some(128 << 20), 1 << 20, false).unwrap();
        assert!(matches!(
            format(&p, None, 1 << 20, false),
            Err(ToolError::AlreadyFormatted(_))
        ));
        assert!(check(&p).unwrap().is_empty());
        write_record(&p, &sb, 3, 42, false);
        let report = inspect(&p).unwrap();
        assert!(report.contains("records 1, log tail seq 42"), "{report}");
        assert!(check(&p).unwrap().is_empty());
        write_record(&p, &sb, 4, 43, true);
        let problems = check(&p).unwrap();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("segment 4") && problems[0].contains("data checksum"),
            "{problems:?}"
        );
        // A flipped superblock bit is refused with a clear error.
        let mut f = OpenOptions::new().write(true).read(true).open(&p).unwrap();
        f.seek(SeekFrom::Start(40)).unwrap();
        f.write_all(&[0xFF]).unwrap();
        let e = inspect(&p).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
    }
}
