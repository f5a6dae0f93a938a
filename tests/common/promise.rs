//! The promise every returned solution keeps, checked independently from its dense plan.
#![allow(dead_code)] // each test binary uses some of them

use sparse_ot::{Criterion, Problem, Solution, Termination};

/// Checks the promise of `sol` against `p`, from the dense plan.
#[track_caller]
pub fn assert_promise(what: &str, p: &Problem, sol: &Solution) {
    let plan = sol.dense_plan();
    assert!(
        plan.iter().all(|v| v.is_finite()),
        "{what}: non-finite plan"
    );
    for x in [sol.value, sol.transport_cost] {
        assert!(x.is_finite(), "{what}: non-finite value {x}\n{sol}");
    }
    assert!(
        sol.alpha
            .iter()
            .chain(sol.beta.iter())
            .all(|x| x.is_finite()),
        "{what}"
    );
    let rows = (&plan.sum_axis(ndarray::Axis(1)) - &p.a()).mapv(f64::abs);
    let cols = (&plan.sum_axis(ndarray::Axis(0)) - &p.b()).mapv(f64::abs);
    let err = rows
        .iter()
        .chain(cols.iter())
        .fold(0.0f64, |m, &x| m.max(x));
    let scale = p
        .a()
        .iter()
        .chain(p.b().iter())
        .fold(0.0f64, |m, &x| m.max(x));
    // The rounding of a sum of max(m, n) entries of the largest marginal's size (and the two ways of
    // summing: the solver's and this one).
    let slack = 4.0 * p.m().max(p.n()) as f64 * f64::EPSILON * scale;
    match sol.termination {
        Termination::Converged(Criterion::MarginalError { tol }) => {
            assert!(
                err <= tol + slack,
                "{what}: converged at tol {tol:e} with error {err:e}\n{sol}"
            )
        }
        Termination::Converged(Criterion::Exact) => {
            assert!(
                err <= 64.0 * slack,
                "{what}: exact with error {err:e}\n{sol}"
            )
        }
        Termination::Converged(Criterion::DualityGap { gap }) => {
            assert!(gap.is_finite() && gap >= 0.0, "{what}: gap {gap}");
        }
        _ => {}
    }
}
