//! The host side shared by the batched device solvers: per-problem results and progress ([`Results`], for
//! every batched solver), and for the sparse ones (L-BFGS in `gpu::sparse`, the Adam recipe in `gpu::adam`)
//! per-problem validation into column-sparse problems, one upload of a whole batch, one readback of its
//! potentials and plans, and each problem's [`Solution`] measured in f64 on the host.

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::batch::BatchProgress;
use crate::config::SparseOt;
use crate::cpu::sparse::{method, resolve, transpose_error, transpose_solution, Resolved};
use crate::error::Result;
use crate::gpu::buffers;
use crate::gpu::context::GpuContext;
use crate::gpu::sparse::{read, Workspace};
use crate::problem::Problem;
use crate::solution::{plan_metrics, Lanes, Plan, Solution, SparsePlan, Termination};

/// The per-problem results of a device batch as they come in, and the batch's progress count.
pub(super) struct Results<'a> {
    slots: Vec<Option<Result<Solution>>>,
    done: AtomicUsize,
    progress: BatchProgress<'a>,
}

impl<'a> Results<'a> {
    /// No results yet for `total` problems; `progress` hears of each finished one.
    pub(super) fn new(total: usize, progress: BatchProgress<'a>) -> Self {
        Self {
            slots: (0..total).map(|_| None).collect(),
            done: AtomicUsize::new(0),
            progress,
        }
    }

    /// Problems in the batch.
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Reports one more problem finished (from any thread).
    pub(super) fn tick(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        (self.progress)(done, self.len());
    }

    /// Sets problem `index`'s result (its progress is reported separately, with [`Results::tick`]).
    pub(super) fn set(&mut self, index: usize, result: Result<Solution>) {
        self.slots[index] = Some(result);
    }

    /// A problem rejected before solving: its error, reported finished.
    pub(super) fn reject(&mut self, index: usize, error: crate::Error) {
        self.set(index, Err(error));
        self.tick();
    }

    /// Results in batch order. After a device failure (`device` is `Err`), every problem still without a
    /// result gets that error and every problem not reported yet is reported finished.
    pub(super) fn finish(self, device: Result<()>) -> Vec<Result<Solution>> {
        if device.is_err() {
            (self.done.load(Ordering::Relaxed)..self.len()).for_each(|_| self.tick());
        }
        self.slots
            .into_iter()
            .map(|r| match (r, &device) {
                (Some(r), _) => r,
                (None, Err(e)) => Err(e.clone()),
                (None, Ok(())) => Err(crate::Error::Gpu(
                    "a problem of the batch was neither rejected nor solved".into(),
                )),
            })
            .collect()
    }
}

/// A problem of a batch that passed validation: its index in the batch and the column-sparse problem the
/// device solves (the transpose for row sparsity), with its starting point.
pub(super) struct Valid<'p> {
    pub(super) index: usize,
    pub(super) columns: Cow<'p, Problem>,
    pub(super) x0: Vec<f64>,
}

/// A batch split into per-problem validation errors and the valid problems, all with the same k.
pub(super) struct Prepared<'p, 'a> {
    /// The configuration as the device runs it (warm starts swapped for row sparsity).
    pub(super) cfg: SparseOt,
    pub(super) valid: Vec<Valid<'p>>,
    /// Nonzeros per column (the same for every problem of one shape).
    pub(super) k: usize,
    /// Results so far: the rejected problems' errors (already reported to the progress callback).
    pub(super) results: Results<'a>,
}

/// Validates every problem (`problems[i]` is problem i or its own error) for `cfg`, transposing for row
/// sparsity; errors found on a transposed problem are renamed back (a ↔ b, α ↔ β). Rejected problems are
/// reported finished to `progress`.
pub(super) fn prepare<'p, 'a>(
    cfg: &SparseOt,
    problems: impl ExactSizeIterator<Item = Result<Cow<'p, Problem>>>,
    progress: BatchProgress<'a>,
) -> Prepared<'p, 'a> {
    let rows = cfg.lanes == Lanes::Rows;
    let mut col_cfg = cfg.clone();
    if rows {
        col_cfg.warm_alpha = cfg.warm_beta.clone();
        col_cfg.warm_beta = cfg.warm_alpha.clone();
    }
    let axis = if rows { "columns" } else { "rows" };
    let mut results = Results::new(problems.len(), progress);
    let mut valid = Vec::new();
    let mut k = 0;
    for (index, given) in problems.enumerate() {
        let checked = given.and_then(|given| {
            let columns = if rows {
                Cow::Owned(given.transposed())
            } else {
                given
            };
            match resolve(&col_cfg, &columns, axis) {
                Ok(r) => Ok((columns, r)),
                Err(e) if rows => Err(transpose_error(e)),
                Err(e) => Err(e),
            }
        });
        match checked {
            Ok((columns, Resolved { k: kp, x0 })) => {
                k = kp;
                valid.push(Valid { index, columns, x0 });
            }
            Err(e) => results.reject(index, e),
        }
    }
    Prepared {
        cfg: col_cfg,
        valid,
        k,
        results,
    }
}

impl Prepared<'_, '_> {
    /// Sets the result of valid problem `v` (an index into `valid`), transposing back for row sparsity.
    pub(super) fn set(&mut self, user_cfg: &SparseOt, v: usize, sol: Result<Solution>) {
        let sol = match user_cfg.lanes {
            Lanes::Columns => sol,
            Lanes::Rows => sol
                .map(|s| transpose_solution(s, user_cfg))
                .map_err(transpose_error),
        };
        let index = self.valid[v].index;
        self.results.set(index, sol);
    }

    /// Results in batch order; see [`Results::finish`].
    pub(super) fn into_results(self, device: Result<()>) -> Vec<Result<Solution>> {
        self.results.finish(device)
    }
}

/// Uploads the costs (transposed, so a column is contiguous), marginals of the valid problems into the
/// workspace and returns their starting points back to back (f32).
pub(super) fn upload(ctx: &GpuContext, ws: &Workspace, valid: &[&Valid<'_>]) -> Vec<f32> {
    let nb = valid.len();
    let (m, n) = (ws.m, ws.n);
    let mut cost_t = Vec::with_capacity(nb * m * n);
    let (mut a, mut b) = (Vec::with_capacity(nb * m), Vec::with_capacity(nb * n));
    let mut x0 = Vec::with_capacity(nb * ws.dim());
    for v in valid {
        cost_t.extend(v.columns.cost().t().iter().map(|&c| c as f32));
        a.extend(v.columns.a().iter().map(|&c| c as f32));
        b.extend(v.columns.b().iter().map(|&c| c as f32));
        x0.extend(v.x0.iter().map(|&c| c as f32));
    }
    buffers::upload(ctx, &ws.cost_t, &cost_t);
    buffers::upload(ctx, &ws.a, &a);
    buffers::upload(ctx, &ws.b, &b);
    x0
}

/// The outcome of one problem's device run; the potentials and plan are in the workspace buffers.
pub(super) struct Run {
    pub(super) termination: Termination,
    pub(super) iterations: usize,
    /// Objective (maximised) at the returned potentials.
    pub(super) value: f64,
}

/// Reads the potentials (from `x`, B × dim) and plans of the whole batch back at once and builds every
/// valid problem's [`Solution`] from its [`Run`].
pub(super) fn read_solutions(
    ctx: &GpuContext,
    ws: &Workspace,
    x: &wgpu::Buffer,
    cfg: &SparseOt,
    valid: &[&Valid<'_>],
    runs: Vec<Run>,
) -> Result<Vec<Solution>> {
    let (nb, m, n, k, dim) = (valid.len(), ws.m, ws.n, ws.k, ws.dim());
    let x: Vec<f32> = read(ctx, ws, x, 0, nb * dim)?;
    let beta: Vec<f32> = if ws.dual {
        Vec::new()
    } else {
        read(ctx, ws, &ws.beta, 0, nb * n)?
    };
    let values: Vec<f32> = read(ctx, ws, &ws.plan_values, 0, nb * n * k)?;
    let rows: Vec<u32> = read(ctx, ws, &ws.plan_rows, 0, nb * n * k)?;
    Ok(valid
        .iter()
        .zip(runs)
        .enumerate()
        .map(|(p, (v, r))| {
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
            build_solution(ctx, cfg, &v.columns, k, data, r)
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

/// Compresses one problem's plan and measures its cost and marginal errors in f64 against the f64 problem.
fn build_solution(
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
