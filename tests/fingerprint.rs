//! Bitwise fingerprints of every public solver configuration, so that refactors provably leave results
//! bit-identical.
//!
//! Each result is recorded as `name field value` lines: scalars as the hex of their bit pattern, arrays as
//! `length:FNV-1a-64` over the bit patterns in order, terminations as their Debug string. The CPU results
//! are compared with `tests/data/fingerprints.txt`; GPU results (f32, driver-dependent) with
//! `tests/data/fingerprints_gpu.txt`, whose first line names the adapter they were recorded on: on another
//! adapter the bitwise comparison is skipped. `SPARSE_OT_BLESS=1` rewrites the files instead of comparing.
//!
//! The inputs come from `tests/common/data.rs` (a random problem, a batch around it, router logits). The
//! recorded files belong to those exact inputs: whoever changes what they produce must bless the files on
//! the library before the change being proven (a checkout of the previous commit with this file and
//! `tests/common/data.rs` copied in), then compare on the changed library.

use std::fmt::Write as _;
use std::path::PathBuf;

#[path = "common/data.rs"]
mod data;

use data::{logits, random_problem, Rng};
use ndarray::Array3;
use sparse_ot::{
    golden_problem, Batch, Device, ExactOt, Formulation, Plan, Precision, Problem, Result, Router,
    RouterSolver, Routing, Sinkhorn, Solution, SparseOt,
};

/// The random problem: 64 × 48, marginals non-uniform with sum 1, cost uniform in [0, 1).
fn random() -> Problem {
    random_problem(64, 48, 20_240_601)
}

/// Three problems sharing the random problem's marginals: its cost plus p · 0.05 · U[0, 1) for p = 0, 1, 2.
fn batch(p: &Problem) -> Batch {
    let (m, n) = (p.m(), p.n());
    let mut r = Rng::new(7);
    let mut cost = Vec::with_capacity(3 * m * n);
    for k in 0..3 {
        for i in 0..m {
            for j in 0..n {
                cost.push(p.cost()[[i, j]] + 0.05 * k as f64 * r.next_f64());
            }
        }
    }
    let cost = Array3::from_shape_vec((3, m, n), cost).unwrap();
    Batch::shared_marginals(p.a(), p.b(), cost.view()).expect("a valid batch")
}

/// FNV-1a 64 over the little-endian bytes of each word, as `length:hash`.
fn fnv(words: impl IntoIterator<Item = u64>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut len = 0usize;
    for w in words {
        for byte in w.to_le_bytes() {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        len += 1;
    }
    format!("{len}:{h:016x}")
}

fn fnv_f64<'a>(values: impl IntoIterator<Item = &'a f64>) -> String {
    fnv(values.into_iter().map(|v| v.to_bits()))
}

fn bits(v: f64) -> String {
    format!("{:016x}", v.to_bits())
}

/// Collects `name field value` lines.
#[derive(Default)]
struct Record(String);

impl Record {
    fn line(&mut self, name: &str, field: &str, value: impl std::fmt::Display) {
        writeln!(self.0, "{name} {field} {value}").unwrap();
    }

    fn solution(&mut self, name: &str, result: &Result<Solution>) {
        let sol = match result {
            Ok(sol) => sol,
            Err(e) => return self.line(name, "error", format!("{e:?}")),
        };
        self.line(name, "device", &sol.device);
        self.line(name, "value", bits(sol.value));
        self.line(name, "transport_cost", bits(sol.transport_cost));
        self.line(name, "marginal_error_rows", bits(sol.marginal_error_rows));
        self.line(name, "marginal_error_cols", bits(sol.marginal_error_cols));
        self.line(name, "iterations", format!("{:x}", sol.iterations));
        self.line(name, "termination", format!("{:?}", sol.termination));
        self.line(name, "alpha", fnv_f64(&sol.alpha));
        self.line(name, "beta", fnv_f64(&sol.beta));
        let (m, n) = sol.plan.shape();
        self.line(name, "plan_shape", format!("{m}x{n}"));
        self.line(name, "plan_dense", fnv_f64(&sol.dense_plan()));
        if let Plan::Sparse(p) = &sol.plan {
            let mut words = vec![p.num_lanes() as u64];
            for l in 0..p.num_lanes() {
                let (idx, val) = p.lane(l);
                words.push(idx.len() as u64);
                words.extend(idx.iter().map(|&i| i as u64));
                words.extend(val.iter().map(|v| v.to_bits()));
            }
            self.line(name, "plan_lanes", format!("{:?}", p.lanes()));
            self.line(name, "plan_sparse", fnv(words));
        }
    }

    fn batch(&mut self, name: &str, results: &[Result<Solution>]) {
        self.line(name, "len", results.len());
        for (i, r) in results.iter().enumerate() {
            self.solution(&format!("{name}[{i}]"), r);
        }
    }

    fn routing(&mut self, name: &str, result: &Result<Routing>) {
        let r = match result {
            Ok(r) => r,
            Err(e) => return self.line(name, "error", format!("{e:?}")),
        };
        self.line(name, "device", &r.device);
        self.line(name, "capacity", format!("{:x}", r.capacity));
        self.line(name, "dispatch", fnv(r.dispatch.iter().map(|&d| d as u64)));
        self.line(name, "combine", fnv_f64(&r.combine));
        let l = &r.load;
        let stats = [
            l.tokens_per_expert.min,
            l.tokens_per_expert.mean,
            l.tokens_per_expert.max,
            l.experts_per_token.min,
            l.experts_per_token.mean,
            l.experts_per_token.max,
        ];
        self.line(name, "load_stats", fnv_f64(&stats));
        let counts = [l.dropped_tokens, l.tokens, l.experts_over_capacity];
        self.line(name, "load_counts", format!("{counts:?}"));
        for (g, rep) in r.groups.iter().enumerate() {
            let group = format!("{name}.group{g}");
            self.line(&group, "termination", format!("{:?}", rep.termination));
            self.line(&group, "iterations", format!("{:x}", rep.iterations));
            self.line(&group, "token_mass_error", bits(rep.token_mass_error));
            self.line(&group, "expert_mass_error", bits(rep.expert_mass_error));
        }
    }
}

fn data_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file)
}

fn blessing() -> bool {
    std::env::var("SPARSE_OT_BLESS").is_ok_and(|v| v == "1")
}

/// Writes `actual` to `file`, or compares it with `file` line by line and fails listing every difference.
fn bless_or_compare(file: &str, actual: &str) {
    let path = data_path(file);
    if blessing() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        eprintln!(
            "wrote {} ({} lines)",
            path.display(),
            actual.lines().count()
        );
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); create it with SPARSE_OT_BLESS=1",
            path.display()
        )
    });
    let entries = |text: &str| -> Vec<(String, String)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let mut parts = l.splitn(3, ' ');
                let key = format!("{} {}", parts.next().unwrap(), parts.next().unwrap_or(""));
                (key, parts.next().unwrap_or("").to_string())
            })
            .collect()
    };
    let (exp, act) = (entries(&expected), entries(actual));
    let find = |list: &[(String, String)], key: &str| {
        list.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    };
    let mut diffs = Vec::new();
    for (key, e) in &exp {
        match find(&act, key) {
            Some(a) if &a == e => {}
            Some(a) => diffs.push(format!("  {key}: expected {e}, actual {a}")),
            None => diffs.push(format!("  {key}: expected {e}, actual <missing>")),
        }
    }
    for (key, a) in &act {
        if find(&exp, key).is_none() {
            diffs.push(format!("  {key}: expected <missing>, actual {a}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} of {} fingerprints differ from {} (rerun with SPARSE_OT_BLESS=1 only if the change is \
         intended):\n{}",
        diffs.len(),
        exp.len().max(act.len()),
        path.display(),
        diffs.join("\n")
    );
}

fn formulations() -> [(Formulation, &'static str); 2] {
    [
        (Formulation::SemiDual, "semidual"),
        (Formulation::Dual, "dual"),
    ]
}

#[test]
fn cpu_results_are_bit_identical() {
    let random = random();
    let batch = batch(&random);
    let logits = logits(2, 16, 4, 99);
    let mut rec = Record::default();
    rec.0
        .push_str("# CPU fingerprints (tests/fingerprint.rs); SPARSE_OT_BLESS=1 rewrites\n");
    for (pname, p) in [("golden", golden_problem()), ("random", random.clone())] {
        for k in [1, 2, 5] {
            for gamma in [0.1, 0.01] {
                for (f, fname) in formulations() {
                    let cfg = SparseOt::new(k, gamma).unwrap().formulation(f);
                    rec.solution(
                        &format!("{pname}.sparse.k{k}.g{gamma}.{fname}"),
                        &cfg.solve(&p),
                    );
                }
            }
        }
        for (f, fname) in formulations() {
            let cfg = SparseOt::new(2, 0.1).unwrap().row_sparsity().formulation(f);
            rec.solution(&format!("{pname}.rows.k2.g0.1.{fname}"), &cfg.solve(&p));
            let cfg = SparseOt::quadratic(0.1).unwrap().formulation(f);
            rec.solution(&format!("{pname}.quadratic.g0.1.{fname}"), &cfg.solve(&p));
        }
        for eps in [0.1, 0.01] {
            for (prec, prname) in [(Precision::F64, "f64"), (Precision::F32, "f32")] {
                let cfg = Sinkhorn::new(eps).unwrap().precision(prec);
                rec.solution(&format!("{pname}.sinkhorn.e{eps}.{prname}"), &cfg.solve(&p));
            }
        }
        rec.solution(&format!("{pname}.exact"), &ExactOt::new().solve(&p));
    }
    for (f, fname) in formulations() {
        let cfg = SparseOt::new(2, 0.1).unwrap().formulation(f);
        let results = cfg
            .solve_batch_adam_on(&batch, 1e-2, 20, &Device::Cpu)
            .unwrap();
        rec.batch(&format!("batch.adam.k2.g0.1.{fname}"), &results);
    }
    rec.batch(
        "batch.sparse.k2.g0.1",
        &SparseOt::new(2, 0.1).unwrap().solve_batch(&batch),
    );
    rec.batch(
        "batch.sinkhorn.e0.1",
        &Sinkhorn::new(0.1).unwrap().solve_batch(&batch),
    );
    let routers = [
        ("experts_choose", Router::experts_choose(1.0).unwrap()),
        ("tokens_choose", Router::tokens_choose(2).unwrap()),
    ];
    for (rname, router) in routers {
        rec.routing(
            &format!("router.{rname}.authors"),
            &router.route(logits.view()),
        );
        let accurate = router.solver(RouterSolver::ACCURATE).unwrap();
        rec.routing(
            &format!("router.{rname}.accurate"),
            &accurate.route(logits.view()),
        );
    }
    bless_or_compare("fingerprints.txt", &rec.0);
}

#[cfg(feature = "gpu")]
#[path = "common/gpu.rs"]
mod gpu_common;

/// The adapter line heading the GPU file: name, backend and the driver wgpu reports for it.
#[cfg(feature = "gpu")]
fn adapter_line(ctx: &sparse_ot::gpu::GpuContext) -> String {
    // GpuContext exposes name and backend; the driver comes from the adapter GpuContext::new picks.
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let info = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference:
            wgpu::PowerPreference::from_env().unwrap_or(wgpu::PowerPreference::HighPerformance),
        ..Default::default()
    }))
    .ok()
    .map(|a| a.get_info())
    .filter(|i| i.name == ctx.adapter_name());
    let (driver, driver_info) = info.map_or(("unknown".into(), "unknown".into()), |i| {
        (i.driver, i.driver_info)
    });
    format!(
        "# adapter: {} | backend: {} | software: {} | driver: {driver} | driver_info: {driver_info}",
        ctx.adapter_name(),
        ctx.backend(),
        ctx.is_software()
    )
}

#[cfg(feature = "gpu")]
#[test]
fn gpu_results_are_bit_identical_on_the_recorded_adapter() {
    let Some(ctx) = gpu_common::gpu() else {
        return;
    };
    let header = adapter_line(&ctx);
    if !blessing() {
        let path = data_path("fingerprints_gpu.txt");
        let recorded = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.lines().next().map(str::to_string));
        if let Some(recorded) = recorded.filter(|r| r != &header) {
            eprintln!(
                "SKIPPED: bitwise GPU comparison: {} was recorded on another adapter or driver\n  \
                 recorded: {recorded}\n  this one: {header}",
                path.display()
            );
            return;
        }
    }
    let device = Device::Gpu(ctx);
    let random = random();
    let batch = batch(&random);
    let mut rec = Record::default();
    writeln!(rec.0, "{header}").unwrap();
    for (pname, p) in [("golden", golden_problem()), ("random", random)] {
        for (f, fname) in formulations() {
            let cfg = SparseOt::new(2, 0.1).unwrap().formulation(f);
            rec.solution(
                &format!("{pname}.sparse.k2.g0.1.{fname}"),
                &cfg.solve_on(&p, &device),
            );
        }
        let cfg = SparseOt::quadratic(0.1).unwrap();
        rec.solution(
            &format!("{pname}.quadratic.g0.1.semidual"),
            &cfg.solve_on(&p, &device),
        );
        let cfg = Sinkhorn::new(0.1).unwrap();
        rec.solution(
            &format!("{pname}.sinkhorn.e0.1"),
            &cfg.solve_on(&p, &device),
        );
    }
    let results = SparseOt::new(2, 0.1)
        .unwrap()
        .solve_batch_adam_on(&batch, 1e-2, 20, &device)
        .unwrap();
    rec.batch("batch.adam.k2.g0.1.semidual", &results);
    bless_or_compare("fingerprints_gpu.txt", &rec.0);
}
