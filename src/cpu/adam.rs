//! A fixed-budget Adam ascent on the sparse (semi-)dual: the mixture-of-experts router recipe of the paper
//! (semi-dual, learning rate 1e-2, 20 steps from α = 0). Value and gradient come from
//! [`SparseDual`](crate::cpu::objective::SparseDual); the plan and report from the shared
//! [`finish`](crate::cpu::sparse::finish), so this module holds only the update rule.

use crate::config::SparseOt;
use crate::cpu::objective::SparseDual;
use crate::cpu::sparse::{finish, resolve, transpose_solution};
use crate::error::Result;
use crate::problem::Problem;
use crate::solution::{Criterion, Lanes, Solution, Termination};

/// Adam hyper-parameters (β₁, β₂ and ε are the usual defaults of Adam / optax).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Adam {
    pub learning_rate: f64,
    pub steps: usize,
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
/// `Converged` when the returned potentials meet the tolerance, `MaxIterations` otherwise.
pub(crate) fn solve(cfg: &SparseOt, adam: Adam, problem: &Problem) -> Result<Solution> {
    match cfg.lanes {
        Lanes::Columns => solve_columns(cfg, adam, problem, "rows"),
        Lanes::Rows => {
            let mut t_cfg = cfg.clone();
            t_cfg.warm_alpha = cfg.warm_beta.clone();
            t_cfg.warm_beta = cfg.warm_alpha.clone();
            let sol = solve_columns(&t_cfg, adam, &problem.transposed(), "columns")?;
            Ok(transpose_solution(sol, cfg))
        }
    }
}

fn solve_columns(cfg: &SparseOt, adam: Adam, p: &Problem, axis: &'static str) -> Result<Solution> {
    let resolved = resolve(cfg, p, axis)?;
    let mut x = resolved.x0;
    let mut dual = SparseDual::new(
        p.cost(),
        p.a_slice(),
        p.b_slice(),
        resolved.k,
        cfg.gamma,
        cfg.formulation,
    );
    let dim = x.len();
    let (mut grad, mut m1, mut m2) = (vec![0.0; dim], vec![0.0; dim], vec![0.0; dim]);
    let mut steps = 0;
    for t in 1..=adam.steps {
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
    let mut sol = finish(cfg, p, &mut dual, &x, Termination::MaxIterations, steps);
    set_termination(cfg, cfg.tol, &mut sol);
    Ok(sol)
}

/// The recipe's status from the plan's measured marginal violation (the semi-dual only constrains the rows
/// through its gradient): `Converged` when it is ≤ `tol` (`cfg.tol` on the CPU), else `MaxIterations`.
pub(crate) fn set_termination(cfg: &SparseOt, tol: f64, sol: &mut Solution) {
    let violation = match cfg.formulation {
        crate::Formulation::SemiDual => sol.marginal_error_rows,
        crate::Formulation::Dual => sol.marginal_error_rows.max(sol.marginal_error_cols),
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
