//! Sparsity-constrained and quadratic OT between two point clouds on the CPU: the f64 pipeline of `cpu` on
//! a cost computed column by column from the points ([`CostColumns::points`]), so memory is O((m + n) d)
//! for the points plus O(m + nk) for the solver and the plan (at most k nonzeros per column), never m × n.
//!
//! What differs from a dense problem is only where the cost comes from: with the same entries (the points'
//! [`PointProblem::to_problem`]) the potentials, plan and report are those of the dense solve, except that
//! k = 1 takes the general path (the exact network simplex needs the matrix).
//!
//! On a GPU the same pipeline runs with the device's f32 L-BFGS in place of the CPU's
//! (`sparse::gpu::points`): orientation, zero-mass targets, the conditioning shift and the elimination of
//! β are decided here for both.

use std::borrow::Cow;

use crate::device::Target;
use crate::error::Result;
use crate::points::PointProblem;
use crate::problem::{conditioning_shift, spread_potentials, unshift};
use crate::solution::{Formulation, Lanes, Solution};
use crate::sparse::columns::CostColumns;
use crate::sparse::cpu;
use crate::sparse::objective::SparseDual;
use crate::sparse::rules::{self, ColumnData};
use crate::sparse::settings::SparseOt;

/// Solves `p` with `cfg` on the CPU: checks k and the warm start (in the caller's orientation), solves the
/// column problem (the transposed clouds for row sparsity) and returns the solution in the caller's
/// orientation.
pub(crate) fn solve(cfg: &SparseOt, p: &PointProblem, target: &Target) -> Result<Solution> {
    let k = rules::check_k(cfg, p.m(), p.n())?;
    let x0 = rules::start_point(cfg, p.m(), p.n())?;
    let columns = match cfg.lanes {
        Lanes::Columns => Cow::Borrowed(p),
        Lanes::Rows => Cow::Owned(p.transposed()),
    };
    let sol = solve_columns(&rules::columns_config(cfg), &columns, k, x0, target)?;
    let sol = rules::to_user(cfg, sol);
    sol.checked(p.largest_marginal(), p.m().max(p.n()))
}

/// Solves a column problem on points. The semi-dual divides by b_j, so zero-mass targets are removed first
/// and given back empty columns; a cost whose minimum dwarfs its range is shifted to start at 0 (as for
/// dense problems), with the potentials, value and transport cost restored.
fn solve_columns(
    cfg: &SparseOt,
    p: &PointProblem,
    k: usize,
    x0: Vec<f64>,
    target: &Target,
) -> Result<Solution> {
    if cfg.formulation == Formulation::SemiDual {
        let kept: Vec<usize> = (0..p.n()).filter(|&j| p.b()[j] > 0.0).collect();
        if kept.len() < p.n() {
            return solve_reduced(cfg, p, k, x0, &kept, target);
        }
    }
    let shift = conditioning_shift(p.cost_bounds()).unwrap_or(0.0);
    let cfg = cfg.with_warm_shift(shift);
    let (a, b) = masses(p);
    let dual_of =
        |f: Formulation| SparseDual::on(CostColumns::points(p, shift), a, b, k, cfg.gamma, f);
    let on = (p, shift);
    let sol = if cpu::eliminates_beta(&cfg, b) {
        let semi = cpu::semi_dual(&cfg);
        let mut dual = dual_of(Formulation::SemiDual);
        let sol = maximise(target, &semi, on, &mut dual, x0[..p.m()].to_vec())?;
        cpu::as_dual(&cfg, dual_of(Formulation::Dual), sol)
    } else {
        maximise(target, &cfg, on, &mut dual_of(cfg.formulation), x0)?
    };
    if shift == 0.0 {
        return Ok(sol);
    }
    Ok(unshift(sol, shift, p.mass(), |i, j| p.cost(i, j)))
}

/// Maximises `dual`, the (semi-)dual of the column problem on `p` whose cost is shifted down by `shift`,
/// from `x0`, on `target`, and builds the solution there.
#[cfg_attr(not(feature = "gpu"), allow(unused_variables))]
fn maximise(
    target: &Target,
    cfg: &SparseOt,
    (p, shift): (&PointProblem, f64),
    dual: &mut SparseDual<'_>,
    x0: Vec<f64>,
) -> Result<Solution> {
    match target {
        Target::Cpu => Ok(cpu::maximise(cfg, dual, x0)),
        #[cfg(feature = "gpu")]
        Target::Gpu(ctx) => super::gpu::points::maximise(ctx, cfg, (p, shift), dual, x0),
    }
}

/// The masses (a, b) of `p` as slices.
fn masses(p: &PointProblem) -> (&[f64], &[f64]) {
    (
        p.a().to_slice().expect("contiguous masses"),
        p.b().to_slice().expect("contiguous masses"),
    )
}

/// The semi-dual on the targets `kept` (those with mass), spread back to all n: removed columns are empty,
/// with β_j = min_i (C_ij − α_i) so that no score of theirs is positive. The start point `x0` is α, which
/// the removal leaves as it is (the semi-dual has no β to start from).
fn solve_reduced(
    cfg: &SparseOt,
    p: &PointProblem,
    k: usize,
    x0: Vec<f64>,
    kept: &[usize],
    target: &Target,
) -> Result<Solution> {
    let reduced = p.with_columns(kept);
    let sol = solve_columns(cfg, &reduced, k, x0, target)?;
    let rows: Vec<usize> = (0..p.m()).collect();
    let potentials = spread_potentials(
        (&rows, kept),
        (p.m(), p.n()),
        |i, j| p.cost(i, j),
        (&sol.alpha, &sol.beta),
        0.0,
    );
    let (a, b) = masses(p);
    let full = ColumnData {
        cost: &CostColumns::points(p, 0.0),
        a,
        b,
    };
    Ok(rules::spread_back(sol, potentials, kept, full))
}
