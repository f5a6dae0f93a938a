//! The [`SparseOt`] configuration: validated settings and their builders. The entry points that solve with
//! it are in the family's face, `sparse/mod.rs`.

use ndarray::Array1;

use crate::error::{at_least_one, nonnegative, positive, Error, Result};
use crate::monitor::Monitor;
use crate::solution::{Formulation, Lanes, PlanKind, DEFAULT_TOL};

/// Sparsity-constrained OT (at most k nonzeros per column, or per row), and quadratic OT as the case without k.
///
/// ```
/// use sparse_ot::{golden_problem, SparseOt};
/// let sol = SparseOt::new(2, 0.1)?.solve(&golden_problem())?;
/// assert!(sol.converged());
/// # Ok::<(), sparse_ot::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct SparseOt {
    pub(crate) k: Option<usize>,
    pub(crate) gamma: f64,
    pub(crate) formulation: Formulation,
    pub(crate) lanes: Lanes,
    pub(crate) tol: f64,
    /// Whether `tol` was set with [`SparseOt::tol`]; if not, GPU solves use [`crate::DEFAULT_TOL_F32`] instead.
    pub(crate) tol_given: bool,
    pub(crate) max_iter: usize,
    pub(crate) memory: usize,
    pub(crate) warm_alpha: Option<Array1<f64>>,
    pub(crate) warm_beta: Option<Array1<f64>>,
    pub(crate) monitor: Monitor,
    pub(crate) plan_kind: PlanKind,
}

/// Default iteration limit of the sparse and quadratic solvers.
pub const DEFAULT_MAX_ITER: usize = 1000;

impl SparseOt {
    /// At most `k` nonzeros per column (target), regularisation strength `gamma`.
    ///
    /// Errors: k = 0, γ ≤ 0 or non-finite. (k > m is reported when solving, once m is known.)
    pub fn new(k: usize, gamma: f64) -> Result<Self> {
        if k == 0 {
            return Err(Error::InvalidK {
                k,
                max: usize::MAX,
                axis: "rows",
            });
        }
        Self::with_k(Some(k), gamma)
    }

    /// Quadratically-regularised OT (docs/MATH.md §4): no limit on nonzeros (k = m).
    pub fn quadratic(gamma: f64) -> Result<Self> {
        Self::with_k(None, gamma)
    }

    fn with_k(k: Option<usize>, gamma: f64) -> Result<Self> {
        Ok(Self {
            k,
            gamma: positive("gamma", gamma)?,
            formulation: Formulation::SemiDual,
            lanes: Lanes::Columns,
            tol: DEFAULT_TOL,
            tol_given: false,
            max_iter: DEFAULT_MAX_ITER,
            memory: 10,
            warm_alpha: None,
            warm_beta: None,
            monitor: Monitor::new(),
            plan_kind: PlanKind::Gradient,
        })
    }

    /// Dual or semi-dual (default semi-dual).
    pub fn formulation(mut self, f: Formulation) -> Self {
        self.formulation = f;
        self
    }

    /// Put the k limit on rows (each source uses at most k targets) instead of columns: the transposed problem
    /// is solved and its solution transposed back (docs/MATH.md §1).
    pub fn row_sparsity(mut self) -> Self {
        self.lanes = Lanes::Rows;
        self
    }

    /// Stopping tolerance on the max-norm of the marginal violation (the gradient). 0 runs exactly
    /// `max_iter` iterations. Errors: negative or non-finite.
    ///
    /// A tolerance set here is used as given on every device (the GPU router recipe,
    /// [`SparseOt::solve_batch_adam_on`], raises it to its f32 gradient noise). Without it, the default
    /// depends on the arithmetic: on the CPU (f64) it is [`DEFAULT_TOL`] = 1e-9; on a GPU (f32) the L-BFGS
    /// phase stops at [`crate::DEFAULT_TOL_F32`] × max(a, b) (1e-9 is below f32 resolution), and when it
    /// stalls above that (as at the kinks of k < m) the f64 stage continuing on the CPU uses
    /// [`DEFAULT_TOL`]. `SparseOt::solve_buffers` (GPU buffers) keeps [`DEFAULT_TOL`], since the marginals
    /// are not on the host: give it a tolerance. The tolerance used is the one the `Converged` status names.
    pub fn tol(mut self, tol: f64) -> Result<Self> {
        self.tol = nonnegative("tol", tol)?;
        self.tol_given = true;
        Ok(self)
    }

    /// Iteration limit.
    pub fn max_iter(mut self, max_iter: usize) -> Self {
        self.max_iter = max_iter;
        self
    }

    /// L-BFGS memory (pairs kept). Errors: 0.
    pub fn memory(mut self, memory: usize) -> Result<Self> {
        self.memory = at_least_one("memory", memory)?;
        Ok(self)
    }

    /// Start from these potentials instead of zero (β is used by the dual only; k = 1 is solved exactly and
    /// needs no start). Lengths are checked when
    /// solving. With row sparsity, α is over rows and β over columns of the original problem, as returned.
    pub fn warm_start(mut self, alpha: Array1<f64>, beta: Option<Array1<f64>>) -> Self {
        self.warm_alpha = Some(alpha);
        self.warm_beta = beta;
        self
    }

    /// Which plan to return (default [`PlanKind::Gradient`], the k-sparse plan read off the potentials).
    /// [`PlanKind::Relaxed`] returns the relaxation's optimal plan, which meets both marginals but may mix
    /// more than k entries in a column where supports tie; [`PlanKind::Feasible`] returns a plan with at
    /// most k nonzeros per column that meets both marginals, by solving quadratic OT on a support chosen
    /// from the relaxed plan. Both are built on the host in f64 after the solve (on any device) and come
    /// with [`crate::Solution::plan_gap`]; when the kind asked for cannot be built, the next one down
    /// comes back and [`crate::Solution::plan_kind`] says which. `SparseOt::solve_buffers` (plans in GPU
    /// buffers) returns gradient plans only and refuses the other kinds.
    pub fn plan_kind(mut self, kind: PlanKind) -> Self {
        self.plan_kind = kind;
        self
    }

    /// Reports every step (single solves) or finished problem (batches) to `monitor`, which can also
    /// cancel the solve (see [`Monitor`]).
    pub fn monitor(mut self, monitor: Monitor) -> Self {
        self.monitor = monitor;
        self
    }
}
