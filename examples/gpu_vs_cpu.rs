//! Solves one problem on the CPU (f64) and on the GPU (f32) and prints the adapter, the differences and the
//! wall-clock times; then a batch of B smaller problems (B × m/4 × n/4), solved as one batch on each device
//! (on the GPU every step covers the whole batch).
//!
//! Run with `cargo run --release --example gpu_vs_cpu -- [m] [n] [B]` (default 256 × 192, B = 64 on a
//! hardware adapter). Times include the upload, every readback and the plan download.
//!
//! On a software adapter (Mesa's lavapipe, which emulates a GPU on the CPU) the times are CPU timings of an
//! emulated GPU, not GPU timings, and the default sizes are small (64 × 48, B = 8) so that the run ends
//! soon; a one-line warning says so. `--big` asks for the hardware sizes there, and sizes given on the
//! command line are always used as given. Solves that take more than a second report their progress on
//! stderr (`--progress` for logs, `--quiet` for none).

#[path = "common/progress.rs"]
mod progress;
#[path = "common/quiet_probe.rs"]
mod quiet_probe;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use ndarray::{Array1, Array2, Array3};
use progress::{ProgressArgs, Reporter};
use sparse_ot::gpu::GpuContext;
use sparse_ot::{Batch, Device, Monitor, Problem, Sinkhorn, Solution, SparseOt};

/// Sizes on a hardware adapter: m, n, B.
const HARDWARE_SIZES: (usize, usize, usize) = (256, 192, 64);
/// Sizes on a software adapter unless --big: m, n, B.
const SOFTWARE_SIZES: (usize, usize, usize) = (64, 48, 8);

/// Solve one problem and a batch on the CPU (f64) and on the GPU (f32); compare the results and the times.
#[derive(Debug, Parser)]
#[command(name = "gpu_vs_cpu")]
struct Args {
    /// Rows of the single problem [default: 256; 64 on a software adapter].
    m: Option<usize>,
    /// Columns of the single problem [default: 192; 48 on a software adapter].
    n: Option<usize>,
    /// Problems in the batch, each of max(m/4, 2) x max(n/4, 2) [default: 64; 8 on a software adapter].
    batch: Option<usize>,
    /// On a software adapter, use the hardware defaults (256 x 192, B = 64) instead of the small ones.
    #[arg(long)]
    big: bool,
    #[command(flatten)]
    progress: ProgressArgs,
}

fn problem(m: usize, n: usize) -> Result<Problem, sparse_ot::Error> {
    let x = |i: usize| (i as f64 * 0.618_033_988_75).fract();
    let y = |j: usize| (j as f64 * 0.414_213_562_37 + 0.1).fract();
    let a = Array1::from_elem(m, 1.0 / m as f64);
    let b = Array1::from_elem(n, 1.0 / n as f64);
    let cost = Array2::from_shape_fn((m, n), |(i, j)| (x(i) - y(j)).powi(2));
    Problem::new(a.view(), b.view(), cost.view())
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

/// Runs `f` with a monitor watched as `what` (a batch of problems when `batch`); returns its result and time.
fn timed<T>(
    progress: &Reporter,
    what: &str,
    batch: bool,
    f: impl FnOnce(Monitor) -> T,
) -> (T, f64) {
    let watch = if batch {
        progress.batch(what, "problems")
    } else {
        progress.solve(what)
    };
    let t = Instant::now();
    let out = f(watch.monitor());
    (out, t.elapsed().as_secs_f64())
}

fn main() -> ExitCode {
    quiet_probe::quiet_device_select_layer();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let ctx = match GpuContext::shared() {
        Ok(ctx) => ctx,
        Err(e) => {
            println!("no GPU adapter ({e}); nothing to compare");
            return Ok(());
        }
    };
    let software = ctx.is_software() && !args.big;
    let defaults = if software {
        SOFTWARE_SIZES
    } else {
        HARDWARE_SIZES
    };
    let m = args.m.unwrap_or(defaults.0);
    let n = args.n.unwrap_or(defaults.1);
    let nb = args.batch.unwrap_or(defaults.2);
    if m == 0 || n == 0 || nb == 0 {
        return Err("m, n and B must be at least 1".into());
    }
    let (bm, bn) = ((m / 4).max(2), (n / 4).max(2));
    if ctx.is_software() && args.progress.notes() {
        let sizes = if args.big || (args.m.is_some() && args.n.is_some() && args.batch.is_some()) {
            String::new()
        } else {
            let (hm, hn, hb) = HARDWARE_SIZES;
            format!(
                "; sizes {m} x {n} and a batch of {nb} x {bm} x {bn} (--big for {hm} x {hn} and {hb} x {} x {})",
                hm / 4,
                hn / 4
            )
        };
        eprintln!(
            "warning: {} is a software adapter (it runs on the CPU): GPU times are those of an emulated GPU{sizes}",
            ctx.adapter_name()
        );
    }
    compare_all(&ctx, m, n, nb, &args.progress.reporter()).map_err(|e| e.to_string())
}

fn compare_all(
    ctx: &std::sync::Arc<GpuContext>,
    m: usize,
    n: usize,
    nb: usize,
    progress: &Reporter,
) -> Result<(), sparse_ot::Error> {
    let l = ctx.limits();
    println!(
        "adapter: {} ({}), max storage binding {} MiB, max workgroups/dim {}",
        ctx.adapter_name(),
        ctx.backend(),
        l.max_storage_buffer_binding_size >> 20,
        l.max_compute_workgroups_per_dimension
    );
    let p = problem(m, n)?;
    let gpu = Device::Gpu(ctx.clone());
    println!("problem {m} x {n}, uniform marginals, squared distances on [0, 1]");

    let sk = Sinkhorn::new(0.01)?.tol(1e-6)?;
    // One warm-up GPU solve compiles the pipelines; the timed one reuses them and the workspace.
    let run = |what: &str, device: &Device| {
        timed(progress, what, false, |mon| {
            sk.clone().monitor(mon).solve_on(&p, device)
        })
    };
    run("sinkhorn, GPU warm-up", &gpu).0?;
    let (c, tc) = run("sinkhorn on the CPU", &Device::Cpu);
    let (g, tg) = run("sinkhorn on the GPU", &gpu);
    compare("sinkhorn eps = 0.01, tol 1e-6", &c?, tc, &g?, tg);

    let k = 4.min(m);
    let sp = SparseOt::new(k, 0.1)?.tol(1e-6)?;
    let run = |what: &str, device: &Device| {
        timed(progress, what, false, |mon| {
            sp.clone().monitor(mon).solve_on(&p, device)
        })
    };
    run("sparse, GPU warm-up", &gpu).0?;
    let (c, tc) = run("sparse on the CPU", &Device::Cpu);
    let (g, tg) = run("sparse on the GPU", &gpu);
    compare(
        &format!("sparse semi-dual k = {k}, gamma = 0.1, tol 1e-6"),
        &c?,
        tc,
        &g?,
        tg,
    );
    batches(&gpu, nb, (m / 4).max(2), (n / 4).max(2), progress)
}

/// B problems of shape m × n (problem p's points shifted by p/B), solved as one batch on each device.
fn batches(
    gpu: &Device,
    nb: usize,
    m: usize,
    n: usize,
    progress: &Reporter,
) -> Result<(), sparse_ot::Error> {
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
        // A problem that did not converge says why (its status) and how far its plan is from the marginals.
        for (side, results) in [("cpu", &cpu), ("gpu", &gpu)] {
            for (i, r) in results.iter().enumerate() {
                match r {
                    Ok(s) if !s.converged() => println!(
                        "    {side} problem {i}: {} after {} iterations; marginal errors rows {:.2e} cols {:.2e}",
                        s.termination, s.iterations, s.marginal_error_rows, s.marginal_error_cols
                    ),
                    Err(e) => println!("    {side} problem {i}: error: {e}"),
                    Ok(_) => {}
                }
            }
        }
    };
    let sk = Sinkhorn::new(0.01)?.tol(1e-6)?;
    let run = |what: &str, device: &Device| {
        timed(progress, what, true, |mon| {
            sk.clone().monitor(mon).solve_batch_on(&batch, device)
        })
    };
    run("batched sinkhorn, GPU warm-up", gpu);
    let (c, tc) = run("batched sinkhorn on the CPU", &Device::Cpu);
    let (g, tg) = run("batched sinkhorn on the GPU", gpu);
    report("batched sinkhorn eps = 0.01, tol 1e-6", c, tc, g, tg);
    let k = 4.min(m);
    let sp = SparseOt::new(k, 0.1)?.tol(1e-6)?;
    let run = |what: &str, device: &Device| {
        timed(progress, what, true, |mon| {
            sp.clone().monitor(mon).solve_batch_on(&batch, device)
        })
    };
    run("batched sparse, GPU warm-up", gpu);
    let (c, tc) = run("batched sparse on the CPU", &Device::Cpu);
    let (g, tg) = run("batched sparse on the GPU", gpu);
    report(
        &format!("batched sparse semi-dual k = {k}, gamma = 0.1, tol 1e-6 (L-BFGS in lockstep on the GPU)"),
        c,
        tc,
        g,
        tg,
    );
    Ok(())
}
