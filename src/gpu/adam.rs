//! The router recipe (Adam on the sparse semi-dual or dual, a fixed number of steps; `src/cpu/adam.rs`) for a
//! whole [`Batch`] on the GPU (`shaders/adam.wgsl` + the batched kernels of `shaders/sparse_dual.wgsl`).
//!
//! All B problems share one workspace: costs, marginals, potentials and moments lie back to back and every
//! kernel runs the B problems along `workgroup_id.z`. A step is three dispatches whatever B is (column pass,
//! row pass, Adam update); all steps and the final evaluation and plan extraction are recorded into one
//! submission, and the potentials, the k-per-column plans, the objective values and the step counts are read
//! back once at the end. The host then builds each problem's [`Solution`] as the single-problem GPU path does
//! (plan compressed, cost and marginal errors measured in f64 against the f64 problem).

use crate::batch::Batch;
use crate::config::SparseOt;
use crate::cpu::adam::{bias_correction, set_termination, Adam, BETA1, BETA2, EPS};
use crate::cpu::sparse::{resolve, transpose_solution};
use crate::error::Result;
use crate::gpu::buffers::{self, Pass};
use crate::gpu::context::{GpuContext, WorkspaceKey};
use crate::gpu::kernels::Kernel;
use crate::gpu::sparse::{build_solution, check_shape, read, Readback, Run, Workspace};
use crate::problem::Problem;
use crate::solution::{Lanes, Solution, Termination};
use crate::Formulation;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
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

/// Dispatches per Adam step, whatever the batch size (column pass, row pass, update).
pub(crate) const DISPATCHES_PER_STEP: usize = 3;

/// The sparse objective's workspace for B problems plus the Adam moments and per-problem state.
struct AdamWorkspace {
    dual: Workspace,
    params: wgpu::Buffer,
    m1: wgpu::Buffer,
    m2: wgpu::Buffer,
    state: wgpu::Buffer,
    bias: wgpu::Buffer,
    step: Pass,
}

impl AdamWorkspace {
    fn new(ctx: &GpuContext, shape: (usize, usize, usize), dual: bool, nb: usize) -> Result<Self> {
        // L-BFGS memory 0: only the trial point and its gradient of the L-BFGS vectors are used.
        let ws = Workspace::batched(ctx, shape, dual, 0, nb)?;
        let len = nb * ws.dim();
        let params = buffers::uniform(
            ctx,
            "adam params",
            &<Params as bytemuck::Zeroable>::zeroed(),
        );
        let m1 = buffers::storage(ctx, "adam m1", len);
        let m2 = buffers::storage(ctx, "adam m2", len);
        let state = buffers::storage(ctx, "adam state", nb * STATE_WORDS);
        let bias = buffers::storage(ctx, "adam bias corrections", 0);
        let step = Self::step_pass(ctx, &ws, [&params, &m1, &m2, &state, &bias], nb)?;
        Ok(Self {
            dual: ws,
            params,
            m1,
            m2,
            state,
            bias,
            step,
        })
    }

    fn step_pass(
        ctx: &GpuContext,
        ws: &Workspace,
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
    fn configure(&mut self, ctx: &GpuContext, adam: Adam, nb: usize) -> Result<()> {
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
        }
        buffers::upload(ctx, &self.bias, &table);
        let p = Params {
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

/// A problem of the batch that passed validation: its index and the column-sparse problem the device solves
/// (the transpose for row sparsity), with the starting point.
struct Valid {
    index: usize,
    columns: Problem,
    x0: Vec<f64>,
}

/// Runs the recipe on every problem of `batch`; entry i is problem i's result (validation errors are per
/// problem, as on the CPU). Device failures are reported on every problem that went to the device.
pub(crate) fn solve_batch(
    ctx: &GpuContext,
    cfg: &SparseOt,
    adam: Adam,
    batch: &Batch,
) -> Vec<Result<Solution>> {
    let col_cfg = match cfg.lanes {
        Lanes::Columns => cfg.clone(),
        Lanes::Rows => {
            let mut t_cfg = cfg.clone();
            t_cfg.warm_alpha = cfg.warm_beta.clone();
            t_cfg.warm_beta = cfg.warm_alpha.clone();
            t_cfg
        }
    };
    let mut results: Vec<Option<Result<Solution>>> = (0..batch.len()).map(|_| None).collect();
    let mut valid = Vec::new();
    let mut k = 0;
    for (index, slot) in results.iter_mut().enumerate() {
        let checked = batch.problem(index).and_then(|given| {
            let (columns, axis) = match cfg.lanes {
                Lanes::Columns => (given, "rows"),
                Lanes::Rows => (given.transposed(), "columns"),
            };
            let r = resolve(&col_cfg, &columns, axis)?;
            Ok((columns, r))
        });
        match checked {
            Ok((columns, r)) => {
                k = r.k;
                valid.push(Valid {
                    index,
                    columns,
                    x0: r.x0,
                });
            }
            Err(e) => *slot = Some(Err(e)),
        }
    }
    if !valid.is_empty() {
        match run(ctx, &col_cfg, adam, &valid, k) {
            Ok(sols) => {
                for (v, mut sol) in valid.iter().zip(sols) {
                    if cfg.lanes == Lanes::Rows {
                        sol = transpose_solution(sol, cfg);
                    }
                    results[v.index] = Some(Ok(sol));
                }
            }
            Err(e) => {
                for v in &valid {
                    results[v.index] = Some(Err(e.clone()));
                }
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every problem is either rejected or solved"))
        .collect()
}

/// Uploads the valid problems, records all steps into one submission and builds the solutions.
fn run(
    ctx: &GpuContext,
    cfg: &SparseOt,
    adam: Adam,
    valid: &[Valid],
    k: usize,
) -> Result<Vec<Solution>> {
    let nb = valid.len();
    let (m, n) = (valid[0].columns.m(), valid[0].columns.n());
    check_shape(ctx, m, n, k)?;
    let per_problem = [
        (
            "max_storage_buffer_binding_size (batch of cost matrices, f32)",
            m * n,
        ),
        (
            "max_storage_buffer_binding_size (batch of plans, k per column)",
            n * k,
        ),
    ];
    for (what, words) in per_problem {
        ctx.check_binding(what, 4 * (nb as u64) * (words as u64))?;
    }
    ctx.check_batch(nb)?;
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
    valid: &[Valid],
) -> Result<Vec<Solution>> {
    let d = &ws.dual;
    let (nb, dim, n, k) = (valid.len(), d.dim(), d.n, d.k);
    let mut cost_t = Vec::with_capacity(nb * d.m * n);
    let (mut a, mut b, mut x0) = (Vec::new(), Vec::new(), Vec::new());
    let mut state = Vec::with_capacity(nb * STATE_WORDS);
    let tols: Vec<f64> = valid
        .iter()
        .map(|v| stop_tolerance(cfg, &v.columns))
        .collect();
    for (v, &tol) in valid.iter().zip(&tols) {
        cost_t.extend(v.columns.cost().t().iter().map(|&c| c as f32));
        a.extend(v.columns.a().iter().map(|&c| c as f32));
        b.extend(v.columns.b().iter().map(|&c| c as f32));
        x0.extend(v.x0.iter().map(|&c| c as f32));
        state.extend([0.0, 0.0, tol as f32, 0.0]);
    }
    // steps = 0 and stopped = 0 are the bit patterns of 0.0.
    buffers::upload(ctx, &ws.state, &state);
    buffers::upload(ctx, &d.cost_t, &cost_t);
    buffers::upload(ctx, &d.a, &a);
    buffers::upload(ctx, &d.b, &b);
    buffers::upload(ctx, &d.lbfgs.xt, &x0);
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    for buf in [&ws.m1, &ws.m2] {
        enc.clear_buffer(buf, 0, None);
    }
    buffers::submit(ctx, enc);
    // Steps, then the objective, column states and plan at the final potentials: one submission.
    let mut passes: Vec<&Pass> = Vec::with_capacity(DISPATCHES_PER_STEP * adam.steps + 4);
    for _ in 0..adam.steps {
        passes.extend([&d.column, &d.row, &ws.step]);
    }
    passes.extend([&d.column, &d.row, &d.finalize, &d.extract]);
    buffers::submit(ctx, buffers::encode(ctx, &passes));
    let x: Vec<f32> = read(ctx, d, &d.lbfgs.xt, 0, nb * dim)?;
    let beta: Vec<f32> = if d.dual {
        Vec::new()
    } else {
        read(ctx, d, &d.beta, 0, nb * n)?
    };
    let values: Vec<f32> = read(ctx, d, &d.plan_values, 0, nb * n * k)?;
    let rows: Vec<u32> = read(ctx, d, &d.plan_rows, 0, nb * n * k)?;
    let scalars: Vec<f32> = read(ctx, d, &d.scalars, 0, nb * 4)?;
    let state: Vec<u32> = read(ctx, d, &ws.state, 0, nb * STATE_WORDS)?;
    let m = d.m;
    Ok(valid
        .iter()
        .enumerate()
        .map(|(p, v)| {
            let xp = &x[p * dim..(p + 1) * dim];
            let data = Readback {
                alpha: &xp[..m],
                beta: if d.dual {
                    &xp[m..]
                } else {
                    &beta[p * n..(p + 1) * n]
                },
                values: &values[p * n * k..(p + 1) * n * k],
                rows: &rows[p * n * k..(p + 1) * n * k],
            };
            let r = Run {
                termination: Termination::MaxIterations,
                iterations: state[p * STATE_WORDS] as usize,
                value: -f64::from(scalars[4 * p]),
            };
            let mut sol = build_solution(ctx, cfg, &v.columns, k, data, r);
            set_termination(cfg, tols[p], &mut sol);
            sol
        })
        .collect())
}

/// The tolerance a problem's run uses on the device: `cfg.tol`, raised to the f32 gradient noise of its
/// marginals (see [`F32_GRADIENT_NOISE`]). The reported criterion carries the tolerance used.
fn stop_tolerance(cfg: &SparseOt, p: &Problem) -> f64 {
    let scale = p
        .a()
        .iter()
        .chain(p.b().iter())
        .fold(0.0f64, |m, &x| m.max(x));
    cfg.tol.max(F32_GRADIENT_NOISE * scale)
}
