//! Batches on the GPU: the authors' Adam recipe for B problems at once against the f64 CPU recipe
//! (`src/cpu/adam.rs`), against one-by-one GPU runs, the router on a GPU, and the dispatch count per step;
//! then the lockstep L-BFGS batches (`SparseOt::solve_batch_on`) and the batched Sinkhorn
//! (`Sinkhorn::solve_batch_on`), each against one-by-one GPU solves (bit for bit), the f64 CPU batch, bad
//! problems and dispatch counts. The tolerance paragraph below is the Adam tests'; the others state theirs.
//!
//! GPU tests need an adapter (lavapipe, Mesa's software Vulkan, is enough). Without one they print
//! "SKIPPED: no GPU adapter" and pass, unless `SPARSE_OT_REQUIRE_GPU=1`, where they fail.
//!
//! Tolerances: the GPU computes in f32 (unit roundoff u ≈ 6e-8), so its gradient T1 − a carries a noise
//! δg ≈ 1e-7 on unit masses. One Adam step moves a potential by lr · m̂/(√v̂ + ε), which depends on the
//! gradient only through the ratio m̂/√v̂; its relative error is ≈ δg/|g|. With |g| ≳ 1e-2 during the 20
//! steps (the recipe leaves token errors of that order), each step adds ≈ lr · δg/|g| = 1e-2 · 1e-5 = 1e-7 and
//! 20 steps ≈ 2e-6 to the potentials, and the same to the plan entries (γ ≥ 0.5) and the objective. The
//! assertions use 1e-5 (potentials, objective, plan entries, marginal errors); measured on lavapipe: at most
//! 1.4e-6 on α, 2.4e-6 on plan entries, 5e-7 on the objective. This is far below the ~1e-2 the recipe itself
//! leaves on the token sums. Column sums of the semi-dual plan are exact to f32 rounding of b_j (≤ 1e-5 for
//! b_j ≤ 4), where the f64 CPU plan has them to 1e-9.
#![cfg(feature = "gpu")]

#[path = "common/data.rs"]
mod data;
#[path = "common/gpu.rs"]
mod gpu_common;
#[path = "common/monitor.rs"]
mod monitor_common;

use data::{logits, Rng};
use gpu_common::{gpu, on_gpu, private_context};
use ndarray::{Array2, Array3, Axis};
use sparse_ot::gpu::GpuContext;
use sparse_ot::{
    Batch, Device, Formulation, RanOn, Router, RouterSolver, Sinkhorn, Solution, SparseOt,
    Termination,
};

/// Agreement of f32 GPU and f64 CPU recipe results (see the module docs).
const F32_TOL: f64 = 1e-5;

/// B problems of shape m × n: random positive marginals of unit mass, random costs in [0, 1).
fn random_batch(nb: usize, m: usize, n: usize, seed: u64) -> Batch {
    let mut rng = Rng::new(seed);
    let mut a = Array2::from_shape_simple_fn((nb, m), || 0.5 + rng.next_f64());
    let mut b = Array2::from_shape_simple_fn((nb, n), || 0.5 + rng.next_f64());
    for mut row in a.axis_iter_mut(Axis(0)) {
        let s = row.sum();
        row /= s;
    }
    for mut row in b.axis_iter_mut(Axis(0)) {
        let s = row.sum();
        row /= s;
    }
    let cost = Array3::from_shape_simple_fn((nb, m, n), || rng.next_f64());
    Batch::new(a.view(), b.view(), cost.view()).unwrap()
}

fn max_diff<'a>(x: impl IntoIterator<Item = &'a f64>, y: impl IntoIterator<Item = &'a f64>) -> f64 {
    x.into_iter()
        .zip(y)
        .fold(0.0, |m, (a, b)| m.max((a - b).abs()))
}

/// Asserts that a GPU recipe result agrees with the CPU one within `tol` (module docs).
fn assert_agree(what: &str, gpu: &Solution, cpu: &Solution, tol: f64) {
    assert_eq!(gpu.iterations, cpu.iterations, "{what}: steps");
    assert_eq!(gpu.termination, cpu.termination, "{what}: status");
    let da = max_diff(&gpu.alpha, &cpu.alpha);
    let db = max_diff(&gpu.beta, &cpu.beta);
    assert!(
        da <= tol && db <= tol,
        "{what}: |Δα| {da:.2e}, |Δβ| {db:.2e}"
    );
    assert!(
        (gpu.value - cpu.value).abs() <= tol,
        "{what}: value {} vs {}",
        gpu.value,
        cpu.value
    );
    let dp = max_diff(&gpu.plan.to_dense(), &cpu.plan.to_dense());
    assert!(dp <= tol, "{what}: plan entries differ by {dp:.2e}");
    eprintln!(
        "{what}: |Δα| {da:.1e} |Δβ| {db:.1e} |Δvalue| {:.1e} |Δplan| {dp:.1e}",
        (gpu.value - cpu.value).abs()
    );
    assert!(
        (gpu.marginal_error_rows - cpu.marginal_error_rows).abs() <= tol
            && (gpu.marginal_error_cols - cpu.marginal_error_cols).abs() <= tol,
        "{what}: marginal errors {:.3e}/{:.3e} vs {:.3e}/{:.3e}",
        gpu.marginal_error_rows,
        gpu.marginal_error_cols,
        cpu.marginal_error_rows,
        cpu.marginal_error_cols
    );
}

fn adam(cfg: &SparseOt, batch: &Batch, device: &Device) -> Vec<Solution> {
    cfg.solve_batch_adam_on(batch, 1e-2, 20, device)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn batched_adam_matches_cpu_recipe() {
    let Some(ctx) = gpu() else { return };
    let device = Device::Gpu(ctx.clone());
    let batch = random_batch(5, 9, 6, 1);
    let configs = [
        ("semi-dual k=3", SparseOt::new(3, 0.5).unwrap()),
        (
            "dual k=2",
            SparseOt::new(2, 0.5)
                .unwrap()
                .formulation(Formulation::Dual),
        ),
        (
            "row sparsity k=2",
            SparseOt::new(2, 0.5).unwrap().row_sparsity(),
        ),
    ];
    for (name, cfg) in configs {
        let gpu = adam(&cfg, &batch, &device);
        let cpu = adam(&cfg, &batch, &Device::Cpu);
        for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
            assert_eq!(g.device, on_gpu(&ctx));
            assert_eq!(c.device, RanOn::Cpu);
            assert_agree(&format!("{name}, problem {i}"), g, c, F32_TOL);
        }
    }
}

#[test]
fn batched_equals_one_by_one() {
    let Some(ctx) = gpu() else { return };
    let device = Device::Gpu(ctx);
    let batch = random_batch(4, 7, 5, 2);
    let cfg = SparseOt::new(2, 1.0).unwrap();
    let together = adam(&cfg, &batch, &device);
    for (i, sol) in together.iter().enumerate() {
        let p = batch.problem(i).unwrap();
        let one = Batch::new(
            p.a().insert_axis(Axis(0)),
            p.b().insert_axis(Axis(0)),
            p.cost().insert_axis(Axis(0)),
        )
        .unwrap();
        let alone = adam(&cfg, &one, &device).remove(0);
        // Problem p's workgroups do the same arithmetic in the same order whatever B is: equal bits.
        assert_eq!(sol.alpha, alone.alpha, "problem {i}: α");
        assert_eq!(sol.beta, alone.beta, "problem {i}: β");
        assert_eq!(sol.value, alone.value, "problem {i}: value");
        assert_eq!(sol.plan, alone.plan, "problem {i}: plan");
    }
}

#[test]
fn bad_problem_keeps_its_own_error() {
    let Some(ctx) = gpu() else { return };
    let batch = random_batch(3, 6, 4, 3);
    let mut cost = batch.cost().to_owned();
    cost[[1, 2, 3]] = f64::NAN;
    let bad = Batch::new(batch.a(), batch.b(), cost.view()).unwrap();
    let cfg = SparseOt::new(2, 1.0).unwrap();
    let out = cfg
        .solve_batch_adam_on(&bad, 1e-2, 20, &Device::Gpu(ctx.clone()))
        .unwrap();
    assert!(out[1].is_err(), "the NaN problem must fail");
    let good = adam(&cfg, &batch, &Device::Gpu(ctx));
    for i in [0, 2] {
        let sol = out[i].as_ref().unwrap();
        assert_eq!(sol.alpha, good[i].alpha, "problem {i}");
    }
    assert!(cfg
        .solve_batch_adam_on(&batch, 0.0, 20, &Device::Cpu)
        .is_err());
}

/// Each step is a fixed number of dispatches for the whole batch: the count does not grow with B.
#[test]
fn dispatches_do_not_grow_with_batch_size() {
    let Some(shared) = gpu() else { return };
    // A private context on the same device: its counter sees only this test's work.
    let ctx = private_context(&shared);
    let device = Device::Gpu(ctx.clone());
    let cfg = SparseOt::new(2, 1.0).unwrap();
    let mut per_run = Vec::new();
    for nb in [1, 6] {
        let before = ctx.dispatches_recorded();
        let out = cfg
            .solve_batch_adam_on(&random_batch(nb, 6, 4, 4), 1e-2, 20, &device)
            .unwrap();
        assert!(out.iter().all(|r| r.is_ok()));
        per_run.push(ctx.dispatches_recorded() - before);
    }
    // The cost's transpose on the device, then (6 × 4 problems fit one workgroup) the fused recipe (every
    // step and the final evaluation), the objective and the plan passes.
    assert_eq!(per_run, vec![4, 4]);
}

/// The authors' router test (S = 8, E = 2, capacity factor 2, so capacity 8) on the GPU: row sums 1 within
/// the recipe's 2e-2 (tests/moe.rs), column sums 4 within f32 rounding, at most capacity tokens per expert,
/// and the same routing as the CPU.
#[test]
fn authors_router_on_gpu() {
    let Some(ctx) = gpu() else { return };
    let device = Device::Gpu(ctx.clone());
    let l = logits(16, 8, 2, 7);
    let r = Router::experts_choose(2.0).unwrap();
    let out = r.route_on(l.view(), &device).unwrap();
    assert_eq!(out.device, on_gpu(&ctx));
    assert_eq!(out.capacity, 8);
    assert!(out.load.tokens_per_expert.max <= 8.0);
    for (g, rep) in out.groups.iter().enumerate() {
        assert!(rep.token_mass_error <= 2e-2, "group {g}: {rep:?}");
        assert!(rep.expert_mass_error <= F32_TOL, "group {g}: {rep:?}");
        assert!(rep.iterations <= 20);
    }
    let cpu = r.route_on(l.view(), &Device::Cpu).unwrap();
    assert_eq!(cpu.device, RanOn::Cpu);
    assert_eq!(out.dispatch, cpu.dispatch);
    for (g, (a, b)) in out.groups.iter().zip(&cpu.groups).enumerate() {
        // With E = 2 and capacity S, some groups are balanced at α = 0 (gradient exactly 0 in f64, rounding
        // noise ~1e-7 in f32): both stop before the first step, the GPU through its f32 noise floor.
        assert_eq!(a.iterations, b.iterations, "group {g}: {a:?} vs {b:?}");
        assert!(
            (a.token_mass_error - b.token_mass_error).abs() <= F32_TOL,
            "group {g}: {a:?} vs {b:?}"
        );
    }
    // Capacity 4 (factor 1) binds: still at most 4 tokens per expert; tokens-choose on the GPU too.
    let tight = Router::experts_choose(1.0).unwrap();
    let out = tight.route_on(l.view(), &device).unwrap();
    assert!(out.load.tokens_per_expert.max <= 4.0);
    let top1 = Router::tokens_choose(1).unwrap();
    let out = top1.route_on(l.view(), &device).unwrap();
    assert!(out.load.experts_per_token.max <= 1.0);
    assert_eq!(out.dispatch, top1.route(l.view()).unwrap().dispatch);
}

/// The accurate solver on the GPU (groups one after another): row and column sums within the authors' 1e-3.
#[test]
fn accurate_router_on_gpu() {
    let Some(ctx) = gpu() else { return };
    let l = logits(4, 8, 2, 11);
    let r = Router::experts_choose(2.0)
        .unwrap()
        .solver(RouterSolver::Accurate {
            tol: 1e-5,
            max_iter: 200,
        })
        .unwrap();
    let out = r.route_on(l.view(), &Device::Gpu(ctx)).unwrap();
    for (g, rep) in out.groups.iter().enumerate() {
        assert!(rep.token_mass_error <= 1e-3, "group {g}: {rep:?}");
        assert!(rep.expert_mass_error <= 1e-3, "group {g}: {rep:?}");
    }
    assert!(out.load.tokens_per_expert.max <= 8.0);
}

/// The accurate solvers' configurations the lockstep tests run: sparse semi-dual and dual (k < m, so f32
/// L-BFGS may stall and hand over to the CPU finish), quadratic (k = m), and row sparsity (transposed).
/// (name, configuration, nonzeros per lane at most).
fn lbfgs_configs() -> Vec<(&'static str, SparseOt, Option<usize>)> {
    vec![
        ("semi-dual k 3", SparseOt::new(3, 0.5).unwrap(), Some(3)),
        (
            "dual k 3",
            SparseOt::new(3, 0.5)
                .unwrap()
                .formulation(Formulation::Dual),
            Some(3),
        ),
        (
            "quadratic",
            SparseOt::quadratic(1.0).unwrap().tol(1e-6).unwrap(),
            None,
        ),
        (
            "rows k 2",
            SparseOt::new(2, 1.0).unwrap().row_sparsity(),
            Some(2),
        ),
    ]
}

/// Lockstep L-BFGS: every problem of a batch keeps its own driver and takes the decisions it takes alone,
/// and its workgroups do the same arithmetic in the same order whatever B is, so each batched result equals
/// the single-problem GPU solve bit for bit, iteration counts and statuses included, although the problems
/// need different numbers of iterations (they run out of phase).
#[test]
fn lbfgs_batch_equals_one_by_one() {
    let Some(ctx) = gpu() else { return };
    let device = Device::Gpu(ctx);
    let batch = random_batch(5, 9, 7, 11);
    let mut iteration_counts = std::collections::BTreeSet::new();
    for (name, cfg, _) in lbfgs_configs() {
        let together = cfg.solve_batch_on(&batch, &device);
        assert_eq!(together.len(), batch.len());
        for (i, sol) in together.iter().enumerate() {
            let sol = sol.as_ref().unwrap();
            let alone = cfg.solve_on(&batch.problem(i).unwrap(), &device).unwrap();
            let what = format!("{name} problem {i}");
            assert_eq!(sol.iterations, alone.iterations, "{what}: iterations");
            assert_eq!(sol.termination, alone.termination, "{what}: status");
            assert_eq!(sol.alpha, alone.alpha, "{what}: α");
            assert_eq!(sol.beta, alone.beta, "{what}: β");
            assert_eq!(sol.value.to_bits(), alone.value.to_bits(), "{what}: value");
            assert_eq!(sol.plan, alone.plan, "{what}: plan");
            assert_eq!(sol.device, alone.device, "{what}: device");
            iteration_counts.insert(sol.iterations);
        }
    }
    assert!(
        iteration_counts.len() > 1,
        "the problems should need different iteration counts: {iteration_counts:?}"
    );
}

/// Batched GPU against batched CPU (f64): the values agree to the f32 value tolerance of tests/gpu.rs
/// (1e-6 marginals ≈ 16 u of unit mass; values ≈ 1e-6 · ‖α‖ · conditioning → 2e-5), every GPU result says
/// it converged and every plan respects k.
#[test]
fn lbfgs_batch_agrees_with_cpu_batch() {
    let Some(ctx) = gpu() else { return };
    let device = Device::Gpu(ctx);
    let batch = random_batch(6, 10, 8, 12);
    for (name, cfg, k) in lbfgs_configs() {
        let cfg = cfg.tol(1e-6).unwrap();
        let gpu = cfg.solve_batch_on(&batch, &device);
        let cpu = cfg.solve_batch(&batch);
        for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
            let (g, c) = (g.as_ref().unwrap(), c.as_ref().unwrap());
            let what = format!("{name} problem {i}");
            assert!(
                (g.value - c.value).abs() <= 2e-5,
                "{what}: value {} (gpu) vs {} (cpu)",
                g.value,
                c.value
            );
            assert!(g.converged(), "{what}: {g}");
            // Quadratic OT's optimum has exact marginals; with k < m the (semi-)dual optimum certifies
            // itself by the duality gap instead (its row sums need not equal a).
            if k.is_none() {
                assert!(
                    g.marginal_error_rows.max(g.marginal_error_cols) <= 1e-5,
                    "{what}: {g}"
                );
            }
            if let Some(k) = k {
                let sparse = match &g.plan {
                    sparse_ot::Plan::Sparse(p) => p.max_lane_nnz(),
                    sparse_ot::Plan::Dense(_) => panic!("{what}: sparse plan expected"),
                };
                assert!(sparse <= k, "{what}: {sparse} nonzeros in a lane, k = {k}");
            }
        }
    }
}

/// One bad problem (a NaN cost, or a zero target mass for the semi-dual) gets its own error in a GPU
/// L-BFGS batch; the others equal the batch without it.
#[test]
fn lbfgs_batch_bad_problem_keeps_its_own_error() {
    let Some(ctx) = gpu() else { return };
    let device = Device::Gpu(ctx);
    let batch = random_batch(4, 6, 5, 13);
    let mut cost = batch.cost().to_owned();
    cost[[2, 1, 1]] = f64::NAN;
    let bad = Batch::new(batch.a(), batch.b(), cost.view()).unwrap();
    let cfg = SparseOt::new(2, 1.0).unwrap();
    let out = cfg.solve_batch_on(&bad, &device);
    assert!(
        matches!(out[2], Err(sparse_ot::Error::NonFinite { .. })),
        "{:?}",
        out[2]
    );
    let good = cfg.solve_batch_on(&batch, &device);
    for i in [0, 1, 3] {
        let (o, g) = (out[i].as_ref().unwrap(), good[i].as_ref().unwrap());
        assert_eq!(o.alpha, g.alpha, "problem {i}");
        assert_eq!(o.plan, g.plan, "problem {i}");
    }
}

/// A round of the lockstep L-BFGS is a fixed set of dispatches for the whole batch: B copies of one problem
/// take exactly the dispatches of that problem alone.
#[test]
fn lbfgs_dispatches_do_not_grow_with_batch_size() {
    let Some(shared) = gpu() else { return };
    let ctx = private_context(&shared);
    let device = Device::Gpu(ctx.clone());
    let one = random_batch(1, 8, 6, 14);
    let p = one.problem(0).unwrap();
    let cfg = SparseOt::quadratic(1.0).unwrap().tol(1e-6).unwrap();
    let mut per_run = Vec::new();
    for nb in [1, 8] {
        let costs = p.cost().broadcast((nb, 8, 6)).unwrap().to_owned();
        let batch = Batch::shared_marginals(p.a(), p.b(), costs.view()).unwrap();
        let before = ctx.dispatches_recorded();
        let out = cfg.solve_batch_on(&batch, &device);
        assert!(out.iter().all(|r| r.is_ok()));
        per_run.push(ctx.dispatches_recorded() - before);
    }
    assert!(per_run[0] > 0);
    assert_eq!(per_run[0], per_run[1], "dispatches for B = 1 and B = 8");
}

// ---- Batched log-domain Sinkhorn (`Sinkhorn::solve_batch_on`) ----

/// Every problem of `batch` solved with `cfg` on `device`; panics on any per-problem error.
fn sinkhorn_batch(cfg: &Sinkhorn, batch: &Batch, device: &Device) -> Vec<Solution> {
    cfg.solve_batch_on(batch, device)
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|e| panic!("problem {i}: {e}")))
        .collect()
}

/// Asserts that a batched GPU Sinkhorn result is bit for bit the one-by-one GPU result of the same problem.
#[track_caller]
fn assert_same_bits(what: &str, batched: &Solution, alone: &Solution) {
    assert_eq!(batched.iterations, alone.iterations, "{what}: iterations");
    assert_eq!(batched.termination, alone.termination, "{what}: status");
    assert_eq!(batched.alpha, alone.alpha, "{what}: f");
    assert_eq!(batched.beta, alone.beta, "{what}: g");
    assert_eq!(batched.plan, alone.plan, "{what}: plan");
    assert_eq!(
        batched.value.to_bits(),
        alone.value.to_bits(),
        "{what}: value"
    );
}

/// `batch` with problem p's cost multiplied by `scales[p]` (so each has its own cost range, hence its own
/// ε schedule length).
fn scaled(batch: &Batch, scales: &[f64]) -> Batch {
    let mut cost = batch.cost().to_owned();
    for (mut c, &s) in cost.axis_iter_mut(Axis(0)).zip(scales) {
        c *= s;
    }
    Batch::new(batch.a(), batch.b(), cost.view()).unwrap()
}

/// Each problem's workgroups (`workgroup_id.z` = p) do the same f32 arithmetic in the same order whatever B
/// is, its ε and stage changes come from the same host decisions, and frozen problems are never written:
/// batched results equal one-by-one GPU results bit for bit, iterations included.
#[test]
fn batched_sinkhorn_equals_one_by_one() {
    let Some(ctx) = gpu() else { return };
    let device = Device::Gpu(ctx.clone());
    let batch = scaled(&random_batch(5, 9, 7, 21), &[1.0, 3.0, 0.5, 2.0, 1.0]);
    let cfg = Sinkhorn::new(0.05).unwrap().tol(1e-5).unwrap();
    let together = sinkhorn_batch(&cfg, &batch, &device);
    for (i, sol) in together.iter().enumerate() {
        assert_eq!(sol.device, on_gpu(&ctx));
        let alone = cfg.solve_on(&batch.problem(i).unwrap(), &device).unwrap();
        assert_same_bits(&format!("problem {i}"), sol, &alone);
    }
}

/// The batched f32 GPU solve against the f64 CPU batch solved to 1e-12 (ε = 0.05, unit masses, costs in
/// [0, 1) times a scale ≤ 3, so range/ε ≤ 60). What is compared and why:
/// * row marginals: the GPU stops at max |T1 − a| ≤ 1e-5, measured on the f32 iterate; the plan is rebuilt
///   and measured in f64 on the host, which adds f32 rounding of the potentials, ≈ |f| u / ε ≈ 1e-6 relative
///   per entry; 2e-5. Columns are exact after the g-update up to the same rounding; 2e-5.
/// * plan entries and transport cost: the GPU plan is the f64 optimum perturbed by its row gap ≤ 1e-5, and
///   entries move by about the gap they carry (measured on lavapipe: ≤ 9e-6 per entry, ≤ 5e-6 on ⟨T,C⟩);
///   5e-5 for entries, and max C (≤ 3) × the summed row gaps (≤ m × 1e-5) ≈ 3e-4 for ⟨T,C⟩.
/// * dual value f·a + g·b − ε ΣT: stationary at the optimum (its gradient is the marginal gap), so it moves
///   to second order, ≈ gap × potential difference ≈ 1e-5 × 3e-4 = 3e-9 (measured ≤ 1.2e-9); 1e-7.
/// * the potentials are not compared entry by entry: at range/ε = 60 the dual is nearly flat along
///   directions that move f_i where row i's mass sits on tiny entries, so a 1e-5 gap allows potential
///   differences ~1e-4 (measured 2.8e-4) that change the plan by less than the gap.
#[test]
fn batched_sinkhorn_agrees_with_cpu_batch() {
    let Some(ctx) = gpu() else { return };
    let batch = scaled(&random_batch(4, 9, 7, 22), &[1.0, 3.0, 0.5, 2.0]);
    let cfg = Sinkhorn::new(0.05).unwrap().tol(1e-5).unwrap();
    let gpu = sinkhorn_batch(&cfg, &batch, &Device::Gpu(ctx));
    let cpu = sinkhorn_batch(&cfg.clone().tol(1e-12).unwrap(), &batch, &Device::Cpu);
    for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
        assert!(g.converged() && c.converged(), "problem {i}: {g} / {c}");
        assert!(g.marginal_error_rows <= 2e-5, "problem {i}: {g}");
        assert!(g.marginal_error_cols <= 2e-5, "problem {i}: {g}");
        let dp = max_diff(&g.plan.to_dense(), &c.plan.to_dense());
        let dc = (g.transport_cost - c.transport_cost).abs();
        let dv = (g.value - c.value).abs();
        eprintln!(
            "problem {i}: {} vs {} iterations, |Δplan| {dp:.1e} |Δcost| {dc:.1e} |Δvalue| {dv:.1e} \
             rows {:.1e} cols {:.1e}",
            g.iterations, c.iterations, g.marginal_error_rows, g.marginal_error_cols
        );
        assert!(dp <= 5e-5, "problem {i}: plan entries differ by {dp:.2e}");
        assert!(
            dc <= 3e-4,
            "problem {i}: transport cost differs by {dc:.2e}"
        );
        assert!(dv <= 1e-7, "problem {i}: value {} vs {}", g.value, c.value);
    }
}

/// A problem with a NaN cost and one with a zero source mass (Sinkhorn takes log a_i) get their own errors;
/// the valid ones are solved as if the bad ones were not there (equal bits).
#[test]
fn sinkhorn_bad_problem_keeps_its_own_error() {
    let Some(ctx) = gpu() else { return };
    let device = Device::Gpu(ctx);
    let batch = random_batch(4, 6, 5, 23);
    let mut cost = batch.cost().to_owned();
    cost[[1, 2, 3]] = f64::NAN;
    let mut a = batch.a().to_owned();
    // Problem 3: move a_0 to a_1, keeping the mass.
    let a0 = a[[3, 0]];
    a[[3, 0]] = 0.0;
    a[[3, 1]] += a0;
    let bad = Batch::new(a.view(), batch.b(), cost.view()).unwrap();
    let cfg = Sinkhorn::new(0.05).unwrap().tol(1e-5).unwrap();
    let out = cfg.solve_batch_on(&bad, &device);
    assert!(
        matches!(out[1], Err(sparse_ot::Error::NonFinite { .. })),
        "{:?}",
        out[1]
    );
    // A zero entry in a carries no mass: that problem is solved on its own, without the zero row.
    let zero = out[3].as_ref().unwrap();
    assert!(zero.converged(), "{zero}");
    assert!(zero.dense_plan().row(0).iter().all(|&t| t == 0.0), "{zero}");
    let good = sinkhorn_batch(&cfg, &batch, &device);
    for i in [0, 2] {
        let sol = out[i].as_ref().unwrap();
        assert!(sol.converged(), "problem {i}: {sol}");
        assert_same_bits(&format!("problem {i}"), sol, &good[i]);
    }
    // The CPU batch rejects the same problem and solves the others, the zero-mass one included.
    let cpu = cfg.solve_batch_on(&bad, &Device::Cpu);
    assert!(cpu[1].is_err() && cpu[3].is_ok() && cpu[0].is_ok() && cpu[2].is_ok());
}

/// Problems with different cost ranges have ε schedules of different lengths (ε₀ = range, halved down to
/// ε): a constant cost (range 0, one stage, its plan a bᵀ is reached at the first check) stops long before
/// the others, which go on through their own stages. Each ends as it would alone and agrees with the CPU.
#[test]
fn sinkhorn_problems_keep_their_own_schedules() {
    let Some(ctx) = gpu() else { return };
    let device = Device::Gpu(ctx);
    let scales = [1.0, 0.0, 4.0, 0.25];
    let batch = scaled(&random_batch(4, 8, 6, 24), &scales);
    let every = 10;
    let cfg = Sinkhorn::new(0.1)
        .unwrap()
        .tol(1e-5)
        .unwrap()
        .check_every(every)
        .unwrap();
    let gpu = sinkhorn_batch(&cfg, &batch, &device);
    let iterations: Vec<usize> = gpu.iter().map(|s| s.iterations).collect();
    eprintln!("iterations per problem (cost scales {scales:?}): {iterations:?}");
    assert_eq!(
        iterations[1], every,
        "the constant cost converges at the first check"
    );
    assert!(
        iterations
            .iter()
            .enumerate()
            .all(|(i, &it)| i == 1 || it > iterations[1]),
        "{iterations:?}"
    );
    for (i, sol) in gpu.iter().enumerate() {
        assert!(sol.converged(), "problem {i}: {sol}");
        let p = batch.problem(i).unwrap();
        let alone = cfg.solve_on(&p, &device).unwrap();
        assert_same_bits(&format!("problem {i}"), sol, &alone);
        // f32 against f64 (see batched_sinkhorn_agrees_with_cpu_batch; ε = 0.1 here, scale ≤ 4).
        let reference = cfg.clone().tol(1e-12).unwrap().solve(&p).unwrap();
        let dp = max_diff(&sol.plan.to_dense(), &reference.plan.to_dense());
        assert!(dp <= 1e-4, "problem {i}: plan entries differ by {dp:.2e}");
    }
}

/// Within one batch some problems converge and others run out of iterations: each gets its own status and
/// count (as alone), and the single-problem path (B = 1) still reports every check to its observer.
#[test]
fn sinkhorn_statuses_are_per_problem() {
    let Some(ctx) = gpu() else { return };
    let device = Device::Gpu(ctx);
    // Problem 1 has a constant cost (converges at the first check); the others need more than 40 iterations.
    let batch = scaled(&random_batch(3, 8, 6, 26), &[1.0, 0.0, 4.0]);
    let cfg = Sinkhorn::new(0.1).unwrap().tol(1e-5).unwrap().max_iter(40);
    let out = sinkhorn_batch(&cfg, &batch, &device);
    assert!(out[1].converged(), "{}", out[1]);
    assert_eq!(out[1].iterations, 10);
    for i in [0, 2] {
        assert_eq!(out[i].termination, Termination::MaxIterations, "{}", out[i]);
        assert_eq!(out[i].iterations, 40);
    }
    for (i, sol) in out.iter().enumerate() {
        let p = batch.problem(i).unwrap();
        let (monitor, steps) = monitor_common::step_recorder();
        let alone = cfg.clone().monitor(monitor).solve_on(&p, &device).unwrap();
        let checks: Vec<(usize, f64)> = steps
            .lock()
            .unwrap()
            .iter()
            .map(|pr| (pr.iteration, pr.marginal_error))
            .collect();
        assert_same_bits(&format!("problem {i}"), sol, &alone);
        let at: Vec<usize> = checks.iter().map(|c| c.0).collect();
        let expected: Vec<usize> = (1..=sol.iterations / 10).map(|c| 10 * c).collect();
        assert_eq!(at, expected, "problem {i}: checks");
        if sol.converged() {
            assert!(checks.last().unwrap().1 <= 1e-5, "problem {i}: {checks:?}");
        }
    }
}

/// A round is 2 dispatches per iteration for the whole batch plus 1 reduction at the check, whatever B is.
#[test]
fn sinkhorn_dispatches_do_not_grow_with_batch_size() {
    let Some(shared) = gpu() else { return };
    let ctx = private_context(&shared);
    let device = Device::Gpu(ctx.clone());
    // tol 0 runs exactly max_iter iterations: 25 = two checked rounds of 10 and a last round of 5 unchecked
    // (one ε, so the columns of the start point are computed once).
    let cfg = Sinkhorn::new(0.05)
        .unwrap()
        .epsilon_scaling(None)
        .unwrap()
        .tol(0.0)
        .unwrap()
        .max_iter(25)
        .check_every(10)
        .unwrap();
    let mut per_run = Vec::new();
    for nb in [1, 7] {
        let before = ctx.dispatches_recorded();
        let out = sinkhorn_batch(&cfg, &random_batch(nb, 6, 4, 25), &device);
        for sol in &out {
            assert_eq!(sol.termination, Termination::MaxIterations, "{sol}");
            assert_eq!(sol.iterations, 25);
        }
        per_run.push(ctx.dispatches_recorded() - before);
    }
    // The start's columns (2), rounds of (sweep, merge) per iteration and one reduction per check.
    let expected = 2 + 2 * (2 * 10 + 1) + 2 * 5;
    assert_eq!(per_run, vec![expected, expected]);
}

/// GPU batch progress: every problem is reported once (rejected, converged on the device, or finished on
/// the CPU after its f32 iteration stalled), and the count ends at the batch size.
#[test]
fn lbfgs_batch_progress_counts_every_problem() {
    let Some(ctx) = gpu() else { return };
    let batch = random_batch(6, 9, 7, 15);
    let mut cost = batch.cost().to_owned();
    cost[[4, 0, 0]] = f64::INFINITY;
    let batch = Batch::new(batch.a(), batch.b(), cost.view()).unwrap();
    for (name, cfg, _) in lbfgs_configs() {
        let (monitor, seen) = monitor_common::finished_recorder();
        let out = cfg
            .monitor(monitor)
            .solve_batch_on(&batch, &Device::Gpu(ctx.clone()));
        assert!(out[4].is_err(), "{name}");
        let seen = monitor_common::sorted(&seen);
        assert_eq!(seen, (1..=6).map(|d| (d, 6)).collect::<Vec<_>>(), "{name}");
    }
}

/// Batched Sinkhorn progress on the GPU: each problem reported once (rejected, converged at a check, or
/// stopped by the iteration limit), ending at the batch size.
#[test]
fn sinkhorn_batch_progress_counts_every_problem() {
    let Some(ctx) = gpu() else { return };
    let batch = random_batch(5, 7, 6, 16);
    let mut cost = batch.cost().to_owned();
    cost[[1, 2, 2]] = f64::NAN;
    let batch = Batch::new(batch.a(), batch.b(), cost.view()).unwrap();
    for max_iter in [3, 10_000] {
        let cfg = Sinkhorn::new(0.1).unwrap().max_iter(max_iter);
        let (monitor, seen) = monitor_common::finished_recorder();
        let out = cfg
            .monitor(monitor)
            .solve_batch_on(&batch, &Device::Gpu(ctx.clone()));
        assert!(out[1].is_err());
        let seen = monitor_common::sorted(&seen);
        assert_eq!(
            seen,
            (1..=5).map(|d| (d, 5)).collect::<Vec<_>>(),
            "max_iter {max_iter}"
        );
    }
}

/// The router on GPU buffers (logits in, tokens and combine weights out, nothing read back by the library)
/// routes as `route_on` on the same GPU: the same tokens per expert, and combine weights equal to the gates
/// up to f32 rounding (the gates are computed here in f32 from f32 logits, there in f64 and rounded: a few
/// units of f32 roundoff on values ≤ 1, so 1e-6). Unsupported settings and short buffers are typed errors.
#[test]
fn router_on_gpu_buffers_matches_route_on() {
    let Some(ctx) = gpu() else { return };
    // (G, S, E, capacity factor, route_on first): fewer tokens than experts, a capacity cut to S, more tokens
    // than one workgroup, and a workspace left by route_on before route_buffers reuses it.
    for (g, s, e, factor, host_first) in [
        (6, 16, 4, 1.0, false),
        (6, 16, 4, 2.0, false),
        (3, 4, 8, 1.0, false),
        (2, 16, 4, 8.0, true),
        (2, 70, 3, 1.0, true),
    ] {
        // f32 logits; the host-side router gets the same values widened to f64. The buffer is larger than
        // the shape (junk after it), as an application's arena may be.
        let l32: Vec<f32> = logits(g, s, e, 21).iter().map(|&x| x as f32).collect();
        let l =
            Array3::from_shape_vec((g, s, e), l32.iter().map(|&x| f64::from(x)).collect()).unwrap();
        let padded: Vec<f32> = l32.iter().copied().chain([1e30; 7]).collect();
        let buf = gpu_common::storage_f32(&ctx, "logits", &padded);
        let r = Router::experts_choose(factor).unwrap();
        let (out, host) = if host_first {
            let host = r.route_on(l.view(), &Device::Gpu(ctx.clone())).unwrap();
            (r.route_buffers(&ctx, &buf, (g, s, e)).unwrap(), host)
        } else {
            let out = r.route_buffers(&ctx, &buf, (g, s, e)).unwrap();
            (
                out,
                r.route_on(l.view(), &Device::Gpu(ctx.clone())).unwrap(),
            )
        };
        let cap = out.capacity;
        assert_eq!(cap, host.capacity.min(s));
        let tokens = gpu_common::read_u32(&ctx, &out.tokens, g * e * cap);
        let combine = gpu_common::read_f32(&ctx, &out.combine, g * e * cap);
        for grp in 0..g {
            for ex in 0..e {
                let slots = (grp * e + ex) * cap..(grp * e + ex + 1) * cap;
                let taken: Vec<usize> = tokens[slots.clone()]
                    .iter()
                    .filter(|&&t| t != u32::MAX)
                    .map(|&t| t as usize)
                    .collect();
                let expected: Vec<usize> =
                    (0..s).filter(|&t| host.dispatch[[grp, t, ex]]).collect();
                assert_eq!(
                    taken, expected,
                    "{g}x{s}x{e} factor {factor}, group {grp}, expert {ex}"
                );
                for (w, &t) in tokens[slots.clone()].iter().enumerate() {
                    let c = f64::from(combine[slots.start + w]);
                    let want = if t == u32::MAX {
                        0.0
                    } else {
                        host.combine[[grp, t as usize, ex]]
                    };
                    assert!((c - want).abs() <= 1e-6, "combine {c} vs {want}");
                }
            }
        }
    }
    let (g, s, e) = (6, 16, 4);
    let l32: Vec<f32> = logits(g, s, e, 21).iter().map(|&x| x as f32).collect();
    let buf = gpu_common::storage_f32(&ctx, "logits", &l32);
    let unsupported = [
        Router::tokens_choose(1).unwrap(),
        Router::experts_choose(1.0)
            .unwrap()
            .solver(RouterSolver::ACCURATE)
            .unwrap(),
    ];
    for r in unsupported {
        assert!(matches!(
            r.route_buffers(&ctx, &buf, (g, s, e)),
            Err(sparse_ot::Error::Unavailable { .. })
        ));
    }
    let r = Router::experts_choose(1.0).unwrap();
    assert!(matches!(
        r.route_buffers(&ctx, &buf, (g + 1, s, e)),
        Err(sparse_ot::Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        r.route_buffers(&ctx, &buf, (0, s, e)),
        Err(sparse_ot::Error::Empty { .. })
    ));
    // Logits inside a larger buffer, at an offset of one storage alignment: the same routing as from
    // offset 0, bit for bit; an offset off the alignment is a typed error, as is a shape that runs past
    // the buffer's end after the offset.
    let align = ctx.limits().min_storage_buffer_offset_alignment as usize;
    let shifted: Vec<f32> = std::iter::repeat_n(-7.0f32, align / 4)
        .chain(l32.iter().copied())
        .collect();
    let shifted_buf = gpu_common::storage_f32(&ctx, "logits at an offset", &shifted);
    let at = r
        .route_buffer_at(&ctx, &shifted_buf, align as u64, (g, s, e))
        .unwrap();
    let plain = r.route_buffers(&ctx, &buf, (g, s, e)).unwrap();
    let n = g * e * plain.capacity;
    assert_eq!(
        gpu_common::read_u32(&ctx, &at.tokens, n),
        gpu_common::read_u32(&ctx, &plain.tokens, n)
    );
    assert_eq!(
        gpu_common::read_f32(&ctx, &at.combine, n),
        gpu_common::read_f32(&ctx, &plain.combine, n)
    );
    if align > 4 {
        assert!(matches!(
            r.route_buffer_at(&ctx, &shifted_buf, 4, (g, s, e)),
            Err(sparse_ot::Error::InvalidParameter { .. })
        ));
    }
    assert!(matches!(
        r.route_buffer_at(&ctx, &buf, align as u64, (g, s, e)),
        Err(sparse_ot::Error::ShapeMismatch { .. })
    ));
}

/// A device an application opened with 8 storage buffers per stage (WebGPU's default limit), below the 11
/// the fused recipe binds, on the adapter of `shared`; None when that adapter cannot open one.
fn limited_context(shared: &GpuContext) -> Option<GpuContext> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = wgpu::Backends::all();
    let instance = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).ok()?;
    if adapter.get_info().name != shared.adapter_name() {
        return None;
    }
    let limits = wgpu::Limits {
        max_storage_buffers_per_shader_stage: 8,
        ..adapter.limits()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("8 storage buffers"),
        required_limits: limits,
        ..Default::default()
    }))
    .ok()?;
    Some(GpuContext::from_device(
        device,
        queue,
        shared.adapter_name(),
    ))
}

/// A route of 256-token × 32-expert groups is 4 dispatches whatever G (gates, the fused recipe: every Adam
/// step and the final evaluation in one kernel, plan extraction, combine weights), where the unfused recipe
/// takes 3 per step (65 in all). On a device that refuses the fused kernel's bindings the route takes the unfused
/// path and routes the same tokens: the two evaluate columns with different reduction trees (16 threads per
/// column against 64), so potentials agree to f32 rounding, and a token whose score sits within that
/// rounding of an expert's capacity cut could change sides; on these logits none does.
#[test]
fn router_groups_run_fused_in_four_dispatches() {
    let Some(shared) = gpu() else { return };
    let ctx = private_context(&shared);
    let (s, e) = (256, 32);
    let r = Router::experts_choose(1.0).unwrap();
    let mut routes = Vec::new();
    for g in [1, 4] {
        let l32: Vec<f32> = logits(g, s, e, 33).iter().map(|&x| x as f32).collect();
        let buf = gpu_common::storage_f32(&ctx, "logits", &l32);
        let before = ctx.dispatches_recorded();
        let out = r.route_buffers(&ctx, &buf, (g, s, e)).unwrap();
        assert_eq!(ctx.dispatches_recorded() - before, 4, "G = {g}");
        routes.push((buf, out));
    }
    let (buf, fused) = &routes[1];
    let g = 4;
    let Some(limited) = limited_context(&shared) else {
        eprintln!(
            "SKIPPED (fallback half): the adapter would not open a device with 8 storage buffers"
        );
        return;
    };
    // The application's buffer lives on the other device: copy the logits over.
    let l32 = gpu_common::read_f32(&ctx, buf, g * s * e);
    let lbuf = gpu_common::storage_f32(&limited, "logits", &l32);
    let before = limited.dispatches_recorded();
    let unfused = r.route_buffers(&limited, &lbuf, (g, s, e)).unwrap();
    assert_eq!(
        limited.dispatches_recorded() - before,
        1 + 20 * 3 + 2 + 1 + 1
    );
    let cap = fused.capacity;
    assert_eq!(
        gpu_common::read_u32(&ctx, &fused.tokens, g * e * cap),
        gpu_common::read_u32(&limited, &unfused.tokens, g * e * cap)
    );
}
