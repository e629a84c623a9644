//! `VirtqueuePoller`: one virtqueue of a vhost-user-blk controller, polled by one reactor.
//!
//! Each pass it reaps the bdev channel's completions into the used ring, pops new chains from the
//! avail ring, and starts them on the channel. The guest's kicks stay suppressed while the queue
//! has work; after `NOTIFY_AFTER_IDLE_NS` with none, notifications are re-enabled (EVENT_IDX:
//! `avail_event` is set to the next index) and the reactor may sleep on the kick eventfd.
//! Completions signal the call eventfd once per pass, or less often with interrupt coalescing.
//!
//! Nothing is allocated per request: request state lives in a table with one slot per ring entry.
//! The poller holds its own `Arc` of the guest memory map, so every mapping an in-flight request
//! points into stays mapped until the poller is stopped, which waits for in-flight requests.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::inflight::InflightQueue;
use super::request::{
    self, BlkOp, ChainParser, Geometry, HostMap, ParseError, Refusal, ID_BYTES, S_IOERR, S_OK,
};
use super::ControllerShared;
use crate::bdev::{IoChannel, IoCompletion, IoRequest, IoStatus};
use crate::reactor::{PollContext, PollStatus};

/// Most chains popped in one pass, so one busy queue cannot starve the reactor's other pollers.
pub const POP_BUDGET: usize = 64;
/// Idle time after which guest notifications are turned back on and the reactor may sleep.
pub const NOTIFY_AFTER_IDLE_NS: u64 = 200_000;
/// How often a queue measures its request rate (for the coalescing threshold).
const RATE_WINDOW_NS: u64 = 100_000_000;

/// What the control thread and the poller share.
#[derive(Default)]
pub struct QueueControl {
    /// Set by the control thread: stop popping, finish in-flight requests, hand the queue back.
    pub stop: AtomicBool,
}

/// Everything a poller needs; built by the control thread, moved to the reactor.
pub struct QueueSetup {
    pub index: u16,
    pub queue: Queue,
    pub mem: Arc<GuestMemoryMmap>,
    pub kick: File,
    pub call: Option<File>,
    pub channel: IoChannel,
    pub geometry: Geometry,
    pub serial: [u8; ID_BYTES],
    pub control: Arc<QueueControl>,
    pub ctrl: Arc<ControllerShared>,
    pub inflight: Option<InflightQueue>,
    /// Heads to run again first, oldest first (requests in flight when the previous
    /// appliance died).
    pub resubmit: Vec<u16>,
    /// Where the stopped queue goes back to the control thread.
    pub stopped: SyncSender<StoppedQueue>,
}

/// A queue handed back by a stopped poller, with its indices and eventfds.
pub struct StoppedQueue {
    pub queue: Queue,
    pub kick: File,
    pub call: Option<File>,
}

#[derive(Clone, Copy)]
struct InFlight {
    head: u16,
    /// The status byte, in guest memory the poller keeps mapped.
    status: *mut u8,
    used_len: u32,
}

pub struct VirtqueuePoller {
    index: u16,
    queue: Queue,
    mem: Arc<GuestMemoryMmap>,
    /// Fast guest-to-host translation of `mem`'s regions.
    map: HostMap,
    parser: ChainParser,
    kick: File,
    call: Option<File>,
    channel: IoChannel,
    geometry: Geometry,
    serial: [u8; ID_BYTES],
    control: Arc<QueueControl>,
    ctrl: Arc<ControllerShared>,
    inflight: Option<InflightQueue>,
    /// Heads to run again, newest first (so the oldest pops off the end).
    resubmit: Vec<u16>,
    stopped: Option<SyncSender<StoppedQueue>>,
    slots: Box<[InFlight]>,
    free_slots: Vec<u32>,
    completions: Vec<IoCompletion>,
    /// Used entries added since the guest was last signalled.
    unsignalled: u32,
    last_signal_ns: u64,
    last_work_ns: u64,
    /// Guest notifications are on (the queue went idle).
    notify_on: bool,
    requests: u64,
    refused: u64,
    /// Request rate measurement: window start and the request count then; the last rate.
    rate_window_ns: u64,
    rate_window_requests: u64,
    iops: u64,
}

impl VirtqueuePoller {
    pub fn new(setup: QueueSetup) -> VirtqueuePoller {
        let size = setup.queue.size() as usize;
        debug_assert!(size > 0 && size <= super::MAX_QUEUE_SIZE as usize);
        set_nonblocking(setup.kick.as_raw_fd());
        if let Some(call) = &setup.call {
            set_nonblocking(call.as_raw_fd());
            // One interrupt on every start, as libvhost-user does on SET_VRING_CALL: used
            // entries a previous poller wrote may never have been signalled (an appliance
            // killed between the used ring and the call eventfd, or a poller that ran before
            // QEMU sent the call eventfd, which it does only after enabling the rings on a
            // reconnect). Without this, a guest waiting only on those entries waits for good.
            // A spurious interrupt costs the guest one look at the used ring.
            signal_eventfd(call.as_raw_fd());
        }
        let requests = setup.ctrl.queue_requests[setup.index as usize].load(Ordering::Relaxed);
        VirtqueuePoller {
            index: setup.index,
            queue: setup.queue,
            map: HostMap::of(&setup.mem),
            parser: ChainParser::default(),
            mem: setup.mem,
            kick: setup.kick,
            call: setup.call,
            channel: setup.channel,
            geometry: setup.geometry,
            serial: setup.serial,
            control: setup.control,
            ctrl: setup.ctrl,
            inflight: setup.inflight,
            resubmit: setup.resubmit.into_iter().rev().collect(),
            stopped: Some(setup.stopped),
            slots: vec![
                InFlight {
                    head: 0,
                    status: std::ptr::null_mut(),
                    used_len: 0,
                };
                size
            ]
            .into_boxed_slice(),
            free_slots: (0..size as u32).rev().collect(),
            completions: Vec::with_capacity(size),
            unsignalled: 0,
            last_signal_ns: 0,
            last_work_ns: 0,
            // Off until the first idle pass turns them on: that pass also rewrites whatever a
            // previous poller of this ring left in `avail_event` or the used flags.
            notify_on: false,
            requests,
            refused: 0,
            rate_window_ns: 0,
            rate_window_requests: requests,
            iops: 0,
        }
    }

    pub fn kick_fd(&self) -> RawFd {
        self.kick.as_raw_fd()
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    /// One reactor pass.
    pub fn poll(&mut self, ctx: &PollContext) -> PollStatus {
        let stopping = ctx.stopping || self.control.stop.load(Ordering::Relaxed);
        // The device's size now (a volume may be resized online): one load per pass.
        self.geometry.num_blocks = self.ctrl.num_blocks.load(Ordering::Relaxed);
        let mut work = self.reap(ctx.now_ns);
        if !stopping {
            work += self.pop(ctx.now_ns);
        }
        if self.unsignalled > 0 {
            self.maybe_signal(ctx.now_ns);
        }
        if stopping {
            if self.in_flight() > 0 {
                return PollStatus::Waiting;
            }
            self.hand_back();
            return PollStatus::Done;
        }
        if work > 0 {
            self.last_work_ns = ctx.now_ns;
            if self.notify_on {
                // Busy again: the guest need not kick while we poll.
                self.notify_on = false;
                drain_eventfd(self.kick.as_raw_fd());
                let _ = self.queue.disable_notification(&*self.mem);
            }
            return PollStatus::Busy;
        }
        if !self.notify_on {
            if ctx.now_ns.saturating_sub(self.last_work_ns) < NOTIFY_AFTER_IDLE_NS {
                // The guest is not kicking: keep the reactor polling (Busy, so that an adaptive
                // reactor does not go to sleep on a kick that will not come).
                return PollStatus::Busy;
            }
            // Going quiet: clear old kicks first, then turn notifications on and look once
            // more, so that a request published in between is seen now or kicks us awake.
            drain_eventfd(self.kick.as_raw_fd());
            if let Ok(true) = self.queue.enable_notification(&*self.mem) {
                return PollStatus::Busy;
            }
            self.notify_on = true;
        }
        // Notifications are on: a kick wakes a sleeping reactor, as does the bdev's completion.
        if self.in_flight() > 0 {
            PollStatus::Waiting
        } else {
            PollStatus::Idle
        }
    }

    /// Moves finished bdev requests to the used ring.
    fn reap(&mut self, now_ns: u64) -> usize {
        if self.in_flight() == 0 {
            return 0;
        }
        let n = self.channel.poll(now_ns, &mut self.completions);
        for i in 0..n {
            let c = self.completions[i];
            let slot = c.tag as u32;
            let r = self.slots[slot as usize];
            let status = if c.status == IoStatus::Success {
                S_OK
            } else {
                S_IOERR
            };
            self.complete(r.head, r.status, status, r.used_len);
            self.free_slots.push(slot);
        }
        self.completions.clear();
        n
    }

    /// Pops and starts up to `POP_BUDGET` chains; returns how many.
    fn pop(&mut self, now_ns: u64) -> usize {
        let mut popped = 0;
        while !self.free_slots.is_empty() {
            let Some(head) = self.resubmit.pop() else {
                break;
            };
            let desc_table = GuestAddress(self.queue.desc_table());
            let size = self.queue.size();
            let parsed = self.parser.parse(
                &self.map,
                super::inflight::walk_chain(&self.mem, desc_table, size, head),
                &self.geometry,
            );
            self.start(head, parsed, now_ns);
            popped += 1;
        }
        while popped < POP_BUDGET && !self.free_slots.is_empty() {
            let Some(chain) = self.queue.pop_descriptor_chain(&*self.mem) else {
                break;
            };
            let head = chain.head_index();
            if let Some(inf) = &mut self.inflight {
                inf.mark_popped(head);
            }
            let parsed = self.parser.parse(
                &self.map,
                chain.map(|d| (d.addr(), d.len(), d.is_write_only())),
                &self.geometry,
            );
            self.start(head, parsed, now_ns);
            popped += 1;
        }
        popped
    }

    fn start(&mut self, head: u16, parsed: Result<(), ParseError>, now_ns: u64) {
        self.requests += 1;
        if let Err((why, status)) = parsed {
            self.refuse(head, why, status);
            return;
        }
        let req = &self.parser.req;
        match req.op {
            BlkOp::GetId => {
                let v = req.iovs[0];
                let (status, used_len) = (req.status, req.used_len);
                // SAFETY: `v` was checked to lie inside a mapped guest region (parse_chain), and
                // the mapping lives as long as `self.mem`.
                unsafe { std::ptr::copy_nonoverlapping(self.serial.as_ptr(), v.addr(), v.len()) };
                self.complete(head, status, S_OK, used_len);
            }
            BlkOp::Io(io_type) => {
                let slot = self.free_slots.pop().expect("pop checks for a free slot");
                self.slots[slot as usize] = InFlight {
                    head,
                    status: req.status,
                    used_len: req.used_len,
                };
                let r = IoRequest {
                    io_type,
                    offset_blocks: req.offset_blocks,
                    num_blocks: req.num_blocks,
                    iovs: &req.iovs[..req.n_iovs],
                    fua: false,
                    tag: slot as u64,
                };
                if let Err(e) = self.channel.submit(&r, now_ns) {
                    tracing::debug!(ctrlr = %self.ctrl.name, "request refused by the bdev: {e}");
                    let status = req.status;
                    self.free_slots.push(slot);
                    self.complete(head, status, S_IOERR, 1);
                }
            }
        }
    }

    fn refuse(&mut self, head: u16, why: Refusal, status: Option<*mut u8>) {
        self.refused += 1;
        if self.refused.is_power_of_two() {
            tracing::warn!(ctrlr = %self.ctrl.name, refused = self.refused, "bad request: {}", why.reason());
        }
        match status {
            Some(at) => {
                let code = match why {
                    Refusal::Unsupported => request::S_UNSUPP,
                    _ => S_IOERR,
                };
                self.complete(head, at, code, 1);
            }
            None => self.return_used(head, 0),
        }
    }

    /// Writes the status byte and returns the chain to the guest.
    fn complete(&mut self, head: u16, status_at: *mut u8, status: u8, used_len: u32) {
        // SAFETY: `status_at` was checked to lie in guest memory when the chain was parsed, and
        // the poller keeps that mapping (`self.mem`) until it stops.
        unsafe { std::ptr::write_volatile(status_at, status) };
        self.return_used(head, used_len);
    }

    /// Puts the chain on the used ring (`used_len` bytes written to it).
    fn return_used(&mut self, head: u16, used_len: u32) {
        if self.queue.add_used(&*self.mem, head, used_len).is_err() {
            // A head outside the ring: nothing can be returned. Counted, not fatal.
            self.refused += 1;
            return;
        }
        if let Some(inf) = &mut self.inflight {
            inf.mark_used(head, self.queue.next_used());
        }
        self.unsignalled += 1;
    }

    /// Signals the guest for the used entries added since the last signal. With coalescing
    /// (`delay_base_us` > 0, and this queue at or above `iops_threshold` requests per second)
    /// the signal waits up to the delay while requests are still in flight.
    fn maybe_signal(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.rate_window_ns);
        if elapsed >= RATE_WINDOW_NS {
            self.iops = (self.requests - self.rate_window_requests) * 1_000_000_000 / elapsed;
            self.rate_window_ns = now_ns;
            self.rate_window_requests = self.requests;
        }
        let delay_ns = self.ctrl.coalesce_delay_us.load(Ordering::Relaxed) as u64 * 1000;
        let threshold = self.ctrl.iops_threshold.load(Ordering::Relaxed) as u64;
        if delay_ns > 0
            && self.iops >= threshold
            && self.in_flight() > 0
            && now_ns.saturating_sub(self.last_signal_ns) < delay_ns
        {
            return;
        }
        self.unsignalled = 0;
        self.last_signal_ns = now_ns;
        if self.queue.needs_notification(&*self.mem).unwrap_or(true) {
            if let Some(call) = &self.call {
                signal_eventfd(call.as_raw_fd());
            }
        }
        self.publish_counts();
    }

    fn publish_counts(&self) {
        self.ctrl.queue_requests[self.index as usize].store(self.requests, Ordering::Relaxed);
    }

    fn hand_back(&mut self) {
        self.publish_counts();
        let Some(tx) = self.stopped.take() else {
            return;
        };
        // The kick eventfd goes back as a duplicate; the poller's own closes with it.
        let Ok(kick) = self.kick.try_clone() else {
            tracing::error!(ctrlr = %self.ctrl.name, queue = self.index, "cannot hand the kick eventfd back");
            return;
        };
        let _ = tx.send(StoppedQueue {
            queue: std::mem::take(&mut self.queue),
            kick,
            call: self.call.take(),
        });
    }
}

impl Drop for VirtqueuePoller {
    fn drop(&mut self) {
        if self.in_flight() > 0 {
            // Dropped with requests still in flight (a reactor that gave up draining at
            // shutdown): the device may still write into guest memory, so its mapping must
            // outlive us. Leak it rather than unmap it under live I/O.
            tracing::error!(
                ctrlr = %self.ctrl.name,
                queue = self.index,
                in_flight = self.in_flight(),
                "queue dropped with requests in flight; its guest memory stays mapped"
            );
            std::mem::forget(self.mem.clone());
        }
    }
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor the caller owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// Reads an eventfd's counter to zero. It reads only when the fd is readable, so it cannot
/// block even if the front end (which shares the open file) cleared O_NONBLOCK.
fn drain_eventfd(fd: RawFd) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd, no wait.
    if unsafe { libc::poll(&mut p, 1, 0) } <= 0 {
        return;
    }
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a live u64.
    unsafe { libc::read(fd, &mut v as *mut u64 as *mut libc::c_void, 8) };
}

fn signal_eventfd(fd: RawFd) {
    let v = 1u64;
    // SAFETY: writes 8 bytes from a live u64.
    unsafe { libc::write(fd, &v as *const u64 as *const libc::c_void, 8) };
}
