//! One core's share of a benchmark: a poller that keeps `queue_depth` I/Os in flight on its own
//! channel, records each latency in a histogram, and reports when its time is up.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;

use super::pattern;
use super::{JobResult, VerifyFailure, Workload};
use crate::bdev::{IoChannel, IoCompletion, IoRequest, IoStatus, IoType, IoVec};
use crate::mem::{BufferPool, DmaBuf};
use crate::reactor::{PollContext, PollStatus};

/// Highest latency the histogram holds (one hour, in ns); larger values are clamped.
pub const MAX_LATENCY_NS: u64 = 3_600_000_000_000;

#[derive(Clone, Copy)]
pub struct JobPlan {
    pub reactor: usize,
    pub core: usize,
    pub workload: Workload,
    pub read_percent: u8,
    pub queue_depth: u32,
    pub blocks_per_io: u64,
    /// The range of I/O units (each `blocks_per_io` long) this job addresses.
    pub first_unit: u64,
    pub units: u64,
    pub duration_ns: u64,
    pub seed: u64,
    /// Which job this is (jobs on one reactor draw different random streams).
    pub job: usize,
    /// Where a sequential job starts in its range.
    pub start_unit: u64,
    /// Skew for random offsets: (percent of the range that is hot, percent of I/Os that go
    /// to it); None: uniform.
    pub hot: Option<(u8, u8)>,
    /// Stop after this many I/Os (0: run for `duration_ns`).
    pub max_ios: u64,
    /// I/Os this job starts a second at most (0: as many as complete).
    pub rate_iops: u64,
}

/// The crash workload's inputs: the journal to append to, and the units to check first
/// with the newest tag the journal has for each (None: never journaled).
pub struct CrashSetup {
    pub journal: std::path::PathBuf,
    pub checks: Vec<(u64, Option<u64>)>,
}

struct Crash {
    journal: super::journal::Journal,
    checks: Vec<(u64, Option<u64>)>,
    next_check: usize,
    verified: bool,
    tag_base: u64,
    ops: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Io,
    /// Crash workload: reading a unit back to check it against the journal.
    CheckRead(u64, Option<u64>),
    /// Crash workload: writing a unit with a tag.
    TaggedWrite(u64, u64),
    /// Verify: the pattern for (unit, seed) is being written.
    VerifyWrite(u64, u64),
    /// Verify: (unit, seed) is being read back.
    VerifyRead(u64, u64),
}

impl Phase {
    fn holds(&self, unit: u64) -> bool {
        matches!(*self, Phase::VerifyWrite(u, _) | Phase::VerifyRead(u, _) | Phase::TaggedWrite(u, _) if u == unit)
    }
}

pub struct Job {
    plan: JobPlan,
    channel: IoChannel,
    pool: Rc<BufferPool>,
    bufs: Vec<DmaBuf>,
    iovs: Vec<IoVec>,
    phases: Vec<Phase>,
    completions: Vec<IoCompletion>,
    rng: u64,
    next_unit: u64,
    submitted: u64,
    /// Verify: how many times this job has gone round its range (changes the pattern seed).
    lap: u64,
    block_size: usize,
    hist: Histogram<u64>,
    ios: u64,
    bytes: u64,
    errors: u64,
    start_ns: Option<u64>,
    end_ns: u64,
    elapsed_ns: u64,
    winding_down: bool,
    failure: Option<VerifyFailure>,
    progress: Arc<CachePadded<AtomicU64>>,
    report: Option<Sender<Result<JobResult, String>>>,
    crash: Option<Crash>,
    /// Rate-limited jobs: the time between I/O starts (0: no limit), the time the next one
    /// may start, and the slots waiting for it (at most `queue_depth`).
    pace_ns: u64,
    next_due_ns: u64,
    paced: Vec<usize>,
}

impl Job {
    pub fn new(
        plan: JobPlan,
        channel: IoChannel,
        pool: Rc<BufferPool>,
        progress: Arc<CachePadded<AtomicU64>>,
        report: Sender<Result<JobResult, String>>,
        crash: Option<CrashSetup>,
    ) -> Result<Job, String> {
        let crash = match crash {
            Some(c) => Some(Crash {
                journal: super::journal::Journal::open(&c.journal)
                    .map_err(|e| format!("journal {}: {e}", c.journal.display()))?,
                checks: c.checks,
                next_check: 0,
                verified: false,
                tag_base: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64),
                ops: 0,
            }),
            None => None,
        };
        let qd = plan.queue_depth as usize;
        let block_size = channel.block_size() as usize;
        let io_bytes = plan.blocks_per_io as usize * block_size;
        if pool.buf_bytes() < io_bytes || pool.available() < qd {
            return Err(format!(
                "reactor buffer pool has {} buffers of {} bytes; the job needs {qd} of {io_bytes}",
                pool.available(),
                pool.buf_bytes()
            ));
        }
        let mut bufs: Vec<DmaBuf> = (0..qd)
            .map(|_| pool.get().expect("checked availability above"))
            .collect();
        let iovs = bufs
            .iter_mut()
            // SAFETY: each buffer stays on loan to this job, and untouched while its slot has an
            // I/O in flight, until the job is dropped after draining (see `Drop`).
            .map(|b| unsafe { IoVec::from_buf(b, io_bytes) })
            .collect();
        let hist = Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
            .map_err(|e| format!("histogram: {e}"))?;
        Ok(Job {
            rng: plan.seed
                ^ (0x5DEE_CE66_D1CE_4E5B_u64.wrapping_mul(plan.reactor as u64 + 1))
                ^ (0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(plan.job as u64 + 1)),
            next_unit: plan.start_unit % plan.units.max(1),
            submitted: 0,
            lap: 0,
            block_size,
            phases: vec![Phase::Idle; qd],
            completions: Vec::with_capacity(qd),
            plan,
            channel,
            pool,
            bufs,
            iovs,
            hist,
            ios: 0,
            bytes: 0,
            errors: 0,
            start_ns: None,
            end_ns: 0,
            elapsed_ns: 0,
            winding_down: false,
            failure: None,
            progress,
            report: Some(report),
            crash,
            pace_ns: 1_000_000_000u64.checked_div(plan.rate_iops).unwrap_or(0),
            next_due_ns: 0,
            paced: Vec::with_capacity(qd),
        })
    }

    #[inline]
    fn next_random(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A unit in the job's range, uniform or skewed by `hot`, without a division.
    #[inline]
    fn random_unit(&mut self) -> u64 {
        let r = self.next_random();
        let scale = |r: u64, n: u64| ((r as u128 * n as u128) >> 64) as u64;
        match self.plan.hot {
            None => self.plan.first_unit + scale(r, self.plan.units),
            Some((space_pct, io_pct)) => {
                let hot_units = (self.plan.units * space_pct as u64 / 100).max(1);
                let cold_units = self.plan.units - hot_units;
                let to_hot = scale(self.next_random(), 100) < io_pct as u64 || cold_units == 0;
                if to_hot {
                    self.plan.first_unit + scale(r, hot_units)
                } else {
                    self.plan.first_unit + hot_units + scale(r, cold_units)
                }
            }
        }
    }

    #[inline]
    fn sequential_unit(&mut self) -> u64 {
        let u = self.plan.first_unit + self.next_unit;
        self.next_unit += 1;
        if self.next_unit == self.plan.units {
            self.next_unit = 0;
            self.lap += 1;
        }
        u
    }

    #[inline]
    fn submit(&mut self, slot: usize, io_type: IoType, unit: u64, now_ns: u64) -> bool {
        let flush = io_type == IoType::Flush;
        let req = IoRequest {
            io_type,
            offset_blocks: if flush {
                0
            } else {
                unit * self.plan.blocks_per_io
            },
            num_blocks: if flush { 0 } else { self.plan.blocks_per_io },
            iovs: if flush {
                &[]
            } else {
                std::slice::from_ref(&self.iovs[slot])
            },
            fua: false,
            tag: slot as u64,
        };
        match self.channel.submit(&req, now_ns) {
            Ok(()) => true,
            Err(e) => {
                // The plan was checked against the bdev, so this is a bug or a full module
                // queue; either way the job cannot go on meaningfully.
                self.errors += 1;
                self.winding_down = true;
                tracing::error!(reactor = self.plan.reactor, "bench submit failed: {e}");
                false
            }
        }
    }

    /// Starts the next I/O on `slot` according to the workload.
    #[inline]
    fn start_next(&mut self, slot: usize, now_ns: u64) {
        if self.pace_ns != 0 {
            if now_ns < self.next_due_ns {
                debug_assert!(self.paced.len() < self.phases.len() && !self.paced.contains(&slot));
                self.paced.push(slot);
                return;
            }
            // One I/O every `pace_ns`; a job that fell behind catches up by one, not a burst.
            self.next_due_ns =
                self.next_due_ns.max(now_ns.saturating_sub(self.pace_ns)) + self.pace_ns;
        }
        if self.plan.max_ios != 0 {
            if self.submitted == self.plan.max_ios {
                self.winding_down = true;
                return;
            }
            self.submitted += 1;
        }
        let (io_type, unit, phase) = match self.plan.workload {
            Workload::RandRead => (IoType::Read, self.random_unit(), Phase::Io),
            Workload::RandWrite => (IoType::Write, self.random_unit(), Phase::Io),
            Workload::Read => (IoType::Read, self.sequential_unit(), Phase::Io),
            Workload::Write => (IoType::Write, self.sequential_unit(), Phase::Io),
            Workload::Rw | Workload::RandRw => {
                let read = (self.next_random() % 100) < self.plan.read_percent as u64;
                let unit = if self.plan.workload == Workload::Rw {
                    self.sequential_unit()
                } else {
                    self.random_unit()
                };
                let t = if read { IoType::Read } else { IoType::Write };
                (t, unit, Phase::Io)
            }
            Workload::CrashWrite => match self.crash_next(slot) {
                Some(x) => x,
                None => return,
            },
            Workload::Verify => {
                // Skip units another slot is still writing or reading back, so two slots
                // never work on one unit at once (the plan guarantees units > queue depth).
                let mut unit = self.sequential_unit();
                while self.phases.iter().any(|p| p.holds(unit)) {
                    unit = self.sequential_unit();
                }
                let first_lba = unit * self.plan.blocks_per_io;
                let seed = self.plan.seed ^ self.lap.wrapping_mul(0x1000_0000_01B3);
                pattern::fill(
                    self.bufs[slot].as_mut_slice_prefix(self.iovs[slot].len()),
                    first_lba,
                    self.block_size,
                    seed,
                );
                (IoType::Write, unit, Phase::VerifyWrite(unit, seed))
            }
        };
        if self.submit(slot, io_type, unit, now_ns) {
            self.phases[slot] = phase;
        }
    }

    /// The crash workload's next I/O for `slot`: a check read while checks remain, then
    /// tagged writes at random with a FLUSH every 32nd I/O. None: nothing to start now.
    fn crash_next(&mut self, slot: usize) -> Option<(IoType, u64, Phase)> {
        let len = self.iovs[slot].len();
        let block_size = self.block_size;
        let blocks_per_io = self.plan.blocks_per_io;
        let verified = self.crash.as_ref().is_some_and(|c| c.verified);
        if !verified {
            let c = self.crash.as_mut()?;
            let &(unit, tag) = c.checks.get(c.next_check)?;
            c.next_check += 1;
            self.bufs[slot].as_mut_slice_prefix(len).fill(0xA5);
            return Some((IoType::Read, unit, Phase::CheckRead(unit, tag)));
        }
        let ops = {
            let c = self.crash.as_mut()?;
            c.ops += 1;
            c.ops
        };
        if ops.is_multiple_of(32) {
            return Some((IoType::Flush, 0, Phase::Io));
        }
        let mut unit = self.random_unit();
        while self.phases.iter().any(|p| p.holds(unit)) {
            unit = self.random_unit();
        }
        let tag = self.crash.as_ref()?.tag_base + ops;
        pattern::fill_tagged(
            self.bufs[slot].as_mut_slice_prefix(len),
            unit * blocks_per_io,
            block_size,
            tag,
        );
        Some((IoType::Write, unit, Phase::TaggedWrite(unit, tag)))
    }

    /// A check read came back: every block must be zeroes or one whole write, and a unit the
    /// journal names must hold its tag or a newer one.
    fn crash_check(&mut self, slot: usize, unit: u64, want: Option<u64>) {
        let first_lba = unit * self.plan.blocks_per_io;
        let buf = &self.bufs[slot].as_slice()[..self.iovs[slot].len()];
        for (i, block) in buf.chunks_exact(self.block_size).enumerate() {
            let lba = first_lba + i as u64;
            let bad = match pattern::read_tag(block, lba) {
                Err(m) => Some(m),
                Ok(got) => match (want, got) {
                    (Some(w), Some(g)) if g >= w => None,
                    (Some(w), g) => Some(pattern::Mismatch {
                        lba,
                        byte_in_block: 0,
                        expected: w,
                        found: g.unwrap_or(0),
                    }),
                    (None, _) => None,
                },
            };
            if let Some(m) = bad {
                if self.failure.is_none_or(|f| m.lba < f.lba) {
                    self.failure = Some(VerifyFailure {
                        lba: m.lba,
                        byte_in_block: m.byte_in_block,
                        expected: m.expected,
                        found: m.found,
                    });
                }
                self.winding_down = true;
                return;
            }
        }
    }

    /// Once every check is back, says so (the crash test waits for this line) and starts
    /// the writes on every idle slot.
    fn crash_maybe_verified(&mut self, now_ns: u64) {
        let Some(c) = self.crash.as_mut() else {
            return;
        };
        if c.verified || c.next_check < c.checks.len() {
            return;
        }
        if self
            .phases
            .iter()
            .any(|p| matches!(p, Phase::CheckRead(..)))
        {
            return;
        }
        c.verified = true;
        println!(
            "crashwrite: journal verified: {} units on reactor {}",
            c.checks.len(),
            self.plan.reactor
        );
        if !self.winding_down {
            for slot in 0..self.phases.len() {
                if self.phases[slot] == Phase::Idle {
                    self.start_next(slot, now_ns);
                }
            }
        }
    }

    fn complete(&mut self, c: IoCompletion, now_ns: u64) {
        let slot = c.tag as usize;
        let phase = std::mem::replace(&mut self.phases[slot], Phase::Idle);
        if let IoStatus::Failed(errno) = c.status {
            self.errors += 1;
            if self.errors == 1 {
                tracing::error!(
                    reactor = self.plan.reactor,
                    "{} failed: {}",
                    c.io_type.name(),
                    std::io::Error::from_raw_os_error(errno)
                );
            }
        } else if !self.winding_down {
            self.ios += 1;
            self.bytes += self.iovs[slot].len() as u64;
            self.hist.saturating_record(c.latency_ns.max(1));
        }
        match phase {
            Phase::CheckRead(unit, want) if c.status == IoStatus::Success => {
                self.crash_check(slot, unit, want);
                if !self.winding_down && now_ns < self.end_ns {
                    self.start_next(slot, now_ns);
                }
                self.crash_maybe_verified(now_ns);
                return;
            }
            Phase::TaggedWrite(unit, tag) if c.status == IoStatus::Success => {
                if let Some(c) = self.crash.as_mut() {
                    c.journal.record(unit, tag);
                }
            }
            Phase::VerifyWrite(unit, seed) if c.status == IoStatus::Success => {
                // Scribble over the buffer so that a read that moves no data is caught.
                self.bufs[slot]
                    .as_mut_slice_prefix(self.iovs[slot].len())
                    .fill(0xA5);
                if self.submit(slot, IoType::Read, unit, now_ns) {
                    self.phases[slot] = Phase::VerifyRead(unit, seed);
                }
                return;
            }
            Phase::VerifyRead(unit, seed) if c.status == IoStatus::Success => {
                let first_lba = unit * self.plan.blocks_per_io;
                let buf = &self.bufs[slot].as_slice()[..self.iovs[slot].len()];
                if let Some(m) = pattern::check(buf, first_lba, self.block_size, seed) {
                    if self.failure.is_none_or(|f| m.lba < f.lba) {
                        self.failure = Some(VerifyFailure {
                            lba: m.lba,
                            byte_in_block: m.byte_in_block,
                            expected: m.expected,
                            found: m.found,
                        });
                    }
                    self.winding_down = true;
                }
            }
            _ => {}
        }
        if !self.winding_down && now_ns < self.end_ns {
            self.start_next(slot, now_ns);
        }
    }

    /// The poller body.
    pub fn poll(&mut self, ctx: &PollContext) -> PollStatus {
        let now = ctx.now_ns;
        let Some(start) = self.start_ns else {
            self.start_ns = Some(now);
            self.end_ns = now + self.plan.duration_ns;
            for slot in 0..self.plan.queue_depth as usize {
                self.start_next(slot, now);
            }
            self.crash_maybe_verified(now);
            return PollStatus::Busy;
        };
        let mut completions = std::mem::take(&mut self.completions);
        let n = self.channel.poll(now, &mut completions);
        for c in completions.drain(..) {
            self.complete(c, now);
        }
        self.completions = completions;
        if let Some(c) = self.crash.as_mut() {
            c.journal.flush();
        }
        if !self.winding_down && (now >= self.end_ns || ctx.stopping) {
            self.winding_down = true;
        }
        while !self.winding_down && now >= self.next_due_ns {
            let Some(slot) = self.paced.pop() else {
                break;
            };
            self.start_next(slot, now);
        }
        if self.winding_down && self.elapsed_ns == 0 {
            self.elapsed_ns = (now - start).max(1);
        }
        self.progress.store(self.ios, Relaxed);
        if self.winding_down && self.channel.in_flight() == 0 {
            self.finish();
            return PollStatus::Done;
        }
        if n > 0 {
            PollStatus::Busy
        } else {
            PollStatus::Waiting
        }
    }

    fn finish(&mut self) {
        let Some(report) = self.report.take() else {
            return;
        };
        let result = JobResult {
            reactor: self.plan.reactor,
            core: self.plan.core,
            ios: self.ios,
            bytes: self.bytes,
            errors: self.errors,
            elapsed_ns: self.elapsed_ns,
            histogram: self.hist.clone(),
            verify_failure: self.failure,
        };
        let _ = report.send(Ok(result));
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        debug_assert!(self.channel.in_flight() == 0 || self.report.is_some());
        for buf in self.bufs.drain(..) {
            self.pool.put(buf);
        }
        if let Some(report) = self.report.take() {
            let _ = report.send(Err(format!(
                "job on reactor {} stopped before it finished",
                self.plan.reactor
            )));
        }
    }
}

trait PrefixMut {
    fn as_mut_slice_prefix(&mut self, len: usize) -> &mut [u8];
}

impl PrefixMut for DmaBuf {
    fn as_mut_slice_prefix(&mut self, len: usize) -> &mut [u8] {
        &mut self.as_mut_slice()[..len]
    }
}
