// lbfgs.wgsl — the vector side of L-BFGS for a batch of B problems run in lockstep (src/lbfgs.rs drives
// every problem with its own scalar state machine), f32.
//
// Bindings (group 0):
//   0 uniform                 L: LbfgsParams { dim, mem }  (per problem)
//   1 storage read_write      x:    B·dim, iterates
//   2 storage read_write      g:    B·dim, gradients at x
//   3 storage read_write      d:    B·dim, search directions
//   4 storage read_write      xt:   B·dim, trial points x + t d
//   5 storage read_write      gt:   B·dim, gradients at the trial points (written by the objective's kernels)
//   6 storage read_write      sy:   B·2·mem·dim, memory pairs of problem p: s_l at p·2·mem·dim + l·dim,
//                                   y_l at p·2·mem·dim + (mem + l)·dim
//   7 storage read_write      st:   B × LbfgsState { head, len, rho[32] }
//   8 storage read            ctrl: B × Control { ops, t }: what problem p does this round (bit flags below)
//                                   and its step length
//   9 storage read_write      res:  B × 4: [g·d, max|g|, steepest?, t₀] written by `direction`; t₀, the
//                                   first step of the line search, is 1/max|g| for a steepest direction
//                                   (the step that moves the largest entry by 1) and 1 otherwise
// Dispatch: workgroup_id.z is the problem index p (z = B). trial: one thread per entry (ceil(dim / WG)
//   workgroups laid out as in common.wgsl); accept and direction: one workgroup per problem (each thread owns
//   entries tid, tid + WG, …, so no entry is shared between threads and only dot products cross threads,
//   through the fixed reduction tree). A kernel leaves problems whose ops lack its flag untouched, so one
//   round of dispatches serves problems that are at different points of their iterations.
// Overrides: WG.
// Formula: trial xt = x + t d, t from the control word, or with the FIRST flag the t₀ that this round's
//   direction wrote (the line search's first trial, evaluated in the same round as its direction).
//   accept: s = xt − x, y = gt − g, stored into ring slot head + 1 only if s·y > 1e-12 ‖s‖‖y‖ (ρ = 1/s·y), then x ← xt, g ← gt. direction: two-loop recursion d = −H g with
//   H₀ = (s·y / y·y) I of the newest pair (Nocedal & Wright Alg. 7.4), or, with the STEEPEST flag or an
//   empty memory, d = −g (the STEEPEST flag also clears the memory).

struct LbfgsParams {
    dim: u32,
    mem: u32,
    _pad0: u32,
    _pad1: u32,
}

const MAX_MEM: u32 = 32u;

// Control flags (src/gpu/lbfgs.rs sets them per problem and round).
const OP_ACCEPT: u32 = 1u;
const OP_DIRECTION: u32 = 2u;
const OP_STEEPEST: u32 = 4u;
const OP_TRIAL: u32 = 8u;
const OP_FIRST: u32 = 16u;

struct LbfgsState {
    head: u32,
    len: u32,
    _pad0: u32,
    _pad1: u32,
    rho: array<f32, MAX_MEM>,
}

struct Control {
    ops: u32,
    t: f32,
}

@group(0) @binding(0) var<uniform> L: LbfgsParams;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> d: array<f32>;
@group(0) @binding(4) var<storage, read_write> xt: array<f32>;
@group(0) @binding(5) var<storage, read_write> gt: array<f32>;
@group(0) @binding(6) var<storage, read_write> sy: array<f32>;
@group(0) @binding(7) var<storage, read_write> st: array<LbfgsState>;
@group(0) @binding(8) var<storage, read> ctrl: array<Control>;
@group(0) @binding(9) var<storage, read_write> res: array<f32>;

var<workgroup> wg_len: u32;
var<workgroup> wg_head: u32;
var<workgroup> wg_ops: u32;

// Problem index of the invocation (workgroup_id.z) and the start of its vectors.
var<private> pb: u32;
var<private> base: u32;

fn s_at(l: u32, i: u32) -> u32 {
    return (pb * 2u * L.mem + l) * L.dim + i;
}

fn y_at(l: u32, i: u32) -> u32 {
    return (pb * 2u * L.mem + L.mem + l) * L.dim + i;
}

// This round's ops of problem pb, loaded uniformly for the workgroup.
fn uniform_ops(tid: u32) -> u32 {
    if (tid == 0u) {
        wg_ops = ctrl[pb].ops;
    }
    return workgroupUniformLoad(&wg_ops);
}

@compute @workgroup_size(WG)
fn trial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) tid: u32) {
    pb = wid.z;
    let c = ctrl[pb];
    let i = lane_of(wid, nwg) * WG + tid;
    if ((c.ops & OP_TRIAL) != 0u && i < L.dim) {
        let e = pb * L.dim + i;
        let t = select(c.t, res[4u * pb + 3u], (c.ops & OP_FIRST) != 0u);
        xt[e] = x[e] + t * d[e];
    }
}

@compute @workgroup_size(WG)
fn accept(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    pb = wid.z;
    base = pb * L.dim;
    if ((uniform_ops(tid) & OP_ACCEPT) == 0u) {
        return;
    }
    if (tid == 0u) {
        wg_head = (st[pb].head + 1u) % L.mem;
    }
    let slot = workgroupUniformLoad(&wg_head);
    // Test the pair first: the slot may hold the oldest pair still in use, so it is written only if kept.
    var s_y = 0.0;
    var y_y = 0.0;
    var s_s = 0.0;
    for (var i = tid; i < L.dim; i = i + WG) {
        let e = base + i;
        let si = xt[e] - x[e];
        let yi = gt[e] - g[e];
        s_y = s_y + si * yi;
        y_y = y_y + yi * yi;
        s_s = s_s + si * si;
    }
    let sy_t = wg_sum(tid, s_y);
    let yy_t = wg_sum(tid, y_y);
    let ss_t = wg_sum(tid, s_s);
    let keep = sy_t > 0.0 && sy_t > 1e-12 * sqrt(yy_t) * sqrt(ss_t);
    for (var i = tid; i < L.dim; i = i + WG) {
        let e = base + i;
        if (keep) {
            sy[s_at(slot, i)] = xt[e] - x[e];
            sy[y_at(slot, i)] = gt[e] - g[e];
        }
        x[e] = xt[e];
        g[e] = gt[e];
    }
    if (tid == 0u && keep) {
        st[pb].rho[slot] = 1.0 / sy_t;
        st[pb].head = slot;
        st[pb].len = min(st[pb].len + 1u, L.mem);
    }
}

// res = [g·d, max|g|, steepest?, t₀] of problem pb.
fn report(tid: u32, gd: f32, gmax: f32, flag: f32) {
    let gd_t = wg_sum(tid, gd);
    let gmax_t = wg_max(tid, gmax);
    if (tid == 0u) {
        res[4u * pb] = gd_t;
        res[4u * pb + 1u] = gmax_t;
        res[4u * pb + 2u] = flag;
        res[4u * pb + 3u] = select(1.0, 1.0 / gmax_t, flag != 0.0 && gmax_t > 0.0);
    }
}

// d = −g.
fn steepest_into(tid: u32) {
    var gd = 0.0;
    var gmax = 0.0;
    for (var i = tid; i < L.dim; i = i + WG) {
        let e = base + i;
        d[e] = -g[e];
        gd = gd - g[e] * g[e];
        gmax = max(gmax, abs(g[e]));
    }
    report(tid, gd, gmax, 1.0);
}

@compute @workgroup_size(WG)
fn direction(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    pb = wid.z;
    base = pb * L.dim;
    let ops = uniform_ops(tid);
    if ((ops & (OP_DIRECTION | OP_STEEPEST)) == 0u) {
        return;
    }
    if (tid == 0u) {
        if ((ops & OP_STEEPEST) != 0u) {
            st[pb].len = 0u;
        }
        wg_len = st[pb].len;
        wg_head = st[pb].head;
    }
    let len = workgroupUniformLoad(&wg_len);
    let head = workgroupUniformLoad(&wg_head);
    if (len == 0u) {
        steepest_into(tid);
        return;
    }
    let mem = L.mem;
    // Every thread holds the same coefficients (they come out of the same reduction tree).
    var coef: array<f32, MAX_MEM>;
    for (var i = tid; i < L.dim; i = i + WG) {
        d[base + i] = -g[base + i];
    }
    // First loop: newest to oldest.
    for (var q = 0u; q < len; q = q + 1u) {
        let l = (head + mem - q) % mem;
        var acc = 0.0;
        for (var i = tid; i < L.dim; i = i + WG) {
            acc = acc + sy[s_at(l, i)] * d[base + i];
        }
        let c = st[pb].rho[l] * wg_sum(tid, acc);
        for (var i = tid; i < L.dim; i = i + WG) {
            d[base + i] = d[base + i] - c * sy[y_at(l, i)];
        }
        coef[l] = c;
    }
    // Initial scaling by the newest pair.
    var yy = 0.0;
    for (var i = tid; i < L.dim; i = i + WG) {
        let v = sy[y_at(head, i)];
        yy = yy + v * v;
    }
    let scale = 1.0 / (st[pb].rho[head] * wg_sum(tid, yy));
    for (var i = tid; i < L.dim; i = i + WG) {
        d[base + i] = d[base + i] * scale;
    }
    // Second loop: oldest to newest.
    for (var q = 0u; q < len; q = q + 1u) {
        let l = (head + mem - (len - 1u - q)) % mem;
        var acc = 0.0;
        for (var i = tid; i < L.dim; i = i + WG) {
            acc = acc + sy[y_at(l, i)] * d[base + i];
        }
        let beta = st[pb].rho[l] * wg_sum(tid, acc);
        let c = coef[l] - beta;
        for (var i = tid; i < L.dim; i = i + WG) {
            d[base + i] = d[base + i] + c * sy[s_at(l, i)];
        }
    }
    var gd = 0.0;
    var gmax = 0.0;
    for (var i = tid; i < L.dim; i = i + WG) {
        gd = gd + g[base + i] * d[base + i];
        gmax = max(gmax, abs(g[base + i]));
    }
    report(tid, gd, gmax, 0.0);
}
