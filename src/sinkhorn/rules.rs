//! The rules both Sinkhorn backends follow: validation and starting point, the ε schedule, the stopping
//! check at every marginal-error measurement, and the [`Solution`] assembled from the final potentials
//! (plan, dual value, metrics in f64).

use ndarray::{Array1, Array2};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::monitor::Progress;
use crate::problem::{check_vector_finite, Problem};
use crate::sinkhorn::settings::Sinkhorn;
use crate::solution::{plan_metrics, Criterion, Method, Plan, RanOn, Solution, Termination};

/// What the stopping rule decides at a marginal-error check.
pub(crate) enum Check {
    /// Keep iterating this stage.
    Continue,
    /// An intermediate ε stage is fitted well enough: move to the next ε.
    NextStage,
    /// Stop with this status: the last stage met the tolerance, or the monitor cancelled the solve.
    Stop(Termination),
}

/// The check shared by the CPU and GPU Sinkhorn loops: reports `err` (the row-marginal error measured after
/// `iterations` iterations) to the monitor, then applies the stopping rule of the current stage; a
/// cancelled monitor stops a solve that has not converged.
pub(crate) fn check(
    cfg: &Sinkhorn,
    iterations: usize,
    err: f64,
    last: bool,
    stage_tol: f64,
) -> Check {
    cfg.monitor.step(&Progress {
        iteration: iterations,
        value: f64::NAN,
        marginal_error: err,
        stage: if last {
            "sinkhorn"
        } else {
            "sinkhorn eps-scaling"
        },
    });
    if stage_tol > 0.0 && err <= stage_tol && last {
        Check::Stop(Termination::Converged(Criterion::MarginalError {
            tol: cfg.tol,
        }))
    } else if cfg.monitor.is_cancelled() {
        Check::Stop(Termination::Cancelled)
    } else if stage_tol > 0.0 && err <= stage_tol {
        Check::NextStage
    } else {
        Check::Continue
    }
}

/// The true max-norm row-marginal error max_i |Σ_j exp((f_i + g_j − C_ij)/ε) − a_i| of the plan at (f, g),
/// in f64. The loops' cheap estimate a_i |exp((f_i − f_i')/ε) − 1| equals it in exact arithmetic but cancels
/// once the potentials dwarf ε (a huge "forbidden" cost entry): a claimed convergence is confirmed with it.
pub(crate) fn row_error(p: &Problem, f: &[f64], g: &[f64], eps: f64) -> f64 {
    let n = p.n();
    let cost = p.cost_slice();
    p.a_slice()
        .par_iter()
        .enumerate()
        .map(|(i, &ai)| {
            let row = &cost[i * n..(i + 1) * n];
            let mass: f64 = row
                .iter()
                .zip(g)
                .map(|(&c, &gj)| ((f[i] + gj - c) / eps).exp())
                .sum();
            (mass - ai).abs()
        })
        .reduce(|| 0.0, f64::max)
}

/// The ε schedule: ε₀ = max(ε, range of C), multiplied by `q` each stage, ending exactly at ε.
pub(crate) fn epsilon_schedule(
    eps: f64,
    scaling: Option<f64>,
    cost_range: f64,
    warm: bool,
) -> Vec<f64> {
    let mut stages = Vec::new();
    if let (Some(q), false) = (scaling, warm) {
        let mut e = cost_range.max(eps);
        while e > eps {
            stages.push(e);
            e *= q;
        }
    }
    stages.push(eps);
    stages
}

/// Checks the marginals (positive: their logarithms are taken) and the warm start.
pub(crate) fn validate(cfg: &Sinkhorn, p: &Problem) -> Result<(Vec<f64>, Vec<f64>)> {
    p.require_positive_a("Sinkhorn", "it takes log a_i")?;
    p.require_positive_b("Sinkhorn", "it takes log b_j")?;
    start_point(cfg, p.m(), p.n())
}

/// The starting potentials (f, g) of an m × n problem: zero, or the warm start (lengths and values checked).
pub(crate) fn start_point(cfg: &Sinkhorn, m: usize, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    match &cfg.warm {
        Some((f, g)) => {
            for (what, v, len) in [("alpha", f, m), ("beta", g, n)] {
                if v.len() != len {
                    return Err(Error::WarmStartMismatch {
                        what,
                        expected: len,
                        found: v.len(),
                    });
                }
                check_vector_finite(what, v.view())?;
            }
            Ok((f.to_vec(), g.to_vec()))
        }
        None => Ok((vec![0.0; m], vec![0.0; n])),
    }
}

/// Dense plan T_ij = exp((f_i + g_j − C_ij)/ε), dual value f·a + g·b − ε ΣT, and metrics.
pub(crate) fn assemble(
    cfg: &Sinkhorn,
    p: &Problem,
    f: Array1<f64>,
    g: Array1<f64>,
    iterations: usize,
    termination: Termination,
    device: RanOn,
) -> Solution {
    let eps = cfg.epsilon;
    let (m, n) = (p.m(), p.n());
    let cost = p.cost();
    let mut data = vec![0.0; m * n];
    let cs = p.cost_slice();
    data.par_chunks_mut(n.max(1))
        .enumerate()
        .for_each(|(i, row)| {
            for ((t, &c), &gj) in row.iter_mut().zip(&cs[i * n..(i + 1) * n]).zip(&g) {
                *t = ((f[i] + gj - c) / eps).exp();
            }
        });
    let plan = Array2::from_shape_vec((m, n), data).expect("m * n entries");
    let mass: f64 = plan.sum();
    let value = f.dot(&p.a()) + g.dot(&p.b()) - eps * mass;
    let (transport_cost, marginal_error_rows, marginal_error_cols) = plan_metrics(
        plan.indexed_iter().map(|((i, j), &v)| (i, j, v)),
        |i, j| cost[[i, j]],
        p.a_slice(),
        p.b_slice(),
    );
    Solution {
        method: Method::Sinkhorn { epsilon: eps },
        device,
        plan: Plan::Dense(plan),
        alpha: f,
        beta: g,
        value,
        transport_cost,
        marginal_error_rows,
        marginal_error_cols,
        iterations,
        termination,
        gpu_work: None,
        plan_kind: None,
        plan_gap: None,
    }
}
