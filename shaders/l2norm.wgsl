// Row-wise L2 normalisation of [N, D] (F.normalize(x, dim=1), eps = 1e-12):
//   y = x / max(‖x‖, eps)
//   gx = (gy − y·⟨gy, y⟩) / ‖x‖   when ‖x‖ > eps,   gy / eps otherwise (the divisor is constant).
// One invocation per row: D is at most a few thousand and rows are independent.

struct Params {
    n: u32,
    d: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gy: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn l2_normalize_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_index(gid, nwg, 64u);
    if (r >= params.n) { return; }
    let base = r * params.d;
    var s = 0.0;
    for (var j = 0u; j < params.d; j++) {
        s += x[base + j] * x[base + j];
    }
    let inv = 1.0 / max(sqrt(s), params.eps);
    for (var j = 0u; j < params.d; j++) {
        out[base + j] = x[base + j] * inv;
    }
}

@compute @workgroup_size(64)
fn l2_normalize_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_index(gid, nwg, 64u);
    if (r >= params.n) { return; }
    let base = r * params.d;
    var s = 0.0;
    var dot = 0.0;
    for (var j = 0u; j < params.d; j++) {
        s += x[base + j] * x[base + j];
        dot += x[base + j] * gy[base + j];
    }
    let norm = sqrt(s);
    if (norm > params.eps) {
        // y = x/norm, ⟨gy, y⟩ = dot/norm.
        let inv = 1.0 / norm;
        let k = dot * inv * inv * inv;
        for (var j = 0u; j < params.d; j++) {
            out[base + j] = gy[base + j] * inv - x[base + j] * k;
        }
    } else {
        for (var j = 0u; j < params.d; j++) {
            out[base + j] = gy[base + j] / params.eps;
        }
    }
}
