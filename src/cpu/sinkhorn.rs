//! Log-domain Sinkhorn on the CPU (SPEC §5), with ε-scaling and warm start.
//!
//! Each iteration is a g-update (exact column marginals) followed by an f-update. The f-update yields the
//! row-marginal error of the state it starts from for free: (T1)_i = a_i exp((f_i − f_i')/ε). Every
//! `check_every` iterations that error is tested; on convergence the state *before* the f-update is returned,
//! so its columns are exact and its row error is the one measured. The kernel exp(−C/ε) is never formed.

use ndarray::{Array1, Array2};
use rayon::prelude::*;

use crate::config::{Observer, Sinkhorn};
use crate::error::{Error, Result};
use crate::problem::{check_vector_finite, Problem};
use crate::solution::{plan_metrics, Criterion, Method, Plan, Progress, Solution, Termination};

/// ε · LSE_l((p_l − c_l)/ε) over one contiguous lane, two passes (max, then sum of exp).
#[inline]
fn soft_min(p: &[f64], c: &[f64], eps: f64) -> f64 {
    let inv = 1.0 / eps;
    let zmax = p
        .iter()
        .zip(c)
        .map(|(&p, &c)| p - c)
        .fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = p
        .iter()
        .zip(c)
        .map(|(&p, &c)| ((p - c - zmax) * inv).exp())
        .sum();
    zmax + eps * sum.ln()
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
    match &cfg.warm {
        Some((f, g)) => {
            for (what, v, len) in [("alpha", f, p.m()), ("beta", g, p.n())] {
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
        None => Ok((vec![0.0; p.m()], vec![0.0; p.n()])),
    }
}

pub(crate) fn solve(cfg: &Sinkhorn, p: &Problem, observer: Observer<'_>) -> Result<Solution> {
    let (mut f, mut g) = validate(cfg, p)?;
    let (m, n) = (p.m(), p.n());
    let cost = p.cost_slice();
    let cost_t = p.cost().t().as_standard_layout().into_owned();
    let cost_t = cost_t.as_slice().expect("standard layout");
    let (a, b) = (p.a_slice(), p.b_slice());
    let log_a: Vec<f64> = a.iter().map(|x| x.ln()).collect();
    let log_b: Vec<f64> = b.iter().map(|x| x.ln()).collect();
    let (cmin, cmax) = cost
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &c| {
            (lo.min(c), hi.max(c))
        });
    let stages = epsilon_schedule(cfg.epsilon, cfg.scaling, cmax - cmin, cfg.warm.is_some());
    let amax = a.iter().fold(0.0f64, |x, &y| x.max(y));
    let mut f_new = vec![0.0; m];
    let mut iterations = 0;
    let mut termination = Termination::MaxIterations;

    'stages: for (s, &eps) in stages.iter().enumerate() {
        let last = s + 1 == stages.len();
        // Intermediate stages only need a rough fit before ε shrinks.
        let stage_tol = if last {
            cfg.tol
        } else {
            cfg.tol.max(1e-2 * amax)
        };
        loop {
            if iterations >= cfg.max_iter {
                break 'stages;
            }
            g.par_iter_mut().enumerate().for_each(|(j, gj)| {
                *gj = eps * log_b[j] - soft_min(&f, &cost_t[j * m..(j + 1) * m], eps);
            });
            f_new.par_iter_mut().enumerate().for_each(|(i, fi)| {
                *fi = eps * log_a[i] - soft_min(&g, &cost[i * n..(i + 1) * n], eps);
            });
            iterations += 1;
            if iterations % cfg.check_every == 0 {
                let err = a
                    .iter()
                    .zip(f.iter().zip(&f_new))
                    .map(|(&ai, (&fo, &fn_))| ai * (((fo - fn_) / eps).exp() - 1.0).abs())
                    .fold(0.0, f64::max);
                observer(&Progress {
                    iteration: iterations,
                    value: f64::NAN,
                    marginal_error: err,
                    stage: if last {
                        "sinkhorn"
                    } else {
                        "sinkhorn eps-scaling"
                    },
                });
                if stage_tol > 0.0 && err <= stage_tol {
                    if last {
                        // Keep the state before the f-update: columns exact, row error = err.
                        termination =
                            Termination::Converged(Criterion::MarginalError { tol: cfg.tol });
                        break 'stages;
                    }
                    std::mem::swap(&mut f, &mut f_new);
                    continue 'stages;
                }
            }
            std::mem::swap(&mut f, &mut f_new);
        }
    }
    Ok(assemble(
        cfg,
        p,
        Array1::from(f),
        Array1::from(g),
        iterations,
        termination,
    ))
}

/// Dense plan T_ij = exp((f_i + g_j − C_ij)/ε), dual value f·a + g·b − ε ΣT, and metrics.
pub(crate) fn assemble(
    cfg: &Sinkhorn,
    p: &Problem,
    f: Array1<f64>,
    g: Array1<f64>,
    iterations: usize,
    termination: Termination,
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
        cost,
        p.a_slice(),
        p.b_slice(),
    );
    Solution {
        method: Method::Sinkhorn { epsilon: eps },
        device: "cpu".into(),
        plan: Plan::Dense(plan),
        alpha: f,
        beta: g,
        value,
        transport_cost,
        marginal_error_rows,
        marginal_error_cols,
        iterations,
        termination,
    }
}
