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

use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::{Array2, Array3, ArrayView1, ArrayView2, ArrayView3, Axis};
use rayon::prelude::*;

use crate::config::{Sinkhorn, SparseOt};
use crate::error::{Error, Result};
use crate::exact::ExactOt;
use crate::problem::{validate_shapes, Problem, DEFAULT_MASS_TOLERANCE};
use crate::solution::Solution;

/// Progress of a batched solve: called as `progress(done, total)` each time one more problem of the batch
/// has finished solving (from any thread; `done` counts up to `total` = the batch size, rejected problems
/// and problems ended by a device failure included). On a GPU the results are read back together at the end.
pub type BatchProgress<'a> = &'a (dyn Fn(usize, usize) + Sync);

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
    pub(crate) fn map_problems<F>(&self, solve: F) -> Vec<Result<Solution>>
    where
        F: Fn(&Problem) -> Result<Solution> + Sync,
    {
        self.map_problems_observed(solve, &|_, _| {})
    }

    /// [`Batch::map_problems`], reporting each finished problem to `progress`.
    pub(crate) fn map_problems_observed<F>(
        &self,
        solve: F,
        progress: BatchProgress<'_>,
    ) -> Vec<Result<Solution>>
    where
        F: Fn(&Problem) -> Result<Solution> + Sync,
    {
        let done = AtomicUsize::new(0);
        (0..self.len())
            .into_par_iter()
            .map(|i| {
                let out = self.problem(i).and_then(|p| solve(&p));
                progress(done.fetch_add(1, Ordering::Relaxed) + 1, self.len());
                out
            })
            .collect()
    }
}

impl SparseOt {
    /// Solves every problem of the batch on the CPU (in parallel over problems). Entry i is problem i's own
    /// result: a bad problem gives its own `Err`, the others are unaffected. Each entry equals
    /// [`SparseOt::solve`] on [`Batch::problem`]`(i)` exactly.
    pub fn solve_batch(&self, batch: &Batch) -> Vec<Result<Solution>> {
        batch.map_problems(|p| self.solve(p))
    }
}

impl Sinkhorn {
    /// Solves every problem of the batch on the CPU (in parallel over problems); per-problem results as
    /// [`SparseOt::solve_batch`].
    pub fn solve_batch(&self, batch: &Batch) -> Vec<Result<Solution>> {
        batch.map_problems(|p| self.solve(p))
    }
}

impl ExactOt {
    /// Solves every problem of the batch on the CPU (in parallel over problems); per-problem results as
    /// [`SparseOt::solve_batch`].
    pub fn solve_batch(&self, batch: &Batch) -> Vec<Result<Solution>> {
        batch.map_problems(|p| self.solve(p))
    }
}
