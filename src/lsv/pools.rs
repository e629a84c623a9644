//! The appliance's pools by name, and examine: a base bdev that holds a pool is opened (never
//! formatted again) and its volumes are registered as bdevs, as SPDK's lvol module does.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, RwLock};

use super::cleaner::{Cleaner, CleanerPoll};
use super::pool::{erase_superblock, peek_pool, LsvPool, PoolError};
use super::volume::LsvVolume;
use crate::bdev::{BdevEntry, BdevRegistry};
use crate::reactor::{PollStatus, PollerKind, Reactors};
use uuid::Uuid;

/// How often an idle cleaner poller runs (while it works, it runs every reactor pass).
pub const CLEANER_PERIOD_US: u64 = 10_000;
/// How long an unload (`Pools::remove`: the test method `unblend_test_unload_lvstore`)
/// holds its answer back for the pool's cleaner to stop (`Pools::is_unloading`): its next
/// poll, or the end of a checkpoint write. Past it, the RPC answers and the base stays
/// claimed until the cleaner stops.
pub const UNLOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a destroyed pool's erase waits for nothing of it to write its base any more
/// (`Pools::quiet`): a cleaner's checkpoint, an lvol's operation, records in flight, all
/// usually done within milliseconds; only a hung base takes this long.
const QUIET_LIMIT: std::time::Duration = std::time::Duration::from_secs(3600);
/// How often the erase looks.
const QUIET_POLL: std::time::Duration = std::time::Duration::from_millis(1);
/// How long `bdev_lvol_delete_lvstore` holds its answer back for the erase (`Pools::
/// erase_destroyed`). Past it the RPC answers EBUSY, and the erase goes on.
pub const DESTROY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

pub struct Pools {
    by_name: RwLock<BTreeMap<String, Arc<LsvPool>>>,
    reactors: OnceLock<Reactors>,
    /// The appliance's bdevs: each loaded pool claims its base there.
    registry: Arc<BdevRegistry>,
}

/// Called once a pool's cleaner has stopped (or never started): nothing of the pool's writes
/// the base any more. It may be called more than once.
pub type OnCleanerStopped = Arc<dyn Fn() + Send + Sync>;

/// Starts `pool`'s cleaner as a service poller on the last reactor (reactor 0 also serves
/// the RPC socket). Once the cleaner has stopped for a closed pool (its last checkpoint
/// write done, and dropped: its final flush and free marks written), or if it cannot start,
/// `pool.cleaner_stopped` is set and then `on_stopped` runs.
pub fn start_cleaner(
    pool: &Arc<LsvPool>,
    reactors: &Reactors,
    on_stopped: Option<OnCleanerStopped>,
) {
    let stopped = move |pool: &LsvPool, on_stopped: &Option<OnCleanerStopped>| {
        pool.cleaner_stopped.store(true, Ordering::SeqCst);
        if let Some(f) = on_stopped {
            f();
        }
    };
    let started = pool.clone();
    let on_send_failure = on_stopped.clone();
    let reactor = reactors.count() - 1;
    let sent = reactors.send(reactor, move |r| {
        let pool = started;
        let name = format!("lsv_cleaner:{}", pool.name);
        match Cleaner::new(pool.clone()) {
            Ok(cleaner) => {
                let mut slot = CleanerSlot {
                    cleaner: Some(cleaner),
                    pool: pool.clone(),
                    on_stopped: on_stopped.clone(),
                };
                let ok =
                    r.register_poller(name, PollerKind::Service, CLEANER_PERIOD_US, move |_| {
                        let Some(c) = slot.cleaner.as_mut() else {
                            return PollStatus::Done;
                        };
                        match c.poll() {
                            CleanerPoll::Idle => PollStatus::Idle,
                            CleanerPoll::Busy => PollStatus::Busy,
                            CleanerPoll::Waiting => PollStatus::Waiting,
                            CleanerPoll::Done => {
                                slot.stop();
                                PollStatus::Done
                            }
                        }
                    });
                if !ok {
                    // The poller was dropped, and with it its `CleanerSlot`: the pool knows.
                    tracing::error!(pool = %pool.name, "no poller slot for the cleaner");
                }
            }
            Err(e) => {
                tracing::error!(pool = %pool.name, "cleaner not started: {e}");
                stopped(&pool, &on_stopped);
            }
        }
    });
    if let Err(e) = sent {
        tracing::error!("cleaner not started: {e}");
        stopped(pool, &on_send_failure);
    }
}

/// A pool's cleaner as its poller owns it. When the cleaner is done, or its poller is
/// dropped (the reactor stopping drops its service pollers), the cleaner is dropped first
/// (writing what it still owes the base), then `pool.cleaner_stopped` is set and
/// `on_stopped` runs: once, either way.
struct CleanerSlot {
    cleaner: Option<Cleaner>,
    pool: Arc<LsvPool>,
    on_stopped: Option<OnCleanerStopped>,
}

impl CleanerSlot {
    fn stop(&mut self) {
        if let Some(c) = self.cleaner.take() {
            drop(c);
            self.pool.cleaner_stopped.store(true, Ordering::SeqCst);
            if let Some(f) = &self.on_stopped {
                f();
            }
        }
    }
}

impl Drop for CleanerSlot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How a pool's claim of its base bdev names its holder.
fn claim_holder(pool_name: &str) -> String {
    format!("lvstore {pool_name}")
}

/// The same once the pool is removed, until its cleaner has stopped writing.
fn unloading_holder(pool: &LsvPool) -> String {
    format!(
        "lvstore {} (unloading: its last writes are finishing)",
        pool.name
    )
}

/// The same for a pool being destroyed (`remove_to_destroy`), until its superblock is erased.
fn destroying_holder(pool: &LsvPool) -> String {
    format!(
        "lvstore {} (being destroyed: its superblock is being erased)",
        pool.name
    )
}

/// A base bdev claimed for examine's first reads (`Pools::begin_peek`); `peek` reads them, on
/// any thread (a clone may go there), and `Pools::peeked` takes what it found.
#[derive(Clone)]
pub struct Peeking {
    base: BdevEntry,
    /// The claim's holder while the reads run.
    holder: String,
}

impl Peeking {
    /// What pool the base holds, if any: its uuid and name (two 4 KiB reads, which wait for
    /// the device).
    pub fn peek(&self) -> Result<Option<(Uuid, String)>, PoolError> {
        peek_pool(&self.base)
    }
}

/// A base bdev that holds a pool, claimed by examine in its name (`Pools::peeked`); `load` runs
/// the pool's recovery and its load checkpoint, on any thread (a clone may go there), before
/// it takes I/O.
#[derive(Clone)]
pub struct Examined {
    base: BdevEntry,
    /// The pool's name, as `Peeking::peek` read it (reserved: its claim holds it).
    name: String,
}

impl Examined {
    /// Opens and recovers the pool, and writes the load's checkpoint
    /// (`LsvPool::checkpoint_after_recovery`): the pool is ready for `Pools::examine_finish`.
    pub fn load(&self) -> Result<Arc<LsvPool>, PoolError> {
        let pool = LsvPool::open_named(self.base.clone())?;
        pool.checkpoint_after_recovery()?;
        Ok(pool)
    }
}

impl Pools {
    pub fn new(registry: Arc<BdevRegistry>) -> Pools {
        Pools {
            by_name: RwLock::default(),
            reactors: OnceLock::new(),
            registry,
        }
    }

    /// Starts `pool`'s cleaner; its claim on its base bdev is let go once the cleaner has
    /// stopped for good after `remove` (which renames the claim `unloading_holder`), when
    /// the pool writes the base no more. A cleaner that could not start lets nothing go.
    fn start_cleaner_of(&self, pool: &Arc<LsvPool>, reactors: &Reactors) {
        let registry = self.registry.clone();
        let base = pool.base_name().to_string();
        let holder = unloading_holder(pool);
        let wake = reactors.clone();
        let release: OnCleanerStopped = Arc::new(move || {
            registry.release(&base, &holder);
            // Reactor 0 answers `bdev_lvol_delete_lvstore` once the base is free: woken now,
            // not at its next timer if it sleeps.
            let _ = wake.send(0, |_| {});
        });
        start_cleaner(pool, reactors, Some(release));
    }

    /// From now on every pool loaded or created gets a cleaner on `reactors`; pools already
    /// loaded get theirs now.
    pub fn attach_reactors(&self, reactors: Reactors) {
        if self.reactors.set(reactors.clone()).is_ok() {
            for p in self.list() {
                self.start_cleaner_of(&p, &reactors);
            }
        }
    }

    /// Stops every pool's cleaner and writes a final checkpoint (clean shutdown: call after
    /// the reactors have stopped).
    pub fn close_all(&self) {
        for p in self.list() {
            p.close();
            if let Err(e) = p.checkpoint_sync() {
                tracing::error!(pool = %p.name, "final checkpoint failed: {e}");
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<LsvPool>> {
        self.by_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn list(&self) -> Vec<Arc<LsvPool>> {
        self.by_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Loads `pool`, which claims its base bdev (unless it holds the claim already: a pool
    /// being created claims its base before formatting it). While the pool is loaded, and
    /// until its cleaner has stopped after `remove`, no front end exports the base writable
    /// and it is not deleted.
    pub fn insert(&self, pool: Arc<LsvPool>) -> Result<(), PoolError> {
        let mut m = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        if m.contains_key(&pool.name) || m.values().any(|p| p.base_name() == pool.base_name()) {
            return Err(PoolError::Base(format!(
                "a pool named {:?} or on bdev {:?} is already loaded",
                pool.name,
                pool.base_name()
            )));
        }
        let holder = claim_holder(&pool.name);
        if self.registry.claimed_by(pool.base_name()).as_deref() != Some(holder.as_str()) {
            self.registry
                .claim(pool.base_name(), &holder)
                .map_err(|e| PoolError::Base(e.to_string()))?;
        }
        m.insert(pool.name.clone(), pool.clone());
        if let Some(r) = self.reactors.get() {
            self.start_cleaner_of(&pool, r);
        }
        Ok(())
    }

    /// Claims bdev `base` for a pool named `name` that is about to be formatted on it
    /// (`insert` keeps the claim; `release_unformatted` lets it go if formatting fails).
    pub fn claim_for_format(&self, base: &str, name: &str) -> Result<(), crate::bdev::BdevError> {
        self.registry.claim(base, &claim_holder(name))
    }

    /// Whether a pool named `name` is loaded, or being formatted or loaded (its base is
    /// claimed in its name: `claim_for_format`, `peeked`): no other may take the name.
    pub fn name_taken(&self, name: &str) -> bool {
        self.get(name).is_some() || self.registry.held_by(&claim_holder(name)).is_some()
    }

    /// Lets go of a claim `claim_for_format` took for a pool that was not loaded.
    pub fn release_unformatted(&self, base: &str, name: &str) {
        if self.get(name).is_none_or(|p| p.base_name() != base) {
            self.registry.release(base, &claim_holder(name));
        }
    }

    /// Unloads a pool: its cleaner stops, and its base bdev is let go once the cleaner has
    /// (at once if no cleaner runs). Returns at once: `is_unloading` says when the base is
    /// free (the cleaner stops on its own reactor, at its next poll or after the checkpoint
    /// it is writing; this one may be it). The pool stays on its base, and loads again if the
    /// base is examined: `remove_to_destroy` is `bdev_lvol_delete_lvstore`'s.
    pub fn remove(&self, name: &str) -> Option<Arc<LsvPool>> {
        let p = self.take(name)?;
        let unloading = unloading_holder(&p);
        self.registry
            .rename_claim(p.base_name(), &claim_holder(&p.name), &unloading);
        // After the rename: a cleaner stopping from now on lets the claim go itself.
        if !self.cleaner_running(&p) {
            self.registry.release(p.base_name(), &unloading);
        }
        Some(p)
    }

    /// Unloads a pool to destroy it: as `remove`, but its base stays claimed after its
    /// cleaner has stopped, until `erase_destroyed` lets it go.
    pub fn remove_to_destroy(&self, name: &str) -> Option<Arc<LsvPool>> {
        let p = self.take(name)?;
        self.registry.rename_claim(
            p.base_name(),
            &claim_holder(&p.name),
            &destroying_holder(&p),
        );
        Some(p)
    }

    /// Takes pool `name` out of the map and closes it (its cleaner stops at its next poll).
    fn take(&self, name: &str) -> Option<Arc<LsvPool>> {
        let p = self
            .by_name
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)?;
        p.close();
        Some(p)
    }

    /// Whether `p`'s cleaner may still write its base: it was started and has not stopped.
    pub fn cleaner_running(&self, p: &LsvPool) -> bool {
        self.reactors.get().is_some() && !p.cleaner_stopped.load(Ordering::SeqCst)
    }

    /// Whether nothing of pool `p`, closed, can write its base any more: its cleaner has
    /// stopped, no volume operation is under way, and its log writers have stopped.
    pub fn quiet(&self, p: &LsvPool) -> bool {
        !self.cleaner_running(p) && p.volume_ops_running() == 0 && p.writes_stopped()
    }

    /// Destroys `p`, removed by `remove_to_destroy`: waits until nothing of it can write its
    /// base (`quiet`: its cleaner's last checkpoint, an lvol operation, records in flight),
    /// at most `QUIET_LIMIT`, then erases its superblock and lets the base go, also if the
    /// erase failed. If it never gets quiet, the base stays claimed ("being destroyed")
    /// until the process ends: no other bdev or pool may take a base that can still be
    /// written under it. Blocking: run it on a thread of its own.
    pub fn erase_destroyed(&self, p: &LsvPool) -> Result<(), PoolError> {
        let deadline = std::time::Instant::now() + QUIET_LIMIT;
        while !self.quiet(p) {
            if std::time::Instant::now() >= deadline {
                tracing::error!(
                    pool = %p.name,
                    "deleted lvstore still writing after {QUIET_LIMIT:?}: not erased; its \
                     base stays claimed until the appliance restarts"
                );
                return Err(PoolError::Busy(p.name.clone()));
            }
            std::thread::sleep(QUIET_POLL);
        }
        // Let go once quiet, whatever comes of the erase (a panic in it too).
        struct Release<'a>(&'a Pools, &'a LsvPool);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0
                    .registry
                    .release(self.1.base_name(), &destroying_holder(self.1));
            }
        }
        let _release = Release(self, p);
        match erase_superblock(&p.base, p.sb.uuid)? {
            true => Ok(()),
            false => Err(PoolError::Base(format!(
                "bdev {:?} no longer starts with lvstore {:?}'s superblock; nothing was erased",
                p.base_name(),
                p.name
            ))),
        }
    }

    /// Whether removed pool `p` still claims its base: its cleaner has not stopped yet.
    pub fn is_unloading(&self, p: &LsvPool) -> bool {
        self.registry.claimed_by(p.base_name()).as_deref() == Some(unloading_holder(p).as_str())
    }

    /// Registers every volume of `pool` as a bdev named `pool/volume`.
    /// All or none: if one cannot be registered (its name is taken), those registered
    /// before it are removed again.
    pub fn register_volumes(pool: &Arc<LsvPool>, registry: &BdevRegistry) -> Result<(), PoolError> {
        let mut done: Vec<String> = Vec::new();
        for meta in pool.volumes() {
            let (meta, table) = pool.volume(&meta.name).expect("listed just now");
            match registry.register(Arc::new(LsvVolume::new(pool.clone(), meta, table))) {
                Ok(e) => done.push(e.bdev.name().to_string()),
                Err(e) => {
                    for name in &done {
                        let _ = registry.remove(name);
                    }
                    return Err(PoolError::Base(e.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Opens the pool on `base` if it holds one (its name is the one it was created with),
    /// and registers its volumes. Returns the pool's name. A claimed bdev is not examined:
    /// its holder (a pool, or a bdev layered on it) reads it. All on the caller's thread:
    /// `examine_begin`, `Examined::load` and `examine_finish` split it for a caller that
    /// loads elsewhere.
    pub fn examine(&self, base: &BdevEntry) -> Result<Option<String>, PoolError> {
        match self.examine_begin(base)? {
            Some(ex) => {
                let loaded = ex.load();
                self.examine_finish(ex, loaded).map(Some)
            }
            None => Ok(None),
        }
    }

    /// The first step of examine: if `base` holds a pool and nothing claims it, claims it in
    /// the pool's name (so that nothing writes or takes it, and no other pool takes the name,
    /// while it is loaded) and returns what `Examined::load` loads. Reads the base's
    /// superblock and volume table on the caller's thread (`begin_peek`, `Peeking::peek` and
    /// `peeked` split it for a caller that reads elsewhere).
    pub fn examine_begin(&self, base: &BdevEntry) -> Result<Option<Examined>, PoolError> {
        let Some(peeking) = self.begin_peek(base) else {
            return Ok(None);
        };
        let found = peeking.peek();
        self.peeked(peeking, found)
    }

    /// Claims `base` for examine's first reads (`Peeking::peek`), so that nothing formats,
    /// exports or deletes it meanwhile. None if something holds it already: its holder (a
    /// pool, or a bdev layered on it) reads it.
    pub fn begin_peek(&self, base: &BdevEntry) -> Option<Peeking> {
        let holder = format!("examine of bdev {}", base.bdev.name());
        self.registry.claim(base.bdev.name(), &holder).ok()?;
        Some(Peeking {
            base: base.clone(),
            holder,
        })
    }

    /// After `Peeking::peek`: if it found a pool, claims the base in the pool's name and
    /// returns what `Examined::load` loads; otherwise lets the base go. A pool whose name or
    /// uuid is already loaded, being loaded or being formatted is refused before anything is
    /// written: another bdev on the same device (a second uring bdev on the same file) would
    /// otherwise write a stale checkpoint into the live pool. Call it where pools are
    /// formatted and examined (reactor 0), so that no other takes the name between the check
    /// and the claim.
    pub fn peeked(
        &self,
        peeking: Peeking,
        found: Result<Option<(Uuid, String)>, PoolError>,
    ) -> Result<Option<Examined>, PoolError> {
        let Peeking { base, holder } = peeking;
        let base_name = base.bdev.name();
        let refused = |e: PoolError| {
            self.registry.release(base_name, &holder);
            Err(e)
        };
        let (uuid, name) = match found {
            Ok(Some(found)) => found,
            Ok(None) => {
                self.registry.release(base_name, &holder);
                return Ok(None);
            }
            Err(e) => return refused(e),
        };
        if let Some(other) = self.list().into_iter().find(|p| p.sb.uuid == uuid) {
            return refused(PoolError::Base(format!(
                "it is pool {:?}, already loaded on bdev {:?} (the same device twice?)",
                other.name,
                other.base_name()
            )));
        }
        if self.name_taken(&name) {
            return refused(PoolError::Base(format!(
                "a pool named {name:?} is already loaded, or being loaded or formatted"
            )));
        }
        self.registry
            .rename_claim(base_name, &holder, &claim_holder(&name));
        debug_assert_eq!(
            self.registry.claimed_by(base_name),
            Some(claim_holder(&name))
        );
        Ok(Some(Examined { base, name }))
    }

    /// The last step of examine, with what `Examined::load` gave: loads the pool and
    /// registers its volumes, or lets its base go. Returns the pool's name.
    pub fn examine_finish(
        &self,
        ex: Examined,
        loaded: Result<Arc<LsvPool>, PoolError>,
    ) -> Result<String, PoolError> {
        let base = ex.base.bdev.name();
        let holder = claim_holder(&ex.name);
        let pool = match loaded {
            // Renamed on the media since `Peeking::peek` read it: not the name reserved.
            Ok(pool) if pool.name != ex.name => Err(PoolError::Base(format!(
                "its name changed while it was loaded ({:?}, then {:?})",
                ex.name, pool.name
            ))),
            other => other,
        }
        .inspect_err(|_| self.registry.release(base, &holder))?;
        if let Err(e) = self.insert(pool.clone()) {
            self.registry.release(base, &holder);
            return Err(e);
        }
        if let Err(e) = Self::register_volumes(&pool, &self.registry) {
            // Not loaded after all (the operator is told so): unloaded, its base let go.
            self.remove(&pool.name);
            return Err(e);
        }
        tracing::info!(pool = %pool.name, base, "examine: loaded pool");
        Ok(pool.name.clone())
    }

    /// Examines every bdev no pool sits on yet (after a config made them).
    pub fn examine_all(&self) {
        // A pool's base is claimed: `examine` passes over it without reading it.
        for entry in self.registry.list() {
            if let Err(e) = self.examine(&entry) {
                tracing::warn!(bdev = %entry.bdev.name(), "examine: no pool loaded from it: {e}");
            }
        }
    }
}
