//! Helpers shared by the end-to-end tests of the examples.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// Builds example `name` (`cargo build --example name`) and returns the path of its executable, taken from
/// cargo's JSON messages so that any CARGO_TARGET_DIR works.
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
