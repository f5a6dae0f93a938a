//! The device work a GPU solve reports (`Solution::gpu_work`), counted by the host from each dispatch's
//! geometry: per-iteration figures by differencing two runs of N0 and N1 iterations (set-up cancels), on
//! lavapipe in CI. These are counts, not timings.

#[path = "common/gpu.rs"]
mod gpu_common;

use gpu_common::{gpu, private_context};
use ndarray::{Array1, Array2};
use sparse_ot::{Device, GpuWork, Problem, Sinkhorn, SparseOt};

fn random_problem(m: usize, n: usize, seed: u64) -> Problem {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    let cost = Array2::from_shape_fn((m, n), |_| next());
    let a = Array1::from_elem(m, 1.0 / m as f64);
    let b = Array1::from_elem(n, 1.0 / n as f64);
    Problem::new(&a, &b, &cost).unwrap()
}

/// The work of a fixed-iteration Sinkhorn run (tol 0: exactly `iterations`, no ε schedule).
fn sinkhorn_work(device: &Device, p: &Problem, iterations: usize) -> GpuWork {
    let sol = Sinkhorn::new(0.1)
        .unwrap()
        .epsilon_scaling(None)
        .unwrap()
        .tol(0.0)
        .unwrap()
        .max_iter(iterations)
        .solve_on(p, device)
        .unwrap();
    assert_eq!(sol.iterations, iterations);
    sol.gpu_work.expect("a GPU solve reports its work")
}

#[test]
fn sinkhorn_reads_one_copy_of_the_cost_once_per_iteration() {
    let Some(shared) = gpu() else { return };
    let device = Device::Gpu(private_context(&shared));
    // n = 200 fits the registers of one workgroup on every device (16 entries × at least 256 threads): one
    // pass per iteration. n = 20 000 exceeds 16 × 1024 threads on any device: rows, then columns, from the
    // same row-major copy (two passes).
    for (m, n, passes) in [(300, 200, 1u64), (3, 20_000, 2)] {
        let p = random_problem(m, n, 7);
        let (w0, w1) = (
            sinkhorn_work(&device, &p, 20),
            sinkhorn_work(&device, &p, 60),
        );
        let d = w1.since(&w0);
        let per_iteration = 4 * (m * n) as u64 * passes;
        assert_eq!(d.cost_bytes_read, 40 * per_iteration, "{m}x{n}: {d:?}");
        // One blocking readback per check (every 10 iterations), nothing else in between.
        assert_eq!(d.readbacks, 4, "{m}x{n}: {d:?}");
        // Passes and the merge per iteration, one reduction per check.
        assert_eq!(d.dispatches, 40 * (passes + 1) + 4, "{m}x{n}: {d:?}");
    }
}

#[test]
fn the_two_pass_sinkhorn_agrees_with_the_cpu() {
    let Some(shared) = gpu() else { return };
    let device = Device::Gpu(shared);
    let p = random_problem(3, 20_000, 3);
    let cfg = Sinkhorn::new(0.1).unwrap().tol(1e-6).unwrap();
    let g = cfg.solve_on(&p, &device).unwrap();
    let c = cfg.solve(&p).unwrap();
    assert!(g.converged(), "{g}");
    // f32 potentials carry ~1e-7 of the cost scale each; at ε = 0.1 a transport cost near 0.0001 moves by
    // about 1e-6 relative, well inside 1e-5 absolute.
    assert!(
        (g.transport_cost - c.transport_cost).abs() <= 1e-5,
        "{} vs {}",
        g.transport_cost,
        c.transport_cost
    );
}

#[test]
fn cpu_solves_report_no_device_work_and_gpu_solves_do() {
    let p = random_problem(20, 15, 1);
    let cfg = SparseOt::new(3, 0.1).unwrap();
    assert_eq!(cfg.solve(&p).unwrap().gpu_work, None);
    let Some(shared) = gpu() else { return };
    let sol = cfg.solve_on(&p, &Device::Gpu(shared)).unwrap();
    let w = sol.gpu_work.expect("a GPU solve reports its work");
    // Each L-BFGS evaluation reads every column at least once and waits for its scalars.
    assert!(
        w.cost_bytes_read >= 4 * 300 * sol.iterations as u64,
        "{w:?}"
    );
    assert!(w.readbacks >= 1 && w.dispatches >= w.readbacks, "{w:?}");
}

/// A sparse solve (k = 8, γ = 0.1) of exactly `iterations` L-BFGS iterations (tol 0: a fixed budget).
fn fixed_budget_sparse(
    p: &Problem,
    device: &Device,
    formulation: sparse_ot::Formulation,
    iterations: usize,
) -> sparse_ot::Solution {
    SparseOt::new(8, 0.1)
        .unwrap()
        .formulation(formulation)
        .tol(0.0)
        .unwrap()
        .max_iter(iterations)
        .solve_on(p, device)
        .unwrap()
}

/// The sparse kernels read each column once per objective evaluation (into registers; every later walk of
/// the top-k search, the bisection for θ and the terms is over them) and the row sums once: at most
/// 2 × 4mn bytes per round trip to the host, whatever the L-BFGS line search does (the bound is
/// 4 × 4mn per evaluation). m = 300 keeps the default workgroup; m = 1500 needs 128 threads per column.
#[test]
fn sparse_evaluations_read_each_column_once() {
    let Some(shared) = gpu() else { return };
    let device = Device::Gpu(private_context(&shared));
    for (m, n) in [(300, 200), (1500, 40)] {
        let p = random_problem(m, n, 5);
        for formulation in [
            sparse_ot::Formulation::SemiDual,
            sparse_ot::Formulation::Dual,
        ] {
            let run = |iters| {
                fixed_budget_sparse(&p, &device, formulation, iters)
                    .gpu_work
                    .expect("a GPU solve reports its work")
            };
            let d = run(30).since(&run(10));
            // Cached columns (and, at m = 1500, a 128-thread workgroup) give the CPU's answer: values agree
            // to f32's 1e-6 of the objective's scale, ~1e-3 here (γ = 0.1, costs in [0, 1)).
            let cfg = SparseOt::new(8, 0.1).unwrap().formulation(formulation);
            let (g, c) = (cfg.solve_on(&p, &device).unwrap(), cfg.solve(&p).unwrap());
            assert!(
                (g.value - c.value).abs() <= 1e-5,
                "{m}x{n} {formulation}: {} vs {}",
                g.value,
                c.value
            );
            let per_round = 2 * 4 * (m * n) as u64;
            assert!(d.readbacks > 0, "{m}x{n} {formulation}: {d:?}");
            assert!(
                d.cost_bytes_read <= d.readbacks * per_round,
                "{m}x{n} {formulation}: {d:?}, more than 2 x 4mn per readback"
            );
        }
    }
}

/// An L-BFGS iteration on the GPU waits for the device once: the round that accepts a step and computes the
/// next direction also evaluates that direction's first trial point (at the step the direction kernel
/// chose), so only line-search retries cost further readbacks, and those are counted apart
/// (`search_readbacks`). Differencing runs of 10 and 30 iterations cancels the start and the end.
#[test]
fn sparse_lbfgs_iterations_wait_for_the_device_once() {
    let Some(shared) = gpu() else { return };
    let device = Device::Gpu(private_context(&shared));
    let p = random_problem(300, 200, 7);
    for formulation in [
        sparse_ot::Formulation::SemiDual,
        sparse_ot::Formulation::Dual,
    ] {
        let run = |iters| {
            let sol = fixed_budget_sparse(&p, &device, formulation, iters);
            (
                sol.iterations,
                sol.gpu_work.expect("a GPU solve reports its work"),
            )
        };
        let ((i0, w0), (i1, w1)) = (run(10), run(30));
        let d = w1.since(&w0);
        let iterations = (i1 - i0) as u64;
        assert_eq!(iterations, 20, "{formulation}");
        assert!(
            d.readbacks - d.search_readbacks <= iterations,
            "{formulation}: {d:?} over {iterations} iterations"
        );
        // Every round waits once; the retries are a minority on this well-conditioned problem.
        assert!(d.search_readbacks < iterations, "{formulation}: {d:?}");
        // A converging solve: one readback per iteration, plus its retries, plus a fixed few at the ends.
        let sol = SparseOt::new(8, 0.1)
            .unwrap()
            .formulation(formulation)
            .solve_on(&p, &device)
            .unwrap();
        let w = sol.gpu_work.expect("a GPU solve reports its work");
        assert!(
            w.readbacks - w.search_readbacks <= sol.iterations as u64 + 3,
            "{formulation}: {w:?} over {} iterations",
            sol.iterations
        );
    }
}
