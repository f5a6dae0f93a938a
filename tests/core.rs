//! Tests of the core library against docs/MATH.md: operator unit vectors (§3.3), golden
//! values (§8), limits and bounds (§2.3), gradients by finite differences, every kind of bad input, and
//! property tests that recompute each solution's reported numbers independently from the returned
//! potentials (naive f64 formulas of §2, written here without the library's kernels).

#[path = "common/data.rs"]
mod data;

use data::{assert_all_close, assert_close, random_problem_from, Masses, Rng};
use ndarray::{array, Array1, Array2};
use proptest::prelude::*;
use sparse_ot::ops::{sparse_simplex_projection, top_k_conjugate, top_k_indices, top_k_mask};
use sparse_ot::{
    golden_problem, Criterion, Error, Formulation, Plan, Position, Problem, Sinkhorn, Solution,
    SparseOt, Termination, DEFAULT_MASS_TOLERANCE,
};

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

/// The marginals of this file's random problems: U[0.2, 1) per entry, b rescaled to a's total.
const MASSES: Masses = Masses::Range(0.2, 1.0);

const GAMMAS: [f64; 2] = [0.1, 0.01];
const FORMULATIONS: [Formulation; 2] = [Formulation::SemiDual, Formulation::Dual];

/// Unregularised OT of the golden problem (docs/MATH.md §8).
const GOLDEN_OT: f64 = 0.2591074830;

/// docs/MATH.md §8 optimal values S_k* = D_k* of the golden problem: (γ, k, value, decimals given in the table).
const GOLDEN_SPARSE: [(f64, usize, f64, i32); 6] = [
    (0.1, 1, 0.2694249433, 10),
    (0.1, 2, 0.26469768, 8),
    (0.1, 3, 0.26401290, 8),
    (0.01, 1, 0.2601392290, 10),
    (0.01, 2, 0.25966650, 8),
    (0.01, 3, 0.25960037, 8),
];

/// docs/MATH.md §8 quadratic values (k ≥ 5), given to 8 decimals.
fn golden_quadratic(gamma: f64) -> f64 {
    if gamma == 0.1 {
        0.26363790
    } else {
        0.25957848
    }
}

/// Half a unit in the last decimal of a table entry: the most its rounding can hide.
fn table_rounding(decimals: i32) -> f64 {
    0.5 * 10f64.powi(-decimals)
}

/// OT + (γ/2)‖b‖²: S_1* and the upper end of the sanity bracket (docs/MATH.md §2.3).
fn k1_value(problem: &Problem, gamma: f64) -> f64 {
    GOLDEN_OT + 0.5 * gamma * problem.b().dot(&problem.b())
}

/// A solver that declares convergence on the marginal error must have met it on the returned plan.
#[track_caller]
fn check_termination_honest(sol: &Solution) {
    if let Termination::Converged(sparse_ot::Criterion::MarginalError { tol }) = sol.termination {
        let err = sol.marginal_error_rows.max(sol.marginal_error_cols);
        assert!(
            err <= tol * (1.0 + 1e-9) + 1e-15,
            "declared converged at tol {tol:e} but marginal error is {err:e}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// docs/MATH.md §3.3: operator unit vectors
// ---------------------------------------------------------------------------------------------------------

const UNIT_GAMMA: f64 = 0.5;
const UNIT_S: [f64; 5] = [0.3, -0.2, 0.9, 0.1, 0.5];

fn unit_column() -> Array2<f64> {
    Array2::from_shape_vec((5, 1), UNIT_S.to_vec()).unwrap()
}

#[test]
fn unit_vectors_top_k_conjugate() {
    let table: [(usize, f64, [f64; 5]); 4] = [
        (1, 0.81, [0.0, 0.0, 1.8, 0.0, 0.0]),
        (2, 1.06, [0.0, 0.0, 1.8, 0.0, 1.0]),
        (3, 1.15, [0.6, 0.0, 1.8, 0.0, 1.0]),
        (5, 1.16, [0.6, 0.0, 1.8, 0.2, 1.0]),
    ];
    for (k, delta, grad) in table {
        let (values, g) = top_k_conjugate(unit_column().view(), k, UNIT_GAMMA).unwrap();
        assert_eq!(values.len(), 1);
        assert_close(&format!("delta_{k}"), values[0], delta, 1e-12);
        assert_all_close(
            &format!("grad delta_{k}"),
            g.column(0).to_vec().as_slice(),
            &grad,
            1e-12,
        );
    }
}

#[test]
fn unit_vectors_sparse_projection_and_value() {
    let third = [1.0 / 15.0, 0.0, 2.0 / 3.0, 0.0, 4.0 / 15.0];
    let e3 = [0.0, 0.0, 1.0, 0.0, 0.0];
    // (k, val and y* for b = 0.4, val and y* for b = 2.0); 0.4933333 = 37/75 exactly.
    type Row = (usize, f64, [f64; 5], f64, [f64; 5]);
    let table: [Row; 4] = [
        (1, 0.8, e3, 0.4, e3),
        (2, 0.8, e3, 0.49, [0.0, 0.0, 0.7, 0.0, 0.3]),
        (3, 0.8, e3, 37.0 / 75.0, third),
        (5, 0.8, e3, 37.0 / 75.0, third),
    ];
    for (k, val_small, y_small, val_large, y_large) in table {
        for (b, val, y) in [(0.4, val_small, y_small), (2.0, val_large, y_large)] {
            let v = unit_column() / (UNIT_GAMMA * b);
            let proj = sparse_simplex_projection(v.view(), k).unwrap();
            let ystar = proj.column(0).to_vec();
            assert_all_close(&format!("y* (k = {k}, b = {b})"), &ystar, &y, 1e-12);
            let lin: f64 = ystar.iter().zip(UNIT_S).map(|(y, s)| y * s).sum();
            let sq: f64 = ystar.iter().map(|y| y * y).sum();
            let value = lin - 0.5 * UNIT_GAMMA * b * sq;
            assert_close(&format!("val (k = {k}, b = {b})"), value, val, 1e-12);
        }
    }
}

#[test]
fn top_k_follows_the_tie_rule() {
    let s = array![[1.0, 0.0], [3.0, 0.0], [3.0, -1.0], [2.0, 0.0]];
    let idx = top_k_indices(s.view(), 2).unwrap();
    assert_eq!(idx, array![[1, 0], [2, 1]]);
    let mask = top_k_mask(s.view(), 3).unwrap();
    assert_eq!(mask.column(0).to_vec(), vec![false, true, true, true]);
    assert_eq!(mask.column(1).to_vec(), vec![true, true, false, true]);
}

// ---------------------------------------------------------------------------------------------------------
// docs/MATH.md §8: golden values
// ---------------------------------------------------------------------------------------------------------

#[test]
fn golden_quadratic_values() {
    let p = golden_problem();
    for gamma in GAMMAS {
        let golden = golden_quadratic(gamma);
        let mut values = Vec::new();
        for f in FORMULATIONS {
            let quadratic = SparseOt::quadratic(gamma)
                .unwrap()
                .formulation(f)
                .solve(&p)
                .unwrap();
            for k in [5, 6, 8] {
                let sol = SparseOt::new(k, gamma)
                    .unwrap()
                    .formulation(f)
                    .solve(&p)
                    .unwrap();
                let what = format!("gamma = {gamma}, k = {k}, {f}");
                check_termination_honest(&sol);
                // The table has 8 decimals: its rounding is up to 5e-9.
                assert_close(&what, sol.value, golden, table_rounding(8) + 1e-12);
                assert!(
                    sol.marginal_error_rows.max(sol.marginal_error_cols) <= 1e-8,
                    "{what}: {sol}"
                );
                assert_close(
                    &format!("{what} vs quadratic"),
                    sol.value,
                    quadratic.value,
                    1e-12,
                );
                values.push(sol.value);
            }
            assert_close(
                &format!("quadratic {f}"),
                quadratic.value,
                golden,
                table_rounding(8) + 1e-12,
            );
        }
        // Semi-dual and dual optima agree far below the table's rounding.
        let spread = values
            .iter()
            .fold(0.0f64, |s, v| s.max((v - values[0]).abs()));
        assert!(
            spread <= 1e-9,
            "gamma = {gamma}: semi-dual and dual values spread by {spread:e}"
        );
    }
}

/// The state without the nonsmooth finish: every returned value is the objective at some point, so it can
/// never exceed the optimum (a bound that could fail if the value were misreported).
#[test]
fn golden_sparse_values_never_exceed_the_optimum() {
    let p = golden_problem();
    for (gamma, k, golden, decimals) in GOLDEN_SPARSE {
        for f in FORMULATIONS {
            let sol = SparseOt::new(k, gamma)
                .unwrap()
                .formulation(f)
                .solve(&p)
                .unwrap();
            let what = format!("gamma = {gamma}, k = {k}, {f}");
            check_termination_honest(&sol);
            assert!(
                sol.value <= golden + table_rounding(decimals) + 1e-12,
                "{what}: value {} > optimum {golden}",
                sol.value
            );
            assert!(
                sol.value <= k1_value(&p, gamma) + 1e-12,
                "{what}: above OT + gamma/2 |b|^2"
            );
            assert!(sol.value.is_finite());
        }
    }
}

#[test]
fn golden_sparse_values_to_1e9() {
    let p = golden_problem();
    for (gamma, k, golden, decimals) in GOLDEN_SPARSE {
        let mut values = Vec::new();
        for f in FORMULATIONS {
            let sol = SparseOt::new(k, gamma)
                .unwrap()
                .formulation(f)
                .solve(&p)
                .unwrap();
            let what = format!("gamma = {gamma}, k = {k}, {f}");
            values.push(sol.value);
            assert!(sol.converged(), "{what}: {sol}");
            assert_close(&what, sol.value, golden, table_rounding(decimals).max(1e-9));
            assert!(sol.plan.shape() == (8, 6));
            if let Plan::Sparse(plan) = &sol.plan {
                assert!(
                    plan.max_lane_nnz() <= k,
                    "{what}: more than {k} nonzeros in a column"
                );
            }
        }
        // S_k* = D_k* (docs/MATH.md §2): finer than the table's 8 decimals.
        assert_close(
            &format!("gamma = {gamma}, k = {k}: semi-dual vs dual"),
            values[0],
            values[1],
            1e-9,
        );
    }
}

#[test]
fn golden_sparse_values_inside_the_sanity_bracket() {
    let p = golden_problem();
    for (gamma, k, _, _) in GOLDEN_SPARSE {
        for f in FORMULATIONS {
            let sol = SparseOt::new(k, gamma)
                .unwrap()
                .formulation(f)
                .solve(&p)
                .unwrap();
            let what = format!("gamma = {gamma}, k = {k}, {f}");
            let quadratic = golden_quadratic(gamma) - table_rounding(8);
            assert!(
                sol.value >= quadratic - 1e-9,
                "{what}: value {} below the quadratic value",
                sol.value
            );
            assert!(
                sol.value <= k1_value(&p, gamma) + 1e-9,
                "{what}: value {} above OT + gamma/2 |b|^2",
                sol.value
            );
        }
    }
}

#[test]
fn golden_sinkhorn_transport_costs() {
    let p = golden_problem();
    for (eps, cost) in [(0.1, 0.2851693482), (0.01, 0.2604904747)] {
        let sol = Sinkhorn::new(eps)
            .unwrap()
            .tol(1e-12)
            .unwrap()
            .solve(&p)
            .unwrap();
        assert!(sol.converged(), "epsilon = {eps}: {sol}");
        check_termination_honest(&sol);
        assert_close(
            &format!("transport cost, epsilon = {eps}"),
            sol.transport_cost,
            cost,
            1e-9,
        );
        assert!(
            sol.marginal_error_cols <= 1e-12,
            "columns are exact after a g-update: {sol}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// docs/MATH.md §2.3: limits and bounds
// ---------------------------------------------------------------------------------------------------------

#[test]
fn k1_equals_ot_plus_quadratic_term_of_b() {
    let p = golden_problem();
    for gamma in [0.5, 0.1, 0.01] {
        for f in FORMULATIONS {
            let sol = SparseOt::new(1, gamma)
                .unwrap()
                .formulation(f)
                .solve(&p)
                .unwrap();
            assert_close(
                &format!("S_1*, gamma = {gamma}, {f}"),
                sol.value,
                k1_value(&p, gamma),
                1e-9,
            );
        }
    }
}

/// For k ≥ k_L2 (the largest column support of the quadratic plan) value and plan are the quadratic ones.
#[test]
fn k_at_least_quadratic_support_gives_the_quadratic_solution() {
    let mut rng = Rng::new(7);
    let problems = [
        golden_problem(),
        random_problem_from(&mut rng, 40, 30, MASSES),
    ];
    for (pi, p) in problems.iter().enumerate() {
        for gamma in [0.1, 0.01] {
            for f in FORMULATIONS {
                let quad = SparseOt::quadratic(gamma)
                    .unwrap()
                    .formulation(f)
                    .solve(p)
                    .unwrap();
                assert!(
                    quad.converged(),
                    "problem {pi}, gamma = {gamma}, {f}: {quad}"
                );
                let Plan::Sparse(qplan) = &quad.plan else {
                    panic!("quadratic plans are sparse")
                };
                let k_l2 = qplan.max_lane_nnz();
                assert!(k_l2 >= 1 && k_l2 <= p.m());
                for k in [k_l2, (k_l2 + 1).min(p.m())] {
                    let sol = SparseOt::new(k, gamma)
                        .unwrap()
                        .formulation(f)
                        .solve(p)
                        .unwrap();
                    let what =
                        format!("problem {pi}, gamma = {gamma}, {f}, k = {k} (k_L2 = {k_l2})");
                    assert!(sol.converged(), "{what}: {sol}");
                    assert_close(&what, sol.value, quad.value, 1e-9);
                    let (t, q) = (sol.dense_plan(), quad.dense_plan());
                    assert_all_close(
                        &format!("{what}: plan"),
                        t.as_slice().unwrap(),
                        q.as_slice().unwrap(),
                        1e-6,
                    );
                }
            }
        }
    }
}

#[test]
fn values_are_nonincreasing_in_k() {
    let p = golden_problem();
    for gamma in GAMMAS {
        for f in FORMULATIONS {
            let values: Vec<f64> = (1..=p.m())
                .map(|k| {
                    SparseOt::new(k, gamma)
                        .unwrap()
                        .formulation(f)
                        .solve(&p)
                        .unwrap()
                        .value
                })
                .collect();
            for k in 1..values.len() {
                assert!(
                    values[k] <= values[k - 1] + 1e-9,
                    "gamma = {gamma}, {f}: value at k = {} ({}) exceeds value at k = {} ({})",
                    k + 1,
                    values[k],
                    k,
                    values[k - 1]
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Gradients: the gradient is the marginal violation (docs/MATH.md §2.1, §2.2)
// ---------------------------------------------------------------------------------------------------------

/// Objective at (α, β) with no iteration: max_iter(0) evaluates the warm start and returns it.
fn value_at(
    p: &Problem,
    k: usize,
    gamma: f64,
    f: Formulation,
    alpha: &Array1<f64>,
    beta: &Array1<f64>,
) -> Solution {
    let sol = SparseOt::new(k, gamma)
        .unwrap()
        .formulation(f)
        .max_iter(0)
        .warm_start(alpha.clone(), Some(beta.clone()))
        .solve(p)
        .unwrap();
    assert_eq!(sol.iterations, 0);
    assert_eq!(sol.alpha, *alpha, "max_iter(0) must return the warm start");
    if f == Formulation::Dual {
        assert_eq!(sol.beta, *beta, "max_iter(0) must return the warm start");
    }
    sol
}

/// Smallest gap, over columns, between the k-th and (k+1)-th largest of α + β_j − c_j (∞ if k ≥ m):
/// finite differences must not step across a swap of the top-k.
fn top_k_margin(p: &Problem, k: usize, alpha: &Array1<f64>) -> f64 {
    let mut margin = f64::INFINITY;
    for j in 0..p.n() {
        let mut s: Vec<f64> = (0..p.m()).map(|i| alpha[i] - p.cost()[[i, j]]).collect();
        s.sort_by(|x, y| y.partial_cmp(x).unwrap());
        if k < s.len() {
            margin = margin.min(s[k - 1] - s[k]);
        }
    }
    margin
}

#[test]
fn gradients_match_finite_differences() {
    let mut rng = Rng::new(11);
    let h = 1e-6;
    let mut checked = 0;
    for trial in 0..40 {
        let (m, n) = (2 + trial % 5, 1 + trial % 4);
        let p = random_problem_from(&mut rng, m, n, MASSES);
        let gamma = rng.uniform(0.05, 1.0);
        let k = 1 + trial % m;
        let alpha = Array1::from_shape_fn(m, |_| rng.uniform(-0.5, 1.5));
        let beta = Array1::from_shape_fn(n, |_| rng.uniform(-1.0, 0.5));
        if top_k_margin(&p, k, &alpha) < 1e3 * h {
            continue;
        }
        for f in FORMULATIONS {
            let at = value_at(&p, k, gamma, f, &alpha, &beta);
            let t = at.dense_plan();
            let grad_alpha = &p.a() - &t.sum_axis(ndarray::Axis(1));
            let grad_beta = &p.b() - &t.sum_axis(ndarray::Axis(0));
            let what = format!("trial {trial}, {m} x {n}, k = {k}, gamma = {gamma:.3}, {f}");
            for i in 0..m {
                let (mut up, mut down) = (alpha.clone(), alpha.clone());
                up[i] += h;
                down[i] -= h;
                let fd = (value_at(&p, k, gamma, f, &up, &beta).value
                    - value_at(&p, k, gamma, f, &down, &beta).value)
                    / (2.0 * h);
                assert_close(&format!("{what}: d/d alpha_{i}"), fd, grad_alpha[i], 1e-6);
            }
            if f == Formulation::Dual {
                for j in 0..n {
                    let (mut up, mut down) = (beta.clone(), beta.clone());
                    up[j] += h;
                    down[j] -= h;
                    let fd = (value_at(&p, k, gamma, f, &alpha, &up).value
                        - value_at(&p, k, gamma, f, &alpha, &down).value)
                        / (2.0 * h);
                    assert_close(&format!("{what}: d/d beta_{j}"), fd, grad_beta[j], 1e-6);
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} points were away from ties");
}

// ---------------------------------------------------------------------------------------------------------
// Bad input: every case returns its typed error, nothing panics
// ---------------------------------------------------------------------------------------------------------

fn problem(a: &[f64], b: &[f64], cost: Array2<f64>) -> sparse_ot::Result<Problem> {
    Problem::new(
        Array1::from(a.to_vec()).view(),
        Array1::from(b.to_vec()).view(),
        cost.view(),
    )
}

fn ones(m: usize, n: usize) -> Array2<f64> {
    Array2::from_elem((m, n), 1.0)
}

#[test]
fn empty_inputs_are_rejected() {
    assert!(matches!(
        problem(&[], &[1.0], ones(0, 1)),
        Err(Error::Empty { what: "a" })
    ));
    assert!(matches!(
        problem(&[1.0], &[], ones(1, 0)),
        Err(Error::Empty { what: "b" })
    ));
    assert!(matches!(
        problem(&[], &[], ones(0, 0)),
        Err(Error::Empty { .. })
    ));
    assert!(matches!(
        problem(&[1.0], &[1.0], ones(0, 1)),
        Err(Error::ShapeMismatch {
            expected: 1,
            found: 0,
            ..
        })
    ));
    assert!(matches!(
        top_k_indices(Array2::<f64>::zeros((0, 3)).view(), 1),
        Err(Error::Empty { .. })
    ));
}

#[test]
fn shape_mismatches_are_rejected() {
    assert!(matches!(
        problem(&[0.5, 0.5], &[1.0], ones(3, 1)),
        Err(Error::ShapeMismatch {
            expected: 2,
            found: 3,
            ..
        })
    ));
    assert!(matches!(
        problem(&[0.5, 0.5], &[1.0], ones(2, 2)),
        Err(Error::ShapeMismatch {
            expected: 1,
            found: 2,
            ..
        })
    ));
}

#[test]
fn non_finite_inputs_are_rejected() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let r = problem(&[0.5, bad], &[1.0], ones(2, 1));
        assert!(
            matches!(r, Err(Error::NonFinite { what: "a", position: Position::Vector(1), value }) if value.to_bits() == bad.to_bits()),
            "{r:?}"
        );
        let r = problem(&[1.0], &[bad, 0.5], ones(1, 2));
        assert!(
            matches!(
                r,
                Err(Error::NonFinite {
                    what: "b",
                    position: Position::Vector(0),
                    ..
                })
            ),
            "{r:?}"
        );
        let mut cost = ones(3, 4);
        cost[[2, 3]] = bad;
        let r = problem(&[0.5, 0.25, 0.25], &[0.25; 4], cost.clone());
        assert!(
            matches!(
                r,
                Err(Error::NonFinite {
                    what: "cost",
                    position: Position::Matrix(2, 3),
                    ..
                })
            ),
            "{r:?}"
        );
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("cost[2, 3]") && !msg.contains('\n'), "{msg}");
        assert!(matches!(
            top_k_conjugate(cost.view(), 1, 1.0),
            Err(Error::NonFinite { .. })
        ));
        assert!(matches!(
            sparse_simplex_projection(cost.view(), 1),
            Err(Error::NonFinite { .. })
        ));
    }
}

#[test]
fn negative_marginals_are_rejected() {
    let r = problem(&[1.5, -0.5], &[1.0], ones(2, 1));
    assert!(
        matches!(
            r,
            Err(Error::NegativeMass {
                what: "a",
                position: Position::Vector(1),
                ..
            })
        ),
        "{r:?}"
    );
    let r = problem(&[1.0], &[-0.5, 1.5], ones(1, 2));
    assert!(
        matches!(
            r,
            Err(Error::NegativeMass {
                what: "b",
                position: Position::Vector(0),
                ..
            })
        ),
        "{r:?}"
    );
}

/// Zero entries in a marginal carry no mass: the solvers that divide by a marginal (the semi-dual by the
/// marginal of its lanes) or take its logarithm (Sinkhorn) solve the problem without those lines and return
/// a plan whose zero-mass lines are empty, with finite potentials there; the dual solves it as it is.
#[test]
fn zero_mass_entries_carry_no_mass() {
    let p = problem(&[0.5, 0.5], &[1.0, 0.0], array![[0.0, 1.0], [1.0, 0.0]]).unwrap();
    let q = problem(&[1.0, 0.0], &[0.5, 0.5], array![[0.0, 1.0], [1.0, 0.0]]).unwrap();
    let cases: Vec<(&str, &Problem, Result<Solution, Error>)> = vec![
        // k = 2 of 2 rows: the one column with mass (1) must split over both rows (0.5 each).
        (
            "semi-dual k = 2",
            &p,
            SparseOt::new(2, 0.1).unwrap().solve(&p),
        ),
        ("quadratic", &p, SparseOt::quadratic(0.1).unwrap().solve(&p)),
        (
            "dual",
            &p,
            SparseOt::new(2, 0.1)
                .unwrap()
                .formulation(Formulation::Dual)
                .solve(&p),
        ),
        (
            "row sparsity, zero in b",
            &p,
            SparseOt::new(2, 0.1).unwrap().row_sparsity().solve(&p),
        ),
        (
            "row sparsity, zero in a",
            &q,
            SparseOt::new(2, 0.1).unwrap().row_sparsity().solve(&q),
        ),
        (
            "sinkhorn, zero in b",
            &p,
            Sinkhorn::new(0.1).unwrap().solve(&p),
        ),
        (
            "sinkhorn, zero in a",
            &q,
            Sinkhorn::new(0.1).unwrap().solve(&q),
        ),
    ];
    for (what, pr, r) in cases {
        let sol = r.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(sol.converged(), "{what}: {sol}");
        let plan = sol.dense_plan();
        let zero_row = pr.a().iter().position(|&x| x == 0.0);
        let zero_col = pr.b().iter().position(|&x| x == 0.0);
        if let Some(i) = zero_row {
            assert!(
                plan.row(i).iter().all(|&t| t == 0.0),
                "{what}: row {i} {plan}"
            );
        }
        if let Some(j) = zero_col {
            assert!(
                plan.column(j).iter().all(|&t| t == 0.0),
                "{what}: column {j} {plan}"
            );
        }
        assert!(
            sol.marginal_error_rows <= 1e-9 && sol.marginal_error_cols <= 1e-9,
            "{what}: {sol}"
        );
        assert!(
            sol.alpha
                .iter()
                .chain(sol.beta.iter())
                .all(|x| x.is_finite()),
            "{what}"
        );
        assert!(sol.value.is_finite(), "{what}");
    }
}

#[test]
fn total_masses_must_agree() {
    let cost = ones(2, 2);
    let eps = DEFAULT_MASS_TOLERANCE;
    // Within the tolerance: accepted.
    assert!(problem(&[0.5, 0.5], &[0.5, 0.5 * (1.0 + eps)], cost.clone()).is_ok());
    // Beyond it: rejected with both sums.
    let r = problem(&[0.5, 0.5], &[0.5, 0.5 + 3.0 * eps], cost.clone());
    assert!(
        matches!(r, Err(Error::MassMismatch { sum_a, .. }) if sum_a == 1.0),
        "{r:?}"
    );
    assert!(matches!(
        problem(&[0.0, 0.0], &[0.0, 0.0], cost.clone()),
        Err(Error::ZeroTotalMass)
    ));
    // A caller-chosen tolerance.
    let a = array![0.5, 0.5];
    let b = array![0.5, 0.6];
    assert!(Problem::with_mass_tolerance(a.view(), b.view(), cost.view(), 0.1).is_ok());
    assert!(matches!(
        Problem::with_mass_tolerance(a.view(), b.view(), cost.view(), -1.0),
        Err(Error::InvalidParameter {
            name: "mass_tolerance",
            ..
        })
    ));
    // f32 input is widened and validated the same way.
    let (a32, b32) = (ndarray::array![0.5f32, f32::NAN], ndarray::array![1.0f32]);
    let r = Problem::from_f32(a32.view(), b32.view(), Array2::<f32>::ones((2, 1)).view());
    assert!(
        matches!(r, Err(Error::NonFinite { what: "a", .. })),
        "{r:?}"
    );
}

#[test]
fn k_out_of_range_is_rejected() {
    assert!(matches!(
        SparseOt::new(0, 0.1),
        Err(Error::InvalidK { k: 0, .. })
    ));
    let p = golden_problem(); // 8 × 6
    let r = SparseOt::new(9, 0.1).unwrap().solve(&p);
    assert!(
        matches!(
            r,
            Err(Error::InvalidK {
                k: 9,
                max: 8,
                axis: "rows"
            })
        ),
        "{r:?}"
    );
    assert!(SparseOt::new(8, 0.1).unwrap().solve(&p).is_ok());
    // With row sparsity, k counts columns.
    let r = SparseOt::new(7, 0.1).unwrap().row_sparsity().solve(&p);
    assert!(
        matches!(
            r,
            Err(Error::InvalidK {
                k: 7,
                max: 6,
                axis: "columns"
            })
        ),
        "{r:?}"
    );
    assert!(SparseOt::new(6, 0.1)
        .unwrap()
        .row_sparsity()
        .solve(&p)
        .is_ok());
    // The operators too.
    let s = ones(3, 2);
    assert!(matches!(
        top_k_indices(s.view(), 0),
        Err(Error::InvalidK { .. })
    ));
    assert!(matches!(
        top_k_indices(s.view(), 4),
        Err(Error::InvalidK { k: 4, max: 3, .. })
    ));
    assert!(matches!(
        sparse_simplex_projection(s.view(), 4),
        Err(Error::InvalidK { .. })
    ));
}

#[test]
fn invalid_parameters_are_rejected() {
    for gamma in [0.0, -0.1, f64::NAN, f64::INFINITY] {
        assert!(
            matches!(
                SparseOt::new(1, gamma),
                Err(Error::InvalidParameter { name: "gamma", .. })
            ),
            "{gamma}"
        );
        assert!(matches!(
            SparseOt::quadratic(gamma),
            Err(Error::InvalidParameter { name: "gamma", .. })
        ));
        assert!(matches!(
            top_k_conjugate(ones(2, 2).view(), 1, gamma),
            Err(Error::InvalidParameter { name: "gamma", .. })
        ));
    }
    for eps in [0.0, -1.0, f64::NAN, f64::NEG_INFINITY] {
        assert!(
            matches!(
                Sinkhorn::new(eps),
                Err(Error::InvalidParameter {
                    name: "epsilon",
                    ..
                })
            ),
            "{eps}"
        );
    }
    for tol in [-1e-9, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            SparseOt::new(1, 0.1).unwrap().tol(tol),
            Err(Error::InvalidParameter { name: "tol", .. })
        ));
        assert!(matches!(
            Sinkhorn::new(0.1).unwrap().tol(tol),
            Err(Error::InvalidParameter { name: "tol", .. })
        ));
    }
    assert!(SparseOt::new(1, 0.1).unwrap().tol(0.0).is_ok());
    assert!(matches!(
        SparseOt::new(1, 0.1).unwrap().memory(0),
        Err(Error::InvalidParameter { name: "memory", .. })
    ));
    assert!(matches!(
        Sinkhorn::new(0.1).unwrap().check_every(0),
        Err(Error::InvalidParameter { .. })
    ));
    for q in [0.0, 1.0, 1.5, f64::NAN] {
        assert!(matches!(
            Sinkhorn::new(0.1).unwrap().epsilon_scaling(Some(q)),
            Err(Error::InvalidParameter { .. })
        ));
    }
}

#[test]
fn warm_starts_must_fit() {
    let p = golden_problem(); // 8 × 6
    let r = SparseOt::new(2, 0.1)
        .unwrap()
        .warm_start(Array1::zeros(7), None)
        .solve(&p);
    assert!(
        matches!(
            r,
            Err(Error::WarmStartMismatch {
                what: "alpha",
                expected: 8,
                found: 7
            })
        ),
        "{r:?}"
    );
    let r = SparseOt::new(2, 0.1)
        .unwrap()
        .formulation(Formulation::Dual)
        .warm_start(Array1::zeros(8), Some(Array1::zeros(5)))
        .solve(&p);
    assert!(
        matches!(
            r,
            Err(Error::WarmStartMismatch {
                what: "beta",
                expected: 6,
                found: 5
            })
        ),
        "{r:?}"
    );
    // With row sparsity the solve runs on the transposed problem; errors still name the caller's inputs.
    for f in FORMULATIONS {
        let r = SparseOt::new(2, 0.1)
            .unwrap()
            .formulation(f)
            .row_sparsity()
            .warm_start(Array1::zeros(8), Some(Array1::zeros(5)))
            .solve(&p);
        assert!(
            matches!(
                r,
                Err(Error::WarmStartMismatch {
                    what: "beta",
                    expected: 6,
                    found: 5
                })
            ),
            "{f}: {r:?}"
        );
        let r = SparseOt::new(2, 0.1)
            .unwrap()
            .formulation(f)
            .row_sparsity()
            .warm_start(Array1::zeros(9), Some(Array1::zeros(6)))
            .solve(&p);
        if f == Formulation::Dual {
            assert!(
                matches!(
                    r,
                    Err(Error::WarmStartMismatch {
                        what: "alpha",
                        expected: 8,
                        found: 9
                    })
                ),
                "{f}: {r:?}"
            );
        }
    }
    let mut alpha = Array1::zeros(8);
    alpha[3] = f64::NAN;
    let r = SparseOt::new(2, 0.1)
        .unwrap()
        .warm_start(alpha, None)
        .solve(&p);
    assert!(
        matches!(
            r,
            Err(Error::NonFinite {
                what: "alpha",
                position: Position::Vector(3),
                ..
            })
        ),
        "{r:?}"
    );
    let r = Sinkhorn::new(0.1)
        .unwrap()
        .warm_start(Array1::zeros(8), Array1::zeros(7))
        .solve(&p);
    assert!(
        matches!(
            r,
            Err(Error::WarmStartMismatch {
                what: "beta",
                expected: 6,
                found: 7
            })
        ),
        "{r:?}"
    );
    let r = Sinkhorn::new(0.1)
        .unwrap()
        .warm_start(Array1::zeros(3), Array1::zeros(6))
        .solve(&p);
    assert!(
        matches!(
            r,
            Err(Error::WarmStartMismatch {
                what: "alpha",
                expected: 8,
                found: 3
            })
        ),
        "{r:?}"
    );
}

#[test]
fn tol_zero_runs_exactly_max_iter() {
    let p = golden_problem();
    for f in FORMULATIONS {
        let sol = SparseOt::new(2, 0.1)
            .unwrap()
            .formulation(f)
            .tol(0.0)
            .unwrap()
            .max_iter(37)
            .solve(&p)
            .unwrap();
        assert_eq!(sol.iterations, 37, "{f}");
        assert_eq!(sol.termination, Termination::MaxIterations);
    }
    let sol = Sinkhorn::new(0.1)
        .unwrap()
        .tol(0.0)
        .unwrap()
        .max_iter(53)
        .solve(&p)
        .unwrap();
    assert_eq!(sol.iterations, 53);
    assert_eq!(sol.termination, Termination::MaxIterations);
}

// ---------------------------------------------------------------------------------------------------------
// Property tests against an independent naive evaluation (docs/MATH.md §2, §3.2)
// ---------------------------------------------------------------------------------------------------------

/// Indices of the k largest entries: larger value first, then lower index (docs/MATH.md §3.1), by a full sort.
fn naive_top_k(s: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..s.len()).collect();
    idx.sort_by(|&x, &y| s[y].partial_cmp(&s[x]).unwrap().then(x.cmp(&y)));
    idx.truncate(k);
    idx
}

/// SparseProj_k(v) by docs/MATH.md §3.2, steps 1–3, on the top-k set `top` (sorted, largest first).
fn naive_sparse_projection(v: &[f64], top: &[usize]) -> Vec<f64> {
    let mut rho = 0;
    let mut cs = 0.0;
    let mut cs_rho = 0.0;
    for (r, &i) in top.iter().enumerate() {
        cs += v[i];
        // r = 1 always qualifies in exact arithmetic (u_1 − (u_1 − 1) = 1).
        if r == 0 || v[i] - (cs - 1.0) / (r + 1) as f64 > 0.0 {
            rho = r + 1;
            cs_rho = cs;
        }
    }
    let theta = (cs_rho - 1.0) / rho as f64;
    let mut y = vec![0.0; v.len()];
    for &i in top {
        y[i] = (v[i] - theta).max(0.0);
    }
    y
}

/// S_k(α) and its plan (docs/MATH.md §2.2), column sparsity of (a, b, C).
fn naive_semi_dual(
    a: &[f64],
    b: &[f64],
    c: &Array2<f64>,
    alpha: &[f64],
    k: usize,
    gamma: f64,
) -> (f64, Array2<f64>) {
    let (m, n) = c.dim();
    let mut value: f64 = alpha.iter().zip(a).map(|(x, y)| x * y).sum();
    let mut plan = Array2::zeros((m, n));
    for j in 0..n {
        let s: Vec<f64> = (0..m).map(|i| alpha[i] - c[[i, j]]).collect();
        let v: Vec<f64> = s.iter().map(|x| x / (gamma * b[j])).collect();
        // Select on s itself (v is s scaled by a positive constant): near the nonsmooth optima, where scores
        // tie up to rounding, both sides must see the same ordering.
        let y = naive_sparse_projection(&v, &naive_top_k(&s, k));
        let lin: f64 = y.iter().zip(&s).map(|(y, s)| y * s).sum();
        let sq: f64 = y.iter().map(|y| y * y).sum();
        value -= b[j] * (lin - 0.5 * gamma * b[j] * sq);
        for i in 0..m {
            plan[[i, j]] = b[j] * y[i];
        }
    }
    (value, plan)
}

/// D_k(α, β) and its plan (docs/MATH.md §2.1), column sparsity of (a, b, C).
fn naive_dual(
    a: &[f64],
    b: &[f64],
    c: &Array2<f64>,
    alpha: &[f64],
    beta: &[f64],
    k: usize,
    gamma: f64,
) -> (f64, Array2<f64>) {
    let (m, n) = c.dim();
    let mut value: f64 = alpha.iter().zip(a).map(|(x, y)| x * y).sum::<f64>()
        + beta.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let mut plan = Array2::zeros((m, n));
    for j in 0..n {
        // TopK(α + β_j − c_j) = TopK(α − c_j) (docs/MATH.md §2.1); selecting on α − c_j keeps near-ties consistent.
        let s: Vec<f64> = (0..m).map(|i| alpha[i] - c[[i, j]]).collect();
        for i in naive_top_k(&s, k) {
            let p = (s[i] + beta[j]).max(0.0);
            value -= p * p / (2.0 * gamma);
            plan[[i, j]] = p / gamma;
        }
    }
    (value, plan)
}

/// The reported value and plan recomputed from the returned potentials, in the orientation solved.
fn naive_objective(
    p: &Problem,
    sol: &Solution,
    k: usize,
    gamma: f64,
    f: Formulation,
    rows: bool,
) -> (f64, Array2<f64>) {
    let (a, b, c) = (p.a().to_vec(), p.b().to_vec(), p.cost().to_owned());
    let (alpha, beta) = (sol.alpha.to_vec(), sol.beta.to_vec());
    match (f, rows) {
        (Formulation::SemiDual, false) => naive_semi_dual(&a, &b, &c, &alpha, k, gamma),
        (Formulation::Dual, false) => naive_dual(&a, &b, &c, &alpha, &beta, k, gamma),
        // Row sparsity solves (Cᵀ, b, a): its variable is β.
        (Formulation::SemiDual, true) => {
            let (v, t) = naive_semi_dual(&b, &a, &c.t().to_owned(), &beta, k, gamma);
            (v, t.reversed_axes())
        }
        (Formulation::Dual, true) => {
            let (v, t) = naive_dual(&b, &a, &c.t().to_owned(), &beta, &alpha, k, gamma);
            (v, t.reversed_axes())
        }
    }
}

prop_compose! {
    fn small_problem()(m in 1usize..8, n in 1usize..8)(
        a in prop::collection::vec(0.05f64..1.0, m),
        b in prop::collection::vec(0.05f64..1.0, n),
        cost in prop::collection::vec(0.0f64..1.0, m * n),
    ) -> Problem {
        let a = Array1::from(a);
        let mut b = Array1::from(b);
        b *= a.sum() / b.sum();
        let cost = Array2::from_shape_vec((a.len(), b.len()), cost).unwrap();
        Problem::new(a.view(), b.view(), cost.view()).unwrap()
    }
}

fn check_solution_invariants(
    p: &Problem,
    k_frac: f64,
    gamma: f64,
    dual: bool,
    rows: bool,
) -> Result<(), TestCaseError> {
    let f = if dual {
        Formulation::Dual
    } else {
        Formulation::SemiDual
    };
    let lanes_len = if rows { p.n() } else { p.m() };
    let k = 1 + ((k_frac * lanes_len as f64) as usize).min(lanes_len - 1);
    let mut cfg = SparseOt::new(k, gamma)
        .unwrap()
        .formulation(f)
        .max_iter(200);
    if rows {
        cfg = cfg.row_sparsity();
    }
    let sol = cfg.solve(p).unwrap();
    let t = sol.dense_plan();
    let what = format!(
        "{} x {}, k = {k}, gamma = {gamma}, {f}, rows = {rows}",
        p.m(),
        p.n()
    );
    prop_assert_eq!(t.dim(), (p.m(), p.n()));
    prop_assert_eq!(sol.alpha.len(), p.m());
    prop_assert_eq!(sol.beta.len(), p.n());
    // Nonnegative, at most k nonzeros per lane.
    prop_assert!(t.iter().all(|&x| x >= 0.0), "{}: negative plan entry", what);
    let lanes: Vec<usize> = if rows {
        t.rows()
            .into_iter()
            .map(|r| r.iter().filter(|&&x| x > 0.0).count())
            .collect()
    } else {
        t.columns()
            .into_iter()
            .map(|c| c.iter().filter(|&&x| x > 0.0).count())
            .collect()
    };
    prop_assert!(
        lanes.iter().all(|&c| c <= k),
        "{}: lane counts {:?}",
        what,
        lanes
    );
    // Reported value and plan = naive recomputation at the returned potentials.
    let (value, plan) = naive_objective(p, &sol, k, gamma, f, rows);
    let scale = 1.0
        + sol
            .alpha
            .iter()
            .chain(&sol.beta)
            .fold(0.0f64, |s, x| s.max(x.abs()));
    prop_assert!(
        (sol.value - value).abs() <= 1e-12 * scale,
        "{}: value {} vs naive {}",
        what,
        sol.value,
        value
    );
    for ((i, j), &x) in plan.indexed_iter() {
        prop_assert!(
            (t[[i, j]] - x).abs() <= 1e-12 * scale,
            "{}: plan[{}, {}] = {} vs naive {}",
            what,
            i,
            j,
            t[[i, j]],
            x
        );
    }
    // Transport cost and marginal errors of the dense plan.
    let tc: f64 = t.iter().zip(p.cost().iter()).map(|(x, c)| x * c).sum();
    prop_assert!(
        (sol.transport_cost - tc).abs() <= 1e-12 * (1.0 + tc.abs()),
        "{}: transport cost",
        what
    );
    let row_err = (&t.sum_axis(ndarray::Axis(1)) - &p.a())
        .iter()
        .fold(0.0f64, |s, x| s.max(x.abs()));
    let col_err = (&t.sum_axis(ndarray::Axis(0)) - &p.b())
        .iter()
        .fold(0.0f64, |s, x| s.max(x.abs()));
    prop_assert!(
        (sol.marginal_error_rows - row_err).abs() <= 1e-12 * p.mass(),
        "{}: row error",
        what
    );
    prop_assert!(
        (sol.marginal_error_cols - col_err).abs() <= 1e-12 * p.mass(),
        "{}: column error",
        what
    );
    // The semi-dual holds the marginal of its lanes exactly.
    if !dual {
        let exact = if rows { row_err } else { col_err };
        prop_assert!(
            exact <= 1e-12 * p.mass(),
            "{}: semi-dual lane marginals off by {}",
            what,
            exact
        );
    }
    check_termination_honest(&sol);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn solutions_agree_with_a_naive_recomputation(
        p in small_problem(),
        k_frac in 0.0f64..1.0,
        gamma in 0.01f64..1.0,
        dual in any::<bool>(),
        rows in any::<bool>(),
    ) {
        check_solution_invariants(&p, k_frac, gamma, dual, rows)?;
    }

    #[test]
    fn quadratic_solutions_agree_with_a_naive_recomputation(p in small_problem(), gamma in 0.01f64..1.0, dual in any::<bool>()) {
        let f = if dual { Formulation::Dual } else { Formulation::SemiDual };
        let sol = SparseOt::quadratic(gamma).unwrap().formulation(f).solve(&p).unwrap();
        let (value, _) = naive_objective(&p, &sol, p.m(), gamma, f, false);
        let scale = 1.0 + sol.alpha.iter().chain(&sol.beta).fold(0.0f64, |s, x| s.max(x.abs()));
        prop_assert!((sol.value - value).abs() <= 1e-12 * scale);
        check_termination_honest(&sol);
    }
}

/// For k above 16 a column's support is searched among the entries that can carry mass rather than by a
/// top-k pass over the whole column (the quadratic solver is k = m): value and plan must be those of the
/// full definition, for both formulations and for k with and without an active constraint.
#[test]
fn large_k_columns_agree_with_a_naive_recomputation() {
    let mut rng = Rng::new(77);
    let p = random_problem_from(&mut rng, 60, 40, MASSES);
    for k in [17, 20, 30, 60] {
        for gamma in [0.003, 0.1, 3.0] {
            for f in [Formulation::SemiDual, Formulation::Dual] {
                let sol = SparseOt::new(k, gamma)
                    .unwrap()
                    .formulation(f)
                    .solve(&p)
                    .unwrap();
                let (value, plan) = naive_objective(&p, &sol, k, gamma, f, false);
                let scale = 1.0
                    + sol
                        .alpha
                        .iter()
                        .chain(&sol.beta)
                        .fold(0.0f64, |s, x| s.max(x.abs()));
                let what = format!("k = {k}, gamma = {gamma}, {f:?}");
                assert_close(&format!("{what}: value"), sol.value, value, 1e-12 * scale);
                let dense = sol.dense_plan();
                let worst = dense
                    .iter()
                    .zip(plan.iter())
                    .fold(0.0f64, |w, (x, y)| w.max((x - y).abs()));
                assert!(
                    worst <= 1e-12 * scale / gamma,
                    "{what}: plan differs by {worst:e}"
                );
            }
        }
    }
}

#[test]
fn golden_problem_matches_its_definition() {
    let p = golden_problem();
    assert_eq!((p.m(), p.n()), (8, 6));
    assert_close("a[7]", p.a()[7], 8.0 / 36.0, 0.0);
    assert_close("b[0]", p.b()[0], 6.0 / 21.0, 0.0);
    assert_close("C[7, 5]", p.cost()[[7, 5]], 0.0, 0.0);
    assert_close("C[0, 5]", p.cost()[[0, 5]], 1.0, 0.0);
    assert_close("sum b", p.b().sum(), 1.0, 1e-15);
}

/// The async entry points solve on a thread of their own: the future is `Send`, its first poll returns at
/// once (Pending while the solve runs, here a Sinkhorn run of a fixed 400 iterations), and it resolves to
/// exactly what the blocking call returns. Nothing here depends on a GPU (`Device::Cpu`).
#[test]
fn async_solve_runs_off_the_polling_thread() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    fn assert_send<T: Send>(_: &T) {}
    let mut rng = Rng::new(77);
    let p = random_problem_from(&mut rng, 120, 90, MASSES);
    let cfg = Sinkhorn::new(0.01).unwrap().tol(0.0).unwrap().max_iter(400);
    let device = sparse_ot::Device::Cpu;
    let mut fut = Box::pin(cfg.solve_on_async(&p, &device));
    assert_send(&fut);
    let mut cx = Context::from_waker(Waker::noop());
    let mut polls = 0;
    let sol = loop {
        polls += 1;
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(r) => break r.unwrap(),
            Poll::Pending => std::thread::sleep(std::time::Duration::from_millis(1)),
        }
    };
    assert!(polls > 1, "the first poll waited for the whole solve");
    let blocking = cfg.solve(&p).unwrap();
    assert_eq!(sol.value.to_bits(), blocking.value.to_bits());
    assert_eq!(sol.iterations, 400);
    let sparse = SparseOt::new(3, 0.1).unwrap();
    let sol = pollster::block_on(sparse.solve_on_async(&p, &device)).unwrap();
    assert_eq!(sol.alpha, sparse.solve(&p).unwrap().alpha);
}

/// A certified k-sparse solution whose plan misses a row marginal says so in its report.
#[test]
fn a_certified_plan_that_misses_a_marginal_says_why() {
    let sol = SparseOt::new(2, 0.01)
        .unwrap()
        .solve(&golden_problem())
        .unwrap();
    assert!(
        matches!(
            sol.termination,
            Termination::Converged(Criterion::DualityGap { .. })
        ),
        "{sol}"
    );
    let report = sol.to_string();
    if sol.marginal_error_rows > 1e-9 {
        assert!(report.contains("misses a marginal"), "{report}");
    } else {
        assert!(!report.contains("misses a marginal"), "{report}");
    }
}

/// Quadratic OT with Dirichlet masses (tests/data/dirichlet_300x200.npz: 5-D points uniform in the unit
/// cube, Dirichlet(1) masses down to ~1e-5, squared distances scaled to max 1), where L-BFGS stalls with a
/// row error of 4e-4: the semismooth Newton stage reaches the tolerance, and the status says so truthfully.
#[test]
fn quadratic_with_dirichlet_masses_converges() {
    let p = data::dirichlet_problem();
    let sol = sparse_ot::SparseOt::quadratic(0.1)
        .unwrap()
        .solve(&p)
        .unwrap();
    assert!(sol.converged(), "{sol}");
    assert!(
        sol.marginal_error_rows.max(sol.marginal_error_cols) <= 1e-9,
        "{sol}"
    );
}
