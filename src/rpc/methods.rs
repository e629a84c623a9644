//! The method table: every RPC's name, the states it may run in, and its handler.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::protocol::{RpcError, INVALID_STATE};
use super::{bdev, bench, framework, lvol, vhost};
use crate::bdev::BdevRegistry;
use crate::bench::RunningBench;
use crate::config::SpdkConfig;
use crate::reactor::Reactors;

/// SPDK's RPC states: before `framework_start_init` (only with `--wait-for-rpc`), and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcState {
    Startup,
    Runtime,
}

/// In which states a method may be called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    Startup,
    Runtime,
    Both,
}

impl Allowed {
    fn permits(self, state: RpcState) -> bool {
        matches!(
            (self, state),
            (Allowed::Both, _)
                | (Allowed::Startup, RpcState::Startup)
                | (Allowed::Runtime, RpcState::Runtime)
        )
    }
}

/// Changes the log filter; set up by `main`, which owns the subscriber.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send>;

/// An answer a handler could not give at once: polled by the RPC server on every pass until
/// it gives one. It must give one within a bound of its own (`UNLOAD_WAIT` for an lvstore's
/// delete); meanwhile the connection's later requests wait, and other clients are served.
pub type DeferredAnswer = Box<dyn FnMut() -> Option<Result<Value, RpcError>> + Send>;

/// Everything a handler may touch. Lives on reactor 0, inside the RPC server's poller.
pub struct RpcContext {
    pub registry: Arc<BdevRegistry>,
    pub reactors: Reactors,
    pub state: RpcState,
    pub set_log_level: SetLogLevel,
    pub log_level: String,
    /// A config to apply at `framework_start_init` (booted with `--wait-for-rpc`).
    pub pending_config: Option<SpdkConfig>,
    pub bench: Option<RunningBench>,
    pub last_bench_report: Option<Value>,
    /// Signal to raise once the current responses are written (`spdk_kill_instance`).
    pub kill_signal: Option<i32>,
    pub started: Instant,
    /// Pools (lvstores) loaded or created.
    pub pools: Arc<crate::lsv::pools::Pools>,
    /// vhost-user-blk controllers.
    pub vhost: Arc<crate::frontend::vhost_blk::VhostControllers>,
    /// Set by a handler whose answer must wait (its own return value is then not sent): the
    /// server takes it after the call.
    pub deferred: Option<DeferredAnswer>,
}

pub type Handler = fn(&mut RpcContext, Option<&Value>) -> Result<Value, RpcError>;
/// A handler that writes its result as JSON text itself (large answers: no `Value` tree).
pub type RawHandler = fn(&mut RpcContext, Option<&Value>) -> Result<Box<RawValue>, RpcError>;

#[derive(Clone, Copy)]
pub enum HandlerFn {
    Json(Handler),
    Raw(RawHandler),
}

/// What a method returned.
pub enum RpcResult {
    Json(Value),
    Raw(Box<RawValue>),
}

impl Serialize for RpcResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RpcResult::Json(v) => v.serialize(s),
            RpcResult::Raw(r) => r.serialize(s),
        }
    }
}

pub struct Method {
    pub name: &'static str,
    pub allowed: Allowed,
    pub handler: HandlerFn,
}

const fn m(name: &'static str, allowed: Allowed, handler: Handler) -> Method {
    Method {
        name,
        allowed,
        handler: HandlerFn::Json(handler),
    }
}

const fn raw(name: &'static str, allowed: Allowed, handler: RawHandler) -> Method {
    Method {
        name,
        allowed,
        handler: HandlerFn::Raw(handler),
    }
}

/// Every method, in the order `rpc_get_methods` lists them.
pub static METHODS: &[Method] = &[
    m("rpc_get_methods", Allowed::Both, framework::rpc_get_methods),
    m(
        "spdk_get_version",
        Allowed::Both,
        framework::spdk_get_version,
    ),
    m(
        "framework_start_init",
        Allowed::Startup,
        framework::framework_start_init,
    ),
    m(
        "framework_wait_init",
        Allowed::Both,
        framework::framework_wait_init,
    ),
    m(
        "framework_get_subsystems",
        Allowed::Both,
        framework::framework_get_subsystems,
    ),
    m(
        "framework_get_config",
        Allowed::Both,
        framework::framework_get_config,
    ),
    m(
        "framework_get_reactors",
        Allowed::Runtime,
        framework::framework_get_reactors,
    ),
    m(
        "thread_get_stats",
        Allowed::Runtime,
        framework::thread_get_stats,
    ),
    m(
        "log_set_print_level",
        Allowed::Both,
        framework::log_set_print_level,
    ),
    m(
        "log_get_print_level",
        Allowed::Both,
        framework::log_get_print_level,
    ),
    m(
        "spdk_kill_instance",
        Allowed::Both,
        framework::spdk_kill_instance,
    ),
    m("bdev_set_options", Allowed::Startup, bdev::bdev_set_options),
    m(
        "bdev_wait_for_examine",
        Allowed::Runtime,
        bdev::bdev_wait_for_examine,
    ),
    raw("bdev_get_bdevs", Allowed::Runtime, bdev::bdev_get_bdevs),
    m("bdev_get_iostat", Allowed::Runtime, bdev::bdev_get_iostat),
    m(
        "bdev_malloc_create",
        Allowed::Runtime,
        bdev::bdev_malloc_create,
    ),
    m(
        "bdev_malloc_delete",
        Allowed::Runtime,
        bdev::bdev_malloc_delete,
    ),
    m("bdev_null_create", Allowed::Runtime, bdev::bdev_null_create),
    m("bdev_null_delete", Allowed::Runtime, bdev::bdev_null_delete),
    m(
        "bdev_uring_create",
        Allowed::Runtime,
        bdev::bdev_uring_create,
    ),
    m(
        "bdev_uring_delete",
        Allowed::Runtime,
        bdev::bdev_uring_delete,
    ),
    m("bdev_aio_create", Allowed::Runtime, bdev::bdev_aio_create),
    m("bdev_aio_delete", Allowed::Runtime, bdev::bdev_aio_delete),
    m(
        "bdev_delay_create",
        Allowed::Runtime,
        bdev::bdev_delay_create,
    ),
    m(
        "bdev_delay_delete",
        Allowed::Runtime,
        bdev::bdev_delay_delete,
    ),
    m(
        "bdev_lvol_create_lvstore",
        Allowed::Runtime,
        lvol::bdev_lvol_create_lvstore,
    ),
    m(
        "bdev_lvol_get_lvstores",
        Allowed::Runtime,
        lvol::bdev_lvol_get_lvstores,
    ),
    m(
        "bdev_lvol_delete_lvstore",
        Allowed::Runtime,
        lvol::bdev_lvol_delete_lvstore,
    ),
    m("bdev_lvol_create", Allowed::Runtime, lvol::bdev_lvol_create),
    m(
        "bdev_lvol_get_lvols",
        Allowed::Runtime,
        lvol::bdev_lvol_get_lvols,
    ),
    m("bdev_lvol_delete", Allowed::Runtime, lvol::bdev_lvol_delete),
    m("bdev_lvol_resize", Allowed::Runtime, lvol::bdev_lvol_resize),
    m(
        "vhost_create_blk_controller",
        Allowed::Runtime,
        vhost::vhost_create_blk_controller,
    ),
    m(
        "vhost_get_controllers",
        Allowed::Runtime,
        vhost::vhost_get_controllers,
    ),
    m(
        "vhost_delete_controller",
        Allowed::Runtime,
        vhost::vhost_delete_controller,
    ),
    m(
        "vhost_controller_set_coalescing",
        Allowed::Runtime,
        vhost::vhost_controller_set_coalescing,
    ),
    m(
        "unblend_lsv_get_stats",
        Allowed::Runtime,
        lvol::unblend_lsv_get_stats,
    ),
    m(
        "unblend_bench_start",
        Allowed::Runtime,
        bench::unblend_bench_start,
    ),
    m(
        "unblend_bench_results",
        Allowed::Runtime,
        bench::unblend_bench_results,
    ),
];

impl Method {
    pub fn allowed_in(&self, state: RpcState) -> bool {
        self.allowed.permits(state)
    }
}

pub fn find(name: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.name == name)
}

/// A method for tests only, live when `UNBLEND_TEST_METHODS=1`: it panics, to show that a
/// bug in a handler becomes a -32603 answer and the appliance keeps serving.
static TEST_PANIC: Method = m("unblend_test_panic", Allowed::Both, |_, _| {
    panic!("unblend_test_panic called")
});

/// A method for tests only, live when `UNBLEND_TEST_METHODS=1`: it answers `ms`
/// milliseconds later (at most 10 s) through a deferred answer, to show that the connection's
/// later requests wait for it and other clients do not.
static TEST_DEFER: Method = m("unblend_test_defer", Allowed::Both, |ctx, p| {
    let ms = p
        .and_then(|p| p.get("ms"))
        .and_then(Value::as_u64)
        .filter(|&ms| ms <= 10_000)
        .ok_or_else(|| RpcError::invalid_params("ms: a number of milliseconds up to 10000"))?;
    let due = Instant::now() + std::time::Duration::from_millis(ms);
    ctx.deferred = Some(Box::new(move || {
        (Instant::now() >= due).then(|| Ok(Value::from(format!("deferred {ms} ms"))))
    }));
    Ok(Value::Null)
});

/// A method for tests only, live when `UNBLEND_TEST_METHODS=1`: it unloads lvstore
/// `lvs_name` (which must have no lvols left) without destroying it, so that a test can
/// examine the pool again on a new bdev over the same data. It answers once the base is let
/// go, or after `UNLOAD_WAIT`.
static TEST_UNLOAD: Method = m("unblend_test_unload_lvstore", Allowed::Runtime, |ctx, p| {
    let name = p
        .and_then(|p| p.get("lvs_name"))
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_params("lvs_name: the lvstore to unload"))?;
    if let Some(pool) = ctx.pools.get(name) {
        if !pool.volumes().is_empty() {
            return Err(RpcError::new(
                -libc::EBUSY,
                format!("lvstore {name:?} still has lvols"),
            ));
        }
    }
    let Some(removed) = ctx.pools.remove(name) else {
        return Err(RpcError::new(-libc::ENODEV, format!("no lvstore {name:?}")));
    };
    let pools = ctx.pools.clone();
    let deadline = Instant::now() + crate::lsv::pools::UNLOAD_WAIT;
    ctx.deferred = Some(Box::new(move || {
        (!pools.is_unloading(&removed) || Instant::now() >= deadline)
            .then_some(Ok(Value::Bool(true)))
    }));
    Ok(Value::Null)
});

fn test_methods_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("UNBLEND_TEST_METHODS").as_deref() == Ok("1"))
}

/// Runs `method` in the current state, with SPDK's errors for a wrong state. A handler that
/// panics (a bug) is answered with -32603 instead of taking reactor 0 down.
pub fn call(
    ctx: &mut RpcContext,
    method: &str,
    params: Option<&Value>,
) -> Result<RpcResult, RpcError> {
    let m = match find(method) {
        Some(m) => m,
        None if method == TEST_PANIC.name && test_methods_enabled() => &TEST_PANIC,
        None if method == TEST_DEFER.name && test_methods_enabled() => &TEST_DEFER,
        None if method == TEST_UNLOAD.name && test_methods_enabled() => &TEST_UNLOAD,
        None => return Err(RpcError::method_not_found()),
    };
    if !m.allowed.permits(ctx.state) {
        return Err(RpcError::new(
            INVALID_STATE,
            match ctx.state {
                RpcState::Startup => {
                    "Method may only be called after framework is initialized using \
                     framework_start_init RPC."
                }
                RpcState::Runtime => {
                    "Method may only be called before framework is initialized. Use \
                     --wait-for-rpc command line parameter and then issue this RPC before \
                     the framework_start_init RPC."
                }
            },
        ));
    }
    let handler = m.handler;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match handler {
        HandlerFn::Json(h) => h(ctx, params).map(RpcResult::Json),
        HandlerFn::Raw(h) => h(ctx, params).map(RpcResult::Raw),
    }))
    .unwrap_or_else(|_| {
        tracing::error!(method, "RPC handler panicked");
        Err(RpcError::internal(format!("{method} failed unexpectedly")))
    })
}
