//! Solver configuration: validated builders for the sparse/quadratic solver and for Sinkhorn.

use std::fmt;

use ndarray::Array1;

use crate::error::{nonnegative, positive, Error, Result};
use crate::problem::Problem;
use crate::solution::{Lanes, Progress, Solution};

/// Which concave program the sparse and quadratic solvers maximise (SPEC §2).
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

/// A progress observer: called after every iteration (every check for Sinkhorn).
pub type Observer<'a> = &'a mut dyn FnMut(&Progress);

/// Sparsity-constrained OT (at most k nonzeros per column, or per row), and quadratic OT as the case without k.
///
/// ```
/// use sparse_ot::{golden_problem, SparseOt};
/// let sol = SparseOt::new(2, 0.1)?.solve(&golden_problem())?;
/// assert!(sol.converged());
/// # Ok::<(), sparse_ot::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct SparseOt {
    pub(crate) k: Option<usize>,
    pub(crate) gamma: f64,
    pub(crate) formulation: Formulation,
    pub(crate) lanes: Lanes,
    pub(crate) tol: f64,
    pub(crate) max_iter: usize,
    pub(crate) memory: usize,
    pub(crate) warm_alpha: Option<Array1<f64>>,
    pub(crate) warm_beta: Option<Array1<f64>>,
}

/// Default stopping tolerance on the max-norm marginal violation (absolute, in the units of a and b).
pub const DEFAULT_TOL: f64 = 1e-9;
/// Default iteration limit of the sparse and quadratic solvers.
pub const DEFAULT_MAX_ITER: usize = 1000;

impl SparseOt {
    /// At most `k` nonzeros per column (target), regularisation strength `gamma`.
    ///
    /// Errors: k = 0, γ ≤ 0 or non-finite. (k > m is reported when solving, once m is known.)
    pub fn new(k: usize, gamma: f64) -> Result<Self> {
        if k == 0 {
            return Err(Error::InvalidK {
                k,
                max: usize::MAX,
                axis: "rows",
            });
        }
        Self::with_k(Some(k), gamma)
    }

    /// Quadratically-regularised OT (SPEC §4): no limit on nonzeros (k = m).
    pub fn quadratic(gamma: f64) -> Result<Self> {
        Self::with_k(None, gamma)
    }

    fn with_k(k: Option<usize>, gamma: f64) -> Result<Self> {
        Ok(Self {
            k,
            gamma: positive("gamma", gamma)?,
            formulation: Formulation::SemiDual,
            lanes: Lanes::Columns,
            tol: DEFAULT_TOL,
            max_iter: DEFAULT_MAX_ITER,
            memory: 10,
            warm_alpha: None,
            warm_beta: None,
        })
    }

    /// Dual or semi-dual (default semi-dual).
    pub fn formulation(mut self, f: Formulation) -> Self {
        self.formulation = f;
        self
    }

    /// Put the k limit on rows (each source uses at most k targets) instead of columns: the transposed problem
    /// is solved and its solution transposed back (SPEC §1).
    pub fn row_sparsity(mut self) -> Self {
        self.lanes = Lanes::Rows;
        self
    }

    /// Stopping tolerance on the max-norm of the marginal violation (the gradient). 0 runs exactly
    /// `max_iter` iterations. Errors: negative or non-finite.
    pub fn tol(mut self, tol: f64) -> Result<Self> {
        self.tol = nonnegative("tol", tol)?;
        Ok(self)
    }

    /// Iteration limit.
    pub fn max_iter(mut self, max_iter: usize) -> Self {
        self.max_iter = max_iter;
        self
    }

    /// L-BFGS memory (pairs kept). Errors: 0.
    pub fn memory(mut self, memory: usize) -> Result<Self> {
        if memory == 0 {
            return Err(Error::InvalidParameter {
                name: "memory",
                value: 0.0,
                requirement: "must be at least 1",
            });
        }
        self.memory = memory;
        Ok(self)
    }

    /// Start from these potentials instead of zero (β is used by the dual only; k = 1 is solved exactly and
    /// needs no start). Lengths are checked when
    /// solving. With row sparsity, α is over rows and β over columns of the original problem, as returned.
    pub fn warm_start(mut self, alpha: Array1<f64>, beta: Option<Array1<f64>>) -> Self {
        self.warm_alpha = Some(alpha);
        self.warm_beta = beta;
        self
    }

    /// Solves on the CPU.
    pub fn solve(&self, problem: &Problem) -> Result<Solution> {
        self.solve_observed(problem, &mut |_| {})
    }

    /// Solves on the CPU, calling `observer` after every iteration.
    pub fn solve_observed(&self, problem: &Problem, observer: Observer<'_>) -> Result<Solution> {
        crate::cpu::sparse::solve(self, problem, observer)
    }
}

/// Entropic OT by log-domain Sinkhorn (SPEC §5), with ε-scaling and warm start.
///
/// ```
/// use sparse_ot::{golden_problem, Sinkhorn};
/// let sol = Sinkhorn::new(0.1)?.solve(&golden_problem())?;
/// assert!(sol.converged());
/// # Ok::<(), sparse_ot::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Sinkhorn {
    pub(crate) epsilon: f64,
    pub(crate) tol: f64,
    pub(crate) max_iter: usize,
    pub(crate) check_every: usize,
    pub(crate) scaling: Option<f64>,
    pub(crate) warm: Option<(Array1<f64>, Array1<f64>)>,
    pub(crate) precision: Precision,
}

/// Arithmetic of the Sinkhorn inner loops (the exponential sums over each row and column).
///
/// Potentials, logarithms, the stopping test, the returned plan and every reported number are f64 in both
/// modes; only the m·n exponentials of each iteration and the cost copies they read change precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f64 throughout (the reference; default). Marginal errors down to ~1e-14 of the mass are reachable.
    #[default]
    F64,
    /// f32 exponentials over an f32 copy of the cost (shifted to start at 0), summed in f64. About half the
    /// memory traffic and twice the SIMD width of F64, but each exponent (f_i + g_j − C_ij)/ε carries an
    /// absolute error of about 1e-7 · (cost range)/ε, so the reachable marginal error is about that, relative
    /// to the mass (≈1e-5 at range/ε = 100). Use it for loose tolerances or a fixed iteration budget; a
    /// tolerance below that floor ends in `MaxIterations`.
    F32,
}

/// Default iteration limit of Sinkhorn (all ε stages together).
pub const DEFAULT_SINKHORN_MAX_ITER: usize = 10_000;

impl Sinkhorn {
    /// Entropic regularisation ε (in cost units). Errors: ε ≤ 0 or non-finite.
    pub fn new(epsilon: f64) -> Result<Self> {
        Ok(Self {
            epsilon: positive("epsilon", epsilon)?,
            tol: DEFAULT_TOL,
            max_iter: DEFAULT_SINKHORN_MAX_ITER,
            check_every: 10,
            scaling: Some(0.5),
            warm: None,
            precision: Precision::F64,
        })
    }

    /// Stop when max_i |(T1)_i − a_i| ≤ tol (columns are exact after each g-update). 0 runs exactly `max_iter`
    /// iterations. Errors: negative or non-finite.
    pub fn tol(mut self, tol: f64) -> Result<Self> {
        self.tol = nonnegative("tol", tol)?;
        Ok(self)
    }

    /// Iteration limit (all ε stages together).
    pub fn max_iter(mut self, max_iter: usize) -> Self {
        self.max_iter = max_iter;
        self
    }

    /// Check the marginal error every `every` iterations (default 10). Errors: 0.
    pub fn check_every(mut self, every: usize) -> Result<Self> {
        if every == 0 {
            return Err(Error::InvalidParameter {
                name: "check_every",
                value: 0.0,
                requirement: "must be at least 1",
            });
        }
        self.check_every = every;
        Ok(self)
    }

    /// ε-scaling: start at ε₀ = max(ε, cost range) and multiply by `factor` each stage down to ε; `None`
    /// disables it. Default `Some(0.5)`. Errors: factor outside (0, 1).
    pub fn epsilon_scaling(mut self, factor: Option<f64>) -> Result<Self> {
        if let Some(q) = factor {
            if !(q > 0.0 && q < 1.0) {
                return Err(Error::InvalidParameter {
                    name: "epsilon_scaling",
                    value: q,
                    requirement: "the factor must lie strictly between 0 and 1",
                });
            }
        }
        self.scaling = factor;
        Ok(self)
    }

    /// Arithmetic of the inner loops (default [`Precision::F64`]).
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// Start from potentials (f, g), e.g. a previous solution's (alpha, beta); ε-scaling is then skipped.
    pub fn warm_start(mut self, f: Array1<f64>, g: Array1<f64>) -> Self {
        self.warm = Some((f, g));
        self
    }

    /// Solves on the CPU.
    pub fn solve(&self, problem: &Problem) -> Result<Solution> {
        self.solve_observed(problem, &mut |_| {})
    }

    /// Solves on the CPU, calling `observer` at every marginal-error check.
    pub fn solve_observed(&self, problem: &Problem, observer: Observer<'_>) -> Result<Solution> {
        crate::cpu::sinkhorn::solve(self, problem, observer)
    }
}
