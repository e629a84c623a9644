//! Segment usage: each segment's state, live blocks and age, and the cleaner's choice of
//! victim among sealed segments.
//!
//! Live counts change on every overwrite (the old copy's segment loses a block). A log writer
//! collects one record's changes in a `UsageDeltas` and applies them before the record stops
//! counting as in flight (so a sealed segment with nothing in flight shows its true count),
//! one atomic add per segment touched, not one per write.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SegmentState {
    Free = 0,
    /// A reactor's log head appends to it.
    Open = 1,
    /// Full; only the cleaner touches it.
    Sealed = 2,
    /// The cleaner is moving its live blocks out.
    Cleaning = 3,
    /// Every live block (and every unmap no checkpoint covers) has been moved with FUA.
    /// The cleaner frees such a segment at once; the state is kept for pools whose
    /// checkpoints recorded it, and is freed once both checkpoints cover its records.
    Cleaned = 4,
}

impl SegmentState {
    fn from_u8(v: u8) -> SegmentState {
        match v {
            0 => SegmentState::Free,
            1 => SegmentState::Open,
            2 => SegmentState::Sealed,
            3 => SegmentState::Cleaning,
            _ => SegmentState::Cleaned,
        }
    }
}

/// How the cleaner picks its next victim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanerPolicy {
    /// Fewest live blocks.
    Greedy,
    /// Rosenblum & Ousterhout's cost-benefit: most `(1 - u) * age / (1 + u)`, the age
    /// counted in sequence numbers since the segment's first record.
    CostBenefit,
    /// Cost-benefit victims, and relocated blocks split by lifespan (SepBIT-style): blocks
    /// that already survived a long time go to a separate "cold" relocation stream.
    Lifespan,
}

impl CleanerPolicy {
    pub fn parse(s: &str) -> Option<CleanerPolicy> {
        match s {
            "greedy" => Some(CleanerPolicy::Greedy),
            "cost-benefit" | "cost_benefit" => Some(CleanerPolicy::CostBenefit),
            "lifespan" => Some(CleanerPolicy::Lifespan),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CleanerPolicy::Greedy => "greedy",
            CleanerPolicy::CostBenefit => "cost-benefit",
            CleanerPolicy::Lifespan => "lifespan",
        }
    }

    fn from_u8(v: u8) -> CleanerPolicy {
        match v {
            0 => CleanerPolicy::Greedy,
            1 => CleanerPolicy::CostBenefit,
            _ => CleanerPolicy::Lifespan,
        }
    }
}

struct Segment {
    state: AtomicU8,
    live_blocks: AtomicU32,
    /// Sequence number of the newest record written to it.
    last_seq: AtomicU64,
    /// Sequence number of the first record of its current use (set by its every record;
    /// 0 until its first, or, after recovery, while free): cost-benefit
    /// measures a segment's age from this. (From the newest record instead, a relocation
    /// segment that took cold blocks now and then would never look old.)
    first_seq: AtomicU64,
    /// Records written into it that have not completed yet (the cleaner waits for none).
    records_in_flight: AtomicU32,
    /// Whether a record written into it in its current use failed (cleared when reopened).
    had_failed_record: AtomicBool,
}

pub struct UsageTable {
    segments: Box<[Segment]>,
    blocks_per_segment: u32,
    free: AtomicU64,
    policy: AtomicU8,
}

impl UsageTable {
    pub fn new(segment_count: u64, blocks_per_segment: u32) -> UsageTable {
        UsageTable {
            segments: (0..segment_count)
                .map(|_| Segment {
                    state: AtomicU8::new(SegmentState::Free as u8),
                    live_blocks: AtomicU32::new(0),
                    last_seq: AtomicU64::new(0),
                    first_seq: AtomicU64::new(0),
                    records_in_flight: AtomicU32::new(0),
                    had_failed_record: AtomicBool::new(false),
                })
                .collect(),
            blocks_per_segment,
            free: AtomicU64::new(segment_count),
            policy: AtomicU8::new(CleanerPolicy::CostBenefit as u8),
        }
    }

    pub fn policy(&self) -> CleanerPolicy {
        CleanerPolicy::from_u8(self.policy.load(Ordering::Relaxed))
    }

    pub fn set_policy(&self, p: CleanerPolicy) {
        self.policy.store(p as u8, Ordering::Relaxed);
    }

    pub fn blocks_per_segment(&self) -> u32 {
        self.blocks_per_segment
    }

    /// Recovery only: sets a segment's state, live count and age directly.
    pub fn restore(&self, seg: u64, state: SegmentState, live: u32, last_seq: u64) {
        let s = &self.segments[seg as usize];
        let was = SegmentState::from_u8(s.state.swap(state as u8, Ordering::AcqRel));
        match (was == SegmentState::Free, state == SegmentState::Free) {
            (true, false) => {
                self.free.fetch_sub(1, Ordering::AcqRel);
            }
            (false, true) => {
                self.free.fetch_add(1, Ordering::AcqRel);
            }
            _ => {}
        }
        s.live_blocks.store(live, Ordering::Relaxed);
        s.last_seq.store(last_seq, Ordering::Relaxed);
        // Replay set the first record's number of segments written since the checkpoint;
        // for the others, the newest record's stands in.
        if state == SegmentState::Free {
            s.first_seq.store(0, Ordering::Relaxed);
        } else if s.first_seq.load(Ordering::Relaxed) == 0 {
            s.first_seq.store(last_seq, Ordering::Relaxed);
        }
    }

    pub fn last_seq(&self, seg: u64) -> u64 {
        self.segments[seg as usize].last_seq.load(Ordering::Relaxed)
    }

    /// Marks a Cleaning segment Cleaned: free once the cleaner's free mark and flush are
    /// durable.
    pub fn mark_cleaned(&self, seg: u64) -> bool {
        self.transition(seg, SegmentState::Cleaning, SegmentState::Cleaned)
    }

    pub fn record_started(&self, seg: u64) {
        self.segments[seg as usize]
            .records_in_flight
            .fetch_add(1, Ordering::AcqRel);
    }

    pub fn record_finished(&self, seg: u64) {
        let before = self.segments[seg as usize]
            .records_in_flight
            .fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "segment {seg}: record count underflow");
    }

    pub fn records_in_flight(&self, seg: u64) -> u32 {
        self.segments[seg as usize]
            .records_in_flight
            .load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.segments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub fn state(&self, seg: u64) -> SegmentState {
        SegmentState::from_u8(self.segments[seg as usize].state.load(Ordering::Acquire))
    }

    /// Moves a segment from `from` to `to`; false if it was not in `from` (someone else won).
    pub fn transition(&self, seg: u64, from: SegmentState, to: SegmentState) -> bool {
        let ok = self.segments[seg as usize]
            .state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if ok && to == SegmentState::Free {
            debug_assert_eq!(self.live(seg), 0, "segment {seg} freed with live blocks");
            self.free.fetch_add(1, Ordering::AcqRel);
        }
        if ok && from == SegmentState::Free {
            self.free.fetch_sub(1, Ordering::AcqRel);
        }
        ok
    }

    /// Takes a free segment for a log head, leaving at least `keep` free segments (the
    /// cleaner's reserve), or None.
    pub fn open_free(&self, keep: u64) -> Option<u64> {
        if self.free.load(Ordering::Acquire) <= keep {
            return None;
        }
        // A plain load first: a failed compare-and-swap costs a locked instruction, and the
        // scan passes every sealed segment below the lowest free one.
        let seg = (0..self.segments.len() as u64).find(|&s| {
            self.state(s) == SegmentState::Free
                && self.transition(s, SegmentState::Free, SegmentState::Open)
        })?;
        self.segments[seg as usize]
            .had_failed_record
            .store(false, Ordering::Release);
        Some(seg)
    }

    /// A record written into `seg` failed (or was failed behind one that did).
    pub fn note_failed_record(&self, seg: u64) {
        self.segments[seg as usize]
            .had_failed_record
            .store(true, Ordering::Release);
    }

    /// Whether a record written into `seg` in its current use failed.
    pub fn had_failed_record(&self, seg: u64) -> bool {
        self.segments[seg as usize]
            .had_failed_record
            .load(Ordering::Acquire)
    }

    pub fn live(&self, seg: u64) -> u32 {
        self.segments[seg as usize]
            .live_blocks
            .load(Ordering::Relaxed)
    }

    pub fn free_count(&self) -> usize {
        self.free.load(Ordering::Acquire) as usize
    }

    /// Segments in `state` (a scan: for statistics and the cleaner, not the I/O path).
    pub fn count_in(&self, state: SegmentState) -> usize {
        (0..self.segments.len() as u64)
            .filter(|&s| self.state(s) == state)
            .count()
    }

    /// A record `seq` goes into `seg`, whose current use began with record `epoch`.
    pub fn note_write(&self, seg: u64, seq: u64, epoch: u64) {
        let s = &self.segments[seg as usize];
        s.last_seq.fetch_max(seq, Ordering::Relaxed);
        // Only the segment's own log head writes into it: no other writer races this.
        s.first_seq.store(epoch, Ordering::Relaxed);
    }

    /// Applies a reactor's per-pass changes.
    pub fn apply(&self, deltas: &mut UsageDeltas) {
        for &(seg, d) in &deltas.changes {
            let live = &self.segments[seg as usize].live_blocks;
            if d >= 0 {
                let after = live.fetch_add(d as u32, Ordering::Relaxed) + d as u32;
                debug_assert!(after <= self.blocks_per_segment, "segment {seg} over-full");
            } else {
                let before = live.fetch_sub((-d) as u32, Ordering::Relaxed);
                debug_assert!(before >= (-d) as u32, "segment {seg} live count underflow");
            }
        }
        deltas.changes.clear();
    }

    /// The sealed segment the policy would clean next, if any: one with no record still in
    /// flight into it, and with at least `min_gain` dead blocks (cleaning it frees space).
    pub fn pick_victim(&self, policy: CleanerPolicy, now_seq: u64, min_gain: u32) -> Option<u64> {
        let cap = self.blocks_per_segment as f64;
        let sealed = (0..self.segments.len() as u64).filter(|&s| {
            self.state(s) == SegmentState::Sealed
                && self.records_in_flight(s) == 0
                && self.live(s) + min_gain <= self.blocks_per_segment
        });
        match policy {
            CleanerPolicy::Greedy => sealed.min_by_key(|&s| self.live(s)),
            CleanerPolicy::CostBenefit | CleanerPolicy::Lifespan => sealed
                .map(|s| {
                    let u = self.live(s) as f64 / cap;
                    let age = now_seq
                        .saturating_sub(self.segments[s as usize].first_seq.load(Ordering::Relaxed))
                        as f64;
                    (s, (1.0 - u) * (age + 1.0) / (1.0 + u))
                })
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(s, _)| s),
        }
    }
}

/// Most distinct segments one pass may touch before its changes must be applied.
pub const MAX_DELTAS: usize = 256;

/// One reactor's live-count changes for one poll pass; preallocated, never grows.
pub struct UsageDeltas {
    changes: Vec<(u64, i32)>,
}

impl Default for UsageDeltas {
    fn default() -> Self {
        UsageDeltas {
            changes: Vec::with_capacity(MAX_DELTAS),
        }
    }
}

impl UsageDeltas {
    /// Records a change; returns false when full (apply, then record again).
    pub fn add(&mut self, seg: u64, delta: i32) -> bool {
        if let Some(c) = self.changes.iter_mut().find(|c| c.0 == seg) {
            c.1 += delta;
            return true;
        }
        if self.changes.len() == MAX_DELTAS {
            return false;
        }
        self.changes.push((seg, delta));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> UsageTable {
        let t = UsageTable::new(4, 100);
        let mut d = UsageDeltas::default();
        for (seg, live, seq) in [(0u64, 10i32, 900u64), (1, 50, 100), (2, 30, 990), (3, 0, 0)] {
            assert_eq!(t.open_free(0), Some(seg));
            if live > 0 {
                assert!(d.add(seg, live));
            }
            t.note_write(seg, seq, seq);
            if seg < 3 {
                assert!(t.transition(seg, SegmentState::Open, SegmentState::Sealed));
            }
        }
        t.apply(&mut d);
        t
    }

    #[test]
    fn greedy_picks_fewest_live_and_cost_benefit_weighs_age() {
        let t = table();
        assert_eq!(t.pick_victim(CleanerPolicy::Greedy, 1000, 1), Some(0));
        // Segment 1 is half live but 900 sequence numbers old; segment 0 is 10% live but new.
        // Cost-benefit: seg0 (0.9*101/1.1 = 82.6), seg1 (0.5*901/1.5 = 300), seg2 (0.7*11/1.3).
        assert_eq!(t.pick_victim(CleanerPolicy::CostBenefit, 1000, 1), Some(1));
        // Open segments are never victims.
        assert_eq!(t.state(3), SegmentState::Open);
    }

    #[test]
    fn deltas_batch_per_segment_and_states_move_once() {
        let t = table();
        let mut d = UsageDeltas::default();
        for _ in 0..10 {
            d.add(0, -1);
        }
        d.add(1, -5);
        t.apply(&mut d);
        assert_eq!((t.live(0), t.live(1)), (0, 45));
        assert!(t.transition(0, SegmentState::Sealed, SegmentState::Cleaning));
        assert!(!t.transition(0, SegmentState::Sealed, SegmentState::Cleaning));
        assert!(t.mark_cleaned(0));
        assert!(!t.mark_cleaned(0));
        assert_eq!(t.state(0), SegmentState::Cleaned);
        assert!(t.transition(0, SegmentState::Cleaned, SegmentState::Free));
        assert_eq!(t.free_count(), 1);
        assert_eq!(t.open_free(1), None, "the reserve is kept");
        assert_eq!(t.open_free(0), Some(0));
        assert_eq!(t.open_free(0), None, "pool full: no free segment");
    }
}
