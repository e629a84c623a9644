//! Pollers: functions a reactor calls every loop (period 0) or on a timer.

/// What a poller did in one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollStatus {
    /// Nothing to do and nothing outstanding: the reactor may go to sleep.
    Idle,
    /// Did work this call.
    Busy,
    /// Did nothing this call, but has work outstanding (I/O in flight): keep polling, don't sleep.
    Waiting,
    /// Finished: unregister this poller and drop it.
    Done,
}

/// Whether a poller must finish before its reactor may stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollerKind {
    /// Owns I/O: at shutdown the reactor keeps calling it (with `stopping` set) until it is Done.
    Io,
    /// A service (listener, statistics): dropped at shutdown without waiting.
    Service,
}

/// What a poller is told each call.
#[derive(Debug, Clone, Copy)]
pub struct PollContext {
    /// Monotonic time of this loop pass, in ns since the reactors started. Read once per pass.
    pub now_ns: u64,
    /// Index of the reactor running the poller.
    pub reactor: usize,
    /// Shutdown is under way: stop taking new work, finish what is in flight, then return Done.
    pub stopping: bool,
}

pub type PollFn = Box<dyn FnMut(&PollContext) -> PollStatus>;

pub(super) struct Poller {
    pub name: String,
    pub kind: PollerKind,
    pub period_ns: u64,
    pub next_run_ns: u64,
    /// A descriptor that becomes readable when this poller has work; a sleeping reactor waits
    /// on it too, and the poller's timer does not cut the sleep short.
    pub wake_fd: Option<std::os::fd::RawFd>,
    pub run: PollFn,
}
