// Fused log-softmax + negative log-likelihood over rows of logits [N, K], integer labels
// stored as f32:
//   loss_i = log Σ_j exp(x_ij − max_i) + max_i − x_i,label
//   gx_ij  = (softmax_ij − [j = label_i]) · g_i        (g: the gradient of each row's loss)
// One invocation per row (K is a class count or N+K logits of a contrastive loss).

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

fn row_lse(base: u32) -> f32 {
    var m = -3.402823e38;
    for (var j = 0u; j < params.k; j++) {
        m = max(m, logits[base + j]);
    }
    var s = 0.0;
    for (var j = 0u; j < params.k; j++) {
        s += exp(logits[base + j] - m);
    }
    return log(s) + m;
}

@compute @workgroup_size(64)
fn cross_entropy_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_index(gid, nwg, 64u);
    if (r >= params.n) { return; }
    let base = r * params.k;
    let label = u32(labels[r]);
    out[r] = row_lse(base) - logits[base + label];
}

@compute @workgroup_size(64)
fn cross_entropy_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_index(gid, nwg, 64u);
    if (r >= params.n) { return; }
    let base = r * params.k;
    let label = u32(labels[r]);
    let lse = row_lse(base);
    let gr = g[r];
    for (var j = 0u; j < params.k; j++) {
        let p = exp(logits[base + j] - lse);
        out[base + j] = (p - select(0.0, 1.0, j == label)) * gr;
    }
}

