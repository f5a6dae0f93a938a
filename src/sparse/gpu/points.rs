//! Sparsity-constrained and quadratic OT between two point clouds on the GPU: the kernels of
//! `shaders/sparse_dual.wgsl` with every cost entry computed from the points (`shaders/cost_points.wgsl`),
//! so no m × n array exists on the device or on the host and the kernels read no cost
//! ([`crate::GpuWork::cost_bytes_read`] is 0). The device runs f32 L-BFGS on the (semi-)dual and extracts
//! the plan (at most k nonzeros per column); where L-BFGS stalls (on the kinks of k < m) the nonsmooth stage
//! continues in f64 on the CPU from its potentials, reading the cost from the points as the CPU path does.
//! The solution is measured in f64 on the host.

use crate::error::Result;
use crate::gpu::buffers;
use crate::gpu::context::GpuContext;
use crate::gpu::cost;
use crate::monitor::Progress;
use crate::points::PointProblem;
use crate::solution::{Formulation, RanOn, Solution};
use crate::sparse::cpu;
use crate::sparse::objective::SparseDual;
use crate::sparse::rules::ColumnData;
use crate::sparse::settings::SparseOt;

use super::SparseWorkspace;
use super::{batch, check_plan, continues_on_host, read, run, workspace_key, DeviceTol};

/// Maximises `dual`, the (semi-)dual of the column problem on `p` with its cost shifted down by `shift`,
/// from `x0`: f32 L-BFGS on the device, then (if it stalled with a tolerance to reach) the nonsmooth stage
/// in f64 on the CPU. `cfg.monitor` sees every step and can cancel.
pub(crate) fn maximise(
    ctx: &GpuContext,
    cfg: &SparseOt,
    (p, shift): (&PointProblem, f64),
    dual: &mut SparseDual<'_>,
    x0: Vec<f64>,
) -> Result<Solution> {
    let (m, n, d, k) = (p.m(), p.n(), p.dim(), dual.k);
    cost::check_clouds(ctx, m, n, d)?;
    check_plan(ctx, m, n, k)?;
    let key = workspace_key(cfg, (m, n, k), 1, Some(d));
    let dual_form = cfg.formulation == Formulation::Dual;
    let ws = ctx.take_workspace(key, || {
        SparseWorkspace::batched(ctx, (m, n, k), dual_form, cfg.memory, 1, Some(d))
    })?;
    let out = solve_in(ctx, &ws, cfg, (p, shift), dual, x0);
    ctx.put_workspace(key, ws);
    out
}

fn solve_in(
    ctx: &GpuContext,
    ws: &SparseWorkspace,
    cfg: &SparseOt,
    (p, shift): (&PointProblem, f64),
    dual: &mut SparseDual<'_>,
    x0: Vec<f64>,
) -> Result<Solution> {
    ws.cost.upload_points(ctx, p, shift)?;
    let to32 = |v: &[f64]| -> Vec<f32> { v.iter().map(|&x| x as f32).collect() };
    buffers::upload(ctx, &ws.a, &to32(dual.a));
    buffers::upload(ctx, &ws.b, &to32(dual.b));
    let tols = [DeviceTol::for_largest(cfg, p.largest_marginal())];
    let monitor = &cfg.monitor;
    let mut forward = |_: usize, step: &Progress| monitor.step(step);
    let mut runs = run(
        ctx,
        ws,
        cfg,
        &to32(&x0),
        &tols,
        &mut forward,
        &mut |_, _| {},
    )?;
    let r = runs
        .pop()
        .ok_or_else(|| crate::Error::Gpu("a run of one problem returned nothing".into()))?;
    if continues_on_host(cfg, r.termination) {
        let x: Vec<f32> = read(ctx, ws, &ws.lbfgs.x, 0, ws.dim())?;
        let x = x.into_iter().map(f64::from).collect();
        let mut sol = cpu::continue_on(cfg, dual, x, r.iterations);
        sol.device = RanOn::GpuThenCpu {
            adapter: ctx.adapter_name().to_string(),
        };
        return Ok(sol);
    }
    let data = ColumnData {
        cost: &dual.cost,
        a: dual.a,
        b: dual.b,
    };
    let mut sols = batch::read_solutions(ctx, ws, &ws.lbfgs.x, cfg, &[data], vec![r])?;
    sols.pop()
        .ok_or_else(|| crate::Error::Gpu("no solution read back".into()))
}
