//! One anonymous, page-aligned, pre-faulted memory region.

use std::io;
use std::ptr::NonNull;
use std::sync::Once;

pub const HUGEPAGE_BYTES: usize = 2 << 20;
pub const PAGE_BYTES: usize = 4096;

static NO_HUGEPAGES_WARNING: Once = Once::new();

/// Memory from `mmap`, unmapped on drop. Its address never changes while it lives.
pub struct DmaRegion {
    ptr: NonNull<u8>,
    len: usize,
    hugepages: bool,
}

// SAFETY: the region is plain memory owned by this value; moving the owner between threads is
// sound. Concurrent access to the bytes is governed by whoever hands out pointers into it.
unsafe impl Send for DmaRegion {}
// SAFETY: `&DmaRegion` only exposes the pointer and length, never the bytes themselves.
unsafe impl Sync for DmaRegion {}

impl DmaRegion {
    /// Maps `len` bytes (rounded up to a page). Tries 2 MiB hugepages first when
    /// `try_hugepages`; falls back to normal pages with one warning per process.
    pub fn new(len: usize, try_hugepages: bool) -> io::Result<DmaRegion> {
        Self::map_region(len, try_hugepages, libc::MAP_POPULATE)
    }

    /// Like `new` with normal pages, but faulted in on first touch instead of up front
    /// (for large RAM disks, which should cost memory only as they are written).
    pub fn new_lazy(len: usize) -> io::Result<DmaRegion> {
        Self::map_region(len, false, libc::MAP_NORESERVE)
    }

    fn map_region(len: usize, try_hugepages: bool, populate: i32) -> io::Result<DmaRegion> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty region"));
        }
        if try_hugepages {
            let huge_len = len.div_ceil(HUGEPAGE_BYTES) * HUGEPAGE_BYTES;
            if let Ok(ptr) = map(huge_len, libc::MAP_HUGETLB | populate) {
                return Ok(DmaRegion {
                    ptr,
                    len: huge_len,
                    hugepages: true,
                });
            }
            NO_HUGEPAGES_WARNING.call_once(|| {
                tracing::warn!(
                    "no free 2 MiB hugepages (see HugePages_Free in /proc/meminfo); \
                     I/O buffers use 4 KiB pages"
                );
            });
        }
        let len = len.div_ceil(PAGE_BYTES) * PAGE_BYTES;
        let ptr = map(len, populate)?;
        Ok(DmaRegion {
            ptr,
            len,
            hugepages: false,
        })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_hugepage_backed(&self) -> bool {
        self.hugepages
    }

    /// True when `[addr, addr+len)` lies wholly inside this region.
    pub fn contains(&self, addr: *const u8, len: usize) -> bool {
        let start = self.ptr.as_ptr() as usize;
        let a = addr as usize;
        a >= start
            && a.checked_add(len)
                .is_some_and(|end| end <= start + self.len)
    }
}

fn map(len: usize, extra_flags: i32) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions; the
    // result is checked below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra_flags,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(NonNull::new(ptr.cast()).expect("mmap never returns null on success"))
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and nothing uses them after drop.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_is_aligned_zeroed_and_bounded() {
        let r = DmaRegion::new(10_000, true).unwrap();
        assert_eq!(r.as_ptr() as usize % PAGE_BYTES, 0);
        assert!(r.len() >= 10_000);
        // SAFETY: the region is live and at least 10_000 bytes long.
        let bytes = unsafe { std::slice::from_raw_parts(r.as_ptr(), 10_000) };
        assert!(bytes.iter().all(|&b| b == 0));
        assert!(r.contains(r.as_ptr(), r.len()));
        assert!(!r.contains(r.as_ptr(), r.len() + 1));
        assert!(!r.contains(std::ptr::null(), 1));
    }

    #[test]
    fn empty_region_is_refused() {
        assert!(DmaRegion::new(0, false).is_err());
    }
}
