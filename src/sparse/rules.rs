//! The rules of a sparse solve that every backend follows (CPU f64, GPU f32, the Adam recipe): which k a
//! configuration means for a problem, which starting point, how row sparsity becomes column sparsity, when
//! k = 1 goes to the exact solver, and how a column-sparse plan becomes a [`Solution`].
//!
//! Row sparsity of (C, a, b) is column sparsity of (Cᵀ, b, a) with the potentials swapped: every backend
//! solves the *column problem* ([`columns_config`], [`column_problem`]) and hands its solution back through
//! [`to_user`]. Inputs are checked in the caller's orientation ([`resolve`]), so errors name the inputs the
//! caller gave.

use std::borrow::Cow;

use ndarray::Array1;

use crate::error::{Error, Result};
use crate::problem::{check_vector_finite, Problem};
use crate::solution::{
    plan_metrics, Formulation, Lanes, Method, Plan, RanOn, Solution, SparsePlan, Termination,
};
use crate::sparse::columns::CostColumns;
use crate::sparse::plans::{self, Relaxed};
use crate::sparse::settings::SparseOt;

/// Validated numeric settings of one solve, for its column problem.
pub(crate) struct Resolved {
    /// Nonzeros per column of the column problem (k, or m for quadratic OT).
    pub k: usize,
    /// Starting point of the column problem: α (semi-dual) or (α, β) (dual).
    pub x0: Vec<f64>,
}

/// Checks k, the marginal the formulation divides by and the warm start against `p` (in the caller's
/// orientation), and returns k and the starting point of the column problem.
pub(crate) fn resolve(cfg: &SparseOt, p: &Problem) -> Result<Resolved> {
    let k = check_k(cfg, p.m(), p.n())?;
    if cfg.formulation == Formulation::SemiDual {
        match cfg.lanes {
            Lanes::Columns => p.require_positive_b("the semi-dual", "it divides by b_j")?,
            Lanes::Rows => p.require_positive_a(
                "the semi-dual",
                "it divides by a_i when the rows carry the k limit",
            )?,
        }
    }
    let x0 = start_point(cfg, p.m(), p.n())?;
    Ok(Resolved { k, x0 })
}

/// The k of an m × n problem's column problem: the configured k (1 ≤ k ≤ the length of a lane), or the
/// whole lane for quadratic OT.
pub(crate) fn check_k(cfg: &SparseOt, m: usize, n: usize) -> Result<usize> {
    let (lane, axis) = match cfg.lanes {
        Lanes::Columns => (m, "rows"),
        Lanes::Rows => (n, "columns"),
    };
    match cfg.k {
        Some(k) if k == 0 || k > lane => Err(Error::InvalidK { k, max: lane, axis }),
        Some(k) => Ok(k),
        None => Ok(lane),
    }
}

/// The column problem's starting point for an m × n problem: zero, or the warm start (lengths and values
/// checked, named as the caller gave them). The semi-dual's only potential is the one over the lanes' other
/// side: α for column sparsity, β for row sparsity.
pub(crate) fn start_point(cfg: &SparseOt, m: usize, n: usize) -> Result<Vec<f64>> {
    let (first, second) = match cfg.lanes {
        Lanes::Columns => (("alpha", &cfg.warm_alpha, m), ("beta", &cfg.warm_beta, n)),
        Lanes::Rows => (("beta", &cfg.warm_beta, n), ("alpha", &cfg.warm_alpha, m)),
    };
    let mut parts = vec![first];
    if cfg.formulation == Formulation::Dual {
        parts.push(second);
    }
    let mut x0 = Vec::with_capacity(m + n);
    for (what, warm, len) in parts {
        match warm {
            Some(v) if v.len() != len => {
                return Err(Error::WarmStartMismatch {
                    what,
                    expected: len,
                    found: v.len(),
                })
            }
            Some(v) => {
                check_vector_finite(what, v.view())?;
                x0.extend(v.iter());
            }
            None => x0.extend(std::iter::repeat_n(0.0, len)),
        }
    }
    Ok(x0)
}

/// Solves `p` through its column problem on the host: checks the inputs ([`resolve`]), hands the column
/// configuration, the column problem, k and the start point to `solve`, and returns its solution in the
/// caller's orientation ([`to_user`]).
pub(crate) fn on_columns(
    cfg: &SparseOt,
    p: &Problem,
    solve: impl FnOnce(&SparseOt, &Problem, usize, Vec<f64>) -> Result<Solution>,
) -> Result<Solution> {
    let Resolved { k, x0 } = resolve(cfg, p)?;
    let columns = column_problem(cfg, Cow::Borrowed(p));
    let sol = solve(&columns_config(cfg), &columns, k, x0)?;
    Ok(to_user(cfg, sol))
}

/// The configuration of the column problem: for row sparsity the warm starts swap roles.
pub(crate) fn columns_config(cfg: &SparseOt) -> SparseOt {
    let mut col = cfg.clone();
    if cfg.lanes == Lanes::Rows {
        col.warm_alpha = cfg.warm_beta.clone();
        col.warm_beta = cfg.warm_alpha.clone();
    }
    col
}

/// The column problem of `p`: `p` itself, or its transpose for row sparsity.
pub(crate) fn column_problem<'p>(cfg: &SparseOt, p: Cow<'p, Problem>) -> Cow<'p, Problem> {
    match cfg.lanes {
        Lanes::Columns => p,
        Lanes::Rows => Cow::Owned(p.transposed()),
    }
}

/// A solution of the column problem as a solution of the caller's problem (transposed back for row
/// sparsity: plan transposed, potentials and marginal errors swapped).
pub(crate) fn to_user(cfg: &SparseOt, sol: Solution) -> Solution {
    if cfg.lanes == Lanes::Columns {
        return sol;
    }
    let Solution {
        plan,
        alpha,
        beta,
        marginal_error_rows,
        marginal_error_cols,
        ..
    } = sol;
    let plan = match plan {
        Plan::Sparse(p) => Plan::Sparse(p.transposed()),
        Plan::Dense(t) => Plan::Dense(t.reversed_axes()),
    };
    Solution {
        method: method(cfg, Lanes::Rows),
        plan,
        alpha: beta,
        beta: alpha,
        marginal_error_rows: marginal_error_cols,
        marginal_error_cols: marginal_error_rows,
        ..sol
    }
}

/// What a solve of `cfg` reports as solved, with the k limit on `lanes`.
pub(crate) fn method(cfg: &SparseOt, lanes: Lanes) -> Method {
    Method::Sparse {
        k: cfg.k,
        gamma: cfg.gamma,
        formulation: cfg.formulation,
        lanes,
    }
}

/// Whether a column problem with this k goes to the exact route: k = 1 is unregularised OT plus a constant
/// (S₁(α) is the LP semi-dual plus (γ/2)‖b‖²), solved exactly by the network simplex. A fixed budget
/// (`tol(0)`) or an evaluation of the start point (`max_iter(0)`) keeps the general path.
pub(crate) fn k1_is_exact(cfg: &SparseOt, p: &Problem, k: usize) -> bool {
    k == 1 && p.m() > 1 && cfg.tol > 0.0 && cfg.max_iter > 0
}

/// A column problem's plan as it is assembled, column by column; only strictly positive entries are kept.
pub(crate) struct PlanBuilder {
    shape: (usize, usize),
    ptr: Vec<usize>,
    indices: Vec<usize>,
    values: Vec<f64>,
}

impl PlanBuilder {
    /// An empty plan of an m × n column problem.
    pub(crate) fn new(m: usize, n: usize) -> Self {
        let mut ptr = Vec::with_capacity(n + 1);
        ptr.push(0);
        Self {
            shape: (m, n),
            ptr,
            indices: Vec::new(),
            values: Vec::new(),
        }
    }

    /// An m × n column problem's plan from (row, column, value) triplets in any order.
    pub(crate) fn from_triplets(
        m: usize,
        n: usize,
        triplets: impl Iterator<Item = (usize, usize, f64)>,
    ) -> Self {
        let mut columns = vec![Vec::new(); n];
        for (i, j, v) in triplets {
            columns[j].push((i, v));
        }
        let mut plan = Self::new(m, n);
        for col in columns {
            plan.push_column(col);
        }
        plan
    }

    /// Column j's entries (row, value).
    pub(crate) fn column(&self, j: usize) -> impl Iterator<Item = (usize, f64)> + '_ {
        let r = self.ptr[j]..self.ptr[j + 1];
        self.indices[r.clone()]
            .iter()
            .copied()
            .zip(self.values[r].iter().copied())
    }

    /// The (row, column, value) entries of the columns pushed so far.
    pub(crate) fn triplets(&self) -> impl Iterator<Item = (usize, usize, f64)> + '_ {
        (0..self.ptr.len() - 1).flat_map(move |j| self.column(j).map(move |(i, v)| (i, j, v)))
    }

    /// Appends the next column from its (row, value) entries.
    pub(crate) fn push_column(&mut self, entries: impl IntoIterator<Item = (usize, f64)>) {
        for (i, v) in entries {
            if v > 0.0 {
                self.indices.push(i);
                self.values.push(v);
            }
        }
        self.ptr.push(self.indices.len());
    }
}

/// What a backend returns for one column problem, besides its plan.
pub(crate) struct Outcome {
    /// α (length m).
    pub alpha: Array1<f64>,
    /// β (length n): the dual's own, or the semi-dual's maximiser at α.
    pub beta: Array1<f64>,
    /// Objective of the formulation at the returned potentials.
    pub value: f64,
    /// Iterations, all stages together.
    pub iterations: usize,
    /// Why it stopped.
    pub termination: Termination,
    /// Where it ran.
    pub device: RanOn,
    /// The relaxation's optimal plan, when the solve built one (the nonsmooth stage, the k = 1 route).
    pub relaxed: Option<Relaxed>,
}

/// A column problem's cost and marginals as the host reads them in f64.
#[derive(Clone, Copy)]
pub(crate) struct ColumnData<'a> {
    pub cost: &'a CostColumns<'a>,
    /// Row masses (length m).
    pub a: &'a [f64],
    /// Column masses (length n).
    pub b: &'a [f64],
}

/// A solution of a problem whose zero-mass lanes were removed, on the full problem `full` (cost and
/// marginals in the solution's orientation): the potentials `alpha`, `beta` already spread over it, the
/// plan's lanes put back at `kept` among all of the full problem's lanes (the others empty), and the
/// transport cost and marginal errors measured on `full`.
pub(crate) fn spread_back(
    sol: Solution,
    (alpha, beta): (Array1<f64>, Array1<f64>),
    kept: &[usize],
    full: ColumnData<'_>,
) -> Solution {
    let plan = match &sol.plan {
        Plan::Sparse(p) => {
            let total = match p.lanes() {
                Lanes::Rows => full.a.len(),
                Lanes::Columns => full.b.len(),
            };
            Plan::Sparse(p.spread_lanes(kept, total))
        }
        Plan::Dense(_) => unreachable!("sparse solvers return sparse plans"),
    };
    let (transport_cost, marginal_error_rows, marginal_error_cols) = plan_metrics(
        plan.triplets(),
        |i, j| full.cost.entry(i, j),
        full.a,
        full.b,
    );
    Solution {
        plan,
        alpha,
        beta,
        transport_cost,
        marginal_error_rows,
        marginal_error_cols,
        ..sol
    }
}

/// The column problem's [`Solution`]: the plan of the kind the configuration asks for (from T(α, β), the
/// gradient plan `plan`, see [`plans`]) compressed by column, its transport cost and marginal errors
/// measured in f64 against `data` (the problem's cost, stored or computed from points, and marginals).
pub(crate) fn solution_of(
    cfg: &SparseOt,
    data: ColumnData<'_>,
    plan: PlanBuilder,
    out: Outcome,
) -> Solution {
    let ingredients = plans::Ingredients {
        data,
        k: cfg.k.unwrap_or(data.a.len()),
        gamma: cfg.gamma,
        alpha: out.alpha.as_slice().expect("a standard vector"),
        value: out.value,
        termination: out.termination,
        tol: cfg.tol,
        relaxed: out.relaxed,
    };
    let (plan, plan_kind, plan_gap) = plans::build(cfg.plan_kind, plan, ingredients);
    let PlanBuilder {
        shape,
        ptr,
        indices,
        values,
    } = plan;
    let plan = SparsePlan::from_parts(shape, Lanes::Columns, ptr, indices, values);
    let (transport_cost, marginal_error_rows, marginal_error_cols) = plan_metrics(
        plan.triplets(),
        |i, j| data.cost.entry(i, j),
        data.a,
        data.b,
    );
    Solution {
        method: method(cfg, Lanes::Columns),
        device: out.device,
        plan: Plan::Sparse(plan),
        alpha: out.alpha,
        beta: out.beta,
        value: out.value,
        transport_cost,
        marginal_error_rows,
        marginal_error_cols,
        iterations: out.iterations,
        termination: out.termination,
        gpu_work: None,
        plan_kind: Some(plan_kind),
        plan_gap,
    }
}
