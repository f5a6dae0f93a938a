//! OT between two point clouds whose cost is computed on the fly: [`PointProblem`] holds the points, their
//! masses and a [`GroundCost`], never the m × n matrix, so memory is O((m + n) d) however many pairs there
//! are.
//!
//! Solvers read the cost lane by lane (a row c(x_i, ·) or a column c(·, y_j)), computing each entry from
//! the coordinates when it is needed ([`PointLanes`]). [`PointProblem::to_problem`] forms the dense
//! [`Problem`] for small clouds, with the same entries bit for bit.

use std::fmt;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, AsArray, Ix1, Ix2};
use rayon::prelude::*;

use crate::cost::{clouds, GroundCost};
use crate::error::{positive, Error, Result};
use crate::problem::{balanced, vector_f64, Problem, Scalar, DEFAULT_MASS_TOLERANCE};
use crate::sinkhorn::expsum::{Kernels, Real};
use crate::solution::{GpuWork, Method, RanOn, Termination};

/// Above this many pairs the cost's range is bounded from the clouds' bounding box instead of being
/// computed over every pair (one pass without exponentials, cheap next to one Sinkhorn iteration).
const EXACT_BOUNDS_UP_TO: usize = 10_000_000;

/// An OT problem between two point clouds: masses `a` on the m points x (m × d), masses `b` on the n points
/// y (n × d), and the cost C_ij = c(x_i, y_j) / `divisor` of a [`GroundCost`] c. No m × n matrix is stored.
///
/// The masses are validated and rebalanced as for [`Problem`]; the points must be finite, with d ≥ 1 and
/// the same d in both clouds. Entries are computed as c(x_i, y_j) · (1 / divisor) (exactly c when the
/// divisor is 1), in f64 here and in the solver's working precision inside the solvers.
///
/// ```
/// use sparse_ot::ndarray::array;
/// use sparse_ot::{GroundCost, PointProblem};
///
/// let x = array![[0.0, 0.0], [1.0, 0.0]];
/// let y = array![[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]];
/// let p = PointProblem::uniform(&x, &y, GroundCost::SqEuclidean)?;
/// assert_eq!((p.m(), p.n(), p.dim()), (2, 3, 2));
/// assert_eq!(p.cost(1, 2), 2.0);
/// # Ok::<(), sparse_ot::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PointProblem {
    a: Array1<f64>,
    b: Array1<f64>,
    x: Array2<f64>,
    y: Array2<f64>,
    ground: GroundCost,
    divisor: f64,
}

impl PointProblem {
    /// Validates and copies masses and points (f64 or f32 each, widened exactly).
    ///
    /// Errors: those of [`crate::pairwise`] for the points (no points, d = 0, different d, NaN/inf, bad
    /// Minkowski exponents); `a` of a length other than x's rows, `b` other than y's
    /// ([`Error::ShapeMismatch`]); then those of [`Problem::new`] for the masses.
    pub fn new<'a, 'p, W: Scalar, T: Scalar>(
        a: impl AsArray<'a, W, Ix1>,
        b: impl AsArray<'a, W, Ix1>,
        x: impl AsArray<'p, T, Ix2>,
        y: impl AsArray<'p, T, Ix2>,
        ground: GroundCost,
    ) -> Result<Self> {
        let (a, b) = (vector_f64(a.into()), vector_f64(b.into()));
        Self::with_masses(a, b, x.into(), y.into(), ground)
    }

    /// Uniform masses 1/m on x and 1/n on y (total 1).
    ///
    /// Errors: those of [`PointProblem::new`] for the points.
    pub fn uniform<'p, T: Scalar>(
        x: impl AsArray<'p, T, Ix2>,
        y: impl AsArray<'p, T, Ix2>,
        ground: GroundCost,
    ) -> Result<Self> {
        let (x, y) = (x.into(), y.into());
        let (m, n) = (x.nrows().max(1), y.nrows().max(1));
        let a = Array1::from_elem(x.nrows(), 1.0 / m as f64);
        let b = Array1::from_elem(y.nrows(), 1.0 / n as f64);
        Self::with_masses(a, b, x, y, ground)
    }

    fn with_masses<T: Scalar>(
        a: Array1<f64>,
        b: Array1<f64>,
        x: ArrayView2<'_, T>,
        y: ArrayView2<'_, T>,
        ground: GroundCost,
    ) -> Result<Self> {
        ground.validate()?;
        let (x, y) = clouds(x, y)?;
        for (what, expected, found) in [
            (
                "a (masses of x; its length must equal x's rows)",
                x.nrows(),
                a.len(),
            ),
            (
                "b (masses of y; its length must equal y's rows)",
                y.nrows(),
                b.len(),
            ),
        ] {
            if expected != found {
                return Err(Error::ShapeMismatch {
                    what,
                    expected,
                    found,
                });
            }
        }
        let (a, b) = balanced(a, b, DEFAULT_MASS_TOLERANCE)?;
        let p = Self {
            a,
            b,
            x,
            y,
            ground,
            divisor: 1.0,
        };
        p.check_cost_finite()?;
        Ok(p)
    }

    /// This problem with every cost divided by `divisor` (e.g. the largest cost, to bring it to [0, 1]).
    ///
    /// Errors: a divisor that is not finite and > 0 ([`Error::InvalidParameter`]), or one so small that a
    /// cost overflows.
    pub fn scaled(mut self, divisor: f64) -> Result<Self> {
        positive("divisor", divisor)?;
        self.divisor = divisor;
        self.check_cost_finite()?;
        Ok(self)
    }

    /// The transposed problem: y and b as the sources, x and a as the targets (C becomes Cᵀ). Row
    /// sparsity of this problem is column sparsity of that one.
    pub fn transposed(&self) -> PointProblem {
        PointProblem {
            a: self.b.clone(),
            b: self.a.clone(),
            x: self.y.clone(),
            y: self.x.clone(),
            ..*self
        }
    }

    /// The problem on the targets `cols` only (increasing), for removing zero-mass targets: the kept
    /// masses are those of this problem, whose total the removed ones did not change.
    pub(crate) fn with_columns(&self, cols: &[usize]) -> PointProblem {
        PointProblem {
            a: self.a.clone(),
            b: cols.iter().map(|&j| self.b[j]).collect(),
            x: self.x.clone(),
            y: self.y.select(ndarray::Axis(0), cols),
            ..*self
        }
    }

    /// Refuses clouds whose largest cost overflows f64 (the bound of [`PointProblem::cost_bounds`]).
    fn check_cost_finite(&self) -> Result<()> {
        let hi = self.box_bound();
        if hi.is_finite() {
            return Ok(());
        }
        Err(Error::CostOverflow {
            what: "the largest cost the points can give",
            value: hi,
        })
    }

    /// Number of source points (rows of the cost).
    pub fn m(&self) -> usize {
        self.x.nrows()
    }

    /// Number of target points (columns of the cost).
    pub fn n(&self) -> usize {
        self.y.nrows()
    }

    /// The dimension d of the points.
    pub fn dim(&self) -> usize {
        self.x.ncols()
    }

    /// Source masses (m), rebalanced as in [`Problem`].
    pub fn a(&self) -> ArrayView1<'_, f64> {
        self.a.view()
    }

    /// Target masses (n).
    pub fn b(&self) -> ArrayView1<'_, f64> {
        self.b.view()
    }

    /// Source points, m × d.
    pub fn x(&self) -> ArrayView2<'_, f64> {
        self.x.view()
    }

    /// Target points, n × d.
    pub fn y(&self) -> ArrayView2<'_, f64> {
        self.y.view()
    }

    /// The ground cost c.
    pub fn ground_cost(&self) -> GroundCost {
        self.ground
    }

    /// The divisor of every cost (1 unless [`PointProblem::scaled`]).
    pub fn divisor(&self) -> f64 {
        self.divisor
    }

    /// C_ij = c(x_i, y_j) · (1 / divisor), in f64. Panics if i ≥ m or j ≥ n (an index, not data).
    pub fn cost(&self, i: usize, j: usize) -> f64 {
        let c = self.ground.eval(
            self.x.row(i).as_slice().expect("row-major points"),
            self.y.row(j).as_slice().expect("row-major points"),
        );
        self.apply_divisor(c)
    }

    fn apply_divisor(&self, c: f64) -> f64 {
        if self.divisor == 1.0 {
            c
        } else {
            c * (1.0 / self.divisor)
        }
    }

    /// Total mass Σa.
    pub fn mass(&self) -> f64 {
        self.a.sum()
    }

    /// The dense problem with the same masses and C_ij = [`PointProblem::cost`]`(i, j)` (bit for bit), for
    /// clouds small enough to hold m × n f64.
    ///
    /// Errors: [`Error::TooLarge`] when m × n f64 would exceed `max_bytes`.
    pub fn to_problem(&self, max_bytes: u64) -> Result<Problem> {
        let (m, n) = (self.m(), self.n());
        dense_fits("the dense cost matrix of the point clouds", m, n, max_bytes)?;
        let cost = Array2::from_shape_fn((m, n), |(i, j)| self.cost(i, j));
        Problem::new(&self.a, &self.b, &cost)
    }

    /// (min, max) of the cost, or bounds on them: exact (every pair) up to 10⁷ pairs, above that 0 and the
    /// cost of the diagonal of the box that holds both clouds (an upper bound on every pair's cost). Used
    /// for the ε schedule, which only needs the scale.
    pub(crate) fn cost_bounds(&self) -> (f64, f64) {
        let (m, n) = (self.m(), self.n());
        if m.saturating_mul(n) > EXACT_BOUNDS_UP_TO {
            return (0.0, self.box_bound());
        }
        let lanes = PointLanes::<f64>::new(self, 0.0);
        let mut buf = vec![0.0; n];
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for i in 0..m {
            for &c in lanes.row(i, &mut buf).iter() {
                lo = lo.min(c);
                hi = hi.max(c);
            }
        }
        (lo, hi)
    }

    /// c of the diagonal of the bounding box of both clouds, divided: every pair's cost is at most this.
    fn box_bound(&self) -> f64 {
        let d = self.dim();
        let extent: Vec<f64> = (0..d)
            .map(|k| {
                let col = self.x.column(k).into_iter().chain(self.y.column(k));
                let (lo, hi) = col.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                });
                hi - lo
            })
            .collect();
        self.apply_divisor(self.ground.eval(&extent, &vec![0.0; d]))
    }

    /// The largest mass entry of a and b.
    pub(crate) fn largest_marginal(&self) -> f64 {
        crate::problem::largest_entry(self.a.view(), self.b.view())
    }
}

/// Refuses an m × n f64 matrix (`what`) of more than `max_bytes` ([`Error::TooLarge`]).
fn dense_fits(what: &'static str, m: usize, n: usize, max_bytes: u64) -> Result<()> {
    let bytes = 8u64.saturating_mul(m as u64).saturating_mul(n as u64);
    if bytes > max_bytes {
        return Err(Error::TooLarge {
            what,
            bytes,
            limit: max_bytes,
        });
    }
    Ok(())
}

/// Rows and columns of a [`PointProblem`]'s cost computed from the points in the working precision F, minus
/// `offset`: the cost source of the CPU kernels for points.
///
/// Coordinates are stored one dimension after another (x_k of every point contiguous), so a lane is a sum
/// over k of a vectorisable loop over the other cloud's points.
pub(crate) struct PointLanes<F> {
    /// d × m: xt[k·m + i] = x_ik.
    xt: Vec<F>,
    /// d × n.
    yt: Vec<F>,
    m: usize,
    n: usize,
    d: usize,
    ground: GroundCost,
    /// 1 / divisor, or None when the divisor is 1.
    scale: Option<F>,
    offset: F,
    /// Whether the CPU has AVX2 and FMA (the lanes are then compiled for them).
    #[cfg(target_arch = "x86_64")]
    avx2: bool,
}

impl<F: Real> PointLanes<F> {
    pub(crate) fn new(p: &PointProblem, offset: f64) -> Self {
        let transpose = |v: &Array2<f64>| -> Vec<F> {
            let (rows, d) = v.dim();
            (0..d * rows)
                .map(|e| F::from_f64(v[[e % rows, e / rows]]))
                .collect()
        };
        Self {
            xt: transpose(&p.x),
            yt: transpose(&p.y),
            m: p.m(),
            n: p.n(),
            d: p.dim(),
            ground: p.ground,
            scale: (p.divisor != 1.0).then(|| F::from_f64(1.0 / p.divisor)),
            offset: F::from_f64(offset),
            #[cfg(target_arch = "x86_64")]
            avx2: std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma"),
        }
    }

    pub(crate) fn offset(&self) -> f64 {
        self.offset.to_f64()
    }

    /// Row i: C_ij − offset for j < n, written into `buf` (at least n long) and returned.
    pub(crate) fn row<'b>(&self, i: usize, buf: &'b mut [F]) -> &'b [F] {
        self.row_tile(i, 0, self.n, buf)
    }

    /// C_ij − offset for j in start..start + len, written into `buf` (at least len long) and returned.
    pub(crate) fn row_tile<'b>(
        &self,
        i: usize,
        start: usize,
        len: usize,
        buf: &'b mut [F],
    ) -> &'b [F] {
        self.lane(
            &self.xt,
            self.m,
            i,
            &self.yt,
            self.n,
            start,
            &mut buf[..len],
        )
    }

    /// Column j: C_ij − offset for i < m.
    pub(crate) fn col<'b>(&self, j: usize, buf: &'b mut [F]) -> &'b [F] {
        self.lane(&self.yt, self.n, j, &self.xt, self.m, 0, &mut buf[..self.m])
    }

    /// c(p, q_l) − offset for the point p = `own`[·, at] and the points q_l, l in start..start + out.len(),
    /// of `other` (other_len of them), written to `out`. The ground cost is symmetric, so rows and columns
    /// share this. Compiled for AVX2 where the CPU has it.
    #[allow(clippy::too_many_arguments)]
    fn lane<'b>(
        &self,
        own: &[F],
        own_len: usize,
        at: usize,
        other: &[F],
        other_len: usize,
        start: usize,
        out: &'b mut [F],
    ) -> &'b [F] {
        // The point's coordinates, on the stack for the usual dimensions.
        const ON_STACK: usize = 16;
        let mut stack = [F::ZERO; ON_STACK];
        let heap: Vec<F>;
        let point: &[F] = if self.d <= ON_STACK {
            for (k, v) in stack.iter_mut().take(self.d).enumerate() {
                *v = own[k * own_len + at];
            }
            &stack[..self.d]
        } else {
            heap = (0..self.d).map(|k| own[k * own_len + at]).collect();
            &heap
        };
        let other = Strided {
            data: other,
            stride: other_len,
            start,
        };
        #[cfg(target_arch = "x86_64")]
        {
            if self.avx2 {
                // SAFETY: AVX2 and FMA were detected when these lanes were made.
                unsafe { self.lane_avx2(point, &other, out) };
                return out;
            }
        }
        self.lane_into(point, &other, out);
        out
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn lane_avx2(&self, point: &[F], other: &Strided<'_, F>, out: &mut [F]) {
        self.lane_into(point, other, out)
    }

    /// out_l = c(point, q_l) · scale − offset, dimension by dimension (vectorisable loops).
    #[inline(always)]
    fn lane_into(&self, point: &[F], other: &Strided<'_, F>, out: &mut [F]) {
        let len = out.len();
        let (pow, root) = match self.ground {
            GroundCost::SqEuclidean => (2.0, 1.0),
            GroundCost::Euclidean => (2.0, 0.5),
            GroundCost::Minkowski { p, q } => (p, q / p),
        };
        let term = |d: F| -> F {
            if pow == 2.0 {
                d * d
            } else if pow == 1.0 {
                d.abs()
            } else {
                d.abs().powf(pow)
            }
        };
        for (k, &pk) in point.iter().enumerate() {
            let qk = other.coordinate(k, len);
            if k == 0 {
                if pow == 2.0 {
                    for (o, &q) in out.iter_mut().zip(qk) {
                        let d = pk - q;
                        *o = F::ZERO + d * d;
                    }
                } else {
                    for (o, &q) in out.iter_mut().zip(qk) {
                        *o = F::ZERO + term(pk - q);
                    }
                }
            } else if pow == 2.0 {
                for (o, &q) in out.iter_mut().zip(qk) {
                    let d = pk - q;
                    *o = *o + d * d;
                }
            } else {
                for (o, &q) in out.iter_mut().zip(qk) {
                    *o = *o + term(pk - q);
                }
            }
        }
        if root == 0.5 {
            for o in out.iter_mut() {
                *o = o.sqrt();
            }
        } else if root != 1.0 {
            for o in out.iter_mut() {
                *o = o.powf(root);
            }
        }
        if let Some(s) = self.scale {
            for o in out.iter_mut() {
                *o = *o * s;
            }
        }
        if self.offset != F::ZERO {
            for o in out.iter_mut() {
                *o = *o - self.offset;
            }
        }
    }
}

/// A run of points of a cloud stored one dimension after another: coordinate k of point `start` + l is
/// `data`[k · stride + start + l].
struct Strided<'a, F> {
    data: &'a [F],
    stride: usize,
    start: usize,
}

impl<F> Strided<'_, F> {
    /// Coordinate k of the `len` points of the run.
    #[inline(always)]
    fn coordinate(&self, k: usize, len: usize) -> &[F] {
        let at = k * self.stride + self.start;
        &self.data[at..at + len]
    }
}

/// The result of a Sinkhorn solve on a [`PointProblem`]: the potentials and every reported number, without
/// an m × n plan (which at 10⁵ points would not fit anywhere; the sparse solvers' plans have at most k
/// nonzeros per column and come in their [`crate::Solution`]). Plan entries, the plan's marginals and the dense plan
/// (when it fits) are computed from the potentials on request.
///
/// For entropic OT the plan is T_ij = exp((α_i + β_j − C_ij)/ε).
#[derive(Debug, Clone)]
pub struct PointSolution {
    /// What was solved.
    pub method: Method,
    /// Where it was solved.
    pub device: RanOn,
    /// Source potential α (m).
    pub alpha: Array1<f64>,
    /// Target potential β (n).
    pub beta: Array1<f64>,
    /// Objective of the formulation solved at the returned potentials (maximised).
    pub value: f64,
    /// ⟨T, C⟩ of the plan, computed pair by pair in f64.
    pub transport_cost: f64,
    /// max_i |(T 1)_i − a_i|, in f64.
    pub marginal_error_rows: f64,
    /// max_j |(Tᵀ 1)_j − b_j|, in f64.
    pub marginal_error_cols: f64,
    /// Iterations performed (all stages together).
    pub iterations: usize,
    /// Why the solver stopped; `Converged` was verified on the returned potentials in f64.
    pub termination: Termination,
    /// The device work of the solve when a GPU took part.
    pub gpu_work: Option<GpuWork>,
}

impl PointSolution {
    /// Whether the solver met its criterion (verified).
    pub fn converged(&self) -> bool {
        self.termination.converged()
    }

    /// ε of the entropic plan this solution describes.
    fn epsilon(&self) -> f64 {
        match self.method {
            Method::Sinkhorn { epsilon } => epsilon,
            _ => unreachable!("point solutions are entropic"),
        }
    }

    /// T_ij = exp((α_i + β_j − C_ij)/ε) of problem `p` (the problem solved). Panics if i ≥ m or j ≥ n.
    pub fn plan_entry(&self, p: &PointProblem, i: usize, j: usize) -> f64 {
        ((self.alpha[i] + self.beta[j] - p.cost(i, j)) / self.epsilon()).exp()
    }

    /// The plan's row sums T1 and column sums Tᵀ1 (m and n entries), in f64 without forming the plan.
    ///
    /// Errors: [`Error::ShapeMismatch`] if `p` is not of this solution's shape.
    pub fn marginals(&self, p: &PointProblem) -> Result<(Array1<f64>, Array1<f64>)> {
        self.check_shape(p)?;
        let sums = plan_sums(
            p,
            self.alpha.as_slice().expect("contiguous"),
            self.beta.as_slice().expect("contiguous"),
            self.epsilon(),
        );
        Ok((Array1::from(sums.rows), Array1::from(sums.cols)))
    }

    /// The dense m × n plan, if m × n f64 take at most `max_bytes`.
    ///
    /// Errors: [`Error::TooLarge`] above the limit; [`Error::ShapeMismatch`] if `p` is not of this
    /// solution's shape.
    pub fn dense_plan(&self, p: &PointProblem, max_bytes: u64) -> Result<Array2<f64>> {
        self.check_shape(p)?;
        let (m, n) = (p.m(), p.n());
        dense_fits("the dense plan of the point clouds", m, n, max_bytes)?;
        Ok(Array2::from_shape_fn((m, n), |(i, j)| {
            self.plan_entry(p, i, j)
        }))
    }

    fn check_shape(&self, p: &PointProblem) -> Result<()> {
        for (what, expected, found) in [
            ("the problem's m (points of x)", self.alpha.len(), p.m()),
            ("the problem's n (points of y)", self.beta.len(), p.n()),
        ] {
            if expected != found {
                return Err(Error::ShapeMismatch {
                    what,
                    expected,
                    found,
                });
            }
        }
        Ok(())
    }
}

impl fmt::Display for PointSolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (m, n) = (self.alpha.len(), self.beta.len());
        writeln!(f, "{} on {m} x {n} points [{}]", self.method, self.device)?;
        writeln!(
            f,
            "  status          {} after {} iterations",
            self.termination, self.iterations
        )?;
        writeln!(f, "  objective       {:.10}", self.value)?;
        writeln!(f, "  transport cost  {:.10}", self.transport_cost)?;
        write!(
            f,
            "  marginal error  rows {:.2e}, columns {:.2e}",
            self.marginal_error_rows, self.marginal_error_cols
        )
    }
}

/// The entropic plan's row and column sums, mass and ⟨T, C⟩, from the potentials: one f64 pass over every
/// pair, by rows in fixed chunks (column sums merged in chunk order: deterministic).
pub(crate) struct PlanSums {
    pub(crate) rows: Vec<f64>,
    pub(crate) cols: Vec<f64>,
    pub(crate) mass: f64,
    pub(crate) transport_cost: f64,
}

pub(crate) fn plan_sums(p: &PointProblem, f: &[f64], g: &[f64], eps: f64) -> PlanSums {
    let (m, n) = (p.m(), p.n());
    let lanes = PointLanes::<f64>::new(p, 0.0);
    // Fixed chunks of rows (as many as keep the column partials near 2^22 entries, 4 to 64).
    let chunks = ((1usize << 22) / n.max(1)).clamp(4, 64).min(m);
    let per = m.div_ceil(chunks);
    let inv = 1.0 / eps;
    let kernels = Kernels::<f64>::detect();
    let parts: Vec<(Vec<f64>, Vec<f64>, f64)> = (0..m.div_ceil(per))
        .into_par_iter()
        .map(|c| {
            let mut cols = vec![0.0; n];
            let (mut buf, mut terms) = (vec![0.0; n], vec![0.0; n]);
            let mut rows = Vec::with_capacity(per);
            let mut tc = 0.0;
            let first = c * per;
            for (i, &fi) in f.iter().enumerate().take(m.min(first + per)).skip(first) {
                let row = lanes.row(i, &mut buf);
                // terms_j = T_ij · exp(−shift): T_ij = exp((g_j − C_ij)/ε + f_i/ε).
                let (lse, shift) = kernels.log_sum_exp_store(g, row, inv, fi * inv, &mut terms);
                let r = shift.exp();
                kernels.axpy(&mut cols, r, &terms);
                tc += r * terms
                    .iter()
                    .zip(row.iter())
                    .map(|(t, c)| t * c)
                    .sum::<f64>();
                rows.push(lse.exp());
            }
            (rows, cols, tc)
        })
        .collect();
    let mut sums = PlanSums {
        rows: Vec::with_capacity(m),
        cols: vec![0.0; n],
        mass: 0.0,
        transport_cost: 0.0,
    };
    for (rows, cols, tc) in parts {
        sums.rows.extend(rows);
        for (s, c) in sums.cols.iter_mut().zip(cols) {
            *s += c;
        }
        sums.transport_cost += tc;
    }
    sums.mass = sums.rows.iter().sum();
    sums
}
