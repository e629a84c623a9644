//! Inflight tracking (vhost-user INFLIGHT_SHMFD): which requests were popped from the avail ring
//! but not yet returned, kept in shared memory that the front end (QEMU) holds on to. When the
//! appliance dies and a new one reconnects, QEMU hands the same memory back, and the new poller
//! runs those requests again before it takes new ones, so a guest loses no request.
//!
//! The region is the back end's own format (QEMU never reads it). Format version 1, per queue,
//! `queue_region_bytes(size)` bytes, queues one after another:
//!
//! ```text
//! 0   u32  magic "UBIF" (0x46494255)
//! 4   u16  version (1)
//! 6   u16  queue size
//! 8   u16  used_idx: the used ring's index after the last entry recorded here
//! 10  [u8; 6] padding
//! 16  u64  counter: the next pop's sequence number
//! 24  [u8; 40] padding (to 64)
//! 64  entry[queue size], 16 bytes each: u8 inflight, [u8; 7] padding, u64 counter
//! ```
//!
//! A new region is all zeroes, which reads as "nothing in flight". Recovery (`recover`) first
//! clears the entries of any used-ring entries written after `used_idx` (a crash between writing
//! the used ring and clearing the entry), then counts what is left in flight: the avail ring's
//! next index is the used index plus that count, since every popped request is either used or
//! still in flight.

use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

const MAGIC: u32 = 0x4649_4255;
const VERSION: u16 = 1;
const HEADER_BYTES: usize = 64;
const ENTRY_BYTES: usize = 16;
/// Largest region accepted from a front end (64 queues of 1024 entries is about 1 MiB).
pub const MAX_REGION_BYTES: u64 = 16 << 20;

/// Bytes one queue's part of the region takes.
pub fn queue_region_bytes(queue_size: u16) -> usize {
    (HEADER_BYTES + ENTRY_BYTES * queue_size as usize).next_multiple_of(64)
}

/// A mapped inflight region; unmapped when the last queue lets go of it.
pub struct InflightMap {
    base: *mut u8,
    len: usize,
    pub num_queues: u16,
    pub queue_size: u16,
}

// SAFETY: the mapping is plain shared memory; each queue's part is touched by one poller at a
// time (the control thread hands a queue's part to exactly one poller, and gets it back when the
// poller stops), so sharing the map between threads is sound.
unsafe impl Send for InflightMap {}
unsafe impl Sync for InflightMap {}

impl Drop for InflightMap {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` came from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

impl InflightMap {
    /// Creates a new zeroed region in a memfd; returns the map and the fd to send.
    pub fn create(
        num_queues: u16,
        queue_size: u16,
    ) -> std::io::Result<(InflightMap, std::fs::File)> {
        let len = queue_region_bytes(queue_size) * num_queues as usize;
        if num_queues == 0 || queue_size == 0 || len as u64 > MAX_REGION_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("inflight region for {num_queues} queues of {queue_size} is out of bounds"),
            ));
        }
        // SAFETY: memfd_create with a NUL-terminated name; the fd is owned by the File below.
        let fd = unsafe {
            libc::memfd_create(
                c"unblend-inflight".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.set_len(len as u64)?;
        // The front end gets this fd: sealed, it cannot shrink the region under us (touching
        // a truncated mapping would fault the appliance).
        // SAFETY: fcntl on a descriptor we own.
        if unsafe {
            libc::fcntl(
                fd,
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let map = Self::map(&file, 0, len as u64, num_queues, queue_size)?;
        Ok((map, file))
    }

    /// Maps a region the front end handed over.
    pub fn map(
        file: &std::fs::File,
        offset: u64,
        len: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> std::io::Result<InflightMap> {
        let need = queue_region_bytes(queue_size) as u64 * num_queues as u64;
        if len < need || len > MAX_REGION_BYTES || num_queues == 0 || queue_size == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("inflight region of {len} bytes does not fit {num_queues} queues of {queue_size}"),
            ));
        }
        // A mapping past the file's end would fault (SIGBUS) when touched.
        let file_bytes = file.metadata()?.len();
        if offset.checked_add(len).is_none_or(|end| end > file_bytes) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("inflight region of {len} bytes at {offset} does not fit its {file_bytes}-byte file"),
            ));
        }
        // SAFETY: a shared mapping of a file we hold; the result is checked for MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(InflightMap {
            base: base as *mut u8,
            len: len as usize,
            num_queues,
            queue_size,
        })
    }

    /// Queue `index`'s part, for a queue of `size` entries (at most the region's queue size).
    pub fn queue(self: &Arc<Self>, index: u16, size: u16) -> Option<InflightQueue> {
        if index >= self.num_queues || size > self.queue_size || size == 0 {
            return None;
        }
        let stride = queue_region_bytes(self.queue_size);
        // SAFETY: index < num_queues and the map is at least num_queues * stride bytes.
        let base = unsafe { self.base.add(stride * index as usize) };
        let mut q = InflightQueue {
            base,
            size,
            _map: self.clone(),
        };
        if q.read_u32(0) != MAGIC || q.read_u16(4) != VERSION || q.read_u16(6) != size {
            // New (zeroed) or from a queue of another size: start it afresh.
            q.reset();
        }
        Some(q)
    }
}

/// One queue's part of the inflight region.
pub struct InflightQueue {
    base: *mut u8,
    size: u16,
    _map: Arc<InflightMap>,
}

// SAFETY: see `InflightMap`; one poller owns a queue's part at a time.
unsafe impl Send for InflightQueue {}

impl InflightQueue {
    fn at(&self, off: usize) -> *mut u8 {
        debug_assert!(off + 8 <= queue_region_bytes(self.size));
        // SAFETY: every offset used is inside this queue's part (asserted above).
        unsafe { self.base.add(off) }
    }
    fn read_u16(&self, off: usize) -> u16 {
        // SAFETY: in bounds (`at`), aligned (all offsets used are multiples of the size).
        unsafe { std::ptr::read_volatile(self.at(off) as *const u16) }
    }
    fn read_u32(&self, off: usize) -> u32 {
        // SAFETY: as `read_u16`.
        unsafe { std::ptr::read_volatile(self.at(off) as *const u32) }
    }
    fn read_u64(&self, off: usize) -> u64 {
        // SAFETY: as `read_u16`.
        unsafe { std::ptr::read_volatile(self.at(off) as *const u64) }
    }
    fn write_u8(&mut self, off: usize, v: u8) {
        // SAFETY: as `read_u16`.
        unsafe { std::ptr::write_volatile(self.at(off), v) }
    }
    fn write_u16(&mut self, off: usize, v: u16) {
        // SAFETY: as `read_u16`.
        unsafe { std::ptr::write_volatile(self.at(off) as *mut u16, v) }
    }
    fn write_u32(&mut self, off: usize, v: u32) {
        // SAFETY: as `read_u16`.
        unsafe { std::ptr::write_volatile(self.at(off) as *mut u32, v) }
    }
    fn write_u64(&mut self, off: usize, v: u64) {
        // SAFETY: as `read_u16`.
        unsafe { std::ptr::write_volatile(self.at(off) as *mut u64, v) }
    }

    fn reset(&mut self) {
        for i in 0..self.size as usize {
            self.write_u8(HEADER_BYTES + i * ENTRY_BYTES, 0);
            self.write_u64(HEADER_BYTES + i * ENTRY_BYTES + 8, 0);
        }
        self.write_u16(8, 0);
        self.write_u64(16, 1);
        self.write_u16(6, self.size);
        self.write_u16(4, VERSION);
        self.write_u32(0, MAGIC);
    }

    fn entry(head: u16) -> usize {
        HEADER_BYTES + head as usize * ENTRY_BYTES
    }

    /// Records that `head` was taken from the avail ring.
    #[inline]
    pub fn mark_popped(&mut self, head: u16) {
        if head >= self.size {
            return;
        }
        // The front end can write this region: never trust the counter not to be at the end.
        let counter = self.read_u64(16);
        self.write_u64(16, counter.wrapping_add(1));
        self.write_u64(Self::entry(head) + 8, counter);
        self.write_u8(Self::entry(head), 1);
    }

    /// Records that `head` went to the used ring, which now stands at `used_idx`.
    #[inline]
    pub fn mark_used(&mut self, head: u16, used_idx: u16) {
        if head < self.size {
            self.write_u8(Self::entry(head), 0);
        }
        self.write_u16(8, used_idx);
    }

    /// Brings the region in line with the used ring at `used_ring` and returns the used index,
    /// the avail index to start from, and the heads to run again, oldest first.
    pub fn recover(
        &mut self,
        mem: &GuestMemoryMmap,
        used_ring: GuestAddress,
    ) -> Option<(u16, u16, Vec<u16>)> {
        let used_idx: u16 = mem.read_obj(used_ring.checked_add(2)?).ok()?;
        let recorded = self.read_u16(8);
        let lag = used_idx.wrapping_sub(recorded);
        tracing::debug!(used_idx, recorded, "inflight recovery");
        if lag != 0 && lag <= self.size {
            // Entries written to the used ring after the last one recorded here were finished.
            for i in 0..lag {
                let slot = recorded.wrapping_add(i) % self.size;
                let at = used_ring.checked_add(4 + 8 * slot as u64)?;
                let id: u32 = mem.read_obj(at).ok()?;
                if id < self.size as u32 {
                    self.write_u8(Self::entry(id as u16), 0);
                }
            }
        }
        self.write_u16(8, used_idx);
        let mut heads: Vec<(u64, u16)> = (0..self.size)
            .filter(|&h| self.read_u16(Self::entry(h)) & 0xff == 1)
            .map(|h| (self.read_u64(Self::entry(h) + 8), h))
            .collect();
        heads.sort_unstable();
        let next_avail = used_idx.wrapping_add(heads.len() as u16);
        Some((
            used_idx,
            next_avail,
            heads.into_iter().map(|(_, h)| h).collect(),
        ))
    }
}

/// Walks the descriptor chain that starts at `head`, following one indirect table, at most
/// `size` descriptors (or the table's length): a loop ends the walk, never hangs it.
pub fn walk_chain(
    mem: &GuestMemoryMmap,
    desc_table: GuestAddress,
    size: u16,
    head: u16,
) -> impl Iterator<Item = (GuestAddress, u32, bool)> + '_ {
    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;
    const F_INDIRECT: u16 = 4;
    let mut table = desc_table;
    let mut table_len = size;
    let mut next = Some(head);
    let mut ttl = size as u32;
    let mut indirect = false;
    // A chain may not carry more than 2^32 bytes in all (virtio 1.2, 2.7.5.2).
    let mut total_bytes: u32 = 0;
    std::iter::from_fn(move || loop {
        let i = next?;
        if ttl == 0 || i >= table_len {
            return None;
        }
        ttl -= 1;
        let at = table.checked_add(16 * i as u64)?;
        let mut raw = [0u8; 16];
        mem.read_slice(&mut raw, at).ok()?;
        let addr = u64::from_le_bytes(raw[0..8].try_into().ok()?);
        let len = u32::from_le_bytes(raw[8..12].try_into().ok()?);
        let flags = u16::from_le_bytes(raw[12..14].try_into().ok()?);
        let nx = u16::from_le_bytes(raw[14..16].try_into().ok()?);
        if flags & F_INDIRECT != 0 {
            // An indirect table is no longer than the queue (virtio 1.2, 2.7.5.3.1).
            if indirect || !len.is_multiple_of(16) || len / 16 > size as u32 || len == 0 {
                return None;
            }
            indirect = true;
            table = GuestAddress(addr);
            table_len = (len / 16) as u16;
            ttl = table_len as u32;
            next = Some(0);
            continue;
        }
        total_bytes = total_bytes.checked_add(len)?;
        next = (flags & F_NEXT != 0).then_some(nx);
        return Some((GuestAddress(addr), len, flags & F_WRITE != 0));
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const USED: u64 = 0x1000;

    /// Writes used-ring entry `slot` (id `head`) and the used index, as a device does.
    fn used(mem: &GuestMemoryMmap, slot: u16, head: u16, idx: u16) {
        mem.write_obj(head as u32, GuestAddress(USED + 4 + 8 * slot as u64))
            .unwrap();
        mem.write_obj(idx, GuestAddress(USED + 2)).unwrap();
    }

    #[test]
    fn a_new_appliance_finds_what_was_in_flight() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let (map, file) = InflightMap::create(2, 8).unwrap();
        let map = Arc::new(map);
        let mut q = map.queue(1, 8).unwrap();
        assert_eq!(q.recover(&mem, GuestAddress(USED)), Some((0, 0, vec![])));
        q.mark_popped(3);
        q.mark_popped(5);
        q.mark_popped(6);
        used(&mem, 0, 5, 1);
        q.mark_used(5, 1);
        // A crash after the used ring got head 6 but before the region was told.
        used(&mem, 1, 6, 2);
        drop(q);
        drop(map);
        // The next appliance maps the same memory (QEMU hands the fd back).
        let len = queue_region_bytes(8) as u64 * 2;
        // A region past the file's end is refused (touching it would fault).
        assert!(InflightMap::map(&file, 4096, len, 2, 8).is_err());
        let map = Arc::new(InflightMap::map(&file, 0, len, 2, 8).unwrap());
        let mut q = map.queue(1, 8).unwrap();
        // Used index 2; head 3 still in flight, so the avail ring resumes at 3.
        assert_eq!(q.recover(&mem, GuestAddress(USED)), Some((2, 3, vec![3])));
        // Queue 0 was never used and holds nothing.
        let mut q0 = map.queue(0, 8).unwrap();
        assert_eq!(q0.recover(&mem, GuestAddress(0x2000)), Some((0, 0, vec![])));
        // A queue of another size starts afresh.
        assert!(map.queue(1, 16).is_none());
        let mut q4 = map.queue(1, 4).unwrap();
        assert_eq!(
            q4.recover(&mem, GuestAddress(USED)).unwrap().2,
            Vec::<u16>::new()
        );
    }
}
