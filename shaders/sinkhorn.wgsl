// sinkhorn.wgsl — log-domain Sinkhorn half-updates (SPEC §5), f32.
//
// Bindings (group 0):
//   0 uniform                 P: SinkhornParams { m, n, eps }
//   1 storage read            cost:   m×n row-major C            (update_f)
//   2 storage read            cost_t: n×m row-major Cᵀ           (update_g)
//   3 storage read            log_a:  m                          (update_f)
//   4 storage read            log_b:  n                          (update_g)
//   5 storage read            f_in:   m, potential f before this iteration
//   6 storage read_write      g:      n (written by update_g, read by update_f)
//   7 storage read_write      f_out:  m, f after this iteration  (update_f)
//   8 storage read_write      err:    m, a_i |exp((f_in_i − f_out_i)/ε) − 1| = |(T1)_i − a_i| of the state
//                                     (f_in, g)                   (update_f)
// Dispatch: update_g one workgroup per column j, update_f one workgroup per row i (lanes laid out as in
//   common.wgsl). Each workgroup walks one contiguous lane of C or Cᵀ, so threads read consecutive addresses.
// Overrides: WG.
// Formula: g_j = ε log b_j − ε LSE_i((f_i − C_ij)/ε); f_i = ε log a_i − ε LSE_j((g_j − C_ij)/ε), with a
//   one-pass online (max, sum) per thread merged by a fixed tree (deterministic). exp(−C/ε) is never formed.

struct SinkhornParams {
    m: u32,
    n: u32,
    eps: f32,
    _pad: u32,
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

var<workgroup> lse_max: array<f32, MAX_WG>;
var<workgroup> lse_sum: array<f32, MAX_WG>;

// Merges per-thread (max, sum of exp((w − max)/ε)) pairs; returns max + ε log(sum).
fn soft_max_merge(tid: u32, mx: f32, sm: f32) -> f32 {
    lse_max[tid] = mx;
    lse_sum[tid] = sm;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) {
            let m1 = lse_max[tid];
            let m2 = lse_max[tid + s];
            let hi = max(m1, m2);
            lse_sum[tid] = lse_sum[tid] * exp((m1 - hi) / P.eps) + lse_sum[tid + s] * exp((m2 - hi) / P.eps);
            lse_max[tid] = hi;
        }
        workgroupBarrier();
    }
    let r = lse_max[0] + P.eps * log(lse_sum[0]);
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn update_g(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) tid: u32) {
    let j = lane_of(wid, nwg);
    let live = j < P.n;
    var mx = NEG_BIG;
    var sm = 0.0;
    if (live) {
        let base = j * P.m;
        for (var i = tid; i < P.m; i = i + WG) {
            let w = f_in[i] - cost_t[base + i];
            if (w > mx) {
                sm = sm * exp((mx - w) / P.eps) + 1.0;
                mx = w;
            } else {
                sm = sm + exp((w - mx) / P.eps);
            }
        }
    }
    let soft = soft_max_merge(tid, mx, sm);
    if (live && tid == 0u) {
        g[j] = P.eps * log_b[j] - soft;
    }
}

@compute @workgroup_size(WG)
fn update_f(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) tid: u32) {
    let i = lane_of(wid, nwg);
    let live = i < P.m;
    var mx = NEG_BIG;
    var sm = 0.0;
    if (live) {
        let base = i * P.n;
        for (var j = tid; j < P.n; j = j + WG) {
            let w = g[j] - cost[base + j];
            if (w > mx) {
                sm = sm * exp((mx - w) / P.eps) + 1.0;
                mx = w;
            } else {
                sm = sm + exp((w - mx) / P.eps);
            }
        }
    }
    let soft = soft_max_merge(tid, mx, sm);
    if (live && tid == 0u) {
        let fi = P.eps * log_a[i] - soft;
        f_out[i] = fi;
        err[i] = exp(log_a[i]) * abs(exp((f_in[i] - fi) / P.eps) - 1.0);
    }
}
