//! Measurements as JSON lines: each printed on stdout and, with `--json PATH`, appended to that file.

use std::io::Write;
use std::path::Path;

/// Prints every line and appends them to `path` (created if missing).
pub fn emit(lines: &[serde_json::Value], path: Option<&Path>) -> std::io::Result<()> {
    let mut file = match path {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ),
        None => None,
    };
    for line in lines {
        println!("{line}");
        if let Some(f) = file.as_mut() {
            writeln!(f, "{line}")?;
        }
    }
    Ok(())
}
