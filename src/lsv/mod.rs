//! The log-structured volume store (lsv): per-core logs in a pool on one base bdev, thin
//! volumes, a lock-free extent table, a cleaner, checkpoints and recovery.
//!
//! Built so far: the extent table and the pool's on-disk layout (superblock, format v1).
//! The log writer, volumes as bdevs, the cleaner, checkpoints and recovery come next.

pub mod extent_table;
pub mod format;
pub mod record;

pub use extent_table::{ExtentTable, Mapping, Update};
pub use format::{FormatError, Superblock};
