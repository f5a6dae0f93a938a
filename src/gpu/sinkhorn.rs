//! Log-domain Sinkhorn on the GPU (`shaders/sinkhorn.wgsl`), with the CPU path's ε schedule, stopping rule
//! and assembly.
//!
//! One submission covers up to `check_every` iterations; the row-marginal error is reduced on the device
//! and read back (one f32) only at checks. The potential f ping-pongs between two buffers, so on convergence
//! the state *before* the last f-update (exact columns, measured row error) is still there, as on the CPU.

use ndarray::Array1;

use crate::config::{Observer, Sinkhorn};
use crate::cpu::sinkhorn::{assemble, check, epsilon_schedule, validate, Check};
use crate::error::Result;
use crate::gpu::buffers::{self, Pass};
use crate::gpu::context::{GpuContext, WorkspaceKey};
use crate::gpu::kernels::Kernel;
use crate::gpu::sparse::GpuProblem;
use crate::problem::Problem;
use crate::solution::{Solution, Termination};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    eps: f32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ReduceParams {
    len: u32,
    rows: u32,
    cols: u32,
    _pad: u32,
}

/// Buffers and prepared passes of one shape.
pub(crate) struct Workspace {
    params: wgpu::Buffer,
    cost: wgpu::Buffer,
    cost_t: wgpu::Buffer,
    log_a: wgpu::Buffer,
    log_b: wgpu::Buffer,
    f: [wgpu::Buffer; 2],
    g: wgpu::Buffer,
    max_err: wgpu::Buffer,
    staging: wgpu::Buffer,
    /// update_g and update_f reading f[p] (and writing f[1 − p]), p = 0, 1.
    update_g: [Pass; 2],
    update_f: [Pass; 2],
    reduce: Pass,
}

impl Workspace {
    fn new(ctx: &GpuContext, m: usize, n: usize) -> Result<Self> {
        let params = buffers::uniform(
            ctx,
            "sinkhorn params",
            &Params {
                m: m as u32,
                n: n as u32,
                eps: 1.0,
                _pad: 0,
            },
        );
        let reduce_params = buffers::uniform(
            ctx,
            "max_abs params",
            &ReduceParams {
                len: m as u32,
                rows: 0,
                cols: 0,
                _pad: 0,
            },
        );
        let cost = buffers::storage(ctx, "cost", m * n);
        let cost_t = buffers::storage(ctx, "cost_t", m * n);
        let log_a = buffers::storage(ctx, "log a", m);
        let log_b = buffers::storage(ctx, "log b", n);
        let f = [
            buffers::storage(ctx, "f0", m),
            buffers::storage(ctx, "f1", m),
        ];
        let g = buffers::storage(ctx, "g", n);
        let err = buffers::storage(ctx, "row errors", m);
        let max_err = buffers::storage(ctx, "max row error", 1);
        let staging = buffers::staging(ctx, "sinkhorn readback", buffers::words(m.max(n)));
        let pass_g = |p: usize| {
            Pass::per_workgroup(
                ctx,
                Kernel::SinkhornG,
                &[(0, &params), (2, &cost_t), (4, &log_b), (5, &f[p]), (6, &g)],
                n,
            )
        };
        let pass_f = |p: usize| {
            Pass::per_workgroup(
                ctx,
                Kernel::SinkhornF,
                &[
                    (0, &params),
                    (1, &cost),
                    (3, &log_a),
                    (5, &f[p]),
                    (6, &g),
                    (7, &f[1 - p]),
                    (8, &err),
                ],
                m,
            )
        };
        let update_g = [pass_g(0)?, pass_g(1)?];
        let update_f = [pass_f(0)?, pass_f(1)?];
        let reduce = Pass::single(
            ctx,
            Kernel::MaxAbs,
            &[(0, &reduce_params), (1, &err), (2, &max_err)],
        )?;
        Ok(Self {
            params,
            cost,
            cost_t,
            log_a,
            log_b,
            f,
            g,
            max_err,
            staging,
            update_g,
            update_f,
            reduce,
        })
    }
}

fn to_f32(v: impl IntoIterator<Item = f64>) -> Vec<f32> {
    v.into_iter().map(|x| x as f32).collect()
}

fn read_vec(
    ctx: &GpuContext,
    ws: &Workspace,
    buf: &wgpu::Buffer,
    len: usize,
) -> Result<Array1<f64>> {
    let enc = ctx.device().create_command_encoder(&Default::default());
    let v: Vec<f32> = buffers::read_back(ctx, enc, buf, 0, buffers::words(len), &ws.staging)?;
    Ok(v[..len].iter().map(|&x| x as f64).collect())
}

pub(crate) fn solve(
    ctx: &GpuContext,
    cfg: &Sinkhorn,
    p: &Problem,
    observer: Observer<'_>,
) -> Result<Solution> {
    let (f0, g0) = validate(cfg, p)?;
    let (m, n) = (p.m(), p.n());
    check_shape(ctx, m, n)?;
    let key = WorkspaceKey::Sinkhorn { m, n };
    let ws = ctx.take_workspace(key, || Workspace::new(ctx, m, n))?;
    let result = run(ctx, &ws, cfg, p, f0, g0, observer);
    ctx.put_workspace(key, ws);
    result
}

fn run(
    ctx: &GpuContext,
    ws: &Workspace,
    cfg: &Sinkhorn,
    p: &Problem,
    f0: Vec<f64>,
    g0: Vec<f64>,
    observer: Observer<'_>,
) -> Result<Solution> {
    let (m, n) = (p.m(), p.n());
    let cost = p.cost_slice();
    buffers::upload(ctx, &ws.cost, &to_f32(cost.iter().copied()));
    buffers::upload(ctx, &ws.cost_t, &to_f32(p.cost().t().iter().copied()));
    buffers::upload(ctx, &ws.log_a, &to_f32(p.a().iter().map(|x| x.ln())));
    buffers::upload(ctx, &ws.log_b, &to_f32(p.b().iter().map(|x| x.ln())));
    buffers::upload(ctx, &ws.f[0], &to_f32(f0));
    buffers::upload(ctx, &ws.g, &to_f32(g0));
    let (cmin, cmax) = cost
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &c| {
            (lo.min(c), hi.max(c))
        });
    let amax = p.a().iter().fold(0.0f64, |x, &y| x.max(y));
    let out = iterate(ctx, ws, cfg, (m, n), cmax - cmin, amax, observer)?;
    let f = read_vec(ctx, ws, &ws.f[out.cur], m)?;
    let g = read_vec(ctx, ws, &ws.g, n)?;
    let mut sol = assemble(cfg, p, f, g, out.iterations, out.termination);
    sol.device = ctx.adapter_name().to_string();
    Ok(sol)
}

/// Where the iterations ended: f is in `ws.f[cur]`.
struct Outcome {
    cur: usize,
    iterations: usize,
    termination: Termination,
    /// The last measured row-marginal error (NaN if none was measured).
    error: f64,
}

/// Runs the ε schedule from the state in the workspace (f in `f[0]`, g, log marginals and both cost layouts).
fn iterate(
    ctx: &GpuContext,
    ws: &Workspace,
    cfg: &Sinkhorn,
    (m, n): (usize, usize),
    cost_range: f64,
    amax: f64,
    observer: Observer<'_>,
) -> Result<Outcome> {
    let stages = epsilon_schedule(cfg.epsilon, cfg.scaling, cost_range, cfg.warm.is_some());
    // f[cur] holds the current potential f.
    let mut cur = 0usize;
    let mut iterations = 0usize;
    let mut termination = Termination::MaxIterations;
    let mut error = f64::NAN;

    'stages: for (s, &eps) in stages.iter().enumerate() {
        let last = s + 1 == stages.len();
        let stage_tol = if last {
            cfg.tol
        } else {
            cfg.tol.max(1e-2 * amax)
        };
        let params = Params {
            m: m as u32,
            n: n as u32,
            eps: eps as f32,
            _pad: 0,
        };
        ctx.queue()
            .write_buffer(&ws.params, 0, bytemuck::bytes_of(&params));
        loop {
            if iterations >= cfg.max_iter {
                break 'stages;
            }
            // Iterations up to the next check (or the limit), in one submission.
            let to_check = cfg.check_every - iterations % cfg.check_every;
            let batch = to_check.min(cfg.max_iter - iterations);
            let mut passes: Vec<&Pass> = Vec::with_capacity(2 * batch + 1);
            let mut p_before_last = cur;
            for _ in 0..batch {
                passes.push(&ws.update_g[cur]);
                passes.push(&ws.update_f[cur]);
                p_before_last = cur;
                cur = 1 - cur;
            }
            iterations += batch;
            if batch < to_check {
                buffers::submit(ctx, buffers::encode(ctx, &passes));
                continue;
            }
            passes.push(&ws.reduce);
            let enc = buffers::encode(ctx, &passes);
            let err =
                buffers::read_back::<f32>(ctx, enc, &ws.max_err, 0, 4, &ws.staging)?[0] as f64;
            error = err;
            match check(cfg, iterations, err, last, stage_tol, &mut *observer) {
                Check::Continue => {}
                Check::Converged(t) => {
                    // Keep the state before the f-update: columns exact, row error = err.
                    cur = p_before_last;
                    termination = t;
                    break 'stages;
                }
                Check::NextStage => continue 'stages,
            }
        }
    }
    ctx.check_errors()?;
    Ok(Outcome {
        cur,
        iterations,
        termination,
        error,
    })
}

/// The result of [`GpuContext::sinkhorn_buffers`]: the potentials as new GPU buffers and the run's report.
/// The plan is T_ij = exp((f_i + g_j − C_ij)/ε); it is not formed.
#[derive(Debug)]
pub struct GpuSinkhornOutput {
    /// f, m f32 (`STORAGE | COPY_SRC | COPY_DST`).
    pub f: wgpu::Buffer,
    /// g, n f32.
    pub g: wgpu::Buffer,
    /// Iterations run (all ε stages together).
    pub iterations: usize,
    /// Why the solver stopped.
    pub termination: Termination,
    /// The last measured max-norm row-marginal error (NaN when no check ran); columns are exact.
    pub marginal_error: f64,
}

impl GpuContext {
    /// Log-domain Sinkhorn on data already in GPU buffers; returns the potentials as new GPU buffers. Only
    /// the cost range (once) and the marginal error (every `check_every` iterations) are read back. f32.
    ///
    /// Errors: buffer sizes that do not match the shape, a warm start of the wrong length, device limits.
    /// The values are not checked (see [`GpuProblem`]); `a` and `b` must be positive (their logs are taken).
    pub fn sinkhorn_buffers(
        &self,
        cfg: &Sinkhorn,
        input: &GpuProblem<'_>,
    ) -> Result<GpuSinkhornOutput> {
        input.check()?;
        let (m, n) = (input.m, input.n);
        let mut f0 = vec![0.0f32; m];
        let mut g0 = vec![0.0f32; n];
        if let Some((f, g)) = &cfg.warm {
            for (what, v, dst) in [("alpha", f, &mut f0), ("beta", g, &mut g0)] {
                if v.len() != dst.len() {
                    return Err(crate::Error::WarmStartMismatch {
                        what,
                        expected: dst.len(),
                        found: v.len(),
                    });
                }
                crate::problem::check_vector_finite(what, v.view())?;
                dst.iter_mut()
                    .zip(v.iter())
                    .for_each(|(d, &x)| *d = x as f32);
            }
        }
        check_shape(self, m, n)?;
        let key = WorkspaceKey::Sinkhorn { m, n };
        let ws = self.take_workspace(key, || Workspace::new(self, m, n))?;
        let out = self.sinkhorn_in(&ws, cfg, input, &f0, &g0);
        self.put_workspace(key, ws);
        out
    }

    fn sinkhorn_in(
        &self,
        ws: &Workspace,
        cfg: &Sinkhorn,
        input: &GpuProblem<'_>,
        f0: &[f32],
        g0: &[f32],
    ) -> Result<GpuSinkhornOutput> {
        let (m, n) = (input.m, input.n);
        let reduce_params = |len: usize| {
            buffers::uniform(
                self,
                "reduce params",
                &ReduceParams {
                    len: len as u32,
                    rows: m as u32,
                    cols: n as u32,
                    _pad: 0,
                },
            )
        };
        let (p_mn, p_m, p_n) = (reduce_params(m * n), reduce_params(m), reduce_params(n));
        let range = buffers::storage(self, "cost range", 1);
        let amax = buffers::storage(self, "max a", 1);
        let passes = [
            Pass::per_thread(
                self,
                Kernel::Transpose,
                &[(0, &p_mn), (1, input.cost), (2, &ws.cost_t)],
                m * n,
            )?,
            Pass::per_thread(
                self,
                Kernel::LogInto,
                &[(0, &p_m), (1, input.a), (2, &ws.log_a)],
                m,
            )?,
            Pass::per_thread(
                self,
                Kernel::LogInto,
                &[(0, &p_n), (1, input.b), (2, &ws.log_b)],
                n,
            )?,
            Pass::single(
                self,
                Kernel::Range,
                &[(0, &p_mn), (1, input.cost), (2, &range)],
            )?,
            Pass::single(self, Kernel::MaxAbs, &[(0, &p_m), (1, input.a), (2, &amax)])?,
        ];
        buffers::upload(self, &ws.f[0], f0);
        buffers::upload(self, &ws.g, g0);
        let mut enc = buffers::encode(self, &passes.iter().collect::<Vec<_>>());
        enc.copy_buffer_to_buffer(input.cost, 0, &ws.cost, 0, 4 * (m * n) as u64);
        // The ε schedule needs the cost range, the stage tolerances max a: one readback of two scalars.
        let both = buffers::storage(self, "range and max a", 2);
        enc.copy_buffer_to_buffer(&range, 0, &both, 0, 4);
        enc.copy_buffer_to_buffer(&amax, 0, &both, 4, 4);
        let scalars = buffers::read_back::<f32>(self, enc, &both, 0, 8, &ws.staging)?;
        let out = iterate(
            self,
            ws,
            cfg,
            (m, n),
            scalars[0] as f64,
            scalars[1] as f64,
            &mut |_| {},
        )?;
        let f = buffers::storage(self, "f", m);
        let g = buffers::storage(self, "g", n);
        let mut enc = self.device().create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&ws.f[out.cur], 0, &f, 0, 4 * m as u64);
        enc.copy_buffer_to_buffer(&ws.g, 0, &g, 0, 4 * n as u64);
        buffers::submit(self, enc);
        self.check_errors()?;
        Ok(GpuSinkhornOutput {
            f,
            g,
            iterations: out.iterations,
            termination: out.termination,
            marginal_error: out.error,
        })
    }
}

fn check_shape(ctx: &GpuContext, m: usize, n: usize) -> Result<()> {
    ctx.check_binding(
        "max_storage_buffer_binding_size (cost matrix, f32)",
        4 * (m as u64) * (n as u64),
    )?;
    ctx.check_lanes("max_compute_workgroups_per_dimension² (rows)", m)?;
    ctx.check_lanes("max_compute_workgroups_per_dimension² (columns)", n)
}
