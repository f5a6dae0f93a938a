//! Exact (unregularised) OT: the [`ExactOt`] configuration and its entry points; the network simplex
//! itself is in `simplex`.

mod simplex;

use crate::batch::Batch;
use crate::error::Result;
use crate::monitor::Monitor;
use crate::problem::Problem;
use crate::solution::Solution;

/// Default pivot limit of [`ExactOt`]: far above what problems of a few thousand per side need.
pub const DEFAULT_EXACT_MAX_ITER: usize = 100_000_000;

/// Exact unregularised OT, min ⟨T, C⟩ over U(a, b), by a network simplex of our own.
///
/// The solution is a basic optimal plan: at most m + n − 1 nonzeros, stored by column. `alpha` and `beta`
/// are optimal dual potentials: α_i + β_j ≤ C_ij for every pair (up to rounding), with equality where the
/// plan is positive; `value` is α·a + β·b, which equals the transport cost at the optimum. The status is
/// `Converged(Criterion::Exact)` when no arc has a negative reduced cost, `MaxIterations` when the pivot
/// limit stopped it first (the plan is then a feasible basis that may not be optimal).
///
/// Zero entries in a and b are allowed. The problem admits total masses that differ within its mass
/// tolerance; the network is balanced by rescaling b by Σa / Σb, and the marginal errors are reported against
/// the original a and b (so they show that mismatch).
///
/// ```
/// use sparse_ot::{golden_problem, ExactOt};
/// let sol = ExactOt::new().solve(&golden_problem())?;
/// assert!(sol.converged());
/// assert!((sol.transport_cost - 0.2591074830).abs() < 1e-9);
/// # Ok::<(), sparse_ot::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ExactOt {
    pub(crate) max_iter: usize,
    pub(crate) monitor: Monitor,
}

impl Default for ExactOt {
    fn default() -> Self {
        Self::new()
    }
}

impl ExactOt {
    /// The solver with the default pivot limit [`DEFAULT_EXACT_MAX_ITER`].
    pub fn new() -> Self {
        Self {
            max_iter: DEFAULT_EXACT_MAX_ITER,
            monitor: Monitor::new(),
        }
    }

    /// Pivot limit. Running out of pivots is reported as `Termination::MaxIterations`.
    pub fn max_iter(mut self, max_iter: usize) -> Self {
        self.max_iter = max_iter;
        self
    }

    /// Reports the pivot count every few thousand pivots (single solves) or finished problems (batches) to
    /// `monitor`, which can also cancel the solve (see [`Monitor`]): the plan is then the current basis
    /// (feasible, not necessarily optimal).
    pub fn monitor(mut self, monitor: Monitor) -> Self {
        self.monitor = monitor;
        self
    }

    /// Solves on the CPU.
    pub fn solve(&self, problem: &Problem) -> Result<Solution> {
        problem.check(simplex::solve(problem, self.max_iter, &self.monitor)?)
    }

    /// Solves every problem of the batch on the CPU (in parallel over problems); per-problem results as
    /// [`crate::SparseOt::solve_batch`].
    pub fn solve_batch(&self, batch: &Batch) -> Vec<Result<Solution>> {
        let mut each = self.clone();
        each.monitor = self.monitor.quiet();
        batch.map_problems(&self.monitor, |p| each.solve(p))
    }
}
