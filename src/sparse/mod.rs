//! Sparsity-constrained OT (at most k nonzeros per column, or per row) and quadratically-regularised OT
//! (k = m): the [`SparseOt`] configuration and every entry point of the family.
//!
//! The solver maximises a concave program over potentials: the dual D_k(α, β) = α·a + β·b −
//! Σ_j δ_k(α + β_j − c_j), where δ_k(s) = (1/2γ) Σ of the k largest [s_i]_+², or the semi-dual S_k(α), the
//! dual maximised in β in closed form. The plan's column j is the k-sparse projection read off column j's
//! scores. Layout of the family:
//!
//! * `settings` — the configuration and its builders (this file holds the entry points);
//! * `rules` — what every backend shares: k and warm-start checks, the row-sparsity adaptor, the k = 1
//!   hand-over, plan → [`Solution`];
//! * `columns` — where the CPU kernels read the cost: a stored matrix or point clouds;
//! * `objective` — the CPU (semi-)dual value and gradient; `nonsmooth` — the smoothing-continuation and
//!   exact-polish stage that certifies optima where L-BFGS stalls; `polish` — the optimum on an identified
//!   tie structure and its exactly feasible mixed plan; `newton` — semismooth Newton on the
//!   piecewise-quadratic semi-dual (the finish of smooth optima, the quadratic solver's stalls, the feasible
//!   plan's restricted problem), preconditioned by `ichol`; `working_set` — the candidate rows that spare most column scans; `plans` —
//!   the three plan kinds; `flow` — whether a support can carry the marginals (the feasible plan's
//!   repair); `adam` — the router recipe;
//! * `cpu` — the f64 pipeline; `points` — that pipeline on point clouds; `gpu` — the device objective, the
//!   lockstep pipeline and batches (f32).

pub(crate) mod adam;
mod columns;
pub(crate) mod cpu;
mod flow;
#[cfg(feature = "gpu")]
pub(crate) mod gpu;
mod ichol;
mod newton;
mod nonsmooth;
mod objective;
mod plans;
mod points;
mod polish;
pub(crate) mod rules;
pub(crate) mod settings;
mod working_set;

use crate::batch::Batch;
use crate::device::{counting, counting_batch, off_thread, Device, Target};
use crate::error::Result;
use crate::points::PointProblem;
use crate::problem::Problem;
use crate::solution::{Formulation, Lanes, Solution};
use crate::sparse::columns::CostColumns;

pub(crate) use adam::Adam;
#[cfg(feature = "gpu")]
pub use gpu::GpuSparseOutput;
pub use settings::{SparseOt, DEFAULT_MAX_ITER};

impl SparseOt {
    /// The semi-dual divides by the marginal of its lanes (b for column sparsity, a for row sparsity): its
    /// zero entries carry no mass, so they are removed, the rest is solved, and the solution is spread
    /// back: empty lanes, and potentials there that give them no mass ([`crate::problem::Reduced::spread`]).
    /// None when there is nothing to remove.
    fn solve_without_zero_mass(
        &self,
        problem: &Problem,
        device: &Device,
    ) -> Option<Result<Solution>> {
        if self.formulation != Formulation::SemiDual {
            return None;
        }
        let rows = self.lanes == Lanes::Rows;
        let reduced = problem.without_zero_mass(rows, !rows)?;
        let pick = |v: &Option<ndarray::Array1<f64>>, kept: &[usize]| {
            v.as_ref()
                .filter(|v| v.len() == if rows { problem.m() } else { problem.n() })
                .map(|v| kept.iter().map(|&i| v[i]).collect())
        };
        let mut cfg = self.clone();
        // A warm start of the divided side's potential is restricted to the kept entries (a wrong length
        // is reported by the reduced solve).
        if rows {
            cfg.warm_alpha = pick(&self.warm_alpha, &reduced.rows).or(cfg.warm_alpha);
        } else {
            cfg.warm_beta = pick(&self.warm_beta, &reduced.cols).or(cfg.warm_beta);
        }
        Some((|| {
            let sol = cfg.run_on(&reduced.problem, device)?;
            let potentials = reduced.spread(problem, &sol.alpha, &sol.beta, 0.0);
            let kept = if rows { &reduced.rows } else { &reduced.cols };
            let full = rules::ColumnData {
                cost: &CostColumns::matrix(problem),
                a: problem.a_slice(),
                b: problem.b_slice(),
            };
            problem.check(rules::spread_back(sol, potentials, kept, full))
        })())
    }

    /// This configuration for a cost shifted by −`shift`: the warm start's α moves with it.
    fn with_warm_shift(&self, shift: f64) -> Self {
        let mut cfg = self.clone();
        if let Some(alpha) = &mut cfg.warm_alpha {
            alpha.mapv_inplace(|x| x - shift);
        }
        cfg
    }

    /// This configuration for the problems of a batch: same settings, the monitor's cancellation but not
    /// its observer (a batch reports finished problems, not the steps of each).
    fn for_batch_problems(&self) -> Self {
        let mut cfg = self.clone();
        cfg.monitor = self.monitor.quiet();
        cfg
    }

    /// Solves on the CPU.
    pub fn solve(&self, problem: &Problem) -> Result<Solution> {
        self.solve_on(problem, &Device::Cpu)
    }

    /// Solves on `device` (GPU results are f32; `Solution::device` says where it ran).
    pub fn solve_on(&self, problem: &Problem, device: &Device) -> Result<Solution> {
        counting(|| self.run_on(problem, device))
    }

    /// [`Self::solve_on`] without the GPU work counted (zero-mass entries call it again on the rest).
    fn run_on(&self, problem: &Problem, device: &Device) -> Result<Solution> {
        if let Some(sol) = self.solve_without_zero_mass(problem, device) {
            return sol;
        }
        let target = device.target();
        problem.solve_conditioned(|p, shift| {
            let shifted;
            let cfg = if shift == 0.0 {
                self
            } else {
                shifted = self.with_warm_shift(shift);
                &shifted
            };
            match &target {
                Target::Cpu => cpu::solve(cfg, p),
                #[cfg(feature = "gpu")]
                Target::Gpu(ctx) => gpu::solve(ctx, cfg, p),
            }
        })
    }

    /// Solves between two point clouds on the CPU (f64), reading the cost column by column from the points
    /// as the solver needs it: no m × n matrix is formed, so memory is O((m + n) d) for the clouds plus
    /// O(m + nk) for the solver and the plan, which has at most k nonzeros per column (per row for row
    /// sparsity) whatever the number of pairs. Every setting applies as for [`SparseOt::solve`] (the
    /// formulation, plan kind, warm start, monitor), and on the same entries (the problem's
    /// [`PointProblem::to_problem`]) the solution is that of [`SparseOt::solve`] bit for bit, except for
    /// k = 1: that is unregularised OT, which the dense solve hands to the exact network simplex; here it
    /// takes the general path (L-BFGS, then the nonsmooth stage).
    ///
    /// Each evaluation of the objective reads every column once at first; near the optimum most columns
    /// are served from a few candidate rows, so later evaluations compute far fewer costs.
    ///
    /// ```
    /// use sparse_ot::ndarray::Array2;
    /// use sparse_ot::{GroundCost, Plan, PointProblem, SparseOt};
    ///
    /// let x = Array2::from_shape_fn((40, 2), |(i, k)| ((i * 7 + k * 3) % 11) as f64 / 11.0);
    /// let y = Array2::from_shape_fn((30, 2), |(j, k)| ((j * 5 + k) % 13) as f64 / 13.0);
    /// let p = PointProblem::uniform(&x, &y, GroundCost::SqEuclidean)?;
    /// let sol = SparseOt::new(3, 0.1)?.solve_points(&p)?;
    /// assert!(sol.converged());
    /// let Plan::Sparse(plan) = &sol.plan else { unreachable!("sparse solvers return sparse plans") };
    /// assert!(plan.max_lane_nnz() <= 3);
    /// # Ok::<(), sparse_ot::Error>(())
    /// ```
    ///
    /// Errors: those of [`SparseOt::solve`] that do not concern the matrix (k = 0 or k larger than a lane,
    /// a warm start of the wrong length or with non-finite values).
    pub fn solve_points(&self, problem: &PointProblem) -> Result<Solution> {
        points::solve(self, problem, &Target::Cpu)
    }

    /// [`SparseOt::solve_points`] on `device`. On a GPU the kernels compute every cost entry from the
    /// points (f32; no matrix in any buffer, so [`crate::GpuWork::cost_bytes_read`] is 0): f32 L-BFGS on the
    /// (semi-)dual and the plan extracted on the device, with the nonsmooth stage continued in f64 on the
    /// CPU where L-BFGS stalls, as [`SparseOt::solve_on`] does for matrices (the tolerance defaults to the
    /// f32 floor, [`crate::DEFAULT_TOL_F32`] × the largest mass, unless one was set). The reported numbers
    /// are measured in f64 on the host and the status is verified there. The device computes each entry in
    /// f32 from centred coordinates, so an entry's rounding is f32's unit roundoff times its size: for
    /// clouds far apart (costs large against their spread) prefer the CPU, which removes the common part
    /// of the costs exactly.
    ///
    /// Errors: those of [`SparseOt::solve_points`]; device limits ([`crate::Error::DeviceLimit`]).
    pub fn solve_points_on(&self, problem: &PointProblem, device: &Device) -> Result<Solution> {
        counting(|| points::solve(self, problem, &device.target()))
    }

    /// Async [`SparseOt::solve_on`]: the solve runs on a thread of its own (with copies of the
    /// configuration and the problem), and the future resolves when it is done, so polling never blocks the
    /// executor's thread, on the CPU or on a GPU (whose native waits block the solving thread only). The
    /// future is `Send`.
    ///
    /// Errors: those of [`SparseOt::solve_on`]; [`crate::Error::Unavailable`] if no thread can be started.
    pub async fn solve_on_async(&self, problem: &Problem, device: &Device) -> Result<Solution> {
        let (cfg, problem, device) = (self.clone(), problem.clone(), device.clone());
        off_thread(move || cfg.solve_on(&problem, &device)).await
    }

    /// Solves every problem of the batch on the CPU (in parallel over problems). Entry i is problem i's own
    /// result: a bad problem gives its own `Err`, the others are unaffected. Each entry equals
    /// [`SparseOt::solve`] on [`Batch::problem`]`(i)` exactly.
    pub fn solve_batch(&self, batch: &Batch) -> Vec<Result<Solution>> {
        self.solve_batch_on(batch, &Device::Cpu)
    }

    /// Solves every problem of the batch on `device` with this configuration's solver (L-BFGS, then the
    /// nonsmooth stage or the exact k = 1 path where the single-problem solve uses them). On the CPU this is
    /// [`SparseOt::solve_batch`]. On a GPU the L-BFGS phases of all problems run **in lockstep**: each problem
    /// keeps its own driver (line search, stopping rule, status), and every round is one submission of a
    /// fixed set of dispatches covering the whole batch (at most six, whatever B is), followed by one readback
    /// of eight f32 per problem; each problem's result equals its single-problem GPU solve. Entry i is problem
    /// i's own result: a bad problem gets its own `Err` and does not touch the others.
    ///
    /// The monitor hears of each problem as its result is ready: on the CPU as each problem finishes; on a
    /// GPU as each problem's L-BFGS driver stops (or, when its f32 iteration stalled and is continued on the
    /// CPU, when that is done).
    pub fn solve_batch_on(&self, batch: &Batch, device: &Device) -> Vec<Result<Solution>> {
        counting_batch(|| self.run_batch_on(batch, device))
    }

    fn run_batch_on(&self, batch: &Batch, device: &Device) -> Vec<Result<Solution>> {
        let each = self.for_batch_problems();
        match device.target() {
            Target::Cpu => batch.map_problems(&self.monitor, |p| each.solve(p)),
            #[cfg(feature = "gpu")]
            Target::Gpu(ctx) => {
                let mut out = batch.check_all(gpu::solve_batch(&ctx, self, batch));
                batch.solve_zero_mass_alone(&mut out, |p| each.run_on(p, device));
                out
            }
        }
    }

    /// The mixture-of-experts recipe of the paper on every problem of the batch: Adam ascent on this
    /// configuration's formulation from its warm start (α = 0 by default) with step size `learning_rate`
    /// for at most `steps` steps (β₁ = 0.9, β₂ = 0.999, ε = 1e-8), stopping a problem early when its
    /// gradient's max-norm is ≤ `tol`. The status is `Converged` when the plan's marginal violation is
    /// ≤ `tol`, `MaxIterations` otherwise; `iterations` counts the steps taken.
    ///
    /// On the CPU the problems run in parallel (f64). On a GPU the whole batch is one workspace and each step
    /// is a fixed number of dispatches covering all B problems (f32; potentials, plans and values are read
    /// back once at the end; plan metrics are measured in f64 on the host). There `tol` is raised to the f32
    /// gradient noise, 1e-6 × the problem's largest marginal entry (below it Adam's normalised step would
    /// follow rounding noise at full step size), and a `Converged` status names the tolerance used. The
    /// monitor hears of each finished problem; a cancelled monitor stops the CPU runs at their next step and
    /// keeps a GPU batch (one submission) from starting.
    ///
    /// Errors: a learning rate that is not finite and > 0 (outer `Err`); per problem, its validation errors.
    pub fn solve_batch_adam_on(
        &self,
        batch: &Batch,
        learning_rate: f64,
        steps: usize,
        device: &Device,
    ) -> Result<Vec<Result<Solution>>> {
        let adam = Adam::new(learning_rate, steps)?;
        let each = self.for_batch_problems();
        Ok(match device.target() {
            Target::Cpu => {
                batch.map_problems(&self.monitor, |p| p.check(adam::solve(&each, adam, p)?))
            }
            #[cfg(feature = "gpu")]
            Target::Gpu(ctx) => {
                counting_batch(|| batch.check_all(gpu::adam::solve_batch(&ctx, self, adam, batch)))
            }
        })
    }

    /// Solves sparsity-constrained (or quadratic) OT on data already in GPU buffers on `ctx`'s device,
    /// column sparsity only, and returns the potentials and the plan as new GPU buffers (nothing but a few
    /// scalars per L-BFGS evaluation crosses to the host). Results are f32. The monitor can cancel it
    /// between rounds; it hears of no steps.
    ///
    /// Errors: shape/usage mismatches of the buffers, k = 0 or k > m, a warm start of the wrong length,
    /// row sparsity (not supported here; transpose the cost instead), device limits.
    #[cfg(feature = "gpu")]
    pub fn solve_buffers(
        &self,
        ctx: &crate::gpu::context::GpuContext,
        input: &crate::gpu::problem::GpuProblem<'_>,
    ) -> Result<GpuSparseOutput> {
        gpu::solve_buffers(ctx, self, input)
    }
}
