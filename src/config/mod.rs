//! SPDK-format JSON configuration: `{"subsystems":[{"subsystem":"bdev","config":[...]}]}`.
//!
//! The config is a list of RPC calls per subsystem, applied in order. This module parses it and
//! applies the calls it knows; the RPC server shares `create_bdev` for the same methods.

pub mod size;

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::bdev::malloc::{MallocBdev, MallocCreateParams};
use crate::bdev::null::{NullBdev, NullCreateParams};
use crate::bdev::uring::{AioCreateParams, UringBdev, UringCreateParams};
use crate::bdev::{Bdev, BdevError, BdevRegistry};

pub use size::parse_size;

/// Largest config file we read.
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpdkConfig {
    pub subsystems: Vec<SubsystemConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubsystemConfig {
    pub subsystem: String,
    #[serde(default)]
    pub config: Option<Vec<MethodCall>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MethodCall {
    pub method: String,
    #[serde(default)]
    pub params: Value,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config file {0:?} does not exist")]
    Missing(String),
    #[error("cannot read config file {path:?}: {reason}")]
    Read { path: String, reason: String },
    #[error("config file {path:?} is not a valid SPDK JSON config: {reason}")]
    Malformed { path: String, reason: String },
    #[error("config entry {subsystem}[{index}] ({method}) failed: {reason}")]
    Entry {
        subsystem: String,
        index: usize,
        method: String,
        reason: String,
    },
}

/// Why a create call failed: its params were wrong (JSON-RPC -32602) or the create itself did.
#[derive(Debug, Error)]
pub enum CallError {
    #[error("invalid params: {0}")]
    InvalidParams(String),
    #[error(transparent)]
    Bdev(#[from] BdevError),
    #[error("unknown method {0:?}")]
    UnknownMethod(String),
}

pub fn load_file(path: &Path) -> Result<SpdkConfig, ConfigError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ConfigError::Missing(shown.clone())
        } else {
            ConfigError::Read {
                path: shown.clone(),
                reason: e.to_string(),
            }
        }
    })?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::Read {
            path: shown,
            reason: format!("larger than the {MAX_CONFIG_BYTES}-byte limit"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    parse(&text).map_err(|reason| ConfigError::Malformed {
        path: shown,
        reason,
    })
}

pub fn parse(text: &str) -> Result<SpdkConfig, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// Methods SPDK's `save_config` writes that set options we have no use for; applying them is
/// a no-op rather than an error, so SPDK's own configs boot.
fn is_ignored_option_method(method: &str) -> bool {
    method.ends_with("_set_options") || method == "bdev_wait_for_examine"
}

/// Decodes params into `T`; the error message names the param at fault, e.g.
/// `num_blocks: invalid type: string "x", expected u64`.
pub fn decode_params<T: for<'de> Deserialize<'de>>(params: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(params).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

fn params_of<T: for<'de> Deserialize<'de>>(params: &Value) -> Result<T, CallError> {
    let params = if params.is_null() {
        &Value::Object(Default::default())
    } else {
        params
    };
    decode_params(params).map_err(CallError::InvalidParams)
}

/// The first free `{prefix}{n}` name.
pub fn next_free_name(registry: &BdevRegistry, prefix: &str) -> String {
    (0..)
        .map(|n| format!("{prefix}{n}"))
        .find(|name| !registry.contains(name))
        .expect("an unbounded range always has a free name")
}

/// Runs one bdev create method. Returns the new bdev's name, or None for an ignored method.
pub fn create_bdev(
    registry: &BdevRegistry,
    method: &str,
    params: &Value,
) -> Result<Option<String>, CallError> {
    // A delay bdev claims its base, as SPDK's does (let go when it is deleted).
    let mut claims_base = None;
    let bdev: Arc<dyn Bdev> = match method {
        "bdev_null_create" => Arc::new(NullBdev::create(&params_of::<NullCreateParams>(params)?)?),
        "bdev_malloc_create" => {
            let p: MallocCreateParams = params_of(params)?;
            let name = p
                .name
                .clone()
                .unwrap_or_else(|| next_free_name(registry, "Malloc"));
            Arc::new(MallocBdev::create(&name, &p)?)
        }
        "bdev_uring_create" => {
            Arc::new(UringBdev::create(&params_of::<UringCreateParams>(params)?)?)
        }
        "bdev_aio_create" => Arc::new(UringBdev::create_aio(&params_of::<AioCreateParams>(
            params,
        )?)?),
        "bdev_delay_create" => {
            let p: crate::bdev::delay::DelayCreateParams = params_of(params)?;
            let base = registry
                .get(&p.base_bdev_name)
                .ok_or_else(|| BdevError::NotFound(p.base_bdev_name.clone()))?;
            claims_base = Some(p.base_bdev_name.clone());
            Arc::new(crate::bdev::delay::DelayBdev::create(&p, base)?)
        }
        m if is_ignored_option_method(m) => return Ok(None),
        m => return Err(CallError::UnknownMethod(m.to_string())),
    };
    let name = bdev.name().to_string();
    if registry.contains(&name) {
        return Err(BdevError::Exists(name).into());
    }
    if let Some(base) = &claims_base {
        registry.claim(base, &crate::bdev::registry::holder_bdev(&name))?;
    }
    if let Err(e) = registry.register(bdev) {
        if let Some(base) = &claims_base {
            registry.release(base, &crate::bdev::registry::holder_bdev(&name));
        }
        return Err(e.into());
    }
    Ok(Some(name))
}

/// Subsystems whose configs we accept but have nothing to apply for yet (SPDK writes them).
fn is_passive_subsystem(name: &str) -> bool {
    matches!(
        name,
        "accel" | "iobuf" | "sock" | "vmd" | "keyring" | "scheduler" | "fsdev" | "scsi"
    )
}

/// Applies a config in subsystem order. On an error, removes every bdev it had created and
/// names the failing entry.
pub fn apply(config: &SpdkConfig, registry: &BdevRegistry) -> Result<Vec<String>, ConfigError> {
    let mut created: Vec<String> = Vec::new();
    let result = apply_inner(config, registry, &mut created);
    if result.is_err() {
        for name in created.iter().rev() {
            let _ = registry.remove(name);
        }
    }
    result.map(|()| created)
}

fn apply_inner(
    config: &SpdkConfig,
    registry: &BdevRegistry,
    created: &mut Vec<String>,
) -> Result<(), ConfigError> {
    for sub in &config.subsystems {
        let calls = sub.config.as_deref().unwrap_or(&[]);
        for (index, call) in calls.iter().enumerate() {
            let fail = |reason: String| ConfigError::Entry {
                subsystem: sub.subsystem.clone(),
                index,
                method: call.method.clone(),
                reason,
            };
            match sub.subsystem.as_str() {
                "bdev" => match create_bdev(registry, &call.method, &call.params) {
                    Ok(Some(name)) => created.push(name),
                    Ok(None) => {}
                    Err(e) => return Err(fail(e.to_string())),
                },
                s if is_passive_subsystem(s) => {}
                // Front ends need running reactors: `serve` applies them after boot.
                "vhost_blk" => {}
                s => return Err(fail(format!("subsystem {s:?} is not supported"))),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_bdev_stays_until_its_holder_lets_go() {
        let r = BdevRegistry::new();
        let make = |method: &str, p: serde_json::Value| create_bdev(&r, method, &p);
        make(
            "bdev_null_create",
            serde_json::json!({"name": "N0", "num_blocks": 256, "block_size": 4096}),
        )
        .unwrap();
        assert!(matches!(r.claim("nope", "x"), Err(BdevError::NotFound(_))));
        // A delay bdev claims its base: the base is not deleted, nor claimed twice.
        make(
            "bdev_delay_create",
            serde_json::json!({"name": "D0", "base_bdev_name": "N0", "avg_read_latency": 0,
                "p99_read_latency": 0, "avg_write_latency": 0, "p99_write_latency": 0}),
        )
        .unwrap();
        assert_eq!(r.claimed_by("N0").as_deref(), Some("bdev D0"));
        assert!(matches!(r.remove("N0"), Err(BdevError::Claimed { .. })));
        assert!(matches!(
            r.claim("N0", "lvstore p"),
            Err(BdevError::Claimed { .. })
        ));
        let second = make(
            "bdev_delay_create",
            serde_json::json!({"name": "D1", "base_bdev_name": "N0", "avg_read_latency": 0,
                "p99_read_latency": 0, "avg_write_latency": 0, "p99_write_latency": 0}),
        );
        assert!(second.is_err() && !r.contains("D1"));
        // Only the holder lets go; deleting the holder does.
        r.release("N0", "lvstore p");
        assert!(r.claimed_by("N0").is_some());
        r.remove("D0").unwrap();
        assert_eq!(r.claimed_by("N0"), None);
        r.claim("N0", "lvstore p").unwrap();
        r.release("N0", "lvstore p");
        r.remove("N0").unwrap();
    }

    #[test]
    fn applies_bdevs_in_order() {
        let cfg = parse(
            r#"{"subsystems":[{"subsystem":"accel","config":null},
                {"subsystem":"bdev","config":[
                  {"method":"bdev_set_options","params":{"bdev_io_pool_size":65535}},
                  {"method":"bdev_null_create","params":{"name":"N0","num_blocks":256,"block_size":4096}},
                  {"method":"bdev_malloc_create","params":{"num_blocks":128,"block_size":512}}]}]}"#,
        )
        .unwrap();
        let reg = BdevRegistry::new();
        let made = apply(&cfg, &reg).unwrap();
        assert_eq!(made, vec!["N0".to_string(), "Malloc0".to_string()]);
        assert_eq!(reg.get("Malloc0").unwrap().bdev.num_blocks(), 128);
    }

    #[test]
    fn failure_names_the_entry_and_rolls_back() {
        let cfg = parse(
            r#"{"subsystems":[{"subsystem":"bdev","config":[
                  {"method":"bdev_null_create","params":{"name":"N0","num_blocks":256,"block_size":4096}},
                  {"method":"bdev_null_create","params":{"name":"N1","num_blocks":256,"block_size":1000}}]}]}"#,
        )
        .unwrap();
        let reg = BdevRegistry::new();
        let err = apply(&cfg, &reg).unwrap_err().to_string();
        assert!(err.contains("bdev[1] (bdev_null_create)"), "{err}");
        assert!(err.contains("block size 1000"), "{err}");
        assert!(reg.list().is_empty(), "created bdevs were not removed");
    }

    #[test]
    fn unknown_params_and_methods_are_named() {
        let reg = BdevRegistry::new();
        let e = create_bdev(
            &reg,
            "bdev_null_create",
            &serde_json::json!({"name":"x","num_blocks":1,"block_size":512,"bogus":1}),
        )
        .unwrap_err();
        assert!(
            matches!(e, CallError::InvalidParams(ref m) if m.contains("bogus")),
            "{e}"
        );
        let e = create_bdev(&reg, "bdev_frob_create", &Value::Null).unwrap_err();
        assert!(matches!(e, CallError::UnknownMethod(_)));
    }

    #[test]
    fn malformed_text_is_refused() {
        assert!(parse("{").is_err());
        assert!(parse(r#"{"subsystems":5}"#).is_err());
        assert!(
            parse(r#"{"subsystems":[{"subsystem":"bdev","config":[{"params":{}}]}]}"#).is_err()
        );
    }
}
