//! Log-domain Sinkhorn on the GPU (`shaders/sinkhorn.wgsl`) for a batch of B problems of one shape, with the
//! CPU path's ε schedule, stopping rule and assembly. A single problem is the batch B = 1.
//!
//! All B problems share one workspace: costs (one row-major copy each), log marginals and potentials lie
//! back to back and every kernel runs the B problems along `workgroup_id.z`. An iteration reads each cost
//! once ([`Geometry`]: `sweep` computes f' row by row and each row block's column partials, `merge` the next
//! g), or twice when a row exceeds one workgroup's registers (`update_f`, `columns`, `merge`). One round
//! covers up to `check_every` iterations of every problem still running, in one submission, plus 1
//! reduction at the check, whatever B is; then the B row-marginal errors (one f32 each) are read back and
//! every problem goes through the shared stopping rule ([`check`]) with its own ε schedule, stage and
//! tolerance. A problem that converged is frozen on the device (its workgroups return at once), so the
//! others go on without it. Before the first iteration, and after a stage change, g = G(f) is recomputed at
//! the current ε, so that an iteration's state always has exact columns for its ε.
//!
//! Both potentials ping-pong between two buffers, so on convergence the state *before* the last f-update
//! (exact columns, measured row error) is still there, as on the CPU; the host remembers which pair holds
//! each problem's final potentials.

use std::borrow::Cow;

use ndarray::Array1;

use crate::batch::{screen, Batch};
use crate::error::{Error, Result};
use crate::gpu::buffers::{self, Pass};
use crate::gpu::context::{GpuContext, WorkspaceKey};
use crate::gpu::cost::{self, CostBuffers};
use crate::gpu::kernels::Kernel;
use crate::gpu::problem::GpuProblem;
use crate::gpu::work;
use crate::monitor::Monitor;
use crate::points::{PointProblem, PointSolution};
use crate::problem::Problem;
use crate::sinkhorn::points;
use crate::sinkhorn::rules::{assemble, check, epsilon_schedule, start_point, validate, Check};
use crate::sinkhorn::settings::Sinkhorn;
use crate::solution::{
    Criterion, GpuWork, RanOn, Solution, Termination, DEFAULT_TOL_F32, F32_STOP_FRACTION,
};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SweepParams {
    m: u32,
    n: u32,
    rows: u32,
    blocks: u32,
    tiles: u32,
    _pad: [u32; 3],
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

/// Row entries each thread of `sweep` holds in registers (`VMAX` in `shaders/sinkhorn.wgsl`).
const ENTRIES_PER_THREAD: usize = 16;

/// How an iteration covers an m × n cost: the workgroup size, rows per block and whether a row fits the
/// registers of one workgroup (one read of the cost per iteration) or not (two reads: rows, then columns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Threads per workgroup of sweep, update_f and columns (merge too).
    pub(crate) wg: u32,
    /// sweep (rows and columns from one read) rather than update_f + columns.
    pub(crate) fused: bool,
    /// Rows per block: each block writes one partial log-sum-exp per column.
    pub(crate) rows: usize,
    pub(crate) blocks: usize,
    /// Column tiles of wg × [`ENTRIES_PER_THREAD`] columns (1 when fused).
    pub(crate) tiles: usize,
}

impl Geometry {
    pub(crate) fn new(ctx: &GpuContext, m: usize, n: usize) -> Self {
        let max_wg = ctx.max_workgroup();
        let need = n.div_ceil(ENTRIES_PER_THREAD).next_power_of_two() as u64;
        let fused = need <= u64::from(max_wg);
        let wg = if fused {
            (need as u32).max(64).min(max_wg)
        } else {
            max_wg
        };
        // About 512 blocks or more keep the device busy; more rows per block shrink the partials (2 words per
        // block and column, against m words of cost per column).
        let rows = (m / 512).clamp(1, 32);
        let tiles = if fused {
            1
        } else {
            n.div_ceil(wg as usize * ENTRIES_PER_THREAD)
        };
        Self {
            wg,
            fused,
            rows,
            blocks: m.div_ceil(rows),
            tiles,
        }
    }

    /// Dispatches of one iteration.
    pub(crate) fn dispatches_per_iteration(&self) -> usize {
        if self.fused {
            2
        } else {
            3
        }
    }
}

/// The passes of one iteration from f, g in buffers `p` (writing f, g into `1 − p`).
struct Iteration {
    /// sweep, or update_f then columns.
    rows: Vec<Pass>,
    merge: Pass,
}

/// The Sinkhorn kernel of `step` for a cost given as a matrix or by points.
fn kernel(cost: &CostBuffers, step: Step) -> Kernel {
    match (step, cost.is_points()) {
        (Step::Sweep, false) => Kernel::SinkhornSweep,
        (Step::Rows, false) => Kernel::SinkhornRows,
        (Step::Columns, false) => Kernel::SinkhornColumns,
        (Step::Merge, false) => Kernel::SinkhornMerge,
        (Step::Sweep, true) => Kernel::PointsSweep,
        (Step::Rows, true) => Kernel::PointsRows,
        (Step::Columns, true) => Kernel::PointsColumns,
        (Step::Merge, true) => Kernel::PointsMerge,
    }
}

/// The steps of an iteration, each a kernel of the Sinkhorn family.
#[derive(Clone, Copy)]
enum Step {
    Sweep,
    Rows,
    Columns,
    Merge,
}

/// Buffers and prepared passes of B problems of one shape.
pub(crate) struct SinkhornWorkspace {
    batch: usize,
    geometry: Geometry,
    ctl: wgpu::Buffer,
    cost: CostBuffers,
    log_a: wgpu::Buffer,
    log_b: wgpu::Buffer,
    f: [wgpu::Buffer; 2],
    g: [wgpu::Buffer; 2],
    max_err: wgpu::Buffer,
    staging: wgpu::Buffer,
    /// The iteration from buffers 0 and from buffers 1.
    iteration: [Iteration; 2],
    /// g[p] = G(f[p]) for p = 0, 1: the columns of the starting point, and again after an ε stage changes
    /// (so that the first iteration at a new ε starts from columns exact at that ε).
    columns: [Vec<Pass>; 2],
    reduce: Pass,
}

impl SinkhornWorkspace {
    fn new(ctx: &GpuContext, m: usize, n: usize, nb: usize, points: Option<usize>) -> Result<Self> {
        let geo = Geometry::new(ctx, m, n);
        let params = buffers::uniform(
            ctx,
            "sinkhorn params",
            &SweepParams {
                m: m as u32,
                n: n as u32,
                rows: geo.rows as u32,
                blocks: geo.blocks as u32,
                tiles: geo.tiles as u32,
                _pad: [0; 3],
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
        let cost = CostBuffers::new(ctx, "cost", (m, n, nb), points);
        let log_a = buffers::storage(ctx, "log a", nb * m);
        let log_b = buffers::storage(ctx, "log b", nb * n);
        let f = [
            buffers::storage(ctx, "f0", nb * m),
            buffers::storage(ctx, "f1", nb * m),
        ];
        let g = [
            buffers::storage(ctx, "g0", nb * n),
            buffers::storage(ctx, "g1", nb * n),
        ];
        let partial = buffers::storage(ctx, "column partials", 2 * nb * geo.blocks * n);
        let err = buffers::storage(ctx, "row errors", nb * m);
        let max_err = buffers::storage(ctx, "max row error", nb);
        let staging = buffers::staging(ctx, "sinkhorn readback", buffers::words(nb * m.max(n)));
        let cost_bytes = cost.bytes(m, n);
        let wg = geo.wg;
        let pass = |step, entries: &[(u32, &wgpu::Buffer)], lanes| {
            Ok::<_, Error>(
                Pass::per_workgroup_sized(ctx, kernel(&cost, step), wg, entries, lanes)?
                    .batched(nb),
            )
        };
        // The columns of the f in buffer 1 − p (update_f's output).
        let columns = |p: usize| {
            Ok::<_, Error>(
                pass(
                    Step::Columns,
                    &cost.with(&[(0, &params), (7, &f[1 - p]), (9, &ctl), (10, &partial)]),
                    geo.tiles * geo.blocks,
                )?
                .reads_cost(cost_bytes),
            )
        };
        // f, g read from buffers p (f_in, g_in), f' written to 1 − p and read by columns, g' to 1 − p.
        let rows = |p: usize| -> Result<Vec<Pass>> {
            let (fi, fo, gi) = (&f[p], &f[1 - p], &g[p]);
            let common = cost.with(&[
                (0, &params),
                (3, &log_a),
                (5, fi),
                (6, gi),
                (7, fo),
                (8, &err),
                (9, &ctl),
            ]);
            if geo.fused {
                let mut e = common.clone();
                e.push((10, &partial));
                Ok(vec![
                    pass(Step::Sweep, &e, geo.blocks)?.reads_cost(cost_bytes)
                ])
            } else {
                Ok(vec![
                    pass(Step::Rows, &common, m)?.reads_cost(cost_bytes),
                    columns(p)?,
                ])
            }
        };
        let merge = |p: usize| {
            pass(
                Step::Merge,
                &[
                    (0, &params),
                    (4, &log_b),
                    (9, &ctl),
                    (10, &partial),
                    (11, &g[1 - p]),
                ],
                n.div_ceil(wg as usize),
            )
        };
        let iteration = [
            Iteration {
                rows: rows(0)?,
                merge: merge(0)?,
            },
            Iteration {
                rows: rows(1)?,
                merge: merge(1)?,
            },
        ];
        // Columns of f[p] (bound as f_out of parity 1 − p) merged into g[p].
        let columns = [vec![columns(1)?, merge(1)?], vec![columns(0)?, merge(0)?]];
        let reduce = Pass::single(
            ctx,
            Kernel::MaxAbs,
            &[(0, &reduce_params), (1, &err), (2, &max_err)],
        )?
        .batched(nb);
        Ok(Self {
            batch: nb,
            geometry: geo,
            ctl,
            cost,
            log_a,
            log_b,
            f,
            g,
            max_err,
            staging,
            iteration,
            columns,
            reduce,
        })
    }

    /// Uploads every problem's current ε and active flag (staged until the next submission).
    fn write_controls(&self, ctx: &GpuContext, tracks: &[Track]) {
        let ctl: Vec<Control> = tracks.iter().map(Track::control).collect();
        ctx.queue()
            .write_buffer(&self.ctl, 0, bytemuck::cast_slice(&ctl));
    }

    /// Every problem's final (f, g) (as f64), from the pair of buffers its track says; each pair is read
    /// only if some problem's potentials lie there.
    fn read_state(
        &self,
        ctx: &GpuContext,
        tracks: &[Track],
        m: usize,
        n: usize,
    ) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
        let nb = self.batch;
        let mut pairs: [Option<(Vec<f64>, Vec<f64>)>; 2] = [None, None];
        for t in tracks {
            if pairs[t.at].is_none() {
                pairs[t.at] = Some((
                    self.read(ctx, &self.f[t.at], nb * m)?,
                    self.read(ctx, &self.g[t.at], nb * n)?,
                ));
            }
        }
        Ok(tracks
            .iter()
            .enumerate()
            .map(|(p, t)| match &pairs[t.at] {
                Some((f, g)) => (
                    f[p * m..(p + 1) * m].to_vec(),
                    g[p * n..(p + 1) * n].to_vec(),
                ),
                None => (Vec::new(), Vec::new()),
            })
            .collect())
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
    /// The f and g buffers (0 or 1) that hold this problem's potentials once it stopped.
    at: usize,
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
            at: 0,
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
                self.at = before_last;
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

/// Runs every problem's ε schedule from the state in the workspace (f in `f[0]`, the log marginals and the
/// costs of the B problems; the first submission computes g[0] = G(f[0])) until each has converged or
/// `max_iter` iterations ran. Rounds of up to
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
    // f[cur] and g[cur] hold the current potentials of every active problem (g = G(f): columns exact).
    let mut cur = 0usize;
    let mut iterations = 0usize;
    // g = G(f) before the first iteration and after a stage change.
    let mut columns = true;
    while iterations < cfg.max_iter && tracks.iter().any(|t| t.active) {
        // Iterations up to the next check (or the limit), in one submission.
        let to_check = cfg.check_every - iterations % cfg.check_every;
        let batch = to_check.min(cfg.max_iter - iterations);
        let per = ws.geometry.dispatches_per_iteration();
        let mut passes: Vec<&Pass> = Vec::with_capacity(per * batch + 3);
        if columns {
            passes.extend(&ws.columns[cur]);
            columns = false;
        }
        let mut before_last = cur;
        for _ in 0..batch {
            let it = &ws.iteration[cur];
            passes.extend(&it.rows);
            passes.push(&it.merge);
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
            let stage = t.stage;
            changed |= t.at_check(cfg, iterations, f64::from(err), before_last);
            columns |= t.stage != stage;
            if !t.active {
                finished();
            }
        }
        if changed {
            ws.write_controls(ctx, tracks);
        }
    }
    for t in tracks.iter_mut().filter(|t| t.active) {
        t.at = cur;
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
    let key = WorkspaceKey::Sinkhorn {
        m,
        n,
        batch: nb,
        points: None,
    };
    let ws = ctx.take_workspace(key, || SinkhornWorkspace::new(ctx, m, n, nb, None))?;
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
        ws.cost.matrix()?,
        &concat(starts, |s| s.problem.cost_slice().iter().copied()),
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
    buffers::upload(ctx, &ws.g[0], &concat(starts, |s| s.g0.iter().copied()));
    let mut tracks: Vec<Track> = starts
        .iter()
        .map(|s| {
            let p = s.problem;
            let (lo, hi) = p.bulk_bounds();
            let amax = p.a().iter().fold(0.0f64, |x, &y| x.max(y));
            let cost = (hi - lo, lo.abs().max(hi.abs()));
            Track::new(cfg, cost, amax, p.largest_marginal())
        })
        .collect();
    iterate(ctx, ws, cfg, &mut tracks, finished)?;
    let state = ws.read_state(ctx, &tracks, m, n)?;
    Ok(starts
        .iter()
        .zip(&tracks)
        .zip(state)
        .map(|((s, t), (f, g))| {
            let device = RanOn::Gpu {
                adapter: ctx.adapter_name().to_string(),
            };
            assemble(
                cfg,
                s.problem,
                Array1::from(f),
                Array1::from(g),
                t.iterations,
                t.termination,
                device,
            )
        })
        .collect())
}

/// One point-cloud problem on the GPU: the same kernels with the cost computed from the points
/// (`shaders/cost_points.wgsl`), no matrix anywhere; the solution assembled on the host in f64 from the
/// potentials ([`crate::sinkhorn::points::assemble`]). The masses must be positive (checked by the caller).
pub(crate) fn solve_points(
    ctx: &GpuContext,
    cfg: &Sinkhorn,
    p: &PointProblem,
) -> Result<PointSolution> {
    let (m, n, d) = (p.m(), p.n(), p.dim());
    let (f0, g0) = start_point(cfg, m, n)?;
    check_points(ctx, m, n, d)?;
    let key = WorkspaceKey::Sinkhorn {
        m,
        n,
        batch: 1,
        points: Some(d),
    };
    let ws = ctx.take_workspace(key, || SinkhornWorkspace::new(ctx, m, n, 1, Some(d)))?;
    let out = (|| {
        ws.cost.upload_points(ctx, p, 0.0)?;
        let to32 = |v: ndarray::ArrayView1<'_, f64>, log: bool| -> Vec<f32> {
            v.iter()
                .map(|&x| if log { x.ln() as f32 } else { x as f32 })
                .collect()
        };
        buffers::upload(ctx, &ws.log_a, &to32(p.a(), true));
        buffers::upload(ctx, &ws.log_b, &to32(p.b(), true));
        buffers::upload(ctx, &ws.f[0], &to32(ndarray::ArrayView1::from(&f0), false));
        buffers::upload(ctx, &ws.g[0], &to32(ndarray::ArrayView1::from(&g0), false));
        let (lo, hi) = p.cost_bounds();
        let amax = p.a().iter().fold(0.0f64, |x, &y| x.max(y));
        let mut tracks = [Track::new(
            cfg,
            (hi - lo, lo.abs().max(hi.abs())),
            amax,
            p.largest_marginal(),
        )];
        iterate(ctx, &ws, cfg, &mut tracks, &mut || {})?;
        let [t] = tracks;
        let (f, g) = ws
            .read_state(ctx, std::slice::from_ref(&t), m, n)?
            .pop()
            .ok_or_else(|| Error::Gpu("no potentials read back".into()))?;
        let device = RanOn::Gpu {
            adapter: ctx.adapter_name().to_string(),
        };
        points::assemble(cfg, p, f, g, t.iterations, t.termination, device)
    })();
    ctx.put_workspace(key, ws);
    out
}

/// Refuses point clouds beyond the device's limits (coordinates and column partials in one binding each,
/// u32 indexing, the workgroup grid).
fn check_points(ctx: &GpuContext, m: usize, n: usize, d: usize) -> Result<()> {
    cost::check_clouds(ctx, m, n, d)?;
    let geo = Geometry::new(ctx, m, n);
    ctx.check_binding(
        "max_storage_buffer_binding_size (column partials, f32)",
        8 * (geo.blocks * n) as u64,
    )?;
    ctx.check_lanes("max_compute_workgroups_per_dimension² (rows)", m)?;
    ctx.check_lanes(
        "max_compute_workgroups_per_dimension² (column tiles × row blocks)",
        geo.tiles * geo.blocks,
    )
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
    /// The device work of the solve.
    pub work: GpuWork,
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
    let key = WorkspaceKey::Sinkhorn {
        m,
        n,
        batch: 1,
        points: None,
    };
    let ws = ctx.take_workspace(key, || SinkhornWorkspace::new(ctx, m, n, 1, None))?;
    let (out, work) = work::measure(|| solve_in_buffers(ctx, &ws, cfg, input, &f0, &g0));
    ctx.put_workspace(key, ws);
    out.map(|o| GpuSinkhornOutput { work, ..o })
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
        )?
        .reads_cost(4 * (m * n) as u64),
        Pass::single(ctx, Kernel::MaxAbs, &[(0, &p_m), (1, input.a), (2, &amax)])?,
    ];
    buffers::upload(ctx, &ws.f[0], f0);
    buffers::upload(ctx, &ws.g[0], g0);
    let mut enc = buffers::encode(ctx, &passes.iter().collect::<Vec<_>>());
    // Into the workspace whose passes are bound to it (a device copy; counted as a read of the cost).
    enc.copy_buffer_to_buffer(input.cost, 0, ws.cost.matrix()?, 0, 4 * (m * n) as u64);
    work::dispatched(0, 4 * (m * n) as u64);
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
    enc.copy_buffer_to_buffer(&ws.f[t.at], 0, &f, 0, 4 * m as u64);
    enc.copy_buffer_to_buffer(&ws.g[t.at], 0, &g, 0, 4 * n as u64);
    buffers::submit(ctx, enc);
    ctx.check_errors()?;
    Ok(GpuSinkhornOutput {
        f,
        g,
        iterations: t.iterations,
        termination: t.termination,
        marginal_error: t.error,
        work: GpuWork::default(),
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
    let geo = Geometry::new(ctx, m, n);
    ctx.check_binding(
        "max_storage_buffer_binding_size (column partials of the batch, f32)",
        8 * (nb * geo.blocks * n) as u64,
    )?;
    ctx.check_lanes("max_compute_workgroups_per_dimension² (rows)", m)?;
    ctx.check_lanes(
        "max_compute_workgroups_per_dimension² (column tiles × row blocks)",
        geo.tiles * geo.blocks,
    )?;
    ctx.check_batch(nb)
}
