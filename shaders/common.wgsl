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

// Sum of v over the workgroup (fixed pairwise tree: deterministic). Call from uniform control flow.
fn wg_sum(tid: u32, v: f32) -> f32 {
    red_f[tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) {
            red_f[tid] = red_f[tid] + red_f[tid + s];
        }
        workgroupBarrier();
    }
    let r = red_f[0];
    workgroupBarrier();
    return r;
}

// Maximum of v over the workgroup.
fn wg_max(tid: u32, v: f32) -> f32 {
    red_f[tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) {
            red_f[tid] = max(red_f[tid], red_f[tid + s]);
        }
        workgroupBarrier();
    }
    let r = red_f[0];
    workgroupBarrier();
    return r;
}

// Sum of u32 counts over the workgroup.
fn wg_count(tid: u32, v: u32) -> u32 {
    red_u[tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) {
            red_u[tid] = red_u[tid] + red_u[tid + s];
        }
        workgroupBarrier();
    }
    let r = red_u[0];
    workgroupBarrier();
    return r;
}
