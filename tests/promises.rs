//! A status is a promise: on extreme inputs every solver either converges on a criterion that holds on the
//! returned plan (measured here again, independently, from the dense plan), or honestly reports that it
//! did not, or returns a typed error. Nothing non-finite is ever returned as a solution.

#[path = "common/gpu.rs"]
mod gpu_common;
#[path = "common/promise.rs"]
mod promise;

use promise::assert_promise;

use ndarray::{Array1, Array2};
use sparse_ot::{
    Device, Error, ExactOt, Formulation, Precision, Problem, Sinkhorn, Solution, SparseOt,
};

/// The 8 × 6 uniform problem with cost (i − j)² / 25 (before the case's transformation).
fn base() -> (Array1<f64>, Array1<f64>, Array2<f64>) {
    let (m, n) = (8, 6);
    let cost = Array2::from_shape_fn((m, n), |(i, j)| (i as f64 - j as f64).powi(2) / 25.0);
    (
        Array1::from_elem(m, 1.0 / m as f64),
        Array1::from_elem(n, 1.0 / n as f64),
        cost,
    )
}

/// Every solver configuration of the promise tests, on `device`.
fn solve_all(p: &Problem, device: &Device) -> Vec<(String, Result<Solution, Error>)> {
    let mut out = Vec::new();
    for (name, cfg) in [
        ("sparse k=2 semi-dual", SparseOt::new(2, 0.1).unwrap()),
        (
            "sparse k=2 dual",
            SparseOt::new(2, 0.1)
                .unwrap()
                .formulation(Formulation::Dual),
        ),
        ("quadratic", SparseOt::quadratic(0.1).unwrap()),
    ] {
        out.push((name.to_string(), cfg.solve_on(p, device)));
    }
    for precision in [Precision::F64, Precision::F32] {
        let cfg = Sinkhorn::new(0.05).unwrap().precision(precision);
        out.push((format!("sinkhorn {precision:?}"), cfg.solve_on(p, device)));
    }
    if !device.is_gpu() {
        out.push(("exact".into(), ExactOt::new().solve(p)));
    }
    out
}

/// Runs every solver on `p` (CPU, and the GPU when there is one) and checks every promise. Returns the
/// outcomes for the case's own assertions.
fn check_case(case: &str, p: &Problem) -> Vec<(String, Result<Solution, Error>)> {
    let mut all = solve_all(p, &Device::Cpu);
    if let Some(ctx) = gpu_common::gpu() {
        let gpu = solve_all(p, &Device::Gpu(ctx));
        all.extend(gpu.into_iter().map(|(n, r)| (format!("{n} (gpu)"), r)));
    }
    for (name, r) in &all {
        if std::env::var("PROMISES_VERBOSE").is_ok() {
            match r {
                Ok(s) => eprintln!("{case} | {name}: {} ({} it)", s.termination, s.iterations),
                Err(e) => eprintln!("{case} | {name}: error {e}"),
            }
        }
        if let Ok(sol) = r {
            assert_promise(&format!("{case}, {name}"), p, sol);
        }
    }
    all
}

fn problem(a: &Array1<f64>, b: &Array1<f64>, c: &Array2<f64>) -> Problem {
    Problem::new(a.view(), b.view(), c.view()).unwrap()
}

#[test]
fn big_m_entries_are_honest() {
    for big in [1e15, 1e20] {
        let (a, b, mut c) = base();
        c[[0, 0]] = big;
        let p = problem(&a, &b, &c);
        let out = check_case(&format!("C[0,0] = {big:e}"), &p);
        // The exact solver solves it, and Sinkhorn in f64 treats the entry as a forbidden pair: its ε
        // schedule follows the bulk of the cost, not the big-M, and it converges (it reached its iteration
        // limit before).
        for name in ["exact", "sinkhorn F64"] {
            let sol = out
                .iter()
                .find(|(n, _)| n == name)
                .unwrap()
                .1
                .as_ref()
                .unwrap();
            assert!(sol.converged(), "C[0,0] = {big:e}, {name}: {sol}");
            assert!(
                sol.dense_plan()[[0, 0]] == 0.0,
                "{name}: mass on the forbidden pair"
            );
        }
    }
}

#[test]
fn shifted_and_huge_costs_are_honest() {
    let (a, b, c) = base();
    // A shifted cost has the same plans: solved shifted, every f64 CPU solver converges.
    let out = check_case("C + 1e8", &problem(&a, &b, &c.mapv(|x| x + 1e8)));
    assert_f64_cpu_converged("C + 1e8", &out);
    let mut huge = c.clone();
    huge[[2, 3]] = 1e308;
    check_case("C[2,3] = 1e308", &problem(&a, &b, &huge));
    check_case("C * 1e300", &problem(&a, &b, &c.mapv(|x| x * 1e300)));
    check_case("a, b * 1e300", &problem(&(&a * 1e300), &(&b * 1e300), &c));
}

#[test]
fn tiny_epsilon_and_tolerances_are_honest() {
    let (a, b, c) = base();
    let p = problem(&a, &b, &c);
    let mut devices = vec![Device::Cpu];
    if let Some(ctx) = gpu_common::gpu() {
        devices.push(Device::Gpu(ctx));
    }
    for device in &devices {
        for (eps, tol) in [(0.05, 1e-9), (0.05, 1e-300), (1e-8, 1e-9)] {
            let cfg = Sinkhorn::new(eps).unwrap().tol(tol).unwrap();
            let what = format!(
                "sinkhorn eps {eps:e} tol {tol:e} on gpu {}",
                device.is_gpu()
            );
            match cfg.solve_on(&p, device) {
                Ok(sol) => assert_promise(&what, &p, &sol),
                Err(e) => assert!(matches!(e, Error::NonFiniteResult { .. }), "{what}: {e}"),
            }
        }
    }
}

#[test]
fn float32_inputs_are_honest() {
    let (a, b, c) = base();
    let p = Problem::from_f32(
        a.mapv(|x| x as f32).view(),
        b.mapv(|x| x as f32).view(),
        c.mapv(|x| x as f32).view(),
    )
    .unwrap();
    // Totals that differ by f32 rounding are rebalanced when the problem is built: every f64 CPU solver
    // converges at the default tolerance, far below the mismatch.
    let out = check_case("float32 8 x 6", &p);
    assert_f64_cpu_converged("float32 8 x 6", &out);
}

/// Every CPU solver in f64 (the f32 Sinkhorn's floor is above the default tolerance) converged.
#[track_caller]
fn assert_f64_cpu_converged(case: &str, out: &[(String, Result<Solution, Error>)]) {
    for (name, r) in out {
        if name.contains("gpu") || name.contains("F32") {
            continue;
        }
        let sol = r.as_ref().unwrap_or_else(|e| panic!("{case}, {name}: {e}"));
        assert!(sol.converged(), "{case}, {name}: {sol}");
    }
}
