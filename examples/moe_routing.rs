//! Mixture-of-experts routing with sparsity-constrained OT, compared with the greedy top-k router.
//!
//! With no arguments it generates a deterministic workload shaped like a trained router's output — 64 groups ×
//! 256 tokens × 16 experts, logits = a shared per-expert popularity bias (some experts are favoured by every
//! token) + per-token Gaussian noise — routes it with the OT router (experts choose tokens, capacity factor
//! 1, the authors' Adam recipe) and with the greedy top-k router under the same expert capacity, and prints
//! tokens dropped, expert load and time for both. The last stdout line is a JSON summary.
//!
//! ```text
//! cargo run --release --example moe_routing
//! cargo run --release --example moe_routing -- --solver accurate --capacity-factor 1.25
//! cargo run --release --example moe_routing -- --logits logits.npy --output routing.npz
//! cargo run --release --example moe_routing -- --device gpu
//! ```
//!
//! `--device auto|cpu|gpu` (default auto: the GPU when an adapter exists, else the CPU) picks where the OT
//! router runs; the output names the device that ran it. On a GPU the Adam recipe solves all groups as one
//! batch (f32); the accurate solver runs all groups' L-BFGS in lockstep on the GPU. On a GPU, experts choose
//! with the recipe is also timed through `Router::route_buffers` (logits already in a GPU buffer, nothing read
//! back; an extra table row and `ot_gpu_buffers` in the JSON).
//! `--logits L.npy` routes a float32 array of shape (G, S, E). `--output R.npz` writes `dispatch`
//! (G, S, E; u8 0/1) and `combine` (G, S, E; float32, the gate of each routed pair, 0 elsewhere).
//! Progress of routes that take more than a second goes to stderr (a status line on a terminal; lines with
//! `--progress`; every n groups with `--progress-every n`; nothing with `--quiet`). Bad input exits non-zero
//! with a one-line error.

#[path = "../tests/common/data.rs"]
mod data;

use std::fs::File;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use data::skewed_logits;
use ndarray::Array3;
use ndarray_npy::{read_npy, NpzWriter};

#[path = "common/atomic.rs"]
mod atomic;
#[path = "common/progress.rs"]
mod progress;
use progress::ProgressArgs;
#[path = "common/quiet_probe.rs"]
mod quiet_probe;
use atomic::AtomicFile;
use serde_json::json;
use sparse_ot::moe::LoadMetrics;
use sparse_ot::{greedy_top_k, Device, Router, RouterSolver, Routing, Termination};

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum Mode {
    /// Each expert keeps at most `capacity` tokens.
    ExpertsChoose,
    /// Each token goes to at most `--experts-per-token` experts.
    TokensChoose,
}

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum Solver {
    /// The paper's recipe: semi-dual, Adam, lr 1e-2, 20 steps.
    Adam,
    /// L-BFGS on the semi-dual (tolerance 1e-6, at most 200 iterations).
    Accurate,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DeviceArg {
    /// A hardware GPU when there is one, else the CPU (a software adapter such as lavapipe only with `gpu`).
    Auto,
    /// The f64 CPU path.
    Cpu,
    /// The GPU (f32); an error when there is no adapter.
    Gpu,
}

impl DeviceArg {
    fn device(self) -> Result<Device, String> {
        match self {
            DeviceArg::Auto => Ok(Device::Auto),
            DeviceArg::Cpu => Ok(Device::Cpu),
            #[cfg(feature = "gpu")]
            DeviceArg::Gpu => Device::gpu().map_err(|e| e.to_string()),
            #[cfg(not(feature = "gpu"))]
            DeviceArg::Gpu => Err("built without the `gpu` feature".into()),
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    allow_negative_numbers = true,
    about = "Route tokens to experts with sparsity-constrained OT and compare with greedy top-k"
)]
struct Args {
    /// Router logits, float32 .npy of shape (groups, tokens, experts). Without it a workload is generated.
    #[arg(long)]
    logits: Option<PathBuf>,
    /// Who chooses.
    #[arg(long, value_enum, default_value = "experts-choose")]
    mode: Mode,
    /// Expert capacity = ceil(experts_per_token * tokens * capacity_factor / experts).
    #[arg(long, default_value_t = 1.0)]
    capacity_factor: f64,
    /// Round the capacity up to a multiple of this (the paper uses 4).
    #[arg(long, default_value_t = 1)]
    capacity_multiple: usize,
    /// k of tokens-choose, and of the greedy baseline.
    #[arg(long, default_value_t = 1)]
    experts_per_token: usize,
    /// How the OT problems are solved.
    #[arg(long, value_enum, default_value = "adam")]
    solver: Solver,
    /// Write dispatch and combine to this .npz.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Generated workload: groups.
    #[arg(long, default_value_t = 64)]
    groups: usize,
    /// Generated workload: tokens per group.
    #[arg(long, default_value_t = 256)]
    tokens: usize,
    /// Generated workload: experts.
    #[arg(long, default_value_t = 16)]
    experts: usize,
    /// Generated workload: seed.
    #[arg(long, default_value_t = 2023)]
    seed: u64,
    /// Print a progress line to stderr every this many finished groups, from the start and also when stderr
    /// is not a terminal (0: never). Without it, progress follows `--progress` / `--quiet`.
    #[arg(long)]
    progress_every: Option<usize>,
    #[command(flatten)]
    progress: ProgressArgs,
    /// Where the OT router runs.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
}

fn main() -> ExitCode {
    quiet_probe::quiet_device_select_layer();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    // Opened before routing: an unwritable destination fails now, not after the work.
    let out = match &args.output {
        Some(path) => Some(
            AtomicFile::create(path)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let (logits, source) = match &args.logits {
        Some(path) => {
            let l: Array3<f32> =
                read_npy(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            (l.mapv(f64::from), path.display().to_string())
        }
        None => {
            if args.groups == 0 || args.tokens == 0 || args.experts == 0 {
                return Err("--groups, --tokens and --experts must be at least 1".into());
            }
            let l = skewed_logits(args.groups, args.tokens, args.experts, args.seed);
            (l, format!("generated (seed {})", args.seed))
        }
    };
    let (g, s, e) = logits.dim();
    let router = match args.mode {
        Mode::ExpertsChoose => Router::experts_choose(args.capacity_factor),
        Mode::TokensChoose => Router::tokens_choose(args.experts_per_token)
            .and_then(|r| r.capacity_factor(args.capacity_factor)),
    }
    .and_then(|r| r.capacity_multiple(args.capacity_multiple))
    .and_then(|r| {
        r.solver(match args.solver {
            Solver::Adam => RouterSolver::AUTHORS,
            Solver::Accurate => RouterSolver::ACCURATE,
        })
    })
    .map_err(|e| e.to_string())?;
    let capacity = router.capacity(s, e);
    let capacity_text = if capacity >= s {
        format!("{s} (no limit: at least the tokens of a group)")
    } else {
        capacity.to_string()
    };
    println!(
        "logits: {source}, {g} groups x {s} tokens x {e} experts; expert capacity {capacity_text}"
    );

    let device = args.device.device()?;
    let reporter = match args.progress_every {
        Some(n) => args.progress.reporter().every_items(n),
        None => args.progress.reporter(),
    };
    let watch = reporter.batch("OT router", "groups");
    let start = Instant::now();
    let ot = router
        .clone()
        .monitor(watch.monitor())
        .route_on(logits.view(), &device)
        .map_err(|e| e.to_string())?;
    drop(watch);
    let ot_seconds = start.elapsed().as_secs_f64();
    println!("OT router ran on: {}", ot.device);
    let on_buffers = gpu_buffers_run(&router, &args, &device, &logits)?;

    let start = Instant::now();
    let greedy = greedy_top_k(logits.view(), args.experts_per_token.min(e), capacity)
        .map_err(|e| e.to_string())?;
    let greedy_seconds = start.elapsed().as_secs_f64();

    let ot_name = format!("OT ({:?}, {:?})", args.mode, args.solver);
    let greedy_name = format!("greedy top-{}", args.experts_per_token.min(e));
    println!(
        "{:<34} {:>9} {:>22} {:>10} {:>9}",
        "router", "dropped", "tokens/expert min-max", "imbalance", "time (s)"
    );
    for (name, r, t) in [
        (&ot_name, &ot, ot_seconds),
        (&greedy_name, &greedy, greedy_seconds),
    ] {
        let l = &r.load;
        println!(
            "{:<34} {:>9} {:>22} {:>10.3} {:>9.3}",
            name,
            format!(
                "{} ({:.1}%)",
                l.dropped_tokens,
                100.0 * l.dropped_tokens as f64 / l.tokens as f64
            ),
            format!(
                "{:.0}-{:.0}",
                l.tokens_per_expert.min, l.tokens_per_expert.max
            ),
            l.imbalance(),
            t
        );
    }
    if let Some(b) = &on_buffers {
        println!(
            "{:<34} {:>9} {:>22} {:>10} {:>9.3}",
            "OT on GPU buffers (route_buffers)",
            format!(
                "{} ({:.1}%)",
                b.dropped_tokens,
                100.0 * b.dropped_tokens as f64 / (g * s) as f64
            ),
            "",
            "",
            b.seconds
        );
    }
    println!(
        "columns: dropped = tokens routed to no expert; tokens/expert = fewest-most tokens an expert took \
         (capacity {}); imbalance = busiest expert's tokens over the mean (1 = balanced)",
        capacity.min(s)
    );
    let unconverged = ot.groups.len() - ot.converged_groups();
    if unconverged > 0 {
        let why = match args.solver {
            Solver::Adam => {
                "the Adam recipe runs a fixed 20 steps by design, so each group stops at its step limit \
                 rather than at a tolerance (`--solver accurate` solves to 1e-6)"
            }
            Solver::Accurate => "L-BFGS reached its iteration limit or stalled before the 1e-6 tolerance",
        };
        let limit = match args.mode {
            Mode::ExpertsChoose => "the capacity per expert",
            Mode::TokensChoose => "the limit of experts per token",
        };
        println!(
            "note: {unconverged} of {g} groups are not converged: {why}; worst mass errors: tokens {:.2e}, \
             experts {:.2e}; {limit} holds regardless",
            ot.groups.iter().map(|r| r.token_mass_error).fold(0.0, f64::max),
            ot.groups.iter().map(|r| r.expert_mass_error).fold(0.0, f64::max)
        );
    }

    if let (Some(path), Some(out)) = (&args.output, out) {
        write_npz(out, &ot).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("wrote dispatch and combine to {}", path.display());
    }

    let summary = json!({
        "groups": g, "tokens": s, "experts": e, "capacity": capacity.min(s),
        "mode": format!("{:?}", args.mode), "solver": format!("{:?}", args.solver), "device": ot.device.to_string(),
        "ot": metrics(&ot.load, ot_seconds, Some(&ot)),
        "greedy": metrics(&greedy.load, greedy_seconds, None),
    });
    let mut summary = summary;
    if let Some(b) = &on_buffers {
        summary["ot_gpu_buffers"] =
            json!({"dropped_tokens": b.dropped_tokens, "seconds": b.seconds});
    }
    println!("{summary}");
    Ok(())
}

/// The Adam recipe on logits already in a GPU buffer (`Router::route_buffers`), when the router runs on a GPU
/// in experts-choose mode: the time of a second call up to the device's completion (the first one builds the
/// router's pipelines; the logits' upload and the readback of the routed tokens for counting are not timed).
struct BuffersRun {
    seconds: f64,
    dropped_tokens: usize,
}

#[cfg(feature = "gpu")]
fn gpu_buffers_run(
    router: &Router,
    args: &Args,
    device: &Device,
    logits: &Array3<f64>,
) -> Result<Option<BuffersRun>, String> {
    use wgpu::util::DeviceExt;
    let ctx = match device {
        Device::Gpu(ctx) => ctx.clone(),
        Device::Auto if device.is_gpu() => {
            sparse_ot::gpu::GpuContext::shared().map_err(|e| e.to_string())?
        }
        _ => return Ok(None),
    };
    if args.mode != Mode::ExpertsChoose || args.solver != Solver::Adam {
        return Ok(None);
    }
    let (g, s, e) = logits.dim();
    let l32: Vec<f32> = logits.iter().map(|&x| x as f32).collect();
    let buf = ctx
        .device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("logits"),
            contents: bytemuck::cast_slice(&l32),
            usage: wgpu::BufferUsages::STORAGE,
        });
    let wait = || {
        ctx.device()
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| e.to_string())
    };
    drop(
        router
            .route_buffers(&ctx, &buf, (g, s, e))
            .map_err(|e| e.to_string())?,
    );
    wait()?;
    let start = Instant::now();
    let out = router
        .route_buffers(&ctx, &buf, (g, s, e))
        .map_err(|e| e.to_string())?;
    wait()?;
    let seconds = start.elapsed().as_secs_f64();
    // Count the tokens no expert took.
    let len = (g * e * out.capacity) as u64 * 4;
    let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("routed tokens readback"),
        size: len.max(4),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(&out.tokens, 0, &staging, 0, len);
    ctx.queue().submit([enc.finish()]);
    staging.slice(..).map_async(wgpu::MapMode::Read, |_| {});
    wait()?;
    let tokens: Vec<u32> = {
        let view = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| format!("{e:?}"))?;
        bytemuck::cast_slice(&view).to_vec()
    };
    let mut routed = vec![false; g * s];
    for (slot, &t) in tokens.iter().enumerate() {
        if (t as usize) < s {
            routed[slot / (e * out.capacity) * s + t as usize] = true;
        }
    }
    Ok(Some(BuffersRun {
        seconds,
        dropped_tokens: routed.iter().filter(|&&r| !r).count(),
    }))
}

#[cfg(not(feature = "gpu"))]
fn gpu_buffers_run(
    _: &Router,
    _: &Args,
    _: &Device,
    _: &Array3<f64>,
) -> Result<Option<BuffersRun>, String> {
    Ok(None)
}

fn metrics(l: &LoadMetrics, seconds: f64, ot: Option<&Routing>) -> serde_json::Value {
    let mut v = json!({
        "dropped_tokens": l.dropped_tokens,
        "dropped_fraction": l.dropped_tokens as f64 / l.tokens as f64,
        "tokens_per_expert": {"min": l.tokens_per_expert.min, "mean": l.tokens_per_expert.mean, "max": l.tokens_per_expert.max},
        "experts_per_token": {"min": l.experts_per_token.min, "mean": l.experts_per_token.mean, "max": l.experts_per_token.max},
        "imbalance": l.imbalance(),
        "experts_over_capacity": l.experts_over_capacity,
        "seconds": seconds,
    });
    if let Some(r) = ot {
        v["converged_groups"] = json!(r.converged_groups());
        let count =
            |f: fn(&Termination) -> bool| r.groups.iter().filter(|g| f(&g.termination)).count();
        v["max_iterations_groups"] = json!(count(|t| matches!(t, Termination::MaxIterations)));
        v["stalled_groups"] = json!(count(|t| matches!(t, Termination::Stalled)));
        v["max_token_mass_error"] = json!(r
            .groups
            .iter()
            .map(|g| g.token_mass_error)
            .fold(0.0, f64::max));
        v["max_expert_mass_error"] = json!(r
            .groups
            .iter()
            .map(|g| g.expert_mass_error)
            .fold(0.0, f64::max));
    }
    v
}

/// Writes dispatch and combine through `out` (a temporary file renamed over the target once complete).
fn write_npz(out: AtomicFile, r: &Routing) -> Result<(), Box<dyn std::error::Error>> {
    out.commit(|w| -> Result<File, Box<dyn std::error::Error>> {
        let mut npz = NpzWriter::new_compressed(w);
        npz.add_array("dispatch", &r.dispatch.mapv(u8::from))?;
        npz.add_array("combine", &r.combine.mapv(|c| c as f32))?;
        Ok(npz.finish()?.into_inner().map_err(|e| e.into_error())?)
    })
}
