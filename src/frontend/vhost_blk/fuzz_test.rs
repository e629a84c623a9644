//! Hostile-guest fuzzing: random descriptor tables, indirect tables and avail rings over a guest
//! memory map with holes, run through the same pop → parse → complete path the pollers use.
//!
//! Every parsed request must point only into mapped guest memory, carry exactly the bytes its
//! block count says, and our own chain walker (used to run requests again after a restart) must
//! see the same descriptors as virtio-queue's. `UNBLEND_FUZZ_CHAINS` sets the count (default
//! 1,000,000); `UNBLEND_FUZZ_SEED` the seed.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::inflight::walk_chain;
use super::request::{BlkOp, ChainParser, Geometry, HostMap};
use crate::bdev::sim::SimRng;

const QUEUE_SIZE: u16 = 16;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const INDIRECT: u64 = 0x4000;
/// Region 0 is [0, 1 MiB); region 1 is [2 MiB, 2 MiB + 64 KiB); everything else is a hole.
const R0_END: u64 = 1 << 20;
const R1_START: u64 = 2 << 20;
const R1_END: u64 = R1_START + (64 << 10);

/// An address a hostile guest might use: mostly valid data areas, often boundaries and holes.
fn addr(rng: &mut SimRng) -> u64 {
    match rng.below(10) {
        0 => rng.next_u64(),
        1 => R0_END - rng.below(64),
        2 => R1_END - rng.below(64),
        3 => R0_END + rng.below(R1_START - R0_END),
        4 => DESC + rng.below(0x4000),
        5..=7 => 0x10000 + rng.below(0x40) * 4096,
        _ => R1_START + rng.below(16) * 4096,
    }
}

fn len(rng: &mut SimRng) -> u32 {
    match rng.below(8) {
        0 => rng.next_u64() as u32,
        1 => 16,
        2 => 1,
        3 => rng.below(64) as u32,
        _ => (rng.below(4) as u32 + 1) * 4096,
    }
}

fn write_desc(mem: &GuestMemoryMmap, table: u64, i: u64, rng: &mut SimRng, table_len: u64) {
    let flags: u16 = match rng.below(6) {
        0 => rng.next_u64() as u16,
        1 => 4,     // INDIRECT
        2 | 3 => 1, // NEXT
        4 => 1 | 2, // NEXT | WRITE
        _ => 2,     // WRITE (a chain's end)
    };
    let next = if rng.below(4) == 0 {
        rng.next_u64() as u16
    } else {
        ((i + 1 + rng.below(2)) % table_len) as u16
    };
    let (a, l) = if flags & 4 != 0 && rng.below(2) == 0 {
        (INDIRECT, 16 * (rng.below(8) as u32 + 1))
    } else {
        (addr(rng), len(rng))
    };
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&a.to_le_bytes());
    raw[8..12].copy_from_slice(&l.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..16].copy_from_slice(&next.to_le_bytes());
    mem.write_slice(&raw, GuestAddress(table + 16 * i)).unwrap();
}

/// A well-formed request now and then, so the parser's success paths are fuzzed too.
fn write_good_chain(mem: &GuestMemoryMmap, rng: &mut SimRng, head: u16) {
    let t = [0u32, 1, 4, 8, 11, 13, rng.next_u64() as u32][rng.below(7) as usize];
    let hdr_at = 0x8000u64;
    let mut hdr = [0u8; 16];
    hdr[0..4].copy_from_slice(&t.to_le_bytes());
    hdr[8..16].copy_from_slice(&(rng.below(300) * 8).to_le_bytes());
    mem.write_slice(&hdr, GuestAddress(hdr_at)).unwrap();
    let write_data = matches!(t, 1 | 11 | 13);
    let n_data = rng.below(4);
    let mut i = head as u64;
    let put = |mem: &GuestMemoryMmap, a: u64, l: u32, f: u16, i: u64, nx: u64| {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&a.to_le_bytes());
        raw[8..12].copy_from_slice(&l.to_le_bytes());
        raw[12..14].copy_from_slice(&f.to_le_bytes());
        raw[14..16].copy_from_slice(&(nx as u16).to_le_bytes());
        mem.write_slice(&raw, GuestAddress(DESC + 16 * i)).unwrap();
    };
    let step = |i: u64| (i + 1) % QUEUE_SIZE as u64;
    put(mem, hdr_at, 16, 1, i, step(i));
    i = step(i);
    for _ in 0..n_data {
        let data_len = if matches!(t, 11 | 13) { 16 } else { 4096 };
        let f = if write_data { 1 } else { 1 | 2 };
        put(mem, 0x10000 + rng.below(32) * 4096, data_len, f, i, step(i));
        i = step(i);
    }
    put(mem, 0x9000, 1, 2, i, 0);
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), R0_END as usize),
        (GuestAddress(R1_START), (R1_END - R1_START) as usize),
    ])
    .unwrap()
}

fn in_guest_memory(mem: &GuestMemoryMmap, ptr: *mut u8, len: usize) -> bool {
    mem.iter().any(|r| {
        let base = r.as_ptr() as usize;
        let end = base + r.len() as usize;
        (ptr as usize) >= base && (ptr as usize) + len <= end
    })
}

#[test]
fn a_million_hostile_descriptor_chains_never_panic() {
    let chains: u64 = std::env::var("UNBLEND_FUZZ_CHAINS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let seed: u64 = std::env::var("UNBLEND_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let mut rng = SimRng::new(seed);
    let mem = memory();
    let geo = Geometry {
        block_size: 4096,
        num_blocks: 256,
        max_segs: 8,
        max_rw_blocks: 64,
        readonly: false,
    };
    let mut q = Queue::new(QUEUE_SIZE).unwrap();
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_event_idx(rng.below(2) == 0);
    q.set_ready(true);
    assert!(q.is_valid(&mem));
    let (mut parsed_ok, mut refused, mut unpoppable) = (0u64, 0u64, 0u64);
    let mut walker_stopped_early = 0u64;
    let map = HostMap::of(&mem);
    let mut parser = ChainParser::default();
    let mut avail_idx: u16 = 0;
    for n in 0..chains {
        // A fresh hostile descriptor table (and indirect table) every 16 chains.
        if n % 16 == 0 {
            for i in 0..QUEUE_SIZE as u64 {
                write_desc(&mem, DESC, i, &mut rng, QUEUE_SIZE as u64);
            }
            for i in 0..8 {
                write_desc(&mem, INDIRECT, i, &mut rng, 8);
            }
        }
        let head = if rng.below(20) == 0 {
            rng.next_u64() as u16
        } else {
            rng.below(QUEUE_SIZE as u64) as u16
        };
        if rng.below(4) == 0 && head < QUEUE_SIZE {
            write_good_chain(&mem, &mut rng, head);
        }
        mem.write_obj(
            head,
            GuestAddress(AVAIL + 4 + 2 * (avail_idx % QUEUE_SIZE) as u64),
        )
        .unwrap();
        avail_idx = avail_idx.wrapping_add(1);
        mem.write_obj(avail_idx, GuestAddress(AVAIL + 2)).unwrap();

        let Some(chain) = q.pop_descriptor_chain(&mem) else {
            unpoppable += 1;
            // A bad avail index would stall a real queue; resynchronise and go on.
            q.set_next_avail(avail_idx);
            continue;
        };
        let head = chain.head_index();
        let ours: Vec<_> = walk_chain(&mem, GuestAddress(DESC), QUEUE_SIZE, head).collect();
        let theirs: Vec<_> = chain
            .clone()
            .take(super::request::MAX_CHAIN_DESCS + 1)
            .map(|d| (d.addr(), d.len(), d.is_write_only()))
            .collect();
        // Ours may stop earlier (it refuses indirect tables longer than the queue, which the
        // spec forbids and virtio-queue follows), but never walks anywhere else.
        assert!(
            theirs.starts_with(&ours),
            "chain walkers disagree at chain {n} (head {head}): {ours:?} vs {theirs:?}"
        );
        if ours.len() < theirs.len() {
            walker_stopped_early += 1;
        }
        match parser.parse(&map, theirs.iter().copied(), &geo) {
            Ok(()) => {
                let r = &parser.req;
                parsed_ok += 1;
                assert!(in_guest_memory(&mem, r.status, 1));
                let mut bytes = 0u64;
                for v in &r.iovs[..r.n_iovs] {
                    assert!(
                        in_guest_memory(&mem, v.addr(), v.len()),
                        "iovec outside guest memory"
                    );
                    bytes += v.len() as u64;
                }
                if let BlkOp::Io(t) = r.op {
                    if t.carries_data() {
                        assert_eq!(bytes, r.num_blocks * 4096);
                        assert!(r.offset_blocks + r.num_blocks <= geo.num_blocks);
                    }
                }
                // SAFETY: checked above to lie in guest memory.
                unsafe { r.status.write_volatile(0) };
                let _ = q.add_used(&mem, head, r.used_len);
            }
            Err((_, status)) => {
                refused += 1;
                if let Some(at) = status {
                    assert!(in_guest_memory(&mem, at, 1));
                }
                let _ = q.add_used(&mem, head, 0);
            }
        }
        let _ = q.needs_notification(&mem);
    }
    eprintln!(
        "{chains} chains: {parsed_ok} parsed, {refused} refused, {unpoppable} not poppable, \
         {walker_stopped_early} where our walker stopped earlier"
    );
    assert!(
        parsed_ok > chains / 100,
        "too few well-formed chains to exercise the parser"
    );
    assert!(refused > chains / 10);
}
