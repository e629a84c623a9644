//! A small vhost-user-blk benchmark client on libblkio, for comparing vhost-user back ends
//! (unblend, qemu-storage-daemon, SPDK) under the same client.
//!
//! ```text
//! cargo run --release --example vhost_bench -- --socket /var/tmp/unblend/vhost.0 \
//!     --rw randread --qd 32 --bs 4096 --secs 5 --cpu 0
//! ```
//!
//! It pins itself to `--cpu`, keeps `--qd` requests in flight on one queue (a poll queue unless
//! `--interrupt`), and prints one JSON line: IOPS and latency percentiles in µs.

use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use blkio::{Blkio, Completion, ReqFlags};

struct Args {
    socket: String,
    rw: String,
    qd: usize,
    bs: usize,
    secs: f64,
    cpu: Option<usize>,
    range_bytes: u64,
    interrupt: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        socket: String::new(),
        rw: "randread".into(),
        qd: 32,
        bs: 4096,
        secs: 5.0,
        cpu: None,
        range_bytes: 0,
        interrupt: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--socket" => a.socket = v()?,
            "--rw" => a.rw = v()?,
            "--qd" => a.qd = v()?.parse().map_err(|e| format!("--qd: {e}"))?,
            "--bs" => a.bs = v()?.parse().map_err(|e| format!("--bs: {e}"))?,
            "--secs" => a.secs = v()?.parse().map_err(|e| format!("--secs: {e}"))?,
            "--cpu" => a.cpu = Some(v()?.parse().map_err(|e| format!("--cpu: {e}"))?),
            "--range" => a.range_bytes = v()?.parse().map_err(|e| format!("--range: {e}"))?,
            "--interrupt" => a.interrupt = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.socket.is_empty() {
        return Err("--socket is required".into());
    }
    if !matches!(a.rw.as_str(), "randread" | "randwrite") {
        return Err("--rw is randread or randwrite".into());
    }
    if a.qd == 0 || a.qd > 256 || a.bs == 0 || !a.bs.is_multiple_of(512) || a.bs > 1 << 20 {
        return Err("--qd must be 1..=256 and --bs a multiple of 512 up to 1 MiB".into());
    }
    Ok(a)
}

fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vhost_bench: {e}");
            std::process::exit(2);
        }
    };
    if let Some(cpu) = a.cpu {
        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
    }
    if let Err(e) = run(&a) {
        eprintln!("vhost_bench: {e}");
        std::process::exit(1);
    }
}

fn run(a: &Args) -> Result<(), blkio::Error> {
    let mut b = Blkio::new("virtio-blk-vhost-user")?;
    b.set_str("path", &a.socket)?;
    b.connect()?;
    if a.interrupt {
        b.set_i32("num-queues", 1)?;
    } else {
        b.set_i32("num-queues", 0)?;
        b.set_i32("num-poll-queues", 1)?;
    }
    // Each request takes up to 3 ring slots: size the ring so the depth is real.
    b.set_i32("queue-size", (a.qd * 3).next_power_of_two().max(64) as i32)?;
    let started = b.start()?;
    let mut q = if a.interrupt {
        started.queues.into_iter().next()
    } else {
        started.poll_queues.into_iter().next()
    }
    .expect("one queue");
    let capacity = b.get_u64("capacity")?;
    let range = if a.range_bytes == 0 {
        capacity
    } else {
        a.range_bytes.min(capacity)
    };
    let blocks = range / a.bs as u64;
    let region = b.alloc_mem_region((a.qd * a.bs).next_multiple_of(2 << 20))?;
    b.map_mem_region(&region)?;
    let write = a.rw == "randwrite";
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next_offset = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % blocks) * a.bs as u64
    };
    let mut submitted_at = vec![Instant::now(); a.qd];
    let submit = |q: &mut blkio::Blkioq, slot: usize, off: u64| {
        let buf = (region.addr + slot * a.bs) as *mut u8;
        if write {
            q.write(off, buf, a.bs, slot, ReqFlags::empty());
        } else {
            q.read(off, buf, a.bs, slot, ReqFlags::empty());
        }
    };
    for (slot, at) in submitted_at.iter_mut().enumerate() {
        submit(&mut q, slot, next_offset());
        *at = Instant::now();
    }
    let mut hist =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut done: Vec<MaybeUninit<Completion>> = (0..a.qd).map(|_| MaybeUninit::uninit()).collect();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.secs);
    let mut ios = 0u64;
    let mut errors = 0u64;
    let mut in_flight = a.qd;
    while in_flight > 0 {
        let min = if a.interrupt { 1 } else { 0 };
        let n = q.do_io(&mut done, min, None, None)?;
        let now = Instant::now();
        for c in &done[..n] {
            // SAFETY: do_io initialised the first `n` completions.
            let c = unsafe { c.assume_init_read() };
            let slot = c.user_data;
            if c.ret != 0 {
                errors += 1;
            }
            ios += 1;
            in_flight -= 1;
            let _ = hist.record(now.duration_since(submitted_at[slot]).as_nanos() as u64);
            if now < end {
                submit(&mut q, slot, next_offset());
                submitted_at[slot] = Instant::now();
                in_flight += 1;
            }
        }
        if now > end + Duration::from_secs(10) {
            eprintln!("vhost_bench: {in_flight} requests never completed");
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let p = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{{\"rw\":\"{}\",\"qd\":{},\"bs\":{},\"iops\":{:.0},\"errors\":{},\"p50_us\":{:.2},\"p99_us\":{:.2},\"p999_us\":{:.2}}}",
        a.rw,
        a.qd,
        a.bs,
        ios as f64 / secs,
        errors,
        p(0.5),
        p(0.99),
        p(0.999)
    );
    Ok(())
}
