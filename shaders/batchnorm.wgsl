// Batch normalisation over [N, C, S] (S = H·W for 2-D, 1 for 1-D), per channel c:
//   train: mean and biased variance over (N, S); y = (x − mean)·invstd·γ + β,
//          invstd = 1/sqrt(var + eps); running_mean ← (1−m)·running_mean + m·mean,
//          running_var ← (1−m)·running_var + m·var·M/(M−1)  (unbiased, as PyTorch), M = N·S.
//   eval:  the same affine map with the running statistics.
//   fused: y = relu(BN(x) [+ residual]) (flag bits 1 and 3).
//   backward (train): gx = γ·invstd/M · (M·gy − Σgy − x̂·Σ(gy·x̂)), gγ = Σ gy·x̂, gβ = Σ gy;
//          with a fused ReLU (bit 1) gy is first masked by y > 0 (`aux` holds y).
// Per-channel reductions in one pass over the data, spread over `chunks` workgroups per
// channel: each invocation runs Welford's update over its strided values, the workgroup merges
// its invocations' (count, mean, M2) pairwise (Chan et al.) in a tree, and a second small
// kernel merges a channel's chunks in chunk order. (Chan's merge is as accurate as a two-pass
// variance: no E[x²] − E[x]² cancellation.) The backward's sums need no such care (x̂ is
// centred) and are summed per chunk, then over chunks in order.

struct Params {
    n: u32,
    c: u32,
    s: u32,
    affine: u32,
    eps: f32,
    momentum: f32,
    flags: u32,   // bit 0: update running stats; bit 1: fused ReLU; bit 2: eval-mode backward; bit 3: residual add
    chunks: u32,  // workgroups per channel in the reductions
    chunk_len: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
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
@group(0) @binding(10) var<storage, read_write> partial: array<f32>; // per (channel, chunk) partial results
@group(0) @binding(11) var<storage, read> aux: array<f32>;           // residual (forward) or y (backward, fused ReLU)

const BN_WG: u32 = 256u;
var<workgroup> red_n: array<f32, BN_WG>;
var<workgroup> red_a: array<f32, BN_WG>;
var<workgroup> red_b: array<f32, BN_WG>;

fn elem(n: u32, c: u32, i: u32) -> u32 {
    return (n * params.c + c) * params.s + i;
}

// Chan et al.'s merge of (nb, mb, qb) into (na, ma, qa): count, mean, Σ(x − mean)².
fn chan(a: vec3<f32>, b: vec3<f32>) -> vec3<f32> {
    let n = a.x + b.x;
    if (b.x == 0.0) { return a; }
    if (a.x == 0.0) { return b; }
    let d = b.y - a.y;
    return vec3(n, a.y + d * b.x / n, a.z + b.z + d * d * a.x * b.x / n);
}

// The chunk of channel `wid.y`'s N·S values that workgroup `wid.x` covers.
fn chunk_range(chunk: u32) -> vec2<u32> {
    let start = chunk * params.chunk_len;
    return vec2(start, min(params.n * params.s, start + params.chunk_len));
}

// (count, mean, M2) of each (channel, chunk) into partial[(c·chunks + chunk)·3 ..].
@compute @workgroup_size(256)
fn bn_stats_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wid.y;
    let r = chunk_range(wid.x);
    var acc = vec3(0.0);
    for (var t = r.x + lid; t < r.y; t += BN_WG) {
        let v = x[elem(t / params.s, c, t % params.s)];
        acc.x += 1.0;
        let d = v - acc.y;
        acc.y += d / acc.x;
        acc.z += d * (v - acc.y);
    }
    red_n[lid] = acc.x;
    red_a[lid] = acc.y;
    red_b[lid] = acc.z;
    workgroupBarrier();
    for (var w = BN_WG / 2u; w > 0u; w >>= 1u) {
        if (lid < w) {
            let m = chan(vec3(red_n[lid], red_a[lid], red_b[lid]),
                         vec3(red_n[lid + w], red_a[lid + w], red_b[lid + w]));
            red_n[lid] = m.x;
            red_a[lid] = m.y;
            red_b[lid] = m.z;
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let o = (c * params.chunks + wid.x) * 3u;
        partial[o] = red_n[0];
        partial[o + 1u] = red_a[0];
        partial[o + 2u] = red_b[0];
    }
}

// Per channel: its chunks merged in order; mean, invstd into stats; running statistics updated.
@compute @workgroup_size(64)
fn bn_stats_merge(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg, 64u);
    if (c >= params.c) { return; }
    var acc = vec3(0.0);
    for (var k = 0u; k < params.chunks; k++) {
        let o = (c * params.chunks + k) * 3u;
        acc = chan(acc, vec3(partial[o], partial[o + 1u], partial[o + 2u]));
    }
    let m = params.n * params.s;
    let var_b = acc.z / f32(m);
    stats[c] = acc.y;
    stats[params.c + c] = inverseSqrt(var_b + params.eps);
    if ((params.flags & 1u) != 0u) {
        let unbiased = acc.z / f32(max(m, 2u) - 1u);
        running_mean[c] = (1.0 - params.momentum) * running_mean[c] + params.momentum * acc.y;
        running_var[c] = (1.0 - params.momentum) * running_var[c] + params.momentum * unbiased;
    }
}

// y = (x − mean)·invstd·γ + β (+ residual) (ReLU optional); saved = [mean | invstd].
@compute @workgroup_size(256)
fn bn_apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, 256u);
    if (t >= params.n * params.c * params.s) { return; }
    let c = (t / params.s) % params.c;
    var v = (x[t] - saved[c]) * saved[params.c + c];
    if (params.affine != 0u) {
        v = v * gamma[c] + beta[c];
    }
    if ((params.flags & 8u) != 0u) {
        v += aux[t];
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

// The output gradient, masked by the fused ReLU's y > 0.
fn grad_out(e: u32) -> f32 {
    if ((params.flags & 2u) != 0u) {
        return select(0.0, gy[e], aux[e] > 0.0);
    }
    return gy[e];
}

// Per (channel, chunk): [Σ gy | Σ gy·x̂] into partial[(c·chunks + chunk)·2 ..].
@compute @workgroup_size(256)
fn bn_backward_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wid.y;
    let r = chunk_range(wid.x);
    let mean = saved[c];
    let invstd = saved[params.c + c];
    var sa = 0.0;
    var sb = 0.0;
    for (var t = r.x + lid; t < r.y; t += BN_WG) {
        let e = elem(t / params.s, c, t % params.s);
        let g = grad_out(e);
        sa += g;
        sb += g * (x[e] - mean) * invstd;
    }
    red_a[lid] = sa;
    red_b[lid] = sb;
    workgroupBarrier();
    for (var w = BN_WG / 2u; w > 0u; w >>= 1u) {
        if (lid < w) {
            red_a[lid] += red_a[lid + w];
            red_b[lid] += red_b[lid + w];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let o = (c * params.chunks + wid.x) * 2u;
        partial[o] = red_a[0];
        partial[o + 1u] = red_b[0];
    }
}

// Per channel: stats = [Σ gy | Σ gy·x̂] over its chunks, in order.
@compute @workgroup_size(64)
fn bn_backward_merge(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg, 64u);
    if (c >= params.c) { return; }
    var sa = 0.0;
    var sb = 0.0;
    for (var k = 0u; k < params.chunks; k++) {
        let o = (c * params.chunks + k) * 2u;
        sa += partial[o];
        sb += partial[o + 1u];
    }
    stats[c] = sa;
    stats[params.c + c] = sb;
}

// Train: gx = γ·invstd/M · (M·gy − Σgy − x̂·Σ(gy·x̂)); `stats` holds bn_backward_merge's output.
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
    let g = grad_out(t);
    if ((params.flags & 4u) != 0u) {
        out[t] = k * g;
    } else {
        out[t] = k / m * (m * g - stats[c] - xhat * stats[params.c + c]);
    }
}
