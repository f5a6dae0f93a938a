// sinkhorn.wgsl — log-domain Sinkhorn half-updates (docs/MATH.md §5) for a batch of B problems of one shape, f32.
//
// Bindings (group 0):
//   0 uniform                 P: SinkhornParams { m, n }
//   1 storage read            cost:   B × (m×n row-major C)           (update_f)
//   2 storage read            cost_t: B × (n×m row-major Cᵀ)          (update_g)
//   3 storage read            log_a:  B × m                           (update_f)
//   4 storage read            log_b:  B × n                           (update_g)
//   5 storage read            f_in:   B × m, potential f before this iteration
//   6 storage read_write      g:      B × n (written by update_g, read by update_f)
//   7 storage read_write      f_out:  B × m, f after this iteration   (update_f)
//   8 storage read_write      err:    B × m, a_i |exp((f_in_i − f_out_i)/ε) − 1| = |(T1)_i − a_i| of the
//                                     state (f_in, g)                 (update_f)
//   9 storage read            ctl:    B × Control { eps, running }: problem p's current ε (its own ε schedule
//                                     and stage) and whether it still iterates (0: frozen)
// Dispatch: update_g one workgroup per column j, update_f one workgroup per row i (lanes laid out as in
//   common.wgsl); workgroup_id.z is the problem index p (z = B, 1 for a single problem). Each workgroup walks
//   one contiguous lane of C or Cᵀ, so threads read consecutive addresses.
// Batches: every buffer holds the B problems back to back; problem p's slice starts at p × its per-problem
//   length (cost and cost_t m·n, log_a/f/err m, log_b/g n, ctl 1). The workgroups of a frozen problem
//   (ctl[p].running = 0) return at once and write nothing, so its f, g and err stay as they were. Problem p's
//   workgroups do the same arithmetic in the same order whatever B is.
// Overrides: WG.
// Formula: g_j = ε log b_j − ε LSE_i((f_i − C_ij)/ε); f_i = ε log a_i − ε LSE_j((g_j − C_ij)/ε), with a
//   one-pass online (max, sum) per thread merged by a fixed tree (deterministic). exp(−C/ε) is never formed.

struct SinkhornParams {
    m: u32,
    n: u32,
    _pad0: u32,
    _pad1: u32,
}

struct Control {
    eps: f32,
    running: u32,
}

@group(0) @binding(0) var<uniform> P: SinkhornParams;
@group(0) @binding(1) var<storage, read> cost: array<f32>;
@group(0) @binding(2) var<storage, read> cost_t: array<f32>;
@group(0) @binding(3) var<storage, read> log_a: array<f32>;
@group(0) @binding(4) var<storage, read> log_b: array<f32>;
@group(0) @binding(5) var<storage, read> f_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> g: array<f32>;
@group(0) @binding(7) var<storage, read_write> f_out: array<f32>;
@group(0) @binding(8) var<storage, read_write> err: array<f32>;
@group(0) @binding(9) var<storage, read> ctl: array<Control>;

var<workgroup> lse_max: array<f32, MAX_WG>;
var<workgroup> lse_sum: array<f32, MAX_WG>;

// Merges per-thread (max, sum of exp((w − max)/ε)) pairs; returns max + ε log(sum).
fn soft_max_merge(tid: u32, mx: f32, sm: f32, eps: f32) -> f32 {
    lse_max[tid] = mx;
    lse_sum[tid] = sm;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) {
            let m1 = lse_max[tid];
            let m2 = lse_max[tid + s];
            let hi = max(m1, m2);
            lse_sum[tid] = lse_sum[tid] * exp((m1 - hi) / eps) + lse_sum[tid + s] * exp((m2 - hi) / eps);
            lse_max[tid] = hi;
        }
        workgroupBarrier();
    }
    let r = lse_max[0] + eps * log(lse_sum[0]);
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn update_g(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) tid: u32) {
    let p = wid.z;
    // ctl is read-only and p uniform, so c is uniform: a frozen problem's workgroups leave together, before
    // any barrier.
    let c = ctl[p];
    if (c.running == 0u) {
        return;
    }
    let eps = c.eps;
    let j = lane_of(wid, nwg);
    let live = j < P.n;
    let f0 = p * P.m;
    var mx = NEG_BIG;
    var sm = 0.0;
    if (live) {
        let base = (p * P.n + j) * P.m;
        for (var i = tid; i < P.m; i = i + WG) {
            let w = f_in[f0 + i] - cost_t[base + i];
            if (w > mx) {
                sm = sm * exp((mx - w) / eps) + 1.0;
                mx = w;
            } else {
                sm = sm + exp((w - mx) / eps);
            }
        }
    }
    let soft = soft_max_merge(tid, mx, sm, eps);
    if (live && tid == 0u) {
        let gj = p * P.n + j;
        g[gj] = eps * log_b[gj] - soft;
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
    let i = lane_of(wid, nwg);
    let live = i < P.m;
    let g0 = p * P.n;
    var mx = NEG_BIG;
    var sm = 0.0;
    if (live) {
        let base = (p * P.m + i) * P.n;
        for (var j = tid; j < P.n; j = j + WG) {
            let w = g[g0 + j] - cost[base + j];
            if (w > mx) {
                sm = sm * exp((mx - w) / eps) + 1.0;
                mx = w;
            } else {
                sm = sm + exp((w - mx) / eps);
            }
        }
    }
    let soft = soft_max_merge(tid, mx, sm, eps);
    if (live && tid == 0u) {
        let fi = p * P.m + i;
        let f_new = eps * log_a[fi] - soft;
        f_out[fi] = f_new;
        err[fi] = exp(log_a[fi]) * abs(exp((f_in[fi] - f_new) / eps) - 1.0);
    }
}
