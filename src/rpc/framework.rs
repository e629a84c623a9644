//! Framework methods: version, states, subsystems and config, reactors, logging, kill.

use serde::Deserialize;
use serde_json::{json, Value};

use super::methods::{RpcContext, RpcState, METHODS};
use super::protocol::{params, RpcError, INVALID_STATE};
use crate::config;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

fn no_params(p: Option<&Value>) -> Result<(), RpcError> {
    params::<NoParams>(p).map(|_| ())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetMethods {
    #[serde(default)]
    current: bool,
    #[serde(default)]
    include_aliases: bool,
}

pub fn rpc_get_methods(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    let p: GetMethods = params(p)?;
    let _ = p.include_aliases; // unblend has no deprecated aliases
    let names: Vec<&str> = METHODS
        .iter()
        .filter(|m| !p.current || m.allowed_in(ctx.state))
        .map(|m| m.name)
        .collect();
    Ok(json!(names))
}

pub fn spdk_get_version(_: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    no_params(p)?;
    let v = env!("CARGO_PKG_VERSION");
    let parts: Vec<u64> = v.split('.').map(|x| x.parse().unwrap_or(0)).collect();
    Ok(json!({
        "version": format!("unblend v{v}"),
        "fields": { "major": parts[0], "minor": parts[1], "patch": parts[2], "suffix": "" }
    }))
}

pub fn framework_start_init(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    no_params(p)?;
    if let Some(cfg) = ctx.pending_config.take() {
        if let Err(e) = config::apply(&cfg, &ctx.registry) {
            // Keep it: the admin may fix what failed (a missing file, say) and try again.
            ctx.pending_config = Some(cfg);
            return Err(RpcError::new(INVALID_STATE, e.to_string()));
        }
        // Examine what the config made, as a boot with it does: pools come back (and claim
        // their bases) before any controller is set up.
        ctx.pools.examine_all();
        if let Err(e) = super::vhost::apply_config(ctx, &cfg) {
            return Err(RpcError::new(INVALID_STATE, e));
        }
    }
    ctx.state = RpcState::Runtime;
    tracing::info!("framework initialized");
    Ok(json!(true))
}

/// Answered by the server: at once at runtime, or when `framework_start_init` completes.
pub fn framework_wait_init(_: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    no_params(p)?;
    Ok(json!(true))
}

/// The subsystems `save_config` writes, in the order a config must apply them.
pub const SUBSYSTEMS: &[&str] = &["bdev", "vhost_blk"];

pub fn framework_get_subsystems(_: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    no_params(p)?;
    Ok(Value::Array(
        SUBSYSTEMS
            .iter()
            .map(|s| json!({"subsystem": s, "depends_on": []}))
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetConfig {
    name: String,
    #[serde(default)]
    with_batches: bool,
}

pub fn framework_get_config(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    let p: GetConfig = params(p)?;
    let _ = p.with_batches;
    match p.name.as_str() {
        "bdev" => {
            let mut calls: Vec<Value> = ctx
                .registry
                .list_in_creation_order()
                .iter()
                .map(|e| e.bdev.config_json())
                // Volumes come back by examine of their pool's base bdev, as SPDK's lvols do.
                .filter(|c| !c.is_null())
                .collect();
            calls.push(json!({"method": "bdev_wait_for_examine"}));
            Ok(Value::Array(calls))
        }
        "vhost_blk" => Ok(Value::Array(super::vhost::config_calls(ctx))),
        other => Err(RpcError::invalid_params(format!(
            "name: subsystem {other:?} not found"
        ))),
    }
}

/// Ticks are nanoseconds.
const TICK_RATE: u64 = 1_000_000_000;

pub fn framework_get_reactors(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    no_params(p)?;
    let r = &ctx.reactors;
    let reactors: Vec<Value> = (0..r.count())
        .map(|i| {
            let s = r.stats(i);
            json!({
                "lcore": r.core(i),
                "busy": s.busy_ns,
                "idle": s.idle_ns,
                "in_interrupt": r.idle_policy() == crate::reactor::IdlePolicy::Adaptive,
                "irq_count": s.sleeps,
                "sys": 0,
                "usr": 0,
                "lw_threads": [{
                    "name": format!("reactor_{i}"),
                    "id": i + 1,
                    "cpumask": format!("{:x}", 1u128 << r.core(i).min(127)),
                    "elapsed": s.busy_ns + s.idle_ns,
                }],
            })
        })
        .collect();
    Ok(json!({
        "tick_rate": TICK_RATE,
        "pid": std::process::id(),
        "reactors": reactors,
    }))
}

pub fn thread_get_stats(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    no_params(p)?;
    let r = &ctx.reactors;
    let threads: Vec<Value> = (0..r.count())
        .map(|i| {
            let s = r.stats(i);
            json!({
                "name": format!("reactor_{i}"),
                "id": i + 1,
                "cpumask": format!("{:x}", 1u128 << r.core(i).min(127)),
                "busy": s.busy_ns,
                "idle": s.idle_ns,
                "loops": s.loops,
                "busy_loops": s.busy_loops,
                "sleeps": s.sleeps,
                "messages": s.messages,
            })
        })
        .collect();
    Ok(json!({ "tick_rate": TICK_RATE, "threads": threads }))
}

/// SPDK's log levels and the tracing filter each maps to.
const LOG_LEVELS: &[(&str, &str)] = &[
    ("ERROR", "error"),
    ("WARNING", "warn"),
    ("WARN", "warn"),
    ("NOTICE", "info"),
    ("INFO", "info"),
    ("DEBUG", "debug"),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetLevel {
    level: String,
}

pub fn log_set_print_level(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    let p: SetLevel = params(p)?;
    let upper = p.level.to_ascii_uppercase();
    let filter = LOG_LEVELS
        .iter()
        .find(|(name, _)| *name == upper)
        .map(|(_, f)| *f)
        .ok_or_else(|| {
            RpcError::invalid_params(format!(
                "level: {:?} is not one of ERROR, WARNING, NOTICE, INFO, DEBUG",
                p.level
            ))
        })?;
    (ctx.set_log_level)(filter).map_err(RpcError::internal)?;
    ctx.log_level = upper;
    Ok(json!(true))
}

pub fn log_get_print_level(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    no_params(p)?;
    Ok(json!(ctx.log_level))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Kill {
    sig_name: String,
}

pub fn spdk_kill_instance(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    let p: Kill = params(p)?;
    let sig = match p.sig_name.trim_start_matches("SIG") {
        "INT" | "2" => libc::SIGINT,
        "TERM" | "15" => libc::SIGTERM,
        "KILL" | "9" => libc::SIGKILL,
        "QUIT" | "3" => libc::SIGQUIT,
        "HUP" | "1" => libc::SIGHUP,
        _ => {
            return Err(RpcError::invalid_params(format!(
                "sig_name: {:?} is not SIGINT, SIGTERM, SIGKILL, SIGQUIT or SIGHUP",
                p.sig_name
            )))
        }
    };
    ctx.kill_signal = Some(sig);
    Ok(json!(true))
}
