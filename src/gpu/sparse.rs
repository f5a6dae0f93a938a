//! Sparsity-constrained and quadratic OT on the GPU (`shaders/sparse_dual.wgsl`): the (semi-)dual objective
//! and gradient as device passes, minimised by the shared L-BFGS driver over [`GpuLbfgs`], then the sparse
//! plan extracted on the device (k row indices and values per column).

use crate::config::{Observer, SparseOt};
use crate::cpu::sparse::{method, resolve, transpose_error, transpose_solution, Resolved};
use crate::error::{Error, Result};
use crate::gpu::buffers::{self, Pass};
use crate::gpu::context::{GpuContext, WorkspaceKey};
use crate::gpu::kernels::Kernel;
use crate::gpu::lbfgs::{DeviceObjective, GpuLbfgs, LbfgsBuffers};
use crate::lbfgs::{self, Settings};
use crate::problem::Problem;
use crate::solution::{plan_metrics, Lanes, Plan, Progress, Solution, SparsePlan, Termination};
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
}

impl Workspace {
    fn new(
        ctx: &GpuContext,
        m: usize,
        n: usize,
        k: usize,
        dual: bool,
        memory: usize,
    ) -> Result<Self> {
        Self::batched(ctx, (m, n, k), dual, memory, 1)
    }

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
            buffers::words(nb * (n * k).max(dim).max(COL_WORDS)),
        );
        let lbfgs = LbfgsBuffers::new(ctx, nb * dim, memory)?;
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

/// The outcome of one device run; the potentials and plan stay in the workspace buffers.
pub(super) struct Run {
    pub(super) termination: Termination,
    pub(super) iterations: usize,
    /// Objective (maximised) at the returned potentials.
    pub(super) value: f64,
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

fn workspace_key(cfg: &SparseOt, m: usize, n: usize, k: usize) -> WorkspaceKey {
    WorkspaceKey::Sparse {
        m,
        n,
        k,
        dual: cfg.formulation == Formulation::Dual,
        memory: cfg.memory,
    }
}

/// Minimises −S or −D from x0 (already in the workspace) with the shared driver, then re-evaluates at the
/// returned point and extracts the plan on the device.
fn run(
    ctx: &GpuContext,
    ws: &Workspace,
    cfg: &SparseOt,
    x0: &[f32],
    observer: Observer<'_>,
) -> Result<Run> {
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
    let (termination, driver) = lbfgs::run(settings, &mut backend, |d| {
        observer(&Progress {
            iteration: d.iterations,
            value: -d.value,
            marginal_error: d.grad_norm,
            stage: "lbfgs (gpu)",
        })
    });
    // Objective, column states and plan at the returned iterate (t = 0 makes the trial point x).
    let at_x = lbfgs::Backend::evaluate(&mut backend, 0.0);
    if let Some(e) = backend.error {
        return Err(e);
    }
    buffers::submit(ctx, buffers::encode(ctx, &[&ws.extract]));
    Ok(Run {
        termination,
        iterations: driver.iterations,
        value: -at_x.value,
    })
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

pub(crate) fn solve(
    ctx: &GpuContext,
    cfg: &SparseOt,
    problem: &Problem,
    observer: Observer<'_>,
) -> Result<Solution> {
    match cfg.lanes {
        Lanes::Columns => solve_columns(ctx, cfg, problem, "rows", observer),
        Lanes::Rows => {
            let mut t_cfg = cfg.clone();
            t_cfg.warm_alpha = cfg.warm_beta.clone();
            t_cfg.warm_beta = cfg.warm_alpha.clone();
            let sol = solve_columns(ctx, &t_cfg, &problem.transposed(), "columns", observer)
                .map_err(transpose_error)?;
            Ok(transpose_solution(sol, cfg))
        }
    }
}

fn solve_columns(
    ctx: &GpuContext,
    cfg: &SparseOt,
    p: &Problem,
    axis: &'static str,
    observer: Observer<'_>,
) -> Result<Solution> {
    let Resolved { k, x0 } = resolve(cfg, p, axis)?;
    if crate::cpu::sparse::k1_is_exact(cfg, p, k) {
        // k = 1 is unregularised OT (SPEC §2.3), solved exactly by the CPU network simplex.
        let mut sol = crate::cpu::sparse::solve_columns(cfg, p, axis, observer)?;
        sol.device = "cpu (k = 1: exact network simplex)".into();
        return Ok(sol);
    }
    let (m, n) = (p.m(), p.n());
    check_shape(ctx, m, n, k)?;
    let key = workspace_key(cfg, m, n, k);
    let dual = cfg.formulation == Formulation::Dual;
    let ws = ctx.take_workspace(key, || Workspace::new(ctx, m, n, k, dual, cfg.memory))?;
    let out = (|| {
        let f32s = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x as f32).collect::<Vec<f32>>();
        buffers::upload(ctx, &ws.cost_t, &f32s(&mut p.cost().t().iter().copied()));
        buffers::upload(ctx, &ws.a, &f32s(&mut p.a().iter().copied()));
        buffers::upload(ctx, &ws.b, &f32s(&mut p.b().iter().copied()));
        let x0: Vec<f32> = x0.iter().map(|&x| x as f32).collect();
        let r = run(ctx, &ws, cfg, &x0, &mut *observer)?;
        assemble(ctx, &ws, cfg, p, r)
    })();
    ctx.put_workspace(key, ws);
    let sol = out?;
    if sol.termination != Termination::Stalled || cfg.tol == 0.0 {
        return Ok(sol);
    }
    // The f32 L-BFGS stalled, as it does on the kinks of k < m: finish in f64 on the CPU, from its potentials.
    let mut x: Vec<f64> = sol.alpha.to_vec();
    if cfg.formulation == Formulation::Dual {
        x.extend(sol.beta.iter());
    }
    let mut fin = crate::cpu::sparse::finish_after_stall(cfg, p, k, x, sol.iterations, observer);
    fin.device = format!("{} + cpu (nonsmooth finish)", ctx.adapter_name());
    Ok(fin)
}

/// Reads potentials and plan back and builds the [`Solution`]; metrics are measured in f64 on the host.
fn assemble(
    ctx: &GpuContext,
    ws: &Workspace,
    cfg: &SparseOt,
    p: &Problem,
    r: Run,
) -> Result<Solution> {
    let (m, n, k) = (ws.m, ws.n, ws.k);
    let alpha: Vec<f32> = read(ctx, ws, &ws.lbfgs.x, 0, m)?;
    let beta: Vec<f32> = if ws.dual {
        read(ctx, ws, &ws.lbfgs.x, m, n)?
    } else {
        read(ctx, ws, &ws.beta, 0, n)?
    };
    let values: Vec<f32> = read(ctx, ws, &ws.plan_values, 0, n * k)?;
    let rows: Vec<u32> = read(ctx, ws, &ws.plan_rows, 0, n * k)?;
    let data = Readback {
        alpha: &alpha,
        beta: &beta,
        values: &values,
        rows: &rows,
    };
    Ok(build_solution(ctx, cfg, p, k, data, r))
}

/// One problem's potentials and plan as read back from the device (f32; the plan is k entries per column,
/// padded with row index `u32::MAX`).
pub(super) struct Readback<'a> {
    pub(super) alpha: &'a [f32],
    pub(super) beta: &'a [f32],
    pub(super) values: &'a [f32],
    pub(super) rows: &'a [u32],
}

/// The host side of a device solve (single problem or one problem of a batch): compresses the plan and
/// measures its cost and marginal errors in f64 against the f64 problem.
pub(super) fn build_solution(
    ctx: &GpuContext,
    cfg: &SparseOt,
    p: &Problem,
    k: usize,
    data: Readback<'_>,
    r: Run,
) -> Solution {
    let (m, n) = (p.m(), p.n());
    let Readback {
        alpha,
        beta,
        values,
        rows,
    } = data;
    let mut ptr = Vec::with_capacity(n + 1);
    ptr.push(0);
    let mut indices = Vec::new();
    let mut vals = Vec::new();
    for j in 0..n {
        for (&i, &v) in rows[j * k..(j + 1) * k]
            .iter()
            .zip(&values[j * k..(j + 1) * k])
        {
            if (i as usize) < m && v > 0.0 {
                indices.push(i as usize);
                vals.push(v as f64);
            }
        }
        ptr.push(indices.len());
    }
    let plan = SparsePlan::from_parts((m, n), Lanes::Columns, ptr, indices, vals);
    let (transport_cost, marginal_error_rows, marginal_error_cols) =
        plan_metrics(plan.triplets(), p.cost(), p.a_slice(), p.b_slice());
    Solution {
        method: method(cfg, Lanes::Columns),
        device: ctx.adapter_name().to_string(),
        plan: Plan::Sparse(plan),
        alpha: alpha.iter().map(|&x| x as f64).collect(),
        beta: beta.iter().map(|&x| x as f64).collect(),
        value: r.value,
        transport_cost,
        marginal_error_rows,
        marginal_error_cols,
        iterations: r.iterations,
        termination: r.termination,
    }
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
        let key = workspace_key(cfg, m, n, k);
        let ws = self.take_workspace(key, || Workspace::new(self, m, n, k, dual, cfg.memory))?;
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
        let r = run(self, ws, cfg, x0, &mut |_| {})?;
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
