//! # sparse-ot
//!
//! Optimal transport with **sparsity constraints** (Liu, Puigcerver & Blondel, ICLR 2023): transport plans
//! with at most k nonzeros per column (or per row), used as a matching layer, a loss or a mixture-of-experts
//! router. Beside it: quadratically-regularised OT (k = m) and entropic OT by log-domain Sinkhorn.
//!
//! ## Design
//!
//! * **Inputs are validated once.** [`Problem`] copies the marginals and cost (f64 or f32, views or owned
//!   arrays by reference, see [`Scalar`]) into f64 and rejects empty
//!   shapes, mismatched shapes, NaN/inf, negative mass and unequal total masses with a typed [`Error`].
//!   Solver settings are validated by their builders ([`SparseOt`], [`Sinkhorn`]); k is checked against the
//!   problem when solving. Nothing panics on user input and nothing is silently clamped.
//! * **Not converging is a status, not an error.** Every solver returns a [`Solution`] whose
//!   [`Termination`] says whether it converged (and on which criterion), hit the iteration limit or stalled.
//!   The solution's `value` is always the objective of the formulation solved, *evaluated at the returned
//!   potentials*, and the plan's transport cost and marginal errors are measured on the returned plan.
//! * **The CPU path is the f64 reference.** The sparse solvers maximise the concave semi-dual or dual with an
//!   L-BFGS of our own (a device-agnostic state machine; the vectors live in a backend, host or GPU). Columns
//!   are evaluated in parallel in fixed chunks and reduced in a fixed order, so results are bitwise
//!   reproducible whatever the thread count.
//! * **The true optimum when k < m.** The (semi-)duals are nonsmooth where a column's k-th and (k+1)-th
//!   entries tie, and at the optimum they do; plain L-BFGS stalls there. When it stops making progress, a
//!   finish takes over: a smoothing continuation of the top-k selection followed by regularised Newton, then
//!   an exact Newton–KKT polish on the identified tie structure whose multipliers give an exactly feasible
//!   mixed plan, so convergence is reported with a duality-gap certificate ([`Criterion::DualityGap`]). k = 1
//!   is unregularised OT plus a constant and is solved exactly by the network simplex. The method and the
//!   argument for its convergence are in the source of the `sparse::nonsmooth` module.
//! * **Exact OT has its own solver.** [`ExactOt`] runs a network simplex (block-search pricing, strongly
//!   feasible spanning trees against cycling) and returns a basic optimal plan (at most m + n − 1 nonzeros)
//!   with optimal dual potentials; no LP library is involved.
//! * **Operators are public** ([`ops`]): top-k mask with the tie rule of `jax.lax.top_k` (larger value first,
//!   then lower index), the top-k conjugate δ_k and its gradient, and the sparse projection onto the simplex.
//! * **The GPU path computes in f32** (feature `gpu`, on by default; any wgpu 30 backend). The caller picks
//!   the [`Device`] (`solve_on`): CPU, a [`gpu::GpuContext`] (own device, or an application's adopted one)
//!   or `Auto`. Iterations stay on the device: sparse solves read back eight scalars per problem and L-BFGS
//!   round, Sinkhorn one per problem every `check_every` iterations; potentials and plan once at the end, or
//!   never with the buffer entry points ([`SparseOt::solve_buffers`], [`Sinkhorn::solve_buffers`],
//!   [`Router::route_buffers`]). Results agree with the f64 path to f32 rounding times the
//!   conditioning (≈ 1e-6 of the mass / γ or ε); problems beyond one storage binding are refused with
//!   [`Error::DeviceLimit`]. Shaders live in `shaders/`, one kernel family per file. When the f32 L-BFGS
//!   stalls (the kinks of k < m, or a tolerance below f32 resolution) and the problem is on the host, the f64
//!   nonsmooth stage continues on the CPU from the GPU's potentials; `Solution::device` then says
//!   [`RanOn::GpuThenCpu`].
//!
//! * **Batches and routing.** A [`Batch`] holds B problems of one shape in contiguous B × m × n / B × m /
//!   B × n arrays; `solve_batch` returns one `Result` per problem, so a bad problem fails alone. [`moe`] turns
//!   router logits into a capacity-respecting token-to-expert dispatch (experts choose tokens, or tokens
//!   choose experts) and compares with the greedy top-k router. On a GPU every batched solver covers the
//!   whole batch with a fixed number of dispatches per step, whatever B is: the router's recipe (Adam, 20
//!   steps; [`SparseOt::solve_batch_adam_on`], [`Router::route_on`]), the accurate solver (one L-BFGS driver
//!   per problem in lockstep; [`SparseOt::solve_batch_on`]) and Sinkhorn ([`Sinkhorn::solve_batch_on`]).
//!   Router logits already in a GPU buffer are routed without any host round trip by
//!   [`Router::route_buffers`].
//!
//! * **Burn** (feature `burn`). `burn` routes Burn tensors (`burn::TensorRouter`: on a wgpu device
//!   shared with Burn, from the logits tensor's buffer to the result's with no host round trip) and offers
//!   a sparse mixture-of-experts layer as a Burn module (`burn::MoeLayer`), trained end to end through
//!   its combine weights.
//!
//! * **Progress and cancellation.** A [`Monitor`] set once on a configuration (`.monitor(m)`) hears every
//!   step of a single solve and every finished problem of a batch or routing, and can cancel from any
//!   thread: the solve then returns its current state with [`Termination::Cancelled`].
//!
//! ## Module map
//!
//! Each solver family has one folder whose `mod.rs` is its public face (the configuration and every entry
//! point: `solve`, `solve_on`, `solve_on_async`, `solve_batch`, `solve_batch_on`, `solve_buffers`), a
//! `rules.rs` with what its CPU and GPU backends share, and the backends beside it:
//!
//! | folder / file | holds |
//! |---|---|
//! | `sparse/` | [`SparseOt`]: `rules` (k, warm start, row sparsity, k = 1, plan → solution), `columns` (the cost read as columns, stored or from points), `objective`, `nonsmooth`, `plans` (plan kinds) and `flow` (a support's maximum flow, for the feasible plan), `adam` (router recipe), `cpu`, `points` (the pipeline on point clouds), `gpu/` (device objective, lockstep pipeline, batches, recipe, point clouds) |
//! | `sinkhorn/` | [`Sinkhorn`]: `rules` (stopping check, ε schedule, validation, assembly), `cpu`, `expsum`, `gpu` |
//! | `exact/` | [`ExactOt`]: `simplex` (network simplex) |
//! | [`moe`] | [`Router`], [`Routing`]: `metrics`, `greedy` (top-k baseline), `gpu` (routing on GPU buffers) |
//! | `lbfgs/` | the L-BFGS driver (a state machine), its host backend and its GPU backend |
//! | [`gpu`] | GPU machinery: context, kernel registry, buffers, where kernels find the cost (a matrix or point clouds), [`gpu::GpuProblem`] |
//! | `points` | [`PointProblem`], [`PointSolution`]: two clouds, their masses and ground cost; costs computed lane by lane |
//! | `problem`, `solution`, `error`, `monitor`, `batch`, `device`, [`ops`] | what every family shares |
//! | `cost` | [`GroundCost`] and [`pairwise`]: cost matrices from point clouds (POT's `ot.dist`) |
//! | [`quick`] | one-call functions next to their POT equivalents (`emd`, `sinkhorn`, `quadratic`, `sparse`) |
//! | `burn` (feature `burn`) | the router on Burn tensors, device sharing with Burn, the MoE layer module |
//!
//! The import rule: solver families import the shared layer, `lbfgs` and `gpu`; `lbfgs` imports `gpu`;
//! `gpu` and the shared layer import no solver family; `moe` builds on `sparse`; `burn` builds on `moe`
//! and `gpu`. Nothing imports through the crate root's re-exports.
//!
//! ## Quick start
//!
//! From your own arrays: marginals `a` (m) and `b` (n) with equal totals, a cost `C` (m × n).
//!
//! ```
//! use sparse_ot::ndarray::{array, Array1};
//! use sparse_ot::{Problem, SparseOt};
//!
//! let a = Array1::from_elem(3, 1.0 / 3.0);
//! let b = array![0.5, 0.5];
//! let cost = array![[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]];
//! let problem = Problem::new(a.view(), b.view(), cost.view())?;
//! let sol = SparseOt::new(2, 0.1)?.solve(&problem)?; // ≤ 2 nonzeros per column, gamma = 0.1
//! println!("{sol}"); // status, objective, transport cost, marginal errors, plan size
//! let (plan, alpha, beta) = (sol.dense_plan(), &sol.alpha, &sol.beta);
//! assert!(sol.converged() && plan.dim() == (3, 2) && alpha.len() == 3 && beta.len() == 2);
//! # Ok::<(), sparse_ot::Error>(())
//! ```
//!
//! From point clouds, with uniform marginals, and the one-call functions of [`quick`] (POT's names):
//!
//! ```
//! use sparse_ot::ndarray::array;
//! use sparse_ot::{quick, GroundCost, Problem, Sinkhorn};
//!
//! let x = array![[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]];
//! let y = array![[0.5f64, 0.5], [1.0, 1.0]];
//! let problem = Problem::from_points(&x, &y, GroundCost::SqEuclidean)?; // a = 1/3, b = 1/2, C = ot.dist(x, y)
//! let sol = Sinkhorn::new(0.1)?.solve(&problem)?;
//! let same = quick::sinkhorn(problem.a(), problem.b(), problem.cost(), 0.1)?; // ≈ ot.sinkhorn
//! assert_eq!(sol.alpha, same.alpha);
//! # Ok::<(), sparse_ot::Error>(())
//! ```
//!
//! Default tolerances follow the arithmetic: [`DEFAULT_TOL`] on the CPU (f64), [`DEFAULT_TOL_F32`] relative
//! to the problem's scale on a GPU (f32); a tolerance given with `.tol(t)` is used as given.
//!
//! The mathematics behind every number (formulations, what `value` is for each solver, the tie rule, why a
//! k-sparse plan can miss a row marginal) is in `docs/MATH.md` in the repository.
#![deny(missing_docs)]

mod batch;
#[cfg(feature = "burn")]
pub mod burn;
mod cost;
mod device;
mod error;
mod exact;
#[cfg(feature = "gpu")]
pub mod gpu;
mod lbfgs;
pub mod moe;
mod monitor;
pub mod ops;
mod points;
mod problem;
pub mod quick;
pub mod roofline;
mod sinkhorn;
mod solution;
mod sparse;

/// The `ndarray` this crate's API takes and returns (use it to build inputs without a version clash).
pub use ndarray;

pub use batch::Batch;
pub use cost::{pairwise, GroundCost};
pub use device::Device;
pub use error::{Error, Position, Result};
pub use exact::{ExactOt, DEFAULT_EXACT_MAX_ITER};
#[cfg(feature = "gpu")]
pub use moe::GpuRouting;
pub use moe::{greedy_top_k, Router, RouterSolver, Routing, RoutingMode};
pub use monitor::{Event, Monitor, Progress};
pub use points::{PointProblem, PointSolution};
pub use problem::{golden_problem, Problem, Scalar, DEFAULT_MASS_TOLERANCE, REBALANCE_BELOW};
#[cfg(feature = "gpu")]
pub use sinkhorn::GpuSinkhornOutput;
pub use sinkhorn::{Precision, Sinkhorn, DEFAULT_SINKHORN_MAX_ITER};
pub use solution::{
    Criterion, Formulation, GpuWork, Lanes, Method, Plan, PlanKind, RanOn, Solution, SparsePlan,
    Termination, DEFAULT_TOL, DEFAULT_TOL_F32,
};
#[cfg(feature = "gpu")]
pub use sparse::GpuSparseOutput;
pub use sparse::{SparseOt, DEFAULT_MAX_ITER};

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
