//! Newton's method on the entropic dual: the finish of a CPU Sinkhorn solve whose last stage converges too
//! slowly for its iteration budget (small ε, very uneven masses).
//!
//! The dual D(f, g) = a·f + b·g − ε Σ_ij T_ij, with T_ij = exp((f_i + g_j − C_ij)/ε), is concave and
//! smooth. Its gradient is (a − T1, b − Tᵀ1), its Hessian −(1/ε) H with
//!
//! H = [diag(T1)  T; Tᵀ  diag(Tᵀ1)],
//!
//! positive semi-definite, zero along (1, −1) (adding a constant to f and removing it from g leaves T
//! unchanged). A Newton step solves H (δf, δg) = ε (a − T1, b − Tᵀ1); the right-hand side is orthogonal
//! to (1, −1) (both marginals and T carry the same mass), so the system is consistent and conjugate
//! gradients, preconditioned by H's diagonal, solve it. Each step is globalised by a backtracking line
//! search on D (Armijo), so D rises at every accepted step; near the optimum full steps are taken and the
//! marginal error falls quadratically, where Sinkhorn's alternating updates shrink it by a rate that tends
//! to 1 as ε does.
//!
//! The finish ends as Sinkhorn's loop does: an exact g-update (every column sums to b_j), then the row error
//! measured in f64 against the tolerance. The plan is held as a dense m × n matrix, so the finish is only
//! used up to [`MAX_ENTRIES`] entries.

use rayon::prelude::*;

use crate::monitor::Progress;
use crate::problem::Problem;
use crate::sinkhorn::rules::row_error;
use crate::sinkhorn::settings::Sinkhorn;

/// Largest m × n the finish takes on (the plan, held in f64, is then at most 32 MiB).
pub(crate) const MAX_ENTRIES: usize = 1 << 22;

/// Newton steps at most (each accepted step is counted as one iteration of the solve): the iterations
/// Sinkhorn leaves to the finish when one follows.
pub(crate) const MAX_STEPS: usize = 50;

/// Conjugate-gradient iterations per step at most, and their relative residual target.
const CG_MAX: usize = 1000;
const CG_TOL: f64 = 1e-12;

/// The longest move of a potential in one step, in units of ε.
const MAX_MOVE: f64 = 30.0;

/// Halvings of a step before the line search gives up, and Armijo's sufficient-increase fraction.
const HALVINGS: usize = 40;
const ARMIJO: f64 = 1e-4;

/// The state of the dual at one point: the plan and its marginals, and D.
struct Point {
    plan: Vec<f64>,
    rows: Vec<f64>,
    cols: Vec<f64>,
    value: f64,
}

impl Point {
    fn at(p: &Problem, f: &[f64], g: &[f64], eps: f64) -> Self {
        let (m, n) = (p.m(), p.n());
        let cost = p.cost_slice();
        let inv = 1.0 / eps;
        let mut plan = vec![0.0; m * n];
        plan.par_chunks_mut(n)
            .zip(cost.par_chunks(n))
            .zip(f.par_iter())
            .for_each(|((t, c), &fi)| {
                for ((tij, &cij), &gj) in t.iter_mut().zip(c).zip(g) {
                    *tij = ((fi + gj - cij) * inv).exp();
                }
            });
        let rows: Vec<f64> = plan.par_chunks(n).map(|t| t.iter().sum()).collect();
        let mut cols = vec![0.0; n];
        transposed_times(&plan, &vec![1.0; m], &mut cols);
        let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(u, v)| u * v).sum::<f64>();
        let value = dot(f, p.a_slice()) + dot(g, p.b_slice()) - eps * rows.iter().sum::<f64>();
        Self {
            plan,
            rows,
            cols,
            value,
        }
    }

    /// The gradient of D: (a − T1, b − Tᵀ1), one vector of m + n.
    fn gradient(&self, p: &Problem) -> Vec<f64> {
        let r = p.a_slice().iter().zip(&self.rows).map(|(a, r)| a - r);
        let c = p.b_slice().iter().zip(&self.cols).map(|(b, c)| b - c);
        r.chain(c).collect()
    }

    /// y = H x for x = (x_f, x_g): (T1 ∘ x_f + T x_g, Tᵀ x_f + Tᵀ1 ∘ x_g).
    fn hessian_times(&self, x: &[f64], y: &mut [f64]) {
        let (m, n) = (self.rows.len(), self.cols.len());
        let (xf, xg) = x.split_at(m);
        let (yf, yg) = y.split_at_mut(m);
        yf.par_iter_mut()
            .zip(self.plan.par_chunks(n))
            .enumerate()
            .for_each(|(i, (yi, t))| {
                *yi = self.rows[i] * xf[i] + t.iter().zip(xg).map(|(a, b)| a * b).sum::<f64>();
            });
        transposed_times(&self.plan, xf, yg);
        for (j, yj) in yg.iter_mut().enumerate() {
            *yj += self.cols[j] * xg[j];
        }
    }
}

/// y = Tᵀ x for the row-major m × n `plan` (n = y's length), columns in parallel blocks, rows in order.
fn transposed_times(plan: &[f64], x: &[f64], y: &mut [f64]) {
    const BLOCK: usize = 256;
    let n = y.len();
    y.par_chunks_mut(BLOCK).enumerate().for_each(|(c, yc)| {
        yc.fill(0.0);
        for (t, &xi) in plan.chunks(n).zip(x) {
            for (yj, &tij) in yc.iter_mut().zip(&t[c * BLOCK..]) {
                *yj += tij * xi;
            }
        }
    });
}

/// Solves H x = rhs by conjugate gradients preconditioned by H's diagonal (T1, Tᵀ1), from x = 0.
fn newton_direction(at: &Point, rhs: &[f64]) -> Vec<f64> {
    let dim = rhs.len();
    let diag: Vec<f64> = at
        .rows
        .iter()
        .chain(&at.cols)
        .map(|&d| d.max(f64::MIN_POSITIVE))
        .collect();
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(u, v)| u * v).sum::<f64>();
    let mut x = vec![0.0; dim];
    let mut r = rhs.to_vec();
    let mut z: Vec<f64> = r.iter().zip(&diag).map(|(r, d)| r / d).collect();
    let mut d = z.clone();
    let mut rz = dot(&r, &z);
    let target = CG_TOL * dot(rhs, rhs).sqrt();
    let mut hd = vec![0.0; dim];
    for _ in 0..CG_MAX {
        if dot(&r, &r).sqrt() <= target {
            break;
        }
        at.hessian_times(&d, &mut hd);
        let curvature = dot(&d, &hd);
        if curvature <= 0.0 || !curvature.is_finite() {
            break;
        }
        let step = rz / curvature;
        for k in 0..dim {
            x[k] += step * d[k];
            r[k] -= step * hd[k];
        }
        for k in 0..dim {
            z[k] = r[k] / diag[k];
        }
        let rz_next = dot(&r, &z);
        let beta = rz_next / rz;
        rz = rz_next;
        for k in 0..dim {
            d[k] = z[k] + beta * d[k];
        }
    }
    x
}

/// max of the two marginal errors of a point.
fn marginal_error(p: &Problem, at: &Point) -> f64 {
    let worst = |x: &[f64], y: &[f64]| {
        x.iter()
            .zip(y)
            .map(|(u, v)| (u - v).abs())
            .fold(0.0, f64::max)
    };
    worst(&at.rows, p.a_slice()).max(worst(&at.cols, p.b_slice()))
}

/// The exact g-update g_j = ε log b_j − ε LSE_i((f_i − C_ij)/ε), max-shifted: every column then sums to b_j.
fn exact_columns(p: &Problem, f: &[f64], g: &mut [f64], eps: f64) {
    let (m, n) = (p.m(), p.n());
    let cost = p.cost_slice();
    g.par_iter_mut().enumerate().for_each(|(j, gj)| {
        let z = |i: usize| (f[i] - cost[i * n + j]) / eps;
        let top = (0..m).map(z).fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = (0..m).map(|i| (z(i) - top).exp()).sum();
        *gj = eps * (p.b_slice()[j].ln() - top - s.ln());
    });
}

/// Runs the finish from (f, g) at the solve's final ε with at most `budget` steps. Returns the number of
/// steps taken and whether the state left in (f, g) (columns exact) meets `cfg.tol` in f64; a cancelled
/// monitor or a step the line search cannot make ends it early.
pub(crate) fn finish(
    cfg: &Sinkhorn,
    p: &Problem,
    f: &mut [f64],
    g: &mut [f64],
    first_iteration: usize,
    budget: usize,
) -> (usize, bool) {
    let eps = cfg.epsilon;
    let m = p.m();
    let mass: f64 = p.a_slice().iter().sum();
    let mut at = Point::at(p, f, g, eps);
    let mut error = marginal_error(p, &at);
    let mut steps = 0;
    while steps < budget.min(MAX_STEPS) && !cfg.monitor.is_cancelled() {
        // A tenth of the tolerance, so that the row error after the exact g-update below meets it.
        if error <= 0.1 * cfg.tol {
            break;
        }
        let grad = at.gradient(p);
        let rhs: Vec<f64> = grad.iter().map(|v| eps * v).collect();
        let mut dir = newton_direction(&at, &rhs);
        // A step that would move a potential by more than MAX_MOVE ε (every plan entry it touches scaled by
        // up to e^MAX_MOVE) is shortened to that: where the plan's support falls apart into blocks that no
        // entry above the f64 underflow joins, H is nearly singular and the direction nearly unbounded.
        let longest = dir.iter().fold(0.0f64, |x, d| x.max(d.abs()));
        if longest > MAX_MOVE * eps {
            let shrink = MAX_MOVE * eps / longest;
            dir.iter_mut().for_each(|d| *d *= shrink);
        }
        let slope: f64 = grad.iter().zip(&dir).map(|(u, v)| u * v).sum();
        // Not an ascent direction (or NaN from a plan that overflowed): nothing to gain.
        if slope.is_nan() || slope <= 0.0 {
            break;
        }
        // Near the optimum the rise t·slope falls below the rounding of D: a step that keeps D within
        // that rounding and lowers the marginal error is taken too.
        let rounding = 64.0 * f64::EPSILON * (at.value.abs() + eps * mass);
        let mut t = 1.0;
        let mut accepted = None;
        for _ in 0..HALVINGS {
            let fs: Vec<f64> = f.iter().zip(&dir[..m]).map(|(x, d)| x + t * d).collect();
            let gs: Vec<f64> = g.iter().zip(&dir[m..]).map(|(x, d)| x + t * d).collect();
            let trial = Point::at(p, &fs, &gs, eps);
            let trial_error = marginal_error(p, &trial);
            let rises =
                trial.value >= at.value + ARMIJO * t * slope && trial.value > at.value + rounding;
            let refines = trial.value >= at.value - rounding && trial_error < error;
            if trial.value.is_finite() && (rises || refines) {
                accepted = Some((fs, gs, trial, trial_error));
                break;
            }
            t *= 0.5;
        }
        let Some((fs, gs, trial, trial_error)) = accepted else {
            break;
        };
        f.copy_from_slice(&fs);
        g.copy_from_slice(&gs);
        at = trial;
        error = trial_error;
        steps += 1;
        cfg.monitor.step(&Progress {
            iteration: first_iteration + steps,
            value: at.value,
            marginal_error: error,
            stage: "sinkhorn newton",
        });
    }
    exact_columns(p, f, g, eps);
    (steps, row_error(p, f, g, eps) <= cfg.tol)
}

/// When Sinkhorn's loop hands a slow last stage over to [`finish`]: once a tenth of its budget is spent, the
/// loop measures its average rate ρ per iteration from there, and stops as soon as ln(tol / err) / ln ρ, the
/// iterations it would still need at that rate, exceed what is left of its budget (or it makes no
/// progress). Without a finish to follow it never stops the loop.
pub(crate) struct Handover {
    /// Whether a finish follows.
    enabled: bool,
    /// The iteration and row error where the rate's window starts.
    start: Option<(usize, f64)>,
}

impl Handover {
    /// A handover to the finish when `enabled`, none otherwise.
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            start: None,
        }
    }

    /// Sinkhorn's own budget: `max_iter` less the finish's steps when one follows.
    pub(crate) fn budget(&self, max_iter: usize) -> usize {
        if self.enabled {
            max_iter.saturating_sub(MAX_STEPS)
        } else {
            max_iter
        }
    }

    /// At a check of the last stage, `iterations` into a solve whose budget is `budget`, with row error
    /// `err` against the tolerance `tol`: whether to stop Sinkhorn now and finish with Newton's method.
    pub(crate) fn now(&mut self, iterations: usize, err: f64, tol: f64, budget: usize) -> bool {
        if !self.enabled || err.is_nan() || err <= 0.0 || tol <= 0.0 {
            return false;
        }
        let Some((i0, e0)) = self.start else {
            if iterations >= budget / 10 {
                self.start = Some((iterations, err));
            }
            return false;
        };
        if iterations < i0 + budget / 20 {
            return false;
        }
        let rate = (err / e0).powf(1.0 / (iterations - i0) as f64);
        if rate.is_nan() || rate >= 1.0 {
            return true;
        }
        let needed = (tol / err).ln() / rate.ln();
        needed > budget.saturating_sub(iterations) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From zero potentials the finish alone reaches the tolerance on the golden problem, at the optimum
    /// plain Sinkhorn finds (dual values and potentials up to the (1, −1) shift agree).
    #[test]
    fn the_finish_reaches_sinkhorns_optimum() {
        let p = crate::golden_problem();
        let cfg = Sinkhorn::new(0.05).unwrap().tol(1e-11).unwrap();
        let (mut f, mut g) = (vec![0.0; p.m()], vec![0.0; p.n()]);
        let (steps, converged) = finish(&cfg, &p, &mut f, &mut g, 0, MAX_STEPS);
        assert!(converged && steps > 0 && steps < MAX_STEPS, "{steps} steps");
        let plain = cfg.clone().max_iter(100_000).solve(&p).unwrap();
        assert!(plain.converged() && plain.iterations < 1000);
        let shift = f[0] - plain.alpha[0];
        for (x, y) in f.iter().zip(&plain.alpha) {
            assert!((x - shift - y).abs() < 1e-8, "alpha {x} vs {y}");
        }
        for (x, y) in g.iter().zip(&plain.beta) {
            assert!((x + shift - y).abs() < 1e-8, "beta {x} vs {y}");
        }
        let value = Point::at(&p, &f, &g, cfg.epsilon).value;
        assert!(
            (value - plain.value).abs() < 1e-10,
            "{value} vs {}",
            plain.value
        );
    }

    /// The handover waits a tenth of the budget, measures a twentieth more, and stops only a loop that its
    /// rate will not bring to the tolerance in time (or that has stopped progressing); disabled, never.
    #[test]
    fn the_handover_projects_the_measured_rate() {
        let budget = 10_000;
        let at = |rate: f64, handover: &mut Handover| -> Option<usize> {
            (0..budget)
                .step_by(10)
                .find(|&it| handover.now(it, 1e-3 * rate.powi(it as i32), 1e-9, budget))
        };
        // 0.99 per iteration reaches 1e-9 from 1e-3 in ~1400 iterations: no handover.
        assert_eq!(at(0.99, &mut Handover::new(true)), None);
        // 0.9999 would need ~140 000: handed over once the window is measured.
        assert_eq!(at(0.9999, &mut Handover::new(true)), Some(1500));
        // No progress: handed over at the same point.
        assert_eq!(at(1.0, &mut Handover::new(true)), Some(1500));
        assert_eq!(at(1.0, &mut Handover::new(false)), None);
        assert_eq!(Handover::new(true).budget(budget), budget - MAX_STEPS);
        assert_eq!(Handover::new(false).budget(budget), budget);
    }
}
