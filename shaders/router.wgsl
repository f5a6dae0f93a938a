// router.wgsl — the mixture-of-experts router's input and output on the device (experts choose tokens,
// docs/MATH.md §7), f32, for G groups of S tokens × E experts.
//
// Bindings (group 0):
//   0 uniform                 R: RouterParams { tokens S, experts E, k (capacity), expert_mass = S / E }
//   1 storage read            logits: G×S×E row-major (group g, token s, expert e at (g·S + s)·E + e)
//   2 storage read_write      cost_t: G×E×S, the sparse solver's transposed cost: −gate(g, s, e) at
//                             (g·E + e)·S + s, so expert e's column over the tokens is contiguous
//                             (router_gates writes it, router_gather reads it)
//   3 storage read_write      a: G×S token masses, 1                                  (router_gates)
//   4 storage read_write      b: G×E expert masses, S / E                              (router_gates)
//   5 storage read            rows: G×E×k token indices per expert slot from sparse_dual.wgsl's extract,
//                             0xffffffff where the slot is empty                       (router_gather)
//   6 storage read_write      combine: G×E×k, the gate of each routed (token, expert) pair, 0 for an
//                             empty slot                                               (router_gather)
// Dispatch: router_gates one thread per token (ceil(S / WG) workgroups laid out as in common.wgsl),
//   router_gather one thread per expert; workgroup_id.z is the group g (z = G).
// Overrides: WG.
// Formula: gate(g, s, ·) = softmax(logits(g, s, ·)) computed as exp(l − max l) / Σ exp(l − max l); the OT
//   problem of group g is cost −gate, token mass 1, expert mass S / E; combine(g, e, w) = gate(g, rows[w], e).

struct RouterParams {
    tokens: u32,
    experts: u32,
    k: u32,
    expert_mass: f32,
}

@group(0) @binding(0) var<uniform> R: RouterParams;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> cost_t: array<f32>;
@group(0) @binding(3) var<storage, read_write> a: array<f32>;
@group(0) @binding(4) var<storage, read_write> b: array<f32>;
@group(0) @binding(5) var<storage, read> rows: array<u32>;
@group(0) @binding(6) var<storage, read_write> combine: array<f32>;

@compute @workgroup_size(WG)
fn router_gates(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) tid: u32) {
    let g = wid.z;
    let s = lane_of(wid, nwg) * WG + tid;
    if (s >= R.tokens) {
        return;
    }
    let row = (g * R.tokens + s) * R.experts;
    var mx = NEG_BIG;
    for (var e = 0u; e < R.experts; e = e + 1u) {
        mx = max(mx, logits[row + e]);
    }
    var z = 0.0;
    for (var e = 0u; e < R.experts; e = e + 1u) {
        z = z + exp(logits[row + e] - mx);
    }
    for (var e = 0u; e < R.experts; e = e + 1u) {
        cost_t[(g * R.experts + e) * R.tokens + s] = -exp(logits[row + e] - mx) / z;
    }
    a[g * R.tokens + s] = 1.0;
    for (var e = s; e < R.experts; e = e + R.tokens) {
        b[g * R.experts + e] = R.expert_mass;
    }
}

@compute @workgroup_size(WG)
fn router_gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) tid: u32) {
    let g = wid.z;
    let e = lane_of(wid, nwg) * WG + tid;
    if (e >= R.experts) {
        return;
    }
    let col = g * R.experts + e;
    for (var w = 0u; w < R.k; w = w + 1u) {
        let s = rows[col * R.k + w];
        if (s < R.tokens) {
            combine[col * R.k + w] = -cost_t[col * R.tokens + s];
        } else {
            combine[col * R.k + w] = 0.0;
        }
    }
}
