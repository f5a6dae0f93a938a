//! Quick start on built-in data: 200 source and 150 target points in the unit square, squared Euclidean
//! cost, uniform masses. Solves sparsity-constrained OT (k = 3 per column, semi-dual and dual), quadratic OT
//! and entropic OT (Sinkhorn) on the CPU, prints each solver's report and a comparison.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```
//!
//! Use `--release`: a debug build of the crate is unoptimised and roughly 20 times slower here (measured
//! once on a shared 2-core machine: about 3 s in release, about 70 s in debug).

use std::time::Instant;

use ndarray::{Array1, Array2};
use sparse_ot::{Formulation, Plan, Problem, Sinkhorn, Solution, SparseOt};

const M: usize = 200;
const N: usize = 150;
const K: usize = 3;
const GAMMA: f64 = 0.1;
const EPSILON: f64 = 0.01;

/// A tiny deterministic generator (SplitMix64), so the data are the same on every machine.
struct SplitMix(u64);

impl SplitMix {
    /// Uniform in [0, 1).
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as f64 / 2f64.powi(64)
    }
}

/// m sources and n targets uniform in [0, 1]², C_ij = ‖x_i − y_j‖², masses 1/m and 1/n.
fn point_cloud_problem(m: usize, n: usize, seed: u64) -> sparse_ot::Result<Problem> {
    let mut rng = SplitMix(seed);
    let x: Vec<[f64; 2]> = (0..m).map(|_| [rng.next(), rng.next()]).collect();
    let y: Vec<[f64; 2]> = (0..n).map(|_| [rng.next(), rng.next()]).collect();
    let cost = Array2::from_shape_fn((m, n), |(i, j)| {
        let (dx, dy) = (x[i][0] - y[j][0], x[i][1] - y[j][1]);
        dx * dx + dy * dy
    });
    let a = Array1::from_elem(m, 1.0 / m as f64);
    let b = Array1::from_elem(n, 1.0 / n as f64);
    Problem::new(a.view(), b.view(), cost.view())
}

fn timed(f: impl FnOnce() -> sparse_ot::Result<Solution>) -> sparse_ot::Result<(Solution, f64)> {
    let start = Instant::now();
    let sol = f()?;
    Ok((sol, start.elapsed().as_secs_f64()))
}

fn main() -> sparse_ot::Result<()> {
    let problem = point_cloud_problem(M, N, 2023)?;
    println!(
        "{M} sources x {N} targets in the unit square, squared Euclidean cost, uniform masses\n"
    );

    let runs: Vec<(&str, Solution, f64)> = vec![
        {
            let (s, t) = timed(|| SparseOt::new(K, GAMMA)?.solve(&problem))?;
            ("sparse k=3 semi-dual", s, t)
        },
        {
            let (s, t) = timed(|| {
                SparseOt::new(K, GAMMA)?
                    .formulation(Formulation::Dual)
                    .solve(&problem)
            })?;
            ("sparse k=3 dual", s, t)
        },
        {
            let (s, t) = timed(|| SparseOt::quadratic(GAMMA)?.solve(&problem))?;
            ("quadratic", s, t)
        },
        {
            let (s, t) = timed(|| Sinkhorn::new(EPSILON)?.solve(&problem))?;
            ("sinkhorn", s, t)
        },
    ];

    for (_, sol, _) in &runs {
        println!("{sol}\n");
    }

    println!(
        "{:<22} {:>13} {:>14} {:>7} {:>8} {:>10} {:>10} {:>6} {:>9}",
        "method",
        "objective",
        "transport cost",
        "nnz",
        "max/col",
        "err rows",
        "err cols",
        "iters",
        "seconds"
    );
    for (name, sol, seconds) in &runs {
        let max_per_column = match &sol.plan {
            Plan::Sparse(p) if p.lanes() == sparse_ot::Lanes::Columns => p.max_lane_nnz(),
            plan => {
                let t = plan.to_dense();
                t.columns()
                    .into_iter()
                    .map(|c| c.iter().filter(|&&v| v > 0.0).count())
                    .max()
                    .unwrap_or(0)
            }
        };
        println!(
            "{:<22} {:>13.8} {:>14.8} {:>7} {:>8} {:>10.2e} {:>10.2e} {:>6} {:>9.3}{}",
            name,
            sol.value,
            sol.transport_cost,
            sol.plan.nnz(),
            max_per_column,
            sol.marginal_error_rows,
            sol.marginal_error_cols,
            sol.iterations,
            seconds,
            if sol.converged() {
                ""
            } else {
                "  (not converged)"
            }
        );
    }
    println!(
        "\nThe sparse plans keep at most {K} sources per target; the quadratic plan has no such limit and the \
         entropic plan is dense.\nObjectives are those of each solver's own program (maximised duals), so \
         compare transport costs across solvers."
    );
    Ok(())
}
