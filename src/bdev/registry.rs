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

/// How a bdev that claims another (a delay bdev, its base) is named as the holder.
pub fn holder_bdev(name: &str) -> String {
    format!("bdev {name}")
}

#[derive(Default)]
pub struct BdevRegistry {
    bdevs: RwLock<BTreeMap<String, BdevEntry>>,
    next_seq: std::sync::atomic::AtomicU64,
    /// Who holds each claimed bdev, by bdev name (at most one holder per bdev, so at most
    /// `MAX_BDEVS` claims). A claim is SPDK's exclusive-write claim: an lvstore claims its
    /// base bdev, and while the claim stands nothing else may claim it, delete it, or export
    /// it writable (front ends ask `claimed_by` first).
    claims: RwLock<BTreeMap<String, String>>,
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
        if let Some(file) = bdev.backing_file() {
            if let Some(other) = map.values().find(|e| e.bdev.backing_file() == Some(file)) {
                return Err(BdevError::SameFile {
                    bdev: name,
                    other: other.bdev.name().to_string(),
                });
            }
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

    /// Removes a bdev; channels already open keep it alive until they close. A claimed bdev
    /// is not removed: its holder must let it go first. Claims the bdev itself held (a delay
    /// bdev's of its base) go with it.
    pub fn remove(&self, name: &str) -> Result<BdevEntry, BdevError> {
        let mut map = self.bdevs.write().unwrap_or_else(|e| e.into_inner());
        if let Some(by) = self.claimed_by(name) {
            return Err(BdevError::Claimed {
                bdev: name.to_string(),
                by,
            });
        }
        let removed = map
            .remove(name)
            .ok_or_else(|| BdevError::NotFound(name.to_string()))?;
        let holder = holder_bdev(name);
        self.claims
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, by| *by != holder);
        Ok(removed)
    }

    /// Claims bdev `name` for `by` (a description for operators: "lvstore lvs0"). Fails if
    /// the bdev is not here or someone holds it already.
    pub fn claim(&self, name: &str, by: &str) -> Result<(), BdevError> {
        let map = self.bdevs.read().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(name) {
            return Err(BdevError::NotFound(name.to_string()));
        }
        let mut claims = self.claims.write().unwrap_or_else(|e| e.into_inner());
        if let Some(holder) = claims.get(name) {
            return Err(BdevError::Claimed {
                bdev: name.to_string(),
                by: holder.clone(),
            });
        }
        claims.insert(name.to_string(), by.to_string());
        Ok(())
    }

    /// Lets bdev `name` go, if `by` holds it.
    pub fn release(&self, name: &str, by: &str) {
        let mut claims = self.claims.write().unwrap_or_else(|e| e.into_inner());
        if claims.get(name).is_some_and(|h| h == by) {
            claims.remove(name);
        }
    }

    /// Renames the holder of bdev `name`'s claim from `from` to `to` (if `from` holds it).
    pub fn rename_claim(&self, name: &str, from: &str, to: &str) {
        let mut claims = self.claims.write().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = claims.get_mut(name).filter(|h| *h == from) {
            *h = to.to_string();
        }
    }

    /// A bdev that `by` holds, if any.
    pub fn held_by(&self, by: &str) -> Option<String> {
        let claims = self.claims.read().unwrap_or_else(|e| e.into_inner());
        claims
            .iter()
            .find(|(_, h)| *h == by)
            .map(|(b, _)| b.clone())
    }

    /// Who holds bdev `name`, if anyone.
    pub fn claimed_by(&self, name: &str) -> Option<String> {
        self.claims
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
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
