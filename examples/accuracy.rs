//! Sparsity-constrained OT on random problems: does each solve reach a certified optimum, and do the
//! semi-dual and the dual agree?
//!
//! `cargo run --release --example accuracy -- [M] [N]` (default 300 × 200): m and n uniform points in the
//! unit square, squared-Euclidean cost scaled to max 1, uniform marginals, a fixed seed; k ∈ {1, 2, 5} and
//! γ ∈ {0.1, 0.01}, both formulations, default settings. One line per solve, then the largest disagreement
//! between the two formulations' optimal values.

#[path = "../tests/common/data.rs"]
mod data;

use std::time::Instant;

use data::point_cloud_problem;
use sparse_ot::{Formulation, SparseOt};

/// The seed of the point clouds (`point_cloud_problem` in tests/common/data.rs).
const SEED: u64 = 12345;

fn main() -> Result<(), sparse_ot::Error> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let (m, n) = (
        args.first().copied().unwrap_or(300),
        args.get(1).copied().unwrap_or(200),
    );
    let p = point_cloud_problem(m, n, SEED);
    println!("{m} x {n} uniform points, squared-Euclidean cost scaled to max 1, uniform marginals");
    println!(
        "{:>5} {:>3} {:>10} {:>16} {:>6} {:>9}  status",
        "gamma", "k", "form", "objective", "iters", "seconds"
    );
    let mut worst: f64 = 0.0;
    let mut failures = 0;
    for gamma in [0.1, 0.01] {
        for k in [1, 2, 5] {
            let mut values = Vec::new();
            for f in [Formulation::SemiDual, Formulation::Dual] {
                let t = Instant::now();
                let s = SparseOt::new(k, gamma)?.formulation(f).solve(&p)?;
                let secs = t.elapsed().as_secs_f64();
                failures += usize::from(!s.converged());
                println!(
                    "{gamma:>5} {k:>3} {:>10} {:>16.13} {:>6} {secs:>9.3}  {}",
                    f.to_string(),
                    s.value,
                    s.iterations,
                    s.termination
                );
                values.push(s.value);
            }
            worst = worst.max((values[0] - values[1]).abs());
        }
    }
    println!(
        "largest |semi-dual optimum - dual optimum|: {worst:.2e}; solves not converged: {failures}"
    );
    Ok(())
}
