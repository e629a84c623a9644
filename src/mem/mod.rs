//! DMA-able memory: page-aligned regions (2 MiB hugepages when the system has them) and the
//! per-reactor pool of fixed-size I/O buffers carved from one region.

pub mod buffer_pool;
pub mod region;

pub use buffer_pool::{BufferPool, BufferPoolConfig, DmaBuf, PoolError};
pub use region::DmaRegion;

use std::cell::RefCell;
use std::rc::Rc;

thread_local! {
    static REACTOR_POOL: RefCell<Option<Rc<BufferPool>>> = const { RefCell::new(None) };
}

/// Creates this thread's buffer pool (called once per reactor thread at start).
pub fn init_thread_pool(config: BufferPoolConfig) -> Result<(), PoolError> {
    let pool = Rc::new(BufferPool::new(config)?);
    REACTOR_POOL.with(|p| *p.borrow_mut() = Some(pool));
    Ok(())
}

/// This thread's buffer pool, if `init_thread_pool` ran on it.
pub fn thread_pool() -> Option<Rc<BufferPool>> {
    REACTOR_POOL.with(|p| p.borrow().clone())
}
