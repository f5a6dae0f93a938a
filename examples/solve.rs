//! `solve`: solve one OT problem stored as NumPy arrays and write the solution as NumPy arrays.
//!
//! ```text
//! cargo run --release --example solve -- --input P.npz --output S.npz --k 3
//! ```
//!
//! Input `P.npz`: `a` (m), `b` (n), `cost` (m, n), float64 or float32 (float32 is widened to float64); or,
//! instead of `cost`, two point clouds `x` (m, d) and `y` (n, d) whose cost is computed on the fly
//! (`--cost`, `--cost-divisor`; `a` and `b` may then be left out for uniform masses; Sinkhorn on the CPU
//! or a GPU, the sparse and quadratic solvers on the CPU).
//! Output `S.npz`: `plan` (m, n) float64 dense (as `--plan` says: for points only when it fits), `alpha`
//! (m), `beta` (n; not for the column semi-dual), and
//! 0-d arrays `value`, `transport_cost`, `marginal_error_rows`, `marginal_error_cols` (float64),
//! `iterations`, `converged` (int64, converged is 0 or 1).
//! stdout: the solution's report, then as its last line one JSON object with the same scalars, the solve
//! time in seconds (file I/O excluded) and the device. Errors: exit status 1 (2 for malformed command
//! lines) and one line on stderr.
//! stderr, besides errors: with `--device auto`, one line naming the device chosen and why; progress of a
//! solve that takes more than a second (a status line on a terminal; lines with `--progress` otherwise).
//! `--quiet` leaves only errors there.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use ndarray::{arr0, Array1, Array2, ArrayD, Ix1, Ix2, IxDyn, OwnedRepr};
use ndarray_npy::{NpzReader, NpzWriter, ReadNpyError, ReadNpzError};

#[path = "common/atomic.rs"]
mod atomic;
#[path = "common/progress.rs"]
mod progress;
#[path = "common/quiet_probe.rs"]
mod quiet_probe;
use atomic::AtomicFile;
use progress::{ProgressArgs, Reporter};
use sparse_ot::{
    Device, Error, ExactOt, Formulation, GpuWork, GroundCost, Monitor, PlanKind, PointProblem,
    PointSolution, Precision, Problem, RanOn, Sinkhorn, Solution, SparseOt, DEFAULT_MAX_ITER,
    DEFAULT_SINKHORN_MAX_ITER,
};

const DEFAULT_GAMMA: f64 = 0.1;
const DEFAULT_EPSILON: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SolverKind {
    /// Sparsity-constrained OT: at most k nonzeros per column (needs --k).
    Sparse,
    /// Quadratically-regularised OT (no limit on nonzeros).
    Quadratic,
    /// Entropic OT by log-domain Sinkhorn.
    Sinkhorn,
    /// Unregularised OT by network simplex.
    Exact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FormulationArg {
    /// Maximise the semi-dual S(alpha): column marginals exact.
    SemiDual,
    /// Maximise the dual D(alpha, beta).
    Dual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CostArg {
    /// |x - y|^2.
    Sqeuclidean,
    /// |x - y|.
    Euclidean,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PlanArg {
    /// Dense for a cost matrix; for point clouds sparse from the sparse and quadratic solvers, dense from
    /// Sinkhorn when m x n <= 10^7, else none.
    Auto,
    /// The dense m x n plan, `plan`.
    Dense,
    /// The nonzeros as `plan_rows`, `plan_cols` (int64) and `plan_values` (float64).
    Sparse,
    /// No plan: the potentials and scalars only.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PlanKindArg {
    /// The k-sparse plan read off the potentials (may miss a row marginal at a nonsmooth optimum).
    Gradient,
    /// The relaxation's optimal plan: meets both marginals, may mix more than k entries in a column.
    Relaxed,
    /// At most k nonzeros per column and both marginals met (quadratic OT on a support from the relaxed
    /// plan), else the relaxed plan; the JSON line's `plan_kind` says which was written.
    Feasible,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PrecisionArg {
    /// Every exponential and sum in float64.
    F64,
    /// Exponentials in float32 over a float32 copy of the cost (sums in float64; Sinkhorn on the CPU).
    F32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    /// A hardware GPU when there is one, else the CPU.
    Auto,
    /// The CPU reference solvers (f64).
    Cpu,
    /// A GPU through wgpu.
    Gpu,
}

/// Solve an optimal-transport problem stored in a .npz file.
///
/// Input: arrays `a` (m), `b` (n) and `cost` (m, n), float64 or float32, or point clouds `x` (m, d) and `y`
/// (n, d) instead of `cost` (not for the exact solver; `a`, `b` optional, uniform if absent). Output: `plan` (m, n), `alpha` (m),
/// `beta` (n; written for --formulation dual, sinkhorn and exact, and for the semi-dual with --row-sparsity,
/// whose variable it is) and 0-d arrays `value`, `transport_cost`, `iterations`, `converged` (0/1),
/// `marginal_error_rows`, `marginal_error_cols`. The last line of stdout is a JSON object with those
/// scalars, `seconds` (solve time, file I/O excluded) and `device`. With --device auto, one line on stderr
/// names the device chosen and why; solves that take more than a second report their progress there.
#[derive(Debug, Parser)]
#[command(name = "solve", version)]
struct Cli {
    /// Input .npz with arrays a (m), b (n), cost (m, n).
    #[arg(long, value_name = "P.npz")]
    input: PathBuf,
    /// Output .npz (overwritten).
    #[arg(long, value_name = "S.npz")]
    output: PathBuf,
    /// Which problem to solve.
    #[arg(long, value_enum, default_value_t = SolverKind::Sparse)]
    solver: SolverKind,
    /// Sparse and quadratic solvers: which concave program to maximise [default: semi-dual].
    #[arg(long, value_enum)]
    formulation: Option<FormulationArg>,
    /// Sparse solver (required there): at most K nonzeros per column (per row with --row-sparsity).
    #[arg(long, value_name = "K")]
    k: Option<usize>,
    /// Sparse solver: put the K limit on rows (each source uses at most K targets) instead of columns.
    #[arg(long)]
    row_sparsity: bool,
    /// Sparse and quadratic solvers: quadratic regularisation gamma > 0 [default: 0.1].
    #[arg(long, value_name = "G", allow_hyphen_values = true)]
    gamma: Option<f64>,
    /// Sinkhorn: entropic regularisation epsilon > 0, in cost units [default: 0.1].
    #[arg(long, value_name = "E", allow_hyphen_values = true)]
    epsilon: Option<f64>,
    /// Stop when the max-norm marginal violation is at most T; 0 runs exactly --max-iter iterations
    /// [default: 1e-9 on the CPU; on a GPU, the f32 default the library picks for the problem].
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    tol: Option<f64>,
    /// Iteration limit [default: 1000 for sparse and quadratic, 10000 for sinkhorn].
    #[arg(long, value_name = "N")]
    max_iter: Option<usize>,
    /// Where to solve; auto picks a hardware GPU when there is one, else the CPU (a software adapter such as
    /// lavapipe only with --device gpu).
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Sinkhorn: iterate at the target epsilon from the start (no schedule from the cost's scale down to
    /// it); for fixed iteration budgets, where every iteration should be at the target epsilon.
    #[arg(long)]
    no_epsilon_scaling: bool,
    /// Sinkhorn: measure the marginal error (test the tolerance, report progress) every N iterations
    /// [default: 10].
    #[arg(long, value_name = "N")]
    check_every: Option<usize>,
    /// Sinkhorn on the CPU: working precision of the exponentials [default: f64].
    #[arg(long, value_enum)]
    precision: Option<PrecisionArg>,
    /// Point-cloud input (x, y): the ground cost [default: sqeuclidean].
    #[arg(long, value_enum)]
    cost: Option<CostArg>,
    /// Point-cloud input: divide every cost by D > 0 (e.g. the largest cost).
    #[arg(long, value_name = "D", allow_hyphen_values = true)]
    cost_divisor: Option<f64>,
    /// Which plan to write.
    #[arg(long, value_enum, default_value_t = PlanArg::Auto)]
    plan: PlanArg,
    /// Sparse and quadratic solvers: which transport plan to return [default: gradient].
    #[arg(long, value_enum)]
    plan_kind: Option<PlanKindArg>,
    #[command(flatten)]
    progress: ProgressArgs,
}

/// A one-line failure message (without the leading `error: `).
#[derive(Debug)]
struct Failure(String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure(e.to_string())
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure(format!("writing the output: {e}"))
    }
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure(s)
    }
}

/// Resolves `--device`: `cpu`, the process-wide GPU (an error naming the problem if there is no adapter), or
/// `auto` (a hardware GPU when there is one, else the CPU).
fn resolve_device(requested: DeviceArg) -> Result<Device, Failure> {
    match requested {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Gpu => Ok(Device::gpu()?),
        DeviceArg::Auto => Ok(Device::Auto),
    }
}

/// A validated solver configuration.
enum Configured {
    Sparse(SparseOt),
    Sinkhorn(Sinkhorn),
    Exact(ExactOt),
}

/// Rejects an option that the chosen solver does not use (rather than silently ignoring it).
fn unused<T>(value: &Option<T>, option: &str, solver: &str) -> Result<(), Failure> {
    match value {
        Some(_) => Err(Failure(format!(
            "{option} does not apply to --solver {solver}"
        ))),
        None => Ok(()),
    }
}

/// Builds the solver from the command line; the library validates every value.
fn configure(cli: &Cli) -> Result<Configured, Failure> {
    let name = cli
        .solver
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default();
    if cli.solver != SolverKind::Sinkhorn {
        unused(&cli.precision, "--precision", &name)?;
        unused(&cli.check_every, "--check-every", &name)?;
        if cli.no_epsilon_scaling {
            return Err(Failure(format!(
                "--no-epsilon-scaling does not apply to --solver {name}"
            )));
        }
    }
    if cli.row_sparsity && cli.solver != SolverKind::Sparse {
        return Err(Failure(format!(
            "--row-sparsity does not apply to --solver {name}"
        )));
    }
    match cli.solver {
        SolverKind::Sparse | SolverKind::Quadratic => {
            unused(&cli.epsilon, "--epsilon", &name)?;
            let gamma = cli.gamma.unwrap_or(DEFAULT_GAMMA);
            let mut cfg = if cli.solver == SolverKind::Sparse {
                let k = cli.k.ok_or_else(|| {
                    Failure(
                        "--solver sparse needs --k K (the most nonzeros per column, per row with --row-sparsity)"
                            .into(),
                    )
                })?;
                SparseOt::new(k, gamma)?
            } else {
                unused(&cli.k, "--k", &name)?;
                SparseOt::quadratic(gamma)?
            };
            cfg = cfg
                .formulation(match cli.formulation.unwrap_or(FormulationArg::SemiDual) {
                    FormulationArg::SemiDual => Formulation::SemiDual,
                    FormulationArg::Dual => Formulation::Dual,
                })
                .max_iter(cli.max_iter.unwrap_or(DEFAULT_MAX_ITER));
            if let Some(tol) = cli.tol {
                cfg = cfg.tol(tol)?;
            }
            if cli.row_sparsity {
                cfg = cfg.row_sparsity();
            }
            cfg = cfg.plan_kind(match cli.plan_kind.unwrap_or(PlanKindArg::Gradient) {
                PlanKindArg::Gradient => PlanKind::Gradient,
                PlanKindArg::Relaxed => PlanKind::Relaxed,
                PlanKindArg::Feasible => PlanKind::Feasible,
            });
            Ok(Configured::Sparse(cfg))
        }
        SolverKind::Sinkhorn => {
            unused(&cli.plan_kind, "--plan-kind", &name)?;
            unused(&cli.k, "--k", &name)?;
            unused(&cli.gamma, "--gamma", &name)?;
            unused(&cli.formulation, "--formulation", &name)?;
            let mut cfg = Sinkhorn::new(cli.epsilon.unwrap_or(DEFAULT_EPSILON))?
                .max_iter(cli.max_iter.unwrap_or(DEFAULT_SINKHORN_MAX_ITER))
                .precision(match cli.precision.unwrap_or(PrecisionArg::F64) {
                    PrecisionArg::F64 => Precision::F64,
                    PrecisionArg::F32 => Precision::F32,
                });
            if let Some(tol) = cli.tol {
                cfg = cfg.tol(tol)?;
            }
            if cli.no_epsilon_scaling {
                cfg = cfg.epsilon_scaling(None)?;
            }
            if let Some(every) = cli.check_every {
                cfg = cfg.check_every(every)?;
            }
            Ok(Configured::Sinkhorn(cfg))
        }
        SolverKind::Exact => {
            unused(&cli.plan_kind, "--plan-kind", &name)?;
            unused(&cli.k, "--k", &name)?;
            unused(&cli.gamma, "--gamma", &name)?;
            unused(&cli.epsilon, "--epsilon", &name)?;
            unused(&cli.formulation, "--formulation", &name)?;
            unused(&cli.tol, "--tol", &name)?;
            let mut cfg = ExactOt::new();
            if let Some(n) = cli.max_iter {
                cfg = cfg.max_iter(n);
            }
            Ok(Configured::Exact(cfg))
        }
    }
}

impl Configured {
    /// The same configuration reporting to `monitor`.
    fn monitor(self, monitor: Monitor) -> Self {
        match self {
            Configured::Sparse(c) => Configured::Sparse(c.monitor(monitor)),
            Configured::Sinkhorn(c) => Configured::Sinkhorn(c.monitor(monitor)),
            Configured::Exact(c) => Configured::Exact(c.monitor(monitor)),
        }
    }
}

/// Solves on `device` (the network simplex runs on the CPU whatever the device), reporting progress.
fn solve(
    cfg: Configured,
    problem: &Problem,
    device: &Device,
    progress: &Reporter,
) -> Result<Solution, Failure> {
    let watch = progress.solve("solve");
    match cfg.monitor(watch.monitor()) {
        Configured::Sparse(c) => Ok(c.solve_on(problem, device)?),
        Configured::Sinkhorn(c) => Ok(c.solve_on(problem, device)?),
        Configured::Exact(c) => Ok(c.solve(problem)?),
    }
}

/// Reads one float64 or float32 array of `ndim` dimensions.
fn read_array(
    npz: &mut NpzReader<File>,
    names: &[String],
    name: &str,
    ndim: usize,
) -> Result<ArrayD<f64>, Failure> {
    if !names.iter().any(|n| n == name) {
        return Err(Failure(format!(
            "input has no array `{name}` (it needs a, b and cost, or x and y; found: {})",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )));
    }
    let bad = |e: ReadNpzError| Failure(format!("cannot read array `{name}`: {e}"));
    let array = match npz.by_name::<OwnedRepr<f64>, IxDyn>(name) {
        Ok(x) => x,
        Err(ReadNpzError::Npy(ReadNpyError::WrongDescriptor(descr))) => {
            match npz.by_name::<OwnedRepr<f32>, IxDyn>(name) {
                Ok(x) => x.mapv(f64::from),
                Err(ReadNpzError::Npy(ReadNpyError::WrongDescriptor(_))) => {
                    return Err(Failure(format!(
                        "array `{name}` has dtype {descr}: expected float64 or float32 (little-endian)"
                    )))
                }
                Err(e) => return Err(bad(e)),
            }
        }
        Err(e) => return Err(bad(e)),
    };
    if array.ndim() != ndim {
        let expected = if ndim == 1 { "1-D" } else { "2-D" };
        return Err(Failure(format!(
            "array `{name}` must be {expected} but has shape {:?}",
            array.shape()
        )));
    }
    Ok(array)
}

/// What the input file holds: a cost matrix or two point clouds.
enum Input {
    Matrix(Problem),
    Points(PointProblem),
}

/// Reads and validates the problem: `a`, `b` and `cost`, or `x` and `y` (with `a` and `b`, or uniform masses).
fn read_input(path: &Path, cli: &Cli) -> Result<Input, Failure> {
    let file =
        File::open(path).map_err(|e| format!("cannot open input {}: {e}", path.display()))?;
    let mut npz = NpzReader::new(file)
        .map_err(|e| format!("input {} is not a .npz file: {e}", path.display()))?;
    let names = npz
        .names()
        .map_err(|e| format!("cannot list the arrays of {}: {e}", path.display()))?;
    let has = |n: &str| names.iter().any(|m| m == n);
    let points = has("x") || has("y");
    if points && has("cost") {
        return Err(Failure(
            "input has both `cost` and points (`x`, `y`): give one or the other".into(),
        ));
    }
    if !points {
        for (option, given) in [
            ("--cost", cli.cost.is_some()),
            ("--cost-divisor", cli.cost_divisor.is_some()),
        ] {
            if given {
                return Err(Failure(format!(
                    "{option} applies to point-cloud input (x, y), not to a cost matrix"
                )));
            }
        }
        let a = read_array(&mut npz, &names, "a", 1)?;
        let b = read_array(&mut npz, &names, "b", 1)?;
        let cost = read_array(&mut npz, &names, "cost", 2)?;
        let a = a.into_dimensionality::<Ix1>().expect("checked: 1-D");
        let b = b.into_dimensionality::<Ix1>().expect("checked: 1-D");
        let cost = cost.into_dimensionality::<Ix2>().expect("checked: 2-D");
        // Moved, not copied: the cost is held once, also when a device then refuses its size.
        return Ok(Input::Matrix(Problem::from_owned(a, b, cost)?));
    }
    let x = read_array(&mut npz, &names, "x", 2)?
        .into_dimensionality::<Ix2>()
        .expect("checked: 2-D");
    let y = read_array(&mut npz, &names, "y", 2)?
        .into_dimensionality::<Ix2>()
        .expect("checked: 2-D");
    let ground = match cli.cost.unwrap_or(CostArg::Sqeuclidean) {
        CostArg::Sqeuclidean => GroundCost::SqEuclidean,
        CostArg::Euclidean => GroundCost::Euclidean,
    };
    let problem = match (has("a"), has("b")) {
        (false, false) => PointProblem::uniform(&x, &y, ground)?,
        (true, true) => {
            let a = read_array(&mut npz, &names, "a", 1)?
                .into_dimensionality::<Ix1>()
                .expect("checked: 1-D");
            let b = read_array(&mut npz, &names, "b", 1)?
                .into_dimensionality::<Ix1>()
                .expect("checked: 1-D");
            PointProblem::new(&a, &b, &x, &y, ground)?
        }
        _ => {
            return Err(Failure(
                "point-cloud input needs both masses `a` and `b`, or neither (uniform masses)"
                    .into(),
            ))
        }
    };
    Ok(Input::Points(match cli.cost_divisor {
        Some(d) => problem.scaled(d)?,
        None => problem,
    }))
}

/// Whether `beta` is part of the answer (it is not the variable of the column semi-dual).
fn writes_beta(cli: &Cli) -> bool {
    match cli.solver {
        SolverKind::Sparse | SolverKind::Quadratic => {
            cli.formulation == Some(FormulationArg::Dual) || cli.row_sparsity
        }
        SolverKind::Sinkhorn | SolverKind::Exact => true,
    }
}

/// The plan as written.
enum PlanOut {
    Dense(Array2<f64>),
    /// Rows, columns and values of the nonzeros.
    Sparse(Vec<i64>, Vec<i64>, Vec<f64>),
    None,
}

impl PlanOut {
    fn kind(&self) -> &'static str {
        match self {
            PlanOut::Dense(_) => "dense",
            PlanOut::Sparse(..) => "sparse",
            PlanOut::None => "none",
        }
    }

    fn nnz(&self) -> Option<usize> {
        match self {
            PlanOut::Dense(t) => Some(t.iter().filter(|&&v| v != 0.0).count()),
            PlanOut::Sparse(_, _, v) => Some(v.len()),
            PlanOut::None => None,
        }
    }
}

/// What a solve reports, whatever its input: potentials, scalars and the plan chosen by --plan.
struct Report<'a> {
    alpha: &'a Array1<f64>,
    beta: Option<&'a Array1<f64>>,
    value: f64,
    transport_cost: f64,
    marginal_error_rows: f64,
    marginal_error_cols: f64,
    iterations: usize,
    converged: bool,
    termination: String,
    device: &'a RanOn,
    gpu_work: Option<GpuWork>,
    plan: PlanOut,
    /// Which plan a sparse or quadratic solve returned, its gap to the dual value, and how far a gradient
    /// plan under a certified status misses a marginal.
    plan_kind: Option<PlanKind>,
    plan_gap: Option<f64>,
    plan_miss: Option<f64>,
}

impl<'a> Report<'a> {
    fn of_solution(sol: &'a Solution, with_beta: bool, plan: PlanArg) -> Self {
        let plan = match plan {
            PlanArg::Auto | PlanArg::Dense => PlanOut::Dense(sol.dense_plan()),
            PlanArg::Sparse => {
                let (mut rows, mut cols, mut values) = (Vec::new(), Vec::new(), Vec::new());
                for (i, j, v) in sol.plan.triplets().filter(|t| t.2 != 0.0) {
                    rows.push(i as i64);
                    cols.push(j as i64);
                    values.push(v);
                }
                PlanOut::Sparse(rows, cols, values)
            }
            PlanArg::None => PlanOut::None,
        };
        Self {
            alpha: &sol.alpha,
            beta: with_beta.then_some(&sol.beta),
            value: sol.value,
            transport_cost: sol.transport_cost,
            marginal_error_rows: sol.marginal_error_rows,
            marginal_error_cols: sol.marginal_error_cols,
            iterations: sol.iterations,
            converged: sol.converged(),
            termination: sol.termination.to_string(),
            device: &sol.device,
            gpu_work: sol.gpu_work,
            plan,
            plan_kind: sol.plan_kind,
            plan_gap: sol.plan_gap,
            plan_miss: sol.certified_plan_miss(),
        }
    }

    fn of_points(sol: &'a PointSolution, plan: PlanOut) -> Self {
        Self {
            alpha: &sol.alpha,
            beta: Some(&sol.beta),
            value: sol.value,
            transport_cost: sol.transport_cost,
            marginal_error_rows: sol.marginal_error_rows,
            marginal_error_cols: sol.marginal_error_cols,
            iterations: sol.iterations,
            converged: sol.converged(),
            termination: sol.termination.to_string(),
            device: &sol.device,
            gpu_work: sol.gpu_work,
            plan,
            plan_kind: None,
            plan_gap: None,
            plan_miss: None,
        }
    }

    /// The JSON line: the scalars, the plan kind and nonzeros, the solve time, the device and its work.
    fn json(&self, (m, n): (usize, usize), seconds: f64) -> serde_json::Value {
        serde_json::json!({
            "value": self.value,
            "transport_cost": self.transport_cost,
            "iterations": self.iterations,
            "converged": self.converged,
            "termination": self.termination,
            "marginal_error_rows": self.marginal_error_rows,
            "marginal_error_cols": self.marginal_error_cols,
            "plan": self.plan.kind(),
            "nnz": self.plan.nnz(),
            // Sparse and quadratic solvers: which plan was written (gradient, relaxed or feasible), its
            // objective minus the dual value, and, for a gradient plan under a certified status, by how
            // much it misses a marginal (null when it does not).
            "plan_kind": self.plan_kind.map(|k| k.to_string()),
            "plan_gap": self.plan_gap,
            "plan_misses_marginal_by": self.plan_miss,
            "m": m,
            "n": n,
            "seconds": seconds,
            "device": self.device.to_string(),
            // Device work counted by the host (totals for the solve); null on the CPU.
            "gpu": self.gpu_work.map(|w| serde_json::json!({
                "adapter": self.device.adapter(),
                "dispatches": w.dispatches,
                "readbacks": w.readbacks,
                "search_readbacks": w.search_readbacks,
                "cost_bytes_read": w.cost_bytes_read,
            })),
        })
    }

    /// Writes the report to `cli.output` through `out`, then prints the solution's report `sol`, where it
    /// went, and the JSON line for an m × n problem solved in `seconds`.
    fn publish(
        &self,
        out: AtomicFile,
        cli: &Cli,
        sol: &dyn std::fmt::Display,
        shape: (usize, usize),
        seconds: f64,
    ) -> Result<(), Failure> {
        self.write(out, &cli.output)?;
        println!("{sol}");
        println!("  wrote           {}", cli.output.display());
        println!("{}", self.json(shape, seconds));
        Ok(())
    }

    /// Writes the report through `out` (a temporary file renamed over `path` once complete).
    fn write(&self, out: AtomicFile, path: &Path) -> Result<(), Failure> {
        let fail = |e: &dyn std::fmt::Display| {
            Failure(format!("cannot write output {}: {e}", path.display()))
        };
        out.commit(|w| {
            let mut npz = NpzWriter::new_compressed(w);
            match &self.plan {
                PlanOut::Dense(plan) => npz.add_array("plan", plan).map_err(|e| fail(&e))?,
                PlanOut::Sparse(rows, cols, values) => {
                    npz.add_array("plan_rows", &Array1::from(rows.clone()))
                        .map_err(|e| fail(&e))?;
                    npz.add_array("plan_cols", &Array1::from(cols.clone()))
                        .map_err(|e| fail(&e))?;
                    npz.add_array("plan_values", &Array1::from(values.clone()))
                        .map_err(|e| fail(&e))?;
                }
                PlanOut::None => {}
            }
            npz.add_array("alpha", self.alpha).map_err(|e| fail(&e))?;
            if let Some(beta) = self.beta {
                npz.add_array("beta", beta).map_err(|e| fail(&e))?;
            }
            for (name, v) in [
                ("value", self.value),
                ("transport_cost", self.transport_cost),
                ("marginal_error_rows", self.marginal_error_rows),
                ("marginal_error_cols", self.marginal_error_cols),
            ] {
                npz.add_array(name, &arr0(v)).map_err(|e| fail(&e))?;
            }
            npz.add_array("iterations", &arr0(self.iterations as i64))
                .map_err(|e| fail(&e))?;
            npz.add_array("converged", &arr0(i64::from(self.converged)))
                .map_err(|e| fail(&e))?;
            let w = npz.finish().map_err(|e| fail(&e))?;
            w.into_inner().map_err(|e| fail(&e.into_error()))
        })
    }
}

/// Point clouds up to this many pairs get a dense plan under `--plan auto`.
const AUTO_DENSE_PAIRS: u64 = 10_000_000;

/// The largest dense plan of point clouds written with `--plan dense` (bytes of f64).
const DENSE_PLAN_LIMIT: u64 = 8 << 30;

fn run(cli: &Cli) -> Result<(), Failure> {
    let device = resolve_device(cli.device)?;
    let cfg = configure(cli)?;
    if let Some(dir) = cli.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(Failure(format!(
                "output directory {} does not exist",
                dir.display()
            )));
        }
    }
    // Opened before solving: an unwritable destination fails now, not after the solve.
    let out = AtomicFile::create(&cli.output)
        .map_err(|e| Failure(format!("cannot write output {}: {e}", cli.output.display())))?;
    let problem = match read_input(&cli.input, cli)? {
        Input::Matrix(p) => p,
        Input::Points(p) => return run_points(cli, cfg, &p, out),
    };
    if cli.device == DeviceArg::Auto {
        // Resolved before the clock starts (opening a GPU is not part of the solve), said unless --quiet.
        let chosen = if cli.solver == SolverKind::Exact {
            "CPU: the exact solver runs on the CPU only".to_owned()
        } else {
            device.describe()
        };
        if cli.progress.notes() {
            eprintln!("device: {chosen}");
        }
    }
    let start = Instant::now();
    let sol = solve(cfg, &problem, &device, &cli.progress.reporter())?;
    let seconds = start.elapsed().as_secs_f64();
    let report = Report::of_solution(&sol, writes_beta(cli), cli.plan);
    report.publish(out, cli, &sol, (problem.m(), problem.n()), seconds)
}

/// Solves point clouds (Sinkhorn, the sparse and quadratic solvers, on the CPU or a GPU) and writes the
/// report.
fn run_points(
    cli: &Cli,
    cfg: Configured,
    problem: &PointProblem,
    out: AtomicFile,
) -> Result<(), Failure> {
    let cfg = match cfg {
        Configured::Sinkhorn(cfg) => cfg,
        Configured::Sparse(cfg) => return run_sparse_points(cli, cfg, problem, out),
        Configured::Exact(_) => {
            return Err(Failure(
                "point-cloud input (x, y) is not solved by --solver exact; give a cost matrix"
                    .into(),
            ))
        }
    };
    let device = resolve_device(cli.device)?;
    if cli.device == DeviceArg::Auto && cli.progress.notes() {
        eprintln!("device: {}", device.describe());
    }
    let (m, n) = (problem.m(), problem.n());
    let pairs = (m as u64).saturating_mul(n as u64);
    let dense =
        match cli.plan {
            PlanArg::Auto => pairs <= AUTO_DENSE_PAIRS,
            PlanArg::Dense => {
                dense_plan_fits((m, n), "--plan none")?;
                true
            }
            PlanArg::Sparse => return Err(Failure(
                "--plan sparse: the entropic plan has no zeros; use --plan dense or --plan none"
                    .into(),
            )),
            PlanArg::None => false,
        };
    let progress = cli.progress.reporter();
    let watch = progress.solve("solve");
    let start = Instant::now();
    let sol = cfg
        .monitor(watch.monitor())
        .solve_points_on(problem, &device)?;
    let seconds = start.elapsed().as_secs_f64();
    drop(watch);
    let plan = if dense {
        PlanOut::Dense(sol.dense_plan(problem, u64::MAX)?)
    } else {
        PlanOut::None
    };
    Report::of_points(&sol, plan).publish(out, cli, &sol, (m, n), seconds)
}

/// Solves point clouds with a sparse or quadratic solver (CPU or GPU) and writes the report; the plan has
/// at most k nonzeros per column, so `--plan auto` writes it sparse.
fn run_sparse_points(
    cli: &Cli,
    cfg: SparseOt,
    problem: &PointProblem,
    out: AtomicFile,
) -> Result<(), Failure> {
    let device = resolve_device(cli.device)?;
    if cli.device == DeviceArg::Auto && cli.progress.notes() {
        eprintln!("device: {}", device.describe());
    }
    let (m, n) = (problem.m(), problem.n());
    let plan = match cli.plan {
        PlanArg::Dense => {
            dense_plan_fits((m, n), "--plan sparse")?;
            PlanArg::Dense
        }
        PlanArg::Auto | PlanArg::Sparse => PlanArg::Sparse,
        PlanArg::None => PlanArg::None,
    };
    let progress = cli.progress.reporter();
    let watch = progress.solve("solve");
    let start = Instant::now();
    let sol = cfg
        .monitor(watch.monitor())
        .solve_points_on(problem, &device)?;
    let seconds = start.elapsed().as_secs_f64();
    drop(watch);
    Report::of_solution(&sol, writes_beta(cli), plan).publish(out, cli, &sol, (m, n), seconds)
}

/// Refuses a dense m × n plan of point clouds above [`DENSE_PLAN_LIMIT`] bytes, naming `instead`.
fn dense_plan_fits((m, n): (usize, usize), instead: &str) -> Result<(), Failure> {
    let bytes = (m as u64).saturating_mul(n as u64).saturating_mul(8);
    if bytes > DENSE_PLAN_LIMIT {
        return Err(Failure(format!(
            "--plan dense: the {m} x {n} plan would take {bytes} bytes, above {DENSE_PLAN_LIMIT}; use {instead}"
        )));
    }
    Ok(())
}

/// Flattens clap's multi-line message (error, hints, usage) into one line.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> ExitCode {
    quiet_probe::quiet_device_select_layer();
    // A bug must still end in one line on stderr, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error: {}", one_line(&info.to_string()))
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version.
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{}", one_line(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    match std::panic::catch_unwind(|| run(&cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(Failure(msg))) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::FAILURE,
    }
}
