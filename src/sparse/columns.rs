//! Where the sparse solvers read the cost: column c_j = (C_0j, …, C_(m−1)j) whenever a kernel needs it, from
//! a stored matrix or computed from two point clouds, never an m × n matrix for the latter.
//!
//! Every column and every single entry of one source are computed by the same arithmetic, so a kernel that
//! reads a few entries (the working sets) sees exactly the numbers a whole-column pass sees.

use ndarray::{Array2, ArrayView2};

use crate::points::{PointLanes, PointProblem};
use crate::problem::Problem;

/// The cost of a (column) problem, as the sparse kernels read it.
pub(crate) enum CostColumns<'p> {
    /// Cᵀ, n × m contiguous (row j is column c_j): the kernels' layout for a dense problem.
    Transposed(Array2<f64>),
    /// C itself, m × n row-major (columns gathered on demand): for reading a plan's entries without a
    /// copy.
    Matrix { entries: &'p [f64], n: usize },
    /// C_ij = c(x_i, y_j) / divisor − offset, computed from the points when needed.
    Points {
        lanes: PointLanes<f64>,
        problem: &'p PointProblem,
    },
}

impl<'p> CostColumns<'p> {
    /// The kernels' copy of a dense cost (m × n): its transpose, contiguous.
    pub(crate) fn transposed(cost: ArrayView2<'_, f64>) -> Self {
        Self::Transposed(cost.t().as_standard_layout().into_owned())
    }

    /// The cost of a dense problem, read where it is.
    pub(crate) fn matrix(p: &'p Problem) -> Self {
        Self::Matrix {
            entries: p.cost_slice(),
            n: p.n(),
        }
    }

    /// The cost of `p` minus `offset`, computed from its points (O((m + n) d) memory).
    pub(crate) fn points(p: &'p PointProblem, offset: f64) -> Self {
        Self::Points {
            lanes: PointLanes::new(p, offset),
            problem: p,
        }
    }

    /// Number of rows m (the length of a column).
    pub(crate) fn m(&self) -> usize {
        match self {
            Self::Transposed(t) => t.ncols(),
            Self::Matrix { entries, n } => entries.len() / n,
            Self::Points { problem, .. } => problem.m(),
        }
    }

    /// Number of columns n.
    pub(crate) fn n(&self) -> usize {
        match self {
            Self::Transposed(t) => t.nrows(),
            Self::Matrix { n, .. } => *n,
            Self::Points { problem, .. } => problem.n(),
        }
    }

    /// Column j (m entries): borrowed where the source stores it contiguously, else written into `buf`.
    pub(crate) fn column<'b>(&'b self, j: usize, buf: &'b mut Vec<f64>) -> &'b [f64] {
        match self {
            Self::Transposed(t) => t.row(j).to_slice().expect("standard layout"),
            Self::Matrix { entries, n } => {
                buf.clear();
                buf.extend(entries.iter().skip(j).step_by(*n));
                buf
            }
            Self::Points { lanes, problem } => {
                buf.resize(problem.m(), 0.0);
                lanes.col(j, buf)
            }
        }
    }

    /// C_ij, equal bit for bit to entry i of [`CostColumns::column`]`(j)`.
    pub(crate) fn entry(&self, i: usize, j: usize) -> f64 {
        match self {
            Self::Transposed(t) => t[[j, i]],
            Self::Matrix { entries, n } => entries[i * n + j],
            Self::Points { lanes, problem } => problem.cost(i, j) - lanes.offset(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::GroundCost;
    use ndarray::Array2;

    /// Entries read one by one equal those of whole columns, for every source and ground cost (the
    /// working sets rely on it), and the dense sources agree with each other.
    #[test]
    fn entries_equal_columns() {
        let (m, n, d) = (23, 17, 3);
        let x = Array2::from_shape_fn((m, d), |(i, k)| ((i * 7 + k * 3) % 11) as f64 * 0.37 - 1.1);
        let y = Array2::from_shape_fn((n, d), |(j, k)| ((j * 5 + k) % 13) as f64 * 0.29 - 0.7);
        let grounds = [
            GroundCost::SqEuclidean,
            GroundCost::Euclidean,
            GroundCost::Minkowski { p: 1.0, q: 1.0 },
            GroundCost::Minkowski { p: 1.5, q: 3.0 },
        ];
        let mut buf = Vec::new();
        for ground in grounds {
            let p = PointProblem::uniform(&x, &y, ground)
                .unwrap()
                .scaled(3.0)
                .unwrap();
            let dense = p.to_problem(u64::MAX).unwrap();
            for offset in [0.0, 0.25] {
                let points = CostColumns::points(&p, offset);
                for j in 0..n {
                    let col = points.column(j, &mut buf).to_vec();
                    for (i, &c) in col.iter().enumerate() {
                        assert_eq!(
                            c.to_bits(),
                            points.entry(i, j).to_bits(),
                            "{ground} {i} {j}"
                        );
                        let want = dense.cost()[[i, j]] - offset;
                        assert_eq!(c.to_bits(), want.to_bits(), "{ground} {i} {j}");
                    }
                }
            }
            let stored = CostColumns::transposed(dense.cost());
            let matrix = CostColumns::matrix(&dense);
            assert_eq!(
                (stored.m(), stored.n(), matrix.m(), matrix.n()),
                (m, n, m, n)
            );
            for j in 0..n {
                let want = matrix.column(j, &mut buf).to_vec();
                assert_eq!(stored.column(j, &mut buf), &want[..]);
                assert!((0..m).all(|i| stored.entry(i, j) == want[i]));
            }
        }
    }
}
