//! Solves one problem on the CPU (f64) and on the GPU (f32) and prints the adapter, the differences and the
//! wall-clock times; then a batch of B smaller problems (B × m/4 × n/4), solved as one batch on each device
//! (on the GPU every step covers the whole batch).
//!
//! Run with `cargo run --release --example gpu_vs_cpu -- [m] [n] [B]` (default 256 × 192, B = 64). Times
//! include the upload, every readback and the plan download; on a software adapter (lavapipe) they are CPU
//! timings of an emulated GPU, not GPU timings.

use std::time::Instant;

use ndarray::{Array1, Array2, Array3};
use sparse_ot::gpu::GpuContext;
use sparse_ot::{Batch, Device, Problem, Sinkhorn, Solution, SparseOt};

fn problem(m: usize, n: usize) -> Problem {
    let x = |i: usize| (i as f64 * 0.618_033_988_75).fract();
    let y = |j: usize| (j as f64 * 0.414_213_562_37 + 0.1).fract();
    let a = Array1::from_elem(m, 1.0 / m as f64);
    let b = Array1::from_elem(n, 1.0 / n as f64);
    let cost = Array2::from_shape_fn((m, n), |(i, j)| (x(i) - y(j)).powi(2));
    Problem::new(a.view(), b.view(), cost.view()).expect("valid problem")
}

fn compare(what: &str, cpu: &Solution, t_cpu: f64, gpu: &Solution, t_gpu: f64) {
    let (dc, dg) = (cpu.plan.to_dense(), gpu.plan.to_dense());
    let plan_diff = dc
        .iter()
        .zip(dg.iter())
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    println!("{what}");
    println!(
        "  cpu: {:>9.3} ms  value {:.10}  <T,C> {:.10}  {}",
        1e3 * t_cpu,
        cpu.value,
        cpu.transport_cost,
        cpu.termination
    );
    println!(
        "  gpu: {:>9.3} ms  value {:.10}  <T,C> {:.10}  {}",
        1e3 * t_gpu,
        gpu.value,
        gpu.transport_cost,
        gpu.termination
    );
    println!(
        "  |value diff| {:.2e}  |<T,C> diff| {:.2e}  max |plan diff| {:.2e}  gpu marginal errors rows {:.2e} cols {:.2e}",
        (cpu.value - gpu.value).abs(),
        (cpu.transport_cost - gpu.transport_cost).abs(),
        plan_diff,
        gpu.marginal_error_rows,
        gpu.marginal_error_cols
    );
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed().as_secs_f64())
}

fn main() -> Result<(), sparse_ot::Error> {
    let mut args = std::env::args()
        .skip(1)
        .map(|s| s.parse::<usize>().expect("sizes are integers"));
    let m = args.next().unwrap_or(256);
    let n = args.next().unwrap_or(192);
    let nb = args.next().unwrap_or(64);
    let ctx = match GpuContext::shared() {
        Ok(ctx) => ctx,
        Err(e) => {
            println!("no GPU adapter ({e}); nothing to compare");
            return Ok(());
        }
    };
    let l = ctx.limits();
    println!(
        "adapter: {} ({}), max storage binding {} MiB, max workgroups/dim {}",
        ctx.adapter_name(),
        ctx.backend(),
        l.max_storage_buffer_binding_size >> 20,
        l.max_compute_workgroups_per_dimension
    );
    let p = problem(m, n);
    let gpu = Device::Gpu(ctx.clone());
    println!("problem {m} x {n}, uniform marginals, squared distances on [0, 1]");

    let sk = Sinkhorn::new(0.01)?.tol(1e-6)?;
    // One warm-up GPU solve compiles the pipelines; the timed one reuses them and the workspace.
    sk.solve_on(&p, &gpu)?;
    let (c, tc) = timed(|| sk.solve_on(&p, &Device::Cpu));
    let (g, tg) = timed(|| sk.solve_on(&p, &gpu));
    compare("sinkhorn eps = 0.01, tol 1e-6", &c?, tc, &g?, tg);

    let k = 4.min(m);
    let sp = SparseOt::new(k, 0.1)?.tol(1e-6)?;
    sp.solve_on(&p, &gpu)?;
    let (c, tc) = timed(|| sp.solve_on(&p, &Device::Cpu));
    let (g, tg) = timed(|| sp.solve_on(&p, &gpu));
    compare(
        &format!("sparse semi-dual k = {k}, gamma = 0.1, tol 1e-6"),
        &c?,
        tc,
        &g?,
        tg,
    );
    batches(&gpu, nb, (m / 4).max(2), (n / 4).max(2))
}

/// B problems of shape m × n (problem p's points shifted by p/B), solved as one batch on each device.
fn batches(gpu: &Device, nb: usize, m: usize, n: usize) -> Result<(), sparse_ot::Error> {
    let x = |i: usize| (i as f64 * 0.618_033_988_75).fract();
    let y = |j: usize| (j as f64 * 0.414_213_562_37 + 0.1).fract();
    let cost = Array3::from_shape_fn((nb, m, n), |(p, i, j)| {
        (x(i) + p as f64 / nb as f64 - y(j)).powi(2)
    });
    let batch = Batch::shared_marginals(
        Array1::from_elem(m, 1.0 / m as f64).view(),
        Array1::from_elem(n, 1.0 / n as f64).view(),
        cost.view(),
    )?;
    println!("batch of {nb} problems {m} x {n}");
    type Results = Vec<Result<Solution, sparse_ot::Error>>;
    let report = |what: &str, cpu: Results, tc: f64, gpu: Results, tg: f64| {
        let (mut dv, mut converged) = (0.0f64, [0usize; 2]);
        for (c, g) in cpu.iter().zip(&gpu) {
            if let (Ok(c), Ok(g)) = (c, g) {
                dv = dv.max((c.value - g.value).abs());
                converged[0] += usize::from(c.converged());
                converged[1] += usize::from(g.converged());
            }
        }
        println!("{what}");
        println!(
            "  cpu: {:>9.3} ms ({:.3} ms per problem), {} of {nb} converged",
            1e3 * tc,
            1e3 * tc / nb as f64,
            converged[0]
        );
        println!(
            "  gpu: {:>9.3} ms ({:.3} ms per problem), {} of {nb} converged; max |value difference| {dv:.2e}",
            1e3 * tg,
            1e3 * tg / nb as f64,
            converged[1]
        );
    };
    let sk = Sinkhorn::new(0.01)?.tol(1e-6)?;
    sk.solve_batch_on(&batch, gpu);
    let (c, tc) = timed(|| sk.solve_batch_on(&batch, &Device::Cpu));
    let (g, tg) = timed(|| sk.solve_batch_on(&batch, gpu));
    report("batched sinkhorn eps = 0.01, tol 1e-6", c, tc, g, tg);
    let k = 4.min(m);
    let sp = SparseOt::new(k, 0.1)?.tol(1e-6)?;
    sp.solve_batch_on(&batch, gpu);
    let (c, tc) = timed(|| sp.solve_batch_on(&batch, &Device::Cpu));
    let (g, tg) = timed(|| sp.solve_batch_on(&batch, gpu));
    report(
        &format!("batched sparse semi-dual k = {k}, gamma = 0.1, tol 1e-6 (L-BFGS in lockstep on the GPU)"),
        c,
        tc,
        g,
        tg,
    );
    Ok(())
}
