// cost_columns.wgsl — cost provider for sparse_dual.wgsl: entries read from one column-major copy of each cost.
//
// Bindings (group 0):
//   1 storage read            cost_t: B × (n×m row-major Cᵀ), problem p's at p·m·n (column j of C contiguous)
// Uses the kernel family's uniform P (m, n).
// Formula: cost_entry(p, i, j) = C^(p)_ij.

@group(0) @binding(1) var<storage, read> cost_t: array<f32>;

fn cost_entry(p: u32, i: u32, j: u32) -> f32 {
    return cost_t[(p * P.n + j) * P.m + i];
}
