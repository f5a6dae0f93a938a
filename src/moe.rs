//! Mixture-of-experts routing by sparsity-constrained OT (SPEC §7), and the greedy top-k baseline.
//!
//! Router logits come as G groups × S tokens × E experts. Per group, the gates are G = softmax(logits) over
//! experts, the cost is −G, every token carries mass 1 and every expert S/E (balanced load), γ = 1:
//!
//! * **experts choose tokens** ([`Router::experts_choose`]): rows are tokens, columns experts, and each expert
//!   (column) keeps at most k = capacity = ⌈S · capacity_factor / E⌉ tokens (optionally rounded up to a
//!   multiple, 4 in the paper). The k-sparse plan *guarantees* the capacity; a token whose row of the plan is
//!   empty is dropped.
//! * **tokens choose experts** ([`Router::tokens_choose`]): the same problem with the k limit on rows: each
//!   token goes to at most k experts (row sparsity, i.e. the transposed problem).
//!
//! Dispatch is the support of the plan; the combine weight of a routed (token, expert) pair is its gate.
//! Two solvers: the authors' recipe ([`RouterSolver::AUTHORS`]: semi-dual, Adam, learning rate 1e-2,
//! 20 steps from α = 0) and the accurate L-BFGS solver of [`SparseOt`]. Groups are independent problems of
//! one shape and are solved as a [`Batch`]: in parallel on the CPU; on a GPU ([`Router::route_on`]) the
//! authors' recipe runs the whole batch at once (each Adam step is a fixed number of dispatches covering
//! every group, see [`SparseOt::solve_batch_adam_on`]) and the accurate solver runs the L-BFGS phases of all
//! groups in lockstep, each round a fixed set of dispatches covering every group ([`SparseOt::solve_batch_on`]).
//!
//! ```
//! use ndarray::Array3;
//! use sparse_ot::moe::Router;
//!
//! let logits = Array3::from_shape_fn((2, 8, 4), |(g, s, e)| ((g + 3 * s + 5 * e) % 7) as f64 * 0.3);
//! let router = Router::experts_choose(1.0)?;
//! let routing = router.route(logits.view())?;
//! assert!(routing.load.tokens_per_expert.max <= routing.capacity as f64);
//! # Ok::<(), sparse_ot::Error>(())
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::{Array1, Array2, Array3, ArrayView2, ArrayView3, Axis, Zip};
use rayon::prelude::*;

use crate::batch::Batch;
use crate::config::SparseOt;
use crate::cpu::adam::{self, Adam};
use crate::device::Device;
use crate::error::{positive, Error, Position, Result};
use crate::problem::Problem;
use crate::solution::{Solution, Termination};

/// Which side chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingMode {
    /// Each expert keeps at most `capacity` tokens (column sparsity).
    ExpertsChooseTokens,
    /// Each token goes to at most `experts_per_token` experts (row sparsity).
    TokensChooseExperts,
}

/// How the router's OT problems are solved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RouterSolver {
    /// Adam ascent on the semi-dual from α = 0 for a fixed number of steps (the paper's recipe).
    Adam {
        /// Step size.
        learning_rate: f64,
        /// Number of steps.
        steps: usize,
    },
    /// L-BFGS on the semi-dual ([`SparseOt`]) until the marginal error is ≤ `tol` or `max_iter` is reached.
    Accurate {
        /// Tolerance on the max-norm marginal violation.
        tol: f64,
        /// Iteration limit.
        max_iter: usize,
    },
}

impl RouterSolver {
    /// The paper's recipe: Adam, learning rate 1e-2, 20 steps.
    pub const AUTHORS: RouterSolver = RouterSolver::Adam {
        learning_rate: 1e-2,
        steps: 20,
    };

    /// L-BFGS (with the nonsmooth finish of [`SparseOt`]) to tolerance 1e-6, at most [`crate::DEFAULT_MAX_ITER`] iterations.
    pub const ACCURATE: RouterSolver = RouterSolver::Accurate {
        tol: 1e-6,
        max_iter: crate::config::DEFAULT_MAX_ITER,
    };
}

/// A validated router configuration. See the [module docs](self).
#[derive(Debug, Clone, PartialEq)]
pub struct Router {
    mode: RoutingMode,
    capacity_factor: f64,
    experts_per_token: usize,
    capacity_multiple: usize,
    solver: RouterSolver,
}

impl Router {
    /// Experts choose tokens with capacity ⌈S · `capacity_factor` / E⌉ per expert; solver
    /// [`RouterSolver::AUTHORS`]. Errors: a capacity factor that is not finite and > 0.
    pub fn experts_choose(capacity_factor: f64) -> Result<Self> {
        Ok(Self {
            mode: RoutingMode::ExpertsChooseTokens,
            capacity_factor: positive("capacity_factor", capacity_factor)?,
            experts_per_token: 1,
            capacity_multiple: 1,
            solver: RouterSolver::AUTHORS,
        })
    }

    /// Tokens choose at most `experts_per_token` experts each; solver [`RouterSolver::AUTHORS`].
    /// Errors: 0 ([`Error::InvalidK`]); a value above E is reported when routing.
    pub fn tokens_choose(experts_per_token: usize) -> Result<Self> {
        if experts_per_token == 0 {
            return Err(Error::InvalidK {
                k: 0,
                max: usize::MAX,
                axis: "experts",
            });
        }
        Ok(Self {
            mode: RoutingMode::TokensChooseExperts,
            capacity_factor: 1.0,
            experts_per_token,
            capacity_multiple: 1,
            solver: RouterSolver::AUTHORS,
        })
    }

    /// Rounds the capacity up to a multiple of `q` (the paper uses 4). Errors: 0.
    pub fn capacity_multiple(mut self, q: usize) -> Result<Self> {
        if q == 0 {
            return Err(Error::InvalidParameter {
                name: "capacity_multiple",
                value: 0.0,
                requirement: "must be at least 1",
            });
        }
        self.capacity_multiple = q;
        Ok(self)
    }

    /// Chooses the solver. Errors: a learning rate that is not finite and > 0, a negative or non-finite tol.
    pub fn solver(mut self, solver: RouterSolver) -> Result<Self> {
        match solver {
            RouterSolver::Adam { learning_rate, .. } => {
                positive("learning_rate", learning_rate)?;
            }
            RouterSolver::Accurate { tol, .. } => {
                crate::error::nonnegative("tol", tol)?;
            }
        }
        self.solver = solver;
        Ok(self)
    }

    /// The routing mode.
    pub fn mode(&self) -> RoutingMode {
        self.mode
    }

    /// The solver.
    pub fn current_solver(&self) -> RouterSolver {
        self.solver
    }

    /// Sets the capacity factor (default 1 for tokens-choose). Errors: not finite and > 0.
    pub fn capacity_factor(mut self, capacity_factor: f64) -> Result<Self> {
        self.capacity_factor = positive("capacity_factor", capacity_factor)?;
        Ok(self)
    }

    /// Experts per token: k of tokens-choose, 1 for experts-choose.
    pub fn experts_per_token(&self) -> usize {
        self.experts_per_token
    }

    /// Expert capacity for S tokens and E experts: ⌈K · S · capacity_factor / E⌉ (K = experts per token,
    /// 1 when experts choose) rounded up to the capacity multiple. Experts-choose enforces it (a capacity
    /// of S or more places no limit); tokens-choose and the greedy router report experts above it.
    pub fn capacity(&self, tokens: usize, experts: usize) -> usize {
        let slots = (self.experts_per_token * tokens) as f64 * self.capacity_factor;
        // `as` saturates; so do the rounding steps, so a huge factor gives a huge capacity (no limit).
        let raw = (slots / experts.max(1) as f64).ceil() as usize;
        raw.div_ceil(self.capacity_multiple)
            .saturating_mul(self.capacity_multiple)
    }

    /// Routes f64 logits (G × S × E).
    ///
    /// Errors: empty logits, NaN/inf in a group ([`Error::InBatch`] naming the group), experts per token
    /// above E, or a group whose solve fails (also [`Error::InBatch`]).
    pub fn route(&self, logits: ArrayView3<f64>) -> Result<Routing> {
        self.route_observed(logits, &|_, _| {})
    }

    /// Routes f32 logits (widened to f64).
    pub fn route_f32(&self, logits: ArrayView3<f32>) -> Result<Routing> {
        self.route(logits.mapv(f64::from).view())
    }

    /// Like [`Router::route`], calling `progress(done, total)` each time a group has been solved
    /// (from worker threads, in completion order).
    pub fn route_observed(
        &self,
        logits: ArrayView3<f64>,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Routing> {
        self.route_on_observed(logits, &Device::Cpu, progress)
    }

    /// Routes f64 logits (G × S × E) on `device`. On a GPU the authors' recipe solves all G groups as one
    /// batch (f32, one fixed set of dispatches per Adam step whatever G is); the accurate solver runs all
    /// groups' L-BFGS in lockstep (one fixed set of dispatches per round whatever G is). [`Routing::device`]
    /// names where it ran.
    ///
    /// Errors: as [`Router::route`].
    pub fn route_on(&self, logits: ArrayView3<f64>, device: &Device) -> Result<Routing> {
        self.route_on_observed(logits, device, &|_, _| {})
    }

    /// [`Router::route_on`] with a progress callback. On the CPU it is called as each group finishes; on a
    /// GPU the batched recipe reports all groups once the batch is done (its steps are one submission), and
    /// the accurate solver as each group's L-BFGS (or CPU finish) ends.
    pub fn route_on_observed(
        &self,
        logits: ArrayView3<f64>,
        device: &Device,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Routing> {
        let gates = gates(logits)?;
        let (g, s, e) = gates.dim();
        if self.mode == RoutingMode::TokensChooseExperts && self.experts_per_token > e {
            return Err(Error::InvalidK {
                k: self.experts_per_token,
                max: e,
                axis: "experts",
            });
        }
        let capacity = self.capacity(s, e);
        let cfg = self.sparse_config(s, e)?;
        let cost = gates.mapv(|x| -x);
        let batch = Batch::shared_marginals(
            Array1::from_elem(s, 1.0).view(),
            Array1::from_elem(e, s as f64 / e as f64).view(),
            cost.view(),
        )?;
        let results = match (device.is_gpu(), self.solver) {
            (false, solver) => {
                let done = AtomicUsize::new(0);
                batch.map_problems(|p| {
                    let sol = solve_group(&cfg, solver, p);
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1, g);
                    sol
                })
            }
            (
                true,
                RouterSolver::Adam {
                    learning_rate,
                    steps,
                },
            ) => cfg.solve_batch_adam_on(&batch, learning_rate, steps, device)?,
            (true, RouterSolver::Accurate { .. }) => {
                cfg.solve_batch_on_observed(&batch, device, progress)
            }
        };
        if device.is_gpu() && matches!(self.solver, RouterSolver::Adam { .. }) {
            // The recipe's steps for all groups are one submission: every group is ready at once.
            (1..=g).for_each(|done| progress(done, g));
        }
        let mut ran_on = String::from("cpu");
        let mut dispatch = Array3::from_elem((g, s, e), false);
        let mut reports = Vec::with_capacity(g);
        for (index, result) in results.into_iter().enumerate() {
            let sol = result.map_err(|source| Error::InBatch {
                index,
                source: Box::new(source),
            })?;
            let mut d = dispatch.index_axis_mut(Axis(0), index);
            for (i, j, _) in sol.plan.triplets() {
                d[[i, j]] = true;
            }
            reports.push(GroupReport::from(&sol));
            ran_on = sol.device;
        }
        let mut routing = Routing::new(dispatch, &gates, capacity, reports);
        routing.device = ran_on;
        Ok(routing)
    }

    /// Routes f32 logits that already live in a GPU buffer, without any host round trip: softmax gates, the G
    /// OT problems, the recipe's Adam steps and the routing run on the device in one submission, and the
    /// result stays in new GPU buffers ([`GpuRouting`](crate::gpu::GpuRouting): per group and expert, the
    /// tokens it takes and their combine weights). This is the path for training loops whose router logits
    /// are on the GPU; it gives the routing of [`Router::route_on`] with the same GPU (up to f32 rounding
    /// of the gates, computed here from f32 logits).
    ///
    /// `logits` holds G × S × E f32 row-major from offset 0 (`shape` = (G, S, E); the buffer may be larger)
    /// with `STORAGE` usage on `ctx`'s device. The values are not checked (that would need a readback): they
    /// must be finite.
    ///
    /// The call returns once the work is submitted, not when it is done: the results are ordered before any
    /// later work on `ctx`'s queue, and reading them on the host means mapping them (which waits). Logits
    /// written by the application's own commands must be submitted before the call. Errors the device raises
    /// while executing (out of memory, device lost) surface later, at the next library call on `ctx` or in
    /// the application's error handler for an adopted device.
    ///
    /// Errors: a mode other than experts choose tokens or a solver other than the Adam recipe
    /// ([`Error::Unavailable`]), an empty shape ([`Error::Empty`]), a buffer smaller than the shape
    /// ([`Error::ShapeMismatch`]), sizes beyond the device's limits ([`Error::DeviceLimit`]), a buffer the
    /// device rejects, e.g. without `STORAGE` usage or from another device ([`Error::Gpu`]).
    #[cfg(feature = "gpu")]
    pub fn route_buffers(
        &self,
        ctx: &crate::gpu::GpuContext,
        logits: &wgpu::Buffer,
        shape: (usize, usize, usize),
    ) -> Result<crate::gpu::GpuRouting> {
        let (_, s, e) = shape;
        if self.mode != RoutingMode::ExpertsChooseTokens {
            return Err(Error::Unavailable {
                what: "tokens-choose routing on GPU buffers",
                why: "route_buffers implements experts choose tokens; use route_on".into(),
            });
        }
        let RouterSolver::Adam {
            learning_rate,
            steps,
        } = self.solver
        else {
            return Err(Error::Unavailable {
                what: "the accurate solver on GPU buffers",
                why: "route_buffers runs the Adam recipe; use route_on for the accurate solver"
                    .into(),
            });
        };
        if s == 0 || e == 0 {
            return Err(Error::Empty { what: "logits" });
        }
        let cfg = self.sparse_config(s, e)?;
        let adam = Adam {
            learning_rate: positive("learning_rate", learning_rate)?,
            steps,
        };
        let capacity = self.capacity(s, e).min(s);
        crate::gpu::router::route(ctx, &cfg, adam, logits, shape, capacity)
    }

    /// The column- or row-sparse solver configuration for S tokens.
    fn sparse_config(&self, tokens: usize, experts: usize) -> Result<SparseOt> {
        let cfg = match self.mode {
            // A capacity of S or more is no limit: k = S (quadratic OT over each expert's column).
            RoutingMode::ExpertsChooseTokens => {
                SparseOt::new(self.capacity(tokens, experts).min(tokens), 1.0)?
            }
            RoutingMode::TokensChooseExperts => {
                SparseOt::new(self.experts_per_token, 1.0)?.row_sparsity()
            }
        };
        Ok(match self.solver {
            RouterSolver::Adam { .. } => cfg,
            RouterSolver::Accurate { tol, max_iter } => cfg.tol(tol)?.max_iter(max_iter),
        })
    }
}

fn solve_group(cfg: &SparseOt, solver: RouterSolver, p: &Problem) -> Result<Solution> {
    match solver {
        RouterSolver::Adam {
            learning_rate,
            steps,
        } => adam::solve(
            cfg,
            Adam {
                learning_rate,
                steps,
            },
            p,
        ),
        RouterSolver::Accurate { .. } => cfg.solve(p),
    }
}

/// How one group's OT problem was solved.
///
/// The mass errors are measured on the returned k-sparse plan. When the accurate solver certifies optimality
/// by a duality gap at a point with ties (e.g. identical gates), the optimum is a mix of tied plans and the
/// one plan returned can miss the token masses; the capacity (k limit) holds in every case.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupReport {
    /// Why the solver stopped.
    pub termination: Termination,
    /// Iterations (Adam steps or L-BFGS iterations).
    pub iterations: usize,
    /// max over tokens of |routed mass − 1| in the plan.
    pub token_mass_error: f64,
    /// max over experts of |routed mass − S/E| in the plan.
    pub expert_mass_error: f64,
}

impl From<&Solution> for GroupReport {
    fn from(sol: &Solution) -> Self {
        Self {
            termination: sol.termination,
            iterations: sol.iterations,
            token_mass_error: sol.marginal_error_rows,
            expert_mass_error: sol.marginal_error_cols,
        }
    }
}

/// min / mean / max of a count over a population.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Smallest value.
    pub min: f64,
    /// Mean value.
    pub mean: f64,
    /// Largest value.
    pub max: f64,
}

impl Stats {
    fn of(values: impl Iterator<Item = usize>) -> Self {
        let (mut min, mut max, mut sum, mut count) = (usize::MAX, 0, 0usize, 0usize);
        for v in values {
            min = min.min(v);
            max = max.max(v);
            sum += v;
            count += 1;
        }
        if count == 0 {
            return Self {
                min: 0.0,
                mean: 0.0,
                max: 0.0,
            };
        }
        Self {
            min: min as f64,
            mean: sum as f64 / count as f64,
            max: max as f64,
        }
    }
}

/// Load metrics of a dispatch (over all groups).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadMetrics {
    /// Tokens routed to each expert, over all (group, expert) pairs.
    pub tokens_per_expert: Stats,
    /// Experts each token is routed to, over all (group, token) pairs.
    pub experts_per_token: Stats,
    /// Tokens routed to no expert.
    pub dropped_tokens: usize,
    /// All tokens (G · S).
    pub tokens: usize,
    /// (group, expert) pairs holding more tokens than the capacity (0 whenever experts choose).
    pub experts_over_capacity: usize,
}

impl LoadMetrics {
    /// Computes the metrics of a G × S × E dispatch mask against an expert capacity.
    pub fn of(dispatch: ArrayView3<bool>, capacity: usize) -> Self {
        let count = |v: ndarray::ArrayView1<bool>| v.iter().filter(|&&d| d).count();
        let per_expert: Vec<usize> = dispatch
            .outer_iter()
            .flat_map(|grp| grp.axis_iter(Axis(1)).map(count).collect::<Vec<_>>())
            .collect();
        let per_token: Vec<usize> = dispatch
            .outer_iter()
            .flat_map(|grp| grp.outer_iter().map(count).collect::<Vec<_>>())
            .collect();
        Self {
            tokens_per_expert: Stats::of(per_expert.iter().copied()),
            experts_per_token: Stats::of(per_token.iter().copied()),
            dropped_tokens: per_token.iter().filter(|&&c| c == 0).count(),
            tokens: per_token.len(),
            experts_over_capacity: per_expert.iter().filter(|&&c| c > capacity).count(),
        }
    }

    /// Load imbalance: the busiest expert's tokens over the mean (1 is perfectly balanced).
    pub fn imbalance(&self) -> f64 {
        self.tokens_per_expert.max / self.tokens_per_expert.mean
    }
}

/// The result of routing G groups.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// G × S × E: `true` where token s of group g is sent to expert e.
    pub dispatch: Array3<bool>,
    /// G × S × E: the gate of each routed pair, 0 elsewhere.
    pub combine: Array3<f64>,
    /// The expert capacity used (experts-choose) or compared against (tokens-choose, greedy).
    pub capacity: usize,
    /// Load metrics of `dispatch`.
    pub load: LoadMetrics,
    /// One report per group for the OT router; empty for the greedy router.
    pub groups: Vec<GroupReport>,
    /// Where the groups were solved: `"cpu"` or the GPU adapter's name (`"cpu"` for the greedy router).
    pub device: String,
}

impl Routing {
    fn new(
        dispatch: Array3<bool>,
        gates: &Array3<f64>,
        capacity: usize,
        groups: Vec<GroupReport>,
    ) -> Self {
        let mut combine = Array3::zeros(dispatch.dim());
        Zip::from(&mut combine)
            .and(&dispatch)
            .and(gates)
            .par_for_each(|c, &d, &g| *c = if d { g } else { 0.0 });
        let load = LoadMetrics::of(dispatch.view(), capacity);
        Self {
            dispatch,
            combine,
            capacity,
            load,
            groups,
            device: "cpu".into(),
        }
    }

    /// Number of groups whose solver converged.
    pub fn converged_groups(&self) -> usize {
        self.groups
            .iter()
            .filter(|r| r.termination.converged())
            .count()
    }
}

/// Softmax over experts of every (group, token) row, f64. Errors: empty or non-finite logits.
pub fn gates(logits: ArrayView3<f64>) -> Result<Array3<f64>> {
    let (g, s, e) = logits.dim();
    if g == 0 || s == 0 || e == 0 {
        return Err(Error::Empty { what: "logits" });
    }
    for (index, grp) in logits.outer_iter().enumerate() {
        if let Some(((i, j), &v)) = grp.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(Error::InBatch {
                index,
                source: Box::new(Error::NonFinite {
                    what: "logits",
                    position: Position::Matrix(i, j),
                    value: v,
                }),
            });
        }
    }
    let mut out = logits.to_owned();
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .for_each(|mut grp| {
            for mut row in grp.rows_mut() {
                let mx = row.fold(f64::NEG_INFINITY, |m, &x| m.max(x));
                row.mapv_inplace(|x| (x - mx).exp());
                let z = row.sum();
                row.mapv_inplace(|x| x / z);
            }
        });
    Ok(out)
}

/// The usual greedy top-k router under an expert capacity, for comparison: every token ranks the experts by
/// gate (ties to the lower index); first every token's first choice is placed, in token order, then every
/// token's second choice, and so on; a choice whose expert already holds `capacity` tokens is dropped.
///
/// Errors: empty or non-finite logits, `experts_per_token` = 0 or above E, `capacity` = 0.
pub fn greedy_top_k(
    logits: ArrayView3<f64>,
    experts_per_token: usize,
    capacity: usize,
) -> Result<Routing> {
    let gates = gates(logits)?;
    let (g, s, e) = gates.dim();
    if experts_per_token == 0 || experts_per_token > e {
        return Err(Error::InvalidK {
            k: experts_per_token,
            max: e,
            axis: "experts",
        });
    }
    if capacity == 0 {
        return Err(Error::InvalidParameter {
            name: "capacity",
            value: 0.0,
            requirement: "must be at least 1",
        });
    }
    let mut dispatch = Array3::from_elem((g, s, e), false);
    dispatch
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(gates.axis_iter(Axis(0)).into_par_iter())
        .for_each(|(mut d, grp)| {
            let choices = ranked_choices(grp, experts_per_token);
            let mut load = vec![0usize; e];
            for rank in 0..experts_per_token {
                for token in 0..s {
                    let expert = choices[[token, rank]];
                    if load[expert] < capacity {
                        load[expert] += 1;
                        d[[token, expert]] = true;
                    }
                }
            }
        });
    Ok(Routing::new(dispatch, &gates, capacity, Vec::new()))
}

/// S × k: each token's k best experts by gate, best first (tie rule of [`crate::ops`]).
fn ranked_choices(gates: ArrayView2<f64>, k: usize) -> Array2<usize> {
    let mut out = Array2::zeros((gates.nrows(), k));
    let mut row = Vec::with_capacity(gates.ncols());
    let mut idx = Vec::with_capacity(gates.ncols());
    for (t, g) in gates.outer_iter().enumerate() {
        row.clear();
        row.extend(g.iter().copied());
        crate::ops::top_k_into(&row, k, &mut idx);
        for (r, &j) in idx.iter().enumerate() {
            out[[t, r]] = j;
        }
    }
    out
}
