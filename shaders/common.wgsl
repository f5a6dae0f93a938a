// common.wgsl — helpers prepended to every kernel family (concatenated on the host, no templating).
//
// Overrides: WG (workgroup size, a power of two, at most 1024; the host picks it per kernel and keys its pipeline
//   cache on it).
// Workgroup memory: red_f (f32 × 1024), red_u (u32 × 1024), used by the tree reductions below.
// Lanes: a dispatch of L workgroups (or threads) is laid out as (min(L, 65535), ceil(L / 65535), 1) and
// `lane_of` flattens it; the z dimension is left to batches (workgroup_id.z = problem index).

override WG: u32 = 64u;
const MAX_WG: u32 = 1024u;
const NEG_BIG: f32 = -3.0e38;

var<workgroup> red_f: array<f32, MAX_WG>;
var<workgroup> red_u: array<u32, MAX_WG>;

fn lane_of(id: vec3<u32>, count: vec3<u32>) -> u32 {
    return id.x + id.y * count.x;
}

// Reductions over aligned segments of `seg` threads (seg a power of two dividing WG, uniform across the
// workgroup): thread tid belongs to segment tid / seg and gets its segment's result, by a fixed pairwise tree
// (deterministic). Call from uniform control flow. With seg = WG they reduce over the whole workgroup.
fn seg_sum(tid: u32, seg: u32, v: f32) -> f32 {
    let lane = tid & (seg - 1u);
    red_f[tid] = v;
    workgroupBarrier();
    for (var s = seg / 2u; s > 0u; s = s >> 1u) {
        if (lane < s) {
            red_f[tid] = red_f[tid] + red_f[tid + s];
        }
        workgroupBarrier();
    }
    let r = red_f[tid - lane];
    workgroupBarrier();
    return r;
}

fn seg_max(tid: u32, seg: u32, v: f32) -> f32 {
    let lane = tid & (seg - 1u);
    red_f[tid] = v;
    workgroupBarrier();
    for (var s = seg / 2u; s > 0u; s = s >> 1u) {
        if (lane < s) {
            red_f[tid] = max(red_f[tid], red_f[tid + s]);
        }
        workgroupBarrier();
    }
    let r = red_f[tid - lane];
    workgroupBarrier();
    return r;
}

fn seg_count(tid: u32, seg: u32, v: u32) -> u32 {
    let lane = tid & (seg - 1u);
    red_u[tid] = v;
    workgroupBarrier();
    for (var s = seg / 2u; s > 0u; s = s >> 1u) {
        if (lane < s) {
            red_u[tid] = red_u[tid] + red_u[tid + s];
        }
        workgroupBarrier();
    }
    let r = red_u[tid - lane];
    workgroupBarrier();
    return r;
}

// Sum, maximum and count over the whole workgroup.
fn wg_sum(tid: u32, v: f32) -> f32 {
    return seg_sum(tid, WG, v);
}

fn wg_max(tid: u32, v: f32) -> f32 {
    return seg_max(tid, WG, v);
}

fn wg_count(tid: u32, v: u32) -> u32 {
    return seg_count(tid, WG, v);
}
