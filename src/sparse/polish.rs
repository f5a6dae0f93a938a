//! The nonsmooth stage's exact polish: the optimum of D_k on an identified tie structure, and the exactly
//! feasible mixed plan whose relaxed objective certifies it.
//!
//! At a smoothed point every column j splits its weighted entries into the fully selected set U_j and the
//! tied set F_j, whose |F_j| entries share r_j = k − |U_j| slots. On the affine set where the scores
//! α_i − c_ij are equal across each F_j, D_k coincides with the smooth function
//! α·a + β·b − Σ_j [Σ_{U_j} q_ij + (r_j/|F_j|) Σ_{F_j} q_ij] (q = [s]_+²/2γ), so D_k* is its maximum under
//! those linear equalities. It is piecewise quadratic: Newton–KKT steps reach the exact optimum once a step
//! keeps the pattern of positive scores it was computed on. The KKT system is solved densely, for problems
//! up to [`POLISH_MAX_DIM`] unknowns. The equations' multipliers move mass between the tied entries of
//! each column, which makes the surrogate plan's row sums exactly a.

use crate::sparse::nonsmooth::{Certified, Smoothed};
use crate::sparse::plans::Relaxed;
use crate::sparse::rules::PlanBuilder;

/// Largest number of unknowns (m + n + tie equations) for which the dense exact polish is attempted.
pub(crate) const POLISH_MAX_DIM: usize = 1500;

/// Exact polish on the tie structure identified at `x` (see the module docs). Returns the polished (α, β)
/// with the mixed plan's primal value, or `None` when the system is too large or singular, or the mixing
/// weights leave [0, 1] (the structure was not the optimal one).
pub(crate) fn polish(sm: &mut Smoothed<'_>, x: &[f64], mu: f64) -> Option<Certified> {
    let m = sm.m();
    let n = sm.b.len();
    let mut grad = vec![0.0; m + n];
    sm.eval(x, mu, &mut grad);
    let structure = sm.structure()?;
    // Tie equations: for each column, (α_i − c_ij) − (α_l − c_lj) = 0 for consecutive tied entries.
    let mut ties: Vec<(usize, usize, usize)> = Vec::new();
    for (j, cs) in structure.iter().enumerate() {
        for w in cs.tied.windows(2) {
            ties.push((j, w[0], w[1]));
        }
    }
    let dim = m + n + ties.len();
    // A tie equation reads α_i − α_l = c_ij − c_lj (β_j cancels): an edge between rows i and l. The
    // equations are independent exactly when these edges form a forest; a cycle (two columns tying the same
    // pair included) makes the KKT matrix singular, so such a structure cannot be polished (typically μ is
    // still large and many entries sit on the smoothing ramp). Skip the dense solve.
    if dim > POLISH_MAX_DIM || has_cycle(m, ties.iter().map(|&(_, i, l)| (i, l))) {
        return None;
    }
    let mut xk = x.to_vec();
    let mut lambda = vec![0.0; ties.len()];
    let gamma = sm.gamma;
    let weights: Vec<f64> = structure
        .iter()
        .map(|cs| {
            if cs.tied.is_empty() {
                0.0
            } else {
                cs.slots / cs.tied.len() as f64
            }
        })
        .collect();
    let entries = |j: usize| -> Vec<(usize, f64)> {
        let cs = &structure[j];
        cs.full
            .iter()
            .map(|&i| (i, 1.0))
            .chain(cs.tied.iter().map(|&i| (i, weights[j])))
            .collect()
    };
    // The objective is quadratic on each pattern of positive scores: once a Newton step keeps the pattern
    // it was computed on, it landed on that quadratic's exact KKT point.
    let mut pattern: Vec<bool> = Vec::new();
    for _ in 0..30 {
        // Newton–KKT step for min f = −α·a − β·b + Σ_j Σ_i w_ij [s_ij]_+²/(2γ) s.t. the tie equations.
        let mut kkt = Dense::zeros(dim);
        let mut rhs = vec![0.0; dim];
        rhs[..m].copy_from_slice(sm.a);
        rhs[m..m + n].copy_from_slice(sm.b);
        let mut now = Vec::with_capacity(pattern.len());
        for j in 0..n {
            for (i, w) in entries(j) {
                let s = xk[i] - sm.cost.entry(i, j) + xk[m + j];
                now.push(s > 0.0);
                if s <= 0.0 {
                    continue;
                }
                let (t, h) = (w * s / gamma, w / gamma);
                rhs[i] -= t;
                rhs[m + j] -= t;
                kkt.add(i, i, h);
                kkt.add(i, m + j, h);
                kkt.add(m + j, i, h);
                kkt.add(m + j, m + j, h);
            }
        }
        if now == pattern {
            break;
        }
        pattern = now;
        for (r, &(j, i, l)) in ties.iter().enumerate() {
            let row = m + n + r;
            kkt.add(row, i, 1.0);
            kkt.add(row, l, -1.0);
            kkt.add(i, row, 1.0);
            kkt.add(l, row, -1.0);
            rhs[row] = -((xk[i] - sm.cost.entry(i, j)) - (xk[l] - sm.cost.entry(l, j)));
        }
        // The shift (α + c, β − c) leaves everything unchanged: pin it with a tiny diagonal term.
        let dmax = (0..m + n).map(|i| kkt.get(i, i).abs()).fold(0.0, f64::max);
        for i in 0..m + n {
            kkt.add(i, i, 1e-14 * dmax);
        }
        let step = kkt.solve(rhs)?;
        xk.iter_mut().zip(&step).for_each(|(x, d)| *x += d);
        lambda.copy_from_slice(&step[m + n..]);
        let change = step[..m + n].iter().fold(0.0f64, |a, v| a.max(v.abs()));
        if change <= 1e-15 * xk.iter().fold(1.0f64, |a, v| a.max(v.abs())) {
            break;
        }
    }
    // Mixed plan: surrogate plan plus the multipliers moving mass between tied entries of a column.
    let mut plan: Vec<Vec<(usize, f64, f64)>> = (0..n)
        .map(|j| {
            entries(j)
                .into_iter()
                .map(|(i, w)| {
                    let g = (xk[i] - sm.cost.entry(i, j) + xk[m + j]).max(0.0) / gamma;
                    (i, w * g, g)
                })
                .collect()
        })
        .collect();
    for (r, &(j, i, l)) in ties.iter().enumerate() {
        // The KKT row of α_i reads Σ_j t_ij − a_i + Σ_r λ_r E_ri = 0 (E_ri = +1, E_rl = −1): moving λ_r
        // from l to i inside column j makes the row sums exactly a and leaves the column sum unchanged.
        for e in plan[j].iter_mut() {
            if e.0 == i {
                e.1 += lambda[r];
            } else if e.0 == l {
                e.1 -= lambda[r];
            }
        }
    }
    let mut rows = vec![0.0; m];
    let mut primal = 0.0;
    let mut col_err = 0.0f64;
    let mut mixed = PlanBuilder::new(m, n);
    for (j, col) in plan.iter().enumerate() {
        let mut colsum = 0.0;
        for &(i, t, g) in col {
            // Selection weight z = t/g must lie in [0, 1] for T̃ to mix k-sparse columns.
            if t < -1e-12 || (g > 0.0 && t > g * (1.0 + 1e-9) + 1e-15) || (g == 0.0 && t > 1e-15) {
                return None;
            }
            rows[i] += t;
            colsum += t;
            primal += t * sm.cost.entry(i, j) + if g > 0.0 { 0.5 * gamma * t * g } else { 0.0 };
        }
        col_err = col_err.max((colsum - sm.b[j]).abs());
        mixed.push_column(col.iter().map(|&(i, t, _)| (i, t)));
    }
    let row_err = rows
        .iter()
        .zip(sm.a)
        .fold(0.0f64, |e, (r, a)| e.max((r - a).abs()));
    Some(Certified {
        x: xk,
        plan: Relaxed {
            plan: mixed,
            primal,
        },
        plan_error: row_err.max(col_err),
    })
}

/// Whether the undirected graph on `nodes` vertices with these edges has a cycle (union–find).
fn has_cycle(nodes: usize, edges: impl Iterator<Item = (usize, usize)>) -> bool {
    let mut parent: Vec<usize> = (0..nodes).collect();
    fn root(parent: &mut [usize], mut v: usize) -> usize {
        while parent[v] != v {
            parent[v] = parent[parent[v]];
            v = parent[v];
        }
        v
    }
    for (u, v) in edges {
        let (ru, rv) = (root(&mut parent, u), root(&mut parent, v));
        if ru == rv {
            return true;
        }
        parent[ru] = rv;
    }
    false
}

/// A dense square matrix stored row-major in one contiguous vector (rows are slices, so elimination's
/// row updates are straight loops the compiler vectorises).
struct Dense {
    n: usize,
    a: Vec<f64>,
}

impl Dense {
    fn zeros(n: usize) -> Self {
        Self {
            n,
            a: vec![0.0; n * n],
        }
    }

    fn get(&self, r: usize, c: usize) -> f64 {
        self.a[r * self.n + c]
    }

    fn add(&mut self, r: usize, c: usize, v: f64) {
        self.a[r * self.n + c] += v;
    }

    /// Solves A x = b by Gaussian elimination with partial pivoting; `None` if singular.
    fn solve(mut self, mut b: Vec<f64>) -> Option<Vec<f64>> {
        let n = self.n;
        let a = &mut self.a;
        for c in 0..n {
            let p = (c..n).max_by(|&x, &y| {
                a[x * n + c]
                    .abs()
                    .partial_cmp(&a[y * n + c].abs())
                    .unwrap_or(std::cmp::Ordering::Equal)
            })?;
            if a[p * n + c].abs() < 1e-300 {
                return None;
            }
            if p != c {
                for k in 0..n {
                    a.swap(c * n + k, p * n + k);
                }
                b.swap(c, p);
            }
            let (upper, lower) = a.split_at_mut((c + 1) * n);
            let pivot_row = &upper[c * n + c..(c + 1) * n];
            let piv = pivot_row[0];
            for (r, row) in lower.chunks_exact_mut(n).enumerate() {
                let f = row[c] / piv;
                if f != 0.0 {
                    row[c..]
                        .iter_mut()
                        .zip(pivot_row)
                        .for_each(|(x, &y)| *x -= f * y);
                    b[c + 1 + r] -= f * b[c];
                }
            }
        }
        let mut x = vec![0.0; n];
        for r in (0..n).rev() {
            let row = &a[r * n..(r + 1) * n];
            let s: f64 = row[r + 1..]
                .iter()
                .zip(&x[r + 1..])
                .map(|(a, x)| a * x)
                .sum();
            x[r] = (b[r] - s) / row[r];
        }
        x.iter().all(|v| v.is_finite()).then_some(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tie graphs: a forest has no cycle; a repeated pair or a triangle has one.
    #[test]
    fn tie_cycles() {
        assert!(!has_cycle(4, [(0, 1), (1, 2), (3, 2)].into_iter()));
        assert!(has_cycle(4, [(0, 1), (1, 0)].into_iter()));
        assert!(has_cycle(3, [(0, 1), (1, 2), (2, 0)].into_iter()));
        assert!(!has_cycle(2, std::iter::empty()));
    }
}
