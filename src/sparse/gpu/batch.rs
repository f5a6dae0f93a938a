//! The host side of the batched sparse device solvers (L-BFGS in lockstep, `sparse::gpu`; the Adam recipe,
//! `sparse::gpu::adam`): per-problem validation into column problems, one upload of a whole batch, one
//! readback of its potentials and plans, and each problem's [`Solution`] measured in f64 on the host.

use std::borrow::Cow;

use crate::batch::{screen, Outcomes};
use crate::error::Result;
use crate::gpu::buffers;
use crate::gpu::context::GpuContext;
use crate::monitor::Monitor;
use crate::problem::Problem;
use crate::solution::{PlanKind, RanOn, Solution, Termination};
use crate::sparse::columns::CostColumns;
use crate::sparse::gpu::{read, SparseWorkspace};
use crate::sparse::rules::{self, ColumnData, Outcome, PlanBuilder, Resolved};
use crate::sparse::settings::SparseOt;

/// A problem of a batch that passed validation: its index in the batch and the column problem the device
/// solves (the transpose for row sparsity), with its starting point.
pub(super) struct Valid<'p> {
    pub(super) index: usize,
    pub(super) columns: Cow<'p, Problem>,
    pub(super) x0: Vec<f64>,
}

/// A batch split into per-problem validation errors and the valid problems, all with the same k.
pub(super) struct Prepared<'p, 'm> {
    /// The configuration as the device runs it (the column problem's).
    pub(super) cfg: SparseOt,
    pub(super) valid: Vec<Valid<'p>>,
    /// Nonzeros per column (the same for every problem of one shape).
    pub(super) k: usize,
    /// Results so far: the rejected problems' errors (already reported to the monitor).
    pub(super) results: Outcomes<'m>,
}

/// Validates every problem (`problems[i]` is problem i or its own error) for `cfg` in the caller's
/// orientation and keeps its column problem. Rejected problems are reported finished to `monitor`.
pub(super) fn prepare<'p, 'm>(
    cfg: &SparseOt,
    problems: impl ExactSizeIterator<Item = Result<Cow<'p, Problem>>>,
    monitor: &'m Monitor,
) -> Prepared<'p, 'm> {
    let (checked, results) = screen(problems, monitor, |given| {
        let r = rules::resolve(cfg, &given)?;
        Ok((rules::column_problem(cfg, given), r))
    });
    let mut k = 0;
    let valid = checked
        .into_iter()
        .map(|(index, (columns, Resolved { k: kp, x0 }))| {
            k = kp;
            Valid { index, columns, x0 }
        })
        .collect();
    Prepared {
        cfg: rules::columns_config(cfg),
        valid,
        k,
        results,
    }
}

impl Prepared<'_, '_> {
    /// Sets the result of valid problem `v` (an index into `valid`), in the caller's orientation.
    pub(super) fn set(&mut self, user_cfg: &SparseOt, v: usize, sol: Result<Solution>) {
        let index = self.valid[v].index;
        self.results
            .set(index, sol.map(|s| rules::to_user(user_cfg, s)));
    }

    /// Results in batch order; see [`Outcomes::into_vec`].
    pub(super) fn into_results(self, device: Result<()>) -> Vec<Result<Solution>> {
        self.results.into_vec(device)
    }
}

/// Uploads the costs (row-major as the problems hold them, then transposed on the device so that a column is
/// contiguous) and the marginals of the valid problems into the workspace and returns their starting points
/// back to back (f32).
pub(super) fn upload(
    ctx: &GpuContext,
    ws: &SparseWorkspace,
    valid: &[&Valid<'_>],
) -> Result<Vec<f32>> {
    let nb = valid.len();
    let (m, n) = (ws.m, ws.n);
    let mut cost = Vec::with_capacity(nb * m * n);
    let (mut a, mut b) = (Vec::with_capacity(nb * m), Vec::with_capacity(nb * n));
    let mut x0 = Vec::with_capacity(nb * ws.dim());
    for v in valid {
        cost.extend(v.columns.cost_slice().iter().map(|&c| c as f32));
        a.extend(v.columns.a().iter().map(|&c| c as f32));
        b.extend(v.columns.b().iter().map(|&c| c as f32));
        x0.extend(v.x0.iter().map(|&c| c as f32));
    }
    let rows_major = buffers::storage(ctx, "cost (row-major)", nb * m * n);
    buffers::upload(ctx, &rows_major, &cost);
    drop(cost);
    let transpose = buffers::transpose(ctx, &rows_major, ws.cost.matrix()?, (m, n), nb)?;
    buffers::submit(ctx, buffers::encode(ctx, &[&transpose]));
    buffers::upload(ctx, &ws.a, &a);
    buffers::upload(ctx, &ws.b, &b);
    Ok(x0)
}

/// The outcome of one problem's device run; the potentials and plan are in the workspace buffers.
pub(super) struct Run {
    pub(super) termination: Termination,
    pub(super) iterations: usize,
    /// Objective (maximised) at the returned potentials.
    pub(super) value: f64,
}

/// [`read_solutions`] for the valid problems of a batch, measured on their own matrices.
pub(super) fn read_valid(
    ctx: &GpuContext,
    ws: &SparseWorkspace,
    x: &wgpu::Buffer,
    cfg: &SparseOt,
    valid: &[&Valid<'_>],
    runs: Vec<Run>,
) -> Result<Vec<Solution>> {
    let costs: Vec<CostColumns<'_>> = valid
        .iter()
        .map(|v| CostColumns::matrix(&v.columns))
        .collect();
    let data: Vec<ColumnData<'_>> = valid
        .iter()
        .zip(&costs)
        .map(|(v, cost)| ColumnData {
            cost,
            a: v.columns.a_slice(),
            b: v.columns.b_slice(),
        })
        .collect();
    read_solutions(ctx, ws, x, cfg, &data, runs)
}

/// Reads the potentials (from `x`, B × dim) and plans of the whole batch back at once and builds every
/// problem's [`Solution`] from its [`Run`], measured in f64 on `data[p]` (problem p's cost and marginals).
pub(super) fn read_solutions(
    ctx: &GpuContext,
    ws: &SparseWorkspace,
    x: &wgpu::Buffer,
    cfg: &SparseOt,
    data: &[ColumnData<'_>],
    runs: Vec<Run>,
) -> Result<Vec<Solution>> {
    let (nb, m, n, k, dim) = (data.len(), ws.m, ws.n, ws.k, ws.dim());
    let x: Vec<f32> = read(ctx, ws, x, 0, nb * dim)?;
    let beta: Vec<f32> = if ws.dual {
        Vec::new()
    } else {
        read(ctx, ws, &ws.beta, 0, nb * n)?
    };
    let values: Vec<f32> = read(ctx, ws, &ws.plan_values, 0, nb * n * k)?;
    let rows: Vec<u32> = read(ctx, ws, &ws.plan_rows, 0, nb * n * k)?;
    Ok(data
        .iter()
        .zip(runs)
        .enumerate()
        .map(|(p, (&d, r))| {
            let xp = &x[p * dim..(p + 1) * dim];
            let lane = p * n * k..(p + 1) * n * k;
            let data = Readback {
                alpha: &xp[..m],
                beta: if ws.dual {
                    &xp[m..]
                } else {
                    &beta[p * n..(p + 1) * n]
                },
                values: &values[lane.clone()],
                rows: &rows[lane],
            };
            build_solution(ctx, cfg, d, k, data, r)
        })
        .collect())
}

/// One problem's potentials and plan as read back from the device (f32; the plan is k entries per column,
/// padded with row index `u32::MAX`).
struct Readback<'a> {
    alpha: &'a [f32],
    beta: &'a [f32],
    values: &'a [f32],
    rows: &'a [u32],
}

/// Compresses one problem's plan (dropping the padding) and builds its solution on `p` with
/// [`rules::solution_of`].
fn build_solution(
    ctx: &GpuContext,
    cfg: &SparseOt,
    p: ColumnData<'_>,
    k: usize,
    data: Readback<'_>,
    r: Run,
) -> Solution {
    let (m, n) = (p.a.len(), p.b.len());
    let Readback {
        alpha,
        beta,
        values,
        rows,
    } = data;
    // A run continued on the host gets the plan asked for there; this one only carries its potentials.
    let gradient;
    let cfg = if super::continues_on_host(cfg, r.termination) && cfg.plan_kind != PlanKind::Gradient
    {
        gradient = cfg.clone().plan_kind(PlanKind::Gradient);
        &gradient
    } else {
        cfg
    };
    let mut plan = PlanBuilder::new(m, n);
    for j in 0..n {
        let lane = j * k..(j + 1) * k;
        plan.push_column(
            rows[lane.clone()]
                .iter()
                .zip(&values[lane])
                .filter(|(&i, _)| (i as usize) < m)
                .map(|(&i, &v)| (i as usize, f64::from(v))),
        );
    }
    let out = Outcome {
        alpha: alpha.iter().map(|&x| f64::from(x)).collect(),
        beta: beta.iter().map(|&x| f64::from(x)).collect(),
        value: r.value,
        iterations: r.iterations,
        termination: r.termination,
        device: RanOn::Gpu {
            adapter: ctx.adapter_name().to_string(),
        },
        relaxed: None,
    };
    rules::solution_of(cfg, p, plan, out)
}
