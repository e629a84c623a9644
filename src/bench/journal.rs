//! The crash workload's journal: every write the bench saw acknowledged, appended to a file
//! as (unit, tag), so that a run after a kill can check that nothing acknowledged was lost.
//!
//! ## Journal format (version 1)
//!
//! A flat file of 16-byte records, little endian: `unit u64, tag u64`. Tags only grow (they
//! start from the wall clock in nanoseconds at each run), so the newest tag of a unit is the
//! largest. A record is appended after its write is acknowledged; a kill may lose the last
//! records, never add one, so a block may hold a newer tag than its journal says, never older.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

const RECORD_BYTES: usize = 16;
/// Records gathered before a write to the file is forced (one poll pass usually writes less).
pub const JOURNAL_BATCH: usize = 256;

pub struct Journal {
    file: File,
    pending: Vec<u8>,
}

impl Journal {
    pub fn open(path: &Path) -> std::io::Result<Journal> {
        Ok(Journal {
            file: OpenOptions::new().create(true).append(true).open(path)?,
            pending: Vec::with_capacity(JOURNAL_BATCH * RECORD_BYTES),
        })
    }

    pub fn record(&mut self, unit: u64, tag: u64) {
        self.pending.extend_from_slice(&unit.to_le_bytes());
        self.pending.extend_from_slice(&tag.to_le_bytes());
        if self.pending.len() >= JOURNAL_BATCH * RECORD_BYTES {
            self.flush();
        }
    }

    /// Appends what was gathered (one write call; the page cache survives a SIGKILL).
    pub fn flush(&mut self) {
        if !self.pending.is_empty() {
            if let Err(e) = self.file.write_all(&self.pending) {
                tracing::error!("crash journal: {e}");
            }
            self.pending.clear();
        }
    }
}

/// The newest tag journaled for each unit (empty if there is no journal yet).
pub fn load(path: &Path) -> std::io::Result<HashMap<u64, u64>> {
    let mut map = HashMap::new();
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(map),
        Err(e) => return Err(e),
    }
    for r in bytes.chunks_exact(RECORD_BYTES) {
        let unit = u64::from_le_bytes(r[0..8].try_into().expect("8"));
        let tag = u64::from_le_bytes(r[8..16].try_into().expect("8"));
        let e = map.entry(unit).or_insert(tag);
        *e = (*e).max(tag);
    }
    Ok(map)
}
