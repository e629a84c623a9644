//! Pool jobs: a pool's format, load or erase, an lvol's create, resize or delete, and a new
//! bdev's first reads (is there a pool on it?)
//! (blocking I/O on the base bdev, and walks of a volume's map: up to seconds) run on a
//! thread of their own, so that reactor 0, which serves the RPC socket and polls I/O, never
//! waits for them. The RPC that started one answers through a deferred answer
//! (`methods::DeferredAnswer`) once the job is done.
//!
//! - At most `MAX_POOL_JOBS` of each kind (`JobKind`) run at once, and one lvol job per
//!   lvstore (`VolumeJob`).
//! - A job's thread runs on the process's CPUs (as it started), not pinned to reactor 0's
//!   core as the thread that starts it is.
//! - When a job ends it wakes reactor 0, so its answer goes out without waiting for a
//!   sleeping reactor's next timer.
//! - A clean shutdown waits for running jobs that write (`wait_for_pool_jobs`), so a format
//!   is never cut off halfway by the process exiting; a new bdev's first reads (examine) are
//!   not waited for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::lsv::pool::{LsvPool, PoolError};
use crate::reactor::Reactors;

/// Jobs of each kind running at once.
pub const MAX_POOL_JOBS: usize = 4;
/// Running jobs, by kind (`JobKind as usize`).
static RUNNING: [AtomicUsize; 3] = [
    AtomicUsize::new(0),
    AtomicUsize::new(0),
    AtomicUsize::new(0),
];

/// What a job does; each kind has its own `MAX_POOL_JOBS` slots, so that slow lvol work
/// (a TiB volume's delete) never keeps an lvstore from being made or loaded, nor the
/// other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// An lvstore's format, load (examine) or erase.
    Pool = 0,
    /// An lvol's create, resize or delete.
    Volume = 1,
    /// A new bdev's first reads (is there a pool on it?): a slow or hung device holds one
    /// of these, not a slot that formats, loads or erases need.
    Examine = 2,
}

/// A running job's result, when it comes.
pub type PoolJob<T> = Receiver<Result<T, PoolError>>;

/// Why a job did not start.
#[derive(Debug)]
pub enum NotStarted {
    /// `MAX_POOL_JOBS` of this kind run already.
    Busy(JobKind),
    /// No thread could be made.
    Thread(std::io::Error),
}

impl std::fmt::Display for NotStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotStarted::Busy(JobKind::Pool) => write!(
                f,
                "{MAX_POOL_JOBS} lvstores are being formatted, loaded or erased; retry when \
                 one is done"
            ),
            NotStarted::Busy(JobKind::Volume) => write!(
                f,
                "{MAX_POOL_JOBS} lvols are being created, resized or deleted; retry when one \
                 is done"
            ),
            NotStarted::Busy(JobKind::Examine) => write!(
                f,
                "{MAX_POOL_JOBS} new bdevs are being examined; retry when one is done"
            ),
            NotStarted::Thread(e) => write!(f, "cannot start a thread for the job: {e}"),
        }
    }
}

/// A job slot of a kind, taken until dropped (also when the job panics).
struct Slot(JobKind);

impl Drop for Slot {
    fn drop(&mut self) {
        RUNNING[self.0 as usize].fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes a slot of `kind`, if one of its `MAX_POOL_JOBS` is free.
fn take_slot(kind: JobKind) -> Option<Slot> {
    let running = &RUNNING[kind as usize];
    if running.fetch_add(1, Ordering::AcqRel) >= MAX_POOL_JOBS {
        running.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    Some(Slot(kind))
}

/// Runs `job` on a thread named `name`, in `slot` (given back when the job ends); its result
/// comes on the channel returned, and then reactor 0 is woken (through `reactors`).
fn spawn_in_slot<T: Send + 'static>(
    slot: Slot,
    name: &str,
    reactors: &Reactors,
    job: impl FnOnce() -> Result<T, PoolError> + Send + 'static,
) -> std::io::Result<PoolJob<T>> {
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
    let reactors = reactors.clone();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            // Dropped last, also when the job panics: reactor 0 wakes (an empty message) and
            // polls the answer, or starts a job that waited for this slot.
            let _wake = WakeReactor0(reactors);
            // Dropped before the wake, also on a panic: reactor 0 then finds the job ended.
            let done_tx = done_tx;
            let slot = slot;
            unpin_current_thread();
            let r = job();
            let _ = done_tx.send(r);
            drop(slot);
        })?;
    Ok(done_rx)
}

/// Wakes reactor 0 when dropped.
struct WakeReactor0(Reactors);

impl Drop for WakeReactor0 {
    fn drop(&mut self) {
        let _ = self.0.send(0, |_| {});
    }
}

/// Tests: every free slot of `kind`, held until dropped.
#[cfg(test)]
pub struct HeldSlots(#[allow(dead_code)] Vec<Slot>);

#[cfg(test)]
pub fn hold_every_slot(kind: JobKind) -> HeldSlots {
    HeldSlots(std::iter::from_fn(|| take_slot(kind)).collect())
}

/// Whether a job of `kind` would find a free slot now (jobs are started only from reactor 0,
/// so a true stays true until it starts one).
pub fn job_slot_free(kind: JobKind) -> bool {
    RUNNING[kind as usize].load(Ordering::Acquire) < MAX_POOL_JOBS
}

/// `take_slot` and `spawn_in_slot` in one.
pub fn spawn_pool_job<T: Send + 'static>(
    kind: JobKind,
    name: &str,
    reactors: &Reactors,
    job: impl FnOnce() -> Result<T, PoolError> + Send + 'static,
) -> Result<PoolJob<T>, NotStarted> {
    let slot = take_slot(kind).ok_or(NotStarted::Busy(kind))?;
    spawn_in_slot(slot, name, reactors, job).map_err(NotStarted::Thread)
}

/// How long an lvol job waits for its lvstore's turn and a slot before it gives up, unrun:
/// a job ahead of it on a slow or hung base may never end, and its client should hear so.
pub const VOLUME_JOB_WAIT: Duration = Duration::from_secs(30);

/// An lvol's job (`JobKind::Volume`: a create, resize or delete), started on a thread of its
/// own as soon as a slot is free. Never run on reactor 0: it may wait for another volume
/// operation of its pool (`LsvPool::volume_ops_lock`), which may take seconds. If it has
/// not started `VOLUME_JOB_WAIT` after its first poll, it ends unrun, with
/// `PoolError::JobsAhead`.
pub struct VolumeJob<T> {
    name: &'static str,
    pool: Arc<LsvPool>,
    job: Option<Box<dyn FnOnce() -> Result<T, PoolError> + Send>>,
    running: Option<PoolJob<T>>,
    /// How long it may wait to start, from its first poll.
    wait: Duration,
    first_polled: Option<Instant>,
}

impl<T: Send + 'static> VolumeJob<T> {
    pub fn new(
        name: &'static str,
        pool: &Arc<LsvPool>,
        job: impl FnOnce() -> Result<T, PoolError> + Send + 'static,
    ) -> VolumeJob<T> {
        VolumeJob {
            name,
            pool: pool.clone(),
            job: Some(Box::new(job)),
            running: None,
            wait: VOLUME_JOB_WAIT,
            first_polled: None,
        }
    }

    /// The same job, giving up if it has not started within `wait` (tests).
    #[cfg(test)]
    fn waiting_at_most(mut self, wait: Duration) -> VolumeJob<T> {
        self.wait = wait;
        self
    }

    /// Starts the job if it waits, its pool has no other volume job running (one pool's
    /// slow walks hold one thread, not every slot) and a slot is free; its result once it is
    /// done, or `PoolError::JobsAhead` (the job dropped unrun) once it has waited too long.
    pub fn poll(&mut self, reactors: &Reactors) -> Option<Result<T, PoolError>> {
        if let Some(rx) = &self.running {
            return pool_job_result(rx);
        }
        if self.first_polled.get_or_insert_with(Instant::now).elapsed() >= self.wait {
            // Dropped unrun: what it holds (its volume operation's count, a claim's
            // release in its answer) goes now.
            self.job = None;
            return Some(Err(PoolError::JobsAhead {
                pool: self.pool.name.clone(),
                waited_s: self.wait.as_secs(),
            }));
        }
        let turn = self.pool.try_volume_job_turn()?;
        let slot = take_slot(JobKind::Volume)?;
        let job = self.job.take().expect("a job starts once");
        let job = move || {
            let _turn = turn;
            job()
        };
        match spawn_in_slot(slot, self.name, reactors, job) {
            Ok(rx) => {
                self.running = Some(rx);
                None
            }
            Err(e) => Some(Err(PoolError::Base(format!(
                "cannot start a thread for {}: {e}",
                self.name
            )))),
        }
    }
}

/// What a job's channel gave, if it is done: its result, or an error if its thread ended
/// without one (it panicked: a bug).
pub fn pool_job_result<T>(rx: &PoolJob<T>) -> Option<Result<T, PoolError>> {
    match rx.try_recv() {
        Ok(r) => Some(r),
        Err(TryRecvError::Empty) => None,
        Err(TryRecvError::Disconnected) => {
            Some(Err(PoolError::Base("the job stopped unexpectedly".into())))
        }
    }
}

/// Waits until no job that writes runs (examines only read: one on a hung device is not
/// waited for), at most `limit`; returns how many still run.
pub fn wait_for_pool_jobs(limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let n: usize = [JobKind::Pool, JobKind::Volume]
            .iter()
            .map(|&k| RUNNING[k as usize].load(Ordering::Acquire))
            .sum();
        if n == 0 || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The CPUs the process may run on, as it started (before reactors pinned their threads).
static PROCESS_CPUS: std::sync::OnceLock<libc::cpu_set_t> = std::sync::OnceLock::new();

/// Notes the CPUs the calling thread may run on as the process's own: call it from the main
/// thread before reactors start. Jobs then run on those CPUs, not on the core of the
/// reactor that started them.
pub fn remember_process_cpus() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity writes at most `size_of` bytes into `set`.
    let got =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if got == 0 {
        let _ = PROCESS_CPUS.set(set);
    }
}

/// Lets the calling thread run on the process's CPUs (`remember_process_cpus`): a thread
/// started by a reactor inherits the reactor's pinning, and would take its core's time from
/// it. Nothing changes if they were not noted.
fn unpin_current_thread() {
    let Some(set) = PROCESS_CPUS.get() else {
        return;
    };
    // SAFETY: `set` is a valid cpu_set_t; sched_setaffinity reads `size_of` bytes of it.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) } != 0 {
        tracing::debug!(
            "pool job: sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::malloc::MallocBdev;
    use crate::bdev::BdevRegistry;
    use crate::reactor::ReactorSet;
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering::SeqCst;

    /// An lvol job whose lvstore's turn does not come in time (a job ahead of it waits on a
    /// hung base) gives up unrun, and what it held goes with it; with its turn free, the
    /// same kind of job runs.
    #[test]
    fn an_lvol_job_that_cannot_start_in_time_gives_up_unrun() {
        let disk = MallocBdev::with_size("m", 64 << 20, 4096).unwrap();
        let base = BdevRegistry::new().register(Arc::new(disk)).unwrap();
        let pool = LsvPool::create("p", base, 1 << 20).unwrap();
        let set = ReactorSet::start_one_for_tests();
        let reactors = set.handle();
        let ahead = pool.try_volume_job_turn().expect("no other job runs");
        let (ran, held) = (Arc::new(AtomicBool::new(false)), Arc::new(()));
        let mut job = {
            let (ran, held) = (ran.clone(), held.clone());
            VolumeJob::new("test-job", &pool, move || {
                let _held = held;
                ran.store(true, SeqCst);
                Ok(())
            })
            .waiting_at_most(Duration::from_millis(100))
        };
        assert!(job.poll(&reactors).is_none(), "it waits for its turn");
        std::thread::sleep(Duration::from_millis(150));
        match job.poll(&reactors) {
            Some(Err(PoolError::JobsAhead { pool, .. })) => assert_eq!(pool, "p"),
            other => panic!("gave no JobsAhead: {:?}", other.map(|r| r.err())),
        }
        assert!(!ran.load(SeqCst), "it never ran");
        assert_eq!(Arc::strong_count(&held), 1, "what it held is let go");
        // Control: once the job ahead ends, one runs.
        drop(ahead);
        let mut job =
            VolumeJob::new("test-job", &pool, || Ok(7)).waiting_at_most(Duration::from_secs(10));
        let got = loop {
            if let Some(r) = job.poll(&reactors) {
                break r;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(got.unwrap(), 7);
        reactors.request_stop();
        set.join();
    }
}
