//! End-to-end tests of the `solve` example: it is built once with `cargo build --example solve` (the path of
//! the binary comes from cargo's JSON messages, so any CARGO_TARGET_DIR works), then run on .npz files
//! written here.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use ndarray::{Array0, Array1, Array2, ArrayD, IxDyn, OwnedRepr};
use ndarray_npy::{NpzReader, NpzWriter};
use serde_json::Value;
use sparse_ot::{golden_problem, Formulation, Sinkhorn, SparseOt};

/// Builds the example once and returns the path of its executable.
fn solve_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| common::build_example("solve"))
}

/// A fresh directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sparse-ot-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn golden_arrays() -> (Array1<f64>, Array1<f64>, Array2<f64>) {
    let p = golden_problem();
    (p.a().to_owned(), p.b().to_owned(), p.cost().to_owned())
}

/// Adds one named array to an archive.
type AddArray<'a> = &'a dyn Fn(&mut NpzWriter<File>, &str);

/// Writes named arrays of any element type into an uncompressed .npz, as `numpy.savez` does.
fn write_npz(path: &Path, arrays: &[(&str, AddArray)]) {
    let mut npz = NpzWriter::new(File::create(path).unwrap());
    for (name, add) in arrays {
        add(&mut npz, name);
    }
    npz.finish().unwrap();
}

fn write_problem(path: &Path, a: &Array1<f64>, b: &Array1<f64>, cost: &Array2<f64>) {
    write_npz(
        path,
        &[
            ("a", &|w, n| w.add_array(n, a).unwrap()),
            ("b", &|w, n| w.add_array(n, b).unwrap()),
            ("cost", &|w, n| w.add_array(n, cost).unwrap()),
        ],
    );
}

fn run(args: &[&str]) -> Output {
    Command::new(solve_binary())
        .args(args)
        .output()
        .expect("the solve binary runs")
}

/// The output archive: arrays by name, every one as f64 (int64 scalars converted).
struct Solved {
    names: Vec<String>,
    npz: NpzReader<File>,
    json: Value,
    stdout: String,
}

impl Solved {
    fn array(&mut self, name: &str) -> ArrayD<f64> {
        self.npz
            .by_name::<OwnedRepr<f64>, IxDyn>(name)
            .unwrap_or_else(|e| panic!("array {name}: {e}"))
    }

    /// A 0-d float64 array.
    fn scalar(&mut self, name: &str) -> f64 {
        let x: Array0<f64> = self
            .npz
            .by_name(name)
            .unwrap_or_else(|e| panic!("0-d float64 `{name}`: {e}"));
        x.into_scalar()
    }

    /// A 0-d int64 array.
    fn int(&mut self, name: &str) -> i64 {
        let x: Array0<i64> = self
            .npz
            .by_name(name)
            .unwrap_or_else(|e| panic!("0-d int64 `{name}`: {e}"));
        x.into_scalar()
    }

    /// A 1-D int64 array.
    fn int_array(&mut self, name: &str) -> Vec<i64> {
        let x: Array1<i64> = self
            .npz
            .by_name(name)
            .unwrap_or_else(|e| panic!("1-D int64 `{name}`: {e}"));
        x.to_vec()
    }

    fn has(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }
}

/// Runs a solve that must succeed and loads its outputs.
fn solve_ok(dir: &Path, input: &Path, extra: &[&str]) -> Solved {
    let output = dir.join("s.npz");
    let _ = std::fs::remove_file(&output);
    let mut args = vec![
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let on_gpu = extra.contains(&"gpu");
    if !extra.contains(&"--device") {
        // The outputs are compared bit for bit with in-process CPU solves.
        args.extend_from_slice(&["--device", "cpu"]);
    }
    let out = run(&args);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "solve {extra:?} failed: {stderr}");
    // A Vulkan driver may print its own notices when the GPU is opened (Mesa's lavapipe does, without
    // XDG_RUNTIME_DIR); on the CPU nothing at all goes to stderr.
    assert!(on_gpu || stderr.is_empty(), "stderr not empty: {stderr}");
    let last = stdout.lines().last().expect("stdout has lines");
    let json: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"));
    let mut npz = NpzReader::new(File::open(&output).unwrap()).unwrap();
    let names = npz.names().unwrap();
    Solved {
        names,
        npz,
        json,
        stdout,
    }
}

/// Checks shapes, the scalars against the JSON line, and returns (value, iterations).
fn check_outputs(s: &mut Solved, m: usize, n: usize, beta: bool) -> (f64, i64) {
    assert_eq!(s.array("plan").shape(), &[m, n]);
    assert_eq!(s.array("alpha").shape(), &[m]);
    assert_eq!(s.has("beta"), beta, "beta present: {:?}", s.names);
    if beta {
        assert_eq!(s.array("beta").shape(), &[n]);
    }
    for name in [
        "value",
        "transport_cost",
        "marginal_error_rows",
        "marginal_error_cols",
    ] {
        let v = s.scalar(name);
        // serde_json's default float parser may be off by an ulp; the writer itself is exact.
        let j = s.json[name].as_f64().unwrap_or(f64::NAN);
        assert!(
            (j - v).abs() <= 4.0 * f64::EPSILON * v.abs(),
            "JSON {name} = {j} vs npz {v}"
        );
    }
    let iterations = s.int("iterations");
    assert_eq!(s.json["iterations"].as_i64(), Some(iterations));
    let converged = s.int("converged");
    assert!(converged == 0 || converged == 1);
    assert_eq!(s.json["converged"].as_bool(), Some(converged == 1));
    assert_eq!(s.json["device"], "cpu");
    assert!(s.json["seconds"].as_f64().is_some_and(|t| t >= 0.0));
    (s.scalar("value"), iterations)
}

#[test]
fn sparse_semi_dual_writes_the_library_solution() {
    let dir = temp_dir("semi-dual");
    let (a, b, cost) = golden_arrays();
    let input = dir.join("p.npz");
    write_problem(&input, &a, &b, &cost);
    let mut s = solve_ok(&dir, &input, &["--k", "2", "--gamma", "0.1"]);
    let (value, iterations) = check_outputs(&mut s, 8, 6, false);
    assert!(
        s.json["gpu"].is_null(),
        "a CPU solve reports no device work"
    );
    // The same solve in-process gives the same numbers (the CPU path is deterministic).
    let lib = SparseOt::new(2, 0.1)
        .unwrap()
        .solve(&golden_problem())
        .unwrap();
    assert_eq!(value, lib.value);
    assert_eq!(iterations as usize, lib.iterations);
    let plan = s.array("plan");
    assert_eq!(
        plan.as_slice().unwrap(),
        lib.dense_plan().as_slice().unwrap()
    );
    for j in 0..6 {
        let nnz = (0..8).filter(|&i| plan[[i, j]] > 0.0).count();
        assert!(nnz <= 2, "column {j} has {nnz} nonzeros");
    }
    // The report precedes the JSON line.
    assert!(
        s.stdout
            .contains("sparsity-constrained OT (semi-dual, k = 2 per column"),
        "{}",
        s.stdout
    );
}

#[test]
fn dual_quadratic_and_row_sparsity_write_beta() {
    let dir = temp_dir("dual");
    let (a, b, cost) = golden_arrays();
    let input = dir.join("p.npz");
    write_problem(&input, &a, &b, &cost);
    let mut s = solve_ok(&dir, &input, &["--k", "3", "--formulation", "dual"]);
    let (value, _) = check_outputs(&mut s, 8, 6, true);
    let lib = SparseOt::new(3, 0.1)
        .unwrap()
        .formulation(Formulation::Dual)
        .solve(&golden_problem())
        .unwrap();
    assert_eq!(value, lib.value);
    assert_eq!(
        s.array("beta").as_slice().unwrap(),
        lib.beta.as_slice().unwrap()
    );

    let mut s = solve_ok(&dir, &input, &["--solver", "quadratic", "--gamma", "0.01"]);
    let (value, _) = check_outputs(&mut s, 8, 6, false);
    assert!(
        (value - 0.25957848).abs() <= 5e-9,
        "quadratic golden value: {value}"
    );

    // With row sparsity the semi-dual's variable is beta.
    let mut s = solve_ok(&dir, &input, &["--k", "2", "--row-sparsity"]);
    check_outputs(&mut s, 8, 6, true);
    let plan = s.array("plan");
    for i in 0..8 {
        assert!(
            (0..6).filter(|&j| plan[[i, j]] > 0.0).count() <= 2,
            "row {i}"
        );
    }
}

#[test]
fn sinkhorn_reaches_the_golden_transport_cost_from_f32_input_too() {
    let dir = temp_dir("sinkhorn");
    let (a, b, cost) = golden_arrays();
    let input = dir.join("p.npz");
    write_problem(&input, &a, &b, &cost);
    let mut s = solve_ok(
        &dir,
        &input,
        &["--solver", "sinkhorn", "--epsilon", "0.1", "--tol", "1e-12"],
    );
    check_outputs(&mut s, 8, 6, true);
    assert_eq!(s.int("converged"), 1);
    let tc = s.scalar("transport_cost");
    assert!((tc - 0.2851693482).abs() <= 1e-9, "transport cost {tc}");
    let lib = Sinkhorn::new(0.1)
        .unwrap()
        .tol(1e-12)
        .unwrap()
        .solve(&golden_problem())
        .unwrap();
    assert_eq!(tc, lib.transport_cost);

    // float32 input is accepted and widened.
    let input32 = dir.join("p32.npz");
    let (a32, b32, c32) = (
        a.mapv(|x| x as f32),
        b.mapv(|x| x as f32),
        cost.mapv(|x| x as f32),
    );
    write_npz(
        &input32,
        &[
            ("a", &|w, n| w.add_array(n, &a32).unwrap()),
            ("b", &|w, n| w.add_array(n, &b32).unwrap()),
            ("cost", &|w, n| w.add_array(n, &c32).unwrap()),
        ],
    );
    let mut s = solve_ok(
        &dir,
        &input32,
        &["--solver", "sinkhorn", "--epsilon", "0.1", "--tol", "1e-6"],
    );
    check_outputs(&mut s, 8, 6, true);
    let tc32 = s.scalar("transport_cost");
    assert!(
        (tc32 - 0.2851693482).abs() <= 1e-6,
        "f32 transport cost {tc32}"
    );
}

#[test]
fn exact_writes_an_optimal_basic_plan() {
    let dir = temp_dir("exact");
    let (a, b, cost) = golden_arrays();
    let input = dir.join("p.npz");
    write_problem(&input, &a, &b, &cost);
    let mut s = solve_ok(&dir, &input, &["--solver", "exact"]);
    let (value, _) = check_outputs(&mut s, 8, 6, true);
    // docs/MATH.md §8: unregularised OT of the golden problem is 0.2591074830 (10 decimals).
    assert!((value - 0.2591074830).abs() <= 1e-9, "value {value}");
    assert!((s.scalar("transport_cost") - 0.2591074830).abs() <= 1e-9);
    let plan = s.array("plan");
    let nnz = plan.iter().filter(|&&v| v > 0.0).count();
    let basis = 8 + 6 - 1;
    assert!(
        nnz <= basis,
        "{nnz} nonzeros in a basic plan of at most {basis}"
    );
    assert!(s.stdout.contains("exact OT"), "{}", s.stdout);
}

#[test]
fn device_gpu_solves_on_the_adapter_or_says_there_is_none() {
    let dir = temp_dir("gpu");
    let (a, b, cost) = golden_arrays();
    let input = dir.join("p.npz");
    write_problem(&input, &a, &b, &cost);
    if sparse_ot::Device::gpu().is_err() {
        eprintln!("no GPU adapter: checking that --device gpu says so");
        fails(
            &dir,
            &input,
            &["--solver", "sinkhorn", "--device", "gpu"],
            "no GPU adapter",
        );
        return;
    }
    let mut s = solve_ok(
        &dir,
        &input,
        &["--solver", "sinkhorn", "--device", "gpu", "--tol", "1e-7"],
    );
    let device = s.json["device"].as_str().unwrap().to_string();
    assert_ne!(device, "cpu", "--device gpu ran on the CPU");
    // docs/MATH.md §8: ⟨T, C⟩ = 0.2851693482 at ε = 0.1; the GPU works in f32 (tol 1e-7 on the marginals), so the
    // transport cost is checked to 1e-5.
    let tc = s.scalar("transport_cost");
    assert!(
        (tc - 0.2851693482).abs() <= 1e-5,
        "transport cost {tc} on {device}"
    );
    // The device work of the solve: one read of the 8 x 6 f32 cost per iteration (plus one per ε stage for
    // the columns of its start), a blocking readback per check and for the potentials.
    let gpu = &s.json["gpu"];
    assert_eq!(gpu["adapter"].as_str(), Some(device.as_str()), "{gpu}");
    let iterations = s.json["iterations"].as_u64().unwrap();
    let bytes = gpu["cost_bytes_read"].as_u64().unwrap();
    assert!(bytes >= 4 * 48 * iterations, "{gpu}");
    assert!(
        gpu["readbacks"].as_u64().unwrap() >= iterations / 10,
        "{gpu}"
    );
    assert!(
        gpu["dispatches"].as_u64().unwrap() >= 2 * iterations,
        "{gpu}"
    );
}

#[test]
fn tol_zero_runs_exactly_max_iter() {
    let dir = temp_dir("tol0");
    let (a, b, cost) = golden_arrays();
    let input = dir.join("p.npz");
    write_problem(&input, &a, &b, &cost);
    for extra in [
        &["--k", "2", "--tol", "0", "--max-iter", "17"][..],
        &[
            "--k",
            "2",
            "--formulation",
            "dual",
            "--tol",
            "0",
            "--max-iter",
            "17",
        ],
        &["--solver", "sinkhorn", "--tol", "0", "--max-iter", "17"],
    ] {
        let mut s = solve_ok(&dir, &input, extra);
        assert_eq!(s.int("iterations"), 17, "{extra:?}");
        assert_eq!(s.int("converged"), 0, "{extra:?}");
        assert_eq!(s.json["iterations"], 17);
    }
}

/// Runs a solve that must fail: non-zero exit, exactly one line on stderr containing `needle`, no output.
#[track_caller]
fn fails(dir: &Path, input: &Path, extra: &[&str], needle: &str) {
    let output = dir.join("fail.npz");
    let _ = std::fs::remove_file(&output);
    let mut args = vec![
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    if !extra.contains(&"--device") {
        // Input validation is the point here; keep the GPU driver's own notices out of stderr.
        args.extend_from_slice(&["--device", "cpu"]);
    }
    let out = run(&args);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        !out.status.success(),
        "{extra:?} on {} succeeded",
        input.display()
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "{extra:?}: stderr is not one line:\n{stderr}"
    );
    assert!(stderr.starts_with("error: "), "{extra:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{extra:?}: expected {needle:?} in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!output.exists(), "{extra:?}: an output file was written");
}

#[test]
fn bad_inputs_fail_with_one_line() {
    let dir = temp_dir("bad");
    let (a, b, cost) = golden_arrays();
    let good = dir.join("good.npz");
    write_problem(&good, &a, &b, &cost);

    fails(
        &dir,
        &dir.join("missing.npz"),
        &["--k", "1"],
        "cannot open input",
    );
    let not_npz = dir.join("not.npz");
    std::fs::write(&not_npz, "not a zip").unwrap();
    fails(&dir, &not_npz, &["--k", "1"], "is not a .npz file");

    let missing_b = dir.join("missing_b.npz");
    write_npz(
        &missing_b,
        &[
            ("a", &|w, n| w.add_array(n, &a).unwrap()),
            ("cost", &|w, n| w.add_array(n, &cost).unwrap()),
        ],
    );
    fails(&dir, &missing_b, &["--k", "1"], "no array `b`");

    let int_cost = dir.join("int.npz");
    let ones = Array2::<i64>::ones((8, 6));
    write_npz(
        &int_cost,
        &[
            ("a", &|w, n| w.add_array(n, &a).unwrap()),
            ("b", &|w, n| w.add_array(n, &b).unwrap()),
            ("cost", &|w, n| w.add_array(n, &ones).unwrap()),
        ],
    );
    fails(
        &dir,
        &int_cost,
        &["--k", "1"],
        "expected float64 or float32",
    );

    let case = |name: &str, a: &Array1<f64>, b: &Array1<f64>, cost: &Array2<f64>| {
        let p = dir.join(format!("{name}.npz"));
        write_problem(&p, a, b, cost);
        p
    };
    fails(
        &dir,
        &case("transposed", &a, &b, &cost.t().to_owned()),
        &["--k", "1"],
        "shape mismatch",
    );
    let cost_1d = dir.join("cost_1d.npz");
    let flat = Array1::from(cost.iter().copied().collect::<Vec<_>>());
    write_npz(
        &cost_1d,
        &[
            ("a", &|w, n| w.add_array(n, &a).unwrap()),
            ("b", &|w, n| w.add_array(n, &b).unwrap()),
            ("cost", &|w, n| w.add_array(n, &flat).unwrap()),
        ],
    );
    fails(&dir, &cost_1d, &["--k", "1"], "must be 2-D");
    let mut nan_cost = cost.clone();
    nan_cost[[2, 3]] = f64::NAN;
    fails(
        &dir,
        &case("nan", &a, &b, &nan_cost),
        &["--k", "1"],
        "cost[2, 3] is NaN",
    );
    let mut inf_a = a.clone();
    inf_a[1] = f64::INFINITY;
    fails(
        &dir,
        &case("inf", &inf_a, &b, &cost),
        &["--k", "1"],
        "a[1] is inf",
    );
    let mut neg_b = b.clone();
    neg_b[0] = -neg_b[0];
    fails(
        &dir,
        &case("neg", &a, &neg_b, &cost),
        &["--k", "1"],
        "negative",
    );
    fails(
        &dir,
        &case("mass", &(&a * 2.0), &b, &cost),
        &["--k", "1"],
        "total masses differ",
    );
    let mut zero_b = b.clone();
    zero_b[5] = 0.0;
    zero_b[0] += b[5];
    // Zero-mass entries are no error: their column of the plan is empty.
    let zero = case("zero", &a, &zero_b, &cost);
    for extra in [&["--k", "2"][..], &["--solver", "sinkhorn"][..]] {
        let mut solved = solve_ok(&dir, &zero, extra);
        let plan = solved.array("plan");
        assert!(
            (0..plan.shape()[0]).all(|i| plan[[i, 5]] == 0.0),
            "{extra:?}: {plan}"
        );
    }
    let empty = Array1::<f64>::zeros(0);
    fails(
        &dir,
        &case("empty", &empty, &b, &Array2::zeros((0, 6))),
        &["--k", "1"],
        "a is empty",
    );

    // Parameters.
    fails(&dir, &good, &[], "needs --k");
    fails(&dir, &good, &["--k", "0"], "k = 0");
    fails(&dir, &good, &["--k", "9"], "k = 9");
    fails(&dir, &good, &["--k", "7", "--row-sparsity"], "k = 7");
    fails(&dir, &good, &["--k", "2", "--gamma", "0"], "gamma");
    fails(&dir, &good, &["--k", "2", "--gamma", "-1"], "gamma");
    fails(&dir, &good, &["--k", "2", "--gamma", "nan"], "gamma");
    fails(
        &dir,
        &good,
        &["--solver", "sinkhorn", "--epsilon", "0"],
        "epsilon",
    );
    fails(&dir, &good, &["--k", "2", "--tol", "-1e-3"], "tol");
    fails(
        &dir,
        &good,
        &["--solver", "sinkhorn", "--k", "2"],
        "--k does not apply",
    );
    fails(
        &dir,
        &good,
        &["--k", "2", "--epsilon", "0.1"],
        "--epsilon does not apply",
    );
    fails(
        &dir,
        &good,
        &["--solver", "sinkhorn", "--check-every", "0"],
        "check_every",
    );
    fails(
        &dir,
        &good,
        &["--k", "2", "--check-every", "5"],
        "--check-every does not apply",
    );
    fails(&dir, &good, &["--solver", "magic"], "invalid value 'magic'");
    fails(&dir, &good, &["--k", "two"], "invalid value 'two'");
    fails(
        &dir,
        &good,
        &["--solver", "exact", "--tol", "1e-9"],
        "--tol does not apply",
    );
    let nowhere = dir.join("no-such-dir").join("s.npz");
    let out = run(&[
        "--input",
        good.to_str().unwrap(),
        "--output",
        nowhere.to_str().unwrap(),
        "--k",
        "2",
    ]);
    assert!(!out.status.success());
    assert_eq!(String::from_utf8(out.stderr).unwrap().lines().count(), 1);
}

#[test]
fn help_documents_the_defaults() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let defaults = [
        format!("[default: {:e} on the CPU", sparse_ot::DEFAULT_TOL),
        format!("[default: {} for sparse", sparse_ot::DEFAULT_MAX_ITER),
        format!("{} for sinkhorn]", sparse_ot::DEFAULT_SINKHORN_MAX_ITER),
    ];
    for needle in defaults.iter().map(String::as_str).chain([
        "--k <K>",
        "--gamma <G>",
        "default: 0.1",
        "--tol <T>",
        "--device",
        "semi-dual",
    ]) {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

/// Progress goes to stderr only when asked for off a terminal, names the stage and iteration, and never
/// reaches stdout; `--quiet` leaves stderr empty; `--device auto` names the device it chose and why.
#[test]
fn progress_and_notes_go_to_stderr_only_when_wanted() {
    let dir = temp_dir("progress");
    let (a, b, cost) = golden_arrays();
    let input = dir.join("p.npz");
    write_problem(&input, &a, &b, &cost);
    let output = dir.join("s.npz");
    let run_with = |extra: &[&str]| {
        let mut args = vec![
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--solver",
            "sinkhorn",
            "--tol",
            "0",
            "--max-iter",
            "300",
        ];
        args.extend_from_slice(extra);
        let out = Command::new(solve_binary())
            .args(&args)
            // Report at once instead of after a second, so that a short solve shows its progress.
            .env("SPARSE_OT_PROGRESS_INTERVAL", "0")
            .output()
            .expect("the solve binary runs");
        let stderr = String::from_utf8(out.stderr).unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "solve {extra:?} failed: {stderr}");
        (stdout, stderr)
    };

    let (stdout, stderr) = run_with(&["--device", "cpu", "--progress"]);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "--progress printed nothing");
    for line in &lines {
        assert!(
            line.starts_with("progress: solve: ")
                && line.contains("iteration")
                && line.ends_with(" s"),
            "unexpected progress line {line:?}"
        );
    }
    assert!(
        !stdout.contains("progress: solve"),
        "progress reached stdout"
    );

    // --check-every sets how often the marginal error is measured, hence reported.
    let (_, stderr) = run_with(&["--device", "cpu", "--progress", "--check-every", "100"]);
    let at: Vec<&str> = stderr
        .lines()
        .filter_map(|line| line.split("iteration ").nth(1)?.split(',').next())
        .collect();
    assert_eq!(at, ["100", "200", "300"], "{stderr}");

    // Not a terminal and no --progress: silent.
    let (_, stderr) = run_with(&["--device", "cpu"]);
    assert_eq!(stderr, "", "progress without --progress off a terminal");

    let (_, stderr) = run_with(&["--device", "auto"]);
    let note: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        note.len(),
        1,
        "--device auto should print one note: {stderr:?}"
    );
    assert!(
        note[0].starts_with("device: GPU: ") || note[0].starts_with("device: CPU: "),
        "unexpected device note {:?}",
        note[0]
    );

    let (_, stderr) = run_with(&["--device", "auto", "--quiet"]);
    assert_eq!(stderr, "", "--quiet printed on stderr");
}

/// The output appears whole or not at all: a destination that cannot be written fails before the solve,
/// a failed solve leaves a previous output untouched, a rerun replaces it, and no temporary file remains.
#[test]
fn output_is_written_atomically() {
    let dir = temp_dir("atomic");
    let input = dir.join("p.npz");
    let (a, b, cost) = golden_arrays();
    write_problem(&input, &a, &b, &cost);
    // The destination is a directory: refused at once, with one line.
    let out = run(&[
        "--input",
        input.to_str().unwrap(),
        "--output",
        dir.to_str().unwrap(),
        "--k",
        "2",
        "--device",
        "cpu",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("error: cannot write output"), "{stderr}");
    // A good solve, then a failing one on the same output: the first output survives unchanged.
    let first = solve_ok(&dir, &input, &["--k", "2"]);
    drop(first);
    let output = dir.join("s.npz");
    let before = std::fs::read(&output).unwrap();
    let bad = dir.join("bad.npz");
    let mut nan_cost = cost.clone();
    nan_cost[[0, 0]] = f64::NAN;
    write_problem(&bad, &a, &b, &nan_cost);
    let out = run(&[
        "--input",
        bad.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--k",
        "2",
        "--device",
        "cpu",
    ]);
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&output).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// 30 and 20 points in the unit square (x, y) written to `dir`/points.npz without masses (uniform), and
/// that file's path.
fn write_points(dir: &Path) -> (Array2<f64>, Array2<f64>, PathBuf) {
    let x = Array2::from_shape_fn((30, 2), |(i, k)| ((i * 7 + k * 3) % 11) as f64 / 11.0);
    let y = Array2::from_shape_fn((20, 2), |(j, k)| ((j * 5 + k) % 13) as f64 / 13.0);
    let input = dir.join("points.npz");
    write_npz(
        &input,
        &[
            ("x", &|w, n| w.add_array(n, &x).unwrap()),
            ("y", &|w, n| w.add_array(n, &y).unwrap()),
        ],
    );
    (x, y, input)
}

/// Point clouds instead of a cost: x and y in the input, the cost computed on the fly (Sinkhorn on the
/// CPU); the same numbers as the library's solve on points, which equal the dense solve (tests/points.rs).
#[test]
fn point_clouds_solve_without_a_cost_matrix() {
    let dir = temp_dir("points");
    let (x, y, input) = write_points(&dir);
    let args = [
        "--solver",
        "sinkhorn",
        "--epsilon",
        "0.05",
        "--cost",
        "euclidean",
    ];
    let mut s = solve_ok(&dir, &input, &args);
    let p = sparse_ot::PointProblem::uniform(&x, &y, sparse_ot::GroundCost::Euclidean).unwrap();
    let lib = Sinkhorn::new(0.05).unwrap().solve_points(&p).unwrap();
    assert_eq!(s.scalar("value"), lib.value);
    assert_eq!(
        s.array("alpha").as_slice().unwrap(),
        lib.alpha.as_slice().unwrap()
    );
    assert_eq!(
        s.json["plan"], "dense",
        "600 pairs: --plan auto writes the plan"
    );
    assert_eq!(s.array("plan").shape(), [30, 20]);
    assert!(s.json["converged"].as_bool().unwrap());
    // --plan none: potentials and scalars only.
    let mut s = solve_ok(&dir, &input, &[&args[..], &["--plan", "none"]].concat());
    assert_eq!(s.json["plan"], "none");
    assert!(s.json["nnz"].is_null());
    assert!(!s.has("plan"));
    assert_eq!(s.array("beta").len(), 20);
    // f32 (to a tolerance f32 exponentials reach) and a divisor are accepted and reported.
    let s = solve_ok(
        &dir,
        &input,
        &[
            &args[..],
            &["--precision", "f32", "--cost-divisor", "2", "--tol", "1e-6"],
        ]
        .concat(),
    );
    assert!(s.json["converged"].as_bool().unwrap(), "{}", s.json);
    // What does not apply is refused with one line.
    fails(
        &dir,
        &input,
        &["--solver", "exact"],
        "not solved by --solver exact",
    );
    // The sparse solvers on points run on a GPU too, reading no cost (skipped without an adapter).
    if sparse_ot::Device::gpu().is_ok() {
        let s = solve_ok(
            &dir,
            &input,
            &[
                "--solver", "sparse", "--k", "2", "--device", "gpu", "--tol", "1e-6",
            ],
        );
        assert!(s.json["converged"].as_bool().unwrap(), "{}", s.json);
        assert_eq!(s.json["plan"], "sparse", "{}", s.json);
        assert_eq!(
            s.json["gpu"]["cost_bytes_read"].as_u64(),
            Some(0),
            "{}",
            s.json
        );
    } else {
        eprintln!("SKIPPED: no GPU adapter (the sparse solver on points with --device gpu)");
    }
    fails(
        &dir,
        &input,
        &["--solver", "sinkhorn", "--plan", "sparse"],
        "--plan sparse",
    );
    fails(
        &dir,
        &input,
        &["--solver", "sinkhorn", "--cost-divisor", "0"],
        "divisor",
    );
    fails(
        &dir,
        &input,
        &["--solver", "exact", "--precision", "f32"],
        "--precision",
    );
    let (a, b, cost) = golden_arrays();
    let matrix = dir.join("matrix.npz");
    write_problem(&matrix, &a, &b, &cost);
    fails(
        &dir,
        &matrix,
        &["--solver", "sinkhorn", "--cost", "euclidean"],
        "point-cloud input",
    );
    let both = dir.join("both.npz");
    write_npz(
        &both,
        &[
            ("x", &|w, n| w.add_array(n, &x).unwrap()),
            ("y", &|w, n| w.add_array(n, &y).unwrap()),
            ("cost", &|w, n| w.add_array(n, &cost).unwrap()),
        ],
    );
    fails(
        &dir,
        &both,
        &["--solver", "sinkhorn"],
        "both `cost` and points",
    );
    let one_mass = dir.join("one_mass.npz");
    write_npz(
        &one_mass,
        &[
            ("x", &|w, n| w.add_array(n, &x).unwrap()),
            ("y", &|w, n| w.add_array(n, &y).unwrap()),
            ("a", &|w, n| {
                w.add_array(n, &Array1::from_elem(30, 1.0 / 30.0)).unwrap()
            }),
        ],
    );
    fails(&dir, &one_mass, &["--solver", "sinkhorn"], "both masses");
}

/// The sparse solvers on point clouds: the plan comes out sparse (at most k per column) under --plan auto,
/// with the numbers of the library's solve on points (which equal the dense solve, tests/points_sparse.rs).
#[test]
fn sparse_solvers_on_point_clouds() {
    let dir = temp_dir("points-sparse");
    let (x, y, input) = write_points(&dir);
    let p = sparse_ot::PointProblem::uniform(&x, &y, sparse_ot::GroundCost::SqEuclidean).unwrap();
    let mut s = solve_ok(&dir, &input, &["--k", "3", "--gamma", "0.05"]);
    let lib = SparseOt::new(3, 0.05).unwrap().solve_points(&p).unwrap();
    assert!(s.json["converged"].as_bool().unwrap(), "{}", s.json);
    assert_eq!(s.json["plan"], "sparse");
    assert_eq!(s.scalar("value"), lib.value);
    assert_eq!(s.scalar("transport_cost"), lib.transport_cost);
    assert_eq!(
        s.array("alpha").as_slice().unwrap(),
        lib.alpha.as_slice().unwrap()
    );
    let cols = s.int_array("plan_cols");
    assert_eq!(cols.len(), lib.plan.nnz());
    assert!((0..20).all(|j| cols.iter().filter(|&&c| c == j).count() <= 3));
    // Quadratic OT, a dense plan on request, and the dual's β.
    let s = solve_ok(
        &dir,
        &input,
        &[
            "--solver",
            "quadratic",
            "--plan",
            "dense",
            "--formulation",
            "dual",
        ],
    );
    assert_eq!(s.json["plan"], "dense");
    assert!(s.json["converged"].as_bool().unwrap(), "{}", s.json);
}

/// A sparse plan written as triplets: the nonzeros of the dense plan, no more.
#[test]
fn plan_sparse_writes_the_nonzeros_as_triplets() {
    let dir = temp_dir("triplets");
    let (a, b, cost) = golden_arrays();
    let input = dir.join("p.npz");
    write_problem(&input, &a, &b, &cost);
    let mut dense = solve_ok(&dir, &input, &["--k", "2"]);
    let plan = dense
        .array("plan")
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap();
    let mut s = solve_ok(&dir, &input, &["--k", "2", "--plan", "sparse"]);
    assert_eq!(s.json["plan"], "sparse");
    let values = s.array("plan_values");
    let mut rebuilt = Array2::<f64>::zeros((8, 6));
    let (rows, cols) = (s.int_array("plan_rows"), s.int_array("plan_cols"));
    for ((&i, &j), &v) in rows.iter().zip(&cols).zip(&values) {
        rebuilt[[i as usize, j as usize]] = v;
    }
    assert_eq!(rebuilt, plan);
    assert_eq!(s.json["nnz"].as_u64().unwrap() as usize, values.len());
}

#[test]
fn plan_kind_chooses_the_plan_and_the_json_says_which() {
    let dir = temp_dir("plan-kind");
    let (a, b, cost) = golden_arrays();
    let input = dir.join("p.npz");
    write_problem(&input, &a, &b, &cost);
    let args = ["--k", "2", "--gamma", "0.01"];
    let mut s = solve_ok(&dir, &input, &args);
    check_outputs(&mut s, 8, 6, false);
    assert_eq!(s.json["plan_kind"], "gradient");
    assert!(s.json["plan_gap"].is_null());
    let lib = SparseOt::new(2, 0.01)
        .unwrap()
        .solve(&golden_problem())
        .unwrap();
    // The gradient plan's miss is on the JSON line next to the status (null when it meets the marginals).
    assert_eq!(
        s.json["plan_misses_marginal_by"].as_f64(),
        lib.certified_plan_miss()
    );
    for (kind, lib_kind) in [
        ("relaxed", sparse_ot::PlanKind::Relaxed),
        ("feasible", sparse_ot::PlanKind::Feasible),
    ] {
        let mut with = args.to_vec();
        with.extend_from_slice(&["--plan-kind", kind]);
        let mut s = solve_ok(&dir, &input, &with);
        check_outputs(&mut s, 8, 6, false);
        let lib = SparseOt::new(2, 0.01)
            .unwrap()
            .plan_kind(lib_kind)
            .solve(&golden_problem())
            .unwrap();
        let written = lib.plan_kind.unwrap().to_string();
        assert_eq!(s.json["plan_kind"], written.as_str(), "{kind}");
        assert_eq!(s.json["plan_gap"].as_f64(), lib.plan_gap, "{kind}");
        assert!(s.json["plan_misses_marginal_by"].is_null(), "{kind}");
        assert_eq!(
            s.array("plan").as_slice().unwrap(),
            lib.dense_plan().as_slice().unwrap()
        );
        assert!(s.scalar("marginal_error_rows") <= 1e-9, "{kind}");
        assert!(s.stdout.contains(&format!("plan            {written}")));
    }
    fails(
        &dir,
        &input,
        &["--solver", "sinkhorn", "--plan-kind", "relaxed"],
        "--plan-kind",
    );
}
