//! Sparsity-constrained and quadratic OT on the GPU (`shaders/sparse_dual.wgsl`): the (semi-)dual objective
//! and gradient as device passes for a batch of B problems of one shape, minimised by one shared-logic
//! L-BFGS driver per problem run in lockstep over [`GpuLbfgs`] (a round is a fixed set of dispatches whatever
//! B is), then the sparse plans extracted on the device (k row indices and values per column). A single
//! problem is the batch B = 1.

pub(crate) mod adam;
mod batch;
pub(crate) mod points;

use std::borrow::Cow;

use rayon::prelude::*;

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::gpu::buffers::{self, Pass};
use crate::gpu::context::{GpuContext, WorkspaceKey};
use crate::gpu::cost::CostBuffers;
use crate::gpu::kernels::Kernel;
use crate::gpu::problem::GpuProblem;
use crate::gpu::work;
use crate::lbfgs::gpu::{DeviceObjective, GpuLbfgs, LbfgsBuffers};
use crate::lbfgs::{self, Settings, Step};
use crate::monitor::{Monitor, Progress};
use crate::problem::Problem;
use crate::solution::{
    Criterion, Formulation, GpuWork, Lanes, PlanKind, RanOn, Solution, Termination,
    DEFAULT_TOL_F32, F32_STOP_FRACTION,
};
use crate::sparse::rules;
use crate::sparse::settings::SparseOt;

use self::batch::{Run, Valid};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SparseParams {
    m: u32,
    n: u32,
    k: u32,
    mode: u32,
    gamma: f32,
    dim: u32,
    _pad: [u32; 2],
}

/// Rows of a column each `column_pass` thread holds in registers (`VMAX` in `shaders/sparse_dual.wgsl`).
const COLUMN_REGISTERS: usize = 16;

/// The workgroup size of `column_pass` for columns of m rows: the smallest power of two (at least the
/// default) that holds the column in registers, capped by the device. Columns of up to 1024 rows keep the
/// default size, and with it the results of earlier versions bit for bit.
fn column_workgroup(ctx: &GpuContext, m: usize) -> u32 {
    let need = m.div_ceil(COLUMN_REGISTERS).next_power_of_two() as u64;
    (need.min(u64::from(ctx.max_workgroup())) as u32).max(crate::gpu::context::WORKGROUP)
}

/// Walks over its column in memory that one `column_pass` workgroup makes (`shaders/sparse_dual.wgsl`): one
/// when the column fits the registers (every later walk is over them), else the 32-step search for the k-th
/// key when k < m, the tie count, the 32-step tie bisection, for the semi-dual the max, 26 bisection and 3
/// refinement steps, and the term pass.
fn column_walks(dual: bool, k: usize, m: usize, cached: bool) -> u64 {
    if cached {
        return 1;
    }
    let search = if k < m { 32 } else { 0 };
    let theta = if dual { 0 } else { 1 + 26 + 3 };
    search + 1 + 32 + theta + 1
}

/// Relative noise of objective values computed in f32 (≈ 16 × f32 unit roundoff).
const F32_VALUE_NOISE: f64 = 1e-6;

/// Words of one `ColState` (key, tie, θ, term, σ, 3 pads).
const COL_WORDS: usize = 8;

/// Words per problem an L-BFGS round reads back: four objective scalars and four direction scalars.
const ROUND_WORDS: usize = 8;

/// Buffers and passes of one (m, n, k, formulation, memory), for one problem or a batch of B problems
/// stored back to back (every buffer B times its per-problem length, every pass dispatched with z = B).
pub(crate) struct SparseWorkspace {
    pub(crate) m: usize,
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) dual: bool,
    params: wgpu::Buffer,
    /// The transposed costs (n × m row-major each), or the point clouds they are computed from.
    pub(crate) cost: CostBuffers,
    pub(crate) a: wgpu::Buffer,
    pub(crate) b: wgpu::Buffer,
    /// B × n column states (`ColState`).
    cols: wgpu::Buffer,
    pub(crate) scalars: wgpu::Buffer,
    pub(crate) plan_values: wgpu::Buffer,
    pub(crate) plan_rows: wgpu::Buffer,
    pub(crate) beta: wgpu::Buffer,
    pub(crate) staging: wgpu::Buffer,
    /// B u32: nonzero for the problems the next passes evaluate (all, unless an L-BFGS round says otherwise).
    active: wgpu::Buffer,
    /// Problems B.
    pub(crate) problems: usize,
    pub(crate) lbfgs: LbfgsBuffers,
    pub(crate) column: Pass,
    pub(crate) row: Pass,
    pub(crate) finalize: Pass,
    pub(crate) extract: Pass,
}

impl DeviceObjective for SparseWorkspace {
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

impl SparseWorkspace {
    /// Buffers for `nb` problems of one shape (m, n, k); the L-BFGS vectors hold all of them back to back.
    /// The cost is a transposed matrix per problem, or computed from clouds of dimension d = `points`.
    pub(crate) fn batched(
        ctx: &GpuContext,
        (m, n, k): (usize, usize, usize),
        dual: bool,
        memory: usize,
        nb: usize,
        points: Option<usize>,
    ) -> Result<Self> {
        let dim = if dual { m + n } else { m };
        let params = buffers::uniform(
            ctx,
            "sparse params",
            &SparseParams {
                m: m as u32,
                n: n as u32,
                k: k as u32,
                mode: dual as u32,
                gamma: 1.0,
                dim: dim as u32,
                _pad: [0; 2],
            },
        );
        let cost = CostBuffers::new(ctx, "cost_t", (m, n, nb), points);
        let cost_bytes = cost.bytes(m, n);
        let kernel = |matrix, on_points| if cost.is_points() { on_points } else { matrix };
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
        let column_wg = column_workgroup(ctx, m);
        let cached = m <= column_wg as usize * COLUMN_REGISTERS;
        let column = Pass::per_workgroup_sized(
            ctx,
            kernel(Kernel::Column, Kernel::PointsColumn),
            column_wg,
            &cost.with(&[
                (0, &params),
                (2, x),
                (4, &b),
                (5, &cols),
                (6, g),
                (11, &active),
            ]),
            n,
        )?
        .batched(nb)
        .reads_cost(column_walks(dual, k, m, cached) * cost_bytes);
        let row = Pass::per_thread(
            ctx,
            kernel(Kernel::Row, Kernel::PointsRow),
            &cost.with(&[
                (0, &params),
                (2, x),
                (3, &a),
                (5, &cols),
                (6, g),
                (11, &active),
            ]),
            m,
        )?
        .batched(nb)
        .reads_cost(cost_bytes);
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
            kernel(Kernel::Extract, Kernel::PointsExtract),
            &cost.with(&[
                (0, &params),
                (2, x),
                (5, &cols),
                (8, &plan_values),
                (9, &plan_rows),
                (10, &beta),
                (11, &active),
            ]),
            n,
        )?
        .batched(nb)
        .reads_cost(cost_bytes);
        Ok(Self {
            m,
            n,
            k,
            dual,
            params,
            cost,
            a,
            b,
            cols,
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
    pub(crate) fn dim(&self) -> usize {
        if self.dual {
            self.m + self.n
        } else {
            self.m
        }
    }

    pub(crate) fn set_gamma(&self, ctx: &GpuContext, gamma: f64) {
        let p = SparseParams {
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

pub(crate) fn check_shape(ctx: &GpuContext, m: usize, n: usize, k: usize) -> Result<()> {
    ctx.check_binding(
        "max_storage_buffer_binding_size (cost matrix, f32)",
        4 * (m as u64) * (n as u64),
    )?;
    check_plan(ctx, m, n, k)
}

/// Refuses shapes whose plan (k per column) does not fit one binding or whose columns or rows exceed the
/// workgroup grid (whatever holds the cost).
fn check_plan(ctx: &GpuContext, m: usize, n: usize, k: usize) -> Result<()> {
    ctx.check_binding(
        "max_storage_buffer_binding_size (plan, k per column)",
        4 * (n as u64) * (k as u64),
    )?;
    ctx.check_lanes("max_compute_workgroups_per_dimension² (columns)", n)?;
    ctx.check_lanes("max_compute_workgroups_per_dimension² (rows)", m)
}

/// Checks that `nb` problems of shape (m, n) with k per column fit the device as one batch.
pub(crate) fn check_batch(
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

fn workspace_key(
    cfg: &SparseOt,
    (m, n, k): (usize, usize, usize),
    batch: usize,
    points: Option<usize>,
) -> WorkspaceKey {
    WorkspaceKey::Sparse {
        m,
        n,
        k,
        dual: cfg.formulation == Formulation::Dual,
        memory: cfg.memory,
        batch,
        points,
    }
}

/// A problem's tolerance on the device: the driver stops at `stop`, and a `Converged` status names `report`.
#[derive(Debug, Clone, Copy)]
struct DeviceTol {
    stop: f64,
    report: f64,
}

impl DeviceTol {
    /// The configuration's tolerance when it was set, else the f32 default, [`DEFAULT_TOL_F32`] × the
    /// largest marginal entry of `p`; the driver stops at [`F32_STOP_FRACTION`] of it so that the plan
    /// measured in f64 on the host meets it. (A stalled run is continued on the CPU with the configuration's
    /// f64 tolerance.)
    fn for_problem(cfg: &SparseOt, p: &Problem) -> Self {
        Self::for_largest(cfg, p.largest_marginal())
    }

    /// [`DeviceTol::for_problem`] for a problem whose largest marginal entry is `largest`.
    fn for_largest(cfg: &SparseOt, largest: f64) -> Self {
        if cfg.tol_given {
            Self::given(cfg)
        } else {
            Self::reported(DEFAULT_TOL_F32 * largest)
        }
    }

    /// The configuration's tolerance, stopped at [`F32_STOP_FRACTION`] of it.
    fn given(cfg: &SparseOt) -> Self {
        Self::reported(cfg.tol)
    }

    fn reported(report: f64) -> Self {
        Self {
            stop: F32_STOP_FRACTION * report,
            report,
        }
    }
}

/// Minimises −S or −D of every problem of the workspace from `x0` (B × dim) with one driver each, in
/// lockstep, problem p to tolerance `tols[p]`; then re-evaluates every problem at its returned point and
/// extracts the plans on the device. `observe(p, progress)` sees problem p after each of its accepted steps;
/// `cfg.monitor` can cancel.
fn run(
    ctx: &GpuContext,
    ws: &SparseWorkspace,
    cfg: &SparseOt,
    x0: &[f32],
    tols: &[DeviceTol],
    observe: &mut dyn FnMut(usize, &Progress),
    finished: &mut dyn FnMut(usize, Termination),
) -> Result<Vec<Run>> {
    ws.set_gamma(ctx, cfg.gamma);
    ws.lbfgs.reset(ctx, x0);
    // f32 objective values: sums of O(m + n) terms carry a relative rounding noise of ~16 u.
    let settings: Vec<Settings> = tols
        .iter()
        .map(|t| Settings {
            value_noise: F32_VALUE_NOISE,
            ..Settings::new(t.stop, cfg.max_iter)
        })
        .collect();
    let mut backend = GpuLbfgs {
        ctx,
        buf: &ws.lbfgs,
        obj: ws,
        staging: &ws.staging,
        error: None,
    };
    let nb = ws.problems;
    debug_assert_eq!(tols.len(), nb);
    let ends = lbfgs::run_lockstep(
        &settings,
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
        &|| cfg.monitor.is_cancelled(),
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
        .zip(tols)
        .map(|(((termination, driver), at), tol)| Run {
            termination: match termination {
                Termination::Converged(Criterion::MarginalError { .. }) => {
                    Termination::Converged(Criterion::MarginalError { tol: tol.report })
                }
                t => t,
            },
            iterations: driver.iterations,
            value: at.eval.map_or(f64::NAN, |e| -e.value),
        })
        .collect())
}

pub(crate) fn read<T: bytemuck::Pod>(
    ctx: &GpuContext,
    ws: &SparseWorkspace,
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

/// One problem on the GPU; `cfg.monitor` sees every accepted L-BFGS step (and the CPU continuation, if
/// any).
pub(crate) fn solve(ctx: &GpuContext, cfg: &SparseOt, problem: &Problem) -> Result<Solution> {
    let mut out = solve_all(ctx, cfg, [Ok(Cow::Borrowed(problem))].into_iter(), true);
    out.pop()
        .unwrap_or_else(|| Err(Error::Gpu("a solve of one problem returned nothing".into())))
}

/// Every problem of `batch` on the GPU, the L-BFGS phases of all of them in lockstep (see the module docs).
pub(crate) fn solve_batch(
    ctx: &GpuContext,
    cfg: &SparseOt,
    batch: &Batch,
) -> Vec<Result<Solution>> {
    solve_all(ctx, cfg, batch.problems(), false)
}

/// The batch pipeline: validate each problem; k = 1 goes to the exact CPU solver; the rest run on the
/// device together; a problem whose f32 L-BFGS stalled (as it does on the kinks of k < m) is continued in
/// f64 on the CPU from its potentials. `single`: a single solve, whose steps the monitor sees; a batch
/// reports finished problems instead.
fn solve_all<'p>(
    ctx: &GpuContext,
    user_cfg: &SparseOt,
    problems: impl ExactSizeIterator<Item = Result<Cow<'p, Problem>>>,
    single: bool,
) -> Vec<Result<Solution>> {
    let silent = Monitor::new();
    let mut prep = batch::prepare(
        user_cfg,
        problems,
        if single { &silent } else { &user_cfg.monitor },
    );
    let mut cfg = prep.cfg.clone();
    if !single {
        cfg.monitor = user_cfg.monitor.quiet();
    }
    let (exact, device): (Vec<usize>, Vec<usize>) = (0..prep.valid.len())
        .partition(|&v| rules::k1_is_exact(&cfg, &prep.valid[v].columns, prep.k));
    for v in exact {
        // k = 1 is unregularised OT, solved exactly by the CPU network simplex.
        let valid = &prep.valid[v];
        let sol = super::cpu::solve_columns(&cfg, &valid.columns, prep.k, valid.x0.clone());
        prep.set(user_cfg, v, sol);
        prep.results.tick();
    }
    if device.is_empty() {
        return prep.into_results(Ok(()));
    }
    let monitor = &cfg.monitor;
    let mut forward = |_: usize, p: &Progress| monitor.step(p);
    let on_device: Vec<&Valid<'_>> = device.iter().map(|&v| &prep.valid[v]).collect();
    let tick = || prep.results.tick();
    // A driver that stalled with a tolerance set is continued on the CPU below; the others are done here.
    let mut lbfgs_done = |_: usize, t: Termination| {
        if !continues_on_host(&cfg, t) {
            tick();
        }
    };
    let sols = match run_on_device(ctx, &cfg, &on_device, prep.k, &mut forward, &mut lbfgs_done) {
        Ok(s) => s,
        Err(e) => return prep.into_results(Err(e)),
    };
    let finished: Vec<Solution> = sols
        .into_par_iter()
        .zip(on_device.par_iter())
        .map(|(s, v)| continue_stalled(ctx, &cfg, v, prep.k, s, &tick))
        .collect();
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
    let key = workspace_key(cfg, (m, n, k), nb, None);
    let dual = cfg.formulation == Formulation::Dual;
    let ws = ctx.take_workspace(key, || {
        SparseWorkspace::batched(ctx, (m, n, k), dual, cfg.memory, nb, None)
    })?;
    let out = (|| {
        let x0 = batch::upload(ctx, &ws, valid)?;
        let tols: Vec<DeviceTol> = valid
            .iter()
            .map(|v| DeviceTol::for_problem(cfg, &v.columns))
            .collect();
        let runs = run(ctx, &ws, cfg, &x0, &tols, observe, finished)?;
        batch::read_valid(ctx, &ws, &ws.lbfgs.x, cfg, valid, runs)
    })();
    ctx.put_workspace(key, ws);
    out
}

/// Whether a device run that ended with `t` is continued in f64 on the host ([`continue_stalled`]): a
/// stalled run with a tolerance to reach.
pub(super) fn continues_on_host(cfg: &SparseOt, t: Termination) -> bool {
    t == Termination::Stalled && cfg.tol > 0.0
}

/// A solution whose f32 L-BFGS stalled is continued in f64 on the CPU from its potentials (the nonsmooth
/// stage of the CPU pipeline), then `tick` reports it; others are returned as they are.
fn continue_stalled(
    ctx: &GpuContext,
    cfg: &SparseOt,
    v: &Valid<'_>,
    k: usize,
    sol: Solution,
    tick: &(dyn Fn() + Sync),
) -> Solution {
    if !continues_on_host(cfg, sol.termination) {
        return sol;
    }
    let mut x: Vec<f64> = sol.alpha.to_vec();
    if cfg.formulation == Formulation::Dual {
        x.extend(sol.beta.iter());
    }
    let mut fin = super::cpu::continue_after_stall(cfg, &v.columns, k, x, sol.iterations);
    fin.device = RanOn::GpuThenCpu {
        adapter: ctx.adapter_name().to_string(),
    };
    tick();
    fin
}

/// The result of [`SparseOt::solve_buffers`]: new buffers owned by the caller, plus the run's report.
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
    /// The device work of the solve.
    pub work: GpuWork,
}

/// [`SparseOt::solve_buffers`]: k and the warm start are checked as for host problems
/// ([`rules::check_k`], [`rules::start_point`]); the buffers' values are not (see [`GpuProblem`]).
pub(crate) fn solve_buffers(
    ctx: &GpuContext,
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
    if cfg.plan_kind != PlanKind::Gradient {
        return Err(Error::Unavailable {
            what: "relaxed and feasible plans on GPU buffers",
            why: "they are built on the host from the f64 cost; solve a Problem with SparseOt::solve_on"
                .into(),
        });
    }
    let k = rules::check_k(cfg, m, n)?;
    let x0: Vec<f32> = rules::start_point(cfg, m, n)?
        .into_iter()
        .map(|x| x as f32)
        .collect();
    check_shape(ctx, m, n, k)?;
    let key = workspace_key(cfg, (m, n, k), 1, None);
    let dual = cfg.formulation == Formulation::Dual;
    let ws = ctx.take_workspace(key, || {
        SparseWorkspace::batched(ctx, (m, n, k), dual, cfg.memory, 1, None)
    })?;
    let (out, work) = work::measure(|| solve_in_buffers(ctx, &ws, cfg, input, &x0));
    ctx.put_workspace(key, ws);
    out.map(|o| GpuSparseOutput { work, ..o })
}

fn solve_in_buffers(
    ctx: &GpuContext,
    ws: &SparseWorkspace,
    cfg: &SparseOt,
    input: &GpuProblem<'_>,
    x0: &[f32],
) -> Result<GpuSparseOutput> {
    let (m, n, k) = (ws.m, ws.n, ws.k);
    let transpose = buffers::transpose(ctx, input.cost, ws.cost.matrix()?, (m, n), 1)?;
    let mut enc = buffers::encode(ctx, &[&transpose]);
    enc.copy_buffer_to_buffer(input.a, 0, &ws.a, 0, 4 * m as u64);
    enc.copy_buffer_to_buffer(input.b, 0, &ws.b, 0, 4 * n as u64);
    buffers::submit(ctx, enc);
    // The marginals are on the device only: the configuration's tolerance is used (stopped at half of it).
    let tols = [DeviceTol::given(cfg)];
    let r = run(ctx, ws, cfg, x0, &tols, &mut |_, _| {}, &mut |_, _| {})?
        .pop()
        .ok_or_else(|| Error::Gpu("a run of one problem returned nothing".into()))?;
    let out = |label, words| buffers::storage(ctx, label, words);
    let (alpha, beta, plan_values, plan_rows) = (
        out("alpha", m),
        out("beta", n),
        out("plan values", n * k),
        out("plan rows", n * k),
    );
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(&ws.lbfgs.x, 0, &alpha, 0, 4 * m as u64);
    if ws.dual {
        enc.copy_buffer_to_buffer(&ws.lbfgs.x, 4 * m as u64, &beta, 0, 4 * n as u64);
    } else {
        enc.copy_buffer_to_buffer(&ws.beta, 0, &beta, 0, 4 * n as u64);
    }
    enc.copy_buffer_to_buffer(&ws.plan_values, 0, &plan_values, 0, 4 * (n * k) as u64);
    enc.copy_buffer_to_buffer(&ws.plan_rows, 0, &plan_rows, 0, 4 * (n * k) as u64);
    buffers::submit(ctx, enc);
    ctx.check_errors()?;
    Ok(GpuSparseOutput {
        alpha,
        beta,
        plan_values,
        plan_rows,
        k,
        value: r.value,
        iterations: r.iterations,
        termination: r.termination,
        work: GpuWork::default(),
    })
}
