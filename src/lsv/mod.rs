//! The log-structured volume store (lsv): per-core logs in a pool on one base bdev, thin
//! volumes, a lock-free extent table, a cleaner, checkpoints and recovery.
//!
//! - `format`: the pool's layout and superblock; `record`: log records; `checkpoint`: the
//!   checkpoint format (`checkpoint_writer` takes and writes one a piece per poll);
//!   `segment_journal`: where recovery finds the segments opened since a
//!   checkpoint. Each on-disk format is documented in its file, with its version.
//! - `extent_table`: the lock-free map; `usage`: segment states, live counts, victim policies.
//! - `pool`: a pool on its base bdev, volume table, recovery; `volume`: a volume as a bdev;
//!   `log_writer`: a reactor's log head, shared by that reactor's volume channels of a pool;
//!   `cleaner`: moves live blocks and writes checkpoints.
//! - `pools`: the appliance's pools and examine; `tools`: offline format/inspect/check.

pub mod checkpoint;
pub mod checkpoint_writer;
pub mod cleaner;
pub mod extent_table;
pub mod format;
pub mod log_writer;
pub mod pool;
pub mod pools;
pub mod record;
pub mod segment_journal;
pub mod segment_summary;
pub mod tools;
pub mod usage;
mod victim_read;
pub mod volume;

pub use extent_table::{ExtentTable, Mapping, Update};
pub use format::{FormatError, Superblock};
#[cfg(test)]
mod corruption_test;
#[cfg(test)]
mod hostile_pool_test;
#[cfg(test)]
mod model_test;
#[cfg(test)]
mod sim_test;
