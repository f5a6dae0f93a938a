//! CPU solve pipeline of sparsity-constrained and quadratic OT: validate, maximise the (semi-)dual with
//! L-BFGS, then build the sparse plan and its report at the returned potentials.

use ndarray::Array1;

use crate::config::{Observer, SparseOt};
use crate::cpu::finish::{self, FinishSettings, Smoothed};
use crate::cpu::lbfgs::{HostLbfgs, Objective};
use crate::cpu::objective::SparseDual;
use crate::error::{Error, Result};
use crate::lbfgs::{self, Settings};
use crate::problem::Problem;
use crate::solution::{
    plan_metrics, Criterion, Lanes, Method, Plan, Progress, Solution, SparsePlan, Termination,
};
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
            let sol = solve_columns(&t_cfg, &problem.transposed(), "columns", observer)
                .map_err(transpose_error)?;
            Ok(transpose_solution(sol, cfg))
        }
    }
}

/// An error of the transposed solve, renamed to the inputs the caller gave: a ↔ b, alpha ↔ beta.
pub(crate) fn transpose_error(e: Error) -> Error {
    let swap = |what: &'static str| match what {
        "a" => "b",
        "b" => "a",
        "alpha" => "beta",
        "beta" => "alpha",
        other => other,
    };
    match e {
        Error::ZeroMass {
            what,
            position,
            solver,
            reason,
        } => Error::ZeroMass {
            what: swap(what),
            position,
            solver,
            reason: match reason {
                "it divides by b_j" => "it divides by a_i when the rows carry the k limit",
                other => other,
            },
        },
        Error::WarmStartMismatch {
            what,
            expected,
            found,
        } => Error::WarmStartMismatch {
            what: swap(what),
            expected,
            found,
        },
        Error::NonFinite {
            what,
            position,
            value,
        } => Error::NonFinite {
            what: swap(what),
            position,
            value,
        },
        other => other,
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

pub(crate) fn solve_columns(
    cfg: &SparseOt,
    p: &Problem,
    axis: &'static str,
    observer: Observer<'_>,
) -> Result<Solution> {
    let Resolved { k, x0 } = resolve(cfg, p, axis)?;
    if eliminates_beta(cfg, p) {
        let mut semi = cfg.clone();
        semi.formulation = Formulation::SemiDual;
        let sol = solve_columns(&semi, p, axis, observer)?;
        return Ok(as_dual(cfg, p, k, sol));
    }
    let mut dual = SparseDual::for_problem(p, k, cfg);
    if k1_is_exact(cfg, p, k) {
        let (x, termination, iterations) = k1_exact(cfg, p, &mut dual)?;
        return Ok(finish(cfg, p, &mut dual, &x, termination, iterations));
    }
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
    // L-BFGS stalls on the kinks of k < m (and on rounding for tiny γ): hand over to the nonsmooth finish.
    let (x, termination, iterations) = if termination == Termination::Stalled && cfg.tol > 0.0 {
        nonsmooth_finish(cfg, &mut dual, x, iterations, observer)
    } else {
        (x, termination, iterations)
    };
    Ok(finish(cfg, p, &mut dual, &x, termination, iterations))
}

/// Whether the dual is maximised through its β-eliminated form. For fixed α, D_k(α, ·) is maximised in closed
/// form by β_j = −γ θ_j, the threshold of the sparse projection of column j (SPEC §2.2), and
/// D_k(α, β*(α)) = S_k(α). So max D_k = max S_k, and L-BFGS over α alone (the semi-dual) followed by β = β*(α)
/// maximises the dual exactly, with fewer variables and a better-conditioned problem than the joint (α, β)
/// iteration. At (α, β*(α)) the β-part of the dual gradient (b − Tᵀ1) vanishes, so the stopping rule is the
/// dual's own. The joint iteration is kept where its semantics matter: a fixed budget (tol 0), evaluation of a
/// start point (max_iter 0), a warm start that carries β, and zero entries in b (the semi-dual divides by b_j).
fn eliminates_beta(cfg: &SparseOt, p: &Problem) -> bool {
    cfg.formulation == Formulation::Dual
        && cfg.tol > 0.0
        && cfg.max_iter > 0
        && cfg.warm_beta.is_none()
        && p.b().iter().all(|&b| b > 0.0)
}

/// Reports a solution of the β-eliminated dual as a solution of the dual: same plan and potentials (β is
/// already β*(α)), value D_k(α, β) evaluated at them.
fn as_dual(cfg: &SparseOt, p: &Problem, k: usize, sol: Solution) -> Solution {
    let mut dual = SparseDual::for_problem(p, k, cfg);
    let x: Vec<f64> = sol.alpha.iter().chain(sol.beta.iter()).copied().collect();
    let value = objective(&mut dual, &x);
    Solution {
        method: method(cfg, Lanes::Columns),
        value,
        ..sol
    }
}

/// Whether a column-sparse solve with this k goes to the exact route of [`k1_exact`].
pub(crate) fn k1_is_exact(cfg: &SparseOt, p: &Problem, k: usize) -> bool {
    k == 1 && p.m() > 1 && cfg.tol > 0.0 && cfg.max_iter > 0
}

/// Continues a column-sparse solve whose L-BFGS phase ran elsewhere (the GPU, in f32) and stalled: runs the
/// nonsmooth finish in f64 from its potentials `x` (α, or (α, β) for the dual) and builds the solution.
pub(crate) fn finish_after_stall(
    cfg: &SparseOt,
    p: &Problem,
    k: usize,
    x: Vec<f64>,
    iterations: usize,
    observer: Observer<'_>,
) -> Solution {
    let mut dual = SparseDual::for_problem(p, k, cfg);
    let (x, termination, iterations) = nonsmooth_finish(cfg, &mut dual, x, iterations, observer);
    finish(cfg, p, &mut dual, &x, termination, iterations)
}

/// k = 1 is unregularised OT in disguise (SPEC §2.3): S_1(α) = α·a − Σ_j b_j max_i(α_i − c_ij) + (γ/2)‖b‖²
/// is the LP semi-dual plus a constant, so the optimal transport potential α of the network simplex is an
/// exact maximiser, and β_j = γ b_j − max_i(α_i − c_ij) maximises the dual at that α. The exact plan P is
/// feasible for the relaxed primal, whose objective there is at most ⟨P, C⟩ + (γ/2)‖b‖²: that certifies the
/// gap. `iterations` counts network-simplex pivots; a warm start is not needed and not used. With
/// `max_iter(0)` (evaluate the start point) or `tol(0)` (a fixed budget of iterations) the general path runs.
fn k1_exact(
    cfg: &SparseOt,
    p: &Problem,
    dual: &mut SparseDual<'_>,
) -> Result<(Vec<f64>, Termination, usize)> {
    let exact = crate::ExactOt::new().solve(p)?;
    let mut x = exact.alpha.to_vec();
    if cfg.formulation == Formulation::Dual {
        let gamma = cfg.gamma;
        for (j, c) in dual.cost_t.rows().into_iter().enumerate() {
            let top = x[..p.m()]
                .iter()
                .zip(c)
                .map(|(a, c)| a - c)
                .fold(f64::NEG_INFINITY, f64::max);
            x.push(gamma * p.b()[j] - top);
        }
    }
    let value = objective(dual, &x);
    let bound = exact.transport_cost + 0.5 * cfg.gamma * p.b().iter().map(|b| b * b).sum::<f64>();
    let gap = (bound - value).max(0.0);
    let termination = if exact.converged() && gap <= cfg.tol.max(1e-12 * value.abs()) {
        Termination::Converged(Criterion::DualityGap { gap })
    } else if exact.termination == Termination::MaxIterations {
        Termination::MaxIterations
    } else {
        Termination::Stalled
    };
    Ok((x, termination, exact.iterations))
}

/// Objective of the formulation solved at `x` (α, or (α, β)).
fn objective(dual: &mut SparseDual<'_>, x: &[f64]) -> f64 {
    let mut g = vec![0.0; x.len()];
    dual.value_and_gradient(x, &mut g)
}

/// Runs [`crate::cpu::finish`] from the L-BFGS point and keeps the potentials with the best true objective.
fn nonsmooth_finish(
    cfg: &SparseOt,
    dual: &mut SparseDual<'_>,
    x: Vec<f64>,
    iterations: usize,
    observer: Observer<'_>,
) -> (Vec<f64>, Termination, usize) {
    let m = dual.m();
    // The finish works on the dual (α, β); the semi-dual's β is its maximiser at α.
    let mut xd = x[..m].to_vec();
    if cfg.formulation == Formulation::Dual {
        xd.extend_from_slice(&x[m..]);
    } else {
        let mut beta = vec![0.0; dual.n()];
        dual.for_each_column(&x[..m], None, |j, _, _, b| beta[j] = b);
        xd.extend(beta);
    }
    let settings = FinishSettings {
        tol: cfg.tol,
        max_steps: cfg.max_iter.saturating_sub(iterations),
    };
    let (cost_t, a, b, k, gamma) = (&dual.cost_t, dual.a, dual.b, dual.k, dual.gamma);
    let mut sm = Smoothed::new(cost_t, a, b, k, gamma);
    let out = finish::run(&mut sm, &xd, &settings, |step, residual| {
        observer(&Progress {
            iteration: iterations + step,
            value: f64::NAN,
            marginal_error: residual,
            stage: "smoothing newton",
        })
    });
    let smoothed_bound = (out.residual <= cfg.tol).then(|| sm.primal_bound());
    let view = |xd: &[f64]| -> Vec<f64> {
        match cfg.formulation {
            Formulation::Dual => xd.to_vec(),
            Formulation::SemiDual => xd[..m].to_vec(),
        }
    };
    let mut best = x;
    let mut best_value = objective(dual, &best);
    let certified_x = out.certified.as_ref().map(|c| c.x.clone());
    for cand in std::iter::once(out.x.clone()).chain(certified_x) {
        let c = view(&cand);
        let v = objective(dual, &c);
        if v > best_value {
            best = c;
            best_value = v;
        }
    }
    let iterations = iterations + out.steps;
    // Any near-feasible mixed plan bounds D_k* from above; the best bound certifies the gap.
    let bound = out
        .certified
        .as_ref()
        .map(|c| c.primal)
        .into_iter()
        .chain(smoothed_bound)
        .fold(f64::INFINITY, f64::min);
    let gap = (bound - best_value).max(0.0);
    let termination = if gap <= cfg.tol.max(1e-12 * best_value.abs()) {
        Termination::Converged(Criterion::DualityGap { gap })
    } else if out.steps >= settings.max_steps {
        Termination::MaxIterations
    } else {
        Termination::Stalled
    };
    (best, termination, iterations)
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
