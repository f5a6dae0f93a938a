//! What every solver returns: plan, potentials, values, marginal errors and a typed termination status.

use std::fmt;

use ndarray::{Array1, Array2};

use crate::error::Error;

/// Which way the sparse plan is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lanes {
    /// One lane per column (target): at most k nonzero rows in each column.
    Columns,
    /// One lane per row (source): at most k nonzero columns in each row.
    Rows,
}

/// A sparse transport plan stored lane by lane (compressed columns, or compressed rows for row sparsity).
///
/// Lane `l` holds `indices[ptr[l]..ptr[l+1]]` (row indices for column lanes, column indices for row lanes)
/// and the matching `values`. Only strictly positive entries are stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SparsePlan {
    shape: (usize, usize),
    lanes: Lanes,
    ptr: Vec<usize>,
    indices: Vec<usize>,
    values: Vec<f64>,
}

impl SparsePlan {
    /// Builds a plan from its parts. `ptr` has one more entry than there are lanes.
    pub(crate) fn from_parts(
        shape: (usize, usize),
        lanes: Lanes,
        ptr: Vec<usize>,
        indices: Vec<usize>,
        values: Vec<f64>,
    ) -> Self {
        debug_assert_eq!(
            ptr.len(),
            1 + match lanes {
                Lanes::Columns => shape.1,
                Lanes::Rows => shape.0,
            }
        );
        debug_assert_eq!(indices.len(), values.len());
        Self {
            shape,
            lanes,
            ptr,
            indices,
            values,
        }
    }

    /// (m, n): rows and columns of the dense plan.
    pub fn shape(&self) -> (usize, usize) {
        self.shape
    }

    /// Whether lanes are columns or rows.
    pub fn lanes(&self) -> Lanes {
        self.lanes
    }

    /// Number of lanes (n for column lanes, m for row lanes).
    pub fn num_lanes(&self) -> usize {
        self.ptr.len() - 1
    }

    /// The indices and values of lane `l` (panics if `l` is out of range, like slice indexing).
    pub fn lane(&self, l: usize) -> (&[usize], &[f64]) {
        let r = self.ptr[l]..self.ptr[l + 1];
        (&self.indices[r.clone()], &self.values[r])
    }

    /// Total number of stored nonzeros.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// The largest number of nonzeros in one lane.
    pub fn max_lane_nnz(&self) -> usize {
        self.ptr.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0)
    }

    /// Iterates over `(row, column, value)` of the nonzeros.
    pub fn triplets(&self) -> impl Iterator<Item = (usize, usize, f64)> + '_ {
        (0..self.num_lanes()).flat_map(move |l| {
            let (idx, val) = self.lane(l);
            idx.iter().zip(val).map(move |(&i, &v)| match self.lanes {
                Lanes::Columns => (i, l, v),
                Lanes::Rows => (l, i, v),
            })
        })
    }

    /// The dense m × n plan.
    pub fn to_dense(&self) -> Array2<f64> {
        let mut t = Array2::zeros(self.shape);
        for (i, j, v) in self.triplets() {
            t[[i, j]] = v;
        }
        t
    }

    /// The same plan seen as the plan of the transposed problem (columns become rows).
    /// This plan's lanes placed at `kept[l]` among `total` lanes (the others empty), the other axis
    /// unchanged: the plan of a problem whose zero-mass lanes were removed, on the full problem.
    pub(crate) fn spread_lanes(&self, kept: &[usize], total: usize) -> Self {
        let mut ptr = Vec::with_capacity(total + 1);
        ptr.push(0);
        let mut next = kept.iter().copied().enumerate().peekable();
        for lane in 0..total {
            let mut end = *ptr.last().expect("ptr starts with 0");
            if let Some(&(l, _)) = next.peek().filter(|&&(_, at)| at == lane) {
                end += self.ptr[l + 1] - self.ptr[l];
                next.next();
            }
            ptr.push(end);
        }
        let shape = match self.lanes {
            Lanes::Columns => (self.shape.0, total),
            Lanes::Rows => (total, self.shape.1),
        };
        Self {
            shape,
            lanes: self.lanes,
            ptr,
            indices: self.indices.clone(),
            values: self.values.clone(),
        }
    }

    pub(crate) fn transposed(self) -> Self {
        Self {
            shape: (self.shape.1, self.shape.0),
            lanes: match self.lanes {
                Lanes::Columns => Lanes::Rows,
                Lanes::Rows => Lanes::Columns,
            },
            ..self
        }
    }
}

/// A transport plan: sparse for the sparsity-constrained, quadratic and exact solvers, dense for Sinkhorn.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Nonzeros stored lane by lane.
    Sparse(SparsePlan),
    /// A dense m × n matrix.
    Dense(Array2<f64>),
}

impl Plan {
    /// The dense m × n plan (a copy).
    pub fn to_dense(&self) -> Array2<f64> {
        match self {
            Plan::Sparse(p) => p.to_dense(),
            Plan::Dense(t) => t.clone(),
        }
    }

    /// Number of entries > 0.
    pub fn nnz(&self) -> usize {
        match self {
            Plan::Sparse(p) => p.nnz(),
            Plan::Dense(t) => t.iter().filter(|&&v| v > 0.0).count(),
        }
    }

    /// (m, n).
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Plan::Sparse(p) => p.shape(),
            Plan::Dense(t) => t.dim(),
        }
    }

    /// Iterates over `(row, column, value)` of the entries > 0.
    pub fn triplets(&self) -> Box<dyn Iterator<Item = (usize, usize, f64)> + '_> {
        match self {
            Plan::Sparse(p) => Box::new(p.triplets()),
            Plan::Dense(t) => Box::new(
                t.indexed_iter()
                    .filter(|(_, &v)| v > 0.0)
                    .map(|((i, j), &v)| (i, j, v)),
            ),
        }
    }
}

/// Default stopping tolerance of every iterative solver on the max-norm marginal violation (absolute, in
/// the units of a and b), for the solves that compute in f64: every solve on the CPU, and the f64 stage that
/// continues a stalled GPU solve on the CPU. GPU solves (f32) default to [`DEFAULT_TOL_F32`] instead.
pub const DEFAULT_TOL: f64 = 1e-9;

/// Default stopping tolerance of the solves that compute in f32 on a GPU, **relative**: a solve whose
/// tolerance was not set (no `.tol(..)`) stops at this times the problem's largest marginal entry max(a, b),
/// times, for Sinkhorn, the conditioning max(1, max|C| / ε).
///
/// Why: [`DEFAULT_TOL`] (1e-9) is below what f32 can resolve (f32 epsilon ≈ 1.2e-7 of each number), so a
/// GPU solve held to it cannot converge. In f32 a row sum of the plan is known to about f32 epsilon times
/// that row's mass (≤ the largest marginal entry); Sinkhorn's plan is exp((f_i + g_j − C_ij)/ε) with
/// potentials of the size of the cost, whose f32 rounding (epsilon × max|C|) is divided by ε, so its
/// marginals are known to epsilon × max(a, b) × max|C|/ε. Measured on lavapipe (Mesa's f32 Vulkan driver;
/// problems from 8 × 6 to 300 × 200, ε from 0.1 to 0.003, cost ranges 1 to 5.5), the smallest marginal error
/// Sinkhorn's f32 iteration reaches was at most 1.1 × that estimate; the factor 16 leaves a margin for
/// other hardware and is still "f32 precision": 1.9e-6 of the largest entry at max|C|/ε ≤ 1.
///
/// The GPU solvers stop when their f32 measure of the marginal error is at most half the tolerance (this one
/// or an explicit `.tol(t)`), so that the returned plan, measured again in f64, meets the tolerance its
/// `Converged` status names. The sparse and quadratic solvers use no conditioning factor: when their f32
/// iteration stalls above the tolerance, the f64 stage continues on the CPU at [`DEFAULT_TOL`].
pub const DEFAULT_TOL_F32: f64 = 16.0 * f32::EPSILON as f64;

/// The fraction of the tolerance (default or given) at which the GPU solvers stop: their f32 estimate of the
/// marginal error can miss the f64 measure of the returned plan by about 1%, and the status promises the
/// latter.
#[cfg(feature = "gpu")]
pub(crate) const F32_STOP_FRACTION: f64 = 0.5;

/// The criterion on which a solver declared convergence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Criterion {
    /// The max-norm of the gradient — the marginal violation — fell to `tol` or below.
    MarginalError {
        /// The tolerance met.
        tol: f64,
    },
    /// The optimality certificate of the nonsmooth stage held: a feasible mixed plan of the convex relaxation
    /// matches the objective within `gap`.
    DualityGap {
        /// Bound on (relaxed primal − dual objective) at the returned potentials.
        gap: f64,
    },
    /// The problem was solved exactly (network simplex: all reduced costs nonnegative).
    Exact,
}

/// Why a solver stopped. Running out of iterations or stalling is reported here, never silently.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Termination {
    /// Converged on the given criterion.
    Converged(Criterion),
    /// Reached the iteration limit before the tolerance.
    MaxIterations,
    /// Could not make further progress (line search failed, or the objective stopped improving)
    /// while the marginal error was still above the tolerance.
    Stalled,
    /// Stopped by [`crate::Monitor::cancel`]; the solution holds the state reached (the last accepted
    /// potentials and their plan).
    Cancelled,
    /// The solver's own stopping test passed, but the returned plan, measured in f64, misses the
    /// tolerance: `marginal_error` is its max-norm marginal violation. This is what a tolerance below the
    /// arithmetic's resolution gives (f32 on a GPU, or potentials that dwarf ε or γ).
    Unverified {
        /// The returned plan's measured max-norm marginal violation.
        marginal_error: f64,
    },
}

impl Termination {
    /// `true` for [`Termination::Converged`].
    pub fn converged(&self) -> bool {
        matches!(self, Termination::Converged(_))
    }
}

impl fmt::Display for Termination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Termination::Converged(Criterion::MarginalError { tol }) => {
                write!(f, "converged (marginal error <= {tol:.1e})")
            }
            Termination::Converged(Criterion::DualityGap { gap }) => {
                write!(f, "converged (duality gap <= {gap:.1e})")
            }
            Termination::Converged(Criterion::Exact) => write!(f, "solved exactly"),
            Termination::MaxIterations => write!(f, "NOT converged: iteration limit reached"),
            Termination::Stalled => write!(f, "NOT converged: stalled (no further progress)"),
            Termination::Cancelled => write!(f, "NOT converged: cancelled"),
            Termination::Unverified { marginal_error } => write!(
                f,
                "NOT converged: the stopping test passed but the returned plan's marginal error is \
                 {marginal_error:.1e}, above the tolerance"
            ),
        }
    }
}

/// Which concave program the sparse and quadratic solvers maximise (docs/MATH.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Formulation {
    /// The semi-dual S_k(α): one potential, column marginals exact by construction.
    #[default]
    SemiDual,
    /// The dual D_k(α, β): two potentials. On the CPU it is maximised by eliminating β in closed form
    /// (β_j = −γ θ_j maximises D for fixed α, and D(α, β*(α)) = S(α)), so the iteration runs over α alone;
    /// the joint (α, β) iteration runs with `tol(0)`, `max_iter(0)`, a warm start carrying β, or zeros in b.
    Dual,
}

impl fmt::Display for Formulation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Formulation::SemiDual => "semi-dual",
            Formulation::Dual => "dual",
        })
    }
}

/// Which transport plan a sparse or quadratic solve returns, chosen with [`crate::SparseOt::plan_kind`]
/// ([`Solution::plan_kind`] says which one came back).
///
/// At a smooth optimum (the marginal criterion met) the three coincide: the k-sparse plan read off the
/// potentials meets the marginals. At a nonsmooth optimum of k < m (ties between the k-th and (k+1)-th
/// scores of some columns, the rule rather than the exception for small k) they differ: the optimal plan
/// of the convex relaxation mixes the tied supports, so the plan read off the potentials can miss a row's
/// whole mass while the potentials are certified optimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlanKind {
    /// T(α, β), the plan the potentials' gradient is made of: at most k nonzeros per column, column
    /// marginals exact for the semi-dual, row marginals off by the gradient (possibly by a whole row's mass
    /// at a nonsmooth optimum; [`Solution::marginal_error_rows`] says by how much).
    #[default]
    Gradient,
    /// The optimal plan of the convex relaxation (columns that are mixtures of k-sparse columns), which
    /// meets both marginals: from the exact polish's multipliers, or from the smoothing stage's mixed plan
    /// (marginals within the tolerance). A column may have more than k nonzeros where tied supports mix.
    Relaxed,
    /// A plan with at most k nonzeros per column that meets both marginals (within the tolerance): the
    /// relaxed plan's k largest entries per column (then the best scores) fix a support, and quadratic OT
    /// restricted to it is solved with exact marginals. [`Solution::plan_gap`] bounds how far its objective
    /// is from the (nonconvex) optimum.
    Feasible,
}

impl fmt::Display for PlanKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PlanKind::Gradient => "gradient",
            PlanKind::Relaxed => "relaxed",
            PlanKind::Feasible => "feasible",
        })
    }
}

/// Which problem a solution solves, for reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// Sparsity-constrained OT (k < m) or quadratic OT (k = None).
    Sparse {
        /// Max nonzeros per lane, `None` for quadratic OT.
        k: Option<usize>,
        /// γ.
        gamma: f64,
        /// Dual or semi-dual.
        formulation: Formulation,
        /// Columns or rows carry the k limit.
        lanes: Lanes,
    },
    /// Entropic OT by log-domain Sinkhorn.
    Sinkhorn {
        /// ε.
        epsilon: f64,
    },
    /// Unregularised OT by network simplex.
    Exact,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Sparse {
                k: Some(k),
                gamma,
                formulation,
                lanes,
            } => {
                let lane = match lanes {
                    Lanes::Columns => "column",
                    Lanes::Rows => "row",
                };
                write!(
                    f,
                    "sparsity-constrained OT ({formulation}, k = {k} per {lane}, gamma = {gamma})"
                )
            }
            Method::Sparse {
                k: None,
                gamma,
                formulation,
                ..
            } => write!(f, "quadratic OT ({formulation}, gamma = {gamma})"),
            Method::Sinkhorn { epsilon } => {
                write!(f, "entropic OT (log-domain Sinkhorn, epsilon = {epsilon})")
            }
            Method::Exact => write!(f, "exact OT (network simplex)"),
        }
    }
}

/// Where a solve ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RanOn {
    /// The CPU (f64).
    Cpu,
    /// A GPU (f32), named by its adapter.
    Gpu {
        /// The adapter's name.
        adapter: String,
    },
    /// The L-BFGS phase on a GPU (f32), which stalled, then the f64 nonsmooth stage on the CPU from its
    /// potentials.
    GpuThenCpu {
        /// The adapter's name.
        adapter: String,
    },
}

impl RanOn {
    /// The GPU adapter's name, if a GPU took part.
    pub fn adapter(&self) -> Option<&str> {
        match self {
            RanOn::Cpu => None,
            RanOn::Gpu { adapter } | RanOn::GpuThenCpu { adapter } => Some(adapter),
        }
    }
}

impl fmt::Display for RanOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RanOn::Cpu => f.write_str("cpu"),
            RanOn::Gpu { adapter } => f.write_str(adapter),
            RanOn::GpuThenCpu { adapter } => write!(f, "{adapter} + cpu (nonsmooth stage)"),
        }
    }
}

/// Device work of a GPU solve, counted by the host as it records it (not measured on the device).
///
/// For a batch solved on a GPU these are the totals of the whole batch (its dispatches cover every problem),
/// repeated on each problem's solution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuWork {
    /// Compute dispatches (one per kernel launch, however many problems or workgroups it covers).
    pub dispatches: u64,
    /// Blocking readbacks: times the host waited for the device to hand back results.
    pub readbacks: u64,
    /// Of `readbacks`, the L-BFGS rounds in which some problem evaluated a point other than the first trial
    /// of a new direction (which shares the direction's round): line-search retries, the start point and
    /// the returned point. `readbacks − search_readbacks` over a run is at most one per L-BFGS iteration
    /// plus a fixed few (the plan and scalars read at the end).
    pub search_readbacks: u64,
    /// Bytes of cost matrix the kernels read, from each dispatch's geometry (a kernel that walks a column
    /// several times counts every walk). Cost entries computed on the fly count nothing.
    pub cost_bytes_read: u64,
}

impl GpuWork {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &GpuWork) {
        self.dispatches += other.dispatches;
        self.readbacks += other.readbacks;
        self.search_readbacks += other.search_readbacks;
        self.cost_bytes_read += other.cost_bytes_read;
    }

    /// These counts minus `earlier`'s (saturating at 0): the work between two measurements.
    pub fn since(&self, earlier: &GpuWork) -> GpuWork {
        GpuWork {
            dispatches: self.dispatches.saturating_sub(earlier.dispatches),
            readbacks: self.readbacks.saturating_sub(earlier.readbacks),
            search_readbacks: self
                .search_readbacks
                .saturating_sub(earlier.search_readbacks),
            cost_bytes_read: self.cost_bytes_read.saturating_sub(earlier.cost_bytes_read),
        }
    }
}

/// The result of a solve.
#[derive(Debug, Clone)]
pub struct Solution {
    /// What was solved.
    pub method: Method,
    /// Where it was solved.
    pub device: RanOn,
    /// The transport plan.
    pub plan: Plan,
    /// Source potential α (length m).
    pub alpha: Array1<f64>,
    /// Target potential β (length n). For the semi-dual it is the maximiser of the dual in β at the returned
    /// α, so that D(α, β) = S(α).
    pub beta: Array1<f64>,
    /// Objective of the formulation solved, evaluated at the returned potentials (maximised).
    pub value: f64,
    /// ⟨T, C⟩ of the returned plan.
    pub transport_cost: f64,
    /// max_i |(T 1)_i − a_i|.
    pub marginal_error_rows: f64,
    /// max_j |(Tᵀ 1)_j − b_j|.
    pub marginal_error_cols: f64,
    /// Iterations performed (all stages together).
    pub iterations: usize,
    /// Why the solver stopped.
    pub termination: Termination,
    /// The device work of the solve when a GPU took part (`None` on the CPU).
    pub gpu_work: Option<GpuWork>,
    /// Which plan a sparse or quadratic solve returned (`None` for Sinkhorn and the exact solver). It is
    /// the kind asked for with [`crate::SparseOt::plan_kind`] when that plan could be built, else the next
    /// one down (feasible → relaxed → gradient): a relaxed plan exists once the potentials are optimal, a
    /// feasible one when the support chosen admits the marginals.
    pub plan_kind: Option<PlanKind>,
    /// For a relaxed or feasible plan: its primal objective ⟨T, C⟩ + (γ/2)‖T‖² (for a relaxed plan, the
    /// relaxation's objective, which mixes the columns' supports) minus `value`. The dual value is a lower
    /// bound on the objective of every plan that meets the marginals, so this bounds how far the plan is from
    /// optimal. It is ≥ 0 up to the plan's own marginal errors times the potentials (weak duality:
    /// P(T) − D(α, β) ≥ −α·(a − T1) − β·(b − Tᵀ1)).
    pub plan_gap: Option<f64>,
}

impl Solution {
    /// This solution with `work` attached, unless no device work was recorded (a CPU solve).
    pub(crate) fn with_gpu_work(mut self, work: GpuWork) -> Self {
        if work != GpuWork::default() {
            self.gpu_work = Some(work);
        }
        self
    }

    /// Holds the status to its promise before the solution is returned. Every reported number (value,
    /// transport cost, marginal errors, potentials, plan) must be finite, else [`Error::NonFiniteResult`].
    /// A `Converged` status must hold on the returned plan as measured in f64: for
    /// [`Criterion::MarginalError`] its max-norm marginal violation is at most the tolerance, for
    /// [`Criterion::Exact`] at most rounding; otherwise the status becomes [`Termination::Unverified`].
    /// (A [`Criterion::DualityGap`] is itself computed in f64 from the returned potentials and a feasible
    /// plan.) Rounding slack: `lane` × f64 epsilon × `scale`, the rounding of one sum of `lane` terms of the
    /// size of the largest marginal entry `scale`.
    pub(crate) fn checked(mut self, scale: f64, lane: usize) -> Result<Self, Error> {
        let finite = |what: &'static str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(Error::NonFiniteResult { what })
            }
        };
        finite("the objective value", self.value.is_finite())?;
        finite("the transport cost", self.transport_cost.is_finite())?;
        finite(
            "a marginal error",
            self.marginal_error_rows.is_finite() && self.marginal_error_cols.is_finite(),
        )?;
        finite("alpha", self.alpha.iter().all(|x| x.is_finite()))?;
        finite("beta", self.beta.iter().all(|x| x.is_finite()))?;
        finite(
            "the plan",
            self.plan.triplets().all(|(_, _, v)| v.is_finite()),
        )?;
        let error = self.marginal_error_rows.max(self.marginal_error_cols);
        let slack = lane.max(1) as f64 * f64::EPSILON * scale;
        let met = match self.termination {
            Termination::Converged(Criterion::MarginalError { tol }) => error <= tol + slack,
            Termination::Converged(Criterion::Exact) => error <= 16.0 * slack,
            _ => true,
        };
        if !met {
            self.termination = Termination::Unverified {
                marginal_error: error,
            };
        }
        Ok(self)
    }

    /// `true` when the solver converged.
    pub fn converged(&self) -> bool {
        self.termination.converged()
    }

    /// The marginal violation of a gradient plan returned under a certified (duality-gap) status, when it
    /// is more than rounding (1e-9 of the plan's mass): the potentials are optimal but this plan is not
    /// feasible. `None` otherwise: every other `Converged` status promises the marginals, and relaxed and
    /// feasible plans meet them.
    pub fn certified_plan_miss(&self) -> Option<f64> {
        let certified = matches!(
            self.termination,
            Termination::Converged(Criterion::DualityGap { .. })
        );
        if !certified || self.plan_kind != Some(PlanKind::Gradient) {
            return None;
        }
        let mass: f64 = self.plan.triplets().map(|(_, _, v)| v).sum();
        let error = self.marginal_error_rows.max(self.marginal_error_cols);
        (error > 1e-9 * mass).then_some(error)
    }

    /// The dense plan (a copy).
    pub fn dense_plan(&self) -> Array2<f64> {
        self.plan.to_dense()
    }
}

impl fmt::Display for Solution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (m, n) = self.plan.shape();
        writeln!(f, "{} on {m} x {n} [{}]", self.method, self.device)?;
        write!(
            f,
            "  status          {} after {} iterations",
            self.termination, self.iterations
        )?;
        if let Some(miss) = self.certified_plan_miss() {
            // Never a bare "converged" over a plan that misses a marginal.
            write!(
                f,
                "; the gradient plan misses a marginal by {miss:.2e} (the potentials are optimal: at a \
                 nonsmooth optimum the optimal plan mixes tied supports; ask for the relaxed or feasible plan)"
            )?;
        }
        writeln!(f)?;
        writeln!(f, "  objective       {:.10}", self.value)?;
        writeln!(f, "  transport cost  {:.10}", self.transport_cost)?;
        writeln!(
            f,
            "  marginal error  rows {:.2e}, columns {:.2e}",
            self.marginal_error_rows, self.marginal_error_cols
        )?;
        write!(f, "  plan            ")?;
        if let Some(kind) = self.plan_kind {
            write!(f, "{kind}, ")?;
        }
        match &self.plan {
            Plan::Sparse(p) => write!(
                f,
                "{} nonzeros, at most {} per {}",
                p.nnz(),
                p.max_lane_nnz(),
                if p.lanes() == Lanes::Columns {
                    "column"
                } else {
                    "row"
                }
            )?,
            Plan::Dense(t) => write!(
                f,
                "dense, {} entries > 0",
                t.iter().filter(|&&v| v > 0.0).count()
            )?,
        }
        if let Some(gap) = self.plan_gap {
            write!(f, ", objective within {gap:.2e} of the dual bound")?;
        }
        Ok(())
    }
}

/// Transport cost ⟨T, C⟩ and marginal errors of a plan given as triplets.
pub(crate) fn plan_metrics(
    triplets: impl Iterator<Item = (usize, usize, f64)>,
    cost: impl Fn(usize, usize) -> f64,
    a: &[f64],
    b: &[f64],
) -> (f64, f64, f64) {
    let mut rows = vec![0.0; a.len()];
    let mut cols = vec![0.0; b.len()];
    let mut tc = 0.0;
    for (i, j, v) in triplets {
        rows[i] += v;
        cols[j] += v;
        tc += v * cost(i, j);
    }
    let err = |s: &[f64], t: &[f64]| {
        s.iter()
            .zip(t)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    };
    (tc, err(&rows, a), err(&cols, b))
}
