//! Quick start on built-in data: 200 source and 150 target points in the unit square, squared Euclidean
//! cost, uniform masses (`point_cloud_problem_with` in tests/common/data.rs). Solves
//! sparsity-constrained OT (k = 3 per column, semi-dual and dual), quadratic OT and entropic OT (Sinkhorn)
//! on the CPU, prints each solver's report and a comparison.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```
//!
//! Use `--release`: a debug build of the crate is unoptimised and roughly 20 times slower here (measured
//! once on a shared 2-core machine: about 3 s in release, about 70 s in debug).

#[path = "../tests/common/data.rs"]
mod data;

use std::time::Instant;

use data::{point_cloud_problem_with, CostScale};
use sparse_ot::{Formulation, Plan, Sinkhorn, Solution, SparseOt};

const M: usize = 200;
const N: usize = 150;
const K: usize = 3;
const GAMMA: f64 = 0.1;
const EPSILON: f64 = 0.01;

fn timed(f: impl FnOnce() -> sparse_ot::Result<Solution>) -> sparse_ot::Result<(Solution, f64)> {
    let start = Instant::now();
    let sol = f()?;
    Ok((sol, start.elapsed().as_secs_f64()))
}

fn main() -> sparse_ot::Result<()> {
    let problem = point_cloud_problem_with(M, N, 2023, CostScale::Raw);
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
