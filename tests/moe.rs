//! Mixture-of-experts router: the authors' router tests (docs/MATH.md §7), capacity guarantees, the greedy baseline
//! and input errors.

#[path = "common/data.rs"]
mod data;

use data::logits;
use ndarray::{Array3, Axis};
use sparse_ot::moe::{gates, GroupReport, LoadMetrics};
use sparse_ot::{greedy_top_k, Error, Router, RouterSolver};
use sparse_ot::{Criterion, Termination};

const SOLVERS: [(&str, RouterSolver); 2] = [
    ("adam", RouterSolver::AUTHORS),
    ("accurate", RouterSolver::ACCURATE),
];

#[track_caller]
fn assert_masses(what: &str, reports: &[GroupReport], tokens_tol: f64, experts_tol: f64) {
    for (g, r) in reports.iter().enumerate() {
        assert!(
            r.token_mass_error <= tokens_tol,
            "{what}, group {g}: token mass error {:.3e} > {tokens_tol:.0e} ({r:?})",
            r.token_mass_error
        );
        assert!(
            r.expert_mass_error <= experts_tol,
            "{what}, group {g}: expert mass error {:.3e} > {experts_tol:.0e} ({r:?})",
            r.expert_mass_error
        );
    }
}

/// docs/MATH.md §7, first router test: S = 8, E = 2, capacity factor 2 (capacity 8 = S).
/// The accurate solver meets the authors' tolerances (row sums 1 and column sums 4 within 1e-3).
#[test]
fn authors_test_capacity_8_accurate() {
    let l = logits(16, 8, 2, 7);
    let r = Router::experts_choose(2.0)
        .unwrap()
        .solver(RouterSolver::ACCURATE)
        .unwrap();
    assert_eq!(r.capacity(8, 2), 8);
    let out = r.route(l.view()).unwrap();
    assert_eq!(out.converged_groups(), 16);
    assert_masses("accurate", &out.groups, 1e-3, 1e-3);
    assert!(out.load.tokens_per_expert.max <= 8.0);
}

/// The same test with the authors' recipe (Adam, lr 1e-2, 20 steps from α = 0): the expert (column) sums
/// are exact by construction of the semi-dual, the token sums are not within 1e-3 after 20 steps on logits
/// spread over [-2, 2) (measured: about 8e-3), so the token tolerance asserted here is 2e-2.
#[test]
fn authors_test_capacity_8_adam() {
    let l = logits(16, 8, 2, 7);
    let r = Router::experts_choose(2.0).unwrap();
    assert_eq!(r.current_solver(), RouterSolver::AUTHORS);
    let out = r.route(l.view()).unwrap();
    assert_masses("adam", &out.groups, 2e-2, 1e-9);
    assert!(out.groups.iter().all(|g| g.iterations <= 20));
    assert!(out.load.tokens_per_expert.max <= 8.0);
    // 20 steps do not reach the accurate solver's 1e-3 on every group: the recipe is approximate.
    let worst = out
        .groups
        .iter()
        .map(|g| g.token_mass_error)
        .fold(0.0, f64::max);
    assert!(
        worst > 1e-3,
        "Adam unexpectedly met 1e-3 ({worst:.2e}): tighten the assertion above"
    );
}

/// docs/MATH.md §7, second router test: S = 4, E = 2, uniform logits, capacity factor 1 rounded up to a multiple of
/// 4 as the authors do (capacity 4): row sums 1 within 1e-3 and column sums 2 within 1e-1, both solvers.
#[test]
fn authors_test_uniform_logits() {
    let l = Array3::zeros((3, 4, 2));
    for (name, solver) in SOLVERS {
        let r = Router::experts_choose(1.0)
            .unwrap()
            .capacity_multiple(4)
            .unwrap()
            .solver(solver)
            .unwrap();
        assert_eq!(r.capacity(4, 2), 4);
        let out = r.route(l.view()).unwrap();
        assert_masses(name, &out.groups, 1e-3, 1e-1);
        assert_eq!(out.load.dropped_tokens, 0, "{name}");
        // Uniform gates: every token goes to both experts with combine weight 1/2.
        assert!(
            out.combine.iter().all(|&c| (c - 0.5).abs() < 1e-12),
            "{name}"
        );
    }
}

/// Without the rounding (capacity 2 < S), uniform logits are all ties: both experts' top-2 are tokens 0 and 1
/// at α = 0. Adam runs out of steps; the accurate solver certifies the optimum of the objective, whose k-sparse
/// plan at this all-tie point still leaves tokens 2 and 3 unrouted. Both report it.
#[test]
fn uniform_logits_capacity_2_is_reported_unconverged() {
    let l = Array3::zeros((1, 4, 2));
    for (name, solver) in SOLVERS {
        let r = Router::experts_choose(1.0).unwrap().solver(solver).unwrap();
        let out = r.route(l.view()).unwrap();
        assert_eq!(out.capacity, 2);
        assert!(out.load.tokens_per_expert.max <= 2.0, "{name}");
        let g = out.groups[0];
        // The status is honest. Converging on the marginal criterion means the token masses are met; the
        // accurate solver may instead certify the optimum of the objective by a duality gap, while the
        // k-sparse plan at this all-tie point still leaves tokens unrouted — which the report shows.
        match g.termination {
            Termination::Converged(Criterion::MarginalError { tol }) => {
                assert!(g.token_mass_error <= tol, "{name}: {g:?}")
            }
            Termination::Converged(Criterion::DualityGap { gap }) => {
                assert!(gap <= 1e-9, "{name}: {g:?}");
                assert!(
                    g.token_mass_error > 0.5,
                    "{name}: the tie leaves tokens unrouted: {g:?}"
                );
            }
            _ => {}
        }
        if name == "adam" {
            // Measured: tokens 2 and 3 stay unrouted after 20 steps (error 1).
            assert!(
                g.token_mass_error > 0.5 && !g.termination.converged(),
                "{g:?}"
            );
        }
    }
}

/// Experts choose: never more than capacity tokens per expert, on a skewed workload, both solvers; the
/// combine weights are the gates of the dispatched pairs and zero elsewhere.
#[test]
fn capacity_is_never_exceeded() {
    let mut l = logits(8, 64, 8, 11);
    // Skew: expert 0 is popular.
    l.index_axis_mut(Axis(2), 0).mapv_inplace(|x| x + 2.0);
    let g = gates(l.view()).unwrap();
    for (name, solver) in SOLVERS {
        for cf in [0.5, 1.0, 2.0] {
            let r = Router::experts_choose(cf).unwrap().solver(solver).unwrap();
            let out = r.route(l.view()).unwrap();
            let cap = r.capacity(64, 8);
            assert_eq!(out.capacity, cap);
            assert!(
                out.load.tokens_per_expert.max <= cap as f64,
                "{name} cf={cf}: {:?}",
                out.load
            );
            assert_eq!(out.load.experts_over_capacity, 0);
            for ((idx, &d), &c) in out.dispatch.indexed_iter().zip(&out.combine) {
                let expected = if d { g[idx] } else { 0.0 };
                assert_eq!(c, expected, "{name} cf={cf} at {idx:?}");
            }
            // The expert loads are exact by construction of the semi-dual.
            assert_masses(name, &out.groups, f64::INFINITY, 1e-9);
        }
    }
}

/// Tokens choose: every token goes to at most k experts.
#[test]
fn tokens_choose_at_most_k_experts() {
    let l = logits(4, 32, 8, 3);
    for (name, solver) in SOLVERS {
        for k in [1, 2, 3] {
            let r = Router::tokens_choose(k).unwrap().solver(solver).unwrap();
            let out = r.route(l.view()).unwrap();
            assert!(
                out.load.experts_per_token.max <= k as f64,
                "{name} k={k}: {:?}",
                out.load
            );
            // Token masses are exact for the row-sparse semi-dual (it is solved on the transposed problem).
            assert_masses(name, &out.groups, 1e-9, f64::INFINITY);
            assert_eq!(out.load.dropped_tokens, 0, "{name} k={k}");
        }
    }
}

#[test]
fn route_f32_matches_route_on_widened_logits() {
    let l = logits(2, 16, 4, 5).mapv(|x| x as f32);
    let r = Router::experts_choose(1.0).unwrap();
    let a = r.route_f32(l.view()).unwrap();
    let b = r.route(l.mapv(f64::from).view()).unwrap();
    assert_eq!(a, b);
}

/// Greedy baseline on a hand-checked group: 4 tokens all preferring expert 0, capacity 2, top-1.
#[test]
fn greedy_drops_tokens_when_the_expert_is_full() {
    let mut l = Array3::zeros((1, 4, 2));
    for s in 0..4 {
        l[[0, s, 0]] = 1.0 + s as f64 * 0.1;
    }
    let out = greedy_top_k(l.view(), 1, 2).unwrap();
    // Tokens 0 and 1 fill expert 0; tokens 2 and 3 are dropped (their first choice is full).
    let d: Vec<bool> = out.dispatch.iter().copied().collect();
    assert_eq!(
        d,
        vec![true, false, true, false, false, false, false, false]
    );
    assert_eq!(out.load.dropped_tokens, 2);
    assert_eq!(out.load.tokens, 4);
    assert!(out.groups.is_empty());
    // Top-2: the second choices (expert 1) go in after all first choices, again in token order, so tokens 0
    // and 1 take both experts and tokens 2 and 3 are still dropped.
    let out = greedy_top_k(l.view(), 2, 2).unwrap();
    let d: Vec<bool> = out.dispatch.iter().copied().collect();
    assert_eq!(d, vec![true, true, true, true, false, false, false, false]);
    assert_eq!(out.load.dropped_tokens, 2);
    assert_eq!(out.load.experts_per_token.max, 2.0);
}

/// On a skewed workload the OT router drops fewer tokens than the greedy router with the same capacity.
#[test]
fn ot_router_drops_fewer_tokens_than_greedy() {
    let mut l = logits(8, 64, 8, 13);
    l.index_axis_mut(Axis(2), 0).mapv_inplace(|x| x + 1.5);
    l.index_axis_mut(Axis(2), 1).mapv_inplace(|x| x + 1.0);
    let r = Router::experts_choose(1.0)
        .unwrap()
        .solver(RouterSolver::ACCURATE)
        .unwrap();
    let ot = r.route(l.view()).unwrap();
    let greedy = greedy_top_k(l.view(), 1, r.capacity(64, 8)).unwrap();
    assert!(
        ot.load.dropped_tokens < greedy.load.dropped_tokens,
        "OT dropped {}, greedy {}",
        ot.load.dropped_tokens,
        greedy.load.dropped_tokens
    );
}

#[test]
fn load_metrics_of_a_known_dispatch() {
    let mut d = Array3::from_elem((1, 3, 2), false);
    d[[0, 0, 0]] = true;
    d[[0, 0, 1]] = true;
    d[[0, 1, 0]] = true;
    let m = LoadMetrics::of(d.view(), 1);
    assert_eq!(m.tokens_per_expert.min, 1.0);
    assert_eq!(m.tokens_per_expert.max, 2.0);
    assert_eq!(m.tokens_per_expert.mean, 1.5);
    assert_eq!(m.experts_per_token.max, 2.0);
    assert_eq!(m.dropped_tokens, 1);
    assert_eq!(m.experts_over_capacity, 1);
    assert!((m.imbalance() - 2.0 / 1.5).abs() < 1e-15);
}

#[test]
fn bad_input_is_a_typed_error() {
    let mut l = logits(3, 8, 2, 1);
    l[[2, 5, 1]] = f64::NAN;
    let r = Router::experts_choose(1.0).unwrap();
    match r.route(l.view()) {
        Err(Error::InBatch { index: 2, source }) => {
            assert!(
                matches!(*source, Error::NonFinite { what: "logits", .. }),
                "{source}"
            )
        }
        other => panic!("expected InBatch for group 2, got {other:?}"),
    }
    assert!(matches!(
        r.route(Array3::zeros((0, 8, 2)).view()),
        Err(Error::Empty { .. })
    ));
    assert!(matches!(
        r.route(Array3::zeros((1, 8, 0)).view()),
        Err(Error::Empty { .. })
    ));
    assert!(matches!(
        Router::experts_choose(0.0),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        Router::experts_choose(f64::NAN),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        Router::tokens_choose(0),
        Err(Error::InvalidK { .. })
    ));
    let too_many = Router::tokens_choose(3)
        .unwrap()
        .route(logits(1, 8, 2, 1).view());
    assert!(
        matches!(too_many, Err(Error::InvalidK { k: 3, max: 2, .. })),
        "{too_many:?}"
    );
    assert!(matches!(
        r.clone().capacity_multiple(0),
        Err(Error::InvalidParameter { .. })
    ));
    let bad_lr = RouterSolver::Adam {
        learning_rate: -1.0,
        steps: 20,
    };
    assert!(matches!(
        r.clone().solver(bad_lr),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        greedy_top_k(logits(1, 4, 2, 1).view(), 3, 2),
        Err(Error::InvalidK { .. })
    ));
    assert!(matches!(
        greedy_top_k(logits(1, 4, 2, 1).view(), 1, 0),
        Err(Error::InvalidParameter { .. })
    ));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// For any logits and capacity factor: no expert over capacity, combine = gate on the dispatch, and the
        /// load metrics agree with the dispatch.
        #[test]
        fn experts_choose_invariants(
            g in 1usize..4, s in 1usize..24, e in 1usize..6, cf in 0.1f64..3.0, seed in 0u64..1000,
            q in 1usize..5,
        ) {
            let l = logits(g, s, e, seed);
            let r = Router::experts_choose(cf).unwrap().capacity_multiple(q).unwrap();
            let out = r.route(l.view()).unwrap();
            let cap = r.capacity(s, e);
            prop_assert_eq!(cap % q, 0);
            let gt = gates(l.view()).unwrap();
            for grp in 0..g {
                for x in 0..e {
                    let n = (0..s).filter(|&t| out.dispatch[[grp, t, x]]).count();
                    prop_assert!(n <= cap.min(s));
                }
            }
            for ((idx, &d), &c) in out.dispatch.indexed_iter().zip(&out.combine) {
                prop_assert_eq!(c, if d { gt[idx] } else { 0.0 });
            }
            prop_assert_eq!(out.load, LoadMetrics::of(out.dispatch.view(), cap));
            prop_assert_eq!(out.groups.len(), g);
        }

        /// Tokens choose: no token routed to more than k experts.
        #[test]
        fn tokens_choose_invariants(
            g in 1usize..4, s in 1usize..24, e in 1usize..6, k in 1usize..4, seed in 0u64..1000,
        ) {
            prop_assume!(k <= e);
            let l = logits(g, s, e, seed);
            let out = Router::tokens_choose(k).unwrap().route(l.view()).unwrap();
            prop_assert!(out.load.experts_per_token.max <= k as f64);
        }
    }
}

/// A huge capacity factor means no limit: the capacity saturates instead of overflowing, and routing with it
/// is quadratic OT over each expert's column (k = S).
#[test]
fn huge_capacity_factor_saturates() {
    let r = Router::experts_choose(1e300)
        .unwrap()
        .capacity_multiple(4)
        .unwrap();
    assert!(r.capacity(8, 2) >= 8);
    let l = ndarray::Array3::from_shape_fn((2, 8, 2), |(g, s, e)| ((g + s * e) % 3) as f64);
    let out = r.route(l.view()).unwrap();
    assert_eq!(out.load.dropped_tokens, 0);
}
