//! The appliance's pools by name, and examine: a base bdev that holds a pool is opened (never
//! formatted again) and its volumes are registered as bdevs, as SPDK's lvol module does.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};

use super::cleaner::{Cleaner, CleanerPoll};
use super::pool::{holds_pool, LsvPool, PoolError};
use super::volume::LsvVolume;
use crate::bdev::{BdevEntry, BdevRegistry};
use crate::reactor::{PollStatus, PollerKind, Reactors};

/// How often an idle cleaner poller runs (while it works, it runs every reactor pass).
pub const CLEANER_PERIOD_US: u64 = 10_000;

#[derive(Default)]
pub struct Pools {
    by_name: RwLock<BTreeMap<String, Arc<LsvPool>>>,
    reactors: OnceLock<Reactors>,
}

/// Starts `pool`'s cleaner as a service poller on the last reactor (reactor 0 also serves
/// the RPC socket).
pub fn start_cleaner(pool: &Arc<LsvPool>, reactors: &Reactors) {
    let pool = pool.clone();
    let reactor = reactors.count() - 1;
    let sent = reactors.send(reactor, move |r| {
        let name = format!("lsv_cleaner:{}", pool.name);
        match Cleaner::new(pool.clone()) {
            Ok(mut cleaner) => {
                let ok =
                    r.register_poller(name, PollerKind::Service, CLEANER_PERIOD_US, move |_| {
                        match cleaner.poll() {
                            CleanerPoll::Idle => PollStatus::Idle,
                            CleanerPoll::Busy => PollStatus::Busy,
                            CleanerPoll::Waiting => PollStatus::Waiting,
                            CleanerPoll::Done => PollStatus::Done,
                        }
                    });
                if !ok {
                    tracing::error!(pool = %pool.name, "no poller slot for the cleaner");
                }
            }
            Err(e) => tracing::error!(pool = %pool.name, "cleaner not started: {e}"),
        }
    });
    if let Err(e) = sent {
        tracing::error!("cleaner not started: {e}");
    }
}

/// How a pool's claim of its base bdev names its holder.
fn claim_holder(pool: &LsvPool) -> String {
    format!("lvstore {}", pool.name)
}

impl Pools {
    pub fn new() -> Pools {
        Pools::default()
    }

    /// From now on every pool loaded or created gets a cleaner on `reactors`; pools already
    /// loaded get theirs now.
    pub fn attach_reactors(&self, reactors: Reactors) {
        if self.reactors.set(reactors.clone()).is_ok() {
            for p in self.list() {
                start_cleaner(&p, &reactors);
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

    /// The pool on base bdev `base`, if one is loaded.
    pub fn get_by_base(&self, base: &str) -> Option<Arc<LsvPool>> {
        self.list().into_iter().find(|p| p.base_name() == base)
    }

    pub fn list(&self) -> Vec<Arc<LsvPool>> {
        self.by_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Loads `pool`, which claims its base bdev in `registry` (released by `remove`): no
    /// front end exports it writable and it is not deleted while the pool is loaded.
    pub fn insert(&self, pool: Arc<LsvPool>, registry: &BdevRegistry) -> Result<(), PoolError> {
        let mut m = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        if m.contains_key(&pool.name) || m.values().any(|p| p.base_name() == pool.base_name()) {
            return Err(PoolError::Base(format!(
                "a pool named {:?} or on bdev {:?} is already loaded",
                pool.name,
                pool.base_name()
            )));
        }
        registry
            .claim(pool.base_name(), &claim_holder(&pool))
            .map_err(|e| PoolError::Base(e.to_string()))?;
        m.insert(pool.name.clone(), pool.clone());
        if let Some(r) = self.reactors.get() {
            start_cleaner(&pool, r);
        }
        Ok(())
    }

    /// Unloads a pool: its cleaner stops, and its base bdev is let go.
    pub fn remove(&self, name: &str, registry: &BdevRegistry) -> Option<Arc<LsvPool>> {
        let p = self
            .by_name
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        if let Some(p) = &p {
            p.close();
            registry.release(p.base_name(), &claim_holder(p));
        }
        p
    }

    /// Registers every volume of `pool` as a bdev named `pool/volume`.
    pub fn register_volumes(pool: &Arc<LsvPool>, registry: &BdevRegistry) -> Result<(), PoolError> {
        for meta in pool.volumes() {
            let (meta, table) = pool.volume(&meta.name).expect("listed just now");
            registry
                .register(Arc::new(LsvVolume::new(pool.clone(), meta, table)))
                .map_err(|e| PoolError::Base(e.to_string()))?;
        }
        Ok(())
    }

    /// Opens the pool on `base` if it holds one (its name is the one it was created with),
    /// and registers its volumes. Returns the pool's name.
    pub fn examine(
        &self,
        base: &BdevEntry,
        registry: &BdevRegistry,
    ) -> Result<Option<String>, PoolError> {
        if !holds_pool(base) {
            return Ok(None);
        }
        let pool = LsvPool::open_named(base.clone())?;
        self.insert(pool.clone(), registry)?;
        Self::register_volumes(&pool, registry)?;
        tracing::info!(pool = %pool.name, base = %base.bdev.name(), "examine: loaded pool");
        Ok(Some(pool.name.clone()))
    }
}
