// Batch normalisation over [N, C, S] (S = H·W for 2-D, 1 for 1-D), per channel c:
//   train: mean and biased variance over (N, S); y = (x − mean)·invstd·γ + β,
//          invstd = 1/sqrt(var + eps); running_mean ← (1−m)·running_mean + m·mean,
//          running_var ← (1−m)·running_var + m·var·M/(M−1)  (unbiased, as PyTorch), M = N·S.
//   eval:  the same affine map with the running statistics.
//   backward (train): gx = γ·invstd/M · (M·gy − Σgy − x̂·Σ(gy·x̂)), gγ = Σ gy·x̂, gβ = Σ gy.
// Per-channel reductions use one workgroup per channel (a tree in workgroup memory): they run
// once per layer, the elementwise passes carry the volume.

struct Params {
    n: u32,
    c: u32,
    s: u32,
    affine: u32,
    eps: f32,
    momentum: f32,
    flags: u32,   // bit 0: update running stats; bit 1: fused ReLU; bit 2: eval-mode backward
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gy: array<f32>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> beta: array<f32>;
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;    // [mean | invstd] (2C) or [Σgy | Σgy·x̂] (2C)
@group(0) @binding(6) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(9) var<storage, read_write> running_var: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
@group(0) @binding(8) var<storage, read> saved: array<f32>;          // [mean | invstd] for backward

var<workgroup> red_a: array<f32, 256>;
var<workgroup> red_b: array<f32, 256>;

fn reduce2(lid: u32) {
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (lid < w) {
            red_a[lid] += red_a[lid + w];
            red_b[lid] += red_b[lid + w];
        }
        workgroupBarrier();
    }
}

fn elem(n: u32, c: u32, i: u32) -> u32 {
    return (n * params.c + c) * params.s + i;
}

// One workgroup per channel: mean, invstd into stats; running statistics updated.
@compute @workgroup_size(256)
fn bn_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wid.x;
    let m = params.n * params.s;
    var s = 0.0;
    for (var t = lid; t < m; t += 256u) {
        s += x[elem(t / params.s, c, t % params.s)];
    }
    red_a[lid] = s;
    red_b[lid] = 0.0;
    reduce2(lid);
    let mean = red_a[0] / f32(m);
    workgroupBarrier();
    var q = 0.0;
    for (var t = lid; t < m; t += 256u) {
        let d = x[elem(t / params.s, c, t % params.s)] - mean;
        q += d * d;
    }
    red_a[lid] = q;
    red_b[lid] = 0.0;
    reduce2(lid);
    if (lid == 0u) {
        let var_b = red_a[0] / f32(m);
        stats[c] = mean;
        stats[params.c + c] = inverseSqrt(var_b + params.eps);
        if ((params.flags & 1u) != 0u) {
            let unbiased = var_b * f32(m) / f32(max(m, 2u) - 1u);
            running_mean[c] = (1.0 - params.momentum) * running_mean[c] + params.momentum * mean;
            running_var[c] = (1.0 - params.momentum) * running_var[c] + params.momentum * unbiased;
        }
    }
}

// y = (x − mean)·invstd·γ + β (ReLU optional); saved = [mean | invstd].
@compute @workgroup_size(256)
fn bn_apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, 256u);
    if (t >= params.n * params.c * params.s) { return; }
    let c = (t / params.s) % params.c;
    var v = (x[t] - saved[c]) * saved[params.c + c];
    if (params.affine != 0u) {
        v = v * gamma[c] + beta[c];
    }
    if ((params.flags & 2u) != 0u) {
        v = max(v, 0.0);
    }
    out[t] = v;
}

// Eval mode: stats = [running_mean | 1/sqrt(running_var + eps)], then bn_apply as in training.
@compute @workgroup_size(256)
fn bn_eval_stats(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg, 256u);
    if (c >= params.c) { return; }
    stats[c] = running_mean[c];
    stats[params.c + c] = inverseSqrt(running_var[c] + params.eps);
}

// One workgroup per channel: stats = [Σ gy | Σ gy·x̂], x̂ from saved [mean | invstd].
@compute @workgroup_size(256)
fn bn_backward_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wid.x;
    let m = params.n * params.s;
    let mean = saved[c];
    let invstd = saved[params.c + c];
    var sa = 0.0;
    var sb = 0.0;
    for (var t = lid; t < m; t += 256u) {
        let e = elem(t / params.s, c, t % params.s);
        let g = gy[e];
        sa += g;
        sb += g * (x[e] - mean) * invstd;
    }
    red_a[lid] = sa;
    red_b[lid] = sb;
    reduce2(lid);
    if (lid == 0u) {
        stats[c] = red_a[0];
        stats[params.c + c] = red_b[0];
    }
}

// Train: gx = γ·invstd/M · (M·gy − Σgy − x̂·Σ(gy·x̂)); `stats` holds bn_backward_reduce's output.
// Eval (flag bit 2): the statistics are constants, gx = γ·invstd·gy.
@compute @workgroup_size(256)
fn bn_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, 256u);
    if (t >= params.n * params.c * params.s) { return; }
    let c = (t / params.s) % params.c;
    let m = f32(params.n * params.s);
    let invstd = saved[params.c + c];
    let xhat = (x[t] - saved[c]) * invstd;
    var k = invstd;
    if (params.affine != 0u) {
        k = k * gamma[c];
    }
    if ((params.flags & 4u) != 0u) {
        out[t] = k * gy[t];
    } else {
        out[t] = k / m * (m * gy[t] - stats[c] - xhat * stats[params.c + c]);
    }
}
