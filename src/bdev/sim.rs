//! The simulated disk: a bdev for deterministic simulation tests of the log-structured store.
//!
//! Driven by a seeded RNG, it delays and reorders completions, keeps completed writes in a
//! volatile cache until a FLUSH (or a FUA write) makes them durable, and at a simulated crash
//! keeps a random subset of the unflushed blocks (so torn records happen) and loses the rest.
//! The same seed gives the same run. It is a test device: its state sits behind one mutex,
//! which the real modules' hot paths never take.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    Bdev, BdevChannel, BdevError, ChannelContext, IoRequest, IoStatus, IoType, SlotCompletion,
    SubmitError, MAX_IOVS,
};

pub const SIM_BLOCK_BYTES: usize = 4096;

/// A tiny deterministic generator (xorshift64*); seeds must not be 0.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

struct DiskState {
    durable: Vec<u8>,
    /// Completed writes not yet flushed, by block.
    volatile: BTreeMap<u64, Box<[u8]>>,
    rng: SimRng,
    /// Writes completed so far, and the number of the one to fail (EIO, nothing written).
    writes_completed: u64,
    fail_write: Option<u64>,
    /// The next write to complete that covers this block fails (EIO, nothing written).
    fail_write_at: Option<u64>,
}

pub struct SimDisk {
    name: String,
    uuid: Uuid,
    num_blocks: u64,
    /// Most polls a request may wait before completing.
    max_delay_polls: u32,
    state: Arc<Mutex<DiskState>>,
}

impl SimDisk {
    pub fn new(name: &str, num_blocks: u64, seed: u64, max_delay_polls: u32) -> SimDisk {
        SimDisk::from_image(
            name,
            vec![0u8; num_blocks as usize * SIM_BLOCK_BYTES],
            seed,
            max_delay_polls,
        )
    }

    /// A disk whose durable contents are `image` (what survived a crash).
    pub fn from_image(name: &str, image: Vec<u8>, seed: u64, max_delay_polls: u32) -> SimDisk {
        assert_eq!(image.len() % SIM_BLOCK_BYTES, 0);
        SimDisk {
            name: name.to_string(),
            uuid: Uuid::from_u128(seed as u128),
            num_blocks: (image.len() / SIM_BLOCK_BYTES) as u64,
            max_delay_polls,
            state: Arc::new(Mutex::new(DiskState {
                durable: image,
                volatile: BTreeMap::new(),
                rng: SimRng::new(seed),
                writes_completed: 0,
                fail_write_at: None,
                fail_write: None,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pulls the plug: returns what the media holds afterwards. Every flushed block is there;
    /// each unflushed block independently made it or not.
    pub fn crash(&self) -> Vec<u8> {
        let mut st = self.lock();
        let mut image = st.durable.clone();
        let volatile = std::mem::take(&mut st.volatile);
        for (block, data) in volatile {
            if st.rng.below(2) == 1 {
                let o = block as usize * SIM_BLOCK_BYTES;
                image[o..o + SIM_BLOCK_BYTES].copy_from_slice(&data);
            }
        }
        image
    }

    /// Fails the `n`th write to complete from now on (0: the next one) with EIO, writing
    /// nothing of it.
    pub fn fail_write_in(&self, n: u64) {
        let mut st = self.lock();
        st.fail_write = Some(st.writes_completed + n);
    }

    /// Fails the next write to complete that covers block `block` with EIO, writing nothing
    /// of it.
    pub fn fail_write_at(&self, block: u64) {
        self.lock().fail_write_at = Some(block);
    }

    /// Whether a failure `fail_write_at` asked for is still to come.
    pub fn write_failure_pending(&self) -> bool {
        self.lock().fail_write_at.is_some()
    }

    /// Bit rot: flips the bits of `mask` in durable byte `at` (written and flushed), for the
    /// next read of it to find.
    pub fn rot(&self, at: u64, mask: u8) {
        let mut st = self.lock();
        assert!(
            !st.volatile.contains_key(&(at / SIM_BLOCK_BYTES as u64)),
            "the block is not durable yet"
        );
        st.durable[at as usize] ^= mask;
    }

    /// Blocks written but not yet flushed.
    pub fn unflushed_blocks(&self) -> usize {
        self.lock().volatile.len()
    }
}

impl Bdev for SimDisk {
    fn name(&self) -> &str {
        &self.name
    }
    fn uuid(&self) -> Uuid {
        self.uuid
    }
    fn block_size(&self) -> u32 {
        SIM_BLOCK_BYTES as u32
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }
    fn product_name(&self) -> &'static str {
        "Simulated disk"
    }
    fn supports(&self, io_type: IoType) -> bool {
        matches!(io_type, IoType::Read | IoType::Write | IoType::Flush)
    }
    fn create_channel(&self, ctx: &ChannelContext) -> Result<Box<dyn BdevChannel>, BdevError> {
        let seed = self.lock().rng.next_u64();
        Ok(Box::new(SimChannel {
            state: self.state.clone(),
            max_delay_polls: self.max_delay_polls,
            in_flight: Vec::with_capacity(ctx.queue_depth as usize),
            rng: SimRng::new(seed),
        }))
    }
    fn driver_info(&self) -> Value {
        json!({ "sim": { "max_delay_polls": self.max_delay_polls } })
    }
    fn config_json(&self) -> Value {
        Value::Null
    }
}

struct InFlight {
    slot: u32,
    io_type: IoType,
    offset_blocks: u64,
    num_blocks: u64,
    /// Caller memory (valid until completion, by IoVec's contract): (address, length).
    iovs: [(usize, usize); MAX_IOVS],
    iov_count: usize,
    fua: bool,
    polls_left: u32,
}

struct SimChannel {
    state: Arc<Mutex<DiskState>>,
    max_delay_polls: u32,
    in_flight: Vec<InFlight>,
    rng: SimRng,
}

impl BdevChannel for SimChannel {
    fn submit(&mut self, slot: u32, req: &IoRequest<'_>) -> Result<(), SubmitError> {
        if req.iovs.len() > MAX_IOVS {
            return Err(SubmitError::TooManyIovs(req.iovs.len()));
        }
        let mut iovs = [(0usize, 0usize); MAX_IOVS];
        for (d, v) in iovs.iter_mut().zip(req.iovs) {
            *d = (v.addr() as usize, v.len());
        }
        self.in_flight.push(InFlight {
            slot,
            io_type: req.io_type,
            offset_blocks: req.offset_blocks,
            num_blocks: req.num_blocks,
            iovs,
            iov_count: req.iovs.len(),
            fua: req.fua,
            polls_left: self.rng.below(self.max_delay_polls as u64 + 1) as u32,
        });
        Ok(())
    }

    fn poll(&mut self, done: &mut Vec<SlotCompletion>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // Complete the due requests in a random order.
        let mut i = 0;
        while i < self.in_flight.len() {
            if self.in_flight[i].polls_left > 0 {
                self.in_flight[i].polls_left -= 1;
                i += 1;
                continue;
            }
            let last = self.in_flight.len() - 1;
            let pick = i + self.rng.below((last - i + 1) as u64) as usize;
            self.in_flight.swap(i, pick);
            if self.in_flight[i].polls_left > 0 {
                continue;
            }
            let io = self.in_flight.swap_remove(i);
            let mut status = IoStatus::Success;
            if io.io_type == IoType::Write {
                let n = st.writes_completed;
                st.writes_completed += 1;
                if st.fail_write == Some(n) {
                    status = IoStatus::Failed(libc::EIO);
                }
                let covers =
                    |b: u64| (io.offset_blocks..io.offset_blocks + io.num_blocks).contains(&b);
                if st.fail_write_at.is_some_and(covers) {
                    st.fail_write_at = None;
                    status = IoStatus::Failed(libc::EIO);
                }
            }
            if status == IoStatus::Success {
                complete(&mut st, &io);
            }
            done.push(SlotCompletion {
                slot: io.slot,
                status,
            });
        }
    }
}

fn complete(st: &mut DiskState, io: &InFlight) {
    match io.io_type {
        IoType::Flush => {
            let volatile = std::mem::take(&mut st.volatile);
            for (block, data) in volatile {
                let o = block as usize * SIM_BLOCK_BYTES;
                st.durable[o..o + SIM_BLOCK_BYTES].copy_from_slice(&data);
            }
        }
        IoType::Read | IoType::Write => {
            // Walk the request block by block across its iovecs.
            let mut block = io.offset_blocks;
            let mut buf = vec![0u8; SIM_BLOCK_BYTES];
            let mut filled = 0usize;
            for &(addr, len) in &io.iovs[..io.iov_count] {
                let mut at = 0usize;
                while at < len {
                    let n = (SIM_BLOCK_BYTES - filled).min(len - at);
                    let o = block as usize * SIM_BLOCK_BYTES + filled;
                    // SAFETY: `addr..addr+len` is caller memory that IoVec's contract keeps
                    // valid and ours until this completion is reported.
                    unsafe {
                        let p = (addr + at) as *mut u8;
                        if io.io_type == IoType::Read {
                            let src = match st.volatile.get(&block) {
                                Some(v) => &v[filled..filled + n],
                                None => &st.durable[o..o + n],
                            };
                            std::ptr::copy_nonoverlapping(src.as_ptr(), p, n);
                        } else {
                            std::ptr::copy_nonoverlapping(p, buf[filled..].as_mut_ptr(), n);
                        }
                    }
                    filled += n;
                    at += n;
                    if filled == SIM_BLOCK_BYTES {
                        if io.io_type == IoType::Write {
                            if io.fua {
                                let o = block as usize * SIM_BLOCK_BYTES;
                                st.durable[o..o + SIM_BLOCK_BYTES].copy_from_slice(&buf);
                                st.volatile.remove(&block);
                            } else {
                                st.volatile.insert(block, buf.clone().into_boxed_slice());
                            }
                        }
                        block += 1;
                        filled = 0;
                    }
                }
            }
            debug_assert_eq!(block, io.offset_blocks + io.num_blocks);
        }
        IoType::Unmap | IoType::WriteZeroes => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::testing::{iov, open};
    use crate::bdev::IoChannel;

    fn write_all(ch: &mut IoChannel, reqs: &mut [(u64, Vec<u8>)]) -> Vec<u64> {
        let mut order = Vec::new();
        for (i, (lba, data)) in reqs.iter_mut().enumerate() {
            let v = [iov(data)];
            ch.submit(
                &IoRequest {
                    io_type: IoType::Write,
                    offset_blocks: *lba,
                    num_blocks: 1,
                    iovs: &v,
                    fua: false,
                    tag: i as u64,
                },
                0,
            )
            .unwrap();
        }
        let mut out = Vec::with_capacity(64);
        while order.len() < reqs.len() {
            out.clear();
            ch.poll(0, &mut out);
            order.extend(out.iter().map(|c| c.tag));
        }
        order
    }

    #[test]
    fn reorders_deterministically_and_loses_only_unflushed_data() {
        let run = |seed| {
            let disk = Arc::new(SimDisk::new("sim", 64, seed, 3));
            let mut ch = open(disk.clone(), 32, None);
            let mut reqs: Vec<(u64, Vec<u8>)> = (0..16)
                .map(|i| (i, vec![i as u8 + 1; SIM_BLOCK_BYTES]))
                .collect();
            let order = write_all(&mut ch, &mut reqs);
            (disk, ch, order)
        };
        let (_, _, a) = run(7);
        let (_, _, b) = run(7);
        assert_eq!(a, b, "same seed, same completion order");
        assert_ne!(
            a,
            (0..16).collect::<Vec<_>>(),
            "completions were not reordered"
        );

        let (disk, mut ch, _) = run(9);
        assert_eq!(disk.unflushed_blocks(), 16);
        assert_eq!(
            crate::bdev::testing::run(&mut ch, IoType::Flush, 0, 0, &[]),
            IoStatus::Success
        );
        assert_eq!(disk.unflushed_blocks(), 0);
        let mut more: Vec<(u64, Vec<u8>)> =
            (16..48).map(|i| (i, vec![0xEE; SIM_BLOCK_BYTES])).collect();
        write_all(&mut ch, &mut more);
        let image = disk.crash();
        for i in 0..16usize {
            assert!(image[i * SIM_BLOCK_BYTES..(i + 1) * SIM_BLOCK_BYTES]
                .iter()
                .all(|&b| b == i as u8 + 1));
        }
        let kept = (16..48usize)
            .filter(|&i| image[i * SIM_BLOCK_BYTES] == 0xEE)
            .count();
        assert!(
            kept > 0 && kept < 32,
            "a crash should keep some unflushed blocks, not all ({kept})"
        );

        // After the crash, a new disk from the image reads what survived.
        let again = Arc::new(SimDisk::from_image("sim", image, 1, 0));
        let mut ch = open(again, 4, None);
        let mut r = vec![0u8; SIM_BLOCK_BYTES];
        assert_eq!(
            crate::bdev::testing::run(&mut ch, IoType::Read, 3, 1, &[iov(&mut r)]),
            IoStatus::Success
        );
        assert!(r.iter().all(|&b| b == 4));
    }
}
