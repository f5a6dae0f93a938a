// sinkhorn.wgsl — log-domain Sinkhorn (docs/MATH.md §5) for a batch of B problems of one shape, f32, reading
// each cost entry once per iteration.
//
// The cost comes from a provider prepended on the host, which defines `cost_entry(p, i, j)` and its own
// bindings: cost_matrix.wgsl (binding 1, one row-major copy of each C) or cost_points.wgsl (bindings 12–14,
// the entry computed from two point clouds, nothing stored).
//
// Bindings (group 0):
//   0 uniform                 P: SweepParams { m, n, rows (per block), blocks, tiles }
//   1, 12–14                  the cost provider's
//   3 storage read            log_a:   B × m                                    (sweep, update_f)
//   4 storage read            log_b:   B × n                                    (merge)
//   5 storage read            f_in:    B × m, f before this iteration           (sweep, update_f)
//   6 storage read            g_in:    B × n, g of this iteration               (sweep, update_f)
//   7 storage read_write      f_out:   B × m, f after this iteration (written by sweep and update_f, read by
//                                      columns)
//   8 storage read_write      err:     B × m, a_i |exp((f_in_i − f_out_i)/ε) − 1| = |(T1)_i − a_i| of the
//                                      state (f_in, g_in)                       (sweep, update_f)
//   9 storage read            ctl:     B × Control { eps, running }: problem p's current ε and whether it
//                                      still iterates (0: frozen)
//  10 storage read_write      partial: B × blocks × n × (max w, Σ exp((w − max)/ε)) with w = f_i − C_ij over
//                                      the block's rows                         (sweep, columns write; merge)
//  11 storage read_write      g_out:   B × n, g of the next iteration           (merge)
//
// One iteration: f' = F(g) row by row and, from the same read of each row, every column's partial
// log-sum-exp of (f'_i − C_ij)/ε over the block's rows; then merge: g' = G(f') from the partials.
//   sweep   one workgroup per block of P.rows rows (lanes as in common.wgsl), WG·VMAX ≥ n: each thread holds
//           the VMAX entries j = tid + q·WG of the current row in registers, so a row is read once for both
//           its own log-sum-exp and its contribution to the columns' partials.
//   update_f + columns (n > WG·VMAX): update_f one workgroup per row (row log-sum-exp only); columns one
//           workgroup per (column tile of WG·VMAX columns, row block), lane = tile + tiles·block, reading f_out.
//           The cost is then read twice per iteration (still one copy, no transpose).
//   merge   one thread per column (ceil(n / WG) workgroups): merges the blocks' partials in block order.
// Batches: workgroup_id.z is the problem index p; every buffer holds the B problems back to back (cost m·n,
//   log_a/f/err m, log_b/g n, partial blocks·n, ctl 1). A frozen problem's workgroups return at once and write
//   nothing. Every reduction runs in a fixed order (thread-private, then a fixed tree, then blocks in order),
//   so results are deterministic and problem p's arithmetic does not depend on B.
// Overrides: WG (a power of two, at most 1024).
// Formula: g_j = ε log b_j − ε LSE_i((f_i − C_ij)/ε), f_i = ε log a_i − ε LSE_j((g_j − C_ij)/ε), as online
//   pairs (max w, Σ exp2((w − max)·s)) of w in the cost's units, s = log2(e)/ε hoisted: the difference to the
//   max is taken before scaling, so the dominant terms keep f32's relative accuracy. exp(−C/ε) is never
//   formed.

struct SweepParams {
    m: u32,
    n: u32,
    rows: u32,
    blocks: u32,
    tiles: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct Control {
    eps: f32,
    running: u32,
}

// Entries of a row each thread of sweep (and columns) holds; the host picks WG with WG·VMAX ≥ n.
const VMAX: u32 = 16u;
const SWEEP_MAX_WG: u32 = 1024u;
const LOG2E: f32 = 1.4426950408889634;

@group(0) @binding(0) var<uniform> P: SweepParams;
@group(0) @binding(3) var<storage, read> log_a: array<f32>;
@group(0) @binding(4) var<storage, read> log_b: array<f32>;
@group(0) @binding(5) var<storage, read> f_in: array<f32>;
@group(0) @binding(6) var<storage, read> g_in: array<f32>;
@group(0) @binding(7) var<storage, read_write> f_out: array<f32>;
@group(0) @binding(8) var<storage, read_write> err: array<f32>;
@group(0) @binding(9) var<storage, read> ctl: array<Control>;
@group(0) @binding(10) var<storage, read_write> partial: array<vec2<f32>>;
@group(0) @binding(11) var<storage, read_write> g_out: array<f32>;

var<workgroup> lse_max: array<f32, SWEEP_MAX_WG>;
var<workgroup> lse_sum: array<f32, SWEEP_MAX_WG>;

// (max, sum) with w folded in, s = log2(e)/ε.
fn fold(acc: vec2<f32>, w: f32, s: f32) -> vec2<f32> {
    if (w > acc.x) {
        return vec2<f32>(w, acc.y * exp2((acc.x - w) * s) + 1.0);
    }
    return vec2<f32>(acc.x, acc.y + exp2((w - acc.x) * s));
}

// Two (max, sum) pairs merged.
fn merge_pair(l: vec2<f32>, r: vec2<f32>, s: f32) -> vec2<f32> {
    let hi = max(l.x, r.x);
    return vec2<f32>(hi, l.y * exp2((l.x - hi) * s) + r.y * exp2((r.x - hi) * s));
}

// ε LSE((w)/ε) of a pair: max + ε ln(sum).
fn soft_max(acc: vec2<f32>, eps: f32) -> f32 {
    return acc.x + eps * log(acc.y);
}

// The workgroup's pairs merged (fixed tree; deterministic), as ε LSE(w/ε). Uniform control flow.
fn wg_soft_max(tid: u32, acc: vec2<f32>, s: f32, eps: f32) -> f32 {
    lse_max[tid] = acc.x;
    lse_sum[tid] = acc.y;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h = h >> 1u) {
        if (tid < h) {
            let r = merge_pair(vec2<f32>(lse_max[tid], lse_sum[tid]),
                               vec2<f32>(lse_max[tid + h], lse_sum[tid + h]), s);
            lse_max[tid] = r.x;
            lse_sum[tid] = r.y;
        }
        workgroupBarrier();
    }
    let out = soft_max(vec2<f32>(lse_max[0], lse_sum[0]), eps);
    workgroupBarrier();
    return out;
}

// f'_i = ε log a_i − ε LSE_j((g_j − C_ij)/ε) from the row's soft max.
fn new_f(p: u32, i: u32, soft: f32, eps: f32) -> f32 {
    return eps * log_a[p * P.m + i] - soft;
}

// Writes f_out and err of row i of problem p (thread 0 only).
fn finish_row(p: u32, i: u32, f_new: f32, eps: f32) {
    let fi = p * P.m + i;
    f_out[fi] = f_new;
    err[fi] = exp(log_a[fi]) * abs(exp((f_in[fi] - f_new) / eps) - 1.0);
}

@compute @workgroup_size(WG)
fn sweep(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) tid: u32) {
    let p = wid.z;
    // ctl is read-only and p uniform: a frozen problem's workgroups leave together, before any barrier.
    let c = ctl[p];
    if (c.running == 0u) {
        return;
    }
    let eps = c.eps;
    let s = LOG2E / eps;
    let block = lane_of(wid, nwg);
    if (block >= P.blocks) {
        return;
    }
    let row0 = block * P.rows;
    let row_end = min(row0 + P.rows, P.m);
    var gs: array<f32, VMAX>;
    var cols: array<vec2<f32>, VMAX>;
    for (var q = 0u; q < VMAX; q = q + 1u) {
        let j = tid + q * WG;
        gs[q] = select(0.0, g_in[p * P.n + min(j, P.n - 1u)], j < P.n);
        cols[q] = vec2<f32>(NEG_BIG, 0.0);
    }
    var row: array<f32, VMAX>;
    for (var i = row0; i < row_end; i = i + 1u) {
        var acc = vec2<f32>(NEG_BIG, 0.0);
        for (var q = 0u; q < VMAX; q = q + 1u) {
            let j = tid + q * WG;
            if (j < P.n) {
                row[q] = cost_entry(p, i, j);
                acc = fold(acc, gs[q] - row[q], s);
            }
        }
        // Every thread gets the same soft max, hence the same f'_i.
        let f_new = new_f(p, i, wg_soft_max(tid, acc, s, eps), eps);
        if (tid == 0u) {
            finish_row(p, i, f_new, eps);
        }
        for (var q = 0u; q < VMAX; q = q + 1u) {
            if (tid + q * WG < P.n) {
                cols[q] = fold(cols[q], f_new - row[q], s);
            }
        }
    }
    let out0 = (p * P.blocks + block) * P.n;
    for (var q = 0u; q < VMAX; q = q + 1u) {
        let j = tid + q * WG;
        if (j < P.n) {
            partial[out0 + j] = cols[q];
        }
    }
}

@compute @workgroup_size(WG)
fn update_f(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) tid: u32) {
    let p = wid.z;
    let c = ctl[p];
    if (c.running == 0u) {
        return;
    }
    let eps = c.eps;
    let s = LOG2E / eps;
    let i = lane_of(wid, nwg);
    if (i >= P.m) {
        return;
    }
    let g0 = p * P.n;
    var acc = vec2<f32>(NEG_BIG, 0.0);
    for (var j = tid; j < P.n; j = j + WG) {
        acc = fold(acc, g_in[g0 + j] - cost_entry(p, i, j), s);
    }
    let f_new = new_f(p, i, wg_soft_max(tid, acc, s, eps), eps);
    if (tid == 0u) {
        finish_row(p, i, f_new, eps);
    }
}

@compute @workgroup_size(WG)
fn columns(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) tid: u32) {
    let p = wid.z;
    let c = ctl[p];
    if (c.running == 0u) {
        return;
    }
    let s = LOG2E / c.eps;
    let lane = lane_of(wid, nwg);
    let tile = lane % P.tiles;
    let block = lane / P.tiles;
    if (block >= P.blocks) {
        return;
    }
    let row0 = block * P.rows;
    let row_end = min(row0 + P.rows, P.m);
    let j0 = tile * WG * VMAX + tid;
    var cols: array<vec2<f32>, VMAX>;
    for (var q = 0u; q < VMAX; q = q + 1u) {
        cols[q] = vec2<f32>(NEG_BIG, 0.0);
    }
    for (var i = row0; i < row_end; i = i + 1u) {
        let fi = f_out[p * P.m + i];
        for (var q = 0u; q < VMAX; q = q + 1u) {
            let j = j0 + q * WG;
            if (j < P.n) {
                cols[q] = fold(cols[q], fi - cost_entry(p, i, j), s);
            }
        }
    }
    let out0 = (p * P.blocks + block) * P.n;
    for (var q = 0u; q < VMAX; q = q + 1u) {
        let j = j0 + q * WG;
        if (j < P.n) {
            partial[out0 + j] = cols[q];
        }
    }
}

@compute @workgroup_size(WG)
fn merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) tid: u32) {
    let p = wid.z;
    let c = ctl[p];
    if (c.running == 0u) {
        return;
    }
    let j = lane_of(wid, nwg) * WG + tid;
    if (j >= P.n) {
        return;
    }
    let s = LOG2E / c.eps;
    var acc = vec2<f32>(NEG_BIG, 0.0);
    for (var blk = 0u; blk < P.blocks; blk = blk + 1u) {
        acc = merge_pair(acc, partial[(p * P.blocks + blk) * P.n + j], s);
    }
    let gj = p * P.n + j;
    g_out[gj] = c.eps * log_b[gj] - soft_max(acc, c.eps);
}
