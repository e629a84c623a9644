//! The `unblend` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use unblend::bench::{self, BdevSource, BenchOptions, Workload};
use unblend::config::parse_size;
use unblend::reactor::{available_cores, CpuMask, IdlePolicy};
use unblend::serve::{self, ServeOptions};

#[derive(Parser)]
#[command(
    name = "unblend",
    version,
    about = "A polled-mode, log-structured storage appliance for VMs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum PoolAction {
    /// Format a new pool on a file or device (creating the file with --size), exactly as the
    /// appliance makes one: superblock, empty volume table, first checkpoint.
    Format {
        path: PathBuf,
        /// Create (or size) the file: 1G, 512M, ...
        #[arg(long)]
        size: Option<String>,
        /// Segment size, a power of two from 1M to 256M.
        #[arg(long, default_value = "8M")]
        segment_size: String,
        /// Format even if the file already holds a pool (destroys it).
        #[arg(long)]
        force: bool,
        /// The pool's name (the appliance names its volumes POOL/VOLUME).
        #[arg(long, default_value = unblend::serve::DEFAULT_POOL_NAME)]
        name: String,
    },
    /// Print the pool's layout, volume table, checkpoint slots and what recovery makes of it
    /// (writes nothing).
    Inspect { path: PathBuf },
    /// Verify the superblock, both checkpoint slots, recovery and every segment's record
    /// chain; exits 1 on a problem. Writes nothing without --repair.
    Check {
        path: PathBuf,
        /// If the pool recovers although a checkpoint slot is damaged, write two fresh
        /// checkpoints so that both slots are valid again.
        #[arg(long)]
        repair: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Boot the appliance and run until SIGINT/SIGTERM.
    Serve {
        /// SPDK-format JSON config to apply at boot; without it, an embedded default.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Cores to run reactors on: a hex mask (0x3) or a list (0,1 or 0-3).
        #[arg(short = 'm', long = "cpumask")]
        cpumask: Option<String>,
        /// busy: poll forever; adaptive: sleep when idle.
        #[arg(long, default_value = "adaptive")]
        idle: IdlePolicy,
        /// JSON-RPC Unix socket.
        #[arg(short = 'r', long = "rpc-socket", default_value = unblend::rpc::DEFAULT_SOCKET)]
        rpc_socket: PathBuf,
        /// Start with only startup RPC methods live, until framework_start_init.
        #[arg(long)]
        wait_for_rpc: bool,
        /// Where the embedded default (no --config) keeps its pool file.
        #[arg(short = 'd', long = "data-dir", default_value = unblend::serve::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Directory for vhost-user sockets (default: the data directory).
        #[arg(short = 'S', long = "socket-dir")]
        socket_dir: Option<PathBuf>,
    },
    /// Offline pool tools (run with the appliance stopped).
    Pool {
        #[command(subcommand)]
        action: PoolAction,
    },
    /// Call a JSON-RPC method on a running appliance.
    Rpc {
        /// JSON-RPC Unix socket.
        #[arg(short = 's', long = "socket", default_value = unblend::rpc::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Params as one JSON object.
        #[arg(short = 'j', long = "json")]
        json: Option<String>,
        /// Seconds to wait for the answer.
        #[arg(short = 't', long = "timeout", default_value_t = 60)]
        timeout: u64,
        method: String,
        /// Params as key=value (a value that parses as JSON is taken as JSON, else a string).
        args: Vec<String>,
    },
    /// Run the bdevperf-style benchmark.
    Bench {
        /// null:size=1G[,bs=4096][,zero=0] | malloc:size=… | uring:path=…[,size=…][,bs=…][,sqpoll=1],
        /// or the name of a bdev in --config.
        #[arg(long)]
        bdev: String,
        /// SPDK-format JSON config that creates the bdev named by --bdev.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Queue depth per core.
        #[arg(short = 'q', default_value_t = 128)]
        queue_depth: u32,
        /// I/O size (4096, 4k, 128K, ...).
        #[arg(short = 'o', default_value = "4096")]
        io_size: String,
        /// randread, randwrite, read, write, rw, randrw, verify, crashwrite.
        #[arg(short = 'w', default_value = "randread")]
        workload: Workload,
        /// Read percentage for rw and randrw.
        #[arg(short = 'M', default_value_t = 50)]
        read_percent: u8,
        /// Seconds to run.
        #[arg(short = 't', default_value_t = 10)]
        seconds: u64,
        /// Cores to run on (hex mask or list); default: the first available core.
        #[arg(short = 'm', long = "cpumask")]
        cpumask: Option<String>,
        #[arg(long, default_value = "busy")]
        idle: IdlePolicy,
        /// Seed for random offsets and the verify pattern (default: a fresh one per run, so
        /// that verify cannot pass on data left by an earlier run; printed in the report).
        #[arg(long)]
        seed: Option<u64>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Skew random offsets: SPACE:IOS sends IOS percent of I/Os to the first SPACE percent
        /// of the range (20:80 is "80% of writes to 20% of blocks").
        #[arg(long)]
        hot: Option<String>,
        /// The crash workload's journal of acknowledged writes (with -w crashwrite).
        #[arg(long)]
        journal: Option<PathBuf>,
        /// I/Os each job starts a second at most (up to 1000000), as fio's rate_iops; not with
        /// verify or crashwrite, and not in an lsv prefill (default: no limit).
        #[arg(long, default_value_t = 0)]
        rate_iops: u64,
    },
}

/// `--hot SPACE:IOS`, both percentages in 1..=99 and 1..=100.
fn parse_hot(s: &str) -> Result<(u8, u8), String> {
    let bad = || format!("--hot {s:?}: expected SPACE:IOS percentages, such as 20:80");
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    let a: u8 = a.parse().map_err(|_| bad())?;
    let b: u8 = b.parse().map_err(|_| bad())?;
    if !(1..=99).contains(&a) || !(1..=100).contains(&b) {
        return Err(bad());
    }
    Ok((a, b))
}

fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("unblend: error: {msg}");
    ExitCode::from(2)
}

fn cpumask_or(text: Option<&str>, default_all: bool) -> Result<CpuMask, String> {
    let avail = available_cores();
    if avail.is_empty() {
        return Err("this process may run on no core".into());
    }
    match text {
        Some(t) => CpuMask::parse(t, &avail).map_err(|e| e.to_string()),
        None if default_all => {
            let list: Vec<String> = avail.iter().map(|c| c.to_string()).collect();
            CpuMask::parse(&list.join(","), &avail).map_err(|e| e.to_string())
        }
        None => Ok(CpuMask::single(avail[0])),
    }
}

fn main() -> ExitCode {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("UNBLEND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, reload) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour only on a terminal: logs in files stay greppable.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    let set_log_level: unblend::rpc::SetLogLevel = Box::new(move |level: &str| {
        reload
            .modify(|f| *f = tracing_subscriber::EnvFilter::new(level))
            .map_err(|e| e.to_string())
    });
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            cpumask,
            idle,
            rpc_socket,
            wait_for_rpc,
            data_dir,
            socket_dir,
        } => {
            let cpumask = match cpumask_or(cpumask.as_deref(), true) {
                Ok(m) => m,
                Err(e) => return usage_error(e),
            };
            match serve::run(ServeOptions {
                config,
                cpumask,
                idle,
                rpc_socket,
                wait_for_rpc,
                set_log_level,
                socket_dir: socket_dir.unwrap_or_else(|| data_dir.clone()),
                data_dir,
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => usage_error(e),
            }
        }
        Command::Pool { action } => pool_command(action),
        Command::Rpc {
            socket,
            json,
            timeout,
            method,
            args,
        } => rpc_command(&socket, json, timeout, &method, &args),
        Command::Bench {
            bdev,
            config,
            queue_depth,
            io_size,
            workload,
            read_percent,
            seconds,
            cpumask,
            idle,
            seed,
            json,
            hot,
            journal,
            rate_iops,
        } => {
            let hot = match hot.as_deref().map(parse_hot).transpose() {
                Ok(h) => h,
                Err(e) => return usage_error(e),
            };
            let cpumask = match cpumask_or(cpumask.as_deref(), false) {
                Ok(m) => m,
                Err(e) => return usage_error(e),
            };
            let io_bytes = match parse_size(&io_size) {
                Ok(b) => b,
                Err(e) => return usage_error(e),
            };
            let source = match config {
                Some(config) => BdevSource::FromConfig { config, name: bdev },
                None => BdevSource::Spec(bdev),
            };
            let opts = BenchOptions {
                bdev: source,
                queue_depth,
                io_bytes,
                cpumask,
                seconds,
                workload,
                read_percent,
                idle,
                seed: seed.unwrap_or_else(unblend::bench::fresh_seed),
                progress: !json,
                hot,
                journal,
                rate_iops,
            };
            match bench::run(&opts) {
                Ok(report) => {
                    if json {
                        println!("{}", report.to_json());
                    } else {
                        print!("{}", report.to_text());
                    }
                    if let Some(f) = report.failure() {
                        eprintln!("unblend: error: {f}");
                        return ExitCode::from(1);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("unblend: error: {e}");
                    ExitCode::from(e.exit_code() as u8)
                }
            }
        }
    }
}

/// `unblend rpc`: one call, the result pretty-printed, a JSON-RPC error shown plainly.
fn rpc_command(
    socket: &std::path::Path,
    json: Option<String>,
    timeout: u64,
    method: &str,
    args: &[String],
) -> ExitCode {
    use unblend::rpc::client::{ClientError, RpcClient};
    let mut params = match json {
        Some(text) => match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            Ok(_) => return usage_error("-j takes a JSON object"),
            Err(e) => return usage_error(format!("-j is not valid JSON: {e}")),
        },
        None => serde_json::json!({}),
    };
    for arg in args {
        let Some((k, v)) = arg.split_once('=') else {
            return usage_error(format!("argument {arg:?} is not key=value"));
        };
        let value = serde_json::from_str(v).unwrap_or_else(|_| serde_json::json!(v));
        params[k] = value;
    }
    let params = (params.as_object().is_some_and(|o| !o.is_empty())).then_some(params);
    let result = RpcClient::connect(socket, std::time::Duration::from_secs(timeout))
        .and_then(|mut c| c.call(method, params));
    match result {
        Ok(v) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
            );
            ExitCode::SUCCESS
        }
        Err(ClientError::Rpc { code, message }) => {
            eprintln!("unblend: {method} failed: JSON-RPC error {code}: {message}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("unblend: error: {e}");
            ExitCode::from(1)
        }
    }
}

fn pool_command(action: PoolAction) -> ExitCode {
    use unblend::lsv::tools;
    match action {
        PoolAction::Format {
            path,
            size,
            segment_size,
            force,
            name,
        } => {
            let size = match size.as_deref().map(parse_size).transpose() {
                Ok(s) => s,
                Err(e) => return usage_error(e),
            };
            let segment = match parse_size(&segment_size) {
                Ok(s) => s,
                Err(e) => return usage_error(e),
            };
            match tools::format(&path, size, segment, force, &name) {
                Ok(sb) => {
                    println!(
                        "formatted {}: pool {name}, {} segments of {} bytes, uuid {}",
                        path.display(),
                        sb.segment_count,
                        sb.segment_bytes,
                        sb.uuid
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => usage_error(e),
            }
        }
        PoolAction::Inspect { path } => match tools::inspect(&path) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => usage_error(e),
        },
        PoolAction::Check { path, repair } => match tools::check(&path, repair) {
            Ok(report) => {
                for p in &report.problems {
                    println!("{p}");
                }
                for r in &report.repaired {
                    println!("{r}");
                }
                if report.remaining.is_empty() {
                    println!("{}: consistent", path.display());
                    ExitCode::SUCCESS
                } else {
                    eprintln!(
                        "unblend: error: {} problem(s) found",
                        report.remaining.len()
                    );
                    ExitCode::from(1)
                }
            }
            Err(e) => usage_error(e),
        },
    }
}
