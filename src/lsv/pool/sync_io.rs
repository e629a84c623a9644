//! Blocking I/O on the base bdev for the control path: format, open and recovery, the volume
//! table, checkpoints written outside the cleaner. Never on a reactor's I/O path.

use super::*;

/// Requests a `SyncIo` keeps in flight at most (recovery's probes; everything else runs one
/// at a time).
const SYNC_IO_DEPTH: u32 = 32;
/// Blocks `SyncIo::read_blocks` reads in one call.
pub(super) const PROBE_BATCH: usize = 256;
/// The pieces `SyncIo::read_into` reads a long range in (recovery's checkpoint and segments).
const READ_PIECE_BYTES: usize = 256 << 10;

/// Blocking I/O on the base bdev for the control path (format, open, volume table).
pub(super) struct SyncIo {
    ch: IoChannel,
    pub(super) buf: DmaRegion,
}

impl SyncIo {
    pub(super) fn new(base: &BdevEntry, bytes: usize) -> Result<SyncIo, PoolError> {
        let ch = base
            .open_channel(&ChannelContext {
                queue_depth: SYNC_IO_DEPTH,
                buffers: None,
            })
            .map_err(|e| PoolError::Base(e.to_string()))?;
        let buf = DmaRegion::new(bytes, false).map_err(|e| PoolError::Base(e.to_string()))?;
        Ok(SyncIo { ch, buf })
    }

    pub(super) fn run(
        &mut self,
        io_type: IoType,
        offset: u64,
        len: usize,
        fua: bool,
    ) -> Result<(), PoolError> {
        assert!(len <= self.buf.len());
        let ptr = self.buf.as_ptr();
        self.run_on(io_type, offset, ptr, len, fua)
    }

    /// Runs one request on `len` bytes at `ptr` (the caller's memory, untouched meanwhile).
    pub(super) fn run_on(
        &mut self,
        io_type: IoType,
        offset: u64,
        ptr: *mut u8,
        len: usize,
        fua: bool,
    ) -> Result<(), PoolError> {
        assert!(len.is_multiple_of(BLOCK_BYTES) && offset.is_multiple_of(BLOCK_BYTES as u64));
        // SAFETY: the memory is the caller's and untouched while the request runs (we wait).
        let iov = unsafe { IoVec::from_raw(ptr, len) };
        let iovs = [iov];
        let data = io_type == IoType::Read || io_type == IoType::Write;
        self.ch
            .submit(
                &IoRequest {
                    io_type,
                    offset_blocks: if data { offset / BLOCK_BYTES as u64 } else { 0 },
                    num_blocks: if data { (len / BLOCK_BYTES) as u64 } else { 0 },
                    iovs: if data { &iovs } else { &[] },
                    fua,
                    tag: 0,
                },
                0,
            )
            .map_err(|e| PoolError::Io(e.to_string()))?;
        let mut out = Vec::with_capacity(4);
        loop {
            self.ch.poll(0, &mut out);
            if let Some(c) = out.pop() {
                return match c.status {
                    IoStatus::Success => Ok(()),
                    IoStatus::Failed(errno) => Err(PoolError::Io(
                        std::io::Error::from_raw_os_error(errno).to_string(),
                    )),
                };
            }
            std::thread::yield_now();
        }
    }

    /// Reads `len` bytes at `offset` into `ptr` (the caller's memory, untouched meanwhile) in
    /// pieces of `READ_PIECE_BYTES`, up to the channel's depth at once.
    pub(super) fn read_into(
        &mut self,
        offset: u64,
        ptr: *mut u8,
        len: usize,
    ) -> Result<(), PoolError> {
        assert!(len.is_multiple_of(BLOCK_BYTES));
        self.run_pieces(IoType::Read, len.div_ceil(READ_PIECE_BYTES), |i| {
            let at = i * READ_PIECE_BYTES;
            // SAFETY: inside the caller's `len` bytes.
            let dst = unsafe { ptr.add(at) };
            (offset + at as u64, dst, (len - at).min(READ_PIECE_BYTES))
        })
    }

    /// Reads the 4 KiB block at each of `offsets` (at most `PROBE_BATCH` of them) at once,
    /// into consecutive blocks of the buffer: block `i` of `bytes` holds `offsets[i]`.
    pub(super) fn read_blocks(&mut self, offsets: &[u64]) -> Result<(), PoolError> {
        assert!(offsets.len() <= PROBE_BATCH && offsets.len() * BLOCK_BYTES <= self.buf.len());
        let buf = self.buf.as_ptr();
        self.run_pieces(IoType::Read, offsets.len(), |i| {
            // SAFETY: block `i` of our buffer (checked above).
            let dst = unsafe { buf.add(i * BLOCK_BYTES) };
            (offsets[i], dst, BLOCK_BYTES)
        })
    }

    /// Writes zeroes to the 4 KiB block at byte offset `offset_of(i)` for each `i` below
    /// `count`, up to the channel's depth at once (format: a segment's first block, a journal
    /// slot). Every write reads the buffer's first block, zeroed first.
    pub(super) fn zero_blocks(
        &mut self,
        count: u64,
        offset_of: impl Fn(u64) -> u64,
    ) -> Result<(), PoolError> {
        self.bytes_mut(BLOCK_BYTES).fill(0);
        let zeroes = self.buf.as_ptr();
        self.run_pieces(IoType::Write, count as usize, |i| {
            (offset_of(i as u64), zeroes, BLOCK_BYTES)
        })
    }

    /// Runs `count` reads or writes of pieces, `piece(i)` = (byte offset, memory, bytes), up
    /// to the channel's depth at once, and waits for all of them. Each piece's memory must be
    /// left untouched by the caller until this returns (a read's may not be another's).
    fn run_pieces(
        &mut self,
        io_type: IoType,
        count: usize,
        piece: impl Fn(usize) -> (u64, *mut u8, usize),
    ) -> Result<(), PoolError> {
        debug_assert!(matches!(io_type, IoType::Read | IoType::Write));
        let (mut next, mut done) = (0, 0);
        let mut out = Vec::with_capacity(SYNC_IO_DEPTH as usize);
        let mut failed = None;
        let mut refused = None;
        // Until every piece submitted has completed: none may write into memory the caller
        // frees after an error.
        while done < next || (refused.is_none() && done < count) {
            while refused.is_none() && next < count && self.ch.in_flight() < self.ch.queue_depth() {
                let (offset, dst, len) = piece(next);
                debug_assert!(
                    offset.is_multiple_of(BLOCK_BYTES as u64) && len.is_multiple_of(BLOCK_BYTES)
                );
                // SAFETY: the caller's memory, untouched until every piece completes.
                let iov = unsafe { IoVec::from_raw(dst, len) };
                let r = self.ch.submit(
                    &IoRequest {
                        io_type,
                        offset_blocks: offset / BLOCK_BYTES as u64,
                        num_blocks: (len / BLOCK_BYTES) as u64,
                        iovs: &[iov],
                        fua: false,
                        tag: next as u64,
                    },
                    0,
                );
                match r {
                    Ok(()) => next += 1,
                    Err(e) => refused = Some(e),
                }
            }
            out.clear();
            self.ch.poll(0, &mut out);
            for c in &out {
                done += 1;
                if let IoStatus::Failed(errno) = c.status {
                    failed = Some(errno);
                }
            }
            if out.is_empty() {
                std::thread::yield_now();
            }
        }
        if let Some(e) = refused {
            return Err(PoolError::Io(e.to_string()));
        }
        match failed {
            None => Ok(()),
            Some(errno) => Err(PoolError::Io(
                std::io::Error::from_raw_os_error(errno).to_string(),
            )),
        }
    }

    pub(super) fn bytes(&self, len: usize) -> &[u8] {
        // SAFETY: no request is running; the region is at least `len` bytes.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr(), len) }
    }

    pub(super) fn bytes_mut(&mut self, len: usize) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.buf.as_ptr(), len) }
    }
}
