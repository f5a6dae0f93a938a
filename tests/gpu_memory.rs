//! GPU solves keep host and device memory flat however many rounds they run (alone in its binary: it
//! measures the process's resident memory, which other tests running in parallel would disturb).

#[path = "common/gpu.rs"]
mod gpu_common;

use sparse_ot::{golden_problem, Device, SparseOt};

/// Resident memory of this process in kB (Linux), or None elsewhere.
fn resident_kb() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A fixed budget (tol 0) makes the f32 solve run every one of its iterations, most of them line searches
/// of up to 30 rounds once f32 can go no further: 100 iterations are thousands of L-BFGS rounds. Memory
/// used to grow by ~0.4 MB per round (about 1.2 GB over these 100 iterations on lavapipe); it must stay
/// flat. On lavapipe the device's memory is host memory, so the resident size measures both.
#[test]
fn many_lbfgs_rounds_keep_memory_flat() {
    let Some(ctx) = gpu_common::gpu() else { return };
    let Some(_) = resident_kb() else {
        eprintln!("SKIPPED: no /proc/self/status to measure resident memory");
        return;
    };
    let device = Device::Gpu(ctx.clone());
    let p = golden_problem();
    let run = |iterations: usize| {
        let sol = SparseOt::new(2, 0.1)
            .unwrap()
            .tol(0.0)
            .unwrap()
            .max_iter(iterations)
            .solve_on(&p, &device)
            .unwrap();
        assert_eq!(sol.iterations, iterations);
    };
    // Warm-up: pipelines, workspaces and driver caches are built once.
    run(10);
    let before = resident_kb().unwrap();
    let dispatches = ctx.dispatches_recorded();
    run(100);
    let rounds_dispatched = ctx.dispatches_recorded() - dispatches;
    let grown = resident_kb().unwrap().saturating_sub(before);
    assert!(rounds_dispatched > 10_000, "{rounds_dispatched} dispatches");
    assert!(
        grown < 32 * 1024,
        "resident memory grew by {grown} kB over {rounds_dispatched} dispatches"
    );
}
