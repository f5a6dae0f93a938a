//! The CPU pipeline of sparsity-constrained and quadratic OT (f64): validate, maximise the (semi-)dual with
//! L-BFGS (the semi-dual finished by semismooth Newton once near, [`ascend`]), hand a stalled run to the
//! nonsmooth stage, then build the sparse plan and its report at the returned potentials. k = 1 goes to the
//! network simplex.

use ndarray::Array1;

use crate::error::Result;
use crate::exact::ExactOt;
use crate::lbfgs::host::{HostLbfgs, Objective};
use crate::lbfgs::{self, Settings};
use crate::monitor::{Monitor, Progress};
use crate::problem::Problem;
use crate::solution::{Criterion, Formulation, RanOn, Solution, Termination};
use crate::sparse::newton;
use crate::sparse::nonsmooth::{self, NonsmoothSettings, Smoothed};
use crate::sparse::objective::SparseDual;
use crate::sparse::plans::Relaxed;
use crate::sparse::rules::{self, ColumnData, Outcome, PlanBuilder};
use crate::sparse::settings::SparseOt;

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

/// Iterations over which L-BFGS must cut its best marginal error by 20%, else it hands over to the nonsmooth
/// stage: [`SMALL_PROGRESS_WINDOW`] up to [`LARGE_PROBLEM`] cost entries, [`LARGE_PROGRESS_WINDOW`] above.
///
/// Measured on uniform 2-D points (k = 5, γ = 0.1, squared distances scaled to max 1; a 2-core VM,
/// 2026-12-02, one run each). Small problems: with 100, L-BFGS itself often meets the marginals with an
/// exactly k-sparse plan (500², 1500², 3000²) where a handover after 30 iterations ends with a certified
/// duality gap and a plan that misses a row marginal by ~1e-5 (the optimal plan mixes tied supports), in
/// similar time (3000²: 10.7 s against 6.8 s). Large problems stall either way, and each idle L-BFGS
/// iteration costs a full pass over the cost: 6000² took 39 s with 100 and 27–32 s with 30.
fn progress_window(dual: &SparseDual<'_>) -> usize {
    if dual.m().saturating_mul(dual.n()) <= LARGE_PROBLEM {
        SMALL_PROGRESS_WINDOW
    } else {
        LARGE_PROGRESS_WINDOW
    }
}

/// Cost entries above which a problem counts as large for [`progress_window`] (about 3162²).
const LARGE_PROBLEM: usize = 10_000_000;
/// L-BFGS patience on problems up to [`LARGE_PROBLEM`] entries.
const SMALL_PROGRESS_WINDOW: usize = 100;
/// L-BFGS patience on larger problems.
const LARGE_PROGRESS_WINDOW: usize = 30;

/// Solves `problem` on the CPU; `cfg.monitor` sees every step and can cancel.
pub(crate) fn solve(cfg: &SparseOt, problem: &Problem) -> Result<Solution> {
    rules::on_columns(cfg, problem, solve_columns)
}

/// Solves a validated column problem (k and the start point resolved by [`rules::resolve`]).
pub(crate) fn solve_columns(
    cfg: &SparseOt,
    p: &Problem,
    k: usize,
    x0: Vec<f64>,
) -> Result<Solution> {
    if eliminates_beta(cfg, p.b_slice()) {
        let sol = solve_columns(&semi_dual(cfg), p, k, x0[..p.m()].to_vec())?;
        return Ok(as_dual(cfg, SparseDual::for_problem(p, k, cfg), sol));
    }
    let mut dual = SparseDual::for_problem(p, k, cfg);
    if rules::k1_is_exact(cfg, p, k) {
        let (x, termination, iterations, relaxed) = k1_exact(cfg, p, &mut dual)?;
        return Ok(solution_at(
            cfg,
            &mut dual,
            &x,
            termination,
            iterations,
            Some(relaxed),
        ));
    }
    Ok(maximise(cfg, &mut dual, x0))
}

/// Maximises the (semi-)dual `dual` of a validated column problem from `x0` (every stage after the k = 1
/// route: [`ascend`], the quadratic Newton finish, the nonsmooth stage) and builds the solution there. The
/// cost may be stored or computed from points.
pub(crate) fn maximise(cfg: &SparseOt, dual: &mut SparseDual<'_>, x0: Vec<f64>) -> Solution {
    let k = dual.k;
    let (termination, iterations, x) = ascend(cfg, dual, x0);
    // Without an active sparsity limit the semi-dual is piecewise quadratic: where L-BFGS stalls (badly
    // scaled masses), semismooth Newton on the supports finishes it.
    let (x, termination, iterations) = if termination == Termination::Stalled
        && cfg.tol > 0.0
        && k >= dual.m()
        && cfg.formulation == Formulation::SemiDual
    {
        let budget = cfg.max_iter.saturating_sub(iterations);
        // A try: its steps count (and are reported) only if it reaches the tolerance.
        let out = newton::run(dual, x.clone(), cfg.tol, budget, |_, _, _| {});
        if out.error <= cfg.tol {
            let tol = cfg.tol;
            (
                out.x,
                Termination::Converged(Criterion::MarginalError { tol }),
                iterations + out.steps,
            )
        } else {
            // Not there: the nonsmooth stage starts from the L-BFGS point, as without this stage.
            (x, termination, iterations)
        }
    } else {
        (x, termination, iterations)
    };
    // L-BFGS stalls on the kinks of k < m (and on rounding for tiny γ): hand over to the nonsmooth stage.
    let (x, termination, iterations, relaxed) =
        if termination == Termination::Stalled && cfg.tol > 0.0 {
            nonsmooth_stage(cfg, dual, x, iterations)
        } else {
            (x, termination, iterations, None)
        };
    solution_at(cfg, dual, &x, termination, iterations, relaxed)
}

/// Maximises the (semi-)dual from `x0` to the tolerance: L-BFGS, and for the semi-dual a semismooth Newton
/// finish once L-BFGS is near. Returns the termination, the iterations (L-BFGS iterations plus Newton steps)
/// and the last iterate.
///
/// The semi-dual is piecewise quadratic away from the ties of its top-k selections (the pieces are the
/// plan's supports, `sparse::newton`), and at most optima L-BFGS spends most of its iterations resolving the
/// last digits of a piece Newton solves in a few steps. So L-BFGS stops first at a marginal error of
/// [`NEWTON_SWITCH`] times the largest row mass; from there Newton gets [`NEWTON_TRY`] steps to reach the
/// tolerance. Where it does not (the optimum sits on a tie, where no piece holds it), L-BFGS resumes from
/// Newton's point, which is at least as good as the one Newton started from (with a fresh memory), and the
/// solve goes on as without the try: a stall hands over to the quadratic Newton or the nonsmooth stage.
fn ascend(
    cfg: &SparseOt,
    dual: &mut SparseDual<'_>,
    x0: Vec<f64>,
) -> (Termination, usize, Vec<f64>) {
    let max_a = dual.a.iter().fold(0.0f64, |x, &y| x.max(y));
    let switch = NEWTON_SWITCH * max_a;
    let newton_first =
        cfg.formulation == Formulation::SemiDual && cfg.tol > 0.0 && switch > cfg.tol;
    if !newton_first {
        return lbfgs_phase(cfg, dual, x0, cfg.tol, cfg.max_iter, 0);
    }
    let (termination, iterations, x) = lbfgs_phase(cfg, dual, x0, switch, cfg.max_iter, 0);
    if !matches!(termination, Termination::Converged(_)) {
        // Stalled, out of budget or cancelled above the switch: exactly what L-BFGS alone would have done.
        return (termination, iterations, x);
    }
    let tol = cfg.tol;
    let budget = cfg.max_iter.saturating_sub(iterations).min(NEWTON_TRY);
    let monitor = &cfg.monitor;
    let out = newton::run(dual, x, tol, budget, |step, value, error| {
        monitor.step(&Progress {
            iteration: iterations + step,
            value,
            marginal_error: error,
            stage: "newton",
        })
    });
    let iterations = iterations + out.steps;
    if out.error <= tol {
        return (
            Termination::Converged(Criterion::MarginalError { tol }),
            iterations,
            out.x,
        );
    }
    let rest = cfg.max_iter.saturating_sub(iterations);
    lbfgs_phase(cfg, dual, out.x, tol, rest, iterations)
}

/// Where L-BFGS hands over to Newton: a max-norm marginal error of this times the largest row mass. Measured
/// on uniform 2-D points, n = m = 500, 1000 and 3000 (k = 5, γ = 0.1, the 2-vCPU development VM,
/// 2026-12-04, one solve each): switches from 1e-1 to 3e-3 took times within 10% of each other (Newton then
/// needs 20–30 steps at 1e-1 and 5–12 at 3e-3), while at 3e-1 Newton missed at 3000² and L-BFGS had to run
/// on (833 iterations in all against 386 at 1e-2).
const NEWTON_SWITCH: f64 = 1e-2;
/// Newton steps tried before L-BFGS resumes.
const NEWTON_TRY: usize = 30;

/// L-BFGS from `x0` to the max-norm marginal error `tol` within `max_iter` iterations; `before` iterations
/// were taken by earlier phases (for the progress reports). Returns the termination, the iterations of
/// this phase plus `before`, and the last iterate.
fn lbfgs_phase(
    cfg: &SparseOt,
    dual: &mut SparseDual<'_>,
    x0: Vec<f64>,
    tol: f64,
    max_iter: usize,
    before: usize,
) -> (Termination, usize, Vec<f64>) {
    let settings = Settings {
        progress_window: progress_window(dual),
        ..Settings::new(tol, max_iter)
    };
    let monitor = &cfg.monitor;
    let mut neg = Negated(dual);
    let mut backend = HostLbfgs::new(&mut neg, x0, cfg.memory);
    let (termination, driver) = lbfgs::run(
        settings,
        &mut backend,
        |d| {
            // A resumed phase's start point is the last point of the phase before, already reported.
            if before == 0 || d.iterations > 0 {
                monitor.step(&Progress {
                    iteration: before + d.iterations,
                    value: -d.value,
                    marginal_error: d.grad_norm,
                    stage: "lbfgs",
                })
            }
        },
        &|| monitor.is_cancelled(),
    );
    (termination, before + driver.iterations, backend.x)
}

/// Whether the dual is maximised through its β-eliminated form. For fixed α, D_k(α, ·) is maximised in closed
/// form by β_j = −γ θ_j, the threshold of the sparse projection of column j (docs/MATH.md §2.2), and
/// D_k(α, β*(α)) = S_k(α). So max D_k = max S_k, and L-BFGS over α alone (the semi-dual) followed by β = β*(α)
/// maximises the dual exactly, with fewer variables and a better-conditioned problem than the joint (α, β)
/// iteration. At (α, β*(α)) the β-part of the dual gradient (b − Tᵀ1) vanishes, so the stopping rule is the
/// dual's own. The joint iteration is kept where its semantics matter: a fixed budget (tol 0), evaluation of a
/// start point (max_iter 0), a warm start that carries β, and zero entries in b (the semi-dual divides by b_j).
pub(crate) fn eliminates_beta(cfg: &SparseOt, b: &[f64]) -> bool {
    cfg.formulation == Formulation::Dual
        && cfg.tol > 0.0
        && cfg.max_iter > 0
        && cfg.warm_beta.is_none()
        && b.iter().all(|&b| b > 0.0)
}

/// `cfg` with the semi-dual as its formulation (the β-eliminated dual, [`eliminates_beta`]).
pub(crate) fn semi_dual(cfg: &SparseOt) -> SparseOt {
    let mut semi = cfg.clone();
    semi.formulation = Formulation::SemiDual;
    semi
}

/// Reports a solution of the β-eliminated dual as a solution of the dual `dual`: same plan and potentials
/// (β is already β*(α)), value D_k(α, β) evaluated at them.
pub(crate) fn as_dual(cfg: &SparseOt, mut dual: SparseDual<'_>, sol: Solution) -> Solution {
    let x: Vec<f64> = sol.alpha.iter().chain(sol.beta.iter()).copied().collect();
    let value = objective(&mut dual, &x);
    Solution {
        method: rules::method(cfg, crate::solution::Lanes::Columns),
        value,
        ..sol
    }
}

/// Continues a column problem whose L-BFGS phase ran elsewhere (the GPU, in f32) and stalled: runs the
/// nonsmooth stage in f64 from its potentials `x` (α, or (α, β) for the dual) and builds the solution.
#[cfg(any(feature = "gpu", test))]
pub(crate) fn continue_after_stall(
    cfg: &SparseOt,
    p: &Problem,
    k: usize,
    x: Vec<f64>,
    iterations: usize,
) -> Solution {
    continue_on(cfg, &mut SparseDual::for_problem(p, k, cfg), x, iterations)
}

/// [`continue_after_stall`] on the (semi-)dual `dual`, whose cost may be stored or computed from points.
#[cfg(any(feature = "gpu", test))]
pub(crate) fn continue_on(
    cfg: &SparseOt,
    dual: &mut SparseDual<'_>,
    x: Vec<f64>,
    iterations: usize,
) -> Solution {
    let (x, termination, iterations, relaxed) = nonsmooth_stage(cfg, dual, x, iterations);
    solution_at(cfg, dual, &x, termination, iterations, relaxed)
}

/// k = 1 is unregularised OT in disguise (docs/MATH.md §2.3): S_1(α) = α·a − Σ_j b_j max_i(α_i − c_ij) + (γ/2)‖b‖²
/// is the LP semi-dual plus a constant, so the optimal transport potential α of the network simplex is an
/// exact maximiser, and β_j = γ b_j − max_i(α_i − c_ij) maximises the dual at that α. The exact plan P is
/// feasible for the relaxed primal, whose objective there is at most ⟨P, C⟩ + (γ/2)‖b‖²: that certifies the
/// gap, and P is the relaxation's optimal plan (returned as the relaxed plan). `iterations` counts
/// network-simplex pivots; a warm start is not needed and not used. With `max_iter(0)` (evaluate the start
/// point) or `tol(0)` (a fixed budget of iterations) the general path runs.
fn k1_exact(
    cfg: &SparseOt,
    p: &Problem,
    dual: &mut SparseDual<'_>,
) -> Result<(Vec<f64>, Termination, usize, Relaxed)> {
    let exact = ExactOt::new().monitor(cfg.monitor.quiet()).solve(p)?;
    let mut x = exact.alpha.to_vec();
    if cfg.formulation == Formulation::Dual {
        let gamma = cfg.gamma;
        let mut buf = Vec::new();
        for j in 0..p.n() {
            let c = dual.cost.column(j, &mut buf);
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
    let termination = if exact.converged() && nonsmooth::gap_certifies(gap, value, cfg.tol) {
        Termination::Converged(Criterion::DualityGap { gap })
    } else if matches!(
        exact.termination,
        Termination::MaxIterations | Termination::Cancelled
    ) {
        exact.termination
    } else {
        Termination::Stalled
    };
    let relaxed = Relaxed {
        plan: PlanBuilder::from_triplets(p.m(), p.n(), exact.plan.triplets()),
        primal: bound,
    };
    Ok((x, termination, exact.iterations, relaxed))
}

/// Objective of the formulation solved at `x` (α, or (α, β)).
fn objective(dual: &mut SparseDual<'_>, x: &[f64]) -> f64 {
    let mut g = vec![0.0; x.len()];
    dual.value_and_gradient(x, &mut g)
}

/// Runs the [nonsmooth stage](crate::sparse::nonsmooth) from the L-BFGS point and keeps the potentials with
/// the best true objective, and the relaxed plan with the least objective it built.
fn nonsmooth_stage(
    cfg: &SparseOt,
    dual: &mut SparseDual<'_>,
    x: Vec<f64>,
    iterations: usize,
) -> (Vec<f64>, Termination, usize, Option<Relaxed>) {
    let m = dual.m();
    // The nonsmooth stage works on the dual (α, β); the semi-dual's β is its maximiser at α.
    let mut xd = x[..m].to_vec();
    if cfg.formulation == Formulation::Dual {
        xd.extend_from_slice(&x[m..]);
    } else {
        let mut beta = vec![0.0; dual.n()];
        dual.for_each_column(&x[..m], None, |j, _, _, b| beta[j] = b);
        xd.extend(beta);
    }
    let settings = NonsmoothSettings {
        tol: cfg.tol,
        max_steps: cfg.max_iter.saturating_sub(iterations),
        semi_dual: cfg.formulation == Formulation::SemiDual,
    };
    let (cost, a, b, k, gamma) = (&dual.cost, dual.a, dual.b, dual.k, dual.gamma);
    let mut sm = Smoothed::new(cost, a, b, k, gamma);
    let monitor: &Monitor = &cfg.monitor;
    let out = nonsmooth::run(&mut sm, &xd, &settings, |step, residual| {
        monitor.step(&Progress {
            iteration: iterations + step,
            value: f64::NAN,
            marginal_error: residual,
            stage: "smoothing newton",
        });
        !monitor.is_cancelled()
    });
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
    let relaxed = out
        .certified
        .map(|c| c.plan)
        .into_iter()
        .chain(out.relaxed)
        .min_by(|x, y| x.primal.total_cmp(&y.primal));
    let bound = relaxed.as_ref().map_or(f64::INFINITY, |r| r.primal);
    let gap = (bound - best_value).max(0.0);
    let termination = if nonsmooth::gap_certifies(gap, best_value, cfg.tol) {
        Termination::Converged(Criterion::DualityGap { gap })
    } else if monitor.is_cancelled() {
        Termination::Cancelled
    } else if out.steps >= settings.max_steps {
        Termination::MaxIterations
    } else {
        Termination::Stalled
    };
    (best, termination, iterations, relaxed)
}

/// The column problem's solution at potentials `x`: plan (of the kind asked for; `relaxed` is the
/// relaxation's plan when the solve built one), value recomputed at `x`, metrics.
pub(crate) fn solution_at(
    cfg: &SparseOt,
    dual: &mut SparseDual<'_>,
    x: &[f64],
    termination: Termination,
    iterations: usize,
    relaxed: Option<Relaxed>,
) -> Solution {
    let (m, n) = (dual.m(), dual.n());
    let mut grad = vec![0.0; x.len()];
    let value = dual.value_and_gradient(x, &mut grad);
    let alpha = &x[..m];
    let beta_in = (cfg.formulation == Formulation::Dual).then(|| &x[m..]);
    let mut plan = PlanBuilder::new(m, n);
    let mut beta = vec![0.0; n];
    dual.for_each_column(alpha, beta_in, |j, rows, vals, beta_j| {
        plan.push_column(rows.iter().copied().zip(vals));
        beta[j] = beta_j;
    });
    let out = Outcome {
        alpha: Array1::from(alpha.to_vec()),
        beta: Array1::from(beta),
        value,
        iterations,
        termination,
        device: RanOn::Cpu,
        relaxed,
    };
    let data = ColumnData {
        cost: &dual.cost,
        a: dual.a,
        b: dual.b,
    };
    rules::solution_of(cfg, data, plan, out)
}
