//! The log-structured volume store (lsv): per-core logs in a pool on one base bdev, thin
//! volumes, a lock-free extent table, a cleaner, checkpoints and recovery.
//!
//! Built so far, each with its tests: the extent table (`extent_table`), the pool layout and
//! superblock (`format`), the log record format (`record`), and segment usage with the
//! cleaner's victim policies (`usage`). Not built yet: the per-core log writer, volumes as
//! bdevs, the cleaner's mover, checkpoints, recovery, the simulator, the RPC methods.

pub mod extent_table;
pub mod format;
pub mod pool;
pub mod pools;
pub mod record;
pub mod tools;
pub mod usage;
pub mod volume;

pub use extent_table::{ExtentTable, Mapping, Update};
pub use format::{FormatError, Superblock};
#[cfg(test)]
mod sim_test;
