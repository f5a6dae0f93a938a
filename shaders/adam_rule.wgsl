// adam_rule.wgsl — one Adam step of one problem by one workgroup (the router recipe of src/sparse/adam.rs),
// f32, shared by adam.wgsl (one step per dispatch) and sparse_dual.wgsl's `recipe` (every step in one
// dispatch). No bindings of its own: the file it is concatenated with declares A (AdamParams, uniform) and
// the storage arrays x, grad (read), m1, m2, adam_st (AdamState per problem) and bias (2·steps f32).
//
// Formula (ascent on the maximised objective, g = −grad): a problem whose max|g| ≤ tol stops for good (the
//   CPU recipe's early exit, checked before the step). Otherwise, with t = steps done + 1:
//   m ← β₁ m + (1 − β₁) g, v ← β₂ v + (1 − β₂) g², x ← x + lr (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε),
//   the bias corrections (1 − β₁ᵗ, 1 − β₂ᵗ) read from the host's f64-computed table.

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

var<workgroup> wg_adam_moves: u32;

// One Adam step of problem p (entries [p·dim, p·dim + dim) of x, grad, m1, m2) by the whole workgroup, each
// thread owning entries tid, tid + WG, …; returns whether it moved x (false: the problem had stopped or
// taken all its steps, or stops now), uniformly for the workgroup. Call from uniform control flow.
fn adam_step_of(tid: u32, p: u32) -> bool {
    let o = p * A.dim;
    // Read the state before the reduction's barriers; thread 0 writes it afterwards.
    let state = adam_st[p];
    var gmax = 0.0;
    for (var i = tid; i < A.dim; i = i + WG) {
        gmax = max(gmax, abs(grad[o + i]));
    }
    let gmax_t = wg_max(tid, gmax);
    let running = state.stopped == 0u && state.steps < A.steps;
    if (tid == 0u) {
        let moves = running && !(gmax_t <= state.tol);
        if (running && !moves) {
            adam_st[p].stopped = 1u;
        }
        wg_adam_moves = select(0u, 1u, moves);
    }
    if (workgroupUniformLoad(&wg_adam_moves) == 0u) {
        return false;
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
        adam_st[p].steps = t;
    }
    return true;
}
