// reduce.wgsl — small reductions and layout helpers, f32.
//
// Bindings (group 0):
//   0 uniform                 R: ReduceParams { len, rows, cols }
//   1 storage read            src: array<f32>   (max_abs: len entries; transpose: rows×cols row-major)
//   2 storage read_write      dst: array<f32>   (max_abs: dst[0] = max_i |src_i|; transpose: cols×rows)
// Dispatch: max_abs one workgroup (it strides over the whole vector); transpose one thread per destination
//   entry, ceil(rows·cols / WG) workgroups laid out as in common.wgsl.
// Overrides: WG.
// Formula: max-norm ‖src‖_∞ (marginal errors); dst[c·rows + r] = src[r·cols + c].

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
fn max_abs(@builtin(local_invocation_index) tid: u32) {
    var v = 0.0;
    for (var i = tid; i < R.len; i = i + WG) {
        v = max(v, abs(src[i]));
    }
    let r = wg_max(tid, v);
    if (tid == 0u) {
        dst[0] = r;
    }
}

@compute @workgroup_size(WG)
fn transpose(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) tid: u32) {
    let e = lane_of(wid, nwg) * WG + tid;
    if (e < R.rows * R.cols) {
        let c = e / R.rows;
        let r = e % R.rows;
        dst[e] = src[r * R.cols + c];
    }
}
