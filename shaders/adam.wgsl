// adam.wgsl — one Adam step for every problem of a batch (the router recipe of src/cpu/adam.rs), f32.
//
// Bindings (group 0):
//   0 uniform                 A: AdamParams { dim, steps, lr, beta1, beta2, eps }
//   1 storage read_write      x: B×dim, the potentials (problem p at [p·dim, p·dim + dim))
//   2 storage read            grad: B×dim, gradient of the *minimised* objective (−S or −D) at x, as
//                             sparse_dual.wgsl writes it
//   3 storage read_write      m1: B×dim, first moment
//   4 storage read_write      m2: B×dim, second moment
//   5 storage read_write      st: B × AdamState { steps, stopped, tol } (tol: the problem's stopping
//                             tolerance on max|g|, set by the host, at least its f32 gradient noise)
//   6 storage read            bias: 2·steps, (1 − β₁ᵗ, 1 − β₂ᵗ) for t = 1..steps (computed in f64 on the host)
// Dispatch: one workgroup per problem, the problem index is workgroup_id.z (z = B); each thread owns entries
//   tid, tid + WG, … of its problem, so nothing is shared between threads but the max reduction.
// Overrides: WG.
// Formula (ascent on the maximised objective, g = −grad): a problem whose max|g| ≤ tol stops for good (the
//   CPU recipe's early exit, checked before the step). Otherwise, with t = steps done + 1:
//   m ← β₁ m + (1 − β₁) g, v ← β₂ v + (1 − β₂) g², x ← x + lr (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε).

struct AdamParams {
    dim: u32,
    steps: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
}

struct AdamState {
    steps: u32,
    stopped: u32,
    tol: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> A: AdamParams;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> m1: array<f32>;
@group(0) @binding(4) var<storage, read_write> m2: array<f32>;
@group(0) @binding(5) var<storage, read_write> st: array<AdamState>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;

@compute @workgroup_size(WG)
fn adam_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let p = wid.z;
    let o = p * A.dim;
    // Read the state before the reduction's barriers; thread 0 writes it afterwards.
    let state = st[p];
    var gmax = 0.0;
    for (var i = tid; i < A.dim; i = i + WG) {
        gmax = max(gmax, abs(grad[o + i]));
    }
    let gmax_t = wg_max(tid, gmax);
    if (state.stopped != 0u || state.steps >= A.steps) {
        return;
    }
    if (gmax_t <= state.tol) {
        if (tid == 0u) {
            st[p].stopped = 1u;
        }
        return;
    }
    let t = state.steps + 1u;
    let c1 = bias[2u * (t - 1u)];
    let c2 = bias[2u * (t - 1u) + 1u];
    for (var i = tid; i < A.dim; i = i + WG) {
        let g = -grad[o + i];
        let mi = A.beta1 * m1[o + i] + (1.0 - A.beta1) * g;
        let vi = A.beta2 * m2[o + i] + (1.0 - A.beta2) * g * g;
        m1[o + i] = mi;
        m2[o + i] = vi;
        x[o + i] = x[o + i] + A.lr * (mi / c1) / (sqrt(vi / c2) + A.eps);
    }
    if (tid == 0u) {
        st[p].steps = t;
    }
}
