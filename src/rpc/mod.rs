//! The JSON-RPC 2.0 server on a Unix socket, owned and polled by reactor 0.
//!
//! No thread per client: one epoll set holds the listener and every connection, and a poller
//! on reactor 0 drains it every 100 µs (an adaptive reactor sleeps on the epoll fd instead).
//! Requests are JSON values back to back on the stream (`framing`); a JSON array is a batch.
//! Every connection has bounded input and output buffers; a client that sends garbage is
//! answered with a parse error and dropped, and a client that does not read its responses is
//! dropped once its backlog passes the bound. Nothing a client sends can panic or stall the
//! reactor.

pub mod bdev;
pub mod bench;
pub mod client;
pub mod framework;
pub mod framing;
pub mod lvol;
pub mod methods;
pub mod pool_jobs;
pub mod protocol;
pub mod vhost;

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;

use framing::{FrameError, FrameScanner};
use methods::{RpcContext, RpcState};
use protocol::{parse_request, write_response, RpcError};

/// A response still to be written: the request's id and what the method returned.
type Answer = (Value, Result<methods::RpcResult, RpcError>);

pub use methods::SetLogLevel;

pub const DEFAULT_SOCKET: &str = "/var/tmp/unblend.sock";
/// Clients connected at once; more are accepted and closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest single request (or batch).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;
/// Responses a connection may have waiting to be read before it is dropped.
pub const MAX_PENDING_OUTPUT_BYTES: usize = 64 << 20;
/// Above this backlog a connection's requests are not read until it drains (backpressure).
const OUTPUT_HIGH_WATER_BYTES: usize = 1 << 20;
/// Requests in one batch.
pub const MAX_BATCH: usize = 1024;
/// Bytes read from one connection per poll, so one client cannot hog the reactor.
const READ_BUDGET_BYTES: usize = 1 << 20;
/// Clients that may wait in `framework_wait_init` at once (leaving slots for the client that
/// will call `framework_start_init`).
pub const MAX_INIT_WAITERS: usize = MAX_CONNECTIONS - 8;
/// Longest request id we accept (a string id is echoed back in the answer).
pub const MAX_ID_BYTES: usize = 1024;
/// A connection idle this long may be evicted when a new client finds every slot taken.
const EVICT_IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(10);
/// How often the poller runs while the reactor is awake.
pub const POLL_PERIOD_US: u64 = 100;
const EPOLL_EVENTS: usize = 64;
const LISTENER_TOKEN: u64 = u64::MAX;

#[derive(Debug, Error)]
pub enum RpcSetupError {
    #[error(
        "RPC socket {0} belongs to a running appliance; stop it or choose another path with -r"
    )]
    InUse(String),
    #[error("RPC socket path {0} exists and is not a socket")]
    NotASocket(String),
    #[error("cannot listen on RPC socket {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the socket: refuses a path a live appliance owns, removes a stale one (saying so),
/// and makes the new socket mode 0600.
pub fn bind_socket(path: &Path) -> Result<UnixListener, RpcSetupError> {
    let shown = path.display().to_string();
    let io = |source| RpcSetupError::Io {
        path: shown.clone(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(RpcSetupError::NotASocket(shown));
        }
        match UnixStream::connect(path) {
            Ok(_) => return Err(RpcSetupError::InUse(shown)),
            Err(_) => {
                std::fs::remove_file(path).map_err(io)?;
                println!("removed stale RPC socket {shown} (no appliance was listening on it)");
            }
        }
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    listener.set_nonblocking(true).map_err(io)?;
    Ok(listener)
}

struct Conn {
    stream: UnixStream,
    input: Vec<u8>,
    scanner: FrameScanner,
    output: Vec<u8>,
    /// Bytes of `output` already written.
    written: usize,
    /// Close once `output` is written (after a parse error or EOF).
    closing: bool,
    /// The events its epoll registration asks for now (EPOLLIN and/or EPOLLOUT).
    interest: u32,
    /// When it last sent us anything (for evicting idle clients when all slots are taken).
    last_active: std::time::Instant,
    /// Whether it has a `framework_wait_init` parked (at most one per connection).
    waiting_init: bool,
    /// Whether it has a deferred answer pending: its later requests are not read until that
    /// answer is sent, so answers go out in the order asked.
    waiting_answer: bool,
    /// Whether it is in the epoll set (it leaves it while it waits for a deferred answer).
    registered: bool,
}

pub struct RpcServer {
    path: PathBuf,
    listener: UnixListener,
    epoll: OwnedFd,
    conns: Vec<Option<Conn>>,
    ctx: RpcContext,
    /// `framework_wait_init` calls waiting for `framework_start_init`: (connection, id).
    init_waiters: Vec<(usize, Value)>,
    /// Answers handlers deferred. At most one per connection: a connection keeps its slot
    /// while it waits, even if its client left (out of the epoll set, `flush`), so at most
    /// `MAX_CONNECTIONS`; one whose connection was closed for an error is still polled to its
    /// end (the work behind it finishes: a format loads its pool), and its answer dropped.
    deferred: Vec<Deferred>,
    read_buf: Box<[u8]>,
    last_accept_warning: Option<std::time::Instant>,
}

/// A request whose answer a handler deferred.
struct Deferred {
    /// The connection it answers; None once that connection was closed (for an error: one
    /// that waits is not closed for a hang-up). The answer is still polled to its end, so
    /// the work behind it finishes, and then dropped.
    slot: Option<usize>,
    id: Option<Value>,
    answer: methods::DeferredAnswer,
    /// The batch it came in, if any: it goes on once this answer is in.
    batch: Option<PendingBatch>,
}

/// A batch being answered: its answer so far (from its opening `[`), and its requests not
/// run yet.
struct PendingBatch {
    out: Vec<u8>,
    rest: std::vec::IntoIter<Value>,
}

/// What running one request gave.
enum Handled {
    /// An answer now, or none (a notification, a parked `framework_wait_init`).
    Now(Option<Answer>),
    /// The handler deferred its answer.
    Later(Option<Value>, methods::DeferredAnswer),
}

/// Polls a deferred answer; one that panics (a bug) is answered with -32603, as a handler
/// that panics is, and reactor 0 goes on.
fn poll_deferred(later: &mut methods::DeferredAnswer) -> Option<Result<Value, RpcError>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(later)).unwrap_or_else(|_| {
        tracing::error!("a deferred RPC answer panicked");
        Some(Err(RpcError::internal("the request failed unexpectedly")))
    })
}

fn epoll_ctl(epfd: RawFd, op: i32, fd: RawFd, events: u32, token: u64) -> std::io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: valid epoll and target fds; `ev` is a live epoll_event.
    let rc = unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl RpcServer {
    pub fn new(
        path: &Path,
        listener: UnixListener,
        ctx: RpcContext,
    ) -> Result<RpcServer, RpcSetupError> {
        let io = |source| RpcSetupError::Io {
            path: path.display().to_string(),
            source,
        };
        // SAFETY: epoll_create1 has no preconditions; the result is checked.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(raw) };
        epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            listener.as_raw_fd(),
            libc::EPOLLIN as u32,
            LISTENER_TOKEN,
        )
        .map_err(io)?;
        Ok(RpcServer {
            path: path.to_path_buf(),
            listener,
            epoll,
            conns: (0..MAX_CONNECTIONS).map(|_| None).collect(),
            ctx,
            init_waiters: Vec::new(),
            deferred: Vec::with_capacity(MAX_CONNECTIONS),
            read_buf: vec![0u8; 64 * 1024].into_boxed_slice(),
            last_accept_warning: None,
        })
    }

    /// The fd a sleeping reactor should wait on.
    pub fn wake_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// One pass: deferred answers, then accept, read, answer, write. Returns true if it did
    /// anything.
    pub fn poll(&mut self) -> bool {
        let answered = self.answer_deferred();
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EPOLL_EVENTS];
        // SAFETY: `events` has room for EPOLL_EVENTS entries; timeout 0 never blocks.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                EPOLL_EVENTS as i32,
                0,
            )
        };
        for ev in &events[..n.max(0) as usize] {
            let token = ev.u64;
            if token == LISTENER_TOKEN {
                self.accept_all();
            } else if ev.events & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
                && self
                    .conns
                    .get(token as usize)
                    .and_then(|c| c.as_ref())
                    .is_some_and(|c| c.closing && c.waiting_init && !c.waiting_answer)
            {
                // Gone while in `framework_wait_init`, its input used up: registered with no
                // interest, so the hang-up would be reported on every pass.
                self.close(token as usize);
            } else {
                self.service(token as usize);
            }
        }
        // Also after a pass with no events: a deferred answer may have let a held
        // `spdk_kill_instance` run.
        if let Some(sig) = self.ctx.kill_signal.take() {
            // Answer first (best effort), then signal ourselves; serve's main thread handles
            // SIGINT/SIGTERM as a clean shutdown.
            for i in 0..self.conns.len() {
                self.flush(i);
            }
            tracing::info!(signal = sig, "spdk_kill_instance");
            // SAFETY: kill(2) on our own pid.
            unsafe { libc::kill(libc::getpid(), sig) };
        }
        answered || n > 0
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let Some(slot) = self.free_slot() else {
                        tracing::warn!(
                            "RPC: refusing a client: {MAX_CONNECTIONS} connections already open"
                        );
                        drop(stream);
                        continue;
                    };
                    if stream.set_nonblocking(true).is_err()
                        || epoll_ctl(
                            self.epoll.as_raw_fd(),
                            libc::EPOLL_CTL_ADD,
                            stream.as_raw_fd(),
                            libc::EPOLLIN as u32,
                            slot as u64,
                        )
                        .is_err()
                    {
                        continue;
                    }
                    self.conns[slot] = Some(Conn {
                        stream,
                        input: Vec::new(),
                        scanner: FrameScanner::default(),
                        output: Vec::new(),
                        written: 0,
                        closing: false,
                        interest: libc::EPOLLIN as u32,
                        last_active: std::time::Instant::now(),
                        waiting_init: false,
                        waiting_answer: false,
                        registered: true,
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: the listener stays readable, so say it at most once
                    // a second rather than on every pass.
                    let now = std::time::Instant::now();
                    if self
                        .last_accept_warning
                        .is_none_or(|t| now - t > std::time::Duration::from_secs(1))
                    {
                        tracing::warn!("RPC accept: {e}");
                        self.last_accept_warning = Some(now);
                    }
                    return;
                }
            }
        }
    }

    /// A free connection slot; when all are taken, the one idle longest (if idle more than
    /// `EVICT_IDLE_AFTER`) is closed to make room.
    fn free_slot(&mut self) -> Option<usize> {
        if let Some(free) = self.conns.iter().position(|c| c.is_none()) {
            return Some(free);
        }
        let now = std::time::Instant::now();
        let (slot, idle) = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
            .filter(|(_, c)| !c.waiting_init && !c.waiting_answer)
            .map(|(i, c)| (i, now - c.last_active))
            .max_by_key(|(_, idle)| *idle)?;
        if idle < EVICT_IDLE_AFTER {
            return None;
        }
        tracing::info!(
            slot,
            "RPC: evicting a client idle for {idle:?} to admit a new one"
        );
        self.close(slot);
        Some(slot)
    }

    /// Reads what a connection sent, answers every complete request, writes the answers.
    fn service(&mut self, slot: usize) {
        // Frames read earlier and held back by backpressure are answered first.
        self.flush(slot);
        self.process_input(slot);
        let mut budget = READ_BUDGET_BYTES;
        loop {
            let Some(conn) = self.conns.get_mut(slot).and_then(|c| c.as_mut()) else {
                return;
            };
            if conn.closing
                || conn.waiting_answer
                || conn.output.len() - conn.written > OUTPUT_HIGH_WATER_BYTES
            {
                break;
            }
            match conn.stream.read(&mut self.read_buf) {
                Ok(0) => {
                    conn.closing = true;
                    break;
                }
                Ok(n) => {
                    conn.last_active = std::time::Instant::now();
                    conn.input.extend_from_slice(&self.read_buf[..n]);
                    self.process_input(slot);
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(slot);
                    return;
                }
            }
        }
        self.flush(slot);
    }

    fn process_input(&mut self, slot: usize) {
        loop {
            let Some(conn) = self.conns[slot].as_mut() else {
                return;
            };
            // Backpressure: stop answering while the client has not read what it was sent;
            // `service` resumes here once the output drains (EPOLLOUT). A deferred answer
            // holds the rest back too (`answer_deferred` resumes here).
            if conn.closing
                || conn.waiting_answer
                || conn.output.len() - conn.written > OUTPUT_HIGH_WATER_BYTES
            {
                return;
            }
            match conn.scanner.scan(&conn.input) {
                Ok(Some((start, end))) => {
                    let text: Vec<u8> = conn.input[start..end].to_vec();
                    conn.input.drain(..end);
                    conn.scanner.reset();
                    // Reset the scanner's position: it indexes the buffer we just shortened.
                    self.handle_message(slot, &text);
                }
                Ok(None) => {
                    if conn.input.len() > MAX_REQUEST_BYTES {
                        self.fail_connection(
                            slot,
                            format!("request exceeds {MAX_REQUEST_BYTES} bytes"),
                        );
                    } else if conn.scanner.is_between_values() {
                        conn.input.clear();
                        conn.scanner.reset();
                    }
                    return;
                }
                Err(e) => {
                    let why = match e {
                        FrameError::NotAnObjectOrArray(b) => {
                            format!("a request must be a JSON object or array, not byte {b:#04x}")
                        }
                        FrameError::TooDeep => {
                            format!("nesting deeper than {}", framing::MAX_DEPTH)
                        }
                        FrameError::Unbalanced => "unbalanced brackets".to_string(),
                    };
                    self.fail_connection(slot, why);
                    return;
                }
            }
        }
    }

    /// Answers with a parse error and closes: after garbage, the stream cannot be resynced.
    fn fail_connection(&mut self, slot: usize, why: String) {
        tracing::debug!(slot, "RPC parse error: {why}");
        self.send(slot, (Value::Null, Err(RpcError::parse_error())));
        if let Some(c) = self.conns[slot].as_mut() {
            c.closing = true;
            c.input = Vec::new();
        }
    }

    fn handle_message(&mut self, slot: usize, text: &[u8]) {
        let value: Value = match serde_json::from_slice(text) {
            Ok(v) => v,
            Err(e) => {
                // The value was well framed, so the stream stays in step: answer, keep going.
                tracing::debug!(slot, "RPC parse error: {e}");
                self.send(slot, (Value::Null, Err(RpcError::parse_error())));
                return;
            }
        };
        match value {
            Value::Array(items) => {
                if items.is_empty() || items.len() > MAX_BATCH {
                    self.send(slot, (Value::Null, Err(RpcError::invalid_request())));
                    return;
                }
                // Serialise each answer as it is made, so that a batch of large answers is
                // bounded by the output limit rather than built whole first.
                self.run_batch(
                    slot,
                    PendingBatch {
                        out: vec![b'['],
                        rest: items.into_iter(),
                    },
                );
            }
            other => match self.handle_one(slot, other, false) {
                Handled::Now(Some(answer)) => self.send(slot, answer),
                Handled::Now(None) => {}
                Handled::Later(id, answer) => self.park(slot, id, answer, None),
            },
        }
    }

    /// Runs a batch's requests not run yet, in order, and sends its answer; or parks it at
    /// a request whose answer is deferred (`answer_deferred` goes on with it).
    fn run_batch(&mut self, slot: usize, mut batch: PendingBatch) {
        while let Some(item) = batch.rest.next() {
            match self.handle_one(slot, item, true) {
                Handled::Now(Some((id, outcome))) => {
                    if !self.add_to_batch(slot, &mut batch, &id, &outcome) {
                        return;
                    }
                }
                Handled::Now(None) => {}
                Handled::Later(id, answer) => {
                    self.park(slot, id, answer, Some(batch));
                    return;
                }
            }
        }
        // Notifications alone are answered with nothing.
        if batch.out.len() > 1 {
            batch.out.extend_from_slice(b"]\n");
            self.send_bytes(slot, &batch.out);
        }
    }

    /// Adds one answer to a batch's; false if that passed the output limit (the client is
    /// dropped).
    fn add_to_batch(
        &mut self,
        slot: usize,
        batch: &mut PendingBatch,
        id: &Value,
        outcome: &Result<methods::RpcResult, RpcError>,
    ) -> bool {
        if batch.out.len() > 1 {
            batch.out.push(b',');
        }
        write_response(&mut batch.out, id, outcome);
        if batch.out.len() > MAX_PENDING_OUTPUT_BYTES {
            tracing::warn!(
                slot,
                "RPC batch answer exceeds the output limit; dropping the client"
            );
            self.close(slot);
            return false;
        }
        true
    }

    /// Parks a deferred answer: the connection's later requests wait for it.
    fn park(
        &mut self,
        slot: usize,
        id: Option<Value>,
        answer: methods::DeferredAnswer,
        batch: Option<PendingBatch>,
    ) {
        let slot = self.conns[slot].as_mut().map(|conn| {
            conn.waiting_answer = true;
            slot
        });
        self.deferred.push(Deferred {
            slot,
            id,
            answer,
            batch,
        });
    }

    /// Runs one request: its answer now (none for a notification or a parked
    /// `framework_wait_init`), or the handler's deferred answer.
    fn handle_one(&mut self, slot: usize, item: Value, in_batch: bool) -> Handled {
        let req = match parse_request(item) {
            Ok(r) => r,
            Err((id, e)) => return Handled::Now(Some((id, Err(e)))),
        };
        if matches!(&req.id, Some(Value::String(s)) if s.len() > MAX_ID_BYTES) {
            return Handled::Now(Some((Value::Null, Err(RpcError::invalid_request()))));
        }
        let outcome = methods::call(&mut self.ctx, &req.method, req.params.as_ref());
        if let Err(e) = &outcome {
            tracing::debug!(method = %req.method, code = e.code, "RPC error: {}", e.message);
        }
        // A handler that failed after setting a deferred answer: the error goes out now.
        if let (Some(later), true) = (self.ctx.deferred.take(), outcome.is_ok()) {
            return Handled::Later(req.id, later);
        }
        if outcome.is_ok() && req.method == "framework_start_init" {
            self.answer_init_waiters();
        }
        let Some(id) = req.id else {
            return Handled::Now(None);
        };
        if req.method == "framework_wait_init"
            && outcome.is_ok()
            && self.ctx.state == RpcState::Startup
        {
            return Handled::Now(self.park_init_waiter(slot, id, in_batch));
        }
        Handled::Now(Some((id, outcome)))
    }

    /// Parks a `framework_wait_init` until `framework_start_init`; or refuses it (in a batch,
    /// a second one on a connection, too many waiting).
    fn park_init_waiter(&mut self, slot: usize, id: Value, in_batch: bool) -> Option<Answer> {
        if in_batch || self.init_waiters.len() >= MAX_INIT_WAITERS {
            return Some((
                id,
                Err(RpcError::new(
                    protocol::INVALID_STATE,
                    "framework_wait_init can wait only as a single request, and only for \
                     a bounded number of clients at once",
                )),
            ));
        }
        let conn = self.conns[slot].as_mut()?;
        if conn.waiting_init {
            return Some((
                id,
                Err(RpcError::new(
                    protocol::INVALID_STATE,
                    "this connection already waits in framework_wait_init",
                )),
            ));
        }
        conn.waiting_init = true;
        self.init_waiters.push((slot, id));
        None
    }

    /// Sends every deferred answer that is ready, and goes on with those connections' held
    /// requests. Returns whether any was sent.
    fn answer_deferred(&mut self) -> bool {
        let mut any = false;
        let mut i = 0;
        while i < self.deferred.len() {
            let Some(done) = poll_deferred(&mut self.deferred[i].answer) else {
                i += 1;
                continue;
            };
            // In arrival order still (not `swap_remove`): jobs that wait for a turn (an
            // lvstore's one lvol job) are polled oldest first, so none is passed for ever.
            let d = self.deferred.remove(i);
            any = true;
            // A connection closed meanwhile: its answer, and the rest of its batch, are dropped.
            let Some(slot) = d.slot else {
                continue;
            };
            if let Some(conn) = self.conns[slot].as_mut() {
                conn.waiting_answer = false;
            }
            let outcome = done.map(methods::RpcResult::Json);
            match (d.batch, d.id) {
                (Some(mut batch), id) => {
                    let added =
                        id.is_none_or(|id| self.add_to_batch(slot, &mut batch, &id, &outcome));
                    if added {
                        self.run_batch(slot, batch);
                    }
                }
                (None, Some(id)) => self.send(slot, (id, outcome)),
                (None, None) => {}
            }
            self.process_input(slot);
            self.flush(slot);
        }
        any
    }

    fn answer_init_waiters(&mut self) {
        for (slot, id) in std::mem::take(&mut self.init_waiters) {
            if let Some(c) = self.conns[slot].as_mut() {
                c.waiting_init = false;
            }
            self.send(slot, (id, Ok(methods::RpcResult::Json(Value::Bool(true)))));
            self.flush(slot);
        }
    }

    /// Queues one response, ending in a newline.
    fn send(&mut self, slot: usize, answer: Answer) {
        let mut out = Vec::new();
        write_response(&mut out, &answer.0, &answer.1);
        out.push(b'\n');
        self.send_bytes(slot, &out);
    }

    /// Queues bytes for a connection, dropping a client whose unread backlog is over the limit.
    fn send_bytes(&mut self, slot: usize, bytes: &[u8]) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        if conn.output.len() - conn.written + bytes.len() > MAX_PENDING_OUTPUT_BYTES {
            tracing::warn!(slot, "RPC client does not read its responses; dropping it");
            self.close(slot);
            return;
        }
        conn.output.extend_from_slice(bytes);
    }

    /// Writes what it can without blocking, then sets the connection's epoll interest:
    /// EPOLLOUT while output remains; EPOLLIN only while it is open and not backpressured (a
    /// level-triggered EPOLLIN we will not act on would wake the reactor on every pass).
    fn flush(&mut self, slot: usize) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        while conn.written < conn.output.len() {
            match conn.stream.write(&conn.output[conn.written..]) {
                Ok(0) => break,
                Ok(n) => {
                    conn.written += n;
                    conn.last_active = std::time::Instant::now();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(slot);
                    return;
                }
            }
        }
        if conn.written == conn.output.len() {
            conn.output.clear();
            conn.written = 0;
            if conn.output.capacity() > OUTPUT_HIGH_WATER_BYTES {
                conn.output.shrink_to(64 * 1024);
            }
            // A client that half-closed while waiting in framework_wait_init keeps its
            // connection (with no events armed) until that answer is written.
            if conn.closing && !conn.waiting_init && !conn.waiting_answer {
                self.close(slot);
                return;
            }
        }
        let backlog = conn.output.len() - conn.written;
        let mut interest = 0u32;
        if backlog > 0 {
            interest |= libc::EPOLLOUT as u32;
        }
        if !conn.closing && !conn.waiting_answer && backlog <= OUTPUT_HIGH_WATER_BYTES {
            interest |= libc::EPOLLIN as u32;
        }
        // While it waits for a deferred answer the connection leaves the epoll set: EPOLLHUP
        // and EPOLLERR are reported whatever a registration asks for, and a client gone
        // meanwhile would wake the reactor on every pass. It comes back when the answer is
        // sent; the requests it had sent that were read already run then.
        let fd = conn.stream.as_raw_fd();
        let epfd = self.epoll.as_raw_fd();
        if conn.waiting_answer && interest == 0 {
            if conn.registered {
                let _ = epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, 0, 0);
                conn.registered = false;
            }
        } else if !conn.registered {
            if epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, interest, slot as u64).is_err() {
                // No room in the epoll set (max_user_watches): it could never be served.
                self.close(slot);
                return;
            }
            conn.registered = true;
        } else if interest != conn.interest {
            let _ = epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, interest, slot as u64);
        }
        conn.interest = interest;
    }

    fn close(&mut self, slot: usize) {
        if let Some(conn) = self.conns[slot].take() {
            let _ = epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                conn.stream.as_raw_fd(),
                0,
                0,
            );
            self.init_waiters.retain(|(s, _)| *s != slot);
            // Its deferred answer is no longer its (the slot may take a new client): polled
            // to its end all the same, and dropped.
            for d in &mut self.deferred {
                if d.slot == Some(slot) {
                    d.slot = None;
                }
            }
        }
    }

    pub fn context(&mut self) -> &mut RpcContext {
        &mut self.ctx
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
