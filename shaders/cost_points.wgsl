// cost_points.wgsl — cost provider for sinkhorn.wgsl and sparse_dual.wgsl: entries computed from two point
// clouds, never stored.
//
// Bindings (group 0):
//  17 storage read            xt: B × (d × m), coordinate k of source point i of problem p at (p·d + k)·m + i
//  18 storage read            yt: B × (d × n), coordinate-major likewise (consecutive j: consecutive addresses)
//  19 uniform                 G: GroundParams { d, kind (0 squared Euclidean, 1 Euclidean, 2 Minkowski),
//                                               p, q (Minkowski), scale (1 / divisor), offset }
// (17–19 lie above every binding of the families that include this file.)
// Uses the kernel family's uniform P (m, n).
// Formula: cost_entry(p, i, j) = scale · c(x_i, y_j) − offset with c = Σ_k δ_k² (kind 0), (Σ_k δ_k²)^½ (kind 1) or
//   (Σ_k |δ_k|^p)^(q/p) (kind 2), δ = x_i − y_j, summed over k in order (as the CPU path does).

struct GroundParams {
    d: u32,
    kind: u32,
    p: f32,
    q: f32,
    scale: f32,
    offset: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(17) var<storage, read> xt: array<f32>;
@group(0) @binding(18) var<storage, read> yt: array<f32>;
@group(0) @binding(19) var<uniform> G: GroundParams;

fn cost_entry(p: u32, i: u32, j: u32) -> f32 {
    var s = 0.0;
    for (var k = 0u; k < G.d; k = k + 1u) {
        let dlt = xt[(p * G.d + k) * P.m + i] - yt[(p * G.d + k) * P.n + j];
        if (G.kind == 2u) {
            s = s + pow(abs(dlt), G.p);
        } else {
            s = s + dlt * dlt;
        }
    }
    if (G.kind == 1u) {
        s = sqrt(s);
    } else if (G.kind == 2u && G.q != G.p) {
        s = pow(s, G.q / G.p);
    }
    return s * G.scale - G.offset;
}
