//! Nonsmooth stage for sparsity-constrained OT: smoothing continuation + regularised Newton, then an exact
//! polish on the identified tie structure.
//!
//! # Why plain L-BFGS stalls
//! For k < m the dual D_k(α, β) = α·a + β·b − Σ_j δ_k(α + β_j − c_j) is concave and piecewise quadratic,
//! but δ_k is not differentiable where the k-th and (k+1)-th largest entries of a column tie. At the
//! optimum such ties are the rule, not the exception (at k = 1 the optimum is the LP dual, where every column
//! that splits its mass is tied): the gradient of every piece adjacent to the optimum is far from zero, so a
//! gradient method zig-zags and its line search fails short of the optimum (docs/MATH.md §2.3).
//!
//! # Stage 1: smoothing continuation
//! The top-k selection is a linear program over z ∈ Z = {z ∈ [0,1]^m, Σz ≤ k}:
//! δ_k(s) = max_{z∈Z} Σ_i z_i q_i with q_i = [s_i]_+²/(2γ). We smooth it with a quadratic penalty,
//!
//! ```text
//! δ^μ(s) = max_{z∈Z} Σ_i z_i q_i − (μ/2)‖z‖²,   z(q) = clip((q − τ)/μ, 0, 1),   τ ≥ 0 with Σz ≤ k (= k if τ > 0).
//! ```
//!
//! δ^μ is C¹ with gradient z ∘ [s]_+/γ and a semismooth Hessian, and δ_k − μk/2 ≤ δ^μ ≤ δ_k, so the smoothed
//! dual D^μ is within nkμ/2 of D_k everywhere. The fractional z at a tie are exactly the weights with which
//! the optimal (relaxed) plan mixes the tied supports. We maximise D^μ by Newton's method (Hessian-vector
//! products are O(nnz), systems solved by Jacobi-preconditioned CG, Levenberg–Marquardt regularisation
//! proportional to the gradient, Armijo backtracking), for μ decreasing geometrically, each stage
//! warm-started from the previous one. A damped regularised Newton method on a concave C¹ function with
//! Lipschitz gradient converges globally, and locally superlinearly once the pieces are identified;
//! continuation keeps each stage inside the fast region of the next.
//!
//! # Stage 2: exact polish
//! Rounding limits how small μ can usefully get, so the last digits come from the structure instead: from
//! the smoothed solution we read off, per column, the entries fully selected (z = 1, set U_j) and the tied
//! ones (0 < z < 1, set F_j, sharing r_j = k − |U_j| slots). On the affine set where the scores
//! α_i − c_ij are equal across each F_j, D_k coincides with the smooth function
//! α·a + β·b − Σ_j [Σ_{U_j} q_ij + (r_j/|F_j|) Σ_{F_j} q_ij], so D_k* is its maximum under those linear
//! equalities. `polish` solves that equality-constrained problem by Newton–KKT steps (dense, for problems
//! up to `POLISH_MAX_DIM` unknowns, src/sparse/polish.rs) and the result is kept only if it raises the true
//! objective D_k.
//!
//! Whatever happens, the potentials returned are those with the highest true objective seen.
//!
//! # Cost of an evaluation
//! A column's candidates are its top k + 1 scores and the rows within μ of them. For small k on long
//! columns they are looked for among the 32 rows of a [`WorkingSet`] (the best near the previous
//! evaluations) and the whole column is read only when the set's bound cannot rule the others out: the
//! Newton steps of a stage move the potentials little, so most evaluations read 32 rows per column instead
//! of m, with results bit for bit those of full scans.

use rayon::prelude::*;

use crate::ops::{delta_on, simplex_threshold, top_k_buffered, top_k_into};
use crate::sparse::columns::CostColumns;
use crate::sparse::plans::Relaxed;
use crate::sparse::polish::polish;
use crate::sparse::rules::PlanBuilder;
use crate::sparse::working_set::{ColumnSet, Part, WorkingSet};

/// One selected or tied entry of a column at the current point.
#[derive(Debug, Clone, Copy)]
struct Entry {
    i: usize,
    /// Selection weight z_i ∈ (0, 1].
    z: f64,
    /// [s_i]_+ / γ.
    g: f64,
    /// 0 < z < 1 (on the smoothing ramp).
    frac: bool,
}

#[derive(Debug, Clone, Default)]
struct Column {
    entries: Vec<Entry>,
    /// τ > 0: the cardinality constraint binds (fractional weights are coupled).
    binding: bool,
    nfrac: usize,
    value: f64,
    /// The k-th largest score of the column (the level an entry must reach to be selected).
    kth: f64,
    /// The largest score of the column.
    top: f64,
    /// The last evaluation scanned the whole column although a working set was there.
    fallback: bool,
}

/// A column's structure at a tie: entries fully selected, tied entries and the slots they share.
pub(crate) struct ColumnStructure {
    pub full: Vec<usize>,
    pub tied: Vec<usize>,
    pub slots: f64,
}

/// The data of the dual and the per-column state at the last evaluation.
pub(crate) struct Smoothed<'a> {
    pub(crate) cost: &'a CostColumns<'a>,
    pub(crate) a: &'a [f64],
    pub(crate) b: &'a [f64],
    k: usize,
    pub(crate) gamma: f64,
    cols: Vec<Column>,
    /// Candidate rows per column for evaluations near the last ones (small k on long columns).
    working: Option<WorkingSet>,
}

/// The scores s_i = α_i − c_ij + β_j of one column c (all of its rows), computed into `s`.
fn fill_scores(s: &mut [f64], alpha: &[f64], c: &[f64], beta_j: f64) {
    for ((si, &ai), &ci) in s.iter_mut().zip(alpha).zip(c) {
        *si = ai - ci + beta_j;
    }
}

/// The rows that can get a nonzero weight in a column, into `idx` (ascending): its top k + 1 scores and
/// every row whose q = [s]_+²/2γ lies within μ of the (k+1)-th (since τ ≥ q_{k+1} − μ). Sets `col.top` and
/// `col.kth`. Over the rows of a working set it returns `false`, leaving the rest undone, unless the set's
/// bound shows that no row outside it is among them; then the result is that of the whole column.
fn candidates(
    s: &[f64],
    k: usize,
    gamma: f64,
    mu: f64,
    idx: &mut Vec<usize>,
    col: &mut Column,
    within: Option<(&[usize], &ColumnSet<'_>, f64)>,
) -> bool {
    let m = s.len();
    let q = |i: usize| {
        let p = s[i].max(0.0);
        p * p / (2.0 * gamma)
    };
    match within {
        Some((rows, _, _)) => top_k_buffered(s, rows.iter().copied(), (k + 1).min(m), idx),
        None => top_k_into(s, (k + 1).min(m), idx),
    }
    if k < m {
        let cut = q(idx[k]) - mu;
        // q_i > cut ⇔ s_i > √(2γ·cut) for positive scores: compare the scores to a level just below that
        // root (so rounding cannot drop a candidate) and decide the few that pass by q itself.
        let level = if cut > 0.0 {
            (2.0 * gamma * cut).sqrt() * (1.0 - 1e-12)
        } else {
            0.0
        };
        // Every row outside the set must rank below the (k+1)-th and fail `s_i > level`.
        if let Some((_, set, beta_j)) = within {
            if idx.len() <= k || !set.clears(s[idx[k]], beta_j) || !set.clears(level, beta_j) {
                return false;
            }
        }
        col.top = s[idx[0]];
        col.kth = s[idx[k.min(m) - 1]];
        let mut scan = |i: usize| {
            if s[i] > level && q(i) > cut {
                idx.push(i);
            }
        };
        match within {
            Some((rows, _, _)) => rows.iter().for_each(|&i| scan(i)),
            None => (0..m).for_each(scan),
        }
        idx.sort_unstable();
        idx.dedup();
    } else {
        col.top = s[idx[0]];
        col.kth = s[idx[k.min(m) - 1]];
    }
    true
}

/// Smoothed top-k weights of one column j from α, the cost (column j read as needed) and β_j: fills `col`. With a working
/// set the column's candidate rows are tried first, else (or when they do not suffice) all rows are scanned
/// and the set rebuilt; returns whether the whole column was scanned. The result is that of a full scan.
fn smooth_column(
    (alpha, (cost, j), beta_j): (&[f64], (&CostColumns<'_>, usize), f64),
    k: usize,
    gamma: f64,
    mu: f64,
    (s, idx, buf): (&mut [f64], &mut Vec<usize>, &mut Vec<f64>),
    col: &mut Column,
    set: Option<&mut ColumnSet<'_>>,
) -> bool {
    col.entries.clear();
    col.binding = false;
    col.nfrac = 0;
    col.value = 0.0;
    let mut scanned = true;
    if let Some(set) = set {
        if set.drift.is_some() {
            // The column's scores over the set's rows only, from the cost entries the set keeps.
            set.entries()
                .for_each(|(i, c)| s[i] = alpha[i] - c + beta_j);
            let rows: &[usize] = set.rows;
            scanned = !candidates(s, k, gamma, mu, idx, col, Some((rows, set, beta_j)));
        }
        if scanned {
            // The set's bound is on α − c: rebuild from the scores without β_j.
            let c = cost.column(j, buf);
            fill_scores(s, alpha, c, 0.0);
            set.rebuild(s, c, k + 1, idx);
            fill_scores(s, alpha, c, beta_j);
        }
    } else {
        fill_scores(s, alpha, cost.column(j, buf), beta_j);
    }
    if scanned {
        candidates(s, k, gamma, mu, idx, col, None);
    }
    weights(s, k, gamma, mu, idx, col);
    scanned
}

/// The smoothed weights of a column on its candidate rows `idx`.
fn weights(s: &[f64], k: usize, gamma: f64, mu: f64, idx: &mut Vec<usize>, col: &mut Column) {
    let q = |i: usize| {
        let p = s[i].max(0.0);
        p * p / (2.0 * gamma)
    };
    idx.retain(|&i| s[i] > 0.0);
    if idx.is_empty() {
        return;
    }
    // h(τ) = Σ clip((q_i − τ)/μ, 0, 1) is continuous, piecewise linear and nonincreasing.
    let h = |tau: f64| -> f64 {
        idx.iter()
            .map(|&i| ((q(i) - tau) / mu).clamp(0.0, 1.0))
            .sum()
    };
    let kf = k as f64;
    let tau = if h(0.0) <= kf {
        0.0
    } else {
        let mut bp: Vec<f64> = idx
            .iter()
            .flat_map(|&i| [q(i), (q(i) - mu).max(0.0)])
            .collect();
        bp.push(0.0);
        bp.sort_by(|x, y| x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal));
        bp.dedup();
        // Largest breakpoint with h ≥ k, then interpolate linearly to the next one.
        let (mut lo, mut hi) = (0usize, bp.len() - 1);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if h(bp[mid]) >= kf {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let (h_lo, h_hi) = (h(bp[lo]), h(bp[hi]));
        if h_lo - h_hi > 0.0 {
            bp[lo] + (h_lo - kf) / (h_lo - h_hi) * (bp[hi] - bp[lo])
        } else {
            bp[lo]
        }
    };
    col.binding = tau > 0.0;
    for &i in idx.iter() {
        let qi = q(i);
        let z = ((qi - tau) / mu).clamp(0.0, 1.0);
        if z > 0.0 {
            let frac = z < 1.0;
            col.nfrac += usize::from(frac);
            col.value += z * qi - 0.5 * mu * z * z;
            col.entries.push(Entry {
                i,
                z,
                g: s[i].max(0.0) / gamma,
                frac,
            });
        }
    }
}

impl<'a> Smoothed<'a> {
    pub(crate) fn new(
        cost: &'a CostColumns<'a>,
        a: &'a [f64],
        b: &'a [f64],
        k: usize,
        gamma: f64,
    ) -> Self {
        Self {
            cost,
            a,
            b,
            k,
            gamma,
            cols: vec![Column::default(); b.len()],
            working: WorkingSet::applies(a.len(), k).then(|| WorkingSet::new(a.len(), b.len())),
        }
    }

    pub(crate) fn m(&self) -> usize {
        self.a.len()
    }

    /// f = −D^μ(x) and its gradient (x = (α, β)); keeps the column states for Hessian products.
    pub(crate) fn eval(&mut self, x: &[f64], mu: f64, grad: &mut [f64]) -> f64 {
        let m = self.m();
        let (alpha, beta) = x.split_at(m);
        let (cost, k, gamma) = (self.cost, self.k, self.gamma);
        let drift = self.working.as_mut().map(|w| w.begin(alpha));
        let mut parts: Vec<Option<Part<'_>>> = match self.working.as_mut() {
            Some(w) => w.chunks_mut(1).map(Some).collect(),
            None => (0..self.cols.len()).map(|_| None).collect(),
        };
        self.cols
            .par_iter_mut()
            .zip(parts.par_iter_mut())
            .enumerate()
            .for_each_init(
                || (vec![0.0; m], Vec::with_capacity(m), Vec::new()),
                |(s, idx, buf), (j, (col, part))| {
                    let mut set = part.as_mut().map(|p| p.column(0, drift.flatten()));
                    let scanned = smooth_column(
                        (alpha, (cost, j), beta[j]),
                        k,
                        gamma,
                        mu,
                        (s, idx, buf),
                        col,
                        set.as_mut(),
                    );
                    col.fallback = scanned && set.is_some_and(|s| s.drift.is_some());
                },
            );
        drop(parts);
        if let Some(w) = self.working.as_mut() {
            w.end(self.cols.iter().filter(|c| c.fallback).count());
        }
        let (ga, gb) = grad.split_at_mut(m);
        for (g, &ai) in ga.iter_mut().zip(self.a) {
            *g = -ai;
        }
        let mut f = -alpha.iter().zip(self.a).map(|(x, y)| x * y).sum::<f64>()
            - beta.iter().zip(self.b).map(|(x, y)| x * y).sum::<f64>();
        for (j, col) in self.cols.iter().enumerate() {
            let mut colsum = 0.0;
            for e in &col.entries {
                let t = e.z * e.g;
                ga[e.i] += t;
                colsum += t;
            }
            gb[j] = colsum - self.b[j];
            f += col.value;
        }
        f
    }

    /// out = H v for the Hessian of −D^μ at the last evaluated point.
    fn hess_vec(&self, mu: f64, v: &[f64], out: &mut [f64]) {
        let m = self.m();
        out.iter_mut().for_each(|o| *o = 0.0);
        let inv_g = 1.0 / self.gamma;
        for (j, col) in self.cols.iter().enumerate() {
            let vb = v[m + j];
            let mean = if col.binding && col.nfrac > 0 {
                col.entries
                    .iter()
                    .filter(|e| e.frac)
                    .map(|e| e.g * (v[e.i] + vb))
                    .sum::<f64>()
                    / col.nfrac as f64
            } else {
                0.0
            };
            let mut sum = 0.0;
            for e in &col.entries {
                let u = v[e.i] + vb;
                let mut w = e.z * inv_g * u;
                if e.frac {
                    w += e.g * (e.g * u - mean) / mu;
                }
                out[e.i] += w;
                sum += w;
            }
            out[m + j] += sum;
        }
    }

    /// Diagonal of H (for the preconditioner).
    fn hess_diag(&self, mu: f64, out: &mut [f64]) {
        let m = self.m();
        out.iter_mut().for_each(|o| *o = 0.0);
        let inv_g = 1.0 / self.gamma;
        for (j, col) in self.cols.iter().enumerate() {
            let nf = col.nfrac.max(1) as f64;
            let (mut sum_g, mut sum_g2) = (0.0, 0.0);
            let mut bb = 0.0;
            for e in &col.entries {
                let mut d = e.z * inv_g;
                if e.frac {
                    let shrink = if col.binding { 1.0 - 1.0 / nf } else { 1.0 };
                    d += e.g * e.g * shrink / mu;
                    sum_g += e.g;
                    sum_g2 += e.g * e.g;
                }
                out[e.i] += d;
                bb += e.z * inv_g;
            }
            bb += (sum_g2 - if col.binding { sum_g * sum_g / nf } else { 0.0 }) / mu;
            out[m + j] += bb;
        }
    }

    /// For coordinates with zero curvature (a row selected nowhere, a column with no positive score) the
    /// Newton system says nothing about how far to go. Set their regularisation so that the step is the
    /// distance at which the row (column) enters the selection: d_i = 1.01 · min_j (kth_j − s_ij) for a row,
    /// d_j = −1.01 · max_i s_ij for a column.
    fn entry_steps(&self, x: &[f64], grad: &[f64], diag: &[f64], reg: &mut [f64]) {
        let m = self.m();
        let (alpha, beta) = x.split_at(m);
        for i in (0..m).filter(|&i| diag[i] == 0.0 && grad[i] < 0.0) {
            let gap = self
                .cols
                .iter()
                .enumerate()
                .map(|(j, c)| c.kth - (alpha[i] - self.cost.entry(i, j) + beta[j]))
                .fold(f64::INFINITY, f64::min);
            if gap.is_finite() && gap > 0.0 {
                reg[i] = -grad[i] / (1.01 * gap);
            }
        }
        for (j, c) in self.cols.iter().enumerate() {
            if diag[m + j] == 0.0 && grad[m + j] < 0.0 && c.top < 0.0 {
                reg[m + j] = -grad[m + j] / (-1.01 * c.top);
            }
        }
    }

    /// The tie structure at the last evaluation: per column, (U_j, F_j, r_j); `None` if some column is not
    /// a mixture of k-sparse columns (a non-binding column with more than k weighted entries, possible
    /// while μ is large).
    pub(crate) fn structure(&self) -> Option<Vec<ColumnStructure>> {
        self.cols
            .iter()
            .map(|c| {
                if !c.binding {
                    // Nothing competes for slots: every entry with z > 0 is simply selected.
                    return (c.entries.len() <= self.k).then(|| ColumnStructure {
                        full: c.entries.iter().map(|e| e.i).collect(),
                        tied: Vec::new(),
                        slots: 0.0,
                    });
                }
                let full: Vec<usize> = c.entries.iter().filter(|e| !e.frac).map(|e| e.i).collect();
                let tied: Vec<usize> = c.entries.iter().filter(|e| e.frac).map(|e| e.i).collect();
                let slots = self.k as f64 - full.len() as f64;
                Some(ColumnStructure { full, tied, slots })
            })
            .collect()
    }

    /// The mixed plan T̃ = z ∘ [s]_+/γ of the last evaluation, column by column, with its relaxed primal
    /// objective ⟨T̃, C⟩ + (γ/2) Σ_j Σ_i z_ij g_ij², an upper bound on D_k*; `None` unless every column is a
    /// mixture of k-sparse columns (Σz over a tie is the integer number of free slots). T̃'s marginals are
    /// off by the last gradient's max-norm.
    pub(crate) fn mixed_plan(&self) -> Option<Relaxed> {
        self.structure()?;
        let mut primal = 0.0;
        let mut plan = PlanBuilder::new(self.m(), self.b.len());
        for (j, col) in self.cols.iter().enumerate() {
            plan.push_column(col.entries.iter().map(|e| {
                primal += e.z * e.g * self.cost.entry(e.i, j) + 0.5 * self.gamma * e.z * e.g * e.g;
                (e.i, e.z * e.g)
            }));
        }
        Some(Relaxed { plan, primal })
    }
}

/// Unknowns (m + n) up to which the Newton stages' Levenberg–Marquardt term has its full size.
const LM_FULL_SIZE: f64 = 1000.0;

/// The size factor of the Levenberg–Marquardt term for `dim` unknowns: 1 up to [`LM_FULL_SIZE`], then
/// falling as 1/dim. H is a weighted Laplacian of the bipartite graph that the selected entries draw
/// between rows and columns; its slowest modes (potentials that vary smoothly across the whole problem)
/// have curvatures that fall about as 1/dim below the median one on point clouds. A term of fixed relative
/// size damps them more the larger the problem: on 20 000 × 20 000 points (k = 8, γ = 0.1), every
/// smoothing stage used up its 50 steps while the objective kept falling at each one, and no stage had met
/// its tolerance when the solve was stopped by hand after ~850 iterations; with this factor (1/40 there)
/// the solve certified its gap after 352 iterations (benches/REPORT.md).
fn lm_size(dim: usize) -> f64 {
    (LM_FULL_SIZE / dim as f64).min(1.0)
}

/// Median of the positive entries (1 if none).
fn median_positive(v: &[f64], scratch: &mut Vec<f64>) -> f64 {
    scratch.clear();
    scratch.extend(v.iter().copied().filter(|&x| x > 0.0));
    if scratch.is_empty() {
        return 1.0;
    }
    let mid = scratch.len() / 2;
    *scratch
        .select_nth_unstable_by(mid, |a, b| {
            a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal)
        })
        .1
}

/// Whether a duality gap certifies a dual value at tolerance `tol`: gap ≤ tol, or within the rounding of
/// the two objectives (1e-12 relative) when tol is below that.
pub(crate) fn gap_certifies(gap: f64, value: f64, tol: f64) -> bool {
    gap <= tol.max(1e-12 * value.abs())
}

/// CG tolerance (relative residual) of an exactly solved Newton system.
const EXACT_CG: f64 = 1e-10;

/// Preconditioned CG for (H + diag(reg)) d = rhs; returns the number of iterations.
fn pcg(
    sm: &Smoothed<'_>,
    mu: f64,
    reg: &[f64],
    diag: &[f64],
    rhs: &[f64],
    d: &mut [f64],
    tol: f64,
) -> usize {
    let n = rhs.len();
    let mut r = rhs.to_vec();
    d.iter_mut().for_each(|x| *x = 0.0);
    let pre: Vec<f64> = diag.iter().zip(reg).map(|(h, r)| 1.0 / (h + r)).collect();
    let mut z: Vec<f64> = r.iter().zip(&pre).map(|(r, p)| r * p).collect();
    let mut p = z.clone();
    let mut hp = vec![0.0; n];
    let mut rz: f64 = r.iter().zip(&z).map(|(a, b)| a * b).sum();
    let r0 = r.iter().map(|x| x * x).sum::<f64>().sqrt();
    let max_it = (2 * n).clamp(50, 2000);
    for it in 0..max_it {
        sm.hess_vec(mu, &p, &mut hp);
        hp.iter_mut()
            .zip(&p)
            .zip(reg)
            .for_each(|((h, p), r)| *h += r * p);
        let php: f64 = p.iter().zip(&hp).map(|(a, b)| a * b).sum();
        if php.is_nan() || php <= 0.0 {
            return it;
        }
        let step = rz / php;
        d.iter_mut().zip(&p).for_each(|(d, p)| *d += step * p);
        r.iter_mut().zip(&hp).for_each(|(r, h)| *r -= step * h);
        let rn = r.iter().map(|x| x * x).sum::<f64>().sqrt();
        if rn <= tol * r0 {
            return it + 1;
        }
        z.iter_mut()
            .zip(&r)
            .zip(&pre)
            .for_each(|((z, r), p)| *z = r * p);
        let rz_new: f64 = r.iter().zip(&z).map(|(a, b)| a * b).sum();
        let beta = rz_new / rz;
        rz = rz_new;
        p.iter_mut().zip(&z).for_each(|(p, z)| *p = z + beta * *p);
    }
    max_it
}

/// Settings of the nonsmooth stage.
pub(crate) struct NonsmoothSettings {
    pub tol: f64,
    pub max_steps: usize,
    /// The caller maximises the semi-dual: a point's value is D_k at its α and the best β.
    pub semi_dual: bool,
}

/// A certified point: potentials and the exactly feasible mixed plan built from the polish's multipliers,
/// whose relaxed objective P̃(T̃) bounds D_k* from above (P̃(T̃) − D_k(x) ≥ D_k* − D_k(x)).
pub(crate) struct Certified {
    pub x: Vec<f64>,
    /// T̃ and P̃(T̃).
    pub plan: Relaxed,
    /// Max-norm marginal violation of T̃ (rounding of the KKT solve).
    pub plan_error: f64,
}

/// Result of the nonsmooth stage.
pub(crate) struct NonsmoothOutcome {
    /// Potentials (α, β) of the last smoothed stage.
    pub x: Vec<f64>,
    /// Newton steps taken (smoothing stages and polish).
    pub steps: usize,
    /// The smoothed stage's mixed plan whose marginals were within the tolerance with the least relaxed
    /// objective ([`Smoothed::mixed_plan`], an upper bound on D_k*), if there was one.
    pub relaxed: Option<Relaxed>,
    /// The certified polish, when one succeeded.
    pub certified: Option<Certified>,
}

impl Smoothed<'_> {
    /// Newton's method on −D^μ from `x` until the residual is at most `tol` or `cap` steps; returns
    /// (steps, residual).
    fn newton_stage(&mut self, x: &mut Vec<f64>, mu: f64, tol: f64, cap: usize) -> (usize, f64) {
        let dim = x.len();
        let mut grad = vec![0.0; dim];
        let mut trial = vec![0.0; dim];
        let mut gtrial = vec![0.0; dim];
        let mut d = vec![0.0; dim];
        let mut diag = vec![0.0; dim];
        let mut reg = vec![0.0; dim];
        let mut scratch = Vec::with_capacity(dim);
        let mass_scale = self.a.iter().chain(self.b).fold(0.0f64, |x, &y| x.max(y));
        let mut f = self.eval(x, mu, &mut grad);
        let mut steps = 0;
        loop {
            let residual = grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
            if residual <= tol || steps >= cap {
                return (steps, residual);
            }
            self.hess_diag(mu, &mut diag);
            // Levenberg–Marquardt term: the median curvature of the active coordinates times the squared
            // relative residual, times [`lm_size`]. It keeps far steps sane and vanishes fast enough that
            // the slow (global) modes of H are not damped near the solution; the line search does the
            // globalisation.
            let rel = (residual / mass_scale).min(1e-1);
            let lm = lm_size(dim) * (1e-12 + rel * rel) * median_positive(&diag, &mut scratch);
            for (r, &h) in reg.iter_mut().zip(&diag) {
                *r = lm + if h == 0.0 { 1.0 / self.gamma } else { 0.0 };
            }
            self.entry_steps(x, &grad, &diag, &mut reg);
            let rhs: Vec<f64> = grad.iter().map(|g| -g).collect();
            // Inexact Newton: far from the solution a rough direction does as well as an exact one, so CG
            // stops at a relative residual of half the relative gradient (quadratic convergence locally);
            // solving every system to 1e-10 made CG most of the stage's time on large problems. A looser
            // forcing term (√ of the relative gradient) stalled the sharp late stages of a 300 × 200 k = 2
            // problem. When no step along a rough direction is accepted, the system is solved again to 1e-10
            // before the stage gives up.
            let rough = (0.5 * rel).clamp(EXACT_CG, 1e-1);
            let tries: &[f64] = if rough > EXACT_CG {
                &[rough, EXACT_CG]
            } else {
                &[EXACT_CG]
            };
            let mut accepted = false;
            for &forcing in tries {
                if accepted {
                    break;
                }
                pcg(self, mu, &reg, &diag, &rhs, &mut d, forcing);
                let slope: f64 = grad.iter().zip(&d).map(|(g, d)| g * d).sum();
                if slope.is_nan() || slope >= 0.0 {
                    continue;
                }
                if let Some(ft) =
                    self.line_search(x, &d, mu, f, slope, residual, &mut trial, &mut gtrial)
                {
                    f = ft;
                    accepted = true;
                }
            }
            if !accepted {
                self.eval(x, mu, &mut grad);
                return (steps, residual);
            }
            std::mem::swap(x, &mut trial);
            std::mem::swap(&mut grad, &mut gtrial);
            steps += 1;
        }
    }

    /// Armijo backtracking from `x` along `d`; within rounding noise, a step that lowers the residual is
    /// accepted too. On success `trial` holds the new point, `gtrial` its gradient, and the value is returned.
    #[allow(clippy::too_many_arguments)]
    fn line_search(
        &mut self,
        x: &[f64],
        d: &[f64],
        mu: f64,
        f: f64,
        slope: f64,
        residual: f64,
        trial: &mut [f64],
        gtrial: &mut [f64],
    ) -> Option<f64> {
        let mut t = 1.0;
        for _ in 0..40 {
            trial
                .iter_mut()
                .zip(x)
                .zip(d)
                .for_each(|((y, x), d)| *y = x + t * d);
            let ft = self.eval(trial, mu, gtrial);
            let rt = gtrial.iter().fold(0.0f64, |m, g| m.max(g.abs()));
            // A full step that crosses many kinks can decrease f yet throw the marginals far off; such a
            // step is shortened too.
            let sane = rt <= 10.0 * residual;
            if sane && (ft <= f + 1e-4 * t * slope || (ft <= f + 1e-13 * f.abs() && rt < residual))
            {
                return Some(ft);
            }
            t *= 0.5;
        }
        None
    }

    /// D_k(x), the unsmoothed dual: at μ = √(smallest positive f64) the smoothing error nkμ/2 is far below
    /// rounding. Replaces the column states of the last evaluation.
    pub(crate) fn true_value(&mut self, x: &[f64]) -> f64 {
        let mut grad = vec![0.0; x.len()];
        -self.eval(x, f64::MIN_POSITIVE.sqrt(), &mut grad)
    }

    /// `x` = (α, β) with β replaced by β*(α), the maximiser of D_k(α, ·): per column, β_j = −γ θ_j with θ_j
    /// the threshold that makes the column's top-k plan [(α_i − c_ij)/γ − θ_j]_+ sum to b_j.
    fn with_best_beta(&self, x: &[f64]) -> Vec<f64> {
        let m = self.m();
        let mut y = x.to_vec();
        let mut s = vec![0.0; m];
        let mut idx = Vec::with_capacity(self.k + 1);
        let mut buf = Vec::new();
        for j in 0..self.b.len() {
            fill_scores(&mut s, &x[..m], self.cost.column(j, &mut buf), 0.0);
            top_k_into(&s, self.k.min(m), &mut idx);
            let (theta, _) = simplex_threshold(idx.iter().map(|&i| s[i] / self.gamma), self.b[j]);
            y[m + j] = -self.gamma * theta;
        }
        y
    }

    /// D_k(α, β) = α·a + β·b − Σ_j δ_k(α + β_j − c_j) evaluated directly (top k by the tie rule), exact
    /// also where scores tie: [`Smoothed::true_value`] goes through the smoothed selection, whose weights
    /// at exact ties are decided by rounding.
    fn exact_value(&self, x: &[f64]) -> f64 {
        let m = self.m();
        let (alpha, beta) = x.split_at(m);
        let mut value: f64 = alpha.iter().zip(self.a).map(|(x, y)| x * y).sum::<f64>()
            + beta.iter().zip(self.b).map(|(x, y)| x * y).sum::<f64>();
        let mut s = vec![0.0; m];
        let mut idx = Vec::with_capacity(self.k + 1);
        let mut buf = Vec::new();
        for (j, &beta_j) in beta.iter().enumerate() {
            fill_scores(&mut s, alpha, self.cost.column(j, &mut buf), beta_j);
            top_k_into(&s, self.k.min(m), &mut idx);
            value -= delta_on(&s, &idx, self.gamma);
        }
        value
    }

    /// Scale of q = [s]_+²/(2γ) over the selected entries at `x`.
    fn q_scale(&mut self, x: &[f64]) -> f64 {
        self.true_value(x);
        self.cols
            .iter()
            .flat_map(|c| c.entries.iter().map(|e| 0.5 * self.gamma * e.g * e.g))
            .fold(0.0, f64::max)
            .max(f64::MIN_POSITIVE)
    }
}

/// Smoothing continuation from x0 = (α, β), with an exact polish and certificate attempted after each late
/// stage. A stage whose mixed plan meets the tolerance bounds D_k* from above; once that bound is within the
/// tolerance of D_k at the stage's point, the gap is certified and the continuation stops without polishing.
/// `report(steps, residual)` is called after each stage; when it returns `false` (the solve was cancelled)
/// the continuation stops there.
pub(crate) fn run(
    sm: &mut Smoothed<'_>,
    x0: &[f64],
    settings: &NonsmoothSettings,
    mut report: impl FnMut(usize, f64) -> bool,
) -> NonsmoothOutcome {
    let mut x = x0.to_vec();
    // The objective the caller maximises: D_k(α, β), or for the semi-dual S_k(α) = D_k(α, β*(α)).
    let judge = |sm: &Smoothed<'_>, x: &[f64]| {
        if settings.semi_dual {
            sm.exact_value(&sm.with_best_beta(x))
        } else {
            sm.exact_value(x)
        }
    };
    // The start's value, computed when a polish first needs it.
    let mut start_value = None;
    let q_scale = sm.q_scale(&x);
    let mass_scale = sm.a.iter().chain(sm.b).fold(0.0f64, |x, &y| x.max(y));
    let mut steps = 0;
    let mut relaxed: Option<Relaxed> = None;
    let mut certified = None;
    // μ from 10 q down to q·1e-10 by factors of 10; polish from μ = q on, stop once certified. A stage
    // only has to bring the next one within reach and reveal the tie structure to the polish, so stage s
    // is solved to 1e-3 · 10^−(s+1) of the mass scale (never below the final tolerance); the last stage is
    // solved to the final tolerance. From a start far from the optimum, μ = 10 q can still be too sharp
    // for Newton (its steps cross kinks and the residual oscillates): when an opening stage misses its
    // tolerance, the continuation retreats to 100× more smoothing, at most three times.
    //
    // A later stage that misses its tolerance jumped too far (on problems whose optimum ties many entries
    // per column, Newton at 10× less smoothing can wander for its whole budget while the residual grows):
    // the continuation returns to the last stage that met its tolerance and takes half the step in log μ,
    // down to an eighth of a decade, and doubles the step again after each stage that meets its tolerance.
    const LAST: f64 = 10.0;
    const RETREATS: usize = 3;
    const FINEST_STRIDE: f64 = 0.125;
    const WANDERED: f64 = 100.0;
    const MET_BEFORE_DOUBLING: usize = 3;
    let pow10 = |e: f64| {
        if e.fract() == 0.0 {
            10f64.powi(e as i32)
        } else {
            10f64.powf(e)
        }
    };
    let final_tol = settings.tol.max(1e-12 * mass_scale);
    let mut level = -1.0f64;
    let mut stride = 1.0f64;
    let mut anchor: (Vec<f64>, f64) = (x.clone(), level);
    let mut retreats = 0;
    // Stages met in a row at the current stride.
    let mut met = 0;
    loop {
        let mu = q_scale * pow10(-level);
        let budget = settings.max_steps.saturating_sub(steps);
        if budget == 0 {
            break;
        }
        let stage_tol = if level >= LAST {
            final_tol
        } else {
            final_tol.max(1e-3 * mass_scale * pow10(-(level + 1.0)))
        };
        let (st, r) = sm.newton_stage(&mut x, mu, stage_tol, budget.min(50));
        steps += st;
        if !report(steps, r) {
            break;
        }
        if level < 0.0 && r > stage_tol && retreats < RETREATS {
            retreats += 1;
            level -= 2.0;
            continue;
        }
        let missed = level >= 0.0 && r > stage_tol;
        if missed && r > WANDERED * stage_tol && stride > FINEST_STRIDE {
            stride *= 0.5;
            met = 0;
            x.clone_from(&anchor.0);
            level = anchor.1 + stride;
            continue;
        }
        if r <= settings.tol {
            // The column states are those of the stage's last point: bound first, then the true value.
            if let Some(mixed) = sm.mixed_plan() {
                let stage_bound = mixed.primal;
                if relaxed.as_ref().is_none_or(|r| stage_bound < r.primal) {
                    relaxed = Some(mixed);
                }
                let value = sm.true_value(&x);
                if gap_certifies(stage_bound - value, value, settings.tol) {
                    break;
                }
            }
        }
        // The polish counts as one step of the budget.
        if level >= 0.0 && steps < settings.max_steps {
            if let Some(c) = polish(sm, &x, mu) {
                steps += 1;
                // The mixed plan bounds D_k* only as well as it is feasible: ask for feasibility far below tol.
                // A structure that is not the optimal one can still give a feasible mixed plan, whose bound
                // is then too loose to certify anything: the continuation goes on, and the plan is kept as a
                // candidate for the least bound.
                if c.plan_error <= 1e-3 * settings.tol {
                    // As the caller will judge it: the least bound seen against the best point (the
                    // polished one, the stage's, or the start), by the objective solved.
                    let start = *start_value.get_or_insert_with(|| judge(sm, x0));
                    let value = judge(sm, &c.x).max(judge(sm, &x)).max(start);
                    let bound = relaxed
                        .as_ref()
                        .map_or(c.plan.primal, |r| r.primal.min(c.plan.primal));
                    let certifies = gap_certifies(bound - value, value, settings.tol);
                    let better = certified
                        .as_ref()
                        .is_none_or(|b: &Certified| c.plan.primal < b.plan.primal);
                    if certifies || better {
                        certified = Some(c);
                    }
                    if certifies {
                        break;
                    }
                }
            }
        }
        if level >= LAST {
            break;
        }
        if !missed {
            anchor = (x.clone(), level);
            met += 1;
            if met >= MET_BEFORE_DOUBLING {
                stride = (2.0 * stride).min(1.0);
                met = 0;
            }
        }
        level = (level + stride).min(LAST);
    }
    NonsmoothOutcome {
        x,
        steps,
        relaxed,
        certified,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// From the potentials of an L-BFGS run cut short (here 60 iterations on 300 uniform points against
    /// 200, k = 2, γ = 0.01: the situation of a hand-over from a stalled f32 GPU run), the first smoothing
    /// stage is too sharp for Newton, whose residual then oscillates; the continuation retreats to more
    /// smoothing and still certifies the optimum.
    #[test]
    fn nonsmooth_stage_certifies_from_a_short_lbfgs_run() {
        let (m, n) = (300, 200);
        let mut state = 12345u64;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let x: Vec<[f64; 2]> = (0..m).map(|_| [rnd(), rnd()]).collect();
        let y: Vec<[f64; 2]> = (0..n).map(|_| [rnd(), rnd()]).collect();
        let mut cost = Array2::from_shape_fn((m, n), |(i, j)| {
            (x[i][0] - y[j][0]).powi(2) + (x[i][1] - y[j][1]).powi(2)
        });
        let max = cost.iter().cloned().fold(0.0, f64::max);
        cost /= max;
        let (a, b) = (vec![1.0 / m as f64; m], vec![1.0 / n as f64; n]);
        let problem = crate::problem::Problem::new(
            ndarray::ArrayView1::from(&a),
            ndarray::ArrayView1::from(&b),
            cost.view(),
        )
        .unwrap();
        let cfg = crate::sparse::settings::SparseOt::new(2, 0.01).unwrap();
        let short = cfg.clone().max_iter(60).solve(&problem).unwrap();
        assert_eq!(
            short.termination,
            crate::solution::Termination::MaxIterations
        );
        let alpha = short.alpha.to_vec();
        let sol = crate::sparse::cpu::continue_after_stall(&cfg, &problem, 2, alpha, 60);
        assert!(
            matches!(
                sol.termination,
                crate::solution::Termination::Converged(
                    crate::solution::Criterion::DualityGap { .. }
                )
            ),
            "{sol}"
        );
    }

    /// Smoothed evaluations through the working set equal full scans bit for bit, along a path of small
    /// steps and jumps, for several k and μ.
    #[test]
    fn working_set_evaluations_equal_full_scans() {
        let (m, n) = (300, 60);
        let mut state = 5u64;
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let cost = CostColumns::Transposed(Array2::from_shape_fn((n, m), |_| rnd()));
        let a = vec![1.0 / m as f64; m];
        let b = vec![1.0 / n as f64; n];
        for (k, mu) in [(1, 1e-3), (3, 1e-4), (5, 1e-2), (8, 1e-6)] {
            let mut with = Smoothed::new(&cost, &a, &b, k, 0.05);
            let mut without = Smoothed::new(&cost, &a, &b, k, 0.05);
            assert!(with.working.is_some());
            without.working = None;
            let mut x: Vec<f64> = (0..m + n).map(|_| 0.2 * rnd()).collect();
            let (mut g1, mut g2) = (vec![0.0; m + n], vec![0.0; m + n]);
            let mut served = 0;
            for step in 0..40 {
                let size = if step % 10 == 9 { 0.3 } else { 1e-5 };
                for v in x.iter_mut() {
                    *v += size * (rnd() - 0.5);
                }
                let v1 = with.eval(&x, mu, &mut g1);
                let v2 = without.eval(&x, mu, &mut g2);
                assert_eq!(v1.to_bits(), v2.to_bits(), "k {k} mu {mu} step {step}");
                assert!(g1.iter().zip(&g2).all(|(p, q)| p.to_bits() == q.to_bits()));
                let (mut h1, mut h2) = (vec![0.0; m + n], vec![0.0; m + n]);
                with.hess_vec(mu, &g1, &mut h1);
                without.hess_vec(mu, &g1, &mut h2);
                assert!(h1.iter().zip(&h2).all(|(p, q)| p.to_bits() == q.to_bits()));
                served += with.working.as_ref().map_or(0, |w| w.served);
            }
            assert!(served > 20 * n, "k {k} mu {mu}: {served} columns served");
        }
    }

    /// Hessian-vector products match central differences of the gradient (away from kinks).
    #[test]
    fn hessian_matches_finite_differences() {
        let (m, n) = (9, 7);
        let mut state = 3u64;
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let cost = CostColumns::Transposed(Array2::from_shape_fn((n, m), |_| rnd()));
        let a = vec![1.0 / m as f64; m];
        let b = vec![1.0 / n as f64; n];
        for (k, mu) in [(2, 1e-2), (3, 1e-3), (9, 1e-2), (1, 5e-2)] {
            let mut sm = Smoothed::new(&cost, &a, &b, k, 0.1);
            let x: Vec<f64> = (0..m + n).map(|_| 0.3 * rnd()).collect();
            let v: Vec<f64> = (0..m + n).map(|_| rnd() - 0.5).collect();
            let mut g = vec![0.0; m + n];
            sm.eval(&x, mu, &mut g);
            let mut hv = vec![0.0; m + n];
            sm.hess_vec(mu, &v, &mut hv);
            let mut diag = vec![0.0; m + n];
            sm.hess_diag(mu, &mut diag);
            let h = 1e-7;
            let (mut gp, mut gm) = (vec![0.0; m + n], vec![0.0; m + n]);
            let xp: Vec<f64> = x.iter().zip(&v).map(|(x, v)| x + h * v).collect();
            let xm: Vec<f64> = x.iter().zip(&v).map(|(x, v)| x - h * v).collect();
            sm.eval(&xp, mu, &mut gp);
            sm.eval(&xm, mu, &mut gm);
            for i in 0..m + n {
                let fd = (gp[i] - gm[i]) / (2.0 * h);
                assert!(
                    (fd - hv[i]).abs() <= 1e-5 * (1.0 + fd.abs()),
                    "k {k} mu {mu} i {i}: fd {fd} hv {}",
                    hv[i]
                );
            }
            // Diagonal: H e_i.
            for i in 0..m + n {
                let mut e = vec![0.0; m + n];
                e[i] = 1.0;
                sm.eval(&x, mu, &mut g);
                sm.hess_vec(mu, &e, &mut hv);
                assert!(
                    (hv[i] - diag[i]).abs() <= 1e-9 * (1.0 + diag[i].abs()),
                    "k {k} diag {i}: {} vs {}",
                    hv[i],
                    diag[i]
                );
            }
        }
    }

    /// The Levenberg–Marquardt size factor leaves problems up to 1 000 unknowns alone and falls as
    /// 1/(m + n) above.
    #[test]
    fn lm_size_falls_as_one_over_the_unknowns_above_a_thousand() {
        assert_eq!(lm_size(2), 1.0);
        assert_eq!(lm_size(1000), 1.0);
        assert_eq!(lm_size(4000), 0.25);
        assert_eq!(lm_size(100_000), 0.01);
    }

    /// D_k at (α, β*(α)) is the semi-dual S_k(α), as the continuation's judgement of a point assumes.
    #[test]
    fn best_beta_value_is_the_semi_dual() {
        let p = crate::golden_problem();
        let cost = p.cost().to_owned();
        let columns = CostColumns::transposed(cost.view());
        let (a, b) = (p.a().to_vec(), p.b().to_vec());
        let mut semi = crate::sparse::objective::SparseDual::new(
            cost.view(),
            &a,
            &b,
            2,
            0.1,
            crate::solution::Formulation::SemiDual,
        );
        let sm = Smoothed::new(&columns, &a, &b, 2, 0.1);
        let alpha: Vec<f64> = (0..8).map(|i| 0.1 * (i as f64).sin()).collect();
        let mut g = vec![0.0; 8];
        let s = semi.value_and_gradient(&alpha, &mut g);
        let mut x = alpha.clone();
        x.extend(vec![0.0; 6]);
        let y = sm.with_best_beta(&x);
        let d = sm.exact_value(&y);
        assert!((s - d).abs() < 1e-12, "S {s} D {d}");
    }
}
