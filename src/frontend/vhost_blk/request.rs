//! One virtio-blk request: its descriptor chain checked against the guest memory map and turned
//! into what the bdev layer needs (virtio 1.2, section 5.2.6).
//!
//! A request is a chain of descriptors: a 16-byte device-readable header (`type`, `reserved`,
//! `sector`), then the data (device-readable for writes, device-writable for reads), then one
//! device-writable status byte. VERSION_1 lets a driver lay that out over descriptors any way it
//! likes, so the parser reads the header as the first 16 bytes of the readable part and the status
//! as the last byte of the writable part; whatever lies between is data.
//!
//! Nothing here trusts the guest: every descriptor's address and length must lie inside one mapped
//! region, readable descriptors must come before writable ones, and the chain is bounded
//! (`MAX_CHAIN_DESCS`; the virtio-queue iterator also stops loops at the queue or table size).
//! A chain that breaks a rule is an `Err` with the reason, never a panic.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::bdev::{IoType, IoVec, MAX_DATA_BYTES, MAX_IOVS};

/// virtio-blk request types (`VIRTIO_BLK_T_*`).
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;

/// Status byte values (`VIRTIO_BLK_S_*`).
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// Length of GET_ID's answer.
pub const ID_BYTES: usize = 20;
/// virtio-blk sectors are always 512 bytes, whatever the block size.
pub const SECTOR_BYTES: u64 = 512;
/// The write-zeroes flag that lets the device unmap.
const WRITE_ZEROES_F_UNMAP: u32 = 1;

/// Most data segments one request may carry; advertised as `seg_max`.
pub const SEG_MAX: usize = MAX_IOVS - 1;
/// Most descriptors a chain may have: header and status may each share or take their own.
pub const MAX_CHAIN_DESCS: usize = SEG_MAX + 2;

/// What a parsed request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkOp {
    /// A bdev I/O.
    Io(IoType),
    /// GET_ID: answered by the front end itself.
    GetId,
}

/// Most guest memory regions a `HostMap` holds (vhost-user's memory slots).
pub const MAX_REGIONS: usize = 32;

/// Guest-physical to host addresses, for the regions of one guest memory map: a short linear
/// scan, cheaper per request than the general lookup (the map has one to a few regions).
pub struct HostMap {
    /// (guest address, length, host address), sorted by guest address.
    regions: [(u64, u64, usize); MAX_REGIONS],
    n: usize,
}

impl HostMap {
    /// The map of `mem`. The host addresses stay valid while `mem` lives.
    pub fn of(mem: &GuestMemoryMmap) -> HostMap {
        let mut m = HostMap {
            regions: [(0, 0, 0); MAX_REGIONS],
            n: 0,
        };
        for r in mem.iter().take(MAX_REGIONS) {
            m.regions[m.n] = (r.start_addr().0, r.len(), r.as_ptr() as usize);
            m.n += 1;
        }
        m
    }

    /// The host address of `len` guest bytes at `gpa`, if they lie inside one region.
    #[inline]
    pub fn host(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        for &(start, size, host) in &self.regions[..self.n] {
            let off = gpa.wrapping_sub(start);
            if gpa >= start && off < size {
                return (len <= size - off).then_some((host + off as usize) as *mut u8);
            }
        }
        None
    }

    /// A copy of the 16 guest bytes at `gpa` (a request header, a discard range).
    #[inline]
    pub fn read16(&self, gpa: u64) -> Option<[u8; 16]> {
        let p = self.host(gpa, 16)?;
        let mut out = [0u8; 16];
        // SAFETY: 16 bytes inside a mapped guest region (checked by `host`).
        unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), 16) };
        Some(out)
    }
}

/// A request ready to run. `iovs[..n_iovs]` point into guest memory.
pub struct BlkRequest {
    pub op: BlkOp,
    pub offset_blocks: u64,
    pub num_blocks: u64,
    pub iovs: [IoVec; SEG_MAX],
    pub n_iovs: usize,
    /// Where the status byte goes (host address inside guest memory).
    pub status: *mut u8,
    /// What the used ring reports as written: the data read plus the status byte.
    pub used_len: u32,
}

/// Why a chain was refused. The request is answered with IOERR (or UNSUPP) when it has a
/// status byte; otherwise it is returned unused with length 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No writable byte at the end for the status: nothing can be reported.
    NoStatus,
    /// The chain breaks a rule; answer IOERR.
    Bad(&'static str),
    /// A request type this device does not do (or a read-only device asked to write).
    Unsupported,
    /// More descriptors than any request may have: walking on could take a hostile guest's
    /// 65,535-entry indirect table per request, so it is returned unused at once.
    TooLong,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NoStatus => "chain has no writable status byte",
            Refusal::Bad(why) => why,
            Refusal::Unsupported => "unsupported request type",
            Refusal::TooLong => "chain is longer than any request the device takes",
        }
    }
}

/// What the parser needs to know of the device.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub block_size: u32,
    pub num_blocks: u64,
    /// The bdev's limits per READ or WRITE: iovecs and blocks.
    pub max_segs: usize,
    pub max_rw_blocks: u64,
    pub readonly: bool,
}

#[derive(Clone, Copy)]
struct Seg {
    addr: GuestAddress,
    len: u32,
    writable: bool,
}

/// Why a chain was refused, and where its status byte is (if it has one).
pub type ParseError = (Refusal, Option<*mut u8>);

/// Parses chains into one reusable request, so nothing is built or zeroed per request.
pub struct ChainParser {
    segs: [Seg; MAX_CHAIN_DESCS],
    pub req: BlkRequest,
}

impl Default for ChainParser {
    fn default() -> Self {
        ChainParser {
            segs: [Seg {
                addr: GuestAddress(0),
                len: 0,
                writable: false,
            }; MAX_CHAIN_DESCS],
            req: BlkRequest {
                op: BlkOp::GetId,
                offset_blocks: 0,
                num_blocks: 0,
                iovs: [IoVec::empty(); SEG_MAX],
                n_iovs: 0,
                status: std::ptr::null_mut(),
                used_len: 0,
            },
        }
    }
}

impl ChainParser {
    /// Parses one chain into `self.req`. `descs` yields (address, length, device-writable) in
    /// chain order. On refusal the status byte's address (if any) comes back with the reason,
    /// so the caller can still answer the guest.
    pub fn parse(
        &mut self,
        map: &HostMap,
        descs: impl Iterator<Item = (GuestAddress, u32, bool)>,
        geo: &Geometry,
    ) -> Result<(), ParseError> {
        parse_chain(&mut self.segs, &mut self.req, map, descs, geo)
    }
}

fn parse_chain(
    segs: &mut [Seg; MAX_CHAIN_DESCS],
    req: &mut BlkRequest,
    map: &HostMap,
    descs: impl Iterator<Item = (GuestAddress, u32, bool)>,
    geo: &Geometry,
) -> Result<(), ParseError> {
    let mut n = 0usize;
    let mut too_long = false;
    let mut misordered = false;
    let mut last: Option<Seg> = None;
    for (addr, len, writable) in descs.take(MAX_CHAIN_DESCS + 1) {
        let seg = Seg {
            addr,
            len,
            writable,
        };
        if let Some(prev) = last {
            if prev.writable && !writable {
                misordered = true;
            }
        }
        last = Some(seg);
        if n < MAX_CHAIN_DESCS {
            segs[n] = seg;
            n += 1;
        } else {
            too_long = true;
        }
    }
    if too_long {
        return Err((Refusal::TooLong, None));
    }
    // The status byte: the last byte of the last descriptor, which must be writable.
    let status = match last {
        Some(s) if s.writable && s.len >= 1 => {
            match s
                .addr
                .0
                .checked_add(s.len as u64 - 1)
                .and_then(|a| map.host(a, 1))
            {
                Some(p) => p,
                None => return Err((Refusal::NoStatus, None)),
            }
        }
        _ => return Err((Refusal::NoStatus, None)),
    };
    let fail = |why: &'static str| Err((Refusal::Bad(why), Some(status)));
    if misordered {
        return fail("a device-readable descriptor follows a device-writable one");
    }
    let segs = &mut segs[..n];
    // The header: the first 16 bytes, from the first descriptor.
    let head = segs[0];
    if head.writable || head.len < 16 {
        return fail("header is not 16 device-readable bytes in the first descriptor");
    }
    let Some(header) = map.read16(head.addr.0) else {
        return fail("header lies outside guest memory");
    };
    let req_type = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    // What remains: readable bytes after the header, writable bytes before the status.
    segs[0].addr = GuestAddress(head.addr.0 + 16);
    segs[0].len -= 16;
    let last_i = segs.len() - 1;
    segs[last_i].len -= 1;

    req.op = BlkOp::Io(IoType::Flush);
    req.offset_blocks = 0;
    req.num_blocks = 0;
    req.n_iovs = 0;
    req.status = status;
    req.used_len = 1;
    let (readable_bytes, writable_bytes) = segs.iter().fold((0u64, 0u64), |(r, w), s| {
        if s.writable {
            (r, w + s.len as u64)
        } else {
            (r + s.len as u64, w)
        }
    });
    let bs = geo.block_size as u64;
    match req_type {
        T_IN | T_OUT => {
            let write = req_type == T_OUT;
            if write && geo.readonly {
                return Err((Refusal::Unsupported, Some(status)));
            }
            let (data_bytes, other_bytes) = if write {
                (readable_bytes, writable_bytes)
            } else {
                (writable_bytes, readable_bytes)
            };
            if other_bytes != 0 {
                return fail("data descriptors point the wrong way for the request type");
            }
            if data_bytes == 0
                || data_bytes > MAX_DATA_BYTES
                || !data_bytes.is_multiple_of(bs)
                || data_bytes / bs > geo.max_rw_blocks
            {
                return fail("data length is zero, too long, or not a multiple of the block size");
            }
            let start = match sector_to_block(sector, bs) {
                Some(b) => b,
                None => return fail("sector is not aligned to the block size"),
            };
            let count = data_bytes / bs;
            if start
                .checked_add(count)
                .is_none_or(|end| end > geo.num_blocks)
            {
                return fail("request lies beyond the end of the device");
            }
            for s in segs.iter().filter(|s| s.len > 0) {
                if req.n_iovs == SEG_MAX.min(geo.max_segs) {
                    return fail("request has more data segments than seg_max");
                }
                match map.host(s.addr.0, s.len as u64) {
                    // SAFETY (of the IoVec's promise): the pointer lies in a mapping the poller
                    // keeps alive (it holds the memory map) until this request completes, and
                    // the guest gave the range to the device until it is returned used.
                    Some(ptr) => {
                        req.iovs[req.n_iovs] = unsafe { IoVec::from_raw(ptr, s.len as usize) }
                    }
                    None => return fail("a data descriptor lies outside guest memory"),
                }
                req.n_iovs += 1;
            }
            req.op = BlkOp::Io(if write { IoType::Write } else { IoType::Read });
            req.offset_blocks = start;
            req.num_blocks = count;
            if !write {
                req.used_len = (data_bytes + 1) as u32;
            }
        }
        T_FLUSH => {
            req.op = BlkOp::Io(IoType::Flush);
        }
        T_GET_ID => {
            if readable_bytes != 0 || writable_bytes == 0 {
                return fail("GET_ID needs a writable buffer and no readable data");
            }
            // The answer goes into the first writable data segment.
            let seg = segs
                .iter()
                .find(|s| s.writable && s.len > 0)
                .expect("writable bytes exist");
            let len = (seg.len as usize).min(ID_BYTES);
            match map.host(seg.addr.0, len as u64) {
                // SAFETY: as above; GET_ID is answered before the chain is returned.
                Some(ptr) => req.iovs[0] = unsafe { IoVec::from_raw(ptr, len) },
                None => return fail("GET_ID's buffer lies outside guest memory"),
            }
            req.n_iovs = 1;
            req.op = BlkOp::GetId;
            req.used_len = len as u32 + 1;
        }
        T_DISCARD | T_WRITE_ZEROES => {
            if geo.readonly {
                return Err((Refusal::Unsupported, Some(status)));
            }
            if writable_bytes != 0 || readable_bytes != 16 {
                return fail("discard and write-zeroes take exactly one 16-byte range");
            }
            let seg = segs
                .iter()
                .find(|s| !s.writable && s.len > 0)
                .expect("readable bytes exist");
            if seg.len != 16 {
                return fail("a discard range is split over descriptors");
            }
            let Some(range) = map.read16(seg.addr.0) else {
                return fail("discard range lies outside guest memory");
            };
            let r_sector = u64::from_le_bytes(range[0..8].try_into().expect("8 bytes"));
            let r_sectors = u32::from_le_bytes(range[8..12].try_into().expect("4 bytes"));
            let flags = u32::from_le_bytes(range[12..16].try_into().expect("4 bytes"));
            let zeroes = req_type == T_WRITE_ZEROES;
            let allowed_flags = if zeroes { WRITE_ZEROES_F_UNMAP } else { 0 };
            if flags & !allowed_flags != 0 {
                return Err((Refusal::Unsupported, Some(status)));
            }
            let start = match sector_to_block(r_sector, bs) {
                Some(b) => b,
                None => return fail("range start is not aligned to the block size"),
            };
            let bytes = r_sectors as u64 * SECTOR_BYTES;
            if bytes == 0 || !bytes.is_multiple_of(bs) {
                return fail("range length is zero or not a multiple of the block size");
            }
            let count = bytes / bs;
            if start
                .checked_add(count)
                .is_none_or(|end| end > geo.num_blocks)
            {
                return fail("range lies beyond the end of the device");
            }
            req.op = BlkOp::Io(if zeroes {
                IoType::WriteZeroes
            } else {
                IoType::Unmap
            });
            req.offset_blocks = start;
            req.num_blocks = count;
        }
        _ => return Err((Refusal::Unsupported, Some(status))),
    }
    Ok(())
}

/// The block a sector starts, if it starts one.
fn sector_to_block(sector: u64, block_size: u64) -> Option<u64> {
    let byte = sector.checked_mul(SECTOR_BYTES)?;
    byte.is_multiple_of(block_size).then(|| byte / block_size)
}
