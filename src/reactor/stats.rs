//! Per-reactor counters, written by the reactor's own thread and read by anyone.
//!
//! Each counter has exactly one writer, so it is updated with a relaxed load and store, never a
//! read-modify-write: that keeps the hot loop free of locked instructions.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct ReactorStats {
    loops: AtomicU64,
    busy_loops: AtomicU64,
    busy_ns: AtomicU64,
    idle_ns: AtomicU64,
    sleeps: AtomicU64,
    messages: AtomicU64,
}

/// A copy of a reactor's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReactorStatsSnapshot {
    pub loops: u64,
    pub busy_loops: u64,
    pub busy_ns: u64,
    pub idle_ns: u64,
    pub sleeps: u64,
    pub messages: u64,
}

#[inline]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(by), Relaxed);
}

impl ReactorStats {
    /// Called once per loop by the owning reactor only.
    #[inline]
    pub(super) fn record_pass(&self, busy: bool, pass_ns: u64) {
        bump(&self.loops, 1);
        if busy {
            bump(&self.busy_loops, 1);
            bump(&self.busy_ns, pass_ns);
        } else {
            bump(&self.idle_ns, pass_ns);
        }
    }

    pub(super) fn record_sleep(&self) {
        bump(&self.sleeps, 1);
    }

    pub(super) fn record_messages(&self, n: u64) {
        bump(&self.messages, n);
    }

    pub fn snapshot(&self) -> ReactorStatsSnapshot {
        ReactorStatsSnapshot {
            loops: self.loops.load(Relaxed),
            busy_loops: self.busy_loops.load(Relaxed),
            busy_ns: self.busy_ns.load(Relaxed),
            idle_ns: self.idle_ns.load(Relaxed),
            sleeps: self.sleeps.load(Relaxed),
            messages: self.messages.load(Relaxed),
        }
    }
}
