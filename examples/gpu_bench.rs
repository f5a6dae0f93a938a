//! `gpu_bench`: the GPU path's speed on the adapter at hand, against the device's own copy bandwidth
//! measured in the same run. One JSON object per measurement on stdout; `--json PATH` appends them to a file.
//!
//! ```text
//! cargo run --release --example gpu_bench -- [--sinkhorn 4096,8192,16384] [--sparse 4096,8192] [--router]
//!                                           [--points 2048] [--json PATH]
//! ```
//!
//! * copy: a 256 MiB buffer copied within the device 8 times in one submission; bytes moved (read + write)
//!   per second.
//! * Sinkhorn (n × n, f32, ε = 0.01, fixed iterations: tol 0, no ε-scaling) on a cost already in a GPU buffer
//!   (`Sinkhorn::solve_buffers`): time per iteration by differencing runs of 20 and 120 iterations (set-up
//!   cancels), achieved GB/s of cost read (from the solve's `GpuWork`), and that as a fraction of the copy
//!   rate's read half.
//! * Sparse semi-dual (n × n, k = 8, γ = 0.1, `SparseOt::solve_buffers`): time per L-BFGS iteration by
//!   differencing 10 and 40 iterations, readbacks and cost bytes per iteration.
//! * Router (1024 groups × 256 tokens × 32 experts, experts choose, capacity factor 1, the Adam recipe on
//!   logits in a GPU buffer, `Router::route_buffers`): time per route to device completion, best of 5.
//! * Point clouds (n × n uniform points in the unit square, squared Euclidean cost, `solve_points_on`, the
//!   cost computed in the kernels): the sparse semi-dual (k = 8, γ = 0.1) and Sinkhorn (ε = 0.05), each to
//!   a tolerance of 1e-6 on the device and in f64 on the CPU: cost bytes read (0 expected), the
//!   difference of the objective values (sparse) and transport costs (Sinkhorn), and both solve times.
//!
//! Timings are wall-clock on the host, each run ending in a wait for the device. On a software adapter
//! (lavapipe) they time an emulation on the CPU, not a GPU; the JSON says which adapter ran.

#[path = "common/json_lines.rs"]
mod json_lines;

use std::time::Instant;

use clap::Parser;
use sparse_ot::gpu::{GpuContext, GpuProblem};
use sparse_ot::{Router, Sinkhorn, SparseOt};
use wgpu::util::DeviceExt;

#[derive(Parser)]
#[command(name = "gpu_bench")]
struct Args {
    /// Sinkhorn sizes n (n × n), comma-separated; empty to skip.
    #[arg(long, value_delimiter = ',', default_value = "4096,8192,16384")]
    sinkhorn: Vec<usize>,
    /// Sparse semi-dual sizes n, comma-separated; empty to skip.
    #[arg(long, value_delimiter = ',', default_value = "4096,8192")]
    sparse: Vec<usize>,
    /// Router groups (1024 at training scale; 0 skips the router).
    #[arg(long, default_value_t = 1024)]
    router_groups: usize,
    /// Point-cloud sizes n (n × n points, GPU against CPU), comma-separated; empty to skip.
    #[arg(long, value_delimiter = ',', default_value = "2048")]
    points: Vec<usize>,
    /// Append the JSON lines to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Buffers of one n × n problem on the device: uniform masses, a smooth cost in [0, 1].
struct DeviceProblem {
    n: usize,
    a: wgpu::Buffer,
    cost: wgpu::Buffer,
}

impl DeviceProblem {
    fn new(ctx: &GpuContext, n: usize) -> Self {
        let x = |i: usize| (i as f32 * 0.618_034).fract();
        let y = |j: usize| (j as f32 * 0.414_213_6 + 0.1).fract();
        let cost: Vec<f32> = (0..n * n).map(|e| (x(e / n) - y(e % n)).powi(2)).collect();
        let init = |label, data: &[f32]| {
            ctx.device()
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: bytemuck::cast_slice(data),
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                })
        };
        Self {
            n,
            a: init("a", &vec![1.0 / n as f32; n]),
            cost: init("cost", &cost),
        }
    }

    fn input(&self) -> GpuProblem<'_> {
        GpuProblem {
            m: self.n,
            n: self.n,
            a: &self.a,
            b: &self.a,
            cost: &self.cost,
        }
    }
}

/// A measurement the device refused (e.g. beyond one storage binding), said on stderr and in the JSON.
fn skipped(
    lines: &mut Vec<serde_json::Value>,
    adapter: &str,
    what: &str,
    n: usize,
    e: &sparse_ot::Error,
) {
    eprintln!("{what} {n}^2 skipped: {e}");
    lines.push(
        serde_json::json!({ "what": what, "adapter": adapter, "n": n, "error": e.to_string() }),
    );
}

fn wait(ctx: &GpuContext) {
    let _ = ctx.device().poll(wgpu::PollType::wait_indefinitely());
}

/// Bytes per second moved (read + write) by 8 copies of a 256 MiB buffer in one submission.
fn copy_rate(ctx: &GpuContext) -> f64 {
    let bytes = (256u64 << 20).min(ctx.max_binding_bytes());
    let buffer = |label| {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    let (src, dst) = (buffer("copy src"), buffer("copy dst"));
    let run = |copies: u64| {
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        for _ in 0..copies {
            enc.copy_buffer_to_buffer(&src, 0, &dst, 0, bytes);
        }
        let t = Instant::now();
        ctx.queue().submit([enc.finish()]);
        wait(ctx);
        t.elapsed().as_secs_f64()
    };
    run(1);
    let (t1, t9) = (run(1), run(9));
    2.0 * bytes as f64 * 8.0 / (t9 - t1).max(1e-9)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let ctx = match GpuContext::shared() {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("error: gpu_bench needs a GPU adapter: {e}");
            std::process::exit(1);
        }
    };
    let adapter = ctx.adapter_name().to_string();
    let mut lines = Vec::new();
    let copy = copy_rate(&ctx);
    println!(
        "{adapter}: device copy {:.1} GB/s (read + write)",
        copy / 1e9
    );
    lines.push(serde_json::json!({
        "what": "copy", "adapter": adapter, "bytes_per_second": copy, "software": ctx.is_software(),
    }));
    for &n in args.sinkhorn.iter().filter(|&&n| n > 0) {
        let p = DeviceProblem::new(&ctx, n);
        let run = |iters: usize| -> Result<(f64, sparse_ot::GpuWork), sparse_ot::Error> {
            let cfg = Sinkhorn::new(0.01)?
                .epsilon_scaling(None)?
                .tol(0.0)?
                .max_iter(iters);
            let t = Instant::now();
            let out = cfg.solve_buffers(&ctx, &p.input())?;
            wait(&ctx);
            Ok((t.elapsed().as_secs_f64(), out.work))
        };
        // The first run compiles and allocates; a size the device refuses is reported and skipped.
        let timed = run(20).and_then(|_| Ok((run(20)?, run(120)?)));
        let ((t0, w0), (t1, w1)) = match timed {
            Ok(t) => t,
            Err(e) => {
                skipped(&mut lines, &adapter, "sinkhorn", n, &e);
                continue;
            }
        };
        let per = (t1 - t0) / 100.0;
        let bytes = w1.since(&w0).cost_bytes_read as f64 / 100.0;
        let gbs = bytes / per;
        println!(
            "sinkhorn {n}^2: {:.3} ms per iteration, {:.1} GB/s of cost read ({:.0}% of the copy's read rate)",
            per * 1e3,
            gbs / 1e9,
            100.0 * gbs / (copy / 2.0)
        );
        lines.push(serde_json::json!({
            "what": "sinkhorn", "adapter": adapter, "n": n, "precision": "f32", "epsilon": 0.01,
            "seconds_per_iteration": per, "cost_bytes_per_iteration": bytes,
            "bytes_per_second": gbs, "fraction_of_copy_read": gbs / (copy / 2.0),
        }));
    }
    for &n in args.sparse.iter().filter(|&&n| n > 0) {
        let p = DeviceProblem::new(&ctx, n);
        let run = |iters: usize| -> Result<(f64, usize, sparse_ot::GpuWork), sparse_ot::Error> {
            let cfg = SparseOt::new(8, 0.1)?.tol(0.0)?.max_iter(iters);
            let t = Instant::now();
            let out = cfg.solve_buffers(&ctx, &p.input())?;
            wait(&ctx);
            Ok((t.elapsed().as_secs_f64(), out.iterations, out.work))
        };
        let timed = run(10).and_then(|_| Ok((run(10)?, run(40)?)));
        let ((t0, i0, w0), (t1, i1, w1)) = match timed {
            Ok(t) => t,
            Err(e) => {
                skipped(&mut lines, &adapter, "sparse_semi_dual", n, &e);
                continue;
            }
        };
        let iters = i1.saturating_sub(i0).max(1) as f64;
        let per = (t1 - t0) / iters;
        let d = w1.since(&w0);
        println!(
            "sparse semi-dual {n}^2, k = 8: {:.3} ms per L-BFGS iteration, {:.1} readbacks and {:.1} x 4n^2 cost bytes per iteration",
            per * 1e3,
            d.readbacks as f64 / iters,
            d.cost_bytes_read as f64 / iters / (4.0 * (n * n) as f64)
        );
        lines.push(serde_json::json!({
            "what": "sparse_semi_dual", "adapter": adapter, "n": n, "k": 8, "gamma": 0.1,
            "seconds_per_iteration": per, "iterations_differenced": iters,
            "readbacks_per_iteration": d.readbacks as f64 / iters,
            "cost_bytes_per_iteration": d.cost_bytes_read as f64 / iters,
        }));
    }
    if args.router_groups > 0 {
        let (g, s, e) = (args.router_groups, 256, 32);
        let logits: Vec<f32> = (0..g * s * e)
            .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 4.0)
            .collect();
        let buffer = ctx
            .device()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("logits"),
                contents: bytemuck::cast_slice(&logits),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            });
        let router = Router::experts_choose(1.0)?;
        let mut best = f64::INFINITY;
        let mut dispatches = 0;
        for _ in 0..6 {
            let before = ctx.dispatches_recorded();
            let t = Instant::now();
            let routed = router.route_buffers(&ctx, &buffer, (g, s, e))?;
            wait(&ctx);
            best = best.min(t.elapsed().as_secs_f64());
            dispatches = ctx.dispatches_recorded() - before;
            drop(routed);
        }
        println!(
            "router {g} x {s} x {e}: {:.3} ms per route (best of 6, first included), {dispatches} dispatches",
            best * 1e3
        );
        lines.push(serde_json::json!({
            "what": "router", "adapter": adapter, "groups": g, "tokens": s, "experts": e,
            "seconds_per_route": best, "dispatches": dispatches,
        }));
    }
    for &n in args.points.iter().filter(|&&n| n > 0) {
        match points_against_cpu(&ctx, n) {
            Ok(found) => lines.extend(found),
            Err(e) => skipped(&mut lines, &adapter, "points", n, &e),
        }
    }
    json_lines::emit(&lines, args.json.as_deref())?;
    Ok(())
}

/// The sparse semi-dual and Sinkhorn on n × n points, on the GPU and on the CPU: one JSON line each.
fn points_against_cpu(
    ctx: &std::sync::Arc<GpuContext>,
    n: usize,
) -> Result<Vec<serde_json::Value>, sparse_ot::Error> {
    use sparse_ot::{Device, GroundCost, PointProblem};
    let cloud = |shift: f64, step: f64| {
        sparse_ot::ndarray::Array2::from_shape_fn((n, 2), |(i, d)| {
            ((i as f64 + shift) * step * (d as f64 + 1.0)).fract()
        })
    };
    let p = PointProblem::uniform(
        &cloud(0.0, 0.618_033_988_7),
        &cloud(0.5, 0.414_213_562_4),
        GroundCost::SqEuclidean,
    )?;
    let gpu = Device::Gpu(ctx.clone());
    let adapter = ctx.adapter_name().to_string();
    // (value or transport cost, marginal error, cost bytes read, status) and the seconds it took.
    type Measured = (f64, f64, u64, String);
    let timed = |f: &dyn Fn() -> Result<Measured, sparse_ot::Error>| {
        let t = Instant::now();
        f().map(|m| (m, t.elapsed().as_secs_f64()))
    };
    let sparse = SparseOt::new(8, 0.1)?.tol(1e-6)?;
    let solve_sparse = |device: &Device| {
        let s = sparse.solve_points_on(&p, device)?;
        let error = s.marginal_error_rows.max(s.marginal_error_cols);
        let bytes = s.gpu_work.map_or(0, |w| w.cost_bytes_read);
        Ok((s.value, error, bytes, s.termination.to_string()))
    };
    let ((gv, ge, gb, gstatus), gt) = timed(&|| solve_sparse(&gpu))?;
    let ((cv, ce, _, cstatus), ct) = timed(&|| solve_sparse(&Device::Cpu))?;
    println!(
        "sparse semi-dual on {n}^2 points, k = 8: value GPU - CPU {:.1e} ({gstatus} / {cstatus}), marginal errors {ge:.1e} / {ce:.1e}, {gb} cost bytes read, {gt:.2} s GPU, {ct:.2} s CPU",
        gv - cv
    );
    let sinkhorn = Sinkhorn::new(0.05)?.tol(1e-6)?;
    let solve_sinkhorn = |device: &Device| {
        let s = sinkhorn.solve_points_on(&p, device)?;
        let bytes = s.gpu_work.map_or(0, |w| w.cost_bytes_read);
        let error = s.marginal_error_rows.max(s.marginal_error_cols);
        Ok((s.transport_cost, error, bytes, s.termination.to_string()))
    };
    let ((gs, gse, gsb, gsstatus), gst) = timed(&|| solve_sinkhorn(&gpu))?;
    let ((cs, cse, _, csstatus), cst) = timed(&|| solve_sinkhorn(&Device::Cpu))?;
    println!(
        "sinkhorn on {n}^2 points, eps = 0.05: transport cost GPU - CPU {:.1e} ({gsstatus} / {csstatus}), marginal errors {gse:.1e} / {cse:.1e}, {gsb} cost bytes read, {gst:.2} s GPU, {cst:.2} s CPU",
        gs - cs
    );
    Ok(vec![
        serde_json::json!({
            "what": "sparse_semi_dual_points", "adapter": adapter, "n": n, "k": 8, "gamma": 0.1,
            "value_gpu": gv, "value_cpu": cv, "marginal_error_gpu": ge, "marginal_error_cpu": ce,
            "cost_bytes_read": gb, "seconds_gpu": gt, "seconds_cpu": ct,
            "status_gpu": gstatus, "status_cpu": cstatus,
        }),
        serde_json::json!({
            "what": "sinkhorn_points", "adapter": adapter, "n": n, "epsilon": 0.05,
            "transport_cost_gpu": gs, "transport_cost_cpu": cs, "marginal_error_gpu": gse,
            "marginal_error_cpu": cse, "cost_bytes_read": gsb, "seconds_gpu": gst, "seconds_cpu": cst,
            "status_gpu": gsstatus, "status_cpu": csstatus,
        }),
    ])
}
