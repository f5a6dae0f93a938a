//! Draws the transport plans of one pair of 1-D histograms under four solvers, side by side (like the first
//! figure of Liu, Puigcerver & Blondel, 2023), so one sees what the sparsity level k does:
//!
//! 1. **unregularised OT** ([`ExactOt`], network simplex): a basic optimal plan, a thin staircase along the
//!    monotone (1-D) matching with at most m + n − 1 nonzeros;
//! 2. **entropic OT** (Sinkhorn, ε = 0.05 by default): dense, blurred;
//! 3. **quadratic OT** (γ = 0.5 by default): sparse, but with an unbounded number of nonzeros per column;
//! 4. **k-sparse OT** (k = 2, γ = 0.5 by default): at most k nonzeros per column.
//!
//! Each panel is a heat map of the plan (row i = source bin, column j = target bin, darker = more mass; each
//! panel scaled to its own maximum), with the source histogram drawn to its left and the target histogram
//! above it. The picture has no text (so no font library is needed); the panel order above is the legend.
//! Each solver's status and nonzero count are printed to stdout.
//!
//! ```text
//! cargo run --release --example plot_plans -- --output plans.png
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ndarray::{Array1, Array2};
use plotters::prelude::*;
use sparse_ot::{ExactOt, Problem, Sinkhorn, Solution, SparseOt};

#[derive(Debug, Parser)]
#[command(
    about = "Plot OT plans (exact, entropic, quadratic, k-sparse) of two 1-D histograms to a PNG"
)]
struct Args {
    /// PNG to write.
    #[arg(long, default_value = "plans.png")]
    output: PathBuf,
    /// Histogram bins (m = n).
    #[arg(long, default_value_t = 32)]
    bins: usize,
    /// Sparsity level of the k-sparse panel.
    #[arg(long, default_value_t = 2)]
    k: usize,
    /// γ of the quadratic and k-sparse panels.
    #[arg(long, default_value_t = 0.5)]
    gamma: f64,
    /// ε of the entropic panel.
    #[arg(long, default_value_t = 0.05)]
    epsilon: f64,
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

fn run(args: Args) -> Result<(), String> {
    let problem = histograms(args.bins).map_err(|e| e.to_string())?;
    let err = |e: sparse_ot::Error| e.to_string();
    let panels: Vec<(String, Solution)> = vec![
        (
            "unregularised OT (network simplex)".to_string(),
            ExactOt::new().solve(&problem).map_err(err)?,
        ),
        (
            format!("entropic OT (eps = {})", args.epsilon),
            Sinkhorn::new(args.epsilon)
                .map_err(err)?
                .tol(1e-9)
                .map_err(err)?
                .solve(&problem)
                .map_err(err)?,
        ),
        (
            format!("quadratic OT (gamma = {})", args.gamma),
            SparseOt::quadratic(args.gamma)
                .map_err(err)?
                .solve(&problem)
                .map_err(err)?,
        ),
        (
            format!("{}-sparse OT (gamma = {})", args.k, args.gamma),
            SparseOt::new(args.k, args.gamma)
                .map_err(err)?
                .solve(&problem)
                .map_err(err)?,
        ),
    ];
    for (name, sol) in &panels {
        let t = sol.dense_plan();
        let max_col = t
            .columns()
            .into_iter()
            .map(|c| c.iter().filter(|&&v| v > 1e-12).count())
            .max();
        println!(
            "{name}: {}; {} entries > 1e-12, at most {} per column; transport cost {:.6}",
            sol.termination,
            t.iter().filter(|&&v| v > 1e-12).count(),
            max_col.unwrap_or(0),
            sol.transport_cost
        );
    }
    let plans: Vec<Array2<f64>> = panels.iter().map(|(_, s)| s.dense_plan()).collect();
    draw(&args.output, &problem, &plans)
        .map_err(|e| format!("cannot draw {}: {e}", args.output.display()))?;
    println!("wrote {}", args.output.display());
    Ok(())
}

/// Source: a two-bump mixture; target: one wider bump; cost (x_i − y_j)² on a grid of [0, 1].
fn histograms(bins: usize) -> sparse_ot::Result<Problem> {
    let x = Array1::linspace(0.0, 1.0, bins.max(1));
    let bump = |t: f64, mu: f64, sd: f64| (-0.5 * ((t - mu) / sd).powi(2)).exp();
    let mut a = x.mapv(|t| bump(t, 0.25, 0.08) + 0.6 * bump(t, 0.7, 0.1) + 1e-3);
    let mut b = x.mapv(|t| bump(t, 0.55, 0.15) + 1e-3);
    a /= a.sum();
    b /= b.sum();
    let cost = Array2::from_shape_fn((bins, bins), |(i, j)| (x[i] - x[j]).powi(2));
    Problem::new(a.view(), b.view(), cost.view())
}

const PANEL: u32 = 320;
const MARGIN: u32 = 60;
const GAP: u32 = 24;

fn draw(
    path: &PathBuf,
    p: &Problem,
    plans: &[Array2<f64>],
) -> Result<(), Box<dyn std::error::Error>> {
    let width = plans.len() as u32 * (MARGIN + PANEL + GAP) + GAP;
    let height = MARGIN + PANEL + 2 * GAP;
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (m, n) = (p.m(), p.n());
    let (cw, ch) = (PANEL as f64 / n as f64, PANEL as f64 / m as f64);
    let a_max = p.a().fold(0.0f64, |x, &y| x.max(y));
    let b_max = p.b().fold(0.0f64, |x, &y| x.max(y));
    let bar = RGBColor(90, 90, 90);
    for (q, plan) in plans.iter().enumerate() {
        let x0 = (GAP + q as u32 * (MARGIN + PANEL + GAP) + MARGIN) as i32;
        let y0 = (GAP + MARGIN) as i32;
        let px = |j: usize| x0 + (j as f64 * cw).round() as i32;
        let py = |i: usize| y0 + (i as f64 * ch).round() as i32;
        // Source histogram to the left (bars grow leftwards), target histogram on top (bars grow upwards).
        for i in 0..m {
            let w = (p.a()[i] / a_max * (MARGIN - 8) as f64).round() as i32;
            root.draw(&Rectangle::new(
                [(x0 - 4 - w, py(i)), (x0 - 4, py(i + 1) - 1)],
                bar.filled(),
            ))?;
        }
        for j in 0..n {
            let h = (p.b()[j] / b_max * (MARGIN - 8) as f64).round() as i32;
            root.draw(&Rectangle::new(
                [(px(j), y0 - 4 - h), (px(j + 1) - 1, y0 - 4)],
                bar.filled(),
            ))?;
        }
        let t_max = plan.fold(0.0f64, |x, &y| x.max(y));
        for ((i, j), &v) in plan.indexed_iter() {
            if v > 0.0 && t_max > 0.0 {
                root.draw(&Rectangle::new(
                    [(px(j), py(i)), (px(j + 1), py(i + 1))],
                    shade(v / t_max).filled(),
                ))?;
            }
        }
        root.draw(&Rectangle::new(
            [(x0, y0), (px(n), py(m))],
            BLACK.stroke_width(1),
        ))?;
    }
    root.present()?;
    Ok(())
}

/// White (0) to dark blue (1); a square-root ramp so that small masses stay visible.
fn shade(t: f64) -> RGBColor {
    let s = t.clamp(0.0, 1.0).sqrt();
    let mix = |lo: f64, hi: f64| (lo + (hi - lo) * s).round() as u8;
    RGBColor(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0))
}
