//! Sparsity-constrained and quadratic OT on point clouds: the cost is computed from the points column by
//! column, never stored. On small clouds every solve equals the dense solve of `PointProblem::to_problem`
//! (the same entries bit for bit) bit for bit, in every formulation, orientation and plan kind; k = 1
//! (which the dense solve hands to the network simplex) reaches the same optimum within the tolerance.

use ndarray::Array1;
use sparse_ot::{
    Error, Formulation, GroundCost, Plan, PlanKind, PointProblem, RanOn, Solution, SparseOt,
    Termination,
};

#[path = "common/data.rs"]
mod data;
use data::{cloud, cloud_masses};

const PLENTY: u64 = 1 << 30;

fn triplets(sol: &Solution) -> Vec<(usize, usize, u64)> {
    sol.plan
        .triplets()
        .map(|(i, j, v)| (i, j, v.to_bits()))
        .collect()
}

/// Everything a solve reports, compared bit for bit (the status's Debug form includes its numbers).
fn assert_same(on_points: &Solution, dense: &Solution, what: &str) {
    assert_eq!(
        format!("{:?}", on_points.termination),
        format!("{:?}", dense.termination),
        "{what}"
    );
    assert_eq!(on_points.iterations, dense.iterations, "{what}");
    assert_eq!(on_points.alpha, dense.alpha, "{what}");
    assert_eq!(on_points.beta, dense.beta, "{what}");
    assert_eq!(on_points.value.to_bits(), dense.value.to_bits(), "{what}");
    assert_eq!(
        on_points.transport_cost.to_bits(),
        dense.transport_cost.to_bits(),
        "{what}"
    );
    assert_eq!(on_points.plan_kind, dense.plan_kind, "{what}");
    assert_eq!(triplets(on_points), triplets(dense), "{what}");
}

#[test]
fn sparse_on_points_equals_the_dense_solve_bit_for_bit() {
    let configs: Vec<(&str, SparseOt)> = vec![
        ("semi-dual k 2", SparseOt::new(2, 0.1).unwrap()),
        ("semi-dual k 5", SparseOt::new(5, 0.05).unwrap()),
        (
            "dual k 3",
            SparseOt::new(3, 0.1)
                .unwrap()
                .formulation(Formulation::Dual),
        ),
        (
            "dual k 2, fixed budget (joint α, β)",
            SparseOt::new(2, 0.1)
                .unwrap()
                .formulation(Formulation::Dual)
                .tol(0.0)
                .unwrap()
                .max_iter(40),
        ),
        ("quadratic", SparseOt::quadratic(0.5).unwrap()),
        ("rows k 2", SparseOt::new(2, 0.1).unwrap().row_sparsity()),
        (
            "feasible plan k 2",
            SparseOt::new(2, 0.1).unwrap().plan_kind(PlanKind::Feasible),
        ),
        (
            "relaxed plan k 3",
            SparseOt::new(3, 0.02).unwrap().plan_kind(PlanKind::Relaxed),
        ),
    ];
    for (ground, d) in [
        (GroundCost::SqEuclidean, 2),
        (GroundCost::Euclidean, 5),
        (GroundCost::Minkowski { p: 1.0, q: 1.0 }, 3),
    ] {
        let (x, y) = (cloud(60, d, 1), cloud(45, d, 2));
        let p =
            PointProblem::new(&cloud_masses(60, 3), &cloud_masses(45, 4), &x, &y, ground).unwrap();
        let dense = p.to_problem(PLENTY).unwrap();
        for (name, cfg) in &configs {
            let what = format!("{ground}, {name}");
            let on_points = cfg.solve_points(&p).unwrap();
            let reference = cfg.solve(&dense).unwrap();
            assert_same(&on_points, &reference, &what);
            assert!(
                on_points.converged() || name.contains("budget"),
                "{what}: {on_points}"
            );
        }
    }
}

/// Long columns (m = 600 rows, k = 3) go through the working sets, which read single entries of the cost
/// instead of whole columns: still the dense solve bit for bit.
#[test]
fn working_sets_on_points_equal_the_dense_solve() {
    let (x, y) = (cloud(600, 2, 5), cloud(80, 2, 6));
    let p = PointProblem::new(
        &cloud_masses(600, 7),
        &cloud_masses(80, 8),
        &x,
        &y,
        GroundCost::SqEuclidean,
    )
    .unwrap()
    .scaled(2.0)
    .unwrap();
    let dense = p.to_problem(PLENTY).unwrap();
    for f in [Formulation::SemiDual, Formulation::Dual] {
        let cfg = SparseOt::new(3, 0.05).unwrap().formulation(f);
        let on_points = cfg.solve_points(&p).unwrap();
        assert!(on_points.converged(), "{f:?}: {on_points}");
        assert_same(&on_points, &cfg.solve(&dense).unwrap(), &format!("{f:?}"));
    }
}

/// Zero-mass targets are removed and given back as empty columns; clouds far apart (costs from ~19 600 to
/// ~20 400: the minimum is over 16 times the spread) are shifted as dense costs are. Both as the dense
/// solve.
#[test]
fn zero_masses_and_far_clouds_as_the_dense_solve() {
    let (x, mut y) = (cloud(50, 2, 11), cloud(40, 2, 12));
    let mut b = cloud_masses(40, 13);
    b[7] = 0.0;
    b[30] = 0.0;
    let b = &b / b.sum();
    let cfg = SparseOt::new(2, 0.1).unwrap();
    let p = PointProblem::new(&cloud_masses(50, 14), &b, &x, &y, GroundCost::SqEuclidean).unwrap();
    let on_points = cfg.solve_points(&p).unwrap();
    assert!(on_points.converged(), "{on_points}");
    assert_same(
        &on_points,
        &cfg.solve(&p.to_problem(PLENTY).unwrap()).unwrap(),
        "zero masses",
    );
    let Plan::Sparse(plan) = &on_points.plan else {
        panic!("sparse solvers return sparse plans")
    };
    assert!(plan.lane(7).0.is_empty() && plan.lane(30).0.is_empty());
    // The semi-dual starts from α alone: a β given with it (of any length) is not read.
    let warm = cfg
        .clone()
        .warm_start(on_points.alpha.clone(), Some(Array1::zeros(3)))
        .solve_points(&p)
        .unwrap();
    assert!(warm.converged(), "{warm}");
    assert!(warm.iterations <= on_points.iterations, "{warm}");

    y.mapv_inplace(|v| v + 100.0);
    let far = PointProblem::uniform(&x, &y, GroundCost::SqEuclidean).unwrap();
    let on_points = cfg.solve_points(&far).unwrap();
    assert!(on_points.converged(), "{on_points}");
    assert!(on_points.transport_cost > 1e4, "{on_points}");
    assert_same(
        &on_points,
        &cfg.solve(&far.to_problem(PLENTY).unwrap()).unwrap(),
        "far clouds",
    );
}

/// k = 1 is unregularised OT plus (γ/2)‖b‖²: on points it takes the general path and must reach the value
/// the dense solve's exact route certifies, within the tolerance.
#[test]
fn k1_on_points_reaches_the_exact_optimum() {
    let (x, y) = (cloud(40, 2, 21), cloud(30, 2, 22));
    let p = PointProblem::new(
        &cloud_masses(40, 23),
        &cloud_masses(30, 24),
        &x,
        &y,
        GroundCost::SqEuclidean,
    )
    .unwrap();
    let cfg = SparseOt::new(1, 0.1).unwrap();
    let on_points = cfg.solve_points(&p).unwrap();
    let exact = cfg.solve(&p.to_problem(PLENTY).unwrap()).unwrap();
    assert!(on_points.converged(), "{on_points}");
    assert!(exact.converged(), "{exact}");
    // The dual value is a lower bound of the optimum, which the exact route reaches.
    assert!(
        on_points.value <= exact.value + 1e-9,
        "{on_points} vs {exact}"
    );
    assert!(
        exact.value - on_points.value <= 1e-6 * exact.value.abs().max(1.0),
        "{on_points} vs {exact}"
    );
}

/// k beyond a lane and a warm start of the wrong length are refused with typed errors by `solve`, the
/// CPU or GPU entry point on points.
fn refuses_bad_settings(solve: impl Fn(SparseOt, &PointProblem) -> sparse_ot::Result<Solution>) {
    let (x, y) = (cloud(5, 2, 31), cloud(4, 2, 32));
    let p = PointProblem::uniform(&x, &y, GroundCost::SqEuclidean).unwrap();
    let too_large = solve(SparseOt::new(6, 0.1).unwrap(), &p);
    assert!(
        matches!(too_large, Err(Error::InvalidK { k: 6, max: 5, .. })),
        "{too_large:?}"
    );
    let warm = solve(
        SparseOt::new(2, 0.1)
            .unwrap()
            .warm_start(Array1::zeros(3), None),
        &p,
    );
    assert!(
        matches!(
            warm,
            Err(Error::WarmStartMismatch {
                expected: 5,
                found: 3,
                ..
            })
        ),
        "{warm:?}"
    );
}

#[test]
fn bad_settings_on_points_give_typed_errors() {
    refuses_bad_settings(|cfg, p| cfg.solve_points(p));
    let (x, y) = (cloud(5, 2, 31), cloud(4, 2, 32));
    let p = PointProblem::uniform(&x, &y, GroundCost::SqEuclidean).unwrap();
    let rows = SparseOt::new(5, 0.1)
        .unwrap()
        .row_sparsity()
        .solve_points(&p);
    assert!(
        matches!(rows, Err(Error::InvalidK { k: 5, max: 4, .. })),
        "{rows:?}"
    );
    let mut nan = Array1::zeros(5);
    nan[2] = f64::NAN;
    let warm = SparseOt::new(2, 0.1)
        .unwrap()
        .warm_start(nan, None)
        .solve_points(&p);
    assert!(matches!(warm, Err(Error::NonFinite { .. })), "{warm:?}");
    // A fixed budget that runs out is a status, not an error.
    let short = SparseOt::new(2, 0.001)
        .unwrap()
        .max_iter(1)
        .solve_points(&p)
        .unwrap();
    assert_eq!(short.termination, Termination::MaxIterations);
}

#[path = "common/gpu.rs"]
mod gpu_common;

/// On a GPU (lavapipe in CI) the sparse kernels compute every cost entry from the points: no cost bytes
/// read, and results equal to the f64 CPU solve within f32's reach, for the semi-dual and the dual with k < m
/// (L-BFGS on the device, the nonsmooth stage continued on the CPU where it stalls), quadratic OT (k = m),
/// row sparsity, each ground cost and zero-mass targets.
///
/// Tolerances (f32, unit roundoff u ≈ 6e-8): the solves stop at a marginal error of 1e-6 of the unit mass
/// (≈ 16 u, the f32 floor; see `tests/gpu.rs`), and the status is verified in f64 on the host. The values
/// are maxima of a concave objective whose gradient is the marginal error, so two points within 1e-6 of
/// the marginals lie within ~1e-6 × ‖α‖ (≤ 2 here) of the optimal value: 1e-5 leaves room for f32
/// rounding of the value's O(m + n) terms.
#[test]
fn sparse_on_points_on_the_gpu_reads_no_cost_and_agrees_with_the_cpu() {
    let Some(ctx) = gpu_common::gpu() else { return };
    let device = sparse_ot::Device::Gpu(ctx);
    // (name, configuration, ground cost, dimension, nonzeros per lane at most)
    let cases: Vec<(&str, SparseOt, GroundCost, usize, usize)> = vec![
        (
            "semi-dual k 3",
            SparseOt::new(3, 0.1).unwrap(),
            GroundCost::SqEuclidean,
            2,
            3,
        ),
        (
            "dual k 2",
            SparseOt::new(2, 0.1)
                .unwrap()
                .formulation(Formulation::Dual),
            GroundCost::Euclidean,
            5,
            2,
        ),
        (
            "quadratic",
            SparseOt::quadratic(0.5).unwrap(),
            GroundCost::Minkowski { p: 1.5, q: 1.0 },
            3,
            60,
        ),
        (
            "rows k 2",
            SparseOt::new(2, 0.1).unwrap().row_sparsity(),
            GroundCost::SqEuclidean,
            2,
            2,
        ),
    ];
    for (name, cfg, ground, d, k) in cases {
        let (x, y) = (cloud(60, d, 41), cloud(45, d, 42));
        let mut b = cloud_masses(45, 44);
        if name.starts_with("semi") {
            b[9] = 0.0;
        }
        let b = &b / b.sum();
        let p = PointProblem::new(&cloud_masses(60, 43), &b, &x, &y, ground).unwrap();
        let what = format!("{name}, {ground}");
        let g = cfg
            .clone()
            .tol(1e-6)
            .unwrap()
            .solve_points_on(&p, &device)
            .unwrap();
        let c = cfg.clone().tol(1e-9).unwrap().solve_points(&p).unwrap();
        assert!(g.converged(), "{what}: {g}");
        assert!(c.converged(), "{what}: {c}");
        assert!(
            matches!(g.device, RanOn::Gpu { .. } | RanOn::GpuThenCpu { .. }),
            "{what}: {:?}",
            g.device
        );
        let work = g.gpu_work.expect("a GPU solve reports its work");
        assert_eq!(work.cost_bytes_read, 0, "{what}: {work:?}");
        assert!(
            work.dispatches > 0 && work.readbacks > 0,
            "{what}: {work:?}"
        );
        assert!(
            (g.value - c.value).abs() <= 1e-5,
            "{what}: value {} vs {}",
            g.value,
            c.value
        );
        let Plan::Sparse(plan) = &g.plan else {
            panic!("sparse solvers return sparse plans")
        };
        assert!(plan.max_lane_nnz() <= k, "{what}: {}", plan.max_lane_nnz());
        if name.starts_with("semi") {
            assert!(
                plan.lane(9).0.is_empty(),
                "{what}: a zero-mass target got mass"
            );
        }
        if name == "quadratic" {
            // Quadratic OT is strongly convex in the plan: plans agree to the marginal tolerance / γ.
            let diff = (&plan.to_dense() - &c.plan.to_dense()).mapv(f64::abs);
            let worst = diff.iter().fold(0.0f64, |a, &v| a.max(v));
            assert!(worst <= 1e-5, "{what}: plans differ by {worst}");
        }
    }
    // Bad settings are refused before the device is touched, with the CPU path's typed errors.
    refuses_bad_settings(|cfg, p| cfg.solve_points_on(p, &device));
}
