//! The delay bdev (SPDK's `bdev_delay_create`): passes every request to a base bdev and holds
//! its completion back for a set latency. For tests that need requests to stay in flight (an
//! appliance killed under I/O) and for latency experiments.
//!
//! One request in 100 takes the p99 latency instead of the average, as SPDK's does.
//! While it holds completions it asks its reactor not to sleep past the first one due
//! (`reactor::wake_by`), so an adaptive reactor releases them on time. (Until the fifteenth
//! session they waited for the reactor's next wake-up, up to `reactor::MAX_SLEEP_MS` later:
//! 16 writes of 20 ms each ran at 155 a second; now at 697.)

use std::collections::VecDeque;
use std::time::Instant;

use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    Bdev, BdevChannel, BdevEntry, BdevError, ChannelContext, IoChannel, IoCompletion, IoRequest,
    IoType, SlotCompletion, SubmitError,
};

/// Longest latency accepted, µs (10 s).
pub const MAX_LATENCY_US: u64 = 10_000_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayCreateParams {
    pub base_bdev_name: String,
    pub name: String,
    pub avg_read_latency: u64,
    pub p99_read_latency: u64,
    pub avg_write_latency: u64,
    pub p99_write_latency: u64,
    #[serde(default)]
    pub uuid: Option<Uuid>,
}

pub struct DelayBdev {
    params: DelayCreateParams,
    uuid: Uuid,
    base: BdevEntry,
}

impl DelayBdev {
    pub fn create(p: &DelayCreateParams, base: BdevEntry) -> Result<DelayBdev, BdevError> {
        super::check_name(&p.name)?;
        for l in [
            p.avg_read_latency,
            p.p99_read_latency,
            p.avg_write_latency,
            p.p99_write_latency,
        ] {
            if l > MAX_LATENCY_US {
                return Err(BdevError::Unsupported(format!(
                    "delay bdev: latency {l} µs is over the limit of {MAX_LATENCY_US}"
                )));
            }
        }
        Ok(DelayBdev {
            params: p.clone(),
            uuid: p.uuid.unwrap_or_else(Uuid::new_v4),
            base,
        })
    }
}

impl Bdev for DelayBdev {
    fn name(&self) -> &str {
        &self.params.name
    }
    fn uuid(&self) -> Uuid {
        self.uuid
    }
    fn block_size(&self) -> u32 {
        self.base.bdev.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.base.bdev.num_blocks()
    }
    fn resizable(&self) -> bool {
        self.base.bdev.resizable()
    }
    fn product_name(&self) -> &'static str {
        "delay"
    }
    fn supports(&self, io_type: IoType) -> bool {
        self.base.bdev.supports(io_type)
    }
    fn max_iovs(&self) -> usize {
        self.base.bdev.max_iovs()
    }
    fn max_rw_blocks(&self) -> u64 {
        self.base.bdev.max_rw_blocks()
    }
    fn create_channel(&self, ctx: &ChannelContext) -> Result<Box<dyn BdevChannel>, BdevError> {
        let qd = ctx.queue_depth as usize;
        Ok(Box::new(DelayChannel {
            base: self.base.open_channel(ctx)?,
            read_ns: [
                self.params.avg_read_latency * 1000,
                self.params.p99_read_latency * 1000,
            ],
            write_ns: [
                self.params.avg_write_latency * 1000,
                self.params.p99_write_latency * 1000,
            ],
            count: 0,
            epoch: Instant::now(),
            base_done: Vec::with_capacity(qd),
            held: VecDeque::with_capacity(qd),
        }))
    }
    fn driver_info(&self) -> Value {
        json!({"delay": {"base_bdev_name": self.params.base_bdev_name}})
    }
    fn config_json(&self) -> Value {
        json!({
            "method": "bdev_delay_create",
            "params": {
                "base_bdev_name": self.params.base_bdev_name,
                "name": self.params.name,
                "avg_read_latency": self.params.avg_read_latency,
                "p99_read_latency": self.params.p99_read_latency,
                "avg_write_latency": self.params.avg_write_latency,
                "p99_write_latency": self.params.p99_write_latency,
                "uuid": self.uuid.to_string(),
            }
        })
    }
    fn flush_sync(&self) -> Result<(), BdevError> {
        self.base.bdev.flush_sync()
    }
}

struct DelayChannel {
    base: IoChannel,
    read_ns: [u64; 2],
    write_ns: [u64; 2],
    count: u64,
    epoch: Instant,
    base_done: Vec<IoCompletion>,
    /// Finished by the base, waiting out their latency: (release time, completion).
    held: VecDeque<(u64, SlotCompletion)>,
}

impl BdevChannel for DelayChannel {
    fn submit(&mut self, slot: u32, req: &IoRequest<'_>) -> Result<(), SubmitError> {
        let now = self.epoch.elapsed().as_nanos() as u64;
        self.base.submit(
            &IoRequest {
                tag: slot as u64,
                ..*req
            },
            now,
        )
    }

    fn poll(&mut self, done: &mut Vec<SlotCompletion>) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        self.base.poll(now, &mut self.base_done);
        for c in self.base_done.drain(..) {
            self.count += 1;
            let tail = usize::from(self.count.is_multiple_of(100));
            let delay = match c.io_type {
                IoType::Read => self.read_ns[tail],
                _ => self.write_ns[tail],
            };
            self.held.push_back((
                now + delay,
                SlotCompletion {
                    slot: c.tag as u32,
                    status: c.status,
                },
            ));
        }
        // Release everything due (latencies differ by type, so look at every entry).
        let mut i = 0;
        let mut next_due = u64::MAX;
        while i < self.held.len() {
            if self.held[i].0 <= now {
                let (_, c) = self.held.remove(i).expect("index in range");
                done.push(c);
            } else {
                next_due = next_due.min(self.held[i].0);
                i += 1;
            }
        }
        if next_due != u64::MAX {
            crate::reactor::wake_by(self.epoch + std::time::Duration::from_nanos(next_due));
        }
    }
}
