//! Log-domain Sinkhorn on the CPU (docs/MATH.md §5), with ε-scaling and warm start.
//!
//! Each iteration is a g-update (exact column marginals) followed by an f-update. The f-update yields the
//! row-marginal error of the state it starts from for free: (T1)_i = a_i exp((f_i − f_i')/ε). Every
//! `check_every` iterations that error is tested; on convergence the state *before* the f-update is returned,
//! so its columns are exact and its row error is the one measured. The kernel exp(−C/ε) is never formed.
//!
//! Speed (same iterates as the textbook two-pass form, up to rounding):
//! * **Stabilised by the previous potentials.** x_l' = ε log marg_l + x_l − ε ln Σ_k exp((x_l + y_k − C_lk)/ε):
//!   after the other half-step the plan's lanes sum to about their marginals, so the exponents are ≤ about
//!   log(max marginal) and one pass suffices. A lane whose sum leaves a safe range (first iterations, a new ε
//!   stage, a bad warm start) is recomputed with a max shift ([`Kernels::log_sum_exp`]).
//! * **One exponential per entry, one pass over the cost.** The f-update runs over the row-major cost and keeps
//!   each row's terms to accumulate the next g-update's column sums ([`fused_sweep`]); the column-major copy
//!   is read only by the first g-update of each stage and by the column fallback.
//! * **Column tiles.** Rows are swept in blocks of up to 8, tile of columns by tile ([`sweep_rows`]): a tile
//!   of g, of the cost (computed there from points) and of the column sums is read once per block and stays
//!   in cache, however wide the rows. The exponential sums carry their accumulators from tile to tile, so
//!   the bits are those of a whole-row sum.
//! * **SIMD exponentials** ([`crate::sinkhorn::expsum`]): a polynomial exp that LLVM vectorises, compiled for
//!   AVX2 + FMA when the CPU has them, in f64 or, with [`Precision::F32`], in f32 over an f32 cost copy.
//! * **Over-relaxation** of slow last stages ([`crate::sinkhorn::overrelax`]): the updates move ω ∈ [1, 2)
//!   times Sinkhorn's step, folded into the same sweep (ω = 1 is plain Sinkhorn).
//! * rayon over fixed row chunks with a fixed-order reduction (results independent of the thread count);
//!   nothing is allocated inside the iteration loop.

use std::borrow::Cow;
use std::sync::Mutex;

use ndarray::Array1;
use rayon::prelude::*;

use crate::error::Result;
use crate::points::PointLanes;
use crate::problem::Problem;
use crate::sinkhorn::expsum::{Acc, Kernels, Real, LANE_BLOCK, WIDTH};
use crate::sinkhorn::newton::{self, Handover};
use crate::sinkhorn::overrelax::Overrelaxation;
use crate::sinkhorn::rules::{assemble, check, epsilon_schedule, row_error, validate, Check};
use crate::sinkhorn::settings::{Precision, Sinkhorn};
use crate::solution::{Criterion, RanOn, Solution, Termination};

/// Solves `p` on the CPU; `cfg.monitor` sees every check and can cancel.
pub(crate) fn solve(cfg: &Sinkhorn, p: &Problem) -> Result<Solution> {
    let (f, g) = validate(cfg, p)?;
    let (mut f, mut g, mut iterations, mut termination) = match cfg.precision {
        Precision::F64 => dense::<f64>(cfg, p, f, g),
        Precision::F32 => dense::<f32>(cfg, p, f, g),
    };
    if finishes(cfg, p) && termination == Termination::MaxIterations {
        let budget = cfg.max_iter.saturating_sub(iterations);
        let (steps, converged) = newton::finish(cfg, p, &mut f, &mut g, iterations, budget);
        iterations += steps;
        if converged {
            termination = Termination::Converged(Criterion::MarginalError { tol: cfg.tol });
        } else if cfg.monitor.is_cancelled() {
            termination = Termination::Cancelled;
        }
    }
    Ok(assemble(
        cfg,
        p,
        Array1::from(f),
        Array1::from(g),
        iterations,
        termination,
        RanOn::Cpu,
    ))
}

/// Whether a solve of `p` to a tolerance ends with Newton's method where Sinkhorn is too slow
/// ([`newton`]): dense problems whose plan fits [`newton::MAX_ENTRIES`].
fn finishes(cfg: &Sinkhorn, p: &Problem) -> bool {
    cfg.tol > 0.0 && p.m() * p.n() <= newton::MAX_ENTRIES
}

/// The iterations on a dense cost in precision F.
fn dense<F: Real>(
    cfg: &Sinkhorn,
    p: &Problem,
    f: Vec<f64>,
    g: Vec<f64>,
) -> (Vec<f64>, Vec<f64>, usize, Termination) {
    let cost = CostLayouts::<F>::new(p);
    let task = Task {
        a: p.a_slice(),
        b: p.b_slice(),
        lanes: &cost,
        bounds: p.bulk_bounds(),
        row_error: &|f: &[f64], g: &[f64], eps: f64| row_error(p, f, g, eps),
        finishes: finishes(cfg, p),
    };
    iterate(cfg, &task, f, g)
}

/// Where the iteration reads the cost: its rows (f-update) and columns (g-update) in the working precision,
/// minus [`CostLanes::offset`]. A matrix lends its lanes; point clouds compute them into the caller's buffer.
pub(crate) trait CostLanes<F: Real>: Sync {
    /// Whether lanes are computed into the buffer passed in (then at least n long for a row, m for a column).
    const COMPUTED: bool;
    /// Row i (n entries).
    fn row<'s>(&'s self, i: usize, buf: &'s mut [F]) -> &'s [F];
    /// Entries start..start + len of row i (`buf` at least len long when computed).
    fn row_tile<'s>(&'s self, i: usize, start: usize, len: usize, buf: &'s mut [F]) -> &'s [F];
    /// Column j (m entries).
    fn col<'s>(&'s self, j: usize, buf: &'s mut [F]) -> &'s [F];
    /// What was subtracted from every entry.
    fn offset(&self) -> f64;
}

/// A scratch lane for [`CostLanes`] of `len` entries (empty when the lanes are borrowed).
fn scratch<F: Real, L: CostLanes<F>>(len: usize) -> Vec<F> {
    vec![F::ZERO; if L::COMPUTED { len } else { 0 }]
}

/// What one CPU solve iterates on: the masses, the cost's lanes and (min, max) bounds (for the ε schedule),
/// and the f64 row error of a state, which a convergence claimed by the estimate must pass.
pub(crate) struct Task<'a, L> {
    pub(crate) a: &'a [f64],
    pub(crate) b: &'a [f64],
    pub(crate) lanes: &'a L,
    pub(crate) bounds: (f64, f64),
    pub(crate) row_error: &'a RowError<'a>,
    /// Whether the caller finishes a slow last stage with Newton's method ([`Handover`]).
    pub(crate) finishes: bool,
}

/// The f64 row error of a state (f, g) at ε.
pub(crate) type RowError<'a> = dyn Fn(&[f64], &[f64], f64) -> f64 + Sync + 'a;

/// The cost in the working precision, in both layouts (rows for the f-update, columns for the g-update),
/// shifted by `offset` (f32 only: it keeps the magnitudes, hence the rounding errors, small).
struct CostLayouts<'a, F: Real> {
    rows: Cow<'a, [F]>,
    cols: Vec<F>,
    offset: f64,
    m: usize,
    n: usize,
}

impl<'a, F: Real> CostLayouts<'a, F> {
    fn new(p: &'a Problem) -> Self {
        let (rows, offset) = F::working_cost(p.cost_slice());
        let cols = transpose(&rows, p.m(), p.n());
        Self {
            rows,
            cols,
            offset,
            m: p.m(),
            n: p.n(),
        }
    }
}

impl<F: Real> CostLanes<F> for CostLayouts<'_, F> {
    const COMPUTED: bool = false;

    fn row<'s>(&'s self, i: usize, _: &'s mut [F]) -> &'s [F] {
        &self.rows[i * self.n..(i + 1) * self.n]
    }

    fn row_tile<'s>(&'s self, i: usize, start: usize, len: usize, _: &'s mut [F]) -> &'s [F] {
        &self.rows[i * self.n + start..][..len]
    }

    fn col<'s>(&'s self, j: usize, _: &'s mut [F]) -> &'s [F] {
        &self.cols[j * self.m..(j + 1) * self.m]
    }

    fn offset(&self) -> f64 {
        self.offset
    }
}

impl<F: Real> CostLanes<F> for PointLanes<F> {
    const COMPUTED: bool = true;

    fn row<'s>(&'s self, i: usize, buf: &'s mut [F]) -> &'s [F] {
        PointLanes::row(self, i, buf)
    }

    fn row_tile<'s>(&'s self, i: usize, start: usize, len: usize, buf: &'s mut [F]) -> &'s [F] {
        PointLanes::row_tile(self, i, start, len, buf)
    }

    fn col<'s>(&'s self, j: usize, buf: &'s mut [F]) -> &'s [F] {
        PointLanes::col(self, j, buf)
    }

    fn offset(&self) -> f64 {
        PointLanes::offset(self)
    }
}

/// Column-major copy of a row-major m × n matrix, in cache-sized tiles.
fn transpose<F: Real>(rows: &[F], m: usize, n: usize) -> Vec<F> {
    const TILE: usize = 32;
    let mut cols = vec![F::from_f64(0.0); m * n];
    cols.par_chunks_mut(TILE * m)
        .enumerate()
        .for_each(|(jt, block)| {
            let j0 = jt * TILE;
            let jn = block.len() / m;
            for i0 in (0..m).step_by(TILE) {
                for j in j0..j0 + jn {
                    for i in i0..(i0 + TILE).min(m) {
                        block[(j - j0) * m + i] = rows[i * n + j];
                    }
                }
            }
        });
    cols
}

/// The g-update read column by column (the first of each stage; later ones come from [`fused_sweep`]): for
/// every column l,
///
/// x_l ← ε log marg_l − ε LSE_k((y_k − C_kl)/ε) = ε log marg_l + x_l − ε ln Σ_k exp((x_l + y_k − C_kl)/ε).
///
/// The previous x_l is the stabiliser: after the other half-step the plan's lanes sum to about their
/// marginals, so the sum needs no max pass; [`Kernels::log_sum_exp`] adds one where it falls outside the safe
/// range (first iterations, a new ε stage). `y_work` receives y − max y in the working precision.
#[allow(clippy::too_many_arguments)]
fn half_step<F: Real, L: CostLanes<F>>(
    kernels: &Kernels<F>,
    x: &mut [f64],
    y: &[f64],
    y_work: &mut [F],
    lanes: &L,
    log_marg: &[f64],
    eps: f64,
) {
    let ys = y.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    for (w, &v) in y_work.iter_mut().zip(y) {
        *w = F::from_f64(v - ys);
    }
    let y_work = &*y_work;
    let (inv, offset) = (1.0 / eps, lanes.offset());
    x.par_iter_mut()
        .zip(log_marg.par_iter())
        .enumerate()
        .with_min_len(8)
        .for_each_init(
            || scratch::<F, L>(y.len()),
            |buf, (l, (xl, &lm))| {
                let c = lanes.col(l, buf);
                let w = (*xl + ys - offset) * inv;
                *xl += eps * (lm - kernels.log_sum_exp(y_work, c, inv, w));
            },
        );
}

/// Scratch of [`fused_sweep`], allocated once per solve. Rows are cut into fixed chunks (their size depends on
/// m and n only, so results do not depend on the thread count); each chunk keeps its partial column sums.
/// Each worker thread has its own [`RowBlock`] scratch.
struct Sweep<F> {
    rows_per_chunk: usize,
    partial: Vec<f64>,
    row_factor: Vec<f64>,
    col_sums: Vec<f64>,
    workers: Vec<Mutex<RowBlock<F>>>,
}

/// Columns per tile of the row sweep: a multiple of [`LANE_BLOCK`], so that summing a row tile by tile gives
/// the bits of summing it whole, and small enough that a tile of the potentials, of the cost (computed from
/// points) and of the column partial sums stay in the core's cache while a block of rows passes over them.
const TILE: usize = 8 * LANE_BLOCK;

/// Largest bytes of one worker's terms ([`RowBlock::terms`]): rows are swept in blocks of up to
/// [`MAX_BLOCK_ROWS`] rows, fewer on very wide problems.
const TERMS_BYTES: usize = 8 << 20;

/// See [`TERMS_BYTES`].
const MAX_BLOCK_ROWS: usize = 8;

/// One worker's scratch for a block of rows: their terms (block rows × n), the carried accumulators and
/// sums of their exponentials, a cost tile and (for computed costs) a whole row for the rare max-shifted
/// recomputation.
struct RowBlock<F> {
    terms: Vec<F>,
    acc: Vec<Acc>,
    sums: Vec<f64>,
    tile: Vec<F>,
    row: Vec<F>,
}

impl<F: Real> Sweep<F> {
    fn new<L: CostLanes<F>>(m: usize, n: usize) -> Self {
        // Up to 64 chunks for parallelism, fewer for very wide problems so that the chunks × n column
        // partials stay near 2^22 entries (at least 4 chunks).
        const MAX_CHUNKS: usize = 64;
        const SCRATCH_ENTRIES: usize = 1 << 22;
        let target = (SCRATCH_ENTRIES / n.max(1)).clamp(4, MAX_CHUNKS);
        let rows_per_chunk = m.div_ceil(target).max(1);
        let chunks = m.div_ceil(rows_per_chunk);
        let block_rows = (TERMS_BYTES / (n.max(1) * std::mem::size_of::<F>()))
            .clamp(1, MAX_BLOCK_ROWS)
            .min(rows_per_chunk);
        let workers = (0..rayon::current_num_threads())
            .map(|_| {
                Mutex::new(RowBlock {
                    terms: vec![F::ZERO; block_rows * n],
                    acc: vec![[0.0; WIDTH]; block_rows],
                    sums: vec![0.0; block_rows],
                    tile: scratch::<F, L>(TILE.min(n)),
                    row: scratch::<F, L>(n),
                })
            })
            .collect();
        Self {
            rows_per_chunk,
            partial: vec![0.0; chunks * n],
            row_factor: vec![0.0; m],
            col_sums: vec![0.0; n],
            workers,
        }
    }
}

/// The f-update over the cost's rows, fused with the column sums of the next g-update: one exponential
/// per entry and one pass over the cost per iteration.
///
/// Row i gives e_ij = exp((f_i + g_j − C_ij)/ε − shift_i) and Sinkhorn's update f_i + ε u_i with
/// u_i = log a_i − ln Σ_j e_ij − shift_i; the new f_i is f_i + ω ε u_i (ω = 1: plain Sinkhorn; see
/// `sinkhorn::overrelax`). The next g-update needs S_j = Σ_i exp((f_i' + g_j − C_ij)/ε) = Σ_i r_i e_ij with
/// r_i = exp(shift_i + ω u_i) (= a_i / Σ_j e_ij for ω = 1), so the row's terms are kept and added to the
/// chunk's column sums once r_i is known ([`sweep_rows`]). `f` holds f on entry and the new f on exit.
#[allow(clippy::too_many_arguments)]
fn fused_sweep<F: Real, L: CostLanes<F>>(
    kernels: &Kernels<F>,
    f: &mut [f64],
    g: &[f64],
    g_work: &mut [F],
    lanes: &L,
    log_a: &[f64],
    eps: f64,
    omega: f64,
    sweep: &mut Sweep<F>,
) {
    let n = g.len();
    let gs = g.iter().fold(f64::NEG_INFINITY, |x, &y| x.max(y));
    for (w, &v) in g_work.iter_mut().zip(g) {
        *w = F::from_f64(v - gs);
    }
    let rows = Rows {
        kernels,
        g_work,
        lanes,
        log_a,
        inv: 1.0 / eps,
        g_max: gs,
        offset: lanes.offset(),
        eps,
        omega,
    };
    let ch = sweep.rows_per_chunk;
    let workers = &sweep.workers;
    f.par_chunks_mut(ch)
        .zip(sweep.row_factor.par_chunks_mut(ch))
        .zip(sweep.partial.par_chunks_mut(n))
        .enumerate()
        .for_each(|(c, ((fc, rc), partial))| {
            // A worker's own scratch (any free one outside a pool): the results do not depend on which.
            let slot = rayon::current_thread_index().unwrap_or(0) % workers.len();
            let mut block = workers[slot].lock().unwrap_or_else(|e| e.into_inner());
            partial.fill(0.0);
            let per = block.sums.len();
            for (b, (fb, rb)) in fc.chunks_mut(per).zip(rc.chunks_mut(per)).enumerate() {
                sweep_rows(&rows, c * ch + b * per, fb, rb, partial, &mut block);
            }
        });
    let chunks = sweep.partial.len() / n;
    let partial = &sweep.partial;
    sweep
        .col_sums
        .par_iter_mut()
        .enumerate()
        .with_min_len(64)
        .for_each(|(j, s)| {
            *s = (0..chunks).map(|c| partial[c * n + j]).sum();
        });
}

/// What every row of one [`fused_sweep`] reads: e_ij = exp((g_work_j − C'_ij)·inv + w_i), with
/// g_work = g − max g, C' the cost less its offset and w_i = (f_i + max g − offset)·inv ([`Rows::w`]).
struct Rows<'a, F: Real, L> {
    kernels: &'a Kernels<F>,
    g_work: &'a [F],
    lanes: &'a L,
    log_a: &'a [f64],
    inv: f64,
    g_max: f64,
    offset: f64,
    eps: f64,
    omega: f64,
}

impl<F: Real, L> Rows<'_, F, L> {
    /// The exponent's row term w_i for f_i.
    fn w(&self, fi: f64) -> f64 {
        (fi + self.g_max - self.offset) * self.inv
    }
}

/// The rows i0.. of one block (f and r_i in `f`, `r`): their exponential sums tile by tile (each tile of g
/// and of the cost read once for the whole block), their updates, then their terms added to the chunk's
/// column sums, row after row for each column as a row-at-a-time sweep would (same bits).
fn sweep_rows<F: Real, L: CostLanes<F>>(
    rows: &Rows<'_, F, L>,
    i0: usize,
    f: &mut [f64],
    r: &mut [f64],
    partial: &mut [f64],
    block: &mut RowBlock<F>,
) {
    let Rows {
        kernels,
        g_work,
        lanes,
        inv,
        ..
    } = *rows;
    let n = g_work.len();
    let RowBlock {
        terms,
        acc,
        sums,
        tile,
        row,
    } = block;
    let k = f.len();
    acc[..k].fill([0.0; WIDTH]);
    for start in (0..n).step_by(TILE) {
        let len = TILE.min(n - start);
        let g_tile = &g_work[start..start + len];
        for (l, &fi) in f.iter().enumerate() {
            let c = lanes.row_tile(i0 + l, start, len, tile);
            let out = &mut terms[l * n + start..][..len];
            let w = rows.w(fi);
            sums[l] = kernels.sum_exp_store(g_tile, c, inv, w, out, &mut acc[l]);
        }
    }
    for (l, (fi, ri)) in f.iter_mut().zip(r.iter_mut()).enumerate() {
        let w = rows.w(*fi);
        let out = &mut terms[l * n..(l + 1) * n];
        // The whole row is formed only for the rare lane whose sum left the safe range.
        let (lse, shift) = if Kernels::<F>::safe(sums[l]) {
            (sums[l].ln(), 0.0)
        } else {
            let c = lanes.row(i0 + l, row);
            kernels.settle_store(sums[l], g_work, c, inv, w, out)
        };
        let u = rows.log_a[i0 + l] - lse;
        *fi += rows.omega * rows.eps * u;
        *ri = (shift + rows.omega * u).exp();
    }
    kernels.axpy_rows(partial, r, terms, n);
}

/// The g-update from the column sums of [`fused_sweep`]: g_j' = g_j + ω ε(log b_j − ln S_j). A column whose sum
/// may have lost terms to underflow (S_j below 10¹² × the flush threshold × Σ_i r_i, which bounds the lost part)
/// is recomputed directly from the column-major cost.
#[allow(clippy::too_many_arguments)]
fn next_columns<F: Real, L: CostLanes<F>>(
    kernels: &Kernels<F>,
    g_next: &mut [f64],
    g: &[f64],
    sweep: &Sweep<F>,
    f: &[f64],
    f_work: &mut [F],
    lanes: &L,
    log_b: &[f64],
    eps: f64,
    omega: f64,
) {
    let lost = 1e12 * F::FLUSH * sweep.row_factor.iter().sum::<f64>();
    let trusted = |s: f64| s >= lost && s <= F::SAFE_HI && s > 0.0;
    let mut all_trusted = true;
    for ((gn, &gj), (&s, &lb)) in g_next
        .iter_mut()
        .zip(g)
        .zip(sweep.col_sums.iter().zip(log_b))
    {
        *gn = gj;
        if trusted(s) {
            *gn += omega * eps * (lb - s.ln());
        } else {
            all_trusted = false;
        }
    }
    if all_trusted {
        return;
    }
    // Recompute the flagged columns exactly (max-shifted where needed).
    let fs = f.iter().fold(f64::NEG_INFINITY, |x, &y| x.max(y));
    for (w, &v) in f_work.iter_mut().zip(f) {
        *w = F::from_f64(v - fs);
    }
    let (m, inv, offset) = (f.len(), 1.0 / eps, lanes.offset());
    let mut buf = scratch::<F, L>(m);
    for (j, gn) in g_next.iter_mut().enumerate() {
        if !trusted(sweep.col_sums[j]) {
            let w = (*gn + fs - offset) * inv;
            let col = lanes.col(j, &mut buf);
            *gn += omega * eps * (log_b[j] - kernels.log_sum_exp(f_work, col, inv, w));
        }
    }
}

/// The Sinkhorn iterations over the ε stages; returns (f, g, iterations, termination).
pub(crate) fn iterate<F: Real, L: CostLanes<F>>(
    cfg: &Sinkhorn,
    task: &Task<'_, L>,
    mut f: Vec<f64>,
    mut g: Vec<f64>,
) -> (Vec<f64>, Vec<f64>, usize, Termination) {
    let (a, cost) = (task.a, task.lanes);
    let (m, n) = (a.len(), task.b.len());
    let kernels = Kernels::<F>::detect();
    let log_a: Vec<f64> = a.iter().map(|x| x.ln()).collect();
    let log_b: Vec<f64> = task.b.iter().map(|x| x.ln()).collect();
    let (cmin, cmax) = task.bounds;
    let stages = epsilon_schedule(cfg.epsilon, cfg.scaling, cmax - cmin, cfg.warm.is_some());
    let amax = a.iter().fold(0.0f64, |x, &y| x.max(y));
    let mut f_new = vec![0.0; m];
    let mut f_work = vec![F::from_f64(0.0); m];
    let mut g_work = vec![F::from_f64(0.0); n];
    let mut g_next = vec![0.0; n];
    let mut g_next_valid = false;
    let mut sweep = Sweep::<F>::new::<L>(m, n);
    let mut iterations = 0;
    let mut termination = Termination::MaxIterations;
    let every = cfg.check_every;
    let mut relax = Overrelaxation::new();
    let mut handover = Handover::new(task.finishes);
    let budget = handover.budget(cfg.max_iter);

    'stages: for (s, &eps) in stages.iter().enumerate() {
        let last = s + 1 == stages.len();
        // Intermediate stages only need a rough fit before ε shrinks.
        let stage_tol = if last {
            cfg.tol
        } else {
            cfg.tol.max(1e-2 * amax)
        };
        loop {
            if iterations >= budget {
                break 'stages;
            }
            if g_next_valid {
                std::mem::swap(&mut g, &mut g_next);
            } else {
                half_step(&kernels, &mut g, &f, &mut f_work, cost, &log_b, eps);
            }
            // Over-relaxation in the last stage of a solve to a tolerance; plain updates into and at a check.
            let t = iterations + 1;
            let relaxing = last && cfg.tol > 0.0;
            let omega_at = |t: usize| {
                if relaxing && !t.is_multiple_of(every) {
                    relax.omega()
                } else {
                    1.0
                }
            };
            let (omega_f, omega_g) = (omega_at(t), omega_at(t + 1));
            f_new.copy_from_slice(&f);
            fused_sweep(
                &kernels,
                &mut f_new,
                &g,
                &mut g_work,
                cost,
                &log_a,
                eps,
                omega_f,
                &mut sweep,
            );
            next_columns(
                &kernels,
                &mut g_next,
                &g,
                &sweep,
                &f_new,
                &mut f_work,
                cost,
                &log_b,
                eps,
                omega_g,
            );
            g_next_valid = true;
            iterations += 1;
            if iterations % cfg.check_every == 0 {
                let err = a
                    .iter()
                    .zip(f.iter().zip(&f_new))
                    .map(|(&ai, (&fo, &fn_))| ai * (((fo - fn_) / eps).exp() - 1.0).abs())
                    .fold(0.0, f64::max);
                if relaxing {
                    relax.observe(err, every);
                }
                let decision = match check(cfg, iterations, err, last, stage_tol) {
                    // A convergence claimed by the estimate holds only if the plan's true row sums agree.
                    Check::Stop(Termination::Converged(_))
                        if (task.row_error)(&f, &g, eps) > stage_tol =>
                    {
                        Check::Continue
                    }
                    other => other,
                };
                match decision {
                    Check::Continue if last && handover.now(iterations, err, stage_tol, budget) => {
                        // Keep the state before the f-update (columns exact); Newton's method finishes.
                        break 'stages;
                    }
                    Check::Continue => {}
                    Check::Stop(t) => {
                        // Keep the state before the f-update: columns exact, row error = err.
                        termination = t;
                        break 'stages;
                    }
                    Check::NextStage => {
                        std::mem::swap(&mut f, &mut f_new);
                        // The next stage starts with a g-update at its own ε.
                        g_next_valid = false;
                        continue 'stages;
                    }
                }
            }
            std::mem::swap(&mut f, &mut f_new);
        }
    }
    (f, g, iterations, termination)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused sweep's g-update equals a direct column half-step, and untrusted column sums are recomputed.
    #[test]
    fn fused_columns_match_direct_half_step() {
        let p = crate::golden_problem();
        fused_case(&p, vec![0.0; p.m()], 0.05);
    }

    /// On rows wider than a tile, and from potentials that push some rows' sums out of the safe range (so
    /// that they are recomputed shifted), the row sweep's f equals a direct row half-step and its column
    /// sums give the direct g-update.
    #[test]
    fn tiled_rows_match_direct_half_steps() {
        let (m, n) = (11, 2 * TILE + 37);
        let cost = ndarray::Array2::from_shape_fn((m, n), |(i, j)| {
            ((i * 7 + j * 13) % 101) as f64 / 101.0 + (j as f64 / n as f64).powi(2)
        });
        let p = Problem::uniform(&cost).unwrap();
        let eps = 0.01;
        let f0 = (0..m)
            .map(|i| if i % 3 == 0 { 800.0 * eps } else { 0.0 })
            .collect();
        fused_case(&p, f0, eps);
    }

    fn fused_case(p: &Problem, f0: Vec<f64>, eps: f64) {
        let (m, n) = (p.m(), p.n());
        let kernels = Kernels::<f64>::detect();
        let cost = CostLayouts::<f64>::new(p);
        let log_a: Vec<f64> = p.a_slice().iter().map(|x| x.ln()).collect();
        let log_b: Vec<f64> = p.b_slice().iter().map(|x| x.ln()).collect();
        let mut f = f0;
        let mut g = vec![0.0; n];
        let (mut f_work, mut g_work) = (vec![0.0; m], vec![0.0; n]);
        half_step(&kernels, &mut g, &f, &mut f_work, &cost, &log_b, eps);
        // The row half-step read directly, column by column of the transposed problem.
        let t = p.transposed();
        let by_columns = CostLayouts::<f64>::new(&t);
        let mut f_direct = f.clone();
        half_step(
            &kernels,
            &mut f_direct,
            &g,
            &mut g_work,
            &by_columns,
            &log_a,
            eps,
        );
        let mut sweep = Sweep::<f64>::new::<CostLayouts<f64>>(m, n);
        fused_sweep(
            &kernels,
            &mut f,
            &g,
            &mut g_work,
            &cost,
            &log_a,
            eps,
            1.0,
            &mut sweep,
        );
        for (i, (x, e)) in f.iter().zip(&f_direct).enumerate() {
            assert!((x - e).abs() <= 1e-13, "f[{i}] = {x:e}, direct {e:e}");
        }
        let mut expected = g.clone();
        half_step(&kernels, &mut expected, &f, &mut f_work, &cost, &log_b, eps);
        let check = |got: &[f64], what: &str| {
            for (j, (x, e)) in got.iter().zip(&expected).enumerate() {
                assert!(
                    (x - e).abs() <= 1e-14,
                    "{what}: g[{j}] = {x:e}, direct {e:e}"
                );
            }
        };
        let mut fused = vec![0.0; n];
        next_columns(
            &kernels,
            &mut fused,
            &g,
            &sweep,
            &f,
            &mut f_work,
            &cost,
            &log_b,
            eps,
            1.0,
        );
        check(&fused, "trusted sums");
        sweep.col_sums[1] = 0.0;
        sweep.col_sums[4] = f64::INFINITY;
        let mut recomputed = vec![0.0; n];
        next_columns(
            &kernels,
            &mut recomputed,
            &g,
            &sweep,
            &f,
            &mut f_work,
            &cost,
            &log_b,
            eps,
            1.0,
        );
        check(&recomputed, "recomputed columns");

        // Over-relaxed: f moves ω times Sinkhorn's step, the column sums are those of the relaxed f, and
        // the g-update moves ω times its own step.
        let omega = 1.5;
        let f0 = f.clone();
        let mut sweep = Sweep::<f64>::new::<CostLayouts<f64>>(m, n);
        let mut sweep_from_f0 = |w: f64| {
            let mut out = f0.clone();
            fused_sweep(
                &kernels,
                &mut out,
                &g,
                &mut g_work,
                &cost,
                &log_a,
                eps,
                w,
                &mut sweep,
            );
            out
        };
        let plain = sweep_from_f0(1.0);
        // Last, so that `sweep` holds the column sums of the relaxed f.
        let relaxed = sweep_from_f0(omega);
        for i in 0..m {
            let want = f0[i] + omega * (plain[i] - f0[i]);
            assert!(
                (relaxed[i] - want).abs() <= 1e-14,
                "f[{i}] = {}, want {want}",
                relaxed[i]
            );
        }
        let mut direct = g.clone();
        half_step(
            &kernels,
            &mut direct,
            &relaxed,
            &mut f_work,
            &cost,
            &log_b,
            eps,
        );
        let mut got = vec![0.0; n];
        next_columns(
            &kernels,
            &mut got,
            &g,
            &sweep,
            &relaxed,
            &mut f_work,
            &cost,
            &log_b,
            eps,
            omega,
        );
        for j in 0..n {
            let want = g[j] + omega * (direct[j] - g[j]);
            assert!(
                (got[j] - want).abs() <= 1e-13,
                "g[{j}] = {}, want {want}",
                got[j]
            );
        }
    }
}
