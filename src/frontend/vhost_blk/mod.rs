//! vhost-user-blk front end: exports a bdev to QEMU (or any vhost-user host) over a Unix socket.
//!
//! - `controller.rs`-style control lives here: one `VhostBlkController` per socket, with a control
//!   thread that accepts one front end at a time and runs the vhost-user protocol
//!   (`backend::BlkBackend`, framed by the rust-vmm `vhost` crate).
//! - `virtqueue.rs`: the data path. Each virtqueue is polled by exactly one reactor.
//! - `request.rs`: virtio-blk requests parsed from descriptor chains, checked against guest memory.
//! - `config_space.rs`: feature bits and the configuration space.
//! - `inflight.rs`: INFLIGHT_SHMFD tracking, so a restarted appliance loses no request.
//! - `backend_channel.rs`: messages to the front end (CONFIG_CHANGE_MSG after a resize).
//!
//! The control thread never touches a virtqueue; reactors never block on the socket.

pub mod backend;
pub mod backend_channel;
pub mod config_space;
pub mod inflight;
pub mod request;
pub mod virtqueue;

#[cfg(test)]
mod fuzz_test;

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use thiserror::Error;
use vhost::vhost_user::{BackendListener, Listener};

use crate::bdev::{BdevEntry, BdevRegistry, IoType};
use crate::reactor::{CpuMask, Reactors};
use backend::BlkBackend;
use config_space::BlkConfig;

/// Largest virtqueue we accept (entries).
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// Most guest memory regions (vhost-user memory slots).
pub const MAX_MEM_SLOTS: u64 = 32;
/// Virtqueues one controller offers; they are spread over the controller's reactors.
pub const MAX_QUEUES: u16 = 16;
/// Most controllers one appliance serves.
pub const MAX_CONTROLLERS: usize = 256;
/// How often a control thread looks at its stop flag while waiting on its sockets.
const CONTROL_POLL_MS: i32 = 100;
/// Where sockets go unless `serve -S` says otherwise (SPDK's default is the working directory).
pub const DEFAULT_SOCKET_DIR: &str = "/var/tmp";

/// What a controller's control thread and its queue pollers share.
pub struct ControllerShared {
    pub name: String,
    /// Interrupt coalescing: at most one guest signal per this many µs while requests are in
    /// flight (0: signal every pass that completed something), on queues doing at least
    /// `iops_threshold` requests per second.
    pub coalesce_delay_us: AtomicU32,
    pub iops_threshold: AtomicU32,
    /// Requests served, per queue (written by each queue's poller).
    pub queue_requests: [std::sync::atomic::AtomicU64; MAX_QUEUES as usize],
    /// The bdev's size as the front end presents it (blocks): the control thread follows a
    /// resizable bdev's size and tells the front end; the queue pollers check requests
    /// against it.
    pub num_blocks: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Error)]
pub enum VhostError {
    #[error("controller {0:?} already exists")]
    Exists(String),
    #[error("no controller named {0:?}")]
    NotFound(String),
    #[error("controller name {0:?} is empty, too long, or has characters other than letters, digits and ._-")]
    BadName(String),
    #[error("no bdev named {0:?}")]
    NoBdev(String),
    #[error("bdev {0:?} is already exported by controller {1:?}")]
    BdevInUse(String, String),
    #[error("bdev {0:?} is claimed by {1}: it may be exported read-only only")]
    BdevClaimed(String, String),
    #[error("at most {MAX_CONTROLLERS} controllers")]
    TooMany,
    #[error("socket {path}: {source}")]
    Socket {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("packed rings are not supported")]
    PackedRing,
    #[error("cannot start the control thread: {0}")]
    Thread(std::io::Error),
}

/// How a controller is made (the parameters of `vhost_create_blk_controller`).
#[derive(Debug, Clone)]
pub struct ControllerParams {
    pub name: String,
    pub bdev: String,
    pub cpumask: CpuMask,
    pub readonly: bool,
}

/// One exported bdev on one socket.
pub struct VhostBlkController {
    pub params: ControllerParams,
    pub socket: PathBuf,
    pub shared: Arc<ControllerShared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl VhostBlkController {
    fn start(
        params: ControllerParams,
        socket: PathBuf,
        entry: BdevEntry,
        reactors: Reactors,
    ) -> Result<VhostBlkController, VhostError> {
        let sock_err = |source| VhostError::Socket {
            path: socket.display().to_string(),
            source,
        };
        // A stale socket (from an appliance that died) is replaced; any other file at that path
        // is left alone.
        if let Ok(meta) = std::fs::symlink_metadata(&socket) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(sock_err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists and is not a socket",
                )));
            }
            std::fs::remove_file(&socket).map_err(sock_err)?;
        }
        let unix = UnixListener::bind(&socket).map_err(sock_err)?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .map_err(sock_err)?;
        unix.set_nonblocking(true).map_err(sock_err)?;
        let listener = Listener::from(unix);
        let bdev = &entry.bdev;
        let queue_reactors: Vec<usize> = params
            .cpumask
            .cores()
            .iter()
            .filter_map(|&core| (0..reactors.count()).find(|&r| reactors.core(r) == core))
            .collect();
        let queue_reactors = if queue_reactors.is_empty() {
            (0..reactors.count()).collect()
        } else {
            queue_reactors
        };
        let (seg_max, size_max) =
            BlkConfig::segment_limits(bdev.block_size(), bdev.max_iovs(), bdev.max_rw_blocks());
        let config = BlkConfig {
            num_blocks: bdev.num_blocks(),
            block_size: bdev.block_size(),
            seg_max,
            size_max,
            num_queues: MAX_QUEUES,
            readonly: params.readonly,
            unmap: bdev.supports(IoType::Unmap),
            write_zeroes: bdev.supports(IoType::WriteZeroes),
        };
        let shared = Arc::new(ControllerShared {
            name: params.name.clone(),
            coalesce_delay_us: AtomicU32::new(0),
            iops_threshold: AtomicU32::new(0),
            queue_requests: std::array::from_fn(|_| Default::default()),
            num_blocks: bdev.num_blocks().into(),
        });
        let backend = Arc::new(Mutex::new(BlkBackend::new(
            shared.clone(),
            entry,
            reactors,
            queue_reactors,
            config,
        )));
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let name = params.name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vhost-{}", truncate(&name, 9)))
            .spawn(move || control_loop(name, listener, backend, thread_stop))
            .map_err(VhostError::Thread)?;
        Ok(VhostBlkController {
            params,
            socket,
            shared,
            stop,
            thread: Some(thread),
        })
    }

    pub fn requests(&self) -> u64 {
        self.shared
            .queue_requests
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .sum()
    }

    /// Asks the control thread to disconnect its front end and end; does not wait.
    fn signal_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Longest a front end may take to finish sending a message or to read an answer.
const MESSAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn set_socket_timeouts(fd: i32, t: std::time::Duration) {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: setsockopt with a live timeval of the size given.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
    }
}

/// Waits up to `CONTROL_POLL_MS` for `fd` to be readable.
fn wait_readable(fd: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    let n = unsafe { libc::poll(&mut p, 1, CONTROL_POLL_MS) };
    n > 0
}

/// The control thread: accepts one front end at a time and runs its vhost-user messages.
fn control_loop(
    name: String,
    mut listener: Listener,
    backend: Arc<Mutex<BlkBackend>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        lock(&backend).follow_size();
        if !wait_readable(listener.as_raw_fd()) {
            continue;
        }
        let mut handler = match BackendListener::new(&mut listener, backend.clone())
            .and_then(|mut l| l.accept())
        {
            Ok(Some(h)) => h,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(ctrlr = %name, "accept failed: {e}");
                continue;
            }
        };
        tracing::info!(ctrlr = %name, "front end connected");
        // A front end that stalls mid-message (or stops reading answers) must not hold this
        // thread forever: socket reads and writes give up after MESSAGE_TIMEOUT.
        set_socket_timeouts(handler.as_raw_fd(), MESSAGE_TIMEOUT);
        while !stop.load(Ordering::Relaxed) {
            // At most every CONTROL_POLL_MS, and after each message.
            lock(&backend).follow_size();
            if !wait_readable(handler.as_raw_fd()) {
                continue;
            }
            use vhost::vhost_user::Error as E;
            // Kept only if the vhost crate takes the message too.
            let channel = backend_channel::peek_backend_req_fd(handler.as_raw_fd());
            match handler.handle_request() {
                Ok(()) => {
                    if let Some(ch) = channel {
                        lock(&backend).set_channel(ch);
                    }
                }
                // Our own refusal of a well-formed message (answered with a failure when the
                // front end asked for replies): the connection goes on.
                Err(
                    e @ (E::InvalidParam
                    | E::InvalidOperation(_)
                    | E::ReqHandlerError(_)
                    | E::FeatureMismatch
                    | E::BackendInternalError),
                ) => {
                    tracing::warn!(ctrlr = %name, "request refused: {e}");
                    if std::mem::take(&mut lock(&backend).reply_missing) {
                        // A request that needed an answer got none (the vhost crate sends none
                        // on error): the front end would wait for it forever, so close instead.
                        tracing::warn!(ctrlr = %name, "closing the connection: a refused request could not be answered");
                        break;
                    }
                }
                Err(E::Disconnected | E::PartialMessage) => {
                    tracing::info!(ctrlr = %name, "front end disconnected");
                    break;
                }
                // A malformed stream cannot be resynchronised: close it.
                Err(e) => {
                    tracing::warn!(ctrlr = %name, "closing the connection: {e}");
                    break;
                }
            }
        }
        lock(&backend).disconnect();
    }
    lock(&backend).disconnect();
    tracing::debug!(ctrlr = %name, "control thread ends");
}

/// Locks the backend; a panic on another holder (a bug) must not take the appliance down.
fn lock(b: &Mutex<BlkBackend>) -> std::sync::MutexGuard<'_, BlkBackend> {
    b.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks a controller name: 1..=64 letters, digits and `._-` (it becomes a file name).
fn check_name(name: &str) -> Result<(), VhostError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(VhostError::BadName(name.into()))
    }
}

/// Every controller of the appliance, by name.
pub struct VhostControllers {
    socket_dir: PathBuf,
    map: Mutex<BTreeMap<String, VhostBlkController>>,
}

impl VhostControllers {
    pub fn new(socket_dir: &Path) -> VhostControllers {
        VhostControllers {
            socket_dir: socket_dir.to_path_buf(),
            map: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, VhostBlkController>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn create(
        &self,
        params: ControllerParams,
        registry: &BdevRegistry,
        reactors: Reactors,
    ) -> Result<PathBuf, VhostError> {
        check_name(&params.name)?;
        let entry = registry
            .get(&params.bdev)
            .ok_or_else(|| VhostError::NoBdev(params.bdev.clone()))?;
        let mut map = self.map();
        if map.contains_key(&params.name) {
            return Err(VhostError::Exists(params.name));
        }
        if map.len() >= MAX_CONTROLLERS {
            return Err(VhostError::TooMany);
        }
        if let Some(c) = map
            .values()
            .find(|c| c.params.bdev == params.bdev && !params.readonly && !c.params.readonly)
        {
            return Err(VhostError::BdevInUse(params.bdev, c.params.name.clone()));
        }
        // A claimed bdev (an lvstore's base) is exported read-only at most.
        if let Some(by) = registry
            .claimed_by(&params.bdev)
            .filter(|_| !params.readonly)
        {
            return Err(VhostError::BdevClaimed(params.bdev, by));
        }
        let socket = self.socket_dir.join(&params.name);
        let name = params.name.clone();
        let c = VhostBlkController::start(params, socket.clone(), entry, reactors)?;
        map.insert(name, c);
        Ok(socket)
    }

    /// The name of a controller that exports bdev `bdev`, if one does.
    pub fn controller_of(&self, bdev: &str) -> Option<String> {
        self.map()
            .values()
            .find(|c| c.params.bdev == bdev)
            .map(|c| c.params.name.clone())
    }

    /// Removes a controller: its socket goes at once, its front end is disconnected and its
    /// queues stopped by its control thread.
    pub fn delete(&self, name: &str) -> Result<(), VhostError> {
        let mut c = self
            .map()
            .remove(name)
            .ok_or_else(|| VhostError::NotFound(name.into()))?;
        let _ = std::fs::remove_file(&c.socket);
        c.signal_stop();
        // The thread is left to end on its own: joining here could wait on a reactor that is
        // the caller's own (RPC runs on reactor 0).
        drop(c.thread.take());
        Ok(())
    }

    pub fn set_coalescing(
        &self,
        name: &str,
        delay_base_us: u32,
        iops_threshold: u32,
    ) -> Result<(), VhostError> {
        let map = self.map();
        let c = map
            .get(name)
            .ok_or_else(|| VhostError::NotFound(name.into()))?;
        c.shared
            .coalesce_delay_us
            .store(delay_base_us, Ordering::Relaxed);
        c.shared
            .iops_threshold
            .store(iops_threshold, Ordering::Relaxed);
        Ok(())
    }

    /// Runs `f` on each controller, in name order.
    pub fn for_each(&self, mut f: impl FnMut(&VhostBlkController)) {
        for c in self.map().values() {
            f(c);
        }
    }

    /// Stops every controller and waits for their control threads (at shutdown, off the
    /// reactors, before the reactors stop).
    pub fn shutdown(&self) {
        let all: Vec<VhostBlkController> = std::mem::take(&mut *self.map()).into_values().collect();
        for c in &all {
            c.signal_stop();
        }
        for mut c in all {
            if let Some(t) = c.thread.take() {
                let _ = t.join();
            }
            let _ = std::fs::remove_file(&c.socket);
        }
    }
}
