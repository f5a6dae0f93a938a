//! Sparsity-constrained and quadratic OT on the GPU (`shaders/sparse_dual.wgsl`): the (semi-)dual objective
//! and gradient as device passes for a batch of B problems of one shape, minimised by one shared-logic
//! L-BFGS driver per problem run in lockstep over [`GpuLbfgs`] (a round is a fixed set of dispatches whatever
//! B is), then the sparse plans extracted on the device (k row indices and values per column). A single
//! problem is the batch B = 1.

use std::borrow::Cow;

use rayon::prelude::*;

use crate::batch::{Batch, BatchProgress};
use crate::config::{Observer, SparseOt};
use crate::error::{Error, Result};
use crate::gpu::buffers::{self, Pass};
use crate::gpu::context::{GpuContext, WorkspaceKey};
use crate::gpu::kernels::Kernel;
use crate::gpu::lbfgs::{DeviceObjective, GpuLbfgs, LbfgsBuffers};
use crate::gpu::problems::{self, Run, Valid};
use crate::lbfgs::{self, Settings, Step};
use crate::problem::Problem;
use crate::solution::{Lanes, Progress, Solution, Termination};
use crate::Formulation;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    mode: u32,
    gamma: f32,
    dim: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct TransposeParams {
    len: u32,
    rows: u32,
    cols: u32,
    _pad: u32,
}

/// Relative noise of objective values computed in f32 (≈ 16 × f32 unit roundoff).
const F32_VALUE_NOISE: f64 = 1e-6;

/// Words of one `ColState` (key, tie, θ, term, σ, 3 pads).
const COL_WORDS: usize = 8;

/// Words per problem an L-BFGS round reads back: four objective scalars and four direction scalars.
const ROUND_WORDS: usize = 8;

/// Buffers and passes of one (m, n, k, formulation, memory), for one problem or a batch of B problems
/// stored back to back (every buffer B times its per-problem length, every pass dispatched with z = B).
pub(crate) struct Workspace {
    pub(super) m: usize,
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) dual: bool,
    params: wgpu::Buffer,
    pub(super) cost_t: wgpu::Buffer,
    pub(super) a: wgpu::Buffer,
    pub(super) b: wgpu::Buffer,
    pub(super) scalars: wgpu::Buffer,
    pub(super) plan_values: wgpu::Buffer,
    pub(super) plan_rows: wgpu::Buffer,
    pub(super) beta: wgpu::Buffer,
    pub(super) staging: wgpu::Buffer,
    /// B u32: nonzero for the problems the next passes evaluate (all, unless an L-BFGS round says otherwise).
    active: wgpu::Buffer,
    /// Problems B.
    pub(super) problems: usize,
    pub(super) lbfgs: LbfgsBuffers,
    pub(super) column: Pass,
    pub(super) row: Pass,
    pub(super) finalize: Pass,
    pub(super) extract: Pass,
}

impl DeviceObjective for Workspace {
    fn passes(&self) -> Vec<&Pass> {
        vec![&self.column, &self.row, &self.finalize]
    }

    fn scalars(&self) -> &wgpu::Buffer {
        &self.scalars
    }

    fn set_active(&self, ctx: &GpuContext, active: &[bool]) {
        let words: Vec<u32> = active.iter().map(|&a| a as u32).collect();
        ctx.queue()
            .write_buffer(&self.active, 0, bytemuck::cast_slice(&words));
    }
}

impl Workspace {
    /// Buffers for `nb` problems of one shape (m, n, k); the L-BFGS vectors hold all of them back to back.
    pub(super) fn batched(
        ctx: &GpuContext,
        (m, n, k): (usize, usize, usize),
        dual: bool,
        memory: usize,
        nb: usize,
    ) -> Result<Self> {
        let dim = if dual { m + n } else { m };
        let params = buffers::uniform(
            ctx,
            "sparse params",
            &Params {
                m: m as u32,
                n: n as u32,
                k: k as u32,
                mode: dual as u32,
                gamma: 1.0,
                dim: dim as u32,
                _pad: [0; 2],
            },
        );
        let cost_t = buffers::storage(ctx, "cost_t", nb * m * n);
        let a = buffers::storage(ctx, "a", nb * m);
        let b = buffers::storage(ctx, "b", nb * n);
        let cols = buffers::storage(ctx, "column states", nb * COL_WORDS * n);
        let scalars = buffers::storage(ctx, "objective scalars", nb * 4);
        let plan_values = buffers::storage(ctx, "plan values", nb * n * k);
        let plan_rows = buffers::storage(ctx, "plan rows", nb * n * k);
        let beta = buffers::storage(ctx, "beta", nb * n);
        let staging = buffers::staging(
            ctx,
            "sparse readback",
            buffers::words(nb * (n * k).max(dim).max(COL_WORDS).max(ROUND_WORDS)),
        );
        let active = buffers::storage(ctx, "active problems", nb);
        buffers::upload_words(ctx, &active, &vec![1u32; nb]);
        let lbfgs = LbfgsBuffers::new(ctx, dim, memory, nb)?;
        let (x, g, d) = (&lbfgs.xt, &lbfgs.gt, &lbfgs.d);
        let column = Pass::per_workgroup(
            ctx,
            Kernel::Column,
            &[
                (0, &params),
                (1, &cost_t),
                (2, x),
                (4, &b),
                (5, &cols),
                (6, g),
                (11, &active),
            ],
            n,
        )?
        .batched(nb);
        let row = Pass::per_thread(
            ctx,
            Kernel::Row,
            &[
                (0, &params),
                (1, &cost_t),
                (2, x),
                (3, &a),
                (5, &cols),
                (6, g),
                (11, &active),
            ],
            m,
        )?
        .batched(nb);
        let finalize = Pass::single(
            ctx,
            Kernel::Finalize,
            &[
                (0, &params),
                (2, x),
                (3, &a),
                (4, &b),
                (5, &cols),
                (6, g),
                (7, d),
                (8, &scalars),
                (11, &active),
            ],
        )?
        .batched(nb);
        let extract = Pass::per_thread(
            ctx,
            Kernel::Extract,
            &[
                (0, &params),
                (1, &cost_t),
                (2, x),
                (5, &cols),
                (8, &plan_values),
                (9, &plan_rows),
                (10, &beta),
                (11, &active),
            ],
            n,
        )?
        .batched(nb);
        Ok(Self {
            m,
            n,
            k,
            dual,
            params,
            cost_t,
            a,
            b,
            scalars,
            plan_values,
            plan_rows,
            beta,
            staging,
            active,
            problems: nb,
            lbfgs,
            column,
            row,
            finalize,
            extract,
        })
    }

    /// Per-problem dimension of the potentials (m, or m + n for the dual).
    pub(super) fn dim(&self) -> usize {
        if self.dual {
            self.m + self.n
        } else {
            self.m
        }
    }

    pub(super) fn set_gamma(&self, ctx: &GpuContext, gamma: f64) {
        let p = Params {
            m: self.m as u32,
            n: self.n as u32,
            k: self.k as u32,
            mode: self.dual as u32,
            gamma: gamma as f32,
            dim: self.dim() as u32,
            _pad: [0; 2],
        };
        ctx.queue()
            .write_buffer(&self.params, 0, bytemuck::bytes_of(&p));
    }
}

pub(super) fn check_shape(ctx: &GpuContext, m: usize, n: usize, k: usize) -> Result<()> {
    ctx.check_binding(
        "max_storage_buffer_binding_size (cost matrix, f32)",
        4 * (m as u64) * (n as u64),
    )?;
    ctx.check_binding(
        "max_storage_buffer_binding_size (plan, k per column)",
        4 * (n as u64) * (k as u64),
    )?;
    ctx.check_lanes("max_compute_workgroups_per_dimension² (columns)", n)
}

/// Checks that `nb` problems of shape (m, n) with k per column fit the device as one batch.
pub(super) fn check_batch(
    ctx: &GpuContext,
    nb: usize,
    (m, n, k): (usize, usize, usize),
) -> Result<()> {
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
        (
            "max_storage_buffer_binding_size (batch of column states)",
            COL_WORDS * n,
        ),
    ];
    for (what, words) in per_problem {
        ctx.check_binding(what, 4 * (nb as u64) * (words as u64))?;
    }
    ctx.check_batch(nb)
}

fn workspace_key(cfg: &SparseOt, (m, n, k): (usize, usize, usize), batch: usize) -> WorkspaceKey {
    WorkspaceKey::Sparse {
        m,
        n,
        k,
        dual: cfg.formulation == Formulation::Dual,
        memory: cfg.memory,
        batch,
    }
}

/// Minimises −S or −D of every problem of the workspace from `x0` (B × dim) with one driver each, in
/// lockstep; then re-evaluates every problem at its returned point and extracts the plans on the device.
/// `observe(p, progress)` sees problem p after each of its accepted steps.
fn run(
    ctx: &GpuContext,
    ws: &Workspace,
    cfg: &SparseOt,
    x0: &[f32],
    observe: &mut dyn FnMut(usize, &Progress),
    finished: &mut dyn FnMut(usize, Termination),
) -> Result<Vec<Run>> {
    ws.set_gamma(ctx, cfg.gamma);
    ws.lbfgs.reset(ctx, x0);
    // f32 objective values: sums of O(m + n) terms carry a relative rounding noise of ~16 u.
    let settings = Settings {
        value_noise: F32_VALUE_NOISE,
        ..Settings::new(cfg.tol, cfg.max_iter)
    };
    let mut backend = GpuLbfgs {
        ctx,
        buf: &ws.lbfgs,
        obj: ws,
        staging: &ws.staging,
        error: None,
    };
    let nb = ws.problems;
    let ends = lbfgs::run_lockstep(
        &vec![settings; nb],
        &mut backend,
        |p, d| {
            observe(
                p,
                &Progress {
                    iteration: d.iterations,
                    value: -d.value,
                    marginal_error: d.grad_norm,
                    stage: "lbfgs (gpu)",
                },
            )
        },
        finished,
    );
    // Objectives, column states and plans at the returned iterates (t = 0 makes the trial point x).
    let at_x = lbfgs::Lockstep::round(
        &mut backend,
        &vec![
            Step {
                evaluate: Some(0.0),
                ..Step::default()
            };
            nb
        ],
    );
    if let Some(e) = backend.error {
        return Err(e);
    }
    buffers::submit(ctx, buffers::encode(ctx, &[&ws.extract]));
    Ok(ends
        .into_iter()
        .zip(at_x)
        .map(|((termination, driver), at)| Run {
            termination,
            iterations: driver.iterations,
            value: at.eval.map_or(f64::NAN, |e| -e.value),
        })
        .collect())
}

pub(super) fn read<T: bytemuck::Pod>(
    ctx: &GpuContext,
    ws: &Workspace,
    buf: &wgpu::Buffer,
    offset: usize,
    len: usize,
) -> Result<Vec<T>> {
    let enc = ctx.device().create_command_encoder(&Default::default());
    let mut v: Vec<T> = buffers::read_back(
        ctx,
        enc,
        buf,
        4 * offset as u64,
        buffers::words(len),
        &ws.staging,
    )?;
    v.truncate(len);
    Ok(v)
}

/// One problem on the GPU; `observer` sees every accepted L-BFGS step (and the CPU finish, if any).
pub(crate) fn solve(
    ctx: &GpuContext,
    cfg: &SparseOt,
    problem: &Problem,
    observer: Observer<'_>,
) -> Result<Solution> {
    let mut out = solve_all(
        ctx,
        cfg,
        [Ok(Cow::Borrowed(problem))].into_iter(),
        observer,
        &|_, _| {},
    );
    out.pop()
        .unwrap_or_else(|| Err(Error::Gpu("a solve of one problem returned nothing".into())))
}

/// Every problem of `batch` on the GPU, the L-BFGS phases of all of them in lockstep (see the module docs).
pub(crate) fn solve_batch(
    ctx: &GpuContext,
    cfg: &SparseOt,
    batch: &Batch,
    progress: BatchProgress<'_>,
) -> Vec<Result<Solution>> {
    let problems = (0..batch.len()).map(|i| batch.problem(i).map(Cow::Owned));
    solve_all(ctx, cfg, problems, &mut |_| {}, progress)
}

/// The batch pipeline: validate each problem; k = 1 goes to the exact CPU solver; the rest run on the
/// device together; a problem whose f32 L-BFGS stalled (as it does on the kinks of k < m) is finished in
/// f64 on the CPU from its potentials. `observer` is only called for a batch of one problem; `progress`
/// counts the problems whose result is ready.
fn solve_all<'p>(
    ctx: &GpuContext,
    user_cfg: &SparseOt,
    problems: impl ExactSizeIterator<Item = Result<Cow<'p, Problem>>>,
    observer: Observer<'_>,
    progress: BatchProgress<'_>,
) -> Vec<Result<Solution>> {
    let mut prep = problems::prepare(user_cfg, problems, progress);
    let single = prep.valid.len() == 1;
    let cfg = prep.cfg.clone();
    let axis = if user_cfg.lanes == Lanes::Rows {
        "columns"
    } else {
        "rows"
    };
    let (exact, device): (Vec<usize>, Vec<usize>) = (0..prep.valid.len())
        .partition(|&v| crate::cpu::sparse::k1_is_exact(&cfg, &prep.valid[v].columns, prep.k));
    for v in exact {
        // k = 1 is unregularised OT (SPEC §2.3), solved exactly by the CPU network simplex.
        let sol = crate::cpu::sparse::solve_columns(&cfg, &prep.valid[v].columns, axis, observer)
            .map(|mut s| {
                s.device = "cpu (k = 1: exact network simplex)".into();
                s
            });
        prep.set(user_cfg, v, sol);
        prep.results.tick();
    }
    if device.is_empty() {
        return prep.into_results(Ok(()));
    }
    let mut forward = |_: usize, p: &Progress| {
        if single {
            observer(p)
        }
    };
    let on_device: Vec<&Valid<'_>> = device.iter().map(|&v| &prep.valid[v]).collect();
    let tick = || prep.results.tick();
    // A driver that stalled with a tolerance set is finished on the CPU below; the others are done here.
    let mut lbfgs_done = |_: usize, t: Termination| {
        if t != Termination::Stalled || cfg.tol == 0.0 {
            tick();
        }
    };
    let sols = match run_on_device(ctx, &cfg, &on_device, prep.k, &mut forward, &mut lbfgs_done) {
        Ok(s) => s,
        Err(e) => return prep.into_results(Err(e)),
    };
    let finished: Vec<Solution> = if single {
        let mut only = sols;
        let sol = only
            .pop()
            .map(|s| finish_stalled(ctx, &cfg, on_device[0], prep.k, s, observer, &tick));
        sol.into_iter().collect()
    } else {
        sols.into_par_iter()
            .zip(on_device.par_iter())
            .map(|(s, v)| finish_stalled(ctx, &cfg, v, prep.k, s, &mut |_| {}, &tick))
            .collect()
    };
    for (v, sol) in device.into_iter().zip(finished) {
        prep.set(user_cfg, v, Ok(sol));
    }
    prep.into_results(Ok(()))
}

/// Uploads the problems, runs them in lockstep and reads every solution back.
fn run_on_device(
    ctx: &GpuContext,
    cfg: &SparseOt,
    valid: &[&Valid<'_>],
    k: usize,
    observe: &mut dyn FnMut(usize, &Progress),
    finished: &mut dyn FnMut(usize, Termination),
) -> Result<Vec<Solution>> {
    let nb = valid.len();
    let (m, n) = (valid[0].columns.m(), valid[0].columns.n());
    check_batch(ctx, nb, (m, n, k))?;
    let key = workspace_key(cfg, (m, n, k), nb);
    let dual = cfg.formulation == Formulation::Dual;
    let ws = ctx.take_workspace(key, || {
        Workspace::batched(ctx, (m, n, k), dual, cfg.memory, nb)
    })?;
    let out = (|| {
        let x0 = problems::upload(ctx, &ws, valid);
        let runs = run(ctx, &ws, cfg, &x0, observe, finished)?;
        problems::read_solutions(ctx, &ws, &ws.lbfgs.x, cfg, valid, runs)
    })();
    ctx.put_workspace(key, ws);
    out
}

/// A solution whose f32 L-BFGS stalled is finished in f64 on the CPU from its potentials (the nonsmooth
/// finish of `cpu::finish`), then `tick` reports it; others are returned as they are.
fn finish_stalled(
    ctx: &GpuContext,
    cfg: &SparseOt,
    v: &Valid<'_>,
    k: usize,
    sol: Solution,
    observer: Observer<'_>,
    tick: &(dyn Fn() + Sync),
) -> Solution {
    if sol.termination != Termination::Stalled || cfg.tol == 0.0 {
        return sol;
    }
    let mut x: Vec<f64> = sol.alpha.to_vec();
    if cfg.formulation == Formulation::Dual {
        x.extend(sol.beta.iter());
    }
    let mut fin =
        crate::cpu::sparse::finish_after_stall(cfg, &v.columns, k, x, sol.iterations, observer);
    fin.device = format!("{} + cpu (nonsmooth finish)", ctx.adapter_name());
    tick();
    fin
}

/// A problem whose data already lives in the application's GPU buffers (f32, on this context's device).
///
/// Every buffer needs `STORAGE | COPY_SRC` usage; `cost` is m×n row-major. The values are not
/// checked on the host (that would need a readback): they must be finite, the marginals positive (the
/// semi-dual divides by b_j) with equal sums.
#[derive(Debug, Clone, Copy)]
pub struct GpuProblem<'a> {
    /// Number of sources (rows).
    pub m: usize,
    /// Number of targets (columns).
    pub n: usize,
    /// Source marginal, m f32.
    pub a: &'a wgpu::Buffer,
    /// Target marginal, n f32.
    pub b: &'a wgpu::Buffer,
    /// Cost, m×n f32 row-major.
    pub cost: &'a wgpu::Buffer,
}

impl GpuProblem<'_> {
    /// Checks the shape against the buffers' sizes.
    pub(crate) fn check(&self) -> Result<()> {
        let (m, n) = (self.m, self.n);
        if m == 0 || n == 0 {
            return Err(Error::Empty {
                what: if m == 0 { "a" } else { "b" },
            });
        }
        let sizes = [
            ("a buffer", self.a, m),
            ("b buffer", self.b, n),
            ("cost buffer", self.cost, m * n),
        ];
        for (what, buf, len) in sizes {
            if buf.size() < 4 * len as u64 {
                return Err(Error::ShapeMismatch {
                    what,
                    expected: 4 * len,
                    found: buf.size() as usize,
                });
            }
        }
        Ok(())
    }
}

/// The result of [`GpuContext::solve_sparse_buffers`]: new buffers owned by the caller, plus the run's report.
#[derive(Debug)]
pub struct GpuSparseOutput {
    /// α, m f32 (`STORAGE | COPY_SRC | COPY_DST`).
    pub alpha: wgpu::Buffer,
    /// β, n f32 (the implied potential −γ θ_j for the semi-dual).
    pub beta: wgpu::Buffer,
    /// Plan values, n×k f32: column j's nonzeros at [j·k, j·k + k), zero-padded.
    pub plan_values: wgpu::Buffer,
    /// Plan row indices, n×k u32 matching `plan_values`; padding entries are `u32::MAX`.
    pub plan_rows: wgpu::Buffer,
    /// Nonzeros per column at most (k; m for quadratic OT).
    pub k: usize,
    /// Objective (maximised) at the returned potentials.
    pub value: f64,
    /// Accepted L-BFGS iterations.
    pub iterations: usize,
    /// Why the solver stopped.
    pub termination: Termination,
}

impl GpuContext {
    /// Solves sparsity-constrained (or quadratic) OT on data already in GPU buffers, column sparsity only,
    /// and returns the potentials and the plan as new GPU buffers (nothing but a few scalars per L-BFGS
    /// evaluation crosses to the host). Results are f32.
    ///
    /// Errors: shape/usage mismatches of the buffers, k = 0 or k > m, a warm start of the wrong length,
    /// row sparsity (not supported here; transpose the cost instead), device limits.
    pub fn solve_sparse_buffers(
        &self,
        cfg: &SparseOt,
        input: &GpuProblem<'_>,
    ) -> Result<GpuSparseOutput> {
        input.check()?;
        let (m, n) = (input.m, input.n);
        if cfg.lanes == Lanes::Rows {
            return Err(Error::Unavailable {
                what: "row sparsity on GPU buffers",
                why: "pass the transposed cost and swapped marginals".into(),
            });
        }
        let k = match cfg.k {
            Some(k) if k == 0 || k > m => {
                return Err(Error::InvalidK {
                    k,
                    max: m,
                    axis: "rows",
                })
            }
            Some(k) => k,
            None => m,
        };
        let dual = cfg.formulation == Formulation::Dual;
        let dim = if dual { m + n } else { m };
        let mut x0 = vec![0.0f32; dim];
        for (what, warm, range) in [
            ("alpha", &cfg.warm_alpha, 0..m),
            ("beta", &cfg.warm_beta, m..dim),
        ] {
            if let Some(v) = warm {
                if range.is_empty() {
                    continue;
                }
                if v.len() != range.len() {
                    return Err(Error::WarmStartMismatch {
                        what,
                        expected: range.len(),
                        found: v.len(),
                    });
                }
                crate::problem::check_vector_finite(what, v.view())?;
                x0[range]
                    .iter_mut()
                    .zip(v.iter())
                    .for_each(|(x, &y)| *x = y as f32);
            }
        }
        check_shape(self, m, n, k)?;
        let key = workspace_key(cfg, (m, n, k), 1);
        let ws = self.take_workspace(key, || {
            Workspace::batched(self, (m, n, k), dual, cfg.memory, 1)
        })?;
        let out = self.solve_in(&ws, cfg, input, &x0);
        self.put_workspace(key, ws);
        out
    }

    fn solve_in(
        &self,
        ws: &Workspace,
        cfg: &SparseOt,
        input: &GpuProblem<'_>,
        x0: &[f32],
    ) -> Result<GpuSparseOutput> {
        let (m, n, k) = (ws.m, ws.n, ws.k);
        let tp = buffers::uniform(
            self,
            "transpose params",
            &TransposeParams {
                len: (m * n) as u32,
                rows: m as u32,
                cols: n as u32,
                _pad: 0,
            },
        );
        let transpose = Pass::per_thread(
            self,
            Kernel::Transpose,
            &[(0, &tp), (1, input.cost), (2, &ws.cost_t)],
            m * n,
        )?;
        let mut enc = buffers::encode(self, &[&transpose]);
        enc.copy_buffer_to_buffer(input.a, 0, &ws.a, 0, 4 * m as u64);
        enc.copy_buffer_to_buffer(input.b, 0, &ws.b, 0, 4 * n as u64);
        buffers::submit(self, enc);
        let r = run(self, ws, cfg, x0, &mut |_, _| {}, &mut |_, _| {})?
            .pop()
            .ok_or_else(|| Error::Gpu("a run of one problem returned nothing".into()))?;
        let out = |label, words| buffers::storage(self, label, words);
        let (alpha, beta, plan_values, plan_rows) = (
            out("alpha", m),
            out("beta", n),
            out("plan values", n * k),
            out("plan rows", n * k),
        );
        let mut enc = self.device().create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&ws.lbfgs.x, 0, &alpha, 0, 4 * m as u64);
        if ws.dual {
            enc.copy_buffer_to_buffer(&ws.lbfgs.x, 4 * m as u64, &beta, 0, 4 * n as u64);
        } else {
            enc.copy_buffer_to_buffer(&ws.beta, 0, &beta, 0, 4 * n as u64);
        }
        enc.copy_buffer_to_buffer(&ws.plan_values, 0, &plan_values, 0, 4 * (n * k) as u64);
        enc.copy_buffer_to_buffer(&ws.plan_rows, 0, &plan_rows, 0, 4 * (n * k) as u64);
        buffers::submit(self, enc);
        self.check_errors()?;
        Ok(GpuSparseOutput {
            alpha,
            beta,
            plan_values,
            plan_rows,
            k,
            value: r.value,
            iterations: r.iterations,
            termination: r.termination,
        })
    }
}
