//! The appliance's pools by name, and examine: a base bdev that holds a pool is opened (never
//! formatted again) and its volumes are registered as bdevs, as SPDK's lvol module does.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::pool::{holds_pool, LsvPool, PoolError};
use super::volume::LsvVolume;
use crate::bdev::{BdevEntry, BdevRegistry};

#[derive(Default)]
pub struct Pools {
    by_name: RwLock<BTreeMap<String, Arc<LsvPool>>>,
}

impl Pools {
    pub fn new() -> Pools {
        Pools::default()
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

    pub fn insert(&self, pool: Arc<LsvPool>) -> Result<(), PoolError> {
        let mut m = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        if m.contains_key(&pool.name) || m.values().any(|p| p.base_name() == pool.base_name()) {
            return Err(PoolError::Base(format!(
                "a pool named {:?} or on bdev {:?} is already loaded",
                pool.name,
                pool.base_name()
            )));
        }
        m.insert(pool.name.clone(), pool);
        Ok(())
    }

    pub fn remove(&self, name: &str) -> Option<Arc<LsvPool>> {
        self.by_name
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
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
        self.insert(pool.clone())?;
        Self::register_volumes(&pool, registry)?;
        tracing::info!(pool = %pool.name, base = %base.bdev.name(), "examine: loaded pool");
        Ok(Some(pool.name.clone()))
    }
}
