//! Model test: random writes, unmaps, reads and FLUSHes through a volume (with the cleaner
//! running on a pool small enough that the log wraps) against a `BTreeMap` of what each block
//! should hold; every read, and a final read of every block, must match the model.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::cleaner::Cleaner;
use super::pool::LsvPool;
use super::volume::LsvVolume;
use crate::bdev::sim::SimDisk;
use crate::bdev::{BdevRegistry, ChannelContext, IoChannel, IoRequest, IoStatus, IoType, IoVec};

const BLOCK: usize = 4096;
/// 16 MiB: 13 segments of 1 MiB after the metadata.
const DISK_BLOCKS: u64 = 4096;
const VOLUME_BLOCKS: u64 = 256;

#[derive(Debug, Clone)]
enum Op {
    Write { lba: u64, blocks: u64 },
    Unmap { lba: u64, blocks: u64 },
    Read { lba: u64, blocks: u64 },
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    let range = (0..VOLUME_BLOCKS - 4, 1..=4u64);
    prop_oneof![
        6 => range.clone().prop_map(|(lba, blocks)| Op::Write { lba, blocks }),
        1 => range.clone().prop_map(|(lba, blocks)| Op::Unmap { lba, blocks }),
        3 => range.prop_map(|(lba, blocks)| Op::Read { lba, blocks }),
        1 => Just(Op::Flush),
    ]
}

/// Block `lba` written with `tag`: every 8-byte word is the pair's hash.
fn word(lba: u64, tag: u64) -> u64 {
    (lba.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ tag).wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1
}

struct Volume {
    ch: IoChannel,
    cleaner: Cleaner,
    out: Vec<crate::bdev::IoCompletion>,
}

impl Volume {
    /// Runs one request to completion, polling the cleaner meanwhile.
    fn run(&mut self, io_type: IoType, lba: u64, blocks: u64, buf: &mut [u8]) {
        // SAFETY: `buf` is ours and untouched until the request completes below.
        let iov = unsafe { IoVec::from_raw(buf.as_mut_ptr(), buf.len()) };
        let data = matches!(io_type, IoType::Read | IoType::Write);
        let req = IoRequest {
            io_type,
            offset_blocks: if io_type == IoType::Flush { 0 } else { lba },
            num_blocks: if io_type == IoType::Flush { 0 } else { blocks },
            iovs: if data {
                std::slice::from_ref(&iov)
            } else {
                &[]
            },
            fua: false,
            tag: 7,
        };
        self.ch.submit(&req, 0).expect("submit");
        loop {
            self.cleaner.poll();
            self.out.clear();
            self.ch.poll(0, &mut self.out);
            if let Some(c) = self.out.first() {
                assert_eq!(c.status, IoStatus::Success, "{io_type:?} {lba}+{blocks}");
                return;
            }
        }
    }
}

fn check(buf: &[u8], lba: u64, want: Option<u64>) -> Result<(), TestCaseError> {
    let expect = want.map_or(0, |t| word(lba, t));
    for w in buf.chunks_exact(8) {
        let got = u64::from_le_bytes(w.try_into().expect("8"));
        prop_assert_eq!(got, expect, "block {} should hold tag {:?}", lba, want);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn volume_matches_a_btreemap_model(ops in proptest::collection::vec(op(), 200..1500)) {
        let disk = Arc::new(SimDisk::new("sim", DISK_BLOCKS, 7, 2));
        let reg = BdevRegistry::new();
        let base = reg.register(disk).unwrap();
        let pool = LsvPool::create("p", base, 1 << 20).unwrap();
        let (meta, table) = pool.create_volume("v", VOLUME_BLOCKS).unwrap();
        let entry = reg
            .register(Arc::new(LsvVolume::new(pool.clone(), meta, table)))
            .unwrap();
        let mut cleaner = Cleaner::new(pool.clone()).unwrap();
        cleaner.check_every_poll();
        let ch = entry
            .open_channel(&ChannelContext { queue_depth: 4, buffers: None })
            .unwrap();
        let mut v = Volume { ch, cleaner, out: Vec::new() };
        let mut model: BTreeMap<u64, u64> = BTreeMap::new();
        let mut buf = vec![0u8; 4 * BLOCK];
        for (i, op) in ops.iter().enumerate() {
            let tag = i as u64 + 1;
            match *op {
                Op::Write { lba, blocks } => {
                    for b in 0..blocks {
                        let w = word(lba + b, tag).to_le_bytes();
                        for c in buf[b as usize * BLOCK..(b as usize + 1) * BLOCK].chunks_exact_mut(8) {
                            c.copy_from_slice(&w);
                        }
                        model.insert(lba + b, tag);
                    }
                    v.run(IoType::Write, lba, blocks, &mut buf[..blocks as usize * BLOCK]);
                }
                Op::Unmap { lba, blocks } => {
                    v.run(IoType::Unmap, lba, blocks, &mut buf[..0]);
                    for b in lba..lba + blocks {
                        model.remove(&b);
                    }
                }
                Op::Read { lba, blocks } => {
                    buf.fill(0xA5);
                    v.run(IoType::Read, lba, blocks, &mut buf[..blocks as usize * BLOCK]);
                    for b in 0..blocks {
                        check(&buf[b as usize * BLOCK..(b as usize + 1) * BLOCK], lba + b, model.get(&(lba + b)).copied())?;
                    }
                }
                Op::Flush => v.run(IoType::Flush, 0, 0, &mut buf[..0]),
            }
        }
        for lba in 0..VOLUME_BLOCKS {
            buf.fill(0xA5);
            v.run(IoType::Read, lba, 1, &mut buf[..BLOCK]);
            check(&buf[..BLOCK], lba, model.get(&lba).copied())?;
        }
        // The live counts add up to the mapped blocks.
        let stats = pool.stats();
        prop_assert_eq!(stats["live_bytes"].as_u64().unwrap(), model.len() as u64 * BLOCK as u64);
    }
}
