//! Where a solve runs: [`Device`] and the `solve_on` family of entry points.

#[cfg(feature = "gpu")]
use std::sync::Arc;

use crate::batch::{Batch, BatchProgress};
use crate::config::{Observer, Sinkhorn, SparseOt};
use crate::cpu::adam::{self, Adam};
use crate::error::{positive, Result};
#[cfg(feature = "gpu")]
use crate::gpu::GpuContext;
use crate::problem::Problem;
use crate::solution::Solution;

/// The device a solve runs on, chosen by the caller.
///
/// GPU solves compute in **f32** (see [`crate::gpu`]); the CPU path is the f64 reference.
#[derive(Debug, Clone, Default)]
pub enum Device {
    /// The CPU reference path (f64, rayon).
    #[default]
    Cpu,
    /// A GPU context (create one with [`GpuContext::new`], adopt an app's device with
    /// [`GpuContext::from_device`], or use [`Device::gpu`] for the process-wide one).
    #[cfg(feature = "gpu")]
    Gpu(Arc<GpuContext>),
    /// The process-wide GPU context when a hardware adapter exists, else the CPU. A software adapter that
    /// runs on the CPU (e.g. Mesa's lavapipe) is not chosen automatically: the f64 CPU path is faster and
    /// more accurate than an emulated GPU; ask for it explicitly with [`Device::gpu`] if wanted.
    Auto,
}

/// What a [`Device`] resolves to for one solve.
enum Target {
    Cpu,
    #[cfg(feature = "gpu")]
    Gpu(Arc<GpuContext>),
}

impl Device {
    /// The process-wide GPU context ([`GpuContext::shared`]). Errors: [`crate::Error::NoAdapter`].
    #[cfg(feature = "gpu")]
    pub fn gpu() -> Result<Self> {
        Ok(Device::Gpu(GpuContext::shared()?))
    }

    /// Whether solves on this device run on a GPU (for `Auto`: whether an adapter was found).
    pub fn is_gpu(&self) -> bool {
        !matches!(self.target(), Target::Cpu)
    }

    fn target(&self) -> Target {
        match self {
            Device::Cpu => Target::Cpu,
            #[cfg(feature = "gpu")]
            Device::Gpu(ctx) => Target::Gpu(ctx.clone()),
            #[cfg(feature = "gpu")]
            Device::Auto => match GpuContext::shared() {
                Ok(ctx) if !ctx.is_software() => Target::Gpu(ctx),
                _ => Target::Cpu,
            },
            #[cfg(not(feature = "gpu"))]
            Device::Auto => Target::Cpu,
        }
    }
}

impl SparseOt {
    /// Solves on `device` (GPU results are f32; `Solution::device` names the adapter).
    pub fn solve_on(&self, problem: &Problem, device: &Device) -> Result<Solution> {
        self.solve_on_observed(problem, device, &mut |_| {})
    }

    /// [`SparseOt::solve_on`] with an observer called after every iteration.
    pub fn solve_on_observed(
        &self,
        problem: &Problem,
        device: &Device,
        observer: Observer<'_>,
    ) -> Result<Solution> {
        match device.target() {
            Target::Cpu => crate::cpu::sparse::solve(self, problem, observer),
            #[cfg(feature = "gpu")]
            Target::Gpu(ctx) => crate::gpu::sparse::solve(&ctx, self, problem, observer),
        }
    }

    /// Solves every problem of the batch on `device` with this configuration's solver (L-BFGS, then the
    /// nonsmooth finish or the exact k = 1 path where the single-problem solve uses them). On the CPU this is
    /// [`SparseOt::solve_batch`]. On a GPU the L-BFGS phases of all problems run **in lockstep**: each problem
    /// keeps its own driver (line search, stopping rule, status), and every round is one submission of a
    /// fixed set of dispatches covering the whole batch (at most six, whatever B is), followed by one readback
    /// of eight f32 per problem; each problem's result equals its single-problem GPU solve. Entry i is problem
    /// i's own result: a bad problem gets its own `Err` and does not touch the others.
    pub fn solve_batch_on(&self, batch: &Batch, device: &Device) -> Vec<Result<Solution>> {
        self.solve_batch_on_observed(batch, device, &|_, _| {})
    }

    /// [`SparseOt::solve_batch_on`], calling `progress(done, total)` each time a problem's result is ready:
    /// on the CPU as each problem finishes; on a GPU as each problem's L-BFGS driver stops (or, when its f32
    /// iteration stalled and is finished on the CPU, when that finish is done).
    pub fn solve_batch_on_observed(
        &self,
        batch: &Batch,
        device: &Device,
        progress: BatchProgress<'_>,
    ) -> Vec<Result<Solution>> {
        match device.target() {
            Target::Cpu => batch.map_problems_observed(|p| self.solve(p), progress),
            #[cfg(feature = "gpu")]
            Target::Gpu(ctx) => crate::gpu::sparse::solve_batch(&ctx, self, batch, progress),
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
    /// follow rounding noise at full step size), and a `Converged` status names the tolerance used.
    ///
    /// Errors: a learning rate that is not finite and > 0 (outer `Err`); per problem, its validation errors.
    pub fn solve_batch_adam_on(
        &self,
        batch: &Batch,
        learning_rate: f64,
        steps: usize,
        device: &Device,
    ) -> Result<Vec<Result<Solution>>> {
        let adam = Adam {
            learning_rate: positive("learning_rate", learning_rate)?,
            steps,
        };
        Ok(match device.target() {
            Target::Cpu => batch.map_problems(|p| adam::solve(self, adam, p)),
            #[cfg(feature = "gpu")]
            Target::Gpu(ctx) => crate::gpu::adam::solve_batch(&ctx, self, adam, batch),
        })
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
}

impl Sinkhorn {
    /// Solves on `device` (GPU results are f32; `Solution::device` names the adapter).
    pub fn solve_on(&self, problem: &Problem, device: &Device) -> Result<Solution> {
        self.solve_on_observed(problem, device, &mut |_| {})
    }

    /// [`Sinkhorn::solve_on`] with an observer called at every marginal-error check.
    pub fn solve_on_observed(
        &self,
        problem: &Problem,
        device: &Device,
        observer: Observer<'_>,
    ) -> Result<Solution> {
        match device.target() {
            Target::Cpu => crate::cpu::sinkhorn::solve(self, problem, observer),
            #[cfg(feature = "gpu")]
            Target::Gpu(ctx) => crate::gpu::sinkhorn::solve(&ctx, self, problem, observer),
        }
    }

    /// Solves every problem of the batch on `device`. On the CPU this is [`Sinkhorn::solve_batch`]. On a GPU
    /// the whole batch is one workspace and every iteration is two dispatches covering all B problems (f32):
    /// a round of up to `check_every` iterations is one submission, after which the B row-marginal errors
    /// are read back together. Each problem keeps its own ε schedule (it depends on its cost range), stage,
    /// iteration count and [`crate::Termination`]; a problem that converged is frozen on the device while
    /// the others go on, and its result equals [`Sinkhorn::solve_on`] on [`Batch::problem`]`(i)` on the same
    /// device bit for bit. Entry i is problem i's own result: a problem that fails validation gets its own
    /// `Err` and is not uploaded; the others are unaffected. A batch beyond the device's limits (B × m × n
    /// f32 costs in one storage binding, B ≤ `max_compute_workgroups_per_dimension`) gets
    /// [`crate::Error::DeviceLimit`] on every valid problem.
    pub fn solve_batch_on(&self, batch: &Batch, device: &Device) -> Vec<Result<Solution>> {
        self.solve_batch_on_observed(batch, device, &|_, _| {})
    }

    /// [`Sinkhorn::solve_batch_on`], calling `progress(done, total)` each time a problem's result is ready
    /// (on a GPU: when it converges at a check, or when the iteration limit ends the run).
    pub fn solve_batch_on_observed(
        &self,
        batch: &Batch,
        device: &Device,
        progress: BatchProgress<'_>,
    ) -> Vec<Result<Solution>> {
        match device.target() {
            Target::Cpu => batch.map_problems_observed(|p| self.solve(p), progress),
            #[cfg(feature = "gpu")]
            Target::Gpu(ctx) => crate::gpu::sinkhorn::solve_batch(&ctx, self, batch, progress),
        }
    }

    /// Async [`Sinkhorn::solve_on`], on a thread of its own as [`SparseOt::solve_on_async`].
    pub async fn solve_on_async(&self, problem: &Problem, device: &Device) -> Result<Solution> {
        let (cfg, problem, device) = (self.clone(), problem.clone(), device.clone());
        off_thread(move || cfg.solve_on(&problem, &device)).await
    }
}

/// Runs `solve` on a new thread; the future resolves with its result (the executor's thread never waits).
async fn off_thread(solve: impl FnOnce() -> Result<Solution> + Send + 'static) -> Result<Solution> {
    let (tx, rx) = futures_channel::oneshot::channel();
    std::thread::Builder::new()
        .name("sparse-ot solve".into())
        .spawn(move || {
            // The receiver may be gone (the future was dropped): nobody wants the result then.
            let _ = tx.send(solve());
        })
        .map_err(|e| crate::Error::Unavailable {
            what: "a solver thread",
            why: e.to_string(),
        })?;
    rx.await.map_err(|_| crate::Error::Unavailable {
        what: "the solve's result",
        why: "the solver thread ended without one (it panicked)".into(),
    })?
}
