//! Point clouds: problems given by points and a ground cost, solved without forming the m × n matrix. On
//! small clouds every result equals the dense path on `PointProblem::to_problem` (the same entries bit for
//! bit); bad points and masses give typed errors.

use ndarray::Array2;
use sparse_ot::{Error, GroundCost, PointProblem, Precision, Sinkhorn, Termination};

#[path = "common/data.rs"]
mod data;
use data::{cloud, cloud_masses};

const PLENTY: u64 = 1 << 30;

#[test]
fn sinkhorn_on_points_equals_the_dense_solve_bit_for_bit_in_f64() {
    for (ground, d) in [
        (GroundCost::SqEuclidean, 2),
        (GroundCost::Euclidean, 5),
        (GroundCost::Minkowski { p: 1.0, q: 1.0 }, 3),
        (GroundCost::Minkowski { p: 3.0, q: 2.0 }, 2),
    ] {
        let (x, y) = (cloud(40, d, 1), cloud(30, d, 2));
        let p =
            PointProblem::new(&cloud_masses(40, 3), &cloud_masses(30, 4), &x, &y, ground).unwrap();
        let dense = p.to_problem(PLENTY).unwrap();
        let cfg = Sinkhorn::new(0.05).unwrap().tol(1e-10).unwrap();
        let on_points = cfg.solve_points(&p).unwrap();
        let reference = cfg.solve(&dense).unwrap();
        assert!(on_points.converged(), "{ground}: {on_points}");
        assert_eq!(on_points.iterations, reference.iterations, "{ground}");
        assert_eq!(on_points.alpha, reference.alpha, "{ground}");
        assert_eq!(on_points.beta, reference.beta, "{ground}");
        // The reported numbers are summed in another order (rows by chunks, SIMD exponentials): they agree to
        // rounding.
        let close = |a: f64, b: f64, what: &str| {
            assert!(
                (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                "{ground} {what}: {a} vs {b}"
            )
        };
        close(on_points.value, reference.value, "value");
        close(
            on_points.transport_cost,
            reference.transport_cost,
            "transport cost",
        );
        assert!(
            on_points.marginal_error_rows <= 1e-10 + 1e-14,
            "{on_points}"
        );
        let plan = on_points.dense_plan(&p, PLENTY).unwrap();
        let want = reference.dense_plan();
        for (a, b) in plan.iter().zip(want.iter()) {
            assert!((a - b).abs() <= 1e-15, "{ground}: plan {a} vs {b}");
        }
        let (rows, cols) = on_points.marginals(&p).unwrap();
        for (r, a) in rows.iter().zip(p.a()) {
            assert!((r - a).abs() <= 1e-10 + 1e-14);
        }
        for (c, b) in cols.iter().zip(p.b()) {
            assert!((c - b).abs() <= 1e-12);
        }
    }
}

/// Rows wider than one column tile of the sweep (the cost computed tile by tile from an offset into the
/// target cloud) give the dense solve's potentials bit for bit.
#[test]
fn wide_rows_on_points_equal_the_dense_solve_bit_for_bit() {
    let (x, y) = (cloud(12, 3, 7), cloud(5000, 3, 8));
    let p = PointProblem::new(
        &cloud_masses(12, 9),
        &cloud_masses(5000, 10),
        &x,
        &y,
        GroundCost::Euclidean,
    )
    .unwrap();
    let cfg = Sinkhorn::new(0.02).unwrap().tol(1e-10).unwrap();
    let on_points = cfg.solve_points(&p).unwrap();
    let reference = cfg.solve(&p.to_problem(PLENTY).unwrap()).unwrap();
    assert!(on_points.converged(), "{on_points}");
    assert_eq!(on_points.iterations, reference.iterations);
    assert_eq!(on_points.alpha, reference.alpha);
    assert_eq!(on_points.beta, reference.beta);
}

#[test]
fn sinkhorn_on_points_in_f32_agrees_with_the_dense_f32_solve() {
    let (x, y) = (cloud(200, 2, 5), cloud(150, 2, 6));
    let p = PointProblem::uniform(&x, &y, GroundCost::SqEuclidean).unwrap();
    let cfg = Sinkhorn::new(0.01)
        .unwrap()
        .precision(Precision::F32)
        .tol(1e-7)
        .unwrap();
    let on_points = cfg.solve_points(&p).unwrap();
    let reference = cfg.solve(&p.to_problem(PLENTY).unwrap()).unwrap();
    assert!(on_points.converged(), "{on_points}");
    assert!(reference.converged(), "{reference}");
    // Both meet 1e-7 on the marginals (verified in f64); the entropic optimum is unique, so the transport
    // costs agree to about tol × the cost range (≤ 2 here) / the mass.
    assert!(
        (on_points.transport_cost - reference.transport_cost).abs() <= 1e-6,
        "{} vs {}",
        on_points.transport_cost,
        reference.transport_cost
    );
}

#[test]
fn a_divisor_scales_every_cost() {
    let (x, y) = (cloud(5, 2, 7), cloud(4, 2, 8));
    let p = PointProblem::uniform(&x, &y, GroundCost::SqEuclidean).unwrap();
    let q = p.clone().scaled(4.0).unwrap();
    for i in 0..5 {
        for j in 0..4 {
            assert_eq!(q.cost(i, j), p.cost(i, j) * 0.25);
        }
    }
    assert!(matches!(
        p.clone().scaled(0.0),
        Err(Error::InvalidParameter {
            name: "divisor",
            ..
        })
    ));
    assert!(matches!(
        p.scaled(f64::NAN),
        Err(Error::InvalidParameter { .. })
    ));
}

#[test]
fn bad_points_and_masses_give_typed_errors() {
    let (x, y) = (cloud(5, 2, 1), cloud(4, 2, 2));
    let sq = GroundCost::SqEuclidean;
    let empty = Array2::<f64>::zeros((0, 2));
    assert!(matches!(
        PointProblem::uniform(&empty, &y, sq),
        Err(Error::Empty { what: "x" })
    ));
    assert!(matches!(
        PointProblem::uniform(
            &Array2::<f64>::zeros((5, 0)),
            &Array2::<f64>::zeros((4, 0)),
            sq
        ),
        Err(Error::Empty { .. })
    ));
    assert!(matches!(
        PointProblem::uniform(&x, &cloud(4, 3, 2), sq),
        Err(Error::ShapeMismatch { .. })
    ));
    let mut bad = x.clone();
    bad[[3, 1]] = f64::NAN;
    assert!(matches!(
        PointProblem::uniform(&bad, &y, sq),
        Err(Error::NonFinite { what: "x", .. })
    ));
    assert!(matches!(
        PointProblem::new(&cloud_masses(4, 1), &cloud_masses(4, 2), &x, &y, sq),
        Err(Error::ShapeMismatch { .. })
    ));
    let mut negative = cloud_masses(5, 1);
    negative[0] = -0.1;
    assert!(matches!(
        PointProblem::new(&negative, &cloud_masses(4, 2), &x, &y, sq),
        Err(Error::NegativeMass { .. })
    ));
    assert!(matches!(
        PointProblem::new(&(cloud_masses(5, 1) * 2.0), &cloud_masses(4, 2), &x, &y, sq),
        Err(Error::MassMismatch { .. })
    ));
    assert!(matches!(
        PointProblem::uniform(&x, &y, GroundCost::Minkowski { p: 0.0, q: 1.0 }),
        Err(Error::InvalidParameter { name: "p", .. })
    ));
    let huge = x.mapv(|v| v * 1e200);
    assert!(matches!(
        PointProblem::uniform(&huge, &y, sq),
        Err(Error::CostOverflow { .. })
    ));
    let mut zero = cloud_masses(5, 1);
    zero[2] = 0.0;
    let zero = zero.clone() / zero.sum();
    let p = PointProblem::new(&zero, &cloud_masses(4, 2), &x, &y, sq).unwrap();
    assert!(matches!(
        Sinkhorn::new(0.1).unwrap().solve_points(&p),
        Err(Error::ZeroMass { .. })
    ));
    let p = PointProblem::uniform(&x, &y, sq).unwrap();
    assert!(matches!(p.to_problem(100), Err(Error::TooLarge { .. })));
    let sol = Sinkhorn::new(0.1).unwrap().solve_points(&p).unwrap();
    assert!(matches!(sol.dense_plan(&p, 8), Err(Error::TooLarge { .. })));
    let other = PointProblem::uniform(&y, &x, sq).unwrap();
    assert!(matches!(
        sol.marginals(&other),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn points_never_report_an_unmet_convergence() {
    // eps far below the cost scale with a generous iteration budget: whatever the status, a Converged one
    // holds on the returned potentials.
    let (x, y) = (cloud(60, 2, 9), cloud(50, 2, 10));
    let p = PointProblem::uniform(&x, &y, GroundCost::SqEuclidean).unwrap();
    for (eps, precision) in [
        (1e-3, Precision::F64),
        (1e-3, Precision::F32),
        (1.0, Precision::F32),
    ] {
        let cfg = Sinkhorn::new(eps)
            .unwrap()
            .precision(precision)
            .tol(1e-9)
            .unwrap();
        let sol = cfg.solve_points(&p).unwrap();
        if let Termination::Converged(_) = sol.termination {
            assert!(
                sol.marginal_error_rows.max(sol.marginal_error_cols) <= 1e-9 * 1.001,
                "{sol}"
            );
        }
    }
}

#[path = "common/gpu.rs"]
mod gpu_common;

/// On a GPU (lavapipe in CI) the kernels compute every entry from the points: no cost bytes read, results
/// equal to the CPU path within f32's reach, for one pass per iteration (n = 150) and for rows beyond one
/// workgroup's registers (n = 20 000, read twice), for each ground cost.
#[test]
fn sinkhorn_on_points_on_the_gpu_reads_no_cost_and_agrees_with_the_cpu() {
    let Some(ctx) = gpu_common::gpu() else { return };
    let device = sparse_ot::Device::Gpu(ctx);
    for (m, n, ground) in [
        (120, 150, GroundCost::SqEuclidean),
        (60, 40, GroundCost::Euclidean),
        (50, 45, GroundCost::Minkowski { p: 1.5, q: 1.0 }),
        (3, 20_000, GroundCost::SqEuclidean),
    ] {
        let (x, y) = (cloud(m, 2, 11), cloud(n, 2, 12));
        let p = PointProblem::uniform(&x, &y, ground).unwrap();
        // tol 1e-6 of unit mass: within the f32 floor (docs of crate::gpu), checked in f64 on the host.
        let cfg = Sinkhorn::new(0.05).unwrap().tol(1e-6).unwrap();
        let g = cfg.solve_points_on(&p, &device).unwrap();
        let c = cfg.solve_points(&p).unwrap();
        assert!(g.converged(), "{ground} {m}x{n}: {g}");
        assert!(
            g.marginal_error_rows.max(g.marginal_error_cols) <= 1e-6,
            "{g}"
        );
        let work = g.gpu_work.expect("a GPU solve reports its work");
        assert_eq!(work.cost_bytes_read, 0, "{ground}: {work:?}");
        assert!(work.dispatches > 0 && work.readbacks > 0);
        // Both meet 1e-6 on the marginals of one strictly convex problem: the transport costs agree to about
        // tol × the cost range (≤ 2) / ε-smoothing, well inside 1e-4.
        assert!(
            (g.transport_cost - c.transport_cost).abs() <= 1e-4,
            "{ground} {m}x{n}: {} vs {}",
            g.transport_cost,
            c.transport_cost
        );
        assert!(c.gpu_work.is_none());
    }
}
