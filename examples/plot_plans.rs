//! Draws the transport plans of one pair of 1-D histograms under four solvers (like the first figure of
//! Liu, Puigcerver & Blondel, 2023), so one sees what the sparsity level k does:
//!
//! 1. **unregularised OT** ([`ExactOt`], network simplex): a basic optimal plan, a thin staircase along the
//!    monotone (1-D) matching with at most m + n − 1 nonzeros;
//! 2. **entropic OT** (Sinkhorn, ε = 0.05 by default): dense, blurred;
//! 3. **quadratic OT** (γ = 0.5 by default): sparse, but with an unbounded number of nonzeros per column;
//! 4. **k-sparse OT** (k = 2, γ = 0.5 by default): at most k nonzeros per column.
//!
//! The PNG has the four panels in a 2 × 2 grid, in the order above (left to right, then top to bottom).
//! Each panel is a heat map of the plan T (row i = source bin, top to bottom; column j = target bin, left
//! to right) titled with the solver, its parameters and the plan's nonzero count (entries > 1e-12). The
//! source histogram a is drawn to the left of each map and the target histogram b above it, both on one
//! scale. All four maps share ONE colour scale, shown by the colour bar at the right with mass values:
//! white is an entry ≤ 1e-12, and the colour runs from light to dark blue with √(T_ij / max), max being
//! the largest entry of all four plans. The square root keeps the entropic plan (whose mass is spread
//! thin) and the plans' small tail entries visible next to the concentrated exact plan, while equal
//! colours still mean equal mass in every panel. The text is drawn with the examples' own bitmap font
//! (`examples/common/font.rs`), so no font library or installed font is needed.
//!
//! Each solver's status and nonzero count are printed to stdout, then the path of the PNG. By default it is
//! `target/plans.png` (relative to the current directory; missing directories are created):
//!
//! ```text
//! cargo run --release --example plot_plans
//! cargo run --release --example plot_plans -- --output /tmp/plans.png --k 3 --bins 48
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use ndarray::{Array1, Array2};
use plotters::coord::Shift;
use plotters::prelude::*;
use sparse_ot::{ExactOt, Problem, Sinkhorn, Solution, SparseOt};

#[path = "common/font.rs"]
mod font;
use font::{draw_centred, draw_up_centred, line_height, text_width};

#[derive(Debug, Parser)]
#[command(
    about = "Plot OT plans (exact, entropic, quadratic, k-sparse) of two 1-D histograms to a PNG"
)]
struct Args {
    /// PNG to write (missing parent directories are created).
    #[arg(long, default_value = "target/plans.png")]
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

/// Plan entries above this count as nonzero (in the printed counts, the titles and the picture).
const NONZERO: f64 = 1e-12;

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One panel of the picture.
struct Panel {
    /// First title line: the solver and its parameters.
    title: String,
    /// The dense plan.
    plan: Array2<f64>,
    /// Entries > [`NONZERO`].
    nonzeros: usize,
    /// Most entries > [`NONZERO`] in one column.
    max_per_column: usize,
}

fn run(args: Args) -> Result<(), String> {
    let is_png = args
        .output
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        return Err(format!(
            "--output {}: the file name must end in .png",
            args.output.display()
        ));
    }
    let problem = histograms(args.bins).map_err(|e| e.to_string())?;
    let err = |e: sparse_ot::Error| e.to_string();
    // (name printed to stdout, panel title, solution)
    let solved: Vec<(String, String, Solution)> = vec![
        (
            "unregularised OT (network simplex)".to_string(),
            "unregularised OT (network simplex)".to_string(),
            ExactOt::new().solve(&problem).map_err(err)?,
        ),
        (
            format!("entropic OT (eps = {})", args.epsilon),
            format!("entropic OT (Sinkhorn), eps = {}", args.epsilon),
            Sinkhorn::new(args.epsilon)
                .map_err(err)?
                .tol(1e-9)
                .map_err(err)?
                .solve(&problem)
                .map_err(err)?,
        ),
        (
            format!("quadratic OT (gamma = {})", args.gamma),
            format!("quadratic OT, gamma = {}", args.gamma),
            SparseOt::quadratic(args.gamma)
                .map_err(err)?
                .solve(&problem)
                .map_err(err)?,
        ),
        (
            format!("{}-sparse OT (gamma = {})", args.k, args.gamma),
            format!("k-sparse OT, k = {}, gamma = {}", args.k, args.gamma),
            SparseOt::new(args.k, args.gamma)
                .map_err(err)?
                .solve(&problem)
                .map_err(err)?,
        ),
    ];
    let mut panels = Vec::with_capacity(solved.len());
    for (name, title, sol) in solved {
        let plan = sol.dense_plan();
        let nonzeros = plan.iter().filter(|&&v| v > NONZERO).count();
        let max_per_column = plan
            .columns()
            .into_iter()
            .map(|c| c.iter().filter(|&&v| v > NONZERO).count())
            .max()
            .unwrap_or(0);
        println!(
            "{name}: {}; {nonzeros} entries > 1e-12, at most {max_per_column} per column; transport cost {:.6}",
            sol.termination, sol.transport_cost
        );
        panels.push(Panel {
            title,
            plan,
            nonzeros,
            max_per_column,
        });
    }
    let path = &args.output;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
    }
    draw(path, &problem, &panels).map_err(|e| format!("cannot draw {}: {e}", path.display()))?;
    let shown = std::path::absolute(path).unwrap_or_else(|_| path.clone());
    println!("wrote {}", shown.display());
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

// Layout, in pixels. Text is drawn at `TEXT` (font pixels of 2 × 2), the figure title at `BIG`.
const TEXT: u32 = 2;
const BIG: u32 = 3;
/// Height of a line of text, descenders included (and width of a vertical label).
const LINE: i32 = font::LINE_HEIGHT * TEXT as i32;
/// Distance between successive lines of text.
const LEAD: i32 = LINE + 4;
/// Width of a 3-digit bin number.
const DIGITS_3: i32 = (3 * font::ADVANCE - 1) * TEXT as i32;
/// Side of a heat map.
const MAP: i32 = 320;
/// Length of the longest marginal histogram bar.
const HIST: i32 = 56;
/// Gap between a histogram and its map.
const HIST_GAP: i32 = 3;
/// Length of tick marks.
const TICK: i32 = 5;
/// Gap between a horizontal tick mark and its label (wide, so that the tick does not read as a minus sign).
const LABEL_GAP: i32 = 10;
/// Gap between tick labels and an axis label.
const AXIS_GAP: i32 = 8;
/// Outer margin of the figure.
const OUTER: i32 = 24;
/// Blank space between panels, and between the panels and the colour bar.
const GUTTER: i32 = 36;
/// From a panel's left edge to its map's left edge: vertical "source histogram a" label, histogram.
const MAP_LEFT: i32 = LINE + AXIS_GAP + HIST + HIST_GAP;
/// From a map's right edge to the panel's right edge: ticks, bin numbers, vertical "source bin i" label.
const MAP_RIGHT: i32 = 1 + TICK + LABEL_GAP + DIGITS_3 + AXIS_GAP + LINE;
/// From a panel's top to its map's top: two title lines, space, "target histogram b" label, histogram.
const MAP_TOP: i32 = 2 * LEAD + 14 + LEAD + HIST + HIST_GAP;
/// From a map's bottom edge to the panel's bottom: ticks, bin numbers, "target bin j" label.
const MAP_BOTTOM: i32 = 1 + TICK + 4 + LEAD + 2 + LINE;
const PANEL_W: i32 = MAP_LEFT + MAP + MAP_RIGHT;
const PANEL_H: i32 = MAP_TOP + MAP + MAP_BOTTOM;
/// Height of the figure's heading: title, subtitle, space.
const HEADING: i32 = font::LINE_HEIGHT * BIG as i32 + 12 + LINE + 20;
/// Width of the colour bar.
const BAR: i32 = 26;
/// Height of the caption below the panels.
const CAPTION: i32 = 2 * LEAD;

const INK: RGBColor = RGBColor(20, 20, 20);
const GREY: RGBColor = RGBColor(110, 110, 110);

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(path: &Path, p: &Problem, panels: &[Panel]) -> DrawResult {
    // One colour scale for all panels, up to the largest entry of any plan.
    let t_max = panels
        .iter()
        .flat_map(|q| q.plan.iter())
        .fold(0.0f64, |x, &y| x.max(y));
    let bar_ticks = colour_ticks(t_max);
    let bar_labels_w = bar_ticks
        .iter()
        .map(|(_, l)| text_width(l, TEXT))
        .max()
        .unwrap_or(0);
    let bar_area = BAR + TICK + LABEL_GAP + bar_labels_w + 2 * AXIS_GAP + LINE;

    let cols = 2;
    let rows = panels.len().div_ceil(cols) as i32;
    let panels_w = cols as i32 * PANEL_W + (cols as i32 - 1) * GUTTER;
    let width = 2 * OUTER + panels_w + GUTTER + bar_area;
    let height = 2 * OUTER + HEADING + rows * PANEL_H + (rows - 1) * GUTTER + CAPTION;
    let root = BitMapBackend::new(path, (width as u32, height as u32)).into_drawing_area();
    root.fill(&WHITE)?;

    let m = p.m();
    draw_centred(
        &root,
        "Transport plans T of the same two histograms under four solvers",
        (width / 2, OUTER),
        BIG,
        &INK,
    )?;
    draw_centred(
        &root,
        &format!(
            "{m} bins on one grid x of [0, 1]; cost (x_i - x_j)^2; T_ij = mass moved from source bin i \
             to target bin j"
        ),
        (width / 2, OUTER + font::LINE_HEIGHT * BIG as i32 + 12),
        TEXT,
        &GREY,
    )?;

    // One scale for both marginals too.
    let h_max = p
        .a()
        .iter()
        .chain(p.b().iter())
        .fold(0.0f64, |x, &y| x.max(y));

    for (q, panel) in panels.iter().enumerate() {
        let (r, c) = ((q / cols) as i32, (q % cols) as i32);
        let left = OUTER + c * (PANEL_W + GUTTER);
        let top = OUTER + HEADING + r * (PANEL_H + GUTTER);
        draw_panel(&root, p, panel, (left, top), t_max, h_max)?;
    }

    let bar_top = OUTER + HEADING + MAP_TOP;
    let bar_bottom = OUTER + HEADING + (rows - 1) * (PANEL_H + GUTTER) + MAP_TOP + MAP;
    let bar_x = OUTER + panels_w + GUTTER;
    draw_colour_bar(&root, (bar_x, bar_top), bar_bottom, t_max, &bar_ticks)?;

    let cap_top = height - OUTER - CAPTION + 6;
    for (k, line) in [
        "Grey bars: the histograms a (source, rows i) and b (target, columns j), on one scale.",
        "Colour: mass T_ij on one square-root scale shared by all four maps; white = entry ≤ 1e-12.",
    ]
    .iter()
    .enumerate()
    {
        draw_centred(
            &root,
            line,
            (width / 2, cap_top + k as i32 * LEAD),
            TEXT,
            &GREY,
        )?;
    }
    root.present()?;
    Ok(())
}

/// Draws one panel with its top-left corner at `(left, top)`.
fn draw_panel<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    p: &Problem,
    panel: &Panel,
    (left, top): (i32, i32),
    t_max: f64,
    h_max: f64,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (m, n) = (p.m(), p.n());
    let x0 = left + MAP_LEFT;
    let y0 = top + MAP_TOP;
    let mid_x = x0 + MAP / 2;
    let mid_y = y0 + MAP / 2;
    let px = |j: usize| x0 + (j as f64 * MAP as f64 / n as f64).round() as i32;
    let py = |i: usize| y0 + (i as f64 * MAP as f64 / m as f64).round() as i32;

    // Titles, centred on the panel.
    let cx = left + PANEL_W / 2;
    draw_centred(root, &panel.title, (cx, top), TEXT, &INK)?;
    let counts = format!(
        "{} nonzeros, at most {} per column",
        panel.nonzeros, panel.max_per_column
    );
    draw_centred(root, &counts, (cx, top + LEAD), TEXT, &GREY)?;

    // Marginals: the target histogram above the map (bars grow upwards), the source histogram to its
    // left (bars grow leftwards), each bar aligned with its column or row of the map.
    let bar = RGBColor(150, 150, 150);
    for j in 0..n {
        let h = (p.b()[j] / h_max * HIST as f64).round() as i32;
        // Filled rectangles cover [x0, x1) × [y0, y1) on the bitmap backend.
        root.draw(&Rectangle::new(
            [(px(j), y0 - HIST_GAP - h), (px(j + 1) - 1, y0 - HIST_GAP)],
            bar.filled(),
        ))?;
    }
    for i in 0..m {
        let w = (p.a()[i] / h_max * HIST as f64).round() as i32;
        root.draw(&Rectangle::new(
            [(x0 - HIST_GAP - w, py(i)), (x0 - HIST_GAP, py(i + 1) - 1)],
            bar.filled(),
        ))?;
    }
    draw_centred(
        root,
        "target histogram b",
        (mid_x, y0 - HIST_GAP - HIST - LEAD),
        TEXT,
        &INK,
    )?;
    draw_up_centred(root, "source histogram a", (left, mid_y), TEXT, &INK)?;

    // The plan.
    for ((i, j), &v) in panel.plan.indexed_iter() {
        if v > NONZERO && t_max > 0.0 {
            root.draw(&Rectangle::new(
                [(px(j), py(i)), (px(j + 1), py(i + 1))],
                shade(v / t_max).filled(),
            ))?;
        }
    }
    root.draw(&Rectangle::new(
        [(x0 - 1, y0 - 1), (x0 + MAP, y0 + MAP)],
        INK.stroke_width(1),
    ))?;

    // Bin numbers at the bin centres: j below the map, i at its right.
    let half = |k: usize, size: usize| ((k as f64 + 0.5) * MAP as f64 / size as f64).round() as i32;
    for j in ticks(n) {
        let x = x0 + half(j, n);
        root.draw(&PathElement::new(
            vec![(x, y0 + MAP + 1), (x, y0 + MAP + TICK)],
            INK,
        ))?;
        draw_centred(
            root,
            &j.to_string(),
            (x, y0 + MAP + 1 + TICK + 4),
            TEXT,
            &INK,
        )?;
    }
    for i in ticks(m) {
        let y = y0 + half(i, m);
        root.draw(&PathElement::new(
            vec![(x0 + MAP + 1, y), (x0 + MAP + TICK, y)],
            INK,
        ))?;
        font::draw_text(
            root,
            &i.to_string(),
            (
                x0 + MAP + TICK + LABEL_GAP,
                y - font::CAP_HEIGHT * TEXT as i32 / 2,
            ),
            TEXT,
            &INK,
            font::Direction::Right,
        )?;
    }
    draw_centred(
        root,
        "target bin j",
        (mid_x, y0 + MAP + 1 + TICK + 4 + LEAD + 2),
        TEXT,
        &INK,
    )?;
    draw_up_centred(
        root,
        "source bin i",
        (x0 + MAP + MAP_RIGHT - line_height(TEXT), mid_y),
        TEXT,
        &INK,
    )?;
    Ok(())
}

/// Draws the vertical colour bar from `top` (the largest mass, `t_max`) down to `bottom` (zero), its left
/// edge at `x`, with `ticks` (mass, label) at the right and the bar's name right of them.
fn draw_colour_bar<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    (x, top): (i32, i32),
    bottom: i32,
    t_max: f64,
    ticks: &[(f64, String)],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let len = (bottom - top) as f64;
    for y in top..bottom {
        // The bar's position is √(T / t_max), as in the maps.
        let s = (bottom - y) as f64 / len;
        root.draw(&Rectangle::new(
            [(x, y), (x + BAR, y + 1)],
            shade(s * s).filled(),
        ))?;
    }
    root.draw(&Rectangle::new(
        [(x - 1, top - 1), (x + BAR, bottom)],
        INK.stroke_width(1),
    ))?;
    let label_x = x + BAR + TICK + LABEL_GAP;
    for (v, label) in ticks {
        let frac = if t_max > 0.0 { (v / t_max).sqrt() } else { 0.0 };
        let y = bottom - (len * frac).round() as i32;
        root.draw(&PathElement::new(
            vec![(x + BAR, y), (x + BAR + TICK, y)],
            INK,
        ))?;
        font::draw_text(
            root,
            label,
            (label_x, y - font::CAP_HEIGHT * TEXT as i32 / 2),
            TEXT,
            &INK,
            font::Direction::Right,
        )?;
    }
    let widest = ticks
        .iter()
        .map(|(_, l)| text_width(l, TEXT))
        .max()
        .unwrap_or(0);
    draw_up_centred(
        root,
        "mass T_ij (square-root scale)",
        (label_x + widest + 2 * AXIS_GAP, (top + bottom) / 2),
        TEXT,
        &INK,
    )?;
    Ok(())
}

/// The colour bar's ticks (mass, label): 0, four round masses about evenly spaced along the
/// square-root bar, and the maximum `t_max`.
fn colour_ticks(t_max: f64) -> Vec<(f64, String)> {
    let mut ticks = vec![(0.0, "0".to_string())];
    if t_max > 0.0 {
        for f in [0.2f64, 0.4, 0.6, 0.8] {
            let v = round_1(t_max * f * f);
            ticks.push((v, format_mass(v, 1)));
        }
        ticks.push((t_max, format!("{} = max", format_mass(t_max, 2))));
    }
    ticks
}

/// Bins to number on an axis of `size` bins: multiples of 1, 2 or 5 × 10^e, at most 5 of them.
fn ticks(size: usize) -> Vec<usize> {
    let mut step = 1;
    'outer: for e in 0.. {
        for f in [1, 2, 5] {
            step = f * 10usize.pow(e);
            if size.div_ceil(step) <= 5 {
                break 'outer;
            }
        }
    }
    (0..size).step_by(step).collect()
}

/// `v` rounded to one significant digit.
fn round_1(v: f64) -> f64 {
    if v <= 0.0 {
        return 0.0;
    }
    let p = 10f64.powf(v.log10().floor());
    (v / p).round() * p
}

/// `v` in decimal notation with `digits` significant digits.
fn format_mass(v: f64, digits: i32) -> String {
    if v <= 0.0 {
        return "0".to_string();
    }
    let decimals = (digits - 1 - v.log10().floor() as i32).max(0) as usize;
    format!("{v:.decimals$}")
}

/// The colour of mass fraction `t` = T_ij / max ∈ [0, 1]: √t runs from pale to dark blue, so that small
/// masses stay visible.
fn shade(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 3] = [
        (222.0, 235.0, 247.0),
        (66.0, 146.0, 198.0),
        (8.0, 38.0, 94.0),
    ];
    let s = t.clamp(0.0, 1.0).sqrt() * 2.0;
    let (k, f) = if s < 1.0 { (0, s) } else { (1, s - 1.0) };
    let (lo, hi) = (STOPS[k], STOPS[k + 1]);
    let mix = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    RGBColor(mix(lo.0, hi.0), mix(lo.1, hi.1), mix(lo.2, hi.2))
}
