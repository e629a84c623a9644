//! Criterion micro-benchmarks of the hot paths: a message between reactors, a buffer get/put,
//! and the null bdev's submit + complete through the bdev layer.
//! Run: `cargo bench --bench hot_paths`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use unblend::bdev::null::NullBdev;
use unblend::bdev::{BdevRegistry, ChannelContext, IoRequest, IoType, IoVec};
use unblend::mem::{BufferPool, BufferPoolConfig};
use unblend::reactor::{
    available_cores, CpuMask, IdlePolicy, PollStatus, PollerKind, ReactorConfig, ReactorSet,
};

/// A message from reactor 0 to reactor 1 and back (ping-pong), driven by a poller on reactor 0.
fn message_between_reactors(c: &mut Criterion) {
    let cores = available_cores();
    let mask = if cores.len() >= 2 {
        CpuMask::parse(&format!("{},{}", cores[0], cores[1]), &cores).unwrap()
    } else {
        CpuMask::single(cores[0])
    };
    let set = ReactorSet::start(ReactorConfig {
        cpumask: mask,
        idle: IdlePolicy::Busy,
        idle_spin_passes: 1,
        thread_init: None,
    })
    .unwrap();
    let r = set.handle();
    let target = r.count() - 1;
    let done = Arc::new(AtomicU64::new(0));
    c.bench_function("message_round_trip_between_reactors", |b| {
        b.iter_custom(|iters| {
            done.store(0, Ordering::SeqCst);
            let d = done.clone();
            let handle = r.clone();
            let start = std::time::Instant::now();
            r.send(0, move |reactor| {
                let mut sent = 0u64;
                let echoes = Arc::new(AtomicU64::new(0));
                reactor.register_poller("ping", PollerKind::Service, 0, move |_| {
                    let got = echoes.load(Ordering::Acquire);
                    if got == iters {
                        d.store(1, Ordering::Release);
                        return PollStatus::Done;
                    }
                    if sent == got {
                        sent += 1;
                        let e = echoes.clone();
                        let h = handle.clone();
                        let _ = handle.send(target, move |_| {
                            let _ = h.send(0, move |_| {
                                e.store(e.load(Ordering::Relaxed) + 1, Ordering::Release);
                            });
                        });
                    }
                    PollStatus::Busy
                });
            })
            .unwrap();
            while done.load(Ordering::Acquire) == 0 {
                std::hint::spin_loop();
            }
            start.elapsed()
        })
    });
    r.request_stop();
    set.join();
}

fn buffer_get_put(c: &mut Criterion) {
    let pool = BufferPool::new(BufferPoolConfig {
        buf_bytes: 4096,
        count: 256,
        try_hugepages: true,
    })
    .unwrap();
    c.bench_function("buffer_get_put", |b| {
        b.iter(|| {
            let buf = pool.get().unwrap();
            pool.put(std::hint::black_box(buf));
        })
    });
}

fn null_submit_complete(c: &mut Criterion) {
    let reg = BdevRegistry::new();
    let mut null = NullBdev::with_size("null0", 1 << 30, 4096).unwrap();
    null.set_zero_reads(false);
    let entry = reg.register(Arc::new(null)).unwrap();
    const BATCH: u64 = 128;
    let mut ch = entry
        .open_channel(&ChannelContext {
            queue_depth: BATCH as u32,
            buffers: None,
        })
        .unwrap();
    let mut data = vec![0u8; 4096];
    // SAFETY: `data` outlives every request and nothing else touches it.
    let iov = unsafe { IoVec::from_raw(data.as_mut_ptr(), data.len()) };
    let iovs = [iov];
    let mut out = Vec::with_capacity(BATCH as usize);
    let mut group = c.benchmark_group("null_bdev");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("submit_complete_batch_128", |b| {
        let mut lba = 0u64;
        b.iter(|| {
            for i in 0..BATCH {
                lba = (lba + 7919) % 262_144;
                ch.submit(
                    &IoRequest {
                        io_type: IoType::Read,
                        offset_blocks: lba,
                        num_blocks: 1,
                        iovs: &iovs,
                        fua: false,
                        tag: i,
                    },
                    0,
                )
                .unwrap();
            }
            out.clear();
            let n = ch.poll(1, &mut out);
            assert_eq!(n as u64, BATCH);
        })
    });
    group.finish();
    drop(data);
}

/// A checkpoint walk's piece (64 leaves, 32,768 entries) encoded by `BodyWriter::entry`, for
/// a volume written in order and one written at random, against the fixed 24-byte entries
/// of checkpoint version 1 (three little-endian u64 stores an entry) as the baseline; and
/// the random one decoded again (what recovery does with every entry).
fn checkpoint_entries(c: &mut Criterion) {
    use unblend::lsv::checkpoint::{
        decode_body, push_v1_entry, BodyWriter, CheckpointHeader, CP_VERSION,
    };
    use unblend::lsv::extent_table::Stored;
    const N: u64 = 32_768;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let random: Vec<(Stored, u64)> = (0..N)
        .map(|_| {
            (
                Stored::At(rand() % (4 << 20)),
                3_000_000 + rand() % 2_000_000,
            )
        })
        .collect();
    let in_order: Vec<(Stored, u64)> = (0..N).map(|i| (Stored::At(9000 + i), 77)).collect();
    let mut buf = vec![0u8; 24 * N as usize + 64];
    let mut group = c.benchmark_group("checkpoint_entries");
    group.throughput(Throughput::Elements(N));
    group.bench_function("v1_fixed_24_bytes", |b| {
        b.iter(|| {
            for (lba, &(s, seq)) in random.iter().enumerate() {
                let Stored::At(a) = s else { unreachable!() };
                let e = &mut buf[lba * 24..lba * 24 + 24];
                e[0..8].copy_from_slice(&(lba as u64).to_le_bytes());
                e[8..16].copy_from_slice(&a.to_le_bytes());
                e[16..24].copy_from_slice(&seq.to_le_bytes());
            }
            std::hint::black_box(&buf);
        })
    });
    for (name, entries) in [("v2_random", &random), ("v2_in_order", &in_order)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut w = BodyWriter::new();
                w.begin_volume(&mut buf, 1).unwrap();
                for (lba, &(s, seq)) in entries.iter().enumerate() {
                    w.entry(&mut buf, lba as u64, s, seq).unwrap();
                }
                w.end_volume(&mut buf);
                std::hint::black_box(w.written_bytes())
            })
        });
    }
    let mut w = BodyWriter::new();
    w.begin_volume(&mut buf, 1).unwrap();
    for (lba, &(s, seq)) in random.iter().enumerate() {
        w.entry(&mut buf, lba as u64, s, seq).unwrap();
    }
    w.end_volume(&mut buf);
    let body = buf[..w.written_bytes()].to_vec();
    let h = CheckpointHeader {
        version: CP_VERSION,
        generation: 1,
        complete_seq: 1,
        next_seq: 2,
        segment_count: 0,
        volume_count: 1,
        body_bytes: body.len() as u64,
        body_crc: crc32c::crc32c(&body),
    };
    // The same entries as version 1 wrote them: a volume header, then 24 bytes each.
    let mut v1 = vec![0u8; 16];
    v1[0] = 1;
    v1[8..16].copy_from_slice(&N.to_le_bytes());
    for (lba, &(s, seq)) in random.iter().enumerate() {
        push_v1_entry(&mut v1, lba as u64, s, seq);
    }
    let h1 = CheckpointHeader {
        version: 1,
        body_bytes: v1.len() as u64,
        body_crc: crc32c::crc32c(&v1),
        ..h
    };
    for (name, body, h) in [("v1_decode", &v1, &h1), ("v2_random_decode", &body, &h)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut sum = 0u64;
                decode_body(body, h, |_, lba, _, seq| sum = sum.wrapping_add(lba ^ seq)).unwrap();
                std::hint::black_box(sum)
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    message_between_reactors,
    buffer_get_put,
    null_submit_complete,
    checkpoint_entries
);
criterion_main!(benches);
