//! `roofline`: this machine's limits for the Sinkhorn kernels and the crate's Sinkhorn iteration time as a
//! multiple of them, measured in the same run.
//!
//! ```text
//! cargo run --release --example roofline -- [--n 2000] [--points 20000] [--json PATH]
//! ```
//!
//! The limits ([`sparse_ot::roofline::Roofline`]): exponentials per second of the crate's SIMD kernels on
//! every thread (f32 and f64) and the read bandwidth of all threads. Then Sinkhorn at ε = 0.01 (fixed
//! iterations: tol 0, no ε-scaling) on a dense n × n problem (uniform random points in the unit square,
//! squared Euclidean cost divided by its maximum) and on n' × n' point clouds (cost computed on the fly,
//! divided by 2, the largest it can be), f32 and f64: time per
//! iteration by differencing runs of N0 and N1 iterations (set-up and the final plan cancel), printed with
//! its bound (max of n² exponentials at the measured rate and reading the cost once) and the ratio. One
//! JSON object per measurement on stdout; `--json PATH` appends them to a file too.

#[path = "common/json_lines.rs"]
mod json_lines;

use std::time::Instant;

use clap::Parser;
use ndarray::Array2;
use sparse_ot::roofline::Roofline;
use sparse_ot::{GroundCost, PointProblem, Precision, Problem, Sinkhorn};

#[derive(Parser)]
#[command(name = "roofline")]
struct Args {
    /// Side of the dense problem.
    #[arg(long, default_value_t = 2000)]
    n: usize,
    /// Points in each cloud of the point-cloud problem (0 skips it).
    #[arg(long, default_value_t = 20000)]
    points: usize,
    /// Seconds for each limit's measurement.
    #[arg(long, default_value_t = 0.5)]
    seconds: f64,
    /// Append the JSON lines to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// n points uniform in the unit square (a fixed xorshift stream).
fn cloud(n: usize, seed: u64) -> Array2<f64> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    Array2::from_shape_fn((n, 2), |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// Seconds per iteration: (t(N1) − t(N0)) / (N1 − N0) of `run`(iterations), each time the best of three
/// (the least disturbed by other load).
fn per_iteration(run: &dyn Fn(usize), (n0, n1): (usize, usize)) -> f64 {
    let time = |iters| {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                run(iters);
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    (time(n1) - time(n0)) / (n1 - n0) as f64
}

fn fixed(precision: Precision, iterations: usize) -> Sinkhorn {
    Sinkhorn::new(0.01)
        .and_then(|c| c.epsilon_scaling(None))
        .and_then(|c| c.tol(0.0))
        .expect("valid settings")
        .max_iter(iterations)
        .precision(precision)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let limits = Roofline::measure(args.seconds);
    println!("limits: {limits}");
    let mut lines = vec![serde_json::json!({
        "what": "limits",
        "exp_f32_per_second": limits.exp_f32_per_second,
        "exp_f64_per_second": limits.exp_f64_per_second,
        "read_bytes_per_second": limits.read_bytes_per_second,
        "kernels": limits.kernels,
        "threads": limits.threads,
    })];
    let n = args.n;
    // Costs scaled to at most 1 (the unit square's diagonal squared is 2), as in benches/compare_pot.py.
    let cost = sparse_ot::pairwise(&cloud(n, 1), &cloud(n, 2), GroundCost::SqEuclidean)?;
    let max = cost.fold(0.0f64, |m, &c| m.max(c));
    let dense = Problem::uniform(&(cost / max))?;
    let points = (args.points > 0)
        .then(|| {
            PointProblem::uniform(
                &cloud(args.points, 3),
                &cloud(args.points, 4),
                GroundCost::SqEuclidean,
            )
            .and_then(|p| p.scaled(2.0))
        })
        .transpose()?;
    for (precision, f32) in [(Precision::F32, true), (Precision::F64, false)] {
        let name = if f32 { "f32" } else { "f64" };
        let t = per_iteration(
            &|iters| {
                fixed(precision, iters).solve(&dense).expect("dense solve");
            },
            (10, 60),
        );
        let bytes = if f32 { 4.0 } else { 8.0 };
        let bound = limits.iteration_bound((n * n) as f64, f32, bytes);
        println!(
            "sinkhorn dense {n} x {n} {name}: {:.3} ms per iteration, {:.2}x the bound {:.3} ms",
            t * 1e3,
            t / bound,
            bound * 1e3
        );
        lines.push(serde_json::json!({
            "what": "sinkhorn_dense", "m": n, "n": n, "precision": name, "epsilon": 0.01,
            "seconds_per_iteration": t, "bound_seconds": bound, "ratio_to_bound": t / bound,
        }));
        if let Some(p) = &points {
            let np = p.m();
            let t = per_iteration(
                &|iters| {
                    fixed(precision, iters)
                        .solve_points(p)
                        .expect("points solve");
                },
                (2, 12),
            );
            let bound = limits.iteration_bound((np * np) as f64, f32, 0.0);
            println!(
                "sinkhorn points {np} x {np} {name}: {:.3} s per iteration, {:.2}x the bound {:.3} s",
                t,
                t / bound,
                bound
            );
            lines.push(serde_json::json!({
                "what": "sinkhorn_points", "m": np, "n": np, "d": 2, "precision": name, "epsilon": 0.01,
                "seconds_per_iteration": t, "bound_seconds": bound, "ratio_to_bound": t / bound,
            }));
        }
    }
    json_lines::emit(&lines, args.json.as_deref())?;
    Ok(())
}
