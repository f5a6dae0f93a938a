//! Ground costs between points, and the pairwise cost matrix of two point clouds ([`pairwise`], the
//! equivalent of POT's `ot.dist`).
//!
//! A [`GroundCost`] says how far apart two points of R^d are; [`pairwise`] evaluates it on every pair of
//! two clouds and returns the dense m × n matrix a [`crate::Problem`] takes. The cost of one pair is kept
//! separate from the loop over pairs, so that a solver can later evaluate entries on the fly from the points
//! without forming the matrix; today every solver takes the dense matrix.

use std::fmt;

use ndarray::{Array2, ArrayView2, AsArray, Ix2};
use rayon::prelude::*;

use crate::error::{positive, Error, Position, Result};
use crate::problem::{matrix_f64, Scalar};

/// The cost c(x, y) of moving mass from a point x to a point y of R^d.
///
/// With the differences δ_k = x_k − y_k:
///
/// | variant | c(x, y) | POT's `ot.dist` metric |
/// |---|---|---|
/// | `SqEuclidean` (default) | Σ_k δ_k² | `"sqeuclidean"` (POT's default too) |
/// | `Euclidean` | (Σ_k δ_k²)^(1/2) | `"euclidean"` |
/// | `Minkowski { p, q }` | ‖δ‖_p^q = (Σ_k \|δ_k\|^p)^(q/p) | `"minkowski"` with `p` is `q = 1`; `"cityblock"` is `p = q = 1` |
///
/// `Minkowski { p: 2.0, q: 2.0 }` is `SqEuclidean` and `Minkowski { p: 2.0, q: 1.0 }` is `Euclidean` (the
/// same numbers, up to rounding of the powers). p and q must be finite and > 0 (checked by [`pairwise`]);
/// for p < 1, ‖·‖_p is not a norm, but the cost is still defined.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum GroundCost {
    /// The squared Euclidean distance ‖x − y‖₂², the usual cost of the 2-Wasserstein distance.
    #[default]
    SqEuclidean,
    /// The Euclidean distance ‖x − y‖₂ (the earth mover's distance on R^d).
    Euclidean,
    /// ‖x − y‖_p^q: the p-norm of the difference raised to the power q (the cost of the q-Wasserstein
    /// distance over the p-norm).
    Minkowski {
        /// The norm's exponent, finite and > 0.
        p: f64,
        /// The power the norm is raised to, finite and > 0.
        q: f64,
    },
}

impl GroundCost {
    /// Checks the parameters: p and q of `Minkowski` must be finite and > 0 ([`Error::InvalidParameter`]
    /// names which).
    pub fn validate(&self) -> Result<()> {
        if let GroundCost::Minkowski { p, q } = *self {
            positive("p", p)?;
            positive("q", q)?;
        }
        Ok(())
    }

    /// c(x, y) for two points of one dimension (checked by the caller), in f64. Every pair is computed by
    /// this same function, so a cost evaluated on the fly equals the matrix entry bit for bit.
    pub(crate) fn eval(&self, x: &[f64], y: &[f64]) -> f64 {
        debug_assert_eq!(x.len(), y.len());
        let diffs = x.iter().zip(y).map(|(a, b)| a - b);
        match *self {
            GroundCost::SqEuclidean => diffs.map(|d| d * d).sum(),
            GroundCost::Euclidean => diffs.map(|d| d * d).sum::<f64>().sqrt(),
            GroundCost::Minkowski { p, q } => {
                let sum: f64 = if p == 2.0 {
                    diffs.map(|d| d * d).sum()
                } else if p == 1.0 {
                    diffs.map(f64::abs).sum()
                } else {
                    diffs.map(|d| d.abs().powf(p)).sum()
                };
                let e = q / p;
                if e == 1.0 {
                    sum
                } else if e == 0.5 {
                    sum.sqrt()
                } else {
                    sum.powf(e)
                }
            }
        }
    }
}

impl fmt::Display for GroundCost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroundCost::SqEuclidean => f.write_str("squared Euclidean"),
            GroundCost::Euclidean => f.write_str("Euclidean"),
            GroundCost::Minkowski { p, q } => write!(f, "Minkowski |x - y|_{p}^{q}"),
        }
    }
}

/// The m × n matrix C_ij = `cost`(x_i, y_j) between the rows of `x` (m points) and the rows of `y` (n points)
/// of one dimension d: the equivalent of POT's `ot.dist(x, y, metric)` (whose default metric is squared
/// Euclidean, as [`GroundCost`]'s default).
///
/// The points may be f64 or f32 (widened to f64 exactly), given as views or by reference to owned arrays.
/// Every entry is computed in f64 from the coordinates' differences (not from ‖x‖² + ‖y‖² − 2 x·y), so it is
/// ≥ 0 and exactly 0 for equal points.
///
/// ```
/// use sparse_ot::ndarray::array;
/// use sparse_ot::{pairwise, GroundCost};
///
/// let x = array![[0.0, 0.0], [3.0, 4.0]];
/// let y = array![[0.0, 0.0]];
/// assert_eq!(pairwise(&x, &y, GroundCost::SqEuclidean)?, array![[0.0], [25.0]]);
/// assert_eq!(pairwise(&x, &y, GroundCost::Euclidean)?, array![[0.0], [5.0]]);
/// let l1 = GroundCost::Minkowski { p: 1.0, q: 1.0 };
/// assert_eq!(pairwise(&x.mapv(|v| v as f32), &y.mapv(|v| v as f32), l1)?, array![[0.0], [7.0]]);
/// # Ok::<(), sparse_ot::Error>(())
/// ```
///
/// Errors (typed, naming the input): no points in `x` or `y`, or points with no coordinates (d = 0)
/// ([`Error::Empty`]); `x` and `y` of different dimensions ([`Error::ShapeMismatch`]); NaN or ±inf in a
/// coordinate ([`Error::NonFinite`] with its position); p or q not finite and > 0
/// ([`Error::InvalidParameter`]); a cost that overflows f64 (coordinates near 1e154 and beyond, or a large
/// p) ([`Error::NonFinite`] naming the computed cost).
pub fn pairwise<'a, T: Scalar>(
    x: impl AsArray<'a, T, Ix2>,
    y: impl AsArray<'a, T, Ix2>,
    cost: GroundCost,
) -> Result<Array2<f64>> {
    cost.validate()?;
    let (x, y) = clouds(x.into(), y.into())?;
    let (m, n, d) = (x.nrows(), y.nrows(), x.ncols());
    let (xs, ys) = (
        x.as_slice().expect("standard layout"),
        y.as_slice().expect("standard layout"),
    );
    let mut out = vec![0.0; m * n];
    out.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        let xi = &xs[i * d..(i + 1) * d];
        for (j, c) in row.iter_mut().enumerate() {
            *c = cost.eval(xi, &ys[j * d..(j + 1) * d]);
        }
    });
    if let Some(at) = out.iter().position(|c| !c.is_finite()) {
        return Err(Error::NonFinite {
            what: "the cost computed from the points (it overflows f64: rescale the points)",
            position: Position::Matrix(at / n, at % n),
            value: out[at],
        });
    }
    Ok(Array2::from_shape_vec((m, n), out).expect("m * n entries"))
}

/// Two point clouds as f64, row-major, after checking them: at least one point each, d ≥ 1, the same d,
/// finite coordinates (errors as [`pairwise`]).
pub(crate) fn clouds<T: Scalar>(
    x: ArrayView2<'_, T>,
    y: ArrayView2<'_, T>,
) -> Result<(Array2<f64>, Array2<f64>)> {
    check_points("x", "x (its points have no coordinates: d = 0)", x)?;
    check_points("y", "y (its points have no coordinates: d = 0)", y)?;
    if y.ncols() != x.ncols() {
        return Err(Error::ShapeMismatch {
            what: "y columns (the dimension d of its points; must equal x's)",
            expected: x.ncols(),
            found: y.ncols(),
        });
    }
    Ok((finite_points("x", x)?, finite_points("y", y)?))
}

/// Checks that a cloud has at least one point and at least one coordinate.
fn check_points<T>(
    what: &'static str,
    no_coordinates: &'static str,
    v: ArrayView2<'_, T>,
) -> Result<()> {
    if v.nrows() == 0 {
        return Err(Error::Empty { what });
    }
    if v.ncols() == 0 {
        return Err(Error::Empty {
            what: no_coordinates,
        });
    }
    Ok(())
}

/// The points as f64, row-major, after checking that every coordinate is finite.
fn finite_points<T: Scalar>(what: &'static str, v: ArrayView2<'_, T>) -> Result<Array2<f64>> {
    let v = matrix_f64(v);
    if let Some(((i, k), &value)) = v.indexed_iter().find(|(_, c)| !c.is_finite()) {
        return Err(Error::NonFinite {
            what,
            position: Position::Matrix(i, k),
            value,
        });
    }
    Ok(v)
}
