//! Times one CPU solver on a problem stored as .npz (arrays `a`, `b`, `cost`, f64) and prints one JSON line.
//!
//! Used by `benches/compare_pot.py`. Sinkhorn runs a fixed number of iterations (tol 0, no ε-scaling) and
//! reports the time per iteration as (t(N) − t(N₀)) / (N − N₀) with N₀ = 2, so setup (cost copies) and the
//! final plan assembly are not counted; the sparse solvers report the full solve.
//!
//! ```text
//! cargo run --release --example bench_cpu -- --input P.npz --solver sinkhorn --epsilon 0.01 --iters 50
//! cargo run --release --example bench_cpu -- --input P.npz --solver sparse --formulation dual --k 5 --gamma 0.1
//! ```

use std::fs::File;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use ndarray::{Array1, Array2};
use ndarray_npy::{NpzReader, NpzWriter};
use sparse_ot::{Formulation, Precision, Problem, Sinkhorn, Solution, SparseOt};

#[derive(Clone, Copy, ValueEnum)]
enum Solver {
    Sinkhorn,
    Sparse,
    Quadratic,
}

#[derive(Clone, Copy, ValueEnum)]
enum Form {
    SemiDual,
    Dual,
}

#[derive(Clone, Copy, ValueEnum)]
enum Prec {
    F64,
    F32,
}

#[derive(Parser)]
struct Args {
    /// Problem: arrays a (m), b (n), cost (m × n), f64.
    #[arg(long)]
    input: String,
    /// Where to write the potentials (alpha, beta) of the last run.
    #[arg(long)]
    output: Option<String>,
    #[arg(long, value_enum, default_value = "sinkhorn")]
    solver: Solver,
    #[arg(long, value_enum, default_value = "dual")]
    formulation: Form,
    #[arg(long, default_value_t = 5)]
    k: usize,
    #[arg(long, default_value_t = 0.1)]
    gamma: f64,
    #[arg(long, default_value_t = 0.01)]
    epsilon: f64,
    /// Sinkhorn: iterations per timed run.
    #[arg(long, default_value_t = 50)]
    iters: usize,
    #[arg(long, value_enum, default_value = "f64")]
    precision: Prec,
    /// Sparse solvers: stopping tolerance.
    #[arg(long, default_value_t = sparse_ot::DEFAULT_TOL)]
    tol: f64,
    /// Sparse solvers: iteration limit.
    #[arg(long, default_value_t = sparse_ot::DEFAULT_MAX_ITER)]
    max_iter: usize,
    /// Timed repetitions; the minimum is reported.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
}

fn load(path: &str) -> Result<Problem, Box<dyn std::error::Error>> {
    let mut npz = NpzReader::new(File::open(path)?)?;
    let a: Array1<f64> = npz.by_name("a")?;
    let b: Array1<f64> = npz.by_name("b")?;
    let cost: Array2<f64> = npz.by_name("cost")?;
    Ok(Problem::new(a.view(), b.view(), cost.view())?)
}

fn timed(
    run: &dyn Fn() -> sparse_ot::Result<Solution>,
    repeat: usize,
) -> sparse_ot::Result<(f64, Solution)> {
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..repeat.max(1) {
        let t0 = Instant::now();
        let sol = run()?;
        best = best.min(t0.elapsed().as_secs_f64());
        last = Some(sol);
    }
    Ok((best, last.expect("at least one run")))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let p = load(&args.input)?;
    let mut report =
        serde_json::json!({ "m": p.m(), "n": p.n(), "threads": rayon::current_num_threads() });
    let sol = match args.solver {
        Solver::Sinkhorn => {
            let precision = match args.precision {
                Prec::F64 => Precision::F64,
                Prec::F32 => Precision::F32,
            };
            let cfg = |iters| -> sparse_ot::Result<Sinkhorn> {
                Ok(Sinkhorn::new(args.epsilon)?
                    .tol(0.0)?
                    .epsilon_scaling(None)?
                    .precision(precision)
                    .max_iter(iters))
            };
            let base_iters = 2;
            let iters = args.iters.max(base_iters + 1);
            let (t_base, _) = timed(&|| cfg(base_iters)?.solve(&p), args.repeat)?;
            let (t_full, sol) = timed(&|| cfg(iters)?.solve(&p), args.repeat)?;
            let per_iter = ((t_full - t_base) / (iters - base_iters) as f64).max(0.0);
            report["seconds_per_iteration"] = per_iter.into();
            report["seconds"] = t_full.into();
            report["precision"] = format!("{precision:?}").into();
            report["epsilon"] = args.epsilon.into();
            sol
        }
        Solver::Sparse | Solver::Quadratic => {
            let formulation = match args.formulation {
                Form::SemiDual => Formulation::SemiDual,
                Form::Dual => Formulation::Dual,
            };
            let cfg = match args.solver {
                Solver::Sparse => SparseOt::new(args.k, args.gamma)?,
                _ => SparseOt::quadratic(args.gamma)?,
            }
            .formulation(formulation)
            .tol(args.tol)?
            .max_iter(args.max_iter);
            let (t, sol) = timed(&|| cfg.solve(&p), args.repeat)?;
            report["seconds"] = t.into();
            report["formulation"] = formulation.to_string().into();
            sol
        }
    };
    report["value"] = sol.value.into();
    report["transport_cost"] = sol.transport_cost.into();
    report["iterations"] = sol.iterations.into();
    report["converged"] = sol.converged().into();
    report["termination"] = sol.termination.to_string().into();
    report["marginal_error_rows"] = sol.marginal_error_rows.into();
    report["marginal_error_cols"] = sol.marginal_error_cols.into();
    report["nnz"] = sol.plan.nnz().into();
    if let Some(path) = &args.output {
        let mut npz = NpzWriter::new(File::create(path)?);
        npz.add_array("alpha", &sol.alpha)?;
        npz.add_array("beta", &sol.beta)?;
        npz.finish()?;
    }
    println!("{report}");
    Ok(())
}
