// lbfgs.wgsl — the vector side of L-BFGS (src/lbfgs.rs drives it with scalars), f32.
//
// Bindings (group 0):
//   0 uniform                 L: LbfgsParams { dim, mem, t }
//   1 storage read_write      x:  dim, iterate
//   2 storage read_write      g:  dim, gradient at x
//   3 storage read_write      d:  dim, search direction
//   4 storage read_write      xt: dim, trial point x + t d
//   5 storage read_write      gt: dim, gradient at the trial point (written by the objective's kernels)
//   6 storage read_write      sy: 2·mem·dim, memory pairs: s_l at [l·dim], y_l at [(mem + l)·dim]
//   7 storage read_write      st: LbfgsState { head, len, out[4], rho[32] }
// Dispatch: trial one thread per entry (ceil(dim / WG) workgroups laid out as in common.wgsl); accept,
//   direction and steepest one workgroup (each thread owns entries tid, tid + WG, …, so no entry is shared
//   between threads and only dot products cross threads, through the fixed reduction tree).
// Overrides: WG.
// Formula: trial xt = x + t d. accept: s = xt − x, y = gt − g into ring slot head + 1, kept if
//   s·y > 1e-12 ‖s‖‖y‖ (ρ = 1/s·y), then x ← xt, g ← gt. direction: two-loop recursion d = −H g with
//   H₀ = (s·y / y·y) I of the newest pair (Nocedal & Wright Alg. 7.4); falls back to d = −g when the memory
//   is empty. steepest: clears the memory, d = −g. Both write out = [g·d, max|g|, steepest?].

struct LbfgsParams {
    dim: u32,
    mem: u32,
    t: f32,
    _pad: u32,
}

const MAX_MEM: u32 = 32u;

struct LbfgsState {
    head: u32,
    len: u32,
    _pad0: u32,
    _pad1: u32,
    out: array<f32, 4>,
    rho: array<f32, MAX_MEM>,
}

@group(0) @binding(0) var<uniform> L: LbfgsParams;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> d: array<f32>;
@group(0) @binding(4) var<storage, read_write> xt: array<f32>;
@group(0) @binding(5) var<storage, read_write> gt: array<f32>;
@group(0) @binding(6) var<storage, read_write> sy: array<f32>;
@group(0) @binding(7) var<storage, read_write> st: LbfgsState;

var<workgroup> wg_len: u32;
var<workgroup> wg_head: u32;

fn s_at(l: u32, i: u32) -> u32 {
    return l * L.dim + i;
}

fn y_at(l: u32, i: u32) -> u32 {
    return (L.mem + l) * L.dim + i;
}

@compute @workgroup_size(WG)
fn trial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) tid: u32) {
    let i = lane_of(wid, nwg) * WG + tid;
    if (i < L.dim) {
        xt[i] = x[i] + L.t * d[i];
    }
}

@compute @workgroup_size(WG)
fn accept(@builtin(local_invocation_index) tid: u32) {
    if (tid == 0u) {
        wg_head = (st.head + 1u) % L.mem;
    }
    let slot = workgroupUniformLoad(&wg_head);
    var s_y = 0.0;
    var y_y = 0.0;
    var s_s = 0.0;
    for (var i = tid; i < L.dim; i = i + WG) {
        let si = xt[i] - x[i];
        let yi = gt[i] - g[i];
        sy[s_at(slot, i)] = si;
        sy[y_at(slot, i)] = yi;
        s_y = s_y + si * yi;
        y_y = y_y + yi * yi;
        s_s = s_s + si * si;
        x[i] = xt[i];
        g[i] = gt[i];
    }
    let sy_t = wg_sum(tid, s_y);
    let yy_t = wg_sum(tid, y_y);
    let ss_t = wg_sum(tid, s_s);
    if (tid == 0u && sy_t > 0.0 && sy_t > 1e-12 * sqrt(yy_t) * sqrt(ss_t)) {
        st.rho[slot] = 1.0 / sy_t;
        st.head = slot;
        st.len = min(st.len + 1u, L.mem);
    }
}

// d = −g; out = [g·d, max|g|, flag].
fn steepest_into(tid: u32, flag: f32) {
    var gd = 0.0;
    var gmax = 0.0;
    for (var i = tid; i < L.dim; i = i + WG) {
        d[i] = -g[i];
        gd = gd - g[i] * g[i];
        gmax = max(gmax, abs(g[i]));
    }
    let gd_t = wg_sum(tid, gd);
    let gmax_t = wg_max(tid, gmax);
    if (tid == 0u) {
        st.out[0] = gd_t;
        st.out[1] = gmax_t;
        st.out[2] = flag;
    }
}

@compute @workgroup_size(WG)
fn steepest(@builtin(local_invocation_index) tid: u32) {
    if (tid == 0u) {
        st.len = 0u;
    }
    steepest_into(tid, 1.0);
}

@compute @workgroup_size(WG)
fn direction(@builtin(local_invocation_index) tid: u32) {
    if (tid == 0u) {
        wg_len = st.len;
        wg_head = st.head;
    }
    let len = workgroupUniformLoad(&wg_len);
    let head = workgroupUniformLoad(&wg_head);
    if (len == 0u) {
        steepest_into(tid, 1.0);
        return;
    }
    let mem = L.mem;
    // Every thread holds the same coefficients (they come out of the same reduction tree).
    var coef: array<f32, MAX_MEM>;
    for (var i = tid; i < L.dim; i = i + WG) {
        d[i] = -g[i];
    }
    // First loop: newest to oldest.
    for (var q = 0u; q < len; q = q + 1u) {
        let l = (head + mem - q) % mem;
        var acc = 0.0;
        for (var i = tid; i < L.dim; i = i + WG) {
            acc = acc + sy[s_at(l, i)] * d[i];
        }
        let c = st.rho[l] * wg_sum(tid, acc);
        for (var i = tid; i < L.dim; i = i + WG) {
            d[i] = d[i] - c * sy[y_at(l, i)];
        }
        coef[l] = c;
    }
    // Initial scaling by the newest pair.
    var yy = 0.0;
    for (var i = tid; i < L.dim; i = i + WG) {
        let v = sy[y_at(head, i)];
        yy = yy + v * v;
    }
    let scale = 1.0 / (st.rho[head] * wg_sum(tid, yy));
    for (var i = tid; i < L.dim; i = i + WG) {
        d[i] = d[i] * scale;
    }
    // Second loop: oldest to newest.
    for (var q = 0u; q < len; q = q + 1u) {
        let l = (head + mem - (len - 1u - q)) % mem;
        var acc = 0.0;
        for (var i = tid; i < L.dim; i = i + WG) {
            acc = acc + sy[y_at(l, i)] * d[i];
        }
        let beta = st.rho[l] * wg_sum(tid, acc);
        let c = coef[l] - beta;
        for (var i = tid; i < L.dim; i = i + WG) {
            d[i] = d[i] + c * sy[s_at(l, i)];
        }
    }
    var gd = 0.0;
    var gmax = 0.0;
    for (var i = tid; i < L.dim; i = i + WG) {
        gd = gd + g[i] * d[i];
        gmax = max(gmax, abs(g[i]));
    }
    let gd_t = wg_sum(tid, gd);
    let gmax_t = wg_max(tid, gmax);
    if (tid == 0u) {
        st.out[0] = gd_t;
        st.out[1] = gmax_t;
        st.out[2] = 0.0;
    }
}
