//! Log-domain Sinkhorn: golden values (docs/MATH.md §8), invariants of the stopping rule, and the fast inner loops
//! against a plain two-pass reference written here.

#[path = "common/data.rs"]
mod data;

use data::{assert_close, point_cloud_problem};
use ndarray::Axis;
use sparse_ot::{golden_problem, Criterion, Precision, Problem, Sinkhorn, Solution, Termination};

/// Largest |row sum − a_i| and |column sum − b_j| of the returned dense plan, measured here.
fn plan_errors(sol: &Solution, p: &Problem) -> (f64, f64) {
    let t = sol.dense_plan();
    let rows = (&t.sum_axis(Axis(1)) - &p.a())
        .iter()
        .fold(0.0f64, |e, &d| e.max(d.abs()));
    let cols = (&t.sum_axis(Axis(0)) - &p.b())
        .iter()
        .fold(0.0f64, |e, &d| e.max(d.abs()));
    (rows, cols)
}

/// `iters` plain iterations (g-update, then f-update) with two-pass LSE and `f64::exp`, from zero.
fn reference_sinkhorn(p: &Problem, eps: f64, iters: usize) -> (Vec<f64>, Vec<f64>) {
    let (m, n) = (p.m(), p.n());
    let c = p.cost();
    let lse = |z: &mut dyn Iterator<Item = f64>| {
        let z: Vec<f64> = z.collect();
        let zmax = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        zmax + z.iter().map(|v| (v - zmax).exp()).sum::<f64>().ln()
    };
    let (mut f, mut g) = (vec![0.0; m], vec![0.0; n]);
    for _ in 0..iters {
        for j in 0..n {
            g[j] = eps * p.b()[j].ln() - eps * lse(&mut (0..m).map(|i| (f[i] - c[[i, j]]) / eps));
        }
        for i in 0..m {
            f[i] = eps * p.a()[i].ln() - eps * lse(&mut (0..n).map(|j| (g[j] - c[[i, j]]) / eps));
        }
    }
    (f, g)
}

#[test]
fn golden_transport_costs() {
    let p = golden_problem();
    for (eps, expected) in [(0.1, 0.2851693482), (0.01, 0.2604904747)] {
        let sol = Sinkhorn::new(eps)
            .unwrap()
            .tol(1e-13)
            .unwrap()
            .solve(&p)
            .unwrap();
        assert_eq!(
            sol.termination,
            Termination::Converged(Criterion::MarginalError { tol: 1e-13 }),
            "eps {eps}"
        );
        assert_close(
            &format!("transport cost, eps {eps}"),
            sol.transport_cost,
            expected,
            1e-9,
        );
        let (rows, cols) = plan_errors(&sol, &p);
        assert!(rows <= 1e-13, "eps {eps}: row error {rows:e}");
        assert!(cols <= 1e-14, "eps {eps}: column error {cols:e}");
        // The value is the dual objective at the returned potentials.
        let t = sol.dense_plan();
        let value = sol.alpha.dot(&p.a()) + sol.beta.dot(&p.b()) - eps * t.sum();
        assert_close("value", sol.value, value, 1e-14);
    }
}

#[test]
fn fast_iterations_match_plain_reference() {
    // Lanes shorter than one SIMD block and longer, with remainders; no ε-scaling, fixed iteration count.
    // ε = 1e-4 and 1e-5 from zero potentials push row and column sums out of the one-pass range (exp(−Δ/ε)
    // underflows), so the max-shifted fallbacks of both half-steps are exercised.
    for (p, eps) in [0.5, 0.05, 0.005, 1e-4, 1e-5]
        .into_iter()
        .map(|eps| (point_cloud_problem(45, 37, 7), eps))
        .chain([(point_cloud_problem(300, 270, 8), 0.01)])
    {
        let iters = 60;
        let sol = Sinkhorn::new(eps)
            .unwrap()
            .tol(0.0)
            .unwrap()
            .epsilon_scaling(None)
            .unwrap()
            .max_iter(iters)
            .solve(&p)
            .unwrap();
        let (f, g) = reference_sinkhorn(&p, eps, iters);
        for (i, (&x, &r)) in sol.alpha.iter().zip(&f).enumerate() {
            assert_close(&format!("eps {eps}: f[{i}]"), x, r, 1e-12);
        }
        for (j, (&x, &r)) in sol.beta.iter().zip(&g).enumerate() {
            assert_close(&format!("eps {eps}: g[{j}]"), x, r, 1e-12);
        }
    }
}

#[test]
fn columns_exact_and_status_honest() {
    let p = point_cloud_problem(60, 50, 3);
    for tol in [1e-4, 1e-8, 1e-11] {
        let sol = Sinkhorn::new(0.02)
            .unwrap()
            .tol(tol)
            .unwrap()
            .solve(&p)
            .unwrap();
        assert!(sol.converged(), "tol {tol}: {}", sol.termination);
        let (rows, cols) = plan_errors(&sol, &p);
        assert!(cols <= 1e-14, "tol {tol}: column error {cols:e}");
        assert!(
            rows <= tol * (1.0 + 1e-6),
            "tol {tol}: row error {rows:e} above tol"
        );
        assert_close("reported row error", sol.marginal_error_rows, rows, 1e-15);
    }
}

#[test]
fn small_max_iter_reports_max_iterations() {
    let p = golden_problem();
    let sol = Sinkhorn::new(0.01).unwrap().max_iter(5).solve(&p).unwrap();
    assert_eq!(sol.termination, Termination::MaxIterations);
    assert_eq!(sol.iterations, 5);
    assert!(!sol.converged());
}

#[test]
fn zero_tolerance_runs_exactly_max_iter() {
    let p = golden_problem();
    for (max_iter, every) in [(37, 10), (40, 10), (13, 1)] {
        let sol = Sinkhorn::new(0.05)
            .unwrap()
            .tol(0.0)
            .unwrap()
            .check_every(every)
            .unwrap()
            .max_iter(max_iter)
            .solve(&p)
            .unwrap();
        assert_eq!(sol.iterations, max_iter);
        assert_eq!(sol.termination, Termination::MaxIterations);
    }
}

#[test]
fn warm_start_reduces_iterations() {
    let p = point_cloud_problem(40, 30, 11);
    let cold = Sinkhorn::new(0.01).unwrap().tol(1e-10).unwrap();
    let loose = Sinkhorn::new(0.01)
        .unwrap()
        .tol(1e-6)
        .unwrap()
        .solve(&p)
        .unwrap();
    let cold_sol = cold.clone().solve(&p).unwrap();
    let warm_sol = cold
        .warm_start(loose.alpha.clone(), loose.beta.clone())
        .solve(&p)
        .unwrap();
    assert!(cold_sol.converged() && warm_sol.converged());
    assert!(
        warm_sol.iterations < cold_sol.iterations,
        "warm {} vs cold {} iterations",
        warm_sol.iterations,
        cold_sol.iterations
    );
    assert_close(
        "same plan cost",
        warm_sol.transport_cost,
        cold_sol.transport_cost,
        1e-8,
    );
}

#[test]
fn invariant_to_cost_offset_and_potential_gauge() {
    // A constant added to C, or (f + c, g − c) as a warm start, changes nothing in the plan: this exercises the
    // shifts that keep the f32 inner loops accurate and the fallback of the one-pass sums.
    let p = point_cloud_problem(30, 42, 5);
    let shifted = Problem::new(p.a(), p.b(), (&p.cost() + 500.0).view()).unwrap();
    for precision in [Precision::F64, Precision::F32] {
        let tol = if precision == Precision::F64 {
            1e-10
        } else {
            1e-5
        };
        let cfg = Sinkhorn::new(0.01)
            .unwrap()
            .tol(tol)
            .unwrap()
            .precision(precision);
        let base = cfg.clone().solve(&p).unwrap();
        let moved = cfg.clone().solve(&shifted).unwrap();
        assert!(base.converged() && moved.converged(), "{precision:?}");
        assert_close(
            &format!("{precision:?} cost offset"),
            moved.transport_cost,
            base.transport_cost + 500.0,
            10.0 * tol,
        );
        let gauge = cfg
            .warm_start(&base.alpha + 1000.0, &base.beta - 1000.0)
            .solve(&p)
            .unwrap();
        assert!(
            gauge.converged(),
            "{precision:?} gauge: {}",
            gauge.termination
        );
        assert_close(
            &format!("{precision:?} gauge"),
            gauge.transport_cost,
            base.transport_cost,
            10.0 * tol,
        );
    }
}

#[test]
fn f32_inner_loops_reach_their_documented_floor() {
    let p = golden_problem();
    for (eps, expected) in [(0.1, 0.2851693482), (0.01, 0.2604904747)] {
        let sol = Sinkhorn::new(eps)
            .unwrap()
            .tol(1e-6)
            .unwrap()
            .precision(Precision::F32)
            .solve(&p)
            .unwrap();
        assert!(sol.converged(), "eps {eps}: {}", sol.termination);
        let (rows, cols) = plan_errors(&sol, &p);
        assert!(
            rows <= 1e-6 && cols <= 1e-5,
            "eps {eps}: errors {rows:e} {cols:e}"
        );
        assert_close(
            &format!("f32 transport cost, eps {eps}"),
            sol.transport_cost,
            expected,
            1e-5,
        );
    }
}

#[test]
fn tiny_epsilon_stays_finite() {
    // exp(−C/ε) underflows for ε = 1e-4; the log domain with shifted sums must not.
    let p = golden_problem();
    for precision in [Precision::F64, Precision::F32] {
        let sol = Sinkhorn::new(1e-4)
            .unwrap()
            .tol(1e-7)
            .unwrap()
            .precision(precision)
            .solve(&p)
            .unwrap();
        assert!(
            sol.value.is_finite() && sol.transport_cost.is_finite(),
            "{precision:?}"
        );
        assert!(
            sol.alpha.iter().chain(&sol.beta).all(|v| v.is_finite()),
            "{precision:?}"
        );
        // Near the unregularised optimum 0.2591074830.
        assert_close(
            &format!("{precision:?} cost"),
            sol.transport_cost,
            0.2591074830,
            1e-3,
        );
    }
}
