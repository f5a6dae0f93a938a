//! The one error type of the crate.
//!
//! Every fallible entry point returns [`Result<T>`]. Errors are raised for input that cannot be solved as
//! given; running out of iterations or stalling is *not* an error but a [`crate::Termination`] status.

use std::fmt;

/// Shorthand for `std::result::Result<T, sparse_ot::Error>`.
pub type Result<T> = std::result::Result<T, Error>;

/// Where in an input an offending value sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Entry `i` of a vector.
    Vector(usize),
    /// Entry `(i, j)` of a matrix.
    Matrix(usize, usize),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Vector(i) => write!(f, "[{i}]"),
            Position::Matrix(i, j) => write!(f, "[{i}, {j}]"),
        }
    }
}

/// Everything that can go wrong before or while solving.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An input has no entries.
    #[error("{what} is empty: every input needs at least one entry")]
    Empty {
        /// Which input (`"a"`, `"b"`, `"cost"`, …).
        what: &'static str,
    },
    /// Two inputs disagree about a dimension.
    #[error("shape mismatch: {what} has {found} but must have {expected}")]
    ShapeMismatch {
        /// What is being compared, e.g. `"cost rows"`.
        what: &'static str,
        /// The size required by the other inputs.
        expected: usize,
        /// The size found.
        found: usize,
    },
    /// NaN or ±infinity in an input.
    #[error("{what}{position} is {value}: inputs must be finite")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// Where the value sits.
        position: Position,
        /// The value (NaN or ±inf).
        value: f64,
    },
    /// A marginal has a negative entry.
    #[error("{what}{position} = {} is negative: marginals must be nonnegative", number(*value))]
    NegativeMass {
        /// Which marginal.
        what: &'static str,
        /// Where the value sits.
        position: Position,
        /// The negative value.
        value: f64,
    },
    /// A marginal entry is zero where the chosen solver divides by it or takes its logarithm.
    #[error("{what}{position} is zero, but {solver} needs every entry of {what} to be positive ({reason})")]
    ZeroMass {
        /// Which marginal.
        what: &'static str,
        /// Where the zero sits.
        position: Position,
        /// The solver that cannot accept it.
        solver: &'static str,
        /// Why (e.g. "it divides by b_j").
        reason: &'static str,
    },
    /// The marginals carry different total mass.
    #[error(
        "total masses differ: sum(a) = {sum_a}, sum(b) = {sum_b}, relative difference {relative:.3e} \
         exceeds the tolerance {tolerance:.1e}"
    )]
    MassMismatch {
        /// Σa.
        sum_a: f64,
        /// Σb.
        sum_b: f64,
        /// |Σa − Σb| / max(Σa, Σb).
        relative: f64,
        /// The tolerance that was exceeded.
        tolerance: f64,
    },
    /// The total mass is zero: there is nothing to transport.
    #[error("total mass is zero: at least one entry of each marginal must be positive")]
    ZeroTotalMass,
    /// The sparsity level k is 0 or exceeds the number of rows.
    #[error("{}", invalid_k(*k, *max, axis))]
    InvalidK {
        /// The k requested.
        k: usize,
        /// The largest valid k (the number of rows, or of columns for row sparsity); `usize::MAX` when the
        /// problem is not known yet (k = 0 at construction).
        max: usize,
        /// `"rows"` for column sparsity, `"columns"` for row sparsity.
        axis: &'static str,
    },
    /// A scalar parameter is out of its domain.
    #[error("{name} = {} is invalid: {requirement}", number(*value))]
    InvalidParameter {
        /// Parameter name (`"gamma"`, `"epsilon"`, `"tol"`, …).
        name: &'static str,
        /// The value given.
        value: f64,
        /// What the parameter must satisfy.
        requirement: &'static str,
    },
    /// A warm start does not match the problem.
    #[error("warm start {what} has length {found} but the problem needs {expected}")]
    WarmStartMismatch {
        /// Which potential.
        what: &'static str,
        /// Required length.
        expected: usize,
        /// Length given.
        found: usize,
    },
    /// Entry `index` of a batch (a problem, a group of router logits, a matrix of a 3-D operator input) is
    /// invalid; `source` says why.
    #[error("batch entry {index}: {source}")]
    InBatch {
        /// Position of the offending entry in the batch.
        index: usize,
        /// What is wrong with it.
        source: Box<Error>,
    },
    /// A requested feature is not available in this build or on this machine.
    #[error("{what} is not available: {why}")]
    Unavailable {
        /// What was asked for.
        what: &'static str,
        /// Why it cannot be provided.
        why: String,
    },
    /// No GPU adapter could be found (or the one asked for could not open a device).
    #[error("no GPU adapter: {why}")]
    NoAdapter {
        /// What the graphics API reported.
        why: String,
    },
    /// The problem does not fit a limit of the GPU device (e.g. one storage binding).
    #[error("GPU device limit exceeded: {what} needs {needed} but the device allows {limit}")]
    DeviceLimit {
        /// Which limit (e.g. `"max_storage_buffer_binding_size (cost matrix)"`).
        what: &'static str,
        /// The device's limit.
        limit: u64,
        /// What the problem needs.
        needed: u64,
    },
    /// The solve produced a NaN or infinite number: the input's magnitudes overflow the arithmetic of the
    /// solver (or of the device, f32 on a GPU).
    #[error(
        "{what} of the solution is not finite (NaN or inf): the input's magnitudes (cost, marginals, or \
         cost / epsilon or gamma) overflow the solver's arithmetic; rescale the input"
    )]
    NonFiniteResult {
        /// Which part of the solution.
        what: &'static str,
    },
    /// Something the caller asked to form would take more memory than the limit given (or than fits).
    #[error("{what} would take {bytes} bytes, above the limit of {limit} bytes")]
    TooLarge {
        /// What would be formed.
        what: &'static str,
        /// Bytes it needs.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// A cost computed from the input (points, their scale) overflows f64.
    #[error("{what} overflows f64 ({}): rescale the points or divide the cost", number(*value))]
    CostOverflow {
        /// Which cost.
        what: &'static str,
        /// The overflowing value (inf).
        value: f64,
    },
    /// A GPU operation failed (validation, out of memory, lost device, failed readback).
    #[error("GPU error: {0}")]
    Gpu(String),
}

/// Checks a strictly positive finite parameter.
pub(crate) fn positive(name: &'static str, value: f64) -> Result<f64> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(Error::InvalidParameter {
            name,
            value,
            requirement: "must be finite and > 0",
        })
    }
}

/// Checks a nonnegative finite parameter.
pub(crate) fn nonnegative(name: &'static str, value: f64) -> Result<f64> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(Error::InvalidParameter {
            name,
            value,
            requirement: "must be finite and >= 0",
        })
    }
}

/// Checks a count that must be at least 1.
pub(crate) fn at_least_one(name: &'static str, value: usize) -> Result<usize> {
    if value >= 1 {
        Ok(value)
    } else {
        Err(Error::InvalidParameter {
            name,
            value: 0.0,
            requirement: "must be at least 1",
        })
    }
}

/// A number as a person reads it: plain between 1e-4 and 1e15, in scientific notation beyond (not 309
/// digits for 1e308).
fn number(x: f64) -> String {
    if x == 0.0 || !x.is_finite() || (1e-4..1e15).contains(&x.abs()) {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}

fn invalid_k(k: usize, max: usize, axis: &str) -> String {
    if k == 0 {
        "k = 0 is invalid: k (the most nonzeros per lane) must be at least 1".into()
    } else {
        format!("k = {k} is out of range: it must satisfy 1 <= k <= {max} (the number of {axis})")
    }
}
