//! A fixed-budget Adam ascent on the sparse (semi-)dual: the mixture-of-experts router recipe of the paper
//! (semi-dual, learning rate 1e-2, 20 steps from α = 0), on the CPU. Value and gradient come from
//! [`SparseDual`]; the plan and report from the CPU pipeline's [`solution_at`], so this module holds only
//! the update rule and the recipe's status (shared with the GPU recipe).

use crate::error::{positive, Result};
use crate::problem::Problem;
use crate::solution::{Criterion, Formulation, Solution, Termination};
use crate::sparse::cpu::solution_at;
use crate::sparse::objective::SparseDual;
use crate::sparse::rules;
use crate::sparse::settings::SparseOt;

/// Adam hyper-parameters (β₁, β₂ and ε are the usual defaults of Adam / optax).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Adam {
    pub learning_rate: f64,
    pub steps: usize,
}

impl Adam {
    /// Errors: a learning rate that is not finite and > 0.
    pub(crate) fn new(learning_rate: f64, steps: usize) -> Result<Self> {
        Ok(Self {
            learning_rate: positive("learning_rate", learning_rate)?,
            steps,
        })
    }
}

/// First-moment decay β₁ (shared with the GPU kernel `shaders/adam.wgsl`).
pub(crate) const BETA1: f64 = 0.9;
/// Second-moment decay β₂.
pub(crate) const BETA2: f64 = 0.999;
/// Denominator guard ε.
pub(crate) const EPS: f64 = 1e-8;

/// Bias corrections (1 − β₁ᵗ, 1 − β₂ᵗ) of step t (1-based).
pub(crate) fn bias_correction(t: usize) -> (f64, f64) {
    (1.0 - BETA1.powi(t as i32), 1.0 - BETA2.powi(t as i32))
}

/// Runs at most `adam.steps` Adam steps on the formulation of `cfg` (k, γ, lanes, warm start, tol).
///
/// Stops early when the gradient's max-norm (the marginal violation) is ≤ `cfg.tol`. The termination is
/// `Converged` when the returned potentials meet the tolerance, `MaxIterations` otherwise, `Cancelled` when
/// the monitor stopped it first.
pub(crate) fn solve(cfg: &SparseOt, adam: Adam, problem: &Problem) -> Result<Solution> {
    rules::on_columns(cfg, problem, |cfg, columns, k, x0| {
        Ok(solve_columns(cfg, adam, columns, k, x0))
    })
}

fn solve_columns(cfg: &SparseOt, adam: Adam, p: &Problem, k: usize, mut x: Vec<f64>) -> Solution {
    let mut dual = SparseDual::for_problem(p, k, cfg);
    let dim = x.len();
    let (mut grad, mut m1, mut m2) = (vec![0.0; dim], vec![0.0; dim], vec![0.0; dim]);
    let mut steps = 0;
    for t in 1..=adam.steps {
        if cfg.monitor.is_cancelled() {
            break;
        }
        dual.value_and_gradient(&x, &mut grad);
        if max_abs(&grad) <= cfg.tol {
            break;
        }
        let (c1, c2) = bias_correction(t);
        for (((xi, &gi), mi), vi) in x.iter_mut().zip(&grad).zip(&mut m1).zip(&mut m2) {
            *mi = BETA1 * *mi + (1.0 - BETA1) * gi;
            *vi = BETA2 * *vi + (1.0 - BETA2) * gi * gi;
            // Ascent: the (semi-)dual is maximised.
            *xi += adam.learning_rate * (*mi / c1) / ((*vi / c2).sqrt() + EPS);
        }
        steps = t;
    }
    let mut sol = solution_at(cfg, &mut dual, &x, Termination::MaxIterations, steps, None);
    set_termination(cfg, cfg.tol, &mut sol);
    if cfg.monitor.is_cancelled() && !sol.converged() {
        sol.termination = Termination::Cancelled;
    }
    sol
}

/// The recipe's status from the plan's measured marginal violation (the semi-dual only constrains the rows
/// through its gradient): `Converged` when it is ≤ `tol` (`cfg.tol` on the CPU), else `MaxIterations`.
pub(crate) fn set_termination(cfg: &SparseOt, tol: f64, sol: &mut Solution) {
    let violation = match cfg.formulation {
        Formulation::SemiDual => sol.marginal_error_rows,
        Formulation::Dual => sol.marginal_error_rows.max(sol.marginal_error_cols),
    };
    sol.termination = if violation <= tol {
        Termination::Converged(Criterion::MarginalError { tol })
    } else {
        Termination::MaxIterations
    };
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}
