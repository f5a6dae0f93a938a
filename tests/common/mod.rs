//! Helpers shared by the end-to-end tests of the examples.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// Builds example `name` (`cargo build --example name`) and returns the path of its executable, taken from
/// cargo's JSON messages so that any CARGO_TARGET_DIR works.
#[allow(dead_code)] // used by the example tests only
pub fn build_example(name: &str) -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "--example",
            name,
            "--message-format=json",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "building the {name} example failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reports no {name} executable"))
}

/// Deterministic xorshift64* in [0, 1).
#[allow(dead_code)] // not every test crate that includes this module draws random numbers
pub struct Rng(pub u64);

#[allow(dead_code)]
impl Rng {
    /// The next number in [0, 1).
    pub fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Random masses (exactly balanced, total 1, so marginals can be checked to 1e-12 against both vectors) and a
/// random cost in [0, 1).
#[allow(dead_code)]
pub fn random_problem(m: usize, n: usize, seed: u64) -> sparse_ot::Problem {
    let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mass = |k: usize, r: &mut Rng| {
        let v: Vec<f64> = (0..k).map(|_| 0.05 + r.next()).collect();
        let s: f64 = v.iter().sum();
        v.into_iter().map(|x| x / s).collect::<Vec<_>>()
    };
    let a = mass(m, &mut r);
    let mut b = mass(n, &mut r);
    let (sa, sb): (f64, f64) = (a.iter().sum(), b.iter().sum());
    b[0] += sa - sb;
    let cost = ndarray::Array2::from_shape_fn((m, n), |_| r.next());
    sparse_ot::Problem::new(
        ndarray::Array1::from(a).view(),
        ndarray::Array1::from(b).view(),
        cost.view(),
    )
    .expect("a valid random problem")
}
