//! GPU machinery through wgpu: the host layer for the kernels in `shaders/`, shared by every solver family
//! (the families' device code lives with them: `sparse::gpu`, `sinkhorn::gpu`, `moe::gpu`, and the L-BFGS
//! backend in `lbfgs::gpu`). Nothing here knows a solver.
//!
//! * [`GpuContext`] owns (or adopts) a device and queue, knows the device's limits, caches compute pipelines
//!   by (kernel, workgroup size) and keeps per-shape workspaces, so repeated solves of one shape neither
//!   recompile nor reallocate ([`GpuContext::stats`] shows it).
//! * Everything on the device is **f32**: results agree with the f64 CPU path to f32 rounding times the
//!   problem's conditioning, and tolerances below ~1e-6 of the marginal mass are not reachable (the solver
//!   then reports `Stalled` or `MaxIterations`, never silence).
//! * Iterations stay on the device. Sparse solves read back eight scalars per problem and L-BFGS round (an
//!   evaluation or a new direction); Sinkhorn reads back one scalar per problem (its row-marginal error)
//!   every `check_every` iterations. The potentials and the plan are read back once at the end (or stay in
//!   buffers with [`crate::SparseOt::solve_buffers`] and [`crate::Sinkhorn::solve_buffers`], whose input is
//!   a [`GpuProblem`]).
//! * Sinkhorn reads one row-major copy of the cost once per iteration: a workgroup owns a block of rows,
//!   keeps each row in registers, updates f from it and folds the same entries into per-block column
//!   log-sum-exps, which a second small kernel merges (in block order) into the next g. Rows longer than
//!   16 × the largest workgroup (16 384 entries at 1024 threads) are read twice instead (rows, then columns),
//!   still from the one copy. The sparse kernels read the transposed cost, transposed on the device (a tiled
//!   kernel); no GPU path transposes on the host.
//! * Point clouds ([`crate::Sinkhorn::solve_points_on`], [`crate::SparseOt::solve_points_on`]): the same
//!   kernels take every entry from `shaders/cost_points.wgsl`, which computes it from the coordinates, so
//!   no cost is stored or read (`cost` holds where a workspace's kernels find theirs).
//! * Every solve counts the work it asks of the device ([`crate::GpuWork`] on the solution: dispatches,
//!   blocking readbacks and bytes of cost the kernels read, from each dispatch's geometry).
//! * Problems that do not fit one storage binding are refused with [`crate::Error::DeviceLimit`].
//! * Batches: the kernels take the problem index from `workgroup_id.z` and find problem p's data at
//!   p × its per-problem length in every buffer, so one dispatch covers B problems of one shape (B = 1 is the
//!   single-problem path). [`crate::SparseOt::solve_batch_adam_on`] (the router recipe) runs a whole batch
//!   with three dispatches per Adam step whatever B is, all steps in one submission, one readback at the end
//!   ([`GpuContext::dispatches_recorded`] counts dispatches). [`crate::Sinkhorn::solve_batch_on`] runs a
//!   batch with two dispatches per iteration (three when a row does not fit one workgroup's registers) and
//!   one reduction per check whatever B is, each problem with its
//!   own ε schedule and stopping decision (a converged problem is frozen while the others go on; a single
//!   solve is B = 1). L-BFGS solves of a batch ([`crate::SparseOt::solve_batch_on`]) run one driver per
//!   problem in lockstep: a round serves every problem's next step (accept, new direction or trial
//!   evaluation) with at most six dispatches whatever B is, each kernel skipping the problems that do
//!   something else this round.
//! * Router logits already on the device: [`crate::Router::route_buffers`] (`shaders/router.wgsl` + the
//!   batched recipe) keeps gates, problems, steps and routing on the GPU and returns a
//!   [`crate::GpuRouting`].

pub(crate) mod buffers;
pub(crate) mod context;
pub(crate) mod cost;
pub(crate) mod kernels;
pub(crate) mod problem;
pub(crate) mod work;

pub use context::{GpuContext, GpuStats};
pub use kernels::shader_sources;
pub use problem::GpuProblem;
