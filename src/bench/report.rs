//! The bench's results: per core and in total, as text or as one JSON object.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::{BenchOptions, JobResult, VerifyFailure};
use crate::bdev::Bdev;

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Clone)]
pub struct Line {
    pub label: String,
    pub iops: f64,
    pub mibps: f64,
    pub ios: u64,
    pub errors: u64,
    pub lat_us: Latency,
}

pub struct BenchReport {
    pub bdev: String,
    pub workload: String,
    pub queue_depth: u32,
    pub io_bytes: u64,
    pub seconds: u64,
    pub seed: u64,
    /// I/Os each job started a second at most (0: no limit).
    pub rate_iops: u64,
    pub cores: Vec<(usize, Line)>,
    pub total: Line,
    pub verify_failure: Option<(usize, VerifyFailure)>,
    /// Each reactor's core and the share of its loop passes' time that found work, over the
    /// measured run (a busy-polling reactor near 1.0 is bound by its CPU).
    pub reactor_busy: Vec<(usize, f64)>,
    /// For an lsv bench: write amplification of the measured run and the pool's statistics.
    pub lsv: Option<Value>,
}

fn latency(h: &Histogram<u64>) -> Latency {
    let us = |ns: u64| ns as f64 / 1000.0;
    if h.is_empty() {
        return Latency {
            mean: 0.0,
            p50: 0.0,
            p99: 0.0,
            p999: 0.0,
            max: 0.0,
        };
    }
    Latency {
        mean: h.mean() / 1000.0,
        p50: us(h.value_at_quantile(0.5)),
        p99: us(h.value_at_quantile(0.99)),
        p999: us(h.value_at_quantile(0.999)),
        max: us(h.max()),
    }
}

impl BenchReport {
    pub(super) fn new(opts: &BenchOptions, bdev: &dyn Bdev, results: Vec<JobResult>) -> Self {
        let mut all = results[0].histogram.clone();
        all.reset();
        let mut cores = Vec::new();
        let (mut iops, mut mibps, mut ios, mut errors) = (0.0, 0.0, 0u64, 0u64);
        let mut verify_failure = None;
        for r in &results {
            let secs = r.elapsed_ns as f64 / 1e9;
            let line = Line {
                label: format!("core {}", r.core),
                iops: r.ios as f64 / secs,
                mibps: r.bytes as f64 / secs / (1 << 20) as f64,
                ios: r.ios,
                errors: r.errors,
                lat_us: latency(&r.histogram),
            };
            iops += line.iops;
            mibps += line.mibps;
            ios += r.ios;
            errors += r.errors;
            all.add(&r.histogram).expect("histograms share bounds");
            if let (None, Some(f)) = (verify_failure, r.verify_failure) {
                verify_failure = Some((r.core, f));
            }
            cores.push((r.core, line));
        }
        BenchReport {
            bdev: bdev.name().to_string(),
            workload: opts.workload.name().to_string(),
            queue_depth: opts.queue_depth,
            io_bytes: opts.io_bytes,
            seconds: opts.seconds,
            seed: opts.seed,
            rate_iops: opts.rate_iops,
            cores,
            total: Line {
                label: "total".into(),
                iops,
                mibps,
                ios,
                errors,
                lat_us: latency(&all),
            },
            verify_failure,
            reactor_busy: Vec::new(),
            lsv: None,
        }
    }

    fn line_json(l: &Line) -> Value {
        json!({"iops": l.iops, "mibps": l.mibps, "ios": l.ios, "errors": l.errors, "lat_us": l.lat_us})
    }

    pub fn to_json(&self) -> Value {
        json!({
            "bdev": self.bdev,
            "workload": self.workload,
            "queue_depth": self.queue_depth,
            "io_size": self.io_bytes,
            "seconds": self.seconds,
            "seed": self.seed,
            "rate_iops": self.rate_iops,
            "total": Self::line_json(&self.total),
            "cores": self.cores.iter().map(|(core, l)| {
                let mut v = Self::line_json(l);
                v["core"] = json!(core);
                v
            }).collect::<Vec<_>>(),
            "verify_failure": self.verify_failure.map(|(core, f)| json!({
                "core": core, "lba": f.lba, "byte_in_block": f.byte_in_block,
                "expected": format!("{:#018x}", f.expected), "found": format!("{:#018x}", f.found)})),
            "reactors": self.reactor_busy.iter().map(|(core, busy)| json!({"core": core, "busy_share": busy})).collect::<Vec<_>>(),
            "lsv": self.lsv,
        })
    }

    pub fn to_text(&self) -> String {
        let mut s = format!(
            "bdev {} workload {} qd {} io {} B, {} s, seed {}\n{:<10} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
            self.bdev, self.workload, self.queue_depth, self.io_bytes, self.seconds, self.seed,
            "", "IOPS", "MiB/s", "mean us", "p50 us", "p99 us", "p99.9 us", "max us"
        );
        for l in self
            .cores
            .iter()
            .map(|(_, l)| l)
            .chain(std::iter::once(&self.total))
        {
            s.push_str(&format!(
                "{:<10} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}\n",
                l.label,
                l.iops,
                l.mibps,
                l.lat_us.mean,
                l.lat_us.p50,
                l.lat_us.p99,
                l.lat_us.p999,
                l.lat_us.max
            ));
        }
        if self.total.errors > 0 {
            s.push_str(&format!("{} I/O errors\n", self.total.errors));
        }
        if let Some(l) = &self.lsv {
            let wa = &l["run"]["write_amplification"];
            let p = &l["pool"];
            s.push_str(&format!(
                "lsv: write amplification {} this run; {} of {} segments free; {} cleaned; policy {}\n",
                wa.as_f64().map_or("-".to_string(), |w| format!("{w:.3}")),
                p["free_segments"],
                p["segments"],
                p["cleaner"]["segments_cleaned"],
                p["cleaner"]["policy"].as_str().unwrap_or("?")
            ));
        }
        s
    }

    /// Why the run failed, if it did: a verify mismatch or I/O errors.
    pub fn failure(&self) -> Option<String> {
        if let Some((core, f)) = self.verify_failure {
            return Some(format!(
                "verify failed on core {core}: first bad LBA {} (byte {} of the block: expected {:#018x}, found {:#018x})",
                f.lba, f.byte_in_block, f.expected, f.found
            ));
        }
        (self.total.errors > 0).then(|| format!("{} I/O errors", self.total.errors))
    }
}
