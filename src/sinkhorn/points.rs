//! Sinkhorn on point clouds on the CPU: the iterations of [`crate::sinkhorn::cpu`] over lanes of the cost
//! computed from the points ([`PointLanes`]), so memory stays O((m + n) d); the solution keeps the
//! potentials and reports what the plan would give, measured pair by pair in f64 ([`plan_sums`]).

use ndarray::Array1;

use crate::error::{Error, Result};
use crate::points::{plan_sums, PointLanes, PointProblem, PointSolution};
use crate::problem::require_positive;
use crate::sinkhorn::cpu::{iterate, Task};
use crate::sinkhorn::expsum::{Kernels, Real};
use crate::sinkhorn::rules::start_point;
use crate::sinkhorn::settings::{Precision, Sinkhorn};
use crate::solution::{Criterion, Method, RanOn, Termination};

/// Solves `p` on the CPU; `cfg.monitor` sees every check and can cancel.
pub(crate) fn solve(cfg: &Sinkhorn, p: &PointProblem) -> Result<PointSolution> {
    require_positive("a", p.a(), "Sinkhorn", "it takes log a_i")?;
    require_positive("b", p.b(), "Sinkhorn", "it takes log b_j")?;
    let (f, g) = start_point(cfg, p.m(), p.n())?;
    let bounds = p.cost_bounds();
    let (f, g, iterations, termination) = match cfg.precision {
        Precision::F64 => run::<f64>(cfg, p, bounds, 0.0, f, g),
        // f32 lanes are computed from the lower bound of the cost, as the dense path shifts by its minimum.
        Precision::F32 => run::<f32>(cfg, p, bounds, bounds.0, f, g),
    };
    assemble(cfg, p, f, g, iterations, termination, RanOn::Cpu)
}

fn run<F: Real>(
    cfg: &Sinkhorn,
    p: &PointProblem,
    bounds: (f64, f64),
    offset: f64,
    f: Vec<f64>,
    g: Vec<f64>,
) -> (Vec<f64>, Vec<f64>, usize, Termination) {
    let lanes = PointLanes::<F>::new(p, offset);
    let exact = PointLanes::<f64>::new(p, 0.0);
    let a = p.a();
    let (a, b) = (
        a.as_slice().expect("contiguous"),
        p.b().to_slice().expect("contiguous"),
    );
    let task = Task {
        a,
        b,
        lanes: &lanes,
        bounds,
        row_error: &|f: &[f64], g: &[f64], eps: f64| row_error(&exact, a, f, g, eps),
        finishes: false,
    };
    iterate(cfg, &task, f, g)
}

/// max_i |Σ_j exp((f_i + g_j − C_ij)/ε) − a_i| in f64, the cost computed row by row.
fn row_error(lanes: &PointLanes<f64>, a: &[f64], f: &[f64], g: &[f64], eps: f64) -> f64 {
    use rayon::prelude::*;
    let kernels = Kernels::<f64>::detect();
    let inv = 1.0 / eps;
    a.par_iter()
        .enumerate()
        .map_init(
            || vec![0.0; g.len()],
            |buf, (i, &ai)| {
                let row = lanes.row(i, buf);
                (kernels.log_sum_exp(g, row, inv, f[i] * inv).exp() - ai).abs()
            },
        )
        .reduce(|| 0.0, f64::max)
}

/// The solution at (f, g): dual value f·a + g·b − ε ΣT, ⟨T, C⟩ and both marginal errors from one f64 pass,
/// and the status held to its promise (a `Converged` whose criterion the returned potentials miss in f64
/// becomes `Unverified`; non-finite numbers are an error).
pub(crate) fn assemble(
    cfg: &Sinkhorn,
    p: &PointProblem,
    f: Vec<f64>,
    g: Vec<f64>,
    iterations: usize,
    termination: Termination,
    device: RanOn,
) -> Result<PointSolution> {
    let eps = cfg.epsilon;
    let sums = plan_sums(p, &f, &g, eps);
    let worst = |got: &[f64], want: ndarray::ArrayView1<'_, f64>| {
        got.iter()
            .zip(want)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    };
    let (rows, cols) = (worst(&sums.rows, p.a()), worst(&sums.cols, p.b()));
    let dot = |x: &[f64], y: ndarray::ArrayView1<'_, f64>| -> f64 {
        x.iter().zip(y).map(|(u, v)| u * v).sum()
    };
    let value = dot(&f, p.a()) + dot(&g, p.b()) - eps * sums.mass;
    let finite = |what: &'static str, ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(Error::NonFiniteResult { what })
        }
    };
    finite("the objective value", value.is_finite())?;
    finite("the transport cost", sums.transport_cost.is_finite())?;
    finite("a marginal error", rows.is_finite() && cols.is_finite())?;
    finite("alpha", f.iter().all(|x| x.is_finite()))?;
    finite("beta", g.iter().all(|x| x.is_finite()))?;
    let error = rows.max(cols);
    // Rounding slack of one lane's sum of n terms of the size of the largest mass entry.
    let slack = p.m().max(p.n()) as f64 * f64::EPSILON * p.largest_marginal();
    let termination = match termination {
        Termination::Converged(Criterion::MarginalError { tol }) if error > tol + slack => {
            Termination::Unverified {
                marginal_error: error,
            }
        }
        t => t,
    };
    Ok(PointSolution {
        method: Method::Sinkhorn { epsilon: eps },
        device,
        alpha: Array1::from(f),
        beta: Array1::from(g),
        value,
        transport_cost: sums.transport_cost,
        marginal_error_rows: rows,
        marginal_error_cols: cols,
        iterations,
        termination,
        gpu_work: None,
    })
}
