//! Trains a small Burn model whose mixture-of-experts layer routes by sparsity-constrained OT, beside the
//! same model routed by greedy top-1 (with and without the load-balancing loss), on data where routing
//! matters.
//!
//! ```text
//! cargo run --release --features burn --example burn_moe
//! cargo run --release --features burn --example burn_moe -- --device flex --steps 300
//! ```
//!
//! Data: E clusters of tokens in d dimensions (centre + noise); the target of a token is a map of its own
//! cluster, tanh(W_c x), so a token is served well only by an expert that has learnt its cluster. The
//! router starts skewed: its bias favours expert 0 by `--skew` (logit units), so at first top-1 sends
//! most tokens to one expert, which can take only its capacity ⌈S · capacity factor / E⌉; the rest are
//! dropped (output 0). Each step draws a fresh batch (the same batches for every router, from `--seed`).
//!
//! Three runs, same initial weights: `ot` (experts choose tokens by the OT router, the authors' recipe),
//! `topk` (greedy top-1 under the same capacity), `topk+aux` (the same plus `--aux-weight` times the
//! load-balancing loss). Every `--print-every` steps a line per run gives the loss, the time spent
//! routing (host time: on the wgpu device path this is the submission, the GPU work runs asynchronously),
//! the dropped tokens and the expert loads. The last stdout line is a JSON summary; `--plot` writes a PNG
//! of the loss and the dropped tokens over the steps.
//!
//! `--device auto|wgpu|flex` (default auto: Burn's wgpu device shared with this crate when an adapter
//! exists, else Burn's Flex CPU backend). On wgpu the OT router runs on the GPU from the logits' buffer,
//! with no host round trip; top-1 reads the logits back (it is a host-side baseline).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::module::Param;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use clap::{Parser, ValueEnum};
use plotters::coord::Shift;
use plotters::prelude::*;
use sparse_ot::burn::{
    shared_with_burn, LayerRouting, MoeLayer, MoeLayerConfig, RoutePath, TensorRouter,
};
use sparse_ot::Router;

#[path = "common/font.rs"]
#[allow(dead_code)] // the font module serves several examples; this one draws no upward text
mod font;
use font::{draw_centred, draw_text, line_height, text_width, Direction};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Where {
    Auto,
    Wgpu,
    Flex,
}

#[derive(Debug, Parser)]
#[command(about = "Train a Burn mixture-of-experts layer routed by OT and by greedy top-1")]
struct Args {
    /// Training steps per run.
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Where Burn runs (auto: wgpu when an adapter exists, else flex).
    #[arg(long, value_enum, default_value_t = Where::Auto)]
    device: Where,
    /// Experts E (also the number of clusters in the data).
    #[arg(long, default_value_t = 8)]
    experts: usize,
    /// Tokens per routing group S.
    #[arg(long, default_value_t = 128)]
    group_size: usize,
    /// Groups per batch G.
    #[arg(long, default_value_t = 4)]
    groups: usize,
    /// Token width d.
    #[arg(long, default_value_t = 16)]
    d_model: usize,
    /// Hidden width of each expert.
    #[arg(long, default_value_t = 32)]
    d_hidden: usize,
    /// Expert capacity factor.
    #[arg(long, default_value_t = 1.0)]
    capacity_factor: f64,
    /// Initial router bias towards expert 0, in logit units.
    #[arg(long, default_value_t = 3.0)]
    skew: f32,
    /// Weight of the load-balancing loss in the `topk+aux` run.
    #[arg(long, default_value_t = 0.1)]
    aux_weight: f64,
    /// Adam learning rate.
    #[arg(long, default_value_t = 3e-3)]
    learning_rate: f64,
    /// Seed of the data and of the initial weights.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Print a line per run every this many steps.
    #[arg(long, default_value_t = 50)]
    print_every: usize,
    /// PNG of loss and dropped tokens over the steps (missing directories are created).
    #[arg(long, default_value = "target/burn_moe.png")]
    plot: PathBuf,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A small deterministic generator (xorshift64*), so that every run sees the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal draw (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u = self.next().max(1e-300);
        let v = self.next();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// The clusters: centres and target maps.
struct Task {
    centres: Vec<Vec<f64>>,
    maps: Vec<Vec<f64>>,
    d: usize,
}

impl Task {
    fn new(clusters: usize, d: usize, rng: &mut Rng) -> Self {
        let centres = (0..clusters)
            .map(|_| (0..d).map(|_| 2.0 * rng.normal()).collect())
            .collect();
        let scale = 1.0 / (d as f64).sqrt();
        let maps = (0..clusters)
            .map(|_| (0..d * d).map(|_| scale * rng.normal()).collect())
            .collect();
        Self { centres, maps, d }
    }

    /// `n` tokens (n × d) and their targets.
    fn batch(&self, n: usize, rng: &mut Rng) -> (Vec<f32>, Vec<f32>) {
        let d = self.d;
        let mut x = vec![0f32; n * d];
        let mut y = vec![0f32; n * d];
        for t in 0..n {
            let c = ((rng.next() * self.centres.len() as f64) as usize).min(self.centres.len() - 1);
            let token: Vec<f64> = (0..d)
                .map(|i| self.centres[c][i] + 0.5 * rng.normal())
                .collect();
            for i in 0..d {
                x[t * d + i] = token[i] as f32;
                let w = &self.maps[c][i * d..(i + 1) * d];
                let dot: f64 = w.iter().zip(&token).map(|(a, b)| a * b).sum();
                y[t * d + i] = dot.tanh() as f32;
            }
        }
        (x, y)
    }
}

/// Per-step record of one run.
#[derive(Default)]
struct Trace {
    loss: Vec<f64>,
    dropped: Vec<usize>,
    route_s: Vec<f64>,
    path: Option<RoutePath>,
}

fn run(args: Args) -> Result<(), String> {
    let err = |e: sparse_ot::Error| e.to_string();
    if args.steps == 0 || args.print_every == 0 {
        return Err("--steps and --print-every must be at least 1".into());
    }
    let (device, ctx, name) = match args.device {
        Where::Flex => (Device::flex(), None, "flex (CPU)".to_string()),
        Where::Wgpu | Where::Auto => match shared_with_burn() {
            Ok((device, ctx)) => {
                let name = format!("wgpu: {}", ctx.adapter_name());
                (device, Some(ctx), name)
            }
            Err(e) if args.device == Where::Auto => {
                eprintln!("no wgpu device ({e}); using flex (CPU)");
                (Device::flex(), None, "flex (CPU)".to_string())
            }
            Err(e) => return Err(e.to_string()),
        },
    };
    println!(
        "device {name}; {} experts, {} groups x {} tokens, d = {}, capacity factor {}, {} steps",
        args.experts, args.groups, args.group_size, args.d_model, args.capacity_factor, args.steps
    );
    let ot = {
        let router = Router::experts_choose(args.capacity_factor).map_err(err)?;
        match &ctx {
            Some(ctx) => TensorRouter::on_gpu(router, device.clone(), ctx.clone()),
            None => TensorRouter::new(router),
        }
    };
    let runs = [
        ("ot", LayerRouting::Ot(Box::new(ot)), 0.0),
        (
            "topk",
            LayerRouting::top_k(1, args.capacity_factor).map_err(err)?,
            0.0,
        ),
        (
            "topk+aux",
            LayerRouting::top_k(1, args.capacity_factor).map_err(err)?,
            args.aux_weight,
        ),
    ];
    let mut traces = Vec::new();
    for (label, routing, aux_weight) in runs {
        let trace = train(&args, &device, label, routing, aux_weight).map_err(err)?;
        traces.push((label, trace));
    }
    let summary: Vec<String> = traces
        .iter()
        .map(|(label, t)| {
            let tail = t.loss.len().min(50);
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
            let last_loss = mean(&t.loss[t.loss.len() - tail..]);
            let dropped: Vec<f64> = t.dropped.iter().map(|&d| d as f64).collect();
            let last_dropped = mean(&dropped[dropped.len() - tail..]);
            let path = match t.path {
                Some(RoutePath::Device) => "device",
                _ => "host",
            };
            format!(
                "{{\"router\":\"{label}\",\"final_loss\":{last_loss:.6},\"final_dropped\":{last_dropped:.2},\
                 \"mean_dropped\":{:.2},\"route_ms\":{:.3},\"path\":\"{path}\"}}",
                mean(&dropped),
                1e3 * mean(&t.route_s)
            )
        })
        .collect();
    if let Some(dir) = args.plot.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
    }
    plot(&args.plot, &traces, args.groups * args.group_size)
        .map_err(|e| format!("cannot draw {}: {e}", args.plot.display()))?;
    println!("wrote {}", args.plot.display());
    println!(
        "{{\"example\":\"burn_moe\",\"device\":\"{name}\",\"steps\":{},\"tokens_per_step\":{},\
         \"note\":\"final_* = mean over the last 50 steps\",\"runs\":[{}]}}",
        args.steps,
        args.groups * args.group_size,
        summary.join(",")
    );
    Ok(())
}

fn train(
    args: &Args,
    device: &Device,
    label: &str,
    routing: LayerRouting,
    aux_weight: f64,
) -> sparse_ot::Result<Trace> {
    let device = device.clone().autodiff();
    device.seed(args.seed);
    let config = MoeLayerConfig {
        d_model: args.d_model,
        d_hidden: args.d_hidden,
        experts: args.experts,
        group_size: args.group_size,
    };
    let mut layer = config.init(routing, &device)?;
    layer = skew(layer, args.skew, args.experts, &device);
    let mut optim = AdamConfig::new().init();
    let mut rng = Rng(args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let task = Task::new(args.experts, args.d_model, &mut rng);
    let n = args.groups * args.group_size;
    let d = args.d_model;
    let mut trace = Trace::default();
    for step in 0..args.steps {
        let (x, y) = task.batch(n, &mut rng);
        let x = Tensor::<2>::from_data(TensorData::new(x, [n, d]), &device);
        let y = Tensor::<2>::from_data(TensorData::new(y, [n, d]), &device);
        let out = layer.forward(x)?;
        let route_s = out.route_seconds;
        let mse = (out.output - y).powi_scalar(2).mean();
        let loss_value = mse.clone().into_scalar::<f64>();
        let loss = if aux_weight > 0.0 {
            mse + out.aux_loss.mul_scalar(aux_weight)
        } else {
            mse
        };
        let dropped = out.routing.dropped_tokens();
        if step % args.print_every == 0 || step + 1 == args.steps {
            let loads = out.routing.expert_loads().sum_dim(0).into_data();
            let loads: Vec<i64> = loads.convert::<i64>().try_into_vec().unwrap_or_default();
            println!(
                "{label:>9} step {step:>4}: loss {loss_value:.5}, route {:.2} ms, dropped {dropped:>4} of {n}, expert loads {loads:?}",
                1e3 * route_s
            );
        }
        trace.path = Some(out.routing.path);
        let grads = GradientsParams::from_grads(loss.backward(), &layer);
        layer = optim.step(args.learning_rate, layer, grads);
        trace.loss.push(loss_value);
        trace.dropped.push(dropped);
        trace.route_s.push(route_s);
    }
    Ok(trace)
}

/// The router's bias raised by `amount` for expert 0.
fn skew(mut layer: MoeLayer, amount: f32, experts: usize, device: &Device) -> MoeLayer {
    let mut bias = vec![0f32; experts];
    bias[0] = amount;
    let bias = Tensor::<1>::from_data(TensorData::new(bias, [experts]), device);
    layer.gate.bias = Some(Param::from_tensor(bias));
    layer
}

// ---- the picture ----

const TEXT: u32 = 2;
const W: i32 = 520;
const H: i32 = 300;
const LEFT: i32 = 90;
const TOP: i32 = 96;
const GAP: i32 = 70;
const INK: RGBColor = RGBColor(20, 20, 20);
const COLOURS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
];

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn plot(path: &Path, traces: &[(&str, Trace)], tokens: usize) -> DrawResult {
    let width = LEFT + 2 * W + GAP + 40;
    let height = TOP + H + 120;
    let root = BitMapBackend::new(path, (width as u32, height as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    draw_centred(
        &root,
        "MoE layer training: OT router against greedy top-1",
        (width / 2, 16),
        3,
        &INK,
    )?;
    let losses: Vec<Vec<f64>> = traces.iter().map(|(_, t)| t.loss.clone()).collect();
    let dropped: Vec<Vec<f64>> = traces
        .iter()
        .map(|(_, t)| t.dropped.iter().map(|&d| d as f64).collect())
        .collect();
    panel(&root, (LEFT, TOP), "training loss (MSE)", &losses)?;
    panel(
        &root,
        (LEFT + W + GAP, TOP),
        &format!("dropped tokens (of {tokens} per step)"),
        &dropped,
    )?;
    // Legend.
    let mut x = LEFT;
    let y = TOP + H + 60;
    for (k, (label, _)) in traces.iter().enumerate() {
        root.draw(&PathElement::new(
            vec![(x, y + 8), (x + 30, y + 8)],
            COLOURS[k % 3].stroke_width(3),
        ))?;
        draw_text(&root, label, (x + 38, y), TEXT, &INK, Direction::Right)?;
        x += 38 + text_width(label, TEXT) + 40;
    }
    root.present()?;
    Ok(())
}

/// One chart: a frame, the series as lines, the y range and the step range as labels.
fn panel(
    root: &DrawingArea<BitMapBackend, Shift>,
    (x0, y0): (i32, i32),
    title: &str,
    series: &[Vec<f64>],
) -> DrawResult {
    let steps = series.iter().map(Vec::len).max().unwrap_or(1).max(2);
    let hi = series
        .iter()
        .flatten()
        .fold(f64::MIN, |m, &v| m.max(v))
        .max(1e-12);
    let lo = 0.0;
    draw_centred(root, title, (x0 + W / 2, y0 - 26), TEXT, &INK)?;
    root.draw(&Rectangle::new([(x0, y0), (x0 + W, y0 + H)], INK))?;
    let px = |i: usize| x0 + (i as f64 / (steps - 1) as f64 * W as f64) as i32;
    let py = |v: f64| y0 + H - ((v - lo) / (hi - lo) * H as f64) as i32;
    for (k, s) in series.iter().enumerate() {
        let points: Vec<(i32, i32)> = s.iter().enumerate().map(|(i, &v)| (px(i), py(v))).collect();
        root.draw(&PathElement::new(points, COLOURS[k % 3].stroke_width(2)))?;
    }
    let label_hi = if hi >= 10.0 {
        format!("{hi:.0}")
    } else {
        format!("{hi:.3}")
    };
    draw_text(
        root,
        &label_hi,
        (x0 - 8 - text_width(&label_hi, TEXT), y0),
        TEXT,
        &INK,
        Direction::Right,
    )?;
    draw_text(
        root,
        "0",
        (x0 - 8 - text_width("0", TEXT), y0 + H - line_height(TEXT)),
        TEXT,
        &INK,
        Direction::Right,
    )?;
    draw_text(root, "0", (x0, y0 + H + 6), TEXT, &INK, Direction::Right)?;
    let last = format!("step {}", steps - 1);
    draw_text(
        root,
        &last,
        (x0 + W - text_width(&last, TEXT), y0 + H + 6),
        TEXT,
        &INK,
        Direction::Right,
    )?;
    Ok(())
}
