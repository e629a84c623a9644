//! `bench -w verify` must fail loudly, naming the first bad LBA, when a device returns wrong
//! data. A bdev that flips one bit of one block on every read stands in for a broken device.

use std::sync::Arc;

use unblend::bdev::malloc::MallocBdev;
use unblend::bdev::{
    Bdev, BdevChannel, BdevError, BdevRegistry, ChannelContext, IoRequest, IoType, SlotCompletion,
    SubmitError,
};
use unblend::bench::{self, BdevSource, BenchOptions, Workload};
use unblend::reactor::{available_cores, CpuMask, IdlePolicy};

const BAD_LBA: u64 = 777;

struct Corrupting {
    inner: MallocBdev,
}

struct CorruptingChannel {
    inner: Box<dyn BdevChannel>,
    block_size: u64,
    /// Per slot: where a read's data lands, if it covers BAD_LBA.
    targets: Vec<Option<*mut u8>>,
}

impl BdevChannel for CorruptingChannel {
    fn submit(&mut self, slot: u32, req: &IoRequest<'_>) -> Result<(), SubmitError> {
        let covers = req.offset_blocks <= BAD_LBA && BAD_LBA < req.offset_blocks + req.num_blocks;
        self.targets[slot as usize] =
            (req.io_type == IoType::Read && covers && req.iovs.len() == 1).then(|| {
                let at = (BAD_LBA - req.offset_blocks) * self.block_size + 40;
                // SAFETY: `at` is inside the single iovec, which holds num_blocks blocks.
                unsafe { req.iovs[0].addr().add(at as usize) }
            });
        self.inner.submit(slot, req)
    }

    fn poll(&mut self, done: &mut Vec<SlotCompletion>) {
        let before = done.len();
        self.inner.poll(done);
        for c in &done[before..] {
            if let Some(p) = self.targets[c.slot as usize].take() {
                // SAFETY: the read's buffer is still the caller's until it sees this completion.
                unsafe { *p ^= 0x10 };
            }
        }
    }
}

impl Bdev for Corrupting {
    fn name(&self) -> &str {
        "corrupting"
    }
    fn uuid(&self) -> uuid::Uuid {
        self.inner.uuid()
    }
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.inner.num_blocks()
    }
    fn product_name(&self) -> &'static str {
        "test"
    }
    fn supports(&self, t: IoType) -> bool {
        self.inner.supports(t)
    }
    fn create_channel(&self, ctx: &ChannelContext) -> Result<Box<dyn BdevChannel>, BdevError> {
        Ok(Box::new(CorruptingChannel {
            inner: self.inner.create_channel(ctx)?,
            block_size: self.block_size() as u64,
            targets: vec![None; ctx.queue_depth as usize],
        }))
    }
    fn config_json(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

fn options(entry: unblend::bdev::BdevEntry) -> BenchOptions {
    let cores = available_cores();
    BenchOptions {
        bdev: BdevSource::Entry(entry),
        queue_depth: 8,
        io_bytes: 8192,
        cpumask: CpuMask::single(cores[0]),
        seconds: 1,
        workload: Workload::Verify,
        read_percent: 50,
        idle: IdlePolicy::Busy,
        seed: 42,
        progress: false,
        hot: None,
        journal: None,
        rate_iops: 0,
    }
}

#[test]
fn verify_names_the_first_bad_lba() {
    let registry = BdevRegistry::new();
    let inner = MallocBdev::with_size("inner", 8 << 20, 4096).unwrap();
    let entry = registry.register(Arc::new(Corrupting { inner })).unwrap();
    let report = bench::run(&options(entry)).expect("bench runs");
    let failure = report.failure().expect("corruption must fail the run");
    assert!(
        failure.contains(&format!("first bad LBA {BAD_LBA}")),
        "{failure}"
    );
    assert!(failure.contains("byte 40"), "{failure}");
}

#[test]
fn verify_passes_on_a_healthy_bdev() {
    let registry = BdevRegistry::new();
    let bdev = MallocBdev::with_size("healthy", 8 << 20, 4096).unwrap();
    let entry = registry.register(Arc::new(bdev)).unwrap();
    let report = bench::run(&options(entry)).expect("bench runs");
    assert_eq!(report.failure(), None);
    assert!(report.total.ios > 1000);
}
