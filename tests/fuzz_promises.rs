//! Fuzzing the promise: random small problems with extreme transformations (scaled, shifted, big-M entries,
//! tiny or zero weights), random solvers and settings. Every `Ok` solution keeps its status's promise,
//! re-measured from its dense plan; bad inputs are typed errors; nothing panics. The number of cases is
//! `SPARSE_OT_FUZZ_CASES` (default 10 000), all on the CPU; a smaller set runs on the GPU when one exists.

#[path = "common/gpu.rs"]
mod gpu_common;
#[path = "common/promise.rs"]
mod promise;

use ndarray::{Array1, Array2};
use proptest::prelude::*;
use sparse_ot::{Device, ExactOt, Formulation, Precision, Problem, Sinkhorn, SparseOt};

fn cases(default: u32) -> u32 {
    std::env::var("SPARSE_OT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A solver and its settings.
#[derive(Debug, Clone)]
enum Solver {
    Sparse {
        k: usize,
        gamma: f64,
        dual: bool,
        rows: bool,
    },
    Quadratic {
        gamma: f64,
        dual: bool,
    },
    Sinkhorn {
        eps: f64,
        f32: bool,
    },
    Exact,
}

/// An m × n problem: base cost in [0, 1), transformed; weights in (0, 1] with some tiny or zero.
#[derive(Debug, Clone)]
struct Case {
    m: usize,
    n: usize,
    cost: Vec<f64>,
    a: Vec<f64>,
    b: Vec<f64>,
    scale_exp: i32,
    shift: f64,
    big_m: Option<(usize, f64)>,
    solver: Solver,
}

fn weights(len: usize) -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(
        prop_oneof![
            6 => 0.05f64..1.0,
            1 => Just(1e-7),
            1 => Just(0.0),
        ],
        len,
    )
}

fn solver(m: usize, n: usize) -> impl Strategy<Value = Solver> {
    let gamma = (-3i32..=1).prop_map(|e| 10f64.powi(e));
    prop_oneof![
        (1..=m.max(n), gamma.clone(), any::<bool>(), any::<bool>()).prop_map(
            move |(k, gamma, dual, rows)| Solver::Sparse {
                k: k.min(if rows { n } else { m }),
                gamma,
                dual,
                rows,
            }
        ),
        (gamma, any::<bool>()).prop_map(|(gamma, dual)| Solver::Quadratic { gamma, dual }),
        ((-3i32..=1).prop_map(|e| 10f64.powi(e)), any::<bool>())
            .prop_map(|(eps, f32)| Solver::Sinkhorn { eps, f32 }),
        Just(Solver::Exact),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..=5, 1usize..=5).prop_flat_map(|(m, n)| {
        (
            prop::collection::vec(0.0f64..1.0, m * n),
            weights(m),
            weights(n),
            -6i32..=6,
            prop_oneof![4 => Just(0.0), 1 => Just(1e6), 1 => Just(-1e3)],
            prop::option::weighted(0.15, (0..m * n, prop_oneof![Just(1e15), Just(1e20)])),
            solver(m, n),
        )
            .prop_map(move |(cost, a, b, scale_exp, shift, big_m, solver)| Case {
                m,
                n,
                cost,
                a,
                b,
                scale_exp,
                shift,
                big_m,
                solver,
            })
    })
}

impl Case {
    /// The problem, or None when the weights are rejected (a zero total): that is checked elsewhere.
    fn problem(&self) -> Option<Problem> {
        let scale = 10f64.powi(self.scale_exp);
        let mut cost = Array2::from_shape_vec((self.m, self.n), self.cost.clone())
            .unwrap()
            .mapv(|c| c * scale + self.shift);
        if let Some((at, big)) = self.big_m {
            cost[[at / self.n, at % self.n]] = big;
        }
        let a = Array1::from(self.a.clone());
        let mut b = Array1::from(self.b.clone());
        let (sa, sb) = (a.sum(), b.sum());
        if sa <= 0.0 || sb <= 0.0 {
            return None;
        }
        b *= sa / sb;
        Some(Problem::new(a.view(), b.view(), cost.view()).expect("valid by construction"))
    }

    fn solve(&self, p: &Problem, device: &Device) -> sparse_ot::Result<sparse_ot::Solution> {
        let form = |dual: bool| {
            if dual {
                Formulation::Dual
            } else {
                Formulation::SemiDual
            }
        };
        match self.solver {
            Solver::Sparse {
                k,
                gamma,
                dual,
                rows,
            } => {
                let cfg = SparseOt::new(k, gamma)?.formulation(form(dual));
                let cfg = if rows { cfg.row_sparsity() } else { cfg };
                cfg.solve_on(p, device)
            }
            Solver::Quadratic { gamma, dual } => SparseOt::quadratic(gamma)?
                .formulation(form(dual))
                .solve_on(p, device),
            Solver::Sinkhorn { eps, f32 } => Sinkhorn::new(eps)?
                .max_iter(2000)
                .precision(if f32 { Precision::F32 } else { Precision::F64 })
                .solve_on(p, device),
            Solver::Exact => ExactOt::new().solve(p),
        }
    }
}

/// The count of each outcome, printed at the end (honest reporting is the point; convergence is not).
#[derive(Default, Debug)]
struct Tally {
    converged: usize,
    not_converged: usize,
    errors: usize,
}

fn run(device: &Device, n_cases: u32, label: &str) {
    let tally = std::sync::Mutex::new(Tally::default());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: n_cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&case(), |c| {
            let Some(p) = c.problem() else {
                return Ok(());
            };
            let mut t = tally.lock().unwrap();
            match c.solve(&p, device) {
                Ok(sol) => {
                    promise::assert_promise(&format!("{c:?}"), &p, &sol);
                    if sol.converged() {
                        t.converged += 1;
                    } else {
                        t.not_converged += 1;
                    }
                }
                Err(_) => t.errors += 1,
            }
            Ok(())
        })
        .unwrap();
    eprintln!(
        "{label}: {n_cases} cases, {:?}",
        tally.into_inner().unwrap()
    );
}

#[test]
fn no_broken_promise_on_the_cpu() {
    run(&Device::Cpu, cases(10_000), "cpu");
}

#[test]
fn no_broken_promise_on_the_gpu() {
    let Some(ctx) = gpu_common::gpu() else { return };
    run(&Device::Gpu(ctx), cases(10_000) / 50, "gpu");
}
