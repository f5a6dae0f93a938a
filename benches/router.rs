//! The mixture-of-experts router on the CPU at a training-scale batch: G groups × S tokens × E experts.
//!
//! * `adam`: the paper's recipe (semi-dual, Adam, 20 steps), experts choose tokens, capacity factor 1,
//!   1024 × 256 × 32;
//! * `greedy`: the greedy top-1 router under the same capacity, same batch;
//! * `accurate`: L-BFGS with the nonsmooth finish ([`RouterSolver::ACCURATE`]) on a smaller batch,
//!   16 × 256 × 32, because the full batch takes minutes per run on a small machine.
//!
//! * `adam-gpu`: the recipe on the GPU (`Router::route_on`, the whole batch per step), same batch, when an
//!   adapter exists (else skipped with a note on stderr). The timed region is the whole call: upload, the
//!   one submission of all steps, the blocking readback (`poll` waits for the device) and the host-side
//!   assembly, so the time is honest wall time. On a machine whose only adapter is lavapipe (Mesa's software
//!   Vulkan) this measures a CPU emulation, not a GPU.
//!
//! Throughput is reported in logits (G · S · E) per second.

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use ndarray::Array3;
#[cfg(feature = "gpu")]
use sparse_ot::Device;
use sparse_ot::{greedy_top_k, Router, RouterSolver};

/// Skewed logits: per-expert popularity N(0, 0.5²) shared by all tokens + per-token N(0, 1) noise.
fn logits(g: usize, s: usize, e: usize) -> Array3<f64> {
    let mut state = 2023u64;
    let mut uniform = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut normal = move || {
        let (u, v) = (uniform(), uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    };
    let popularity: Vec<f64> = (0..e).map(|_| 0.5 * normal()).collect();
    let mut out = Array3::zeros((g, s, e));
    for ((_, _, j), x) in out.indexed_iter_mut() {
        *x = popularity[j] + normal();
    }
    out
}

fn router(c: &mut Criterion) {
    let mut group = c.benchmark_group("router");
    group.sample_size(10);
    for (name, solver, shape) in [
        ("adam", Some(RouterSolver::AUTHORS), (1024, 256, 32)),
        ("greedy", None, (1024, 256, 32)),
        ("accurate", Some(RouterSolver::ACCURATE), (16, 256, 32)),
    ] {
        let (g, s, e) = shape;
        let l = logits(g, s, e);
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
    gpu_adam(&mut group);
    group.finish();
}

/// The recipe on the GPU, when an adapter exists.
#[cfg(feature = "gpu")]
fn gpu_adam(group: &mut BenchmarkGroup<'_, WallTime>) {
    let (g, s, e) = (1024, 256, 32);
    match Device::gpu() {
        Ok(device) => {
            let l = logits(g, s, e);
            let r = Router::experts_choose(1.0).unwrap();
            let name = r.route_on(l.view(), &device).unwrap().device;
            eprintln!("adam-gpu runs on {name}");
            group.throughput(Throughput::Elements((g * s * e) as u64));
            let id = BenchmarkId::new("adam-gpu", format!("{g}x{s}x{e}"));
            group.bench_function(id, |bch| {
                bch.iter(|| r.route_on(l.view(), &device).unwrap())
            });
        }
        Err(err) => eprintln!("adam-gpu skipped: {err}"),
    }
}

#[cfg(not(feature = "gpu"))]
fn gpu_adam(_: &mut BenchmarkGroup<'_, WallTime>) {}

criterion_group!(benches, router);
criterion_main!(benches);
