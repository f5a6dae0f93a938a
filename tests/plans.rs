//! The three plans of the sparse solver (`PlanKind`): each keeps its promise on a corpus of problems where
//! the optimum is nonsmooth (small k on point clouds, where the plan read off the potentials can miss a
//! whole row's mass) and smooth (larger k, quadratic OT with Dirichlet masses), in both formulations and
//! with row sparsity.
//!
//! * gradient: at most k per column, and under a certified status a report that says what it misses;
//! * relaxed: meets both marginals, its objective certified by the dual value (gap ≥ 0, and ≤ the
//!   tolerance's worth under a `Converged` status), its transport cost never below the exact OT optimum;
//! * feasible: at most k per column, meets both marginals, gap ≥ 0; when no plan on the chosen support
//!   exists the relaxed plan comes back and `plan_kind` says so.

#[path = "common/data.rs"]
mod data;
#[cfg(feature = "gpu")]
#[path = "common/gpu.rs"]
mod gpu;

use ndarray::Array1;
use sparse_ot::{
    Criterion, ExactOt, Formulation, Plan, PlanKind, Problem, Solution, SparseOt, Termination,
};

/// Largest nonzeros in one column of the plan (rows for row sparsity).
fn max_per_lane(sol: &Solution) -> usize {
    match &sol.plan {
        Plan::Sparse(p) => p.max_lane_nnz(),
        Plan::Dense(_) => panic!("sparse solvers return sparse plans"),
    }
}

/// Rounding slack of a marginal: a sum of max(m, n) entries of the largest marginal's size.
fn slack(p: &Problem) -> f64 {
    let scale = p
        .a()
        .iter()
        .chain(p.b().iter())
        .fold(0.0f64, |m, &x| m.max(x));
    4.0 * p.m().max(p.n()) as f64 * f64::EPSILON * scale
}

fn marginal_error(sol: &Solution) -> f64 {
    sol.marginal_error_rows.max(sol.marginal_error_cols)
}

/// The corpus: (name, problem, k, configuration without its plan kind).
fn corpus() -> Vec<(String, Problem, usize, SparseOt)> {
    let mut out = Vec::new();
    for seed in 0..3 {
        let p = data::point_cloud_problem(200, 150, seed);
        for k in [1, 2, 3, 5] {
            out.push((
                format!("points 200x150 seed {seed} k {k}"),
                p.clone(),
                k,
                SparseOt::new(k, 0.1).unwrap(),
            ));
        }
    }
    let p = data::point_cloud_problem(120, 90, 7);
    out.push((
        "points 120x90 k 3 dual".into(),
        p.clone(),
        3,
        SparseOt::new(3, 0.1)
            .unwrap()
            .formulation(Formulation::Dual),
    ));
    out.push((
        "points 120x90 k 3 per row".into(),
        p.clone(),
        3,
        SparseOt::new(3, 0.1).unwrap().row_sparsity(),
    ));
    out.push((
        "points 30x300 k 2".into(),
        data::point_cloud_problem(30, 300, 8),
        2,
        SparseOt::new(2, 0.05).unwrap(),
    ));
    out.push((
        "points 300x30 k 12".into(),
        data::point_cloud_problem(300, 30, 9),
        12,
        SparseOt::new(12, 0.05).unwrap(),
    ));
    out.push((
        "random 80x60 k 4 gamma 0.01".into(),
        data::random_problem(80, 60, 10),
        4,
        SparseOt::new(4, 0.01).unwrap(),
    ));
    out
}

/// The most rows any column of the north-west corner plan uses: the plan that fills columns in order from
/// rows in order (marginals a over rows, b over columns), which meets both marginals. A feasible plan with
/// at most that many nonzeros per column therefore exists.
fn north_west_per_lane(a: &[f64], b: &[f64]) -> usize {
    let (mut row_left, mut i) = (a[0], 0);
    let mut most = 0;
    for &bj in b {
        let mut need = bj;
        let mut rows = 0;
        // Rounding: leftovers below 1e-12 of the mass count as spent.
        while need > 1e-12 && i < a.len() {
            rows += 1;
            let take = need.min(row_left);
            need -= take;
            row_left -= take;
            if row_left <= 1e-12 {
                i += 1;
                row_left = a.get(i).copied().unwrap_or(0.0);
            }
        }
        most = most.max(rows);
    }
    most
}

#[track_caller]
fn check_kind(what: &str, p: &Problem, ot: f64, k: usize, tol: f64, sol: &Solution) {
    let report = sol.to_string();
    let kind = sol
        .plan_kind
        .expect("sparse solves say which plan came back");
    assert!(
        report.contains(&format!("plan            {kind}")),
        "{report}"
    );
    match kind {
        PlanKind::Gradient => {
            assert!(max_per_lane(sol) <= k, "{what}\n{report}");
            assert!(sol.plan_gap.is_none(), "{what}");
            if sol.certified_plan_miss().is_some() {
                assert!(report.contains("misses a marginal"), "{report}");
            }
        }
        PlanKind::Relaxed | PlanKind::Feasible => {
            if kind == PlanKind::Feasible {
                assert!(max_per_lane(sol) <= k, "{what}: feasible plan\n{report}");
            }
            assert!(
                marginal_error(sol) <= tol + slack(p),
                "{what}: {kind} plan misses a marginal\n{report}"
            );
            let gap = sol.plan_gap.expect("relaxed and feasible plans have a gap");
            // Weak duality: P(T) − D(α, β) ≥ −α·(a − T1) − β·(b − Tᵀ1) for every T ≥ 0, so a plan that
            // meets the marginals up to its errors is below the dual value by at most those errors times
            // the potentials (and rounding).
            let l1 = |v: &Array1<f64>| v.iter().map(|x| x.abs()).sum::<f64>();
            let below = l1(&sol.alpha) * sol.marginal_error_rows
                + l1(&sol.beta) * sol.marginal_error_cols
                + 1e-12;
            assert!(
                gap >= -below,
                "{what}: {kind} plan below the dual bound: {gap:e} < -{below:e}"
            );
            if kind == PlanKind::Relaxed && sol.converged() {
                // Under a certified gap the relaxed plan is the certificate; at a point meeting the
                // marginals the gap is −α·(a − T1) ≤ tol · Σ|α|.
                let allowed = match sol.termination {
                    Termination::Converged(Criterion::DualityGap { gap }) => gap + 1e-12,
                    _ => {
                        tol * sol
                            .alpha
                            .iter()
                            .chain(sol.beta.iter())
                            .map(|x| x.abs())
                            .sum::<f64>()
                    }
                };
                assert!(
                    gap <= allowed,
                    "{what}: gap {gap:e} above {allowed:e}\n{report}"
                );
            }
            // A plan that meets the marginals costs at least the exact optimum (up to the marginal error
            // times the cost range).
            assert!(
                sol.transport_cost >= ot - 1e-6,
                "{what}: {kind} plan costs {} below the OT optimum {ot}",
                sol.transport_cost
            );
            assert!(!report.contains("misses a marginal"), "{report}");
        }
    }
}

#[test]
fn every_plan_kind_keeps_its_promise() {
    let tol = sparse_ot::DEFAULT_TOL;
    let (mut feasible, mut tried, mut gradient_misses, mut exists) = (0, 0, 0, 0);
    for (what, p, k, cfg) in corpus() {
        let ot = ExactOt::new().solve(&p).unwrap().transport_cost;
        let gradient = cfg.clone().solve(&p).unwrap();
        assert_eq!(gradient.plan_kind, Some(PlanKind::Gradient), "{what}");
        check_kind(&what, &p, ot, k, tol, &gradient);
        if gradient.certified_plan_miss().is_some() {
            gradient_misses += 1;
        }
        let relaxed = cfg.clone().plan_kind(PlanKind::Relaxed).solve(&p).unwrap();
        // The plan kind changes the plan only: same potentials, same status.
        assert_eq!(relaxed.alpha, gradient.alpha, "{what}");
        assert_eq!(relaxed.termination, gradient.termination, "{what}");
        if gradient.converged() {
            assert_eq!(relaxed.plan_kind, Some(PlanKind::Relaxed), "{what}");
        }
        check_kind(&what, &p, ot, k, tol, &relaxed);
        let fea = cfg.clone().plan_kind(PlanKind::Feasible).solve(&p).unwrap();
        check_kind(&what, &p, ot, k, tol, &fea);
        if gradient.converged() {
            // Falls back to the relaxed plan, never to one that misses the marginals.
            assert_ne!(fea.plan_kind, Some(PlanKind::Gradient), "{what}");
        }
        if k >= 3 {
            tried += 1;
            feasible += usize::from(fea.plan_kind == Some(PlanKind::Feasible));
        }
        // Where the north-west corner plan shows that a plan with at most k nonzeros per lane exists, the
        // repair finds one (the single support of the relaxed plan's top entries often cannot carry the
        // marginals at k = 2; the repair widens it).
        let lanes = if what.contains("per row") {
            (p.b(), p.a())
        } else {
            (p.a(), p.b())
        };
        if north_west_per_lane(lanes.0.as_slice().unwrap(), lanes.1.as_slice().unwrap()) <= k {
            exists += 1;
            assert_eq!(fea.plan_kind, Some(PlanKind::Feasible), "{what}: {fea}");
        }
    }
    assert!(
        exists >= 10,
        "only {exists} problems with a known k-sparse plan"
    );
    // The corpus holds certified solves whose gradient plan misses a marginal (the case the kinds are for),
    // and at k ≥ 3 the repair finds a feasible plan on most of it.
    println!(
        "gradient plans missing a marginal under a certified status: {gradient_misses}; feasible plans at k >= 3: {feasible} of {tried}; where the north-west corner shows one exists: {exists} of {exists}"
    );
    assert!(
        gradient_misses >= 5,
        "{gradient_misses} gradient plans miss"
    );
    assert!(
        2 * feasible > tried,
        "feasible plans for {feasible} of {tried}"
    );
}

/// 200 × 150 uniform masses at k = 1: each column's whole mass 1/150 goes to one row, so a row's total is 0
/// or at least 1/150, never a_i = 1/200. No feasible plan exists: the relaxed plan (at k = 1 the OT plan)
/// comes back, and `plan_kind` says so.
#[test]
fn no_feasible_plan_at_k1_returns_the_relaxed_plan() {
    let p = data::point_cloud_problem(200, 150, 3);
    let sol = SparseOt::new(1, 0.1)
        .unwrap()
        .plan_kind(PlanKind::Feasible)
        .solve(&p)
        .unwrap();
    assert!(sol.converged(), "{sol}");
    assert_eq!(sol.plan_kind, Some(PlanKind::Relaxed), "{sol}");
    let ot = ExactOt::new().solve(&p).unwrap().transport_cost;
    assert!((sol.transport_cost - ot).abs() <= 1e-12, "{sol}");
}

/// Equal uniform masses on a square problem at k = 1: the OT plan is a permutation (a vertex of the
/// assignment polytope), so the repair's support admits the marginals and the feasible plan is that
/// permutation, one entry per column, at the OT cost.
#[test]
fn a_feasible_plan_at_k1_is_an_assignment() {
    let p = data::point_cloud_problem(60, 60, 4);
    let sol = SparseOt::new(1, 0.1)
        .unwrap()
        .plan_kind(PlanKind::Feasible)
        .solve(&p)
        .unwrap();
    assert_eq!(sol.plan_kind, Some(PlanKind::Feasible), "{sol}");
    assert_eq!(max_per_lane(&sol), 1);
    assert_eq!(sol.plan.nnz(), 60);
    assert!(marginal_error(&sol) <= 1e-12, "{sol}");
    let ot = ExactOt::new().solve(&p).unwrap().transport_cost;
    assert!((sol.transport_cost - ot).abs() <= 1e-9, "{sol}");
}

/// Quadratic OT with Dirichlet masses (tests/data/dirichlet_300x200.npz) is smooth at its optimum: the three
/// kinds are one plan, and its gap to the dual value is within the tolerance's worth.
#[test]
fn quadratic_plans_coincide() {
    let p = data::dirichlet_problem();
    let plans: Vec<Solution> = [PlanKind::Gradient, PlanKind::Relaxed, PlanKind::Feasible]
        .into_iter()
        .map(|kind| {
            SparseOt::quadratic(0.1)
                .unwrap()
                .plan_kind(kind)
                .solve(&p)
                .unwrap()
        })
        .collect();
    for sol in &plans {
        assert!(sol.converged(), "{sol}");
    }
    assert_eq!(plans[1].plan_kind, Some(PlanKind::Relaxed));
    assert_eq!(plans[2].plan_kind, Some(PlanKind::Feasible));
    assert_eq!(plans[0].plan, plans[1].plan);
    assert_eq!(plans[0].plan, plans[2].plan);
    let gap = plans[2].plan_gap.unwrap();
    assert!(gap.abs() <= 1e-9 * plans[2].alpha.iter().map(|x| x.abs()).sum::<f64>().max(1.0));
}

/// On a GPU (f32 L-BFGS, a stalled run continued in f64 on the host) the plans are built on the host from
/// the returned potentials and keep the same promises; a GPU-buffer solve refuses the kinds it cannot build.
#[cfg(feature = "gpu")]
#[test]
fn plan_kinds_on_a_gpu_keep_their_promise() {
    let Some(ctx) = gpu::gpu() else { return };
    let device = sparse_ot::Device::Gpu(ctx.clone());
    let p = data::point_cloud_problem(60, 45, 7);
    let ot = ExactOt::new().solve(&p).unwrap().transport_cost;
    for k in [2, 3] {
        for kind in [PlanKind::Relaxed, PlanKind::Feasible] {
            let cfg = SparseOt::new(k, 0.1).unwrap().plan_kind(kind);
            let sol = cfg.solve_on(&p, &device).unwrap();
            let what = format!("gpu k {k} {kind}");
            // The f32 phase's default tolerance is relative to the largest marginal entry; a stalled run is
            // continued in f64 at the CPU default.
            let tol = sparse_ot::DEFAULT_TOL_F32 * (1.0 / 45.0);
            check_kind(&what, &p, ot, k, tol, &sol);
            println!(
                "{what}: {} on {}, {:?} plan",
                sol.termination, sol.device, sol.plan_kind
            );
            if sol.converged() {
                assert_ne!(sol.plan_kind, Some(PlanKind::Gradient), "{what}\n{sol}");
            }
        }
    }
    let cost: Vec<f32> = p.cost().iter().map(|&c| c as f32).collect();
    let a: Vec<f32> = p.a().iter().map(|&x| x as f32).collect();
    let b: Vec<f32> = p.b().iter().map(|&x| x as f32).collect();
    let (cb, ab, bb) = (
        gpu::storage_f32(&ctx, "cost", &cost),
        gpu::storage_f32(&ctx, "a", &a),
        gpu::storage_f32(&ctx, "b", &b),
    );
    let input = sparse_ot::gpu::GpuProblem {
        m: p.m(),
        n: p.n(),
        a: &ab,
        b: &bb,
        cost: &cb,
    };
    let err = SparseOt::new(3, 0.1)
        .unwrap()
        .plan_kind(PlanKind::Relaxed)
        .solve_buffers(&ctx, &input)
        .unwrap_err();
    assert!(
        err.to_string().contains("relaxed and feasible plans"),
        "{err}"
    );
}
