//! The [`Sinkhorn`] configuration and [`Precision`]: validated settings and their builders. The entry points
//! that solve with it are in the family's face, `sinkhorn/mod.rs`.

use ndarray::Array1;

use crate::error::{at_least_one, nonnegative, positive, Error, Result};
use crate::monitor::Monitor;
use crate::solution::DEFAULT_TOL;

/// Entropic OT by log-domain Sinkhorn (docs/MATH.md §5), with ε-scaling and warm start.
///
/// **Forbidden pairs.** A cost entry more than 10⁶ times the bulk of the cost above its minimum (its 90th
/// percentile over a sample), a "big-M" that forbids a pair, gets no mass (exp of minus its size over ε is
/// 0) and does not set the scale of the ε schedule or of the GPU's default tolerance, which follow the other
/// entries.
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
    /// Whether `tol` was set with [`Sinkhorn::tol`]; if not, GPU solves use [`crate::DEFAULT_TOL_F32`] instead.
    pub(crate) tol_given: bool,
    pub(crate) max_iter: usize,
    pub(crate) check_every: usize,
    pub(crate) scaling: Option<f64>,
    pub(crate) warm: Option<(Array1<f64>, Array1<f64>)>,
    pub(crate) precision: Precision,
    pub(crate) monitor: Monitor,
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
    /// to the mass (≈1e-5 at range/ε = 100). Use it for loose tolerances or a fixed iteration budget. A
    /// tolerance below that floor stalls the f32 iterations: a dense problem of at most 2²² entries is then
    /// finished by Newton's method in f64 (as any slow solve to a tolerance is on the CPU; see
    /// [`Sinkhorn::solve`]), anything larger ends in `MaxIterations`.
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
            tol_given: false,
            max_iter: DEFAULT_SINKHORN_MAX_ITER,
            check_every: 10,
            scaling: Some(0.5),
            warm: None,
            precision: Precision::F64,
            monitor: Monitor::new(),
        })
    }

    /// Stop when max_i |(T1)_i − a_i| ≤ tol (columns are exact after each g-update). 0 runs exactly `max_iter`
    /// iterations. Errors: negative or non-finite.
    ///
    /// A tolerance set here is used as given on every device. Without it, the default depends on the
    /// arithmetic: on the CPU (f64) it is [`DEFAULT_TOL`] = 1e-9; on a GPU (f32) it is
    /// [`crate::DEFAULT_TOL_F32`] × max(a, b) × max(1, max|C| / ε) (about 1.9e-5 of the largest marginal
    /// entry for a cost in [0, 1] at ε = 0.1), since 1e-9 is below f32 resolution; with
    /// `Sinkhorn::solve_buffers` (GPU buffers) the cost range stands for max|C| and max a for max(a, b).
    /// The tolerance used is the one the `Converged` status names. [`Precision::F32`] on the CPU keeps
    /// [`DEFAULT_TOL`].
    pub fn tol(mut self, tol: f64) -> Result<Self> {
        self.tol = nonnegative("tol", tol)?;
        self.tol_given = true;
        Ok(self)
    }

    /// Iteration limit (all ε stages together).
    pub fn max_iter(mut self, max_iter: usize) -> Self {
        self.max_iter = max_iter;
        self
    }

    /// Check the marginal error every `every` iterations (default 10). Errors: 0.
    pub fn check_every(mut self, every: usize) -> Result<Self> {
        self.check_every = at_least_one("check_every", every)?;
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

    /// Reports every marginal-error check (single solves) or finished problem (batches) to `monitor`, which
    /// can also cancel the solve at its next check (see [`Monitor`]).
    pub fn monitor(mut self, monitor: Monitor) -> Self {
        self.monitor = monitor;
        self
    }
}
