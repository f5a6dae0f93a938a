//! Batches: B problems of one shape (m × n) stored in contiguous arrays, solved in one call.
//!
//! A [`Batch`] holds the costs as one B × m × n array and the marginals as B × m and B × n arrays (shared
//! marginals are broadcast when the batch is built). This is the layout a device backend uploads in one copy;
//! the CPU backend solves the problems in parallel with rayon, each with the same code path as a single
//! [`Problem`], so a batched result equals the one-by-one result bit for bit.
//!
//! Only the *shapes* are checked when a batch is built. The *values* (NaN/inf, negative or unequal masses)
//! are checked per problem when solving: every problem gets its own `Result`, and one bad problem does not
//! spoil the others' answers.
//!
//! ```
//! use ndarray::{Array1, Array3};
//! use sparse_ot::{Batch, SparseOt};
//!
//! let (b, m, n) = (3, 4, 5);
//! let cost = Array3::from_shape_fn((b, m, n), |(p, i, j)| ((i + p) as f64 - j as f64).powi(2));
//! let batch = Batch::shared_marginals(
//!     Array1::from_elem(m, 1.0 / m as f64).view(),
//!     Array1::from_elem(n, 1.0 / n as f64).view(),
//!     cost.view(),
//! )?;
//! let solutions = SparseOt::new(2, 0.5)?.solve_batch(&batch);
//! assert_eq!(solutions.len(), 3);
//! for sol in &solutions {
//!     assert!(sol.as_ref().is_ok());
//! }
//! # Ok::<(), sparse_ot::Error>(())
//! ```

#[cfg(feature = "gpu")]
use std::borrow::Cow;

use ndarray::{Array2, Array3, ArrayView1, ArrayView2, ArrayView3, Axis};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::monitor::{Monitor, Tally};
#[cfg(feature = "gpu")]
use crate::problem::largest_entry;
use crate::problem::{validate_shapes, Problem, DEFAULT_MASS_TOLERANCE};
use crate::solution::Solution;

/// B optimal-transport problems of one shape: costs B × m × n, marginals B × m and B × n, all f64,
/// row-major and contiguous.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    a: Array2<f64>,
    b: Array2<f64>,
    cost: Array3<f64>,
    mass_tolerance: f64,
}

impl Batch {
    /// A batch with one pair of marginals per problem: `a` is B × m, `b` is B × n, `cost` is B × m × n.
    ///
    /// Errors: an empty batch or empty problems, shapes that disagree. Values are checked per problem when
    /// solving (see the module docs).
    pub fn new(a: ArrayView2<f64>, b: ArrayView2<f64>, cost: ArrayView3<f64>) -> Result<Self> {
        let (nb, m, n) = cost.dim();
        if nb == 0 {
            return Err(Error::Empty { what: "batch" });
        }
        validate_shapes(m, n, (m, n))?;
        let checks = [
            ("rows of a (must equal the batch size)", nb, a.nrows()),
            ("rows of b (must equal the batch size)", nb, b.nrows()),
            ("columns of a (must equal the cost's rows m)", m, a.ncols()),
            (
                "columns of b (must equal the cost's columns n)",
                n,
                b.ncols(),
            ),
        ];
        for (what, expected, found) in checks {
            if found != expected {
                return Err(Error::ShapeMismatch {
                    what,
                    expected,
                    found,
                });
            }
        }
        Ok(Self {
            a: a.as_standard_layout().into_owned(),
            b: b.as_standard_layout().into_owned(),
            cost: cost.as_standard_layout().into_owned(),
            mass_tolerance: DEFAULT_MASS_TOLERANCE,
        })
    }

    /// A batch whose problems share the marginals `a` (m) and `b` (n); `cost` is B × m × n.
    ///
    /// Errors: as [`Batch::new`].
    pub fn shared_marginals(
        a: ArrayView1<f64>,
        b: ArrayView1<f64>,
        cost: ArrayView3<f64>,
    ) -> Result<Self> {
        let nb = cost.dim().0;
        let a2 = a.broadcast((nb, a.len())).map(|v| v.to_owned());
        let b2 = b.broadcast((nb, b.len())).map(|v| v.to_owned());
        match (a2, b2) {
            (Some(a2), Some(b2)) => Self::new(a2.view(), b2.view(), cost),
            // Broadcasting a 1-D array to (nb, len) cannot fail; keep a typed error rather than a panic.
            _ => Err(Error::ShapeMismatch {
                what: "shared marginals",
                expected: nb,
                found: 0,
            }),
        }
    }

    /// Like [`Batch::new`] for f32 inputs, which are widened to f64.
    pub fn from_f32(a: ArrayView2<f32>, b: ArrayView2<f32>, cost: ArrayView3<f32>) -> Result<Self> {
        Self::new(
            a.mapv(f64::from).view(),
            b.mapv(f64::from).view(),
            cost.mapv(f64::from).view(),
        )
    }

    /// Sets the relative tolerance on |Σa − Σb| used when each problem is validated
    /// (default [`DEFAULT_MASS_TOLERANCE`]). Errors: negative or non-finite.
    pub fn with_mass_tolerance(mut self, tolerance: f64) -> Result<Self> {
        self.mass_tolerance = crate::error::nonnegative("mass_tolerance", tolerance)?;
        Ok(self)
    }

    /// Number of problems B.
    pub fn len(&self) -> usize {
        self.cost.dim().0
    }

    /// Always `false`: an empty batch is rejected when built.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows m of every problem.
    pub fn m(&self) -> usize {
        self.cost.dim().1
    }

    /// Columns n of every problem.
    pub fn n(&self) -> usize {
        self.cost.dim().2
    }

    /// Source marginals, B × m.
    pub fn a(&self) -> ArrayView2<'_, f64> {
        self.a.view()
    }

    /// Target marginals, B × n.
    pub fn b(&self) -> ArrayView2<'_, f64> {
        self.b.view()
    }

    /// Costs, B × m × n.
    pub fn cost(&self) -> ArrayView3<'_, f64> {
        self.cost.view()
    }

    /// Problem `i` as a validated [`Problem`] (a copy). Errors: the problem's own validation errors
    /// ([`Problem::new`]); an index out of range is [`Error::ShapeMismatch`].
    pub fn problem(&self, i: usize) -> Result<Problem> {
        if i >= self.len() {
            return Err(Error::ShapeMismatch {
                what: "batch index (must be below the batch size)",
                expected: self.len(),
                found: i,
            });
        }
        Problem::with_mass_tolerance(
            self.a.row(i),
            self.b.row(i),
            self.cost.index_axis(Axis(0), i),
            self.mass_tolerance,
        )
    }

    /// Validates problem `i` and solves it with `solve`, for every i in parallel; results in batch order.
    /// Each finished problem is reported to `monitor` ([`crate::Event::Finished`]).
    pub(crate) fn map_problems<F>(&self, monitor: &Monitor, solve: F) -> Vec<Result<Solution>>
    where
        F: Fn(&Problem) -> Result<Solution> + Sync,
    {
        let tally = Tally::new(monitor, self.len());
        (0..self.len())
            .into_par_iter()
            .map(|i| {
                let out = self.problem(i).and_then(|p| solve(&p));
                tally.tick();
                out
            })
            .collect()
    }

    /// Holds every solved problem's result to its status's promise ([`Problem::check`]), from the batch's
    /// own marginals.
    #[cfg(feature = "gpu")]
    pub(crate) fn check_all(&self, results: Vec<Result<Solution>>) -> Vec<Result<Solution>> {
        results
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let scale = largest_entry(self.a.row(i), self.b.row(i));
                r?.checked(scale, self.m().max(self.n()))
            })
            .collect()
    }

    /// The batched device kernels take every problem as given: a problem refused for zero-mass entries that
    /// the formulation cannot take (`Error::ZeroMass`) is solved alone with `solve`, which removes them.
    #[cfg(feature = "gpu")]
    pub(crate) fn solve_zero_mass_alone(
        &self,
        results: &mut [Result<Solution>],
        solve: impl Fn(&Problem) -> Result<Solution>,
    ) {
        for (i, r) in results.iter_mut().enumerate() {
            if matches!(r, Err(Error::ZeroMass { .. })) {
                *r = self.problem(i).and_then(|p| solve(&p));
            }
        }
    }

    /// Every problem, validated, in batch order (copies).
    #[cfg(feature = "gpu")]
    pub(crate) fn problems(&self) -> impl ExactSizeIterator<Item = Result<Cow<'_, Problem>>> + '_ {
        (0..self.len()).map(|i| self.problem(i).map(Cow::Owned))
    }
}

/// The validate-and-reject step of the device backends: every problem (already validated, or its own
/// error) goes through `check`; the ones that pass are returned with their index, the others' errors are
/// recorded (and reported finished) in the returned [`Outcomes`].
#[cfg(feature = "gpu")]
pub(crate) fn screen<'p, 'm, V>(
    problems: impl ExactSizeIterator<Item = Result<Cow<'p, Problem>>>,
    monitor: &'m Monitor,
    check: impl Fn(Cow<'p, Problem>) -> Result<V>,
) -> (Vec<(usize, V)>, Outcomes<'m>) {
    let mut outcomes = Outcomes::new(problems.len(), monitor);
    let mut valid = Vec::new();
    for (i, given) in problems.enumerate() {
        match given.and_then(&check) {
            Ok(v) => valid.push((i, v)),
            Err(e) => outcomes.reject(i, e),
        }
    }
    (valid, outcomes)
}

/// The per-problem results of a batch as they come in, and its progress count (a [`Tally`]).
#[cfg(feature = "gpu")]
pub(crate) struct Outcomes<'m> {
    slots: Vec<Option<Result<Solution>>>,
    tally: Tally<'m>,
}

#[cfg(feature = "gpu")]
impl<'m> Outcomes<'m> {
    /// No results yet for `total` problems; `monitor` hears of each finished one.
    pub(crate) fn new(total: usize, monitor: &'m Monitor) -> Self {
        Self {
            slots: (0..total).map(|_| None).collect(),
            tally: Tally::new(monitor, total),
        }
    }

    /// Reports one more problem finished (from any thread); its result is set separately.
    pub(crate) fn tick(&self) {
        self.tally.tick();
    }

    /// Sets problem `index`'s result (its progress is reported separately, with [`Outcomes::tick`]).
    pub(crate) fn set(&mut self, index: usize, result: Result<Solution>) {
        self.slots[index] = Some(result);
    }

    /// A problem rejected before solving: its error, reported finished.
    pub(crate) fn reject(&mut self, index: usize, error: Error) {
        self.set(index, Err(error));
        self.tick();
    }

    /// Results in batch order. After a device failure (`device` is `Err`), every problem still without a
    /// result gets that error and every problem not reported yet is reported finished.
    pub(crate) fn into_vec(self, device: Result<()>) -> Vec<Result<Solution>> {
        if device.is_err() {
            self.tally.complete();
        }
        self.slots
            .into_iter()
            .map(|r| match (r, &device) {
                (Some(r), _) => r,
                (None, Err(e)) => Err(e.clone()),
                (None, Ok(())) => Err(Error::Gpu(
                    "a problem of the batch was neither rejected nor solved".into(),
                )),
            })
            .collect()
    }
}
