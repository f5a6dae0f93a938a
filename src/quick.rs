//! One-call functions for those coming from POT (the Python OT library): marginals and a cost in, a
//! [`Solution`] out, each solved on the CPU (f64) with the default settings of the solver it names.
//!
//! | here | POT | solver |
//! |---|---|---|
//! | [`emd`]`(a, b, cost)` | `ot.emd(a, b, M)` (plan), `ot.emd2(a, b, M)` (cost) | [`ExactOt::new`] |
//! | [`sinkhorn`]`(a, b, cost, ε)` | `ot.sinkhorn(a, b, M, reg=ε, method="sinkhorn_log")` | [`Sinkhorn::new`] |
//! | [`quadratic`]`(a, b, cost, γ)` | `ot.smooth.smooth_ot_dual(a, b, M, reg=γ, reg_type="l2")` | [`SparseOt::quadratic`] |
//! | [`sparse`]`(a, b, cost, k, γ)` | `ot.smooth.smooth_ot_dual(a, b, M, reg=γ, reg_type="sparsity_constrained", max_nz=k)` | [`SparseOt::new`] |
//! | [`unif`]`(n)` | `ot.unif(n)` | |
//! | [`crate::pairwise`]`(x, y, cost)` | `ot.dist(x, y, metric)` | |
//!
//! POT's plan is `sol.dense_plan()` (or `sol.plan`, sparse where it is sparse), its `log["u"]`/`log["v"]`
//! or `log["alpha"]`/`log["beta"]` potentials are `sol.alpha`/`sol.beta`, and `sol.transport_cost` is
//! ⟨T, C⟩ (POT's `emd2` and `sinkhorn2`). POT's empty marginals `a = b = []` (uniform) are
//! [`unif`]`(m)` and [`unif`]`(n)` here, or [`Problem::uniform`]. Unlike POT, not converging is never silent:
//! check `sol.converged()` or print the solution.
//!
//! Marginals and cost may be f64 or f32 (widened to f64 exactly; all three of one type), given as views
//! or by reference to owned arrays, and are validated as by [`Problem::new`]. For other settings (a
//! tolerance, a GPU, a warm start) build the [`Problem`] and configure the solver instead: these functions
//! are exactly `Solver::new(..)?.solve(&Problem::new(a, b, cost)?)`.
//!
//! ```
//! use sparse_ot::ndarray::array;
//! use sparse_ot::quick::{emd, sinkhorn, unif};
//! use sparse_ot::{pairwise, GroundCost};
//!
//! let x = array![[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]];
//! let y = array![[0.0, 0.1], [1.0, 1.0]];
//! let cost = pairwise(&x, &y, GroundCost::SqEuclidean)?; // ot.dist(x, y)
//! let (a, b) = (unif(3), unif(2));
//! let exact = emd(&a, &b, &cost)?; // ot.emd(a, b, M)
//! let entropic = sinkhorn(&a, &b, &cost, 0.1)?; // ot.sinkhorn(a, b, M, 0.1, method="sinkhorn_log")
//! assert!(exact.converged() && entropic.converged());
//! assert!(exact.transport_cost <= entropic.transport_cost);
//! # Ok::<(), sparse_ot::Error>(())
//! ```

use ndarray::{Array1, AsArray, Ix1, Ix2};

use crate::error::Result;
use crate::exact::ExactOt;
use crate::problem::{Problem, Scalar};
use crate::sinkhorn::Sinkhorn;
use crate::solution::Solution;
use crate::sparse::SparseOt;

/// Exact (unregularised) OT, min ⟨T, C⟩ over the plans with marginals a and b, by the network simplex:
/// ≈ POT's `ot.emd(a, b, M)`, whose returned plan is `sol.dense_plan()` here and whose `ot.emd2` value is
/// `sol.transport_cost` (= `sol.value`, the dual α·a + β·b, at the optimum).
///
/// The same as `ExactOt::new().solve(&Problem::new(a, b, cost)?)`. Errors: those of [`Problem::new`].
pub fn emd<'a, T: Scalar>(
    a: impl AsArray<'a, T, Ix1>,
    b: impl AsArray<'a, T, Ix1>,
    cost: impl AsArray<'a, T, Ix2>,
) -> Result<Solution> {
    ExactOt::new().solve(&Problem::new(a, b, cost)?)
}

/// Entropic OT, min ⟨T, C⟩ + ε Σ T_ij (log T_ij − 1), by log-domain Sinkhorn with ε-scaling:
/// ≈ POT's `ot.sinkhorn(a, b, M, reg=epsilon, method="sinkhorn_log")` (POT's `reg` is ε).
///
/// **Values.** `sol.transport_cost` is ⟨T, C⟩, POT's `ot.sinkhorn2` loss. `sol.value` is the dual
/// objective at the returned potentials, which at the optimum equals ⟨T, C⟩ + ε Σ T (log T − 1)
/// (docs/MATH.md §5); POT's objective ⟨T, C⟩ + ε Σ T log T is larger by ε × the total mass. The plans are
/// the same. POT stops on a marginal error of 1e-9 after at most 1000 iterations; this stops at
/// [`crate::DEFAULT_TOL`] on the max-norm row error within [`crate::DEFAULT_SINKHORN_MAX_ITER`]
/// iterations (all ε stages together), and says so in `sol.termination` if it does not.
///
/// The same as `Sinkhorn::new(epsilon)?.solve(&Problem::new(a, b, cost)?)`. Errors: ε ≤ 0 or not finite,
/// those of [`Problem::new`], and a zero entry in a or b ([`crate::Error::ZeroMass`]: the logarithms
/// of the marginals are taken).
pub fn sinkhorn<'a, T: Scalar>(
    a: impl AsArray<'a, T, Ix1>,
    b: impl AsArray<'a, T, Ix1>,
    cost: impl AsArray<'a, T, Ix2>,
    epsilon: f64,
) -> Result<Solution> {
    let solver = Sinkhorn::new(epsilon)?;
    solver.solve(&Problem::new(a, b, cost)?)
}

/// Quadratically-regularised OT, min ⟨T, C⟩ + (γ/2) ‖T‖² over the plans with marginals a and b (sparse
/// plans): ≈ POT's `ot.smooth.smooth_ot_dual(a, b, M, reg=gamma, reg_type="l2")`. POT's `reg` is γ: both
/// regularise with (γ/2) ‖T‖² (POT's `SquaredL2(gamma=reg)`).
///
/// `sol.value` is the maximised semi-dual S(α) at the returned potentials, which at the optimum equals the
/// regularised primal ⟨T, C⟩ + (γ/2) ‖T‖² and POT's dual optimum (POT's `log["res"].fun` is its negative);
/// `sol.transport_cost` is ⟨T, C⟩ alone.
///
/// The same as `SparseOt::quadratic(gamma)?.solve(&Problem::new(a, b, cost)?)`. Errors: γ ≤ 0 or not finite,
/// those of [`Problem::new`].
pub fn quadratic<'a, T: Scalar>(
    a: impl AsArray<'a, T, Ix1>,
    b: impl AsArray<'a, T, Ix1>,
    cost: impl AsArray<'a, T, Ix2>,
    gamma: f64,
) -> Result<Solution> {
    let solver = SparseOt::quadratic(gamma)?;
    solver.solve(&Problem::new(a, b, cost)?)
}

/// Sparsity-constrained OT: the quadratic problem with at most `k` nonzeros in every column of the plan
/// (each target is served by at most k sources): ≈ POT's
/// `ot.smooth.smooth_ot_dual(a, b, M, reg=gamma, reg_type="sparsity_constrained", max_nz=k)`, with POT's
/// `reg` as γ and `max_nz` as k. This solver also reaches the optimum at the ties where plain L-BFGS
/// stalls, and certifies it (docs/MATH.md §2.3); `sol.value` is the maximised semi-dual S_k.
///
/// The same as `SparseOt::new(k, gamma)?.solve(&Problem::new(a, b, cost)?)`. Errors: k = 0 or
/// k > m ([`crate::Error::InvalidK`]), γ ≤ 0 or not finite, those of [`Problem::new`].
pub fn sparse<'a, T: Scalar>(
    a: impl AsArray<'a, T, Ix1>,
    b: impl AsArray<'a, T, Ix1>,
    cost: impl AsArray<'a, T, Ix2>,
    k: usize,
    gamma: f64,
) -> Result<Solution> {
    let solver = SparseOt::new(k, gamma)?;
    solver.solve(&Problem::new(a, b, cost)?)
}

/// The uniform marginal of `n` entries, each 1/n: ≈ POT's `ot.unif(n)`. (n = 0 gives an empty array, which
/// every solver rejects with [`crate::Error::Empty`].)
pub fn unif(n: usize) -> Array1<f64> {
    Array1::from_elem(n, 1.0 / n.max(1) as f64)
}
