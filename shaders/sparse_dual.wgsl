// sparse_dual.wgsl — semi-dual S_k and dual D_k of sparsity-constrained OT (docs/MATH.md §2, §3), f32.
//
// Bindings (group 0):
//   0 uniform                 P: SparseParams { m, n, k, mode (0 semi-dual, 1 dual), gamma, dim }
//   cost: cost_entry(p, i, j) from the provider concatenated before this file: cost_columns.wgsl (binding 1,
//         the transposed matrix) or cost_points.wgsl (bindings 17–19, computed from two point clouds). Every
//         kernel calls the same function on the same inputs, so row_pass and extract re-apply the selections
//         column_pass made (for computed entries, up to a driver contracting the arithmetic differently in
//         different kernels, which can only matter for entries tied with a column's k-th to the last bit).
//   2 storage read_write      x: trial point, α = x[0..m], β = x[m..m+n] (dual); only `recipe` writes it
//   3 storage read            a: m          (row_pass, finalize)
//   4 storage read            b: n          (column_pass, finalize)
//   5 storage read_write      cols: n × ColState { key, tie, theta, term, shift } (column_pass writes)
//   6 storage read_write      grad: dim, gradient of the minimised objective −S or −D
//   7 storage read            d: dim, search direction (finalize)
//   8 storage read_write      out: finalize: [value, slope, max|grad|]; extract: n×k values
//   9 storage read_write      rows_out: n×k row indices (extract; 0xffffffff pads)
//  10 storage read_write      beta_out: n, β_j (dual) or the implied −γ θ_j (semi-dual)   (extract)
//  11 storage read            evaluated: B, nonzero when problem p is evaluated by this round's dispatches;
//                             every kernel leaves the other problems' outputs untouched
//  12 uniform                 A: AdamParams (adam_rule.wgsl)                                   (recipe)
//  13 storage read_write      m1: B×dim, Adam's first moment                                   (recipe)
//  14 storage read_write      m2: B×dim, Adam's second moment                                  (recipe)
//  15 storage read_write      adam_st: B × AdamState { steps, stopped, tol }                   (recipe)
//  16 storage read            bias: 2·steps Adam bias corrections                              (recipe)
// Dispatch: column_pass one workgroup per column (WG ≥ m / VMAX where the device allows: the column is then
//   read once into registers and every later walk is over them); row_pass one thread per row (ceil(m / WG)
//   workgroups);
//   finalize one workgroup per problem; extract one thread per column. Lanes laid out as in common.wgsl.
//   recipe: one workgroup per problem runs the router recipe's every Adam step (adam_rule.wgsl) and the
//   evaluation at the final point in one dispatch, for problems small enough that one workgroup holds them
//   (the host decides): segment tid / seg of seg threads (the smallest power of two with seg·VMAX ≥ m)
//   evaluates column tid / seg from registers, all columns at once (the host makes WG ≥ seg·n), then each
//   thread sums rows tid, tid + WG, …; storageBarrier orders the phases (x, column states, gradient) inside
//   the workgroup.
// Batches: workgroup_id.z is the problem index p of a batch of B problems of one shape (z = 1 for a single
//   problem). Every buffer holds the B problems back to back and problem p's slice starts at p × its
//   per-problem length (cost m·n, x/grad/d dim, a m, b/cols/beta_out n, out 4 for finalize and n·k for
//   extract, rows_out n·k), so the strides follow from the uniform's m, n, k and dim.
// Overrides: WG.
// Formula: s = α − c_j. TopK(s) by the tie rule of docs/MATH.md §3.1 (larger value, then lower index) found without
//   sorting: the k-th largest order-preserving key by a 32-step bitwise search of counts, then (by bisection
//   on the index, 32 steps of counts) the last
//   admitted index among keys equal to it. A column's plan is t_i = [(s_i − σ_j)/γ − θ_j]_+ on TopK, in
//   coordinates shifted by σ_j so that f32 keeps Σ t = b_j to its unit roundoff even for small γ:
//   semi-dual σ_j = max_TopK s, θ_j ∈ [−b_j, 0] solves Σ t = b_j (bisection, then exact refinement on the
//   support; docs/MATH.md §3.2), so the threshold of docs/MATH.md §3.2 is σ_j/γ + θ_j and β_j = −(σ_j + γ θ_j); dual σ_j = −β_j,
//   θ_j = 0. Column term: semi-dual t·s − (γ/2)‖t‖², dual (γ/2)‖t‖². The column state (key, tie, θ_j, σ_j)
//   lets row_pass re-apply the same selection and entries to form row sums T1 without float atomics, in a
//   fixed order (deterministic). Objective (minimised): −S = −(α·a − Σ term), −D = −(α·a + β·b − Σ term);
//   gradient: ∇_α = T1 − a, ∇_β = Tᵀ1 − b.
// finalize reads its loop bounds from the uniform through workgroup memory (wg_shape; see there why).

struct SparseParams {
    m: u32,
    n: u32,
    k: u32,
    mode: u32,
    gamma: f32,
    dim: u32,
    _pad0: u32,
    _pad1: u32,
}

struct ColState {
    key: u32,
    tie: u32,
    theta: f32,
    term: f32,
    shift: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: SparseParams;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read> a: array<f32>;
@group(0) @binding(4) var<storage, read> b: array<f32>;
@group(0) @binding(5) var<storage, read_write> cols: array<ColState>;
@group(0) @binding(6) var<storage, read_write> grad: array<f32>;
@group(0) @binding(7) var<storage, read> d: array<f32>;
@group(0) @binding(8) var<storage, read_write> out: array<f32>;
@group(0) @binding(9) var<storage, read_write> rows_out: array<u32>;
@group(0) @binding(10) var<storage, read_write> beta_out: array<f32>;
@group(0) @binding(11) var<storage, read> evaluated: array<u32>;
@group(0) @binding(12) var<uniform> A: AdamParams;
@group(0) @binding(13) var<storage, read_write> m1: array<f32>;
@group(0) @binding(14) var<storage, read_write> m2: array<f32>;
@group(0) @binding(15) var<storage, read_write> adam_st: array<AdamState>;
@group(0) @binding(16) var<storage, read> bias: array<f32>;

// Problem index of the invocation (workgroup_id.z), set first thing by every entry point.
var<private> pb: u32;

// θ ∈ [−b_j, 0]: 26 halvings reach 1.5e-8·b_j, below the f32 spacing there; refinement then makes it exact.
const BISECTION_STEPS: u32 = 26u;
const REFINE_STEPS: u32 = 3u;

// Order-preserving map of f32 onto u32: larger value, larger key.
fn order_key(v: f32) -> u32 {
    let u = bitcast<u32>(v);
    if ((u & 0x80000000u) != 0u) {
        return ~u;
    }
    return u | 0x80000000u;
}

// Entry i of column j: s = α_i − C_ij.
fn score(i: u32, j: u32) -> f32 {
    return x[pb * P.dim + i] - cost_entry(pb, i, j);
}

// Whether row i is among TopK of a column whose state is c.
fn selected(key: u32, i: u32, c: ColState) -> bool {
    return key > c.key || (key == c.key && i <= c.tie);
}

fn plan_entry(s: f32, c: ColState) -> f32 {
    return max((s - c.shift) / P.gamma - c.theta, 0.0);
}

var<workgroup> wg_evaluated: u32;

// Rows of a column each thread of column_pass holds in registers: columns of up to WG·VMAX rows are read
// once per evaluation, longer ones on every walk.
const VMAX: u32 = 16u;
var<private> sc: array<f32, VMAX>;
var<private> cached: bool;

// The score of row i = lane + q·seg of column j: from the registers when the column was cached.
fn col_score(q: u32, i: u32, j: u32) -> f32 {
    if (cached) {
        return sc[min(q, VMAX - 1u)];
    }
    return score(i, j);
}

// Whether problem pb is evaluated this round, loaded uniformly for the workgroup (kernels with barriers).
fn uniform_evaluated(tid: u32) -> bool {
    if (tid == 0u) {
        wg_evaluated = evaluated[pb];
    }
    return workgroupUniformLoad(&wg_evaluated) != 0u;
}

@compute @workgroup_size(WG)
fn column_pass(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) tid: u32) {
    pb = wid.z;
    if (!uniform_evaluated(tid)) {
        return;
    }
    column_at(tid, WG, lane_of(wid, nwg));
}

// Column j_raw of problem pb by the `seg` threads of tid's segment (seg a power of two dividing WG, uniform):
// selection, σ_j, θ_j, the column term and (dual) the β-gradient, into cols[j] (nothing is written when
// j_raw ≥ n; the segment still takes part in the reductions). Call from uniform control flow.
fn column_at(tid: u32, seg: u32, j_raw: u32) {
    let lane = tid & (seg - 1u);
    let live = j_raw < P.n;
    let j = min(j_raw, P.n - 1u);
    let m = P.m;
    let k = min(P.k, m);
    // The column's scores, read once into registers when they fit (rows i = lane + q·seg, q < VMAX).
    cached = m <= seg * VMAX;
    if (cached) {
        for (var q = 0u; q < VMAX; q = q + 1u) {
            let i = lane + q * seg;
            sc[q] = select(0.0, score(min(i, m - 1u), j), i < m);
        }
    }

    // 1. Threshold key: the k-th largest key (all rows when k = m).
    var th = 0u;
    if (k < m) {
        for (var bit = 0u; bit < 32u; bit = bit + 1u) {
            let cand = th | (1u << (31u - bit));
            var c = 0u;
            for (var q = 0u; lane + q * seg < m; q = q + 1u) {
                let i = lane + q * seg;
                c = c + select(0u, 1u, order_key(col_score(q, i, j)) >= cand);
            }
            let total = seg_count(tid, seg, c);
            if (total >= k) {
                th = cand;
            }
        }
    }
    // 2. Tie index: the r-th lowest index among keys equal to th, r = k − #{key > th}: the smallest τ with
    //    #{i ≤ τ : key_i = th} ≥ r, by bisection on τ (32 rounds cover every u32 index).
    var gt_count = 0u;
    for (var q = 0u; lane + q * seg < m; q = q + 1u) {
        let i = lane + q * seg;
        gt_count = gt_count + select(0u, 1u, order_key(col_score(q, i, j)) > th);
    }
    let above = seg_count(tid, seg, gt_count);
    let r = k - above;
    var lo = 0u;
    var hi = m - 1u;
    for (var round = 0u; round < 32u; round = round + 1u) {
        let mid = lo + (hi - lo) / 2u;
        var c = 0u;
        for (var q = 0u; lane + q * seg < m; q = q + 1u) {
            let i = lane + q * seg;
            c = c + select(0u, 1u, i <= mid && order_key(col_score(q, i, j)) == th);
        }
        let total = seg_count(tid, seg, c);
        if (lo < hi) {
            if (total >= r) {
                hi = mid;
            } else {
                lo = mid + 1u;
            }
        }
    }
    let tie = select(lo, 0xffffffffu, r == 0u);
    var state = ColState(th, tie, 0.0, 0.0, 0.0, 0u, 0u, 0u);

    // 3. σ_j and θ_j.
    let bj = b[pb * P.n + j];
    if (P.mode == 0u) {
        var smax = NEG_BIG;
        for (var q = 0u; lane + q * seg < m; q = q + 1u) {
            let i = lane + q * seg;
            let s = col_score(q, i, j);
            if (selected(order_key(s), i, state)) {
                smax = max(smax, s);
            }
        }
        state.shift = seg_max(tid, seg, smax);
        var t_lo = -bj;
        var t_hi = 0.0;
        for (var it = 0u; it < BISECTION_STEPS; it = it + 1u) {
            let mid = 0.5 * (t_lo + t_hi);
            state.theta = mid;
            var acc = 0.0;
            for (var q = 0u; lane + q * seg < m; q = q + 1u) {
                let i = lane + q * seg;
                let s = col_score(q, i, j);
                if (selected(order_key(s), i, state)) {
                    acc = acc + plan_entry(s, state);
                }
            }
            let total = seg_sum(tid, seg, acc);
            if (total >= bj) {
                t_lo = mid;
            } else {
                t_hi = mid;
            }
        }
        var theta = t_lo;
        // Exact refinement on the support {v > θ} (Michelot's step; increases θ towards the root).
        for (var it = 0u; it < REFINE_STEPS; it = it + 1u) {
            var cnt = 0u;
            var acc = 0.0;
            for (var q = 0u; lane + q * seg < m; q = q + 1u) {
                let i = lane + q * seg;
                let s = col_score(q, i, j);
                let v = (s - state.shift) / P.gamma;
                if (selected(order_key(s), i, state) && v > theta) {
                    cnt = cnt + 1u;
                    acc = acc + v;
                }
            }
            let rho = seg_count(tid, seg, cnt);
            let sv = seg_sum(tid, seg, acc);
            if (rho > 0u) {
                theta = (sv - bj) / f32(rho);
            }
        }
        state.theta = theta;
    } else {
        state.shift = -x[pb * P.dim + m + j];
        state.theta = 0.0;
    }

    // 4. Column term and column sum.
    var lin = 0.0;
    var sq = 0.0;
    var cs = 0.0;
    for (var q = 0u; lane + q * seg < m; q = q + 1u) {
        let i = lane + q * seg;
        let s = col_score(q, i, j);
        if (selected(order_key(s), i, state)) {
            let t = plan_entry(s, state);
            lin = lin + t * s;
            sq = sq + t * t;
            cs = cs + t;
        }
    }
    let lin_t = seg_sum(tid, seg, lin);
    let sq_t = seg_sum(tid, seg, sq);
    let cs_t = seg_sum(tid, seg, cs);
    if (live && lane == 0u) {
        if (P.mode == 0u) {
            state.term = lin_t - 0.5 * P.gamma * sq_t;
        } else {
            state.term = 0.5 * P.gamma * sq_t;
            grad[pb * P.dim + m + j] = cs_t - bj;
        }
        cols[pb * P.n + j] = state;
    }
}

@compute @workgroup_size(WG)
fn row_pass(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) tid: u32) {
    pb = wid.z;
    let i = lane_of(wid, nwg) * WG + tid;
    if (i >= P.m || evaluated[pb] == 0u) {
        return;
    }
    grad[pb * P.dim + i] = row_gradient(i);
}

// ∇_α of row i of problem pb: (T1)_i − a_i, the columns' entries in row i re-applied from their states and
// summed in column order.
fn row_gradient(i: u32) -> f32 {
    var acc = 0.0;
    for (var j = 0u; j < P.n; j = j + 1u) {
        let c = cols[pb * P.n + j];
        let s = score(i, j);
        if (selected(order_key(s), i, c)) {
            acc = acc + plan_entry(s, c);
        }
    }
    return acc - a[pb * P.m + i];
}

// The objective's gradient of problem pb at x, computed by the whole workgroup of `recipe`: every column's
// state (seg threads per column, every column at once), then the row sums. Call from uniform control flow.
fn evaluate_in_workgroup(tid: u32, seg: u32) {
    storageBarrier();
    column_at(tid, seg, tid / seg);
    storageBarrier();
    for (var i = tid; i < P.m; i = i + WG) {
        grad[pb * P.dim + i] = row_gradient(i);
    }
    storageBarrier();
}

@compute @workgroup_size(WG)
fn recipe(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    pb = wid.z;
    if (!uniform_evaluated(tid)) {
        return;
    }
    // Threads per column: enough to hold the column in registers, at most the workgroup.
    var seg = 1u;
    while (seg * VMAX < P.m && seg < WG) {
        seg = seg * 2u;
    }
    for (var t = 0u; t < A.steps; t = t + 1u) {
        evaluate_in_workgroup(tid, seg);
        if (!adam_step_of(tid, pb)) {
            break;
        }
    }
    evaluate_in_workgroup(tid, seg);
}

// finalize's loop bounds (m, n, dim, mode), passed through workgroup memory. Read straight from the uniform,
// they let Mesa's lavapipe specialise ("inline") this small kernel on the uniform's values at every
// submission, and those specialised copies were never freed: ~0.4 MB of host memory per L-BFGS round.
var<workgroup> wg_shape: vec4<u32>;

@compute @workgroup_size(WG)
fn finalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    pb = wid.z;
    if (!uniform_evaluated(tid)) {
        return;
    }
    if (tid == 0u) {
        wg_shape = vec4<u32>(P.m, P.n, P.dim, P.mode);
    }
    let shape = workgroupUniformLoad(&wg_shape);
    let xo = pb * shape.z;
    var lin = 0.0;
    for (var i = tid; i < shape.x; i = i + WG) {
        lin = lin + x[xo + i] * a[pb * shape.x + i];
    }
    var terms = 0.0;
    for (var j = tid; j < shape.y; j = j + WG) {
        terms = terms + cols[pb * shape.y + j].term;
        if (shape.w == 1u) {
            lin = lin + x[xo + shape.x + j] * b[pb * shape.y + j];
        }
    }
    var slope = 0.0;
    var gmax = 0.0;
    for (var i = tid; i < shape.z; i = i + WG) {
        slope = slope + grad[xo + i] * d[xo + i];
        gmax = max(gmax, abs(grad[xo + i]));
    }
    let lin_t = wg_sum(tid, lin);
    let terms_t = wg_sum(tid, terms);
    let slope_t = wg_sum(tid, slope);
    let gmax_t = wg_max(tid, gmax);
    if (tid == 0u) {
        out[4u * pb] = -(lin_t - terms_t);
        out[4u * pb + 1u] = slope_t;
        out[4u * pb + 2u] = gmax_t;
    }
}

@compute @workgroup_size(WG)
fn extract(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) tid: u32) {
    pb = wid.z;
    let j = lane_of(wid, nwg) * WG + tid;
    if (j >= P.n || evaluated[pb] == 0u) {
        return;
    }
    let k = min(P.k, P.m);
    let c = cols[pb * P.n + j];
    let col = pb * P.n + j;
    if (P.mode == 0u) {
        beta_out[col] = -(c.shift + P.gamma * c.theta);
    } else {
        beta_out[col] = x[pb * P.dim + P.m + j];
    }
    var w = 0u;
    for (var i = 0u; i < P.m; i = i + 1u) {
        let s = score(i, j);
        if (w < k && selected(order_key(s), i, c)) {
            let t = plan_entry(s, c);
            if (t > 0.0) {
                out[col * k + w] = t;
                rows_out[col * k + w] = i;
                w = w + 1u;
            }
        }
    }
    for (; w < k; w = w + 1u) {
        out[col * k + w] = 0.0;
        rows_out[col * k + w] = 0xffffffffu;
    }
}
