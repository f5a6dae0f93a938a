//! Log-domain Sinkhorn on the GPU (`shaders/sinkhorn.wgsl`) for a batch of B problems of one shape, with the
//! CPU path's ε schedule, stopping rule and assembly. A single problem is the batch B = 1.
//!
//! All B problems share one workspace: costs, log marginals and potentials lie back to back and every kernel
//! runs the B problems along `workgroup_id.z`. One round covers up to `check_every` iterations of every
//! problem still running, in one submission of 2 dispatches per iteration plus 1 reduction at the check,
//! whatever B is; then the B row-marginal errors (one f32 each) are read back and every problem goes through
//! the shared stopping rule ([`check`]) with its own ε schedule, stage and tolerance. A problem that converged
//! is frozen on the device (its workgroups return at once), so the others go on without it.
//!
//! The potential f ping-pongs between two buffers, so on convergence the state *before* the last f-update
//! (exact columns, measured row error) is still there, as on the CPU; the host remembers which buffer holds
//! each problem's final f.

use std::borrow::Cow;

use ndarray::Array1;

use crate::batch::{screen, Batch};
use crate::error::{Error, Result};
use crate::gpu::buffers::{self, Pass};
use crate::gpu::context::{GpuContext, WorkspaceKey};
use crate::gpu::kernels::Kernel;
use crate::gpu::problem::GpuProblem;
use crate::monitor::Monitor;
use crate::problem::Problem;
use crate::sinkhorn::rules::{assemble, check, epsilon_schedule, start_point, validate, Check};
use crate::sinkhorn::settings::Sinkhorn;
use crate::solution::{
    Criterion, RanOn, Solution, Termination, DEFAULT_TOL_F32, F32_STOP_FRACTION,
};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SinkhornParams {
    m: u32,
    n: u32,
    _pad: [u32; 2],
}

/// Problem p's entry of the `ctl` buffer: its current ε and whether it still iterates.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Control {
    eps: f32,
    running: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ReduceParams {
    len: u32,
    rows: u32,
    cols: u32,
    _pad: u32,
}

/// Dispatches of one Sinkhorn iteration (g-update, f-update), whatever the batch size.
pub(crate) const DISPATCHES_PER_ITERATION: usize = 2;

/// Buffers and prepared passes of B problems of one shape.
pub(crate) struct SinkhornWorkspace {
    batch: usize,
    ctl: wgpu::Buffer,
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

impl SinkhornWorkspace {
    fn new(ctx: &GpuContext, m: usize, n: usize, nb: usize) -> Result<Self> {
        let params = buffers::uniform(
            ctx,
            "sinkhorn params",
            &SinkhornParams {
                m: m as u32,
                n: n as u32,
                _pad: [0; 2],
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
        let ctl = buffers::storage(ctx, "sinkhorn control", 2 * nb);
        let cost = buffers::storage(ctx, "cost", nb * m * n);
        let cost_t = buffers::storage(ctx, "cost_t", nb * m * n);
        let log_a = buffers::storage(ctx, "log a", nb * m);
        let log_b = buffers::storage(ctx, "log b", nb * n);
        let f = [
            buffers::storage(ctx, "f0", nb * m),
            buffers::storage(ctx, "f1", nb * m),
        ];
        let g = buffers::storage(ctx, "g", nb * n);
        let err = buffers::storage(ctx, "row errors", nb * m);
        let max_err = buffers::storage(ctx, "max row error", nb);
        let staging = buffers::staging(ctx, "sinkhorn readback", buffers::words(nb * m.max(n)));
        let pass_g = |p: usize| {
            Ok::<_, Error>(
                Pass::per_workgroup(
                    ctx,
                    Kernel::SinkhornG,
                    &[
                        (0, &params),
                        (2, &cost_t),
                        (4, &log_b),
                        (5, &f[p]),
                        (6, &g),
                        (9, &ctl),
                    ],
                    n,
                )?
                .batched(nb),
            )
        };
        let pass_f = |p: usize| {
            Ok::<_, Error>(
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
                        (9, &ctl),
                    ],
                    m,
                )?
                .batched(nb),
            )
        };
        let update_g = [pass_g(0)?, pass_g(1)?];
        let update_f = [pass_f(0)?, pass_f(1)?];
        let reduce = Pass::single(
            ctx,
            Kernel::MaxAbs,
            &[(0, &reduce_params), (1, &err), (2, &max_err)],
        )?
        .batched(nb);
        Ok(Self {
            batch: nb,
            ctl,
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

    /// Uploads every problem's current ε and active flag (staged until the next submission).
    fn write_controls(&self, ctx: &GpuContext, tracks: &[Track]) {
        let ctl: Vec<Control> = tracks.iter().map(Track::control).collect();
        ctx.queue()
            .write_buffer(&self.ctl, 0, bytemuck::cast_slice(&ctl));
    }

    /// Reads `len` f32 words of `buf` (from word 0) as f64.
    fn read(&self, ctx: &GpuContext, buf: &wgpu::Buffer, len: usize) -> Result<Vec<f64>> {
        let enc = ctx.device().create_command_encoder(&Default::default());
        let v: Vec<f32> = buffers::read_back(ctx, enc, buf, 0, buffers::words(len), &self.staging)?;
        Ok(v[..len].iter().map(|&x| f64::from(x)).collect())
    }
}

/// One problem's way through its ε schedule: the host side of the batched loop.
struct Track {
    /// ε of each stage (`epsilon_schedule`), ending at the target ε.
    stages: Vec<f64>,
    stage: usize,
    /// The tolerance of the last stage that a `Converged` status names: the configuration's when it was set,
    /// else the f32 default ([`DEFAULT_TOL_F32`] × max(a, b) × max(1, cost scale / ε)).
    tol: f64,
    /// The last stage stops when the f32 error is at most this, [`F32_STOP_FRACTION`] × `tol`: a margin for
    /// the f64 measure of the returned plan, which the status promises.
    stop_tol: f64,
    /// Tolerance of the intermediate stages, max(tol, 1e-2 · max a): they only need a rough fit.
    mid_tol: f64,
    /// Still iterating (false once converged; the device then skips its workgroups).
    active: bool,
    iterations: usize,
    termination: Termination,
    /// The f buffer (0 or 1) that holds this problem's f once it stopped.
    f_at: usize,
    /// The last measured max-norm row-marginal error (NaN before the first check).
    error: f64,
}

impl Track {
    /// The track of a problem whose cost has range `cost_range` and entries up to `cost_scale` in absolute
    /// value, whose largest entry of a is `amax` and largest entry of a and b is `mass_scale`.
    fn new(
        cfg: &Sinkhorn,
        (cost_range, cost_scale): (f64, f64),
        amax: f64,
        mass_scale: f64,
    ) -> Self {
        let tol = if cfg.tol_given {
            cfg.tol
        } else {
            DEFAULT_TOL_F32 * mass_scale * (cost_scale / cfg.epsilon).max(1.0)
        };
        let stop_tol = F32_STOP_FRACTION * tol;
        Self {
            stages: epsilon_schedule(cfg.epsilon, cfg.scaling, cost_range, cfg.warm.is_some()),
            stage: 0,
            tol,
            stop_tol,
            mid_tol: tol.max(1e-2 * amax),
            active: true,
            iterations: 0,
            termination: Termination::MaxIterations,
            f_at: 0,
            error: f64::NAN,
        }
    }

    fn last(&self) -> bool {
        self.stage + 1 == self.stages.len()
    }

    fn control(&self) -> Control {
        Control {
            eps: self.stages[self.stage] as f32,
            running: u32::from(self.active),
        }
    }

    /// Applies the stopping rule to the error measured after `iterations` iterations (f in buffer
    /// `before_last` before the last f-update). Returns whether the device's control entry changes.
    fn at_check(
        &mut self,
        cfg: &Sinkhorn,
        iterations: usize,
        err: f64,
        before_last: usize,
    ) -> bool {
        self.error = err;
        let (last, tol) = if self.last() {
            (true, self.stop_tol)
        } else {
            (false, self.mid_tol)
        };
        match check(cfg, iterations, err, last, tol) {
            Check::Continue => false,
            Check::NextStage => {
                self.stage += 1;
                true
            }
            Check::Stop(t) => {
                // Keep the state before the f-update: columns exact, row error = err.
                self.active = false;
                self.f_at = before_last;
                self.termination = match t {
                    Termination::Converged(Criterion::MarginalError { .. }) => {
                        Termination::Converged(Criterion::MarginalError { tol: self.tol })
                    }
                    t => t,
                };
                true
            }
        }
    }
}

/// Runs every problem's ε schedule from the state in the workspace (f in `f[0]`, g, log marginals and both
/// cost layouts of the B problems) until each has converged or `max_iter` iterations ran. Rounds of up to
/// `check_every` iterations cover all problems still active; `cfg.monitor` sees every check of every
/// problem and can cancel them all.
fn iterate(
    ctx: &GpuContext,
    ws: &SinkhornWorkspace,
    cfg: &Sinkhorn,
    tracks: &mut [Track],
    finished: &mut dyn FnMut(),
) -> Result<()> {
    debug_assert_eq!(tracks.len(), ws.batch);
    ws.write_controls(ctx, tracks);
    // f[cur] holds the current potential f of every active problem.
    let mut cur = 0usize;
    let mut iterations = 0usize;
    while iterations < cfg.max_iter && tracks.iter().any(|t| t.active) {
        // Iterations up to the next check (or the limit), in one submission.
        let to_check = cfg.check_every - iterations % cfg.check_every;
        let batch = to_check.min(cfg.max_iter - iterations);
        let mut passes: Vec<&Pass> = Vec::with_capacity(DISPATCHES_PER_ITERATION * batch + 1);
        let mut before_last = cur;
        for _ in 0..batch {
            passes.push(&ws.update_g[cur]);
            passes.push(&ws.update_f[cur]);
            before_last = cur;
            cur = 1 - cur;
        }
        iterations += batch;
        for t in tracks.iter_mut().filter(|t| t.active) {
            t.iterations = iterations;
        }
        if batch < to_check {
            buffers::submit(ctx, buffers::encode(ctx, &passes));
            continue;
        }
        passes.push(&ws.reduce);
        let enc = buffers::encode(ctx, &passes);
        let bytes = 4 * tracks.len() as u64;
        let errors = buffers::read_back::<f32>(ctx, enc, &ws.max_err, 0, bytes, &ws.staging)?;
        let mut changed = false;
        for (t, &err) in tracks.iter_mut().zip(&errors).filter(|(t, _)| t.active) {
            changed |= t.at_check(cfg, iterations, f64::from(err), before_last);
            if !t.active {
                finished();
            }
        }
        if changed {
            ws.write_controls(ctx, tracks);
        }
    }
    for t in tracks.iter_mut().filter(|t| t.active) {
        t.f_at = cur;
        finished();
    }
    ctx.check_errors()
}

/// A validated problem of a batch and its starting potentials.
struct Start<'a> {
    problem: &'a Problem,
    f0: &'a [f64],
    g0: &'a [f64],
}

/// One problem on the GPU (the batch B = 1); `cfg.monitor` sees every marginal-error check.
pub(crate) fn solve(ctx: &GpuContext, cfg: &Sinkhorn, p: &Problem) -> Result<Solution> {
    let (f0, g0) = validate(cfg, p)?;
    let start = Start {
        problem: p,
        f0: &f0,
        g0: &g0,
    };
    let mut sols = run(ctx, cfg, &[start], &mut || {})?;
    Ok(sols.remove(0))
}

/// Every problem of `batch` on the GPU; entry i is problem i's result. Validation errors are per problem (an
/// invalid problem is not uploaded); a device failure is reported on every problem that went to the device.
/// The monitor hears of finished problems (not of each check).
pub(crate) fn solve_batch(
    ctx: &GpuContext,
    user_cfg: &Sinkhorn,
    batch: &Batch,
) -> Vec<Result<Solution>> {
    let mut cfg = user_cfg.clone();
    cfg.monitor = user_cfg.monitor.quiet();
    let monitor: &Monitor = &user_cfg.monitor;
    let (valid, mut results) = screen(batch.problems(), monitor, |p: Cow<'_, Problem>| {
        let (f0, g0) = validate(&cfg, &p)?;
        Ok((p, f0, g0))
    });
    if valid.is_empty() {
        return results.into_vec(Ok(()));
    }
    let starts: Vec<Start> = valid
        .iter()
        .map(|(_, (p, f0, g0))| Start { problem: p, f0, g0 })
        .collect();
    match run(ctx, &cfg, &starts, &mut || results.tick()) {
        Ok(sols) => {
            for ((i, _), sol) in valid.iter().zip(sols) {
                results.set(*i, Ok(sol));
            }
            results.into_vec(Ok(()))
        }
        Err(e) => results.into_vec(Err(e)),
    }
}

/// Solves the problems of `starts` (one shape) together in one workspace; solutions in the same order.
fn run(
    ctx: &GpuContext,
    cfg: &Sinkhorn,
    starts: &[Start<'_>],
    finished: &mut dyn FnMut(),
) -> Result<Vec<Solution>> {
    let nb = starts.len();
    let (m, n) = (starts[0].problem.m(), starts[0].problem.n());
    check_shape(ctx, m, n, nb)?;
    let key = WorkspaceKey::Sinkhorn { m, n, batch: nb };
    let ws = ctx.take_workspace(key, || SinkhornWorkspace::new(ctx, m, n, nb))?;
    let result = run_in(ctx, &ws, cfg, starts, finished);
    ctx.put_workspace(key, ws);
    result
}

fn run_in(
    ctx: &GpuContext,
    ws: &SinkhornWorkspace,
    cfg: &Sinkhorn,
    starts: &[Start<'_>],
    finished: &mut dyn FnMut(),
) -> Result<Vec<Solution>> {
    let (m, n) = (starts[0].problem.m(), starts[0].problem.n());
    buffers::upload(
        ctx,
        &ws.cost,
        &concat(starts, |s| s.problem.cost_slice().iter().copied()),
    );
    buffers::upload(
        ctx,
        &ws.cost_t,
        &concat(starts, |s| {
            s.problem.cost().reversed_axes().into_iter().copied()
        }),
    );
    buffers::upload(
        ctx,
        &ws.log_a,
        &concat(starts, |s| s.problem.a().into_iter().map(|x| x.ln())),
    );
    buffers::upload(
        ctx,
        &ws.log_b,
        &concat(starts, |s| s.problem.b().into_iter().map(|x| x.ln())),
    );
    buffers::upload(ctx, &ws.f[0], &concat(starts, |s| s.f0.iter().copied()));
    buffers::upload(ctx, &ws.g, &concat(starts, |s| s.g0.iter().copied()));
    let mut tracks: Vec<Track> = starts
        .iter()
        .map(|s| {
            let p = s.problem;
            let (lo, hi) = p.cost_bounds();
            let amax = p.a().iter().fold(0.0f64, |x, &y| x.max(y));
            let cost = (hi - lo, lo.abs().max(hi.abs()));
            Track::new(cfg, cost, amax, p.largest_marginal())
        })
        .collect();
    iterate(ctx, ws, cfg, &mut tracks, finished)?;
    let nb = starts.len();
    // Each f buffer is read only if some problem's final f lies there.
    let mut f_bufs: [Option<Vec<f64>>; 2] = [None, None];
    for t in &tracks {
        if f_bufs[t.f_at].is_none() {
            f_bufs[t.f_at] = Some(ws.read(ctx, &ws.f[t.f_at], nb * m)?);
        }
    }
    let g = ws.read(ctx, &ws.g, nb * n)?;
    Ok(starts
        .iter()
        .zip(&tracks)
        .enumerate()
        .map(|(p, (s, t))| {
            let f_all = f_bufs[t.f_at]
                .as_deref()
                .expect("every problem's f buffer was read above");
            let f = Array1::from(f_all[p * m..(p + 1) * m].to_vec());
            let g = Array1::from(g[p * n..(p + 1) * n].to_vec());
            let device = RanOn::Gpu {
                adapter: ctx.adapter_name().to_string(),
            };
            assemble(cfg, s.problem, f, g, t.iterations, t.termination, device)
        })
        .collect())
}

/// The problems' values back to back, in f32 (the layout of every batched buffer).
fn concat<'a, I>(starts: &'a [Start<'a>], values: impl Fn(&'a Start<'a>) -> I) -> Vec<f32>
where
    I: Iterator<Item = f64>,
{
    starts.iter().flat_map(values).map(|x| x as f32).collect()
}

/// The result of [`Sinkhorn::solve_buffers`]: the potentials as new GPU buffers and the run's report.
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

/// [`Sinkhorn::solve_buffers`]: the warm start is checked as for host problems ([`start_point`]); the
/// buffers' values are not (see [`GpuProblem`]).
pub(crate) fn solve_buffers(
    ctx: &GpuContext,
    cfg: &Sinkhorn,
    input: &GpuProblem<'_>,
) -> Result<GpuSinkhornOutput> {
    input.check()?;
    let (m, n) = (input.m, input.n);
    let (f0, g0) = start_point(cfg, m, n)?;
    let to_f32 = |v: Vec<f64>| -> Vec<f32> { v.into_iter().map(|x| x as f32).collect() };
    let (f0, g0) = (to_f32(f0), to_f32(g0));
    check_shape(ctx, m, n, 1)?;
    let key = WorkspaceKey::Sinkhorn { m, n, batch: 1 };
    let ws = ctx.take_workspace(key, || SinkhornWorkspace::new(ctx, m, n, 1))?;
    let out = solve_in_buffers(ctx, &ws, cfg, input, &f0, &g0);
    ctx.put_workspace(key, ws);
    out
}

fn solve_in_buffers(
    ctx: &GpuContext,
    ws: &SinkhornWorkspace,
    cfg: &Sinkhorn,
    input: &GpuProblem<'_>,
    f0: &[f32],
    g0: &[f32],
) -> Result<GpuSinkhornOutput> {
    let (m, n) = (input.m, input.n);
    let reduce_params = |len: usize| {
        buffers::uniform(
            ctx,
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
    let range = buffers::storage(ctx, "cost range", 1);
    let amax = buffers::storage(ctx, "max a", 1);
    let passes = [
        Pass::per_thread(
            ctx,
            Kernel::Transpose,
            &[(0, &p_mn), (1, input.cost), (2, &ws.cost_t)],
            m * n,
        )?,
        Pass::per_thread(
            ctx,
            Kernel::LogInto,
            &[(0, &p_m), (1, input.a), (2, &ws.log_a)],
            m,
        )?,
        Pass::per_thread(
            ctx,
            Kernel::LogInto,
            &[(0, &p_n), (1, input.b), (2, &ws.log_b)],
            n,
        )?,
        Pass::single(
            ctx,
            Kernel::Range,
            &[(0, &p_mn), (1, input.cost), (2, &range)],
        )?,
        Pass::single(ctx, Kernel::MaxAbs, &[(0, &p_m), (1, input.a), (2, &amax)])?,
    ];
    buffers::upload(ctx, &ws.f[0], f0);
    buffers::upload(ctx, &ws.g, g0);
    let mut enc = buffers::encode(ctx, &passes.iter().collect::<Vec<_>>());
    enc.copy_buffer_to_buffer(input.cost, 0, &ws.cost, 0, 4 * (m * n) as u64);
    // The ε schedule needs the cost range, the stage tolerances max a: one readback of two scalars.
    let both = buffers::storage(ctx, "range and max a", 2);
    enc.copy_buffer_to_buffer(&range, 0, &both, 0, 4);
    enc.copy_buffer_to_buffer(&amax, 0, &both, 4, 4);
    let scalars = buffers::read_back::<f32>(ctx, enc, &both, 0, 8, &ws.staging)?;
    // In the default tolerance the cost range stands for the cost's scale and max a for max(a, b): the
    // scalars at hand.
    let (range, amax) = (f64::from(scalars[0]), f64::from(scalars[1]));
    let mut tracks = [Track::new(cfg, (range, range), amax, amax)];
    iterate(ctx, ws, cfg, &mut tracks, &mut || {})?;
    let [t] = tracks;
    let f = buffers::storage(ctx, "f", m);
    let g = buffers::storage(ctx, "g", n);
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(&ws.f[t.f_at], 0, &f, 0, 4 * m as u64);
    enc.copy_buffer_to_buffer(&ws.g, 0, &g, 0, 4 * n as u64);
    buffers::submit(ctx, enc);
    ctx.check_errors()?;
    Ok(GpuSinkhornOutput {
        f,
        g,
        iterations: t.iterations,
        termination: t.termination,
        marginal_error: t.error,
    })
}

/// Refuses shapes and batch sizes beyond the device's limits (and beyond the shader's u32 indexing).
fn check_shape(ctx: &GpuContext, m: usize, n: usize, nb: usize) -> Result<()> {
    let what = if nb == 1 {
        "max_storage_buffer_binding_size (cost matrix, f32)"
    } else {
        "max_storage_buffer_binding_size (batch of cost matrices, f32)"
    };
    let words = (nb as u64) * (m as u64) * (n as u64);
    ctx.check_binding(what, 4 * words)?;
    if words > u64::from(u32::MAX) {
        return Err(Error::DeviceLimit {
            what: "u32 indexing of the batch's cost entries in the shader",
            limit: u64::from(u32::MAX),
            needed: words,
        });
    }
    ctx.check_lanes("max_compute_workgroups_per_dimension² (rows)", m)?;
    ctx.check_lanes("max_compute_workgroups_per_dimension² (columns)", n)?;
    ctx.check_batch(nb)
}
