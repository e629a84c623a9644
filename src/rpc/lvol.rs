//! lvol methods, with SPDK's names: a pool is an lvstore and a volume is an lvol.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::methods::RpcContext;
use super::pool_jobs::{pool_job_result, spawn_pool_job, JobKind, NotStarted, PoolJob, VolumeJob};
use super::protocol::{params, RpcError};
use crate::bdev::BdevError;
use crate::lsv::extent_table::{ExtentTable, MAX_VOLUME_BLOCKS};
use crate::lsv::pool::{LsvPool, PoolError, VolumeMeta};
use crate::lsv::pools::Pools;
use crate::lsv::volume::{volume_bdev_name, LsvVolume};

fn pool_err(e: PoolError) -> RpcError {
    let errno = match e {
        PoolError::VolumeExists(_) => libc::EEXIST,
        PoolError::NoSuchVolume(_) => libc::ENODEV,
        PoolError::BadName(_)
        | PoolError::Format(_)
        | PoolError::BlockSize(_)
        | PoolError::BadSize(_) => libc::EINVAL,
        PoolError::TooManyVolumes => libc::ENOSPC,
        PoolError::Busy(_) | PoolError::JobsAhead { .. } => libc::EBUSY,
        _ => libc::EIO,
    };
    RpcError::new(-errno, e.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateLvstore {
    bdev_name: String,
    lvs_name: String,
    /// The segment size (SPDK's cluster size), bytes.
    #[serde(default)]
    cluster_sz: Option<u64>,
    #[serde(default)]
    clear_method: Option<String>,
    #[serde(default)]
    num_md_pages_per_cluster_ratio: Option<u32>,
    #[serde(default)]
    md_page_size: Option<u32>,
}

pub fn bdev_lvol_create_lvstore(
    ctx: &mut RpcContext,
    p: Option<&Value>,
) -> Result<Value, RpcError> {
    let p: CreateLvstore = params(p)?;
    let _ = (
        &p.clear_method,
        p.num_md_pages_per_cluster_ratio,
        p.md_page_size,
    );
    let base = ctx
        .registry
        .get(&p.bdev_name)
        .ok_or(BdevError::NotFound(p.bdev_name.clone()))?;
    if ctx.pools.name_taken(&p.lvs_name) {
        return Err(RpcError::new(
            -libc::EEXIST,
            format!("lvstore {:?} already exists", p.lvs_name),
        ));
    }
    if ctx
        .pools
        .list()
        .iter()
        .any(|pl| pl.base_name() == p.bdev_name)
    {
        return Err(RpcError::new(
            -libc::EEXIST,
            format!("bdev {:?} already holds an lvstore", p.bdev_name),
        ));
    }
    // Formatting writes the bdev: only one that nothing else holds (the claim fails) or
    // exports, claimed first so nothing else takes it while it is written.
    ctx.pools.claim_for_format(&p.bdev_name, &p.lvs_name)?;
    if let Some(ctrlr) = ctx.vhost.controller_of(&p.bdev_name) {
        ctx.pools.release_unformatted(&p.bdev_name, &p.lvs_name);
        return Err(BdevError::Claimed {
            bdev: p.bdev_name,
            by: format!("vhost controller {ctrlr}"),
        }
        .into());
    }
    let seg = p
        .cluster_sz
        .unwrap_or(crate::lsv::format::DEFAULT_SEGMENT_BYTES);
    // The format writes a block per segment and journal slot (a 256 GiB pool's took 0.5 s
    // here): on a thread of its own, not on reactor 0, which goes on polling I/O and serving
    // other clients; the answer comes once the pool is loaded.
    let name = p.lvs_name.clone();
    let format = move || LsvPool::create(&name, base, seg);
    let done_rx = match spawn_pool_job(JobKind::Pool, "lvstore-format", &ctx.reactors, format) {
        Ok(rx) => rx,
        Err(e) => {
            ctx.pools.release_unformatted(&p.bdev_name, &p.lvs_name);
            let errno = match e {
                NotStarted::Busy(_) => libc::EBUSY,
                NotStarted::Thread(_) => libc::EAGAIN,
            };
            return Err(RpcError::new(-errno, e.to_string()));
        }
    };
    let pools = ctx.pools.clone();
    let (bdev_name, lvs_name) = (p.bdev_name, p.lvs_name);
    ctx.deferred = Some(Box::new(move || {
        let formatted = pool_job_result(&done_rx)?;
        let loaded = formatted.and_then(|pool| {
            let uuid = pool.sb.uuid.to_string();
            pools.insert(pool).map(|()| uuid)
        });
        Some(match loaded {
            Ok(uuid) => Ok(json!(uuid)),
            Err(e) => {
                pools.release_unformatted(&bdev_name, &lvs_name);
                Err(pool_err(e))
            }
        })
    }));
    Ok(Value::Null)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WhichLvstore {
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    lvs_name: Option<String>,
}

fn find_pool(pools: &Pools, w: &WhichLvstore) -> Result<Arc<LsvPool>, RpcError> {
    pools
        .list()
        .into_iter()
        .find(|p| {
            w.lvs_name.as_deref() == Some(p.name.as_str())
                || w.uuid.as_deref() == Some(p.sb.uuid.to_string().as_str())
        })
        .ok_or_else(|| RpcError::new(-libc::ENODEV, "no such lvstore"))
}

fn lvstore_json(p: &LsvPool) -> Value {
    json!({
        "uuid": p.sb.uuid.to_string(),
        "name": p.name,
        "base_bdev": p.base_name(),
        "total_data_clusters": p.sb.segment_count,
        "free_clusters": p.free_segments(),
        "block_size": p.sb.block_size,
        "cluster_size": p.sb.segment_bytes,
    })
}

pub fn bdev_lvol_get_lvstores(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    let w: WhichLvstore = params(p)?;
    if w.uuid.is_none() && w.lvs_name.is_none() {
        return Ok(Value::Array(
            ctx.pools.list().iter().map(|p| lvstore_json(p)).collect(),
        ));
    }
    let pool = find_pool(&ctx.pools, &w)?;
    Ok(json!([lvstore_json(&pool)]))
}

pub fn bdev_lvol_delete_lvstore(
    ctx: &mut RpcContext,
    p: Option<&Value>,
) -> Result<Value, RpcError> {
    let w: WhichLvstore = params(p)?;
    let pool = find_pool(&ctx.pools, &w)?;
    // Its lvols go with it, as SPDK's do; but not one that something holds (an lvstore
    // nested on it, or another delete of it running). Its lvols are its volumes' bdevs
    // (`pool/volume`, with the volume's uuid), not just any bdev of a name like theirs.
    let lvols: Vec<String> = pool
        .volumes()
        .iter()
        .map(|v| volume_bdev_name(&pool.name, &v.name))
        .filter(|name| is_volume_bdev(ctx, &pool, name))
        .collect();
    for lvol in &lvols {
        if let Some(by) = ctx.registry.claimed_by(lvol) {
            return Err(BdevError::Claimed {
                bdev: lvol.clone(),
                by,
            }
            .into());
        }
    }
    let Some(removed) = ctx.pools.remove_to_destroy(&pool.name) else {
        return Ok(json!(true));
    };
    // Its volumes' channels fail every request from now on (a guest sees its disk go, as
    // after `bdev_lvol_delete`), and their bdevs go.
    removed.retire_volumes();
    for lvol in &lvols {
        if let Err(e) = ctx.registry.remove(lvol) {
            tracing::warn!(
                "lvstore {} deleted, but not its lvol {lvol}: {e}",
                removed.name
            );
        }
    }
    // Destroyed as SPDK's is: a pool job waits until nothing of the pool writes its base
    // any more (its cleaner's next poll, or the end of a checkpoint it is writing; an lvol
    // create or resize under way; its records in flight), then erases the superblock and
    // lets the base go, so that the pool never loads again and the base can be deleted,
    // exported or formatted as soon as the client has the answer. Reactor 0 keeps polling
    // meanwhile. Past `DESTROY_WAIT` the RPC answers EBUSY and the job goes on; with no job
    // slot free until then, the base stays claimed (the pool is not erased) until restart.
    let (pools, reactors) = (ctx.pools.clone(), ctx.reactors.clone());
    let deadline = std::time::Instant::now() + crate::lsv::pools::DESTROY_WAIT;
    let mut erasing: Option<PoolJob<()>> = None;
    let not_erased = move |name: &str, why: String| {
        RpcError::new(
            -libc::EBUSY,
            format!(
                "lvstore {name:?} and its lvols are deleted, but its superblock is not erased \
                 yet: {why}"
            ),
        )
    };
    ctx.deferred = Some(Box::new(move || {
        let timed_out = std::time::Instant::now() >= deadline;
        if erasing.is_none() {
            let (job_pools, pool) = (pools.clone(), removed.clone());
            match spawn_pool_job(JobKind::Pool, "lvstore-erase", &reactors, move || {
                job_pools.erase_destroyed(&pool)
            }) {
                Ok(job) => erasing = Some(job),
                // Formats and loads take the slots: their turn ends within the wait.
                Err(NotStarted::Busy(_)) if !timed_out => return None,
                Err(e) => {
                    return Some(Err(not_erased(
                        &removed.name,
                        format!("{e}; its base stays claimed until the appliance restarts"),
                    )))
                }
            }
        }
        let job = erasing.as_ref().expect("started above");
        match pool_job_result(job) {
            Some(Ok(())) => Some(Ok(json!(true))),
            Some(Err(e)) => Some(Err(RpcError::new(
                -libc::EIO,
                format!(
                    "lvstore {:?} and its lvols are deleted, but its superblock was not \
                     erased ({e}): it loads again if its base is examined",
                    removed.name
                ),
            ))),
            None if timed_out => Some(Err(not_erased(
                &removed.name,
                "its last writes are still under way; the superblock is erased and the base \
                 let go once they are done"
                    .into(),
            ))),
            None => None,
        }
    }));
    Ok(json!(true))
}

/// Whether bdev `name` is the bdev of a volume of `pool` (`pool/volume`, with the volume's
/// uuid), not another of a name like it.
fn is_volume_bdev(ctx: &RpcContext, pool: &LsvPool, name: &str) -> bool {
    let volume = name
        .strip_prefix(pool.name.as_str())
        .and_then(|rest| rest.strip_prefix('/'));
    volume
        .and_then(|v| pool.volume(v))
        .is_some_and(|(meta, _)| {
            ctx.registry
                .get(name)
                .is_some_and(|e| e.bdev.uuid() == meta.uuid)
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateLvol {
    lvol_name: String,
    size_in_mib: u64,
    #[serde(default)]
    thin_provision: bool,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    lvs_name: Option<String>,
    #[serde(default)]
    clear_method: Option<String>,
}

pub fn bdev_lvol_create(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    let p: CreateLvol = params(p)?;
    let _ = (p.thin_provision, &p.clear_method); // volumes are always thin
    let pool = find_pool(
        &ctx.pools,
        &WhichLvstore {
            uuid: p.uuid.clone(),
            lvs_name: p.lvs_name.clone(),
        },
    )?;
    let blocks = volume_blocks(p.size_in_mib)?;
    // Its bdev's name must be free (checked again when it is registered, after the job).
    let bdev_name = volume_bdev_name(&pool.name, &p.lvol_name);
    if ctx.registry.get(&bdev_name).is_some() {
        return Err(RpcError::new(
            -libc::EEXIST,
            format!("a bdev named {bdev_name:?} exists already"),
        ));
    }
    // The volume table's write runs on a pool job, as a delete's; the bdev is registered
    // here once it is done.
    let job_pool = pool.clone();
    let create = {
        let op = pool.begin_volume_op();
        let pool = pool.clone();
        move || {
            let _op = op;
            pool.create_volume(&p.lvol_name, blocks)
        }
    };
    let (registry, pools) = (ctx.registry.clone(), ctx.pools.clone());
    let finish = move |created: Result<(VolumeMeta, Arc<ExtentTable>), PoolError>| {
        let (meta, table) = created.map_err(pool_err)?;
        // Its lvstore deleted meanwhile: no bdev for a volume of a destroyed pool.
        if !pools
            .get(&pool.name)
            .is_some_and(|p| Arc::ptr_eq(&p, &pool))
        {
            return Err(RpcError::new(
                -libc::ENODEV,
                format!("lvstore {:?} was deleted meanwhile", pool.name),
            ));
        }
        let name = meta.name.clone();
        let vol = LsvVolume::new(pool.clone(), meta, table);
        match registry.register(Arc::new(vol)) {
            Ok(entry) => Ok(json!(entry.bdev.name())),
            // Only if a bdev of its name was made while the job ran (checked before it):
            // undone here, on reactor 0, which may wait for another volume operation of
            // this pool. Rare enough not to need a job of its own.
            Err(e) => {
                let _ = pool.delete_volume(&name);
                Err(e.into())
            }
        }
    };
    answer_when_done(
        ctx,
        VolumeJob::new("lvol-create", &job_pool, create),
        finish,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ByName {
    name: String,
}

pub fn bdev_lvol_delete(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    let p: ByName = params(p)?;
    let (lvs, lvol) = p.name.split_once('/').ok_or_else(|| {
        RpcError::new(
            -libc::ENODEV,
            format!("no lvol named {:?} (use lvs/lvol)", p.name),
        )
    })?;
    let pool = ctx
        .pools
        .get(lvs)
        .ok_or_else(|| RpcError::new(-libc::ENODEV, format!("no lvstore {lvs:?}")))?;
    // The volume's own bdev: not another of a name like its.
    if !is_volume_bdev(ctx, &pool, &p.name) {
        return Err(RpcError::new(
            -libc::ENODEV,
            format!("no lvol named {:?}", p.name),
        ));
    }
    // An lvstore on this lvol holds it: the lvol goes only after that lvstore.
    if let Some(by) = ctx.registry.claimed_by(&p.name) {
        return Err(BdevError::Claimed { bdev: p.name, by }.into());
    }
    // The volume table's write, and the walk of the volume's whole map that takes its blocks
    // off the segments' live counts (about 50 ms for 12 GiB written, so seconds for a TiB),
    // run on a pool job: reactor 0 goes on polling I/O and serving other clients, and the
    // answer comes once the volume is gone. Meanwhile the bdev is claimed in the delete's
    // name, so that no front end exports it and no other delete takes it; its I/O goes on
    // until the volume is retired, as after SPDK's hot remove.
    let holder = format!("lvol delete of {}", p.name);
    ctx.registry.claim(&p.name, &holder)?;
    let (registry, name, volume) = (ctx.registry.clone(), p.name.clone(), lvol.to_string());
    let finish = move |deleted: Result<(), PoolError>| {
        registry.release(&name, &holder);
        deleted.map_err(pool_err)?;
        let _ = registry.remove(&name);
        Ok(json!(true))
    };
    let op = pool.begin_volume_op();
    let job_pool = pool.clone();
    let delete = move || {
        let _op = op;
        pool.delete_volume(&volume)
    };
    answer_when_done(
        ctx,
        VolumeJob::new("lvol-delete", &job_pool, delete),
        finish,
    )
}

/// Answers, deferred, with `finish(result)` of `job` once it has run (on a thread of its
/// own, as soon as a slot is free).
fn answer_when_done<T: Send + 'static>(
    ctx: &mut RpcContext,
    mut job: VolumeJob<T>,
    finish: impl FnOnce(Result<T, PoolError>) -> Result<Value, RpcError> + Send + 'static,
) -> Result<Value, RpcError> {
    let reactors = ctx.reactors.clone();
    let mut finish = Some(finish);
    ctx.deferred = Some(Box::new(move || {
        let r = job.poll(&reactors)?;
        Some(finish.take().expect("answered once")(r))
    }));
    Ok(Value::Null)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeLvol {
    name: String,
    size_in_mib: u64,
}

/// A volume's size in 4 KiB blocks from `size_in_mib`, checked (1 MiB to 4 PiB).
fn volume_blocks(size_in_mib: u64) -> Result<u64, RpcError> {
    size_in_mib
        .checked_mul(256)
        .filter(|&b| b > 0 && b <= MAX_VOLUME_BLOCKS)
        .ok_or_else(|| RpcError::invalid_params("size_in_mib: must be between 1 and 4 PiB"))
}

/// `bdev_lvol_resize`: `name` is `lvs/lvol` (or the lvol's uuid), `size_in_mib` the new size.
pub fn bdev_lvol_resize(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    let p: ResizeLvol = params(p)?;
    let blocks = volume_blocks(p.size_in_mib)?;
    let by_uuid = ctx.pools.list().into_iter().find_map(|pool| {
        pool.volumes()
            .into_iter()
            .find(|v| v.uuid.to_string() == p.name)
            .map(|v| (pool.clone(), v.name))
    });
    let (pool, lvol) = match by_uuid {
        Some(found) => found,
        None => {
            let (lvs, lvol) = p.name.split_once('/').ok_or_else(|| {
                RpcError::new(
                    -libc::ENODEV,
                    format!("no lvol named {:?} (use lvs/lvol or its uuid)", p.name),
                )
            })?;
            let pool = ctx
                .pools
                .get(lvs)
                .ok_or_else(|| RpcError::new(-libc::ENODEV, format!("no lvstore {lvs:?}")))?;
            (pool, lvol.to_string())
        }
    };
    // The volume the request named, even if another of the same name takes its place
    // meanwhile (the request may have named it by uuid).
    let id = Some(
        pool.volume(&lvol)
            .ok_or_else(|| pool_err(PoolError::NoSuchVolume(lvol.clone())))?
            .0
            .id,
    );
    // The resize writes the volume table, and a shrink walks the map past the new end: on a
    // pool job, as a delete. A grow that must first retire another grow's fence would write
    // two checkpoints too: the cleaner writes them instead, and the resize waits for them
    // (at most `GROW_WAIT`; EBUSY past it).
    let resize = {
        let op = pool.begin_volume_op();
        let (pool, lvol) = (pool.clone(), lvol.clone());
        move || {
            let _op = op;
            pool.resize_volume_with_id(&lvol, id, blocks)
        }
    };
    let finish = |r: Result<VolumeMeta, PoolError>| r.map(|_| json!(true)).map_err(pool_err);
    let mut resize = VolumeJob::new("lvol-resize", &pool, resize);
    if !pool.grow_waits_for_checkpoints(&lvol, blocks) || !pool.has_cleaner() {
        return answer_when_done(ctx, resize, finish);
    }
    pool.request_checkpoint();
    let deadline = std::time::Instant::now() + GROW_WAIT;
    let reactors = ctx.reactors.clone();
    let mut resizing = false;
    ctx.deferred = Some(Box::new(move || {
        if resizing {
            return Some(finish(resize.poll(&reactors)?));
        }
        // Replaced, or its lvstore deleted (whose cleaner writes no more checkpoints).
        if pool.volume(&lvol).map(|(m, _)| m.id) != id || pool.is_closing() {
            pool.cancel_checkpoint_request();
            return Some(Err(pool_err(PoolError::NoSuchVolume(lvol.clone()))));
        }
        if pool.grow_waits_for_checkpoints(&lvol, blocks) {
            if std::time::Instant::now() < deadline {
                // Two checkpoints are needed: ask again once the first has begun.
                pool.request_checkpoint();
                return None;
            }
            pool.cancel_checkpoint_request();
            return Some(Err(pool_err(PoolError::Busy(lvol.clone()))));
        }
        pool.cancel_checkpoint_request();
        resizing = true;
        resize.poll(&reactors).map(finish)
    }));
    Ok(Value::Null)
}

/// How long `bdev_lvol_resize` waits for the cleaner's checkpoints that retire another
/// grow's fence.
const GROW_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetLvols {
    #[serde(default)]
    lvs_uuid: Option<String>,
    #[serde(default)]
    lvs_name: Option<String>,
}

pub fn bdev_lvol_get_lvols(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    let p: GetLvols = params(p)?;
    let mut out = Vec::new();
    for pool in ctx.pools.list() {
        let uuid = pool.sb.uuid.to_string();
        if p.lvs_name.as_deref().is_some_and(|n| n != pool.name)
            || p.lvs_uuid.as_deref().is_some_and(|u| u != uuid)
        {
            continue;
        }
        for v in pool.volumes() {
            out.push(json!({
                "alias": volume_bdev_name(&pool.name, &v.name),
                "uuid": v.uuid.to_string(),
                "name": v.name,
                "is_thin_provisioned": true,
                "is_snapshot": false,
                "is_clone": false,
                "is_esnap_clone": false,
                "is_degraded": false,
                "num_allocated_clusters": 0,
                "lvs": { "name": pool.name, "uuid": uuid },
            }));
        }
    }
    Ok(Value::Array(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Stats {
    #[serde(default)]
    lvs_name: Option<String>,
}

/// Per pool: segments, live bytes, bytes written by users and by the log (write
/// amplification since the pool was opened), and the extent tables' memory per mapped block.
pub fn unblend_lsv_get_stats(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    let p: Stats = params(p)?;
    Ok(Value::Array(
        ctx.pools
            .list()
            .iter()
            .filter(|pool| p.lvs_name.as_deref().is_none_or(|n| n == pool.name))
            .map(|pool| pool.stats())
            .collect(),
    ))
}
