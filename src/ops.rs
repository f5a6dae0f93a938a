//! Public operators of sparsity-constrained OT (docs/MATH.md §2–3), batched over the columns of a matrix.
//!
//! Each column of the input is one vector `s` (length m). The single-column kernels in this module are the
//! ones the CPU solvers use, so the operators and the solvers cannot drift apart.
//!
//! The `*_batch` forms take a B × m × n array (B independent matrices, e.g. the scores of a [`crate::Batch`]),
//! apply the 2-D operator to each matrix in parallel and stack the results along the first axis; an invalid
//! matrix is reported as [`Error::InBatch`] with its index.
//!
//! Tie rule (docs/MATH.md §3.1): the top-k are the min(k, m) largest entries, larger value first, then lower index
//! first (the rule of `jax.lax.top_k`).

use std::cmp::Ordering;

use ndarray::{Array1, Array2, Array3, ArrayView2, ArrayView3, Axis};
use rayon::prelude::*;

use crate::error::{positive, Error, Position, Result};

/// Order of "more selected first": larger value, then lower index.
#[inline]
fn rank_order(values: &[f64], x: usize, y: usize) -> Ordering {
    values[y]
        .partial_cmp(&values[x])
        .unwrap_or(Ordering::Equal)
        .then(x.cmp(&y))
}

/// Writes into `idx` the indices of the min(k, len) largest entries of `values`, sorted by the tie rule
/// (largest first, equal values by lower index). `idx` is reused scratch. O(m) with a small sorted buffer for
/// k ≤ 16 (the usual case), O(m + k log k) by selection otherwise.
pub(crate) fn top_k_into(values: &[f64], k: usize, idx: &mut Vec<usize>) {
    const SMALL_K: usize = 16;
    let k = k.min(values.len());
    idx.clear();
    if k == 0 {
        return;
    }
    if k <= SMALL_K {
        top_k_small(values, k, idx);
    } else {
        top_k_select(values, k, idx);
    }
}

/// One pass keeping the best k so far, sorted by the tie rule, in a buffer.
fn top_k_small(values: &[f64], k: usize, idx: &mut Vec<usize>) {
    top_k_buffered(values, 0..values.len(), k, idx);
}

/// The largest k that [`top_k_buffered`] takes.
pub(crate) const BUFFERED_MAX_K: usize = 64;

/// Writes into `idx` the best min(k, number of rows) of `values` over `rows` by the tie rule, sorted by it,
/// in one pass with a sorted buffer (k ≤ [`BUFFERED_MAX_K`]). `rows` must come by increasing index, so a
/// newcomer equal to a kept value ranks after it: anything ≤ the k-th kept value is skipped. Over a subset
/// of the rows that holds the whole column's top k, the result is the whole column's.
pub(crate) fn top_k_buffered(
    values: &[f64],
    rows: impl Iterator<Item = usize>,
    k: usize,
    idx: &mut Vec<usize>,
) {
    let mut kept = [0.0f64; BUFFERED_MAX_K];
    debug_assert!(k <= kept.len());
    idx.clear();
    if k == 0 {
        return;
    }
    let mut threshold = f64::NEG_INFINITY;
    for i in rows {
        let v = values[i];
        let len = idx.len();
        if len == k && v <= threshold {
            continue;
        }
        // Insertion position: after every kept value ≥ v.
        let mut pos = len.min(k - 1);
        if len < k {
            idx.push(i);
        }
        while pos > 0 && kept[pos - 1] < v {
            kept[pos] = kept[pos - 1];
            idx[pos] = idx[pos - 1];
            pos -= 1;
        }
        kept[pos] = v;
        idx[pos] = i;
        if idx.len() == k {
            threshold = kept[k - 1];
        }
    }
}

/// Selection of the k-th by the tie rule, then a sort of the k selected.
fn top_k_select(values: &[f64], k: usize, idx: &mut Vec<usize>) {
    idx.extend(0..values.len());
    top_k_among(values, k, idx);
}

/// Keeps in `candidates` (indices into `values`) the min(k, len) best by the tie rule, sorted by it (largest
/// first, equal values by lower index): selection of the k-th, then a sort of the kept ones.
pub(crate) fn top_k_among(values: &[f64], k: usize, candidates: &mut Vec<usize>) {
    if k == 0 {
        candidates.clear();
        return;
    }
    if k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, |&x, &y| rank_order(values, x, y));
        candidates.truncate(k);
    }
    candidates.sort_unstable_by(|&x, &y| rank_order(values, x, y));
}

/// δ_k(s) = (1/2γ) Σ_{i ∈ TopK(s)} [s_i]_+², with `top` the top-k indices of `s`.
#[inline]
pub(crate) fn delta_on(s: &[f64], top: &[usize], gamma: f64) -> f64 {
    top.iter()
        .map(|&i| {
            let p = s[i].max(0.0);
            p * p
        })
        .sum::<f64>()
        / (2.0 * gamma)
}

/// Threshold θ of the simplex projection restricted to the sorted values `u` (descending):
/// returns (θ, ρ) with ρ the number of entries kept positive (docs/MATH.md §3.2, steps 2–3).
///
/// `mass` is the simplex total (1 for the unit simplex).
#[inline]
pub(crate) fn simplex_threshold(u: impl Iterator<Item = f64>, mass: f64) -> (f64, usize) {
    let mut cs = 0.0;
    let mut theta = f64::NAN;
    let mut rho = 0;
    for (r, ur) in u.enumerate() {
        cs += ur;
        let t = (cs - mass) / (r + 1) as f64;
        // r = 0 always qualifies (u_1 − (u_1 − mass) = mass > 0); testing it in floating point fails for huge
        // u_1, which would leave θ = NaN and an empty column.
        if r == 0 || ur - t > 0.0 {
            theta = t;
            rho = r + 1;
        }
    }
    (theta, rho)
}

fn check_scores(what: &'static str, s: ArrayView2<f64>) -> Result<()> {
    if s.is_empty() {
        return Err(Error::Empty { what });
    }
    if let Some(((i, j), &v)) = s.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(Error::NonFinite {
            what,
            position: Position::Matrix(i, j),
            value: v,
        });
    }
    Ok(())
}

fn check_k(k: usize, m: usize) -> Result<()> {
    if k == 0 || k > m {
        return Err(Error::InvalidK {
            k,
            max: m,
            axis: "rows",
        });
    }
    Ok(())
}

/// Top-k indices of every column of `scores` (m × n): a (k × n) matrix whose column j lists the k
/// selected rows of column j, largest first, ties broken by lower index.
///
/// Errors: empty input, NaN/inf, k = 0 or k > m.
pub fn top_k_indices(scores: ArrayView2<f64>, k: usize) -> Result<Array2<usize>> {
    check_scores("scores", scores)?;
    check_k(k, scores.nrows())?;
    let mut out = Array2::zeros((k, scores.ncols()));
    let mut col = Vec::with_capacity(scores.nrows());
    let mut idx = Vec::with_capacity(scores.nrows());
    for (j, s) in scores.axis_iter(Axis(1)).enumerate() {
        col.clear();
        col.extend(s.iter().copied());
        top_k_into(&col, k, &mut idx);
        for (r, &i) in idx.iter().enumerate() {
            out[[r, j]] = i;
        }
    }
    Ok(out)
}

/// Top-k mask of every column of `scores` (m × n): `true` at the k selected entries of each column.
///
/// Errors: as [`top_k_indices`].
pub fn top_k_mask(scores: ArrayView2<f64>, k: usize) -> Result<Array2<bool>> {
    let idx = top_k_indices(scores, k)?;
    let mut mask = Array2::from_elem(scores.dim(), false);
    for ((_, j), &i) in idx.indexed_iter() {
        mask[[i, j]] = true;
    }
    Ok(mask)
}

/// The top-k conjugate of every column: returns (δ_k(s_j) for each column j, ∇δ_k(s_j) as an m × n matrix).
///
/// δ_k(s) = (1/2γ) Σ_{i ∈ TopK(s)} \[s_i\]_+², ∇δ_k(s) = \[s\]_+/γ on TopK(s) and 0 elsewhere (docs/MATH.md §2.1).
/// Errors: empty or non-finite input, k out of range, γ ≤ 0.
pub fn top_k_conjugate(
    scores: ArrayView2<f64>,
    k: usize,
    gamma: f64,
) -> Result<(Array1<f64>, Array2<f64>)> {
    positive("gamma", gamma)?;
    let idx = top_k_indices(scores, k)?;
    let n = scores.ncols();
    let mut values = Array1::zeros(n);
    let mut grad = Array2::zeros(scores.dim());
    for j in 0..n {
        let s: Vec<f64> = scores.column(j).to_vec();
        let top: Vec<usize> = idx.column(j).to_vec();
        values[j] = delta_on(&s, &top, gamma);
        for &i in &top {
            grad[[i, j]] = s[i].max(0.0) / gamma;
        }
    }
    Ok((values, grad))
}

/// Sparse projection of every column onto the unit simplex with at most k nonzeros (docs/MATH.md §3.2):
/// argmin ‖y − v‖² subject to y ≥ 0, Σy = 1, ‖y‖₀ ≤ k. With k = m it is the ordinary simplex projection.
///
/// Errors: empty or non-finite input, k out of range.
pub fn sparse_simplex_projection(v: ArrayView2<f64>, k: usize) -> Result<Array2<f64>> {
    let idx = top_k_indices(v, k)?;
    let mut out = Array2::zeros(v.dim());
    for j in 0..v.ncols() {
        let top: Vec<usize> = idx.column(j).to_vec();
        let (theta, _) = simplex_threshold(top.iter().map(|&i| v[[i, j]]), 1.0);
        for &i in &top {
            out[[i, j]] = (v[[i, j]] - theta).max(0.0);
        }
    }
    Ok(out)
}

/// Applies a 2-D operator to every matrix of a B × m × n input in parallel and stacks the results.
fn batched<T: Clone + Send>(
    input: ArrayView3<f64>,
    op: impl Fn(ArrayView2<f64>) -> Result<Array2<T>> + Sync,
) -> Result<Array3<T>> {
    if input.dim().0 == 0 {
        return Err(Error::Empty { what: "batch" });
    }
    let parts: Vec<Array2<T>> = (0..input.dim().0)
        .into_par_iter()
        .map(|index| {
            op(input.index_axis(Axis(0), index)).map_err(|e| Error::InBatch {
                index,
                source: Box::new(e),
            })
        })
        .collect::<Result<_>>()?;
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    Ok(ndarray::stack(Axis(0), &views).expect("every matrix of a batch has the same shape"))
}

/// [`top_k_indices`] of every matrix of a B × m × n input: B × k × n.
///
/// Errors: an empty batch; otherwise those of [`top_k_indices`], wrapped in [`Error::InBatch`].
pub fn top_k_indices_batch(scores: ArrayView3<f64>, k: usize) -> Result<Array3<usize>> {
    batched(scores, |s| top_k_indices(s, k))
}

/// [`top_k_mask`] of every matrix of a B × m × n input: B × m × n.
///
/// Errors: as [`top_k_indices_batch`].
pub fn top_k_mask_batch(scores: ArrayView3<f64>, k: usize) -> Result<Array3<bool>> {
    batched(scores, |s| top_k_mask(s, k))
}

/// [`sparse_simplex_projection`] of every matrix of a B × m × n input (each column projected): B × m × n.
///
/// Errors: as [`top_k_indices_batch`].
pub fn sparse_simplex_projection_batch(v: ArrayView3<f64>, k: usize) -> Result<Array3<f64>> {
    batched(v, |s| sparse_simplex_projection(s, k))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The single-pass path and the select-then-sort path agree with a full sort by the tie rule.
    #[test]
    fn top_k_matches_full_sort() {
        let mut state = 7u64;
        let mut idx = Vec::new();
        for trial in 0..500 {
            let m = 1 + trial % 60;
            let values: Vec<f64> = (0..m)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    // Few distinct values, so ties are frequent.
                    ((state >> 33) % 7) as f64 - 3.0
                })
                .collect();
            let mut order: Vec<usize> = (0..m).collect();
            order.sort_by(|&x, &y| rank_order(&values, x, y));
            for k in [1, 2, 3, 5, m / 2 + 1, m, 40] {
                top_k_into(&values, k, &mut idx);
                assert_eq!(idx, order[..k.min(m)].to_vec(), "values {values:?} k {k}");
            }
        }
    }

    #[test]
    fn small_k_buffer_matches_selection() {
        // Values from a small set, so ties are frequent; lengths around and above k.
        let mut state = 12345u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut fast, mut slow) = (Vec::new(), Vec::new());
        for trial in 0..2000 {
            let m = 1 + (next() % 60) as usize;
            let levels = 1 + (trial % 7) as u64;
            let values: Vec<f64> = (0..m).map(|_| (next() % levels) as f64 - 2.5).collect();
            for k in 1..=16 {
                top_k_into(&values, k, &mut fast);
                slow.clear();
                top_k_select(&values, k.min(m), &mut slow);
                assert_eq!(fast, slow, "values {values:?}, k {k}");
            }
            for k in [17, 33, BUFFERED_MAX_K] {
                top_k_buffered(&values, 0..m, k, &mut fast);
                slow.clear();
                top_k_select(&values, k.min(m), &mut slow);
                assert_eq!(fast, slow, "values {values:?}, k {k}");
            }
        }
    }

    #[test]
    fn ties_prefer_lower_index() {
        let mut idx = Vec::new();
        top_k_into(&[1.0, 3.0, 3.0, 0.0, 3.0], 2, &mut idx);
        assert_eq!(idx, vec![1, 2]);
        top_k_into(&[2.0, 2.0, 2.0], 3, &mut idx);
        assert_eq!(idx, vec![0, 1, 2]);
        top_k_into(&[-1.0, -0.5], 5, &mut idx);
        assert_eq!(idx, vec![1, 0]);
    }
}
