// reduce.wgsl — small reductions and layout helpers, f32.
//
// Bindings (group 0):
//   0 uniform                 R: ReduceParams { len, rows, cols }
//   1 storage read            src: array<f32>   (max_abs, range: B × len; transpose: B × rows×cols row-major;
//                                               log_into: len)
//   2 storage read_write      dst: array<f32>   (max_abs, range: B; transpose: B × cols×rows; log_into: len)
// Dispatch: max_abs and range one workgroup per problem (it strides over the problem's vector), workgroup_id.z
//   the problem index p (z = B; 1 for a single vector); log_into one thread per entry, ceil(len / WG)
//   workgroups laid out as in common.wgsl (z = 1); transpose one workgroup of WG = 256 threads per 16 × 16
//   tile (tile = lane, row-tile-major), z = B: the tile goes through workgroup memory, so that reads and
//   writes both walk 16 consecutive addresses.
// Batches (max_abs, range): src holds B vectors of len entries back to back; problem p reduces
//   src[p·len .. (p+1)·len] into dst[p].
// Overrides: WG.
// Formula: dst_p = max_i |src_pi|, the max-norm (marginal errors); dst[c·rows + r] = src[r·cols + c]
//   (transpose); dst_i = log src_i (log_into); dst_p = max_i src_pi − min_i src_pi (range, the cost range of
//   the ε schedule).

struct ReduceParams {
    len: u32,
    rows: u32,
    cols: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> R: ReduceParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(WG)
fn max_abs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let base = wid.z * R.len;
    var v = 0.0;
    for (var i = tid; i < R.len; i = i + WG) {
        v = max(v, abs(src[base + i]));
    }
    let r = wg_max(tid, v);
    if (tid == 0u) {
        dst[wid.z] = r;
    }
}

const TILE: u32 = 16u;
var<workgroup> tile: array<f32, 272>; // 16 × 17: the padding column keeps the transposed reads conflict-free

@compute @workgroup_size(WG)
fn transpose(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) tid: u32) {
    let lane = lane_of(wid, nwg);
    let tiles_c = (R.cols + TILE - 1u) / TILE;
    let r0 = (lane / tiles_c) * TILE;
    let c0 = (lane % tiles_c) * TILE;
    let base = wid.z * R.rows * R.cols;
    let tx = tid % TILE;
    let ty = tid / TILE;
    let live = r0 < R.rows;
    if (live && r0 + ty < R.rows && c0 + tx < R.cols) {
        tile[ty * (TILE + 1u) + tx] = src[base + (r0 + ty) * R.cols + c0 + tx];
    }
    workgroupBarrier();
    if (live && c0 + ty < R.cols && r0 + tx < R.rows) {
        dst[base + (c0 + ty) * R.rows + r0 + tx] = tile[tx * (TILE + 1u) + ty];
    }
}

// log_into: dst[i] = log(src[i]) for i < len (one thread per entry, ceil(len / WG) workgroups).
@compute @workgroup_size(WG)
fn log_into(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) tid: u32) {
    let i = lane_of(wid, nwg) * WG + tid;
    if (i < R.len) {
        dst[i] = log(src[i]);
    }
}

// range: dst[p] = max_i src_pi − min_i src_pi over problem p's len entries (one workgroup per problem).
@compute @workgroup_size(WG)
fn range(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let base = wid.z * R.len;
    var hi = NEG_BIG;
    var lo = -NEG_BIG;
    for (var i = tid; i < R.len; i = i + WG) {
        hi = max(hi, src[base + i]);
        lo = min(lo, src[base + i]);
    }
    let top = wg_max(tid, hi);
    let bottom = -wg_max(tid, -lo);
    if (tid == 0u) {
        dst[wid.z] = top - bottom;
    }
}
