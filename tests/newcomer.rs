//! A newcomer's first hour: problems from owned arrays, f32 arrays and point clouds, uniform marginals, the
//! one-call functions of `sparse_ot::quick` against the solver builders, typed errors for bad input, and the
//! default tolerances (f64 on the CPU, unchanged; f32-appropriate on a GPU, where a default Sinkhorn solve
//! must converge).

#[path = "common/data.rs"]
mod data;

use data::{assert_close, random_problem, Rng};
use ndarray::{array, Array1, Array2};
use sparse_ot::quick::{self, unif};
use sparse_ot::{
    golden_problem, pairwise, Criterion, Error, ExactOt, GroundCost, Position, Problem, Sinkhorn,
    Solution, SparseOt, Termination, DEFAULT_TOL,
};

/// A cloud of `m` points in [0, 1)^d.
fn cloud(rng: &mut Rng, m: usize, d: usize) -> Array2<f64> {
    Array2::from_shape_fn((m, d), |_| rng.next_f64())
}

fn marginals(p: &Problem) -> (Array1<f64>, Array1<f64>) {
    (p.a().to_owned(), p.b().to_owned())
}

/// Two solutions of one problem by one code path: the same bits.
fn assert_same(what: &str, x: &Solution, y: &Solution) {
    assert_eq!(x.value.to_bits(), y.value.to_bits(), "{what}: value");
    assert_eq!(x.alpha, y.alpha, "{what}: alpha");
    assert_eq!(x.beta, y.beta, "{what}: beta");
    assert_eq!(x.dense_plan(), y.dense_plan(), "{what}: plan");
    assert_eq!(x.termination, y.termination, "{what}: termination");
    assert_eq!(x.iterations, y.iterations, "{what}: iterations");
}

#[test]
fn problems_from_owned_arrays_views_and_slices_agree() {
    let p = random_problem(7, 5, 3);
    let (a, b) = marginals(&p);
    let cost = p.cost().to_owned();
    let from_views = Problem::new(a.view(), b.view(), cost.view()).unwrap();
    let from_owned = Problem::new(&a, &b, &cost).unwrap();
    assert_eq!(from_views, from_owned);
    assert_eq!(from_views, p);
    let (av, bv) = (a.to_vec(), b.to_vec());
    assert_eq!(Problem::new(&av, &bv, &cost).unwrap(), p);
    assert_eq!(
        Problem::new(av.as_slice(), bv.as_slice(), &cost).unwrap(),
        p
    );
    // A cost in column-major layout (a transposed view) is stored row-major, with the same entries.
    let cost_t = cost.t().to_owned();
    let p_t = Problem::new(&a, &b, cost_t.t()).unwrap();
    assert_eq!(p_t, p);
    assert!(p_t.cost().is_standard_layout());
    // with_mass_tolerance takes the same inputs.
    assert_eq!(
        Problem::with_mass_tolerance(&a, &b, &cost, 1e-3).unwrap(),
        p
    );
}

#[test]
fn f32_inputs_are_widened_exactly() {
    let p = random_problem(6, 4, 9);
    let a32 = p.a().mapv(|x| x as f32);
    let b32 = p.b().mapv(|x| x as f32);
    let c32 = p.cost().mapv(|x| x as f32);
    let from_f32 = Problem::new(&a32, &b32, &c32).unwrap();
    assert_eq!(
        from_f32,
        Problem::from_f32(a32.view(), b32.view(), c32.view()).unwrap()
    );
    assert_eq!(from_f32, Problem::from_f32(&a32, &b32, &c32).unwrap());
    // The cost and a are the f32 values exactly; b is rebalanced to a's total in f64 (see `Problem`).
    assert_eq!(from_f32.cost(), c32.mapv(f64::from));
    assert_eq!(from_f32.a(), a32.mapv(f64::from));
    let widened = Problem::new(
        &a32.mapv(f64::from),
        &b32.mapv(f64::from),
        &c32.mapv(f64::from),
    )
    .unwrap();
    assert_eq!(from_f32, widened);
    // Solvable like any problem.
    assert!(quick::emd(&a32, &b32, &c32).unwrap().converged());
}

#[test]
fn pairwise_matches_a_hand_computation() {
    let mut rng = Rng::new(17);
    let (x, y) = (cloud(&mut rng, 9, 3), cloud(&mut rng, 7, 3));
    let hand = |f: &dyn Fn(&[f64]) -> f64| {
        Array2::from_shape_fn((9, 7), |(i, j)| {
            let d: Vec<f64> = (0..3).map(|k| x[[i, k]] - y[[j, k]]).collect();
            f(&d)
        })
    };
    let sq = hand(&|d| d.iter().map(|v| v * v).sum());
    let cases: [(GroundCost, Array2<f64>); 5] = [
        (GroundCost::SqEuclidean, sq.clone()),
        (GroundCost::Euclidean, sq.mapv(f64::sqrt)),
        (
            GroundCost::Minkowski { p: 1.0, q: 1.0 },
            hand(&|d| d.iter().map(|v| v.abs()).sum()),
        ),
        (
            GroundCost::Minkowski { p: 3.0, q: 2.0 },
            hand(&|d| {
                d.iter()
                    .map(|v| v.abs().powi(3))
                    .sum::<f64>()
                    .powf(2.0 / 3.0)
            }),
        ),
        (GroundCost::Minkowski { p: 2.0, q: 2.0 }, sq.clone()),
    ];
    for (cost, expected) in &cases {
        let c = pairwise(&x, &y, *cost).unwrap();
        assert_eq!(c.dim(), (9, 7));
        for (got, want) in c.iter().zip(expected) {
            assert_close(&format!("{cost}"), *got, *want, 1e-14 * want.max(1.0));
        }
    }
    // The default is squared Euclidean (POT's `ot.dist` default), and views give the same as references.
    assert_eq!(GroundCost::default(), GroundCost::SqEuclidean);
    assert_eq!(
        pairwise(x.view(), y.view(), GroundCost::default()).unwrap(),
        pairwise(&x, &y, GroundCost::SqEuclidean).unwrap()
    );
    // Equal points cost exactly 0.
    let self_cost = pairwise(&x, &x, GroundCost::SqEuclidean).unwrap();
    assert!((0..9).all(|i| self_cost[[i, i]] == 0.0));
    // f32 points: the f64 computation on the exactly widened coordinates.
    let (x32, y32) = (x.mapv(|v| v as f32), y.mapv(|v| v as f32));
    assert_eq!(
        pairwise(&x32, &y32, GroundCost::Euclidean).unwrap(),
        pairwise(
            &x32.mapv(f64::from),
            &y32.mapv(f64::from),
            GroundCost::Euclidean
        )
        .unwrap()
    );
}

#[test]
fn problems_from_points_and_uniform_marginals() {
    let mut rng = Rng::new(5);
    let (x, y) = (cloud(&mut rng, 6, 2), cloud(&mut rng, 4, 2));
    let cost = pairwise(&x, &y, GroundCost::SqEuclidean).unwrap();
    let p = Problem::uniform(&cost).unwrap();
    assert!(p.a().iter().all(|&v| v == 1.0 / 6.0));
    assert!(p.b().iter().all(|&v| v == 0.25));
    assert_close("uniform mass", p.mass(), 1.0, 1e-15);
    assert_eq!(p.cost(), cost);
    assert_eq!(p, Problem::new(&unif(6), &unif(4), &cost).unwrap());
    assert_eq!(
        Problem::from_points(&x, &y, GroundCost::SqEuclidean).unwrap(),
        p
    );
    // Weighted points: the given marginals.
    let (a, b) = (
        array![0.1, 0.2, 0.3, 0.1, 0.2, 0.1],
        array![0.25, 0.25, 0.25, 0.25],
    );
    let weighted = Problem::from_weighted_points(&a, &b, &x, &y, GroundCost::Euclidean).unwrap();
    let euclid = pairwise(&x, &y, GroundCost::Euclidean).unwrap();
    assert_eq!(weighted, Problem::new(&a, &b, &euclid).unwrap());
    // f32 points with f64 weights.
    let (x32, y32) = (x.mapv(|v| v as f32), y.mapv(|v| v as f32));
    let mixed = Problem::from_weighted_points(&a, &b, &x32, &y32, GroundCost::Euclidean).unwrap();
    assert_eq!(mixed.a(), a);
}

#[test]
fn one_call_functions_equal_the_builders() {
    let p = golden_problem();
    let (a, b) = marginals(&p);
    let c = p.cost().to_owned();
    assert_same(
        "emd",
        &quick::emd(&a, &b, &c).unwrap(),
        &ExactOt::new().solve(&p).unwrap(),
    );
    assert_same(
        "sinkhorn",
        &quick::sinkhorn(&a, &b, &c, 0.1).unwrap(),
        &Sinkhorn::new(0.1).unwrap().solve(&p).unwrap(),
    );
    assert_same(
        "quadratic",
        &quick::quadratic(&a, &b, &c, 0.1).unwrap(),
        &SparseOt::quadratic(0.1).unwrap().solve(&p).unwrap(),
    );
    assert_same(
        "sparse",
        &quick::sparse(&a, &b, &c, 2, 0.1).unwrap(),
        &SparseOt::new(2, 0.1).unwrap().solve(&p).unwrap(),
    );
    // The golden values of docs/MATH.md §8.
    let exact = quick::emd(a.view(), b.view(), c.view()).unwrap();
    assert_close("emd", exact.transport_cost, 0.2591074830, 1e-9);
    let entropic = quick::sinkhorn(&a, &b, &c, 0.1).unwrap();
    assert_close(
        "sinkhorn <T,C>",
        entropic.transport_cost,
        0.2851693482,
        1e-9,
    );
    // POT's objective <T,C> + eps sum T log T is our value + eps * mass (docs/MATH.md §5).
    let plan = entropic.dense_plan();
    let pot: f64 = entropic.transport_cost
        + 0.1
            * plan
                .iter()
                .map(|&t| if t > 0.0 { t * t.ln() } else { 0.0 })
                .sum::<f64>();
    assert_close(
        "POT's sinkhorn objective",
        pot,
        entropic.value + 0.1 * p.mass(),
        1e-8,
    );
    assert_close(
        "quadratic",
        quick::quadratic(&a, &b, &c, 0.1).unwrap().value,
        0.26363790,
        1e-8,
    );
    assert_close(
        "sparse k = 2",
        quick::sparse(&a, &b, &c, 2, 0.1).unwrap().value,
        0.26469768,
        1e-8,
    );
    assert_eq!(unif(4), array![0.25, 0.25, 0.25, 0.25]);
}

#[test]
fn bad_input_gives_typed_errors() {
    let x = array![[0.0, 1.0], [2.0, 3.0]];
    let y = array![[1.0, 1.0]];
    let sq = GroundCost::SqEuclidean;
    let no_points = Array2::<f64>::zeros((0, 2));
    assert!(matches!(
        pairwise(&no_points, &y, sq),
        Err(Error::Empty { what: "x" })
    ));
    assert!(matches!(
        pairwise(&x, &no_points, sq),
        Err(Error::Empty { what: "y" })
    ));
    let no_coordinates = Array2::<f64>::zeros((2, 0));
    let r = pairwise(&no_coordinates, &no_coordinates, sq);
    assert!(
        matches!(r, Err(Error::Empty { what }) if what.contains("d = 0")),
        "{r:?}"
    );
    let r = pairwise(&x, &array![[1.0, 1.0, 1.0]], sq);
    assert!(
        matches!(
            r,
            Err(Error::ShapeMismatch {
                expected: 2,
                found: 3,
                ..
            })
        ),
        "{r:?}"
    );
    let r = pairwise(&x, &array![[1.0, f64::NAN]], sq);
    assert!(
        matches!(
            r,
            Err(Error::NonFinite {
                what: "y",
                position: Position::Matrix(0, 1),
                ..
            })
        ),
        "{r:?}"
    );
    let r = pairwise(&array![[f32::INFINITY, 0.0]], &array![[0.0f32, 0.0]], sq);
    assert!(
        matches!(
            r,
            Err(Error::NonFinite {
                what: "x",
                position: Position::Matrix(0, 0),
                ..
            })
        ),
        "{r:?}"
    );
    for (p, q, name) in [
        (0.0, 1.0, "p"),
        (-1.0, 1.0, "p"),
        (2.0, 0.0, "q"),
        (2.0, f64::NAN, "q"),
        (f64::INFINITY, 1.0, "p"),
    ] {
        let r = pairwise(&x, &y, GroundCost::Minkowski { p, q });
        assert!(
            matches!(r, Err(Error::InvalidParameter { name: n, .. }) if n == name),
            "p {p}, q {q}: {r:?}"
        );
    }
    // Finite coordinates whose cost overflows f64.
    let r = pairwise(&array![[1e300]], &array![[-1e300]], sq);
    assert!(
        matches!(
            r,
            Err(Error::NonFinite {
                position: Position::Matrix(0, 0),
                ..
            })
        ),
        "{r:?}"
    );
    // Uniform marginals need a nonempty cost.
    assert!(matches!(
        Problem::uniform(&Array2::<f64>::zeros((0, 3))),
        Err(Error::Empty { .. })
    ));
    assert!(matches!(
        Problem::uniform(&Array2::<f32>::zeros((3, 0))),
        Err(Error::Empty { .. })
    ));
    let r = Problem::uniform(&array![[0.0, f64::NAN]]);
    assert!(
        matches!(r, Err(Error::NonFinite { what: "cost", .. })),
        "{r:?}"
    );
    // Weights that do not match the points.
    let r = Problem::from_weighted_points(&array![1.0], &array![1.0], &x, &y, sq);
    assert!(
        matches!(
            r,
            Err(Error::ShapeMismatch {
                expected: 1,
                found: 2,
                ..
            })
        ),
        "{r:?}"
    );
    // The one-call functions: settings and problem errors.
    let (a, b, c) = (array![0.5, 0.5], array![1.0], array![[0.0], [1.0]]);
    assert!(matches!(
        quick::sparse(&a, &b, &c, 0, 0.1),
        Err(Error::InvalidK { k: 0, .. })
    ));
    assert!(matches!(
        quick::sparse(&a, &b, &c, 3, 0.1),
        Err(Error::InvalidK { k: 3, max: 2, .. })
    ));
    assert!(matches!(
        quick::sinkhorn(&a, &b, &c, 0.0),
        Err(Error::InvalidParameter {
            name: "epsilon",
            ..
        })
    ));
    assert!(matches!(
        quick::quadratic(&a, &b, &c, f64::NAN),
        Err(Error::InvalidParameter { name: "gamma", .. })
    ));
    assert!(matches!(
        quick::emd(&a, &array![1.0, 0.0], &c),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        quick::emd(&unif(0), &b, &c),
        Err(Error::Empty { what: "a" })
    ));
    let r = quick::emd(
        &array![0.5f32, f32::NAN],
        &array![1.0f32],
        &array![[0.0f32], [1.0]],
    );
    assert!(
        matches!(r, Err(Error::NonFinite { what: "a", .. })),
        "{r:?}"
    );
}

#[test]
fn cpu_default_tolerance_is_unchanged() {
    assert_eq!(DEFAULT_TOL, 1e-9);
    let p = golden_problem();
    let default = Sinkhorn::new(0.1).unwrap().solve(&p).unwrap();
    assert_eq!(
        default.termination,
        Termination::Converged(Criterion::MarginalError { tol: DEFAULT_TOL })
    );
    assert_same(
        "sinkhorn, default vs explicit 1e-9",
        &default,
        &Sinkhorn::new(0.1)
            .unwrap()
            .tol(DEFAULT_TOL)
            .unwrap()
            .solve(&p)
            .unwrap(),
    );
    assert_same(
        "quadratic, default vs explicit 1e-9",
        &SparseOt::quadratic(0.1).unwrap().solve(&p).unwrap(),
        &SparseOt::quadratic(0.1)
            .unwrap()
            .tol(DEFAULT_TOL)
            .unwrap()
            .solve(&p)
            .unwrap(),
    );
}

#[cfg(feature = "gpu")]
#[path = "common/gpu.rs"]
mod gpu_common;

#[cfg(feature = "gpu")]
mod gpu {
    use super::*;
    use sparse_ot::{Batch, Device, DEFAULT_SINKHORN_MAX_ITER, DEFAULT_TOL_F32};

    /// The f32 default tolerance of a Sinkhorn solve of `p` at `eps` (see `DEFAULT_TOL_F32`).
    fn sinkhorn_default(p: &Problem, eps: f64) -> f64 {
        let largest = p.a().iter().chain(p.b()).fold(0.0f64, |m, &x| m.max(x));
        let scale = p.cost().iter().fold(0.0f64, |m, &c| m.max(c.abs()));
        DEFAULT_TOL_F32 * largest * (scale / eps).max(1.0)
    }

    #[test]
    fn default_sinkhorn_converges_on_the_gpu() {
        let Some(ctx) = gpu_common::gpu() else { return };
        let device = Device::Gpu(ctx);
        let mut rng = Rng::new(29);
        let clouds = Problem::from_points(
            &cloud(&mut rng, 40, 2),
            &cloud(&mut rng, 30, 2),
            GroundCost::SqEuclidean,
        )
        .unwrap();
        for (name, p) in [("golden", golden_problem()), ("clouds", clouds)] {
            for eps in [0.1, 0.01] {
                let sol = Sinkhorn::new(eps).unwrap().solve_on(&p, &device).unwrap();
                let tol = sinkhorn_default(&p, eps);
                assert!(sol.converged(), "{name}, eps {eps}: {sol}");
                assert!(sol.iterations < DEFAULT_SINKHORN_MAX_ITER, "{sol}");
                let Termination::Converged(Criterion::MarginalError { tol: used }) =
                    sol.termination
                else {
                    panic!("{name}, eps {eps}: {sol}")
                };
                assert_close(&format!("{name} default tol"), used, tol, 1e-6 * tol);
                assert!(
                    sol.marginal_error_rows.max(sol.marginal_error_cols) <= tol,
                    "{sol}"
                );
                // f32 near the CPU's reference.
                let cpu = Sinkhorn::new(eps).unwrap().solve(&p).unwrap();
                assert_close(
                    &format!("{name} eps {eps} <T,C>"),
                    sol.transport_cost,
                    cpu.transport_cost,
                    100.0 * tol,
                );
            }
        }
        // A batch: every problem converges with its own default.
        let batch = Batch::shared_marginals(
            golden_problem().a(),
            golden_problem().b(),
            ndarray::stack![
                ndarray::Axis(0),
                golden_problem().cost(),
                golden_problem().cost().mapv(|c| 2.0 * c)
            ]
            .view(),
        )
        .unwrap();
        for (i, sol) in Sinkhorn::new(0.05)
            .unwrap()
            .solve_batch_on(&batch, &device)
            .into_iter()
            .enumerate()
        {
            let sol = sol.unwrap();
            assert!(sol.converged(), "batch problem {i}: {sol}");
        }
    }

    #[test]
    fn explicit_tolerances_are_used_as_given_on_the_gpu() {
        let Some(ctx) = gpu_common::gpu() else { return };
        let device = Device::Gpu(ctx);
        let p = golden_problem();
        // 1e-9 is below f32 resolution: whatever the outcome, it is not reported as met at another tolerance.
        let sol = Sinkhorn::new(0.1)
            .unwrap()
            .tol(1e-9)
            .unwrap()
            .solve_on(&p, &device)
            .unwrap();
        if let Termination::Converged(Criterion::MarginalError { tol }) = sol.termination {
            assert_eq!(tol, 1e-9, "{sol}");
        }
        let sol = Sinkhorn::new(0.1)
            .unwrap()
            .tol(1e-5)
            .unwrap()
            .solve_on(&p, &device)
            .unwrap();
        assert_eq!(
            sol.termination,
            Termination::Converged(Criterion::MarginalError { tol: 1e-5 }),
            "{sol}"
        );
        // The sparse solvers: the default converges (on the GPU, or continued in f64 on the CPU), and a
        // marginal criterion names the f32 default.
        for cfg in [
            SparseOt::quadratic(0.1).unwrap(),
            SparseOt::new(2, 0.1).unwrap(),
        ] {
            let sol = cfg.solve_on(&p, &device).unwrap();
            assert!(sol.converged(), "{sol}");
            if let Termination::Converged(Criterion::MarginalError { tol }) = sol.termination {
                let largest = p.a().iter().chain(p.b()).fold(0.0f64, |m, &x| m.max(x));
                assert_close("sparse default tol", tol, DEFAULT_TOL_F32 * largest, 1e-12);
            }
        }
    }
}
