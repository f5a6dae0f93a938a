//! Sparsity-constrained OT on random problems: does each solve reach a certified optimum, and do the
//! semi-dual and the dual agree?
//!
//! `cargo run --release --example accuracy -- [M] [N]` (default 300 × 200): m and n uniform points in the
//! unit square, squared-Euclidean cost scaled to max 1, uniform marginals, a fixed seed; k ∈ {1, 2, 5} and
//! γ ∈ {0.1, 0.01}, both formulations, default settings. One line per solve, then the largest disagreement
//! between the two formulations' optimal values.

use std::time::Instant;

use ndarray::{Array1, Array2};
use sparse_ot::{Formulation, Problem, SparseOt};

/// xorshift64 uniform numbers in [0, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn problem(m: usize, n: usize) -> Result<Problem, sparse_ot::Error> {
    let mut rng = Rng(12345);
    let x: Vec<[f64; 2]> = (0..m).map(|_| [rng.next(), rng.next()]).collect();
    let y: Vec<[f64; 2]> = (0..n).map(|_| [rng.next(), rng.next()]).collect();
    let mut cost = Array2::from_shape_fn((m, n), |(i, j)| {
        (x[i][0] - y[j][0]).powi(2) + (x[i][1] - y[j][1]).powi(2)
    });
    let max = cost.iter().cloned().fold(0.0, f64::max);
    cost /= max;
    let a = Array1::from_elem(m, 1.0 / m as f64);
    let b = Array1::from_elem(n, 1.0 / n as f64);
    Problem::new(a.view(), b.view(), cost.view())
}

fn main() -> Result<(), sparse_ot::Error> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let (m, n) = (
        args.first().copied().unwrap_or(300),
        args.get(1).copied().unwrap_or(200),
    );
    let p = problem(m, n)?;
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
