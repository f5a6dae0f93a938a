// cost_matrix.wgsl — cost provider for sinkhorn.wgsl: entries read from one row-major copy of each cost.
//
// Bindings (group 0):
//   1 storage read            cost: B × (m×n row-major C), problem p's matrix at p·m·n
// Uses the kernel family's uniform P (m, n).
// Formula: cost_entry(p, i, j) = C^(p)_ij.

@group(0) @binding(1) var<storage, read> cost: array<f32>;

fn cost_entry(p: u32, i: u32, j: u32) -> f32 {
    return cost[(p * P.m + i) * P.n + j];
}
