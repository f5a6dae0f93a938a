//! Zero-fill incomplete Cholesky factor of the Newton systems of `sparse::newton`, used to precondition
//! their conjugate-gradient solves.
//!
//! Those systems are A = D − Σ_g w_g (1_g 1_gᵀ − I_g) over groups g of rows (a column's support, w_g =
//! 1/(γ|S_j|)), with a positive diagonal D that dominates every row: a symmetric M-matrix. Its incomplete
//! factor L (lower triangular, nonzero only where A is, so no fill) with L Lᵀ ≈ A exists for every such
//! matrix (no pivot falls to zero), and z = (L Lᵀ)⁻¹ r costs two sweeps over the entries. Rows that share
//! a column are coupled in A but not in A's diagonal; the factor keeps that coupling, which the diagonal
//! (Jacobi) preconditioner loses, so CG needs several times fewer iterations on the chains of rows a
//! transport plan's supports form.

/// L, row by row: row i's entries left of the diagonal by increasing column, then L_ii apart.
pub(crate) struct IncompleteCholesky {
    /// Where row i's entries start in `cols`/`vals` (m + 1 offsets).
    starts: Vec<usize>,
    cols: Vec<usize>,
    vals: Vec<f64>,
    /// L_ii.
    diag: Vec<f64>,
}

impl IncompleteCholesky {
    /// The factor of A with diagonal `diagonal` and, for each group (rows, w), −w at every pair of
    /// distinct rows of the group (summed over groups); `None` if a pivot is not positive (A not positive
    /// definite, or rounding at the edge of it), for the caller to fall back on the diagonal.
    pub(crate) fn of_groups<'g>(
        diagonal: &[f64],
        groups: impl Iterator<Item = (&'g [usize], f64)>,
    ) -> Option<Self> {
        let m = diagonal.len();
        let mut lower: Vec<(usize, usize, f64)> = Vec::new();
        for (rows, w) in groups {
            for (x, &i) in rows.iter().enumerate() {
                for &l in &rows[..x] {
                    lower.push((i.max(l), i.min(l), -w));
                }
            }
        }
        lower.sort_unstable_by_key(|&(i, c, _)| (i, c));
        // Compressed rows: counts per row, then offsets; equal (row, column) pairs summed.
        let mut starts = vec![0; m + 1];
        let (mut cols, mut vals): (Vec<usize>, Vec<f64>) = (Vec::new(), Vec::new());
        let mut last = None;
        for (i, c, v) in lower {
            if last == Some((i, c)) {
                *vals.last_mut().expect("the entry just pushed") += v;
                continue;
            }
            cols.push(c);
            vals.push(v);
            starts[i + 1] += 1;
            last = Some((i, c));
        }
        for i in 0..m {
            starts[i + 1] += starts[i];
        }
        let mut factor = Self {
            starts,
            cols,
            vals,
            diag: vec![0.0; m],
        };
        for (i, &aii) in diagonal.iter().enumerate() {
            let row = factor.starts[i]..factor.starts[i + 1];
            for p in row.clone() {
                let c = factor.cols[p];
                let dot = factor.row_dot(row.start..p, c);
                factor.vals[p] = (factor.vals[p] - dot) / factor.diag[c];
            }
            let pivot = aii - factor.vals[row].iter().map(|v| v * v).sum::<f64>();
            // Not positive, or NaN.
            if pivot.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                return None;
            }
            factor.diag[i] = pivot.sqrt();
        }
        Some(factor)
    }

    /// Σ L_iq L_cq over the columns q that row i's entries `part` (by increasing column) share with row c.
    fn row_dot(&self, part: std::ops::Range<usize>, c: usize) -> f64 {
        let (mut p, mut q) = (part.start, self.starts[c]);
        let (p_end, q_end) = (part.end, self.starts[c + 1]);
        let mut sum = 0.0;
        while p < p_end && q < q_end {
            match self.cols[p].cmp(&self.cols[q]) {
                std::cmp::Ordering::Less => p += 1,
                std::cmp::Ordering::Greater => q += 1,
                std::cmp::Ordering::Equal => {
                    sum += self.vals[p] * self.vals[q];
                    p += 1;
                    q += 1;
                }
            }
        }
        sum
    }

    /// z = (L Lᵀ)⁻¹ r: forward substitution with L, then back substitution with Lᵀ.
    pub(crate) fn solve(&self, r: &[f64], z: &mut [f64]) {
        for i in 0..self.diag.len() {
            let row = self.starts[i]..self.starts[i + 1];
            let lower: f64 = self.cols[row.clone()]
                .iter()
                .zip(&self.vals[row])
                .map(|(&c, &v)| v * z[c])
                .sum();
            z[i] = (r[i] - lower) / self.diag[i];
        }
        for i in (0..self.diag.len()).rev() {
            z[i] /= self.diag[i];
            let zi = z[i];
            let row = self.starts[i]..self.starts[i + 1];
            for (&c, &v) in self.cols[row.clone()].iter().zip(&self.vals[row]) {
                z[c] -= v * zi;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dense matrix of `of_groups`' arguments.
    fn dense(diagonal: &[f64], groups: &[(Vec<usize>, f64)]) -> Vec<Vec<f64>> {
        let m = diagonal.len();
        let mut a = vec![vec![0.0; m]; m];
        for (i, &d) in diagonal.iter().enumerate() {
            a[i][i] = d;
        }
        for (rows, w) in groups {
            for &i in rows {
                for &l in rows {
                    if i != l {
                        a[i][l] -= w;
                    }
                }
            }
        }
        a
    }

    /// Where eliminating the rows in order creates no fill (a tree in which every row has at most one
    /// neighbour after it), the incomplete factor is the exact one: the solve inverts A.
    #[test]
    fn without_fill_the_factor_inverts_the_matrix() {
        let groups = vec![
            (vec![2, 0], 0.5),
            (vec![1, 2], 0.25),
            (vec![4, 2], 1.0),
            (vec![3, 4], 0.5),
        ];
        let diagonal = [2.0, 3.0, 1.0, 1.5, 4.0];
        let a = dense(&diagonal, &groups);
        let f = IncompleteCholesky::of_groups(&diagonal, groups.iter().map(|(r, w)| (&r[..], *w)))
            .expect("an M-matrix has an incomplete factor");
        let r = [1.0, -2.0, 0.5, 3.0, -1.0];
        let mut z = [0.0; 5];
        f.solve(&r, &mut z);
        for (i, row) in a.iter().enumerate() {
            let az: f64 = row.iter().zip(&z).map(|(x, y)| x * y).sum();
            assert!((az - r[i]).abs() < 1e-12, "row {i}: {az} vs {}", r[i]);
        }
    }

    /// With fill dropped (a group of three rows and overlapping groups), L Lᵀ still equals A on A's
    /// pattern, which is what the zero-fill factor promises.
    #[test]
    fn the_factor_matches_the_matrix_on_its_pattern() {
        let groups = vec![
            (vec![0, 2, 4], 0.3),
            (vec![1, 2], 0.5),
            (vec![4, 1, 3], 0.2),
            (vec![3, 0], 0.4),
        ];
        let diagonal = [3.0, 3.0, 3.0, 3.0, 3.0];
        let a = dense(&diagonal, &groups);
        let f = IncompleteCholesky::of_groups(&diagonal, groups.iter().map(|(r, w)| (&r[..], *w)))
            .expect("an M-matrix has an incomplete factor");
        let m = diagonal.len();
        let mut l = vec![vec![0.0; m]; m];
        for (i, li) in l.iter_mut().enumerate() {
            li[i] = f.diag[i];
            for p in f.starts[i]..f.starts[i + 1] {
                li[f.cols[p]] = f.vals[p];
            }
        }
        for i in 0..m {
            for c in 0..=i {
                if a[i][c] != 0.0 {
                    let llt: f64 = (0..m).map(|q| l[i][q] * l[c][q]).sum();
                    assert!(
                        (llt - a[i][c]).abs() < 1e-12,
                        "({i}, {c}): {llt} vs {}",
                        a[i][c]
                    );
                }
            }
        }
    }

    #[test]
    fn a_matrix_that_is_not_positive_definite_has_no_factor() {
        let groups = [(vec![0usize, 1], 2.0)];
        assert!(IncompleteCholesky::of_groups(
            &[1.0, 1.0],
            groups.iter().map(|(r, w)| (&r[..], *w))
        )
        .is_none());
    }
}
