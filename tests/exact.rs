//! Network simplex (exact OT): golden value, basic-solution structure, optimality certificate (primal
//! feasibility + dual feasibility + complementary slackness), degenerate cases, limits.

#[path = "common/data.rs"]
mod data;

use data::{random_problem, Rng};
use ndarray::{Array1, Array2};
use proptest::prelude::*;
use sparse_ot::{golden_problem, Criterion, ExactOt, Lanes, Plan, Problem, Solution, Termination};

fn problem(a: Vec<f64>, b: Vec<f64>, cost: Array2<f64>) -> Problem {
    Problem::new(Array1::from(a).view(), Array1::from(b).view(), cost.view()).unwrap()
}

/// Asserts that `sol` is an optimal basic solution of `p`: feasible plan with at most m + n − 1 nonzeros,
/// potentials dual feasible, complementary slackness, value = cost. Returns the largest dual violation.
#[track_caller]
fn assert_certificate(p: &Problem, sol: &Solution, tol: f64) -> f64 {
    let (m, n) = (p.m(), p.n());
    assert_eq!(
        sol.termination,
        Termination::Converged(Criterion::Exact),
        "{sol}"
    );
    let Plan::Sparse(plan) = &sol.plan else {
        panic!("the exact solver returns a sparse plan")
    };
    assert_eq!(plan.lanes(), Lanes::Columns);
    assert!(
        plan.nnz() < m + n,
        "{} nonzeros > m + n - 1 = {}",
        plan.nnz(),
        m + n - 1
    );
    let c = p.cost();
    let (mut rows, mut cols, mut tc) = (vec![0.0; m], vec![0.0; n], 0.0);
    for (i, j, v) in plan.triplets() {
        assert!(v > 0.0 && v.is_finite(), "entry ({i}, {j}) = {v}");
        rows[i] += v;
        cols[j] += v;
        tc += v * c[[i, j]];
        let slack = c[[i, j]] - sol.alpha[i] - sol.beta[j];
        assert!(
            slack.abs() <= tol,
            "complementary slackness at ({i}, {j}): slack {slack:e}"
        );
    }
    for (i, (r, a)) in rows.iter().zip(p.a()).enumerate() {
        let d = (r - a).abs();
        assert!(d <= tol, "row {i}: marginal error {d:e}");
    }
    for (j, (c, b)) in cols.iter().zip(p.b()).enumerate() {
        let d = (c - b).abs();
        assert!(d <= tol, "column {j}: marginal error {d:e}");
    }
    let mut worst: f64 = 0.0;
    for ((i, j), &cij) in c.indexed_iter() {
        worst = worst.max(sol.alpha[i] + sol.beta[j] - cij);
    }
    assert!(worst <= tol, "dual infeasible by {worst:e}");
    assert!(
        (tc - sol.transport_cost).abs() <= tol,
        "{tc} vs {}",
        sol.transport_cost
    );
    assert!(
        (sol.value - sol.transport_cost).abs() <= tol * (1.0 + tc.abs()),
        "duality gap {:e}",
        sol.value - sol.transport_cost
    );
    worst
}

#[test]
fn golden_problem_matches_spec() {
    let p = golden_problem();
    let sol = ExactOt::new().solve(&p).unwrap();
    assert!((sol.transport_cost - 0.2591074830).abs() < 1e-9, "{sol}");
    assert!(
        sol.marginal_error_rows <= 1e-12 && sol.marginal_error_cols <= 1e-12,
        "{sol}"
    );
    assert_certificate(&p, &sol, 1e-12);
}

#[test]
fn random_problems_have_optimality_certificates() {
    for (m, n, seed) in [
        (3, 7, 1),
        (10, 10, 2),
        (40, 25, 3),
        (120, 200, 4),
        (300, 300, 5),
    ] {
        let p = random_problem(m, n, seed);
        let sol = ExactOt::new().solve(&p).unwrap();
        assert_certificate(&p, &sol, 1e-12);
    }
}

#[test]
fn identity_cost_is_free() {
    // C = 1 − I with a = b: the diagonal plan costs 0; every column is its own component.
    let n = 6;
    let w: Vec<f64> = (1..=n).map(|i| i as f64 / 21.0).collect();
    let cost = Array2::from_shape_fn((n, n), |(i, j)| if i == j { 0.0 } else { 1.0 });
    let p = problem(w.clone(), w, cost);
    let sol = ExactOt::new().solve(&p).unwrap();
    assert_eq!(sol.transport_cost, 0.0);
    assert_eq!(sol.plan.nnz(), n);
    assert_certificate(&p, &sol, 1e-12);
}

#[test]
fn all_equal_costs() {
    let p = random_problem(7, 5, 9);
    let p = Problem::new(p.a(), p.b(), Array2::from_elem((7, 5), 0.75).view()).unwrap();
    let sol = ExactOt::new().solve(&p).unwrap();
    assert!((sol.transport_cost - 0.75 * p.mass()).abs() < 1e-12);
    assert_certificate(&p, &sol, 1e-12);
}

#[test]
fn single_row_or_column() {
    let p = random_problem(1, 9, 11);
    let sol = ExactOt::new().solve(&p).unwrap();
    assert_eq!(sol.plan.nnz(), 9);
    assert_certificate(&p, &sol, 1e-12);
    let p = random_problem(9, 1, 12);
    let sol = ExactOt::new().solve(&p).unwrap();
    assert_eq!(sol.plan.nnz(), 9);
    assert_certificate(&p, &sol, 1e-12);
    let p = problem(vec![2.5], vec![2.5], Array2::from_elem((1, 1), -3.0));
    let sol = ExactOt::new().solve(&p).unwrap();
    assert_eq!(sol.transport_cost, -7.5);
    assert_certificate(&p, &sol, 1e-12);
}

#[test]
fn zero_mass_entries() {
    let a = vec![0.0, 0.3, 0.0, 0.5, 0.2];
    let b = vec![0.4, 0.0, 0.6, 0.0];
    let cost = Array2::from_shape_fn((5, 4), |(i, j)| ((i * 7 + j * 3) % 5) as f64);
    let p = problem(a, b, cost);
    let sol = ExactOt::new().solve(&p).unwrap();
    for (i, j, _) in sol.plan.triplets() {
        assert!(
            p.a()[i] > 0.0 && p.b()[j] > 0.0,
            "mass on a zero-mass node ({i}, {j})"
        );
    }
    assert_certificate(&p, &sol, 1e-12);
}

#[test]
fn integer_costs_with_many_ties() {
    // Integer masses and costs in {0, 1, 2}: massively degenerate pivots.
    let mut r = Rng::new(77);
    let (m, n) = (30, 40);
    let mut a: Vec<f64> = (0..m).map(|_| (1.0 + 4.0 * r.next_f64()).floor()).collect();
    let mut b: Vec<f64> = (0..n).map(|_| (1.0 + 3.0 * r.next_f64()).floor()).collect();
    let (sa, sb): (f64, f64) = (a.iter().sum(), b.iter().sum());
    if sa > sb {
        b[0] += sa - sb;
    } else {
        a[0] += sb - sa;
    }
    let cost = Array2::from_shape_fn((m, n), |_| (3.0 * r.next_f64()).floor());
    let p = problem(a, b, cost);
    let sol = ExactOt::new().solve(&p).unwrap();
    assert_certificate(&p, &sol, 1e-9);
}

#[test]
fn negative_and_large_costs() {
    let p = random_problem(20, 15, 21);
    let scaled = p.cost().mapv(|c| 1e6 * (c - 0.5));
    let q = Problem::new(p.a(), p.b(), scaled.view()).unwrap();
    let sol = ExactOt::new().solve(&q).unwrap();
    assert_certificate(&q, &sol, 1e-6);
    // Same plan as the unscaled problem: an affine change of cost does not change the optimum.
    let base = ExactOt::new().solve(&p).unwrap();
    assert!((sol.transport_cost - 1e6 * (base.transport_cost - 0.5 * p.mass())).abs() < 1e-6);
}

#[test]
fn pivot_limit_is_reported() {
    let p = golden_problem();
    let sol = ExactOt::new().max_iter(2).solve(&p).unwrap();
    assert_eq!(sol.termination, Termination::MaxIterations);
    assert!(!sol.converged());
    assert_eq!(sol.iterations, 2);
}

#[test]
fn small_mass_mismatch_is_balanced() {
    let p = golden_problem();
    let b = p.b().mapv(|x| x * (1.0 + 1e-8));
    let q = Problem::new(p.a(), b.view(), p.cost()).unwrap();
    let sol = ExactOt::new().solve(&q).unwrap();
    assert!(sol.converged());
    assert!((sol.transport_cost - 0.2591074830).abs() < 1e-9);
    assert!(sol.marginal_error_rows <= 1e-15, "{sol}");
    // The problem rebalanced b to Σa when it was built: the columns meet it, and it is b rescaled.
    assert!((q.b().sum() - q.a().sum()).abs() <= 1e-15, "{}", q.b());
    for (x, y) in q.b().iter().zip(&b) {
        assert!((x / y - 1.0 / (1.0 + 1e-8)).abs() <= 1e-15, "{x} vs {y}");
    }
    assert!(sol.marginal_error_cols <= 1e-15, "{sol}");
}

#[test]
fn overflowing_costs_are_rejected() {
    let p = problem(
        vec![1.0, 1.0],
        vec![1.0, 1.0],
        Array2::from_elem((2, 2), 1e307),
    );
    let err = ExactOt::new().solve(&p).unwrap_err();
    assert!(
        matches!(err, sparse_ot::Error::InvalidParameter { name: "cost", .. }),
        "{err}"
    );
}

/// Integer masses with zeros and integer costs in {0, 1, 2}: degenerate bases and ties everywhere.
fn degenerate_problem(m: usize, n: usize, seed: u64) -> Problem {
    let mut r = Rng::new(seed);
    let mut a: Vec<f64> = (0..m).map(|_| (3.0 * r.next_f64()).floor()).collect();
    let mut b: Vec<f64> = (0..n).map(|_| (3.0 * r.next_f64()).floor()).collect();
    a[0] += 1.0;
    b[n - 1] += 1.0;
    let (sa, sb): (f64, f64) = (a.iter().sum(), b.iter().sum());
    if sa > sb {
        b[0] += sa - sb;
    } else {
        a[m - 1] += sb - sa;
    }
    let cost = Array2::from_shape_fn((m, n), |_| (3.0 * r.next_f64()).floor());
    problem(a, b, cost)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn certificate_holds_on_random_shapes(m in 1usize..12, n in 1usize..12, seed in 0u64..1_000_000) {
        let p = random_problem(m, n, seed);
        let sol = ExactOt::new().solve(&p).unwrap();
        assert_certificate(&p, &sol, 1e-12);
    }

    #[test]
    fn certificate_holds_on_degenerate_problems(m in 1usize..10, n in 1usize..10, seed in 0u64..1_000_000) {
        let p = degenerate_problem(m, n, seed);
        let sol = ExactOt::new().solve(&p).unwrap();
        assert_certificate(&p, &sol, 1e-12);
    }
}
