//! Per-bdev I/O statistics without atomic read-modify-writes on the I/O path.
//!
//! Each channel owns a `ChannelStats` that only its reactor writes (relaxed load + store).
//! The bdev keeps a list of its live channels' stats, touched only when a channel opens or
//! closes, and folds a closing channel's counts into `retired`. A reader sums them all.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crossbeam_utils::CachePadded;

use serde::Serialize;

use super::IoType;

#[derive(Default)]
struct OpCounters {
    ops: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    latency_sum_ns: AtomicU64,
    latency_max_ns: AtomicU64,
}

#[inline]
fn add(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(by), Relaxed);
}

/// Counters of one channel. Written only by the reactor that owns the channel.
#[derive(Default)]
pub struct ChannelStats {
    ops: [OpCounters; 5],
}

impl ChannelStats {
    #[inline]
    pub(super) fn record(&self, io_type: IoType, bytes: u64, latency_ns: u64, ok: bool) {
        let c = &self.ops[io_type as usize];
        if ok {
            add(&c.ops, 1);
            add(&c.bytes, bytes);
            add(&c.latency_sum_ns, latency_ns);
            if latency_ns > c.latency_max_ns.load(Relaxed) {
                c.latency_max_ns.store(latency_ns, Relaxed);
            }
        } else {
            add(&c.errors, 1);
        }
    }

    fn totals(&self) -> IoStatTotals {
        let mut t = IoStatTotals::default();
        for io_type in IoType::ALL {
            let c = &self.ops[io_type as usize];
            t.ops[io_type as usize] = OpTotals {
                ops: c.ops.load(Relaxed),
                bytes: c.bytes.load(Relaxed),
                errors: c.errors.load(Relaxed),
                latency_sum_ns: c.latency_sum_ns.load(Relaxed),
                latency_max_ns: c.latency_max_ns.load(Relaxed),
            };
        }
        t
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OpTotals {
    pub ops: u64,
    pub bytes: u64,
    pub errors: u64,
    pub latency_sum_ns: u64,
    pub latency_max_ns: u64,
}

/// A bdev's statistics, summed over every channel it has had.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStatTotals {
    pub ops: [OpTotals; 5],
}

impl IoStatTotals {
    pub fn get(&self, io_type: IoType) -> OpTotals {
        self.ops[io_type as usize]
    }

    fn merge(&mut self, other: &IoStatTotals) {
        for (a, b) in self.ops.iter_mut().zip(other.ops.iter()) {
            a.ops += b.ops;
            a.bytes += b.bytes;
            a.errors += b.errors;
            a.latency_sum_ns += b.latency_sum_ns;
            a.latency_max_ns = a.latency_max_ns.max(b.latency_max_ns);
        }
    }
}

/// Most channels one bdev may have open at once.
pub const MAX_CHANNELS_PER_BDEV: usize = 1024;

#[derive(Default)]
pub struct BdevIoStat {
    live: Mutex<Vec<Arc<CachePadded<ChannelStats>>>>,
    retired: Mutex<IoStatTotals>,
}

impl BdevIoStat {
    /// Adds a channel's counters (control path: called when a channel opens).
    pub(super) fn attach(&self) -> Option<Arc<CachePadded<ChannelStats>>> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.len() >= MAX_CHANNELS_PER_BDEV {
            return None;
        }
        // Padded: channels on different reactors must not share a cache line.
        let stats = Arc::new(CachePadded::new(ChannelStats::default()));
        live.push(stats.clone());
        Some(stats)
    }

    /// Folds a closing channel's counters into the retired totals.
    pub(super) fn detach(&self, stats: &Arc<CachePadded<ChannelStats>>) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pos) = live.iter().position(|s| Arc::ptr_eq(s, stats)) {
            live.swap_remove(pos);
            self.retired
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .merge(&stats.totals());
        }
    }

    pub fn totals(&self) -> IoStatTotals {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let mut t = *self.retired.lock().unwrap_or_else(|e| e.into_inner());
        for s in live.iter() {
            t.merge(&s.totals());
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_survive_channel_close() {
        let stat = BdevIoStat::default();
        let a = stat.attach().unwrap();
        let b = stat.attach().unwrap();
        a.record(IoType::Read, 4096, 100, true);
        a.record(IoType::Read, 4096, 300, true);
        b.record(IoType::Write, 512, 50, true);
        b.record(IoType::Write, 512, 50, false);
        stat.detach(&a);
        let t = stat.totals();
        assert_eq!(t.get(IoType::Read).ops, 2);
        assert_eq!(t.get(IoType::Read).bytes, 8192);
        assert_eq!(t.get(IoType::Read).latency_sum_ns, 400);
        assert_eq!(t.get(IoType::Read).latency_max_ns, 300);
        assert_eq!(t.get(IoType::Write).ops, 1);
        assert_eq!(t.get(IoType::Write).errors, 1);
    }
}
