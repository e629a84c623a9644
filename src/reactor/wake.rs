//! An eventfd that a sleeping reactor waits on and message senders write to.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Pollers' descriptors one sleeping reactor watches (each vhost-user queue has one).
pub const MAX_WAKE_FDS: usize = 512;

pub struct WakeFd {
    fd: OwnedFd,
}

impl WakeFd {
    pub fn new() -> io::Result<WakeFd> {
        // SAFETY: eventfd has no memory-safety preconditions; we check its result.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        Ok(WakeFd {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        })
    }

    /// Makes the next (or current) `wait` return.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. EAGAIN (counter saturated) still leaves the
        // fd readable, which is all a wake needs, so the result is deliberately ignored.
        unsafe {
            libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    /// Waits until woken or until `timeout_ms` passes, then clears the counter.
    pub fn wait(&self, timeout_ms: i32) {
        self.wait_with(&[], timeout_ms);
    }

    /// Like `wait`, but also returns when any of `others` becomes readable (a poller's
    /// socket or epoll fd). Their readiness is left for their pollers to consume.
    /// At most `MAX_WAKE_FDS` of `others` are watched (the rest wait for the timeout).
    pub fn wait_with(&self, others: &[RawFd], timeout_ms: i32) {
        const MAX_FDS: usize = 1 + MAX_WAKE_FDS;
        let mut pfds = [libc::pollfd {
            fd: -1,
            events: libc::POLLIN,
            revents: 0,
        }; MAX_FDS];
        pfds[0].fd = self.fd.as_raw_fd();
        let n = 1 + others.len().min(MAX_FDS - 1);
        for (slot, &fd) in pfds[1..n].iter_mut().zip(others) {
            slot.fd = fd;
        }
        // SAFETY: `n` initialised pollfds. EINTR just ends the wait early, which is harmless.
        let ready = unsafe { libc::poll(pfds.as_mut_ptr(), n as libc::nfds_t, timeout_ms) };
        if ready > 0 && pfds[0].revents != 0 {
            let mut counter: u64 = 0;
            // SAFETY: reads 8 bytes into a live u64; the fd is non-blocking.
            unsafe {
                libc::read(self.fd.as_raw_fd(), (&mut counter as *mut u64).cast(), 8);
            }
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn wake_before_wait_returns_at_once() {
        let w = WakeFd::new().unwrap();
        w.wake();
        let t = Instant::now();
        w.wait(5_000);
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn wait_times_out() {
        let w = WakeFd::new().unwrap();
        let t = Instant::now();
        w.wait(20);
        assert!(t.elapsed() >= Duration::from_millis(15));
    }
}
