//! This machine's limits for the Sinkhorn kernels, measured with the crate's own code: how many
//! exponentials per second its SIMD kernels compute on every thread at once (lanes held in L1 cache, so
//! nothing but the arithmetic counts), and how many bytes per second all threads read from memory. One
//! Sinkhorn iteration on an m × n problem needs m·n exponentials and reads the cost once (4mn bytes in f32,
//! 8mn in f64; nothing for point clouds), so its time divided by the larger of the two bounds says how far
//! it is from what the machine can do.
//!
//! ```no_run
//! let limits = sparse_ot::roofline::Roofline::measure(0.3);
//! let exp_bound = 2000.0 * 2000.0 / limits.exp_f32_per_second; // seconds per iteration at n = 2000, f32
//! println!("{limits}; bound {exp_bound:.2e} s");
//! ```

use std::fmt;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::sinkhorn::expsum::{Kernels, Real};

/// Limits measured on this machine ([`Roofline::measure`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Roofline {
    /// f32 exponentials per second over all threads, by the kernels Sinkhorn uses.
    pub exp_f32_per_second: f64,
    /// f64 exponentials per second over all threads.
    pub exp_f64_per_second: f64,
    /// Bytes per second all threads read from a buffer far larger than the caches (f32 sums).
    pub read_bytes_per_second: f64,
    /// The kernel build in use: `"avx512"`, `"avx2"` or `"portable"`.
    pub kernels: &'static str,
    /// Threads that took part (rayon's pool).
    pub threads: usize,
}

/// Entries of the lane each thread sums repeatedly: two f32 or f64 lanes stay in a 32 KiB L1 cache.
const LANE: usize = 2048;

/// Bytes of the buffer read for the bandwidth: 256 MiB.
const STREAM_BYTES: usize = 256 << 20;

impl Roofline {
    /// Measures the three rates, each for about `seconds` (at least 0.05 s each; the best of a few passes
    /// for the bandwidth).
    pub fn measure(seconds: f64) -> Self {
        let time = Duration::from_secs_f64(seconds.max(0.05));
        Self {
            exp_f32_per_second: exp_rate::<f32>(time),
            exp_f64_per_second: exp_rate::<f64>(time),
            read_bytes_per_second: read_rate(time),
            kernels: Kernels::<f32>::detect().name(),
            threads: rayon::current_num_threads(),
        }
    }

    /// Seconds one Sinkhorn iteration of `entries` cost entries needs at least: its exponentials at the
    /// measured rate, or reading `bytes_per_entry` per entry (0 for point clouds), whichever is longer.
    pub fn iteration_bound(&self, entries: f64, f32: bool, bytes_per_entry: f64) -> f64 {
        let rate = if f32 {
            self.exp_f32_per_second
        } else {
            self.exp_f64_per_second
        };
        (entries / rate).max(entries * bytes_per_entry / self.read_bytes_per_second)
    }
}

impl fmt::Display for Roofline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.2} G exp/s f32, {:.2} G exp/s f64, {:.1} GB/s read ({} kernels, {} threads)",
            self.exp_f32_per_second / 1e9,
            self.exp_f64_per_second / 1e9,
            self.read_bytes_per_second / 1e9,
            self.kernels,
            self.threads
        )
    }
}

/// Exponentials per second over all threads: each sums exp over its own L1-resident lane until `time` is up.
fn exp_rate<F: Real>(time: Duration) -> f64 {
    let kernels = Kernels::<F>::detect();
    let start = Instant::now();
    let counts: Vec<u64> = rayon::broadcast(|ctx| {
        let y: Vec<F> = (0..LANE)
            .map(|k| F::from_f64(((k + ctx.index()) as f64 * 0.37).sin()))
            .collect();
        let c: Vec<F> = (0..LANE)
            .map(|k| F::from_f64((k as f64 * 0.11).cos()))
            .collect();
        let (mut count, mut sink) = (0u64, 0.0);
        while start.elapsed() < time {
            for _ in 0..64 {
                sink += kernels.log_sum_exp(&y, &c, 3.0, -1.0);
                count += LANE as u64;
            }
        }
        std::hint::black_box(sink);
        count
    });
    counts.iter().sum::<u64>() as f64 / start.elapsed().as_secs_f64()
}

/// Bytes per second read by all threads summing a 256 MiB f32 buffer (best pass).
fn read_rate(time: Duration) -> f64 {
    let data: Vec<f32> = (0..STREAM_BYTES / 4).map(|k| (k % 7) as f32).collect();
    let start = Instant::now();
    let mut best = 0.0f64;
    while best == 0.0 || start.elapsed() < time {
        let t = Instant::now();
        let s: f32 = data.par_chunks(1 << 16).map(lane_sum).sum();
        std::hint::black_box(s);
        best = best.max(STREAM_BYTES as f64 / t.elapsed().as_secs_f64());
    }
    best
}

/// Σ of a chunk in 16 independent accumulators (vectorisable, so the read rate and not the adder's latency
/// bounds it).
fn lane_sum(c: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    for x in c.chunks_exact(16) {
        for (a, v) in acc.iter_mut().zip(x) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + c.chunks_exact(16).remainder().iter().sum::<f32>()
}
