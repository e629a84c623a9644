//! `unblend serve`: boot the reactors and the configured bdevs, run until SIGINT/SIGTERM,
//! then stop taking work, drain in-flight I/O, flush every bdev and exit.

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

use crate::bdev::malloc::MallocBdev;
use crate::bdev::{BdevError, BdevRegistry};
use crate::config::{self, ConfigError};
use crate::frontend::vhost_blk::VhostControllers;
use crate::mem::{self, BufferPoolConfig};
use crate::reactor::{CpuMask, IdlePolicy, PollerKind, ReactorConfig, ReactorError, ReactorSet};
use crate::rpc::methods::{RpcContext, RpcState};
use crate::rpc::{bind_socket, RpcServer, RpcSetupError, SetLogLevel};

/// Size of the embedded default's RAM disk.
pub const DEFAULT_MALLOC_BYTES: u64 = 64 << 20;
/// The embedded default's pool file (under the data directory), its size, and its volume.
pub const DEFAULT_POOL_FILE: &str = "pool0.img";
pub const DEFAULT_POOL_BYTES: u64 = 1 << 30;
pub const DEFAULT_POOL_NAME: &str = "lvs0";
pub const DEFAULT_VOLUME_NAME: &str = "vol0";
pub const DEFAULT_VOLUME_BYTES: u64 = 512 << 20;
/// Where the embedded default keeps its pool unless `--data-dir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/tmp/unblend";
/// The embedded default's vhost-user-blk controller (its socket's name in the socket directory).
pub const DEFAULT_VHOST_CTRLR: &str = "vhost.0";

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
    /// Where the embedded default keeps its pool file.
    pub data_dir: PathBuf,
    /// Where vhost-user sockets are made (`-S`, as SPDK's vhost app).
    pub socket_dir: PathBuf,
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
    #[error("data directory {path}: {why}")]
    DataDir { path: String, why: String },
    #[error("default pool: {0}")]
    Pool(#[from] crate::lsv::pool::PoolError),
    #[error("vhost: {0}")]
    Vhost(String),
}

/// Holds the data directory's lock file (flock, released when the process exits).
struct DataDirLock(#[allow(dead_code)] std::fs::File);

fn lock_data_dir(dir: &std::path::Path) -> Result<DataDirLock, ServeError> {
    let err = |why: String| ServeError::DataDir {
        path: dir.display().to_string(),
        why,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(|e| err(e.to_string()))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(err(
            "in use by another appliance (pass --data-dir to run a second one)".into(),
        ));
    }
    Ok(DataDirLock(f))
}

/// The embedded default's pool: a file-backed uring bdev under the data directory with pool
/// `lvs0` and volume `vol0`. An existing pool file is loaded (by examine), never formatted
/// again. Returns the names of the bdevs made.
fn boot_default_pool(
    dir: &std::path::Path,
    registry: &BdevRegistry,
    pools: &crate::lsv::pools::Pools,
) -> Result<Vec<String>, ServeError> {
    use crate::bdev::uring::{UringBdev, UringCreateParams};
    let path = dir.join(DEFAULT_POOL_FILE);
    let exists = path.exists();
    let bdev = UringBdev::create(&UringCreateParams {
        name: "Data0".into(),
        filename: path.display().to_string(),
        block_size: Some(4096),
        uuid: None,
        size_bytes: (!exists).then_some(DEFAULT_POOL_BYTES),
        sqpoll: false,
    })?;
    let entry = registry.register(Arc::new(bdev))?;
    if !exists || !crate::lsv::pool::holds_pool(&entry) {
        let pool = crate::lsv::pool::LsvPool::create(
            DEFAULT_POOL_NAME,
            entry,
            crate::lsv::format::DEFAULT_SEGMENT_BYTES,
        )?;
        pool.create_volume(DEFAULT_VOLUME_NAME, DEFAULT_VOLUME_BYTES / 4096)?;
        pools.insert(pool.clone())?;
        crate::lsv::pools::Pools::register_volumes(&pool, registry)?;
    }
    Ok(vec![
        "Data0".into(),
        format!("{DEFAULT_POOL_NAME}/{DEFAULT_VOLUME_NAME}"),
    ])
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

/// How long a clean stop waits for pool formats and loads still running (`rpc::pool_jobs`).
const POOL_JOB_SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

pub fn run(opts: ServeOptions) -> Result<(), ServeError> {
    // Before any reactor pins its thread: the CPUs pool jobs may use.
    crate::rpc::pool_jobs::remember_process_cpus();
    let signals = block_stop_signals()?;
    let registry = Arc::new(BdevRegistry::new());
    // Bind first: a second appliance on the same socket must fail before it touches anything.
    let listener = bind_socket(&opts.rpc_socket)?;
    let mut pending_config = None;
    let pools = Arc::new(crate::lsv::pools::Pools::new(registry.clone()));
    let mut _data_lock = None;
    let mut boot_config = None;
    let mut made: Vec<String> = match &opts.config {
        Some(path) => {
            let cfg = config::load_file(path)?;
            if opts.wait_for_rpc {
                pending_config = Some(cfg);
                Vec::new()
            } else {
                let made = config::apply(&cfg, &registry)?;
                boot_config = Some(cfg);
                made
            }
        }
        None if opts.wait_for_rpc => Vec::new(),
        None => {
            let bdev = MallocBdev::with_size("Malloc0", DEFAULT_MALLOC_BYTES, 4096)?;
            registry.register(Arc::new(bdev))?;
            _data_lock = Some(lock_data_dir(&opts.data_dir)?);
            let mut made = vec!["Malloc0".to_string()];
            made.extend(boot_default_pool(&opts.data_dir, &registry, &pools)?);
            made
        }
    };
    // Examine every bdev the config made: pools on them are loaded with their volumes.
    pools.examine_all();
    made.retain(|n| registry.get(n).is_some());
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
    pools.attach_reactors(handle.clone());

    std::fs::create_dir_all(&opts.socket_dir).map_err(|e| ServeError::DataDir {
        path: opts.socket_dir.display().to_string(),
        why: e.to_string(),
    })?;
    let vhost = Arc::new(VhostControllers::new(&opts.socket_dir));
    let mut ctx = RpcContext {
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
        vhost: vhost.clone(),
        deferred: None,
    };
    // Front ends come up once the reactors run: the config's, or the embedded default's export.
    if let Some(cfg) = &boot_config {
        crate::rpc::vhost::apply_config(&mut ctx, cfg).map_err(ServeError::Vhost)?;
    }
    let mut default_export = None;
    if opts.config.is_none() && !opts.wait_for_rpc {
        let volume = format!("{DEFAULT_POOL_NAME}/{DEFAULT_VOLUME_NAME}");
        let params = serde_json::json!({"ctrlr": DEFAULT_VHOST_CTRLR, "dev_name": volume});
        crate::rpc::vhost::vhost_create_blk_controller(&mut ctx, Some(&params))
            .map_err(|e| ServeError::Vhost(e.message))?;
        default_export = Some(opts.socket_dir.join(DEFAULT_VHOST_CTRLR));
    }
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
        (None, false) => {
            println!(
                "no --config given: booted the embedded default (pool {DEFAULT_POOL_NAME} in {})",
                opts.data_dir.join(DEFAULT_POOL_FILE).display()
            );
        }
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
    if let Some(sock) = &default_export {
        println!("  vhost-user-blk {DEFAULT_VHOST_CTRLR}: {DEFAULT_POOL_NAME}/{DEFAULT_VOLUME_NAME} on {}", sock.display());
        println!("  attach it to QEMU with:");
        println!(
            "    qemu-system-x86_64 ... -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \\\n      -chardev socket,id=vhost0,path={},reconnect-ms=500 -device vhost-user-blk-pci,chardev=vhost0,num-queues={}",
            sock.display(),
            handle.count()
        );
    }
    println!("running; stop with Ctrl-C, SIGTERM or spdk_kill_instance");

    let sig = wait_for_signal(&signals);
    tracing::info!(signal = sig, "stopping");
    // Front ends first: their queues finish what is in flight while the reactors still run.
    vhost.shutdown();
    handle.request_stop();
    reactors.join();
    // A format or load still running on its thread finishes first: the process must not
    // end halfway through a format (its superblock is written last).
    let running = crate::rpc::pool_jobs::wait_for_pool_jobs(POOL_JOB_SHUTDOWN_WAIT);
    if running > 0 {
        tracing::error!(
            running,
            "stopping with pool formats or loads still running after {POOL_JOB_SHUTDOWN_WAIT:?}"
        );
    }
    pools.close_all();
    for (name, e) in registry.flush_all() {
        tracing::error!("flushing bdev {name} at shutdown failed: {e}");
    }
    println!("unblend stopped cleanly");
    Ok(())
}
