//! `unblend serve`: boot the reactors and the configured bdevs, run until SIGINT/SIGTERM,
//! then stop taking work, drain in-flight I/O, flush every bdev and exit.

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

use crate::bdev::malloc::MallocBdev;
use crate::bdev::{BdevError, BdevRegistry};
use crate::config::{self, ConfigError};
use crate::mem::{self, BufferPoolConfig};
use crate::reactor::{CpuMask, IdlePolicy, PollerKind, ReactorConfig, ReactorError, ReactorSet};
use crate::rpc::methods::{RpcContext, RpcState};
use crate::rpc::{bind_socket, RpcServer, RpcSetupError, SetLogLevel};

/// Size of the embedded default's RAM disk.
pub const DEFAULT_MALLOC_BYTES: u64 = 64 << 20;

pub struct ServeOptions {
    pub config: Option<PathBuf>,
    pub cpumask: CpuMask,
    pub idle: IdlePolicy,
    /// The JSON-RPC socket.
    pub rpc_socket: PathBuf,
    /// Boot with only startup RPC methods live until `framework_start_init`.
    pub wait_for_rpc: bool,
    /// Changes the log filter (for `log_set_print_level`).
    pub set_log_level: SetLogLevel,
}

#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Bdev(#[from] BdevError),
    #[error(transparent)]
    Reactor(#[from] ReactorError),
    #[error("cannot set up signal handling: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Rpc(#[from] RpcSetupError),
}

/// Blocks SIGINT and SIGTERM in the calling thread (and so in every thread it starts later),
/// so that `wait_for_signal` can take them synchronously.
fn block_stop_signals() -> Result<libc::sigset_t, ServeError> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(ServeError::Signals(std::io::Error::from_raw_os_error(rc)));
        }
        Ok(set)
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is an initialised signal set and `sig` a live int.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

pub fn run(opts: ServeOptions) -> Result<(), ServeError> {
    let signals = block_stop_signals()?;
    let registry = Arc::new(BdevRegistry::new());
    // Bind first: a second appliance on the same socket must fail before it touches anything.
    let listener = bind_socket(&opts.rpc_socket)?;
    let mut pending_config = None;
    let made: Vec<String> = match &opts.config {
        Some(path) => {
            let cfg = config::load_file(path)?;
            if opts.wait_for_rpc {
                pending_config = Some(cfg);
                Vec::new()
            } else {
                config::apply(&cfg, &registry)?
            }
        }
        None if opts.wait_for_rpc => Vec::new(),
        None => {
            let bdev = MallocBdev::with_size("Malloc0", DEFAULT_MALLOC_BYTES, 4096)?;
            registry.register(Arc::new(bdev))?;
            vec!["Malloc0".to_string()]
        }
    };
    // Examine every bdev the config made: pools on them are loaded with their volumes.
    let pools = Arc::new(crate::lsv::pools::Pools::new());
    for entry in registry.list() {
        if let Err(e) = pools.examine(&entry, &registry) {
            tracing::warn!(bdev = %entry.bdev.name(), "examine: pool found but not loaded: {e}");
        }
    }
    let reactors = ReactorSet::start(ReactorConfig {
        cpumask: opts.cpumask.clone(),
        idle: opts.idle,
        idle_spin_passes: crate::reactor::IDLE_PASSES_BEFORE_SLEEP,
        thread_init: Some(Arc::new(|reactor| {
            if let Err(e) = mem::init_thread_pool(BufferPoolConfig::default()) {
                tracing::error!(reactor, "no buffer pool for this reactor: {e}");
            }
        })),
    })?;
    let handle = reactors.handle();

    let ctx = RpcContext {
        registry: registry.clone(),
        reactors: handle.clone(),
        state: if opts.wait_for_rpc {
            RpcState::Startup
        } else {
            RpcState::Runtime
        },
        set_log_level: opts.set_log_level,
        log_level: "NOTICE".into(),
        pending_config,
        bench: None,
        last_bench_report: None,
        kill_signal: None,
        started: std::time::Instant::now(),
        pools: pools.clone(),
    };
    let mut server = RpcServer::new(&opts.rpc_socket, listener, ctx)?;
    let wake_fd = server.wake_fd();
    handle.send(0, move |r| {
        r.register_poller_with_wake_fd(
            "rpc",
            PollerKind::Service,
            crate::rpc::POLL_PERIOD_US,
            Some(wake_fd),
            move |_| {
                if server.poll() {
                    crate::reactor::PollStatus::Busy
                } else {
                    crate::reactor::PollStatus::Idle
                }
            },
        );
    })?;

    let cores: Vec<String> = opts.cpumask.cores().iter().map(|c| c.to_string()).collect();
    println!(
        "unblend {}: {} reactor(s) on core(s) {} ({}), idle policy {}",
        env!("CARGO_PKG_VERSION"),
        handle.count(),
        cores.join(","),
        opts.cpumask.to_hex(),
        opts.idle.as_str()
    );
    println!(
        "JSON-RPC on {} (SPDK method names)",
        opts.rpc_socket.display()
    );
    match (&opts.config, opts.wait_for_rpc) {
        (_, true) => {
            println!("--wait-for-rpc: only startup methods are live until framework_start_init")
        }
        (Some(p), false) => println!("applied config {}", p.display()),
        (None, false) => println!("no --config given: booted the embedded default"),
    }
    for name in &made {
        if let Some(e) = registry.get(name) {
            let b = &e.bdev;
            println!(
                "  bdev {name}: {}, {} blocks of {} bytes ({} MiB), uuid {}",
                b.product_name(),
                b.num_blocks(),
                b.block_size(),
                (b.num_blocks() * b.block_size() as u64) >> 20,
                b.uuid()
            );
        }
    }
    println!("running; stop with Ctrl-C, SIGTERM or spdk_kill_instance");

    let sig = wait_for_signal(&signals);
    tracing::info!(signal = sig, "stopping");
    handle.request_stop();
    reactors.join();
    for (name, e) in registry.flush_all() {
        tracing::error!("flushing bdev {name} at shutdown failed: {e}");
    }
    println!("unblend stopped cleanly");
    Ok(())
}
