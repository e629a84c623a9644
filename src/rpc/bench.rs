//! `unblend_bench_*`: run the bdevperf-style benchmark inside a live appliance, on its own
//! reactors and bdevs, as SPDK's `bdevperf.py perform_tests` does.

use serde::Deserialize;
use serde_json::{json, Value};

use super::methods::RpcContext;
use super::protocol::{params, RpcError, INVALID_STATE};
use crate::bdev::BdevError;
use crate::bench::{self, BdevSource, BenchOptions, Workload};
use crate::reactor::CpuMask;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Start {
    bdev_name: String,
    #[serde(default = "default_qd")]
    queue_depth: u32,
    #[serde(default = "default_io_size")]
    io_size: u64,
    #[serde(default = "default_workload")]
    workload: String,
    #[serde(default = "default_seconds")]
    seconds: u64,
    #[serde(default = "default_read_percent")]
    read_percent: u8,
}

fn default_qd() -> u32 {
    32
}
fn default_io_size() -> u64 {
    4096
}
fn default_workload() -> String {
    "randread".into()
}
fn default_seconds() -> u64 {
    10
}
fn default_read_percent() -> u8 {
    50
}

pub fn unblend_bench_start(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    let p: Start = params(p)?;
    if let Some(b) = ctx.bench.as_mut() {
        if !b.poll() {
            return Err(RpcError::new(INVALID_STATE, "a bench is already running"));
        }
    }
    let workload: Workload = p
        .workload
        .parse()
        .map_err(|e: String| RpcError::invalid_params(format!("workload: {e}")))?;
    let entry = ctx
        .registry
        .get(&p.bdev_name)
        .ok_or(BdevError::NotFound(p.bdev_name.clone()))?;
    // A claimed bdev (a pool's base, a bdev being examined, a bdev another is layered on) is
    // its holder's to write, as SPDK's exclusive-write claims have it: only read from here.
    let reads_only = match workload {
        Workload::RandRead | Workload::Read => true,
        Workload::Rw | Workload::RandRw => p.read_percent >= 100,
        _ => false,
    };
    if !reads_only {
        if let Some(by) = ctx.registry.claimed_by(&p.bdev_name) {
            return Err(BdevError::Claimed {
                bdev: p.bdev_name,
                by,
            }
            .into());
        }
    }
    let all: Vec<usize> = (0..ctx.reactors.count()).collect();
    let cores: Vec<usize> = all.iter().map(|&i| ctx.reactors.core(i)).collect();
    let list = cores
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let opts = BenchOptions {
        bdev: BdevSource::Entry(entry.clone()),
        queue_depth: p.queue_depth,
        io_bytes: p.io_size,
        cpumask: CpuMask::parse(&format!("[{list}]"), &cores).map_err(RpcError::internal)?,
        seconds: p.seconds,
        workload,
        read_percent: p.read_percent,
        idle: ctx.reactors.idle_policy(),
        seed: bench::fresh_seed(),
        progress: false,
        hot: None,
        journal: None,
        rate_iops: 0,
    };
    let running = bench::start_jobs(&ctx.reactors, &all, &entry, &opts)
        .map_err(|e| RpcError::invalid_params(e.to_string()))?;
    ctx.bench = Some(running);
    ctx.last_bench_report = None;
    Ok(json!(true))
}

pub fn unblend_bench_results(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NoParams {}
    let _: NoParams = params(p)?;
    let Some(b) = ctx.bench.as_mut() else {
        return Ok(json!({ "running": false, "report": ctx.last_bench_report }));
    };
    if !b.poll() {
        return Ok(json!({
            "running": true,
            "elapsed_s": b.elapsed().as_secs_f64(),
            "ios_so_far": b.ios_so_far(),
            "report": Value::Null,
        }));
    }
    let report = match b.report() {
        Ok(r) => r.to_json(),
        Err(e) => json!({ "error": e.to_string() }),
    };
    ctx.bench = None;
    ctx.last_bench_report = Some(report.clone());
    Ok(json!({ "running": false, "report": report }))
}
