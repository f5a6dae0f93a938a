//! Semi-dual S_k and dual D_k of sparsity-constrained OT (docs/MATH.md §2), evaluated column by column.
//!
//! One column kernel serves the objective, its gradient and the plan: for column j it selects
//! TopK(α − c_j) (tie rule of docs/MATH.md §3.1) and computes the plan column t_j on it:
//!
//! * semi-dual: t_j = b_j · SparseProj_k((α − c_j)/(γ b_j)), i.e. t = [(α − c_j)/γ − θ_j]_+ on the top-k with
//!   θ_j chosen so that Σ t = b_j; the column's term is t·(α − c_j) − (γ/2)‖t‖² (= b_j val_j);
//! * dual: t = [α + β_j − c_j]_+/γ on the top-k; the column's term is (γ/2)‖t‖² (= δ_k).
//!
//! Columns are processed in parallel in fixed chunks; each chunk records its columns' nonzero plan entries,
//! sums them into partial row sums and the partials are added in chunk order, so results do not depend on
//! the thread count or scheduling. Scratch is per worker, not per chunk, and the recorded entries are at
//! most k per column, so memory beyond the cost's own is O(m + nk) (the cost may be computed from points:
//! [`CostColumns`]).
//!
//! For small k on long columns, evaluations go through a [`WorkingSet`]: a column's top k is looked for
//! among the 32 rows that scored best near the last evaluations, and the whole column is read only when a
//! bound cannot rule the other rows out. Results are bit for bit those of full scans.

use rayon::prelude::*;

use crate::ops::{simplex_threshold, top_k_among, top_k_into};
use crate::problem::Problem;
use crate::solution::Formulation;
use crate::sparse::columns::CostColumns;
use crate::sparse::newton::Supports;
use crate::sparse::settings::SparseOt;
use crate::sparse::working_set::{ColumnSet, Part, WorkingSet};

/// Columns per parallel chunk (fixed, for deterministic summation).
const CHUNK: usize = 32;

/// Above this k a column's support is found among the entries that can carry mass ([`ColumnKernel::column`])
/// instead of by a top-k pass over the whole column: for large k (the quadratic solver is k = m) most of the
/// top k would get zero mass, and sorting them cost O(m log m) per column.
const FILTER_ABOVE_K: usize = 16;

/// The data of a sparse (semi-)dual: the cost read column by column, marginals, k, γ.
pub(crate) struct SparseDual<'p> {
    pub(crate) cost: CostColumns<'p>,
    pub(crate) a: &'p [f64],
    pub(crate) b: &'p [f64],
    pub(crate) k: usize,
    pub(crate) gamma: f64,
    pub(crate) formulation: Formulation,
    chunks: Vec<Chunk>,
    /// Candidate rows per column for evaluations near the last ones (small k on long columns).
    working: Option<WorkingSet>,
    /// The x of the last evaluation, at which the chunks' `support` lists were recorded.
    recorded_at: Option<Vec<f64>>,
    /// Zeros between evaluations: the partial row sums of one chunk at a time.
    partial: Vec<f64>,
}

/// One chunk's columns and its results of the last evaluation.
struct Chunk {
    first: usize,
    len: usize,
    term: f64,
    /// Columns of the last evaluation scanned in full although a working set was there.
    fallbacks: usize,
    /// Rows with t_ij > 0 of the chunk's columns, one column after another, their masses t_ij, and the end of
    /// each column's list in them.
    support: Vec<usize>,
    mass: Vec<f64>,
    support_end: Vec<usize>,
}

/// A worker's scratch: the scores s of a column, its selected rows, and the column itself where the cost
/// source computes it.
struct Scratch {
    s: Vec<f64>,
    idx: Vec<usize>,
    column: Vec<f64>,
}

impl Scratch {
    fn new(m: usize) -> Self {
        Self {
            s: vec![0.0; m],
            idx: Vec::with_capacity(m),
            column: Vec::new(),
        }
    }
}

/// The read-only data of the column kernel.
#[derive(Clone, Copy)]
struct ColumnKernel<'a> {
    cost: &'a CostColumns<'a>,
    b: &'a [f64],
    k: usize,
    gamma: f64,
    formulation: Formulation,
}

impl ColumnKernel<'_> {
    /// Computes column j's support and threshold into the scratch `s`, `idx`. `beta_j` is used by the dual.
    /// With a working set the column's candidates are tried first (from the cost entries the set
    /// keeps); the returned flag says whether the whole column was scanned (always so without a set). Either
    /// way the plan is that of a full scan.
    fn column<'s>(
        &self,
        alpha: &[f64],
        beta_j: f64,
        j: usize,
        scratch: &'s mut Scratch,
        set: Option<&mut ColumnSet<'_>>,
    ) -> (ColumnPlan<'s>, bool) {
        let Scratch { s, idx, column } = scratch;
        let mut scanned = true;
        if let Some(set) = set {
            if set.drift.is_some() {
                set.select(alpha, self.k, s, idx);
                scanned = !(idx.len() == self.k && set.clears(s[idx[self.k - 1]], 0.0));
            }
            if scanned {
                let c = self.cost.column(j, column);
                for ((si, &ai), &ci) in s.iter_mut().zip(alpha).zip(c) {
                    *si = ai - ci;
                }
                // The column's top WIDTH + 1 by the tie rule starts with its top k.
                set.rebuild(s, c, self.k, idx);
                idx.truncate(self.k);
            }
            return (self.plan_of(beta_j, j, s, idx), scanned);
        }
        let c = self.cost.column(j, column);
        for ((si, &ai), &ci) in s.iter_mut().zip(alpha).zip(c) {
            *si = ai - ci;
        }
        if self.k <= FILTER_ABOVE_K {
            top_k_into(s, self.k, idx);
        } else {
            // Only entries that can get mass matter; the others of the top k would get exactly 0. They rank
            // below every entry that can, so the kept ones are the top of the top-k list, in its order, and
            // θ, the sums and the plan are the same as over the whole list.
            // Dual: t_i = [s_i + β_j]_+/γ > 0 needs s_i > −β_j. Semi-dual: the threshold of the projection
            // is at least that of its largest entry alone, θ ≥ −b_j (scores relative to the largest, over
            // γ), so t_i > 0 needs s_i − max s > −γ b_j; the cut at twice that leaves room for rounding.
            let keep = |cut: f64, si: f64| match self.formulation {
                Formulation::Dual => si > cut,
                Formulation::SemiDual => si >= cut,
            };
            let cut = match self.formulation {
                Formulation::Dual => -beta_j,
                Formulation::SemiDual => {
                    let top = s.iter().fold(f64::NEG_INFINITY, |x, &y| x.max(y));
                    top - 2.0 * self.gamma * self.b[j]
                }
            };
            idx.clear();
            idx.extend((0..s.len()).filter(|&i| keep(cut, s[i])));
            top_k_among(s, self.k, idx);
        }
        (self.plan_of(beta_j, j, s, idx), scanned)
    }

    /// Column j's plan on its selected rows `idx` (in rank order) of the scores `s`.
    fn plan_of<'s>(&self, beta_j: f64, j: usize, s: &'s [f64], idx: &'s [usize]) -> ColumnPlan<'s> {
        let gamma = self.gamma;
        let (theta, shift) = match self.formulation {
            Formulation::SemiDual => {
                let shift = s[idx[0]];
                let theta =
                    simplex_threshold(idx.iter().map(|&i| (s[i] - shift) / gamma), self.b[j]).0;
                (theta, shift)
            }
            Formulation::Dual => (-beta_j / gamma, 0.0),
        };
        ColumnPlan {
            rows: idx,
            s,
            theta,
            shift,
        }
    }
}

/// One column's plan: selected rows and their (possibly zero) masses; θ (semi-dual) as the implied β.
pub(crate) struct ColumnPlan<'a> {
    pub rows: &'a [usize],
    pub s: &'a [f64],
    /// Threshold in plan units, so that t_i = [(s_i − shift)/γ − θ]_+; for the dual, −β_j/γ.
    pub theta: f64,
    /// The semi-dual works relative to the column's largest score, so that huge potentials cannot round the
    /// plan away (s_i/γ − θ cancels catastrophically once s_i/γ exceeds b_j · 2^52); 0 for the dual.
    pub shift: f64,
}

impl<'p> SparseDual<'p> {
    /// The (semi-)dual of a dense m × n cost (copied, transposed, for the kernels).
    #[cfg(test)]
    pub(crate) fn new(
        cost: ndarray::ArrayView2<f64>,
        a: &'p [f64],
        b: &'p [f64],
        k: usize,
        gamma: f64,
        formulation: Formulation,
    ) -> Self {
        Self::on(CostColumns::transposed(cost), a, b, k, gamma, formulation)
    }

    /// The (semi-)dual of the cost `cost` (m × n) with marginals a (m) and b (n).
    pub(crate) fn on(
        cost: CostColumns<'p>,
        a: &'p [f64],
        b: &'p [f64],
        k: usize,
        gamma: f64,
        formulation: Formulation,
    ) -> Self {
        let (m, n) = (cost.m(), cost.n());
        let chunks = (0..n)
            .step_by(CHUNK)
            .map(|first| Chunk {
                first,
                len: CHUNK.min(n - first),
                term: 0.0,
                fallbacks: 0,
                support: Vec::new(),
                mass: Vec::new(),
                support_end: Vec::new(),
            })
            .collect();
        let working =
            (k <= FILTER_ABOVE_K && WorkingSet::applies(m, k)).then(|| WorkingSet::new(m, n));
        Self {
            cost,
            a,
            b,
            k,
            gamma,
            formulation,
            chunks,
            working,
            recorded_at: None,
            partial: vec![0.0; m],
        }
    }

    /// The (semi-)dual of `p` with the settings of `cfg` and the resolved k.
    pub(crate) fn for_problem(p: &'p Problem, k: usize, cfg: &SparseOt) -> Self {
        Self::on(
            CostColumns::transposed(p.cost()),
            p.a_slice(),
            p.b_slice(),
            k,
            cfg.gamma,
            cfg.formulation,
        )
    }

    pub(crate) fn m(&self) -> usize {
        self.a.len()
    }

    pub(crate) fn n(&self) -> usize {
        self.b.len()
    }

    /// Number of variables: m (semi-dual) or m + n (dual).
    pub(crate) fn dim(&self) -> usize {
        match self.formulation {
            Formulation::SemiDual => self.m(),
            Formulation::Dual => self.m() + self.n(),
        }
    }

    /// The read-only data the column kernel needs.
    fn kernel(&self) -> ColumnKernel<'_> {
        ColumnKernel {
            cost: &self.cost,
            b: self.b,
            k: self.k,
            gamma: self.gamma,
            formulation: self.formulation,
        }
    }

    /// Evaluates the objective (to maximise) at x = α (semi-dual) or x = (α, β) (dual); writes its gradient.
    /// Each column's support {i : t_ij > 0} at x is kept on the way, for [`Self::recorded_supports`].
    pub(crate) fn value_and_gradient(&mut self, x: &[f64], grad: &mut [f64]) -> f64 {
        let v = self.evaluate(x, grad);
        let at = self.recorded_at.get_or_insert_with(Vec::new);
        at.clear();
        at.extend_from_slice(x);
        v
    }

    /// Each column's support as recorded by the last evaluation, if that was at exactly x.
    pub(crate) fn recorded_supports(&self, x: &[f64]) -> Option<Supports> {
        let at = self.recorded_at.as_deref()?;
        let same = at.len() == x.len() && at.iter().zip(x).all(|(p, q)| p.to_bits() == q.to_bits());
        same.then(|| {
            let mut out = Supports::default();
            for ch in &self.chunks {
                let offset = out.rows.len();
                out.rows.extend_from_slice(&ch.support);
                out.ends.extend(ch.support_end.iter().map(|e| e + offset));
            }
            out
        })
    }

    fn evaluate(&mut self, x: &[f64], grad: &mut [f64]) -> f64 {
        let m = self.m();
        let (alpha, beta) = x.split_at(m);
        let (ga, gb) = grad.split_at_mut(m);
        let kernel = ColumnKernel {
            cost: &self.cost,
            b: self.b,
            k: self.k,
            gamma: self.gamma,
            formulation: self.formulation,
        };
        let (gamma, f, b) = (self.gamma, self.formulation, self.b);
        let nchunks = self.chunks.len();
        // Column sums go straight into the β-gradient: chunks own disjoint column ranges.
        let mut gb_chunks: Vec<Option<&mut [f64]>> = match f {
            Formulation::Dual => gb.chunks_mut(CHUNK).map(Some).collect(),
            Formulation::SemiDual => (0..nchunks).map(|_| None).collect(),
        };
        // δ of this evaluation (None inside: the working set is rebuilt), and each chunk's part of the set.
        let drift = self.working.as_mut().map(|w| w.begin(alpha));
        let mut parts: Vec<Option<Part<'_>>> = match self.working.as_mut() {
            Some(w) => w.chunks_mut(CHUNK).map(Some).collect(),
            None => (0..nchunks).map(|_| None).collect(),
        };
        let work = |scratch: &mut Scratch,
                    ((ch, gbc), part): (
            (&mut Chunk, &mut Option<&mut [f64]>),
            &mut Option<Part<'_>>,
        )| {
            ch.fallbacks = 0;
            ch.support.clear();
            ch.mass.clear();
            ch.support_end.clear();
            let mut term = 0.0;
            for (off, j) in (ch.first..ch.first + ch.len).enumerate() {
                let beta_j = if f == Formulation::Dual { beta[j] } else { 0.0 };
                let mut set = part.as_mut().map(|p| p.column(off, drift.flatten()));
                let (col, scanned) = kernel.column(alpha, beta_j, j, scratch, set.as_mut());
                if scanned && set.is_some_and(|s| s.drift.is_some()) {
                    ch.fallbacks += 1;
                }
                let mut colsum = 0.0;
                let mut sq = 0.0;
                let mut lin = 0.0;
                for &i in col.rows {
                    let d = col.s[i] - col.shift;
                    let t = (d / gamma - col.theta).max(0.0);
                    // Zero masses add nothing to a row sum (x + 0 = x): only nonzeros are kept.
                    if t > 0.0 {
                        ch.support.push(i);
                        ch.mass.push(t);
                    }
                    colsum += t;
                    sq += t * t;
                    lin += t * d;
                }
                term += match f {
                    // t·s = t·(s − shift) + shift Σt.
                    Formulation::SemiDual => lin + col.shift * colsum - 0.5 * gamma * sq,
                    Formulation::Dual => 0.5 * gamma * sq,
                };
                if let Some(g) = gbc.as_mut() {
                    g[off] = b[j] - colsum;
                }
                ch.support_end.push(ch.support.len());
            }
            ch.term = term;
        };
        self.chunks
            .par_iter_mut()
            .zip(gb_chunks.par_iter_mut())
            .zip(parts.par_iter_mut())
            .for_each_init(|| Scratch::new(m), work);
        drop(parts);
        if let Some(w) = self.working.as_mut() {
            w.end(self.chunks.iter().map(|c| c.fallbacks).sum());
        }
        // Deterministic reduction in chunk order: a chunk's partial row sums (its columns in order), then
        // a_i minus the partials of chunk after chunk. Rows a chunk gives no mass have a zero partial, which
        // changes nothing, so only the chunk's support is visited.
        ga.copy_from_slice(self.a);
        let partial = &mut self.partial;
        let mut total = 0.0;
        for ch in &self.chunks {
            for (&i, &t) in ch.support.iter().zip(&ch.mass) {
                partial[i] += t;
            }
            for &i in &ch.support {
                ga[i] -= partial[i];
                partial[i] = 0.0;
            }
            total += ch.term;
        }
        let lin_a: f64 = alpha.iter().zip(self.a).map(|(x, y)| x * y).sum();
        match f {
            Formulation::SemiDual => lin_a - total,
            Formulation::Dual => {
                lin_a + beta.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() - total
            }
        }
    }

    /// Calls `emit(j, rows, values, beta_j)` with the plan column j at the given potentials (values may be 0).
    /// For the semi-dual, `beta_j` is the implied dual potential −shift − γ θ_j; for the dual it is β_j itself.
    pub(crate) fn for_each_column(
        &mut self,
        alpha: &[f64],
        beta: Option<&[f64]>,
        mut emit: impl FnMut(usize, &[usize], &mut dyn Iterator<Item = f64>, f64),
    ) {
        let mut scratch = Scratch::new(self.m());
        for j in 0..self.n() {
            let beta_j = beta.map_or(0.0, |b| b[j]);
            let (col, _) = self.kernel().column(alpha, beta_j, j, &mut scratch, None);
            let gamma = self.gamma;
            let (theta, shift) = (col.theta, col.shift);
            let sv = col.s;
            let mut vals = col
                .rows
                .iter()
                .map(|&i| ((sv[i] - shift) / gamma - theta).max(0.0));
            // t_i = [(s_i + β_j)/γ]_+ with β_j = −shift − γθ (semi-dual); the dual's β_j is passed back as given.
            let beta_out = match self.formulation {
                Formulation::SemiDual => -shift - gamma * theta,
                Formulation::Dual => beta_j,
            };
            emit(j, col.rows, &mut vals, beta_out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// A path of points: small steps (the working set serves them), then jumps (columns fall back and the
    /// set is rebuilt), for both formulations and several k; value and gradient equal those of full scans
    /// bit for bit.
    #[test]
    fn working_set_evaluations_equal_full_scans() {
        let (m, n) = (300, 70);
        let mut state = 11u64;
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let cost = Array2::from_shape_fn((m, n), |_| rnd());
        let a = vec![1.0 / m as f64; m];
        let b = vec![1.0 / n as f64; n];
        for f in [Formulation::SemiDual, Formulation::Dual] {
            for k in [1, 3, 8] {
                let mut with = SparseDual::new(cost.view(), &a, &b, k, 0.05, f);
                let mut without = SparseDual::new(cost.view(), &a, &b, k, 0.05, f);
                assert!(with.working.is_some());
                without.working = None;
                let mut x: Vec<f64> = (0..with.dim()).map(|_| 0.2 * rnd()).collect();
                let (mut g1, mut g2) = (vec![0.0; x.len()], vec![0.0; x.len()]);
                let mut served = 0;
                for step in 0..40 {
                    let size = if step % 10 == 9 { 0.3 } else { 1e-4 };
                    for v in x.iter_mut() {
                        *v += size * (rnd() - 0.5);
                    }
                    let v1 = with.value_and_gradient(&x, &mut g1);
                    let v2 = without.value_and_gradient(&x, &mut g2);
                    assert_eq!(v1.to_bits(), v2.to_bits(), "{f:?} k {k} step {step}");
                    assert!(g1.iter().zip(&g2).all(|(p, q)| p.to_bits() == q.to_bits()));
                    served += with.working.as_ref().map_or(0, |w| w.served);
                }
                // The small steps are served from the set (not every column falls back).
                assert!(served > 20 * n, "{f:?} k {k}: {served} columns served");
            }
        }
    }
}
