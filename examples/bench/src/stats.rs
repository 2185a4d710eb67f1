//! Latency recording (sorted vectors of microseconds) and summaries.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Latencies of one worker (or a merge of several), by operation name.
#[derive(Default, Debug, Clone)]
pub struct Rec {
    /// Microseconds per operation, unsorted until [`Rec::summary`].
    pub ops: BTreeMap<&'static str, Vec<u32>>,
    /// Failed operations (transport errors or unexpected statuses).
    pub errors: u64,
    /// First few error texts, for the report.
    pub error_samples: Vec<String>,
}

impl Rec {
    /// Records one latency.
    pub fn add(&mut self, op: &'static str, d: Duration) {
        let us = u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        self.ops.entry(op).or_default().push(us);
    }

    /// Records one failure.
    pub fn fail(&mut self, what: String) {
        self.errors += 1;
        if self.error_samples.len() < 5 {
            self.error_samples.push(what);
        }
    }

    /// Total recorded operations.
    pub fn count(&self) -> u64 {
        self.ops.values().map(|v| v.len() as u64).sum()
    }

    /// Merges another recorder into this one.
    pub fn merge(&mut self, other: Rec) {
        for (k, mut v) in other.ops {
            self.ops.entry(k).or_default().append(&mut v);
        }
        self.errors += other.errors;
        for e in other.error_samples {
            if self.error_samples.len() < 5 {
                self.error_samples.push(e);
            }
        }
    }

    /// Sorts and summarises; `elapsed` is the phase's wall time.
    pub fn summary(mut self, elapsed: Duration, concurrency: usize) -> Summary {
        let mut all: Vec<u32> = Vec::with_capacity(self.count() as usize);
        let mut per_op = BTreeMap::new();
        for (k, v) in self.ops.iter_mut() {
            v.sort_unstable();
            all.extend_from_slice(v);
            per_op.insert((*k).to_owned(), Pct::of(v, elapsed));
        }
        all.sort_unstable();
        Summary {
            concurrency,
            ops: all.len() as u64,
            secs: elapsed.as_secs_f64(),
            ops_per_s: all.len() as f64 / elapsed.as_secs_f64().max(1e-9),
            errors: self.errors,
            error_samples: self.error_samples,
            all: Pct::of(&all, elapsed),
            per_op,
        }
    }
}

/// Percentiles of one sorted latency vector, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Pct {
    /// Samples.
    pub n: u64,
    /// Operations per second over the phase.
    pub ops_per_s: f64,
    /// Median.
    pub p50: u32,
    /// 95th percentile.
    pub p95: u32,
    /// 99th percentile.
    pub p99: u32,
    /// Largest.
    pub max: u32,
    /// Mean.
    pub mean: f64,
}

impl Pct {
    /// From a sorted vector.
    pub fn of(sorted: &[u32], elapsed: Duration) -> Self {
        if sorted.is_empty() {
            return Self::default();
        }
        let at =
            |q: f64| sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1];
        Self {
            n: sorted.len() as u64,
            ops_per_s: sorted.len() as f64 / elapsed.as_secs_f64().max(1e-9),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: *sorted.last().unwrap_or(&0),
            mean: sorted.iter().map(|&x| f64::from(x)).sum::<f64>() / sorted.len() as f64,
        }
    }
}

/// One phase's result.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Summary {
    /// Client concurrency.
    pub concurrency: usize,
    /// Successful operations.
    pub ops: u64,
    /// Wall time of the phase.
    pub secs: f64,
    /// Successful operations per second.
    pub ops_per_s: f64,
    /// Failed operations.
    pub errors: u64,
    /// Some failures.
    pub error_samples: Vec<String>,
    /// All operations together.
    pub all: Pct,
    /// By operation.
    pub per_op: BTreeMap<String, Pct>,
}

impl Summary {
    /// p50 of one op (0 when absent).
    pub fn p50(&self, op: &str) -> u32 {
        self.per_op.get(op).map_or(0, |p| p.p50)
    }
}

/// Bounds of one phase: stops at whichever comes first.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Most operations (checked between sessions).
    pub max_ops: u64,
    /// Time cap.
    pub max_time: Duration,
}

impl Caps {
    /// A phase of at most `secs` seconds and `ops` operations.
    pub fn new(secs: f64, ops: u64) -> Self {
        Self {
            max_ops: ops,
            max_time: Duration::from_secs_f64(secs),
        }
    }
}

/// Times a future and records it under `op` (or a failure).
pub async fn timed<T, E: std::fmt::Display>(
    rec: &mut Rec,
    op: &'static str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Option<T> {
    let t = Instant::now();
    match fut.await {
        Ok(v) => {
            rec.add(op, t.elapsed());
            Some(v)
        }
        Err(e) => {
            rec.fail(format!("{op}: {e}"));
            None
        }
    }
}

/// Formats microseconds for tables.
pub fn us(v: f64) -> String {
    if v.abs() >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}
