//! `sparse_ot._native`: the compiled half of the `sparse_ot` Python package.
//!
//! It exposes the crate's solvers with plain arguments and returns plain dicts of NumPy arrays and
//! scalars; the Python half (`sparse_ot/__init__.py`) gives them POT's names, positions, defaults, return
//! shapes, warnings and logs. Every solve runs with the GIL released, so Python threads solve concurrently.
//!
//! Inputs: NumPy arrays of float64 or float32 (all arrays of one call of one type; the Python half
//! converts anything else), read in place through a view: a C-contiguous or strided float64 array is not
//! converted. The crate's `Problem` then holds its own validated f64 copy, as in the Rust API.
//!
//! Errors: bad input (shapes, NaN/inf, negative or mismatched masses, k = 0, a non-positive
//! regularisation, magnitudes that overflow the arithmetic) raises `ValueError` with the crate's message;
//! a device failure (no adapter, a device limit, a GPU error) raises `RuntimeError`. Not converging is
//! not an error: it is in the returned dict (`converged`, `termination`).

// The #[pyfunction]s take Python's keyword arguments one by one: their parameter lists are the Python
// signatures.
#![allow(clippy::too_many_arguments)]

use numpy::ndarray::{ArrayView1, ArrayView2, ArrayView3};
use numpy::{
    Element, IntoPyArray, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArray3,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use sparse_ot::{
    pairwise, Batch, Device, Error, ExactOt, Formulation, GroundCost, Plan, PlanKind, Problem,
    Router, RouterSolver, Routing, Scalar, Sinkhorn, Solution, SparseOt, Termination,
};

/// The crate's error as the Python exception it stands for.
fn to_py(e: Error) -> PyErr {
    let device = |e: &Error| {
        matches!(
            e,
            Error::NoAdapter { .. }
                | Error::DeviceLimit { .. }
                | Error::Gpu(_)
                | Error::Unavailable { .. }
        )
    };
    let inner = match &e {
        Error::InBatch { source, .. } => source.as_ref(),
        e => e,
    };
    if device(inner) {
        PyRuntimeError::new_err(e.to_string())
    } else {
        PyValueError::new_err(e.to_string())
    }
}

fn device(name: &str) -> PyResult<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::Auto),
        "gpu" => Device::gpu().map_err(to_py),
        other => Err(PyValueError::new_err(format!(
            "device must be \"auto\", \"cpu\" or \"gpu\", not {other:?}"
        ))),
    }
}

/// The solver of one call, configured: what `solve`, `solve_batch` run.
enum Config {
    Exact(ExactOt),
    Sinkhorn(Sinkhorn),
    Smooth(SparseOt),
}

impl Config {
    /// `solver` is "exact", "sinkhorn", "quadratic" or "sparse"; `reg` is ε (Sinkhorn) or γ; `k` the
    /// nonzeros per column (sparse only); `formulation` "dual" or "semi-dual" (quadratic and sparse).
    fn new(
        solver: &str,
        reg: Option<f64>,
        k: Option<usize>,
        formulation: &str,
        max_iter: Option<usize>,
        tol: Option<f64>,
        plan_kind: &str,
    ) -> PyResult<Self> {
        let plan_kind = match plan_kind {
            "gradient" => PlanKind::Gradient,
            "relaxed" => PlanKind::Relaxed,
            "feasible" => PlanKind::Feasible,
            other => {
                return Err(PyValueError::new_err(format!(
                    "plan_kind must be \"gradient\", \"relaxed\" or \"feasible\", not {other:?}"
                )))
            }
        };
        if plan_kind != PlanKind::Gradient && !matches!(solver, "quadratic" | "sparse") {
            return Err(PyValueError::new_err(format!(
                "plan_kind applies to the sparse and quadratic solvers, not {solver:?}"
            )));
        }
        let reg = |what: &str| {
            reg.ok_or_else(|| {
                PyValueError::new_err(format!("{what} needs reg (the regularisation)"))
            })
        };
        let formulation = match formulation {
            "dual" => Formulation::Dual,
            "semi-dual" | "semi_dual" => Formulation::SemiDual,
            other => {
                return Err(PyValueError::new_err(format!(
                    "formulation must be \"dual\" or \"semi-dual\", not {other:?}"
                )))
            }
        };
        Ok(match solver {
            "exact" | "emd" => {
                let mut s = ExactOt::new();
                if let Some(it) = max_iter {
                    s = s.max_iter(it);
                }
                Config::Exact(s)
            }
            "sinkhorn" => {
                let mut s = Sinkhorn::new(reg("sinkhorn")?).map_err(to_py)?;
                if let Some(t) = tol {
                    s = s.tol(t).map_err(to_py)?;
                }
                if let Some(it) = max_iter {
                    s = s.max_iter(it);
                }
                Config::Sinkhorn(s)
            }
            "quadratic" | "sparse" => {
                let gamma = reg(solver)?;
                let mut s = if solver == "sparse" {
                    let k = k.ok_or_else(|| {
                        PyValueError::new_err("the sparse solver needs k (max_nz: nonzeros per column)")
                    })?;
                    SparseOt::new(k, gamma)
                } else {
                    SparseOt::quadratic(gamma)
                }
                .map_err(to_py)?
                .formulation(formulation)
                .plan_kind(plan_kind);
                if let Some(t) = tol {
                    s = s.tol(t).map_err(to_py)?;
                }
                if let Some(it) = max_iter {
                    s = s.max_iter(it);
                }
                Config::Smooth(s)
            }
            other => {
                return Err(PyValueError::new_err(format!(
                    "solver must be \"exact\", \"sinkhorn\", \"quadratic\" or \"sparse\", not {other:?}"
                )))
            }
        })
    }

    fn solve(&self, p: &Problem, device: &Device) -> sparse_ot::Result<Solution> {
        match self {
            Config::Exact(s) => s.solve(p),
            Config::Sinkhorn(s) => s.solve_on(p, device),
            Config::Smooth(s) => s.solve_on(p, device),
        }
    }

    fn solve_batch(&self, b: &Batch, device: &Device) -> Vec<sparse_ot::Result<Solution>> {
        match self {
            Config::Exact(s) => s.solve_batch(b),
            Config::Sinkhorn(s) => s.solve_batch_on(b, device),
            Config::Smooth(s) => s.solve_batch_on(b, device),
        }
    }
}

/// A short name of a termination for programs (`termination` holds the sentence).
fn kind(t: &Termination) -> &'static str {
    match t {
        Termination::Converged(_) => "converged",
        Termination::MaxIterations => "max_iterations",
        Termination::Stalled => "stalled",
        Termination::Cancelled => "cancelled",
        Termination::Unverified { .. } => "unverified",
        _ => "other",
    }
}

/// A solution as a dict: the plan (`plan`, dense m × n, or `plan_rows`/`plan_cols`/`plan_values`, its
/// nonzeros, when the solver's plan is sparse), potentials, scalars and status.
fn solution_dict<'py>(py: Python<'py>, s: Solution) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let (m, n) = s.plan.shape();
    d.set_item("shape", (m, n))?;
    match s.plan {
        Plan::Dense(t) => d.set_item("plan", t.into_pyarray(py))?,
        Plan::Sparse(ref p) => {
            let mut rows = Vec::with_capacity(p.nnz());
            let mut cols = Vec::with_capacity(p.nnz());
            let mut vals = Vec::with_capacity(p.nnz());
            for (i, j, v) in p.triplets() {
                rows.push(i as i64);
                cols.push(j as i64);
                vals.push(v);
            }
            d.set_item("plan_rows", rows.into_pyarray(py))?;
            d.set_item("plan_cols", cols.into_pyarray(py))?;
            d.set_item("plan_values", vals.into_pyarray(py))?;
        }
    }
    d.set_item("alpha", s.alpha.into_pyarray(py))?;
    d.set_item("beta", s.beta.into_pyarray(py))?;
    d.set_item("value", s.value)?;
    d.set_item("transport_cost", s.transport_cost)?;
    d.set_item("marginal_error_rows", s.marginal_error_rows)?;
    d.set_item("marginal_error_cols", s.marginal_error_cols)?;
    d.set_item("iterations", s.iterations)?;
    d.set_item("converged", s.termination.converged())?;
    d.set_item("termination", s.termination.to_string())?;
    d.set_item("termination_kind", kind(&s.termination))?;
    d.set_item("device", s.device.to_string())?;
    d.set_item("plan_kind", s.plan_kind.map(|k| k.to_string()))?;
    d.set_item("plan_gap", s.plan_gap)?;
    Ok(d)
}

/// Solves one problem with the GIL released. `a`, `b`, `cost` are one element type.
fn solve_typed<'py, T: Scalar + Element>(
    py: Python<'py>,
    a: PyReadonlyArray1<'py, T>,
    b: PyReadonlyArray1<'py, T>,
    cost: PyReadonlyArray2<'py, T>,
    cfg: &Config,
    device: &Device,
) -> PyResult<Bound<'py, PyDict>> {
    let (a, b, cost): (ArrayView1<T>, ArrayView1<T>, ArrayView2<T>) =
        (a.as_array(), b.as_array(), cost.as_array());
    let solution = py
        .detach(|| Problem::new(a, b, cost).and_then(|p| cfg.solve(&p, device)))
        .map_err(to_py)?;
    solution_dict(py, solution)
}

/// `solve(a, b, cost, solver, reg=None, k=None, formulation="semi-dual", max_iter=None, tol=None,
/// device="auto", plan_kind="gradient")`: one problem; `a` (m), `b` (n), `cost` (m × n), all float64 or all float32.
/// Returns a dict (see the module docs).
#[pyfunction]
#[pyo3(signature = (a, b, cost, solver, reg=None, k=None, formulation="semi-dual", max_iter=None, tol=None, device="auto", plan_kind="gradient"))]
fn solve<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    cost: &Bound<'py, PyAny>,
    solver: &str,
    reg: Option<f64>,
    k: Option<usize>,
    formulation: &str,
    max_iter: Option<usize>,
    tol: Option<f64>,
    device: &str,
    plan_kind: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let cfg = Config::new(solver, reg, k, formulation, max_iter, tol, plan_kind)?;
    let dev = self::device(device)?;
    if let (Ok(a), Ok(b), Ok(c)) = (a.extract(), b.extract(), cost.extract()) {
        return solve_typed::<f64>(py, a, b, c, &cfg, &dev);
    }
    match (a.extract(), b.extract(), cost.extract()) {
        (Ok(a), Ok(b), Ok(c)) => solve_typed::<f32>(py, a, b, c, &cfg, &dev),
        _ => Err(PyValueError::new_err(
            "a (1-D), b (1-D) and cost (2-D) must be NumPy arrays, all float64 or all float32",
        )),
    }
}

/// `solve_batch(a, b, cost, solver, ...)`: B problems of one shape, `a` (B × m), `b` (B × n), `cost`
/// (B × m × n), float64 or float32; on a GPU they run as one batch. Returns a list of B entries, each a
/// solution dict or, for an invalid problem, the `ValueError`/`RuntimeError` it raises (not raised).
#[pyfunction]
#[pyo3(signature = (a, b, cost, solver, reg=None, k=None, formulation="semi-dual", max_iter=None, tol=None, device="auto", plan_kind="gradient"))]
fn solve_batch<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    cost: &Bound<'py, PyAny>,
    solver: &str,
    reg: Option<f64>,
    k: Option<usize>,
    formulation: &str,
    max_iter: Option<usize>,
    tol: Option<f64>,
    device: &str,
    plan_kind: &str,
) -> PyResult<Vec<Py<PyAny>>> {
    let cfg = Config::new(solver, reg, k, formulation, max_iter, tol, plan_kind)?;
    let dev = self::device(device)?;
    let results = if let (Ok(a), Ok(b), Ok(c)) = (
        a.extract::<PyReadonlyArray2<f64>>(),
        b.extract::<PyReadonlyArray2<f64>>(),
        cost.extract::<PyReadonlyArray3<f64>>(),
    ) {
        let (a, b, c): (ArrayView2<f64>, ArrayView2<f64>, ArrayView3<f64>) =
            (a.as_array(), b.as_array(), c.as_array());
        py.detach(|| Batch::new(a, b, c).map(|batch| cfg.solve_batch(&batch, &dev)))
    } else if let (Ok(a), Ok(b), Ok(c)) = (
        a.extract::<PyReadonlyArray2<f32>>(),
        b.extract::<PyReadonlyArray2<f32>>(),
        cost.extract::<PyReadonlyArray3<f32>>(),
    ) {
        let (a, b, c) = (a.as_array(), b.as_array(), c.as_array());
        py.detach(|| Batch::from_f32(a, b, c).map(|batch| cfg.solve_batch(&batch, &dev)))
    } else {
        return Err(PyValueError::new_err(
            "a (B × m), b (B × n) and cost (B × m × n) must be NumPy arrays, all float64 or all float32",
        ));
    }
    .map_err(to_py)?;
    results
        .into_iter()
        .map(|r| match r {
            Ok(s) => Ok(solution_dict(py, s)?.into_any().unbind()),
            Err(e) => Ok(to_py(e).into_value(py).into_any()),
        })
        .collect()
}

/// `route(logits, mode="experts-choose", capacity_factor=1.0, experts_per_token=1, capacity_multiple=1,
/// solver="adam", device="auto")`: the OT router on logits (G × S × E, float64 or float32). Returns a
/// dict: `dispatch` (bool, G × S × E), `combine` (float64, the gate of each routed pair, 0 elsewhere),
/// `capacity`, `converged_groups`, `dropped_tokens`, `device`.
#[pyfunction]
#[pyo3(signature = (logits, mode="experts-choose", capacity_factor=1.0, experts_per_token=1, capacity_multiple=1, solver="adam", device="auto"))]
fn route<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    mode: &str,
    capacity_factor: f64,
    experts_per_token: usize,
    capacity_multiple: usize,
    solver: &str,
    device: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let router = match mode {
        "experts-choose" | "experts_choose" => Router::experts_choose(capacity_factor),
        "tokens-choose" | "tokens_choose" => Router::tokens_choose(experts_per_token)
            .and_then(|r| r.capacity_factor(capacity_factor)),
        other => {
            return Err(PyValueError::new_err(format!(
                "mode must be \"experts-choose\" or \"tokens-choose\", not {other:?}"
            )))
        }
    }
    .and_then(|r| r.capacity_multiple(capacity_multiple))
    .and_then(|r| {
        r.solver(match solver {
            "accurate" => RouterSolver::ACCURATE,
            _ => RouterSolver::AUTHORS,
        })
    })
    .map_err(to_py)?;
    if !matches!(solver, "adam" | "accurate") {
        return Err(PyValueError::new_err(format!(
            "solver must be \"adam\" or \"accurate\", not {solver:?}"
        )));
    }
    let dev = self::device(device)?;
    let routing: Routing = if let Ok(l) = logits.extract::<PyReadonlyArray3<f64>>() {
        let l = l.as_array();
        py.detach(|| router.route_on(l, &dev))
    } else if let Ok(l) = logits.extract::<PyReadonlyArray3<f32>>() {
        let l = l.as_array().mapv(f64::from);
        py.detach(|| router.route_on(l.view(), &dev))
    } else {
        let ndim = logits
            .cast::<numpy::PyUntypedArray>()
            .map(|a| a.ndim())
            .unwrap_or(0);
        return Err(PyValueError::new_err(format!(
            "logits must be a 3-D NumPy array (groups × tokens × experts) of float64 or float32 (got {ndim} dimensions)"
        )));
    }
    .map_err(to_py)?;
    let d = PyDict::new(py);
    d.set_item("converged_groups", routing.converged_groups())?;
    d.set_item("dropped_tokens", routing.load.dropped_tokens)?;
    d.set_item("capacity", routing.capacity)?;
    d.set_item("device", routing.device.to_string())?;
    d.set_item("dispatch", routing.dispatch.into_pyarray(py))?;
    d.set_item("combine", routing.combine.into_pyarray(py))?;
    Ok(d)
}

/// `pairwise(x, y, p=None, q=None)`: the m × n cost between the rows of `x` (m × d) and of `y` (n × d),
/// float64 or float32: squared Euclidean when `p` and `q` are None, else ‖x_i − y_j‖_p^q (p = q = 2 is the
/// squared Euclidean cost, q = 1 a p-norm). Returns float64.
#[pyfunction]
#[pyo3(signature = (x, y, p=None, q=None))]
fn pairwise_cost<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    y: &Bound<'py, PyAny>,
    p: Option<f64>,
    q: Option<f64>,
) -> PyResult<Bound<'py, numpy::PyArray2<f64>>> {
    let cost = match (p, q) {
        (None, None) => GroundCost::SqEuclidean,
        (Some(p), None) => GroundCost::Minkowski { p, q: 1.0 },
        (p, Some(q)) => GroundCost::Minkowski {
            p: p.unwrap_or(2.0),
            q,
        },
    };
    let c = if let (Ok(x), Ok(y)) = (
        x.extract::<PyReadonlyArray2<f64>>(),
        y.extract::<PyReadonlyArray2<f64>>(),
    ) {
        let (x, y) = (x.as_array(), y.as_array());
        py.detach(|| pairwise(x, y, cost))
    } else if let (Ok(x), Ok(y)) = (
        x.extract::<PyReadonlyArray2<f32>>(),
        y.extract::<PyReadonlyArray2<f32>>(),
    ) {
        let (x, y) = (x.as_array(), y.as_array());
        py.detach(|| pairwise(x, y, cost))
    } else {
        return Err(PyValueError::new_err(
            "x and y must be 2-D NumPy arrays (points x coordinates), both float64 or both float32",
        ));
    }
    .map_err(to_py)?;
    Ok(c.into_pyarray(py))
}

/// `describe_device(device="auto")`: one line saying where solves on this device run and why.
#[pyfunction]
#[pyo3(signature = (device="auto"))]
fn describe_device(py: Python<'_>, device: &str) -> PyResult<String> {
    let dev = self::device(device)?;
    Ok(py.detach(|| dev.describe()))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(solve, m)?)?;
    m.add_function(wrap_pyfunction!(solve_batch, m)?)?;
    m.add_function(wrap_pyfunction!(route, m)?)?;
    m.add_function(wrap_pyfunction!(describe_device, m)?)?;
    m.add_function(wrap_pyfunction!(pairwise_cost, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
