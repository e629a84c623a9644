//! A per-reactor pool of fixed-size, 4 KiB-aligned I/O buffers carved from one `DmaRegion`.
//!
//! The pool belongs to one thread (it is `!Sync`); get and put are a pop and a push on a
//! preallocated free stack, so after start-up the I/O path allocates nothing.

use std::cell::{Cell, RefCell};
use std::ptr::NonNull;

use thiserror::Error;

use super::region::{DmaRegion, PAGE_BYTES};

/// Largest region one pool may map.
pub const MAX_POOL_BYTES: usize = 1 << 30;

#[derive(Debug, Error)]
pub enum PoolError {
    #[error("buffer size {0} is not a non-zero multiple of 4096")]
    BadBufferSize(usize),
    #[error(
        "a pool of {count} buffers of {buf_bytes} bytes exceeds the {MAX_POOL_BYTES}-byte limit"
    )]
    TooLarge { count: usize, buf_bytes: usize },
    #[error("cannot map buffer memory: {0}")]
    Map(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy)]
pub struct BufferPoolConfig {
    pub buf_bytes: usize,
    pub count: usize,
    pub try_hugepages: bool,
}

impl Default for BufferPoolConfig {
    fn default() -> Self {
        BufferPoolConfig {
            buf_bytes: 128 * 1024,
            count: 256,
            try_hugepages: true,
        }
    }
}

/// One buffer on loan from a pool. Give it back with `BufferPool::put`.
#[derive(Debug)]
pub struct DmaBuf {
    ptr: NonNull<u8>,
    len: usize,
    index: u32,
}

impl DmaBuf {
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the buffer is `len` bytes inside a live region, and this loan is exclusive.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

pub struct BufferPool {
    region: DmaRegion,
    buf_bytes: usize,
    count: usize,
    free: RefCell<Vec<u32>>,
    on_loan: RefCell<Vec<bool>>,
    low_water: Cell<usize>,
}

impl BufferPool {
    pub fn new(config: BufferPoolConfig) -> Result<BufferPool, PoolError> {
        if config.buf_bytes == 0 || !config.buf_bytes.is_multiple_of(PAGE_BYTES) {
            return Err(PoolError::BadBufferSize(config.buf_bytes));
        }
        let total = config
            .count
            .checked_mul(config.buf_bytes)
            .filter(|&t| t > 0 && t <= MAX_POOL_BYTES)
            .ok_or(PoolError::TooLarge {
                count: config.count,
                buf_bytes: config.buf_bytes,
            })?;
        let region = DmaRegion::new(total, config.try_hugepages)?;
        Ok(BufferPool {
            region,
            buf_bytes: config.buf_bytes,
            count: config.count,
            free: RefCell::new((0..config.count as u32).rev().collect()),
            on_loan: RefCell::new(vec![false; config.count]),
            low_water: Cell::new(config.count),
        })
    }

    /// Takes a buffer, or None when all are on loan.
    pub fn get(&self) -> Option<DmaBuf> {
        let index = self.free.borrow_mut().pop()?;
        let mut on_loan = self.on_loan.borrow_mut();
        debug_assert!(!on_loan[index as usize], "buffer {index} handed out twice");
        on_loan[index as usize] = true;
        let free_now = self.free.borrow().len();
        if free_now < self.low_water.get() {
            self.low_water.set(free_now);
        }
        // SAFETY: index < count, so the offset stays inside the region.
        let ptr = unsafe { self.region.as_ptr().add(index as usize * self.buf_bytes) };
        Some(DmaBuf {
            ptr: NonNull::new(ptr).expect("region pointer is non-null"),
            len: self.buf_bytes,
            index,
        })
    }

    /// Returns a buffer. Panics if it came from another pool or was already returned: both are
    /// bugs in our own code, not input.
    pub fn put(&self, buf: DmaBuf) {
        assert!(
            self.region.contains(buf.ptr.as_ptr(), buf.len),
            "buffer returned to the wrong pool"
        );
        let mut on_loan = self.on_loan.borrow_mut();
        assert!(
            on_loan[buf.index as usize],
            "buffer {} returned twice",
            buf.index
        );
        on_loan[buf.index as usize] = false;
        self.free.borrow_mut().push(buf.index);
    }

    pub fn buf_bytes(&self) -> usize {
        self.buf_bytes
    }

    pub fn capacity(&self) -> usize {
        self.count
    }

    pub fn available(&self) -> usize {
        self.free.borrow().len()
    }

    /// The fewest buffers that were ever free at once.
    pub fn low_water(&self) -> usize {
        self.low_water.get()
    }

    /// The region all buffers live in (for registering with io_uring or an IOMMU).
    pub fn region(&self) -> &DmaRegion {
        &self.region
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(count: usize) -> BufferPool {
        BufferPool::new(BufferPoolConfig {
            buf_bytes: 8192,
            count,
            try_hugepages: false,
        })
        .unwrap()
    }

    #[test]
    fn get_put_cycle_reuses_buffers() {
        let p = pool(4);
        let bufs: Vec<DmaBuf> = (0..4).map(|_| p.get().unwrap()).collect();
        assert!(p.get().is_none());
        for b in &bufs {
            assert_eq!(b.as_ptr() as usize % 4096, 0);
            assert!(p.region().contains(b.as_ptr(), b.len()));
        }
        let first = bufs[0].as_ptr();
        for b in bufs {
            p.put(b);
        }
        assert_eq!(p.available(), 4);
        assert_eq!(p.low_water(), 0);
        // LIFO: the most recently returned buffer comes back first.
        let again = p.get().unwrap();
        assert_ne!(again.as_ptr(), first);
        p.put(again);
    }

    #[test]
    fn buffers_do_not_overlap() {
        let p = pool(3);
        let mut a = p.get().unwrap();
        let mut b = p.get().unwrap();
        a.as_mut_slice().fill(0xaa);
        b.as_mut_slice().fill(0xbb);
        assert!(a.as_slice().iter().all(|&x| x == 0xaa));
        p.put(a);
        p.put(b);
    }

    #[test]
    fn bad_configs_are_refused() {
        let bad = |buf_bytes, count| {
            BufferPool::new(BufferPoolConfig {
                buf_bytes,
                count,
                try_hugepages: false,
            })
            .is_err()
        };
        assert!(bad(1000, 4));
        assert!(bad(0, 4));
        assert!(bad(4096, 0));
        assert!(bad(1 << 20, 4096));
    }

    #[test]
    #[should_panic(expected = "returned twice")]
    fn double_put_is_caught() {
        let p = pool(2);
        let b = p.get().unwrap();
        let fake = DmaBuf {
            ptr: b.ptr,
            len: b.len,
            index: b.index,
        };
        p.put(b);
        p.put(fake);
    }
}
