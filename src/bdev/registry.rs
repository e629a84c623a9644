//! The bdevs of one appliance, by name. Control path only: nothing here is on the I/O path.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::{check_name, Bdev};
use super::{BdevError, BdevIoStat, ChannelContext, IoChannel};

/// Most bdevs one appliance may have.
pub const MAX_BDEVS: usize = 65_536;

#[derive(Clone)]
pub struct BdevEntry {
    pub bdev: Arc<dyn Bdev>,
    pub iostat: Arc<BdevIoStat>,
    /// Registration order, so that a saved config recreates bdevs in the order they came.
    pub created_seq: u64,
}

impl BdevEntry {
    /// Opens a channel on the calling reactor.
    pub fn open_channel(&self, ctx: &ChannelContext) -> Result<IoChannel, BdevError> {
        IoChannel::open(self.bdev.as_ref(), self.iostat.clone(), ctx)
    }
}

#[derive(Default)]
pub struct BdevRegistry {
    bdevs: RwLock<BTreeMap<String, BdevEntry>>,
    next_seq: std::sync::atomic::AtomicU64,
}

impl BdevRegistry {
    pub fn new() -> BdevRegistry {
        BdevRegistry::default()
    }

    pub fn register(&self, bdev: Arc<dyn Bdev>) -> Result<BdevEntry, BdevError> {
        let name = bdev.name().to_string();
        check_name(&name)?;
        let mut map = self.bdevs.write().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&name) {
            return Err(BdevError::Exists(name));
        }
        if map.len() >= MAX_BDEVS {
            return Err(BdevError::Unsupported(format!(
                "the appliance already has {MAX_BDEVS} bdevs"
            )));
        }
        let entry = BdevEntry {
            bdev,
            iostat: Arc::new(BdevIoStat::default()),
            created_seq: self
                .next_seq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        map.insert(name, entry.clone());
        Ok(entry)
    }

    pub fn get(&self, name: &str) -> Option<BdevEntry> {
        self.bdevs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Removes a bdev; channels already open keep it alive until they close.
    pub fn remove(&self, name: &str) -> Result<BdevEntry, BdevError> {
        self.bdevs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .ok_or_else(|| BdevError::NotFound(name.to_string()))
    }

    /// Every bdev, in name order.
    pub fn list(&self) -> Vec<BdevEntry> {
        self.bdevs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Every bdev, in the order it was registered.
    pub fn list_in_creation_order(&self) -> Vec<BdevEntry> {
        let mut all = self.list();
        all.sort_by_key(|e| e.created_seq);
        all
    }

    /// Flushes every bdev from outside the I/O path (at shutdown). Returns the failures.
    pub fn flush_all(&self) -> Vec<(String, BdevError)> {
        self.list()
            .into_iter()
            .filter_map(|e| {
                e.bdev
                    .flush_sync()
                    .err()
                    .map(|err| (e.bdev.name().to_string(), err))
            })
            .collect()
    }
}
