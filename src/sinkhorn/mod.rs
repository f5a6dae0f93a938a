//! Entropic OT by log-domain Sinkhorn: the [`Sinkhorn`] configuration and every entry point of the family.
//!
//! It solves min ⟨T, C⟩ + ε Σ T_ij (log T_ij − 1) over plans with marginals a and b, whose optimum is
//! T_ij = exp((f_i + g_j − C_ij)/ε) for the potentials (f, g) that Sinkhorn's alternating updates find.
//! Layout of the family: `settings` (the configuration and its builders; this file holds the entry
//! points), `rules` (the stopping check, the ε schedule, validation and the assembly of a
//! [`Solution`] from potentials, shared by both backends), `cpu` (f64 or f32 exponentials, fused sweeps),
//! `overrelax` (the CPU loop's acceleration of slow stages), `newton` (the CPU finish of stages too slow
//! for the budget), `expsum` (the vectorised exponential sums),
//! `gpu` (batched kernels, f32).

mod cpu;
pub(crate) mod expsum;
#[cfg(feature = "gpu")]
mod gpu;
mod newton;
mod overrelax;
mod points;
pub(crate) mod rules;
pub(crate) mod settings;

use crate::batch::Batch;
use crate::device::{counting, counting_batch, off_thread, Device, Target};
use crate::error::Result;
use crate::points::{PointProblem, PointSolution};
use crate::problem::Problem;
use crate::solution::Solution;

#[cfg(feature = "gpu")]
pub use gpu::GpuSinkhornOutput;
pub use settings::{Precision, Sinkhorn, DEFAULT_SINKHORN_MAX_ITER};

impl Sinkhorn {
    /// Solves on the CPU.
    ///
    /// Solved to a tolerance, a dense problem of at most 2²² entries whose last ε stage converges too slowly
    /// for the iteration budget (its measured rate projects past the limit, as at small ε or with very
    /// uneven masses) is finished by Newton's method on the dual: at most 50 steps, each a conjugate-gradient
    /// solve with the plan's Hessian and a line search, counted as iterations; Sinkhorn keeps 50 iterations
    /// of its budget for them. The solution's monitor stage for those steps is "sinkhorn newton".
    pub fn solve(&self, problem: &Problem) -> Result<Solution> {
        self.solve_on(problem, &Device::Cpu)
    }

    /// Solves on `device` (GPU results are f32; `Solution::device` says where it ran).
    pub fn solve_on(&self, problem: &Problem, device: &Device) -> Result<Solution> {
        counting(|| self.run_on(problem, device))
    }

    /// [`Self::solve_on`] without the GPU work counted (zero-mass entries call it again on the rest).
    fn run_on(&self, problem: &Problem, device: &Device) -> Result<Solution> {
        let target = device.target();
        // Shift first, then remove zero masses: the plan of the full problem is assembled from potentials
        // of the shifted problem's size (unshifted ones as large as a shift of 1e6 would lose ~1e-10 of each
        // exponent's absolute value, far more than the tolerance once divided by a small ε).
        problem.solve_conditioned(|p, shift| {
            let mut shifted = None;
            if shift != 0.0 {
                let mut cfg = self.clone();
                if let Some((f, _)) = &mut cfg.warm {
                    f.mapv_inplace(|x| x - shift);
                }
                shifted = Some(cfg);
            }
            let cfg = shifted.as_ref().unwrap_or(self);
            if let Some(sol) = cfg.solve_without_zero_mass(p, device) {
                return sol;
            }
            match &target {
                Target::Cpu => cpu::solve(cfg, p),
                #[cfg(feature = "gpu")]
                Target::Gpu(ctx) => gpu::solve(ctx, cfg, p),
            }
        })
    }

    /// Sinkhorn takes logarithms of the marginals: zero entries carry no mass, so their rows and columns
    /// are removed, the rest is solved, and the potentials are spread back with values that put no mass
    /// there (every exponent below −800, which is 0 in f64; [`crate::problem::Reduced::spread`]), the plan
    /// and report assembled on the full problem. None when there is nothing to remove.
    fn solve_without_zero_mass(
        &self,
        problem: &Problem,
        device: &Device,
    ) -> Option<Result<Solution>> {
        let reduced = problem.without_zero_mass(true, true)?;
        let mut cfg = self.clone();
        if let Some((f, g)) = &self.warm {
            if f.len() == problem.m() && g.len() == problem.n() {
                let pick =
                    |v: &ndarray::Array1<f64>, kept: &[usize]| kept.iter().map(|&i| v[i]).collect();
                cfg.warm = Some((pick(f, &reduced.rows), pick(g, &reduced.cols)));
            }
        }
        Some((|| {
            let sol = cfg.run_on(&reduced.problem, device)?;
            let (f, g) = reduced.spread(problem, &sol.alpha, &sol.beta, 800.0 * self.epsilon);
            let full = rules::assemble(
                self,
                problem,
                f,
                g,
                sol.iterations,
                sol.termination,
                sol.device,
            );
            problem.check(full)
        })())
    }

    /// This configuration for the problems of a batch: the monitor's cancellation but not its observer (a
    /// batch reports finished problems, not each one's checks).
    fn for_batch_problems(&self) -> Self {
        let mut cfg = self.clone();
        cfg.monitor = self.monitor.quiet();
        cfg
    }

    /// Solves the problem between two point clouds on the CPU, computing the cost from the points as it
    /// goes (tile by tile, never stored): memory is O((m + n) d) and the result keeps the potentials, not
    /// the plan ([`PointSolution::plan_entry`], [`PointSolution::marginals`] and
    /// [`PointSolution::dense_plan`] evaluate it). Same iterations, ε schedule (from the cost's range, or a
    /// bound on it beyond 10⁷ pairs), stopping rule, warm start and precision as [`Sinkhorn::solve`]; the
    /// reported numbers are measured pair by pair in f64.
    ///
    /// Errors: a zero mass ([`crate::Error::ZeroMass`]: Sinkhorn takes logarithms; drop the point), a warm
    /// start of the wrong length, non-finite results.
    pub fn solve_points(&self, problem: &PointProblem) -> Result<PointSolution> {
        self.solve_points_on(problem, &Device::Cpu)
    }

    /// [`Sinkhorn::solve_points`] on `device`. On a GPU the kernels compute every cost entry from the
    /// points (f32, no matrix in any buffer: [`crate::GpuWork::cost_bytes_read`] is 0) with the stopping
    /// rule and ε schedule of [`Sinkhorn::solve_on`]; the reported numbers are measured on the host in f64
    /// from the potentials, and the status is verified there.
    ///
    /// Errors: those of [`Sinkhorn::solve_points`]; device limits ([`crate::Error::DeviceLimit`]).
    pub fn solve_points_on(
        &self,
        problem: &PointProblem,
        device: &Device,
    ) -> Result<PointSolution> {
        crate::problem::require_positive("a", problem.a(), "Sinkhorn", "it takes log a_i")?;
        crate::problem::require_positive("b", problem.b(), "Sinkhorn", "it takes log b_j")?;
        match device.target() {
            Target::Cpu => points::solve(self, problem),
            #[cfg(feature = "gpu")]
            Target::Gpu(ctx) => {
                let (out, work) =
                    crate::device::measured(|| gpu::solve_points(&ctx, self, problem));
                out.map(|mut s| {
                    s.gpu_work = Some(work);
                    s
                })
            }
        }
    }

    /// Async [`Sinkhorn::solve_on`], on a thread of its own as [`crate::SparseOt::solve_on_async`].
    pub async fn solve_on_async(&self, problem: &Problem, device: &Device) -> Result<Solution> {
        let (cfg, problem, device) = (self.clone(), problem.clone(), device.clone());
        off_thread(move || cfg.solve_on(&problem, &device)).await
    }

    /// Solves every problem of the batch on the CPU (in parallel over problems); per-problem results as
    /// [`crate::SparseOt::solve_batch`].
    pub fn solve_batch(&self, batch: &Batch) -> Vec<Result<Solution>> {
        self.solve_batch_on(batch, &Device::Cpu)
    }

    /// Solves every problem of the batch on `device`. On the CPU this is [`Sinkhorn::solve_batch`]. On a GPU
    /// the whole batch is one workspace and every iteration is two dispatches (three for rows beyond 16 384
    /// entries) covering all B problems (f32), reading each cost once (twice beyond 16 384):
    /// a round of up to `check_every` iterations is one submission, after which the B row-marginal errors
    /// are read back together. Each problem keeps its own ε schedule (it depends on its cost range), stage,
    /// iteration count and [`crate::Termination`]; a problem that converged is frozen on the device while
    /// the others go on, and its result equals [`Sinkhorn::solve_on`] on [`Batch::problem`]`(i)` on the same
    /// device bit for bit. Entry i is problem i's own result: a problem that fails validation gets its own
    /// `Err` and is not uploaded; the others are unaffected. A batch beyond the device's limits (B × m × n
    /// f32 costs in one storage binding, B ≤ `max_compute_workgroups_per_dimension`) gets
    /// [`crate::Error::DeviceLimit`] on every valid problem.
    ///
    /// The monitor hears of each problem as its result is ready (on a GPU: when it converges at a check, or
    /// when the iteration limit ends the run).
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

    /// Log-domain Sinkhorn on data already in GPU buffers on `ctx`'s device; returns the potentials as new
    /// GPU buffers. Only the cost range (once) and the marginal error (every `check_every` iterations) are
    /// read back. f32. The monitor can cancel it at a check; it hears of no steps.
    ///
    /// Errors: buffer sizes that do not match the shape, a warm start of the wrong length, device limits.
    /// The values are not checked (see [`crate::gpu::GpuProblem`]); `a` and `b` must be positive (their
    /// logs are taken).
    #[cfg(feature = "gpu")]
    pub fn solve_buffers(
        &self,
        ctx: &crate::gpu::context::GpuContext,
        input: &crate::gpu::problem::GpuProblem<'_>,
    ) -> Result<GpuSinkhornOutput> {
        gpu::solve_buffers(ctx, self, input)
    }
}
