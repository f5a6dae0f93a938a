//! The router recipe (Adam on the sparse semi-dual or dual, a fixed number of steps; `sparse::adam`) for a
//! whole [`Batch`] on the GPU (`shaders/adam.wgsl` + the batched kernels of `shaders/sparse_dual.wgsl`).
//!
//! All B problems share one workspace: costs, marginals, potentials and moments lie back to back and every
//! kernel runs the B problems along `workgroup_id.z`. Problems small enough for one workgroup (a router
//! group: 256 tokens × 32 experts is 8192 entries) run the whole recipe, every step and the evaluation at
//! the final point, in one `recipe` dispatch, one workgroup per problem ([`fused_workgroup`]); larger ones
//! take three dispatches per step whatever B is (column pass, row pass, Adam update). All steps and the
//! final evaluation and plan extraction are recorded into one submission, and the potentials, the
//! k-per-column plans, the objective values and the step counts are read back once at the end. The host
//! then builds each problem's [`Solution`] as the single-problem GPU path does
//! (plan compressed, cost and marginal errors measured in f64 against the f64 problem).

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::gpu::buffers::{self, Pass};
use crate::gpu::context::{GpuContext, WorkspaceKey};
use crate::gpu::kernels::Kernel;
use crate::problem::Problem;
use crate::solution::{Formulation, Solution, Termination};
use crate::sparse::adam::{bias_correction, set_termination, Adam, BETA1, BETA2, EPS};
use crate::sparse::gpu::batch::{self as problems, Run, Valid};
use crate::sparse::gpu::{check_batch, read, SparseWorkspace};
use crate::sparse::settings::SparseOt;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AdamParams {
    dim: u32,
    steps: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    _pad: [u32; 2],
}

/// Words of one `AdamState` (steps, stopped, tol, pad).
const STATE_WORDS: usize = 4;

/// Relative noise of the f32 gradient T1 − a (row sums of a few f32 terms, ≈ 16 × f32 unit roundoff): a
/// problem stops when max|g| ≤ max(tol, this × its largest marginal entry), since below that the f32
/// gradient is rounding noise and Adam's normalised step would follow the noise at full step size.
const F32_GRADIENT_NOISE: f64 = 1e-6;

/// Most steps recorded into one submission (the recipe uses 20; the bias table holds 2 f32 per step).
const MAX_STEPS: usize = 1 << 20;

/// Dispatches per Adam step, whatever the batch size (column pass, row pass, update), where the recipe is
/// not fused.
pub(crate) const DISPATCHES_PER_STEP: usize = 3;

/// Largest problem (m·n cost entries) whose recipe runs fused, one workgroup per problem. The fused kernel
/// trades the parallelism of many workgroups per problem for the absence of 3 dispatches per step: right
/// for a router's many small groups, wrong for one large problem. 2^15 entries (128 KB of f32 cost) covers
/// the router's groups (256 × 32 = 8192) with room; the bound is a judgement, not a measurement (no
/// hardware GPU was at hand).
const FUSED_MAX_ENTRIES: usize = 1 << 15;

/// Storage buffers the fused `recipe` binds (`shaders/sparse_dual.wgsl`, bindings 1–16 less the uniforms
/// and the four the recipe does not use).
const FUSED_STORAGE_BUFFERS: u32 = 11;

/// The workgroup size of the fused recipe for problems of m × n, or `None` where they take the unfused
/// path. Every column is evaluated at once by its own segment of seg threads (seg the smallest power of two
/// with seg · 16 ≥ m, so the column sits in registers), so the workgroup is seg times n rounded up to a power
/// of two (at least the default size); it must fit the device, as must the kernel's bindings (a device
/// created by the application may have lower limits than the adapter), and the problem must be small
/// ([`FUSED_MAX_ENTRIES`]).
fn fused_workgroup(ctx: &GpuContext, m: usize, n: usize) -> Option<u32> {
    if m.saturating_mul(n) > FUSED_MAX_ENTRIES
        || ctx.limits().max_storage_buffers_per_shader_stage < FUSED_STORAGE_BUFFERS
    {
        return None;
    }
    let seg = m
        .div_ceil(super::COLUMN_REGISTERS)
        .max(1)
        .next_power_of_two();
    let wg = (seg * n.next_power_of_two()).max(crate::gpu::context::WORKGROUP as usize);
    (wg <= ctx.max_workgroup() as usize).then_some(wg as u32)
}

/// The sparse objective's workspace for B problems plus the Adam moments and per-problem state.
pub(crate) struct AdamWorkspace {
    pub(crate) dual: SparseWorkspace,
    params: wgpu::Buffer,
    m1: wgpu::Buffer,
    m2: wgpu::Buffer,
    state: wgpu::Buffer,
    bias: wgpu::Buffer,
    step: Pass,
    /// The fused recipe, where the problems fit ([`fused_workgroup`]).
    recipe: Option<Pass>,
}

impl AdamWorkspace {
    pub(crate) fn new(
        ctx: &GpuContext,
        shape: (usize, usize, usize),
        dual: bool,
        nb: usize,
    ) -> Result<Self> {
        // L-BFGS memory 0: only the trial point and its gradient of the L-BFGS vectors are used.
        let ws = SparseWorkspace::batched(ctx, shape, dual, 0, nb, None)?;
        let len = nb * ws.dim();
        let params = buffers::uniform(
            ctx,
            "adam params",
            &<AdamParams as bytemuck::Zeroable>::zeroed(),
        );
        let m1 = buffers::storage(ctx, "adam m1", len);
        let m2 = buffers::storage(ctx, "adam m2", len);
        let state = buffers::storage(ctx, "adam state", nb * STATE_WORDS);
        let bias = buffers::storage(ctx, "adam bias corrections", 0);
        let bufs = [&params, &m1, &m2, &state, &bias];
        let step = Self::step_pass(ctx, &ws, bufs, nb)?;
        let recipe = Self::recipe_pass(ctx, &ws, bufs, nb)?;
        Ok(Self {
            dual: ws,
            params,
            m1,
            m2,
            state,
            bias,
            step,
            recipe,
        })
    }

    fn recipe_pass(
        ctx: &GpuContext,
        ws: &SparseWorkspace,
        [params, m1, m2, state, bias]: [&wgpu::Buffer; 5],
        nb: usize,
    ) -> Result<Option<Pass>> {
        let Some(wg) = fused_workgroup(ctx, ws.m, ws.n) else {
            return Ok(None);
        };
        let pass = Pass::per_workgroup_sized(
            ctx,
            Kernel::Recipe,
            wg,
            &[
                (0, &ws.params),
                (1, ws.cost.matrix()?),
                (2, &ws.lbfgs.xt),
                (3, &ws.a),
                (4, &ws.b),
                (5, &ws.cols),
                (6, &ws.lbfgs.gt),
                (11, &ws.active),
                (12, params),
                (13, m1),
                (14, m2),
                (15, state),
                (16, bias),
            ],
            1,
        )?;
        Ok(Some(pass.batched(nb)))
    }

    fn step_pass(
        ctx: &GpuContext,
        ws: &SparseWorkspace,
        [params, m1, m2, state, bias]: [&wgpu::Buffer; 5],
        nb: usize,
    ) -> Result<Pass> {
        Ok(Pass::single(
            ctx,
            Kernel::AdamStep,
            &[
                (0, params),
                (1, &ws.lbfgs.xt),
                (2, &ws.lbfgs.gt),
                (3, m1),
                (4, m2),
                (5, state),
                (6, bias),
            ],
        )?
        .batched(nb))
    }

    /// Uploads the settings and bias table of a run of `steps` steps (the table grows when needed).
    pub(crate) fn configure(&mut self, ctx: &GpuContext, adam: Adam, nb: usize) -> Result<()> {
        if adam.steps > MAX_STEPS {
            return Err(Error::DeviceLimit {
                what: "Adam steps in one GPU submission",
                limit: MAX_STEPS as u64,
                needed: adam.steps as u64,
            });
        }
        let table: Vec<f32> = (1..=adam.steps)
            .flat_map(|t| {
                let (c1, c2) = bias_correction(t);
                [c1 as f32, c2 as f32]
            })
            .collect();
        if self.bias.size() < buffers::words(table.len()) {
            self.bias = buffers::storage(ctx, "adam bias corrections", table.len());
            let bufs = [&self.params, &self.m1, &self.m2, &self.state, &self.bias];
            self.step = Self::step_pass(ctx, &self.dual, bufs, nb)?;
            self.recipe = Self::recipe_pass(ctx, &self.dual, bufs, nb)?;
        }
        // Each evaluation of the fused recipe reads every column once into registers and once for the row
        // sums: counted for the whole budget of steps (a problem that stops early skips the rest).
        let evaluations = adam.steps as u64 + 1;
        let entry_bytes = 4 * (self.dual.m * self.dual.n) as u64;
        self.recipe = self
            .recipe
            .take()
            .map(|p| p.reads_cost(2 * evaluations * entry_bytes));
        buffers::upload(ctx, &self.bias, &table);
        let p = AdamParams {
            dim: self.dual.dim() as u32,
            steps: adam.steps as u32,
            lr: adam.learning_rate as f32,
            beta1: BETA1 as f32,
            beta2: BETA2 as f32,
            eps: EPS as f32,
            _pad: [0; 2],
        };
        ctx.queue()
            .write_buffer(&self.params, 0, bytemuck::bytes_of(&p));
        Ok(())
    }
}

/// Runs the recipe on every problem of `batch`; entry i is problem i's result (validation errors are per
/// problem, as on the CPU). Device failures are reported on every problem that went to the device.
pub(crate) fn solve_batch(
    ctx: &GpuContext,
    cfg: &SparseOt,
    adam: Adam,
    batch: &Batch,
) -> Vec<Result<Solution>> {
    let mut prep = problems::prepare(cfg, batch.problems(), &cfg.monitor);
    if prep.valid.is_empty() {
        return prep.into_results(Ok(()));
    }
    // The whole recipe is one submission: a monitor cancelled before it takes no step and reports the
    // start point, cancelled.
    let cancelled = cfg.monitor.is_cancelled();
    let adam = if cancelled {
        Adam { steps: 0, ..adam }
    } else {
        adam
    };
    let valid: Vec<&Valid<'_>> = prep.valid.iter().collect();
    match run(ctx, &prep.cfg, adam, &valid, prep.k) {
        Ok(sols) => {
            for (v, mut sol) in sols.into_iter().enumerate() {
                if cancelled && !sol.converged() {
                    sol.termination = Termination::Cancelled;
                }
                prep.set(cfg, v, Ok(sol));
                prep.results.tick();
            }
            prep.into_results(Ok(()))
        }
        Err(e) => prep.into_results(Err(e)),
    }
}

/// Uploads the valid problems, records all steps into one submission and builds the solutions.
fn run(
    ctx: &GpuContext,
    cfg: &SparseOt,
    adam: Adam,
    valid: &[&Valid<'_>],
    k: usize,
) -> Result<Vec<Solution>> {
    let nb = valid.len();
    let (m, n) = (valid[0].columns.m(), valid[0].columns.n());
    check_batch(ctx, nb, (m, n, k))?;
    let dual = cfg.formulation == Formulation::Dual;
    let key = WorkspaceKey::AdamBatch {
        m,
        n,
        k,
        dual,
        batch: nb,
    };
    let mut ws = ctx.take_workspace(key, || AdamWorkspace::new(ctx, (m, n, k), dual, nb))?;
    ws.dual.set_gamma(ctx, cfg.gamma);
    let out = ws
        .configure(ctx, adam, nb)
        .and_then(|()| run_in(ctx, &ws, cfg, adam, valid));
    ctx.put_workspace(key, ws);
    out
}

fn run_in(
    ctx: &GpuContext,
    ws: &AdamWorkspace,
    cfg: &SparseOt,
    adam: Adam,
    valid: &[&Valid<'_>],
) -> Result<Vec<Solution>> {
    let d = &ws.dual;
    let nb = valid.len();
    let tols: Vec<f64> = valid
        .iter()
        .map(|v| stop_tolerance(cfg, &v.columns))
        .collect();
    let x0 = problems::upload(ctx, d, valid)?;
    ws.start(ctx, &tols, Some(&x0));
    buffers::submit(ctx, buffers::encode(ctx, &ws.passes(adam, true)));
    let scalars: Vec<f32> = read(ctx, d, &d.scalars, 0, nb * 4)?;
    let state: Vec<u32> = read(ctx, d, &ws.state, 0, nb * STATE_WORDS)?;
    let runs = (0..nb)
        .map(|p| Run {
            termination: Termination::MaxIterations,
            iterations: state[p * STATE_WORDS] as usize,
            value: -f64::from(scalars[4 * p]),
        })
        .collect();
    let mut sols = problems::read_valid(ctx, d, &d.lbfgs.xt, cfg, valid, runs)?;
    for (sol, &tol) in sols.iter_mut().zip(&tols) {
        set_termination(cfg, tol, sol);
    }
    Ok(sols)
}

impl AdamWorkspace {
    /// Resets the per-problem state (stopping tolerance `tols[p]`, no steps taken) and the moments, and
    /// sets the potentials to `x0` (B × dim) or to zero.
    pub(crate) fn start(&self, ctx: &GpuContext, tols: &[f64], x0: Option<&[f32]>) {
        // steps = 0 and stopped = 0 are the bit patterns of 0.0.
        let state: Vec<f32> = tols
            .iter()
            .flat_map(|&t| [0.0, 0.0, t as f32, 0.0])
            .collect();
        buffers::upload(ctx, &self.state, &state);
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        for buf in [&self.m1, &self.m2] {
            enc.clear_buffer(buf, 0, None);
        }
        match x0 {
            Some(x0) => buffers::upload(ctx, &self.dual.lbfgs.xt, x0),
            None => enc.clear_buffer(&self.dual.lbfgs.xt, 0, None),
        }
        buffers::submit(ctx, enc);
    }

    /// The passes of a whole run: the steps, then the column states and plans at the final potentials, and
    /// with `value` the objective there (record them into one submission). Fused: `recipe`, `finalize`,
    /// `extract`.
    pub(crate) fn passes(&self, adam: Adam, value: bool) -> Vec<&Pass> {
        let d = &self.dual;
        let mut passes: Vec<&Pass> = Vec::with_capacity(DISPATCHES_PER_STEP * adam.steps + 4);
        match &self.recipe {
            Some(recipe) => passes.push(recipe),
            None => {
                for _ in 0..adam.steps {
                    passes.extend([&d.column, &d.row, &self.step]);
                }
                passes.extend([&d.column, &d.row]);
            }
        }
        if value {
            passes.push(&d.finalize);
        }
        passes.push(&d.extract);
        passes
    }
}

/// The tolerance a problem's run uses on the device: `cfg.tol`, raised to the f32 gradient noise of its
/// marginals (see [`F32_GRADIENT_NOISE`]). The reported criterion carries the tolerance used.
fn stop_tolerance(cfg: &SparseOt, p: &Problem) -> f64 {
    stop_tolerance_for(cfg, p.largest_marginal())
}

/// [`stop_tolerance`] for a problem whose largest marginal entry is `scale`.
pub(crate) fn stop_tolerance_for(cfg: &SparseOt, scale: f64) -> f64 {
    cfg.tol.max(F32_GRADIENT_NOISE * scale)
}
