//! CPU solve pipeline of sparsity-constrained and quadratic OT: validate, maximise the (semi-)dual with
//! L-BFGS, then build the sparse plan and its report at the returned potentials.

use ndarray::Array1;

use crate::config::{Observer, SparseOt};
use crate::cpu::lbfgs::{HostLbfgs, Objective};
use crate::cpu::objective::SparseDual;
use crate::error::{Error, Result};
use crate::lbfgs::{self, Settings};
use crate::problem::Problem;
use crate::solution::{plan_metrics, Lanes, Method, Plan, Progress, Solution, SparsePlan, Termination};
use crate::Formulation;

/// Minimisation view of the (semi-)dual: f = −objective.
struct Negated<'d, 'p>(&'d mut SparseDual<'p>);

impl Objective for Negated<'_, '_> {
    fn dim(&self) -> usize {
        self.0.dim()
    }

    fn eval(&mut self, x: &[f64], grad: &mut [f64]) -> f64 {
        let v = self.0.value_and_gradient(x, grad);
        grad.iter_mut().for_each(|g| *g = -*g);
        -v
    }
}

/// Validated numeric settings of one column-sparse solve.
pub(crate) struct Resolved {
    pub k: usize,
    pub x0: Vec<f64>,
}

/// Checks k against m, the marginals against the formulation, and the warm start's lengths.
pub(crate) fn resolve(cfg: &SparseOt, p: &Problem, axis: &'static str) -> Result<Resolved> {
    let m = p.m();
    let k = match cfg.k {
        Some(k) if k == 0 || k > m => return Err(Error::InvalidK { k, max: m, axis }),
        Some(k) => k,
        None => m,
    };
    if cfg.formulation == Formulation::SemiDual {
        p.require_positive_b("the semi-dual", "it divides by b_j")?;
    }
    let mut x0 = vec![0.0; m];
    if let Some(alpha) = &cfg.warm_alpha {
        if alpha.len() != m {
            return Err(Error::WarmStartMismatch {
                what: "alpha",
                expected: m,
                found: alpha.len(),
            });
        }
        check_finite_warm("alpha", alpha)?;
        x0.iter_mut().zip(alpha).for_each(|(x, &v)| *x = v);
    }
    if cfg.formulation == Formulation::Dual {
        let n = p.n();
        match &cfg.warm_beta {
            Some(beta) if beta.len() != n => {
                return Err(Error::WarmStartMismatch {
                    what: "beta",
                    expected: n,
                    found: beta.len(),
                })
            }
            Some(beta) => {
                check_finite_warm("beta", beta)?;
                x0.extend(beta.iter());
            }
            None => x0.extend(std::iter::repeat_n(0.0, n)),
        }
    }
    Ok(Resolved { k, x0 })
}

fn check_finite_warm(what: &'static str, v: &Array1<f64>) -> Result<()> {
    crate::problem::check_vector_finite(what, v.view())
}

pub(crate) fn solve(cfg: &SparseOt, problem: &Problem, observer: Observer<'_>) -> Result<Solution> {
    match cfg.lanes {
        Lanes::Columns => solve_columns(cfg, problem, "rows", observer),
        Lanes::Rows => {
            // Row sparsity of (C, a, b) is column sparsity of (Cᵀ, b, a); potentials swap roles.
            let mut t_cfg = cfg.clone();
            t_cfg.warm_alpha = cfg.warm_beta.clone();
            t_cfg.warm_beta = cfg.warm_alpha.clone();
            let sol = solve_columns(&t_cfg, &problem.transposed(), "columns", observer)?;
            Ok(transpose_solution(sol, cfg))
        }
    }
}

pub(crate) fn transpose_solution(sol: Solution, cfg: &SparseOt) -> Solution {
    let Solution {
        plan,
        alpha,
        beta,
        marginal_error_rows,
        marginal_error_cols,
        ..
    } = sol;
    let plan = match plan {
        Plan::Sparse(p) => Plan::Sparse(p.transposed()),
        Plan::Dense(t) => Plan::Dense(t.reversed_axes()),
    };
    Solution {
        method: method(cfg, Lanes::Rows),
        plan,
        alpha: beta,
        beta: alpha,
        marginal_error_rows: marginal_error_cols,
        marginal_error_cols: marginal_error_rows,
        ..sol
    }
}

pub(crate) fn method(cfg: &SparseOt, lanes: Lanes) -> Method {
    Method::Sparse {
        k: cfg.k,
        gamma: cfg.gamma,
        formulation: cfg.formulation,
        lanes,
    }
}

fn solve_columns(
    cfg: &SparseOt,
    p: &Problem,
    axis: &'static str,
    observer: Observer<'_>,
) -> Result<Solution> {
    let Resolved { k, x0 } = resolve(cfg, p, axis)?;
    let mut dual = SparseDual::new(p.cost(), p.a_slice(), p.b_slice(), k, cfg.gamma, cfg.formulation);
    let settings = Settings::new(cfg.tol, cfg.max_iter);
    let (termination, iterations, x) = {
        let mut neg = Negated(&mut dual);
        let mut backend = HostLbfgs::new(&mut neg, x0, cfg.memory);
        let (termination, driver) = lbfgs::run(settings, &mut backend, |d| {
            observer(&Progress {
                iteration: d.iterations,
                value: -d.value,
                marginal_error: d.grad_norm,
                stage: "lbfgs",
            })
        });
        (termination, driver.iterations, backend.x)
    };
    Ok(finish(cfg, p, &mut dual, &x, termination, iterations))
}

/// Builds the solution at potentials `x`: plan, value recomputed at `x`, metrics.
pub(crate) fn finish(
    cfg: &SparseOt,
    p: &Problem,
    dual: &mut SparseDual<'_>,
    x: &[f64],
    termination: Termination,
    iterations: usize,
) -> Solution {
    let (m, n) = (p.m(), p.n());
    let mut grad = vec![0.0; x.len()];
    let value = dual.value_and_gradient(x, &mut grad);
    let alpha = &x[..m];
    let beta_in = (cfg.formulation == Formulation::Dual).then(|| &x[m..]);
    let mut ptr = Vec::with_capacity(n + 1);
    ptr.push(0);
    let mut indices = Vec::new();
    let mut values = Vec::new();
    let mut beta = vec![0.0; n];
    dual.for_each_column(alpha, beta_in, |j, rows, vals, beta_j| {
        for (&i, v) in rows.iter().zip(vals) {
            if v > 0.0 {
                indices.push(i);
                values.push(v);
            }
        }
        ptr.push(indices.len());
        beta[j] = beta_j;
    });
    let plan = SparsePlan::from_parts((m, n), Lanes::Columns, ptr, indices, values);
    let (transport_cost, marginal_error_rows, marginal_error_cols) =
        plan_metrics(plan.triplets(), p.cost(), p.a_slice(), p.b_slice());
    Solution {
        method: method(cfg, Lanes::Columns),
        device: "cpu".into(),
        plan: Plan::Sparse(plan),
        alpha: Array1::from(alpha.to_vec()),
        beta: Array1::from(beta),
        value,
        transport_cost,
        marginal_error_rows,
        marginal_error_cols,
        iterations,
        termination,
    }
}
