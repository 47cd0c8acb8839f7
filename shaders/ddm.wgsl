// CLSA's distribution divergence (DDM) between a weak and a strong query's similarity rows,
// one workgroup per row (the rows are long: B + K columns), strided loads and tree reductions
// in workgroup memory:
//   p_w = softmax(scale·weak_i), log p_s = scale·strong_i − lse_s,
//   loss_i = −Σ_j p_w·log p_s = lse_s − Σ_j p_w·scale·strong_ij;
//   ∂loss_i/∂strong_ij = scale·(p_s − p_w)·g_i (the weak side gets no gradient).

struct DdmParams {
    n: u32,
    m: u32,
    scale: f32,
    _p: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> dp: DdmParams;
@group(0) @binding(1) var<storage, read> weak: array<f32>;
@group(0) @binding(2) var<storage, read> strong: array<f32>;
@group(0) @binding(3) var<storage, read> g: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> red_a: array<f32, WG>;
var<workgroup> red_b: array<f32, WG>;
var<workgroup> red_c: array<f32, WG>;

fn reduce_max2(lid: u32) {
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red_a[lid] = max(red_a[lid], red_a[lid + s]);
            red_b[lid] = max(red_b[lid], red_b[lid + s]);
        }
        workgroupBarrier();
    }
}

fn reduce_sum3(lid: u32) {
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red_a[lid] += red_a[lid + s];
            red_b[lid] += red_b[lid + s];
            red_c[lid] += red_c[lid + s];
        }
        workgroupBarrier();
    }
}

// (max of scale·weak, max of scale·strong, Σ exp(w − mw), Σ exp(s − ms), Σ exp(w − mw)·s)
// of row i, every invocation of the workgroup getting the totals.
fn row_stats(i: u32, lid: u32) -> array<f32, 5> {
    let base = i * dp.m;
    var mw = -3.402823e38;
    var ms = -3.402823e38;
    for (var j = lid; j < dp.m; j += WG) {
        mw = max(mw, dp.scale * weak[base + j]);
        ms = max(ms, dp.scale * strong[base + j]);
    }
    red_a[lid] = mw;
    red_b[lid] = ms;
    workgroupBarrier();
    reduce_max2(lid);
    mw = red_a[0];
    ms = red_b[0];
    workgroupBarrier();
    var sw = 0.0;
    var ss = 0.0;
    var sws = 0.0;
    for (var j = lid; j < dp.m; j += WG) {
        let ew = exp(dp.scale * weak[base + j] - mw);
        sw += ew;
        ss += exp(dp.scale * strong[base + j] - ms);
        sws += ew * dp.scale * strong[base + j];
    }
    red_a[lid] = sw;
    red_b[lid] = ss;
    red_c[lid] = sws;
    workgroupBarrier();
    reduce_sum3(lid);
    let r = array<f32, 5>(mw, ms, red_a[0], red_b[0], red_c[0]);
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn ddm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = wid.x + wid.y * nwg.x;
    if (i >= dp.n) { return; }
    let r = row_stats(i, lid);
    if (lid == 0u) {
        out[i] = r[1] + log(r[3]) - r[4] / r[2];
    }
}

@compute @workgroup_size(256)
fn ddm_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = wid.x + wid.y * nwg.x;
    if (i >= dp.n) { return; }
    let r = row_stats(i, lid);
    let lse_w = r[0] + log(r[2]);
    let lse_s = r[1] + log(r[3]);
    let base = i * dp.m;
    let gi = g[i] * dp.scale;
    for (var j = lid; j < dp.m; j += WG) {
        let ps = exp(dp.scale * strong[base + j] - lse_s);
        let pw = exp(dp.scale * weak[base + j] - lse_w);
        out[base + j] = (ps - pw) * gi;
    }
}
