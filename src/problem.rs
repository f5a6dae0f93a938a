//! The OT problem: marginals and cost, validated once.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, AsArray, Ix1, Ix2};

use crate::error::{Error, Position, Result};
use crate::solution::Solution;

mod sealed {
    /// Keeps [`super::Scalar`] to the types this crate implements it for.
    pub trait Sealed {}
    impl Sealed for f64 {}
    impl Sealed for f32 {}
}

/// The element types the crate accepts as input: `f64`, and `f32`, which is widened to f64 exactly (every
/// f32 is an f64). Everything is stored and solved in f64 (on a GPU, in f32 again).
///
/// Sealed: it is implemented for `f64` and `f32` only.
#[diagnostic::on_unimplemented(
    message = "sparse-ot takes f64 or f32 arrays, not `{Self}`",
    label = "the elements of this array are `{Self}`",
    note = "convert the array first, e.g. `x.mapv(|v| v as f64)`"
)]
pub trait Scalar: Copy + Send + Sync + sealed::Sealed + 'static {
    /// The value as an f64 (exact for f32 and f64).
    fn to_f64(self) -> f64;
}

impl Scalar for f64 {
    fn to_f64(self) -> f64 {
        self
    }
}

impl Scalar for f32 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

/// A 1-D input as a new f64 array (f32 widened exactly).
pub(crate) fn vector_f64<T: Scalar>(v: ArrayView1<'_, T>) -> Array1<f64> {
    v.mapv(T::to_f64)
}

/// A 2-D input as a new f64 array in standard (row-major) layout (f32 widened exactly).
pub(crate) fn matrix_f64<T: Scalar>(v: ArrayView2<'_, T>) -> Array2<f64> {
    if v.is_standard_layout() {
        v.mapv(T::to_f64)
    } else {
        Array2::from_shape_fn(v.dim(), |ij| v[ij].to_f64())
    }
}

/// Relative tolerance on |Σa − Σb| / max(Σa, Σb) used by [`Problem::new`].
///
/// Loose enough for marginals that were produced in f32 (about 1e-7 relative rounding per entry) and tight
/// enough that a real mismatch, which makes the problem infeasible, is caught.
pub const DEFAULT_MASS_TOLERANCE: f64 = 1e-6;

/// A cost whose minimum exceeds this many times its range (in absolute value) is solved shifted to start at
/// 0 (see [`Problem`]); about one decimal digit of the potentials' precision is the most the shift can cost
/// below it.
pub(crate) const SHIFT_ABOVE: f64 = 16.0;

/// How far above the bulk of the cost (its 90th percentile above the minimum) an entry counts as forbidden for
/// Sinkhorn's ε schedule and cost-scaled tolerances ([`Problem::bulk_bounds`]).
pub(crate) const FORBIDDEN_ABOVE: f64 = 1e6;

/// Relative mismatch |Σa − Σb| / max(Σa, Σb) below which `b` is not rescaled: about the rounding of the two
/// sums, far below any reachable marginal tolerance.
pub const REBALANCE_BELOW: f64 = 1e-13;

/// A validated optimal-transport problem: source marginal `a` (m), target marginal `b` (n), cost (m × n).
///
/// Rows are sources, columns are targets. Masses need not sum to 1, but both marginals must carry the same
/// total. The data are stored in f64, row-major.
///
/// **Rebalancing.** Totals that differ within the mass tolerance (e.g. marginals rounded to f32) are made
/// equal in f64 when the problem is built: `b` is rescaled by Σa / Σb, so that solvers can meet tolerances
/// far below the mismatch. [`Problem::b`] returns the rescaled marginal, and marginal errors are measured
/// against it. Mismatches below [`REBALANCE_BELOW`] (rounding of the sums themselves) are left as they are.
///
/// **Shifted costs.** A cost far from 0 compared with its range (C + 1e8) is solved as C − min C, which
/// has the same plans, and the potentials and values are reported for C. Batches on a GPU are solved as
/// given.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    a: Array1<f64>,
    b: Array1<f64>,
    cost: Array2<f64>,
}

impl Problem {
    /// Validates and copies the inputs, with the mass tolerance [`DEFAULT_MASS_TOLERANCE`].
    ///
    /// Takes whatever ndarray's [`AsArray`] covers, as f64 or f32 (all three of one element type; f32 is
    /// widened to f64 exactly): views (`a.view()`), references to owned arrays (`&a`), slices and vectors by
    /// reference for the marginals (`&v`, `&[0.5, 0.5]`).
    ///
    /// ```
    /// use sparse_ot::ndarray::array;
    /// use sparse_ot::Problem;
    ///
    /// let (a, b) = (array![0.5, 0.5], array![1.0]);
    /// let cost = array![[0.0], [1.0]];
    /// let p = Problem::new(&a, &b, &cost)?; // or a.view(), b.view(), cost.view()
    /// let q = Problem::new(&a.mapv(|x| x as f32), &b.mapv(|x| x as f32), &cost.mapv(|x| x as f32))?;
    /// assert_eq!(p, q); // f32 halves and zeros are exact in f64
    /// # Ok::<(), sparse_ot::Error>(())
    /// ```
    ///
    /// Errors: empty input, shape mismatch, NaN/inf anywhere, negative mass, zero total mass, or
    /// total masses that differ by more than the tolerance.
    pub fn new<'a, T: Scalar>(
        a: impl AsArray<'a, T, Ix1>,
        b: impl AsArray<'a, T, Ix1>,
        cost: impl AsArray<'a, T, Ix2>,
    ) -> Result<Self> {
        Self::with_mass_tolerance(a, b, cost, DEFAULT_MASS_TOLERANCE)
    }

    /// [`Problem::new`] for f32 inputs, which are widened to f64 exactly ([`Problem::new`] takes f32 too;
    /// this name fixes the element type, e.g. for `Array2::zeros` arguments).
    pub fn from_f32<'a>(
        a: impl AsArray<'a, f32, Ix1>,
        b: impl AsArray<'a, f32, Ix1>,
        cost: impl AsArray<'a, f32, Ix2>,
    ) -> Result<Self> {
        Self::new(a, b, cost)
    }

    /// Like [`Problem::new`] with a caller-chosen relative tolerance on the difference of total masses.
    pub fn with_mass_tolerance<'a, T: Scalar>(
        a: impl AsArray<'a, T, Ix1>,
        b: impl AsArray<'a, T, Ix1>,
        cost: impl AsArray<'a, T, Ix2>,
        mass_tolerance: f64,
    ) -> Result<Self> {
        let (a, b, cost) = (a.into(), b.into(), cost.into());
        crate::error::nonnegative("mass_tolerance", mass_tolerance)?;
        validate_shapes(a.len(), b.len(), cost.dim())?;
        Self::validated(
            vector_f64(a),
            vector_f64(b),
            matrix_f64(cost),
            mass_tolerance,
        )
    }

    /// [`Problem::new`] taking ownership of f64 arrays: a row-major cost is kept as it is, not copied, so a
    /// large input is held once (a cost in another layout is copied into row-major order).
    ///
    /// Errors: those of [`Problem::new`].
    pub fn from_owned(a: Array1<f64>, b: Array1<f64>, cost: Array2<f64>) -> Result<Self> {
        validate_shapes(a.len(), b.len(), cost.dim())?;
        let cost = if cost.is_standard_layout() {
            cost
        } else {
            matrix_f64(cost.view())
        };
        Self::validated(a, b, cost, DEFAULT_MASS_TOLERANCE)
    }

    /// Uniform marginals a_i = 1/m and b_j = 1/n for an m × n cost (what POT uses when `a` and `b` are
    /// empty): every source and every target carries the same mass, and the total is 1.
    ///
    /// ```
    /// use sparse_ot::ndarray::array;
    /// use sparse_ot::Problem;
    ///
    /// let p = Problem::uniform(&array![[0.0, 1.0, 2.0], [1.0, 0.0, 1.0]])?;
    /// assert_eq!((p.a()[0], p.b()[0]), (0.5, 1.0 / 3.0));
    /// # Ok::<(), sparse_ot::Error>(())
    /// ```
    ///
    /// Errors: a cost without rows or columns ([`Error::Empty`]), NaN/inf in it.
    pub fn uniform<'a, T: Scalar>(cost: impl AsArray<'a, T, Ix2>) -> Result<Self> {
        let cost = cost.into();
        let (m, n) = cost.dim();
        if m == 0 {
            return Err(Error::Empty {
                what: "cost (no rows: the sources)",
            });
        }
        if n == 0 {
            return Err(Error::Empty {
                what: "cost (no columns: the targets)",
            });
        }
        Self::validated(
            uniform_marginal(m),
            uniform_marginal(n),
            matrix_f64(cost),
            DEFAULT_MASS_TOLERANCE,
        )
    }

    /// The problem between two point clouds, x (m × d) and y (n × d), with uniform marginals and the cost
    /// C_ij = `cost`(x_i, y_j) ([`crate::pairwise`]). POT: `ot.dist(x, y)` then `a = b = []`.
    ///
    /// ```
    /// use sparse_ot::ndarray::array;
    /// use sparse_ot::{GroundCost, Problem};
    ///
    /// let x = array![[0.0, 0.0], [1.0, 0.0]];
    /// let y = array![[0.0, 1.0]];
    /// let p = Problem::from_points(&x, &y, GroundCost::SqEuclidean)?;
    /// assert_eq!(p.cost()[[1, 0]], 2.0);
    /// # Ok::<(), sparse_ot::Error>(())
    /// ```
    ///
    /// Errors: those of [`crate::pairwise`].
    pub fn from_points<'a, T: Scalar>(
        x: impl AsArray<'a, T, Ix2>,
        y: impl AsArray<'a, T, Ix2>,
        cost: crate::cost::GroundCost,
    ) -> Result<Self> {
        Self::uniform(&crate::cost::pairwise(x, y, cost)?)
    }

    /// The problem between two weighted point clouds: masses `a` (m) on the points x (m × d), masses `b` (n)
    /// on y (n × d), cost C_ij = `cost`(x_i, y_j) ([`crate::pairwise`]); validated as [`Problem::new`].
    ///
    /// Errors: those of [`crate::pairwise`], then those of [`Problem::new`].
    pub fn from_weighted_points<'a, 'p, W: Scalar, T: Scalar>(
        a: impl AsArray<'a, W, Ix1>,
        b: impl AsArray<'a, W, Ix1>,
        x: impl AsArray<'p, T, Ix2>,
        y: impl AsArray<'p, T, Ix2>,
        cost: crate::cost::GroundCost,
    ) -> Result<Self> {
        let (a, b, x, y) = (a.into(), b.into(), x.into(), y.into());
        for (what, len, points, rows) in [
            (
                "a",
                a.len(),
                "x rows (points; must equal len(a))",
                x.nrows(),
            ),
            (
                "b",
                b.len(),
                "y rows (points; must equal len(b))",
                y.nrows(),
            ),
        ] {
            if len == 0 {
                return Err(Error::Empty { what });
            }
            if rows != len {
                return Err(Error::ShapeMismatch {
                    what: points,
                    expected: len,
                    found: rows,
                });
            }
        }
        let cost = crate::cost::pairwise(x, y, cost)?;
        Self::validated(vector_f64(a), vector_f64(b), cost, DEFAULT_MASS_TOLERANCE)
    }

    /// Checks the values of inputs whose shapes agree and stores them (rebalancing b, see [`Problem`]).
    fn validated(
        a: Array1<f64>,
        b: Array1<f64>,
        cost: Array2<f64>,
        mass_tolerance: f64,
    ) -> Result<Self> {
        check_vector("a", a.view())?;
        check_vector("b", b.view())?;
        if let Some(((i, j), &v)) = cost.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: "cost",
                position: Position::Matrix(i, j),
                value: v,
            });
        }
        let (a, b) = balanced(a, b, mass_tolerance)?;
        Ok(Self { a, b, cost })
    }

    /// Number of sources (rows).
    pub fn m(&self) -> usize {
        self.a.len()
    }

    /// Number of targets (columns).
    pub fn n(&self) -> usize {
        self.b.len()
    }

    /// Source marginal (length m).
    pub fn a(&self) -> ArrayView1<'_, f64> {
        self.a.view()
    }

    /// Target marginal (length n).
    pub fn b(&self) -> ArrayView1<'_, f64> {
        self.b.view()
    }

    /// Cost matrix (m × n), row-major.
    pub fn cost(&self) -> ArrayView2<'_, f64> {
        self.cost.view()
    }

    /// The transposed problem (Cᵀ, b, a): row sparsity of this problem is column sparsity of that one.
    pub fn transposed(&self) -> Problem {
        Problem {
            a: self.b.clone(),
            b: self.a.clone(),
            cost: self.cost.t().as_standard_layout().into_owned(),
        }
    }

    /// Source marginal as a slice.
    /// The problem with its cost shifted to start at 0, and the shift, when the cost's minimum dwarfs its
    /// range (|min C| > [`SHIFT_ABOVE`] × (max C − min C) > 0, e.g. C + 1e8): there the potentials carry
    /// the shift and every exponent or score α_i + β_j − C_ij cancels digits. The shift changes no plan (a plan's
    /// cost changes by the shift times its mass), so solvers solve the shifted problem and
    /// [`Problem::unshift`] restores the potentials and values.
    pub(crate) fn conditioned(&self) -> Option<(Problem, f64)> {
        let lo = conditioning_shift(self.cost_bounds())?;
        let shifted = Problem {
            a: self.a.clone(),
            b: self.b.clone(),
            cost: self.cost.mapv(|c| c - lo),
        };
        Some((shifted, lo))
    }

    /// A solution of [`Problem::conditioned`]'s shifted problem as a solution of this one: α gains the
    /// shift (so α_i + β_j − C_ij is unchanged), the objective gains shift × Σa, and the transport cost is
    /// measured again on this problem's cost.
    pub(crate) fn unshift(&self, sol: Solution, shift: f64) -> Solution {
        unshift(sol, shift, self.mass(), |i, j| self.cost[[i, j]])
    }

    /// Solves this problem with `solve`, on the [conditioned](Problem::conditioned) problem when it has one
    /// (`solve` gets the shift, to move a warm start), and holds the result to its promise.
    pub(crate) fn solve_conditioned(
        &self,
        solve: impl FnOnce(&Problem, f64) -> Result<Solution>,
    ) -> Result<Solution> {
        let sol = match self.conditioned() {
            Some((shifted, shift)) => self.unshift(solve(&shifted, shift)?, shift),
            None => solve(self, 0.0)?,
        };
        self.check(sol)
    }

    /// The problem without the rows whose a_i is zero (`rows`) and the columns whose b_j is zero (`cols`),
    /// with the indices kept on each side; None when nothing would be removed. Zero entries carry no mass,
    /// so the plan's rows and columns there are zero and the rest of the plan is the reduced problem's.
    pub(crate) fn without_zero_mass(&self, rows: bool, cols: bool) -> Option<Reduced> {
        let keep = |v: &Array1<f64>, on: bool| -> Vec<usize> {
            (0..v.len()).filter(|&i| !on || v[i] > 0.0).collect()
        };
        let (kr, kc) = (keep(&self.a, rows), keep(&self.b, cols));
        if kr.len() == self.m() && kc.len() == self.n() {
            return None;
        }
        let problem = Problem {
            a: kr.iter().map(|&i| self.a[i]).collect(),
            b: kc.iter().map(|&j| self.b[j]).collect(),
            cost: Array2::from_shape_fn((kr.len(), kc.len()), |(i, j)| self.cost[[kr[i], kc[j]]]),
        };
        Some(Reduced {
            problem,
            rows: kr,
            cols: kc,
        })
    }

    /// Holds a solution of this problem to its status's promise ([`Solution::checked`]): the rounding
    /// slack is that of a sum over the longer side of the largest marginal entry.
    pub(crate) fn check(&self, sol: Solution) -> Result<Solution> {
        sol.checked(self.largest_marginal(), self.m().max(self.n()))
    }

    /// (min C, max C).
    /// (min, max) of the cost without its forbidden entries: those above min C + [`FORBIDDEN_ABOVE`] × the
    /// 90th percentile of C − min C over a fixed sample (up to 4096 evenly spaced entries). A cost that far
    /// above the bulk of the matrix (a "big-M" that forbids a pair) keeps no mass in any plan regularised at
    /// the bulk's scale; it would only stretch an ε schedule, or a tolerance scaled by the cost, to its own
    /// size. Equal to [`Problem::cost_bounds`] when no entry is that far out.
    pub(crate) fn bulk_bounds(&self) -> (f64, f64) {
        let (lo, hi) = self.cost_bounds();
        let cs = self.cost_slice();
        let step = cs.len().div_ceil(4096).max(1);
        let mut sample: Vec<f64> = cs.iter().step_by(step).map(|&c| c - lo).collect();
        let at = (sample.len() * 9 / 10).min(sample.len() - 1);
        let (_, &mut q, _) = sample.select_nth_unstable_by(at, f64::total_cmp);
        if q.is_nan() || q <= 0.0 || hi - lo <= FORBIDDEN_ABOVE * q {
            return (lo, hi);
        }
        let limit = lo + FORBIDDEN_ABOVE * q;
        let bulk_hi = cs
            .iter()
            .filter(|&&c| c <= limit)
            .fold(lo, |m, &c| m.max(c));
        (lo, bulk_hi)
    }

    pub(crate) fn cost_bounds(&self) -> (f64, f64) {
        self.cost
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &c| {
                (lo.min(c), hi.max(c))
            })
    }

    /// The largest entry of a and b: the scale of the marginal errors.
    pub(crate) fn largest_marginal(&self) -> f64 {
        largest_entry(self.a.view(), self.b.view())
    }

    pub(crate) fn a_slice(&self) -> &[f64] {
        self.a.as_slice().expect("owned standard layout")
    }

    /// Target marginal as a slice.
    pub(crate) fn b_slice(&self) -> &[f64] {
        self.b.as_slice().expect("owned standard layout")
    }

    /// Cost as a row-major slice (m·n).
    pub(crate) fn cost_slice(&self) -> &[f64] {
        self.cost.as_slice().expect("owned standard layout")
    }

    /// Total mass Σa (= Σb within the tolerance).
    pub fn mass(&self) -> f64 {
        self.a.sum()
    }

    /// Fails with [`Error::ZeroMass`] if `b` has a zero entry (for solvers that divide by b_j).
    pub(crate) fn require_positive_b(
        &self,
        solver: &'static str,
        reason: &'static str,
    ) -> Result<()> {
        require_positive("b", self.b.view(), solver, reason)
    }

    /// Fails with [`Error::ZeroMass`] if `a` has a zero entry.
    pub(crate) fn require_positive_a(
        &self,
        solver: &'static str,
        reason: &'static str,
    ) -> Result<()> {
        require_positive("a", self.a.view(), solver, reason)
    }
}

/// A problem with its zero-mass rows and columns removed ([`Problem::without_zero_mass`]).
pub(crate) struct Reduced {
    /// The problem on the kept rows and columns.
    pub problem: Problem,
    /// The kept rows, increasing.
    pub rows: Vec<usize>,
    /// The kept columns, increasing.
    pub cols: Vec<usize>,
}

impl Reduced {
    /// Potentials of the reduced problem spread over the full problem ([`spread_potentials`]).
    pub fn spread(
        &self,
        full: &Problem,
        alpha: &Array1<f64>,
        beta: &Array1<f64>,
        margin: f64,
    ) -> (Array1<f64>, Array1<f64>) {
        let kept = (self.rows.as_slice(), self.cols.as_slice());
        let cost = |i: usize, j: usize| full.cost[[i, j]];
        spread_potentials(kept, (full.m(), full.n()), cost, (alpha, beta), margin)
    }
}

/// Potentials of a problem reduced to the rows and columns `kept`, spread over the full (m, n) problem of
/// cost `cost`: a removed row gets min_j (C_ij − β_j) − `margin`, a removed column min_i (C_ij − α_i) −
/// `margin` (over the kept rows), so that every score α_i + β_j − C_ij of a removed line is at most
/// −`margin`: no mass there, whatever the solver's plan rule.
pub(crate) fn spread_potentials(
    (rows, cols): (&[usize], &[usize]),
    (m, n): (usize, usize),
    cost: impl Fn(usize, usize) -> f64,
    (alpha, beta): (&Array1<f64>, &Array1<f64>),
    margin: f64,
) -> (Array1<f64>, Array1<f64>) {
    let mut fa = Array1::from_elem(m, f64::NAN);
    let mut fb = Array1::from_elem(n, f64::NAN);
    for (r, &i) in rows.iter().enumerate() {
        fa[i] = alpha[r];
    }
    for (c, &j) in cols.iter().enumerate() {
        fb[j] = beta[c];
    }
    let kept_min = |vals: &mut dyn Iterator<Item = f64>| vals.fold(f64::INFINITY, f64::min);
    for j in 0..n {
        if fb[j].is_nan() {
            let low = kept_min(&mut rows.iter().map(|&i| cost(i, j) - fa[i]));
            fb[j] = low - margin;
        }
    }
    for i in 0..m {
        if fa[i].is_nan() {
            let low = kept_min(&mut (0..n).map(|j| cost(i, j) - fb[j]));
            fa[i] = low - margin;
        }
    }
    (fa, fb)
}

/// The shift that conditions a cost with bounds (lo, hi): lo when |lo| > [`SHIFT_ABOVE`] × (hi − lo) > 0
/// (the minimum dwarfs the range), else none ([`Problem::conditioned`]).
pub(crate) fn conditioning_shift((lo, hi): (f64, f64)) -> Option<f64> {
    (hi > lo && lo.abs() > SHIFT_ABOVE * (hi - lo)).then_some(lo)
}

/// A solution of a problem whose cost was shifted by −`shift` as a solution of the unshifted problem of
/// total mass `mass` and cost `cost`: α gains the shift (so α_i + β_j − C_ij is unchanged), the objective
/// gains shift × mass, and the transport cost is measured again on `cost`.
pub(crate) fn unshift(
    mut sol: Solution,
    shift: f64,
    mass: f64,
    cost: impl Fn(usize, usize) -> f64,
) -> Solution {
    sol.alpha.mapv_inplace(|x| x + shift);
    sol.value += shift * mass;
    sol.transport_cost = sol.plan.triplets().map(|(i, j, v)| v * cost(i, j)).sum();
    sol
}

/// The uniform marginal of `len` entries, each 1/len.
fn uniform_marginal(len: usize) -> Array1<f64> {
    Array1::from_elem(len, 1.0 / len as f64)
}

/// The largest entry of two marginals.
pub(crate) fn largest_entry(a: ArrayView1<f64>, b: ArrayView1<f64>) -> f64 {
    a.iter().chain(b.iter()).fold(0.0f64, |m, &x| m.max(x))
}

/// Checks that `a` (m), `b` (n) and a cost of shape `cost` agree and are nonempty.
pub(crate) fn validate_shapes(m: usize, n: usize, cost: (usize, usize)) -> Result<()> {
    if m == 0 {
        return Err(Error::Empty { what: "a" });
    }
    if n == 0 {
        return Err(Error::Empty { what: "b" });
    }
    if cost.0 != m {
        return Err(Error::ShapeMismatch {
            what: "cost rows (must equal len(a))",
            expected: m,
            found: cost.0,
        });
    }
    if cost.1 != n {
        return Err(Error::ShapeMismatch {
            what: "cost columns (must equal len(b))",
            expected: n,
            found: cost.1,
        });
    }
    Ok(())
}

/// Checks that a vector is finite.
pub(crate) fn check_vector_finite(what: &'static str, v: ArrayView1<f64>) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(Error::NonFinite {
            what,
            position: Position::Vector(i),
            value: v[i],
        }),
        None => Ok(()),
    }
}

/// Checks that a marginal is finite and nonnegative.
pub(crate) fn check_vector(what: &'static str, v: ArrayView1<f64>) -> Result<()> {
    for (i, &x) in v.iter().enumerate() {
        if !x.is_finite() {
            return Err(Error::NonFinite {
                what,
                position: Position::Vector(i),
                value: x,
            });
        }
        if x < 0.0 {
            return Err(Error::NegativeMass {
                what,
                position: Position::Vector(i),
                value: x,
            });
        }
    }
    Ok(())
}

/// Marginals checked (finite, nonnegative, same total within `tolerance`) and rebalanced: b rescaled by
/// Σa / Σb unless they agree to [`REBALANCE_BELOW`] (see [`Problem`]).
pub(crate) fn balanced(
    a: Array1<f64>,
    b: Array1<f64>,
    tolerance: f64,
) -> Result<(Array1<f64>, Array1<f64>)> {
    check_vector("a", a.view())?;
    check_vector("b", b.view())?;
    let (sum_a, sum_b) = (a.sum(), b.sum());
    check_mass(sum_a, sum_b, tolerance)?;
    let mut b = b;
    if (sum_a - sum_b).abs() > REBALANCE_BELOW * sum_a.max(sum_b) {
        b *= sum_a / sum_b;
    }
    Ok((a, b))
}

/// Checks that two total masses are positive and agree within `tolerance` (relative).
pub(crate) fn check_mass(sum_a: f64, sum_b: f64, tolerance: f64) -> Result<()> {
    let scale = sum_a.max(sum_b);
    if scale <= 0.0 {
        return Err(Error::ZeroTotalMass);
    }
    let relative = (sum_a - sum_b).abs() / scale;
    if relative > tolerance {
        return Err(Error::MassMismatch {
            sum_a,
            sum_b,
            relative,
            tolerance,
        });
    }
    Ok(())
}

pub(crate) fn require_positive(
    what: &'static str,
    v: ArrayView1<f64>,
    solver: &'static str,
    reason: &'static str,
) -> Result<()> {
    match v.iter().position(|&x| x == 0.0) {
        Some(i) => Err(Error::ZeroMass {
            what,
            position: Position::Vector(i),
            solver,
            reason,
        }),
        None => Ok(()),
    }
}

/// The deterministic 8 × 6 problem of docs/MATH.md §8, used in tests, examples and docs.
///
/// x_i = i/7, y_j = (j/5)², C_ij = (x_i − y_j)², a_i = (i+1)/36, b_j = (6−j)/21.
pub fn golden_problem() -> Problem {
    let a = Array1::from_shape_fn(8, |i| (i as f64 + 1.0) / 36.0);
    let b = Array1::from_shape_fn(6, |j| (6.0 - j as f64) / 21.0);
    let cost = Array2::from_shape_fn((8, 6), |(i, j)| {
        let x = i as f64 / 7.0;
        let y = (j as f64 / 5.0).powi(2);
        (x - y) * (x - y)
    });
    Problem::new(a.view(), b.view(), cost.view()).expect("the golden problem is valid")
}
