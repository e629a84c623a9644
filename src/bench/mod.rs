//! `unblend bench`: unblend's bdevperf. Runs a workload on every selected reactor, each on its
//! own channel with `queue_depth` I/Os in flight, and reports IOPS, bandwidth and latency.

mod job;
pub mod journal;
pub mod pattern;
pub mod report;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;
use thiserror::Error;

use crate::bdev::malloc::MallocBdev;
use crate::bdev::null::NullBdev;
use crate::bdev::uring::{UringBdev, UringCreateParams};
use crate::bdev::{Bdev, BdevEntry, BdevError, BdevRegistry, ChannelContext};
use crate::config::{self, parse_size, ConfigError};
use crate::mem::{self, BufferPoolConfig};
use crate::reactor::{CpuMask, IdlePolicy, PollerKind, ReactorConfig, ReactorSet, Reactors};

use job::{Job, JobPlan};
pub use report::BenchReport;

/// Limits on the options, checked before anything starts.
pub const MAX_QUEUE_DEPTH: u32 = 4096;
/// The highest `--rate-iops`: an I/O every microsecond, so that the interval's rounding to
/// whole nanoseconds stays under 0.1% of it.
pub const MAX_RATE_IOPS: u64 = 1_000_000;
pub const MAX_IO_BYTES: u64 = 16 << 20;
pub const MAX_SECONDS: u64 = 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    RandRead,
    RandWrite,
    Read,
    Write,
    /// Sequential, mixed by `read_percent`.
    Rw,
    /// Random, mixed by `read_percent`.
    RandRw,
    Verify,
    /// Crash testing: checks the blocks against the journal of an earlier (killed) run, then
    /// writes tagged blocks at random with a FLUSH every 32 I/Os, journaling every
    /// acknowledged write (needs `--journal`).
    CrashWrite,
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "randread" => Workload::RandRead,
            "randwrite" => Workload::RandWrite,
            "read" => Workload::Read,
            "write" => Workload::Write,
            "rw" => Workload::Rw,
            "randrw" => Workload::RandRw,
            "verify" => Workload::Verify,
            "crashwrite" => Workload::CrashWrite,
            other => {
                return Err(format!(
                "workload {other:?} is not one of randread, randwrite, read, write, rw, randrw, verify, crashwrite"
            ))
            }
        })
    }
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::RandRead => "randread",
            Workload::RandWrite => "randwrite",
            Workload::Read => "read",
            Workload::Write => "write",
            Workload::Rw => "rw",
            Workload::RandRw => "randrw",
            Workload::Verify => "verify",
            Workload::CrashWrite => "crashwrite",
        }
    }
}

/// Where the bench's bdev comes from.
#[derive(Clone)]
pub enum BdevSource {
    /// `null:size=1G[,bs=4096][,zero=0]`, `malloc:size=…`, `uring:path=…[,size=…][,bs=…][,sqpoll=1]`.
    Spec(String),
    /// A bdev named in an SPDK JSON config.
    FromConfig { config: PathBuf, name: String },
    /// A bdev already built by the caller (tests, and later the RPC's perform_tests).
    Entry(BdevEntry),
}

#[derive(Clone)]
pub struct BenchOptions {
    pub bdev: BdevSource,
    pub queue_depth: u32,
    pub io_bytes: u64,
    pub cpumask: CpuMask,
    pub seconds: u64,
    pub workload: Workload,
    pub read_percent: u8,
    pub idle: IdlePolicy,
    pub seed: u64,
    pub progress: bool,
    /// Skewed random offsets: (percent of the range that is hot, percent of I/Os to it).
    pub hot: Option<(u8, u8)>,
    /// The crash workload's journal file.
    pub journal: Option<PathBuf>,
    /// I/Os each job starts a second at most (0: no limit), as fio's `rate_iops`.
    pub rate_iops: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyFailure {
    pub lba: u64,
    pub byte_in_block: usize,
    pub expected: u64,
    pub found: u64,
}

pub struct JobResult {
    pub reactor: usize,
    pub core: usize,
    pub ios: u64,
    pub bytes: u64,
    pub errors: u64,
    pub elapsed_ns: u64,
    pub histogram: Histogram<u64>,
    pub verify_failure: Option<VerifyFailure>,
}

#[derive(Debug, Error)]
pub enum BenchError {
    /// Bad options or a bad bdev: exit code 2.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Bdev(#[from] BdevError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The run itself went wrong: exit code 1.
    #[error("{0}")]
    Run(String),
}

impl BenchError {
    pub fn exit_code(&self) -> i32 {
        match self {
            BenchError::Run(_) => 1,
            _ => 2,
        }
    }
}

fn spec_fields(spec: &str) -> Result<(String, Vec<(String, String)>), BenchError> {
    let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
    let mut fields = Vec::new();
    for part in rest.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            BenchError::Usage(format!("bdev spec {spec:?}: {part:?} is not key=value"))
        })?;
        fields.push((k.to_string(), v.to_string()));
    }
    Ok((kind.to_string(), fields))
}

/// What a `--bdev` spec builds: the bdevs the jobs run on (one per job when there are
/// several), and the lsv pool behind them, if any.
pub struct BenchTarget {
    pub bdevs: Vec<Arc<dyn Bdev>>,
    pub pool: Option<Arc<crate::lsv::pool::LsvPool>>,
    /// Write every volume once, sequentially, before the measured run.
    pub prefill: bool,
}

/// Builds the bench's bdev from a `--bdev` spec.
pub fn bdev_from_spec(spec: &str) -> Result<Arc<dyn Bdev>, BenchError> {
    let mut t = target_from_spec(spec)?;
    Ok(t.bdevs.swap_remove(0))
}

/// Builds the bench's bdevs from a `--bdev` spec. lsv keys: `path`, `size` (of the pool
/// file), `volume` (size of each volume), `volumes` (how many, one job each), `segment`,
/// `policy` (greedy, cost-benefit, lifespan), `prefill=1`.
pub fn target_from_spec(spec: &str) -> Result<BenchTarget, BenchError> {
    let (kind, fields) = spec_fields(spec)?;
    let mut size = None;
    let mut bs: u64 = 4096;
    let mut path = None;
    let mut sqpoll = false;
    let mut bs_given = false;
    let mut zero_reads = true;
    let mut volume_bytes: u64 = 1 << 30;
    let mut segment_bytes: u64 = crate::lsv::format::DEFAULT_SEGMENT_BYTES;
    let mut volumes: u32 = 1;
    let mut policy = crate::lsv::usage::CleanerPolicy::CostBenefit;
    let mut prefill = false;
    let mut open_existing = false;
    for (k, v) in &fields {
        match k.as_str() {
            "size" => size = Some(parse_size(v).map_err(BenchError::Usage)?),
            "bs" | "block_size" => {
                bs = parse_size(v).map_err(BenchError::Usage)?;
                bs_given = true;
            }
            "path" | "filename" if kind == "uring" || kind == "lsv" => path = Some(v.clone()),
            "volume" if kind == "lsv" => volume_bytes = parse_size(v).map_err(BenchError::Usage)?,
            "segment" if kind == "lsv" => {
                segment_bytes = parse_size(v).map_err(BenchError::Usage)?
            }
            "volumes" if kind == "lsv" => {
                volumes = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_BENCH_VOLUMES).contains(n))
                    .ok_or_else(|| {
                        BenchError::Usage(format!(
                            "bdev spec {spec:?}: volumes must be 1..={MAX_BENCH_VOLUMES}"
                        ))
                    })?
            }
            "policy" if kind == "lsv" => {
                policy = crate::lsv::usage::CleanerPolicy::parse(v).ok_or_else(|| {
                    BenchError::Usage(format!(
                        "bdev spec {spec:?}: policy must be greedy, cost-benefit or lifespan"
                    ))
                })?
            }
            "prefill" if kind == "lsv" => prefill = matches!(v.as_str(), "1" | "true" | "yes"),
            "open" if kind == "lsv" => open_existing = matches!(v.as_str(), "1" | "true" | "yes"),
            "zero" if kind == "null" => zero_reads = !matches!(v.as_str(), "0" | "false" | "no"),
            "sqpoll" if kind == "uring" => sqpoll = matches!(v.as_str(), "1" | "true" | "yes"),
            other => {
                return Err(BenchError::Usage(format!(
                    "bdev spec {spec:?}: unknown key {other:?} for a {kind} bdev"
                )))
            }
        }
    }
    let need_size =
        || size.ok_or_else(|| BenchError::Usage(format!("bdev spec {spec:?} needs size=…")));
    let one = |b: Arc<dyn Bdev>| BenchTarget {
        bdevs: vec![b],
        pool: None,
        prefill: false,
    };
    Ok(match kind.as_str() {
        "null" => {
            let mut null = NullBdev::with_size("bench_null", need_size()?, bs)?;
            null.set_zero_reads(zero_reads);
            one(Arc::new(null))
        }
        "malloc" => one(Arc::new(MallocBdev::with_size(
            "bench_malloc",
            need_size()?,
            bs,
        )?)),
        "uring" => {
            let path =
                path.ok_or_else(|| BenchError::Usage(format!("bdev spec {spec:?} needs path=…")))?;
            one(Arc::new(UringBdev::create(&UringCreateParams {
                name: "bench_uring".into(),
                filename: path,
                block_size: bs_given.then_some(bs),
                uuid: None,
                size_bytes: size,
                sqpoll,
            })?))
        }
        "lsv" => {
            // A fresh pool on a uring file, formatted now, with its thin volumes; with open=1
            // the pool already in the file is opened (recovered) and its volumes used.
            let path =
                path.ok_or_else(|| BenchError::Usage(format!("bdev spec {spec:?} needs path=…")))?;
            let exists = std::path::Path::new(&path).exists();
            let base =
                BdevRegistry::new().register(Arc::new(UringBdev::create(&UringCreateParams {
                    name: "bench_pool_base".into(),
                    filename: path,
                    block_size: Some(4096),
                    uuid: None,
                    size_bytes: if open_existing && exists { None } else { size },
                    sqpoll: false,
                })?))?;
            let reopen = open_existing && exists && crate::lsv::pool::holds_pool(&base);
            let pool = if reopen {
                let t0 = Instant::now();
                let pool = crate::lsv::pool::LsvPool::open_named(base)
                    .map_err(|e| BenchError::Run(format!("opening the pool: {e}")))?;
                let recovered_ms = t0.elapsed().as_secs_f64() * 1000.0;
                // As the appliance's load does: the time to serve I/O includes it.
                let checkpointed = pool
                    .checkpoint_after_recovery()
                    .map_err(|e| BenchError::Run(format!("checkpoint after recovery: {e}")))?;
                let then = if checkpointed {
                    ", then a checkpoint"
                } else {
                    ""
                };
                println!(
                    "lsv: pool opened (recovered) in {:.1} ms ({recovered_ms:.1} ms recovering{then})",
                    t0.elapsed().as_secs_f64() * 1000.0
                );
                pool
            } else {
                crate::lsv::pool::LsvPool::create("bench_pool", base, segment_bytes)
                    .map_err(|e| BenchError::Usage(e.to_string()))?
            };
            pool.set_policy(policy);
            let blocks = crate::bdev::blocks_for_size(volume_bytes, 4096)?;
            let mut bdevs: Vec<Arc<dyn Bdev>> = Vec::new();
            for i in 0..volumes {
                let name = if volumes == 1 {
                    "vol".to_string()
                } else {
                    format!("vol{i}")
                };
                let (meta, table) = match pool.volume(&name) {
                    Some(v) if reopen => v,
                    _ => pool
                        .create_volume(&name, blocks)
                        .map_err(|e| BenchError::Usage(e.to_string()))?,
                };
                bdevs.push(Arc::new(crate::lsv::volume::LsvVolume::new(
                    pool.clone(),
                    meta,
                    table,
                )));
            }
            BenchTarget {
                bdevs,
                pool: Some(pool),
                prefill,
            }
        }
        other => {
            return Err(BenchError::Usage(format!(
                "unknown bdev type {other:?} (expected null, malloc, uring or lsv)"
            )))
        }
    })
}

/// Volumes one bench may create in its pool.
pub const MAX_BENCH_VOLUMES: u32 = 32;

struct Resolved {
    entries: Vec<BdevEntry>,
    pool: Option<Arc<crate::lsv::pool::LsvPool>>,
    prefill: bool,
}

fn resolve(source: &BdevSource) -> Result<Resolved, BenchError> {
    if let BdevSource::Spec(spec) = source {
        let registry = BdevRegistry::new();
        let t = target_from_spec(spec)?;
        let entries = t
            .bdevs
            .into_iter()
            .map(|b| registry.register(b))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Resolved {
            entries,
            pool: t.pool,
            prefill: t.prefill,
        });
    }
    Ok(Resolved {
        entries: vec![resolve_bdev(source)?],
        pool: None,
        prefill: false,
    })
}

fn resolve_bdev(source: &BdevSource) -> Result<BdevEntry, BenchError> {
    let registry = BdevRegistry::new();
    match source {
        BdevSource::Spec(spec) => Ok(registry.register(bdev_from_spec(spec)?)?),
        BdevSource::Entry(entry) => Ok(entry.clone()),
        BdevSource::FromConfig { config: path, name } => {
            let cfg = config::load_file(path)?;
            config::apply(&cfg, &registry)?;
            registry.get(name).ok_or_else(|| {
                BenchError::Usage(format!(
                    "config {} has no bdev named {name:?}",
                    path.display()
                ))
            })
        }
    }
}

/// A seed that differs from run to run (time and pid mixed).
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ ((std::process::id() as u64) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
}

/// Checks the options that do not depend on the bdev.
fn check_options(opts: &BenchOptions) -> Result<(), BenchError> {
    if opts.queue_depth == 0 || opts.queue_depth > MAX_QUEUE_DEPTH {
        return Err(BenchError::Usage(format!(
            "queue depth {} is outside 1..={MAX_QUEUE_DEPTH}",
            opts.queue_depth
        )));
    }
    if opts.seconds == 0 || opts.seconds > MAX_SECONDS {
        return Err(BenchError::Usage(format!(
            "time {} s is outside 1..={MAX_SECONDS}",
            opts.seconds
        )));
    }
    if opts.read_percent > 100 {
        return Err(BenchError::Usage(format!(
            "read percent {} is above 100",
            opts.read_percent
        )));
    }
    if opts.rate_iops > MAX_RATE_IOPS {
        return Err(BenchError::Usage(format!(
            "rate {} IOPS is above {MAX_RATE_IOPS}",
            opts.rate_iops
        )));
    }
    if opts.rate_iops != 0 && matches!(opts.workload, Workload::CrashWrite | Workload::Verify) {
        return Err(BenchError::Usage(format!(
            "--rate-iops does not go with -w {} (its read-backs are not paced)",
            opts.workload.name()
        )));
    }
    if (opts.workload == Workload::CrashWrite) != opts.journal.is_some() {
        return Err(BenchError::Usage(
            "--journal goes with -w crashwrite, and crashwrite needs --journal".into(),
        ));
    }
    Ok(())
}

/// How the bdev is cut into I/O units and shared among `cores` jobs.
struct Layout {
    blocks_per_io: u64,
    total_units: u64,
    striped: bool,
}

fn layout(opts: &BenchOptions, bdev: &dyn Bdev, cores: u64) -> Result<Layout, BenchError> {
    check_options(opts)?;
    let block_size = bdev.block_size() as u64;
    if opts.io_bytes == 0
        || !opts.io_bytes.is_multiple_of(block_size)
        || opts.io_bytes > MAX_IO_BYTES
    {
        return Err(BenchError::Usage(format!(
            "I/O size {} is not a multiple of the block size {block_size} between {block_size} and {MAX_IO_BYTES}",
            opts.io_bytes
        )));
    }
    let blocks_per_io = opts.io_bytes / block_size;
    let total_units = bdev.num_blocks() / blocks_per_io;
    let striped = matches!(
        opts.workload,
        Workload::Read | Workload::Write | Workload::Rw | Workload::Verify | Workload::CrashWrite
    );
    let min_units = if opts.workload == Workload::Verify {
        (opts.queue_depth as u64 + 1) * if striped { cores } else { 1 }
    } else {
        cores
    };
    if total_units < min_units {
        return Err(BenchError::Usage(format!(
            "bdev {} holds {total_units} I/Os of {} bytes; this job needs at least {min_units}",
            bdev.name(),
            opts.io_bytes
        )));
    }
    Ok(Layout {
        blocks_per_io,
        total_units,
        striped,
    })
}

/// Jobs started on running reactors; collect their results with `poll` or `wait`.
pub struct RunningBench {
    opts: BenchOptions,
    bdev: Arc<dyn Bdev>,
    rx: mpsc::Receiver<Result<JobResult, String>>,
    progress: Vec<Arc<CachePadded<AtomicU64>>>,
    expected: usize,
    results: Vec<JobResult>,
    failure: Option<String>,
    failures: usize,
    started: Instant,
}

impl RunningBench {
    /// Takes whatever results have arrived; true once every job has reported.
    pub fn poll(&mut self) -> bool {
        while let Ok(r) = self.rx.try_recv() {
            self.take(r);
        }
        self.is_done()
    }

    fn take(&mut self, r: Result<JobResult, String>) {
        match r {
            Ok(r) => self.results.push(r),
            Err(e) => {
                self.failures += 1;
                self.failure.get_or_insert(e);
            }
        }
    }

    fn is_done(&self) -> bool {
        self.results.len() + self.failures >= self.expected
    }

    /// I/Os completed so far, over all jobs.
    pub fn ios_so_far(&self) -> u64 {
        self.progress.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Blocks until every job reports (or one fails), showing progress once a second.
    fn wait(&mut self, show_progress: bool) {
        while !self.is_done() {
            match self.rx.recv_timeout(Duration::from_secs(1)) {
                Ok(r) => self.take(r),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if show_progress {
                        let secs = self.elapsed().as_secs_f64();
                        let iops = self.ios_so_far() as f64 / secs;
                        print!(
                            "\r[{secs:5.1} s] {:>12.0} IOPS {:>10.2} MiB/s   ",
                            iops,
                            iops * self.opts.io_bytes as f64 / (1 << 20) as f64
                        );
                        use std::io::Write;
                        let _ = std::io::stdout().flush();
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        if show_progress {
            println!();
        }
    }

    /// The report, once every job has reported.
    pub fn report(&mut self) -> Result<BenchReport, BenchError> {
        if let Some(e) = &self.failure {
            return Err(BenchError::Run(e.clone()));
        }
        if self.results.len() != self.expected {
            return Err(BenchError::Run("a bench job ended without a result".into()));
        }
        self.results.sort_by_key(|r| r.reactor);
        Ok(BenchReport::new(
            &self.opts,
            self.bdev.as_ref(),
            std::mem::take(&mut self.results),
        ))
    }
}

/// Starts one job per reactor in `reactors` (indices into the running set) on `entry`.
/// Each reactor must have a buffer pool with at least `queue_depth` buffers of the I/O size.
pub fn start_jobs(
    handle: &Reactors,
    reactors: &[usize],
    entry: &BdevEntry,
    opts: &BenchOptions,
) -> Result<RunningBench, BenchError> {
    start_jobs_on(handle, reactors, std::slice::from_ref(entry), opts, false)
}

/// Starts the jobs: with one bdev, one job per reactor, sharing it (sequential workloads
/// stripe it); with several, one job per bdev, each on its own bdev from its own starting
/// offset, spread over the reactors. `once`: each job writes or reads its range once and stops.
/// A reactor runs at most `queue_depth` I/Os of its buffer pool, so several jobs on one
/// reactor share `queue_depth` between them.
pub fn start_jobs_on(
    handle: &Reactors,
    reactors: &[usize],
    entries: &[BdevEntry],
    opts: &BenchOptions,
    once: bool,
) -> Result<RunningBench, BenchError> {
    let bdev = entries[0].bdev.clone();
    let n = reactors.len() as u64;
    if n == 0 {
        return Err(BenchError::Usage("no reactor to run the bench on".into()));
    }
    let many = entries.len() > 1;
    let jobs = if many { entries.len() } else { reactors.len() };
    let per_reactor = jobs.div_ceil(reactors.len()) as u32;
    let job_qd = if many {
        (opts.queue_depth / per_reactor).max(1)
    } else {
        opts.queue_depth
    };
    let layout = layout(opts, bdev.as_ref(), if many { 1 } else { n })?;
    let journaled = match &opts.journal {
        Some(path) if opts.workload == Workload::CrashWrite => journal::load(path)
            .map_err(|e| BenchError::Usage(format!("journal {}: {e}", path.display())))?,
        _ => Default::default(),
    };
    let (tx, rx) = mpsc::channel();
    let mut progress = Vec::new();
    for job_index in 0..jobs {
        let reactor = reactors[job_index % reactors.len()];
        let entry = &entries[if many { job_index } else { 0 }];
        let (first_unit, units, start_unit) = if many {
            (
                0,
                layout.total_units,
                layout.total_units * job_index as u64 / jobs as u64,
            )
        } else if layout.striped {
            let per = layout.total_units / n;
            (job_index as u64 * per, per, 0)
        } else {
            (0, layout.total_units, 0)
        };
        let plan = JobPlan {
            reactor,
            core: handle.core(reactor),
            workload: opts.workload,
            read_percent: opts.read_percent,
            queue_depth: job_qd,
            blocks_per_io: layout.blocks_per_io,
            first_unit,
            units,
            duration_ns: if once {
                u64::MAX / 4
            } else {
                opts.seconds * 1_000_000_000
            },
            seed: opts.seed,
            job: job_index,
            start_unit,
            hot: opts.hot,
            max_ios: if once { units } else { 0 },
            rate_iops: opts.rate_iops,
        };
        let counter = Arc::new(CachePadded::new(AtomicU64::new(0)));
        progress.push(counter.clone());
        let tx = tx.clone();
        let entry = entry.clone();
        let crash = opts
            .journal
            .as_ref()
            .filter(|_| opts.workload == Workload::CrashWrite && !once)
            .map(|path| job::CrashSetup {
                journal: path.clone(),
                checks: (first_unit..first_unit + units)
                    .map(|u| (u, journaled.get(&u).copied()))
                    .collect(),
            });
        handle
            .send(reactor, move |r| {
                let setup = || -> Result<Job, String> {
                    let pool = mem::thread_pool().ok_or("reactor has no buffer pool")?;
                    let channel = entry
                        .open_channel(&ChannelContext {
                            queue_depth: plan.queue_depth,
                            buffers: Some(pool.clone()),
                        })
                        .map_err(|e| e.to_string())?;
                    Job::new(plan, channel, pool, counter, tx.clone(), crash)
                };
                match setup() {
                    Ok(mut job) => {
                        let registered =
                            r.register_poller("bench_job", PollerKind::Io, 0, move |ctx| {
                                job.poll(ctx)
                            });
                        if !registered {
                            let _ = tx.send(Err("reactor has too many pollers".into()));
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| BenchError::Run(e.to_string()))?;
    }
    Ok(RunningBench {
        opts: opts.clone(),
        bdev,
        rx,
        progress,
        expected: jobs,
        results: Vec::new(),
        failure: None,
        failures: 0,
        started: Instant::now(),
    })
}

/// Runs the benchmark on reactors of its own and returns its report.
pub fn run(opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    check_options(opts)?;
    let pool_bytes = opts.io_bytes.div_ceil(4096) * 4096 * opts.queue_depth as u64;
    if pool_bytes > crate::mem::buffer_pool::MAX_POOL_BYTES as u64 {
        return Err(BenchError::Usage(format!(
            "queue depth {} x I/O size {} needs {pool_bytes} bytes of buffers per core; the limit is {}",
            opts.queue_depth,
            opts.io_bytes,
            crate::mem::buffer_pool::MAX_POOL_BYTES
        )));
    }
    let target = resolve(&opts.bdev)?;
    let cores = opts.cpumask.cores().len() as u64;
    layout(
        opts,
        target.entries[0].bdev.as_ref(),
        if target.entries.len() > 1 { 1 } else { cores },
    )?;
    let buf_bytes = opts.io_bytes.div_ceil(4096) * 4096;
    let pool_config = BufferPoolConfig {
        buf_bytes: buf_bytes as usize,
        count: opts.queue_depth as usize,
        try_hugepages: true,
    };
    let pool_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let pe = pool_error.clone();
    let reactors = ReactorSet::start(ReactorConfig {
        cpumask: opts.cpumask.clone(),
        idle: opts.idle,
        idle_spin_passes: std::env::var("UNBLEND_IDLE_SPIN_PASSES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(crate::reactor::IDLE_PASSES_BEFORE_SLEEP),
        thread_init: Some(Arc::new(move |_| {
            if let Err(e) = mem::init_thread_pool(pool_config) {
                *pe.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
        })),
    })
    .map_err(|e| BenchError::Run(e.to_string()))?;
    let handle = reactors.handle();
    if let Some(pool) = &target.pool {
        crate::lsv::pools::start_cleaner(pool, &handle, None);
    }
    let all: Vec<usize> = (0..handle.count()).collect();
    let stop = |reactors: ReactorSet| {
        if let Some(pool) = &target.pool {
            pool.close();
        }
        handle.request_stop();
        reactors.join();
        if let Some(pool) = &target.pool {
            // Clean shutdown: a final checkpoint, so the next open replays nothing.
            if let Err(e) = pool.checkpoint_sync() {
                tracing::error!("final checkpoint: {e}");
            }
        }
    };
    if target.prefill {
        let mut fill = opts.clone();
        fill.workload = Workload::Write;
        fill.rate_iops = 0;
        let r = start_jobs_on(&handle, &all, &target.entries, &fill, true).and_then(|mut r| {
            r.wait(false);
            r.report()
        });
        match r {
            Ok(rep) if rep.failure().is_none() => {}
            Ok(rep) => {
                stop(reactors);
                return Err(BenchError::Run(format!(
                    "prefill: {}",
                    rep.failure().unwrap_or_default()
                )));
            }
            Err(e) => {
                stop(reactors);
                return Err(e);
            }
        }
    }
    let before = target.pool.as_ref().map(|p| p.write_counters());
    let busy_before: Vec<_> = all.iter().map(|&r| handle.stats(r)).collect();
    let mut running = match start_jobs_on(&handle, &all, &target.entries, opts, false) {
        Ok(r) => r,
        Err(e) => {
            stop(reactors);
            return Err(e);
        }
    };
    running.wait(opts.progress && std::io::stdout().is_terminal());
    let after = target.pool.as_ref().map(|p| p.write_counters());
    let reactor_busy: Vec<(usize, f64)> = all
        .iter()
        .zip(&busy_before)
        .map(|(&r, b)| {
            let a = handle.stats(r);
            let busy_ns = a.busy_ns - b.busy_ns;
            let total_ns = busy_ns + (a.idle_ns - b.idle_ns);
            let share = if total_ns == 0 {
                0.0
            } else {
                busy_ns as f64 / total_ns as f64
            };
            (handle.core(r), share)
        })
        .collect();
    let stats = target.pool.as_ref().map(|p| p.stats());
    stop(reactors);
    if let Some(e) = pool_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(BenchError::Run(format!("buffer pool: {e}")));
    }
    let mut report = running.report()?;
    report.reactor_busy = reactor_busy;
    if let (Some(b), Some(a), Some(stats)) = (before, after, stats) {
        let user = a.0 - b.0;
        let written = a.1 - b.1;
        report.lsv = Some(serde_json::json!({
            "run": {
                "user_bytes_written": user * 4096,
                "bytes_written": written * 4096,
                "write_amplification": if user == 0 { serde_json::Value::Null } else { serde_json::json!(written as f64 / user as f64) },
            },
            "pool": stats,
        }));
    }
    Ok(report)
}
