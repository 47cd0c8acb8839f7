// Fused log-softmax + negative log-likelihood over rows of logits [N, K], integer labels
// stored as f32:
//   loss_i = log Σ_j exp(x_ij − max_i) + max_i − x_i,label
//   gx_ij  = (softmax_ij − [j = label_i]) · g_i        (g: the gradient of each row's loss)
// One workgroup of 256 invocations per row: strided loads, max and sum by tree reductions in
// workgroup memory (K is a class count, up to thousands).

struct Params {
    n: u32,
    k: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<f32>;
@group(0) @binding(3) var<storage, read> g: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const CE_WG: u32 = 256u;
var<workgroup> ce_red: array<f32, CE_WG>;

// The workgroup's (max | sum) of its invocations' values, every invocation getting it.
fn ce_reduce(lid: u32, v: f32, is_max: bool) -> f32 {
    ce_red[lid] = v;
    workgroupBarrier();
    for (var s = CE_WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            let o = ce_red[lid + s];
            ce_red[lid] = select(ce_red[lid] + o, max(ce_red[lid], o), is_max);
        }
        workgroupBarrier();
    }
    let r = ce_red[0];
    workgroupBarrier();
    return r;
}

fn row_lse(base: u32, lid: u32) -> f32 {
    var m = -3.402823e38;
    for (var j = lid; j < params.k; j += CE_WG) {
        m = max(m, logits[base + j]);
    }
    m = ce_reduce(lid, m, true);
    var s = 0.0;
    for (var j = lid; j < params.k; j += CE_WG) {
        s += exp(logits[base + j] - m);
    }
    return log(ce_reduce(lid, s, false)) + m;
}

@compute @workgroup_size(256)
fn cross_entropy_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = wid.x + wid.y * nwg.x;
    if (r >= params.n) { return; }
    let base = r * params.k;
    let lse = row_lse(base, lid);
    if (lid == 0u) {
        out[r] = lse - logits[base + u32(labels[r])];
    }
}

@compute @workgroup_size(256)
fn cross_entropy_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = wid.x + wid.y * nwg.x;
    if (r >= params.n) { return; }
    let base = r * params.k;
    let label = u32(labels[r]);
    let lse = row_lse(base, lid);
    let gr = g[r];
    for (var j = lid; j < params.k; j += CE_WG) {
        let p = exp(logits[base + j] - lse);
        out[base + j] = (p - select(0.0, 1.0, j == label)) * gr;
    }
}
