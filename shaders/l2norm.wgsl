// Row-wise L2 normalisation of [N, D] (F.normalize(x, dim=1), eps = 1e-12):
//   y = x / max(‖x‖, eps)
//   gx = (gy − y·⟨gy, y⟩) / ‖x‖   when ‖x‖ > eps,   gy / eps otherwise (the divisor is constant).
// One workgroup of 256 invocations per row: strided loads, the row's sums by a tree reduction
// in workgroup memory (D is 128 to 2048).

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

const L2_WG: u32 = 256u;
var<workgroup> l2_red: array<vec2<f32>, L2_WG>;

// The workgroup's sum of its invocations' pairs, every invocation getting it.
fn l2_sum(lid: u32, v: vec2<f32>) -> vec2<f32> {
    l2_red[lid] = v;
    workgroupBarrier();
    for (var s = L2_WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            l2_red[lid] += l2_red[lid + s];
        }
        workgroupBarrier();
    }
    let r = l2_red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn l2_normalize_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = wid.x + wid.y * nwg.x;
    if (r >= params.n) { return; }
    let base = r * params.d;
    var s = 0.0;
    for (var j = lid; j < params.d; j += L2_WG) {
        s += x[base + j] * x[base + j];
    }
    let inv = 1.0 / max(sqrt(l2_sum(lid, vec2(s, 0.0)).x), params.eps);
    for (var j = lid; j < params.d; j += L2_WG) {
        out[base + j] = x[base + j] * inv;
    }
}

@compute @workgroup_size(256)
fn l2_normalize_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = wid.x + wid.y * nwg.x;
    if (r >= params.n) { return; }
    let base = r * params.d;
    var acc = vec2(0.0);
    for (var j = lid; j < params.d; j += L2_WG) {
        acc += vec2(x[base + j] * x[base + j], x[base + j] * gy[base + j]);
    }
    let sums = l2_sum(lid, acc);
    let norm = sqrt(sums.x);
    if (norm > params.eps) {
        // y = x/norm, ⟨gy, y⟩ = dot/norm.
        let inv = 1.0 / norm;
        let k = sums.y * inv * inv * inv;
        for (var j = lid; j < params.d; j += L2_WG) {
            out[base + j] = gy[base + j] * inv - x[base + j] * k;
        }
    } else {
        for (var j = lid; j < params.d; j += L2_WG) {
            out[base + j] = gy[base + j] / params.eps;
        }
    }
}
