// adam.wgsl — one Adam step for every problem of a batch (the router recipe of src/sparse/adam.rs), f32;
// the step itself is adam_rule.wgsl's (concatenated before this file).
//
// Bindings (group 0):
//   0 uniform                 A: AdamParams { dim, steps, lr, beta1, beta2, eps }
//   1 storage read_write      x: B×dim, the potentials (problem p at [p·dim, p·dim + dim))
//   2 storage read            grad: B×dim, gradient of the *minimised* objective (−S or −D) at x, as
//                             sparse_dual.wgsl writes it
//   3 storage read_write      m1: B×dim, first moment
//   4 storage read_write      m2: B×dim, second moment
//   5 storage read_write      adam_st: B × AdamState { steps, stopped, tol } (tol: the problem's stopping
//                             tolerance on max|g|, set by the host, at least its f32 gradient noise)
//   6 storage read            bias: 2·steps, (1 − β₁ᵗ, 1 − β₂ᵗ) for t = 1..steps (computed in f64 on the host)
// Dispatch: one workgroup per problem, the problem index is workgroup_id.z (z = B); each thread owns entries
//   tid, tid + WG, … of its problem, so nothing is shared between threads but the max reduction.
// Overrides: WG.
// Formula: adam_rule.wgsl.

@group(0) @binding(0) var<uniform> A: AdamParams;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> m1: array<f32>;
@group(0) @binding(4) var<storage, read_write> m2: array<f32>;
@group(0) @binding(5) var<storage, read_write> adam_st: array<AdamState>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;

@compute @workgroup_size(WG)
fn adam_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    adam_step_of(tid, wid.z);
}
