//! The mixture-of-experts router on the CPU at a training-scale batch: G groups × S tokens × E experts.
//!
//! * `adam`: the paper's recipe (semi-dual, Adam, 20 steps), experts choose tokens, capacity factor 1,
//!   1024 × 256 × 32;
//! * `greedy`: the greedy top-1 router under the same capacity, same batch;
//! * `accurate`: L-BFGS with the nonsmooth stage ([`RouterSolver::ACCURATE`]) on a smaller batch,
//!   16 × 256 × 32, because the full batch takes minutes per run on a small machine.
//!
//! * `adam-gpu-buffers`: the recipe on logits already in a GPU buffer (`Router::route_buffers`: gates,
//!   steps and routing on the device, nothing read back), 1024 × 256 × 32, timed up to the device's
//!   completion; same adapter rule as below.
//! * `adam-gpu`: the recipe on the GPU (`Router::route_on`, the whole batch per step), same batch, and
//!   `accurate-gpu`: the accurate solver on the GPU (lockstep L-BFGS for all groups, CPU finish of the groups
//!   whose f32 iteration stalls), 64 × 256 × 32, when a hardware adapter exists (else skipped with a note on
//!   stderr; lavapipe, Mesa's software Vulkan, only with `SPARSE_OT_BENCH_SOFTWARE_GPU=1`). The timed region
//!   is the whole call: upload, the submissions, the blocking readbacks (`poll` waits for the device) and the
//!   host-side assembly, so the time is honest wall time.
//!
//! Throughput is reported in logits (G · S · E) per second.

#[path = "../tests/common/data.rs"]
mod data;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use data::skewed_logits;
#[cfg(feature = "gpu")]
use sparse_ot::Device;
use sparse_ot::{greedy_top_k, Router, RouterSolver};

/// The seed of every case's skewed logits (`skewed_logits` in tests/common/data.rs: per-expert popularity
/// N(0, 0.5²) shared by all tokens + per-token N(0, 1) noise).
const LOGITS_SEED: u64 = 2023;

fn router(c: &mut Criterion) {
    let mut group = c.benchmark_group("router");
    group.sample_size(10);
    for (name, solver, shape) in [
        ("adam", Some(RouterSolver::AUTHORS), (1024, 256, 32)),
        ("greedy", None, (1024, 256, 32)),
        ("accurate", Some(RouterSolver::ACCURATE), (16, 256, 32)),
    ] {
        let (g, s, e) = shape;
        let l = skewed_logits(g, s, e, LOGITS_SEED);
        group.throughput(Throughput::Elements((g * s * e) as u64));
        let id = BenchmarkId::new(name, format!("{g}x{s}x{e}"));
        match solver {
            Some(solver) => {
                let r = Router::experts_choose(1.0).unwrap().solver(solver).unwrap();
                group.bench_function(id, |bch| bch.iter(|| r.route(l.view()).unwrap()));
            }
            None => {
                let cap = Router::experts_choose(1.0).unwrap().capacity(s, e);
                group.bench_function(id, |bch| {
                    bch.iter(|| greedy_top_k(l.view(), 1, cap).unwrap())
                });
            }
        }
    }
    gpu_router(&mut group);
    group.finish();
}

/// The recipe (1024 groups) and the accurate solver (64 groups) on the GPU, when a hardware adapter exists.
/// A software adapter (lavapipe) emulates the GPU on the CPU and is skipped unless
/// `SPARSE_OT_BENCH_SOFTWARE_GPU=1`: its timings say nothing about a GPU.
#[cfg(feature = "gpu")]
fn gpu_router(group: &mut BenchmarkGroup<'_, WallTime>) {
    let ctx = match sparse_ot::gpu::GpuContext::shared() {
        Ok(ctx) => ctx,
        Err(err) => return eprintln!("router GPU benches skipped: {err}"),
    };
    let software_ok = std::env::var("SPARSE_OT_BENCH_SOFTWARE_GPU").is_ok_and(|v| v == "1");
    if ctx.is_software() && !software_ok {
        return eprintln!(
            "router GPU benches skipped: {} is a software adapter (set SPARSE_OT_BENCH_SOFTWARE_GPU=1 to time it)",
            ctx.adapter_name()
        );
    }
    let device = Device::Gpu(ctx.clone());
    buffers_router(group, &ctx);
    for (name, solver, g) in [
        ("adam-gpu", RouterSolver::AUTHORS, 1024),
        ("accurate-gpu", RouterSolver::ACCURATE, 64),
    ] {
        let (s, e) = (256, 32);
        let l = skewed_logits(g, s, e, LOGITS_SEED);
        let r = Router::experts_choose(1.0).unwrap().solver(solver).unwrap();
        let ran_on = r.route_on(l.view(), &device).unwrap().device;
        eprintln!("{name} runs on {ran_on}");
        group.throughput(Throughput::Elements((g * s * e) as u64));
        let id = BenchmarkId::new(name, format!("{g}x{s}x{e}"));
        group.bench_function(id, |bch| {
            bch.iter(|| r.route_on(l.view(), &device).unwrap())
        });
    }
}

/// The recipe on logits already in a GPU buffer (`Router::route_buffers`), 1024 × 256 × 32: the timed region
/// is the call plus a blocking wait for the device to finish (nothing is read back).
#[cfg(feature = "gpu")]
fn buffers_router(group: &mut BenchmarkGroup<'_, WallTime>, ctx: &sparse_ot::gpu::GpuContext) {
    use wgpu::util::DeviceExt;
    let (g, s, e) = (1024, 256, 32);
    let l: Vec<f32> = skewed_logits(g, s, e, LOGITS_SEED)
        .iter()
        .map(|&x| x as f32)
        .collect();
    let buf = ctx
        .device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("logits"),
            contents: bytemuck::cast_slice(&l),
            usage: wgpu::BufferUsages::STORAGE,
        });
    let r = Router::experts_choose(1.0).unwrap();
    let wait = || {
        ctx.device()
            .poll(wgpu::PollType::wait_indefinitely())
            .unwrap();
    };
    drop(r.route_buffers(ctx, &buf, (g, s, e)).unwrap());
    wait();
    group.throughput(Throughput::Elements((g * s * e) as u64));
    let id = BenchmarkId::new("adam-gpu-buffers", format!("{g}x{s}x{e}"));
    group.bench_function(id, |bch| {
        bch.iter(|| {
            let out = r.route_buffers(ctx, &buf, (g, s, e)).unwrap();
            wait();
            out
        })
    });
}

#[cfg(not(feature = "gpu"))]
fn gpu_router(_: &mut BenchmarkGroup<'_, WallTime>) {}

criterion_group!(benches, router);
criterion_main!(benches);
