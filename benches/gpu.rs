//! CPU vs GPU: Sinkhorn solves of exactly 1 and 101 iterations (no ε-scaling; the difference of the two is
//! the cost of 100 iterations, the rest is upload, readback and plan assembly) and a sparse semi-dual solve,
//! at several sizes. GPU timings include the device sync (every solve reads its result back
//! and waits on the queue), so nothing is left in flight when the clock stops.
//!
//! `sinkhorn_batch` times B problems of one shape (100 iterations each) solved as one batch
//! (`Sinkhorn::solve_batch_on`: two dispatches per iteration for the whole batch) against the same problems
//! solved one by one on the same device.
//!
//! Run `cargo bench --bench gpu`. Without an adapter only the CPU side runs. On a software adapter
//! (lavapipe) the "gpu" numbers are timings of an emulation on the CPU, not of a GPU.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{Array1, Array2, Array3};
use sparse_ot::gpu::GpuContext;
use sparse_ot::{Batch, Device, Problem, Sinkhorn, SparseOt};

fn problem(m: usize, n: usize) -> Problem {
    let x = |i: usize| (i as f64 * 0.618_033_988_75).fract();
    let y = |j: usize| (j as f64 * 0.414_213_562_37 + 0.1).fract();
    let a = Array1::from_elem(m, 1.0 / m as f64);
    let b = Array1::from_elem(n, 1.0 / n as f64);
    let cost = Array2::from_shape_fn((m, n), |(i, j)| (x(i) - y(j)).powi(2));
    Problem::new(a.view(), b.view(), cost.view()).expect("valid problem")
}

fn devices() -> Vec<(&'static str, Device)> {
    let mut d = vec![("cpu", Device::Cpu)];
    match GpuContext::shared() {
        Ok(ctx) => {
            eprintln!("gpu adapter: {} ({})", ctx.adapter_name(), ctx.backend());
            d.push(("gpu", Device::Gpu(ctx)));
        }
        Err(e) => eprintln!("SKIPPED gpu side: no GPU adapter ({e})"),
    }
    d
}

/// Times `iters` calls of `f` (each ends with a readback, i.e. a device sync).
fn time_solves(iters: u64, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed()
}

/// Sinkhorn at ε = 0.05 without ε-scaling, running exactly `iterations` iterations (tol 0).
fn fixed_iterations(iterations: usize) -> Sinkhorn {
    Sinkhorn::new(0.05)
        .unwrap()
        .epsilon_scaling(None)
        .unwrap()
        .max_iter(iterations)
        .tol(0.0)
        .unwrap()
}

fn sinkhorn_iteration(c: &mut Criterion) {
    let mut group = c.benchmark_group("sinkhorn_iterations");
    group.sample_size(10);
    let devices = devices();
    for &(m, n) in &[(256usize, 256usize), (1024, 1024)] {
        let p = problem(m, n);
        for iterations in [1usize, 101] {
            let cfg = fixed_iterations(iterations);
            group.throughput(Throughput::Elements((iterations * m * n) as u64));
            for (name, device) in &devices {
                cfg.solve_on(&p, device).unwrap(); // warm-up: pipelines and workspace
                let id = BenchmarkId::new(format!("{name}/{iterations}it"), format!("{m}x{n}"));
                group.bench_with_input(id, &p, |bch, p| {
                    bch.iter_custom(|iters| {
                        time_solves(iters, || drop(cfg.solve_on(p, device).unwrap()))
                    })
                });
            }
        }
    }
    group.finish();
}

fn sparse_solve(c: &mut Criterion) {
    let mut group = c.benchmark_group("sparse_semidual_solve");
    group.sample_size(10);
    let devices = devices();
    for &(m, n) in &[(64usize, 64usize), (256, 256)] {
        let p = problem(m, n);
        let cfg = SparseOt::new(8, 0.1)
            .unwrap()
            .tol(1e-5)
            .unwrap()
            .max_iter(200);
        group.throughput(Throughput::Elements((m * n) as u64));
        for (name, device) in &devices {
            cfg.solve_on(&p, device).unwrap();
            group.bench_with_input(BenchmarkId::new(*name, format!("{m}x{n}")), &p, |bch, p| {
                bch.iter_custom(|iters| {
                    time_solves(iters, || drop(cfg.solve_on(p, device).unwrap()))
                })
            });
        }
    }
    group.finish();
}

/// B problems of one shape with shifted point sets (each its own cost), uniform marginals.
fn batch(nb: usize, m: usize, n: usize) -> Batch {
    let x = |i: usize, p: usize| ((i + 7 * p) as f64 * 0.618_033_988_75).fract();
    let y = |j: usize| (j as f64 * 0.414_213_562_37 + 0.1).fract();
    let cost = Array3::from_shape_fn((nb, m, n), |(p, i, j)| (x(i, p) - y(j)).powi(2));
    let a = Array1::from_elem(m, 1.0 / m as f64);
    let b = Array1::from_elem(n, 1.0 / n as f64);
    Batch::shared_marginals(a.view(), b.view(), cost.view()).expect("valid batch")
}

fn sinkhorn_batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("sinkhorn_batch");
    group.sample_size(10);
    let devices = devices();
    let iterations = 100;
    let cfg = fixed_iterations(iterations);
    for &(nb, m, n) in &[(64usize, 64usize, 64usize), (16, 256, 256)] {
        let batch = batch(nb, m, n);
        let problems: Vec<Problem> = (0..nb).map(|i| batch.problem(i).unwrap()).collect();
        group.throughput(Throughput::Elements((nb * iterations * m * n) as u64));
        let size = format!("{nb}x{m}x{n}");
        for (name, device) in &devices {
            // Warm-up: pipelines and both workspaces (batch of B and single problem).
            cfg.solve_batch_on(&batch, device);
            cfg.solve_on(&problems[0], device).unwrap();
            let id = BenchmarkId::new(format!("{name}/batched"), &size);
            group.bench_function(id, |bch| {
                bch.iter_custom(|iters| {
                    time_solves(iters, || {
                        assert!(cfg.solve_batch_on(&batch, device).iter().all(Result::is_ok))
                    })
                })
            });
            let id = BenchmarkId::new(format!("{name}/one_by_one"), &size);
            group.bench_function(id, |bch| {
                bch.iter_custom(|iters| {
                    time_solves(iters, || {
                        for p in &problems {
                            drop(cfg.solve_on(p, device).unwrap());
                        }
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, sinkhorn_iteration, sparse_solve, sinkhorn_batch);
criterion_main!(benches);
