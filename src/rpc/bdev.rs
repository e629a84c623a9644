//! Bdev methods: create and delete per module, list, iostat.

use serde::Deserialize;
use serde_json::{json, Value};

use super::methods::RpcContext;
use super::protocol::{params, RpcError};
use serde_json::value::RawValue;

use crate::bdev::{BdevError, BdevInfo, IoType};
use crate::config;
use std::sync::Arc;

use super::pool_jobs::{
    job_slot_free, pool_job_result, spawn_pool_job, JobKind, NotStarted, PoolJob,
};
use crate::lsv::pool::{LsvPool, PoolError};
use crate::lsv::pools::{Examined, Peeking};
use std::time::{Duration, Instant};
use uuid::Uuid;

fn create(ctx: &mut RpcContext, method: &str, p: Option<&Value>) -> Result<Value, RpcError> {
    let empty = Value::Object(Default::default());
    let p = match p {
        None | Some(Value::Null) => &empty,
        Some(p) => p,
    };
    let name = config::create_bdev(&ctx.registry, method, p)?
        .ok_or_else(|| RpcError::internal(format!("{method} created nothing")))?;
    tracing::info!(bdev = %name, "{method}");
    // Examine, as SPDK does: a bdev that holds a pool brings its volumes back. Its reads
    // (the superblock and volume table, then the recovery) run on threads of their own
    // (`pool_jobs`), not on reactor 0, which would wait out a slow or hung device; the answer
    // comes once the pool is loaded, or once none is found or it fails to load (the bdev is
    // made, and the log says why); only first reads that find no job slot in time leave the
    // bdev unmade (below). The bdev is claimed from now on, so nothing formats or takes it
    // meanwhile.
    let Some(peeking) = ctx
        .registry
        .get(&name)
        .and_then(|e| ctx.pools.begin_peek(&e))
    else {
        return Ok(json!(name));
    };
    let (pools, reactors, registry, vhost) = (
        ctx.pools.clone(),
        ctx.reactors.clone(),
        ctx.registry.clone(),
        ctx.vhost.clone(),
    );
    let mut step = Examine::Peek(peeking, None);
    // The first reads wait for a slot at most `EXAMINE_WAIT` from the first try: examines
    // ahead of them on hung devices may never end. Then the bdev is not made after all (it
    // must not stay claimed for ever, nor go unexamined: it may hold a pool that a format
    // would overwrite). A pool found waits for its load as long as it takes, claimed.
    let mut waiting_since = None;
    ctx.deferred = Some(Box::new(move || loop {
        let not_loaded = |e: PoolError| {
            tracing::warn!(bdev = %name, "examine: no pool loaded from it: {e}");
            Some(Ok(json!(name)))
        };
        match &mut step {
            Examine::Peek(peeking, running) => {
                let job = || {
                    let peeking = peeking.clone();
                    move || peeking.peek()
                };
                let wait = Some(EXAMINE_WAIT);
                let found = match run_job(
                    running,
                    JobKind::Examine,
                    &mut waiting_since,
                    wait,
                    &reactors,
                    job,
                )? {
                    Ok(found) => Ok(found),
                    Err(JobError::NoSlot(why)) => {
                        // Its claim goes (nothing of the examine ran).
                        let _ = pools.peeked(peeking.clone(), Ok(None));
                        // Exported meanwhile (read-only, which the claim allows): it stays,
                        // unexamined; no lvstore is formatted on a bdev a controller exports.
                        if let Some(ctrlr) = vhost.controller_of(&name) {
                            tracing::warn!(bdev = %name, controller = %ctrlr, "not examined: {why}");
                            return Some(Ok(json!(name)));
                        }
                        let _ = registry.remove(&name);
                        tracing::warn!(bdev = %name, "not made: it could not be examined: {why}");
                        return Some(Err(RpcError::new(
                            -libc::EBUSY,
                            format!("bdev {name:?} not made: it could not be examined: {why}"),
                        )));
                    }
                    Err(JobError::Failed(e)) => Err(e),
                };
                let peeking = peeking.clone();
                // Here, on reactor 0, where lvstores are formatted: no other takes the
                // pool's name between the check and the claim.
                match pools.peeked(peeking, found) {
                    Ok(Some(ex)) => step = Examine::Load(ex, None),
                    Ok(None) => return Some(Ok(json!(name))),
                    Err(e) => return not_loaded(e),
                }
            }
            Examine::Load(ex, running) => {
                let job = || {
                    let ex = ex.clone();
                    move || ex.load()
                };
                let loaded = run_job(
                    running,
                    JobKind::Pool,
                    &mut waiting_since,
                    None,
                    &reactors,
                    job,
                )?
                .map_err(|e| match e {
                    JobError::Failed(e) | JobError::NoSlot(e) => e,
                });
                return match pools.examine_finish(ex.clone(), loaded) {
                    Ok(_) => Some(Ok(json!(name))),
                    Err(e) => not_loaded(e),
                };
            }
        }
    }));
    Ok(Value::Null)
}

/// How long a new bdev's first reads wait for a job slot before its create gives up (and
/// the bdev is not made).
const EXAMINE_WAIT: Duration = Duration::from_secs(30);

/// Where a bdev create's examine stands: its first reads, then the pool's load; each waits
/// for a job slot (None) and then runs.
enum Examine {
    Peek(Peeking, Option<PoolJob<Option<(Uuid, String)>>>),
    Load(Examined, Option<PoolJob<Arc<LsvPool>>>),
}

/// Why `run_job` gave no result.
enum JobError {
    /// The job ran and failed (or panicked).
    Failed(PoolError),
    /// It found no slot within its wait.
    NoSlot(PoolError),
}

/// Starts the job `make_job` makes as a pool job of `kind` if it has not started (`running`
/// is None) and a slot is free; its result once it is done, or `NoSlot` once it has waited
/// `wait` for a slot (from `waiting_since`, set on its first try; None: no limit). With no
/// thread to be had, it runs here, on reactor 0 (a panic there is an error too, as on a job
/// thread).
fn run_job<T: Send + 'static, J: FnOnce() -> Result<T, PoolError> + Send + 'static>(
    running: &mut Option<PoolJob<T>>,
    kind: JobKind,
    waiting_since: &mut Option<Instant>,
    wait: Option<Duration>,
    reactors: &crate::reactor::Reactors,
    make_job: impl Fn() -> J,
) -> Option<Result<T, JobError>> {
    if running.is_none() {
        let name = match kind {
            JobKind::Examine => "lvstore-examine",
            _ => "lvstore-load",
        };
        if !job_slot_free(kind) {
            let since = waiting_since.get_or_insert_with(Instant::now);
            if wait.is_none_or(|w| since.elapsed() < w) {
                return None; // its turn comes when a running job ends
            }
            return Some(Err(JobError::NoSlot(PoolError::Base(format!(
                "no job slot for it in {} s: {}",
                wait.unwrap_or_default().as_secs(),
                NotStarted::Busy(kind)
            )))));
        }
        *waiting_since = None;
        match spawn_pool_job(kind, name, reactors, make_job()) {
            Ok(rx) => *running = Some(rx),
            Err(NotStarted::Busy(_)) => return None,
            Err(NotStarted::Thread(e)) => {
                tracing::warn!("{name} on reactor 0: no thread: {e}");
                let job = make_job();
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).unwrap_or_else(
                    |_| Err(PoolError::Base("the job stopped unexpectedly".into())),
                );
                return Some(r.map_err(JobError::Failed));
            }
        }
    }
    pool_job_result(running.as_ref().expect("started above")).map(|r| r.map_err(JobError::Failed))
}

pub fn bdev_malloc_create(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    create(ctx, "bdev_malloc_create", p)
}
pub fn bdev_null_create(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    create(ctx, "bdev_null_create", p)
}
pub fn bdev_uring_create(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    create(ctx, "bdev_uring_create", p)
}
pub fn bdev_aio_create(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    create(ctx, "bdev_aio_create", p)
}
pub fn bdev_delay_create(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    create(ctx, "bdev_delay_create", p)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ByName {
    name: String,
}

/// Deletes a bdev only if it belongs to the module named by the method (SPDK's behaviour).
fn delete(ctx: &mut RpcContext, p: Option<&Value>, product: &str) -> Result<Value, RpcError> {
    let p: ByName = params(p)?;
    match ctx.registry.get(&p.name) {
        Some(e) if e.bdev.product_name() == product => {
            ctx.registry.remove(&p.name)?;
            tracing::info!(bdev = %p.name, "deleted");
            Ok(json!(true))
        }
        _ => Err(BdevError::NotFound(p.name).into()),
    }
}

pub fn bdev_malloc_delete(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    delete(ctx, p, "Malloc disk")
}
pub fn bdev_null_delete(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    delete(ctx, p, "Null disk")
}
pub fn bdev_uring_delete(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    delete(ctx, p, "URING bdev")
}
pub fn bdev_aio_delete(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    delete(ctx, p, "AIO disk")
}
pub fn bdev_delay_delete(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    delete(ctx, p, "delay")
}

/// SPDK's options, checked for type and then ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct SetOptions {
    #[serde(default)]
    bdev_io_pool_size: Option<u64>,
    #[serde(default)]
    bdev_io_cache_size: Option<u64>,
    #[serde(default)]
    bdev_auto_examine: Option<bool>,
    #[serde(default)]
    iobuf_small_cache_size: Option<u64>,
    #[serde(default)]
    iobuf_large_cache_size: Option<u64>,
}

/// Accepted for SPDK configs; unblend sizes its pools per reactor and has nothing to set.
pub fn bdev_set_options(_: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    let _: SetOptions = params(p)?;
    Ok(json!(true))
}

/// Accepted for SPDK configs: nothing to wait for. A bdev create RPC answers once its
/// examine is done (a pool on the bdev loaded, or not), and a config's bdevs are examined
/// before the appliance serves.
pub fn bdev_wait_for_examine(_: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NoParams {}
    let _: NoParams = params(p)?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetBdevs {
    #[serde(default)]
    name: Option<String>,
    /// Milliseconds to wait for the bdev to appear; bdevs appear synchronously here.
    #[serde(default)]
    timeout: Option<u64>,
}

/// Serialised straight from `BdevInfo` structs: with hundreds of bdevs, building a `Value`
/// tree first costs more than everything else in the call.
pub fn bdev_get_bdevs(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Box<RawValue>, RpcError> {
    let p: GetBdevs = params(p)?;
    let _ = p.timeout;
    let entries = match p.name {
        Some(name) => vec![ctx.registry.get(&name).ok_or(BdevError::NotFound(name))?],
        None => ctx.registry.list(),
    };
    let infos: Vec<BdevInfo<'_>> = entries
        .iter()
        .map(|e| {
            BdevInfo::of(e.bdev.as_ref())
                .with_claim(ctx.registry.claimed_by(e.bdev.name()).is_some())
        })
        .collect();
    serde_json::value::to_raw_value(&infos).map_err(RpcError::internal)
}

/// Most distinct bdevs one `bdev_get_iostat` may name.
pub const MAX_IOSTAT_NAMES: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetIostat {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    names: Option<Vec<String>>,
    #[serde(default)]
    per_channel: bool,
    #[serde(default)]
    reset_mode: Option<String>,
}

pub fn bdev_get_iostat(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    let p: GetIostat = params(p)?;
    if p.per_channel {
        return Err(RpcError::invalid_params(
            "per_channel: per-channel statistics are not supported",
        ));
    }
    if let Some(mode) = &p.reset_mode {
        if mode != "none" {
            return Err(RpcError::invalid_params(format!(
                "reset_mode: {mode:?} is not supported (only \"none\")"
            )));
        }
    }
    let mut wanted: Vec<String> = p.names.unwrap_or_default();
    wanted.extend(p.name);
    wanted.sort();
    wanted.dedup();
    if wanted.len() > MAX_IOSTAT_NAMES {
        return Err(RpcError::invalid_params(format!(
            "names: more than {MAX_IOSTAT_NAMES} bdevs asked for"
        )));
    }
    let entries = if wanted.is_empty() {
        ctx.registry.list()
    } else {
        wanted
            .iter()
            .map(|n| ctx.registry.get(n).ok_or(BdevError::NotFound(n.clone())))
            .collect::<Result<Vec<_>, _>>()?
    };
    let bdevs: Vec<Value> = entries
        .iter()
        .map(|e| {
            let t = e.iostat.totals();
            let op = |t2: IoType| t.get(t2);
            let (r, w, u, f, z) = (
                op(IoType::Read),
                op(IoType::Write),
                op(IoType::Unmap),
                op(IoType::Flush),
                op(IoType::WriteZeroes),
            );
            json!({
                "name": e.bdev.name(),
                "bytes_read": r.bytes, "num_read_ops": r.ops,
                "bytes_written": w.bytes, "num_write_ops": w.ops,
                "bytes_unmapped": u.bytes, "num_unmap_ops": u.ops,
                "bytes_copied": 0, "num_copy_ops": 0,
                "num_flush_ops": f.ops, "num_write_zeroes_ops": z.ops,
                "read_latency_ticks": r.latency_sum_ns, "max_read_latency_ticks": r.latency_max_ns,
                "write_latency_ticks": w.latency_sum_ns, "max_write_latency_ticks": w.latency_max_ns,
                "unmap_latency_ticks": u.latency_sum_ns, "max_unmap_latency_ticks": u.latency_max_ns,
                "io_error": {
                    "read": r.errors, "write": w.errors, "unmap": u.errors,
                    "flush": f.errors, "write_zeroes": z.errors,
                },
            })
        })
        .collect();
    Ok(json!({
        "tick_rate": 1_000_000_000u64,
        "ticks": ctx.started.elapsed().as_nanos() as u64,
        "bdevs": bdevs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::ReactorSet;
    use std::cell::Cell;

    /// A new bdev's first reads, finding every examine slot taken (examines ahead of them on
    /// hung devices), give up once their wait is over, never having run; a job without a
    /// limit (a found pool's load) waits on; with a slot free, the job runs.
    #[test]
    fn an_examine_job_gives_up_when_no_slot_frees_in_time() {
        let set = ReactorSet::start_one_for_tests();
        let reactors = set.handle();
        let made = Cell::new(0);
        let make = || {
            made.set(made.get() + 1);
            || Ok(5u32)
        };
        let poll = |running: &mut Option<_>, since: &mut Option<_>, wait| {
            run_job(running, JobKind::Examine, since, wait, &reactors, make)
        };
        let held = super::super::pool_jobs::hold_every_slot(JobKind::Examine);
        let wait = Some(Duration::from_millis(50));
        let (mut running, mut since) = (None, None);
        let (mut unlimited, mut since_unlimited) = (None, None);
        assert!(poll(&mut running, &mut since, wait).is_none());
        assert!(poll(&mut unlimited, &mut since_unlimited, None).is_none());
        std::thread::sleep(Duration::from_millis(60));
        match poll(&mut running, &mut since, wait) {
            Some(Err(JobError::NoSlot(e))) => {
                assert!(e.to_string().contains("no job slot"), "{e}")
            }
            Some(Err(JobError::Failed(e))) => panic!("failed: {e}"),
            Some(Ok(_)) => panic!("it ran"),
            None => panic!("it still waits"),
        }
        assert!(
            poll(&mut unlimited, &mut since_unlimited, None).is_none(),
            "without a limit it waits on"
        );
        assert_eq!(made.get(), 0, "neither ran");
        // Control: with the slots free, the same job runs.
        drop(held);
        let (mut running, mut since) = (None, None);
        let got = loop {
            if let Some(r) = poll(&mut running, &mut since, wait) {
                break r;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(matches!(got, Ok(5)), "it ran");
        reactors.request_stop();
        set.join();
    }
}
