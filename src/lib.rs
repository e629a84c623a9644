//! unblend: a polled-mode, log-structured storage appliance for virtual machines.
//! See ARCHITECTURE.md for the rooms and how data moves between them.

pub mod bdev;
pub mod bench;
pub mod config;
pub mod frontend;
pub mod lsv;
pub mod mem;
pub mod reactor;
pub mod rpc;
pub mod serve;
