//! End-to-end tests of the `moe_routing` example: built once with `cargo build --example moe_routing` (the
//! binary's path comes from cargo's JSON messages), then run on generated workloads and on .npy logits written
//! here.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use ndarray::Array3;
use ndarray_npy::{write_npy, NpzReader};
use serde_json::Value;
use sparse_ot::Router;

fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| common::build_example("moe_routing"))
}

fn run(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("the example runs")
}

/// The JSON summary on the last stdout line.
fn summary(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("some output");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sparse-ot-moe-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn generated_workload_summary() {
    let out = run(&[
        "--groups",
        "6",
        "--tokens",
        "64",
        "--experts",
        "8",
        "--progress-every",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&out);
    assert_eq!(s["capacity"], 8);
    assert_eq!(s["groups"], 6);
    let (ot, greedy) = (&s["ot"], &s["greedy"]);
    assert_eq!(ot["experts_over_capacity"], 0);
    assert!(ot["tokens_per_expert"]["max"].as_f64().unwrap() <= 8.0);
    assert!(greedy["tokens_per_expert"]["max"].as_f64().unwrap() <= 8.0);
    assert!(ot["dropped_tokens"].as_u64().unwrap() <= greedy["dropped_tokens"].as_u64().unwrap());
    // Progress lines on stderr: 2, 4 and 6 groups done.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.lines().filter(|l| l.contains("groups")).count(),
        3,
        "{stderr}"
    );
}

#[test]
fn logits_file_to_npz_matches_the_library() {
    let logits = Array3::from_shape_fn((3, 16, 4), |(g, s, e)| {
        (((g * 31 + s * 7 + e * 13) % 11) as f32 - 5.0) * 0.4
    });
    let input = scratch("logits.npy");
    let output = scratch("routing.npz");
    write_npy(&input, &logits).unwrap();
    let out = run(&[
        "--logits",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--capacity-factor",
        "1.5",
        // Compared with the f64 CPU library bit for bit. These logits give many tokens mathematically equal
        // gates (rows that are shifts of each other), ordered only by rounding, which differs in f32 on a GPU.
        "--device",
        "cpu",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(summary(&out)["capacity"], 6);
    assert_eq!(summary(&out)["device"], "cpu");
    let mut npz = NpzReader::new(std::fs::File::open(&output).unwrap()).unwrap();
    let dispatch: Array3<u8> = npz.by_name("dispatch").unwrap();
    let combine: Array3<f32> = npz.by_name("combine").unwrap();
    let expected = Router::experts_choose(1.5)
        .unwrap()
        .route_f32(logits.view())
        .unwrap();
    assert_eq!(dispatch, expected.dispatch.mapv(u8::from));
    assert_eq!(combine, expected.combine.mapv(|c| c as f32));
}

#[test]
fn bad_input_exits_with_a_one_line_error() {
    let mut logits = Array3::<f32>::zeros((2, 8, 4));
    logits[[1, 2, 3]] = f32::NAN;
    let input = scratch("nan.npy");
    write_npy(&input, &logits).unwrap();
    for args in [
        vec!["--logits", input.to_str().unwrap()],
        vec!["--logits", "/nonexistent/logits.npy"],
        vec!["--capacity-factor", "-1"],
        vec![
            "--mode",
            "tokens-choose",
            "--experts-per-token",
            "9",
            "--experts",
            "8",
        ],
    ] {
        let out = run(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    }
}
