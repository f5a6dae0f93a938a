//! CPU benches: one Sinkhorn iteration (f64 and f32 inner loops), full sparse semi-dual and dual solves, and a
//! quadratic solve, on n = m uniform points in [0,1]² with squared-Euclidean cost scaled to max 1 and uniform
//! marginals (deterministic splitmix64 points).
//!
//! A Sinkhorn iteration is timed through the public API as t(solve with 2 + N iterations) − t₀, where t₀ is
//! the best of five solves with 2 iterations, so the one-off setup (cost copies) and the final plan assembly
//! cancel out (noise in them can only inflate the estimate). `benches/compare_pot.py` compares
//! the same problems against POT.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{Array1, Array2};
use sparse_ot::{Formulation, Precision, Problem, Sinkhorn, SparseOt};

/// n uniform points in [0,1]² per side (splitmix64), squared-Euclidean cost / max, uniform marginals.
fn uniform_points_problem(n: usize, seed: u64) -> Problem {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let x: Vec<[f64; 2]> = (0..n).map(|_| [next(), next()]).collect();
    let y: Vec<[f64; 2]> = (0..n).map(|_| [next(), next()]).collect();
    let mut cost = Array2::from_shape_fn((n, n), |(i, j)| {
        (x[i][0] - y[j][0]).powi(2) + (x[i][1] - y[j][1]).powi(2)
    });
    let cmax = cost.iter().cloned().fold(0.0, f64::max);
    cost /= cmax;
    let marg = Array1::from_elem(n, 1.0 / n as f64);
    Problem::new(marg.view(), marg.view(), cost.view()).expect("valid problem")
}

fn sinkhorn_iteration(c: &mut Criterion) {
    let mut group = c.benchmark_group("sinkhorn_iteration_eps0.01");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for n in [500, 1000, 2000] {
        let p = uniform_points_problem(n, 42);
        group.throughput(Throughput::Elements((n * n) as u64));
        for (name, precision) in [("f64", Precision::F64), ("f32", Precision::F32)] {
            let cfg = |iters: usize| {
                Sinkhorn::new(0.01)
                    .unwrap()
                    .tol(0.0)
                    .unwrap()
                    .epsilon_scaling(None)
                    .unwrap()
                    .precision(precision)
                    .max_iter(iters)
            };
            // The fixed part (cost copies, first g-update, plan assembly): the best of a few solves with
            // `BASE` iterations. Subtracting the best keeps every sample positive; noise in the fixed part can
            // only add to the per-iteration estimate.
            const BASE: usize = 2;
            let fixed = (0..5)
                .map(|_| {
                    let t = Instant::now();
                    cfg(BASE).solve(&p).unwrap();
                    t.elapsed()
                })
                .min()
                .unwrap();
            group.bench_with_input(BenchmarkId::new(name, n), &p, |b, p| {
                b.iter_custom(|iters| {
                    let t = Instant::now();
                    cfg(BASE + iters as usize).solve(p).unwrap();
                    t.elapsed().saturating_sub(fixed)
                })
            });
        }
    }
    group.finish();
}

fn sparse_solves(c: &mut Criterion) {
    let mut group = c.benchmark_group("sparse_k5_gamma0.1");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for n in [200, 500, 1000] {
        let p = uniform_points_problem(n, 42);
        group.throughput(Throughput::Elements((n * n) as u64));
        for formulation in [Formulation::SemiDual, Formulation::Dual] {
            let cfg = SparseOt::new(5, 0.1).unwrap().formulation(formulation);
            group.bench_with_input(BenchmarkId::new(formulation.to_string(), n), &p, |b, p| {
                b.iter(|| cfg.solve(p).unwrap())
            });
        }
    }
    group.finish();
}

fn quadratic_solve(c: &mut Criterion) {
    let mut group = c.benchmark_group("quadratic_gamma0.1");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for n in [100, 200] {
        let p = uniform_points_problem(n, 42);
        group.throughput(Throughput::Elements((n * n) as u64));
        let cfg = SparseOt::quadratic(0.1).unwrap();
        group.bench_with_input(BenchmarkId::new("semi-dual", n), &p, |b, p| {
            b.iter(|| cfg.solve(p).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, sinkhorn_iteration, sparse_solves, quadratic_solve);
criterion_main!(benches);
