//! CPU benches: one Sinkhorn iteration (f64 and f32 inner loops), full sparse semi-dual and dual solves, and a
//! quadratic solve, on n = m uniform points in [0,1]² with squared-Euclidean cost scaled to max 1 and uniform
//! marginals (deterministic splitmix64 points).
//!
//! A Sinkhorn iteration is timed through the public API as t(solve with 2 + N iterations) − t₀, where t₀ is
//! the best of five solves with 2 iterations, so the one-off setup (cost copies) and the final plan assembly
//! cancel out (noise in them can only inflate the estimate). `benches/compare_pot.py` compares
//! the same problems against POT.

#[path = "../tests/common/data.rs"]
mod data;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use data::point_cloud_problem;
use sparse_ot::{Formulation, Precision, Sinkhorn, SparseOt};

fn sinkhorn_iteration(c: &mut Criterion) {
    let mut group = c.benchmark_group("sinkhorn_iteration_eps0.01");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for n in [500, 1000, 2000] {
        let p = point_cloud_problem(n, n, 42);
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
        let p = point_cloud_problem(n, n, 42);
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
        let p = point_cloud_problem(n, n, 42);
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
