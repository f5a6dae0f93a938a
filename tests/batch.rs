//! Batches: batched results equal one-by-one results exactly, bad problems fail alone, batched operators.

#[path = "common/monitor.rs"]
mod monitor_common;

use ndarray::{Array1, Array2, Array3, Axis};
use sparse_ot::ops::{
    sparse_simplex_projection, sparse_simplex_projection_batch, top_k_indices, top_k_indices_batch,
    top_k_mask, top_k_mask_batch,
};
use sparse_ot::{Batch, Error, ExactOt, Formulation, Sinkhorn, Solution, SparseOt};

/// B problems of shape m × n with distinct costs and marginals (all valid).
fn batch_data(nb: usize, m: usize, n: usize) -> (Array2<f64>, Array2<f64>, Array3<f64>) {
    let a = Array2::from_shape_fn((nb, m), |(p, i)| 1.0 + ((i * 7 + p * 3) % 5) as f64);
    let a = &a / &a.sum_axis(Axis(1)).insert_axis(Axis(1));
    let b = Array2::from_shape_fn((nb, n), |(p, j)| 1.0 + ((j * 5 + p) % 4) as f64);
    let b = &b / &b.sum_axis(Axis(1)).insert_axis(Axis(1));
    let cost = Array3::from_shape_fn((nb, m, n), |(p, i, j)| {
        let x = i as f64 / m as f64 + 0.05 * p as f64;
        let y = (j as f64 / n as f64).powi(2);
        (x - y).powi(2)
    });
    (a, b, cost)
}

#[track_caller]
fn assert_same(batched: &Solution, single: &Solution, what: &str) {
    assert_eq!(batched.plan, single.plan, "{what}: plans differ");
    assert_eq!(batched.alpha, single.alpha, "{what}: alpha differs");
    assert_eq!(batched.beta, single.beta, "{what}: beta differs");
    assert_eq!(
        batched.value.to_bits(),
        single.value.to_bits(),
        "{what}: value differs"
    );
    assert_eq!(
        batched.iterations, single.iterations,
        "{what}: iterations differ"
    );
    assert_eq!(
        batched.termination, single.termination,
        "{what}: termination differs"
    );
}

#[test]
fn batched_equals_one_by_one_for_every_formulation() {
    let (a, b, cost) = batch_data(5, 9, 7);
    let batch = Batch::new(a.view(), b.view(), cost.view()).unwrap();
    assert_eq!((batch.len(), batch.m(), batch.n()), (5, 9, 7));
    let solvers = [
        ("semi-dual k=3", SparseOt::new(3, 0.1).unwrap()),
        (
            "dual k=3",
            SparseOt::new(3, 0.1)
                .unwrap()
                .formulation(Formulation::Dual),
        ),
        ("quadratic", SparseOt::quadratic(0.1).unwrap()),
        (
            "row-sparse k=2",
            SparseOt::new(2, 0.1).unwrap().row_sparsity(),
        ),
    ];
    for (name, cfg) in solvers {
        let results = cfg.solve_batch(&batch);
        assert_eq!(results.len(), 5);
        for (i, r) in results.iter().enumerate() {
            let single = cfg.solve(&batch.problem(i).unwrap()).unwrap();
            assert_same(
                r.as_ref().unwrap(),
                &single,
                &format!("{name}, problem {i}"),
            );
        }
    }
    for (i, r) in ExactOt::new().solve_batch(&batch).iter().enumerate() {
        let single = ExactOt::new().solve(&batch.problem(i).unwrap()).unwrap();
        assert_same(r.as_ref().unwrap(), &single, &format!("exact, problem {i}"));
    }
    let sk = Sinkhorn::new(0.05).unwrap();
    for (i, r) in sk.solve_batch(&batch).iter().enumerate() {
        let single = sk.solve(&batch.problem(i).unwrap()).unwrap();
        assert_same(
            r.as_ref().unwrap(),
            &single,
            &format!("sinkhorn, problem {i}"),
        );
        assert_eq!(r.as_ref().unwrap().dense_plan(), single.dense_plan());
    }
}

#[test]
fn shared_marginals_broadcast() {
    let (_, _, cost) = batch_data(3, 6, 4);
    let a = Array1::from_elem(6, 1.0 / 6.0);
    let b = Array1::from_elem(4, 0.25);
    let batch = Batch::shared_marginals(a.view(), b.view(), cost.view()).unwrap();
    for p in 0..3 {
        assert_eq!(batch.a().row(p), a);
        assert_eq!(batch.b().row(p), b);
    }
    let f32_batch = Batch::from_f32(
        batch.a().mapv(|x| x as f32).view(),
        batch.b().mapv(|x| x as f32).view(),
        cost.mapv(|x| x as f32).view(),
    )
    .unwrap();
    assert_eq!(f32_batch.len(), 3);
}

#[test]
fn a_bad_problem_fails_alone() {
    let (mut a, mut b, mut cost) = batch_data(6, 8, 5);
    cost[[1, 3, 2]] = f64::NAN;
    a[[3, 0]] = -0.1; // negative mass
    b[[4, 1]] += 0.5; // unequal total masses
    let batch = Batch::new(a.view(), b.view(), cost.view()).unwrap();
    let cfg = SparseOt::new(2, 0.1).unwrap();
    let results = cfg.solve_batch(&batch);
    assert!(
        matches!(results[1], Err(Error::NonFinite { what: "cost", .. })),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(results[3], Err(Error::NegativeMass { what: "a", .. })),
        "{:?}",
        results[3]
    );
    assert!(
        matches!(results[4], Err(Error::MassMismatch { .. })),
        "{:?}",
        results[4]
    );
    // The good problems are solved exactly as alone.
    let (a0, b0, c0) = batch_data(6, 8, 5);
    let clean = Batch::new(a0.view(), b0.view(), c0.view()).unwrap();
    for i in [0, 2, 5] {
        let sol = results[i].as_ref().unwrap();
        assert_same(
            sol,
            &cfg.solve(&clean.problem(i).unwrap()).unwrap(),
            &format!("problem {i}"),
        );
    }
    let sk = Sinkhorn::new(0.1).unwrap().solve_batch(&batch);
    assert!(sk[1].is_err() && sk[3].is_err() && sk[4].is_err());
    assert!(sk[0].is_ok() && sk[2].is_ok() && sk[5].is_ok());
    // A per-problem solver error (k > m) is reported for every problem, not a panic.
    let too_big = SparseOt::new(9, 0.1).unwrap().solve_batch(&clean);
    assert!(too_big
        .iter()
        .all(|r| matches!(r, Err(Error::InvalidK { k: 9, max: 8, .. }))));
}

#[test]
fn shape_errors() {
    let (a, b, cost) = batch_data(3, 4, 5);
    let empty = Array3::<f64>::zeros((0, 4, 5));
    assert!(matches!(
        Batch::new(
            a.slice(ndarray::s![..0, ..]),
            b.slice(ndarray::s![..0, ..]),
            empty.view()
        ),
        Err(Error::Empty { what: "batch" })
    ));
    assert!(matches!(
        Batch::new(a.slice(ndarray::s![..2, ..]), b.view(), cost.view()),
        Err(Error::ShapeMismatch {
            expected: 3,
            found: 2,
            ..
        })
    ));
    assert!(matches!(
        Batch::new(a.view(), b.slice(ndarray::s![.., ..4]), cost.view()),
        Err(Error::ShapeMismatch {
            expected: 5,
            found: 4,
            ..
        })
    ));
    let flat = Array3::<f64>::zeros((3, 0, 5));
    assert!(matches!(
        Batch::new(a.slice(ndarray::s![.., ..0]), b.view(), flat.view()),
        Err(Error::Empty { .. })
    ));
    let batch = Batch::new(a.view(), b.view(), cost.view()).unwrap();
    assert!(matches!(batch.problem(3), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(
        batch.with_mass_tolerance(-1.0),
        Err(Error::InvalidParameter { .. })
    ));
}

#[test]
fn batched_operators_equal_per_matrix() {
    let (_, _, cost) = batch_data(4, 7, 5);
    let scores = cost.mapv(|c| -c);
    let idx = top_k_indices_batch(scores.view(), 3).unwrap();
    let mask = top_k_mask_batch(scores.view(), 3).unwrap();
    let proj = sparse_simplex_projection_batch(scores.view(), 3).unwrap();
    assert_eq!(idx.dim(), (4, 3, 5));
    for p in 0..4 {
        let s = scores.index_axis(Axis(0), p);
        assert_eq!(idx.index_axis(Axis(0), p), top_k_indices(s, 3).unwrap());
        assert_eq!(mask.index_axis(Axis(0), p), top_k_mask(s, 3).unwrap());
        assert_eq!(
            proj.index_axis(Axis(0), p),
            sparse_simplex_projection(s, 3).unwrap()
        );
    }
    let mut bad = scores.clone();
    bad[[2, 1, 1]] = f64::INFINITY;
    match top_k_mask_batch(bad.view(), 3) {
        Err(Error::InBatch { index: 2, source }) => {
            assert!(matches!(*source, Error::NonFinite { .. }))
        }
        other => panic!("expected InBatch(2), got {other:?}"),
    }
    assert!(matches!(
        top_k_indices_batch(scores.view(), 8),
        Err(Error::InBatch { index: 0, .. })
    ));
    assert!(matches!(
        top_k_indices_batch(Array3::<f64>::zeros((0, 2, 2)).view(), 1),
        Err(Error::Empty { what: "batch" })
    ));
}

/// Batch progress counts every problem once, rejected ones included, and ends at the batch size.
#[test]
fn batch_progress_counts_every_problem() {
    let (a, b, mut cost) = batch_data(5, 6, 4);
    cost[[3, 0, 0]] = f64::NAN;
    let batch = Batch::new(a.view(), b.view(), cost.view()).unwrap();
    let (monitor, seen) = monitor_common::finished_recorder();
    let out = SparseOt::new(2, 0.5)
        .unwrap()
        .monitor(monitor)
        .solve_batch_on(&batch, &sparse_ot::Device::Cpu);
    assert!(out[3].is_err() && out.iter().filter(|r| r.is_ok()).count() == 4);
    let seen = monitor_common::sorted(&seen);
    assert_eq!(seen, (1..=5).map(|d| (d, 5)).collect::<Vec<_>>());
}
