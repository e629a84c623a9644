//! Reactors: one OS thread pinned to one core, running its pollers in a loop.
//!
//! Any thread sends a reactor work as a message (a closure) over a bounded lock-free queue.
//! Nothing in the loop takes a lock. In the adaptive idle mode a reactor that has found nothing
//! to do for a while sleeps on an eventfd; message senders and the next timer wake it.

pub mod cpumask;
pub mod poller;
pub mod stats;
pub mod wake;

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;
use thiserror::Error;

pub use cpumask::{available_cores, CpuMask, CpumaskError};
pub use poller::{PollContext, PollFn, PollStatus, PollerKind};
pub use stats::ReactorStatsSnapshot;

use poller::Poller;
use stats::ReactorStats;
use wake::WakeFd;

thread_local! {
    /// The eventfd that wakes the reactor running on this thread (-1 off a reactor thread).
    static CURRENT_WAKE_FD: std::cell::Cell<i32> = const { std::cell::Cell::new(-1) };
    /// The earliest moment a module on this thread asked its reactor to look again by
    /// (`wake_by`), since the reactor last slept.
    static WAKE_BY: std::cell::Cell<Option<std::time::Instant>> =
        const { std::cell::Cell::new(None) };
}

/// Asks the calling thread's reactor not to sleep past `at`: for a module that holds work
/// for a set time with nothing to wake the reactor when it is due (the delay bdev's held
/// completions). A module asks again on each poll while it still holds work; the reactor
/// forgets the asks each time it sleeps. Off a reactor thread nobody reads it.
pub fn wake_by(at: std::time::Instant) {
    WAKE_BY.with(|w| w.set(Some(w.get().map_or(at, |t| t.min(at)))));
}

/// The eventfd that wakes the calling thread's reactor from an adaptive sleep, if the caller
/// runs on a reactor. An I/O module registers it (io_uring's `register_eventfd`) so that a
/// completion wakes a reactor that went to sleep while waiting for it.
pub fn current_wake_fd() -> Option<i32> {
    let fd = CURRENT_WAKE_FD.with(|c| c.get());
    (fd >= 0).then_some(fd)
}

/// Work sent to a reactor; it runs on that reactor's thread with the reactor borrowed mutably.
pub type Message = Box<dyn FnOnce(&mut Reactor) + Send>;

/// Messages a reactor's mailbox holds before `send` reports it full.
pub const MAILBOX_CAPACITY: usize = 4096;
/// Messages a reactor runs per loop pass, so a flood of messages cannot starve its pollers.
pub const MESSAGES_PER_PASS: usize = 64;
/// Pollers one reactor may have registered at once.
pub const MAX_POLLERS: usize = 4096;
/// Idle passes in a row after which an adaptive reactor goes to sleep.
pub const IDLE_PASSES_BEFORE_SLEEP: u32 = 2048;
/// Longest single sleep; a reactor re-checks its state at least this often.
pub const MAX_SLEEP_MS: i32 = 100;
/// How long a stopping reactor waits for its I/O pollers to drain before giving up on them.
pub const DRAIN_LIMIT_NS: u64 = 30_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdlePolicy {
    /// Poll forever; for benchmarks.
    Busy,
    /// Sleep on an eventfd after a run of idle passes.
    Adaptive,
}

impl std::str::FromStr for IdlePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "busy" => Ok(IdlePolicy::Busy),
            "adaptive" => Ok(IdlePolicy::Adaptive),
            other => Err(format!(
                "idle policy {other:?} is neither \"busy\" nor \"adaptive\""
            )),
        }
    }
}

impl IdlePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            IdlePolicy::Busy => "busy",
            IdlePolicy::Adaptive => "adaptive",
        }
    }
}

#[derive(Debug, Error)]
pub enum ReactorError {
    #[error("reactor {reactor} does not exist (there are {count})")]
    NoSuchReactor { reactor: usize, count: usize },
    #[error("reactor {0}'s mailbox is full ({MAILBOX_CAPACITY} messages)")]
    MailboxFull(usize),
    #[error("reactors are shutting down")]
    Stopping,
    #[error("cannot set up reactor: {0}")]
    Setup(#[from] std::io::Error),
}

/// Runs once on each reactor thread after pinning, before the loop starts (for per-core state
/// such as buffer pools).
pub type ThreadInit = Arc<dyn Fn(usize) + Send + Sync>;

pub struct ReactorConfig {
    pub cpumask: CpuMask,
    pub idle: IdlePolicy,
    /// Idle passes in a row before an adaptive reactor sleeps (`IDLE_PASSES_BEFORE_SLEEP`).
    pub idle_spin_passes: u32,
    pub thread_init: Option<ThreadInit>,
}

struct Mailbox {
    queue: ArrayQueue<Message>,
    sleeping: AtomicBool,
    wake: WakeFd,
}

/// Per-reactor state is cache-padded so that reactors never write to one cache line.
struct Shared {
    mailboxes: Box<[CachePadded<Mailbox>]>,
    stats: Box<[CachePadded<ReactorStats>]>,
    cores: Vec<usize>,
    stop: AtomicBool,
    idle: IdlePolicy,
    idle_spin_passes: u32,
    epoch: Instant,
}

/// A cheap, cloneable handle to the running reactors: send messages, read statistics, stop.
#[derive(Clone)]
pub struct Reactors {
    shared: Arc<Shared>,
}

impl Reactors {
    pub fn count(&self) -> usize {
        self.shared.cores.len()
    }

    /// The core reactor `reactor` is pinned to.
    pub fn core(&self, reactor: usize) -> usize {
        self.shared.cores[reactor]
    }

    pub fn idle_policy(&self) -> IdlePolicy {
        self.shared.idle
    }

    /// Nanoseconds since the reactors started (the same clock pollers see).
    pub fn now_ns(&self) -> u64 {
        self.shared.epoch.elapsed().as_nanos() as u64
    }

    /// Sends `work` to run on reactor `reactor`. Never blocks.
    pub fn send(
        &self,
        reactor: usize,
        work: impl FnOnce(&mut Reactor) + Send + 'static,
    ) -> Result<(), ReactorError> {
        let mailbox = self
            .shared
            .mailboxes
            .get(reactor)
            .ok_or(ReactorError::NoSuchReactor {
                reactor,
                count: self.count(),
            })?;
        if self.shared.stop.load(Ordering::Relaxed) {
            return Err(ReactorError::Stopping);
        }
        mailbox
            .queue
            .push(Box::new(work))
            .map_err(|_| ReactorError::MailboxFull(reactor))?;
        // Pairs with the fence in `Reactor::sleep`: either the reactor sees our message before
        // it sleeps, or we see it asleep and wake it.
        fence(Ordering::SeqCst);
        if mailbox.sleeping.load(Ordering::Relaxed) {
            mailbox.wake.wake();
        }
        Ok(())
    }

    pub fn stats(&self, reactor: usize) -> ReactorStatsSnapshot {
        self.shared.stats[reactor].snapshot()
    }

    /// Asks every reactor to stop: they stop taking messages, drain their I/O pollers and exit.
    pub fn request_stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for m in self.shared.mailboxes.iter() {
            m.wake.wake();
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }
}

/// The reactor threads. Dropping it without `join` leaves them running.
pub struct ReactorSet {
    handle: Reactors,
    threads: Vec<JoinHandle<()>>,
}

impl ReactorSet {
    /// Tests: one adaptive reactor on the first core this process may use.
    #[cfg(test)]
    pub fn start_one_for_tests() -> ReactorSet {
        ReactorSet::start(ReactorConfig {
            cpumask: CpuMask::single(available_cores()[0]),
            idle: IdlePolicy::Adaptive,
            idle_spin_passes: IDLE_PASSES_BEFORE_SLEEP,
            thread_init: None,
        })
        .expect("one reactor starts")
    }

    /// Starts one pinned thread per core in the mask. Reactor 0 is the main reactor.
    pub fn start(config: ReactorConfig) -> Result<ReactorSet, ReactorError> {
        let cores = config.cpumask.cores().to_vec();
        let mut mailboxes = Vec::with_capacity(cores.len());
        for _ in &cores {
            mailboxes.push(CachePadded::new(Mailbox {
                queue: ArrayQueue::new(MAILBOX_CAPACITY),
                sleeping: AtomicBool::new(false),
                wake: WakeFd::new()?,
            }));
        }
        let shared = Arc::new(Shared {
            mailboxes: mailboxes.into_boxed_slice(),
            stats: cores
                .iter()
                .map(|_| CachePadded::new(ReactorStats::default()))
                .collect(),
            cores: cores.clone(),
            stop: AtomicBool::new(false),
            idle: config.idle,
            idle_spin_passes: config.idle_spin_passes.max(1),
            epoch: Instant::now(),
        });
        let handle = Reactors { shared };
        let mut threads = Vec::with_capacity(cores.len());
        for (index, &core) in cores.iter().enumerate() {
            let handle = handle.clone();
            let init = config.thread_init.clone();
            let thread = std::thread::Builder::new()
                .name(format!("reactor_{index}"))
                .spawn(move || {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                        tracing::warn!(reactor = index, core, "could not pin reactor to its core");
                    }
                    if let Some(init) = init {
                        init(index);
                    }
                    Reactor::new(index, handle).run();
                })?;
            threads.push(thread);
        }
        Ok(ReactorSet { handle, threads })
    }

    pub fn handle(&self) -> Reactors {
        self.handle.clone()
    }

    /// Waits for every reactor thread to exit (after `request_stop`).
    pub fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a reactor thread panicked");
            }
        }
    }
}

/// One reactor, owned by its thread.
pub struct Reactor {
    index: usize,
    handle: Reactors,
    pollers: Vec<Poller>,
    now_ns: u64,
    /// Scratch list of pollers' wake fds, reused by every sleep.
    sleep_fds: Vec<std::os::fd::RawFd>,
}

impl Reactor {
    fn new(index: usize, handle: Reactors) -> Reactor {
        Reactor {
            index,
            handle,
            pollers: Vec::with_capacity(64),
            now_ns: 0,
            sleep_fds: Vec::with_capacity(16),
        }
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn reactors(&self) -> &Reactors {
        &self.handle
    }

    /// The time of the current loop pass, ns since the reactors started.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// Registers a poller; `period_us` 0 runs it every pass, otherwise on that timer while it
    /// returns Idle (after Busy or Waiting it runs again on the next pass).
    /// Returns false (and drops the poller) when the reactor already has `MAX_POLLERS`.
    pub fn register_poller(
        &mut self,
        name: impl Into<String>,
        kind: PollerKind,
        period_us: u64,
        run: impl FnMut(&PollContext) -> PollStatus + 'static,
    ) -> bool {
        self.register_poller_with_wake_fd(name, kind, period_us, None, run)
    }

    /// Registers a poller whose work arrives on `wake_fd` (a socket or epoll descriptor): an
    /// adaptive reactor sleeps until that fd is readable instead of waking for the timer.
    pub fn register_poller_with_wake_fd(
        &mut self,
        name: impl Into<String>,
        kind: PollerKind,
        period_us: u64,
        wake_fd: Option<std::os::fd::RawFd>,
        run: impl FnMut(&PollContext) -> PollStatus + 'static,
    ) -> bool {
        if self.pollers.len() >= MAX_POLLERS {
            return false;
        }
        let period_ns = period_us.saturating_mul(1000);
        self.pollers.push(Poller {
            name: name.into(),
            kind,
            period_ns,
            next_run_ns: self.now_ns.saturating_add(period_ns),
            wake_fd,
            run: Box::new(run),
        });
        true
    }

    /// Names of the registered pollers, with their periods in µs.
    pub fn poller_names(&self) -> Vec<(String, u64)> {
        self.pollers
            .iter()
            .map(|p| (p.name.clone(), p.period_ns / 1000))
            .collect()
    }

    fn mailbox(&self) -> &Mailbox {
        &self.handle.shared.mailboxes[self.index]
    }

    fn clock(&self) -> u64 {
        self.handle.shared.epoch.elapsed().as_nanos() as u64
    }

    /// Runs up to `MESSAGES_PER_PASS` messages; returns how many ran.
    fn run_messages(&mut self) -> usize {
        let mut ran = 0;
        while ran < MESSAGES_PER_PASS {
            let Some(message) = self.handle.shared.mailboxes[self.index].queue.pop() else {
                break;
            };
            message(self);
            ran += 1;
        }
        ran
    }

    /// Calls every due poller once. Returns (did work, must keep polling).
    fn run_pollers(&mut self, stopping: bool) -> (bool, bool) {
        let ctx = PollContext {
            now_ns: self.now_ns,
            reactor: self.index,
            stopping,
        };
        let mut busy = false;
        let mut outstanding = false;
        let mut finished = false;
        for p in self.pollers.iter_mut() {
            if p.period_ns != 0 {
                if ctx.now_ns < p.next_run_ns {
                    continue;
                }
                p.next_run_ns = ctx.now_ns + p.period_ns;
            }
            let status = (p.run)(&ctx);
            if p.period_ns != 0 && matches!(status, PollStatus::Busy | PollStatus::Waiting) {
                // A timed poller with work under way runs every pass until it is idle again.
                p.next_run_ns = ctx.now_ns;
            }
            match status {
                PollStatus::Idle => {}
                PollStatus::Busy => busy = true,
                PollStatus::Waiting => outstanding = true,
                PollStatus::Done => {
                    // Mark for removal; a Done poller is never called again.
                    p.period_ns = u64::MAX;
                    finished = true;
                }
            }
        }
        if finished {
            self.pollers.retain(|p| p.period_ns != u64::MAX);
        }
        (busy, outstanding)
    }

    /// Nanoseconds until the earliest timed poller is due, if any.
    fn next_timer_ns(&self) -> Option<u64> {
        self.pollers
            .iter()
            .filter(|p| p.period_ns != 0 && p.wake_fd.is_none())
            .map(|p| p.next_run_ns.saturating_sub(self.now_ns))
            .min()
    }

    fn sleep(&mut self) {
        self.sleep_fds.clear();
        self.sleep_fds
            .extend(self.pollers.iter().filter_map(|p| p.wake_fd));
        let mailbox = &self.handle.shared.mailboxes[self.index];
        mailbox.sleeping.store(true, Ordering::Relaxed);
        // Pairs with the fence in `Reactors::send`.
        fence(Ordering::SeqCst);
        if mailbox.queue.is_empty() && !self.handle.is_stopping() {
            let asked_ns = WAKE_BY.with(|w| w.take()).map(|at| {
                at.saturating_duration_since(std::time::Instant::now())
                    .as_nanos() as u64
            });
            let due_ns = match (self.next_timer_ns(), asked_ns) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout_ms = match due_ns {
                Some(ns) => (ns / 1_000_000).min(MAX_SLEEP_MS as u64) as i32,
                None => MAX_SLEEP_MS,
            };
            if timeout_ms > 0 {
                self.handle.shared.stats[self.index].record_sleep();
                mailbox.wake.wait_with(&self.sleep_fds, timeout_ms);
            }
        }
        mailbox.sleeping.store(false, Ordering::Relaxed);
    }

    fn run(mut self) {
        let stats = &*self.handle.shared.stats[self.index] as *const ReactorStats;
        // SAFETY: `stats` points into `Shared`, which `self.handle` keeps alive for the whole of
        // this function; the raw pointer only spares a re-borrow of `self` inside the loop.
        let stats = unsafe { &*stats };
        let adaptive = self.handle.shared.idle == IdlePolicy::Adaptive;
        let mut idle_passes: u32 = 0;
        let mut stop_started_ns: Option<u64> = None;
        CURRENT_WAKE_FD.with(|c| c.set(self.mailbox().wake.raw_fd()));
        let spin_passes = self.handle.shared.idle_spin_passes;
        self.now_ns = self.clock();
        // Whether the pass that just ended found work: its time is only known at the top of the
        // next pass, so it is counted there.
        let mut last_pass_busy = false;
        loop {
            let now = self.clock();
            stats.record_pass(last_pass_busy, now - self.now_ns);
            self.now_ns = now;

            let messages = self.run_messages();
            if messages > 0 {
                stats.record_messages(messages as u64);
            }
            let stopping = self.handle.is_stopping();
            if stopping && stop_started_ns.is_none() {
                stop_started_ns = Some(now);
                // Services stop at once; I/O pollers are asked to drain.
                self.pollers.retain(|p| p.kind == PollerKind::Io);
                tracing::debug!(
                    reactor = self.index,
                    draining = self.pollers.len(),
                    "reactor stopping"
                );
            }
            let (worked, outstanding) = self.run_pollers(stopping);
            let busy = worked || messages > 0;
            last_pass_busy = busy;

            if let Some(started) = stop_started_ns {
                // Only I/O pollers hold up a stop (a service registered by a late message
                // does not).
                let draining = self.pollers.iter().any(|p| p.kind == PollerKind::Io);
                if !draining && self.mailbox().queue.is_empty() {
                    break;
                }
                if now - started > DRAIN_LIMIT_NS {
                    tracing::error!(
                        reactor = self.index,
                        pollers = self.pollers.len(),
                        "I/O did not drain within {} s; stopping anyway",
                        DRAIN_LIMIT_NS / 1_000_000_000
                    );
                    break;
                }
                continue;
            }
            // In adaptive mode, I/O in flight (`outstanding`) does not keep the reactor awake:
            // modules with slow completions register the reactor's wake eventfd.
            if busy || (outstanding && !adaptive) {
                idle_passes = 0;
            } else if adaptive {
                idle_passes += 1;
                if idle_passes >= spin_passes {
                    idle_passes = 0;
                    self.sleep();
                }
            }
        }
        // Drop whatever is left (pollers own channels and buffers) on this thread.
        self.pollers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::mpsc;
    use std::time::Duration;

    fn start(idle: IdlePolicy) -> ReactorSet {
        let cores = available_cores();
        let mask = if cores.len() >= 2 {
            CpuMask::parse(&format!("{},{}", cores[0], cores[1]), &cores).unwrap()
        } else {
            CpuMask::single(cores[0])
        };
        ReactorSet::start(ReactorConfig {
            cpumask: mask,
            idle,
            idle_spin_passes: IDLE_PASSES_BEFORE_SLEEP,
            thread_init: None,
        })
        .unwrap()
    }

    #[test]
    fn messages_run_on_the_named_reactor() {
        let set = start(IdlePolicy::Adaptive);
        let r = set.handle();
        let (tx, rx) = mpsc::channel();
        for i in 0..r.count() {
            let tx = tx.clone();
            r.send(i, move |reactor| tx.send(reactor.index()).unwrap())
                .unwrap();
        }
        let mut got: Vec<usize> = (0..r.count())
            .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, (0..r.count()).collect::<Vec<_>>());
        assert!(matches!(
            r.send(99, |_| {}),
            Err(ReactorError::NoSuchReactor { .. })
        ));
        r.request_stop();
        set.join();
    }

    #[test]
    fn timed_poller_runs_and_io_poller_drains_at_stop() {
        let set = start(IdlePolicy::Adaptive);
        let r = set.handle();
        let ticks = Arc::new(AtomicU64::new(0));
        let drained = Arc::new(AtomicBool::new(false));
        let (t, d) = (ticks.clone(), drained.clone());
        r.send(0, move |reactor| {
            reactor.register_poller("tick", PollerKind::Service, 1_000, move |_| {
                t.fetch_add(1, Ordering::Relaxed);
                PollStatus::Busy
            });
            let mut left_after_stop = 3;
            reactor.register_poller("io", PollerKind::Io, 0, move |ctx| {
                if !ctx.stopping {
                    return PollStatus::Idle;
                }
                left_after_stop -= 1;
                if left_after_stop == 0 {
                    d.store(true, Ordering::SeqCst);
                    PollStatus::Done
                } else {
                    PollStatus::Waiting
                }
            });
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let n = ticks.load(Ordering::Relaxed);
        assert!(n >= 10, "1 ms poller ran only {n} times in 100 ms");
        r.request_stop();
        set.join();
        assert!(drained.load(Ordering::SeqCst));
        assert!(matches!(r.send(0, |_| {}), Err(ReactorError::Stopping)));
    }

    #[test]
    fn adaptive_reactor_sleeps_and_wakes_for_messages() {
        let set = start(IdlePolicy::Adaptive);
        let r = set.handle();
        std::thread::sleep(Duration::from_millis(300));
        assert!(r.stats(0).sleeps > 0, "idle adaptive reactor never slept");
        // Without a working wake-up each answer would wait out a random part of a 100 ms sleep
        // (50 ms on average); woken at once, five answers take a few ms in all.
        let mut total = Duration::ZERO;
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(150));
            let (tx, rx) = mpsc::channel();
            let sent = Instant::now();
            r.send(0, move |_| tx.send(()).unwrap()).unwrap();
            rx.recv_timeout(Duration::from_secs(5)).unwrap();
            total += sent.elapsed();
        }
        assert!(
            total < Duration::from_millis(150),
            "5 wake-ups took {total:?}"
        );
        r.request_stop();
        set.join();
    }

    #[test]
    fn a_busy_pass_counts_its_own_time_as_busy() {
        let set = start(IdlePolicy::Busy);
        let r = set.handle();
        let (tx, rx) = mpsc::channel();
        let before = r.stats(0);
        r.send(0, move |reactor| {
            // Every other pass works for 2 ms; the passes between find nothing and end at once.
            let mut calls = 0u32;
            reactor.register_poller("slow", PollerKind::Service, 0, move |_| {
                calls += 1;
                if calls > 40 {
                    if calls == 41 {
                        let _ = tx.send(());
                    }
                    return PollStatus::Idle;
                }
                if calls % 2 == 1 {
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_millis(2) {}
                    PollStatus::Busy
                } else {
                    PollStatus::Idle
                }
            });
        })
        .unwrap();
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let s = r.stats(0);
        // 20 passes of 2 ms found work: their 40 ms are busy time, not the idle passes' after.
        let busy_ms = (s.busy_ns - before.busy_ns) / 1_000_000;
        assert!(busy_ms >= 38, "busy {busy_ms} ms of the 40 ms worked");
        r.request_stop();
        set.join();
    }

    #[test]
    fn busy_reactor_never_sleeps() {
        let set = start(IdlePolicy::Busy);
        let r = set.handle();
        std::thread::sleep(Duration::from_millis(100));
        let s = r.stats(0);
        assert_eq!(s.sleeps, 0);
        assert!(s.loops > 1000);
        r.request_stop();
        set.join();
    }
}
