//! The plans a sparse solve can return ([`PlanKind`]), built on the host in f64 from the returned
//! potentials and what the solve learnt on the way.
//!
//! * **Gradient**: T(α, β), column j being the k-sparse projection of column j's scores. It is what the
//!   (semi-)dual's gradient is made of, so its row marginals are off by the gradient: within the tolerance at
//!   a smooth optimum, possibly by a whole row's mass at a nonsmooth one.
//! * **Relaxed**: the optimal plan of the convex relaxation, whose columns are mixtures of k-sparse columns
//!   (the primal of D_k). At a nonsmooth optimum it mixes the supports that tie in a column, with weights
//!   given by the exact polish's multipliers (marginals exact up to rounding) or by the smoothing stage
//!   (marginals within the tolerance). At k = 1 it is the optimal transport plan (the exact solver's).
//! * **Feasible**: a plan with at most k nonzeros per column that meets both marginals. A support S_j of at
//!   most k rows is fixed per column (the relaxed plan's largest entries, then the best scores α_i − c_ij,
//!   ties to the lower row) and quadratic OT restricted to it,
//!
//!   ```text
//!   min ⟨T, C⟩ + (γ/2)‖T‖²  s.t.  T1 = a, Tᵀ1 = b, T ≥ 0, T_ij = 0 off S,
//!   ```
//!
//!   is solved through its semi-dual S_S(α) = α·a − Σ_j max_{t ≥ 0, Σt = b_j, t = 0 off S_j} t·(α − c_j) −
//!   (γ/2)‖t‖², piecewise quadratic, by the semismooth Newton method of the quadratic solver
//!   (`sparse::newton`). When no plan on S meets the marginals, S_S is unbounded, so S is checked first by a
//!   maximum flow from the rows to the columns through S (`sparse::flow`): while it leaves mass behind, S
//!   is opened to the rows left short (one more column each, the cheapest at α, in place of the entry that
//!   carries the least flow there). If no S found that way carries the marginals, or Newton does not meet
//!   the tolerance, the next kind down is returned.
//!
//! Every dual value D_k(α, β) is a lower bound on the relaxed optimum, itself a lower bound on the objective
//! of any plan with at most k nonzeros per column. So P(T) − D_k(α, β) bounds how far a relaxed or feasible
//! plan is from its optimum: [`crate::Solution::plan_gap`].

use crate::ops::{simplex_threshold, top_k_into};
use crate::solution::{Criterion, PlanKind, Termination, DEFAULT_TOL};
use crate::sparse::flow;
use crate::sparse::newton::{self, PiecewiseQuadratic, Supports};
use crate::sparse::rules::{ColumnData, PlanBuilder};

/// A plan of the convex relaxation with its relaxed objective.
pub(crate) struct Relaxed {
    /// The plan, column by column (strictly positive entries).
    pub plan: PlanBuilder,
    /// The relaxed primal objective, ⟨T, C⟩ + (γ/2) Σ_j Σ_i z_ij g_ij² for T = z ∘ g: an upper bound on D_k*.
    pub primal: f64,
}

/// What the solve hands over to build the plan asked for.
pub(crate) struct Ingredients<'a> {
    /// The column problem.
    pub data: ColumnData<'a>,
    /// Nonzeros per column allowed.
    pub k: usize,
    pub gamma: f64,
    /// The returned α (the semi-dual's and the dual's).
    pub alpha: &'a [f64],
    /// The objective at the returned potentials (a lower bound on every plan's objective).
    pub value: f64,
    pub termination: Termination,
    /// The tolerance of the solve (the repair's too; 0, a fixed budget, repairs to [`DEFAULT_TOL`]).
    pub tol: f64,
    /// The relaxed plan, when the solve found one.
    pub relaxed: Option<Relaxed>,
}

/// The plan of kind `kind` (or the next one down that can be built), its kind and its gap to the dual value
/// (`None` for the gradient plan). `gradient` is T(α, β).
pub(crate) fn build(
    kind: PlanKind,
    gradient: PlanBuilder,
    ing: Ingredients<'_>,
) -> (PlanBuilder, PlanKind, Option<f64>) {
    if kind == PlanKind::Gradient {
        return (gradient, PlanKind::Gradient, None);
    }
    let p = ing.data;
    let gap = |primal: f64| primal - ing.value;
    // At a point that meets the marginal criterion, T(α, β) has at most k nonzeros per column and meets the
    // marginals within the tolerance: it is a feasible plan of both problems.
    if matches!(
        ing.termination,
        Termination::Converged(Criterion::MarginalError { .. })
    ) {
        let primal = quadratic_objective(p, ing.gamma, gradient.triplets());
        return (gradient, kind, Some(gap(primal)));
    }
    if kind == PlanKind::Feasible {
        let source = ing.relaxed.as_ref().map_or(&gradient, |r| &r.plan);
        if let Some(plan) = repair(&ing, source) {
            let primal = quadratic_objective(p, ing.gamma, plan.triplets());
            return (plan, PlanKind::Feasible, Some(gap(primal)));
        }
    }
    match ing.relaxed {
        Some(r) => (r.plan, PlanKind::Relaxed, Some(gap(r.primal))),
        None => (gradient, PlanKind::Gradient, None),
    }
}

/// ⟨T, C⟩ + (γ/2)‖T‖² of a plan given as triplets.
fn quadratic_objective(
    p: ColumnData<'_>,
    gamma: f64,
    triplets: impl Iterator<Item = (usize, usize, f64)>,
) -> f64 {
    triplets
        .map(|(i, j, t)| t * p.cost.entry(i, j) + 0.5 * gamma * t * t)
        .sum()
}

/// The support of the repair: per column the (at most k) largest entries of `source` (ties to the lower
/// row), then the best scores α_i − c_ij (tie rule) up to k rows.
fn support(ing: &Ingredients<'_>, source: &PlanBuilder) -> Vec<Vec<usize>> {
    let p = ing.data;
    let (m, n) = (p.a.len(), p.b.len());
    let k = ing.k.min(m);
    let mut scores = vec![0.0; m];
    let mut top = Vec::with_capacity(m);
    let mut buf = Vec::new();
    (0..n)
        .map(|j| {
            let mut kept: Vec<(usize, f64)> = source.column(j).collect();
            kept.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
            kept.truncate(k);
            let mut rows: Vec<usize> = kept.into_iter().map(|e| e.0).collect();
            if rows.len() < k {
                let c = p.cost.column(j, &mut buf);
                for ((s, &a), &c) in scores.iter_mut().zip(ing.alpha).zip(c) {
                    *s = a - c;
                }
                top_k_into(&scores, k, &mut top);
                for &i in &top {
                    if rows.len() == k {
                        break;
                    }
                    if !rows.contains(&i) {
                        rows.push(i);
                    }
                }
            }
            rows.sort_unstable();
            rows
        })
        .collect()
}

/// Rounds of [`widen`] at most: each opens the support to every row it leaves short, so a few suffice when
/// a k-sparse plan is within reach of the first support.
const WIDENING_ROUNDS: usize = 16;

/// Rounds of [`widen`] without a smaller shortfall after which the repair gives up (the moves then only
/// pass the missing mass from row to row).
const PATIENCE: usize = 3;

/// Which columns [`widen`] may open to a row left short.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Columns that can pass more mass on to the sink through the residual flow (more choice, and the
    /// flow may reroute behind the new entry).
    Residual,
    /// Columns that still take mass themselves (the new entry carries it directly).
    Spare,
}

/// Quadratic OT restricted to the repair's support, from the returned α; `None` when no support that can
/// carry the marginals was found, or Newton did not meet the tolerance on it. The first support is
/// [`support`]'s; while a maximum flow through it ([`flow::max_flow`]) leaves mass behind (no plan on it
/// meets the marginals), [`widen`] opens it to the rows left short, for up to [`WIDENING_ROUNDS`] rounds
/// and while the shortfall keeps falling, choosing new columns by [`Reach::Residual`], then (from the
/// first support again) by [`Reach::Spare`]. These are local moves: a k-sparse plan may exist that they do
/// not reach, and then the relaxed plan is returned, as the plan kind says.
fn repair(ing: &Ingredients<'_>, source: &PlanBuilder) -> Option<PlanBuilder> {
    let p = ing.data;
    let first = support(ing, source);
    let tol = if ing.tol > 0.0 { ing.tol } else { DEFAULT_TOL };
    let support = [Reach::Residual, Reach::Spare]
        .into_iter()
        .find_map(|reach| carrying(ing, first.clone(), tol, reach))?;
    let mut restricted = Restricted::on(p, ing.gamma, &support);
    let out = newton::run(
        &mut restricted,
        ing.alpha.to_vec(),
        tol,
        usize::MAX,
        |_, _, _| {},
    );
    // A NaN error (a blown-up iterate) fails the test as well.
    let met = out.error <= tol && out.x.iter().all(|x| x.is_finite());
    met.then(|| restricted.plan(&out.x))
}

/// `support`, widened ([`widen`], choosing columns by `reach`) until a maximum flow through it leaves at
/// most `tol` of the mass behind; `None` when the rounds run out or the shortfall stops falling.
fn carrying(
    ing: &Ingredients<'_>,
    mut support: Vec<Vec<usize>>,
    tol: f64,
    reach: Reach,
) -> Option<Vec<Vec<usize>>> {
    let p = ing.data;
    // Below the marginals' rounding: what the flow cannot place beyond this is missing mass.
    let eps = 64.0 * f64::EPSILON * p.a.iter().sum::<f64>();
    // The least shortfall so far and the rounds since it last fell.
    let (mut least, mut idle) = (f64::INFINITY, 0);
    for _ in 0..=WIDENING_ROUNDS {
        let flow = flow::max_flow(p.a, p.b, &support, eps);
        if flow.shortfall <= tol {
            return Some(support);
        }
        if flow.shortfall < least - eps {
            (least, idle) = (flow.shortfall, 0);
        } else {
            idle += 1;
        }
        if idle > PATIENCE || !widen(ing, &flow, &mut support, (reach, eps)) {
            return None;
        }
    }
    None
}

/// Opens `support` to the rows a maximum flow through it leaves short (most mass left first): each gets
/// one column among those `reach` allows (so the flow can grow by the new entry), the one where its score
/// α_i − c_ij at the solve's α is nearest the best score among the column's rows (the cheapest to open to
/// it), one row per column per round. A full column (k rows) gives up the row that carries the least flow
/// in it. Mass below `eps` counts as none. Returns whether any column changed.
fn widen(
    ing: &Ingredients<'_>,
    flow: &flow::SupportFlow,
    support: &mut [Vec<usize>],
    (reach, eps): (Reach, f64),
) -> bool {
    let p = ing.data;
    let (m, n) = (p.a.len(), p.b.len());
    let k = ing.k.min(m);
    let alpha = ing.alpha;
    let mut short: Vec<usize> = (0..m).filter(|&i| flow.row_left[i] > eps).collect();
    short.sort_by(|&x, &y| {
        flow.row_left[y]
            .total_cmp(&flow.row_left[x])
            .then(x.cmp(&y))
    });
    let mut open: Vec<usize> = (0..n)
        .filter(|&j| match reach {
            Reach::Residual => flow.col_open[j],
            Reach::Spare => flow.col_left[j] > eps,
        })
        .collect();
    let top: Vec<f64> = support
        .iter()
        .enumerate()
        .map(|(j, rows)| {
            rows.iter()
                .map(|&i| alpha[i] - p.cost.entry(i, j))
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect();
    // The entry a column gives up to take a new row (None while it has fewer than k), and the flow lost.
    let displaced = |j: usize, rows: &[usize]| -> (Option<usize>, f64) {
        if rows.len() < k {
            return (None, 0.0);
        }
        let least = (0..rows.len())
            .min_by(|&x, &y| {
                flow.entry_flow[j][x]
                    .total_cmp(&flow.entry_flow[j][y])
                    .then(rows[x].cmp(&rows[y]))
            })
            .expect("a full column has rows");
        (Some(least), flow.entry_flow[j][least])
    };
    let mut changed = false;
    for i in short {
        // Columns that lose no flow first, then the cheapest.
        let best = open
            .iter()
            .enumerate()
            .filter(|(_, &j)| !support[j].contains(&i))
            .map(|(at, &j)| {
                let (out, lost) = displaced(j, &support[j]);
                (
                    lost > eps,
                    top[j] - (alpha[i] - p.cost.entry(i, j)),
                    at,
                    out,
                )
            })
            .min_by(|x, y| x.0.cmp(&y.0).then(x.1.total_cmp(&y.1)).then(x.2.cmp(&y.2)));
        let Some((_, _, at, out)) = best else {
            continue;
        };
        let j = open.remove(at);
        let rows = &mut support[j];
        if let Some(l) = out {
            rows.remove(l);
        }
        rows.push(i);
        rows.sort_unstable();
        changed = true;
    }
    changed
}

/// Quadratic OT's semi-dual restricted to a support: column j may use the rows of `columns[j]` only.
struct Restricted<'a> {
    a: &'a [f64],
    b: &'a [f64],
    gamma: f64,
    /// Column j's allowed rows with their costs.
    columns: Vec<Vec<(usize, f64)>>,
}

impl<'a> Restricted<'a> {
    /// The restriction of the problem `p` to `support` (column j's rows `support[j]`).
    fn on(p: ColumnData<'a>, gamma: f64, support: &[Vec<usize>]) -> Self {
        let columns = support
            .iter()
            .enumerate()
            .map(|(j, rows)| rows.iter().map(|&i| (i, p.cost.entry(i, j))).collect())
            .collect();
        Self {
            a: p.a,
            b: p.b,
            gamma,
            columns,
        }
    }

    /// The restricted plan at α.
    fn plan(&self, alpha: &[f64]) -> PlanBuilder {
        let mut plan = PlanBuilder::new(self.a.len(), self.b.len());
        let mut u = Vec::new();
        for j in 0..self.columns.len() {
            plan.push_column(
                self.column(j, alpha, &mut u)
                    .into_iter()
                    .map(|e| (e.0, e.1)),
            );
        }
        plan
    }

    /// Column j's plan at α as (row, t_i, c_ij): t_i = [(α_i − c_ij)/γ − θ_j]_+ on the column's rows, θ_j
    /// such that Σt = b_j. `u` is scratch.
    fn column(
        &self,
        j: usize,
        alpha: &[f64],
        u: &mut Vec<(f64, usize, f64)>,
    ) -> Vec<(usize, f64, f64)> {
        u.clear();
        u.extend(
            self.columns[j]
                .iter()
                .map(|&(i, c)| ((alpha[i] - c) / self.gamma, i, c)),
        );
        u.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
        let (theta, _) = simplex_threshold(u.iter().map(|e| e.0), self.b[j]);
        u.iter()
            .map(|&(v, i, c)| (i, (v - theta).max(0.0), c))
            .collect()
    }
}

impl PiecewiseQuadratic for Restricted<'_> {
    fn m(&self) -> usize {
        self.a.len()
    }

    fn gamma(&self) -> f64 {
        self.gamma
    }

    fn value_and_gradient(&mut self, alpha: &[f64], grad: &mut [f64]) -> f64 {
        grad.copy_from_slice(self.a);
        let mut value: f64 = alpha.iter().zip(self.a).map(|(x, y)| x * y).sum();
        let mut u = Vec::new();
        for j in 0..self.columns.len() {
            for (i, t, c) in self.column(j, alpha, &mut u) {
                // The column's term t·(α − c_j) − (γ/2)‖t‖².
                value -= t * (alpha[i] - c) - 0.5 * self.gamma * t * t;
                grad[i] -= t;
            }
        }
        value
    }

    fn supports(&mut self, alpha: &[f64]) -> Supports {
        let mut u = Vec::new();
        let mut out = Supports::default();
        for j in 0..self.columns.len() {
            out.push(
                self.column(j, alpha, &mut u)
                    .into_iter()
                    .filter(|e| e.1 > 0.0)
                    .map(|e| e.0),
            );
        }
        out
    }
}
