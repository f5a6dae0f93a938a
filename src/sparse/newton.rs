//! Semismooth Newton for piecewise-quadratic semi-duals: the quadratic one (k ≥ m), where L-BFGS stalls on
//! badly scaled problems (masses over many orders of magnitude), and the sparse one (k < m) near an optimum
//! that lies inside one piece, where it replaces the last hundreds of L-BFGS iterations by a few steps.
//!
//! S(α) = α·a − Σ_j max_{t ≥ 0, Σt = b_j} t·(α − c_j) − (γ/2)‖t‖² is concave and piecewise quadratic: on the
//! region where every column's support S_j is fixed, column j's plan is t = (α − c_j)/γ − θ_j on S_j with θ_j
//! set by Σt = b_j, so ∂t_i/∂α_l = (δ_il − 1/|S_j|)/γ on S_j. The gradient is ∇S = a − T1 and the generalised
//! Hessian −H with
//!
//! H = (1/γ) Σ_j (D_{S_j} − 1_{S_j} 1_{S_j}ᵀ / |S_j|),
//!
//! positive semidefinite, a sum over the plan's nonzeros (cheap to apply). The same formula holds for k < m
//! on each piece where the top-k selections do not change: there the selection only restricts which rows
//! S_j may hold. Each step solves (H + R) d = ∇S by conjugate gradients preconditioned with the diagonal,
//! R = 1/γ on rows no column supports (the scale at which such a row enters a support) and μ/γ on the others
//! (Levenberg–Marquardt: H is flat along the constants of each group of rows and columns its supports
//! connect), to a relative residual of 1e-6 (an inexact step: the line search and the next step absorb the
//! rest), then backtracks (Armijo) on S itself. Once the supports are right and μ has shrunk, a step lands
//! on the maximiser of that piece, so the marginals go to rounding in a few steps.

use crate::sparse::ichol::IncompleteCholesky;
use crate::sparse::objective::SparseDual;

/// Every column's support {i : t_ij > 0}, one after another: column j's rows are
/// `rows[ends[j − 1]..ends[j]]` (from 0 for j = 0).
#[derive(Debug, Default)]
pub(crate) struct Supports {
    pub rows: Vec<usize>,
    pub ends: Vec<usize>,
}

impl Supports {
    /// Appends the next column's support.
    pub(crate) fn push(&mut self, rows: impl IntoIterator<Item = usize>) {
        self.rows.extend(rows);
        self.ends.push(self.rows.len());
    }

    /// The columns' supports in order.
    fn columns(&self) -> impl Iterator<Item = &[usize]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(a, &b)| &self.rows[a..b])
    }
}

/// A concave piecewise-quadratic semi-dual of quadratic OT over α (column marginals exact by construction):
/// the quadratic solver's (k ≥ m), or one restricted to a support (`sparse::plans`).
pub(crate) trait PiecewiseQuadratic {
    /// Rows (the length of α).
    fn m(&self) -> usize;
    /// γ.
    fn gamma(&self) -> f64;
    /// S(α), and its gradient a − T1 into `grad`.
    fn value_and_gradient(&mut self, alpha: &[f64], grad: &mut [f64]) -> f64;
    /// Each column's support {i : t_ij > 0} at α.
    fn supports(&mut self, alpha: &[f64]) -> Supports;
}

impl PiecewiseQuadratic for SparseDual<'_> {
    fn m(&self) -> usize {
        SparseDual::m(self)
    }

    fn gamma(&self) -> f64 {
        self.gamma
    }

    fn value_and_gradient(&mut self, alpha: &[f64], grad: &mut [f64]) -> f64 {
        SparseDual::value_and_gradient(self, alpha, grad)
    }

    fn supports(&mut self, alpha: &[f64]) -> Supports {
        if let Some(out) = self.recorded_supports(alpha) {
            return out;
        }
        let mut out = Supports::default();
        self.for_each_column(alpha, None, |_, rows, values, _| {
            out.push(
                rows.iter()
                    .zip(values)
                    .filter(|(_, v)| *v > 0.0)
                    .map(|(&i, _)| i),
            );
        });
        out
    }
}

/// Newton steps at most.
const MAX_STEPS: usize = 100;
/// Conjugate-gradient iterations per step at most, and their relative residual.
const CG_ITERATIONS: usize = 500;
const CG_TOL: f64 = 1e-6;
/// The incomplete Cholesky preconditioner is built while the pairs of rows sharing a column number at most
/// this many times the supports' entries plus the rows (so that it costs a few applications of H).
const ICHOL_PAIRS: usize = 4;
/// Armijo constant and halvings of the line search.
const ARMIJO: f64 = 1e-4;
const HALVINGS: usize = 40;

/// What the Newton stage reached.
pub(crate) struct NewtonOutcome {
    /// The last iterate α.
    pub x: Vec<f64>,
    /// max |a − T1| there (the semi-dual's marginal error; columns are exact).
    pub error: f64,
    /// Newton steps taken.
    pub steps: usize,
}

/// Runs the Newton stage from α = `x` until max |∇S| ≤ `tol`, `budget` steps (capped at 100) or no ascent;
/// `observe(step, value, error)` sees each accepted step (numbered from 1). A [`SparseDual`] must be the
/// semi-dual.
pub(crate) fn run(
    dual: &mut impl PiecewiseQuadratic,
    x: Vec<f64>,
    tol: f64,
    budget: usize,
    mut observe: impl FnMut(usize, f64, f64),
) -> NewtonOutcome {
    let m = dual.m();
    let gamma = dual.gamma();
    let mut alpha = x;
    let mut grad = vec![0.0; m];
    let mut value = dual.value_and_gradient(&alpha, &mut grad);
    let mut steps = 0;
    // Levenberg–Marquardt damping of H's flat directions (relative to 1/γ): shrunk after a full step, kept
    // after one cut at most twice, grown after one cut more (growing it after every cut step made it cycle
    // between two values, each step half as long as the model asked), so that a component whose rows and
    // columns carry different masses moves by a step its supports can follow rather than along H's null
    // space.
    let mut mu = 1e-4;
    let max_abs = |g: &[f64]| g.iter().fold(0.0f64, |x, &y| x.max(y.abs()));
    while steps < budget.min(MAX_STEPS) && max_abs(&grad) > tol {
        let supports = dual.supports(&alpha);
        let columns = || supports.columns().filter(|s| !s.is_empty());
        let mut base = vec![1.0 / gamma; m];
        for &i in &supports.rows {
            base[i] = mu / gamma;
        }
        // The supports' entries flattened: column (among the nonempty ones) of each entry and 1/|S_j|, so
        // that applying H is two passes over the entries without a loop per column (CG applies it hundreds
        // of times per step).
        let inv_len: Vec<f64> = columns().map(|s| 1.0 / s.len() as f64).collect();
        let entry_col: Vec<usize> = columns()
            .enumerate()
            .flat_map(|(c, s)| std::iter::repeat_n(c, s.len()))
            .collect();
        let inv_gamma = 1.0 / gamma;
        let mut sums = vec![0.0; inv_len.len()];
        let mut apply = |v: &[f64], out: &mut [f64]| {
            for ((o, &vi), &r) in out.iter_mut().zip(v).zip(&base) {
                *o = vi * r;
            }
            sums.fill(0.0);
            for (&i, &c) in supports.rows.iter().zip(&entry_col) {
                sums[c] += v[i];
            }
            for (sum, &w) in sums.iter_mut().zip(&inv_len) {
                *sum *= w;
            }
            for (&i, &c) in supports.rows.iter().zip(&entry_col) {
                out[i] += (v[i] - sums[c]) * inv_gamma;
            }
        };
        // Preconditioner: the incomplete Cholesky factor of H + R (`sparse::ichol`), or its diagonal
        // (Jacobi) where the factor is not built (below) or does not exist.
        let mut diag = base.clone();
        for s in columns() {
            let w = (1.0 - 1.0 / s.len() as f64) / gamma;
            for &i in s {
                diag[i] += w;
            }
        }
        // The factor has an entry per pair of rows sharing a column: built only while those pairs are
        // few next to the supports' entries (k-sparse columns), not for the quadratic solver's dense
        // supports, where it would take O(Σ|S_j|²) memory and time per step.
        let pairs: usize = columns().map(|s| s.len() * (s.len() - 1) / 2).sum();
        let factor = (pairs <= ICHOL_PAIRS * (supports.rows.len() + m))
            .then(|| {
                IncompleteCholesky::of_groups(
                    &diag,
                    columns().zip(&inv_len).map(|(s, &w)| (s, w * inv_gamma)),
                )
            })
            .flatten();
        let inv_diag: Vec<f64> = diag.iter().map(|d| 1.0 / d).collect();
        let precondition = |r: &[f64], z: &mut [f64]| match &factor {
            Some(f) => f.solve(r, z),
            None => {
                for ((zi, &ri), &wi) in z.iter_mut().zip(r).zip(&inv_diag) {
                    *zi = ri * wi;
                }
            }
        };
        let d = conjugate_gradients(&mut apply, &precondition, &grad);
        let slope: f64 = d.iter().zip(&grad).map(|(x, y)| x * y).sum();
        if slope.is_nan() || slope <= 0.0 {
            break;
        }
        let mut tau = 1.0;
        let mut trial = vec![0.0; m];
        let mut trial_grad = vec![0.0; m];
        let mut accepted = false;
        for _ in 0..HALVINGS {
            for ((t, &a), &di) in trial.iter_mut().zip(&alpha).zip(&d) {
                *t = a + tau * di;
            }
            let v = dual.value_and_gradient(&trial, &mut trial_grad);
            if v >= value + ARMIJO * tau * slope {
                accepted = true;
                value = v;
                break;
            }
            tau *= 0.5;
        }
        if !accepted {
            break;
        }
        mu = if tau == 1.0 {
            (mu * 0.1).max(1e-12)
        } else if tau >= 0.25 {
            mu
        } else {
            (mu * 10.0).min(1.0)
        };
        std::mem::swap(&mut alpha, &mut trial);
        std::mem::swap(&mut grad, &mut trial_grad);
        steps += 1;
        observe(steps, value, max_abs(&grad));
    }
    NewtonOutcome {
        error: max_abs(&grad),
        x: alpha,
        steps,
    }
}

/// Solves A d = g for the symmetric positive definite A given by `apply`, from d = 0, by conjugate gradients
/// with the preconditioner z = M⁻¹ r given by `precondition`, until ‖r‖ ≤ CG_TOL ‖g‖.
fn conjugate_gradients(
    apply: &mut dyn FnMut(&[f64], &mut [f64]),
    precondition: &dyn Fn(&[f64], &mut [f64]),
    g: &[f64],
) -> Vec<f64> {
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>();
    let n = g.len();
    let mut d = vec![0.0; n];
    let mut r = g.to_vec();
    let mut z = vec![0.0; n];
    precondition(&r, &mut z);
    let mut p = z.clone();
    let mut ap = vec![0.0; n];
    let mut rz = dot(&r, &z);
    let mut rr = dot(&r, &r);
    let stop = CG_TOL * CG_TOL * rr;
    for _ in 0..CG_ITERATIONS {
        if rr <= stop || rz == 0.0 {
            break;
        }
        apply(&p, &mut ap);
        let pap = dot(&p, &ap);
        if pap.is_nan() || pap <= 0.0 {
            break;
        }
        let step = rz / pap;
        // d += step p, r −= step Ap, with r·r, in one pass.
        let mut rr_new = 0.0;
        for ((di, ri), (&pi, &api)) in d.iter_mut().zip(r.iter_mut()).zip(p.iter().zip(&ap)) {
            *di += step * pi;
            *ri -= step * api;
            rr_new += *ri * *ri;
        }
        precondition(&r, &mut z);
        let rz_new = dot(&r, &z);
        let beta = rz_new / rz;
        for (pi, &zi) in p.iter_mut().zip(&z) {
            *pi = zi + beta * *pi;
        }
        rz = rz_new;
        rr = rr_new;
    }
    d
}
