//! vhost methods, with SPDK's names: `vhost_create_blk_controller`, `vhost_get_controllers`,
//! `vhost_delete_controller`, `vhost_controller_set_coalescing`.

use serde::Deserialize;
use serde_json::{json, Value};

use super::methods::RpcContext;
use super::protocol::{params, RpcError};
use crate::frontend::vhost_blk::{ControllerParams, VhostError};
use crate::reactor::CpuMask;

fn vhost_err(e: VhostError) -> RpcError {
    let errno = match e {
        VhostError::Exists(_) => libc::EEXIST,
        VhostError::NotFound(_) | VhostError::NoBdev(_) => libc::ENODEV,
        VhostError::BdevInUse(..) | VhostError::BdevClaimed(..) => libc::EBUSY,
        VhostError::TooMany => libc::ENOSPC,
        VhostError::BadName(_) | VhostError::PackedRing => libc::EINVAL,
        VhostError::Socket { .. } | VhostError::Thread(_) => libc::EIO,
    };
    RpcError::new(-errno, e.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBlk {
    ctrlr: String,
    dev_name: String,
    #[serde(default)]
    cpumask: Option<String>,
    #[serde(default)]
    readonly: bool,
    #[serde(default)]
    packed_ring: bool,
    #[serde(default)]
    packed_ring_recovery: bool,
    #[serde(default)]
    transport: Option<String>,
}

pub fn vhost_create_blk_controller(
    ctx: &mut RpcContext,
    p: Option<&Value>,
) -> Result<Value, RpcError> {
    let p: CreateBlk = params(p)?;
    if p.packed_ring || p.packed_ring_recovery {
        return Err(vhost_err(VhostError::PackedRing));
    }
    if let Some(t) = &p.transport {
        if t != "vhost_user_blk" {
            return Err(RpcError::invalid_params(format!(
                "transport {t:?} is not supported (only vhost_user_blk)"
            )));
        }
    }
    let reactor_cores: Vec<usize> = (0..ctx.reactors.count())
        .map(|r| ctx.reactors.core(r))
        .collect();
    let cpumask = match &p.cpumask {
        Some(m) => {
            // Only the appliance's reactor cores may be named.
            CpuMask::parse(m, &reactor_cores)
                .map_err(|e| RpcError::invalid_params(format!("cpumask: {e}")))?
        }
        None => CpuMask::parse(&all_reactors_mask(&reactor_cores), &reactor_cores)
            .map_err(|e| RpcError::invalid_params(format!("cpumask: {e}")))?,
    };
    let socket = ctx
        .vhost
        .create(
            ControllerParams {
                name: p.ctrlr,
                bdev: p.dev_name,
                cpumask,
                readonly: p.readonly,
            },
            &ctx.registry,
            ctx.reactors.clone(),
        )
        .map_err(vhost_err)?;
    tracing::info!("vhost-user-blk controller on {}", socket.display());
    Ok(json!(true))
}

fn all_reactors_mask(cores: &[usize]) -> String {
    let list: Vec<String> = cores.iter().map(|c| c.to_string()).collect();
    format!("[{}]", list.join(","))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetControllers {
    #[serde(default)]
    name: Option<String>,
}

pub fn vhost_get_controllers(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    let p: GetControllers = match p {
        Some(_) => params(p)?,
        None => GetControllers { name: None },
    };
    let mut out = Vec::new();
    ctx.vhost.for_each(|c| {
        if p.name.as_ref().is_some_and(|n| *n != c.params.name) {
            return;
        }
        out.push(json!({
            "ctrlr": c.params.name,
            "cpumask": c.params.cpumask.to_hex(),
            "delay_base_us": c.shared.coalesce_delay_us.load(std::sync::atomic::Ordering::Relaxed),
            "iops_threshold": c.shared.iops_threshold.load(std::sync::atomic::Ordering::Relaxed),
            "socket": c.socket.display().to_string(),
            "sessions": [],
            "backend_specific": {
                "block": {
                    "readonly": c.params.readonly,
                    "bdev": c.params.bdev,
                    "transport": "vhost_user_blk",
                }
            },
            "requests": c.requests(),
        }));
    });
    if let Some(n) = &p.name {
        if out.is_empty() {
            return Err(vhost_err(VhostError::NotFound(n.clone())));
        }
    }
    Ok(Value::Array(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ByCtrlr {
    ctrlr: String,
}

pub fn vhost_delete_controller(ctx: &mut RpcContext, p: Option<&Value>) -> Result<Value, RpcError> {
    let p: ByCtrlr = params(p)?;
    ctx.vhost.delete(&p.ctrlr).map_err(vhost_err)?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetCoalescing {
    ctrlr: String,
    delay_base_us: u32,
    iops_threshold: u32,
}

/// Largest coalescing delay accepted, µs.
const MAX_COALESCING_DELAY_US: u32 = 1_000_000;

pub fn vhost_controller_set_coalescing(
    ctx: &mut RpcContext,
    p: Option<&Value>,
) -> Result<Value, RpcError> {
    let p: SetCoalescing = params(p)?;
    if p.delay_base_us > MAX_COALESCING_DELAY_US {
        return Err(RpcError::invalid_params(format!(
            "delay_base_us {} is over the limit of {MAX_COALESCING_DELAY_US}",
            p.delay_base_us
        )));
    }
    ctx.vhost
        .set_coalescing(&p.ctrlr, p.delay_base_us, p.iops_threshold)
        .map_err(vhost_err)?;
    Ok(json!(true))
}

/// The calls that recreate every controller (`framework_get_config` for "vhost_blk").
pub fn config_calls(ctx: &RpcContext) -> Vec<Value> {
    let mut calls = Vec::new();
    ctx.vhost.for_each(|c| {
        calls.push(json!({
            "method": "vhost_create_blk_controller",
            "params": {
                "ctrlr": c.params.name,
                "dev_name": c.params.bdev,
                "cpumask": c.params.cpumask.to_hex(),
                "readonly": c.params.readonly,
            }
        }));
        let delay = c
            .shared
            .coalesce_delay_us
            .load(std::sync::atomic::Ordering::Relaxed);
        let iops = c
            .shared
            .iops_threshold
            .load(std::sync::atomic::Ordering::Relaxed);
        if delay != 0 || iops != 0 {
            calls.push(json!({
                "method": "vhost_controller_set_coalescing",
                "params": {"ctrlr": c.params.name, "delay_base_us": delay, "iops_threshold": iops}
            }));
        }
    });
    calls
}

/// Applies a config's "vhost_blk" subsystem (after its bdevs, once the reactors run).
pub fn apply_config(
    ctx: &mut RpcContext,
    config: &crate::config::SpdkConfig,
) -> Result<(), String> {
    for sub in config
        .subsystems
        .iter()
        .filter(|s| s.subsystem == "vhost_blk")
    {
        for (index, call) in sub.config.as_deref().unwrap_or(&[]).iter().enumerate() {
            let p = Some(&call.params);
            let r = match call.method.as_str() {
                "vhost_create_blk_controller" => vhost_create_blk_controller(ctx, p),
                "vhost_controller_set_coalescing" => vhost_controller_set_coalescing(ctx, p),
                other => Err(RpcError::invalid_params(format!(
                    "method {other:?} is not a vhost_blk config method"
                ))),
            };
            r.map_err(|e| {
                format!(
                    "vhost_blk config entry {index} ({}): {}",
                    call.method, e.message
                )
            })?;
        }
    }
    Ok(())
}
